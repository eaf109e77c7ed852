//! `retrieval embed`: a folder's `[N, D]` embeddings as safetensors, with file names, labels
//! and the model id in the metadata; or streamed into a Milvus collection.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::Outcome;
use crate::args::{ModelArgs, model_id};
use retrieval::milvus::{self, Collection, MilvusUrl};

#[derive(Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    images: PathBuf,
    /// A safetensors file, or milvus://HOST:PORT/COLLECTION: the images are streamed into that
    /// collection a batch at a time (only those whose name and content are not there yet are
    /// embedded and inserted; several jobs may write different folders into one collection).
    #[arg(long)]
    out: Output,
    /// Embed only shard I of N (I from 0): every Nth file of the sorted listing, starting at
    /// the Ith. N jobs on N machines, each with its own I, cover the folder once.
    #[arg(long)]
    shard: Option<Shard>,
}

/// `I/N`: the Ith of N interleaved parts of a file listing.
#[derive(Clone, Copy)]
struct Shard {
    index: usize,
    count: usize,
}

impl std::str::FromStr for Shard {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let parsed = s
            .split_once('/')
            .and_then(|(i, n)| Some((i.parse().ok()?, n.parse().ok()?)));
        match parsed {
            Some((index, count)) if index < count => Ok(Shard { index, count }),
            _ => anyhow::bail!("--shard {s:?}: expected I/N with 0 <= I < N, e.g. 0/4"),
        }
    }
}

impl Shard {
    fn take(self, entries: Vec<data::ImageEntry>) -> Vec<data::ImageEntry> {
        entries
            .into_iter()
            .skip(self.index)
            .step_by(self.count)
            .collect()
    }
}

#[derive(Clone)]
enum Output {
    File(PathBuf),
    Milvus(MilvusUrl),
}

impl std::str::FromStr for Output {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(if s.starts_with("milvus://") {
            Output::Milvus(s.parse()?)
        } else {
            Output::File(PathBuf::from(s))
        })
    }
}

pub fn run(args: EmbedArgs) -> Result<Outcome> {
    let embedder = args.model.embedder()?;
    let (_, mut entries) = data::list_images(&args.images, None)?;
    if let Some(shard) = args.shard {
        entries = shard.take(entries);
    }
    let out = match &args.out {
        Output::File(path) => path,
        Output::Milvus(url) => {
            let options = args.model.options(false);
            let collection = Collection::open(
                url,
                &model_id(&embedder, &options),
                embedder.embedding_dim(),
            )?;
            let report = milvus::ingest(&collection, entries, &embedder, &options)?;
            let stored = report.inserted + report.present;
            eprint!("{}", data::load::skipped_summary(&report.skipped, stored));
            println!("{url}: {report}");
            return Ok(Outcome::of(report.skipped.is_empty()));
        }
    };
    let (set, skipped) = embedder
        .embed_entries(entries, &args.model.options(false))
        .with_context(|| format!("embedding {}", args.images.display()))?;
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
    data::write_atomic(out, &data)?;
    println!(
        "wrote {} embeddings of dimension {} to {} ({} skipped)",
        set.len(),
        set.dim,
        out.display(),
        skipped.len()
    );
    Ok(Outcome::of(skipped.is_empty()))
}
