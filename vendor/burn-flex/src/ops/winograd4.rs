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
use super::winograd::{Shared, Weight, filter_taps};

/// Products a channel pair a tile (6 × 6).
pub(crate) const PRODUCTS: usize = 36;

/// A thread's scratch for a band of tile rows: the input's six rows of one tile row split by
/// column modulo 4 (`tiles_w + 1` long), and the band's 36 intermediate lines (`rows ·
/// tiles_w`, at least `tiles_w + 1`).
pub(crate) struct Lines {
    phases: [[Vec<f32>; 4]; 6],
    sums: [Vec<f32>; 36],
}

impl Lines {
    /// Scratch for bands of at most `rows` tile rows of `tiles_w` tiles.
    pub(crate) fn new(tiles_w: usize, rows: usize) -> Self {
        let band = (rows * tiles_w).max(tiles_w + 1);
        Self {
            phases: core::array::from_fn(|_| {
                core::array::from_fn(|_| alloc::vec![0.0; tiles_w + 1])
            }),
            sums: core::array::from_fn(|_| alloc::vec![0.0; band]),
        }
    }
}

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

/// `V[ξ]` of one input plane into `v` (`[36, ins, stride / ins]`: this channel's row of each
/// `ξ` at `channel_row`), columns `column..` from the tiles of tile rows `rows` (`tiles_w` a
/// row). One call a plane and band, compiled for the widest SIMD the CPU has: `·B` along each
/// tile row into the band's lines, then `Bᵀ·` along the whole band.
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
    lines: &mut Lines,
) {
    let tw = tiles_w;
    let nb = rows.len() * tw;
    let Lines { phases, sums } = lines;
    let pad = g.padding[1];
    // Columns k in [lo, hi) have x = 4k .. 4k + 3 all inside the row.
    let hi = (tw + 1).min((g.in_w + pad) / 4);
    let lo = pad.div_ceil(4).min(hi);
    for (j, by) in rows.enumerate() {
        // Input row 4·by + r - pad_h, its columns x - pad_w for x in 0..4·tw + 4, zero in the
        // padding, split by x modulo 4.
        for (r, phase) in phases.iter_mut().enumerate() {
            let iy = (4 * by + r) as isize - g.padding[0] as isize;
            if iy < 0 || iy >= g.in_h as isize {
                phase.iter_mut().for_each(|p| p[..=tw].fill(0.0));
                continue;
            }
            let row = &plane[iy as usize * g.in_w..(iy as usize + 1) * g.in_w];
            let at = |x: usize| {
                let ix = x as isize - pad as isize;
                if ix >= 0 && (ix as usize) < g.in_w {
                    row[ix as usize]
                } else {
                    0.0
                }
            };
            let [p0, p1, p2, p3] = phase;
            for k in (0..lo).chain(hi..=tw) {
                p0[k] = at(4 * k);
                p1[k] = at(4 * k + 1);
                p2[k] = at(4 * k + 2);
                p3[k] = at(4 * k + 3);
            }
            let inside = &row[4 * lo - pad..4 * hi - pad];
            for (k, quad) in inside.chunks_exact(4).enumerate() {
                p0[lo + k] = quad[0];
                p1[lo + k] = quad[1];
                p2[lo + k] = quad[2];
                p3[lo + k] = quad[3];
            }
        }
        // ·B along each row: tile k of row r reads d0..d5 = p0[k], p1[k], p2[k], p3[k],
        // p0[k + 1], p1[k + 1]; sums[6r + c] holds column c of the result, tile row j at j·tw.
        let at = j * tw;
        for (r, phase) in phases.iter().enumerate() {
            let d0 = &phase[0][..tw];
            let d1 = &phase[1][..tw];
            let d2 = &phase[2][..tw];
            let d3 = &phase[3][..tw];
            let d4 = &phase[0][1..=tw];
            let d5 = &phase[1][1..=tw];
            let s = &mut sums[6 * r..6 * r + 6];
            let [s0, s1, s2, s3, s4, s5] = s else {
                unreachable!()
            };
            let (s0, s1, s2) = (
                &mut s0[at..at + tw],
                &mut s1[at..at + tw],
                &mut s2[at..at + tw],
            );
            let (s3, s4, s5) = (
                &mut s3[at..at + tw],
                &mut s4[at..at + tw],
                &mut s5[at..at + tw],
            );
            for k in 0..tw {
                s0[k] = 4.0 * d0[k] - 5.0 * d2[k] + d4[k];
                s1[k] = d3[k] + d4[k] - 4.0 * (d1[k] + d2[k]);
                s2[k] = d4[k] - d3[k] + 4.0 * (d1[k] - d2[k]);
                s3[k] = d4[k] - d2[k] + 2.0 * (d3[k] - d1[k]);
                s4[k] = d4[k] - d2[k] - 2.0 * (d3[k] - d1[k]);
                s5[k] = 4.0 * d1[k] - 5.0 * d3[k] + d5[k];
            }
        }
    }
    // Bᵀ· down each column, along the whole band, straight into V.
    for c in 0..6 {
        let [t0, t1, t2, t3, t4, t5] = [0, 1, 2, 3, 4, 5].map(|r| &sums[6 * r + c][..nb]);
        // SAFETY: the caller's v holds [36, ins, stride / ins]; this channel's row of each ξ,
        // columns [column, column + nb), is written by this call alone.
        let [v0, v1, v2, v3, v4, v5] = [0, 1, 2, 3, 4, 5]
            .map(|r| unsafe { v.row((6 * r + c) * stride + channel_row + column, nb) });
        for k in 0..nb {
            v0[k].write(4.0 * t0[k] - 5.0 * t2[k] + t4[k]);
            v1[k].write(t3[k] + t4[k] - 4.0 * (t1[k] + t2[k]));
            v2[k].write(t4[k] - t3[k] + 4.0 * (t1[k] - t2[k]));
            v3[k].write(t4[k] - t2[k] + 2.0 * (t3[k] - t1[k]));
            v4[k].write(t4[k] - t2[k] - 2.0 * (t3[k] - t1[k]));
            v5[k].write(4.0 * t1[k] - 5.0 * t3[k] + t5[k]);
        }
    }
}

/// The output of tile rows `rows` of one output plane from `M[ξ]` (`[36, outs, stride /
/// outs]`, this channel's row at `channel_row`, columns from `column`), plus `bias`, into
/// `out` (the plane): `Aᵀ·` along the whole band, then `·A` along each output row, the columns
/// and rows past the plane dropped.
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
    lines: &mut Lines,
) {
    let tw = tiles_w;
    let nb = rows.len() * tw;
    let at = |xi: usize| &m[xi * stride + channel_row + column..][..nb];
    // Aᵀ· down each column c: sums[6i + c] is row i of column c.
    for c in 0..6 {
        let [m0, m1, m2, m3, m4, m5] = [0, 1, 2, 3, 4, 5].map(|r| at(6 * r + c));
        let [o0, o1, o2, o3] = lines
            .sums
            .get_disjoint_mut([c, 6 + c, 12 + c, 18 + c])
            .expect("four distinct lines of 36");
        let (o0, o1, o2, o3) = (&mut o0[..nb], &mut o1[..nb], &mut o2[..nb], &mut o3[..nb]);
        for k in 0..nb {
            let (plus12, minus12) = (m1[k] + m2[k], m1[k] - m2[k]);
            let (plus34, minus34) = (m3[k] + m4[k], m3[k] - m4[k]);
            o0[k] = m0[k] + plus12 + plus34;
            o1[k] = minus12 + 2.0 * minus34;
            o2[k] = plus12 + 4.0 * plus34;
            o3[k] = minus12 + 8.0 * minus34 + m5[k];
        }
    }
    // ·A along each row, four outputs a tile, with the bias.
    let quads = g.out_w / 4;
    let rest = g.out_w % 4;
    for (j, by) in rows.enumerate() {
        for i in 0..4 {
            let oy = 4 * by + i;
            if oy >= g.out_h {
                continue;
            }
            let [s0, s1, s2, s3, s4, s5] =
                [0, 1, 2, 3, 4, 5].map(|c| &lines.sums[6 * i + c][j * tw..][..tw]);
            // SAFETY: out is this output plane ([out_h, out_w]); row oy is written by this call
            // alone.
            let line = unsafe { out.row(oy * g.out_w, g.out_w) };
            let four = |k: usize| {
                let (plus12, minus12) = (s1[k] + s2[k], s1[k] - s2[k]);
                let (plus34, minus34) = (s3[k] + s4[k], s3[k] - s4[k]);
                [
                    s0[k] + plus12 + plus34 + bias,
                    minus12 + 2.0 * minus34 + bias,
                    plus12 + 4.0 * plus34 + bias,
                    minus12 + 8.0 * minus34 + s5[k] + bias,
                ]
            };
            for (k, quad) in line.chunks_exact_mut(4).enumerate() {
                let values = four(k);
                for (o, value) in quad.iter_mut().zip(values) {
                    o.write(value);
                }
            }
            if rest > 0 {
                let values = four(quads);
                for (o, value) in line[4 * quads..].iter_mut().zip(values) {
                    o.write(value);
                }
            }
        }
    }
}
