//! The 1×1 convolutions of EfficientNet-Lite1 at 160 px (the main job's training views) on the
//! flex backend, alone: milliseconds a call at batch 32 (the main job's P×K batch) for the
//! forward pass and for forward plus both gradients (input and weight). Run it on two builds to
//! compare kernels.
//!
//! `cargo run --release -p benches --example pointwise`

mod common;

use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use common::Table;

fn main() {
    model::allocator::keep_freed_memory();
    let device = Device::flex().autodiff();
    // (channels in, channels out, side): an expansion and a projection of each stage, the head.
    let shapes = [
        (32, 16, 80),
        (16, 96, 80),
        (144, 24, 40),
        (24, 144, 40),
        (240, 40, 20),
        (40, 240, 20),
        (80, 480, 10),
        (480, 80, 10),
        (112, 672, 10),
        (672, 112, 10),
        (192, 1152, 5),
        (1152, 192, 5),
        (1152, 320, 5),
        (320, 1280, 5),
    ];
    let batch = 32;
    let mut table = Table::new("in → out channels, side", 1);
    for (ci, co, side) in shapes {
        let x: Tensor<4> = Tensor::random(
            [batch, ci, side, side],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let w: Tensor<4> = Tensor::random([co, ci, 1, 1], Distribution::Normal(0.0, 0.1), &device);
        let b: Tensor<1> = Tensor::random([co], Distribution::Normal(0.0, 0.1), &device);
        let options = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
        let forward = || {
            let bias = Some(b.clone().inner());
            conv2d(x.clone().inner(), w.clone().inner(), bias, options.clone())
        };
        let train = || {
            let x = x.clone().require_grad();
            let w = w.clone().require_grad();
            let b = b.clone().require_grad();
            let grads = conv2d(x.clone(), w.clone(), Some(b.clone()), options.clone())
                .sum()
                .backward();
            (x.grad(&grads).unwrap(), w.grad(&grads).unwrap())
        };
        table.row(&format!("{ci} → {co}, {side}"), (10, 10), forward, train);
    }
    table.finish();
}
