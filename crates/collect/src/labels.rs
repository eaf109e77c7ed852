//! From the labels images arrive with (folder names, CSV or URL-list columns) to training
//! classes: a TOML map such as
//!
//! ```toml
//! # raw label = training class
//! [map]
//! Chihuahua = "dog"
//! tabby = "cat"
//! # raw labels never to train on (e.g. species a held-out set measures)
//! exclude = ["snake", "wolf"]
//! # keep labels the map does not name as classes of their own (more classes help metric
//! # learning even when the task never asks for them)
//! keep_unmapped = true
//! ```
//!
//! Without a map every label is kept as it is. Several maps given together
//! (`--labels a.toml --labels b.toml`) are one map: their `map` tables and `exclude` lists
//! joined, `keep_unmapped` when any of them says so; a raw label two of them map to different
//! classes is an error naming both files.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

/// The label map (a TOML file).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelMap {
    /// Raw label → class. A raw label equal to a class named here maps to itself.
    #[serde(default)]
    pub map: BTreeMap<String, String>,
    /// Raw labels (or classes) to reject.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Keep labels the map does not name, as extra classes.
    #[serde(default)]
    pub keep_unmapped: bool,
}

/// What becomes of one raw label.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapped {
    Class(String),
    Excluded,
    Unmapped,
}

impl LabelMap {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read label map {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("label map {}", path.display()))
    }

    /// Several maps as one (see the module's documentation); `None` without any.
    pub fn load_all(paths: &[impl AsRef<Path>]) -> Result<Option<Self>> {
        let mut merged: Option<(Self, BTreeMap<String, &Path>)> = None;
        for path in paths {
            let path = path.as_ref();
            let next = Self::load(path)?;
            let Some((map, origin)) = merged.as_mut() else {
                let origin = next.map.keys().map(|k| (k.clone(), path)).collect();
                merged = Some((next, origin));
                continue;
            };
            for (raw, class) in next.map {
                match map.map.get(&raw) {
                    Some(known) if *known != class => anyhow::bail!(
                        "label maps disagree on {raw:?}: {} maps it to {known:?}, {} to {class:?}",
                        origin[&raw].display(),
                        path.display()
                    ),
                    Some(_) => {}
                    None => {
                        origin.insert(raw.clone(), path);
                        map.map.insert(raw, class);
                    }
                }
            }
            for e in next.exclude {
                if !map.exclude.contains(&e) {
                    map.exclude.push(e);
                }
            }
            map.keep_unmapped |= next.keep_unmapped;
        }
        Ok(merged.map(|(map, _)| map))
    }

    /// The identity map that keeps everything (no `--labels` given).
    pub fn keep_all() -> Self {
        Self {
            keep_unmapped: true,
            ..Default::default()
        }
    }

    pub fn apply(&self, raw: &str) -> Mapped {
        let class = match self.map.get(raw) {
            Some(class) => Some(class.clone()),
            None if self.map.values().any(|c| c == raw) => Some(raw.to_string()),
            None => None,
        };
        if self
            .exclude
            .iter()
            .any(|e| e == raw || Some(e) == class.as_ref())
        {
            return Mapped::Excluded;
        }
        match class {
            Some(c) => Mapped::Class(c),
            None if self.keep_unmapped => Mapped::Class(raw.to_string()),
            None => Mapped::Unmapped,
        }
    }
}

impl LabelMap {
    /// The label a name such as an icon's (`dog-face`, `polar-bear`, `hot-dog`) carries: the
    /// whole name, or one word, or two adjacent words (joined by `-`), that the map names as a
    /// raw label or class or excludes. An excluded part wins (`hot-dog` excluded keeps the
    /// dog-less icon out); else the first mapped part, longest first. `None` when the map
    /// names no part: `keep_unmapped` does not make every word a class here.
    pub fn find_in_name(&self, name: &str) -> Option<(String, Mapped)> {
        let words: Vec<&str> = name
            .split(['-', '_', ' '])
            .filter(|w| !w.is_empty())
            .collect();
        let mut parts = vec![name.to_string()];
        parts.extend(words.windows(2).map(|w| w.join("-")));
        parts.extend(words.iter().map(|w| w.to_string()));
        let known = |p: &String| {
            self.map.contains_key(p)
                || self.map.values().any(|c| c == p)
                || self.exclude.contains(p)
        };
        if let Some(p) = parts.iter().find(|p| self.exclude.contains(p)) {
            return Some((p.clone(), Mapped::Excluded));
        }
        parts
            .iter()
            .find(|p| known(p))
            .map(|p| (p.clone(), self.apply(p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_excludes_and_keeps() {
        let map: LabelMap = toml::from_str(
            r#"
            exclude = ["snake"]
            [map]
            Chihuahua = "dog"
            "#,
        )
        .unwrap();
        assert_eq!(map.apply("Chihuahua"), Mapped::Class("dog".into()));
        assert_eq!(map.apply("dog"), Mapped::Class("dog".into()));
        assert_eq!(map.apply("snake"), Mapped::Excluded);
        assert_eq!(map.apply("lion"), Mapped::Unmapped);
        let keep = LabelMap {
            keep_unmapped: true,
            ..map
        };
        assert_eq!(keep.apply("lion"), Mapped::Class("lion".into()));
        assert_eq!(LabelMap::keep_all().apply("x"), Mapped::Class("x".into()));
        assert!(toml::from_str::<LabelMap>("bogus = 1").is_err());
    }

    #[test]
    fn labels_in_icon_names() {
        let map: LabelMap = toml::from_str(
            r#"
            keep_unmapped = true
            exclude = ["hot-dog", "elephant"]
            [map]
            dog = "dog"
            puppy = "dog"
            polar-bear = "bear"
            "#,
        )
        .unwrap();
        let class = |n: &str| map.find_in_name(n).map(|(_, m)| m);
        assert_eq!(class("dog-face"), Some(Mapped::Class("dog".into())));
        assert_eq!(class("puppy"), Some(Mapped::Class("dog".into())));
        assert_eq!(class("polar-bear"), Some(Mapped::Class("bear".into())));
        assert_eq!(class("hot-dog"), Some(Mapped::Excluded));
        assert_eq!(class("elephant-face"), Some(Mapped::Excluded));
        assert_eq!(class("rocket"), None);
        assert_eq!(class("catalonia-flag"), None);
    }

    #[test]
    fn maps_given_together_are_joined() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let ten = write("ten.toml", "exclude = [\"wolf\"]\n[map]\ndog = \"dog\"\n");
        let more = write(
            "more.toml",
            "keep_unmapped = true\nexclude = [\"flag\", \"wolf\"]\n[map]\nlion = \"lion\"\ndog = \"dog\"\n",
        );
        let joined = LabelMap::load_all(&[&ten, &more]).unwrap().unwrap();
        assert_eq!(joined.apply("dog"), Mapped::Class("dog".into()));
        assert_eq!(joined.apply("lion"), Mapped::Class("lion".into()));
        assert_eq!(joined.apply("wolf"), Mapped::Excluded);
        assert_eq!(joined.apply("flag"), Mapped::Excluded);
        assert_eq!(joined.exclude, ["wolf", "flag"]);
        assert!(joined.keep_unmapped);
        assert!(LabelMap::load_all(&[] as &[&Path]).unwrap().is_none());

        let other = write("other.toml", "[map]\ndog = \"wolf\"\n");
        let err = format!("{:#}", LabelMap::load_all(&[&ten, &other]).unwrap_err());
        assert!(err.contains("\"dog\""), "{err}");
        assert!(
            err.contains("ten.toml") && err.contains("other.toml"),
            "{err}"
        );
        let bad = write("bad.toml", "[map\n");
        let err = format!("{:#}", LabelMap::load_all(&[&ten, &bad]).unwrap_err());
        assert!(err.contains("bad.toml"), "{err}");
    }
}
