//! `collect`: ingest extra training images safely (see the `collect` library).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use collect::fetch::FetchOptions;
use collect::labels::LabelMap;
use collect::{CollectOptions, collect, summary};

/// Ingest images from folders and URL lists into a clean labelled folder with a manifest,
/// rejecting broken files, small images, duplicates and leaks of protected images.
#[derive(Parser)]
#[command(name = "collect", version)]
struct Cli {
    /// A folder of candidates; the first sub-folder is the label (repeatable).
    #[arg(long = "from")]
    from: Vec<PathBuf>,
    /// `file,label` CSV for loose files at the top of the --from folders.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// A URL list: `url,label` per line (repeatable).
    #[arg(long = "urls")]
    urls: Vec<PathBuf>,
    /// An icon set to render as drawings (repeatable): an npm package such as
    /// @iconify-json/openmoji (fetched with `npm pack`), a package tarball or folder, or an
    /// Iconify icons.json. Icons whose names the label map knows are collected.
    #[arg(long)]
    icons: Vec<String>,
    /// Where `npm pack` keeps the icon-set tarballs.
    #[arg(long, default_value = "checkpoints/cache/npm")]
    npm_cache: PathBuf,
    /// The collection folder: INTO/<class>/… and INTO/manifest.csv.
    #[arg(long)]
    into: PathBuf,
    /// A folder nothing may leak from, e.g. validation or test (repeatable).
    #[arg(long)]
    protect: Vec<PathBuf>,
    /// An existing training set not to collect again (repeatable).
    #[arg(long)]
    train: Vec<PathBuf>,
    /// Label map (TOML: [map] raw = "class", exclude = [...], keep_unmapped = true);
    /// repeatable: several maps are joined into one.
    #[arg(long)]
    labels: Vec<PathBuf>,
    /// Keep labels the map does not name as extra classes.
    #[arg(long)]
    keep_unmapped: bool,
    /// Smallest accepted width and height.
    #[arg(long, default_value_t = 64)]
    min_side: u32,
    /// Perceptual-hash Hamming distance (of 256 bits) up to which images count as copies.
    #[arg(long, default_value_t = collect::fingerprint::DEFAULT_MAX_DISTANCE)]
    max_distance: u32,
    /// Download timeout, seconds.
    #[arg(long, default_value_t = 20)]
    timeout: u64,
    /// Largest download, MiB.
    #[arg(long, default_value_t = 20)]
    max_mib: u64,
    /// Retries of a download that may pass (timeouts, 429, 5xx).
    #[arg(long, default_value_t = 2)]
    retries: u32,
    /// Parallel reads and downloads.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let Cli {
        from,
        csv,
        urls,
        icons,
        npm_cache,
        into,
        protect,
        train,
        labels,
        keep_unmapped,
        min_side,
        max_distance,
        timeout,
        max_mib,
        retries,
        concurrency,
    } = cli;
    if from.is_empty() && urls.is_empty() && icons.is_empty() {
        anyhow::bail!("nothing to collect: give --from DIR, --urls FILE or --icons PACKAGE");
    }
    let mut labels = LabelMap::load_all(&labels)?.unwrap_or_else(LabelMap::keep_all);
    labels.keep_unmapped |= keep_unmapped;
    let options = CollectOptions {
        folders: from,
        csv,
        url_lists: urls,
        icon_sets: icons,
        npm_cache,
        into,
        protect,
        existing: train,
        labels,
        min_side,
        max_distance,
        fetch: FetchOptions {
            timeout: Duration::from_secs(timeout),
            max_bytes: max_mib << 20,
            retries,
            ..Default::default()
        },
        concurrency,
        quiet: false,
    };
    let rows = collect(&options)?;
    let counts = summary(&rows);
    let width = counts.keys().map(String::len).max().unwrap_or(0);
    println!("{:width$}  files", "reason");
    for (reason, n) in &counts {
        println!("{reason:width$}  {n}");
    }
    println!("{:width$}  {}", "total", rows.len());
    let classes: std::collections::BTreeSet<&str> = rows
        .iter()
        .filter(|r| r.accepted)
        .map(|r| r.label.as_str())
        .collect();
    println!(
        "{} accepted into {} classes; manifest: {}",
        counts.get("accepted").copied().unwrap_or(0),
        classes.len(),
        options.into.join(collect::manifest::FILE_NAME).display()
    );
    Ok(())
}
