//! Renderings of a photo that keep its shapes and drop its colour and texture: a pencil
//! sketch, an edge drawing, a posterised (cartoon-like) version and a blur. ImageNet features
//! lean on texture, so a drawing of a dog lands near objects rather than near photos of dogs;
//! training on these renderings teaches the embedding that shape is what matters.

use image::{GrayImage, Rgb, RgbImage, imageops};

fn grey(img: &RgbImage) -> GrayImage {
    GrayImage::from_fn(img.width(), img.height(), |x, y| {
        let [r, g, b] = img.get_pixel(x, y).0.map(f32::from);
        image::Luma([(0.299 * r + 0.587 * g + 0.114 * b).round() as u8])
    })
}

fn to_rgb(grey: &GrayImage) -> RgbImage {
    RgbImage::from_fn(grey.width(), grey.height(), |x, y| {
        let v = grey.get_pixel(x, y).0[0];
        Rgb([v, v, v])
    })
}

/// Pencil sketch by colour dodge: the greyscale image divided by its blurred negative. Flat
/// regions go white and only the strokes around edges stay dark, like graphite on paper.
pub fn pencil_sketch(img: &RgbImage) -> RgbImage {
    let g = grey(img);
    let sigma = (img.width().min(img.height()) as f32 / 40.0).max(1.5);
    let negative = GrayImage::from_fn(g.width(), g.height(), |x, y| {
        image::Luma([255 - g.get_pixel(x, y).0[0]])
    });
    let blurred = imageops::blur(&negative, sigma);
    let sketch = GrayImage::from_fn(g.width(), g.height(), |x, y| {
        let base = g.get_pixel(x, y).0[0] as f32;
        let blend = blurred.get_pixel(x, y).0[0] as f32;
        let v = if blend >= 255.0 {
            255.0
        } else {
            (base * 255.0 / (255.0 - blend)).min(255.0)
        };
        image::Luma([v.round() as u8])
    });
    to_rgb(&sketch)
}

/// Edge drawing: Sobel gradient magnitude of the lightly blurred greyscale image, scaled so the
/// strongest 2 % of edges are black, drawn dark on a white page.
pub fn edge_drawing(img: &RgbImage) -> RgbImage {
    let g = imageops::blur(&grey(img), 1.0);
    let (w, h) = g.dimensions();
    let at = |x: i64, y: i64| -> f32 {
        let x = x.clamp(0, w as i64 - 1) as u32;
        let y = y.clamp(0, h as i64 - 1) as u32;
        g.get_pixel(x, y).0[0] as f32
    };
    let mut magnitude = Vec::with_capacity((w * h) as usize);
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            let gx = at(x + 1, y - 1) + 2.0 * at(x + 1, y) + at(x + 1, y + 1)
                - at(x - 1, y - 1)
                - 2.0 * at(x - 1, y)
                - at(x - 1, y + 1);
            let gy = at(x - 1, y + 1) + 2.0 * at(x, y + 1) + at(x + 1, y + 1)
                - at(x - 1, y - 1)
                - 2.0 * at(x, y - 1)
                - at(x + 1, y - 1);
            magnitude.push((gx * gx + gy * gy).sqrt());
        }
    }
    let mut sorted = magnitude.clone();
    sorted.sort_by(f32::total_cmp);
    let strong = sorted[(sorted.len() * 98 / 100).min(sorted.len() - 1)].max(1.0);
    let out = GrayImage::from_fn(w, h, |x, y| {
        let m = magnitude[(y * w + x) as usize] / strong;
        image::Luma([(255.0 * (1.0 - m.min(1.0))).round() as u8])
    });
    to_rgb(&out)
}

/// Posterise: each channel quantised to `levels` flat values (2 to 255), like cel shading.
pub fn posterize(img: &mut RgbImage, levels: u8) {
    let levels = levels.max(2) as f32;
    let step = 255.0 / (levels - 1.0);
    for px in img.pixels_mut() {
        px.0 =
            px.0.map(|v| ((v as f32 / step).round() * step).round().clamp(0.0, 255.0) as u8);
    }
}

/// Gaussian blur with standard deviation `sigma` pixels.
pub fn blur(img: &RgbImage, sigma: f32) -> RgbImage {
    imageops::blur(img, sigma)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dark disc on a light textured background.
    fn disc() -> RgbImage {
        RgbImage::from_fn(96, 96, |x, y| {
            let (dx, dy) = (x as f32 - 48.0, y as f32 - 48.0);
            if dx * dx + dy * dy < 30.0 * 30.0 {
                Rgb([40, 60, 160])
            } else {
                Rgb([200 + (x % 3) as u8 * 10, 190, 120])
            }
        })
    }

    fn is_grey(img: &RgbImage) -> bool {
        img.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2])
    }

    #[test]
    fn sketch_is_white_paper_with_dark_outline() {
        let s = pencil_sketch(&disc());
        assert!(is_grey(&s));
        // The inside of the flat disc and the far background are (nearly) white paper.
        assert!(s.get_pixel(48, 48).0[0] > 240, "{:?}", s.get_pixel(48, 48));
        // Just inside the disc's rim the stroke is dark.
        let rim = (17..=20).map(|x| s.get_pixel(x, 48).0[0]).min().unwrap();
        assert!(rim < 160, "rim {rim}");
    }

    #[test]
    fn edges_are_black_on_white_only_at_the_outline() {
        let e = edge_drawing(&disc());
        assert!(is_grey(&e));
        assert!(e.get_pixel(48, 48).0[0] > 250);
        assert!(e.get_pixel(5, 90).0[0] > 200);
        let rim = (15..=21).map(|x| e.get_pixel(x, 48).0[0]).min().unwrap();
        assert!(rim < 60, "rim {rim}");
    }

    #[test]
    fn posterize_keeps_only_the_levels() {
        let mut img = RgbImage::from_fn(16, 16, |x, y| Rgb([(x * 16) as u8, (y * 16) as u8, 77]));
        posterize(&mut img, 3);
        assert!(
            img.pixels()
                .all(|p| p.0.iter().all(|v| [0, 128, 255].contains(v)))
        );
    }

    #[test]
    fn blur_smooths_a_step() {
        let img = RgbImage::from_fn(
            32,
            8,
            |x, _| if x < 16 { Rgb([0; 3]) } else { Rgb([255; 3]) },
        );
        let b = blur(&img, 2.0);
        let v = b.get_pixel(16, 4).0[0];
        assert!(v > 60 && v < 200, "{v}");
        assert!(b.get_pixel(0, 4).0[0] < 10 && b.get_pixel(31, 4).0[0] > 245);
    }
}
