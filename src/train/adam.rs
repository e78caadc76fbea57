//! Adam (Kingma & Ba), as PyTorch implements it (no weight decay, bias-corrected, ε outside
//! the square root), written once ([`Backend::adam`], an op): `train` steps the network's
//! parameters with it and `optimize` the pixels of an image. [`Optimizer`] keeps the moments
//! where the parameters live; [`Adam`] is its host record (what a checkpoint stores).

use crate::backend::{AdamStep, Backend};
use serde::{Deserialize, Serialize};

/// The constants of step `t` (1-based).
fn constants(lr: f64, beta1: f64, beta2: f64, eps: f64, t: u64) -> AdamStep {
    AdamStep {
        lr,
        beta1,
        beta2,
        eps,
        bc1: 1.0 - beta1.powi(t as i32),
        bc2: 1.0 - beta2.powi(t as i32),
    }
}

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

    /// One step on the host: `params[i] -= lr · m̂ / (√v̂ + ε)` with `grads[i]`; a tensor
    /// whose gradient is empty is left alone. The arithmetic is float64, the state float32.
    pub fn step(&mut self, params: &mut [Vec<f32>], grads: &[Vec<f32>]) {
        assert_eq!(params.len(), grads.len(), "one gradient per parameter");
        self.t += 1;
        let k = constants(self.lr, self.beta1, self.beta2, self.eps, self.t);
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
            crate::backend::host::adam(p, g, m, v, &k);
        }
    }
}

/// Adam on a backend: the moments live beside the parameters and each step is one
/// [`Backend::adam`] op per tensor; nothing is read back.
pub struct Optimizer<B: Backend> {
    /// The learning rate of the next step.
    pub lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    /// Steps taken.
    pub t: u64,
    /// First and second moments per parameter tensor (`None` until its first step).
    m: Vec<Option<B::Tensor>>,
    v: Vec<Option<B::Tensor>>,
}

impl<B: Backend> Optimizer<B> {
    pub fn new(lr: f64) -> Self {
        let a = Adam::new(lr);
        Optimizer {
            lr: a.lr,
            beta1: a.beta1,
            beta2: a.beta2,
            eps: a.eps,
            t: a.t,
            m: Vec::new(),
            v: Vec::new(),
        }
    }

    /// A host record (a checkpoint's) on backend `b`.
    pub fn from_host(a: &Adam, b: &B) -> Self {
        let up =
            |v: &Vec<f32>| (!v.is_empty()).then(|| b.upload(&crate::backend::vector(v.clone())));
        Optimizer {
            lr: a.lr,
            beta1: a.beta1,
            beta2: a.beta2,
            eps: a.eps,
            t: a.t,
            m: a.m.iter().map(up).collect(),
            v: a.v.iter().map(up).collect(),
        }
    }

    /// The host record (for a checkpoint): one readback per moment tensor.
    pub fn to_host(&self, b: &B) -> Adam {
        let down = |v: &Option<B::Tensor>| {
            v.as_ref()
                .map_or_else(Vec::new, |t| b.download(t).into_data())
        };
        Adam {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            t: self.t,
            m: self.m.iter().map(down).collect(),
            v: self.v.iter().map(down).collect(),
        }
    }

    /// One step of every parameter with a gradient (`None`: left alone).
    pub fn step(&mut self, b: &B, params: &mut [B::Tensor], grads: &[Option<B::Tensor>]) {
        assert_eq!(params.len(), grads.len(), "one gradient per parameter");
        self.t += 1;
        let k = constants(self.lr, self.beta1, self.beta2, self.eps, self.t);
        self.m.resize_with(params.len(), || None);
        self.v.resize_with(params.len(), || None);
        for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
            let Some(g) = g else { continue };
            let zeros = || {
                b.upload(&crate::backend::vector(vec![
                    0.0;
                    b.dims(p).iter().product()
                ]))
            };
            let m = self.m[i].get_or_insert_with(zeros);
            let v = self.v[i].get_or_insert_with(zeros);
            b.adam(p, g, m, v, &k);
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
