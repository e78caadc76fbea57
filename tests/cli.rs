//! End-to-end: the real `impasto` binary on real (or generated) images.
use image::{DynamicImage, GenericImageView, ImageBuffer, Luma, Rgb, Rgba};
use impasto::model::{Arch, Transformer, TransformerConfig};
use impasto::testutil::shared;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

mod common;
use common::{bin, model, run, stderr, stylize};

use impasto::testutil::photo;

fn no_part_files(dir: &Path) {
    for e in walk(dir) {
        assert!(
            !e.to_string_lossy().ends_with(".part"),
            "left a temporary file {}",
            e.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            v.extend(walk(&p));
        } else {
            v.push(p);
        }
    }
    v
}

#[test]
fn stylizes_a_real_photo_with_an_imported_model() {
    let (Some(onnx), Some(photo)) = (
        shared(
            "models/ml5-fast-style-transfer/onnx/udnie.onnx",
            "stylizes_a_real_photo_with_an_imported_model",
        ),
        shared(
            "data/content/chicago.jpg",
            "stylizes_a_real_photo_with_an_imported_model",
        ),
    ) else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("udnie.safetensors");
    let o = run(&["import", onnx.to_str().unwrap(), "-o", m.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = d.path().join("chicago.png");
    let o = stylize(&photo, &m, &out, &["--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rec: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rec["ok"], true);
    let a = image::open(&photo).unwrap().to_rgb8();
    let b = image::open(&out).unwrap().to_rgb8();
    assert_eq!(a.dimensions(), b.dimensions());
    assert_eq!(rec["width"], a.width());
    // Stylized: far from the photo on average, and not flat.
    let diff: f64 = a
        .pixels()
        .zip(b.pixels())
        .map(|(p, q)| (p[0] as f64 - q[0] as f64).abs())
        .sum::<f64>()
        / (a.width() * a.height()) as f64;
    assert!(diff > 10.0, "mean change {diff}");
    let mean = b.pixels().map(|p| p[1] as f64).sum::<f64>() / (b.width() * b.height()) as f64;
    let var = b
        .pixels()
        .map(|p| (p[1] as f64 - mean).powi(2))
        .sum::<f64>()
        / (b.width() * b.height()) as f64;
    assert!(var > 100.0, "output is nearly flat (variance {var})");
}

#[test]
fn any_size_and_pixel_format_keeps_its_size() {
    let d = tempfile::tempdir().unwrap();
    let m = model(d.path());
    let cases: Vec<(&str, DynamicImage)> = vec![
        ("rgb.png", photo(37, 23)),
        ("one.png", photo(1, 1)),
        (
            "gray.png",
            DynamicImage::ImageLuma8(ImageBuffer::from_fn(19, 30, |x, y| {
                Luma([((x * y) % 256) as u8])
            })),
        ),
        (
            "rgba.png",
            DynamicImage::ImageRgba8(ImageBuffer::from_fn(21, 14, |x, y| {
                Rgba([x as u8 * 9, y as u8 * 9, 90, (x * 12) as u8])
            })),
        ),
        (
            "deep.png",
            DynamicImage::ImageRgb16(ImageBuffer::from_fn(16, 9, |x, y| {
                Rgb([x as u16 * 4000, y as u16 * 7000, 30000])
            })),
        ),
        ("photo.jpg", photo(50, 41)),
        ("photo.webp", photo(12, 30)),
    ];
    for (name, img) in &cases {
        let p = d.path().join(name);
        img.save(&p).unwrap();
        let out = d.path().join(format!("out-{name}"));
        let o = stylize(&p, &m, &out, &[]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let got = image::open(&out).unwrap();
        assert_eq!(got.dimensions(), img.dimensions(), "{name}");
        if *name == "rgba.png" {
            // The alpha channel survives.
            let (a, b) = (img.to_rgba8(), got.to_rgba8());
            assert!(
                a.pixels().zip(b.pixels()).all(|(p, q)| p[3] == q[3]),
                "alpha changed"
            );
        }
    }
    no_part_files(d.path());
}

/// A JPEG with an EXIF APP1 segment saying "rotate 90° clockwise" (orientation 6).
fn jpeg_with_orientation(img: &DynamicImage, orientation: u16) -> Vec<u8> {
    let mut jpg = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut jpg),
        image::ImageFormat::Jpeg,
    )
    .unwrap();
    let mut tiff = b"II*\0\x08\0\0\0\x01\0".to_vec();
    tiff.extend_from_slice(&0x0112u16.to_le_bytes());
    tiff.extend_from_slice(&3u16.to_le_bytes());
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpg[..2].to_vec();
    out.extend_from_slice(&[0xff, 0xe1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpg[2..]);
    out
}

#[test]
fn exif_orientation_is_honoured() {
    let d = tempfile::tempdir().unwrap();
    let m = model(d.path());
    let p = d.path().join("rotated.jpg");
    std::fs::write(&p, jpeg_with_orientation(&photo(40, 24), 6)).unwrap();
    let out = d.path().join("out.png");
    let o = stylize(&p, &m, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(image::open(&out).unwrap().dimensions(), (24, 40));
}

/// A PNG whose header claims `w × h` (valid CRC), with no pixel data worth the name.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    v.extend_from_slice(&13u32.to_be_bytes());
    v.extend_from_slice(&ihdr);
    v.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    for chunk in [&b"IDAT\x78\x9c\x03\x00\x00\x00\x00\x01"[..], b"IEND"] {
        v.extend_from_slice(&((chunk.len() - 4) as u32).to_be_bytes());
        v.extend_from_slice(chunk);
        v.extend_from_slice(&crc32(chunk).to_be_bytes());
    }
    v
}

fn crc32(b: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &x in b {
        c ^= x as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

#[test]
fn a_folder_with_bad_files_does_the_rest_and_exits_2() {
    let d = tempfile::tempdir().unwrap();
    let m = model(d.path());
    let src = d.path().join("in");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    photo(30, 20).save(src.join("a.png")).unwrap();
    photo(25, 25).save(src.join("sub/b.jpg")).unwrap();
    let mut good = Vec::new();
    photo(64, 64)
        .write_to(
            &mut std::io::Cursor::new(&mut good),
            image::ImageFormat::Png,
        )
        .unwrap();
    std::fs::write(src.join("truncated.png"), &good[..good.len() / 2]).unwrap();
    std::fs::write(src.join("empty.jpg"), b"").unwrap();
    std::fs::write(
        src.join("corrupt.jpg"),
        b"\xff\xd8\xff\xe0 this is not really a jpeg at all",
    )
    .unwrap();
    std::fs::write(src.join("text.png"), b"hello, I am a text file").unwrap();
    std::fs::write(src.join("huge.png"), png_claiming(100_000, 100_000)).unwrap();
    let out = d.path().join("out");
    let o = stylize(&src, &m, &out, &["--json"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    for bad in [
        "truncated.png",
        "empty.jpg",
        "corrupt.jpg",
        "text.png",
        "huge.png",
    ] {
        assert!(err.contains(bad), "no error names {bad}: {err}");
    }
    assert!(err.contains("over the limit"), "{err}");
    assert!(err.contains("empty"), "{err}");
    assert!(
        out.join("a.png").exists() && out.join("sub/b.jpg").exists(),
        "good images were not done"
    );
    let files = walk(&out);
    assert_eq!(files.len(), 2, "unexpected outputs {files:?}");
    let recs: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 7);
    assert_eq!(recs.iter().filter(|r| r["ok"] == true).count(), 2);
    no_part_files(d.path());
}

#[test]
fn unwritable_output_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let m = model(d.path());
    let p = d.path().join("a.png");
    photo(10, 10).save(&p).unwrap();
    std::fs::write(d.path().join("file"), b"x").unwrap();
    let bad = d.path().join("file/out.png");
    let o = stylize(&p, &m, &bad, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("out.png"), "{}", stderr(&o));
    let o = stylize(&p, &m, &d.path().join("x.gif"), &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("extension"), "{}", stderr(&o));
    no_part_files(d.path());
}

#[test]
fn malformed_model_files_are_rejected_by_name() {
    let d = tempfile::tempdir().unwrap();
    let good = Transformer::init(TransformerConfig::new(Arch::Johnson), 3);
    let p = d.path().join("a.png");
    photo(10, 10).save(&p).unwrap();
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "garbage.safetensors",
            b"\x01\x02not a model at all, just bytes".to_vec(),
            "header",
        ),
        ("empty.safetensors", Vec::new(), "too short"),
        (
            "huge-header.safetensors",
            [&u64::MAX.to_le_bytes()[..], b"{}"].concat(),
            "header",
        ),
    ];
    let mut f = good.to_file();
    f.tensors.remove("res3.in1.bias");
    let missing = d.path().join("m");
    f.write(&missing, false).unwrap();
    cases.push((
        "missing.safetensors",
        std::fs::read(&missing).unwrap(),
        "missing tensor `res3.in1.bias`",
    ));
    let mut f = good.to_file();
    let (_, v) = f.tensors.remove("conv2.conv2d.weight").unwrap();
    f.tensors
        .insert("conv2.conv2d.weight".into(), (vec![32, 64, 3, 3], v));
    f.write(&missing, false).unwrap();
    cases.push((
        "shape.safetensors",
        std::fs::read(&missing).unwrap(),
        "has shape [32, 64, 3, 3]",
    ));
    let mut f = good.to_file();
    f.metadata
        .insert("impasto.config".into(), "{\"arch\": \"nonsense\"}".into());
    f.write(&missing, false).unwrap();
    cases.push((
        "config.safetensors",
        std::fs::read(&missing).unwrap(),
        "impasto.config",
    ));
    let mut f = good.to_file();
    f.metadata.insert("impasto.margin".into(), "-3".into());
    f.write(&missing, false).unwrap();
    cases.push((
        "margin.safetensors",
        std::fs::read(&missing).unwrap(),
        "impasto.margin",
    ));
    for (name, bytes, want) in cases {
        let mp = d.path().join(name);
        std::fs::write(&mp, bytes).unwrap();
        let out = d.path().join("out.png");
        let o = stylize(&p, &mp, &out, &[]);
        assert_eq!(o.status.code(), Some(2), "{name}");
        let e = stderr(&o);
        assert!(e.contains(name) && e.contains(want), "{name}: {e}");
        assert!(!out.exists());
    }
}

/// `convert --margin N` records the mirror margin a model runs with; `info` shows it, and
/// `stylize` uses it unless `--margin` says otherwise (on the photo that ships with us).
#[test]
fn a_recorded_margin_is_the_models_default() {
    let d = tempfile::tempdir().unwrap();
    let m = model(d.path());
    let wide = d.path().join("wide.safetensors");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let o = run(&["convert", &s(&m), "-o", &s(&wide), "--margin", "24"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["info", &s(&wide)]);
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(info["impasto.margin"], 24, "{info}");
    let photo = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/coffee.jpg");
    let stylized = |model: &Path, margin: Option<&str>| {
        let out = d.path().join("out.png");
        let mut args = vec!["stylize", photo, "-m", model.to_str().unwrap()];
        args.extend(["--max-size", "96", "-o", out.to_str().unwrap()]);
        if let Some(v) = margin {
            args.extend(["--margin", v]);
        }
        let o = run(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        image::open(&out).unwrap().to_rgb8()
    };
    let recorded = stylized(&wide, None);
    assert_eq!(recorded, stylized(&m, Some("24")));
    assert_ne!(recorded, stylized(&m, None), "the plain file runs at 8");
    assert_eq!(stylized(&wide, Some("8")), stylized(&m, None));
    // --no-margin drops it again; out-of-range values are usage errors.
    let plain = d.path().join("plain.safetensors");
    let o = run(&["convert", &s(&wide), "-o", &s(&plain), "--no-margin"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stylized(&plain, None), stylized(&m, None));
    let o = run(&["convert", &s(&m), "-o", &s(&plain), "--margin", "999"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn stdin_to_stdout_and_a_closed_pipe() {
    let d = tempfile::tempdir().unwrap();
    let m = model(d.path());
    let mut png = Vec::new();
    photo(33, 18)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let mut c = bin()
        .args(["stylize", "-", "-m", m.to_str().unwrap(), "-o", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(&png).unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        image::load_from_memory(&o.stdout).unwrap().dimensions(),
        (33, 18)
    );

    // The reader goes away before the image is written: a quiet exit.
    let p = d.path().join("a.png");
    photo(300, 200).save(&p).unwrap();
    let mut c = bin()
        .args([
            "stylize",
            p.to_str().unwrap(),
            "-m",
            m.to_str().unwrap(),
            "-o",
            "-",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(c.stdout.take());
    let o = c.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
}

#[test]
fn strength_zero_returns_the_photo_and_tiling_matches_whole() {
    let d = tempfile::tempdir().unwrap();
    let m = model(d.path());
    let p = d.path().join("a.png");
    let img = photo(203, 150);
    img.save(&p).unwrap();
    let out0 = d.path().join("s0.png");
    let o = stylize(&p, &m, &out0, &["--strength", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(image::open(&out0).unwrap().to_rgb8(), img.to_rgb8());
    let o = run(&[
        "stylize",
        p.to_str().unwrap(),
        "-m",
        m.to_str().unwrap(),
        "--strength",
        "1.5",
    ]);
    assert_eq!(o.status.code(), Some(2));

    let whole = d.path().join("whole.png");
    let tiled = d.path().join("tiled.png");
    let o = stylize(&p, &m, &whole, &[]);
    assert!(o.status.success());
    let o = stylize(&p, &m, &tiled, &["--tile", "64", "--tile-threshold", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (a, b) = (
        image::open(&whole).unwrap().to_rgb8(),
        image::open(&tiled).unwrap().to_rgb8(),
    );
    let maxd = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| (*x as i32 - *y as i32).abs())
        .max()
        .unwrap();
    assert!(maxd <= 1, "tiled differs from whole by {maxd}");
}

#[test]
fn preserve_color_keeps_the_photos_colours() {
    let d = tempfile::tempdir().unwrap();
    // A tame random model whose output stays mostly inside 0..255, so that clipping does
    // not decide the colours.
    let t = Transformer::init(TransformerConfig::new(Arch::Johnson), 5);
    let mut t = t;
    t.edit_param("deconv3.conv2d.weight", |w| {
        w.iter_mut().for_each(|w| *w *= 20.0)
    });
    t.edit_param("deconv3.conv2d.bias", |b| b.fill(128.0));
    let m = d.path().join("tame.safetensors");
    t.save(&m, false).unwrap();
    let p = d.path().join("a.png");
    let img = photo(64, 48);
    img.save(&p).unwrap();
    let (plain, kept) = (d.path().join("plain.png"), d.path().join("kept.png"));
    assert!(run(&[
        "stylize",
        p.to_str().unwrap(),
        "-m",
        m.to_str().unwrap(),
        "-o",
        plain.to_str().unwrap()
    ])
    .status
    .success());
    assert!(run(&[
        "stylize",
        p.to_str().unwrap(),
        "-m",
        m.to_str().unwrap(),
        "-o",
        kept.to_str().unwrap(),
        "--preserve-color"
    ])
    .status
    .success());
    // Chroma distance to the photo shrinks.
    let chroma = |p: &Rgb<u8>| {
        let [r, g, b] = p.0.map(|v| v as f64);
        (
            -0.1687 * r - 0.3313 * g + 0.5 * b,
            0.5 * r - 0.4187 * g - 0.0813 * b,
        )
    };
    let dist = |x: &Path| {
        let o = image::open(x).unwrap().to_rgb8();
        let i = img.to_rgb8();
        o.pixels()
            .zip(i.pixels())
            .map(|(a, b)| {
                let (p, q) = (chroma(a), chroma(b));
                (p.0 - q.0).abs() + (p.1 - q.1).abs()
            })
            .sum::<f64>()
            / (64.0 * 48.0)
    };
    let (dp, dk) = (dist(&plain), dist(&kept));
    assert!(
        dk < 2.0 && dk < dp,
        "preserve-color chroma distance {dk} vs plain {dp}"
    );
}

#[test]
fn an_unknown_style_name_lists_the_built_in_ones() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("a.png");
    photo(8, 8).save(&p).unwrap();
    let o = run(&["stylize", p.to_str().unwrap(), "--style", "no_such_style"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown style") && stderr(&o).contains("built-in styles"),
        "{}",
        stderr(&o)
    );
    let o = run(&["styles"]);
    assert!(o.status.success());
}

#[test]
fn built_in_styles_work_by_name_and_make_a_sheet() {
    let names = impasto::styles::names();
    assert!(
        names.contains(&"great_wave"),
        "great_wave ships in the binary"
    );
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("a.jpg");
    photo(120, 90).save(&p).unwrap();
    let out = d.path().join("out.png");
    let o = run(&[
        "stylize",
        p.to_str().unwrap(),
        "--style",
        "great_wave",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(image::open(&out).unwrap().dimensions(), (120, 90));
    // `export` and `convert` take a built-in by name too.
    let onnx = d.path().join("gw.onnx");
    let o = run(&["export", "great_wave", "-o", onnx.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::metadata(&onnx).unwrap().len() > 1_000_000);
    let copy = d.path().join("gw.safetensors");
    let o = run(&["convert", "great_wave", "-o", copy.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let back = impasto::model::Transformer::load(&copy).unwrap();
    assert_eq!(back.style_names(), vec!["great_wave".to_string()]);
    // When the built-ins are one network (`builtins`): `builtins --mix great_wave` is the
    // same picture, and a blend of two paintings is neither.
    if impasto::styles::blends().contains(&"builtins") {
        let stylize = |style: &str, mix: &str, name: &str| {
            let out = d.path().join(name);
            let mut args = vec!["stylize", p.to_str().unwrap(), "--style", style];
            if !mix.is_empty() {
                args.extend(["--mix", mix]);
            }
            args.extend(["-o", out.to_str().unwrap()]);
            let o = run(&args);
            assert!(o.status.success(), "{}", stderr(&o));
            std::fs::read(out).unwrap()
        };
        let whole = stylize("builtins", "great_wave", "whole.png");
        assert_eq!(whole, std::fs::read(&out).unwrap(), "a row of builtins");
        let blend = stylize("builtins", "great_wave=0.5,udnie=0.5", "blend.png");
        assert_ne!(blend, whole);
        assert_ne!(blend, stylize("udnie", "", "udnie.png"));
        // A built-in style holds one style: a blend asked of it says where the blends are.
        let o = run(&[
            "stylize",
            p.to_str().unwrap(),
            "--style",
            "great_wave",
            "--mix",
            "great_wave=0.5,udnie=0.5",
            "-o",
            d.path().join("no.png").to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(2));
        assert!(stderr(&o).contains("--style builtins"), "{}", stderr(&o));
        assert!(!d.path().join("no.png").exists());
    }
    let o = run(&["styles"]);
    let listed = String::from_utf8_lossy(&o.stdout).to_string();
    for n in impasto::styles::names()
        .into_iter()
        .chain(impasto::styles::blends())
    {
        assert!(listed.contains(&format!("{n} ")), "{n}: {listed}");
    }
    let sheet = d.path().join("sheet.png");
    let o = run(&[
        "sheet",
        p.to_str().unwrap(),
        "-o",
        sheet.to_str().unwrap(),
        "--max-size",
        "64",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = image::open(&sheet).unwrap();
    assert!(
        s.width() > 2 * 64 && s.height() > 48,
        "sheet {}x{}",
        s.width(),
        s.height()
    );
    // `photo` places the photo where it is asked for (here once per row of two).
    let name = impasto::styles::names()[0];
    let o = run(&[
        "sheet",
        p.to_str().unwrap(),
        "-o",
        sheet.to_str().unwrap(),
        "--max-size",
        "64",
        "--columns",
        "2",
        "--style",
        "photo",
        "--style",
        name,
        "--style",
        "photo",
        "--style",
        name,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("(2 styles)"), "{}", stderr(&o));
    let s = image::open(&sheet).unwrap().to_rgb8();
    // Two rows of two tiles (8-pixel gaps, 26-pixel labels); each row starts with the photo.
    let (tw, th) = (64u32, 48u32);
    assert_eq!(s.dimensions(), (2 * (tw + 8) + 8, 2 * (th + 26 + 8) + 8));
    let tile = |col: u32, row: u32| {
        image::imageops::crop_imm(&s, 8 + col * (tw + 8), 8 + row * (th + 34), tw, th).to_image()
    };
    assert_eq!(tile(0, 0), tile(0, 1));
    assert_ne!(tile(0, 0), tile(1, 0));
}
