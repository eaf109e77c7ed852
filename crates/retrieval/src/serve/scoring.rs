//! The competition's scoring server: answers a submission with top-1/5/10 and the score, or
//! with the list of what is wrong with it, and keeps a persisted leaderboard.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::submission::Submission;

/// The right answers of a test set: each query's and each gallery file's label (`distractor`
/// in the gallery matches nothing). Written by `retrieval answers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answers {
    pub queries: BTreeMap<String, String>,
    pub gallery: BTreeMap<String, String>,
}

impl Answers {
    pub fn read(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let answers: Self = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: not an answers file ({{\"queries\": {{name: label}}, \"gallery\": {{name: label}}}})",
                path.display()
            )
        })?;
        anyhow::ensure!(
            !answers.queries.is_empty() && !answers.gallery.is_empty(),
            "{}: no queries or no gallery files",
            path.display()
        );
        Ok(answers)
    }
}

/// One scored submission.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Attempt {
    /// Seconds since the Unix epoch.
    pub time: u64,
    pub top1: f64,
    pub top5: f64,
    pub top10: f64,
    pub score: f64,
}

/// A group's best attempt and all of them, oldest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Record {
    pub best: Option<Attempt>,
    pub history: Vec<Attempt>,
}

/// Scores submissions against answers and records them.
pub struct Scorer {
    answers: Answers,
    queries: Vec<String>,
    gallery: Vec<String>,
    query_labels: HashMap<String, String>,
    gallery_labels: HashMap<String, String>,
    path: PathBuf,
    board: Mutex<BTreeMap<String, Record>>,
}

/// What a submission got: its scores, or what is wrong with it.
pub enum Verdict {
    Scored { attempt: Attempt, best: Attempt },
    Refused(Vec<String>),
}

impl Scorer {
    /// A scorer for `answers`, its leaderboard persisted at `path` (read if it exists).
    pub fn open(answers: Answers, path: PathBuf) -> Result<Self> {
        let board = if path.exists() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{}: not a leaderboard", path.display()))?
        } else {
            BTreeMap::new()
        };
        let real = |m: &BTreeMap<String, String>| -> HashMap<String, String> {
            m.iter()
                .filter(|(_, l)| l.as_str() != data::folder::DISTRACTOR)
                .map(|(n, l)| (n.clone(), l.clone()))
                .collect()
        };
        Ok(Self {
            queries: answers.queries.keys().cloned().collect(),
            gallery: answers.gallery.keys().cloned().collect(),
            query_labels: real(&answers.queries),
            gallery_labels: real(&answers.gallery),
            answers,
            path,
            board: Mutex::new(board),
        })
    }

    pub fn queries(&self) -> usize {
        self.answers.queries.len()
    }

    /// Scores a submission and, when it is valid, records it (the leaderboard is written
    /// atomically before the answer goes out).
    pub fn submit(&self, submission: &Submission) -> Result<Verdict> {
        let problems = submission.problems(&self.queries, &self.gallery, 10);
        if !problems.is_empty() {
            return Ok(Verdict::Refused(problems));
        }
        let (top1, top5, top10, score) = submission.score(&self.query_labels, &self.gallery_labels);
        let attempt = Attempt {
            time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            top1,
            top5,
            top10,
            score,
        };
        let mut board = self.board.lock().expect("leaderboard lock");
        let record = board.entry(submission.groupname.clone()).or_default();
        record.history.push(attempt.clone());
        if record.best.as_ref().is_none_or(|b| attempt.score > b.score) {
            record.best = Some(attempt.clone());
        }
        let best = record.best.clone().expect("just set");
        data::write_atomic(
            &self.path,
            serde_json::to_string_pretty(&*board)?.as_bytes(),
        )?;
        Ok(Verdict::Scored { attempt, best })
    }

    /// Groups by best score, best first.
    pub fn standings(&self) -> Vec<(String, Record)> {
        let board = self.board.lock().expect("leaderboard lock");
        let mut rows: Vec<(String, Record)> =
            board.iter().map(|(g, r)| (g.clone(), r.clone())).collect();
        let best = |r: &Record| r.best.as_ref().map_or(f64::MIN, |b| b.score);
        rows.sort_by(|a, b| best(&b.1).total_cmp(&best(&a.1)).then(a.0.cmp(&b.0)));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers() -> Answers {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let mut gallery: Vec<(String, String)> = (0..12)
            .map(|i| {
                (
                    format!("g{i}"),
                    if i < 6 { "cat" } else { "dog" }.to_string(),
                )
            })
            .collect();
        gallery.push(("x".into(), "distractor".into()));
        Answers {
            queries: map(&[("q1", "cat"), ("q2", "dog")]),
            gallery: gallery.into_iter().collect(),
        }
    }

    fn list(first: &str) -> Vec<String> {
        let mut l = vec![first.to_string()];
        l.extend((1..=9).map(|i| format!("g{}", if first == "g0" { i + 2 } else { i - 1 })));
        l
    }

    #[test]
    fn scores_refuses_and_keeps_the_best() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("board.json");
        let scorer = Scorer::open(answers(), path.clone()).unwrap();
        // q1 (cat) right at 1; q2 (dog) first hit g6 at rank 7.
        let good = Submission {
            groupname: "a".into(),
            images: [("q1".into(), list("g0")), ("q2".into(), list("x"))].into(),
        };
        let Verdict::Scored { attempt, .. } = scorer.submit(&good).unwrap() else {
            panic!("refused")
        };
        assert_eq!((attempt.top1, attempt.top5, attempt.top10), (0.5, 0.5, 1.0));
        let bad = Submission {
            groupname: "a".into(),
            images: [("q1".into(), vec!["g0".into(), "g0".into()])].into(),
        };
        let Verdict::Refused(problems) = scorer.submit(&bad).unwrap() else {
            panic!("scored")
        };
        assert!(problems.len() >= 3, "{problems:?}");
        // Persisted: a new scorer reads the leaderboard back.
        let again = Scorer::open(answers(), path).unwrap();
        let standings = again.standings();
        assert_eq!(standings.len(), 1);
        assert_eq!(standings[0].1.history.len(), 1);
        assert_eq!(standings[0].1.best.as_ref().unwrap().score, attempt.score);
    }
}
