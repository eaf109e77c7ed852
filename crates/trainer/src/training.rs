//! The training loop: P×K batches, augmentation, one step per batch, validation and
//! checkpoints every epoch. Reads top to bottom: set-up, resume or start afresh, the baseline,
//! then the epochs.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::prelude::*;
use data::sampler::PkSampler;
use data::write_atomic;
use indicatif::{ProgressBar, ProgressStyle};
use model::{Backbone, Network};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use retrieval::metrics::Metrics;

use crate::checkpoint::{self, TrainState};
use crate::config::TrainConfig;
use crate::dataset::TrainingSet;
use crate::foreground::foreground_maps;
use crate::learner::{self, Batch, Learner, Rates};
use crate::run_log::{EpochRecord, RunLog};
use crate::schedule::warmup_cosine;
use crate::validation::Validation;

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub history: Vec<EpochRecord>,
    pub best: Option<(f64, usize)>,
    pub seconds: f64,
}

/// Embeds and scores every validation pair with `model` (in inference mode).
fn validate(
    validation: &Validation,
    model: &Network,
    device: &Device,
    config: &TrainConfig,
) -> Result<Vec<(String, Metrics)>> {
    validation.evaluate(model.valid(), device, config.eval_batch_size)
}

/// Style mixing draws from its own stream, so turning it on leaves the batches and their
/// augmentations as they were.
const STYLE_STREAM: u64 = 0x5354_594C_4500_0000;

fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut x =
        seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 31;
    x.wrapping_mul(0xBF58_476D_1CE4_E5B9)
}

fn progress(quiet: bool, len: usize, epoch: usize, epochs: usize) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(len as u64);
    b.set_style(
        ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} (eta {eta})")
            .expect("template")
            .progress_chars("=> "),
    );
    b.set_prefix(format!("{}/{}", epoch + 1, epochs));
    b
}

/// Runs (or, with `resume`, continues) the training described by `config`.
pub fn train(config: &TrainConfig, resume: bool, quiet: bool) -> Result<TrainOutcome> {
    let started = Instant::now();
    let out = &config.out_dir;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    write_atomic(&out.join("config.toml"), config.to_toml()?.as_bytes())?;

    // Set-up: device, sizes, data, validation, the frozen pretrained backbone.
    let device = config.device.device()?;
    let ad = device.clone().autodiff();
    let kind = config.backbone;
    let size = config.image_size.unwrap_or_else(|| kind.input_size());
    let train_size = config.train_image_size.unwrap_or(size);
    let preprocess = kind.preprocess_at(size);
    let mut folders = vec![config.train.clone()];
    folders.extend(config.extra_train.iter().cloned());
    let mut train_set = TrainingSet::load(&folders, &config.drawings_train, quiet)?;
    let sampler =
        PkSampler::new(&train_set.labels, config.p, config.k).map_err(anyhow::Error::msg)?;
    let validation = Validation::load(&config.validation, &preprocess)?;
    if !quiet {
        let names: Vec<&str> = config.validation.iter().map(|v| v.name.as_str()).collect();
        eprintln!(
            "training {kind} on {} images of {} classes; validating on {} ({} distinct images)",
            train_set.len(),
            train_set.classes.len(),
            names.join(", "),
            validation.distinct_images()
        );
    }
    // Parameter initialisation (head, ArcFace centres, a backbone trained from scratch) draws
    // from the backend's one process-wide generator, seeded here so that two runs of one
    // config start from the same weights. The lock keeps another training in this process
    // (tests run side by side) from reseeding it or drawing from it in between; `Learner::new`
    // draws every initial value before it returns.
    let mut learner = {
        static INITIALISING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _alone = INITIALISING.lock().unwrap_or_else(|e| e.into_inner());
        device.seed(config.seed);
        ad.seed(config.seed);
        Learner::new(config, train_set.classes.len(), size, &ad)?
    };
    let pretrained: Option<Backbone> = if config.pretrained {
        Some(Network::pretrained(kind, &device)?.backbone.valid())
    } else {
        None
    };
    // The teacher only runs forward: its batch norms folded into the convolutions.
    let teacher = (config.distill_weight > 0.0 || config.distill_classes.is_some())
        .then(|| pretrained.clone().map(Backbone::fold_batch_norm))
        .flatten();
    let teacher = teacher.as_ref();
    if config.augment.uses_foreground() {
        let Some(finder) = &pretrained else {
            bail!(
                "[augment] foreground and photo_on_white need the pretrained backbone (pretrained = true) to find the animals"
            );
        };
        train_set.foreground = Some(foreground_maps(
            finder,
            &train_set.images,
            size,
            &preprocess.normalization,
            config.eval_batch_size,
            &device,
            quiet,
        ));
    }

    // Resume, or start afresh: a fresh run owns its directory, so nothing of an earlier run
    // (its last/ checkpoint, best model or metrics rows) may be resumed from or mixed in.
    // Temporaries of a run killed mid-write are dropped, and a half-done checkpoint swap is
    // finished, either way.
    data::atomic::remove_stale_temporaries(out)?;
    checkpoint::tidy(out)?;
    let mut found = None;
    if resume {
        (learner, found) = checkpoint::restore(out, learner)?;
    }
    let mut state = match found {
        Some(s) => {
            if !quiet {
                eprintln!("resuming after epoch {} (step {})", s.epoch, s.step);
            }
            s
        }
        None => {
            if resume && !quiet {
                eprintln!("nothing to resume in {}: starting afresh", out.display());
            }
            checkpoint::clear_run(out)?;
            TrainState::default()
        }
    };
    let log = RunLog::open(out, config, state.epoch)?;

    let steps_per_epoch = sampler
        .epoch(&mut ChaCha8Rng::seed_from_u64(mix(config.seed, 0, 0)))
        .len();
    let total_steps = steps_per_epoch * config.epochs;
    // The blocks after which style mixing applies, and with what settings.
    let mixing = match &config.mixstyle {
        Some(m) => Some((m, learner.model.backbone.last_blocks_at(&m.strides)?)),
        None => None,
    };
    let warmup = (config.optimizer.warmup_epochs * steps_per_epoch as f64).round() as usize;
    let mut history = Vec::new();

    // Row 0: the untrained model, the baseline every epoch is compared with.
    if config.baseline && state.epoch == 0 && !validation.is_empty() {
        let t = Instant::now();
        let results = validate(&validation, &learner.model, &device, config)?;
        let record = EpochRecord {
            epoch: 0,
            loss: f64::NAN,
            images_per_s: 0.0,
            augment_s: 0.0,
            train_s: 0.0,
            eval_s: t.elapsed().as_secs_f64(),
            selection: config.selection.value(&results),
            validation: results,
        };
        log.record(&record)?;
        history.push(record);
    }

    for epoch in state.epoch..config.epochs {
        learner = learner.for_epoch(config, epoch);
        let backbone_trains = config.freeze.backbone_trains(epoch);
        // A frozen backbone gives the distillation term no gradient: the teacher is not run.
        let distill = teacher.filter(|_| backbone_trains);
        let batches = sampler.epoch(&mut ChaCha8Rng::seed_from_u64(mix(
            config.seed,
            epoch as u64,
            0,
        )));
        let bar = progress(quiet, batches.len(), epoch, config.epochs);
        let (mut loss_sum, mut images, mut augment_s, mut train_s) = (0.0, 0usize, 0.0, 0.0);
        for (b, indices) in batches.iter().enumerate() {
            if config.max_steps.is_some_and(|m| state.step >= m) {
                break;
            }
            let t0 = Instant::now();
            let (pixels, photos) = train_set.batch(
                indices,
                &config.augment,
                train_size,
                &preprocess.normalization,
                mix(config.seed, epoch as u64 + 1, b as u64 + 1),
                distill.is_some(),
            );
            let shape = [indices.len(), 3, train_size as usize, train_size as usize];
            let batch = Batch {
                views: Tensor::<4>::from_data(TensorData::new(pixels, shape), &ad),
                photos: photos.map(|p| Tensor::<4>::from_data(TensorData::new(p, shape), &device)),
                labels: indices.iter().map(|&i| train_set.labels[i]).collect(),
                drawing: indices.iter().map(|&i| train_set.drawing[i]).collect(),
                styles: mixing.as_ref().map_or_else(Vec::new, |(m, blocks)| {
                    let seed = mix(config.seed ^ STYLE_STREAM, epoch as u64 + 1, b as u64 + 1);
                    m.draw(blocks, indices.len(), seed)
                }),
            };
            augment_s += t0.elapsed().as_secs_f64();

            let t1 = Instant::now();
            let lr = |peak: f64| warmup_cosine(peak, state.step, warmup, total_steps);
            let o = &config.optimizer;
            let rates = Rates {
                backbone: backbone_trains.then(|| lr(o.lr_backbone)),
                head: lr(o.lr_head),
                loss: lr(o.lr_loss),
            };
            let (stepped, value) = match learner.step(batch, distill, config, &rates) {
                Ok(done) => done,
                Err(e) => bail!(
                    "{e} at epoch {}, batch {}: stopping. {}",
                    epoch + 1,
                    b + 1,
                    divergence_advice(out, state.epoch)
                ),
            };
            learner = stepped;
            train_s += t1.elapsed().as_secs_f64();
            state.step += 1;
            loss_sum += value;
            images += indices.len();
            bar.set_message(format!(
                "loss {:.4} {:.1} img/s",
                loss_sum / (b + 1) as f64,
                images as f64 / (augment_s + train_s)
            ));
            bar.inc(1);
        }
        bar.finish_and_clear();

        // Validate the kept model, log, keep the best, save the state for --resume.
        let t2 = Instant::now();
        learner.add_to_soup(config, epoch + 1)?;
        let kept = learner.kept_model(pretrained.as_ref(), config)?;
        // A loss can stay finite while the weights blow up: such an epoch is neither kept
        // nor saved for --resume.
        if let Err(e) = learner::check_weights(&kept) {
            bail!(
                "{e} in epoch {}: stopping. {}",
                epoch + 1,
                divergence_advice(out, state.epoch)
            );
        }
        let results = validate(&validation, &kept, &device, config)?;
        let record = EpochRecord {
            epoch: epoch + 1,
            loss: loss_sum / batches.len().max(1) as f64,
            images_per_s: images as f64 / (augment_s + train_s).max(1e-9),
            augment_s,
            train_s,
            eval_s: t2.elapsed().as_secs_f64(),
            selection: config.selection.value(&results),
            validation: results,
        };
        log.record(&record)?;
        state.epoch = epoch + 1;
        state.soup = learner.soup.as_ref().map_or(0, |(_, n)| *n);
        if state.best.is_none_or(|(best, _)| record.selection > best) {
            state.best = Some((record.selection, epoch + 1));
            let mut note = match &learner.soup {
                Some((_, n)) => format!("{kind} mean of epochs {} to {}", epoch + 2 - n, epoch + 1),
                None => format!("{kind} epoch {}", epoch + 1),
            };
            if let Some(a) = config.wise_ft {
                note.push_str(&format!(", WiSE-FT {a}"));
            }
            kept.save_checkpoint(out, &note)?;
        }
        checkpoint::save(out, &learner, &state)?;
        history.push(record);
        if config.max_steps.is_some_and(|m| state.step >= m) {
            break;
        }
    }
    Ok(TrainOutcome {
        history,
        best: state.best,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// What to do after training diverged, given the epochs finished before it.
fn divergence_advice(out: &Path, finished: usize) -> String {
    match finished {
        0 => "no epoch has finished, so there is nothing to resume: lower the learning rates or the ArcFace scale and start again (without --resume)".to_string(),
        done => format!(
            "the best epoch so far is the model in {}; {} holds epoch {done}, which may already carry the divergence: lower the learning rates or the ArcFace scale and start again, or --resume with lower rates",
            out.display(),
            out.join("last").display()
        ),
    }
}
