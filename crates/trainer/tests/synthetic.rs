//! Training end to end on a small synthetic set (stripes and checkerboards in random colours,
//! fine-tuning MobileNetV2 at 64×64: the colours are a nuisance ImageNet features attend to), then a run killed mid-epoch and resumed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use trainer::config::TrainConfig;

const CLASSES: [&str; 3] = ["hstripes", "vstripes", "checker"];

fn pattern(class: usize, rng: &mut ChaCha8Rng) -> RgbImage {
    let period = rng.random_range(3..7u32);
    let a = Rgb([rng.random(), rng.random(), rng.random()]);
    let b = Rgb([rng.random(), rng.random(), rng.random()]);
    let (ox, oy) = (rng.random_range(0..8u32), rng.random_range(0..8u32));
    RgbImage::from_fn(40, 40, |x, y| {
        let (x, y) = (x + ox, y + oy);
        let on = match class {
            0 => (y / period) % 2 == 0,
            1 => (x / period) % 2 == 0,
            _ => ((x / period) + (y / period)) % 2 == 0,
        };
        if on { a } else { b }
    })
}

fn write_split(dir: &Path, per_class: usize, rng: &mut ChaCha8Rng) {
    for (c, name) in CLASSES.iter().enumerate() {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..per_class {
            pattern(c, rng)
                .save(d.join(format!("{name}{i}.png")))
                .unwrap();
        }
    }
}

fn make_data(root: &Path) {
    // The runs fine-tune the pretrained MobileNetV2: make sure its weights are there.
    model::weights::fetch(model::BackboneKind::MobileNetV2).expect("weights");
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    write_split(&root.join("train"), 24, &mut rng);
    write_split(&root.join("query"), 4, &mut rng);
    write_split(&root.join("gallery"), 8, &mut rng);
}

fn config_text(root: &Path, out: &Path, epochs: usize) -> String {
    format!(
        r#"
train = "{root}/train"
backbone = "mobilenet_v2"
image_size = 64
embedding_dim = 32
epochs = {epochs}
p = 3
k = 4
seed = 3
out_dir = "{out}"
eval_batch_size = 64

[[validation]]
name = "synthetic"
query = "{root}/query"
gallery = "{root}/gallery"

[loss]
kind = "arcface"
margin = 0.2
scale = 16.0

[optimizer]
lr_backbone = 1e-3
lr_head = 1e-2
lr_loss = 1e-2
warmup_epochs = 0.5

[freeze]
backbone_epochs = 0
trainable_blocks = 6
batch_norm = true

[augment]
scale = [0.6, 1.0]
brightness = 0.0
contrast = 0.0
saturation = 0.0
grayscale = 0.0
"#,
        root = root.display(),
        out = out.display()
    )
}

#[test]
fn training_raises_retrieval_accuracy() {
    let tmp = tempfile::tempdir().unwrap();
    make_data(tmp.path());
    let out = tmp.path().join("run");
    let config = TrainConfig::parse(&config_text(tmp.path(), &out, 4), &[]).unwrap();
    let outcome = trainer::training::train(&config, false, true).unwrap();
    let before = &outcome.history[0].validation[0].1;
    let after = &outcome.history.last().unwrap().validation[0].1;
    println!("before {before:?}\nafter {after:?}");
    assert!(
        after.map10 > before.map10 + 0.15,
        "mAP@10 {} -> {}",
        before.map10,
        after.map10
    );
    // The run directory works as --model.
    let device = burn::prelude::Device::flex();
    let member = retrieval::embed::Member::load(out.to_str().unwrap(), &device).unwrap();
    assert_eq!(member.embedding_dim(), 32);
    assert_eq!(member.preprocess().crop, 64);
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 1 + 4, "{csv}");
    assert!(out.join("config.toml").is_file());
}

fn metrics_rows(out: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(out.join("metrics.csv"))
        .unwrap_or_default()
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

/// Columns that do not depend on timing: epoch, loss, then the validation figures.
fn comparable(row: &[String]) -> Vec<String> {
    let mut v = vec![row[0].clone(), row[1].clone()];
    v.extend(row[6..].iter().cloned());
    v
}

/// Fault drill: the trainer killed with SIGKILL at seeded random moments of a three-epoch run
/// (before its first checkpoint, mid-epoch, while saving), each time started again with
/// `--resume` when a checkpoint exists, ends with the metrics of an uninterrupted run, and
/// leaves no half-written checkpoint behind.
#[test]
fn killed_run_resumes_to_the_same_result() {
    let tmp = tempfile::tempdir().unwrap();
    make_data(tmp.path());
    let bin = env!("CARGO_BIN_EXE_trainer");
    let run = |out: &PathBuf, resume: bool| {
        let cfg = tmp.path().join(format!(
            "{}.toml",
            out.file_name().unwrap().to_string_lossy()
        ));
        std::fs::write(&cfg, config_text(tmp.path(), out, 3)).unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg("--config").arg(&cfg).arg("--quiet");
        if resume {
            cmd.arg("--resume");
        }
        cmd
    };
    let straight = tmp.path().join("straight");
    let start = Instant::now();
    assert!(run(&straight, false).status().unwrap().success());
    let took = start.elapsed();

    let killed = tmp.path().join("killed");
    // Somewhere in the first three quarters of what an uninterrupted run takes, resuming
    // whenever a checkpoint exists.
    let kills = hostile::kill_at_random_moments(
        || {
            let resume = trainer::checkpoint::find_last(&killed).is_some();
            run(&killed, resume).spawn().unwrap()
        },
        took,
        5,
        (0.0, 0.75),
        0x2545_F491_4F6C_DD1D,
    );
    assert!(kills >= 1, "no run was interrupted");
    let resume = trainer::checkpoint::find_last(&killed).is_some();
    assert!(run(&killed, resume).status().unwrap().success());
    let a: Vec<_> = metrics_rows(&straight)
        .iter()
        .map(|r| comparable(r))
        .collect();
    let b: Vec<_> = metrics_rows(&killed)
        .iter()
        .map(|r| comparable(r))
        .collect();
    assert_eq!(a.len(), 4);
    assert_eq!(a, b, "a resumed run must end where a straight one does");
    let left: Vec<String> = std::fs::read_dir(&killed)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial") || n.contains("old") || n.starts_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// The hostile corpus as a training set and as the validation pair: every bad file named on
/// stderr with its reason, training goes on with the rest.
#[test]
fn hostile_corpus_trains_on_what_can_be_read() {
    let tmp = tempfile::tempdir().unwrap();
    make_data(tmp.path());
    let corpus = hostile::write(&tmp.path().join("corpus"));
    let out = tmp.path().join("run");
    let root = corpus.root.display().to_string();
    let text = config_text(tmp.path(), &out, 1)
        .replace(&format!("{}/train", tmp.path().display()), &root)
        .replace(&format!("{}/query", tmp.path().display()), &root)
        .replace(&format!("{}/gallery", tmp.path().display()), &root);
    let cfg = tmp.path().join("corpus.toml");
    std::fs::write(&cfg, text).unwrap();
    let m = hostile::run_measured(
        Command::new(env!("CARGO_BIN_EXE_trainer"))
            .arg("--config")
            .arg(&cfg)
            .arg("--quiet")
            .args(["--set", "p=2", "--set", "k=2", "--set", "max_steps=2"]),
    );
    assert_eq!(m.code, Some(0), "{}", m.stderr);
    for case in &corpus.cases {
        if let hostile::Expect::Reported(reason) = case.expect {
            let lines: Vec<&str> = m
                .stderr
                .lines()
                .filter(|l| l.starts_with("skipped: ") && l.contains(case.name.as_str()))
                .collect();
            // Once as a training image, once in validation (query and gallery are one pool).
            assert!(
                !lines.is_empty(),
                "{:?} not on stderr:\n{}",
                case.name,
                m.stderr
            );
            assert!(lines.iter().all(|l| l.contains(reason)), "{lines:?}");
        }
    }
    let bad = corpus.cases.len() - corpus.used().count();
    assert!(
        m.stderr
            .contains(&format!("{bad} of {} files skipped", corpus.cases.len())),
        "{}",
        m.stderr
    );
    assert!(out.join("model.json").is_file());
}

/// Training views smaller than the embedding side, a WiSE-FT blend as the kept model, and the
/// same pair validated under two names (one pool of distinct images behind both).
#[test]
fn smaller_training_views_and_wise_ft() {
    let tmp = tempfile::tempdir().unwrap();
    make_data(tmp.path());
    let out = tmp.path().join("run");
    let root = tmp.path().display().to_string();
    let text = config_text(tmp.path(), &out, 2).replace(
        "[loss]",
        &format!(
            "[[validation]]\nname = \"again\"\nquery = \"{root}/query\"\ngallery = \"{root}/gallery\"\n\n[loss]"
        ),
    );
    let config =
        TrainConfig::parse(&text, &["train_image_size=48".into(), "wise_ft=0.5".into()]).unwrap();
    let outcome = trainer::training::train(&config, false, true).unwrap();
    for record in &outcome.history {
        let (a, b) = (&record.validation[0].1, &record.validation[1].1);
        assert_eq!(a.top1, b.top1);
        assert_eq!(a.map10, b.map10);
    }
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("model.json")).unwrap()).unwrap();
    assert!(
        meta["note"].as_str().unwrap().contains("WiSE-FT 0.5"),
        "{meta}"
    );
    assert_eq!(meta["input_size"], 64, "{meta}");
    // The kept model embeds at the evaluation side: retrieval loads and scores it as trained.
    let last = outcome.history.last().unwrap();
    assert!(last.validation[0].1.map10 > 0.0);
    assert!(TrainConfig::parse(&text, &["wise_ft=1.5".into()]).is_err());
}

/// Checkpoint averaging: from `soup_from_epoch` on, the kept model is the mean of the
/// epoch-end weights (its note says which), and a run stopped once the soup has begun resumes
/// to the metrics of a straight run, so the running mean is saved and restored with `last/`.
#[test]
fn soup_of_epochs_resumes_to_the_same_result() {
    let tmp = tempfile::tempdir().unwrap();
    make_data(tmp.path());
    let config = |out: &Path, extra: &[&str]| {
        let mut sets = vec!["soup_from_epoch=2".to_string()];
        sets.extend(extra.iter().map(|s| s.to_string()));
        TrainConfig::parse(&config_text(tmp.path(), out, 3), &sets).unwrap()
    };
    let straight = tmp.path().join("straight");
    let outcome = trainer::training::train(&config(&straight, &[]), false, true).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(straight.join("model.json")).unwrap())
            .unwrap();
    let kept = outcome.best.unwrap().1;
    let expected = match kept {
        1 => "epoch 1".to_string(),
        e => format!("mean of epochs 2 to {e}"),
    };
    assert!(meta["note"].as_str().unwrap().contains(&expected), "{meta}");
    let state = trainer::checkpoint::read_state(&straight.join("last")).unwrap();
    assert_eq!((state.epoch, state.soup), (3, 2));

    // Stopped at the end of epoch 2 (the soup holds one epoch), then resumed to the end.
    let stopped = tmp.path().join("stopped");
    let two_epochs = format!("max_steps={}", state.step / 3 * 2);
    trainer::training::train(&config(&stopped, &[&two_epochs]), false, true).unwrap();
    let state = trainer::checkpoint::read_state(&stopped.join("last")).unwrap();
    assert_eq!((state.epoch, state.soup), (2, 1));
    trainer::training::train(&config(&stopped, &[]), true, true).unwrap();
    let rows = |out: &Path| -> Vec<Vec<String>> {
        metrics_rows(out).iter().map(|r| comparable(r)).collect()
    };
    assert_eq!(rows(&straight).len(), 4);
    assert_eq!(rows(&straight), rows(&stopped));
    assert!(
        TrainConfig::parse(
            &config_text(tmp.path(), &straight, 3),
            &["soup_from_epoch=4".into()]
        )
        .is_err()
    );
}

/// A fresh run into the directory of an earlier one keeps nothing of it: one row an epoch in
/// metrics.csv, and no checkpoint of the old run left for a --resume to continue.
#[test]
fn fresh_run_replaces_an_earlier_run() {
    let tmp = tempfile::tempdir().unwrap();
    make_data(tmp.path());
    let out = tmp.path().join("run");
    let old = TrainConfig::parse(&config_text(tmp.path(), &out, 2), &[]).unwrap();
    trainer::training::train(&old, false, true).unwrap();
    assert_eq!(metrics_rows(&out).len(), 3);

    // The new run is killed before its first epoch ends (here: it fails at once, on a
    // loss made infinite); the old run's last/ must not survive for --resume to pick up.
    let failing = TrainConfig::parse(
        &config_text(tmp.path(), &out, 1),
        &["loss.scale=1e39".into()],
    )
    .unwrap();
    let err = trainer::training::train(&failing, false, true).unwrap_err();
    assert!(format!("{err:#}").contains("nothing to resume"), "{err:#}");
    assert!(
        !out.join("last").exists(),
        "the old run's checkpoint survived"
    );
    assert!(
        !out.join("model.json").exists(),
        "the old run's model survived"
    );

    let fresh = TrainConfig::parse(&config_text(tmp.path(), &out, 1), &[]).unwrap();
    trainer::training::train(&fresh, false, true).unwrap();
    let epochs: Vec<String> = metrics_rows(&out).iter().map(|r| r[0].clone()).collect();
    assert_eq!(epochs, ["0", "1"]);
}

/// Style mixing (`[mixstyle]`) reaches the backbone: a run with it differs from one without,
/// repeats itself exactly (its draws come from the seed), and a stride no block outputs at
/// stops the run with that stride named.
#[test]
fn style_mixing_changes_the_run_and_repeats() {
    let tmp = tempfile::tempdir().unwrap();
    make_data(tmp.path());
    let run = |name: &str, sets: &[&str]| {
        let out = tmp.path().join(name);
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let config = TrainConfig::parse(&config_text(tmp.path(), &out, 1), &sets).unwrap();
        trainer::training::train(&config, false, true).map(|_| {
            metrics_rows(&out)
                .iter()
                .map(|r| comparable(r))
                .collect::<Vec<_>>()
        })
    };
    let mixed = ["mixstyle.probability=1.0", "mixstyle.alpha=0.5"];
    let plain = run("plain", &[]).unwrap();
    let once = run("mixed", &mixed).unwrap();
    let again = run("again", &mixed).unwrap();
    assert_eq!(once, again);
    assert_ne!(once, plain);
    let err = run("bad", &["mixstyle.strides=[64]"]).unwrap_err();
    assert!(format!("{err:#}").contains("stride 64"), "{err:#}");
}

/// Two trainings side by side in one process (as the tests run, or a service's jobs) each
/// match the same config run alone: parameter initialisation draws from the backend's one
/// process-wide generator, so the two must not reseed it or draw from it in turn.
#[test]
fn runs_side_by_side_match_a_run_alone() {
    let tmp = tempfile::tempdir().unwrap();
    make_data(tmp.path());
    let run = |name: &str| {
        let out = tmp.path().join(name);
        let config = TrainConfig::parse(&config_text(tmp.path(), &out, 1), &[]).unwrap();
        trainer::training::train(&config, false, true).unwrap();
        metrics_rows(&out)
            .iter()
            .map(|r| comparable(r))
            .collect::<Vec<_>>()
    };
    let alone = run("alone");
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| run("a"));
        let b = s.spawn(|| run("b"));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(a, alone);
    assert_eq!(b, alone);
}

/// A soup of seeds: one ordinary run per seed in `out/seed-N`, the mean of their kept models
/// saved in `out` (usable as --model) with every model's figures in `soup.csv`; resumed, a
/// finished soup trains nothing again and comes to the same model.
#[test]
fn soup_of_seeds_is_the_mean_of_its_runs() {
    let tmp = tempfile::tempdir().unwrap();
    make_data(tmp.path());
    let out = tmp.path().join("soup");
    let text = config_text(tmp.path(), &out, 2);
    let config = TrainConfig::parse(&text, &["soup.seeds=[3, 4]".into()]).unwrap();
    let outcome = trainer::soup::train_soup(&config, false, true).unwrap();
    let names: Vec<&str> = outcome.rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["seed-3", "seed-4", "soup"]);

    let device = burn::prelude::Device::flex();
    let load = |dir: &Path| model::Network::load_checkpoint(dir, &device).unwrap();
    let weights = |net: &model::Network| -> Vec<f32> {
        let head = net.head.as_ref().unwrap();
        head.projection
            .weight
            .val()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    };
    let (a, b) = (load(&out.join("seed-3")), load(&out.join("seed-4")));
    let soup = load(&out);
    assert_ne!(weights(&a), weights(&b), "the seeds trained the same model");
    for ((s, a), b) in weights(&soup).iter().zip(weights(&a)).zip(weights(&b)) {
        assert!(
            (s - (a + b) / 2.0).abs() < 1e-6,
            "{s} is not the mean of {a} and {b}"
        );
    }
    let meta = std::fs::read_to_string(out.join("model.json")).unwrap();
    assert!(meta.contains("soup of seeds 3, 4"), "{meta}");
    let figures = std::fs::read_to_string(out.join(trainer::soup::SOUP_FILE)).unwrap();
    assert_eq!(figures.lines().count(), 1 + 3, "{figures}");
    assert!(figures.lines().last().unwrap().starts_with("soup,"));
    let member = retrieval::embed::Member::load(out.to_str().unwrap(), &device).unwrap();
    assert_eq!(member.embedding_dim(), 32);

    // Resumed, a finished soup trains nothing again: the members' logs stay as they were.
    let log = |seed: u64| std::fs::read(out.join(format!("seed-{seed}/metrics.csv"))).unwrap();
    let logs = (log(3), log(4));
    let again = trainer::soup::train_soup(&config, true, true).unwrap();
    assert_eq!((log(3), log(4)), logs);
    assert_eq!(weights(&load(&out)), weights(&soup));
    assert_eq!(
        again.rows.last().unwrap().selection,
        outcome.rows.last().unwrap().selection
    );

    for seeds in ["soup.seeds=[3]", "soup.seeds=[3, 3]"] {
        assert!(
            TrainConfig::parse(&text, &[seeds.into()]).is_err(),
            "{seeds}"
        );
    }
}
