//! Exact nearest-neighbour ranking by squared Euclidean distance, computed as
//! `|q|² + |g|² − 2 q·g` with batched matrix products. Ties are broken by gallery name, so
//! results are deterministic.

use burn::prelude::*;
use rayon::prelude::*;

/// One ranked result: gallery row and squared distance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub index: usize,
    pub distance: f32,
}

/// Squared distances `[Q, G]` between row-major matrices of width `dim`, on `device`.
/// The products run on the device; the norms and the sum `|q|² + |g|² − 2 q·g` run in plain
/// Rust over both cores (the flex backend's element-wise passes run on one).
pub fn distances(query: &[f32], gallery: &[f32], dim: usize, device: &Device) -> Vec<f32> {
    let (nq, ng) = (query.len() / dim, gallery.len() / dim);
    if nq == 0 || ng == 0 {
        return Vec::new();
    }
    let q_norms = squared_norms(query, dim);
    let g_norms = squared_norms(gallery, dim);
    let mut out = vec![0f32; nq * ng];
    let q = Tensor::<2>::from_data(TensorData::new(query.to_vec(), [nq, dim]), device);
    // Chunk the gallery so a million rows never need one giant product.
    let chunk_rows = (1 << 24) / nq.max(1);
    let chunk_rows = chunk_rows.clamp(1024, 1 << 16);
    for start in (0..ng).step_by(chunk_rows) {
        let end = (start + chunk_rows).min(ng);
        let g = Tensor::<2>::from_data(
            TensorData::new(gallery[start * dim..end * dim].to_vec(), [end - start, dim]),
            device,
        );
        let dots: Vec<f32> = q
            .clone()
            .matmul(g.transpose())
            .into_data()
            .try_to_vec()
            .expect("f32");
        let width = end - start;
        out.par_chunks_exact_mut(ng)
            .zip(dots.par_chunks_exact(width))
            .zip(&q_norms)
            .for_each(|((row, dots), &qn)| {
                for ((d, &dot), &gn) in row[start..end]
                    .iter_mut()
                    .zip(dots)
                    .zip(&g_norms[start..end])
                {
                    *d = (qn + gn - 2.0 * dot).max(0.0);
                }
            });
    }
    out
}

fn squared_norms(rows: &[f32], dim: usize) -> Vec<f32> {
    rows.par_chunks_exact(dim)
        .map(|r| r.iter().map(|v| v * v).sum())
        .collect()
}

/// The `k` nearest gallery rows of each query (all of them when `k` is 0 or larger than the
/// gallery), nearest first, ties by `names`. Queries run in parallel.
pub fn top_k(distances: &[f32], n_gallery: usize, names: &[String], k: usize) -> Vec<Vec<Hit>> {
    distances
        .par_chunks_exact(n_gallery.max(1))
        .map(|row| nearest(row, |i| names[i].as_str(), k))
        .collect()
}

/// One query's `k` nearest (all rows when `k` is 0 or past the row), ties broken by `name`.
/// For a short list the k-th smallest distance is found on a plain copy of the row first, so
/// only the rows at or below it (ties included) are compared by name.
pub fn nearest<'a>(row: &[f32], name: impl Fn(usize) -> &'a str, k: usize) -> Vec<Hit> {
    let hit = |(index, &distance): (usize, &f32)| Hit { index, distance };
    let mut hits: Vec<Hit> = if k > 0 && k < row.len() {
        let mut copy = row.to_vec();
        let kth = *copy.select_nth_unstable_by(k - 1, f32::total_cmp).1;
        row.iter()
            .enumerate()
            .filter(|(_, d)| d.total_cmp(&kth).is_le())
            .map(hit)
            .collect()
    } else {
        row.iter().enumerate().map(hit).collect()
    };
    hits.sort_by(|a, b| {
        a.distance
            .total_cmp(&b.distance)
            .then_with(|| name(a.index).cmp(name(b.index)))
    });
    if k > 0 {
        hits.truncate(k);
    }
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_and_ties() {
        let device = Device::flex();
        let q = [1.0, 0.0, 0.0, 1.0];
        let g = [0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.6, 0.8];
        let d = distances(&q, &g, 2, &device);
        assert_eq!(d.len(), 8);
        assert!((d[0] - 2.0).abs() < 1e-5 && d[1].abs() < 1e-5);
        assert!((d[3] - 0.8).abs() < 1e-5);
        let names = |order: [&str; 4]| order.map(String::from).to_vec();
        let indices = |names: &[String], k: usize, query: usize| -> Vec<usize> {
            top_k(&d, 4, names, k)[query]
                .iter()
                .map(|h| h.index)
                .collect()
        };
        let plain = names(["b", "a", "c", "d"]);
        assert_eq!(indices(&plain, 3, 0), [1, 3, 0]);
        // Rows 0 and 2 tie for the second query: "b" (0) before "c" (2).
        assert_eq!(indices(&plain, 3, 1), [0, 2, 3]);
        assert_eq!(indices(&plain, 10, 0).len(), 4);
        // k = 1 cuts between the tied rows: the name decides which one stays.
        assert_eq!(indices(&plain, 1, 1), [0]);
        assert_eq!(indices(&names(["c", "a", "b", "d"]), 1, 1), [2]);
    }
}
