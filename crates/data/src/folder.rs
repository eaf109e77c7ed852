//! Listing the images of a folder, in the three layouts the competition and users produce.
//!
//! 1. Class sub-folders: `train/<class>/*`, `gallery/<class>/*`; a sub-folder named
//!    `distractor` holds images that match no class.
//! 2. A flat folder with a `labels.json` mapping file name to label (`"distractor"` matches
//!    nothing).
//! 3. A flat folder without labels (test day): every image is unlabelled.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The label of distractor images: they match no query.
pub const DISTRACTOR: &str = "distractor";

/// File extensions treated as images when listing a folder. Files with other extensions are
/// ignored silently (a `labels.json`, a README); anything else with these extensions that is not
/// a folder is listed, and reported later by the loader when it cannot be read or decoded (a
/// dangling link, a link loop, a FIFO, a name that is not UTF-8).
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp", "gif"];

/// One image of a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEntry {
    /// Full path on disk.
    pub path: PathBuf,
    /// Path relative to the listed folder, with `/` separators: the name used in results and
    /// submissions (for flat folders this is the file name).
    pub name: String,
    /// Class label; `None` for unlabelled images and for distractors.
    pub label: Option<String>,
    /// True for images from a `distractor` folder or labelled `"distractor"`.
    pub distractor: bool,
}

/// How a folder was laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    ClassFolders,
    FlatWithLabels,
    FlatUnlabelled,
}

/// True for what a listing offers the loader: not a folder (following links; a link that
/// leads nowhere is offered, and reported when read) and named like an image.
fn is_image_candidate(path: &Path) -> bool {
    !path.is_dir() && has_image_extension(path)
}

/// True when the path has one of [`IMAGE_EXTENSIONS`] (case-insensitive).
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

fn sorted_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read folder {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("cannot list folder {}", dir.display()))?;
    paths.sort();
    Ok(paths)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Lists the images of `dir`, sorted by name, with labels where the layout gives them.
///
/// `labels_file` overrides the `labels.json` lookup for flat folders. A single image file
/// given as `dir` is listed alone, unlabelled.
pub fn list_images(dir: &Path, labels_file: Option<&Path>) -> Result<(Layout, Vec<ImageEntry>)> {
    if dir.is_file() {
        let entry = ImageEntry {
            path: dir.to_path_buf(),
            name: file_name(dir),
            label: None,
            distractor: false,
        };
        return Ok((Layout::FlatUnlabelled, vec![entry]));
    }
    if !dir.is_dir() {
        bail!("{} is not a folder or an image file", dir.display());
    }
    let children = sorted_dir(dir)?;
    let sub_dirs: Vec<&PathBuf> = children.iter().filter(|p| p.is_dir()).collect();
    let labels_path = labels_file
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.join("labels.json"));

    if labels_file.is_some() || labels_path.is_file() {
        let labels = read_labels(&labels_path)?;
        let entries = children
            .iter()
            .filter(|p| is_image_candidate(p))
            .map(|p| {
                let name = file_name(p);
                let label = labels.get(&name).cloned();
                let distractor = label.as_deref() == Some(DISTRACTOR);
                ImageEntry {
                    path: p.clone(),
                    label: label.filter(|_| !distractor),
                    name,
                    distractor,
                }
            })
            .collect();
        return Ok((Layout::FlatWithLabels, entries));
    }

    if !sub_dirs.is_empty() {
        let mut entries = Vec::new();
        for class_dir in sub_dirs {
            let class = file_name(class_dir);
            let distractor = class == DISTRACTOR;
            for p in sorted_dir(class_dir)? {
                if is_image_candidate(&p) {
                    entries.push(ImageEntry {
                        name: format!("{class}/{}", file_name(&p)),
                        path: p,
                        label: (!distractor).then(|| class.clone()),
                        distractor,
                    });
                }
            }
        }
        return Ok((Layout::ClassFolders, entries));
    }

    let entries = children
        .iter()
        .filter(|p| is_image_candidate(p))
        .map(|p| ImageEntry {
            path: p.clone(),
            name: file_name(p),
            label: None,
            distractor: false,
        })
        .collect();
    Ok((Layout::FlatUnlabelled, entries))
}

/// Reads a `labels.json` (`{"file name": "label"}`).
pub fn read_labels(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read labels file {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "labels file {} is not a JSON object of file name to label",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    #[test]
    fn class_folders_with_distractors() {
        let dir = tempfile::tempdir().unwrap();
        touch(&dir.path().join("cat/b.png"));
        touch(&dir.path().join("cat/a.jpg"));
        touch(&dir.path().join("distractor/z.png"));
        touch(&dir.path().join("cat/notes.txt"));
        let (layout, entries) = list_images(dir.path(), None).unwrap();
        assert_eq!(layout, Layout::ClassFolders);
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["cat/a.jpg", "cat/b.png", "distractor/z.png"]);
        assert_eq!(entries[0].label.as_deref(), Some("cat"));
        assert!(entries[2].distractor && entries[2].label.is_none());
    }

    #[test]
    fn flat_with_labels_json() {
        let dir = tempfile::tempdir().unwrap();
        touch(&dir.path().join("dog (46).png"));
        touch(&dir.path().join("x.webp"));
        touch(&dir.path().join("y.gif"));
        std::fs::write(
            dir.path().join("labels.json"),
            r#"{"dog (46).png": "dog", "x.webp": "distractor"}"#,
        )
        .unwrap();
        let (layout, entries) = list_images(dir.path(), None).unwrap();
        assert_eq!(layout, Layout::FlatWithLabels);
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].label.as_deref(), Some("dog"));
        assert!(entries[1].distractor);
        assert_eq!(entries[2].label, None);
    }

    #[test]
    fn flat_unlabelled_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        touch(&dir.path().join("q1.JPG"));
        let (layout, entries) = list_images(dir.path(), None).unwrap();
        assert_eq!(layout, Layout::FlatUnlabelled);
        assert_eq!(entries[0].name, "q1.JPG");
        let err = list_images(&dir.path().join("nope"), None).unwrap_err();
        assert!(err.to_string().contains("nope"));
    }
}
