//! The backend seam: the small set of operations the transformation network, the VGG16 loss
//! network and the losses are written in, and nothing more.
//!
//! A backend owns its tensors (`Backend::Tensor`), its prepared convolutions
//! (`Backend::Conv`) and its scalars (`Backend::Scalar`, loss values); data crosses to it only
//! through [`Backend::upload`], [`Backend::download`] and [`Backend::read_scalars`]. A
//! training step keeps everything where the backend computes: parameters and their
//! gradients (vectors are `[1, 1, 1, len]` tensors), instance-norm statistics, Gram matrices,
//! losses and the optimiser's state, and reads back its losses once ([`Backend::adam`] is an
//! op). What stays on the host is named as such: [`Backend::moments`] (the tiled path's
//! cross-tile statistics, a few floats per tile) and [`Backend::gram`] (a style target, once
//! per run).
//!
//! - [`Cpu`]: the engine's own kernels (im2col + GEMM, Winograd, direct AVX-512, sub-pixel
//!   upsampling, the buffer pool, the `IMPASTO_PROFILE` timings).
//! - [`Reference`]: plain loops, no `unsafe`, no SIMD, no tricks: obviously correct, slow.
//!   Every op of every backend is tested against it (`backend::tests`).
//! - `Wgpu` (feature `gpu`): WGSL compute shaders on Vulkan, Metal or DX12.

pub mod cpu;
pub mod device;
pub mod reference;
#[cfg(feature = "gpu")]
pub mod wgpu;

#[cfg(feature = "gpu")]
pub use self::wgpu::Wgpu;
pub use cpu::Cpu;
pub use device::{Device, DeviceChoice};
pub use reference::Reference;

pub use crate::kernels::norm::{Moments, NormStats};
use crate::kernels::{ConvGeom, PadMode};
use crate::tensor::Tensor;

/// How a convolution fills its border.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// Reflection, `k/2` on every side (johnson).
    Reflect,
    /// Zeros, `k/2` on every side (VGG).
    Zero,
    /// TensorFlow's `SAME` (ONNX `SAME_UPPER`): zeros, the odd one after (seed).
    SameUpper,
}

/// What happens to the input before the convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    None,
    /// Nearest-neighbour ×2 upsampling (johnson's decoder).
    Upsample,
    /// Stride-2 transposed convolution, pads (0, 1) (seed's decoder); the weight is stored
    /// in ConvTranspose's `[c_in][c_out][k][k]` layout.
    Transposed,
}

/// One convolution layer's shape: what a backend needs besides the weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvSpec {
    pub c_in: usize,
    pub c_out: usize,
    pub k: usize,
    pub stride: usize,
    pub padding: Padding,
    pub resample: Resample,
    pub bias: bool,
}

impl ConvSpec {
    /// A plain `k×k` convolution.
    pub fn new(c_in: usize, c_out: usize, k: usize, stride: usize, padding: Padding) -> Self {
        ConvSpec {
            c_in,
            c_out,
            k,
            stride,
            padding,
            resample: Resample::None,
            bias: true,
        }
    }

    /// The weight's shape as stored in model files: `[c_out, c_in, k, k]`, or
    /// ConvTranspose's `[c_in, c_out, k, k]`.
    pub fn weight_shape(&self) -> [usize; 4] {
        match self.resample {
            Resample::Transposed => [self.c_in, self.c_out, self.k, self.k],
            _ => [self.c_out, self.c_in, self.k, self.k],
        }
    }

    /// PyTorch's fan-in for initialisation (`weight.size(1)·k·k`, for both layouts).
    pub fn fan_in(&self) -> usize {
        self.weight_shape()[1] * self.k * self.k
    }

    /// The kernels' geometry for an `h × w` input.
    pub fn geom(&self, h: usize, w: usize) -> ConvGeom {
        let k = self.k;
        match (self.padding, self.resample) {
            // ConvTranspose k, stride 2, pads (0, 1): zero-insert, pad k-1 before, k-2 after.
            (_, Resample::Transposed) => ConvGeom {
                k,
                stride: 1,
                pad: [k - 1, k - 2, k - 1, k - 2],
                mode: PadMode::Zero,
                upsample: 1,
                dilate: 2,
            },
            (Padding::SameUpper, _) => {
                let same = |n: usize| {
                    let out = n.div_ceil(self.stride);
                    let total = ((out - 1) * self.stride + k).saturating_sub(n);
                    (total / 2, total - total / 2)
                };
                let ((t, b), (l, r)) = (same(h), same(w));
                ConvGeom {
                    k,
                    stride: self.stride,
                    pad: [t, b, l, r],
                    mode: PadMode::Zero,
                    upsample: 1,
                    dilate: 1,
                }
            }
            (p, r) => ConvGeom {
                k,
                stride: self.stride,
                pad: [k / 2; 4],
                mode: if p == Padding::Reflect {
                    PadMode::Reflect
                } else {
                    PadMode::Zero
                },
                upsample: if r == Resample::Upsample { 2 } else { 1 },
                dilate: 1,
            },
        }
    }

    /// Output size for an `h × w` input.
    pub fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        self.geom(h, w).out_size(h, w)
    }

    /// Nominal multiply-adds ×2 for an `h × w` input.
    pub fn flops(&self, h: usize, w: usize) -> f64 {
        let (ho, wo) = self.out_size(h, w);
        2.0 * (ho * wo) as f64 * (self.c_in * self.c_out * self.k * self.k) as f64
    }
}

/// The gradients of one convolution, summed over the batch, on the backend.
pub struct ConvGrads<T> {
    /// d/dx, when asked for.
    pub dx: Option<T>,
    /// d/dW in the stored layout ([`ConvSpec::weight_shape`]), flat.
    pub dw: T,
    /// d/db (zeros when the layer has no bias), flat.
    pub db: T,
}

/// One Adam step's constants (PyTorch's Adam: no weight decay, ε outside the square root):
/// `m ← β1·m + (1−β1)·g`, `v ← β2·v + (1−β2)·g²`, `p ← p − lr·(m/bc1)/(√v/√bc2 + ε)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// `1 − β1ᵗ` and `1 − β2ᵗ` for this step `t` (1-based).
    pub bc1: f64,
    pub bc2: f64,
}

/// What went wrong on a device, found when a result was read back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("the GPU ({adapter}) ran out of memory: {msg}")]
    OutOfMemory { adapter: String, msg: String },
    #[error("the GPU ({adapter}) was lost: {msg}")]
    Lost { adapter: String, msg: String },
    #[error("the GPU ({adapter}) refused the work: {msg}")]
    Failed { adapter: String, msg: String },
}

/// A flat `[1, 1, 1, len]` host tensor (a parameter vector).
pub fn vector(v: Vec<f32>) -> Tensor {
    Tensor::from_vec(1, 1, 1, v.len(), v)
}

/// How closely a backend's ops follow the reference backend's (relative error over a
/// tensor): what `backend::tests::conformance` holds each backend to.
#[derive(Clone, Copy, Debug)]
pub struct Tolerances {
    /// Convolutions and their gradients, Gram matrices.
    pub conv: f64,
    /// Per-channel statistics and sums (instance norm, centring, bias gradients).
    pub reduction: f64,
    /// Loss values (MSE, total variation).
    pub loss: f64,
}

/// The network's output function.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OutputFn {
    /// The raw conv output (0..255 scale), clamped only when written as an image.
    Linear,
    /// `clip(scale·tanh(x) + shift, 0, 255)`.
    ScaledTanh { scale: f32, shift: f32 },
}

/// The operations the networks and losses are made of. Shapes are NCHW; every op that takes
/// a `sample` works on that sample of the batch.
pub trait Backend: Clone + Send + Sync + std::fmt::Debug + 'static {
    /// A dense NCHW float32 tensor on the device.
    type Tensor: Clone + Send + Sync;
    /// A convolution's weights, prepared for this backend.
    type Conv: Clone + Send + Sync;
    /// A number computed on the backend (a loss value), read with
    /// [`Backend::read_scalars`].
    type Scalar: Clone + Send + Sync;

    fn name(&self) -> &'static str;

    // Moving data.
    fn upload(&self, t: &Tensor) -> Self::Tensor;
    fn download(&self, t: &Self::Tensor) -> Tensor;
    /// [`Backend::upload`] of a tensor the caller is done with: a backend whose tensors are
    /// host tensors takes it as it is (a live 640×480 frame's input is 4 MB).
    fn upload_owned(&self, t: Tensor) -> Self::Tensor {
        self.upload(&t)
    }
    /// [`Backend::download`] of a tensor the caller is done with (see `upload_owned`).
    fn download_owned(&self, t: Self::Tensor) -> Tensor {
        self.download(&t)
    }
    /// [`Backend::download_owned`] that returns the device's error (out of memory, a lost
    /// device) instead of panicking: the stylize pipeline's one readback.
    fn try_download_owned(&self, t: Self::Tensor) -> Result<Tensor, DeviceError> {
        Ok(self.download_owned(t))
    }
    fn dims(&self, t: &Self::Tensor) -> [usize; 4];
    /// The tensor's values where they already are on the host (a host backend's tensors),
    /// without a copy.
    fn as_host<'a>(&self, _t: &'a Self::Tensor) -> Option<&'a [f32]> {
        None
    }
    /// Scalars read back together (one synchronisation); the device's error if the work
    /// behind them failed (out of memory, a lost device).
    fn read_scalars(&self, s: &[&Self::Scalar]) -> Result<Vec<f64>, DeviceError>;
    /// A scalar the host already knows.
    fn scalar(&self, v: f64) -> Self::Scalar;
    /// The largest tensor (bytes) the device can hold in one buffer, where it has such a
    /// limit (a GPU adapter's binding size): the stylize pipeline tiles pictures to fit.
    fn max_tensor_bytes(&self) -> Option<u64> {
        None
    }

    // Convolutions (plain, strided, upsampling, transposed).
    fn conv(&self, spec: &ConvSpec, weight: &[f32], bias: Option<&[f32]>) -> Self::Conv;
    /// New weights for a prepared convolution from flat tensors on the backend (after an
    /// optimiser step), in the stored layout.
    fn conv_set(&self, conv: &mut Self::Conv, weight: &Self::Tensor, bias: Option<&Self::Tensor>);
    /// `precise`: no fast algorithms with larger rounding error (Winograd); training uses it.
    fn conv_forward(&self, conv: &Self::Conv, x: &Self::Tensor, precise: bool) -> Self::Tensor;
    fn conv_backward(
        &self,
        conv: &Self::Conv,
        x: &Self::Tensor,
        dy: &Self::Tensor,
        want_dx: bool,
    ) -> ConvGrads<Self::Tensor>;
    /// The input gradient alone, for a frozen layer (VGG) and an `h × w` input.
    fn conv_input_grad(
        &self,
        conv: &Self::Conv,
        dy: &Self::Tensor,
        h: usize,
        w: usize,
    ) -> Self::Tensor;

    /// A forward pass where bfloat16 products (summed in f32) are good enough: fast
    /// training. A backend without a bf16 matrix unit (or a layer it has no bf16 kernel
    /// for) runs its fast f32 kernels.
    fn conv_forward_bf16(&self, conv: &Self::Conv, x: &Self::Tensor) -> Self::Tensor {
        self.conv_forward(conv, x, false)
    }
    /// Whether [`Backend::conv_forward_bf16`] rounds its products to bfloat16 here (a CPU
    /// with AMX), rather than running the f32 kernels.
    fn bf16_products(&self) -> bool {
        false
    }
    /// [`Backend::conv_backward`] with the input gradient in bfloat16 products, as
    /// [`Backend::conv_forward_bf16`] (the weight gradients stay f32).
    fn conv_backward_bf16(
        &self,
        conv: &Self::Conv,
        x: &Self::Tensor,
        dy: &Self::Tensor,
        want_dx: bool,
    ) -> ConvGrads<Self::Tensor> {
        self.conv_backward(conv, x, dy, want_dx)
    }
    /// [`Backend::conv_input_grad`] in bfloat16 products, as [`Backend::conv_forward_bf16`].
    fn conv_input_grad_bf16(
        &self,
        conv: &Self::Conv,
        dy: &Self::Tensor,
        h: usize,
        w: usize,
    ) -> Self::Tensor {
        self.conv_input_grad(conv, dy, h, w)
    }

    // Instance norm.
    /// Per-channel moments of rows `rows` × columns `cols` of one sample.
    fn moments(
        &self,
        x: &Self::Tensor,
        sample: usize,
        rows: (usize, usize),
        cols: (usize, usize),
    ) -> Moments;
    /// `x ← γ·(x − μ)·inv_std + β`, then ReLU if asked, then `+ residual`; one sample.
    #[allow(clippy::too_many_arguments)]
    fn norm_apply(
        &self,
        x: &mut Self::Tensor,
        sample: usize,
        stats: &NormStats,
        gamma: &Self::Tensor,
        beta: &Self::Tensor,
        relu: bool,
        residual: Option<&Self::Tensor>,
    );
    /// Instance norm of one sample with its own statistics over rows `rows` × columns
    /// `cols` (`eps` added to the variance), then [`Backend::norm_apply`]. A backend whose
    /// tensors live elsewhere computes the statistics there, without reading them back; the
    /// default is moments → statistics (f64) → apply, exactly the host path.
    #[allow(clippy::too_many_arguments)]
    fn norm_own(
        &self,
        x: &mut Self::Tensor,
        sample: usize,
        (rows, cols): ((usize, usize), (usize, usize)),
        eps: f64,
        gamma: &Self::Tensor,
        beta: &Self::Tensor,
        relu: bool,
        residual: Option<&Self::Tensor>,
    ) {
        let st = self.moments(x, sample, rows, cols).stats(eps);
        self.norm_apply(x, sample, &st, gamma, beta, relu, residual);
    }
    /// Instance norm of every sample over its whole plane, for training: `x ← γ·x̂ + β`,
    /// ReLU, `+ residual`; returns x̂ and each sample's 1/σ (`[n, c, 1, 1]`), both on the
    /// backend. The default is the host path, bit for bit.
    #[allow(clippy::too_many_arguments)]
    fn norm_train(
        &self,
        x: &mut Self::Tensor,
        eps: f64,
        gamma: &Self::Tensor,
        beta: &Self::Tensor,
        relu: bool,
        residual: Option<&Self::Tensor>,
    ) -> (Self::Tensor, Self::Tensor) {
        let [n, c, h, w] = self.dims(x);
        let ones = self.upload(&vector(vec![1.0; c]));
        let zeros = self.upload(&vector(vec![0.0; c]));
        let mut xhat = x.clone();
        let mut inv = Vec::with_capacity(n * c);
        for s in 0..n {
            let st = self.moments(x, s, (0, h), (0, w)).stats(eps);
            self.norm_apply(&mut xhat, s, &st, &ones, &zeros, false, None);
            self.norm_apply(x, s, &st, gamma, beta, relu, residual);
            inv.extend_from_slice(&st.inv_std);
        }
        (xhat, self.upload(&Tensor::from_vec(n, c, 1, 1, inv)))
    }
    /// Backward of `y = γ·x̂ + β` per sample, given x̂, each sample's 1/σ (`[n, c, 1, 1]`)
    /// and dy: returns (dx, dγ, dβ), dγ and dβ summed over the batch.
    fn norm_backward(
        &self,
        xhat: &Self::Tensor,
        dy: &Self::Tensor,
        inv_std: &Self::Tensor,
        gamma: &Self::Tensor,
    ) -> (Self::Tensor, Self::Tensor, Self::Tensor);

    // Elementwise.
    fn relu(&self, x: &mut Self::Tensor);
    /// `d ← 0` wherever `y ≤ 0` (the backward of a ReLU whose output was `y`).
    fn relu_mask(&self, d: &mut Self::Tensor, y: &Self::Tensor);
    /// `a ← a + b`.
    fn add(&self, a: &mut Self::Tensor, b: &Self::Tensor);
    /// Each sample's per-channel mean subtracted (f64 sums).
    fn centre(&self, x: &Self::Tensor) -> Self::Tensor;
    /// Output channel `i` = `scale[i]·x[src[i]] + shift[i]` (VGG's preprocessing).
    fn channel_affine(
        &self,
        x: &Self::Tensor,
        src: [usize; 3],
        scale: [f32; 3],
        shift: [f32; 3],
    ) -> Self::Tensor;
    /// Backward of [`Backend::channel_affine`].
    fn channel_affine_backward(
        &self,
        dy: &Self::Tensor,
        src: [usize; 3],
        scale: [f32; 3],
    ) -> Self::Tensor;
    fn output(&self, x: &mut Self::Tensor, f: OutputFn);
    /// `d ← d · f'(pre)` (zero where the output was clipped).
    fn output_backward(&self, d: &mut Self::Tensor, pre: &Self::Tensor, f: OutputFn);

    // Pooling.
    fn max_pool2(&self, x: &Self::Tensor) -> Self::Tensor;
    /// Each gradient goes to the first maximum of its window.
    fn max_pool2_backward(&self, x: &Self::Tensor, dy: &Self::Tensor) -> Self::Tensor;

    // Losses.
    /// Each sample's Gram matrix F·Fᵀ / (C·H·W), C×C, on the host (a style target, once).
    fn gram(&self, f: &Self::Tensor) -> Vec<Vec<f32>>;
    /// `dF = dG · F` per sample (dG symmetric, C×C per sample).
    fn gram_backward(&self, f: &Self::Tensor, dg: &[Vec<f32>]) -> Self::Tensor;
    /// The style loss at one tap, `w · mean over the batch and C×C of (gram(f) − target)²`,
    /// and its gradient at `f`; `target` is one `[1, 1, C, C]` Gram matrix. The default is
    /// the host path; a device keeps the Gram matrices where they are.
    fn style_loss(
        &self,
        f: &Self::Tensor,
        target: &Self::Tensor,
        w: f64,
    ) -> (Self::Scalar, Self::Tensor) {
        let [n, c, h, wd] = self.dims(f);
        let target = self.download(target).into_data();
        let denom = (n * c * c) as f64;
        let mut total = 0.0f64;
        let dg: Vec<Vec<f32>> = self
            .gram(f)
            .into_iter()
            .map(|g| {
                let mut sum = 0.0f64;
                let d = g
                    .iter()
                    .zip(&target)
                    .map(|(&x, &t)| {
                        let e = (x - t) as f64;
                        sum += e * e;
                        // dL/dG = 2w/(B·C²)·(G − S); dL/dF = 2·dG·F/(C·H·W) (dG symmetric).
                        (2.0 * w / denom * e * 2.0 / (c * h * wd) as f64) as f32
                    })
                    .collect();
                total += w * sum / denom;
                d
            })
            .collect();
        (self.scalar(total), self.gram_backward(f, &dg))
    }
    /// `w · mean((a − b)²)` and its gradient with respect to `a`.
    fn mse(&self, a: &Self::Tensor, b: &Self::Tensor, w: f64) -> (Self::Scalar, Self::Tensor);
    /// `w · Σ (vertical² + horizontal² neighbour differences)` and its gradient.
    fn tv(&self, y: &Self::Tensor, w: f64) -> (Self::Scalar, Self::Tensor);
    /// `Σ x²` (a divergence check: finite exactly when every element is).
    fn sum_squares(&self, x: &Self::Tensor) -> Self::Scalar;

    // The optimiser.
    /// One Adam step of parameter `p` with gradient `g` and moments `m`, `v` (all the same
    /// length), in place.
    fn adam(
        &self,
        p: &mut Self::Tensor,
        g: &Self::Tensor,
        m: &mut Self::Tensor,
        v: &mut Self::Tensor,
        step: &AdamStep,
    );
}

/// The ops whose arithmetic every host backend shares.
pub mod host {
    use super::AdamStep;
    use crate::tensor::Tensor;

    /// [`super::Backend::adam`] on host slices; float64 arithmetic, float32 state. Each
    /// element on its own, so large tensors are split across the threads (same bits).
    pub fn adam(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: &AdamStep) {
        use rayon::prelude::*;
        assert!(
            g.len() == p.len() && m.len() == p.len() && v.len() == p.len(),
            "adam: sizes differ"
        );
        const CHUNK: usize = 1 << 14;
        if p.len() <= CHUNK {
            return adam_run(p, g, m, v, s);
        }
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| adam_run(p, g, m, v, s));
    }

    fn adam_run(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: &AdamStep) {
        for j in 0..p.len() {
            let gj = g[j] as f64;
            let mj = s.beta1 * m[j] as f64 + (1.0 - s.beta1) * gj;
            let vj = s.beta2 * v[j] as f64 + (1.0 - s.beta2) * gj * gj;
            m[j] = mj as f32;
            v[j] = vj as f32;
            let denom = (vj.sqrt() / s.bc2.sqrt()) + s.eps;
            p[j] = (p[j] as f64 - s.lr * (mj / s.bc1) / denom) as f32;
        }
    }

    /// `Σ x²` in float64.
    pub fn sum_squares(x: &Tensor) -> f64 {
        x.data.iter().map(|&v| (v as f64) * (v as f64)).sum()
    }
}

#[cfg(test)]
mod tests;
