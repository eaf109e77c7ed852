//! `load`: a bounded load test of `retrieval serve`, on loopback only. Writes a gallery of
//! generated pictures (10,000 by default, kept between runs), starts the `retrieval` binary
//! beside this one on it, sends searches by upload at a fixed concurrency in rounds, and
//! reports failed requests, latency percentiles, throughput and the server's resident memory
//! after each round. Exits with 1 if any request failed or memory grew by more than 10 %
//! between the first round and the last. It stops by itself.
//!
//! `cargo build --release -p retrieval -p benches && target/release/load`

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

#[derive(Parser)]
#[command(name = "load", about = "load test of retrieval serve on loopback")]
struct Cli {
    /// Gallery size (generated pictures).
    #[arg(long, default_value_t = 10_000)]
    images: usize,
    /// Searches in all.
    #[arg(long, default_value_t = 2_000)]
    requests: usize,
    /// Searches in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Rounds the searches are split into (memory is read after each).
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    #[arg(long, default_value = "mobilenet_v2")]
    model: String,
    /// Query images (a folder, searched recursively); generated pictures when absent.
    #[arg(long, default_value = "../shared/datasets/animals10/val/query")]
    queries: PathBuf,
    /// Where the gallery and its index are kept between runs.
    #[arg(long, default_value = "target/load")]
    work: PathBuf,
    /// Write the figures as JSON here too.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Writes `n` generated pictures (128×128 JPEG) into `dir`, skipping those already there.
fn write_gallery(dir: &Path, n: usize) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let missing: Vec<usize> = (0..n)
        .filter(|i| !dir.join(format!("{i:06}.jpg")).exists())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "writing {} gallery pictures to {}",
        missing.len(),
        dir.display()
    );
    for i in missing {
        let picture = hostile::picture(i as u32 + 1, 128, 128);
        data::write_atomic(&dir.join(format!("{i:06}.jpg")), &jpeg(&picture)?)?;
    }
    Ok(())
}

fn jpeg(picture: &image::RgbImage) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90).encode_image(picture)?;
    Ok(bytes)
}

/// Query bodies: the files of `dir` (recursively), or 50 generated pictures.
fn queries(dir: &Path) -> Result<Vec<Vec<u8>>> {
    if dir.is_dir() {
        let (_, entries) = data::list_images(dir, None)?;
        return entries
            .iter()
            .map(|e| std::fs::read(&e.path).with_context(|| e.path.display().to_string()))
            .collect();
    }
    (0..50)
        .map(|i| jpeg(&hostile::picture(1_000_000 + i, 224, 224)))
        .collect()
}

/// The server's resident memory in MiB (`VmRSS`).
fn resident_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The server, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let binary = std::env::current_exe()?.with_file_name("retrieval");
    if !binary.is_file() {
        bail!(
            "{} not found: build it first (cargo build --release -p retrieval)",
            binary.display()
        );
    }
    let gallery = cli.work.join(format!("gallery-{}", cli.images));
    write_gallery(&gallery, cli.images)?;
    let bodies = queries(&cli.queries)?;
    let began = Instant::now();
    let mut child = Command::new(&binary)
        .args(["serve", "--model", &cli.model, "--gallery"])
        .arg(&gallery)
        .arg("--index")
        .arg(cli.work.join(format!("index-{}-{}", cli.images, cli.model)))
        .args(["--addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
    let server = Server(child);
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .with_context(|| format!("the server did not start: {line:?}"))?
        .to_string();
    let start_s = began.elapsed().as_secs_f64();
    let pid = server.0.id();
    eprintln!(
        "serving {} images at {base} (ready after {start_s:.1} s)",
        cli.images
    );

    let url = format!("{base}/api/search?k=10");
    let per_round = cli.requests.div_ceil(cli.rounds.max(1));
    let mut rounds = Vec::new();
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    let total_began = Instant::now();
    for round in 0..cli.rounds.max(1) {
        let next = AtomicUsize::new(0);
        let round_began = Instant::now();
        let results: Vec<(f64, Option<String>)> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..cli.concurrency.max(1))
                .map(|_| {
                    scope.spawn(|| {
                        let agent = ureq::AgentBuilder::new()
                            .timeout(Duration::from_secs(120))
                            .build();
                        let mut out = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::SeqCst);
                            if i >= per_round {
                                break out;
                            }
                            let body = &bodies[(round * per_round + i) % bodies.len()];
                            let sent = Instant::now();
                            let failure = match agent.post(&url).send_bytes(body) {
                                Ok(response) => {
                                    let mut text = String::new();
                                    match response.into_reader().read_to_string(&mut text) {
                                        Ok(_) if text.contains("\"results\"") => None,
                                        Ok(_) => Some(format!("unexpected body {text:.80}")),
                                        Err(e) => Some(format!("reading the answer: {e}")),
                                    }
                                }
                                Err(ureq::Error::Status(code, _)) => Some(format!("status {code}")),
                                Err(e) => Some(e.to_string()),
                            };
                            out.push((sent.elapsed().as_secs_f64() * 1e3, failure));
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("worker"))
                .collect()
        });
        let seconds = round_began.elapsed().as_secs_f64();
        let rss = resident_mib(pid).unwrap_or(f64::NAN);
        eprintln!(
            "round {}: {} searches in {seconds:.1} s, server resident {rss:.0} MiB",
            round + 1,
            results.len()
        );
        rounds.push((results.len(), seconds, rss));
        for (ms, failure) in results {
            latencies.push(ms);
            failures.extend(failure);
        }
    }
    let total_s = total_began.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    let throughput = latencies.len() as f64 / total_s;
    let first_rss = rounds.first().map_or(f64::NAN, |r| r.2);
    let last_rss = rounds.last().map_or(f64::NAN, |r| r.2);

    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "gallery",
        "searches",
        "concurrency",
        "failed",
        "p50 ms",
        "p99 ms",
        "searches/s",
        "resident MiB by round",
    ]);
    table.add_row([
        cli.images.to_string(),
        latencies.len().to_string(),
        cli.concurrency.to_string(),
        failures.len().to_string(),
        format!("{p50:.0}"),
        format!("{p99:.0}"),
        format!("{throughput:.1}"),
        rounds
            .iter()
            .map(|r| format!("{:.0}", r.2))
            .collect::<Vec<_>>()
            .join(" → "),
    ]);
    println!("{table}");
    if let Some(out) = &cli.out {
        let value = serde_json::json!({
            "model": cli.model,
            "images": cli.images,
            "searches": latencies.len(),
            "concurrency": cli.concurrency,
            "failed": failures.len(),
            "p50_ms": p50,
            "p99_ms": p99,
            "searches_per_s": throughput,
            "server_ready_s": start_s,
            "resident_mib_by_round": rounds.iter().map(|r| r.2).collect::<Vec<_>>(),
        });
        data::write_atomic(out, serde_json::to_string_pretty(&value)?.as_bytes())?;
    }
    drop(server);
    if !failures.is_empty() {
        bail!(
            "{} of {} searches failed, e.g. {}",
            failures.len(),
            latencies.len(),
            failures[0]
        );
    }
    if last_rss > first_rss * 1.10 {
        bail!("server memory grew from {first_rss:.0} to {last_rss:.0} MiB across rounds");
    }
    Ok(())
}
