//! The run's log: `metrics.csv` (one row an epoch, row 0 the untrained model) and one line an
//! epoch on stderr.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use model::embedder::write_atomic;
use retrieval::metrics::Metrics;

use crate::config::TrainConfig;

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

/// `metrics.csv` of a run directory.
pub struct RunLog {
    path: PathBuf,
    header: String,
    epochs: usize,
}

impl RunLog {
    /// Opens the log keeping the rows of epochs `<= keep` (after a resume, rows of an epoch
    /// whose checkpoint never landed are dropped before it is redone).
    pub fn open(out: &Path, config: &TrainConfig, keep: usize) -> Result<Self> {
        let mut header = String::from("epoch,loss,images_per_s,augment_s,train_s,eval_s");
        for v in &config.validation {
            for m in ["top1", "top3", "top5", "top10", "map10", "map_r", "score"] {
                header.push_str(&format!(",{}_{m}", v.name));
            }
        }
        header.push_str(",selection\n");
        let log = Self {
            path: out.join("metrics.csv"),
            header,
            epochs: config.epochs,
        };
        log.truncate(keep)?;
        Ok(log)
    }

    fn truncate(&self, epoch: usize) -> Result<()> {
        let mut out = self.header.clone();
        if let Ok(text) = std::fs::read_to_string(&self.path) {
            for line in text.lines().skip(1) {
                let e: Option<usize> = line.split(',').next().and_then(|v| v.parse().ok());
                if e.is_some_and(|e| e <= epoch) {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        write_atomic(&self.path, out.as_bytes())
    }

    /// Appends the epoch's row (synced) and prints its line.
    pub fn record(&self, r: &EpochRecord) -> Result<()> {
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
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.path)?;
        f.write_all(row.as_bytes())?;
        f.sync_all()?;
        self.print(r);
        Ok(())
    }

    fn print(&self, record: &EpochRecord) {
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
            self.epochs,
            record.loss,
            record.images_per_s,
            record.augment_s,
            record.train_s,
            record.eval_s,
            figures.join(" | ")
        );
    }
}
