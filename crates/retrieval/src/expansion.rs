//! Test-time expansion of embeddings with their neighbours, applied after embedding and before
//! the final ranking:
//!
//! - α-query expansion (α-QE, Radenović et al., 2018): each query becomes the normalised
//!   weighted sum of itself and its `n` nearest gallery images, weights `max(0, q·g)^α`.
//! - Database-side augmentation (DBA): each gallery image becomes the same weighted sum over
//!   its own `n` nearest gallery neighbours (itself first, weight 1).
//!
//! Both assume unit-length embeddings (every model here produces them).

use burn::prelude::Device;
use serde::{Deserialize, Serialize};

use crate::embed::EmbeddingSet;
use crate::evaluation::rank_sets;

/// Which expansions to apply; zero neighbours disables one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Expansion {
    pub query_neighbours: usize,
    pub database_neighbours: usize,
    pub alpha: f32,
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn normalize(v: &mut [f32]) {
    let n = dot(v, v).sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}

/// Replaces each row of `targets` by `normalize(row + Σ w_i · neighbour_i)` over its `n`
/// nearest rows of `pool` (skipping a neighbour equal to itself when `skip_self`).
fn expand(
    targets: &EmbeddingSet,
    pool: &EmbeddingSet,
    n: usize,
    alpha: f32,
    skip_self: bool,
    device: &Device,
) -> Vec<f32> {
    let k = n + usize::from(skip_self);
    let rankings =
        rank_sets(targets, pool, k, None, device).expect("Euclidean ranking cannot fail");
    let dim = targets.dim;
    let mut out = targets.values.clone();
    for (i, hits) in rankings.iter().enumerate() {
        let row = &mut out[i * dim..(i + 1) * dim];
        let own = targets.row(i).to_vec();
        let mut used = 0;
        for h in hits {
            if used == n {
                break;
            }
            if skip_self
                && h.distance <= 1e-6
                && pool.entries[h.index].name == targets.entries[i].name
            {
                continue;
            }
            let g = pool.row(h.index);
            let w = dot(&own, g).max(0.0).powf(alpha);
            row.iter_mut().zip(g).for_each(|(r, x)| *r += w * x);
            used += 1;
        }
        normalize(row);
    }
    out
}

impl Expansion {
    pub fn is_active(&self) -> bool {
        self.query_neighbours > 0 || self.database_neighbours > 0
    }

    /// Returns the (possibly expanded) query and gallery sets.
    pub fn apply(
        &self,
        query: &EmbeddingSet,
        gallery: &EmbeddingSet,
        device: &Device,
    ) -> (EmbeddingSet, EmbeddingSet) {
        let mut g = gallery.clone();
        if self.database_neighbours > 0 && !gallery.is_empty() {
            g.values = expand(
                gallery,
                gallery,
                self.database_neighbours,
                self.alpha,
                true,
                device,
            );
        }
        let mut q = query.clone();
        if self.query_neighbours > 0 && !g.is_empty() {
            q.values = expand(query, &g, self.query_neighbours, self.alpha, false, device);
        }
        (q, g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(rows: &[[f32; 2]]) -> EmbeddingSet {
        EmbeddingSet::from_rows(rows)
    }

    #[test]
    fn query_expansion_by_hand() {
        let device = Device::flex();
        let s = std::f32::consts::FRAC_1_SQRT_2;
        let q = set(&[[1.0, 0.0]]);
        let g = set(&[[s, s], [0.0, 1.0], [-1.0, 0.0]]);
        let e = Expansion {
            query_neighbours: 1,
            database_neighbours: 0,
            alpha: 1.0,
        };
        let (q2, g2) = e.apply(&q, &g, &device);
        assert_eq!(g2.values, g.values);
        // q + (q·g0) g0 = (1 + s², s²) = (1.5, 0.5), normalised.
        let n = (1.5f32 * 1.5 + 0.25).sqrt();
        assert!((q2.values[0] - 1.5 / n).abs() < 1e-5 && (q2.values[1] - 0.5 / n).abs() < 1e-5);
    }

    #[test]
    fn database_augmentation_skips_itself() {
        let device = Device::flex();
        let g = set(&[[1.0, 0.0], [0.0, 1.0]]);
        let e = Expansion {
            query_neighbours: 0,
            database_neighbours: 1,
            alpha: 1.0,
        };
        let (_, g2) = e.apply(&set(&[[1.0, 0.0]]), &g, &device);
        // Orthogonal neighbours have weight 0: rows stay as they were.
        assert_eq!(g2.values, g.values);
        let e = Expansion { alpha: 0.0, ..e };
        let (_, g3) = e.apply(&set(&[[1.0, 0.0]]), &g, &device);
        let s = std::f32::consts::FRAC_1_SQRT_2;
        assert!((g3.values[0] - s).abs() < 1e-5 && (g3.values[1] - s).abs() < 1e-5);
    }
}
