//! MobileNetV2 in torchvision's layout (`features.N...`, `classifier.1`), so torchvision's
//! `mobilenet_v2-b0353104.pth` loads directly.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;

use crate::layers::{
    Activation, BlockHook, ConvBn, ConvBnConfig, InvertedResidual, global_avg_pool,
    mobile_feature_map, no_hook,
};

/// torchvision's inverted-residual settings: expansion t, output channels c, repeats n,
/// first stride s.
const SETTINGS: [(usize, usize, usize, usize); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];
pub const FEATURE_DIM: usize = 1280;

#[derive(Module, Debug)]
pub struct MobileNetV2 {
    pub stem: ConvBn,
    pub blocks: Vec<InvertedResidual>,
    pub head: ConvBn,
    pub classifier: Linear,
}

impl MobileNetV2 {
    pub fn new(num_classes: usize, device: &Device) -> Self {
        let relu6 = Activation::Relu6;
        let stem = ConvBnConfig::new(3, 32, 3)
            .stride(2)
            .activation(relu6)
            .init(device);
        let mut blocks = Vec::new();
        let mut in_c = 32;
        for (t, c, n, s) in SETTINGS {
            for i in 0..n {
                let stride = if i == 0 { s } else { 1 };
                let hidden = in_c * t;
                blocks.push(InvertedResidual {
                    expand: (t != 1).then(|| {
                        ConvBnConfig::new(in_c, hidden, 1)
                            .activation(relu6)
                            .init(device)
                    }),
                    depthwise: ConvBnConfig::new(hidden, hidden, 3)
                        .stride(stride)
                        .depthwise()
                        .activation(relu6)
                        .init(device),
                    project: ConvBnConfig::new(hidden, c, 1).init(device),
                    residual: stride == 1 && in_c == c,
                });
                in_c = c;
            }
        }
        let head = ConvBnConfig::new(in_c, FEATURE_DIM, 1)
            .activation(relu6)
            .init(device);
        Self {
            stem,
            blocks,
            head,
            classifier: LinearConfig::new(FEATURE_DIM, num_classes).init(device),
        }
    }

    /// Pooled 1280-d features.
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        global_avg_pool(self.feature_map(x))
    }

    /// The last feature map, before pooling.
    pub fn feature_map(&self, x: Tensor<4>) -> Tensor<4> {
        self.feature_map_with(x, &mut no_hook)
    }

    /// The last feature map, with `after_block` applied to each block's output.
    pub fn feature_map_with(&self, x: Tensor<4>, after_block: BlockHook) -> Tensor<4> {
        mobile_feature_map(&self.stem, &self.blocks, &self.head, x, after_block)
    }

    pub fn logits(&self, x: Tensor<4>) -> Tensor<2> {
        self.classifier.forward(self.features(x))
    }

    /// Regex renames from torchvision's keys to this module's paths.
    pub fn key_remaps(&self) -> Vec<(String, String)> {
        let mut remaps = vec![
            (r"^features\.0\.0\.".into(), "stem.conv.".into()),
            (r"^features\.0\.1\.".into(), "stem.bn.".into()),
            (
                format!(r"^features\.{}\.0\.", self.blocks.len() + 1),
                "head.conv.".into(),
            ),
            (
                format!(r"^features\.{}\.1\.", self.blocks.len() + 1),
                "head.bn.".into(),
            ),
            (r"^classifier\.1\.".into(), "classifier.".into()),
        ];
        for (i, block) in self.blocks.iter().enumerate() {
            let f = format!(r"^features\.{}\.conv\.", i + 1);
            let b = format!("blocks.{i}.");
            let names: &[(&str, &str)] = if block.expand.is_some() {
                &[
                    ("0.0", "expand.conv"),
                    ("0.1", "expand.bn"),
                    ("1.0", "depthwise.conv"),
                    ("1.1", "depthwise.bn"),
                    ("2", "project.conv"),
                    ("3", "project.bn"),
                ]
            } else {
                &[
                    ("0.0", "depthwise.conv"),
                    ("0.1", "depthwise.bn"),
                    ("1", "project.conv"),
                    ("2", "project.bn"),
                ]
            };
            for (from, to) in names {
                remaps.push((
                    format!(r"{f}{}\.", from.replace('.', r"\.")),
                    format!("{b}{to}."),
                ));
            }
        }
        remaps
    }
}
