//! The GPU backend: the [`Backend`] ops as WGSL compute shaders run through wgpu, on Vulkan
//! (Linux, Windows, Android; also Mesa's lavapipe, a Vulkan driver that runs on the CPU,
//! which is how the test suite proves these kernels on machines without a GPU), Metal
//! (macOS) and DX12 (Windows).
//!
//! Tensors live in device buffers (pooled); every op records into one pending command
//! encoder, and nothing is read back until a result is asked for: `download`, and the ops
//! whose results the trait returns on the host (moments, the Gram matrices, weight
//! gradients, loss values). Sums are f32 (WGSL has no f64): Kahan-compensated within a
//! thread, a tree across threads, and the per-plane statistics shifted by a sample value
//! so that the variance does not cancel. Measured against the reference backend's f64 in
//! `backend::tests` (see [`TOLERANCES`]).

mod context;
mod shaders;

use std::sync::Arc;

use context::{groups_1d, Ctx, Kernel};
pub use context::{list as adapters, AdapterSummary, OpenError};

use super::{Backend, ConvGrads, ConvSpec, OutputFn, Resample};
use crate::kernels::norm::{Moments, NormStats};
use crate::kernels::PadMode;
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

    fn tensor(&self, dims: [usize; 4]) -> GpuTensor {
        let n: usize = dims.iter().product();
        GpuTensor {
            ctx: self.ctx.clone(),
            buf: Some(self.ctx.alloc(4 * n as u64)),
            dims,
        }
    }

    fn small(&self, v: &[f32]) -> wgpu::Buffer {
        let data: &[f32] = if v.is_empty() { &[0.0] } else { v };
        self.ctx
            .buffer_with(bytemuck::cast_slice(data), wgpu::BufferUsages::STORAGE)
    }

    /// `(Σ(x − s), Σ(x − s)², s)` (mode 0) or `(Σ b, Σ a·b, ·)` (mode 1) per plane of samples
    /// `first..first + samples`, over a rectangle; read back.
    #[allow(clippy::too_many_arguments)]
    fn plane_sums(
        &self,
        a: &GpuTensor,
        b: Option<&GpuTensor>,
        first: usize,
        samples: usize,
        rows: (usize, usize),
        cols: (usize, usize),
    ) -> wgpu::Buffer {
        let [_, c, h, w] = a.dims;
        let out = self.ctx.alloc(4 * 3 * (c * samples) as u64);
        let mode = b.is_some() as u32;
        let words = [
            c,
            h,
            w,
            rows.0,
            rows.1,
            cols.0,
            cols.1,
            first,
            mode as usize,
        ]
        .map(|v| v as u32);
        self.ctx.dispatch(
            Kernel::PlaneSums,
            &words,
            &[a.buf(), b.unwrap_or(a).buf(), &out],
            [c as u32, samples as u32, 1],
        );
        out
    }

    /// Runs a GEMM kernel over `batch × splits` slices.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        kernel: Kernel,
        (m, n, k): (usize, usize, usize),
        batch: usize,
        splits: usize,
        kchunk: usize,
        extra: &[u32],
        buffers: &[&wgpu::Buffer],
    ) {
        let mut words = vec![
            m as u32,
            n as u32,
            k as u32,
            splits as u32,
            kchunk as u32,
            0,
            0,
            0,
        ];
        words.extend_from_slice(extra);
        let tiles = m.div_ceil(64) * n.div_ceil(64);
        let x = tiles.min(65_535);
        self.ctx.dispatch(
            kernel,
            &words,
            buffers,
            [x as u32, tiles.div_ceil(x) as u32, (batch * splits) as u32],
        );
    }

    /// How to split a reduction of length `r` for an `m × n` output so that about a
    /// thousand workgroups run: (splits, reduction per split).
    fn split(m: usize, n: usize, batch: usize, r: usize) -> (usize, usize) {
        let tiles = m.div_ceil(64) * n.div_ceil(64) * batch;
        let most = r.div_ceil(256).max(1);
        let splits = (1024 / tiles.max(1)).clamp(1, most);
        let chunk = r.div_ceil(splits).next_multiple_of(16);
        (r.div_ceil(chunk).max(1), chunk)
    }

    /// `scale · Σ_s part[b][s]` for `batch` blocks of `len`, read back.
    fn sum_splits(
        &self,
        part: &wgpu::Buffer,
        len: usize,
        splits: usize,
        batch: usize,
        scale: f32,
    ) -> Vec<f32> {
        let out = self.ctx.alloc(4 * (len * batch) as u64);
        let mut g = groups_1d(len);
        g[2] = batch as u32;
        self.ctx.dispatch(
            Kernel::SumSplits,
            &[len as u32, splits as u32, scale.to_bits()],
            &[part, &out],
            g,
        );
        let v = self.ctx.read(&out, len * batch);
        self.ctx.recycle(out);
        v
    }

    /// Σ of a loss's terms over the whole tensor (mode 0: (a − b)², mode 1: TV), in f64
    /// from f32 partial sums of 16,384 terms.
    fn loss_sum(&self, a: &GpuTensor, b: &GpuTensor, mode: u32) -> f64 {
        let len = a.len();
        let groups = len.div_ceil(16_384);
        let out = self.ctx.alloc(4 * groups as u64);
        let x = groups.min(65_535);
        self.ctx.dispatch(
            Kernel::LossSums,
            &[len as u32, mode, a.dims[2] as u32, a.dims[3] as u32],
            &[a.buf(), b.buf(), &out],
            [x as u32, groups.div_ceil(x) as u32, 1],
        );
        let v = self.ctx.read(&out, groups);
        self.ctx.recycle(out);
        v.iter().map(|&p| p as f64).sum()
    }
}

/// The tolerances this backend meets against the reference backend's f64, measured by
/// `backend::tests` (relative error over a tensor; loss values relative).
pub const TOLERANCES: crate::backend::Tolerances = crate::backend::Tolerances {
    conv: 1e-5,
    reduction: 1e-5,
    loss: 1e-6,
};

/// A tensor in a device buffer. Cloning copies on the device; dropping hands the buffer
/// back to the pool.
pub struct GpuTensor {
    ctx: Arc<Ctx>,
    buf: Option<wgpu::Buffer>,
    dims: [usize; 4],
}

impl GpuTensor {
    fn buf(&self) -> &wgpu::Buffer {
        self.buf.as_ref().expect("live buffer")
    }

    fn len(&self) -> usize {
        self.dims.iter().product()
    }
}

impl Clone for GpuTensor {
    fn clone(&self) -> Self {
        let bytes = 4 * self.len() as u64;
        let b = self.ctx.alloc(bytes);
        self.ctx.copy(self.buf(), &b, bytes);
        GpuTensor {
            ctx: self.ctx.clone(),
            buf: Some(b),
            dims: self.dims,
        }
    }
}

impl Drop for GpuTensor {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            self.ctx.recycle(b);
        }
    }
}

/// A convolution on the device: weights as `[c_out][c_in·k·k]` of the equivalent plain
/// convolution (a transposed layer's kernel is flipped and its channels swapped; its
/// geometry zero-inserts the input).
#[derive(Clone)]
pub struct GpuConv {
    spec: ConvSpec,
    w: wgpu::Buffer,
    b: wgpu::Buffer,
}

/// A transposed layer's `[c_in][c_out][k][k]` as the plain `[c_out][c_in][k][k]` kernel
/// that convolves the zero-inserted input (and back, for its gradient: the map is its own
/// inverse with the two channel counts exchanged).
fn transpose_kernel(w: &[f32], a: usize, b: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0.0; w.len()];
    for i in 0..a {
        for o in 0..b {
            for ky in 0..k {
                for kx in 0..k {
                    out[((o * a + i) * k + ky) * k + kx] =
                        w[((i * b + o) * k + (k - 1 - ky)) * k + (k - 1 - kx)];
                }
            }
        }
    }
    out
}

impl GpuConv {
    /// The geometry words (8..) for an `n × c_in × h × w` input.
    fn words(&self, n: usize, h: usize, w: usize) -> Vec<u32> {
        let s = &self.spec;
        let g = s.geom(h, w);
        let (ho, wo) = g.out_size(h, w);
        let logical = |len: usize| {
            if g.dilate > 1 {
                (len - 1) * g.dilate + 1
            } else {
                len * g.upsample
            }
        };
        let mode = match g.mode {
            PadMode::Zero => 0,
            PadMode::Reflect => 1,
            PadMode::Replicate => unreachable!("no layer pads by replication"),
        };
        [
            n,
            s.c_in,
            h,
            w,
            s.c_out,
            ho,
            wo,
            s.k,
            g.stride,
            g.pad[0],
            g.pad[2],
            mode,
            g.upsample,
            g.dilate,
            logical(h),
            logical(w),
            s.bias as usize,
        ]
        .map(|v| v as u32)
        .to_vec()
    }
}

impl Backend for Wgpu {
    type Tensor = GpuTensor;
    type Conv = GpuConv;

    fn name(&self) -> &'static str {
        "wgpu"
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
            w: self.small(&w),
            b: self.small(&b),
        }
    }

    fn conv_update(&self, conv: &mut GpuConv, weight: &[f32], bias: Option<&[f32]>) {
        *conv = self.conv(&conv.spec, weight, bias);
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
            &[x.buf(), &conv.w, &conv.b, y.buf()],
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
        let mut dw = self.sum_splits(&part, s.c_out * kk, splits, 1, 1.0);
        self.ctx.recycle(part);
        if s.resample == Resample::Transposed {
            dw = transpose_kernel(&dw, s.c_out, s.c_in, s.k);
        }
        let db = if s.bias {
            let sums = self.plane_sums(dy, Some(dy), 0, n, (0, ho), (0, wo));
            let v = self.ctx.read(&sums, 3 * n * s.c_out);
            self.ctx.recycle(sums);
            (0..s.c_out)
                .map(|o| (0..n).map(|b| v[3 * (b * s.c_out + o)] as f64).sum::<f64>() as f32)
                .collect()
        } else {
            vec![0.0; s.c_out]
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
            &[dy.buf(), &conv.w, dx.buf()],
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
        gamma: &[f32],
        beta: &[f32],
        relu: bool,
        residual: Option<&GpuTensor>,
    ) {
        let [_, c, h, w] = x.dims;
        let per: Vec<f32> = (0..c)
            .flat_map(|i| [stats.mean[i], stats.inv_std[i], gamma[i], beta[i]])
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
            &[x.buf(), &s, residual.map_or(&self.ctx.dummy, |r| r.buf())],
            groups_1d(plane),
        );
    }

    fn norm_own(
        &self,
        x: &mut GpuTensor,
        sample: usize,
        (rows, cols): ((usize, usize), (usize, usize)),
        eps: f64,
        gamma: &[f32],
        beta: &[f32],
        relu: bool,
        residual: Option<&GpuTensor>,
    ) {
        let [_, c, h, w] = x.dims;
        let sums = self.plane_sums(x, None, sample, 1, rows, cols);
        let gb: Vec<f32> = (0..c).flat_map(|i| [gamma[i], beta[i]]).collect();
        let gb = self.small(&gb);
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
                &gb,
                residual.map_or(&self.ctx.dummy, |r| r.buf()),
            ],
            groups_1d(plane),
        );
        self.ctx.recycle(sums);
    }

    fn norm_backward(
        &self,
        xhat: &GpuTensor,
        dy: &GpuTensor,
        inv_std: &[Vec<f32>],
        gamma: &[f32],
    ) -> (GpuTensor, Vec<f32>, Vec<f32>) {
        let [n, c, h, w] = xhat.dims;
        let sums = self.plane_sums(xhat, Some(dy), 0, n, (0, h), (0, w));
        let k: Vec<f32> = (0..n)
            .flat_map(|b| (0..c).map(move |ch| gamma[ch] * inv_std[b][ch]))
            .collect();
        let kb = self.small(&k);
        let dx = self.tensor(xhat.dims);
        self.ctx.dispatch(
            Kernel::NormBackward,
            &[xhat.len() as u32, (h * w) as u32],
            &[xhat.buf(), dy.buf(), &sums, &kb, dx.buf()],
            groups_1d(xhat.len()),
        );
        let v = self.ctx.read(&sums, 3 * n * c);
        self.ctx.recycle(sums);
        let total = |j: usize| -> Vec<f32> {
            (0..c)
                .map(|ch| (0..n).map(|b| v[3 * (b * c + ch) + j] as f64).sum::<f64>() as f32)
                .collect()
        };
        (dx, total(1), total(0))
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
        let [n, c, h, w] = f.dims;
        let hw = h * w;
        let (splits, chunk) = Self::split(c, c, n, hw);
        let part = self.ctx.alloc(4 * (n * splits * c * c) as u64);
        self.gemm(
            Kernel::Gram,
            (c, c, hw),
            n,
            splits,
            chunk,
            &[],
            &[f.buf(), &part],
        );
        let v = self.sum_splits(&part, c * c, splits, n, 1.0 / (c * hw) as f32);
        self.ctx.recycle(part);
        v.chunks(c * c).map(<[f32]>::to_vec).collect()
    }

    fn gram_backward(&self, f: &GpuTensor, dg: &[Vec<f32>]) -> GpuTensor {
        let [n, c, h, w] = f.dims;
        let flat: Vec<f32> = dg.iter().flatten().copied().collect();
        assert_eq!(flat.len(), n * c * c, "gram_backward: dG size");
        let g = self.small(&flat);
        let d = self.tensor(f.dims);
        self.gemm(
            Kernel::GramBackward,
            (c, h * w, c),
            n,
            1,
            c,
            &[],
            &[&g, f.buf(), d.buf()],
        );
        d
    }

    fn mse(&self, a: &GpuTensor, b: &GpuTensor, w: f64) -> (f64, GpuTensor) {
        assert_eq!(a.dims, b.dims, "mse: shapes differ");
        let n = a.len() as f64;
        let g = self.tensor(a.dims);
        self.ctx.dispatch(
            Kernel::LossGrad,
            &[a.len() as u32, 0, ((2.0 * w / n) as f32).to_bits(), 0, 0],
            &[a.buf(), b.buf(), g.buf()],
            groups_1d(a.len()),
        );
        (w * self.loss_sum(a, b, 0) / n, g)
    }

    fn tv(&self, y: &GpuTensor, w: f64) -> (f64, GpuTensor) {
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
        (w * self.loss_sum(y, y, 1), g)
    }
}

impl Wgpu {
    fn affine(
        &self,
        x: &GpuTensor,
        y: &GpuTensor,
        backward: u32,
        src: [usize; 3],
        scale: [f32; 3],
        shift: [f32; 3],
    ) {
        let [_, _, h, w] = x.dims;
        let mut words = vec![y.len() as u32, (h * w) as u32, backward];
        words.extend(src.map(|v| v as u32));
        words.extend(scale.map(f32::to_bits));
        words.extend(shift.map(f32::to_bits));
        self.ctx.dispatch(
            Kernel::ChannelAffine,
            &words,
            &[x.buf(), y.buf()],
            groups_1d(y.len()),
        );
    }
}
