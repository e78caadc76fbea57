//! `impasto bench`: median forward-pass time at several sizes.
use anyhow::Result;
use impasto::model::Arch;
use impasto::tensor::Tensor;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model file (default: a freshly initialised network of --arch).
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "johnson")]
    arch: Arch,
    /// Square sizes to time.
    #[arg(long, value_delimiter = ',', default_value = "256,512,1024", value_parser = super::args::at_least_usize(1))]
    sizes: Vec<usize>,
    /// Timed runs per size (the median is reported).
    #[arg(long, default_value_t = 5, value_parser = super::args::at_least_usize(1))]
    runs: usize,
    /// Untimed warm-up runs per size.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// One JSON object per size on stdout.
    #[arg(long)]
    json: bool,
    /// Time a training step instead (VGG16 loss, backward, Adam) at --batch × SIZE².
    #[arg(long)]
    train: bool,
    /// Batch size for --train.
    #[arg(long, default_value_t = 4, value_parser = super::args::at_least_usize(1))]
    batch: usize,
    /// VGG16 weights for --train.
    #[arg(long)]
    vgg: Option<PathBuf>,
    /// With --train: the exact kernels in the network's forward pass (`train --exact`).
    #[arg(long, requires = "train")]
    exact: bool,
    /// Time the server's live pipeline instead (JPEG decode, stylize with blended
    /// statistics, JPEG encode, as one WebSocket frame) on the shipped photo scaled to each
    /// WxH, e.g. `--frames 320x240,640x480`; `--model` may be a built-in style name.
    #[arg(long, value_delimiter = ',', value_parser = parse_frame)]
    frames: Vec<(u32, u32)>,
    /// A model of several styles: time this blend (`a=0.5,b=0.5`), and building its
    /// network (once per mix).
    #[arg(long, value_name = "NAME|NAME=W,…", value_parser = impasto::model::Mix::parse)]
    mix: Option<impasto::model::Mix>,
}

fn parse_frame(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once('x')
        .ok_or_else(|| format!("{s:?}: expected WIDTHxHEIGHT, e.g. 320x240"))?;
    let p = |v: &str| {
        v.parse::<u32>()
            .ok()
            .filter(|&n| (16..=8192).contains(&n))
            .ok_or_else(|| format!("{s:?}: sides must be whole numbers from 16 to 8192"))
    };
    Ok((p(w)?, p(h)?))
}

/// The shipped photo (assets/coffee.jpg, embedded) scaled to `w × h`, as a JPEG of quality
/// 80: what the page sends for a frame.
fn frame_jpeg(w: u32, h: u32) -> Result<Vec<u8>> {
    static PHOTO: &[u8] = include_bytes!("../../assets/coffee.jpg");
    let img =
        image::load_from_memory(PHOTO)?.resize_to_fill(w, h, image::imageops::FilterType::Triangle);
    Ok(impasto::imageio::encode_jpeg(&img.to_rgb8(), 80)?)
}

/// Frames per second of the live pipeline (see `--frames`).
fn frames(a: &Args) -> Result<i32> {
    let model = match &a.model {
        Some(p) => impasto::styles::resolve(&p.to_string_lossy())?,
        None => {
            impasto::model::Transformer::init(impasto::model::TransformerConfig::new(a.arch), 1)
        }
    };
    let device = super::device()?;
    let model = model.to_backend(device.clone());
    let threads = rayon::current_num_threads();
    if !a.json {
        outln!("device: {}", device.describe());
    }
    if !a.json {
        outln!("| frame | median ms | min ms | fps (median) | threads |");
        outln!("|---|---|---|---|---|");
    }
    for &(w, h) in &a.frames {
        let jpg = frame_jpeg(w, h)?;
        let mut stats = None;
        let mut one = || {
            impasto::serve::live_frame(&jpg, &model, w.max(h), &mut stats)
                .map_err(anyhow::Error::msg)
        };
        for _ in 0..a.warmup.max(1) {
            one()?;
        }
        let mut ms = Vec::new();
        for _ in 0..a.runs.max(1) {
            let t = Instant::now();
            std::hint::black_box(one()?);
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        ms.sort_by(f64::total_cmp);
        let med = ms[ms.len() / 2];
        if a.json {
            outln!(
                "{}",
                serde_json::json!({"engine": "impasto", "pipeline": "live", "device": device.describe(), "width": w, "height": h, "median_ms": med, "min_ms": ms[0], "fps": 1e3 / med, "runs": ms, "threads": threads})
            );
        } else {
            outln!(
                "| {w}×{h} | {med:.1} | {:.1} | {:.1} | {threads} |",
                ms[0],
                1e3 / med
            );
        }
    }
    Ok(0)
}

pub fn run(a: Args) -> Result<i32> {
    if a.train {
        return train(a);
    }
    if !a.frames.is_empty() {
        return frames(&a);
    }
    let device = super::device()?;
    let model = super::model_or_init(&a.model, a.arch)?.to_backend(device.clone());
    // A mix is one ordinary network once built: time the build, then run that network.
    let (model, build_ms) = match &a.mix {
        None => (model, None),
        Some(mix) => {
            let w = model
                .mix_weights(Some(mix))
                .map_err(impasto::Error::Usage)?;
            let mut ms: Vec<f64> = (0..5)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(model.mixed(&w));
                    t.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            ms.sort_by(f64::total_cmp);
            (model.mixed(&w), Some(ms[2]))
        }
    };
    let threads = rayon::current_num_threads();
    if !a.json {
        outln!("device: {}", device.describe());
        if let Some(b) = build_ms {
            outln!(
                "mix {}: its network built in {b:.1} ms (median of 5; once per mix)",
                model
                    .metadata
                    .get(impasto::model::mix::MIX_KEY)
                    .map_or("", String::as_str)
            );
        }
        outln!("| size | median ms | min ms | GFLOP/s | threads |");
        outln!("|---|---|---|---|---|");
    }
    for &s in &a.sizes {
        device.check_fits(
            model.plan().activation_bytes(s, s),
            &format!("the network at {s}²"),
        )?;
        let mut rng = impasto::rng::Rng::new(s as u64);
        let x = Tensor::from_vec(
            1,
            3,
            s,
            s,
            (0..3 * s * s).map(|_| rng.f32() * 255.0).collect(),
        );
        for _ in 0..a.warmup {
            std::hint::black_box(model.forward(&x));
        }
        let mut ms: Vec<f64> = (0..a.runs.max(1))
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(model.forward(&x));
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let med = ms[ms.len() / 2];
        let gflops = model.flops(s, s) / med / 1e6;
        if a.json {
            outln!(
                "{}",
                serde_json::json!({"engine": "impasto", "device": device.describe(), "arch": model.config.arch, "size": s, "median_ms": med, "min_ms": ms[0], "runs": ms, "threads": threads, "mix_build_ms": build_ms})
            );
        } else {
            outln!(
                "| {s}² | {med:.1} | {:.1} | {gflops:.0} | {threads} |",
                ms[0]
            );
        }
    }
    Ok(0)
}

/// One training step (forward, VGG16 losses, backward, Adam) per run.
fn train(a: Args) -> Result<i32> {
    use impasto::backend::Backend;
    use impasto::loss::LossConfig;
    use impasto::train::step::{apply, loss_and_grads, Optimizer, StyleTarget};
    let device = super::device()?;
    impasto::tensor::set_pool_limit(impasto::train::trainer::TRAINING_POOL_BYTES);
    let vgg = impasto::model::Vgg16::load_on(
        device.clone(),
        &impasto::model::vgg::locate(a.vgg.as_deref())?,
    )?;
    let mut model = super::model_or_init(&a.model, a.arch)?.to_backend(device.clone());
    let threads = rayon::current_num_threads();
    let cfg = LossConfig::default();
    let mut rng = impasto::rng::Rng::new(7);
    let style = Tensor::from_vec(
        1,
        3,
        256,
        256,
        (0..3 * 256 * 256).map(|_| rng.f32() * 255.0).collect(),
    );
    let target = StyleTarget::new(&vgg, &device.upload(&style));
    let mut opt = Optimizer::new(1e-3);
    for &s in &a.sizes {
        let (n, side) = (a.batch as u64, s as u64);
        device.check_fits(
            4 * 64 * n * side * side,
            &format!("a training batch of {n} at {s}²"),
        )?;
        let x = Tensor::from_vec(
            a.batch,
            3,
            s,
            s,
            (0..a.batch * 3 * s * s)
                .map(|_| rng.f32() * 255.0)
                .collect(),
        );
        let x = device.upload(&x);
        // A step as `train` runs it: the losses and the gradients' finiteness read back once.
        let mut run = || -> Result<()> {
            let (l, g) = loss_and_grads(&model, &vgg, &target, &cfg, &x, a.exact);
            l.read(&device, &g.sum_squares(&device))?;
            apply(&mut model, &mut opt, &g);
            Ok(())
        };
        for _ in 0..a.warmup {
            run()?;
        }
        let mut ms: Vec<f64> = (0..a.runs.max(1))
            .map(|_| {
                let t = Instant::now();
                run()?;
                Ok(t.elapsed().as_secs_f64() * 1e3)
            })
            .collect::<Result<_>>()?;
        ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let med = ms[ms.len() / 2];
        let ips = a.batch as f64 / (med / 1e3);
        if a.json {
            outln!(
                "{}",
                serde_json::json!({"engine": "impasto", "device": device.describe(), "train": true, "batch": a.batch, "size": s, "median_ms": med, "img_per_s": ips, "runs": ms, "threads": threads})
            );
        } else {
            outln!("train step batch {} at {s}² on {}: median {med:.0} ms, min {:.0} ms, {ips:.2} img/s ({threads} threads)", a.batch, device.describe(), ms[0]);
        }
    }
    Ok(0)
}
