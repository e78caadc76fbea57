//! One training step's mathematics: the perceptual loss of a batch and its gradient with
//! respect to every transformer parameter, and the optimiser update. Generic over the
//! backend: the batch, the network's output and every activation stay on it.

use crate::backend::Backend;
use crate::loss::{self, LossConfig};
use crate::model::transformer::Grads;
use crate::model::{Transformer, Vgg16};
use serde::{Deserialize, Serialize};

pub use crate::train::adam::Adam;

/// The style image's Gram matrices at the four taps.
#[derive(Clone, Debug)]
pub struct StyleTarget {
    pub grams: Vec<Vec<f32>>,
}

impl StyleTarget {
    pub fn new<B: Backend>(vgg: &Vgg16<B>, style: &B::Tensor) -> Self {
        let b = vgg.backend();
        let grams = vgg
            .forward(style)
            .iter()
            .map(|f| {
                // Average over the style batch (normally one image).
                let per = loss::gram_batch(b, f);
                let mut g = vec![0.0f32; per[0].len()];
                for p in &per {
                    g.iter_mut()
                        .zip(p)
                        .for_each(|(a, b)| *a += b / per.len() as f32);
                }
                g
            })
            .collect();
        StyleTarget { grams }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Losses {
    pub content: f64,
    pub style: f64,
    pub tv: f64,
    /// Distillation: mean squared pixel difference from the teacher (weighted).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pixel: f64,
    /// Distillation: VGG relu1_2 feature distance from the teacher's output (weighted).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub perceptual: f64,
    /// Distillation: the noisy photo's pixel loss against the teacher's clean output.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stability: f64,
    pub total: f64,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

impl Losses {
    /// One line for progress displays: the terms the run has.
    pub fn describe(&self) -> String {
        if self.pixel > 0.0 || self.stability > 0.0 {
            format!(
                "loss {:.3e} (pixel {:.3e} perceptual {:.3e} stability {:.3e} content {:.3e} style {:.3e})",
                self.total, self.pixel, self.perceptual, self.stability, self.content, self.style
            )
        } else {
            format!(
                "loss {:.3e} (content {:.3e} style {:.3e} tv {:.3e})",
                self.total, self.content, self.style, self.tv
            )
        }
    }
}

/// The three losses of one batch of content images (RGB 0..255).
pub fn losses<B: Backend>(
    model: &Transformer<B>,
    vgg: &Vgg16<B>,
    target: &StyleTarget,
    cfg: &LossConfig,
    x: &B::Tensor,
) -> Losses {
    losses_of(vgg, target, cfg, x, &model.forward_batch(x))
}

/// The three losses of outputs `y` for content images `x` (however `y` was made: the bare
/// network, the stylize pipeline with its margin, another engine).
pub fn losses_of<B: Backend>(
    vgg: &Vgg16<B>,
    target: &StyleTarget,
    cfg: &LossConfig,
    x: &B::Tensor,
    y: &B::Tensor,
) -> Losses {
    let b = vgg.backend();
    let fy = vgg.forward(y);
    let (fc, _) = vgg.forward_train(x, cfg.content_tap);
    let (c, _) = loss::content(
        b,
        &fy[cfg.content_tap],
        &fc[cfg.content_tap],
        cfg.content_weight,
    );
    let s: f64 = (0..4)
        .map(|t| loss::style(b, &fy[t], &target.grams[t], cfg.style_weight).0)
        .sum();
    let (t, _) = loss::tv(b, y, cfg.tv_weight);
    Losses {
        content: c,
        style: s,
        tv: t,
        total: c + s + t,
        ..Default::default()
    }
}

/// Losses and d(total)/d(parameter) for one batch.
pub fn loss_and_grads<B: Backend>(
    model: &Transformer<B>,
    vgg: &Vgg16<B>,
    target: &StyleTarget,
    cfg: &LossConfig,
    x: &B::Tensor,
) -> (Losses, Grads) {
    let (y, tape) = model.forward_train(x);
    let (fc, _) = vgg.forward_train(x, cfg.content_tap);
    let (losses, dy) = image_loss_and_grad(vgg, target, &fc[cfg.content_tap], cfg, &y);
    drop(fc);
    let grads = model.backward(&tape, &dy);
    (losses, grads)
}

/// Apply one optimiser step to the model's parameters (its prepared kernels are updated in
/// place).
pub fn apply<B: Backend>(model: &mut Transformer<B>, opt: &mut Adam, grads: &Grads) {
    model.update_params(|_, params| opt.step(params, &grads.0));
}

/// The perceptual loss of an image `y` against fixed content features (at the content tap)
/// and the style target, and its gradient with respect to `y`: what both training (through
/// the transformer) and Gatys-style optimisation (directly on the pixels) descend.
pub fn image_loss_and_grad<B: Backend>(
    vgg: &Vgg16<B>,
    target: &StyleTarget,
    content_feat: &B::Tensor,
    cfg: &LossConfig,
    y: &B::Tensor,
) -> (Losses, B::Tensor) {
    let b = vgg.backend();
    let (fy, vtape) = vgg.forward_train(y, 3);
    let (lc, dc) = loss::content(b, &fy[cfg.content_tap], content_feat, cfg.content_weight);
    let mut ls = 0.0;
    let mut dtaps: Vec<Option<B::Tensor>> = Vec::with_capacity(4);
    for (t, f) in fy.iter().enumerate() {
        let (l, mut d) = loss::style(b, f, &target.grams[t], cfg.style_weight);
        ls += l;
        if t == cfg.content_tap {
            b.add(&mut d, &dc);
        }
        dtaps.push(Some(d));
    }
    drop(fy);
    let (lt, dtv) = loss::tv(b, y, cfg.tv_weight);
    let mut dy = vgg.backward(&vtape, &dtaps);
    b.add(&mut dy, &dtv);
    (
        Losses {
            content: lc,
            style: ls,
            tv: lt,
            total: lc + ls + lt,
            ..Default::default()
        },
        dy,
    )
}
