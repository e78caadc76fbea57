//! The perceptual losses of Johnson et al.: content (feature reconstruction at relu2_2),
//! style (Gram-matrix distance at relu1_2 … relu4_3) and total variation, each returning
//! its value (f64) and its gradient.

use crate::backend::Backend;
use serde::{Deserialize, Serialize};

/// Loss weights and where the content loss is taken.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossConfig {
    pub content_weight: f64,
    pub style_weight: f64,
    pub tv_weight: f64,
    /// VGG tap index (0..4) of the content loss: 1 = relu2_2.
    pub content_tap: usize,
}

impl LossConfig {
    pub const DEFAULT_CONTENT_WEIGHT: f64 = 1.0;
    pub const DEFAULT_STYLE_WEIGHT: f64 = 1.5;
    pub const DEFAULT_TV_WEIGHT: f64 = 1e-6;
}

/// impasto's defaults, the one home for them: `train`, `optimize`, `evaluate` and
/// `bench --train` all start here (content at relu2_2; the style weight that gave the
/// built-in styles their look at 256² training crops).
impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            content_weight: Self::DEFAULT_CONTENT_WEIGHT,
            style_weight: Self::DEFAULT_STYLE_WEIGHT,
            tv_weight: Self::DEFAULT_TV_WEIGHT,
            content_tap: 1,
        }
    }
}

/// Each sample's Gram matrix F·Fᵀ / (C·H·W), C×C.
pub fn gram_batch<B: Backend>(b: &B, f: &B::Tensor) -> Vec<Vec<f32>> {
    b.gram(f)
}

/// content = w · mean((a − b)²); gradient with respect to `a`.
pub fn content<B: Backend>(
    b: &B,
    a: &B::Tensor,
    target: &B::Tensor,
    w: f64,
) -> (B::Scalar, B::Tensor) {
    b.mse(a, target, w)
}

/// style at one tap = w · mean over batch and C×C of (gram(f) − target)²; gradient at `f`
/// (`target`: one `[1, 1, C, C]` Gram matrix on the backend).
pub fn style<B: Backend>(
    b: &B,
    f: &B::Tensor,
    target: &B::Tensor,
    w: f64,
) -> (B::Scalar, B::Tensor) {
    b.style_loss(f, target, w)
}

/// Total variation w · (Σ vertical² + Σ horizontal² differences); gradient at `y`.
pub fn tv<B: Backend>(b: &B, y: &B::Tensor, w: f64) -> (B::Scalar, B::Tensor) {
    b.tv(y, w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Cpu, Reference};
    use crate::tensor::Tensor;

    fn t(n: usize, c: usize, h: usize, w: usize, seed: u64) -> Tensor {
        let mut r = crate::rng::Rng::new(seed);
        Tensor::from_vec(
            n,
            c,
            h,
            w,
            (0..n * c * h * w).map(|_| r.f32() * 2.0 - 0.5).collect(),
        )
    }

    fn check(f: impl Fn(&Tensor) -> (f64, Tensor), x: &Tensor) {
        let (_, g) = f(x);
        for &i in &[0usize, 3, x.data.len() / 2, x.data.len() - 1] {
            let (mut p, mut m) = (x.clone(), x.clone());
            p.data[i] += 1e-3;
            m.data[i] -= 1e-3;
            let num = (f(&p).0 - f(&m).0) / 2e-3;
            assert!(
                (num - g.data[i] as f64).abs() < 1e-2 * (1e-3 + num.abs()),
                "[{i}] {num} vs {}",
                g.data[i]
            );
        }
    }

    #[test]
    fn loss_gradients_match_finite_differences() {
        let x = t(2, 3, 5, 6, 1);
        let y = t(2, 3, 5, 6, 2);
        fn on<B: Backend<Tensor = Tensor, Scalar = f64>>(b: &B, x: &Tensor, y: &Tensor) {
            check(|a| content(b, a, y, 3.0), x);
            check(|a| tv(b, a, 0.5), x);
            let target = gram_batch(b, &t(1, 3, 4, 4, 3)).remove(0);
            let target = Tensor::from_vec(1, 1, 3, 3, target);
            check(|a| style(b, a, &target, 7.0), x);
        }
        on(&Cpu, &x, &y);
        on(&Reference, &x, &y);
    }
}
