//! A one-thread f32 GEMM for the narrow products of inference convolutions (lookalike):
//! `dst[r, j] = bias[r] + Σ_k w[r, k] · x[k, j]` with `w` row-major and `x`'s rows read where
//! they lie (a 1×1 convolution's input planes, or a column buffer), on x86-64 with AVX-512.
//!
//! The `gemm` crate packs both operands into panels before its micro-kernel runs, and on a lone
//! image's 1×1 convolutions (MobileNetV2's 14 × 14 and 7 × 7 planes: 49 to 196 columns, 64 to
//! 960 channels) its calls ran at about 40 % of the core's multiply-add rate. Here nothing is
//! packed: six rows of the output by 64 columns (24 AVX-512 registers) accumulate over a block
//! of `KC` rows of `x` (64 columns of them, 32 KiB: they stay in the L1 cache while every block
//! of six output rows reads them), each weight broadcast from its row of `w`. Columns past a
//! multiple of 16 are masked: nothing outside `x`'s and `dst`'s rows is read or written.
//!
//! [`gemm`] returns `false` where the CPU has no AVX-512 (the caller runs the `gemm` crate).

/// The deepest product the callers hand to [`gemm`]: past it (ResNet's 3×3 columns, 576 deep
/// and more, over hundreds of output channels) the `gemm` crate's packed panels win.
pub(crate) const DEEPEST: usize = 256;

/// Rows of `x` (the product's depth) a block: 64 columns of them fill 32 KiB of L1.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
const KC: usize = 128;

/// Output rows a micro-kernel call.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
const MR: usize = 6;

/// Output columns a micro-kernel call, in four vectors of 16.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
const NR: usize = 64;

/// Whether [`gemm`] runs here.
pub(crate) fn available() -> bool {
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(all(target_arch = "x86_64", feature = "std")))]
    false
}

/// `dst[r·ldd + j] = bias[r] (or 0) + Σ_k w[r·ldw + k] · x[k·ldx + j]` for `r < rows`,
/// `j < n`, `k < depth`; returns `false`, having written nothing, where [`available`] is not.
///
/// # Safety
/// `dst` must be valid for writes of `rows` rows of `n` floats `ldd` apart, `w` for reads of
/// `rows` rows of `depth` floats `ldw` apart and `x` of `depth` rows of `n` floats `ldx` apart;
/// `bias`, where given, holds at least `rows` values.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm(
    (rows, n, depth): (usize, usize, usize),
    dst: *mut f32,
    ldd: usize,
    bias: Option<&[f32]>,
    (w, ldw): (*const f32, usize),
    (x, ldx): (*const f32, usize),
) -> bool {
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    if available() {
        if let Some(b) = bias {
            assert!(b.len() >= rows, "pointwise::gemm: a bias for every row");
        }
        // SAFETY: AVX-512F is present; the rest is the caller's.
        unsafe { avx512::gemm((rows, n, depth), dst, ldd, bias, (w, ldw), (x, ldx)) };
        return true;
    }
    let _ = (rows, n, depth, dst, ldd, bias, w, ldw, x, ldx);
    false
}

#[cfg(all(target_arch = "x86_64", feature = "std"))]
mod avx512 {
    use super::super::planes::first_lanes;
    use super::{KC, MR, NR};
    use core::arch::x86_64::*;

    /// See [`super::gemm`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gemm(
        (rows, n, depth): (usize, usize, usize),
        dst: *mut f32,
        ldd: usize,
        bias: Option<&[f32]>,
        (w, ldw): (*const f32, usize),
        (x, ldx): (*const f32, usize),
    ) {
        let blocks = n.div_ceil(NR);
        let mut k0 = 0;
        loop {
            let kb = (depth - k0).min(KC);
            let first = k0 == 0;
            for r0 in (0..rows).step_by(MR) {
                let rb = (rows - r0).min(MR);
                for block in 0..blocks {
                    let j0 = block * NR;
                    let width = (n - j0).min(NR);
                    let tile = Tile {
                        dst: unsafe { dst.add(r0 * ldd + j0) },
                        ldd,
                        w: unsafe { w.add(r0 * ldw + k0) },
                        ldw,
                        x: unsafe { x.add(k0 * ldx + j0) },
                        ldx,
                        depth: kb,
                        start: if first {
                            Start::Bias(bias.map(|b| &b[r0..r0 + rb]))
                        } else {
                            Start::Dst
                        },
                        masks: core::array::from_fn(|v| {
                            first_lanes(width.saturating_sub(16 * v).min(16))
                        }),
                    };
                    // SAFETY: the tile lies inside the caller's operands (rows r0..r0 + rb,
                    // columns j0..j0 + width, depth k0..k0 + kb; masked past `width`).
                    unsafe {
                        let vectors = width.div_ceil(16);
                        match rb {
                            6 => tile.run_rows::<6>(vectors),
                            5 => tile.run_rows::<5>(vectors),
                            4 => tile.run_rows::<4>(vectors),
                            3 => tile.run_rows::<3>(vectors),
                            2 => tile.run_rows::<2>(vectors),
                            _ => tile.run_rows::<1>(vectors),
                        }
                    }
                }
            }
            k0 += kb;
            if k0 >= depth {
                break;
            }
        }
    }

    /// What the accumulators start from.
    enum Start<'a> {
        /// The bias of each row (zero without one): the first block of the depth.
        Bias(Option<&'a [f32]>),
        /// The output as the blocks before left it.
        Dst,
    }

    /// One micro-kernel call: up to [`MR`] rows by up to [`NR`] columns over `depth`.
    struct Tile<'a> {
        dst: *mut f32,
        ldd: usize,
        w: *const f32,
        ldw: usize,
        x: *const f32,
        ldx: usize,
        depth: usize,
        start: Start<'a>,
        masks: [__mmask16; 4],
    }

    impl Tile<'_> {
        #[target_feature(enable = "avx512f")]
        unsafe fn run_rows<const R: usize>(&self, vectors: usize) {
            // SAFETY: the caller's.
            unsafe {
                match vectors {
                    4 => self.run::<R, 4>(),
                    3 => self.run::<R, 3>(),
                    2 => self.run::<R, 2>(),
                    _ => self.run::<R, 1>(),
                }
            }
        }

        /// `R` rows, `V` vectors of 16 columns (the last masked).
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn run<const R: usize, const V: usize>(&self) {
            // SAFETY: every load and store below stays inside the tile (see `gemm`); masked
            // lanes are neither read nor written.
            unsafe {
                let mut acc = [[_mm512_setzero_ps(); V]; R];
                match self.start {
                    Start::Bias(Some(b)) => {
                        for r in 0..R {
                            acc[r] = [_mm512_set1_ps(b[r]); V];
                        }
                    }
                    Start::Bias(None) => {}
                    Start::Dst => {
                        for r in 0..R {
                            for v in 0..V {
                                acc[r][v] = _mm512_maskz_loadu_ps(
                                    self.masks[v],
                                    self.dst.add(r * self.ldd + 16 * v),
                                );
                            }
                        }
                    }
                }
                for k in 0..self.depth {
                    let row = self.x.add(k * self.ldx);
                    let mut xs = [_mm512_setzero_ps(); V];
                    for v in 0..V {
                        xs[v] = _mm512_maskz_loadu_ps(self.masks[v], row.add(16 * v));
                    }
                    for r in 0..R {
                        let wv = _mm512_set1_ps(*self.w.add(r * self.ldw + k));
                        for v in 0..V {
                            acc[r][v] = _mm512_fmadd_ps(wv, xs[v], acc[r][v]);
                        }
                    }
                }
                for r in 0..R {
                    for v in 0..V {
                        _mm512_mask_storeu_ps(
                            self.dst.add(r * self.ldd + 16 * v),
                            self.masks[v],
                            acc[r][v],
                        );
                    }
                }
            }
        }
    }
}
