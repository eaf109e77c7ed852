//! Convolution backward passes for the layers of mobile networks (f32), added by lookalike.
//!
//! Pointwise (1×1, stride 1, no padding) convolutions: the weight gradient went through Burn's
//! generic route, a convolution of the batch-swapped input with the batch-swapped output
//! gradient as its kernel, so both were copied transposed (`copy_2d_tiled`) and unfolded into
//! one column per weight; it is `Σ_b grad_b · x_bᵀ`, one GEMM per image on the NCHW data as it
//! lies. The input gradient (a 1×1 transposed convolution) is `wᵀ · grad_b`, also one GEMM per
//! image, without the column buffer and col2im copy of the generic transposed convolution.
//!
//! A canonical depthwise convolution has one filter a channel (`groups == channels_in ==
//! channels_out`). Its forward pass already has a direct path in `conv.rs`; its two backward
//! passes did not:
//!
//! - the weight gradient went through Burn's generic grouped fallback: for every channel a
//!   slice, a convolution of the batch against the output gradient (an `[1, batch, h, w]`
//!   image with an `[1, batch, oh, ow]` kernel, so im2col copies of the whole plane) and a
//!   `slice_assign` that copies the whole gradient tensor again (quadratic in channels);
//! - the input gradient, a transposed convolution with `groups == channels`, ran one GEMM
//!   with a single row per (batch, channel) and a col2im scatter.
//!
//! Here both are direct loops over one (batch, channel) plane at a time, in parallel over
//! planes (input gradient) or channels (weight gradient), with the valid output range of every
//! kernel tap computed once so the inner loops carry no bounds checks on padding, and the
//! stride-1 inner loops written over contiguous slices so they vectorise.

use alloc::vec;
use alloc::vec::Vec;
use burn_backend::ops::conv::pad_asymmetric_conv_input;
use burn_backend::ops::{ConvOptions, ConvTransposeOptions, FloatTensorOps, ModuleOps};
use burn_backend::{DType, TensorMetadata};
use burn_std::{Bytes, Shape, Slice};

use crate::{Flex, FlexTensor, Layout};

use super::conv::valid_out_range;
use super::planes::{for_each_chunk, lane_sum};

/// Spatial geometry shared by the kernels: `big` is the convolution's input side (the
/// transposed convolution's output side), `small` the convolution's output side.
#[derive(Clone, Copy)]
struct Geometry {
    big_h: usize,
    big_w: usize,
    small_h: usize,
    small_w: usize,
    kernel_h: usize,
    kernel_w: usize,
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
}

impl Geometry {
    /// For every kernel row and column, the range of `small` positions whose tap lands inside
    /// the `big` plane.
    fn ranges(&self) -> (Vec<(usize, usize)>, Vec<(usize, usize)>) {
        let rows = (0..self.kernel_h)
            .map(|kh| {
                valid_out_range(
                    kh,
                    self.dilation[0],
                    self.padding[0],
                    self.stride[0],
                    self.big_h,
                    self.small_h,
                )
            })
            .collect();
        let cols = (0..self.kernel_w)
            .map(|kw| {
                valid_out_range(
                    kw,
                    self.dilation[1],
                    self.padding[1],
                    self.stride[1],
                    self.big_w,
                    self.small_w,
                )
            })
            .collect();
        (rows, cols)
    }

    /// `big` row of `small` row `oh` under kernel row `kh` (only for `oh` in range).
    #[inline(always)]
    fn big_row(&self, oh: usize, kh: usize) -> usize {
        oh * self.stride[0] + kh * self.dilation[0] - self.padding[0]
    }

    /// `big` column of `small` column `ow` under kernel column `kw` (only for `ow` in range).
    #[inline(always)]
    fn big_col(&self, ow: usize, kw: usize) -> usize {
        ow * self.stride[1] + kw * self.dilation[1] - self.padding[1]
    }
}

/// Whether `weight` (`[channels, 1, kh, kw]`) with `groups` is a canonical depthwise filter
/// for an input of `channels_in` channels.
fn is_depthwise(channels_in: usize, weight_shape: &[usize], groups: usize) -> bool {
    groups > 1 && groups == channels_in && weight_shape[0] == channels_in && weight_shape[1] == 1
}

/// Whether a convolution (or its transpose) is a plain 1×1 channel mix on the same grid.
fn is_pointwise(
    weight_shape: &[usize],
    groups: usize,
    stride: [usize; 2],
    padding: [usize; 2],
) -> bool {
    groups == 1
        && weight_shape[2] == 1
        && weight_shape[3] == 1
        && stride == [1, 1]
        && padding == [0, 0]
}

fn all_f32_4d(tensors: &[&FlexTensor]) -> bool {
    tensors
        .iter()
        .all(|t| t.dtype() == DType::F32 && t.layout().shape().num_dims() == 4)
}

/// The transposed convolution through a direct kernel where one applies (depthwise or
/// pointwise, f32), or the inputs back for the generic path.
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
    if is_pointwise(w_shape, options.groups, options.stride, options.padding)
        && options.padding_out == [0, 0]
        && bias.is_none()
    {
        return Ok(pointwise_conv_transpose2d(x, weight));
    }
    Err((x, weight))
}

/// The weight gradient of a 2D convolution: direct kernels for depthwise and pointwise
/// convolutions (f32), Burn's generic route otherwise.
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
        if !options.is_asymmetric()
            && is_pointwise(
                w_shape,
                options.groups,
                options.stride,
                options.padding_begin(),
            )
        {
            return pointwise_weight_backward(x, weight.shape(), output_grad);
        }
    }
    generic_conv2d_weight_backward(x, weight, output_grad, options)
}

/// `gemm` parallelism for a product of this size: threads only where it pays.
fn parallelism(m: usize, n: usize, k: usize) -> gemm::Parallelism {
    #[cfg(feature = "rayon")]
    if m.saturating_mul(n).saturating_mul(k) >= 192 * 192 * 192 {
        return gemm::Parallelism::Rayon(0);
    }
    let _ = (m, n, k);
    gemm::Parallelism::None
}

/// `dw[co, ci] = Σ_b Σ_p grad[b, co, p] · x[b, ci, p]` for a 1×1 convolution.
fn pointwise_weight_backward(
    x: FlexTensor,
    weight_shape: Shape,
    output_grad: FlexTensor,
) -> FlexTensor {
    let x = x.to_contiguous();
    let grad = output_grad.to_contiguous();
    let x_shape = x.layout().shape();
    let (batch, channels_in) = (x_shape[0], x_shape[1]);
    let spatial = x_shape[2] * x_shape[3];
    let channels_out = grad.layout().shape()[1];
    let x_data: &[f32] = x.storage();
    let g_data: &[f32] = grad.storage();
    let mut out = vec![0.0f32; channels_out * channels_in];
    let par = parallelism(channels_out, channels_in, spatial);
    for b in 0..batch {
        // SAFETY: every pointer and stride below stays inside its buffer: grad_b is
        // [channels_out, spatial] and x_b [channels_in, spatial], both row-major, and out is
        // [channels_out, channels_in].
        unsafe {
            gemm::gemm(
                channels_out,
                channels_in,
                spatial,
                out.as_mut_ptr(),
                1,
                channels_in as isize,
                b > 0,
                g_data.as_ptr().add(b * channels_out * spatial),
                1,
                spatial as isize,
                x_data.as_ptr().add(b * channels_in * spatial),
                spatial as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
    }
    FlexTensor::new(
        Bytes::from_elems(out),
        Layout::contiguous(weight_shape),
        DType::F32,
    )
}

/// `out[b, co, p] = Σ_ci w[ci, co] · x[b, ci, p]`: a 1×1 transposed convolution (the input
/// gradient of a 1×1 convolution), weight `[channels_in, channels_out, 1, 1]`.
fn pointwise_conv_transpose2d(x: FlexTensor, weight: FlexTensor) -> FlexTensor {
    let x = x.to_contiguous();
    let weight = weight.to_contiguous();
    let x_shape = x.layout().shape();
    let (batch, channels_in, h, w) = (x_shape[0], x_shape[1], x_shape[2], x_shape[3]);
    let spatial = h * w;
    let channels_out = weight.layout().shape()[1];
    let x_data: &[f32] = x.storage();
    let w_data: &[f32] = weight.storage();
    let mut out = vec![0.0f32; batch * channels_out * spatial];
    let plane = channels_out * spatial;
    if plane > 0 {
        let par = parallelism(channels_out, spatial, channels_in);
        for_each_chunk(&mut out, plane, |b, dst| {
            // SAFETY: dst is out[b] ([channels_out, spatial]); the weight read transposed is
            // [channels_in, channels_out]; x[b] is [channels_in, spatial].
            unsafe {
                gemm::gemm(
                    channels_out,
                    spatial,
                    channels_in,
                    dst.as_mut_ptr(),
                    1,
                    spatial as isize,
                    false,
                    w_data.as_ptr(),
                    channels_out as isize,
                    1,
                    x_data.as_ptr().add(b * channels_in * spatial),
                    1,
                    spatial as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    par,
                );
            }
        });
    }
    FlexTensor::new(
        Bytes::from_elems(out),
        Layout::contiguous(Shape::from(vec![batch, channels_out, h, w])),
        DType::F32,
    )
}

/// Transposed depthwise convolution: `out[b, c, oh*s + kh*d - p, ...] += x[b, c, oh, ...] *
/// w[c, 0, kh, kw]`. `x` is `[batch, channels, h, w]`, `weight` `[channels, 1, kh, kw]`.
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
    let (kernel_h, kernel_w) = (w_shape[2], w_shape[3]);
    let out_size = |i: usize| {
        let input = [in_h, in_w][i];
        let kernel = [kernel_h, kernel_w][i];
        ((input - 1) * options.stride[i]
            + options.dilation[i] * (kernel - 1)
            + options.padding_out[i]
            + 1)
        .checked_sub(2 * options.padding[i])
        .expect("conv_transpose2d: padding larger than the output")
    };
    let g = Geometry {
        big_h: out_size(0),
        big_w: out_size(1),
        small_h: in_h,
        small_w: in_w,
        kernel_h,
        kernel_w,
        stride: options.stride,
        padding: options.padding,
        dilation: options.dilation,
    };
    let (rows, cols) = g.ranges();
    let x_data: &[f32] = x.storage();
    let w_data: &[f32] = weight.storage();
    let bias = bias.map(|b| b.to_contiguous());
    let bias_data: Option<&[f32]> = bias.as_ref().map(|b| b.storage());
    let small = g.small_h * g.small_w;
    let big = g.big_h * g.big_w;
    let taps = kernel_h * kernel_w;
    let mut out = vec![0.0f32; batch * channels * big];
    if big > 0 {
        for_each_chunk(&mut out, big, |bc, plane| {
            let c = bc % channels;
            if let Some(b) = bias_data {
                plane.fill(b[c]);
            }
            let src = &x_data[bc * small..(bc + 1) * small];
            let w = &w_data[c * taps..(c + 1) * taps];
            for oh in 0..g.small_h {
                let src_row = &src[oh * g.small_w..(oh + 1) * g.small_w];
                for (kh, &(h0, h1)) in rows.iter().enumerate() {
                    if oh < h0 || oh >= h1 {
                        continue;
                    }
                    let ih = g.big_row(oh, kh);
                    let dst_row = &mut plane[ih * g.big_w..(ih + 1) * g.big_w];
                    for (kw, &(w0, w1)) in cols.iter().enumerate() {
                        if w0 >= w1 {
                            continue;
                        }
                        let wv = w[kh * kernel_w + kw];
                        let start = g.big_col(w0, kw);
                        if g.stride[1] == 1 {
                            let dst = &mut dst_row[start..start + (w1 - w0)];
                            for (d, s) in dst.iter_mut().zip(&src_row[w0..w1]) {
                                *d += s * wv;
                            }
                        } else {
                            for (i, s) in src_row[w0..w1].iter().enumerate() {
                                dst_row[start + i * g.stride[1]] += s * wv;
                            }
                        }
                    }
                }
            }
        });
    }
    FlexTensor::new(
        Bytes::from_elems(out),
        Layout::contiguous(Shape::from(vec![batch, channels, g.big_h, g.big_w])),
        DType::F32,
    )
}

/// Weight gradient of a depthwise convolution: `dw[c, 0, kh, kw] = Σ_b Σ_oh,ow
/// grad[b, c, oh, ow] * x[b, c, oh*s + kh*d - p, ow*s + kw*d - p]`. `x` is the convolution's
/// input (`[batch, channels, h, w]`), `output_grad` its output's gradient.
fn depthwise_weight_backward(
    x: FlexTensor,
    weight_shape: Shape,
    output_grad: FlexTensor,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let x = x.to_contiguous();
    let grad = output_grad.to_contiguous();
    let x_shape = x.layout().shape();
    let (batch, channels, in_h, in_w) = (x_shape[0], x_shape[1], x_shape[2], x_shape[3]);
    let g_shape = grad.layout().shape();
    let (kernel_h, kernel_w) = (weight_shape[2], weight_shape[3]);
    let g = Geometry {
        big_h: in_h,
        big_w: in_w,
        small_h: g_shape[2],
        small_w: g_shape[3],
        kernel_h,
        kernel_w,
        stride: options.stride,
        padding: options.padding_begin(),
        dilation: options.dilation,
    };
    let (rows, cols) = g.ranges();
    let x_data: &[f32] = x.storage();
    let g_data: &[f32] = grad.storage();
    let big = in_h * in_w;
    let small = g.small_h * g.small_w;
    let taps = kernel_h * kernel_w;
    let mut out = vec![0.0f32; channels * taps];
    if taps > 0 {
        for_each_chunk(&mut out, taps, |c, dw| {
            for b in 0..batch {
                let bc = b * channels + c;
                let xp = &x_data[bc * big..(bc + 1) * big];
                let gp = &g_data[bc * small..(bc + 1) * small];
                for (kh, &(h0, h1)) in rows.iter().enumerate() {
                    for (kw, &(w0, w1)) in cols.iter().enumerate() {
                        if w0 >= w1 {
                            continue;
                        }
                        let start = g.big_col(w0, kw);
                        let mut sum = 0.0f32;
                        for oh in h0..h1 {
                            let ih = g.big_row(oh, kh);
                            let g_row = &gp[oh * g.small_w + w0..oh * g.small_w + w1];
                            let x_row = &xp[ih * in_w..(ih + 1) * in_w];
                            if g.stride[1] == 1 {
                                sum +=
                                    lane_sum(g_row, &x_row[start..start + (w1 - w0)], |g, x| g * x)
                                        as f32;
                            } else {
                                for (i, gv) in g_row.iter().enumerate() {
                                    sum += gv * x_row[start + i * g.stride[1]];
                                }
                            }
                        }
                        dw[kh * kernel_w + kw] += sum;
                    }
                }
            }
        });
    }
    FlexTensor::new(
        Bytes::from_elems(out),
        Layout::contiguous(weight_shape),
        DType::F32,
    )
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
