//! The run directory:
//!
//! ```text
//! <out_dir>/config.toml        the resolved configuration
//! <out_dir>/metrics.csv        one row an epoch
//! <out_dir>/model.json         the best model so far (usable as --model)
//! <out_dir>/model.safetensors
//! <out_dir>/last/              everything --resume needs: weights with their parameter ids,
//!                              optimiser states, the epoch and step counters, and with
//!                              `soup_from_epoch` the running mean of the weights
//! ```
//!
//! `last/` is written to `last.partial/` and swapped in by renames, so a run killed while
//! saving still has its previous `last/` (or `last.old/`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::module::Module;
use data::write_atomic;
use serde::{Deserialize, Serialize};

use crate::learner::{Learner, Optimizer};

/// Counters saved with the last checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs completed.
    pub epoch: usize,
    /// Optimiser steps taken.
    pub step: usize,
    /// Best selection value so far and its epoch.
    pub best: Option<(f64, usize)>,
    /// Epochs averaged in `soup.bpk` (`soup_from_epoch`); 0 when there is none.
    #[serde(default)]
    pub soup: usize,
}

pub fn last_dir(out: &Path) -> PathBuf {
    out.join("last")
}

/// The last complete checkpoint directory, if any (a swap interrupted after the first rename
/// leaves it as `last.old`).
pub fn find_last(out: &Path) -> Option<PathBuf> {
    [out.join("last"), out.join("last.old")]
        .into_iter()
        .find(|d| d.join("state.json").is_file())
}

/// Finishes a swap that a killed run left half done: a complete `last/` makes `last.old/` and
/// `last.partial/` stale; without one, a complete `last.old/` becomes `last/` again.
pub fn tidy(out: &Path) -> Result<()> {
    let (last, old, partial) = (
        last_dir(out),
        out.join("last.old"),
        out.join("last.partial"),
    );
    if !last.join("state.json").is_file() && old.join("state.json").is_file() {
        if last.exists() {
            std::fs::remove_dir_all(&last)?;
        }
        std::fs::rename(&old, &last)?;
    }
    for stale in [old, partial] {
        if stale.exists() {
            std::fs::remove_dir_all(&stale)
                .with_context(|| format!("cannot remove {}", stale.display()))?;
        }
    }
    Ok(())
}

/// Writes a checkpoint by filling `last.partial/` with `fill` and swapping it in.
pub fn write_last(out: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let partial = out.join("last.partial");
    let old = out.join("last.old");
    let last = last_dir(out);
    if partial.exists() {
        std::fs::remove_dir_all(&partial)?;
    }
    std::fs::create_dir_all(&partial)?;
    fill(&partial)?;
    if last.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old)?;
        }
        std::fs::rename(&last, &old)?;
    }
    std::fs::rename(&partial, &last).context("cannot move the new checkpoint into place")?;
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

/// Removes what an earlier run left in `out`: its checkpoints (`last/`, `last.old/`,
/// `last.partial/`), best model and metrics. `config.toml` and anything else stay.
pub fn clear_run(out: &Path) -> Result<()> {
    for dir in ["last", "last.old", "last.partial"] {
        let path = out.join(dir);
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    for file in [
        model::network::META_FILE,
        model::network::WEIGHTS_FILE,
        "metrics.csv",
    ] {
        let path = out.join(file);
        if path.exists() {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    Ok(())
}

pub fn read_state(dir: &Path) -> Result<TrainState> {
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is damaged", path.display()))
}

/// Saves everything `--resume` needs (weights with their parameter ids, optimiser states,
/// counters) as the new `last/`, swapped in atomically.
pub fn save(out: &Path, learner: &Learner, state: &TrainState) -> Result<()> {
    let err = |e| anyhow::anyhow!("{e:?}");
    write_last(out, |dir| {
        learner
            .model
            .clone()
            .save_file(dir.join("model.bpk"))
            .map_err(err)?;
        if let Some(a) = &learner.arcface {
            a.clone().save_file(dir.join("loss.bpk")).map_err(err)?;
        }
        if let Some((soup, _)) = &learner.soup {
            soup.clone().save_file(dir.join("soup.bpk")).map_err(err)?;
        }
        for (o, name) in [
            (&learner.opt_backbone, "optim_backbone.bpk"),
            (&learner.opt_head, "optim_head.bpk"),
            (&learner.opt_loss, "optim_loss.bpk"),
        ] {
            o.save(dir.join(name))
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        }
        write_atomic(
            &dir.join("state.json"),
            serde_json::to_string_pretty(state)?.as_bytes(),
        )
    })
}

/// Loads the last checkpoint in `out` into a freshly built `learner`; `None` when there is
/// nothing to resume.
pub fn restore(out: &Path, mut learner: Learner) -> Result<(Learner, Option<TrainState>)> {
    let Some(dir) = find_last(out) else {
        return Ok((learner, None));
    };
    let state = read_state(&dir)?;
    let load_err = |what: &str| format!("cannot resume from {}: {what}", dir.display());
    learner.model = learner
        .model
        .try_load_file(dir.join("model.bpk"))
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .with_context(|| load_err("model"))?;
    if let Some(a) = learner.arcface.take() {
        learner.arcface = Some(
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
    learner.opt_backbone = load_opt(learner.opt_backbone, "optim_backbone.bpk")?;
    learner.opt_head = load_opt(learner.opt_head, "optim_head.bpk")?;
    learner.opt_loss = load_opt(learner.opt_loss, "optim_loss.bpk")?;
    if state.soup > 0 {
        let soup = learner
            .model
            .valid()
            .try_load_file(dir.join("soup.bpk"))
            .map_err(|e| anyhow::anyhow!("{e:?}"))
            .with_context(|| load_err("soup"))?;
        learner.soup = Some((soup, state.soup));
    }
    Ok((learner, Some(state)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(dir: &Path, epoch: usize) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join("state.json"),
            format!("{{\"epoch\": {epoch}, \"step\": 0}}"),
        )
        .unwrap();
    }

    #[test]
    fn tidy_finishes_an_interrupted_swap() {
        // Killed after the new last/ was in place: the old one and a stray partial go.
        let out = tempfile::tempdir().unwrap();
        checkpoint(&out.path().join("last"), 2);
        checkpoint(&out.path().join("last.old"), 1);
        std::fs::create_dir_all(out.path().join("last.partial")).unwrap();
        tidy(out.path()).unwrap();
        assert_eq!(read_state(&out.path().join("last")).unwrap().epoch, 2);
        assert!(!out.path().join("last.old").exists());
        assert!(!out.path().join("last.partial").exists());

        // Killed between the two renames: last.old becomes last/ again.
        let out = tempfile::tempdir().unwrap();
        checkpoint(&out.path().join("last.old"), 1);
        checkpoint(&out.path().join("last.partial"), 2);
        tidy(out.path()).unwrap();
        assert_eq!(read_state(&out.path().join("last")).unwrap().epoch, 1);
        assert!(!out.path().join("last.old").exists());
        assert!(!out.path().join("last.partial").exists());
    }
}
