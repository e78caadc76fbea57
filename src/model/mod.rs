//! The networks and the model file format.
pub mod config;
pub mod format;
pub mod mix;
pub mod plan;
pub mod provenance;
pub mod stats;
pub mod transformer;
pub mod vgg;

pub use mix::{Mix, StyleEntry};
pub use transformer::{Arch, Transformer, TransformerConfig};
pub use vgg::Vgg16;
