//! `retrieval submit`: the competition's submission JSON, validated, optionally POSTed.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use retrieval::submission::Submission;

use crate::Outcome;
use crate::args::{ModelArgs, named};

#[derive(Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    query: PathBuf,
    #[arg(long)]
    gallery: PathBuf,
    #[arg(long)]
    group: String,
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    url: Option<String>,
    #[arg(short, default_value_t = 10)]
    k: usize,
}

pub fn run(args: SubmitArgs) -> Result<Outcome> {
    let (pair, rankings) = args
        .model
        .search(&args.query, &args.gallery, args.k, false)?;
    // A query left out is an answer missing from the submission: refuse rather than write it.
    if !pair.query_skipped.is_empty() {
        bail!(
            "{} of {} query files could not be read (named above); no submission written",
            pair.query_skipped.len(),
            pair.query_skipped.len() + pair.query.len()
        );
    }
    let (q, g) = (&pair.query, &pair.gallery);
    let submission = Submission {
        groupname: args.group.clone(),
        images: named(q, g, &rankings)
            .into_iter()
            .map(|(query, hits)| (query, hits.into_iter().map(|(name, _)| name).collect()))
            .collect(),
    };
    let q_names: Vec<String> = q.entries.iter().map(|e| e.name.clone()).collect();
    let g_names: Vec<String> = g.entries.iter().map(|e| e.name.clone()).collect();
    submission
        .validate(&q_names, &g_names, args.k)
        .context("the submission does not validate")?;
    submission.write(&args.out)?;
    println!(
        "wrote {} ({} queries, {} results each)",
        args.out.display(),
        q_names.len(),
        args.k.min(g_names.len())
    );
    if let Some(url) = &args.url {
        println!("server: {}", submission.post(url)?);
    }
    // Unreadable gallery files: every query is answered, from the readable rest.
    Ok(Outcome::of(pair.complete()))
}
