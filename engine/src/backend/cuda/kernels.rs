//! The CUDA C source of the backend's kernels and its run-time compilation: NVRTC
//! builds it for the GPU found, with the model's shape as compile-time constants.

use cudarc::nvrtc::{CompileOptions, Ptx};

use crate::model::{ModelConfig, RopeStyle};

/// The kernels, CUDA C.
pub const SOURCE: &str = include_str!("kernels.cu");

/// Every kernel the source defines, by the name the host launches.
pub const NAMES: &[&str] = &[
    "embed",
    "rms_norm",
    "rope_store",
    "attention",
    "attention_combine",
    "silu_mul",
    "argmax_logprob",
    "sample",
    "fill_uniform_half",
    "fill_float",
];

/// Largest `GROUP * HEAD_DIM` the attention kernel's shared memory holds (32 KiB of
/// partial sums over its 8 warps).
pub const MAX_GROUP_HEAD: usize = 1024;

/// Whether a model's shape fits the kernels: a head a multiple of 32 (a warp's lanes
/// split it), whole query heads per KV head, and the attention's shared memory.
pub fn check_shape(config: &ModelConfig, block_size: usize) -> Result<(), String> {
    let (hd, heads, kv) = (config.head_dim, config.n_heads, config.n_kv_heads);
    if hd == 0 || !hd.is_multiple_of(32) || hd > 256 {
        return Err(format!(
            "head size {hd} is not a multiple of 32 up to 256, which the CUDA kernels need"
        ));
    }
    if kv == 0 || !heads.is_multiple_of(kv) {
        return Err(format!(
            "{heads} query heads do not split over {kv} KV heads"
        ));
    }
    if heads / kv * hd > MAX_GROUP_HEAD {
        return Err(format!(
            "{} query heads per KV head of size {hd} exceed the CUDA attention kernel's {MAX_GROUP_HEAD} values",
            heads / kv
        ));
    }
    if block_size == 0 || block_size > 256 {
        return Err(format!("kv_block_size {block_size} must be in 1..=256"));
    }
    Ok(())
}

/// The source with the model's shape defined in front of it.
pub fn specialized(config: &ModelConfig, block_size: usize) -> String {
    format!(
        "#define HEAD_DIM {}\n#define GROUP {}\n#define N_HEADS {}\n#define N_KV {}\n\
         #define BLOCK_SIZE {block_size}\n#define ROPE_INTERLEAVED {}\n{SOURCE}",
        config.head_dim,
        config.n_heads / config.n_kv_heads,
        config.n_heads,
        config.n_kv_heads,
        u8::from(config.rope_style == RopeStyle::Interleaved),
    )
}

/// Compiles the kernels for `arch` (`sm_90`, `compute_80`...) with NVRTC. The error is
/// NVRTC's log.
pub fn compile(config: &ModelConfig, block_size: usize, arch: &str) -> Result<Ptx, String> {
    check_shape(config, block_size)?;
    let opts = CompileOptions {
        options: vec![
            format!("--gpu-architecture={arch}"),
            "--std=c++17".into(),
            "-default-device".into(),
        ],
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(specialized(config, block_size), opts)
        .map_err(|e| format!("NVRTC could not compile the kernels for {arch}: {e}"))
}

/// Whether the NVRTC library can be loaded (it is looked up by name on the library
/// path; cudarc panics on first use when it cannot be).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to open the library by its candidate names.
    #[allow(unsafe_code)]
    unsafe {
        cudarc::nvrtc::sys::is_culib_present()
    }
}
