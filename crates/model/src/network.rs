//! The neural network that turns a batch of images into embeddings: a backbone and, once
//! trained, a metric head. (Retrieval wraps it, or a hand-made descriptor, as a `Member` of an
//! `Embedder`.)
//!
//! `--model` everywhere takes a [`ModelSpec`]: a pretrained backbone name (zero-shot: the
//! L2-normalised pooled features) or a checkpoint directory written by the trainer
//! (`model.json` + `model.safetensors`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::prelude::*;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use data::{Preprocess, write_atomic};
use serde::{Deserialize, Serialize};

use crate::backbone::{Backbone, BackboneKind};
use crate::head::{MetricHead, l2_normalize};
use crate::weights;

/// File names inside a checkpoint directory.
pub const META_FILE: &str = "model.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// What `--model` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    Pretrained(BackboneKind),
    Checkpoint(PathBuf),
}

impl ModelSpec {
    /// A directory holding `model.json` is a checkpoint; anything else must be a backbone name.
    pub fn parse(s: &str) -> Result<Self> {
        let path = Path::new(s);
        if path.join(META_FILE).is_file() {
            return Ok(ModelSpec::Checkpoint(path.to_path_buf()));
        }
        if path.is_dir() {
            bail!(
                "{} is a folder without {META_FILE}: not a trained checkpoint (has its training run finished an epoch?)",
                path.display()
            );
        }
        s.parse().map(ModelSpec::Pretrained)
    }
}

/// Which vector a trained model uses as its embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmbeddingOutput {
    /// The metric head's projection (what the loss was computed on).
    #[default]
    Head,
    /// The backbone's pooled features, L2-normalised: the loss shaped them through the head,
    /// but they keep the backbone's full width and so more of what it knew.
    Features,
    /// Both, each unit length, concatenated (and re-normalised).
    Concat,
}

/// Describes a checkpoint: enough to rebuild the module before loading its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub backbone: String,
    /// Output dimension of the metric head; `None` when the checkpoint has no head.
    pub embedding_dim: Option<usize>,
    /// Which vector is the embedding (head, features, concat).
    #[serde(default)]
    pub output: EmbeddingOutput,
    /// Input side the model was trained at; `None` means the backbone's own.
    #[serde(default)]
    pub input_size: Option<u32>,
    /// Average every embedding with that of the mirrored image (test-time augmentation that
    /// travels with the model, so every command applies it).
    #[serde(default)]
    pub flip: bool,
    /// Free-form description (the run's config, the epoch).
    #[serde(default)]
    pub note: String,
}

/// Backbone + optional metric head: image tensors in, embeddings out.
#[derive(Module, Debug)]
pub struct Network {
    pub backbone: Backbone,
    pub head: Option<MetricHead>,
    #[module(skip)]
    pub kind: BackboneKind,
    #[module(skip)]
    pub output: EmbeddingOutput,
    /// Input side (the backbone's own unless trained at another size).
    #[module(skip)]
    pub input_size: u32,
    /// Average with the mirrored image's embedding.
    #[module(skip)]
    pub flip: bool,
}

impl Network {
    /// Randomly initialised; `embedding_dim` adds a metric head.
    pub fn new(kind: BackboneKind, embedding_dim: Option<usize>, device: &Device) -> Self {
        Self {
            backbone: Backbone::new(kind, device),
            head: embedding_dim.map(|d| MetricHead::new(kind.feature_dim(), d, device)),
            kind,
            output: EmbeddingOutput::Head,
            input_size: kind.input_size(),
            flip: false,
        }
    }

    /// The backbone with its ImageNet weights from the weights directory, no head.
    pub fn pretrained(kind: BackboneKind, device: &Device) -> Result<Self> {
        let path = weights::locate(kind)?;
        let mut model = Self::new(kind, None, device);
        model.backbone.load_pytorch(&path)?;
        Ok(model)
    }

    /// Loads what a [`ModelSpec`] names, in inference mode, batch norms folded into the
    /// convolutions.
    pub fn load(spec: &ModelSpec, device: &Device) -> Result<Self> {
        let model = match spec {
            ModelSpec::Pretrained(kind) => Self::pretrained(*kind, device)?,
            ModelSpec::Checkpoint(dir) => Self::load_checkpoint(dir, device)?,
        };
        Ok(model.into_inference())
    }

    /// In inference mode, batch norms folded into the convolutions: what [`Self::load`] gives.
    /// Weights to be averaged or blended are combined before this, not after (a folded
    /// convolution is a weight times its batch norm's scale, and the mean of products is not
    /// the product of means).
    pub fn into_inference(self) -> Self {
        let mut model = self.valid();
        model.backbone = model.backbone.fold_batch_norm();
        model
    }

    pub fn preprocess(&self) -> Preprocess {
        self.kind.preprocess_at(self.input_size)
    }

    /// Unit-length embeddings `[B, D]` of a normalised batch (flip-averaged when the model
    /// says so).
    pub fn embed(&self, x: Tensor<4>) -> Tensor<2> {
        if self.flip {
            let mirrored = x.clone().flip([3]);
            return l2_normalize(self.embed_once(x) + self.embed_once(mirrored));
        }
        self.embed_once(x)
    }

    /// The embedding of exactly this batch, no test-time augmentation.
    pub fn embed_once(&self, x: Tensor<4>) -> Tensor<2> {
        let lone = x.dims()[0] < rayon::current_num_threads();
        let pass = || self.embed_features(self.backbone.features(x));
        if lone {
            return with_the_pool_spinning(pass);
        }
        pass()
    }

    /// The embedding of the backbone's pooled features `[B, F]` (what [`Self::embed_once`]
    /// makes of them): the head's projection, the features, or both, as `output` says.
    pub fn embed_features(&self, features: Tensor<2>) -> Tensor<2> {
        match (&self.head, self.output) {
            (Some(head), EmbeddingOutput::Head) => head.forward(features),
            (Some(head), EmbeddingOutput::Concat) => {
                let projected = head.forward(features.clone());
                l2_normalize(Tensor::cat(vec![projected, l2_normalize(features)], 1))
            }
            _ => l2_normalize(features),
        }
    }

    /// Width of the head's output, when there is a head.
    pub fn head_dim(&self) -> Option<usize> {
        self.head.as_ref().map(|h| h.projection.weight.dims()[1])
    }

    pub fn embedding_dim(&self) -> usize {
        match (self.head_dim(), self.output) {
            (Some(d), EmbeddingOutput::Head) => d,
            (Some(d), EmbeddingOutput::Concat) => d + self.kind.feature_dim(),
            _ => self.kind.feature_dim(),
        }
    }

    /// Writes `model.safetensors` and `model.json` into `dir`, each atomically.
    pub fn save_checkpoint(&self, dir: &Path, note: &str) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        // Serialised in memory and written by `write_atomic`, whose temporaries a later write
        // removes once their process is gone: burn-store's own file saving strands two scratch
        // files (its own and the safetensors crate's) when the process is killed mid-save.
        let weights = dir.join(WEIGHTS_FILE);
        let mut store = SafetensorsStore::from_bytes(None);
        self.save_into(&mut store)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", weights.display()))?;
        let bytes = store
            .get_bytes()
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", weights.display()))?;
        write_atomic(&weights, &bytes)?;
        let meta = CheckpointMeta {
            backbone: self.kind.name(),
            embedding_dim: self.head_dim(),
            output: self.output,
            input_size: (self.input_size != self.kind.input_size()).then_some(self.input_size),
            flip: self.flip,
            note: note.to_string(),
        };
        write_atomic(
            &dir.join(META_FILE),
            serde_json::to_string_pretty(&meta)?.as_bytes(),
        )
    }

    /// Rebuilds the module described by `dir/model.json` and loads its weights.
    pub fn load_checkpoint(dir: &Path, device: &Device) -> Result<Self> {
        let meta_path = dir.join(META_FILE);
        let meta: CheckpointMeta = serde_json::from_str(
            &std::fs::read_to_string(&meta_path)
                .with_context(|| format!("cannot read {}", meta_path.display()))?,
        )
        .with_context(|| format!("{} is not a checkpoint description", meta_path.display()))?;
        let kind: BackboneKind = meta.backbone.parse()?;
        let mut model = Self::new(kind, meta.embedding_dim, device);
        model.output = meta.output;
        model.input_size = meta.input_size.unwrap_or(kind.input_size());
        model.flip = meta.flip;
        let weights_path = dir.join(WEIGHTS_FILE);
        let mut store = SafetensorsStore::from_file(&weights_path);
        let result = model
            .load_from(&mut store)
            .map_err(|e| anyhow::anyhow!("{}: cannot load: {e}", weights_path.display()))?;
        if !result.missing.is_empty() || !result.errors.is_empty() {
            bail!(
                "{}: does not fit the model:\n{result}",
                weights_path.display()
            );
        }
        Ok(model)
    }
}

/// Runs `work` on one of rayon's threads while every other thread of the pool spins, taking
/// the work `work` splits off as soon as it is offered, until `work` returns.
///
/// For a pass over fewer images than threads: each layer splits its one image over the
/// threads, a hundred-odd hand-overs a forward pass. From a thread outside the pool each is a
/// hand-over to sleeping threads; inside the pool, rayon's idle threads still fall asleep
/// between layers, and waking them (a futex call, the scheduler) cost about a sixth of
/// MobileNetV2's batch-1 pass (`perf`, docs/performance.md). Spinning, as ONNX Runtime's
/// pool does, keeps them awake for the length of the pass only.
///
/// One pass at a time spins, and only one started from outside the pool: a spinner runs
/// nested in whatever its thread was waiting on, so two passes each spinning on the other's
/// thread would wait for each other. The others run as they did before (on the pool, threads
/// handed work by stealing).
fn with_the_pool_spinning<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    static SPINNING: AtomicBool = AtomicBool::new(false);
    /// Sets its flag when dropped, whether `work` returned or panicked.
    struct SetOnDrop<'a>(&'a AtomicBool, bool);
    impl Drop for SetOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(self.1, Ordering::Release);
        }
    }
    let outside = rayon::current_thread_index().is_none();
    if !outside
        || SPINNING
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
    {
        return rayon::scope(|_| work());
    }
    let _release = SetOnDrop(&SPINNING, false);
    let done = AtomicBool::new(false);
    let begun = AtomicBool::new(false);
    let arrived = AtomicUsize::new(0);
    rayon::scope(|scope| {
        let owner = rayon::current_thread_index();
        let (done, begun, arrived) = (&done, &begun, &arrived);
        scope.spawn_broadcast(move |_, context| {
            // The thread running `work` runs its copy while it waits inside `work` (or at the
            // scope's end): it must not spin there.
            if Some(context.index()) == owner {
                return;
            }
            arrived.fetch_add(1, Ordering::AcqRel);
            // Nor may a thread that comes to its copy after `work` has begun: it may be
            // waiting inside a piece of `work` it stole (a thread still looking for work
            // after the pass before can steal one before it sees this job), and spinning
            // there it would wait for the pass while the pass waits for the piece under it.
            if begun.load(Ordering::Acquire) {
                return;
            }
            while !done.load(Ordering::Acquire) {
                if rayon::yield_now() != Some(rayon::Yield::Executed) {
                    std::hint::spin_loop();
                }
            }
        });
        let _stop = SetOnDrop(done, true);
        // The other threads get a moment to start spinning before `work` offers any piece of
        // itself (a thread busy elsewhere is not waited for longer), then every piece is
        // offered after `begun` is set, so a thread that steals one reads it set.
        let (others, start) = (rayon::current_num_threads() - 1, std::time::Instant::now());
        while arrived.load(Ordering::Acquire) < others
            && start.elapsed() < std::time::Duration::from_millis(1)
        {
            std::hint::spin_loop();
        }
        begun.store(true, Ordering::Release);
        work()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Passes started together from several threads outside the pool, and from inside it,
    /// each splitting its work over the pool, all finish with their own results: only one
    /// spins at a time, so none waits on another's spinner.
    #[test]
    fn spinning_passes_from_many_threads_all_finish() {
        use rayon::prelude::*;
        let pass = |seed: u64| {
            with_the_pool_spinning(|| {
                (0..200_000u32)
                    .into_par_iter()
                    .with_max_len(1_000)
                    .map(|i| (u64::from(i) * seed) % 7)
                    .sum::<u64>()
            })
        };
        let expected = |seed: u64| (0..200_000u64).map(|i| (i * seed) % 7).sum::<u64>();
        // Passes that waited on each other would hang: a watchdog fails the test instead.
        within(60, "the passes wait on each other", move || {
            run_together(pass, expected)
        });
    }

    /// Passes one after the other from one thread, as a benchmark or a busy search service runs
    /// them: a pool thread still looking for work after one pass can steal a piece of the next
    /// before it takes that pass's spinner, and must not then spin inside that piece (the pass
    /// would wait for the piece, the spinner for the pass).
    #[test]
    fn back_to_back_passes_never_wait_on_their_own_spinner() {
        use rayon::prelude::*;
        within(120, "one of 100,000 small passes hung", || {
            for round in 0..100_000u64 {
                let s: u64 = with_the_pool_spinning(|| {
                    (0..64u32)
                        .into_par_iter()
                        .with_max_len(1)
                        .map(|i| u64::from(i) ^ round)
                        .sum()
                });
                assert_eq!(s, (0..64u64).map(|i| i ^ round).sum::<u64>());
            }
        });
    }

    /// Runs `body` on a thread of its own and fails, saying `hang`, if it has not finished
    /// within `seconds`.
    fn within(seconds: u64, hang: &str, body: impl FnOnce() + Send + 'static) {
        let (finished, watchdog) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            body();
            finished.send(()).unwrap();
        });
        match watchdog.recv_timeout(std::time::Duration::from_secs(seconds)) {
            Ok(()) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("not finished within {seconds} s: {hang}")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!("a pass gave a wrong result (its panic is printed above)")
            }
        }
    }

    fn run_together(pass: impl Fn(u64) -> u64 + Sync, expected: impl Fn(u64) -> u64 + Sync) {
        use rayon::prelude::*;
        let (pass, expected) = (&pass, &expected);
        std::thread::scope(|threads| {
            let handles: Vec<_> = (1..=6u64)
                .map(|seed| {
                    threads.spawn(move || {
                        for round in 0..300 {
                            let s = seed + round;
                            assert_eq!(pass(s), expected(s));
                        }
                    })
                })
                .collect();
            // From inside the pool too (a pass run by a parallel loop over images).
            let inside: Vec<u64> = (1..=8u64).into_par_iter().map(pass).collect();
            assert_eq!(inside, (1..=8).map(expected).collect::<Vec<_>>());
            for h in handles {
                h.join().unwrap();
            }
        });
    }

    #[test]
    fn checkpoint_round_trip_keeps_outputs() {
        let device = Device::flex();
        let mut model = Network::new(BackboneKind::MobileNetV2, Some(16), &device).valid();
        model.output = EmbeddingOutput::Concat;
        let x = Tensor::<4>::random(
            [2, 3, 64, 64],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let before: Vec<f32> = model.embed(x.clone()).into_data().try_to_vec().unwrap();
        let dir = tempfile::tempdir().unwrap();
        model.save_checkpoint(dir.path(), "test").unwrap();
        let spec = ModelSpec::parse(dir.path().to_str().unwrap()).unwrap();
        assert_eq!(spec, ModelSpec::Checkpoint(dir.path().to_path_buf()));
        let loaded = Network::load(&spec, &device).unwrap();
        assert_eq!(loaded.embedding_dim(), 16 + 1280);
        assert_eq!(loaded.output, EmbeddingOutput::Concat);
        let after: Vec<f32> = loaded.embed(x).into_data().try_to_vec().unwrap();
        for (a, b) in before.iter().zip(&after) {
            assert!((a - b).abs() < 1e-5);
        }
        let norm: f32 = after[..1296].iter().map(|v| v * v).sum();
        assert!((norm - 1.0).abs() < 1e-4);
    }

    #[test]
    fn spec_errors_are_clear() {
        let err = ModelSpec::parse("resnet99").unwrap_err().to_string();
        assert!(
            err.contains("unknown backbone") && err.contains("mobilenet_v2"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let err = ModelSpec::parse(dir.path().to_str().unwrap()).unwrap_err();
        assert!(err.to_string().contains("model.json"));
    }
}
