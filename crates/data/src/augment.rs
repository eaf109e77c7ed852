//! Seeded training augmentation: random resized crop, horizontal flip, colour jitter,
//! greyscale, and the renderings that take colour and texture away (see [`crate::rendering`])
//! so that a drawing of an animal lands near photos of it. The same seed gives the same pixels,
//! so a resumed run sees the same images as an uninterrupted one.

use image::{GrayImage, RgbImage};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::preprocess::{resize_grey, resize_rgb};
use crate::rendering::{
    blur, cartoon, contour_drawing, edge_drawing, keep_foreground, pencil_sketch, posterize,
    random_convolution,
};

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
    /// Probability of a pencil-sketch rendering (dark strokes on white, no colour).
    pub sketch: f32,
    /// Probability of an edge-drawing rendering (outlines only, black on white).
    pub edges: f32,
    /// Probability of a contour drawing (thin Canny lines on white, like a hand sketch).
    pub contours: f32,
    /// Probability of a cartoon rendering (smoothed flat colours with black outlines).
    pub cartoon: f32,
    /// Probability of posterising to a few flat colour levels (cartoon-like).
    pub posterize: f32,
    /// Probability of a random-convolution restyling (random 1–7 px filter mixed with the
    /// photo: random colours and textures, same shapes).
    pub random_convolution: f32,
    /// Probability of a Gaussian blur (radius drawn up to 2 px at the output size).
    pub blur: f32,
    /// Probability that a drawing (sketch, edges, contours, cartoon) keeps only the animal, on
    /// white, where the image has a foreground map (the trainer estimates one per photo when
    /// [`AugmentConfig::uses_foreground`]).
    pub foreground: f32,
    /// Probability that a view left a photo (not a sketch, edge, contour or cartoon drawing)
    /// keeps only the animal, on white, where the image has a foreground map. Hand sketches and
    /// clip art sit on white paper, so without this a white background is something only
    /// drawings and the odd studio photo share, and drawings land on those photos.
    pub photo_on_white: f32,
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
            sketch: 0.0,
            edges: 0.0,
            contours: 0.0,
            cartoon: 0.0,
            posterize: 0.0,
            random_convolution: 0.0,
            blur: 0.0,
            foreground: 0.0,
            photo_on_white: 0.0,
        }
    }
}

impl AugmentConfig {
    /// Whether any key masks views with a foreground map, so the maps must be estimated.
    pub fn uses_foreground(&self) -> bool {
        self.foreground > 0.0 || self.photo_on_white > 0.0
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
    augment_with_photo(img, None, config, size, rng).0
}

/// One augmented view of `img` and the same view before any rendering (same crop, flip and
/// colour): the photo a distillation teacher sees while the student sees its sketch, so the
/// student learns to put a drawing where the photo it was drawn from lies. `foreground` (any
/// size, stretched over the image) says where the animal is, for drawings of it alone.
pub fn augment_with_photo(
    img: &RgbImage,
    foreground: Option<&GrayImage>,
    config: &AugmentConfig,
    size: u32,
    rng: &mut impl Rng,
) -> (RgbImage, RgbImage) {
    let (w, h) = img.dimensions();
    let crop = random_crop_box(w, h, config.scale, config.ratio, rng);
    let mut photo = resize_rgb(img, size, size, Some(crop));
    let mut mask = foreground.map(|m| crop_foreground(m, (w, h), crop, size));
    if rng.random::<f32>() < config.hflip {
        image::imageops::flip_horizontal_in_place(&mut photo);
        if let Some(m) = mask.as_mut() {
            image::imageops::flip_horizontal_in_place(m);
        }
    }
    colour_jitter(&mut photo, config, rng);
    let mut out = photo.clone();
    render(&mut out, mask.as_ref(), config, rng);
    (out, photo)
}

/// The part of a foreground map under `crop` (in image pixels), at `size`×`size`, smoothly
/// interpolated.
fn crop_foreground(
    mask: &GrayImage,
    (w, h): (u32, u32),
    (left, top, cw, ch): (f64, f64, f64, f64),
    size: u32,
) -> GrayImage {
    let sx = mask.width() as f64 / w as f64;
    let sy = mask.height() as f64 / h as f64;
    let crop = (left * sx, top * sy, cw * sx, ch * sy);
    resize_grey(mask, size, size, Some(crop))
}

/// At most one of the texture-removing renderings, each with its own probability, then an
/// optional blur. The random draws happen whatever is picked, so one probability changing
/// does not shift every later image's randomness.
fn render(
    img: &mut RgbImage,
    foreground: Option<&GrayImage>,
    config: &AugmentConfig,
    rng: &mut impl Rng,
) {
    let pick: f32 = rng.random();
    let levels = rng.random_range(2..=4u8);
    let sigma = rng.random_range(0.5f32..=2.0);
    let do_blur = rng.random::<f32>() < config.blur;
    // Line smoothing scales with the output size: 1.5 to 3.5 pixels at 224.
    let line_sigma = rng.random_range(1.5f32..=3.5) * img.width().min(img.height()) as f32 / 224.0;
    let thickness = rng.random_range(1..=2u32);
    // One draw decides both: a drawing keeps the animal alone with probability `foreground`,
    // a photo with probability `photo_on_white`.
    let alone_draw: f32 = rng.random();
    let k = [1, 3, 5, 7][rng.random_range(0..4usize)];
    // Uniform weights with the variance of He initialisation over the 3·k² inputs.
    let bound = (3.0 / (3.0 * (k * k) as f32)).sqrt();
    let weights: Vec<f32> = (0..9 * k * k)
        .map(|_| rng.random_range(-bound..=bound))
        .collect();
    let keep: f32 = rng.random();
    let sketch_end = config.sketch;
    let edges_end = sketch_end + config.edges;
    let contours_end = edges_end + config.contours;
    let cartoon_end = contours_end + config.cartoon;
    let posterize_end = cartoon_end + config.posterize;
    let restyle_end = posterize_end + config.random_convolution;
    if pick < sketch_end {
        *img = pencil_sketch(img);
    } else if pick < edges_end {
        *img = edge_drawing(img);
    } else if pick < contours_end {
        *img = contour_drawing(img, line_sigma, thickness);
    } else if pick < cartoon_end {
        *img = cartoon(img, line_sigma, levels + 1);
    } else if pick < posterize_end {
        posterize(img, levels);
    } else if pick < restyle_end {
        *img = random_convolution(img, &weights, k, keep);
    }
    let alone = if pick < cartoon_end {
        alone_draw < config.foreground
    } else {
        alone_draw < config.photo_on_white
    };
    if let Some(mask) = foreground.filter(|_| alone) {
        keep_foreground(img, mask);
    }
    if do_blur {
        *img = blur(img, sigma);
    }
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
    fn the_photo_view_is_the_view_before_rendering() {
        let img = gradient();
        let plain = AugmentConfig::default();
        let sketchy = AugmentConfig {
            sketch: 1.0,
            ..plain.clone()
        };
        let (sketch, photo) =
            augment_with_photo(&img, None, &sketchy, 64, &mut ChaCha8Rng::seed_from_u64(3));
        let same = augment(&img, &plain, 64, &mut ChaCha8Rng::seed_from_u64(3));
        assert_eq!(photo, same);
        assert_ne!(sketch, photo);
        assert!(
            sketch
                .pixels()
                .all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2])
        );
    }

    /// No crop, flip or colour change, so a view's pixels are the image's.
    fn whole_image_unjittered() -> AugmentConfig {
        AugmentConfig {
            scale: [1.0, 1.0],
            ratio: [1.0, 1.0],
            hflip: 0.0,
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
            grayscale: 0.0,
            ..Default::default()
        }
    }

    /// A foreground map that puts the animal in the right half of the image.
    fn right_half_foreground() -> GrayImage {
        GrayImage::from_fn(8, 8, |x, _| image::Luma([if x < 4 { 0 } else { 255 }]))
    }

    #[test]
    fn drawings_of_the_animal_alone_follow_the_foreground_through_crop_and_flip() {
        // Squares everywhere, so a contour drawing has lines in both halves; the foreground
        // map says the animal is in the right half only.
        let img = RgbImage::from_fn(192, 192, |x, y| {
            let v = if (x / 24 + y / 24) % 2 == 0 { 40 } else { 220 };
            image::Rgb([v, v, v])
        });
        let right_half = right_half_foreground();
        let whole = AugmentConfig {
            contours: 1.0,
            foreground: 1.0,
            ..whole_image_unjittered()
        };
        let dark_in = |view: &RgbImage, xs: std::ops::Range<u32>| {
            xs.flat_map(|x| (0..view.height()).map(move |y| (x, y)))
                .filter(|&(x, y)| view.get_pixel(x, y).0 == [0; 3])
                .count()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let (view, photo) = augment_with_photo(&img, Some(&right_half), &whole, 96, &mut rng);
        assert_eq!(dark_in(&view, 0..36), 0, "lines kept in the background");
        assert!(dark_in(&view, 60..96) > 50, "the foreground lost its lines");
        assert!(
            photo.pixels().any(|p| p.0 == [40; 3]),
            "the photo view is not masked"
        );

        let flipped = AugmentConfig {
            hflip: 1.0,
            ..whole.clone()
        };
        let (view, _) = augment_with_photo(&img, Some(&right_half), &flipped, 96, &mut rng);
        assert_eq!(
            dark_in(&view, 60..96),
            0,
            "the mask did not flip with the image"
        );
        assert!(dark_in(&view, 0..36) > 50);

        let everywhere = AugmentConfig {
            foreground: 0.0,
            ..whole
        };
        let (view, _) = augment_with_photo(&img, Some(&right_half), &everywhere, 96, &mut rng);
        assert!(dark_in(&view, 0..36) > 50, "foreground 0 still masked");
    }

    #[test]
    fn photos_on_white_keep_the_animal_and_whiten_the_rest() {
        let img = RgbImage::from_fn(96, 96, |x, _| image::Rgb([if x < 48 { 30 } else { 90 }; 3]));
        let right_half = right_half_foreground();
        let on_white = AugmentConfig {
            photo_on_white: 1.0,
            ..whole_image_unjittered()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let (view, photo) = augment_with_photo(&img, Some(&right_half), &on_white, 96, &mut rng);
        assert_eq!(view.get_pixel(10, 50).0, [255; 3], "background kept");
        assert_eq!(view.get_pixel(85, 50).0, [90; 3], "the animal was changed");
        assert_eq!(photo, img, "the photo view is masked too");

        // Drawings are governed by `foreground` only: photo_on_white leaves them whole.
        let drawn = AugmentConfig {
            sketch: 1.0,
            ..on_white
        };
        let seeded = || ChaCha8Rng::seed_from_u64(6);
        let (masked, _) = augment_with_photo(&img, Some(&right_half), &drawn, 96, &mut seeded());
        let (whole, _) = augment_with_photo(&img, None, &drawn, 96, &mut seeded());
        assert_eq!(masked, whole, "a drawing was masked by photo_on_white");
    }

    #[test]
    fn each_rendering_is_drawn_with_its_probability() {
        // A disc on grass-like texture: contour drawings are black and white only, cartoons keep
        // colour; with probability 1 every view is that rendering.
        let img = RgbImage::from_fn(160, 160, |x, y| {
            let (dx, dy) = (x as f32 - 80.0, y as f32 - 80.0);
            if dx * dx + dy * dy < 50.0 * 50.0 {
                image::Rgb([150, 90, 40])
            } else {
                image::Rgb([60, 140 + ((x * 7 + y * 3) % 20) as u8, 50])
            }
        });
        let plain = AugmentConfig {
            grayscale: 0.0,
            ..Default::default()
        };
        let contours = AugmentConfig {
            contours: 1.0,
            ..plain.clone()
        };
        let cartoons = AugmentConfig {
            cartoon: 1.0,
            ..plain.clone()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for _ in 0..4 {
            let view = augment(&img, &contours, 96, &mut rng);
            assert!(view.pixels().all(|p| p.0 == [0; 3] || p.0 == [255; 3]));
            assert!(view.pixels().any(|p| p.0 == [0; 3]));
            let view = augment(&img, &cartoons, 96, &mut rng);
            assert!(view.pixels().any(|p| p.0[0] != p.0[1]));
            assert!(view.pixels().any(|p| p.0 == [0; 3]));
        }
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
