//! Terminal tables for metrics and rankings.

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

use crate::metrics::{Evaluation, Metrics};

fn new_table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(header.to_vec());
    t
}

/// The figures of a metrics row, as every table prints them (top-k, mAP@10, MAP@R, score).
pub fn metric_figures(m: &Metrics) -> Vec<String> {
    vec![
        format!("{:.3}", m.top1),
        format!("{:.3}", m.top3),
        format!("{:.3}", m.top5),
        format!("{:.3}", m.top10),
        format!("{:.3}", m.map10),
        format!("{:.3}", m.map_r),
        format!("{:.1}", m.score),
    ]
}

fn metric_cells(m: &Metrics) -> Vec<String> {
    let mut cells = vec![m.queries.to_string()];
    cells.extend(metric_figures(m));
    cells
}

const METRIC_HEADER: [&str; 8] = [
    "queries", "top-1", "top-3", "top-5", "top-10", "mAP@10", "MAP@R", "score",
];

/// One row a group (class or domain), then ALL.
fn grouped_table(
    key: &str,
    groups: &std::collections::BTreeMap<String, Metrics>,
    all: &Metrics,
) -> String {
    let mut header = vec![key];
    header.extend(METRIC_HEADER);
    let mut t = new_table(&header);
    for (name, m) in groups {
        let mut row = vec![name.clone()];
        row.extend(metric_cells(m));
        t.add_row(row);
    }
    let mut row = vec!["ALL".to_string()];
    row.extend(metric_cells(all));
    t.add_row(row);
    t.to_string()
}

/// The overall figures, then one row a class.
pub fn evaluation_table(e: &Evaluation) -> String {
    grouped_table("class", &e.per_class, &e.overall)
}

/// One row a query domain (sketch, cartoon, painting…), then all; `None` when the query
/// names carry no domain.
pub fn domain_table(e: &Evaluation) -> Option<String> {
    (!e.per_domain.is_empty()).then(|| grouped_table("domain", &e.per_domain, &e.overall))
}

/// A ranked result list: rank, gallery file, distance.
pub fn ranking_table(query: &str, rows: &[(String, f32)]) -> String {
    let mut t = new_table(&["rank", "gallery file", "distance"]);
    for (i, (name, d)) in rows.iter().enumerate() {
        t.add_row(vec![(i + 1).to_string(), name.clone(), format!("{d:.4}")]);
    }
    format!("query: {query}\n{t}")
}
