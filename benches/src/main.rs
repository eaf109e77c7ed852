//! `speed`: lookalike's own speed and memory figures (issue 6). Per backbone: inference
//! throughput at batch 1, 16 and 64, a training step, and end-to-end folder embedding
//! (decode, preprocess, forward); then exact search latency on synthetic galleries, and the
//! HNSW index's build time, memory and single-query speed. Prints each figure as it is measured,
//! then a table, and writes JSON. Peer figures (PyTorch, ONNX Runtime, FAISS) are not part of
//! this binary; they come from a script run beside it.
//!
//! `cargo run --release -p benches -- --out benches/results.json`

mod memory;
mod network;
mod search;
mod timing;
mod vectors;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use model::BackboneKind;
use retrieval::embed::{EmbedOptions, Member};
use timing::{Measurement, Recorder};

#[derive(Parser)]
#[command(name = "speed", about = "lookalike speed and memory benchmarks")]
struct Cli {
    /// Backbones (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "mobilenet_v2,resnet18")]
    models: Vec<String>,
    /// Gallery sizes for exact search (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    gallery_sizes: Vec<usize>,
    /// Embedding width for search.
    #[arg(long, default_value_t = 512)]
    dim: usize,
    /// A folder to embed end to end with each backbone that has weights (cache off).
    #[arg(long, default_value = "../shared/datasets/animals10/val/gallery")]
    folder: PathBuf,
    /// Seconds each measurement runs at least.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Which measurements to run (comma-separated: forward, train, folder, search, hnsw);
    /// handy under a profiler.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "forward,train,folder,search,hnsw"
    )]
    only: Vec<String>,
    /// Gallery sizes for the HNSW build and search (comma-separated; a million takes about
    /// ten minutes to build on 2 cores, see the `ann` binary).
    #[arg(long, value_delimiter = ',', default_value = "100000")]
    hnsw_sizes: Vec<usize>,
    /// Batch sizes for the forward measurements (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    batches: Vec<usize>,
    /// Leave the C allocator at its defaults (freed memory goes back to the system at once),
    /// to measure what `model::allocator::keep_freed_memory` gains.
    #[arg(long)]
    allocator_defaults: bool,
    /// Where the networks run: cpu (flex) or wgpu (a build with `--features wgpu`). Forward
    /// and training measurements wait for the device after every step.
    #[arg(long, default_value = "cpu")]
    device: model::device::DeviceKind,
    /// Write the figures as JSON here too, rewritten after each one (a run stopped early keeps
    /// what it measured).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn folder_embedding(kind: BackboneKind, folder: &std::path::Path) -> Option<Measurement> {
    let member = Member::load(&kind.name(), &burn::prelude::Device::flex()).ok()?;
    let options = EmbedOptions {
        cache: false,
        quiet: true,
        ..Default::default()
    };
    memory::reset_peak();
    let start = Instant::now();
    let (set, _) = member.embed_folder(folder, None, &options).ok()?;
    let seconds = start.elapsed().as_secs_f64();
    Some(Measurement {
        key: format!("folder/{kind}"),
        what: format!("{kind} folder embedding ({} images)", set.len()),
        per_second: set.len() as f64 / seconds,
        step_ms: seconds * 1000.0,
        peak_mib: memory::peak_mib(),
    })
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if !cli.allocator_defaults && !model::allocator::keep_freed_memory() {
        eprintln!("this allocator keeps its own policy for freed memory");
    }
    let device = cli.device.device()?;
    let min_time = Duration::from_secs_f64(cli.seconds);
    let wanted = |what: &str| cli.only.iter().any(|w| w == what);
    let mut record = Recorder::new(cli.out.clone());
    for name in &cli.models {
        let kind: BackboneKind = name.parse()?;
        if wanted("forward") {
            for folded in [false, true] {
                network::forward(kind, &cli.batches, folded, min_time, &device, &mut record)?;
            }
        }
        if wanted("train") {
            for frozen_statistics in [false, true] {
                record.add(network::train_step(
                    kind,
                    32,
                    frozen_statistics,
                    min_time,
                    &device,
                ))?;
            }
        }
        if wanted("folder") {
            match folder_embedding(kind, &cli.folder) {
                Some(m) => record.add(m)?,
                None => eprintln!("{kind}: no weights or no folder, folder embedding skipped"),
            }
        }
        eprintln!("{kind} done");
    }
    if wanted("search") {
        for &size in &cli.gallery_sizes {
            record.add(search::exact(size, cli.dim, 100, min_time, &device))?;
        }
    }
    if wanted("hnsw") {
        for &size in &cli.hnsw_sizes {
            for m in search::hnsw(size, cli.dim, 500, min_time) {
                record.add(m)?;
            }
        }
    }
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(vec!["measurement", "items/s", "ms a step", "peak MiB"]);
    for r in record.rows() {
        table.add_row(vec![
            r.what.clone(),
            format!("{:.1}", r.per_second),
            format!("{:.1}", r.step_ms),
            r.peak_mib.map_or("—".into(), |m| format!("{m:.0}")),
        ]);
    }
    println!("{table}");
    if let Some(out) = &cli.out {
        println!("wrote {}", out.display());
    }
    Ok(())
}
