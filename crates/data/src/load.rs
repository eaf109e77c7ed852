//! Decoding many images in parallel, with progress, skipping and reporting the bad ones.

use image::RgbImage;
use indicatif::{ParallelProgressIterator, ProgressBar, ProgressStyle};
use rayon::prelude::*;

use crate::decode::{DecodeError, decode_image};
use crate::folder::ImageEntry;

/// The outcome of loading a list of images: what decoded, and what was skipped and why.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub loaded: Vec<(ImageEntry, RgbImage)>,
    pub skipped: Vec<DecodeError>,
}

impl LoadReport {
    /// One line a skipped file, then a summary line; empty when nothing was skipped.
    pub fn skipped_summary(&self) -> String {
        skipped_summary(&self.skipped, self.loaded.len())
    }
}

/// One line a skipped file, then a summary line counting `loaded` good files; empty when
/// nothing was skipped.
pub fn skipped_summary(skipped: &[DecodeError], loaded: usize) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    for e in skipped {
        out.push_str(&format!("skipped: {e}\n"));
    }
    out.push_str(&format!(
        "{} of {} files skipped (could not be read or decoded)\n",
        skipped.len(),
        skipped.len() + loaded
    ));
    out
}

/// A progress bar in the project's style, hidden when `quiet` (tests, `--json`).
pub fn progress_bar(len: usize, message: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(message.to_string());
    bar
}

/// Decodes `entries` in parallel. Each file that fails is reported on stderr (`quiet` only
/// hides the progress bar)
/// and skipped; the order of the loaded images follows `entries`.
pub fn load_images(entries: &[ImageEntry], message: &str, quiet: bool) -> LoadReport {
    let bar = progress_bar(entries.len(), message, quiet);
    let results: Vec<Result<(ImageEntry, RgbImage), DecodeError>> = entries
        .par_iter()
        .progress_with(bar.clone())
        .map(|e| decode_image(&e.path).map(|img| (e.clone(), img)))
        .collect();
    bar.finish_and_clear();
    let mut report = LoadReport::default();
    for r in results {
        match r {
            Ok(pair) => report.loaded.push(pair),
            Err(e) => report.skipped.push(e),
        }
    }
    eprint!("{}", report.skipped_summary());
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::folder::list_images;

    #[test]
    fn bad_files_are_skipped_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let good = image::DynamicImage::ImageRgb8(RgbImage::new(10, 10));
        good.save(dir.path().join("good.png")).unwrap();
        good.save(dir.path().join("photo.jpg")).unwrap();
        let jpeg = std::fs::read(dir.path().join("photo.jpg")).unwrap();
        std::fs::write(dir.path().join("truncated.jpg"), &jpeg[..20]).unwrap();
        std::fs::write(dir.path().join("zero.jpg"), b"").unwrap();
        std::fs::write(dir.path().join("text.png"), b"not an image at all").unwrap();
        let (_, entries) = list_images(dir.path(), None).unwrap();
        let report = load_images(&entries, "test", true);
        let ok: Vec<_> = report.loaded.iter().map(|(e, _)| e.name.as_str()).collect();
        assert_eq!(ok, ["good.png", "photo.jpg"]);
        let summary = report.skipped_summary();
        for name in ["truncated.jpg", "zero.jpg", "text.png"] {
            assert!(summary.contains(name), "{summary}");
        }
        assert!(summary.contains("3 of 5 files skipped"));
    }
}
