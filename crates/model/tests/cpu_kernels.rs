//! The kernels lookalike adds to the CPU backend (`vendor/burn-flex`, see vendor/README.md)
//! against a direct f64 reference written out here, on seeded random shapes. Convolutions: odd
//! sizes, strides 1 and 2, paddings 0 to 2 (symmetric and not), dilation 1 and 2, batch 1 and
//! several, planes of several of the depthwise kernels' 128-output chunks, with and without bias,
//! forward and both gradients, for the depthwise, pointwise and dense (one group, any kernel)
//! kernels, and Winograd's F(2×2, 3×3) that 3×3 ones at stride 1 with 16 channels or more take; shapes the new kernels do not take (grouped) run too, so the generic route they
//! fall back to stays right. Batch normalisation with
//! batch statistics: output, mean, variance and the three gradients.
//!
//! Tolerance: every element within 1e-4 × (1 + the largest reference magnitude) of the
//! reference (f32 sums of at most a few thousand terms, in a different order).

use burn::prelude::*;
use burn::tensor::module::{batch_norm_train, conv_transpose2d, conv2d};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};

/// A small deterministic generator (no dependency): values in [-1, 1).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
    fn below(&mut self, n: usize) -> usize {
        ((self.next() + 1.0) / 2.0 * n as f64) as usize % n
    }
    fn values(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.next()).collect()
    }
}

/// One convolution: `[batch, channels_in, h, w]` with `groups`, `channels_out` filters of
/// `kernel²`, padding `(begin, end)` per axis.
#[derive(Debug, Clone, Copy)]
struct Case {
    batch: usize,
    channels_in: usize,
    channels_out: usize,
    groups: usize,
    h: usize,
    w: usize,
    kernel: usize,
    stride: usize,
    padding: [(usize, usize); 2],
    dilation: usize,
}

impl Case {
    fn out_size(&self, size: usize, axis: usize) -> usize {
        let (b, e) = self.padding[axis];
        (size + b + e - self.dilation * (self.kernel - 1) - 1) / self.stride + 1
    }
    fn options(&self) -> ConvOptions<2> {
        ConvOptions::new_with_padding(
            [self.stride; 2],
            self.padding,
            [self.dilation; 2],
            self.groups,
        )
    }
}

/// Reference forward and gradients (upstream gradient `g`), in f64.
fn reference(c: &Case, x: &[f64], w: &[f64], g: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (oh_n, ow_n) = (c.out_size(c.h, 0), c.out_size(c.w, 1));
    let cig = c.channels_in / c.groups;
    let cog = c.channels_out / c.groups;
    let k = c.kernel;
    let mut y = vec![0.0; c.batch * c.channels_out * oh_n * ow_n];
    let mut dx = vec![0.0; x.len()];
    let mut dw = vec![0.0; w.len()];
    for b in 0..c.batch {
        for co in 0..c.channels_out {
            let group = co / cog;
            for oh in 0..oh_n {
                for ow in 0..ow_n {
                    let yi = ((b * c.channels_out + co) * oh_n + oh) * ow_n + ow;
                    for ci in 0..cig {
                        let cin = group * cig + ci;
                        for kh in 0..k {
                            for kw in 0..k {
                                let ih = (oh * c.stride + kh * c.dilation) as isize
                                    - c.padding[0].0 as isize;
                                let iw = (ow * c.stride + kw * c.dilation) as isize
                                    - c.padding[1].0 as isize;
                                if ih < 0 || iw < 0 || ih >= c.h as isize || iw >= c.w as isize {
                                    continue;
                                }
                                let xi = ((b * c.channels_in + cin) * c.h + ih as usize) * c.w
                                    + iw as usize;
                                let wi = ((co * cig + ci) * k + kh) * k + kw;
                                y[yi] += x[xi] * w[wi];
                                dx[xi] += g[yi] * w[wi];
                                dw[wi] += g[yi] * x[xi];
                            }
                        }
                    }
                }
            }
        }
    }
    (y, dx, dw)
}

fn tensor(values: &[f64], shape: [usize; 4], device: &Device) -> Tensor<4> {
    let data: Vec<f32> = values.iter().map(|&v| v as f32).collect();
    Tensor::<4>::from_data(TensorData::new(data, shape), device)
}

fn assert_close(what: &str, c: &Case, got: Tensor<4>, expected: &[f64]) {
    let got = got.into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(got.len(), expected.len(), "{what} size, {c:?}");
    let scale = 1.0 + expected.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (i, (a, e)) in got.iter().zip(expected).enumerate() {
        assert!(
            (*a as f64 - e).abs() <= 1e-4 * scale,
            "{what}[{i}] = {a}, reference {e}, {c:?}"
        );
    }
}

fn check(c: &Case, rng: &mut Lcg) {
    check_with_bias(c, rng, false);
}

/// [`check`], with a random bias added to the output where `bias` is set.
fn check_with_bias(c: &Case, rng: &mut Lcg, bias: bool) {
    let device = Device::flex().autodiff();
    let (oh, ow) = (c.out_size(c.h, 0), c.out_size(c.w, 1));
    let x = rng.values(c.batch * c.channels_in * c.h * c.w);
    let w = rng.values(c.channels_out * (c.channels_in / c.groups) * c.kernel * c.kernel);
    let g = rng.values(c.batch * c.channels_out * oh * ow);
    let b = rng.values(c.channels_out);
    let (mut y_ref, dx_ref, dw_ref) = reference(c, &x, &w, &g);
    if bias {
        for (i, y) in y_ref.iter_mut().enumerate() {
            *y += b[i / (oh * ow) % c.channels_out];
        }
    }
    let xt = tensor(&x, [c.batch, c.channels_in, c.h, c.w], &device).require_grad();
    let wt = tensor(
        &w,
        [c.channels_out, c.channels_in / c.groups, c.kernel, c.kernel],
        &device,
    )
    .require_grad();
    let bt = bias.then(|| {
        let data: Vec<f32> = b.iter().map(|&v| v as f32).collect();
        Tensor::<1>::from_data(TensorData::new(data, [c.channels_out]), &device)
    });
    let gt = tensor(&g, [c.batch, c.channels_out, oh, ow], &device);
    let y = conv2d(xt.clone(), wt.clone(), bt, c.options());
    assert_close("output", c, y.clone().inner(), &y_ref);
    let grads = (y * gt).sum().backward();
    assert_close("input gradient", c, xt.grad(&grads).unwrap(), &dx_ref);
    assert_close("weight gradient", c, wt.grad(&grads).unwrap(), &dw_ref);
}

fn random_padding(rng: &mut Lcg, symmetric: bool) -> [(usize, usize); 2] {
    let mut side = || {
        let begin = rng.below(3);
        let end = if symmetric { begin } else { rng.below(3) };
        (begin, end)
    };
    [side(), side()]
}

#[test]
fn depthwise_forward_and_gradients_match_the_reference() {
    let mut rng = Lcg(17);
    for i in 0..24 {
        let channels = 2 + rng.below(6);
        let kernel = [3, 5][rng.below(2)];
        let case = Case {
            batch: [1, 3][i % 2],
            channels_in: channels,
            channels_out: channels,
            groups: channels,
            h: kernel + 2 + rng.below(10),
            w: kernel + 2 + rng.below(10),
            kernel,
            stride: 1 + rng.below(2),
            padding: random_padding(&mut rng, i % 3 != 0),
            dilation: if i % 5 == 4 { 2 } else { 1 },
        };
        check_with_bias(&case, &mut rng, i % 2 == 1);
    }
}

/// A depthwise case: (batch, channels, h, w, kernel, stride, padding, dilation).
type DepthwiseCase = (
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    [(usize, usize); 2],
    usize,
);

/// [`check_with_bias`] on each depthwise case, every other one with a bias.
fn check_depthwise_cases(cases: &[DepthwiseCase], rng: &mut Lcg) {
    for (i, &(batch, channels, h, w, kernel, stride, padding, dilation)) in cases.iter().enumerate()
    {
        let case = Case {
            batch,
            channels_in: channels,
            channels_out: channels,
            groups: channels,
            h,
            w,
            kernel,
            stride,
            padding,
            dilation,
        };
        check_with_bias(&case, rng, i % 2 == 0);
    }
}

/// Planes wider and taller than the kernels' 128-output chunks, as the networks' early layers
/// are: several chunks a plane, rows that do not divide them, strides 1 and 2, 3×3 and 5×5.
#[test]
fn depthwise_on_planes_larger_than_a_chunk_matches_the_reference() {
    let mut rng = Lcg(22);
    let cases: [DepthwiseCase; 6] = [
        (2, 3, 37, 61, 3, 1, [(1, 1), (1, 1)], 1),
        (1, 4, 40, 58, 3, 2, [(1, 1), (1, 1)], 1),
        (2, 2, 33, 50, 5, 2, [(2, 2), (2, 2)], 1),
        (1, 3, 30, 70, 5, 1, [(2, 2), (2, 2)], 1),
        (1, 2, 29, 44, 3, 2, [(0, 1), (0, 1)], 1),
        (2, 2, 26, 35, 3, 1, [(2, 2), (2, 2)], 2),
    ];
    check_depthwise_cases(&cases, &mut rng);
}

/// Small output planes over many channels, as MobileNetV2's and Lite1's last stages have: the
/// forward takes sixteen planes at a time there (7 × 7 and 8 × 8, and strided planes up to
/// 14 × 14), so groups of sixteen that end mid-batch, a last group of fewer, rows longer than
/// sixteen, "same" padding, 5×5 and dilation 2.
#[test]
fn depthwise_on_small_planes_of_many_channels_matches_the_reference() {
    let mut rng = Lcg(23);
    let cases: [DepthwiseCase; 7] = [
        (2, 21, 7, 7, 3, 1, [(1, 1), (1, 1)], 1),
        (1, 40, 14, 14, 3, 2, [(0, 1), (0, 1)], 1),
        (3, 17, 8, 8, 5, 1, [(2, 2), (2, 2)], 1),
        (2, 33, 15, 15, 5, 2, [(2, 2), (2, 2)], 1),
        (1, 18, 8, 8, 3, 1, [(2, 2), (2, 2)], 2),
        (2, 16, 28, 28, 3, 2, [(1, 1), (1, 1)], 1),
        (1, 5, 9, 6, 3, 2, [(1, 0), (0, 2)], 1),
    ];
    check_depthwise_cases(&cases, &mut rng);
}

#[test]
fn pointwise_forward_and_gradients_match_the_reference() {
    let mut rng = Lcg(18);
    for i in 0..20 {
        // Small planes: one image's planes are its columns (batch 1), or several images share
        // a buffer (batch 4); every fifth case has planes past 512 positions, one image a task
        // (batch 3) or a lone image's columns cut into tiles over the threads (batch 1).
        let large = i % 5 == 4;
        let side = |rng: &mut Lcg| {
            if large {
                23 + rng.below(18)
            } else {
                1 + rng.below(13)
            }
        };
        let case = Case {
            batch: if large {
                [3, 1][i / 5 % 2]
            } else {
                [1, 4][i % 2]
            },
            channels_in: 1 + rng.below(40),
            channels_out: 1 + rng.below(40),
            groups: 1,
            h: side(&mut rng),
            w: side(&mut rng),
            kernel: 1,
            stride: 1,
            padding: [(0, 0); 2],
            dilation: 1,
        };
        // With a bias the GEMM accumulates onto it; without one it writes every output.
        check_with_bias(&case, &mut rng, i % 4 >= 2);
    }
}

/// A lone image's 1×1 convolutions deep enough for the one-thread kernel's products
/// (`pointwise.rs`) to run over two blocks of 128 input channels, with output channels past a
/// multiple of six and planes past a multiple of 16 and of 64 columns: small planes (channel
/// blocks) and a large one (column tiles); then one deeper than the kernel takes, and a batch.
#[test]
fn deep_pointwise_products_match_the_reference() {
    let mut rng = Lcg(31);
    // (batch, channels in, channels out, h, w)
    let cases = [
        (1, 250, 13, 15, 11),
        (1, 130, 25, 9, 9),
        (1, 200, 7, 7, 7),
        (1, 140, 11, 40, 37),
        (1, 300, 5, 6, 6),
        (3, 200, 17, 13, 5),
    ];
    for (i, (batch, channels_in, channels_out, h, w)) in cases.into_iter().enumerate() {
        let case = Case {
            batch,
            channels_in,
            channels_out,
            groups: 1,
            h,
            w,
            kernel: 1,
            stride: 1,
            padding: [(0, 0); 2],
            dilation: 1,
        };
        check_with_bias(&case, &mut rng, i % 2 == 0);
    }
}

/// Dense convolutions (one group): kernels 1 to 7, strides 1 to 3, paddings symmetric and not,
/// dilation 1 and 2, batch 1 (the GEMM gets the threads) and several (images in parallel).
#[test]
fn dense_forward_and_gradients_match_the_reference() {
    let mut rng = Lcg(23);
    for i in 0..28 {
        let kernel = [1, 3, 3, 5, 7][rng.below(5)];
        let dilation = if i % 7 == 6 { 2 } else { 1 };
        let reach = dilation * (kernel - 1) + 1;
        let case = Case {
            batch: [1, 3, 4][i % 3],
            channels_in: 1 + rng.below(9),
            channels_out: 1 + rng.below(9),
            groups: 1,
            h: reach + rng.below(12),
            w: reach + rng.below(12),
            kernel,
            stride: if kernel == 1 { 2 } else { 1 + rng.below(3) },
            padding: random_padding(&mut rng, i % 3 != 0),
            dilation,
        };
        check_with_bias(&case, &mut rng, i % 2 == 0);
    }
}

/// 3×3 convolutions at stride 1 with 16 channels or more, which go through Winograd's F(4×4,
/// 3×3) (`vendor/burn-flex/src/ops/winograd4.rs`) or, where it saves no products, F(2×2, 3×3)
/// (`vendor/burn-flex/src/ops/winograd.rs`), forward and for the input gradient: odd and
/// even sizes, paddings 0 to 2 (symmetric and not), one image (its steps on every core) and
/// several (images in parallel, small planes sharing GEMMs), and a plane cut into bands of
/// block rows; the weight gradient both in chunks with sums of each thread's own and, for the
/// widest case, in bands onto shared sums. The transposed convolution called as such takes
/// the same route.
#[test]
fn winograd_convolutions_match_the_reference() {
    let mut rng = Lcg(29);
    // (batch, channels in, channels out, h, w, padding)
    let cases = [
        (1, 16, 24, 23, 19, [(1, 1), (1, 1)]),
        (4, 17, 16, 9, 8, [(0, 2), (2, 1)]),
        (6, 20, 18, 7, 7, [(1, 1), (1, 1)]),
        (5, 16, 16, 12, 13, [(2, 0), (0, 2)]),
        (3, 24, 17, 30, 21, [(0, 0), (1, 1)]),
        (1, 64, 48, 70, 67, [(1, 1), (1, 1)]),
        // Outputs six and two wide: F(2×2, 3×3) (no fewer products by F(4×4, 3×3)); every
        // case above goes by F(4×4, 3×3).
        (8, 16, 20, 6, 6, [(1, 1), (1, 1)]),
        (20, 16, 16, 4, 7, [(0, 0), (2, 1)]),
        // Wide enough (16 × 272 × 256 sums) that the weight gradient shares one set of sums
        // between the threads instead of each thread keeping its own.
        (2, 272, 256, 7, 9, [(1, 1), (1, 1)]),
    ];
    for (i, (batch, channels_in, channels_out, h, w, padding)) in cases.into_iter().enumerate() {
        let case = Case {
            batch,
            channels_in,
            channels_out,
            groups: 1,
            h,
            w,
            kernel: 3,
            stride: 1,
            padding,
            dilation: 1,
        };
        check_with_bias(&case, &mut rng, i % 2 == 0);
    }
    // conv_transpose2d itself, with a bias: the input gradient of a padding-1 convolution.
    let device = Device::flex();
    let (batch, channels, channels_out, h, w) = (2, 16, 20, 13, 11);
    let x = rng.values(batch * channels * h * w);
    let wv = rng.values(channels * channels_out * 9);
    let bias = rng.values(channels_out);
    let mut expected = vec![0.0; batch * channels_out * h * w];
    for b in 0..batch {
        for co in 0..channels_out {
            for oy in 0..h {
                for ox in 0..w {
                    let mut sum = bias[co];
                    for ci in 0..channels {
                        for i in 0..3 {
                            for j in 0..3 {
                                let (iy, ix) = (oy + 1, ox + 1);
                                if iy < i || ix < j || iy - i >= h || ix - j >= w {
                                    continue;
                                }
                                sum += x[((b * channels + ci) * h + iy - i) * w + ix - j]
                                    * wv[((ci * channels_out + co) * 3 + i) * 3 + j];
                            }
                        }
                    }
                    expected[((b * channels_out + co) * h + oy) * w + ox] = sum;
                }
            }
        }
    }
    let bias_t = Tensor::<1>::from_data(
        TensorData::new(
            bias.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            [channels_out],
        ),
        &device,
    );
    let got = conv_transpose2d(
        tensor(&x, [batch, channels, h, w], &device),
        tensor(&wv, [channels, channels_out, 3, 3], &device),
        Some(bias_t),
        ConvTransposeOptions::new([1; 2], [1; 2], [0; 2], [1; 2], 1),
    );
    let case = Case {
        batch,
        channels_in: channels,
        channels_out,
        groups: 1,
        h,
        w,
        kernel: 3,
        stride: 1,
        padding: [(1, 1); 2],
        dilation: 1,
    };
    assert_close("transposed output", &case, got, &expected);
}

/// Dense convolutions on planes large enough that the column buffer (4 MiB) is filled in
/// several tiles of output rows, as ResNet's first layers are.
#[test]
fn dense_on_planes_of_several_tiles_matches_the_reference() {
    let mut rng = Lcg(24);
    // (batch, channels in, channels out, h, w, kernel, stride, padding)
    let cases = [
        (1, 12, 3, 130, 101, 3, 1, [(1, 1), (1, 1)]),
        (2, 3, 4, 250, 233, 7, 2, [(3, 3), (3, 3)]),
        (3, 8, 2, 140, 117, 3, 1, [(0, 1), (1, 0)]),
        // A stem at batch 1: its output rows cut into tiles over the threads, each with a
        // column buffer of its own.
        (1, 3, 10, 61, 57, 3, 2, [(0, 1), (0, 1)]),
        // Stems at batch 1 on planes wide enough that each tile's column buffer is built a few
        // rows at a time (the last chunk of a tile shorter), an odd width split into phases.
        (1, 3, 10, 227, 225, 3, 2, [(0, 1), (0, 1)]),
        (1, 3, 8, 230, 229, 7, 2, [(3, 3), (3, 3)]),
    ];
    for (i, (batch, channels_in, channels_out, h, w, kernel, stride, padding)) in
        cases.into_iter().enumerate()
    {
        let case = Case {
            batch,
            channels_in,
            channels_out,
            groups: 1,
            h,
            w,
            kernel,
            stride,
            padding,
            dilation: 1,
        };
        check_with_bias(&case, &mut rng, i % 2 == 0);
    }
}

#[test]
fn other_convolutions_keep_the_generic_route_right() {
    let mut rng = Lcg(19);
    let cases = [
        // Grouped, not depthwise.
        (2, 4, 6, 2, 3, 1, [(1, 1), (1, 1)]),
        // 1×1 with asymmetric padding (its weight gradient keeps Burn's route).
        (1, 5, 7, 1, 1, 1, [(1, 0), (0, 1)]),
        // Depthwise with a channel multiplier (two filters a channel).
        (1, 3, 6, 3, 3, 1, [(1, 1), (1, 1)]),
    ];
    for (batch, channels_in, channels_out, groups, kernel, stride, padding) in cases {
        let case = Case {
            batch,
            channels_in,
            channels_out,
            groups,
            h: 9,
            w: 7,
            kernel,
            stride,
            padding,
            dilation: 1,
        };
        check(&case, &mut rng);
    }
}

/// Transposed convolutions called directly (not as a gradient) take the same kernels: bias
/// and output padding included.
#[test]
fn depthwise_and_pointwise_transposed_convolutions_match_the_reference() {
    let mut rng = Lcg(20);
    let device = Device::flex();
    // (batch, channels, out channels a group, groups, kernel, stride, padding, padding_out, bias)
    let cases = [
        (2, 5, 1, 5, 3, 2, 1, 1, true),
        (1, 4, 1, 4, 5, 1, 2, 0, false),
        (3, 6, 1, 6, 3, 2, 0, 0, true),
        (2, 7, 9, 1, 1, 1, 0, 0, false),
        (1, 7, 9, 1, 1, 1, 0, 0, true),
        (4, 7, 9, 1, 1, 1, 0, 0, true),
        // Dense: 3×3 strided with output padding, 5×5, a 1×1 strided.
        (2, 4, 3, 1, 3, 2, 1, 1, true),
        (1, 3, 5, 1, 5, 1, 2, 0, false),
        (3, 5, 2, 1, 1, 2, 0, 1, true),
    ];
    for (batch, channels, cog, groups, k, stride, pad, pad_out, with_bias) in cases {
        let (h, w) = (6, 5);
        let out = |size: usize| (size - 1) * stride + (k - 1) + pad_out + 1 - 2 * pad;
        let (oh, ow) = (out(h), out(w));
        let channels_out = cog * groups;
        let cig = channels / groups;
        let x = rng.values(batch * channels * h * w);
        let wv = rng.values(channels * cog * k * k);
        let bias = rng.values(channels_out);
        let mut expected = vec![0.0; batch * channels_out * oh * ow];
        for b in 0..batch {
            for co in 0..channels_out {
                for i in 0..oh * ow {
                    expected[(b * channels_out + co) * oh * ow + i] =
                        if with_bias { bias[co] } else { 0.0 };
                }
            }
            for ci in 0..channels {
                let group = ci / cig;
                for c in 0..cog {
                    let co = group * cog + c;
                    for ih in 0..h {
                        for iw in 0..w {
                            for kh in 0..k {
                                for kw in 0..k {
                                    let o_h = (ih * stride + kh) as isize - pad as isize;
                                    let o_w = (iw * stride + kw) as isize - pad as isize;
                                    if o_h < 0
                                        || o_w < 0
                                        || o_h >= oh as isize
                                        || o_w >= ow as isize
                                    {
                                        continue;
                                    }
                                    expected[((b * channels_out + co) * oh + o_h as usize) * ow
                                        + o_w as usize] += x
                                        [((b * channels + ci) * h + ih) * w + iw]
                                        * wv[((ci * cog + c) * k + kh) * k + kw];
                                }
                            }
                        }
                    }
                }
            }
        }
        let bias_t = with_bias.then(|| {
            let data: Vec<f32> = bias.iter().map(|&v| v as f32).collect();
            Tensor::<1>::from_data(TensorData::new(data, [channels_out]), &device)
        });
        let got = conv_transpose2d(
            tensor(&x, [batch, channels, h, w], &device),
            tensor(&wv, [channels, cog, k, k], &device),
            bias_t,
            ConvTransposeOptions::new([stride; 2], [pad; 2], [pad_out; 2], [1; 2], groups),
        );
        let case = Case {
            batch,
            channels_in: channels,
            channels_out,
            groups,
            h,
            w,
            kernel: k,
            stride,
            padding: [(pad, pad); 2],
            dilation: 1,
        };
        assert_close("transposed output", &case, got, &expected);
    }
}

/// Batch normalisation with batch statistics against the formulas, on `[batch, channels, h, w]`
/// inputs, batch 1 and several, planes down to 1×1.
#[test]
fn batch_norm_train_forward_and_gradients_match_the_reference() {
    let mut rng = Lcg(21);
    let device = Device::flex().autodiff();
    for (batch, channels, spatial) in [
        (1, 3, vec![5, 7]),
        (4, 6, vec![9, 3]),
        (2, 5, vec![11]),
        (3, 2, vec![1, 1]),
    ] {
        let epsilon = 1e-3;
        let plane: usize = spatial.iter().product();
        let n = (batch * plane) as f64;
        let x: Vec<f64> = rng
            .values(batch * channels * plane)
            .iter()
            .map(|v| 3.0 * v + 0.5)
            .collect();
        let gamma = rng.values(channels);
        let beta = rng.values(channels);
        let g = rng.values(x.len());
        let at = |b: usize, c: usize, i: usize| (b * channels + c) * plane + i;
        let (mut y, mut dx) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        let (mut mean, mut var, mut dgamma, mut dbeta) = (vec![], vec![], vec![], vec![]);
        for c in 0..channels {
            let idx: Vec<usize> = (0..batch)
                .flat_map(|b| (0..plane).map(move |i| at(b, c, i)))
                .collect();
            let m = idx.iter().map(|&i| x[i]).sum::<f64>() / n;
            let v = idx.iter().map(|&i| (x[i] - m).powi(2)).sum::<f64>() / n;
            let sigma = (v + epsilon).sqrt();
            let xhat = |i: usize| (x[i] - m) / sigma;
            let sum_g: f64 = idx.iter().map(|&i| g[i]).sum();
            let sum_gx: f64 = idx.iter().map(|&i| g[i] * xhat(i)).sum();
            for &i in &idx {
                y[i] = xhat(i) * gamma[c] + beta[c];
                dx[i] = gamma[c] / sigma * (g[i] - sum_g / n - xhat(i) * sum_gx / n);
            }
            mean.push(m);
            var.push(v);
            dgamma.push(sum_gx);
            dbeta.push(sum_g);
        }
        let c = Case {
            batch,
            channels_in: channels,
            channels_out: channels,
            groups: 1,
            h: spatial[0],
            w: *spatial.get(1).unwrap_or(&1),
            kernel: 1,
            stride: 1,
            padding: [(0, 0); 2],
            dilation: 1,
        };
        let f32s = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
        let vector = |v: &[f64]| {
            Tensor::<1>::from_data(TensorData::new(f32s(v), [v.len()]), &device).require_grad()
        };
        let (gamma_t, beta_t) = (vector(&gamma), vector(&beta));
        let shape4 = [batch, channels, c.h, c.w];
        let xt = Tensor::<4>::from_data(TensorData::new(f32s(&x), shape4), &device).require_grad();
        let out = batch_norm_train(xt.clone(), gamma_t.clone(), beta_t.clone(), epsilon);
        assert_close("output", &c, out.output.clone().inner(), &y);
        let as_column = |t: Tensor<1>| t.reshape([1, channels, 1, 1]);
        assert_close("mean", &c, as_column(out.mean.inner()), &mean);
        assert_close("variance", &c, as_column(out.variance.inner()), &var);
        let gt = Tensor::<4>::from_data(TensorData::new(f32s(&g), shape4), &device);
        let grads = (out.output * gt).sum().backward();
        assert_close("input gradient", &c, xt.grad(&grads).unwrap(), &dx);
        assert_close(
            "gamma gradient",
            &c,
            as_column(gamma_t.grad(&grads).unwrap()),
            &dgamma,
        );
        assert_close(
            "beta gradient",
            &c,
            as_column(beta_t.grad(&grads).unwrap()),
            &dbeta,
        );
    }
}

/// The element-wise passes split large tensors between threads (`planes::par_zip_mut`): on
/// sizes below, at and above the split (a whole number of parts and not), in place and into a
/// new tensor, each result is exactly the element-wise one.
#[test]
fn element_wise_passes_over_large_tensors_are_exact() {
    let device = Device::flex();
    let mut rng = Lcg(29);
    for n in [1000, 256 * 1024, 256 * 1024 + 64 * 1024 * 3 + 17] {
        let a: Vec<f32> = rng.values(n).iter().map(|v| (v * 8.0) as f32).collect();
        let b: Vec<f32> = rng.values(n).iter().map(|v| (v * 8.0) as f32).collect();
        let t = |v: &[f32]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [n]), &device);
        let same = |what: &str, got: Tensor<1>, expected: Vec<f32>| {
            let got = got.into_data().try_to_vec::<f32>().unwrap();
            assert!(got == expected, "{what}, {n} elements");
        };
        let relu6 = |x: f32| x.clamp(0.0, 6.0);
        // In place (the tensor is unique) and into a new tensor (a clone is kept).
        same(
            "relu6 in place",
            t(&a).clamp_min(0.0).clamp_max(6.0),
            a.iter().map(|&x| relu6(x)).collect(),
        );
        let kept = t(&a);
        same(
            "relu6 copied",
            kept.clone().clamp_min(0.0).clamp_max(6.0),
            a.iter().map(|&x| relu6(x)).collect(),
        );
        drop(kept);
        same(
            "add",
            t(&a) + t(&b),
            a.iter().zip(&b).map(|(x, y)| x + y).collect(),
        );
        let lhs = t(&a);
        same(
            "sub into rhs",
            lhs.clone() - t(&b),
            a.iter().zip(&b).map(|(x, y)| x - y).collect(),
        );
        same(
            "mul",
            lhs.clone() * t(&b),
            a.iter().zip(&b).map(|(x, y)| x * y).collect(),
        );
        same(
            "div into rhs",
            lhs / t(&b),
            a.iter().zip(&b).map(|(x, y)| x / y).collect(),
        );
        let mask = t(&a).greater_elem(2.0);
        same(
            "mask_fill",
            t(&b).mask_fill(mask, 0.0),
            a.iter()
                .zip(&b)
                .map(|(x, y)| if *x > 2.0 { 0.0 } else { *y })
                .collect(),
        );
    }
}

/// ReLU forward into a new tensor (its input kept, as autodiff keeps it) and its gradient, in
/// place and into a new tensor (`relu(a) + relu(b)` hands both backward steps one shared
/// gradient), split between threads from `PARALLEL_THRESHOLD` elements on: exact, with NaN
/// inputs kept by the forward and passing the gradient through, as PyTorch does.
#[test]
fn relu_and_its_gradient_over_large_tensors_are_exact() {
    let device = Device::flex().autodiff();
    let mut rng = Lcg(31);
    for n in [1000, 256 * 1024, 256 * 1024 + 64 * 1024 * 3 + 17] {
        let mut values = |nans: &[usize]| {
            let mut v: Vec<f32> = rng.values(n).iter().map(|v| (v * 8.0) as f32).collect();
            for &i in nans {
                v[i] = f32::NAN;
            }
            v
        };
        let (a, b, g) = (values(&[3, n - 1]), values(&[n / 2]), values(&[]));
        let t = |v: &[f32]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [n]), &device);
        let bits = |t: Tensor<1>| -> Vec<u32> {
            let values = t.into_data().try_to_vec::<f32>().unwrap();
            values.iter().map(|v| v.to_bits()).collect()
        };
        let expected = |x: &[f32], f: &dyn Fn(f32, f32) -> f32| -> Vec<u32> {
            x.iter().zip(&g).map(|(&x, &g)| f(x, g).to_bits()).collect()
        };
        let kept = t(&a);
        assert!(
            bits(burn::tensor::activation::relu(kept.clone()))
                == expected(&a, &|x, _| { if x.is_nan() || x > 0.0 { x } else { 0.0 } }),
            "relu into a new tensor, {n} elements"
        );
        let (ta, tb) = (t(&a).require_grad(), t(&b).require_grad());
        let relu = burn::tensor::activation::relu;
        let loss = ((relu(ta.clone()) + relu(tb.clone())) * t(&g)).sum();
        let grads = loss.backward();
        let gradient = |x: f32, g: f32| if x.is_nan() || x > 0.0 { g } else { 0.0 };
        assert!(
            bits(ta.grad(&grads).unwrap()) == expected(&a, &gradient),
            "relu gradient, first operand, {n} elements"
        );
        assert!(
            bits(tb.grad(&grads).unwrap()) == expected(&b, &gradient),
            "relu gradient, second operand, {n} elements"
        );
    }
}

/// Max pooling without indices (the inference path) and with them (training), forward and
/// gradient, against a direct reference: kernels 1 to 3 (ResNet's 3×3 at stride 2, padding 1
/// among them), strides 1 and 2, padding 0 and 1, floor and ceil output sizes, one NaN that
/// must win its windows, ties (values rounded to tenths) that go to the window's first tap in
/// row-major order.
#[test]
fn max_pool_matches_the_reference() {
    use burn::tensor::module::{max_pool2d, max_pool2d_with_indices};
    use burn::tensor::ops::MaxPoolOptions;
    let mut rng = Lcg(25);
    let device = Device::flex();
    let autodiff = Device::flex().autodiff();
    for i in 0..24 {
        let (kernel, stride, padding) = match i {
            // ResNet's stem pooling, at an even and an odd size.
            0 | 1 => (3, 2, 1),
            _ => {
                let kernel = 1 + rng.below(3);
                (kernel, 1 + rng.below(2), rng.below(2).min(kernel / 2))
            }
        };
        let ceil = i % 2 == 1;
        let (batch, channels) = (1 + rng.below(2), 1 + rng.below(3));
        let (h, w) = (kernel + rng.below(9), kernel + rng.below(9));
        let mut x = rng.values(batch * channels * h * w);
        if i % 3 == 2 {
            x.iter_mut().for_each(|v| *v = (*v * 10.0).round() / 10.0);
        }
        if i % 4 == 0 {
            let at = rng.below(x.len());
            x[at] = f64::NAN;
        }
        let out_size = |size: usize| {
            let span = size + 2 * padding - kernel;
            let mut out = if ceil {
                span.div_ceil(stride)
            } else {
                span / stride
            } + 1;
            if ceil && (out - 1) * stride >= size + padding {
                out -= 1;
            }
            out
        };
        let (oh, ow) = (out_size(h), out_size(w));
        let mut expected = vec![f64::NEG_INFINITY; batch * channels * oh * ow];
        let mut expected_index = vec![-1i64; expected.len()];
        for p in 0..batch * channels {
            for y in 0..oh {
                for xo in 0..ow {
                    let at = (p * oh + y) * ow + xo;
                    let (e, index) = (&mut expected[at], &mut expected_index[at]);
                    for ky in 0..kernel {
                        for kx in 0..kernel {
                            let iy = (y * stride + ky) as isize - padding as isize;
                            let ix = (xo * stride + kx) as isize - padding as isize;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            let v = x[(p * h + iy as usize) * w + ix as usize];
                            if *index < 0 || v > *e || v.is_nan() {
                                *e = v;
                                *index = iy as i64 * w as i64 + ix as i64;
                            }
                        }
                    }
                }
            }
        }
        let g = rng.values(expected.len());
        let mut expected_grad = vec![0.0; x.len()];
        for (at, (&index, &g)) in expected_index.iter().zip(&g).enumerate() {
            expected_grad[at / (oh * ow) * h * w + index as usize] += g;
        }
        let mut options = MaxPoolOptions::new([kernel; 2]);
        options.stride = [stride; 2];
        options.padding = [(padding, padding); 2];
        options.ceil_mode = ceil;
        let values = |t: Tensor<4>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        let close = |what: &str, got: &[f32], expected: &[f64]| {
            assert_eq!(got.len(), expected.len(), "case {i}, {what}");
            for (j, (g, e)) in got.iter().zip(expected).enumerate() {
                assert!(
                    (e.is_nan() && g.is_nan()) || (*g as f64 - e).abs() < 1e-6,
                    "case {i}, {what} {j}: {g} against {e}"
                );
            }
        };
        let shape = [batch, channels, h, w];
        close(
            "output",
            &values(max_pool2d(tensor(&x, shape, &device), options.clone())),
            &expected,
        );
        let (got, got_index) = max_pool2d_with_indices(tensor(&x, shape, &device), options.clone());
        close("output with indices", &values(got), &expected);
        let got_index = got_index
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .unwrap();
        assert_eq!(got_index, expected_index, "case {i}, indices");
        let xt = tensor(&x, shape, &autodiff).require_grad();
        let gt = tensor(&g, [batch, channels, oh, ow], &autodiff);
        let grads = (max_pool2d(xt.clone(), options) * gt).sum().backward();
        close(
            "input gradient",
            &values(xt.grad(&grads).unwrap()),
            &expected_grad,
        );
    }
}

/// The fused inference convolution (`model::fused::conv2d_fused`: bias, then a residual, then
/// ReLU or ReLU6, applied as the kernels write their output) against the reference followed by
/// the same steps in f64: depthwise (3×3 and 5×5, strides 1 and 2, planes of one chunk and of
/// several), pointwise (batch 1 and several, planes past 512 positions), dense 3×3 and 7×7
/// (batch 1, several, and a plane of several column-buffer tiles) and a grouped convolution
/// (the generic route: conv2d, add, clamp). Inputs are scaled so that ReLU6 clips; a NaN in
/// the residual stays NaN through the clamp, as `relu` then `clamp_max` keep it.
#[test]
fn fused_convolutions_match_the_reference() {
    use model::fused::conv2d_fused;
    use model::layers::Activation;
    let device = Device::flex();
    let mut rng = Lcg(31);
    // (batch, channels in, channels out, groups, h, w, kernel, stride, padding)
    let cases = [
        (2, 6, 6, 6, 9, 11, 3, 1, [(1, 1), (1, 1)]),
        (1, 5, 5, 5, 40, 58, 3, 2, [(0, 1), (0, 1)]),
        (3, 4, 4, 4, 33, 21, 5, 2, [(2, 2), (2, 2)]),
        (1, 7, 9, 1, 8, 13, 1, 1, [(0, 0), (0, 0)]),
        (4, 12, 5, 1, 5, 7, 1, 1, [(0, 0), (0, 0)]),
        (3, 9, 11, 1, 27, 30, 1, 1, [(0, 0), (0, 0)]),
        // A lone image's 1×1 columns in tiles over the threads, the last one short.
        (1, 9, 7, 1, 37, 41, 1, 1, [(0, 0), (0, 0)]),
        (1, 5, 8, 1, 14, 17, 3, 1, [(1, 1), (1, 1)]),
        (3, 4, 6, 1, 15, 12, 3, 2, [(1, 1), (1, 1)]),
        (2, 3, 4, 1, 31, 29, 7, 2, [(3, 3), (3, 3)]),
        (1, 12, 3, 1, 130, 101, 3, 1, [(1, 1), (1, 1)]),
        (2, 6, 4, 2, 9, 10, 3, 1, [(1, 1), (1, 1)]),
        // Winograd (3×3, stride 1, 16 channels or more): one image, and images sharing GEMMs.
        (1, 16, 20, 1, 17, 19, 3, 1, [(1, 1), (1, 1)]),
        (4, 18, 16, 1, 9, 8, 3, 1, [(0, 1), (1, 1)]),
    ];
    for (i, (batch, channels_in, channels_out, groups, h, w, kernel, stride, padding)) in
        cases.into_iter().enumerate()
    {
        let c = Case {
            batch,
            channels_in,
            channels_out,
            groups,
            h,
            w,
            kernel,
            stride,
            padding,
            dilation: 1,
        };
        let (oh, ow) = (c.out_size(c.h, 0), c.out_size(c.w, 1));
        let out_shape = [c.batch, c.channels_out, oh, ow];
        let x: Vec<f64> = rng
            .values(c.batch * c.channels_in * c.h * c.w)
            .iter()
            .map(|v| v * 4.0)
            .collect();
        let w = rng.values(c.channels_out * (c.channels_in / c.groups) * c.kernel * c.kernel);
        let b = rng.values(c.channels_out);
        let mut r: Vec<f64> = rng
            .values(out_shape.iter().product())
            .iter()
            .map(|v| v * 3.0)
            .collect();
        let nan_at = i * 7 % r.len();
        r[nan_at] = f64::NAN;
        let (y, _, _) = reference(&c, &x, &w, &vec![0.0; r.len()]);
        let plane = oh * ow;
        for residual in [false, true] {
            for activation in [Activation::None, Activation::Relu, Activation::Relu6] {
                let expected: Vec<f64> = y
                    .iter()
                    .enumerate()
                    .map(|(j, v)| {
                        let v =
                            v + b[j / plane % c.channels_out] + if residual { r[j] } else { 0.0 };
                        match activation {
                            Activation::None => v,
                            Activation::Relu => {
                                if v < 0.0 {
                                    0.0
                                } else {
                                    v
                                }
                            }
                            Activation::Relu6 => v.clamp(0.0, 6.0),
                        }
                    })
                    .collect();
                let bias = Tensor::<1>::from_data(
                    TensorData::new(
                        b.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                        [c.channels_out],
                    ),
                    &device,
                );
                let got = conv2d_fused(
                    tensor(&x, [c.batch, c.channels_in, c.h, c.w], &device),
                    tensor(
                        &w,
                        [c.channels_out, c.channels_in / c.groups, c.kernel, c.kernel],
                        &device,
                    ),
                    bias,
                    residual.then(|| tensor(&r, out_shape, &device)),
                    c.options(),
                    activation,
                );
                let got = got.into_data().try_to_vec::<f32>().unwrap();
                assert_eq!(got.len(), expected.len(), "{c:?}");
                let finite: Vec<f64> = expected.iter().copied().filter(|v| v.is_finite()).collect();
                let scale = 1.0 + finite.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                for (j, (a, e)) in got.iter().zip(&expected).enumerate() {
                    let what = format!("fused[{j}], residual {residual}, {activation:?}, {c:?}");
                    if e.is_nan() {
                        assert!(a.is_nan(), "{what} = {a}, reference NaN");
                    } else {
                        assert!(
                            (*a as f64 - e).abs() <= 1e-4 * scale,
                            "{what} = {a}, reference {e}"
                        );
                    }
                }
                if activation == Activation::Relu6 {
                    assert!(got.contains(&6.0), "ReLU6 never clipped: {c:?}");
                }
            }
        }
    }
}

/// An inverted residual in bands of rows (`model::fused::inverted_residual_fused`,
/// `vendor/burn-flex/src/ops/expand_depthwise.rs`: expansion, depthwise convolution and
/// projection) against the three fused convolutions one after the other (checked against the
/// reference above): 3×3 and 5×5, strides 1 and 2, symmetric and TensorFlow-"same" padding,
/// with and without the block's input added, two bands an image and a plane of several bands
/// by the cache budget (top, middle and bottom bands); and the two cases that decline the bands
/// and run the convolutions as they are: a lone image, and a 5×5 at stride 1 on a small plane,
/// whose bands would overlap too much. ReLU6 after the first two, on inputs that make it clip;
/// the projection linear, as in both families.
#[test]
fn inverted_residual_in_bands_matches_the_three_convolutions() {
    use model::fused::{ConvParts, conv2d_fused, inverted_residual_fused};
    use model::layers::Activation;
    let device = Device::flex();
    let mut rng = Lcg(47);
    // (batch, channels in, expanded, channels out, h, w, kernel, stride, padding)
    let cases = [
        (2, 5, 12, 5, 15, 13, 3, 1, [(1, 1), (1, 1)]),
        (2, 4, 10, 7, 41, 37, 3, 2, [(0, 1), (0, 1)]),
        (1, 4, 10, 6, 19, 17, 3, 2, [(0, 1), (0, 1)]),
        (3, 6, 18, 9, 23, 29, 5, 2, [(2, 2), (2, 2)]),
        (2, 3, 9, 3, 11, 9, 5, 1, [(2, 2), (2, 2)]),
        (2, 8, 64, 8, 120, 130, 3, 1, [(1, 1), (1, 1)]),
        (2, 8, 64, 11, 120, 130, 3, 1, [(1, 1), (1, 1)]),
        (5, 4, 24, 6, 28, 28, 3, 2, [(0, 1), (0, 1)]),
    ];
    for (batch, cin, expanded, cout, h, w, kernel, stride, padding) in cases {
        let residual = cin == cout && stride == 1;
        let what = format!(
            "batch {batch}, {cin} → {expanded} → {cout}, {h}×{w}, {kernel}×{kernel}/{stride}"
        );
        let x = rng.values(batch * cin * h * w);
        let x: Vec<f64> = x.iter().map(|v| 4.0 * v).collect();
        let w1 = rng.values(expanded * cin);
        let b1 = rng.values(expanded);
        let w2 = rng.values(expanded * kernel * kernel);
        let b2 = rng.values(expanded);
        let w3 = rng.values(cout * expanded);
        let b3 = rng.values(cout);
        let one = |values: &[f64]| {
            let data: Vec<f32> = values.iter().map(|&v| v as f32).collect();
            Tensor::<1>::from_data(TensorData::new(data, [values.len()]), &device)
        };
        let parts = || {
            let part = |weight, bias: &[f64], activation| ConvParts {
                weight,
                bias: one(bias),
                activation,
            };
            (
                part(
                    tensor(&w1, [expanded, cin, 1, 1], &device),
                    &b1,
                    Activation::Relu6,
                ),
                part(
                    tensor(&w2, [expanded, 1, kernel, kernel], &device),
                    &b2,
                    Activation::Relu6,
                ),
                part(
                    tensor(&w3, [cout, expanded, 1, 1], &device),
                    &b3,
                    Activation::None,
                ),
            )
        };
        let options = ConvOptions::new_with_padding([stride, stride], padding, [1, 1], expanded);
        let input = || tensor(&x, [batch, cin, h, w], &device);
        let (e, d, p) = parts();
        let got = inverted_residual_fused(input(), e, d, options.clone(), p, residual);
        let (e, d, p) = parts();
        let pointwise = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
        let y = conv2d_fused(
            input(),
            e.weight,
            e.bias,
            None,
            pointwise.clone(),
            e.activation,
        );
        let y = conv2d_fused(y, d.weight, d.bias, None, options, d.activation);
        let clipped = y
            .clone()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
            .contains(&6.0);
        assert!(clipped, "ReLU6 never clipped: {what}");
        let shortcut = residual.then(input);
        let expected = conv2d_fused(y, p.weight, p.bias, shortcut, pointwise, p.activation);
        assert_eq!(got.dims(), expected.dims(), "{what}");
        let got = got.into_data().try_to_vec::<f32>().unwrap();
        let expected = expected.into_data().try_to_vec::<f32>().unwrap();
        // Each output sums `expanded` products of terms below 6 · 1 in size.
        let tolerance = 1e-5 * 6.0 * expanded as f32;
        for (j, (a, e)) in got.iter().zip(&expected).enumerate() {
            assert!(
                (a - e).abs() <= tolerance.max(1e-4),
                "{what}: [{j}] {a}, expected {e}"
            );
        }
    }
}
