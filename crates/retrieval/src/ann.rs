//! An approximate nearest-neighbour index (HNSW, by the `usearch` crate) over a
//! [`GalleryIndex`]: keyed by the gallery index's stable ids, updated in place as images are
//! added and removed, persisted beside it in one file (`DIR/ann.usearch`, written atomically,
//! with a checksum and the ids it covers). A file that does not match its gallery index, is
//! damaged, or was built with other parameters is rebuilt from the rows, never used.
//!
//! Why `usearch`: measured against `hnsw_rs` on 100,000 clustered 512-d unit vectors (M = 16,
//! ef_construction = 128, 2 cores): build 2.2× faster, queries 2–3.6× faster at the same ef and
//! recall, and it adds, removes and serialises in place (`docs/serving.md`).

use std::path::Path;

use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use crate::embed::EmbedOptions;
use crate::embedder::Embedder;
use crate::index::{GalleryIndex, SyncReport};

/// The file an ANN index lives in, beside `index.safetensors`.
pub const ANN_FILE: &str = "ann.usearch";
const FORMAT: &str = "lookalike-ann-1";
/// Rows a build inserts one at a time before it goes parallel. Inserted concurrently into a
/// small graph, nodes miss each other: on the val gallery (300 rows) two threads gave recall@10
/// from 0.95 to 1.00 from one build to the next, one thread 1.00 every time (and the same
/// graph). Past this many rows the graph is large enough; these take 0.2-1.0 s (512 to 1536
/// dimensions, `ann --sizes 2048`).
const SERIAL_ROWS: usize = 2048;

/// HNSW parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AnnParams {
    /// Links a node keeps a layer (HNSW's M).
    pub connectivity: usize,
    /// Candidates kept while inserting (ef_construction).
    pub expansion_add: usize,
    /// Candidates kept while searching (ef); raised to k when k is larger.
    pub expansion_search: usize,
    /// How the graph stores vectors (distances are computed on the stored form).
    #[serde(default)]
    pub vectors: Stored,
}

/// The stored form of the index's vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stored {
    /// As embedded.
    #[default]
    F32,
    /// Half precision: half the memory.
    F16,
    /// 8-bit integers (each component × 127): a quarter of the memory.
    I8,
}

impl std::str::FromStr for Stored {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Stored::F32),
            "f16" => Ok(Stored::F16),
            "i8" => Ok(Stored::I8),
            other => bail!("vectors {other:?}: f32, f16 or i8"),
        }
    }
}

/// The defaults: half-precision vectors (half the memory, 1.1 to 1.2 times the queries a
/// second of f32 at 100,000 vectors, recall@10 1.000 on the real galleries measured) and ef 192, which
/// keeps recall@10 at 0.96 on a million vectors under 1 ms a query (docs/serving.md).
impl Default for AnnParams {
    fn default() -> Self {
        Self {
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 192,
            vectors: Stored::F16,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: String,
    model: String,
    dim: usize,
    connectivity: usize,
    expansion_add: usize,
    #[serde(default)]
    vectors: Stored,
    /// sha256 of the sorted ids the index holds.
    ids: String,
    /// sha256 of the serialised index that follows the header.
    body: String,
}

/// An HNSW index over a gallery index's rows, keyed by their ids.
pub struct AnnIndex {
    index: Index,
    params: AnnParams,
    dim: usize,
}

/// sha256 of a gallery index's ids, sorted.
fn ids_digest(gallery: &GalleryIndex) -> String {
    let mut ids: Vec<u64> = gallery.entries.iter().map(|e| e.id).collect();
    ids.sort_unstable();
    let mut digest = Sha256::new();
    for id in ids {
        digest.update(id.to_le_bytes());
    }
    hex::encode(digest.finalize())
}

fn err(e: cxx::Exception) -> anyhow::Error {
    anyhow::anyhow!("usearch: {}", e.what())
}

impl AnnIndex {
    fn empty(dim: usize, params: AnnParams) -> Result<Self> {
        let options = IndexOptions {
            dimensions: dim,
            metric: MetricKind::L2sq,
            quantization: match params.vectors {
                Stored::F32 => ScalarKind::F32,
                Stored::F16 => ScalarKind::F16,
                Stored::I8 => ScalarKind::I8,
            },
            connectivity: params.connectivity,
            expansion_add: params.expansion_add,
            expansion_search: params.expansion_search,
            multi: false,
        };
        Ok(Self {
            index: Index::new(&options).map_err(err)?,
            params,
            dim,
        })
    }

    /// Builds the index of every row: the first [`SERIAL_ROWS`] one after another, the rest
    /// in parallel.
    pub fn build(gallery: &GalleryIndex, params: AnnParams) -> Result<Self> {
        let ann = Self::empty(gallery.dim, params)?;
        ann.index.reserve(gallery.len().max(1)).map_err(err)?;
        let add = |row: usize| {
            ann.index
                .add(gallery.entries[row].id, gallery.row(row))
                .map_err(err)
        };
        let serial = gallery.len().min(SERIAL_ROWS);
        (0..serial).try_for_each(add)?;
        (serial..gallery.len()).into_par_iter().try_for_each(add)?;
        Ok(ann)
    }

    /// Loads `dir/ann.usearch` if it covers exactly `gallery`'s ids with these parameters;
    /// otherwise builds it and saves it. Returns the index and why it was rebuilt, if it was.
    pub fn open(
        dir: &Path,
        gallery: &GalleryIndex,
        params: AnnParams,
    ) -> Result<(Self, Option<String>)> {
        let path = dir.join(ANN_FILE);
        let why = if path.exists() {
            match Self::read(&path, gallery, params) {
                Ok(ann) => return Ok((ann, None)),
                Err(e) => Some(format!("{}: {e:#}: rebuilding", path.display())),
            }
        } else {
            None
        };
        let ann = Self::build(gallery, params)?;
        ann.save(dir, gallery)?;
        Ok((ann, why))
    }

    fn read(path: &Path, gallery: &GalleryIndex, params: AnnParams) -> Result<Self> {
        let bytes = std::fs::read(path)?;
        let length = u64::from_le_bytes(
            bytes
                .get(..8)
                .context("truncated")?
                .try_into()
                .expect("8 bytes"),
        ) as usize;
        let header: Header =
            serde_json::from_slice(bytes.get(8..8 + length).context("truncated")?)?;
        let body = &bytes[8 + length..];
        if header.format != FORMAT {
            bail!("format {:?}, expected {FORMAT:?}", header.format);
        }
        if header.model != gallery.model || header.dim != gallery.dim {
            bail!("built for another model");
        }
        if (header.connectivity, header.expansion_add, header.vectors)
            != (params.connectivity, params.expansion_add, params.vectors)
        {
            bail!("built with other parameters");
        }
        if header.ids != ids_digest(gallery) {
            bail!("it does not cover the gallery index's images");
        }
        if header.body != hex::encode(Sha256::digest(body)) {
            bail!("checksum mismatch: the file was changed or damaged");
        }
        let ann = Self::empty(gallery.dim, params)?;
        ann.index.load_from_buffer(body).map_err(err)?;
        if ann.index.size() != gallery.len() {
            bail!(
                "holds {} vectors for {} images",
                ann.index.size(),
                gallery.len()
            );
        }
        Ok(ann)
    }

    /// Writes `dir/ann.usearch` atomically, recording the ids of `gallery` it covers.
    pub fn save(&self, dir: &Path, gallery: &GalleryIndex) -> Result<()> {
        let mut body = vec![0u8; self.index.serialized_length()];
        self.index.save_to_buffer(&mut body).map_err(err)?;
        let header = serde_json::to_vec(&Header {
            format: FORMAT.to_string(),
            model: gallery.model.clone(),
            dim: self.dim,
            connectivity: self.params.connectivity,
            expansion_add: self.params.expansion_add,
            vectors: self.params.vectors,
            ids: ids_digest(gallery),
            body: hex::encode(Sha256::digest(&body)),
        })?;
        let mut bytes = Vec::with_capacity(8 + header.len() + body.len());
        bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&body);
        std::fs::create_dir_all(dir)?;
        data::write_atomic(&dir.join(ANN_FILE), &bytes)
    }

    /// The same graph searched with other parameters (a benchmark's ef sweep): serialised
    /// and read back, so nothing is rebuilt.
    pub fn build_like(other: &Self, params: AnnParams) -> Self {
        let mut body = vec![0u8; other.index.serialized_length()];
        other
            .index
            .save_to_buffer(&mut body)
            .expect("serialising to a sized buffer");
        let copy = Self::empty(other.dim, params).expect("same options as a working index");
        copy.index
            .load_from_buffer(&body)
            .expect("reading what was just written");
        copy
    }

    pub fn len(&self) -> usize {
        self.index.size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a row under its id.
    pub fn add(&self, id: u64, row: &[f32]) -> Result<()> {
        if self.index.size() + 1 > self.index.capacity() {
            self.index
                .reserve((self.index.capacity() * 2).max(16))
                .map_err(err)?;
        }
        self.index.add(id, row).map_err(err)
    }

    /// Removes an id.
    pub fn remove(&self, id: u64) -> Result<()> {
        self.index.remove(id).map_err(err).map(|_| ())
    }

    /// The `k` nearest ids to `query` with their Euclidean distances, nearest first, leaving
    /// out `exclude`.
    pub fn search(&self, query: &[f32], k: usize, exclude: Option<u64>) -> Result<Vec<(u64, f32)>> {
        let want = k + usize::from(exclude.is_some());
        if want > self.index.expansion_search()
            || self.index.expansion_search() != self.params.expansion_search.max(want)
        {
            self.index
                .change_expansion_search(self.params.expansion_search.max(want));
        }
        let found = self.index.search(query, want).map_err(err)?;
        Ok(found
            .keys
            .into_iter()
            .zip(found.distances)
            .filter(|(id, _)| Some(*id) != exclude)
            .take(k)
            .map(|(id, d)| (id, d.max(0.0).sqrt()))
            .collect())
    }

    /// Bytes the index holds in memory.
    pub fn memory_bytes(&self) -> usize {
        self.index.memory_usage()
    }
}

/// Brings the persisted index of `gallery` in `dir` up to date ([`GalleryIndex::sync`]) and,
/// unless `exact`, opens its HNSW index; what had to be rebuilt is said on stderr. What `serve`
/// and the commands' `--index` share.
pub fn open_gallery(
    dir: &Path,
    gallery: (&Path, Option<&Path>),
    embedder: &Embedder,
    options: &EmbedOptions,
    save_every: std::time::Duration,
    exact: bool,
) -> Result<(GalleryIndex, SyncReport, Option<AnnIndex>)> {
    let (index, report) = GalleryIndex::sync(dir, gallery, embedder, options, save_every)
        .with_context(|| format!("indexing {}", gallery.0.display()))?;
    if let Some(why) = &report.discarded {
        eprintln!("warning: {}: {why}", dir.display());
    }
    let ann = if exact {
        None
    } else {
        let (ann, why) = AnnIndex::open(dir, &index, AnnParams::default())?;
        if let Some(why) = why {
            eprintln!("warning: {why}");
        }
        Some(ann)
    };
    Ok((index, report, ann))
}

#[cfg(test)]
mod tests {
    use super::*;
    use data::ImageEntry;

    fn gallery(n: usize) -> GalleryIndex {
        gallery_of(n, 8)
    }

    fn gallery_of(n: usize, dim: usize) -> GalleryIndex {
        let mut g = GalleryIndex::new("m", dim);
        let mut state = 7u32;
        for i in 0..n {
            let mut row: Vec<f32> = (0..dim)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    (state % 1000) as f32 / 1000.0 - 0.5
                })
                .collect();
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            row.iter_mut().for_each(|v| *v /= norm);
            let e = ImageEntry {
                path: i.to_string().into(),
                name: i.to_string(),
                label: None,
                distractor: false,
            };
            g.add(&e, i.to_string(), &row);
        }
        g
    }

    #[test]
    fn finds_what_exact_search_finds_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = gallery(500);
        let (ann, why) = AnnIndex::open(dir.path(), &g, AnnParams::default()).unwrap();
        assert!(why.is_none());
        let mut agree = 0;
        for row in 0..50 {
            let exact: Vec<u64> = g
                .search(g.row(row), 10, None)
                .iter()
                .map(|h| g.entries[h.0].id)
                .collect();
            let approx: Vec<u64> = ann
                .search(g.row(row), 10, None)
                .unwrap()
                .iter()
                .map(|h| h.0)
                .collect();
            agree += approx.iter().filter(|id| exact.contains(id)).count();
        }
        assert!(agree >= 490, "recall {agree}/500");
        // Reopened: read, not rebuilt; the same answers.
        let (again, why) = AnnIndex::open(dir.path(), &g, AnnParams::default()).unwrap();
        assert!(why.is_none());
        assert_eq!(
            again.search(g.row(3), 5, None).unwrap(),
            ann.search(g.row(3), 5, None).unwrap()
        );
        // Excluding a query's own id.
        let own = g.entries[3].id;
        assert!(
            ann.search(g.row(3), 5, Some(own))
                .unwrap()
                .iter()
                .all(|h| h.0 != own)
        );
        // Add and remove in place.
        let removed = g.entries[10].id;
        ann.remove(removed).unwrap();
        g.remove(removed);
        assert!(
            ann.search(g.row(9), 500, None)
                .unwrap()
                .iter()
                .all(|h| h.0 != removed)
        );
        // An index that no longer covers the gallery's ids is rebuilt.
        let (_, why) = AnnIndex::open(dir.path(), &g, AnnParams::default()).unwrap();
        assert!(why.unwrap().contains("does not cover"));
        // A damaged file is rebuilt.
        let path = dir.path().join(ANN_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let (_, why) = AnnIndex::open(dir.path(), &g, AnnParams::default()).unwrap();
        assert!(why.unwrap().contains("checksum"));
    }

    /// The distance kernels vendor/usearch adds (four accumulators, AVX-512 or AVX2, a tail
    /// for dimensions that fill no whole register) give the distances exact search gives, in
    /// both stored forms, and are the ones in use wherever the CPU has them.
    #[test]
    fn distances_agree_with_exact_ones_for_any_dimension() {
        for dim in [1, 7, 15, 37, 64, 100, 515] {
            let g = gallery_of(80, dim);
            for vectors in [Stored::F32, Stored::F16] {
                let params = AnnParams {
                    vectors,
                    ..AnnParams::default()
                };
                let ann = AnnIndex::build(&g, params).unwrap();
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    let isa = ann.index.hardware_acceleration();
                    assert!(isa.starts_with("lookalike-"), "{vectors:?}: {isa}");
                    if let Ok(want) = std::env::var("LOOKALIKE_EXPECT_ISA") {
                        assert_eq!(isa, want);
                    }
                }
                // Half precision rounds each component to 11 significant bits.
                let tolerance = match vectors {
                    Stored::F16 => 2e-3,
                    _ => 1e-5,
                };
                let query = g.row(5);
                let found = ann.search(query, 80, None).unwrap();
                assert!(
                    found.len() >= 70,
                    "{dim} {vectors:?}: {} found",
                    found.len()
                );
                for (id, distance) in found {
                    let row = g.row(g.position(id).unwrap());
                    let exact = query
                        .iter()
                        .zip(row)
                        .map(|(a, b)| f64::from(a - b).powi(2))
                        .sum::<f64>()
                        .sqrt();
                    assert!(
                        (f64::from(distance) - exact).abs() <= tolerance * exact.max(0.1),
                        "{dim} {vectors:?}: {distance} against {exact}"
                    );
                }
            }
        }
    }

    /// The AVX2 kernels, on a machine that would choose AVX-512: the test above again, in a
    /// child process with `USEARCH_NO_AVX512` set (usearch reads it once a process).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx2_kernels_agree_too() {
        if !std::arch::is_x86_feature_detected!("avx512f")
            || !std::arch::is_x86_feature_detected!("avx2")
        {
            return; // the test above already ran whichever kernels this CPU has
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "ann::tests::distances_agree_with_exact_ones_for_any_dimension",
            ])
            .env("USEARCH_NO_AVX512", "1")
            .env("LOOKALIKE_EXPECT_ISA", "lookalike-avx2")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
