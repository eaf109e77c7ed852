//! Convolution + batch norm + activation: the unit all three backbone families are made of.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::prelude::*;

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
        let y = self.conv.forward(x);
        let y = if self.folded { y } else { self.bn.forward(y) };
        self.activation.forward(y)
    }

    /// Folds the batch norm's running statistics and affine parameters into the convolution
    /// (`w' = w·γ/σ`, `b' = β − μ·γ/σ`), saving one pass over every activation map. For
    /// inference only: training would need the batch norm back, and the flag is not saved
    /// with the weights.
    pub fn fold(mut self) -> Self {
        if self.folded {
            return self;
        }
        let scale = self.bn.gamma.val()
            / self
                .bn
                .running_var
                .value()
                .add_scalar(self.bn.epsilon)
                .sqrt();
        let mut shift = self.bn.beta.val() - self.bn.running_mean.value() * scale.clone();
        if let Some(bias) = &self.conv.bias {
            shift = shift + bias.val() * scale.clone();
        }
        let weight = self.conv.weight.val();
        let out = weight.dims()[0];
        self.conv.weight = Param::from_tensor(weight * scale.reshape([out, 1, 1, 1]));
        self.conv.bias = Some(Param::from_tensor(shift));
        self.folded = true;
        self
    }
}

/// Global average pooling: `[B, C, H, W]` to `[B, C]`.
pub fn global_avg_pool(x: Tensor<4>) -> Tensor<2> {
    let [b, c, _, _] = x.dims();
    x.mean_dim(3).mean_dim(2).reshape([b, c])
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
        let mut y = x.clone();
        if let Some(expand) = &self.expand {
            y = expand.forward(y);
        }
        y = self.project.forward(self.depthwise.forward(y));
        if self.residual { y + x } else { y }
    }
}

/// Stem, inverted-residual blocks, head convolution: the last feature map `[B, C, H/32, W/32]`
/// of both mobile families (global pooling gives their features).
pub fn mobile_feature_map(
    stem: &ConvBn,
    blocks: &[InvertedResidual],
    head: &ConvBn,
    x: Tensor<4>,
) -> Tensor<4> {
    let mut x = stem.forward(x);
    for block in blocks {
        x = block.forward(x);
    }
    head.forward(x)
}
