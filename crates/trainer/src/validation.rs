//! Per-epoch validation: every query/gallery pair is decoded and preprocessed once a run, then
//! embedded with the current weights and scored by `retrieval`'s own evaluation.
//!
//! The pairs share many images (the val gallery is inside the novel and domains galleries), so
//! images are pooled by file content: each distinct image is embedded once an epoch, whichever
//! pairs list it.

use std::collections::HashMap;

use anyhow::{Context, Result};
use burn::prelude::Device;
use data::{DecodeError, ImageEntry, Preprocess, list_images};
use model::Network;
use rayon::prelude::*;
use retrieval::embed::{EmbedOptions, EmbeddingSet, Member};
use retrieval::evaluation::evaluate_sets;
use retrieval::metrics::Metrics;
use sha2::{Digest, Sha256};

use crate::config::ValidationPair;

/// One side of a pair: its entries and, for each, the row of the shared pool.
struct Side {
    entries: Vec<ImageEntry>,
    rows: Vec<usize>,
}

/// Every validation pair of a run, over one pool of distinct preprocessed images.
pub struct Validation {
    pairs: Vec<(String, Side, Side)>,
    pool: Vec<Vec<f32>>,
}

/// A file's content hash and, unless the pool already held that content, its pixels.
type Loaded = Result<([u8; 32], Option<Vec<f32>>), DecodeError>;

/// Adds a folder's readable images to the pool (one row per distinct content).
fn add_side(
    dir: &std::path::Path,
    preprocess: &Preprocess,
    pool: &mut Vec<Vec<f32>>,
    seen: &mut HashMap<[u8; 32], usize>,
) -> Result<Side> {
    let (_, entries) = list_images(dir, None)?;
    let loaded: Vec<Loaded> = entries
        .par_iter()
        .map(|e| {
            let bytes = data::decode::read_file(&e.path)?;
            let key: [u8; 32] = Sha256::digest(&bytes).into();
            // Decode only what the pool does not hold yet (checked again below, serially).
            if seen.contains_key(&key) {
                return Ok((key, None));
            }
            let img = data::decode::decode_bytes(&e.path, &bytes)?;
            Ok((key, Some(preprocess.apply(&img))))
        })
        .collect();
    let mut side = Side {
        entries: Vec::new(),
        rows: Vec::new(),
    };
    for (e, r) in entries.into_iter().zip(loaded) {
        match r {
            Ok((key, pixels)) => {
                let row = match seen.get(&key) {
                    Some(&row) => row,
                    None => {
                        pool.push(pixels.expect("an image not yet pooled was decoded"));
                        seen.insert(key, pool.len() - 1);
                        pool.len() - 1
                    }
                };
                side.entries.push(e);
                side.rows.push(row);
            }
            Err(err) => eprintln!("skipped: {err}"),
        }
    }
    Ok(side)
}

impl Validation {
    pub fn load(pairs: &[ValidationPair], preprocess: &Preprocess) -> Result<Self> {
        let mut pool = Vec::new();
        let mut seen = HashMap::new();
        let mut out = Vec::new();
        for pair in pairs {
            let query = add_side(&pair.query, preprocess, &mut pool, &mut seen)
                .with_context(|| format!("validation {} queries", pair.name))?;
            let gallery = add_side(&pair.gallery, preprocess, &mut pool, &mut seen)
                .with_context(|| format!("validation {} gallery", pair.name))?;
            out.push((pair.name.clone(), query, gallery));
        }
        Ok(Self { pairs: out, pool })
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Distinct images embedded an epoch.
    pub fn distinct_images(&self) -> usize {
        self.pool.len()
    }

    /// Embeds the pool with `model` (in inference mode) and evaluates every pair.
    pub fn evaluate(
        &self,
        model: Network,
        device: &Device,
        batch_size: usize,
    ) -> Result<Vec<(String, Metrics)>> {
        let member = Member::network(model, device, "training");
        let options = EmbedOptions {
            batch_size,
            quiet: true,
            ..Default::default()
        };
        let dim = member.embedding_dim();
        let values = member.embed_preprocessed(&self.pool, &options);
        let set = |side: &Side| EmbeddingSet {
            entries: side.entries.clone(),
            dim,
            values: side
                .rows
                .iter()
                .flat_map(|&r| values[r * dim..(r + 1) * dim].iter().copied())
                .collect(),
        };
        self.pairs
            .iter()
            .map(|(name, q, g)| {
                let e = evaluate_sets(&set(q), &set(g), None, device)?;
                Ok((name.clone(), e.overall))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(path: &std::path::Path, shade: u8) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::RgbImage::from_pixel(40, 30, image::Rgb([shade, 0, 0]))
            .save(path)
            .unwrap();
    }

    /// Pairs that share images (by content, whatever the folder) embed each one once.
    #[test]
    fn pairs_share_one_pool_of_distinct_images() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        png(&d.join("q1/cat/a.png"), 10);
        png(&d.join("g1/cat/b.png"), 20);
        png(&d.join("g1/dog/c.png"), 30);
        // The second pair: a copy of b under another name and class folder, and one new image.
        png(&d.join("q2/cat/a.png"), 10);
        png(&d.join("g2/lion/b-copy.png"), 20);
        png(&d.join("g2/lion/d.png"), 40);
        std::fs::write(d.join("g2/lion/broken.png"), b"not a png").unwrap();
        let pair = |name: &str, q: &str, g: &str| ValidationPair {
            name: name.into(),
            query: d.join(q),
            gallery: d.join(g),
        };
        let preprocess = model::BackboneKind::MobileNetV2.preprocess_at(32);
        let v = Validation::load(
            &[pair("one", "q1", "g1"), pair("two", "q2", "g2")],
            &preprocess,
        )
        .unwrap();
        assert_eq!(v.distinct_images(), 4);
        let (_, q2, g2) = &v.pairs[1];
        assert_eq!(q2.rows, vec![0]);
        assert_eq!(g2.entries.len(), 2, "the unreadable file is skipped");
        assert_eq!(g2.rows[0], 1, "b-copy.png is b.png's row");
    }
}
