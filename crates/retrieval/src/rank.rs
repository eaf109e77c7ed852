//! Exact nearest-neighbour ranking by squared Euclidean distance, computed as
//! `|q|² + |g|² − 2 q·g` with batched matrix products. Ties are broken by gallery name, so
//! results are deterministic.

use burn::prelude::*;

/// One ranked result: gallery row and squared distance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub index: usize,
    pub distance: f32,
}

/// Squared distances `[Q, G]` between row-major matrices of width `dim`, on `device`.
pub fn distances(query: &[f32], gallery: &[f32], dim: usize, device: &Device) -> Vec<f32> {
    let (nq, ng) = (query.len() / dim, gallery.len() / dim);
    if nq == 0 || ng == 0 {
        return Vec::new();
    }
    let mut out = vec![0f32; nq * ng];
    let q = Tensor::<2>::from_data(TensorData::new(query.to_vec(), [nq, dim]), device);
    let q_norm = q.clone().powf_scalar(2.0).sum_dim(1); // [Q, 1]
    // Chunk the gallery so a million rows never need one giant product.
    let chunk_rows = (1 << 24) / nq.max(1);
    let chunk_rows = chunk_rows.clamp(1024, 1 << 16);
    for start in (0..ng).step_by(chunk_rows) {
        let end = (start + chunk_rows).min(ng);
        let g = Tensor::<2>::from_data(
            TensorData::new(gallery[start * dim..end * dim].to_vec(), [end - start, dim]),
            device,
        );
        let g_norm = g.clone().powf_scalar(2.0).sum_dim(1).transpose(); // [1, G]
        let d = q_norm.clone() + g_norm - q.clone().matmul(g.transpose()).mul_scalar(2.0);
        let d: Vec<f32> = d.clamp_min(0.0).into_data().try_to_vec().expect("f32");
        let width = end - start;
        for (qi, row) in d.chunks_exact(width).enumerate() {
            out[qi * ng + start..qi * ng + end].copy_from_slice(row);
        }
    }
    out
}

/// The `k` nearest gallery rows of each query (all of them when `k` is larger), nearest
/// first, ties by `names`.
pub fn top_k(distances: &[f32], n_gallery: usize, names: &[String], k: usize) -> Vec<Vec<Hit>> {
    distances
        .chunks_exact(n_gallery.max(1))
        .map(|row| {
            let mut hits: Vec<Hit> = row
                .iter()
                .enumerate()
                .map(|(index, &distance)| Hit { index, distance })
                .collect();
            let cmp = |a: &Hit, b: &Hit| {
                a.distance
                    .total_cmp(&b.distance)
                    .then_with(|| names[a.index].cmp(&names[b.index]))
            };
            let k = k.min(hits.len());
            if k < hits.len() && k > 0 {
                hits.select_nth_unstable_by(k - 1, cmp);
                hits.truncate(k);
            }
            hits.sort_by(cmp);
            hits
        })
        .collect()
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
        let names: Vec<String> = ["b", "a", "c", "d"].iter().map(|s| s.to_string()).collect();
        let top = top_k(&d, 4, &names, 3);
        assert_eq!(
            top[0].iter().map(|h| h.index).collect::<Vec<_>>(),
            [1, 3, 0]
        );
        // Rows 0 and 2 tie for the second query: "b" (0) before "c" (2).
        assert_eq!(
            top[1].iter().map(|h| h.index).collect::<Vec<_>>(),
            [0, 2, 3]
        );
        assert_eq!(top_k(&d, 4, &names, 10)[0].len(), 4);
    }
}
