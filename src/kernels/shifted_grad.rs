//! The weight gradient of a plain convolution (any kernel, stride and padding; no upsampling
//! or zero insertion) without a patch matrix: one GEMM per kernel row, reading the padded
//! input in place.
//!
//! The input is padded, stored channels-last (`[row][column][channel]`) and split by row
//! into `stride` planes (padded row `s·t + p` is row `t` of plane `p`). Output pixel `(i, j)`
//! reads tap `(ky, kx)` of channel `c` at padded `(s·i + ky, s·j + kx)`, i.e. in plane
//! `ky mod s` at element `(s·q + (ky div s)·wp + kx)·c_in + c` with `q = i·wq + j`,
//! `wp = s·wq` the padded row length. So for one kernel row `ky` the patch values of all
//! `k·c_in` taps `(kx, c)` of pixel `q` are one contiguous run, and successive pixels step
//! by `s·c_in`: a strided matrix over the plane itself. `dy` gets `wq − wo` zero columns per
//! row to match (its values there multiply whatever finite padding lies beyond and add
//! nothing). Im2col wrote `k²·c_in` floats per output pixel before the GEMM could start
//! (81 per input value in the 9×9 layers); this writes the input once.

use super::geom::ConvGeom;
use super::{matmul, Strided};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Does [`weight_grad`] take this geometry?
pub fn applicable(g: &ConvGeom) -> bool {
    g.upsample == 1 && g.dilate == 1
}

/// `(dW, db)` of the convolution `g` (`c_out` outputs) at input `x` for output gradient
/// `dy`: `dW` as `[c_out][c_in][k][k]`.
pub fn weight_grad(g: &ConvGeom, c_out: usize, x: &Tensor, dy: &Tensor) -> (Vec<f32>, Vec<f32>) {
    assert!(
        applicable(g),
        "shifted weight gradient: plain convolutions only"
    );
    let (n, ci, h, w) = (x.n, x.c, x.h, x.w);
    let (k, s) = (g.k, g.stride);
    let (ho, wo) = g.out_size(h, w);
    assert_eq!(
        (dy.n, dy.c, dy.h, dy.w),
        (n, c_out, ho, wo),
        "gradient shape"
    );
    let wq = (w + g.pad[2] + g.pad[3]).div_ceil(s);
    let wp = s * wq;
    // Rows per plane: the ones kernel row k − 1 reaches, and one of slack for the last
    // pixels' zero columns.
    let rows = ho + (k - 1) / s + 1;
    let plane = rows * wp * ci;
    let pixels = ho * wq;
    let par = if n >= rayon::current_num_threads() {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(0)
    };
    let partials: Vec<(Vec<f32>, Vec<f64>)> = (0..n)
        .into_par_iter()
        .map(|smp| {
            let planes = pad_channels_last(g, x.sample(smp), ci, h, w, wp, rows);
            let dys = dy.sample(smp);
            let mut dyw = vec![0.0f32; c_out * pixels];
            for (src, dst) in dys.chunks_exact(wo).zip(dyw.chunks_exact_mut(wq)) {
                dst[..wo].copy_from_slice(src);
            }
            let mut dw = vec![0.0f32; c_out * ci * k * k];
            let mut gk = vec![0.0f32; c_out * k * ci];
            for ky in 0..k {
                let base = (ky % s) * plane + (ky / s) * wp * ci;
                // gk (c_out × k·c_in) = dy (c_out × pixels) · patches (pixels × k·c_in)
                matmul(
                    c_out,
                    k * ci,
                    pixels,
                    &mut gk,
                    k * ci,
                    false,
                    Strided {
                        data: &dyw,
                        rs: pixels,
                        cs: 1,
                    },
                    Strided {
                        data: &planes[base..],
                        rs: s * ci,
                        cs: 1,
                    },
                    par,
                );
                for (o, row) in gk.chunks_exact(k * ci).enumerate() {
                    for (kx, taps) in row.chunks_exact(ci).enumerate() {
                        for (c, &v) in taps.iter().enumerate() {
                            dw[((o * ci + c) * k + ky) * k + kx] = v;
                        }
                    }
                }
            }
            let db = dys
                .chunks_exact(ho * wo)
                .map(|p| p.iter().map(|&v| v as f64).sum::<f64>())
                .collect();
            (dw, db)
        })
        .collect();
    // Summed in sample order: the same bits for any thread count.
    let mut dw = vec![0.0f32; c_out * ci * k * k];
    let mut db = vec![0.0f64; c_out];
    for (pw, pb) in &partials {
        dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
    }
    (dw, db.into_iter().map(|v| v as f32).collect())
}

/// One sample padded by `g`, channels-last, split by row into `g.stride` planes of `rows`
/// rows of `wp` pixels (zeros past the padded input).
fn pad_channels_last(
    g: &ConvGeom,
    xs: &[f32],
    ci: usize,
    h: usize,
    w: usize,
    wp: usize,
    rows: usize,
) -> Vec<f32> {
    let s = g.stride;
    let (hp, wpad) = (h + g.pad[0] + g.pad[1], w + g.pad[2] + g.pad[3]);
    let (rows_from, cols) = g.padded_sources(h, w, hp, wpad);
    let plane = rows * wp * ci;
    let mut out = vec![0.0f32; s * plane];
    for r in 0..hp.min(s * rows) {
        let sr = rows_from[r];
        if sr < 0 {
            continue;
        }
        let dst = &mut out[(r % s) * plane + (r / s) * wp * ci..][..wpad * ci];
        // Channel by channel along the source row (a write stride of c_in stays within
        // this row, in L1), then the padding columns as copies of whole pixels.
        let (pl, pr) = (g.pad[2], g.pad[3]);
        let inner = &mut dst[pl * ci..(pl + w) * ci];
        for c in 0..ci {
            let src = &xs[c * h * w + sr as usize * w..][..w];
            for (px, &v) in inner.chunks_exact_mut(ci).zip(src) {
                px[c] = v;
            }
        }
        for q in (0..pl).chain(pl + w..pl + w + pr) {
            let sc = cols[q];
            if sc >= 0 {
                let from = (pl + sc as usize) * ci;
                dst.copy_within(from..from + ci, q * ci);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::Conv2d;
    use crate::kernels::geom::PadMode;
    use crate::kernels::test_values as values;

    /// Against im2col + GEMM, for strides 1 to 3, every padding mode, uneven padding,
    /// widths that do and do not divide by the stride, and the networks' 9×9 layers.
    #[test]
    fn matches_the_patch_matrix_gradient() {
        let cases = [
            (3, 2, 4, 3, 2, [1, 1, 1, 1], PadMode::Reflect, 9, 10),
            (2, 3, 5, 9, 1, [4, 4, 4, 4], PadMode::Reflect, 12, 11),
            (1, 3, 6, 9, 1, [4, 4, 4, 4], PadMode::Zero, 9, 9),
            (2, 4, 3, 3, 2, [1, 0, 2, 1], PadMode::Replicate, 7, 8),
            (1, 2, 2, 5, 3, [2, 2, 2, 2], PadMode::Zero, 11, 13),
            (2, 5, 7, 1, 1, [0, 0, 0, 0], PadMode::Zero, 4, 5),
            (2, 32, 3, 9, 1, [4, 4, 4, 4], PadMode::Reflect, 10, 19),
        ];
        for (i, &(n, ci, co, k, stride, pad, mode, h, w)) in cases.iter().enumerate() {
            let g = ConvGeom {
                pad,
                ..ConvGeom::simple(k, stride, 0, mode)
            };
            let seed = 10 * i as u64;
            let x = Tensor::from_vec(n, ci, h, w, values(n * ci * h * w, seed));
            let conv = Conv2d::new(co, ci, k, values(co * ci * k * k, seed + 1), None);
            let (ho, wo) = g.out_size(h, w);
            let dy = Tensor::from_vec(n, co, ho, wo, values(n * co * ho * wo, seed + 2));
            let want = conv.backward_col2im(&g, &x, &dy, false);
            let (dw, db) = weight_grad(&g, co, &x, &dy);
            let e = crate::tensor::rel_error(&dw, &want.dw);
            assert!(e < 1e-5, "case {i}: dw off by {e}");
            assert!(
                crate::tensor::rel_error(&db, &want.db) < 1e-6,
                "case {i}: db"
            );
        }
    }
}
