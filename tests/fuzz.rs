//! Property test (a small in-process fuzzer) over the two parsers that read untrusted
//! bytes: the image decoder path and the model loader (safetensors and ONNX). Valid seed
//! files are mutated (bit flips, overwritten and inserted bytes, duplicated or deleted
//! runs, truncation) and every result must be `Ok` or a typed error, never a panic, and
//! must come back quickly. Deterministic; `IMPASTO_FUZZ_ITERS` sets the number of cases per
//! target (default 4000, a few seconds).
use image::{DynamicImage, ImageFormat};
use impasto::model::{Arch, Transformer, TransformerConfig};
use impasto::rng::Rng;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

fn iters() -> usize {
    std::env::var("IMPASTO_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4000)
}

fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = seed.to_vec();
    let n = 1 + rng.below(6);
    for _ in 0..n {
        if b.is_empty() {
            b.push(rng.next_u64() as u8);
        }
        let len = b.len();
        match rng.below(7) {
            0 => {
                let i = rng.below(len);
                b[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(len);
                b[i] = rng.next_u64() as u8;
            }
            2 => {
                // A run of interesting bytes (0x00, 0xFF, 0x7F, 0x80).
                let i = rng.below(len);
                let v = [0x00, 0xFF, 0x7F, 0x80][rng.below(4)];
                let k = (1 + rng.below(16)).min(len - i);
                b[i..i + k].fill(v);
            }
            3 => {
                let i = rng.below(len + 1);
                let k = 1 + rng.below(32);
                let ins: Vec<u8> = (0..k).map(|_| rng.next_u64() as u8).collect();
                b.splice(i..i, ins);
            }
            4 => {
                let i = rng.below(len);
                let k = (1 + rng.below(64)).min(len - i);
                b.drain(i..i + k);
            }
            5 => {
                let i = rng.below(len);
                let k = (1 + rng.below(64)).min(len - i);
                let run = b[i..i + k].to_vec();
                let j = rng.below(b.len() + 1);
                b.splice(j..j, run);
            }
            _ => b.truncate(rng.below(len)),
        }
    }
    b
}

/// Run `f` on `iters()` mutations of each seed; collect panics and slow cases.
fn fuzz(name: &str, seeds: &[Vec<u8>], seed: u64, f: impl Fn(&[u8]) -> bool) {
    let mut rng = Rng::new(seed);
    let (mut ok, mut err) = (0usize, 0usize);
    let mut problems = Vec::new();
    let t_all = Instant::now();
    for i in 0..iters() {
        let s = &seeds[i % seeds.len()];
        let input = mutate(s, &mut rng);
        let t = Instant::now();
        match catch_unwind(AssertUnwindSafe(|| f(&input))) {
            Ok(true) => ok += 1,
            Ok(false) => err += 1,
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                problems.push(format!("case {i}: panic: {msg}"));
                let _ = std::fs::write(
                    format!("{}/fuzz-{name}-{i}.bin", std::env::temp_dir().display()),
                    &input,
                );
            }
        }
        if t.elapsed() > Duration::from_secs(5) {
            problems.push(format!("case {i}: took {:?}", t.elapsed()));
        }
    }
    eprintln!(
        "fuzz {name}: {} cases in {:.1} s: {ok} decoded, {err} refused with an error, {} problems",
        iters(),
        t_all.elapsed().as_secs_f64(),
        problems.len()
    );
    assert!(problems.is_empty(), "{name}: {problems:#?}");
}

fn picture(w: u32, h: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(image::ImageBuffer::from_fn(w, h, |x, y| {
        image::Rgb([(x * 9) as u8, (y * 7) as u8, ((x ^ y) * 5) as u8])
    }))
}

fn encode(img: &DynamicImage, f: ImageFormat) -> Vec<u8> {
    let mut c = std::io::Cursor::new(Vec::new());
    img.write_to(&mut c, f).unwrap();
    c.into_inner()
}

#[test]
fn image_decoder_never_panics_on_mutated_files() {
    let img = picture(48, 40);
    let mut seeds: Vec<Vec<u8>> = [
        ImageFormat::Jpeg,
        ImageFormat::Png,
        ImageFormat::WebP,
        ImageFormat::Bmp,
        ImageFormat::Tiff,
    ]
    .iter()
    .map(|f| encode(&img, *f))
    .collect();
    // A grayscale JPEG, one with restart markers is not made by `image`; the shipped photo
    // (a real camera-style JPEG with EXIF-free baseline data) is.
    seeds.push(encode(
        &DynamicImage::ImageLuma8(img.to_luma8()),
        ImageFormat::Jpeg,
    ));
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/coffee.jpg");
    if let Ok(b) = std::fs::read(shipped) {
        seeds.push(b);
    }
    fuzz("image", &seeds, 17, |b| {
        // A modest pixel limit, as a server would set.
        impasto::imageio::read_bytes(
            b,
            Path::new("fuzz"),
            &impasto::imageio::Limits::max_pixels(4_000_000),
        )
        .is_ok()
    });
}

#[test]
fn model_loader_never_panics_on_mutated_files() {
    let mut cfg = TransformerConfig::new(Arch::Johnson);
    cfg.channels = [4, 8, 8];
    cfg.res_blocks = 1;
    let m = Transformer::init(cfg, 3);
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("m.safetensors");
    m.save(&p, true).unwrap();
    let st = std::fs::read(&p).unwrap();
    let mut seed_cfg = TransformerConfig::new(Arch::Seed);
    seed_cfg.channels = [4, 8, 8];
    seed_cfg.res_blocks = 1;
    let onnx = impasto::onnx_export::to_onnx(&Transformer::init(seed_cfg, 4));
    fuzz("safetensors", &[st], 23, |b| {
        match Transformer::from_bytes(b) {
            Ok(t) => {
                // Whatever loads must also run (its output may overflow; it must not panic).
                let y = t.forward(&impasto::tensor::Tensor::zeros(1, 3, 8, 8));
                assert_eq!((y.c, y.h, y.w), (3, 8, 8));
                true
            }
            Err(_) => false,
        }
    });
    fuzz("onnx", &[onnx], 29, |b| {
        impasto::onnx::import_bytes(b).is_ok()
    });
}
