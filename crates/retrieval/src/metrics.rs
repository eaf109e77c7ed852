//! Scoring rankings the way the competition does, plus the figures metric-learning papers use.
//!
//! - top-k: a query counts at k when any of its first k results shares its label.
//! - mAP@10: mean over queries of (1/min(R,10)) Σ_{i≤10} P(i)·rel(i), R = relevant gallery
//!   images of the query's class.
//! - MAP@R (Musgrave et al., 2020): mean of (1/R) Σ_{i≤R} P(i)·rel(i).
//! - score: 600·top1 + 300·top5 + 100·top10, out of 1000.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::rank::Hit;

/// The headline figures (the keys of `evaluate --json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Metrics {
    pub queries: usize,
    pub top1: f64,
    pub top3: f64,
    pub top5: f64,
    pub top10: f64,
    pub map10: f64,
    pub map_r: f64,
    pub score: f64,
}

/// Figures of one query.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueryOutcome {
    pub label: String,
    /// Rank (1-based) of the first result of the query's class, if any in the ranking.
    pub first_hit: Option<usize>,
    pub ap10: f64,
    pub ap_r: f64,
    /// The label of the top-1 result (`distractor` for distractors, `?` when unlabelled).
    pub top1_label: String,
}

/// Everything `evaluate` reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Evaluation {
    pub overall: Metrics,
    pub per_class: BTreeMap<String, Metrics>,
    /// Per query domain (sketch, cartoon, painting…, from the file names); empty when the
    /// names do not say.
    pub per_domain: BTreeMap<String, Metrics>,
    /// Aligned with the labelled queries, in query order; `None` for unlabelled queries.
    pub per_query: Vec<Option<QueryOutcome>>,
    /// Query classes with no image in the gallery, with their query counts: those queries
    /// cannot be answered and score 0 (a mislabelled folder, or the wrong gallery).
    pub unmatched: BTreeMap<String, usize>,
}

impl Evaluation {
    /// One warning line a query class with no gallery image; empty when every class has some.
    pub fn warnings(&self) -> Vec<String> {
        self.unmatched
            .iter()
            .map(|(class, n)| {
                format!(
                    "query class {class:?} has no image in the gallery: its {n} {} score 0",
                    if *n == 1 { "query" } else { "queries" }
                )
            })
            .collect()
    }
}

/// Competition score from top-1/5/10 fractions.
pub fn competition_score(top1: f64, top5: f64, top10: f64) -> f64 {
    600.0 * top1 + 300.0 * top5 + 100.0 * top10
}

/// Scores one query's full (or truncated) ranking. `gallery_labels[i]` is `None` for
/// distractors and unlabelled images; `relevant_total` counts the query's class in the gallery.
pub fn score_query(
    label: &str,
    hits: &[Hit],
    gallery_labels: &[Option<&str>],
    relevant_total: usize,
) -> QueryOutcome {
    let rel: Vec<bool> = hits
        .iter()
        .map(|h| gallery_labels[h.index] == Some(label))
        .collect();
    let first_hit = rel.iter().position(|&r| r).map(|p| p + 1);
    let ap_at = |cut: usize, denom: usize| {
        if denom == 0 {
            return 0.0;
        }
        let mut found = 0usize;
        let mut sum = 0.0;
        for (i, &r) in rel.iter().take(cut).enumerate() {
            if r {
                found += 1;
                sum += found as f64 / (i + 1) as f64;
            }
        }
        sum / denom as f64
    };
    QueryOutcome {
        label: label.to_string(),
        first_hit,
        ap10: ap_at(10, relevant_total.min(10)),
        ap_r: ap_at(relevant_total, relevant_total),
        top1_label: hits
            .first()
            .map(|h| gallery_labels[h.index].unwrap_or("distractor").to_string())
            .unwrap_or_else(|| "?".into()),
    }
}

/// The mean figures of some queries' outcomes.
pub fn aggregate<'a>(outcomes: impl Iterator<Item = &'a QueryOutcome>) -> Metrics {
    let mut m = Metrics::default();
    let at = |o: &QueryOutcome, k: usize| o.first_hit.is_some_and(|r| r <= k) as u8 as f64;
    for o in outcomes {
        m.queries += 1;
        m.top1 += at(o, 1);
        m.top3 += at(o, 3);
        m.top5 += at(o, 5);
        m.top10 += at(o, 10);
        m.map10 += o.ap10;
        m.map_r += o.ap_r;
    }
    if m.queries > 0 {
        let n = m.queries as f64;
        for v in [
            &mut m.top1,
            &mut m.top3,
            &mut m.top5,
            &mut m.top10,
            &mut m.map10,
            &mut m.map_r,
        ] {
            *v /= n;
        }
    }
    m.score = competition_score(m.top1, m.top5, m.top10);
    m
}

/// Evaluates rankings (one a query, ideally the whole gallery so MAP@R is exact).
pub fn evaluate(
    query_labels: &[Option<&str>],
    gallery_labels: &[Option<&str>],
    rankings: &[Vec<Hit>],
) -> Evaluation {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for l in gallery_labels.iter().flatten() {
        *counts.entry(l).or_default() += 1;
    }
    let per_query: Vec<Option<QueryOutcome>> = query_labels
        .iter()
        .zip(rankings)
        .map(|(label, hits)| {
            label.map(|l| score_query(l, hits, gallery_labels, counts.get(l).copied().unwrap_or(0)))
        })
        .collect();
    let overall = aggregate(per_query.iter().flatten());
    let mut per_class = BTreeMap::new();
    for class in per_query.iter().flatten().map(|o| o.label.clone()) {
        if per_class.contains_key(&class) {
            continue;
        }
        let m = aggregate(per_query.iter().flatten().filter(|o| o.label == class));
        per_class.insert(class, m);
    }
    let mut unmatched = BTreeMap::new();
    for label in query_labels.iter().flatten() {
        if !counts.contains_key(label) {
            *unmatched.entry(label.to_string()).or_default() += 1;
        }
    }
    Evaluation {
        overall,
        per_class,
        per_domain: BTreeMap::new(),
        per_query,
        unmatched,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(order: &[usize]) -> Vec<Hit> {
        order
            .iter()
            .map(|&index| Hit {
                index,
                distance: index as f32,
            })
            .collect()
    }

    #[test]
    fn hand_computed_query() {
        // Gallery: 0 cat, 1 dog, 2 cat, 3 distractor, 4 cat.
        let gallery = [Some("cat"), Some("dog"), Some("cat"), None, Some("cat")];
        let o = score_query("cat", &hits(&[1, 0, 3, 2, 4]), &gallery, 3);
        assert_eq!(o.first_hit, Some(2));
        assert_eq!(o.top1_label, "dog");
        // Hits at ranks 2, 4, 5: AP@10 = (1/2 + 2/4 + 3/5) / 3.
        assert!((o.ap10 - (0.5 + 0.5 + 0.6) / 3.0).abs() < 1e-12);
        // MAP@R looks at the first R = 3: one hit at rank 2 -> (1/2) / 3.
        assert!((o.ap_r - 0.5 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn aggregate_and_score() {
        let gallery = [Some("cat"), Some("dog"), None];
        let queries = [Some("cat"), Some("dog"), None];
        let rankings = vec![hits(&[0, 1, 2]), hits(&[2, 0, 1]), hits(&[0, 1, 2])];
        let e = evaluate(&queries, &gallery, &rankings);
        assert_eq!(e.overall.queries, 2);
        assert_eq!(e.overall.top1, 0.5);
        assert_eq!(e.overall.top3, 1.0);
        assert_eq!(e.overall.score, 600.0 * 0.5 + 300.0 + 100.0);
        assert_eq!(e.per_class["dog"].top1, 0.0);
        assert_eq!(e.per_query[1].as_ref().unwrap().top1_label, "distractor");
        assert!(e.per_query[2].is_none());
    }
}
