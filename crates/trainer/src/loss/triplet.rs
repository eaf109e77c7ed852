//! Triplet loss with in-batch mining. Mining runs on the detached distance matrix in plain
//! Rust (so its picks are testable); the loss gathers the picked distances from the
//! differentiable matrix: mean of `max(0, d(a,p) − d(a,n) + margin)`.

use burn::prelude::*;

use crate::config::Mining;

/// Pairwise Euclidean distances `[B, B]` (squared when `squared`).
pub fn pairwise_distances(e: Tensor<2>, squared: bool) -> Tensor<2> {
    let norms = e.clone().powf_scalar(2.0).sum_dim(1); // [B, 1]
    let d2 = (norms.clone() + norms.transpose() - e.clone().matmul(e.transpose()).mul_scalar(2.0))
        .clamp_min(0.0);
    if squared {
        d2
    } else {
        d2.add_scalar(1e-12).sqrt()
    }
}

/// (anchor, positive, negative) picks from a row-major `[B, B]` distance matrix.
pub fn mine_triplets(dist: &[f32], labels: &[usize], mining: Mining) -> Vec<(usize, usize, usize)> {
    let b = labels.len();
    let d = |i: usize, j: usize| dist[i * b + j];
    let positives = |a: usize| (0..b).filter(move |&p| p != a && labels[p] == labels[a]);
    let negatives = |a: usize| (0..b).filter(move |&n| labels[n] != labels[a]);
    let mut out = Vec::new();
    for a in 0..b {
        match mining {
            Mining::BatchHard => {
                let p = positives(a).max_by(|&x, &y| d(a, x).total_cmp(&d(a, y)).then(y.cmp(&x)));
                let n = negatives(a).min_by(|&x, &y| d(a, x).total_cmp(&d(a, y)).then(x.cmp(&y)));
                if let (Some(p), Some(n)) = (p, n) {
                    out.push((a, p, n));
                }
            }
            Mining::SemiHard => {
                for p in positives(a) {
                    let farther = negatives(a)
                        .filter(|&n| d(a, n) > d(a, p))
                        .min_by(|&x, &y| d(a, x).total_cmp(&d(a, y)).then(x.cmp(&y)));
                    let n = farther.or_else(|| {
                        negatives(a).max_by(|&x, &y| d(a, x).total_cmp(&d(a, y)).then(y.cmp(&x)))
                    });
                    if let Some(n) = n {
                        out.push((a, p, n));
                    }
                }
            }
        }
    }
    out
}

/// The triplet loss of a batch and the number of triplets it used.
pub fn triplet_loss(
    embeddings: Tensor<2>,
    labels: &[usize],
    mining: Mining,
    margin: f64,
    squared: bool,
) -> (Tensor<1>, usize) {
    let device = embeddings.device();
    let b = labels.len();
    let dist = pairwise_distances(embeddings, squared);
    let host: Vec<f32> = dist
        .clone()
        .into_data()
        .try_to_vec()
        .expect("f32 distances");
    let triplets = mine_triplets(&host, labels, mining);
    if triplets.is_empty() {
        return (dist.sum().mul_scalar(0.0), 0);
    }
    let index = |pairs: Vec<i64>| {
        Tensor::<1, Int>::from_data(TensorData::new(pairs.clone(), [pairs.len()]), &device)
    };
    let ap = index(
        triplets
            .iter()
            .map(|&(a, p, _)| (a * b + p) as i64)
            .collect(),
    );
    let an = index(
        triplets
            .iter()
            .map(|&(a, _, n)| (a * b + n) as i64)
            .collect(),
    );
    let flat = dist.reshape([b * b]);
    let hinge = (flat.clone().select(0, ap) - flat.select(0, an)).add_scalar(margin);
    (burn::tensor::activation::relu(hinge).mean(), triplets.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four points on a line: 0.0 and 0.4 (class 0), 1.0 and 3.0 (class 1).
    fn setup() -> (Vec<f32>, Vec<usize>) {
        let x = [0.0f32, 0.4, 1.0, 3.0];
        let mut d = vec![0f32; 16];
        for i in 0..4 {
            for j in 0..4 {
                d[i * 4 + j] = (x[i] - x[j]).abs();
            }
        }
        (d, vec![0, 0, 1, 1])
    }

    #[test]
    fn batch_hard_picks() {
        let (d, labels) = setup();
        let t = mine_triplets(&d, &labels, Mining::BatchHard);
        // Anchor 0: positive 1, nearest negative 2 (1.0). Anchor 1: positive 0, negative 2.
        // Anchor 2: positive 3, nearest negative 1. Anchor 3: positive 2, nearest negative 1.
        assert_eq!(t, vec![(0, 1, 2), (1, 0, 2), (2, 3, 1), (3, 2, 1)]);
    }

    #[test]
    fn semi_hard_picks() {
        let (d, labels) = setup();
        let t = mine_triplets(&d, &labels, Mining::SemiHard);
        // (0,1): d=0.4, negatives 1.0 and 3.0 are farther -> nearest of those: 2.
        // (2,3): d=2.0, negatives at 1.0 and 0.6 are nearer -> none farther -> farthest: 0.
        assert_eq!(t, vec![(0, 1, 2), (1, 0, 2), (2, 3, 0), (3, 2, 1)]);
    }

    #[test]
    fn loss_by_hand() {
        let device = Device::flex();
        // 1-D embeddings (as [B, 1]) at the setup's positions.
        let e = Tensor::<2>::from_data(
            TensorData::new(vec![0.0f32, 0.4, 1.0, 3.0], [4, 1]),
            &device,
        );
        let (loss, n) = triplet_loss(e.clone(), &[0, 0, 1, 1], Mining::BatchHard, 0.5, false);
        assert_eq!(n, 4);
        // Hinges: (0.4-1.0+0.5)=0, (0.4-0.6+0.5)=0.3, (2.0-0.6+0.5)=1.9, (2.0-2.6+0.5)=0 -> mean 0.55.
        let v: f32 = loss.into_scalar();
        assert!((v - 0.55).abs() < 1e-4, "{v}");
        let (sq, _) = triplet_loss(e, &[0, 0, 1, 1], Mining::BatchHard, 0.5, true);
        // Squared: (0.16-1+0.5)=0, (0.16-0.36+0.5)=0.3, (4-0.36+0.5)=4.14, (4-6.76+0.5)=0.
        let v: f32 = sq.into_scalar();
        assert!((v - 4.44 / 4.0).abs() < 1e-3, "{v}");
    }
}
