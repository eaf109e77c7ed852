//! Per-epoch validation: each query/gallery pair is decoded and preprocessed once, then
//! embedded with the current weights and scored by `retrieval`'s own evaluation.

use anyhow::{Context, Result};
use burn::prelude::Device;
use data::{DecodeError, ImageEntry, Preprocess, list_images};
use model::Embedder;
use rayon::prelude::*;
use retrieval::embed::{EmbedOptions, EmbeddingSet, Engine};
use retrieval::evaluation::evaluate_sets;
use retrieval::metrics::Evaluation;

use crate::config::ValidationPair;

struct Prepared {
    entries: Vec<ImageEntry>,
    pixels: Vec<Vec<f32>>,
}

fn prepare(dir: &std::path::Path, preprocess: &Preprocess) -> Result<Prepared> {
    let (_, entries) = list_images(dir, None)?;
    let decoded: Vec<Result<Vec<f32>, DecodeError>> = entries
        .par_iter()
        .map(|e| data::decode_image(&e.path).map(|img| preprocess.apply(&img)))
        .collect();
    let mut kept = Prepared {
        entries: Vec::new(),
        pixels: Vec::new(),
    };
    for (e, r) in entries.into_iter().zip(decoded) {
        match r {
            Ok(p) => {
                kept.entries.push(e);
                kept.pixels.push(p);
            }
            Err(err) => eprintln!("skipped: {err}"),
        }
    }
    Ok(kept)
}

/// One validation pair, ready to embed.
pub struct ValidationSet {
    pub name: String,
    query: Prepared,
    gallery: Prepared,
}

impl ValidationSet {
    pub fn load(pair: &ValidationPair, preprocess: &Preprocess) -> Result<Self> {
        Ok(Self {
            name: pair.name.clone(),
            query: prepare(&pair.query, preprocess)
                .with_context(|| format!("validation {} queries", pair.name))?,
            gallery: prepare(&pair.gallery, preprocess)
                .with_context(|| format!("validation {} gallery", pair.name))?,
        })
    }

    /// Embeds both sides with `model` (in inference mode) and evaluates.
    pub fn evaluate(
        &self,
        model: Embedder,
        device: &Device,
        batch_size: usize,
    ) -> Result<Evaluation> {
        let engine = Engine::network(model, device, "training");
        let options = EmbedOptions {
            batch_size,
            quiet: true,
            ..Default::default()
        };
        let embed = |p: &Prepared| EmbeddingSet {
            entries: p.entries.clone(),
            dim: engine.embedding_dim(),
            values: engine.embed_preprocessed(&p.pixels, &options),
        };
        evaluate_sets(&embed(&self.query), &embed(&self.gallery), None, device)
    }
}
