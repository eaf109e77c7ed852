//! The search engine: embed folders, rank galleries by Euclidean distance, score rankings the
//! way the competition does, and write submissions.
//!
//! - [`embedder`]: what `--model` loads, an [`embedder::Embedder`]: one or more weighted
//!   members (networks or descriptors) as one (weighted concatenation of unit embeddings).
//! - [`embed`]: one [`embed::Member`] embeds a folder of images to an [`embed::EmbeddingSet`]
//!   (decode, preprocess, batched forward, optional flip averaging), with a content-addressed
//!   [`cache`].
//! - [`expansion`]: α-query expansion and database-side augmentation.
//! - [`rerank`]: k-reciprocal re-ranking.
//! - [`evaluation`]: rank a query set against a gallery set and score it.
//! - [`domain`]: a query's domain (sketch, cartoon, painting…) from its file name.
//! - [`descriptor`]: traditional descriptors (HSV histogram, tiny image).
//! - [`index`]: a persisted gallery index (embeddings, content hashes, stable ids), kept up to
//!   date with its folder.
//! - [`ann`]: an HNSW index over a gallery index, persisted and updated in place.
//! - [`milvus`]: a gallery in a Milvus collection (RESTful API v1), for galleries past one
//!   machine.
//! - [`serve`]: the search service: web page, JSON API, scoring server.
//! - [`rank`]: exact nearest neighbours by batched matrix products, deterministic ties.
//! - [`metrics`]: top-k accuracy, mAP@10, MAP@R, competition score, per-class figures.
//! - [`report`]: the HTML report and contact sheet of an evaluation.
//! - [`submission`]: the competition's JSON, validated, optionally POSTed.
//! - [`compare`]: several methods on one pair, as a table (terminal, Markdown, CSV).
//! - [`table`]: terminal tables.

pub mod ann;
pub mod cache;
pub mod compare;
pub mod descriptor;
pub mod domain;
pub mod embed;
pub mod embedder;
pub mod evaluation;
pub mod expansion;
pub mod index;
pub mod metrics;
pub mod milvus;
pub mod rank;
pub mod report;
pub mod rerank;
pub mod serve;
pub mod submission;
pub mod table;
