//! `impasto train`, `impasto evaluate`, `impasto fetch-vgg`.
use anyhow::Result;
use impasto::loss::LossConfig;
use impasto::model::vgg;
use impasto::model::{Arch, Vgg16};
use impasto::train::distill::DistillConfig;
use impasto::train::evaluate::EvalOptions;
use impasto::train::step::Losses;
use impasto::train::trainer::{
    self, defaults, DistillRequest, Observer, Outcome, RunFiles, RunSettings, TrainRequest,
};
use impasto::Error;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

/// Default loss weights for the default (Caffe) VGG; see the README for how they were chosen.
pub const DEFAULT_CONTENT_WEIGHT: f64 = LossConfig::DEFAULT_CONTENT_WEIGHT;
pub const DEFAULT_STYLE_WEIGHT: f64 = LossConfig::DEFAULT_STYLE_WEIGHT;
pub const DEFAULT_TV_WEIGHT: f64 = LossConfig::DEFAULT_TV_WEIGHT;

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// A style painting, `FILE` or `NAME=FILE` (name: default the file's stem). Give it
    /// several times to train one network of several styles (conditional instance norm:
    /// the batches take the paintings in turn; pick or blend them with `stylize --mix`).
    #[arg(long, required = true, value_name = "[NAME=]FILE")]
    style: Vec<String>,
    /// Add the styles to this model (a model file or a built-in style): only their
    /// instance-norm scale and shift train, every other weight stays exactly as it is, and
    /// the output holds the model's styles and the new ones.
    #[arg(long, value_name = "MODEL")]
    base: Option<String>,
    #[command(flatten)]
    run: RunArgs,
    /// Longest side the style image is scaled to (Johnson's reference uses 256).
    #[arg(long, default_value_t = defaults::STYLE_SIZE, value_parser = super::args::at_least_u32(16))]
    style_size: u32,
    /// Adam's learning rate (default 1e-3; 1e-2 with --base, where only the new styles'
    /// norm rows train).
    #[arg(long, value_parser = super::args::positive_f64)]
    lr: Option<f64>,
    #[command(flatten)]
    loss: LossArgs,
    /// A style weight per painting, for a run of several styles whose paintings want
    /// different strengths (`great_wave=5,udnie=1.5`); the others take `--style-weight`.
    /// Each style records its weight, and `evaluate --mix NAME` scores with it.
    #[arg(long, value_name = "NAME=W,…", value_parser = style_weights)]
    style_weights: Option<StyleWeights>,
    #[arg(long, value_enum, default_value = "johnson")]
    arch: Arch,
    /// Run the network on the exact convolution kernels (im2col + GEMM, the ones the
    /// PyTorch golden checks) and the loss network in float32, instead of the fast kernels
    /// (Winograd, direct, sub-pixel; bfloat16 products on CPUs with AMX): 5–10% slower per
    /// step at 128² without AMX, about 40% with it, and over four seeds of a 400-step
    /// recipe no better on held-out photos.
    #[arg(long)]
    exact: bool,
    /// The fast kernels: the default (kept so that commands written when they were a
    /// choice still run).
    #[arg(long, hide = true, conflicts_with = "exact")]
    fast: bool,
    /// With several styles, let each painting's gradients reach the shared weights at the
    /// size its loss gives them, instead of scaling every style's to the same size (the
    /// default, so a painting trained at a low style weight is not drowned out).
    #[arg(long)]
    no_balance: bool,
}

/// `--style-weights`: one value, several pairs.
#[derive(Clone, Debug)]
pub struct StyleWeights(Vec<(String, f64)>);

fn style_weights(text: &str) -> std::result::Result<StyleWeights, String> {
    trainer::parse_style_weights(text).map(StyleWeights)
}

/// The perceptual loss's weights (`train` and `optimize`).
#[derive(clap::Args, Debug)]
pub struct LossArgs {
    #[arg(long, default_value_t = DEFAULT_CONTENT_WEIGHT, value_parser = super::args::non_negative_f64)]
    content_weight: f64,
    #[arg(long, default_value_t = DEFAULT_STYLE_WEIGHT, value_parser = super::args::non_negative_f64)]
    style_weight: f64,
    #[arg(long, default_value_t = DEFAULT_TV_WEIGHT, value_parser = super::args::non_negative_f64)]
    tv_weight: f64,
}

impl LossArgs {
    fn config(&self) -> LossConfig {
        LossConfig {
            content_weight: self.content_weight,
            style_weight: self.style_weight,
            tv_weight: self.tv_weight,
            content_tap: 1,
        }
    }
}

/// The flags `train` and `distill` share: [`RunSettings`].
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Folder of training photos (searched recursively).
    #[arg(long)]
    data: PathBuf,
    /// Folder of validation photos: validation loss and preview grids (photo | output; with
    /// distill photo | teacher | student).
    #[arg(long)]
    val: Option<PathBuf>,
    /// The model file to write.
    #[arg(short, long)]
    output: PathBuf,
    /// Training steps (batches). Default: 2 epochs.
    #[arg(long, conflicts_with = "epochs", value_parser = super::args::at_least_u64(1))]
    steps: Option<u64>,
    /// Passes over the training photos.
    #[arg(long, value_parser = super::args::at_least_u64(1))]
    epochs: Option<u64>,
    #[arg(long, default_value_t = defaults::BATCH_SIZE, value_parser = super::args::at_least_usize(1))]
    batch_size: usize,
    /// Training crop size (pixels, a multiple of 4, at least 16).
    #[arg(long, default_value_t = defaults::IMAGE_SIZE, value_parser = super::args::crop_size)]
    image_size: usize,
    #[arg(long, default_value_t = defaults::SEED)]
    seed: u64,
    /// Save a checkpoint (and, with --val, validate) every N steps.
    #[arg(long, default_value_t = defaults::CHECKPOINT_EVERY, value_parser = super::args::at_least_u64(1))]
    checkpoint_every: u64,
    /// Validate and write a preview every N steps (default: --checkpoint-every).
    #[arg(long, value_parser = super::args::at_least_u64(1))]
    val_every: Option<u64>,
    /// Continue from the checkpoint beside the output (OUTPUT.ckpt.safetensors).
    #[arg(long)]
    resume: bool,
    /// VGG16 weights (else $IMPASTO_VGG, else the cache; see `impasto fetch-vgg`).
    #[arg(long)]
    vgg: Option<PathBuf>,
    /// Store the finished model as float16.
    #[arg(long)]
    half: bool,
}

impl RunArgs {
    /// The run's settings, on the device `--device` chose.
    fn settings(&self) -> impasto::Result<RunSettings> {
        Ok(RunSettings {
            data: self.data.clone(),
            val: self.val.clone(),
            output: self.output.clone(),
            steps: self.steps,
            epochs: self.epochs,
            batch_size: self.batch_size,
            image_size: self.image_size,
            seed: self.seed,
            checkpoint_every: self.checkpoint_every,
            val_every: self.val_every,
            resume: self.resume,
            vgg: self.vgg.clone(),
            half: self.half,
            device: super::device()?,
        })
    }
}

struct Bar(ProgressBar);

impl Observer for Bar {
    fn step(&mut self, step: u64, total: u64, l: &Losses, ips: f64) {
        self.0.set_length(total);
        self.0.set_position(step);
        self.0
            .set_message(format!("{}  {ips:.2} img/s", l.describe()));
    }
    fn message(&mut self, msg: &str) {
        self.0.suspend(|| eprintln!("{}", super::flags(msg)));
    }
}

pub fn train(a: TrainArgs) -> Result<i32> {
    let mut req = TrainRequest {
        styles: a
            .style
            .iter()
            .map(|s| trainer::StyleSource::parse(s))
            .collect(),
        base: a.base.clone(),
        lr: defaults::lr(a.lr, a.base.is_some()),
        style_size: a.style_size,
        loss: a.loss.config(),
        arch: a.arch,
        precise: a.exact,
        balance: !a.no_balance,
        run: a.run.settings()?,
    };
    if let Some(w) = &a.style_weights {
        req.set_style_weights(&w.0)?;
    }
    let out = with_progress(&a.run.output, |obs| {
        trainer::run(&req, obs, &super::signals::STOP)
    })?;
    Ok(out)
}

/// Run a training loop under a progress bar; report where the model and checkpoint are.
fn with_progress(
    output: &std::path::Path,
    f: impl FnOnce(&mut dyn Observer) -> impasto::Result<Outcome>,
) -> Result<i32> {
    super::signals::graceful();
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  {elapsed_precise} eta {eta_precise}  {msg}",
        )
        .unwrap(),
    );
    let mut obs = Bar(bar);
    let ckpt = RunFiles::new(output).checkpoint;
    let out = f(&mut obs)?;
    obs.0.finish_and_clear();
    match out {
        Outcome::Finished => {
            eprintln!("wrote {} (checkpoint {})", output.display(), ckpt.display());
            Ok(0)
        }
        Outcome::Interrupted { step } => {
            eprintln!("interrupted at step {step}; checkpoint saved to {}. Continue with the same command plus --resume.", ckpt.display());
            Ok(130)
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct DistillArgs {
    /// The teacher: a built-in style name or a model file.
    #[arg(long)]
    teacher: String,
    #[command(flatten)]
    run: RunArgs,
    /// Learning rate at the first step.
    #[arg(long, default_value_t = DistillConfig::DEFAULT_LR, value_parser = super::args::positive_f64)]
    lr: f64,
    /// Learning rate at the last step (half-cosine annealing from --lr).
    #[arg(long, default_value_t = DistillConfig::DEFAULT_LR_FINAL, value_parser = super::args::positive_f64)]
    lr_final: f64,
    /// The student's channel widths after conv1, conv2, conv3 (default: the live network).
    #[arg(long, value_delimiter = ',', num_args = 3)]
    channels: Option<Vec<usize>>,
    /// The student's residual blocks (default: the live network's).
    #[arg(long, value_parser = super::args::at_most_usize(64))]
    res_blocks: Option<usize>,
    #[arg(long, default_value_t = DistillConfig::DEFAULT_PIXEL_WEIGHT, value_parser = super::args::non_negative_f64)]
    pixel_weight: f64,
    /// Weight of the VGG relu1_2 feature distance to the teacher's output (0: no VGG needed).
    #[arg(long, default_value_t = DistillConfig::DEFAULT_PERCEPTUAL_WEIGHT, value_parser = super::args::non_negative_f64)]
    perceptual_weight: f64,
    /// Weight of the noise-stability term (0 turns it off).
    #[arg(long, default_value_t = DistillConfig::DEFAULT_STABILITY_WEIGHT, value_parser = super::args::non_negative_f64)]
    stability_weight: f64,
    /// Weight of the teacher's own training loss (content, style and TV against its
    /// painting) in the last part of the run; 0 turns it off.
    #[arg(long, default_value_t = DistillConfig::DEFAULT_LOSS_WEIGHT, value_parser = super::args::non_negative_f64)]
    loss_weight: f64,
    /// The fraction of the run after which the teacher's loss is on (0..1).
    #[arg(long, default_value_t = DistillConfig::DEFAULT_LOSS_FROM, value_parser = super::args::non_negative_f64)]
    loss_from: f64,
    /// Multiplies the style weight of the teacher's loss: above 1 when a twin's style loss
    /// trails its teacher's more than its content loss does, below 1 for the reverse (may
    /// change on --resume).
    #[arg(long, default_value_t = DistillConfig::DEFAULT_STYLE_SCALE, value_parser = super::args::non_negative_f64)]
    style_scale: f64,
    /// The teacher's painting, for its loss (default: the file its provenance names, when
    /// it is there).
    #[arg(long)]
    style: Option<PathBuf>,
    /// Standard deviation of the stability term's noise (0..255 scale).
    #[arg(long, default_value_t = DistillConfig::DEFAULT_NOISE_SIGMA, value_parser = super::args::non_negative_f64)]
    noise_sigma: f64,
}

pub fn distill(a: DistillArgs) -> Result<i32> {
    let mut network = impasto::train::distill::live_config();
    if let Some(c) = &a.channels {
        if c.contains(&0) {
            return Err(
                Error::Usage(format!("--channels {c:?}: every width must be at least 1")).into(),
            );
        }
        network.channels = [c[0], c[1], c[2]];
    }
    if let Some(r) = a.res_blocks {
        network.res_blocks = r;
    }
    let req = DistillRequest {
        teacher: a.teacher.clone(),
        lr: a.lr,
        lr_final: Some(a.lr_final),
        network,
        pixel_weight: a.pixel_weight,
        perceptual_weight: a.perceptual_weight,
        stability_weight: a.stability_weight,
        noise_sigma: a.noise_sigma,
        loss_weight: a.loss_weight,
        loss_from: a.loss_from,
        style_scale: a.style_scale,
        painting: a.style.clone(),
        run: a.run.settings()?,
    };
    with_progress(&a.run.output, |obs| {
        trainer::distill(&req, obs, &super::signals::STOP)
    })
}

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[arg(long)]
    model: PathBuf,
    /// The style image the model is compared against.
    #[arg(long)]
    style: PathBuf,
    /// Folder of photos to average over.
    #[arg(long)]
    photos: PathBuf,
    /// Crop size of the photos (a multiple of 4, at least 16).
    #[arg(long, default_value_t = 256, value_parser = super::args::crop_size)]
    image_size: usize,
    /// Longest side of the style image.
    #[arg(long, default_value_t = 256, value_parser = super::args::at_least_u32(16))]
    style_size: u32,
    #[arg(long)]
    vgg: Option<PathBuf>,
    #[arg(long)]
    json: bool,
    /// Score with this style weight instead of the model's recorded one (to compare models
    /// trained with different weights on the same scale).
    #[arg(long, value_parser = super::args::non_negative_f64)]
    style_weight: Option<f64>,
    /// Score with this content weight instead of the model's recorded one.
    #[arg(long, value_parser = super::args::non_negative_f64)]
    content_weight: Option<f64>,
    /// Mirror margin of the stylize pipeline for the artifact measures (default: the
    /// model's own, else 8).
    #[arg(long, value_parser = super::args::at_most_usize(impasto::model::transformer::MAX_MARGIN))]
    margin: Option<usize>,
    /// A model of several styles: the style (or blend) to score; default its first.
    #[arg(long, value_name = "NAME|NAME=W,…", value_parser = impasto::model::Mix::parse)]
    mix: Option<impasto::model::Mix>,
}

pub fn evaluate(a: EvalArgs) -> Result<i32> {
    let device = super::device()?;
    let spec = a.model.to_string_lossy();
    let model = impasto::styles::resolve(&spec)?
        .select(a.mix.as_ref())
        .map_err(|m| super::mix_error(&spec, m))?
        .to_backend(device.clone());
    let vgg_net = Vgg16::load_on(device, &vgg::locate(a.vgg.as_deref())?)?;
    let opts = EvalOptions {
        image_size: a.image_size,
        style_size: a.style_size,
        style_weight: a.style_weight,
        content_weight: a.content_weight,
        margin: a.margin,
    };
    let e =
        impasto::train::evaluate::evaluate(&model, &a.model, &vgg_net, &a.style, &a.photos, &opts)?;
    for w in &e.warnings {
        eprintln!("impasto: warning: {w}");
    }
    for (_, why) in &e.skipped {
        eprintln!("impasto: warning: skipped {why}");
    }
    let (l, loss, pipe) = (&e.network, &e.loss_config, &e.pipeline);
    if a.json {
        outln!(
            "{}",
            serde_json::json!({"model": a.model.display().to_string(), "style": a.style.display().to_string(), "photos": e.photos,
                "content": l.content, "style_loss": l.style, "style_unweighted": l.style / loss.style_weight,
                "grid_artifact": e.grid_artifact, "border_artifact": e.border_artifact, "margin": e.margin, "pipeline": {"content": pipe.content, "style_loss": pipe.style, "tv": pipe.tv, "total": pipe.total}, "border_artifact_photos": e.border_artifact_photos, "grid_artifact_photos": e.grid_artifact_photos, "tv": l.tv, "total": l.total, "loss_config": loss, "loss_config_recorded": e.loss_config_recorded})
        );
    } else {
        outln!(
            "{}: {} photos, loss weights content {} style {} tv {} ({})",
            a.model.display(),
            e.photos,
            loss.content_weight,
            loss.style_weight,
            loss.tv_weight,
            if e.loss_config_recorded {
                "as recorded in the model"
            } else if a.style_weight.is_some() || a.content_weight.is_some() {
                "as given"
            } else {
                "impasto's defaults (the model records none)"
            }
        );
        outln!(
            "content {:.4e}  style {:.4e} (unweighted {:.4e})  tv {:.4e}  total {:.4e}",
            l.content,
            l.style,
            l.style / loss.style_weight,
            l.tv,
            l.total
        );
        outln!(
            "as stylize gives it (margin {}): content {:.4e}  style {:.4e}  total {:.4e}",
            e.margin,
            pipe.content,
            pipe.style,
            pipe.total
        );
        outln!(
            "artifacts: grid {:.2} (checkerboard: spectral peak at the period-2/4 frequencies; the photos themselves: {:.2}), border {:.4} (the photos: {:.4})",
            e.grid_artifact,
            e.grid_artifact_photos,
            e.border_artifact,
            e.border_artifact_photos
        );
    }
    Ok(0)
}

pub fn fetch_vgg(dir: Option<PathBuf>) -> Result<i32> {
    let dir = dir
        .or_else(vgg::cache_dir)
        .ok_or_else(|| Error::Usage("no cache folder: set IMPASTO_CACHE or pass --dir".into()))?;
    let p = vgg::fetch(&dir)?;
    eprintln!("wrote {}", p.display());
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub struct OptimizeArgs {
    /// The photo.
    #[arg(long)]
    content: PathBuf,
    /// The style painting.
    #[arg(long)]
    style: PathBuf,
    /// The image to write.
    #[arg(short, long)]
    output: PathBuf,
    #[arg(long, default_value_t = 300, value_parser = super::args::at_least_usize(1))]
    iters: usize,
    /// Longest side of the content image.
    #[arg(long, default_value_t = 512, value_parser = super::args::at_least_u32(16))]
    max_size: u32,
    #[arg(long, default_value_t = 256, value_parser = super::args::at_least_u32(16))]
    style_size: u32,
    /// Adam step on the 0..255 pixel scale.
    #[arg(long, default_value_t = 4.0, value_parser = super::args::positive_f32)]
    lr: f32,
    #[command(flatten)]
    loss: LossArgs,
    #[arg(long)]
    vgg: Option<PathBuf>,
    /// One JSON line per reported iteration on stdout.
    #[arg(long)]
    json: bool,
}

pub fn optimize(a: OptimizeArgs) -> Result<i32> {
    impasto::imageio::format_for(&a.output)?;
    impasto::batch::guard_output(&a.output, &[&a.content, &a.style])?;
    let vgg_net = Vgg16::load_on(super::device()?, &vgg::locate(a.vgg.as_deref())?)?;
    let content = trainer::load_style(&a.content, Some(a.max_size))?;
    let style = trainer::load_style(&a.style, Some(a.style_size))?;
    let cfg = a.loss.config();
    let bar = ProgressBar::new(a.iters as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} iterations  {elapsed_precise} eta {eta_precise}  {msg}",
        )
        .unwrap(),
    );
    let t0 = std::time::Instant::now();
    let result = impasto::train::optimize::optimize(
        &vgg_net,
        &content,
        &style,
        &cfg,
        a.iters,
        a.lr,
        |it, l| {
            bar.set_position(it as u64);
            bar.set_message(format!("loss {:.3e}", l.total));
            // `l` is the loss of the image after it-1 updates.
            if a.json && (it - 1) % 50 == 0 {
                // A closed stdout only loses these progress records; the image is still written.
                let _ = bar.suspend(|| -> std::io::Result<()> {
                    outln!("{}", serde_json::json!({"iter": it - 1, "loss": l, "seconds": t0.elapsed().as_secs_f64()}));
                    Ok(())
                });
            }
        },
    ).map_err(|e| match e {
        Error::Diverged(m) => Error::Diverged(format!("{m}; nothing was written to {} (try a smaller --lr)", a.output.display())),
        e => e,
    });
    bar.finish_and_clear();
    let (y, fin) = result?;
    let (h, w) = (y.h, y.w);
    let img = image::RgbImage::from_fn(w as u32, h as u32, |x, yy| {
        let i = yy as usize * w + x as usize;
        image::Rgb([0, 1, 2].map(|c| y.data[c * h * w + i].round().clamp(0.0, 255.0) as u8))
    });
    impasto::imageio::write_path(&image::DynamicImage::ImageRgb8(img), &a.output)?;
    let secs = t0.elapsed().as_secs_f64();
    if a.json {
        outln!(
            "{}",
            serde_json::json!({"iter": a.iters, "final": fin, "seconds": secs, "output": a.output.display().to_string()})
        );
    } else {
        eprintln!("{} iterations in {secs:.1} s: loss {:.4e} (content {:.4e}, style {:.4e}, tv {:.4e}) -> {}", a.iters, fin.total, fin.content, fin.style, fin.tv, a.output.display());
    }
    Ok(0)
}
