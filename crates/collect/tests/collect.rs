//! `data::collect` end to end: folders with duplicates, near copies, a leaked validation image,
//! broken and non-image files, and a URL list served by a local HTTP server (404, HTML, an
//! oversized body, a timeout, a failure that passes on retry). Then idempotence, and a file
//! accepted before being removed once a new protected folder covers it.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use collect::fetch::FetchOptions;
use collect::manifest::Row;
use collect::{CollectOptions, collect};
use image::{Rgb, RgbImage};

/// A photo-like image: a gradient with fifteen seeded soft discs of many sizes.
fn scene(seed: u64) -> RgbImage {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as f32 / (1u64 << 31) as f32
    };
    let discs: Vec<[f32; 6]> = (0..15)
        .map(|_| [next(), next(), 0.03 + 0.2 * next(), next(), next(), next()])
        .collect();
    RgbImage::from_fn(320, 240, |x, y| {
        let (fx, fy) = (x as f32 / 320.0, y as f32 / 240.0);
        let mut c = [fx * 120.0, fy * 120.0, 60.0];
        for [cx, cy, r, red, green, blue] in &discs {
            let d = ((fx - cx).powi(2) + (fy - cy).powi(2)).sqrt();
            let a = (1.0 - d / r).clamp(0.0, 1.0);
            for (v, t) in c.iter_mut().zip([red, green, blue]) {
                *v = *v * (1.0 - a) + t * 255.0 * a;
            }
        }
        Rgb(c.map(|v| v as u8))
    })
}

fn png(img: &RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn jpeg(img: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(img)
        .unwrap();
    out
}

fn put(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

type Route = (u16, &'static str, Vec<u8>);

/// A tiny HTTP/1.1 server on a free local port, one thread per connection. `/slow.png`
/// answers after 3 s; `/flaky.png` fails with 503 the first time.
fn serve(routes: HashMap<&'static str, Route>, flaky_hits: Arc<AtomicUsize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let routes = Arc::new(routes);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let routes = routes.clone();
            let flaky_hits = flaky_hits.clone();
            std::thread::spawn(move || {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
                if path == "/slow.png" {
                    std::thread::sleep(Duration::from_secs(3));
                }
                let (status, content_type, body) =
                    if path == "/flaky.png" && flaky_hits.fetch_add(1, Ordering::SeqCst) == 0 {
                        (503, "text/plain", b"busy".to_vec())
                    } else {
                        routes.get(path.as_str()).cloned().unwrap_or((
                            404,
                            "text/plain",
                            b"not found".to_vec(),
                        ))
                    };
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            });
        }
    });
    address
}

/// Rows keyed by the last segment of their source.
fn by_source(rows: &[Row]) -> HashMap<String, Row> {
    rows.iter()
        .map(|r| {
            let key = r.source.rsplit(['/', '\\']).next().unwrap().to_string();
            (key, r.clone())
        })
        .collect()
}

#[test]
fn collect_rejects_what_it_must_and_is_idempotent() {
    let root = tempfile::tempdir().unwrap();
    let (val, train, from, into) = (
        root.path().join("val"),
        root.path().join("train"),
        root.path().join("from"),
        root.path().join("into"),
    );
    let leaked = scene(1);
    let fresh = scene(2);
    let trained = scene(3);
    put(&val.join("query/dog/leaked.png"), &png(&leaked));
    put(&train.join("cat/trained.png"), &png(&trained));

    // Leaks of the validation image: a byte copy, a resized JPEG, an off-centre crop.
    put(&from.join("dog/copy_of_val.png"), &png(&leaked));
    let small = image::imageops::resize(&leaked, 200, 150, image::imageops::Triangle);
    put(&from.join("dog/resized_val.jpg"), &jpeg(&small, 70));
    let crop = image::imageops::crop_imm(&leaked, 20, 20, 272, 204).to_image();
    put(&from.join("dog/cropped_val.png"), &png(&crop));
    // A new image, its byte copy and a recompressed copy; a copy of a training image.
    let fresh_png = png(&fresh);
    put(&from.join("cat/a_fresh.png"), &fresh_png);
    put(&from.join("cat/b_fresh_copy.png"), &fresh_png);
    put(
        &from.join("cat/c_fresh_recompressed.jpg"),
        &jpeg(&fresh, 60),
    );
    put(&from.join("cat/trained_copy.png"), &png(&trained));
    // Broken, not an image, too small, and an image of a third class.
    put(&from.join("cat/broken.jpg"), &jpeg(&scene(4), 90)[..400]);
    put(&from.join("cat/notes.txt"), b"not an image");
    put(&from.join("cat/tiny.png"), &png(&RgbImage::new(20, 20)));
    put(&from.join("horse/horse.jpg"), &jpeg(&scene(5), 90));

    let served = png(&scene(6));
    let routes = HashMap::from([
        ("/served.png", (200, "image/png", served.clone())),
        ("/flaky.png", (200, "image/png", png(&scene(7)))),
        ("/slow.png", (200, "image/png", png(&scene(8)))),
        (
            "/page.html",
            (200, "text/html; charset=utf-8", b"<html></html>".to_vec()),
        ),
        ("/huge.png", (200, "image/png", vec![0u8; 300_000])),
    ]);
    let flaky_hits = Arc::new(AtomicUsize::new(0));
    let base = serve(routes, flaky_hits.clone());
    let list = root.path().join("urls.csv");
    std::fs::write(
        &list,
        format!(
            "url,label\n{base}/served.png,bird\n{base}/flaky.png,bird\n{base}/missing.png,bird\n\
             {base}/page.html,bird\n{base}/huge.png,bird\n{base}/slow.png,bird\n"
        ),
    )
    .unwrap();

    let options = CollectOptions {
        folders: vec![from.clone()],
        url_lists: vec![list],
        into: into.clone(),
        protect: vec![val.clone()],
        existing: vec![train.clone()],
        fetch: FetchOptions {
            timeout: Duration::from_secs(1),
            max_bytes: 200_000,
            retries: 1,
            backoff: Duration::from_millis(50),
        },
        concurrency: 4,
        quiet: true,
        ..Default::default()
    };
    let rows = collect(&options).unwrap();
    let r = by_source(&rows);
    let reason = |name: &str| r[name].reason.as_str();
    assert_eq!(reason("copy_of_val.png"), "leak-exact");
    assert_eq!(reason("resized_val.jpg"), "leak-near");
    assert_eq!(reason("cropped_val.png"), "leak-near");
    assert!(r["cropped_val.png"].detail.contains("leaked.png"));
    assert_eq!(reason("a_fresh.png"), "accepted");
    assert_eq!(reason("b_fresh_copy.png"), "duplicate");
    assert_eq!(reason("c_fresh_recompressed.jpg"), "near-duplicate");
    assert_eq!(reason("trained_copy.png"), "in-training-set");
    assert_eq!(reason("broken.jpg"), "corrupt");
    assert_eq!(reason("notes.txt"), "not-an-image");
    assert_eq!(reason("tiny.png"), "too-small");
    assert_eq!(reason("horse.jpg"), "accepted");
    assert_eq!(reason("served.png"), "accepted");
    assert_eq!(reason("flaky.png"), "accepted", "{:?}", r["flaky.png"]);
    assert_eq!(
        flaky_hits.load(Ordering::SeqCst),
        2,
        "one failure, one retry"
    );
    assert_eq!(reason("missing.png"), "http-error");
    assert_eq!(reason("page.html"), "not-an-image");
    assert_eq!(reason("huge.png"), "too-large");
    assert_eq!(reason("slow.png"), "download-failed");
    assert_eq!(rows.len(), 17);

    // Accepted files are byte-for-byte copies, under their class.
    assert_eq!(
        std::fs::read(into.join("cat/a_fresh.png")).unwrap(),
        fresh_png
    );
    assert_eq!(std::fs::read(into.join("bird/served.png")).unwrap(), served);
    assert_eq!(r["served.png"].file, "bird/served.png");
    assert!(!into.join("dog").exists(), "every dog candidate was a leak");

    // Running again changes nothing.
    let manifest = std::fs::read(into.join("manifest.csv")).unwrap();
    let again = collect(&options).unwrap();
    assert_eq!(again, rows);
    assert_eq!(std::fs::read(into.join("manifest.csv")).unwrap(), manifest);

    // What a run killed mid-copy leaves: a copy its manifest never listed and an unfinished
    // temporary file; and a file of the user's own, which is no candidate's copy.
    put(&into.join("cat/copied_before_the_kill.png"), &fresh_png);
    put(&into.join("cat/.tmpA1b2C3"), &fresh_png[..100]);
    let mine = png(&scene(99));
    put(&into.join("cat/mine.png"), &mine);

    // Protecting a folder that holds the accepted image removes it from the collection, with
    // every leftover copy of it.
    let test_set = root.path().join("test");
    put(&test_set.join("x.jpg"), &jpeg(&fresh, 80));
    let protected_more = CollectOptions {
        protect: vec![val, test_set],
        ..options
    };
    let rows = collect(&protected_more).unwrap();
    let r = by_source(&rows);
    assert_eq!(r["a_fresh.png"].reason, "leak-near");
    assert!(!into.join("cat/a_fresh.png").exists());
    assert!(!into.join("cat/copied_before_the_kill.png").exists());
    assert!(!into.join("cat/.tmpA1b2C3").exists());
    assert_eq!(std::fs::read(into.join("cat/mine.png")).unwrap(), mine);

    // A label map that files horses under another class moves the accepted copy.
    let relabelled = CollectOptions {
        labels: collect::labels::LabelMap {
            map: [("horse".to_string(), "equine".to_string())].into(),
            ..collect::labels::LabelMap::keep_all()
        },
        ..protected_more
    };
    let rows = collect(&relabelled).unwrap();
    let r = by_source(&rows);
    assert_eq!(r["horse.jpg"].file, "equine/horse.jpg");
    assert!(into.join("equine/horse.jpg").is_file());
    assert!(
        !into.join("horse/horse.jpg").exists(),
        "the old copy is gone"
    );
}

/// The hostile corpus through `collect`: one manifest row a file (a link and its target, two
/// names that differ in a byte that is not UTF-8: each its own row), good images judged
/// (accepted or a duplicate), bad ones rejected with the reason; the collection on disk is what
/// the manifest lists, and a second run changes nothing.
#[test]
fn hostile_corpus_gets_one_row_a_file() {
    let root = tempfile::tempdir().unwrap();
    let corpus = hostile::write(&root.path().join("corpus"));
    let into = root.path().join("into");
    let options = CollectOptions {
        folders: vec![corpus.root.clone()],
        into: into.clone(),
        min_side: 1,
        quiet: true,
        ..Default::default()
    };
    let rows = collect(&options).unwrap();
    let prefix = format!("{}/", corpus.root.display());
    let mut account = hostile::Account::default();
    for r in &rows {
        let name = r.source.strip_prefix(&prefix).unwrap().to_string();
        if ["accepted", "duplicate", "near-duplicate"].contains(&r.reason.as_str()) {
            account.used.push(name);
        } else {
            account
                .reported
                .push((name, format!("{}: {}", r.reason, r.detail)));
        }
    }
    let problems = corpus.check(&account);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(rows.len(), corpus.cases.len());
    assert_eq!(on_disk(&into), listed(&rows));
    assert_eq!(collect(&options).unwrap(), rows);
}

/// The files under a collection folder, manifest excluded, relative and sorted.
fn on_disk(into: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![into.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(into).unwrap().to_string_lossy().into_owned();
                if rel != "manifest.csv" {
                    out.push(rel);
                }
            }
        }
    }
    out.sort();
    out
}

/// The files a manifest says the collection holds, sorted.
fn listed(rows: &[Row]) -> Vec<String> {
    let mut out: Vec<String> = rows
        .iter()
        .filter(|r| r.accepted)
        .map(|r| r.file.clone())
        .collect();
    out.sort();
    out
}

/// Fault drill: `collect` killed with SIGKILL at seeded random moments, then run again, ends
/// with the manifest and the files of an uninterrupted run, byte for byte, and nothing else
/// on disk (no temporary files, no copies the manifest does not list).
#[test]
fn collect_killed_at_random_moments_reruns_to_the_same_collection() {
    let root = tempfile::tempdir().unwrap();
    let from = root.path().join("from");
    for i in 0..60u64 {
        let class = ["cat", "dog", "horse"][i as usize % 3];
        put(
            &from.join(format!("{class}/img{i:02}.jpg")),
            &jpeg(&scene(100 + i), 90),
        );
    }
    let run = |into: &Path| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_collect"));
        c.arg("--from")
            .arg(&from)
            .arg("--into")
            .arg(into)
            .arg("--concurrency")
            .arg("2")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    };
    let straight = root.path().join("straight");
    let start = std::time::Instant::now();
    assert!(run(&straight).status().unwrap().success());
    let took = start.elapsed();

    let drilled = root.path().join("drilled");
    let kills = hostile::kill_at_random_moments(
        || run(&drilled).spawn().unwrap(),
        took,
        8,
        (0.0, 1.0),
        0x9E37_79B9_7F4A_7C15,
    );
    assert!(kills >= 1, "no run was interrupted");
    assert!(run(&drilled).status().unwrap().success());

    let manifest = |into: &Path| std::fs::read_to_string(into.join("manifest.csv")).unwrap();
    let a = manifest(&straight).replace(&straight.display().to_string(), "");
    let b = manifest(&drilled).replace(&drilled.display().to_string(), "");
    assert_eq!(a, b, "the manifests differ");
    let files = on_disk(&straight);
    assert_eq!(on_disk(&drilled), files, "the collections differ");
    for f in &files {
        assert_eq!(
            std::fs::read(straight.join(f)).unwrap(),
            std::fs::read(drilled.join(f)).unwrap(),
            "{f}"
        );
    }
    let rows = collect::manifest::read(&drilled.join("manifest.csv")).unwrap();
    assert_eq!(listed(&rows), files);
}

/// An Iconify set as an npm package tarball, written here: `package/icons.json` (icons and an
/// alias), `info.json` (licence, author), `package.json` (name, version).
fn icon_package(path: &Path) {
    let icon = |fill: &str, shape: &str| serde_json::json!({ "body": format!(r#"<g fill="{fill}">{shape}</g>"#) });
    let dog = r##"<circle cx="12" cy="13" r="8"/><path d="M4 4l5 4l-4 4zM20 4l-5 4l4 4z"/><circle cx="12" cy="15" r="2" fill="#fff"/>"##;
    let icons = serde_json::json!({
        "prefix": "zoo",
        "width": 24,
        "height": 24,
        "icons": {
            "dog-face": icon("#7a4a20", dog),
            "horse": icon("#333", r#"<path d="M3 20l4-12l6-4l6 2l-2 4l-4-1l-2 11z"/>"#),
            "hot-dog": icon("#c33", r#"<rect x="2" y="9" width="20" height="6" rx="3"/>"#),
            "elephant": icon("#888", r#"<ellipse cx="12" cy="12" rx="9" ry="6"/>"#),
            "rocket": icon("#00f", r#"<path d="M12 2l4 10h-8z"/>"#),
            "cat-broken": { "body": "<path d=\"M0 0 L" },
        },
        "aliases": { "puppy": { "parent": "dog-face", "hFlip": true } },
    });
    let info = serde_json::json!({
        "name": "Zoo Icons",
        "author": { "name": "A. Drawer", "url": "https://example.org/zoo" },
        "license": { "title": "MIT License", "spdx": "MIT" },
    });
    let package = serde_json::json!({ "name": "@iconify-json/zoo", "version": "1.0.0" });
    let file = std::fs::File::create(path).unwrap();
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        file,
        flate2::Compression::fast(),
    ));
    for (name, value) in [
        ("icons.json", icons),
        ("info.json", info),
        ("package.json", package),
    ] {
        let bytes = serde_json::to_vec(&value).unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, format!("package/{name}"), bytes.as_slice())
            .unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap();
}

/// An icon set through `collect`: icons whose names the label map knows are rendered and
/// collected under their class with the set's licence and author in the manifest; excluded
/// names are listed and refused unrendered, unknown names are no candidates, a broken drawing is named.
#[test]
fn icon_sets_are_rendered_credited_and_guarded() {
    let root = tempfile::tempdir().unwrap();
    let tarball = root.path().join("zoo-1.0.0.tgz");
    icon_package(&tarball);
    let into = root.path().join("drawings");
    let labels: collect::labels::LabelMap = toml::from_str(
        r#"
        exclude = ["hot-dog", "elephant"]
        [map]
        dog = "dog"
        puppy = "dog"
        horse = "horse"
        cat = "cat"
        "#,
    )
    .unwrap();
    let options = CollectOptions {
        icon_sets: vec![tarball.display().to_string()],
        into: into.clone(),
        labels,
        quiet: true,
        ..Default::default()
    };
    let rows = collect(&options).unwrap();
    let by_icon: HashMap<String, Row> = rows
        .iter()
        .map(|r| {
            let icon = r
                .source
                .rsplit('/')
                .next()
                .unwrap()
                .split('#')
                .next()
                .unwrap();
            (icon.to_string(), r.clone())
        })
        .collect();
    let mut names: Vec<&str> = by_icon.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "cat-broken",
            "dog-face",
            "elephant",
            "horse",
            "hot-dog",
            "puppy"
        ]
    );
    let dog = &by_icon["dog-face"];
    assert!(dog.accepted, "{dog:?}");
    assert_eq!(dog.label, "dog");
    assert!(
        dog.source
            .starts_with("npm:@iconify-json/zoo@1.0.0/dog-face#"),
        "{}",
        dog.source
    );
    assert_eq!(dog.licence, "MIT");
    assert!(
        dog.attribution
            .contains("Zoo Icons by A. Drawer (https://example.org/zoo)")
            && dog.attribution.contains("dog-face"),
        "{}",
        dog.attribution
    );
    let img = image::open(into.join(&dog.file)).unwrap();
    assert_eq!((img.width(), img.height()), (256, 256));
    assert!(by_icon["horse"].accepted);
    // The alias is its parent mirrored (this face is symmetric: judged a copy of it).
    assert!(
        ["accepted", "duplicate", "near-duplicate"].contains(&by_icon["puppy"].reason.as_str())
    );
    let set = collect::icons::IconSet::load(&tarball.display().to_string(), root.path()).unwrap();
    assert!(
        set.icons["puppy"].contains("scale(-1 1)"),
        "{}",
        set.icons["puppy"]
    );
    assert_eq!(
        (set.package.as_str(), set.licence.as_str()),
        ("@iconify-json/zoo", "MIT")
    );
    assert_eq!(by_icon["hot-dog"].reason, "excluded-label");
    assert_eq!(by_icon["elephant"].reason, "excluded-label");
    // Refused by name, not rendered: no content hash (a large set has thousands of them).
    assert!(
        by_icon["hot-dog"].sha256.is_empty() && by_icon["elephant"].sha256.is_empty(),
        "{:?}",
        by_icon["hot-dog"]
    );
    assert_eq!(by_icon["cat-broken"].reason, "not-rendered");
    assert_eq!(on_disk(&into), listed(&rows));
    // Running again changes nothing.
    assert_eq!(collect(&options).unwrap(), rows);
}

/// The shipped label maps for icon sets: what they collect under each class, and the names
/// that carry an animal's word but draw something else, or a species a visible set measures
/// as unseen, refused.
#[test]
fn shipped_icon_label_maps_file_animals_and_refuse_lookalike_names() {
    use collect::labels::{LabelMap, Mapped};
    // As `collect --labels A --labels B ...` reads them.
    let load = |names: &[&str]| -> LabelMap {
        let paths: Vec<_> = names
            .iter()
            .map(|n| {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../configs")
                    .join(n)
            })
            .collect();
        LabelMap::load_all(&paths).unwrap().unwrap()
    };
    let class = |map: &LabelMap, icon: &str| match map.find_in_name(icon) {
        Some((_, Mapped::Class(c))) => Some(c),
        _ => None,
    };
    let refused =
        |map: &LabelMap, icon: &str| matches!(map.find_in_name(icon), Some((_, Mapped::Excluded)));
    let ten = load(&["collect-drawings.toml"]);
    // The species map is given after the ten-class one and adds to it.
    let species = load(&["collect-drawings.toml", "collect-drawings-species.toml"]);
    for map in [&ten, &species] {
        assert_eq!(class(map, "dog-face").as_deref(), Some("dog"));
        assert_eq!(class(map, "polar-bear").as_deref(), Some("bear"));
        assert_eq!(class(map, "baby-chick").as_deref(), Some("chicken"));
        for icon in [
            "arrow-bear-left",
            "deer-track",
            "hot-dog",
            "elephant",
            "giraffe",
            "pig-face",
            "wolf",
            "man-with-bunny-ears",
            "spider-bot",
        ] {
            assert!(refused(map, icon), "{icon} should be refused");
        }
    }
    // The ten-class map knows no other species; the species map files them under the
    // folder names of their photos in the collected images.
    assert_eq!(class(&ten, "lion-face"), None);
    assert_eq!(class(&species, "lion-face").as_deref(), Some("lion"));
    assert_eq!(
        class(&species, "see-no-evil-monkey").as_deref(),
        Some("ape")
    );
    assert_eq!(
        class(&species, "two-hump-camel").as_deref(),
        Some("Arabian_camel")
    );
    assert_eq!(class(&species, "lady-beetle").as_deref(), Some("ladybug"));
    for icon in [
        "monkey-wrench",
        "butterfly-knife",
        "siege-ram",
        "flag-turkey",
    ] {
        assert!(refused(&species, icon), "{icon} should be refused");
    }
}
