//! Direct stride-1 convolution with AVX-512 (or AVX2 + FMA) register blocking, for the layers where
//! im2col + GEMM is a poor fit: the 9×9 convolutions at full resolution, whose patch matrix
//! would be as large as the work itself (the final 32→3 conv has only three output rows).
//!
//! Each task computes a few output rows; within a row, a block of `OB` output channels ×
//! `XB` vectors of pixels (16 lanes with AVX-512, 8 with AVX2) is held in registers while
//! every input channel and tap is streamed through, reading the (once-padded) input directly
//! with unaligned loads. The AVX2 path is what the compact live models run on machines
//! without AVX-512 (their time was half in these two layers as im2col + GEMM).

use crate::kernels::geom::{ConvGeom, ConvWeights};
use crate::tensor::Tensor;
use rayon::prelude::*;

mod simd;
use simd::{avx2, avx512, sub_pixel};

/// Is the direct kernel available and worthwhile for this convolution?
pub fn applicable(conv: &ConvWeights, g: &ConvGeom) -> bool {
    g.stride == 1
        && g.upsample == 1
        && g.dilate == 1
        && g.k >= 5
        && conv.c_in * g.k * g.k >= 64
        && isa().is_some()
}

/// The stride-2 3×3 layers of a narrow network (the live twins' 8→16 and 16→32 downsampling):
/// the direct AVX2 kernel reads a column-deinterleaved copy of the padded input, so each tap
/// is still a contiguous vector load. Wider layers stay with im2col + GEMM, whose blocking
/// suits them; inference only (the training path keeps its golden-checked summation order).
pub fn applicable_stride2(conv: &ConvWeights, g: &ConvGeom) -> bool {
    g.stride == 2
        && g.upsample == 1
        && g.dilate == 1
        && g.k == 3
        && conv.c_in * 9 >= 64
        && conv.c_out <= 32
        && has_avx2()
}

/// Which vector kernel this CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
}

/// The widest direct kernel this CPU supports (`IMPASTO_NO_AVX512` / `IMPASTO_NO_AVX2` turn
/// them off, for comparisons and tests).
pub fn isa() -> Option<Isa> {
    if has_avx512() {
        return Some(Isa::Avx512);
    }
    #[cfg(target_arch = "x86_64")]
    {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let avx2 = *ON.get_or_init(|| {
            std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::env::var_os("IMPASTO_NO_AVX2").is_none()
        });
        if avx2 {
            return Some(Isa::Avx2);
        }
    }
    None
}

pub fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| {
            std::is_x86_feature_detected!("avx512f")
                && std::env::var_os("IMPASTO_NO_AVX512").is_none()
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The input with its padding materialised: `c × (h+pt+pb) × (w+pl+pr)` plus 16 floats of
/// slack so masked vector loads near the end stay in bounds.
#[allow(clippy::too_many_arguments)]
fn pad_input(
    x: &[f32],
    c: usize,
    h: usize,
    w: usize,
    g: &ConvGeom,
    ymap: &[i32],
    xmap: &[i32],
    ho: usize,
    wo: usize,
) -> Padded {
    // For stride 1, padded index p = o + t with o the output coordinate and t the tap, so
    // p ranges over 0..ho+k-1.
    let (hp, wp) = (ho + g.k - 1, wo + g.k - 1);
    let rows: Vec<i32> = (0..hp).map(|p| source(ymap, g.k, 1, ho, p)).collect();
    let cols: Vec<i32> = (0..wp).map(|p| source(xmap, g.k, 1, wo, p)).collect();
    Padded {
        buf: gather(x, c, h, w, &rows, &cols),
        hp,
        rowlen: wp,
        odd: 0,
    }
}

/// The stride-2 input padded and split by column parity: each padded row `P` (output row
/// `y`, tap `ky` at `P = 2y + ky`) holds its even columns, then its odd ones, so output `x`
/// and tap `kx` read element `x + kx/2` of the even half (`kx` even) or of the odd half.
#[allow(clippy::too_many_arguments)]
fn pad_input_stride2(
    x: &[f32],
    c: usize,
    h: usize,
    w: usize,
    g: &ConvGeom,
    ymap: &[i32],
    xmap: &[i32],
    ho: usize,
    wo: usize,
) -> Padded {
    let k = g.k;
    let (hp, wp) = (2 * (ho - 1) + k, 2 * (wo - 1) + k);
    let (even, odd) = (wp.div_ceil(2), wp / 2);
    let rowlen = even + odd;
    // column j of a row: padded column 2j (even half) or 2(j - even) + 1 (odd half)
    let cols: Vec<i32> = (0..rowlen)
        .map(|j| {
            let p = if j < even { 2 * j } else { 2 * (j - even) + 1 };
            source(xmap, k, 2, wo, p)
        })
        .collect();
    let rows: Vec<i32> = (0..hp).map(|p| source(ymap, k, 2, ho, p)).collect();
    Padded {
        buf: gather(x, c, h, w, &rows, &cols),
        hp,
        rowlen,
        odd: even,
    }
}

/// The source index (negative: padding) of padded index `p` for a convolution of kernel `k`
/// and stride `s` with `n_out` outputs: the `map` entry (`n_out × k`, output by tap) of the
/// last output whose taps reach `p`.
fn source(map: &[i32], k: usize, s: usize, n_out: usize, p: usize) -> i32 {
    let o = (p / s).min(n_out - 1);
    map[o * k + (p - s * o)]
}

/// Both padders' gather: plane `ch`, row `r`, column `j` of the result is
/// `x[ch][rows[r]][cols[j]]`, or 0 where either index is negative (zero padding); plus 16
/// zero floats of slack.
fn gather(x: &[f32], c: usize, h: usize, w: usize, rows: &[i32], cols: &[i32]) -> Vec<f32> {
    let (hp, rowlen) = (rows.len(), cols.len());
    let mut out = crate::tensor::take_buffer(c * hp * rowlen + 16);
    out[c * hp * rowlen..].fill(0.0);
    out[..c * hp * rowlen]
        .par_chunks_mut(hp * rowlen)
        .enumerate()
        .for_each(|(ch, plane)| {
            let src = &x[ch * h * w..(ch + 1) * h * w];
            for (row, &sy) in plane.chunks_exact_mut(rowlen).zip(rows) {
                if sy < 0 {
                    row.fill(0.0);
                    continue;
                }
                let s = &src[sy as usize * w..(sy as usize + 1) * w];
                for (d, &sx) in row.iter_mut().zip(cols) {
                    *d = if sx < 0 { 0.0 } else { s[sx as usize] };
                }
            }
        });
    out
}

/// [`forward`] for a layer [`applicable_stride2`] accepts.
#[allow(clippy::too_many_arguments)]
pub fn forward_stride2(
    conv: &ConvWeights,
    g: &ConvGeom,
    x: &Tensor,
    ymap: &[i32],
    xmap: &[i32],
    ho: usize,
    wo: usize,
) -> Tensor {
    let k = g.k;
    let pad = |xs: &[f32]| pad_input_stride2(xs, x.c, x.h, x.w, g, ymap, xmap, ho, wo);
    drive(conv, k, x, (ho, wo), 1, pad, |r| {
        // SAFETY: applicable_stride2 checked AVX2 + FMA; `drive` hands this call output
        // row y alone; the AVX2 kernel masks every load past the row's valid outputs.
        unsafe { avx2_row::<true>(r, conv.c_in, k, 2 * r.y) }
    })
}

/// One output row of the AVX2 kernel (`S2`: stride 2, taps from padded row `row0 = 2y`)
/// with the register block that fits its `OB`: 16 ymm registers must hold OB·XB
/// accumulators, XB inputs and one broadcast weight with room to spare, or LLVM spills an
/// accumulator and every tap waits on a store-to-load round trip (4×3 and 3×4 did: 2.5×
/// slower).
///
/// # Safety
/// The CPU has AVX2 + FMA, and `dst` is as [`drive`] describes it.
#[allow(clippy::too_many_arguments)]
unsafe fn avx2_row<const S2: bool>(r: &Row, ci: usize, k: usize, row0: usize) {
    let t = avx2::Taps { row0, odd: r.p.odd };
    let (xp, hp, rl) = (&r.p.buf[..], r.p.hp, r.p.rowlen);
    let (w, b, dst, plane, wo) = (r.w, r.bias, r.dst, r.plane, r.wo);
    // SAFETY: the caller's contract.
    unsafe {
        match r.ob {
            4 => avx2::row_taps::<4, 2, S2>(xp, hp, rl, ci, k, &t, w, b, dst, plane, wo),
            3 => avx2::row_taps::<3, 3, S2>(xp, hp, rl, ci, k, &t, w, b, dst, plane, wo),
            _ => avx2::row_taps::<1, 8, S2>(xp, hp, rl, ci, k, &t, w, b, dst, plane, wo),
        }
    }
}

/// A sample's input with its padding materialised, as a kernel reads it: `hp` rows of
/// `rowlen` floats per channel (`odd`: where a stride-2 row's odd columns start, else 0).
struct Padded {
    buf: Vec<f32>,
    hp: usize,
    rowlen: usize,
    odd: usize,
}

/// One call's work in [`drive`]: output row `y` of a block of `ob` output channels, with
/// the block's packed weights and bias; `dst` points at that row of the block's first
/// channel, `plane` floats between channels, `wo` outputs per row, and no other call
/// writes there.
struct Row<'a> {
    p: &'a Padded,
    y: usize,
    ob: usize,
    w: &'a [f32],
    bias: &'a [f32],
    dst: *mut f32,
    plane: usize,
    wo: usize,
}

/// The loop both direct kernels share: per sample, pad the input once; then one task per
/// `rows_per_task` output rows, each computing every block of output channels of its rows
/// with one `row` call per [`Row`].
fn drive<P, R>(
    conv: &ConvWeights,
    k: usize,
    x: &Tensor,
    (ho, wo): (usize, usize),
    rows_per_task: usize,
    pad: P,
    row: R,
) -> Tensor
where
    P: Fn(&[f32]) -> Padded,
    R: Fn(&Row) + Sync,
{
    let mut out = Tensor::for_overwrite(x.n, conv.c_out, ho, wo);
    let (ob, nb, kk, wp) = pack_weights(conv, k);
    let plane = ho * wo;
    for s in 0..x.n {
        let padded = pad(x.sample(s));
        let optr = super::geom::SendPtr::new(out.sample_mut(s).as_mut_ptr());
        (0..ho.div_ceil(rows_per_task))
            .into_par_iter()
            .for_each(|t| {
                for y in t * rows_per_task..((t + 1) * rows_per_task).min(ho) {
                    for b in 0..nb {
                        let w = &wp[b * kk * ob..(b + 1) * kk * ob];
                        let bias = &conv.bias[b * ob..(b + 1) * ob];
                        // SAFETY: the offset stays inside this sample's output (block b's
                        // first channel, row y < ho); each task owns its rows.
                        let dst = unsafe { optr.get().add(b * ob * plane + y * wo) };
                        row(&Row {
                            p: &padded,
                            y,
                            ob,
                            w,
                            bias,
                            dst,
                            plane,
                            wo,
                        });
                    }
                }
            });
        crate::tensor::recycle(padded.buf);
    }
    out
}

/// Weights regrouped per output-channel block: `[block][c][ky][kx][OB]`; returns
/// (OB, blocks, taps per output, packed weights).
fn pack_weights(conv: &ConvWeights, k: usize) -> (usize, usize, usize, Vec<f32>) {
    let ob = if conv.c_out.is_multiple_of(4) {
        4
    } else if conv.c_out == 3 {
        3
    } else {
        1
    };
    let nb = conv.c_out / ob;
    let kk = conv.c_in * k * k;
    let mut wp = vec![0.0f32; conv.c_out * kk];
    for b in 0..nb {
        for i in 0..kk {
            for j in 0..ob {
                wp[(b * kk + i) * ob + j] = conv.weight[(b * ob + j) * kk + i];
            }
        }
    }
    (ob, nb, kk, wp)
}

pub fn forward(
    conv: &ConvWeights,
    g: &ConvGeom,
    x: &Tensor,
    ymap: &[i32],
    xmap: &[i32],
    ho: usize,
    wo: usize,
) -> Tensor {
    let isa = isa().expect("direct::forward called without a supported ISA");
    forward_isa(isa, conv, g, x, ymap, xmap, ho, wo)
}

/// [`forward`] with a chosen kernel (the caller checks the CPU has it).
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_isa(
    isa: Isa,
    conv: &ConvWeights,
    g: &ConvGeom,
    x: &Tensor,
    ymap: &[i32],
    xmap: &[i32],
    ho: usize,
    wo: usize,
) -> Tensor {
    let k = g.k;
    let pad = |xs: &[f32]| pad_input(xs, x.c, x.h, x.w, g, ymap, xmap, ho, wo);
    drive(conv, k, x, (ho, wo), 2, pad, |r| {
        let (xp, hp, wpad, ci) = (&r.p.buf[..], r.p.hp, r.p.rowlen, conv.c_in);
        let (y, w, bias, dst, plane) = (r.y, r.w, r.bias, r.dst, r.plane);
        // SAFETY: `applicable` checked that the CPU has the kernel's ISA; `drive` hands
        // this call output row y alone; loads stay within the padded buffer thanks to its
        // slack (AVX-512) or are masked (AVX2).
        unsafe {
            match (isa, r.ob) {
                (Isa::Avx512, 4) => {
                    avx512::row::<4, 4>(xp, hp, wpad, ci, k, y, w, bias, dst, plane, wo)
                }
                (Isa::Avx512, 3) => {
                    avx512::row::<3, 6>(xp, hp, wpad, ci, k, y, w, bias, dst, plane, wo)
                }
                (Isa::Avx512, _) => {
                    avx512::row::<1, 8>(xp, hp, wpad, ci, k, y, w, bias, dst, plane, wo)
                }
                (Isa::Avx2, _) => avx2_row::<false>(r, ci, k, y),
            }
        }
    })
}

/// AVX2 + FMA, whatever the widest ISA (the sub-pixel kernel below is written for 8 lanes
/// only; AVX-512 machines run it too).
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| {
            std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::env::var_os("IMPASTO_NO_AVX2").is_none()
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Nearest ×2 upsampling + 3×3 conv (or the stride-2 transposed conv) in its sub-pixel form
/// (`parity[a·2+b]`: the 2×2 conv of the edge-padded input that gives output pixels
/// (2i+a, 2j+b); weights `[c_out][c_in][2][2]`), computed directly: each task makes one
/// output row 2i+a, both column parities at once from the same three shifted input vectors,
/// and interleaves them on the store. The GEMM form wrote its outputs with a column stride
/// of 2 and gathered a patch matrix per row; at the live network's 16→8 and 32→16 channels it
/// ran at a quarter of this speed. None when the CPU lacks AVX2 + FMA.
pub fn sub_pixel_forward(parity: [&ConvWeights; 4], zero_pad: bool, x: &Tensor) -> Option<Tensor> {
    if !has_avx2() {
        return None;
    }
    let (ci, co) = (parity[0].c_in, parity[0].c_out);
    let (h, w) = (x.h, x.w);
    // Packed weights per row parity a and block of OB=2 output channels (one of 1 for an
    // odd count): [a][block][c][r][b·2+t][OB].
    const OB: usize = 2;
    let nb = co.div_ceil(OB);
    let per_block = ci * 2 * 4 * OB;
    let mut wpk = vec![0.0f32; 2 * nb * per_block];
    for a in 0..2 {
        for blk in 0..nb {
            for c in 0..ci {
                for r in 0..2 {
                    for b in 0..2 {
                        for t in 0..2 {
                            for oo in 0..OB {
                                let o = blk * OB + oo;
                                let v = if o < co {
                                    parity[a * 2 + b].weight[((o * ci + c) * 2 + r) * 2 + t]
                                } else {
                                    0.0
                                };
                                wpk[(a * nb + blk) * per_block
                                    + ((c * 2 + r) * 4 + b * 2 + t) * OB
                                    + oo] = v;
                            }
                        }
                    }
                }
            }
        }
    }
    let mut bias = parity[0].bias.clone();
    bias.resize(nb * OB, 0.0);
    let (hp, wp) = (h + 2, w + 2);
    let plane = hp * wp;
    let mut out = Tensor::for_overwrite(x.n, co, 2 * h, 2 * w);
    let oplane = 4 * h * w;
    for s in 0..x.n {
        // The input padded by one pixel: edge-replicated (upsample) or zero (transposed),
        // with slack so the last vectors' loads stay inside the buffer.
        let mut xp = crate::tensor::take_buffer(ci * plane + 32);
        xp[ci * plane..].fill(0.0);
        let xs = x.sample(s);
        xp[..ci * plane]
            .par_chunks_mut(plane)
            .enumerate()
            .for_each(|(c, dstp)| {
                let src = &xs[c * h * w..(c + 1) * h * w];
                for r in 0..hp {
                    let row = &mut dstp[r * wp..(r + 1) * wp];
                    if zero_pad && (r == 0 || r == hp - 1) {
                        row.fill(0.0);
                        continue;
                    }
                    let sy = r.saturating_sub(1).min(h - 1);
                    let srow = &src[sy * w..(sy + 1) * w];
                    row[1..w + 1].copy_from_slice(srow);
                    let (l, rr) = if zero_pad {
                        (0.0, 0.0)
                    } else {
                        (srow[0], srow[w - 1])
                    };
                    row[0] = l;
                    row[w + 1] = rr;
                }
            });
        let optr = super::geom::SendPtr::new(out.sample_mut(s).as_mut_ptr());
        (0..2 * h).into_par_iter().for_each(|task| {
            let (i, a) = (task / 2, task % 2);
            for blk in 0..nb {
                let wblk = &wpk[(a * nb + blk) * per_block..][..per_block];
                let bias = [bias[blk * OB], bias[blk * OB + 1]];
                let valid = (co - blk * OB).min(OB);
                // SAFETY: has_avx2() checked the CPU; loads stay inside `xp` (its slack covers
                // the last row's overrun); this task alone writes output row 2i+a.
                unsafe {
                    let dst = optr.get().add(blk * OB * oplane + (2 * i + a) * 2 * w);
                    sub_pixel::row(
                        xp.as_ptr(),
                        plane,
                        wp,
                        ci,
                        i + a,
                        wblk,
                        bias,
                        dst,
                        oplane,
                        w,
                        valid,
                    );
                }
            }
        });
        crate::tensor::recycle(xp);
    }
    Some(out)
}
