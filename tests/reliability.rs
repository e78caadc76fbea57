//! End-to-end regressions for the ways a user could lose work or get a wrong answer without
//! being told: truncated and corrupt images, outputs over inputs, name clashes, link loops,
//! unreadable folders, invalid arguments and model files, interrupted runs.
use image::{DynamicImage, ImageFormat};
use impasto::model::{Arch, Transformer, TransformerConfig};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{bin, model, run, stderr};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A textured test picture (so that compressed formats have real entropy-coded data).
fn picture(w: u32, h: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(image::ImageBuffer::from_fn(w, h, |x, y| {
        let v = ((x * 37 + y * 11) ^ (x * y)) % 251;
        image::Rgb([
            (x * 255 / w) as u8,
            v as u8,
            ((x / 7 + y / 5) * 29 % 256) as u8,
        ])
    }))
}

fn encode(img: &DynamicImage, f: ImageFormat) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, f).unwrap();
    buf.into_inner()
}

fn records(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                v.extend(files_under(&p));
            } else {
                v.push(p);
            }
        }
    }
    v.sort();
    v
}

/// Every format cut at 10%, 50% and 90%, and a JPEG whose
/// entropy-coded data is corrupt, is an error naming the file (exit 2); the intact files
/// in the same folder are still done and nothing else is written.
#[test]
fn truncated_and_corrupt_images_are_errors_not_grey_pictures() {
    let d = tempfile::tempdir().unwrap();
    let m = model(d.path());
    let inp = d.path().join("in");
    std::fs::create_dir(&inp).unwrap();
    let img = picture(200, 152);
    let formats = [
        (ImageFormat::Jpeg, "jpg"),
        (ImageFormat::Png, "png"),
        (ImageFormat::WebP, "webp"),
        (ImageFormat::Tiff, "tiff"),
        (ImageFormat::Bmp, "bmp"),
    ];
    let mut bad = Vec::new();
    for (f, ext) in formats {
        let bytes = encode(&img, f);
        std::fs::write(inp.join(format!("whole_{ext}.{ext}")), &bytes).unwrap();
        for pct in [10, 50, 90] {
            let name = format!("cut{pct}_{ext}.{ext}");
            std::fs::write(inp.join(&name), &bytes[..bytes.len() * pct / 100]).unwrap();
            bad.push(name);
        }
    }
    // Corrupt entropy data: a run of bytes inside the scan replaced (no markers added).
    let jpg = encode(&img, ImageFormat::Jpeg);
    let sos = jpg.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    for (k, start) in [0.3f64, 0.6].into_iter().enumerate() {
        let mut c = jpg.clone();
        let a = sos + 20 + ((c.len() - sos - 40) as f64 * start) as usize;
        for (i, b) in c[a..a + 64].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(73).wrapping_add(0x35) & 0x7F;
        }
        let name = format!("corrupt{k}_jpg.jpg");
        std::fs::write(inp.join(&name), &c).unwrap();
        bad.push(name);
    }
    let out = d.path().join("out");
    let o = run(&["stylize", s(&inp), "-m", s(&m), "-o", s(&out), "--json"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let recs = records(&o);
    assert_eq!(recs.len(), 5 + bad.len());
    for r in &recs {
        let input = r["input"].as_str().unwrap();
        let is_bad = bad.iter().any(|b| input.ends_with(b.as_str()));
        assert_eq!(r["ok"], !is_bad, "{r}");
        if is_bad {
            assert_eq!(r["category"], "image", "{r}");
            assert!(stderr(&o).contains(input), "error names the file: {input}");
        }
    }
    let written = files_under(&out);
    assert_eq!(written.len(), 5, "{written:?}");
}

/// A small file whose header claims a huge image is refused at once, before any pixel is
/// paid for (it used to run for minutes at over a gigabyte).
#[test]
fn a_tiny_jpeg_claiming_a_huge_size_is_refused_at_once() {
    let d = tempfile::tempdir().unwrap();
    let m = model(d.path());
    let mut jpg = encode(&picture(64, 64), ImageFormat::Jpeg);
    // Rewrite the frame header's size to 12000×12000 and cut the data after 4 KB.
    let sof = jpg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    jpg[sof + 5..sof + 7].copy_from_slice(&12000u16.to_be_bytes());
    jpg[sof + 7..sof + 9].copy_from_slice(&12000u16.to_be_bytes());
    jpg.truncate(4096.min(jpg.len() - 10));
    let p = d.path().join("huge.jpg");
    std::fs::write(&p, &jpg).unwrap();
    let t0 = std::time::Instant::now();
    let o = run(&[
        "stylize",
        s(&p),
        "-m",
        s(&m),
        "-o",
        s(&d.path().join("o.png")),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("huge.jpg") && stderr(&o).contains("truncated"),
        "{}",
        stderr(&o)
    );
    assert!(t0.elapsed().as_secs_f64() < 5.0, "took {:?}", t0.elapsed());
}

/// An output that is an input (the same file, the input folder
/// itself, or either through a link) is refused before anything is written.
#[test]
fn originals_are_never_overwritten_unless_asked() {
    let d = tempfile::tempdir().unwrap();
    let m = model(d.path());
    let photos = d.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    let a = photos.join("a.jpg");
    std::fs::write(&a, encode(&picture(40, 30), ImageFormat::Jpeg)).unwrap();
    std::fs::write(
        photos.join("b.png"),
        encode(&picture(30, 40), ImageFormat::Png),
    )
    .unwrap();
    let before = |p: &Path| std::fs::read(p).unwrap();
    let (a0, b0) = (before(&a), before(&photos.join("b.png")));
    #[cfg(unix)]
    std::os::unix::fs::symlink(&photos, d.path().join("link")).unwrap();
    let mut cases = vec![
        vec![
            "stylize".to_string(),
            s(&photos).into(),
            "-o".into(),
            s(&photos).into(),
        ],
        vec!["stylize".into(), s(&a).into(), "-o".into(), s(&a).into()],
        vec![
            "stylize".into(),
            s(&a).into(),
            "-o".into(),
            format!("{}/", s(&photos)),
        ],
    ];
    #[cfg(unix)]
    cases.push(vec![
        "stylize".into(),
        s(&photos).into(),
        "-o".into(),
        s(&d.path().join("link")).into(),
    ]);
    for c in &cases {
        let mut args: Vec<&str> = c.iter().map(String::as_str).collect();
        args.extend(["-m", s(&m)]);
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{c:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("overwrite the input"), "{}", stderr(&o));
        assert_eq!(before(&a), a0, "{c:?} changed a.jpg");
        assert_eq!(before(&photos.join("b.png")), b0);
    }
    // Said explicitly, it is done.
    let o = run(&[
        "stylize",
        s(&a),
        "-o",
        s(&a),
        "-m",
        s(&m),
        "--overwrite-inputs",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(before(&a), a0);
}

/// Every input gets its own output; clashes are renamed and
/// said, and `--json` reports where each one went.
#[test]
fn clashing_output_names_each_get_their_own_file() {
    let d = tempfile::tempdir().unwrap();
    let m = model(d.path());
    let r = d.path();
    for (dir, name, f) in [
        ("a", "x.jpg", ImageFormat::Jpeg),
        ("b", "x.jpg", ImageFormat::Jpeg),
        ("f", "y.bmp", ImageFormat::Bmp),
        ("f", "y.tiff", ImageFormat::Tiff),
        ("f", "z.jpg", ImageFormat::Jpeg),
        ("f", "z.jpeg", ImageFormat::Jpeg),
    ] {
        std::fs::create_dir_all(r.join(dir)).unwrap();
        std::fs::write(r.join(dir).join(name), encode(&picture(24, 20), f)).unwrap();
    }
    let out = r.join("out");
    let o = run(&[
        "stylize",
        s(&r.join("a/x.jpg")),
        s(&r.join("b/x.jpg")),
        s(&r.join("f")),
        "-o",
        s(&out),
        "-m",
        s(&m),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let recs = records(&o);
    assert_eq!(recs.len(), 6);
    let outs: std::collections::HashSet<_> = recs
        .iter()
        .map(|r| r["output"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(outs.len(), 6, "{outs:?}");
    assert_eq!(files_under(&out).len(), 6, "{:?}", files_under(&out));
    for r in &recs {
        assert!(Path::new(r["output"].as_str().unwrap()).exists());
    }
    assert!(
        stderr(&o).contains("would both be written"),
        "{}",
        stderr(&o)
    );
}

/// Link loops are reported and skipped, each image done once.
#[cfg(unix)]
#[test]
fn link_loops_in_a_folder_are_skipped() {
    let d = tempfile::tempdir().unwrap();
    let m = model(d.path());
    let inp = d.path().join("in");
    std::fs::create_dir_all(inp.join("sub")).unwrap();
    std::fs::write(
        inp.join("a.png"),
        encode(&picture(16, 16), ImageFormat::Png),
    )
    .unwrap();
    std::fs::write(
        inp.join("sub/b.png"),
        encode(&picture(16, 16), ImageFormat::Png),
    )
    .unwrap();
    std::os::unix::fs::symlink(".", inp.join("loop")).unwrap();
    std::os::unix::fs::symlink(".", inp.join("sub/self")).unwrap();
    let out = d.path().join("out");
    let mut child = bin()
        .args(["stylize", s(&inp), "-o", s(&out), "-m", s(&m), "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed().as_secs() > 60 {
            child.kill().unwrap();
            panic!("the walk did not end");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(records(&o).len(), 2);
    assert!(stderr(&o).contains("link loop"), "{}", stderr(&o));
}

/// An unreadable subfolder is an error (exit 2) and the rest of
/// the tree is still done. Root reads everything, so as root the binary runs as `nobody`.
#[cfg(unix)]
#[test]
fn an_unreadable_subfolder_does_not_stop_the_batch() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let m = model(d.path());
    let inp = d.path().join("in");
    for sub in ["locked", "ok"] {
        std::fs::create_dir_all(inp.join(sub)).unwrap();
        std::fs::write(
            inp.join(sub).join("p.png"),
            encode(&picture(16, 16), ImageFormat::Png),
        )
        .unwrap();
    }
    std::fs::write(
        inp.join("top.png"),
        encode(&picture(16, 16), ImageFormat::Png),
    )
    .unwrap();
    for p in [d.path().join("in"), inp.join("ok")] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&m, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(inp.join("locked"), std::fs::Permissions::from_mode(0o000)).unwrap();
    let out = d.path().join("out");
    let root = std::fs::read_dir(inp.join("locked")).is_ok();
    let mut c = if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_impasto"));
        c
    } else {
        bin()
    };
    let o = c
        .args(["stylize", s(&inp), "-o", s(&out), "-m", s(&m), "--json"])
        .output();
    std::fs::set_permissions(inp.join("locked"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = match o {
        Ok(o) if !(root && o.status.code() == Some(127)) => o,
        _ => {
            impasto::testutil::skip(
                "an_unreadable_subfolder_does_not_stop_the_batch",
                "cannot drop root (setpriv)",
            );
            return;
        }
    };
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("locked") && stderr(&o).contains("cannot read folder"),
        "{}",
        stderr(&o)
    );
    assert_eq!(records(&o).len(), 2, "top.png and ok/p.png are done");
    assert_eq!(files_under(&out).len(), 2);
}

/// Arguments that used to panic or silently give a wrong
/// result are refused up front with exit 2 and a message naming the argument.
#[test]
fn invalid_arguments_are_refused_not_panics() {
    let d = tempfile::tempdir().unwrap();
    let m = model(d.path());
    let img = d.path().join("p.png");
    std::fs::write(&img, encode(&picture(16, 16), ImageFormat::Png)).unwrap();
    let (m, img) = (s(&m), s(&img));
    let out = s(&d.path().join("o.png")).to_string();
    let train = |extra: &[&str]| {
        let mut v = vec![
            "train",
            "--style",
            img,
            "--data",
            img,
            "-o",
            "t.safetensors",
        ];
        v.extend_from_slice(extra);
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let sv = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (train(&["--batch-size", "0"]), "--batch-size"),
        (train(&["--image-size", "0"]), "--image-size"),
        (train(&["--image-size", "3"]), "--image-size"),
        (train(&["--steps", "0"]), "--steps"),
        (train(&["--epochs", "0"]), "--epochs"),
        (train(&["--lr", "NaN"]), "--lr"),
        (train(&["--lr=-1"]), "--lr"),
        (train(&["--style-size", "0"]), "--style-size"),
        (train(&["--style-weight", "inf"]), "--style-weight"),
        (
            sv(&[
                "evaluate",
                "--model",
                m,
                "--style",
                img,
                "--photos",
                img,
                "--image-size",
                "0",
            ]),
            "--image-size",
        ),
        (sv(&["bench", "--sizes", "0"]), "--sizes"),
        (sv(&["bench", "--sizes", "256,0"]), "--sizes"),
        (
            sv(&[
                "optimize",
                "--content",
                img,
                "--style",
                img,
                "-o",
                &out,
                "--lr",
                "NaN",
            ]),
            "--lr",
        ),
        (sv(&["stylize", img, "-m", m, "--tile", "4"]), "--tile"),
        (sv(&["stylize", img, "-m", m, "--scale", "0"]), "--scale"),
        (sv(&["stylize", img, "-m", m, "--scale", "NaN"]), "--scale"),
        (
            sv(&["stylize", img, "-m", m, "--margin", "300"]),
            "--margin",
        ),
        (
            sv(&["stylize", img, "-m", m, "--max-size", "0"]),
            "--max-size",
        ),
        (
            sv(&["sheet", img, "-o", &out, "--columns", "0"]),
            "--columns",
        ),
        (
            sv(&[
                "video",
                img,
                "-o",
                "v.mp4",
                "-m",
                m,
                "--smooth-momentum",
                "5",
            ]),
            "--smooth-momentum",
        ),
        (sv(&["serve", "--max-side", "0"]), "--max-side"),
        (sv(&["serve", "--workers", "0"]), "--workers"),
        (sv(&["serve", "--timeout", "NaN"]), "--timeout"),
    ];
    for (args, flag) in cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = bin().current_dir(d.path()).args(&a).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{a:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(flag), "{a:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{a:?}: {}", stderr(&o));
    }
    assert!(!d.path().join("o.png").exists());
}

/// One validation at import, convert and load. A model file
/// with non-finite weights, a non-finite output scale, a bad epsilon or an absurd block
/// count is refused everywhere, and `convert` never writes one.
#[test]
fn invalid_models_are_refused_by_load_and_never_written() {
    let d = tempfile::tempdir().unwrap();
    let good = Transformer::init(TransformerConfig::new(Arch::Seed), 3);
    let img = d.path().join("p.png");
    std::fs::write(&img, encode(&picture(16, 16), ImageFormat::Png)).unwrap();
    // Write files by hand (the library refuses to save them).
    let write_raw = |name: &str, edit: &dyn Fn(&mut impasto::model::format::TensorFile)| {
        let mut f = good.to_file();
        edit(&mut f);
        let p = d.path().join(name);
        f.write(&p, false).unwrap();
        p
    };
    let set_cfg = |f: &mut impasto::model::format::TensorFile, k: &str, v: &str| {
        let mut c: serde_json::Value = serde_json::from_str(&f.metadata["impasto.config"]).unwrap();
        let parsed: serde_json::Value =
            serde_json::from_str(v).unwrap_or(serde_json::Value::String(v.into()));
        match k {
            "scale" => c["output"]["scale"] = parsed,
            k => c[k] = parsed,
        }
        // serde_json cannot write a non-finite number; splice the literal in.
        let js = c.to_string().replace("\"1e39\"", "1e39");
        f.metadata.insert("impasto.config".into(), js);
    };
    let cases = [
        write_raw("nan.safetensors", &|f| {
            f.tensors.get_mut("conv1.conv2d.weight").unwrap().1[5] = f32::NAN
        }),
        write_raw("inf.safetensors", &|f| {
            f.tensors.get_mut("in6.bias").unwrap().1[0] = f32::INFINITY
        }),
        write_raw("scale.safetensors", &|f| set_cfg(f, "scale", "\"1e39\"")),
        write_raw("eps0.safetensors", &|f| set_cfg(f, "norm_eps", "0")),
        write_raw("epsneg.safetensors", &|f| set_cfg(f, "norm_eps", "-1")),
        write_raw("blocks.safetensors", &|f| set_cfg(f, "res_blocks", "75")),
    ];
    for p in &cases {
        for args in [
            vec![
                "stylize",
                s(&img),
                "-m",
                s(p),
                "-o",
                s(&d.path().join("o.png")),
            ],
            vec!["convert", s(p), "-o", s(&d.path().join("c.safetensors"))],
            vec!["info", s(p)],
            vec!["export", s(p), "-o", s(&d.path().join("e.onnx"))],
        ] {
            let o = run(&args);
            assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
            assert!(stderr(&o).contains(s(p)), "names the file: {}", stderr(&o));
        }
        assert!(!d.path().join("c.safetensors").exists());
        assert!(!d.path().join("o.png").exists());
    }
}

/// No `.part` file survives a signal, and one left by a
/// process killed outright is removed by the next run writing into that folder.
#[test]
fn stale_temporary_files_are_removed_and_signals_leave_none() {
    let d = tempfile::tempdir().unwrap();
    let m = model(d.path());
    let img = d.path().join("p.png");
    std::fs::write(&img, encode(&picture(640, 480), ImageFormat::Png)).unwrap();
    let out = d.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // Left by a process killed outright (a pid that cannot be running).
    let stale = out.join(".impasto-4999999-Ab12Cd.part");
    std::fs::write(&stale, vec![0u8; 1000]).unwrap();
    let o = run(&["stylize", s(&img), "-o", s(&out.join("p.png")), "-m", s(&m)]);
    assert!(o.status.success(), "{}", stderr(&o));
    if cfg!(target_os = "linux") {
        assert!(!stale.exists(), "stale temporary file removed");
    }
    // SIGTERM / SIGINT at various moments of a run: exit 130 (or done), never a `.part`.
    for (i, ms) in [50u64, 300, 600, 900, 1200, 1500].into_iter().enumerate() {
        let sig = if i % 2 == 0 { "-TERM" } else { "-INT" };
        let mut child = bin()
            .args([
                "stylize",
                s(&img),
                "-o",
                s(&out.join(format!("s{i}.png"))),
                "-m",
                s(&m),
            ])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(ms));
        Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .unwrap();
        let st = child.wait().unwrap();
        assert!(
            matches!(st.code(), Some(0) | Some(130)),
            "{sig} after {ms} ms: {st:?}"
        );
        let left: Vec<_> = files_under(&out)
            .into_iter()
            .filter(|p| p.to_string_lossy().contains(".part"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}

/// The README's first command works on a bare clone — the photo
/// it stylizes ships in `assets/`.
#[test]
fn the_readme_first_command_works_without_shared() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let first = readme
        .lines()
        .find(|l| l.starts_with("cargo run --release -- stylize"))
        .expect("README starts with the stylize command");
    let args: Vec<&str> = first
        .trim_start_matches("cargo run --release -- ")
        .split_whitespace()
        .collect();
    let d = tempfile::tempdir().unwrap();
    let out_name = args[args.iter().position(|a| *a == "-o").unwrap() + 1];
    let out_path = d.path().join(out_name);
    let args2: Vec<&str> = args
        .iter()
        .map(|a| if *a == out_name { s(&out_path) } else { *a })
        .collect();
    let o = bin()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(&args2)
        .output()
        .unwrap();
    assert!(o.status.success(), "{first}: {}", stderr(&o));
    let img = image::open(d.path().join(out_name)).unwrap();
    let photo = image::open(Path::new(env!("CARGO_MANIFEST_DIR")).join(args[1])).unwrap();
    assert_eq!((img.width(), img.height()), (photo.width(), photo.height()));
    assert!(
        !args[1].contains("shared"),
        "the input must ship with the project"
    );
}

/// A second `train` on the same output stops at once while the
/// first one runs, saying which process holds it; a lock left by a dead process is taken.
#[test]
fn two_training_runs_on_one_output_cannot_interleave() {
    let d = tempfile::tempdir().unwrap();
    let photos = d.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    let img = photos.join("p.png");
    std::fs::write(&img, encode(&picture(32, 32), ImageFormat::Png)).unwrap();
    let out = d.path().join("t.safetensors");
    let train = |lock: String| {
        std::fs::write(d.path().join("t.lock"), lock).unwrap();
        run(&[
            "train",
            "--style",
            s(&img),
            "--data",
            s(&photos),
            "-o",
            s(&out),
            "--steps",
            "1",
            "--vgg",
            "/nonexistent.safetensors",
        ])
    };
    // A live process holds the lock (this test's own).
    let o = train(format!("{}\n", std::process::id()));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("another training run"),
        "{}",
        stderr(&o)
    );
    // A dead one: taken over (the run then stops on the missing VGG, and releases it).
    let o = train("4999999\n".into());
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        !stderr(&o).contains("another training run"),
        "{}",
        stderr(&o)
    );
    assert!(!d.path().join("t.lock").exists(), "lock released");
}

/// `info` summarises the embedded painting thumbnails instead of printing kilobytes of
/// base64: a built-in style's, and every built-in network's (a thumbnail per style).
#[test]
fn info_does_not_print_the_whole_thumbnail() {
    for model in std::iter::once("great_wave").chain(impasto::styles::blends()) {
        let o = run(&["info", model]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(o.stdout.len() < 8000, "{model}: {} bytes", o.stdout.len());
        assert!(v.to_string().contains("JPEG thumbnail"), "{v}");
    }
}
