//! 3×3 convolutions at stride 1 by Winograd's minimal filtering F(2×2, 3×3) (Lavin and Gray,
//! "Fast Algorithms for Convolutional Neural Networks", CVPR 2016), added by lookalike: each
//! 2×2 block of output from a 4×4 block of input with 16 products a channel pair instead of 36,
//! so the matrix products do 4/9 of the direct convolution's work. ResNet's 3×3 layers are most
//! of its work; the forward pass and the input gradient (a 3×3 convolution at stride 1 itself)
//! come here, and the weight gradient by F(3×3, 2×2) ([`weight_gradient`]).
//!
//! With `G` (4×3), `Bᵀ` (4×4) and `Aᵀ` (2×4) the transforms of the paper:
//!
//! - the weight of every `(cout, cin)` pair becomes `U = G·g·Gᵀ` (4×4), kept as 16 matrices
//!   `U[ξ]` of `[cout, cin]`;
//! - every 4×4 input block `d` (blocks two apart, overlapping by two) becomes `V = Bᵀ·d·B`, kept
//!   as 16 matrices `V[ξ]` of `[cin, blocks]`;
//! - 16 GEMMs `M[ξ] = U[ξ]·V[ξ]` (`[cout, blocks]`), the bulk of the work;
//! - every block's output is `Aᵀ·M·A` (2×2), written with the bias, then the epilogue
//!   (`fused.rs`) runs over each plane.
//!
//! Blocks that hang over the input read zeros (the padding), and the output's last row and
//! column are dropped where its size is odd. The transforms only add and halve, so the results
//! differ from the direct convolution's by rounding: within the kernel tests' 1e-4 of the
//! largest output (`crates/model/tests/cpu_kernels.rs`).
//!
//! The weight transform is paid on every call (a kernel has nowhere to keep it), so a call
//! needs enough output positions to earn it back ([`applies`]).

use alloc::vec::Vec;
use core::mem::MaybeUninit;

use super::dense::{for_each_task, gemm, threads};
use super::depthwise::Geometry;
use super::fused::Epilogue;
use super::planes::{each, each_with, sum_of};
use super::winograd4;

/// Fewest channels in and out: below them the GEMMs are too thin to gain from the transforms.
const MIN_CHANNELS: usize = 16;

/// Fewest multiply-adds a channel pair the transforms must save over the batch (the direct
/// convolution's nine an output position, less the products of the blocks that cover the
/// plane): the weights' transform and the transformed weights' trip through memory cost about
/// that much. Measured on ResNet-18's embedding (`speed --models resnet18 --only forward`): a
/// lone image's 256-channel layers at 14 × 14 save 980 and gain (64–66 against 69–70 images/s
/// through here), four images' 512-channel layers at 7 × 7 save 740 and lose (80–82 against
/// 77–78), five images' (925) are level.
const MIN_SAVED: usize = 900;

/// Fewest blocks a GEMM should get: below it, several images share one.
const MIN_BLOCKS: usize = 256;

/// Most floats a task's two transformed buffers (`V` and `M`) hold together (8 MiB, as
/// `dense.rs`'s column buffer holds): larger images are taken in bands of block rows that fit.
const BUFFER_FLOATS: usize = 1 << 21;

/// Most floats each thread's own sums `M[ξ]` may take (16 × 256 × 256, 4 MiB) for the weight
/// gradient to run in cache-sized chunks ([`weight_gradient_in_chunks`]); wider layers share one
/// `M` between the threads ([`weight_gradient_in_bands`]).
const OWN_SUMS_FLOATS: usize = 1 << 20;

/// Most floats a chunk's transformed input and output gradient take together (1 MiB), so that
/// both are still in the core's cache when its GEMMs read them.
const CHUNK_FLOATS: usize = 1 << 18;

/// Whether a convolution of `batch` images of `geometry` goes through here: a 3×3 filter,
/// stride 1, no dilation, at least `MIN_CHANNELS` channels in and out, and `MIN_SAVED`
/// multiply-adds a channel pair saved.
pub(crate) fn applies(g: &Geometry, batch: usize, channels_in: usize, channels_out: usize) -> bool {
    g.kernel == [3, 3]
        && g.stride == [1, 1]
        && g.dilation == [1, 1]
        && channels_in >= MIN_CHANNELS
        && channels_out >= MIN_CHANNELS
        && {
            let tile = Tile::of(g.out_h, g.out_w, channels_in, channels_out);
            let direct = 9 * g.out_h * g.out_w;
            let products = tile.plane_products(g.out_h, g.out_w);
            batch * direct.saturating_sub(products) >= MIN_SAVED
        }
}

/// The input gradient of a 3×3 convolution at stride 1 of `geometry`, as a convolution of its
/// own: of the output gradient with the flipped, transposed weight ([`Weight::Transposed`]), at
/// stride 1, with the padding `2 - p` before each axis where the forward had `p` (and likewise
/// after it). `None` where either would be negative: the forward padded an axis by more than 2.
pub(crate) fn transposed(g: &Geometry) -> Option<Geometry> {
    let before = |axis: usize| 2usize.checked_sub(g.padding[axis]);
    // The forward's padding after the axis, `out + 2 - in - before`, must be at most 2 too.
    let after_ok = |axis: usize, input: usize, output: usize| {
        (output + 2)
            .checked_sub(input + g.padding[axis])
            .is_some_and(|after| after <= 2)
    };
    if !(after_ok(0, g.in_h, g.out_h) && after_ok(1, g.in_w, g.out_w)) {
        return None;
    }
    Some(Geometry {
        in_h: g.out_h,
        in_w: g.out_w,
        out_h: g.in_h,
        out_w: g.in_w,
        kernel: [3, 3],
        stride: [1, 1],
        padding: [before(0)?, before(1)?],
        dilation: [1, 1],
    })
}

/// Which way a weight `[cout, cin, 3, 3]` is read: as it lies (the forward pass), or flipped
/// and with its channel axes swapped (the input gradient: `[cin, cout, 3, 3]`, taps reversed).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Weight {
    Forward,
    Transposed,
}

/// Which minimal filtering a convolution goes by: F(2×2, 3×3) (16 products a channel pair for
/// a 2×2 block) or F(4×4, 3×3) (36 for a 4×4 block, [`winograd4`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tile {
    F2,
    F4,
}

impl Tile {
    /// The side of a block of output.
    fn side(self) -> usize {
        match self {
            Tile::F2 => 2,
            Tile::F4 => 4,
        }
    }

    /// Products a channel pair a block: the number of GEMMs.
    fn products(self) -> usize {
        match self {
            Tile::F2 => 16,
            Tile::F4 => winograd4::PRODUCTS,
        }
    }

    /// Products a channel pair over an `out_h × out_w` plane, blocks hanging over its edge
    /// counted whole.
    fn plane_products(self, out_h: usize, out_w: usize) -> usize {
        out_h.div_ceil(self.side()) * out_w.div_ceil(self.side()) * self.products()
    }

    /// The tiling of a convolution of `ins` to `outs` channels onto an `out_h × out_w` plane:
    /// F(4×4, 3×3) where it needs fewer products over the plane (blocks hanging over its edge
    /// count whole: from 7 × 7 up, not where the plane is two or six wide) and its 36
    /// transformed weight matrices fit the transformed buffers' budget; else F(2×2, 3×3).
    /// ResNet-18's 512-channel weights would take 36 MiB (16 by F(2×2, 3×3)), made while a
    /// training step's activations are held, and its peak would grow.
    fn of(out_h: usize, out_w: usize, ins: usize, outs: usize) -> Self {
        let fits = winograd4::PRODUCTS * outs * ins <= BUFFER_FLOATS;
        if fits && Tile::F4.plane_products(out_h, out_w) < Tile::F2.plane_products(out_h, out_w) {
            Tile::F4
        } else {
            Tile::F2
        }
    }

    /// A thread's scratch for bands of at most `rows` block rows of `blocks_w` blocks.
    fn scratch(self, blocks_w: usize, rows: usize) -> Planes {
        Planes::new(self.side(), blocks_w, rows)
    }
}

/// A pointer handed to the threads, each of which writes its own disjoint part.
#[derive(Clone, Copy)]
pub(crate) struct Shared(pub(crate) *mut f32);
// SAFETY: every use writes disjoint elements from each thread (see the callers).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The element `n` places on (a method, so that closures capture the whole `Shared`).
    ///
    /// # Safety
    /// As for `pointer::add`.
    pub(crate) unsafe fn at(self, n: usize) -> *mut f32 {
        // SAFETY: the caller's.
        unsafe { self.0.add(n) }
    }

    /// The `len` elements from `start` on, to write into.
    ///
    /// # Safety
    /// They lie inside the allocation, and no other thread touches them while the slice lives.
    pub(crate) unsafe fn row<'a>(self, start: usize, len: usize) -> &'a mut [MaybeUninit<f32>] {
        // SAFETY: the caller's.
        unsafe { core::slice::from_raw_parts_mut(self.at(start).cast::<MaybeUninit<f32>>(), len) }
    }
}

/// The nine taps of output channel `o`'s filters, tap-major (`taps` is `[9, ins]`), from `w`
/// read as `way` says: the first step of both tilings' weight transforms.
pub(crate) fn filter_taps(
    w: &[f32],
    o: usize,
    outs: usize,
    ins: usize,
    way: Weight,
    taps: &mut [f32],
) {
    for i in 0..ins {
        for tap in 0..9 {
            taps[tap * ins + i] = match way {
                Weight::Forward => w[(o * ins + i) * 9 + tap],
                Weight::Transposed => w[(i * outs + o) * 9 + 8 - tap],
            };
        }
    }
}

/// `f(i, item)` for every item, on every core where `parallel` and rayon is on.
fn each_mut<S: Send>(parallel: bool, items: &mut [S], f: impl Fn(usize, &mut S) + Sync + Send) {
    #[cfg(feature = "rayon")]
    if parallel {
        use rayon::prelude::*;
        items.par_iter_mut().enumerate().for_each(|(i, s)| f(i, s));
        return;
    }
    let _ = parallel;
    items.iter_mut().enumerate().for_each(|(i, s)| f(i, s));
}

/// `U[ξ]` (`[16, outs, ins]`) of the weight `w`, read as `way` says; `outs` and `ins` are the
/// convolution's output and input channels.
fn transform_weight(w: &[f32], outs: usize, ins: usize, way: Weight, parallel: bool) -> Vec<f32> {
    let plane = outs * ins;
    let mut u: Vec<f32> = Vec::with_capacity(16 * plane);
    let dst = Shared(u.as_mut_ptr());
    // A thread's scratch: the nine taps of output channel o's filters, tap-major (`[9, ins]`),
    // then G·g by column (`[3, 4, ins]`).
    let scratch = || (alloc::vec![0.0f32; 9 * ins], alloc::vec![0.0f32; 12 * ins]);
    each_with(parallel, outs, scratch, |(taps, t), o| {
        filter_taps(w, o, outs, ins, way, taps);
        let tap = |r: usize, c: usize| &taps[(r * 3 + c) * ins..][..ins];
        // G·g down each column c (its four rows side by side in t): g0, ½(g0 + g1 + g2),
        // ½(g0 - g1 + g2), g2.
        for (c, column) in t.chunks_exact_mut(4 * ins).enumerate() {
            let [r0, r1, r2, r3]: [&mut [f32]; 4] = column
                .chunks_exact_mut(ins)
                .collect::<Vec<_>>()
                .try_into()
                .expect("four rows");
            r0.copy_from_slice(tap(0, c));
            combine([tap(0, c), tap(1, c), tap(2, c)], uninit(r1), uninit(r2));
            r3.copy_from_slice(tap(2, c));
        }
        // ·Gᵀ along each row r of G·g, straight into U[4r..4r + 4].
        for r in 0..4 {
            let row = |c: usize| &t[(c * 4 + r) * ins..][..ins];
            // SAFETY: u has 16·plane floats of capacity; row (ξ, o) is written by the task of
            // output channel o alone.
            let out = |c: usize| unsafe { dst.row((r * 4 + c) * plane + o * ins, ins) };
            copy(row(0), out(0));
            combine([row(0), row(1), row(2)], out(1), out(2));
            copy(row(2), out(3));
        }
    });
    // SAFETY: every (ξ, o, i) was written above.
    unsafe { u.set_len(16 * plane) };
    u
}

/// An initialised slice seen as one to write into.
fn uninit(s: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: MaybeUninit<f32> has f32's layout, and only initialised values are written.
    unsafe { &mut *(s as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// `dst = src`.
#[cfg_attr(feature = "simd", macerator::with_simd)]
fn copy<#[cfg(feature = "simd")] S: macerator::Simd>(src: &[f32], dst: &mut [MaybeUninit<f32>]) {
    copy_values(src, dst);
}

/// G's middle rows over three rows `x`: `plus = ½(x0 + x1 + x2)`, `minus = ½(x0 - x1 + x2)`.
#[cfg_attr(feature = "simd", macerator::with_simd)]
fn combine<#[cfg(feature = "simd")] S: macerator::Simd>(
    x: [&[f32]; 3],
    plus: &mut [MaybeUninit<f32>],
    minus: &mut [MaybeUninit<f32>],
) {
    let n = plus.len();
    let [x0, x1, x2] = x.map(|x| &x[..n]);
    let minus = &mut minus[..n];
    for k in 0..n {
        let outer = x0[k] + x2[k];
        plus[k].write(0.5 * (outer + x1[k]));
        minus[k].write(0.5 * (outer - x1[k]));
    }
}

/// A thread's scratch for either tiling's input and output transforms of a band of at most
/// `rows` tile rows of `tiles_w` tiles, tiles `m` apart (`m + 2` wide):
///
/// - `sub`: the band's input as `(m + 2)·m` sub-planes, one for every column `s` of a tile and
///   row phase `ρ` (`[m + 2, m, rows + 1, tiles_w]`, see [`gather`]); the output transform
///   keeps its `m·m` output lines here;
/// - `mid`: the transforms' middle lines, `(m + 2)²` of `rows · tiles_w`;
/// - `row`: one input row padded to `m·(tiles_w + 1)`.
///
/// Every step then runs along a whole band's tiles at once (`rows · tiles_w` long, the tiles of
/// a band side by side as in `V`), so short rows (7 or 14 tiles) still fill the vectors.
pub(crate) struct Planes {
    pub(crate) sub: Vec<f32>,
    pub(crate) mid: Vec<f32>,
    pub(crate) row: Vec<f32>,
}

impl Planes {
    /// Scratch for tiles `m` apart, bands of at most `rows` tile rows of `tiles_w` tiles.
    pub(crate) fn new(m: usize, tiles_w: usize, rows: usize) -> Self {
        let t = m + 2;
        Self {
            sub: alloc::vec![0.0; t * m * (rows + 1) * tiles_w],
            mid: alloc::vec![0.0; t * t * rows * tiles_w],
            row: alloc::vec![0.0; m * (tiles_w + 1)],
        }
    }
}

/// `N` lines of `n` from the start of `buf`, to write into.
#[inline(always)]
pub(crate) fn lines_mut<const N: usize>(buf: &mut [f32], n: usize) -> [&mut [MaybeUninit<f32>]; N] {
    let mut lines = buf[..N * n].chunks_exact_mut(n);
    core::array::from_fn(|_| uninit(lines.next().expect("N lines")))
}

/// `lines[σ][k] = src[M·k + σ]`: the `M` column phases of a row, as far as the shortest line
/// (written out for M = 2 and 4, so that the compiler sees one interleaved access).
#[inline(always)]
fn deinterleave<const M: usize>(src: &[f32], lines: [&mut [f32]; M]) {
    let mut lines = lines.into_iter();
    let mut line = || lines.next().expect("tiles 2 or 4 apart");
    if M == 4 {
        let (a, b, c, d) = (line(), line(), line(), line());
        for ((((q, a), b), c), d) in src.chunks_exact(4).zip(a).zip(b).zip(c).zip(d) {
            (*a, *b, *c, *d) = (q[0], q[1], q[2], q[3]);
        }
    } else {
        let (a, b) = (line(), line());
        for ((q, a), b) in src.chunks_exact(2).zip(a).zip(b) {
            (*a, *b) = (q[0], q[1]);
        }
    }
}

/// `dst[M·k + b] = lines[b][k]`: a row from its `M` column phases, as far as the shortest line
/// (written out as [`deinterleave`] is).
#[inline(always)]
fn interleave<const M: usize>(dst: &mut [MaybeUninit<f32>], lines: [&[f32]; M]) {
    let mut lines = lines.into_iter();
    let mut line = || lines.next().expect("tiles 2 or 4 apart");
    if M == 4 {
        let (a, b, c, d) = (line(), line(), line(), line());
        for ((((q, a), b), c), d) in dst.chunks_exact_mut(4).zip(a).zip(b).zip(c).zip(d) {
            q[0].write(*a);
            q[1].write(*b);
            q[2].write(*c);
            q[3].write(*d);
        }
    } else {
        let (a, b) = (line(), line());
        for ((q, a), b) in dst.chunks_exact_mut(2).zip(a).zip(b) {
            q[0].write(*a);
            q[1].write(*b);
        }
    }
}

/// The sub-planes of a band of `rows` tile rows from tile row `first` of one input plane,
/// tiles `M` apart and `M + 2` wide: `sub[((s·M + ρ)·(rows + 1) + jj)·tiles_w + k]` is the
/// padded input at row `M·(first + jj) + ρ` and column `M·k + s`, for every column `s` of a
/// tile, row phase `ρ < M`, `jj ≤ rows` and tile `k` (zero in the padding). Tile `(jj, k)`'s
/// row `r` and column `s` then lie in sub-plane `(s, r mod M)` at `(jj + r div M)·tiles_w + k`,
/// so each of its `(M + 2)²` values is one line along the band's tiles, a whole band long.
/// Each input row is padded once and split into its `M` column phases (a tile's columns `M`
/// and `M + 1` are phases 0 and 1 of the next tile). Returns the sub-planes' length.
#[inline(always)]
pub(crate) fn gather<const M: usize>(
    plane: &[f32],
    g: &Geometry,
    first: usize,
    rows: usize,
    tiles_w: usize,
    planes: &mut Planes,
) -> usize {
    let tw = tiles_w;
    let span = (rows + 1) * tw;
    let wide = M * (tw + 1);
    let Planes { sub, row, .. } = planes;
    let row = &mut row[..wide];
    let pad = g.padding[1];
    let (lo, hi) = (pad.min(wide), (pad + g.in_w).min(wide));
    // The padding columns, the same for every row (rows write only [lo, hi)).
    row[..lo].fill(0.0);
    row[hi..].fill(0.0);
    for jj in 0..=rows {
        for rho in 0..M {
            let at = |s: usize| (s * M + rho) * span + jj * tw;
            let y = (M * (first + jj) + rho) as isize - g.padding[0] as isize;
            if y < 0 || y >= g.in_h as isize {
                for s in 0..M + 2 {
                    sub[at(s)..at(s) + tw].fill(0.0);
                }
                continue;
            }
            let input = &plane[y as usize * g.in_w..][..g.in_w];
            copy_values(&input[..hi - lo], uninit(&mut row[lo..hi]));
            // Columns 0..M of every tile straight into their lines, then columns M and M + 1
            // (phases 0 and 1 one tile on).
            let lines = sub
                .get_disjoint_mut(core::array::from_fn::<_, M, _>(|s| at(s)..at(s) + tw))
                .expect("distinct lines");
            deinterleave::<M>(row, lines);
            for sigma in 0..2 {
                let [from, to] = sub
                    .get_disjoint_mut([
                        at(sigma)..at(sigma) + tw,
                        at(sigma + M)..at(sigma + M) + tw,
                    ])
                    .expect("distinct lines");
                copy_values(&from[1..], uninit(&mut to[..tw - 1]));
                to[tw - 1] = row[M * tw + sigma];
            }
        }
    }
    span
}

/// The output rows of a band of `rows` tile rows from tile row `first` into `out` (an output
/// plane of `geometry`): `lines[(a·M + b)·n + jj·tiles_w + k]` (`n = rows · tiles_w`) is the
/// output at row `M·(first + jj) + a` and column `M·k + b`; rows and columns past the plane are
/// dropped. `row` is scratch of `M`.
#[inline(always)]
pub(crate) fn scatter<const M: usize>(
    lines: &[f32],
    g: &Geometry,
    first: usize,
    rows: usize,
    tiles_w: usize,
    out: Shared,
    row: &mut [f32],
) {
    let tw = tiles_w;
    let n = rows * tw;
    // Whole tiles straight into the row, the columns of a last tile cut by the plane's edge
    // through `row`.
    let whole = g.out_w / M;
    let rest = g.out_w % M;
    let row = &mut row[..M];
    for jj in 0..rows {
        for a in 0..M {
            let oy = M * (first + jj) + a;
            if oy >= g.out_h {
                continue;
            }
            let phases: [&[f32]; M] =
                core::array::from_fn(|b| &lines[(a * M + b) * n + jj * tw..][..tw]);
            // SAFETY: out is this output plane ([out_h, out_w]); row oy is written by this
            // call alone.
            let line = unsafe { out.row(oy * g.out_w, g.out_w) };
            interleave::<M>(&mut line[..M * whole], phases.map(|p| &p[..whole]));
            if rest > 0 {
                for (value, phase) in row.iter_mut().zip(&phases) {
                    *value = phase[whole];
                }
                copy_values(&row[..rest], &mut line[M * whole..]);
            }
        }
    }
}

/// `dst = src` (inlined into the transforms).
#[inline(always)]
fn copy_values(src: &[f32], dst: &mut [MaybeUninit<f32>]) {
    for (d, s) in dst.iter_mut().zip(src) {
        d.write(*s);
    }
}

/// F(2×2, 3×3)'s `Bᵀ` over four lines: `[d0 - d2, d1 + d2, d2 - d1, d1 - d3]`.
#[inline(always)]
fn bt4(d: [&[f32]; 4], out: [&mut [MaybeUninit<f32>]; 4]) {
    let n = out[0].len();
    let [d0, d1, d2, d3] = d.map(|x| &x[..n]);
    let [o0, o1, o2, o3] = out.map(|o| &mut o[..n]);
    for k in 0..n {
        o0[k].write(d0[k] - d2[k]);
        o1[k].write(d1[k] + d2[k]);
        o2[k].write(d2[k] - d1[k]);
        o3[k].write(d1[k] - d3[k]);
    }
}

/// F(2×2, 3×3)'s `Aᵀ` over four lines, plus `bias`: `[m0 + m1 + m2, m1 - m2 - m3]`.
#[inline(always)]
fn at4(m: [&[f32]; 4], out: [&mut [MaybeUninit<f32>]; 2], bias: f32) {
    let n = out[0].len();
    let [m0, m1, m2, m3] = m.map(|x| &x[..n]);
    let [o0, o1] = out.map(|o| &mut o[..n]);
    for k in 0..n {
        o0[k].write(m0[k] + m1[k] + m2[k] + bias);
        o1[k].write(m1[k] - m2[k] - m3[k] + bias);
    }
}

/// `V[ξ]` of one input plane into `v` (`[16, ins, stride / ins]`: this channel's row of each
/// `ξ` at `channel_row`), columns `column..` from the blocks of block rows `rows`
/// (`blocks_w` blocks a row). One call a plane and band, compiled for the widest SIMD the CPU
/// has: the band split into sub-planes ([`gather`]), then `Bᵀ·` down each block column and
/// `·B` along each block row, each along the whole band (the plane's blocks lie side by side
/// in `V`), the second straight into `V`.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(feature = "simd", macerator::with_simd)]
fn transform_input<#[cfg(feature = "simd")] S: macerator::Simd>(
    plane: &[f32],
    g: &Geometry,
    rows: core::ops::Range<usize>,
    blocks_w: usize,
    v: Shared,
    stride: usize,
    channel_row: usize,
    column: usize,
    planes: &mut Planes,
) {
    let (bw, nb) = (blocks_w, rows.len() * blocks_w);
    let span = gather::<2>(plane, g, rows.start, rows.len(), bw, planes);
    let Planes { sub, mid, .. } = planes;
    // Bᵀ· down each column s of the blocks: mid[4s + i] is row i.
    for s in 0..4 {
        let d = |r: usize| &sub[(s * 2 + r % 2) * span + r / 2 * bw..][..nb];
        let (_, out) = mid.split_at_mut(4 * s * nb);
        bt4([d(0), d(1), d(2), d(3)], lines_mut(out, nb));
    }
    // ·B along each row i, straight into V[4i + c].
    for i in 0..4 {
        let d = |s: usize| &mid[(4 * s + i) * nb..][..nb];
        // SAFETY: the caller's v holds [16, ins, stride / ins]; this channel's row of each ξ,
        // columns [column, column + nb), is written by this call alone.
        let out =
            [0, 1, 2, 3].map(|c| unsafe { v.row((4 * i + c) * stride + channel_row + column, nb) });
        bt4([d(0), d(1), d(2), d(3)], out);
    }
}

/// `V[ξ]` of block rows `rows` of `count` images of `x` (`[batch, ins, in_h, in_w]`) from image
/// `first`, by `tile`, into `v` (`[products, ins, count·rows·blocks_w]`, replacing what it held;
/// its capacity must hold that), the planes spread over every core where `parallel`.
#[allow(clippy::too_many_arguments)]
fn transform_inputs(
    tile: Tile,
    x: &[f32],
    first: usize,
    count: usize,
    ins: usize,
    g: &Geometry,
    rows: core::ops::Range<usize>,
    blocks_w: usize,
    v: &mut Vec<f32>,
    parallel: bool,
) {
    let per = rows.len() * blocks_w;
    let n = count * per;
    let plane_len = g.in_h * g.in_w;
    let len = tile.products() * ins * n;
    v.clear();
    assert!(v.capacity() >= len, "winograd: V's buffer too small");
    let v_ptr = Shared(v.as_mut_ptr());
    each_with(
        parallel,
        count * ins,
        || tile.scratch(blocks_w, rows.len()),
        |scratch, job| {
            let (i, c) = (job / ins, job % ins);
            let at = ((first + i) * ins + c) * plane_len;
            let plane = &x[at..at + plane_len];
            let (stride, row, column) = (ins * n, c * n, i * per);
            let rows = rows.clone();
            match tile {
                Tile::F2 => transform_input(
                    plane, g, rows, blocks_w, v_ptr, stride, row, column, scratch,
                ),
                Tile::F4 => winograd4::transform_input(
                    plane, g, rows, blocks_w, v_ptr, stride, row, column, scratch,
                ),
            }
        },
    );
    // SAFETY: every (ξ, channel, block) of the pass was written above, inside the capacity.
    unsafe { v.set_len(len) };
}

/// The output of block rows `rows` of one output plane from `M[ξ]` (`[16, outs, stride /
/// outs]`, this channel's row at `channel_row`, columns from `column`), plus `bias`, into
/// `out` (the plane). One call a plane and band, compiled for the widest SIMD the CPU has:
/// `Aᵀ·` down each block column and `·A` along each block row, each along the whole band, then
/// the band's rows written out ([`scatter`]).
#[allow(clippy::too_many_arguments)]
#[cfg_attr(feature = "simd", macerator::with_simd)]
fn transform_output<#[cfg(feature = "simd")] S: macerator::Simd>(
    m: &[f32],
    stride: usize,
    channel_row: usize,
    column: usize,
    g: &Geometry,
    rows: core::ops::Range<usize>,
    blocks_w: usize,
    bias: f32,
    out: Shared,
    planes: &mut Planes,
) {
    let nb = rows.len() * blocks_w;
    let at = |xi: usize| &m[xi * stride + channel_row + column..][..nb];
    let Planes { sub, mid, row, .. } = planes;
    // Aᵀ· down each column c: mid[2c + a] is output row a of it.
    for c in 0..4 {
        let (_, out) = mid.split_at_mut(2 * c * nb);
        at4(
            [at(c), at(4 + c), at(8 + c), at(12 + c)],
            lines_mut(out, nb),
            0.0,
        );
    }
    // ·A along each row a, with the bias: sub[2a + b] is the output at (a, b) of every block.
    for a in 0..2 {
        let y = |c: usize| &mid[(2 * c + a) * nb..][..nb];
        let (_, out) = sub.split_at_mut(2 * a * nb);
        at4([y(0), y(1), y(2), y(3)], lines_mut(out, nb), bias);
    }
    scatter::<2>(sub, g, rows.start, rows.len(), blocks_w, out, row);
}

/// The convolution: `x` `[batch, ins, in_h, in_w]`, `w` read as `way` says (`[outs, ins, 3, 3]`
/// forward, `[ins, outs, 3, 3]` transposed), an optional bias of `outs`; returns `[batch, outs,
/// out_h, out_w]` with the epilogue applied.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    x: &[f32],
    w: &[f32],
    way: Weight,
    bias: Option<&[f32]>,
    batch: usize,
    ins: usize,
    outs: usize,
    g: &Geometry,
    epilogue: &Epilogue,
) -> Vec<f32> {
    let tile = Tile::of(g.out_h, g.out_w, ins, outs);
    let products = tile.products();
    let (blocks_h, blocks_w) = (g.out_h.div_ceil(tile.side()), g.out_w.div_ceil(tile.side()));
    let per_image = blocks_h * blocks_w;
    let spatial = g.out_h * g.out_w;
    let out_len = outs * spatial;
    let mut out: Vec<f32> = Vec::with_capacity(batch * out_len);
    if batch * out_len == 0 {
        return out;
    }
    // Blocks a task's buffers hold, images a task, and block rows a band of one image.
    let most = (BUFFER_FLOATS / (products * (ins + outs))).max(1);
    let threads = threads();
    let images = if per_image >= MIN_BLOCKS {
        1
    } else {
        let most_images = MIN_BLOCKS
            .div_ceil(per_image)
            .min(batch.div_ceil(threads))
            .min(most / per_image)
            .max(1);
        // As many tasks a thread: three tasks of seven images on two threads would leave one
        // thread with two of them, so take four of four.
        let tasks = batch.div_ceil(most_images);
        if tasks > threads {
            batch.div_ceil(tasks.next_multiple_of(threads))
        } else {
            most_images
        }
    };
    let band = if images == 1 {
        (most / blocks_w).clamp(1, blocks_h)
    } else {
        blocks_h
    };
    let tasks = batch.div_ceil(images);
    // Tasks keep the threads busy, or else each task's steps spread over them.
    let outer = tasks >= threads;
    let inner = !outer;
    let u = match tile {
        Tile::F2 => transform_weight(w, outs, ins, way, true),
        Tile::F4 => winograd4::transform_weight(w, outs, ins, way, true),
    };
    let capacity = products * images * band.min(blocks_h) * blocks_w;
    let out_ptr = Shared(out.as_mut_ptr());
    // One run of consecutive tasks a thread, each run with its buffers made here, on the
    // calling thread: made on a worker they would come from its own malloc arena, which the
    // tensors cannot reuse, and a training step's peak memory would grow by them.
    let runs = if outer { threads.min(tasks) } else { 1 };
    let per_run = tasks.div_ceil(runs);
    let mut buffers: Vec<(Vec<f32>, Vec<f32>)> = (0..runs)
        .map(|_| {
            (
                Vec::with_capacity(ins * capacity),
                Vec::with_capacity(outs * capacity),
            )
        })
        .collect();
    each_mut(outer, &mut buffers, |run, (v, m)| {
        for task in run * per_run..((run + 1) * per_run).min(tasks) {
            let first = task * images;
            let count = images.min(batch - first);
            for start in (0..blocks_h).step_by(band) {
                let rows = start..(start + band).min(blocks_h);
                let n = count * rows.len() * blocks_w;
                let per = rows.len() * blocks_w;
                transform_inputs(
                    tile,
                    x,
                    first,
                    count,
                    ins,
                    g,
                    rows.clone(),
                    blocks_w,
                    v,
                    inner,
                );
                m.clear();
                let m_ptr = Shared(m.as_mut_ptr());
                each(inner, products, |xi| {
                    // SAFETY: M[ξ] is [outs, n] row-major in m's capacity, written by this ξ alone;
                    // U[ξ] is [outs, ins] and V[ξ] [ins, n], row-major.
                    unsafe {
                        gemm(
                            (outs, n, ins),
                            m_ptr.at(xi * outs * n),
                            n,
                            false,
                            (u.as_ptr().add(xi * outs * ins), 1, ins as isize),
                            (v.as_ptr().add(xi * ins * n), 1, n as isize),
                            gemm::Parallelism::None,
                        );
                    }
                });
                // SAFETY: every M[ξ] was written above.
                unsafe { m.set_len(products * outs * n) };
                let scratch = || tile.scratch(blocks_w, band);
                each_with(inner, count * outs, scratch, |scratch, job| {
                    let (i, o) = (job / outs, job % outs);
                    // SAFETY: the plane of image first + i, channel o, lies inside out's capacity.
                    let plane = Shared(unsafe { out_ptr.at((first + i) * out_len + o * spatial) });
                    let b = bias.map_or(0.0, |b| b[o]);
                    let (stride, row, column) = (outs * n, o * n, i * per);
                    let rows = rows.clone();
                    match tile {
                        Tile::F2 => transform_output(
                            &m, stride, row, column, g, rows, blocks_w, b, plane, scratch,
                        ),
                        Tile::F4 => winograd4::transform_output(
                            &m, stride, row, column, g, rows, blocks_w, b, plane, scratch,
                        ),
                    }
                });
            }
            if !epilogue.is_identity() {
                each(inner, count * outs, |job| {
                    let at = (first + job / outs) * out_len + job % outs * spatial;
                    // SAFETY: every block row of the plane was written above; each job owns its
                    // plane.
                    let plane = unsafe { core::slice::from_raw_parts_mut(out_ptr.at(at), spatial) };
                    epilogue.apply(plane, at);
                });
            }
        }
    });
    // SAFETY: the block rows cover every output row and the blocks every column; every image
    // and channel had its plane written.
    unsafe { out.set_len(batch * out_len) };
    out
}

/// The weight gradient of a convolution [`applies`] takes, by F(3×3, 2×2): `x` `[batch, ins,
/// in_h, in_w]` (the convolution's input), `grad` `[batch, outs, out_h, out_w]`; returns
/// `[outs, ins, 3, 3]`.
///
/// Each 2×2 block of the output gradient meets the 4×4 input block the forward pass read for
/// it: the input blocks are transformed as in the forward pass, the gradient blocks by `G'·γ·G'ᵀ`
/// (4×2: rows `[1, 0]`, `[½, ½]`, `[½, -½]`, `[0, -1]`; the sign of the last row matches the
/// forward's `Bᵀ`), 16 GEMMs sum their products over every block of the batch into `M[ξ]`
/// (`[outs, ins]`), and each filter's gradient is `Aᵀ·M·A` (3×3, `Aᵀ` rows `[1, 1, 1, 0]`,
/// `[0, 1, -1, 0]`, `[0, 1, 1, 1]`). The GEMMs share the threads by `ξ`, so the sums need no
/// copy a thread.
pub(crate) fn weight_gradient(
    x: &[f32],
    grad: &[f32],
    batch: usize,
    ins: usize,
    outs: usize,
    g: &Geometry,
) -> Vec<f32> {
    if g.out_h * g.out_w * batch == 0 {
        return alloc::vec![0.0; outs * ins * 9];
    }
    if 16 * outs * ins <= OWN_SUMS_FLOATS {
        weight_gradient_in_chunks(x, grad, batch, ins, outs, g)
    } else {
        weight_gradient_in_bands(x, grad, batch, ins, outs, g)
    }
}

/// How a weight gradient cuts the batch's blocks: into chunks of a few block rows of one image,
/// or of a few whole images, whose transformed input and gradient take at most `floats`.
struct Chunks {
    /// (first image, images, block rows) of every chunk, in order.
    list: Vec<(usize, usize, core::ops::Range<usize>)>,
    /// Blocks the largest chunk holds.
    blocks: usize,
}

impl Chunks {
    fn new(batch: usize, ins: usize, outs: usize, g: &Geometry, floats: usize) -> Self {
        let (blocks_h, blocks_w) = (g.out_h.div_ceil(2), g.out_w.div_ceil(2));
        let per_image = blocks_h * blocks_w;
        let most = (floats / (16 * (ins + outs))).max(1);
        let (images, band) = if per_image >= most {
            (1, (most / blocks_w).clamp(1, blocks_h))
        } else {
            ((most / per_image).clamp(1, batch), blocks_h)
        };
        let mut list = Vec::new();
        for first in (0..batch).step_by(images) {
            for start in (0..blocks_h).step_by(band) {
                let rows = start..(start + band).min(blocks_h);
                list.push((first, images.min(batch - first), rows));
            }
        }
        Self {
            list,
            blocks: images * band * blocks_w,
        }
    }
}

/// [`weight_gradient`] for layers whose `M` a thread can keep of its own: the batch's blocks cut
/// into chunks whose transformed input and gradient fit [`CHUNK_FLOATS`], each thread taking a
/// run of consecutive chunks and, for each, transforming its input and gradient planes and
/// running the 16 GEMMs onto its own `M` while both are in its cache; the threads' `M` are
/// summed at the end.
fn weight_gradient_in_chunks(
    x: &[f32],
    grad: &[f32],
    batch: usize,
    ins: usize,
    outs: usize,
    g: &Geometry,
) -> Vec<f32> {
    let Chunks { mut list, blocks } = Chunks::new(batch, ins, outs, g, CHUNK_FLOATS);
    let make = || {
        (
            Vec::with_capacity(16 * ins * blocks),
            Vec::with_capacity(16 * outs * blocks),
            alloc::vec![0.0f32; 16 * outs * ins],
        )
    };
    let runs = for_each_task(&mut list, 1, make, |(v, gt, sums), _, chunk| {
        let (first, count, rows) = chunk[0].clone();
        let n = transform_pair(x, grad, first, count, ins, outs, g, rows, v, gt, false);
        add_products(sums, v, gt, ins, outs, n, false);
    });
    let sums = sum_of(runs.into_iter().map(|(_, _, sums)| sums)).expect("a run or more");
    filters_from_sums(&sums, outs, ins)
}

/// `V[ξ]` of the inputs into `v` and `G'·γ·G'ᵀ` of the output gradients into `gt` (each
/// replacing what it held) for block rows `rows` of `count` images from `first`, the planes
/// spread over every core where `parallel`; returns the blocks transformed.
#[allow(clippy::too_many_arguments)]
fn transform_pair(
    x: &[f32],
    grad: &[f32],
    first: usize,
    count: usize,
    ins: usize,
    outs: usize,
    g: &Geometry,
    rows: core::ops::Range<usize>,
    v: &mut Vec<f32>,
    gt: &mut Vec<f32>,
    parallel: bool,
) -> usize {
    let blocks_w = g.out_w.div_ceil(2);
    let spatial = g.out_h * g.out_w;
    let per = rows.len() * blocks_w;
    let n = count * per;
    let band = rows.len();
    transform_inputs(
        Tile::F2,
        x,
        first,
        count,
        ins,
        g,
        rows.clone(),
        blocks_w,
        v,
        parallel,
    );
    gt.clear();
    assert!(
        gt.capacity() >= 16 * outs * n,
        "winograd: the gradient's buffer too small"
    );
    let gt_ptr = Shared(gt.as_mut_ptr());
    let scratch = || Planes::new(2, blocks_w, band);
    each_with(parallel, count * outs, scratch, |planes, job| {
        let (i, o) = (job / outs, job % outs);
        let at = ((first + i) * outs + o) * spatial;
        let plane = &grad[at..at + spatial];
        transform_gradient(
            plane,
            g,
            rows.clone(),
            blocks_w,
            gt_ptr,
            outs * n,
            o * n,
            i * per,
            planes,
        );
    });
    // SAFETY: every (ξ, channel, block) of the pass was written above, inside the capacity.
    unsafe { gt.set_len(16 * outs * n) };
    n
}

/// `M[ξ] += G[ξ]·V[ξ]ᵀ` for the 16 `ξ`: `sums` `[16, outs, ins]`, the transformed gradient `gt`
/// `[16, outs, n]` and input `v` `[16, ins, n]`; the GEMMs share the threads by `ξ` where
/// `parallel`.
fn add_products(
    sums: &mut [f32],
    v: &[f32],
    gt: &[f32],
    ins: usize,
    outs: usize,
    n: usize,
    parallel: bool,
) {
    assert!(sums.len() >= 16 * outs * ins && gt.len() >= 16 * outs * n && v.len() >= 16 * ins * n);
    let sums_ptr = Shared(sums.as_mut_ptr());
    each(parallel, 16, |xi| {
        // SAFETY: M[ξ] is [outs, ins] row-major in sums, added onto by this ξ alone; the
        // gradient's G[ξ] is [outs, n] and V[ξ] [ins, n], row-major, V read transposed (all
        // inside the lengths checked above).
        unsafe {
            gemm(
                (outs, ins, n),
                sums_ptr.at(xi * outs * ins),
                ins,
                true,
                (gt.as_ptr().add(xi * outs * n), 1, n as isize),
                (v.as_ptr().add(xi * ins * n), n as isize, 1),
                gemm::Parallelism::None,
            );
        }
    });
}

/// Each filter's gradient `Aᵀ·M·A` (3×3, `Aᵀ` rows `[1, 1, 1, 0]`, `[0, 1, -1, 0]`,
/// `[0, 1, 1, 1]`) from the summed `M[ξ]` (`[16, outs, ins]`); returns `[outs, ins, 3, 3]`.
fn filters_from_sums(sums: &[f32], outs: usize, ins: usize) -> Vec<f32> {
    let plane = outs * ins;
    super::planes::collect_chunks(outs * ins * 9, ins * 9, |o, dst| {
        for (i, out) in dst.chunks_exact_mut(9).enumerate() {
            let m = |r: usize, c: usize| sums[(r * 4 + c) * plane + o * ins + i];
            let mut t = [[0.0f32; 4]; 3];
            for c in 0..4 {
                let (a, b, d, e) = (m(0, c), m(1, c), m(2, c), m(3, c));
                t[0][c] = a + b + d;
                t[1][c] = b - d;
                t[2][c] = b + d + e;
            }
            for (r, row) in t.iter().enumerate() {
                let (a, b, d, e) = (row[0], row[1], row[2], row[3]);
                out[r * 3].write(a + b + d);
                out[r * 3 + 1].write(b - d);
                out[r * 3 + 2].write(b + d + e);
            }
        }
    })
}

/// [`weight_gradient`] for layers too wide for a thread to keep its own `M`: bands of block rows
/// (or several images) whose transformed input and gradient fit [`BUFFER_FLOATS`], each step
/// on every core, the 16 GEMMs sharing the threads by `ξ` onto one `M`.
fn weight_gradient_in_bands(
    x: &[f32],
    grad: &[f32],
    batch: usize,
    ins: usize,
    outs: usize,
    g: &Geometry,
) -> Vec<f32> {
    let Chunks { list, blocks } = Chunks::new(batch, ins, outs, g, BUFFER_FLOATS);
    let mut sums = alloc::vec![0.0f32; 16 * outs * ins];
    let mut v: Vec<f32> = Vec::with_capacity(16 * ins * blocks);
    let mut gt: Vec<f32> = Vec::with_capacity(16 * outs * blocks);
    for (first, count, rows) in list {
        let n = transform_pair(
            x, grad, first, count, ins, outs, g, rows, &mut v, &mut gt, true,
        );
        add_products(&mut sums, &v, &gt, ins, outs, n, true);
    }
    filters_from_sums(&sums, outs, ins)
}

/// `G'` over two lines: `[d0, ½(d0 + d1), ½(d0 - d1), -d1]`.
#[inline(always)]
fn g4(d: [&[f32]; 2], out: [&mut [MaybeUninit<f32>]; 4]) {
    let n = out[0].len();
    let [d0, d1] = d.map(|x| &x[..n]);
    let [o0, o1, o2, o3] = out.map(|o| &mut o[..n]);
    for k in 0..n {
        o0[k].write(d0[k]);
        o1[k].write(0.5 * (d0[k] + d1[k]));
        o2[k].write(0.5 * (d0[k] - d1[k]));
        o3[k].write(-d1[k]);
    }
}

/// `G'·γ·G'ᵀ` of the 2×2 blocks of one output-gradient plane into `gt` (`[16, outs, stride /
/// outs]`, this channel's row at `channel_row`), columns from `column`, for block rows `rows`;
/// the gradient is zero past the plane's odd last row and column. One call a plane and band,
/// compiled for the widest SIMD the CPU has: the band split into sub-planes as the input
/// transforms split theirs ([`gather`], the gradient plane read as an unpadded input), then
/// `G'·` down each block column and `·G'ᵀ` along each block row, each along the whole band, the
/// second straight into the transformed gradient.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(feature = "simd", macerator::with_simd)]
fn transform_gradient<#[cfg(feature = "simd")] S: macerator::Simd>(
    plane: &[f32],
    g: &Geometry,
    rows: core::ops::Range<usize>,
    blocks_w: usize,
    gt: Shared,
    stride: usize,
    channel_row: usize,
    column: usize,
    planes: &mut Planes,
) {
    let (bw, nb) = (blocks_w, rows.len() * blocks_w);
    let own = Geometry {
        in_h: g.out_h,
        in_w: g.out_w,
        padding: [0, 0],
        ..*g
    };
    let span = gather::<2>(plane, &own, rows.start, rows.len(), bw, planes);
    let Planes { sub, mid, .. } = planes;
    // G'· down each column s of the blocks: mid[4s + i] is row i.
    for s in 0..2 {
        let d = |rho: usize| &sub[(s * 2 + rho) * span..][..nb];
        let (_, out) = mid.split_at_mut(4 * s * nb);
        g4([d(0), d(1)], lines_mut(out, nb));
    }
    // ·G'ᵀ along each row i, straight into the transformed gradient's row 4i + c.
    for i in 0..4 {
        let d = |s: usize| &mid[(4 * s + i) * nb..][..nb];
        // SAFETY: gt holds [16, outs, stride / outs]; this channel's row of each ξ, columns
        // [column, column + nb), is written by this call alone.
        let out = [0, 1, 2, 3]
            .map(|c| unsafe { gt.row((4 * i + c) * stride + channel_row + column, nb) });
        g4([d(0), d(1)], out);
    }
}
