//! impasto: real-time neural style transfer (Johnson, Alahi & Fei-Fei 2016).
//!
//! - [`model::Transformer`]: the image transformation network (`johnson` and `seed`).
//! - [`model::Vgg16`]: the frozen loss network.
//! - [`kernels`]: the CPU kernels everything runs on.
//! - [`stylize`]: the pipeline from an image file to a stylized image file.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod backend;
pub mod error;
pub mod imageio;
pub mod io;
pub mod kernels;
pub mod loss;
pub mod model;
pub mod onnx;
pub mod onnx_export;
pub mod quality;
pub mod rng;
pub mod serve;
pub mod styles;
pub mod stylize;
pub mod tensor;
#[doc(hidden)]
pub mod testutil;
pub mod train;
pub mod video;
pub mod walk;

pub use error::{Error, Result};
