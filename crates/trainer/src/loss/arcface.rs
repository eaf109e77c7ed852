//! ArcFace (Deng et al., 2019): softmax over `s·cos θ` with an additive angular margin `m` on
//! the target class, `s·cos(θ + m)`. Class centres are a learned `[C, D]` matrix with its own
//! learning rate.
//!
//! Numerical safety: cosines are clamped inside (−1, 1) so `sin θ = √(1 − cos²θ)` has a finite
//! gradient, and where `θ + m` would pass π (cos θ < cos(π − m)) the target logit falls back to
//! `cos θ − m·sin m`, which keeps the logit monotonic in θ (the usual "th/mm" trick).

use burn::module::{Module, Param};
use burn::prelude::*;
use model::head::l2_normalize;

#[derive(Module, Debug)]
pub struct ArcFace {
    pub centres: Param<Tensor<2>>,
    #[module(skip)]
    pub margin: f64,
    #[module(skip)]
    pub scale: f64,
}

impl ArcFace {
    pub fn new(classes: usize, dim: usize, margin: f64, scale: f64, device: &Device) -> Self {
        let centres = burn::nn::Initializer::XavierNormal { gain: 1.0 }.init_with(
            [classes, dim],
            Some(dim),
            Some(classes),
            device,
        );
        Self {
            centres,
            margin,
            scale,
        }
    }

    /// Scaled logits `[B, C]`, the margin applied to each row's target class.
    pub fn logits(&self, embeddings: Tensor<2>, one_hot: Tensor<2>) -> Tensor<2> {
        let eps = 1e-6;
        let centres = l2_normalize(self.centres.val());
        let cos = l2_normalize(embeddings)
            .matmul(centres.transpose())
            .clamp(-1.0 + eps, 1.0 - eps);
        let sin = (cos.clone().powf_scalar(2.0).neg() + 1.0).sqrt();
        let (cos_m, sin_m) = (self.margin.cos(), self.margin.sin());
        let threshold = (std::f64::consts::PI - self.margin).cos();
        let fallback = (std::f64::consts::PI - self.margin).sin() * self.margin;
        let phi = cos.clone().mul_scalar(cos_m) - sin.mul_scalar(sin_m);
        let phi = phi.mask_where(
            cos.clone().lower_equal_elem(threshold),
            cos.clone().sub_scalar(fallback),
        );
        let target = one_hot.clone() * phi;
        let others = (one_hot.neg() + 1.0) * cos;
        (target + others).mul_scalar(self.scale)
    }

    /// Mean cross-entropy of the margin logits.
    pub fn forward(&self, embeddings: Tensor<2>, one_hot: Tensor<2>) -> Tensor<1> {
        let logits = self.logits(embeddings, one_hot.clone());
        let log_p = burn::tensor::activation::log_softmax(logits, 1);
        (one_hot * log_p).sum_dim(1).mean().neg()
    }
}

/// One-hot rows `[B, C]` for class indices.
pub fn one_hot(labels: &[usize], classes: usize, device: &Device) -> Tensor<2> {
    let mut v = vec![0f32; labels.len() * classes];
    for (i, &l) in labels.iter().enumerate() {
        v[i * classes + l] = 1.0;
    }
    Tensor::from_data(TensorData::new(v, [labels.len(), classes]), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_to_vec().unwrap()
    }

    #[test]
    fn logits_by_hand() {
        let device = Device::flex();
        // Centres along x and y; one embedding at 60° from x (30° from y), target class 0.
        let arc = ArcFace {
            centres: Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![2.0f32, 0.0, 0.0, 3.0], [2, 2]),
                &device,
            )),
            margin: 0.5,
            scale: 10.0,
        };
        let a = std::f64::consts::FRAC_PI_3;
        let e = Tensor::from_data(
            TensorData::new(vec![a.cos() as f32, a.sin() as f32], [1, 2]),
            &device,
        );
        let oh = one_hot(&[0], 2, &device);
        let l = values(arc.logits(e.clone(), oh.clone()));
        assert!((l[0] as f64 - 10.0 * (a + 0.5).cos()).abs() < 1e-4, "{l:?}");
        assert!((l[1] as f64 - 10.0 * a.sin()).abs() < 1e-4);
        // Cross-entropy of those two logits.
        let (t, o) = (10.0 * (a + 0.5).cos(), 10.0 * a.sin());
        let want = -(t - (t.exp() + o.exp()).ln());
        let got: f32 = arc.forward(e, oh).into_scalar();
        assert!((got as f64 - want).abs() < 1e-4, "{got} vs {want}");
    }

    #[test]
    fn safe_past_pi() {
        let device = Device::flex();
        // Embedding opposite its centre: θ = π, θ + m would wrap; the fallback applies.
        let arc = ArcFace {
            centres: Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![1.0f32, 0.0], [1, 2]),
                &device,
            )),
            margin: 0.5,
            scale: 1.0,
        };
        let e = Tensor::from_data(TensorData::new(vec![-1.0f32, 0.0], [1, 2]), &device);
        let l = values(arc.logits(e, one_hot(&[0], 1, &device)));
        let want = -1.0 - (std::f64::consts::PI - 0.5).sin() * 0.5;
        assert!((l[0] as f64 - want).abs() < 1e-3, "{l:?}");
        assert!(l[0].is_finite());
    }
}
