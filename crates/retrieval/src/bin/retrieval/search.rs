//! `retrieval search`: rank a gallery for one query image or every image of a query folder.

use std::path::PathBuf;

use anyhow::Result;
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

pub fn run(args: SearchArgs) -> Result<()> {
    let (q, g, rankings) = args
        .model
        .search(&args.query, &args.gallery, args.k, args.json)?;
    let results = named(&q, &g, &rankings);
    if args.json {
        let value: serde_json::Value = results
            .iter()
            .map(|(q, rows)| {
                let list: Vec<_> = rows
                    .iter()
                    .map(|(n, d)| serde_json::json!({"file": n, "distance": d}))
                    .collect();
                (q.clone(), serde_json::Value::Array(list))
            })
            .collect::<serde_json::Map<_, _>>()
            .into();
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        for (q, rows) in &results {
            println!("{}", ranking_table(q, rows));
        }
    }
    Ok(())
}
