//! Backbone speed: inference forward passes at several batch sizes, and full training steps
//! (forward, backward, AdamW update of every parameter).

use std::time::Duration;

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use model::{BackboneKind, Network};

use crate::timing::{Measurement, Recorder, measure};

fn input(batch: usize, side: usize, device: &Device) -> Tensor<4> {
    Tensor::random(
        [batch, 3, side, side],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        device,
    )
}

/// The pretrained backbone when its weights are there (random weights can overflow to
/// infinities and denormals, which run at other speeds), else random weights, said in the label.
fn backbone(kind: BackboneKind, device: &Device) -> (Network, &'static str) {
    match Network::pretrained(kind, device) {
        Ok(m) => (m, ""),
        Err(_) => (Network::new(kind, None, device), " (random weights)"),
    }
}

/// Inference throughput (images/s) of `kind`'s backbone at each batch size, with batch norms
/// as separate layers or folded into the convolutions (what `retrieval` loads), into `record`
/// as each is measured.
pub fn forward(
    kind: BackboneKind,
    batches: &[usize],
    folded: bool,
    min_time: Duration,
    device: &Device,
    record: &mut Recorder,
) -> anyhow::Result<()> {
    let (model, note) = backbone(kind, device);
    let mut model = model.valid();
    let note = if folded {
        model.backbone = model.backbone.fold_batch_norm();
        format!("{note}, batch norm folded")
    } else {
        note.to_string()
    };
    let side = kind.input_size() as usize;
    for &b in batches {
        let x = input(b, side, device);
        let suffix = if folded { "/folded" } else { "" };
        record.add(measure(
            format!("forward/{kind}/{b}{suffix}"),
            format!("{kind} forward, batch {b}{note}"),
            b,
            1,
            2,
            min_time,
            || {
                let e = model.embed_once(x.clone());
                let _ = e.into_data();
            },
        ))?;
    }
    Ok(())
}

/// Training throughput (images/s): forward, backward of a squared-norm loss on a 256-d head,
/// and one AdamW step over the whole backbone and head. With `frozen_statistics`, batch norms
/// use their running statistics (the trainer's default, `[freeze] batch_norm = true`) while γ
/// and β still train; otherwise they normalise with the batch's (PyTorch's `train()` mode).
pub fn train_step(
    kind: BackboneKind,
    batch: usize,
    frozen_statistics: bool,
    min_time: Duration,
    device: &Device,
) -> Measurement {
    let ad = device.clone().autodiff();
    let (mut model, note) = backbone(kind, &ad);
    let (note, id) = if frozen_statistics {
        model.backbone = model.backbone.freeze_batch_norm_stats();
        (
            format!("{note}, batch-norm statistics frozen"),
            "-frozen-bn",
        )
    } else {
        (note.to_string(), "")
    };
    model.head = Some(model::MetricHead::new(kind.feature_dim(), 256, &ad));
    let mut optimizer = AdamWConfig::new().init();
    let side = kind.input_size() as usize;
    let x = input(batch, side, &ad);
    measure(
        format!("train{id}/{kind}/{batch}"),
        format!("{kind} training step, batch {batch}{note}"),
        batch,
        1,
        2,
        min_time,
        || {
            let features = model.backbone.features(x.clone());
            let head = model.head.clone().expect("head");
            let loss = head.forward(features).powf_scalar(2.0).sum_dim(1).mean();
            let mut grads = loss.backward();
            let g = GradientsParams::from_module(&mut grads, &model);
            model = optimizer.step(1e-4, model.clone(), g);
            // A GPU queues the work: the step ends when the device has done it.
            ad.sync().expect("device failed");
        },
    )
}
