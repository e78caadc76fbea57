//! The wgpu backend's data: tensors in pooled device buffers, scalars kept as partial sums,
//! and prepared convolutions.

use std::sync::Arc;

use super::context::Ctx;
use crate::backend::ConvSpec;
use crate::kernels::PadMode;

/// A scalar on the device: `value + scale · Σ parts` (a loss's f32 partial sums, added up in
/// f64 when read).
#[derive(Clone)]
pub struct GpuScalar {
    pub(super) parts: Option<Arc<GpuTensor>>,
    pub(super) value: f64,
    pub(super) scale: f64,
}

/// A tensor in a device buffer. Cloning copies on the device; dropping hands the buffer
/// back to the pool.
pub struct GpuTensor {
    pub(super) ctx: Arc<Ctx>,
    pub(super) buf: Option<wgpu::Buffer>,
    pub(super) dims: [usize; 4],
}

impl GpuTensor {
    pub(super) fn buf(&self) -> &wgpu::Buffer {
        self.buf.as_ref().expect("live buffer")
    }

    pub(super) fn len(&self) -> usize {
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
    pub(super) spec: ConvSpec,
    pub(super) w: GpuTensor,
    pub(super) b: GpuTensor,
}

/// A transposed layer's `[c_in][c_out][k][k]` as the plain `[c_out][c_in][k][k]` kernel
/// that convolves the zero-inserted input (and back, for its gradient: the map is its own
/// inverse with the two channel counts exchanged).
pub(super) fn transpose_kernel(w: &[f32], a: usize, b: usize, k: usize) -> Vec<f32> {
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
    pub(super) fn words(&self, n: usize, h: usize, w: usize) -> Vec<u32> {
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
