//! Adam (Kingma & Ba), as PyTorch implements it (no weight decay, bias-corrected, ε outside
//! the square root), written once: `train` steps the network's parameters with it and
//! `optimize` the pixels of an image.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Adam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Steps taken.
    pub t: u64,
    /// First and second moment estimates, one per parameter tensor (empty until its first
    /// step).
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

impl Adam {
    pub fn new(lr: f64) -> Self {
        Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            t: 0,
            m: Vec::new(),
            v: Vec::new(),
        }
    }

    /// One step: `params[i] -= lr · m̂ / (√v̂ + ε)` with `grads[i]`; a tensor whose gradient
    /// is empty is left alone. The arithmetic is float64, the state float32.
    pub fn step(&mut self, params: &mut [Vec<f32>], grads: &[Vec<f32>]) {
        assert_eq!(params.len(), grads.len(), "one gradient per parameter");
        self.t += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let bc1 = 1.0 - b1.powi(self.t as i32);
        let bc2 = 1.0 - b2.powi(self.t as i32);
        self.m.resize(params.len(), Vec::new());
        self.v.resize(params.len(), Vec::new());
        for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
            if g.is_empty() {
                continue;
            }
            assert_eq!(g.len(), p.len(), "gradient {i} has the wrong size");
            let (m, v) = (&mut self.m[i], &mut self.v[i]);
            if m.len() != p.len() {
                *m = vec![0.0; p.len()];
                *v = vec![0.0; p.len()];
            }
            for j in 0..p.len() {
                let gj = g[j] as f64;
                let mj = b1 * m[j] as f64 + (1.0 - b1) * gj;
                let vj = b2 * v[j] as f64 + (1.0 - b2) * gj * gj;
                m[j] = mj as f32;
                v[j] = vj as f32;
                let denom = (vj.sqrt() / bc2.sqrt()) + self.eps;
                p[j] = (p[j] as f64 - self.lr * (mj / bc1) / denom) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PyTorch's first Adam step moves every coordinate by exactly lr·sign(g) (m̂ = g,
    /// v̂ = g²), and an empty gradient leaves its tensor untouched.
    #[test]
    fn the_first_step_moves_by_the_learning_rate() {
        let mut a = Adam::new(0.1);
        let mut p = vec![vec![1.0f32, 2.0, 3.0], vec![5.0]];
        a.step(&mut p, &[vec![0.5, -2.0, 1e-3], vec![]]);
        for (got, want) in p[0].iter().zip([0.9f32, 2.1, 2.9]) {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
        assert_eq!(p[1], [5.0]);
        assert_eq!(a.t, 1);
    }
}
