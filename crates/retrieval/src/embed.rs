//! Folder of images → embeddings: list, hash, decode and preprocess in parallel, forward in
//! batches (optionally averaging with the horizontally flipped image), cache by content.

use std::path::Path;

use anyhow::{Context, Result};
use burn::prelude::*;
use data::load::progress_bar;
use data::{DecodeError, ImageEntry, Preprocess, list_images};
use image::RgbImage;
use indicatif::ParallelProgressIterator;
use model::{ModelSpec, Network};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::cache::{EmbeddingCache, cache_dir};
use crate::descriptor::Descriptor;

/// How to embed.
#[derive(Debug, Clone, Copy)]
pub struct EmbedOptions {
    pub batch_size: usize,
    /// Average each embedding with the one of the mirrored image (then re-normalise).
    pub flip: bool,
    /// Hide progress bars and skip reports (tests, `--json`).
    pub quiet: bool,
    /// Use the embedding cache.
    pub cache: bool,
}

impl Default for EmbedOptions {
    fn default() -> Self {
        Self {
            batch_size: 32,
            flip: false,
            quiet: false,
            cache: true,
        }
    }
}

/// Embeddings of a list of images, row `i` for `entries[i]`, unit length.
#[derive(Debug, Clone)]
pub struct EmbeddingSet {
    pub entries: Vec<ImageEntry>,
    pub dim: usize,
    pub values: Vec<f32>,
}

impl EmbeddingSet {
    /// A set of unlabelled rows named `0`, `1`, … (synthetic data and tests).
    pub fn from_rows<R: AsRef<[f32]>>(rows: &[R]) -> Self {
        Self {
            entries: (0..rows.len())
                .map(|i| ImageEntry {
                    path: i.to_string().into(),
                    name: i.to_string(),
                    label: None,
                    distractor: false,
                })
                .collect(),
            dim: rows.first().map_or(0, |r| r.as_ref().len()),
            values: rows.iter().flat_map(|r| r.as_ref().to_vec()).collect(),
        }
    }

    /// The rows of `embeddings` `[N, D]`, row `i` for `entries[i]` (a probe's own embedding).
    pub fn from_tensor(entries: &[ImageEntry], embeddings: Tensor<2>) -> Result<Self> {
        let dim = embeddings.dims()[1];
        let values = embeddings
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("embeddings are not f32: {e:?}"))?;
        Ok(Self {
            entries: entries.to_vec(),
            dim,
            values,
        })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }
}

/// A file's content hash and, unless its embedding is cached, its preprocessed pixels.
type Prepared = (String, Option<Vec<f32>>);

/// One loaded `--model` member: a network on a device, or a traditional descriptor. An
/// [`crate::embedder::Embedder`] joins one or more of them.
pub enum Member {
    Network {
        network: Box<Network>,
        device: Device,
        /// Backbone name, or `ckpt-<hash>` for a trained checkpoint (the cache key).
        id: String,
    },
    Descriptor(Descriptor),
}

/// One batch `[N, 3, side, side]` of preprocessed images (each `3 · side²` values, as
/// [`data::Preprocess::apply`] leaves them).
pub fn batch_tensor(images: &[Vec<f32>], side: usize, device: &Device) -> Tensor<4> {
    Tensor::<4>::from_data(
        TensorData::new(images.concat(), [images.len(), 3, side, side]),
        device,
    )
}

/// `ckpt-<hash>` of a checkpoint directory: its weights and its `model.json` (input size,
/// flip, output), everything that changes its embeddings.
pub fn checkpoint_id(dir: &Path) -> Result<String> {
    let weights = model::weights::sha256_file(&dir.join(model::network::WEIGHTS_FILE))?;
    let meta = model::weights::sha256_file(&dir.join(model::network::META_FILE))?;
    let both = hex::encode(Sha256::digest(format!("{weights}{meta}")));
    Ok(format!("ckpt-{}", &both[..16]))
}

impl Member {
    /// Loads a member (a backbone name, descriptor name or checkpoint directory) on `device`.
    pub fn load(spec: &str, device: &Device) -> Result<Self> {
        if let Ok(descriptor) = spec.parse::<Descriptor>() {
            return Ok(Self::Descriptor(descriptor));
        }
        let parsed = ModelSpec::parse(spec).map_err(|e| {
            let names: Vec<&str> = Descriptor::ALL.iter().map(|d| d.name()).collect();
            e.context(format!("(traditional descriptors: {})", names.join(", ")))
        })?;
        let id = match &parsed {
            ModelSpec::Pretrained(kind) => kind.name(),
            ModelSpec::Checkpoint(dir) => checkpoint_id(dir)?,
        };
        Ok(Self::network(Network::load(&parsed, device)?, device, id))
    }

    /// A member around an already loaded network.
    pub fn network(network: Network, device: &Device, id: impl Into<String>) -> Self {
        Self::Network {
            network: Box::new(network),
            device: device.clone(),
            id: id.into(),
        }
    }

    /// The backbone or descriptor name, or `ckpt-<hash>` for a trained checkpoint.
    pub fn id(&self) -> &str {
        match self {
            Self::Network { id, .. } => id,
            Self::Descriptor(d) => d.name(),
        }
    }

    pub fn embedding_dim(&self) -> usize {
        match self {
            Self::Network { network, .. } => network.embedding_dim(),
            Self::Descriptor(d) => d.dim(),
        }
    }

    /// The network's evaluation transform (descriptors use the decoded image as it is).
    pub fn preprocess(&self) -> Preprocess {
        match self {
            Self::Network { network, .. } => network.preprocess(),
            Self::Descriptor(_) => data::Preprocess {
                resize: 0,
                crop: 0,
                normalization: data::Normalization::IMAGENET,
            },
        }
    }

    /// The network and its device, for network-only operations.
    fn net(&self) -> (&Network, &Device) {
        match self {
            Self::Network {
                network, device, ..
            } => (network, device),
            Self::Descriptor(d) => panic!("{d} has no network"),
        }
    }

    /// Embeds preprocessed CHW images (each `preprocess().len()` floats); networks only.
    pub fn embed_preprocessed(&self, images: &[Vec<f32>], options: &EmbedOptions) -> Vec<f32> {
        let side = self.preprocess().crop as usize;
        let (model, device) = self.net();
        let bar = progress_bar(images.len(), "embedding", options.quiet);
        let mut out = Vec::with_capacity(images.len() * model.embedding_dim());
        for chunk in images.chunks(options.batch_size.max(1)) {
            let x = batch_tensor(chunk, side, device);
            let mut e = model.embed(x.clone());
            if options.flip {
                e = model::head::l2_normalize(e + model.embed(x.flip([3])));
            }
            out.extend(e.into_data().try_to_vec::<f32>().expect("f32 embeddings"));
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        out
    }

    /// Embeds decoded images.
    pub fn embed_images(&self, images: &[RgbImage], options: &EmbedOptions) -> Vec<f32> {
        if let Self::Descriptor(d) = self {
            return images.par_iter().flat_map(|i| d.compute(i)).collect();
        }
        let preprocess = self.preprocess();
        let pre: Vec<Vec<f32>> = images.par_iter().map(|i| preprocess.apply(i)).collect();
        self.embed_preprocessed(&pre, options)
    }

    /// The cache id: the member plus every option that changes embeddings.
    pub fn cache_id(&self, options: &EmbedOptions) -> String {
        if options.flip {
            format!("{}+flip", self.id())
        } else {
            self.id().to_string()
        }
    }

    /// Embeds every image of a folder (any supported layout). Files that cannot be decoded are
    /// returned as errors and left out of the set; telling the user is the caller's job.
    pub fn embed_folder(
        &self,
        dir: &Path,
        labels: Option<&Path>,
        options: &EmbedOptions,
    ) -> Result<(EmbeddingSet, Vec<DecodeError>)> {
        let (_, entries) = list_images(dir, labels)?;
        self.embed_entries(entries, options)
            .with_context(|| format!("embedding {}", dir.display()))
    }

    /// Embeds a list of images, using and filling the cache.
    pub fn embed_entries(
        &self,
        entries: Vec<ImageEntry>,
        options: &EmbedOptions,
    ) -> Result<(EmbeddingSet, Vec<DecodeError>)> {
        let dim = self.embedding_dim();
        let preprocess = self.preprocess();
        let descriptor = match self {
            Self::Descriptor(d) => Some(*d),
            Self::Network { .. } => None,
        };
        let mut cache = options
            .cache
            .then(|| EmbeddingCache::open(&cache_dir(), &self.cache_id(options), dim));
        let bar = progress_bar(entries.len(), "decoding", options.quiet);
        // Read, hash, and (where not cached) decode and preprocess, in parallel.
        let prepared: Vec<Result<Prepared, DecodeError>> = entries
            .par_iter()
            .progress_with(bar.clone())
            .map(|entry| {
                let bytes = data::decode::read_file(&entry.path)?;
                let hash = hex::encode(Sha256::digest(&bytes));
                if cache.as_ref().is_some_and(|c| c.get(&hash).is_some()) {
                    return Ok((hash, None));
                }
                let img = data::decode::decode_bytes(&entry.path, &bytes)?;
                // Descriptors are computed here, during the parallel decode; networks get
                // preprocessed pixels to batch.
                Ok((
                    hash,
                    Some(match descriptor {
                        Some(d) => d.compute(&img),
                        None => preprocess.apply(&img),
                    }),
                ))
            })
            .collect();
        bar.finish_and_clear();
        let mut kept = Vec::new();
        let mut skipped = Vec::new();
        let mut to_embed = Vec::new();
        for (entry, result) in entries.into_iter().zip(prepared) {
            match result {
                Ok((hash, pixels)) => {
                    if let Some(p) = pixels {
                        to_embed.push((hash.clone(), p));
                    }
                    kept.push((entry, hash));
                }
                Err(e) => skipped.push(e),
            }
        }
        let images: Vec<Vec<f32>> = to_embed
            .iter_mut()
            .map(|(_, p)| std::mem::take(p))
            .collect();
        let fresh = match descriptor {
            Some(_) => images.concat(),
            None => self.embed_preprocessed(&images, options),
        };
        let mut fresh_rows = std::collections::HashMap::new();
        for (i, (hash, _)) in to_embed.into_iter().enumerate() {
            fresh_rows.insert(hash, fresh[i * dim..(i + 1) * dim].to_vec());
        }
        let mut values = Vec::with_capacity(kept.len() * dim);
        for (_, hash) in &kept {
            match fresh_rows.get(hash) {
                Some(row) => values.extend_from_slice(row),
                None => values.extend_from_slice(
                    cache
                        .as_ref()
                        .and_then(|c| c.get(hash))
                        .context("cache lost a row")?,
                ),
            }
        }
        if let Some(c) = cache.as_mut() {
            for (hash, row) in fresh_rows {
                c.insert(hash, row);
            }
            if let Err(e) = c.save() {
                eprintln!("warning: could not save the embedding cache: {e:#}");
            }
        }
        Ok((
            EmbeddingSet {
                entries: kept.into_iter().map(|(e, _)| e).collect(),
                dim,
                values,
            },
            skipped,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cache key of a checkpoint follows its model.json as well as its weights: a changed
    /// input size or flip setting must not be served the old embeddings.
    #[test]
    fn checkpoint_id_follows_weights_and_meta() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write(model::network::WEIGHTS_FILE, "weights");
        write(model::network::META_FILE, r#"{"input_size": 240}"#);
        let first = checkpoint_id(dir.path()).unwrap();
        assert_eq!(checkpoint_id(dir.path()).unwrap(), first);
        write(model::network::META_FILE, r#"{"input_size": 200}"#);
        let second = checkpoint_id(dir.path()).unwrap();
        assert_ne!(second, first);
        write(model::network::WEIGHTS_FILE, "other weights");
        assert_ne!(checkpoint_id(dir.path()).unwrap(), second);
    }
}
