//! Metric-learning losses on L2-normalised embeddings.

pub mod arcface;
pub mod triplet;

pub use arcface::ArcFace;
pub use triplet::{mine_triplets, triplet_loss};
