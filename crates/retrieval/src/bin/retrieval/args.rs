//! What several commands share: the model and test-time options, query/gallery pairing,
//! embedding a pair, and naming ranked hits.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Args;
use data::DecodeError;
use data::load::skipped_summary;
use retrieval::ann::{AnnIndex, open_gallery};
use retrieval::embed::{EmbedOptions, EmbeddingSet};
use retrieval::embedder::Embedder;
use retrieval::evaluation::rank_sets;
use retrieval::expansion::Expansion;
use retrieval::milvus::{self, Collection, MilvusUrl};
use retrieval::rank::Hit;
use retrieval::rerank::KReciprocal;

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// A pretrained backbone (mobilenet_v2, efficientnet_lite0/1/2, resnet18/34/50), a
    /// traditional descriptor (hsv_histogram, tiny_image) or a checkpoint directory written by
    /// the trainer. Several joined by ':' (each with an optional @weight) make an ensemble:
    /// efficientnet_lite1:checkpoints/arcface@2.
    #[arg(long, short)]
    pub model: String,
    /// Compute device: cpu, or wgpu (build with --features wgpu).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Average each embedding with that of the mirrored image.
    #[arg(long)]
    pub flip: bool,
    /// Do not read or write the embedding cache.
    #[arg(long)]
    pub no_cache: bool,
    /// α-query expansion: average each query with its N nearest gallery images (0: off).
    #[arg(long, default_value_t = 0)]
    pub qe: usize,
    /// Database-side augmentation: average each gallery image with its N nearest (0: off).
    #[arg(long, default_value_t = 0)]
    pub dba: usize,
    /// Weight exponent α of query expansion and database augmentation.
    #[arg(long, default_value_t = 3.0)]
    pub alpha: f32,
    /// k-reciprocal re-ranking over queries and gallery together (galleries up to thousands).
    #[arg(long)]
    pub rerank: bool,
    /// Re-ranking: size of the k-reciprocal neighbour sets.
    #[arg(long, default_value_t = 20)]
    pub rerank_k1: usize,
    /// Re-ranking: neighbours averaged into each set vector (1: none).
    #[arg(long, default_value_t = 6)]
    pub rerank_k2: usize,
    /// Re-ranking: weight of the original distance.
    #[arg(long, default_value_t = 0.3)]
    pub rerank_lambda: f32,
    /// Keep the gallery's embeddings in a persisted index in DIR, updated in place (only new
    /// or changed files are embedded), and rank by its HNSW index; or, given
    /// milvus://HOST:PORT/COLLECTION, mirror the gallery into that Milvus collection (missing
    /// files inserted, gone or changed ones deleted) and rank by Milvus' search. `evaluate`,
    /// which scores whole rankings, and the test-time options (--qe, --dba, --rerank) rank
    /// exactly.
    #[arg(long)]
    pub index: Option<IndexArg>,
    /// With --index: rank exactly instead of by the HNSW index or Milvus.
    #[arg(long)]
    pub exact: bool,
}

impl ModelArgs {
    pub fn embedder(&self) -> Result<Embedder> {
        Embedder::load(&self.model, &model::device::device(&self.device)?)
    }

    pub fn rerank(&self) -> Option<KReciprocal> {
        self.rerank.then_some(KReciprocal {
            k1: self.rerank_k1,
            k2: self.rerank_k2,
            lambda: self.rerank_lambda,
        })
    }

    fn expansion(&self) -> Expansion {
        Expansion {
            query_neighbours: self.qe,
            database_neighbours: self.dba,
            alpha: self.alpha,
        }
    }

    pub fn options(&self, quiet: bool) -> EmbedOptions {
        EmbedOptions {
            batch_size: self.batch_size,
            flip: self.flip,
            quiet,
            cache: !self.no_cache,
        }
    }

    /// Embeds the query and gallery folders, then applies the test-time expansions asked for.
    /// Files that cannot be read are left out, named on stderr (also under `--json`, where
    /// `quiet` only hides progress bars) and returned; a folder with no readable image at all
    /// is an error naming it.
    pub fn embed_pair(
        &self,
        embedder: &Embedder,
        query: &Path,
        gallery: &Path,
        labels: (Option<&Path>, Option<&Path>),
        quiet: bool,
    ) -> Result<Pair> {
        let options = self.options(quiet);
        let (q, query_skipped) = embedder.embed_folder(query, labels.0, &options)?;
        eprint!("{}", skipped_summary(&query_skipped, q.len()));
        let (g, gallery_skipped, ann) = match &self.index {
            Some(IndexArg::Milvus(url)) => {
                let (g, skipped) = embedder.embed_folder(gallery, labels.1, &options)?;
                let collection = Collection::open(url, &model_id(embedder, &options), g.dim)?;
                let report = milvus::mirror(&collection, &g)?;
                if !quiet {
                    eprintln!("{url}: {report}");
                }
                (
                    g,
                    skipped,
                    (!self.exact).then_some(Approximate::Milvus(collection)),
                )
            }
            Some(IndexArg::Dir(dir)) => {
                let (index, report, ann) = open_gallery(
                    dir,
                    (gallery, labels.1),
                    embedder,
                    &options,
                    retrieval::index::SAVE_EVERY,
                    self.exact,
                )?;
                let ids = index.entries.iter().map(|e| e.id).collect();
                let ann = ann.map(|index| Approximate::Hnsw { index, ids });
                (index.to_set(gallery), report.skipped, ann)
            }
            None => {
                let (g, skipped) = embedder.embed_folder(gallery, labels.1, &options)?;
                (g, skipped, None)
            }
        };
        eprint!("{}", skipped_summary(&gallery_skipped, g.len()));
        if q.is_empty() {
            bail!("{}: no readable query image", query.display());
        }
        if g.is_empty() {
            bail!("{}: no readable gallery image", gallery.display());
        }
        let expansion = self.expansion();
        // The HNSW index and Milvus hold the gallery as embedded: expansions change it, so
        // they rank exactly.
        let ann = ann.filter(|_| !expansion.is_active() && !self.rerank);
        let (query, gallery) = expansion.apply(&q, &g, &embedder.device);
        Ok(Pair {
            query,
            gallery,
            query_skipped,
            gallery_skipped,
            ann,
        })
    }

    /// Loads the model, embeds an unlabelled query and gallery folder and ranks the top `k`
    /// of the gallery for every query (what `search` and `submit` share).
    pub fn search(
        &self,
        query: &Path,
        gallery: &Path,
        k: usize,
        quiet: bool,
    ) -> Result<(Pair, Vec<Vec<Hit>>)> {
        let embedder = self.embedder()?;
        let pair = self.embed_pair(&embedder, query, gallery, (None, None), quiet)?;
        let rankings = match &pair.ann {
            Some(ann) => approximate_rankings(ann, &pair, k)?,
            None => rank_sets(
                &pair.query,
                &pair.gallery,
                k,
                self.rerank().as_ref(),
                &embedder.device,
            )?,
        };
        Ok((pair, rankings))
    }
}

/// Each query's `k` nearest gallery rows by the HNSW index or Milvus (squared distances, as
/// exact ranking gives them).
fn approximate_rankings(ann: &Approximate, pair: &Pair, k: usize) -> Result<Vec<Vec<Hit>>> {
    let k = k.min(pair.gallery.len());
    match ann {
        Approximate::Hnsw { index, ids } => {
            let rows: HashMap<u64, usize> =
                ids.iter().enumerate().map(|(row, id)| (*id, row)).collect();
            (0..pair.query.len())
                .map(|i| {
                    Ok(index
                        .search(pair.query.row(i), k, None)?
                        .into_iter()
                        .filter_map(|(id, d)| {
                            rows.get(&id).map(|&index| Hit {
                                index,
                                distance: d * d,
                            })
                        })
                        .collect())
                })
                .collect()
        }
        Approximate::Milvus(collection) => {
            let rows: HashMap<&str, usize> = pair
                .gallery
                .entries
                .iter()
                .enumerate()
                .map(|(row, e)| (e.name.as_str(), row))
                .collect();
            (0..pair.query.len())
                .map(|i| {
                    Ok(collection
                        .search(pair.query.row(i), k)?
                        .into_iter()
                        .filter_map(|(name, distance)| {
                            rows.get(name.as_str())
                                .map(|&index| Hit { index, distance })
                        })
                        .collect())
                })
                .collect()
        }
    }
}

/// A query and a gallery folder embedded, with the files of each that could not be read.
pub struct Pair {
    pub query: EmbeddingSet,
    pub gallery: EmbeddingSet,
    pub query_skipped: Vec<DecodeError>,
    pub gallery_skipped: Vec<DecodeError>,
    /// The gallery's HNSW index or Milvus collection, with `--index` (unless `--exact` or an
    /// expansion).
    pub ann: Option<Approximate>,
}

/// Where `--index` keeps the gallery: a folder (embeddings and an HNSW index) or a Milvus
/// collection (`milvus://HOST:PORT/COLLECTION`).
#[derive(Clone, Debug)]
pub enum IndexArg {
    Dir(PathBuf),
    Milvus(MilvusUrl),
}

impl std::str::FromStr for IndexArg {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.starts_with("milvus://") {
            Ok(IndexArg::Milvus(s.parse()?))
        } else if s.contains("://") {
            bail!("{s:?}: --index takes a folder or milvus://HOST:PORT/COLLECTION")
        } else {
            Ok(IndexArg::Dir(PathBuf::from(s)))
        }
    }
}

/// A ranking other than the exact one, over the gallery as embedded.
pub enum Approximate {
    /// The HNSW index, keyed by the gallery index's id of each gallery row, in row order.
    Hnsw {
        index: AnnIndex,
        ids: Vec<u64>,
    },
    Milvus(Collection),
}

/// What a Milvus collection records as its model: the embedder, and whether images are
/// averaged with their mirror images.
pub fn model_id(embedder: &Embedder, options: &EmbedOptions) -> String {
    if options.flip {
        format!("{} flip", embedder.id())
    } else {
        embedder.id()
    }
}

impl Pair {
    /// Whether every file of both folders was read.
    pub fn complete(&self) -> bool {
        self.query_skipped.is_empty() && self.gallery_skipped.is_empty()
    }

    /// The skipped files as JSON: `{"query": [{"file", "reason"}], "gallery": [...]}`.
    pub fn skipped_json(&self) -> serde_json::Value {
        let list = |errors: &[DecodeError]| -> serde_json::Value {
            errors
                .iter()
                .map(|e| serde_json::json!({"file": e.file(), "reason": e.to_string()}))
                .collect()
        };
        serde_json::json!({
            "query": list(&self.query_skipped),
            "gallery": list(&self.gallery_skipped),
        })
    }
}

/// Pairs repeated `--query` and `--gallery` folders in order; their counts must match.
pub fn pairs(query: Vec<PathBuf>, gallery: Vec<PathBuf>) -> Result<Vec<(PathBuf, PathBuf)>> {
    if query.len() != gallery.len() {
        bail!(
            "{} --query folders but {} --gallery folders: give one gallery a query folder",
            query.len(),
            gallery.len()
        );
    }
    Ok(query.into_iter().zip(gallery).collect())
}

/// Each query's name with its hits as (gallery name, squared distance).
pub type NamedRanking = (String, Vec<(String, f32)>);

/// Turns index hits into names, query by query.
pub fn named(q: &EmbeddingSet, g: &EmbeddingSet, rankings: &[Vec<Hit>]) -> Vec<NamedRanking> {
    q.entries
        .iter()
        .zip(rankings)
        .map(|(e, hits)| {
            let rows = hits
                .iter()
                .map(|h| (g.entries[h.index].name.clone(), h.distance))
                .collect();
            (e.name.clone(), rows)
        })
        .collect()
}
