//! Batch normalisation with batch statistics, forward and backward, for f32 (added by lookalike).
//!
//! Burn's default `batch_norm_train` and `batch_norm_train_backward` reduce over the batch and
//! spatial axes by swapping the batch and channel axes and copying (`copy_2d_tiled`: two
//! transposed copies of the activations forward, two of the gradients backward), then run about
//! ten element-wise passes, each allocating a tensor the size of the activations. Here each is
//! two passes: per-channel sums read the NCHW planes where they lie (in parallel over
//! channels), then one pass writes the output (in parallel over planes). Same formulas: biased
//! variance, `(x − mean) / √(var + ε) · γ + β`.

use alloc::vec;
use alloc::vec::Vec;
use burn_backend::ops::{BatchNormTrain, BatchNormTrainBackward, FloatTensorOps, ModuleOps};
use burn_backend::{DType, Scalar, TensorMetadata};
use burn_std::{Bytes, Shape};

use crate::{Flex, FlexTensor, Layout};

use super::planes::{collect_chunks, lane_sum, per_channel};

/// Whether the kernels here apply: f32 tensors of rank 3 or more (`[batch, channels, ...]`).
pub(crate) fn applies(tensors: &[&FlexTensor]) -> bool {
    tensors.iter().all(|t| t.dtype() == DType::F32) && tensors[0].layout().shape().num_dims() >= 3
}

/// Shape of `x` as (batch, channels, elements a plane).
fn dims(x: &FlexTensor) -> (usize, usize, usize) {
    let shape = x.layout().shape();
    let (batch, channels) = (shape[0], shape[1]);
    (
        batch,
        channels,
        shape.num_elements() / (batch * channels).max(1),
    )
}

fn vector(values: Vec<f32>) -> FlexTensor {
    let n = values.len();
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(Shape::from(vec![n])),
        DType::F32,
    )
}

fn like(x: &FlexTensor, values: Vec<f32>) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(x.layout().shape().clone()),
        DType::F32,
    )
}

/// Σ over the batch and spatial axes of an NCHW `output_grad`, per channel: the bias gradient
/// of a convolution (Burn's default swaps the batch and channel axes and copies first).
pub(crate) fn channel_sums(output_grad: FlexTensor, bias_shape: Shape) -> FlexTensor {
    let grad = output_grad.to_contiguous();
    let (batch, channels, plane) = dims(&grad);
    let data: &[f32] = grad.storage();
    let sums = per_channel(channels, |c| {
        (0..batch)
            .map(|b| {
                let s = (b * channels + c) * plane;
                lane_sum(&data[s..s + plane], &data[s..s + plane], |v, _| v)
            })
            .sum::<f64>() as f32
    });
    FlexTensor::new(
        Bytes::from_elems(sums),
        Layout::contiguous(bias_shape),
        DType::F32,
    )
}

/// Forward with batch statistics; returns the output, the mean and the biased variance.
pub(crate) fn train(
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    epsilon: f64,
) -> BatchNormTrain<Flex> {
    let x = x.to_contiguous();
    let (gamma, beta) = (gamma.to_contiguous(), beta.to_contiguous());
    let (batch, channels, plane) = dims(&x);
    let data: &[f32] = x.storage();
    let count = (batch * plane) as f64;
    let planes = |c: usize| (0..batch).map(move |b| (b * channels + c) * plane);
    let stats: Vec<(f32, f32)> = per_channel(channels, |c| {
        let sum: f64 = planes(c)
            .map(|s| lane_sum(&data[s..s + plane], &data[s..s + plane], |v, _| v))
            .sum();
        let mean = (sum / count) as f32;
        let squares: f64 = planes(c)
            .map(|s| {
                lane_sum(&data[s..s + plane], &data[s..s + plane], |v, _| {
                    (v - mean) * (v - mean)
                })
            })
            .sum();
        (mean, (squares / count) as f32)
    });
    let (g, b): (&[f32], &[f32]) = (gamma.storage(), beta.storage());
    let out = collect_chunks(data.len(), plane, |bc, dst| {
        let c = bc % channels;
        let (mean, var) = stats[c];
        let scale = g[c] / (var + epsilon as f32).sqrt();
        let shift = b[c] - mean * scale;
        let src = &data[bc * plane..(bc + 1) * plane];
        for (o, v) in dst.iter_mut().zip(src) {
            o.write(v * scale + shift);
        }
    });
    let output = like(&x, out);
    let (mean, variance) = stats.into_iter().unzip();
    BatchNormTrain::new(output, vector(mean), vector(variance))
}

/// Gradients with respect to the input, γ and β, given the output's gradient and the mean and
/// variance `train` returned.
pub(crate) fn train_backward(
    x: FlexTensor,
    gamma: FlexTensor,
    mean: FlexTensor,
    variance: FlexTensor,
    epsilon: f64,
    output_grad: FlexTensor,
) -> BatchNormTrainBackward<Flex> {
    let x = x.to_contiguous();
    let grad = output_grad.to_contiguous();
    let (gamma, mean, variance) = (
        gamma.to_contiguous(),
        mean.to_contiguous(),
        variance.to_contiguous(),
    );
    let (batch, channels, plane) = dims(&x);
    let xs: &[f32] = x.storage();
    let gs: &[f32] = grad.storage();
    let (gamma, mean, variance): (&[f32], &[f32], &[f32]) =
        (gamma.storage(), mean.storage(), variance.storage());
    let count = (batch * plane) as f64;
    let inv_std: Vec<f32> = variance
        .iter()
        .map(|v| 1.0 / (v + epsilon as f32).sqrt())
        .collect();
    // Per channel: Σ g (β's gradient) and Σ g·x̂ (γ's gradient).
    let sums: Vec<(f32, f32)> = per_channel(channels, |c| {
        let m = mean[c];
        let (mut sum_g, mut sum_gx) = (0.0f64, 0.0f64);
        for b in 0..batch {
            let s = (b * channels + c) * plane;
            let (xp, gp) = (&xs[s..s + plane], &gs[s..s + plane]);
            sum_g += lane_sum(gp, gp, |g, _| g);
            sum_gx += lane_sum(gp, xp, |g, v| g * (v - m));
        }
        (sum_g as f32, (sum_gx * inv_std[c] as f64) as f32)
    });
    let dx = collect_chunks(xs.len(), plane, |bc, dst| {
        let c = bc % channels;
        let (sum_g, sum_gx) = sums[c];
        // dx = γ/σ · (g − Σg/N − x̂ · Σg·x̂/N), with x̂ = (x − μ)/σ.
        let k = gamma[c] * inv_std[c];
        let slope = -k * inv_std[c] * (sum_gx as f64 / count) as f32;
        let offset = -k * (sum_g as f64 / count) as f32 - slope * mean[c];
        let (xp, gp) = (
            &xs[bc * plane..(bc + 1) * plane],
            &gs[bc * plane..(bc + 1) * plane],
        );
        for ((d, g), v) in dst.iter_mut().zip(gp).zip(xp) {
            d.write(k * g + slope * v + offset);
        }
    });
    let x_grad = like(&x, dx);
    let (beta_grad, gamma_grad) = sums.into_iter().unzip();
    BatchNormTrainBackward::new(x_grad, vector(gamma_grad), vector(beta_grad))
}

/// Burn's default `batch_norm_train`, for the dtypes the kernel above does not take.
pub(crate) fn generic_train(
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    epsilon: f64,
) -> BatchNormTrain<Flex> {
    let shape = x.shape();
    let channels = shape[1];
    let flattened = Shape::new([channels, shape.num_elements() / channels]);
    let mut per_channel = vec![1; shape.num_dims()];
    per_channel[1] = channels;
    let flat =
        |t: FlexTensor| Flex::float_reshape(Flex::float_swap_dims(t, 0, 1), flattened.clone());
    let mean = Flex::float_mean_dim(flat(x.clone()), 1);
    let mean = Flex::float_reshape(mean, Shape::from(per_channel));
    let centered = Flex::float_sub(x.clone(), mean.clone());
    let variance = Flex::float_mean_dim(flat(Flex::float_mul(centered.clone(), centered)), 1);
    let mean = Flex::float_reshape(mean, Shape::new([channels]));
    let variance = Flex::float_reshape(variance, Shape::new([channels]));
    let output = Flex::batch_norm(x, gamma, beta, mean.clone(), variance.clone(), epsilon);
    BatchNormTrain::new(output, mean, variance)
}

/// Burn's default `batch_norm_train_backward`, for the dtypes the kernel above does not take.
pub(crate) fn generic_train_backward(
    x: FlexTensor,
    gamma: FlexTensor,
    mean: FlexTensor,
    variance: FlexTensor,
    epsilon: f64,
    output_grad: FlexTensor,
) -> BatchNormTrainBackward<Flex> {
    let shape = x.shape();
    let channels = shape[1];
    let flattened = Shape::new([channels, shape.num_elements() / channels]);
    let mut per_channel = vec![1; shape.num_dims()];
    per_channel[1] = channels;
    let per_channel = Shape::from(per_channel);
    let flat =
        |t: FlexTensor| Flex::float_reshape(Flex::float_swap_dims(t, 0, 1), flattened.clone());
    let inv_std = Flex::float_reshape(
        Flex::float_recip(Flex::float_sqrt(Flex::float_add_scalar(
            variance,
            Scalar::Float(epsilon),
        ))),
        per_channel.clone(),
    );
    let normalized = Flex::float_mul(
        Flex::float_sub(x, Flex::float_reshape(mean, per_channel.clone())),
        inv_std.clone(),
    );
    let output_grad_flat = flat(output_grad.clone());
    let normalized_grad_flat = flat(Flex::float_mul(output_grad.clone(), normalized.clone()));
    let beta_grad = Flex::float_sum_dim(output_grad_flat.clone(), 1);
    let gamma_grad = Flex::float_sum_dim(normalized_grad_flat.clone(), 1);
    let mean_grad = Flex::float_reshape(
        Flex::float_mean_dim(output_grad_flat, 1),
        per_channel.clone(),
    );
    let mean_normalized_grad = Flex::float_reshape(
        Flex::float_mean_dim(normalized_grad_flat, 1),
        per_channel.clone(),
    );
    let centred_grad = Flex::float_sub(output_grad, mean_grad);
    let projected = Flex::float_mul(normalized, mean_normalized_grad);
    let scale = Flex::float_mul(Flex::float_reshape(gamma, per_channel), inv_std);
    let x_grad = Flex::float_mul(scale, Flex::float_sub(centred_grad, projected));
    BatchNormTrainBackward::new(
        x_grad,
        Flex::float_reshape(gamma_grad, Shape::new([channels])),
        Flex::float_reshape(beta_grad, Shape::new([channels])),
    )
}
