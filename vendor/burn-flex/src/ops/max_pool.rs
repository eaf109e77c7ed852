//! 2D max pooling in f32, added by lookalike: one output row at a time, each kernel tap a run
//! over the row (branch-free, so it vectorises), planes in parallel; without indices
//! (inference) and with them (training, whose backward scatters through them). Burn's flex
//! route computed every output's window one element at a time, dividing to find it; it was a
//! sixth of a ResNet-18 forward pass and 6 % of its training step. NaN wins a window, as there
//! and in PyTorch; with indices, ties go to the first tap in row-major order and a NaN to the
//! last NaN, as there.

use alloc::vec;
use alloc::vec::Vec;
use burn_backend::{DType, TensorMetadata};
use burn_std::{Bytes, Shape};

use crate::{FlexTensor, Layout};

use super::planes::{for_each_chunk_with, valid_range};
use super::pool::pool_output_size;

/// One plane's pooling windows, dilation 1.
struct Windows {
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
}

impl Windows {
    fn new(
        in_hw: [usize; 2],
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        ceil_mode: bool,
    ) -> Self {
        let [in_h, in_w] = in_hw;
        Self {
            kernel,
            stride,
            padding,
            in_h,
            in_w,
            out_h: pool_output_size(in_h, kernel[0], padding[0], stride[0], 1, ceil_mode),
            out_w: pool_output_size(in_w, kernel[1], padding[1], stride[1], 1, ceil_mode),
        }
    }

    /// Every tap of output row `oy` that lands inside the input, in row-major tap order:
    /// `tap(offset, lo..hi, values)` says that output columns `lo..hi` read `values` (one
    /// each), which lie at `offset` (`i · in_w + j` for tap (i, j)) past each window's corner.
    /// At a column stride over 1 the input row is first split into its stride phases (in
    /// `phases`), so every tap reads a contiguous run.
    fn taps(
        &self,
        oy: usize,
        src: &[f32],
        phases: &mut Vec<f32>,
        mut tap: impl FnMut(usize, core::ops::Range<usize>, &[f32]),
    ) {
        let s = self.stride[1];
        let phase_len = self.in_w.div_ceil(s);
        for i in 0..self.kernel[0] {
            let iy = (oy * self.stride[0] + i) as isize - self.padding[0] as isize;
            if iy < 0 || iy as usize >= self.in_h {
                continue;
            }
            let row = &src[iy as usize * self.in_w..][..self.in_w];
            if s > 1 {
                phases.resize(s * phase_len, 0.0);
                for (p, phase) in phases.chunks_exact_mut(phase_len).enumerate() {
                    for (d, v) in phase.iter_mut().zip(row.iter().skip(p).step_by(s)) {
                        *d = *v;
                    }
                }
            }
            for j in 0..self.kernel[1] {
                let offset = j as isize - self.padding[1] as isize;
                let (lo, hi) = valid_range(self.out_w, self.in_w, s, offset);
                if lo < hi {
                    let start = ((lo * s) as isize + offset) as usize;
                    let values = if s == 1 {
                        &row[start..start + hi - lo]
                    } else {
                        &phases[(start % s) * phase_len + start / s..][..hi - lo]
                    };
                    tap(i * self.in_w + j, lo..hi, values);
                }
            }
        }
    }

    /// A `[planes[0], planes[1], out_h, out_w]` tensor of `data`.
    fn output<E: bytemuck::NoUninit + Send + Sync>(
        &self,
        data: Vec<E>,
        planes: [usize; 2],
        dtype: DType,
    ) -> FlexTensor {
        FlexTensor::new(
            Bytes::from_elems(data),
            Layout::contiguous(Shape::from(vec![
                planes[0], planes[1], self.out_h, self.out_w,
            ])),
            dtype,
        )
    }
}

/// `max_pool2d` for an f32 `[batch, channels, h, w]` tensor, dilation 1.
pub(crate) fn max_pool2d(
    x: FlexTensor,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    ceil_mode: bool,
) -> FlexTensor {
    let x = x.to_contiguous();
    let [batch, channels, in_h, in_w]: [usize; 4] = x.shape().dims();
    let win = Windows::new([in_h, in_w], kernel, stride, padding, ceil_mode);
    let data: &[f32] = x.storage();
    let plane_in = in_h * in_w;
    let plane_out = win.out_h * win.out_w;
    let mut out = vec![f32::NEG_INFINITY; batch * channels * plane_out];
    if plane_out > 0 {
        for_each_chunk_with(&mut out, plane_out, Vec::new, |phases, p, dst| {
            let src = &data[p * plane_in..(p + 1) * plane_in];
            for (oy, row) in dst.chunks_exact_mut(win.out_w).enumerate() {
                win.taps(oy, src, phases, |_, cols, values| {
                    tap_max(&mut row[cols], values)
                });
            }
        });
    }
    win.output(out, [batch, channels], DType::F32)
}

/// `max_pool2d_with_indices` for an f32 `[batch, channels, h, w]` tensor, dilation 1: the
/// output and, for each output, its input's index within its plane (`iy · w + ix`, i64).
pub(crate) fn max_pool2d_with_indices(
    x: FlexTensor,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    ceil_mode: bool,
) -> (FlexTensor, FlexTensor) {
    let x = x.to_contiguous();
    let [batch, channels, in_h, in_w]: [usize; 4] = x.shape().dims();
    let win = Windows::new([in_h, in_w], kernel, stride, padding, ceil_mode);
    let data: &[f32] = x.storage();
    let plane_in = in_h * in_w;
    let plane_out = win.out_h * win.out_w;
    let mut out = vec![f32::NEG_INFINITY; batch * channels * plane_out];
    let mut indices = vec![-1i64; batch * channels * plane_out];
    // Each output row keeps, per column, the offset of its best tap so far (-1: none yet),
    // in 32 bits beside the f32 values so that the taps vectorise; the indices are made from
    // them once the row is done.
    let plane = |scratch: &mut (Vec<f32>, Vec<i32>), p: usize, dst: &mut [f32], idx: &mut [i64]| {
        let (phases, best) = scratch;
        let src = &data[p * plane_in..(p + 1) * plane_in];
        let rows = dst
            .chunks_exact_mut(win.out_w)
            .zip(idx.chunks_exact_mut(win.out_w));
        for (oy, (row, irow)) in rows.enumerate() {
            best.clear();
            best.resize(win.out_w, -1);
            win.taps(oy, src, phases, |offset, cols, values| {
                tap_max_at(
                    &mut row[cols.clone()],
                    &mut best[cols],
                    values,
                    offset as i32,
                )
            });
            // The window of column k starts at (oy · sy - py, k · sx - px).
            let corner =
                (oy * stride[0]) as i64 * in_w as i64 - (padding[0] * in_w + padding[1]) as i64;
            for (k, (id, &b)) in irow.iter_mut().zip(best.iter()).enumerate() {
                *id = if b < 0 {
                    -1
                } else {
                    corner + (k * stride[1]) as i64 + b as i64
                };
            }
        }
    };
    if plane_out > 0 {
        let scratch = || (Vec::new(), Vec::new());
        #[cfg(feature = "rayon")]
        {
            use rayon::prelude::*;
            out.par_chunks_mut(plane_out)
                .zip(indices.par_chunks_mut(plane_out))
                .enumerate()
                .for_each_init(scratch, |s, (p, (dst, idx))| plane(s, p, dst, idx));
        }
        #[cfg(not(feature = "rayon"))]
        {
            let mut s = scratch();
            for (p, (dst, idx)) in out
                .chunks_mut(plane_out)
                .zip(indices.chunks_mut(plane_out))
                .enumerate()
            {
                plane(&mut s, p, dst, idx);
            }
        }
    }
    (
        win.output(out, [batch, channels], DType::F32),
        win.output(indices, [batch, channels], DType::I64),
    )
}

// The taps' inner loops, branch-free so that they vectorise, compiled for the widest SIMD the
// CPU has.

/// `o = max(o, v)` for each output and its value, NaN winning.
#[cfg_attr(feature = "simd", macerator::with_simd)]
fn tap_max<#[cfg(feature = "simd")] S: macerator::Simd>(outs: &mut [f32], values: &[f32]) {
    for (o, &v) in outs.iter_mut().zip(values) {
        *o = if (v > *o) | v.is_nan() { v } else { *o };
    }
}

/// [`tap_max`] that also keeps, in `best`, the offset of the tap each output took its value
/// from (-1 before the first tap, which always wins).
#[cfg_attr(feature = "simd", macerator::with_simd)]
fn tap_max_at<#[cfg(feature = "simd")] S: macerator::Simd>(
    outs: &mut [f32],
    best: &mut [i32],
    values: &[f32],
    offset: i32,
) {
    let n = outs.len();
    let (best, values) = (&mut best[..n], &values[..n]);
    for k in 0..n {
        let (o, v) = (outs[k], values[k]);
        let take = (best[k] < 0) | (v > o) | v.is_nan();
        outs[k] = if take { v } else { o };
        best[k] = if take { offset } else { best[k] };
    }
}
