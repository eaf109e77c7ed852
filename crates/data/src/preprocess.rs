//! The evaluation transform, as torchvision does it: resize the shorter side (antialiased
//! bilinear, like PIL), centre-crop, scale to [0, 1], normalise per channel.

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{GrayImage, RgbImage};
use serde::{Deserialize, Serialize};

/// Per-channel normalisation applied to pixel values scaled to [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalization {
    /// torchvision's ImageNet statistics (MobileNetV2, ResNet).
    pub const IMAGENET: Normalization = Normalization {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
    /// EfficientNet-Lite's `(x - 127) / 128` on 0..255 values, expressed on [0, 1].
    pub const CENTERED: Normalization = Normalization {
        mean: [127.0 / 255.0; 3],
        std: [128.0 / 255.0; 3],
    };
}

/// Resize-then-crop evaluation preprocessing of one backbone.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    /// Target length of the shorter side before cropping.
    pub resize: u32,
    /// Side of the square centre crop: the network's input size.
    pub crop: u32,
    pub normalization: Normalization,
}

/// Antialiased bilinear resize of an RGB image (PIL's `Image.resize(..., BILINEAR)`).
///
/// `crop` selects a source rectangle `(left, top, width, height)` in source pixels, which may be
/// fractional; `None` uses the whole image.
pub fn resize_rgb(
    img: &RgbImage,
    width: u32,
    height: u32,
    crop: Option<(f64, f64, f64, f64)>,
) -> RgbImage {
    let (w, h) = img.dimensions();
    let raw = resize_raw(img.as_raw(), (w, h), PixelType::U8x3, (width, height), crop);
    RgbImage::from_raw(width.max(1), height.max(1), raw).expect("buffer size")
}

/// [`resize_rgb`] for a one-channel image (a mask or a map).
pub fn resize_grey(
    img: &GrayImage,
    width: u32,
    height: u32,
    crop: Option<(f64, f64, f64, f64)>,
) -> GrayImage {
    let (w, h) = img.dimensions();
    let raw = resize_raw(img.as_raw(), (w, h), PixelType::U8, (width, height), crop);
    GrayImage::from_raw(width.max(1), height.max(1), raw).expect("buffer size")
}

/// The bilinear resize behind [`resize_rgb`] and [`resize_grey`], on raw interleaved bytes.
fn resize_raw(
    raw: &[u8],
    (w, h): (u32, u32),
    pixel: PixelType,
    (width, height): (u32, u32),
    crop: Option<(f64, f64, f64, f64)>,
) -> Vec<u8> {
    let src = Image::from_vec_u8(w, h, raw.to_vec(), pixel).expect("buffer matches dimensions");
    let mut dst = Image::new(width.max(1), height.max(1), pixel);
    let mut options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    if let Some((left, top, cw, ch)) = crop {
        options = options.crop(left, top, cw, ch);
    }
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .expect("pixel types match");
    dst.into_vec()
}

/// Size after torchvision's `Resize(size)`: the shorter side becomes `size`, the longer side
/// keeps the aspect ratio, truncated like `int(size * long / short)`.
pub fn shorter_side_size(width: u32, height: u32, size: u32) -> (u32, u32) {
    if width <= height {
        let h = (size as u64 * height as u64 / width as u64) as u32;
        (size, h.max(1))
    } else {
        let w = (size as u64 * width as u64 / height as u64) as u32;
        (w.max(1), size)
    }
}

/// Writes `img` (already `side`×`side`) as normalised CHW floats into `out`.
pub fn normalize_into(img: &RgbImage, normalization: &Normalization, out: &mut [f32]) {
    let (w, h) = img.dimensions();
    let plane = (w * h) as usize;
    assert_eq!(out.len(), 3 * plane, "output buffer size");
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * normalization.std[c]));
    let shift: [f32; 3] = std::array::from_fn(|c| normalization.mean[c] / normalization.std[c]);
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = px.0[c] as f32 * scale[c] - shift[c];
        }
    }
}

impl Preprocess {
    /// Number of floats one preprocessed image takes.
    pub fn len(&self) -> usize {
        3 * (self.crop * self.crop) as usize
    }

    /// Always false: a preprocessed image is never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Resize the shorter side, centre-crop: the square RGB image the network sees.
    pub fn crop_image(&self, img: &RgbImage) -> RgbImage {
        let (w, h) = img.dimensions();
        let (rw, rh) = shorter_side_size(w, h, self.resize);
        let resized = resize_rgb(img, rw, rh, None);
        let c = self.crop.min(rw).min(rh);
        // torchvision: int(round((size - crop) / 2.0)), Python rounds half to even.
        let left = ((rw - c) as f64 / 2.0).round_ties_even() as u32;
        let top = ((rh - c) as f64 / 2.0).round_ties_even() as u32;
        let cropped = image::imageops::crop_imm(&resized, left, top, c, c).to_image();
        if c == self.crop {
            cropped
        } else {
            // Images smaller than the crop: torchvision pads; we upscale instead, which keeps
            // the subject whole and the embedding meaningful.
            resize_rgb(&cropped, self.crop, self.crop, None)
        }
    }

    /// The full evaluation transform: CHW floats ready for the backbone.
    pub fn apply(&self, img: &RgbImage) -> Vec<f32> {
        let mut out = vec![0.0; self.len()];
        normalize_into(&self.crop_image(img), &self.normalization, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorter_side_matches_torchvision() {
        assert_eq!(shorter_side_size(275, 183, 256), (384, 256));
        assert_eq!(shorter_side_size(183, 275, 256), (256, 384));
        assert_eq!(shorter_side_size(500, 500, 256), (256, 256));
    }

    #[test]
    fn apply_gives_normalised_chw() {
        let img = RgbImage::from_pixel(300, 200, image::Rgb([255, 0, 128]));
        let p = Preprocess {
            resize: 256,
            crop: 224,
            normalization: Normalization::IMAGENET,
        };
        let x = p.apply(&img);
        assert_eq!(x.len(), 3 * 224 * 224);
        let plane = 224 * 224;
        assert!((x[0] - (1.0 - 0.485) / 0.229).abs() < 1e-4);
        assert!((x[plane] - (0.0 - 0.456) / 0.224).abs() < 1e-4);
        assert!((x[2 * plane + 5] - (128.0 / 255.0 - 0.406) / 0.225).abs() < 1e-4);
    }

    #[test]
    fn tiny_images_are_upscaled_to_the_crop() {
        let img = RgbImage::from_pixel(10, 7, image::Rgb([1, 2, 3]));
        let p = Preprocess {
            resize: 256,
            crop: 224,
            normalization: Normalization::CENTERED,
        };
        assert_eq!(p.crop_image(&img).dimensions(), (224, 224));
    }
}
