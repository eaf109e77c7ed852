//! The metric head: a linear projection to the embedding dimension, then L2 normalisation.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;

#[derive(Module, Debug)]
pub struct MetricHead {
    pub projection: Linear,
}

impl MetricHead {
    pub fn new(in_dim: usize, out_dim: usize, device: &Device) -> Self {
        Self {
            projection: LinearConfig::new(in_dim, out_dim).init(device),
        }
    }

    /// Projected, unit-length embeddings.
    pub fn forward(&self, features: Tensor<2>) -> Tensor<2> {
        l2_normalize(self.projection.forward(features))
    }
}

/// Rows scaled to unit length (a tiny epsilon keeps zero rows finite).
pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x
        .clone()
        .powf_scalar(2.0)
        .sum_dim(1)
        .add_scalar(1e-12)
        .sqrt();
    x / norm
}
