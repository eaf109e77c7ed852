//! MobileNetV2's convolutions at 224 px, one image (the search service's query), on the flex
//! backend, alone: microseconds a call for each layer's forward pass with its bias, and the
//! GFLOP/s that makes, run on one of rayon's threads as a lone image's pass is. Where a
//! batch-1 embedding's time goes, layer by layer.
//!
//! `cargo run --release -p benches --example mobilenet_layers`

use std::time::Instant;

use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;

/// (kind, channels in, channels out, input side, stride)
const LAYERS: &[(&str, usize, usize, usize, usize)] = &[
    ("stem 3×3", 3, 32, 224, 2),
    ("dw", 32, 32, 112, 1),
    ("1×1", 32, 16, 112, 1),
    ("1×1", 16, 96, 112, 1),
    ("dw", 96, 96, 112, 2),
    ("1×1", 96, 24, 56, 1),
    ("1×1", 24, 144, 56, 1),
    ("dw", 144, 144, 56, 1),
    ("1×1", 144, 24, 56, 1),
    ("1×1", 24, 144, 56, 1),
    ("dw", 144, 144, 56, 2),
    ("1×1", 144, 32, 28, 1),
    ("1×1", 32, 192, 28, 1),
    ("dw", 192, 192, 28, 1),
    ("1×1", 192, 32, 28, 1),
    ("1×1", 32, 192, 28, 1),
    ("dw", 192, 192, 28, 1),
    ("1×1", 192, 32, 28, 1),
    ("1×1", 32, 192, 28, 1),
    ("dw", 192, 192, 28, 2),
    ("1×1", 192, 64, 14, 1),
    ("1×1", 64, 384, 14, 1),
    ("dw", 384, 384, 14, 1),
    ("1×1", 384, 64, 14, 1),
    ("1×1", 64, 384, 14, 1),
    ("dw", 384, 384, 14, 1),
    ("1×1", 384, 64, 14, 1),
    ("1×1", 64, 384, 14, 1),
    ("dw", 384, 384, 14, 1),
    ("1×1", 384, 64, 14, 1),
    ("1×1", 64, 384, 14, 1),
    ("dw", 384, 384, 14, 1),
    ("1×1", 384, 96, 14, 1),
    ("1×1", 96, 576, 14, 1),
    ("dw", 576, 576, 14, 1),
    ("1×1", 576, 96, 14, 1),
    ("1×1", 96, 576, 14, 1),
    ("dw", 576, 576, 14, 1),
    ("1×1", 576, 96, 14, 1),
    ("1×1", 96, 576, 14, 1),
    ("dw", 576, 576, 14, 2),
    ("1×1", 576, 160, 7, 1),
    ("1×1", 160, 960, 7, 1),
    ("dw", 960, 960, 7, 1),
    ("1×1", 960, 160, 7, 1),
    ("1×1", 160, 960, 7, 1),
    ("dw", 960, 960, 7, 1),
    ("1×1", 960, 160, 7, 1),
    ("1×1", 160, 960, 7, 1),
    ("dw", 960, 960, 7, 1),
    ("1×1", 960, 320, 7, 1),
    ("1×1", 320, 1280, 7, 1),
];

fn main() {
    model::allocator::keep_freed_memory();
    // BATCH=16 times the layers over 16 images (the default is one, the search service's query,
    // whose pass runs on a pool thread); a batch runs from the main thread, as `embed` runs it.
    let batch = std::env::var("BATCH").map_or(1, |s| s.parse().unwrap());
    if batch == 1 {
        rayon::scope(|_| run(batch));
    } else {
        run(batch);
    }
}

fn run(batch: usize) {
    let device = Device::flex();
    println!("| layer | in → out, side, stride | µs | GFLOP/s |");
    println!("|---|---|---|---|");
    let mut totals = std::collections::BTreeMap::<&str, f64>::new();
    // `mobilenet_layers KIND` times only the layers of that kind (`stem`, `dw`, `1×1`).
    let only = std::env::args().nth(1);
    for &(kind, cin, cout, side, stride) in LAYERS {
        if only.as_deref().is_some_and(|o| !kind.starts_with(o)) {
            continue;
        }
        let (k, groups) = match kind {
            "dw" => (3, cin),
            "1×1" => (1, 1),
            _ => (3, 1),
        };
        let x: Tensor<4> = Tensor::random(
            [batch, cin, side, side],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let w: Tensor<4> = Tensor::random(
            [cout, cin / groups, k, k],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let b: Tensor<1> = Tensor::random([cout], Distribution::Normal(0.0, 1.0), &device);
        let pad = k / 2;
        let options = ConvOptions::new([stride, stride], [pad, pad], [1, 1], groups);
        let call = || {
            conv2d(
                x.clone().inner(),
                w.clone().inner(),
                Some(b.clone().inner()),
                options.clone(),
            )
        };
        let _ = call();
        let steps = std::env::var("STEPS").map_or(200, |s| s.parse().unwrap());
        let start = Instant::now();
        for _ in 0..steps {
            drop(call());
        }
        let us = start.elapsed().as_secs_f64() * 1e6 / steps as f64;
        let out_side = side.div_ceil(stride);
        let flops = 2.0 * (batch * cout * out_side * out_side * (cin / groups) * k * k) as f64;
        *totals.entry(kind).or_default() += us;
        println!(
            "| {kind} | {cin} → {cout}, {side}, {stride} | {us:.0} | {:.1} |",
            flops / us / 1e3
        );
    }
    for (kind, us) in totals {
        println!("| all {kind} | | {us:.0} | |");
    }
}
