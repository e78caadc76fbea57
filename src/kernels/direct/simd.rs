//! The direct kernels' inner loops, one module per instruction set (AVX-512, AVX2+FMA,
//! and the AVX2 sub-pixel kernel), each with a stand-in elsewhere that is never called
//! (the dispatch in the parent module checks the CPU first). All the ISA-only code of the
//! direct convolutions is here.

#[cfg(target_arch = "x86_64")]
pub(super) mod sub_pixel {
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
pub(super) mod sub_pixel {
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
pub(super) mod avx512 {
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
pub(super) mod avx2 {
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
pub(super) mod avx2 {
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
pub(super) mod avx512 {
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
