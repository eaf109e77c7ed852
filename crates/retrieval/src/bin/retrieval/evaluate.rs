//! `retrieval evaluate`: score labelled query folders against galleries (top-k, mAP@10,
//! MAP@R, score, per class and per domain), optionally with an HTML report.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use retrieval::compare;
use retrieval::evaluation::evaluate_and_rank;
use retrieval::table::{domain_table, evaluation_table};

use crate::Outcome;
use crate::args::{ModelArgs, pairs};

#[derive(Args)]
pub struct EvaluateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, required = true)]
    query: Vec<PathBuf>,
    /// One gallery for each --query, in the same order.
    #[arg(long, required = true)]
    gallery: Vec<PathBuf>,
    /// labels.json for a flat query folder (default: QUERY/labels.json if present).
    #[arg(long)]
    labels: Option<PathBuf>,
    /// labels.json for a flat gallery folder (default: GALLERY/labels.json if present).
    #[arg(long)]
    gallery_labels: Option<PathBuf>,
    #[arg(short, default_value_t = 10)]
    k: usize,
    #[arg(long)]
    json: bool,
    /// Also write an HTML report (index.html, thumbnails, contact_sheet.png) into DIR
    /// (DIR/<pair> for each pair when there are several).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Queries on the contact sheet (worst first).
    #[arg(long, default_value_t = 6)]
    sheet_queries: usize,
}

pub fn run(args: EvaluateArgs) -> Result<Outcome> {
    let pairs = pairs(args.query, args.gallery)?;
    let several = pairs.len() > 1;
    if several && (args.labels.is_some() || args.gallery_labels.is_some()) {
        bail!("--labels and --gallery-labels apply to a single query/gallery pair");
    }
    let model = &args.model;
    let embedder = model.embedder()?;
    let mut results = serde_json::Map::new();
    let mut complete = true;
    for (query, gallery) in &pairs {
        let name = compare::pair_name(query);
        let labels = (args.labels.as_deref(), args.gallery_labels.as_deref());
        let pair = model.embed_pair(&embedder, query, gallery, labels, args.json)?;
        complete &= pair.complete();
        let (q, g) = (&pair.query, &pair.gallery);
        let (e, mut rankings) = evaluate_and_rank(q, g, model.rerank().as_ref(), &embedder.device)?;
        for w in e.warnings() {
            eprintln!("warning: {}: {w}", query.display());
        }
        if let Some(dir) = &args.report {
            let dir = if several {
                dir.join(&name)
            } else {
                dir.clone()
            };
            rankings.iter_mut().for_each(|r| r.truncate(args.k));
            let title = format!("{} on {}", embedder.id(), query.display());
            retrieval::report::write_report(&dir, &title, q, g, &e, &rankings, args.sheet_queries)?;
            eprintln!("report: {}", dir.join("index.html").display());
        }
        if args.json {
            let mut value = serde_json::to_value(&e.overall)?;
            value["model"] = embedder.id().into();
            value["k"] = args.k.into();
            value["per_class"] = serde_json::to_value(&e.per_class)?;
            value["per_domain"] = serde_json::to_value(&e.per_domain)?;
            value["skipped"] = pair.skipped_json();
            value["warnings"] = e.warnings().into();
            results.insert(name, value);
        } else {
            println!(
                "model {} on {name}: {} queries, {} gallery images",
                embedder.id(),
                q.len(),
                g.len()
            );
            println!("{}", evaluation_table(&e));
            if let Some(t) = domain_table(&e) {
                println!("{t}");
            }
            results.insert(name, serde_json::Value::Null);
        }
    }
    if args.json {
        let value = if results.len() == 1 {
            results.into_iter().next().expect("one").1
        } else {
            results.into()
        };
        println!("{}", serde_json::to_string_pretty(&value)?);
    }
    Ok(Outcome::of(complete))
}
