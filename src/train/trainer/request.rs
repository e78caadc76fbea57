//! A training run as a caller asks for it (the CLI's flags, the Python package's
//! arguments): the settings, impasto's defaults and the one range check.
use super::*;

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
    /// Adam's learning rate when styles are added to a base (only their 3,200 norm
    /// numbers train): measured on a three-style base, a style added at 1e-2 was ahead of
    /// a full single-style run of its painting at steps 100–200 and within 8% at 300; at
    /// 1e-3 it reached after 400 steps the loss the full run had after 100.
    pub const LR_ADDED_STYLES: f64 = 1e-2;

    /// The learning rate of a run: `lr` if given, else [`LR`] or, adding styles to a base,
    /// [`LR_ADDED_STYLES`].
    pub fn lr(lr: Option<f64>, adds_styles: bool) -> f64 {
        lr.unwrap_or(if adds_styles { LR_ADDED_STYLES } else { LR })
    }
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
    /// Where the networks run (the transformation network and VGG16; a distilled student
    /// here, its teacher on the CPU).
    pub device: crate::backend::Device,
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
            device: crate::backend::Device::default(),
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

/// `NAME=W,NAME=W,…` (the CLI's `--style-weights`): a style weight per painting.
pub fn parse_style_weights(text: &str) -> std::result::Result<Vec<(String, f64)>, String> {
    let clip = |t: &str| crate::error::clip(t, 80);
    let mut out: Vec<(String, f64)> = Vec::new();
    for part in text.split(',') {
        let Some((name, w)) = part.split_once('=') else {
            return Err(format!(
                "style weights {:?}: expected NAME=WEIGHT,NAME=WEIGHT (got {:?})",
                clip(text),
                clip(part.trim())
            ));
        };
        let name = name.trim();
        let w: f64 = w.trim().parse().map_err(|_| {
            format!(
                "style weights {:?}: the weight of {name:?} is not a number",
                clip(text)
            )
        })?;
        if out.iter().any(|(n, _)| n == name) {
            return Err(format!("style weights: {name:?} is named twice"));
        }
        out.push((name.to_string(), w));
    }
    Ok(out)
}

impl TrainRequest {
    /// Give the paintings named in `weights` their own style weight (the others keep the
    /// run's `loss.style_weight`). A name that is not one of the run's styles is an error
    /// that lists them.
    pub fn set_style_weights(&mut self, weights: &[(String, f64)]) -> Result<()> {
        for (name, w) in weights {
            match self.styles.iter_mut().find(|s| &s.name == name) {
                Some(s) => s.style_weight = Some(*w),
                None => {
                    let names: Vec<&str> = self.styles.iter().map(|s| s.name.as_str()).collect();
                    return Err(Error::Usage(format!(
                        "style weights: no style is named {name:?}; this run's styles: {}",
                        names.join(", ")
                    )));
                }
            }
        }
        Ok(())
    }

    /// The one range check of a training request: its run's settings, the styles' names,
    /// the style size, the learning rate and the loss weights.
    pub fn validate(&self) -> Result<()> {
        self.run.validate()?;
        if self.styles.is_empty() {
            return Err(Error::Usage("no style painting: give at least one".into()));
        }
        for (i, s) in self.styles.iter().enumerate() {
            crate::model::mix::check_name(&s.name)
                .map_err(|m| Error::Usage(format!("{}: {m}", s.path.display())))?;
            if let Some(w) = s.style_weight {
                if !(w.is_finite() && w >= 0.0) {
                    return Err(Error::Usage(format!(
                        "the style weight of {:?} is {w}; it must be a finite number, 0 or more",
                        s.name
                    )));
                }
            }
            if self.styles[..i].iter().any(|o| o.name == s.name) {
                return Err(Error::Usage(format!(
                    "two styles are named {:?} ({}); name them with NAME=FILE",
                    s.name,
                    s.path.display()
                )));
            }
        }
        if self.styles.len() > crate::model::config::MAX_STYLES {
            return Err(Error::Usage(format!(
                "{} styles: one network holds at most {}",
                self.styles.len(),
                crate::model::config::MAX_STYLES
            )));
        }
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

/// A painting to train and the name its style gets in the model.
#[derive(Clone, Debug, PartialEq)]
pub struct StyleSource {
    pub name: String,
    pub path: PathBuf,
    /// This painting's style weight; None: the run's (`loss.style_weight`).
    pub style_weight: Option<f64>,
}

impl StyleSource {
    /// A painting named after its file (see [`crate::model::mix::name_from_path`]).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        StyleSource {
            name: crate::model::mix::name_from_path(&path),
            path,
            style_weight: None,
        }
    }

    /// `FILE` or `NAME=FILE` (a path that exists as given is a file, `=` or not).
    pub fn parse(arg: &str) -> Self {
        match arg.split_once('=') {
            Some((name, file)) if !Path::new(arg).exists() && !name.is_empty() => StyleSource {
                name: name.to_string(),
                path: file.into(),
                style_weight: None,
            },
            _ => StyleSource::new(arg),
        }
    }
}

/// A training run as a caller asks for it (the CLI's `impasto train` flags, the Python
/// package's `impasto.train(...)`): [`run`] turns it into a [`TrainConfig`] and runs it.
#[derive(Clone, Debug)]
pub struct TrainRequest {
    /// The style paintings: one network learns them all (one batch per style in turn;
    /// several make a network of several styles).
    pub styles: Vec<StyleSource>,
    /// Add the styles to this model (a file or a built-in name): only their norm rows
    /// train; every other weight, the model's own styles included, stays as it is.
    pub base: Option<String>,
    /// Longest side the style image is scaled to.
    pub style_size: u32,
    pub lr: f64,
    pub loss: LossConfig,
    pub arch: Arch,
    /// The transformer's forward pass on the exact kernels rather than the fast ones
    /// inference uses (the default: measured in docs/performance.md, about 10% faster per
    /// step at 128² and as good on held-out photos). A resumed run keeps its checkpoint's
    /// choice.
    pub precise: bool,
    /// A run of several styles scales each batch's loss so that every style's gradients
    /// reach the shared weights at the same size ([`super::Balance`]; the default). A
    /// resumed run keeps its checkpoint's choice.
    pub balance: bool,
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
            styles: vec![StyleSource::new(style)],
            base: None,
            style_size: defaults::STYLE_SIZE,
            lr: defaults::LR,
            loss: LossConfig::default(),
            arch: Arch::Johnson,
            precise: false,
            balance: true,
            run: RunSettings::new(data, output),
        }
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
