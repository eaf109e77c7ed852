//! The transforms of Winograd's F(4×4, 3×3) (Lavin and Gray, CVPR 2016), added by lookalike:
//! each 4×4 block of output from a 6×6 input tile (tiles four apart, overlapping by two) with
//! 36 products a channel pair instead of 144, a quarter of the direct convolution's
//! multiplications against F(2×2, 3×3)'s 4/9. [`super::winograd::forward`] runs the GEMMs
//! and the band and thread layout for both; this file holds F(4×4, 3×3)'s three transforms,
//! with the matrices of the paper (interpolation points 0, ±1, ±2 and ∞):
//!
//! ```text
//!       [4  0 -5  0  1  0]        [ 1/4     0     0 ]       [1  1  1  1  1  0]
//!       [0 -4 -4  1  1  0]        [-1/6  -1/6  -1/6 ]       [0  1 -1  2 -2  0]
//! Bᵀ =  [0  4 -4 -1  1  0]   G =  [-1/6   1/6  -1/6 ]  Aᵀ = [0  1  1  4  4  0]
//!       [0 -2 -1  2  1  0]        [1/24  1/12   1/6 ]       [0  1 -1  8 -8  1]
//!       [0  2 -1 -2  1  0]        [1/24 -1/12   1/6 ]
//!       [0  4  0 -5  0  1]        [   0     0     1 ]
//! ```
//!
//! `U = G·g·Gᵀ` (36 matrices `[cout, cin]`), `V = Bᵀ·d·B` (36 of `[cin, tiles]`), and each
//! tile's output `Aᵀ·M·A`. The transforms scale by up to 8 and 1/24 where F(2×2, 3×3)'s only
//! add and halve, so rounding grows, still within the kernel tests' 1e-4 of the largest output.

use alloc::vec::Vec;
use core::mem::MaybeUninit;

use super::depthwise::Geometry;
use super::planes::each_with;
use super::winograd::{Planes, Shared, Weight, filter_taps, gather, lines_mut, scatter};

/// Products a channel pair a tile (6 × 6).
pub(crate) const PRODUCTS: usize = 36;

/// `U[ξ]` (`[36, outs, ins]`) of the weight `w`, read as `way` says.
pub(crate) fn transform_weight(
    w: &[f32],
    outs: usize,
    ins: usize,
    way: Weight,
    parallel: bool,
) -> Vec<f32> {
    let plane = outs * ins;
    let mut u: Vec<f32> = Vec::with_capacity(PRODUCTS * plane);
    let dst = Shared(u.as_mut_ptr());
    // A thread's scratch: output channel o's nine taps, tap-major (`[9, ins]`), then G·g
    // (`[6, 3, ins]`).
    let scratch = || (alloc::vec![0.0f32; 9 * ins], alloc::vec![0.0f32; 18 * ins]);
    each_with(parallel, outs, scratch, |(taps, t), o| {
        filter_taps(w, o, outs, ins, way, taps);
        // SAFETY: u has 36·plane floats of capacity; row (ξ, o) is written by the task of
        // output channel o alone.
        let rows: [&mut [MaybeUninit<f32>]; PRODUCTS] =
            core::array::from_fn(|xi| unsafe { dst.row(xi * plane + o * ins, ins) });
        weight_channel(taps, t, rows);
    });
    // SAFETY: every (ξ, o, i) was written above.
    unsafe { u.set_len(PRODUCTS * plane) };
    u
}

/// `G·g·Gᵀ` of one output channel's filters (taps `[9, ins]`) into its 36 rows of `U`, each
/// step along the input channels; `t` is scratch for `G·g` (`[6, 3, ins]`).
#[cfg_attr(feature = "simd", macerator::with_simd)]
fn weight_channel<#[cfg(feature = "simd")] S: macerator::Simd>(
    taps: &[f32],
    t: &mut [f32],
    rows: [&mut [MaybeUninit<f32>]; PRODUCTS],
) {
    let ins = rows[0].len();
    // G· down each column c of the filter: t[r][c] = (G·g)[r][c].
    for c in 0..3 {
        let [g0, g1, g2] = [0, 1, 2].map(|r| &taps[(r * 3 + c) * ins..][..ins]);
        for r in 0..6 {
            let out = &mut t[(r * 3 + c) * ins..][..ins];
            g_row(r, [g0, g1, g2], out);
        }
    }
    // ·Gᵀ along each row r of G·g: U[6r + c] = (G·row)[c].
    let mut rows = rows.into_iter();
    for r in 0..6 {
        let [x0, x1, x2] = [0, 1, 2].map(|c| &t[(r * 3 + c) * ins..][..ins]);
        for c in 0..6 {
            let out = rows.next().expect("36 rows");
            let out = &mut out[..ins];
            // SAFETY: MaybeUninit<f32> has f32's layout; every element is written below.
            let out = unsafe { &mut *(out as *mut [MaybeUninit<f32>] as *mut [f32]) };
            g_row(c, [x0, x1, x2], out);
        }
    }
}

/// Row `r` of `G·[x0, x1, x2]`, element by element, into `out`.
#[inline(always)]
fn g_row(r: usize, x: [&[f32]; 3], out: &mut [f32]) {
    let n = out.len();
    let [x0, x1, x2] = x.map(|x| &x[..n]);
    match r {
        0 => (0..n).for_each(|k| out[k] = 0.25 * x0[k]),
        1 => (0..n).for_each(|k| out[k] = -(x0[k] + x1[k] + x2[k]) * (1.0 / 6.0)),
        2 => (0..n).for_each(|k| out[k] = -(x0[k] - x1[k] + x2[k]) * (1.0 / 6.0)),
        3 => (0..n).for_each(|k| {
            out[k] = x0[k] * (1.0 / 24.0) + x1[k] * (1.0 / 12.0) + x2[k] * (1.0 / 6.0)
        }),
        4 => (0..n).for_each(|k| {
            out[k] = x0[k] * (1.0 / 24.0) - x1[k] * (1.0 / 12.0) + x2[k] * (1.0 / 6.0)
        }),
        _ => out.copy_from_slice(x2),
    }
}

/// F(4×4, 3×3)'s `Bᵀ` over six lines.
#[inline(always)]
fn bt6(d: [&[f32]; 6], out: [&mut [MaybeUninit<f32>]; 6]) {
    let n = out[0].len();
    let [d0, d1, d2, d3, d4, d5] = d.map(|x| &x[..n]);
    let [o0, o1, o2, o3, o4, o5] = out.map(|o| &mut o[..n]);
    for k in 0..n {
        o0[k].write(4.0 * d0[k] - 5.0 * d2[k] + d4[k]);
        o1[k].write(d3[k] + d4[k] - 4.0 * (d1[k] + d2[k]));
        o2[k].write(d4[k] - d3[k] + 4.0 * (d1[k] - d2[k]));
        o3[k].write(d4[k] - d2[k] + 2.0 * (d3[k] - d1[k]));
        o4[k].write(d4[k] - d2[k] - 2.0 * (d3[k] - d1[k]));
        o5[k].write(4.0 * d1[k] - 5.0 * d3[k] + d5[k]);
    }
}

/// F(4×4, 3×3)'s `Aᵀ` over six lines, plus `bias`.
#[inline(always)]
fn at6(m: [&[f32]; 6], out: [&mut [MaybeUninit<f32>]; 4], bias: f32) {
    let n = out[0].len();
    let [m0, m1, m2, m3, m4, m5] = m.map(|x| &x[..n]);
    let [o0, o1, o2, o3] = out.map(|o| &mut o[..n]);
    for k in 0..n {
        let (plus12, minus12) = (m1[k] + m2[k], m1[k] - m2[k]);
        let (plus34, minus34) = (m3[k] + m4[k], m3[k] - m4[k]);
        o0[k].write(m0[k] + plus12 + plus34 + bias);
        o1[k].write(minus12 + 2.0 * minus34 + bias);
        o2[k].write(plus12 + 4.0 * plus34 + bias);
        o3[k].write(minus12 + 8.0 * minus34 + m5[k] + bias);
    }
}

/// `V[ξ]` of one input plane into `v` (`[36, ins, stride / ins]`: this channel's row of each
/// `ξ` at `channel_row`), columns `column..` from the tiles of tile rows `rows` (`tiles_w` a
/// row). One call a plane and band, compiled for the widest SIMD the CPU has: the band split
/// into sub-planes ([`gather`]), then `Bᵀ·` down each tile column and `·B` along each tile row,
/// each along the whole band, the second straight into `V`.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(feature = "simd", macerator::with_simd)]
pub(crate) fn transform_input<#[cfg(feature = "simd")] S: macerator::Simd>(
    plane: &[f32],
    g: &Geometry,
    rows: core::ops::Range<usize>,
    tiles_w: usize,
    v: Shared,
    stride: usize,
    channel_row: usize,
    column: usize,
    planes: &mut Planes,
) {
    let (tw, nb) = (tiles_w, rows.len() * tiles_w);
    let span = gather::<4>(plane, g, rows.start, rows.len(), tw, planes);
    let Planes { sub, mid, .. } = planes;
    // Bᵀ· down each column s of the tiles: mid[6s + i] is row i.
    for s in 0..6 {
        let d = |r: usize| &sub[(s * 4 + r % 4) * span + r / 4 * tw..][..nb];
        let (_, out) = mid.split_at_mut(6 * s * nb);
        bt6([d(0), d(1), d(2), d(3), d(4), d(5)], lines_mut(out, nb));
    }
    // ·B along each row i, straight into V[6i + c].
    for i in 0..6 {
        let d = |s: usize| &mid[(6 * s + i) * nb..][..nb];
        // SAFETY: the caller's v holds [36, ins, stride / ins]; this channel's row of each ξ,
        // columns [column, column + nb), is written by this call alone.
        let out = [0, 1, 2, 3, 4, 5]
            .map(|c| unsafe { v.row((6 * i + c) * stride + channel_row + column, nb) });
        bt6([d(0), d(1), d(2), d(3), d(4), d(5)], out);
    }
}

/// The output of tile rows `rows` of one output plane from `M[ξ]` (`[36, outs, stride /
/// outs]`, this channel's row at `channel_row`, columns from `column`), plus `bias`, into
/// `out` (the plane): `Aᵀ·` down each tile column and `·A` along each tile row, each along the
/// whole band, then the band's rows written out, the columns and rows past the plane dropped.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(feature = "simd", macerator::with_simd)]
pub(crate) fn transform_output<#[cfg(feature = "simd")] S: macerator::Simd>(
    m: &[f32],
    stride: usize,
    channel_row: usize,
    column: usize,
    g: &Geometry,
    rows: core::ops::Range<usize>,
    tiles_w: usize,
    bias: f32,
    out: Shared,
    planes: &mut Planes,
) {
    let nb = rows.len() * tiles_w;
    let at = |xi: usize| &m[xi * stride + channel_row + column..][..nb];
    let Planes { sub, mid, row, .. } = planes;
    // Aᵀ· down each column c: mid[4c + a] is output row a of it.
    for c in 0..6 {
        let (_, out) = mid.split_at_mut(4 * c * nb);
        let m = [0, 1, 2, 3, 4, 5].map(|r| at(6 * r + c));
        at6(m, lines_mut(out, nb), 0.0);
    }
    // ·A along each row a, with the bias: sub[4a + b] is the output at (a, b) of every tile.
    for a in 0..4 {
        let y = |c: usize| &mid[(4 * c + a) * nb..][..nb];
        let (_, out) = sub.split_at_mut(4 * a * nb);
        at6(
            [y(0), y(1), y(2), y(3), y(4), y(5)],
            lines_mut(out, nb),
            bias,
        );
    }
    scatter::<4>(sub, g, rows.start, rows.len(), tiles_w, out, row);
}
