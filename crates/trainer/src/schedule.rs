//! Learning-rate schedule: linear warm-up, then cosine decay to zero, by training step.

/// The learning rate at `step` of `total` for a peak of `peak` with `warmup` warm-up steps.
pub fn warmup_cosine(peak: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if total == 0 {
        return peak;
    }
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = (total - warmup).max(1) as f64;
    let t = ((step - warmup) as f64 / span).min(1.0);
    peak * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape() {
        assert!((warmup_cosine(1.0, 0, 4, 20) - 0.25).abs() < 1e-12);
        assert!((warmup_cosine(1.0, 3, 4, 20) - 1.0).abs() < 1e-12);
        assert!((warmup_cosine(1.0, 4, 4, 20) - 1.0).abs() < 1e-12);
        assert!((warmup_cosine(1.0, 12, 4, 20) - 0.5).abs() < 1e-12);
        assert!(warmup_cosine(1.0, 19, 4, 20) < 0.01);
    }
}
