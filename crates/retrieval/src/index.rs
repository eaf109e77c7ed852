//! A persisted gallery index: every gallery image's embedding, content hash, label and a
//! stable id, for one model, in one file (`DIR/index.safetensors`).
//!
//! [`GalleryIndex::sync`] brings an index up to date with its gallery folder: files whose
//! name and content are unchanged keep their row and id, renamed files keep their embedding,
//! new or changed files are embedded, removed ones dropped. Every write is atomic and the file
//! carries a sha256 of its rows and entries, so a process killed mid-build leaves the last
//! complete index (saved every few seconds during a build), which the next start uses and
//! completes; a damaged file is reported and rebuilt, never used.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use data::{DecodeError, ImageEntry};
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::embed::EmbedOptions;
use crate::embedder::Embedder;

/// The file an index lives in, inside its folder.
pub const INDEX_FILE: &str = "index.safetensors";
const FORMAT: &str = "lookalike-index-1";
/// How often a build saves what it has embedded so far, by default.
pub const SAVE_EVERY: Duration = Duration::from_secs(10);
/// Images embedded between progress checks (and possible saves) during a build.
const CHUNK: usize = 128;

/// One gallery image of an index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// Stable for as long as the file's name and content stay the same.
    pub id: u64,
    /// Path relative to the gallery folder, `/`-separated (the name in results).
    pub name: String,
    /// sha256 of the file's bytes.
    pub hash: String,
    pub label: Option<String>,
    pub distractor: bool,
}

/// The persisted part of an index besides its rows.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: String,
    model: String,
    dim: usize,
    next_id: u64,
    entries: Vec<IndexEntry>,
}

/// A gallery's embeddings for one model, row `i` for `entries[i]` (unit length).
#[derive(Debug, Clone)]
pub struct GalleryIndex {
    pub model: String,
    pub dim: usize,
    pub entries: Vec<IndexEntry>,
    pub values: Vec<f32>,
    next_id: u64,
    rows_by_id: HashMap<u64, usize>,
    rows_by_name: HashMap<String, usize>,
}

/// What [`GalleryIndex::sync`] did.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Rows kept as they were (same name, same content).
    pub kept: usize,
    /// Rows whose embedding came from a file of the same content (renamed or copied).
    pub reused: usize,
    /// Images embedded now.
    pub embedded: usize,
    /// Rows dropped because their file is gone or changed.
    pub removed: usize,
    /// Gallery files that could not be read (left out of the index).
    pub skipped: Vec<DecodeError>,
    /// Why an existing index file was not used (damaged, another model), if it was not.
    pub discarded: Option<String>,
}

/// sha256 of an index's rows and its header, without the checksum itself.
fn checksum(rows: &[u8], header: &str) -> String {
    let mut digest = Sha256::new();
    digest.update(rows);
    digest.update(header.as_bytes());
    hex::encode(digest.finalize())
}

impl GalleryIndex {
    /// An empty index of `model`, `dim` wide.
    pub fn new(model: &str, dim: usize) -> Self {
        Self {
            model: model.to_string(),
            dim,
            entries: Vec::new(),
            values: Vec::new(),
            next_id: 0,
            rows_by_id: HashMap::new(),
            rows_by_name: HashMap::new(),
        }
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

    /// The row of an id.
    pub fn position(&self, id: u64) -> Option<usize> {
        self.rows_by_id.get(&id).copied()
    }

    /// The row of a name (path relative to the gallery).
    pub fn position_of_name(&self, name: &str) -> Option<usize> {
        self.rows_by_name.get(name).copied()
    }

    /// Reads `dir/index.safetensors`; `None` when there is none.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(INDEX_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_bytes(&bytes)
            .with_context(|| format!("{}", path.display()))
            .map(Some)
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (_, meta) = SafeTensors::read_metadata(bytes)?;
        let meta = meta.metadata().as_ref().context("no metadata")?;
        let header_text = meta.get("header").context("no header")?;
        let header: Header = serde_json::from_str(header_text)?;
        if header.format != FORMAT {
            bail!("format {:?}, expected {FORMAT:?}", header.format);
        }
        let tensors = SafeTensors::deserialize(bytes)?;
        let view = tensors.tensor("embeddings")?;
        if view.shape() != [header.entries.len(), header.dim] {
            bail!(
                "shape {:?} does not match {} entries of {}",
                view.shape(),
                header.entries.len(),
                header.dim
            );
        }
        if meta.get("sha256") != Some(&checksum(view.data(), header_text)) {
            bail!("checksum mismatch: the file was changed or damaged");
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        if values.iter().any(|v| !v.is_finite()) {
            bail!("a row holds a non-finite value");
        }
        let mut index = Self {
            model: header.model,
            dim: header.dim,
            entries: header.entries,
            values,
            next_id: header.next_id,
            rows_by_id: HashMap::new(),
            rows_by_name: HashMap::new(),
        };
        index.reindex();
        if index.rows_by_id.len() != index.entries.len()
            || index.entries.iter().any(|e| e.id >= index.next_id)
        {
            bail!("duplicate or out-of-range ids");
        }
        Ok(index)
    }

    /// Writes `dir/index.safetensors` atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let header = serde_json::to_string(&Header {
            format: FORMAT.to_string(),
            model: self.model.clone(),
            dim: self.dim,
            next_id: self.next_id,
            entries: self.entries.clone(),
        })?;
        let bytes: Vec<u8> = self.values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = TensorView::new(Dtype::F32, vec![self.entries.len(), self.dim], &bytes)?;
        let meta = HashMap::from([
            ("sha256".to_string(), checksum(&bytes, &header)),
            ("header".to_string(), header),
        ]);
        let out = safetensors::serialize([("embeddings", view)], Some(meta))?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        data::write_atomic(&dir.join(INDEX_FILE), &out)
    }

    fn reindex(&mut self) {
        self.rows_by_id = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.id, i))
            .collect();
        self.rows_by_name = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.clone(), i))
            .collect();
    }

    /// Appends an image with its embedding; returns its new id.
    pub fn add(&mut self, image: &ImageEntry, hash: String, row: &[f32]) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.push(
            IndexEntry {
                id,
                name: image.name.clone(),
                hash,
                label: image.label.clone(),
                distractor: image.distractor,
            },
            row,
        );
        id
    }

    /// Appends an entry with its row, keeping the rows by id and by name.
    fn push(&mut self, entry: IndexEntry, row: &[f32]) {
        assert_eq!(row.len(), self.dim, "embedding width");
        self.rows_by_id.insert(entry.id, self.entries.len());
        self.rows_by_name
            .insert(entry.name.clone(), self.entries.len());
        self.entries.push(entry);
        self.values.extend_from_slice(row);
    }

    /// Removes an id; returns its entry.
    pub fn remove(&mut self, id: u64) -> Option<IndexEntry> {
        let row = self.position(id)?;
        let entry = self.entries.remove(row);
        self.values.drain(row * self.dim..(row + 1) * self.dim);
        self.reindex();
        Some(entry)
    }

    /// The `k` nearest rows to `query` (unit length, `dim` wide) by Euclidean distance, nearest
    /// first, ties by name, leaving out `exclude`. Returns (row, distance).
    pub fn search(&self, query: &[f32], k: usize, exclude: Option<u64>) -> Vec<(usize, f32)> {
        let skip = exclude.and_then(|id| self.position(id));
        let mut distances: Vec<f32> = self
            .values
            .par_chunks_exact(self.dim.max(1))
            .map(|row| row.iter().zip(query).map(|(a, b)| (a - b) * (a - b)).sum())
            .collect();
        // The excluded row goes last, and one more is ranked to make up for it.
        let want = match skip {
            Some(row) => {
                distances[row] = f32::INFINITY;
                if k > 0 { k + 1 } else { 0 }
            }
            None => k,
        };
        crate::rank::nearest(&distances, |i| self.entries[i].name.as_str(), want)
            .into_iter()
            .filter(|hit| Some(hit.index) != skip)
            .take(if k > 0 { k } else { usize::MAX })
            .map(|hit| (hit.index, hit.distance.sqrt()))
            .collect()
    }

    /// Opens the index in `dir` (if any) and brings it up to date with `gallery` for
    /// `embedder`: unchanged files keep their rows, new and changed ones are embedded (saving
    /// every `save_every`, so a killed build resumes), removed ones dropped. An index file
    /// that is damaged or of another model is set aside in the report and rebuilt.
    pub fn sync(
        dir: &Path,
        (gallery, labels): (&Path, Option<&Path>),
        embedder: &Embedder,
        options: &EmbedOptions,
        save_every: Duration,
    ) -> Result<(Self, SyncReport)> {
        let model = embedder.id();
        let dim = embedder.embedding_dim();
        let mut report = SyncReport::default();
        let old = match Self::load(dir) {
            Ok(Some(index)) if index.model == model && index.dim == dim => Some(index),
            Ok(Some(index)) => {
                report.discarded = Some(format!(
                    "the index was built with {}, not {model}: rebuilding",
                    index.model
                ));
                None
            }
            Ok(None) => None,
            Err(e) => {
                report.discarded = Some(format!("{e:#}: rebuilding"));
                None
            }
        };
        let old = old.unwrap_or_else(|| Self::new(&model, dim));
        let (_, listed) = data::list_images(gallery, labels)?;
        let bar = data::load::progress_bar(listed.len(), "hashing", options.quiet);
        let hashed: Vec<Result<String, DecodeError>> = listed
            .par_iter()
            .map(|entry| {
                let hash = file_hash(&entry.path);
                bar.inc(1);
                hash
            })
            .collect();
        bar.finish_and_clear();
        let by_hash: HashMap<&str, usize> = old
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.hash.as_str(), i))
            .collect();
        let by_name: HashMap<&str, usize> = old
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.as_str(), i))
            .collect();
        let mut index = Self {
            next_id: old.next_id,
            ..Self::new(&model, dim)
        };
        let mut to_embed = Vec::new();
        for (entry, hash) in listed.into_iter().zip(hashed) {
            let hash = match hash {
                Ok(h) => h,
                Err(e) => {
                    report.skipped.push(e);
                    continue;
                }
            };
            match by_name.get(entry.name.as_str()) {
                Some(&row) if old.entries[row].hash == hash => {
                    let kept = IndexEntry {
                        label: entry.label.clone(),
                        distractor: entry.distractor,
                        ..old.entries[row].clone()
                    };
                    index.push(kept, old.row(row));
                    report.kept += 1;
                }
                _ => match by_hash.get(hash.as_str()) {
                    Some(&row) => {
                        index.add(&entry, hash, old.row(row));
                        report.reused += 1;
                    }
                    None => to_embed.push((entry, hash)),
                },
            }
        }
        report.removed = old.len() - report.kept;
        let changed = report.reused > 0 || report.removed > 0 || !to_embed.is_empty();
        let bar = data::load::progress_bar(to_embed.len(), "indexing", options.quiet);
        let quiet = EmbedOptions {
            quiet: true,
            cache: false,
            ..*options
        };
        let mut last_save = Instant::now();
        for chunk in to_embed.chunks(CHUNK) {
            let images: Vec<ImageEntry> = chunk.iter().map(|(e, _)| e.clone()).collect();
            let (set, skipped) = embedder.embed_entries(images, &quiet)?;
            let mut rows = set.entries.iter().enumerate().peekable();
            for (entry, hash) in chunk {
                // Files that failed to decode are absent from the set, in order.
                if let Some((row, _)) = rows.next_if(|(_, embedded)| embedded.path == entry.path) {
                    index.add(entry, hash.clone(), set.row(row));
                    report.embedded += 1;
                }
            }
            report.skipped.extend(skipped);
            bar.inc(chunk.len() as u64);
            if last_save.elapsed() >= save_every {
                index.save(dir)?;
                last_save = Instant::now();
            }
        }
        bar.finish_and_clear();
        if changed || report.discarded.is_some() || !dir.join(INDEX_FILE).exists() {
            index.save(dir)?;
        }
        Ok((index, report))
    }

    /// The rows as an embedding set of the gallery folder `root` (paths under it).
    pub fn to_set(&self, root: &Path) -> crate::embed::EmbeddingSet {
        crate::embed::EmbeddingSet {
            entries: self
                .entries
                .iter()
                .map(|e| ImageEntry {
                    path: root.join(&e.name),
                    name: e.name.clone(),
                    label: e.label.clone(),
                    distractor: e.distractor,
                })
                .collect(),
            dim: self.dim,
            values: self.values.clone(),
        }
    }

    /// The default index folder for a gallery and model: under the embedding cache folder,
    /// keyed by the gallery's absolute path and the model id.
    pub fn default_dir(gallery: &Path, model: &str) -> PathBuf {
        let absolute = std::fs::canonicalize(gallery).unwrap_or_else(|_| gallery.to_path_buf());
        let key = hex::encode(Sha256::digest(format!(
            "{}\n{model}",
            absolute.to_string_lossy()
        )));
        crate::cache::cache_dir().join("index").join(&key[..16])
    }
}

/// The hex sha256 of a file's bytes: the content key of the gallery index and of a Milvus
/// collection's entries.
pub fn file_hash(path: &Path) -> Result<String, DecodeError> {
    data::decode::read_file(path).map(|bytes| hex::encode(Sha256::digest(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> ImageEntry {
        ImageEntry {
            path: name.into(),
            name: name.into(),
            label: Some("cat".into()),
            distractor: false,
        }
    }

    #[test]
    fn add_remove_search_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = GalleryIndex::new("m", 2);
        let a = index.add(&entry("a"), "ha".into(), &[1.0, 0.0]);
        let b = index.add(&entry("b"), "hb".into(), &[0.0, 1.0]);
        let c = index.add(&entry("c"), "hc".into(), &[0.6, 0.8]);
        let hits = index.search(&[1.0, 0.0], 2, None);
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), [0, 2]);
        assert!((hits[1].1 - 0.8f32.sqrt()).abs() < 1e-6);
        assert_eq!(index.search(&[1.0, 0.0], 5, Some(a))[0].0, 2);
        index.save(dir.path()).unwrap();
        let mut back = GalleryIndex::load(dir.path()).unwrap().unwrap();
        assert_eq!(back.entries, index.entries);
        assert_eq!(back.values, index.values);
        assert_eq!(back.remove(b).unwrap().name, "b");
        assert_eq!(back.position(c), Some(1));
        assert_eq!(back.row(1), &[0.6, 0.8]);
        // Ids are never reused.
        assert_eq!(back.add(&entry("d"), "hd".into(), &[0.0, 1.0]), 3);
    }

    /// A changed byte anywhere makes the file refused, not half-used.
    #[test]
    fn damaged_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = GalleryIndex::new("m", 2);
        index.add(&entry("a"), "ha".into(), &[1.0, 0.0]);
        index.save(dir.path()).unwrap();
        let path = dir.path().join(INDEX_FILE);
        let bytes = std::fs::read(&path).unwrap();
        let mut changed = bytes.clone();
        let n = changed.len();
        changed[n - 1] ^= 0x40;
        std::fs::write(&path, &changed).unwrap();
        assert!(GalleryIndex::load(dir.path()).is_err());
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert!(GalleryIndex::load(dir.path()).is_err());
    }
}
