//! Winograd F(4×4, 3×3) for the stride-1, pad-1 3×3 convolutions that hold most of the work
//! (the residual blocks; VGG16). Each 4×4 output tile costs 36 multiplies per channel pair
//! instead of 144 (4× fewer), at the price of cheap linear transforms (Lavin & Gray 2016).
//!
//! Work is cut into blocks of `tb` tiles; per block the input transform fills
//! `U[36][c_in][tb]`, 36 GEMMs (`gemm` crate) give `M[36][c_out][tb]`, and the output
//! transform writes the 4×4 tiles. Blocks run in parallel with thread-local buffers.
//!
//! The transforms run on `W` tiles at a time as plain lane loops that the compiler
//! vectorises (AVX-512 where present). Where tile rows hold a multiple of 16, 8 or 4 tiles,
//! `W` consecutive tiles of one row share every load: the padded input is stored in phases
//! (see [`Tiles`]), so one element of `W` neighbouring tiles is `W` consecutive floats, and
//! an output row of the run is written as whole vectors. Other widths gather 16 tiles' lanes
//! one by one. Either way each lane sees the same arithmetic, so the results are the same
//! bits.

use crate::kernels::direct::Isa;
use crate::kernels::geom::{pad_source, ConvGeom, ConvWeights, PadMode, SendPtr};
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

impl Drop for Winograd {
    fn drop(&mut self) {
        crate::tensor::recycle(std::mem::take(&mut self.v));
    }
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
        // From the buffer pool (the training pass makes and drops these every step; fresh
        // pages each time cost page faults, and unmapping them a sequential stretch). Every
        // element is written below, each task its output channel's 36 rows.
        let mut v = crate::tensor::take_buffer(36 * co * ci);
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

/// Where a block's tiles are. Tile `t` of the batch is tile `t % per_sample` of sample
/// `t / per_sample`, in rows of `tw` tiles. The padded planes are stored in *phases*: padded
/// row `y` is four runs of `wq` floats, run `p` holding columns `p, p + 4, p + 8, …`, so that
/// one element of consecutive tiles (4 columns apart) is consecutive in memory.
#[derive(Clone, Copy)]
pub(super) struct Tiles {
    /// Floats per phase run: tile columns + 1 (a 6-wide tile reaches 2 columns into the next).
    pub(super) wq: usize,
    /// Floats per padded plane: `4·th + 2` rows of `4·wq`.
    pub(super) plane: usize,
    pub(super) tw: usize,
    pub(super) per_sample: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    /// Lanes whose tiles are always consecutive in one tile row (16, 8 or 4: tile rows hold
    /// a multiple of it), loaded as one vector; 0 when rows hold no multiple of 4 tiles and
    /// the lanes are gathered one by one.
    pub(super) run: usize,
}

impl Tiles {
    pub(super) fn new(h: usize, w: usize) -> Self {
        let (th, tw) = (h.div_ceil(4), w.div_ceil(4));
        let wq = tw + 1;
        Tiles {
            wq,
            plane: (4 * th + 2) * 4 * wq,
            tw,
            per_sample: th * tw,
            h,
            w,
            run: [16, 8, 4].into_iter().find(|r| tw % r == 0).unwrap_or(0),
        }
    }

    /// Where tile `t` of the batch starts in the padded planes of channel 0 (of `c`).
    #[inline(always)]
    pub(super) fn origin(&self, t: usize, c: usize) -> usize {
        let (s, r) = (t / self.per_sample, t % self.per_sample);
        s * c * self.plane + (r / self.tw) * 16 * self.wq + r % self.tw
    }

    /// The origins of the `W` lanes' tiles `t..t + gl` (the last repeated into unused lanes).
    #[inline(always)]
    pub(super) fn origins<const W: usize>(&self, t: usize, gl: usize, c: usize) -> [usize; W] {
        if self.run == W {
            debug_assert_eq!(gl, W, "a run's groups are whole");
            let o = self.origin(t, c);
            std::array::from_fn(|l| o + l)
        } else {
            std::array::from_fn(|l| self.origin(t + l.min(gl - 1), c))
        }
    }

    /// Element (i, j) of a tile, from its origin.
    #[inline(always)]
    pub(super) fn at(&self, i: usize, j: usize) -> usize {
        (4 * i + j % 4) * self.wq + j / 4
    }
}

/// Every sample's planes, padded for 4×4 tiles: one pixel of border (reflect / zero /
/// replicate), zeros past the end, so that the batch's tiles are one pool of work; in
/// phases (see [`Tiles`]). The buffer comes from the tensor pool; hand it back with `recycle`.
pub(super) fn padded_batch(x: &Tensor, mode: PadMode) -> (Vec<f32>, Tiles) {
    let (h, w) = (x.h, x.w);
    let geo = Tiles::new(h, w);
    let rw = 4 * geo.wq;
    let src = |p: usize, n: usize| -> isize {
        let l = p as isize - 1;
        if l > n as isize {
            return -1; // beyond the border pixel: only feeds discarded outputs
        }
        pad_source(l, n, mode)
    };
    let rows: Vec<isize> = (0..geo.plane / rw).map(|p| src(p, h)).collect();
    let cols: Vec<isize> = (0..rw).map(|p| src(p, w)).collect();
    let mut xp = crate::tensor::take_buffer(x.n * x.c * geo.plane);
    xp.par_chunks_mut(geo.plane)
        .zip(x.data.par_chunks(h * w))
        .for_each_init(
            || vec![0.0f32; rw],
            |row, (plane, s)| {
                for (drow, &sy) in plane.chunks_exact_mut(rw).zip(&rows) {
                    if sy < 0 {
                        drow.fill(0.0);
                        continue;
                    }
                    let srow = &s[sy as usize * w..][..w];
                    // Columns 1..=w read the source in order; the border and the tail
                    // through the column map.
                    row[1..=w].copy_from_slice(srow);
                    for p in std::iter::once(0).chain(w + 1..rw) {
                        row[p] = if cols[p] < 0 {
                            0.0
                        } else {
                            srow[cols[p] as usize]
                        };
                    }
                    to_phases(row, drow);
                }
            },
        );
    (xp, geo)
}

/// One padded row (`4·wq` floats) into its four phase runs.
pub(super) fn to_phases(row: &[f32], dst: &mut [f32]) {
    let wq = row.len() / 4;
    let (p0, rest) = dst.split_at_mut(wq);
    let (p1, rest) = rest.split_at_mut(wq);
    let (p2, p3) = rest.split_at_mut(wq);
    for ((((c, a), b), d), e) in row
        .chunks_exact(4)
        .zip(p0.iter_mut())
        .zip(p1.iter_mut())
        .zip(p2.iter_mut())
        .zip(p3.iter_mut())
    {
        (*a, *b, *d, *e) = (c[0], c[1], c[2], c[3]);
    }
}

/// Element (i, j) of `W` tiles, lane `l`'s tile starting at `plane[off[l]]`: one load of `W`
/// floats when the lanes are a run (see [`Tiles::run`]).
#[inline(always)]
pub(super) unsafe fn load_elem<const W: usize>(
    plane: &[f32],
    off: &[usize; W],
    geo: &Tiles,
    i: usize,
    j: usize,
) -> [f32; W] {
    let e = geo.at(i, j);
    // SAFETY: the caller's: every tile lies inside `plane`.
    unsafe {
        if geo.run == W {
            debug_assert!(off[0] + e + W <= plane.len());
            (plane.as_ptr().add(off[0] + e) as *const [f32; W]).read_unaligned()
        } else {
            std::array::from_fn(|l| *plane.get_unchecked(off[l] + e))
        }
    }
}

/// The input transform Bᵀ d B of `W` 6×6 tiles at once: `d(i, j)` is element (i, j) of
/// every lane, and `out(i·6 + j, r)` takes element (i, j) of the result. Columns first (into
/// `t`, the caller's scratch, so that it is not cleared for every tile group), then rows,
/// each row handed on as it is done.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // the transform's indices, as written on paper
pub(super) fn input_transform<const W: usize>(
    t: &mut [[[f32; W]; 6]; 6],
    d: impl Fn(usize, usize) -> [f32; W],
    mut out: impl FnMut(usize, &[f32; W]),
) {
    for j in 0..6 {
        let (d0, d1, d2, d3, d4, d5) = (d(0, j), d(1, j), d(2, j), d(3, j), d(4, j), d(5, j));
        for l in 0..W {
            let (d0, d1, d2, d3, d4, d5) = (d0[l], d1[l], d2[l], d3[l], d4[l], d5[l]);
            t[0][j][l] = 4.0 * d0 - 5.0 * d2 + d4;
            t[1][j][l] = -4.0 * d1 - 4.0 * d2 + d3 + d4;
            t[2][j][l] = 4.0 * d1 - 4.0 * d2 - d3 + d4;
            t[3][j][l] = -2.0 * d1 - d2 + 2.0 * d3 + d4;
            t[4][j][l] = 2.0 * d1 - d2 - 2.0 * d3 + d4;
            t[5][j][l] = 4.0 * d1 - 5.0 * d3 + d5;
        }
    }
    for (i, ti) in t.iter().enumerate() {
        let mut r = [[0.0f32; W]; 6];
        for l in 0..W {
            let (d0, d1, d2, d3, d4, d5) =
                (ti[0][l], ti[1][l], ti[2][l], ti[3][l], ti[4][l], ti[5][l]);
            r[0][l] = 4.0 * d0 - 5.0 * d2 + d4;
            r[1][l] = -4.0 * d1 - 4.0 * d2 + d3 + d4;
            r[2][l] = 4.0 * d1 - 4.0 * d2 - d3 + d4;
            r[3][l] = -2.0 * d1 - d2 + 2.0 * d3 + d4;
            r[4][l] = 2.0 * d1 - d2 - 2.0 * d3 + d4;
            r[5][l] = 4.0 * d1 - 5.0 * d3 + d5;
        }
        for (j, rj) in r.iter().enumerate() {
            out(i * 6 + j, rj);
        }
    }
}

thread_local! {
    static BUFS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Calls `$f::<W>` built for the CPU's vector width, `W` the layer's run width (16 lanes,
/// gathered one by one, when its tile rows hold no run).
macro_rules! by_width {
    ($isa:expr, $run:expr, $generic:ident, [$($w:pat => $avx512:ident, $avx2:ident);*], $args:tt) => {{
        #[cfg(target_arch = "x86_64")]
        {
            match ($isa, $run) {
                $(
                    (Some(Isa::Avx512), $w) => return $avx512 $args,
                    (Some(Isa::Avx2), $w) => return $avx2 $args,
                )*
                _ => {}
            }
        }
        match $run {
            8 => $generic::<8> $args,
            4 => $generic::<4> $args,
            _ => $generic::<16> $args,
        }
    }};
}
pub(super) use by_width;

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
    // SAFETY: the caller upholds this function's contract (`out` valid for the tiles
    // `t0..t0+nt`, written by no one else); a vector build is taken only when the CPU has it.
    unsafe {
        by_width!(
            isa,
            geo.run,
            block_generic,
            [8 => block8_avx512, block8_avx2; 4 => block4_avx512, block4_avx2;
             _ => block16_avx512, block16_avx2],
            (wg, xp, geo, t0, nt, tb, u, m, out)
        )
    }
}

widths!(block_generic::<16> => block16_avx512, block16_avx2(
    wg: &Winograd, xp: &[f32], geo: &Tiles, t0: usize, nt: usize, tb: usize,
    u: &mut [f32], m: &mut [f32], out: *mut f32,
));
widths!(block_generic::<8> => block8_avx512, block8_avx2(
    wg: &Winograd, xp: &[f32], geo: &Tiles, t0: usize, nt: usize, tb: usize,
    u: &mut [f32], m: &mut [f32], out: *mut f32,
));
widths!(block_generic::<4> => block4_avx512, block4_avx2(
    wg: &Winograd, xp: &[f32], geo: &Tiles, t0: usize, nt: usize, tb: usize,
    u: &mut [f32], m: &mut [f32], out: *mut f32,
));

/// One block's tiles `t0..t0 + nt`, `W` at a time: input transform into `u`, the 36 GEMMs
/// into `m`, output transform into `out`.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn block_generic<const W: usize>(
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
    // SAFETY: `xp` holds every sample's `c_in` padded planes covering every tile read
    // (`get_unchecked`); `u`/`m` hold 36·c·tb floats for the GEMMs (nt ≤ tb); `out` is valid
    // for the batch's `c_out·h·w` floats per sample and only this block's tiles are written.
    unsafe {
        let (ci, co) = (wg.c_in, wg.c_out);
        let Tiles {
            tw,
            per_sample,
            h,
            w,
            ..
        } = *geo;
        // Input transform, W tiles at a time.
        let mut scratch = [[[0.0f32; W]; 6]; 6];
        for g0 in (0..nt).step_by(W) {
            let gl = W.min(nt - g0);
            let off = geo.origins::<W>(t0 + g0, gl, ci);
            for c in 0..ci {
                let plane = &xp[c * geo.plane..];
                input_transform(
                    &mut scratch,
                    |i, j| load_elem(plane, &off, geo, i, j),
                    |e, r| store_lanes(&mut u[(e * ci + c) * tb + g0..], r),
                );
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
        let run = geo.run == W;
        // Aᵀ M of a group's column j, for every j: overwritten for each output channel
        // before it is read (declared once: clearing it per channel cost a `memset` each).
        let mut t = [[[0.0f32; W]; 6]; 4];
        for g0 in (0..nt).step_by(W) {
            let gl = W.min(nt - g0);
            // Each lane's first output pixel (of channel 0) and how many of its tile's rows
            // and columns lie inside the image.
            let mut dst = [0usize; W];
            let mut rows = [0usize; W];
            let mut cols = [0usize; W];
            for l in 0..gl {
                let t = t0 + g0 + l;
                let (s, r) = (t / per_sample, t % per_sample);
                let (oy, ox) = ((r / tw) * 4, (r % tw) * 4);
                dst[l] = s * co * plane + oy * w + ox;
                rows[l] = 4.min(h - oy);
                cols[l] = 4.min(w - ox);
            }
            // A run's pixels in a row, up to the image's edge.
            let run_cols = (4 * W).min(w - (t0 + g0) % per_sample % tw * 4);
            for o in 0..co {
                for j in 0..6 {
                    // Column j of the 6×6 tiles, loaded as it is used (a whole 6×6 array
                    // built by `array::from_fn` compiled to a call and 2 KB copies).
                    let at = |i: usize| load_lanes::<W>(&m[((i * 6 + j) * co + o) * tb + g0..]);
                    let col = [at(0), at(1), at(2), at(3), at(4), at(5)];
                    for l in 0..W {
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
                let base = out.add(o * plane);
                for i in 0..4 {
                    let mut y = [[0.0f32; W]; 4];
                    for l in 0..W {
                        let (m0, m1, m2, m3, m4, m5) = (
                            t[i][0][l], t[i][1][l], t[i][2][l], t[i][3][l], t[i][4][l], t[i][5][l],
                        );
                        y[0][l] = m0 + m1 + m2 + m3 + m4 + bias;
                        y[1][l] = m1 - m2 + 2.0 * m3 - 2.0 * m4 + bias;
                        y[2][l] = m1 + m2 + 4.0 * m3 + 4.0 * m4 + bias;
                        y[3][l] = m1 - m2 + 8.0 * m3 - 8.0 * m4 + m5 + bias;
                    }
                    if run {
                        // The run's 4·W pixels of this row, interleaved, in one copy.
                        if i >= rows[0] {
                            continue;
                        }
                        store_interleaved(&y, base.add(dst[0] + i * w), run_cols);
                    } else {
                        for l in 0..gl {
                            if i >= rows[l] {
                                continue;
                            }
                            let d = base.add(dst[l] + i * w);
                            for (j, yj) in y.iter().enumerate().take(cols[l]) {
                                *d.add(j) = yj[l];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One output row of a run of `W` tiles: column `j` of tile `l` (`y[j][l]`) to `dst[4l + j]`,
/// the first `n` of the `4·W` pixels. On x86-64, 4×4 transposes in SSE registers (which
/// every x86-64 CPU has): the compiler's own interleave of `y` read it back from the stack
/// in pieces narrower than it had been stored, and stalled on every load.
#[inline(always)]
unsafe fn store_interleaved<const W: usize>(y: &[[f32; W]; 4], dst: *mut f32, n: usize) {
    // SAFETY: the caller's: `dst` is valid for `n` floats.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        if n == 4 * W && W.is_multiple_of(4) {
            use std::arch::x86_64::*;
            for l in (0..W).step_by(4) {
                let a = _mm_loadu_ps(y[0].as_ptr().add(l));
                let b = _mm_loadu_ps(y[1].as_ptr().add(l));
                let c = _mm_loadu_ps(y[2].as_ptr().add(l));
                let d = _mm_loadu_ps(y[3].as_ptr().add(l));
                let (ab01, cd01) = (_mm_unpacklo_ps(a, b), _mm_unpacklo_ps(c, d));
                let (ab23, cd23) = (_mm_unpackhi_ps(a, b), _mm_unpackhi_ps(c, d));
                let o = dst.add(4 * l);
                _mm_storeu_ps(o, _mm_movelh_ps(ab01, cd01));
                _mm_storeu_ps(o.add(4), _mm_movehl_ps(cd01, ab01));
                _mm_storeu_ps(o.add(8), _mm_movelh_ps(ab23, cd23));
                _mm_storeu_ps(o.add(12), _mm_movehl_ps(cd23, ab23));
            }
            return;
        }
        for p in 0..n {
            *dst.add(p) = y[p % 4][p / 4];
        }
    }
}

/// `W` lanes from `src`: one fixed-size load. A block's rows of `u` and `m` are `tb` wide, a
/// multiple of 16, so a last group of fewer tiles reads and writes whole lanes too (the
/// lanes past the block's tiles are never used): the hot loops hold no copies of variable
/// length, which the compiler turns into calls to `memcpy`.
#[inline(always)]
pub(super) fn load_lanes<const W: usize>(src: &[f32]) -> [f32; W] {
    let s: &[f32; W] = src[..W].try_into().expect("lanes");
    *s
}

/// `W` lanes into `dst` (see [`load_lanes`]).
#[inline(always)]
pub(super) fn store_lanes<const W: usize>(dst: &mut [f32], a: &[f32; W]) {
    let d: &mut [f32; W] = (&mut dst[..W]).try_into().expect("lanes");
    *d = *a;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transforms compiled for AVX-512, AVX2 and the baseline give the same bits (no
    /// fused multiply-add is enabled in any of them), so Winograd's results do not depend on
    /// the machine's vector width (the GEMMs in between are the `gemm` crate's); with lanes
    /// gathered one by one (22 wide) and loaded as runs of 4, 8 and 16 tiles.
    #[test]
    fn every_vector_width_transforms_to_the_same_bits() {
        for w in [22, 15, 30, 63] {
            same_bits_at(w);
        }
    }

    /// `n` values in [−0.5, 0.5).
    fn values(r: &mut crate::rng::Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| r.f32() - 0.5).collect()
    }

    fn random_layer(r: &mut crate::rng::Rng, ci: usize, co: usize) -> ConvWeights {
        ConvWeights {
            c_in: ci,
            c_out: co,
            weight: values(r, co * ci * 9),
            bias: values(r, co),
        }
    }

    fn same_bits_at(w: usize) {
        let mut r = crate::rng::Rng::new(5);
        let (ci, co, h) = (16usize, 20usize, 13usize);
        let wg = Winograd::new(&random_layer(&mut r, ci, co));
        let x = Tensor::from_vec(2, ci, h, w, values(&mut r, 2 * ci * h * w));
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
