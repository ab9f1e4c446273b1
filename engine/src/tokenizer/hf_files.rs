//! Loads a Hugging Face `tokenizer.json`, with the chat template and special
//! tokens from an optional `tokenizer_config.json` (safetensors models).

use std::path::Path;

use serde_json::Value as Json;

use super::{EOG_TEXTS, Loaded, TokenizerError};

pub(super) fn load(
    tokenizer_json: &Path,
    tokenizer_config_json: Option<&Path>,
) -> Result<Loaded, TokenizerError> {
    let mut inner =
        tokenizers::Tokenizer::from_file(tokenizer_json).map_err(|e| TokenizerError::Load {
            path: tokenizer_json.to_path_buf(),
            reason: e.to_string(),
        })?;
    // Some tokenizer.json files carry training-time truncation or padding;
    // the engine sees whole prompts and manages lengths itself.
    inner
        .with_truncation(None)
        .map_err(|e| TokenizerError::Load {
            path: tokenizer_json.to_path_buf(),
            reason: e.to_string(),
        })?;
    inner.with_padding(None);

    let config = match tokenizer_config_json {
        Some(path) => Some(Config::read(path)?),
        None => None,
    };

    let mut added: Vec<(u32, tokenizers::AddedToken)> =
        inner.get_added_tokens_decoder().into_iter().collect();
    added.sort_unstable_by_key(|(id, _)| *id);
    let special_ids: Vec<u32> = added
        .iter()
        .filter(|(_, t)| t.special)
        .map(|(id, _)| *id)
        .collect();

    let lookup = |field: &str| -> Result<Option<u32>, TokenizerError> {
        let Some(cfg) = &config else { return Ok(None) };
        let Some(text) = cfg.token(field) else {
            return Ok(None);
        };
        inner
            .token_to_id(text)
            .map(Some)
            .ok_or_else(|| TokenizerError::InvalidVocab {
                reason: format!(
                    "{field} {text:?} from {} is not in {}",
                    cfg.path,
                    tokenizer_json.display()
                ),
            })
    };
    let bos = lookup("bos_token")?;
    let eos = match lookup("eos_token")? {
        Some(id) => id,
        // No config: the first special token that ends a turn by name.
        None => added
            .iter()
            .find(|(_, t)| t.special && EOG_TEXTS.contains(&t.content.as_str()))
            .map(|(id, _)| *id)
            .ok_or_else(|| TokenizerError::MissingEos {
                reason: format!(
                    "{} has no eos_token and no special token of {} is a known end-of-turn token",
                    config
                        .as_ref()
                        .map_or("no tokenizer_config.json was given".to_owned(), |c| c
                            .path
                            .clone()),
                    tokenizer_json.display()
                ),
            })?,
    };
    // `add_bos_token` when the config says; otherwise whatever the file's
    // post-processor does (Llama 3's template processing prepends BOS).
    let add_bos = match config.as_ref().and_then(|c| c.add_bos_token) {
        Some(v) => v,
        None => match bos {
            Some(bos) => inner
                .encode_fast("", true)
                .map(|e| e.get_ids().first() == Some(&bos))
                .unwrap_or(false),
            None => false,
        },
    };

    let vocab = inner.get_vocab(true);
    let size = vocab
        .values()
        .max()
        .map_or(0, |&max| max as usize + 1)
        .max(inner.get_vocab_size(true));
    let mut texts = vec![String::new(); size];
    for (text, id) in vocab {
        if let Some(slot) = texts.get_mut(id as usize) {
            *slot = text;
        }
    }

    Ok(Loaded {
        inner,
        texts,
        special_ids,
        bos,
        add_bos,
        eos,
        end_of_turn: Vec::new(),
        chat_template: config.and_then(|c| c.chat_template),
    })
}

/// The fields of `tokenizer_config.json` the engine uses.
struct Config {
    path: String,
    json: serde_json::Map<String, Json>,
    chat_template: Option<String>,
    add_bos_token: Option<bool>,
}

impl Config {
    fn read(path: &Path) -> Result<Self, TokenizerError> {
        let bad = |reason: String| TokenizerError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let json = match serde_json::from_str::<Json>(&text) {
            Ok(Json::Object(map)) => map,
            Ok(_) => return Err(bad("not a JSON object".to_owned())),
            Err(e) => return Err(bad(e.to_string())),
        };
        let chat_template = match json.get("chat_template") {
            None | Some(Json::Null) => None,
            Some(Json::String(s)) => Some(s.clone()),
            // Several named templates: [{"name": "default", "template": ...}, ...].
            Some(Json::Array(list)) => {
                let template = |entry: &Json| entry.get("template")?.as_str().map(str::to_owned);
                let by_name = list
                    .iter()
                    .find(|e| e.get("name").and_then(Json::as_str) == Some("default"));
                match by_name.or(list.first()).and_then(template) {
                    Some(t) => Some(t),
                    None => return Err(bad("chat_template list has no usable template".into())),
                }
            }
            Some(_) => return Err(bad("chat_template is neither a string nor a list".into())),
        };
        let add_bos_token = match json.get("add_bos_token") {
            None | Some(Json::Null) => None,
            Some(Json::Bool(b)) => Some(*b),
            Some(_) => return Err(bad("add_bos_token is not a boolean".into())),
        };
        Ok(Config {
            path: path.display().to_string(),
            json,
            chat_template,
            add_bos_token,
        })
    }

    /// A special token field, written either as a string or as an
    /// `AddedToken` object with a `content`.
    fn token(&self, field: &str) -> Option<&str> {
        match self.json.get(field)? {
            Json::String(s) => Some(s),
            Json::Object(obj) => obj.get("content")?.as_str(),
            _ => None,
        }
    }
}
