//! One training step's mathematics: the perceptual loss of a batch and its gradient with
//! respect to every transformer parameter, and the optimiser update. Generic over the
//! backend: the batch, the network's output and every activation stay on it.

use crate::backend::{Backend, DeviceError};
use crate::loss::{self, LossConfig};
use crate::model::transformer::Grads;
use crate::model::vgg::Arith;
use crate::model::{Transformer, Vgg16};
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};

pub use crate::train::adam::{Adam, Optimizer};

/// The style image's Gram matrices at the four taps, on the backend (`[1, 1, C, C]` each):
/// computed once per run.
pub struct StyleTarget<B: Backend> {
    pub grams: Vec<B::Tensor>,
}

impl<B: Backend> StyleTarget<B> {
    pub fn new(vgg: &Vgg16<B>, style: &B::Tensor) -> Self {
        let b = vgg.backend();
        let grams = vgg
            .forward(style)
            .iter()
            .map(|f| {
                // Average over the style batch (normally one image).
                let per = loss::gram_batch(b, f);
                let c = b.dims(f)[1];
                let mut g = vec![0.0f32; per[0].len()];
                for p in &per {
                    g.iter_mut()
                        .zip(p)
                        .for_each(|(a, b)| *a += b / per.len() as f32);
                }
                b.upload(&Tensor::from_vec(1, 1, c, c, g))
            })
            .collect();
        StyleTarget { grams }
    }
}

/// A batch's loss terms, still on the backend, read together once ([`PendingLosses::read`]).
pub struct PendingLosses<B: Backend> {
    content: B::Scalar,
    style: Vec<B::Scalar>,
    tv: B::Scalar,
}

impl<B: Backend> PendingLosses<B> {
    /// The losses, and the `extra` scalars read in the same synchronisation.
    pub fn read(&self, b: &B, extra: &[B::Scalar]) -> Result<(Losses, Vec<f64>), DeviceError> {
        let all: Vec<&B::Scalar> = [&self.content, &self.tv]
            .into_iter()
            .chain(&self.style)
            .chain(extra)
            .collect();
        let v = b.read_scalars(&all)?;
        let (content, tv) = (v[0], v[1]);
        let style: f64 = v[2..2 + self.style.len()].iter().sum();
        let losses = Losses {
            content,
            style,
            tv,
            total: content + style + tv,
            ..Default::default()
        };
        Ok((losses, v[2 + self.style.len()..].to_vec()))
    }

    /// The losses alone; a device's failure panics (evaluation paths).
    pub fn get(&self, b: &B) -> Losses {
        match self.read(b, &[]) {
            Ok((l, _)) => l,
            Err(e) => panic!("{e}"),
        }
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
    /// Every term multiplied by `k`.
    pub fn scaled(self, k: f64) -> Losses {
        Losses {
            content: self.content * k,
            style: self.style * k,
            tv: self.tv * k,
            pixel: self.pixel * k,
            perceptual: self.perceptual * k,
            stability: self.stability * k,
            total: self.total * k,
        }
    }

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
    target: &StyleTarget<B>,
    cfg: &LossConfig,
    x: &B::Tensor,
) -> Losses {
    losses_of(vgg, target, cfg, x, &model.forward_batch(x))
}

/// The three losses of outputs `y` for content images `x` (however `y` was made: the bare
/// network, the stylize pipeline with its margin, another engine).
pub fn losses_of<B: Backend>(
    vgg: &Vgg16<B>,
    target: &StyleTarget<B>,
    cfg: &LossConfig,
    x: &B::Tensor,
    y: &B::Tensor,
) -> Losses {
    let b = vgg.backend();
    let fy = vgg.forward(y);
    let fc = vgg.forward_to(x, cfg.content_tap, Arith::F32);
    let (content, _) = loss::content(
        b,
        &fy[cfg.content_tap],
        &fc[cfg.content_tap],
        cfg.content_weight,
    );
    let style = (0..4)
        .map(|t| loss::style(b, &fy[t], &target.grams[t], cfg.style_weight).0)
        .collect();
    let (tv, _) = loss::tv(b, y, cfg.tv_weight);
    PendingLosses { content, style, tv }.get(b)
}

/// Losses (on the backend) and d(total)/d(parameter) for one batch; `precise`: the
/// transformer's forward pass on the exact kernels ([`Transformer::forward_train`]) and the
/// loss network in f32; otherwise the loss network may multiply in bfloat16 ([`Arith`]).
pub fn loss_and_grads<B: Backend>(
    model: &Transformer<B>,
    vgg: &Vgg16<B>,
    target: &StyleTarget<B>,
    cfg: &LossConfig,
    x: &B::Tensor,
    precise: bool,
) -> (PendingLosses<B>, Grads<B>) {
    let (y, tape) = model.forward_train(x, precise);
    let arith = if precise { Arith::F32 } else { Arith::Bf16 };
    let fc = vgg.forward_to(x, cfg.content_tap, arith);
    let (losses, dy) = image_loss_and_grad(vgg, target, &fc[cfg.content_tap], cfg, &y, arith);
    drop(fc);
    let grads = model.backward(&tape, &dy);
    (losses, grads)
}

/// Apply one optimiser step to the model's parameters where they live (its prepared
/// kernels are updated in place; nothing is read back).
pub fn apply<B: Backend>(model: &mut Transformer<B>, opt: &mut Optimizer<B>, grads: &Grads<B>) {
    model.update_on_backend(|b, params| opt.step(b, params, &grads.0));
}

/// The perceptual loss of an image `y` against fixed content features (at the content tap)
/// and the style target, and its gradient with respect to `y`: what both training (through
/// the transformer) and Gatys-style optimisation (directly on the pixels) descend.
pub fn image_loss_and_grad<B: Backend>(
    vgg: &Vgg16<B>,
    target: &StyleTarget<B>,
    content_feat: &B::Tensor,
    cfg: &LossConfig,
    y: &B::Tensor,
    arith: Arith,
) -> (PendingLosses<B>, B::Tensor) {
    let b = vgg.backend();
    let vtape = vgg.forward_train(y, 3, arith);
    let fy = vtape.taps();
    let (content, dc) = loss::content(b, fy[cfg.content_tap], content_feat, cfg.content_weight);
    let mut style = Vec::with_capacity(4);
    let mut dtaps: Vec<Option<B::Tensor>> = Vec::with_capacity(4);
    for (t, f) in fy.iter().enumerate() {
        let (l, mut d) = loss::style(b, f, &target.grams[t], cfg.style_weight);
        style.push(l);
        if t == cfg.content_tap {
            b.add(&mut d, &dc);
        }
        dtaps.push(Some(d));
    }
    let (tv, dtv) = loss::tv(b, y, cfg.tv_weight);
    let mut dy = vgg.backward(&vtape, &dtaps);
    b.add(&mut dy, &dtv);
    (PendingLosses { content, style, tv }, dy)
}
