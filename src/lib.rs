pub use blockdiff_core as core;
