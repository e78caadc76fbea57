//! Backward passes of the convolution. Weight and bias gradients: 3×3 stride-1 layers by
//! Winograd ([`super::winograd_grad`]), other plain layers by GEMMs over the padded input
//! in place ([`super::shifted_grad`]), upsampled or zero-inserted ones by GEMM against the
//! patch matrix the forward pass gathers. The input gradient: for stride-1 layers as a
//! (Winograd / direct) convolution with the flipped, transposed kernel, otherwise by GEMM +
//! col2im through the forward pass's index maps (any geometry: reflection, stride,
//! upsampling, zero insertion).

use crate::kernels::conv::Conv2d;
pub use crate::kernels::geom::ConvGrad;
use crate::kernels::geom::{flip_transpose, fold_plane, gather, pad_source, ConvGeom, PadMode};
use crate::tensor::Tensor;
use rayon::prelude::*;
use std::cell::RefCell;

thread_local! {
    static COL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static DCOL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Pixel-block partitions per sample in the weight-gradient reduction.
const PARTS: usize = 4;

struct Acc {
    dw: Vec<f32>,
    db: Vec<f64>,
}

impl Conv2d {
    /// Backward of `self.forward(x, g)` given `dy`. Stride-1 layers get their input gradient
    /// as a (Winograd / direct) convolution, the others through col2im; 3×3 stride-1 layers
    /// their weight gradient by Winograd ([`super::winograd_grad`]), other plain ones by
    /// shifted GEMMs ([`super::shifted_grad`]).
    pub fn backward(&self, g: &ConvGeom, x: &Tensor, dy: &Tensor, want_dx: bool) -> ConvGrad {
        if super::winograd_grad::applicable(self.c_in, self.c_out, g) {
            let (dw, db) = super::winograd_grad::weight_grad(g, x, dy);
            let dx = want_dx.then(|| stride1_input_grad(self, g, dy, x.h, x.w));
            return ConvGrad { dx, dw, db };
        }
        if super::shifted_grad::applicable(g) {
            let (dw, db) = super::shifted_grad::weight_grad(g, self.c_out, x, dy);
            let dx = want_dx.then(|| {
                if g.stride == 1 {
                    stride1_input_grad(self, g, dy, x.h, x.w)
                } else {
                    self.col2im_grads(g, x, dy, false, true).dx.expect("dx")
                }
            });
            return ConvGrad { dx, dw, db };
        }
        self.backward_col2im(g, x, dy, want_dx)
    }

    /// The general backward pass: weight gradients by GEMM against the gathered patches, the
    /// input gradient (if wanted) by GEMM + col2im through the same index maps.
    pub fn backward_col2im(
        &self,
        g: &ConvGeom,
        x: &Tensor,
        dy: &Tensor,
        want_dx: bool,
    ) -> ConvGrad {
        self.col2im_grads(g, x, dy, true, want_dx)
    }

    /// [`Conv2d::backward_col2im`], its weight and bias gradients only if `want_dw` (zeros
    /// otherwise).
    fn col2im_grads(
        &self,
        g: &ConvGeom,
        x: &Tensor,
        dy: &Tensor,
        want_dw: bool,
        want_dx: bool,
    ) -> ConvGrad {
        let (ho, wo) = g.out_size(x.h, x.w);
        assert_eq!(
            (dy.n, dy.c, dy.h, dy.w),
            (x.n, self.c_out, ho, wo),
            "gradient shape"
        );
        let ymap = g.index_map(x.h, ho, g.pad[0]);
        let xmap = g.index_map(x.w, wo, g.pad[2]);
        let (ci, co, k) = (self.c_in, self.c_out, g.k);
        let kk = ci * k * k;
        let np = ho * wo;
        let block = ((65536 / kk.max(1)).clamp(64, 4096) / 16 * 16).max(16);
        let n_blocks = np.div_ceil(block);
        let mut dw = vec![0.0f32; co * kk];
        let mut db = vec![0.0f64; co];
        let mut dx = want_dx.then(|| Tensor::zeros(x.n, ci, x.h, x.w));
        // The gradients of one sample's pixel blocks `blocks`, its input gradient added into
        // `dxs` (empty when not wanted).
        let run = |s: usize, blocks: std::ops::Range<usize>, dxs: &mut [f32]| {
            let mut acc = Acc {
                dw: vec![0.0; co * kk],
                db: vec![0.0; co],
            };
            let (xs, dys) = (x.sample(s), dy.sample(s));
            for bi in blocks {
                let p0 = bi * block;
                let p1 = (p0 + block).min(np);
                let acc = want_dw.then_some(&mut acc);
                block_grad(
                    self, g, xs, x.h, x.w, dys, &ymap, &xmap, wo, np, p0, p1, acc, dxs,
                );
            }
            acc
        };
        // Partial weight gradients, summed in a fixed order below: the result does not depend
        // on the thread count or on scheduling, so training is bit-for-bit reproducible.
        let partials: Vec<Acc> = if x.n != 1 {
            // One task per sample, its input gradient scattered straight into its own plane
            // (partitions of a sample's pixels each need a zeroed copy of its whole input
            // gradient, summed afterwards: at 256² that traffic was a third of the stride-2
            // layers' backward pass).
            let mut dxs: Vec<&mut [f32]> = match &mut dx {
                Some(t) => t.data.chunks_mut(ci * x.h * x.w).collect(),
                None => (0..x.n).map(|_| Default::default()).collect(),
            };
            dxs.par_iter_mut()
                .enumerate()
                .map(|(s, d)| run(s, 0..n_blocks, d))
                .collect()
        } else {
            // One sample: a fixed partition of its pixel blocks.
            let parts = n_blocks.min(PARTS);
            let per_part: Vec<(Acc, Vec<f32>)> = (0..parts)
                .into_par_iter()
                .map(|part| {
                    let mut d = vec![0.0; if want_dx { ci * x.h * x.w } else { 0 }];
                    let acc = run(
                        0,
                        part * n_blocks / parts..(part + 1) * n_blocks / parts,
                        &mut d,
                    );
                    (acc, d)
                })
                .collect();
            if let Some(dx) = &mut dx {
                for (_, d) in &per_part {
                    dx.data.iter_mut().zip(d).for_each(|(a, b)| *a += b);
                }
            }
            per_part.into_iter().map(|(acc, _)| acc).collect()
        };
        for acc in &partials {
            dw.iter_mut().zip(&acc.dw).for_each(|(x, y)| *x += y);
            db.iter_mut().zip(&acc.db).for_each(|(x, y)| *x += y);
        }
        ConvGrad {
            dx,
            dw,
            db: db.into_iter().map(|v| v as f32).collect(),
        }
    }

    /// The convolution whose forward pass is this one's input gradient, for a stride-1,
    /// zero-padded k×k layer with pad k/2: flipped kernel, input and output channels swapped.
    pub fn transposed_for_grad(&self, k: usize) -> Conv2d {
        let (ci, co) = (self.c_in, self.c_out);
        Conv2d::new(ci, co, k, flip_transpose(&self.weight, co, ci, k), None)
    }
}

/// Input gradient of a stride-1 zero-padded "same" convolution via its transposed conv.
pub fn same_conv_input_grad(transposed: &Conv2d, k: usize, dy: &Tensor) -> Tensor {
    transposed.forward(dy, &ConvGeom::simple(k, 1, k / 2, PadMode::Zero))
}

/// The gradients of one block of output pixels `p0..p1`: weight and bias ones added into
/// `acc` (if given), the input gradient into `dx` (unless empty).
#[allow(clippy::too_many_arguments)]
fn block_grad(
    conv: &Conv2d,
    g: &ConvGeom,
    xs: &[f32],
    h: usize,
    w: usize,
    dys: &[f32],
    ymap: &[i32],
    xmap: &[i32],
    wo: usize,
    np: usize,
    p0: usize,
    p1: usize,
    acc: Option<&mut Acc>,
    dx: &mut [f32],
) {
    let (ci, co, k) = (conv.c_in, conv.c_out, g.k);
    let kk = ci * k * k;
    let n = p1 - p0;
    if let Some(acc) = acc {
        COL.with(|c| {
            let mut col = c.borrow_mut();
            if col.len() < kk * n {
                col.resize(kk * n, 0.0);
            }
            let col = &mut col[..kk * n];
            gather(g, xs, ci, h, w, ymap, xmap, wo, p0, p1, col);
            // dW (co × kk) += dY[:, p0..p1] (co × n) · colᵀ (n × kk)
            super::matmul(
                co,
                kk,
                n,
                &mut acc.dw,
                kk,
                true,
                super::Strided {
                    data: &dys[p0..],
                    rs: np,
                    cs: 1,
                },
                super::Strided {
                    data: col,
                    rs: 1,
                    cs: n,
                },
                gemm::Parallelism::None,
            );
        });
        for o in 0..co {
            acc.db[o] += dys[o * np + p0..o * np + p1]
                .iter()
                .map(|&v| v as f64)
                .sum::<f64>();
        }
    }
    if !dx.is_empty() {
        DCOL.with(|d| {
            let mut dcol = d.borrow_mut();
            if dcol.len() < kk * n {
                dcol.resize(kk * n, 0.0);
            }
            let dcol = &mut dcol[..kk * n];
            // dcol (kk × n) = Wᵀ (kk × co) · dY[:, p0..p1] (co × n)
            super::matmul(
                kk,
                n,
                co,
                dcol,
                n,
                false,
                super::Strided {
                    data: &conv.weight,
                    rs: 1,
                    cs: kk,
                },
                super::Strided {
                    data: &dys[p0..],
                    rs: np,
                    cs: 1,
                },
                gemm::Parallelism::None,
            );
            scatter(g, dcol, dx, ci, k, h, w, ymap, xmap, wo, p0, p1);
        });
    }
}

/// col2im: add each patch-matrix entry back onto the input pixel it was gathered from.
#[allow(clippy::too_many_arguments)]
fn scatter(
    g: &ConvGeom,
    dcol: &[f32],
    dx: &mut [f32],
    ci: usize,
    k: usize,
    h: usize,
    w: usize,
    ymap: &[i32],
    xmap: &[i32],
    wo: usize,
    p0: usize,
    p1: usize,
) {
    let n = p1 - p0;
    let plain = g.dilate == 1 && g.upsample == 1;
    for c in 0..ci {
        let plane = &mut dx[c * h * w..(c + 1) * h * w];
        for ky in 0..k {
            for kx in 0..k {
                let row = &dcol[((c * k + ky) * k + kx) * n..][..n];
                // Run by run along output rows, in the order of the pixels (the sums onto
                // each input pixel are added in the same order as one pixel at a time).
                let mut p = p0;
                while p < p1 {
                    let (oy, ox0) = (p / wo, p % wo);
                    let ox1 = wo.min(ox0 + (p1 - p));
                    let src = &row[p - p0..p - p0 + (ox1 - ox0)];
                    p += ox1 - ox0;
                    let sy = ymap[oy * k + ky];
                    if sy < 0 {
                        continue;
                    }
                    let drow = &mut plane[sy as usize * w..(sy as usize + 1) * w];
                    let edge = |drow: &mut [f32], vals: &[f32], from: usize| {
                        for (&v, ox) in vals.iter().zip(from..) {
                            let sx = xmap[ox * k + kx];
                            if sx >= 0 {
                                drow[sx as usize] += v;
                            }
                        }
                    };
                    if !plain {
                        edge(drow, src, ox0);
                        continue;
                    }
                    let (lo, hi, s0) = super::geom::interior(g, kx, w, ox0, ox1);
                    edge(drow, &src[..lo - ox0], ox0);
                    let mid = &src[lo - ox0..hi - ox0];
                    for (d, &v) in drow[s0..].iter_mut().step_by(g.stride).zip(mid) {
                        *d += v;
                    }
                    edge(drow, &src[hi - ox0..], hi);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::tests::{dilated, upsample2};

    fn pseudo(n: usize, seed: u32) -> Vec<f32> {
        let mut r = crate::rng::Rng::new(seed as u64);
        (0..n).map(|_| r.f32() * 2.0 - 1.0).collect()
    }

    /// A batch (one task per sample, input gradients scattered in place) gives what its
    /// samples give one at a time (one sample: partitions of its pixels, summed).
    #[test]
    fn a_batch_backward_equals_its_samples_one_by_one() {
        for (gi, g) in [ConvGeom::simple(3, 2, 1, PadMode::Reflect), upsample2()]
            .iter()
            .enumerate()
        {
            let (n, ci, co, h, w) = (3, 5, 6, 33, 29);
            let x = Tensor::from_vec(n, ci, h, w, pseudo(n * ci * h * w, 40 + gi as u32));
            let (ho, wo) = g.out_size(h, w);
            let dy = Tensor::from_vec(n, co, ho, wo, pseudo(n * co * ho * wo, 50 + gi as u32));
            let conv = Conv2d::new(co, ci, 3, pseudo(co * ci * 9, 60), None);
            let all = conv.backward_col2im(g, &x, &dy, true);
            let mut dw = vec![0.0f32; all.dw.len()];
            for s in 0..n {
                let xs = Tensor::from_vec(1, ci, h, w, x.sample(s).to_vec());
                let dys = Tensor::from_vec(1, co, ho, wo, dy.sample(s).to_vec());
                let one = conv.backward_col2im(g, &xs, &dys, true);
                let dx = one.dx.expect("dx");
                assert!(
                    crate::tensor::rel_error(&dx.data, all.dx.as_ref().expect("dx").sample(s))
                        < 1e-6,
                    "geometry {gi}, sample {s}: dx"
                );
                dw.iter_mut().zip(&one.dw).for_each(|(a, b)| *a += b);
            }
            assert!(
                crate::tensor::rel_error(&dw, &all.dw) < 1e-6,
                "geometry {gi}: dw"
            );
            assert!(conv.backward_col2im(g, &x, &dy, false).dx.is_none());
        }
    }

    /// Check the analytic gradients of L = Σ dy ⊙ conv(x) against central differences.
    #[test]
    fn conv_gradients_match_finite_differences() {
        let geoms = [
            ConvGeom::simple(3, 1, 1, PadMode::Reflect),
            ConvGeom::simple(3, 2, 1, PadMode::Reflect),
            ConvGeom::simple(5, 1, 2, PadMode::Zero),
            upsample2(),
            dilated(3, [2, 1, 2, 1]),
        ];
        for (gi, g) in geoms.iter().enumerate() {
            let (ci, co, h, w) = (3, 4, 6, 7);
            let x = Tensor::from_vec(2, ci, h, w, pseudo(2 * ci * h * w, 1 + gi as u32));
            let conv = Conv2d::new(
                co,
                ci,
                g.k,
                pseudo(co * ci * g.k * g.k, 9),
                Some(pseudo(co, 10)),
            );
            let y = conv.forward(&x, g);
            let dy = Tensor::from_vec(y.n, y.c, y.h, y.w, pseudo(y.data.len(), 11));
            let grad = conv.backward(g, &x, &dy, true);
            let loss = |conv: &Conv2d, x: &Tensor| -> f64 {
                conv.forward(x, g)
                    .data
                    .iter()
                    .zip(&dy.data)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum()
            };
            let eps = 1e-2f32;
            for &i in &[0usize, 7, 40, x.data.len() - 1] {
                let (mut xp, mut xm) = (x.clone(), x.clone());
                xp.data[i] += eps;
                xm.data[i] -= eps;
                let num = (loss(&conv, &xp) - loss(&conv, &xm)) / (2.0 * eps as f64);
                let ana = grad.dx.as_ref().unwrap().data[i] as f64;
                assert!(
                    (num - ana).abs() < 1e-3 * (1.0 + num.abs()),
                    "geom {gi} dx[{i}]: {num} vs {ana}"
                );
            }
            for &i in &[0usize, 5, conv.weight.len() - 1] {
                let nudged = |d: f32| {
                    let mut w = conv.weight.clone();
                    w[i] += d;
                    Conv2d::new(co, ci, g.k, w, Some(conv.bias.clone()))
                };
                let (cp, cm) = (nudged(eps), nudged(-eps));
                let num = (loss(&cp, &x) - loss(&cm, &x)) / (2.0 * eps as f64);
                assert!(
                    (num - grad.dw[i] as f64).abs() < 1e-3 * (1.0 + num.abs()),
                    "geom {gi} dw[{i}]: {num} vs {}",
                    grad.dw[i]
                );
            }
            let num_db: f64 = (0..dy.n)
                .map(|s| {
                    dy.sample(s)[..y.h * y.w]
                        .iter()
                        .map(|&v| v as f64)
                        .sum::<f64>()
                })
                .sum();
            assert!((num_db - grad.db[0] as f64).abs() < 1e-4 * (1.0 + num_db.abs()));
        }
    }

    #[test]
    fn transposed_conv_gives_the_same_input_gradient() {
        let (ci, co, h, w) = (16, 24, 9, 11);
        let x = Tensor::from_vec(1, ci, h, w, pseudo(ci * h * w, 3));
        let conv = Conv2d::new(co, ci, 3, pseudo(co * ci * 9, 4), Some(pseudo(co, 5)));
        let g = ConvGeom::simple(3, 1, 1, PadMode::Zero);
        let dy = Tensor::from_vec(1, co, h, w, pseudo(co * h * w, 6));
        let a = conv.backward_col2im(&g, &x, &dy, true).dx.unwrap();
        let b = same_conv_input_grad(&conv.transposed_for_grad(3), 3, &dy);
        assert!(b.rel_error(&a) < 1e-5, "{}", b.rel_error(&a));
    }
}

/// Input gradient of a stride-1 convolution with any padding mode, as a forward
/// convolution: the full correlation of `dy` with the flipped, transposed kernel gives the
/// gradient at the *padded* input, which is then folded back onto the pixels the padding
/// read (reflection and replication send border gradients inward; zeros drop them).
/// 3×3 layers padded by one pixel take [`same3_input_grad`] (Winograd on the image's
/// tiles, the frame apart); other 3×3 layers run on Winograd, 9×9 on the direct kernel.
pub fn stride1_input_grad(conv: &Conv2d, g: &ConvGeom, dy: &Tensor, h: usize, w: usize) -> Tensor {
    assert!(g.stride == 1 && g.upsample == 1 && g.dilate == 1);
    let k = g.k;
    if k == 3 && g.pad == [1; 4] && h >= 2 && w >= 2 {
        return same3_input_grad(conv, g, dy);
    }
    let t = conv.transposed_for_grad(k);
    // Zero-pad dy by k-2 so that a pad-1 convolution yields the full correlation
    // (k-1 on each side) while staying in the Winograd / direct kernels' geometry.
    let (hp, wp) = (h + g.pad[0] + g.pad[1], w + g.pad[2] + g.pad[3]);
    let e = k - 1;
    let dxpad = if k == 3 {
        let padded = zero_pad(dy, 1);
        t.forward(&padded, &ConvGeom::simple(3, 1, 1, PadMode::Zero))
    } else {
        t.forward(dy, &ConvGeom::simple(k, 1, e, PadMode::Zero))
    };
    debug_assert_eq!((dxpad.h, dxpad.w), (hp, wp));
    fold_padding(&dxpad, g, h, w)
}

/// The input gradient of a 3×3 stride-1 layer padded by one pixel (zeros, reflection or
/// replication; the residual blocks). Inside, the padded input's gradient is the
/// zero-padded same-size convolution of `dy` with the flipped, transposed kernel (Winograd
/// on the image's own tiles); only its one-pixel frame, which zero padding drops and the
/// others fold back inward, is left: each side is a three-tap correlation along one row or
/// column of `dy`, three small GEMMs (one per tap, over the output channels). Cheaper than
/// Winograd over the full `(h + 2) × (w + 2)` correlation, whose last row and column of
/// tiles are half outside it (a fifth more tiles at 32×32), and no padded copies.
fn same3_input_grad(conv: &Conv2d, g: &ConvGeom, dy: &Tensor) -> Tensor {
    use crate::kernels::{matmul, Strided};
    let (h, w) = (dy.h, dy.w);
    let mut dx = same_conv_input_grad(&conv.transposed_for_grad(3), 3, dy);
    if g.mode == PadMode::Zero {
        return dx;
    }
    let (ci, co) = (conv.c_in, conv.c_out);
    // Where padded row / column p (0 and h + 1 / w + 1: the frame) was read from.
    let src = |p: isize, n: usize| pad_source(p - 1, n, g.mode) as usize;
    let (top_row, bottom_row) = (src(0, h), src(h as isize + 1, h));
    let (left_col, right_col) = (src(0, w), src(w as isize + 1, w));
    // Tap (ky, kx) as a ci × co matrix: element (c, o) is weight[o][c][ky][kx].
    let tap = |ky: usize, kx: usize| Strided {
        data: &conv.weight[ky * 3 + kx..],
        rs: 9,
        cs: ci * 9,
    };
    dx.data
        .par_chunks_mut(ci * h * w)
        .zip(dy.data.par_chunks(co * h * w))
        .for_each_init(
            || vec![0.0f32; ci * (2 * (w + 2) + 2 * h)],
            |buf, (dxs, dys)| {
                buf.fill(0.0);
                let (rows, cols) = buf.split_at_mut(2 * ci * (w + 2));
                let (top, bottom) = rows.split_at_mut(ci * (w + 2));
                let (left, right) = cols.split_at_mut(ci * h);
                // Padded row 0 takes tap row 0 over dy's first row, padded row h + 1 tap
                // row 2 over its last; padded column q of them reads dy column q − kx.
                for (strip, ky, y) in [(&mut *top, 0, 0), (&mut *bottom, 2, h - 1)] {
                    for kx in 0..3 {
                        let rhs = Strided {
                            data: &dys[y * w..],
                            rs: h * w,
                            cs: 1,
                        };
                        let dst = &mut strip[kx..];
                        matmul(
                            ci,
                            w,
                            co,
                            dst,
                            w + 2,
                            true,
                            tap(ky, kx),
                            rhs,
                            gemm::Parallelism::None,
                        );
                    }
                }
                // Padded column 0 takes tap column 0 over dy's first column, column w + 1
                // tap column 2 over its last; padded row y + 1 reads dy row y + 1 − ky.
                for (strip, kx, x) in [(&mut *left, 0, 0), (&mut *right, 2, w - 1)] {
                    for ky in 0..3 {
                        let (i0, i1) = (1usize.saturating_sub(ky), (h + 1 - ky).min(h));
                        let rhs = Strided {
                            data: &dys[i0 * w + x..],
                            rs: h * w,
                            cs: w,
                        };
                        let dst = &mut strip[i0 + ky - 1..];
                        matmul(
                            ci,
                            i1 - i0,
                            co,
                            dst,
                            h,
                            true,
                            tap(ky, kx),
                            rhs,
                            gemm::Parallelism::None,
                        );
                    }
                }
                // Folded onto the pixels the frame was read from.
                for c in 0..ci {
                    let p = &mut dxs[c * h * w..][..h * w];
                    let (t, b) = (
                        &top[c * (w + 2)..][..w + 2],
                        &bottom[c * (w + 2)..][..w + 2],
                    );
                    for q in 0..w + 2 {
                        let x = src(q as isize, w);
                        p[top_row * w + x] += t[q];
                        p[bottom_row * w + x] += b[q];
                    }
                    let (l, r) = (&left[c * h..][..h], &right[c * h..][..h]);
                    for y in 0..h {
                        p[y * w + left_col] += l[y];
                        p[y * w + right_col] += r[y];
                    }
                }
            },
        );
    dx
}

/// The input gradient of a stride-1 layer from the gradient at its padded input
/// (`dxpad`, `h + pad` × `w + pad`): the interior one to one, each padding pixel's gradient
/// added onto the pixel it was read from.
pub fn fold_padding(dxpad: &Tensor, g: &ConvGeom, h: usize, w: usize) -> Tensor {
    let (hp, wp) = (h + g.pad[0] + g.pad[1], w + g.pad[2] + g.pad[3]);
    assert_eq!((dxpad.h, dxpad.w), (hp, wp), "the padded input's gradient");
    let (rows, cols) = g.padded_sources(h, w, hp, wp);
    let mut dx = Tensor::for_overwrite(dxpad.n, dxpad.c, h, w);
    dx.data
        .par_chunks_mut(h * w)
        .zip(dxpad.data.par_chunks(hp * wp))
        .for_each(|(d, s)| fold_plane(s, w, &rows, &cols, (g.pad[0], g.pad[2]), d));
    dx
}

fn zero_pad(x: &Tensor, p: usize) -> Tensor {
    let (h, w) = (x.h + 2 * p, x.w + 2 * p);
    let mut out = Tensor::zeros(x.n, x.c, h, w);
    out.data
        .par_chunks_mut(h * w)
        .zip(x.data.par_chunks(x.h * x.w))
        .for_each(|(d, s)| {
            for y in 0..x.h {
                d[(y + p) * w + p..(y + p) * w + p + x.w]
                    .copy_from_slice(&s[y * x.w..(y + 1) * x.w]);
            }
        });
    out
}

#[cfg(test)]
mod stride1_tests {
    use super::*;

    #[test]
    fn stride1_input_grad_matches_col2im_for_every_padding() {
        let mut r = crate::rng::Rng::new(8);
        let mut v = |n: usize| (0..n).map(|_| r.f32() - 0.5).collect::<Vec<f32>>();
        for (k, ci, co) in [(3usize, 16usize, 20usize), (9, 4, 3), (9, 32, 3)] {
            for mode in [PadMode::Reflect, PadMode::Zero, PadMode::Replicate] {
                for (h, w) in [(5usize, 6usize), (12, 17), (2, 3), (24, 32)] {
                    let g = ConvGeom::simple(k, 1, k / 2, mode);
                    let x = Tensor::from_vec(2, ci, h, w, v(2 * ci * h * w));
                    let conv = Conv2d::new(co, ci, k, v(co * ci * k * k), None);
                    let dy = Tensor::from_vec(2, co, h, w, v(2 * co * h * w));
                    let want = conv.backward_col2im(&g, &x, &dy, true).dx.unwrap();
                    let got = stride1_input_grad(&conv, &g, &dy, h, w);
                    assert!(
                        got.rel_error(&want) < 1e-5,
                        "k{k} {mode:?} {h}x{w}: {}",
                        got.rel_error(&want)
                    );
                }
            }
        }
    }
}
