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

/// Backward of [`max_pool2`]: each gradient goes to the first maximum of its window.
pub fn max_pool2_backward(x: &Tensor, dy: &Tensor) -> Tensor {
    let (h, w, ho, wo) = (x.h, x.w, dy.h, dy.w);
    let mut dx = Tensor::zeros(x.n, x.c, h, w);
    dx.data
        .par_chunks_mut(h * w)
        .zip(x.data.par_chunks(h * w))
        .zip(dy.data.par_chunks(ho * wo))
        .for_each(|((d, p), g)| {
            for y in 0..ho {
                for xx in 0..wo {
                    let idx = [
                        2 * y * w + 2 * xx,
                        2 * y * w + 2 * xx + 1,
                        (2 * y + 1) * w + 2 * xx,
                        (2 * y + 1) * w + 2 * xx + 1,
                    ];
                    let mut best = idx[0];
                    for &i in &idx[1..] {
                        if p[i] > p[best] {
                            best = i;
                        }
                    }
                    d[best] += g[y * wo + xx];
                }
            }
        });
    dx
}
