//! The GPU backend end to end, through the real binary: `impasto devices`, `--device gpu`
//! against `--device cpu` on real pictures (a style, its live twin, tiles, video frames),
//! and the ways a device can be missing. On a machine without a GPU these run on Mesa's
//! software Vulkan driver (lavapipe); strict runs fail when no adapter exists at all.
use std::path::Path;
use std::process::Output;

mod common;
use common::{bin, stderr};

fn gpu_run(args: &[&str]) -> Output {
    bin()
        .args(args)
        .env("IMPASTO_DEVICE", "gpu")
        .output()
        .unwrap()
}

/// Whether a GPU adapter exists (else a skip, a failure under strict runs).
fn have_adapter(test: &str) -> bool {
    let o = bin().args(["devices", "--json"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let js: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let n = js["adapters"].as_array().map_or(0, Vec::len);
    if n == 0 {
        impasto::testutil::skip(
            test,
            "no Vulkan/Metal/DX12 adapter (install mesa-vulkan-drivers)",
        );
    }
    n > 0
}

/// The largest difference of two pictures of one size, per channel (0..255).
fn max_abs_diff(a: &image::RgbImage, b: &image::RgbImage) -> u8 {
    assert_eq!(a.dimensions(), b.dimensions());
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap()
}

fn max_abs_diff_of_files(a: &Path, b: &Path) -> u8 {
    let open = |p: &Path| image::open(p).unwrap().to_rgb8();
    max_abs_diff(&open(a), &open(b))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn devices_lists_the_adapters_as_a_table_and_json() {
    let o = bin().args(["devices"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("--device auto runs on the"), "{text}");
    if have_adapter("devices_lists_the_adapters_as_a_table_and_json") {
        assert!(text.contains("| adapter | backend | type |"), "{text}");
    }
}

/// The same picture on the GPU and on the CPU: a trained style, its live twin, and the
/// tiled path (forced by a low threshold), each within 2/255.
#[test]
fn stylize_on_the_gpu_matches_the_cpu() {
    if !have_adapter("stylize_on_the_gpu_matches_the_cpu") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let coffee = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/coffee.jpg");
    for (name, extra) in [
        ("style", vec!["--style", "great_wave", "--max-size", "160"]),
        (
            "live",
            vec!["--style", "great_wave", "--live", "--max-size", "160"],
        ),
        (
            "tiled",
            vec![
                "--style",
                "udnie",
                "--max-size",
                "100",
                "--tile",
                "64",
                "--tile-threshold",
                "4096",
            ],
        ),
    ] {
        let (g, c) = (
            dir.path().join(format!("{name}-gpu.png")),
            dir.path().join(format!("{name}-cpu.png")),
        );
        for (device, out) in [("gpu", &g), ("cpu", &c)] {
            let mut args = vec!["stylize", coffee, "-o", s(out), "--device", device];
            args.extend(&extra);
            let o = bin().args(&args).output().unwrap();
            assert!(o.status.success(), "{name} on {device}: {}", stderr(&o));
            if device == "gpu" {
                assert!(stderr(&o).contains("running on gpu"), "{}", stderr(&o));
            }
        }
        let d = max_abs_diff_of_files(&g, &c);
        assert!(d <= 2, "{name}: GPU and CPU differ by {d}/255");
    }
}

/// A video's frames: the smoothed-statistics frame path on the GPU gives the CPU's frames
/// within 2/255, and `impasto video --device gpu` runs end to end.
#[test]
fn video_frames_on_the_gpu_match_the_cpu() {
    use impasto::stylize::{stylize_frame, SmoothStats, StylizeOptions};
    if !have_adapter("video_frames_on_the_gpu_match_the_cpu") {
        return;
    }
    let Some(gpu) = impasto::testutil::gpu() else {
        return;
    };
    let cpu_model = impasto::styles::resolve("the_scream").unwrap();
    let gpu_model = cpu_model.to_backend(gpu);
    let photo = image::open(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/coffee.jpg")).unwrap();
    let opts = StylizeOptions::default();
    let (mut sc, mut sg) = (SmoothStats::new(0.9), SmoothStats::new(0.9));
    for shift in [0u32, 4, 8] {
        // A panning shot: each frame a crop moved a few pixels.
        let frame = photo.crop_imm(shift * 4, shift, 96, 64).to_rgb8();
        let c = stylize_frame(&cpu_model, &frame, &opts, &mut sc).unwrap();
        let g = stylize_frame(&gpu_model, &frame, &opts, &mut sg).unwrap();
        let d = max_abs_diff(&c, &g);
        assert!(d <= 2, "frame {shift}: GPU and CPU differ by {d}/255");
    }
    if std::process::Command::new("ffmpeg")
        .arg("-version")
        .output()
        .is_err()
    {
        impasto::testutil::skip(
            "video_frames_on_the_gpu_match_the_cpu",
            "ffmpeg is not installed",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("in.mp4");
    let o = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=96x64:rate=4:duration=0.5",
            "-pix_fmt",
            "yuv420p",
        ])
        .arg(&clip)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = dir.path().join("out.mp4");
    let o = gpu_run(&[
        "video",
        s(&clip),
        "--style",
        "the_scream",
        "--smooth",
        "-o",
        s(&out),
    ]);
    assert!(o.status.success(), "video on the GPU: {}", stderr(&o));
    assert!(stderr(&o).contains("running on gpu"), "{}", stderr(&o));
    assert_eq!(impasto::video::read_frames(&out).unwrap().len(), 2);
}

/// No adapter (a backend that does not exist here): `gpu` is an error with exit 2 and a
/// sentence, for a command that trains as well; `auto` runs on the CPU and says so.
#[test]
fn a_missing_gpu_is_a_clear_error_and_auto_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let coffee = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/coffee.jpg");
    let out = dir.path().join("o.png");
    let absent = if cfg!(target_os = "macos") {
        "dx12"
    } else {
        "metal"
    };
    // A small stylize with `device` (or IMPASTO_DEVICE's `auto`) where no adapter exists.
    let small = |device: &[&str]| {
        bin()
            .args([
                "stylize",
                coffee,
                "--style",
                "udnie",
                "--max-size",
                "64",
                "-o",
                s(&out),
            ])
            .args(device)
            .env("IMPASTO_DEVICE", "auto")
            .env("WGPU_BACKEND", absent)
            .output()
            .unwrap()
    };
    let o = small(&["--device", "gpu"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("no GPU adapter was found") && e.contains("--device cpu"),
        "{e}"
    );
    assert!(!out.exists(), "no output after a device error");
    let o = small(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("running on cpu"), "{}", stderr(&o));
    let o = bin()
        .args([
            "train",
            "--style",
            coffee,
            "--data",
            "x",
            "-o",
            s(&dir.path().join("m.safetensors")),
            "--device",
            "gpu",
        ])
        .env("WGPU_BACKEND", absent)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no GPU adapter was found"),
        "{}",
        stderr(&o)
    );
    let o = bin().args(["devices", "--device", "tpu"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown device `tpu`"),
        "{}",
        stderr(&o)
    );
}

/// `impasto serve --device gpu`: `/healthz` names the adapter and a stylize request is
/// answered by the GPU with the CPU server's pixels within 2/255.
#[test]
fn the_server_runs_on_the_gpu() {
    if !have_adapter("the_server_runs_on_the_gpu") {
        return;
    }
    let photo = image::open(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/coffee.jpg"))
        .unwrap()
        .thumbnail(96, 96);
    let mut png = Vec::new();
    photo
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let mut outs = Vec::new();
    for device in ["gpu", "cpu"] {
        let s = common::server::Server::start(&["--device", device, "--workers", "1"]);
        let h = s.health();
        assert!(
            h["device"].as_str().unwrap().starts_with(device),
            "{device}: {h}"
        );
        let r = s.post("/v1/stylize?style=great_wave&format=png", "image/png", &png);
        assert_eq!(
            r.status,
            200,
            "{device}: {}",
            String::from_utf8_lossy(&r.body)
        );
        outs.push(image::load_from_memory(&r.body).unwrap().to_rgb8());
    }
    let d = max_abs_diff(&outs[0], &outs[1]);
    assert!(d <= 2, "the GPU server differs by {d}/255");
}

/// A size beyond what one of the adapter's buffers holds is refused before any work, with
/// the size and the limit named (exit 2, no panic); pictures that large are tiled instead.
#[test]
fn beyond_the_adapters_limits_is_a_clear_error() {
    if !have_adapter("beyond_the_adapters_limits_is_a_clear_error") {
        return;
    }
    let o = bin().args(["devices", "--json"]).output().unwrap();
    let js: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let a = &js["adapters"][0];
    let limit = a["max_binding_bytes"]
        .as_u64()
        .unwrap()
        .min(a["max_buffer_bytes"].as_u64().unwrap());
    // The network's widest activation is 32 channels of f32 at full size.
    let side = ((limit / 128) as f64).sqrt() as u64 + 64;
    let o = gpu_run(&["bench", "--sizes", &side.to_string(), "--runs", "1"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("MiB tensor, more than the") && e.contains(&format!("{}", limit >> 20)),
        "{e}"
    );
}
