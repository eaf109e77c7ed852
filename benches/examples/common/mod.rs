//! What the convolution examples share: a table of layers, each timed for its forward pass and
//! for its forward pass with both gradients, in milliseconds a call after one warm-up call.

use std::time::Instant;

/// The table being printed, and its running totals.
pub struct Table {
    forward: f64,
    train: f64,
    digits: usize,
}

impl Table {
    /// Prints the header; `layer` names the first column, `digits` the decimals of each time.
    pub fn new(layer: &str, digits: usize) -> Self {
        println!("| {layer} | forward ms | forward + gradients ms |");
        println!("|---|---|---|");
        Self {
            forward: 0.0,
            train: 0.0,
            digits,
        }
    }

    /// Times `forward` over `steps.0` calls and `train` over `steps.1`, and prints the row.
    pub fn row<A, B>(
        &mut self,
        label: &str,
        steps: (usize, usize),
        forward: impl Fn() -> A,
        train: impl Fn() -> B,
    ) {
        let _ = forward();
        let _ = train();
        let f = mean_ms(steps.0, || drop(forward()));
        let t = mean_ms(steps.1, || drop(train()));
        self.forward += f;
        self.train += t;
        let d = self.digits;
        println!("| {label} | {f:.d$} | {t:.d$} |");
    }

    /// Prints the totals.
    pub fn finish(self) {
        let d = self.digits.saturating_sub(1);
        println!("| all | {:.d$} | {:.d$} |", self.forward, self.train);
    }
}

fn mean_ms(steps: usize, f: impl Fn()) -> f64 {
    let start = Instant::now();
    for _ in 0..steps {
        f();
    }
    start.elapsed().as_secs_f64() * 1000.0 / steps as f64
}
