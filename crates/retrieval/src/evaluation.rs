//! Query set against gallery set: rank everything, score it. Shared by `retrieval evaluate`,
//! `compare` and the trainer's per-epoch validation, so all report the same figures.

use anyhow::{Result, bail};
use burn::prelude::Device;

use crate::domain::per_domain;
use crate::embed::EmbeddingSet;
use crate::metrics::{Evaluation, evaluate};
use crate::rank::{Hit, distances, top_k};
use crate::rerank::KReciprocal;

/// The `k` nearest gallery rows of every query (all rows when `k >= gallery.len()`), by
/// Euclidean distance or, with `rerank`, by k-reciprocal re-ranked distance.
pub fn rank_sets(
    q: &EmbeddingSet,
    g: &EmbeddingSet,
    k: usize,
    rerank: Option<&KReciprocal>,
    device: &Device,
) -> Result<Vec<Vec<Hit>>> {
    let d = match rerank {
        Some(r) => r.distances(q, g, device)?,
        None => distances(&q.values, &g.values, q.dim, device),
    };
    let names: Vec<String> = g.entries.iter().map(|e| e.name.clone()).collect();
    Ok(top_k(&d, g.len(), &names, k))
}

/// Ranks the whole gallery for each labelled query and computes every metric.
pub fn evaluate_sets(
    q: &EmbeddingSet,
    g: &EmbeddingSet,
    rerank: Option<&KReciprocal>,
    device: &Device,
) -> Result<Evaluation> {
    evaluate_and_rank(q, g, rerank, device).map(|(e, _)| e)
}

/// [`evaluate_sets`], also returning the full rankings (for reports, without ranking twice).
pub fn evaluate_and_rank(
    q: &EmbeddingSet,
    g: &EmbeddingSet,
    rerank: Option<&KReciprocal>,
    device: &Device,
) -> Result<(Evaluation, Vec<Vec<Hit>>)> {
    if g.is_empty() {
        bail!("the gallery holds no readable image");
    }
    let q_labels: Vec<Option<&str>> = q.entries.iter().map(|e| e.label.as_deref()).collect();
    if q_labels.iter().all(Option::is_none) {
        bail!("no query has a label: use class sub-folders or a labels.json (--labels)");
    }
    let g_labels: Vec<Option<&str>> = g.entries.iter().map(|e| e.label.as_deref()).collect();
    let rankings = rank_sets(q, g, g.len(), rerank, device)?;
    let mut evaluation = evaluate(&q_labels, &g_labels, &rankings);
    let names: Vec<&str> = q.entries.iter().map(|e| e.name.as_str()).collect();
    evaluation.per_domain = per_domain(&names, &evaluation);
    Ok((evaluation, rankings))
}
