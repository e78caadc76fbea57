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
