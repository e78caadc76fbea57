//! Distillation: train a compact network to reproduce a trained one (the *teacher*), for
//! the live models. The target is the teacher's output, so a step needs one teacher forward
//! pass and no backward through the teacher: a pixel loss, a small perceptual term at
//! VGG's relu1_2, and a noise-stability term (the student also sees the photo with
//! sensor-like noise and is asked for the teacher's output of the clean photo, so that
//! video frames that differ only by noise give the same picture).
//!
//! A small network cannot reproduce a teacher's brush texture pixel for pixel, and a pixel
//! loss then teaches it the average: a soft, waxy picture whose style loss was 30× its
//! teacher's (great_wave, 600 steps). So after the first part of a run (`loss_from`, default
//! a quarter: the pixel terms alone get the picture's layout and colours right quickly, at
//! the high learning rate) the teacher's own training loss joins in — Johnson's content,
//! style and TV terms against the painting, with the weights the teacher records — on the
//! student's clean output: the pixel terms keep it where the teacher is, the style term gives
//! the texture back. That part costs a VGG16 forward and backward like `train`; the first
//! does not. (Turning it on only for the last quarter left it too few steps at too low a
//! learning rate: style loss still 7× the teacher's.) A teacher of several styles gives each
//! of the student's styles the loss of its own painting and style weight.

use crate::loss::LossConfig;
use crate::model::transformer::Grads;
use crate::model::vgg::Arith;
use crate::model::{Transformer, TransformerConfig, Vgg16};
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::train::step::{Losses, StyleTarget};
use serde::{Deserialize, Serialize};

/// The live models' network: the johnson layer plan at 8-16-32 channels with two residual
/// blocks (52,899 parameters, 1.4 GFLOP at 320×240: 17× fewer than the full network;
/// the README's table has every candidate measured).
pub fn live_config() -> TransformerConfig {
    let mut c = TransformerConfig::new(crate::model::Arch::Johnson);
    c.channels = [8, 16, 32];
    c.res_blocks = 2;
    c
}

/// How a distillation run weighs its terms; stored with the run's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DistillConfig {
    /// The teacher as given (built-in name or file).
    pub teacher: String,
    /// SHA-256 of the teacher's model file (the embedded bytes for a built-in style).
    pub teacher_sha256: String,
    /// A built-in style that is one row of an embedded network of several: that row's name
    /// (the file, and so its SHA-256, is the same for each of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_row: Option<String>,
    /// Weight of mean((student − teacher)²) on the 0..255 scale.
    pub pixel_weight: f64,
    /// Weight of mean((VGG relu1_2(student) − VGG relu1_2(teacher))²); 0 runs without VGG.
    pub perceptual_weight: f64,
    /// Weight of the pixel loss of the noisy photo against the teacher's clean output;
    /// 0 turns the term (and its second student pass) off.
    pub stability_weight: f64,
    /// Standard deviation of the added Gaussian noise, on the 0..255 scale.
    pub noise_sigma: f64,
    /// Weight of the teacher's own training loss (content + style + TV against the
    /// painting) on the student's output; 0 (or no painting) turns it off.
    #[serde(default)]
    pub loss_weight: f64,
    /// The fraction of the run after which that loss is on (0: from the start).
    #[serde(default)]
    pub loss_from: f64,
    /// Multiplies the style weight of that loss (above 1 leans the student towards the
    /// painting's texture, below 1 towards the photo's content): a small network cannot
    /// match both as well as its teacher, and which it gives up depends on the style.
    #[serde(default = "DistillConfig::default_style_scale")]
    pub style_scale: f64,
    /// The painting of that loss, and its SHA-256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub painting: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub painting_sha256: Option<String>,
    /// A teacher of several styles: each style's painting (the one its `impasto.styles`
    /// entry records), in the teacher's order; empty when that loss is off.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub style_paintings: Vec<StylePainting>,
}

/// The painting of one of a teacher's styles, as a distillation run used it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StylePainting {
    pub style: String,
    pub painting: String,
    pub sha256: String,
}

impl DistillConfig {
    /// Configs written before the style scale existed ran at 1.
    fn default_style_scale() -> f64 {
        Self::DEFAULT_STYLE_SCALE
    }

    pub const DEFAULT_PIXEL_WEIGHT: f64 = 1.0;
    pub const DEFAULT_PERCEPTUAL_WEIGHT: f64 = 0.05;
    pub const DEFAULT_STABILITY_WEIGHT: f64 = 0.5;
    pub const DEFAULT_NOISE_SIGMA: f64 = 6.0;
    pub const DEFAULT_LOSS_WEIGHT: f64 = 1.0;
    pub const DEFAULT_LOSS_FROM: f64 = 0.25;
    pub const DEFAULT_STYLE_SCALE: f64 = 1.0;
    pub const DEFAULT_LR: f64 = 1e-2;
    pub const DEFAULT_LR_FINAL: f64 = 5e-4;
}

/// A teacher and what the loss needs: everything of a distillation step but the student.
pub struct Distiller {
    pub teacher: Transformer,
    /// A teacher of several styles: one copy per style, each running that style's rows
    /// (the student learns style `k` from copy `k`); empty for a single-style teacher.
    pub styled: Vec<Transformer>,
    /// VGG16 for the perceptual term and the teacher's loss (None when neither is on).
    pub vgg: Option<Vgg16>,
    pub cfg: DistillConfig,
    /// The teacher's loss, one per style of the teacher (a teacher of several styles
    /// scores the student's style `k` against painting `k` at its own weights): the
    /// painting's Gram matrices and the loss weights. Empty: the loss is off.
    pub teacher_loss: Vec<(StyleTarget<crate::backend::Cpu>, LossConfig)>,
}

/// The photo with Gaussian noise of `sigma` (0..255 scale), clamped to the valid range;
/// `seed` makes it reproducible (the step number, so resumed runs see the same noise).
pub fn add_noise(x: &Tensor, sigma: f64, seed: u64) -> Tensor {
    let mut rng = Rng::new(seed ^ 0x6e6f_6973_6521);
    let mut y = x.clone();
    for v in y.data.iter_mut() {
        *v = (*v + (rng.normal() * sigma) as f32).clamp(0.0, 255.0);
    }
    y
}

impl Distiller {
    /// A distiller of `teacher` (one copy per style for a teacher of several).
    pub fn new(
        teacher: Transformer,
        vgg: Option<Vgg16>,
        cfg: DistillConfig,
        teacher_loss: Vec<(StyleTarget<crate::backend::Cpu>, LossConfig)>,
    ) -> Self {
        assert!(
            teacher_loss.is_empty() || teacher_loss.len() == teacher.style_count(),
            "one teacher loss per style"
        );
        let styled = if teacher.style_count() > 1 {
            (0..teacher.style_count())
                .map(|k| {
                    let mut t = teacher.clone();
                    t.set_style(k);
                    t
                })
                .collect()
        } else {
            Vec::new()
        };
        Distiller {
            teacher,
            styled,
            vgg,
            cfg,
            teacher_loss,
        }
    }

    /// Start a fresh student where the teacher ends: its output layer's bias (and the
    /// output norm's affine, where the architecture has one) copied from the teacher, so
    /// that the first hundreds of steps are not spent moving the output to the teacher's
    /// colour means (a bias moves about `lr` per Adam step).
    pub fn warm_start(&self, student: &mut Transformer) {
        let (tp, sp) = (self.teacher.plan().clone(), student.plan().clone());
        let (Some(tl), Some(sl)) = (tp.convs.last(), sp.convs.last()) else {
            return;
        };
        let mut copy = |t: Option<usize>, s: Option<usize>| {
            if let (Some(t), Some(s)) = (t, s) {
                let v = self.teacher.param_values(t).to_vec();
                let name = sp.params[s].key();
                if sp.params[s].shape == tp.params[t].shape {
                    student.edit_param(&name, |d| d.copy_from_slice(&v));
                }
            }
        };
        copy(tl.bias, sl.bias);
        if let (Some(tn), Some(sn)) = (tp.norms.last(), sp.norms.last()) {
            if tp.blocks.last().is_some_and(|b| {
                matches!(b, crate::model::plan::Block::Output { norm: Some(_), .. })
            }) && sp.blocks.last().is_some_and(|b| {
                matches!(b, crate::model::plan::Block::Output { norm: Some(_), .. })
            }) {
                // Style by style (the student holds the teacher's styles).
                for (t, s) in tn
                    .scale
                    .iter()
                    .zip(&sn.scale)
                    .chain(tn.shift.iter().zip(&sn.shift))
                {
                    copy(Some(*t), Some(*s));
                }
            }
        }
    }

    /// Is the teacher's loss on at `step` of a run of `steps`?
    pub fn teacher_loss_at(&self, step: u64, steps: u64) -> bool {
        !self.teacher_loss.is_empty()
            && self.cfg.loss_weight > 0.0
            && step as f64 >= self.cfg.loss_from * steps as f64
    }

    /// The distillation losses of `student` on the photos `x` and, with `grads`, their
    /// gradient with respect to every student parameter. `seed` fixes the noise;
    /// `with_teacher_loss` adds the teacher's own training loss.
    pub fn loss<B: crate::backend::Backend>(
        &self,
        student: &Transformer<B>,
        x: &Tensor,
        seed: u64,
        grads: bool,
        with_teacher_loss: bool,
    ) -> (Losses, Option<Grads<B>>) {
        let c = &self.cfg;
        // The student's current style, from the teacher running the same style.
        let teacher = self.styled.get(student.style()).unwrap_or(&self.teacher);
        let target = teacher.forward_batch(x);
        let stable = c.stability_weight > 0.0;
        let input = if stable {
            let noisy = add_noise(x, c.noise_sigma, seed);
            let mut d = x.data.clone();
            d.extend_from_slice(&noisy.data);
            Tensor::from_vec(2 * x.n, x.c, x.h, x.w, d)
        } else {
            x.clone()
        };
        // The student runs on its own backend (a GPU too); the teacher, the pixel terms and
        // VGG16 on the host.
        let sb = student.backend();
        let input = sb.upload_owned(input);
        let (y, tape) = if grads {
            let (y, t) = student.forward_train(&input, true);
            (sb.download_owned(y), Some(t))
        } else {
            (sb.download_owned(student.forward_batch(&input)), None)
        };
        let half = target.data.len();
        let (clean, noisy) = y.data.split_at(half);
        let yc = Tensor::from_vec(x.n, 3, y.h, y.w, clean.to_vec());
        let b = &crate::backend::Cpu;
        // The host backend's scalars are its values (f64).
        let (pixel, d) = crate::loss::content(b, &yc, &target, c.pixel_weight);
        let mut dy = d.into_data();
        let mut stability = 0.0;
        if stable {
            let yn = Tensor::from_vec(x.n, 3, y.h, y.w, noisy.to_vec());
            let (l, d) = crate::loss::content(b, &yn, &target, c.stability_weight);
            stability = l;
            dy.extend_from_slice(&d.data);
        }
        let mut perceptual = 0.0;
        if let (Some(vgg), true) = (&self.vgg, c.perceptual_weight > 0.0) {
            let b = vgg.backend();
            let ft = vgg.forward_to(&target, 0, Arith::F32);
            let vtape = vgg.forward_train(&yc, 0, Arith::F32);
            let (l, d) = crate::loss::content(b, vtape.taps()[0], &ft[0], c.perceptual_weight);
            perceptual = l;
            if grads {
                let dimg = vgg.backward(&vtape, &[Some(d)]);
                dy[..half]
                    .iter_mut()
                    .zip(&dimg.data)
                    .for_each(|(a, b)| *a += b);
            }
        }
        let mut johnson = Losses::default();
        if let (Some(vgg), Some((target, lc)), true) = (
            &self.vgg,
            self.teacher_loss.get(student.style()),
            with_teacher_loss,
        ) {
            let mut lc = lc.clone();
            lc.content_weight *= c.loss_weight;
            lc.style_weight *= c.loss_weight * c.style_scale;
            lc.tv_weight *= c.loss_weight;
            let fc = vgg.forward_to(x, lc.content_tap, Arith::F32);
            let (l, d) = crate::train::step::image_loss_and_grad(
                vgg,
                target,
                &fc[lc.content_tap],
                &lc,
                &yc,
                Arith::F32,
            );
            johnson = l.get(b);
            if grads {
                dy[..half]
                    .iter_mut()
                    .zip(&d.data)
                    .for_each(|(a, b)| *a += b);
            }
        }
        let losses = Losses {
            content: johnson.content,
            style: johnson.style,
            tv: johnson.tv,
            pixel,
            perceptual,
            stability,
            total: pixel + perceptual + stability + johnson.total,
        };
        let g = tape.map(|t| {
            let dy = Tensor::from_vec(y.n, y.c, y.h, y.w, dy);
            student.backward(&t, &sb.upload_owned(dy))
        });
        (losses, g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_image(n: usize, h: usize, w: usize, seed: u64) -> Tensor {
        let mut r = Rng::new(seed);
        Tensor::from_vec(
            n,
            3,
            h,
            w,
            (0..n * 3 * h * w).map(|_| r.f32() * 255.0).collect(),
        )
    }

    /// Central differences on a few entries of the last two parameters (with `vectors_only`,
    /// the last two biases and norm affines: the style term is quartic in the output, and a
    /// step of 1e-2 on a conv weight of magnitude 0.04 is too far for central differences).
    fn check_gradient(d: &Distiller, what: &str, vectors_only: bool) {
        let student = {
            let mut tc = live_config();
            tc.channels = [4, 6, 8];
            tc.res_blocks = 1;
            Transformer::init(tc, 4)
        };
        let x = pseudo_image(2, 16, 16, 7);
        let (l, g) = d.loss(&student, &x, 11, true, true);
        assert!(l.total.is_finite() && l.total > 0.0);
        let g = g.unwrap().to_host(&crate::backend::Cpu);
        let plan = student.plan().clone();
        let mut checked = 0;
        for p in plan
            .params
            .iter()
            .rev()
            .filter(|p| !vectors_only || p.shape.len() == 1)
            .take(2)
        {
            let id = plan.param_id(&p.name).unwrap();
            for i in [0usize, p.len() / 2] {
                let eps = 1e-2f32;
                let f = |delta: f32| {
                    let mut s = student.clone();
                    s.edit_param(&p.name, |v| v[i] += delta);
                    d.loss(&s, &x, 11, false, true).0.total
                };
                let num = (f(eps) - f(-eps)) / (2.0 * eps as f64);
                let ana = g[id][i] as f64;
                assert!(
                    (num - ana).abs() <= 2e-2 * num.abs().max(ana.abs()).max(1e-3),
                    "{what}: {} [{i}]: numeric {num} analytic {ana}",
                    p.name
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 4);
    }

    fn tiny_teacher() -> Transformer {
        let mut tc = live_config();
        tc.channels = [4, 6, 8];
        tc.res_blocks = 1;
        Transformer::init(tc, 3)
    }

    fn cfg(perceptual: f64, stability: f64) -> DistillConfig {
        DistillConfig {
            teacher: "t".into(),
            teacher_sha256: String::new(),
            teacher_row: None,
            pixel_weight: 1.0,
            perceptual_weight: perceptual,
            stability_weight: stability,
            noise_sigma: 6.0,
            loss_weight: 1.0,
            loss_from: 0.0,
            style_scale: 1.0,
            painting: None,
            painting_sha256: None,
            style_paintings: Vec::new(),
        }
    }

    #[test]
    fn the_pixel_and_stability_gradient_matches_finite_differences() {
        let d = Distiller::new(tiny_teacher(), None, cfg(0.0, 0.5), Vec::new());
        let (l, _) = d.loss(
            &tiny_teacher(),
            &pseudo_image(1, 16, 16, 2),
            1,
            false,
            false,
        );
        assert_eq!(l.pixel, 0.0, "the teacher reproduces itself");
        assert!(l.stability > 0.0, "but not from a noisy photo");
        check_gradient(&d, "pixel + stability", false);
    }

    #[test]
    fn the_perceptual_gradient_matches_finite_differences() {
        let Some(p) = crate::testutil::shared(
            "weights/vgg16_caffe_relu4_3.safetensors",
            "the_perceptual_gradient_matches_finite_differences",
        ) else {
            return;
        };
        let vgg = Vgg16::load(&p).unwrap();
        let painting = pseudo_image(1, 24, 24, 9);
        let target = StyleTarget::new(&vgg, &painting);
        let d = Distiller::new(
            tiny_teacher(),
            Some(vgg),
            cfg(1.0, 0.0),
            vec![(target, LossConfig::default())],
        );
        let x = pseudo_image(2, 16, 16, 7);
        let (l, _) = d.loss(&tiny_teacher(), &x, 1, false, true);
        assert!(l.style > 0.0 && l.content > 0.0 && l.perceptual == 0.0);
        check_gradient(&d, "pixel + perceptual + the teacher's loss", true);
        // The weights too, with the pixel and perceptual terms alone.
        let d = Distiller {
            teacher_loss: Vec::new(),
            ..d
        };
        check_gradient(&d, "pixel + perceptual", false);
    }

    /// A teacher of several styles: the student's style `k` is scored against painting `k`
    /// at that style's weights, and only against it.
    #[test]
    fn each_style_of_a_teacher_is_scored_against_its_own_painting() {
        let Some(p) = crate::testutil::shared(
            "weights/vgg16_caffe_relu4_3.safetensors",
            "each_style_of_a_teacher_is_scored_against_its_own_painting",
        ) else {
            return;
        };
        let mut tc = live_config();
        tc.channels = [4, 6, 8];
        tc.res_blocks = 1;
        tc.styles = 2;
        let teacher = Transformer::init(tc, 3);
        let vgg = Vgg16::load(&p).unwrap();
        let paintings = [pseudo_image(1, 24, 24, 9), pseudo_image(1, 32, 24, 10)];
        let heavier = LossConfig {
            style_weight: 7.0,
            ..LossConfig::default()
        };
        let weights = [LossConfig::default(), heavier];
        let distiller = |which: [usize; 2]| {
            let targets = which
                .iter()
                .map(|&i| (StyleTarget::new(&vgg, &paintings[i]), weights[i].clone()))
                .collect();
            Distiller::new(teacher.clone(), Some(vgg.clone()), cfg(0.0, 0.0), targets)
        };
        let (both, first, second) = (distiller([0, 1]), distiller([0, 0]), distiller([1, 1]));
        let x = pseudo_image(2, 16, 16, 7);
        let mut student = teacher.clone();
        let style_loss = |d: &Distiller, s: &Transformer| d.loss(s, &x, 1, false, true).0.style;
        student.set_style(0);
        assert_eq!(style_loss(&both, &student), style_loss(&first, &student));
        student.set_style(1);
        let l = style_loss(&both, &student);
        assert_eq!(l, style_loss(&second, &student));
        assert_ne!(l, style_loss(&first, &student));
        assert!(l > 0.0);
    }

    #[test]
    fn configs_written_before_the_style_scale_read_as_scale_one() {
        let mut v = serde_json::to_value(cfg(0.05, 0.5)).unwrap();
        v.as_object_mut().unwrap().remove("style_scale");
        let c: DistillConfig = serde_json::from_value(v).unwrap();
        assert_eq!(c.style_scale, 1.0);
    }

    #[test]
    fn noise_is_reproducible_and_in_range() {
        let x = pseudo_image(1, 8, 8, 1);
        let a = add_noise(&x, 6.0, 5);
        assert_eq!(a.data, add_noise(&x, 6.0, 5).data);
        assert_ne!(a.data, add_noise(&x, 6.0, 6).data);
        assert!(a.data.iter().all(|v| (0.0..=255.0).contains(v)));
        let rms = (a
            .data
            .iter()
            .zip(&x.data)
            .map(|(p, q)| ((p - q) as f64).powi(2))
            .sum::<f64>()
            / x.data.len() as f64)
            .sqrt();
        assert!(rms > 2.0 && rms < 7.0, "rms {rms}");
    }
}
