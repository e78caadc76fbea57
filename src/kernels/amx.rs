//! 3×3 stride-1 convolutions on Intel's AMX tile unit, in bfloat16 with f32 sums.
//!
//! For fast training only: the frozen loss network's layers and the residual blocks'
//! convolutions, forward and input gradient. Inputs and weights are rounded to bfloat16
//! (8 bits of mantissa), every product is summed in f32. A CPU with AMX (Sapphire Rapids
//! and later) multiplies bf16 tiles at about 16 times its AVX-512 f32 rate.
//!
//! The matrix product is `out[co][pixel] += W[co][ci, tap] · in[ci][pixel + tap]`, tiled as
//! AMX wants it: A (16 output channels × 32 input channels) from weights packed once; B (16
//! channel pairs × 16 pixels of one row) read straight from the input, which is stored as
//! padded planes of channel pairs (`[c/2][h+2p][w+2p]` of two bf16s, zeros or reflection,
//! so one tile row is 16 neighbouring pixels and the rows are a plane apart); C (16
//! channels × 16 pixels, f32) stored straight into the NCHW output. Each output element is
//! summed by one thread in a fixed order, so the result does not depend on the thread
//! count.

use super::Conv2d;
use crate::tensor::{recycle, take_buffer, Tensor};

/// Whether this CPU and OS run AMX bf16 tiles (`IMPASTO_NO_AMX` or `IMPASTO_NO_AVX512` turn
/// it off). On Linux a process must ask the kernel for the tile state first; that is done
/// here, once.
pub fn available() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var_os("IMPASTO_NO_AMX").is_none() && super::direct::has_avx512() && imp::enable()
    })
}

/// The weights of a 3×3 stride-1 convolution packed into AMX A tiles.
#[derive(Clone, Debug)]
pub struct Bf16Conv {
    c_in: usize,
    c_out: usize,
    /// Tile `((cb·9 + tap)·(c_in/32) + kc)` is 16 output channels × 32 input channels.
    a: Vec<u16>,
    /// Each output channel's bias repeated 16 times: the C tiles start from it.
    bias: Vec<f32>,
}

/// Round to the nearest bfloat16, ties to even (finite inputs).
#[inline(always)]
fn bf16(v: f32) -> u32 {
    let b = v.to_bits();
    (b + 0x7fff + ((b >> 16) & 1)) >> 16
}

impl Bf16Conv {
    /// `None` unless the layer is 3×3 with whole tiles of channels (32 in, 32 out).
    pub fn new(conv: &Conv2d) -> Option<Self> {
        let (ci, co) = (conv.c_in, conv.c_out);
        if conv.weight.len() != co * ci * 9 || !ci.is_multiple_of(32) || !co.is_multiple_of(32) {
            return None;
        }
        let nkc = ci / 32;
        let mut a = vec![0u16; co * ci * 9];
        for cb in 0..co / 16 {
            for tap in 0..9 {
                for kc in 0..nkc {
                    let tile = ((cb * 9 + tap) * nkc + kc) * 512;
                    for m in 0..16 {
                        for k in 0..32 {
                            let wv = conv.weight[((cb * 16 + m) * ci + kc * 32 + k) * 9 + tap];
                            a[tile + m * 32 + k] = bf16(wv) as u16;
                        }
                    }
                }
            }
        }
        let bias = if conv.bias.len() == co {
            conv.bias
                .iter()
                .flat_map(|&b| std::iter::repeat_n(b, 16))
                .collect()
        } else {
            Vec::new()
        };
        Some(Bf16Conv {
            c_in: ci,
            c_out: co,
            a,
            bias,
        })
    }

    /// Whether [`Bf16Conv::forward`] takes this input (its channels; reflection needs two
    /// pixels each way).
    pub fn fits(&self, x: &Tensor) -> bool {
        x.c == self.c_in && x.h >= 2 && x.w >= 2
    }

    /// The 3×3 convolution of `x` over its padding `pad`: the output is `h + 2p − 2` ×
    /// `w + 2p − 2` (the same size for a padding of 1, the full correlation for 2). `x`
    /// must [fit](Self::fits); call only where [`available`] is true.
    pub fn forward(&self, x: &Tensor, pad: Pad) -> Tensor {
        use rayon::prelude::*;
        assert!(self.fits(x) && available(), "not an AMX layer input");
        let (n, h, w) = (x.n, x.h, x.w);
        let p = pad.width();
        let (hp, wp) = (h + 2 * p, w + 2 * p);
        let (ho, wo) = (hp - 2, wp - 2);
        let pairs = self.c_in / 2;
        let plane = hp * wp;
        // Slack past the last plane: a row's last, partial tile reads up to 15 pixels on.
        let mut buf = take_buffer(n * pairs * plane + 16);
        buf[n * pairs * plane..].fill(0.0);
        buf[..n * pairs * plane]
            .par_chunks_mut(plane)
            .enumerate()
            .for_each(|(i, dst)| {
                let (s, cp) = (i / pairs, i % pairs);
                let a = &x.data[((s * self.c_in) + 2 * cp) * h * w..][..h * w];
                let b = &x.data[((s * self.c_in) + 2 * cp + 1) * h * w..][..h * w];
                pack_pair(a, b, h, w, pad, dst);
            });
        let mut out = Tensor::for_overwrite(n, self.c_out, ho, wo);
        let blocks = self.c_out / 32;
        let out_ptr = SendPtr(out.data.as_mut_ptr());
        let geom = imp::Geom { wp, plane, ho, wo };
        (0..n * blocks).into_par_iter().for_each(|t| {
            let (s, cbp) = (t / blocks, t % blocks);
            let src = &buf[s * pairs * plane..][..pairs * plane + 16];
            // SAFETY: task (s, cbp) writes only output channels 32·cbp..32·cbp+32 of sample
            // s; `src` holds the whole padded input of sample s and the slack; AMX is
            // available (asserted).
            unsafe {
                imp::block(
                    self,
                    src,
                    &geom,
                    cbp,
                    out_ptr.get().add((s * self.c_out + cbp * 32) * ho * wo),
                )
            };
        });
        recycle(buf);
        out
    }
}

/// How the input planes are padded for [`Bf16Conv::forward`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pad {
    /// Zeros, this many pixels each way (1 or 2).
    Zero(usize),
    /// Reflection, one pixel each way (PyTorch's `ReflectionPad2d(1)`).
    Reflect,
}

impl Pad {
    fn width(self) -> usize {
        match self {
            Pad::Zero(p) => {
                assert!((1..=2).contains(&p), "zero padding of 1 or 2");
                p
            }
            Pad::Reflect => 1,
        }
    }
}

/// Two channel planes into one padded plane of bf16 pairs (stored as f32 bits).
fn pack_pair(a: &[f32], b: &[f32], h: usize, w: usize, pad: Pad, dst: &mut [f32]) {
    let p = pad.width();
    let wp = w + 2 * p;
    dst[..p * wp].fill(0.0);
    dst[(h + p) * wp..].fill(0.0);
    for y in 0..h {
        let row = &mut dst[(y + p) * wp..][..wp];
        row[..p].fill(0.0);
        row[p + w..].fill(0.0);
        let (ra, rb) = (&a[y * w..][..w], &b[y * w..][..w]);
        for ((d, &va), &vb) in row[p..p + w].iter_mut().zip(ra).zip(rb) {
            *d = f32::from_bits(bf16(va) | (bf16(vb) << 16));
        }
        if pad == Pad::Reflect {
            row[0] = row[2];
            row[w + 1] = row[w - 1];
        }
    }
    if pad == Pad::Reflect {
        dst.copy_within(2 * wp..3 * wp, 0);
        dst.copy_within((h - 1) * wp..h * wp, (h + 1) * wp);
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the tasks that share it write disjoint elements.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod imp {
    use super::Bf16Conv;
    use std::arch::asm;

    /// CPUID says AMX-TILE and AMX-BF16, and the kernel grants this process the tile data.
    pub fn enable() -> bool {
        // Leaf 7 exists on every x86_64 CPU that has AVX-512 (checked first).
        let ebx_edx = std::arch::x86_64::__cpuid_count(7, 0);
        let (tile, bf16) = (ebx_edx.edx & (1 << 24) != 0, ebx_edx.edx & (1 << 22) != 0);
        if !(tile && bf16) {
            return false;
        }
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl with these arguments only changes this process's permissions.
        unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            ) == 0
        }
    }

    /// Eight tiles of 16 rows × 64 bytes: C in 0–3, A in 4–5, B in 6–7.
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    const CONFIG: Config = {
        let mut c = [0u8; 64];
        c[0] = 1; // palette 1
        let mut t = 0;
        while t < 8 {
            c[16 + 2 * t] = 64;
            c[48 + t] = 16;
            t += 1;
        }
        Config(c)
    };

    macro_rules! load {
        ($tile:literal, $ptr:expr, $stride:expr) => {
            asm!(concat!("tileloadd tmm", $tile, ", [{p} + {s}*1]"),
                 p = in(reg) $ptr, s = in(reg) $stride, options(nostack, readonly, preserves_flags))
        };
    }
    macro_rules! store {
        ($tile:literal, $ptr:expr, $stride:expr) => {
            asm!(concat!("tilestored [{p} + {s}*1], tmm", $tile),
                 p = in(reg) $ptr, s = in(reg) $stride, options(nostack, preserves_flags))
        };
    }
    macro_rules! dot {
        ($c:literal, $a:literal, $b:literal) => {
            asm!(
                concat!("tdpbf16ps tmm", $c, ", tmm", $a, ", tmm", $b),
                options(nostack, nomem, preserves_flags)
            )
        };
    }

    /// Where a sample's padded input and output planes are.
    pub struct Geom {
        /// The padded plane's width and size.
        pub wp: usize,
        pub plane: usize,
        /// The output's height and width.
        pub ho: usize,
        pub wo: usize,
    }

    /// Output channels `32·cbp..+32` of one sample, all pixels: two A tiles (16 channels
    /// each) times two B tiles (16 pixels of a row each) per step, over 9 taps × `c_in/32`
    /// blocks. A row's last tile may be partial: it reads past the row (into the padding,
    /// the next row or the slack) and only its pixels are stored.
    ///
    /// # Safety
    /// AMX must be enabled ([`enable`]); `src` is the sample's padded pair planes
    /// (`c_in/2` planes of `g.plane`) and 16 floats of slack; `out` points at channel
    /// `32·cbp` of the sample's NCHW output, with 32 planes of `ho·wo` floats writable.
    pub unsafe fn block(c: &Bf16Conv, src: &[f32], g: &Geom, cbp: usize, out: *mut f32) {
        let nkc = c.c_in / 32;
        let Geom { wp, plane, ho, wo } = *g;
        assert!(src.len() > c.c_in / 2 * plane + 14 && wo + 2 <= wp && (ho + 2) * wp <= plane);
        let (b_stride, c_stride) = (plane * 4, ho * wo * 4);
        let per_row = wo.div_ceil(16);
        let segs = ho * per_row;
        // Segment `i`: its first pixel in the padded plane and in the output plane, and
        // its length.
        let seg = |i: usize| {
            let (y, x0) = (i / per_row, i % per_row * 16);
            (y * wp + x0, y * wo + x0, (wo - x0).min(16))
        };
        // A partial segment's sums, stored whole and copied out by rows.
        let mut part = [0f32; 256];
        let mut store = |tile: usize, o: usize, len: usize, ch: usize| {
            // SAFETY (of the block): rows `ch..ch+16` of the output exist; a full segment's
            // 16 pixels lie in its row.
            unsafe {
                let dst = out.add(ch * ho * wo + o);
                if len == 16 {
                    match tile {
                        0 => store!("0", dst, c_stride),
                        1 => store!("1", dst, c_stride),
                        2 => store!("2", dst, c_stride),
                        _ => store!("3", dst, c_stride),
                    }
                    return;
                }
                let tmp = part.as_mut_ptr();
                match tile {
                    0 => store!("0", tmp, 64usize),
                    1 => store!("1", tmp, 64usize),
                    2 => store!("2", tmp, 64usize),
                    _ => store!("3", tmp, 64usize),
                }
                for r in 0..16 {
                    std::ptr::copy_nonoverlapping(tmp.add(r * 16), dst.add(r * ho * wo), len);
                }
            }
        };
        // SAFETY: the caller's contract; every tile row read lies inside `src` (its slack
        // included) or the packed weights, every row written inside the caller's 32 output
        // planes.
        unsafe {
            let a0 = c.a.as_ptr().add(2 * cbp * 9 * nkc * 512);
            let a1 = a0.add(9 * nkc * 512);
            let bias = (!c.bias.is_empty()).then(|| c.bias.as_ptr().add(cbp * 32 * 16));
            asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly, preserves_flags));
            let mut i = 0;
            while i < segs {
                // An odd last segment is computed twice (same bits, same place).
                let (p0, o0, l0) = seg(i);
                let (p1, o1, l1) = seg((i + 1).min(segs - 1));
                match bias {
                    Some(b) => {
                        load!("0", b, 64usize);
                        load!("1", b, 64usize);
                        load!("2", b.add(256), 64usize);
                        load!("3", b.add(256), 64usize);
                    }
                    None => {
                        asm!(
                            "tilezero tmm0",
                            "tilezero tmm1",
                            "tilezero tmm2",
                            "tilezero tmm3",
                            options(nostack, nomem, preserves_flags)
                        );
                    }
                }
                for tap in 0..9 {
                    let off = (tap / 3) * wp + tap % 3;
                    for kc in 0..nkc {
                        let at = (tap * nkc + kc) * 512;
                        let b = src.as_ptr().add(kc * 16 * plane + off);
                        load!("4", a0.add(at), 64usize);
                        load!("5", a1.add(at), 64usize);
                        load!("6", b.add(p0), b_stride);
                        load!("7", b.add(p1), b_stride);
                        dot!("0", "4", "6");
                        dot!("1", "4", "7");
                        dot!("2", "5", "6");
                        dot!("3", "5", "7");
                    }
                }
                store(0, o0, l0, 0);
                store(1, o1, l1, 0);
                store(2, o0, l0, 16);
                store(3, o1, l1, 16);
                i += 2;
            }
            asm!("tilerelease", options(nostack, nomem, preserves_flags));
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod imp {
    use super::Bf16Conv;

    pub fn enable() -> bool {
        false
    }

    pub struct Geom {
        pub wp: usize,
        pub plane: usize,
        pub ho: usize,
        pub wo: usize,
    }

    /// Never called: [`super::available`] is false here.
    pub unsafe fn block(_: &Bf16Conv, _: &[f32], _: &Geom, _: usize, _: *mut f32) {
        unreachable!("AMX is x86-64 Linux only")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{ConvGeom, PadMode};

    fn layer(ci: usize, co: usize, seed: u64) -> Conv2d {
        let mut r = crate::rng::Rng::new(seed);
        let w = (0..co * ci * 9).map(|_| r.normal() as f32 * 0.05).collect();
        let b = (0..co).map(|_| r.normal() as f32).collect();
        Conv2d::new(co, ci, 3, w, Some(b))
    }

    /// The AMX layer against the exact f32 one, for every padding it takes, on widths that
    /// end in partial tiles and odd tile counts: the difference is bf16 rounding of the
    /// inputs and weights (relative 2⁻⁹ each), an rms far below 1% of the output's spread.
    #[test]
    fn amx_convolution_matches_the_exact_one_to_bf16_rounding() {
        if !available() {
            eprintln!("no AMX on this CPU: nothing to compare");
            return;
        }
        let cases = [
            (64, 64, 2, 5, 32, Pad::Zero(1)),
            (32, 96, 1, 3, 16, Pad::Zero(1)),
            (128, 32, 3, 16, 48, Pad::Zero(1)),
            (64, 32, 2, 7, 20, Pad::Zero(1)),
            (32, 64, 2, 6, 30, Pad::Zero(2)),
            (128, 128, 1, 32, 32, Pad::Zero(2)),
            (64, 64, 2, 9, 13, Pad::Reflect),
            (128, 128, 1, 32, 32, Pad::Reflect),
        ];
        for (ci, co, n, h, w, pad) in cases {
            let conv = layer(ci, co, (ci * co) as u64);
            let amx = Bf16Conv::new(&conv).expect("whole tiles");
            let mut r = crate::rng::Rng::new(7);
            let mut x = Tensor::zeros(n, ci, h, w);
            x.data
                .iter_mut()
                .for_each(|v| *v = (r.normal() as f32).max(0.0));
            let got = amx.forward(&x, pad);
            let g = match pad {
                Pad::Zero(p) => ConvGeom::simple(3, 1, p, PadMode::Zero),
                Pad::Reflect => ConvGeom::simple(3, 1, 1, PadMode::Reflect),
            };
            let want = conv.forward_exact(&x, &g);
            assert_eq!(got.shape(), want.shape(), "{ci}->{co} {h}x{w} {pad:?}");
            let spread =
                (want.data.iter().map(|v| v * v).sum::<f32>() / want.data.len() as f32).sqrt();
            let diff: Vec<f32> = got
                .data
                .iter()
                .zip(&want.data)
                .map(|(a, b)| a - b)
                .collect();
            let rms = (diff.iter().map(|d| d * d).sum::<f32>() / diff.len() as f32).sqrt();
            let worst = diff.iter().fold(0.0f32, |m, d| m.max(d.abs()));
            let case = format!("{ci}->{co} {h}x{w} {pad:?}");
            assert!(rms < 0.004 * spread, "{case}: rms {rms}, spread {spread}");
            assert!(worst < 0.02 * spread, "{case}: {worst}, spread {spread}");
            assert!(worst > 0.0, "bf16 rounding should show");
        }
    }

    #[test]
    fn layers_without_whole_tiles_are_left_to_the_f32_kernels() {
        assert!(Bf16Conv::new(&layer(3, 64, 1)).is_none());
        assert!(Bf16Conv::new(&layer(64, 3, 1)).is_none());
        assert!(Bf16Conv::new(&layer(64, 48, 1)).is_none());
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(bf16(1.0), 0x3f80);
        // 1 + 2⁻⁸ is halfway between 1 and 1 + 2⁻⁷: ties go to the even 1.
        assert_eq!(bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16(-2.0), 0xc000);
    }
}
