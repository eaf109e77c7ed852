//! A convolution with its bias, a residual and an activation in one pass over the output, for
//! inference: `activation(conv2d(x, w) + bias + residual)`.
//!
//! On the CPU (flex) it runs lookalike's fused kernels (`vendor/burn-flex/src/ops/fused.rs`):
//! the residual and the clamp of ReLU/ReLU6 are applied to each tile of the output as the
//! convolution writes it, instead of one pass over the whole activation each. On wgpu, and
//! always under autodiff (where gradients are needed), it is the same composition of Burn's
//! ops.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, backend_extension};
use burn::prelude::*;
use burn::tensor::ops::ConvOptions;

use crate::layers::Activation;

/// The backend operations under [`conv2d_fused`]: `clamp(conv2d(x, weight, bias) [+ residual],
/// lo, hi)` (two operations because the extension boundary carries no optional tensors;
/// [`conv2d_fused`] takes an [`Activation`]).
#[backend_extension(Flex, Cube: cfg(feature = "wgpu"))]
pub trait FusedConvBackend: Backend {
    fn conv2d_bias_clamp(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
        clamp: Option<(f32, f32)>,
    ) -> FloatTensor<Self>;

    fn conv2d_bias_residual_clamp(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        options: ConvOptions<2>,
        clamp: Option<(f32, f32)>,
    ) -> FloatTensor<Self>;

    /// An inverted residual: expansion (1×1), depthwise convolution and projection (1×1), each
    /// with its bias and clamp, the block's input added where `residual`
    /// ([`inverted_residual_fused`]).
    #[allow(clippy::too_many_arguments)]
    fn inverted_residual_clamp(
        x: FloatTensor<Self>,
        expand: FloatTensor<Self>,
        expand_bias: FloatTensor<Self>,
        expand_clamp: Option<(f32, f32)>,
        depthwise: FloatTensor<Self>,
        depthwise_bias: FloatTensor<Self>,
        options: ConvOptions<2>,
        depthwise_clamp: Option<(f32, f32)>,
        project: FloatTensor<Self>,
        project_bias: FloatTensor<Self>,
        project_clamp: Option<(f32, f32)>,
        residual: bool,
    ) -> FloatTensor<Self>;
}

impl FusedConvBackend for burn::backend::Flex {
    fn conv2d_bias_clamp(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
        clamp: Option<(f32, f32)>,
    ) -> FloatTensor<Self> {
        burn::backend::flex::ops::fused::conv2d_fused(x, weight, Some(bias), options, None, clamp)
    }

    fn conv2d_bias_residual_clamp(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        options: ConvOptions<2>,
        clamp: Option<(f32, f32)>,
    ) -> FloatTensor<Self> {
        let residual = Some(residual);
        burn::backend::flex::ops::fused::conv2d_fused(
            x,
            weight,
            Some(bias),
            options,
            residual,
            clamp,
        )
    }

    fn inverted_residual_clamp(
        x: FloatTensor<Self>,
        expand: FloatTensor<Self>,
        expand_bias: FloatTensor<Self>,
        expand_clamp: Option<(f32, f32)>,
        depthwise: FloatTensor<Self>,
        depthwise_bias: FloatTensor<Self>,
        options: ConvOptions<2>,
        depthwise_clamp: Option<(f32, f32)>,
        project: FloatTensor<Self>,
        project_bias: FloatTensor<Self>,
        project_clamp: Option<(f32, f32)>,
        residual: bool,
    ) -> FloatTensor<Self> {
        use burn::backend::flex::ops::fused::{ConvStep, inverted_residual_fused};
        let step = |weight, bias, clamp| ConvStep {
            weight,
            bias,
            clamp,
        };
        inverted_residual_fused(
            x,
            step(expand, expand_bias, expand_clamp),
            step(depthwise, depthwise_bias, depthwise_clamp),
            options,
            step(project, project_bias, project_clamp),
            residual,
        )
    }
}

#[cfg(feature = "wgpu")]
impl FusedConvBackend for burn::backend::Cube {
    fn conv2d_bias_clamp(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
        clamp: Option<(f32, f32)>,
    ) -> FloatTensor<Self> {
        composed::<Self>(x, weight, bias, None, options, clamp)
    }

    fn conv2d_bias_residual_clamp(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        options: ConvOptions<2>,
        clamp: Option<(f32, f32)>,
    ) -> FloatTensor<Self> {
        composed::<Self>(x, weight, bias, Some(residual), options, clamp)
    }

    fn inverted_residual_clamp(
        x: FloatTensor<Self>,
        expand: FloatTensor<Self>,
        expand_bias: FloatTensor<Self>,
        expand_clamp: Option<(f32, f32)>,
        depthwise: FloatTensor<Self>,
        depthwise_bias: FloatTensor<Self>,
        options: ConvOptions<2>,
        depthwise_clamp: Option<(f32, f32)>,
        project: FloatTensor<Self>,
        project_bias: FloatTensor<Self>,
        project_clamp: Option<(f32, f32)>,
        residual: bool,
    ) -> FloatTensor<Self> {
        let one = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
        let shortcut = residual.then(|| x.clone());
        let y = composed::<Self>(x, expand, expand_bias, None, one.clone(), expand_clamp);
        let y = composed::<Self>(y, depthwise, depthwise_bias, None, options, depthwise_clamp);
        composed::<Self>(y, project, project_bias, shortcut, one, project_clamp)
    }
}

/// The operation as Burn's own ops, for backends without a fused kernel.
#[cfg(feature = "wgpu")]
fn composed<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: FloatTensor<B>,
    residual: Option<FloatTensor<B>>,
    options: ConvOptions<2>,
    clamp: Option<(f32, f32)>,
) -> FloatTensor<B> {
    let mut y = B::conv2d(x, weight, Some(bias), options);
    if let Some(r) = residual {
        y = B::float_add(y, r);
    }
    match clamp {
        Some((lo, hi)) => B::float_clamp(y, lo.into(), hi.into()),
        None => y,
    }
}

/// `activation(conv2d(x, weight, bias) + residual)`: fused outside autodiff, the plain
/// composition of Burn's ops under it. ReLU6 keeps NaN as `relu` then `clamp_max` do.
pub fn conv2d_fused(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    residual: Option<Tensor<4>>,
    options: ConvOptions<2>,
    activation: Activation,
) -> Tensor<4> {
    if x.device().is_autodiff() {
        let y = burn::tensor::module::conv2d(x, weight, Some(bias), options);
        return activation.after_residual(y, residual);
    }
    let clamp = clamp_of(activation);
    let (x, weight, bias) = (
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
    );
    Tensor::from_dispatch(match residual {
        None => Dispatch::conv2d_bias_clamp(x, weight, bias, options, clamp),
        Some(r) => {
            Dispatch::conv2d_bias_residual_clamp(x, weight, bias, r.into_dispatch(), options, clamp)
        }
    })
}

/// The clamp that stands for an activation.
fn clamp_of(activation: Activation) -> Option<(f32, f32)> {
    match activation {
        Activation::None => None,
        Activation::Relu => Some((0.0, f32::INFINITY)),
        Activation::Relu6 => Some((0.0, 6.0)),
    }
}

/// One of [`inverted_residual_fused`]'s convolutions: weight, bias, activation.
pub struct ConvParts {
    pub weight: Tensor<4>,
    pub bias: Tensor<1>,
    pub activation: Activation,
}

/// An inverted residual for inference (not under autodiff): `project(depthwise(expand(x)))`,
/// each `activation(conv2d(·, weight) + bias)`, the block's input added before the projection's
/// activation where `residual`: `expand` and `project` 1×1 convolutions, `depthwise` one over
/// the expanded channels with `options`. On the CPU the expanded activation and the depthwise's
/// output are computed a band of rows at a time and never written out whole
/// (`vendor/burn-flex/src/ops/expand_depthwise.rs`); elsewhere, and where the bands would not
/// pay, the three fused convolutions one after the other.
pub fn inverted_residual_fused(
    x: Tensor<4>,
    expand: ConvParts,
    depthwise: ConvParts,
    options: ConvOptions<2>,
    project: ConvParts,
    residual: bool,
) -> Tensor<4> {
    Tensor::from_dispatch(Dispatch::inverted_residual_clamp(
        x.into_dispatch(),
        expand.weight.into_dispatch(),
        expand.bias.into_dispatch(),
        clamp_of(expand.activation),
        depthwise.weight.into_dispatch(),
        depthwise.bias.into_dispatch(),
        options,
        clamp_of(depthwise.activation),
        project.weight.into_dispatch(),
        project.bias.into_dispatch(),
        clamp_of(project.activation),
        residual,
    ))
}
