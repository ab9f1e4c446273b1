//! Opens a model wherever it comes from: a GGUF file, or a Hugging Face directory with
//! `config.json` and safetensors weights. Everything after loading (backends, the
//! tokenizer's users) sees one [`WeightSource`], one [`ModelConfig`] and one
//! [`Tokenizer`].

use std::io::Read;
use std::path::Path;

use super::ModelConfig;
use super::safetensors::SafetensorsModel;
use super::source::WeightSource;
use crate::EngineError;
use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;

/// A model checkpoint, opened and checked but not yet converted for a backend.
#[derive(Debug)]
pub enum Checkpoint {
    Gguf(GgufFile),
    Safetensors(SafetensorsModel),
}

impl Checkpoint {
    /// Opens `path`: a GGUF file (named `*.gguf`, or starting with GGUF's magic), or a
    /// directory holding `config.json`, `model.safetensors` (or its sharded index) and
    /// `tokenizer.json`.
    pub fn open(path: &Path) -> Result<Self, EngineError> {
        let expected = "expected a GGUF file or a Hugging Face model directory \
                        (config.json, model.safetensors, tokenizer.json)";
        if path.is_dir() {
            if !path.join("config.json").is_file() {
                return Err(EngineError::Model(format!(
                    "{} has no config.json: {expected}",
                    path.display()
                )));
            }
            return Ok(Self::Safetensors(SafetensorsModel::open(path)?));
        }
        let is_gguf_name = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        if is_gguf_name || has_gguf_magic(path) {
            return Ok(Self::Gguf(GgufFile::open(path)?));
        }
        if !path.exists() {
            return Err(EngineError::Model(format!(
                "{} does not exist: {expected}",
                path.display()
            )));
        }
        let hint = match path.file_name().and_then(|n| n.to_str()) {
            Some(name) if name == "config.json" || name.ends_with(".safetensors") => {
                " (pass the directory that holds it)"
            }
            _ => "",
        };
        Err(EngineError::Model(format!(
            "{} is neither a GGUF file nor a directory: {expected}{hint}",
            path.display()
        )))
    }

    /// The weights, under GGUF's tensor names.
    pub fn weights(&self) -> &dyn WeightSource {
        match self {
            Self::Gguf(file) => file,
            Self::Safetensors(model) => model,
        }
    }

    /// The network's shape.
    pub fn config(&self) -> Result<ModelConfig, EngineError> {
        match self {
            Self::Gguf(file) => ModelConfig::from_gguf(file),
            Self::Safetensors(model) => Ok(model.config().clone()),
        }
    }

    /// The tokenizer: from GGUF metadata, or from the directory's `tokenizer.json` with
    /// `tokenizer_config.json` (chat template, BOS/EOS) when it is there.
    pub fn tokenizer(&self) -> Result<Tokenizer, EngineError> {
        match self {
            Self::Gguf(file) => Ok(Tokenizer::from_gguf(file)?),
            Self::Safetensors(model) => {
                let config = model.dir().join("tokenizer_config.json");
                Ok(Tokenizer::from_files(
                    &model.dir().join("tokenizer.json"),
                    config.is_file().then_some(config.as_path()),
                )?)
            }
        }
    }
}

/// Whether the file at `path` starts with `GGUF`; false for anything unreadable (the
/// caller's error then says what was expected).
fn has_gguf_magic(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF"
}
