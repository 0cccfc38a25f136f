//! # blockdiff-core
//!
//! The engine of blockdiff: block-wise discrete diffusion for non-text sequences.
//!
//! A sequence is generated block by block, left to right, with a KV cache of finished blocks;
//! inside a block all tokens start masked and are denoised in parallel, several committed per
//! model call. Domains plug in a [`tokenizer::Tokenizer`], a [`constraint::Constraint`] and a
//! [`condition::Condition`]; the core does the rest:
//!
//! | stage | module |
//! |---|---|
//! | vocabularies, specials | [`tokenizer`] |
//! | allowed tokens per position | [`constraint`] |
//! | prefix vectors / prompts | [`condition`] |
//! | transformer | [`model`], [`mask`], [`cache`] |
//! | noise & LR schedules | [`schedule`] |
//! | BD3-LM training | [`train`] |
//! | block sampling | [`sample`] |
//! | decoding policies compared | [`sampler_bench`] |
//! | deterministic job sharding | [`shard`] |
//! | unbounded streams (sliding KV window) | [`stream`] |
//! | save / load | [`checkpoint`] |
//! | reward (RL) fine-tuning | [`reward`] |
//! | synthetic benchmark source | [`synthetic`] |
//! | PyTorch twin (logit agreement, timings) | [`twin`] |

pub mod bench;
pub mod cache;
pub mod checkpoint;
pub mod condition;
pub mod constraint;
pub mod error;
pub mod mask;
pub mod model;
pub mod plot;
pub mod reward;
pub mod sample;
pub mod sampler_bench;
pub mod schedule;
pub mod shard;
pub mod stream;
pub mod synthetic;
pub mod tokenizer;
pub mod train;
pub mod twin;

/// The CPU backend used by default (burn's pure-Rust `flex`).
pub type CpuBackend = burn::backend::Flex;
/// The CPU training backend.
pub type CpuTrainBackend = burn::backend::Autodiff<burn::backend::Flex>;
/// burn's CUDA backend (feature `cuda`): CUDA is loaded at run time, so building needs no
/// GPU or toolkit; running needs an NVIDIA driver.
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Cuda;
/// The CUDA training backend.
#[cfg(feature = "cuda")]
pub type CudaTrainBackend = burn::backend::Autodiff<burn::backend::Cuda>;

/// Whether burn's CUDA backend can start here: the NVIDIA driver's `libcuda` and the CUDA
/// runtime compiler `libnvrtc` (which cubecl compiles its kernels with) must both load. Checked
/// before the first CUDA op, because cudarc panics inside the backend when a library is missing;
/// this turns that into an error naming what is missing. The probes are cudarc's own, over the
/// same candidate file names the backend will try. (cubecl-cuda builds cudarc without
/// `dynamic-linking`, so its fallback always resolves to run-time loading and they exist.)
#[cfg(feature = "cuda")]
pub fn cuda_available() -> Result<(), String> {
    // SAFETY: each probe only tries to open candidate libraries with libloading.
    let (driver, nvrtc) = unsafe {
        (
            cudarc::driver::sys::is_culib_present(),
            cudarc::nvrtc::sys::is_culib_present(),
        )
    };
    if !driver {
        return Err("the NVIDIA driver library libcuda.so could not be loaded (no NVIDIA GPU or driver here?)".into());
    }
    if !nvrtc {
        return Err("the CUDA runtime compiler libnvrtc.so could not be loaded: install the CUDA toolkit (or pip's nvidia-cuda-nvrtc) and put its lib folder on LD_LIBRARY_PATH".into());
    }
    Ok(())
}

pub use burn;

/// CPU cores this process may use: the default number of sampling worker threads (traj's
/// generator, the robot node). On a CPU, one sampler call per core at a time beats one large
/// batched call: at our sizes a call is dominated by per-op overhead and cannot keep every core
/// busy on its own (README, trajectory results).
pub fn cpu_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs `f` in a rayon pool of its own with `1/workers` of the CPU cores (at least one
/// thread), for one of `workers` threads that each run model calls. Without it every worker's
/// kernels queue on the one global pool and the workers wait on each other: two training peers
/// on 2 cores ran 1.28-1.44x one process, in own pools 1.85x. Runs `f` on the calling thread
/// if the pool cannot be made.
pub fn with_core_share<R: Send>(workers: usize, f: impl FnOnce() -> R + Send) -> R {
    let threads = (cpu_cores() / workers.max(1)).max(1);
    match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(pool) => pool.install(f),
        Err(e) => {
            tracing::warn!("own thread pool failed ({e}); using the global one");
            f()
        }
    }
}

/// Makes the C allocator keep freed memory for reuse (glibc: no `mmap` per large allocation and
/// no trimming of the heap's top), and says whether it did. Every tensor op writes a fresh
/// output buffer; glibc serves buffers above its `mmap` threshold (at most 32 MiB, and a music
/// model's logits are 128 MiB) with `mmap` and unmaps them on free, so each op page-faults its
/// output in again: a third of a music training run's CPU time was the kernel zeroing pages
/// (750 M minor faults). With this, `music train` ran 1.54× faster (2,926 → 4,505 tokens/s)
/// and `bench twin`'s training step ~8% faster. Process-wide policy, so only binaries call it
/// (the `blockdiff` CLI at start-up); `BLOCKDIFF_MALLOC=system` leaves the allocator alone.
/// The cost: the process keeps its peak heap until it exits.
pub fn retain_freed_memory() -> bool {
    if std::env::var_os("BLOCKDIFF_MALLOC").is_some_and(|v| v == "system") {
        return false;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes glibc's allocation policy; it is called before any
        // other thread exists (start of main), and both settings are valid values.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
