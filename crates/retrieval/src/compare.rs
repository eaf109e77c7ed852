//! Several methods on the same query/gallery pair, one table: what `retrieval compare` prints
//! and writes as Markdown and CSV (the README's comparison table is this output).
//!
//! A method is a model (`--model` syntax: backbone, descriptor or checkpoint directory) with
//! `+`-joined test-time options: `mobilenet_v2+flip`, `checkpoints/arcface+qe2+dba1`.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::prelude::Device;

use crate::embed::{EmbedOptions, Engine};
use crate::evaluation::evaluate_sets;
use crate::expansion::Expansion;
use crate::metrics::Metrics;
use crate::table::metric_figures;

/// One method to compare.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodSpec {
    pub label: String,
    pub model: String,
    pub flip: bool,
    pub expansion: Expansion,
}

impl MethodSpec {
    pub fn parse(s: &str) -> Result<Self> {
        let mut parts = s.split('+');
        let model = parts
            .next()
            .filter(|m| !m.is_empty())
            .context("empty method")?;
        let mut spec = MethodSpec {
            label: s.to_string(),
            model: model.to_string(),
            flip: false,
            expansion: Expansion {
                alpha: 3.0,
                ..Default::default()
            },
        };
        for opt in parts {
            let number = |prefix: &str| opt.strip_prefix(prefix).and_then(|n| n.parse().ok());
            if opt == "flip" {
                spec.flip = true;
            } else if let Some(n) = number("qe") {
                spec.expansion.query_neighbours = n;
            } else if let Some(n) = number("dba") {
                spec.expansion.database_neighbours = n;
            } else {
                bail!("method {s:?}: unknown option {opt:?} (flip, qeN, dbaN)");
            }
        }
        Ok(spec)
    }
}

/// The methods compared when none are named: two traditional descriptors, zero-shot
/// backbones, a flip-averaged variant, and every trained run under `checkpoints/` that the
/// README's configs produce.
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
    for run in ["arcface", "triplet"] {
        let relative = Path::new("checkpoints").join(run);
        let dir = checkpoints.join(run);
        if relative.join(model::embedder::META_FILE).is_file() {
            methods.push(relative.display().to_string());
        } else if dir.join(model::embedder::META_FILE).is_file() {
            methods.push(dir.display().to_string());
        }
    }
    methods
}

/// One row of the comparison.
#[derive(Debug, Clone)]
pub struct CompareRow {
    pub method: String,
    pub metrics: Metrics,
    /// Query and gallery images embedded a second, decoding included, cache off.
    pub images_per_s: f64,
}

/// Runs every method on the pair.
pub fn compare(
    methods: &[MethodSpec],
    query: &Path,
    gallery: &Path,
    device: &Device,
    quiet: bool,
) -> Result<Vec<CompareRow>> {
    let mut rows = Vec::new();
    for m in methods {
        if !quiet {
            eprintln!("method {}", m.label);
        }
        let engine =
            Engine::load(&m.model, device).with_context(|| format!("method {}", m.label))?;
        let options = EmbedOptions {
            flip: m.flip,
            quiet,
            cache: false,
            ..Default::default()
        };
        let start = Instant::now();
        let (q, _) = engine.embed_folder(query, None, &options)?;
        let (g, _) = engine.embed_folder(gallery, None, &options)?;
        let seconds = start.elapsed().as_secs_f64();
        let (q, g) = m.expansion.apply(&q, &g, device);
        let e = evaluate_sets(&q, &g, device)?;
        rows.push(CompareRow {
            method: m.label.clone(),
            metrics: e.overall,
            images_per_s: (q.len() + g.len()) as f64 / seconds.max(1e-9),
        });
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

pub fn markdown(rows: &[CompareRow]) -> String {
    let mut out = format!(
        "| {} |\n|{}\n",
        HEADER.join(" | "),
        "---|".repeat(HEADER.len())
    );
    for r in rows {
        let mut c = cells(r);
        c[0] = format!("`{}`", c[0]);
        out.push_str(&format!("| {} |\n", c.join(" | ")));
    }
    out
}

pub fn csv(rows: &[CompareRow]) -> String {
    let mut out = HEADER.join(",") + "\n";
    for r in rows {
        let mut c = cells(r);
        if c[0].contains(',') || c[0].contains('"') {
            c[0] = format!("\"{}\"", c[0].replace('"', "\"\""));
        }
        out.push_str(&(c.join(",") + "\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_syntax() {
        let m = MethodSpec::parse("checkpoints/arcface+flip+qe2+dba1").unwrap();
        assert_eq!(m.model, "checkpoints/arcface");
        assert!(m.flip);
        assert_eq!(m.expansion.query_neighbours, 2);
        assert_eq!(m.expansion.database_neighbours, 1);
        assert!(MethodSpec::parse("mobilenet_v2+bogus").is_err());
        assert!(MethodSpec::parse("").is_err());
    }

    #[test]
    fn tables() {
        let row = CompareRow {
            method: "a,b".into(),
            metrics: Metrics {
                queries: 2,
                top1: 0.5,
                score: 700.0,
                ..Default::default()
            },
            images_per_s: 12.0,
        };
        let md = markdown(std::slice::from_ref(&row));
        assert!(md.contains("| `a,b` | 0.500 |"), "{md}");
        assert!(
            csv(&[row])
                .lines()
                .nth(1)
                .unwrap()
                .starts_with("\"a,b\",0.500")
        );
    }
}
