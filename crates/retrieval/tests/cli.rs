//! The `retrieval` binary end to end on the real validation data in `../shared`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use retrieval::submission::Submission;
use serde_json::Value;

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets/animals10/val")
}

/// One `retrieval` call, its arguments built up by what they mean.
struct Call(Vec<String>);

impl Call {
    fn new(command: &str) -> Self {
        Self(vec![command.to_string()])
    }

    fn arg(mut self, a: impl AsRef<std::ffi::OsStr>) -> Self {
        self.0.push(a.as_ref().to_string_lossy().into_owned());
        self
    }

    fn model(self, model: &str) -> Self {
        self.arg("--model").arg(model)
    }

    /// A `--query DIR --gallery DIR` pair.
    fn pair(self, query: &Path, gallery: &Path) -> Self {
        self.arg("--query").arg(query).arg("--gallery").arg(gallery)
    }

    /// The val pair of the shared data.
    fn val(self) -> Self {
        self.pair(&shared().join("query"), &shared().join("gallery"))
    }

    /// Runs it with the embedding cache in `cache`: (success, stdout, stderr).
    fn run(&self, cache: &Path) -> (bool, String, String) {
        let (code, stdout, stderr) = self.run_with_code(cache);
        (code == Some(0), stdout, stderr)
    }

    /// The command line, with the embedding cache in `cache`.
    fn command(&self, cache: &Path) -> Command {
        model::weights::fetch(model::BackboneKind::MobileNetV2).expect("weights");
        let mut command = Command::new(env!("CARGO_BIN_EXE_retrieval"));
        command.args(&self.0).env("LOOKALIKE_CACHE", cache);
        command
    }

    /// Runs it, measuring its peak memory.
    fn measured(&self, cache: &Path) -> hostile::Measured {
        hostile::run_measured(&mut self.command(cache))
    }

    /// Runs it with the embedding cache in `cache`: (exit code, stdout, stderr).
    fn run_with_code(&self, cache: &Path) -> (Option<i32>, String, String) {
        let out = self.command(cache).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// Copies a class-folder split into one flat folder plus labels.json.
fn flatten(src: &Path, dst: &Path) -> HashMap<String, String> {
    std::fs::create_dir_all(dst).unwrap();
    let mut labels = BTreeMap::new();
    for class in std::fs::read_dir(src).unwrap() {
        let class = class.unwrap().path();
        let label = class.file_name().unwrap().to_string_lossy().into_owned();
        for f in std::fs::read_dir(&class).unwrap() {
            let f = f.unwrap().path();
            let name = format!("{label}_{}", f.file_name().unwrap().to_string_lossy());
            std::fs::copy(&f, dst.join(&name)).unwrap();
            labels.insert(name, label.clone());
        }
    }
    std::fs::write(
        dst.join("labels.json"),
        serde_json::to_string(&labels).unwrap(),
    )
    .unwrap();
    labels.into_iter().collect()
}

#[test]
fn zero_shot_evaluate_and_submit_agree_on_flat_copies() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let (q, g) = (tmp.path().join("query"), tmp.path().join("gallery"));
    let q_labels = flatten(&shared().join("query"), &q);
    let g_labels = flatten(&shared().join("gallery"), &g);
    let (ok, stdout, stderr) = Call::new("evaluate")
        .model("mobilenet_v2")
        .pair(&q, &g)
        .arg("--json")
        .run(&cache);
    assert!(ok, "{stderr}");
    let metrics: Value = serde_json::from_str(&stdout).unwrap();
    for key in ["top1", "top3", "top5", "top10", "map10", "score", "queries"] {
        assert!(metrics.get(key).is_some(), "missing {key}");
    }
    assert_eq!(metrics["queries"], 100);
    let top1 = metrics["top1"].as_f64().unwrap();
    assert!(top1 >= 0.82, "zero-shot MobileNetV2 val top-1 {top1}");

    let sub_path = tmp.path().join("submission.json");
    let (ok, _, stderr) = Call::new("submit")
        .model("mobilenet_v2")
        .pair(&q, &g)
        .arg("--group")
        .arg("lookalike")
        .arg("--out")
        .arg(&sub_path)
        .run(&cache);
    assert!(ok, "{stderr}");
    let sub: Submission =
        serde_json::from_str(&std::fs::read_to_string(&sub_path).unwrap()).unwrap();
    let q_names: Vec<String> = q_labels.keys().cloned().collect();
    let g_names: Vec<String> = g_labels.keys().cloned().collect();
    sub.validate(&q_names, &g_names, 10).unwrap();
    // Gallery distractors carry the label "distractor" in labels.json: they match nothing.
    let g_real: HashMap<String, String> = g_labels
        .into_iter()
        .filter(|(_, l)| l != "distractor")
        .collect();
    let (t1, t5, t10, score) = sub.score(&q_labels, &g_real);
    assert!((t1 - top1).abs() < 1e-9);
    assert!((t5 - metrics["top5"].as_f64().unwrap()).abs() < 1e-9);
    assert!((t10 - metrics["top10"].as_f64().unwrap()).abs() < 1e-9);
    assert!((score - metrics["score"].as_f64().unwrap()).abs() < 1e-6);
}

#[test]
fn bad_files_are_reported_and_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("imgs/cat");
    std::fs::create_dir_all(&dir).unwrap();
    let mut some_jpeg = None;
    for f in std::fs::read_dir(shared().join("query/cat"))
        .unwrap()
        .take(4)
    {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    for f in walk(&shared()) {
        if f.extension().is_some_and(|e| e == "jpg" || e == "jpeg") {
            some_jpeg = Some(std::fs::read(f).unwrap());
            break;
        }
    }
    let jpeg = some_jpeg.expect("val has a JPEG");
    std::fs::write(dir.join("truncated.jpg"), &jpeg[..jpeg.len() / 2]).unwrap();
    std::fs::write(dir.join("empty.jpg"), b"").unwrap();
    std::fs::write(dir.join("notes.png"), b"this is text, not a PNG").unwrap();
    let folder = tmp.path().join("imgs");
    let cache = tmp.path().join("cache");
    let bad = ["truncated.jpg", "empty.jpg", "notes.png"];
    // Scored without them, each named, and exit code 3: the output is incomplete.
    let (code, stdout, stderr) = Call::new("evaluate")
        .model("mobilenet_v2")
        .pair(&folder, &folder)
        .arg("--no-cache")
        .run_with_code(&cache);
    assert_eq!(code, Some(3), "{stderr}");
    for name in bad {
        assert!(stderr.contains(name), "{name} not reported:\n{stderr}");
    }
    assert!(stderr.contains("3 of 7 files skipped"), "{stderr}");
    assert!(stdout.contains("ALL"), "{stdout}");
    // --json: the same on stderr, and listed in the JSON.
    let (code, stdout, stderr) = Call::new("evaluate")
        .model("mobilenet_v2")
        .pair(&folder, &folder)
        .arg("--json")
        .run_with_code(&cache);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("truncated.jpg"), "{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["queries"], 4, "{v}");
    let skipped = v["skipped"]["query"].as_array().unwrap();
    assert_eq!(skipped.len(), 3, "{v}");
    assert_eq!(v["skipped"]["gallery"].as_array().unwrap().len(), 3);
    for name in bad {
        assert!(
            skipped
                .iter()
                .any(|s| s["file"].as_str().unwrap().ends_with(name)
                    && !s["reason"].as_str().unwrap().is_empty()),
            "{name}: {v}"
        );
    }
    let (code, stdout, stderr) = Call::new("search")
        .model("mobilenet_v2")
        .pair(&folder, &folder)
        .arg("--json")
        .run_with_code(&cache);
    assert_eq!(code, Some(3), "{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["results"].as_object().unwrap().len(), 4, "{v}");
    assert_eq!(v["skipped"]["query"].as_array().unwrap().len(), 3, "{v}");
    // A submission missing answers is refused, and nothing is written.
    let out = tmp.path().join("submission.json");
    let (code, _, stderr) = Call::new("submit")
        .model("mobilenet_v2")
        .pair(&dir, &dir)
        .arg("--group")
        .arg("g")
        .arg("--out")
        .arg(&out)
        .run_with_code(&cache);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("3 of 7 query files could not be read"),
        "{stderr}"
    );
    assert!(!out.exists());
    // An empty gallery is an error, not an empty answer.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let (code, _, stderr) = Call::new("search")
        .model("mobilenet_v2")
        .pair(&dir, &empty)
        .run_with_code(&cache);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no readable gallery image"), "{stderr}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn domains() -> PathBuf {
    shared().join("../../domains")
}

#[test]
fn compare_writes_markdown_and_csv_for_several_pairs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cmp");
    let (ok, stdout, stderr) = Call::new("compare")
        .val()
        .pair(&domains().join("query"), &domains().join("gallery"))
        .arg("--methods")
        .arg("hsv_histogram,tiny_image+qe1,hsv_histogram:tiny_image@2+rerank")
        .arg("--out")
        .arg(&out)
        .run(&tmp.path().join("cache"));
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("**val**") && stdout.contains("**domains**"),
        "{stdout}"
    );
    assert!(
        stdout.contains("`hsv_histogram:tiny_image@2+rerank`"),
        "{stdout}"
    );
    let csv = std::fs::read_to_string(out.join("compare.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 1 + 3 * 2, "{csv}");
    assert!(rows[0].starts_with("set,method,top-1"));
    assert!(rows[1].starts_with("val,hsv_histogram,"), "{csv}");
    assert!(rows[2].starts_with("domains,hsv_histogram,"), "{csv}");
    // Colour histograms beat chance (0.1 top-1 with ten classes) but not the networks.
    let top1: f64 = rows[1].split(',').nth(2).unwrap().parse().unwrap();
    assert!(top1 > 0.1 && top1 < 0.8, "{top1}");
    assert!(out.join("compare.md").is_file());
}

#[test]
fn evaluate_reports_each_pair_and_each_domain() {
    let tmp = tempfile::tempdir().unwrap();
    let report = tmp.path().join("report");
    let (ok, stdout, stderr) = Call::new("evaluate")
        .model("tiny_image")
        .arg("--json")
        .arg("--report")
        .arg(&report)
        .val()
        .pair(&domains().join("query"), &domains().join("gallery"))
        .run(&tmp.path().join("cache"));
    assert!(ok, "{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["val"]["queries"], 100);
    assert_eq!(v["domains"]["queries"], 60);
    assert_eq!(v["val"]["per_domain"], serde_json::json!({}));
    let d = &v["domains"]["per_domain"];
    assert_eq!(d["sketch"]["queries"], 28, "{d}");
    assert_eq!(d["cartoon"]["queries"], 16);
    assert_eq!(d["painting"]["queries"], 16);
    // Each domain's share of the overall top-1 adds up.
    let overall = v["domains"]["top1"].as_f64().unwrap() * 60.0;
    let parts: f64 = ["sketch", "cartoon", "painting"]
        .iter()
        .map(|k| d[k]["top1"].as_f64().unwrap() * d[k]["queries"].as_f64().unwrap())
        .sum();
    assert!((overall - parts).abs() < 1e-6);
    // One report a pair; the domains report has the per-domain table.
    let page = |pair: &str| std::fs::read_to_string(report.join(pair).join("index.html")).unwrap();
    assert!(page("domains").contains("Per domain"));
    assert!(!page("val").contains("Per domain"));
    // Mismatched pairs are refused with a clear message.
    let (ok, _, stderr) = Call::new("evaluate")
        .model("tiny_image")
        .arg("--query")
        .arg(shared().join("query"))
        .run(&tmp.path().join("cache"));
    assert!(!ok);
    assert!(stderr.contains("--gallery"), "{stderr}");
}

#[test]
fn report_renders_with_every_thumbnail() {
    let tmp = tempfile::tempdir().unwrap();
    let report = tmp.path().join("report");
    let (ok, _, stderr) = Call::new("evaluate")
        .model("hsv_histogram")
        .val()
        .arg("--report")
        .arg(&report)
        .arg("--sheet-queries")
        .arg("4")
        .run(&tmp.path().join("cache"));
    assert!(ok, "{stderr}");
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    for needle in [
        "Per class",
        "Top-1 confusion",
        "Embedding map",
        "Queries, worst first",
        "<svg",
    ] {
        assert!(html.contains(needle), "no {needle}");
    }
    // Every thumbnail the page references exists, relative to the page.
    let refs: Vec<&str> = html
        .split("src=\"")
        .skip(1)
        .map(|s| s.split('"').next().unwrap())
        .collect();
    assert!(refs.len() >= 100 * 11, "{} images", refs.len());
    for r in &refs {
        assert!(report.join(r).is_file(), "missing {r}");
    }
    let sheet = image::open(report.join("contact_sheet.png")).unwrap();
    assert_eq!(sheet.height(), 4 * 104);

    let Some(browser) = hostile::chromium() else {
        eprintln!("chromium not installed: skipping the browser check");
        return;
    };
    // Load the page from disk, then count images that failed to load.
    let probe = report.join("probe.html");
    std::fs::write(
        &probe,
        "<html><body><iframe id=f src=\"index.html\" width=1200 height=900></iframe><script>\
         document.getElementById('f').onload = () => { const d = document.getElementById('f').contentDocument;\
         const imgs = [...d.images]; const bad = imgs.filter(i => !i.complete || i.naturalWidth === 0).length;\
         document.title = 'images ' + imgs.length + ' broken ' + bad; };</script></body></html>",
    )
    .unwrap();
    let profile = tmp.path().join("profile");
    let out = Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--allow-file-access-from-files",
            "--virtual-time-budget=10000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("file://{}", probe.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    let title = dom
        .split("<title>")
        .nth(1)
        .and_then(|s| s.split("</title>").next())
        .unwrap_or("");
    assert!(
        title.starts_with("images ") && title.ends_with(" broken 0"),
        "title {title:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shot = tmp.path().join("shot.png");
    let status = Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--window-size=1200,900",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", report.join("index.html").display()))
        .status()
        .unwrap();
    assert!(status.success() && shot.is_file());
}

/// The (file, reason) pairs of a `skipped` list in JSON output.
fn skipped_pairs(list: &Value) -> Vec<(String, String)> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["file"].as_str().unwrap().to_string(),
                s["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Every command that reads images, over the hostile corpus: each file used or reported with
/// its path and reason (stderr, and the JSON under `--json`), exit code 3 when files were left
/// out, and no run above its memory budget: the same command's peak on good images alone plus
/// one image's decoding budget (`data::decode::MAX_ALLOC`).
#[test]
fn hostile_corpus_is_used_or_reported_by_every_command() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = hostile::write(&tmp.path().join("corpus"));
    let root = &corpus.root;
    let cache = tmp.path().join("cache");
    let reported_on_stderr = |stderr: &str| {
        for case in &corpus.cases {
            if let hostile::Expect::Reported(reason) = case.expect {
                let line = stderr
                    .lines()
                    .find(|l| l.starts_with("skipped: ") && l.contains(case.name.as_str()))
                    .unwrap_or_else(|| panic!("{:?} not on stderr:\n{stderr}", case.name));
                assert!(line.contains(reason), "{line}");
            }
        }
    };
    let problems = |account: &hostile::Account| {
        let p = corpus.check(account);
        assert!(p.is_empty(), "{}", p.join("\n"));
    };

    // The memory baseline: the good images alone, embedded the same way.
    let clean = tmp.path().join("clean");
    for case in corpus.used() {
        let to = clean.join(&case.name);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&case.path, &to).unwrap();
    }
    let embed = |images: &Path, out: &Path| {
        Call::new("embed")
            .model("mobilenet_v2")
            .arg("--images")
            .arg(images)
            .arg("--out")
            .arg(out)
            .arg("--no-cache")
            .measured(&cache)
    };
    let baseline = embed(&clean, &tmp.path().join("clean.safetensors"));
    assert_eq!(baseline.code, Some(0), "{}", baseline.stderr);
    let budget = baseline.peak_bytes + data::decode::MAX_ALLOC;
    let within_budget = |what: &str, m: &hostile::Measured| {
        assert!(
            m.peak_bytes <= budget,
            "{what}: peak {} MiB, over the budget of {} MiB (good images alone: {} MiB)",
            m.peak_bytes >> 20,
            budget >> 20,
            baseline.peak_bytes >> 20
        );
    };

    // embed: the file's metadata lists what was used.
    let out = tmp.path().join("corpus.safetensors");
    let m = embed(root, &out);
    assert_eq!(m.code, Some(3), "{}", m.stderr);
    within_budget("embed", &m);
    reported_on_stderr(&m.stderr);
    let bytes = std::fs::read(&out).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let files: Vec<String> =
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["files"]).unwrap();
    assert_eq!(files.len(), corpus.used().count());

    // search --json: the results name every used query; the JSON names every skipped file.
    let m = Call::new("search")
        .model("mobilenet_v2")
        .pair(root, root)
        .arg("--json")
        .measured(&cache);
    assert_eq!(m.code, Some(3), "{}", m.stderr);
    within_budget("search", &m);
    reported_on_stderr(&m.stderr);
    let v: Value = serde_json::from_str(&m.stdout).unwrap();
    problems(&hostile::Account {
        used: v["results"].as_object().unwrap().keys().cloned().collect(),
        reported: skipped_pairs(&v["skipped"]["query"]),
    });
    let gallery_used: Vec<String> = v["results"]["cat/rgb.png"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["file"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(gallery_used.len(), 10);
    problems(&hostile::Account {
        used: files.clone(),
        reported: skipped_pairs(&v["skipped"]["gallery"]),
    });

    // evaluate --json: scored on the used queries only; a query class the gallery lacks warns.
    let cat_only = tmp.path().join("cat-only");
    std::fs::create_dir_all(cat_only.join("cat")).unwrap();
    std::fs::copy(root.join("cat/rgb.png"), cat_only.join("cat/rgb.png")).unwrap();
    let m = Call::new("evaluate")
        .model("mobilenet_v2")
        .pair(root, &cat_only)
        .arg("--json")
        .measured(&cache);
    assert_eq!(m.code, Some(3), "{}", m.stderr);
    within_budget("evaluate", &m);
    let v: Value = serde_json::from_str(&m.stdout).unwrap();
    assert_eq!(v["queries"], corpus.used().count(), "{v}");
    problems(&hostile::Account {
        used: files.clone(),
        reported: skipped_pairs(&v["skipped"]["query"]),
    });
    let warnings = v["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{v}");
    assert!(warnings[0].as_str().unwrap().contains("\"dog\""), "{v}");
    assert!(
        m.stderr
            .contains("query class \"dog\" has no image in the gallery: its 3 queries score 0"),
        "{}",
        m.stderr
    );

    // submit: unreadable queries refuse the submission; an unreadable gallery file leaves a
    // complete answer from the rest, exit code 3.
    let sub = tmp.path().join("submission.json");
    let submit = |query: &Path| {
        Call::new("submit")
            .model("mobilenet_v2")
            .pair(query, root)
            .arg("--group")
            .arg("g")
            .arg("--out")
            .arg(&sub)
            .measured(&cache)
    };
    let m = submit(root);
    assert_eq!(m.code, Some(1), "{}", m.stderr);
    let bad = corpus.cases.len() - corpus.used().count();
    let message = format!(
        "{bad} of {} query files could not be read",
        corpus.cases.len()
    );
    assert!(m.stderr.contains(&message), "{}", m.stderr);
    assert!(!sub.exists());
    let m = submit(&root.join("dog"));
    assert_eq!(m.code, Some(3), "{}", m.stderr);
    within_budget("submit", &m);
    let written: Submission =
        serde_json::from_str(&std::fs::read_to_string(&sub).unwrap()).unwrap();
    assert_eq!(written.images.len(), 3);
    for list in written.images.values() {
        assert_eq!(list.len(), 10);
        assert!(list.iter().all(|n| files.contains(n)), "{list:?}");
    }
}

/// Fault drill: `embed` killed with SIGKILL at seeded random moments (the later ones while the
/// cache and the output are written), then run to the end: its output is byte for byte an
/// uninterrupted run's, and neither the cache folder nor the output folder holds a partial or
/// stale file.
#[test]
fn embed_killed_at_random_moments_ends_as_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let images = shared().join("query");
    let embed = |out: &Path| {
        Call::new("embed")
            .model("mobilenet_v2")
            .arg("--images")
            .arg(&images)
            .arg("--out")
            .arg(out)
    };
    let (straight_cache, drilled_cache) = (tmp.path().join("cache-a"), tmp.path().join("cache-b"));
    let (a, b) = (
        tmp.path().join("a/e.safetensors"),
        tmp.path().join("b/e.safetensors"),
    );
    std::fs::create_dir_all(a.parent().unwrap()).unwrap();
    std::fs::create_dir_all(b.parent().unwrap()).unwrap();
    let start = std::time::Instant::now();
    let (code, _, stderr) = embed(&a).run_with_code(&straight_cache);
    assert_eq!(code, Some(0), "{stderr}");
    let took = start.elapsed();

    let kills = hostile::kill_at_random_moments(
        || {
            embed(&b)
                .command(&drilled_cache)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        },
        took,
        6,
        (0.3, 0.9),
        0xD1B5_4A32_D192_ED03,
    );
    assert!(kills >= 1, "no run was interrupted");
    let (code, _, stderr) = embed(&b).run_with_code(&drilled_cache);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("ignoring embedding cache"), "{stderr}");
    assert!(same_embeddings(&a, &b));
    for dir in [&drilled_cache, &b.parent().unwrap().to_path_buf()] {
        let names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| n.ends_with(".safetensors") && !n.starts_with('.')),
            "{}: {names:?}",
            dir.display()
        );
    }
    // Served from the cache now: still the same bytes.
    let (code, _, stderr) = embed(&b).run_with_code(&drilled_cache);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(same_embeddings(&a, &b));
}

/// Whether two `embed` outputs hold the same rows, bit for bit, and the same metadata (whose
/// order in the file is a hash map's).
fn same_embeddings(a: &Path, b: &Path) -> bool {
    let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    let (ta, tb) = (
        safetensors::SafeTensors::deserialize(&a).unwrap(),
        safetensors::SafeTensors::deserialize(&b).unwrap(),
    );
    let (ma, mb) = (
        safetensors::SafeTensors::read_metadata(&a).unwrap().1,
        safetensors::SafeTensors::read_metadata(&b).unwrap().1,
    );
    let (ea, eb) = (
        ta.tensor("embeddings").unwrap(),
        tb.tensor("embeddings").unwrap(),
    );
    ea.shape() == eb.shape() && ea.data() == eb.data() && ma.metadata() == mb.metadata()
}
