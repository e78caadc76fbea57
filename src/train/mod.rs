//! Training: Johnson's recipe. `step` holds the mathematics of one step (loss, gradients,
//! Adam).
pub mod data;
pub mod optimize;
pub mod plot;
pub mod step;
pub mod trainer;
