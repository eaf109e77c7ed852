//! The f32 depthwise convolution (lookalike): forward, input gradient (the transposed
//! convolution) and weight gradient, each a filter whose every tap reads one contiguous run,
//! accumulated in registers.
//!
//! Each `(batch, channel)` plane is first copied into zero-padded *phase planes*: with stride
//! `s`, phase `(rh, rw)` holds the padded input's rows `s·i + rh` and columns `s·j + rw`. Tap
//! `(kh, kw)` then reads phase `(kh·d mod s, kw·d mod s)` shifted by `(kh·d div s, kw·d div s)`
//! rows and columns, so output `(oh, ow)`, written at `oh·wq + ow` in a buffer whose rows are
//! `wq` wide (the phase planes' width), is `bias + Σ w_t · scratch[oh·wq + ow + offset_t]`: a
//! one-dimensional multi-tap filter over the flat scratch, whatever the stride, dilation and
//! padding. The `wq - out_w` columns past each output row are computed and dropped when the
//! rows are copied out. Padding is materialised as zeros, so a non-finite weight on a padded
//! tap gives NaN exactly as the reference's `0 · inf` does.
//!
//! The input gradient runs the same filter backwards: each phase plane of the padded input's
//! gradient is `Σ w_t · grad[P - shift_t]` over the taps of that phase, read from the output
//! gradient laid out `wq` wide with zeros around it, then gathered back into the input's grid.
//! The weight gradient is one dot product a tap, `Σ grad[p] · scratch[p + offset_t]`, over the
//! output gradient laid out the same way (its extra columns zero).
//!
//! What they replace: the forward went through `conv_plane_accumulate`, which adds one tap at a
//! time into the output row (loading and storing it once a tap), reads stride-2 inputs one by
//! one, zeroes the output first and adds the bias in a separate pass; the two gradients were
//! loops of the same kind in `conv_backward.rs`.

use alloc::vec;
use alloc::vec::Vec;
use core::mem::MaybeUninit;

use super::fused::Epilogue;
#[cfg(all(target_arch = "x86_64", feature = "std"))]
use super::planes::first_lanes;
use super::planes::{collect_chunks_with, copy_row, for_each_chunk_with};

/// The shape of one convolution (depthwise here, dense in `dense.rs`): `padding` is the padding
/// before each axis; the padding after, which may differ (TensorFlow's "same"), is where the
/// output size ends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub in_h: usize,
    pub in_w: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
}

impl Geometry {
    /// A convolution of an `[h, w]` input with `kernel`, the padding before and after each
    /// axis, stride and dilation as `options` say.
    pub(crate) fn of_conv(
        [h, w]: [usize; 2],
        kernel: [usize; 2],
        options: &burn_backend::ops::ConvOptions<2>,
    ) -> Self {
        let size = |i: usize, input: usize| {
            let (begin, end) = options.padding[i];
            let reach = options.dilation[i] * (kernel[i] - 1) + 1;
            (input + begin + end)
                .checked_sub(reach)
                .expect("conv2d: kernel larger than the padded input")
                / options.stride[i]
                + 1
        };
        Self {
            in_h: h,
            in_w: w,
            out_h: size(0, h),
            out_w: size(1, w),
            kernel,
            stride: options.stride,
            padding: options.padding_begin(),
            dilation: options.dilation,
        }
    }

    /// The forward convolution a transposed convolution of an `[h, w]` input with `kernel` and
    /// `options` transposes: its output is that input, its input the transposed output.
    pub(crate) fn transposed(
        [h, w]: [usize; 2],
        kernel: [usize; 2],
        options: &burn_backend::ops::ConvTransposeOptions<2>,
    ) -> Self {
        let size = |i: usize, input: usize| {
            ((input - 1) * options.stride[i]
                + options.dilation[i] * (kernel[i] - 1)
                + options.padding_out[i]
                + 1)
            .checked_sub(2 * options.padding[i])
            .expect("conv_transpose2d: padding larger than the output")
        };
        Self {
            in_h: size(0, h),
            in_w: size(1, w),
            out_h: h,
            out_w: w,
            kernel,
            stride: options.stride,
            padding: options.padding,
            dilation: options.dilation,
        }
    }
}

/// Outputs accumulated at once: eight AVX-512 registers (sixteen AVX2 ones), enough
/// independent sums to hide the latency of the fused multiply-adds.
const CHUNK: usize = 128;

/// Outputs accumulated at once past the last whole chunk: one AVX-512 register.
const LANES: usize = 16;

/// One tap of the filter: which phase plane it reads, shifted by how much.
#[derive(Clone, Copy)]
struct Tap {
    phase: usize,
    /// `a·wq + b`: the tap's row and column shift inside its phase plane.
    shift: usize,
    /// Index into the channel's `kh·kw` filter.
    index: usize,
}

/// Where the phase planes and the taps lie in the per-thread scratch.
struct Layout {
    /// Width of a phase plane, and of the rows of the flat output buffer.
    wq: usize,
    /// Rows of a phase plane.
    hq: usize,
    /// `hq·wq`.
    plane: usize,
    /// Phase planes: `stride_h·stride_w`.
    phases: usize,
    /// Elements the flat output buffer computes for the gradients (a whole number of chunks).
    flat_len: usize,
    /// Elements the forward's flat output buffer computes: a whole number of [`LANES`], so a
    /// small plane (7 × 7: 61 outputs) does not compute a whole chunk of 128.
    forward_len: usize,
    /// Length of the input scratch: every read of every chunk stays inside.
    scratch_len: usize,
    /// The largest shift of a tap.
    reach: usize,
    taps: Vec<Tap>,
}

impl Layout {
    fn new(g: &Geometry) -> Self {
        let [sh, sw] = g.stride;
        let reach = |axis: usize| (g.kernel[axis] - 1) * g.dilation[axis] / g.stride[axis];
        let (hq, wq) = (g.out_h + reach(0), g.out_w + reach(1));
        let plane = hq * wq;
        let mut taps = Vec::with_capacity(g.kernel[0] * g.kernel[1]);
        for kh in 0..g.kernel[0] {
            let (rh, a) = ((kh * g.dilation[0]) % sh, (kh * g.dilation[0]) / sh);
            for kw in 0..g.kernel[1] {
                let (rw, b) = ((kw * g.dilation[1]) % sw, (kw * g.dilation[1]) / sw);
                taps.push(Tap {
                    phase: rh * sw + rw,
                    shift: a * wq + b,
                    index: kh * g.kernel[1] + kw,
                });
            }
        }
        let needed = (g.out_h - 1) * wq + g.out_w;
        let flat_len = needed.div_ceil(CHUNK) * CHUNK;
        let last_tap = taps
            .iter()
            .map(|t| t.phase * plane + t.shift)
            .max()
            .unwrap_or(0);
        let phases = sh * sw;
        Self {
            wq,
            hq,
            plane,
            phases,
            flat_len,
            forward_len: needed.div_ceil(LANES) * LANES,
            scratch_len: (phases * plane).max(last_tap + flat_len),
            reach: reach(0) * wq + reach(1),
            taps,
        }
    }

    /// `(offset into the input scratch, weight)` of every tap for one channel's filter, into
    /// `taps` (a thread's scratch: no allocation a plane).
    fn forward_taps(&self, filter: &[f32], taps: &mut Vec<(usize, f32)>) {
        taps.clear();
        taps.extend(
            self.taps
                .iter()
                .map(|t| (t.phase * self.plane + t.shift, filter[t.index])),
        );
    }
}

/// `out[b, c] = conv(x[b, c], w[c]) + bias[c]` over NCHW planes; `w` is `[channels, kh·kw]`.
/// The epilogue (`fused.rs`) runs over each output plane right after it is copied out.
pub(crate) fn forward(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    batch: usize,
    channels: usize,
    g: &Geometry,
    epilogue: &Epilogue,
) -> Vec<f32> {
    let in_plane = g.in_h * g.in_w;
    let out_plane = g.out_h * g.out_w;
    let k = g.kernel[0] * g.kernel[1];
    let planes = batch * channels;
    let total = planes * out_plane;
    if total == 0 {
        return Vec::new();
    }
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    if grouped(g) && std::is_x86_feature_detected!("avx512f") {
        return forward_grouped(x, w, bias, channels, g, epilogue);
    }
    collect_chunks_with(
        total,
        out_plane,
        || PlaneFilter::new(g),
        |filter, bc, out| {
            let c = bc % channels;
            let x_plane = &x[bc * in_plane..(bc + 1) * in_plane];
            filter.run(
                x_plane,
                &w[c * k..(c + 1) * k],
                bias.map_or(0.0, |b| b[c]),
                out,
            );
            if !epilogue.is_identity() {
                // SAFETY: `run` wrote every element of the plane.
                let plane = unsafe { &mut *(out as *mut [MaybeUninit<f32>] as *mut [f32]) };
                epilogue.apply(plane, bc * out_plane);
            }
        },
    )
}

/// Planes a small plane's forward takes at once, one in each lane of an AVX-512 register.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
const GROUP: usize = 16;

/// Whether [`forward_grouped`] takes a convolution: output planes of at most 64 positions
/// (MobileNetV2's 7 × 7, Lite1's 8 × 8), and strided ones of at most 256 (14 × 14, 15 × 15),
/// whose planes a plane at a time first split into four phase planes. Measured alone at batch 1
/// (`mobilenet_layers dw`): 576 × 14 → 7 and 192 × 28 → 14 at stride 2, 960 × 7 at stride 1
/// faster; 384 and 576 × 14 at stride 1 slower, left to [`PlaneFilter`].
#[cfg(all(target_arch = "x86_64", feature = "std"))]
fn grouped(g: &Geometry) -> bool {
    let out_plane = g.out_h * g.out_w;
    out_plane <= 64 || (out_plane <= 256 && g.stride != [1, 1])
}

/// The forward for small planes, [`GROUP`] planes at a time with the planes interleaved: the
/// group's padded inputs lie position by position, a lane each, so an output position of all of
/// them is `bias + Σ w_t · input[p + offset_t]` in one vector, and only outputs that exist are
/// computed. A plane at a time, a 7 × 7 plane costs more in its calls, row copies and blocks of
/// sixteen outputs than in its 441 multiply-adds. The copies into and out of the interleaved
/// layout go sixteen positions of sixteen planes at a time through a register transpose.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
fn forward_grouped(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    channels: usize,
    g: &Geometry,
    epilogue: &Epilogue,
) -> Vec<f32> {
    let in_plane = g.in_h * g.in_w;
    let out_plane = g.out_h * g.out_w;
    let k = g.kernel[0] * g.kernel[1];
    let total = x.len() / in_plane * out_plane;
    // The padded input a group reads: rows and columns up to the last tap of the last output.
    let hp = (g.out_h - 1) * g.stride[0] + (g.kernel[0] - 1) * g.dilation[0] + 1;
    let wp = (g.out_w - 1) * g.stride[1] + (g.kernel[1] - 1) * g.dilation[1] + 1;
    // Input columns inside the padded width, and input rows inside its height.
    let cols = g.in_w.min(wp.saturating_sub(g.padding[1]));
    let rows = g.in_h.min(hp.saturating_sub(g.padding[0]));
    let offsets: Vec<usize> = (0..g.kernel[0])
        .flat_map(|kh| (0..g.kernel[1]).map(move |kw| (kh, kw)))
        .map(|(kh, kw)| kh * g.dilation[0] * wp + kw * g.dilation[1])
        .collect();
    collect_chunks_with(
        total,
        GROUP * out_plane,
        // Padding positions are never written: zero from here on, in every lane.
        || GroupScratch {
            input: vec![0.0; hp * wp * GROUP],
            weights: vec![0.0; k * GROUP],
            bias: [0.0; GROUP],
            out: vec![0.0; out_plane.next_multiple_of(GROUP) * GROUP],
        },
        |s, n, out| {
            let lanes = out.len() / out_plane;
            let first = n * GROUP;
            for l in 0..lanes {
                let c = (first + l) % channels;
                for t in 0..k {
                    s.weights[t * GROUP + l] = w[c * k + t];
                }
                s.bias[l] = bias.map_or(0.0, |b| b[c]);
            }
            let planes = &x[first * in_plane..(first + lanes) * in_plane];
            for ih in 0..rows {
                let at = ((ih + g.padding[0]) * wp + g.padding[1]) * GROUP;
                // SAFETY: AVX-512F is present (checked by the caller); the row's `cols`
                // positions of `GROUP` lanes end inside the padded input (`cols` ≤ `wp - pad`).
                unsafe {
                    interleave_avx512(
                        planes,
                        in_plane,
                        ih * g.in_w,
                        cols,
                        lanes,
                        &mut s.input[at..at + cols * GROUP],
                    )
                };
            }
            accumulate_grouped(&mut s.out, &s.input, &s.weights, &s.bias, &offsets, g, wp);
            // SAFETY: `MaybeUninit<f32>` has f32's layout; every element is written below.
            let out = unsafe { &mut *(out as *mut [MaybeUninit<f32>] as *mut [f32]) };
            // SAFETY: AVX-512F is present; `s.out` holds whole blocks of `GROUP` positions.
            unsafe { deinterleave_avx512_planes(&s.out, out_plane, lanes, out) };
            epilogue.apply(out, first * out_plane);
        },
    )
}

/// A thread's scratch for [`forward_grouped`]: the group's padded inputs, filters and biases
/// interleaved lane by lane, and its outputs likewise.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
struct GroupScratch {
    input: Vec<f32>,
    weights: Vec<f32>,
    bias: [f32; GROUP],
    out: Vec<f32>,
}

/// `out[p] = bias + Σ_t weights[t] · input[base(p) + offset_t]`, [`GROUP`] lanes at a time, for
/// every output position `p` (row-major), `base` its top-left tap in the `wp`-wide padded input.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
#[cfg_attr(feature = "simd", macerator::with_simd)]
fn accumulate_grouped<#[cfg(feature = "simd")] S: macerator::Simd>(
    out: &mut [f32],
    input: &[f32],
    weights: &[f32],
    bias: &[f32; GROUP],
    offsets: &[usize],
    g: &Geometry,
    wp: usize,
) {
    let [sh, sw] = g.stride;
    for oh in 0..g.out_h {
        for ow in 0..g.out_w {
            let base = oh * sh * wp + ow * sw;
            let mut acc = *bias;
            for (t, &offset) in offsets.iter().enumerate() {
                let src = &input[(base + offset) * GROUP..][..GROUP];
                let wt = &weights[t * GROUP..][..GROUP];
                for l in 0..GROUP {
                    acc[l] = num_traits::Float::mul_add(src[l], wt[l], acc[l]);
                }
            }
            out[(oh * g.out_w + ow) * GROUP..][..GROUP].copy_from_slice(&acc);
        }
    }
}

/// Transposes sixteen registers: lane `j` of register `i` goes to lane `i` of register `j`.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
#[target_feature(enable = "avx512f")]
fn transpose16(r: &mut [core::arch::x86_64::__m512; 16]) {
    use core::arch::x86_64::*;
    let lo = |a, b| _mm512_unpacklo_ps(a, b);
    let hi = |a, b| _mm512_unpackhi_ps(a, b);
    let lo2 = |a: __m512, b: __m512| {
        _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)))
    };
    let hi2 = |a: __m512, b: __m512| {
        _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)))
    };
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = lo(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = hi(r[2 * i], r[2 * i + 1]);
    }
    for q in 0..4 {
        let b = 4 * q;
        r[b] = lo2(t[b], t[b + 2]);
        r[b + 1] = hi2(t[b], t[b + 2]);
        r[b + 2] = lo2(t[b + 1], t[b + 3]);
        r[b + 3] = hi2(t[b + 1], t[b + 3]);
    }
    for h in 0..2 {
        let b = 8 * h;
        for i in 0..4 {
            t[b + i] = _mm512_shuffle_f32x4::<0x88>(r[b + i], r[b + i + 4]);
            t[b + i + 4] = _mm512_shuffle_f32x4::<0xdd>(r[b + i], r[b + i + 4]);
        }
    }
    for i in 0..8 {
        r[i] = _mm512_shuffle_f32x4::<0x88>(t[i], t[i + 8]);
        r[i + 8] = _mm512_shuffle_f32x4::<0xdd>(t[i], t[i + 8]);
    }
}

/// `dst[j·GROUP + l] = planes[l·plane + at + j]` for `j < len` and `l < lanes` (lanes past
/// `lanes` get zeros): `len` consecutive positions of `lanes` planes, interleaved.
///
/// # Safety
/// The CPU must have AVX-512F; `dst` holds `len · GROUP` floats and every plane `len` from `at`.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
#[target_feature(enable = "avx512f")]
unsafe fn interleave_avx512(
    planes: &[f32],
    plane: usize,
    at: usize,
    len: usize,
    lanes: usize,
    dst: &mut [f32],
) {
    use core::arch::x86_64::*;
    assert!(dst.len() >= len * GROUP && lanes <= GROUP && planes.len() >= lanes * plane);
    assert!(lanes == 0 || at + len <= plane);
    for j0 in (0..len).step_by(GROUP) {
        let n = (len - j0).min(GROUP);
        let mask = first_lanes(n);
        let mut r = [_mm512_setzero_ps(); GROUP];
        for (l, reg) in r.iter_mut().enumerate().take(lanes) {
            // SAFETY: positions at + j0 .. at + j0 + n of plane l are inside `planes`.
            *reg = unsafe { _mm512_maskz_loadu_ps(mask, planes.as_ptr().add(l * plane + at + j0)) };
        }
        transpose16(&mut r);
        for (j, reg) in r.iter().enumerate().take(n) {
            // SAFETY: (j0 + j)·GROUP + GROUP ≤ len·GROUP ≤ dst.len().
            unsafe { _mm512_storeu_ps(dst.as_mut_ptr().add((j0 + j) * GROUP), *reg) };
        }
    }
}

/// `out[l·plane + p] = src[p·GROUP + l]` for every position `p < plane` and lane `l < lanes`:
/// the interleaved outputs back into planes. `src` holds whole blocks of `GROUP` positions.
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
#[target_feature(enable = "avx512f")]
unsafe fn deinterleave_avx512_planes(src: &[f32], plane: usize, lanes: usize, out: &mut [f32]) {
    use core::arch::x86_64::*;
    assert!(src.len() >= plane.next_multiple_of(GROUP) * GROUP && out.len() >= lanes * plane);
    for p0 in (0..plane).step_by(GROUP) {
        let n = (plane - p0).min(GROUP);
        let mask = first_lanes(n);
        let mut r = [_mm512_setzero_ps(); GROUP];
        for (j, reg) in r.iter_mut().enumerate() {
            // SAFETY: (p0 + j + 1)·GROUP ≤ src.len(): src holds whole blocks.
            *reg = unsafe { _mm512_loadu_ps(src.as_ptr().add((p0 + j) * GROUP)) };
        }
        transpose16(&mut r);
        for (l, reg) in r.iter().enumerate().take(lanes) {
            // SAFETY: positions p0 .. p0 + n of plane l are inside `out`.
            unsafe { _mm512_mask_storeu_ps(out.as_mut_ptr().add(l * plane + p0), mask, *reg) };
        }
    }
}

/// One channel plane of the forward convolution, with the scratch its [`Layout`] needs: the
/// zero-padded phase planes, the flat output rows and the taps (a thread's, reused plane after
/// plane of one geometry).
pub(super) struct PlaneFilter {
    g: Geometry,
    layout: Layout,
    input: Vec<f32>,
    flat: Vec<f32>,
    taps: Vec<(usize, f32)>,
}

impl PlaneFilter {
    pub(super) fn new(g: &Geometry) -> Self {
        let layout = Layout::new(g);
        Self {
            g: *g,
            input: vec![0.0; layout.scratch_len],
            flat: vec![0.0; layout.forward_len],
            taps: Vec::with_capacity(g.kernel[0] * g.kernel[1]),
            layout,
        }
    }

    /// `out = conv(x_plane, filter) + bias` (`out_h · out_w`, every element written) for an
    /// input plane of `in_h · in_w`, in the geometry the filter was made for.
    pub(super) fn run(
        &mut self,
        x_plane: &[f32],
        filter: &[f32],
        bias: f32,
        out: &mut [MaybeUninit<f32>],
    ) {
        let (g, layout) = (&self.g, &self.layout);
        fill_phases(&mut self.input, x_plane, g, layout);
        layout.forward_taps(filter, &mut self.taps);
        accumulate(&mut self.flat, &self.input, &self.taps, bias);
        for (oh, row) in out.chunks_exact_mut(g.out_w).enumerate() {
            write_all(row, &self.flat[oh * layout.wq..][..g.out_w]);
        }
    }
}

/// The input gradient: `dx[b, c] = conv_transpose(grad[b, c], w[c]) + bias[c]`, `grad` of the
/// forward's output shape, `dx` of its input shape.
pub(crate) fn transpose(
    grad: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    batch: usize,
    channels: usize,
    g: &Geometry,
) -> Vec<f32> {
    let in_plane = g.in_h * g.in_w;
    let out_plane = g.out_h * g.out_w;
    let k = g.kernel[0] * g.kernel[1];
    let planes = batch * channels;
    let total = planes * in_plane;
    if total == 0 {
        return Vec::new();
    }
    let layout = Layout::new(g);
    let (wq, hq) = (layout.wq, layout.hq);
    let phase_len = layout.plane.div_ceil(CHUNK) * CHUNK;
    // The output gradient, `wq` wide, starts `reach` zeros into its buffer so that every shift
    // back stays inside; every read of a chunk stays inside the length.
    let lead = layout.reach;
    let grad_len = lead + phase_len;
    let [sh, sw] = g.stride;
    let [ph, pw] = g.padding;
    collect_chunks_with(
        total,
        in_plane,
        || (vec![0.0; grad_len], vec![0.0; layout.phases * phase_len]),
        |(spread, phases), bc, out| {
            let c = bc % channels;
            let src = &grad[bc * out_plane..(bc + 1) * out_plane];
            for (oh, row) in src.chunks_exact(g.out_w).enumerate() {
                copy_row(&mut spread[lead + oh * wq..][..g.out_w], row);
            }
            let filter = &w[c * k..(c + 1) * k];
            let b = bias.map_or(0.0, |b| b[c]);
            for (q, phase) in phases.chunks_exact_mut(phase_len).enumerate() {
                let taps: Vec<(usize, f32)> = layout
                    .taps
                    .iter()
                    .filter(|t| t.phase == q)
                    .map(|t| (lead - t.shift, filter[t.index]))
                    .collect();
                accumulate(phase, spread, &taps, b);
            }
            for (ih, row) in out.chunks_exact_mut(g.in_w).enumerate() {
                let (i, rh) = ((ih + ph) / sh, (ih + ph) % sh);
                // Input column iw is column j of phase rw, with (j, rw) = divmod(iw + pw, sw),
                // counted up rather than divided out for every element.
                let (mut j, mut rw) = (pw / sw, pw % sw);
                for d in row.iter_mut() {
                    d.write(if i < hq && j < wq {
                        phases[(rh * sw + rw) * phase_len + i * wq + j]
                    } else {
                        b
                    });
                    rw += 1;
                    if rw == sw {
                        (j, rw) = (j + 1, 0);
                    }
                }
            }
        },
    )
}

/// The weight gradient: `dw[c, t] = Σ_b Σ_p grad[b, c, p] · x[b, c, p ⊕ t]`, `[channels, kh·kw]`.
pub(crate) fn weight_gradient(
    x: &[f32],
    grad: &[f32],
    batch: usize,
    channels: usize,
    g: &Geometry,
) -> Vec<f32> {
    let in_plane = g.in_h * g.in_w;
    let out_plane = g.out_h * g.out_w;
    let k = g.kernel[0] * g.kernel[1];
    let mut output = vec![0.0f32; channels * k];
    if out_plane == 0 || k == 0 {
        return output;
    }
    let layout = Layout::new(g);
    for_each_chunk_with(
        &mut output,
        k,
        || (vec![0.0; layout.scratch_len], vec![0.0; layout.flat_len]),
        |(input, spread), c, dw| {
            // One vector of lane sums a tap, carried across the batch and reduced once: the
            // planes of the last stages are a chunk or two long, where reducing each image's
            // lanes cost more than the products.
            let mut lanes = vec![0.0f32; k * CHUNK];
            for b in 0..batch {
                let bc = b * channels + c;
                fill_phases(input, &x[bc * in_plane..(bc + 1) * in_plane], g, &layout);
                let src = &grad[bc * out_plane..(bc + 1) * out_plane];
                for (oh, row) in src.chunks_exact(g.out_w).enumerate() {
                    copy_row(&mut spread[oh * layout.wq..][..g.out_w], row);
                }
                for t in &layout.taps {
                    let offset = t.phase * layout.plane + t.shift;
                    dot_lanes(
                        &mut lanes[t.index * CHUNK..(t.index + 1) * CHUNK],
                        spread,
                        &input[offset..offset + layout.flat_len],
                    );
                }
            }
            for (d, tap) in dw.iter_mut().zip(lanes.chunks_exact(CHUNK)) {
                *d = tap.iter().map(|&v| v as f64).sum::<f64>() as f32;
            }
        },
    );
    output
}

/// Writes `src` into the not yet initialised `dst` of the same length.
fn write_all(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    // SAFETY: `MaybeUninit<f32>` has f32's layout, and every bit pattern is one.
    let src = unsafe { &*(src as *const [f32] as *const [MaybeUninit<f32>]) };
    copy_row(dst, src);
}

/// Copies one input plane into the phase planes. Only positions inside the input are written:
/// the padding around them was zeroed when the scratch was made and no plane writes there.
///
/// Compiled for the widest SIMD (the stride-2 deinterleave, from SSE's four lanes to
/// AVX-512's sixteen).
#[cfg_attr(feature = "simd", macerator::with_simd)]
fn fill_phases<#[cfg(feature = "simd")] S: macerator::Simd>(
    scratch: &mut [f32],
    x: &[f32],
    g: &Geometry,
    layout: &Layout,
) {
    let [sh, sw] = g.stride;
    let [ph, pw] = g.padding;
    let (hq, wq) = (layout.hq, layout.wq);
    for rh in 0..sh {
        // Phase rows i whose input row s·i + rh - pad lies inside the input.
        let (i0, i1) = inside(rh, sh, ph, g.in_h, hq);
        for rw in 0..sw {
            let (j0, j1) = inside(rw, sw, pw, g.in_w, wq);
            if j0 >= j1 {
                continue;
            }
            let base = (rh * sw + rw) * layout.plane;
            for i in i0..i1 {
                let src_row = &x[(sh * i + rh - ph) * g.in_w..][..g.in_w];
                let dst = &mut scratch[base + i * wq + j0..base + i * wq + j1];
                let first = sw * j0 + rw - pw;
                if sw == 1 {
                    copy_row(dst, &src_row[first..first + dst.len()]);
                } else if sw == 2 {
                    // Pairs, so that the compiler can deinterleave whole vectors; the last
                    // element may have no partner.
                    let src = &src_row[first..];
                    let pairs = src.chunks_exact(2);
                    let last = pairs.remainder().first().copied();
                    let n = pairs.len();
                    for (d, p) in dst.iter_mut().zip(pairs) {
                        *d = p[0];
                    }
                    if let (Some(v), Some(d)) = (last, dst.get_mut(n)) {
                        *d = v;
                    }
                } else {
                    for (d, v) in dst.iter_mut().zip(src_row[first..].iter().step_by(sw)) {
                        *d = *v;
                    }
                }
            }
        }
    }
}

/// The phase indices `[i0, i1)` (below `len`) whose padded position `s·i + r` is an input
/// position, i.e. `pad ≤ s·i + r < pad + size`.
fn inside(r: usize, s: usize, pad: usize, size: usize, len: usize) -> (usize, usize) {
    let i0 = pad.saturating_sub(r).div_ceil(s);
    let i1 = (pad + size).saturating_sub(r).div_ceil(s).min(len);
    (i0.min(i1), i1)
}

/// `out[p] = bias + Σ w · input[p + offset]` over the taps, a chunk of outputs at a time,
/// then [`LANES`] at a time over what is left (`out`'s length is a whole number of them).
#[cfg_attr(feature = "simd", macerator::with_simd)]
fn accumulate<#[cfg(feature = "simd")] S: macerator::Simd>(
    out: &mut [f32],
    input: &[f32],
    taps: &[(usize, f32)],
    bias: f32,
) {
    let tail_at = out.len() / CHUNK * CHUNK;
    let (chunks, tail) = out.split_at_mut(tail_at);
    accumulate_blocks::<CHUNK>(chunks, input, 0, taps, bias);
    accumulate_blocks::<LANES>(tail, input, tail_at, taps, bias);
}

/// [`accumulate`] over `out` (a whole number of blocks of `W`), whose first element is output
/// `at`: each block's `W` sums in registers. Inlined into `accumulate`, so compiled for its SIMD.
#[inline(always)]
fn accumulate_blocks<const W: usize>(
    out: &mut [f32],
    input: &[f32],
    at: usize,
    taps: &[(usize, f32)],
    bias: f32,
) {
    for (n, out) in out.chunks_exact_mut(W).enumerate() {
        let p = at + n * W;
        let mut acc = [bias; W];
        for &(offset, weight) in taps {
            let src = &input[p + offset..p + offset + W];
            for l in 0..W {
                acc[l] = num_traits::Float::mul_add(src[l], weight, acc[l]);
            }
        }
        out.copy_from_slice(&acc);
    }
}

/// `lanes[l] += Σ_n a[n·CHUNK + l] · b[n·CHUNK + l]`: a dot product of equal lengths (a whole
/// number of chunks) left in its `CHUNK` lane sums, for the caller to reduce once.
#[cfg_attr(feature = "simd", macerator::with_simd)]
fn dot_lanes<#[cfg(feature = "simd")] S: macerator::Simd>(lanes: &mut [f32], a: &[f32], b: &[f32]) {
    let mut acc: [f32; CHUNK] = lanes.try_into().expect("one chunk of lanes");
    for (x, y) in a.chunks_exact(CHUNK).zip(b.chunks_exact(CHUNK)) {
        for l in 0..CHUNK {
            acc[l] = num_traits::Float::mul_add(x[l], y[l], acc[l]);
        }
    }
    lanes.copy_from_slice(&acc);
}
