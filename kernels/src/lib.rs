//! blockdiff-kernels: fused kernels for the ops profiling shows we lose time in, each with a
//! plain-Rust reference and a test that they agree.
//!
//! **Why these.** `perf record` of a full-size training step on burn-flex 0.21 (2 cores):
//! 39% in gemm, then **11–14% in glibc's scalar `expf`** — SiLU's sigmoid and the attention
//! softmax, forward and again in backward, one element at a time — plus the intermediate
//! tensors those ops are composed of (`x · sigmoid(x)` is four passes over memory, softmax
//! five). [`cpu`] has one-pass kernels with a branch-free, auto-vectorised `exp` (Cody–Waite
//! reduction, degree-7 polynomial: ≤ 2 ulp), and [`ops`] wires them into burn:
//!
//! - on `Flex` they run directly on the tensor's storage;
//! - on `Autodiff<Flex>` they are custom autodiff ops whose backward is a fused kernel too
//!   (SiLU keeps its input, softmax its output);
//! - on any other backend (CUDA) the call falls through to burn's own composed ops, so callers
//!   write one generic line.
//!
//! Sampling calls have two more, profiled on a music stream (the model call's largest parts):
//! attention over the KV cache read in place (`cached_attention`: scores and values by strided
//! gemm per head, no concatenated copy of the cache) and one-pass RoPE (`rope_rotate`). Both run
//! on `Flex` only and return `None` elsewhere, where the model composes burn's ops. The
//! sampler's softmax numerator over the allowed ids (`cpu::masked_exp`) is a slice kernel for
//! the same reason as the rest: built for AVX2 + FMA, not the baseline, where `exp`'s `mul_add`
//! is a libm call.
//!
//! `BLOCKDIFF_KERNELS=0` turns them off (burn's ops everywhere), for A/B timing.
//!
//! CubeCL: the issue asks for kernels in CubeCL. CubeCL 0.10's CPU runtime (`cubecl-cpu`)
//! needs the `tracel-llvm` bundle, which is downloaded at build time and so cannot build here;
//! the CPU kernels are therefore plain Rust (portable SIMD through LLVM's auto-vectoriser with
//! AVX2/FMA chosen at run time), and a CUDA build keeps burn's fused CubeCL path.

pub mod cpu;
pub mod ops;

pub use ops::{cached_attention, enabled, merge_heads, rope_rotate, silu, softmax, split_heads};
