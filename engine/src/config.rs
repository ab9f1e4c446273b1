//! The engine's configuration, one section of the `pop` and `up` role files.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::EngineError;

/// How an engine worker runs. Zero means "choose for me" where documented.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// GGUF file to serve; empty: the cached SmolLM2-135M-Instruct from `meridian models pull`.
    pub model: Option<PathBuf>,
    /// Compute threads; 0: every core.
    pub threads: usize,
    /// Tokens per KV-cache block.
    pub kv_block_size: usize,
    /// KV-cache blocks; 0: sized from `kv_memory_bytes`.
    pub kv_blocks: usize,
    /// Memory for the KV cache when `kv_blocks` is 0, bytes.
    pub kv_memory_bytes: u64,
    /// Tokens the scheduler may put in one step (decode tokens plus prefill chunks).
    pub max_batch_tokens: usize,
    /// Sequences running at once, at most.
    pub max_running: usize,
    /// Where steps run: `cpu`, or `cuda` / `cuda:N` (GPU N) in builds with the `cuda`
    /// feature (the default for the `meridian` binaries).
    pub device: String,
    /// On a GPU with `kv_blocks` 0: the fraction of the GPU's memory the worker may hold
    /// (weights, activations, graphs); the KV cache gets what is left of it.
    pub gpu_memory_fraction: f32,
    /// On a GPU: replay steps as CUDA graphs captured per token-count bucket.
    pub cuda_graphs: bool,
    /// Build this architecture with generated weights instead of the model file's
    /// (`llama-3.1-8b`, on a GPU), as vLLM's `dummy` load format does: the file still
    /// gives the tokenizer; the text is meaningless and the speed real. For benchmarks.
    pub synthetic: Option<String>,
    /// CSV file the step thread appends one line per engine step to (the batch's shape
    /// and its duration), for fitting the simulator's engine model; none: no profile.
    pub step_profile: Option<PathBuf>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            model: None,
            threads: 0,
            kv_block_size: 16,
            kv_blocks: 0,
            kv_memory_bytes: 512 << 20,
            max_batch_tokens: 512,
            max_running: 64,
            step_profile: None,
            device: "cpu".into(),
            gpu_memory_fraction: 0.9,
            cuda_graphs: true,
            synthetic: None,
        }
    }
}

impl EngineConfig {
    /// Checks the values that have no meaningful zero or that contradict each other.
    pub fn validate(&self) -> Result<(), EngineError> {
        if self.kv_block_size == 0 || !self.kv_block_size.is_power_of_two() {
            return Err(EngineError::Config(format!(
                "kv_block_size must be a power of two, got {}",
                self.kv_block_size
            )));
        }
        if self.max_batch_tokens == 0 || self.max_running == 0 {
            return Err(EngineError::Config(
                "max_batch_tokens and max_running must be at least 1".into(),
            ));
        }
        if self.kv_blocks == 0 && self.kv_memory_bytes == 0 {
            return Err(EngineError::Config(
                "set kv_blocks or kv_memory_bytes".into(),
            ));
        }
        self.gpu_ordinal()?;
        if !(self.gpu_memory_fraction > 0.0 && self.gpu_memory_fraction <= 1.0) {
            return Err(EngineError::Config(format!(
                "gpu_memory_fraction must be in (0, 1], got {}",
                self.gpu_memory_fraction
            )));
        }
        Ok(())
    }

    /// `None` for the CPU, else the GPU ordinal (`cuda` is GPU 0).
    pub fn gpu_ordinal(&self) -> Result<Option<usize>, EngineError> {
        match self.device.as_str() {
            "cpu" => Ok(None),
            "cuda" => Ok(Some(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Some)
                .ok_or_else(|| {
                    EngineError::Config(format!(
                        "device must be cpu, cuda or cuda:N, got {other:?}"
                    ))
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_do_not() {
        EngineConfig::default().validate().unwrap();
        let bad = EngineConfig {
            kv_block_size: 12,
            ..Default::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("power of two")
        );
        let bad = EngineConfig {
            max_batch_tokens: 0,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        for (device, want) in [("cpu", None), ("cuda", Some(0)), ("cuda:3", Some(3))] {
            let c = EngineConfig {
                device: device.into(),
                ..Default::default()
            };
            assert_eq!(c.gpu_ordinal().unwrap(), want);
        }
        for device in ["gpu", "cuda:", "cuda:x", "CPU"] {
            let c = EngineConfig {
                device: device.into(),
                ..Default::default()
            };
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("cpu, cuda or cuda:N"), "{e}");
        }
        let c = EngineConfig {
            gpu_memory_fraction: 1.5,
            ..Default::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("gpu_memory_fraction")
        );
    }
}
