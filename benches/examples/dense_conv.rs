//! The dense convolutions of ResNet-18 (224 px) and the MobileNetV2 / EfficientNet-Lite1 stems on
//! the flex backend, alone: milliseconds a call at batch 16 for the forward pass and for forward
//! plus both gradients (input and weight). Run it on two builds to compare kernels.
//!
//! `cargo run --release -p benches --example dense_conv`

use std::time::Instant;

use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;

fn main() {
    model::allocator::keep_freed_memory();
    let device = Device::flex().autodiff();
    // (channels in, channels out, input side, kernel, stride)
    let shapes = [
        (3, 64, 224, 7, 2),
        (64, 64, 56, 3, 1),
        (64, 128, 56, 3, 2),
        (128, 128, 28, 3, 1),
        (64, 128, 56, 1, 2),
        (128, 256, 28, 3, 2),
        (256, 256, 14, 3, 1),
        (256, 512, 14, 3, 2),
        (512, 512, 7, 3, 1),
        (3, 32, 224, 3, 2),
        (3, 32, 240, 3, 2),
    ];
    let batch = 16;
    let (mut total_forward, mut total_train) = (0.0, 0.0);
    println!("| in → out channels, side, kernel, stride | forward ms | forward + gradients ms |");
    println!("|---|---|---|");
    for (ci, co, side, k, s) in shapes {
        let x: Tensor<4> = Tensor::random(
            [batch, ci, side, side],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let w: Tensor<4> = Tensor::random([co, ci, k, k], Distribution::Normal(0.0, 0.1), &device);
        let options = ConvOptions::new([s, s], [k / 2, k / 2], [1, 1], 1);
        let forward = || conv2d(x.clone().inner(), w.clone().inner(), None, options.clone());
        let train = || {
            let x = x.clone().require_grad();
            let w = w.clone().require_grad();
            let grads = conv2d(x.clone(), w.clone(), None, options.clone())
                .sum()
                .backward();
            (x.grad(&grads).unwrap(), w.grad(&grads).unwrap())
        };
        let _ = forward().into_data();
        let _ = train();
        let time = |f: &dyn Fn()| {
            let steps = 10;
            let start = Instant::now();
            for _ in 0..steps {
                f();
            }
            start.elapsed().as_secs_f64() * 1000.0 / steps as f64
        };
        let f = time(&|| {
            let _ = forward();
        });
        let t = time(&|| {
            let _ = train();
        });
        total_forward += f;
        total_train += t;
        println!("| {ci} → {co}, {side}, {k}×{k}, {s} | {f:.1} | {t:.1} |");
    }
    println!("| all | {total_forward:.0} | {total_train:.0} |");
}
