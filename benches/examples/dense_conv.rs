//! The dense convolutions of ResNet-18 (224 px) and the MobileNetV2 / EfficientNet-Lite1 stems on
//! the flex backend, alone: milliseconds a call at batch 16 for the forward pass and for forward
//! plus both gradients (input and weight). Run it on two builds to compare kernels.
//! `WEIGHT_ONLY=1` leaves the input gradient out of the second column, as a network's first
//! layer (whose input is the image) and a frozen layer's parameters never ask for it: the
//! forward pass plus the weight gradient alone.
//!
//! `cargo run --release -p benches --example dense_conv`

mod common;

use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use common::Table;

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
    let weight_only = std::env::var_os("WEIGHT_ONLY").is_some();
    let mut table = Table::new("in → out channels, side, kernel, stride", 1);
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
            let x = if weight_only {
                x.clone()
            } else {
                x.clone().require_grad()
            };
            let w = w.clone().require_grad();
            let grads = conv2d(x.clone(), w.clone(), None, options.clone())
                .sum()
                .backward();
            (x.grad(&grads), w.grad(&grads).unwrap())
        };
        let label = format!("{ci} → {co}, {side}, {k}×{k}, {s}");
        table.row(&label, (10, 10), forward, train);
    }
    table.finish();
}
