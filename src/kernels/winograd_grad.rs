//! The weight gradient of a stride-1, pad-1 3×3 convolution by Winograd F(3×3, 4×4): the
//! residual blocks' `dW[o][c] = Σ dy[o] ⋆ x[c]` is a correlation of the input with 4×4 tiles
//! of the output gradient, 36 multiplies per tile and channel pair instead of 144.
//!
//! For every 4×4 tile of `dy` and its 6×6 input tile of padded `x` (the same tiles the
//! forward pass reads): `V = Bᵀ x B` (the forward's input transform) and `U = G dy Gᵀ`;
//! over all tiles of the batch, 36 GEMMs sum `M[e] (c_out × c_in) = Σ U[e] Vᵀ[e]`; then
//! `dW = Aᵀ M A` per channel pair, in float64. F(3, 4) interpolates at the points of the
//! forward's F(4, 3) (0, ±1, ±2, ∞), so `B` is the forward's; `G` here is scaled by 24 to
//! integers (exact in float32) and the 24² comes off in the float64 output transform.
//!
//! The tiles are taken in chunks of a fixed size, and every GEMM runs on one thread: the
//! result does not depend on the thread count, so training stays bit-for-bit reproducible.

use crate::kernels::direct::Isa;
use crate::kernels::geom::{ConvGeom, SendPtr};
use crate::kernels::winograd::{
    by_width, input_transform, load_elem, padded_batch, store_lanes, to_phases, Tiles,
};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Tiles per chunk: the GEMMs' inner dimension (and 2 × 36 × c × CHUNK floats of buffers).
const CHUNK: usize = 512;

/// Does this layer's weight gradient fit F(3×3, 4×4)? The forward Winograd's geometry and
/// channel counts.
pub fn applicable(c_in: usize, c_out: usize, g: &ConvGeom) -> bool {
    super::winograd::applicable(
        &super::geom::ConvWeights {
            c_in,
            c_out,
            weight: Vec::new(),
            bias: Vec::new(),
        },
        g,
    )
}

/// `(dW, db)` of the layer `y = conv(x)` given `dy`: `dW` as `[c_out][c_in·9]`, summed over
/// the batch.
pub fn weight_grad(g: &ConvGeom, x: &Tensor, dy: &Tensor) -> (Vec<f32>, Vec<f32>) {
    weight_grad_on(g, x, dy, super::direct::isa())
}

/// [`weight_grad`] with the transforms compiled for `isa` (`None`: the baseline build),
/// which must be one this CPU has.
fn weight_grad_on(g: &ConvGeom, x: &Tensor, dy: &Tensor, isa: Option<Isa>) -> (Vec<f32>, Vec<f32>) {
    let (n, ci, co) = (x.n, x.c, dy.c);
    assert_eq!((dy.n, dy.h, dy.w), (n, x.h, x.w), "gradient shape");
    let (xp, geo) = padded_batch(x, g.mode);
    let dyp = tiled_grad(dy, &geo);
    let tiles = n * geo.per_sample;
    // Pooled buffers: each chunk overwrites what it reads, and the first GEMM of each
    // position does not read `m`.
    // Rows of `u` and `v` hold whole groups of 16 lanes (`ntp` floats for a chunk of `nt`
    // tiles): the transforms store whole lanes (see `winograd::load_lanes`).
    let rows = CHUNK.min(tiles).next_multiple_of(16);
    let mut u = crate::tensor::take_buffer(36 * co * rows);
    let mut v = crate::tensor::take_buffer(36 * ci * rows);
    let mut m = crate::tensor::take_buffer(36 * co * ci);
    for (k, t0) in (0..tiles).step_by(CHUNK).enumerate() {
        let nt = CHUNK.min(tiles - t0);
        let ntp = nt.next_multiple_of(16);
        // Transforms, one channel per task: channel c owns rows (e, c) of every position e.
        let (vp, up) = (SendPtr::new(v.as_mut_ptr()), SendPtr::new(u.as_mut_ptr()));
        (0..ci + co).into_par_iter().for_each(|c| {
            // SAFETY: `xp`/`dyp` cover every tile of the batch in every channel; the task of
            // channel c writes only rows (e, c), `ntp` floats each, of `v` (c < ci) or `u`,
            // which hold 36 · channels · ntp floats; no two tasks share a row.
            unsafe {
                if c < ci {
                    let dst = vp.get().add(c * ntp);
                    channel(
                        isa,
                        Side::Input,
                        &xp[c * geo.plane..],
                        &geo,
                        ci,
                        t0,
                        nt,
                        dst,
                        ci * ntp,
                    );
                } else {
                    let c = c - ci;
                    let dst = up.get().add(c * ntp);
                    let plane = &dyp.data[c * geo.plane..];
                    channel(isa, Side::Grad, plane, &geo, co, t0, nt, dst, co * ntp);
                }
            }
        });
        // M[e] (co × ci) += U[e] (co × nt) · V[e]ᵀ (nt × ci), each on one thread.
        m.par_chunks_mut(co * ci).enumerate().for_each(|(e, me)| {
            super::matmul(
                co,
                ci,
                nt,
                me,
                ci,
                k > 0,
                super::Strided {
                    data: &u[e * co * ntp..],
                    rs: ntp,
                    cs: 1,
                },
                super::Strided {
                    data: &v[e * ci * ntp..],
                    rs: 1,
                    cs: ntp,
                },
                gemm::Parallelism::None,
            );
        });
    }
    crate::tensor::recycle(xp);
    crate::tensor::recycle(u);
    crate::tensor::recycle(v);
    drop(dyp);
    let dw = output_transform(&m, co, ci);
    crate::tensor::recycle(m);
    // The bias gradient: each channel's sum over the batch, eight float64 lanes at a time.
    let db = (0..co)
        .into_par_iter()
        .map(|o| {
            let mut acc = [0.0f64; 8];
            for s in 0..n {
                let plane = &dy.sample(s)[o * dy.plane()..][..dy.plane()];
                let mut chunks = plane.chunks_exact(8);
                for ch in &mut chunks {
                    for (a, &v) in acc.iter_mut().zip(ch) {
                        *a += v as f64;
                    }
                }
                for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
                    *a += v as f64;
                }
            }
            acc.iter().sum::<f64>() as f32
        })
        .collect();
    (dw, db)
}

/// `dy`'s planes laid out like the padded input (in phases, tile origins shared), the
/// gradient at rows and columns `0..h × 0..w` and zeros elsewhere: tiles past the edge see
/// a zero gradient.
fn tiled_grad(dy: &Tensor, geo: &Tiles) -> Tensor {
    let (h, w, rw) = (dy.h, dy.w, 4 * geo.wq);
    let mut out = Tensor::zeros(dy.n, dy.c, geo.plane / rw, rw);
    out.data
        .par_chunks_mut(geo.plane)
        .zip(dy.data.par_chunks(h * w))
        .for_each_init(
            || vec![0.0f32; rw],
            |row, (plane, s)| {
                for (drow, srow) in plane.chunks_exact_mut(rw).zip(s.chunks(w)) {
                    row[..w].copy_from_slice(srow);
                    to_phases(row, drow);
                }
            },
        );
    out
}

/// Which transform a channel task runs.
#[derive(Clone, Copy)]
enum Side {
    /// `Bᵀ x B` of the 6×6 input tiles.
    Input,
    /// `G dy Gᵀ` of the 4×4 gradient tiles (`G` scaled by 24).
    Grad,
}

#[allow(clippy::too_many_arguments)]
unsafe fn channel(
    isa: Option<Isa>,
    side: Side,
    plane: &[f32],
    geo: &Tiles,
    c: usize,
    t0: usize,
    nt: usize,
    dst: *mut f32,
    e_stride: usize,
) {
    // SAFETY: the caller upholds this function's contract; a vector build is taken only
    // when the CPU has it.
    unsafe {
        by_width!(
            isa,
            geo.run,
            channel_generic,
            [8 => channel8_avx512, channel8_avx2; 4 => channel4_avx512, channel4_avx2;
             _ => channel16_avx512, channel16_avx2],
            (side, plane, geo, c, t0, nt, dst, e_stride)
        )
    }
}

widths!(channel_generic::<16> => channel16_avx512, channel16_avx2(
    side: Side, plane: &[f32], geo: &Tiles, c: usize, t0: usize, nt: usize, dst: *mut f32,
    e_stride: usize,
));
widths!(channel_generic::<8> => channel8_avx512, channel8_avx2(
    side: Side, plane: &[f32], geo: &Tiles, c: usize, t0: usize, nt: usize, dst: *mut f32,
    e_stride: usize,
));
widths!(channel_generic::<4> => channel4_avx512, channel4_avx2(
    side: Side, plane: &[f32], geo: &Tiles, c: usize, t0: usize, nt: usize, dst: *mut f32,
    e_stride: usize,
));

/// The transformed tiles `t0..t0+nt` of one channel (`plane`: its padded plane of sample 0,
/// of `c` channels per sample): position `e`'s `nt` values at `dst + e·e_stride`, in rows
/// with room for whole groups of 16 lanes.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn channel_generic<const W: usize>(
    side: Side,
    plane: &[f32],
    geo: &Tiles,
    c: usize,
    t0: usize,
    nt: usize,
    dst: *mut f32,
    e_stride: usize,
) {
    // SAFETY: `plane` reaches every tile of every sample (`get_unchecked`); `dst` is valid
    // for 36 rows of `nt` floats (rounded up to 16) `e_stride` apart that no one else
    // touches meanwhile.
    unsafe {
        // The transforms' scratch, cleared once rather than for every group.
        let mut scratch = [[[0.0f32; W]; 6]; 6];
        for g0 in (0..nt).step_by(W) {
            let gl = W.min(nt - g0);
            let off = geo.origins::<W>(t0 + g0, gl, c);
            let load = |i, j| load_elem::<W>(plane, &off, geo, i, j);
            let store = |e: usize, r: &[f32; W]| {
                let row = std::slice::from_raw_parts_mut(dst.add(e * e_stride + g0), W);
                store_lanes(row, r);
            };
            match side {
                Side::Input => input_transform(&mut scratch, load, store),
                Side::Grad => grad_transform(&mut scratch, load, store),
            }
        }
    }
}

/// `G' d G'ᵀ` of `W` 4×4 gradient tiles (columns first, into the first four columns of the
/// scratch `t`), `G' = 24 G` with `G` F(3, 4)'s filter transform:
/// rows `[1, p, p², p³] / Πⱼ(p − pⱼ)` at p = 0, 1, −1, 2, −2 and `[0, 0, 0, 1]` at ∞.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // the transform's indices, as written on paper
fn grad_transform<const W: usize>(
    t: &mut [[[f32; W]; 6]; 6],
    d: impl Fn(usize, usize) -> [f32; W],
    mut out: impl FnMut(usize, &[f32; W]),
) {
    #[inline(always)]
    fn g(d0: f32, d1: f32, d2: f32, d3: f32) -> [f32; 6] {
        let (e, o) = (d0 + d2, d1 + d3);
        let (e4, o4) = (d0 + 4.0 * d2, 2.0 * d1 + 8.0 * d3);
        [
            6.0 * d0,
            -4.0 * (e + o),
            -4.0 * (e - o),
            e4 + o4,
            e4 - o4,
            24.0 * d3,
        ]
    }
    for j in 0..4 {
        let (d0, d1, d2, d3) = (d(0, j), d(1, j), d(2, j), d(3, j));
        for l in 0..W {
            let c = g(d0[l], d1[l], d2[l], d3[l]);
            for i in 0..6 {
                t[i][j][l] = c[i];
            }
        }
    }
    for (i, ti) in t.iter().enumerate() {
        let mut r = [[0.0f32; W]; 6];
        for l in 0..W {
            let c = g(ti[0][l], ti[1][l], ti[2][l], ti[3][l]);
            for j in 0..6 {
                r[j][l] = c[j];
            }
        }
        for (j, rj) in r.iter().enumerate() {
            out(i * 6 + j, rj);
        }
    }
}

/// `dW[o][c] = Aᵀ M[·][o][c] A / 24²` in float64, `Aᵀ` F(3, 4)'s output transform (powers
/// 0–2 of the points; ∞ in the last row): one output channel per task, separable (rows,
/// then columns), each step over all input channels at once.
fn output_transform(m: &[f32], co: usize, ci: usize) -> Vec<f32> {
    const AT: [[f64; 6]; 3] = [
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
        [0.0, 1.0, 1.0, 4.0, 4.0, 1.0],
    ];
    let mut dw = vec![0.0f32; co * ci * 9];
    dw.par_chunks_mut(ci * 9).enumerate().for_each(|(o, row)| {
        let at = |e: usize| &m[(e * co + o) * ci..][..ci];
        // t[ky][j][c] = Σᵢ Aᵀ[ky][i] M[i·6 + j][o][c]
        let mut t = vec![0.0f64; 3 * 6 * ci];
        for (ky, a) in AT.iter().enumerate() {
            for j in 0..6 {
                let tj = &mut t[(ky * 6 + j) * ci..][..ci];
                for (i, &w) in a.iter().enumerate() {
                    if w != 0.0 {
                        for (d, &v) in tj.iter_mut().zip(at(i * 6 + j)) {
                            *d += w * v as f64;
                        }
                    }
                }
            }
        }
        // dW[o][c][ky][kx] = Σⱼ t[ky][j][c] Aᵀ[kx][j] / 576
        let mut k = vec![0.0f64; ci];
        for ky in 0..3 {
            for (kx, a) in AT.iter().enumerate() {
                k.fill(0.0);
                for (j, &w) in a.iter().enumerate() {
                    if w != 0.0 {
                        for (d, &v) in k.iter_mut().zip(&t[(ky * 6 + j) * ci..][..ci]) {
                            *d += w * v;
                        }
                    }
                }
                for (c, &v) in k.iter().enumerate() {
                    row[c * 9 + ky * 3 + kx] = (v / 576.0) as f32;
                }
            }
        }
    });
    dw
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::PadMode;

    fn pseudo(n: usize, seed: u64) -> Vec<f32> {
        let mut r = crate::rng::Rng::new(seed);
        (0..n).map(|_| r.f32() - 0.5).collect()
    }

    /// `Σ dy[o] x[c]` over the padded input, in float64.
    fn naive(g: &ConvGeom, x: &Tensor, dy: &Tensor) -> Vec<f64> {
        use crate::kernels::geom::pad_source;
        let (ci, co, h, w) = (x.c, dy.c, x.h, x.w);
        let mut dw = vec![0.0f64; co * ci * 9];
        for s in 0..x.n {
            for o in 0..co {
                for c in 0..ci {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let mut acc = 0.0f64;
                            for oy in 0..h {
                                let sy = pad_source(oy as isize + ky as isize - 1, h, g.mode);
                                if sy < 0 {
                                    continue;
                                }
                                for ox in 0..w {
                                    let sx = pad_source(ox as isize + kx as isize - 1, w, g.mode);
                                    if sx < 0 {
                                        continue;
                                    }
                                    acc += dy.sample(s)[(o * h + oy) * w + ox] as f64
                                        * x.sample(s)[(c * h + sy as usize) * w + sx as usize]
                                            as f64;
                                }
                            }
                            dw[(o * ci + c) * 9 + ky * 3 + kx] += acc;
                        }
                    }
                }
            }
        }
        dw
    }

    /// Against the float64 sums, for every padding, sizes that are not multiples of the
    /// tile, batches whose tiles cross chunks, and more input than output channels.
    #[test]
    fn weight_gradient_matches_the_direct_sums() {
        for (n, ci, co, h, w, mode) in [
            (2, 16, 16, 13, 22, PadMode::Reflect),
            (1, 24, 16, 8, 8, PadMode::Zero),
            (3, 16, 20, 33, 29, PadMode::Replicate),
            (4, 16, 16, 48, 48, PadMode::Reflect),
            (2, 16, 16, 9, 62, PadMode::Zero),
        ] {
            let g = ConvGeom::simple(3, 1, 1, mode);
            let x = Tensor::from_vec(n, ci, h, w, pseudo(n * ci * h * w, 1));
            let dy = Tensor::from_vec(n, co, h, w, pseudo(n * co * h * w, 2));
            assert!(applicable(ci, co, &g));
            let (dw, db) = weight_grad(&g, &x, &dy);
            let want = naive(&g, &x, &dy);
            let scale = want.iter().fold(0.0f64, |a, v| a.max(v.abs()));
            let err = dw
                .iter()
                .zip(&want)
                .fold(0.0f64, |a, (&got, &w)| a.max((got as f64 - w).abs()));
            assert!(
                err <= 2e-5 * scale,
                "{n}×{ci}→{co} {h}×{w} {mode:?}: max error {err:e} of {scale:e}"
            );
            for (o, &b) in db.iter().enumerate() {
                let want: f64 = (0..n)
                    .map(|s| {
                        dy.sample(s)[o * h * w..][..h * w]
                            .iter()
                            .map(|&v| v as f64)
                            .sum::<f64>()
                    })
                    .sum();
                assert!((b as f64 - want).abs() <= 1e-5 * want.abs().max(1.0));
            }
        }
    }

    /// The transforms compiled for AVX-512, AVX2 and the baseline give the same bits, with
    /// lanes gathered one by one (22 wide: rows of 6 tiles) and loaded as runs of 4, 8 and 16
    /// tiles (16, 32 and 64 wide).
    #[test]
    fn every_vector_width_gives_the_same_bits() {
        for w in [22, 16, 32, 64] {
            every_vector_width_gives_the_same_bits_at(w);
        }
    }

    fn every_vector_width_gives_the_same_bits_at(w: usize) {
        let (n, ci, co, h) = (2, 16, 16, 19);
        let g = ConvGeom::simple(3, 1, 1, PadMode::Reflect);
        let x = Tensor::from_vec(n, ci, h, w, pseudo(n * ci * h * w, 3));
        let dy = Tensor::from_vec(n, co, h, w, pseudo(n * co * h * w, 4));
        let bits = |v: Vec<f32>| v.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
        let base = bits(weight_grad_on(&g, &x, &dy, None).0);
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                assert_eq!(bits(weight_grad_on(&g, &x, &dy, Some(Isa::Avx2)).0), base);
            }
            if std::is_x86_feature_detected!("avx512f") {
                assert_eq!(bits(weight_grad_on(&g, &x, &dy, Some(Isa::Avx512)).0), base);
            }
        }
    }
}
