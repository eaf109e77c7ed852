//! Repeats a step until enough time has passed, after warm-up runs, and reports the rate.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::memory::{peak_mib, reset_peak};

/// What one measurement found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measurement {
    /// A stable name the peers script matches on: `forward/<model>/<batch>[/folded]`,
    /// `train/<model>/<batch>`, `folder/<model>`, `search/<rows>x<dim>`.
    pub key: String,
    pub what: String,
    /// Items (images, queries) a second.
    pub per_second: f64,
    /// Mean wall time of one step, milliseconds.
    pub step_ms: f64,
    pub peak_mib: Option<f64>,
}

/// Runs `step` (which handles `items` items) `warmup` times, then until `min_time` has passed
/// and at least `min_steps` steps ran.
pub fn measure(
    key: String,
    what: impl Into<String>,
    items: usize,
    warmup: usize,
    min_steps: usize,
    min_time: Duration,
    mut step: impl FnMut(),
) -> Measurement {
    reset_peak();
    for _ in 0..warmup {
        step();
    }
    let start = Instant::now();
    let mut steps = 0usize;
    while steps < min_steps || start.elapsed() < min_time {
        step();
        steps += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    Measurement {
        key,
        what: what.into(),
        per_second: (steps * items) as f64 / seconds,
        step_ms: seconds * 1000.0 / steps as f64,
        peak_mib: peak_mib(),
    }
}

/// The figures of a run so far. Each is printed to stderr as it is measured and, with an output
/// file, the JSON is rewritten (atomically) after each one, so a run stopped early (a time limit
/// on a GPU lease, a kill) keeps every figure it finished.
pub struct Recorder {
    rows: Vec<Measurement>,
    out: Option<PathBuf>,
}

impl Recorder {
    pub fn new(out: Option<PathBuf>) -> Self {
        Self {
            rows: Vec::new(),
            out,
        }
    }

    pub fn add(&mut self, m: Measurement) -> Result<()> {
        eprintln!(
            "{}: {:.1} items/s, {:.1} ms a step",
            m.what, m.per_second, m.step_ms
        );
        self.rows.push(m);
        if let Some(out) = &self.out {
            data::write_atomic(out, serde_json::to_string_pretty(&self.rows)?.as_bytes())?;
        }
        Ok(())
    }

    pub fn rows(&self) -> &[Measurement] {
        &self.rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figure(key: &str) -> Measurement {
        Measurement {
            key: key.into(),
            what: key.into(),
            per_second: 2.0,
            step_ms: 500.0,
            peak_mib: None,
        }
    }

    fn keys_in(path: &std::path::Path) -> Vec<String> {
        let rows: Vec<serde_json::Value> =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        rows.iter()
            .map(|r| r["key"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn the_json_holds_every_figure_as_soon_as_it_is_measured() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ours.json");
        let mut record = Recorder::new(Some(out.clone()));
        record.add(figure("forward/a/1")).unwrap();
        assert_eq!(keys_in(&out), ["forward/a/1"]);
        record.add(figure("train/a/32")).unwrap();
        assert_eq!(keys_in(&out), ["forward/a/1", "train/a/32"]);
        assert_eq!(record.rows().len(), 2);
    }
}
