//! The competition's submission file:
//! `{"groupname": "...", "images": {"<query file>": ["<gallery file>", ... k, best first]}}`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::metrics::competition_score;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    pub groupname: String,
    pub images: BTreeMap<String, Vec<String>>,
}

impl Submission {
    /// Checks that every query is a key and each list holds `k` distinct gallery names.
    pub fn validate(&self, queries: &[String], gallery: &[String], k: usize) -> Result<()> {
        match self.problems(queries, gallery, k).first() {
            Some(problem) => bail!("{problem}"),
            None => Ok(()),
        }
    }

    /// Everything wrong with the submission, as the scoring server lists it: an empty group
    /// name, missing or unknown queries, lists that are not `k` distinct gallery names.
    pub fn problems(&self, queries: &[String], gallery: &[String], k: usize) -> Vec<String> {
        let mut problems = Vec::new();
        if self.groupname.trim().is_empty() {
            problems.push("the group name is empty".to_string());
        }
        let gallery: HashSet<&str> = gallery.iter().map(String::as_str).collect();
        let want = k.min(gallery.len());
        for q in queries {
            let Some(list) = self.images.get(q) else {
                problems.push(format!("query {q:?} has no entry"));
                continue;
            };
            if list.len() != want {
                problems.push(format!(
                    "query {q:?} has {} results, expected {want}",
                    list.len()
                ));
            }
            let distinct: HashSet<&str> = list.iter().map(String::as_str).collect();
            if distinct.len() != list.len() {
                problems.push(format!("query {q:?} lists a gallery file twice"));
            }
            for name in list {
                if !gallery.contains(name.as_str()) {
                    problems.push(format!("query {q:?} lists {name:?}, not in the gallery"));
                }
            }
        }
        let known: HashSet<&str> = queries.iter().map(String::as_str).collect();
        for q in self.images.keys() {
            if !known.contains(q.as_str()) {
                problems.push(format!("{q:?} is not a query of this test set"));
            }
        }
        problems
    }

    /// Writes the file atomically, pretty-printed.
    pub fn write(&self, path: &Path) -> Result<()> {
        data::write_atomic(path, serde_json::to_string_pretty(self)?.as_bytes())
    }

    /// POSTs the submission as JSON and returns the server's answer.
    pub fn post(&self, url: &str) -> Result<String> {
        let response = ureq::post(url)
            .timeout(Duration::from_secs(60))
            .send_json(serde_json::to_value(self)?);
        match response {
            Ok(r) => Ok(r.into_string()?),
            Err(ureq::Error::Status(code, r)) => {
                bail!(
                    "server answered {code}: {}",
                    r.into_string().unwrap_or_default()
                )
            }
            Err(e) => bail!("cannot reach {url}: {e}"),
        }
    }

    /// Top-1/5/10 and score of this submission against known labels, as the server computes
    /// them (a query counts at k when any of its first k results shares its label).
    pub fn score(
        &self,
        query_labels: &HashMap<String, String>,
        gallery_labels: &HashMap<String, String>,
    ) -> (f64, f64, f64, f64) {
        let (mut t1, mut t5, mut t10, mut n) = (0.0, 0.0, 0.0, 0.0);
        for (q, list) in &self.images {
            let Some(label) = query_labels.get(q) else {
                continue;
            };
            n += 1.0;
            let first = list
                .iter()
                .position(|g| gallery_labels.get(g) == Some(label))
                .map(|p| p + 1);
            let at = |k| first.is_some_and(|r| r <= k) as u8 as f64;
            t1 += at(1);
            t5 += at(5);
            t10 += at(10);
        }
        let n: f64 = if n > 0.0 { n } else { 1.0 };
        let (t1, t5, t10) = (t1 / n, t5 / n, t10 / n);
        (t1, t5, t10, competition_score(t1, t5, t10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_catches_mistakes() {
        let gallery: Vec<String> = ["g1", "g2", "g3"].iter().map(|s| s.to_string()).collect();
        let queries = vec!["q1".to_string()];
        let mut s = Submission {
            groupname: "team".into(),
            images: BTreeMap::from([("q1".into(), vec!["g2".into(), "g1".into()])]),
        };
        s.validate(&queries, &gallery, 2).unwrap();
        assert!(s.validate(&queries, &gallery, 3).is_err());
        s.images.insert("q1".into(), vec!["g2".into(), "g2".into()]);
        assert!(
            s.validate(&queries, &gallery, 2)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        s.images.insert("q1".into(), vec!["g2".into(), "zz".into()]);
        assert!(s.validate(&queries, &gallery, 2).is_err());
        assert!(s.validate(&["q2".to_string()], &gallery, 2).is_err());
        // Every problem is listed, not only the first.
        s.images.insert("q9".into(), vec!["g1".into()]);
        let problems = s.problems(&queries, &gallery, 2);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[1].contains("\"q9\" is not a query"));
    }
}
