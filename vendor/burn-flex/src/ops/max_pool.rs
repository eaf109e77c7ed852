//! 2D max pooling without indices (inference) in f32, added by lookalike: one output row at a
//! time, each kernel tap a run over the row (branch-free, so it vectorises), planes in
//! parallel. Burn's flex route computed every output's window one element at a time with an
//! index beside it, then dropped the indices; it was a sixth of a ResNet-18 forward pass.
//! NaN wins a window, as there and in PyTorch.

use alloc::vec;
use burn_backend::TensorMetadata;
use burn_std::{Bytes, Shape};

use crate::{FlexTensor, Layout};

use super::planes::{for_each_chunk, valid_range};
use super::pool::pool_output_size;

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
    let out_h = pool_output_size(in_h, kernel[0], padding[0], stride[0], 1, ceil_mode);
    let out_w = pool_output_size(in_w, kernel[1], padding[1], stride[1], 1, ceil_mode);
    let data: &[f32] = x.storage();
    let plane_in = in_h * in_w;
    let plane_out = out_h * out_w;
    let mut out = vec![f32::NEG_INFINITY; batch * channels * plane_out];
    if plane_out > 0 {
        for_each_chunk(&mut out, plane_out, |p, dst| {
            let src = &data[p * plane_in..(p + 1) * plane_in];
            for (oy, row) in dst.chunks_exact_mut(out_w).enumerate() {
                for i in 0..kernel[0] {
                    let iy = (oy * stride[0] + i) as isize - padding[0] as isize;
                    if iy < 0 || iy as usize >= in_h {
                        continue;
                    }
                    let input = &src[iy as usize * in_w..(iy as usize + 1) * in_w];
                    for j in 0..kernel[1] {
                        let offset = j as isize - padding[1] as isize;
                        let (lo, hi) = valid_range(out_w, in_w, stride[1], offset);
                        if lo >= hi {
                            continue;
                        }
                        let start = ((lo * stride[1]) as isize + offset) as usize;
                        let outs = &mut row[lo..hi];
                        if stride[1] == 1 {
                            for (o, &v) in outs.iter_mut().zip(&input[start..start + hi - lo]) {
                                *o = if v > *o || v.is_nan() { v } else { *o };
                            }
                        } else {
                            for (k, o) in outs.iter_mut().enumerate() {
                                let v = input[start + k * stride[1]];
                                *o = if v > *o || v.is_nan() { v } else { *o };
                            }
                        }
                    }
                }
            }
        });
    }
    FlexTensor::new(
        Bytes::from_elems(out),
        Layout::contiguous(Shape::from(vec![batch, channels, out_h, out_w])),
        burn_backend::DType::F32,
    )
}
