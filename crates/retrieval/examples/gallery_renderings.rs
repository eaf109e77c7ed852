//! Gallery images embedded a second time as drawings: does matching a query against a gallery
//! photo's renderings (the trainer's pencil sketch, edges, contours and cartoon) as well as the
//! photo itself find drawn queries' classes, and what does it cost photo queries?
//!
//! For each query/gallery pair it prints top-1, score and mAP@10 for the plain ranking and for
//! each way of adding the renderings: the smaller of the photo's and a rendering's distance
//! (`min`), or the gallery embedding moved toward a rendering's, `normalise(e + β·e_r)`
//! (`avg`), and both over all four renderings at once. `sym` moves the query embeddings the
//! same way, so that a drawn query's rendering meets a photo's rendering as well as the two
//! originals meeting each other.
//!
//! ```sh
//! cargo run --release -p retrieval --example gallery_renderings -- checkpoints/arcface \
//!   ../shared/datasets/domains/query ../shared/datasets/domains/gallery
//! ```

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use data::folder::ImageEntry;
use data::load::load_images;
use data::rendering::{cartoon, contour_drawing, edge_drawing, pencil_sketch};
use image::RgbImage;
use retrieval::embed::{EmbedOptions, Member};
use retrieval::metrics::evaluate;
use retrieval::rank::{distances, top_k};

/// The decodable images of a folder (`data::load::load_images`: unusable files are named on
/// stderr and left out), with their entries.
fn load(dir: &Path) -> Result<(Vec<ImageEntry>, Vec<RgbImage>)> {
    let (_, entries) = data::folder::list_images(dir, None)?;
    Ok(load_images(&entries, "decoding", true)
        .loaded
        .into_iter()
        .unzip())
}

/// A rendering with the trainer's middle settings (line width 2.5 px at 224 px, 5 levels).
fn render(kind: &str, image: &RgbImage) -> RgbImage {
    let sigma = 2.5 * image.width().min(image.height()) as f32 / 224.0;
    match kind {
        "sketch" => pencil_sketch(image),
        "edges" => edge_drawing(image),
        "contours" => contour_drawing(image, sigma, 2),
        _ => cartoon(image, sigma, 5),
    }
}

fn normalise(row: &mut [f32]) {
    let n = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    row.iter_mut().for_each(|x| *x /= n);
}

/// `normalise(e + β·r)` row by row.
fn moved(gallery: &[f32], toward: &[f32], beta: f32, dim: usize) -> Vec<f32> {
    let mut out = gallery.to_vec();
    for (row, r) in out.chunks_mut(dim).zip(toward.chunks(dim)) {
        row.iter_mut().zip(r).for_each(|(a, b)| *a += beta * b);
        normalise(row);
    }
    out
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 || args.len().is_multiple_of(2) {
        bail!("usage: gallery_renderings MODEL QUERY GALLERY [QUERY GALLERY ...]");
    }
    let device = Device::flex();
    let member = Member::load(&args[0], &device).with_context(|| args[0].clone())?;
    let options = EmbedOptions {
        cache: false,
        quiet: true,
        ..Default::default()
    };
    let dim = member.embedding_dim();
    for pair in args[1..].chunks(2) {
        let (query_entries, queries) = load(Path::new(&pair[0]))?;
        let (gallery_entries, gallery) = load(Path::new(&pair[1]))?;
        let q = member.embed_images(&queries, &options);
        let g = member.embed_images(&gallery, &options);
        let n = gallery.len();
        let qlab: Vec<Option<&str>> = query_entries.iter().map(|e| e.label.as_deref()).collect();
        let glab: Vec<Option<&str>> = gallery_entries.iter().map(|e| e.label.as_deref()).collect();
        let names: Vec<String> = gallery_entries.iter().map(|e| e.name.clone()).collect();
        // Whole rankings, ties broken by name, as `retrieval evaluate` ranks.
        let report = |name: &str, d: &[f32]| {
            let rankings = top_k(d, n, &names, 0);
            let m = evaluate(&qlab, &glab, &rankings).overall;
            println!(
                "{:<40} {name:<22} top-1 {:.3}  score {:.0}  mAP@10 {:.3}",
                pair[0], m.top1, m.score, m.map10
            );
        };
        let plain = distances(&q, &g, dim, &device);
        report("plain", &plain);
        let mut min_all = plain.clone();
        let mut mean_all = g.clone();
        let mut query_all = q.clone();
        for kind in ["sketch", "edges", "contours", "cartoon"] {
            let rendered: Vec<RgbImage> = gallery.iter().map(|i| render(kind, i)).collect();
            let r = member.embed_images(&rendered, &options);
            let rendered_queries: Vec<RgbImage> = queries.iter().map(|i| render(kind, i)).collect();
            let rq = member.embed_images(&rendered_queries, &options);
            let dr = distances(&q, &r, dim, &device);
            let min: Vec<f32> = plain.iter().zip(&dr).map(|(a, b)| a.min(*b)).collect();
            min_all
                .iter_mut()
                .zip(&dr)
                .for_each(|(m, b)| *m = m.min(*b));
            report(&format!("min {kind}"), &min);
            for beta in [0.5, 1.0] {
                let d = distances(&q, &moved(&g, &r, beta, dim), dim, &device);
                report(&format!("avg {kind} β {beta}"), &d);
            }
            for beta in [0.25, 0.5, 1.0] {
                let d = distances(
                    &moved(&q, &rq, beta, dim),
                    &moved(&g, &r, beta, dim),
                    dim,
                    &device,
                );
                report(&format!("sym {kind} β {beta}"), &d);
            }
            mean_all
                .iter_mut()
                .zip(&r)
                .for_each(|(a, b)| *a += 0.25 * b);
            query_all
                .iter_mut()
                .zip(&rq)
                .for_each(|(a, b)| *a += 0.25 * b);
        }
        report("min all", &min_all);
        mean_all.chunks_mut(dim).for_each(normalise);
        report(
            "avg all (β 0.25 each)",
            &distances(&q, &mean_all, dim, &device),
        );
        query_all.chunks_mut(dim).for_each(normalise);
        report(
            "sym all (β 0.25 each)",
            &distances(&query_all, &mean_all, dim, &device),
        );
    }
    Ok(())
}
