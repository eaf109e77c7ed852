//! A hostile-input corpus, written by the tests that need it (never committed): images in every
//! format and pixel type the decoder reads, decompression bombs in each format, truncated and
//! empty files, wrong extensions, odd names (spaces, a newline, bytes that are not UTF-8, very
//! long), links that work, dangle or loop, a FIFO, an oversized file and an empty folder. Each
//! file says what a command that reads images must do with it: use it, or report it with its
//! path and a reason. [`Corpus::check`] compares a command's account against that, and
//! [`run_measured`] runs a command and measures its peak memory; [`chromium`] finds the
//! headless browser the page tests drive.
//!
//! Layout: `ROOT/cat/…` (every hostile case plus good images) and `ROOT/dog/…` (good images),
//! so the same folder serves as a training set, a labelled query folder and a gallery.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use data::decode::escaped;
use image::{DynamicImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};

/// What a command must do with one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Decoded and used: it appears in the command's results.
    Used,
    /// Left out and reported with its path and a reason containing this text.
    Reported(&'static str),
}

/// One file of the corpus.
#[derive(Debug, Clone)]
pub struct Case {
    /// Path relative to the corpus root as commands name it (`cat/rgb.png`); bytes that are not
    /// UTF-8 are written `\xNN`, as lookalike reports them.
    pub name: String,
    pub path: PathBuf,
    pub expect: Expect,
}

/// The corpus on disk.
#[derive(Debug)]
pub struct Corpus {
    pub root: PathBuf,
    pub cases: Vec<Case>,
}

/// Bytes one decompression bomb inflates to (a colour profile, a text chunk).
pub const BOMB_BYTES: usize = 1 << 30;

/// How a command accounted for the corpus: the names it used and the (file, reason) pairs it
/// reported.
#[derive(Debug, Default)]
pub struct Account {
    pub used: Vec<String>,
    pub reported: Vec<(String, String)>,
}

impl Corpus {
    /// The cases a command must use.
    pub fn used(&self) -> impl Iterator<Item = &Case> {
        self.cases.iter().filter(|c| c.expect == Expect::Used)
    }

    /// Every way `account` differs from what the corpus expects, one line each; empty when it
    /// matches (each used file used once, each bad file reported once with its reason).
    pub fn check(&self, account: &Account) -> Vec<String> {
        let mut problems = Vec::new();
        for case in &self.cases {
            let used = account.used.iter().filter(|u| **u == case.name).count();
            let reported: Vec<&(String, String)> = account
                .reported
                .iter()
                .filter(|(file, _)| file.ends_with(&case.name))
                .collect();
            match case.expect {
                Expect::Used if used != 1 || !reported.is_empty() => problems.push(format!(
                    "{:?}: expected used once, used {used} times, reported {reported:?}",
                    case.name
                )),
                Expect::Reported(reason) => {
                    if used > 0 || reported.len() != 1 {
                        problems.push(format!(
                            "{:?}: expected reported once, used {used} times, reported {reported:?}",
                            case.name
                        ));
                    } else if !reported[0].1.contains(reason) {
                        problems.push(format!(
                            "{:?}: reason {:?} does not say {reason:?}",
                            case.name, reported[0].1
                        ));
                    }
                }
                Expect::Used => {}
            }
        }
        for u in &account.used {
            if !self.cases.iter().any(|c| c.name == *u) {
                problems.push(format!("{u:?} used but not in the corpus"));
            }
        }
        problems
    }
}

/// A deterministic picture: stripes and a disc in colours drawn from `seed`.
pub fn picture(seed: u32, width: u32, height: u32) -> RgbImage {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    let a = Rgb([next() as u8, next() as u8, next() as u8]);
    let b = Rgb([next() as u8, next() as u8, next() as u8]);
    let period = 3 + next() % 6;
    let (cx, cy, r) = (next() % width, next() % height, 4 + next() % (width / 3));
    RgbImage::from_fn(width, height, |x, y| {
        let (dx, dy) = (x.abs_diff(cx), y.abs_diff(cy));
        if dx * dx + dy * dy < r * r {
            Rgb([255 - a[0], b[1], a[2]])
        } else if (x + y) / period % 2 == 0 {
            a
        } else {
            b
        }
    })
}

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

fn rgb(seed: u32, format: ImageFormat) -> Vec<u8> {
    encode(&DynamicImage::ImageRgb8(picture(seed, 64, 48)), format)
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend((data.len() as u32).to_be_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend(kind);
    out.extend(data);
    out.extend(crc.finalize().to_be_bytes());
}

fn zlib_zeros(bytes: usize) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..bytes >> 20 {
        z.write_all(&zeros).expect("deflate");
    }
    z.finish().expect("deflate")
}

/// A 2×2 RGB PNG with one extra chunk before its pixels.
fn png_with_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(2u32.to_be_bytes());
    ihdr.extend(2u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, kind, data);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    for _ in 0..2 {
        z.write_all(&[0, 200, 10, 20, 30, 40, 50]).expect("deflate");
    }
    png_chunk(&mut out, b"IDAT", &z.finish().expect("deflate"));
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// A PNG whose header claims `side`×`side` pixels (CRC fixed, so only the size is wrong).
fn png_claiming(side: u32) -> Vec<u8> {
    let mut png = rgb(1, ImageFormat::Png);
    png[16..20].copy_from_slice(&side.to_be_bytes());
    png[20..24].copy_from_slice(&side.to_be_bytes());
    let crc = crc32fast::hash(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

/// A JPEG whose frame header claims `side`×`side` pixels.
fn jpeg_claiming(side: u16) -> Vec<u8> {
    let mut jpeg = rgb(2, ImageFormat::Jpeg);
    let sof = jpeg
        .windows(2)
        .position(|w| w[0] == 0xFF && (w[1] == 0xC0 || w[1] == 0xC2))
        .expect("a frame header");
    jpeg[sof + 5..sof + 7].copy_from_slice(&side.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&side.to_be_bytes());
    jpeg
}

/// A GIF whose logical screen claims `side`×`side` pixels.
fn gif_claiming(side: u16) -> Vec<u8> {
    let mut gif = rgb(3, ImageFormat::Gif);
    gif[6..8].copy_from_slice(&side.to_le_bytes());
    gif[8..10].copy_from_slice(&side.to_le_bytes());
    gif
}

/// A BMP whose header claims `side`×`side` pixels.
fn bmp_claiming(side: i32) -> Vec<u8> {
    let mut bmp = rgb(4, ImageFormat::Bmp);
    bmp[18..22].copy_from_slice(&side.to_le_bytes());
    bmp[22..26].copy_from_slice(&side.to_le_bytes());
    bmp
}

/// A lossless WebP whose header claims 16000×15000 pixels.
fn webp_claiming_largest() -> Vec<u8> {
    let mut webp = rgb(5, ImageFormat::WebP);
    assert_eq!(&webp[12..16], b"VP8L", "a lossless WebP");
    let mut bits = u32::from_le_bytes(webp[21..25].try_into().expect("4 bytes"));
    bits = (bits & !0x0FFF_FFFF) | 15_999 | (14_999 << 14);
    webp[21..25].copy_from_slice(&bits.to_le_bytes());
    webp
}

/// An animated GIF of `frames` frames of `side`×`side` pixels: only the first is decoded.
fn many_frames(frames: usize, side: u32) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = image::codecs::gif::GifEncoder::new(&mut out);
        for i in 0..frames {
            let img = RgbaImage::from_pixel(side, side, Rgba([i as u8 * 20, 90, 200, 255]));
            encoder
                .encode_frame(image::Frame::new(img))
                .expect("gif frame");
        }
    }
    out
}

fn palette_png() -> Vec<u8> {
    let (w, h) = (40u32, 30u32);
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, w, h);
        encoder.set_color(png::ColorType::Indexed);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_palette(vec![255, 0, 0, 0, 255, 0, 0, 0, 255, 250, 250, 20]);
        let mut writer = encoder.write_header().expect("png header");
        let data: Vec<u8> = (0..w * h).map(|i| ((i % w) / 10) as u8).collect();
        writer.write_image_data(&data).expect("png data");
    }
    out
}

fn cmyk_jpeg() -> Vec<u8> {
    let (w, h) = (48u16, 32u16);
    let data: Vec<u8> = (0..u32::from(w) * u32::from(h))
        .flat_map(|i| [(i % 256) as u8, 40, (i / 7 % 256) as u8, 10])
        .collect();
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 90)
        .encode(&data, w, h, jpeg_encoder::ColorType::Cmyk)
        .expect("cmyk jpeg");
    out
}

#[cfg(unix)]
fn non_utf8(prefix: &str, byte: u8) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let mut bytes = prefix.as_bytes().to_vec();
    bytes.push(byte);
    bytes.extend(b".png");
    std::ffi::OsString::from_vec(bytes)
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Writes the corpus under `root` (created) and returns it with every case's expectation.
pub fn write(root: &Path) -> Corpus {
    let cat = root.join("cat");
    let dog = root.join("dog");
    for d in [&cat, &dog, &root.join("empty-class")] {
        std::fs::create_dir_all(d).expect("corpus folder");
    }
    let mut cases = Vec::new();
    let mut file = |dir: &Path, name: &OsStr, bytes: &[u8], expect: Expect| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("corpus file");
        cases.push((path, expect));
    };
    let os = OsStr::new;
    use Expect::{Reported, Used};

    // Good images, every format and pixel type the decoder reads.
    file(&cat, os("rgb.png"), &rgb(10, ImageFormat::Png), Used);
    file(&cat, os("photo.jpg"), &rgb(11, ImageFormat::Jpeg), Used);
    file(&cat, os("lossless.webp"), &rgb(12, ImageFormat::WebP), Used);
    file(&cat, os("plain.bmp"), &rgb(13, ImageFormat::Bmp), Used);
    let deep = image::ImageBuffer::from_fn(40, 30, |x, y| {
        Rgb([x as u16 * 1600, y as u16 * 2100, 40_000u16])
    });
    file(
        &cat,
        os("deep16.png"),
        &encode(&DynamicImage::ImageRgb16(deep), ImageFormat::Png),
        Used,
    );
    file(&cat, os("palette.png"), &palette_png(), Used);
    let alpha = RgbaImage::from_fn(40, 30, |x, y| Rgba([x as u8 * 6, y as u8 * 8, 90, x as u8]));
    file(
        &cat,
        os("alpha.png"),
        &encode(&DynamicImage::ImageRgba8(alpha), ImageFormat::Png),
        Used,
    );
    let grey = image::GrayImage::from_fn(40, 30, |x, y| image::Luma([(x * y) as u8]));
    file(
        &cat,
        os("grey.png"),
        &encode(&DynamicImage::ImageLuma8(grey), ImageFormat::Png),
        Used,
    );
    file(&cat, os("cmyk.jpg"), &cmyk_jpeg(), Used);
    file(&cat, os("animated.gif"), &many_frames(12, 1500), Used);
    // A wrong extension: the format comes from the content.
    file(
        &cat,
        os("really-a-png.jpg"),
        &rgb(14, ImageFormat::Png),
        Used,
    );
    // Odd names.
    file(&cat, os("with space.png"), &rgb(15, ImageFormat::Png), Used);
    file(&cat, os("new\nline.png"), &rgb(16, ImageFormat::Png), Used);
    let long = format!("{}.png", "l".repeat(240));
    file(&cat, os(&long), &rgb(17, ImageFormat::Png), Used);
    // Decompression bombs that decode: the inflating chunk is cut off within the budget.
    let mut profile = b"icc\0\0".to_vec();
    profile.extend(zlib_zeros(BOMB_BYTES));
    file(
        &cat,
        os("profile-bomb.png"),
        &png_with_chunk(b"iCCP", &profile),
        Used,
    );
    let mut text = b"Comment\0\0".to_vec();
    text.extend(zlib_zeros(BOMB_BYTES));
    file(
        &cat,
        os("text-bomb.png"),
        &png_with_chunk(b"zTXt", &text),
        Used,
    );

    // Files to report.
    let too_large = Reported("over the limit");
    file(&cat, os("empty.jpg"), b"", Reported("empty file"));
    let jpeg = rgb(20, ImageFormat::Jpeg);
    file(
        &cat,
        os("truncated.jpg"),
        &jpeg[..jpeg.len() / 2],
        Reported("truncated"),
    );
    let png = rgb(21, ImageFormat::Png);
    file(
        &cat,
        os("truncated.png"),
        &png[..png.len() / 2],
        Reported("corrupt"),
    );
    file(
        &cat,
        os("text.png"),
        b"this is text, not a PNG",
        Reported("not a recognised image format"),
    );
    file(&cat, os("dims.png"), &png_claiming(30_000), too_large);
    file(&cat, os("dims.jpg"), &jpeg_claiming(65_000), too_large);
    file(&cat, os("dims.gif"), &gif_claiming(60_000), too_large);
    file(&cat, os("dims.bmp"), &bmp_claiming(30_000), too_large);
    file(&cat, os("dims.webp"), &webp_claiming_largest(), too_large);
    #[cfg(unix)]
    {
        // Two names that differ only in a byte that is not UTF-8.
        let bad = Reported("not valid UTF-8");
        file(
            &cat,
            &non_utf8("bad-", 0xFF),
            &rgb(22, ImageFormat::Png),
            bad,
        );
        file(
            &cat,
            &non_utf8("bad-", 0xFE),
            &rgb(23, ImageFormat::Png),
            bad,
        );
    }
    // An image file of 1 GiB, more than any image may have (sparse: no disk used): refused
    // before it is read, or reading it alone would break the memory budget.
    let big = cat.join("big.png");
    std::fs::write(&big, rgb(24, ImageFormat::Png)).expect("corpus file");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&big)
        .and_then(|f| f.set_len(1 << 30))
        .expect("sparse file");
    cases.push((big, too_large));
    #[cfg(unix)]
    {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let link =
            |name: &str, target: &str, expect: Expect, cases: &mut Vec<(PathBuf, Expect)>| {
                symlink(target, cat.join(name)).expect("symlink");
                cases.push((cat.join(name), expect));
            };
        link("link.png", "rgb.png", Used, &mut cases);
        link(
            "dangling.png",
            "missing.png",
            Reported("No such file"),
            &mut cases,
        );
        link(
            "loop.png",
            "loop.png",
            Reported("symbolic links"),
            &mut cases,
        );
        let fifo = cat.join("fifo.png");
        let c = std::ffi::CString::new(fifo.to_str().expect("UTF-8 corpus path")).expect("path");
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
        cases.push((fifo, Reported("FIFO")));
        // Unreadable to anyone but root (who reads everything).
        let locked = cat.join("locked.png");
        std::fs::write(&locked, rgb(25, ImageFormat::Png)).expect("corpus file");
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).expect("chmod");
        let expect = if running_as_root() {
            Used
        } else {
            Reported("ermission denied")
        };
        cases.push((locked, expect));
    }

    // The other class: good images only.
    for (i, format) in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::Bmp]
        .into_iter()
        .enumerate()
    {
        let ext = format.extensions_str()[0];
        let path = dog.join(format!("dog{i}.{ext}"));
        std::fs::write(&path, rgb(30 + i as u32, format)).expect("corpus file");
        cases.push((path, Used));
    }

    let cases = cases
        .into_iter()
        .map(|(path, expect)| Case {
            name: escaped(path.strip_prefix(root).expect("under the root")),
            path,
            expect,
        })
        .collect();
    Corpus {
        root: root.to_path_buf(),
        cases,
    }
}

/// A fault drill: starts `spawn()` `runs` times, each time killing it with SIGKILL after a
/// seeded random delay between `from` and `to` times `took` (what an uninterrupted run
/// takes). Returns how many runs were
/// killed (a run may finish first). The caller then runs to the end and compares with an
/// uninterrupted run.
pub fn kill_at_random_moments(
    mut spawn: impl FnMut() -> std::process::Child,
    took: std::time::Duration,
    runs: usize,
    (from, to): (f64, f64),
    seed: u64,
) -> usize {
    let mut state = seed | 1;
    let mut kills = 0;
    for _ in 0..runs {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let at = from + (to - from) * (state % 1000) as f64 / 1000.0;
        let mut child = spawn();
        std::thread::sleep(took.mul_f64(at));
        if child.try_wait().expect("try_wait").is_none() {
            child.kill().expect("kill");
            kills += 1;
        }
        child.wait().expect("wait");
    }
    kills
}

/// What [`run_measured`] returns.
#[derive(Debug)]
pub struct Measured {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Peak resident memory of the process, in bytes.
    pub peak_bytes: u64,
}

/// Runs `command` to completion and measures its own peak resident memory (from `wait4`, so
/// other processes of the test do not count).
#[cfg(unix)]
#[allow(
    clippy::zombie_processes,
    reason = "waited for by wait4, which std does not offer"
)]
pub fn run_measured(command: &mut Command) -> Measured {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        out.read_to_end(&mut s).expect("read stdout");
        s
    });
    let mut stderr = Vec::new();
    err.read_to_end(&mut stderr).expect("read stderr");
    let stdout = reader.join().expect("stdout reader");
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value to be overwritten; the pid is our own child,
    // not yet waited for.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4");
    let status = std::process::ExitStatus::from_raw(status);
    Measured {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        peak_bytes: usage.ru_maxrss as u64 * 1024,
    }
}

/// Headless Chromium, when installed (CI installs Debian's `chromium`); the browser tests
/// skip without it.
pub fn chromium() -> Option<std::path::PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The corpus as data: every case exists where it says, good files decode with the image
    /// crate, and the claimed-size bombs are small files.
    #[test]
    fn corpus_is_what_it_claims() {
        let dir = tempfile_dir();
        let corpus = write(&dir);
        assert!(corpus.cases.len() >= 30, "{}", corpus.cases.len());
        for case in corpus.used() {
            if case.name.ends_with("locked.png") {
                continue;
            }
            let img = image::ImageReader::open(&case.path)
                .and_then(|r| r.with_guessed_format())
                .map_err(image::ImageError::IoError)
                .and_then(|r| r.decode())
                .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            assert!(img.width() > 0, "{}", case.name);
        }
        for name in ["cat/dims.png", "cat/dims.jpg", "cat/profile-bomb.png"] {
            let case = corpus.cases.iter().find(|c| c.name == name).unwrap();
            let len = std::fs::metadata(&case.path).unwrap().len();
            assert!(len < 4 << 20, "{name}: {len} bytes");
        }
        let names: Vec<&str> = corpus.cases.iter().map(|c| c.name.as_str()).collect();
        assert!(names.contains(&"cat/bad-\\xFF.png") && names.contains(&"cat/bad-\\xFE.png"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hostile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
