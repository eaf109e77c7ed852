//! Fine-tuning an embedding for retrieval.
//!
//! - [`config`]: the TOML run description, with `--set key=value` overrides.
//! - [`loss`]: ArcFace and triplet (batch-hard, semi-hard) losses.
//! - [`dataset`]: training images decoded once, augmented P×K batches.
//! - [`foreground`]: where the animal is in each training photo, for drawings of it alone.
//! - [`schedule`]: warm-up then cosine learning rates.
//! - [`validation`]: per-epoch retrieval metrics through the `retrieval` crate's code path.
//! - [`mixstyle`]: style mixing inside the backbone (MixStyle), for drawings and other domains.
//! - [`learner`]: what training changes (model, loss, optimisers) and the step that changes it.
//! - [`run_log`]: `metrics.csv` and the line an epoch.
//! - [`checkpoint`]: the run directory (best model, last state for `--resume`), saving and
//!   restoring.
//! - [`training`]: the loop.

pub mod checkpoint;
pub mod config;
pub mod dataset;
pub mod foreground;
pub mod learner;
pub mod loss;
pub mod mixstyle;
pub mod run_log;
pub mod schedule;
pub mod soup;
pub mod training;
pub mod validation;
