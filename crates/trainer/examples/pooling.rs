//! Probe: how the last feature map is pooled, on a model as trained.
//!
//! `cargo run --release -p trainer --example pooling -- MODEL [MODEL...]`
//!
//! For each model (a backbone name or a checkpoint) and each visible pair (val, photos, novel,
//! domains), prints top-1 / mAP@10 / score of the embedding with the backbone's last feature
//! map pooled by:
//! - `avg`: the mean over each plane (what the model does);
//! - `gem p`: the generalised mean `(mean x^p)^(1/p)` (Radenović et al., TPAMI 2019), which
//!   leans toward the plane's strongest places as `p` grows;
//! - `max`: the largest value of each plane;
//! - `avg head + gem p features`: a trained model's head fed the mean it was trained on, the
//!   features beside it pooled by the generalised mean.

use std::path::Path;

use anyhow::Result;
use burn::prelude::*;
use data::{ImageEntry, list_images};
use model::head::l2_normalize;
use model::network::EmbeddingOutput;
use model::{ModelSpec, Network};
use retrieval::embed::{EmbeddingSet, batch_tensor};
use retrieval::evaluation::evaluate_sets;

const PAIRS: [(&str, &str); 4] = [
    ("val", "../shared/datasets/animals10/val"),
    ("photos", "../shared/datasets/photos"),
    ("novel", "../shared/datasets/novel"),
    ("domains", "../shared/datasets/domains"),
];

/// A folder's entries and the last feature map `[N, C, h, w]` of each image, in order.
fn feature_maps(
    dir: &Path,
    net: &Network,
    device: &Device,
) -> Result<(Vec<ImageEntry>, Tensor<4>)> {
    let (_, entries) = list_images(dir, None)?;
    let preprocess = net.preprocess();
    let mut pixels = Vec::new();
    for e in &entries {
        let bytes = data::decode::read_file(&e.path)?;
        pixels.push(preprocess.apply(&data::decode::decode_bytes(&e.path, &bytes)?));
    }
    let side = preprocess.crop as usize;
    let maps = pixels
        .chunks(32)
        .map(|c| net.backbone.feature_map(batch_tensor(c, side, device)))
        .collect();
    Ok((entries, Tensor::cat(maps, 0)))
}

fn avg(maps: Tensor<4>) -> Tensor<2> {
    let [n, c, h, w] = maps.dims();
    maps.reshape([n, c, h * w]).mean_dim(2).reshape([n, c])
}

fn gem(maps: Tensor<4>, p: f32) -> Tensor<2> {
    avg(maps.clamp_min(1e-6).powf_scalar(p)).powf_scalar(1.0 / p)
}

fn max(maps: Tensor<4>) -> Tensor<2> {
    let [n, c, h, w] = maps.dims();
    maps.reshape([n, c, h * w]).max_dim(2).reshape([n, c])
}

/// A pooling of the feature maps into an embedding, by name.
type Variant<'a> = (String, Box<dyn Fn(Tensor<4>) -> Tensor<2> + 'a>);

fn main() -> Result<()> {
    let device = Device::flex();
    println!("model,pair,variant,top1,map10,score");
    for spec in std::env::args().skip(1) {
        let net = &Network::load(&ModelSpec::parse(&spec)?, &device)?;
        let mut variants: Vec<Variant> = vec![
            ("avg".into(), Box::new(|m| net.embed_features(avg(m)))),
            ("max".into(), Box::new(|m| net.embed_features(max(m)))),
        ];
        for p in [2.0f32, 3.0, 4.0] {
            variants.push((
                format!("gem {p}"),
                Box::new(move |m| net.embed_features(gem(m, p))),
            ));
            if let (Some(head), EmbeddingOutput::Concat) = (&net.head, net.output) {
                variants.push((
                    format!("avg head + gem {p} features"),
                    Box::new(move |m: Tensor<4>| {
                        let projected = head.forward(avg(m.clone()));
                        l2_normalize(Tensor::cat(vec![projected, l2_normalize(gem(m, p))], 1))
                    }),
                ));
            }
        }
        for (name, root) in PAIRS {
            let (qe, qm) = feature_maps(&Path::new(root).join("query"), net, &device)?;
            let (ge, gm) = feature_maps(&Path::new(root).join("gallery"), net, &device)?;
            for (variant, embed) in &variants {
                let q = EmbeddingSet::from_tensor(&qe, embed(qm.clone()))?;
                let g = EmbeddingSet::from_tensor(&ge, embed(gm.clone()))?;
                let r = evaluate_sets(&q, &g, None, &device)?.overall;
                println!(
                    "{spec},{name},{variant},{:.3},{:.3},{:.0}",
                    r.top1, r.map10, r.score
                );
            }
        }
    }
    Ok(())
}
