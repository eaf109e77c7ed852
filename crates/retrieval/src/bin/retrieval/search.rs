//! `retrieval search`: rank a gallery for one query image or every image of a query folder.

use std::path::PathBuf;

use anyhow::Result;

use crate::Outcome;
use clap::Args;
use retrieval::table::ranking_table;

use crate::args::{ModelArgs, named};

#[derive(Args)]
pub struct SearchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    gallery: PathBuf,
    #[arg(long)]
    query: PathBuf,
    #[arg(short, default_value_t = 10)]
    k: usize,
    #[arg(long)]
    json: bool,
}

pub fn run(args: SearchArgs) -> Result<Outcome> {
    let (pair, rankings) = args
        .model
        .search(&args.query, &args.gallery, args.k, args.json)?;
    let results = named(&pair.query, &pair.gallery, &rankings);
    if args.json {
        let value: serde_json::Map<_, _> = results
            .iter()
            .map(|(q, rows)| {
                let list: Vec<_> = rows
                    .iter()
                    .map(|(n, d)| serde_json::json!({"file": n, "distance": d}))
                    .collect();
                (q.clone(), serde_json::Value::Array(list))
            })
            .collect();
        let value = serde_json::json!({"results": value, "skipped": pair.skipped_json()});
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        for (q, rows) in &results {
            println!("{}", ranking_table(q, rows));
        }
    }
    Ok(Outcome::of(pair.complete()))
}
