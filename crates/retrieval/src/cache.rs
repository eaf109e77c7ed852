//! A content-addressed embedding cache: one safetensors file a model id, rows keyed by the
//! sha256 of each image file's bytes. A gallery embedded once with a model is not embedded
//! again while its files are unchanged, whatever their names or folders.
//!
//! The model id carries everything that changes an embedding (for a checkpoint, the hash of
//! its weights *and* of its `model.json`; `+flip` for flip averaging). The file carries a
//! sha256 of its rows and keys: a file whose bytes changed, or with a non-finite value, is
//! reported and ignored, so it only costs recomputation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use sha2::{Digest, Sha256};

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

/// sha256 of the rows' bytes and their keys, in order.
fn checksum<S: AsRef<str>>(rows: &[u8], hashes: &[S]) -> String {
    let mut digest = Sha256::new();
    digest.update(rows);
    for h in hashes {
        digest.update(h.as_ref().as_bytes());
        digest.update(b"\n");
    }
    hex::encode(digest.finalize())
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
        let expected = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("sha256"))
            .context("no checksum")?;
        if &checksum(view.data(), &hashes) != expected {
            anyhow::bail!("checksum mismatch: the file was changed or damaged");
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            anyhow::bail!("row {} holds a non-finite value", i / self.dim.max(1));
        }
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
        let meta = HashMap::from([
            ("sha256".to_string(), checksum(&bytes, &hashes)),
            ("hashes".to_string(), serde_json::to_string(&hashes)?),
        ]);
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

    /// A cache file whose values were changed in place, or that holds NaN, is not used.
    #[test]
    fn changed_bytes_and_nan_rows_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = EmbeddingCache::open(dir.path(), "m", 2);
        cache.insert("aa".into(), vec![0.6, 0.8]);
        cache.save().unwrap();
        let bytes = std::fs::read(&cache.path).unwrap();
        // The last four bytes are the last value (0.8): make it 0.7.
        let mut changed = bytes.clone();
        let n = changed.len();
        changed[n - 4..].copy_from_slice(&0.7f32.to_le_bytes());
        std::fs::write(&cache.path, &changed).unwrap();
        assert!(EmbeddingCache::open(dir.path(), "m", 2).is_empty());
        // NaN written through the cache itself (so the checksum matches) is refused too.
        let mut nan = EmbeddingCache::open(dir.path(), "m", 2);
        nan.insert("bb".into(), vec![f32::NAN, 0.0]);
        nan.save().unwrap();
        assert!(EmbeddingCache::open(dir.path(), "m", 2).is_empty());
        // The untouched file is read back.
        std::fs::write(&cache.path, &bytes).unwrap();
        assert_eq!(
            EmbeddingCache::open(dir.path(), "m", 2).get("aa"),
            Some(&[0.6, 0.8][..])
        );
    }
}
