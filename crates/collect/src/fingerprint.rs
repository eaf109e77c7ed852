//! What identifies an image for de-duplication: the SHA-256 of its bytes (exact copies) and
//! perceptual hashes (near copies: resized, recompressed, lightly edited or cropped).
//!
//! The perceptual hash is a DCT hash (pHash) from `image_hasher`. One hash of the whole image
//! survives resizing and recompression but not cropping, so each image also gets hashes of a
//! few sub-windows (centred, edge and corner crops keeping 70–90 % of each side, and square
//! crops): a crop of A matches one of A's windows, and A matches one of the windows of an
//! image it was cropped from.

use image::{DynamicImage, RgbImage};
use image_hasher::{HashAlg, Hasher, HasherConfig, ImageHash};
use sha2::{Digest, Sha256};

/// Hex SHA-256 of a file's bytes.
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The perceptual hash used everywhere: a 256-bit DCT hash (16×16 low frequencies of the
/// greyscale image, each bit above or below the median). Measured on the shared data, copies
/// (resized, recompressed, cropped) of validation images lie within 10 bits and different
/// photos 74 bits or more apart; the 64-bit version left no such gap (distinct photos at 10–12
/// bits, a cropped copy at 12).
pub fn hasher() -> Hasher {
    HasherConfig::new()
        .hash_size(16, 16)
        .hash_alg(HashAlg::Median)
        .preproc_dct()
        .to_hasher()
}

/// Default largest Hamming distance (of 256 bits) that still counts as a copy: in the middle
/// of the measured gap.
pub const DEFAULT_MAX_DISTANCE: u32 = 40;

/// Sub-windows hashed besides the whole image: (fraction of the width kept, of the height,
/// anchor x, anchor y); anchors 0 = left/top, 0.5 = centre, 1 = right/bottom. A fraction of 0
/// means "a square on the shorter side" (web thumbnails are often square crops). The 256-bit
/// hash tolerates about 5 % of scale and shift, so the windows step by about that much.
fn windows() -> Vec<(f32, f32, f32, f32)> {
    let mut out = Vec::new();
    for keep in [0.95, 0.9, 0.85, 0.8, 0.75, 0.7] {
        out.push((keep, keep, 0.5, 0.5));
    }
    for keep in [0.9, 0.8] {
        for (ax, ay) in [
            (0.0, 0.0),
            (0.5, 0.0),
            (1.0, 0.0),
            (0.0, 0.5),
            (1.0, 0.5),
            (0.0, 1.0),
            (0.5, 1.0),
            (1.0, 1.0),
        ] {
            out.push((keep, keep, ax, ay));
        }
    }
    out.extend([
        (0.0, 0.0, 0.5, 0.5),
        (0.0, 0.0, 0.0, 0.0),
        (0.0, 0.0, 1.0, 1.0),
        (1.0, 0.85, 0.5, 0.5),
        (0.85, 1.0, 0.5, 0.5),
    ]);
    out
}

/// Perceptual hashes of an image: the whole and its sub-windows.
#[derive(Debug, Clone)]
pub struct Fingerprint {
    pub whole: ImageHash,
    pub windows: Vec<ImageHash>,
}

impl Fingerprint {
    pub fn of(img: &RgbImage, hasher: &Hasher) -> Self {
        let (w, h) = img.dimensions();
        let dynamic = DynamicImage::ImageRgb8(img.clone());
        let windows = windows()
            .into_iter()
            .map(|(kw, kh, ax, ay)| {
                let side = w.min(h) as f32;
                let cw = if kw == 0.0 { side } else { w as f32 * kw };
                let ch = if kh == 0.0 { side } else { h as f32 * kh };
                let cw = (cw.round() as u32).clamp(1, w);
                let ch = (ch.round() as u32).clamp(1, h);
                let x = ((w - cw) as f32 * ax).round() as u32;
                let y = ((h - ch) as f32 * ay).round() as u32;
                hasher.hash_image(&dynamic.crop_imm(x, y, cw, ch))
            })
            .collect();
        Self {
            whole: hasher.hash_image(&dynamic),
            windows,
        }
    }

    /// The whole-image hash as text (for the manifest).
    pub fn phash(&self) -> String {
        self.whole.to_base64()
    }

    /// Smallest Hamming distance between the two whole images, or between one whole image and
    /// a window of the other (a crop of one is the other).
    pub fn distance(&self, other: &Fingerprint) -> u32 {
        let whole = self.whole.dist(&other.whole);
        let mine = self.windows.iter().map(|w| w.dist(&other.whole));
        let theirs = other.windows.iter().map(|w| w.dist(&self.whole));
        mine.chain(theirs).fold(whole, u32::min)
    }
}
