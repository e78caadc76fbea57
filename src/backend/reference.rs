//! The reference backend: every op written from its definition as plain loops, sums in
//! f64, no `unsafe`, no SIMD, no threads, and none of the CPU backend's lowerings
//! (no im2col, no Winograd, no sub-pixel decomposition; a transposed convolution is the
//! scatter that defines it). Slow on purpose: it is what every other backend is checked
//! against.

// Index loops are the point here: each op reads like its formula.
#![allow(clippy::needless_range_loop)]

use super::{
    host, vector, AdamStep, Backend, ConvGrads, ConvSpec, DeviceError, OutputFn, Padding, Resample,
};
use crate::kernels::norm::{Moments, NormStats};
use crate::tensor::Tensor;

#[derive(Clone, Copy, Debug, Default)]
pub struct Reference;

/// A convolution's weights as stored (`ConvSpec::weight_shape`).
#[derive(Clone, Debug)]
pub struct RefConv {
    spec: ConvSpec,
    w: Vec<f32>,
    b: Vec<f32>,
}

fn at(t: &Tensor, n: usize, c: usize, y: usize, x: usize) -> f32 {
    t.data[((n * t.c + c) * t.h + y) * t.w + x]
}

fn idx(t: &Tensor, n: usize, c: usize, y: usize, x: usize) -> usize {
    ((n * t.c + c) * t.h + y) * t.w + x
}

/// PyTorch's reflection (no edge repeat) of `l` into `[0, n)`.
fn reflect(mut l: isize, n: isize) -> isize {
    if n == 1 {
        return 0;
    }
    while l < 0 || l >= n {
        l = if l < 0 { -l } else { 2 * (n - 1) - l };
    }
    l
}

impl RefConv {
    fn weight(&self, o: usize, i: usize, ky: usize, kx: usize) -> f64 {
        self.w[self.weight_index(o, i, ky, kx)] as f64
    }

    /// Where tap (`ky`, `kx`) from input channel `i` to output channel `o` is stored.
    fn weight_index(&self, o: usize, i: usize, ky: usize, kx: usize) -> usize {
        let k = self.spec.k;
        let [_, d1, _, _] = self.spec.weight_shape();
        let (a, b) = match self.spec.resample {
            Resample::Transposed => (i, o),
            _ => (o, i),
        };
        ((a * d1 + b) * k + ky) * k + kx
    }

    /// For a non-transposed layer over an `h × w` input: the padding before the first row
    /// and column, the size of the (upsampled) input, and the output size.
    fn layout(&self, h: usize, w: usize) -> (usize, usize, usize, usize, usize, usize) {
        let s = &self.spec;
        let up = if s.resample == Resample::Upsample {
            2
        } else {
            1
        };
        let (lh, lw) = (h * up, w * up);
        match s.padding {
            Padding::SameUpper => {
                let before = |n: usize| {
                    let out = n.div_ceil(s.stride);
                    ((out - 1) * s.stride + s.k).saturating_sub(n) / 2
                };
                (
                    before(lh),
                    before(lw),
                    lh,
                    lw,
                    lh.div_ceil(s.stride),
                    lw.div_ceil(s.stride),
                )
            }
            _ => {
                let p = s.k / 2;
                (
                    p,
                    p,
                    lh,
                    lw,
                    (lh + 2 * p - s.k) / s.stride + 1,
                    (lw + 2 * p - s.k) / s.stride + 1,
                )
            }
        }
    }

    /// The input pixel (row, column in the original input) that padded position
    /// (`py`, `px`) of the (upsampled) input reads, or None for a zero.
    fn source(&self, py: isize, px: isize, lh: usize, lw: usize) -> Option<(usize, usize)> {
        let up = if self.spec.resample == Resample::Upsample {
            2
        } else {
            1
        };
        let (lh, lw) = (lh as isize, lw as isize);
        let inside = py >= 0 && py < lh && px >= 0 && px < lw;
        let (y, x) = match self.spec.padding {
            Padding::Reflect => (reflect(py, lh), reflect(px, lw)),
            _ if inside => (py, px),
            _ => return None,
        };
        Some((y as usize / up, x as usize / up))
    }
}

impl Backend for Reference {
    type Tensor = Tensor;
    type Conv = RefConv;
    type Scalar = f64;

    fn name(&self) -> &'static str {
        "reference"
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

    fn conv(&self, spec: &ConvSpec, weight: &[f32], bias: Option<&[f32]>) -> RefConv {
        let n: usize = spec.weight_shape().iter().product();
        assert_eq!(weight.len(), n, "weight size");
        RefConv {
            spec: *spec,
            w: weight.to_vec(),
            b: bias.map_or_else(|| vec![0.0; spec.c_out], <[f32]>::to_vec),
        }
    }

    fn conv_set(&self, c: &mut RefConv, weight: &Tensor, bias: Option<&Tensor>) {
        *c = self.conv(&c.spec, &weight.data, bias.map(|b| b.data.as_slice()));
    }

    fn conv_forward(&self, c: &RefConv, x: &Tensor, _precise: bool) -> Tensor {
        let s = c.spec;
        assert_eq!(x.c, s.c_in, "conv input channels");
        if s.resample == Resample::Transposed {
            // y[o, 2i + ky, 2j + kx] += x[c, i, j] · W[c, o, ky, kx], cropped to 2h × 2w.
            let (ho, wo) = (2 * x.h, 2 * x.w);
            let mut acc = vec![0.0f64; x.n * s.c_out * ho * wo];
            for n in 0..x.n {
                for o in 0..s.c_out {
                    for ci in 0..s.c_in {
                        for i in 0..x.h {
                            for j in 0..x.w {
                                let v = at(x, n, ci, i, j) as f64;
                                for ky in 0..s.k {
                                    for kx in 0..s.k {
                                        let (yy, xx) = (2 * i + ky, 2 * j + kx);
                                        if yy < ho && xx < wo {
                                            acc[((n * s.c_out + o) * ho + yy) * wo + xx] +=
                                                v * c.weight(o, ci, ky, kx);
                                        }
                                    }
                                }
                            }
                        }
                    }
                    for p in 0..ho * wo {
                        acc[(n * s.c_out + o) * ho * wo + p] += c.b[o] as f64;
                    }
                }
            }
            return Tensor::from_vec(
                x.n,
                s.c_out,
                ho,
                wo,
                acc.into_iter().map(|v| v as f32).collect(),
            );
        }
        let (pt, pl, lh, lw, ho, wo) = c.layout(x.h, x.w);
        let mut y = Tensor::zeros(x.n, s.c_out, ho, wo);
        for n in 0..x.n {
            for o in 0..s.c_out {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut a = c.b[o] as f64;
                        for ci in 0..s.c_in {
                            for ky in 0..s.k {
                                for kx in 0..s.k {
                                    let py = (oy * s.stride + ky) as isize - pt as isize;
                                    let px = (ox * s.stride + kx) as isize - pl as isize;
                                    if let Some((sy, sx)) = c.source(py, px, lh, lw) {
                                        a += at(x, n, ci, sy, sx) as f64 * c.weight(o, ci, ky, kx);
                                    }
                                }
                            }
                        }
                        let i = idx(&y, n, o, oy, ox);
                        y.data[i] = a as f32;
                    }
                }
            }
        }
        y
    }

    fn conv_backward(
        &self,
        c: &RefConv,
        x: &Tensor,
        dy: &Tensor,
        want_dx: bool,
    ) -> ConvGrads<Tensor> {
        let s = c.spec;
        let mut dw = vec![0.0f64; c.w.len()];
        let mut db = vec![0.0f64; s.c_out];
        let mut dx = vec![0.0f64; x.data.len()];
        let transposed = s.resample == Resample::Transposed;
        let (pt, pl, lh, lw, _, _) = c.layout(x.h, x.w);
        for n in 0..x.n {
            for o in 0..s.c_out {
                for oy in 0..dy.h {
                    for ox in 0..dy.w {
                        db[o] += at(dy, n, o, oy, ox) as f64;
                    }
                }
                for ci in 0..s.c_in {
                    for ky in 0..s.k {
                        for kx in 0..s.k {
                            let wi = c.weight_index(o, ci, ky, kx);
                            let wv = c.w[wi] as f64;
                            let mut acc = 0.0f64;
                            if transposed {
                                for i in 0..x.h {
                                    for j in 0..x.w {
                                        let (yy, xx) = (2 * i + ky, 2 * j + kx);
                                        if yy < dy.h && xx < dy.w {
                                            let g = at(dy, n, o, yy, xx) as f64;
                                            acc += at(x, n, ci, i, j) as f64 * g;
                                            dx[idx(x, n, ci, i, j)] += wv * g;
                                        }
                                    }
                                }
                            } else {
                                for oy in 0..dy.h {
                                    for ox in 0..dy.w {
                                        let py = (oy * s.stride + ky) as isize - pt as isize;
                                        let px = (ox * s.stride + kx) as isize - pl as isize;
                                        if let Some((sy, sx)) = c.source(py, px, lh, lw) {
                                            let g = at(dy, n, o, oy, ox) as f64;
                                            acc += at(x, n, ci, sy, sx) as f64 * g;
                                            dx[idx(x, n, ci, sy, sx)] += wv * g;
                                        }
                                    }
                                }
                            }
                            dw[wi] += acc;
                        }
                    }
                }
            }
        }
        let f = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect::<Vec<f32>>();
        ConvGrads {
            dx: want_dx.then(|| Tensor::from_vec(x.n, x.c, x.h, x.w, f(dx))),
            dw: vector(f(dw)),
            db: vector(if s.bias { f(db) } else { vec![0.0; s.c_out] }),
        }
    }

    fn conv_input_grad(&self, c: &RefConv, dy: &Tensor, h: usize, w: usize) -> Tensor {
        let x = Tensor::zeros(dy.n, c.spec.c_in, h, w);
        self.conv_backward(c, &x, dy, true).dx.expect("dx")
    }

    fn moments(
        &self,
        x: &Tensor,
        sample: usize,
        rows: (usize, usize),
        cols: (usize, usize),
    ) -> Moments {
        let mut m = Moments::zeros(x.c);
        for c in 0..x.c {
            for y in rows.0..rows.1 {
                for xx in cols.0..cols.1 {
                    let v = at(x, sample, c, y, xx) as f64;
                    m.sum[c] += v;
                    m.sumsq[c] += v * v;
                }
            }
        }
        m.count = ((rows.1 - rows.0) * (cols.1 - cols.0)) as u64;
        m
    }

    fn norm_apply(
        &self,
        x: &mut Tensor,
        sample: usize,
        st: &NormStats,
        gamma: &Tensor,
        beta: &Tensor,
        relu: bool,
        residual: Option<&Tensor>,
    ) {
        let (gamma, beta) = (&gamma.data, &beta.data);
        for c in 0..x.c {
            for y in 0..x.h {
                for xx in 0..x.w {
                    let i = idx(x, sample, c, y, xx);
                    let xhat = (x.data[i] as f64 - st.mean[c] as f64) * st.inv_std[c] as f64;
                    let mut v = gamma[c] as f64 * xhat + beta[c] as f64;
                    if relu {
                        v = v.max(0.0);
                    }
                    if let Some(r) = residual {
                        v += r.data[i] as f64;
                    }
                    x.data[i] = v as f32;
                }
            }
        }
    }

    fn norm_backward(
        &self,
        xhat: &Tensor,
        dy: &Tensor,
        inv_std: &Tensor,
        gamma: &Tensor,
    ) -> (Tensor, Tensor, Tensor) {
        let (c, hw) = (xhat.c, xhat.plane());
        let gamma = &gamma.data;
        let (mut dg, mut db) = (vec![0.0f64; c], vec![0.0f64; c]);
        let mut dx = Tensor::zeros(xhat.n, c, xhat.h, xhat.w);
        for n in 0..xhat.n {
            for ch in 0..c {
                let base = (n * c + ch) * hw;
                let (mut sg, mut sgx) = (0.0f64, 0.0f64);
                for p in 0..hw {
                    let (a, g) = (xhat.data[base + p] as f64, dy.data[base + p] as f64);
                    sg += g;
                    sgx += a * g;
                }
                dg[ch] += sgx;
                db[ch] += sg;
                // dx = γ·inv_std·(dy − mean(dy) − x̂·mean(dy·x̂))
                let (m1, m2) = (sg / hw as f64, sgx / hw as f64);
                let k = gamma[ch] as f64 * inv_std.data[n * c + ch] as f64;
                for p in 0..hw {
                    let (a, g) = (xhat.data[base + p] as f64, dy.data[base + p] as f64);
                    dx.data[base + p] = (k * (g - m1 - a * m2)) as f32;
                }
            }
        }
        let f = |v: Vec<f64>| vector(v.into_iter().map(|v| v as f32).collect());
        (dx, f(dg), f(db))
    }

    fn sum_squares(&self, x: &Tensor) -> f64 {
        host::sum_squares(x)
    }

    fn adam(&self, p: &mut Tensor, g: &Tensor, m: &mut Tensor, v: &mut Tensor, s: &AdamStep) {
        host::adam(&mut p.data, &g.data, &mut m.data, &mut v.data, s);
    }

    fn relu(&self, x: &mut Tensor) {
        for v in &mut x.data {
            *v = v.max(0.0);
        }
    }

    fn relu_mask(&self, d: &mut Tensor, y: &Tensor) {
        for (g, &v) in d.data.iter_mut().zip(&y.data) {
            if v <= 0.0 {
                *g = 0.0;
            }
        }
    }

    fn add(&self, a: &mut Tensor, b: &Tensor) {
        assert_eq!(a.shape(), b.shape(), "add: shapes differ");
        for (x, y) in a.data.iter_mut().zip(&b.data) {
            *x += y;
        }
    }

    fn centre(&self, x: &Tensor) -> Tensor {
        let mut y = x.clone();
        for n in 0..x.n {
            for c in 0..x.c {
                let m = self.moments(x, n, (0, x.h), (0, x.w)).sum[c] / x.plane() as f64;
                for yy in 0..x.h {
                    for xx in 0..x.w {
                        let i = idx(x, n, c, yy, xx);
                        y.data[i] = (x.data[i] as f64 - m) as f32;
                    }
                }
            }
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
        let mut y = Tensor::zeros(x.n, 3, x.h, x.w);
        for n in 0..x.n {
            for i in 0..3 {
                for yy in 0..x.h {
                    for xx in 0..x.w {
                        let j = idx(&y, n, i, yy, xx);
                        y.data[j] = at(x, n, src[i], yy, xx) * scale[i] + shift[i];
                    }
                }
            }
        }
        y
    }

    fn channel_affine_backward(&self, dy: &Tensor, src: [usize; 3], scale: [f32; 3]) -> Tensor {
        let mut dx = Tensor::zeros(dy.n, 3, dy.h, dy.w);
        for n in 0..dy.n {
            for i in 0..3 {
                for yy in 0..dy.h {
                    for xx in 0..dy.w {
                        let j = idx(&dx, n, src[i], yy, xx);
                        dx.data[j] += scale[i] * at(dy, n, i, yy, xx);
                    }
                }
            }
        }
        dx
    }

    fn output(&self, x: &mut Tensor, f: OutputFn) {
        if let OutputFn::ScaledTanh { scale, shift } = f {
            for v in &mut x.data {
                *v = (scale as f64 * (*v as f64).tanh() + shift as f64).clamp(0.0, 255.0) as f32;
            }
        }
    }

    fn output_backward(&self, d: &mut Tensor, pre: &Tensor, f: OutputFn) {
        if let OutputFn::ScaledTanh { scale, shift } = f {
            for (g, &u) in d.data.iter_mut().zip(&pre.data) {
                let t = (u as f64).tanh();
                let y = scale as f64 * t + shift as f64;
                let inside = y > 0.0 && y < 255.0;
                *g = if inside {
                    (*g as f64 * scale as f64 * (1.0 - t * t)) as f32
                } else {
                    0.0
                };
            }
        }
    }

    fn max_pool2(&self, x: &Tensor) -> Tensor {
        let mut y = Tensor::zeros(x.n, x.c, x.h / 2, x.w / 2);
        for n in 0..x.n {
            for c in 0..x.c {
                for i in 0..x.h / 2 {
                    for j in 0..x.w / 2 {
                        let mut m = f32::NEG_INFINITY;
                        for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                            m = m.max(at(x, n, c, 2 * i + dy, 2 * j + dx));
                        }
                        let k = idx(&y, n, c, i, j);
                        y.data[k] = m;
                    }
                }
            }
        }
        y
    }

    fn max_pool2_backward(&self, x: &Tensor, dy: &Tensor) -> Tensor {
        let mut dx = Tensor::zeros(x.n, x.c, x.h, x.w);
        for n in 0..x.n {
            for c in 0..x.c {
                for i in 0..dy.h {
                    for j in 0..dy.w {
                        // The first maximum in reading order.
                        let mut best = (2 * i, 2 * j);
                        for (a, b) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                            let (yy, xx) = (2 * i + a, 2 * j + b);
                            if at(x, n, c, yy, xx) > at(x, n, c, best.0, best.1) {
                                best = (yy, xx);
                            }
                        }
                        let k = idx(&dx, n, c, best.0, best.1);
                        dx.data[k] += at(dy, n, c, i, j);
                    }
                }
            }
        }
        dx
    }

    fn gram(&self, f: &Tensor) -> Vec<Vec<f32>> {
        let (c, hw) = (f.c, f.plane());
        (0..f.n)
            .map(|n| {
                let mut g = vec![0.0f32; c * c];
                for a in 0..c {
                    for b in 0..c {
                        let s: f64 = (0..hw)
                            .map(|p| {
                                f.data[(n * c + a) * hw + p] as f64
                                    * f.data[(n * c + b) * hw + p] as f64
                            })
                            .sum();
                        g[a * c + b] = (s / (c * hw) as f64) as f32;
                    }
                }
                g
            })
            .collect()
    }

    fn gram_backward(&self, f: &Tensor, dg: &[Vec<f32>]) -> Tensor {
        let (c, hw) = (f.c, f.plane());
        let mut d = Tensor::zeros(f.n, c, f.h, f.w);
        for n in 0..f.n {
            for a in 0..c {
                for p in 0..hw {
                    let s: f64 = (0..c)
                        .map(|b| dg[n][a * c + b] as f64 * f.data[(n * c + b) * hw + p] as f64)
                        .sum();
                    d.data[(n * c + a) * hw + p] = s as f32;
                }
            }
        }
        d
    }

    fn mse(&self, a: &Tensor, b: &Tensor, w: f64) -> (f64, Tensor) {
        assert_eq!(a.shape(), b.shape(), "mse: shapes differ");
        let n = a.data.len() as f64;
        let mut g = a.clone();
        let mut sum = 0.0f64;
        for (x, &y) in g.data.iter_mut().zip(&b.data) {
            let d = *x as f64 - y as f64;
            sum += d * d;
            *x = (2.0 * w / n * d) as f32;
        }
        (w * sum / n, g)
    }

    fn tv(&self, y: &Tensor, w: f64) -> (f64, Tensor) {
        let mut g = Tensor::zeros(y.n, y.c, y.h, y.w);
        let mut total = 0.0f64;
        for n in 0..y.n {
            for c in 0..y.c {
                for i in 0..y.h {
                    for j in 0..y.w {
                        let v = at(y, n, c, i, j) as f64;
                        for (ni, nj) in [(i + 1, j), (i, j + 1)] {
                            if ni < y.h && nj < y.w {
                                let d = at(y, n, c, ni, nj) as f64 - v;
                                total += d * d;
                                let (p, q) = (idx(y, n, c, i, j), idx(y, n, c, ni, nj));
                                g.data[p] -= (2.0 * w * d) as f32;
                                g.data[q] += (2.0 * w * d) as f32;
                            }
                        }
                    }
                }
            }
        }
        (w * total, g)
    }
}
