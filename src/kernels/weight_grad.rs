//! The weight gradient of a wide stride-1 convolution with few output channels (the
//! transformer's final 9×9 conv, 32 → 3), computed directly: dW[o][c][ky][kx] = Σ dy[o]·x[c]
//! shifted by the tap. Through im2col the patch matrix would hold c_in·81 rows per pixel for
//! three output rows of GEMM (2.7 GB written per 256² step at batch 4); here each padded
//! input row stays in L1 while every output channel and tap reads it.
//!
//! The sums are the same on every CPU: every tap's products run in 16 fixed lanes of plain
//! multiplies and adds (no fused multiply-add, whatever the ISA; in AVX2 registers where the
//! CPU has them, as plain lane loops elsewhere), four output rows at a time in float32, then
//! into float64 lanes summed in a fixed order; one task owns each input channel.

use crate::kernels::geom::{pad_plane, ConvGeom};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Output channels up to which [`weight_grad`] beats im2col + GEMM.
pub const MAX_OUT: usize = 4;

/// Does the direct weight gradient apply to this geometry?
pub fn applicable(c_out: usize, g: &ConvGeom) -> bool {
    g.stride == 1 && g.upsample == 1 && g.dilate == 1 && g.k >= 5 && c_out <= MAX_OUT
}

const LANES: usize = 16;
/// Output rows summed in float32 lanes before they are added into the float64 lanes.
const ROWS: usize = 4;
/// The most taps of one kernel row held in registers at once.
const GROUP: usize = 9;

/// Proof that the CPU has AVX2: only [`Avx2::detect`] makes one, so a function that is
/// handed one may run AVX2 instructions (and the flag costs nothing in the hot loop).
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Avx2(());

impl Avx2 {
    /// `Some` where the CPU has AVX2 and `IMPASTO_NO_AVX2` (through `direct::isa()`) does
    /// not turn vectors off.
    fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if super::direct::isa().is_some() && std::is_x86_feature_detected!("avx2") {
            return Some(Avx2(()));
        }
        None
    }
}

/// `acc[t][l] += Σ_j d[j + l] · x[j + t + l]` over one row's full vectors `j = 0, 16, …`
/// (`d`: a multiple of 16 floats, `x`: `T - 1` more), each lane's products added in the
/// order of `j`: in AVX2 registers given `avx2` (AVX-512 CPUs included), else as plain
/// lane loops. Written out with intrinsics because the compiler's own vectorisation
/// of the lane loops kept every accumulator on the stack: the bounds checks' unwinding
/// exits stopped it keeping them in registers, and without the checks it vectorised across
/// taps, with gathers. Eight lanes rather than sixteen on AVX-512 CPUs too: nine of every
/// ten loads here are unaligned, and a 64-byte one nearly always spans two cache lines (on a
/// Zen 4, the final conv's weight gradient at 128², batch 4: 20–23 ms in AVX-512
/// registers, 11–12 ms in AVX2 ones, 27 ms before).
#[inline(always)]
fn row<const T: usize>(d: &[f32], x: &[f32], acc: &mut [[f32; LANES]; T], avx2: Option<Avx2>) {
    assert!(
        d.len().is_multiple_of(LANES) && x.len() >= d.len() + T - 1,
        "row lengths"
    );
    #[cfg(target_arch = "x86_64")]
    if avx2.is_some() {
        // SAFETY: an `Avx2` exists only where the CPU has AVX2; the lengths are checked
        // above.
        return unsafe { simd::row_avx2(d, x, acc) };
    }
    let _ = avx2;
    for j in (0..d.len()).step_by(LANES) {
        let dj: &[f32; LANES] = d[j..j + LANES].try_into().expect("lanes");
        for (t, a) in acc.iter_mut().enumerate() {
            let xj: &[f32; LANES] = x[j + t..j + t + LANES].try_into().expect("lanes");
            for l in 0..LANES {
                a[l] += dj[l] * xj[l];
            }
        }
    }
}

/// [`row`] in AVX2 registers: two halves of eight lanes one after the other (each lane's
/// sum is its own, so the order within a lane is the same). Multiplies and adds apart, as in
/// the plain loop: the same bits.
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::LANES;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU has AVX2; `d.len()` is a multiple of [`LANES`] and `x.len() ≥ d.len() + T - 1`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn row_avx2<const T: usize>(
        d: &[f32],
        x: &[f32],
        acc: &mut [[f32; LANES]; T],
    ) {
        let (dp, xp) = (d.as_ptr(), x.as_ptr());
        // SAFETY: every load of a half's eight lanes at offset `h < 16` reads up to
        // `j + h + t + 8 ≤ d.len() + T - 1 ≤ x.len()` floats of `x` and `j + h + 8 ≤ d.len()`
        // of `d` (the caller's contract); `acc` rows are 16 floats.
        unsafe {
            for h in [0, 8] {
                let mut a: [__m256; T] =
                    std::array::from_fn(|t| _mm256_loadu_ps(acc[t].as_ptr().add(h)));
                for j in (0..d.len()).step_by(LANES) {
                    let dv = _mm256_loadu_ps(dp.add(j + h));
                    for (t, at) in a.iter_mut().enumerate() {
                        *at = _mm256_add_ps(
                            *at,
                            _mm256_mul_ps(dv, _mm256_loadu_ps(xp.add(j + h + t))),
                        );
                    }
                }
                for (row, at) in acc.iter_mut().zip(&a) {
                    _mm256_storeu_ps(row.as_mut_ptr().add(h), *at);
                }
            }
        }
    }
}

/// `acc64[t][l] += Σ_rows Σ_j dy[y][16j+l] · xp[y+ky][kx0+t+16j+l]` for `T` taps
/// `kx0..kx0+T` of kernel row `ky`, over every output row: each dy vector is loaded once for
/// the `T` shifted input vectors. The lanes' float32 partial sums (`ROWS` rows at a time) go
/// into float64 lanes in a fixed order, so the result does not depend on the vector width the
/// body is compiled for.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn taps<const T: usize>(
    dyo: &[f32],
    xp: &[f32],
    wp: usize,
    ho: usize,
    wo: usize,
    ky: usize,
    kx0: usize,
    acc64: &mut [[f64; LANES]],
    avx2: Option<Avx2>,
) {
    let full = wo / LANES * LANES;
    for y0 in (0..ho).step_by(ROWS) {
        // Full vectors in `acc` (constant indices: registers), the columns past the last
        // full vector in `rem` (lane = column offset).
        let mut acc = [[0.0f32; LANES]; T];
        let mut rem = [[0.0f32; LANES]; T];
        for y in y0..(y0 + ROWS).min(ho) {
            let dr = &dyo[y * wo..(y + 1) * wo];
            let xr = &xp[(y + ky) * wp + kx0..(y + ky + 1) * wp];
            row(&dr[..full], &xr[..full + T - 1], &mut acc, avx2);
            for (t, a) in rem.iter_mut().enumerate() {
                for (l, j) in (full..wo).enumerate() {
                    a[l] += dr[j] * xr[j + t];
                }
            }
        }
        for ((a64, a), r) in acc64.iter_mut().zip(&acc).zip(&rem) {
            for l in 0..LANES {
                a64[l] += a[l] as f64 + r[l] as f64;
            }
        }
    }
}

/// Every tap of one output channel's plane `dyo` against one padded input plane `xp`
/// (`acc64`: `k·k` taps of float64 lanes), taps grouped by up to nine per kernel row.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn plane(
    dyo: &[f32],
    xp: &[f32],
    wp: usize,
    ho: usize,
    wo: usize,
    k: usize,
    acc64: &mut [[f64; LANES]],
    avx2: Option<Avx2>,
) {
    for ky in 0..k {
        let mut kx0 = 0;
        while kx0 < k {
            let a = &mut acc64[ky * k + kx0..];
            let n = match k - kx0 {
                n if n >= GROUP => {
                    taps::<GROUP>(dyo, xp, wp, ho, wo, ky, kx0, a, avx2);
                    GROUP
                }
                n if n >= 5 => {
                    taps::<5>(dyo, xp, wp, ho, wo, ky, kx0, a, avx2);
                    5
                }
                n if n >= 3 => {
                    taps::<3>(dyo, xp, wp, ho, wo, ky, kx0, a, avx2);
                    3
                }
                _ => {
                    taps::<1>(dyo, xp, wp, ho, wo, ky, kx0, a, avx2);
                    1
                }
            };
            kx0 += n;
        }
    }
}

/// [`plane`] compiled for AVX2 (the hot loop in its registers, see [`row`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
fn plane_avx2(
    dyo: &[f32],
    xp: &[f32],
    wp: usize,
    ho: usize,
    wo: usize,
    k: usize,
    acc64: &mut [[f64; LANES]],
    avx2: Avx2,
) {
    plane(dyo, xp, wp, ho, wo, k, acc64, Some(avx2))
}

/// [`plane`] in AVX2 where the CPU has it (AVX-512 CPUs too: see [`row`]), as plain lane
/// loops elsewhere: the same multiplies and adds in the same order either way (no fused
/// multiply-add).
fn plane_dispatch(
    dyo: &[f32],
    xp: &[f32],
    wp: usize,
    ho: usize,
    wo: usize,
    k: usize,
    acc64: &mut [[f64; LANES]],
) {
    #[cfg(target_arch = "x86_64")]
    if let Some(avx2) = Avx2::detect() {
        // SAFETY: `avx2` proves the CPU has AVX2, which `plane_avx2` is compiled for.
        return unsafe { plane_avx2(dyo, xp, wp, ho, wo, k, acc64, avx2) };
    }
    plane(dyo, xp, wp, ho, wo, k, acc64, None)
}

/// d/dW (`[c_out][c_in·k·k]`) and d/db of a stride-1 convolution of `x` (`c_in` channels)
/// given `dy` (`c_out` channels).
pub fn weight_grad(g: &ConvGeom, x: &Tensor, dy: &Tensor) -> (Vec<f32>, Vec<f32>) {
    let (ci, co, k) = (x.c, dy.c, g.k);
    let (h, w) = (x.h, x.w);
    let (ho, wo) = g.out_size(h, w);
    assert_eq!((dy.n, dy.h, dy.w), (x.n, ho, wo), "gradient shape");
    // Padded input rows: the last tap's last full vector ends at column `wo - 1 + k - 1`,
    // inside the row (`taps` reads no further).
    let (hp, wp) = (ho + k - 1, wo + k - 1);
    let (rows, cols) = g.padded_sources(h, w, hp, wp);
    // One task per input channel: its k·k taps for every output channel.
    let per_channel: Vec<Vec<f64>> = (0..ci)
        .into_par_iter()
        .map(|c| {
            let mut acc = vec![[0.0f64; LANES]; co * k * k];
            let mut xp = vec![0.0f32; hp * wp];
            for s in 0..x.n {
                let plane = &x.sample(s)[c * h * w..(c + 1) * h * w];
                pad_plane(plane, w, &rows, &cols, &mut xp);
                let dys = dy.sample(s);
                for o in 0..co {
                    let dyo = &dys[o * ho * wo..(o + 1) * ho * wo];
                    plane_dispatch(
                        dyo,
                        &xp,
                        wp,
                        ho,
                        wo,
                        k,
                        &mut acc[o * k * k..(o + 1) * k * k],
                    );
                }
            }
            acc.iter().map(|lanes| lanes.iter().sum::<f64>()).collect()
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
        for (k, ci, co) in [
            (9usize, 5usize, 3usize),
            (5, 3, 1),
            (9, 2, 4),
            (7, 2, 2),
            (11, 1, 1),
        ] {
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

    /// The AVX2 body and the plain lane loops give the same bits (no fused multiply-add, the
    /// same lanes): what AVX2 and AVX-512 machines compute, the others do. 45 columns: two
    /// full vectors and a remainder.
    #[test]
    fn every_vector_width_sums_to_the_same_bits() {
        let mut r = crate::rng::Rng::new(7);
        // Kernel widths 9, 8 and 11 take every group of taps (9; 5 and 3; 9, 1 and 1).
        for k in [9usize, 8, 11] {
            let (ho, wo) = (13usize, 45usize);
            let wp = wo + k - 1;
            let dyo: Vec<f32> = (0..ho * wo).map(|_| r.f32() - 0.5).collect();
            let xp: Vec<f32> = (0..(ho + k - 1) * wp).map(|_| r.f32() - 0.5).collect();
            let run = |f: &dyn Fn(&mut [[f64; LANES]])| {
                let mut acc = vec![[0.0f64; LANES]; k * k];
                f(&mut acc);
                acc.iter()
                    .flatten()
                    .map(|v| v.to_bits())
                    .collect::<Vec<u64>>()
            };
            let base = run(&|a| plane(&dyo, &xp, wp, ho, wo, k, a, None));
            assert_eq!(run(&|a| plane_dispatch(&dyo, &xp, wp, ho, wo, k, a)), base);
            #[cfg(target_arch = "x86_64")]
            if let Some(avx2) = Avx2::detect() {
                // SAFETY: `avx2` proves the CPU has AVX2.
                assert_eq!(
                    run(&|a| unsafe { plane_avx2(&dyo, &xp, wp, ho, wo, k, a, avx2) }),
                    base,
                    "k {k}"
                );
            }
        }
    }
}
