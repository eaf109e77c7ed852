//! Icon and emoji sets as a source of drawings: Iconify JSON sets (`icons.json`, as the npm
//! packages `@iconify-json/<set>` ship them), each icon whose name names an animal of the label
//! map rendered in pure Rust (`resvg`) on white and on a tinted background, with the set's
//! licence and author carried into the manifest.
//!
//! A set is given as an npm package name (fetched with `npm pack`, npm's own client), a
//! downloaded package tarball (`.tgz`), an unpacked package folder, or an `icons.json` file.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::labels::LabelMap;
use crate::source::{Candidate, Credit, Origin};

/// Side of a rendered icon, in pixels.
pub const RENDER_SIDE: u32 = 256;
/// Side of the square the icon is fitted into, centred (the rest is margin).
const ICON_SIDE: f32 = 208.0;

/// One loaded set.
#[derive(Debug, Clone)]
pub struct IconSet {
    /// npm package name (`@iconify-json/openmoji`), or the set's prefix when unknown.
    pub package: String,
    pub version: String,
    /// SPDX id or title of the licence.
    pub licence: String,
    /// The set's name and author, with their URL.
    pub author: String,
    /// Icon name → standalone SVG document.
    pub icons: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct IconsJson {
    prefix: String,
    icons: BTreeMap<String, IconJson>,
    #[serde(default)]
    aliases: BTreeMap<String, AliasJson>,
    #[serde(default)]
    width: Option<f32>,
    #[serde(default)]
    height: Option<f32>,
    #[serde(default)]
    info: Option<InfoJson>,
}

#[derive(Deserialize)]
struct IconJson {
    body: String,
    #[serde(default)]
    left: Option<f32>,
    #[serde(default)]
    top: Option<f32>,
    #[serde(default)]
    width: Option<f32>,
    #[serde(default)]
    height: Option<f32>,
}

impl IconJson {
    /// `[left, top, width, height]`, the set's default size where the icon gives none.
    fn view_box(&self, (width, height): (f32, f32)) -> [f32; 4] {
        [
            self.left.unwrap_or(0.0),
            self.top.unwrap_or(0.0),
            self.width.unwrap_or(width),
            self.height.unwrap_or(height),
        ]
    }
}

#[derive(Deserialize)]
struct AliasJson {
    parent: String,
    #[serde(default)]
    rotate: Option<u32>,
    #[serde(default, rename = "hFlip")]
    h_flip: Option<bool>,
    #[serde(default, rename = "vFlip")]
    v_flip: Option<bool>,
}

#[derive(Deserialize, Default)]
struct InfoJson {
    #[serde(default)]
    name: String,
    #[serde(default)]
    author: Option<AuthorJson>,
    #[serde(default)]
    license: Option<LicenseJson>,
}

#[derive(Deserialize)]
struct AuthorJson {
    #[serde(default)]
    name: String,
    #[serde(default)]
    url: Option<String>,
}

#[derive(Deserialize)]
struct LicenseJson {
    #[serde(default)]
    title: String,
    #[serde(default)]
    spdx: Option<String>,
}

#[derive(Deserialize)]
struct PackageJson {
    name: String,
    version: String,
}

/// The files of a package that matter, however it was given.
#[derive(Default)]
struct PackageFiles {
    icons: Option<Vec<u8>>,
    info: Option<Vec<u8>>,
    package: Option<Vec<u8>>,
}

impl IconSet {
    /// Loads a set from `spec` (see the module docs); npm tarballs go to `cache`.
    pub fn load(spec: &str, cache: &Path) -> Result<Self> {
        let path = Path::new(spec);
        let files = if path.is_file() && spec.ends_with("icons.json") {
            PackageFiles {
                icons: Some(std::fs::read(path).with_context(|| format!("cannot read {spec}"))?),
                ..Default::default()
            }
        } else if path.is_file() {
            read_tarball(path)?
        } else if path.is_dir() {
            let read = |name: &str| std::fs::read(path.join(name)).ok();
            PackageFiles {
                icons: read("icons.json"),
                info: read("info.json"),
                package: read("package.json"),
            }
        } else {
            read_tarball(&npm_pack(spec, cache)?)?
        };
        Self::parse(spec, files)
    }

    fn parse(spec: &str, files: PackageFiles) -> Result<Self> {
        let icons = files
            .icons
            .with_context(|| format!("{spec}: no icons.json (not an Iconify JSON set)"))?;
        let set: IconsJson = serde_json::from_slice(&icons)
            .with_context(|| format!("{spec}: icons.json is not an Iconify icon set"))?;
        let info: InfoJson = match (&files.info, set.info) {
            (Some(bytes), _) => serde_json::from_slice(bytes)
                .with_context(|| format!("{spec}: info.json is not an Iconify set info"))?,
            (None, Some(info)) => info,
            (None, None) => InfoJson::default(),
        };
        let package: Option<PackageJson> = match &files.package {
            Some(bytes) => Some(
                serde_json::from_slice(bytes)
                    .with_context(|| format!("{spec}: package.json has no name and version"))?,
            ),
            None => None,
        };
        let licence = info
            .license
            .as_ref()
            .map(|l| l.spdx.clone().unwrap_or_else(|| l.title.clone()))
            .filter(|l| !l.is_empty());
        let Some(licence) = licence else {
            bail!("{spec}: the set states no licence, so it is not collected");
        };
        let author = match &info.author {
            Some(a) => match &a.url {
                Some(url) => format!("{} by {} ({url})", info.name, a.name),
                None => format!("{} by {}", info.name, a.name),
            },
            None => info.name.clone(),
        };
        let default_size = (set.width.unwrap_or(16.0), set.height.unwrap_or(16.0));
        let document = |icon: &IconJson, transform: &str| {
            let [l, t, w, h] = icon.view_box(default_size);
            let body = if transform.is_empty() {
                icon.body.clone()
            } else {
                format!(r#"<g transform="{transform}">{}</g>"#, icon.body)
            };
            format!(
                r#"<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" viewBox="{l} {t} {w} {h}">{body}</svg>"#
            )
        };
        let mut icons = BTreeMap::new();
        for (name, icon) in &set.icons {
            icons.insert(name.clone(), document(icon, ""));
        }
        // Aliases are other names for an icon (flipped or turned by some): names are what
        // the label map reads.
        for (name, alias) in &set.aliases {
            let Some(icon) = set.icons.get(&alias.parent) else {
                continue;
            };
            let [l, t, w, h] = icon.view_box(default_size);
            let (cx, cy) = (l + w / 2.0, t + h / 2.0);
            let mut transform = String::new();
            if alias.h_flip == Some(true) {
                transform += &format!("translate({cx} 0) scale(-1 1) translate({} 0) ", -cx);
            }
            if alias.v_flip == Some(true) {
                transform += &format!("translate(0 {cy}) scale(1 -1) translate(0 {}) ", -cy);
            }
            if let Some(r) = alias.rotate.filter(|r| *r % 4 != 0) {
                transform += &format!("rotate({} {cx} {cy})", 90 * (r % 4));
            }
            icons.insert(name.clone(), document(icon, transform.trim()));
        }
        let (package, version) = match package {
            Some(p) => (p.name, p.version),
            None => (set.prefix.clone(), String::new()),
        };
        Ok(Self {
            package,
            version,
            licence,
            author,
            icons,
        })
    }

    /// The icons whose names name a class or an excluded label of `labels` (by whole name,
    /// one word or two adjacent words: `dog-face`, `polar-bear`, `hot-dog`), each rendered
    /// once: on white or on a tinted background, half and half by name (two renderings of one
    /// icon would be near copies, and the guard keeps only one). Other icons are not animals
    /// the map knows: no candidates.
    pub fn candidates(&self, labels: &LabelMap) -> Vec<Candidate> {
        let at = if self.version.is_empty() {
            self.package.clone()
        } else {
            format!("{}@{}", self.package, self.version)
        };
        let short = self.package.rsplit('/').next().unwrap_or(&self.package);
        let mut out = Vec::new();
        for (name, svg) in &self.icons {
            let Some((raw, _)) = labels.find_in_name(name) else {
                continue;
            };
            let tinted = tint(&format!("{short}/{name}"));
            let (variant, background) = if tinted[0].is_multiple_of(2) {
                ("white", [255, 255, 255])
            } else {
                ("tinted", tinted)
            };
            out.push(Candidate {
                source: format!("npm:{at}/{name}#{variant}"),
                raw_label: Some(raw),
                origin: Origin::Icon {
                    svg: svg.clone(),
                    background,
                },
                file_name: format!("{short}-{name}-{variant}.png"),
                credit: Some(Credit {
                    licence: self.licence.clone(),
                    attribution: format!("{}, icon {name:?}, from {at}", self.author),
                }),
            });
        }
        out
    }
}

/// A light background colour chosen by the icon's name (the same on every run).
fn tint(name: &str) -> [u8; 3] {
    let mut h: u32 = 2_166_136_261;
    for b in name.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(16_777_619);
    }
    [
        160 + (h % 96) as u8,
        160 + (h / 96 % 96) as u8,
        160 + (h / 9216 % 96) as u8,
    ]
}

/// Renders an SVG document to a PNG of [`RENDER_SIDE`] pixels, the drawing fitted and centred
/// on `background`.
pub fn render(svg: &str, background: [u8; 3]) -> Result<Vec<u8>> {
    use resvg::{tiny_skia, usvg};
    let tree =
        usvg::Tree::from_str(svg, &usvg::Options::default()).context("not a valid SVG document")?;
    let side = RENDER_SIDE;
    let mut pixmap = tiny_skia::Pixmap::new(side, side).context("pixmap")?;
    let [r, g, b] = background;
    pixmap.fill(tiny_skia::Color::from_rgba8(r, g, b, 255));
    let size = tree.size();
    let scale = ICON_SIDE / size.width().max(size.height());
    let (dx, dy) = (
        (side as f32 - size.width() * scale) / 2.0,
        (side as f32 - size.height() * scale) / 2.0,
    );
    let transform = tiny_skia::Transform::from_row(scale, 0.0, 0.0, scale, dx, dy);
    resvg::render(&tree, transform, &mut pixmap.as_mut());
    // The background is opaque, so the premultiplied pixels are the straight ones.
    let rgb: Vec<u8> = pixmap
        .data()
        .chunks_exact(4)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect();
    let img = image::RgbImage::from_raw(side, side, rgb).context("pixmap size")?;
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png)
        .context("cannot encode the rendering")?;
    Ok(png.into_inner())
}

/// Fetches a package tarball with `npm pack` into `cache`; returns its path.
fn npm_pack(package: &str, cache: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let out = Command::new("npm")
        .args(["pack", "--silent", package, "--pack-destination"])
        .arg(cache)
        .output()
        .with_context(|| {
            format!("{package}: not a file or folder, and `npm pack` could not be started")
        })?;
    if !out.status.success() {
        bail!(
            "{package}: not a file or folder, and `npm pack {package}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let name = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    let path = cache.join(&name);
    if name.is_empty() || !path.is_file() {
        bail!(
            "{package}: `npm pack` wrote no tarball into {}",
            cache.display()
        );
    }
    Ok(path)
}

/// The `package/icons.json`, `package/info.json` and `package/package.json` of a package
/// tarball.
fn read_tarball(path: &Path) -> Result<PackageFiles> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut files = PackageFiles::default();
    for entry in archive
        .entries()
        .with_context(|| format!("{}: not a package tarball", path.display()))?
    {
        let mut entry = entry.with_context(|| format!("{}: damaged tarball", path.display()))?;
        let name = entry.path()?.to_string_lossy().into_owned();
        let slot = match name.as_str() {
            "package/icons.json" => &mut files.icons,
            "package/info.json" => &mut files.info,
            "package/package.json" => &mut files.package,
            _ => continue,
        };
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .with_context(|| format!("{}: damaged tarball", path.display()))?;
        *slot = Some(bytes);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_centred_on_the_background() {
        let svg = r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10"><rect width="10" height="10" fill="#000"/></svg>"##;
        let png = render(svg, [255, 0, 0]).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (RENDER_SIDE, RENDER_SIDE));
        assert_eq!(img.get_pixel(2, 2).0, [255, 0, 0]);
        assert_eq!(img.get_pixel(128, 128).0, [0, 0, 0]);
        assert!(render("<svg", [0, 0, 0]).is_err());
    }

    #[test]
    fn tints_are_light_and_stable() {
        assert_eq!(tint("dog"), tint("dog"));
        assert!(tint("dog").iter().all(|c| *c >= 160));
        assert_ne!(tint("dog"), tint("cat"));
    }
}
