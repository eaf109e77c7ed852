//! The training set, decoded once a run, and its augmented batches.

use std::path::PathBuf;

use anyhow::{Result, bail};
use data::augment::{AugmentConfig, augment_with_photo};
use data::preprocess::normalize_into;
use data::{Normalization, list_images, load_images};
use image::{GrayImage, RgbImage};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Decoded training images with class indices.
pub struct TrainingSet {
    pub images: Vec<RgbImage>,
    pub labels: Vec<usize>,
    /// Class names, sorted; `labels` index into this.
    pub classes: Vec<String>,
    /// Whether each image came from a drawings folder (left out of distillation).
    pub drawing: Vec<bool>,
    /// Where the animal is in each image (see [`crate::foreground`]), when estimated.
    pub foreground: Option<Vec<GrayImage>>,
}

impl TrainingSet {
    /// Loads class-folder training sets: `folders` of photos, then `drawings` (classes of the
    /// same name merge). Undecodable files are reported and skipped; distractor and unlabelled
    /// images are not training data and are left out.
    pub fn load(folders: &[PathBuf], drawings: &[PathBuf], quiet: bool) -> Result<Self> {
        let mut entries = Vec::new();
        let mut drawing_entries = Vec::new();
        let all = folders
            .iter()
            .map(|d| (d, false))
            .chain(drawings.iter().map(|d| (d, true)));
        for (i, (dir, is_drawing)) in all.enumerate() {
            if i > 0 && !dir.exists() {
                bail!(
                    "extra training folder {} does not exist: collect it first (`cargo run --release -p collect -- --from ... --into {}`, see the README's main job)",
                    dir.display(),
                    dir.display()
                );
            }
            let (_, listed) = list_images(dir, None)?;
            let labelled: Vec<_> = listed.into_iter().filter(|e| e.label.is_some()).collect();
            if labelled.is_empty() {
                bail!(
                    "{}: no labelled training image (expected class sub-folders)",
                    dir.display()
                );
            }
            if is_drawing {
                drawing_entries.extend(labelled);
            } else {
                entries.extend(labelled);
            }
        }
        let photos = load_images(&entries, "decoding", quiet);
        let drawn = load_images(&drawing_entries, "decoding drawings", quiet);
        let flagged = photos
            .loaded
            .into_iter()
            .map(|pair| (pair, false))
            .chain(drawn.loaded.into_iter().map(|pair| (pair, true)));
        let loaded: Vec<_> = flagged.collect();
        let mut classes: Vec<String> = loaded
            .iter()
            .filter_map(|((e, _), _)| e.label.clone())
            .collect();
        classes.sort();
        classes.dedup();
        let mut images = Vec::with_capacity(loaded.len());
        let mut labels = Vec::with_capacity(loaded.len());
        let mut drawing = Vec::with_capacity(loaded.len());
        for ((entry, img), is_drawing) in loaded {
            let label = entry.label.expect("filtered above");
            labels.push(classes.binary_search(&label).expect("class listed"));
            images.push(img);
            drawing.push(is_drawing);
        }
        Ok(Self {
            images,
            labels,
            classes,
            drawing,
            foreground: None,
        })
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Augmented, normalised CHW pixels of `indices`, `[len, 3, size, size]` flattened, and,
    /// when `with_photos` (a distillation teacher needs them), the same views before rendering
    /// (sketch, edges, contours, cartoon, posterise, blur). Each image's randomness comes from `(seed, position)`,
    /// so a batch is the same whatever the thread scheduling and whether or not the run was
    /// resumed.
    pub fn batch(
        &self,
        indices: &[usize],
        augment_config: &AugmentConfig,
        size: u32,
        normalization: &Normalization,
        seed: u64,
        with_photos: bool,
    ) -> (Vec<f32>, Option<Vec<f32>>) {
        let plane = 3 * (size * size) as usize;
        let mut out = vec![0f32; indices.len() * plane];
        let mut photos = vec![0f32; if with_photos { out.len() } else { 0 }];
        let photo_slots: Vec<Option<&mut [f32]>> = if with_photos {
            photos.chunks_mut(plane).map(Some).collect()
        } else {
            indices.iter().map(|_| None).collect()
        };
        out.par_chunks_mut(plane)
            .zip(photo_slots)
            .zip(indices.par_iter().enumerate())
            .for_each(|((dst, photo_dst), (pos, &i))| {
                let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(1_000_003) ^ pos as u64);
                let foreground = self.foreground.as_ref().map(|f| &f[i]);
                let (view, photo) =
                    augment_with_photo(&self.images[i], foreground, augment_config, size, &mut rng);
                normalize_into(&view, normalization, dst);
                if let Some(photo_dst) = photo_dst {
                    normalize_into(&photo, normalization, photo_dst);
                }
            });
        (out, with_photos.then_some(photos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(path: &std::path::Path, shade: u8) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        RgbImage::from_pixel(40, 30, image::Rgb([shade, 0, 0]))
            .save(path)
            .unwrap();
    }

    #[test]
    fn extra_folders_merge_classes_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        png(&a.join("cat/1.png"), 10);
        png(&a.join("dog/1.png"), 20);
        png(&b.join("cat/2.png"), 30);
        png(&b.join("lion/1.png"), 40);
        std::fs::write(b.join("manifest.csv"), "source\n").unwrap();
        let set = TrainingSet::load(&[a.clone(), b.clone()], &[], true).unwrap();
        assert_eq!(set.classes, ["cat", "dog", "lion"]);
        assert_eq!(set.len(), 4);
        assert_eq!(set.labels.iter().filter(|&&l| l == 0).count(), 2);
        let missing = TrainingSet::load(&[a.clone(), tmp.path().join("gone")], &[], true);
        assert!(format!("{:#}", missing.err().unwrap()).contains("collect it first"));
        let empty = tmp.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        assert!(TrainingSet::load(&[b.clone(), empty], &[], true).is_err());
        let with_drawings = TrainingSet::load(std::slice::from_ref(&a), &[b], true).unwrap();
        assert_eq!(with_drawings.classes, ["cat", "dog", "lion"]);
        assert_eq!(with_drawings.drawing, [false, false, true, true]);
    }
}
