//! ResNet's stem max pooling (3×3, stride 2, padding 1) on the flex backend as a training step
//! takes it: with indices forward, and the gradient scattered back through them, on a
//! `[32, 64, 112, 112]` activation (ResNet-18 at 224 px, batch 32); and that gradient alone.
//!
//! `cargo run --release -p benches --example max_pool`

use std::time::Instant;

use burn::prelude::*;
use burn::tensor::module::{max_pool2d, max_pool2d_with_indices, max_pool2d_with_indices_backward};
use burn::tensor::ops::MaxPoolOptions;

fn ms_per_step(step: impl Fn()) -> f64 {
    step();
    let start = Instant::now();
    let steps = 10;
    for _ in 0..steps {
        step();
    }
    start.elapsed().as_secs_f64() * 1000.0 / steps as f64
}

fn main() {
    model::allocator::keep_freed_memory();
    let mut options = MaxPoolOptions::new([3, 3]);
    options.stride = [2, 2];
    options.padding = [(1, 1); 2];
    let shape = [32, 64, 112, 112];
    let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
    let device = Device::flex();
    let x: Tensor<4> = Tensor::random(shape, normal, &device);
    let forward = ms_per_step(|| {
        let _ = max_pool2d(x.clone(), options.clone()).into_data();
    });
    let with_indices = ms_per_step(|| {
        let (y, i) = max_pool2d_with_indices(x.clone(), options.clone());
        let _ = (y.into_data(), i.into_data());
    });
    let (_, indices) = max_pool2d_with_indices(x.clone(), options.clone());
    let out_grad: Tensor<4> = Tensor::random([32, 64, 56, 56], normal, &device);
    let backward = ms_per_step(|| {
        let (k, s, p) = ([3, 3], [2, 2], [1, 1]);
        let g = max_pool2d_with_indices_backward(
            x.clone(),
            k,
            s,
            p,
            [1, 1],
            false,
            out_grad.clone(),
            indices.clone(),
        );
        let _ = g.into_data();
    });
    let autodiff = Device::flex().autodiff();
    let xa: Tensor<4> = Tensor::random(shape, normal, &autodiff);
    let g: Tensor<4> = Tensor::random([32, 64, 56, 56], normal, &autodiff);
    let step = ms_per_step(|| {
        let xa = xa.clone().require_grad();
        let grads = (max_pool2d(xa.clone(), options.clone()) * g.clone())
            .sum()
            .backward();
        let _ = xa.grad(&grads).unwrap().into_data();
    });
    println!("max pool 3x3 / 2, [32, 64, 112, 112]");
    println!("forward                          {forward:.1} ms");
    println!("forward with indices             {with_indices:.1} ms");
    println!("gradient through the indices     {backward:.1} ms");
    println!("training (forward, mul, sum, gradient) {step:.1} ms");
}
