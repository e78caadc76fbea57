//! The training loop: Johnson's recipe with checkpoints, exact resume, validation,
//! previews, a metrics log and clean interruption.
//!
//! - `request`: a run as a caller asks for it, impasto's defaults, the one range check;
//! - `setup`: from a request to a running loop ([`run`] for `train`, [`distill`]);
//! - `files`: the lock, the checkpoint, the metrics log beside the model;
//! - `metrics`: validation losses and preview grids;
//! - here: the configuration a checkpoint records and the loop itself ([`train`]).

use crate::backend::{Backend, Device};
use crate::error::{Error, Result};
use crate::loss::LossConfig;
use crate::model::format::TensorFile;
use crate::model::transformer::Grads;
use crate::model::{Arch, Transformer, TransformerConfig, Vgg16};
use crate::tensor::Tensor;
use crate::train::data::{self, DataPos, Loader};
use crate::train::distill::{DistillConfig, Distiller};
use crate::train::step::{self, Losses, Optimizer, StyleTarget};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

mod balance;
mod files;
mod metrics;
mod request;
mod setup;

pub use balance::Balance;
use files::{append_jsonl, checkpoint_to_resume, lock_output, truncate_metrics};
pub use files::{model_sha256, sha256_file, Checkpoint, RunFiles, RunLock};
use metrics::mean;
pub use metrics::{preview, validate};
pub use request::{
    defaults, parse_style_weights, DistillRequest, RunSettings, StyleSource, TrainRequest,
};
use setup::run_identity_differs;
pub use setup::{distill, load_style, run, TRAINING_POOL_BYTES};

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
    /// The paintings of a run of several styles (or one added to a base), in the order
    /// the batches take them; empty for an ordinary single-style run (`style`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub styles: Vec<StyleRecord>,
    /// The model the styles are added to: only their norm rows train.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseRecord>,
    /// The transformer's forward pass ran on the exact kernels rather than the fast ones
    /// (`--exact`). Runs from before the setting existed were all precise.
    #[serde(default = "precise_before_the_setting")]
    pub precise: bool,
    /// A run of several styles scales each batch's loss so that every style's gradients
    /// reach the shared weights at the same size ([`Balance`]). Runs from before the
    /// setting existed did not.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub balance: bool,
}

fn precise_before_the_setting() -> bool {
    true
}

/// A painting of a run of several styles.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StyleRecord {
    pub name: String,
    pub painting: String,
    pub sha256: String,
    /// This painting's style weight (`--style-weights`); None: the run's `loss.style_weight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub style_weight: Option<f64>,
}

/// The model a run adds styles to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BaseRecord {
    pub model: String,
    pub sha256: String,
    /// Its styles: rows `0..styles.len()` of the new model are its own, frozen.
    pub styles: Vec<crate::model::StyleEntry>,
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

    /// Whether parameter `id` of the network learns in this run: all of them, except in a
    /// run that adds styles to a base, where only the new styles' norm rows do.
    pub fn trains(&self, plan: &crate::model::plan::Plan, id: usize) -> bool {
        match &self.base {
            None => true,
            Some(b) => plan.params[id].style.is_some_and(|k| k >= b.styles.len()),
        }
    }

    /// The name of every style row of the network this run trains.
    pub fn style_names(&self) -> Vec<String> {
        if self.styles.is_empty() {
            return vec![crate::model::mix::name_from_path(Path::new(&self.style))];
        }
        let base = self
            .base
            .iter()
            .flat_map(|b| b.styles.iter().map(|s| s.name.clone()));
        base.chain(self.styles.iter().map(|s| s.name.clone()))
            .collect()
    }

    /// The styles a finished run's model lists: the base's, then the run's own (with their
    /// paintings' thumbnails and the batches each took over `steps`); warnings for
    /// thumbnails that could not be made.
    fn style_entries(&self, steps: u64) -> (Vec<crate::model::StyleEntry>, Vec<String>) {
        let mut warnings = Vec::new();
        let mut list: Vec<_> = self.base.iter().flat_map(|b| b.styles.clone()).collect();
        // The base's thumbnails, from the base itself when it is still the same model.
        if let Some(b) = &self.base {
            let same = crate::styles::resolve(&b.model).ok().filter(|m| {
                model_sha256(&b.model).is_ok_and(|sha| sha == b.sha256)
                    && m.style_count() == b.styles.len()
            });
            match same {
                Some(m) => {
                    for (e, t) in list.iter_mut().zip(m.styles()) {
                        e.thumbnail = t.thumbnail;
                    }
                }
                None => warnings.push(format!(
                    "{} is not the base this run started from any more: its styles keep no thumbnails",
                    b.model
                )),
            }
        }
        let n = self.styles.len() as u64;
        for (i, s) in self.styles.iter().enumerate() {
            let thumbnail = match crate::styles::painting_thumbnail(Path::new(&s.painting)) {
                Ok(t) => Some(t),
                Err(e) => {
                    warnings.push(format!("no thumbnail for style {}: {e}", s.name));
                    None
                }
            };
            list.push(crate::model::StyleEntry {
                name: s.name.clone(),
                painting: Some(s.painting.clone()),
                sha256: Some(s.sha256.clone()),
                thumbnail,
                steps: Some(steps / n + u64::from((i as u64) < steps % n)),
                style_weight: Some(s.style_weight.unwrap_or(self.loss.style_weight)),
            });
        }
        (list, warnings)
    }

    /// The loss weights of the run's painting `i` (its recorded style weight, else the
    /// run's).
    pub fn loss_of(&self, i: usize) -> LossConfig {
        LossConfig {
            style_weight: self
                .styles
                .get(i)
                .and_then(|r| r.style_weight)
                .unwrap_or(self.loss.style_weight),
            ..self.loss.clone()
        }
    }

    /// The network this run trains.
    pub fn network(&self) -> TransformerConfig {
        self.network
            .clone()
            .unwrap_or_else(|| TransformerConfig::new(self.arch))
    }
}

/// One painting of a run: the style row it trains, its Gram targets and its loss weights
/// (a run of several styles may weight each painting's style term differently).
pub struct Painting {
    pub row: usize,
    pub target: StyleTarget<Device>,
    pub loss: LossConfig,
}

/// What a run trains the network to minimise.
pub enum Objective<'a> {
    /// Johnson's perceptual loss: content, style (against the painting's Grams), TV.
    /// Several styles: one target per style row of the network, the batches taking them
    /// in turn.
    Perceptual {
        vgg: &'a Vgg16<Device>,
        targets: Vec<Painting>,
    },
    /// Reproduce a teacher network (`impasto distill`).
    Distill(&'a Distiller),
}

impl Objective<'_> {
    /// The losses of batch `step` (0-based) of `steps`, their gradient (on the device) with
    /// the loss scaled by `k` ([`Balance`]; the losses returned are unscaled), the norm of
    /// the shared weights' gradient and whether every gradient is finite: one readback.
    fn loss_and_grads(
        &self,
        model: &Transformer<Device>,
        cfg: &TrainConfig,
        x: &Tensor,
        step: u64,
        k: f64,
    ) -> std::result::Result<(Losses, Grads<Device>, f64, bool), crate::backend::DeviceError> {
        let b = model.backend();
        let (losses, grads, sums) = match self {
            Objective::Perceptual { vgg, targets } => {
                let p = &targets[self.painting_at(step)];
                let x = b.upload(x);
                let scaled;
                let loss = if k == 1.0 {
                    &p.loss
                } else {
                    scaled = LossConfig {
                        content_weight: p.loss.content_weight * k,
                        style_weight: p.loss.style_weight * k,
                        tv_weight: p.loss.tv_weight * k,
                        ..p.loss.clone()
                    };
                    &scaled
                };
                let (pending, grads) =
                    step::loss_and_grads(model, vgg, &p.target, loss, &x, cfg.precise);
                let (losses, sums) = pending.read(b, &grads.sum_squares(b))?;
                let losses = if k == 1.0 {
                    losses
                } else {
                    losses.scaled(1.0 / k)
                };
                (losses, grads, sums)
            }
            Objective::Distill(d) => {
                let on = d.teacher_loss_at(step, cfg.steps);
                let (l, g) = d.loss(model, x, cfg.seed ^ step, true, on);
                let g = g.expect("gradients were asked for");
                let sums = b.read_scalars(&g.sum_squares(b).iter().collect::<Vec<_>>())?;
                (l, g, sums)
            }
        };
        let finite = sums.iter().all(|v| v.is_finite());
        // `sums` holds one entry per gradient present, in parameter order.
        let present = grads.0.iter().enumerate().filter(|(_, g)| g.is_some());
        let shared: f64 = present
            .zip(&sums)
            .filter(|((id, _), _)| model.plan().params[*id].style.is_none())
            .map(|(_, s)| s)
            .sum();
        Ok((losses, grads, shared.sqrt(), finite))
    }

    /// The painting batch `step` trains (its index among the run's): the batches take them
    /// in turn, a distillation run the teacher's styles.
    fn painting_at(&self, step: u64) -> usize {
        (step % self.paintings() as u64) as usize
    }

    /// The number of paintings the batches take in turn (a distillation run: the teacher's
    /// styles, which the student holds too).
    fn paintings(&self) -> usize {
        match self {
            Objective::Perceptual { targets, .. } => targets.len(),
            Objective::Distill(d) => d.teacher.style_count(),
        }
    }

    /// The style row batch `step` trains.
    fn style_at(&self, step: u64) -> usize {
        match self {
            Objective::Perceptual { targets, .. } => targets[self.painting_at(step)].row,
            Objective::Distill(_) => self.painting_at(step),
        }
    }

    /// Mean losses over validation crops (fixed noise; every term a run can have), and
    /// with several styles each trained row's own (by row).
    fn validate(
        &self,
        model: &Transformer<Device>,
        imgs: &[Tensor],
    ) -> (Losses, Vec<(usize, Losses)>) {
        match self {
            Objective::Perceptual { vgg, targets } => {
                let per: Vec<(usize, Losses)> = targets
                    .iter()
                    .map(|p| {
                        let mut m = model.clone();
                        m.set_style(p.row);
                        (p.row, validate(&m, vgg, &p.target, &p.loss, imgs))
                    })
                    .collect();
                let all = mean(per.iter().map(|(_, l)| *l));
                (all, if per.len() > 1 { per } else { Vec::new() })
            }
            Objective::Distill(d) => {
                let per: Vec<(usize, Losses)> = (0..d.teacher.style_count())
                    .map(|k| {
                        let mut m = model.clone();
                        m.set_style(k);
                        let l = mean(
                            imgs.iter()
                                .enumerate()
                                .map(|(i, x)| d.loss(&m, x, i as u64, false, true).0),
                        );
                        (k, l)
                    })
                    .collect();
                let all = mean(per.iter().map(|(_, l)| *l));
                (all, if per.len() > 1 { per } else { Vec::new() })
            }
        }
    }

    /// The style rows a preview shows (one row of pictures each).
    fn rows(&self) -> Vec<usize> {
        match self {
            Objective::Perceptual { targets, .. } => targets.iter().map(|p| p.row).collect(),
            Objective::Distill(d) => (0..d.teacher.style_count()).collect(),
        }
    }

    fn teacher(&self) -> Option<&Transformer> {
        match self {
            Objective::Perceptual { .. } => None,
            Objective::Distill(d) => Some(&d.teacher),
        }
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
    /// Where the network trains.
    pub device: Device,
    /// The network a fresh run starts from (a base with rows for the styles it adds);
    /// None: a freshly initialised one.
    pub start: Option<Transformer>,
}

#[derive(Debug)]
pub enum Outcome {
    Finished,
    Interrupted { step: u64 },
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
    // A resumed run keeps the kernels and the balancing its checkpoint was made with:
    // exact resume.
    let kept;
    let cfg = match &opts.resume {
        Some(ck) if ck.config.precise != cfg.precise || ck.config.balance != cfg.balance => {
            let (c, kernels, balanced) = (
                &ck.config,
                ["the fast", "the exact (--exact)"],
                ["did not balance", "balanced"],
            );
            if c.precise != cfg.precise {
                obs.message(&format!(
                    "the checkpoint was made with {} kernels: continuing with them",
                    kernels[usize::from(c.precise)]
                ));
            }
            if c.balance != cfg.balance {
                obs.message(&format!(
                    "the checkpoint's run {} the styles' gradients: continuing so",
                    balanced[usize::from(c.balance)]
                ));
            }
            kept = TrainConfig {
                precise: ck.config.precise,
                balance: ck.config.balance,
                ..cfg.clone()
            };
            &kept
        }
        _ => cfg,
    };
    let device = opts.device.clone();
    let (mut model, mut adam, mut step, pos, mut balance) = match opts.resume {
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
            let balance = match ck.balance.norms.len() {
                0 => Balance::new(objective.paintings()),
                _ => ck.balance,
            };
            (
                ck.model.to_backend(device.clone()),
                Optimizer::from_host(&ck.adam, &device),
                ck.step,
                ck.data,
                balance,
            )
        }
        None => {
            let mut m = match opts.start {
                Some(m) => m,
                None => Transformer::init(cfg.network(), cfg.seed),
            };
            if let Objective::Distill(d) = objective {
                d.warm_start(&mut m);
            }
            (
                m.to_backend(device.clone()),
                Optimizer::new(cfg.lr),
                0,
                DataPos::default(),
                Balance::new(objective.paintings()),
            )
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
    // The device's parameters and Adam moments come to the host here only.
    let save = |model: &Transformer<Device>,
                adam: &Optimizer<Device>,
                balance: &Balance,
                step: u64,
                data: DataPos|
     -> Result<()> {
        Checkpoint {
            config: cfg.clone(),
            model: model.to_backend(crate::backend::Cpu),
            adam: adam.to_host(&device),
            balance: balance.clone(),
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
            save(&model, &adam, &balance, step, last_pos)?;
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
        // Name the checkpoint only if there is one to go back to.
        let last_good = || {
            opts.files
                .checkpoint
                .exists()
                .then(|| opts.files.checkpoint.display().to_string())
        };
        model.set_style(objective.style_at(step));
        let painting = objective.painting_at(step);
        let k = if cfg.balance {
            balance.scale(painting)
        } else {
            1.0
        };
        let (losses, grads, shared_norm, finite) = objective
            .loss_and_grads(&model, cfg, &batch.images, step, k)
            .map_err(|e| {
                let kept = match last_good() {
                    Some(c) => {
                        format!("the last checkpoint ({c}) is intact: continue with `resume`")
                    }
                    None => "no checkpoint was written yet".to_string(),
                };
                Error::Device(format!("{e} at step {}; {kept}", step + 1))
            })?;
        if !losses.total.is_finite() || !finite {
            let advice = match last_good() {
                Some(c) => format!(
                    "The last good checkpoint ({c}) is intact: lower `lr` or the loss weights and continue with `resume`"
                ),
                None => "No checkpoint was written yet, so nothing was saved: lower `lr` or the loss weights and start again".to_string(),
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
        if cfg.balance {
            balance.observe(painting, shared_norm, k);
        }
        adam.lr = cfg.lr_at(step);
        let mut grads = grads;
        if cfg.base.is_some() {
            // Adding styles to a base: every other weight stays exactly as it was.
            for (id, g) in grads.0.iter_mut().enumerate() {
                if !cfg.trains(model.plan(), id) {
                    *g = None;
                }
            }
        }
        step::apply(&mut model, &mut adam, &grads);
        step += 1;
        done_here += 1;
        last_pos = batch.next;
        let ips = (done_here * cfg.batch_size as u64) as f64 / t0.elapsed().as_secs_f64();
        obs.step(step, cfg.steps, &losses, ips);
        append_jsonl(&opts.files.metrics, &{
            let mut v = serde_json::to_value(losses).expect("serialises");
            v["step"] = step.into();
            // The shared weights' gradient, as the loss (unscaled) gives it.
            v["grad_norm"] = (shared_norm / k).into();
            if cfg.balance {
                v["scale"] = k.into();
            }
            v["img_per_s"] = ips.into();
            v["seconds"] = t0.elapsed().as_secs_f64().into();
            v
        })?;
        let ck = step % cfg.checkpoint_every == 0;
        if ck || step == cfg.steps {
            save(&model, &adam, &balance, step, last_pos)?;
        }
        if !val_imgs.is_empty() && (step % opts.val_every == 0 || step == cfg.steps) {
            let (v, per) = objective.validate(&model, &val_imgs);
            let mut record = serde_json::json!({"step": step, "val": v});
            if !per.is_empty() {
                let names = match objective {
                    Objective::Perceptual { .. } => cfg.style_names(),
                    Objective::Distill(d) => d.teacher.style_names(),
                };
                record["val_styles"] = per
                    .iter()
                    .map(|(row, l)| {
                        (
                            names[*row].clone(),
                            serde_json::to_value(l).expect("serialises"),
                        )
                    })
                    .collect::<serde_json::Map<_, _>>()
                    .into();
            }
            append_jsonl(&opts.files.metrics, &record)?;
            obs.message(&format!("step {step}: validation {}", v.describe()));
            preview(
                &model,
                &objective.rows(),
                objective.teacher(),
                &val_imgs,
                &opts.files.preview,
            )?;
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
    model.sync_host();
    let mut train: crate::model::provenance::TrainRecord =
        serde_json::from_value(serde_json::to_value(cfg).expect("serialises"))
            .expect("a training config is a training record");
    if !cfg.precise && model.backend().bf16_products() {
        // The fast kernels multiplied in bfloat16 (the loss network, the residual blocks) on
        // the machine that wrote this model (a CPU with AMX).
        train.other.insert("bf16_products".into(), true.into());
    }
    let command = if cfg.distill.is_some() {
        "distill"
    } else {
        "train"
    };
    let provenance = crate::model::provenance::Provenance {
        made_by: format!("impasto {} {command}", env!("CARGO_PKG_VERSION")),
        steps_done: Some(step),
        train: Some(train),
        ..Default::default()
    };
    provenance.to_metadata(&mut model.metadata);
    model.metadata.insert(
        crate::model::mix::LOSS_KEY.into(),
        serde_json::to_string(&cfg.loss).expect("serialises"),
    );
    match objective.teacher() {
        Some(t) if t.style_count() > 1 => {
            model
                .set_styles(&t.styles())
                .map_err(|m| Error::Usage(format!("styles: {m}")))?;
        }
        Some(t) => {
            // The teacher's painting hash and thumbnail: the student is the same style.
            for key in ["impasto.style_sha256", crate::styles::THUMBNAIL_KEY] {
                if let Some(v) = t.metadata.get(key) {
                    model.metadata.insert(key.into(), v.clone());
                }
            }
        }
        None if !cfg.styles.is_empty() => {
            let (list, warnings) = cfg.style_entries(step);
            for w in warnings {
                obs.message(&format!("warning: {w}"));
            }
            model
                .set_styles(&list)
                .map_err(|m| Error::Usage(format!("styles: {m}")))?;
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
