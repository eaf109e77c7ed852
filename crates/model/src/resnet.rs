//! ResNet-18/34/50 in torchvision's layout (`conv1`, `bn1`, `layerN.M.convK`, `downsample`,
//! `fc`), so torchvision's own `.pth` files load for users who have them.
//!
//! `base_width` (64 in torchvision) is a parameter only so tests can build a narrow network
//! with the same key names and check the loader against an independent reference.

use burn::module::Module;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;

use crate::layers::{Activation, BlockHook, ConvBn, ConvBnConfig, global_avg_pool, no_hook};

/// Basic block (two 3×3) for ResNet-18/34, bottleneck (1×1, 3×3, 1×1, expansion 4) for 50.
#[derive(Module, Debug)]
pub struct ResBlock {
    pub c1: ConvBn,
    pub c2: ConvBn,
    pub c3: Option<ConvBn>,
    pub downsample: Option<ConvBn>,
}

impl ResBlock {
    /// Every batch norm folded into its convolution (inference only).
    pub fn fold(self) -> Self {
        Self {
            c1: self.c1.fold(),
            c2: self.c2.fold(),
            c3: self.c3.map(ConvBn::fold),
            downsample: self.downsample.map(ConvBn::fold),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let identity = match &self.downsample {
            Some(d) => d.forward(x.clone()),
            None => x.clone(),
        };
        // The last convolution adds the shortcut, then the block's ReLU.
        let y = self.c1.forward(x);
        match &self.c3 {
            Some(c3) => c3.forward_residual(self.c2.forward(y), Some(identity), Activation::Relu),
            None => self
                .c2
                .forward_residual(y, Some(identity), Activation::Relu),
        }
    }
}

#[derive(Module, Debug)]
pub struct ResNet {
    pub stem: ConvBn,
    pub maxpool: MaxPool2d,
    pub layer1: Vec<ResBlock>,
    pub layer2: Vec<ResBlock>,
    pub layer3: Vec<ResBlock>,
    pub layer4: Vec<ResBlock>,
    pub fc: Linear,
    #[module(skip)]
    pub feature_dim: usize,
}

/// Blocks a stage and whether the blocks are bottlenecks.
pub fn depth_layout(depth: usize) -> ([usize; 4], bool) {
    match depth {
        18 => ([2, 2, 2, 2], false),
        34 => ([3, 4, 6, 3], false),
        50 => ([3, 4, 6, 3], true),
        _ => panic!("ResNet-{depth} is not supported (18, 34, 50 are)"),
    }
}

impl ResNet {
    pub fn new(depth: usize, base_width: usize, num_classes: usize, device: &Device) -> Self {
        let (repeats, bottleneck) = depth_layout(depth);
        let expansion = if bottleneck { 4 } else { 1 };
        let relu = Activation::Relu;
        let stem = ConvBnConfig::new(3, base_width, 7)
            .stride(2)
            .activation(relu)
            .init(device);
        let maxpool = MaxPool2dConfig::new([3, 3])
            .with_strides([2, 2])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init();
        let mut in_c = base_width;
        let mut layers: Vec<Vec<ResBlock>> = Vec::new();
        for (stage, &n) in repeats.iter().enumerate() {
            let width = base_width << stage;
            let out_c = width * expansion;
            let mut blocks = Vec::new();
            for i in 0..n {
                let stride = if i == 0 && stage > 0 { 2 } else { 1 };
                let downsample = (stride != 1 || in_c != out_c).then(|| {
                    ConvBnConfig::new(in_c, out_c, 1)
                        .stride(stride)
                        .init(device)
                });
                let block = if bottleneck {
                    ResBlock {
                        c1: ConvBnConfig::new(in_c, width, 1)
                            .activation(relu)
                            .init(device),
                        c2: ConvBnConfig::new(width, width, 3)
                            .stride(stride)
                            .activation(relu)
                            .init(device),
                        c3: Some(ConvBnConfig::new(width, out_c, 1).init(device)),
                        downsample,
                    }
                } else {
                    ResBlock {
                        c1: ConvBnConfig::new(in_c, width, 3)
                            .stride(stride)
                            .activation(relu)
                            .init(device),
                        c2: ConvBnConfig::new(width, width, 3).init(device),
                        c3: None,
                        downsample,
                    }
                };
                blocks.push(block);
                in_c = out_c;
            }
            layers.push(blocks);
        }
        let mut layers = layers.into_iter();
        let mut next = || layers.next().expect("four stages");
        Self {
            stem,
            maxpool,
            layer1: next(),
            layer2: next(),
            layer3: next(),
            layer4: next(),
            fc: LinearConfig::new(in_c, num_classes).init(device),
            feature_dim: in_c,
        }
    }

    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        global_avg_pool(self.feature_map(x))
    }

    /// The last stage's output, before pooling.
    pub fn feature_map(&self, x: Tensor<4>) -> Tensor<4> {
        self.feature_map_with(x, &mut no_hook)
    }

    /// The last feature map, with `after_block` applied to each basic block's output
    /// (numbered across the four layers from 0).
    pub fn feature_map_with(&self, x: Tensor<4>, after_block: BlockHook) -> Tensor<4> {
        let mut x = self.maxpool.forward(self.stem.forward(x));
        let blocks = [&self.layer1, &self.layer2, &self.layer3, &self.layer4];
        for (i, block) in blocks.into_iter().flatten().enumerate() {
            x = after_block(i, block.forward(x));
        }
        x
    }

    pub fn logits(&self, x: Tensor<4>) -> Tensor<2> {
        self.fc.forward(self.features(x))
    }

    /// Regex renames from torchvision's keys to this module's paths.
    pub fn key_remaps(&self) -> Vec<(String, String)> {
        [
            (r"^conv1\.", "stem.conv."),
            (r"^bn1\.", "stem.bn."),
            (r"^(layer\d\.\d+)\.conv(\d)\.", "$1.c$2.conv."),
            (r"^(layer\d\.\d+)\.bn(\d)\.", "$1.c$2.bn."),
            (r"^(layer\d\.\d+)\.downsample\.0\.", "$1.downsample.conv."),
            (r"^(layer\d\.\d+)\.downsample\.1\.", "$1.downsample.bn."),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
    }
}
