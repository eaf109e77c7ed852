//! Per-epoch validation: every query/gallery pair is decoded and preprocessed once a run, then
//! embedded with the current weights and scored by `retrieval`'s own evaluation.
//!
//! The pairs share many images (the val gallery is inside the novel and domains galleries), so
//! images are pooled by file content: each distinct image is embedded once an epoch, whichever
//! pairs list it. While the backbone does not change (a head-only epoch after the baseline, or a
//! run that never trains it), the pool's backbone features are kept and only the head runs
//! again: they are keyed by a hash of the backbone's weights and statistics, so any change to
//! them, however it came about, embeds the pool afresh.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};
use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::{Device, Tensor, TensorData};
use data::{DecodeError, ImageEntry, Preprocess, list_images};
use model::Network;
use rayon::prelude::*;
use retrieval::embed::{EmbedOptions, EmbeddingSet, Member, batch_tensor};
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
    /// The pool's pooled backbone features, and the fingerprint of the backbone that made them.
    features: Mutex<Option<([u8; 32], Vec<f32>)>>,
    /// How many times the pool went through the backbone.
    backbone_passes: AtomicUsize,
}

/// SHA-256 of everything in a network that decides its backbone features: the backbone's
/// kind, its input side, and every float tensor its modules hold (weights and batch-norm
/// statistics), in visiting order with their shapes.
fn backbone_fingerprint(model: &Network) -> [u8; 32] {
    struct Hash(Sha256);
    impl ModuleVisitor for Hash {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let data = param.val().into_data();
            for d in data.shape().iter() {
                self.0.update((*d as u64).to_le_bytes());
            }
            self.0.update(data.as_bytes());
        }
    }
    let mut hash = Hash(Sha256::new());
    hash.0.update(model.kind.name().as_bytes());
    hash.0.update(model.input_size.to_le_bytes());
    model.backbone.visit(&mut hash);
    hash.0.finalize().into()
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
        Ok(Self {
            pairs: out,
            pool,
            features: Mutex::new(None),
            backbone_passes: AtomicUsize::new(0),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The pooled backbone features `[pool, F]` of every image of the pool, row-major.
    fn backbone_features(&self, model: &Network, device: &Device, batch_size: usize) -> Vec<f32> {
        let side = model.preprocess().crop as usize;
        let mut out = Vec::with_capacity(self.pool.len() * model.kind.feature_dim());
        for chunk in self.pool.chunks(batch_size.max(1)) {
            let x = batch_tensor(chunk, side, device);
            let f = model.backbone.features(x).into_data();
            out.extend(f.iter::<f32>());
        }
        out
    }

    /// Distinct images embedded an epoch.
    pub fn distinct_images(&self) -> usize {
        self.pool.len()
    }

    /// The embeddings `[pool, D]` of the pool, row-major; the backbone runs only when its
    /// fingerprint differs from the one the kept features were made with.
    pub fn embed(&self, model: Network, device: &Device, batch_size: usize) -> Result<Vec<f32>> {
        Ok(if model.flip || self.pool.is_empty() {
            // Flip averaging mixes two feature sets per image: embedded whole, nothing kept.
            let member = Member::network(model, device, "training");
            let options = EmbedOptions {
                batch_size,
                quiet: true,
                ..Default::default()
            };
            member.embed_preprocessed(&self.pool, &options)
        } else {
            let key = backbone_fingerprint(&model);
            let mut cache = self.features.lock().expect("validation features lock");
            if cache.as_ref().map(|(k, _)| k) != Some(&key) {
                *cache = Some((key, self.backbone_features(&model, device, batch_size)));
                self.backbone_passes.fetch_add(1, Ordering::Relaxed);
            }
            let (_, features) = cache.as_ref().expect("features just computed");
            let shape = [self.pool.len(), model.kind.feature_dim()];
            let features = Tensor::<2>::from_data(TensorData::new(features.clone(), shape), device);
            model
                .embed_features(features)
                .into_data()
                .try_to_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("embeddings are not f32: {e:?}"))?
        })
    }

    /// Embeds the pool with `model` (in inference mode) and evaluates every pair.
    pub fn evaluate(
        &self,
        model: Network,
        device: &Device,
        batch_size: usize,
    ) -> Result<Vec<(String, Metrics)>> {
        let dim = model.embedding_dim();
        let values = self.embed(model, device, batch_size)?;
        self.evaluate_embeddings(&values, dim, device)
    }

    /// Evaluates every pair on embeddings `[pool, dim]` of the pool, row-major (as
    /// [`Self::embed`] gives them, or several models' joined).
    pub fn evaluate_embeddings(
        &self,
        values: &[f32],
        dim: usize,
        device: &Device,
    ) -> Result<Vec<(String, Metrics)>> {
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

    /// While the backbone stays the same only the head runs again, and the embeddings are the
    /// ones a whole pass gives; a backbone with other weights goes through the network afresh.
    #[test]
    fn frozen_backbone_features_are_kept_and_a_changed_backbone_is_embedded_afresh() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        for (i, class) in ["cat", "dog", "cow"].iter().enumerate() {
            png(&d.join(format!("q/{class}/a.png")), 40 * i as u8 + 10);
            png(&d.join(format!("g/{class}/b.png")), 40 * i as u8 + 30);
        }
        let device = Device::default();
        let kind = model::BackboneKind::MobileNetV2;
        let pair = ValidationPair {
            name: "one".into(),
            query: d.join("q"),
            gallery: d.join("g"),
        };
        let mut a = Network::new(kind, Some(8), &device);
        a.output = model::network::EmbeddingOutput::Concat;
        a.input_size = 32;
        let v = Validation::load(&[pair], &a.preprocess()).unwrap();
        let whole = |net: &Network| {
            Member::network(net.clone(), &device, "whole").embed_preprocessed(
                &v.pool,
                &EmbedOptions {
                    batch_size: 4,
                    quiet: true,
                    ..Default::default()
                },
            )
        };
        let close = |x: &[f32], y: &[f32]| {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| (p - q).abs() < 1e-5)
        };

        let first = v.embed(a.clone(), &device, 4).unwrap();
        assert!(close(&first, &whole(&a)));
        assert_eq!(v.backbone_passes.load(Ordering::Relaxed), 1);

        // Another head on the same backbone (the head-only epoch): the kept features serve.
        let mut b = a.clone();
        b.head = Network::new(kind, Some(8), &device).head;
        let second = v.embed(b.clone(), &device, 4).unwrap();
        assert_eq!(v.backbone_passes.load(Ordering::Relaxed), 1);
        assert!(close(&second, &whole(&b)));
        assert!(!close(&second, &first), "the new head is applied");

        // Other backbone weights: the pool goes through the backbone again.
        let mut c = b.clone();
        c.backbone = Network::new(kind, Some(8), &device).backbone;
        let third = v.embed(c.clone(), &device, 4).unwrap();
        assert_eq!(v.backbone_passes.load(Ordering::Relaxed), 2);
        assert!(close(&third, &whole(&c)));
        assert!(!close(&third, &second));
    }
}
