//! Where candidate images come from: folders (label = the first sub-folder under the root,
//! or a CSV `file,label` mapping for loose files) and URL lists (`url,label` lines).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Where a candidate's bytes are.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    File(PathBuf),
    Url(String),
    /// An icon of a set, rendered on `background` ([`crate::icons`]).
    Icon {
        svg: String,
        background: [u8; 3],
    },
}

/// The licence an image comes under and whom it is credited to, where its source says.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Credit {
    pub licence: String,
    pub attribution: String,
}

/// One image to consider.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Candidate {
    /// The path or URL, as written in the manifest.
    pub source: String,
    /// The label it arrived with (`None`: nothing said).
    pub raw_label: Option<String>,
    pub origin: Origin,
    /// The file name to keep when accepted.
    pub file_name: String,
    /// Licence and attribution (icon sets); `None` where the source states none.
    pub credit: Option<Credit>,
}

/// Non-empty, non-comment lines of a list file, split as CSV.
fn list_lines(path: &Path) -> Result<Vec<Vec<String>>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .from_path(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    reader
        .records()
        .map(|r| {
            let r = r.with_context(|| format!("{}: not a CSV list", path.display()))?;
            Ok(r.iter().map(str::to_string).collect())
        })
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read folder {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot list folder {}", dir.display()))?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// Every file under `dir`, sorted (images or not: non-images are rejected with a reason).
pub fn all_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    walk(dir, &mut out)?;
    Ok(out)
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The files of a folder. A file under `root/<label>/…` gets `<label>`; a loose file gets its
/// label from `csv` (`file,label`, file relative to the root) or none.
pub fn from_folder(root: &Path, csv: Option<&Path>) -> Result<Vec<Candidate>> {
    if !root.is_dir() {
        bail!("{}: not a folder", root.display());
    }
    let mapping: BTreeMap<String, String> = match csv {
        Some(csv) => list_lines(csv)?
            .into_iter()
            .filter(|f| f.len() >= 2 && !(f[0] == "file" && f[1] == "label"))
            .map(|f| (f[0].clone(), f[1].clone()))
            .collect(),
        None => BTreeMap::new(),
    };
    Ok(all_files(root)?
        .into_iter()
        .map(|path| {
            let relative = path.strip_prefix(root).unwrap_or(&path);
            let parts: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            let raw_label = if parts.len() > 1 {
                Some(parts[0].clone())
            } else {
                mapping.get(&parts.join("/")).cloned()
            };
            Candidate {
                source: data::decode::escaped(&path),
                raw_label,
                file_name: name_of(&path),
                origin: Origin::File(path),
                credit: None,
            }
        })
        .collect())
}

/// The entries of a URL list: `url,label` per line (`#` comments and a `url,label` header
/// allowed; a line with a URL alone has no label).
pub fn from_url_list(path: &Path) -> Result<Vec<Candidate>> {
    let mut out = Vec::new();
    for fields in list_lines(path)? {
        let url = fields[0].clone();
        if url == "url" {
            continue;
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!("{}: {url:?} is not an http(s) URL", path.display());
        }
        let tail = url
            .split(['?', '#'])
            .next()
            .unwrap_or(&url)
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string();
        out.push(Candidate {
            source: url.clone(),
            raw_label: fields.get(1).filter(|l| !l.is_empty()).cloned(),
            file_name: tail,
            origin: Origin::Url(url),
            credit: None,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list.csv");
        std::fs::write(
            &path,
            "# comment\na,b\n\n\"x, y\",\"q\"\"\"\n  spaced , out \n\"two\nlines\",z\nalone\n",
        )
        .unwrap();
        let lines = list_lines(&path).unwrap();
        assert_eq!(
            lines,
            [
                vec!["a", "b"],
                vec!["x, y", "q\""],
                vec!["spaced", "out"],
                vec!["two\nlines", "z"],
                vec!["alone"],
            ]
        );
    }

    #[test]
    fn folders_and_url_lists() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dog/sub")).unwrap();
        std::fs::write(dir.path().join("dog/a.png"), b"x").unwrap();
        std::fs::write(dir.path().join("dog/sub/b.png"), b"x").unwrap();
        std::fs::write(dir.path().join("loose.jpg"), b"x").unwrap();
        std::fs::write(dir.path().join("other.jpg"), b"x").unwrap();
        let csv = dir.path().join("labels.csv");
        std::fs::write(&csv, "file,label\nloose.jpg,cat\n").unwrap();
        let c = from_folder(dir.path(), Some(&csv)).unwrap();
        let labels: Vec<(&str, Option<&str>)> = c
            .iter()
            .map(|c| (c.file_name.as_str(), c.raw_label.as_deref()))
            .collect();
        assert!(labels.contains(&("a.png", Some("dog"))));
        assert!(labels.contains(&("b.png", Some("dog"))));
        assert!(labels.contains(&("loose.jpg", Some("cat"))));
        assert!(labels.contains(&("other.jpg", None)));

        let list = dir.path().join("urls.csv");
        std::fs::write(
            &list,
            "# comment\nurl,label\nhttp://h/x/cat.png?s=1,cat\n\nhttps://h/y\n",
        )
        .unwrap();
        let u = from_url_list(&list).unwrap();
        assert_eq!(u.len(), 2);
        assert_eq!(
            (u[0].file_name.as_str(), u[0].raw_label.as_deref()),
            ("cat.png", Some("cat"))
        );
        assert_eq!(u[1].raw_label, None);
        std::fs::write(&list, "ftp://h/x.png,cat\n").unwrap();
        assert!(from_url_list(&list).is_err());
    }
}
