//! Hugging Face checkpoints: a directory with `config.json` and `model.safetensors`
//! (or the shards `model.safetensors.index.json` names), memory-mapped and served to the
//! backends under GGUF's tensor names.
//!
//! The weights are used as stored: F32, F16 and BF16 map onto the ggml types of the same
//! name, and Q/K keep Hugging Face's row order, which is why every Hugging Face config
//! reads as [`RopeStyle::Halves`](super::RopeStyle::Halves).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata};

use super::ModelConfig;
use super::source::{RawTensor, WeightSource};
use crate::EngineError;
use crate::gguf::GgmlType;

const CONFIG: &str = "config.json";
const SINGLE: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";

/// A malformed or unreadable file of the checkpoint.
fn bad_file(path: &Path, what: impl fmt::Display) -> EngineError {
    EngineError::Model(format!("{}: {what}", path.display()))
}

/// One mapped `.safetensors` file and its parsed header.
struct Shard {
    path: PathBuf,
    map: Mmap,
    /// Offset of the data section (after the length prefix and the JSON header).
    data_start: usize,
    metadata: Metadata,
}

impl Shard {
    fn open(path: &Path) -> Result<Self, EngineError> {
        let file = File::open(path).map_err(|e| bad_file(path, format!("cannot open: {e}")))?;
        let len = file
            .metadata()
            .map_err(|e| bad_file(path, format!("cannot stat: {e}")))?
            .len();
        if len < 8 {
            // Mapping an empty file fails with an opaque error on some platforms.
            return Err(bad_file(
                path,
                format!("{len} bytes is too short for a safetensors header"),
            ));
        }
        // SAFETY: the map is read-only and lives as long as the `Shard`, which hands out
        // only borrows of it. Mapped memory can still change if another process rewrites
        // or truncates the file while it is open; checkpoints are treated as immutable
        // once deployed (the same contract as GGUF files, see `gguf::reader`).
        #[allow(unsafe_code)]
        let map =
            unsafe { Mmap::map(&file) }.map_err(|e| bad_file(path, format!("cannot map: {e}")))?;
        // Checks the header and that every tensor's bytes lie within the file, back to
        // back, up to its very end (so a truncated file is caught here).
        let (header_len, metadata) = safetensors::SafeTensors::read_metadata(&map)
            .map_err(|e| bad_file(path, format!("not a valid safetensors file: {e}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            data_start: 8 + header_len,
            map,
            metadata,
        })
    }
}

/// A Hugging Face checkpoint directory (Llama, Mistral or Qwen2).
pub struct SafetensorsModel {
    dir: PathBuf,
    config: ModelConfig,
    /// `lm_head` shares the embedding matrix (no `output.weight`).
    tied_embeddings: bool,
    shards: Vec<Shard>,
    /// Hugging Face tensor name to the shard that holds it.
    index: HashMap<String, usize>,
}

impl fmt::Debug for SafetensorsModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SafetensorsModel")
            .field("dir", &self.dir)
            .field("architecture", &self.config.architecture)
            .field("shards", &self.shards.len())
            .field("tensors", &self.index.len())
            .field("tied_embeddings", &self.tied_embeddings)
            .finish()
    }
}

impl SafetensorsModel {
    /// Reads `dir/config.json` and maps `dir/model.safetensors`, or every shard that
    /// `dir/model.safetensors.index.json` names. Checks that each tensor the model needs
    /// is there; their types are checked when they are read.
    pub fn open(dir: &Path) -> Result<Self, EngineError> {
        let config_path = dir.join(CONFIG);
        let json = read_json(&config_path)?;
        let config = ModelConfig::from_hf_config(&json).map_err(|e| match e {
            EngineError::Model(m) => {
                bad_file(&config_path, m.strip_prefix("config.json: ").unwrap_or(&m))
            }
            other => other,
        })?;
        let tied_embeddings = match json.get("tie_word_embeddings") {
            None | Some(serde_json::Value::Null) => false,
            Some(v) => v.as_bool().ok_or_else(|| {
                bad_file(
                    &config_path,
                    format!("tie_word_embeddings {v} is not a boolean"),
                )
            })?,
        };

        let (shards, index) = if dir.join(SINGLE).is_file() {
            let shard = Shard::open(&dir.join(SINGLE))?;
            let index = shard
                .metadata
                .tensors()
                .into_keys()
                .map(|name| (name, 0))
                .collect();
            (vec![shard], index)
        } else if dir.join(INDEX).is_file() {
            open_shards(dir, &dir.join(INDEX))?
        } else {
            return Err(EngineError::Model(format!(
                "{} has config.json but neither {SINGLE} nor {INDEX}",
                dir.display()
            )));
        };

        let model = Self {
            dir: dir.to_path_buf(),
            config,
            tied_embeddings,
            shards,
            index,
        };
        model.check_complete()?;
        Ok(model)
    }

    /// The shape from `config.json`.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The checkpoint's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Fails on the first tensor the model needs and the checkpoint lacks, so a broken
    /// checkpoint is reported by name before any weight is converted.
    fn check_complete(&self) -> Result<(), EngineError> {
        let mut names = vec![
            "token_embd.weight".to_string(),
            "output_norm.weight".to_string(),
        ];
        if !self.tied_embeddings {
            names.push("output.weight".into());
        }
        for i in 0..self.config.n_layers {
            for part in [
                "attn_norm",
                "attn_q",
                "attn_k",
                "attn_v",
                "attn_output",
                "ffn_norm",
                "ffn_gate",
                "ffn_up",
                "ffn_down",
            ] {
                names.push(format!("blk.{i}.{part}.weight"));
            }
            if self.config.qkv_bias {
                for part in ["attn_q", "attn_k", "attn_v"] {
                    names.push(format!("blk.{i}.{part}.bias"));
                }
            }
        }
        for name in &names {
            self.locate(name)?;
        }
        Ok(())
    }

    /// The Hugging Face name of a GGUF tensor and the shard that holds it.
    fn locate(&self, name: &str) -> Result<(String, &Shard), EngineError> {
        let hf = hf_name(name, self.tied_embeddings).ok_or_else(|| {
            EngineError::Model(format!(
                "tensor {name} has no counterpart in the Hugging Face checkpoint {}",
                self.dir.display()
            ))
        })?;
        let shard = self
            .index
            .get(&hf)
            .and_then(|&i| self.shards.get(i))
            .ok_or_else(|| {
                EngineError::Model(format!(
                    "tensor {hf} (for {name}) is missing from the checkpoint {}",
                    self.dir.display()
                ))
            })?;
        Ok((hf, shard))
    }
}

impl WeightSource for SafetensorsModel {
    fn tensor(&self, name: &str) -> Result<RawTensor<'_>, EngineError> {
        let (hf, shard) = self.locate(name)?;
        let info = shard.metadata.info(&hf).ok_or_else(|| {
            bad_file(
                &shard.path,
                format!("has no tensor {hf}, which the index names"),
            )
        })?;
        let ty = match info.dtype {
            Dtype::F32 => GgmlType::F32,
            Dtype::F16 => GgmlType::F16,
            Dtype::BF16 => GgmlType::Bf16,
            other => {
                return Err(bad_file(
                    &shard.path,
                    format!(
                        "tensor {hf} has dtype {other:?}; only F32, F16 and BF16 are supported"
                    ),
                ));
            }
        };
        let (start, end) = info.data_offsets;
        let data = start
            .checked_add(shard.data_start)
            .zip(end.checked_add(shard.data_start))
            .and_then(|(s, e)| shard.map.get(s..e))
            .ok_or_else(|| {
                bad_file(
                    &shard.path,
                    format!("tensor {hf} lies outside the file ({start}..{end})"),
                )
            })?;
        Ok(RawTensor {
            name: name.to_string(),
            ty,
            dims: info.shape.iter().rev().copied().collect(),
            data: Cow::Borrowed(data),
        })
    }

    fn has(&self, name: &str) -> bool {
        hf_name(name, self.tied_embeddings).is_some_and(|hf| self.index.contains_key(&hf))
    }
}

/// Hugging Face's name for a GGUF tensor name; `None` for names with no counterpart
/// (and for `output.weight` when the embeddings are tied, so backends reuse the
/// embedding matrix even where a checkpoint also stores `lm_head.weight`).
fn hf_name(gguf: &str, tied_embeddings: bool) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" if tied_embeddings => return None,
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, tensor) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, kind) = tensor.rsplit_once('.')?;
    let hf_part = match (part, kind) {
        ("attn_norm", "weight") => "input_layernorm",
        ("ffn_norm", "weight") => "post_attention_layernorm",
        ("attn_q", _) => "self_attn.q_proj",
        ("attn_k", _) => "self_attn.k_proj",
        ("attn_v", _) => "self_attn.v_proj",
        ("attn_output", "weight") => "self_attn.o_proj",
        ("ffn_gate", "weight") => "mlp.gate_proj",
        ("ffn_up", "weight") => "mlp.up_proj",
        ("ffn_down", "weight") => "mlp.down_proj",
        _ => return None,
    };
    if kind != "weight" && kind != "bias" {
        return None;
    }
    Some(format!("model.layers.{layer}.{hf_part}.{kind}"))
}

fn read_json(path: &Path) -> Result<serde_json::Value, EngineError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| bad_file(path, format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| bad_file(path, format!("invalid JSON: {e}")))
}

/// Maps every shard the index names and checks that each holds the tensors the index
/// assigns to it.
fn open_shards(
    dir: &Path,
    index_path: &Path,
) -> Result<(Vec<Shard>, HashMap<String, usize>), EngineError> {
    let json = read_json(index_path)?;
    let weight_map = json
        .get("weight_map")
        .and_then(serde_json::Value::as_object)
        .ok_or_else(|| bad_file(index_path, "no weight_map object"))?;
    let mut shards: Vec<Shard> = Vec::new();
    let mut by_file: HashMap<&str, usize> = HashMap::new();
    let mut index = HashMap::with_capacity(weight_map.len());
    for (tensor, file) in weight_map {
        let file = file.as_str().ok_or_else(|| {
            bad_file(
                index_path,
                format!("weight_map entry {tensor} is {file}, not a file name"),
            )
        })?;
        // Shards sit beside the index: a path elsewhere is a malformed (or hostile) index.
        let plain = Path::new(file).file_name().is_some_and(|f| f == file) && file != "..";
        if !plain {
            return Err(bad_file(
                index_path,
                format!("shard {file:?} is not a plain file name"),
            ));
        }
        let i = match by_file.get(file) {
            Some(&i) => i,
            None => {
                shards.push(Shard::open(&dir.join(file))?);
                by_file.insert(file, shards.len() - 1);
                shards.len() - 1
            }
        };
        if shards[i].metadata.info(tensor).is_none() {
            return Err(bad_file(
                &shards[i].path,
                format!("has no tensor {tensor}, which {INDEX} places there"),
            ));
        }
        index.insert(tensor.clone(), i);
    }
    Ok((shards, index))
}
