//! Builds a byte-level BPE tokenizer from a GGUF file's `tokenizer.ggml.*`
//! metadata, mirroring how llama.cpp reads the same keys.

use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use super::{Loaded, TokenizerError};
use crate::gguf::GgufFile;

pub(super) const KEY_MODEL: &str = "tokenizer.ggml.model";
pub(super) const KEY_PRE: &str = "tokenizer.ggml.pre";
pub(super) const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
pub(super) const KEY_MERGES: &str = "tokenizer.ggml.merges";
pub(super) const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
pub(super) const KEY_BOS: &str = "tokenizer.ggml.bos_token_id";
pub(super) const KEY_EOS: &str = "tokenizer.ggml.eos_token_id";
pub(super) const KEY_EOT: &str = "tokenizer.ggml.eot_token_id";
pub(super) const KEY_EOM: &str = "tokenizer.ggml.eom_token_id";
pub(super) const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
pub(super) const KEY_CHAT_TEMPLATE: &str = "tokenizer.chat_template";

/// llama.cpp's token types (`llama_token_type`).
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;

/// Llama 3's split pattern (HF `Split` before a regex-less `ByteLevel`).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's: Llama 3's with single digits.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub(super) fn load(file: &GgufFile) -> Result<Loaded, TokenizerError> {
    let model = file.get_str(KEY_MODEL)?;
    if model != "gpt2" {
        return Err(TokenizerError::UnsupportedModel {
            model: model.to_owned(),
        });
    }
    let tokens = file.get_str_array(KEY_TOKENS)?;
    let merges = file.get_str_array(KEY_MERGES)?;
    let types: Option<&[i32]> = file.get_opt(KEY_TOKEN_TYPE)?;
    let pre_tokenizer = pre_tokenizer(file.get_opt(KEY_PRE)?)?;

    let n = tokens.len();
    if u32::try_from(n).is_err() {
        return Err(TokenizerError::InvalidVocab {
            reason: format!("{KEY_TOKENS} has {n} entries, more than token ids can number"),
        });
    }
    if let Some(types) = types
        && types.len() != n
    {
        return Err(TokenizerError::InvalidVocab {
            reason: format!(
                "{KEY_TOKEN_TYPE} has {} entries but {KEY_TOKENS} has {n}",
                types.len()
            ),
        });
    }

    let mut vocab = Vocab::default();
    vocab.reserve(n);
    for (id, token) in (0u32..).zip(tokens) {
        // A duplicated string keeps its first id, as llama.cpp's lookup does.
        vocab.entry(token.clone()).or_insert(id);
    }
    check_byte_coverage(&vocab)?;
    let merges = merges
        .iter()
        .enumerate()
        .map(|(i, m)| split_merge(m).ok_or_else(|| invalid_merge(i, m)))
        .collect::<Result<Vec<_>, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| TokenizerError::Build {
            what: "BPE model from GGUF vocabulary and merges",
            reason: e.to_string(),
        })?;

    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(pre_tokenizer));
    inner.with_decoder(Some(ByteLevel::default()));

    // Control tokens (<|im_start|>, <|endoftext|>, ...) are special: parsed
    // out of prompts only when asked, skipped when decoding. User-defined
    // tokens are always matched as whole tokens and decode as text, as in
    // llama.cpp.
    let mut special_ids = Vec::new();
    let mut special = Vec::new();
    let mut user_defined = Vec::new();
    for (id, ty) in (0u32..).zip(types.unwrap_or(&[])) {
        let Some(text) = tokens.get(id as usize).filter(|t| !t.is_empty()) else {
            continue;
        };
        match *ty {
            TYPE_CONTROL => {
                special_ids.push(id);
                special.push((id, AddedToken::from(text.clone(), true).normalized(false)));
            }
            TYPE_USER_DEFINED => {
                user_defined.push((id, AddedToken::from(text.clone(), false).normalized(false)));
            }
            _ => {}
        }
    }
    inner.add_special_tokens(&special.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>());
    inner.add_tokens(
        &user_defined
            .iter()
            .map(|(_, t)| t.clone())
            .collect::<Vec<_>>(),
    );
    // Added tokens already in the vocabulary keep their ids; one that is not
    // (a duplicate string) would get a new id past the model's embedding.
    for (id, token) in special.iter().chain(&user_defined) {
        let got = inner.token_to_id(&token.content);
        if got != Some(*id) {
            return Err(TokenizerError::InvalidVocab {
                reason: format!(
                    "special token {:?} (id {id}) resolves to id {got:?}: its text is not unique in {KEY_TOKENS}",
                    token.content
                ),
            });
        }
    }

    let id_key = |key: &str| -> Result<Option<u32>, TokenizerError> {
        match file.get_opt::<u64>(key)? {
            None => Ok(None),
            Some(id) if id < n as u64 => Ok(Some(id as u32)),
            Some(id) => Err(TokenizerError::TokenIdOutOfRange {
                what: key.to_owned(),
                id,
                vocab_size: n,
            }),
        }
    };
    let eos = id_key(KEY_EOS)?.ok_or_else(|| crate::gguf::GgufError::MissingKey {
        key: KEY_EOS.to_owned(),
    })?;
    let bos = id_key(KEY_BOS)?;
    let end_of_turn: Vec<u32> = [id_key(KEY_EOT)?, id_key(KEY_EOM)?]
        .into_iter()
        .flatten()
        .collect();
    // GPT-2 style vocabularies have no BOS by default (llama.cpp agrees).
    let add_bos = file.get_opt::<bool>(KEY_ADD_BOS)?.unwrap_or(false);
    let chat_template = file.get_opt::<&str>(KEY_CHAT_TEMPLATE)?.map(str::to_owned);

    Ok(Loaded {
        inner,
        texts: tokens.to_vec(),
        special_ids,
        bos,
        add_bos,
        eos,
        end_of_turn,
        chat_template,
    })
}

/// The pre-tokenizer for a `tokenizer.ggml.pre` value: the split that HF's
/// `tokenizer.json` for that model family performs, which llama.cpp
/// reproduces by name. An unknown name is an error rather than a silent
/// fallback: a wrong split tokenizes plausibly but degrades the model.
pub(super) fn pre_tokenizer(pre: Option<&str>) -> Result<PreTokenizerWrapper, TokenizerError> {
    let byte_level = |use_regex| ByteLevel::new(false, true, use_regex);
    let split = |pattern: &str| -> Result<PreTokenizerWrapper, TokenizerError> {
        let split = Split::new(
            SplitPattern::Regex(pattern.to_owned()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| TokenizerError::Build {
            what: "pre-tokenizer split pattern",
            reason: e.to_string(),
        })?;
        Ok(Sequence::new(vec![split.into(), byte_level(false).into()]).into())
    };
    match pre.unwrap_or("default") {
        // A missing or "default" value: converters write it when they do not
        // recognise the tokenizer; GPT-2's own split is the best guess.
        "default" | "gpt2" | "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" | "trillion" => {
            Ok(byte_level(true).into())
        }
        // Every digit on its own, then GPT-2's split (HF:
        // Sequence[Digits(individual_digits), ByteLevel]).
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            Ok(Sequence::new(vec![Digits::new(true).into(), byte_level(true).into()]).into())
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => split(LLAMA3_PATTERN),
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" => split(QWEN2_PATTERN),
        other => Err(TokenizerError::UnsupportedPreTokenizer {
            pre: other.to_owned(),
        }),
    }
}

/// "Ġ t" -> ("Ġ", "t"). The separator is the first space after the first
/// character, as in llama.cpp, so a merge whose left part is a space still
/// splits correctly.
fn split_merge(merge: &str) -> Option<(String, String)> {
    let (pos, _) = merge.char_indices().skip(1).find(|&(_, c)| c == ' ')?;
    let (left, right) = (&merge[..pos], &merge[pos + 1..]);
    if right.is_empty() {
        return None;
    }
    Some((left.to_owned(), right.to_owned()))
}

fn invalid_merge(index: usize, merge: &str) -> TokenizerError {
    TokenizerError::InvalidVocab {
        reason: format!("{KEY_MERGES}[{index}] = {merge:?} is not two tokens separated by a space"),
    }
}

/// A sanity check that the tokens are a byte-level vocabulary at all: every
/// printable ASCII character must be a token. Full coverage of the 256
/// bytes is not required: SmolLM2's vocabulary lacks 21 of them (the bytes
/// never valid in UTF-8, F1/F2, and six control characters), and such bytes
/// are dropped from the input, as both HF tokenizers and llama.cpp do.
fn check_byte_coverage(vocab: &Vocab) -> Result<(), TokenizerError> {
    let missing: Vec<char> = (b' '..=b'~')
        .map(byte_char)
        .filter(|c| !vocab.contains_key(c.to_string().as_str()))
        .collect();
    match missing.first() {
        None => Ok(()),
        Some(c) => Err(TokenizerError::InvalidVocab {
            reason: format!(
                "{KEY_TOKENS} is not a byte-level vocabulary: it lacks {} of the printable ASCII characters (first: {c:?})",
                missing.len(),
            ),
        }),
    }
}

/// GPT-2's byte-to-character map: printable Latin-1 bytes stand for
/// themselves, the others for U+0100 onwards in byte order.
pub(super) fn byte_char(byte: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(byte) {
        return char::from(byte);
    }
    let rank = (0..byte).filter(|&b| !printable(b)).count() as u32;
    char::from_u32(256 + rank).unwrap_or(char::REPLACEMENT_CHARACTER)
}
