//! The routes: the pages, the JSON API and the scoring server. Every handler answers, bad
//! requests included (with a status and `{"error": reason}`), and nothing outside the gallery
//! folder is ever served.

use std::path::Path;
use std::sync::atomic::Ordering;

use data::DecodeError;
use image::RgbImage;
use serde_json::{Value, json};

use super::duplicates;
use super::http::{Reply, Request, Target, multipart_file};
use super::queue::Refused;
use super::scoring::Verdict;
use super::{Search, Service};
use crate::index::IndexEntry;
use crate::report::escape;
use crate::submission::Submission;

const PAGE: &str = include_str!("page.html");
const LEADERBOARD: &str = include_str!("leaderboard.html");
/// Longest side of a thumbnail, in pixels.
const THUMBNAIL: u32 = 160;
/// Most results a search or listing returns.
const MAX_K: usize = 1000;

/// Answers one request.
pub fn handle(service: &Service, request: &Request) -> Reply {
    service.requests.fetch_add(1, Ordering::Relaxed);
    route(service, request).unwrap_or_else(|reply| reply)
}

fn route(s: &Service, request: &Request) -> Result<Reply, Reply> {
    let target = Target::parse(&request.target)
        .ok_or_else(|| Reply::error(400, "the URL holds a malformed %-escape"))?;
    let segments: Vec<&str> = target.segments.iter().map(String::as_str).collect();
    match (request.method.as_str(), segments.as_slice()) {
        ("GET", []) => Ok(Reply::bytes("text/html; charset=utf-8", PAGE.into())),
        ("GET", ["leaderboard"]) => leaderboard_page(s),
        ("GET", ["api", "health"]) => Ok(Reply::ok(&json!({"status": "ok"}))),
        ("GET", ["api", "stats"]) => Ok(stats(s)),
        ("POST", ["api", "search"]) => {
            let image = uploaded_image(request)?.1;
            let row = embed(s, image)?;
            s.searches.fetch_add(1, Ordering::Relaxed);
            ranked(s, &row, &target, None)
        }
        ("GET", ["api", "images"]) => list(s, &target),
        ("POST", ["api", "images"]) => {
            authorise(s, request)?;
            add(s, request, &target)
        }
        ("GET", ["api", "images", id]) => {
            let entry = entry(s, id)?;
            Ok(Reply::ok(&entry_json(&entry)))
        }
        ("DELETE", ["api", "images", id]) => {
            authorise(s, request)?;
            remove(s, id)
        }
        ("GET", ["api", "images", id, "image"]) => image(s, id),
        ("GET", ["api", "images", id, "thumbnail"]) => thumbnail(s, id),
        ("GET", ["api", "images", id, "similar"]) => {
            let id = parse_id(id)?;
            let row = {
                let index = s.index.read().expect("index lock");
                let position = index
                    .position(id)
                    .ok_or_else(|| Reply::not_found(format!("image {id}")))?;
                index.row(position).to_vec()
            };
            ranked(s, &row, &target, Some(id))
        }
        ("GET", ["api", "duplicates"]) => near_duplicates(s, &target),
        ("POST", ["api", "submit"]) => submit(s, request),
        ("GET", ["api", "leaderboard"]) => {
            let scorer = scorer(s)?;
            let rows: Vec<Value> = scorer
                .standings()
                .into_iter()
                .map(|(group, record)| json!({"groupname": group, "best": record.best, "history": record.history}))
                .collect();
            Ok(Reply::ok(&json!({ "groups": rows })))
        }
        _ => Err(Reply::not_found(format!(
            "{} {}",
            request.method, request.target
        ))),
    }
}

/// An image id from the URL (a 404 for anything that is not one).
fn parse_id(id: &str) -> Result<u64, Reply> {
    id.parse()
        .map_err(|_| Reply::not_found(format!("image {id:?}")))
}

/// The entry of an id as written in the URL.
fn entry(s: &Service, id: &str) -> Result<IndexEntry, Reply> {
    entry_by_id(s, parse_id(id)?)
}

fn entry_by_id(s: &Service, id: u64) -> Result<IndexEntry, Reply> {
    let index = s.index.read().expect("index lock");
    index
        .position(id)
        .map(|p| index.entries[p].clone())
        .ok_or_else(|| Reply::not_found(format!("image {id}")))
}

fn entry_json(e: &IndexEntry) -> Value {
    json!({
        "id": e.id,
        "name": e.name,
        "label": e.label,
        "distractor": e.distractor,
        "image": format!("/api/images/{}/image", e.id),
        "thumbnail": format!("/api/images/{}/thumbnail", e.id),
    })
}

fn stats(s: &Service) -> Reply {
    let index = s.index.read().expect("index lock");
    let mut classes = std::collections::BTreeMap::<&str, usize>::new();
    for e in &index.entries {
        let class = match (&e.label, e.distractor) {
            (_, true) => "(distractor)",
            (Some(l), false) => l.as_str(),
            (None, false) => "(unlabelled)",
        };
        *classes.entry(class).or_default() += 1;
    }
    Reply::ok(&json!({
        "images": index.len(),
        "model": index.model,
        "dim": index.dim,
        "classes": classes,
        "gallery": s.root.display().to_string(),
        "index": s.settings.index_dir.display().to_string(),
        "queue": {"waiting": s.queue.waiting(), "capacity": s.queue.capacity()},
        "requests": s.requests.load(Ordering::Relaxed),
        "searches": s.searches.load(Ordering::Relaxed),
        "uptime_s": s.started.elapsed().as_secs(),
        "writes": s.settings.token.is_some(),
        "search": s.search.name(),
        "scoring": s.scorer.as_ref().map(|sc| json!({"queries": sc.queries()})),
        "max_body": s.settings.max_body,
    }))
}

/// The uploaded image of a request (raw body or the file part of a multipart form):
/// (file name if the form gave one, bytes, decoded image).
fn uploaded_image(request: &Request) -> Result<(Option<String>, RgbImage, Vec<u8>), Reply> {
    let content_type = request.header("Content-Type").unwrap_or("");
    let (name, bytes) = if content_type.starts_with("multipart/form-data") {
        let (name, bytes) = multipart_file(content_type, &request.body)
            .ok_or_else(|| Reply::error(400, "the multipart form holds no file part"))?;
        (name, bytes.to_vec())
    } else {
        (None, request.body.clone())
    };
    let image = decode(&bytes)?;
    Ok((name, image, bytes))
}

/// Decodes an upload; 415 when it is not an image, 413 when it is over the decode limits.
fn decode(bytes: &[u8]) -> Result<RgbImage, Reply> {
    if bytes.is_empty() {
        return Err(Reply::error(400, "the body is empty: send an image"));
    }
    data::decode::decode_bytes(Path::new("upload"), bytes).map_err(|e| {
        let status = match e {
            DecodeError::TooLarge { .. }
            | DecodeError::OverLimits { .. }
            | DecodeError::FileTooLarge { .. } => 413,
            _ => 415,
        };
        Reply::error(status, e.to_string())
    })
}

fn embed(s: &Service, image: RgbImage) -> Result<Vec<f32>, Reply> {
    s.queue.embed(image).map_err(|refused| {
        let reason = match refused {
            Refused::Busy => "the embedding queue is full: retry shortly",
            Refused::Stopped => "the embedding worker stopped",
        };
        Reply::error(503, reason).with_header("Retry-After", "1")
    })
}

/// The `k` nearest gallery images to an embedding, within `max_distance` if given.
fn ranked(s: &Service, row: &[f32], target: &Target, exclude: Option<u64>) -> Result<Reply, Reply> {
    let k: usize = target.param("k", 10)?;
    if k == 0 || k > MAX_K {
        return Err(Reply::error(400, format!("k must be 1 to {MAX_K}")));
    }
    let max_distance: f32 = target.param("max_distance", f32::INFINITY)?;
    let index = s.index.read().expect("index lock");
    let hits = s
        .nearest(&index, row, k, exclude)
        .map_err(|e| Reply::error(500, format!("search failed: {e:#}")))?;
    let results: Vec<Value> = hits
        .into_iter()
        .filter(|(_, d)| *d <= max_distance)
        .map(|(i, d)| {
            let mut v = entry_json(&index.entries[i]);
            v["distance"] = json!(d);
            v
        })
        .collect();
    Ok(Reply::ok(&json!({ "results": results })))
}

fn list(s: &Service, target: &Target) -> Result<Reply, Reply> {
    let offset: usize = target.param("offset", 0)?;
    let limit: usize = target.param("limit", 50)?;
    if limit > MAX_K {
        return Err(Reply::error(400, format!("limit is at most {MAX_K}")));
    }
    let label = target.params.get("label").filter(|l| !l.is_empty());
    let index = s.index.read().expect("index lock");
    let chosen: Vec<&IndexEntry> = index
        .entries
        .iter()
        .filter(|e| label.is_none_or(|l| e.label.as_ref() == Some(l)))
        .collect();
    let page: Vec<Value> = chosen
        .iter()
        .skip(offset)
        .take(limit)
        .map(|e| entry_json(e))
        .collect();
    Ok(Reply::ok(
        &json!({"total": chosen.len(), "offset": offset, "images": page}),
    ))
}

/// 401 unless the request carries the write token.
fn authorise(s: &Service, request: &Request) -> Result<(), Reply> {
    let Some(token) = &s.settings.token else {
        return Err(Reply::error(
            401,
            "writes are disabled: start the service with --token",
        ));
    };
    let given = request
        .header("Authorization")
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compare every byte, so the time taken does not tell how much of a guess was right.
    let same = given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(Reply::error(
            401,
            "missing or wrong token (Authorization: Bearer <token>)",
        ))
    }
}

/// A file or folder name a client may choose: one path component, not hidden.
fn safe_component(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && name.len() <= 200
}

fn add(s: &Service, request: &Request, target: &Target) -> Result<Reply, Reply> {
    let (form_name, image, bytes) = uploaded_image(request)?;
    let name = target
        .params
        .get("name")
        .cloned()
        .or(form_name)
        .ok_or_else(|| Reply::error(400, "name the image: ?name=FILE.jpg"))?;
    if !safe_component(&name) || !data::folder::has_image_extension(Path::new(&name)) {
        return Err(Reply::error(
            400,
            format!("{name:?} is not a plain image file name (one component, an image extension)"),
        ));
    }
    let label = target
        .params
        .get("label")
        .filter(|l| !l.is_empty())
        .cloned();
    let class_folders = s
        .index
        .read()
        .expect("index lock")
        .entries
        .iter()
        .any(|e| e.name.contains('/'));
    let relative = match &label {
        Some(l) if !safe_component(l) => {
            return Err(Reply::error(
                400,
                format!("label {l:?} is not a plain folder name"),
            ));
        }
        Some(l) if class_folders => format!("{l}/{name}"),
        Some(_) => {
            return Err(Reply::error(
                400,
                "this gallery is a flat folder: its labels come from its labels.json, not from uploads",
            ));
        }
        None => name,
    };
    let row = embed(s, image)?;
    let _writer = s.writer.lock().expect("writer lock");
    let path = s.root.join(&relative);
    if path.exists()
        || s.index
            .read()
            .expect("index lock")
            .entries
            .iter()
            .any(|e| e.name == relative)
    {
        return Err(Reply::error(
            409,
            format!("{relative:?} is already in the gallery"),
        ));
    }
    let write = || -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        data::write_atomic(&path, &bytes)
    };
    write().map_err(|e| Reply::error(500, format!("cannot write {relative}: {e:#}")))?;
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    let image_entry = data::ImageEntry {
        path: path.clone(),
        name: relative,
        label,
        distractor: false,
    };
    let id = s
        .index
        .write()
        .expect("index lock")
        .add(&image_entry, hash.clone(), &row);
    if let Search::Hnsw(ann) = &s.search {
        ann.add(id, &row)
            .map_err(|e| Reply::error(500, format!("cannot index the image: {e:#}")))?;
    }
    save(s)?;
    if let Search::Milvus(collection) = &s.search {
        let written = collection
            .insert(&[crate::milvus::Row {
                name: &image_entry.name,
                label: image_entry.label.as_deref(),
                sha256: &hash,
                vector: &row,
            }])
            .and_then(|ids| collection.wait_visible(&ids, true));
        written.map_err(|e| milvus_error(&image_entry.name, e))?;
    }
    let entry = entry_by_id(s, id)?;
    Ok(Reply::json(201, &entry_json(&entry)))
}

fn remove(s: &Service, id: &str) -> Result<Reply, Reply> {
    let id = parse_id(id)?;
    let _writer = s.writer.lock().expect("writer lock");
    let entry = entry_by_id(s, id)?;
    // The file is moved beside the index, not deleted: nothing removed is lost.
    if let Some(path) = s.gallery_file(&entry.name) {
        let removed = s.removed_dir();
        let base = Path::new(&entry.name)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let to = removed.join(format!("{id}-{base}"));
        let moved = std::fs::create_dir_all(&removed)
            .and_then(|()| std::fs::rename(&path, &to))
            .or_else(|_| std::fs::copy(&path, &to).and_then(|_| std::fs::remove_file(&path)));
        moved.map_err(|e| Reply::error(500, format!("cannot move {} aside: {e}", entry.name)))?;
    }
    s.index.write().expect("index lock").remove(id);
    if let Search::Hnsw(ann) = &s.search {
        ann.remove(id)
            .map_err(|e| Reply::error(500, format!("cannot unindex the image: {e:#}")))?;
    }
    save(s)?;
    if let Search::Milvus(collection) = &s.search {
        let deleted = collection.with_hashes(&[&entry.hash]).and_then(|found| {
            let ids: Vec<i64> = found
                .into_iter()
                .filter(|f| f.name == entry.name)
                .map(|f| f.id)
                .collect();
            collection.delete(&ids)?;
            collection.wait_visible(&ids, false)
        });
        deleted.map_err(|e| milvus_error(&entry.name, e))?;
    }
    Ok(Reply::ok(&json!({ "removed": entry_json(&entry) })))
}

/// A write the gallery index took but Milvus did not: 502, naming the image; the service
/// mirrors the collection again at its next start.
fn milvus_error(name: &str, e: anyhow::Error) -> Reply {
    Reply::error(
        502,
        format!(
            "{name}: the gallery index has the change, the Milvus collection does not ({e:#}); it is brought in line at the next start"
        ),
    )
}

/// Saves the index (and the HNSW index beside it) after a write and marks it changed.
fn save(s: &Service) -> Result<(), Reply> {
    s.version.fetch_add(1, Ordering::SeqCst);
    let index = s.index.read().expect("index lock");
    let dir = &s.settings.index_dir;
    index
        .save(dir)
        .and_then(|()| match &s.search {
            Search::Hnsw(ann) => ann.save(dir, &index),
            Search::Exact | Search::Milvus(_) => Ok(()),
        })
        .map_err(|e| Reply::error(500, format!("cannot save the index: {e:#}")))
}

fn content_type(name: &str) -> &'static str {
    let extension = Path::new(name)
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "bmp" => "image/bmp",
        _ => "application/octet-stream",
    }
}

/// A gallery image's bytes, only from inside the gallery.
fn image(s: &Service, id: &str) -> Result<Reply, Reply> {
    let entry = entry(s, id)?;
    let path = s
        .gallery_file(&entry.name)
        .ok_or_else(|| Reply::not_found(format!("{} inside the gallery", entry.name)))?;
    let bytes = data::decode::read_file(&path).map_err(|e| Reply::error(404, e.to_string()))?;
    Ok(Reply::bytes(content_type(&entry.name), bytes).with_header("Cache-Control", "max-age=3600"))
}

/// A JPEG thumbnail, made once a content hash and cached beside the index.
fn thumbnail(s: &Service, id: &str) -> Result<Reply, Reply> {
    let entry = entry(s, id)?;
    let cached = s.thumbnail_dir().join(format!("{}.jpg", entry.hash));
    if let Ok(bytes) = std::fs::read(&cached) {
        return Ok(Reply::bytes("image/jpeg", bytes).with_header("Cache-Control", "max-age=3600"));
    }
    let path = s
        .gallery_file(&entry.name)
        .ok_or_else(|| Reply::not_found(format!("{} inside the gallery", entry.name)))?;
    let image = data::decode::decode_image(&path).map_err(|e| Reply::error(404, e.to_string()))?;
    let (w, h) = (image.width(), image.height());
    let scale = THUMBNAIL as f32 / w.max(h) as f32;
    let small = if scale < 1.0 {
        image::imageops::thumbnail(
            &image,
            ((w as f32 * scale).round() as u32).max(1),
            ((h as f32 * scale).round() as u32).max(1),
        )
    } else {
        image
    };
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 85)
        .encode_image(&small)
        .map_err(|e| Reply::error(500, format!("cannot encode a thumbnail: {e}")))?;
    let stored = std::fs::create_dir_all(s.thumbnail_dir())
        .map_err(anyhow::Error::from)
        .and_then(|()| data::write_atomic(&cached, &bytes));
    if let Err(e) = stored {
        eprintln!("warning: cannot cache a thumbnail: {e:#}");
    }
    Ok(Reply::bytes("image/jpeg", bytes).with_header("Cache-Control", "max-age=3600"))
}

fn near_duplicates(s: &Service, target: &Target) -> Result<Reply, Reply> {
    let threshold: f32 = target.param("threshold", 0.3)?;
    let limit: usize = target.param("limit", 50)?;
    if !(threshold > 0.0 && threshold <= 2.0) {
        return Err(Reply::error(400, "threshold is a distance in (0, 2]"));
    }
    let index = s.index.read().expect("index lock");
    let lists = s
        .duplicates
        .neighbours(&index, s.version.load(Ordering::SeqCst));
    let groups = duplicates::groups(&lists, threshold);
    let shown: Vec<Value> = groups
        .iter()
        .take(limit)
        .map(|g| {
            let closest = g
                .iter()
                .flat_map(|&i| {
                    lists[i]
                        .iter()
                        .filter(|(j, _)| g.contains(j))
                        .map(|(_, d)| *d)
                })
                .fold(f32::INFINITY, f32::min);
            json!({
                "images": g.iter().map(|&i| entry_json(&index.entries[i])).collect::<Vec<_>>(),
                "closest": closest,
            })
        })
        .collect();
    Ok(Reply::ok(&json!({
        "threshold": threshold,
        "groups_total": groups.len(),
        "images_in_groups": groups.iter().map(Vec::len).sum::<usize>(),
        "groups": shown,
    })))
}

fn scorer(s: &Service) -> Result<&super::scoring::Scorer, Reply> {
    s.scorer.as_ref().ok_or_else(|| {
        Reply::error(
            404,
            "no scoring here: start the service with --answers FILE",
        )
    })
}

fn submit(s: &Service, request: &Request) -> Result<Reply, Reply> {
    let scorer = scorer(s)?;
    let submission: Submission = serde_json::from_slice(&request.body).map_err(|e| {
        Reply::error(
            400,
            format!("not a submission ({{\"groupname\", \"images\": {{query: [10 gallery files]}}}}): {e}"),
        )
    })?;
    match scorer.submit(&submission) {
        Ok(Verdict::Scored { attempt, best }) => Ok(Reply::ok(&json!({
            "groupname": submission.groupname,
            "top1": attempt.top1,
            "top5": attempt.top5,
            "top10": attempt.top10,
            "score": attempt.score,
            "best": best,
        }))),
        Ok(Verdict::Refused(problems)) => Err(Reply::json(
            400,
            &json!({
                "error": format!("the submission has {} problem(s)", problems.len()),
                "problems": problems,
            }),
        )),
        Err(e) => Err(Reply::error(500, format!("cannot record the score: {e:#}"))),
    }
}

fn leaderboard_page(s: &Service) -> Result<Reply, Reply> {
    let scorer = scorer(s)?;
    let mut rows = String::new();
    for (rank, (group, record)) in scorer.standings().iter().enumerate() {
        let Some(best) = &record.best else { continue };
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{}</td></tr>\n",
            rank + 1,
            escape(group),
            best.score,
            best.top1,
            best.top5,
            best.top10,
            record.history.len()
        ));
    }
    let page = LEADERBOARD
        .replace("{{rows}}", &rows)
        .replace("{{queries}}", &scorer.queries().to_string());
    Ok(Reply::bytes("text/html; charset=utf-8", page.into_bytes()))
}
