//! A content-addressed embedding cache: one safetensors file a model id, rows keyed by the
//! sha256 of each image file's bytes. A gallery embedded once with a model is not embedded
//! again while its files are unchanged, whatever their names or folders.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

/// Cached embeddings of one model.
#[derive(Debug, Default)]
pub struct EmbeddingCache {
    path: PathBuf,
    dim: usize,
    rows: HashMap<String, Vec<f32>>,
    dirty: bool,
}

/// Default cache folder: `$LOOKALIKE_CACHE`, else `checkpoints/cache` at the workspace root.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("LOOKALIKE_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => model::weights::workspace_root().join("checkpoints/cache"),
    }
}

/// File-system-safe form of a model id.
fn file_stem(model_id: &str) -> String {
    model_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl EmbeddingCache {
    /// Opens (or starts) the cache of `model_id` in `dir`. A damaged cache file is reported
    /// and ignored: it only costs recomputation.
    pub fn open(dir: &Path, model_id: &str, dim: usize) -> Self {
        let path = dir.join(format!("{}.safetensors", file_stem(model_id)));
        let mut cache = Self {
            path,
            dim,
            ..Default::default()
        };
        if cache.path.is_file()
            && let Err(e) = cache.read()
        {
            eprintln!(
                "warning: ignoring embedding cache {}: {e:#}",
                cache.path.display()
            );
            cache.rows.clear();
        }
        cache
    }

    fn read(&mut self) -> Result<()> {
        let bytes = std::fs::read(&self.path)?;
        let (_, meta) = SafeTensors::read_metadata(&bytes)?;
        let hashes: Vec<String> = serde_json::from_str(
            meta.metadata()
                .as_ref()
                .and_then(|m| m.get("hashes"))
                .context("no hash list")?,
        )?;
        let tensors = SafeTensors::deserialize(&bytes)?;
        let view = tensors.tensor("embeddings")?;
        let shape = view.shape();
        if shape.len() != 2 || shape[0] != hashes.len() || shape[1] != self.dim {
            anyhow::bail!(
                "shape {shape:?} does not match {} rows of {}",
                hashes.len(),
                self.dim
            );
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        for (i, h) in hashes.into_iter().enumerate() {
            self.rows
                .insert(h, values[i * self.dim..(i + 1) * self.dim].to_vec());
        }
        Ok(())
    }

    pub fn get(&self, hash: &str) -> Option<&[f32]> {
        self.rows.get(hash).map(Vec::as_slice)
    }

    pub fn insert(&mut self, hash: String, row: Vec<f32>) {
        debug_assert_eq!(row.len(), self.dim);
        self.rows.insert(hash, row);
        self.dirty = true;
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Writes the cache atomically if anything was added.
    pub fn save(&mut self) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let mut hashes: Vec<&String> = self.rows.keys().collect();
        hashes.sort();
        let mut bytes = Vec::with_capacity(hashes.len() * self.dim * 4);
        for h in &hashes {
            for v in &self.rows[*h] {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
        }
        let view = TensorView::new(Dtype::F32, vec![hashes.len(), self.dim], &bytes)?;
        let meta = HashMap::from([("hashes".to_string(), serde_json::to_string(&hashes)?)]);
        let out = safetensors::serialize([("embeddings", view)], Some(meta))?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        data::write_atomic(&self.path, &out)?;
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = EmbeddingCache::open(dir.path(), "m/1+flip", 3);
        cache.insert("aa".into(), vec![1.0, 2.0, 3.0]);
        cache.insert("bb".into(), vec![4.0, 5.0, 6.0]);
        cache.save().unwrap();
        let again = EmbeddingCache::open(dir.path(), "m/1+flip", 3);
        assert_eq!(again.get("bb"), Some(&[4.0, 5.0, 6.0][..]));
        assert_eq!(again.len(), 2);
        std::fs::write(&again.path, b"garbage").unwrap();
        assert!(EmbeddingCache::open(dir.path(), "m/1+flip", 3).is_empty());
    }
}
