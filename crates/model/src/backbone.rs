//! The backbone catalogue: names users type, preprocessing, weight files, and the `Backbone`
//! module that wraps whichever network was chosen.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::prelude::*;
use burn::store::{ApplyResult, KeyRemapper, ModuleSnapshot, PytorchStore};
use data::{Normalization, Preprocess};

use crate::efficientnet_lite::EfficientNetLite;
use crate::mobilenet_v2::MobileNetV2;
use crate::resnet::ResNet;

/// Which pretrained network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackboneKind {
    MobileNetV2,
    EfficientNetLite(u8),
    ResNet(usize),
}

impl BackboneKind {
    /// Every supported backbone, in the order tables list them.
    pub const ALL: [BackboneKind; 7] = [
        BackboneKind::MobileNetV2,
        BackboneKind::EfficientNetLite(0),
        BackboneKind::EfficientNetLite(1),
        BackboneKind::EfficientNetLite(2),
        BackboneKind::ResNet(18),
        BackboneKind::ResNet(34),
        BackboneKind::ResNet(50),
    ];

    pub fn name(self) -> String {
        match self {
            BackboneKind::MobileNetV2 => "mobilenet_v2".into(),
            BackboneKind::EfficientNetLite(v) => format!("efficientnet_lite{v}"),
            BackboneKind::ResNet(d) => format!("resnet{d}"),
        }
    }

    /// Input side the network was trained at.
    pub fn input_size(self) -> u32 {
        match self {
            BackboneKind::EfficientNetLite(1) => 240,
            BackboneKind::EfficientNetLite(2) => 260,
            _ => 224,
        }
    }

    /// Evaluation preprocessing: resize to size/0.875 (256 for 224), centre crop, normalise.
    pub fn preprocess(self) -> Preprocess {
        let crop = self.input_size();
        Preprocess {
            resize: (crop as f32 / 0.875).round() as u32,
            crop,
            normalization: match self {
                BackboneKind::EfficientNetLite(_) => Normalization::CENTERED,
                _ => Normalization::IMAGENET,
            },
        }
    }

    /// Length of the pooled feature vector.
    pub fn feature_dim(self) -> usize {
        match self {
            BackboneKind::ResNet(50) => 2048,
            BackboneKind::ResNet(_) => 512,
            _ => 1280,
        }
    }
}

impl fmt::Display for BackboneKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for BackboneKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        BackboneKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .with_context(|| {
                let names: Vec<String> = BackboneKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown backbone {s:?}; known: {}", names.join(", "))
            })
    }
}

/// A backbone network, whichever family.
#[derive(Module, Debug)]
pub enum Backbone {
    MobileNetV2(MobileNetV2),
    EfficientNetLite(EfficientNetLite),
    ResNet(ResNet),
}

impl Backbone {
    /// A randomly initialised network with an ImageNet (1000-class) classifier.
    pub fn new(kind: BackboneKind, device: &Device) -> Self {
        match kind {
            BackboneKind::MobileNetV2 => Backbone::MobileNetV2(MobileNetV2::new(1000, device)),
            BackboneKind::EfficientNetLite(v) => {
                Backbone::EfficientNetLite(EfficientNetLite::new(v, 1000, device))
            }
            BackboneKind::ResNet(d) => Backbone::ResNet(ResNet::new(d, 64, 1000, device)),
        }
    }

    /// Pooled features `[B, D]` of a normalised batch `[B, 3, H, W]`.
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        match self {
            Backbone::MobileNetV2(m) => m.features(x),
            Backbone::EfficientNetLite(m) => m.features(x),
            Backbone::ResNet(m) => m.features(x),
        }
    }

    /// ImageNet logits `[B, 1000]`.
    pub fn logits(&self, x: Tensor<4>) -> Tensor<2> {
        match self {
            Backbone::MobileNetV2(m) => m.logits(x),
            Backbone::EfficientNetLite(m) => m.logits(x),
            Backbone::ResNet(m) => m.logits(x),
        }
    }

    /// Loads a PyTorch checkpoint in the family's own key layout (torchvision or
    /// EfficientNet-Lite), returning what was applied. Fails, naming the file, when any of the
    /// network's tensors is missing from it or has the wrong shape.
    pub fn load_pytorch(&mut self, path: &Path) -> Result<ApplyResult> {
        let remaps = match self {
            Backbone::MobileNetV2(m) => m.key_remaps(),
            Backbone::EfficientNetLite(m) => m.key_remaps(),
            Backbone::ResNet(m) => m.key_remaps(),
        };
        let remapper = KeyRemapper::from_patterns(remaps)
            .map_err(|e| anyhow::anyhow!("key remapping patterns: {e}"))?;
        let mut store = PytorchStore::from_file(path)
            .remap(remapper)
            .map_indices_contiguous(false)
            .allow_partial(true);
        let result = match self {
            Backbone::MobileNetV2(m) => m.load_from(&mut store),
            Backbone::EfficientNetLite(m) => m.load_from(&mut store),
            Backbone::ResNet(m) => m.load_from(&mut store),
        }
        .map_err(|e| anyhow::anyhow!("{}: cannot load weights: {e}", path.display()))?;
        if !result.errors.is_empty() || !result.missing.is_empty() {
            bail!(
                "{}: weights do not fit the network:\n{result}",
                path.display()
            );
        }
        Ok(result)
    }
}
