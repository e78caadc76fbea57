//! The wgpu backend's building blocks: allocation, the tiled GEMM launch and its split-K
//! sums, per-plane sums, loss partial sums and scalars, and the small device-side
//! reshuffles (kernel permutation, channel affine) the ops are made of.

use std::sync::Arc;

use super::context::{groups_1d, Kernel};
use super::{GpuScalar, GpuTensor, Wgpu};
use crate::backend::DeviceError;

impl Wgpu {
    pub(super) fn tensor(&self, dims: [usize; 4]) -> GpuTensor {
        let n: usize = dims.iter().product();
        GpuTensor {
            ctx: self.ctx.clone(),
            buf: Some(self.ctx.alloc(4 * n as u64)),
            dims,
        }
    }

    pub(super) fn small(&self, v: &[f32]) -> wgpu::Buffer {
        let data: &[f32] = if v.is_empty() { &[0.0] } else { v };
        self.ctx
            .buffer_with(bytemuck::cast_slice(data), wgpu::BufferUsages::STORAGE)
    }

    /// `(Σ(x − s), Σ(x − s)², s)` (mode 0) or `(Σ b, Σ a·b, ·)` (mode 1) per plane of samples
    /// `first..first + samples`, over a rectangle, into a device buffer.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn plane_sums(
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
    pub(super) fn gemm(
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
    pub(super) fn split(m: usize, n: usize, batch: usize, r: usize) -> (usize, usize) {
        let tiles = m.div_ceil(64) * n.div_ceil(64) * batch;
        let most = r.div_ceil(256).max(1);
        let splits = (1024 / tiles.max(1)).clamp(1, most);
        let chunk = r.div_ceil(splits).next_multiple_of(16);
        (r.div_ceil(chunk).max(1), chunk)
    }

    /// `scale · Σ_s part[b][s]` for `batch` blocks of `len`, as a tensor of `dims`.
    pub(super) fn sum_splits(
        &self,
        part: &wgpu::Buffer,
        dims: [usize; 4],
        splits: usize,
        batch: usize,
        scale: f32,
    ) -> GpuTensor {
        let out = self.tensor(dims);
        let len = out.len() / batch;
        let mut g = groups_1d(len);
        g[2] = batch as u32;
        self.ctx.dispatch(
            Kernel::SumSplits,
            &[len as u32, splits as u32, scale.to_bits()],
            &[part, out.buf()],
            g,
        );
        out
    }

    /// `scale · Σ` of a loss's terms over the whole tensor (mode 0: (a − b)² with `b`
    /// repeating every `period` values, mode 1: TV, mode 2: a²), kept as f32 partial sums of
    /// 16,384 terms that `read_scalars` adds up in f64.
    pub(super) fn loss_sum(
        &self,
        a: &GpuTensor,
        b: &GpuTensor,
        mode: u32,
        period: usize,
        scale: f64,
    ) -> GpuScalar {
        let len = a.len();
        let groups = len.div_ceil(16_384);
        let out = self.tensor([1, 1, 1, groups]);
        let x = groups.min(65_535);
        let h = if mode == 1 { a.dims[2] } else { period };
        self.ctx.dispatch(
            Kernel::LossSums,
            &[len as u32, mode, h as u32, a.dims[3] as u32],
            &[a.buf(), b.buf(), out.buf()],
            [x as u32, groups.div_ceil(x) as u32, 1],
        );
        GpuScalar {
            parts: Some(Arc::new(out)),
            value: 0.0,
            scale,
        }
    }

    /// Value `j` of `PLANE_SUMS` (three per plane of `n` samples × `c` channels) summed over
    /// the samples: a `[1, 1, 1, c]` vector.
    pub(super) fn plane_totals(
        &self,
        sums: &wgpu::Buffer,
        n: usize,
        c: usize,
        j: usize,
    ) -> GpuTensor {
        let out = self.tensor([1, 1, 1, c]);
        self.ctx.dispatch(
            Kernel::PlaneTotals,
            &[c as u32, n as u32, j as u32],
            &[sums, out.buf()],
            groups_1d(c),
        );
        out
    }

    /// A ConvTranspose kernel `[a][b][k][k]` ↔ the plain flipped `[b][a][k][k]`, on the
    /// device.
    pub(super) fn permute(&self, w: &GpuTensor, a: usize, b: usize, k: usize) -> GpuTensor {
        let out = self.tensor(w.dims);
        self.ctx.dispatch(
            Kernel::Permute,
            &[w.len() as u32, a as u32, b as u32, k as u32],
            &[w.buf(), out.buf()],
            groups_1d(w.len()),
        );
        out
    }

    /// The `[n, c, c]` Gram matrices of `f`, on the device.
    pub(super) fn gram_tensor(&self, f: &GpuTensor) -> GpuTensor {
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
        let g = self.sum_splits(&part, [n, 1, c, c], splits, n, 1.0 / (c * hw) as f32);
        self.ctx.recycle(part);
        g
    }

    /// `dF = dG · F` per sample, dG a device tensor of `n` C×C matrices.
    pub(super) fn gram_backward_dev(&self, f: &GpuTensor, dg: &GpuTensor) -> GpuTensor {
        let [n, c, h, w] = f.dims;
        assert_eq!(dg.len(), n * c * c, "gram_backward: dG size");
        let d = self.tensor(f.dims);
        self.gemm(
            Kernel::GramBackward,
            (c, h * w, c),
            n,
            1,
            c,
            &[],
            &[dg.buf(), f.buf(), d.buf()],
        );
        d
    }

    /// Scalars read back together: each one's f32 partial sums, one synchronisation, added
    /// up in f64.
    pub fn read_scalars(&self, s: &[&GpuScalar]) -> Result<Vec<f64>, DeviceError> {
        let bufs: Vec<(&wgpu::Buffer, usize)> = s
            .iter()
            .filter_map(|v| v.parts.as_ref().map(|p| (p.buf(), p.len())))
            .collect();
        let mut parts = self.ctx.read_many(&bufs)?.into_iter();
        Ok(s.iter()
            .map(|v| match &v.parts {
                Some(_) => {
                    let p = parts.next().expect("one result per scalar");
                    v.value + v.scale * p.iter().map(|&x| x as f64).sum::<f64>()
                }
                None => v.value,
            })
            .collect())
    }

    /// A scalar the host already knows.
    pub fn scalar(&self, v: f64) -> GpuScalar {
        GpuScalar {
            parts: None,
            value: v,
            scale: 0.0,
        }
    }

    /// VGG's channel affine (`backward` 0) or its backward (1), from `x` into `y`.
    pub(super) fn affine(
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
