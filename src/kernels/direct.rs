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

#[cfg(target_arch = "x86_64")]
mod sub_pixel {
    use std::arch::x86_64::*;

    /// One output row of the sub-pixel convolution for two output channels (`valid` of them
    /// stored), 16 input columns (32 output pixels) at a time.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn row(
        xp: *const f32,
        plane: usize,
        wp: usize,
        c_in: usize,
        r0: usize,
        w: &[f32],
        bias: [f32; 2],
        dst: *mut f32,
        oplane: usize,
        width: usize,
        valid: usize,
    ) {
        // SAFETY: the caller checked AVX2 + FMA, that `xp` holds `c_in` planes of
        // `plane` floats plus 32 of slack (every load below starts at most 2 + 15 floats past
        // a row's data), and that `dst` is this task's output row for `valid` channels.
        unsafe {
            let mut j0 = 0;
            while j0 < width {
                // acc[o][b][v]: channel o, column parity b, vector v of 8 input columns.
                let mut acc = [[[_mm256_setzero_ps(); 2]; 2]; 2];
                for (o, ao) in acc.iter_mut().enumerate() {
                    let b = _mm256_set1_ps(bias[o]);
                    for ab in ao.iter_mut() {
                        for v in ab.iter_mut() {
                            *v = b;
                        }
                    }
                }
                for c in 0..c_in {
                    for r in 0..2 {
                        let p = xp.add(c * plane + (r0 + r) * wp + j0);
                        let mut xv = [[_mm256_setzero_ps(); 3]; 2];
                        for (v, xvv) in xv.iter_mut().enumerate() {
                            for (d, x) in xvv.iter_mut().enumerate() {
                                *x = _mm256_loadu_ps(p.add(8 * v + d));
                            }
                        }
                        let wi = (c * 2 + r) * 8;
                        for (o, ao) in acc.iter_mut().enumerate() {
                            for b in 0..2 {
                                for t in 0..2 {
                                    let wv =
                                        _mm256_set1_ps(*w.get_unchecked(wi + (b * 2 + t) * 2 + o));
                                    for v in 0..2 {
                                        ao[b][v] = _mm256_fmadd_ps(wv, xv[v][b + t], ao[b][v]);
                                    }
                                }
                            }
                        }
                    }
                }
                for (o, ao) in acc.iter().enumerate().take(valid) {
                    // v indexes both parities' accumulators
                    #[allow(clippy::needless_range_loop)]
                    for v in 0..2 {
                        let j = j0 + 8 * v;
                        if j >= width {
                            break;
                        }
                        let lo = _mm256_unpacklo_ps(ao[0][v], ao[1][v]);
                        let hi = _mm256_unpackhi_ps(ao[0][v], ao[1][v]);
                        let first = _mm256_permute2f128_ps(lo, hi, 0x20);
                        let second = _mm256_permute2f128_ps(lo, hi, 0x31);
                        let d = dst.add(o * oplane + 2 * j);
                        if j + 8 <= width {
                            _mm256_storeu_ps(d, first);
                            _mm256_storeu_ps(d.add(8), second);
                        } else {
                            let mut tmp = [0.0f32; 16];
                            _mm256_storeu_ps(tmp.as_mut_ptr(), first);
                            _mm256_storeu_ps(tmp.as_mut_ptr().add(8), second);
                            std::ptr::copy_nonoverlapping(tmp.as_ptr(), d, 2 * (width - j));
                        }
                    }
                }
                j0 += 16;
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod sub_pixel {
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn row(
        _: *const f32,
        _: usize,
        _: usize,
        _: usize,
        _: usize,
        _: &[f32],
        _: [f32; 2],
        _: *mut f32,
        _: usize,
        _: usize,
        _: usize,
    ) {
        unreachable!("the sub-pixel kernel needs AVX2")
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// One output row for `OB` output channels, `XB` vectors of 16 pixels at a time.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn row<const OB: usize, const XB: usize>(
        xp: &[f32],
        hp: usize,
        wp: usize,
        c_in: usize,
        k: usize,
        y: usize,
        w: &[f32],
        bias: &[f32],
        dst: *mut f32,
        plane: usize,
        wo: usize,
    ) {
        // SAFETY: the caller checked AVX-512F; `xp` carries 16 floats of slack past its
        // last padded row so every (masked) load stays inside it; `dst` is valid for this
        // output row of `OB` channels and written by no other task.
        unsafe {
            let xptr = xp.as_ptr();
            let mut x0 = 0;
            while x0 < wo {
                let mut masks = [0u16; XB];
                for (v, m) in masks.iter_mut().enumerate() {
                    let start = x0 + v * 16;
                    let n = wo.saturating_sub(start).min(16);
                    *m = if n == 16 {
                        0xffff
                    } else {
                        ((1u32 << n) - 1) as u16
                    };
                }
                let mut acc = [[_mm512_setzero_ps(); XB]; OB];
                for (o, a) in acc.iter_mut().enumerate() {
                    let b = _mm512_set1_ps(bias[o]);
                    for v in a.iter_mut() {
                        *v = b;
                    }
                }
                let mut wi = 0;
                for c in 0..c_in {
                    let cbase = c * hp * wp;
                    for ky in 0..k {
                        let rbase = xptr.add(cbase + (y + ky) * wp + x0);
                        for kx in 0..k {
                            let mut wv = [_mm512_setzero_ps(); OB];
                            for (o, wvo) in wv.iter_mut().enumerate() {
                                *wvo = _mm512_set1_ps(*w.get_unchecked(wi + o));
                            }
                            wi += OB;
                            for v in 0..XB {
                                let xv = _mm512_maskz_loadu_ps(masks[v], rbase.add(kx + v * 16));
                                for o in 0..OB {
                                    acc[o][v] = _mm512_fmadd_ps(wv[o], xv, acc[o][v]);
                                }
                            }
                        }
                    }
                }
                for (o, a) in acc.iter().enumerate() {
                    for (v, &val) in a.iter().enumerate() {
                        if masks[v] != 0 {
                            _mm512_mask_storeu_ps(dst.add(o * plane + x0 + v * 16), masks[v], val);
                        }
                    }
                }
                x0 += XB * 16;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Where an output row's taps are in the prepared input: padded row `row0 + ky`, and
    /// column `x + kx` of it (stride 1) or, with `S2` (stride 2, column-deinterleaved rows
    /// whose odd half starts at `odd`), `x + kx/2` of the even or odd half. `S2` is a const
    /// parameter so that the stride-1 instance keeps its plain `kx` offsets (a table lookup
    /// there cost the 9×9 layers 2–5%: the loop is short of load slots).
    pub struct Taps {
        pub row0: usize,
        pub odd: usize,
    }

    /// One output row for `OB` output channels, `XB` vectors of 8 pixels at a time; the
    /// row's tail is handled with masked loads and stores.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn row_taps<const OB: usize, const XB: usize, const S2: bool>(
        xp: &[f32],
        hp: usize,
        wp: usize,
        c_in: usize,
        k: usize,
        taps: &Taps,
        w: &[f32],
        bias: &[f32],
        dst: *mut f32,
        plane: usize,
        wo: usize,
    ) {
        // SAFETY: the caller checked AVX2 and FMA; every load of a vector that would run
        // past the padded row's end is masked (a masked-off lane is never read), and `xp`
        // holds `c_in` planes of `hp × wp` floats; `dst` is valid for this output row of `OB`
        // channels and written by no other task.
        unsafe {
            debug_assert!(xp.len() >= c_in * hp * wp);
            let xptr = xp.as_ptr();
            let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let mut x0 = 0;
            while x0 < wo {
                let mut masks = [_mm256_setzero_si256(); XB];
                let mut full = [false; XB];
                let mut any = [false; XB];
                for v in 0..XB {
                    let n = wo.saturating_sub(x0 + v * 8).min(8);
                    masks[v] = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lane);
                    full[v] = n == 8;
                    any[v] = n > 0;
                }
                let mut acc = [[_mm256_setzero_ps(); XB]; OB];
                for (o, a) in acc.iter_mut().enumerate() {
                    let b = _mm256_set1_ps(bias[o]);
                    for v in a.iter_mut() {
                        *v = b;
                    }
                }
                let all_full = full.iter().all(|&f| f);
                let mut wi = 0;
                for c in 0..c_in {
                    let cbase = c * hp * wp;
                    for ky in 0..k {
                        let rbase = xptr.add(cbase + (taps.row0 + ky) * wp + x0);
                        for kx in 0..k {
                            let off = if S2 { kx / 2 + (kx % 2) * taps.odd } else { kx };
                            let mut xv = [_mm256_setzero_ps(); XB];
                            for v in 0..XB {
                                xv[v] = if all_full {
                                    _mm256_loadu_ps(rbase.add(off + v * 8))
                                } else {
                                    _mm256_maskload_ps(rbase.add(off + v * 8), masks[v])
                                };
                            }
                            for (o, a) in acc.iter_mut().enumerate() {
                                let wv = _mm256_set1_ps(*w.get_unchecked(wi + o));
                                for (av, &xvv) in a.iter_mut().zip(&xv) {
                                    *av = _mm256_fmadd_ps(wv, xvv, *av);
                                }
                            }
                            wi += OB;
                        }
                    }
                }
                for (o, a) in acc.iter().enumerate() {
                    for (v, &val) in a.iter().enumerate() {
                        let p = dst.add(o * plane + x0 + v * 8);
                        if full[v] {
                            _mm256_storeu_ps(p, val);
                        } else if any[v] {
                            _mm256_maskstore_ps(p, masks[v], val);
                        }
                    }
                }
                x0 += XB * 8;
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx2 {
    pub struct Taps {
        pub row0: usize,
        pub odd: usize,
    }

    #[allow(clippy::too_many_arguments)]
    pub unsafe fn row_taps<const OB: usize, const XB: usize, const S2: bool>(
        _: &[f32],
        _: usize,
        _: usize,
        _: usize,
        _: usize,
        _: &Taps,
        _: &[f32],
        _: &[f32],
        _: *mut f32,
        _: usize,
        _: usize,
    ) {
        unreachable!("direct kernel needs AVX2")
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn row<const OB: usize, const XB: usize>(
        _: &[f32],
        _: usize,
        _: usize,
        _: usize,
        _: usize,
        _: usize,
        _: &[f32],
        _: &[f32],
        _: *mut f32,
        _: usize,
        _: usize,
    ) {
        unreachable!("direct kernel needs AVX-512")
    }
}
