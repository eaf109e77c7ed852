//! Backbones with pretrained ImageNet weights, and the metric head the trainer learns.
//!
//! - [`layers`]: the convolution + batch-norm + activation unit every backbone is built from.
//! - [`fused`]: convolution, bias, residual and activation in one pass, for inference.
//! - [`mobilenet_v2`], [`efficientnet_lite`], [`resnet`]: the networks, in the layouts of the
//!   PyTorch checkpoints they load.
//! - [`backbone`]: the catalogue (names, preprocessing, weight files) and the `Backbone` module.
//! - [`weights`]: fetching (pip, sha256) and locating weight files; loading never downloads.
//! - [`head`]: the linear projection + L2 normalisation trained for retrieval.
//! - [`network`]: backbone + optional head, the neural network that embeds images; a pretrained
//!   name or a checkpoint directory gives one.
//! - [`allocator`]: keeping freed tensor memory in the process instead of returning it to the
//!   operating system after every layer (twice the CPU throughput at large batches).
//! - [`device`]: choosing the compute device at run time (flex CPU, or wgpu with the feature).

pub mod allocator;
pub mod backbone;
pub mod device;
pub mod efficientnet_lite;
pub mod fused;
pub mod head;
pub mod interpolate;
pub mod layers;
pub mod mobilenet_v2;
pub mod network;
pub mod resnet;
pub mod weights;

pub use backbone::{Backbone, BackboneKind};
pub use head::MetricHead;
pub use network::{ModelSpec, Network};
