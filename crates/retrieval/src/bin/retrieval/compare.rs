//! `retrieval compare`: several methods on the same pairs; one table a pair, `compare.md` and
//! `compare.csv`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use retrieval::compare;

use crate::Outcome;
use crate::args::pairs;

#[derive(Args)]
pub struct CompareArgs {
    #[arg(long, required = true)]
    query: Vec<PathBuf>,
    /// One gallery for each --query, in the same order.
    #[arg(long, required = true)]
    gallery: Vec<PathBuf>,
    /// Output folder for compare.md and compare.csv.
    #[arg(long)]
    out: PathBuf,
    /// Comma-separated methods, e.g. hsv_histogram,mobilenet_v2+flip,checkpoints/arcface+qe2,
    /// efficientnet_lite1:checkpoints/arcface+rerank (default: descriptors, zero-shot
    /// backbones, a flip variant, trained runs, an ensemble).
    #[arg(long, value_delimiter = ',')]
    methods: Vec<String>,
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(args: CompareArgs) -> Result<Outcome> {
    let methods = if args.methods.is_empty() {
        compare::default_methods(&model::weights::workspace_root().join("checkpoints"))
    } else {
        args.methods
    };
    let specs = methods
        .iter()
        .map(|m| compare::Method::parse(m))
        .collect::<Result<Vec<_>>>()?;
    let device = model::device::device(&args.device)?;
    let pairs = pairs(args.query, args.gallery)?;
    let rows = compare::compare(&specs, &pairs, &device, false)?;
    let out = &args.out;
    std::fs::create_dir_all(out)?;
    let md = compare::markdown(&rows);
    data::write_atomic(&out.join("compare.md"), md.as_bytes())?;
    data::write_atomic(&out.join("compare.csv"), compare::csv(&rows).as_bytes())?;
    println!("{md}");
    println!(
        "wrote {} and {}",
        out.join("compare.md").display(),
        out.join("compare.csv").display()
    );
    Ok(Outcome::of(rows.iter().all(|r| r.skipped == 0)))
}
