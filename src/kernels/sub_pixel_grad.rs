//! The backward pass of the sub-pixel upsampling layer ([`UpsampleConv`]) without patch
//! matrices.
//!
//! Output pixel `(2i + a, 2j + b)` (parity `a, b`) reads input pixels `(i + e, j + f)` with
//! `e ∈ {a − 1, a}`, `f ∈ {b − 1, b}` through the parity's 2×2 kernel. Over all four
//! parities that is nine shifts `(e, f) ∈ {−1, 0, 1}²`, and a shift is used by the parities
//! `a ∈ {e, e + 1} ∩ {0, 1}` (likewise `b`). With the input padded by one pixel on every
//! side and `dy` split into its parities' planes, each with two zero columns more (so that
//! one plane row is as wide as a padded input row), a shift is a constant offset in memory:
//! - weight gradient: `dW[p, shift] = dy_p · x_shiftedᵀ`, one GEMM per shift over all the
//!   parities that use it (their planes are rows of one strided matrix, see
//!   [`DyPlanes`]), reading the padded input in place;
//! - input gradient: `dx_pad[shifted] += W_shiftᵀ · dy_p`, one GEMM per shift, added in
//!   place into the padded input gradient, whose frame is then folded back inward.
//!
//! The zero columns of `dy`'s planes meet whatever the shifted input has there (finite
//! values of the neighbouring row) and add nothing. The same multiply-adds as the
//! per-parity patch-matrix form (16 per output pixel and channel pair), without its
//! gather and scatter passes.
//!
//! [`UpsampleConv`]: super::conv::UpsampleConv

use super::conv::{sub_pixel_taps, Conv2d, SubPixel};
use super::geom::{fold_plane, pad_plane, pad_source, ConvGrad, PadMode};
use super::{matmul, Strided};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// One shift `(e, f)` and the parities that use it: `a ∈ a0..a0 + na`, `b ∈ b0..b0 + nb`.
#[derive(Clone, Copy)]
struct Shift {
    e: isize,
    f: isize,
    a0: usize,
    na: usize,
    b0: usize,
    nb: usize,
}

impl Shift {
    fn all() -> impl Iterator<Item = Shift> {
        let users = |e: isize| {
            let lo = e.max(0) as usize;
            let hi = (e + 1).min(1) as usize;
            (lo, hi + 1 - lo)
        };
        (-1..=1).flat_map(move |e| {
            (-1..=1).map(move |f| {
                let ((a0, na), (b0, nb)) = (users(e), users(f));
                Shift {
                    e,
                    f,
                    a0,
                    na,
                    b0,
                    nb,
                }
            })
        })
    }

    /// Rows of the shift's matrices: `(a, o, b)`, `a` slowest, `b` fastest.
    fn rows(&self, co: usize) -> usize {
        self.na * co * self.nb
    }

    /// Parity `(a, b)`, output channel `o` and the parity's 2×2 tap `(r, s)` of row `m`.
    fn row(&self, m: usize, co: usize) -> (usize, usize, usize, usize, usize) {
        let b = self.b0 + m % self.nb;
        let o = (m / self.nb) % co;
        let a = self.a0 + m / (self.nb * co);
        let r = (self.e + 1 - a as isize) as usize;
        let s = (self.f + 1 - b as isize) as usize;
        (a, b, o, r, s)
    }
}

/// One sample's `dy` split by parity into planes laid out `[a][o][b]`, each `h × (w + 2)`
/// with its last two columns zero. In this order the planes of the parities that use any one
/// shift are the rows of a matrix with a single row stride: plane `(a, o, b)` starts at
/// `((a·co + o)·2 + b)·P`, so with `b` over both parities rows step by `P`, with one `b`
/// by `2P`.
struct DyPlanes<'a> {
    data: &'a [f32],
    co: usize,
    plane: usize,
}

impl DyPlanes<'_> {
    fn rows(&self, s: &Shift) -> Strided<'_> {
        let start = (2 * s.a0 * self.co + s.b0) * self.plane;
        Strided {
            data: &self.data[start..],
            rs: 2 / s.nb * self.plane,
            cs: 1,
        }
    }
}

/// The gradients of the sub-pixel layer with parity kernels `parity` (`[a·2 + b]`, each
/// `[c_out][c_in][2][2]`) at input `x` for output gradient `dy`; `dw` in the original 3×3
/// layout `[c_out][c_in][3][3]`.
pub(super) fn backward(
    parity: &[Conv2d; 4],
    kind: SubPixel,
    x: &Tensor,
    dy: &Tensor,
    want_dx: bool,
) -> ConvGrad {
    let (n, h, w) = (x.n, x.h, x.w);
    let (ci, co) = (parity[0].c_in, parity[0].c_out);
    assert_eq!(
        (dy.n, dy.c, dy.h, dy.w, x.c),
        (n, co, 2 * h, 2 * w, ci),
        "gradient shape"
    );
    let mode = match kind {
        SubPixel::Upsample => PadMode::Replicate,
        SubPixel::Transposed => PadMode::Zero,
    };
    let wp = w + 2;
    let plane = h * wp;
    // A padded channel plane, and two elements of slack: the zero columns of the last
    // rows reach that far past it.
    let stride = (h + 2) * wp + 2;
    let shifts: Vec<Shift> = Shift::all().collect();
    // Per shift, the input-gradient GEMM's left operand `ci × rows`, stored row by row
    // (none without an input gradient).
    let wt: Vec<Vec<f32>> = shifts
        .iter()
        .filter(|_| want_dx)
        .map(|s| {
            let rows = s.rows(co);
            let mut m = vec![0.0f32; rows * ci];
            for (row, dst) in m.chunks_exact_mut(ci).enumerate() {
                let (a, b, o, r, t) = s.row(row, co);
                let wp = &parity[a * 2 + b].weight;
                for (c, d) in dst.iter_mut().enumerate() {
                    *d = wp[((o * ci + c) * 2 + r) * 2 + t];
                }
            }
            m
        })
        .collect();
    // With fewer samples than threads the GEMMs share the threads instead (they split
    // their output, never a sum, so the bits stay the same).
    let par = if n >= rayon::current_num_threads() {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(0)
    };
    let mut dx = want_dx.then(|| Tensor::for_overwrite(n, ci, h, w));
    let mut dxs: Vec<&mut [f32]> = match &mut dx {
        Some(t) => t.data.chunks_mut(ci * h * w).collect(),
        None => (0..n).map(|_| Default::default()).collect(),
    };
    let partials: Vec<(Vec<f32>, Vec<f64>)> = dxs
        .par_iter_mut()
        .enumerate()
        .map(|(smp, dxs)| {
            let xs = x.sample(smp);
            let dys = dy.sample(smp);
            let xpad = pad_input(xs, ci, h, w, stride, mode);
            let planes = split_parities(dys, co, h, w);
            let planes = DyPlanes {
                data: &planes,
                co,
                plane,
            };
            let mut dw = vec![0.0f32; co * ci * 9];
            let mut g = vec![0.0f32; 4 * co * ci];
            let mut dxpad = if dxs.is_empty() {
                Vec::new()
            } else {
                vec![0.0f32; ci * stride]
            };
            for (i, s) in shifts.iter().enumerate() {
                let rows = s.rows(co);
                let off = ((1 + s.e) as usize) * wp + (1 + s.f) as usize;
                // g (rows × ci) = dy rows (rows × plane) · shifted xᵀ (plane × ci)
                matmul(
                    rows,
                    ci,
                    plane,
                    &mut g,
                    ci,
                    false,
                    planes.rows(s),
                    Strided {
                        data: &xpad[off..],
                        rs: 1,
                        cs: stride,
                    },
                    par,
                );
                for (m, gr) in g[..rows * ci].chunks_exact(ci).enumerate() {
                    let (a, b, o, r, t) = s.row(m, co);
                    for &ky in sub_pixel_taps(kind, a, r) {
                        for &kx in sub_pixel_taps(kind, b, t) {
                            for (c, &v) in gr.iter().enumerate() {
                                dw[((o * ci + c) * 3 + ky) * 3 + kx] += v;
                            }
                        }
                    }
                }
                if !dxpad.is_empty() {
                    // dx_pad[:, shifted] (ci × plane) += W_shiftᵀ (ci × rows) · dy rows
                    matmul(
                        ci,
                        plane,
                        rows,
                        &mut dxpad[off..],
                        stride,
                        true,
                        Strided {
                            data: &wt[i],
                            rs: 1,
                            cs: ci,
                        },
                        planes.rows(s),
                        par,
                    );
                }
            }
            if !dxs.is_empty() {
                fold_frame(&dxpad, dxs, h, w, stride, mode);
            }
            let db = dys
                .chunks_exact(4 * h * w)
                .map(|p| p.iter().map(|&v| v as f64).sum::<f64>())
                .collect();
            (dw, db)
        })
        .collect();
    // Summed in sample order: the same bits for any thread count.
    let mut dw = vec![0.0f32; co * ci * 9];
    let mut db = vec![0.0f64; co];
    for (pw, pb) in &partials {
        dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
    }
    ConvGrad {
        dx,
        dw,
        db: db.into_iter().map(|v| v as f32).collect(),
    }
}

/// Where each row and column of a plane padded by one pixel (`mode`) reads from.
fn frame_sources(h: usize, w: usize, mode: PadMode) -> (Vec<isize>, Vec<isize>) {
    let map = |n: usize| {
        (0..n + 2)
            .map(|p| pad_source(p as isize - 1, n, mode))
            .collect()
    };
    (map(h), map(w))
}

/// One sample padded by a pixel on every side (`mode`), each channel plane `stride` long
/// (the padded plane, then zeros).
fn pad_input(xs: &[f32], ci: usize, h: usize, w: usize, stride: usize, mode: PadMode) -> Vec<f32> {
    let (rows, cols) = frame_sources(h, w, mode);
    let mut out = vec![0.0f32; ci * stride];
    for (src, dst) in xs.chunks_exact(h * w).zip(out.chunks_exact_mut(stride)) {
        pad_plane(src, w, &rows, &cols, &mut dst[..(h + 2) * (w + 2)]);
    }
    out
}

/// One sample's `dy` (`co × 2h × 2w`) as parity planes, see [`DyPlanes`].
fn split_parities(dys: &[f32], co: usize, h: usize, w: usize) -> Vec<f32> {
    let wp = w + 2;
    let plane = h * wp;
    let mut out = vec![0.0f32; 4 * co * plane];
    for a in 0..2 {
        for o in 0..co {
            let src = &dys[o * 4 * h * w..][..4 * h * w];
            let (even, odd) = out[((a * co + o) * 2) * plane..][..2 * plane].split_at_mut(plane);
            for i in 0..h {
                let row = &src[(2 * i + a) * 2 * w..][..2 * w];
                let (e, od) = (&mut even[i * wp..][..w], &mut odd[i * wp..][..w]);
                for ((pair, de), dod) in row.chunks_exact(2).zip(e).zip(od) {
                    *de = pair[0];
                    *dod = pair[1];
                }
            }
        }
    }
    out
}

/// The padded input gradient's interior, with its frame added onto the pixels the padding
/// read (nothing, for zero padding).
fn fold_frame(dxpad: &[f32], dx: &mut [f32], h: usize, w: usize, stride: usize, mode: PadMode) {
    let (rows, cols) = frame_sources(h, w, mode);
    for (src, dst) in dxpad.chunks_exact(stride).zip(dx.chunks_exact_mut(h * w)) {
        fold_plane(&src[..(h + 2) * (w + 2)], w, &rows, &cols, (1, 1), dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::tests::{dilated, upsample2};
    use crate::kernels::conv::UpsampleConv;
    use crate::kernels::test_values as values;

    /// Against the generic backward pass over the upsampled (or zero-inserted) input, for
    /// both layers, at sizes down to one pixel and widths whose rows wrap into the next.
    #[test]
    fn sub_pixel_backward_matches_the_generic_one() {
        for (i, &(n, ci, co, h, w)) in [
            (2, 5, 4, 7, 9),
            (1, 3, 2, 1, 1),
            (3, 16, 8, 4, 13),
            (1, 2, 3, 6, 2),
        ]
        .iter()
        .enumerate()
        {
            let seed = 10 * i as u64;
            let x = Tensor::from_vec(n, ci, h, w, values(n * ci * h * w, seed));
            for (kind, g) in [
                (SubPixel::Upsample, upsample2()),
                (SubPixel::Transposed, dilated(3, [2, 1, 2, 1])),
            ] {
                let conv = Conv2d::new(
                    co,
                    ci,
                    3,
                    values(co * ci * 9, seed + 1),
                    Some(values(co, seed + 2)),
                );
                let dy =
                    Tensor::from_vec(n, co, 2 * h, 2 * w, values(n * co * 4 * h * w, seed + 3));
                let want = conv.backward_col2im(&g, &x, &dy, true);
                let up = UpsampleConv::new(&conv, 3, kind);
                let got = up.backward(&x, &dy, true);
                let at = format!("{kind:?} {n}x{ci}->{co} {h}x{w}");
                assert!(
                    crate::tensor::rel_error(&got.dw, &want.dw) < 1e-5,
                    "{at}: dw"
                );
                assert!(
                    crate::tensor::rel_error(&got.db, &want.db) < 1e-5,
                    "{at}: db"
                );
                assert!(
                    got.dx.unwrap().rel_error(&want.dx.unwrap()) < 1e-5,
                    "{at}: dx"
                );
                let no_dx = up.backward(&x, &dy, false);
                assert!(no_dx.dx.is_none());
                assert_eq!(no_dx.dw, got.dw, "{at}: dw without dx");
            }
        }
    }

    /// A sample's input gradient has the same bits alone (the GEMMs share the threads) as
    /// in a batch (one task per sample), and the weight gradient is the samples' sum.
    #[test]
    fn a_batch_gives_the_bits_of_its_samples() {
        let (n, ci, co, h, w) = (3, 24, 16, 10, 12);
        let x = Tensor::from_vec(n, ci, h, w, values(n * ci * h * w, 1));
        let dy = Tensor::from_vec(n, co, 2 * h, 2 * w, values(n * co * 4 * h * w, 2));
        let conv = Conv2d::new(co, ci, 3, values(co * ci * 9, 3), None);
        let up = UpsampleConv::new(&conv, 3, SubPixel::Upsample);
        let all = up.backward(&x, &dy, true);
        let mut dw = vec![0.0f32; co * ci * 9];
        for s in 0..n {
            let xs = Tensor::from_vec(1, ci, h, w, x.sample(s).to_vec());
            let dys = Tensor::from_vec(1, co, 2 * h, 2 * w, dy.sample(s).to_vec());
            let one = up.backward(&xs, &dys, true);
            assert_eq!(
                one.dx.expect("dx").data,
                all.dx.as_ref().expect("dx").sample(s),
                "sample {s}: dx"
            );
            dw.iter_mut().zip(&one.dw).for_each(|(a, b)| *a += b);
        }
        assert_eq!(dw, all.dw);
    }
}
