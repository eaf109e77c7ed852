//! Synthetic galleries for the HNSW measurements (`ann`, and `speed --only hnsw`).

use std::path::PathBuf;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use retrieval::index::GalleryIndex;

/// `n` unit vectors around 1,000 cluster centres.
pub fn clustered(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut centres = ChaCha8Rng::seed_from_u64(99);
    let centres: Vec<f32> = (0..1000 * dim)
        .map(|_| centres.random::<f32>() - 0.5)
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n * dim);
    for _ in 0..n {
        let c = rng.random_range(0..1000);
        let mut v: Vec<f32> = (0..dim)
            .map(|j| centres[c * dim + j] + 0.35 * (rng.random::<f32>() - 0.5))
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        out.extend(v);
    }
    out
}

pub fn gallery(rows: &[f32], dim: usize) -> GalleryIndex {
    let mut g = GalleryIndex::new("bench", dim);
    for (i, row) in rows.chunks_exact(dim).enumerate() {
        let entry = data::ImageEntry {
            path: PathBuf::new(),
            name: format!("{i:09}"),
            label: None,
            distractor: false,
        };
        g.add(&entry, String::new(), row);
    }
    g
}
