//! Exact search latency: 100 queries against synthetic unit-length galleries, ranked by the
//! same code `retrieval` uses (batched matrix products, top 10).

use std::time::Duration;

use burn::prelude::Device;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use retrieval::embed::EmbeddingSet;
use retrieval::evaluation::rank_sets;

use crate::timing::{Measurement, measure};

fn unit_rows(n: usize, dim: usize, rng: &mut ChaCha8Rng) -> Vec<Vec<f32>> {
    (0..n)
        .map(|_| {
            let mut row: Vec<f32> = (0..dim).map(|_| rng.random::<f32>() - 0.5).collect();
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            row.iter_mut().for_each(|v| *v /= norm);
            row
        })
        .collect()
}

/// Queries a second for a gallery of `size` rows of width `dim`.
pub fn exact(
    size: usize,
    dim: usize,
    queries: usize,
    min_time: Duration,
    device: &Device,
) -> Measurement {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let gallery = EmbeddingSet::from_rows(&unit_rows(size, dim, &mut rng));
    let query = EmbeddingSet::from_rows(&unit_rows(queries, dim, &mut rng));
    measure(
        format!("search/{size}x{dim}"),
        format!("exact search, {size} x {dim}, {queries} queries"),
        queries,
        1,
        1,
        min_time,
        || {
            let top = rank_sets(&query, &gallery, 10, None, device).expect("Euclidean ranking");
            assert_eq!(top.len(), queries);
        },
    )
}
