//! The model's shape, read from GGUF metadata or a Hugging Face `config.json`.
//!
//! Llama-family decoders: Llama 2/3, SmolLM2, Mistral (all `llama` in GGUF) and Qwen2
//! (q/k/v biases, rotary pairs split in halves).

pub mod checkpoint;
pub mod safetensors;
pub mod source;

#[cfg(test)]
mod safetensors_tests;

use crate::EngineError;
use crate::gguf::GgufFile;

/// How rotary embeddings pair a head's dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (2i, 2i+1): llama.cpp's layout for `llama` GGUF files, whose Q/K
    /// weights the converter permuted.
    Interleaved,
    /// Pairs (i, i + d/2): Hugging Face's layout (and GGUF `qwen2`).
    Halves,
}

/// Everything a backend needs to know about the network's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: String,
    pub n_layers: usize,
    /// Hidden size.
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Inner size of the SwiGLU feed-forward block.
    pub d_ff: usize,
    pub vocab_size: usize,
    /// Longest sequence the model was trained for, tokens.
    pub context_length: usize,
    pub rope_theta: f32,
    pub rope_style: RopeStyle,
    pub rms_eps: f32,
    /// Q, K and V projections carry biases (Qwen2).
    pub qkv_bias: bool,
}

impl ModelConfig {
    /// Reads the shape from GGUF metadata (`<arch>.*` keys).
    pub fn from_gguf(file: &GgufFile) -> Result<Self, EngineError> {
        let arch = file.architecture()?.to_string();
        let rope_style = match arch.as_str() {
            "llama" | "mistral" => RopeStyle::Interleaved,
            "qwen2" => RopeStyle::Halves,
            other => {
                return Err(EngineError::Model(format!(
                    "architecture {other:?} is not supported (llama, mistral and qwen2 are)"
                )));
            }
        };
        let key = |k: &str| format!("{arch}.{k}");
        let d_model = file.get_u32(&key("embedding_length"))? as usize;
        let n_heads = file.get_u32(&key("attention.head_count"))? as usize;
        let n_kv_heads = file
            .get_opt::<u32>(&key("attention.head_count_kv"))?
            .map_or(n_heads, |v| v as usize);
        let vocab_size = match file.get_opt::<u32>(&key("vocab_size"))? {
            Some(v) => v as usize,
            None => file.get_str_array("tokenizer.ggml.tokens")?.len(),
        };
        let head_dim = match file.get_opt::<u32>(&key("attention.key_length"))? {
            Some(v) => v as usize,
            None if n_heads > 0 => d_model / n_heads,
            None => 0,
        };
        let config = Self {
            n_layers: file.get_u32(&key("block_count"))? as usize,
            d_model,
            n_heads,
            n_kv_heads,
            head_dim,
            d_ff: file.get_u32(&key("feed_forward_length"))? as usize,
            vocab_size,
            context_length: file.get_u32(&key("context_length"))? as usize,
            rope_theta: file
                .get_opt::<f32>(&key("rope.freq_base"))?
                .unwrap_or(10_000.0),
            rope_style,
            rms_eps: file
                .get_opt::<f32>(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5),
            qkv_bias: file.tensor_info("blk.0.attn_q.bias").is_some(),
            architecture: arch,
        };
        config.validate()?;
        Ok(config)
    }

    /// Reads the shape from a Hugging Face `config.json` (`llama`, `mistral` and `qwen2`
    /// model types). Fields the file leaves out take the `transformers` defaults of those
    /// classes; what the engine cannot run exactly (RoPE scaling, an activation other
    /// than SiLU) is refused rather than approximated.
    pub fn from_hf_config(json: &serde_json::Value) -> Result<Self, EngineError> {
        #[derive(serde::Deserialize)]
        struct HfConfig {
            model_type: String,
            hidden_size: usize,
            num_hidden_layers: usize,
            num_attention_heads: usize,
            num_key_value_heads: Option<usize>,
            head_dim: Option<usize>,
            intermediate_size: usize,
            vocab_size: usize,
            max_position_embeddings: usize,
            rope_theta: Option<f64>,
            rms_norm_eps: Option<f64>,
            attention_bias: Option<bool>,
            hidden_act: Option<String>,
            rope_scaling: Option<serde_json::Value>,
            /// `transformers` 5 moves `rope_theta` and the scaling type here.
            rope_parameters: Option<serde_json::Value>,
            sliding_window: Option<usize>,
            use_sliding_window: Option<bool>,
        }
        let bad = |what: String| EngineError::Model(format!("config.json: {what}"));
        let hf =
            <HfConfig as serde::Deserialize>::deserialize(json).map_err(|e| bad(e.to_string()))?;
        match hf.model_type.as_str() {
            "llama" | "mistral" | "qwen2" => {}
            other => {
                return Err(bad(format!(
                    "model_type {other:?} is not supported (llama, mistral and qwen2 are)"
                )));
            }
        }
        if let Some(act) = hf.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(bad(format!(
                "hidden_act {act:?} is not supported (the engine's feed-forward is SwiGLU)"
            )));
        }
        for (field, scaling) in [
            ("rope_scaling", &hf.rope_scaling),
            ("rope_parameters", &hf.rope_parameters),
        ] {
            let Some(scaling) = scaling.as_ref().filter(|v| !v.is_null()) else {
                continue;
            };
            let kind = scaling
                .get("rope_type")
                .or_else(|| scaling.get("type"))
                .and_then(serde_json::Value::as_str);
            // `rope_parameters` names no type when RoPE is unscaled.
            let unscaled =
                kind == Some("default") || (field == "rope_parameters" && kind.is_none());
            if !unscaled {
                return Err(bad(format!(
                    "{field} {scaling} is not supported (only unscaled RoPE is)"
                )));
            }
        }
        let rope_theta = hf.rope_theta.or_else(|| {
            hf.rope_parameters
                .as_ref()
                .and_then(|p| p.get("rope_theta"))
                .and_then(serde_json::Value::as_f64)
        });
        // Attention over a sliding window equals full attention while the context fits in
        // the window, so the engine's context stops there (Mistral 7B v0.1: 4096). Qwen2
        // keeps `sliding_window` in its config but uses it only with `use_sliding_window`.
        let window = match hf.model_type.as_str() {
            "mistral" => hf.sliding_window,
            _ if hf.use_sliding_window == Some(true) => hf.sliding_window,
            _ => None,
        };
        let n_heads = hf.num_attention_heads;
        let config = Self {
            n_layers: hf.num_hidden_layers,
            d_model: hf.hidden_size,
            n_heads,
            n_kv_heads: hf.num_key_value_heads.unwrap_or(n_heads),
            head_dim: hf
                .head_dim
                .unwrap_or_else(|| hf.hidden_size.checked_div(n_heads).unwrap_or(0)),
            d_ff: hf.intermediate_size,
            vocab_size: hf.vocab_size,
            context_length: window.map_or(hf.max_position_embeddings, |w| {
                w.min(hf.max_position_embeddings)
            }),
            rope_theta: rope_theta.unwrap_or(10_000.0) as f32,
            // Hugging Face checkpoints keep Q/K rows in their trained order, which pairs
            // dimension i with i + d/2; only llama.cpp's converter permutes them.
            rope_style: RopeStyle::Halves,
            rms_eps: hf.rms_norm_eps.unwrap_or(1e-6) as f32,
            qkv_bias: hf.model_type == "qwen2" || hf.attention_bias == Some(true),
            architecture: hf.model_type,
        };
        config.validate()?;
        Ok(config)
    }

    /// Width of the K (or V) projection: KV heads times head size.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// The shape of a named architecture, for a model built with generated weights
    /// (`synthetic` in the engine's configuration): `llama-3.1-8b` (Meta's published
    /// configuration: 32 layers, hidden 4096, 32 heads over 8 KV heads of 128, SwiGLU
    /// 14336, vocabulary 128256, RoPE base 500000; its RoPE scaling, which changes no
    /// step's cost, is left out).
    pub fn synthetic(name: &str) -> Result<Self, EngineError> {
        match name {
            "llama-3.1-8b" => Ok(Self {
                architecture: "llama".into(),
                n_layers: 32,
                d_model: 4096,
                n_heads: 32,
                n_kv_heads: 8,
                head_dim: 128,
                d_ff: 14336,
                vocab_size: 128_256,
                context_length: 131_072,
                rope_theta: 500_000.0,
                rope_style: RopeStyle::Halves,
                rms_eps: 1e-5,
                qkv_bias: false,
            }),
            other => Err(EngineError::Config(format!(
                "unknown synthetic model {other:?} (known: llama-3.1-8b)"
            ))),
        }
    }

    /// Width of the Q projection.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Bytes of K and V that one token occupies across every layer (half precision).
    pub fn kv_bytes_per_token(&self) -> usize {
        2 * self.n_layers * self.kv_dim() * std::mem::size_of::<u16>()
    }

    fn validate(&self) -> Result<(), EngineError> {
        let bad = |what: String| Err(EngineError::Model(what));
        if self.n_layers == 0 || self.d_model == 0 || self.n_heads == 0 || self.vocab_size == 0 {
            return bad(format!("degenerate model shape {self:?}"));
        }
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "{} attention heads are not a multiple of {} KV heads",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head size {} must be even and positive",
                self.head_dim
            ));
        }
        if self.context_length == 0 {
            return bad("context_length is 0".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smollm2_shape_from_the_real_file() {
        let file = GgufFile::open(crate::testing::real_model_path()).unwrap();
        let c = ModelConfig::from_gguf(&file).unwrap();
        assert_eq!(c.architecture, "llama");
        assert_eq!(
            (c.n_layers, c.d_model, c.n_heads, c.n_kv_heads),
            (30, 576, 9, 3)
        );
        assert_eq!((c.head_dim, c.d_ff, c.vocab_size), (64, 1536, 49152));
        assert_eq!(c.context_length, 8192);
        assert_eq!(c.rope_theta, 100_000.0);
        assert_eq!(c.rope_style, RopeStyle::Interleaved);
        assert!(!c.qkv_bias);
    }
}
