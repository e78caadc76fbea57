//! Training: Johnson's recipe. `step` holds the mathematics of one step (loss, gradients,
//! Adam).
pub mod step;
