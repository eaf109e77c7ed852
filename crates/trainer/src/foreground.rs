//! Where the animal is in each training photo, from a pretrained backbone: the strength (L2
//! norm over channels) of its last feature map, scaled so the image's strongest cell is 255.
//!
//! Why: drawn queries (hand sketches, clip-art cartoons) show the animal alone on white, while
//! a rendering of a whole photo also draws the grass and trees behind it. An ImageNet backbone
//! responds most strongly where the object is, so its feature map is a cheap, label-free
//! foreground estimate (coarse: one cell per 32 pixels) for drawings of the animal alone
//! (`[augment] foreground`).

use burn::prelude::*;
use data::Normalization;
use data::load::progress_bar;
use data::preprocess::{normalize_into, resize_rgb};
use image::{GrayImage, RgbImage};
use model::Backbone;
use rayon::prelude::*;

/// One foreground map per image (each `side/32` square, 0 weakest to 255 strongest),
/// computed on the whole image stretched to `side`×`side`.
pub fn foreground_maps(
    backbone: &Backbone,
    images: &[RgbImage],
    side: u32,
    normalization: &Normalization,
    batch_size: usize,
    device: &Device,
    quiet: bool,
) -> Vec<GrayImage> {
    let plane = 3 * (side * side) as usize;
    let bar = progress_bar(images.len(), "finding the animals", quiet);
    let mut maps = Vec::with_capacity(images.len());
    for chunk in images.chunks(batch_size.max(1)) {
        let mut pixels = vec![0f32; chunk.len() * plane];
        pixels
            .par_chunks_mut(plane)
            .zip(chunk.par_iter())
            .for_each(|(dst, img)| {
                normalize_into(&resize_rgb(img, side, side, None), normalization, dst)
            });
        let x = Tensor::<4>::from_data(
            TensorData::new(pixels, [chunk.len(), 3, side as usize, side as usize]),
            device,
        );
        let strength = backbone.feature_map(x).powi_scalar(2).sum_dim(1).sqrt();
        let [b, _, h, w] = strength.dims();
        let values: Vec<f32> = strength.into_data().try_to_vec().expect("f32 feature map");
        maps.extend((0..b).map(|i| to_map(&values[i * h * w..(i + 1) * h * w], w, h)));
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    maps
}

/// Scales one map so that its weakest cell is 0 and its strongest 255.
fn to_map(values: &[f32], width: usize, height: usize) -> GrayImage {
    let lo = values.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let range = (hi - lo).max(f32::EPSILON);
    GrayImage::from_fn(width as u32, height as u32, |x, y| {
        let v = values[y as usize * width + x as usize];
        image::Luma([((v - lo) / range * 255.0).round() as u8])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_span_the_full_range_in_image_layout() {
        // Row-major: the strongest value (bottom right) must land at (2, 1).
        let map = to_map(&[1.0, 2.0, 3.0, 2.0, 2.0, 5.0], 3, 2);
        assert_eq!(map.dimensions(), (3, 2));
        assert_eq!(map.get_pixel(0, 0).0[0], 0);
        assert_eq!(map.get_pixel(2, 1).0[0], 255);
        assert_eq!(map.get_pixel(2, 0).0[0], 128);
    }

    #[test]
    fn one_map_per_image_at_a_32nd_of_the_side() {
        let device = Device::flex();
        let backbone = model::Network::new(model::BackboneKind::MobileNetV2, None, &device)
            .backbone
            .valid();
        let images: Vec<RgbImage> = (0..3u8)
            .map(|i| RgbImage::from_fn(100, 80, |x, y| image::Rgb([x as u8, y as u8, i * 80])))
            .collect();
        let maps = foreground_maps(
            &backbone,
            &images,
            64,
            &Normalization::IMAGENET,
            2,
            &device,
            true,
        );
        assert_eq!(maps.len(), 3);
        for map in &maps {
            assert_eq!(map.dimensions(), (2, 2));
        }
    }
}
