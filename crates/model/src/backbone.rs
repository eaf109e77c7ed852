//! The backbone catalogue: names users type, preprocessing, weight files, and the `Backbone`
//! module that wraps whichever network was chosen.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::store::{ApplyResult, KeyRemapper, ModuleSnapshot, PytorchStore};
use burn::tensor::Gradients;
use data::{Normalization, Preprocess};

use crate::efficientnet_lite::EfficientNetLite;
use crate::layers::{BlockHook, global_avg_pool};
use crate::mobilenet_v2::MobileNetV2;
use crate::resnet::ResNet;

/// Which pretrained network. In configuration files it is its name (`efficientnet_lite1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
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
        self.preprocess_at(self.input_size())
    }

    /// The same transform for another input side.
    pub fn preprocess_at(self, crop: u32) -> Preprocess {
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

impl TryFrom<String> for BackboneKind {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<BackboneKind> for String {
    fn from(kind: BackboneKind) -> String {
        kind.name()
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

    /// The last feature map `[B, D, H/32, W/32]` before pooling: where in the image the
    /// features come from (a foreground estimate, see the trainer's `foreground`).
    pub fn feature_map(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Backbone::MobileNetV2(m) => m.feature_map(x),
            Backbone::EfficientNetLite(m) => m.feature_map(x),
            Backbone::ResNet(m) => m.feature_map(x),
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

    /// Pooled features with `after_block` applied to each block's output (numbered from 0, as
    /// [`Backbone::freeze_early`] counts them): the training-time hook into the backbone.
    pub fn features_with(&self, x: Tensor<4>, after_block: BlockHook) -> Tensor<2> {
        global_avg_pool(match self {
            Backbone::MobileNetV2(m) => m.feature_map_with(x, after_block),
            Backbone::EfficientNetLite(m) => m.feature_map_with(x, after_block),
            Backbone::ResNet(m) => m.feature_map_with(x, after_block),
        })
    }

    /// Every batch norm folded into its convolution: the same outputs in inference with one
    /// pass over each activation map fewer. Inference only (see [`crate::layers::ConvBn::fold`]).
    pub fn fold_batch_norm(self) -> Self {
        let fold_all = |blocks: Vec<crate::layers::InvertedResidual>| {
            blocks.into_iter().map(|b| b.fold()).collect()
        };
        match self {
            Backbone::MobileNetV2(mut m) => {
                m.stem = m.stem.fold();
                m.blocks = fold_all(m.blocks);
                m.head = m.head.fold();
                Backbone::MobileNetV2(m)
            }
            Backbone::EfficientNetLite(mut m) => {
                m.stem = m.stem.fold();
                m.blocks = fold_all(m.blocks);
                m.head = m.head.fold();
                Backbone::EfficientNetLite(m)
            }
            Backbone::ResNet(mut m) => {
                m.stem = m.stem.fold();
                for layer in [&mut m.layer1, &mut m.layer2, &mut m.layer3, &mut m.layer4] {
                    *layer = std::mem::take(layer)
                        .into_iter()
                        .map(|b| b.fold())
                        .collect();
                }
                Backbone::ResNet(m)
            }
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

    /// The ImageNet classifier over pooled features `[B, D]`: logits `[B, 1000]`, with the
    /// classifier held fixed (no gradient reaches its weights, only the features): a
    /// training-time probe of where the features lie among ImageNet's classes.
    pub fn class_logits(&self, features: Tensor<2>) -> Tensor<2> {
        let classifier = match self {
            Backbone::MobileNetV2(m) => &m.classifier,
            Backbone::EfficientNetLite(m) => &m.classifier,
            Backbone::ResNet(m) => &m.fc,
        };
        burn::tensor::module::linear(
            features,
            classifier.weight.val().detach(),
            classifier.bias.as_ref().map(|b| b.val().detach()),
        )
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

/// Keeps the first `total - trainable` items frozen (no gradients, batch norm in inference).
fn freeze_prefix<T: Module>(items: Vec<T>, trainable: usize) -> Vec<T> {
    let cut = items.len().saturating_sub(trainable);
    items
        .into_iter()
        .enumerate()
        .map(|(i, b)| if i < cut { b.freeze() } else { b })
        .collect()
}

/// Disables every module-owned training flag: batch norm keeps using its running statistics
/// (small P×K batches make poor statistics), while parameters still receive gradients.
struct FreezeBatchNormStats;

impl burn::module::ModuleMapper for FreezeBatchNormStats {
    fn map_flag(
        &mut self,
        flag: burn::module::Param<burn::module::Flag>,
    ) -> burn::module::Param<burn::module::Flag> {
        flag.with_value(false)
    }
}

impl Backbone {
    /// Number of residual blocks (the unit of `freeze_early`).
    pub fn num_blocks(&self) -> usize {
        match self {
            Backbone::MobileNetV2(m) => m.blocks.len(),
            Backbone::EfficientNetLite(m) => m.blocks.len(),
            Backbone::ResNet(m) => {
                m.layer1.len() + m.layer2.len() + m.layer3.len() + m.layer4.len()
            }
        }
    }

    /// The output stride after each block (numbered from 0): the stem's and every block's
    /// strides so far multiplied (EfficientNet-Lite1: 2, 4, 4, 4, 8, ...).
    pub fn block_output_strides(&self) -> Vec<usize> {
        let (stem, strides): (usize, Vec<usize>) = match self {
            Backbone::MobileNetV2(m) => (2, mobile_strides(&m.blocks)),
            Backbone::EfficientNetLite(m) => (2, mobile_strides(&m.blocks)),
            Backbone::ResNet(m) => {
                let blocks = [&m.layer1, &m.layer2, &m.layer3, &m.layer4];
                let strides = blocks.into_iter().flatten();
                (
                    4,
                    strides
                        .map(|b| b.c1.conv.stride[0].max(b.c2.conv.stride[0]))
                        .collect(),
                )
            }
        };
        strides
            .into_iter()
            .scan(stem, |total, s| {
                *total *= s;
                Some(*total)
            })
            .collect()
    }

    /// The last block at each output stride in `strides` (the end of each resolution), in
    /// order; an error names a stride no block outputs at.
    pub fn last_blocks_at(&self, strides: &[usize]) -> Result<Vec<usize>> {
        let outputs = self.block_output_strides();
        strides
            .iter()
            .map(|&s| {
                outputs.iter().rposition(|&o| o == s).with_context(|| {
                    format!(
                        "no block of this backbone outputs at stride {s} (its blocks: {outputs:?})"
                    )
                })
            })
            .collect()
    }

    /// The stem's parameter gradients and then each block's, in block order (as
    /// [`Backbone::freeze_early`] counts them), taken out of `grads`: what stays there is the
    /// rest of the backbone's (final convolution or last stage's pooling, classifier). For a
    /// learning rate a layer (layer-wise decay): an optimiser stepped once a group leaves the
    /// parameters without gradients, and their state, as they were. A frozen stem's group is
    /// empty.
    pub fn layer_gradients(&self, grads: &mut Gradients) -> Vec<GradientsParams> {
        fn each<T: Module>(grads: &mut Gradients, blocks: &[T]) -> Vec<GradientsParams> {
            blocks
                .iter()
                .map(|b| GradientsParams::from_module(grads, b))
                .collect()
        }
        let (stem, blocks) = match self {
            Backbone::MobileNetV2(m) => (
                GradientsParams::from_module(grads, &m.stem),
                each(grads, &m.blocks),
            ),
            Backbone::EfficientNetLite(m) => (
                GradientsParams::from_module(grads, &m.stem),
                each(grads, &m.blocks),
            ),
            Backbone::ResNet(m) => (
                GradientsParams::from_module(grads, &m.stem),
                [&m.layer1, &m.layer2, &m.layer3, &m.layer4]
                    .into_iter()
                    .flat_map(|layer| each(grads, layer))
                    .collect(),
            ),
        };
        std::iter::once(stem).chain(blocks).collect()
    }

    /// Lets the stem train again after [`Backbone::freeze_early`] froze it.
    pub fn unfreeze_stem(self) -> Self {
        match self {
            Backbone::MobileNetV2(mut m) => {
                m.stem = m.stem.unfreeze();
                Backbone::MobileNetV2(m)
            }
            Backbone::EfficientNetLite(mut m) => {
                m.stem = m.stem.unfreeze();
                Backbone::EfficientNetLite(m)
            }
            Backbone::ResNet(mut m) => {
                m.stem = m.stem.unfreeze();
                Backbone::ResNet(m)
            }
        }
    }

    /// Freezes the stem and all but the last `trainable` blocks; the final conv (or last
    /// stage) and the classifier stay trainable. `trainable >= num_blocks()` freezes nothing
    /// but the stem.
    pub fn freeze_early(self, trainable: usize) -> Self {
        match self {
            Backbone::MobileNetV2(mut m) => {
                m.stem = m.stem.freeze();
                m.blocks = freeze_prefix(m.blocks, trainable);
                Backbone::MobileNetV2(m)
            }
            Backbone::EfficientNetLite(mut m) => {
                m.stem = m.stem.freeze();
                m.blocks = freeze_prefix(m.blocks, trainable);
                Backbone::EfficientNetLite(m)
            }
            Backbone::ResNet(mut m) => {
                m.stem = m.stem.freeze();
                let sizes = [
                    m.layer1.len(),
                    m.layer2.len(),
                    m.layer3.len(),
                    m.layer4.len(),
                ];
                let mut left = trainable;
                let mut per_layer = [0usize; 4];
                for i in (0..4).rev() {
                    per_layer[i] = left.min(sizes[i]);
                    left -= per_layer[i];
                }
                m.layer1 = freeze_prefix(m.layer1, per_layer[0]);
                m.layer2 = freeze_prefix(m.layer2, per_layer[1]);
                m.layer3 = freeze_prefix(m.layer3, per_layer[2]);
                m.layer4 = freeze_prefix(m.layer4, per_layer[3]);
                Backbone::ResNet(m)
            }
        }
    }

    /// Batch norm in inference mode everywhere, parameters still trainable.
    pub fn freeze_batch_norm_stats(self) -> Self {
        self.map(&mut FreezeBatchNormStats)
    }
}

fn mobile_strides(blocks: &[crate::layers::InvertedResidual]) -> Vec<usize> {
    blocks.iter().map(|b| b.depthwise.conv.stride[0]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ends of the stride-4, 8 and 16 resolutions, counted by hand from each network's
    /// stage table: EfficientNet-Lite1 (1, 3, 3, 4, 4, 5, 1 blocks; stages 2, 3, 4 and 6
    /// halve), MobileNetV2 (1, 2, 3, 4, 3, 3, 1; stages 2, 3, 4, 6 halve), ResNet-18 (2 blocks
    /// a layer after a stride-4 stem; layers 2, 3, 4 halve).
    #[test]
    fn last_blocks_at_each_resolution() {
        let device = Device::flex();
        let ends = |kind: BackboneKind| {
            Backbone::new(kind, &device)
                .last_blocks_at(&[4, 8, 16])
                .unwrap()
        };
        assert_eq!(ends(BackboneKind::EfficientNetLite(1)), [3, 6, 14]);
        assert_eq!(ends(BackboneKind::MobileNetV2), [2, 5, 12]);
        assert_eq!(ends(BackboneKind::ResNet(18)), [1, 3, 5]);
        let resnet = Backbone::new(BackboneKind::ResNet(18), &device);
        let err = resnet.last_blocks_at(&[2]).unwrap_err().to_string();
        assert!(err.contains("stride 2"), "{err}");
    }

    /// The classifier over pooled features gives the network's own logits, and sends no
    /// gradient to the classifier's weights; the stem's and each block's gradients are taken
    /// apart, and only the rest (final convolution) is left behind.
    #[test]
    fn class_logits_and_layer_gradients() {
        let ad = Device::flex().autodiff();
        let net = Backbone::new(BackboneKind::MobileNetV2, &ad);
        let x = Tensor::<4>::random([2, 3, 32, 32], burn::tensor::Distribution::Default, &ad);
        let features = net.features(x.clone());
        let (a, b) = (net.logits(x), net.class_logits(features));
        a.clone().into_data().assert_approx_eq::<f32>(
            &b.clone().into_data(),
            burn::tensor::Tolerance::relative(1e-5),
        );
        let mut grads = b.sum().backward();
        let layers = net.layer_gradients(&mut grads);
        assert_eq!(layers.len(), 1 + net.num_blocks());
        assert!(layers.iter().all(|g| !g.is_empty()));
        assert_eq!(
            layers[0].len(),
            3,
            "the stem: convolution, batch norm's scale and shift"
        );
        let rest = GradientsParams::from_module(&mut grads, &net);
        let Backbone::MobileNetV2(m) = &net else {
            unreachable!()
        };
        let classifier = GradientsParams::from_module(&mut a.sum().backward(), &m.classifier);
        assert_eq!(classifier.len(), 2, "the classifier trains through logits");
        // Left: the final convolution's weights and batch norm, nothing of the classifier's.
        assert_eq!(rest.len(), 3);
    }
}
