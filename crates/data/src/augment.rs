//! Seeded training augmentation: random resized crop, horizontal flip, colour jitter and
//! optional greyscale. The same seed gives the same pixels, so a resumed run sees the same
//! images as an uninterrupted one.

use image::RgbImage;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::preprocess::resize_rgb;

/// Augmentation parameters (the `[augment]` table of a training config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Range of the crop's area as a fraction of the image (torchvision uses 0.08..1; retrieval
    /// of whole animals prefers milder crops).
    pub scale: [f32; 2],
    /// Range of the crop's aspect ratio (width / height).
    pub ratio: [f32; 2],
    /// Probability of a horizontal flip.
    pub hflip: f32,
    /// Maximum relative brightness change (0 disables).
    pub brightness: f32,
    /// Maximum relative contrast change (0 disables).
    pub contrast: f32,
    /// Maximum relative saturation change (0 disables).
    pub saturation: f32,
    /// Probability of converting to greyscale (kept as three channels).
    pub grayscale: f32,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            scale: [0.35, 1.0],
            ratio: [3.0 / 4.0, 4.0 / 3.0],
            hflip: 0.5,
            brightness: 0.3,
            contrast: 0.3,
            saturation: 0.3,
            grayscale: 0.1,
        }
    }
}

/// Picks a crop rectangle `(left, top, width, height)` like torchvision's `RandomResizedCrop`
/// (ten tries, then the largest centred crop within the ratio range).
pub fn random_crop_box(
    width: u32,
    height: u32,
    scale: [f32; 2],
    ratio: [f32; 2],
    rng: &mut impl Rng,
) -> (f64, f64, f64, f64) {
    let (w, h) = (width as f64, height as f64);
    let area = w * h;
    let (log_lo, log_hi) = ((ratio[0] as f64).ln(), (ratio[1] as f64).ln());
    for _ in 0..10 {
        let target = area * rng.random_range(scale[0] as f64..=scale[1] as f64);
        let aspect = rng.random_range(log_lo..=log_hi).exp();
        let cw = (target * aspect).sqrt();
        let ch = (target / aspect).sqrt();
        if cw <= w && ch <= h && cw >= 1.0 && ch >= 1.0 {
            let left = rng.random_range(0.0..=(w - cw));
            let top = rng.random_range(0.0..=(h - ch));
            return (left, top, cw, ch);
        }
    }
    let in_ratio = w / h;
    let (cw, ch) = if in_ratio < ratio[0] as f64 {
        (w, w / ratio[0] as f64)
    } else if in_ratio > ratio[1] as f64 {
        (h * ratio[1] as f64, h)
    } else {
        (w, h)
    };
    ((w - cw) / 2.0, (h - ch) / 2.0, cw, ch)
}

fn luma(p: [f32; 3]) -> f32 {
    0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]
}

/// Brightness, contrast and saturation jitter in random order-free form (each factor drawn
/// once per image), then optional greyscale.
pub fn colour_jitter(img: &mut RgbImage, config: &AugmentConfig, rng: &mut impl Rng) {
    let factor = |amount: f32, rng: &mut dyn rand::RngCore| {
        if amount > 0.0 {
            rng.random_range((1.0 - amount).max(0.0)..=1.0 + amount)
        } else {
            1.0
        }
    };
    let b = factor(config.brightness, rng);
    let c = factor(config.contrast, rng);
    let s = factor(config.saturation, rng);
    let grey = rng.random::<f32>() < config.grayscale;
    if b == 1.0 && c == 1.0 && s == 1.0 && !grey {
        return;
    }
    let n = (img.width() * img.height()).max(1) as f32;
    let mean = img
        .pixels()
        .map(|p| luma(p.0.map(f32::from)) * b)
        .sum::<f32>()
        / n;
    for px in img.pixels_mut() {
        let mut v = px.0.map(|x| x as f32 * b);
        v = v.map(|x| (x - mean) * c + mean);
        let l = luma(v);
        v = v.map(|x| (x - l) * s + l);
        if grey {
            let l = luma(v);
            v = [l; 3];
        }
        px.0 = v.map(|x| x.clamp(0.0, 255.0).round() as u8);
    }
}

/// One augmented `size`×`size` view of `img`.
pub fn augment(img: &RgbImage, config: &AugmentConfig, size: u32, rng: &mut impl Rng) -> RgbImage {
    let (w, h) = img.dimensions();
    let crop = random_crop_box(w, h, config.scale, config.ratio, rng);
    let mut out = resize_rgb(img, size, size, Some(crop));
    if rng.random::<f32>() < config.hflip {
        image::imageops::flip_horizontal_in_place(&mut out);
    }
    colour_jitter(&mut out, config, rng);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn gradient() -> RgbImage {
        RgbImage::from_fn(120, 80, |x, y| image::Rgb([x as u8 * 2, y as u8 * 3, 90]))
    }

    #[test]
    fn same_seed_same_pixels() {
        let img = gradient();
        let config = AugmentConfig::default();
        let a = augment(&img, &config, 64, &mut ChaCha8Rng::seed_from_u64(7));
        let b = augment(&img, &config, 64, &mut ChaCha8Rng::seed_from_u64(7));
        let c = augment(&img, &config, 64, &mut ChaCha8Rng::seed_from_u64(8));
        assert_eq!(a.dimensions(), (64, 64));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn crop_boxes_stay_inside_and_respect_scale() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..200 {
            let (l, t, w, h) = random_crop_box(200, 100, [0.3, 1.0], [0.75, 1.333], &mut rng);
            assert!(l >= 0.0 && t >= 0.0 && l + w <= 200.0 + 1e-9 && t + h <= 100.0 + 1e-9);
            assert!(w * h >= 0.29 * 200.0 * 100.0 || (w, h) == (133.3, 100.0) || h == 100.0);
        }
    }

    #[test]
    fn greyscale_makes_channels_equal() {
        let mut img = gradient();
        let config = AugmentConfig {
            grayscale: 1.0,
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
            ..Default::default()
        };
        colour_jitter(&mut img, &config, &mut ChaCha8Rng::seed_from_u64(0));
        assert!(img.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]));
    }
}
