//! The CPU backend: the engine's own kernels behind the seam. It owns the fast-path
//! switches (Winograd for 3×3 stride-1 layers, direct AVX-512 kernels, sub-pixel
//! upsampling), the buffer pool (`tensor::take_buffer`) and the `IMPASTO_PROFILE` timings.

use super::{
    host, vector, AdamStep, Backend, ConvGrads, ConvSpec, DeviceError, OutputFn, Resample,
};
use crate::kernels::amx::{self, Bf16Conv, Pad};
use crate::kernels::conv::{flip_transpose, SubPixel, UpsampleConv};
use crate::kernels::conv_grad::fold_padding;
use crate::kernels::norm::{self, Moments, NormStats};
use crate::kernels::{pool, Conv2d, ConvGeom, PadMode, Strided};
use crate::tensor::Tensor;
use rayon::prelude::*;
use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

/// A convolution prepared for the CPU kernels.
#[derive(Clone, Debug)]
pub struct CpuConv {
    spec: ConvSpec,
    /// `[c_out][c_in·k·k]`; for a transposed layer, its flipped forward conv.
    conv: Conv2d,
    /// The sub-pixel form of an upsampling or transposed 3×3 layer.
    up: Option<UpsampleConv>,
    /// The transposed convolution that computes the input gradient (frozen layers).
    grad: OnceLock<Conv2d>,
    /// The layer, and its input gradient's layer, on AMX tiles (fast training on CPUs that
    /// have AMX); `None` where the channels are not whole tiles.
    bf16: OnceLock<Option<Bf16Conv>>,
    bf16_grad: OnceLock<Option<Bf16Conv>>,
}

fn prepare(spec: &ConvSpec, w: &[f32], b: Option<&[f32]>) -> (Conv2d, Option<UpsampleConv>) {
    let (k, bias) = (spec.k, b.map(<[f32]>::to_vec));
    let conv = if spec.resample == Resample::Transposed {
        Conv2d::from_transposed(spec.c_in, spec.c_out, k, w, bias)
    } else {
        Conv2d::new(spec.c_out, spec.c_in, k, w.to_vec(), bias)
    };
    let up = match spec.resample {
        _ if k != 3 => None,
        Resample::Upsample => Some(UpsampleConv::new(&conv, 3, SubPixel::Upsample)),
        Resample::Transposed => Some(UpsampleConv::new(&conv, 3, SubPixel::Transposed)),
        Resample::None => None,
    };
    (conv, up)
}

fn profiling() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("IMPASTO_PROFILE").is_some())
}

/// With `IMPASTO_PROFILE` set, time `f` and report it (`tracing`, target `impasto::profile`;
/// a developer's switch: nothing is timed otherwise).
fn timed<R>(f: impl FnOnce() -> R, what: impl FnOnce(&R) -> String) -> R {
    if !profiling() {
        return f();
    }
    let t = std::time::Instant::now();
    let r = f();
    tracing::info!(
        target: "impasto::profile",
        "profile {:>8.2} ms  {}",
        t.elapsed().as_secs_f64() * 1e3,
        what(&r)
    );
    r
}

impl CpuConv {
    fn geom(&self, x: &Tensor) -> ConvGeom {
        self.spec.geom(x.h, x.w)
    }

    /// The padding of a stride-1 "same" layer (on an `h × w` input), if it is one. With
    /// zeros, its input gradient is the forward pass of the flipped, transposed kernel.
    fn same(&self, h: usize, w: usize) -> Option<PadMode> {
        let g = self.spec.geom(h, w);
        (self.spec.resample == Resample::None
            && g.stride == 1
            && g.upsample == 1
            && g.dilate == 1
            && g.pad == [self.spec.k / 2; 4])
            .then_some(g.mode)
    }

    /// The padding of a 3×3 stride-1 "same" layer (zeros or reflection) where the CPU has
    /// AMX for its bf16 products.
    fn bf16_mode(&self, h: usize, w: usize) -> Option<PadMode> {
        let mode = self.same(h, w)?;
        (amx::available() && self.spec.k == 3 && matches!(mode, PadMode::Zero | PadMode::Reflect))
            .then_some(mode)
    }

    /// The input gradient in bf16 products, where the layer and CPU allow it.
    fn bf16_input_grad(&self, dy: &Tensor, h: usize, w: usize) -> Option<Tensor> {
        let mode = self.bf16_mode(h, w)?;
        let t = self
            .bf16_grad
            .get_or_init(|| Bf16Conv::new(self.transposed()));
        let a = t
            .as_ref()
            .filter(|a| a.fits(dy) && (dy.h, dy.w) == (h, w))?;
        Some(timed(
            || match mode {
                PadMode::Zero => a.forward(dy, Pad::Zero(1)),
                // The full correlation (the gradient at the padded input), folded back.
                _ => fold_padding(&a.forward(dy, Pad::Zero(2)), &self.spec.geom(h, w), h, w),
            },
            |x| format!("conv input grad bf16 {}x{}x{}", x.c, x.h, x.w),
        ))
    }

    fn transposed(&self) -> &Conv2d {
        self.grad
            .get_or_init(|| self.conv.transposed_for_grad(self.spec.k))
    }
}

impl Backend for Cpu {
    type Tensor = Tensor;
    type Conv = CpuConv;
    type Scalar = f64;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn read_scalars(&self, s: &[&f64]) -> Result<Vec<f64>, DeviceError> {
        Ok(s.iter().map(|&&v| v).collect())
    }

    fn scalar(&self, v: f64) -> f64 {
        v
    }

    fn upload(&self, t: &Tensor) -> Tensor {
        t.clone()
    }

    fn download(&self, t: &Tensor) -> Tensor {
        t.clone()
    }

    fn upload_owned(&self, t: Tensor) -> Tensor {
        t
    }

    fn download_owned(&self, t: Tensor) -> Tensor {
        t
    }

    fn dims(&self, t: &Tensor) -> [usize; 4] {
        t.shape()
    }

    fn as_host<'a>(&self, t: &'a Tensor) -> Option<&'a [f32]> {
        Some(&t.data)
    }

    fn conv(&self, spec: &ConvSpec, weight: &[f32], bias: Option<&[f32]>) -> CpuConv {
        let (conv, up) = prepare(spec, weight, bias);
        CpuConv {
            spec: *spec,
            conv,
            up,
            grad: OnceLock::new(),
            bf16: OnceLock::new(),
            bf16_grad: OnceLock::new(),
        }
    }

    fn conv_set(&self, c: &mut CpuConv, weight: &Tensor, bias: Option<&Tensor>) {
        let (conv, up) = prepare(&c.spec, &weight.data, bias.map(|b| b.data.as_slice()));
        c.conv = conv;
        c.up = up;
        c.grad = OnceLock::new();
        c.bf16 = OnceLock::new();
        c.bf16_grad = OnceLock::new();
    }

    fn conv_forward(&self, c: &CpuConv, x: &Tensor, precise: bool) -> Tensor {
        timed(
            || match &c.up {
                Some(up) if !precise => up.forward_fast(x),
                Some(up) => up.forward(x),
                None if precise => c.conv.forward_exact(x, &c.geom(x)),
                None => c.conv.forward(x, &c.geom(x)),
            },
            |y| format!("conv {}x{}x{} -> {}x{}x{}", x.c, x.h, x.w, y.c, y.h, y.w),
        )
    }

    fn conv_backward(
        &self,
        c: &CpuConv,
        x: &Tensor,
        dy: &Tensor,
        want_dx: bool,
    ) -> ConvGrads<Tensor> {
        let g = timed(
            || match &c.up {
                Some(up) => up.backward(x, dy, want_dx),
                None => c.conv.backward(&c.geom(x), x, dy, want_dx),
            },
            |_| format!("conv backward {}x{}x{}", x.c, x.h, x.w),
        );
        let dw = if c.spec.resample == Resample::Transposed {
            // Back from the flipped forward layout to ConvTranspose's [c_in][c_out][k][k].
            flip_transpose(&g.dw, c.spec.c_out, c.spec.c_in, c.spec.k)
        } else {
            g.dw
        };
        ConvGrads {
            dx: g.dx,
            dw: vector(dw),
            db: vector(g.db),
        }
    }

    fn conv_input_grad(&self, c: &CpuConv, dy: &Tensor, h: usize, w: usize) -> Tensor {
        timed(
            || {
                if c.same(h, w) == Some(PadMode::Zero) {
                    // The transposed layer runs on Winograd.
                    let t = c.transposed();
                    return crate::kernels::conv_grad::same_conv_input_grad(t, c.spec.k, dy);
                }
                let x = Tensor::zeros(dy.n, c.spec.c_in, h, w);
                self.conv_backward(c, &x, dy, true).dx.expect("dx")
            },
            |x| format!("conv input grad {}x{}x{}", x.c, x.h, x.w),
        )
    }

    fn bf16_products(&self) -> bool {
        amx::available()
    }

    fn conv_forward_bf16(&self, c: &CpuConv, x: &Tensor) -> Tensor {
        if let Some(mode) = c.bf16_mode(x.h, x.w) {
            let a = c.bf16.get_or_init(|| Bf16Conv::new(&c.conv));
            if let Some(a) = a.as_ref().filter(|a| a.fits(x)) {
                let pad = match mode {
                    PadMode::Zero => Pad::Zero(1),
                    _ => Pad::Reflect,
                };
                return timed(
                    || a.forward(x, pad),
                    |y| {
                        format!(
                            "conv bf16 {}x{}x{} -> {}x{}x{}",
                            x.c, x.h, x.w, y.c, y.h, y.w
                        )
                    },
                );
            }
        }
        self.conv_forward(c, x, false)
    }

    fn conv_input_grad_bf16(&self, c: &CpuConv, dy: &Tensor, h: usize, w: usize) -> Tensor {
        c.bf16_input_grad(dy, h, w)
            .unwrap_or_else(|| self.conv_input_grad(c, dy, h, w))
    }

    fn conv_backward_bf16(
        &self,
        c: &CpuConv,
        x: &Tensor,
        dy: &Tensor,
        want_dx: bool,
    ) -> ConvGrads<Tensor> {
        if want_dx {
            if let Some(dx) = c.bf16_input_grad(dy, x.h, x.w) {
                let g = self.conv_backward(c, x, dy, false);
                return ConvGrads { dx: Some(dx), ..g };
            }
        }
        self.conv_backward(c, x, dy, want_dx)
    }

    fn moments(
        &self,
        x: &Tensor,
        sample: usize,
        rows: (usize, usize),
        cols: (usize, usize),
    ) -> Moments {
        norm::moments_region(x.sample(sample), x.c, x.h, x.w, rows, cols)
    }

    fn norm_apply(
        &self,
        x: &mut Tensor,
        sample: usize,
        stats: &NormStats,
        gamma: &Tensor,
        beta: &Tensor,
        relu: bool,
        residual: Option<&Tensor>,
    ) {
        let (c, hw) = (x.c, x.plane());
        let (gamma, beta) = (&gamma.data, &beta.data);
        timed(
            || {
                norm::apply(
                    x.sample_mut(sample),
                    c,
                    hw,
                    stats,
                    gamma,
                    beta,
                    relu,
                    residual.map(|r| r.sample(sample)),
                )
            },
            |_| format!("norm {c}x{hw}"),
        )
    }

    fn norm_train(
        &self,
        x: &mut Tensor,
        eps: f64,
        gamma: &Tensor,
        beta: &Tensor,
        relu: bool,
        residual: Option<&Tensor>,
    ) -> (Tensor, Tensor) {
        // One parallel pass over the batch's planes, not the default's copy of x and three
        // passes per sample, each its own fork-join.
        let (n, c, h, w) = (x.n, x.c, x.h, x.w);
        let mut xhat = Tensor::for_overwrite(n, c, h, w);
        let mut inv = Tensor::for_overwrite(n, c, 1, 1);
        timed(
            || {
                norm::train(
                    &mut x.data,
                    &mut xhat.data,
                    &mut inv.data,
                    c,
                    (h, w),
                    eps,
                    &gamma.data,
                    &beta.data,
                    relu,
                    residual.map(|r| r.data.as_slice()),
                )
            },
            |_| format!("norm train {c}x{}", h * w),
        );
        (xhat, inv)
    }

    fn norm_backward(
        &self,
        xhat: &Tensor,
        dy: &Tensor,
        inv_std: &Tensor,
        gamma: &Tensor,
    ) -> (Tensor, Tensor, Tensor) {
        let (c, hw) = (xhat.c, xhat.plane());
        let (mut dg, mut db) = (vec![0.0f64; c], vec![0.0f64; c]);
        let mut dz = Tensor::for_overwrite(xhat.n, c, xhat.h, xhat.w);
        for s in 0..xhat.n {
            norm::backward(
                xhat.sample(s),
                dy.sample(s),
                c,
                hw,
                inv_std.sample(s),
                &gamma.data,
                &mut dg,
                &mut db,
                dz.sample_mut(s),
            );
        }
        let f = |v: Vec<f64>| vector(v.into_iter().map(|v| v as f32).collect());
        (dz, f(dg), f(db))
    }

    fn relu(&self, x: &mut Tensor) {
        crate::kernels::relu(&mut x.data);
    }

    fn sum_squares(&self, x: &Tensor) -> f64 {
        host::sum_squares(x)
    }

    fn adam(&self, p: &mut Tensor, g: &Tensor, m: &mut Tensor, v: &mut Tensor, s: &AdamStep) {
        host::adam(&mut p.data, &g.data, &mut m.data, &mut v.data, s);
    }

    fn relu_mask(&self, d: &mut Tensor, y: &Tensor) {
        d.data
            .par_chunks_mut(1 << 14)
            .zip(y.data.par_chunks(1 << 14))
            .for_each(|(d, y)| {
                // A select, not a branch, so that the loop vectorises (a NaN in `y` keeps
                // its gradient, as the comparison is false).
                for (g, &v) in d.iter_mut().zip(y) {
                    *g = if v <= 0.0 { 0.0 } else { *g };
                }
            });
    }

    fn add(&self, a: &mut Tensor, b: &Tensor) {
        assert_eq!(a.shape(), b.shape(), "add: shapes differ");
        a.data
            .par_chunks_mut(1 << 14)
            .zip(b.data.par_chunks(1 << 14))
            .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(x, y)| *x += y));
    }

    fn centre(&self, x: &Tensor) -> Tensor {
        let mut y = x.clone();
        let hw = x.plane();
        for plane in y.data.chunks_mut(hw.max(1)) {
            let m = (plane.iter().map(|&v| v as f64).sum::<f64>() / hw as f64) as f32;
            plane.iter_mut().for_each(|v| *v -= m);
        }
        y
    }

    fn channel_affine(
        &self,
        x: &Tensor,
        src: [usize; 3],
        scale: [f32; 3],
        shift: [f32; 3],
    ) -> Tensor {
        let mut out = Tensor::for_overwrite(x.n, 3, x.h, x.w);
        let hw = x.plane();
        for b in 0..x.n {
            for i in 0..3 {
                let s = &x.data[(b * 3 + src[i]) * hw..][..hw];
                let d = &mut out.data[(b * 3 + i) * hw..][..hw];
                for (d, &s) in d.iter_mut().zip(s) {
                    *d = s * scale[i] + shift[i];
                }
            }
        }
        out
    }

    fn channel_affine_backward(&self, dy: &Tensor, src: [usize; 3], scale: [f32; 3]) -> Tensor {
        let mut out = Tensor::zeros(dy.n, 3, dy.h, dy.w);
        let hw = dy.plane();
        for b in 0..dy.n {
            for i in 0..3 {
                let g = &dy.data[(b * 3 + i) * hw..][..hw];
                let d = &mut out.data[(b * 3 + src[i]) * hw..][..hw];
                for (d, &g) in d.iter_mut().zip(g) {
                    *d += scale[i] * g;
                }
            }
        }
        out
    }

    fn output(&self, x: &mut Tensor, f: OutputFn) {
        if let OutputFn::ScaledTanh { scale, shift } = f {
            x.data
                .par_iter_mut()
                .for_each(|v| *v = (scale * v.tanh() + shift).clamp(0.0, 255.0));
        }
    }

    fn output_backward(&self, d: &mut Tensor, pre: &Tensor, f: OutputFn) {
        if let OutputFn::ScaledTanh { scale, shift } = f {
            d.data.par_iter_mut().zip(&pre.data).for_each(|(g, &u)| {
                let t = u.tanh();
                let y = scale * t + shift;
                *g = if y > 0.0 && y < 255.0 {
                    *g * scale * (1.0 - t * t)
                } else {
                    0.0
                };
            });
        }
    }

    fn max_pool2(&self, x: &Tensor) -> Tensor {
        pool::max_pool2(x)
    }

    fn max_pool2_backward(&self, x: &Tensor, dy: &Tensor) -> Tensor {
        pool::max_pool2_backward(x, dy)
    }

    fn gram(&self, f: &Tensor) -> Vec<Vec<f32>> {
        // A batch runs one sample per thread: a Gram matrix is a GEMM with a long inner
        // dimension and few rows (64 × 64 over 16,384 pixels at relu1_2 of a 128² crop),
        // which the GEMM could split over only its rows (the four taps' Gram matrices of a
        // batch of 4 at 128²: 21 → 11 ms a training step). The sums are the same either way.
        let par = per_sample_parallelism(f.n);
        (0..f.n)
            .into_par_iter()
            .with_max_len(1)
            .map(|s| gram(f.sample(s), f.c, f.plane(), par))
            .collect()
    }

    fn gram_backward(&self, f: &Tensor, dg: &[Vec<f32>]) -> Tensor {
        let (c, hw) = (f.c, f.plane());
        let mut grad = Tensor::for_overwrite(f.n, c, f.h, f.w);
        let par = per_sample_parallelism(f.n);
        grad.data
            .par_chunks_mut(c * hw)
            .with_max_len(1)
            .zip(dg)
            .enumerate()
            .for_each(|(s, (out, dg))| {
                // dF = dG (c × c) · F (c × hw).
                crate::kernels::matmul(
                    c,
                    hw,
                    c,
                    out,
                    hw,
                    false,
                    Strided {
                        data: dg,
                        rs: c,
                        cs: 1,
                    },
                    Strided {
                        data: f.sample(s),
                        rs: hw,
                        cs: 1,
                    },
                    par,
                );
            });
        grad
    }

    fn mse(&self, a: &Tensor, b: &Tensor, w: f64) -> (f64, Tensor) {
        assert_eq!(a.shape(), b.shape(), "mse: shapes differ");
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

    fn tv(&self, y: &Tensor, w: f64) -> (f64, Tensor) {
        let (h, wd) = (y.h, y.w);
        let mut g = Tensor::zeros(y.n, y.c, h, wd);
        let k = (2.0 * w) as f32;
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
                            gp[i * wd + j] -= k * d;
                            gp[(i + 1) * wd + j] += k * d;
                        }
                        if j + 1 < wd {
                            let d = p[i * wd + j + 1] - v;
                            s += (d as f64) * (d as f64);
                            gp[i * wd + j] -= k * d;
                            gp[i * wd + j + 1] += k * d;
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
}

/// The GEMMs of a per-sample loop over `n` samples: a batch spreads its samples over the
/// threads, a single sample spreads its GEMM.
fn per_sample_parallelism(n: usize) -> gemm::Parallelism {
    if n > 1 {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(0)
    }
}

/// One sample's Gram matrix F·Fᵀ / (C·H·W), C×C.
fn gram(f: &[f32], c: usize, hw: usize, par: gemm::Parallelism) -> Vec<f32> {
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
        par,
    );
    let n = (c * hw) as f32;
    g.iter_mut().for_each(|v| *v /= n);
    g
}
