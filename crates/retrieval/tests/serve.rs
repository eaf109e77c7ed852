//! `retrieval serve` over HTTP on loopback (port 0): the JSON API, every bad request it must
//! withstand, the scoring server driven by `retrieval submit --url`, the index across kills
//! and restarts, and the page in headless Chromium.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use retrieval::index::GalleryIndex;
use retrieval::serve::scoring::Answers;
use retrieval::submission::Submission;
use serde_json::{Value, json};

fn val() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets/animals10/val")
}

fn retrieval(cache: &Path) -> Command {
    model::weights::fetch(model::BackboneKind::MobileNetV2).expect("weights");
    let mut command = Command::new(env!("CARGO_BIN_EXE_retrieval"));
    command.env("LOOKALIKE_CACHE", cache);
    command
}

/// Copies a folder tree (files only), `keep` deciding which files.
fn copy_tree(from: &Path, to: &Path, keep: &dyn Fn(&Path) -> bool) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_tree(&path, &target, keep);
        } else if keep(&path) {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// A running `retrieval serve`, killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    /// Starts the service (MobileNetV2 over `gallery`, its index in `index`, then `extra`
    /// arguments) on a free loopback port and waits until it listens.
    fn start(cache: &Path, (gallery, index): (&Path, &Path), extra: &[&str], log: &Path) -> Self {
        let mut child = Self::spawn(cache, (gallery, index), extra, log);
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "no address in {line:?}: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            })
            .to_string();
        Self { child, base }
    }

    fn spawn(cache: &Path, (gallery, index): (&Path, &Path), extra: &[&str], log: &Path) -> Child {
        retrieval(cache)
            .args(["serve", "-m", "mobilenet_v2", "--gallery"])
            .arg(gallery)
            .arg("--index")
            .arg(index)
            .args(extra)
            .args(["--addr", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn address(&self) -> &str {
        self.base.strip_prefix("http://").unwrap()
    }

    fn healthy(&self) {
        let (status, body) = get(&self.url("/api/health"));
        assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response's status, headers we look at, and body.
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

fn send(request: ureq::Request, body: Option<&[u8]>) -> Answer {
    let result = match body {
        Some(b) => request.send_bytes(b),
        None => request.call(),
    };
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("request failed: {e}"),
    };
    let status = response.status();
    let retry_after = response.header("Retry-After").map(str::to_string);
    let mut bytes = Vec::new();
    response.into_reader().read_to_end(&mut bytes).unwrap();
    Answer {
        status,
        retry_after,
        body: bytes,
    }
}

fn get(url: &str) -> (u16, Value) {
    let a = send(ureq::get(url), None);
    (a.status, a.json())
}

fn post(url: &str, body: &[u8]) -> Answer {
    send(ureq::post(url), Some(body))
}

/// A request written byte for byte (no client normalising `..` away): (status, body).
fn raw(address: &str, request_line: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "{request_line}\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// A search's result names, in order.
fn names(results: &Value) -> Vec<String> {
    results["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect()
}

fn multipart(bytes: &[u8], file_name: &str) -> (String, Vec<u8>) {
    let boundary = "lookalike-test-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n10\r\n--{boundary}\r\n\
         Content-Disposition: form-data; name=\"image\"; filename=\"{file_name}\"\r\n\
         Content-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

const TOKEN: &str = "s3cret-token";

#[test]
fn api_answers_every_request_and_scores_submissions() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let gallery = tmp.path().join("gallery");
    copy_tree(&val().join("gallery"), &gallery, &|_| true);
    let answers = tmp.path().join("answers.json");
    let out = retrieval(&cache)
        .args(["answers", "--query"])
        .arg(val().join("query"))
        .arg("--gallery")
        .arg(&gallery)
        .arg("--out")
        .arg(&answers)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let index = tmp.path().join("index");
    let server = Server::start(
        &cache,
        (&gallery, &index),
        &[
            "--answers",
            answers.to_str().unwrap(),
            "--token",
            TOKEN,
            "--max-body",
            "1000000",
            "--queue",
            "2",
            "--batch-size",
            "1",
            "--connections",
            "40",
        ],
        &tmp.path().join("serve.log"),
    );
    server.healthy();
    let (status, stats) = get(&server.url("/api/stats"));
    assert_eq!((status, stats["images"].as_u64()), (200, Some(300)));
    assert_eq!(stats["classes"]["dog"], 20);

    // Search by upload gives what `retrieval search` gives, raw body or multipart.
    for query in [
        "dog/dog (10).png",
        "cat/cat (24).png",
        "spider/spider (14).png",
    ] {
        let path = val().join("query").join(query);
        let bytes = std::fs::read(&path).unwrap();
        let api = post(&server.url("/api/search?k=10"), &bytes);
        assert_eq!(api.status, 200);
        let api = api.json();
        let cli = retrieval(&cache)
            .args(["search", "-m", "mobilenet_v2", "--json", "--gallery"])
            .arg(&gallery)
            .arg("--query")
            .arg(&path)
            .output()
            .unwrap();
        let cli: Value = serde_json::from_slice(&cli.stdout).unwrap();
        let cli_rows = cli["results"].as_object().unwrap().values().next().unwrap();
        let cli_names: Vec<&str> = cli_rows
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["file"].as_str().unwrap())
            .collect();
        assert_eq!(names(&api), cli_names, "{query}");
        let (api_d, cli_d) = (
            api["results"][0]["distance"].as_f64().unwrap(),
            cli_rows[0]["distance"].as_f64().unwrap(),
        );
        assert!((api_d - cli_d.sqrt()).abs() < 1e-3, "{api_d} vs √{cli_d}");
        let (content_type, body) = multipart(&bytes, "query.png");
        let form = send(
            ureq::post(&server.url("/api/search")).set("Content-Type", &content_type),
            Some(&body),
        );
        assert_eq!(names(&form.json()), names(&api), "multipart {query}");
        // More like the first hit: itself left out, its images served.
        let first = api["results"][0]["id"].as_u64().unwrap();
        let (status, similar) = get(&server.url(&format!("/api/images/{first}/similar?k=5")));
        assert_eq!(status, 200);
        assert_eq!(similar["results"].as_array().unwrap().len(), 5);
        assert!(
            similar["results"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["id"] != first)
        );
        let thumb = send(
            ureq::get(&server.url(&format!("/api/images/{first}/thumbnail"))),
            None,
        );
        assert_eq!(thumb.status, 200);
        let small = image::load_from_memory(&thumb.body).unwrap();
        assert!(small.width().max(small.height()) <= 160);
        let full = send(
            ureq::get(&server.url(&format!("/api/images/{first}/image"))),
            None,
        );
        let on_disk = std::fs::read(gallery.join(api["results"][0]["name"].as_str().unwrap()));
        assert_eq!(full.body, on_disk.unwrap());
    }
    // A distance cut-off, paging and near-duplicates.
    let bytes = std::fs::read(val().join("query/dog/dog (10).png")).unwrap();
    let near = post(&server.url("/api/search?k=50&max_distance=0.8"), &bytes).json();
    let near = near["results"].as_array().unwrap();
    assert!(!near.is_empty() && near.len() < 50);
    assert!(near.iter().all(|r| r["distance"].as_f64().unwrap() <= 0.8));
    let (_, page) = get(&server.url("/api/images?offset=290&limit=20"));
    assert_eq!(
        (
            page["total"].as_u64(),
            page["images"].as_array().unwrap().len()
        ),
        (Some(300), 10)
    );
    let (_, dogs) = get(&server.url("/api/images?label=dog&limit=100"));
    assert_eq!(dogs["total"], 20);
    let (status, groups) = get(&server.url("/api/duplicates?threshold=0.6"));
    assert_eq!(status, 200);
    assert!(groups["groups_total"].as_u64().unwrap() > 0, "{groups}");

    // The scoring server, end to end with `retrieval submit --url`.
    let submission = tmp.path().join("submission.json");
    let out = retrieval(&cache)
        .args(["submit", "-m", "mobilenet_v2", "--group", "team", "--query"])
        .arg(val().join("query"))
        .arg("--gallery")
        .arg(&gallery)
        .arg("--out")
        .arg(&submission)
        .arg("--url")
        .arg(server.url("/api/submit"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verdict: Value = serde_json::from_str(stdout.split("server: ").nth(1).unwrap()).unwrap();
    let sub: Submission =
        serde_json::from_str(&std::fs::read_to_string(&submission).unwrap()).unwrap();
    let truth: Answers = serde_json::from_str(&std::fs::read_to_string(&answers).unwrap()).unwrap();
    let real = |m: &BTreeMap<String, String>| {
        m.iter()
            .filter(|(_, l)| *l != "distractor")
            .map(|(a, b)| (a.clone(), b.clone()))
            .collect()
    };
    let (t1, _, _, score) = sub.score(&real(&truth.queries), &real(&truth.gallery));
    assert!((verdict["top1"].as_f64().unwrap() - t1).abs() < 1e-9);
    assert!((verdict["score"].as_f64().unwrap() - score).abs() < 1e-6);
    assert!(t1 > 0.8, "zero-shot top-1 {t1}");
    // A group name is shown as text on the leaderboard, never as markup.
    let mut odd = sub.clone();
    odd.groupname = "<b>bold</b>".into();
    assert_eq!(
        post(
            &server.url("/api/submit"),
            &serde_json::to_vec(&odd).unwrap()
        )
        .status,
        200
    );
    // Everything wrong with a submission is listed.
    let mut broken = sub.clone();
    let first_query = broken.images.keys().next().unwrap().clone();
    broken.images.remove(&first_query);
    let (q, list) = broken.images.iter_mut().next().unwrap();
    let q = q.clone();
    list[1] = list[0].clone();
    list[2] = "not-in-the-gallery.png".into();
    broken.images.insert("unknown.png".into(), vec![]);
    let refused = post(
        &server.url("/api/submit"),
        &serde_json::to_vec(&broken).unwrap(),
    );
    assert_eq!(refused.status, 400);
    let problems: Vec<String> = refused.json()["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    for needle in [
        format!("{first_query:?} has no entry"),
        format!("{q:?} lists a gallery file twice"),
        "\"not-in-the-gallery.png\", not in the gallery".to_string(),
        "\"unknown.png\" is not a query".to_string(),
    ] {
        assert!(
            problems.iter().any(|p| p.contains(&needle)),
            "{needle} in {problems:?}"
        );
    }
    let (_, board) = get(&server.url("/api/leaderboard"));
    let groups: Vec<&str> = board["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["groupname"].as_str().unwrap())
        .collect();
    assert_eq!(groups.len(), 2, "{board}");
    assert!(groups.contains(&"team"));
    let page = send(ureq::get(&server.url("/leaderboard")), None);
    let page = String::from_utf8(page.body).unwrap();
    assert!(page.contains("team") && page.contains("&lt;b&gt;bold&lt;/b&gt;"));
    assert!(!page.contains("<b>bold"));
    assert!(
        std::fs::read_to_string(index.join("leaderboard.json"))
            .unwrap()
            .contains("team")
    );

    // Bad requests: each answered with its status and reason, the server serving on.
    let corpus = hostile::write(&tmp.path().join("corpus"));
    let bomb = std::fs::read(corpus.root.join("cat/dims.png")).unwrap();
    let cases: Vec<(&str, Answer, u16, &str)> = vec![
        (
            "text upload",
            post(&server.url("/api/search"), b"just some text"),
            415,
            "not a recognised image",
        ),
        (
            "empty upload",
            post(&server.url("/api/search"), b""),
            400,
            "empty",
        ),
        (
            "body over the limit",
            post(&server.url("/api/search"), &vec![0u8; 1_500_000]),
            413,
            "limit",
        ),
        (
            "decompression bomb",
            post(&server.url("/api/search"), &bomb),
            413,
            "decompression bomb",
        ),
        (
            "malformed JSON",
            post(
                &server.url("/api/submit"),
                b"{\"groupname\": \"x\", \"images\": {",
            ),
            400,
            "not a submission",
        ),
        (
            "JSON of the wrong shape",
            post(&server.url("/api/submit"), b"[1, 2]"),
            400,
            "not a submission",
        ),
        (
            "k of 0",
            post(&server.url("/api/search?k=0"), &bytes),
            400,
            "k must be",
        ),
        (
            "k not a number",
            post(&server.url("/api/search?k=ten"), &bytes),
            400,
            "ten",
        ),
        (
            "multipart without a file",
            {
                let b = b"--b\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n5\r\n--b--\r\n";
                send(
                    ureq::post(&server.url("/api/search"))
                        .set("Content-Type", "multipart/form-data; boundary=b"),
                    Some(b),
                )
            },
            400,
            "no file part",
        ),
        (
            "unknown id",
            send(ureq::get(&server.url("/api/images/999999")), None),
            404,
            "not found",
        ),
        (
            "id not a number",
            send(ureq::get(&server.url("/api/images/abc/image")), None),
            404,
            "not found",
        ),
        (
            "unknown route",
            send(ureq::get(&server.url("/api/nothing")), None),
            404,
            "not found",
        ),
        (
            "add without token",
            post(&server.url("/api/images?name=x.png"), &bytes),
            401,
            "token",
        ),
        (
            "add with a wrong token",
            send(
                ureq::post(&server.url("/api/images?name=x.png"))
                    .set("Authorization", "Bearer nope"),
                Some(&bytes),
            ),
            401,
            "token",
        ),
        (
            "remove without token",
            send(ureq::delete(&server.url("/api/images/0")), None),
            401,
            "token",
        ),
    ];
    for (what, answer, status, needle) in cases {
        let body = String::from_utf8_lossy(&answer.body).into_owned();
        assert_eq!(answer.status, status, "{what}: {body}");
        assert!(body.contains(needle), "{what}: {body}");
        server.healthy();
    }
    // Path traversal, plain and encoded, in every route that names a file: nothing outside
    // the gallery is served.
    for path in [
        "/api/images/../../../../etc/passwd",
        "/api/images/..%2F..%2F..%2F..%2Fetc%2Fpasswd/image",
        "/api/images/%2Fetc%2Fpasswd/image",
        "/api/images/%2e%2e/%2e%2e/%2e%2e/etc/passwd/image",
        "/api/images/0/../../../../etc/passwd",
        "/../../../../etc/passwd",
        "/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/api/images/%zz/image",
        "//etc/passwd",
    ] {
        let (status, text) = raw(server.address(), &format!("GET {path} HTTP/1.1"));
        assert!(matches!(status, 400 | 404), "{path}: {status}");
        assert!(
            !text.contains("root:"),
            "{path} served a file outside the gallery"
        );
        server.healthy();
    }
    // A gallery link pointing outside is indexed by nobody's choice but never served.
    assert!(server.address().starts_with("127.0.0.1:"));

    // Past the bounded queue: 503 with Retry-After, never a failure or a pile-up. A tiny
    // query decodes in microseconds, so the burst reaches the queue while the worker embeds.
    let mut tiny = Vec::new();
    image::RgbImage::from_pixel(16, 16, image::Rgb([200, 120, 40]))
        .write_to(
            &mut std::io::Cursor::new(&mut tiny),
            image::ImageFormat::Png,
        )
        .unwrap();
    let url = server.url("/api/search");
    let statuses: Vec<(u16, Option<String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..32)
            .map(|_| {
                scope.spawn(|| {
                    let a = post(&url, &tiny);
                    (a.status, a.retry_after)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        statuses.iter().all(|(s, _)| matches!(s, 200 | 503)),
        "{statuses:?}"
    );
    assert!(statuses.iter().any(|(s, _)| *s == 200), "{statuses:?}");
    assert!(
        statuses
            .iter()
            .any(|(s, r)| *s == 503 && r.as_deref() == Some("1")),
        "{statuses:?}"
    );
    server.healthy();

    // Add with the token, find it, remove it: the file moves beside the index.
    let added = send(
        ureq::post(&server.url("/api/images?name=added.png&label=dog"))
            .set("Authorization", &format!("Bearer {TOKEN}")),
        Some(&bytes),
    );
    assert_eq!(
        added.status,
        201,
        "{}",
        String::from_utf8_lossy(&added.body)
    );
    let id = added.json()["id"].as_u64().unwrap();
    assert!(gallery.join("dog/added.png").is_file());
    let found = post(&server.url("/api/search?k=1"), &bytes).json();
    assert_eq!(found["results"][0]["id"], id);
    assert!(found["results"][0]["distance"].as_f64().unwrap() < 1e-3);
    let again = send(
        ureq::post(&server.url("/api/images?name=added.png&label=dog"))
            .set("Authorization", &format!("Bearer {TOKEN}")),
        Some(&bytes),
    );
    assert_eq!(again.status, 409);
    for bad_name in ["../escape.png", ".hidden.png", "no-extension"] {
        let a = send(
            ureq::post(&server.url(&format!(
                "/api/images?name={}",
                bad_name.replace('/', "%2F")
            )))
            .set("Authorization", &format!("Bearer {TOKEN}")),
            Some(&bytes),
        );
        assert_eq!(a.status, 400, "{bad_name}");
    }
    assert!(!tmp.path().join("escape.png").exists());
    let removed = send(
        ureq::delete(&server.url(&format!("/api/images/{id}")))
            .set("Authorization", &format!("Bearer {TOKEN}")),
        None,
    );
    assert_eq!(removed.status, 200);
    assert!(!gallery.join("dog/added.png").exists());
    assert!(index.join(format!("removed/{id}-added.png")).is_file());
    let after = post(&server.url("/api/search?k=1"), &bytes).json();
    assert_ne!(after["results"][0]["id"], id);
    assert_eq!(get(&server.url(&format!("/api/images/{id}"))).0, 404);
    let (_, stats) = get(&server.url("/api/stats"));
    assert_eq!(stats["images"], 300);
}

/// The persisted index: a build killed at random moments resumes to the same index as an
/// uninterrupted one; later starts embed only what changed; a damaged index is rebuilt.
#[test]
fn index_resumes_after_kills_and_updates_incrementally() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let gallery = tmp.path().join("gallery");
    let classes = ["bear", "cat", "dog", "horse", "distractor"];
    copy_tree(&val().join("gallery"), &gallery, &|p| {
        let class = p.parent().unwrap().file_name().unwrap().to_str().unwrap();
        classes.contains(&class)
    });
    let log = tmp.path().join("serve.log");
    let extra = ["--save-every", "0.3", "--batch-size", "8"];
    let start = |index: &Path| -> String {
        drop(Server::start(&cache, (&gallery, index), &extra, &log));
        std::fs::read_to_string(&log).unwrap()
    };
    let reference = tmp.path().join("reference");
    let began = Instant::now();
    let report = start(&reference);
    let took = began.elapsed();
    assert!(
        report.contains("180 images (0 kept, 0 reused, 180 embedded, 0 dropped)"),
        "{report}"
    );
    let reference = GalleryIndex::load(&reference).unwrap().unwrap();

    let drilled = tmp.path().join("drilled");
    let kills = hostile::kill_at_random_moments(
        || Server::spawn(&cache, (&gallery, &drilled), &extra, &log),
        took,
        5,
        (0.2, 0.9),
        7,
    );
    assert!(kills >= 3, "only {kills} runs were killed");
    let report = start(&drilled);
    assert!(report.contains("180 images"), "{report}");
    let resumed = GalleryIndex::load(&drilled).unwrap().unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(&drilled)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let by_name = |index: &GalleryIndex| -> BTreeMap<String, (String, Vec<f32>)> {
        index
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.clone(), (e.hash.clone(), index.row(i).to_vec())))
            .collect()
    };
    let (want, got) = (by_name(&reference), by_name(&resumed));
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>()
    );
    for (name, (hash, row)) in &want {
        assert_eq!(&got[name].0, hash, "{name}");
        let diff = row
            .iter()
            .zip(&got[name].1)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-4, "{name}: rows differ by {diff}");
    }

    // One file removed, one renamed, one added: only the new one is embedded.
    let ids_before: BTreeMap<String, u64> = resumed
        .entries
        .iter()
        .map(|e| (e.name.clone(), e.id))
        .collect();
    std::fs::remove_file(gallery.join("cat/cat (10).png")).unwrap();
    std::fs::rename(
        gallery.join("dog/dog (13).png"),
        gallery.join("dog/renamed.png"),
    )
    .unwrap();
    std::fs::copy(
        val().join("query/dog/dog (10).png"),
        gallery.join("dog/new.png"),
    )
    .unwrap();
    let report = start(&drilled);
    assert!(
        report.contains("180 images (178 kept, 1 reused, 1 embedded, 2 dropped)"),
        "{report}"
    );
    let updated = GalleryIndex::load(&drilled).unwrap().unwrap();
    for e in &updated.entries {
        if let Some(id) = ids_before.get(&e.name) {
            assert_eq!(*id, e.id, "{} kept its id", e.name);
        }
    }
    // A damaged index is reported and rebuilt, never used.
    let file = drilled.join(retrieval::index::INDEX_FILE);
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0x55;
    std::fs::write(&file, &bytes).unwrap();
    let report = start(&drilled);
    assert!(
        report.contains("checksum mismatch") && report.contains("rebuilding"),
        "{report}"
    );
    assert!(
        report.contains("180 images (0 kept, 0 reused, 180 embedded, 0 dropped)"),
        "{report}"
    );
}

/// Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: commands
/// on its fd 3, answers and events on its fd 4, each message ending in a NUL byte).
struct Browser {
    child: Child,
    commands: std::fs::File,
    answers: BufReader<std::fs::File>,
    next_id: u64,
    session: Option<String>,
}

impl Browser {
    fn launch(binary: &Path, profile: &Path) -> Self {
        use std::os::fd::FromRawFd;
        use std::os::unix::process::CommandExt;
        let pipe = || {
            let mut fds = [0; 2];
            // SAFETY: pipe2 writes two new descriptors into the array. Close-on-exec keeps
            // them out of other children; dup2 in the browser's child clears it on 3 and 4.
            assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
            fds
        };
        let (to_browser, from_browser) = (pipe(), pipe());
        let mut command = Command::new(binary);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-pipe",
                "--window-size=1200,900",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let (read_end, write_end) = (to_browser[0], from_browser[1]);
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec. The ends
        // move to high numbers first, so neither is overwritten when the other lands on 3 or
        // 4 (one of them may be 3 or 4 already); dup2 to a new number clears close-on-exec.
        unsafe {
            command.pre_exec(move || {
                let high_read = libc::fcntl(read_end, libc::F_DUPFD, 100);
                let high_write = libc::fcntl(write_end, libc::F_DUPFD, 100);
                if high_read < 0
                    || high_write < 0
                    || libc::dup2(high_read, 3) < 0
                    || libc::dup2(high_write, 4) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap();
        // SAFETY: the descriptors are ours; the child holds its own copies.
        unsafe {
            libc::close(to_browser[0]);
            libc::close(from_browser[1]);
        }
        let commands = unsafe { std::fs::File::from_raw_fd(to_browser[1]) };
        let answers = unsafe { std::fs::File::from_raw_fd(from_browser[0]) };
        Self {
            child,
            commands,
            answers: BufReader::new(answers),
            next_id: 0,
            session: None,
        }
    }

    /// Sends a command (to the attached page, once attached) and waits for its answer.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let mut message = json!({"id": self.next_id, "method": method, "params": params});
        if let Some(session) = &self.session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands.write_all(&bytes).unwrap();
        loop {
            let mut buffer = Vec::new();
            self.answers.read_until(0, &mut buffer).unwrap();
            assert!(!buffer.is_empty(), "the browser closed its pipe");
            buffer.pop();
            let answer: Value = serde_json::from_slice(&buffer).unwrap();
            if answer["id"] == self.next_id {
                assert!(answer.get("error").is_none(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// Opens `url` in a new page and attaches to it.
    fn open(&mut self, url: &str) {
        let target = self.call("Target.createTarget", json!({"url": url}));
        let attached = self.call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        self.session = Some(attached["sessionId"].as_str().unwrap().to_string());
    }

    /// Evaluates a JavaScript expression in the page; its value.
    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        r["result"]["value"].clone()
    }

    /// Polls an expression until it is truthy; its value.
    fn wait_for(&mut self, expression: &str, timeout: Duration) -> Value {
        let began = Instant::now();
        loop {
            let v = self.eval(expression);
            if !(v.is_null() || v == json!(false) || v == json!("") || v == json!([])) {
                return v;
            }
            if began.elapsed() > timeout {
                let page = self.eval("document.body.innerText.slice(0, 600)");
                let images = self.eval(
                    "[...document.images].map(i => `${i.src} ${i.complete} ${i.naturalWidth}`)",
                );
                panic!(
                    "timed out waiting for {expression}; the page reads {page}; images {images}"
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The page in a real browser: a query chosen through its file input (as a user would, via
/// the DevTools protocol) renders results whose first hit is the API's, thumbnails loaded;
/// clicking a result shows more like it.
#[test]
fn page_uploads_a_query_and_renders_its_results() {
    let Some(binary) = hostile::chromium() else {
        eprintln!("chromium not installed: skipping the browser test");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let gallery = val().join("gallery");
    let server = Server::start(
        &cache,
        (&gallery, &tmp.path().join("index")),
        &[],
        &tmp.path().join("serve.log"),
    );
    // The browser reads the file itself: give it a path without `..`.
    let query = std::fs::canonicalize(val().join("query/horse/horse (13).png")).unwrap();
    let api = post(
        &server.url("/api/search?k=10"),
        &std::fs::read(&query).unwrap(),
    )
    .json();
    let expected = names(&api);

    let mut browser = Browser::launch(&binary, &tmp.path().join("profile"));
    browser.open(&server.url("/"));
    browser.wait_for(
        "document.readyState === 'complete' && document.getElementById('stats').textContent",
        Duration::from_secs(30),
    );
    let input = browser.call(
        "Runtime.evaluate",
        json!({"expression": "document.getElementById('file')"}),
    );
    browser.call(
        "DOM.setFileInputFiles",
        json!({"files": [query.to_str().unwrap()], "objectId": input["result"]["objectId"]}),
    );
    let shown = browser.wait_for(
        "[...document.querySelectorAll('#results .hit .name')].map(e => e.textContent)",
        Duration::from_secs(60),
    );
    let shown: Vec<String> = serde_json::from_value(shown).unwrap();
    assert_eq!(shown, expected);
    assert_eq!(
        browser.eval("document.querySelector('#results .hit .label').textContent"),
        json!("horse")
    );
    let loaded = browser.wait_for(
        "(() => { const i = [...document.querySelectorAll('#results img')]; \
         return i.length > 0 && i.every(x => x.complete && x.naturalWidth > 0) && i.length; })()",
        Duration::from_secs(30),
    );
    assert_eq!(loaded, json!(10));
    // Clicking the first result asks for more like it.
    browser.eval("document.querySelector('#results .hit').click()");
    let heading = browser.wait_for(
        "document.getElementById('query').textContent.startsWith('More like') && document.getElementById('query').textContent",
        Duration::from_secs(30),
    );
    assert!(
        heading.as_str().unwrap().contains(&expected[0]),
        "{heading}"
    );
}

/// `search`, `submit` and `evaluate` with `--index`: the gallery is embedded once into a
/// persisted index; HNSW rankings match exact ones on the validation set; `--exact` and
/// `evaluate` rank exactly, with the figures of a run without an index.
#[test]
fn commands_use_a_persisted_index() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let index = tmp.path().join("index");
    let run = |args: &[&str], with_index: bool| -> (String, String) {
        let mut command = retrieval(&cache);
        command.args(args).args(["-m", "mobilenet_v2", "--query"]);
        command
            .arg(val().join("query"))
            .arg("--gallery")
            .arg(val().join("gallery"));
        if with_index {
            command.arg("--index").arg(&index);
        }
        let out = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{args:?}: {stderr}");
        (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
    };
    let names = |json: &str| -> BTreeMap<String, Vec<String>> {
        let v: Value = serde_json::from_str(json).unwrap();
        v["results"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(q, hits)| {
                let list = hits.as_array().unwrap();
                (
                    q.clone(),
                    list.iter()
                        .map(|h| h["file"].as_str().unwrap().to_string())
                        .collect(),
                )
            })
            .collect()
    };
    let plain = names(&run(&["search", "--json"], false).0);
    let (hnsw, _) = run(&["search", "--json"], true);
    assert!(index.join(retrieval::index::INDEX_FILE).is_file());
    assert!(index.join(retrieval::ann::ANN_FILE).is_file());
    let hnsw = names(&hnsw);
    let found: usize = plain
        .iter()
        .map(|(q, want)| hnsw[q].iter().filter(|n| want.contains(n)).count())
        .sum();
    assert!(found as f64 >= 0.98 * 1000.0, "recall@10 {found}/1000");
    assert_eq!(names(&run(&["search", "--json", "--exact"], true).0), plain);
    let figures = |json: &str| -> Vec<f64> {
        let v: Value = serde_json::from_str(json).unwrap();
        ["top1", "top5", "top10", "map10", "score"]
            .iter()
            .map(|k| v[k].as_f64().unwrap())
            .collect()
    };
    assert_eq!(
        figures(&run(&["evaluate", "--json"], true).0),
        figures(&run(&["evaluate", "--json"], false).0)
    );
    let out = tmp.path().join("submission.json");
    run(
        &["submit", "--group", "g", "--out", out.to_str().unwrap()],
        true,
    );
    let sub: Submission = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(sub.images.len(), 100);
}
