//! Renderings of a photo that keep its shapes and drop its colour and texture: a pencil
//! sketch, an edge drawing, a contour drawing (thin lines, like a hand sketch), a cartoon (flat
//! colours with dark outlines), a posterised version and a blur. ImageNet features
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

type GreyF32 = image::ImageBuffer<image::Luma<f32>, Vec<f32>>;

/// The greyscale image as floats, so smoothing keeps fractions.
fn to_f32(g: &GrayImage) -> GreyF32 {
    GreyF32::from_fn(g.width(), g.height(), |x, y| {
        image::Luma([g.get_pixel(x, y).0[0] as f32])
    })
}

/// Sobel gradients `[gx, gy]` of every pixel, row-major, edges clamped (the border pixel
/// repeats).
fn sobel(g: &GreyF32) -> Vec<[f32; 2]> {
    let (w, h) = (g.width() as i64, g.height() as i64);
    let at = |x: i64, y: i64| -> f32 {
        g.get_pixel(x.clamp(0, w - 1) as u32, y.clamp(0, h - 1) as u32)
            .0[0]
    };
    let mut out = Vec::with_capacity((w * h) as usize);
    for y in 0..h {
        for x in 0..w {
            let gx = at(x + 1, y - 1) + 2.0 * at(x + 1, y) + at(x + 1, y + 1)
                - at(x - 1, y - 1)
                - 2.0 * at(x - 1, y)
                - at(x - 1, y + 1);
            let gy = at(x - 1, y + 1) + 2.0 * at(x, y + 1) + at(x + 1, y + 1)
                - at(x - 1, y - 1)
                - 2.0 * at(x, y - 1)
                - at(x + 1, y - 1);
            out.push([gx, gy]);
        }
    }
    out
}

/// Paints white wherever `foreground` (same size; 0 background, 255 object) says there is no
/// object, blending across the ramp between `FOREGROUND_RAMP` thresholds. A hand sketch or a
/// clip-art cartoon draws the animal alone on white; a rendering of a whole photo also draws
/// grass, branches and fences, which no drawn query has.
pub fn keep_foreground(img: &mut RgbImage, foreground: &GrayImage) {
    assert_eq!(img.dimensions(), foreground.dimensions(), "mask size");
    let [lo, hi] = FOREGROUND_RAMP;
    for (px, m) in img.pixels_mut().zip(foreground.pixels()) {
        let t = ((m.0[0] as f32 / 255.0 - lo) / (hi - lo)).clamp(0.0, 1.0);
        let alpha = t * t * (3.0 - 2.0 * t);
        px.0 =
            px.0.map(|v| (alpha * v as f32 + (1.0 - alpha) * 255.0).round() as u8);
    }
}

/// Foreground strengths (fractions of the image's strongest) below which a pixel is background
/// and above which it is object; smooth in between.
pub const FOREGROUND_RAMP: [f32; 2] = [0.3, 0.5];

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
    let magnitude: Vec<f32> = sobel(&to_f32(&g))
        .into_iter()
        .map(|[gx, gy]| (gx * gx + gy * gy).sqrt())
        .collect();
    let mut sorted = magnitude.clone();
    sorted.sort_by(f32::total_cmp);
    let strong = sorted[(sorted.len() * 98 / 100).min(sorted.len() - 1)].max(1.0);
    let out = GrayImage::from_fn(w, h, |x, y| {
        let m = magnitude[(y * w + x) as usize] / strong;
        image::Luma([(255.0 * (1.0 - m.min(1.0))).round() as u8])
    });
    to_rgb(&out)
}

/// Contour drawing: thin black lines on white where the smoothed image has a lasting edge,
/// like a hand-drawn sketch. Canny's method (Gaussian smoothing by `sigma` pixels, Sobel
/// gradients, non-maximum suppression, hysteresis between the 90th percentile of the gradient
/// and half of it), then chains shorter than an eighth of the image side are dropped, so fur
/// and grass texture leave no specks. `thickness` 1 draws one-pixel lines; each extra unit
/// widens them by a pixel on every side.
pub fn contour_drawing(img: &RgbImage, sigma: f32, thickness: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let lines = thicken(&contour_lines(&grey(img), sigma), w, h, thickness);
    RgbImage::from_fn(w, h, |x, y| {
        let v = if lines[(y * w + x) as usize] { 0 } else { 255 };
        Rgb([v, v, v])
    })
}

/// Cartoon: the photo smoothed, posterised to `levels` flat values a channel, with the contour
/// lines of [`contour_drawing`] drawn over it in black, two pixels wide, like cel-shaded
/// clip art.
pub fn cartoon(img: &RgbImage, sigma: f32, levels: u8) -> RgbImage {
    let (w, h) = img.dimensions();
    let lines = thicken(&contour_lines(&grey(img), sigma), w, h, 2);
    let mut flat = imageops::blur(img, (sigma * 0.75).max(0.5));
    posterize(&mut flat, levels);
    for (i, px) in flat.pixels_mut().enumerate() {
        if lines[i] {
            px.0 = [0, 0, 0];
        }
    }
    flat
}

/// Canny edge pixels of `g` (row-major, `true` on a line), see [`contour_drawing`].
fn contour_lines(g: &GrayImage, sigma: f32) -> Vec<bool> {
    let (w, h) = (g.width() as usize, g.height() as usize);
    let gradients = sobel(&imageops::blur(&to_f32(g), sigma.max(0.3)));
    let mut magnitude = vec![0f32; w * h];
    let mut direction = vec![0u8; w * h];
    for (i, [gx, gy]) in gradients.into_iter().enumerate() {
        magnitude[i] = (gx * gx + gy * gy).sqrt();
        // The gradient's direction rounded to 0°, 45°, 90° or 135°.
        let angle = gy.atan2(gx).to_degrees().rem_euclid(180.0);
        direction[i] = (((angle + 22.5) / 45.0) as u8) % 4;
    }
    // Non-maximum suppression: keep a pixel only where it is the ridge across the edge.
    let m = |x: isize, y: isize| -> f32 {
        if x < 0 || y < 0 || x >= w as isize || y >= h as isize {
            0.0
        } else {
            magnitude[y as usize * w + x as usize]
        }
    };
    let mut ridge = vec![0f32; w * h];
    for y in 0..h {
        for x in 0..w {
            let (dx, dy) = [(1, 0), (1, 1), (0, 1), (-1, 1)][direction[y * w + x] as usize];
            let (xi, yi) = (x as isize, y as isize);
            let v = magnitude[y * w + x];
            if v >= m(xi + dx, yi + dy) && v >= m(xi - dx, yi - dy) {
                ridge[y * w + x] = v;
            }
        }
    }
    let mut sorted = magnitude.clone();
    sorted.sort_by(f32::total_cmp);
    // A floor keeps a flat image (all gradients near zero) from drawing its noise.
    let high = sorted[(sorted.len() * 9 / 10).min(sorted.len() - 1)].max(8.0);
    let low = high / 2.0;
    // Hysteresis and length filter over 8-connected chains of weak pixels.
    let min_len = (w.min(h) / 8).max(3);
    let mut lines = vec![false; w * h];
    let mut seen = vec![false; w * h];
    let mut stack = Vec::new();
    let mut chain = Vec::new();
    for start in 0..w * h {
        if seen[start] || ridge[start] < low {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        chain.clear();
        let mut strong = false;
        while let Some(i) = stack.pop() {
            chain.push(i);
            strong |= ridge[i] >= high;
            let (x, y) = ((i % w) as isize, (i / w) as isize);
            for (dx, dy) in [
                (-1, -1),
                (0, -1),
                (1, -1),
                (-1, 0),
                (1, 0),
                (-1, 1),
                (0, 1),
                (1, 1),
            ] {
                let (nx, ny) = (x + dx, y + dy);
                if nx < 0 || ny < 0 || nx >= w as isize || ny >= h as isize {
                    continue;
                }
                let j = ny as usize * w + nx as usize;
                if !seen[j] && ridge[j] >= low {
                    seen[j] = true;
                    stack.push(j);
                }
            }
        }
        if strong && chain.len() >= min_len {
            for &i in &chain {
                lines[i] = true;
            }
        }
    }
    lines
}

/// Widens one-pixel lines: `thickness` 1 leaves them, each extra unit adds a pixel all round.
fn thicken(lines: &[bool], w: u32, h: u32, thickness: u32) -> Vec<bool> {
    let (w, h) = (w as isize, h as isize);
    let r = thickness.saturating_sub(1) as isize;
    if r == 0 {
        return lines.to_vec();
    }
    let mut out = vec![false; lines.len()];
    for y in 0..h {
        for x in 0..w {
            if lines[(y * w + x) as usize] {
                for ny in (y - r).max(0)..=(y + r).min(h - 1) {
                    for nx in (x - r).max(0)..=(x + r).min(w - 1) {
                        out[(ny * w + nx) as usize] = true;
                    }
                }
            }
        }
    }
    out
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

/// Random-convolution style randomisation (RandConv, Xu et al. 2021): the image through a
/// random `k`×`k` convolution, 3 channels in and out (`weights` laid out `[out][in][ky][kx]`),
/// each output channel standardised to mid-grey ± 60 levels per standard deviation, then mixed
/// with the original (`keep` of it). Colours and local textures become random while shapes
/// stay, so the network cannot lean on any one style: a painting or a cartoon is one more.
pub fn random_convolution(img: &RgbImage, weights: &[f32], k: usize, keep: f32) -> RgbImage {
    assert_eq!(weights.len(), 9 * k * k, "3×3×k×k weights");
    let (w, h) = (img.width() as i64, img.height() as i64);
    let r = (k / 2) as i64;
    let at = |x: i64, y: i64, c: usize| -> f32 {
        img.get_pixel(x.clamp(0, w - 1) as u32, y.clamp(0, h - 1) as u32)
            .0[c] as f32
            / 255.0
    };
    let n = (w * h) as usize;
    let mut out = vec![[0f32; 3]; n];
    for y in 0..h {
        for x in 0..w {
            let mut acc = [0f32; 3];
            for i in 0..3 {
                for ky in 0..k {
                    for kx in 0..k {
                        let v = at(x + kx as i64 - r, y + ky as i64 - r, i);
                        for (o, a) in acc.iter_mut().enumerate() {
                            *a += weights[((o * 3 + i) * k + ky) * k + kx] * v;
                        }
                    }
                }
            }
            out[(y * w + x) as usize] = acc;
        }
    }
    let mut stats = [(0f32, 0f32); 3];
    for (c, stat) in stats.iter_mut().enumerate() {
        let mean = out.iter().map(|p| p[c]).sum::<f32>() / n as f32;
        let var = out.iter().map(|p| (p[c] - mean).powi(2)).sum::<f32>() / n as f32;
        *stat = (mean, var.sqrt().max(1e-6));
    }
    RgbImage::from_fn(img.width(), img.height(), |x, y| {
        let p = out[(y as i64 * w + x as i64) as usize];
        let original = img.get_pixel(x, y).0;
        Rgb(std::array::from_fn(|c| {
            let (mean, std) = stats[c];
            let styled = (128.0 + 60.0 * (p[c] - mean) / std).clamp(0.0, 255.0);
            (keep * original[c] as f32 + (1.0 - keep) * styled).round() as u8
        }))
    })
}

/// Gaussian blur with standard deviation `sigma` pixels.
pub fn blur(img: &RgbImage, sigma: f32) -> RgbImage {
    imageops::blur(img, sigma)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dark disc of radius 30 centred in a 96×96 image, on `background`.
    fn disc_on(background: impl Fn(u32, u32) -> Rgb<u8>) -> RgbImage {
        RgbImage::from_fn(96, 96, |x, y| {
            let (dx, dy) = (x as f32 - 48.0, y as f32 - 48.0);
            if dx * dx + dy * dy < 30.0 * 30.0 {
                Rgb([40, 60, 160])
            } else {
                background(x, y)
            }
        })
    }

    /// The disc on a light background with faint vertical stripes.
    fn disc() -> RgbImage {
        disc_on(|x, _| Rgb([200 + (x % 3) as u8 * 10, 190, 120]))
    }

    fn is_grey(img: &RgbImage) -> bool {
        img.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2])
    }

    #[test]
    fn keep_foreground_whitens_the_background_and_keeps_the_object() {
        let mut img = RgbImage::from_pixel(3, 1, Rgb([10, 20, 30]));
        let mask = GrayImage::from_raw(3, 1, vec![0, 102, 255]).unwrap();
        keep_foreground(&mut img, &mask);
        assert_eq!(img.get_pixel(0, 0).0, [255; 3]);
        assert_eq!(img.get_pixel(2, 0).0, [10, 20, 30]);
        // 0.4 is halfway up the ramp: halfway between the pixel and white.
        let mid = img.get_pixel(1, 0).0;
        assert!((mid[0] as i32 - 133).abs() <= 2, "{mid:?}");
    }

    #[test]
    fn random_convolution_restyles_colours_and_keeps_shapes() {
        let img = disc();
        // 1×1: a per-pixel colour map, so the disc stays one colour and the background another.
        let swap: Vec<f32> = vec![0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0];
        let styled = random_convolution(&img, &swap, 1, 0.0);
        let inside = styled.get_pixel(48, 48).0;
        assert!(styled.pixels().filter(|p| p.0 == inside).count() > 2500);
        assert_ne!(inside, styled.get_pixel(2, 2).0);
        assert_ne!(inside, img.get_pixel(48, 48).0, "colours unchanged");
        // The disc is blue: with red and blue swapped it turns red-dominant.
        assert!(inside[0] > inside[2], "{inside:?}");
        assert_eq!(random_convolution(&img, &[0.5; 81], 3, 1.0), img);
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

    /// The disc on a background of fine noise-like texture (a one-pixel checkerboard of small
    /// contrast), as fur or grass would be.
    fn disc_on_texture() -> RgbImage {
        disc_on(|x, y| {
            let t = if (x + y) % 2 == 0 { 12 } else { 0 };
            Rgb([200 + t, 190 + t, 120 + t])
        })
    }

    fn dark(img: &RgbImage) -> Vec<(u32, u32)> {
        img.enumerate_pixels()
            .filter(|(_, _, p)| p.0[0] < 128)
            .map(|(x, y, _)| (x, y))
            .collect()
    }

    #[test]
    fn contours_are_thin_lines_on_the_outline_only() {
        let c = contour_drawing(&disc_on_texture(), 1.5, 1);
        assert!(is_grey(&c));
        assert!(c.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
        let dark = dark(&c);
        // Every line pixel lies on the disc's rim, none in the textured background.
        for &(x, y) in &dark {
            let r = ((x as f32 - 48.0).powi(2) + (y as f32 - 48.0).powi(2)).sqrt();
            assert!(
                (r - 30.0).abs() < 3.0,
                "line pixel at ({x}, {y}), radius {r}"
            );
        }
        // The rim is drawn nearly all the way round, one or two pixels wide.
        let circumference = 2.0 * std::f32::consts::PI * 30.0;
        let n = dark.len() as f32;
        assert!(
            n > 0.8 * circumference && n < 2.5 * circumference,
            "{n} line pixels"
        );
    }

    #[test]
    fn thicker_contours_cover_more_and_a_flat_image_draws_nothing() {
        let thin = dark(&contour_drawing(&disc(), 1.5, 1)).len();
        let thick = dark(&contour_drawing(&disc(), 1.5, 2)).len();
        assert!(thick > 2 * thin, "{thin} then {thick}");
        let flat = RgbImage::from_pixel(64, 48, Rgb([90, 120, 30]));
        assert!(dark(&contour_drawing(&flat, 1.5, 2)).is_empty());
    }

    #[test]
    fn cartoon_is_flat_colour_with_black_outline() {
        let c = cartoon(&disc_on_texture(), 1.5, 3);
        // Inside the disc: one flat posterised colour; on the rim: black.
        assert_eq!(c.get_pixel(48, 48).0, [0, 0, 128]);
        let rim = (16..=21)
            .map(|x| c.get_pixel(x, 48).0)
            .filter(|p| *p == [0, 0, 0])
            .count();
        assert!(rim >= 1, "no outline at the rim");
        assert!(c.get_pixel(5, 90).0 != [0, 0, 0]);
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
