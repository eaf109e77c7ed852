//! WiSE-FT sweep: the last epoch of a finished run blended with the pretrained backbone at
//! several mixing coefficients, each scored on the run's validation pairs.
//!
//! `cargo run --release -p trainer --example wise_ft -- RUN_DIR [ALPHA,ALPHA,...]`
//!
//! alpha = 1 is the fine-tuned network as trained, alpha = 0 the pretrained backbone under the
//! trained head. Reads `RUN_DIR/config.toml` and `RUN_DIR/last/model.bpk`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::module::Module;
use model::{BackboneKind, MetricHead, Network};
use trainer::config::TrainConfig;
use trainer::validation::Validation;

fn main() -> Result<()> {
    model::allocator::keep_freed_memory();
    let mut args = std::env::args().skip(1);
    let run = PathBuf::from(args.next().context("usage: wise_ft RUN_DIR [ALPHAS]")?);
    let alphas: Vec<f64> = args
        .next()
        .unwrap_or_else(|| "0,0.25,0.5,0.75,1".into())
        .split(',')
        .map(|a| a.trim().parse().context("alphas: comma-separated numbers"))
        .collect::<Result<_>>()?;
    let config = TrainConfig::load(&run.join("config.toml"), &[])?;
    let device = config.device.device()?;
    let kind: BackboneKind = config.backbone;
    let size = config.image_size.unwrap_or_else(|| kind.input_size());
    let validation = Validation::load(&config.validation, &kind.preprocess_at(size))?;

    let mut trained = Network::pretrained(kind, &device)?;
    let pretrained = trained.backbone.clone();
    trained.head = Some(MetricHead::new(
        kind.feature_dim(),
        config.embedding_dim,
        &device,
    ));
    let trained = trained
        .try_load_file(run.join("last/model.bpk"))
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    println!("alpha,pair,top1,top5,map10,score");
    for alpha in alphas {
        let mut m = trained.clone();
        m.input_size = size;
        m.output = config.output;
        m.flip = config.flip;
        m.backbone = model::interpolate::interpolate(m.backbone, &pretrained, alpha)?;
        for (name, r) in validation.evaluate(m, &device, config.eval_batch_size)? {
            println!(
                "{alpha},{name},{:.4},{:.4},{:.4},{:.1}",
                r.top1, r.top5, r.map10, r.score
            );
        }
    }
    Ok(())
}
