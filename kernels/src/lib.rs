//! blockdiff-kernels: custom kernels with plain-Rust references (work in progress).
