//! blockdiff: block-wise discrete diffusion for non-text sequences (umbrella crate).
//!
//! Re-exports the engine and the domain crates under short names.

pub use blockdiff_core as core;
pub use blockdiff_dag as dag;
pub use blockdiff_music as music;
pub use blockdiff_robot as robot;
pub use blockdiff_traj as traj;
