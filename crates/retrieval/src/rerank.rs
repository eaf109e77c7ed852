//! k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with
//! k-reciprocal Encoding", CVPR 2017). Two images are truly close when each is among the
//! other's k nearest; the final distance mixes the original one with a Jaccard distance
//! between the images' (expanded, soft) k-reciprocal neighbour sets, computed over queries
//! and gallery together. It needs the full (Q+G)² distance matrix, so it is meant for
//! galleries of up to some thousands of images.

use anyhow::{Result, bail};
use burn::prelude::Device;
use serde::{Deserialize, Serialize};

use crate::embed::EmbeddingSet;
use crate::rank::distances;

/// Parameters, with the paper's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KReciprocal {
    /// Neighbours for the k-reciprocal sets.
    pub k1: usize,
    /// Neighbours averaged for local query expansion of the set vectors (1: none).
    pub k2: usize,
    /// Weight of the original distance in the result (the Jaccard distance gets 1 − λ).
    pub lambda: f32,
}

impl Default for KReciprocal {
    fn default() -> Self {
        Self {
            k1: 20,
            k2: 6,
            lambda: 0.3,
        }
    }
}

/// Largest query + gallery count the dense matrices are allowed for (about 1.6 GB each).
pub const MAX_IMAGES: usize = 20_000;

/// Sorted row indices of `row`, nearest first (ties by index).
fn argsort(row: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[a].total_cmp(&row[b]).then(a.cmp(&b)));
    idx
}

/// The members of `rank[i][..=k]` that also have `i` in their own first `k + 1`.
fn reciprocal(rank: &[Vec<usize>], i: usize, k: usize) -> Vec<usize> {
    let k = k.min(rank[i].len() - 1);
    rank[i][..=k]
        .iter()
        .copied()
        .filter(|&c| rank[c][..=k].contains(&i))
        .collect()
}

impl KReciprocal {
    /// Re-ranked distances `[Q, G]`, row-major.
    pub fn distances(
        &self,
        q: &EmbeddingSet,
        g: &EmbeddingSet,
        device: &Device,
    ) -> Result<Vec<f32>> {
        let (nq, ng) = (q.len(), g.len());
        let n = nq + ng;
        if n > MAX_IMAGES {
            bail!(
                "k-reciprocal re-ranking holds {n}² distances; it is limited to {MAX_IMAGES} \
                 query and gallery images together"
            );
        }
        if nq == 0 || ng == 0 {
            return Ok(Vec::new());
        }
        let mut all = q.values.clone();
        all.extend_from_slice(&g.values);
        let mut original = distances(&all, &all, q.dim, device);
        // Each row divided by its largest distance, as in the reference implementation.
        for row in original.chunks_exact_mut(n) {
            let max = row
                .iter()
                .copied()
                .fold(0f32, f32::max)
                .max(f32::MIN_POSITIVE);
            row.iter_mut().for_each(|v| *v /= max);
        }
        let rank: Vec<Vec<usize>> = original.chunks_exact(n).map(argsort).collect();

        // Soft k-reciprocal set vectors: V[i][j] ∝ exp(-d(i, j)) over the expanded set.
        let half = (self.k1 as f32 / 2.0).round() as usize;
        let mut v = vec![0f32; n * n];
        for i in 0..n {
            let base = reciprocal(&rank, i, self.k1);
            let mut expanded = base.clone();
            for &c in &base {
                let candidate = reciprocal(&rank, c, half);
                let shared = candidate.iter().filter(|x| base.contains(x)).count();
                if shared as f32 > 2.0 / 3.0 * candidate.len() as f32 {
                    expanded.extend(candidate);
                }
            }
            expanded.sort_unstable();
            expanded.dedup();
            let weights: Vec<f32> = expanded
                .iter()
                .map(|&j| (-original[i * n + j]).exp())
                .collect();
            let total: f32 = weights.iter().sum();
            for (&j, w) in expanded.iter().zip(weights) {
                v[i * n + j] = w / total;
            }
        }
        if self.k2 > 1 {
            let mut averaged = vec![0f32; n * n];
            let k2 = self.k2.min(n);
            for i in 0..n {
                let out = &mut averaged[i * n..(i + 1) * n];
                for &m in &rank[i][..k2] {
                    for (o, x) in out.iter_mut().zip(&v[m * n..(m + 1) * n]) {
                        *o += x / k2 as f32;
                    }
                }
            }
            v = averaged;
        }

        // Jaccard distance between each query's vector and each gallery image's.
        let mut result = vec![0f32; nq * ng];
        for i in 0..nq {
            let vi = &v[i * n..(i + 1) * n];
            let support: Vec<usize> = (0..n).filter(|&j| vi[j] != 0.0).collect();
            for gj in 0..ng {
                let vj = &v[(nq + gj) * n..(nq + gj + 1) * n];
                let overlap: f32 = support.iter().map(|&k| vi[k].min(vj[k])).sum();
                let jaccard = 1.0 - overlap / (2.0 - overlap);
                result[i * ng + gj] =
                    jaccard * (1.0 - self.lambda) + original[i * n + nq + gj] * self.lambda;
            }
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(angle: f32) -> Vec<f32> {
        vec![angle.cos(), angle.sin()]
    }

    #[test]
    fn a_mutual_neighbour_overtakes_a_one_sided_nearest() {
        // Query at angle 0. The hub at -0.28 is its nearest gallery image, but the hub's own
        // nearest are the dense cluster around -0.5, so the query is not among them. The
        // cluster around 0.3 is slightly farther and does count the query among its nearest.
        let angles = [-0.28, -0.50, -0.52, -0.54, -0.56, 0.30, 0.32, 0.34];
        let g: Vec<Vec<f32>> = angles.iter().map(|&a| unit(a)).collect();
        let (q, g) = (
            EmbeddingSet::from_rows(&[unit(0.0)]),
            EmbeddingSet::from_rows(&g),
        );
        let device = Device::flex();
        let plain = distances(&q.values, &g.values, 2, &device);
        assert_eq!(
            argsort(&plain)[0],
            0,
            "the hub is nearest before re-ranking"
        );
        let params = KReciprocal {
            k1: 3,
            k2: 1,
            lambda: 0.3,
        };
        let re = params.distances(&q, &g, &device).unwrap();
        assert!(re.iter().all(|d| d.is_finite() && *d >= 0.0));
        assert_eq!(argsort(&re)[0], 5, "{re:?}");
        // λ = 1 gives back the original order.
        let original = KReciprocal {
            lambda: 1.0,
            ..params
        };
        assert_eq!(
            argsort(&original.distances(&q, &g, &device).unwrap()),
            argsort(&plain)
        );
    }

    #[test]
    fn reciprocal_sets_are_mutual() {
        let rank = vec![vec![0, 1, 2], vec![1, 0, 2], vec![2, 1, 0]];
        assert_eq!(reciprocal(&rank, 0, 1), vec![0, 1]);
        assert_eq!(reciprocal(&rank, 2, 1), vec![2]);
    }
}
