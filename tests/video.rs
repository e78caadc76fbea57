//! `impasto video` end to end with the system ffmpeg (.ci/run installs it; without it these
//! tests are skipped, or fail under IMPASTO_STRICT_TESTS=1).
use impasto::model::{Arch, Transformer, TransformerConfig};
use std::path::Path;
use std::process::Command;

fn have_ffmpeg(test: &str) -> bool {
    let ok = Command::new("ffmpeg")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        impasto::testutil::skip(test, "ffmpeg not found on PATH");
    }
    ok
}

/// A random network scaled so that its output spans 0..255 and reacts to its input (a
/// fresh one is nearly flat).
fn model(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("m.safetensors");
    let t = Transformer::init(TransformerConfig::new(Arch::Johnson), 3);
    let mut t = t;
    t.edit_param("deconv3.conv2d.weight", |w| {
        w.iter_mut().for_each(|w| *w *= 60.0)
    });
    t.edit_param("deconv3.conv2d.bias", |b| b.fill(128.0));
    t.save(&p, false).unwrap();
    p
}

fn ffmpeg(args: &[&str]) {
    let o = Command::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn stylizes_a_clip_keeping_frames_size_and_audio_and_smooth_reduces_flicker() {
    if !have_ffmpeg("stylizes_a_clip_keeping_frames_size_and_audio_and_smooth_reduces_flicker") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let m = model(d.path());
    let clip = d.path().join("clip.mp4");
    // A still picture with per-frame noise (odd size on purpose) and a tone.
    let noisy = format!("{}", d.path().join("still.png").display());
    image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(94, 70, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 3) as u8, 128])
    }))
    .save(&noisy)
    .unwrap();
    ffmpeg(&[
        "-loop",
        "1",
        "-i",
        &noisy,
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:duration=1",
        "-vf",
        "noise=alls=8:allf=t,format=yuv420p",
        "-t",
        "1",
        "-r",
        "10",
        "-c:v",
        "libx264",
        "-c:a",
        "aac",
        "-shortest",
        clip.to_str().unwrap(),
    ]);
    let (plain, smooth) = (d.path().join("plain.mp4"), d.path().join("smooth.mp4"));
    for (out, extra) in [(&plain, None), (&smooth, Some("--smooth"))] {
        let mut c = Command::new(env!("CARGO_BIN_EXE_impasto"));
        c.env("IMPASTO_DEVICE", "cpu");
        c.args([
            "video",
            clip.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "-m",
            m.to_str().unwrap(),
        ]);
        if let Some(e) = extra {
            c.arg(e);
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let src = impasto::video::read_frames(&clip).unwrap();
    let a = impasto::video::read_frames(&plain).unwrap();
    let b = impasto::video::read_frames(&smooth).unwrap();
    assert_eq!(a.len(), src.len());
    assert_eq!(a[0].dimensions(), src[0].dimensions());
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type",
            "-of",
            "csv=p=0",
        ])
        .arg(&plain)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&probe.stdout).contains("audio"),
        "audio was not copied"
    );
    let (fa, fb) = (
        impasto::video::mean_frame_change(&a),
        impasto::video::mean_frame_change(&b),
    );
    assert!(
        fa > 1.0 && fb < 0.6 * fa,
        "--smooth: frame change {fb} vs {fa} without"
    );

    // --live: a built-in style's live twin, for quick previews of long clips.
    if let Some(style) = impasto::styles::names()
        .into_iter()
        .find(|n| impasto::styles::live_twin(n).is_some())
    {
        let live = d.path().join("live.mp4");
        let o = Command::new(env!("CARGO_BIN_EXE_impasto"))
            .env("IMPASTO_DEVICE", "cpu")
            .args([
                "video",
                clip.to_str().unwrap(),
                "-o",
                live.to_str().unwrap(),
            ])
            .args(["-s", style, "--live"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let l = impasto::video::read_frames(&live).unwrap();
        assert_eq!(
            (l.len(), l[0].dimensions()),
            (src.len(), src[0].dimensions())
        );
    } else {
        impasto::testutil::skip("video --live", "this build embeds no live twins");
    }
}

#[test]
fn bad_videos_and_a_missing_ffmpeg_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let m = model(d.path());
    let bad = d.path().join("bad.mp4");
    std::fs::write(&bad, b"this is not a video").unwrap();
    let out = d.path().join("out.mp4");
    // No ffmpeg on PATH.
    let o = Command::new(env!("CARGO_BIN_EXE_impasto"))
        .env("IMPASTO_DEVICE", "cpu")
        .env("PATH", d.path())
        .args([
            "video",
            bad.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "-m",
            m.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("ffmpeg"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    if !have_ffmpeg("bad_videos_and_a_missing_ffmpeg_are_clear_errors") {
        return;
    }
    let o = Command::new(env!("CARGO_BIN_EXE_impasto"))
        .env("IMPASTO_DEVICE", "cpu")
        .args([
            "video",
            bad.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "-m",
            m.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("bad.mp4") && e.contains("not a readable video"),
        "{e}"
    );
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".impasto-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}
