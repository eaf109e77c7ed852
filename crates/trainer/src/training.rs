//! The training loop: P×K batches, augmentation, forward, loss, backward, one optimiser per
//! parameter group (backbone, head, loss), validation and checkpoints every epoch.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::{
    AdamWConfig, GradientsParams, SgdConfig, decay::WeightDecayConfig, momentum::MomentumConfig,
};
use burn::prelude::*;
use data::sampler::PkSampler;
use indicatif::{ProgressBar, ProgressStyle};
use model::embedder::write_atomic;
use model::head::l2_normalize;
use model::{BackboneKind, Embedder, MetricHead};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use retrieval::metrics::Metrics;

use crate::checkpoint::{TrainState, clear_run, find_last, read_state, write_last};
use crate::config::{LossKind, OptimizerKind, SelectionMetric, SelectionRule, TrainConfig};
use crate::dataset::TrainingSet;
use crate::foreground::foreground_maps;
use crate::loss::arcface::{ArcFace, one_hot};
use crate::loss::triplet_loss;
use crate::schedule::warmup_cosine;
use crate::validation::Validation;

type Optimizer = burn::optim::ModuleOptimizer;

/// One epoch's figures, as written to `metrics.csv`.
#[derive(Debug, Clone)]
pub struct EpochRecord {
    pub epoch: usize,
    pub loss: f64,
    pub images_per_s: f64,
    pub augment_s: f64,
    pub train_s: f64,
    pub eval_s: f64,
    pub validation: Vec<(String, Metrics)>,
    pub selection: f64,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub history: Vec<EpochRecord>,
    pub best: Option<(f64, usize)>,
    pub seconds: f64,
}

fn optimizer(config: &TrainConfig) -> Optimizer {
    let o = &config.optimizer;
    match o.kind {
        OptimizerKind::Adamw => AdamWConfig::new()
            .with_weight_decay(o.weight_decay as f32)
            .init(),
        OptimizerKind::Sgd => SgdConfig::new()
            .with_weight_decay(Some(WeightDecayConfig::new(o.weight_decay as f32)))
            .with_momentum(Some(
                MomentumConfig::new()
                    .with_momentum(o.momentum)
                    .with_dampening(0.0),
            ))
            .init(),
    }
}

fn selection_value(config: &TrainConfig, validation: &[(String, Metrics)]) -> f64 {
    let pick = |m: &Metrics| match config.selection.metric {
        SelectionMetric::Score => m.score,
        SelectionMetric::Top1 => m.top1 * 1000.0,
        SelectionMetric::Map10 => m.map10 * 1000.0,
    };
    let values: Vec<f64> = validation.iter().map(|(_, m)| pick(m)).collect();
    if values.is_empty() {
        return 0.0;
    }
    match config.selection.rule {
        SelectionRule::First => values[0],
        SelectionRule::Mean => values.iter().sum::<f64>() / values.len() as f64,
        SelectionRule::Min => values.iter().cloned().fold(f64::INFINITY, f64::min),
    }
}

fn csv_header(config: &TrainConfig) -> String {
    let mut h = String::from("epoch,loss,images_per_s,augment_s,train_s,eval_s");
    for v in &config.validation {
        for m in ["top1", "top3", "top5", "top10", "map10", "map_r", "score"] {
            h.push_str(&format!(",{}_{m}", v.name));
        }
    }
    h.push_str(",selection\n");
    h
}

fn csv_row(r: &EpochRecord) -> String {
    let mut row = format!(
        "{},{:.5},{:.2},{:.1},{:.1},{:.1}",
        r.epoch, r.loss, r.images_per_s, r.augment_s, r.train_s, r.eval_s
    );
    for (_, m) in &r.validation {
        row.push_str(&format!(
            ",{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.1}",
            m.top1, m.top3, m.top5, m.top10, m.map10, m.map_r, m.score
        ));
    }
    row.push_str(&format!(",{:.2}\n", r.selection));
    row
}

/// Keeps the header and the rows of epochs `<= epoch` (after a resume, rows of an epoch whose
/// checkpoint never landed are dropped before it is redone).
fn truncate_csv(path: &Path, header: &str, epoch: usize) -> Result<()> {
    let mut out = header.to_string();
    if let Ok(text) = std::fs::read_to_string(path) {
        for line in text.lines().skip(1) {
            let e: Option<usize> = line.split(',').next().and_then(|v| v.parse().ok());
            if e.is_some_and(|e| e <= epoch) {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    write_atomic(path, out.as_bytes())
}

fn append(path: &Path, line: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)?;
    f.write_all(line.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Embeds and scores every validation pair with `model` (in inference mode).
fn validate(
    validation: &Validation,
    model: &Embedder,
    device: &Device,
    config: &TrainConfig,
) -> Result<Vec<(String, Metrics)>> {
    validation.evaluate(model.valid(), device, config.eval_batch_size)
}

/// The model an epoch validates and saves: the fine-tuned weights, or with `wise_ft` their
/// blend with the pretrained backbone.
fn kept_model(
    model: &Embedder,
    pretrained: Option<&model::Backbone>,
    config: &TrainConfig,
) -> Result<Embedder> {
    let mut kept = model.valid();
    if let (Some(alpha), Some(pre)) = (config.wise_ft, pretrained) {
        kept.backbone = model::interpolate::interpolate(kept.backbone, pre, alpha)?;
    }
    Ok(kept)
}

/// One line an epoch on stderr.
fn report(record: &EpochRecord, config: &TrainConfig) {
    let figures: Vec<String> = record
        .validation
        .iter()
        .map(|(n, m)| {
            format!(
                "{n}: top-1 {:.3} top-5 {:.3} mAP@10 {:.3} score {:.0}",
                m.top1, m.top5, m.map10, m.score
            )
        })
        .collect();
    if record.epoch == 0 {
        eprintln!("before training | {}", figures.join(" | "));
        return;
    }
    eprintln!(
        "epoch {}/{}: loss {:.4}, {:.1} img/s (augment {:.0}s, train {:.0}s, eval {:.0}s) | {}",
        record.epoch,
        config.epochs,
        record.loss,
        record.images_per_s,
        record.augment_s,
        record.train_s,
        record.eval_s,
        figures.join(" | ")
    );
}

/// Sets which backbone parameters train in `epoch`.
fn backbone_for_epoch(mut model: Embedder, config: &TrainConfig, epoch: usize) -> Embedder {
    let backbone = model.backbone;
    model.backbone = if epoch < config.freeze.backbone_epochs || config.freeze.trainable_blocks == 0
    {
        backbone.freeze()
    } else {
        let b = backbone
            .unfreeze()
            .freeze_early(config.freeze.trainable_blocks);
        if config.freeze.batch_norm {
            b.freeze_batch_norm_stats()
        } else {
            b
        }
    };
    model
}

fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut x =
        seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 31;
    x.wrapping_mul(0xBF58_476D_1CE4_E5B9)
}

/// Runs (or, with `resume`, continues) the training described by `config`.
pub fn train(config: &TrainConfig, resume: bool, quiet: bool) -> Result<TrainOutcome> {
    let started = Instant::now();
    let out = &config.out_dir;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    write_atomic(&out.join("config.toml"), config.to_toml()?.as_bytes())?;

    let device = model::device::device(&config.device)?;
    let ad = device.clone().autodiff();
    let kind: BackboneKind = config.backbone.parse()?;
    let size = config.image_size.unwrap_or_else(|| kind.input_size());
    let train_size = config.train_image_size.unwrap_or(size);
    let preprocess = kind.preprocess_at(size);
    // Seeds parameter initialisation (head, ArcFace centres, and a backbone trained from
    // scratch), so that two runs of one config start from the same weights.
    device.seed(config.seed);
    ad.seed(config.seed);

    let mut folders = vec![config.train.clone()];
    folders.extend(config.extra_train.iter().cloned());
    let mut train_set = TrainingSet::load(&folders, quiet)?;
    let sampler =
        PkSampler::new(&train_set.labels, config.p, config.k).map_err(anyhow::Error::msg)?;
    let validation = Validation::load(&config.validation, &preprocess)?;
    if !quiet {
        eprintln!(
            "training {} on {} images of {} classes; validating on {}",
            kind,
            train_set.len(),
            train_set.classes.len(),
            config
                .validation
                .iter()
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    let mut model = if config.pretrained {
        Embedder::pretrained(kind, &ad)?
    } else {
        Embedder::new(kind, None, &ad)
    };
    model.input_size = size;
    model.head = Some(MetricHead::new(
        kind.feature_dim(),
        config.embedding_dim,
        &ad,
    ));
    model.output = config.output;
    model.flip = config.flip;
    let pretrained_backbone = if config.pretrained {
        Some(Embedder::pretrained(kind, &device)?.backbone.valid())
    } else {
        None
    };
    let teacher = pretrained_backbone
        .clone()
        .filter(|_| config.distill_weight > 0.0);
    if config.augment.uses_foreground() {
        if !config.pretrained {
            bail!(
                "[augment] foreground and photo_on_white need the pretrained backbone (pretrained = true) to find the animals"
            );
        }
        let finder = pretrained_backbone
            .clone()
            .expect("pretrained checked above");
        train_set.foreground = Some(foreground_maps(
            &finder,
            &train_set.images,
            size,
            &preprocess.normalization,
            config.eval_batch_size,
            &device,
            quiet,
        ));
    }
    let mut arcface = (config.loss.kind == LossKind::Arcface).then(|| {
        ArcFace::new(
            train_set.classes.len(),
            config.embedding_dim,
            config.loss.margin,
            config.loss.scale,
            &ad,
        )
    });
    let mut opt_backbone = optimizer(config);
    let mut opt_head = optimizer(config);
    let mut opt_loss = optimizer(config);

    let mut state = TrainState::default();
    let csv = out.join("metrics.csv");
    let header = csv_header(config);
    let mut resumed = false;
    if resume {
        match find_last(out) {
            Some(dir) => {
                resumed = true;
                state = read_state(&dir)?;
                let load_err = |what: &str| format!("cannot resume from {}: {what}", dir.display());
                model = model
                    .try_load_file(dir.join("model.bpk"))
                    .map_err(|e| anyhow::anyhow!("{e:?}"))
                    .with_context(|| load_err("model"))?;
                if let Some(a) = arcface.take() {
                    arcface = Some(
                        a.try_load_file(dir.join("loss.bpk"))
                            .map_err(|e| anyhow::anyhow!("{e:?}"))
                            .with_context(|| load_err("loss"))?,
                    );
                }
                let load_opt = |o: Optimizer, name: &str| -> Result<Optimizer> {
                    o.load(dir.join(name))
                        .map_err(|e| anyhow::anyhow!("{e:?}"))
                        .with_context(|| load_err(name))
                };
                opt_backbone = load_opt(opt_backbone, "optim_backbone.bpk")?;
                opt_head = load_opt(opt_head, "optim_head.bpk")?;
                opt_loss = load_opt(opt_loss, "optim_loss.bpk")?;
                if !quiet {
                    eprintln!("resuming after epoch {} (step {})", state.epoch, state.step);
                }
            }
            None => {
                if !quiet {
                    eprintln!("nothing to resume in {}: starting afresh", out.display());
                }
            }
        }
    }
    if !resumed {
        // A fresh run owns its directory: nothing of an earlier run (its last/ checkpoint,
        // best model or metrics rows) may be resumed from or mixed in later.
        clear_run(out)?;
    }
    truncate_csv(&csv, &header, state.epoch)?;

    let steps_per_epoch = sampler
        .epoch(&mut ChaCha8Rng::seed_from_u64(mix(config.seed, 0, 0)))
        .len();
    let total_steps = steps_per_epoch * config.epochs;
    let warmup = (config.optimizer.warmup_epochs * steps_per_epoch as f64).round() as usize;
    let classes = train_set.classes.len();
    let mut history = Vec::new();

    if config.baseline && state.epoch == 0 && !validation.is_empty() {
        let t = Instant::now();
        let results = validate(&validation, &model, &device, config)?;
        let record = EpochRecord {
            epoch: 0,
            loss: f64::NAN,
            images_per_s: 0.0,
            augment_s: 0.0,
            train_s: 0.0,
            eval_s: t.elapsed().as_secs_f64(),
            selection: selection_value(config, &results),
            validation: results,
        };
        report(&record, config);
        truncate_csv(&csv, &header, 0)?;
        append(&csv, &csv_row(&record))?;
        history.push(record);
    }

    for epoch in state.epoch..config.epochs {
        model = backbone_for_epoch(model, config, epoch);
        let backbone_trains =
            epoch >= config.freeze.backbone_epochs && config.freeze.trainable_blocks > 0;
        // A frozen backbone is the teacher (same weights, same batch-norm statistics): the
        // distillation term is zero, so the teacher's forward pass is skipped.
        let distill = teacher.is_some() && backbone_trains;
        let batches = sampler.epoch(&mut ChaCha8Rng::seed_from_u64(mix(
            config.seed,
            epoch as u64,
            0,
        )));
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            let b = ProgressBar::new(batches.len() as u64);
            b.set_style(
                ProgressStyle::with_template(
                    "epoch {prefix} [{bar:30}] {pos}/{len} {msg} (eta {eta})",
                )
                .expect("template")
                .progress_chars("=> "),
            );
            b.set_prefix(format!("{}/{}", epoch + 1, config.epochs));
            b
        };
        let (mut loss_sum, mut images, mut augment_s, mut train_s) = (0.0, 0usize, 0.0, 0.0);
        for (b, batch) in batches.iter().enumerate() {
            if config.max_steps > 0 && state.step >= config.max_steps {
                break;
            }
            let t0 = Instant::now();
            let (pixels, photos) = train_set.batch(
                batch,
                &config.augment,
                train_size,
                &preprocess.normalization,
                mix(config.seed, epoch as u64 + 1, b as u64 + 1),
                distill,
            );
            let labels: Vec<usize> = batch.iter().map(|&i| train_set.labels[i]).collect();
            let s = train_size as usize;
            let x = Tensor::<4>::from_data(TensorData::new(pixels, [batch.len(), 3, s, s]), &ad);
            // The teacher sees each view as a photo, before any sketch-like rendering.
            let photo = photos.map(|p| {
                Tensor::<4>::from_data(TensorData::new(p, [batch.len(), 3, s, s]), &device)
            });
            augment_s += t0.elapsed().as_secs_f64();

            let t1 = Instant::now();
            let features = model.backbone.features(x.clone());
            let head = model.head.as_ref().expect("training model has a head");
            let embeddings = head.forward(features.clone());
            let mut loss = match &arcface {
                Some(a) => a.forward(embeddings, one_hot(&labels, classes, &ad)),
                None => {
                    triplet_loss(
                        embeddings,
                        &labels,
                        config.loss.mining,
                        config.loss.margin,
                        config.loss.squared,
                    )
                    .0
                }
            };
            if let (Some(t), Some(photo)) = (&teacher, photo) {
                let target = l2_normalize(t.features(photo)).autodiff();
                let gap = (l2_normalize(features) - target)
                    .powf_scalar(2.0)
                    .sum_dim(1)
                    .mean();
                loss = loss + gap.mul_scalar(config.distill_weight);
            }
            let value = loss.clone().into_scalar::<f32>() as f64;
            if !value.is_finite() {
                let advice = match state.epoch {
                    0 => "no epoch has finished, so there is nothing to resume: lower the learning rates or the ArcFace scale and start again (without --resume)".to_string(),
                    done => format!(
                        "the best epoch so far is the model in {}; {} holds epoch {done}, which may already carry the divergence: lower the learning rates or the ArcFace scale and start again, or --resume with lower rates",
                        out.display(),
                        out.join("last").display()
                    ),
                };
                bail!(
                    "the loss became {value} at epoch {}, batch {}: stopping. {advice}",
                    epoch + 1,
                    b + 1,
                );
            }
            let mut grads = loss.backward();
            let lr = |peak: f64| warmup_cosine(peak, state.step, warmup, total_steps);
            let o = &config.optimizer;
            if backbone_trains {
                let g = GradientsParams::from_module(&mut grads, &model.backbone);
                model.backbone = opt_backbone.step(lr(o.lr_backbone), model.backbone, g);
            }
            let head = model.head.take().expect("head");
            let g = GradientsParams::from_module(&mut grads, &head);
            model.head = Some(opt_head.step(lr(o.lr_head), head, g));
            if let Some(a) = arcface.take() {
                let g = GradientsParams::from_module(&mut grads, &a);
                arcface = Some(opt_loss.step(lr(o.lr_loss), a, g));
            }
            train_s += t1.elapsed().as_secs_f64();
            state.step += 1;
            loss_sum += value;
            images += batch.len();
            bar.set_message(format!(
                "loss {:.4} {:.1} img/s",
                loss_sum / (b + 1) as f64,
                images as f64 / (augment_s + train_s)
            ));
            bar.inc(1);
        }
        bar.finish_and_clear();

        let t2 = Instant::now();
        let kept = kept_model(&model, pretrained_backbone.as_ref(), config)?;
        let results = validate(&validation, &kept, &device, config)?;
        let eval_s = t2.elapsed().as_secs_f64();
        let steps = batches.len().max(1);
        let record = EpochRecord {
            epoch: epoch + 1,
            loss: loss_sum / steps as f64,
            images_per_s: images as f64 / (augment_s + train_s).max(1e-9),
            augment_s,
            train_s,
            eval_s,
            selection: selection_value(config, &results),
            validation: results,
        };
        report(&record, config);
        append(&csv, &csv_row(&record))?;
        state.epoch = epoch + 1;
        if state.best.is_none_or(|(best, _)| record.selection > best) {
            state.best = Some((record.selection, epoch + 1));
            let note = match config.wise_ft {
                Some(a) => format!("{} epoch {}, WiSE-FT {a}", config.backbone, epoch + 1),
                None => format!("{} epoch {}", config.backbone, epoch + 1),
            };
            kept.save_checkpoint(out, &note)?;
        }
        write_last(out, |dir| {
            model
                .clone()
                .save_file(dir.join("model.bpk"))
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            if let Some(a) = &arcface {
                a.clone()
                    .save_file(dir.join("loss.bpk"))
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            }
            for (o, name) in [
                (&opt_backbone, "optim_backbone.bpk"),
                (&opt_head, "optim_head.bpk"),
                (&opt_loss, "optim_loss.bpk"),
            ] {
                o.save(dir.join(name))
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            }
            write_atomic(
                &dir.join("state.json"),
                serde_json::to_string_pretty(&state)?.as_bytes(),
            )
        })?;
        history.push(record);
        if config.max_steps > 0 && state.step >= config.max_steps {
            break;
        }
    }
    Ok(TrainOutcome {
        history,
        best: state.best,
        seconds: started.elapsed().as_secs_f64(),
    })
}
