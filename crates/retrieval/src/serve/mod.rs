//! `retrieval serve`: the search service. One process serves a web page, a JSON API over a
//! persisted gallery index, and optionally the competition's scoring server.
//!
//! - [`http`]: replies, bodies up to a limit, query strings, multipart uploads.
//! - [`queue`]: the bounded embedding queue (503 past it) and its batching worker.
//! - [`api`]: the routes.
//! - [`scoring`]: submissions scored against answers, and the leaderboard.
//! - [`duplicates`]: groups of gallery images closer than a threshold.
//! - `page.html`, `leaderboard.html`: the pages, compiled into the binary.

pub mod api;
pub mod duplicates;
pub mod http;
pub mod queue;
pub mod scoring;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::ann::AnnIndex;
use crate::index::GalleryIndex;
use crate::milvus::Collection;
use queue::EmbedQueue;
use scoring::Scorer;

/// How the service runs (everything but the model and its index).
#[derive(Debug, Clone)]
pub struct Settings {
    pub gallery: PathBuf,
    pub index_dir: PathBuf,
    /// Needed in `Authorization: Bearer <token>` to add or remove images; writes are
    /// refused (401) when none is set.
    pub token: Option<String>,
    /// Largest request body, in bytes (413 past it).
    pub max_body: usize,
    /// Images that may wait for the embedding worker (503 past it).
    pub queue: usize,
    /// Connections served at once (a thread each); past it, 503.
    pub connections: usize,
}

/// How the service ranks its gallery index.
pub enum Search {
    /// Every row, exactly (`--exact`).
    Exact,
    /// By the HNSW index over the rows, updated in place and saved with the index.
    Hnsw(AnnIndex),
    /// By a Milvus collection that already mirrors the index
    /// ([`crate::milvus::mirror_hashed`], `--milvus`); additions and removals are written to
    /// it too.
    Milvus(Collection),
}

impl Search {
    /// `exact`, `hnsw` or `milvus`, as `/api/stats` names it.
    pub fn name(&self) -> &'static str {
        match self {
            Search::Exact => "exact",
            Search::Hnsw(_) => "hnsw",
            Search::Milvus(_) => "milvus",
        }
    }
}

/// The running service's shared state.
pub struct Service {
    pub settings: Settings,
    /// The gallery's canonical path: nothing outside it is ever served.
    pub root: PathBuf,
    pub index: RwLock<GalleryIndex>,
    /// How searches rank the index.
    pub search: Search,
    /// Bumped on every change of the index (keys the duplicate groups).
    pub version: AtomicU64,
    /// Held while a write (add, remove) changes the index and its files.
    pub writer: Mutex<()>,
    pub queue: EmbedQueue,
    pub scorer: Option<Scorer>,
    pub duplicates: duplicates::Cache,
    pub started: Instant,
    pub requests: AtomicU64,
    pub searches: AtomicU64,
}

impl Service {
    pub fn new(
        settings: Settings,
        index: GalleryIndex,
        search: Search,
        queue: EmbedQueue,
        scorer: Option<Scorer>,
    ) -> Result<Self> {
        let root = std::fs::canonicalize(&settings.gallery)
            .with_context(|| format!("gallery {}", settings.gallery.display()))?;
        Ok(Self {
            settings,
            root,
            index: RwLock::new(index),
            search,
            version: AtomicU64::new(0),
            writer: Mutex::new(()),
            queue,
            scorer,
            duplicates: duplicates::Cache::default(),
            started: Instant::now(),
            requests: AtomicU64::new(0),
            searches: AtomicU64::new(0),
        })
    }

    /// Where removed images are moved (nothing the service removes is lost).
    pub fn removed_dir(&self) -> PathBuf {
        self.settings.index_dir.join("removed")
    }

    /// Where thumbnails are cached, by content hash.
    pub fn thumbnail_dir(&self) -> PathBuf {
        self.settings.index_dir.join("thumbnails")
    }

    /// The `k` nearest rows of the index to `query`, leaving out `exclude`: (row, Euclidean
    /// distance), by [`Service::search`].
    pub fn nearest(
        &self,
        index: &GalleryIndex,
        query: &[f32],
        k: usize,
        exclude: Option<u64>,
    ) -> Result<Vec<(usize, f32)>> {
        match &self.search {
            Search::Milvus(collection) => {
                let skip = exclude.and_then(|id| index.position(id));
                let want = k + usize::from(skip.is_some());
                Ok(collection
                    .search(query, want)?
                    .into_iter()
                    .filter_map(|(name, d)| index.position_of_name(&name).map(|row| (row, d)))
                    .filter(|(row, _)| Some(*row) != skip)
                    .take(k)
                    .map(|(row, d)| (row, d.max(0.0).sqrt()))
                    .collect())
            }
            Search::Hnsw(ann) => Ok(ann
                .search(query, k, exclude)?
                .into_iter()
                .filter_map(|(id, d)| index.position(id).map(|row| (row, d)))
                .collect()),
            Search::Exact => Ok(index.search(query, k, exclude)),
        }
    }

    /// A gallery file's path, only if it is inside the gallery once links are resolved.
    pub fn gallery_file(&self, name: &str) -> Option<PathBuf> {
        let path = std::fs::canonicalize(self.root.join(name)).ok()?;
        (path.starts_with(&self.root) && path.is_file()).then_some(path)
    }
}

/// A bound, running server: its address, and the thread accepting connections.
pub struct Running {
    pub address: std::net::SocketAddr,
    pub service: Arc<Service>,
    acceptor: std::thread::JoinHandle<()>,
}

impl Running {
    /// Answers requests until the process ends.
    pub fn wait(self) {
        let _ = self.acceptor.join();
    }
}

/// How long a connection may sit idle, or take to send a request, before it is closed.
const IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Binds `address` and starts accepting: a thread a connection, at most `settings.connections`
/// at once; past that a connection gets 503 with Retry-After and is closed.
pub fn start(service: Service, address: &str) -> Result<Running> {
    let listener = std::net::TcpListener::bind(address)
        .with_context(|| format!("cannot listen on {address}"))?;
    let bound = listener.local_addr()?;
    let service = Arc::new(service);
    let open = Arc::new(AtomicUsize::new(0));
    let refusing = Arc::new(AtomicUsize::new(0));
    let inner = service.clone();
    let acceptor = std::thread::Builder::new()
        .name("accept".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if open.load(Ordering::SeqCst) >= inner.settings.connections.max(1) {
                    refuse(stream, &refusing, inner.settings.max_body);
                    continue;
                }
                open.fetch_add(1, Ordering::SeqCst);
                let (service, open) = (inner.clone(), open.clone());
                let spawned =
                    std::thread::Builder::new()
                        .name("connection".into())
                        .spawn(move || {
                            serve_connection(&service, stream);
                            open.fetch_sub(1, Ordering::SeqCst);
                        });
                if spawned.is_err() {
                    eprintln!("warning: cannot start a connection thread");
                }
            }
        })
        .expect("spawning the accept thread");
    Ok(Running {
        address: bound,
        service,
        acceptor,
    })
}

/// Most bytes read and dropped after an early answer (a body over the limit, a refusal).
const LINGER_BYTES: u64 = 64 << 20;

/// After answering early, closes our side and reads what the client is still sending (up to
/// [`LINGER_BYTES`], for at most two seconds), so it reads the answer instead of a reset.
fn linger(writer: &std::net::TcpStream, mut reader: std::io::BufReader<std::net::TcpStream>) {
    let _ = writer.shutdown(std::net::Shutdown::Write);
    let _ = writer.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    let _ = std::io::copy(
        &mut std::io::Read::take(&mut reader, LINGER_BYTES),
        &mut std::io::sink(),
    );
}

/// Threads that may be answering refused connections at once; past it, they are dropped.
const REFUSING: usize = 16;

/// Answers a connection past the limit with 503 and Retry-After, on a short-lived thread that
/// reads its request first (so the client sees the answer, not a reset).
fn refuse(stream: std::net::TcpStream, refusing: &Arc<AtomicUsize>, max_body: usize) {
    if refusing.fetch_add(1, Ordering::SeqCst) >= REFUSING {
        refusing.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    let refusing = refusing.clone();
    let spawned = std::thread::Builder::new()
        .name("refuse".into())
        .spawn(move || {
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(2)));
            if let Ok(mut writer) = stream.try_clone() {
                let mut reader = std::io::BufReader::new(stream);
                let _ = http::read_request(&mut reader, max_body);
                let _ = http::Reply::error(503, "too many connections: retry shortly")
                    .with_header("Retry-After", "1")
                    .write(&mut writer, false);
                linger(&writer, reader);
            }
            refusing.fetch_sub(1, Ordering::SeqCst);
        });
    if spawned.is_err() {
        eprintln!("warning: cannot start a thread to refuse a connection");
    }
}

/// Answers a connection's requests in order until it closes, idles or errs.
fn serve_connection(service: &Service, stream: std::net::TcpStream) {
    let _ = stream.set_read_timeout(Some(IDLE));
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = std::io::BufReader::new(stream);
    loop {
        match http::read_request(&mut reader, service.settings.max_body) {
            Ok(Some(request)) => {
                let keep_alive = request.keep_alive;
                let reply = api::handle(service, &request);
                if reply.write(&mut writer, keep_alive).is_err() || !keep_alive {
                    return;
                }
            }
            Ok(None) => return,
            Err(reply) => {
                // A request that could not be read leaves the stream mid-message: close it.
                let _ = reply.write(&mut writer, false);
                linger(&writer, reader);
                return;
            }
        }
    }
}

/// The answers file's default leaderboard: beside the index.
pub fn default_leaderboard(index_dir: &Path) -> PathBuf {
    index_dir.join("leaderboard.json")
}
