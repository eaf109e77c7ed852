//! Dense convolutions (one group, any kernel including 1×1, any stride, padding and dilation)
//! in f32, added by lookalike: the forward pass, the input gradient (the transposed convolution) and the weight
//! gradient, each as GEMMs over a column buffer built straight from the NCHW planes.
//!
//! Burn's flex route copied the whole input to NHWC on one thread, built im2col tiles one
//! output position at a time, ran a GEMM a tile into a fresh buffer and scattered it into the
//! output, then added the bias in a pass of its own; its weight gradient was a convolution of
//! the batch-swapped input with the batch-swapped output gradient as its kernel (GEMMs nine
//! columns wide for a 3×3 filter), and its transposed convolution a GEMM a position.
//!
//! Here the column buffer of an image is `[cin·kh·kw, rows·out_w]`, row-major: row `(c, i, j)`
//! holds, for every output position of a tile of output rows, the input at filter tap `(i, j)`
//! of channel `c`, so each row is built from contiguous runs of the input plane (strided reads
//! for strided convolutions) and zeros where the tap falls in the padding. Then, with the weight
//! `[cout, cin·kh·kw]` as it lies:
//!
//! - forward: `out_b[:, tile] = w · col` (+ the bias, written first and accumulated onto);
//! - input gradient: `col = wᵀ · grad_b[:, tile]`, scattered back onto the input plane (col2im);
//! - weight gradient: `dw += grad_b[:, tile] · colᵀ`, summed over tiles and images.
//!
//! Images run in parallel (each thread with its own column buffer, and its own weight
//! gradient, summed at the end); a single image hands the threads to the GEMM instead. Where an
//! output plane is small (ResNet's last stages: 7×7 and 14×14), several images share one
//! column buffer side by side, so that the weight is packed once for all of them and the GEMM
//! gets enough columns; the output gradient is gathered the same way. A 1×1 convolution
//! (stride 1, no padding) needs no column buffer for a single image: its planes are its
//! columns, read where they lie, and the GEMM writes its input gradient in place; on small
//! planes (EfficientNet's 5×5 and 10×10 stages) its images share a buffer like any other's.

use alloc::vec;
use alloc::vec::Vec;

use burn_backend::ops::{ConvOptions, ConvTransposeOptions};
use burn_backend::{DType, TensorMetadata};
use burn_std::Shape;

use crate::FlexTensor;

use core::mem::MaybeUninit;
use core::ops::Range;

use super::conv_backward::{all_f32_4d, geometry};
use super::depthwise::Geometry;
use super::fused::Epilogue;
use super::planes::{copy_row, f32_tensor, sum_of, valid_range};
use super::pointwise;
use super::winograd;

/// Whether a convolution of `x` with `weight` (`[cout, cin/groups, kh, kw]`) and `bias` is one
/// this module takes: one group, f32 throughout, four-dimensional.
pub(crate) fn applies(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: Option<&FlexTensor>,
    groups: usize,
) -> bool {
    groups == 1 && all_f32_4d(&[x, weight]) && bias.is_none_or(|b| b.dtype() == DType::F32)
}

/// [`forward`] on tensors, with any padding (the padding after each axis ends the output).
pub(crate) fn conv2d(
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    options: &ConvOptions<2>,
) -> FlexTensor {
    conv2d_with(x, weight, bias, options, &Epilogue::default())
}

/// [`conv2d`] with an epilogue (`fused.rs`) applied to each tile or plane of the output once written.
pub(crate) fn conv2d_with(
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    options: &ConvOptions<2>,
    epilogue: &Epilogue,
) -> FlexTensor {
    let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
    let bias = bias.map(|b| b.to_contiguous());
    let (x_shape, w_shape) = (x.layout().shape(), weight.layout().shape());
    let (batch, channels_in, channels_out) = (x_shape[0], x_shape[1], w_shape[0]);
    let g = geometry(x_shape, w_shape, options, None);
    let bias_data: Option<&[f32]> = bias.as_ref().map(|b| b.storage());
    let y = forward(
        x.storage(),
        weight.storage(),
        bias_data,
        batch,
        channels_in,
        channels_out,
        &g,
        epilogue,
    );
    f32_tensor(y, &[batch, channels_out, g.out_h, g.out_w])
}

/// [`transpose`] on tensors: `x` `[batch, cout, h, w]` (the transposed convolution's input),
/// `weight` `[cout, cin, kh, kw]`.
pub(crate) fn conv_transpose2d(
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    options: &ConvTransposeOptions<2>,
) -> FlexTensor {
    let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
    let bias = bias.map(|b| b.to_contiguous());
    let [batch, channels_out, out_h, out_w]: [usize; 4] = x.shape().dims();
    let [_, channels_in, kh, kw]: [usize; 4] = weight.shape().dims();
    // The forward convolution this transposes: its input is our output.
    let g = Geometry::transposed([out_h, out_w], [kh, kw], options);
    let bias_data: Option<&[f32]> = bias.as_ref().map(|b| b.storage());
    let dx = transpose(
        x.storage(),
        weight.storage(),
        bias_data,
        batch,
        channels_in,
        channels_out,
        &g,
    );
    f32_tensor(dx, &[batch, channels_in, g.in_h, g.in_w])
}

/// [`transpose`] as a convolution's input gradient: onto `x_shape` (the convolution's input),
/// from `output_grad`, any padding.
pub(crate) fn conv2d_x_backward(
    x_shape: &[usize],
    weight: FlexTensor,
    output_grad: FlexTensor,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let (weight, grad) = (weight.to_contiguous(), output_grad.to_contiguous());
    let w_shape = weight.layout().shape();
    let g = geometry(x_shape, w_shape, options, Some(grad.layout().shape()));
    let (batch, channels_in, channels_out) = (x_shape[0], x_shape[1], w_shape[0]);
    let dx = transpose(
        grad.storage(),
        weight.storage(),
        None,
        batch,
        channels_in,
        channels_out,
        &g,
    );
    f32_tensor(dx, x_shape)
}

/// [`weight_gradient`] on tensors: `x` the convolution's input, `output_grad` its output's
/// gradient, any padding.
pub(crate) fn conv2d_weight_backward(
    x: FlexTensor,
    weight_shape: Shape,
    output_grad: FlexTensor,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let (x, grad) = (x.to_contiguous(), output_grad.to_contiguous());
    let (x_shape, g_shape) = (x.layout().shape(), grad.layout().shape());
    let (batch, channels_in, channels_out) = (x_shape[0], x_shape[1], g_shape[1]);
    let g = geometry(x_shape, &weight_shape, options, Some(g_shape));
    let [kh, kw] = g.kernel;
    let dw = weight_gradient(
        x.storage(),
        grad.storage(),
        batch,
        channels_in,
        channels_out,
        &g,
    );
    f32_tensor(dw, &[channels_out, channels_in, kh, kw])
}

/// Most floats a column buffer holds (8 MiB): output rows are taken in tiles that fit.
const COLUMN_FLOATS: usize = 1 << 21;

/// Fewest output positions a GEMM should get: below it, several images share one column
/// buffer (the weight is packed once for all of them instead of once an image).
const MIN_COLUMNS: usize = 512;

/// How the batch is cut into tasks: `images` whole images a task where output planes are
/// small (one GEMM over all of them), else one image a task in tiles of `rows` output rows.
struct Plan {
    images: usize,
    rows: usize,
    /// One image a task whose planes are its columns ([`planes_are_columns`]): no column
    /// buffer, the GEMM reads the input and writes the input gradient where they lie.
    direct: bool,
    par: gemm::Parallelism,
}

impl Plan {
    fn new(g: &Geometry, k: usize, batch: usize) -> Self {
        let threads = threads();
        let spatial = g.out_h * g.out_w;
        let (images, rows) = if spatial >= MIN_COLUMNS || batch == 1 {
            // A 1×1 filter's columns are the image's planes themselves: no buffer to bound.
            let rows = if planes_are_columns(g) {
                g.out_h.max(1)
            } else {
                (COLUMN_FLOATS / (k * g.out_w).max(1)).clamp(1, g.out_h.max(1))
            };
            (1, rows)
        } else {
            let images = MIN_COLUMNS
                .div_ceil(spatial.max(1))
                .min(batch.div_ceil(threads))
                .min(COLUMN_FLOATS / (k * spatial).max(1))
                .max(1);
            (images, g.out_h)
        };
        // The threads go to the GEMM only when tasks do not keep them busy.
        #[cfg(feature = "rayon")]
        let par = if batch.div_ceil(images) < threads {
            gemm::Parallelism::Rayon(0)
        } else {
            gemm::Parallelism::None
        };
        #[cfg(not(feature = "rayon"))]
        let par = gemm::Parallelism::None;
        let direct = images == 1 && planes_are_columns(g);
        Self {
            images,
            rows,
            direct,
            par,
        }
    }

    /// A task's scratch, empty and with the capacity every task of the plan needs: the column
    /// buffer (none in a direct plan) and `channels` planes of its images side by side (the
    /// gathered gradient, or the forward's GEMM output; none for one image, which is read or
    /// written where it lies).
    fn scratch(&self, g: &Geometry, k: usize, channels: usize) -> (Vec<f32>, Vec<f32>) {
        let columns = if self.direct {
            0
        } else {
            k * self.images * self.rows.min(g.out_h) * g.out_w
        };
        let shared = if self.images > 1 {
            channels * self.images * g.out_h * g.out_w
        } else {
            0
        };
        (Vec::with_capacity(columns), Vec::with_capacity(shared))
    }

    /// The tiles of output rows of a task of `images` images.
    fn tiles(&self, g: &Geometry) -> impl Iterator<Item = Range<usize>> + '_ {
        let out_h = g.out_h;
        (0..out_h)
            .step_by(self.rows.max(1))
            .map(move |r0| r0..(r0 + self.rows).min(out_h))
    }
}

/// Where filter tap `(i, j)` meets the input plane on the output rows `rows`:
/// `visit(t, input_row, lo, hi, start)` for the `t`-th row, `input_row` `None` where the tap
/// falls in the padding, output columns `[lo, hi)` inside the plane, reading from input
/// column `start` on.
#[inline(always)]
fn for_each_tap_row(
    g: &Geometry,
    i: usize,
    j: usize,
    rows: Range<usize>,
    mut visit: impl FnMut(usize, Option<usize>, usize, usize, usize),
) {
    let row_offset = (i * g.dilation[0]) as isize - g.padding[0] as isize;
    let (lo, hi, start) = tap_columns(g, j);
    for (t, oy) in rows.enumerate() {
        let iy = (oy * g.stride[0]) as isize + row_offset;
        let row = (iy >= 0 && (iy as usize) < g.in_h && lo < hi).then_some(iy as usize);
        visit(t, row, lo, hi, start);
    }
}

/// Where filter column `j` meets each input row: output columns `[lo, hi)` inside the plane,
/// reading from input column `start` on (every `stride`-th one).
#[inline(always)]
fn tap_columns(g: &Geometry, j: usize) -> (usize, usize, usize) {
    let col_offset = (j * g.dilation[1]) as isize - g.padding[1] as isize;
    let (lo, hi) = valid_range(g.out_w, g.in_w, g.stride[1], col_offset);
    let start = ((lo * g.stride[1]) as isize + col_offset).max(0) as usize;
    (lo, hi, start)
}

/// Fills columns `[offset, offset + rows·out_w)` of `col` (rows of `ld` floats, one for each
/// `(c, i, j)`) from the planes `x` (`[channels, in_h, in_w]`).
///
/// At a stride of 2 or more each input row a filter row reads is first split into its column
/// phases (`phases`: every `stride`-th element, one run for each offset), once for all the
/// taps of that filter row, so that every tap copies a contiguous run of a phase: read element
/// by element, the stride-2 stems' columns took two fifths of their convolution's time.
fn im2col(
    x: &[f32],
    channels: usize,
    g: &Geometry,
    rows: Range<usize>,
    col: &mut [f32],
    ld: usize,
    offset: usize,
) {
    if g.stride[1] > 1 {
        return im2col_strided(x, channels, g, rows, col, ld, offset);
    }
    let [kh, kw] = g.kernel;
    let (out_w, in_w) = (g.out_w, g.in_w);
    let n = rows.len() * out_w;
    let plane_len = g.in_h * in_w;
    for c in 0..channels {
        let plane = &x[c * plane_len..(c + 1) * plane_len];
        for i in 0..kh {
            for j in 0..kw {
                let r = (c * kh + i) * kw + j;
                let dst = &mut col[r * ld + offset..r * ld + offset + n];
                for_each_tap_row(g, i, j, rows.clone(), |t, row, lo, hi, start| {
                    let d = &mut dst[t * out_w..(t + 1) * out_w];
                    let Some(iy) = row else {
                        d.fill(0.0);
                        return;
                    };
                    let src = &plane[iy * in_w..(iy + 1) * in_w];
                    d[..lo].fill(0.0);
                    d[hi..].fill(0.0);
                    d[lo..hi].copy_from_slice(&src[start..start + hi - lo]);
                });
            }
        }
    }
}

/// [`im2col`] at a column stride of 2 or more.
fn im2col_strided(
    x: &[f32],
    channels: usize,
    g: &Geometry,
    rows: Range<usize>,
    col: &mut [f32],
    ld: usize,
    offset: usize,
) {
    let [kh, kw] = g.kernel;
    let (out_w, in_w, stride) = (g.out_w, g.in_w, g.stride[1]);
    let plane_len = g.in_h * in_w;
    let wq = in_w.div_ceil(stride);
    let mut phases = vec![0.0f32; stride * wq];
    let taps: Vec<(usize, usize, usize)> = (0..kw).map(|j| tap_columns(g, j)).collect();
    for c in 0..channels {
        let plane = &x[c * plane_len..(c + 1) * plane_len];
        for i in 0..kh {
            let row_offset = (i * g.dilation[0]) as isize - g.padding[0] as isize;
            for (t, oy) in rows.clone().enumerate() {
                let iy = (oy * g.stride[0]) as isize + row_offset;
                let inside = iy >= 0 && (iy as usize) < g.in_h;
                if inside {
                    let iy = iy as usize;
                    split_phases(&plane[iy * in_w..(iy + 1) * in_w], stride, wq, &mut phases);
                }
                for (j, &(lo, hi, start)) in taps.iter().enumerate() {
                    let r = (c * kh + i) * kw + j;
                    let at = r * ld + offset + t * out_w;
                    let d = &mut col[at..at + out_w];
                    if !inside || lo >= hi {
                        d.fill(0.0);
                        continue;
                    }
                    d[..lo].fill(0.0);
                    d[hi..].fill(0.0);
                    let from = (start % stride) * wq + start / stride;
                    copy_row(&mut d[lo..hi], &phases[from..from + hi - lo]);
                }
            }
        }
    }
}

/// Splits `src` into its `stride` column phases: `dst[p·wq + q] = src[q·stride + p]` (each
/// phase's tail past the row left as it was). Compiled for the widest SIMD, where stride 2's
/// deinterleave runs whole vectors.
#[cfg_attr(feature = "simd", macerator::with_simd)]
fn split_phases<#[cfg(feature = "simd")] S: macerator::Simd>(
    src: &[f32],
    stride: usize,
    wq: usize,
    dst: &mut [f32],
) {
    if stride == 2 {
        let (even, odd) = dst.split_at_mut(wq);
        assert!(
            even.len() >= src.len().div_ceil(2) && odd.len() >= src.len() / 2,
            "split_phases: phases too short"
        );
        #[allow(unused_mut)]
        let mut done = 0;
        #[cfg(all(target_arch = "x86_64", feature = "std"))]
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F is present.
            done = unsafe { deinterleave_avx512(src, even, odd) };
        }
        let pairs = src[2 * done..].chunks_exact(2);
        if let Some(&v) = pairs.remainder().first() {
            even[done + pairs.len()] = v;
        }
        for ((e, o), p) in even[done..].iter_mut().zip(&mut odd[done..]).zip(pairs) {
            *e = p[0];
            *o = p[1];
        }
        return;
    }
    for (q, chunk) in src.chunks(stride).enumerate() {
        for (p, &v) in chunk.iter().enumerate() {
            dst[p * wq + q] = v;
        }
    }
}

/// `even[q] = src[2q]`, `odd[q] = src[2q + 1]` for the pairs of whole blocks of sixteen (two
/// permutes a block); returns how many pairs that was, the rest left to the caller.
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
#[target_feature(enable = "avx512f")]
unsafe fn deinterleave_avx512(src: &[f32], even: &mut [f32], odd: &mut [f32]) -> usize {
    use core::arch::x86_64::*;
    let blocks = (src.len() / 32).min(even.len() / 16).min(odd.len() / 16);
    let take_even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let take_odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    for b in 0..blocks {
        let q = 16 * b;
        // SAFETY: block b reads src[2q..2q + 32] and writes [q, q + 16) of both phases, all
        // inside (b < blocks).
        unsafe {
            let a = _mm512_loadu_ps(src.as_ptr().add(2 * q));
            let c = _mm512_loadu_ps(src.as_ptr().add(2 * q + 16));
            _mm512_storeu_ps(
                even.as_mut_ptr().add(q),
                _mm512_permutex2var_ps(a, take_even, c),
            );
            _mm512_storeu_ps(
                odd.as_mut_ptr().add(q),
                _mm512_permutex2var_ps(a, take_odd, c),
            );
        }
    }
    16 * blocks
}

/// Whether an image's column matrix is its input planes as they lie (`[cin, in_h·in_w]`): a 1×1
/// filter, stride 1, no padding, the output on the input's grid.
fn planes_are_columns(g: &Geometry) -> bool {
    g.kernel == [1, 1]
        && g.stride == [1, 1]
        && g.padding == [0, 0]
        && (g.in_h, g.in_w) == (g.out_h, g.out_w)
}

/// The column matrix of `images` images of `x` (`[batch, channels, in_h, in_w]`) from image
/// `first`, on the output rows `rows`: `(pointer, row stride, width)`, the width
/// `images·rows·out_w`. Built side by side in `col`, except in a `direct` plan ([`Plan`]),
/// whose one image's planes are read where they lie.
#[allow(clippy::too_many_arguments)]
fn columns(
    x: &[f32],
    first: usize,
    images: usize,
    channels: usize,
    g: &Geometry,
    rows: Range<usize>,
    direct: bool,
    par: gemm::Parallelism,
    col: &mut Vec<f32>,
) -> (*const f32, usize, usize) {
    let in_len = channels * g.in_h * g.in_w;
    let per_image = rows.len() * g.out_w;
    let n = images * per_image;
    if direct {
        let start = first * in_len + rows.start * g.out_w;
        return (x[start..].as_ptr(), g.in_h * g.in_w, n);
    }
    col.resize(channels * g.kernel[0] * g.kernel[1] * n, 0.0);
    // A lone image whose GEMM has the threads (batch 1): its channels' rows are built on
    // every core too, not on the calling thread alone.
    if images == 1 && n > 0 && !matches!(par, gemm::Parallelism::None) {
        let plane_len = g.in_h * g.in_w;
        let x_b = &x[first * in_len..(first + 1) * in_len];
        let per_channel = g.kernel[0] * g.kernel[1] * n;
        super::planes::for_each_chunk(col, per_channel, |c, rows_of_c| {
            let plane = &x_b[c * plane_len..(c + 1) * plane_len];
            im2col(plane, 1, g, rows.clone(), rows_of_c, n, 0);
        });
        return (col.as_ptr(), n, n);
    }
    for i in 0..images {
        let x_b = &x[(first + i) * in_len..(first + i + 1) * in_len];
        im2col(x_b, channels, g, rows.clone(), col, n, i * per_image);
    }
    (col.as_ptr(), n, n)
}

/// Adds columns `[offset, offset + rows·out_w)` of `col` back onto the planes `dx`
/// (`[channels, in_h, in_w]`): the transpose of [`im2col`].
fn col2im(
    col: &[f32],
    ld: usize,
    offset: usize,
    channels: usize,
    g: &Geometry,
    rows: Range<usize>,
    dx: &mut [f32],
) {
    let [kh, kw] = g.kernel;
    let (out_w, in_w, stride) = (g.out_w, g.in_w, g.stride[1]);
    let plane_len = g.in_h * in_w;
    for c in 0..channels {
        let plane = &mut dx[c * plane_len..(c + 1) * plane_len];
        for i in 0..kh {
            for j in 0..kw {
                let src = &col[((c * kh + i) * kw + j) * ld + offset..];
                for_each_tap_row(g, i, j, rows.clone(), |t, row, lo, hi, start| {
                    let Some(iy) = row else { return };
                    let s = &src[t * out_w + lo..t * out_w + hi];
                    let d = &mut plane[iy * in_w..(iy + 1) * in_w];
                    if stride == 1 {
                        for (o, v) in d[start..start + hi - lo].iter_mut().zip(s) {
                            *o += *v;
                        }
                    } else {
                        for (k, v) in s.iter().enumerate() {
                            d[start + k * stride] += *v;
                        }
                    }
                });
            }
        }
    }
}

/// The gradient of `images` images from image `first` as one `[channels, ld]` matrix: a
/// pointer to it and `ld`, straight into `grad` for one image, else [`gather`]ed into `buffer`.
fn gradient_columns(
    grad: &[f32],
    first: usize,
    images: usize,
    channels: usize,
    spatial: usize,
    buffer: &mut Vec<f32>,
) -> (*const f32, usize) {
    if images == 1 {
        return (grad[first * channels * spatial..].as_ptr(), spatial);
    }
    gather(grad, first, images, channels, spatial, buffer);
    (buffer.as_ptr(), images * spatial)
}

/// Copies the planes of `images` images of `grad` (`[batch, channels, spatial]`) from image
/// `first` side by side into `dst` (`[channels, images·spatial]`).
fn gather(
    grad: &[f32],
    first: usize,
    images: usize,
    channels: usize,
    spatial: usize,
    dst: &mut Vec<f32>,
) {
    let n = images * spatial;
    dst.resize(channels * n, 0.0);
    for i in 0..images {
        let image = &grad[(first + i) * channels * spatial..(first + i + 1) * channels * spatial];
        for (c, plane) in image.chunks_exact(spatial).enumerate() {
            dst[c * n + i * spatial..c * n + (i + 1) * spatial].copy_from_slice(plane);
        }
    }
}

/// `dst = a·b`, or `dst += a·b` where `accumulate`: `a` (`[m, k]`) and `b` (`[k, n]`) given as
/// `(pointer, column stride, row stride)`, `dst` row-major (`[m, n]`, rows `ldd` apart).
///
/// # Safety
/// Every pointer with its strides must stay inside its buffer for the sizes given.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    ldd: usize,
    accumulate: bool,
    a: (*const f32, isize, isize),
    b: (*const f32, isize, isize),
    par: gemm::Parallelism,
) {
    // SAFETY: the caller's.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            ldd as isize,
            accumulate,
            a.0,
            a.1,
            a.2,
            b.0,
            b.1,
            b.2,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// `work(scratch, task, chunk)` over `data` cut into chunks of `len`, in parallel where rayon is
/// on, in one run of consecutive tasks a thread, each run with a scratch of its own (column
/// buffers of megabytes); returns the scratches.
///
/// The scratches are made by `make` here, on the calling thread, with the capacity every task
/// needs, so that a task never grows them: allocated on a worker thread they would come from that
/// thread's own malloc arena, whose freed blocks the tensors (allocated on the calling thread)
/// cannot reuse, and the training step's peak memory grew by the difference.
pub(crate) fn for_each_task<T: Send, S: Send>(
    data: &mut [T],
    len: usize,
    make: impl Fn() -> S,
    work: impl Fn(&mut S, usize, &mut [T]) + Sync + Send,
) -> Vec<S> {
    let tasks = data.len().div_ceil(len.max(1));
    let per_run = tasks.div_ceil(threads()).max(1);
    let mut scratch: Vec<S> = (0..tasks.div_ceil(per_run)).map(|_| make()).collect();
    let run = |(r, (block, s)): (usize, (&mut [T], &mut S))| {
        for (j, chunk) in block.chunks_mut(len).enumerate() {
            work(s, r * per_run + j, chunk);
        }
    };
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        data.par_chunks_mut(per_run * len)
            .zip(scratch.par_iter_mut())
            .enumerate()
            .for_each(run);
    }
    #[cfg(not(feature = "rayon"))]
    data.chunks_mut(per_run * len)
        .zip(scratch.iter_mut())
        .enumerate()
        .for_each(run);
    scratch
}

/// The threads tasks are spread over.
pub(crate) fn threads() -> usize {
    #[cfg(feature = "rayon")]
    return rayon::current_num_threads();
    #[cfg(not(feature = "rayon"))]
    1
}

/// The forward convolution: `x` `[batch, cin, in_h, in_w]`, `w` `[cout, cin, kh, kw]`, an
/// optional bias of `cout`; returns `[batch, cout, out_h, out_w]`.
///
/// The output is never zeroed: each task writes every element of its images once, the bias
/// first where the GEMM accumulates onto it, the GEMM or the copy out of its buffer otherwise.
/// The epilogue (`fused.rs`) runs over each tile right after its GEMM, or over each plane right
/// after its copy out of the buffer.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    batch: usize,
    channels_in: usize,
    channels_out: usize,
    g: &Geometry,
    epilogue: &Epilogue,
) -> Vec<f32> {
    if winograd::applies(g, batch, channels_in, channels_out) {
        return winograd::forward(
            x,
            w,
            winograd::Weight::Forward,
            bias,
            batch,
            channels_in,
            channels_out,
            g,
            epilogue,
        );
    }
    let k = channels_in * g.kernel[0] * g.kernel[1];
    let spatial = g.out_h * g.out_w;
    let out_len = channels_out * spatial;
    let plan = Plan::new(g, k, batch);
    if let Some(tiles) = output_tiles(g, &plan, batch, channels_out) {
        return forward_tiles(
            &tiles,
            x,
            w,
            bias,
            batch,
            channels_in,
            channels_out,
            g,
            &plan,
            epilogue,
        );
    }
    let mut out: Vec<f32> = Vec::with_capacity(batch * out_len);
    if out_len == 0 {
        return out;
    }
    let scratch = || plan.scratch(g, k, channels_out);
    for_each_task(
        &mut out.spare_capacity_mut()[..batch * out_len],
        plan.images * out_len,
        scratch,
        |(col, tmp), task, dst| {
            let (first, images) = (task * plan.images, dst.len() / out_len);
            for rows in plan.tiles(g) {
                let (col_ptr, ld, n) = columns(
                    x,
                    first,
                    images,
                    channels_in,
                    g,
                    rows.clone(),
                    plan.direct,
                    plan.par,
                    col,
                );
                let offset = rows.start * g.out_w;
                let w_mat = (w.as_ptr(), 1, k as isize);
                let columns = (col_ptr, 1, ld as isize);
                if images == 1 {
                    // Straight into the image's output: columns [offset, offset + n) of each row.
                    // SAFETY: dst is [cout, spatial] row-major, written in columns
                    // [offset, offset + n) only; w is [cout, k] and col [k, n], row-major.
                    unsafe {
                        write_outputs(
                            dst.as_mut_ptr().add(offset).cast::<f32>(),
                            first * out_len + offset,
                            (channels_out, n, k),
                            spatial,
                            bias,
                            w_mat,
                            columns,
                            plan.par,
                            epilogue,
                        );
                    }
                } else {
                    tmp.resize(channels_out * n, 0.0);
                    // SAFETY: tmp is [cout, n] row-major; w is [cout, k] and col [k, n].
                    unsafe {
                        gemm(
                            (channels_out, n, k),
                            tmp.as_mut_ptr(),
                            n,
                            false,
                            w_mat,
                            columns,
                            plan.par,
                        );
                    }
                    for i in 0..images {
                        for co in 0..channels_out {
                            let b = bias.map_or(0.0, |b| b[co]);
                            let src = &tmp[co * n + i * spatial..co * n + (i + 1) * spatial];
                            let d = &mut dst
                                [i * out_len + co * spatial..i * out_len + (co + 1) * spatial];
                            for (o, v) in d.iter_mut().zip(src) {
                                o.write(*v + b);
                            }
                            if !epilogue.is_identity() {
                                // SAFETY: every element of the plane was written just above.
                                let plane =
                                    unsafe { &mut *(d as *mut [MaybeUninit<f32>] as *mut [f32]) };
                                epilogue.apply(plane, (first + i) * out_len + co * spatial);
                            }
                        }
                    }
                }
            }
        },
    );
    // SAFETY: every element was written (see above).
    unsafe { out.set_len(batch * out_len) };
    out
}

/// Most outputs a tile of a 1×1 convolution's columns writes (256 KiB): the bias, the GEMM and
/// the epilogue find it in the core's cache.
const TILE_FLOATS: usize = 1 << 16;

/// Columns a lone image's column buffer holds at a time where `pointwise::gemm` reads it (about
/// four output rows of a stem: 48 KiB at 27 rows of the buffer).
const CHUNK_COLUMNS: usize = 448;

/// Fewest columns a tile of a 1×1 convolution's GEMM gets.
const MIN_TILE_COLUMNS: usize = 128;

/// One task of [`forward_tiles`]: output channels `channels` of image `image`, on output
/// columns `columns` (whole output rows where the image has a column buffer).
struct OutputTile {
    image: usize,
    channels: Range<usize>,
    columns: Range<usize>,
}

/// How [`forward`] cuts the work over fewer images than threads into [`OutputTile`]s, so that
/// every thread writes the bias, builds its columns, runs a GEMM on one thread and applies the
/// epilogue to outputs still in its cache. Instead, one GEMM an image would take the threads
/// (gemm's own split, which leaves one thread idle on a small plane), with the bias, the
/// epilogue and any column buffer built around it on fewer threads or one.
///
/// - A 1×1 convolution read where it lies (a `direct` plan): column tiles of at most
///   [`TILE_FLOATS`] outputs; on planes too small for two of [`MIN_TILE_COLUMNS`] columns
///   (MobileNetV2's 14×14 and 7×7 stages), blocks of output channels over the whole plane.
/// - Any other: tiles of whole output rows, each with a column buffer of its own (the stems,
///   whose three input channels left the buffer to one thread).
///
/// `None` where the tiles would be too few or too narrow to keep the threads busy.
fn output_tiles(
    g: &Geometry,
    plan: &Plan,
    batch: usize,
    channels_out: usize,
) -> Option<Vec<OutputTile>> {
    let threads = threads();
    if batch >= threads || plan.images != 1 || channels_out == 0 {
        return None;
    }
    let spatial = g.out_h * g.out_w;
    // At least two tiles a thread over the batch, so that the last one does not wait alone.
    let per_image = (2 * threads).div_ceil(batch);
    let mut tiles = Vec::new();
    let mut push = |channels: Range<usize>, columns: Range<usize>| {
        for image in 0..batch {
            tiles.push(OutputTile {
                image,
                channels: channels.clone(),
                columns: columns.clone(),
            });
        }
    };
    if plan.direct {
        let width = (TILE_FLOATS / channels_out)
            .min(spatial.div_ceil(per_image))
            .max(MIN_TILE_COLUMNS)
            .next_multiple_of(16);
        if spatial >= 2 * MIN_TILE_COLUMNS || batch * spatial.div_ceil(width) >= threads {
            for c0 in (0..spatial).step_by(width) {
                push(0..channels_out, c0..(c0 + width).min(spatial));
            }
        } else {
            // gemm's micro-kernel takes the output channels six at a time.
            let block = channels_out.div_ceil(per_image).next_multiple_of(6);
            for c0 in (0..channels_out).step_by(block) {
                push(c0..(c0 + block).min(channels_out), 0..spatial);
            }
        }
    } else {
        let rows = g
            .out_h
            .div_ceil(per_image)
            .max(MIN_TILE_COLUMNS.div_ceil(g.out_w.max(1)))
            .min(plan.rows)
            .max(1);
        for r0 in (0..g.out_h).step_by(rows) {
            push(
                0..channels_out,
                r0 * g.out_w..(r0 + rows).min(g.out_h) * g.out_w,
            );
        }
    }
    (tiles.len() >= threads).then_some(tiles)
}

/// [`forward`] over the [`output_tiles`] of fewer images than threads.
#[allow(clippy::too_many_arguments)]
fn forward_tiles(
    tiles: &[OutputTile],
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    batch: usize,
    channels_in: usize,
    channels_out: usize,
    g: &Geometry,
    plan: &Plan,
    epilogue: &Epilogue,
) -> Vec<f32> {
    let k = channels_in * g.kernel[0] * g.kernel[1];
    let spatial = g.out_h * g.out_w;
    let out_len = channels_out * spatial;
    let in_len = channels_in * g.in_h * g.in_w;
    let mut out: Vec<f32> = Vec::with_capacity(batch * out_len);
    let dst = super::SendMutPtr::new(out.as_mut_ptr());
    // Output rows a column buffer holds: the whole tile, or, where the product reads it in
    // place (no packing), a few rows at a time, built and multiplied while in the cache.
    let chunk_rows = if k <= pointwise::DEEPEST && pointwise::available() {
        (CHUNK_COLUMNS / g.out_w.max(1)).max(1)
    } else {
        g.out_h
    };
    let widest = tiles.iter().map(|t| t.columns.len()).max().unwrap_or(0);
    let scratch = || {
        Vec::<f32>::with_capacity(if plan.direct {
            0
        } else {
            k * widest.min(chunk_rows * g.out_w)
        })
    };
    // Writes columns [c0, c0 + n) of tile `t`'s rows from `columns`.
    let write = |t: &OutputTile, c0: usize, n: usize, columns: (*const f32, isize, isize)| {
        let at = t.image * out_len + t.channels.start * spatial + c0;
        // SAFETY: tile `t` writes columns [c0, c0 + n) of rows `t.channels` of image
        // `t.image`'s [cout, spatial] output and nothing else, so tiles never overlap.
        unsafe {
            write_outputs_narrow(
                dst.ptr_add(at),
                at,
                (t.channels.len(), n, k),
                spatial,
                bias.map(|b| &b[t.channels.clone()]),
                (w[t.channels.start * k..].as_ptr(), 1, k as isize),
                columns,
                epilogue,
            );
        }
    };
    let tile = |col: &mut Vec<f32>, t: &OutputTile| {
        let x_b = &x[t.image * in_len..(t.image + 1) * in_len];
        if plan.direct {
            let c0 = t.columns.start;
            write(
                t,
                c0,
                t.columns.len(),
                (x_b[c0..].as_ptr(), 1, spatial as isize),
            );
            return;
        }
        let rows = t.columns.start / g.out_w..t.columns.end / g.out_w;
        for r0 in rows.clone().step_by(chunk_rows) {
            let chunk = r0..(r0 + chunk_rows).min(rows.end);
            let n = chunk.len() * g.out_w;
            col.resize(k * n, 0.0);
            im2col(x_b, channels_in, g, chunk, col, n, 0);
            write(t, r0 * g.out_w, n, (col.as_ptr(), 1, n as isize));
        }
    };
    super::planes::each_with(true, tiles.len(), scratch, |col, i| tile(col, &tiles[i]));
    // SAFETY: the tiles cover every column of every row of every image.
    unsafe { out.set_len(batch * out_len) };
    out
}

/// [`write_outputs`] on one thread for inference's narrow products (a lone image's tiles, an
/// inverted residual's bands): by `pointwise::gemm` where the CPU has AVX-512 and the product
/// is at most [`pointwise::DEEPEST`] deep, by the `gemm` crate otherwise.
///
/// # Safety
/// As for [`write_outputs`]; `w` and `columns` have a column stride of 1.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn write_outputs_narrow(
    d: *mut f32,
    at: usize,
    (rows, n, k): (usize, usize, usize),
    spatial: usize,
    bias: Option<&[f32]>,
    w: (*const f32, isize, isize),
    columns: (*const f32, isize, isize),
    epilogue: &Epilogue,
) {
    debug_assert!(
        w.1 == 1 && columns.1 == 1,
        "write_outputs_narrow: rows read in place"
    );
    // SAFETY: the caller's; the epilogue reads each row after the product wrote it.
    unsafe {
        if k <= pointwise::DEEPEST
            && pointwise::gemm(
                (rows, n, k),
                d,
                spatial,
                bias,
                (w.0, w.2 as usize),
                (columns.0, columns.2 as usize),
            )
        {
            epilogue_rows(d, at, (rows, n), spatial, epilogue);
            return;
        }
        write_outputs(
            d,
            at,
            (rows, n, k),
            spatial,
            bias,
            w,
            columns,
            gemm::Parallelism::None,
            epilogue,
        );
    }
}

/// Writes `rows` output rows at `d`, `spatial` apart, on columns `[0, n)`: the bias first where
/// there is one (`rows` of it) and the GEMM of `w` (`[rows, k]`) by `columns` (`[k, n]`)
/// accumulated onto it, or the GEMM alone, then the epilogue over each row; `at` is `d`'s
/// index in the whole output, which the epilogue's residual is read at.
///
/// # Safety
/// `d` must be valid for writes of `rows` rows of `n` floats `spatial` apart that no other
/// thread touches meanwhile, and `w` and `columns` must stay inside their buffers for the
/// sizes given.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn write_outputs(
    d: *mut f32,
    at: usize,
    (rows, n, k): (usize, usize, usize),
    spatial: usize,
    bias: Option<&[f32]>,
    w: (*const f32, isize, isize),
    columns: (*const f32, isize, isize),
    par: gemm::Parallelism,
    epilogue: &Epilogue,
) {
    // SAFETY: the caller's; every row is read back only after the bias or the GEMM wrote it.
    unsafe {
        if let Some(bias) = bias {
            for (r, &v) in bias.iter().enumerate() {
                core::slice::from_raw_parts_mut(d.add(r * spatial), n).fill(v);
            }
        }
        gemm((rows, n, k), d, spatial, bias.is_some(), w, columns, par);
        epilogue_rows(d, at, (rows, n), spatial, epilogue);
    }
}

/// The epilogue over `rows` written rows of `n` floats at `d`, `spatial` apart; `at` is `d`'s
/// index in the whole output.
///
/// # Safety
/// `d` must be valid for reads and writes of those rows, every element written.
unsafe fn epilogue_rows(
    d: *mut f32,
    at: usize,
    (rows, n): (usize, usize),
    spatial: usize,
    epilogue: &Epilogue,
) {
    if epilogue.is_identity() {
        return;
    }
    for r in 0..rows {
        // SAFETY: the caller's.
        let row = unsafe { core::slice::from_raw_parts_mut(d.add(r * spatial), n) };
        epilogue.apply(row, at + r * spatial);
    }
}

/// The input gradient (a transposed convolution): `grad` `[batch, cout, out_h, out_w]`, `w`
/// `[cout, cin, kh, kw]`, an optional bias of `cin` (a transposed convolution called as such);
/// returns `[batch, cin, in_h, in_w]`.
///
/// The output is not zeroed up front: each task starts its images from the bias or from zero
/// where col2im adds onto them, and a `direct` plan's GEMM writes every element itself.
pub(crate) fn transpose(
    grad: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    batch: usize,
    channels_in: usize,
    channels_out: usize,
    g: &Geometry,
) -> Vec<f32> {
    if let Some(t) = winograd::transposed(g)
        && winograd::applies(g, batch, channels_in, channels_out)
    {
        return winograd::forward(
            grad,
            w,
            winograd::Weight::Transposed,
            bias,
            batch,
            channels_out,
            channels_in,
            &t,
            &Epilogue::default(),
        );
    }
    let k = channels_in * g.kernel[0] * g.kernel[1];
    let spatial = g.out_h * g.out_w;
    let plane = g.in_h * g.in_w;
    let dx_len = channels_in * plane;
    let mut dx: Vec<f32> = Vec::with_capacity(batch * dx_len);
    let plan = Plan::new(g, k, batch);
    if dx_len == 0 {
        return dx;
    }
    let scratch = || plan.scratch(g, k, channels_out);
    for_each_task(
        &mut dx.spare_capacity_mut()[..batch * dx_len],
        plan.images * dx_len,
        scratch,
        |(col, gathered), task, dst| {
            let (first, images) = (task * plan.images, dst.len() / dx_len);
            if let Some(bias) = bias {
                for (i, v) in dst.iter_mut().enumerate() {
                    v.write(bias[i / plane % channels_in]);
                }
            } else if !plan.direct {
                dst.fill(MaybeUninit::new(0.0));
            }
            let (grad_ptr, ld) =
                gradient_columns(grad, first, images, channels_out, spatial, gathered);
            for rows in plan.tiles(g) {
                let per_image = rows.len() * g.out_w;
                let n = images * per_image;
                let (out, ldo) = if plan.direct {
                    // The GEMM writes the image's input gradient itself, accumulating onto the
                    // bias where there is one.
                    let d = dst[rows.start * g.out_w..].as_mut_ptr().cast::<f32>();
                    (d, plane)
                } else {
                    col.resize(k * n, 0.0);
                    (col.as_mut_ptr(), n)
                };
                // SAFETY: the output is [k, n], rows ldo apart: col, or for a direct plan dst
                // ([cin, plane], written in columns [rows.start·out_w, rows.start·out_w + n),
                // read only where the bias was written first); wᵀ is read from w ([cout, k]
                // row-major) with its strides swapped; the gradient is [cout, ld], read in the
                // same columns.
                unsafe {
                    let g_ptr = grad_ptr.add(rows.start * g.out_w);
                    let w_t = (w.as_ptr(), k as isize, 1);
                    gemm(
                        (k, n, channels_out),
                        out,
                        ldo,
                        plan.direct && bias.is_some(),
                        w_t,
                        (g_ptr, 1, ld as isize),
                        plan.par,
                    );
                }
                if plan.direct {
                    continue;
                }
                // SAFETY: written above (the bias, or zeros: not a direct plan).
                let dst = unsafe { &mut *(dst as *mut [MaybeUninit<f32>] as *mut [f32]) };
                for i in 0..images {
                    let dx_b = &mut dst[i * dx_len..(i + 1) * dx_len];
                    col2im(col, n, i * per_image, channels_in, g, rows.clone(), dx_b);
                }
            }
        },
    );
    // SAFETY: every element was written (see above): the tiles cover every output row, and a
    // direct plan's GEMM covers every column of the rows it is given.
    unsafe { dx.set_len(batch * dx_len) };
    dx
}

/// The weight gradient: `x` `[batch, cin, in_h, in_w]` (the convolution's input), `grad`
/// `[batch, cout, out_h, out_w]`; returns `[cout, cin, kh, kw]`.
pub(crate) fn weight_gradient(
    x: &[f32],
    grad: &[f32],
    batch: usize,
    channels_in: usize,
    channels_out: usize,
    g: &Geometry,
) -> Vec<f32> {
    if winograd::applies(g, batch, channels_in, channels_out) {
        return winograd::weight_gradient(x, grad, batch, channels_in, channels_out, g);
    }
    let k = channels_in * g.kernel[0] * g.kernel[1];
    let spatial = g.out_h * g.out_w;
    let plan = Plan::new(g, k, batch);
    let tasks = batch.div_ceil(plan.images);
    // One task's share added onto `dw` (`[cout, k]`, a run's own).
    let task = |dw: &mut Vec<f32>, col: &mut Vec<f32>, gathered: &mut Vec<f32>, task: usize| {
        let first = task * plan.images;
        let images = plan.images.min(batch - first);
        let (grad_ptr, ld) = gradient_columns(grad, first, images, channels_out, spatial, gathered);
        for rows in plan.tiles(g) {
            let (col_ptr, col_ld, n) = columns(
                x,
                first,
                images,
                channels_in,
                g,
                rows.clone(),
                plan.direct,
                plan.par,
                col,
            );
            // SAFETY: dw is [cout, k] row-major; the gradient is [cout, ld], read in columns
            // [rows.start·out_w, rows.start·out_w + n); colᵀ is read from the columns ([k, n],
            // rows col_ld apart) with its strides swapped.
            unsafe {
                let g_ptr = grad_ptr.add(rows.start * g.out_w);
                let col_t = (col_ptr, col_ld as isize, 1);
                gemm(
                    (channels_out, k, n),
                    dw.as_mut_ptr(),
                    k,
                    true,
                    (g_ptr, 1, ld as isize),
                    col_t,
                    plan.par,
                );
            }
        }
    };
    let scratch = || {
        let (col, gathered) = plan.scratch(g, k, channels_out);
        (vec![0.0; channels_out * k], col, gathered)
    };
    let runs = for_each_task(
        &mut vec![(); tasks],
        1,
        scratch,
        |(dw, col, gathered), t, _| task(dw, col, gathered, t),
    );
    // An empty batch has no run: its gradient is zero.
    sum_of(runs.into_iter().map(|(dw, _, _)| dw)).unwrap_or_else(|| vec![0.0; channels_out * k])
}
