//! The fused inference convolution (`model::fused::conv2d_fused`: bias, residual and ReLU/ReLU6
//! applied as the kernels write their output) against the same convolution followed by the
//! separate passes the networks made before (`relu`, `clamp_max`, `+ residual`), on the layer
//! shapes of EfficientNet-Lite1 at 240 px and ResNet-18 at 224 px, in one process: the two
//! variants alternate, and each figure is the median of several rounds.
//!
//! `cargo run --release -p benches --example fused -- [batch] [rounds]` (default 16, 7)

use std::time::Instant;

use burn::prelude::*;
use burn::tensor::ops::ConvOptions;
use model::fused::conv2d_fused;
use model::layers::Activation;

struct Layer {
    name: &'static str,
    channels_in: usize,
    channels_out: usize,
    groups: usize,
    side: usize,
    kernel: usize,
    stride: usize,
    residual: bool,
    activation: Activation,
}

const fn layer(
    name: &'static str,
    [channels_in, channels_out, groups]: [usize; 3],
    [side, kernel, stride]: [usize; 3],
    residual: bool,
    activation: Activation,
) -> Layer {
    Layer {
        name,
        channels_in,
        channels_out,
        groups,
        side,
        kernel,
        stride,
        residual,
        activation,
    }
}

const LAYERS: [Layer; 7] = [
    layer(
        "Lite1 expand 1x1 24->144, 60 px, ReLU6",
        [24, 144, 1],
        [60, 1, 1],
        false,
        Activation::Relu6,
    ),
    layer(
        "Lite1 depthwise 3x3 144, 60 px, ReLU6",
        [144, 144, 144],
        [60, 3, 1],
        false,
        Activation::Relu6,
    ),
    layer(
        "Lite1 project 1x1 144->24, 60 px, + residual",
        [144, 24, 1],
        [60, 1, 1],
        true,
        Activation::None,
    ),
    layer(
        "Lite1 depthwise 5x5/2 240, 30 px, ReLU6",
        [240, 240, 240],
        [30, 5, 2],
        false,
        Activation::Relu6,
    ),
    layer(
        "Lite1 expand 1x1 80->480, 15 px, ReLU6",
        [80, 480, 1],
        [15, 1, 1],
        false,
        Activation::Relu6,
    ),
    layer(
        "ResNet-18 3x3 64->64, 56 px, + residual, ReLU",
        [64, 64, 1],
        [56, 3, 1],
        true,
        Activation::Relu,
    ),
    layer(
        "ResNet-18 3x3 256->256, 14 px, ReLU",
        [256, 256, 1],
        [14, 3, 1],
        false,
        Activation::Relu,
    ),
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    model::allocator::keep_freed_memory();
    let mut args = std::env::args().skip(1);
    let batch: usize = args.next().map_or(16, |a| a.parse().expect("batch"));
    let rounds: usize = args.next().map_or(7, |a| a.parse().expect("rounds"));
    let device = Device::flex();
    let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
    println!("batch {batch}, {rounds} rounds; ms per call (median), separate passes against fused");
    for l in &LAYERS {
        let pad = (l.kernel - 1) / 2;
        let options = ConvOptions::new([l.stride; 2], [pad; 2], [1; 2], l.groups);
        let out_side = (l.side + 2 * pad - l.kernel) / l.stride + 1;
        let x = Tensor::<4>::random([batch, l.channels_in, l.side, l.side], normal, &device);
        let w = Tensor::<4>::random(
            [l.channels_out, l.channels_in / l.groups, l.kernel, l.kernel],
            normal,
            &device,
        ) * (2.0 / (l.channels_in / l.groups * l.kernel * l.kernel) as f32).sqrt();
        let b = Tensor::<1>::random([l.channels_out], normal, &device);
        let r = l.residual.then(|| {
            Tensor::<4>::random([batch, l.channels_out, out_side, out_side], normal, &device)
        });
        let separate = || {
            let y = burn::tensor::module::conv2d(
                x.clone(),
                w.clone(),
                Some(b.clone()),
                options.clone(),
            );
            l.activation.after_residual(y, r.clone())
        };
        let fused = || {
            conv2d_fused(
                x.clone(),
                w.clone(),
                b.clone(),
                r.clone(),
                options.clone(),
                l.activation,
            )
        };
        // Same values, then the timing.
        let (a, f) = (separate().into_data(), fused().into_data());
        a.assert_approx_eq::<f32>(&f, burn::tensor::Tolerance::absolute(1e-4));
        let time = |f: &dyn Fn() -> Tensor<4>| {
            let start = Instant::now();
            let calls = 5;
            for _ in 0..calls {
                let _ = f();
            }
            start.elapsed().as_secs_f64() * 1000.0 / calls as f64
        };
        let (mut s, mut u) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            s.push(time(&separate));
            u.push(time(&fused));
        }
        let (s, u) = (median(s), median(u));
        println!("{:50} {s:8.2} {u:8.2}  {:.2}x", l.name, s / u);
    }
}
