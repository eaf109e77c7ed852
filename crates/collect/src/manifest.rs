//! `manifest.csv`: one row per candidate, accepted or rejected, with the reason. It is what a
//! later run reads to stay idempotent and what a person reads to audit the data.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub const FILE_NAME: &str = "manifest.csv";
const HEADER: [&str; 12] = [
    "source",
    "label",
    "status",
    "reason",
    "detail",
    "sha256",
    "phash",
    "width",
    "height",
    "file",
    "licence",
    "attribution",
];

/// Whether a candidate was copied into the collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Accepted,
    Rejected,
}

/// A row as it stands in the file (the columns, in order).
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    source: String,
    label: String,
    status: Status,
    reason: String,
    detail: String,
    sha256: String,
    phash: String,
    width: u32,
    height: u32,
    file: String,
    // Manifests written before icon sets have no such columns.
    #[serde(default)]
    licence: String,
    #[serde(default)]
    attribution: String,
}

/// One manifest row.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Row {
    /// Path or URL the image came from.
    pub source: String,
    /// Training class (after the label map) or the raw label of a rejected file.
    pub label: String,
    /// True when the file was copied into the collection.
    pub accepted: bool,
    /// Short machine-friendly reason (`accepted`, `leak-exact`, `near-duplicate`, …).
    pub reason: String,
    /// Human-readable detail: the file it duplicates and the distance, the decode error…
    pub detail: String,
    pub sha256: String,
    pub phash: String,
    pub width: u32,
    pub height: u32,
    /// Path of the accepted copy, relative to the collection folder.
    pub file: String,
    /// The licence the image comes under, where its source states one (icon sets).
    pub licence: String,
    /// Whom the image is credited to and where it came from (icon sets).
    pub attribution: String,
}

/// Reads a manifest; a missing file is an empty one.
pub fn read(path: &Path) -> Result<Vec<Row>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    reader
        .deserialize::<Record>()
        .map(|r| {
            let r = r.with_context(|| format!("{} is damaged", path.display()))?;
            Ok(Row {
                source: r.source,
                label: r.label,
                accepted: r.status == Status::Accepted,
                reason: r.reason,
                detail: r.detail,
                sha256: r.sha256,
                phash: r.phash,
                width: r.width,
                height: r.height,
                file: r.file,
                licence: r.licence,
                attribution: r.attribution,
            })
        })
        .collect()
}

/// Writes the manifest atomically.
pub fn write(path: &Path, rows: &[Row]) -> Result<()> {
    // The header is written even for an empty collection, so the file always says its columns.
    let mut writer = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new());
    writer.write_record(HEADER)?;
    for r in rows {
        writer.serialize(Record {
            source: r.source.clone(),
            label: r.label.clone(),
            status: if r.accepted {
                Status::Accepted
            } else {
                Status::Rejected
            },
            reason: r.reason.clone(),
            detail: r.detail.clone(),
            sha256: r.sha256.clone(),
            phash: r.phash.clone(),
            width: r.width,
            height: r.height,
            file: r.file.clone(),
            licence: r.licence.clone(),
            attribution: r.attribution.clone(),
        })?;
    }
    let bytes = writer.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
    data::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        assert!(read(&path).unwrap().is_empty());
        let mut rows = vec![Row {
            source: "a/dog (1).png".into(),
            label: "dog".into(),
            accepted: false,
            reason: "near-duplicate".into(),
            detail: "of \"b, c.png\" (distance 3)".into(),
            sha256: "00".into(),
            phash: "AAAA".into(),
            width: 10,
            height: 20,
            file: String::new(),
            licence: "MIT".into(),
            attribution: "Set by Someone, icon \"dog\"".into(),
        }];
        // A newline in a source name (a file name may hold one) stays one field.
        rows.push(Row {
            source: "odd\nname.png".into(),
            accepted: true,
            reason: "accepted".into(),
            ..rows[0].clone()
        });
        write(&path, &rows).unwrap();
        assert_eq!(read(&path).unwrap(), rows);
        // An empty collection still has its header; a row it cannot read is an error.
        write(&path, &[]).unwrap();
        assert!(read(&path).unwrap().is_empty());
        std::fs::write(&path, "source,label\nx,y\n").unwrap();
        assert!(read(&path).is_err());
    }
}
