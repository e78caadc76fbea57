//! The GPU backend: the [`Backend`] ops as WGSL compute shaders run through wgpu, on Vulkan
//! (Linux, Windows, Android; also Mesa's lavapipe, a Vulkan driver that runs on the CPU,
//! which is how the test suite proves these kernels on machines without a GPU), Metal
//! (macOS) and DX12 (Windows).
//!
//! Tensors live in device buffers (pooled); every op records into one pending command
//! encoder, and nothing is read back until a result is asked for: `download`,
//! `read_scalars` (a training step's losses, once per step), and the two ops the trait
//! returns on the host (`moments` for the tiled path's cross-tile statistics, `gram` for a
//! style target once per run). Parameters, their gradients, Adam's moments, instance-norm
//! statistics and Gram matrices stay on the device. Sums are f32 (WGSL has no f64):
//! Kahan-compensated within a thread, a tree across threads, and the per-plane statistics
//! shifted by a sample value so that the variance does not cancel; a loss is kept as its
//! partial sums and added up in f64 when read. Measured against the reference backend's f64
//! in `backend::tests` (see [`TOLERANCES`]).

mod context;
mod launch;
mod shaders;
mod tensor;

use std::sync::Arc;

use context::{groups_1d, Ctx, Kernel};
pub use context::{list as adapters, AdapterSummary, OpenError};
use tensor::transpose_kernel;
pub use tensor::{GpuConv, GpuScalar, GpuTensor};

use super::{AdamStep, Backend, ConvGrads, ConvSpec, DeviceError, OutputFn, Resample};
use crate::kernels::norm::{Moments, NormStats};
use crate::tensor::Tensor;

/// The wgpu backend: a handle to one opened device (cheap to clone).
#[derive(Clone)]
pub struct Wgpu {
    ctx: Arc<Ctx>,
}

impl std::fmt::Debug for Wgpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Wgpu({:?})", self.ctx)
    }
}

impl Wgpu {
    /// The best adapter there is: a real GPU first, else a software one (lavapipe).
    pub fn best() -> Result<Self, OpenError> {
        Ok(Wgpu {
            ctx: Arc::new(Ctx::open(false)?),
        })
    }

    /// The best real GPU; an error where there is only a CPU or software adapter.
    pub fn hardware() -> Result<Self, OpenError> {
        Ok(Wgpu {
            ctx: Arc::new(Ctx::open(true)?),
        })
    }

    /// The adapter this backend runs on.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.ctx.adapter
    }

    /// How many times this device's results have been read back so far (each one waits for
    /// the device): a training step reads once, an inference pass once.
    pub fn readbacks(&self) -> u64 {
        self.ctx
            .readbacks
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The tolerances this backend meets against the reference backend's f64, measured by
/// `backend::tests` (relative error over a tensor; loss values relative).
pub const TOLERANCES: crate::backend::Tolerances = crate::backend::Tolerances {
    conv: 1e-5,
    reduction: 1e-5,
    loss: 1e-6,
};

impl Backend for Wgpu {
    type Tensor = GpuTensor;
    type Conv = GpuConv;
    type Scalar = GpuScalar;

    fn name(&self) -> &'static str {
        "wgpu"
    }

    fn read_scalars(&self, s: &[&GpuScalar]) -> Result<Vec<f64>, DeviceError> {
        Wgpu::read_scalars(self, s)
    }

    fn scalar(&self, v: f64) -> GpuScalar {
        Wgpu::scalar(self, v)
    }

    fn upload(&self, t: &Tensor) -> GpuTensor {
        GpuTensor {
            ctx: self.ctx.clone(),
            buf: Some(self.ctx.upload(&t.data)),
            dims: t.shape(),
        }
    }

    fn download(&self, t: &GpuTensor) -> Tensor {
        let [n, c, h, w] = t.dims;
        Tensor::from_vec(n, c, h, w, self.ctx.read(t.buf(), t.len()))
    }

    fn try_download_owned(&self, t: GpuTensor) -> Result<Tensor, DeviceError> {
        let [n, c, h, w] = t.dims;
        let data = self.ctx.read_many(&[(t.buf(), t.len())])?.remove(0);
        Ok(Tensor::from_vec(n, c, h, w, data))
    }

    fn dims(&self, t: &GpuTensor) -> [usize; 4] {
        t.dims
    }

    fn max_tensor_bytes(&self) -> Option<u64> {
        Some(self.ctx.max_tensor_bytes())
    }

    fn conv(&self, spec: &ConvSpec, weight: &[f32], bias: Option<&[f32]>) -> GpuConv {
        let n: usize = spec.weight_shape().iter().product();
        assert_eq!(weight.len(), n, "weight size");
        let w = match spec.resample {
            Resample::Transposed => transpose_kernel(weight, spec.c_in, spec.c_out, spec.k),
            _ => weight.to_vec(),
        };
        let b = bias.map_or_else(|| vec![0.0; spec.c_out], <[f32]>::to_vec);
        GpuConv {
            spec: *spec,
            w: self.upload(&super::vector(w)),
            b: self.upload(&super::vector(b)),
        }
    }

    fn conv_set(&self, conv: &mut GpuConv, weight: &GpuTensor, bias: Option<&GpuTensor>) {
        let s = conv.spec;
        assert_eq!(weight.len(), conv.w.len(), "conv_set: weight size");
        if s.resample == Resample::Transposed {
            conv.w = self.permute(weight, s.c_in, s.c_out, s.k);
        } else {
            self.ctx
                .copy(weight.buf(), conv.w.buf(), 4 * weight.len() as u64);
        }
        if let Some(b) = bias {
            assert_eq!(b.len(), s.c_out, "conv_set: bias size");
            self.ctx.copy(b.buf(), conv.b.buf(), 4 * b.len() as u64);
        }
    }

    fn conv_forward(&self, conv: &GpuConv, x: &GpuTensor, _precise: bool) -> GpuTensor {
        let s = conv.spec;
        let [n, c, h, w] = x.dims;
        assert_eq!(c, s.c_in, "conv input channels");
        let (ho, wo) = s.out_size(h, w);
        let y = self.tensor([n, s.c_out, ho, wo]);
        self.gemm(
            Kernel::ConvForward,
            (s.c_out, ho * wo, s.c_in * s.k * s.k),
            n,
            1,
            s.c_in * s.k * s.k,
            &conv.words(n, h, w),
            &[x.buf(), conv.w.buf(), conv.b.buf(), y.buf()],
        );
        y
    }

    fn conv_backward(
        &self,
        conv: &GpuConv,
        x: &GpuTensor,
        dy: &GpuTensor,
        want_dx: bool,
    ) -> ConvGrads<GpuTensor> {
        let s = conv.spec;
        let [n, _, h, w] = x.dims;
        let [_, _, ho, wo] = dy.dims;
        let kk = s.c_in * s.k * s.k;
        let r = n * ho * wo;
        let (splits, chunk) = Self::split(s.c_out, kk, 1, r);
        let part = self.ctx.alloc(4 * (splits * s.c_out * kk) as u64);
        self.gemm(
            Kernel::ConvWeightGrad,
            (s.c_out, kk, r),
            1,
            splits,
            chunk,
            &conv.words(n, h, w),
            &[x.buf(), dy.buf(), &part],
        );
        let dx = want_dx.then(|| self.conv_input_grad(conv, dy, h, w));
        let mut dw = self.sum_splits(&part, [1, 1, 1, s.c_out * kk], splits, 1, 1.0);
        self.ctx.recycle(part);
        if s.resample == Resample::Transposed {
            dw = self.permute(&dw, s.c_out, s.c_in, s.k);
        }
        let db = if s.bias {
            let sums = self.plane_sums(dy, Some(dy), 0, n, (0, ho), (0, wo));
            let db = self.plane_totals(&sums, n, s.c_out, 0);
            self.ctx.recycle(sums);
            db
        } else {
            self.upload(&super::vector(vec![0.0; s.c_out]))
        };
        ConvGrads { dx, dw, db }
    }

    fn conv_input_grad(&self, conv: &GpuConv, dy: &GpuTensor, h: usize, w: usize) -> GpuTensor {
        let s = conv.spec;
        let n = dy.dims[0];
        let dx = self.tensor([n, s.c_in, h, w]);
        self.gemm(
            Kernel::ConvInputGrad,
            (s.c_in, h * w, s.c_out * s.k * s.k),
            n,
            1,
            s.c_out * s.k * s.k,
            &conv.words(n, h, w),
            &[dy.buf(), conv.w.buf(), dx.buf()],
        );
        dx
    }

    fn moments(
        &self,
        x: &GpuTensor,
        sample: usize,
        rows: (usize, usize),
        cols: (usize, usize),
    ) -> Moments {
        let c = x.dims[1];
        let sums = self.plane_sums(x, None, sample, 1, rows, cols);
        let v = self.ctx.read(&sums, 3 * c);
        self.ctx.recycle(sums);
        let count = ((rows.1 - rows.0) * (cols.1 - cols.0)) as u64;
        let n = count as f64;
        let mut m = Moments::zeros(c);
        m.count = count;
        for ch in 0..c {
            let (s1, s2, shift) = (v[3 * ch] as f64, v[3 * ch + 1] as f64, v[3 * ch + 2] as f64);
            m.sum[ch] = s1 + n * shift;
            m.sumsq[ch] = s2 + 2.0 * shift * s1 + n * shift * shift;
        }
        m
    }

    fn norm_apply(
        &self,
        x: &mut GpuTensor,
        sample: usize,
        stats: &NormStats,
        gamma: &GpuTensor,
        beta: &GpuTensor,
        relu: bool,
        residual: Option<&GpuTensor>,
    ) {
        let [_, c, h, w] = x.dims;
        let per: Vec<f32> = (0..c)
            .flat_map(|i| [stats.mean[i], stats.inv_std[i]])
            .collect();
        let s = self.small(&per);
        let plane = c * h * w;
        self.ctx.dispatch(
            Kernel::NormApply,
            &[
                plane,
                h * w,
                sample * plane,
                relu as usize,
                residual.is_some() as usize,
            ]
            .map(|v| v as u32),
            &[
                x.buf(),
                &s,
                gamma.buf(),
                beta.buf(),
                residual.map_or(&self.ctx.dummy, |r| r.buf()),
            ],
            groups_1d(plane),
        );
    }

    fn norm_own(
        &self,
        x: &mut GpuTensor,
        sample: usize,
        (rows, cols): ((usize, usize), (usize, usize)),
        eps: f64,
        gamma: &GpuTensor,
        beta: &GpuTensor,
        relu: bool,
        residual: Option<&GpuTensor>,
    ) {
        let [_, c, h, w] = x.dims;
        let sums = self.plane_sums(x, None, sample, 1, rows, cols);
        let plane = c * h * w;
        let count = (rows.1 - rows.0) * (cols.1 - cols.0);
        self.ctx.dispatch(
            Kernel::NormOwn,
            &[
                plane as u32,
                (h * w) as u32,
                (sample * plane) as u32,
                relu as u32,
                residual.is_some() as u32,
                count as u32,
                (eps as f32).to_bits(),
            ],
            &[
                x.buf(),
                &sums,
                gamma.buf(),
                beta.buf(),
                residual.map_or(&self.ctx.dummy, |r| r.buf()),
            ],
            groups_1d(plane),
        );
        self.ctx.recycle(sums);
    }

    fn norm_train(
        &self,
        x: &mut GpuTensor,
        eps: f64,
        gamma: &GpuTensor,
        beta: &GpuTensor,
        relu: bool,
        residual: Option<&GpuTensor>,
    ) -> (GpuTensor, GpuTensor) {
        let [n, c, h, w] = x.dims;
        let sums = self.plane_sums(x, None, 0, n, (0, h), (0, w));
        let xhat = self.tensor(x.dims);
        let inv = self.tensor([n, c, 1, 1]);
        self.ctx.dispatch(
            Kernel::NormTrain,
            &[
                x.len() as u32,
                (h * w) as u32,
                c as u32,
                relu as u32,
                residual.is_some() as u32,
                (eps as f32).to_bits(),
            ],
            &[
                x.buf(),
                &sums,
                gamma.buf(),
                beta.buf(),
                residual.map_or(&self.ctx.dummy, |r| r.buf()),
                xhat.buf(),
                inv.buf(),
            ],
            groups_1d(x.len()),
        );
        self.ctx.recycle(sums);
        (xhat, inv)
    }

    fn norm_backward(
        &self,
        xhat: &GpuTensor,
        dy: &GpuTensor,
        inv_std: &GpuTensor,
        gamma: &GpuTensor,
    ) -> (GpuTensor, GpuTensor, GpuTensor) {
        let [n, c, h, w] = xhat.dims;
        let sums = self.plane_sums(xhat, Some(dy), 0, n, (0, h), (0, w));
        let dx = self.tensor(xhat.dims);
        self.ctx.dispatch(
            Kernel::NormBackward,
            &[xhat.len() as u32, (h * w) as u32, c as u32],
            &[
                xhat.buf(),
                dy.buf(),
                &sums,
                gamma.buf(),
                inv_std.buf(),
                dx.buf(),
            ],
            groups_1d(xhat.len()),
        );
        let dg = self.plane_totals(&sums, n, c, 1);
        let db = self.plane_totals(&sums, n, c, 0);
        self.ctx.recycle(sums);
        (dx, dg, db)
    }

    fn relu(&self, x: &mut GpuTensor) {
        self.ctx.dispatch(
            Kernel::Pointwise,
            &[x.len() as u32, 0],
            &[x.buf(), &self.ctx.dummy],
            groups_1d(x.len()),
        );
    }

    fn relu_mask(&self, d: &mut GpuTensor, y: &GpuTensor) {
        assert_eq!(d.dims, y.dims, "relu_mask: shapes differ");
        self.ctx.dispatch(
            Kernel::Pointwise,
            &[d.len() as u32, 1],
            &[d.buf(), y.buf()],
            groups_1d(d.len()),
        );
    }

    fn add(&self, a: &mut GpuTensor, b: &GpuTensor) {
        assert_eq!(a.dims, b.dims, "add: shapes differ");
        self.ctx.dispatch(
            Kernel::Pointwise,
            &[a.len() as u32, 2],
            &[a.buf(), b.buf()],
            groups_1d(a.len()),
        );
    }

    fn centre(&self, x: &GpuTensor) -> GpuTensor {
        let [n, _, h, w] = x.dims;
        let sums = self.plane_sums(x, None, 0, n, (0, h), (0, w));
        let y = self.tensor(x.dims);
        self.ctx.dispatch(
            Kernel::Centre,
            &[x.len() as u32, (h * w) as u32],
            &[x.buf(), &sums, y.buf()],
            groups_1d(x.len()),
        );
        self.ctx.recycle(sums);
        y
    }

    fn channel_affine(
        &self,
        x: &GpuTensor,
        src: [usize; 3],
        scale: [f32; 3],
        shift: [f32; 3],
    ) -> GpuTensor {
        let [n, _, h, w] = x.dims;
        let y = self.tensor([n, 3, h, w]);
        self.affine(x, &y, 0, src, scale, shift);
        y
    }

    fn channel_affine_backward(
        &self,
        dy: &GpuTensor,
        src: [usize; 3],
        scale: [f32; 3],
    ) -> GpuTensor {
        let dx = self.tensor(dy.dims);
        self.affine(dy, &dx, 1, src, scale, [0.0; 3]);
        dx
    }

    fn output(&self, x: &mut GpuTensor, f: OutputFn) {
        if let OutputFn::ScaledTanh { scale, shift } = f {
            self.ctx.dispatch(
                Kernel::Output,
                &[x.len() as u32, 0, scale.to_bits(), shift.to_bits()],
                &[x.buf(), &self.ctx.dummy],
                groups_1d(x.len()),
            );
        }
    }

    fn output_backward(&self, d: &mut GpuTensor, pre: &GpuTensor, f: OutputFn) {
        if let OutputFn::ScaledTanh { scale, shift } = f {
            self.ctx.dispatch(
                Kernel::Output,
                &[d.len() as u32, 1, scale.to_bits(), shift.to_bits()],
                &[d.buf(), pre.buf()],
                groups_1d(d.len()),
            );
        }
    }

    fn max_pool2(&self, x: &GpuTensor) -> GpuTensor {
        let [n, c, h, w] = x.dims;
        let y = self.tensor([n, c, h / 2, w / 2]);
        self.ctx.dispatch(
            Kernel::MaxPool,
            &[y.len() as u32, 0, h as u32, w as u32],
            &[x.buf(), &self.ctx.dummy, y.buf()],
            groups_1d(y.len()),
        );
        y
    }

    fn max_pool2_backward(&self, x: &GpuTensor, dy: &GpuTensor) -> GpuTensor {
        let [_, _, h, w] = x.dims;
        let dx = self.tensor(x.dims);
        self.ctx.dispatch(
            Kernel::MaxPool,
            &[x.len() as u32, 1, h as u32, w as u32],
            &[x.buf(), dy.buf(), dx.buf()],
            groups_1d(x.len()),
        );
        dx
    }

    fn gram(&self, f: &GpuTensor) -> Vec<Vec<f32>> {
        let c = f.dims[1];
        let g = self.gram_tensor(f);
        let v = self.ctx.read(g.buf(), g.len());
        v.chunks(c * c).map(<[f32]>::to_vec).collect()
    }

    fn gram_backward(&self, f: &GpuTensor, dg: &[Vec<f32>]) -> GpuTensor {
        let [n, c, _, _] = f.dims;
        let flat: Vec<f32> = dg.iter().flatten().copied().collect();
        assert_eq!(flat.len(), n * c * c, "gram_backward: dG size");
        let g = self.upload(&Tensor::from_vec(n, 1, c, c, flat));
        self.gram_backward_dev(f, &g)
    }

    fn style_loss(&self, f: &GpuTensor, target: &GpuTensor, w: f64) -> (GpuScalar, GpuTensor) {
        let [n, c, h, wd] = f.dims;
        assert_eq!(target.len(), c * c, "style_loss: target size");
        let g = self.gram_tensor(f);
        let denom = (n * c * c) as f64;
        // dL/dG = 2w/(B·C²)·(G − S); dL/dF = 2·dG·F/(C·H·W) (dG symmetric).
        let k = 2.0 * w / denom * 2.0 / (c * h * wd) as f64;
        let dg = self.tensor(g.dims);
        self.ctx.dispatch(
            Kernel::LossGrad,
            &[g.len() as u32, 0, (k as f32).to_bits(), (c * c) as u32, 0],
            &[g.buf(), target.buf(), dg.buf()],
            groups_1d(g.len()),
        );
        let loss = self.loss_sum(&g, target, 0, c * c, w / denom);
        (loss, self.gram_backward_dev(f, &dg))
    }

    fn mse(&self, a: &GpuTensor, b: &GpuTensor, w: f64) -> (GpuScalar, GpuTensor) {
        assert_eq!(a.dims, b.dims, "mse: shapes differ");
        let n = a.len() as f64;
        let g = self.tensor(a.dims);
        self.ctx.dispatch(
            Kernel::LossGrad,
            &[
                a.len() as u32,
                0,
                ((2.0 * w / n) as f32).to_bits(),
                a.len() as u32,
                0,
            ],
            &[a.buf(), b.buf(), g.buf()],
            groups_1d(a.len()),
        );
        (self.loss_sum(a, b, 0, a.len(), w / n), g)
    }

    fn tv(&self, y: &GpuTensor, w: f64) -> (GpuScalar, GpuTensor) {
        let [_, _, h, wd] = y.dims;
        let g = self.tensor(y.dims);
        self.ctx.dispatch(
            Kernel::LossGrad,
            &[
                y.len() as u32,
                1,
                ((2.0 * w) as f32).to_bits(),
                h as u32,
                wd as u32,
            ],
            &[y.buf(), y.buf(), g.buf()],
            groups_1d(y.len()),
        );
        (self.loss_sum(y, y, 1, 0, w), g)
    }

    fn sum_squares(&self, x: &GpuTensor) -> GpuScalar {
        self.loss_sum(x, x, 2, 0, 1.0)
    }

    fn adam(
        &self,
        p: &mut GpuTensor,
        g: &GpuTensor,
        m: &mut GpuTensor,
        v: &mut GpuTensor,
        s: &AdamStep,
    ) {
        assert!(
            g.len() == p.len() && m.len() == p.len() && v.len() == p.len(),
            "adam: sizes differ"
        );
        let f = |x: f64| (x as f32).to_bits();
        self.ctx.dispatch(
            Kernel::Adam,
            &[
                p.len() as u32,
                f(s.lr),
                f(s.beta1),
                f(1.0 - s.beta1),
                f(s.beta2),
                f(1.0 - s.beta2),
                f(s.eps),
                f(s.bc1),
                f(s.bc2.sqrt()),
            ],
            &[p.buf(), g.buf(), m.buf(), v.buf()],
            groups_1d(p.len()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device's error comes back typed, naming the adapter, at the next readback (here a
    /// buffer larger than the adapter allows, asked for behind the backend's back): a
    /// training step's scalars and a stylized picture alike. The device goes on working
    /// after it.
    #[test]
    fn a_device_error_is_typed_at_the_next_readback() {
        use crate::stylize::{stylize_tensor, Stopped, StylizeOptions};
        if crate::testutil::gpu().is_none() {
            return;
        }
        // A device of its own: the error must not reach the other tests' device.
        let b = Wgpu::best().expect("an adapter");
        let provoke = || {
            let _ = b.ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: b.adapter().max_buffer_bytes + 4,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            });
        };
        let named = |e: DeviceError| match e {
            DeviceError::Failed { adapter, msg } => {
                assert_eq!(adapter, b.adapter().name);
                assert!(!msg.is_empty());
            }
            other => panic!("expected a failure, got {other}"),
        };
        let x = b.upload(&crate::backend::vector(vec![1.0, 2.0]));
        provoke();
        let s = b.sum_squares(&x);
        named(b.read_scalars(&[&s]).expect_err("a typed device error"));
        let s = b.sum_squares(&x);
        assert_eq!(b.read_scalars(&[&s]).unwrap(), vec![5.0]);

        let mut config = crate::model::TransformerConfig::new(crate::model::Arch::Johnson);
        config.channels = [4, 4, 4];
        config.res_blocks = 1;
        let m = crate::model::Transformer::init(config, 3).to_backend(b.clone());
        let photo = Tensor::from_vec(1, 3, 12, 16, vec![100.0; 3 * 12 * 16]);
        let opts = StylizeOptions::default();
        provoke();
        match stylize_tensor(&m, &photo, &opts) {
            Err(Stopped::Device(e)) => named(e),
            other => panic!("expected a device error, got {:?}", other.map(|_| ())),
        }
        assert_eq!(
            stylize_tensor(&m, &photo, &opts).unwrap().shape(),
            [1, 3, 12, 16]
        );
    }
}
