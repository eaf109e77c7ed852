//! `retrieval serve`: the search service (web page, JSON API, scoring server) over a
//! persisted gallery index.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use data::load::skipped_summary;
use retrieval::ann::open_gallery;
use retrieval::embed::EmbedOptions;
use retrieval::embedder::Embedder;
use retrieval::index::GalleryIndex;
use retrieval::milvus::{Collection, MilvusUrl};
use retrieval::serve::queue::EmbedQueue;
use retrieval::serve::scoring::{Answers, Scorer};
use retrieval::serve::{Search, Service, Settings, default_leaderboard, start};

#[derive(Args)]
pub struct ServeArgs {
    /// A pretrained backbone, descriptor or checkpoint directory (as for `search`).
    #[arg(long, short)]
    model: String,
    /// Compute device: cpu, or wgpu (build with --features wgpu).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The gallery folder to search (class folders, labels.json or flat).
    #[arg(long)]
    gallery: PathBuf,
    /// Where the gallery index lives (default: under the embedding cache, keyed by gallery
    /// and model). Later starts embed only new or changed files.
    #[arg(long)]
    index: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Answers of a test set (written by `retrieval answers`): serve the scoring API and the
    /// leaderboard.
    #[arg(long)]
    answers: Option<PathBuf>,
    /// Leaderboard file (default: leaderboard.json in the index folder).
    #[arg(long)]
    leaderboard: Option<PathBuf>,
    /// Token that allows adding and removing images (Authorization: Bearer TOKEN); without
    /// it, writes are refused.
    #[arg(long)]
    token: Option<String>,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    max_body: usize,
    /// Uploads that may wait for the embedding worker; past it, 503 with Retry-After.
    #[arg(long, default_value_t = 32)]
    queue: usize,
    /// Largest batch the embedding worker forms from waiting uploads.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Seconds between saves of a build in progress (a killed build resumes from the last).
    #[arg(long, default_value_t = retrieval::index::SAVE_EVERY.as_secs_f64())]
    save_every: f64,
    /// Rank exactly instead of by the HNSW index (built on start, kept beside the index).
    #[arg(long)]
    exact: bool,
    /// Search through a Milvus collection (milvus://HOST:PORT/COLLECTION) instead of the HNSW
    /// index: on start the collection is made to mirror the gallery index (missing images
    /// inserted, gone or changed ones deleted), and images added or removed through the API
    /// are written to it too.
    #[arg(long, conflicts_with = "exact")]
    milvus: Option<MilvusUrl>,
    /// Connections served at once (a thread each); past it, 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    connections: usize,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let embedder = Embedder::load(&args.model, &model::device::device(&args.device)?)?;
    let index_dir = args
        .index
        .clone()
        .unwrap_or_else(|| GalleryIndex::default_dir(&args.gallery, &embedder.id()));
    let scorer = match &args.answers {
        Some(path) => {
            let board = args
                .leaderboard
                .clone()
                .unwrap_or_else(|| default_leaderboard(&index_dir));
            Some(Scorer::open(Answers::read(path)?, board)?)
        }
        None => None,
    };
    let options = EmbedOptions {
        batch_size: args.batch_size.max(1),
        ..EmbedOptions::default()
    };
    let (index, report, ann) = open_gallery(
        &index_dir,
        (&args.gallery, None),
        &embedder,
        &options,
        std::time::Duration::from_secs_f64(args.save_every.max(0.0)),
        args.exact || args.milvus.is_some(),
    )?;
    eprint!("{}", skipped_summary(&report.skipped, index.len()));
    eprintln!(
        "index {}: {} images ({} kept, {} reused, {} embedded, {} dropped)",
        index_dir.display(),
        index.len(),
        report.kept,
        report.reused,
        report.embedded,
        report.removed
    );
    let settings = Settings {
        gallery: args.gallery.clone(),
        index_dir,
        token: args.token.clone(),
        max_body: args.max_body,
        queue: args.queue,
        connections: args.connections,
    };
    let search = match (&args.milvus, ann) {
        (Some(url), _) => {
            let collection =
                Collection::open(url, &crate::args::model_id(&embedder, &options), index.dim)?;
            let hashes: Vec<String> = index.entries.iter().map(|e| e.hash.clone()).collect();
            let report = retrieval::milvus::mirror_hashed(
                &collection,
                &index.to_set(&args.gallery),
                &hashes,
            )?;
            eprintln!("{url}: {report}");
            Search::Milvus(collection)
        }
        (None, Some(ann)) => Search::Hnsw(ann),
        (None, None) => Search::Exact,
    };
    let queue = EmbedQueue::start(embedder, args.queue, args.batch_size);
    let service = Service::new(settings, index, search, queue, scorer)?;
    let running = start(service, &args.addr)?;
    println!("listening on http://{}", running.address);
    std::io::stdout().flush()?;
    running.wait();
    Ok(())
}
