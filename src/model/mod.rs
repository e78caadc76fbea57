//! The networks and the model file format.
pub mod format;
pub mod plan;
pub mod provenance;
pub mod transformer;
pub mod vgg;

pub use transformer::{Arch, Transformer, TransformerConfig};
pub use vgg::Vgg16;
