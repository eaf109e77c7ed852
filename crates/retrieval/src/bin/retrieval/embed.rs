//! `retrieval embed`: a folder's `[N, D]` embeddings as safetensors, with file names, labels
//! and the model id in the metadata.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::Outcome;
use crate::args::ModelArgs;

#[derive(Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    images: PathBuf,
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: EmbedArgs) -> Result<Outcome> {
    let embedder = args.model.embedder()?;
    let (set, skipped) = embedder.embed_folder(&args.images, None, &args.model.options(false))?;
    eprint!("{}", data::load::skipped_summary(&skipped, set.len()));
    let bytes: Vec<u8> = set.values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(
        safetensors::Dtype::F32,
        vec![set.len(), set.dim],
        &bytes,
    )?;
    let names: Vec<&str> = set.entries.iter().map(|e| e.name.as_str()).collect();
    let labels: Vec<Option<&str>> = set.entries.iter().map(|e| e.label.as_deref()).collect();
    let meta = HashMap::from([
        ("files".to_string(), serde_json::to_string(&names)?),
        ("labels".to_string(), serde_json::to_string(&labels)?),
        ("model".to_string(), embedder.id()),
        ("flip".to_string(), args.model.flip.to_string()),
    ]);
    let data = safetensors::serialize([("embeddings", view)], Some(meta))?;
    data::write_atomic(&args.out, &data)?;
    println!(
        "wrote {} embeddings of dimension {} to {} ({} skipped)",
        set.len(),
        set.dim,
        args.out.display(),
        skipped.len()
    );
    Ok(Outcome::of(skipped.is_empty()))
}
