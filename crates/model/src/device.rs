//! Choosing the compute device at run time.

use anyhow::{Result, bail};
use burn::prelude::Device;
use serde::{Deserialize, Serialize};

/// Where a network runs: `cpu` (the flex backend, the default) or `wgpu` (a build with the
/// `wgpu` feature).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    #[default]
    #[serde(alias = "flex")]
    Cpu,
    #[serde(alias = "gpu")]
    Wgpu,
}

impl DeviceKind {
    pub fn device(self) -> Result<Device> {
        match self {
            DeviceKind::Cpu => Ok(Device::flex()),
            #[cfg(feature = "wgpu")]
            DeviceKind::Wgpu => Ok(Device::wgpu(Default::default())),
            #[cfg(not(feature = "wgpu"))]
            DeviceKind::Wgpu => bail!("device wgpu needs a build with `--features wgpu`"),
        }
    }
}

impl std::str::FromStr for DeviceKind {
    type Err = anyhow::Error;
    fn from_str(name: &str) -> Result<Self> {
        match name {
            "cpu" | "flex" => Ok(DeviceKind::Cpu),
            "wgpu" | "gpu" => Ok(DeviceKind::Wgpu),
            other => bail!("unknown device {other:?}; use cpu or wgpu"),
        }
    }
}

/// `cpu` (the flex backend, the default) or `wgpu` (built with the `wgpu` feature).
pub fn device(name: &str) -> Result<Device> {
    name.parse::<DeviceKind>()?.device()
}
