//! The `gemm` crate alone, on the matrix products of ResNet-18's convolutions at 224 px (one
//! image: `[cout, cin·k·k] × [cin·k·k, out_h·out_w]`, as `vendor/burn-flex`'s dense convolution
//! calls it) and one square product: GFLOP/s on one thread and on all of rayon's. What any
//! convolution built on this GEMM can reach; `benches/peers/gemm.py` puts PyTorch's matrix
//! product on the same shapes beside it.
//!
//! `cargo run --release -p benches --example gemm` (`-- --json` for one JSON object a line)

use std::time::Instant;

/// `(m, n, k, what)`: ResNet-18's 3×3 convolutions, its stride-2 1×1 shortcuts, the stem.
pub const SHAPES: [(usize, usize, usize, &str); 9] = [
    (64, 12544, 147, "stem 7×7/2, 3 → 64, 224 px"),
    (64, 3136, 576, "3×3, 64 → 64, 56 px"),
    (128, 784, 1152, "3×3, 128 → 128, 28 px"),
    (256, 196, 2304, "3×3, 256 → 256, 14 px"),
    (512, 49, 4608, "3×3, 512 → 512, 7 px"),
    (512, 784, 4608, "3×3, 512 → 512, 7 px, 16 images"),
    (128, 784, 64, "1×1/2, 64 → 128, 28 px"),
    (256, 196, 128, "1×1/2, 128 → 256, 14 px"),
    (1024, 1024, 1024, "square 1024"),
];

fn gflops(m: usize, n: usize, k: usize, par: gemm::Parallelism) -> f64 {
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * n];
    let mut d = vec![0f32; m * n];
    let mut run = || {
        // SAFETY: a is [m, k], b [k, n] and d [m, n], all row-major and of those sizes.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                d.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                k as isize,
                b.as_ptr(),
                1,
                n as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                par,
            )
        }
    };
    run();
    let start = Instant::now();
    let mut calls = 0;
    while start.elapsed().as_secs_f64() < 1.0 {
        run();
        calls += 1;
    }
    2.0 * (m * n * k) as f64 * calls as f64 / start.elapsed().as_secs_f64() / 1e9
}

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let threads = rayon::current_num_threads();
    if !json {
        println!(
            "| product (m × k · k × n) | layer | GFLOP/s, 1 thread | GFLOP/s, {threads} threads |"
        );
        println!("|---|---|---|---|");
    }
    for (m, n, k, what) in SHAPES {
        let one = gflops(m, n, k, gemm::Parallelism::None);
        let all = gflops(m, n, k, gemm::Parallelism::Rayon(0));
        if json {
            println!(
                "{}",
                serde_json::json!({"m": m, "n": n, "k": k, "layer": what, "one": one, "all": all, "threads": threads})
            );
        } else {
            println!("| {m} × {k} · {k} × {n} | {what} | {one:.1} | {all:.1} |");
        }
    }
}
