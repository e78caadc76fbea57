//! The exact forward pass of a wide stride-1 convolution with few output channels (the
//! transformer's final 9×9 conv, 32 → 3). Through im2col the patch matrix holds
//! `c_in·k·k` rows (2,592) for a GEMM of three output rows; here each output row is
//! computed directly from the once-padded input, a block of 64 pixels × every output
//! channel held in vector registers while the taps stream through.
//!
//! Exact, as training needs it: each input channel's `k·k` taps are summed in float32
//! (plain multiplies and adds, no fused multiply-add, in a fixed order), the channels' partial
//! sums in float64 — finer than the GEMM's long float32 runs — and the one body is compiled
//! for AVX-512, AVX2 and the baseline, so every machine gets the same bits.

use crate::kernels::geom::{pad_plane, ConvGeom, ConvWeights};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Output channels up to which [`forward`] is used.
pub const MAX_OUT: usize = 4;
const LANES: usize = 16;
/// Vectors of pixels per block.
const VECS: usize = 4;

/// Does the direct exact forward apply to this layer?
pub fn applicable(conv: &ConvWeights, g: &ConvGeom) -> bool {
    g.stride == 1 && g.upsample == 1 && g.dilate == 1 && g.k >= 5 && conv.c_out <= MAX_OUT
}

/// Every sample's input planes with the padding written out: `[n][c][hp][wp]`, `hp = ho+k-1`.
pub(super) fn pad_planes(g: &ConvGeom, x: &Tensor) -> (Vec<f32>, usize, usize) {
    let (h, w) = (x.h, x.w);
    let (ho, wo) = g.out_size(h, w);
    let (hp, wp) = (ho + g.k - 1, wo + g.k - 1);
    let (rows, cols) = g.padded_sources(h, w, hp, wp);
    let mut xp = crate::tensor::take_buffer(x.n * x.c * hp * wp);
    xp.par_chunks_mut(hp * wp)
        .zip(x.data.par_chunks(h * w))
        .for_each(|(dst, plane)| pad_plane(plane, w, &rows, &cols, dst));
    (xp, hp, wp)
}

/// One output row `y` of `CO` channels: `out[o][x] = bias[o] + Σ_c (Σ_taps w·x)`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn row<const CO: usize>(
    conv: &ConvWeights,
    k: usize,
    xs: &[f32],
    hp: usize,
    wp: usize,
    y: usize,
    wo: usize,
    acc64: &mut [f64],
) {
    let ci = conv.c_in;
    let kk = k * k;
    acc64.fill(0.0);
    for c in 0..ci {
        let plane = &xs[c * hp * wp..(c + 1) * hp * wp];
        let wc: [&[f32]; CO] = std::array::from_fn(|o| &conv.weight[(o * ci + c) * kk..][..kk]);
        // Whole blocks of VECS·LANES pixels: the accumulators stay in registers (every
        // index below is a constant once the loops over v, o and l unroll).
        let mut x0 = 0;
        while x0 + VECS * LANES <= wo {
            let mut acc = [[[0.0f32; LANES]; VECS]; CO];
            for ky in 0..k {
                let r = &plane[(y + ky) * wp + x0..(y + ky + 1) * wp];
                for kx in 0..k {
                    let wt: [f32; CO] = std::array::from_fn(|o| wc[o][ky * k + kx]);
                    for v in 0..VECS {
                        let xv: &[f32; LANES] =
                            r[kx + v * LANES..][..LANES].try_into().expect("lanes");
                        for o in 0..CO {
                            for l in 0..LANES {
                                acc[o][v][l] += wt[o] * xv[l];
                            }
                        }
                    }
                }
            }
            for o in 0..CO {
                let dst = &mut acc64[o * wo + x0..][..VECS * LANES];
                for v in 0..VECS {
                    for l in 0..LANES {
                        dst[v * LANES + l] += acc[o][v][l] as f64;
                    }
                }
            }
            x0 += VECS * LANES;
        }
        // The rest of the row, pixel by pixel in the same order of taps.
        for x in x0..wo {
            let mut acc = [0.0f32; CO];
            for ky in 0..k {
                let r = &plane[(y + ky) * wp + x..];
                for kx in 0..k {
                    for o in 0..CO {
                        acc[o] += wc[o][ky * k + kx] * r[kx];
                    }
                }
            }
            for o in 0..CO {
                acc64[o * wo + x] += acc[o] as f64;
            }
        }
    }
}

widths!(row::<1> => row1_avx512, row1_avx2(c: &ConvWeights, k: usize, xs: &[f32], hp: usize, wp: usize, y: usize, wo: usize, acc: &mut [f64]));
widths!(row::<2> => row2_avx512, row2_avx2(c: &ConvWeights, k: usize, xs: &[f32], hp: usize, wp: usize, y: usize, wo: usize, acc: &mut [f64]));
widths!(row::<3> => row3_avx512, row3_avx2(c: &ConvWeights, k: usize, xs: &[f32], hp: usize, wp: usize, y: usize, wo: usize, acc: &mut [f64]));
widths!(row::<4> => row4_avx512, row4_avx2(c: &ConvWeights, k: usize, xs: &[f32], hp: usize, wp: usize, y: usize, wo: usize, acc: &mut [f64]));

type RowFn = fn(&ConvWeights, usize, &[f32], usize, usize, usize, usize, &mut [f64]);

/// [`row`] for `co` output channels, compiled for `isa` (`None`: the baseline), which must
/// be one this CPU has.
fn row_fn(co: usize, isa: Option<super::direct::Isa>) -> RowFn {
    use super::direct::Isa;
    let base: [RowFn; MAX_OUT] = [row::<1>, row::<2>, row::<3>, row::<4>];
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY (of calling these): `isa` is one this CPU has (`direct::isa()`, or a test
        // that checked the feature).
        let wide: Option<[RowFn; MAX_OUT]> = match isa {
            Some(Isa::Avx512) => Some([
                |a, b, c, d, e, f, g, h| unsafe { row1_avx512(a, b, c, d, e, f, g, h) },
                |a, b, c, d, e, f, g, h| unsafe { row2_avx512(a, b, c, d, e, f, g, h) },
                |a, b, c, d, e, f, g, h| unsafe { row3_avx512(a, b, c, d, e, f, g, h) },
                |a, b, c, d, e, f, g, h| unsafe { row4_avx512(a, b, c, d, e, f, g, h) },
            ]),
            Some(Isa::Avx2) => Some([
                |a, b, c, d, e, f, g, h| unsafe { row1_avx2(a, b, c, d, e, f, g, h) },
                |a, b, c, d, e, f, g, h| unsafe { row2_avx2(a, b, c, d, e, f, g, h) },
                |a, b, c, d, e, f, g, h| unsafe { row3_avx2(a, b, c, d, e, f, g, h) },
                |a, b, c, d, e, f, g, h| unsafe { row4_avx2(a, b, c, d, e, f, g, h) },
            ]),
            None => None,
        };
        if let Some(w) = wide {
            return w[co - 1];
        }
    }
    let _ = isa;
    base[co - 1]
}

/// The layer's output for `x` (see the module's notes on its sums).
pub fn forward(conv: &ConvWeights, g: &ConvGeom, x: &Tensor) -> Tensor {
    forward_on(conv, g, x, super::direct::isa())
}

/// [`forward`] on the body built for `isa` (`None`: the baseline), which must be one this
/// CPU has (the tests pass only what they checked).
fn forward_on(
    conv: &ConvWeights,
    g: &ConvGeom,
    x: &Tensor,
    isa: Option<super::direct::Isa>,
) -> Tensor {
    assert!(applicable(conv, g) && x.c == conv.c_in);
    let (co, k) = (conv.c_out, g.k);
    let (ho, wo) = g.out_size(x.h, x.w);
    let (xp, hp, wp) = pad_planes(g, x);
    let f = row_fn(co, isa);
    let mut out = Tensor::for_overwrite(x.n, co, ho, wo);
    let plane = ho * wo;
    // One task per (sample, output row); each writes its row of every output channel.
    let rows: Vec<Vec<f32>> = (0..x.n * ho)
        .into_par_iter()
        .map_init(
            || vec![0.0f64; co * wo],
            |acc64, t| {
                let (s, y) = (t / ho, t % ho);
                let xs = &xp[s * conv.c_in * hp * wp..(s + 1) * conv.c_in * hp * wp];
                f(conv, k, xs, hp, wp, y, wo, acc64);
                (0..co)
                    .flat_map(|o| {
                        let b = conv.bias[o] as f64;
                        acc64[o * wo..(o + 1) * wo]
                            .iter()
                            .map(move |&v| (v + b) as f32)
                    })
                    .collect()
            },
        )
        .collect();
    for (t, r) in rows.iter().enumerate() {
        let (s, y) = (t / ho, t % ho);
        for o in 0..co {
            out.sample_mut(s)[o * plane + y * wo..][..wo].copy_from_slice(&r[o * wo..][..wo]);
        }
    }
    crate::tensor::recycle(xp);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::Conv2d;
    use crate::kernels::geom::PadMode;

    fn case(
        r: &mut crate::rng::Rng,
        n: usize,
        k: usize,
        ci: usize,
        co: usize,
        h: usize,
        w: usize,
    ) -> (Conv2d, Tensor) {
        let mut v = |m: usize| (0..m).map(|_| r.f32() - 0.5).collect::<Vec<f32>>();
        let conv = Conv2d::new(co, ci, k, v(co * ci * k * k), Some(v(co)));
        let x = Tensor::from_vec(n, ci, h, w, v(n * ci * h * w));
        (conv, x)
    }

    /// Against the float64 reference convolution, for every padding, odd sizes (partial
    /// pixel blocks) and one to four output channels.
    #[test]
    fn the_direct_exact_forward_matches_the_reference() {
        let mut r = crate::rng::Rng::new(11);
        for (k, ci, co) in [(9usize, 5usize, 3usize), (5, 3, 1), (9, 2, 4), (7, 4, 2)] {
            for mode in [PadMode::Reflect, PadMode::Zero, PadMode::Replicate] {
                for (h, w) in [(6usize, 7usize), (13, 21), (20, 70)] {
                    let g = ConvGeom::simple(k, 1, k / 2, mode);
                    let (conv, x) = case(&mut r, 2, k, ci, co, h, w);
                    assert!(applicable(&conv, &g));
                    let want = crate::kernels::conv::tests::naive(&conv, &g, &x);
                    let e = forward(&conv, &g, &x).rel_error(&want);
                    assert!(e < 1e-6, "k{k} {ci}->{co} {mode:?} {h}x{w}: {e:.1e}");
                }
            }
        }
    }

    /// The one body compiled for each vector width gives the same bits.
    #[test]
    fn every_vector_width_gives_the_same_bits() {
        use crate::kernels::direct::Isa;
        let mut r = crate::rng::Rng::new(12);
        let g = ConvGeom::simple(9, 1, 4, PadMode::Reflect);
        let (conv, x) = case(&mut r, 2, 9, 6, 3, 19, 75);
        let bits = |t: Tensor| t.data.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
        let base = bits(forward_on(&conv, &g, &x, None));
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                assert_eq!(bits(forward_on(&conv, &g, &x, Some(Isa::Avx2))), base);
            }
            if std::is_x86_feature_detected!("avx512f") {
                assert_eq!(bits(forward_on(&conv, &g, &x, Some(Isa::Avx512))), base);
            }
        }
        let _ = Isa::Avx2;
    }
}
