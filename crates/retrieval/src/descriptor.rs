//! Traditional descriptors: no weights, no training, usable wherever `--model` is.
//!
//! - `hsv_histogram`: a joint HSV colour histogram (8 hue × 4 saturation × 4 value bins),
//!   L1-normalised, then square-rooted (the Hellinger embedding): Euclidean distance between
//!   the roots is the Hellinger distance between histograms, and the vector has unit length.
//! - `tiny_image`: the image shrunk to 16×16 RGB (Torralba et al., 2008), centred on its mean
//!   and L2-normalised: layout and colour at a glance.

use std::fmt;
use std::str::FromStr;

use image::RgbImage;

use data::preprocess::resize_rgb;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Descriptor {
    HsvHistogram,
    TinyImage,
}

const H_BINS: usize = 8;
const S_BINS: usize = 4;
const V_BINS: usize = 4;
const TINY: u32 = 16;

impl Descriptor {
    pub const ALL: [Descriptor; 2] = [Descriptor::HsvHistogram, Descriptor::TinyImage];

    pub fn name(self) -> &'static str {
        match self {
            Descriptor::HsvHistogram => "hsv_histogram",
            Descriptor::TinyImage => "tiny_image",
        }
    }

    pub fn dim(self) -> usize {
        match self {
            Descriptor::HsvHistogram => H_BINS * S_BINS * V_BINS,
            Descriptor::TinyImage => (3 * TINY * TINY) as usize,
        }
    }

    /// The unit-length descriptor of one image.
    pub fn compute(self, img: &RgbImage) -> Vec<f32> {
        match self {
            Descriptor::HsvHistogram => hsv_histogram(img),
            Descriptor::TinyImage => tiny_image(img),
        }
    }
}

impl fmt::Display for Descriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Descriptor {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Descriptor::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or(())
    }
}

/// Hue in [0, 1), saturation and value in [0, 1].
fn hsv(p: [u8; 3]) -> (f32, f32, f32) {
    let [r, g, b] = p.map(|c| c as f32 / 255.0);
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let delta = max - min;
    let h = if delta == 0.0 {
        0.0
    } else if max == r {
        ((g - b) / delta).rem_euclid(6.0) / 6.0
    } else if max == g {
        ((b - r) / delta + 2.0) / 6.0
    } else {
        ((r - g) / delta + 4.0) / 6.0
    };
    let s = if max == 0.0 { 0.0 } else { delta / max };
    (h, s, max)
}

fn bin(x: f32, n: usize) -> usize {
    ((x * n as f32) as usize).min(n - 1)
}

fn hsv_histogram(img: &RgbImage) -> Vec<f32> {
    let mut hist = vec![0f32; H_BINS * S_BINS * V_BINS];
    for p in img.pixels() {
        let (h, s, v) = hsv(p.0);
        hist[(bin(h, H_BINS) * S_BINS + bin(s, S_BINS)) * V_BINS + bin(v, V_BINS)] += 1.0;
    }
    let total: f32 = hist.iter().sum::<f32>().max(1.0);
    hist.iter().map(|c| (c / total).sqrt()).collect()
}

fn tiny_image(img: &RgbImage) -> Vec<f32> {
    let small = resize_rgb(img, TINY, TINY, None);
    let mut v: Vec<f32> = small.as_raw().iter().map(|&x| x as f32).collect();
    let mean = v.iter().sum::<f32>() / v.len() as f32;
    v.iter_mut().for_each(|x| *x -= mean);
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_by_hand() {
        // Half pure red (h 0, s 1, v 1), half black (h 0, s 0, v 0).
        let img = RgbImage::from_fn(4, 2, |x, _| {
            if x < 2 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 0])
            }
        });
        let d = Descriptor::HsvHistogram.compute(&img);
        assert_eq!(d.len(), 128);
        // Hue bin 0, saturation bin 3, value bin 3.
        let red = 3 * V_BINS + 3;
        assert!((d[red] - 0.5f32.sqrt()).abs() < 1e-6);
        assert!((d[0] - 0.5f32.sqrt()).abs() < 1e-6);
        let norm: f32 = d.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-5);
        assert_eq!(hsv([0, 255, 0]).0, 1.0 / 3.0);
    }

    #[test]
    fn tiny_image_is_unit_and_centred() {
        let img = RgbImage::from_fn(50, 30, |x, y| image::Rgb([x as u8 * 5, y as u8 * 8, 7]));
        let d = Descriptor::TinyImage.compute(&img);
        assert_eq!(d.len(), 768);
        assert!(d.iter().sum::<f32>().abs() < 1e-3);
        assert!((d.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-4);
        assert_eq!(
            "tiny_image".parse::<Descriptor>(),
            Ok(Descriptor::TinyImage)
        );
    }
}
