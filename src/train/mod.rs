//! Training: Johnson's recipe. `step` holds the mathematics of one step (loss, gradients,
//! the optimiser update); `adam` the optimiser, shared with `optimize`; `distill` the
//! compact live models' objective (reproduce a trained teacher); `trainer` runs either.
pub mod adam;
pub mod data;
pub mod distill;
pub mod evaluate;
pub mod optimize;
pub mod plot;
pub mod step;
pub mod trainer;
