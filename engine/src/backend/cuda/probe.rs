//! Finding the CUDA libraries and a GPU without panicking: cudarc loads the libraries
//! on first use and panics when one is missing, so each is looked for by name first.

use cudarc::driver::{CudaContext, sys};

/// The GPU a backend would run on.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub name: String,
    /// Compute capability (major, minor).
    pub capability: (i32, i32),
    pub total_memory: usize,
    pub multiprocessors: i32,
}

/// Why no GPU can be used, or the one at `ordinal`.
pub fn probe(ordinal: usize) -> Result<DeviceInfo, String> {
    // SAFETY: each call only tries to open a shared library by its candidate names.
    #[allow(unsafe_code)]
    let (driver, blas, nvrtc) = unsafe {
        (
            sys::is_culib_present(),
            cudarc::cublas::sys::is_culib_present(),
            cudarc::nvrtc::sys::is_culib_present(),
        )
    };
    if !driver {
        return Err(
            "no GPU found: the NVIDIA driver library (libcuda.so.1) is not installed or not on the library path"
                .into(),
        );
    }
    let count = CudaContext::device_count().unwrap_or(0);
    if count <= 0 {
        return Err(
            "no GPU found: the NVIDIA driver is installed but reports no CUDA device".into(),
        );
    }
    if ordinal >= count as usize {
        return Err(format!(
            "GPU {ordinal} was asked for but the driver reports {count}"
        ));
    }
    if !blas || !nvrtc {
        let missing = match (blas, nvrtc) {
            (false, false) => "cuBLAS (libcublas.so.13 or .12) and NVRTC (libnvrtc.so.13 or .12)",
            (false, true) => "cuBLAS (libcublas.so.13 or .12, with libcublasLt beside it)",
            _ => "NVRTC (libnvrtc.so.13 or .12, with libnvrtc-builtins beside it)",
        };
        return Err(format!(
            "a GPU is present but {missing} cannot be loaded: install the CUDA libraries or add their folder to LD_LIBRARY_PATH"
        ));
    }
    let ctx = CudaContext::new(ordinal).map_err(|e| format!("cannot open GPU {ordinal}: {e}"))?;
    let err = |e: cudarc::driver::DriverError| format!("GPU {ordinal}: {e}");
    Ok(DeviceInfo {
        name: ctx.name().map_err(err)?,
        capability: ctx.compute_capability().map_err(err)?,
        total_memory: ctx.total_mem().map_err(err)?,
        multiprocessors: ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(err)?,
    })
}
