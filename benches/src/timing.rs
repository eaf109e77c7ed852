//! Repeats a step until enough time has passed, after warm-up runs, and reports the rate.

use std::time::{Duration, Instant};

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
