//! Exact search latency: 100 queries against synthetic unit-length galleries, ranked by the
//! same code `retrieval` uses (batched matrix products, top 10).

use std::time::Duration;

use burn::prelude::Device;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use retrieval::embed::EmbeddingSet;
use retrieval::evaluation::rank_sets;

use crate::timing::{Measurement, measure};

fn unit_rows(n: usize, dim: usize, rng: &mut ChaCha8Rng) -> Vec<Vec<f32>> {
    (0..n)
        .map(|_| {
            let mut row: Vec<f32> = (0..dim).map(|_| rng.random::<f32>() - 0.5).collect();
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            row.iter_mut().for_each(|v| *v /= norm);
            row
        })
        .collect()
}

/// Queries a second for a gallery of `size` rows of width `dim`.
pub fn exact(
    size: usize,
    dim: usize,
    queries: usize,
    min_time: Duration,
    device: &Device,
) -> Measurement {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let gallery = EmbeddingSet::from_rows(&unit_rows(size, dim, &mut rng));
    let query = EmbeddingSet::from_rows(&unit_rows(queries, dim, &mut rng));
    measure(
        format!("search/{size}x{dim}"),
        format!("exact search, {size} x {dim}, {queries} queries"),
        queries,
        1,
        1,
        min_time,
        || {
            let top = rank_sets(&query, &gallery, 10, None, device).expect("Euclidean ranking");
            assert_eq!(top.len(), queries);
        },
    )
}

/// The HNSW index (`retrieval::ann`, default parameters) on `size` clustered unit vectors of
/// width `dim`: one row for its build (vectors a second, build time, peak resident memory of
/// the build, the index's own size in the label) and one for single-query search (queries a
/// second, with recall@10 against exact search in the label).
pub fn hnsw(size: usize, dim: usize, queries: usize, min_time: Duration) -> Vec<Measurement> {
    use retrieval::ann::{AnnIndex, AnnParams};

    let base = crate::vectors::clustered(size, dim, 1);
    let query = crate::vectors::clustered(queries, dim, 2);
    let gallery = crate::vectors::gallery(&base, dim);
    drop(base);
    crate::memory::reset_peak();
    let start = std::time::Instant::now();
    let index = AnnIndex::build(&gallery, AnnParams::default()).expect("HNSW build");
    let seconds = start.elapsed().as_secs_f64();
    let build = Measurement {
        key: format!("hnsw-build/{size}x{dim}"),
        what: format!(
            "HNSW build, {size} x {dim} clustered (vectors/s; index {:.0} MiB)",
            index.memory_bytes() as f64 / (1 << 20) as f64
        ),
        per_second: size as f64 / seconds,
        step_ms: seconds * 1e3,
        peak_mib: crate::memory::peak_mib(),
    };
    let mut found = 0;
    for q in query.chunks_exact(dim) {
        let want: Vec<u64> = gallery
            .search(q, 10, None)
            .iter()
            .map(|h| gallery.entries[h.0].id)
            .collect();
        let hits = index.search(q, 10, None).expect("HNSW search");
        found += hits.iter().filter(|h| want.contains(&h.0)).count();
    }
    let recall = found as f64 / (10 * queries) as f64;
    let search = measure(
        format!("hnsw/{size}x{dim}"),
        format!("HNSW search, {size} x {dim}, one query a call (recall@10 {recall:.3})"),
        queries,
        1,
        1,
        min_time,
        || {
            for q in query.chunks_exact(dim) {
                let _ = index.search(q, 10, None).expect("HNSW search");
            }
        },
    );
    vec![build, search]
}
