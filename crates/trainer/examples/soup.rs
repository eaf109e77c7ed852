//! Model soups of finished runs (Wortsman et al., ICML 2022): the kept models of several runs
//! of one configuration (other seeds) averaged weight by weight, scored on the first run's
//! validation pairs, beside what a soup could be instead (the backbones averaged under one
//! run's head, the features alone, the runs' ensemble). `[soup]` in a configuration trains
//! the runs and keeps the plain soup.
//!
//! `cargo run --release -p trainer --example soup -- RUN_DIR RUN_DIR [RUN_DIR...]`
//!
//! Prints, for each pair, top-1 / top-5 / mAP@10 / score of:
//! - `RUN_DIR`: each run's kept model alone;
//! - `soup`: every weight averaged, the metric heads included;
//! - `soup with the head of RUN_DIR`: the backbones averaged under one run's own head;
//! - `soup features`: the backbones averaged, the pooled features as the embedding (no head);
//! - `ensemble`: every run's embedding concatenated (the runs' cost at every query, the
//!   figure a soup tries to reach at the cost of one).
//!
//! Every run starts from the same pretrained backbone; each seed draws its own head, and the
//! rows under one run's head say whether averaging the heads too costs anything.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use model::Network;
use model::head::l2_normalize;
use model::network::EmbeddingOutput;
use trainer::config::TrainConfig;
use trainer::validation::Validation;

fn main() -> Result<()> {
    model::allocator::keep_freed_memory();
    let runs: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    if runs.len() < 2 {
        bail!("usage: soup RUN_DIR RUN_DIR [RUN_DIR...] (finished runs of one configuration)");
    }
    let config = TrainConfig::load(&runs[0].join("config.toml"), &[])
        .with_context(|| format!("{}: not a finished run", runs[0].display()))?;
    let device = config.device.device()?;
    let nets: Vec<Network> = runs
        .iter()
        .map(|r| Network::load_checkpoint(r, &device))
        .collect::<Result<_>>()?;
    let validation = Validation::load(&config.validation, &nets[0].preprocess())?;
    let batch = config.eval_batch_size;
    println!("model,pair,top1,top5,map10,score");
    let report = |name: &str, net: Network| -> Result<()> {
        for (pair, r) in validation.evaluate(net.into_inference(), &device, batch)? {
            println!(
                "{name},{pair},{:.4},{:.4},{:.4},{:.1}",
                r.top1, r.top5, r.map10, r.score
            );
        }
        Ok(())
    };
    for (run, net) in runs.iter().zip(&nets) {
        report(&run.display().to_string(), net.clone())?;
    }
    let soup = model::interpolate::average(&nets)?;
    report("soup", soup.clone())?;
    for (run, net) in runs.iter().zip(&nets) {
        let mut m = soup.clone();
        m.head = net.head.clone();
        report(&format!("soup with the head of {}", run.display()), m)?;
    }
    let mut features = soup;
    features.output = EmbeddingOutput::Features;
    report("soup features", features)?;
    // The ensemble: each run's embedding, concatenated and re-normalised.
    let embedded: Vec<Tensor<2>> = nets
        .iter()
        .map(|n| {
            let values = validation.embed(n.clone().into_inference(), &device, batch)?;
            let rows = values.len() / n.embedding_dim();
            let shape = [rows, n.embedding_dim()];
            Ok(Tensor::from_data(TensorData::new(values, shape), &device))
        })
        .collect::<Result<_>>()?;
    let joined = l2_normalize(Tensor::cat(embedded, 1));
    let dim = joined.dims()[1];
    let joined = joined
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    for (pair, r) in validation.evaluate_embeddings(&joined, dim, &device)? {
        println!(
            "ensemble,{pair},{:.4},{:.4},{:.4},{:.1}",
            r.top1, r.top5, r.map10, r.score
        );
    }
    Ok(())
}
