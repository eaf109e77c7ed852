//! Writes the texture-removing renderings of one image, to see what training sees:
//! `cargo run --release -p data --example render -- IMAGE OUT_DIR`

use data::rendering::{blur, cartoon, contour_drawing, edge_drawing, pencil_sketch, posterize};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [image, out] = args.as_slice() else {
        anyhow::bail!("usage: render IMAGE OUT_DIR");
    };
    let img = data::decode_image(std::path::Path::new(image))?;
    let out = std::path::Path::new(out);
    std::fs::create_dir_all(out)?;
    let mut poster = img.clone();
    posterize(&mut poster, 3);
    for (name, rendered) in [
        ("original", img.clone()),
        ("sketch", pencil_sketch(&img)),
        ("edges", edge_drawing(&img)),
        ("contours", contour_drawing(&img, 2.5, 1)),
        ("cartoon", cartoon(&img, 2.5, 4)),
        ("posterize", poster),
        ("blur", blur(&img, 2.0)),
    ] {
        rendered.save(out.join(format!("{name}.png")))?;
    }
    Ok(())
}
