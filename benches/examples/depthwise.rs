//! The depthwise convolutions of MobileNetV2 and EfficientNet-Lite1 on the flex backend, alone:
//! milliseconds a call at batch 16 for each distinct shape (3×3 and 5×5, stride 1 and 2), with
//! bias. Run it on two builds to compare kernels.
//!
//! `cargo run --release -p benches --example depthwise`

use std::time::Instant;

use burn::prelude::*;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;

fn main() {
    model::allocator::keep_freed_memory();
    let device = Device::flex();
    // (channels, input side, kernel, stride): MobileNetV2 at 224, Lite1 at 240.
    let shapes = [
        (32, 112, 3, 1),
        (96, 112, 3, 2),
        (144, 56, 3, 1),
        (144, 56, 3, 2),
        (192, 28, 3, 1),
        (384, 14, 3, 1),
        (576, 14, 3, 2),
        (960, 7, 3, 1),
        (144, 60, 5, 2),
        (240, 30, 5, 1),
        (480, 15, 5, 1),
        (1152, 8, 5, 1),
    ];
    let batch = 16;
    let mut total = 0.0;
    println!("| channels × side, kernel, stride | ms a call (batch {batch}) |");
    println!("|---|---|");
    for (c, side, k, s) in shapes {
        let x: Tensor<4> = Tensor::random(
            [batch, c, side, side],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let w: Tensor<4> = Tensor::random(
            [c, 1, k, k],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let b: Tensor<1> =
            Tensor::random([c], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let options = ConvOptions::new([s, s], [k / 2, k / 2], [1, 1], c);
        let call = || conv2d(x.clone(), w.clone(), Some(b.clone()), options.clone());
        let _ = call().into_data();
        let steps = 20;
        let start = Instant::now();
        for _ in 0..steps {
            let _ = call();
        }
        let ms = start.elapsed().as_secs_f64() * 1000.0 / steps as f64;
        total += ms;
        println!("| {c} × {side}, {k}×{k}, {s} | {ms:.2} |");
    }
    println!("| all | {total:.1} |");
}
