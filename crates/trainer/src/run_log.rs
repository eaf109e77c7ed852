//! The run's log: `metrics.csv` (one row an epoch, row 0 the untrained model) and one line an
//! epoch on stderr.

use std::path::{Path, PathBuf};

use anyhow::Result;
use data::write_atomic;
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
    header: Vec<String>,
    epochs: usize,
}

impl RunLog {
    /// Opens the log keeping the rows of epochs `<= keep` (after a resume, rows of an epoch
    /// whose checkpoint never landed are dropped before it is redone).
    pub fn open(out: &Path, config: &TrainConfig, keep: usize) -> Result<Self> {
        let mut header: Vec<String> = [
            "epoch",
            "loss",
            "images_per_s",
            "augment_s",
            "train_s",
            "eval_s",
        ]
        .map(String::from)
        .to_vec();
        header.extend(metric_columns(
            config.validation.iter().map(|v| v.name.as_str()),
        ));
        header.push("selection".into());
        let log = Self {
            path: out.join("metrics.csv"),
            header,
            epochs: config.epochs,
        };
        log.truncate(keep)?;
        Ok(log)
    }

    fn truncate(&self, epoch: usize) -> Result<()> {
        let mut out = csv::Writer::from_writer(Vec::new());
        out.write_record(&self.header)?;
        if let Ok(mut reader) = csv::Reader::from_path(&self.path) {
            for row in reader.records() {
                let row = row?;
                let e: Option<usize> = row.get(0).and_then(|v| v.parse().ok());
                if e.is_some_and(|e| e <= epoch) {
                    out.write_record(&row)?;
                }
            }
        }
        let bytes = out.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
        write_atomic(&self.path, &bytes)
    }

    /// Appends the epoch's row (synced) and prints its line.
    pub fn record(&self, r: &EpochRecord) -> Result<()> {
        let mut row = vec![
            r.epoch.to_string(),
            format!("{:.5}", r.loss),
            format!("{:.2}", r.images_per_s),
            format!("{:.1}", r.augment_s),
            format!("{:.1}", r.train_s),
            format!("{:.1}", r.eval_s),
        ];
        row.extend(metric_cells(&r.validation));
        row.push(format!("{:.2}", r.selection));
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.path)?;
        let mut writer = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(file);
        writer.write_record(&row)?;
        let file = writer.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
        file.sync_all()?;
        self.print(r);
        Ok(())
    }

    fn print(&self, record: &EpochRecord) {
        let figures = figures_line(&record.validation);
        if record.epoch == 0 {
            eprintln!("before training | {figures}");
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
            figures
        );
    }
}

/// The columns a model's figures take in `metrics.csv` (and a soup's `soup.csv`): for each
/// validation pair, `{pair}_top1` … `{pair}_score`.
pub fn metric_columns<'a>(pairs: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut columns = Vec::new();
    for pair in pairs {
        for m in ["top1", "top3", "top5", "top10", "map10", "map_r", "score"] {
            columns.push(format!("{pair}_{m}"));
        }
    }
    columns
}

/// A model's figures under [`metric_columns`].
pub fn metric_cells(validation: &[(String, Metrics)]) -> Vec<String> {
    let mut cells = Vec::new();
    for (_, m) in validation {
        for v in [m.top1, m.top3, m.top5, m.top10, m.map10, m.map_r] {
            cells.push(format!("{v:.4}"));
        }
        cells.push(format!("{:.1}", m.score));
    }
    cells
}

/// A model's figures on one line, pair by pair (the terminal's view of a row).
pub fn figures_line(validation: &[(String, Metrics)]) -> String {
    let figures: Vec<String> = validation
        .iter()
        .map(|(n, m)| {
            format!(
                "{n}: top-1 {:.3} top-5 {:.3} mAP@10 {:.3} score {:.0}",
                m.top1, m.top5, m.map10, m.score
            )
        })
        .collect();
    figures.join(" | ")
}
