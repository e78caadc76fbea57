//! impasto: real-time neural style transfer (Johnson, Alahi & Fei-Fei 2016).
//!
//! - [`model::plan`]: the transformation network's topology, written once.
//! - [`model::Transformer`]: that network on a backend (`johnson` and `seed` architectures).
//! - [`model::Vgg16`]: the frozen loss network.
//! - [`backend`]: the op-level seam ([`backend::Backend`]), the CPU backend over
//!   its kernels (`src/kernels/`, private), and the plain-loop reference backend every backend is checked against.
//! - [`stylize`]: the pipeline from an image file to a stylized image file.
//! - [`train`]: Johnson's training recipe; [`loss`]: the perceptual losses.
//!
//! `docs/ARCHITECTURE.md` draws the module map and the data flow. Optional parts are cargo
//! features (`serve`, `hub`, `video`, `cli`; all on by default): a library user who only
//! stylizes and trains can take `default-features = false`.
//!
//! Stylize a photo with a built-in style:
//!
//! ```
//! use impasto::{imageio, styles, stylize};
//! use std::path::Path;
//!
//! let model = styles::resolve("great_wave")?; // a built-in name, or a model file's path
//! let photo = imageio::read_path(Path::new("assets/coffee.jpg"), &imageio::Limits::default())?;
//! let out = stylize::stylize(&model, photo, &stylize::StylizeOptions::default(), None)?;
//! imageio::write_path(&out, &std::env::temp_dir().join("coffee-great_wave.jpg"))?;
//! # Ok::<(), impasto::Error>(())
//! ```
//!
//! The same network on the reference backend (slow; what tests compare against):
//!
//! ```
//! use impasto::backend::Reference;
//! use impasto::model::{Arch, Transformer, TransformerConfig};
//! use impasto::tensor::Tensor;
//!
//! let mut config = TransformerConfig::new(Arch::Johnson);
//! config.channels = [8, 16, 32]; // widths and depth are config, nothing else changes
//! config.res_blocks = 2;
//! let cpu = Transformer::init(config, 1);
//! let reference = cpu.to_backend(Reference);
//! let x = Tensor::from_vec(1, 3, 16, 16, (0..768).map(|i| (i % 255) as f32).collect());
//! let (a, b) = (cpu.forward(&x), reference.forward(&x));
//! assert!(a.rel_error(&b) < 1e-4);
//! ```
#![deny(unsafe_op_in_unsafe_fn)]

pub mod backend;
pub mod batch;
pub mod error;
pub mod imageio;
pub mod io;
mod kernels;
pub mod loss;
pub mod model;
pub mod onnx;
pub mod onnx_export;
pub mod quality;
pub mod rng;
#[cfg(feature = "serve")]
pub mod serve;
pub mod styles;
pub mod stylize;
pub mod tensor;
#[cfg(any(test, feature = "testutil"))]
#[doc(hidden)]
pub mod testutil;
pub mod train;
#[cfg(feature = "video")]
pub mod video;
pub mod walk;

pub use error::{Error, ModelError, Result};
