//! Writes, for each image, the foreground map a backbone gives it, the contour drawing and
//! cartoon of the animal alone (what `[augment] foreground` trains on) and the photo of it alone
//! on white (`[augment] photo_on_white`):
//! `cargo run --release -p trainer --example foreground -- BACKBONE OUT_DIR IMAGE...`

use data::preprocess::resize_grey;
use data::rendering::{cartoon, contour_drawing, keep_foreground};
use model::{BackboneKind, Network};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [backbone, out, images @ ..] = args.as_slice() else {
        anyhow::bail!("usage: foreground BACKBONE OUT_DIR IMAGE...");
    };
    let kind: BackboneKind = backbone.parse()?;
    let device = burn::prelude::Device::flex();
    let finder = Network::pretrained(kind, &device)?.backbone;
    let photos = images
        .iter()
        .map(|p| data::decode_image(std::path::Path::new(p)))
        .collect::<Result<Vec<_>, _>>()?;
    let side = kind.input_size();
    let preprocess = kind.preprocess_at(side);
    let maps = trainer::foreground::foreground_maps(
        &finder,
        &photos,
        side,
        &preprocess.normalization,
        16,
        &device,
        false,
    );
    let out = std::path::Path::new(out);
    std::fs::create_dir_all(out)?;
    for (i, (photo, map)) in photos.iter().zip(&maps).enumerate() {
        let (w, h) = photo.dimensions();
        let mask = resize_grey(map, w, h, None);
        let sigma = 2.5 * w.min(h) as f32 / 224.0;
        let mut contours = contour_drawing(photo, sigma, 1);
        keep_foreground(&mut contours, &mask);
        let mut toon = cartoon(photo, sigma, 4);
        keep_foreground(&mut toon, &mask);
        let mut on_white = photo.clone();
        keep_foreground(&mut on_white, &mask);
        mask.save(out.join(format!("{i}-map.png")))?;
        contours.save(out.join(format!("{i}-contours.png")))?;
        toon.save(out.join(format!("{i}-cartoon.png")))?;
        on_white.save(out.join(format!("{i}-photo-on-white.png")))?;
    }
    Ok(())
}
