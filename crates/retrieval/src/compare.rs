//! Several methods on the same query/gallery pair, one table: what `retrieval compare` prints
//! and writes as Markdown and CSV (the comparison table in docs/guide.md is this output).
//!
//! A method is a model (`--model` syntax: backbone, descriptor or checkpoint directory) with
//! `+`-joined test-time options: `mobilenet_v2+flip`, `checkpoints/arcface+qe2+dba1`,
//! `efficientnet_lite1:checkpoints/arcface+rerank` (an ensemble, re-ranked).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::prelude::Device;

use crate::embed::EmbedOptions;
use crate::embedder::Embedder;
use crate::evaluation::evaluate_sets;
use crate::expansion::Expansion;
use crate::metrics::Metrics;
use crate::rerank::KReciprocal;
use crate::table::metric_figures;

/// One method to compare.
#[derive(Debug, Clone, PartialEq)]
pub struct Method {
    pub label: String,
    pub model: String,
    pub flip: bool,
    pub expansion: Expansion,
    pub rerank: Option<KReciprocal>,
}

impl Method {
    pub fn parse(s: &str) -> Result<Self> {
        let mut parts = s.split('+');
        let model = parts
            .next()
            .filter(|m| !m.is_empty())
            .context("empty method")?;
        let mut spec = Method {
            label: s.to_string(),
            model: model.to_string(),
            flip: false,
            expansion: Expansion {
                alpha: 3.0,
                ..Default::default()
            },
            rerank: None,
        };
        for opt in parts {
            let number = |prefix: &str| opt.strip_prefix(prefix).and_then(|n| n.parse().ok());
            if opt == "flip" {
                spec.flip = true;
            } else if let Some(n) = number("qe") {
                spec.expansion.query_neighbours = n;
            } else if let Some(n) = number("dba") {
                spec.expansion.database_neighbours = n;
            } else if opt == "rerank" {
                spec.rerank = Some(KReciprocal::default());
            } else {
                bail!("method {s:?}: unknown option {opt:?} (flip, qeN, dbaN, rerank)");
            }
        }
        Ok(spec)
    }
}

/// A short name for a query/gallery pair: the query folder's parent when the folder is called
/// `query` (`animals10/val/query` → `val`, `domains/query` → `domains`), else its own name.
pub fn pair_name(query: &Path) -> String {
    let own = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| p.display().to_string())
    };
    match (query.file_name(), query.parent()) {
        (Some(n), Some(parent)) if n == "query" && parent.file_name().is_some() => own(parent),
        _ => own(query),
    }
}

/// The methods compared when none are named: two traditional descriptors, zero-shot
/// backbones, a flip-averaged variant, and every trained run under `checkpoints/` that the
/// shipped configs (`configs/`) produce.
pub fn default_methods(checkpoints: &Path) -> Vec<String> {
    let mut methods: Vec<String> = [
        "hsv_histogram",
        "tiny_image",
        "mobilenet_v2",
        "mobilenet_v2+flip",
        "efficientnet_lite0",
        "efficientnet_lite1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for run in ["arcface", "domains-lite1", "mobilenet-head", "triplet"] {
        let relative = Path::new("checkpoints").join(run);
        let dir = checkpoints.join(run);
        if relative.join(model::network::META_FILE).is_file() {
            methods.push(relative.display().to_string());
        } else if dir.join(model::network::META_FILE).is_file() {
            methods.push(dir.display().to_string());
        }
    }
    methods
}

/// One row of the comparison.
#[derive(Debug, Clone)]
pub struct CompareRow {
    /// The query/gallery pair's name ([`pair_name`]).
    pub set: String,
    pub method: String,
    pub metrics: Metrics,
    /// Query and gallery images embedded a second, decoding included, cache off.
    pub images_per_s: f64,
    /// Files of the pair that could not be read (named on stderr): scored without them.
    pub skipped: usize,
}

/// Runs every method on every query/gallery pair (each model loaded once).
pub fn compare(
    methods: &[Method],
    pairs: &[(PathBuf, PathBuf)],
    device: &Device,
    quiet: bool,
) -> Result<Vec<CompareRow>> {
    let mut rows = Vec::new();
    for (i, m) in methods.iter().enumerate() {
        if !quiet {
            eprintln!("method {}", m.label);
        }
        let embedder =
            Embedder::load(&m.model, device).with_context(|| format!("method {}", m.label))?;
        let options = EmbedOptions {
            flip: m.flip,
            quiet,
            cache: false,
            ..Default::default()
        };
        for (query, gallery) in pairs {
            let start = Instant::now();
            let (q, query_skipped) = embedder.embed_folder(query, None, &options)?;
            let (g, gallery_skipped) = embedder.embed_folder(gallery, None, &options)?;
            let seconds = start.elapsed().as_secs_f64();
            // Every method reads the same files: name the unreadable ones once.
            if i == 0 {
                eprint!("{}", data::load::skipped_summary(&query_skipped, q.len()));
                eprint!("{}", data::load::skipped_summary(&gallery_skipped, g.len()));
            }
            let (q, g) = m.expansion.apply(&q, &g, device);
            let e = evaluate_sets(&q, &g, m.rerank.as_ref(), device).with_context(|| {
                format!(
                    "method {} on {} (gallery {})",
                    m.label,
                    query.display(),
                    gallery.display()
                )
            })?;
            if i == 0 {
                for w in e.warnings() {
                    eprintln!("warning: {}: {w}", query.display());
                }
            }
            rows.push(CompareRow {
                set: pair_name(query),
                method: m.label.clone(),
                metrics: e.overall,
                images_per_s: (q.len() + g.len()) as f64 / seconds.max(1e-9),
                skipped: query_skipped.len() + gallery_skipped.len(),
            });
        }
    }
    Ok(rows)
}

const HEADER: [&str; 9] = [
    "method", "top-1", "top-3", "top-5", "top-10", "mAP@10", "MAP@R", "score", "images/s",
];

fn cells(r: &CompareRow) -> Vec<String> {
    let mut cells = vec![r.method.clone()];
    cells.extend(metric_figures(&r.metrics));
    cells.push(format!("{:.1}", r.images_per_s));
    cells
}

/// One Markdown table a query/gallery pair, each under its name when there are several.
pub fn markdown(rows: &[CompareRow]) -> String {
    let mut sets: Vec<&str> = rows.iter().map(|r| r.set.as_str()).collect();
    sets.dedup();
    let mut seen = Vec::new();
    sets.retain(|s| {
        let new = !seen.contains(s);
        seen.push(*s);
        new
    });
    let mut out = String::new();
    for set in &sets {
        if sets.len() > 1 {
            out.push_str(&format!("**{set}**\n\n"));
        }
        out.push_str(&format!(
            "| {} |\n|{}\n",
            HEADER.join(" | "),
            "---|".repeat(HEADER.len())
        ));
        for r in rows.iter().filter(|r| r.set == *set) {
            let mut c = cells(r);
            c[0] = format!("`{}`", c[0]);
            out.push_str(&format!("| {} |\n", c.join(" | ")));
        }
        if sets.len() > 1 {
            out.push('\n');
        }
    }
    out
}

/// `compare.csv`: a `set` column, then the Markdown table's columns.
pub fn csv(rows: &[CompareRow]) -> String {
    const IN_MEMORY: &str = "writing CSV to memory";
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer
        .write_record(std::iter::once("set").chain(HEADER))
        .expect(IN_MEMORY);
    for r in rows {
        writer
            .write_record(std::iter::once(r.set.clone()).chain(cells(r)))
            .expect(IN_MEMORY);
    }
    String::from_utf8(writer.into_inner().expect(IN_MEMORY)).expect("UTF-8 fields")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_syntax() {
        let m = Method::parse("checkpoints/arcface+flip+qe2+dba1").unwrap();
        assert_eq!(m.model, "checkpoints/arcface");
        assert!(m.flip);
        assert_eq!(m.expansion.query_neighbours, 2);
        assert_eq!(m.expansion.database_neighbours, 1);
        assert!(Method::parse("mobilenet_v2+bogus").is_err());
        assert!(Method::parse("").is_err());
    }

    #[test]
    fn tables() {
        let row = CompareRow {
            set: "val".into(),
            method: "a,b".into(),
            metrics: Metrics {
                queries: 2,
                top1: 0.5,
                score: 700.0,
                ..Default::default()
            },
            images_per_s: 12.0,
            skipped: 0,
        };
        let md = markdown(std::slice::from_ref(&row));
        assert!(md.contains("| `a,b` | 0.500 |"), "{md}");
        assert!(
            csv(&[row])
                .lines()
                .nth(1)
                .unwrap()
                .starts_with("val,\"a,b\",0.500")
        );
    }
}
