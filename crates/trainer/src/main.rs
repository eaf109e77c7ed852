//! `trainer --config configs/arcface.toml [--set key=value ...] [--resume]`

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use trainer::config::TrainConfig;

#[derive(Parser)]
#[command(name = "trainer", version, about = "Fine-tune a lookalike embedding")]
struct Cli {
    /// TOML run description (see configs/).
    #[arg(long)]
    config: PathBuf,
    /// Override a key, e.g. --set epochs=4 --set loss.margin=0.4 (repeatable).
    #[arg(long = "set")]
    overrides: Vec<String>,
    /// Continue from the run directory's last checkpoint.
    #[arg(long)]
    resume: bool,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

fn main() {
    model::allocator::keep_freed_memory();
    let cli = Cli::parse();
    if let Err(e) = run(&cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: &Cli) -> Result<()> {
    let config = TrainConfig::load(&cli.config, &cli.overrides)?;
    if config.soup.is_some() {
        return soup(&config, cli);
    }
    let outcome = trainer::training::train(&config, cli.resume, cli.quiet)?;
    match outcome.best {
        Some((value, epoch)) => println!(
            "done in {:.0}s; best epoch {epoch} (selection {value:.1}) saved in {}",
            outcome.seconds,
            config.out_dir.display()
        ),
        None => println!("done in {:.0}s; no epoch completed", outcome.seconds),
    }
    Ok(())
}

/// `[soup]`: one run per seed, then their mean; prints each model's figures.
fn soup(config: &TrainConfig, cli: &Cli) -> Result<()> {
    let outcome = trainer::soup::train_soup(config, cli.resume, cli.quiet)?;
    for row in &outcome.rows {
        println!(
            "{:>8} | {} | selection {:.1}",
            row.name,
            trainer::run_log::figures_line(&row.validation),
            row.selection
        );
    }
    println!(
        "done in {:.0}s; the soup saved in {} ({} beside it)",
        outcome.seconds,
        config.out_dir.display(),
        trainer::soup::SOUP_FILE
    );
    Ok(())
}
