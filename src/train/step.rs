//! One training step's mathematics: the perceptual loss of a batch and its gradient with
//! respect to every transformer parameter, and the Adam update.

use crate::loss::{self, LossConfig};
use crate::model::transformer::Grads;
use crate::model::{Transformer, Vgg16};
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The style image's Gram matrices at the four taps.
#[derive(Clone, Debug)]
pub struct StyleTarget {
    pub grams: Vec<Vec<f32>>,
}

impl StyleTarget {
    pub fn new(vgg: &Vgg16, style: &Tensor) -> Self {
        let taps = vgg.forward(style);
        let grams = taps
            .iter()
            .map(|f| {
                // Average over the style batch (normally one image).
                let per = loss::gram_batch(f);
                let mut g = vec![0.0f32; f.c * f.c];
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
    pub total: f64,
}

/// The three losses of one batch of content images (RGB 0..255).
pub fn losses(
    model: &Transformer,
    vgg: &Vgg16,
    target: &StyleTarget,
    cfg: &LossConfig,
    x: &Tensor,
) -> Losses {
    losses_of(vgg, target, cfg, x, &model.forward(x))
}

/// The three losses of outputs `y` for content images `x` (however `y` was made: the bare
/// network, the stylize pipeline with its margin, another engine).
pub fn losses_of(
    vgg: &Vgg16,
    target: &StyleTarget,
    cfg: &LossConfig,
    x: &Tensor,
    y: &Tensor,
) -> Losses {
    let fy = vgg.forward(y);
    let (fc, _) = vgg.forward_train(x, cfg.content_tap);
    let (c, _) = loss::content(
        &fy[cfg.content_tap],
        &fc[cfg.content_tap],
        cfg.content_weight,
    );
    let s: f64 = (0..4)
        .map(|t| loss::style(&fy[t], &target.grams[t], cfg.style_weight).0)
        .sum();
    let (t, _) = loss::tv(y, cfg.tv_weight);
    Losses {
        content: c,
        style: s,
        tv: t,
        total: c + s + t,
    }
}

/// Losses and d(total)/d(parameter) for one batch.
pub fn loss_and_grads(
    model: &Transformer,
    vgg: &Vgg16,
    target: &StyleTarget,
    cfg: &LossConfig,
    x: &Tensor,
) -> (Losses, Grads) {
    let (y, tape) = model.forward_train(x);
    let (fc, _) = vgg.forward_train(x, cfg.content_tap);
    let (losses, dy) = image_loss_and_grad(vgg, target, &fc[cfg.content_tap], cfg, &y);
    drop(fc);
    let grads = model.backward(&tape, &dy);
    (losses, grads)
}

/// Adam (Kingma & Ba), as PyTorch implements it, no weight decay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Adam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub t: u64,
    pub m: BTreeMap<String, Vec<f32>>,
    pub v: BTreeMap<String, Vec<f32>>,
}

impl Adam {
    pub fn new(lr: f64) -> Self {
        Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            t: 0,
            m: BTreeMap::new(),
            v: BTreeMap::new(),
        }
    }

    pub fn step(&mut self, params: &mut BTreeMap<String, (Vec<usize>, Vec<f32>)>, grads: &Grads) {
        self.t += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let bc1 = 1.0 - b1.powi(self.t as i32);
        let bc2 = 1.0 - b2.powi(self.t as i32);
        for (name, (_, p)) in params.iter_mut() {
            let Some(g) = grads.get(name) else { continue };
            let m = self
                .m
                .entry(name.clone())
                .or_insert_with(|| vec![0.0; p.len()]);
            let v = self
                .v
                .entry(name.clone())
                .or_insert_with(|| vec![0.0; p.len()]);
            for i in 0..p.len() {
                let gi = g[i] as f64;
                let mi = b1 * m[i] as f64 + (1.0 - b1) * gi;
                let vi = b2 * v[i] as f64 + (1.0 - b2) * gi * gi;
                m[i] = mi as f32;
                v[i] = vi as f32;
                let denom = (vi.sqrt() / bc2.sqrt()) + self.eps;
                p[i] = (p[i] as f64 - self.lr * (mi / bc1) / denom) as f32;
            }
        }
    }
}

/// Apply one Adam step to the model (rebuilding its prepared kernels).
pub fn apply(model: &mut Transformer, opt: &mut Adam, grads: &Grads) {
    let mut params = std::mem::take(&mut model.params);
    opt.step(&mut params, grads);
    let config = model.config.clone();
    let metadata = std::mem::take(&mut model.metadata);
    *model = Transformer::from_params(config, params, metadata);
}

/// The perceptual loss of an image `y` against fixed content features (at the content tap)
/// and the style target, and its gradient with respect to `y`: what both training (through
/// the transformer) and Gatys-style optimisation (directly on the pixels) descend.
pub fn image_loss_and_grad(
    vgg: &Vgg16,
    target: &StyleTarget,
    content_feat: &Tensor,
    cfg: &LossConfig,
    y: &Tensor,
) -> (Losses, Tensor) {
    let (fy, vtape) = vgg.forward_train(y, 3);
    let (lc, dc) = loss::content(&fy[cfg.content_tap], content_feat, cfg.content_weight);
    let mut ls = 0.0;
    let mut dtaps: Vec<Option<Tensor>> = Vec::with_capacity(4);
    for (t, f) in fy.iter().enumerate() {
        let (l, mut d) = loss::style(f, &target.grams[t], cfg.style_weight);
        ls += l;
        if t == cfg.content_tap {
            d.data.iter_mut().zip(&dc.data).for_each(|(a, b)| *a += b);
        }
        dtaps.push(Some(d));
    }
    drop(fy);
    let (lt, dtv) = loss::tv(y, cfg.tv_weight);
    let mut dy = vgg.backward(&vtape, &dtaps);
    dy.data.iter_mut().zip(&dtv.data).for_each(|(a, b)| *a += b);
    (
        Losses {
            content: lc,
            style: ls,
            tv: lt,
            total: lc + ls + lt,
        },
        dy,
    )
}
