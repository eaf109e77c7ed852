//! Convolution backward passes for the layers of mobile networks (f32), added by lookalike.
//!
//! Dense convolutions with one group (1×1 included): the weight gradient went through Burn's
//! generic route, a convolution of the batch-swapped input with the batch-swapped output
//! gradient as its kernel, so both were copied transposed (`copy_2d_tiled`) and unfolded into
//! one column per weight. It and the input gradient are now the GEMMs of `dense.rs`.
//!
//! Padding that differs before and after (TensorFlow's "same" at stride 2: EfficientNet-Lite's
//! stem and stride-2 depthwise layers) made Burn copy the input into a padded tensor for the
//! forward pass and both gradients, and crop the input gradient; the f32 kernels here take the
//! padding as it is (`Geometry::of_conv`).
//!
//! A canonical depthwise convolution has one filter a channel (`groups == channels_in ==
//! channels_out`). Its forward pass had a direct path in `conv.rs`; its two backward passes
//! did not:
//!
//! - the weight gradient went through Burn's generic grouped fallback: for every channel a
//!   slice, a convolution of the batch against the output gradient (an `[1, batch, h, w]`
//!   image with an `[1, batch, oh, ow]` kernel, so im2col copies of the whole plane) and a
//!   `slice_assign` that copies the whole gradient tensor again (quadratic in channels);
//! - the input gradient, a transposed convolution with `groups == channels`, ran one GEMM
//!   with a single row per (batch, channel) and a col2im scatter.
//!
//! Both are now the kernels of `depthwise.rs` (with the forward pass): filters over phase
//! planes, every tap a contiguous run, in parallel over planes (input gradient) or channels
//! (weight gradient).

use super::fused::Epilogue;
use burn_backend::ops::conv::{calculate_padding_out, pad_asymmetric_conv_input};
use burn_backend::ops::{ConvOptions, ConvTransposeOptions, FloatTensorOps, ModuleOps};
use burn_backend::{DType, TensorMetadata};
use burn_std::{Shape, Slice};

use crate::{Flex, FlexTensor};

use super::dense;
use super::depthwise;
use super::planes::f32_tensor;

/// Whether `weight` (`[channels, 1, kh, kw]`) with `groups` is a canonical depthwise filter
/// for an input of `channels_in` channels.
fn is_depthwise(channels_in: usize, weight_shape: &[usize], groups: usize) -> bool {
    groups > 1 && groups == channels_in && weight_shape[0] == channels_in && weight_shape[1] == 1
}

pub(super) fn all_f32_4d(tensors: &[&FlexTensor]) -> bool {
    tensors
        .iter()
        .all(|t| t.dtype() == DType::F32 && t.layout().shape().num_dims() == 4)
}

/// The transposed convolution through a direct kernel where one applies (depthwise, or dense
/// with one group; f32), or the inputs back for the generic path.
pub(crate) fn conv_transpose2d(
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    options: &ConvTransposeOptions<2>,
) -> Result<FlexTensor, (FlexTensor, FlexTensor)> {
    if !all_f32_4d(&[&x, &weight]) {
        return Err((x, weight));
    }
    let w_shape = weight.layout().shape();
    if is_depthwise(x.layout().shape()[1], w_shape, options.groups) {
        return Ok(depthwise_conv_transpose2d(x, weight, bias, options));
    }
    if dense::applies(&x, &weight, bias.as_ref(), options.groups) {
        return Ok(dense::conv_transpose2d(x, weight, bias, options));
    }
    Err((x, weight))
}

/// The weight gradient of a 2D convolution: direct kernels for depthwise and dense (one group)
/// convolutions in f32, Burn's generic route otherwise.
pub(crate) fn conv2d_weight_backward(
    x: FlexTensor,
    weight: FlexTensor,
    output_grad: FlexTensor,
    options: ConvOptions<2>,
) -> FlexTensor {
    if all_f32_4d(&[&x, &weight, &output_grad]) {
        let w_shape = weight.layout().shape();
        if is_depthwise(x.layout().shape()[1], w_shape, options.groups) {
            return depthwise_weight_backward(x, weight.shape(), output_grad, &options);
        }
        if dense::applies(&x, &weight, None, options.groups) {
            return dense::conv2d_weight_backward(x, weight.shape(), output_grad, &options);
        }
    }
    generic_conv2d_weight_backward(x, weight, output_grad, options)
}

/// Transposed depthwise convolution (`depthwise::transpose`): `out[b, c, oh*s + kh*d - p, ...]
/// += x[b, c, oh, ...] * w[c, 0, kh, kw]`. `x` is `[batch, channels, h, w]`, `weight`
/// `[channels, 1, kh, kw]`.
fn depthwise_conv_transpose2d(
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    options: &ConvTransposeOptions<2>,
) -> FlexTensor {
    let x = x.to_contiguous();
    let weight = weight.to_contiguous();
    let x_shape = x.layout().shape();
    let (batch, channels, in_h, in_w) = (x_shape[0], x_shape[1], x_shape[2], x_shape[3]);
    let w_shape = weight.layout().shape();
    let g = depthwise::Geometry::transposed([in_h, in_w], [w_shape[2], w_shape[3]], options);
    let bias = bias.map(|b| b.to_contiguous());
    let bias_data: Option<&[f32]> = bias.as_ref().map(|b| b.storage());
    let out = depthwise::transpose(
        x.storage(),
        weight.storage(),
        bias_data,
        batch,
        channels,
        &g,
    );
    f32_tensor(out, &[batch, channels, g.in_h, g.in_w])
}

/// Whether a convolution is an f32 depthwise one, which `depthwise_conv2d` and
/// `depthwise_x_backward` take with any padding (TensorFlow's "same" padding of a stride-2
/// layer included, where Burn's default first copies the input into a padded tensor and, for
/// the input gradient, crops the result again).
pub(crate) fn is_depthwise_f32(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: Option<&FlexTensor>,
    options: &ConvOptions<2>,
) -> bool {
    all_f32_4d(&[x, weight])
        && bias.is_none_or(|b| b.dtype() == DType::F32)
        && is_depthwise(
            x.layout().shape()[1],
            weight.layout().shape(),
            options.groups,
        )
}

/// The geometry of a convolution of `x_shape` (`[batch, channels, h, w]`) with a weight of
/// `w_shape`, checked against the output gradient's shape where one is given.
pub(crate) fn geometry(
    x_shape: &[usize],
    w_shape: &[usize],
    options: &ConvOptions<2>,
    grad_shape: Option<&[usize]>,
) -> depthwise::Geometry {
    let g =
        depthwise::Geometry::of_conv([x_shape[2], x_shape[3]], [w_shape[2], w_shape[3]], options);
    if let Some(grad) = grad_shape {
        assert_eq!(
            [grad[2], grad[3]],
            [g.out_h, g.out_w],
            "conv2d backward: output gradient of the wrong size"
        );
    }
    g
}

/// A depthwise convolution (`is_depthwise_f32`), with no padded copy of its input.
pub(crate) fn depthwise_conv2d(
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    options: &ConvOptions<2>,
) -> FlexTensor {
    depthwise_conv2d_with(x, weight, bias, options, &Epilogue::default())
}

/// [`depthwise_conv2d`] with an epilogue (`fused.rs`) applied to each output plane once written.
pub(crate) fn depthwise_conv2d_with(
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    options: &ConvOptions<2>,
    epilogue: &Epilogue,
) -> FlexTensor {
    let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
    let x_shape = x.layout().shape();
    let (batch, channels) = (x_shape[0], x_shape[1]);
    let g = geometry(x_shape, weight.layout().shape(), options, None);
    let bias = bias.map(|b| b.to_contiguous());
    let bias_data: Option<&[f32]> = bias.as_ref().map(|b| {
        let data: &[f32] = b.storage();
        assert_eq!(
            data.len(),
            channels,
            "conv depthwise: bias length ({}) must equal channels ({channels})",
            data.len()
        );
        data
    });
    let out = depthwise::forward(
        x.storage(),
        weight.storage(),
        bias_data,
        batch,
        channels,
        &g,
        epilogue,
    );
    f32_tensor(out, &[batch, channels, g.out_h, g.out_w])
}

/// The input gradient of a depthwise convolution (`is_depthwise_f32`): the transposed
/// convolution straight onto the input's shape, with no padded tensor to crop.
fn depthwise_x_backward(
    x_shape: &[usize],
    weight: FlexTensor,
    output_grad: FlexTensor,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let (weight, grad) = (weight.to_contiguous(), output_grad.to_contiguous());
    let g = geometry(
        x_shape,
        weight.layout().shape(),
        options,
        Some(grad.layout().shape()),
    );
    let (batch, channels) = (x_shape[0], x_shape[1]);
    let out = depthwise::transpose(grad.storage(), weight.storage(), None, batch, channels, &g);
    f32_tensor(out, x_shape)
}

/// Weight gradient of a depthwise convolution (`depthwise::weight_gradient`): `dw[c, 0, kh, kw]
/// = Σ_b Σ_oh,ow grad[b, c, oh, ow] * x[b, c, oh*s + kh*d - p, ow*s + kw*d - p]`. `x` is the
/// convolution's input (`[batch, channels, h, w]`), `output_grad` its output's gradient.
fn depthwise_weight_backward(
    x: FlexTensor,
    weight_shape: Shape,
    output_grad: FlexTensor,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let (x, grad) = (x.to_contiguous(), output_grad.to_contiguous());
    let x_shape = x.layout().shape();
    let g = geometry(x_shape, &weight_shape, options, Some(grad.layout().shape()));
    let (batch, channels) = (x_shape[0], x_shape[1]);
    let out = depthwise::weight_gradient(x.storage(), grad.storage(), batch, channels, &g);
    f32_tensor(out, &weight_shape)
}

/// The input gradient of a 2D convolution: the depthwise or dense kernels (f32) straight onto
/// the input's shape, whatever the padding; Burn's default otherwise
/// (`burn_backend::ops::conv::conv2d_x_backward`, crate-private there, copied): a transposed
/// convolution, onto a padded input's shape and cropped where the padding differs before and
/// after.
pub(crate) fn conv2d_x_backward(
    x: FlexTensor,
    weight: FlexTensor,
    output_grad: FlexTensor,
    options: ConvOptions<2>,
) -> FlexTensor {
    let x_shape: [usize; 4] = x.shape().dims();
    if all_f32_4d(&[&output_grad]) {
        if is_depthwise_f32(&x, &weight, None, &options) {
            return depthwise_x_backward(&x_shape, weight, output_grad, &options);
        }
        if dense::applies(&x, &weight, None, options.groups) {
            return dense::conv2d_x_backward(&x_shape, weight, output_grad, &options);
        }
    }
    let padding = options.padding;
    let (x, options) = pad_asymmetric_conv_input::<Flex, 2>(x, options);
    let [_, _, h, w] = x.shape().dims();
    let [_, _, out_h, out_w] = output_grad.shape().dims();
    let [_, _, kh, kw] = weight.shape().dims();
    let padding_out = |i: usize, kernel: usize, size_in: usize, size_out: usize| {
        calculate_padding_out(
            kernel,
            options.stride[i],
            options.padding_begin()[i],
            options.dilation[i],
            size_in,
            size_out,
        )
    };
    let grad = Flex::conv_transpose2d(
        output_grad,
        weight,
        None,
        ConvTransposeOptions::new(
            options.stride,
            options.padding_begin(),
            [padding_out(0, kh, h, out_h), padding_out(1, kw, w, out_w)],
            options.dilation,
            options.groups,
        ),
    );
    if padding.iter().all(|(begin, end)| begin == end) {
        return grad;
    }
    let mut ranges = x_shape.map(|d| Slice::from(0..d));
    for (axis, (begin, _)) in padding.iter().enumerate() {
        ranges[axis + 2] = Slice::from(*begin..*begin + x_shape[axis + 2]);
    }
    Flex::float_slice(grad, &ranges)
}

/// Burn's default weight gradient (`burn_backend::ops::conv::conv2d_weight_backward`, which is
/// crate-private there), for every convolution the depthwise path does not take.
fn generic_conv2d_weight_backward(
    x: FlexTensor,
    weight: FlexTensor,
    output_grad: FlexTensor,
    options: ConvOptions<2>,
) -> FlexTensor {
    let (x, options) = pad_asymmetric_conv_input::<Flex, 2>(x, options);
    let weight_shape = weight.shape();
    let swapped = |x: FlexTensor, grad: FlexTensor| {
        let x = Flex::float_swap_dims(x, 0, 1);
        let grad = Flex::float_swap_dims(grad, 0, 1);
        let options =
            ConvOptions::new(options.dilation, options.padding_begin(), options.stride, 1);
        Flex::float_swap_dims(Flex::conv2d(x, grad, None, options), 0, 1)
    };
    let crop = |grad: FlexTensor, dims: [usize; 4]| {
        if grad.shape().dims::<4>() == dims {
            grad
        } else {
            Flex::float_slice(grad, &dims.map(|d| Slice::from(0..d)))
        }
    };
    if options.groups == 1 {
        return crop(swapped(x, output_grad), weight_shape.dims());
    }
    let [channels_out, per_group_in, kernel_h, kernel_w] = weight_shape.dims();
    let per_group_out = channels_out / options.groups;
    let mut weight_grad = Flex::float_zeros(weight_shape, &weight.device(), weight.dtype().into());
    for g in 0..options.groups {
        let ci = g * per_group_in..(g + 1) * per_group_in;
        let co = g * per_group_out..(g + 1) * per_group_out;
        let x_g = Flex::float_slice(x.clone(), &[Slice::full(), Slice::from(ci.clone())]);
        let grad_g = Flex::float_slice(
            output_grad.clone(),
            &[Slice::full(), Slice::from(co.clone())],
        );
        let part = crop(
            swapped(x_g, grad_g),
            [per_group_out, per_group_in, kernel_h, kernel_w],
        );
        weight_grad = Flex::float_slice_assign(
            weight_grad,
            &[
                Slice::from(co),
                Slice::from(0..per_group_in),
                Slice::from(0..kernel_h),
                Slice::from(0..kernel_w),
            ],
            part,
        );
    }
    weight_grad
}
