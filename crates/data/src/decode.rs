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
            | DecodeError::Corrupt { path, .. } => path,
        }
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
        }
    }
}

/// Decodes `path` to RGB8 from its bytes on disk.
pub fn decode_image(path: &Path) -> Result<RgbImage, DecodeError> {
    let bytes = std::fs::read(path).map_err(|source| DecodeError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_bytes(path, &bytes)
}

/// Decodes in-memory `bytes`; `path` is only used in error messages.
pub fn decode_bytes(path: &Path, bytes: &[u8]) -> Result<RgbImage, DecodeError> {
    decode_dynamic(path, bytes).map(|img| img.to_rgb8())
}

/// Decodes to a [`DynamicImage`] with orientation applied, keeping the original pixel type.
pub fn decode_dynamic(path: &Path, bytes: &[u8]) -> Result<DynamicImage, DecodeError> {
    let p = || path.to_path_buf();
    if bytes.is_empty() {
        return Err(DecodeError::Empty { path: p() });
    }
    let corrupt = |e: image::ImageError| DecodeError::Corrupt {
        path: p(),
        reason: e.to_string(),
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
