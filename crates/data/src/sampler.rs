//! P×K batch sampling for metric learning: each batch holds P classes with K images each, so
//! every anchor has positives and negatives in its batch.
//!
//! An epoch is defined: every image of a class is used once (shuffled into chunks of K); a
//! class whose last chunk is short is topped up with repeats drawn from that class; batches
//! are filled with chunks of distinct classes, and a final batch short of classes is topped up
//! with chunks drawn at random from the other classes. So each epoch sees every image at least
//! once, and few twice.

use rand::Rng;
use rand::seq::SliceRandom;

/// Samples P×K batches of indices into a list of labels.
#[derive(Debug, Clone)]
pub struct PkSampler {
    /// For each class, the indices of its images.
    classes: Vec<Vec<usize>>,
    pub p: usize,
    pub k: usize,
}

impl PkSampler {
    /// `labels[i]` is the class index of image `i`. Fails when fewer than `p` classes exist.
    pub fn new(labels: &[usize], p: usize, k: usize) -> Result<Self, String> {
        if p == 0 || k == 0 {
            return Err("P and K must be at least 1".into());
        }
        let n_classes = labels.iter().max().map_or(0, |m| m + 1);
        let mut classes = vec![Vec::new(); n_classes];
        for (i, &l) in labels.iter().enumerate() {
            classes[l].push(i);
        }
        classes.retain(|c| !c.is_empty());
        if classes.len() < p {
            return Err(format!(
                "P = {p} classes a batch, but the training set has only {} classes",
                classes.len()
            ));
        }
        Ok(Self { classes, p, k })
    }

    /// The batches of one epoch, each `p * k` indices, grouped by class (K consecutive indices
    /// share a class).
    pub fn epoch(&self, rng: &mut impl Rng) -> Vec<Vec<usize>> {
        // Chunks of K per class.
        let mut chunks: Vec<Vec<Vec<usize>>> = self
            .classes
            .iter()
            .map(|members| {
                let mut shuffled = members.clone();
                shuffled.shuffle(rng);
                let mut class_chunks: Vec<Vec<usize>> =
                    shuffled.chunks(self.k).map(<[usize]>::to_vec).collect();
                if let Some(last) = class_chunks.last_mut() {
                    while last.len() < self.k {
                        last.push(members[rng.random_range(0..members.len())]);
                    }
                }
                class_chunks.shuffle(rng);
                class_chunks
            })
            .collect();
        let mut batches = Vec::new();
        loop {
            // Classes that still have chunks, most remaining first (ties broken randomly), so
            // that no class is left alone at the end.
            let mut open: Vec<usize> = (0..chunks.len())
                .filter(|&c| !chunks[c].is_empty())
                .collect();
            if open.is_empty() {
                break;
            }
            open.shuffle(rng);
            open.sort_by_key(|&c| std::cmp::Reverse(chunks[c].len()));
            let mut chosen: Vec<usize> = open.into_iter().take(self.p).collect();
            let mut batch: Vec<usize> = Vec::with_capacity(self.p * self.k);
            for &c in &chosen {
                batch.extend(chunks[c].pop().expect("open class has a chunk"));
            }
            // Top up a short final batch with random chunks of other classes.
            while chosen.len() < self.p {
                let c = rng.random_range(0..self.classes.len());
                if chosen.contains(&c) {
                    continue;
                }
                chosen.push(c);
                let members = &self.classes[c];
                batch.extend((0..self.k).map(|_| members[rng.random_range(0..members.len())]));
            }
            batches.push(batch);
        }
        batches.shuffle(rng);
        batches
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use std::collections::HashSet;

    fn labels() -> Vec<usize> {
        // 5 classes of uneven sizes: 7, 4, 9, 3, 6.
        [7, 4, 9, 3, 6]
            .iter()
            .enumerate()
            .flat_map(|(c, &n)| std::iter::repeat_n(c, n))
            .collect()
    }

    #[test]
    fn batches_are_p_classes_of_k() {
        let labels = labels();
        let sampler = PkSampler::new(&labels, 3, 2).unwrap();
        for seed in 0..20 {
            let batches = sampler.epoch(&mut ChaCha8Rng::seed_from_u64(seed));
            for b in &batches {
                assert_eq!(b.len(), 6);
                let classes: Vec<usize> = b.chunks(2).map(|c| labels[c[0]]).collect();
                for chunk in b.chunks(2) {
                    assert!(chunk.iter().all(|&i| labels[i] == labels[chunk[0]]));
                }
                assert_eq!(classes.iter().collect::<HashSet<_>>().len(), 3, "{b:?}");
            }
        }
    }

    #[test]
    fn every_image_is_used_each_epoch() {
        let labels = labels();
        let sampler = PkSampler::new(&labels, 2, 4).unwrap();
        for seed in 0..20 {
            let batches = sampler.epoch(&mut ChaCha8Rng::seed_from_u64(seed));
            let seen: HashSet<usize> = batches.iter().flatten().copied().collect();
            assert_eq!(seen.len(), labels.len());
            let used: usize = batches.iter().map(Vec::len).sum();
            // Few repeats: at most one short chunk a class plus one topped-up batch.
            assert!(used <= labels.len() + 5 * 4 + 2 * 4, "{used}");
        }
    }

    #[test]
    fn deterministic_and_checked() {
        let labels = labels();
        let s = PkSampler::new(&labels, 2, 2).unwrap();
        let a = s.epoch(&mut ChaCha8Rng::seed_from_u64(3));
        let b = s.epoch(&mut ChaCha8Rng::seed_from_u64(3));
        assert_eq!(a, b);
        assert!(PkSampler::new(&labels, 6, 2).is_err());
        assert!(PkSampler::new(&labels, 0, 2).is_err());
    }
}
