//! Query set against gallery set: rank everything, score it. Shared by `retrieval evaluate`,
//! `compare` and the trainer's per-epoch validation, so all report the same figures.

use anyhow::{Result, bail};
use burn::prelude::Device;

use crate::embed::EmbeddingSet;
use crate::metrics::{Evaluation, evaluate};
use crate::rank::{Hit, distances, top_k};

/// The `k` nearest gallery rows of every query (all rows when `k >= gallery.len()`).
pub fn rank_sets(q: &EmbeddingSet, g: &EmbeddingSet, k: usize, device: &Device) -> Vec<Vec<Hit>> {
    let d = distances(&q.values, &g.values, q.dim, device);
    let names: Vec<String> = g.entries.iter().map(|e| e.name.clone()).collect();
    top_k(&d, g.len(), &names, k)
}

/// Ranks the whole gallery for each labelled query and computes every metric.
pub fn evaluate_sets(q: &EmbeddingSet, g: &EmbeddingSet, device: &Device) -> Result<Evaluation> {
    if g.is_empty() {
        bail!("the gallery holds no readable image");
    }
    let q_labels: Vec<Option<&str>> = q.entries.iter().map(|e| e.label.as_deref()).collect();
    if q_labels.iter().all(Option::is_none) {
        bail!("no query has a label: use class sub-folders or a labels.json (--labels)");
    }
    let g_labels: Vec<Option<&str>> = g.entries.iter().map(|e| e.label.as_deref()).collect();
    let rankings = rank_sets(q, g, g.len(), device);
    Ok(evaluate(&q_labels, &g_labels, &rankings))
}
