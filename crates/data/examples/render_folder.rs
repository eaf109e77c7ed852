//! Mirrors a folder with every image rendered (sketch | edges | grey):
//! `cargo run --release -p data --example render_folder -- edges IN OUT`
use data::rendering::{edge_drawing, pencil_sketch};
use rayon::prelude::*;
fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let (kind, input, out) = (
        &a[0],
        std::path::Path::new(&a[1]),
        std::path::Path::new(&a[2]),
    );
    let files = data::collect::source::all_files(input)?;
    files.par_iter().for_each(|p| {
        let Ok(img) = data::decode_image(p) else {
            return;
        };
        let r = match kind.as_str() {
            "edges" => edge_drawing(&img),
            "sketch" => pencil_sketch(&img),
            _ => image::DynamicImage::ImageRgb8(img).grayscale().to_rgb8(),
        };
        let dest = out
            .join(p.strip_prefix(input).unwrap())
            .with_extension("png");
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        r.save(dest).unwrap();
    });
    Ok(())
}
