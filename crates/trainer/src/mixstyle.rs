//! Style mixing inside the backbone (MixStyle: Zhou et al., "Domain Generalization with
//! MixStyle", ICLR 2021). An early block's output keeps the picture's style in its channels'
//! means and spreads (a pencil sketch and a photo of one horse differ there most), and its
//! content in the normalised map. With some probability a batch's activations are mixed:
//! each image keeps its own normalised map and takes the statistics of a blend of itself and
//! another image of the batch, so the layers after see the horse in a style between the two.
//! Training only; the saved model has no trace of it.

use burn::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MixStyleConfig {
    /// Probability that a batch is mixed at each place (drawn for each place apart).
    pub probability: f64,
    /// Each image's weight on its own statistics is drawn from Beta(alpha, alpha): 0.1 puts
    /// most weights near 0 or 1 (mostly one style or the other), 1 spreads them evenly.
    pub alpha: f64,
    /// Where to mix: after the last block at each of these output strides (the ends of the
    /// early resolutions, where the statistics carry style more than class).
    pub strides: Vec<usize>,
}

impl Default for MixStyleConfig {
    /// The paper's choice: p 0.5, α 0.1, after the first three resolutions of a ResNet
    /// (strides 4, 8, 16).
    fn default() -> Self {
        Self {
            probability: 0.5,
            alpha: 0.1,
            strides: vec![4, 8, 16],
        }
    }
}

impl MixStyleConfig {
    /// One batch's mixings, drawn from `seed`: at each of `blocks` (from
    /// `Backbone::last_blocks_at`), with probability `probability`, a [`StyleMix`] of `batch`
    /// images.
    pub fn draw(&self, blocks: &[usize], batch: usize, seed: u64) -> Vec<(usize, StyleMix)> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        blocks
            .iter()
            .filter_map(|&block| {
                let mixed = rng.random::<f64>() < self.probability;
                mixed.then(|| (block, StyleMix::sample(batch, self.alpha, &mut rng)))
            })
            .collect()
    }
}

/// One mixing of a batch: image `i` blends its statistics with those of `partner[i]`, with
/// weight `own[i]` on its own.
#[derive(Debug, Clone, PartialEq)]
pub struct StyleMix {
    pub partner: Vec<usize>,
    pub own: Vec<f32>,
}

impl StyleMix {
    /// A random mixing of `batch` images: a shuffled partner each, Beta(α, α) weights.
    pub fn sample(batch: usize, alpha: f64, rng: &mut impl Rng) -> Self {
        let mut partner: Vec<usize> = (0..batch).collect();
        for i in (1..batch).rev() {
            partner.swap(i, rng.random_range(0..=i));
        }
        let own = (0..batch).map(|_| beta(alpha, rng) as f32).collect();
        Self { partner, own }
    }

    /// `x` `[B, C, H, W]` with each image's channel statistics replaced by the blend; the
    /// statistics carry no gradient (as in the paper), the normalised map does.
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let device = x.device();
        let flat = x.reshape([b, c, h * w]);
        let stats = flat.clone().detach();
        let mean = stats.clone().mean_dim(2);
        let std = (stats - mean.clone())
            .powf_scalar(2.0)
            .mean_dim(2)
            .add_scalar(1e-6)
            .sqrt();
        let normalised = (flat - mean.clone()) / std.clone();
        let partner = Tensor::<1, Int>::from_data(
            TensorData::new(
                self.partner.iter().map(|&p| p as i64).collect::<Vec<_>>(),
                [b],
            ),
            &device,
        );
        let own = Tensor::<3>::from_data(TensorData::new(self.own.clone(), [b, 1, 1]), &device);
        let blend = |s: Tensor<3>| {
            let other = s.clone().select(0, partner.clone());
            s * own.clone() + other * own.clone().neg().add_scalar(1.0)
        };
        (normalised * blend(std) + blend(mean)).reshape([b, c, h, w])
    }
}

/// A draw from Beta(α, α) by Jöhnk's method: with u, v uniform, x = u^(1/α) and y = v^(1/α)
/// conditioned on x + y ≤ 1 give x / (x + y). Accepts about 99 % of draws at α = 0.1; the
/// powers are taken in logarithms, where u^10 would underflow.
fn beta(alpha: f64, rng: &mut impl Rng) -> f64 {
    loop {
        let u: f64 = rng.random::<f64>();
        let v: f64 = rng.random::<f64>();
        if u == 0.0 || v == 0.0 {
            continue;
        }
        let (lx, ly) = (u.ln() / alpha, v.ln() / alpha);
        let top = lx.max(ly);
        let log_sum = top + ((lx - top).exp() + (ly - top).exp()).ln();
        if log_sum <= 0.0 {
            return (lx - log_sum).exp();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Beta(α, α) has mean 1/2 and variance 1 / (4 (2α + 1)): 0.2083 at α = 0.1, 0.0833
    /// (uniform) at α = 1.
    #[test]
    fn beta_draws_have_the_right_moments() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for (alpha, variance) in [(0.1, 0.2083), (1.0, 1.0 / 12.0)] {
            let draws: Vec<f64> = (0..20_000).map(|_| beta(alpha, &mut rng)).collect();
            let mean = draws.iter().sum::<f64>() / draws.len() as f64;
            let var = draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / draws.len() as f64;
            assert!((mean - 0.5).abs() < 0.01, "α {alpha}: mean {mean}");
            assert!((var - variance).abs() < 0.01, "α {alpha}: variance {var}");
            assert!(draws.iter().all(|d| (0.0..=1.0).contains(d)));
        }
    }

    /// Each image comes out with its own normalised map and the blended statistics; a
    /// weight of 1 leaves it as it was, and the partners are a permutation.
    #[test]
    fn mixing_blends_the_statistics_and_keeps_the_map() {
        let device = Device::flex();
        let (b, c, hw) = (3, 2, 4);
        let values: Vec<f32> = (0..b * c * hw)
            .map(|i| ((i * 7919) % 23) as f32 / 3.0 - 2.0)
            .collect();
        let x = Tensor::<4>::from_data(TensorData::new(values.clone(), [b, c, 2, 2]), &device);
        let mix = StyleMix {
            partner: vec![2, 0, 1],
            own: vec![1.0, 0.25, 0.0],
        };
        let out = mix.apply(x).into_data().try_to_vec::<f32>().unwrap();
        let stats = |v: &[f32]| {
            let m = v.iter().sum::<f32>() / v.len() as f32;
            let s = (v.iter().map(|a| (a - m).powi(2)).sum::<f32>() / v.len() as f32 + 1e-6).sqrt();
            (m, s)
        };
        for i in 0..b {
            for ch in 0..c {
                let plane = |v: &[f32], img: usize| v[(img * c + ch) * hw..][..hw].to_vec();
                let (mi, si) = stats(&plane(&values, i));
                let (mp, sp) = stats(&plane(&values, mix.partner[i]));
                let w = mix.own[i];
                let (m, s) = (w * mi + (1.0 - w) * mp, w * si + (1.0 - w) * sp);
                for (o, v) in plane(&out, i).iter().zip(plane(&values, i)) {
                    let want = (v - mi) / si * s + m;
                    assert!(
                        (o - want).abs() < 1e-4,
                        "image {i} channel {ch}: {o} against {want}"
                    );
                }
            }
        }
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut partner = StyleMix::sample(32, 0.1, &mut rng).partner;
        partner.sort_unstable();
        assert_eq!(partner, (0..32).collect::<Vec<_>>());
    }
}
