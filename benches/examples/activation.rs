//! ReLU6 on the flex backend: the two-sided `clamp` against `relu` + `clamp_max` (what
//! `model::layers` uses), on a MobileNetV2-sized activation, in the same process.
//!
//! `cargo run --release -p benches --example activation`
//!
//! Each step first copies the input (`+ 0.0`) so the activation works on a tensor of its own,
//! in place, as it does inside a network; the copy alone is measured too and subtracted.

use std::time::Instant;

use burn::prelude::*;

fn ms_per_step(step: impl Fn() -> Tensor<4>) -> f64 {
    let _ = step().into_data();
    let start = Instant::now();
    let steps = 20;
    for _ in 0..steps {
        let _ = step();
    }
    start.elapsed().as_secs_f64() * 1000.0 / steps as f64
}

fn main() {
    model::allocator::keep_freed_memory();
    let device = Device::flex();
    let x: Tensor<4> = Tensor::random(
        [16, 96, 112, 112],
        burn::tensor::Distribution::Normal(0.0, 4.0),
        &device,
    );
    let copy = ms_per_step(|| x.clone() + 0.0);
    let clamp = ms_per_step(|| (x.clone() + 0.0).clamp(0.0, 6.0)) - copy;
    let split =
        ms_per_step(|| burn::tensor::activation::relu(x.clone() + 0.0).clamp_max(6.0)) - copy;
    println!("16 x 96 x 112 x 112 floats; copy {copy:.1} ms (subtracted)");
    println!("clamp(0, 6)          {clamp:.1} ms");
    println!("relu + clamp_max(6)  {split:.1} ms");
    println!("ratio                {:.1}x", clamp / split);
}
