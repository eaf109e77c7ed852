//! Choosing the compute device at run time.

use anyhow::{Result, bail};
use burn::prelude::Device;

/// `cpu` (the flex backend, the default) or `wgpu` (built with the `wgpu` feature).
pub fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" | "flex" => Ok(Device::flex()),
        #[cfg(feature = "wgpu")]
        "wgpu" | "gpu" => Ok(Device::wgpu(Default::default())),
        #[cfg(not(feature = "wgpu"))]
        "wgpu" | "gpu" => bail!("device {name:?} needs a build with `--features wgpu`"),
        other => bail!("unknown device {other:?}; use cpu or wgpu"),
    }
}
