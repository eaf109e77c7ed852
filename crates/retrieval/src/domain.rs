//! The visual domain of a query (sketch, cartoon, painting, photo…), read from the start of
//! its file name, as PACS and DomainNet-style sets name them. Figures per domain show where
//! an embedding fails when the query is not a photo.

use std::collections::BTreeMap;

use crate::metrics::{Evaluation, Metrics, aggregate};

/// Domain names recognised at the start of a file name (longest first where one is a prefix
/// of another), with the name reported for each.
const DOMAINS: [(&str, &str); 9] = [
    ("art_painting", "painting"),
    ("painting", "painting"),
    ("cartoon", "cartoon"),
    ("clipart", "clipart"),
    ("sketch", "sketch"),
    ("quickdraw", "quickdraw"),
    ("infograph", "infograph"),
    ("photo", "photo"),
    ("real", "photo"),
];

/// The domain of a file (its base name is what is looked at), if its name says.
pub fn domain_of(name: &str) -> Option<&'static str> {
    let base = name
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or(name)
        .to_ascii_lowercase();
    DOMAINS
        .iter()
        .find(|(prefix, _)| {
            base.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['_', '-', ' ', '.']))
        })
        .map(|(_, domain)| *domain)
}

/// Metrics per domain for the labelled queries named `names` (aligned with
/// `evaluation.per_query`); empty when no query name carries a domain. Queries whose name
/// names none count as `other`.
pub fn per_domain(names: &[&str], evaluation: &Evaluation) -> BTreeMap<String, Metrics> {
    if !names.iter().any(|n| domain_of(n).is_some()) {
        return BTreeMap::new();
    }
    let mut groups: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for (name, outcome) in names.iter().zip(&evaluation.per_query) {
        if let Some(o) = outcome {
            let domain = domain_of(name).unwrap_or("other").to_string();
            groups.entry(domain).or_default().push(o);
        }
    }
    groups
        .into_iter()
        .map(|(d, outcomes)| (d, aggregate(outcomes.into_iter())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::QueryOutcome;

    #[test]
    fn domains_from_file_names() {
        assert_eq!(domain_of("dog/art_painting_pic_017.jpg"), Some("painting"));
        assert_eq!(domain_of("horse/sketch_12.png"), Some("sketch"));
        assert_eq!(domain_of("Cartoon-3.jpg"), Some("cartoon"));
        assert_eq!(domain_of("cat/photo.jpg"), Some("photo"));
        assert_eq!(domain_of("dog (46).png"), None);
        assert_eq!(domain_of("sketchy_dog.png"), None);
        assert_eq!(domain_of("realistic.png"), None);
    }

    #[test]
    fn groups_queries_by_domain() {
        let outcome = |hit: Option<usize>| {
            Some(QueryOutcome {
                label: "dog".into(),
                first_hit: hit,
                ap10: 0.0,
                ap_r: 0.0,
                top1_label: "dog".into(),
            })
        };
        let evaluation = Evaluation {
            per_query: vec![outcome(Some(1)), outcome(Some(4)), outcome(None), None],
            ..Default::default()
        };
        let names = ["sketch_1.png", "sketch_2.png", "x.png", "cartoon_1.png"];
        let d = per_domain(&names, &evaluation);
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!((d["sketch"].queries, d["sketch"].top1), (2, 0.5));
        assert_eq!(d["sketch"].top5, 1.0);
        assert_eq!((d["other"].queries, d["other"].top10), (1, 0.0));
        assert!(per_domain(&["a.png"], &evaluation).is_empty());
    }
}
