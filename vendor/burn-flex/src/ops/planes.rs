//! Helpers for the kernels lookalike added (`conv_backward`, `batch_norm`, `depthwise`,
//! `dense`), which work one NCHW plane, or one channel's planes, at a time.

use alloc::vec::Vec;

use burn_backend::DType;
use burn_std::{Bytes, Shape};

use crate::{FlexTensor, Layout};

/// A contiguous f32 tensor of `shape` holding `data`.
pub(super) fn f32_tensor(data: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(data),
        Layout::contiguous(Shape::from(shape.to_vec())),
        DType::F32,
    )
}

/// Runs `work(index, chunk)` over `data` cut into chunks of `len`, in parallel where rayon is on.
pub(super) fn for_each_chunk<T: Send>(
    data: &mut [T],
    len: usize,
    work: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    for_each_chunk_with(data, len, || (), |_, i, chunk| work(i, chunk));
}

/// [`for_each_chunk`] with a scratch of each thread's own, made by `make` and handed to every
/// `work(scratch, index, chunk)` that thread runs.
pub(super) fn for_each_chunk_with<T: Send, S>(
    data: &mut [T],
    len: usize,
    make: impl Fn() -> S + Sync + Send,
    work: impl Fn(&mut S, usize, &mut [T]) + Sync + Send,
) {
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        data.par_chunks_mut(len)
            .enumerate()
            .for_each_init(make, |s, (i, chunk)| work(s, i, chunk));
    }
    #[cfg(not(feature = "rayon"))]
    {
        let mut s = make();
        for (i, chunk) in data.chunks_mut(len).enumerate() {
            work(&mut s, i, chunk);
        }
    }
}

/// `f(i)` for `i` in `0..count`, on every core where `parallel` and rayon is on.
pub(super) fn each(parallel: bool, count: usize, f: impl Fn(usize) + Sync + Send) {
    #[cfg(feature = "rayon")]
    if parallel {
        use rayon::prelude::*;
        (0..count).into_par_iter().for_each(f);
        return;
    }
    let _ = parallel;
    (0..count).for_each(f);
}

/// [`each`] with a scratch of each thread's own, made by `make`.
pub(crate) fn each_with<S>(
    parallel: bool,
    count: usize,
    make: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, usize) + Sync + Send,
) {
    #[cfg(feature = "rayon")]
    if parallel {
        use rayon::prelude::*;
        (0..count).into_par_iter().for_each_init(make, f);
        return;
    }
    let _ = parallel;
    let mut scratch = make();
    (0..count).for_each(|i| f(&mut scratch, i));
}

/// A new vector of `total` elements written chunk by chunk, without zeroing it first:
/// `work(index, chunk)` must write every element of chunk `index` (the `len` elements from
/// `index · len`); in parallel where rayon is on.
pub(super) fn collect_chunks<T: Send>(
    total: usize,
    len: usize,
    work: impl Fn(usize, &mut [core::mem::MaybeUninit<T>]) + Sync + Send,
) -> Vec<T> {
    collect_chunks_with(total, len, || (), |_, i, chunk| work(i, chunk))
}

/// [`collect_chunks`] with a scratch of each thread's own (see [`for_each_chunk_with`]).
pub(super) fn collect_chunks_with<T: Send, S>(
    total: usize,
    len: usize,
    make: impl Fn() -> S + Sync + Send,
    work: impl Fn(&mut S, usize, &mut [core::mem::MaybeUninit<T>]) + Sync + Send,
) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(total);
    if total > 0 {
        for_each_chunk_with(&mut out.spare_capacity_mut()[..total], len, make, work);
    }
    // SAFETY: the chunks cover `0..total` and `work` writes every element of its chunk; a
    // panic in `work` leaves the length at 0.
    unsafe { out.set_len(total) };
    out
}

/// `f(c)` for every channel, in parallel where rayon is on.
pub(super) fn per_channel<T: Send>(
    channels: usize,
    f: impl Fn(usize) -> T + Sync + Send,
) -> Vec<T> {
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        (0..channels).into_par_iter().map(f).collect()
    }
    #[cfg(not(feature = "rayon"))]
    {
        (0..channels).map(f).collect()
    }
}

/// The element-wise sum of `parts` (each thread's share of a weight gradient, all of one
/// length), or `None` where there are none.
pub(crate) fn sum_of(parts: impl IntoIterator<Item = Vec<f32>>) -> Option<Vec<f32>> {
    let mut parts = parts.into_iter();
    let mut sum = parts.next()?;
    for part in parts {
        for (s, p) in sum.iter_mut().zip(&part) {
            *s += p;
        }
    }
    Some(sum)
}

/// The mask of an AVX-512 register's first `n` lanes (`n` ≤ 16), for masked loads and stores
/// of a vector's worth or less.
#[inline(always)]
pub(super) fn first_lanes(n: usize) -> u16 {
    debug_assert!(n <= 16, "first_lanes: {n} lanes");
    ((1u32 << n) - 1) as u16
}

/// `dst.copy_from_slice(src)` for the short rows of small planes (a depthwise convolution's
/// 7 to 112 floats), inline: on MobileNetV2's 7×7 and 14×14 planes a call to `memcpy` a row
/// cost more than the copy. Blocks of eight, the last one overlapping the one before.
#[inline(always)]
pub(super) fn copy_row<T: Copy>(dst: &mut [T], src: &[T]) {
    const B: usize = 8;
    let n = dst.len();
    assert_eq!(n, src.len(), "copy_row: lengths differ");
    if n < B {
        // Four and four, overlapping, from four on; one by one below.
        if n >= 4 {
            let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
            // SAFETY: 4 ≤ n, so both four-element blocks lie inside both slices.
            unsafe {
                d.cast::<[T; 4]>()
                    .write_unaligned(s.cast::<[T; 4]>().read_unaligned());
                d.add(n - 4)
                    .cast::<[T; 4]>()
                    .write_unaligned(s.add(n - 4).cast::<[T; 4]>().read_unaligned());
            }
        } else {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = *s;
            }
        }
        return;
    }
    let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
    let mut i = 0;
    // SAFETY: every block starts at or before n - B, so it lies inside both slices.
    unsafe {
        while i + B < n {
            d.add(i)
                .cast::<[T; B]>()
                .write_unaligned(s.add(i).cast::<[T; B]>().read_unaligned());
            i += B;
        }
        d.add(n - B)
            .cast::<[T; B]>()
            .write_unaligned(s.add(n - B).cast::<[T; B]>().read_unaligned());
    }
}

/// Σ f(a[i], b[i]) in 16 lanes (so it vectorises), then in f64.
#[inline(always)]
pub(super) fn lane_sum(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    const LANES: usize = 16;
    let mut acc = [0.0f32; LANES];
    let main = a.len() / LANES * LANES;
    for (x, y) in a[..main]
        .chunks_exact(LANES)
        .zip(b[..main].chunks_exact(LANES))
    {
        for l in 0..LANES {
            acc[l] += f(x[l], y[l]);
        }
    }
    let mut sum: f64 = acc.iter().map(|&v| v as f64).sum();
    for (x, y) in a[main..].iter().zip(&b[main..]) {
        sum += f(*x, *y) as f64;
    }
    sum
}

/// Elements a thread takes at a time in the element-wise passes below (256 KiB of f32).
#[cfg(feature = "rayon")]
const ELEMENTWISE_CHUNK: usize = 64 * 1024;

/// `f(dst_part, src_part)` over matching parts of `dst` and `src` (the same length), on every
/// core once `dst` holds at least `PARALLEL_THRESHOLD` elements: the element-wise passes of
/// a network's activations (tens of MB each) otherwise run on one thread.
pub(crate) fn par_zip_mut<A: Send, B: Sync>(
    dst: &mut [A],
    src: &[B],
    f: impl Fn(&mut [A], &[B]) + Sync + Send,
) {
    debug_assert_eq!(dst.len(), src.len());
    #[cfg(feature = "rayon")]
    if dst.len() >= super::PARALLEL_THRESHOLD {
        use rayon::prelude::*;
        dst.par_chunks_mut(ELEMENTWISE_CHUNK)
            .zip(src.par_chunks(ELEMENTWISE_CHUNK))
            .for_each(|(d, s)| f(d, s));
        return;
    }
    f(dst, src)
}

/// `f(part)` over parts of `dst`, on every core for large slices (see [`par_zip_mut`]).
pub(crate) fn par_mut<A: Send>(dst: &mut [A], f: impl Fn(&mut [A]) + Sync + Send) {
    #[cfg(feature = "rayon")]
    if dst.len() >= super::PARALLEL_THRESHOLD {
        use rayon::prelude::*;
        dst.par_chunks_mut(ELEMENTWISE_CHUNK).for_each(f);
        return;
    }
    f(dst)
}

/// `src` mapped element by element into a new vector: collected on one thread for small
/// slices, written by every core from `PARALLEL_THRESHOLD` elements on (see [`par_zip_mut`])
/// straight into the vector's unwritten capacity: no zeroing pass on the calling thread, and
/// each core faults in the pages it writes.
pub(crate) fn par_map<A: Copy + Sync, B: Copy + Send>(
    src: &[A],
    f: impl Fn(A) -> B + Sync + Send,
) -> Vec<B> {
    par_write(src.len(), |dst, start| {
        for (d, &x) in dst.iter_mut().zip(&src[start..]) {
            d.write(f(x));
        }
    })
}

/// A new vector of `len` elements, every one written by `fill(part, start)`, where `part` is
/// the uninitialised elements `start..start + part.len()`; the parts are filled on every core
/// from `PARALLEL_THRESHOLD` elements on. `fill` must write every element of its part.
pub(crate) fn par_write<B: Copy + Send>(
    len: usize,
    fill: impl Fn(&mut [core::mem::MaybeUninit<B>], usize) + Sync + Send,
) -> Vec<B> {
    let mut out: Vec<B> = Vec::with_capacity(len);
    let spare = &mut out.spare_capacity_mut()[..len];
    #[cfg(feature = "rayon")]
    let parallel = len >= super::PARALLEL_THRESHOLD;
    #[cfg(not(feature = "rayon"))]
    let parallel = false;
    if parallel {
        #[cfg(feature = "rayon")]
        {
            use rayon::prelude::*;
            spare
                .par_chunks_mut(ELEMENTWISE_CHUNK)
                .enumerate()
                .for_each(|(i, part)| fill(part, i * ELEMENTWISE_CHUNK));
        }
    } else {
        fill(spare, 0);
    }
    // SAFETY: the parts above cover `0..len` and `fill` writes every element of its part;
    // a panic in `fill` leaves the length at 0 (B is Copy: nothing to drop).
    unsafe { out.set_len(len) };
    out
}

/// The output columns `[lo, hi)` whose input column `o·stride + offset` lies in `[0, input)`.
pub(super) fn valid_range(
    out: usize,
    input: usize,
    stride: usize,
    offset: isize,
) -> (usize, usize) {
    let lo = if offset < 0 {
        (offset.unsigned_abs()).div_ceil(stride)
    } else {
        0
    };
    let last = input as isize - 1 - offset;
    if last < 0 {
        return (0, 0);
    }
    let hi = (last as usize / stride + 1).min(out);
    (lo.min(hi), hi)
}
