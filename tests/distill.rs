//! End-to-end distillation: `impasto distill` from a built-in teacher on real photos (the
//! shipped one, cropped and flipped into a small set, so it runs without ../shared), exact
//! resume after SIGKILL, provenance, previews, and the live twins from the CLI.
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_impasto"));
    c.env("IMPASTO_DEVICE", "cpu");
    c.env_remove("IMPASTO_VGG").env_remove("IMPASTO_THREADS");
    c
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn asset(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets")
        .join(name)
}

/// Eight photos made from the shipped one (crops, flips), and a corrupt file.
fn photos(dir: &Path) -> PathBuf {
    let d = dir.join("photos");
    std::fs::create_dir_all(&d).unwrap();
    let img = image::open(asset("coffee.jpg")).unwrap();
    let (w, h) = (img.width(), img.height());
    for i in 0..8u32 {
        let c = img.crop_imm(i * w / 16, (i % 3) * h / 8, w / 2, h / 2);
        let c = if i % 2 == 1 { c.fliph() } else { c };
        c.save(d.join(format!("p{i}.jpg"))).unwrap();
    }
    std::fs::write(d.join("broken.jpg"), b"\xff\xd8 truncated").unwrap();
    d
}

fn distill_cmd(data: &Path, out: &Path, steps: u64, extra: &[&str]) -> Command {
    distill_from("great_wave", data, out, steps, extra)
}

fn distill_from(teacher: &str, data: &Path, out: &Path, steps: u64, extra: &[&str]) -> Command {
    let mut c = bin();
    c.args(["distill", "--teacher", teacher, "--data"])
        .arg(data)
        .arg("--val")
        .arg(data)
        .arg("-o")
        .arg(out)
        .args([
            "--image-size",
            "32",
            "--batch-size",
            "2",
            "--checkpoint-every",
            "2",
            "--perceptual-weight",
            "0",
            "--loss-weight",
            "0",
            "--steps",
        ])
        .arg(steps.to_string())
        .args(extra);
    c
}

fn weights(p: &Path) -> Vec<(String, Vec<f32>)> {
    let m = impasto::model::Transformer::load(p).unwrap();
    m.params()
        .map(|(p, v)| (p.name.clone(), v.to_vec()))
        .collect()
}

#[test]
fn distill_trains_resumes_exactly_and_records_its_teacher() {
    let dir = tempfile::tempdir().unwrap();
    let data = photos(dir.path());
    let steps = 8;
    let a = dir.path().join("a.safetensors");
    let o = distill_cmd(&data, &a, steps, &[]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("skipped"), "{}", stderr(&o));
    let want = weights(&a);

    // Killed after its first checkpoint, then resumed: the same weights bit for bit.
    let b = dir.path().join("b.safetensors");
    let ckpt = dir.path().join("b.ckpt.safetensors");
    let mut child = distill_cmd(&data, &b, steps, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !ckpt.exists() && t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!b.exists(), "a killed run wrote its final model");
    let o = distill_cmd(&data, &b, steps, &["--resume"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resuming from step"), "{}", stderr(&o));
    assert_eq!(weights(&b), want, "the resumed run differs");

    // A checkpoint of another student network is refused.
    let o = distill_cmd(&data, &b, steps + 2, &["--resume", "--res-blocks", "3"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("another network"), "{}", stderr(&o));
    // So is another teacher's, naming what differs.
    let o = distill_from("udnie", &data, &b, steps + 2, &["--resume"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("another teacher"), "{}", stderr(&o));
    // The terms' weights may change on resume (a longer run with more stability, or lower
    // weights after a divergence), and the model records the ones it finished with.
    let o = distill_cmd(
        &data,
        &b,
        steps + 2,
        &["--resume", "--stability-weight", "2"],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resuming from step"), "{}", stderr(&o));
    let m = impasto::model::Transformer::load(&b).unwrap();
    let prov: serde_json::Value = serde_json::from_str(&m.metadata["impasto.provenance"]).unwrap();
    assert_eq!(prov["train"]["distill"]["stability_weight"], 2.0);
    assert_eq!(prov["steps_done"], steps + 2);
    // Fewer steps than the checkpoint has done: refused (it once wrote `steps 1,
    // steps_done 2`), naming the step to reach.
    let o = distill_cmd(&data, &b, 1, &["--resume"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("past this run's 1 steps"),
        "{}",
        stderr(&o)
    );

    // Provenance: made by distill, from great_wave, the live network, the teacher's look.
    let m = impasto::model::Transformer::load(&a).unwrap();
    assert_eq!(m.config.channels, [8, 16, 32]);
    assert_eq!(m.config.res_blocks, 2);
    let prov: serde_json::Value = serde_json::from_str(&m.metadata["impasto.provenance"]).unwrap();
    assert!(prov["made_by"].as_str().unwrap().ends_with(" distill"));
    assert_eq!(prov["train"]["distill"]["teacher"], "great_wave");
    assert_eq!(
        prov["train"]["distill"]["teacher_sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    assert_eq!(prov["steps_done"], steps);
    assert!(m.metadata.contains_key("impasto.style_thumbnail"));
    // The teacher's recorded loss weights (so evaluate scores both alike).
    let teacher = impasto::styles::builtin("great_wave").unwrap().unwrap();
    assert_eq!(m.metadata["impasto.loss"], teacher.metadata["impasto.loss"]);

    // The preview has three rows (photo, teacher, student) of 32-pixel crops.
    let p = image::open(dir.path().join("a.preview.png")).unwrap();
    assert_eq!(p.height(), 3 * 32);
    // Every step logged once, with the distillation terms, and the loss went down.
    let log = std::fs::read_to_string(dir.path().join("a.metrics.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v.get("pixel").is_some() && v.get("val").is_none())
        .collect();
    assert_eq!(rows.len() as u64, steps);
    let vals: Vec<f64> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| v["val"]["pixel"].as_f64())
        .collect();
    assert!(
        vals.len() >= 2 && vals.last() < vals.first(),
        "validation pixel loss {vals:?}"
    );
    assert!(rows.iter().all(|r| r["stability"].as_f64().unwrap() > 0.0));
}

#[test]
fn the_teachers_loss_joins_in_the_last_part_of_a_run() {
    let test = "the_teachers_loss_joins_in_the_last_part_of_a_run";
    let (Some(vgg), Some(painting)) = (
        impasto::testutil::shared("weights/vgg16_caffe_relu4_3.safetensors", test),
        impasto::testutil::shared("data/styles/great_wave.jpg", test),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = photos(dir.path());
    // The same run twice, the second with the style weight of the teacher's loss tripled.
    let run = |name: &str, scale: &str| {
        let out = dir.path().join(format!("{name}.safetensors"));
        let o = bin()
            .args(["distill", "--teacher", "great_wave", "--data"])
            .arg(&data)
            .arg("-o")
            .arg(&out)
            .arg("--vgg")
            .arg(&vgg)
            .arg("--style")
            .arg(&painting)
            .args([
                "--image-size",
                "32",
                "--batch-size",
                "2",
                "--steps",
                "4",
                "--loss-from",
                "0.5",
                "--style-scale",
                scale,
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let log =
            std::fs::read_to_string(dir.path().join(format!("{name}.metrics.jsonl"))).unwrap();
        let style: Vec<f64> = log
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|v| v["style"].as_f64().unwrap())
            .collect();
        let m = impasto::model::Transformer::load(&out).unwrap();
        let prov: serde_json::Value =
            serde_json::from_str(&m.metadata["impasto.provenance"]).unwrap();
        (style, prov["train"]["distill"].clone())
    };
    let (style, d) = run("l", "1");
    assert_eq!(style.len(), 4);
    assert!(style[..2].iter().all(|&s| s == 0.0), "{style:?}");
    assert!(style[2..].iter().all(|&s| s > 0.0), "{style:?}");
    assert_eq!(d["loss_from"], 0.5);
    assert_eq!(d["style_scale"], 1.0);
    assert_eq!(d["painting_sha256"].as_str().unwrap().len(), 64);
    assert!(d["perceptual_weight"].as_f64().unwrap() > 0.0);
    // Up to the first step with the teacher's loss both runs are the same, so that step's
    // weighted style term is exactly three times as large.
    let (style3, d3) = run("l3", "3");
    assert_eq!(d3["style_scale"], 3.0);
    let ratio = style3[2] / style[2];
    assert!((ratio - 3.0).abs() < 1e-3, "{style:?} {style3:?}");

    // Without `--style`: the teacher's own painting, as the built-in records it. For a
    // style that is a row of a network of several, that row's painting, not the one the
    // network's run names first (udnie is the last of the built-ins).
    let udnie = impasto::styles::builtin("udnie").unwrap().unwrap();
    let own = udnie.styles()[0].painting.clone().unwrap();
    if !Path::new(env!("CARGO_MANIFEST_DIR")).join(&own).is_file() {
        return impasto::testutil::skip(test, &format!("udnie's recorded painting {own}"));
    }
    let out = dir.path().join("u.safetensors");
    let o = bin()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["distill", "--teacher", "udnie", "--data"])
        .arg(&data)
        .arg("-o")
        .arg(&out)
        .arg("--vgg")
        .arg(&vgg)
        .args(["--image-size", "32", "--batch-size", "2", "--steps", "2"])
        .args(["--loss-from", "0.5"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let m = impasto::model::Transformer::load(&out).unwrap();
    let prov: serde_json::Value = serde_json::from_str(&m.metadata["impasto.provenance"]).unwrap();
    let d = &prov["train"]["distill"];
    assert_eq!(d["painting"], own.as_str(), "{}", stderr(&o));
    assert_eq!(
        d["painting_sha256"].as_str(),
        udnie
            .metadata
            .get("impasto.style_sha256")
            .map(String::as_str)
    );
    assert_eq!(m.metadata["impasto.loss"], udnie.metadata["impasto.loss"]);
}

#[test]
fn live_twins_are_listed_and_used_by_stylize_live() {
    let o = bin().arg("styles").output().unwrap();
    let list = String::from_utf8_lossy(&o.stdout).to_string();
    let names = impasto::styles::names();
    let twins: Vec<&str> = names
        .iter()
        .copied()
        .filter_map(impasto::styles::live_twin)
        .collect();
    if twins.is_empty() {
        impasto::testutil::skip(
            "live_twins_are_listed_and_used_by_stylize_live",
            "this build embeds no live twins (styles/builtins_live.safetensors)",
        );
        return;
    }
    for t in &twins {
        assert!(
            list.contains(t) && list.contains("distilled from"),
            "{list}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("live.jpg");
    let o = bin()
        .args(["stylize"])
        .arg(asset("coffee.jpg"))
        .args(["--style", "great_wave", "--live", "--max-size", "160", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let full = dir.path().join("full.jpg");
    let o = bin()
        .args(["stylize"])
        .arg(asset("coffee.jpg"))
        .args(["--style", "great_wave", "--max-size", "160", "-o"])
        .arg(&full)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // The live twin looks like its teacher: close to it, far from the photo.
    let (l, f) = (
        image::open(&out).unwrap().to_rgb8(),
        image::open(&full).unwrap().to_rgb8(),
    );
    let photo = image::open(asset("coffee.jpg"))
        .unwrap()
        .resize_exact(l.width(), l.height(), image::imageops::FilterType::Triangle)
        .to_rgb8();
    let mad = |a: &image::RgbImage, b: &image::RgbImage| {
        a.as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(&x, &y)| (x as f64 - y as f64).abs())
            .sum::<f64>()
            / a.as_raw().len() as f64
    };
    let (to_teacher, to_photo) = (mad(&l, &f), mad(&l, &photo));
    assert!(
        to_teacher < 0.6 * to_photo,
        "live vs teacher {to_teacher:.1}, live vs photo {to_photo:.1}"
    );
    // --live on a style without a twin is a usage error naming what to do.
    let o = bin()
        .args(["stylize"])
        .arg(asset("coffee.jpg"))
        .args(["--style", "no_such.safetensors", "--live", "-o"])
        .arg(dir.path().join("x.jpg"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("impasto distill"), "{}", stderr(&o));
    assert!(!dir.path().join("x.jpg").exists());
}
