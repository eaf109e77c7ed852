//! A gallery in a Milvus collection, for galleries past one machine: `--index
//! milvus://HOST:PORT/COLLECTION`.
//!
//! Spoken through Milvus' RESTful API v1 (`/v1/vector/...` on the proxy port), which Milvus 2.3
//! serves and later servers keep beside v2, with the HTTP client the workspace already has
//! (ureq): no gRPC stack, no SDK pinned to one server line. Tested against the standalone
//! server of PyPI's `milvus==2.3.5`.
//!
//! A collection made here has v1's quick layout: an automatic `Int64` id, a float vector of
//! the model's width under L2, and dynamic fields `name`, `label` and `sha256` (of the file's
//! bytes). Its description records the model (`lookalike model=<id>`); a collection of another
//! model or width is refused. An image is identified by its content hash and its name, so
//! re-running an ingest inserts nothing, and jobs on several machines can write different file
//! lists into one collection.
//!
//! Milvus makes writes visible to reads after a short delay (the collection's consistency
//! level, bounded staleness for v1 collections): [`Collection::wait_visible`] polls until a
//! change is visible, so a search right after an ingest sees it.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use data::{DecodeError, ImageEntry};
use rayon::prelude::*;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::embed::{EmbedOptions, EmbeddingSet};
use crate::embedder::Embedder;
use crate::index::file_hash;

/// Rows per insert request and hashes per lookup query.
const BATCH: usize = 256;
/// The most rows one v1 query returns (Milvus caps offset + limit at 16384).
const PAGE: usize = 16_384;
/// How long a change may take to become visible before it is an error.
const VISIBLE_WITHIN: Duration = Duration::from_secs(120);

/// `milvus://HOST:PORT/COLLECTION`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MilvusUrl {
    /// `http://HOST:PORT`.
    pub endpoint: String,
    pub collection: String,
}

impl std::str::FromStr for MilvusUrl {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let rest = s
            .strip_prefix("milvus://")
            .ok_or_else(|| anyhow!("{s:?}: a Milvus index is milvus://HOST:PORT/COLLECTION"))?;
        let (host, collection) = rest
            .split_once('/')
            .ok_or_else(|| anyhow!("{s:?}: no collection (milvus://HOST:PORT/COLLECTION)"))?;
        let valid_name = collection
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && collection
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            && collection.len() <= 255;
        if !valid_name {
            bail!(
                "{s:?}: a collection name is a letter or '_' then letters, digits or '_' \
                 (at most 255)"
            );
        }
        if host.is_empty() || host.contains(['/', '?', '#', '@']) {
            bail!("{s:?}: expected HOST:PORT before the collection");
        }
        let host = if host.contains(':') {
            host.to_string()
        } else {
            format!("{host}:19530")
        };
        Ok(Self {
            endpoint: format!("http://{host}"),
            collection: collection.to_string(),
        })
    }
}

impl std::fmt::Display for MilvusUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = self.endpoint.trim_start_matches("http://");
        write!(f, "milvus://{host}/{}", self.collection)
    }
}

/// One image as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub id: i64,
    pub name: String,
    pub sha256: String,
}

/// One image to store.
pub struct Row<'a> {
    pub name: &'a str,
    pub label: Option<&'a str>,
    pub sha256: &'a str,
    pub vector: &'a [f32],
}

/// What an ingest or a mirror did.
#[derive(Debug, Default)]
pub struct IngestReport {
    /// Images inserted.
    pub inserted: usize,
    /// Images already there (same name and content).
    pub present: usize,
    /// Entries deleted (a mirror's files that are gone or changed, and duplicates).
    pub deleted: usize,
    /// Files that could not be read or decoded.
    pub skipped: Vec<DecodeError>,
}

impl std::fmt::Display for IngestReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} inserted, {} already there, {} deleted, {} unreadable",
            self.inserted,
            self.present,
            self.deleted,
            self.skipped.len()
        )
    }
}

/// A connection to one collection of one Milvus server.
pub struct Collection {
    pub url: MilvusUrl,
    pub dim: usize,
    agent: ureq::Agent,
}

#[derive(Deserialize)]
struct Reply {
    code: i64,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    data: Value,
}

impl Collection {
    /// Opens the collection for `model` (its id and width), creating it when missing. A
    /// collection made for another model or width is an error naming both.
    pub fn open(url: &MilvusUrl, model: &str, dim: usize) -> Result<Self> {
        let collection = Self {
            url: url.clone(),
            dim,
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(10))
                .timeout(Duration::from_secs(300))
                .build(),
        };
        let description = format!("lookalike model={model}");
        match collection.describe()? {
            None => {
                collection.call(
                    "collections/create",
                    json!({
                        "collectionName": url.collection,
                        "dimension": dim,
                        "metricType": "L2",
                        "primaryField": "id",
                        "vectorField": "vector",
                        "description": description,
                    }),
                )?;
            }
            Some(found) => {
                let theirs = found["description"].as_str().unwrap_or("");
                if theirs != description {
                    bail!(
                        "{url}: the collection holds {theirs:?}, not {description:?}: use another \
                         collection, or drop this one"
                    );
                }
                let width = found["fields"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|f| f["name"] == "vector")
                    .and_then(|f| f["type"].as_str())
                    .unwrap_or("");
                if width != format!("FloatVector({dim})") {
                    bail!("{url}: its vectors are {width:?}, this model's are {dim} wide");
                }
            }
        }
        Ok(collection)
    }

    /// The collection's description as the server gives it, or `None` when there is none.
    fn describe(&self) -> Result<Option<Value>> {
        let url = format!("{}/v1/vector/collections/describe", self.url.endpoint);
        let reply: Reply = self
            .agent
            .get(&url)
            .query("collectionName", &self.url.collection)
            .call()
            .with_context(|| format!("{}: cannot reach the Milvus server", self.url))?
            .into_json()
            .with_context(|| format!("{}: not a Milvus answer", self.url))?;
        match reply.code {
            200 => Ok(Some(reply.data)),
            // "collection not found"
            100 => Ok(None),
            code => bail!(
                "{}: describe: Milvus error {code}: {}",
                self.url,
                reply.message.unwrap_or_default()
            ),
        }
    }

    /// POSTs `body` to `/v1/vector/{path}` and returns the answer's `data`; a Milvus error
    /// code is an error naming the collection, the call and the server's message.
    fn call(&self, path: &str, body: Value) -> Result<Value> {
        let url = format!("{}/v1/vector/{path}", self.url.endpoint);
        let reply: Reply = self
            .agent
            .post(&url)
            .send_json(body)
            .with_context(|| format!("{}: {path}: cannot reach the Milvus server", self.url))?
            .into_json()
            .with_context(|| format!("{}: {path}: not a Milvus answer", self.url))?;
        if reply.code != 200 {
            bail!(
                "{}: {path}: Milvus error {}: {}",
                self.url,
                reply.code,
                reply.message.unwrap_or_default()
            );
        }
        Ok(reply.data)
    }

    /// Inserts rows in batches; returns their new ids.
    pub fn insert(&self, rows: &[Row]) -> Result<Vec<i64>> {
        let mut ids = Vec::with_capacity(rows.len());
        for batch in rows.chunks(BATCH) {
            let data: Vec<Value> = batch
                .iter()
                .map(|r| {
                    if r.vector.len() != self.dim {
                        bail!("{}: {} wide, not {}", r.name, r.vector.len(), self.dim);
                    }
                    let mut row = json!({
                        "vector": r.vector,
                        "name": r.name,
                        "sha256": r.sha256,
                    });
                    if let Some(label) = r.label {
                        row["label"] = json!(label);
                    }
                    Ok(row)
                })
                .collect::<Result<_>>()?;
            let answer = self.call(
                "insert",
                json!({"collectionName": self.url.collection, "data": data}),
            )?;
            ids.extend(parse_ids(&answer["insertIds"])?);
        }
        Ok(ids)
    }

    /// Deletes entries by id.
    pub fn delete(&self, ids: &[i64]) -> Result<()> {
        for batch in ids.chunks(BATCH) {
            self.call(
                "delete",
                json!({"collectionName": self.url.collection, "id": batch}),
            )?;
        }
        Ok(())
    }

    /// The entries whose content hash is one of `hashes`.
    pub fn with_hashes(&self, hashes: &[&str]) -> Result<Vec<Stored>> {
        let mut found = Vec::new();
        for batch in hashes.chunks(BATCH) {
            let filter = format!("sha256 in {}", serde_json::to_string(batch)?);
            found.extend(self.query(&filter, PAGE)?);
        }
        Ok(found)
    }

    /// Every entry, a page at a time in id order (a query with a limit answers the smallest
    /// ids first; checked, since pages depend on it).
    pub fn entries(&self) -> Result<Vec<Stored>> {
        let mut all: Vec<Stored> = Vec::new();
        let mut after = 0i64;
        loop {
            let page = self.query(&format!("id > {after}"), PAGE)?;
            if page.windows(2).any(|w| w[0].id >= w[1].id) {
                bail!(
                    "{}: the server answered a page out of id order: cannot list the collection",
                    self.url
                );
            }
            let full = page.len() == PAGE;
            if let Some(last) = page.last() {
                after = last.id;
            }
            all.extend(page);
            if !full {
                return Ok(all);
            }
        }
    }

    fn query(&self, filter: &str, limit: usize) -> Result<Vec<Stored>> {
        let answer = self.call(
            "query",
            json!({
                "collectionName": self.url.collection,
                "filter": filter,
                "outputFields": ["id", "name", "sha256"],
                "limit": limit,
            }),
        )?;
        let mut rows: Vec<Stored> = answer
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                Ok(Stored {
                    id: parse_id(&r["id"])?,
                    name: r["name"].as_str().unwrap_or_default().to_string(),
                    sha256: r["sha256"].as_str().unwrap_or_default().to_string(),
                })
            })
            .collect::<Result<_>>()?;
        rows.sort_by_key(|r| r.id);
        Ok(rows)
    }

    /// The `k` nearest entries to `query`: (name, squared distance), nearest first, ties by
    /// name, as exact ranking gives them.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<(String, f32)>> {
        if k == 0 {
            return Ok(Vec::new());
        }
        let answer = self.call(
            "search",
            json!({
                "collectionName": self.url.collection,
                "vector": query,
                "limit": k.min(PAGE),
                "outputFields": ["name"],
            }),
        )?;
        let mut hits: Vec<(String, f32)> = answer
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| {
                let name = h["name"].as_str().unwrap_or_default().to_string();
                let distance = h["distance"].as_f64().unwrap_or(f64::INFINITY) as f32;
                (name, distance)
            })
            .collect();
        hits.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        Ok(hits)
    }

    /// Waits until every one of `ids` is visible to reads (`present`) or none is (after a
    /// delete), polling for up to two minutes: Milvus shows writes to reads after its
    /// consistency delay.
    pub fn wait_visible(&self, ids: &[i64], present: bool) -> Result<()> {
        let start = Instant::now();
        for batch in ids.chunks(BATCH) {
            let filter = format!("id in {}", serde_json::to_string(batch)?);
            loop {
                let seen = self.query(&filter, PAGE)?.len();
                if (present && seen == batch.len()) || (!present && seen == 0) {
                    break;
                }
                if start.elapsed() > VISIBLE_WITHIN {
                    let what = if present { "insert" } else { "delete" };
                    bail!(
                        "{}: {what} of {} entries not visible after {} s",
                        self.url,
                        ids.len(),
                        VISIBLE_WITHIN.as_secs()
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(())
    }
}

fn parse_id(v: &Value) -> Result<i64> {
    match v {
        Value::String(s) => s.parse().with_context(|| format!("id {s:?}")),
        Value::Number(n) => n.as_i64().ok_or_else(|| anyhow!("id {n}")),
        other => bail!("id {other}"),
    }
}

fn parse_ids(v: &Value) -> Result<Vec<i64>> {
    v.as_array()
        .ok_or_else(|| anyhow!("no ids in the insert answer"))?
        .iter()
        .map(parse_id)
        .collect()
}

/// Streams images into the collection: a batch at a time, hashes the files, embeds only those
/// whose name and content are not there yet, inserts them, and waits until they are
/// searchable. Re-running it inserts nothing. Shows progress unless `options.quiet`.
pub fn ingest(
    collection: &Collection,
    entries: Vec<ImageEntry>,
    embedder: &Embedder,
    options: &EmbedOptions,
) -> Result<IngestReport> {
    let mut report = IngestReport::default();
    let mut inserted = Vec::new();
    let bar = data::load::progress_bar(entries.len(), "ingesting", options.quiet);
    let quiet = EmbedOptions {
        quiet: true,
        ..*options
    };
    for batch in entries.chunks(BATCH) {
        let mut hashed = Vec::new();
        let hashes: Vec<_> = batch.par_iter().map(|e| file_hash(&e.path)).collect();
        for (entry, hash) in batch.iter().zip(hashes) {
            match hash {
                Ok(h) => hashed.push((entry.clone(), h)),
                Err(e) => report.skipped.push(e),
            }
        }
        let hashes: Vec<&str> = hashed.iter().map(|(_, h)| h.as_str()).collect();
        let there: HashSet<(String, String)> = collection
            .with_hashes(&hashes)?
            .into_iter()
            .map(|s| (s.name, s.sha256))
            .collect();
        let (present, missing): (Vec<_>, Vec<_>) = hashed
            .into_iter()
            .partition(|(e, h)| there.contains(&(e.name.clone(), h.clone())));
        report.present += present.len();
        let hash_of: HashMap<_, _> = missing
            .iter()
            .map(|(e, h)| (e.path.clone(), h.clone()))
            .collect();
        let (set, skipped) =
            embedder.embed_entries(missing.into_iter().map(|(e, _)| e).collect(), &quiet)?;
        report.skipped.extend(skipped);
        let hashes: Vec<&str> = set
            .entries
            .iter()
            .map(|e| hash_of[&e.path].as_str())
            .collect();
        let rows = rows_of(&set, &hashes, |_| true);
        inserted.extend(collection.insert(&rows)?);
        report.inserted += rows.len();
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    collection.wait_visible(&inserted, true)?;
    Ok(report)
}

/// The rows of `set` whose index `take` accepts, with their content hashes.
fn rows_of<'a, H: AsRef<str>>(
    set: &'a EmbeddingSet,
    hashes: &'a [H],
    take: impl Fn(usize) -> bool,
) -> Vec<Row<'a>> {
    set.entries
        .iter()
        .enumerate()
        .filter(|(i, _)| take(*i))
        .map(|(i, e)| Row {
            name: &e.name,
            label: e.label.as_deref(),
            sha256: hashes[i].as_ref(),
            vector: set.row(i),
        })
        .collect()
}

/// Makes the collection hold exactly the gallery `set` (embedded already): inserts the images
/// that are missing, deletes entries whose file is gone or changed and duplicates, then waits
/// until searches see the result.
pub fn mirror(collection: &Collection, set: &EmbeddingSet) -> Result<IngestReport> {
    let hashes: Vec<String> = set
        .entries
        .par_iter()
        .map(|e| file_hash(&e.path))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("{e}"))?;
    mirror_hashed(collection, set, &hashes)
}

/// [`mirror`] with the files' content hashes already known (a gallery index keeps them),
/// `hashes[i]` for `set`'s row `i`.
pub fn mirror_hashed(
    collection: &Collection,
    set: &EmbeddingSet,
    hashes: &[String],
) -> Result<IngestReport> {
    let mut report = IngestReport::default();
    let wanted: HashMap<(&str, &str), usize> = set
        .entries
        .iter()
        .zip(hashes)
        .enumerate()
        .map(|(i, (e, h))| ((e.name.as_str(), h.as_str()), i))
        .collect();
    let mut kept: HashSet<usize> = HashSet::new();
    let mut stale = Vec::new();
    for s in collection.entries()? {
        match wanted.get(&(s.name.as_str(), s.sha256.as_str())) {
            Some(&i) if kept.insert(i) => {}
            _ => stale.push(s.id),
        }
    }
    report.present = kept.len();
    collection.delete(&stale)?;
    report.deleted = stale.len();
    let rows = rows_of(set, hashes, |i| !kept.contains(&i));
    let inserted = collection.insert(&rows)?;
    report.inserted = inserted.len();
    collection.wait_visible(&inserted, true)?;
    collection.wait_visible(&stale, false)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_print() {
        let u: MilvusUrl = "milvus://127.0.0.1:19530/gallery_1".parse().unwrap();
        assert_eq!(u.endpoint, "http://127.0.0.1:19530");
        assert_eq!(u.collection, "gallery_1");
        assert_eq!(u.to_string(), "milvus://127.0.0.1:19530/gallery_1");
        let u: MilvusUrl = "milvus://db/g".parse().unwrap();
        assert_eq!(u.endpoint, "http://db:19530");
        for bad in [
            "http://x/y",
            "milvus://host",
            "milvus://host/",
            "milvus://host/1abc",
            "milvus://host/a-b",
            "milvus:///abc",
            "milvus://u@host/abc",
        ] {
            assert!(bad.parse::<MilvusUrl>().is_err(), "{bad} parsed");
        }
    }
}
