//! `impasto evaluate` as a library function: how well a model does its style on a set of
//! photos — the perceptual losses of the bare network and of the stylize pipeline, and the
//! artifact measures of `quality` — returned as a struct.

use crate::error::{Error, Result};
use crate::loss::LossConfig;
use crate::model::{Transformer, Vgg16};
use crate::tensor::Tensor;
use crate::train::step::{self, Losses, StyleTarget};
use crate::train::{data, trainer};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// How to evaluate.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// Crop size of the photos (a multiple of 4, at least 16).
    pub image_size: usize,
    /// Longest side of the style image.
    pub style_size: u32,
    /// Score with these weights instead of the model's recorded ones.
    pub style_weight: Option<f64>,
    pub content_weight: Option<f64>,
    /// Mirror margin of the stylize pipeline; `None`: the model's own (see
    /// `StylizeOptions::margin`).
    pub margin: Option<usize>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            image_size: 256,
            style_size: 256,
            style_weight: None,
            content_weight: None,
            margin: None,
        }
    }
}

/// The result of [`evaluate`]; every figure is a mean over the photos.
#[derive(Clone, Debug, Serialize)]
pub struct Evaluation {
    pub photos: usize,
    /// The weights the losses were computed with.
    pub loss_config: LossConfig,
    /// Whether those are the ones recorded in the model (else impasto's defaults or given).
    pub loss_config_recorded: bool,
    /// The bare network's losses.
    pub network: Losses,
    /// The losses of what `stylize` gives (mirror margin and all).
    pub pipeline: Losses,
    /// The mirror margin the pipeline ran with (given, or the model's own).
    pub margin: usize,
    /// Checkerboard measure of the stylized photos and of the photos themselves.
    pub grid_artifact: f64,
    pub grid_artifact_photos: f64,
    /// Border step of the stylized photos and of the photos themselves.
    pub border_artifact: f64,
    pub border_artifact_photos: f64,
    /// Photos that could not be read, with why.
    #[serde(skip)]
    pub skipped: Vec<(PathBuf, String)>,
    /// Folders left out of the scan (link loops, unreadable), one line each.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

impl Evaluation {
    /// As JSON (what `evaluate --json` and the Python package report).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an evaluation serialises")
    }
}

/// Evaluate `model` against the style image `style` on the photos under `photos`.
pub fn evaluate<B: crate::backend::Backend>(
    model: &Transformer<B>,
    model_path: &Path,
    vgg: &Vgg16<B>,
    style: &Path,
    photos: &Path,
    opts: &EvalOptions,
) -> Result<Evaluation> {
    let (mut loss, recorded) = match model.metadata.get("impasto.loss") {
        Some(js) => (
            serde_json::from_str::<LossConfig>(js)
                .map_err(|e| Error::model(model_path, format!("bad impasto.loss metadata: {e}")))?,
            true,
        ),
        None => (LossConfig::default(), false),
    };
    let recorded = recorded && opts.style_weight.is_none() && opts.content_weight.is_none();
    if let Some(w) = opts.style_weight {
        loss.style_weight = w;
    }
    if let Some(w) = opts.content_weight {
        loss.content_weight = w;
    }
    let b = vgg.backend();
    let target = StyleTarget::new(
        vgg,
        &b.upload(&trainer::load_style(style, Some(opts.style_size))?),
    );
    let size = opts.image_size;
    let (mut imgs, mut skipped) = (Vec::new(), Vec::new());
    let scan = data::scan_reporting(photos)?;
    for f in scan.files {
        match data::load_crop(&f, size, None) {
            Ok(v) => imgs.push(Tensor::from_vec(1, 3, size, size, v)),
            Err(e) => skipped.push((f, e.to_string())),
        }
    }
    let network = trainer::validate(model, vgg, &target, &loss, &imgs);
    let (mut grid, mut border, mut grid_photo, mut border_photo) = (0f64, 0f64, 0f64, 0f64);
    let mut pipeline = Losses::default();
    let k = imgs.len().max(1) as f64;
    let stylize = crate::stylize::StylizeOptions {
        margin: opts.margin,
        ..Default::default()
    };
    for x in &imgs {
        let out = crate::stylize::stylize_tensor(model, x, &stylize).expect("nothing cancels it");
        let p = step::losses_of(vgg, &target, &loss, &b.upload(x), &b.upload(&out));
        pipeline.content += p.content / k;
        pipeline.style += p.style / k;
        pipeline.tv += p.tv / k;
        pipeline.total += p.total / k;
        grid += crate::quality::grid_artifact(&out);
        border += crate::quality::border_artifact(&crate::quality::luminance(&out), x.h, x.w);
        grid_photo += crate::quality::grid_artifact(x);
        border_photo += crate::quality::border_artifact(&crate::quality::luminance(x), x.h, x.w);
    }
    // Border: the magnitude of the mean signed step (see `quality::border_artifact`).
    Ok(Evaluation {
        photos: imgs.len(),
        loss_config: loss,
        loss_config_recorded: recorded,
        network,
        pipeline,
        margin: stylize.margin_for(model),
        grid_artifact: grid / k,
        grid_artifact_photos: grid_photo / k,
        border_artifact: (border / k).abs(),
        border_artifact_photos: (border_photo / k).abs(),
        skipped,
        warnings: scan.warnings,
    })
}
