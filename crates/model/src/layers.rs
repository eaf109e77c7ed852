//! Convolution + batch norm + activation: the unit all three backbone families are made of.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::ops::ConvOptions;

use crate::fused::{ConvParts, conv2d_fused, inverted_residual_fused};

/// Activation after a [`ConvBn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    #[default]
    None,
    Relu,
    /// `min(max(x, 0), 6)`, used by MobileNetV2 and EfficientNet-Lite.
    Relu6,
}

/// ReLU6 as `relu` then `clamp_max`: the same values (NaN stays NaN), but the flex backend's
/// two-sided `clamp` checks its bounds for NaN at every element and runs as a scalar loop,
/// which took a third of a MobileNetV2 forward; these two vectorise (benches/examples/activation.rs).
fn relu6<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    burn::tensor::activation::relu(x).clamp_max(6.0)
}

impl Activation {
    /// `activation(y + residual)`, as separate passes (the fused call's composition).
    pub fn after_residual(self, y: Tensor<4>, residual: Option<Tensor<4>>) -> Tensor<4> {
        self.forward(match residual {
            Some(r) => y + r,
            None => y,
        })
    }

    pub fn forward<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Activation::None => x,
            Activation::Relu => burn::tensor::activation::relu(x),
            Activation::Relu6 => relu6(x),
        }
    }
}

/// How a [`ConvBn`] pads its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// `(k - 1) / 2` on every side (PyTorch models).
    Symmetric,
    /// TensorFlow "SAME": the output is `ceil(in / stride)`, an odd total puts the extra pixel
    /// at the bottom/right (EfficientNet-Lite).
    TfSame,
}

/// Settings of one [`ConvBn`].
#[derive(Debug, Clone, Copy)]
pub struct ConvBnConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub groups: usize,
    pub padding: Padding,
    pub activation: Activation,
    pub bn_epsilon: f64,
}

impl ConvBnConfig {
    pub fn new(in_channels: usize, out_channels: usize, kernel: usize) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel,
            stride: 1,
            groups: 1,
            padding: Padding::Symmetric,
            activation: Activation::None,
            bn_epsilon: 1e-5,
        }
    }
    pub fn stride(mut self, stride: usize) -> Self {
        self.stride = stride;
        self
    }
    /// Depthwise: one group a channel.
    pub fn depthwise(mut self) -> Self {
        self.groups = self.in_channels;
        self
    }
    pub fn activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }
    pub fn padding(mut self, padding: Padding) -> Self {
        self.padding = padding;
        self
    }
    pub fn bn_epsilon(mut self, epsilon: f64) -> Self {
        self.bn_epsilon = epsilon;
        self
    }

    pub fn init(&self, device: &Device) -> ConvBn {
        let padding = match self.padding {
            Padding::Symmetric => {
                let p = (self.kernel - 1) / 2;
                PaddingConfig2d::Explicit(p, p, p, p)
            }
            Padding::TfSame => PaddingConfig2d::Same,
        };
        ConvBn {
            conv: Conv2dConfig::new(
                [self.in_channels, self.out_channels],
                [self.kernel, self.kernel],
            )
            .with_stride([self.stride, self.stride])
            .with_groups(self.groups)
            .with_padding(padding)
            .with_bias(false)
            .init(device),
            bn: BatchNormConfig::new(self.out_channels)
                .with_epsilon(self.bn_epsilon)
                .init(device),
            activation: self.activation,
            folded: false,
        }
    }
}

/// A bias-free convolution, batch norm, then an activation.
#[derive(Module, Debug)]
pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: BatchNorm,
    #[module(skip)]
    pub activation: Activation,
    /// The batch norm has been folded into `conv` (inference only; see [`Self::fold`]).
    #[module(skip)]
    pub folded: bool,
}

impl ConvBn {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_residual(x, None, self.activation)
    }

    /// `activation(bn(conv(x)) + residual)`: the unit's own activation or another (ResNet's
    /// blocks apply their ReLU after the shortcut). Outside autodiff the bias, residual and
    /// activation are applied as the convolution writes its output ([`crate::fused`]).
    pub fn forward_residual(
        &self,
        x: Tensor<4>,
        residual: Option<Tensor<4>>,
        activation: Activation,
    ) -> Tensor<4> {
        let [_, _, height, width] = x.dims();
        if let Some((parts, options)) = self.inference(x.device().is_autodiff(), [height, width]) {
            let (weight, bias) = (parts.weight, parts.bias);
            return conv2d_fused(x, weight, bias, residual, options, activation);
        }
        activation.after_residual(self.bn.forward(self.conv.forward(x)), residual)
    }

    /// The weight and bias the convolution runs with when the batch norm is an affine map
    /// (folded, or with its running statistics: Burn's `BatchNorm` takes its inference path
    /// everywhere but under autodiff in training), with the unit's activation and the options
    /// for an input of `[height, width]`; `None` where the batch norm trains.
    pub fn inference(
        &self,
        autodiff: bool,
        [height, width]: [usize; 2],
    ) -> Option<(ConvParts, ConvOptions<2>)> {
        let options = self.conv_options(height, width);
        let (weight, bias) = if self.folded {
            let weight = self.conv.weight.val();
            let bias = match &self.conv.bias {
                Some(bias) => bias.val(),
                None => Tensor::zeros([weight.dims()[0]], &weight.device()),
            };
            (weight, bias)
        } else if !(autodiff && self.bn.training.is_enabled()) {
            // Folded into the convolution on the fly.
            self.folded_weight_and_bias()
        } else {
            return None;
        };
        let activation = self.activation;
        Some((
            ConvParts {
                weight,
                bias,
                activation,
            },
            options,
        ))
    }

    /// A 1×1 convolution at stride 1 without padding: one output position an input position.
    pub fn is_pointwise(&self) -> bool {
        let c = &self.conv;
        c.kernel_size == [1, 1]
            && c.stride == [1, 1]
            && c.groups == 1
            && matches!(
                c.padding,
                PaddingConfig2d::Valid
                    | PaddingConfig2d::Same
                    | PaddingConfig2d::Explicit(0, 0, 0, 0)
            )
    }

    /// The convolution's weight and bias with the batch norm's running statistics and affine
    /// parameters folded in: `w·γ/σ` and `β − μ·γ/σ` (plus the convolution's own bias, scaled).
    ///
    /// With running statistics (inference, or training with the statistics frozen: the
    /// trainer's default) the batch norm is an affine map per channel, `x·γ/σ + (β − μ·γ/σ)`,
    /// so it is folded into the convolution's weight and bias on the fly (gradients reach γ
    /// and β through the small weight and bias tensors). Burn's batch norm would spend four
    /// passes over the activation forward and as many backward; this costs the bias add and
    /// its per-channel sum.
    fn folded_weight_and_bias(&self) -> (Tensor<4>, Tensor<1>) {
        let bn = &self.bn;
        let scale = bn.gamma.val() / bn.running_var.value().add_scalar(bn.epsilon).sqrt();
        let mut shift = bn.beta.val() - bn.running_mean.value() * scale.clone();
        if let Some(bias) = &self.conv.bias {
            shift = shift + bias.val() * scale.clone();
        }
        let weight = self.conv.weight.val();
        let out = weight.dims()[0];
        (weight * scale.reshape([out, 1, 1, 1]), shift)
    }

    /// The convolution's options for an input of `height × width`, as `nn::Conv2d::forward`
    /// builds them (its padding arithmetic is private to burn-nn).
    fn conv_options(&self, height: usize, width: usize) -> ConvOptions<2> {
        let c = &self.conv;
        // TensorFlow's "same": the output is ⌈in / stride⌉, the extra padding at the end.
        let same = |axis: usize, size: usize| {
            let out = size.div_ceil(c.stride[axis]);
            let total = ((out.max(1) - 1) * c.stride[axis] + c.kernel_size[axis])
                .saturating_sub(size)
                * usize::from(out > 0);
            (total / 2, total - total / 2)
        };
        let padding = match c.padding {
            PaddingConfig2d::Same => [same(0, height), same(1, width)],
            PaddingConfig2d::Valid => [(0, 0); 2],
            PaddingConfig2d::Explicit(top, left, bottom, right) => [(top, bottom), (left, right)],
        };
        ConvOptions::new_with_padding(c.stride, padding, c.dilation, c.groups)
    }

    /// Folds the batch norm's running statistics and affine parameters into the convolution
    /// (`w' = w·γ/σ`, `b' = β − μ·γ/σ`), saving one pass over every activation map. For
    /// inference only: training would need the batch norm back, and the flag is not saved
    /// with the weights.
    pub fn fold(mut self) -> Self {
        if self.folded {
            return self;
        }
        let (weight, bias) = self.folded_weight_and_bias();
        self.conv.weight = Param::from_tensor(weight);
        self.conv.bias = Some(Param::from_tensor(bias));
        self.folded = true;
        self
    }
}

/// Global average pooling: `[B, C, H, W]` to `[B, C]`, one mean over each plane's `H·W`
/// contiguous values (two means, over the width then the height, took ten times as long on
/// the flex backend: 52 against 5 µs for MobileNetV2's `[1, 1280, 7, 7]`, a hundredth of a
/// lone image's pass).
pub fn global_avg_pool(x: Tensor<4>) -> Tensor<2> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h * w]).mean_dim(2).reshape([b, c])
}

/// Expand (1×1), depthwise (k×k), project (1×1), with a residual when shapes allow: the block
/// of MobileNetV2 and of EfficientNet-Lite (which drops squeeze-excite).
#[derive(Module, Debug)]
pub struct InvertedResidual {
    pub expand: Option<ConvBn>,
    pub depthwise: ConvBn,
    pub project: ConvBn,
    #[module(skip)]
    pub residual: bool,
}

impl InvertedResidual {
    /// Every batch norm folded into its convolution (inference only).
    pub fn fold(self) -> Self {
        Self {
            expand: self.expand.map(ConvBn::fold),
            depthwise: self.depthwise.fold(),
            project: self.project.fold(),
            residual: self.residual,
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        if let Some(expand) = &self.expand
            && !x.device().is_autodiff()
            && expand.is_pointwise()
            && self.project.is_pointwise()
        {
            // Inference: the whole block in bands of rows.
            let [_, _, height, width] = x.dims();
            let (e, _) = expand
                .inference(false, [height, width])
                .expect("not autodiff");
            let (d, options) = self
                .depthwise
                .inference(false, [height, width])
                .expect("not autodiff");
            // A 1×1 convolution's options do not depend on the plane's size.
            let (p, _) = self
                .project
                .inference(false, [height, width])
                .expect("not autodiff");
            return inverted_residual_fused(x, e, d, options, p, self.residual);
        }
        let y = match &self.expand {
            Some(expand) => self.depthwise.forward(expand.forward(x.clone())),
            None => self.depthwise.forward(x.clone()),
        };
        let shortcut = self.residual.then_some(x);
        self.project
            .forward_residual(y, shortcut, self.project.activation)
    }
}

/// Stem, inverted-residual blocks, head convolution: the last feature map `[B, C, H/32, W/32]`
/// of both mobile families (global pooling gives their features).
pub fn mobile_feature_map(
    stem: &ConvBn,
    blocks: &[InvertedResidual],
    head: &ConvBn,
    x: Tensor<4>,
    after_block: BlockHook,
) -> Tensor<4> {
    let mut x = stem.forward(x);
    for (i, block) in blocks.iter().enumerate() {
        x = after_block(i, block.forward(x));
    }
    head.forward(x)
}

/// Called with each block's index (from 0) and output, returning what the next block sees: how
/// training changes activations inside the backbone (the trainer's style mixing). Inference
/// passes [`no_hook`].
pub type BlockHook<'a> = &'a mut dyn FnMut(usize, Tensor<4>) -> Tensor<4>;

/// The hook that changes nothing.
pub fn no_hook(_block: usize, x: Tensor<4>) -> Tensor<4> {
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::ModuleMapper;

    struct FreezeStatistics;
    impl ModuleMapper for FreezeStatistics {
        fn map_flag(&mut self, flag: Param<burn::module::Flag>) -> Param<burn::module::Flag> {
            flag.with_value(false)
        }
    }

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104729) % 1000) as f32 / 500.0) - 1.0)
            .collect()
    }

    /// Each `(image, channel)` is the mean of its plane, on planes that are not square.
    #[test]
    fn global_avg_pool_is_each_planes_mean() {
        let device = Device::flex();
        let (b, c, h, w) = (2, 3, 5, 7);
        let v = values(b * c * h * w, 3);
        let x = Tensor::<1>::from_floats(v.as_slice(), &device).reshape([b, c, h, w]);
        let got = global_avg_pool(x).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(got.len(), b * c);
        for (plane, &g) in v.chunks(h * w).zip(&got) {
            let want = plane.iter().map(|&x| x as f64).sum::<f64>() / (h * w) as f64;
            assert!((g as f64 - want).abs() < 1e-6, "{g} against {want}");
        }
    }

    /// The expansions of the mobile blocks take the banded path; anything that is not one
    /// output position an input position does not.
    #[test]
    fn only_pointwise_convolutions_count_as_expansions() {
        let device = Device::flex();
        assert!(ConvBnConfig::new(16, 96, 1).init(&device).is_pointwise());
        assert!(
            !ConvBnConfig::new(16, 96, 1)
                .stride(2)
                .init(&device)
                .is_pointwise()
        );
        assert!(!ConvBnConfig::new(16, 96, 3).init(&device).is_pointwise());
        assert!(
            !ConvBnConfig::new(16, 16, 1)
                .depthwise()
                .init(&device)
                .is_pointwise()
        );
    }

    /// With running statistics, the on-the-fly fold gives the output and the gradients of
    /// Burn's batch norm after the convolution, for symmetric and TensorFlow-"same" padding,
    /// strided, depthwise and dense.
    #[test]
    fn frozen_statistics_fold_matches_the_batch_norm() {
        let device = Device::flex().autodiff();
        for (config, side) in [
            ConvBnConfig::new(3, 8, 3)
                .stride(2)
                .padding(Padding::TfSame)
                .activation(Activation::Relu6),
            ConvBnConfig::new(6, 6, 5)
                .depthwise()
                .padding(Padding::TfSame),
            ConvBnConfig::new(6, 6, 3).depthwise().stride(2),
            ConvBnConfig::new(5, 7, 1).activation(Activation::Relu),
        ]
        .into_iter()
        .zip([9, 8, 7, 6])
        {
            let mut layer = config.init(&device);
            let c = config.out_channels;
            let vector =
                |seed| Tensor::<1>::from_data(TensorData::new(values(c, seed), [c]), &device);
            layer.bn.running_mean = burn::module::RunningState::new(vector(1) * 0.3);
            layer.bn.running_var = burn::module::RunningState::new(vector(2).abs().add_scalar(0.2));
            layer.bn.gamma = Param::from_tensor(vector(3));
            layer.bn.beta = Param::from_tensor(vector(4));
            let layer = layer.map(&mut FreezeStatistics);
            let shape = [2, config.in_channels, side, side];
            let n = shape.iter().product();
            let x = Tensor::<4>::from_data(TensorData::new(values(n, 5), shape), &device)
                .require_grad();
            let folded = layer.forward(x.clone());
            let reference = layer
                .activation
                .forward(layer.bn.forward(layer.conv.forward(x.clone())));
            let close = |a: Tensor<4>, b: Tensor<4>, what: &str| {
                let (a, b) = (a.into_data(), b.into_data());
                assert_eq!(a.shape(), b.shape(), "{what}");
                let (a, b) = (
                    a.try_to_vec::<f32>().unwrap(),
                    b.try_to_vec::<f32>().unwrap(),
                );
                for (p, q) in a.iter().zip(&b) {
                    assert!(
                        (p - q).abs() <= 1e-4 * (1.0 + q.abs()),
                        "{what}: {p} vs {q}"
                    );
                }
            };
            close(folded.clone().inner(), reference.clone().inner(), "output");
            let weights = Tensor::<4>::from_data(
                TensorData::new(values(folded.shape().num_elements(), 6), folded.shape()),
                &device,
            );
            let g1 = (folded * weights.clone()).sum().backward();
            let g2 = (reference * weights).sum().backward();
            let grad4 = |t: &Tensor<4>, g| t.grad(g).unwrap();
            let grad1 = |t: Tensor<1>, g| t.grad(g).unwrap().reshape([1, 1, 1, c]);
            close(grad4(&x, &g1), grad4(&x, &g2), "input gradient");
            let w = layer.conv.weight.val();
            close(grad4(&w, &g1), grad4(&w, &g2), "weight gradient");
            close(
                grad1(layer.bn.gamma.val(), &g1),
                grad1(layer.bn.gamma.val(), &g2),
                "gamma gradient",
            );
            close(
                grad1(layer.bn.beta.val(), &g1),
                grad1(layer.bn.beta.val(), &g2),
                "beta gradient",
            );
        }
    }
}
