//! The depthwise convolutions of MobileNetV2 and EfficientNet-Lite1 on the flex backend, alone:
//! milliseconds a call at batch 16 for each distinct shape (3×3 and 5×5, stride 1 and 2, with
//! bias), for the forward pass and for forward plus both gradients (input and weight). The
//! shapes are those of MobileNetV2 at 224 px, Lite1 at 240 (embedding) and Lite1 at 160 (the
//! main job's training views). Run it on two builds to compare kernels.
//!
//! `cargo run --release -p benches --example depthwise`

mod common;

use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use common::Table;

fn main() {
    model::allocator::keep_freed_memory();
    let device = Device::flex().autodiff();
    // (channels, input side, kernel, stride)
    let shapes = [
        // MobileNetV2 at 224
        (32, 112, 3, 1),
        (96, 112, 3, 2),
        (144, 56, 3, 1),
        (144, 56, 3, 2),
        (192, 28, 3, 1),
        (384, 14, 3, 1),
        (576, 14, 3, 2),
        (960, 7, 3, 1),
        // Lite1 at 240
        (144, 60, 5, 2),
        (240, 30, 5, 1),
        (480, 15, 5, 1),
        (1152, 8, 5, 1),
        // Lite1 at 160
        (32, 80, 3, 1),
        (96, 80, 3, 2),
        (144, 40, 5, 2),
        (240, 20, 3, 2),
        (480, 10, 5, 1),
        (672, 10, 5, 2),
        (1152, 5, 5, 1),
        (1152, 5, 3, 1),
    ];
    let batch = 16;
    let mut table = Table::new("channels × side, kernel, stride", 2);
    for (c, side, k, s) in shapes {
        let x: Tensor<4> = Tensor::random(
            [batch, c, side, side],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let w: Tensor<4> = Tensor::random([c, 1, k, k], Distribution::Normal(0.0, 1.0), &device);
        let b: Tensor<1> = Tensor::random([c], Distribution::Normal(0.0, 1.0), &device);
        let options = ConvOptions::new([s, s], [k / 2, k / 2], [1, 1], c);
        let forward = || {
            conv2d(
                x.clone().inner(),
                w.clone().inner(),
                Some(b.clone().inner()),
                options.clone(),
            )
        };
        let train = || {
            let x = x.clone().require_grad();
            let w = w.clone().require_grad();
            let grads = conv2d(x.clone(), w.clone(), Some(b.clone()), options.clone())
                .sum()
                .backward();
            (x.grad(&grads).unwrap(), w.grad(&grads).unwrap())
        };
        table.row(
            &format!("{c} × {side}, {k}×{k}, {s}"),
            (20, 10),
            forward,
            train,
        );
    }
    table.finish();
}
