//! `ann`: the HNSW index (`retrieval::ann`) against exact search on the same vectors: build
//! time, memory, recall@10 and single-query latency, on synthetic clustered unit vectors and,
//! when given, on real embeddings (an `embed` output: its rows are split into gallery and
//! every tenth as a query).
//!
//! `cargo run --release -p benches --bin ann -- --sizes 100000`

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use retrieval::ann::{AnnIndex, AnnParams, Stored};
use retrieval::index::GalleryIndex;
use vectors::{clustered, gallery};

mod vectors;

#[derive(Parser)]
#[command(name = "ann", about = "HNSW against exact search")]
struct Cli {
    /// Synthetic gallery sizes (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "100000")]
    sizes: Vec<usize>,
    #[arg(long, default_value_t = 512)]
    dim: usize,
    /// Queries a gallery.
    #[arg(long, default_value_t = 500)]
    queries: usize,
    /// Real embeddings (safetensors written by `retrieval embed`), each measured too.
    #[arg(long)]
    embeddings: Vec<PathBuf>,
    /// ef at search time (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "64,128")]
    ef: Vec<usize>,
    /// Stored forms of the vectors to measure (comma-separated: f32, f16, i8).
    #[arg(long, value_delimiter = ',', default_value = "f32")]
    vectors: Vec<retrieval::ann::Stored>,
    /// Write each synthetic set's vectors (`base.f32`, `queries.f32`, raw little-endian) and
    /// lookalike's figures (`ours.json`) under DIR/synthetic-N, for `peers.py --only hnsw`.
    #[arg(long)]
    dump: Option<PathBuf>,
    /// Keep each synthetic index under DIR and reuse it on the next run (the build column then
    /// says `loaded`): the same graph for measurements that compare settings of the search.
    #[arg(long)]
    keep: Option<PathBuf>,
}

/// One measured ef: recall@10, median single-query latency, build seconds.
#[derive(serde::Serialize)]
struct Figure {
    key: String,
    /// The stored form of the vectors: f32, f16, i8.
    vectors: String,
    ef: usize,
    recall: f64,
    p50_ms: f64,
    per_second: f64,
    build_s: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One table row a search ef: name, size, build s, memory MiB, ef, recall@10, p50 ms HNSW,
/// p50 ms exact.
fn measure(
    name: &str,
    g: &GalleryIndex,
    queries: &[f32],
    efs: &[usize],
    vectors: Stored,
    keep: Option<&std::path::Path>,
    table: &mut Table,
) -> Result<Vec<Figure>> {
    let dim = g.dim;
    let mut figures = Vec::new();
    let began = Instant::now();
    let params = AnnParams {
        vectors,
        ..AnnParams::default()
    };
    // f32 keeps the plain key `peers.py` matches FAISS's figures on.
    let form = match vectors {
        Stored::F32 => String::new(),
        other => format!("-{}", format!("{other:?}").to_lowercase()),
    };
    let (ann, loaded) = match keep {
        Some(dir) => {
            let dir = dir.join(format!("{name}-{}x{dim}{form}", g.len()).replace(' ', "-"));
            std::fs::create_dir_all(&dir)?;
            let existed = dir.join(retrieval::ann::ANN_FILE).exists();
            let (ann, rebuilt) = AnnIndex::open(&dir, g, params)?;
            (ann, existed && rebuilt.is_none())
        }
        None => (AnnIndex::build(g, params)?, false),
    };
    let build = began.elapsed().as_secs_f64();
    let build_column = if loaded {
        "loaded".to_string()
    } else {
        format!("{build:.1}")
    };
    let mut exact_ms = Vec::new();
    let truth: Vec<Vec<u64>> = queries
        .chunks_exact(dim)
        .map(|q| {
            let t = Instant::now();
            let hits = g.search(q, 10, None);
            exact_ms.push(t.elapsed().as_secs_f64() * 1e3);
            hits.iter().map(|h| g.entries[h.0].id).collect()
        })
        .collect();
    for &ef in efs {
        let ann = AnnIndex::build_like(
            &ann,
            AnnParams {
                expansion_search: ef,
                ..params
            },
        );
        let mut ms = Vec::new();
        let mut found = 0;
        for (q, want) in queries.chunks_exact(dim).zip(&truth) {
            let t = Instant::now();
            let hits = ann.search(q, 10, None)?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            found += hits.iter().filter(|h| want.contains(&h.0)).count();
        }
        let recall = found as f64 / (10 * truth.len()) as f64;
        let p50 = median(ms.clone());
        figures.push(Figure {
            key: format!("hnsw{form}/{}x{dim}/{ef}", g.len()),
            vectors: format!("{vectors:?}").to_lowercase(),
            ef,
            recall,
            p50_ms: p50,
            per_second: 1e3 / p50,
            build_s: build,
        });
        table.add_row([
            format!("{name} ({vectors:?})"),
            g.len().to_string(),
            build_column.clone(),
            format!("{:.0}", ann.memory_bytes() as f64 / (1 << 20) as f64),
            ef.to_string(),
            format!("{recall:.4}"),
            format!("{p50:.3}"),
            format!("{:.3}", median(exact_ms.clone())),
        ]);
    }
    Ok(figures)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "vectors",
        "gallery",
        "HNSW build s",
        "HNSW MiB",
        "ef",
        "recall@10",
        "p50 ms HNSW",
        "p50 ms exact",
    ]);
    for &n in &cli.sizes {
        eprintln!("synthetic {n} × {}", cli.dim);
        let base = clustered(n, cli.dim, 1);
        let q = clustered(cli.queries, cli.dim, 2);
        let g = gallery(&base, cli.dim);
        let mut figures = Vec::new();
        for &v in &cli.vectors {
            figures.extend(measure(
                "synthetic clustered",
                &g,
                &q,
                &cli.ef,
                v,
                cli.keep.as_deref(),
                &mut table,
            )?);
        }
        if let Some(dir) = &cli.dump {
            let dir = dir.join(format!("synthetic-{n}"));
            std::fs::create_dir_all(&dir)?;
            let raw = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
            data::write_atomic(&dir.join("base.f32"), &raw(&base))?;
            data::write_atomic(&dir.join("queries.f32"), &raw(&q))?;
            data::write_atomic(
                &dir.join("ours.json"),
                &serde_json::to_vec_pretty(&figures)?,
            )?;
        }
    }
    for path in &cli.embeddings {
        let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
        let tensors = safetensors::SafeTensors::deserialize(&bytes)?;
        let view = tensors.tensor("embeddings")?;
        let dim = view.shape()[1];
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        let (mut gallery_rows, mut query_rows) = (Vec::new(), Vec::new());
        for (i, row) in values.chunks_exact(dim).enumerate() {
            if i % 10 == 0 {
                query_rows.extend_from_slice(row)
            } else {
                gallery_rows.extend_from_slice(row)
            }
        }
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let g = gallery(&gallery_rows, dim);
        for &v in &cli.vectors {
            measure(&name, &g, &query_rows, &cli.ef, v, None, &mut table)?;
        }
    }
    println!("{table}");
    Ok(())
}
