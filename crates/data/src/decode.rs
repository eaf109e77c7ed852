//! Decoding one image file into 8-bit RGB.
//!
//! Formats: JPEG, PNG (RGBA, palette, grey, 16-bit), WEBP, BMP and the first frame of a GIF.
//! The format is guessed from the content, not trusted from the extension. EXIF orientation is
//! applied where present. Alpha is dropped the way PIL's `convert("RGB")` does, so embeddings
//! match the PyTorch reference pipeline.

use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};

/// Largest accepted side, in pixels.
pub const MAX_SIDE: u32 = 20_000;
/// Largest accepted pixel count (a decompression-bomb guard: 64 MP of RGBA is 256 MiB).
pub const MAX_PIXELS: u64 = 64_000_000;
/// Most memory one decode may allocate, headers included (64 MP at 8 bytes a pixel).
pub const MAX_ALLOC: u64 = MAX_PIXELS * 8;
/// Largest image file read, in bytes: no photo or drawing comes near it, and a bigger file is
/// not read into memory at all.
pub const MAX_FILE_BYTES: u64 = 256 << 20;

/// Why a file could not become an image. Always names the file.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{path}: cannot read file: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: empty file (0 bytes)")]
    Empty { path: PathBuf },
    #[error("{path}: not a recognised image format")]
    UnknownFormat { path: PathBuf },
    #[error(
        "{path}: image is {width}x{height} pixels, over the limit of {MAX_SIDE} a side or {MAX_PIXELS} pixels (possible decompression bomb)"
    )]
    TooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
    },
    #[error("{path}: image has a zero dimension ({width}x{height})")]
    ZeroSized {
        path: PathBuf,
        width: u32,
        height: u32,
    },
    #[error("{path}: corrupt or truncated image: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "{shown}: the file name is not valid UTF-8, so results, manifests and submissions could not name it; rename the file"
    )]
    BadName { path: PathBuf, shown: String },
    #[error(
        "{path}: decoding is over the limit of {MAX_ALLOC} bytes ({reason}); possible decompression bomb"
    )]
    OverLimits { path: PathBuf, reason: String },
    #[error("{path}: not a regular file ({what}), so not read")]
    NotAFile { path: PathBuf, what: &'static str },
    #[error("{path}: file is {bytes} bytes, over the limit of {MAX_FILE_BYTES} for an image")]
    FileTooLarge { path: PathBuf, bytes: u64 },
}

impl DecodeError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            DecodeError::Io { path, .. }
            | DecodeError::Empty { path }
            | DecodeError::UnknownFormat { path }
            | DecodeError::TooLarge { path, .. }
            | DecodeError::ZeroSized { path, .. }
            | DecodeError::Corrupt { path, .. }
            | DecodeError::BadName { path, .. }
            | DecodeError::OverLimits { path, .. }
            | DecodeError::NotAFile { path, .. }
            | DecodeError::FileTooLarge { path, .. } => path,
        }
    }

    /// The file's path as text, with bytes that are not UTF-8 written `\xNN`: two different
    /// files never print the same.
    pub fn file(&self) -> String {
        escaped(self.path())
    }

    /// A short machine-friendly reason, used in manifests and summaries.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Io { .. } => "unreadable",
            DecodeError::Empty { .. } => "empty",
            DecodeError::UnknownFormat { .. } => "not-an-image",
            DecodeError::TooLarge { .. } => "too-large",
            DecodeError::ZeroSized { .. } => "zero-sized",
            DecodeError::Corrupt { .. } => "corrupt",
            DecodeError::BadName { .. } => "bad-name",
            DecodeError::OverLimits { .. } => "too-large",
            DecodeError::NotAFile { .. } => "not-a-file",
            DecodeError::FileTooLarge { .. } => "too-large",
        }
    }
}

/// Decodes `path` to RGB8 from its bytes on disk.
pub fn decode_image(path: &Path) -> Result<RgbImage, DecodeError> {
    decode_bytes(path, &read_file(path)?)
}

/// Reads an image file's bytes: a UTF-8 path ([`check_name`]) to a regular file (a link is
/// followed) of at most [`MAX_FILE_BYTES`]. A FIFO, socket or device is refused without blocking on it; a dangling
/// link or a link loop is an `Io` error naming the path.
pub fn read_file(path: &Path) -> Result<Vec<u8>, DecodeError> {
    use std::io::Read;
    let io = |source| DecodeError::Io {
        path: path.to_path_buf(),
        source,
    };
    check_name(path)?;
    let mut open = std::fs::OpenOptions::new();
    open.read(true);
    #[cfg(unix)]
    {
        // Opening a FIFO for reading would wait for a writer; non-blocking, it returns at once
        // and the type check below refuses it.
        use std::os::unix::fs::OpenOptionsExt;
        open.custom_flags(libc::O_NONBLOCK);
    }
    let file = open.open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "a folder"
        } else {
            special_kind(&meta)
        };
        return Err(DecodeError::NotAFile {
            path: path.to_path_buf(),
            what,
        });
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(DecodeError::FileTooLarge {
            path: path.to_path_buf(),
            bytes: meta.len(),
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may grow while it is read: never past the limit.
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(DecodeError::FileTooLarge {
            path: path.to_path_buf(),
            bytes: bytes.len() as u64,
        });
    }
    Ok(bytes)
}

#[cfg(unix)]
fn special_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

#[cfg(not(unix))]
fn special_kind(_: &std::fs::Metadata) -> &'static str {
    "not a regular file"
}

/// A path as text, with bytes that are not UTF-8 written `\xNN` (where `Path::display` would
/// print U+FFFD, and two different names could print the same).
pub fn escaped(path: &Path) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let mut out = String::new();
        for chunk in path.as_os_str().as_bytes().utf8_chunks() {
            out.push_str(chunk.valid());
            for b in chunk.invalid() {
                out.push_str(&format!("\\x{b:02X}"));
            }
        }
        out
    }
    #[cfg(not(unix))]
    {
        path.display().to_string()
    }
}

/// Refuses a path that is not valid UTF-8: every image gets a name in results, submissions
/// and manifests, and JSON holds only UTF-8 (two such names would collapse into one).
pub fn check_name(path: &Path) -> Result<(), DecodeError> {
    match path.to_str() {
        Some(_) => Ok(()),
        None => Err(DecodeError::BadName {
            path: path.to_path_buf(),
            shown: escaped(path),
        }),
    }
}

/// Decodes in-memory `bytes`; `path` is only used in error messages (files are read, and their
/// names checked, by [`read_file`]).
pub fn decode_bytes(path: &Path, bytes: &[u8]) -> Result<RgbImage, DecodeError> {
    decode_dynamic(path, bytes).map(|img| img.to_rgb8())
}

/// Decodes to a [`DynamicImage`] with orientation applied, keeping the original pixel type.
pub fn decode_dynamic(path: &Path, bytes: &[u8]) -> Result<DynamicImage, DecodeError> {
    let p = || path.to_path_buf();
    if bytes.is_empty() {
        return Err(DecodeError::Empty { path: p() });
    }
    let corrupt = |e: image::ImageError| match e {
        image::ImageError::Limits(_) => DecodeError::OverLimits {
            path: p(),
            reason: e.to_string(),
        },
        _ => DecodeError::Corrupt {
            path: p(),
            reason: e.to_string(),
        },
    };
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|source| DecodeError::Io { path: p(), source })?;
    match reader.format() {
        None => return Err(DecodeError::UnknownFormat { path: p() }),
        Some(image::ImageFormat::Jpeg) if !has_jpeg_end(bytes) => {
            // Decoders fill a cut-off JPEG with grey and carry on; PIL refuses it ("image
            // file is truncated"), and so do we: a half-grey image is a wrong embedding.
            return Err(DecodeError::Corrupt {
                path: p(),
                reason: "truncated JPEG (no end-of-image marker)".into(),
            });
        }
        Some(_) => {}
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    // The limits hold while the headers are read too: a PNG colour profile (iCCP) or text
    // chunk is inflated then, and a 1 MB file can inflate to gigabytes.
    reader.limits(limits.clone());
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(DecodeError::ZeroSized {
            path: p(),
            width,
            height,
        });
    }
    if width > MAX_SIDE || height > MAX_SIDE || u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(DecodeError::TooLarge {
            path: p(),
            width,
            height,
        });
    }
    decoder.set_limits(limits).map_err(corrupt)?;
    let orientation = decoder.orientation().ok();
    let mut img = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    Ok(img)
}

/// True when a JPEG stream has its end-of-image marker (FF D9) in its last 4 KiB (trailing
/// padding after the marker is common and allowed).
fn has_jpeg_end(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(4096)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, Rgba, RgbaImage};

    /// A 1×1 PNG whose colour profile (iCCP) inflates to `profile_bytes` zeros.
    fn png_with_profile(profile_bytes: usize) -> Vec<u8> {
        use std::io::Write;
        fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
            out.extend((data.len() as u32).to_be_bytes());
            let mut crc = crc32fast::Hasher::new();
            crc.update(kind);
            crc.update(data);
            out.extend(kind);
            out.extend(data);
            out.extend(crc.finalize().to_be_bytes());
        }
        let zlib = |write: &dyn Fn(&mut flate2::write::ZlibEncoder<Vec<u8>>)| {
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            write(&mut z);
            z.finish().unwrap()
        };
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        chunk(&mut out, b"IHDR", &[0, 0, 0, 1, 0, 0, 0, 1, 8, 2, 0, 0, 0]);
        let mut iccp = b"icc\0\0".to_vec();
        iccp.extend(zlib(&|z| {
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..profile_bytes >> 20 {
                z.write_all(&zeros).unwrap();
            }
        }));
        chunk(&mut out, b"iCCP", &iccp);
        chunk(
            &mut out,
            b"IDAT",
            &zlib(&|z| z.write_all(&[0, 200, 10, 20]).unwrap()),
        );
        chunk(&mut out, b"IEND", &[]);
        out
    }

    /// The process's peak resident memory (Linux), in bytes.
    fn peak_memory() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }

    /// A colour profile is inflated within the decode budget: one that would inflate to 2 GiB
    /// is cut off at `MAX_ALLOC` (the PNG decoder then drops the profile and decodes the
    /// pixels), instead of being inflated whole with the limits lifted.
    #[test]
    fn an_inflating_colour_profile_stays_within_the_budget() {
        let small = png_with_profile(1 << 20);
        let rgb = decode_bytes(Path::new("ok.png"), &small).unwrap();
        assert_eq!(rgb.get_pixel(0, 0).0, [200, 10, 20]);
        let bomb = png_with_profile(2 << 30);
        // Tens of megabytes at most, whichever deflate backend compressed it.
        assert!(bomb.len() < 64 << 20, "{} bytes", bomb.len());
        let Some(before) = peak_memory() else {
            return; // no /proc: nothing to measure
        };
        let rgb = decode_bytes(Path::new("bomb.png"), &bomb).unwrap();
        assert_eq!(rgb.get_pixel(0, 0).0, [200, 10, 20]);
        let grown = peak_memory().unwrap().saturating_sub(before);
        assert!(grown < 1 << 30, "decoding took {} MiB more", grown >> 20);
    }

    fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn decodes_common_formats_to_rgb() {
        let mut rgba = RgbaImage::new(5, 3);
        rgba.put_pixel(1, 1, Rgba([200, 10, 20, 0]));
        let img = DynamicImage::ImageRgba8(rgba);
        for format in [ImageFormat::Png, ImageFormat::Bmp, ImageFormat::Gif] {
            let bytes = encode(&img, format);
            let rgb = decode_bytes(Path::new("x"), &bytes).unwrap();
            assert_eq!(rgb.dimensions(), (5, 3), "{format:?}");
        }
        // Alpha is dropped, not composited: PIL's convert("RGB").
        let rgb = decode_bytes(Path::new("x"), &encode(&img, ImageFormat::Png)).unwrap();
        assert_eq!(rgb.get_pixel(1, 1).0, [200, 10, 20]);
        // 16-bit grey PNG.
        let grey16 = DynamicImage::ImageLuma16(image::ImageBuffer::from_pixel(
            4,
            4,
            image::Luma([65535u16]),
        ));
        let rgb = decode_bytes(Path::new("x"), &encode(&grey16, ImageFormat::Png)).unwrap();
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
        let jpeg = encode(
            &DynamicImage::ImageRgb8(RgbImage::new(8, 8)),
            ImageFormat::Jpeg,
        );
        assert_eq!(
            decode_bytes(Path::new("x"), &jpeg).unwrap().dimensions(),
            (8, 8)
        );
    }

    #[test]
    fn bad_files_are_named_errors() {
        let empty = decode_bytes(Path::new("empty.jpg"), b"").unwrap_err();
        assert!(matches!(empty, DecodeError::Empty { .. }));
        assert!(empty.to_string().contains("empty.jpg"));
        let text = decode_bytes(Path::new("notes.png"), b"hello, I am text").unwrap_err();
        assert!(matches!(text, DecodeError::UnknownFormat { .. }), "{text}");
        let jpeg = encode(
            &DynamicImage::ImageRgb8(RgbImage::from_pixel(64, 64, image::Rgb([9, 99, 199]))),
            ImageFormat::Jpeg,
        );
        let cut = decode_bytes(Path::new("cut.jpg"), &jpeg[..jpeg.len() / 2]).unwrap_err();
        assert!(cut.to_string().contains("cut.jpg") && cut.to_string().contains("truncated"));
    }

    #[test]
    fn refuses_decompression_bombs() {
        // A PNG header claiming 30000x30000 pixels: refused before any allocation.
        let img = DynamicImage::ImageLuma8(image::GrayImage::new(1, 1));
        let mut png = encode(&img, ImageFormat::Png);
        // Patch IHDR width/height (bytes 16..24) and leave the CRC wrong: the size check comes
        // first, or the decoder reports corruption; either way no huge allocation happens.
        png[16..20].copy_from_slice(&30_000u32.to_be_bytes());
        png[20..24].copy_from_slice(&30_000u32.to_be_bytes());
        let err = decode_bytes(Path::new("bomb.png"), &png).unwrap_err();
        assert!(err.to_string().contains("bomb.png"), "{err}");
    }
}
