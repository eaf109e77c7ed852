//! Probe: ImageNet class probabilities as an embedding, alone or beside a model's own.
//!
//! `cargo run --release -p trainer --example class_probabilities -- MODEL [MODEL...]`
//!
//! For each model (a backbone name or a checkpoint) and each visible pair (val, photos, novel,
//! domains), prints top-1 / mAP@10 / score of:
//! - `embedding`: the model's embedding as `evaluate` computes it;
//! - `own probabilities`: √p of the model's ImageNet classifier on its own features (the
//!   Hellinger embedding of its 1000-class probabilities, unit length);
//! - `pretrained probabilities`: the same from the pretrained network of the model's family;
//! - `embedding + β · pretrained`: both concatenated, the probabilities weighted by β.
//!
//! A trained checkpoint keeps the pretrained classifier (the loss never reaches it), so its
//! own probabilities are that classifier over the fine-tuned features.

use std::path::Path;

use anyhow::Result;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use data::{ImageEntry, list_images};
use model::head::l2_normalize;
use model::{Backbone, ModelSpec, Network};
use retrieval::embed::{EmbeddingSet, batch_tensor};
use retrieval::evaluation::evaluate_sets;

const PAIRS: [(&str, &str); 4] = [
    ("val", "../shared/datasets/animals10/val"),
    ("photos", "../shared/datasets/photos"),
    ("novel", "../shared/datasets/novel"),
    ("domains", "../shared/datasets/domains"),
];

/// Unit-length √p of the ImageNet classifier over pooled features `[N, F]`.
fn probabilities(backbone: &Backbone, features: Tensor<2>) -> Tensor<2> {
    let logits = match backbone {
        Backbone::EfficientNetLite(m) => m.classifier.forward(features),
        Backbone::MobileNetV2(m) => m.classifier.forward(features),
        Backbone::ResNet(m) => m.fc.forward(features),
    };
    l2_normalize(softmax(logits, 1).sqrt())
}

/// A folder's entries and the pooled features `[N, F]` of each network, in the same order.
fn features(
    dir: &Path,
    nets: [&Network; 2],
    device: &Device,
) -> Result<(Vec<ImageEntry>, [Tensor<2>; 2])> {
    let (_, entries) = list_images(dir, None)?;
    let preprocess = nets[0].preprocess();
    let mut pixels = Vec::new();
    for e in &entries {
        let bytes = data::decode::read_file(&e.path)?;
        pixels.push(preprocess.apply(&data::decode::decode_bytes(&e.path, &bytes)?));
    }
    let side = preprocess.crop as usize;
    let run = |net: &Network| {
        let chunks = pixels.chunks(32);
        Tensor::cat(
            chunks
                .map(|c| net.backbone.features(batch_tensor(c, side, device)))
                .collect(),
            0,
        )
    };
    Ok((entries, [run(nets[0]), run(nets[1])]))
}

/// An embedding of (the model's features, the pretrained network's features), by name.
type Variant<'a> = (String, Box<dyn Fn(Tensor<2>, Tensor<2>) -> Tensor<2> + 'a>);

fn main() -> Result<()> {
    let device = Device::flex();
    println!("model,pair,variant,top1,map10,score");
    for spec in std::env::args().skip(1) {
        let net = &Network::load(&ModelSpec::parse(&spec)?, &device)?;
        let pretrained = &Network::load(&ModelSpec::Pretrained(net.kind), &device)?;
        for (name, root) in PAIRS {
            let (qe, [qf, qt]) =
                features(&Path::new(root).join("query"), [net, pretrained], &device)?;
            let (ge, [gf, gt]) =
                features(&Path::new(root).join("gallery"), [net, pretrained], &device)?;
            let variants: Vec<Variant> = {
                let mut v: Vec<Variant> = vec![
                    ("embedding".into(), Box::new(|f, _| net.embed_features(f))),
                    (
                        "own probabilities".into(),
                        Box::new(|f, _| probabilities(&net.backbone, f)),
                    ),
                    (
                        "pretrained probabilities".into(),
                        Box::new(|_, t| probabilities(&pretrained.backbone, t)),
                    ),
                ];
                for beta in [0.35f32, 0.5, 1.0] {
                    v.push((
                        format!("embedding + {beta} pretrained"),
                        Box::new(move |f, t| {
                            let p = probabilities(&pretrained.backbone, t) * beta;
                            l2_normalize(Tensor::cat(vec![net.embed_features(f), p], 1))
                        }),
                    ));
                }
                v
            };
            for (variant, embed) in &variants {
                let q = EmbeddingSet::from_tensor(&qe, embed(qf.clone(), qt.clone()))?;
                let g = EmbeddingSet::from_tensor(&ge, embed(gf.clone(), gt.clone()))?;
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
