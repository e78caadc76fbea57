//! Winograd F(4×4, 3×3) for the stride-1, pad-1 3×3 convolutions that hold most of the work
//! (the residual blocks; VGG16). Each 4×4 output tile costs 36 multiplies per channel pair
//! instead of 144 (4× fewer), at the price of cheap linear transforms (Lavin & Gray 2016).
//!
//! Work is cut into blocks of `tb` tiles; per block the input transform fills
//! `U[36][c_in][tb]`, 36 GEMMs (`gemm` crate) give `M[36][c_out][tb]`, and the output
//! transform writes the 4×4 tiles. Blocks run in parallel with thread-local buffers. Transforms run 16 tiles at a time as plain lane loops that the compiler
//! vectorises (AVX-512 where present).

use crate::kernels::direct::Isa;
use crate::kernels::geom::{pad_plane, pad_source, ConvGeom, ConvWeights, PadMode, SendPtr};
use crate::tensor::Tensor;
use rayon::prelude::*;
use std::cell::RefCell;

/// Tiles per block, at most.
const TB: usize = 64;
/// `c_in · c_out` from which a layer counts as having large weights (see [`block_tiles`]).
const WIDE: usize = 256 * 256;
pub(super) const L: usize = 16;

#[derive(Clone, Debug)]
pub struct Winograd {
    c_in: usize,
    c_out: usize,
    /// Transformed weights `[36][c_out][c_in]`.
    v: Vec<f32>,
    bias: Vec<f32>,
}

/// Does this geometry fit F(4×4,3×3)?
pub fn applicable(conv: &ConvWeights, g: &ConvGeom) -> bool {
    g.k == 3
        && g.stride == 1
        && g.pad == [1; 4]
        && g.upsample == 1
        && g.dilate == 1
        && conv.c_in >= 16
        && conv.c_out >= 16
        && enabled()
}

/// `IMPASTO_NO_WINOGRAD` turns Winograd off (for comparisons); read once, not per layer.
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("IMPASTO_NO_WINOGRAD").is_none())
}

impl Winograd {
    pub fn new(conv: &ConvWeights) -> Self {
        const G: [[f64; 3]; 6] = [
            [0.25, 0.0, 0.0],
            [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
            [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
            [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
            [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
            [0.0, 0.0, 1.0],
        ];
        let (ci, co) = (conv.c_in, conv.c_out);
        // G g Gᵀ for each output channel in parallel (the training pass transforms the
        // residual blocks' kernels anew every step), written straight into the
        // [36][co][ci] layout. The input channels run in lanes (f64, which vectorises),
        // each element's products summed in the order `k = 0, 1, 2`.
        let mut v = vec![0.0f32; 36 * co * ci];
        let vp = SendPtr::new(v.as_mut_ptr());
        (0..co).into_par_iter().for_each_init(
            || vec![0.0f64; 27 * ci],
            |buf, o| {
                // g[k][j] and t[i][j] = Σ_k G[i][k]·g[k][j], each a row of ci lanes.
                let (g, t) = buf.split_at_mut(9 * ci);
                for c in 0..ci {
                    for (k, &wk) in conv.weight[(o * ci + c) * 9..][..9].iter().enumerate() {
                        g[k * ci + c] = wk as f64;
                    }
                }
                for i in 0..6 {
                    for j in 0..3 {
                        let (g0, g1, g2) =
                            (lanes(g, ci, j), lanes(g, ci, 3 + j), lanes(g, ci, 6 + j));
                        let ti = &mut t[(i * 3 + j) * ci..][..ci];
                        for c in 0..ci {
                            ti[c] = G[i][0] * g0[c] + G[i][1] * g1[c] + G[i][2] * g2[c];
                        }
                    }
                }
                for i in 0..6 {
                    let (t0, t1, t2) = (
                        lanes(t, ci, i * 3),
                        lanes(t, ci, i * 3 + 1),
                        lanes(t, ci, i * 3 + 2),
                    );
                    for (j, gj) in G.iter().enumerate() {
                        // SAFETY: row (i·6 + j, o) of `v` lies inside it and only this task
                        // (output channel o) writes it.
                        let out = unsafe {
                            std::slice::from_raw_parts_mut(
                                vp.get().add(((i * 6 + j) * co + o) * ci),
                                ci,
                            )
                        };
                        for c in 0..ci {
                            out[c] = (t0[c] * gj[0] + t1[c] * gj[1] + t2[c] * gj[2]) as f32;
                        }
                    }
                }
            },
        );
        Winograd {
            c_in: ci,
            c_out: co,
            v,
            bias: conv.bias.clone(),
        }
    }

    pub fn forward(&self, x: &Tensor, mode: PadMode) -> Tensor {
        self.forward_on(x, mode, super::direct::isa())
    }

    /// [`Self::forward`] on the transforms compiled for `isa` (`None`: the baseline build),
    /// which must be one this CPU has.
    fn forward_on(&self, x: &Tensor, mode: PadMode, isa: Option<Isa>) -> Tensor {
        assert_eq!(x.c, self.c_in);
        let (n, h, w) = (x.n, x.h, x.w);
        let mut out = Tensor::for_overwrite(n, self.c_out, h, w);
        let (ci, co) = (self.c_in, self.c_out);
        let (xp, geo) = padded_batch(x, mode);
        let tiles = n * geo.per_sample;
        let tb = block_tiles(tiles, ci * co, rayon::current_num_threads());
        let blocks = tiles.div_ceil(tb);
        let optr = SendPtr::new(out.data.as_mut_ptr());
        (0..blocks).into_par_iter().for_each(|b| {
            BUFS.with(|bufs| {
                let mut bufs = bufs.borrow_mut();
                let (u, m) = &mut *bufs;
                // Grown, never cut: layers of different sizes alternate.
                if u.len() < 36 * ci * tb {
                    u.resize(36 * ci * tb, 0.0);
                }
                if m.len() < 36 * co * tb {
                    m.resize(36 * co * tb, 0.0);
                }
                let t0 = b * tb;
                let nt = tb.min(tiles - t0);
                // SAFETY: tiles of different blocks write disjoint output pixels.
                unsafe {
                    block(isa, self, &xp, &geo, t0, nt, tb, u, m, optr.get());
                }
            });
        });
        crate::tensor::recycle(xp);
        out
    }
}

/// Row `r` of `n` lanes.
fn lanes(a: &[f64], n: usize, r: usize) -> &[f64] {
    &a[r * n..(r + 1) * n]
}

/// Tiles per block for `tiles` tiles of a layer with `c_in · c_out = weights`, up to [`TB`]:
/// blocks small enough that every thread gets two (a 32×32 plane is 64 tiles: one block per
/// sample would leave cores idle). Every block streams all 36 transformed weight matrices
/// through its GEMMs, 38 MB for VGG's 512-channel layers, so a layer with large weights
/// takes one block per thread instead: on 16×16 planes (128² crops, 64 tiles in a batch of
/// 4) four blocks of 16 tiles spent more time packing weights than multiplying, on the
/// GEMM's narrowest kernel (14 → 9.5 ms a layer). Larger blocks than [`TB`] measured no
/// faster on larger planes.
fn block_tiles(tiles: usize, weights: usize, threads: usize) -> usize {
    let per = if weights >= WIDE {
        threads
    } else {
        2 * threads
    };
    tiles.div_ceil(per).next_multiple_of(L).clamp(L, TB)
}

/// Where a block's tiles are: tile `t` of the batch is tile `t % per_sample` of sample
/// `t / per_sample`, in rows of `tw` tiles; padded planes of `hp_wp` floats, `wp` wide.
#[derive(Clone, Copy)]
pub(super) struct Tiles {
    pub(super) wp: usize,
    pub(super) hp_wp: usize,
    pub(super) tw: usize,
    pub(super) per_sample: usize,
    pub(super) h: usize,
    pub(super) w: usize,
}

impl Tiles {
    /// Where tile `t` of the batch starts in the padded planes of channel 0 (of `c`).
    #[inline(always)]
    pub(super) fn origin(&self, t: usize, c: usize) -> usize {
        let (s, r) = (t / self.per_sample, t % self.per_sample);
        s * c * self.hp_wp + (r / self.tw) * 4 * self.wp + (r % self.tw) * 4
    }
}

/// Every sample's planes, padded for 4×4 tiles: one pixel of border (reflect / zero /
/// replicate), zeros past the end, so that the batch's tiles are one pool of work. The
/// buffer comes from the tensor pool; hand it back with `recycle`.
pub(super) fn padded_batch(x: &Tensor, mode: PadMode) -> (Vec<f32>, Tiles) {
    let (h, w) = (x.h, x.w);
    let (th, tw) = (h.div_ceil(4), w.div_ceil(4));
    let (hp, wp) = (4 * th + 2, 4 * tw + 2);
    let src = |p: usize, n: usize| -> isize {
        let l = p as isize - 1;
        if l > n as isize {
            return -1; // beyond the border pixel: only feeds discarded outputs
        }
        pad_source(l, n, mode)
    };
    let rows: Vec<isize> = (0..hp).map(|p| src(p, h)).collect();
    let cols: Vec<isize> = (0..wp).map(|p| src(p, w)).collect();
    let mut xp = crate::tensor::take_buffer(x.n * x.c * hp * wp);
    xp.par_chunks_mut(hp * wp)
        .zip(x.data.par_chunks(h * w))
        .for_each(|(plane, s)| pad_plane(s, w, &rows, &cols, plane));
    let geo = Tiles {
        wp,
        hp_wp: hp * wp,
        tw,
        per_sample: th * tw,
        h,
        w,
    };
    (xp, geo)
}

/// `L` tiles of `N × N` pixels (`d[i][j][lane]`), lane `l`'s starting at `plane[off[l]]`, in
/// rows `wp` apart.
#[inline(always)]
pub(super) unsafe fn load_tile<const N: usize>(
    plane: &[f32],
    off: &[usize; L],
    wp: usize,
) -> [[[f32; L]; N]; N] {
    let mut d = [[[0.0f32; L]; N]; N];
    for (i, di) in d.iter_mut().enumerate() {
        for (j, dij) in di.iter_mut().enumerate() {
            for l in 0..L {
                // SAFETY: the caller's: every tile lies inside `plane`.
                dij[l] = unsafe { *plane.get_unchecked(off[l] + i * wp + j) };
            }
        }
    }
    d
}

/// The input transform Bᵀ d B of `L` tiles at once (`d[i][j][lane]`, a 6×6 tile each).
#[inline(always)]
pub(super) fn input_transform(d: &[[[f32; L]; 6]; 6]) -> [[[f32; L]; 6]; 6] {
    // Bᵀ d (columns), then (Bᵀ d) B (rows).
    let mut t = [[[0.0f32; L]; 6]; 6];
    for j in 0..6 {
        for l in 0..L {
            let (d0, d1, d2, d3, d4, d5) = (
                d[0][j][l], d[1][j][l], d[2][j][l], d[3][j][l], d[4][j][l], d[5][j][l],
            );
            t[0][j][l] = 4.0 * d0 - 5.0 * d2 + d4;
            t[1][j][l] = -4.0 * d1 - 4.0 * d2 + d3 + d4;
            t[2][j][l] = 4.0 * d1 - 4.0 * d2 - d3 + d4;
            t[3][j][l] = -2.0 * d1 - d2 + 2.0 * d3 + d4;
            t[4][j][l] = 2.0 * d1 - d2 - 2.0 * d3 + d4;
            t[5][j][l] = 4.0 * d1 - 5.0 * d3 + d5;
        }
    }
    let mut r = [[[0.0f32; L]; 6]; 6];
    for i in 0..6 {
        for l in 0..L {
            let (d0, d1, d2, d3, d4, d5) = (
                t[i][0][l], t[i][1][l], t[i][2][l], t[i][3][l], t[i][4][l], t[i][5][l],
            );
            r[i][0][l] = 4.0 * d0 - 5.0 * d2 + d4;
            r[i][1][l] = -4.0 * d1 - 4.0 * d2 + d3 + d4;
            r[i][2][l] = 4.0 * d1 - 4.0 * d2 - d3 + d4;
            r[i][3][l] = -2.0 * d1 - d2 + 2.0 * d3 + d4;
            r[i][4][l] = 2.0 * d1 - d2 - 2.0 * d3 + d4;
            r[i][5][l] = 4.0 * d1 - 5.0 * d3 + d5;
        }
    }
    r
}

thread_local! {
    static BUFS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

#[allow(clippy::too_many_arguments)]
unsafe fn block(
    isa: Option<Isa>,
    wg: &Winograd,
    xp: &[f32],
    geo: &Tiles,
    t0: usize,
    nt: usize,
    tb: usize,
    u: &mut [f32],
    m: &mut [f32],
    out: *mut f32,
) {
    // SAFETY: the caller upholds this function's contract (`out` valid for the tiles `t0..t0+nt`, written by no one else); the AVX-512 path is taken only when the CPU has it.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            match isa {
                Some(Isa::Avx512) => return block_avx512(wg, xp, geo, t0, nt, tb, u, m, out),
                Some(Isa::Avx2) => return block_avx2(wg, xp, geo, t0, nt, tb, u, m, out),
                None => {}
            }
        }
        block_generic(wg, xp, geo, t0, nt, tb, u, m, out)
    }
}

widths!(block_generic => block_avx512, block_avx2(
    wg: &Winograd,
    xp: &[f32],
    geo: &Tiles,
    t0: usize,
    nt: usize,
    tb: usize,
    u: &mut [f32],
    m: &mut [f32],
    out: *mut f32,
));

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn block_generic(
    wg: &Winograd,
    xp: &[f32],
    geo: &Tiles,
    t0: usize,
    nt: usize,
    tb: usize,
    u: &mut [f32],
    m: &mut [f32],
    out: *mut f32,
) {
    // SAFETY: `xp` holds every sample's `c_in` padded planes of `wp` columns covering every tile read (`get_unchecked`); `u`/`m` hold 36·c·tb floats for the GEMMs (nt ≤ tb); `out` is valid for the batch's `c_out·h·w` floats per sample and only this block's tiles are written.
    unsafe {
        let (ci, co) = (wg.c_in, wg.c_out);
        let Tiles {
            wp,
            hp_wp,
            tw,
            per_sample,
            h,
            w,
        } = *geo;
        // Input transform, L tiles at a time.
        for g0 in (0..nt).step_by(L) {
            let gl = L.min(nt - g0);
            let mut off = [0usize; L];
            for (l, o) in off.iter_mut().enumerate() {
                *o = geo.origin(t0 + g0 + l.min(gl - 1), ci);
            }
            for c in 0..ci {
                let plane = &xp[c * hp_wp..];
                let r = input_transform(&load_tile(plane, &off, wp));
                for (i, ri) in r.iter().enumerate() {
                    for (j, rij) in ri.iter().enumerate() {
                        store_lanes(&mut u[((i * 6 + j) * ci + c) * tb + g0..], rij, gl);
                    }
                }
            }
        }
        // 36 GEMMs: M[e] (co × nt) = V[e] (co × ci) · U[e] (ci × nt).
        for e in 0..36 {
            super::matmul(
                co,
                nt,
                ci,
                &mut m[e * co * tb..],
                tb,
                false,
                super::Strided {
                    data: &wg.v[e * co * ci..],
                    rs: ci,
                    cs: 1,
                },
                super::Strided {
                    data: &u[e * ci * tb..],
                    rs: tb,
                    cs: 1,
                },
                gemm::Parallelism::None,
            );
        }
        // Output transform: Aᵀ M A, plus bias.
        let plane = h * w;
        for g0 in (0..nt).step_by(L) {
            let gl = L.min(nt - g0);
            for o in 0..co {
                let mut t = [[[0.0f32; L]; 6]; 4];
                for j in 0..6 {
                    // Column j of the 6×6 tiles, loaded as it is used (a whole 6×6 array
                    // built by `array::from_fn` compiled to a call and 2 KB copies).
                    let at = |i: usize| load_lanes(&m[((i * 6 + j) * co + o) * tb + g0..], gl);
                    let col = [at(0), at(1), at(2), at(3), at(4), at(5)];
                    for l in 0..L {
                        let (m0, m1, m2, m3, m4, m5) = (
                            col[0][l], col[1][l], col[2][l], col[3][l], col[4][l], col[5][l],
                        );
                        t[0][j][l] = m0 + m1 + m2 + m3 + m4;
                        t[1][j][l] = m1 - m2 + 2.0 * m3 - 2.0 * m4;
                        t[2][j][l] = m1 + m2 + 4.0 * m3 + 4.0 * m4;
                        t[3][j][l] = m1 - m2 + 8.0 * m3 - 8.0 * m4 + m5;
                    }
                }
                let bias = wg.bias[o];
                for i in 0..4 {
                    let mut y = [[0.0f32; L]; 4];
                    for l in 0..L {
                        let (m0, m1, m2, m3, m4, m5) = (
                            t[i][0][l], t[i][1][l], t[i][2][l], t[i][3][l], t[i][4][l], t[i][5][l],
                        );
                        y[0][l] = m0 + m1 + m2 + m3 + m4 + bias;
                        y[1][l] = m1 - m2 + 2.0 * m3 - 2.0 * m4 + bias;
                        y[2][l] = m1 + m2 + 4.0 * m3 + 4.0 * m4 + bias;
                        y[3][l] = m1 - m2 + 8.0 * m3 - 8.0 * m4 + m5 + bias;
                    }
                    for l in 0..gl {
                        let t = t0 + g0 + l;
                        let (s, r) = (t / per_sample, t % per_sample);
                        let (oy, ox) = ((r / tw) * 4 + i, (r % tw) * 4);
                        if oy >= h {
                            continue;
                        }
                        let dst = out.add((s * co + o) * plane + oy * w + ox);
                        let n = 4.min(w - ox);
                        for (j, yj) in y.iter().enumerate().take(n) {
                            *dst.add(j) = yj[l];
                        }
                    }
                }
            }
        }
    }
}

/// The first `gl` of `L` lanes from `src` (the rest zero). A whole group (`gl == L`) is one
/// fixed-size copy the compiler keeps in registers, not a call to `memcpy`.
#[inline(always)]
pub(super) fn load_lanes(src: &[f32], gl: usize) -> [f32; L] {
    let mut a = [0.0f32; L];
    if gl == L {
        a.copy_from_slice(&src[..L]);
    } else {
        a[..gl].copy_from_slice(&src[..gl]);
    }
    a
}

/// The first `gl` lanes of `a` into `dst` (see [`load_lanes`]).
#[inline(always)]
pub(super) fn store_lanes(dst: &mut [f32], a: &[f32; L], gl: usize) {
    if gl == L {
        dst[..L].copy_from_slice(a);
    } else {
        dst[..gl].copy_from_slice(&a[..gl]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transforms compiled for AVX-512, AVX2 and the baseline give the same bits (no
    /// fused multiply-add is enabled in any of them), so Winograd's results do not depend on
    /// the machine's vector width (the GEMMs in between are the `gemm` crate's).
    #[test]
    fn every_vector_width_transforms_to_the_same_bits() {
        let mut r = crate::rng::Rng::new(5);
        let mut v = |n: usize| (0..n).map(|_| r.f32() - 0.5).collect::<Vec<f32>>();
        let (ci, co, h, w) = (16usize, 20usize, 13usize, 22usize);
        let conv = ConvWeights {
            c_in: ci,
            c_out: co,
            weight: v(co * ci * 9),
            bias: v(co),
        };
        let wg = Winograd::new(&conv);
        let x = Tensor::from_vec(2, ci, h, w, v(2 * ci * h * w));
        let bits = |t: Tensor| t.data.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
        let base = bits(wg.forward_on(&x, PadMode::Reflect, None));
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                assert_eq!(
                    bits(wg.forward_on(&x, PadMode::Reflect, Some(Isa::Avx2))),
                    base
                );
            }
            if std::is_x86_feature_detected!("avx512f") {
                assert_eq!(
                    bits(wg.forward_on(&x, PadMode::Reflect, Some(Isa::Avx512))),
                    base
                );
            }
        }
    }
}
