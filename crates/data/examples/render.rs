//! Writes the texture-removing renderings of one image, to see what training sees:
//! `cargo run --release -p data --example render -- IMAGE OUT_DIR`

use data::rendering::{
    blur, cartoon, contour_drawing, edge_drawing, pencil_sketch, posterize, random_convolution,
};

/// A fixed 3×3 restyling filter (training draws a new one for every view).
const RESTYLE: [f32; 81] = {
    let mut w = [0.0; 81];
    let mut i = 0;
    while i < 81 {
        // A deterministic spread of signs and sizes in [-0.33, 0.33].
        w[i] = ((i * 37 % 17) as f32 - 8.0) / 24.0;
        i += 1;
    }
    w
};

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
        (
            "random-convolution",
            random_convolution(&img, &RESTYLE, 3, 0.3),
        ),
    ] {
        rendered.save(out.join(format!("{name}.png")))?;
    }
    Ok(())
}
