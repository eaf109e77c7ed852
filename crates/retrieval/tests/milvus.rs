//! `--index milvus://…` and `embed --out milvus://…` against a real Milvus server on loopback:
//! the standalone server of PyPI's `milvus==2.3.5`, installed into `target/milvus-venv` on
//! first use (or `$LOOKALIKE_MILVUS_SERVER`), started on a free port with a fresh data folder
//! and stopped at the end.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use retrieval::milvus::{Collection, MilvusUrl};
use serde_json::Value;

const MILVUS: &str = "milvus==2.3.5";

fn val() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets/animals10/val")
}

/// The `milvus-server` launcher, installed with pip into `target/milvus-venv` if needed.
fn milvus_server() -> PathBuf {
    if let Some(path) = std::env::var_os("LOOKALIKE_MILVUS_SERVER") {
        return path.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/milvus-venv");
    let server = venv.join("bin/milvus-server");
    if !server.exists() {
        let ok = |c: &mut Command| c.status().map(|s| s.success()).unwrap_or(false);
        assert!(
            ok(Command::new("python3").args(["-m", "venv"]).arg(&venv))
                && ok(Command::new(venv.join("bin/pip")).args(["install", "-q", MILVUS])),
            "cannot install {MILVUS} into {} (pip and PyPI are needed)",
            venv.display()
        );
    }
    server
}

/// A Milvus standalone server on loopback, stopped (with its whole process group) when
/// dropped.
struct Milvus {
    child: Child,
    port: u16,
    _data: tempfile::TempDir,
}

impl Milvus {
    fn start() -> Self {
        // The standalone server's embedded etcd always takes 2380: a second server on the same
        // machine fails to start (and its launcher waits on).
        assert!(
            std::net::TcpListener::bind("127.0.0.1:2380").is_ok(),
            "port 2380 is taken (another Milvus standalone server on this machine?): stop it"
        );
        let data = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(milvus_server())
            .arg("--data")
            .arg(data.path())
            .args(["--proxy-port", &port.to_string()])
            .stdout(std::fs::File::create(data.path().join("server.log")).unwrap())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("milvus-server");
        let server = Self {
            child,
            port,
            _data: data,
        };
        let start = Instant::now();
        let url = format!("http://127.0.0.1:{port}/v1/vector/collections");
        while ureq::get(&url).call().is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(180),
                "Milvus did not answer on port {port} within 3 minutes"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        server
    }

    fn url(&self, collection: &str) -> String {
        format!("milvus://127.0.0.1:{}/{collection}", self.port)
    }
}

/// The processes whose command line names `dir` (the server binary runs from `DATA/bin`).
fn processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(&needle)
                .then(|| pid.to_string())
        })
        .collect()
}

impl Drop for Milvus {
    fn drop(&mut self) {
        // The launcher stops the server on SIGINT; the server runs in a process group of its
        // own, so whatever still runs from the data folder afterwards is killed by name.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
        let left = processes_under(self._data.path());
        if !left.is_empty() {
            let _ = Command::new("kill").arg("-KILL").args(&left).status();
        }
    }
}

fn retrieval(cache: &Path, args: &[&str]) -> Output {
    model::weights::fetch(model::BackboneKind::MobileNetV2).expect("weights");
    Command::new(env!("CARGO_BIN_EXE_retrieval"))
        .env("LOOKALIKE_CACHE", cache)
        .args(args)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `search --json`'s results: each query's top-k file names, in order.
fn top(out: &Output) -> BTreeMap<String, Vec<String>> {
    assert!(out.status.success(), "{}", text(out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["results"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(q, hits)| {
            let names = hits
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["file"].as_str().unwrap().to_string())
                .collect();
            (q.clone(), names)
        })
        .collect()
}

/// The share of queries whose top-k from Milvus is the exact top-k (as a set: ties may swap).
fn agreement(a: &BTreeMap<String, Vec<String>>, b: &BTreeMap<String, Vec<String>>) -> f64 {
    assert_eq!(a.len(), b.len());
    let same = a
        .iter()
        .filter(|(q, names)| {
            let mut x = (*names).clone();
            let mut y = b[*q].clone();
            x.sort();
            y.sort();
            x == y
        })
        .count();
    same as f64 / a.len() as f64
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// `serve --milvus`: the collection mirrors the gallery index on start, searches go through
/// it and agree with exact search, and an image added or removed through the API is added to
/// or deleted from the collection.
fn serve_through_milvus(
    cache: &Path,
    gallery: &Path,
    query: &Path,
    exact: &BTreeMap<String, Vec<String>>,
    url: &str,
) {
    const TOKEN: &str = "milvus-token";
    let index = cache.join("serve-index");
    let log = cache.join("serve.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_retrieval"))
        .env("LOOKALIKE_CACHE", cache)
        .args(["serve", "-m", "mobilenet_v2", "--gallery"])
        .arg(gallery)
        .arg("--index")
        .arg(&index)
        .args(["--milvus", url, "--token", TOKEN, "--addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _child = Kill(child);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("no address in {line:?}: {}", log_text()))
        .to_string();
    assert!(log_text().contains("299 inserted"), "{}", log_text());
    let collection = Collection::open(&url.parse().unwrap(), "mobilenet_v2", 1280).unwrap();
    assert_eq!(collection.entries().unwrap().len(), 299);
    let json = |r: Result<ureq::Response, ureq::Error>| -> (u16, Value) {
        let r = match r {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("request failed: {e}"),
        };
        (r.status(), r.into_json().unwrap_or(Value::Null))
    };
    let (_, stats) = json(ureq::get(&format!("{base}/api/stats")).call());
    assert_eq!(stats["search"], "milvus", "{stats}");

    // The service's top-10 through Milvus is exact search's, query by query.
    let names = |v: &Value| -> Vec<String> {
        let mut n: Vec<String> = v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_string())
            .collect();
        n.sort();
        n
    };
    let mut same = 0;
    let checked: Vec<_> = exact.iter().take(10).collect();
    for (q, want) in &checked {
        let bytes = std::fs::read(query.join(q.as_str())).unwrap();
        let (status, found) =
            json(ureq::post(&format!("{base}/api/search?k=10")).send_bytes(&bytes));
        assert_eq!(status, 200, "{found}");
        let mut want = (*want).clone();
        want.sort();
        same += usize::from(names(&found) == want);
    }
    assert!(same >= 9, "{same} of {} queries agree", checked.len());

    // Added through the API: in the collection and found first; removed: gone from both.
    let bytes = std::fs::read(query.join(checked[0].0.as_str())).unwrap();
    let (status, added) = json(
        ureq::post(&format!("{base}/api/images?name=added.png&label=dog"))
            .set("Authorization", &format!("Bearer {TOKEN}"))
            .send_bytes(&bytes),
    );
    assert_eq!(status, 201, "{added}");
    assert_eq!(collection.entries().unwrap().len(), 300);
    let (_, found) = json(ureq::post(&format!("{base}/api/search?k=1")).send_bytes(&bytes));
    assert_eq!(found["results"][0]["name"], "dog/added.png", "{found}");
    let id = added["id"].as_u64().unwrap();
    let (status, _) = json(
        ureq::delete(&format!("{base}/api/images/{id}"))
            .set("Authorization", &format!("Bearer {TOKEN}"))
            .call(),
    );
    assert_eq!(status, 200);
    assert_eq!(collection.entries().unwrap().len(), 299);
    let (_, found) = json(ureq::post(&format!("{base}/api/search?k=10")).send_bytes(&bytes));
    assert!(
        !names(&found).contains(&"dog/added.png".to_string()),
        "{found}"
    );
}

/// Ingest the val gallery (streamed by `embed`, in two shards), re-ingest (nothing added), search through
/// Milvus against exact search, remove a file (gone from the results), and the errors a user
/// meets: another model on the collection, a server that is not there.
#[test]
fn milvus_gallery_matches_exact_search() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let gallery = tmp.path().join("gallery");
    copy_tree(&val().join("gallery"), &gallery);
    let gallery_s = gallery.to_str().unwrap();
    let query = val().join("query");
    let query_s = query.to_str().unwrap();
    let milvus = Milvus::start();
    let url = milvus.url("val_mobilenet");

    // Ingest in two shards (two jobs, as on two machines), then the whole folder again: that
    // run embeds and inserts nothing.
    let embed = [
        "embed",
        "-m",
        "mobilenet_v2",
        "--images",
        gallery_s,
        "--out",
    ];
    for shard in ["0/2", "1/2"] {
        let out = retrieval(&cache, &[&embed[..], &[&url, "--shard", shard]].concat());
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("150 inserted, 0 already there"),
            "{}",
            text(&out)
        );
    }
    let again = retrieval(&cache, &[&embed[..], &[&url]].concat());
    assert!(
        text(&again).contains("0 inserted, 300 already there"),
        "{}",
        text(&again)
    );
    let bad = retrieval(&cache, &[&embed[..], &[&url, "--shard", "2/2"]].concat());
    assert!(!bad.status.success() && text(&bad).contains("--shard \"2/2\""));
    let parsed: MilvusUrl = url.parse().unwrap();
    let collection = Collection::open(&parsed, "mobilenet_v2", 1280).unwrap();
    assert_eq!(collection.entries().unwrap().len(), 300);

    // Searches through Milvus give exact search's top-10.
    let search = [
        "search",
        "-m",
        "mobilenet_v2",
        "--query",
        query_s,
        "--gallery",
        gallery_s,
        "--json",
    ];
    let exact = top(&retrieval(&cache, &search));
    let by_milvus = top(&retrieval(
        &cache,
        &[&search[..], &["--index", &url]].concat(),
    ));
    let share = agreement(&exact, &by_milvus);
    eprintln!("Milvus gives exact search's top-10 for {share:.2} of the val queries");
    assert!(share >= 0.98, "Milvus agrees with exact search on {share}");

    // A file removed from the gallery is deleted from the collection and the results.
    let (first_query, hits) = exact.iter().next().unwrap();
    let removed = hits[0].clone();
    std::fs::remove_file(gallery.join(&removed)).unwrap();
    let after = top(&retrieval(
        &cache,
        &[&search[..], &["--index", &url]].concat(),
    ));
    assert!(!after[first_query].contains(&removed));
    assert!(after.values().all(|names| !names.contains(&removed)));
    assert_eq!(collection.entries().unwrap().len(), 299);
    let exact_after = top(&retrieval(&cache, &search));
    assert!(agreement(&exact_after, &after) >= 0.98);

    // Another model on the same collection is refused, naming both.
    let other = retrieval(
        &cache,
        &[&search[..], &["--index", &url]].concat().as_slice()[..]
            .iter()
            .map(|a| {
                if *a == "mobilenet_v2" {
                    "hsv_histogram"
                } else {
                    a
                }
            })
            .collect::<Vec<_>>(),
    );
    assert!(!other.status.success());
    assert!(
        text(&other).contains("val_mobilenet") && text(&other).contains("hsv_histogram"),
        "{}",
        text(&other)
    );

    serve_through_milvus(
        &cache,
        &gallery,
        &query,
        &exact_after,
        &milvus.url("serve_mobilenet"),
    );

    // No server there: a clear error and a failing exit code.
    drop(milvus);
    let gone = retrieval(&cache, &[&search[..], &["--index", &url]].concat());
    assert!(!gone.status.success());
    assert!(
        text(&gone).contains("cannot reach the Milvus server"),
        "{}",
        text(&gone)
    );
}
