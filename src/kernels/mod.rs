//! The hot kernels: convolution, instance norm, pooling. Everything the networks compute
//! goes through here.
pub mod conv;
pub mod conv_grad;
pub mod direct;
pub mod norm;
pub mod pool;
pub mod winograd;

pub use conv::{Conv2d, ConvGeom, PadMode};

/// In-place ReLU, parallel.
pub fn relu(x: &mut [f32]) {
    use rayon::prelude::*;
    x.par_chunks_mut(1 << 14)
        .for_each(|c| c.iter_mut().for_each(|v| *v = v.max(0.0)));
}
