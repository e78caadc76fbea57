//! The slow method (Gatys et al.): optimise the pixels of one image against the same
//! perceptual loss the networks are trained with, with Adam. impasto's quality yardstick.

use crate::loss::LossConfig;
use crate::model::vgg::Arith;
use crate::model::Vgg16;
use crate::tensor::Tensor;
use crate::train::adam::Adam;
use crate::train::step::{image_loss_and_grad, Losses, StyleTarget};

/// Optimise from the content image for `iters` steps with Adam (step `lr` on the 0..255
/// scale, pixels clamped to 0..255 after each step); `each(iter, losses)` is called after
/// every step (the losses of the image before that step).
pub fn optimize<B: crate::backend::Backend>(
    vgg: &Vgg16<B>,
    content: &Tensor,
    style: &Tensor,
    cfg: &LossConfig,
    iters: usize,
    lr: f32,
    mut each: impl FnMut(usize, &Losses),
) -> crate::Result<(Tensor, Losses)> {
    // VGG16 runs on its backend; the pixels and Adam's state stay on the host (they are
    // clamped to 0..255 after each step): one picture up and one gradient down per step.
    let b = vgg.backend();
    let target = StyleTarget::new(vgg, &b.upload(style));
    let mut fc = vgg.forward_to(&b.upload(content), cfg.content_tap, Arith::F32);
    let fc = fc.swap_remove(cfg.content_tap);
    let mut y = content.clone();
    let mut adam = Adam::new(lr as f64);
    let mut start = None;
    for it in 1..=iters {
        let (l, g) = image_loss_and_grad(vgg, &target, &fc, cfg, &b.upload(&y), Arith::F32);
        let g = b.download_owned(g).into_data();
        let (l, _) = l.read(b, &[])?;
        start.get_or_insert(l.total);
        adam.step(std::slice::from_mut(&mut y.data), &[g]);
        y.data.iter_mut().for_each(|v| *v = v.clamp(0.0, 255.0));
        each(it, &l);
    }
    let (fin, _) = image_loss_and_grad(vgg, &target, &fc, cfg, &b.upload(&y), Arith::F32);
    let (fin, _) = fin.read(b, &[])?;
    // An optimisation lowers its loss. One that ends higher than it began (a learning rate
    // far too large saturates the picture) or not finite has diverged: no picture.
    let start = start.unwrap_or(fin.total);
    if !fin.total.is_finite() || fin.total > start || y.data.iter().any(|v| !v.is_finite()) {
        return Err(crate::Error::Diverged(format!(
            "the optimisation diverged: the loss went from {start:.4e} to {:.4e} (content {:.3e}, style {:.3e}, tv {:.3e}); lower the learning rate or the loss weights",
            fin.total, fin.content, fin.style, fin.tv
        )));
    }
    Ok((y, fin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optimisation_lowers_the_loss() {
        let Some(p) = crate::testutil::shared(
            "weights/vgg16_caffe_relu4_3.safetensors",
            "optimisation_lowers_the_loss",
        ) else {
            return;
        };
        let vgg = Vgg16::load(&p).unwrap();
        let mut r = crate::rng::Rng::new(1);
        let content = Tensor::from_vec(
            1,
            3,
            32,
            32,
            (0..3 * 32 * 32).map(|i| ((i % 32) * 8) as f32).collect(),
        );
        let style = Tensor::from_vec(
            1,
            3,
            32,
            32,
            (0..3 * 32 * 32).map(|_| r.f32() * 255.0).collect(),
        );
        let cfg = LossConfig {
            style_weight: 5.0,
            ..LossConfig::default()
        };
        let mut first = None;
        let (_, fin) = optimize(&vgg, &content, &style, &cfg, 20, 4.0, |_, l| {
            first.get_or_insert(l.total);
        })
        .unwrap();
        assert!(
            fin.total < 0.5 * first.unwrap(),
            "{} -> {}",
            first.unwrap(),
            fin.total
        );
        // A learning rate far too large saturates the picture: refused as diverged.
        let e = optimize(&vgg, &content, &style, &cfg, 5, 1e30, |_, _| {}).unwrap_err();
        assert!(matches!(e, crate::Error::Diverged(_)), "{e}");
    }
}
