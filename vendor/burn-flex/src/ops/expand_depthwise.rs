//! An inverted residual's expansion, depthwise convolution and projection in bands of rows
//! (lookalike), for inference: `clamp(conv1x1(clamp(depthwise(clamp(conv1x1(x, w1) + b1)) + b2),
//! w3) + b3 [+ x])`, neither the expanded activation nor the depthwise's output ever written
//! out whole.
//!
//! Done one layer at a time over a batch, the expansion writes its output (6× the block's input
//! channels, at the block's largest plane: 77 MB for MobileNetV2's second block at batch 16),
//! the depthwise convolution reads it back from memory and writes as much again, and the
//! projection reads that. Here each task takes one image and one band of the depthwise's
//! output rows: it expands only the input rows the band reads into a buffer that stays in the
//! core's cache (GEMM, bias, clamp), runs the depthwise filter over that buffer channel by
//! channel (`depthwise::PlaneFilter`, on the band's own geometry: the rows above and below the
//! buffer are padding where the plane has none) into a second buffer, and projects that (GEMM,
//! bias, the block's input added, clamp) into the band's rows of the output. Bands overlap by
//! the filter's reach less its stride, and those input rows are expanded twice; bands are as
//! tall as the cache allows so that this stays small, and [`forward`] declines where it would
//! not (and for fewer images than threads, which the lone image's tiles in `dense.rs` serve).

use alloc::vec::Vec;
use core::mem::MaybeUninit;

use super::dense::{threads, write_outputs_narrow};
use super::depthwise::{Geometry, PlaneFilter};
use super::fused::Epilogue;

/// Most floats of expanded rows a task holds (1 MiB: half a core's L2 here; its buffer of the
/// depthwise's output rows, the other half, is at most as large).
const BAND_FLOATS: usize = 1 << 18;

/// Most input rows, over all bands, against the plane's own: above it the overlap costs more
/// than the memory traffic it saves, and [`forward`] declines.
const MOST_OVERLAP: f64 = 1.3;

/// The block's 1×1 projection after its depthwise convolution.
pub(crate) struct Projection<'a> {
    /// `[channels_out, expanded]`.
    pub weight: &'a [f32],
    pub bias: &'a [f32],
    pub clamp: Option<(f32, f32)>,
    pub channels_out: usize,
    /// Whether the block's input is added (it has the output's shape).
    pub residual: bool,
}

/// The expansion `w1` (`[expanded, cin]`, bias `b1`, then `clamp1`) of `x` (`[batch, cin, in_h,
/// in_w]`) followed by the depthwise convolution `w2` (`[expanded, kh·kw]`, bias `b2`, then
/// `clamp2`) of geometry `g`, then the projection `p`; returns `[batch, p.channels_out, out_h,
/// out_w]`, or `None` for fewer images than threads or where the bands would overlap too much
/// (the caller runs the convolutions one after the other).
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    x: &[f32],
    (w1, b1, clamp1): (&[f32], &[f32], Option<(f32, f32)>),
    (w2, b2, clamp2): (&[f32], &[f32], Option<(f32, f32)>),
    p: &Projection,
    batch: usize,
    cin: usize,
    expanded: usize,
    g: &Geometry,
) -> Option<Vec<f32>> {
    let band = Band::choose(g, expanded, batch)?;
    let (in_plane, out_plane) = (g.in_h * g.in_w, g.out_h * g.out_w);
    let k = g.kernel[0] * g.kernel[1];
    let channels = p.channels_out;
    let total = batch * channels * out_plane;
    let mut out: Vec<f32> = Vec::with_capacity(total);
    let dst = super::SendMutPtr::new(out.as_mut_ptr());
    let tasks = batch * band.count;
    let scratch = || {
        (
            Vec::<f32>::with_capacity(expanded * band.most_rows_in * g.in_w),
            Vec::<f32>::with_capacity(expanded * band.rows * g.out_w),
        )
    };
    super::planes::each_with(true, tasks, scratch, |(e, d), task| {
        let (image, r0) = (task / band.count, (task % band.count) * band.rows);
        let rows = r0..(r0 + band.rows).min(g.out_h);
        let (lo, hi) = band.input_rows(g, rows.clone());
        let n = (hi - lo) * g.in_w;
        // The expanded rows lo..hi of every channel, `[expanded, n]`: bias, GEMM and clamp
        // written straight into the scratch, which is never zeroed.
        e.clear();
        e.reserve(expanded * n);
        let x_rows = &x[image * cin * in_plane + lo * g.in_w..];
        let expand_epilogue = Epilogue {
            residual: None,
            clamp: clamp1,
        };
        // SAFETY: e has room for [expanded, n] row-major and nothing else touches it;
        // write_outputs writes every element before `set_len` exposes them; w1 is
        // [expanded, cin] row-major; x_rows holds `cin` planes `in_plane` apart, each with n
        // floats from the band's first row on.
        unsafe {
            write_outputs_narrow(
                e.as_mut_ptr(),
                0,
                (expanded, n, cin),
                n,
                Some(b1),
                (w1.as_ptr(), 1, cin as isize),
                (x_rows.as_ptr(), 1, in_plane as isize),
                &expand_epilogue,
            );
            e.set_len(expanded * n);
        }
        let bg = Geometry {
            in_h: hi - lo,
            out_h: rows.len(),
            padding: [g.padding[0] + lo - r0 * g.stride[0], g.padding[1]],
            ..*g
        };
        let mut filter = PlaneFilter::new(&bg);
        let dw_epilogue = Epilogue {
            residual: None,
            clamp: clamp2,
        };
        // The depthwise's output rows of every channel, `[expanded, len]`, with bias and
        // clamp, then projected.
        let len = rows.len() * g.out_w;
        d.clear();
        d.reserve(expanded * len);
        let spare = d.spare_capacity_mut();
        for c in 0..expanded {
            let rows_out = &mut spare[c * len..(c + 1) * len];
            filter.run(
                &e[c * n..(c + 1) * n],
                &w2[c * k..(c + 1) * k],
                b2[c],
                rows_out,
            );
            // SAFETY: `run` wrote every element of the rows.
            let written = unsafe { &mut *(rows_out as *mut [MaybeUninit<f32>] as *mut [f32]) };
            dw_epilogue.apply(written, 0);
        }
        // SAFETY: every channel's rows were written above.
        unsafe { d.set_len(expanded * len) };
        let at = image * channels * out_plane + r0 * g.out_w;
        let project_epilogue = Epilogue {
            residual: p.residual.then_some(x),
            clamp: p.clamp,
        };
        // SAFETY: task (image, band) writes rows `rows` of each of image `image`'s planes
        // (`out_plane` apart) and nothing else; the weight is [channels, expanded] row-major
        // and `d` [expanded, len]; with a residual, `x` has the output's shape.
        unsafe {
            write_outputs_narrow(
                dst.ptr_add(at),
                at,
                (channels, len, expanded),
                out_plane,
                Some(p.bias),
                (p.weight.as_ptr(), 1, expanded as isize),
                (d.as_ptr(), 1, len as isize),
                &project_epilogue,
            );
        }
    });
    // SAFETY: the bands cover every row of every plane of every image.
    unsafe { out.set_len(total) };
    Some(out)
}

/// How the depthwise's output rows are cut into bands.
struct Band {
    /// Output rows a band (the last may have fewer).
    rows: usize,
    /// Bands an image.
    count: usize,
    /// Input rows the tallest band reads.
    most_rows_in: usize,
}

impl Band {
    /// Bands as tall as [`BAND_FLOATS`] allows, shorter where there would be fewer than two
    /// tasks a thread; `None` for fewer images than threads, or where the bands' overlap would
    /// pass [`MOST_OVERLAP`].
    fn choose(g: &Geometry, expanded: usize, batch: usize) -> Option<Self> {
        // Fewer images than threads take the lone image's tiles (`dense.rs`), tuned for it.
        if batch < threads() || g.out_h == 0 || g.out_w == 0 || g.in_h == 0 || expanded == 0 {
            return None;
        }
        let rows_in = |rows: usize| ((rows - 1) * g.stride[0] + reach(g)).min(g.in_h);
        let fit = BAND_FLOATS / (expanded * g.in_w).max(1);
        let mut rows = (1..=g.out_h)
            .take_while(|&r| rows_in(r) <= fit)
            .last()
            .unwrap_or(1);
        let wanted = (2 * threads()).div_ceil(batch);
        rows = rows.min(g.out_h.div_ceil(wanted)).max(1);
        let count = g.out_h.div_ceil(rows);
        let band = Self {
            rows,
            count,
            most_rows_in: rows_in(rows),
        };
        let read: usize = (0..count)
            .map(|b| {
                let r0 = b * rows;
                let (lo, hi) = band.input_rows(g, r0..(r0 + rows).min(g.out_h));
                hi - lo
            })
            .sum();
        (read as f64 <= MOST_OVERLAP * g.in_h as f64).then_some(band)
    }

    /// The input rows `[lo, hi)` that the output rows `rows` read (padding left out).
    fn input_rows(&self, g: &Geometry, rows: core::ops::Range<usize>) -> (usize, usize) {
        let first = rows.start * g.stride[0];
        let last = (rows.end - 1) * g.stride[0] + reach(g);
        let lo = first.saturating_sub(g.padding[0]).min(g.in_h);
        let hi = last.saturating_sub(g.padding[0]).min(g.in_h).max(lo);
        (lo, hi)
    }
}

/// Input rows one output row's filter spans (dilation included).
fn reach(g: &Geometry) -> usize {
    g.dilation[0] * (g.kernel[0] - 1) + 1
}
