//! 2-D convolution as blocked im2col + GEMM (the `gemm` crate), with padding, nearest
//! upsampling and zero insertion (transposed convolution) folded into the im2col indexing,
//! so no padded or upsampled copy of the input is ever materialised.
//!
//! The output pixels of one image are cut into blocks of a few hundred pixels; each block
//! gathers its patch matrix (`K × n`, a cache-sized buffer that lives in a thread-local
//! scratch) and multiplies it with the weight matrix straight into the output tensor. Blocks
//! run in parallel on rayon, so both cores are busy and memory stays bounded at any image size.

pub use crate::kernels::geom::{flip_transpose, ConvGeom, ConvGrad, ConvWeights, PadMode};
pub(crate) use crate::kernels::geom::{gather, SendPtr};
use crate::tensor::Tensor;
use rayon::prelude::*;
use std::cell::RefCell;

/// A convolution layer's weights, prepared for the GEMM: `[c_out][c_in·k·k]`.
#[derive(Clone, Debug)]
pub struct Conv2d {
    w: ConvWeights,
    /// Winograd-transformed weights, made on first use by a 3×3 stride-1 layer.
    winograd: std::sync::OnceLock<super::winograd::Winograd>,
}

impl std::ops::Deref for Conv2d {
    type Target = ConvWeights;
    fn deref(&self) -> &ConvWeights {
        &self.w
    }
}

/// The fewest pixels (over the batch) that run on Winograd: 64 tiles of 4×4.
const WINOGRAD_MIN_PIXELS: usize = 32 * 32;

impl Conv2d {
    /// From an OIHW weight (PyTorch `Conv2d` layout) and an optional bias.
    pub fn new(
        c_out: usize,
        c_in: usize,
        k: usize,
        weight: Vec<f32>,
        bias: Option<Vec<f32>>,
    ) -> Self {
        assert_eq!(weight.len(), c_out * c_in * k * k);
        let bias = bias.unwrap_or_else(|| vec![0.0; c_out]);
        assert_eq!(bias.len(), c_out);
        Conv2d {
            w: ConvWeights {
                c_in,
                c_out,
                weight,
                bias,
            },
            winograd: Default::default(),
        }
    }

    /// From an IOHW weight (PyTorch/ONNX `ConvTranspose` layout): the equivalent forward
    /// convolution over the zero-inserted input uses the flipped, transposed kernel.
    pub fn from_transposed(
        c_in: usize,
        c_out: usize,
        k: usize,
        w: &[f32],
        bias: Option<Vec<f32>>,
    ) -> Self {
        assert_eq!(w.len(), c_in * c_out * k * k);
        Conv2d::new(c_out, c_in, k, flip_transpose(w, c_in, c_out, k), bias)
    }

    pub fn forward(&self, x: &Tensor, g: &ConvGeom) -> Tensor {
        self.forward_in(x, g, true)
    }

    /// Without Winograd: the direct or im2col kernels, whose rounding error is several
    /// times smaller. Training records its forward pass this way (see
    /// `Transformer::forward_train`).
    pub fn forward_exact(&self, x: &Tensor, g: &ConvGeom) -> Tensor {
        self.forward_in(x, g, false)
    }

    fn forward_in(&self, x: &Tensor, g: &ConvGeom, winograd: bool) -> Tensor {
        assert_eq!(
            x.c, self.c_in,
            "convolution expects {} input channels, got {}",
            self.c_in, x.c
        );
        let (ho, wo) = g.out_size(x.h, x.w);
        // Winograd where the batch holds enough 4×4 tiles to fill its GEMMs' blocks (the
        // tiles of all samples are pooled: VGG's conv4 layers at 128² crops, 16×16 planes,
        // qualify at batch 4); below that its 36 narrow GEMMs lose to one im2col + GEMM.
        if winograd
            && x.n * x.h * x.w >= WINOGRAD_MIN_PIXELS
            && super::winograd::applicable(self, g)
        {
            return self
                .winograd
                .get_or_init(|| super::winograd::Winograd::new(self))
                .forward(x, g.mode);
        }
        let mut out = Tensor::for_overwrite(x.n, self.c_out, ho, wo);
        let ymap = g.index_map(x.h, ho, g.pad[0]);
        let xmap = g.index_map(x.w, wo, g.pad[2]);
        // The exact (training) path is im2col + GEMM on every ISA, or for few output
        // channels the direct kernel of `narrow` (float64 across input channels): the fast
        // direct kernels sum each output's taps in one running f32 sum, and over PyTorch's
        // 5-step training golden that drift reached 1.5e-3 (limit 1e-3) with the AVX2
        // kernel and with the AVX-512 one alike. Inference takes them on either ISA.
        if !winograd && super::narrow::applicable(self, g) {
            return super::narrow::forward(self, g, x);
        }
        if winograd && super::direct::applicable(self, g) {
            return super::direct::forward(self, g, x, &ymap, &xmap, ho, wo);
        }
        if winograd && super::direct::applicable_stride2(self, g) {
            return super::direct::forward_stride2(self, g, x, &ymap, &xmap, ho, wo);
        }
        for b in 0..x.n {
            conv_sample(
                self,
                g,
                x.sample(b),
                x.h,
                x.w,
                &ymap,
                &xmap,
                out.sample_mut(b),
                ho,
                wo,
            );
        }
        out
    }
}

/// Nearest ×2 upsampling followed by a 3×3 reflection-padded convolution, computed without
/// the upsampling: each of the four output parities is a 2×2 convolution of the original
/// input (edge-replicated, which is what reflection of the upsampled image amounts to), with
/// the 3×3 taps that land on the same source pixel summed. 16 instead of 36 multiply-adds
/// per output pixel and channel, and no upsampled copy.
///
/// The same decomposition serves the `seed` network's stride-2 transposed convolution (k 3,
/// pads 0/1): there parity 0 of a dimension takes taps 2 and 0 of the (flipped) kernel from
/// source offsets −1 and 0, parity 1 takes tap 1 from offset 0, with zero padding. That is 16
/// multiply-adds instead of the 36 a convolution over the zero-inserted input costs.
#[derive(Clone, Debug)]
pub struct UpsampleConv {
    parity: [Conv2d; 4],
    zero_pad: bool,
}

/// Taps (of 3) of the original kernel that land on source offset `r` (of 2: offsets a−1 and
/// a) for output parity `a`.
pub(super) fn sub_pixel_taps(kind: SubPixel, a: usize, r: usize) -> &'static [usize] {
    match (kind, a, r) {
        (SubPixel::Upsample, 0, 0) => &[0],
        (SubPixel::Upsample, 0, _) => &[1, 2],
        (SubPixel::Upsample, _, 0) => &[0, 1],
        (SubPixel::Upsample, _, _) => &[2],
        (SubPixel::Transposed, 0, 0) => &[0],
        (SubPixel::Transposed, 0, _) => &[2],
        (SubPixel::Transposed, _, 0) => &[1],
        (SubPixel::Transposed, _, _) => &[],
    }
}

/// Which layer an [`UpsampleConv`] replaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubPixel {
    /// Nearest ×2 upsample, then 3×3 reflection-padded conv (johnson).
    Upsample,
    /// ConvTranspose k3 s2 pads (0, 1), given as its flipped forward conv (seed).
    Transposed,
}

impl UpsampleConv {
    pub fn new(conv: &Conv2d, k: usize, kind: SubPixel) -> Self {
        assert_eq!(k, 3, "sub-pixel upsampling is derived for 3x3 kernels");
        // Taps (of 3) that fall on source offset r (of 2: offsets a-1 and a) for parity a.
        let taps = |a: usize, r: usize| sub_pixel_taps(kind, a, r);
        let (ci, co) = (conv.c_in, conv.c_out);
        let parity = std::array::from_fn(|p| {
            let (a, b) = (p / 2, p % 2);
            let mut w = vec![0.0f32; co * ci * 4];
            for o in 0..co {
                for c in 0..ci {
                    for r in 0..2 {
                        for s in 0..2 {
                            let mut acc = 0.0;
                            for &ky in taps(a, r) {
                                for &kx in taps(b, s) {
                                    acc += conv.weight[((o * ci + c) * 3 + ky) * 3 + kx];
                                }
                            }
                            w[((o * ci + c) * 2 + r) * 2 + s] = acc;
                        }
                    }
                }
            }
            Conv2d::new(co, ci, 2, w, Some(conv.bias.clone()))
        });
        UpsampleConv {
            parity,
            zero_pad: kind == SubPixel::Transposed,
        }
    }

    /// Backward in the sub-pixel form ([`super::sub_pixel_grad`]). `dw` comes back in the
    /// original conv's `[c_out][c_in][3][3]` layout.
    pub fn backward(&self, x: &Tensor, dy: &Tensor, want_dx: bool) -> ConvGrad {
        let kind = if self.zero_pad {
            SubPixel::Transposed
        } else {
            SubPixel::Upsample
        };
        super::sub_pixel_grad::backward(&self.parity, kind, x, dy, want_dx)
    }

    /// Inference: the direct AVX2 kernel where the CPU has it ([`forward`] otherwise, and
    /// for training, whose golden was fixed with the GEMM form's summation order).
    ///
    /// [`forward`]: UpsampleConv::forward
    pub fn forward_fast(&self, x: &Tensor) -> Tensor {
        super::direct::sub_pixel_forward(self.parity.each_ref().map(|c| &**c), self.zero_pad, x)
            .unwrap_or_else(|| self.forward(x))
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let (h, w) = (x.h, x.w);
        let (ci, co) = (self.parity[0].c_in, self.parity[0].c_out);
        let mut out = Tensor::for_overwrite(x.n, co, 2 * h, 2 * w);
        let kk = ci * 4;
        for s in 0..x.n {
            let xs = x.sample(s);
            let optr = SendPtr(out.sample_mut(s).as_mut_ptr());
            // One task per (parity, input row): gather the 2×2 patches of that row, then one
            // GEMM writes the parity's pixels of output row 2i+a in place (column stride 2).
            (0..4 * h).into_par_iter().for_each(|task| {
                let (p, i) = (task / h, task % h);
                let (a, b) = (p / 2, p % 2);
                let conv = &self.parity[p];
                SCRATCH.with(|sc| {
                    let mut col = sc.borrow_mut();
                    if col.len() < kk * w {
                        col.resize(kk * w, 0.0);
                    }
                    let col = &mut col[..kk * w];
                    for c in 0..ci {
                        let plane = &xs[c * h * w..(c + 1) * h * w];
                        for r in 0..2 {
                            let sy = (i + r + a) as isize - 1;
                            let outside = sy < 0 || sy >= h as isize;
                            let sy = sy.clamp(0, h as isize - 1) as usize;
                            let src = &plane[sy * w..(sy + 1) * w];
                            for t in 0..2 {
                                let row = &mut col[((c * 2 + r) * 2 + t) * w..][..w];
                                if outside && self.zero_pad {
                                    row.fill(0.0);
                                    continue;
                                }
                                // column j reads src[j + t + b - 1], the edge clamped
                                // (upsample) or zero (transposed)
                                let edge = |v: f32| if self.zero_pad { 0.0 } else { v };
                                match t + b {
                                    0 => {
                                        row[0] = edge(src[0]);
                                        row[1..].copy_from_slice(&src[..w - 1]);
                                    }
                                    1 => row.copy_from_slice(src),
                                    _ => {
                                        row[..w - 1].copy_from_slice(&src[1..]);
                                        row[w - 1] = edge(src[w - 1]);
                                    }
                                }
                            }
                        }
                    }
                    let plane_out = 4 * h * w;
                    // SAFETY: each task owns output row 2i+a, columns of parity b.
                    unsafe {
                        let dst = optr.get().add((2 * i + a) * 2 * w + b);
                        for o in 0..co {
                            let d = dst.add(o * plane_out);
                            for j in 0..w {
                                *d.add(2 * j) = conv.bias[o];
                            }
                        }
                        gemm::gemm(
                            co,
                            w,
                            kk,
                            dst,
                            2,
                            plane_out as isize,
                            true,
                            conv.weight.as_ptr(),
                            1,
                            kk as isize,
                            col.as_ptr(),
                            1,
                            w as isize,
                            1.0,
                            1.0,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        );
                    }
                });
            });
        }
        out
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

#[allow(clippy::too_many_arguments)]
fn conv_sample(
    conv: &Conv2d,
    g: &ConvGeom,
    x: &[f32],
    h: usize,
    w: usize,
    ymap: &[i32],
    xmap: &[i32],
    out: &mut [f32],
    ho: usize,
    wo: usize,
) {
    let k = g.k;
    let kk = conv.c_in * k * k;
    let np = ho * wo;
    // Block of output pixels: keep the patch matrix around 256 KiB, at least 64 pixels.
    let block = ((65536 / kk.max(1)).clamp(64, 4096) / 16 * 16).max(16);
    let n_blocks = np.div_ceil(block);
    let out_ptr = SendPtr(out.as_mut_ptr());
    (0..n_blocks).into_par_iter().for_each(|bi| {
        let p0 = bi * block;
        let p1 = (p0 + block).min(np);
        let n = p1 - p0;
        SCRATCH.with(|s| {
            let mut col = s.borrow_mut();
            if col.len() < kk * n {
                col.resize(kk * n, 0.0);
            }
            let col = &mut col[..kk * n];
            gather(g, x, conv.c_in, h, w, ymap, xmap, wo, p0, p1, col);
            // out[:, p0..p1] = W · col + bias
            // SAFETY: this task owns pixel columns p0..p1 of every output channel; the output
            // holds c_out·np floats, so every offset below is in bounds.
            let dst = unsafe { out_ptr.get().add(p0) };
            for o in 0..conv.c_out {
                // SAFETY: row o, columns p0..p0+n: inside the output and owned by this task.
                let row = unsafe { std::slice::from_raw_parts_mut(dst.add(o * np), n) };
                row.fill(conv.bias[o]);
            }
            // SAFETY: the GEMM reads W (c_out × kk) and col (kk × n) inside their slices and
            // writes the c_out × n block of this task's columns (row stride np).
            unsafe {
                gemm::gemm(
                    conv.c_out,
                    n,
                    kk,
                    dst,
                    1,
                    np as isize,
                    true,
                    conv.weight.as_ptr(),
                    1,
                    kk as isize,
                    col.as_ptr(),
                    1,
                    n as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        });
    });
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The network's upsampling layer: nearest ×2, then a reflect-padded 3×3.
    pub(crate) fn upsample2() -> ConvGeom {
        ConvGeom {
            upsample: 2,
            ..ConvGeom::simple(3, 1, 1, PadMode::Reflect)
        }
    }

    /// A zero-padded `k×k` over the input dilated ×2 (a transposed convolution's form).
    pub(crate) fn dilated(k: usize, pad: [usize; 4]) -> ConvGeom {
        ConvGeom {
            pad,
            dilate: 2,
            ..ConvGeom::simple(k, 1, 0, PadMode::Zero)
        }
    }

    /// Straightforward reference: materialise the resampled, padded input and convolve.
    pub(crate) fn naive(conv: &Conv2d, g: &ConvGeom, x: &Tensor) -> Tensor {
        let (ho, wo) = g.out_size(x.h, x.w);
        let ymap = g.index_map(x.h, ho, g.pad[0]);
        let xmap = g.index_map(x.w, wo, g.pad[2]);
        let k = g.k;
        let mut out = Tensor::zeros(x.n, conv.c_out, ho, wo);
        for b in 0..x.n {
            for o in 0..conv.c_out {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut acc = conv.bias[o] as f64;
                        for c in 0..conv.c_in {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let sy = ymap[oy * k + ky];
                                    let sx = xmap[ox * k + kx];
                                    if sy >= 0 && sx >= 0 {
                                        let v = x.data[((b * x.c + c) * x.h + sy as usize) * x.w
                                            + sx as usize];
                                        let wv =
                                            conv.weight[((o * conv.c_in + c) * k + ky) * k + kx];
                                        acc += v as f64 * wv as f64;
                                    }
                                }
                            }
                        }
                        out.data[((b * conv.c_out + o) * ho + oy) * wo + ox] = acc as f32;
                    }
                }
            }
        }
        out
    }

    fn pseudo(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn reflect_matches_pytorch_semantics() {
        // ReflectionPad of [0,1,2,3] by 2: 2 1 | 0 1 2 3 | 2 1
        use crate::kernels::geom::reflect;
        let got: Vec<isize> = (-2..6).map(|l| reflect(l, 4)).collect();
        assert_eq!(got, vec![2, 1, 0, 1, 2, 3, 2, 1]);
        assert_eq!(reflect(-3, 1), 0);
    }

    #[test]
    fn blocked_gemm_conv_matches_naive_for_every_geometry() {
        let geoms = [
            ConvGeom::simple(3, 1, 1, PadMode::Reflect),
            ConvGeom::simple(9, 1, 4, PadMode::Reflect),
            ConvGeom::simple(3, 2, 1, PadMode::Reflect),
            ConvGeom {
                k: 3,
                stride: 2,
                pad: [0, 1, 0, 1],
                mode: PadMode::Zero,
                upsample: 1,
                dilate: 1,
            },
            upsample2(),
            dilated(3, [2, 3, 2, 3]),
        ];
        for (i, g) in geoms.iter().enumerate() {
            for &(h, w) in &[(7usize, 9usize), (16, 5), (33, 40)] {
                let (ci, co) = (3, 5);
                let x = Tensor::from_vec(2, ci, h, w, pseudo(2 * ci * h * w, i as u32 + 7));
                let conv = Conv2d::new(
                    co,
                    ci,
                    g.k,
                    pseudo(co * ci * g.k * g.k, 3),
                    Some(pseudo(co, 5)),
                );
                let got = conv.forward(&x, g);
                let want = naive(&conv, g, &x);
                assert!(
                    got.rel_error(&want) < 1e-5,
                    "geometry {i} at {h}x{w}: {}",
                    got.rel_error(&want)
                );
            }
        }
    }

    #[test]
    fn subpixel_upsample_conv_matches_upsample_then_conv() {
        for &(h, w) in &[(1usize, 1usize), (2, 3), (6, 5), (17, 20)] {
            let (ci, co) = (4, 3);
            let x = Tensor::from_vec(1, ci, h, w, pseudo(ci * h * w, 21));
            let conv = Conv2d::new(co, ci, 3, pseudo(co * ci * 9, 22), Some(pseudo(co, 23)));
            let g = upsample2();
            let want = naive(&conv, &g, &x);
            let got = UpsampleConv::new(&conv, 3, SubPixel::Upsample).forward(&x);
            assert_eq!(got.shape(), want.shape());
            assert!(
                got.rel_error(&want) < 1e-5,
                "{h}x{w}: {}",
                got.rel_error(&want)
            );
        }
    }

    #[test]
    fn winograd_matches_naive_for_every_size_and_padding() {
        for mode in [PadMode::Reflect, PadMode::Zero, PadMode::Replicate] {
            for &(h, w) in &[
                (1usize, 1usize),
                (2, 2),
                (5, 7),
                (9, 13),
                (33, 40),
                (130, 141),
                // Tile rows of 8 and 16 tiles (runs of 8 and 16 lanes), the last tile of a
                // row half outside.
                (30, 32),
                (21, 62),
                (7, 127),
            ] {
                let (ci, co) = (16, 20);
                let g = ConvGeom::simple(3, 1, 1, mode);
                let x = Tensor::from_vec(1, ci, h, w, pseudo(ci * h * w, (h * w) as u32));
                let conv = Conv2d::new(co, ci, 3, pseudo(co * ci * 9, 31), Some(pseudo(co, 32)));
                assert!(super::super::winograd::applicable(&conv, &g));
                let err = conv.forward(&x, &g).rel_error(&naive(&conv, &g, &x));
                assert!(err < 1e-5, "{mode:?} {h}x{w}: {err}");
            }
        }
    }

    /// A batch's tiles are pooled into blocks that cross sample boundaries (small planes
    /// share a block): every sample must still get its own picture's convolution.
    #[test]
    fn winograd_pools_the_tiles_of_a_batch() {
        for mode in [PadMode::Reflect, PadMode::Zero] {
            for &(n, h, w) in &[
                (3usize, 5usize, 7usize),
                (3, 9, 13),
                (4, 16, 16),
                (2, 33, 40),
                (3, 14, 29),
                (2, 5, 64),
            ] {
                let (ci, co) = (16, 20);
                let g = ConvGeom::simple(3, 1, 1, mode);
                let x = Tensor::from_vec(n, ci, h, w, pseudo(n * ci * h * w, (h * w) as u32));
                let conv = Conv2d::new(co, ci, 3, pseudo(co * ci * 9, 31), Some(pseudo(co, 32)));
                let got = super::super::winograd::Winograd::new(&conv).forward(&x, mode);
                let err = got.rel_error(&naive(&conv, &g, &x));
                assert!(err < 1e-5, "{mode:?} {n}×{h}x{w}: {err}");
            }
        }
    }

    /// Wide layers (VGG16's 64…512 channels) too: the GEMMs inside take other kernel paths
    /// there.
    #[test]
    fn winograd_matches_naive_for_wide_layers() {
        for &(ci, co, h, w) in &[
            (64usize, 64usize, 34usize, 30usize),
            (128, 128, 18, 18),
            (256, 256, 10, 9),
            (512, 512, 6, 6),
            (3, 64, 12, 12),
        ] {
            let g = ConvGeom::simple(3, 1, 1, PadMode::Zero);
            // Sparse, wide-ranging values, like gradients coming back through ReLUs.
            let mut x = Tensor::from_vec(1, ci, h, w, pseudo(ci * h * w, (h * w + ci) as u32));
            for (i, v) in x.data.iter_mut().enumerate() {
                let r = (i as u32).wrapping_mul(2654435761) >> 16;
                *v = if r.is_multiple_of(2) {
                    0.0
                } else {
                    *v * 10f32.powi((r % 7) as i32 - 3)
                };
            }
            let conv = Conv2d::new(co, ci, 3, pseudo(co * ci * 9, 31), Some(pseudo(co, 32)));
            if !super::super::winograd::applicable(&conv, &g) {
                continue;
            }
            let err = conv.forward(&x, &g).rel_error(&naive(&conv, &g, &x));
            eprintln!("winograd {ci}->{co} {h}x{w}: {err:.2e}");
            assert!(err < 1e-5, "{ci}->{co} {h}x{w}: {err}");
        }
    }

    /// Pooled buffers come back with stale contents: fill the pool with NaNs and check that
    /// every kernel still writes every element it hands out.
    #[test]
    fn kernels_never_read_stale_pooled_buffers() {
        let (ci, co, h, w) = (16, 20, 64, 300);
        for _ in 0..2 {
            let poison: Vec<Vec<f32>> = (0..8)
                .map(|i| vec![f32::NAN; (1 << 18) + i * 40_000])
                .collect();
            poison.into_iter().for_each(crate::tensor::recycle);
            let x = Tensor::from_vec(1, ci, h, w, pseudo(ci * h * w, 41));
            let geoms = [
                ConvGeom::simple(3, 1, 1, PadMode::Zero),
                ConvGeom::simple(3, 1, 1, PadMode::Reflect),
                ConvGeom::simple(9, 1, 4, PadMode::Reflect),
                ConvGeom::simple(3, 2, 1, PadMode::Reflect),
            ];
            for g in geoms {
                let conv = Conv2d::new(
                    co,
                    ci,
                    g.k,
                    pseudo(co * ci * g.k * g.k, 42),
                    Some(pseudo(co, 43)),
                );
                let got = conv.forward(&x, &g);
                let err = got.rel_error(&naive(&conv, &g, &x));
                assert!(err < 1e-5, "{g:?}: {err}");
            }
            let conv = Conv2d::new(co, ci, 3, pseudo(co * ci * 9, 44), Some(pseudo(co, 45)));
            let g = upsample2();
            let got = UpsampleConv::new(&conv, 3, SubPixel::Upsample).forward(&x);
            assert!(got.rel_error(&naive(&conv, &g, &x)) < 1e-5);
        }
    }

    #[test]
    fn direct_kernel_covers_every_channel_blocking() {
        for co in [3usize, 4, 5, 8] {
            let g = ConvGeom::simple(9, 1, 4, PadMode::Reflect);
            let x = Tensor::from_vec(1, 8, 21, 37, pseudo(8 * 21 * 37, co as u32));
            let conv = Conv2d::new(co, 8, 9, pseudo(co * 8 * 81, 2), Some(pseudo(co, 4)));
            let got = conv.forward(&x, &g);
            assert!(got.rel_error(&naive(&conv, &g, &x)) < 1e-5, "c_out {co}");
        }
    }

    #[test]
    fn direct_kernels_of_every_isa_this_cpu_has_match_naive() {
        use super::super::direct::{forward_isa, has_avx512, Isa};
        let mut isas = Vec::new();
        if has_avx512() {
            isas.push(Isa::Avx512);
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            isas.push(Isa::Avx2);
        }
        // Say which paths this machine proves: one without AVX-512 never runs that kernel.
        for isa in [Isa::Avx512, Isa::Avx2] {
            if isas.contains(&isa) {
                eprintln!("direct kernel {isa:?}: checked against the naive convolution");
            } else {
                crate::testutil::skip_cpu(
                    "direct_kernels_of_every_isa_this_cpu_has_match_naive",
                    &format!("direct kernel {isa:?}: this CPU lacks it or it is turned off"),
                );
            }
        }
        if isas.is_empty() {
            return;
        }
        // Widths around the vector and block sizes (8·3, 8·4, 16·4 …) and odd ones.
        for isa in isas {
            for (co, ci, w) in [
                (3usize, 8usize, 7usize),
                (8, 3, 24),
                (3, 8, 33),
                (4, 5, 65),
                (5, 8, 40),
                (8, 3, 97),
            ] {
                let g = ConvGeom::simple(9, 1, 4, PadMode::Reflect);
                let x = Tensor::from_vec(2, ci, 11, w, pseudo(2 * ci * 11 * w, (co * w) as u32));
                let conv = Conv2d::new(co, ci, 9, pseudo(co * ci * 81, 2), Some(pseudo(co, 4)));
                let (ho, wo) = g.out_size(x.h, x.w);
                let ymap = g.index_map(x.h, ho, g.pad[0]);
                let xmap = g.index_map(x.w, wo, g.pad[2]);
                let got = forward_isa(isa, &conv, &g, &x, &ymap, &xmap, ho, wo);
                let err = got.rel_error(&naive(&conv, &g, &x));
                assert!(err < 1e-5, "{isa:?} {ci}->{co} width {w}: {err:.2e}");
            }
        }
    }

    #[test]
    fn transposed_conv_matches_scatter_definition() {
        // ConvTranspose2d(stride 2, k 3, pads begin 0 end 1) computed by scattering.
        let (ci, co, k, h, w) = (2, 3, 3, 5, 6);
        let x = Tensor::from_vec(1, ci, h, w, pseudo(ci * h * w, 11));
        let wt = pseudo(ci * co * k * k, 12);
        let (fh, fw) = ((h - 1) * 2 + k, (w - 1) * 2 + k);
        let mut full = vec![0.0f64; co * fh * fw];
        for i in 0..ci {
            for o in 0..co {
                for y in 0..h {
                    for xx in 0..w {
                        for ky in 0..k {
                            for kx in 0..k {
                                full[(o * fh + 2 * y + ky) * fw + 2 * xx + kx] +=
                                    x.data[(i * h + y) * w + xx] as f64
                                        * wt[((i * co + o) * k + ky) * k + kx] as f64;
                            }
                        }
                    }
                }
            }
        }
        // crop: begin 0, end 1 -> output 2h x 2w
        let (ho, wo) = (2 * h, 2 * w);
        let mut want = Tensor::zeros(1, co, ho, wo);
        for o in 0..co {
            for y in 0..ho {
                for xx in 0..wo {
                    want.data[(o * ho + y) * wo + xx] = full[(o * fh + y) * fw + xx] as f32;
                }
            }
        }
        let conv = Conv2d::from_transposed(ci, co, k, &wt, None);
        let sub = UpsampleConv::new(&conv, 3, SubPixel::Transposed).forward(&x);
        assert!(
            sub.rel_error(&want) < 1e-5,
            "sub-pixel transposed: {}",
            sub.rel_error(&want)
        );
        let g = dilated(k, [2, 1, 2, 1]);
        let got = conv.forward(&x, &g);
        assert_eq!(got.shape(), want.shape());
        assert!(got.rel_error(&want) < 1e-5);
    }

    #[test]
    fn direct_sub_pixel_kernel_matches_the_gemm_form() {
        if !super::super::direct::has_avx2() {
            crate::testutil::skip_cpu(
                "direct_sub_pixel_kernel_matches_the_gemm_form",
                "this CPU has no AVX2+FMA (the GEMM form is used)",
            );
            return;
        }
        // Widths around the kernel's 16-column step, odd channel counts, both kinds.
        for kind in [SubPixel::Upsample, SubPixel::Transposed] {
            for (ci, co, h, w) in [
                (16usize, 8usize, 5usize, 16usize),
                (8, 3, 4, 7),
                (5, 16, 3, 33),
                (32, 16, 6, 41),
                (3, 1, 1, 1),
                (4, 5, 2, 24),
            ] {
                let x = Tensor::from_vec(2, ci, h, w, pseudo(2 * ci * h * w, (ci * w) as u32));
                let conv = Conv2d::new(co, ci, 3, pseudo(co * ci * 9, 7), Some(pseudo(co, 8)));
                let up = UpsampleConv::new(&conv, 3, kind);
                let (got, want) = (up.forward_fast(&x), up.forward(&x));
                assert_eq!(got.shape(), want.shape());
                let err = got.rel_error(&want);
                assert!(err < 1e-5, "{kind:?} {ci}->{co} {h}x{w}: {err:.2e}");
            }
        }
    }

    #[test]
    fn direct_stride2_kernel_matches_naive() {
        if !super::super::direct::has_avx2() {
            crate::testutil::skip_cpu(
                "direct_stride2_kernel_matches_naive",
                "this CPU has no AVX2+FMA (stride-2 layers use im2col + GEMM)",
            );
            return;
        }
        // The live twins' downsampling layers and widths around the 8·XB blocks and tails.
        for mode in [PadMode::Reflect, PadMode::Zero] {
            for (ci, co, h, w) in [
                (8usize, 16usize, 9usize, 33usize),
                (16, 32, 6, 16),
                (8, 3, 7, 50),
                (8, 5, 4, 7),
                (16, 8, 5, 65),
            ] {
                let g = ConvGeom::simple(3, 2, 1, mode);
                let x = Tensor::from_vec(2, ci, h, w, pseudo(2 * ci * h * w, (co * w) as u32));
                let conv = Conv2d::new(co, ci, 3, pseudo(co * ci * 9, 5), Some(pseudo(co, 6)));
                assert!(super::super::direct::applicable_stride2(&conv, &g));
                let got = conv.forward(&x, &g);
                let want = naive(&conv, &g, &x);
                assert_eq!(got.shape(), want.shape());
                let err = got.rel_error(&want);
                assert!(err < 1e-5, "{mode:?} {ci}->{co} {h}x{w}: {err:.2e}");
            }
        }
    }
}
