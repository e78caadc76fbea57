//! The training loop: Johnson's recipe with checkpoints, exact resume, validation,
//! previews, a metrics log and clean interruption.

use crate::error::{Error, Result};
use crate::loss::LossConfig;
use crate::model::format::TensorFile;
use crate::model::{Arch, Transformer, TransformerConfig, Vgg16};
use crate::tensor::Tensor;
use crate::train::data::{self, DataPos, Loader};
use crate::train::distill::{DistillConfig, Distiller};
use crate::train::step::{self, Adam, Losses, StyleTarget};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// How a model is trained; stored in checkpoints and in the model file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub arch: Arch,
    pub style: String,
    pub style_sha256: String,
    /// Longest side the style image is scaled to (None: as it is).
    pub style_size: Option<u32>,
    pub data: String,
    pub dataset_size: usize,
    pub image_size: usize,
    pub batch_size: usize,
    pub steps: u64,
    pub lr: f64,
    pub loss: LossConfig,
    pub seed: u64,
    pub vgg_convention: String,
    pub checkpoint_every: u64,
    /// The network trained, when it is not `arch`'s standard one (the live models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<TransformerConfig>,
    /// A distillation run: the teacher and the weights of its terms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<DistillConfig>,
    /// Anneal the learning rate from `lr` to this by the last step (half a cosine); None:
    /// constant, Johnson's recipe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_final: Option<f64>,
}

impl TrainConfig {
    /// The learning rate of step `step` (0-based): a function of the step alone, so a
    /// resumed run continues the same schedule.
    pub fn lr_at(&self, step: u64) -> f64 {
        match self.lr_final {
            None => self.lr,
            Some(end) => {
                let t = step as f64 / self.steps.max(1) as f64;
                end + 0.5 * (self.lr - end) * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }

    /// The network this run trains.
    pub fn network(&self) -> TransformerConfig {
        self.network
            .clone()
            .unwrap_or_else(|| TransformerConfig::new(self.arch))
    }
}

/// What a run trains the network to minimise.
pub enum Objective<'a> {
    /// Johnson's perceptual loss: content, style (against the painting's Grams), TV.
    Perceptual { vgg: &'a Vgg16, target: StyleTarget },
    /// Reproduce a teacher network (`impasto distill`).
    Distill(&'a Distiller),
}

impl Objective<'_> {
    /// The losses of batch `step` (0-based) of `steps` and their gradient.
    fn loss_and_grads(
        &self,
        model: &Transformer,
        cfg: &TrainConfig,
        x: &Tensor,
        step: u64,
    ) -> (Losses, crate::model::transformer::Grads) {
        match self {
            Objective::Perceptual { vgg, target } => {
                step::loss_and_grads(model, vgg, target, &cfg.loss, x)
            }
            Objective::Distill(d) => {
                let on = d.teacher_loss_at(step, cfg.steps);
                let (l, g) = d.loss(model, x, cfg.seed ^ step, true, on);
                (l, g.expect("gradients were asked for"))
            }
        }
    }

    /// Mean losses over validation crops (fixed noise; every term a run can have).
    fn validate(&self, model: &Transformer, cfg: &LossConfig, imgs: &[Tensor]) -> Losses {
        match self {
            Objective::Perceptual { vgg, target } => validate(model, vgg, target, cfg, imgs),
            Objective::Distill(d) => mean(
                imgs.iter()
                    .enumerate()
                    .map(|(i, x)| d.loss(model, x, i as u64, false, true).0),
            ),
        }
    }

    fn teacher(&self) -> Option<&Transformer> {
        match self {
            Objective::Perceptual { .. } => None,
            Objective::Distill(d) => Some(&d.teacher),
        }
    }
}

/// Files a run writes beside its output model.
pub struct RunFiles {
    pub model: PathBuf,
    pub checkpoint: PathBuf,
    pub metrics: PathBuf,
    pub preview: PathBuf,
    pub curve: PathBuf,
    pub lock: PathBuf,
}

impl RunFiles {
    pub fn new(model: &Path) -> Self {
        let stem = model.with_extension("");
        let with = |suffix: &str| PathBuf::from(format!("{}{suffix}", stem.display()));
        RunFiles {
            model: model.to_path_buf(),
            checkpoint: with(".ckpt.safetensors"),
            metrics: with(".metrics.jsonl"),
            preview: with(".preview.png"),
            curve: with(".loss.png"),
            lock: with(".lock"),
        }
    }

    /// Take the run's lock (`OUTPUT.lock`, holding the process id), so that two runs on the
    /// same output cannot interleave their checkpoints and metrics. A lock left by a
    /// process that is no longer running is taken over.
    pub fn lock(&self) -> Result<RunLock> {
        let me = std::process::id();
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&self.lock)
            {
                Ok(mut f) => {
                    writeln!(f, "{me}").map_err(|e| Error::io(&self.lock, e))?;
                    return Ok(RunLock(self.lock.clone()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let pid = std::fs::read_to_string(&self.lock)
                        .ok()
                        .and_then(|s| s.trim().parse::<u32>().ok());
                    let running = pid.is_some_and(|p| {
                        p != me
                            && (!cfg!(target_os = "linux")
                                || Path::new(&format!("/proc/{p}")).exists())
                    });
                    if running {
                        return Err(Error::Locked(format!(
                            "{}: another training run (process {}) is writing {}; wait for it to finish, or stop it",
                            self.lock.display(),
                            pid.unwrap_or_default(),
                            self.model.display()
                        )));
                    }
                    // Stale: its process is gone.
                    let _ = std::fs::remove_file(&self.lock);
                }
                Err(e) => return Err(Error::io(&self.lock, e)),
            }
        }
        Err(Error::Locked(format!(
            "{}: cannot take the training lock",
            self.lock.display()
        )))
    }
}

/// Held while a run writes its files; removes the lock file when dropped.
pub struct RunLock(PathBuf);

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    let bytes = crate::io::read_regular(path, crate::model::format::MAX_FILE_BYTES, "file")?;
    Ok(format!("{:x}", sha2::Sha256::digest(&bytes)))
}

/// The style image as a 1×3×H×W RGB 0..255 tensor, scaled so its longest side is `size`.
pub fn load_style(path: &Path, size: Option<u32>) -> Result<Tensor> {
    let mut img = crate::imageio::read_path(path, &Default::default())?.image;
    if let Some(s) = size {
        let (w, h) = (img.width(), img.height());
        let k = s as f64 / w.max(h) as f64;
        img = img.resize_exact(
            ((w as f64 * k).round() as u32).max(16),
            ((h as f64 * k).round() as u32).max(16),
            image::imageops::FilterType::Lanczos3,
        );
    }
    let rgb = img.to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let mut t = Tensor::zeros(1, 3, h, w);
    for (x, y, p) in rgb.enumerate_pixels() {
        for c in 0..3 {
            t.data[(c * h + y as usize) * w + x as usize] = p.0[c] as f32;
        }
    }
    Ok(t)
}

/// Everything needed to continue a run exactly.
pub struct Checkpoint {
    pub config: TrainConfig,
    pub model: Transformer,
    pub adam: Adam,
    pub step: u64,
    pub data: DataPos,
}

#[derive(Serialize, Deserialize)]
struct CkptMeta {
    step: u64,
    adam_t: u64,
    lr: f64,
    data: DataPos,
    train: TrainConfig,
    model: TransformerConfig,
}

impl Checkpoint {
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut f = TensorFile::default();
        for (id, (p, v)) in self.model.params().enumerate() {
            let (n, s) = (&p.name, &p.shape);
            f.tensors
                .insert(format!("param.{n}"), (s.clone(), v.to_vec()));
            if let (Some(m), Some(vv)) = (self.adam.m.get(id), self.adam.v.get(id)) {
                if m.len() == v.len() {
                    f.tensors
                        .insert(format!("adam.m.{n}"), (s.clone(), m.clone()));
                    f.tensors
                        .insert(format!("adam.v.{n}"), (s.clone(), vv.clone()));
                }
            }
        }
        let meta = CkptMeta {
            step: self.step,
            adam_t: self.adam.t,
            lr: self.adam.lr,
            data: self.data,
            train: self.config.clone(),
            model: self.model.config.clone(),
        };
        f.metadata.insert(
            "impasto.checkpoint".into(),
            serde_json::to_string(&meta).expect("serialises"),
        );
        f.write(path, false)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let mut f = TensorFile::read(path)?;
        let bad = |m: crate::error::ModelError| Error::model(path, m);
        let meta: CkptMeta = serde_json::from_str(
            f.metadata
                .get("impasto.checkpoint")
                .ok_or_else(|| bad("not an impasto checkpoint".into()))?,
        )
        .map_err(|e| {
            bad(crate::error::ModelError::Metadata {
                key: "impasto.checkpoint".into(),
                msg: e.to_string(),
            })
        })?;
        let mut params = std::collections::BTreeMap::new();
        let mut adam = Adam::new(meta.lr);
        adam.t = meta.adam_t;
        meta.model.validate().map_err(|m| bad(m.into()))?;
        for (name, shape) in meta.model.param_shapes() {
            params.insert(
                name.clone(),
                (
                    shape.clone(),
                    f.take(&format!("param.{name}"), &shape).map_err(bad)?,
                ),
            );
            if meta.adam_t > 0 {
                adam.m
                    .push(f.take(&format!("adam.m.{name}"), &shape).map_err(bad)?);
                adam.v
                    .push(f.take(&format!("adam.v.{name}"), &shape).map_err(bad)?);
            }
        }
        let model = Transformer::from_named(meta.model, params, Default::default()).map_err(bad)?;
        Ok(Checkpoint {
            config: meta.train,
            model,
            adam,
            step: meta.step,
            data: meta.data,
        })
    }
}

/// What the loop reports as it goes.
pub trait Observer {
    fn step(&mut self, step: u64, total: u64, losses: &Losses, img_per_s: f64);
    fn message(&mut self, msg: &str);
}

/// Options of a run beyond its [`TrainConfig`].
pub struct RunOptions<'a> {
    pub val: Option<Vec<PathBuf>>,
    pub val_every: u64,
    pub files: RunFiles,
    pub resume: Option<Checkpoint>,
    pub half: bool,
    /// Set from elsewhere (a signal handler, a callback) to stop at the next step with the
    /// checkpoint saved.
    pub interrupt: &'a AtomicBool,
}

#[derive(Debug)]
pub enum Outcome {
    Finished,
    Interrupted { step: u64 },
}

/// Mean losses of the model over validation crops.
pub fn validate(
    model: &Transformer,
    vgg: &Vgg16,
    target: &StyleTarget,
    cfg: &LossConfig,
    imgs: &[Tensor],
) -> Losses {
    mean(
        imgs.iter()
            .map(|x| step::losses(model, vgg, target, cfg, x)),
    )
}

/// The mean of each loss term.
fn mean(ls: impl Iterator<Item = Losses>) -> Losses {
    let (mut sum, mut n) = (Losses::default(), 0usize);
    for l in ls {
        sum.content += l.content;
        sum.style += l.style;
        sum.tv += l.tv;
        sum.pixel += l.pixel;
        sum.perceptual += l.perceptual;
        sum.stability += l.stability;
        sum.total += l.total;
        n += 1;
    }
    let n = n.max(1) as f64;
    Losses {
        content: sum.content / n,
        style: sum.style / n,
        tv: sum.tv / n,
        pixel: sum.pixel / n,
        perceptual: sum.perceptual / n,
        stability: sum.stability / n,
        total: sum.total / n,
    }
}

/// A grid: the validation photos on top, their stylizations below (with a teacher: the
/// photos, the teacher's output, the student's).
pub fn preview(
    model: &Transformer,
    teacher: Option<&Transformer>,
    imgs: &[Tensor],
    path: &Path,
) -> Result<()> {
    let n = imgs.len().min(4);
    if n == 0 {
        return Ok(());
    }
    let s = imgs[0].h;
    let rows = if teacher.is_some() { 3 } else { 2 };
    let mut grid = image::RgbImage::new((n * s) as u32, (rows * s) as u32);
    for (i, x) in imgs.iter().take(n).enumerate() {
        let mut shown = vec![x.clone()];
        if let Some(t) = teacher {
            shown.push(t.forward(x));
        }
        shown.push(model.forward(x));
        for (row, t) in shown.iter().enumerate() {
            let hw = s * s;
            for py in 0..s {
                for px in 0..s {
                    let p = [0, 1, 2]
                        .map(|c| t.data[c * hw + py * s + px].round().clamp(0.0, 255.0) as u8);
                    grid.put_pixel((i * s + px) as u32, (row * s + py) as u32, image::Rgb(p));
                }
            }
        }
    }
    crate::imageio::write_path(&image::DynamicImage::ImageRgb8(grid), path)
}

/// Drop metrics logged after `step` (a killed run may have got further than its checkpoint).
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    crate::io::write_atomic(path, kept.as_bytes())
}

fn append_jsonl(path: &Path, v: &serde_json::Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    writeln!(f, "{v}").map_err(|e| Error::io(path, e))
}

/// impasto's training defaults, each written once: the CLI's flags and the Python package
/// read them from here.
pub mod defaults {
    /// Photos per step.
    pub const BATCH_SIZE: usize = 4;
    /// Training crop side (pixels).
    pub const IMAGE_SIZE: usize = 256;
    /// Longest side the style painting is scaled to (Johnson's reference uses 256).
    pub const STYLE_SIZE: u32 = 256;
    /// Adam's learning rate.
    pub const LR: f64 = 1e-3;
    pub const SEED: u64 = 42;
    /// Steps between checkpoints (and validations).
    pub const CHECKPOINT_EVERY: u64 = 500;
    /// Passes over the photos when no step count is given.
    pub const EPOCHS: u64 = 2;
}

/// What every training loop's caller sets the same way (`train` and `distill`, the CLI and
/// the Python package): the photos, the output, the run's length, batches, checkpoints,
/// validation and the VGG16 weights.
#[derive(Clone, Debug)]
pub struct RunSettings {
    /// Folder of training photos (searched recursively).
    pub data: PathBuf,
    /// Folder of validation photos: validation loss and preview grids.
    pub val: Option<PathBuf>,
    /// The model file to write (checkpoint, metrics, previews beside it).
    pub output: PathBuf,
    /// Training steps; default `epochs` passes over the photos.
    pub steps: Option<u64>,
    /// Passes over the photos when `steps` is not given (default 2).
    pub epochs: Option<u64>,
    pub batch_size: usize,
    pub image_size: usize,
    pub seed: u64,
    pub checkpoint_every: u64,
    /// Validate and preview every N steps (default: `checkpoint_every`).
    pub val_every: Option<u64>,
    /// Continue from the checkpoint beside the output.
    pub resume: bool,
    /// VGG16 weights (else `$IMPASTO_VGG`, else the cache).
    pub vgg: Option<PathBuf>,
    /// Store the finished model as float16.
    pub half: bool,
}

impl RunSettings {
    /// impasto's [`defaults`]: 2 epochs of batch 4 at 256², seed 42, a checkpoint every 500
    /// steps.
    pub fn new(data: impl Into<PathBuf>, output: impl Into<PathBuf>) -> Self {
        RunSettings {
            data: data.into(),
            val: None,
            output: output.into(),
            steps: None,
            epochs: None,
            batch_size: defaults::BATCH_SIZE,
            image_size: defaults::IMAGE_SIZE,
            seed: defaults::SEED,
            checkpoint_every: defaults::CHECKPOINT_EVERY,
            val_every: None,
            resume: false,
            vgg: None,
            half: false,
        }
    }
}

impl RunSettings {
    /// The one range check of a run's settings (the CLI checks its flags as it parses them
    /// too, to name them; the Python package relies on this).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Usage(m));
        if self.steps == Some(0) || self.epochs == Some(0) {
            return bad("zero training steps: give `steps` or `epochs` of at least 1".into());
        }
        if self.batch_size == 0 || self.checkpoint_every == 0 || self.val_every == Some(0) {
            return bad(format!(
                "`batch_size` ({}), `checkpoint_every` ({}) and `val_every` must be at least 1",
                self.batch_size, self.checkpoint_every
            ));
        }
        if self.image_size < 16 || !self.image_size.is_multiple_of(4) {
            return bad(format!(
                "`image_size` {} must be a multiple of 4, at least 16",
                self.image_size
            ));
        }
        Ok(())
    }
}

impl TrainRequest {
    /// The one range check of a training request: its run's settings, the style size, the
    /// learning rate and the loss weights.
    pub fn validate(&self) -> Result<()> {
        self.run.validate()?;
        if self.style_size < 16 {
            return Err(Error::Usage(format!(
                "`style_size` {} must be at least 16",
                self.style_size
            )));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::Usage(format!(
                "`lr` {} must be a finite number above 0",
                self.lr
            )));
        }
        let w = &self.loss;
        for (name, v) in [
            ("content_weight", w.content_weight),
            ("style_weight", w.style_weight),
            ("tv_weight", w.tv_weight),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::Usage(format!(
                    "`{name}` {v} must be a finite number, 0 or more"
                )));
            }
        }
        Ok(())
    }
}

/// A training run as a caller asks for it (the CLI's `impasto train` flags, the Python
/// package's `impasto.train(...)`): [`run`] turns it into a [`TrainConfig`] and runs it.
#[derive(Clone, Debug)]
pub struct TrainRequest {
    /// The style painting.
    pub style: PathBuf,
    /// Longest side the style image is scaled to.
    pub style_size: u32,
    pub lr: f64,
    pub loss: LossConfig,
    pub arch: Arch,
    pub run: RunSettings,
}

impl TrainRequest {
    /// Johnson's recipe with impasto's defaults: 2 epochs of batch 4 at 256², Adam 1e-3.
    pub fn new(
        style: impl Into<PathBuf>,
        data: impl Into<PathBuf>,
        output: impl Into<PathBuf>,
    ) -> Self {
        TrainRequest {
            style: style.into(),
            style_size: defaults::STYLE_SIZE,
            lr: defaults::LR,
            loss: LossConfig::default(),
            arch: Arch::Johnson,
            run: RunSettings::new(data, output),
        }
    }
}

/// Set up and run (or, with `resume`, continue) a training run: the output's lock first (so
/// a second run on the same output stops before any work), the VGG16 weights, the photos
/// (skipped folders reported through `obs`), the style, the checkpoint.
pub fn run(req: &TrainRequest, obs: &mut dyn Observer, interrupt: &AtomicBool) -> Result<Outcome> {
    req.validate()?;
    crate::batch::guard_output(&req.run.output, &[&req.style])?;
    refuse_output_inside(&req.run)?;
    let (files, _lock) = lock_output(&req.run.output)?;
    let vgg_path = crate::model::vgg::locate(req.run.vgg.as_deref())?;
    let vgg = Vgg16::load(&vgg_path)?;
    let data = Inputs::scan(
        &req.run.data,
        req.run.val.as_deref(),
        req.run.batch_size,
        req.run.steps,
        req.run.epochs,
        obs,
    )?;
    let style = load_style(&req.style, Some(req.style_size))?;
    let cfg = TrainConfig {
        arch: req.arch,
        style: req.style.display().to_string(),
        style_sha256: sha256_file(&req.style)?,
        style_size: Some(req.style_size),
        data: req.run.data.display().to_string(),
        dataset_size: data.photos.len(),
        image_size: req.run.image_size,
        batch_size: req.run.batch_size,
        steps: data.steps,
        lr: req.lr,
        loss: req.loss.clone(),
        seed: req.run.seed,
        vgg_convention: vgg.pre.convention.clone(),
        checkpoint_every: req.run.checkpoint_every.max(1),
        network: None,
        distill: None,
        lr_final: None,
    };
    let resume = checkpoint_to_resume(&files, req.run.resume)?;
    obs.message(&format!(
        "training {:?} on {} photos ({} steps of {}, {}²), style {}, VGG {} ({})",
        cfg.arch,
        data.photos.len(),
        data.steps,
        cfg.batch_size,
        cfg.image_size,
        req.style.display(),
        vgg_path.display(),
        cfg.vgg_convention
    ));
    let opts = RunOptions {
        val: data.val,
        val_every: req.run.val_every.unwrap_or(cfg.checkpoint_every).max(1),
        files,
        resume,
        half: req.run.half,
        interrupt,
    };
    let target = StyleTarget::new(&vgg, &style);
    train(
        &cfg,
        &Objective::Perceptual { vgg: &vgg, target },
        data.photos,
        opts,
        obs,
    )
}

/// The output's folder and its lock.
fn lock_output(output: &Path) -> Result<(RunFiles, RunLock)> {
    let files = RunFiles::new(output);
    if let Some(d) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).map_err(|e| Error::output(output, e.to_string()))?;
    }
    let lock = files.lock()?;
    Ok((files, lock))
}

/// The photos of a run and how many steps it takes.
struct Inputs {
    photos: Vec<PathBuf>,
    val: Option<Vec<PathBuf>>,
    steps: u64,
}

impl Inputs {
    fn scan(
        data: &Path,
        val: Option<&Path>,
        batch_size: usize,
        steps: Option<u64>,
        epochs: Option<u64>,
        obs: &mut dyn Observer,
    ) -> Result<Self> {
        let mut scan = |dir: &Path| -> Result<Vec<PathBuf>> {
            let s = crate::train::data::scan_reporting(dir)?;
            for w in &s.warnings {
                obs.message(&format!("warning: {w}"));
            }
            Ok(s.files)
        };
        let photos = scan(data)?;
        let val = match val {
            Some(d) => Some(scan(d)?),
            None => None,
        };
        if batch_size == 0 {
            return Err(Error::Usage("the batch size must be at least 1".into()));
        }
        let per_epoch = photos.len().div_ceil(batch_size) as u64;
        let steps = steps.unwrap_or(per_epoch * epochs.unwrap_or(2));
        Ok(Inputs { photos, val, steps })
    }
}

/// A run writes its previews and loss plot beside its model: inside a photo folder they
/// would become training photos (and change the photo count a resume checks), so that is
/// refused before anything is written.
fn refuse_output_inside(run: &RunSettings) -> Result<()> {
    let output = &run.output;
    let folder = match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // The folder may not exist yet: resolve its nearest existing ancestor.
    let Some(folder) = folder.ancestors().find_map(|a| {
        std::fs::canonicalize(if a.as_os_str().is_empty() {
            Path::new(".")
        } else {
            a
        })
        .ok()
    }) else {
        return Ok(());
    };
    for photos in std::iter::once(&run.data).chain(&run.val) {
        if std::fs::canonicalize(photos).is_ok_and(|p| folder.starts_with(p)) {
            return Err(Error::Usage(format!(
                "{}: the output is inside the photo folder {}, where the run's previews and loss plot would become training photos; write the model to another folder",
                output.display(),
                photos.display()
            )));
        }
    }
    Ok(())
}

/// What makes a checkpoint another run's, if anything: the style, the network, the crop and
/// batch sizes, the seed, or (distillation) the teacher and its painting. The learning rate
/// and the loss weights may change on resume (lowering them is the advice after a
/// divergence; the metrics file keeps the history).
fn run_identity_differs(ck: &TrainConfig, cfg: &TrainConfig) -> Option<&'static str> {
    let teacher = |c: &TrainConfig| {
        c.distill
            .as_ref()
            .map(|d| (d.teacher_sha256.clone(), d.painting_sha256.clone()))
    };
    [
        // (a distillation's style_sha256 is its teacher's: name the teacher first)
        (teacher(ck) != teacher(cfg), "teacher or teacher's painting"),
        (ck.style_sha256 != cfg.style_sha256, "style"),
        (ck.arch != cfg.arch || ck.network != cfg.network, "network"),
        (ck.image_size != cfg.image_size, "image size"),
        (ck.batch_size != cfg.batch_size, "batch size"),
        (ck.seed != cfg.seed, "seed"),
    ]
    .into_iter()
    .find_map(|(differs, what)| differs.then_some(what))
}

/// With `resume`, the checkpoint beside the output (which must exist); without, refuse to
/// overwrite one, and start a fresh metrics log.
fn checkpoint_to_resume(files: &RunFiles, resume: bool) -> Result<Option<Checkpoint>> {
    if resume {
        if !files.checkpoint.exists() {
            return Err(Error::Usage(format!(
                "`resume`: no checkpoint at {}",
                files.checkpoint.display()
            )));
        }
        Ok(Some(Checkpoint::load(&files.checkpoint)?))
    } else {
        if files.checkpoint.exists() {
            return Err(Error::Usage(format!(
                "{} exists: set `resume` to continue that run, or delete it to start over",
                files.checkpoint.display()
            )));
        }
        let _ = std::fs::remove_file(&files.metrics);
        Ok(None)
    }
}

/// A distillation run as a caller asks for it (`impasto distill`): a compact network
/// trained to reproduce `teacher` on the photos, with `train`'s data pipeline,
/// checkpoints, exact resume, metrics, previews and provenance.
#[derive(Clone, Debug)]
pub struct DistillRequest {
    /// The teacher: a built-in style name or a model file.
    pub teacher: String,
    pub lr: f64,
    /// Cosine-anneal the learning rate to this by the last step.
    pub lr_final: Option<f64>,
    /// The student network (default [`crate::train::distill::live_config`]).
    pub network: TransformerConfig,
    pub pixel_weight: f64,
    pub perceptual_weight: f64,
    pub stability_weight: f64,
    pub noise_sigma: f64,
    /// Weight of the teacher's own training loss in the last part of the run (0: off).
    pub loss_weight: f64,
    /// The fraction of the run after which the teacher's loss is on.
    pub loss_from: f64,
    /// Multiplies that loss's style weight ([`DistillConfig::style_scale`]).
    pub style_scale: f64,
    /// The teacher's painting (default: the one its provenance names, when that file is
    /// there and its SHA-256 matches).
    pub painting: Option<PathBuf>,
    /// VGG16 serves the perceptual term here (`run.vgg`).
    pub run: RunSettings,
}

impl DistillRequest {
    /// impasto's defaults: the live network, batch 4 at 256², Adam 1e-2 annealed to 5e-4
    /// (a regression onto the teacher's output tolerates, and needs, a higher rate than
    /// Johnson's 1e-3: 80 steps gave validation pixel loss 1.5e4 at 1e-3, 1.9e3 at 4e-3,
    /// 1.6e3 at 1e-2), 2 epochs.
    pub fn new(
        teacher: impl Into<String>,
        data: impl Into<PathBuf>,
        output: impl Into<PathBuf>,
    ) -> Self {
        DistillRequest {
            teacher: teacher.into(),
            lr: DistillConfig::DEFAULT_LR,
            lr_final: Some(DistillConfig::DEFAULT_LR_FINAL),
            network: crate::train::distill::live_config(),
            pixel_weight: DistillConfig::DEFAULT_PIXEL_WEIGHT,
            perceptual_weight: DistillConfig::DEFAULT_PERCEPTUAL_WEIGHT,
            stability_weight: DistillConfig::DEFAULT_STABILITY_WEIGHT,
            noise_sigma: DistillConfig::DEFAULT_NOISE_SIGMA,
            loss_weight: DistillConfig::DEFAULT_LOSS_WEIGHT,
            loss_from: DistillConfig::DEFAULT_LOSS_FROM,
            style_scale: DistillConfig::DEFAULT_STYLE_SCALE,
            painting: None,
            run: RunSettings::new(data, output),
        }
    }
}

/// Set up and run (or continue) a distillation run; the order of checks is `run`'s.
pub fn distill(
    req: &DistillRequest,
    obs: &mut dyn Observer,
    interrupt: &AtomicBool,
) -> Result<Outcome> {
    use sha2::Digest;
    req.run.validate()?;
    crate::batch::guard_output(&req.run.output, &[Path::new(&req.teacher)])?;
    refuse_output_inside(&req.run)?;
    let (files, _lock) = lock_output(&req.run.output)?;
    let (teacher, teacher_sha256) = match crate::styles::builtin_bytes(&req.teacher) {
        Some(bytes) => (
            crate::styles::resolve(&req.teacher)?,
            format!("{:x}", sha2::Sha256::digest(bytes)),
        ),
        None => (
            crate::styles::resolve(&req.teacher)?,
            sha256_file(Path::new(&req.teacher))?,
        ),
    };
    req.network
        .validate()
        .map_err(|m| Error::Usage(format!("student network: {m}")))?;
    if !(0.0..=1.0).contains(&req.loss_from) {
        return Err(Error::Usage(format!(
            "the teacher's loss starts at a fraction of the run from 0 to 1, not {}",
            req.loss_from
        )));
    }
    let provenance =
        crate::model::provenance::Provenance::from_metadata(&teacher.metadata).and_then(|p| p.ok());
    let record = provenance.as_ref().and_then(|p| p.train.as_ref());
    let recorded = |k: &str| record.and_then(|t| t.other.get(k)).and_then(|v| v.as_str());
    // The painting of the teacher's loss: given, or the teacher's own when it is at hand.
    let painting: Option<(PathBuf, String)> = if req.loss_weight == 0.0 {
        None
    } else if let Some(p) = &req.painting {
        Some((p.clone(), sha256_file(p)?))
    } else {
        match recorded("style").map(PathBuf::from) {
            Some(p) if p.is_file() => {
                let sha = sha256_file(&p)?;
                if recorded("style_sha256").is_some_and(|want| want != sha) {
                    obs.message(&format!("warning: {} is not the painting {} was trained on (its SHA-256 differs); distilling without the teacher's loss: give `style` the painting", p.display(), req.teacher));
                    None
                } else {
                    Some((p, sha))
                }
            }
            other => {
                obs.message(&format!(
                    "warning: the teacher's painting ({}) is not at hand; distilling with the pixel terms only (softer texture): give `style` the painting",
                    other.map(|p| p.display().to_string()).unwrap_or_else(|| "not recorded".into())
                ));
                None
            }
        }
    };
    let vgg = if req.perceptual_weight > 0.0 || painting.is_some() {
        Some(Vgg16::load(&crate::model::vgg::locate(
            req.run.vgg.as_deref(),
        )?)?)
    } else {
        None
    };
    let data = Inputs::scan(
        &req.run.data,
        req.run.val.as_deref(),
        req.run.batch_size,
        req.run.steps,
        req.run.epochs,
        obs,
    )?;
    let style_size = record
        .and_then(|t| t.other.get("style_size"))
        .and_then(|v| v.as_u64())
        .unwrap_or(256) as u32;
    let johnson = match (&painting, &vgg) {
        (Some((p, _)), Some(v)) => {
            let img = load_style(p, Some(style_size))?;
            Some((StyleTarget::new(v, &img), teacher_loss(&teacher)))
        }
        _ => None,
    };
    let dcfg = DistillConfig {
        teacher: req.teacher.clone(),
        teacher_sha256: teacher_sha256.clone(),
        pixel_weight: req.pixel_weight,
        perceptual_weight: req.perceptual_weight,
        stability_weight: req.stability_weight,
        noise_sigma: req.noise_sigma,
        loss_weight: if painting.is_some() {
            req.loss_weight
        } else {
            0.0
        },
        loss_from: req.loss_from,
        style_scale: req.style_scale,
        painting: painting.as_ref().map(|(p, _)| p.display().to_string()),
        painting_sha256: painting.as_ref().map(|(_, s)| s.clone()),
    };
    let painting_name = recorded("style").map(str::to_string);
    let cfg = TrainConfig {
        arch: req.network.arch,
        style: painting_name.unwrap_or_else(|| req.teacher.clone()),
        style_sha256: teacher_sha256,
        style_size: Some(style_size),
        data: req.run.data.display().to_string(),
        dataset_size: data.photos.len(),
        image_size: req.run.image_size,
        batch_size: req.run.batch_size,
        steps: data.steps,
        lr: req.lr,
        loss: teacher_loss(&teacher),
        seed: req.run.seed,
        vgg_convention: vgg
            .as_ref()
            .map(|v| v.pre.convention.clone())
            .unwrap_or_else(|| "none".into()),
        checkpoint_every: req.run.checkpoint_every.max(1),
        network: Some(req.network.clone()),
        distill: Some(dcfg.clone()),
        lr_final: req.lr_final,
    };
    let resume = checkpoint_to_resume(&files, req.run.resume)?;
    obs.message(&format!(
        "distilling {} into {:?}-{:?} with {} residual blocks ({} parameters, {:.1}x fewer FLOPs) on {} photos ({} steps of {}, {}²)",
        req.teacher,
        req.network.arch,
        req.network.channels,
        req.network.res_blocks,
        req.network.plan().param_count(),
        teacher.flops(256, 256) / req.network.plan().flops(256, 256),
        data.photos.len(),
        data.steps,
        cfg.batch_size,
        cfg.image_size
    ));
    let opts = RunOptions {
        val: data.val,
        val_every: req.run.val_every.unwrap_or(cfg.checkpoint_every).max(1),
        files,
        resume,
        half: req.run.half,
        interrupt,
    };
    let d = Distiller {
        teacher,
        vgg,
        cfg: dcfg,
        teacher_loss: johnson,
    };
    train(&cfg, &Objective::Distill(&d), data.photos, opts, obs)
}

/// The loss weights a model records (so a student is scored like its teacher).
fn teacher_loss(m: &Transformer) -> LossConfig {
    m.metadata
        .get("impasto.loss")
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default()
}

/// Run (or continue) training. Returns when the steps are done or on interruption.
pub fn train(
    cfg: &TrainConfig,
    objective: &Objective,
    photos: Vec<PathBuf>,
    opts: RunOptions<'_>,
    obs: &mut dyn Observer,
) -> Result<Outcome> {
    if cfg.steps == 0 {
        return Err(Error::Usage(
            "zero training steps: give `steps` or `epochs` of at least 1".into(),
        ));
    }
    if cfg.batch_size == 0 || cfg.image_size < 16 || !cfg.image_size.is_multiple_of(4) {
        return Err(Error::Usage(format!(
            "batch size {} / image size {}: the batch must hold at least one image and the size be a multiple of 4, at least 16",
            cfg.batch_size, cfg.image_size
        )));
    }
    if !(cfg.lr.is_finite() && cfg.lr > 0.0) {
        return Err(Error::Usage(format!(
            "learning rate {} must be a finite number above 0",
            cfg.lr
        )));
    }
    let (mut model, mut adam, mut step, pos) = match opts.resume {
        Some(ck) => {
            if let Some(what) = run_identity_differs(&ck.config, cfg) {
                return Err(Error::Usage(format!(
                    "{}: the checkpoint was made with another {what}; remove it or train with the same settings",
                    opts.files.checkpoint.display()
                )));
            }
            if ck.config.data != cfg.data || ck.config.dataset_size != cfg.dataset_size {
                return Err(Error::Usage(format!(
                    "{}: the checkpoint was made on {} ({} photos), not {} ({} photos); resume with the same `data`, or remove the checkpoint to start over",
                    opts.files.checkpoint.display(),
                    ck.config.data,
                    ck.config.dataset_size,
                    cfg.data,
                    cfg.dataset_size
                )));
            }
            if ck.step > cfg.steps {
                return Err(Error::Usage(format!(
                    "{}: the checkpoint is at step {}, past this run's {} steps; ask for at least {} steps to continue it",
                    opts.files.checkpoint.display(),
                    ck.step,
                    cfg.steps,
                    ck.step
                )));
            }
            obs.message(&format!(
                "resuming from step {} ({})",
                ck.step,
                opts.files.checkpoint.display()
            ));
            truncate_metrics(&opts.files.metrics, ck.step)?;
            (ck.model, ck.adam, ck.step, ck.data)
        }
        None => {
            let mut m = Transformer::init(cfg.network(), cfg.seed);
            if let Objective::Distill(d) = objective {
                d.warm_start(&mut m);
            }
            (m, Adam::new(cfg.lr), 0, DataPos::default())
        }
    };
    let val_imgs: Vec<Tensor> = match &opts.val {
        None => Vec::new(),
        Some(files) => files
            .iter()
            .take(8)
            .filter_map(|f| data::load_crop(f, cfg.image_size, None).ok())
            .map(|v| Tensor::from_vec(1, 3, cfg.image_size, cfg.image_size, v))
            .collect(),
    };
    let loader = Loader::new(photos, cfg.seed, cfg.image_size, cfg.batch_size, pos);
    let mut last_pos = pos;
    let t0 = Instant::now();
    let mut done_here = 0u64;
    let save = |model: &Transformer, adam: &Adam, step: u64, data: DataPos| -> Result<()> {
        Checkpoint {
            config: cfg.clone(),
            model: model.clone(),
            adam: adam.clone(),
            step,
            data,
        }
        .save(&opts.files.checkpoint)
        .map_err(|e| {
            // Say what to do: the previous checkpoint (if any) is untouched, since a new one
            // replaces it only once complete.
            let kept = if opts.files.checkpoint.exists() {
                "the previous checkpoint is intact; free space (or fix the folder) and continue with `resume`"
            } else {
                "no checkpoint exists yet; free space (or fix the folder) and start again"
            };
            Error::output(
                &opts.files.checkpoint,
                format!("cannot save the checkpoint at step {step} ({e}); {kept}"),
            )
        })
    };
    let mut skipped_total = 0usize;
    while step < cfg.steps {
        if opts.interrupt.load(Ordering::SeqCst) {
            save(&model, &adam, step, last_pos)?;
            return Ok(Outcome::Interrupted { step });
        }
        let batch = loader.next().ok_or_else(|| {
            Error::Data(format!(
                "{}: none of the {} images could be read",
                cfg.data, cfg.dataset_size
            ))
        })?;
        for (p, e) in &batch.skipped {
            skipped_total += 1;
            obs.message(&format!("warning: skipped {}: {e}", p.display()));
        }
        let (losses, grads) = objective.loss_and_grads(&model, cfg, &batch.images, step);
        if !losses.total.is_finite() || grads.0.iter().any(|g| g.iter().any(|v| !v.is_finite())) {
            // Name the checkpoint only if there is one to go back to.
            let advice = if opts.files.checkpoint.exists() {
                format!(
                    "The last good checkpoint ({}) is intact: lower `lr` or the loss weights and continue with `resume`",
                    opts.files.checkpoint.display()
                )
            } else {
                "No checkpoint was written yet, so nothing was saved: lower `lr` or the loss weights and start again".to_string()
            };
            return Err(Error::Diverged(format!(
                "the loss became {} at step {} (content {}, style {}, tv {}); stopping. {advice}",
                losses.total,
                step + 1,
                losses.content,
                losses.style,
                losses.tv
            )));
        }
        adam.lr = cfg.lr_at(step);
        step::apply(&mut model, &mut adam, &grads);
        step += 1;
        done_here += 1;
        last_pos = batch.next;
        let ips = (done_here * cfg.batch_size as u64) as f64 / t0.elapsed().as_secs_f64();
        obs.step(step, cfg.steps, &losses, ips);
        append_jsonl(&opts.files.metrics, &{
            let mut v = serde_json::to_value(losses).expect("serialises");
            v["step"] = step.into();
            v["img_per_s"] = ips.into();
            v["seconds"] = t0.elapsed().as_secs_f64().into();
            v
        })?;
        let ck = step % cfg.checkpoint_every == 0;
        if ck || step == cfg.steps {
            save(&model, &adam, step, last_pos)?;
        }
        if !val_imgs.is_empty() && (step % opts.val_every == 0 || step == cfg.steps) {
            let v = objective.validate(&model, &cfg.loss, &val_imgs);
            append_jsonl(
                &opts.files.metrics,
                &serde_json::json!({"step": step, "val": v}),
            )?;
            obs.message(&format!("step {step}: validation {}", v.describe()));
            preview(&model, objective.teacher(), &val_imgs, &opts.files.preview)?;
        }
        if ck || step == cfg.steps || (!val_imgs.is_empty() && step % opts.val_every == 0) {
            crate::train::plot::loss_curve(&opts.files.metrics, &opts.files.curve)?;
        }
    }
    if skipped_total > 0 {
        obs.message(&format!(
            "warning: {skipped_total} unreadable images were skipped"
        ));
    }
    let mut model = model;
    let train = serde_json::from_value(serde_json::to_value(cfg).expect("serialises"))
        .expect("a training config is a training record");
    let command = if cfg.distill.is_some() {
        "distill"
    } else {
        "train"
    };
    crate::model::provenance::Provenance {
        made_by: format!("impasto {} {command}", env!("CARGO_PKG_VERSION")),
        steps_done: Some(step),
        train: Some(train),
        ..Default::default()
    }
    .to_metadata(&mut model.metadata);
    model.metadata.insert(
        "impasto.loss".into(),
        serde_json::to_string(&cfg.loss).expect("serialises"),
    );
    match objective.teacher() {
        Some(t) => {
            // The teacher's painting hash and thumbnail: the student is the same style.
            for key in ["impasto.style_sha256", crate::styles::THUMBNAIL_KEY] {
                if let Some(v) = t.metadata.get(key) {
                    model.metadata.insert(key.into(), v.clone());
                }
            }
        }
        None => {
            model
                .metadata
                .insert("impasto.style_sha256".into(), cfg.style_sha256.clone());
            // The painting (read successfully at the start of the run) as a small thumbnail.
            match crate::styles::painting_thumbnail(std::path::Path::new(&cfg.style)) {
                Ok(t) => {
                    model
                        .metadata
                        .insert(crate::styles::THUMBNAIL_KEY.into(), t);
                }
                Err(e) => obs.message(&format!("warning: no painting thumbnail in the model: {e}")),
            }
        }
    }
    model.save(&opts.files.model, opts.half)?;
    Ok(Outcome::Finished)
}
