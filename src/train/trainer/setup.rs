//! From a request to a running loop: the VGG16 weights, the photos, the style or the
//! teacher, the checkpoint to resume; the checks that refuse a run before it writes.
use super::*;
use crate::train::distill::StylePainting;

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

/// Freed activations kept for reuse while training (see [`crate::tensor::set_pool_limit`]).
pub const TRAINING_POOL_BYTES: usize = 2 << 30;

/// Set up and run (or, with `resume`, continue) a training run: the output's lock first (so
/// a second run on the same output stops before any work), the VGG16 weights, the photos
/// (skipped folders reported through `obs`), the style, the checkpoint.
pub fn run(req: &TrainRequest, obs: &mut dyn Observer, interrupt: &AtomicBool) -> Result<Outcome> {
    req.validate()?;
    let inputs: Vec<&Path> = req.styles.iter().map(|s| s.path.as_path()).collect();
    let base_path = req.base.as_deref().map(Path::new);
    crate::batch::guard_output(
        &req.run.output,
        &[inputs.as_slice(), base_path.as_slice()].concat(),
    )?;
    refuse_output_inside(&req.run)?;
    let (files, _lock) = lock_output(&req.run.output)?;
    crate::tensor::set_pool_limit(TRAINING_POOL_BYTES);
    let vgg_path = crate::model::vgg::locate(req.run.vgg.as_deref())?;
    let device = &req.run.device;
    // VGG16's first layers hold the largest tensors of a step: 64 channels at full size.
    let (n, s) = (req.run.batch_size as u64, req.run.image_size as u64);
    device.check_fits(
        4 * 64 * n * s * s,
        &format!("a training batch of {n} at {s}²"),
    )?;
    let base = match &req.base {
        Some(b) => Some(load_base(b, &req.styles, req.arch)?),
        None => None,
    };
    let vgg = Vgg16::load_on(device.clone(), &vgg_path)?;
    let data = Inputs::scan(&req.run, obs)?;
    let mut paintings = Vec::new();
    for st in &req.styles {
        paintings.push((
            load_style(&st.path, Some(req.style_size))?,
            sha256_file(&st.path)?,
        ));
    }
    // One style and no base: an ordinary run, recorded as it always was.
    let several = req.styles.len() > 1 || base.is_some();
    let first = &req.styles[0];
    let records = if several {
        req.styles
            .iter()
            .zip(&paintings)
            .map(|(st, (_, sha))| StyleRecord {
                name: st.name.clone(),
                painting: st.path.display().to_string(),
                sha256: sha.clone(),
                style_weight: Some(st.style_weight.unwrap_or(req.loss.style_weight)),
            })
            .collect()
    } else {
        Vec::new()
    };
    let old_rows = base.as_ref().map_or(0, |(m, _)| m.style_count());
    let network = match &base {
        Some((m, _)) => {
            let mut c = m.config.clone();
            c.styles += req.styles.len();
            Some(c)
        }
        None if several => {
            let mut c = TransformerConfig::new(req.arch);
            c.styles = req.styles.len();
            Some(c)
        }
        None => None,
    };
    let cfg = TrainConfig {
        arch: req.arch,
        style: first.path.display().to_string(),
        style_sha256: paintings[0].1.clone(),
        style_size: Some(req.style_size),
        data: req.run.data.display().to_string(),
        dataset_size: data.photos.len(),
        image_size: req.run.image_size,
        batch_size: req.run.batch_size,
        steps: data.steps,
        lr: req.lr,
        // A single painting's own weight (`--style-weights NAME=W`) is the run's.
        loss: LossConfig {
            style_weight: match (several, first.style_weight) {
                (false, Some(w)) => w,
                _ => req.loss.style_weight,
            },
            ..req.loss.clone()
        },
        seed: req.run.seed,
        vgg_convention: vgg.pre.convention.clone(),
        checkpoint_every: req.run.checkpoint_every.max(1),
        network,
        distill: None,
        lr_final: None,
        precise: req.precise,
        // Only shared weights that train have anything to balance.
        balance: req.balance && req.styles.len() > 1 && base.is_none(),
        styles: records,
        base: base.as_ref().map(|(m, sha)| BaseRecord {
            model: req.base.clone().unwrap_or_default(),
            sha256: sha.clone(),
            // Without the thumbnails: the record travels in checkpoints and provenance.
            styles: m
                .styles()
                .into_iter()
                .map(|e| crate::model::StyleEntry {
                    thumbnail: None,
                    ..e
                })
                .collect(),
        }),
    };
    let resume = checkpoint_to_resume(&files, req.run.resume)?;
    let names: Vec<String> = req.styles.iter().map(|s| s.name.clone()).collect();
    obs.message(&format!(
        "training {:?} on {} photos ({} steps of {}, {}²), {} {}{}, VGG {} ({})",
        cfg.arch,
        data.photos.len(),
        data.steps,
        cfg.batch_size,
        cfg.image_size,
        if names.len() > 1 { "styles" } else { "style" },
        if several {
            names.join(", ")
        } else {
            first.path.display().to_string()
        },
        match &req.base {
            Some(b) =>
                format!(" added to {b} (its {old_rows} styles and every shared weight frozen)"),
            None => String::new(),
        },
        vgg_path.display(),
        cfg.vgg_convention
    ));
    let mut opts = run_options(&req.run, &cfg, data.val, files, resume, interrupt);
    opts.start = base.map(|(m, _)| m.with_new_styles(req.styles.len()));
    let targets = paintings
        .iter()
        .enumerate()
        .map(|(i, (img, _))| Painting {
            row: old_rows + i,
            target: StyleTarget::new(&vgg, &device.upload(img)),
            loss: cfg.loss_of(i),
        })
        .collect();
    train(
        &cfg,
        &Objective::Perceptual { vgg: &vgg, targets },
        data.photos,
        opts,
        obs,
    )
}

/// The model a run adds styles to (a file or a built-in name) and its SHA-256: its
/// architecture is the run's, and no new style takes one of its styles' names.
fn load_base(base: &str, styles: &[StyleSource], arch: Arch) -> Result<(Transformer, String)> {
    let model = crate::styles::resolve(base)?;
    let sha = model_sha256(base)?;
    if model.config.arch != arch {
        let a = format!("{:?}", model.config.arch).to_lowercase();
        return Err(Error::Usage(format!(
            "{base}: a {a} network; train with `--arch {a}` to add styles to it"
        )));
    }
    let own = model.style_names();
    if let Some(s) = styles.iter().find(|s| own.contains(&s.name)) {
        return Err(Error::Usage(format!(
            "{base} already has a style named {:?}; name the new one with NAME=FILE",
            s.name
        )));
    }
    if own.len() + styles.len() > crate::model::config::MAX_STYLES {
        return Err(Error::Usage(format!(
            "{base} holds {} styles: one network holds at most {}",
            own.len(),
            crate::model::config::MAX_STYLES
        )));
    }
    Ok((model, sha))
}

/// The photos of a run and how many steps it takes.
pub(super) struct Inputs {
    photos: Vec<PathBuf>,
    val: Option<Vec<PathBuf>>,
    steps: u64,
}

impl Inputs {
    /// The run's photos (skipped folders reported through `obs`) and its length; the
    /// settings are already validated.
    fn scan(run: &RunSettings, obs: &mut dyn Observer) -> Result<Self> {
        let mut scan = |dir: &Path| -> Result<Vec<PathBuf>> {
            let s = crate::train::data::scan_reporting(dir)?;
            for w in &s.warnings {
                obs.message(&format!("warning: {w}"));
            }
            Ok(s.files)
        };
        let photos = scan(&run.data)?;
        let val = match &run.val {
            Some(d) => Some(scan(d)?),
            None => None,
        };
        let per_epoch = photos.len().div_ceil(run.batch_size) as u64;
        let epochs = run.epochs.unwrap_or(defaults::EPOCHS);
        let steps = run.steps.unwrap_or(per_epoch * epochs);
        Ok(Inputs { photos, val, steps })
    }
}

/// A run writes its previews and loss plot beside its model: inside a photo folder they
/// would become training photos (and change the photo count a resume checks), so that is
/// refused before anything is written.
pub(super) fn refuse_output_inside(run: &RunSettings) -> Result<()> {
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
pub(super) fn run_identity_differs(ck: &TrainConfig, cfg: &TrainConfig) -> Option<&'static str> {
    // The paintings, without their style weights: a loss weight is a setting a resumed run
    // may change (as `--style-weight` is), and checkpoints from before per-style weights
    // record none.
    let paintings = |c: &TrainConfig| {
        c.styles
            .iter()
            .map(|s| (s.name.clone(), s.painting.clone(), s.sha256.clone()))
            .collect::<Vec<_>>()
    };
    let teacher = |c: &TrainConfig| {
        c.distill.as_ref().map(|d| {
            let each: Vec<&str> = d
                .style_paintings
                .iter()
                .map(|p| p.sha256.as_str())
                .collect();
            (
                d.teacher_sha256.clone(),
                d.teacher_row.clone(),
                d.painting_sha256.clone(),
                each.join(","),
            )
        })
    };
    // A twin of a teacher of several styles begun before their paintings entered its loss.
    let without_paintings = |c: &TrainConfig| {
        c.distill
            .as_ref()
            .map(|d| (d.teacher_sha256.clone(), d.style_paintings.is_empty()))
    };
    let began_without = matches!(
        (without_paintings(ck), without_paintings(cfg)),
        (Some((a, true)), Some((b, false))) if a == b
    );
    [
        (
            began_without,
            "teacher's loss: it ran without the paintings of the teacher's styles (`--loss-weight 0` continues it as it was)",
        ),
        // (a distillation's style_sha256 is its teacher's: name the teacher first)
        (teacher(ck) != teacher(cfg), "teacher or teacher's painting"),
        (ck.style_sha256 != cfg.style_sha256, "style"),
        (paintings(ck) != paintings(cfg), "set of styles"),
        (ck.base != cfg.base, "base model"),
        (ck.arch != cfg.arch || ck.network != cfg.network, "network"),
        (ck.image_size != cfg.image_size, "image size"),
        (ck.batch_size != cfg.batch_size, "batch size"),
        (ck.seed != cfg.seed, "seed"),
    ]
    .into_iter()
    .find_map(|(differs, what)| differs.then_some(what))
}

/// Set up and run (or continue) a distillation run; the order of checks is `run`'s.
pub fn distill(
    req: &DistillRequest,
    obs: &mut dyn Observer,
    interrupt: &AtomicBool,
) -> Result<Outcome> {
    req.run.validate()?;
    crate::batch::guard_output(&req.run.output, &[Path::new(&req.teacher)])?;
    refuse_output_inside(&req.run)?;
    let (files, _lock) = lock_output(&req.run.output)?;
    crate::tensor::set_pool_limit(TRAINING_POOL_BYTES);
    let (teacher, teacher_sha256) = (
        crate::styles::resolve(&req.teacher)?,
        model_sha256(&req.teacher)?,
    );
    req.network
        .validate()
        .map_err(|m| Error::Usage(format!("student network: {m}")))?;
    // The student holds the teacher's styles.
    let mut network = req.network.clone();
    network.styles = teacher.style_count();
    if !(0.0..=1.0).contains(&req.loss_from) {
        return Err(Error::Usage(format!(
            "the teacher's loss starts at a fraction of the run from 0 to 1, not {}",
            req.loss_from
        )));
    }
    let provenance =
        crate::model::provenance::Provenance::from_metadata(&teacher.metadata).and_then(|p| p.ok());
    let record = provenance.as_ref().and_then(|p| p.train.as_ref());
    // The teacher's own painting and its SHA-256: for a style of a network of several (a
    // built-in row), that style's, not the painting the network's run names first.
    let several = teacher.style_count() > 1;
    let recorded = |k: &str| record.and_then(|t| t.other.get(k)).and_then(|v| v.as_str());
    let (own_painting, own_sha256) = match teacher.styles().as_slice() {
        [own] if !several => (
            own.painting.clone(),
            own.sha256
                .clone()
                .or_else(|| recorded("style_sha256").map(str::to_string)),
        ),
        _ => (None, None),
    };
    if several && req.painting.is_some() {
        return Err(Error::Usage(format!(
            "{} holds {} styles, each with the painting it records: `style` names one painting, so give none",
            req.teacher,
            teacher.style_count()
        )));
    }
    let painting: Option<(PathBuf, String)> = if req.loss_weight == 0.0 || several {
        None
    } else if let Some(p) = &req.painting {
        Some((p.clone(), sha256_file(p)?))
    } else {
        match own_painting.as_deref().map(PathBuf::from) {
            Some(p) if p.is_file() => {
                let sha = sha256_file(&p)?;
                if own_sha256.as_deref().is_some_and(|want| want != sha) {
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
    let style_paintings = if several && req.loss_weight > 0.0 {
        style_paintings(&teacher, &req.teacher, obs)?
    } else {
        Vec::new()
    };
    let vgg = if req.perceptual_weight > 0.0 || painting.is_some() || !style_paintings.is_empty() {
        Some(Vgg16::load(&crate::model::vgg::locate(
            req.run.vgg.as_deref(),
        )?)?)
    } else {
        None
    };
    let data = Inputs::scan(&req.run, obs)?;
    let style_size = record
        .and_then(|t| t.other.get("style_size"))
        .and_then(|v| v.as_u64())
        .unwrap_or(256) as u32;
    let mut johnson = Vec::new();
    if let Some(v) = &vgg {
        if let Some((p, _)) = &painting {
            let img = load_style(p, Some(style_size))?;
            johnson.push((StyleTarget::new(v, &img), teacher_loss(&teacher)));
        }
        let entries = teacher.styles();
        for (sp, entry) in style_paintings.iter().zip(&entries) {
            let img = load_style(Path::new(&sp.painting), Some(style_size))?;
            let mut loss = teacher_loss(&teacher);
            if let Some(w) = entry.style_weight {
                loss.style_weight = w;
            }
            johnson.push((StyleTarget::new(v, &img), loss));
        }
    }
    let dcfg = DistillConfig {
        teacher: req.teacher.clone(),
        teacher_sha256: teacher_sha256.clone(),
        teacher_row: crate::styles::row_of(&req.teacher).map(|(_, row)| row.to_string()),
        pixel_weight: req.pixel_weight,
        perceptual_weight: req.perceptual_weight,
        stability_weight: req.stability_weight,
        noise_sigma: req.noise_sigma,
        loss_weight: if johnson.is_empty() {
            0.0
        } else {
            req.loss_weight
        },
        loss_from: req.loss_from,
        style_scale: req.style_scale,
        painting: painting.as_ref().map(|(p, _)| p.display().to_string()),
        painting_sha256: painting.as_ref().map(|(_, s)| s.clone()),
        style_paintings,
    };
    let painting_name = own_painting.or_else(|| recorded("style").map(str::to_string));
    let cfg = TrainConfig {
        arch: network.arch,
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
        network: Some(network.clone()),
        distill: Some(dcfg.clone()),
        lr_final: req.lr_final,
        styles: Vec::new(),
        base: None,
        // A distilled student is small (Winograd needs 16 channels): the exact kernels.
        precise: true,
        balance: false,
    };
    let resume = checkpoint_to_resume(&files, req.run.resume)?;
    obs.message(&format!(
        "distilling {} into {:?}-{:?} with {} residual blocks ({} parameters, {:.1}x fewer FLOPs) on {} photos ({} steps of {}, {}²)",
        req.teacher,
        network.arch,
        network.channels,
        network.res_blocks,
        network.plan().param_count(),
        teacher.flops(256, 256) / network.plan().flops(256, 256),
        data.photos.len(),
        data.steps,
        cfg.batch_size,
        cfg.image_size
    ));
    let opts = run_options(&req.run, &cfg, data.val, files, resume, interrupt);
    let d = Distiller::new(teacher, vgg, dcfg, johnson);
    train(&cfg, &Objective::Distill(&d), data.photos, opts, obs)
}

/// The paintings of a teacher of several styles, each as its `impasto.styles` entry records
/// it, for the teacher's loss; none (with a warning naming the missing ones) unless every
/// style's painting is at hand and is the file it was trained on.
fn style_paintings(
    teacher: &Transformer,
    name: &str,
    obs: &mut dyn Observer,
) -> Result<Vec<StylePainting>> {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for e in teacher.styles() {
        let at_hand = match (&e.painting, &e.sha256) {
            (Some(p), want) if Path::new(p).is_file() => {
                let sha = sha256_file(Path::new(p))?;
                if want.as_ref().is_some_and(|w| *w != sha) {
                    None
                } else {
                    Some(StylePainting {
                        style: e.name.clone(),
                        painting: p.clone(),
                        sha256: sha,
                    })
                }
            }
            _ => None,
        };
        match at_hand {
            Some(p) => found.push(p),
            None => missing.push(format!(
                "{} ({})",
                e.name,
                e.painting.as_deref().unwrap_or("not recorded")
            )),
        }
    }
    if missing.is_empty() {
        obs.message(&format!(
            "{name} holds {} styles: the twin learns each from the teacher's output and, later in the run, against that style's painting",
            found.len()
        ));
        return Ok(found);
    }
    obs.message(&format!(
        "warning: the paintings of {name}'s styles {} are not at hand (or not the files they were trained on); distilling with the pixel terms only (softer texture)",
        missing.join(", ")
    ));
    Ok(Vec::new())
}

/// The loss weights a model records (so a student is scored like its teacher).
pub(super) fn teacher_loss(m: &Transformer) -> LossConfig {
    m.metadata
        .get("impasto.loss")
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default()
}

/// The loop's options from a run's settings (the same for `train` and `distill`).
fn run_options<'a>(
    run: &RunSettings,
    cfg: &TrainConfig,
    val: Option<Vec<PathBuf>>,
    files: RunFiles,
    resume: Option<Checkpoint>,
    interrupt: &'a AtomicBool,
) -> RunOptions<'a> {
    RunOptions {
        val,
        val_every: run.val_every.unwrap_or(cfg.checkpoint_every).max(1),
        files,
        resume,
        half: run.half,
        interrupt,
        device: run.device.clone(),
        start: None,
    }
}
