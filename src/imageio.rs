//! Reading and writing images: any format the `image` crate decodes (PNG, JPEG, WebP, TIFF,
//! BMP), EXIF orientation applied, grayscale / RGBA / 16-bit converted, dimension limits
//! checked from the header before any pixel is decoded.

use crate::error::{Error, Result};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};
use std::io::{BufRead, Cursor, Seek};
use std::path::Path;

/// Default limit on decoded pixels: 16k × 16k.
pub const DEFAULT_MAX_PIXELS: u64 = 268_435_456;

/// A decoded image: colour as RGB plus the alpha channel if the file had one.
pub struct Decoded {
    pub image: DynamicImage,
    pub has_alpha: bool,
}

impl Decoded {
    pub fn width(&self) -> u32 {
        self.image.width()
    }
    pub fn height(&self) -> u32 {
        self.image.height()
    }
}

fn decode<R: BufRead + Seek>(
    reader: ImageReader<R>,
    path: &Path,
    max_pixels: u64,
) -> Result<Decoded> {
    let mut reader = reader
        .with_guessed_format()
        .map_err(|e| Error::image(path, e.to_string()))?;
    if reader.format().is_none() {
        return Err(Error::image(
            path,
            "not a recognised image format (expected PNG, JPEG, WebP, TIFF or BMP)",
        ));
    }
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(16).max(64 << 20));
    reader.limits(limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| Error::image(path, e.to_string()))?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(Error::image(path, format!("image has zero size ({w}x{h})")));
    }
    if w as u64 * h as u64 > max_pixels {
        return Err(Error::ImageTooLarge {
            path: path.to_path_buf(),
            w,
            h,
            limit: max_pixels,
        });
    }
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let has_alpha = decoder.color_type().has_alpha();
    let mut image =
        DynamicImage::from_decoder(decoder).map_err(|e| Error::image(path, e.to_string()))?;
    image.apply_orientation(orientation);
    Ok(Decoded { image, has_alpha })
}

pub fn read_path(path: &Path, max_pixels: u64) -> Result<Decoded> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    if file.metadata().map(|m| m.len() == 0).unwrap_or(false) {
        return Err(Error::image(path, "file is empty (0 bytes)"));
    }
    decode(
        ImageReader::new(std::io::BufReader::new(file)),
        path,
        max_pixels,
    )
}

pub fn read_bytes(bytes: &[u8], name: &Path, max_pixels: u64) -> Result<Decoded> {
    if bytes.is_empty() {
        return Err(Error::image(name, "input is empty (0 bytes)"));
    }
    decode(ImageReader::new(Cursor::new(bytes)), name, max_pixels)
}

/// Output format from a file name's extension.
pub fn format_for(path: &Path) -> Result<ImageFormat> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "png" => Ok(ImageFormat::Png),
        "jpg" | "jpeg" => Ok(ImageFormat::Jpeg),
        "webp" => Ok(ImageFormat::WebP),
        _ => Err(Error::output(
            path,
            format!("unknown output extension {ext:?}: use .png, .jpg or .webp"),
        )),
    }
}

/// Encode `img` in `format` (JPEG at quality 92; alpha dropped for JPEG).
pub fn encode(
    img: &DynamicImage,
    format: ImageFormat,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    let mut buf = Cursor::new(Vec::new());
    let res = match format {
        ImageFormat::Jpeg => {
            let rgb = img.to_rgb8();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 92).encode_image(&rgb)
        }
        f => img.write_to(&mut buf, f),
    };
    res.map_err(std::io::Error::other)?;
    out.write_all(buf.get_ref())
}

pub fn write_path(img: &DynamicImage, path: &Path) -> Result<()> {
    let format = format_for(path)?;
    crate::io::write_atomic_with(path, |f| {
        let mut w = std::io::BufWriter::new(f);
        encode(img, format, &mut w)?;
        std::io::Write::flush(&mut w)
    })
}
