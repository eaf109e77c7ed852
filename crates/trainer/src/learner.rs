//! What training changes: the network (backbone and head), the ArcFace centres, and one
//! optimiser per parameter group; and the step that changes them.

use anyhow::{Result, bail};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;
use model::head::l2_normalize;
use model::{Backbone, BackboneKind, MetricHead, Network};

use crate::config::{LossKind, TrainConfig};
use crate::loss::arcface::{ArcFace, one_hot};
use crate::loss::triplet_loss;
use crate::mixstyle::StyleMix;

pub type Optimizer = burn::optim::ModuleOptimizer;

pub struct Learner {
    pub model: Network,
    pub arcface: Option<ArcFace>,
    pub opt_backbone: Optimizer,
    pub opt_head: Optimizer,
    pub opt_loss: Optimizer,
    /// The autodiff device everything trains on.
    pub device: Device,
    /// With `soup_from_epoch`: the mean of the epoch-end weights so far, and how many epochs
    /// it averages.
    pub soup: Option<(Network, usize)>,
}

/// Reads every float parameter, which draws the initial values of those not yet drawn.
struct Materialise;

impl burn::module::ModuleVisitor for Materialise {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
        param.val();
    }
}

/// One training batch: views (and, for distillation, the same views as photos) with labels.
pub struct Batch {
    pub views: Tensor<4>,
    pub photos: Option<Tensor<4>>,
    pub labels: Vec<usize>,
    /// Images from a drawings folder: no distillation term for them.
    pub drawing: Vec<bool>,
    /// Style mixings to apply after these backbone blocks (`mixstyle`; empty: none).
    pub styles: Vec<(usize, StyleMix)>,
}

/// Peak learning rates scaled by the schedule for this step.
pub struct Rates {
    pub backbone: Option<f64>,
    pub head: f64,
    pub loss: f64,
}

impl Learner {
    /// The backbone (pretrained or random), a fresh head and loss, fresh optimisers.
    pub fn new(config: &TrainConfig, classes: usize, size: u32, ad: &Device) -> Result<Self> {
        let kind: BackboneKind = config.backbone;
        let mut model = if config.pretrained {
            Network::pretrained(kind, ad)?
        } else {
            Network::new(kind, None, ad)
        };
        model.input_size = size;
        model.head = Some(MetricHead::new(
            kind.feature_dim(),
            config.embedding_dim,
            ad,
        ));
        model.output = config.output;
        model.flip = config.flip;
        let arcface = (config.loss.kind == LossKind::Arcface).then(|| {
            ArcFace::new(
                classes,
                config.embedding_dim,
                config.loss.margin,
                config.loss.scale,
                ad,
            )
        });
        // Burn draws a parameter's initial values when it is first read: read them all now,
        // in the order a first step reads them, while the caller holds the seeded generator.
        model.visit(&mut Materialise);
        if let Some(a) = &arcface {
            a.visit(&mut Materialise);
        }
        Ok(Self {
            model,
            arcface,
            opt_backbone: config.optimizer.build(),
            opt_head: config.optimizer.build(),
            opt_loss: config.optimizer.build(),
            device: ad.clone(),
            soup: None,
        })
    }

    /// Sets which backbone parameters train in `epoch`.
    pub fn for_epoch(mut self, config: &TrainConfig, epoch: usize) -> Self {
        let f = &config.freeze;
        let backbone = self.model.backbone;
        self.model.backbone = if !f.backbone_trains(epoch) {
            backbone.freeze()
        } else {
            let b = backbone.unfreeze().freeze_early(f.trainable_blocks);
            let b = if f.stem { b } else { b.unfreeze_stem() };
            if f.batch_norm {
                b.freeze_batch_norm_stats()
            } else {
                b
            }
        };
        self
    }

    /// Forward, loss (plus distillation toward `teacher` when the batch carries photos),
    /// backward, one optimiser step per group. Returns the updated learner and the loss; a
    /// non-finite loss is an error.
    pub fn step(
        mut self,
        batch: Batch,
        teacher: Option<&Backbone>,
        config: &TrainConfig,
        rates: &Rates,
    ) -> Result<(Self, f64)> {
        let ad = self.device.clone();
        let styles = &batch.styles;
        let features = self
            .model
            .backbone
            .features_with(batch.views, &mut |block, x| match styles
                .iter()
                .find(|(b, _)| *b == block)
            {
                Some((_, mix)) => mix.apply(x),
                None => x,
            });
        let head = self.model.head.as_ref().expect("training model has a head");
        let embeddings = head.forward(features.clone());
        let mut loss = match &self.arcface {
            Some(a) => a.forward(embeddings, one_hot(&batch.labels, a.centres.dims()[0], &ad)),
            None => {
                triplet_loss(
                    embeddings,
                    &batch.labels,
                    config.loss.mining,
                    config.loss.margin,
                    config.loss.squared,
                )
                .0
            }
        };
        // The teacher sees each view as a photo, before any sketch-like rendering.
        if let (Some(t), Some(photo)) = (teacher, batch.photos) {
            let taught = t.features(photo);
            if let Some(c) = &config.distill_classes {
                let target = t.class_logits(taught.clone()).autodiff();
                let student = self.model.backbone.class_logits(features.clone());
                let kl = class_divergence(student, target, c.temperature);
                if let Some(kl) = mean_over_photos(kl, &batch.drawing) {
                    loss = loss + kl.mul_scalar(c.weight);
                }
            }
            if config.distill_weight > 0.0 {
                let target = l2_normalize(taught).autodiff();
                if let Some(gap) = distillation(l2_normalize(features), target, &batch.drawing) {
                    loss = loss + gap.mul_scalar(config.distill_weight);
                }
            }
        }
        let value = loss.clone().into_scalar::<f32>() as f64;
        if !value.is_finite() {
            bail!("the loss became {value}");
        }
        let mut grads = loss.backward();
        let mut model = self.model;
        if let Some(lr) = rates.backbone {
            if let Some(decay) = config.optimizer.layer_decay {
                let layers = model.backbone.layer_gradients(&mut grads);
                let layer_lrs = layer_rates(lr, decay, layers.len());
                // A frozen layer's group is empty: no step to take.
                for (g, rate) in layers.into_iter().zip(layer_lrs) {
                    if !g.is_empty() {
                        model.backbone = self.opt_backbone.step(rate, model.backbone, g);
                    }
                }
            }
            let g = GradientsParams::from_module(&mut grads, &model.backbone);
            model.backbone = self.opt_backbone.step(lr, model.backbone, g);
        }
        self.model = model;
        let head = self.model.head.take().expect("head");
        let g = GradientsParams::from_module(&mut grads, &head);
        self.model.head = Some(self.opt_head.step(rates.head, head, g));
        if let Some(a) = self.arcface.take() {
            let g = GradientsParams::from_module(&mut grads, &a);
            self.arcface = Some(self.opt_loss.step(rates.loss, a, g));
        }
        Ok((self, value))
    }

    /// Adds the weights at the end of `epoch` (counted from 1) to the soup when
    /// `soup_from_epoch` says it has begun: the running mean of `n` epochs takes the new one
    /// at weight 1/n.
    pub fn add_to_soup(&mut self, config: &TrainConfig, epoch: usize) -> Result<()> {
        if config.soup_from_epoch.is_none_or(|from| epoch < from) {
            return Ok(());
        }
        let current = self.model.valid();
        self.soup = Some(match self.soup.take() {
            None => (current, 1),
            Some((soup, n)) => (
                model::interpolate::interpolate(current, &soup, 1.0 / (n + 1) as f64)?,
                n + 1,
            ),
        });
        Ok(())
    }

    /// The model an epoch validates and saves: the fine-tuned weights, or with `wise_ft`
    /// their blend with the pretrained backbone.
    pub fn kept_model(
        &self,
        pretrained: Option<&Backbone>,
        config: &TrainConfig,
    ) -> Result<Network> {
        let mut kept = match &self.soup {
            Some((soup, _)) => soup.clone(),
            None => self.model.valid(),
        };
        if let (Some(alpha), Some(pre)) = (config.wise_ft, pretrained) {
            kept.backbone = model::interpolate::interpolate(kept.backbone, pre, alpha)?;
        }
        Ok(kept)
    }
}

/// The learning rate of each of `n` layers (the stem, then the blocks) under layer-wise decay:
/// `peak · decay^(n − 1 − i)` for layer `i`, the last block at `peak`.
fn layer_rates(peak: f64, decay: f64, n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| peak * decay.powi((n - 1 - i) as i32))
        .collect()
}

/// Weights larger than this mean training diverged (pretrained weights stay below 100; a run
/// that blew up but stayed finite reached 1e38 and embedded like noise).
pub const DIVERGED_WEIGHT: f32 = 1e6;

/// The largest magnitude among a module's float parameters; NaN if any is NaN.
pub fn largest_weight<M: Module>(module: &M) -> f32 {
    struct Largest(f32);
    impl burn::module::ModuleVisitor for Largest {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            let m = param.val().abs().max().into_scalar::<f32>();
            if m.is_nan() || self.0.is_nan() {
                self.0 = f32::NAN;
            } else {
                self.0 = self.0.max(m);
            }
        }
    }
    let mut largest = Largest(0.0);
    module.visit(&mut largest);
    largest.0
}

/// An error when a model's weights diverged (non-finite or beyond [`DIVERGED_WEIGHT`]).
pub fn check_weights<M: Module>(module: &M) -> Result<()> {
    let largest = largest_weight(module);
    if largest.is_nan() || largest > DIVERGED_WEIGHT {
        bail!("the weights diverged (largest magnitude {largest:e}, above {DIVERGED_WEIGHT:e})");
    }
    Ok(())
}

/// The distillation term: the mean squared distance between each view's features and the
/// teacher's for its photo, over the batch's photos (images of a drawings folder left out);
/// `None` when the batch holds only drawings.
fn distillation(features: Tensor<2>, target: Tensor<2>, drawing: &[bool]) -> Option<Tensor<1>> {
    mean_over_photos((features - target).powf_scalar(2.0).sum_dim(1), drawing)
}

/// Each row's KL(teacher ‖ student) between class probabilities at temperature `t`, times
/// `t²`: `[B, 1]`.
fn class_divergence(student: Tensor<2>, teacher: Tensor<2>, t: f64) -> Tensor<2> {
    use burn::tensor::activation::log_softmax;
    let log_q = log_softmax(student.div_scalar(t), 1);
    let log_p = log_softmax(teacher.div_scalar(t), 1);
    (log_p.clone().exp() * (log_p - log_q))
        .sum_dim(1)
        .mul_scalar(t * t)
}

/// The mean of per-image values `[B, 1]` over the batch's photos (images of a drawings folder
/// left out); `None` when the batch holds only drawings.
fn mean_over_photos(gaps: Tensor<2>, drawing: &[bool]) -> Option<Tensor<1>> {
    let photos = drawing.iter().filter(|d| !**d).count();
    if photos == drawing.len() {
        return Some(gaps.mean());
    }
    if photos == 0 {
        return None;
    }
    let keep: Vec<f32> = drawing.iter().map(|d| if *d { 0.0 } else { 1.0 }).collect();
    let keep = Tensor::<2>::from_data(TensorData::new(keep, [drawing.len(), 1]), &gaps.device());
    Some((gaps * keep).sum().div_scalar(photos as f32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::tensor::Distribution;

    /// Drawings add nothing to the distillation term; photos are averaged.
    #[test]
    fn distillation_leaves_drawings_out() {
        let device = Device::flex();
        let t = |v: [f32; 6]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), [3, 2]), &device);
        let (features, target) = (t([1.0, 0.0, 5.0, 5.0, 0.0, 1.0]), t([0.0; 6]));
        let value = |d: &[bool]| {
            distillation(features.clone(), target.clone(), d).map(|g| g.into_scalar::<f32>())
        };
        // Gaps 1, 50 and 1: the drawing's 50 is left out.
        assert_eq!(value(&[false, true, false]), Some(1.0));
        assert!((value(&[false; 3]).unwrap() - 52.0 / 3.0).abs() < 1e-5);
        assert_eq!(value(&[true; 3]), None);
    }

    /// Every float parameter of a module, flattened in visiting order.
    fn flat_weights<M: Module>(module: &M) -> Vec<f32> {
        struct Collect(Vec<f32>);
        impl burn::module::ModuleVisitor for Collect {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                self.0
                    .extend(param.val().into_data().try_to_vec::<f32>().unwrap());
            }
        }
        let mut c = Collect(Vec::new());
        module.visit(&mut c);
        c.0
    }

    /// Summed absolute change of every parameter between two versions of a module.
    fn change<M: Module>(before: &M, after: &M) -> f64 {
        let (a, b) = (flat_weights(before), flat_weights(after));
        assert_eq!(a.len(), b.len());
        a.iter().zip(&b).map(|(x, y)| (x - y).abs() as f64).sum()
    }

    /// The class term is zero for identical logits, KL(p ‖ q)·t² otherwise, worked by hand
    /// for two classes.
    #[test]
    fn class_divergence_by_hand() {
        let device = Device::flex();
        let t = |v: [f32; 4]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), [2, 2]), &device);
        let kl = class_divergence(t([0.0, 2.0, 1.0, 1.0]), t([0.0, 2.0, 0.0, 2.0]), 2.0);
        let kl = kl.into_data().try_to_vec::<f32>().unwrap();
        assert!(kl[0].abs() < 1e-6, "{kl:?}");
        // Teacher at t = 2: p = softmax(0, 1) = (0.2689, 0.7311); student q = (0.5, 0.5).
        let p = [1.0 / (1.0 + 1f64.exp()), 1.0 / (1.0 + (-1f64).exp())];
        let want = 4.0 * p.iter().map(|p| p * (p / 0.5).ln()).sum::<f64>();
        assert!(
            (kl[1] as f64 - want).abs() < 1e-5,
            "{} against {want}",
            kl[1]
        );
    }

    /// With `layer_decay`, block `i` of `n` moves by `decay^(n − 1 − i)` times what it moves
    /// at the one backbone rate (AdamW's first step is linear in its rate), a trained stem by
    /// `decay^n`, and the final convolution by the same.
    #[test]
    fn layer_decay_scales_each_blocks_step() {
        let ad = Device::flex().autodiff();
        let text = "backbone = \"mobilenet_v2\"\npretrained = false";
        let all = [
            "freeze.trainable_blocks=100".into(),
            "freeze.stem=false".into(),
        ];
        let plain = TrainConfig::parse(text, &all).unwrap();
        let decayed = TrainConfig::parse(
            text,
            &[
                all[0].clone(),
                all[1].clone(),
                "optimizer.layer_decay=0.8".into(),
            ],
        )
        .unwrap();
        let start = Learner::new(&plain, 2, 32, &ad)
            .unwrap()
            .for_epoch(&plain, 1);
        let copy = |l: &Learner, c: &TrainConfig| Learner {
            model: l.model.clone(),
            arcface: l.arcface.clone(),
            opt_backbone: c.optimizer.build(),
            opt_head: c.optimizer.build(),
            opt_loss: c.optimizer.build(),
            device: ad.clone(),
            soup: None,
        };
        let views = Tensor::<4>::random([4, 3, 32, 32], Distribution::Normal(0.0, 1.0), &ad);
        let rates = Rates {
            backbone: Some(1e-2),
            head: 1e-3,
            loss: 1e-2,
        };
        let stepped = |c: &TrainConfig| {
            let batch = Batch {
                views: views.clone(),
                photos: None,
                labels: vec![0, 0, 1, 1],
                drawing: vec![false; 4],
                styles: Vec::new(),
            };
            let learner = copy(&start, c).for_epoch(c, 1);
            learner.step(batch, None, c, &rates).unwrap().0
        };
        let (a, b) = (stepped(&plain), stepped(&decayed));
        // By default the stem stays frozen while every block trains.
        let still = stepped(&TrainConfig::parse(text, &all[..1]).unwrap());
        let blocks = |l: &Learner| match &l.model.backbone {
            Backbone::MobileNetV2(m) => (m.blocks.clone(), m.head.clone(), m.stem.clone()),
            _ => unreachable!(),
        };
        let ((before, head0, stem0), (after_a, head_a, stem_a), (after_b, head_b, stem_b)) =
            (blocks(&start), blocks(&a), blocks(&b));
        let n = before.len();
        assert_eq!(
            change(&stem0, &blocks(&still).2),
            0.0,
            "a frozen stem moved"
        );
        let ratio = change(&stem0, &stem_b) / change(&stem0, &stem_a);
        let want = 0.8f64.powi(n as i32);
        assert!(
            (ratio / want - 1.0).abs() < 1e-2,
            "stem: {ratio} against {want}"
        );
        for i in [0, n / 2, n - 1] {
            let ratio = change(&before[i], &after_b[i]) / change(&before[i], &after_a[i]);
            let want = 0.8f64.powi((n - 1 - i) as i32);
            assert!(
                (ratio / want - 1.0).abs() < 1e-2,
                "block {i}: {ratio} against {want}"
            );
        }
        let ratio = change(&head0, &head_b) / change(&head0, &head_a);
        assert!((ratio - 1.0).abs() < 1e-2, "final convolution: {ratio}");
        assert_eq!(layer_rates(1.0, 0.5, 3), [0.25, 0.5, 1.0]);
    }

    /// A model whose weights blew up but stayed finite is caught, and so is NaN; a pretrained
    /// network passes.
    #[test]
    fn diverged_weights_are_caught() {
        let device = Device::flex();
        let mut head = MetricHead::new(8, 4, &device);
        assert!(check_weights(&head).is_ok());
        let w = head.projection.weight.val();
        head.projection.weight = Param::from_tensor(w.clone().mul_scalar(1e36));
        let err = check_weights(&head).unwrap_err().to_string();
        assert!(err.contains("diverged"), "{err}");
        head.projection.weight = Param::from_tensor(w.mul_scalar(f32::NAN));
        assert!(largest_weight(&head).is_nan());
        assert!(check_weights(&head).is_err());
    }
}
