//! End-to-end checks of the guards every command shares: no output replaces an input (one
//! guard, whatever the command), only regular files of a bounded size are read, folder
//! walks stay inside the folder, and training outputs stay out of the photo folders.
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{bin, model, stderr};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `impasto ARGS` that must finish within `secs` (a hang is a failure, not a stuck suite).
fn run_within(args: &[&str], secs: u64) -> Output {
    let mut child = bin()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(secs) {
            child.kill().unwrap();
            panic!("impasto {args:?} did not finish in {secs} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn png(p: &Path, w: u32, h: u32) {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 9 % 256) as u8,
            (y * 5 % 256) as u8,
            ((x ^ y) % 256) as u8,
        ])
    });
    img.save(p).unwrap();
}

fn mkfifo(p: &Path) -> bool {
    Command::new("mkfifo")
        .arg(p)
        .status()
        .is_ok_and(|s| s.success())
}

/// A 320×240 H.264 clip shown at 240×320 (a display matrix of 90°, as phones write).
fn rotated_clip(dir: &Path) -> std::path::PathBuf {
    let plain = dir.join("plain.mp4");
    let rotated = dir.join("rotated.mp4");
    for args in [
        vec![
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=5",
            "-t",
            "1",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            s(&plain),
        ],
        vec![
            "-i",
            s(&plain),
            "-c",
            "copy",
            "-metadata:s:v:0",
            "rotate=90",
            s(&rotated),
        ],
    ] {
        let o = Command::new("ffmpeg")
            .args(["-v", "error", "-y"])
            .args(&args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    rotated
}

fn video_size(p: &Path) -> (u32, u32) {
    let o = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .args(["stream=width,height", "-of", "csv=p=0"])
        .arg(p)
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&o.stdout);
    let (w, h) = t.trim().split_once(',').unwrap();
    (w.parse().unwrap(), h.parse().unwrap())
}

/// `video IN -o IN` (also through `..` and a link) is refused with exit 2 and the input
/// kept; `-o -` is refused without writing a file named `-`; a rotated phone clip comes out
/// at its display size; the result has the usual permissions.
#[test]
fn video_outputs_never_replace_the_input_and_keep_the_display_size() {
    if !have("ffmpeg") {
        impasto::testutil::skip(
            "video_outputs_never_replace_the_input_and_keep_the_display_size",
            "ffmpeg not found on PATH",
        );
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let clip = rotated_clip(d.path());
    let before = std::fs::read(&clip).unwrap();
    std::fs::create_dir(d.path().join("sub")).unwrap();
    std::os::unix::fs::symlink(&clip, d.path().join("link.mp4")).unwrap();
    let m = model(d.path());
    for out in [
        clip.clone(),
        d.path().join("sub/../rotated.mp4"),
        d.path().join("link.mp4"),
    ] {
        let o = run_within(&["video", s(&clip), "-o", s(&out), "-m", s(&m)], 120);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("overwrite the input"), "{}", stderr(&o));
    }
    assert_eq!(
        std::fs::read(&clip).unwrap(),
        before,
        "the input is unchanged"
    );
    let o = bin()
        .current_dir(d.path())
        .args(["video", "rotated.mp4", "-o", "-", "-m", s(&m)])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(!d.path().join("-").exists(), "no file named -");

    let out = d.path().join("styled.mp4");
    let o = run_within(
        &[
            "video",
            s(&clip),
            "-o",
            s(&out),
            "-m",
            s(&m),
            "--max-size",
            "160",
        ],
        300,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(video_size(&out), (120, 160), "turned and not squashed");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "{mode:o}");
}

/// Every other writer takes the same guard: sheet, optimize, export, convert, import.
#[test]
fn every_writer_refuses_to_replace_what_it_reads() {
    let d = tempfile::tempdir().unwrap();
    let m = model(d.path());
    let photo = d.path().join("photo.png");
    png(&photo, 24, 16);
    let keep = |p: &Path| std::fs::read(p).unwrap();
    let (m0, p0) = (keep(&m), keep(&photo));
    let cases: Vec<Vec<&str>> = vec![
        vec!["sheet", s(&photo), "-o", s(&photo), "--style", s(&m)],
        vec!["convert", s(&m), "-o", s(&m), "--half"],
        vec!["export", s(&m), "-o", s(&m)],
        vec!["import", s(&m), "-o", s(&m)],
        vec![
            "optimize",
            "--content",
            s(&photo),
            "--style",
            s(&photo),
            "-o",
            s(&photo),
            "--vgg",
            s(&m),
        ],
    ];
    for args in cases {
        let o = run_within(&args, 60);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("overwrite the input"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    assert_eq!((keep(&m), keep(&photo)), (m0, p0));
}

/// Only regular files are read: a named pipe among the photos is skipped with a warning
/// (it would block the open forever), a device or pipe named as a model is refused at
/// once, and a model file over the size bound is refused before it is read.
#[test]
fn special_files_are_refused_instead_of_hanging() {
    let d = tempfile::tempdir().unwrap();
    let m = model(d.path());
    let inp = d.path().join("in");
    std::fs::create_dir(&inp).unwrap();
    png(&inp.join("a.png"), 20, 12);
    let pipe = inp.join("x.png");
    if !mkfifo(&pipe) {
        impasto::testutil::skip(
            "special_files_are_refused_instead_of_hanging",
            "mkfifo is not available",
        );
        return;
    }
    let out = d.path().join("out");
    let o = run_within(&["stylize", s(&inp), "-o", s(&out), "-m", s(&m)], 60);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("not a regular file"), "{}", stderr(&o));
    assert!(out.join("a.png").exists() && !out.join("x.png").exists());
    // The pipe named directly: an error naming it, exit 2.
    let o = run_within(
        &[
            "stylize",
            s(&pipe),
            "-o",
            s(&out.join("p.png")),
            "-m",
            s(&m),
        ],
        60,
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("named pipe"), "{}", stderr(&o));
    // Models: a device, a pipe.
    let fifo_model = d.path().join("m.safetensors");
    assert!(mkfifo(&fifo_model));
    for model in ["/dev/zero", s(&fifo_model)] {
        let o = run_within(
            &[
                "stylize",
                s(&inp.join("a.png")),
                "-o",
                s(&out.join("z.png")),
                "-s",
                model,
            ],
            60,
        );
        assert_eq!(o.status.code(), Some(2), "{model}: {}", stderr(&o));
        assert!(stderr(&o).contains("not a file"), "{model}: {}", stderr(&o));
    }
}

/// Folder walks follow links only inside the folder: `in/up -> ..` does not stylize the
/// parent's pictures (it is reported); `--follow` asks for it.
#[test]
fn walks_do_not_follow_links_out_of_the_input_folder() {
    let d = tempfile::tempdir().unwrap();
    let m = model(d.path());
    let inp = d.path().join("in");
    std::fs::create_dir(&inp).unwrap();
    png(&d.path().join("parent.png"), 16, 16);
    png(&inp.join("a.png"), 16, 16);
    std::os::unix::fs::symlink("..", inp.join("up")).unwrap();
    let out = d.path().join("out");
    let o = run_within(&["stylize", s(&inp), "-o", s(&out), "-m", s(&m)], 60);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("outside the folder"), "{}", stderr(&o));
    let mut written: Vec<_> = walk(&out);
    written.sort();
    assert_eq!(written, ["a.png"]);
    let out2 = d.path().join("out2");
    let o = run_within(
        &["stylize", s(&inp), "-o", s(&out2), "-m", s(&m), "--follow"],
        60,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(walk(&out2).contains(&"up/parent.png".to_string()));
}

fn walk(dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            let name = e.file_name().to_string_lossy().to_string();
            v.extend(walk(&p).into_iter().map(|r| format!("{name}/{r}")));
        } else {
            v.push(e.file_name().to_string_lossy().to_string());
        }
    }
    v
}

/// A training run whose output is inside its photo folder is refused before anything is
/// written (its previews would become training photos and break `--resume`).
#[test]
fn training_outputs_inside_the_photo_folder_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let photos = d.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    png(&photos.join("a.png"), 40, 40);
    let style = d.path().join("style.png");
    png(&style, 40, 40);
    for (cmd, out) in [
        ("train", photos.join("w.safetensors")),
        ("distill", photos.join("runs/new/w.safetensors")),
    ] {
        let mut args = vec![cmd, "--data", s(&photos), "-o", s(&out)];
        if cmd == "train" {
            args.extend(["--style", s(&style)]);
        } else {
            args.extend(["--teacher", "great_wave"]);
        }
        let o = run_within(&args, 60);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("inside the photo folder"),
            "{cmd}: {}",
            stderr(&o)
        );
        assert_eq!(walk(&photos), ["a.png"], "nothing written");
    }
}

/// `convert` keeps the input's precision unless asked: an int8 model with a new margin is
/// still int8 (it was silently rewritten as f32, 131 KB → 237 KB).
#[test]
fn convert_keeps_the_precision_unless_asked() {
    let d = tempfile::tempdir().unwrap();
    let m = model(d.path());
    let q = d.path().join("q.safetensors");
    let o = run_within(&["convert", s(&m), "-o", s(&q), "--int8"], 60);
    assert!(o.status.success(), "{}", stderr(&o));
    let q2 = d.path().join("q2.safetensors");
    let o = run_within(&["convert", s(&q), "-o", s(&q2), "--margin", "16"], 60);
    assert!(o.status.success(), "{}", stderr(&o));
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert!(size(&q2) <= size(&q) + 64, "{} vs {}", size(&q2), size(&q));
    let f = d.path().join("f.safetensors");
    let o = run_within(&["convert", s(&q), "-o", s(&f), "--f32"], 60);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(size(&f) > 3 * size(&q), "--f32 asked for");
}

/// Numbers that would hang or panic are refused with exit 2 (`--threads 3000`, durations
/// of 1e20 s); an empty IMPASTO_THREADS is the default; a stdout that cannot be written
/// (`/dev/full`) is exit 2, not 1.
#[test]
fn bounded_flags_and_a_full_stdout() {
    let d = tempfile::tempdir().unwrap();
    let m = model(d.path());
    let photo = d.path().join("p.png");
    png(&photo, 8, 8);
    let out = d.path().join("o.png");
    for args in [
        vec![
            "--threads",
            "3000",
            "stylize",
            s(&photo),
            "-m",
            s(&m),
            "-o",
            s(&out),
        ],
        vec![
            "--threads",
            "0",
            "stylize",
            s(&photo),
            "-m",
            s(&m),
            "-o",
            s(&out),
        ],
        vec!["serve", "--timeout", "1e20"],
        vec!["serve", "--read-timeout", "1e20"],
        vec!["serve", "--shutdown-grace", "1e20"],
        vec!["serve", "--live-frame-budget", "0"],
    ] {
        let o = run_within(&args, 30);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{args:?}: {}", stderr(&o));
    }
    let o = bin()
        .env("IMPASTO_THREADS", "")
        .args(["stylize", s(&photo), "-m", s(&m), "-o", s(&out)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    if Path::new("/dev/full").exists() {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let o = bin()
            .args(["stylize", s(&photo), "-m", s(&m), "-o", s(&out), "--json"])
            .stdout(full)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("stdout"), "{}", stderr(&o));
    }
}
