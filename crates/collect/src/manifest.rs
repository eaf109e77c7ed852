//! `manifest.csv`: one row per candidate, accepted or rejected, with the reason. It is what a
//! later run reads to stay idempotent and what a person reads to audit the data.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::source::{csv_fields, csv_quote};

pub const FILE_NAME: &str = "manifest.csv";
const HEADER: [&str; 10] = [
    "source", "label", "status", "reason", "detail", "sha256", "phash", "width", "height", "file",
];

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
}

/// Reads a manifest; a missing file is an empty one.
pub fn read(path: &Path) -> Result<Vec<Row>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let f = csv_fields(line);
        if f.len() != HEADER.len() {
            bail!(
                "{}:{}: expected {} fields",
                path.display(),
                n + 1,
                HEADER.len()
            );
        }
        rows.push(Row {
            source: f[0].clone(),
            label: f[1].clone(),
            accepted: f[2] == "accepted",
            reason: f[3].clone(),
            detail: f[4].clone(),
            sha256: f[5].clone(),
            phash: f[6].clone(),
            width: f[7].parse().unwrap_or(0),
            height: f[8].parse().unwrap_or(0),
            file: f[9].clone(),
        });
    }
    Ok(rows)
}

/// Writes the manifest atomically.
pub fn write(path: &Path, rows: &[Row]) -> Result<()> {
    let mut out = HEADER.join(",") + "\n";
    for r in rows {
        let fields = [
            r.source.clone(),
            r.label.clone(),
            if r.accepted { "accepted" } else { "rejected" }.to_string(),
            r.reason.clone(),
            r.detail.clone(),
            r.sha256.clone(),
            r.phash.clone(),
            r.width.to_string(),
            r.height.to_string(),
            r.file.clone(),
        ];
        let quoted: Vec<String> = fields.iter().map(|f| csv_quote(f)).collect();
        out.push_str(&quoted.join(","));
        out.push('\n');
    }
    data::write_atomic(path, out.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        assert!(read(&path).unwrap().is_empty());
        let rows = vec![Row {
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
        }];
        write(&path, &rows).unwrap();
        assert_eq!(read(&path).unwrap(), rows);
    }
}
