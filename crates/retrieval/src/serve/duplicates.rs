//! Near-duplicates: groups of gallery images closer than a threshold. Each image's nearest
//! neighbours are computed once per index version (batched matrix products), then any
//! threshold up to the farthest of them groups images by union-find over the pairs below it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use burn::prelude::Device;

use crate::index::GalleryIndex;
use crate::rank;

/// Neighbours kept an image: groups are built from these pairs.
pub const NEIGHBOURS: usize = 10;
/// Rows ranked at once (bounds the distance block to this many gallery rows).
const BLOCK: usize = 512;

/// Each row's nearest other rows as (row, Euclidean distance).
pub type Neighbours = Arc<Vec<Vec<(usize, f32)>>>;

/// The neighbour lists of one index version.
#[derive(Default)]
pub struct Cache {
    lists: Mutex<Option<(u64, Neighbours)>>,
}

impl Cache {
    /// Each row's nearest other rows as (row, Euclidean distance), for index `version`.
    pub fn neighbours(&self, index: &GalleryIndex, version: u64) -> Neighbours {
        let mut lists = self.lists.lock().expect("duplicates lock");
        if let Some((v, l)) = lists.as_ref()
            && *v == version
        {
            return l.clone();
        }
        let computed = Arc::new(neighbours(index));
        *lists = Some((version, computed.clone()));
        computed
    }
}

fn neighbours(index: &GalleryIndex) -> Vec<Vec<(usize, f32)>> {
    let device = Device::flex();
    let names: Vec<String> = index.entries.iter().map(|e| e.name.clone()).collect();
    let n = index.len();
    let mut out = Vec::with_capacity(n);
    for start in (0..n).step_by(BLOCK) {
        let end = (start + BLOCK).min(n);
        let block = &index.values[start * index.dim..end * index.dim];
        let d = rank::distances(block, &index.values, index.dim, &device);
        for (i, hits) in rank::top_k(&d, n, &names, NEIGHBOURS + 1)
            .into_iter()
            .enumerate()
        {
            out.push(
                hits.into_iter()
                    .filter(|h| h.index != start + i)
                    .take(NEIGHBOURS)
                    .map(|h| (h.index, h.distance.sqrt()))
                    .collect(),
            );
        }
    }
    out
}

/// Groups of rows joined by pairs closer than `threshold`, largest first (rows in index
/// order within a group); single images are not groups.
pub fn groups(lists: &[Vec<(usize, f32)>], threshold: f32) -> Vec<Vec<usize>> {
    let mut parent: Vec<usize> = (0..lists.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for (i, list) in lists.iter().enumerate() {
        for &(j, d) in list {
            if d < threshold {
                let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                parent[a.max(b)] = a.min(b);
            }
        }
    }
    let mut by_root: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..lists.len() {
        let r = root(&mut parent, i);
        by_root.entry(r).or_default().push(i);
    }
    let mut groups: Vec<Vec<usize>> = by_root.into_values().filter(|g| g.len() > 1).collect();
    groups.sort_by(|a, b| b.len().cmp(&a.len()).then(a[0].cmp(&b[0])));
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use data::ImageEntry;

    #[test]
    fn close_images_group_and_far_ones_do_not() {
        let mut index = GalleryIndex::new("m", 2);
        let rows = [
            [1.0, 0.0],
            [0.995, 0.0998],
            [0.0, 1.0],
            [0.6, 0.8],
            [0.0998, 0.995],
        ];
        for (i, r) in rows.iter().enumerate() {
            let e = ImageEntry {
                path: i.to_string().into(),
                name: i.to_string(),
                label: None,
                distractor: false,
            };
            index.add(&e, i.to_string(), r);
        }
        let cache = Cache::default();
        let lists = cache.neighbours(&index, 0);
        assert_eq!(lists[0][0].0, 1);
        assert_eq!(groups(&lists, 0.15), vec![vec![0, 1], vec![2, 4]]);
        assert!(groups(&lists, 0.01).is_empty());
        assert_eq!(groups(&lists, 2.0), vec![vec![0, 1, 2, 3, 4]]);
    }
}
