//! The perceptual losses of Johnson et al.: content (feature reconstruction at relu2_2),
//! style (Gram-matrix distance at relu1_2 … relu4_3) and total variation, each returning
//! its value (f64) and its gradient.

use crate::kernels::Strided;
use crate::tensor::Tensor;
use rayon::prelude::*;
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

/// One sample's Gram matrix F·Fᵀ / (C·H·W), C×C.
pub fn gram(f: &[f32], c: usize, hw: usize) -> Vec<f32> {
    assert!(f.len() >= c * hw, "gram: {} values for {c}×{hw}", f.len());
    let mut g = vec![0.0f32; c * c];
    // G = F · Fᵀ (Fᵀ: the same slice with the strides swapped).
    crate::kernels::matmul(
        c,
        c,
        hw,
        &mut g,
        c,
        false,
        Strided {
            data: f,
            rs: hw,
            cs: 1,
        },
        Strided {
            data: f,
            rs: 1,
            cs: hw,
        },
        gemm::Parallelism::Rayon(0),
    );
    let n = (c * hw) as f32;
    g.iter_mut().for_each(|v| *v /= n);
    g
}

/// Mean of the Gram matrices of a batch (the style target is one image; a batch of
/// style images averages).
pub fn gram_batch(f: &Tensor) -> Vec<Vec<f32>> {
    (0..f.n)
        .map(|s| gram(f.sample(s), f.c, f.plane()))
        .collect()
}

/// content = w · mean((a − b)²); gradient with respect to `a`.
pub fn content(a: &Tensor, b: &Tensor, w: f64) -> (f64, Tensor) {
    let n = a.data.len() as f64;
    // Fixed chunks summed in order: deterministic whatever the scheduling.
    let sum: f64 = a
        .data
        .par_chunks(1 << 16)
        .zip(b.data.par_chunks(1 << 16))
        .map(|(x, y)| {
            x.iter()
                .zip(y)
                .map(|(p, q)| ((p - q) as f64).powi(2))
                .sum::<f64>()
        })
        .collect::<Vec<f64>>()
        .iter()
        .sum();
    let k = (2.0 * w / n) as f32;
    let mut g = a.clone();
    g.data
        .par_iter_mut()
        .zip(&b.data)
        .for_each(|(x, y)| *x = k * (*x - y));
    (w * sum / n, g)
}

/// style at one tap = w · mean over batch and C×C of (gram(f) − target)²; gradient at `f`.
pub fn style(f: &Tensor, target: &[f32], w: f64) -> (f64, Tensor) {
    let (b, c, hw) = (f.n, f.c, f.plane());
    let mut grad = Tensor::zeros(b, c, f.h, f.w);
    let mut total = 0.0f64;
    let denom = (b * c * c) as f64;
    for s in 0..b {
        let g = gram(f.sample(s), c, hw);
        let mut dg = vec![0.0f32; c * c];
        let mut sum = 0.0f64;
        for ((d, &x), &t) in dg.iter_mut().zip(&g).zip(target) {
            let e = (x - t) as f64;
            sum += e * e;
            // dL/dG = 2w/(B·C²)·(G − S); dL/dF = 2·dG·F/(C·H·W) (dG symmetric)
            *d = (2.0 * w / denom * e * 2.0 / (c * hw) as f64) as f32;
        }
        total += w * sum / denom;
        // dF = 2·dG·F/(C·H·W): dG (c × c) · F (c × hw).
        let fs = f.sample(s);
        crate::kernels::matmul(
            c,
            hw,
            c,
            grad.sample_mut(s),
            hw,
            false,
            Strided {
                data: &dg,
                rs: c,
                cs: 1,
            },
            Strided {
                data: fs,
                rs: hw,
                cs: 1,
            },
            gemm::Parallelism::Rayon(0),
        );
    }
    (total, grad)
}

/// Total variation w · (Σ vertical² + Σ horizontal² differences); gradient at `y`.
pub fn tv(y: &Tensor, w: f64) -> (f64, Tensor) {
    let (h, wd) = (y.h, y.w);
    let mut g = Tensor::zeros(y.n, y.c, h, wd);
    let total: f64 = g
        .data
        .par_chunks_mut(h * wd)
        .zip(y.data.par_chunks(h * wd))
        .map(|(gp, p)| {
            let mut s = 0.0f64;
            for i in 0..h {
                for j in 0..wd {
                    let v = p[i * wd + j];
                    if i + 1 < h {
                        let d = p[(i + 1) * wd + j] - v;
                        s += (d as f64) * (d as f64);
                        gp[i * wd + j] -= (2.0 * w) as f32 * d;
                        gp[(i + 1) * wd + j] += (2.0 * w) as f32 * d;
                    }
                    if j + 1 < wd {
                        let d = p[i * wd + j + 1] - v;
                        s += (d as f64) * (d as f64);
                        gp[i * wd + j] -= (2.0 * w) as f32 * d;
                        gp[i * wd + j + 1] += (2.0 * w) as f32 * d;
                    }
                }
            }
            s
        })
        .collect::<Vec<f64>>()
        .iter()
        .sum();
    (w * total, g)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        check(|a| content(a, &y, 3.0), &x);
        check(|a| tv(a, 0.5), &x);
        let target = gram(t(1, 3, 4, 4, 3).sample(0), 3, 16);
        check(|a| style(a, &target, 7.0), &x);
    }
}
