//! `evaluate --report DIR`: a self-contained HTML report (thumbnails referenced relatively, no
//! network) and a PNG contact sheet.
//!
//! The page holds the metrics, the per-class table, a top-1 confusion table, every query with
//! its top results (hits framed green, misses red, distances shown, worst queries first) and a
//! 2-D PCA map of query and gallery embeddings coloured by class.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use image::{Rgb, RgbImage};
use rayon::prelude::*;

use crate::embed::EmbeddingSet;
use crate::metrics::{Evaluation, QueryOutcome};
use crate::rank::Hit;

const THUMB: u32 = 96;
const PALETTE: [&str; 12] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#637939",
];

/// Escapes text for HTML, in element content and in quoted attributes alike.
pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A `THUMB`×`THUMB` thumbnail (aspect kept, letterboxed in grey); grey if the file is gone.
fn thumbnail(path: &Path) -> RgbImage {
    let mut canvas = RgbImage::from_pixel(THUMB, THUMB, Rgb([230, 230, 230]));
    if let Ok(img) = data::decode_image(path) {
        let (w, h) = img.dimensions();
        let scale = THUMB as f64 / w.max(h) as f64;
        let (tw, th) = (
            ((w as f64 * scale) as u32).max(1),
            ((h as f64 * scale) as u32).max(1),
        );
        let small = data::preprocess::resize_rgb(&img, tw, th, None);
        image::imageops::overlay(
            &mut canvas,
            &small,
            ((THUMB - tw) / 2) as i64,
            ((THUMB - th) / 2) as i64,
        );
    }
    canvas
}

/// Top two principal components of the rows, by power iteration with deflation.
pub fn pca_2d(values: &[f32], dim: usize) -> Vec<(f32, f32)> {
    let n = values.len() / dim.max(1);
    if n == 0 {
        return Vec::new();
    }
    let mut mean = vec![0f32; dim];
    for r in values.chunks_exact(dim) {
        mean.iter_mut().zip(r).for_each(|(m, x)| *m += x / n as f32);
    }
    let centred: Vec<f32> = values
        .chunks_exact(dim)
        .flat_map(|r| r.iter().zip(&mean).map(|(x, m)| x - m).collect::<Vec<_>>())
        .collect();
    let mut components: Vec<Vec<f32>> = Vec::new();
    for c in 0..2 {
        let mut v: Vec<f32> = (0..dim)
            .map(|i| ((i * 7 + c * 13) % 11) as f32 - 5.0)
            .collect();
        for _ in 0..100 {
            // w = Xᵀ X v, minus what earlier components explain.
            let proj: Vec<f32> = centred
                .chunks_exact(dim)
                .map(|r| r.iter().zip(&v).map(|(a, b)| a * b).sum())
                .collect();
            let mut w = vec![0f32; dim];
            for (r, p) in centred.chunks_exact(dim).zip(&proj) {
                w.iter_mut().zip(r).for_each(|(acc, x)| *acc += p * x);
            }
            for prev in &components {
                let d: f32 = w.iter().zip(prev).map(|(a, b)| a * b).sum();
                w.iter_mut().zip(prev).for_each(|(a, b)| *a -= d * b);
            }
            let norm = w.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            v = w.into_iter().map(|x| x / norm).collect();
        }
        components.push(v);
    }
    centred
        .chunks_exact(dim)
        .map(|r| {
            let p = |c: &Vec<f32>| r.iter().zip(c).map(|(a, b)| a * b).sum::<f32>();
            (p(&components[0]), p(&components[1]))
        })
        .collect()
}

fn label_of(e: &data::ImageEntry) -> String {
    e.label.clone().unwrap_or_else(|| {
        if e.distractor {
            "distractor".into()
        } else {
            "?".into()
        }
    })
}

/// Order of queries in the report: no hit first, then by rank of the first hit, then AP.
fn worst_first(per_query: &[Option<QueryOutcome>]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..per_query.len()).collect();
    order.sort_by(|&a, &b| {
        let key = |i: usize| match &per_query[i] {
            Some(o) => (o.first_hit.map_or(usize::MAX, |r| r), -o.ap10),
            None => (0, 0.0),
        };
        let (ra, aa) = key(a);
        let (rb, ab) = key(b);
        rb.cmp(&ra).then(aa.total_cmp(&ab)).then(a.cmp(&b))
    });
    order
}

/// Writes `dir/index.html`, `dir/thumbs/*.jpg` and `dir/contact_sheet.png`.
/// A table of metrics per group (class or domain).
fn group_table(
    html: &mut String,
    heading: &str,
    key: &str,
    groups: &BTreeMap<String, crate::metrics::Metrics>,
) -> std::fmt::Result {
    write!(
        html,
        "<h2>{heading}</h2><table><tr><th>{key}</th><th>queries</th><th>top-1</th><th>top-5</th><th>top-10</th><th>mAP@10</th><th>score</th></tr>"
    )?;
    for (name, c) in groups {
        write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.1}</td></tr>",
            escape(name),
            c.queries,
            c.top1,
            c.top5,
            c.top10,
            c.map10,
            c.score
        )?;
    }
    html.push_str("</table>");
    Ok(())
}

pub fn write_report(
    dir: &Path,
    title: &str,
    q: &EmbeddingSet,
    g: &EmbeddingSet,
    evaluation: &Evaluation,
    rankings: &[Vec<Hit>],
    sheet_queries: usize,
) -> Result<()> {
    let thumbs = dir.join("thumbs");
    std::fs::create_dir_all(&thumbs)
        .with_context(|| format!("cannot create {}", thumbs.display()))?;
    let jobs: Vec<(String, &Path)> = q
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| (format!("q{i}.jpg"), e.path.as_path()))
        .chain(
            g.entries
                .iter()
                .enumerate()
                .map(|(i, e)| (format!("g{i}.jpg"), e.path.as_path())),
        )
        .collect();
    let images: Vec<(String, RgbImage)> = jobs
        .par_iter()
        .map(|(name, path)| (name.clone(), thumbnail(path)))
        .collect();
    for (name, img) in &images {
        img.save(thumbs.join(name))
            .with_context(|| format!("cannot write thumbnail {name}"))?;
    }
    let thumb_of: BTreeMap<&str, &RgbImage> = images.iter().map(|(n, i)| (n.as_str(), i)).collect();

    let mut html = String::new();
    let m = &evaluation.overall;
    write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>\
        body{{font-family:sans-serif;margin:20px}} table{{border-collapse:collapse}} \
        td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}} \
        .q{{display:flex;gap:4px;align-items:flex-start;margin:6px 0}} \
        figure{{margin:0;font-size:10px;width:{s}px;text-align:center;word-break:break-all}} \
        img{{width:{s}px;height:{s}px;border:4px solid #999}} img.hit{{border-color:#2a2}} img.miss{{border-color:#d22}} \
        img.query{{border-color:#226}}</style></head><body><h1>{t}</h1>",
        t = escape(title),
        s = THUMB
    )?;
    write!(
        html,
        "<h2>Metrics</h2><table><tr><th>queries</th><th>top-1</th><th>top-3</th><th>top-5</th><th>top-10</th><th>mAP@10</th><th>MAP@R</th><th>score</th></tr>\
        <tr><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.1}</td></tr></table>",
        m.queries, m.top1, m.top3, m.top5, m.top10, m.map10, m.map_r, m.score
    )?;
    group_table(&mut html, "Per class", "class", &evaluation.per_class)?;
    if !evaluation.per_domain.is_empty() {
        group_table(&mut html, "Per domain", "domain", &evaluation.per_domain)?;
    }

    // Confusion of the top-1 result: query class (rows) against the top-1 result's label.
    let mut columns: Vec<String> = evaluation.per_class.keys().cloned().collect();
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for o in evaluation.per_query.iter().flatten() {
        if !columns.contains(&o.top1_label) {
            columns.push(o.top1_label.clone());
        }
        *counts
            .entry((o.label.clone(), o.top1_label.clone()))
            .or_default() += 1;
    }
    html.push_str("<h2>Top-1 confusion</h2><table><tr><th>query \\ top-1</th>");
    for c in &columns {
        write!(html, "<th>{}</th>", escape(c))?;
    }
    html.push_str("</tr>");
    for row in evaluation.per_class.keys() {
        write!(html, "<tr><th>{}</th>", escape(row))?;
        for c in &columns {
            let n = counts.get(&(row.clone(), c.clone())).copied().unwrap_or(0);
            let style = if n > 0 && row != c {
                " style=\"background:#fdd\""
            } else {
                ""
            };
            write!(
                html,
                "<td{style}>{}</td>",
                if n > 0 { n.to_string() } else { String::new() }
            )?;
        }
        html.push_str("</tr>");
    }
    html.push_str("</table>");

    // PCA map.
    let mut all = q.values.clone();
    all.extend_from_slice(&g.values);
    let points = pca_2d(&all, q.dim);
    let (minx, maxx, miny, maxy) = points
        .iter()
        .fold((f32::MAX, f32::MIN, f32::MAX, f32::MIN), |a, p| {
            (a.0.min(p.0), a.1.max(p.0), a.2.min(p.1), a.3.max(p.1))
        });
    let labels: Vec<String> = q.entries.iter().chain(&g.entries).map(label_of).collect();
    let mut classes: Vec<&String> = labels.iter().collect();
    classes.sort();
    classes.dedup();
    let colour = |l: &String| {
        if l == "distractor" || l == "?" {
            "#bbb"
        } else {
            PALETTE[classes.iter().position(|c| *c == l).unwrap_or(0) % PALETTE.len()]
        }
    };
    write!(
        html,
        "<h2>Embedding map (PCA)</h2><p>Gallery: dots; queries: squares with a black edge.</p><svg width=\"640\" height=\"480\" style=\"border:1px solid #ccc\">"
    )?;
    for (i, (x, y)) in points.iter().enumerate() {
        let sx = 20.0 + 600.0 * (x - minx) / (maxx - minx).max(1e-6);
        let sy = 20.0 + 440.0 * (y - miny) / (maxy - miny).max(1e-6);
        let c = colour(&labels[i]);
        let name = escape(if i < q.len() {
            &q.entries[i].name
        } else {
            &g.entries[i - q.len()].name
        });
        if i < q.len() {
            write!(
                html,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"8\" height=\"8\" fill=\"{c}\" stroke=\"#000\"><title>query {name}</title></rect>",
                sx - 4.0,
                sy - 4.0
            )?;
        } else {
            write!(
                html,
                "<circle cx=\"{sx:.1}\" cy=\"{sy:.1}\" r=\"3.5\" fill=\"{c}\"><title>{name}</title></circle>"
            )?;
        }
    }
    html.push_str("</svg><p>");
    for c in &classes {
        write!(
            html,
            "<span style=\"color:{}\">&#9632;</span> {} &nbsp; ",
            colour(c),
            escape(c)
        )?;
    }
    html.push_str("</p>");

    // Every query, worst first.
    let order = worst_first(&evaluation.per_query);
    html.push_str("<h2>Queries, worst first</h2>");
    for &qi in &order {
        let e = &q.entries[qi];
        let outcome = evaluation.per_query[qi].as_ref();
        let summary = match outcome {
            Some(o) => format!(
                "first hit at {}",
                o.first_hit.map_or("none".into(), |r| r.to_string())
            ),
            None => "unlabelled".into(),
        };
        write!(
            html,
            "<div class=\"q\"><figure><img class=\"query\" src=\"thumbs/q{qi}.jpg\" alt=\"query\"><br><b>{}</b><br>{}<br>{}</figure>",
            escape(&label_of(e)),
            escape(&e.name),
            summary
        )?;
        for h in rankings[qi].iter().take(10) {
            let ge = &g.entries[h.index];
            let class = match (&e.label, &ge.label) {
                (Some(a), Some(b)) if a == b => "hit",
                (Some(_), _) => "miss",
                _ => "",
            };
            write!(
                html,
                "<figure><img class=\"{class}\" src=\"thumbs/g{}.jpg\" alt=\"{}\"><br>{}<br>{:.3}</figure>",
                h.index,
                escape(&ge.name),
                escape(&ge.name),
                h.distance
            )?;
        }
        html.push_str("</div>");
    }
    html.push_str("</body></html>\n");
    data::write_atomic(&dir.join("index.html"), html.as_bytes())?;

    // Contact sheet: the worst `sheet_queries` queries and their top 5.
    let rows: Vec<usize> = order.into_iter().take(sheet_queries).collect();
    let cell = THUMB + 8;
    let mut sheet = RgbImage::from_pixel(
        cell * 6 + 12,
        (cell * rows.len() as u32).max(1),
        Rgb([255, 255, 255]),
    );
    for (r, &qi) in rows.iter().enumerate() {
        let y = r as u32 * cell;
        let paste = |sheet: &mut RgbImage, x: u32, name: &str, border: Rgb<u8>| {
            for yy in 0..cell - 2 {
                for xx in 0..cell - 2 {
                    sheet.put_pixel(x + xx, y + yy, border);
                }
            }
            if let Some(t) = thumb_of.get(name) {
                image::imageops::overlay(sheet, *t, (x + 3) as i64, (y + 3) as i64);
            }
        };
        paste(&mut sheet, 0, &format!("q{qi}.jpg"), Rgb([30, 30, 110]));
        for (k, h) in rankings[qi].iter().take(5).enumerate() {
            let hit =
                q.entries[qi].label.is_some() && q.entries[qi].label == g.entries[h.index].label;
            let border = if hit {
                Rgb([40, 170, 40])
            } else {
                Rgb([210, 30, 30])
            };
            paste(
                &mut sheet,
                12 + cell * (k as u32 + 1),
                &format!("g{}.jpg", h.index),
                border,
            );
        }
    }
    sheet
        .save(dir.join("contact_sheet.png"))
        .context("cannot write the contact sheet")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pca_finds_the_main_axis() {
        // Points spread along x (±3), little along y (±0.1), in 3-D.
        let v: Vec<f32> = [
            [3.0, 0.1, 0.0],
            [-3.0, -0.1, 0.0],
            [1.0, -0.1, 0.0],
            [-1.0, 0.1, 0.0],
        ]
        .iter()
        .flatten()
        .copied()
        .collect();
        let p = pca_2d(&v, 3);
        assert!((p[0].0.abs() - 3.0).abs() < 0.01, "{p:?}");
        assert!(p[0].1.abs() <= 0.11);
    }
}
