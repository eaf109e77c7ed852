//! `collect`: ingest extra training images safely.
//!
//! Candidates come from folders, URL lists and icon sets ([`icons`], rendered as drawings).
//! Each is read (downloaded, rendered), hashed, decoded and fingerprinted in parallel; then,
//! in a fixed order, it is rejected when it cannot be decoded, is too small, copies or
//! nearly copies a protected image (a validation or test leak), duplicates the existing training set or an image already accepted, or has a label
//! the label map does not take. Accepted files are copied byte for byte (renderings as PNG)
//! into `INTO/<class>/`; `INTO/manifest.csv` lists every candidate with its reason. Re-running
//! gives the same collection and manifest; a file accepted before and rejected now (say, a
//! new `--protect` folder) is removed, and one whose label now maps to another class moves.

pub mod fetch;
pub mod fingerprint;
pub mod icons;
pub mod labels;
pub mod manifest;
pub mod source;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indicatif::ParallelProgressIterator;
use rayon::prelude::*;

use data::decode::{DecodeError, decode_bytes, read_file};
use data::folder::has_image_extension;
use data::load::progress_bar;
use fetch::{FetchOptions, agent, fetch};
use fingerprint::{Fingerprint, content_hash, hasher};
use image_hasher::Hasher;
use labels::{LabelMap, Mapped};
use manifest::Row;
use source::{Candidate, Origin};

/// Everything `collect` needs.
#[derive(Debug, Clone)]
pub struct CollectOptions {
    /// Folders of candidates (label = first sub-folder).
    pub folders: Vec<PathBuf>,
    /// `file,label` CSV for loose files at the top of a folder.
    pub csv: Option<PathBuf>,
    /// URL lists (`url,label` lines).
    pub url_lists: Vec<PathBuf>,
    /// Icon sets ([`icons`]): npm package names, package tarballs or folders, `icons.json`.
    pub icon_sets: Vec<String>,
    /// Where npm package tarballs are kept.
    pub npm_cache: PathBuf,
    /// The collection folder (class sub-folders and `manifest.csv`).
    pub into: PathBuf,
    /// Folders nothing may leak from (validation, test).
    pub protect: Vec<PathBuf>,
    /// Existing training sets: their images and near copies are not collected again.
    pub existing: Vec<PathBuf>,
    pub labels: LabelMap,
    /// Smallest accepted width and height, in pixels.
    pub min_side: u32,
    /// Largest perceptual-hash Hamming distance (of 256 bits) that still counts as a copy.
    pub max_distance: u32,
    pub fetch: FetchOptions,
    /// Parallel reads and downloads.
    pub concurrency: usize,
    pub quiet: bool,
}

impl Default for CollectOptions {
    fn default() -> Self {
        Self {
            folders: Vec::new(),
            csv: None,
            url_lists: Vec::new(),
            icon_sets: Vec::new(),
            npm_cache: PathBuf::from("checkpoints/cache/npm"),
            into: PathBuf::from("data/collected"),
            protect: Vec::new(),
            existing: Vec::new(),
            labels: LabelMap::keep_all(),
            min_side: 64,
            max_distance: fingerprint::DEFAULT_MAX_DISTANCE,
            fetch: FetchOptions::default(),
            concurrency: 8,
            quiet: false,
        }
    }
}

/// A known image duplicates are checked against.
struct Known {
    source: String,
    sha256: String,
    fingerprint: Fingerprint,
}

/// A candidate read and fingerprinted.
struct Analysed {
    sha256: String,
    fingerprint: Fingerprint,
    width: u32,
    height: u32,
    /// Downloaded bytes (files are read again when copied).
    body: Option<Vec<u8>>,
}

/// A rejection: reason and detail.
type Rejection = (String, String);

fn reject(reason: &str, detail: impl Into<String>) -> Rejection {
    (reason.to_string(), detail.into())
}

/// The refusal of an image whose label the map excludes.
fn excluded_label(raw: &str) -> Rejection {
    reject("excluded-label", format!("{raw} is excluded"))
}

/// Reads, hashes and fingerprints one image file, known from now on as `source`.
fn known_image(path: &Path, source: String, hasher: &Hasher) -> Result<Known, DecodeError> {
    let bytes = read_file(path)?;
    let img = decode_bytes(path, &bytes)?;
    Ok(Known {
        source,
        sha256: content_hash(&bytes),
        fingerprint: Fingerprint::of(&img, hasher),
    })
}

/// Fingerprints every readable image under `dirs`; unreadable ones are reported and skipped.
fn known_images(dirs: &[PathBuf], what: &str, hasher: &Hasher, quiet: bool) -> Result<Vec<Known>> {
    let mut files = Vec::new();
    for d in dirs {
        files.extend(
            source::all_files(d)?
                .into_iter()
                .filter(|p| has_image_extension(p)),
        );
    }
    let bar = progress_bar(files.len(), what, quiet);
    let known: Vec<Option<Known>> = files
        .par_iter()
        .progress_with(bar.clone())
        .map(
            |path| match known_image(path, path.display().to_string(), hasher) {
                Ok(k) => Some(k),
                Err(e) => {
                    eprintln!("warning: {what}: {e}");
                    None
                }
            },
        )
        .collect();
    bar.finish_and_clear();
    Ok(known.into_iter().flatten().collect())
}

fn analyse(
    candidate: &Candidate,
    options: &CollectOptions,
    http: &ureq::Agent,
    hasher: &Hasher,
) -> Result<Analysed, Rejection> {
    let (bytes, downloaded) = match &candidate.origin {
        Origin::File(path) => (
            read_file(path).map_err(|e| reject(e.kind(), e.to_string()))?,
            false,
        ),
        Origin::Url(url) => (
            fetch(http, url, &options.fetch).map_err(|e| reject(e.kind(), e.to_string()))?,
            true,
        ),
        Origin::Icon { svg, background } => (
            icons::render(svg, *background)
                .map_err(|e| reject("not-rendered", format!("{e:#}")))?,
            true,
        ),
    };
    let sha256 = content_hash(&bytes);
    let img = decode_bytes(Path::new(&candidate.source), &bytes)
        .map_err(|e| reject(e.kind(), e.to_string()))?;
    let (width, height) = img.dimensions();
    if width.min(height) < options.min_side {
        return Err(reject(
            "too-small",
            format!("{width}x{height}, under {} px", options.min_side),
        ));
    }
    Ok(Analysed {
        sha256,
        fingerprint: Fingerprint::of(&img, hasher),
        width,
        height,
        body: downloaded.then_some(bytes),
    })
}

/// The nearest known image within `max_distance`: `(source, distance)`, exact copies first.
fn nearest<'a>(
    item: &Analysed,
    known: impl Iterator<Item = &'a Known>,
    max_distance: u32,
) -> Option<(&'a str, u32, bool)> {
    let mut best: Option<(&str, u32, bool)> = None;
    for k in known {
        if k.sha256 == item.sha256 {
            return Some((&k.source, 0, true));
        }
        let d = item.fingerprint.distance(&k.fingerprint);
        if d <= max_distance && best.is_none_or(|(_, b, _)| d < b) {
            best = Some((&k.source, d, false));
        }
    }
    best
}

/// A file or folder name safe to create (no separators, not `.`/`..`, not empty).
fn safe_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    let cleaned = cleaned.trim().to_string();
    if cleaned.is_empty() || cleaned == "." || cleaned == ".." {
        "_".to_string()
    } else {
        cleaned
    }
}

/// Where an accepted image goes: `<class>/<name>`, made unique with the hash when taken.
fn destination(
    class: &str,
    candidate: &Candidate,
    sha256: &str,
    bytes: &[u8],
    taken: &BTreeSet<String>,
) -> String {
    let mut name = safe_name(&candidate.file_name);
    if name == "_" || Path::new(&name).extension().is_none_or(|e| e.is_empty()) {
        let ext = image::guess_format(bytes)
            .ok()
            .and_then(|f| f.extensions_str().first().copied())
            .unwrap_or("img");
        name = format!("{}.{ext}", if name == "_" { &sha256[..16] } else { &name });
    }
    let plain = format!("{}/{name}", safe_name(class));
    if !taken.contains(&plain) {
        return plain;
    }
    let path = Path::new(&name);
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{}/{stem}-{}.{ext}", safe_name(class), &sha256[..12])
}

/// Runs the collection; returns the manifest rows (also written to `INTO/manifest.csv`).
pub fn collect(options: &CollectOptions) -> Result<Vec<Row>> {
    std::fs::create_dir_all(&options.into)
        .with_context(|| format!("cannot create {}", options.into.display()))?;
    let manifest_path = options.into.join(manifest::FILE_NAME);
    let previous = manifest::read(&manifest_path)?;

    let mut candidates = Vec::new();
    for folder in &options.folders {
        candidates.extend(source::from_folder(folder, options.csv.as_deref())?);
    }
    for list in &options.url_lists {
        candidates.extend(source::from_url_list(list)?);
    }
    for spec in &options.icon_sets {
        let set = icons::IconSet::load(spec, &options.npm_cache)?;
        candidates.extend(set.candidates(&options.labels));
    }
    candidates.sort();
    candidates.dedup_by(|a, b| a.source == b.source);

    let hasher = hasher();
    let protected = known_images(
        &options.protect,
        "fingerprinting protected",
        &hasher,
        options.quiet,
    )?;
    let existing = known_images(
        &options.existing,
        "fingerprinting training set",
        &hasher,
        options.quiet,
    )?;

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(options.concurrency.max(1))
        .build()
        .context("cannot start the worker threads")?;
    let http = agent(&options.fetch);
    let bar = progress_bar(candidates.len(), "reading candidates", options.quiet);
    let analysed: Vec<Result<Analysed, Rejection>> = pool.install(|| {
        candidates
            .par_iter()
            .progress_with(bar.clone())
            // An icon whose name has an excluded part (`arrow-bear-left`, `hot-dog`) is listed
            // and refused without being rendered: thousands of them in a large set. Files and
            // downloads are read all the same, so that a leak among them is reported as one.
            .map(|c| match (&c.origin, c.raw_label.as_deref()) {
                (Origin::Icon { .. }, Some(raw))
                    if options.labels.apply(raw) == Mapped::Excluded =>
                {
                    Err(excluded_label(raw))
                }
                _ => analyse(c, options, &http, &hasher),
            })
            .collect()
    });
    bar.finish_and_clear();

    // Images accepted by earlier runs from sources not listed now stay in the pool.
    let current: BTreeSet<&str> = candidates.iter().map(|c| c.source.as_str()).collect();
    let kept_before: Vec<&Row> = previous
        .iter()
        .filter(|r| r.accepted && !current.contains(r.source.as_str()))
        .collect();
    let mut accepted: Vec<Known> = Vec::new();
    let mut taken: BTreeSet<String> = BTreeSet::new();
    let mut rows: Vec<Row> = Vec::new();
    for r in &kept_before {
        if let Ok(known) = known_image(&options.into.join(&r.file), r.source.clone(), &hasher) {
            accepted.push(known);
            taken.insert(r.file.clone());
            rows.push((*r).clone());
        }
    }
    let previous_by_source: HashMap<&str, &Row> =
        previous.iter().map(|r| (r.source.as_str(), r)).collect();

    let mut to_remove = Vec::new();
    for (candidate, result) in candidates.iter().zip(analysed) {
        let raw = candidate.raw_label.clone().unwrap_or_default();
        let credit = candidate.credit.clone();
        let mut row = Row {
            source: candidate.source.clone(),
            label: raw.clone(),
            licence: credit
                .as_ref()
                .map(|c| c.licence.clone())
                .unwrap_or_default(),
            attribution: credit.map(|c| c.attribution).unwrap_or_default(),
            ..Default::default()
        };
        let decision = result.and_then(|item| {
            row.sha256 = item.sha256.clone();
            row.phash = item.fingerprint.phash();
            row.width = item.width;
            row.height = item.height;
            let checks = [
                (&protected, "leak-exact", "leak-near", "protected "),
                (&existing, "in-training-set", "near-training-set", ""),
                (&accepted, "duplicate", "near-duplicate", ""),
            ];
            for (known, exact_reason, near_reason, what) in checks {
                if let Some((src, d, exact)) = nearest(&item, known.iter(), options.max_distance) {
                    return Err(if exact {
                        reject(exact_reason, format!("copy of {what}{src}"))
                    } else {
                        reject(
                            near_reason,
                            format!("near copy of {what}{src} (distance {d})"),
                        )
                    });
                }
            }
            let class = match candidate
                .raw_label
                .as_deref()
                .map(|l| options.labels.apply(l))
            {
                None => return Err(reject("no-label", "no class folder or CSV label")),
                Some(Mapped::Excluded) => return Err(excluded_label(&raw)),
                Some(Mapped::Unmapped) => {
                    return Err(reject(
                        "unmapped-label",
                        format!("{raw} is not in the label map"),
                    ));
                }
                Some(Mapped::Class(c)) => c,
            };
            Ok((item, class))
        });
        match decision {
            Ok((item, class)) => {
                let bytes = match &item.body {
                    Some(b) => b.clone(),
                    None => match &candidate.origin {
                        Origin::File(p) => std::fs::read(p)
                            .with_context(|| format!("cannot read {}", p.display()))?,
                        Origin::Url(_) | Origin::Icon { .. } => {
                            unreachable!("downloads and renderings keep their body")
                        }
                    },
                };
                let reuse = previous_by_source
                    .get(candidate.source.as_str())
                    .filter(|r| r.accepted && r.sha256 == item.sha256 && r.label == class)
                    .map(|r| r.file.clone())
                    .filter(|f| !taken.contains(f));
                let file = reuse.unwrap_or_else(|| {
                    destination(&class, candidate, &item.sha256, &bytes, &taken)
                });
                let dest = options.into.join(&file);
                let unchanged = std::fs::read(&dest).is_ok_and(|b| content_hash(&b) == item.sha256);
                if !unchanged {
                    std::fs::create_dir_all(dest.parent().expect("class folder"))?;
                    data::write_atomic(&dest, &bytes)?;
                }
                // Accepted before under another name (its label now maps elsewhere): the old
                // copy goes, or the collection would hold the image twice.
                if let Some(before) = previous_by_source.get(candidate.source.as_str())
                    && before.accepted
                    && before.file != file
                {
                    to_remove.push((before.file.clone(), "filed elsewhere now"));
                }
                taken.insert(file.clone());
                accepted.push(Known {
                    source: candidate.source.clone(),
                    sha256: item.sha256.clone(),
                    fingerprint: item.fingerprint,
                });
                row.label = class;
                row.accepted = true;
                row.reason = "accepted".into();
                row.file = file;
            }
            Err((reason, detail)) => {
                row.reason = reason;
                row.detail = detail;
                if let Some(before) = previous_by_source.get(candidate.source.as_str())
                    && before.accepted
                {
                    to_remove.push((before.file.clone(), "rejected now"));
                }
            }
        }
        rows.push(row);
    }
    for (file, why) in to_remove.into_iter().filter(|(f, _)| !taken.contains(f)) {
        let path = options.into.join(&file);
        if path.is_file() {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
            if !options.quiet {
                eprintln!("removed {} ({why})", path.display());
            }
        }
    }
    let candidate_hashes: BTreeSet<&str> = rows
        .iter()
        .filter(|r| !r.sha256.is_empty())
        .map(|r| r.sha256.as_str())
        .collect();
    sweep(&options.into, &taken, &candidate_hashes, options.quiet)?;
    rows.sort_by(|a, b| a.source.cmp(&b.source));
    manifest::write(&manifest_path, &rows)?;
    Ok(rows)
}

/// Removes what an interrupted run left in the collection and no manifest lists: temporary
/// files of unfinished writes (`.tmp*`), and copies of this run's candidates that it did not
/// accept (a run killed after copying an image and before writing its manifest leaves the
/// copy; if the image is now protected, the trainer would read a leak). Files whose content is
/// no candidate's are someone else's: named, and left in place.
fn sweep(
    into: &Path,
    taken: &BTreeSet<String>,
    candidate_hashes: &BTreeSet<&str>,
    quiet: bool,
) -> Result<()> {
    for path in source::all_files(into)? {
        let relative = path.strip_prefix(into).unwrap_or(&path);
        let parts: Vec<String> = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        // The manifest and anything else at the top level are not the collection's images.
        if parts.len() < 2 || taken.contains(&parts.join("/")) {
            continue;
        }
        let why = if parts[parts.len() - 1].starts_with(".tmp") {
            Some("an unfinished write")
        } else {
            std::fs::read(&path)
                .ok()
                .filter(|b| candidate_hashes.contains(content_hash(b).as_str()))
                .map(|_| "a copy no manifest lists, left by an interrupted run")
        };
        match why {
            Some(why) => {
                std::fs::remove_file(&path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
                if !quiet {
                    eprintln!("removed {} ({why})", path.display());
                }
            }
            None => eprintln!(
                "warning: {} is not in the manifest and not a candidate's copy; left in place (the trainer reads it)",
                path.display()
            ),
        }
    }
    Ok(())
}

/// Counts per reason (`accepted` included), for the summary.
pub fn summary(rows: &[Row]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in rows {
        *counts.entry(r.reason.clone()).or_default() += 1;
    }
    counts
}
