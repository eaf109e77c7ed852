//! A model soup of seeds (`[soup]`): the configuration trained once per seed, each run in a
//! folder of its own (`out_dir/seed-N`), then the mean of their kept models, weight by weight,
//! validated and saved in `out_dir` as the run's model. Each member is an ordinary run, so a
//! killed soup resumes member by member, and a finished member is not trained again.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use data::write_atomic;
use model::Network;
use retrieval::metrics::Metrics;

use crate::checkpoint;
use crate::config::TrainConfig;
use crate::run_log::{metric_cells, metric_columns};
use crate::training::train;
use crate::validation::Validation;

/// File of the members' and the soup's figures, in `out_dir`.
pub const SOUP_FILE: &str = "soup.csv";

/// One model's figures: a member's kept model or the soup.
#[derive(Debug, Clone)]
pub struct SoupRow {
    /// `seed-N` for a member, `soup` for the mean.
    pub name: String,
    /// Each validation pair's figures.
    pub validation: Vec<(String, Metrics)>,
    /// The value the selection ranks models by.
    pub selection: f64,
}

/// What a finished soup reports: each member's kept model, then the soup.
#[derive(Debug, Clone)]
pub struct SoupOutcome {
    pub rows: Vec<SoupRow>,
    pub seconds: f64,
}

/// The folder of the member trained with `seed`.
pub fn member_dir(config: &TrainConfig, seed: u64) -> PathBuf {
    config.out_dir.join(format!("seed-{seed}"))
}

/// A member's configuration: the soup's, with one seed and a folder of its own.
fn member(config: &TrainConfig, seed: u64) -> TrainConfig {
    let mut c = config.clone();
    c.soup = None;
    c.seed = seed;
    c.out_dir = member_dir(config, seed);
    c
}

/// Trains (or, with `resume`, continues) every member of `config`'s `[soup]`, then averages
/// their kept models into `out_dir`.
pub fn train_soup(config: &TrainConfig, resume: bool, quiet: bool) -> Result<SoupOutcome> {
    let started = Instant::now();
    let Some(soup) = &config.soup else {
        bail!("the configuration has no [soup] seeds");
    };
    let out = &config.out_dir;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    if !resume {
        // A fresh soup owns its folder: no model of an earlier soup may outlive its members.
        checkpoint::clear_run(out)?;
        let figures = out.join(SOUP_FILE);
        if figures.exists() {
            std::fs::remove_file(&figures)
                .with_context(|| format!("cannot remove {}", figures.display()))?;
        }
    }
    write_atomic(&out.join("config.toml"), config.to_toml()?.as_bytes())?;

    for (i, &seed) in soup.seeds.iter().enumerate() {
        let member = member(config, seed);
        if !quiet {
            eprintln!(
                "soup member {}/{}: seed {seed}, in {}",
                i + 1,
                soup.seeds.len(),
                member.out_dir.display()
            );
        }
        if train(&member, resume, quiet)?.best.is_none() {
            bail!(
                "{}: no epoch completed, so there is no model to average",
                member.out_dir.display()
            );
        }
    }

    let device = config.device.device()?;
    let members: Vec<Network> = soup
        .seeds
        .iter()
        .map(|&s| Network::load_checkpoint(&member_dir(config, s), &device))
        .collect::<Result<_>>()?;
    let mean = model::interpolate::average(&members)?;
    let validation = Validation::load(&config.validation, &mean.preprocess())?;
    let mut rows = Vec::new();
    let names = soup.seeds.iter().map(|s| format!("seed-{s}"));
    for (name, net) in names
        .chain(["soup".to_string()])
        .zip(members.iter().chain([&mean]))
    {
        let results = validation.evaluate(net.valid(), &device, config.eval_batch_size)?;
        rows.push(SoupRow {
            name,
            selection: config.selection.value(&results),
            validation: results,
        });
    }
    let seeds: Vec<String> = soup.seeds.iter().map(u64::to_string).collect();
    mean.save_checkpoint(
        out,
        &format!("{} soup of seeds {}", config.backbone, seeds.join(", ")),
    )?;
    write_atomic(&out.join(SOUP_FILE), &figures_csv(&rows)?)?;
    Ok(SoupOutcome {
        rows,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// `soup.csv`: one row a model (each member's kept model, then the soup), the columns of
/// `metrics.csv` for each validation pair, and the selection value.
fn figures_csv(rows: &[SoupRow]) -> Result<Vec<u8>> {
    let mut out = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["model".to_string()];
    let pairs = rows.first().map_or(&[][..], |r| &r.validation);
    header.extend(metric_columns(pairs.iter().map(|(pair, _)| pair.as_str())));
    header.push("selection".into());
    out.write_record(&header)?;
    for r in rows {
        let mut row = vec![r.name.clone()];
        row.extend(metric_cells(&r.validation));
        row.push(format!("{:.2}", r.selection));
        out.write_record(&row)?;
    }
    out.into_inner().map_err(|e| anyhow::anyhow!("{e}"))
}
