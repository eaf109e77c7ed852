//! The training configuration: data, not code. Every key can be overridden on the command
//! line with `--set section.key=value` (the value parsed as TOML, else taken as a string).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use data::augment::AugmentConfig;
use model::BackboneKind;
use model::device::DeviceKind;
use model::network::EmbeddingOutput;
use serde::{Deserialize, Serialize};

use crate::mixstyle::MixStyleConfig;

/// A query/gallery pair evaluated after every epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationPair {
    pub name: String,
    pub query: PathBuf,
    pub gallery: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    Arcface,
    Triplet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mining {
    /// Per anchor: the farthest positive and the nearest negative (Hermans et al., 2017).
    BatchHard,
    /// Per positive pair: the nearest negative farther than the positive, else the farthest
    /// negative (Schroff et al., 2015; TensorFlow's semi-hard loss).
    SemiHard,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossConfig {
    pub kind: LossKind,
    /// ArcFace: additive angular margin (radians). Triplet: distance margin.
    pub margin: f64,
    /// ArcFace: logit scale.
    pub scale: f64,
    /// Triplet: how triplets are mined.
    pub mining: Mining,
    /// Triplet: squared Euclidean distances instead of plain.
    pub squared: bool,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            kind: LossKind::Arcface,
            margin: 0.3,
            scale: 30.0,
            mining: Mining::BatchHard,
            squared: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    Adamw,
    Sgd,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    /// Peak learning rate of the backbone (lower than the head's, to keep what it knows).
    pub lr_backbone: f64,
    pub lr_head: f64,
    /// Learning rate of the loss's own parameters (ArcFace class weights).
    pub lr_loss: f64,
    pub weight_decay: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Linear warm-up length, in epochs (fractional allowed), then cosine decay to zero.
    pub warmup_epochs: f64,
    /// Layer-wise learning rates (Clark et al., ELECTRA, ICLR 2020; Bao et al., BEiT, ICLR
    /// 2022): backbone block `i` of `n` trains at `lr_backbone · layer_decay^(n − 1 − i)`, a
    /// trained stem (`freeze.stem = false`) at `lr_backbone · layer_decay^n`, the final
    /// convolution and classifier at `lr_backbone`. Below 1 the early blocks move
    /// less (the usual use); above 1, more. Absent: one rate for the whole backbone.
    pub layer_decay: Option<f64>,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::Adamw,
            lr_backbone: 1e-4,
            lr_head: 1e-3,
            lr_loss: 1e-2,
            weight_decay: 1e-4,
            momentum: 0.9,
            warmup_epochs: 1.0,
            layer_decay: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FreezeConfig {
    /// Epochs at the start with the whole backbone frozen (head and loss train alone).
    pub backbone_epochs: usize,
    /// After that, how many of the backbone's last blocks train (the stem and earlier blocks
    /// stay frozen). A large number unfreezes everything but the stem.
    pub trainable_blocks: usize,
    /// Keep batch-norm running statistics frozen (P×K batches are small and class-skewed).
    pub batch_norm: bool,
    /// Keep the stem (the first convolution) frozen while blocks train; `false` trains it
    /// with them, under `layer_decay` at one step of decay above the first block.
    pub stem: bool,
}

impl Default for FreezeConfig {
    fn default() -> Self {
        Self {
            backbone_epochs: 1,
            trainable_blocks: 4,
            batch_norm: true,
            stem: true,
        }
    }
}

/// `[soup]`: a model soup of seeds (Wortsman et al., "Model soups", ICML 2022). The run is
/// trained once per seed, each into `out_dir/seed-N` (a run of its own: `metrics.csv`, its
/// kept model, `--resume`), and the mean of their kept models, weight by weight, is saved in
/// `out_dir`: one model at one model's cost to embed. Every seed starts from the same
/// pretrained backbone, so the fine-tuned networks lie in one basin and average well.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoupConfig {
    /// One run each, in this order (`seed` is not used); at least two, no repeats.
    pub seeds: Vec<u64>,
}

/// `[distill_classes]`: KL(teacher ‖ student) between class probabilities at a temperature,
/// times the temperature squared (so its gradients keep their size as it changes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassDistillConfig {
    pub weight: f64,
    pub temperature: f64,
}

impl Default for ClassDistillConfig {
    fn default() -> Self {
        Self {
            weight: 1.0,
            temperature: 2.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectionMetric {
    Score,
    Top1,
    Map10,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectionRule {
    /// The first validation pair alone.
    First,
    /// The mean over validation pairs: a gain on val cannot hide a loss on novel species.
    Mean,
    /// The worst validation pair.
    Min,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelectionConfig {
    pub metric: SelectionMetric,
    pub rule: SelectionRule,
}

impl Default for SelectionConfig {
    fn default() -> Self {
        Self {
            metric: SelectionMetric::Score,
            rule: SelectionRule::Mean,
        }
    }
}

impl OptimizerConfig {
    /// A fresh optimiser of this kind (one per parameter group; learning rates come per step).
    pub fn build(&self) -> burn::optim::ModuleOptimizer {
        use burn::optim::decay::WeightDecayConfig;
        use burn::optim::momentum::MomentumConfig;
        use burn::optim::{AdamWConfig, SgdConfig};
        match self.kind {
            OptimizerKind::Adamw => AdamWConfig::new()
                .with_weight_decay(self.weight_decay as f32)
                .init(),
            OptimizerKind::Sgd => SgdConfig::new()
                .with_weight_decay(Some(WeightDecayConfig::new(self.weight_decay as f32)))
                .with_momentum(Some(
                    MomentumConfig::new()
                        .with_momentum(self.momentum)
                        .with_dampening(0.0),
                ))
                .init(),
        }
    }
}

impl FreezeConfig {
    /// Whether any backbone parameter trains in `epoch` (counted from 0).
    pub fn backbone_trains(&self, epoch: usize) -> bool {
        epoch >= self.backbone_epochs && self.trainable_blocks > 0
    }
}

impl SelectionConfig {
    /// The value an epoch is ranked by, from its validation figures (0 without any).
    pub fn value(&self, validation: &[(String, retrieval::metrics::Metrics)]) -> f64 {
        let pick = |m: &retrieval::metrics::Metrics| match self.metric {
            SelectionMetric::Score => m.score,
            SelectionMetric::Top1 => m.top1 * 1000.0,
            SelectionMetric::Map10 => m.map10 * 1000.0,
        };
        let values: Vec<f64> = validation.iter().map(|(_, m)| pick(m)).collect();
        if values.is_empty() {
            return 0.0;
        }
        match self.rule {
            SelectionRule::First => values[0],
            SelectionRule::Mean => values.iter().sum::<f64>() / values.len() as f64,
            SelectionRule::Min => values.iter().cloned().fold(f64::INFINITY, f64::min),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Training folder with class sub-folders.
    pub train: PathBuf,
    /// More training folders (e.g. a `collect` collection); classes of the same name
    /// merge with `train`'s. Collect with `--protect` on the validation folders first.
    pub extra_train: Vec<PathBuf>,
    /// Folders of drawings (e.g. `collect --icons`), trained like `extra_train` but left out
    /// of the distillation term: the pretrained network places drawings among objects, and
    /// pulling them back there would undo what training teaches them.
    pub drawings_train: Vec<PathBuf>,
    /// Evaluated after every epoch, in order; the first is "val".
    pub validation: Vec<ValidationPair>,
    pub backbone: BackboneKind,
    /// Start from the ImageNet weights (false: random initialisation, for tests and ablations).
    pub pretrained: bool,
    /// Input side of the saved model and of validation; absent: the backbone's own (224 for
    /// MobileNetV2, 240 for EfficientNet-Lite1).
    pub image_size: Option<u32>,
    /// Input side of the training views; absent: `image_size`. Training below the side the
    /// model embeds at costs less a step and, with random-resized crops, matches the apparent
    /// object size of the uncropped evaluation images better (Touvron et al., "Fixing the
    /// train-test resolution discrepancy", NeurIPS 2019).
    pub train_image_size: Option<u32>,
    /// Output width of the metric head.
    pub embedding_dim: usize,
    /// Which vector the saved model uses as its embedding.
    pub output: EmbeddingOutput,
    /// The saved model averages each embedding with the mirrored image's (validation too).
    pub flip: bool,
    pub loss: LossConfig,
    /// P classes a batch.
    pub p: usize,
    /// K images a class in a batch.
    pub k: usize,
    pub epochs: usize,
    pub optimizer: OptimizerConfig,
    pub freeze: FreezeConfig,
    /// Weight of the distillation term: squared distance between the fine-tuned backbone's
    /// normalised features and the frozen pretrained backbone's, on the same batch.
    pub distill_weight: f64,
    /// Class-probability distillation across renderings (`[distill_classes]`): the pretrained
    /// classifier's ImageNet probabilities for each photo are the target of the same
    /// classifier (held fixed) over the fine-tuned features of its view as trained, a
    /// rendering or the photo (Hinton et al., 2015). Absent: none.
    pub distill_classes: Option<ClassDistillConfig>,
    /// WiSE-FT: the model validated and saved each epoch is `wise_ft · fine-tuned +
    /// (1 − wise_ft) · pretrained`, backbone weight by weight (the head as trained); training
    /// goes on from the fine-tuned weights. Absent: the fine-tuned weights themselves.
    pub wise_ft: Option<f64>,
    /// Checkpoint averaging (a uniform model soup of one run, Wortsman et al., ICML 2022;
    /// stochastic weight averaging, Izmailov et al., UAI 2018): from this epoch on, the model
    /// validated and saved is the mean of the weights at the end of every epoch since (epoch
    /// `soup_from_epoch` counted from 1); training goes on from its own weights. Absent: each
    /// epoch's weights themselves.
    pub soup_from_epoch: Option<usize>,
    pub augment: AugmentConfig,
    /// Style mixing inside the backbone during training (`[mixstyle]`, see
    /// [`MixStyleConfig`]). Absent: none.
    pub mixstyle: Option<MixStyleConfig>,
    /// Train once per seed and keep the mean of the runs (`[soup]`, see [`SoupConfig`]).
    /// Absent: one run, with `seed`.
    pub soup: Option<SoupConfig>,
    pub seed: u64,
    pub out_dir: PathBuf,
    pub device: DeviceKind,
    pub selection: SelectionConfig,
    /// Evaluate the untrained model first and log it as epoch 0 (the baseline every epoch is
    /// compared with).
    pub baseline: bool,
    /// Images a forward pass during validation.
    pub eval_batch_size: usize,
    /// Stop after this many training batches in total (absent: no limit). For smoke tests.
    pub max_steps: Option<usize>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            train: PathBuf::from("../shared/datasets/animals10/train"),
            extra_train: Vec::new(),
            drawings_train: Vec::new(),
            validation: Vec::new(),
            backbone: BackboneKind::MobileNetV2,
            pretrained: true,
            image_size: None,
            train_image_size: None,
            embedding_dim: 256,
            output: EmbeddingOutput::Head,
            flip: false,
            loss: LossConfig::default(),
            p: 8,
            k: 4,
            epochs: 8,
            optimizer: OptimizerConfig::default(),
            freeze: FreezeConfig::default(),
            distill_weight: 0.0,
            distill_classes: None,
            wise_ft: None,
            soup_from_epoch: None,
            augment: AugmentConfig::default(),
            mixstyle: None,
            soup: None,
            seed: 17,
            out_dir: PathBuf::from("checkpoints/run"),
            device: DeviceKind::Cpu,
            selection: SelectionConfig::default(),
            baseline: true,
            eval_batch_size: 32,
            max_steps: None,
        }
    }
}

/// Sets `a.b.c = value` in a TOML table, creating tables on the way.
fn set_key(root: &mut toml::Table, key: &str, value: &str) -> Result<()> {
    let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let parts: Vec<&str> = key.split('.').collect();
    let mut table = root;
    for part in &parts[..parts.len() - 1] {
        table = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
            .with_context(|| format!("--set {key}: {part} is not a table"))?;
    }
    table.insert(parts[parts.len() - 1].to_string(), parsed);
    Ok(())
}

impl TrainConfig {
    /// Reads a TOML file and applies `key=value` overrides.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        Self::parse(&text, overrides).with_context(|| format!("config {}", path.display()))
    }

    pub fn parse(text: &str, overrides: &[String]) -> Result<Self> {
        let mut table: toml::Table = toml::from_str(text)?;
        for o in overrides {
            let Some((key, value)) = o.split_once('=') else {
                bail!("--set {o:?}: expected key=value");
            };
            set_key(&mut table, key.trim(), value.trim())?;
        }
        let config: TrainConfig = toml::Value::Table(table).try_into()?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<()> {
        if self.p < 2 || self.k < 2 {
            bail!(
                "p and k must both be at least 2 (got p = {}, k = {})",
                self.p,
                self.k
            );
        }
        if self.epochs == 0 {
            bail!("epochs must be at least 1");
        }
        let o = &self.optimizer;
        for (name, value) in [
            ("optimizer.lr_backbone", o.lr_backbone),
            ("optimizer.lr_head", o.lr_head),
            ("optimizer.lr_loss", o.lr_loss),
            ("optimizer.weight_decay", o.weight_decay),
            ("optimizer.warmup_epochs", o.warmup_epochs),
            ("distill_weight", self.distill_weight),
        ]
        .into_iter()
        .chain(
            self.distill_classes
                .as_ref()
                .map(|c| ("distill_classes.weight", c.weight)),
        ) {
            if !(value.is_finite() && value >= 0.0) {
                bail!("{name} must be a finite number, 0 or more (got {value})");
            }
        }
        if let Some(d) = o.layer_decay
            && !(d.is_finite() && d > 0.0)
        {
            bail!("optimizer.layer_decay must be a finite number above 0 (got {d})");
        }
        if let Some(c) = &self.distill_classes {
            if !(c.temperature.is_finite() && c.temperature > 0.0) {
                bail!(
                    "distill_classes.temperature must be a finite number above 0 (got {})",
                    c.temperature
                );
            }
            if !self.pretrained {
                bail!(
                    "distill_classes distils the pretrained classifier: it needs pretrained = true"
                );
            }
        }
        if let Some(a) = self.wise_ft
            && !(0.0..=1.0).contains(&a)
        {
            bail!("wise_ft must lie between 0 and 1 (got {a})");
        }
        if let Some(from) = self.soup_from_epoch
            && !(1..=self.epochs).contains(&from)
        {
            bail!(
                "soup_from_epoch must name an epoch of the run, 1 to {} (got {from})",
                self.epochs
            );
        }
        if let Some(m) = &self.mixstyle {
            if !(0.0..=1.0).contains(&m.probability) {
                bail!(
                    "mixstyle.probability must lie between 0 and 1 (got {})",
                    m.probability
                );
            }
            if !(m.alpha.is_finite() && m.alpha > 0.0) {
                bail!(
                    "mixstyle.alpha must be a finite number above 0 (got {})",
                    m.alpha
                );
            }
            if m.strides.is_empty() {
                bail!("mixstyle.strides is empty: name at least one output stride (4, 8, 16)");
            }
        }
        if let Some(soup) = &self.soup {
            let mut seeds = soup.seeds.clone();
            seeds.sort_unstable();
            seeds.dedup();
            if seeds.len() != soup.seeds.len() || seeds.len() < 2 {
                bail!(
                    "soup.seeds must name at least two different seeds (got {:?})",
                    soup.seeds
                );
            }
        }
        if self.wise_ft.is_some() && !self.pretrained {
            bail!("wise_ft blends with the pretrained weights: it needs pretrained = true");
        }
        Ok(())
    }

    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_and_round_trip() {
        let text = r#"
            backbone = "mobilenet_v2"
            epochs = 3
            [loss]
            kind = "triplet"
        "#;
        let c = TrainConfig::parse(
            text,
            &[
                "loss.margin=0.2".into(),
                "optimizer.kind=sgd".into(),
                "out_dir=checkpoints/x".into(),
                "freeze.batch_norm=false".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.loss.kind, LossKind::Triplet);
        assert_eq!(c.loss.margin, 0.2);
        assert_eq!(c.optimizer.kind, OptimizerKind::Sgd);
        assert_eq!(c.out_dir, PathBuf::from("checkpoints/x"));
        assert!(!c.freeze.batch_norm);
        let again = TrainConfig::parse(&c.to_toml().unwrap(), &[]).unwrap();
        assert_eq!(again, c);
        assert!(TrainConfig::parse("epochs = 0", &[]).is_err());
        for bad in [
            "optimizer.lr_backbone=-1e-4",
            "optimizer.lr_head=-0.1",
            "optimizer.lr_loss=nan",
            "distill_weight=-1",
            "optimizer.layer_decay=0",
            "optimizer.layer_decay=inf",
            "distill_classes.temperature=0",
            "distill_classes.weight=-1",
        ] {
            let e = TrainConfig::parse(text, &[bad.into()]).unwrap_err();
            let key = bad.split('=').next().unwrap();
            assert!(format!("{e:#}").contains(key), "{bad}: {e:#}");
        }
        assert!(TrainConfig::parse("nonsense = 1", &[]).is_err());
        assert!(TrainConfig::parse("", &["noequals".into()]).is_err());
    }

    /// One `--set mixstyle.KEY=...` turns style mixing on with the other keys at their
    /// defaults; out-of-range values are refused by name.
    #[test]
    fn mixstyle_turns_on_with_one_key() {
        assert_eq!(TrainConfig::parse("", &[]).unwrap().mixstyle, None);
        let c = TrainConfig::parse("", &["mixstyle.alpha=0.3".into()]).unwrap();
        let m = c.mixstyle.unwrap();
        assert_eq!(
            (m.alpha, m.probability, m.strides),
            (0.3, 0.5, vec![4, 8, 16])
        );
        for bad in [
            "mixstyle.probability=1.5",
            "mixstyle.alpha=0",
            "mixstyle.strides=[]",
        ] {
            let e = TrainConfig::parse("", &[bad.into()]).unwrap_err();
            let key = bad.split('=').next().unwrap();
            assert!(format!("{e:#}").contains(key), "{bad}: {e:#}");
        }
    }

    /// Every training config shipped in `configs/` parses (deny_unknown_fields catches a
    /// misspelt key), and the domains recipes turn their renderings on.
    #[test]
    fn shipped_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut parsed = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            // collect*.toml are label maps for `collect`, not training configs.
            if !name.ends_with(".toml") || name.starts_with("collect") {
                continue;
            }
            let c = TrainConfig::load(&path, &[]).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            if name.starts_with("domains") {
                assert!(c.augment.sketch + c.augment.contours > 0.0, "{name}");
            }
            // Selection and reporting see every visible set, val first.
            let names: Vec<&str> = c.validation.iter().map(|v| v.name.as_str()).collect();
            assert_eq!(names, ["val", "photos", "novel", "domains"], "{name}");
            parsed += 1;
        }
        assert!(
            parsed >= 4,
            "only {parsed} configs found in {}",
            dir.display()
        );
    }
}
