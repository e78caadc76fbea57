//! The hot kernels: convolution, instance norm, pooling. Everything the networks compute
//! goes through here.

/// One kernel body compiled for each vector width: `$avx512` and `$avx2` are `unsafe fn`s
/// with the given arguments that call `$body` (an `#[inline(always)]` function, so it is
/// built with their features) inside a function built for AVX-512F or AVX2. Neither enables
/// fused multiply-add, so plain multiplies and adds give the same bits on every width as on
/// the baseline build (the kernels' tests compare them). Callers choose with
/// [`direct::isa`]; calling one on a CPU without its feature is undefined behaviour.
macro_rules! widths {
    ($body:expr => $avx512:ident, $avx2:ident ($($arg:ident : $ty:ty),* $(,)?)) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        #[allow(clippy::too_many_arguments, unused_unsafe)]
        unsafe fn $avx512($($arg: $ty),*) {
            // SAFETY: the body's own contract, passed on; the caller checked the CPU.
            unsafe { $body($($arg),*) }
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        #[allow(clippy::too_many_arguments, unused_unsafe)]
        unsafe fn $avx2($($arg: $ty),*) {
            // SAFETY: the body's own contract, passed on; the caller checked the CPU.
            unsafe { $body($($arg),*) }
        }
    };
}

pub mod amx;
pub mod conv;
pub mod conv_grad;
pub mod direct;
pub mod geom;
pub mod narrow;
pub mod norm;
pub mod pool;
pub mod shifted_grad;
pub mod sub_pixel_grad;
pub mod winograd;
pub mod winograd_grad;

pub use conv::{Conv2d, ConvGeom, PadMode};

/// Test data: `n` values in [−0.5, 0.5) from `seed`.
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: u64) -> Vec<f32> {
    let mut r = crate::rng::Rng::new(seed);
    (0..n).map(|_| r.f32() - 0.5).collect()
}

/// In-place ReLU, parallel.
pub fn relu(x: &mut [f32]) {
    use rayon::prelude::*;
    x.par_chunks_mut(1 << 14)
        .for_each(|c| c.iter_mut().for_each(|v| *v = v.max(0.0)));
}

/// A matrix operand of [`matmul`]: element `(i, j)` of a `rows × cols` matrix is
/// `data[i·rs + j·cs]` (so a transpose is the same slice with the strides swapped).
#[derive(Clone, Copy)]
pub struct Strided<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

fn fits(len: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    rows == 0 || cols == 0 || (rows - 1) * rs + (cols - 1) * cs < len
}

/// `dst (m × n) = [dst +] lhs (m × k) · rhs (k × n)`: the one safe way into the `gemm`
/// crate for operands that are slices. `dst` is row-major with row stride `dst_rs ≥ n`, so
/// its elements never overlap; every element any operand's strides reach is checked to lie
/// inside its slice (a panic, never an out-of-bounds access).
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: Strided,
    rhs: Strided,
    par: gemm::Parallelism,
) {
    assert!(
        dst_rs >= n || m <= 1,
        "matmul: overlapping destination rows"
    );
    assert!(
        fits(dst.len(), m, n, dst_rs, 1),
        "matmul: destination out of bounds"
    );
    assert!(
        fits(lhs.data.len(), m, k, lhs.rs, lhs.cs),
        "matmul: lhs out of bounds"
    );
    assert!(
        fits(rhs.data.len(), k, n, rhs.rs, rhs.cs),
        "matmul: rhs out of bounds"
    );
    // SAFETY: every element the GEMM reads or writes lies inside its slice (checked above);
    // the destination rows do not overlap, and `dst` is a unique borrow, so it aliases
    // neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}
