//! 2×2 stride-2 max pooling (VGG).
use crate::tensor::Tensor;
use rayon::prelude::*;

pub fn max_pool2(x: &Tensor) -> Tensor {
    let (ho, wo) = (x.h / 2, x.w / 2);
    let mut out = Tensor::for_overwrite(x.n, x.c, ho, wo);
    let (h, w) = (x.h, x.w);
    out.data
        .par_chunks_mut(ho * wo)
        .zip(x.data.par_chunks(h * w))
        .for_each(|(o, p)| {
            for y in 0..ho {
                for xx in 0..wo {
                    let a = p[2 * y * w + 2 * xx];
                    let b = p[2 * y * w + 2 * xx + 1];
                    let c = p[(2 * y + 1) * w + 2 * xx];
                    let d = p[(2 * y + 1) * w + 2 * xx + 1];
                    o[y * wo + xx] = a.max(b).max(c.max(d));
                }
            }
        });
    out
}

/// Backward of [`max_pool2`]: each gradient goes to the first maximum of its window. Every
/// element is written once (the windows tile the plane; an odd last row or column gets
/// zeros), so nothing is cleared first.
pub fn max_pool2_backward(x: &Tensor, dy: &Tensor) -> Tensor {
    let (h, w, ho, wo) = (x.h, x.w, dy.h, dy.w);
    let mut dx = Tensor::for_overwrite(x.n, x.c, h, w);
    dx.data
        .par_chunks_mut(h * w)
        .zip(x.data.par_chunks(h * w))
        .zip(dy.data.par_chunks(ho * wo))
        .for_each(|((d, p), g)| {
            for y in 0..ho {
                let (top, bottom) = d[2 * y * w..(2 * y + 2) * w].split_at_mut(w);
                let (pt, pb) = (&p[2 * y * w..][..w], &p[(2 * y + 1) * w..][..w]);
                let gr = &g[y * wo..(y + 1) * wo];
                for (xx, &v) in gr.iter().enumerate() {
                    let (i, j) = (2 * xx, 2 * xx + 1);
                    let (a, b, c, e) = (pt[i], pt[j], pb[i], pb[j]);
                    // The first maximum in the order a, b, c, e (strictly greater wins).
                    let mut best = 0;
                    let mut m = a;
                    if b > m {
                        best = 1;
                        m = b;
                    }
                    if c > m {
                        best = 2;
                        m = c;
                    }
                    if e > m {
                        best = 3;
                    }
                    top[i] = if best == 0 { v } else { 0.0 };
                    top[j] = if best == 1 { v } else { 0.0 };
                    bottom[i] = if best == 2 { v } else { 0.0 };
                    bottom[j] = if best == 3 { v } else { 0.0 };
                }
                for r in [&mut *top, &mut *bottom] {
                    r[2 * wo..].fill(0.0);
                }
            }
            d[2 * ho * w..].fill(0.0);
        });
    dx
}
