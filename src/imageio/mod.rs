//! Reading and writing images: any format the `image` crate decodes (PNG, JPEG, WebP, TIFF,
//! BMP), EXIF orientation applied, grayscale / RGBA / 16-bit converted, dimension limits
//! checked from the header before any pixel is decoded.

mod jpeg;

pub use jpeg::check_jpeg_structure;

use crate::error::{Error, Result};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};
use std::io::{BufRead, Cursor, Read, Seek};
use std::path::Path;
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;

/// Default limit on decoded pixels: 16k × 16k.
pub const DEFAULT_MAX_PIXELS: u64 = 268_435_456;

/// What a read may cost, checked before any pixel is decoded (image-rs style, settable by
/// the caller: the CLI's `--max-pixels`, the server's per-request limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Decoded width × height.
    pub max_pixels: u64,
    /// Size of the encoded file or request body.
    pub max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pixels: DEFAULT_MAX_PIXELS,
            max_bytes: 1 << 30,
        }
    }
}

impl Limits {
    /// The defaults with another pixel limit.
    pub fn max_pixels(max_pixels: u64) -> Self {
        Limits {
            max_pixels,
            ..Limits::default()
        }
    }

    fn check_bytes(&self, path: &Path, n: u64) -> Result<()> {
        if n > self.max_bytes {
            return Err(Error::image(
                path,
                format!(
                    "{n} bytes, over the limit of {} bytes for an image",
                    self.max_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// A decoded image: colour as RGB plus the alpha channel if the file had one.
pub struct Decoded {
    pub image: DynamicImage,
    pub has_alpha: bool,
    /// What the reader should be told about the file (it lacked its end marker, only its
    /// first frame was read, its 16-bit samples became 8-bit, …); each names no file.
    pub notes: Vec<String>,
}

impl Decoded {
    /// A picture made in memory: no alpha channel, nothing to note.
    pub fn from_image(image: DynamicImage) -> Self {
        Decoded {
            image,
            has_alpha: false,
            notes: Vec::new(),
        }
    }

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
    let reader = reader
        .with_guessed_format()
        .map_err(|e| Error::image(path, e.to_string()))?;
    if reader.format().is_none() {
        return Err(Error::image(
            path,
            "not a recognised image format (expected PNG, JPEG, WebP, TIFF or BMP)",
        ));
    }
    if reader.format() == Some(ImageFormat::Jpeg) {
        let mut bytes = Vec::new();
        reader
            .into_inner()
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(path, e))?;
        return decode_jpeg(&bytes, path, max_pixels);
    }
    let mut notes = Vec::new();
    let mut reader = reader;
    if reader.format() == Some(ImageFormat::WebP) {
        let mut inner = reader.into_inner();
        let at = inner.stream_position().map_err(|e| Error::io(path, e))?;
        let mut head = Vec::with_capacity(21);
        (&mut inner)
            .take(21)
            .read_to_end(&mut head)
            .map_err(|e| Error::io(path, e))?;
        inner
            .seek(std::io::SeekFrom::Start(at))
            .map_err(|e| Error::io(path, e))?;
        // An extended WebP (VP8X chunk) says in its flags whether it is animated.
        if head.len() == 21 && &head[12..16] == b"VP8X" && head[20] & 0x02 != 0 {
            notes.push("an animated WebP: only its first frame is stylized".to_string());
        }
        reader = ImageReader::with_format(inner, ImageFormat::WebP);
    }
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(16).max(64 << 20));
    reader.limits(limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| Error::image(path, e.to_string()))?;
    let (w, h) = decoder.dimensions();
    check_size(path, w, h, max_pixels)?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let has_alpha = decoder.color_type().has_alpha();
    if decoder.color_type().bytes_per_pixel() / decoder.color_type().channel_count() > 1 {
        notes.push(format!(
            "{} bits per sample: the result is written with 8",
            8 * (decoder.color_type().bytes_per_pixel() / decoder.color_type().channel_count())
        ));
    }
    let mut image =
        DynamicImage::from_decoder(decoder).map_err(|e| Error::image(path, e.to_string()))?;
    image.apply_orientation(orientation);
    Ok(Decoded {
        image,
        has_alpha,
        notes,
    })
}

fn check_size(path: &Path, w: u32, h: u32, max_pixels: u64) -> Result<()> {
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
    Ok(())
}

/// JPEG through zune-jpeg in strict mode: truncated or corrupt entropy data is an error,
/// not a picture that turns grey where the data went bad (the lenient default).
fn decode_jpeg(bytes: &[u8], path: &Path, max_pixels: u64) -> Result<Decoded> {
    let note = check_jpeg_structure(bytes, max_pixels).map_err(|e| Error::image(path, e))?;
    // A complete picture without its end marker: give the strict decoder the marker.
    let completed;
    let bytes = if note.is_some() && !bytes.ends_with(&[0xFF, 0xD9]) {
        completed = [bytes, &[0xFF, 0xD9]].concat();
        &completed[..]
    } else {
        bytes
    };
    let opts = DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(1 << 16)
        .set_max_height(1 << 16);
    let mut d = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), opts);
    let bad = |e: zune_jpeg::errors::DecodeErrors| Error::image(path, format!("corrupt JPEG: {e}"));
    d.decode_headers().map_err(bad)?;
    let (w, h) = d.dimensions().expect("headers decoded");
    let (w, h) = (w as u32, h as u32);
    check_size(path, w, h, max_pixels)?;
    let gray = matches!(
        d.input_colorspace(),
        Some(ColorSpace::Luma | ColorSpace::LumaA)
    );
    let out = if gray {
        ColorSpace::Luma
    } else {
        ColorSpace::RGB
    };
    d.set_options(d.options().jpeg_set_out_colorspace(out));
    let px = d.decode().map_err(bad)?;
    let orientation = d
        .exif()
        .and_then(|x| image::metadata::Orientation::from_exif_chunk(x))
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let size_err = || Error::image(path, "corrupt JPEG: decoded data has the wrong size");
    let mut image = if gray {
        DynamicImage::ImageLuma8(image::GrayImage::from_raw(w, h, px).ok_or_else(size_err)?)
    } else {
        DynamicImage::ImageRgb8(image::RgbImage::from_raw(w, h, px).ok_or_else(size_err)?)
    };
    image.apply_orientation(orientation);
    Ok(Decoded {
        image,
        has_alpha: false,
        notes: note.into_iter().collect(),
    })
}

pub fn read_path(path: &Path, limits: &Limits) -> Result<Decoded> {
    let file = crate::io::open_regular(path, limits.max_bytes, "image")?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(1);
    if len == 0 {
        return Err(Error::image(path, "file is empty (0 bytes)"));
    }
    limits.check_bytes(path, len)?;
    decode(
        ImageReader::new(std::io::BufReader::new(file)),
        path,
        limits.max_pixels,
    )
}

pub fn read_bytes(bytes: &[u8], name: &Path, limits: &Limits) -> Result<Decoded> {
    if bytes.is_empty() {
        return Err(Error::image(name, "input is empty (0 bytes)"));
    }
    limits.check_bytes(name, bytes.len() as u64)?;
    decode(
        ImageReader::new(Cursor::new(bytes)),
        name,
        limits.max_pixels,
    )
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
    if format == ImageFormat::Jpeg {
        return out.write_all(&encode_jpeg(&img.to_rgb8(), 92)?);
    }
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, format)
        .map_err(std::io::Error::other)?;
    out.write_all(buf.get_ref())
}

/// JPEG bytes of `rgb` at `quality` (1..=100): 4:2:0 chroma below 90, 4:4:4 from 90 (the
/// libjpeg convention). The `jpeg-encoder` crate's AVX2 path: 640×480 in 5 ms where the
/// `image` crate's encoder took 15, a tenth of a live frame's budget.
pub fn encode_jpeg(rgb: &image::RgbImage, quality: u8) -> std::io::Result<Vec<u8>> {
    let (w, h) = (rgb.width(), rgb.height());
    let (Ok(w16), Ok(h16)) = (u16::try_from(w), u16::try_from(h)) else {
        return Err(std::io::Error::other(format!(
            "{w}×{h} is too large for JPEG (at most 65535 pixels a side)"
        )));
    };
    let mut out = Vec::with_capacity(rgb.len() / 8);
    jpeg_encoder::Encoder::new(&mut out, quality)
        .encode(rgb.as_raw(), w16, h16, jpeg_encoder::ColorType::Rgb)
        .map_err(std::io::Error::other)?;
    Ok(out)
}

pub fn write_path(img: &DynamicImage, path: &Path) -> Result<()> {
    let format = format_for(path)?;
    crate::io::write_atomic_with(path, |f| {
        let mut w = std::io::BufWriter::new(f);
        encode(img, format, &mut w)?;
        std::io::Write::flush(&mut w)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = DynamicImage::ImageRgb8(image::RgbImage::new(w, h));
        let mut out = Vec::new();
        encode(&img, ImageFormat::Png, &mut Cursor::new(&mut out)).unwrap();
        out
    }

    #[test]
    fn limits_refuse_too_many_bytes_or_pixels_and_name_the_input() {
        let b = png(40, 30);
        let name = Path::new("x.png");
        assert!(read_bytes(&b, name, &Limits::default()).is_ok());
        let tight = Limits {
            max_bytes: 10,
            ..Limits::default()
        };
        let e = read_bytes(&b, name, &tight).err().unwrap().to_string();
        assert!(e.contains("x.png") && e.contains("over the limit"), "{e}");
        let e = read_bytes(&b, name, &Limits::max_pixels(1000))
            .err()
            .unwrap();
        assert_eq!(e.category(), "image-too-large");
    }

    /// A complete JPEG without its end marker decodes to the same pixels as the whole file,
    /// with a note; a 16-bit PNG says that its result has 8 bits per sample.
    #[test]
    fn readable_files_with_something_to_say_carry_a_note() {
        let img = crate::testutil::photo(64, 40).to_rgb8();
        for progressive in [false, true] {
            let mut b = Vec::new();
            let mut e = jpeg_encoder::Encoder::new(&mut b, 90);
            e.set_progressive(progressive);
            e.encode(img.as_raw(), 64, 40, jpeg_encoder::ColorType::Rgb)
                .unwrap();
            let name = Path::new("x.jpg");
            let whole = read_bytes(&b, name, &Limits::default()).unwrap();
            assert!(whole.notes.is_empty());
            let cut = read_bytes(&b[..b.len() - 2], name, &Limits::default()).unwrap();
            assert_eq!(cut.image, whole.image, "progressive {progressive}");
            assert_eq!(cut.notes.len(), 1, "{:?}", cut.notes);
        }
        let deep = DynamicImage::ImageRgb16(image::ImageBuffer::from_fn(8, 8, |x, y| {
            image::Rgb([(x * 8000) as u16, (y * 8000) as u16, 65535])
        }));
        let mut png = Vec::new();
        deep.write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .unwrap();
        let d = read_bytes(&png, Path::new("deep.png"), &Limits::default()).unwrap();
        assert!(
            d.notes.iter().any(|n| n.contains("16 bits")),
            "{:?}",
            d.notes
        );
    }
}
