//! The weight gradient of a wide stride-1 convolution with few output channels (the
//! transformer's final 9×9 conv, 32 → 3), computed directly: dW[o][c][ky][kx] = Σ dy[o]·x[c]
//! shifted by the tap. Through im2col the patch matrix would hold c_in·81 rows per pixel for
//! three output rows of GEMM (2.7 GB written per 256² step at batch 4); here each padded
//! input row stays in L1 while every output channel and tap reads it.
//!
//! The sums are the same on every CPU: each row's dot product runs in 16 fixed lanes of
//! plain multiplies and adds (no fused multiply-add, whatever the ISA), summed in a fixed
//! order into float64, and one task owns each input channel.

use crate::kernels::geom::{pad_source, ConvGeom};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Output channels up to which [`weight_grad`] beats im2col + GEMM.
pub const MAX_OUT: usize = 4;

/// Does the direct weight gradient apply to this geometry?
pub fn applicable(c_out: usize, g: &ConvGeom) -> bool {
    g.stride == 1 && g.upsample == 1 && g.dilate == 1 && g.k >= 5 && c_out <= MAX_OUT
}

const LANES: usize = 16;

/// `Σ a·b` over equal-length slices in 16 fixed lanes, the lanes summed in order.
fn dot(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0.0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    for (l, (x, y)) in ar.iter().zip(br).enumerate() {
        acc[l] += x * y;
    }
    acc.iter().map(|&v| v as f64).sum()
}

/// d/dW (`[c_out][c_in·k·k]`) and d/db of a stride-1 convolution of `x` (`c_in` channels)
/// given `dy` (`c_out` channels).
pub fn weight_grad(g: &ConvGeom, x: &Tensor, dy: &Tensor) -> (Vec<f32>, Vec<f32>) {
    let (ci, co, k) = (x.c, dy.c, g.k);
    let (h, w) = (x.h, x.w);
    let (ho, wo) = g.out_size(h, w);
    assert_eq!((dy.n, dy.h, dy.w), (x.n, ho, wo), "gradient shape");
    let (hp, wp) = (ho + k - 1, wo + k - 1);
    let rows: Vec<isize> = (0..hp)
        .map(|p| pad_source(p as isize - g.pad[0] as isize, h, g.mode))
        .collect();
    let cols: Vec<isize> = (0..wp)
        .map(|p| pad_source(p as isize - g.pad[2] as isize, w, g.mode))
        .collect();
    // One task per input channel: its k·k taps for every output channel.
    let per_channel: Vec<Vec<f64>> = (0..ci)
        .into_par_iter()
        .map(|c| {
            let mut acc = vec![0.0f64; co * k * k];
            let mut xp = vec![0.0f32; hp * wp];
            for s in 0..x.n {
                let plane = &x.sample(s)[c * h * w..(c + 1) * h * w];
                for (r, &sy) in rows.iter().enumerate() {
                    let row = &mut xp[r * wp..(r + 1) * wp];
                    if sy < 0 {
                        row.fill(0.0);
                        continue;
                    }
                    let src = &plane[sy as usize * w..(sy as usize + 1) * w];
                    for (d, &sx) in row.iter_mut().zip(&cols) {
                        *d = if sx < 0 { 0.0 } else { src[sx as usize] };
                    }
                }
                let dys = dy.sample(s);
                for o in 0..co {
                    let dyo = &dys[o * ho * wo..(o + 1) * ho * wo];
                    for y in 0..ho {
                        let dr = &dyo[y * wo..(y + 1) * wo];
                        for ky in 0..k {
                            let xr = &xp[(y + ky) * wp..(y + ky + 1) * wp];
                            for kx in 0..k {
                                acc[(o * k + ky) * k + kx] += dot(dr, &xr[kx..kx + wo]);
                            }
                        }
                    }
                }
            }
            acc
        })
        .collect();
    let mut dw = vec![0.0f32; co * ci * k * k];
    for (c, acc) in per_channel.iter().enumerate() {
        for o in 0..co {
            for t in 0..k * k {
                dw[(o * ci + c) * k * k + t] = acc[o * k * k + t] as f32;
            }
        }
    }
    let db = (0..co)
        .map(|o| {
            (0..x.n)
                .map(|s| {
                    dy.sample(s)[o * ho * wo..(o + 1) * ho * wo]
                        .iter()
                        .map(|&v| v as f64)
                        .sum::<f64>()
                })
                .sum::<f64>() as f32
        })
        .collect();
    (dw, db)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::Conv2d;
    use crate::kernels::geom::PadMode;

    #[test]
    fn the_direct_weight_gradient_matches_im2col_for_every_padding() {
        let mut r = crate::rng::Rng::new(31);
        let mut v = |n: usize| (0..n).map(|_| r.f32() - 0.5).collect::<Vec<f32>>();
        for (k, ci, co) in [(9usize, 5usize, 3usize), (5, 3, 1), (9, 2, 4)] {
            for mode in [PadMode::Reflect, PadMode::Zero, PadMode::Replicate] {
                for (h, w) in [(6usize, 7usize), (13, 21), (20, 35)] {
                    let g = ConvGeom::simple(k, 1, k / 2, mode);
                    assert!(applicable(co, &g));
                    let x = Tensor::from_vec(2, ci, h, w, v(2 * ci * h * w));
                    let conv = Conv2d::new(co, ci, k, v(co * ci * k * k), Some(v(co)));
                    let dy = Tensor::from_vec(2, co, h, w, v(2 * co * h * w));
                    let want = conv.backward_col2im(&g, &x, &dy, false);
                    let (dw, db) = weight_grad(&g, &x, &dy);
                    let e = crate::tensor::rel_error(&dw, &want.dw);
                    assert!(e < 1e-6, "k{k} {mode:?} {h}x{w}: dW {e:.1e}");
                    let e = crate::tensor::rel_error(&db, &want.db);
                    assert!(e < 1e-6, "k{k} {mode:?} {h}x{w}: db {e:.1e}");
                }
            }
        }
    }
}
