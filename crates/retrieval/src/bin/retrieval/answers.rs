//! `retrieval answers`: a labelled query and gallery folder → the answers file the scoring
//! server (`serve --answers`) scores submissions against.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use retrieval::serve::scoring::Answers;

#[derive(Args)]
pub struct AnswersArgs {
    /// Labelled query folder (class folders or labels.json).
    #[arg(long)]
    query: PathBuf,
    /// Labelled gallery folder (distractors label "distractor").
    #[arg(long)]
    gallery: PathBuf,
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: AnswersArgs) -> Result<()> {
    let labels = |dir: &PathBuf, gallery: bool| -> Result<BTreeMap<String, String>> {
        let (_, entries) = data::list_images(dir, None)?;
        let mut map = BTreeMap::new();
        for e in entries {
            let label = match (e.label, e.distractor) {
                (_, true) if gallery => data::folder::DISTRACTOR.to_string(),
                (Some(l), false) => l,
                _ => bail!("{}: {} has no label", dir.display(), e.name),
            };
            map.insert(e.name, label);
        }
        Ok(map)
    };
    let answers = Answers {
        queries: labels(&args.query, false)?,
        gallery: labels(&args.gallery, true)?,
    };
    data::write_atomic(
        &args.out,
        serde_json::to_string_pretty(&answers)?.as_bytes(),
    )?;
    println!(
        "wrote {} ({} queries, {} gallery files)",
        args.out.display(),
        answers.queries.len(),
        answers.gallery.len()
    );
    Ok(())
}
