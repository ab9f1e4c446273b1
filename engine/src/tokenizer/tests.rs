use std::sync::{Arc, OnceLock};

use proptest::prelude::*;

use super::cases::{PARSE_SPECIAL, PLAIN};
use super::*;
use crate::testing::real_model_path;

/// SmolLM2's tokenizer, built once for all tests.
fn smollm() -> Arc<Tokenizer> {
    static TOK: OnceLock<Arc<Tokenizer>> = OnceLock::new();
    TOK.get_or_init(|| {
        let file = GgufFile::open(real_model_path()).unwrap();
        Arc::new(Tokenizer::from_gguf(&file).unwrap())
    })
    .clone()
}

const IM_START: u32 = 1;
const IM_END: u32 = 2;
const ENDOFTEXT: u32 = 0;

#[test]
fn tokenizer_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Tokenizer>();
    check::<IncrementalDecoder>();
}

// ---- the real model -------------------------------------------------------

#[test]
fn encodes_a_sentence() {
    let tok = smollm();
    assert_eq!(
        tok.encode("The capital of France is", true).unwrap(),
        [504, 3575, 282, 4649, 314]
    );
}

#[test]
fn decodes_a_continuation() {
    let tok = smollm();
    let ids = [
        7042, 30, 198, 198, 504, 1797, 1918, 553, 253, 2155, 282, 4723, 216, 35,
    ];
    assert_eq!(
        tok.decode(&ids),
        " Paris.\n\nThe United States has a population of approximately 3"
    );
}

#[test]
fn splits_every_digit() {
    let tok = smollm();
    assert_eq!(tok.encode("12345", true).unwrap().len(), 5);
    assert_eq!(tok.encode("12345", true).unwrap(), [33, 34, 35, 36, 37]);
}

#[test]
fn matches_the_reference_table() {
    let tok = smollm();
    for (text, want) in PARSE_SPECIAL {
        assert_eq!(
            &tok.encode(text, true).unwrap(),
            want,
            "parse_special: {text:?}"
        );
    }
    for (text, want) in PLAIN {
        assert_eq!(&tok.encode(text, false).unwrap(), want, "plain: {text:?}");
    }
}

#[test]
fn decode_inverts_encode_for_plain_text() {
    let tok = smollm();
    for (text, _) in PARSE_SPECIAL.iter().filter(|(t, _)| !t.contains("<|")) {
        assert_eq!(tok.decode(&tok.encode(text, true).unwrap()), *text);
    }
}

#[test]
fn special_tokens_parse_only_when_asked() {
    let tok = smollm();
    assert_eq!(tok.encode("<|im_start|>", true).unwrap(), [IM_START]);
    let plain = tok.encode("<|im_start|>", false).unwrap();
    assert!(plain.len() > 1, "{plain:?}");
    assert!(!plain.iter().any(|&id| id <= 16), "{plain:?}");
    // Special-token text in plain mode decodes back to itself.
    assert_eq!(tok.decode(&plain), "<|im_start|>");
}

#[test]
fn decode_skips_special_tokens() {
    let tok = smollm();
    let ids = tok
        .encode("<|im_start|>user\nHi<|im_end|>\n", true)
        .unwrap();
    assert_eq!(ids, [IM_START, 4093, 198, 26843, IM_END, 198]);
    assert_eq!(tok.decode(&ids), "user\nHi\n");
    assert_eq!(tok.decode(&[ENDOFTEXT]), "");
    // Ids past the vocabulary are skipped, not a panic.
    assert_eq!(tok.decode(&[504, u32::MAX, 49_152]), "The");
}

#[test]
fn metadata_of_smollm2() {
    let tok = smollm();
    assert_eq!(tok.vocab_size(), 49_152);
    assert_eq!(tok.bos_id(), Some(IM_START));
    assert!(!tok.add_bos());
    assert_eq!(tok.eos_id(), IM_END);
    assert_eq!(tok.stop_ids(), [ENDOFTEXT, IM_END]);
    assert!(tok.is_end_of_generation(IM_END));
    assert!(tok.is_end_of_generation(ENDOFTEXT));
    assert!(!tok.is_end_of_generation(IM_START));
    assert!(!tok.is_end_of_generation(504));
    assert!(tok.has_chat_template());
    assert_eq!(tok.token_text(504), Some("The"));
    assert_eq!(tok.token_text(3575), Some("Ġcapital"));
    assert_eq!(tok.token_text(IM_END), Some("<|im_end|>"));
    assert_eq!(tok.token_text(49_152), None);
}

#[test]
fn renders_the_models_chat_template() {
    let tok = smollm();
    let user_only = tok
        .apply_chat_template(&[ChatMessage::user("Hi")], true)
        .unwrap();
    // The template adds SmolLM2's default system prompt when none is given.
    assert_eq!(
        user_only,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        tok.encode(&user_only, true).unwrap(),
        [
            1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411,
            407, 19712, 8182, 2, 198, 1, 4093, 198, 26843, 2, 198, 1, 520, 9531, 198
        ]
    );

    let conversation = [
        ChatMessage::system("Be brief."),
        ChatMessage::user("Hi"),
        ChatMessage::assistant("Hello!"),
        ChatMessage::user("2+2?"),
    ];
    assert_eq!(
        tok.apply_chat_template(&conversation, false).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
         <|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
    );
}

/// Pushes `ids` one by one; returns the deltas, checking none shows a
/// broken character.
fn stream(tok: &Arc<Tokenizer>, prompt: &[u32], ids: &[u32]) -> Vec<String> {
    let mut dec = IncrementalDecoder::new(tok.clone(), prompt);
    let mut deltas: Vec<String> = ids.iter().map(|&id| dec.push(id)).collect();
    deltas.push(dec.flush());
    deltas
}

#[test]
fn incremental_decoding_never_splits_a_character() {
    let tok = smollm();
    let text = "Café 😀 naïve 日本語のテキスト 👨‍👩‍👧‍👦 Ελληνικά — ½ done.\n中文测试";
    let ids = tok.encode(text, true).unwrap();
    let deltas = stream(&tok, &[], &ids);
    for d in &deltas {
        assert!(!d.contains('\u{FFFD}'), "broken character in delta {d:?}");
    }
    assert_eq!(deltas.concat(), text);
    assert_eq!(deltas.concat(), tok.decode(&ids));
    // The emoji spans three tokens: two pushes give nothing, the third all.
    let emoji = tok.encode("😀", true).unwrap();
    assert_eq!(emoji.len(), 3);
    assert_eq!(stream(&tok, &[], &emoji), ["", "", "😀", ""]);
}

#[test]
fn incremental_decoding_after_a_chat_prompt() {
    let tok = smollm();
    let prompt = tok
        .encode(
            &tok.apply_chat_template(&[ChatMessage::user("Hi")], true)
                .unwrap(),
            true,
        )
        .unwrap();
    let mut answer = tok.encode(" Paris, ça va? 🎉", true).unwrap();
    answer.push(IM_END);
    let deltas = stream(&tok, &prompt, &answer);
    assert_eq!(deltas.concat(), " Paris, ça va? 🎉");
    assert_eq!(deltas.last().map(String::as_str), Some(""));
}

/// The byte-level token for one raw byte.
fn byte_token(tok: &Tokenizer, byte: u8) -> u32 {
    let text = gguf_vocab::byte_char(byte).to_string();
    (0..tok.vocab_size() as u32)
        .find(|&id| tok.token_text(id) == Some(text.as_str()))
        .unwrap()
}

#[test]
fn byte_char_is_gpt2s_map() {
    let ours: std::collections::BTreeSet<char> = (0..=255).map(gguf_vocab::byte_char).collect();
    let theirs: std::collections::BTreeSet<char> =
        tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
            .into_iter()
            .collect();
    assert_eq!(ours, theirs);
    assert_eq!(gguf_vocab::byte_char(b' '), 'Ġ');
    assert_eq!(gguf_vocab::byte_char(b'\n'), 'Ċ');
}

#[test]
fn bytes_missing_from_the_vocabulary_are_dropped() {
    // SmolLM2 has no token for the byte 0x04 (nor 0x06, 0x13, 0x14, 0x16,
    // 0x1D, 0xF1, 0xF2 and the bytes never valid in UTF-8); HF tokenizers
    // and llama.cpp drop such bytes too.
    let tok = smollm();
    assert_eq!(
        tok.decode(&tok.encode("a\u{4}b\u{1d}", true).unwrap()),
        "ab"
    );
}

#[test]
fn incremental_decoding_of_invalid_bytes_matches_full_decode() {
    let tok = smollm();
    let e4 = byte_token(&tok, 0xE4);
    let b8 = byte_token(&tok, 0xB8);
    let a = tok.encode("A", true).unwrap()[0];
    // A character cut short at the end: held, then flushed as U+FFFD.
    let ids = [a, e4, b8];
    let deltas = stream(&tok, &[], &ids);
    assert_eq!(deltas, ["A", "", "", "\u{FFFD}"]);
    assert_eq!(deltas.concat(), tok.decode(&ids));
    // A character cut short mid-stream is replaced once the next byte shows it.
    let ids = [e4, a, b8, e4, b8, byte_token(&tok, 0xAD)];
    assert_eq!(stream(&tok, &[], &ids).concat(), tok.decode(&ids));
    assert_eq!(tok.decode(&ids), "\u{FFFD}A\u{FFFD}中");
}

#[test]
fn incremental_window_stays_bounded() {
    let tok = smollm();
    let mut dec = IncrementalDecoder::new(tok.clone(), &[]);
    let e4 = byte_token(&tok, 0xE4);
    let mut out = String::new();
    for _ in 0..1000 {
        out.push_str(&dec.push(IM_START));
        out.push_str(&dec.push(e4));
        assert!(
            dec.window_len() <= 2 * (incremental::MAX_HELD + 1),
            "{}",
            dec.window_len()
        );
    }
    out.push_str(&dec.flush());
    assert_eq!(out, "\u{FFFD}".repeat(1000));
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        // Failures are reported in the test output, not written to the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_text_round_trips_through_the_incremental_decoder(text in "\\PC{0,24}") {
        let tok = smollm();
        let ids = tok.encode(&text, false).unwrap();
        prop_assert!(ids.iter().all(|&id| (id as usize) < tok.vocab_size()));
        prop_assert_eq!(tok.decode(&ids), text.clone());
        let deltas = stream(&tok, &[], &ids);
        if !text.contains(char::REPLACEMENT_CHARACTER) {
            prop_assert!(
                deltas.iter().all(|d| !d.contains(char::REPLACEMENT_CHARACTER)),
                "broken character in {:?}",
                deltas
            );
        }
        prop_assert_eq!(deltas.concat(), text);
    }
}

#[test]
fn from_files_matches_from_gguf() {
    let tok = smollm();
    let dir = scratch_dir("from_files");
    let json = dir.join("tokenizer.json");
    tok.parse.save(&json, false).unwrap();
    let config = dir.join("tokenizer_config.json");
    let template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | trim }}<|im_end|>\n{% endfor %}\
                    {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    let cfg = serde_json::json!({
        "add_bos_token": false,
        "bos_token": "<|im_start|>",
        "eos_token": {"content": "<|im_end|>", "special": true},
        "chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": template}],
    });
    std::fs::write(&config, cfg.to_string()).unwrap();

    let files = Tokenizer::from_files(&json, Some(&config)).unwrap();
    for (text, want) in PARSE_SPECIAL {
        assert_eq!(&files.encode(text, true).unwrap(), want, "{text:?}");
    }
    for (text, want) in PLAIN {
        assert_eq!(&files.encode(text, false).unwrap(), want, "{text:?}");
    }
    assert_eq!(files.vocab_size(), 49_152);
    assert_eq!(files.bos_id(), Some(IM_START));
    assert_eq!(files.eos_id(), IM_END);
    assert_eq!(files.stop_ids(), [ENDOFTEXT, IM_END]);
    assert_eq!(
        files
            .apply_chat_template(&[ChatMessage::user("  Hi ")], true)
            .unwrap(),
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );

    // Without a config: EOS by name, no template (ChatML fallback).
    let bare = Tokenizer::from_files(&json, None).unwrap();
    assert_eq!(bare.eos_id(), ENDOFTEXT);
    assert_eq!(bare.stop_ids(), [ENDOFTEXT, IM_END]);
    assert!(!bare.has_chat_template());

    let missing = Tokenizer::from_files(&dir.join("nope.json"), None).unwrap_err();
    assert!(missing.to_string().contains("nope.json"), "{missing}");
    std::fs::write(&config, "[1, 2]").unwrap();
    let bad = Tokenizer::from_files(&json, Some(&config)).unwrap_err();
    assert!(matches!(bad, TokenizerError::Config { .. }), "{bad}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("meridian-tokenizer-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---- hand-made GGUF files ---------------------------------------------------

enum Kv {
    Str(&'static str),
    Strs(Vec<String>),
    U32(u32),
    I32s(Vec<i32>),
    Bool(bool),
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A GGUF v3 file with these key/values and no tensors.
fn gguf(kvs: &[(&str, Kv)]) -> GgufFile {
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (key, value) in kvs {
        put_str(&mut out, key);
        match value {
            Kv::Str(s) => {
                out.extend_from_slice(&8u32.to_le_bytes());
                put_str(&mut out, s);
            }
            Kv::Strs(v) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&8u32.to_le_bytes());
                out.extend_from_slice(&(v.len() as u64).to_le_bytes());
                v.iter().for_each(|s| put_str(&mut out, s));
            }
            Kv::U32(x) => {
                out.extend_from_slice(&4u32.to_le_bytes());
                out.extend_from_slice(&x.to_le_bytes());
            }
            Kv::I32s(v) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&5u32.to_le_bytes());
                out.extend_from_slice(&(v.len() as u64).to_le_bytes());
                v.iter()
                    .for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
            }
            Kv::Bool(b) => {
                out.extend_from_slice(&7u32.to_le_bytes());
                out.push(u8::from(*b));
            }
        }
    }
    GgufFile::from_vec(out).unwrap()
}

/// A tiny byte-level vocabulary: the 256 byte characters, "Ġt", "he",
/// "Ġthe", and two control tokens.
fn tiny_vocab() -> (Vec<String>, Vec<i32>, Vec<String>) {
    let mut alphabet: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
        .into_iter()
        .collect();
    alphabet.sort_unstable();
    let mut tokens: Vec<String> = vec!["<|im_start|>".into(), "<|im_end|>".into()];
    tokens.extend(alphabet.iter().map(char::to_string));
    tokens.extend(["Ġt", "he", "Ġthe"].map(String::from));
    let mut types = vec![1; tokens.len()];
    types[0] = 3;
    types[1] = 3;
    let merges = ["Ġ t", "h e", "Ġt he"].map(String::from).to_vec();
    (tokens, types, merges)
}

fn tiny_kvs(template: Option<&'static str>) -> Vec<(&'static str, Kv)> {
    let (tokens, types, merges) = tiny_vocab();
    let mut kvs = vec![
        ("tokenizer.ggml.model", Kv::Str("gpt2")),
        ("tokenizer.ggml.pre", Kv::Str("smollm")),
        ("tokenizer.ggml.tokens", Kv::Strs(tokens)),
        ("tokenizer.ggml.token_type", Kv::I32s(types)),
        ("tokenizer.ggml.merges", Kv::Strs(merges)),
        ("tokenizer.ggml.bos_token_id", Kv::U32(0)),
        ("tokenizer.ggml.eos_token_id", Kv::U32(1)),
        ("tokenizer.ggml.add_bos_token", Kv::Bool(false)),
    ];
    if let Some(t) = template {
        kvs.push(("tokenizer.chat_template", Kv::Str(t)));
    }
    kvs
}

fn without(mut kvs: Vec<(&'static str, Kv)>, key: &str) -> Vec<(&'static str, Kv)> {
    kvs.retain(|(k, _)| *k != key);
    kvs
}

fn replace(kvs: Vec<(&'static str, Kv)>, key: &'static str, v: Kv) -> Vec<(&'static str, Kv)> {
    let mut kvs = without(kvs, key);
    kvs.push((key, v));
    kvs
}

#[test]
fn tiny_gguf_tokenizer_works() {
    let tok = Tokenizer::from_gguf(&gguf(&tiny_kvs(None))).unwrap();
    let the = tok.encode(" the", true).unwrap();
    assert_eq!(the.len(), 1);
    assert_eq!(tok.token_text(the[0]), Some("Ġthe"));
    assert_eq!(tok.encode("<|im_end|>", true).unwrap(), [1]);
    assert_eq!(tok.encode("<|im_end|>", false).unwrap().len(), 10);
    assert_eq!(
        tok.decode(&tok.encode("a the 42 ✓", true).unwrap()),
        "a the 42 ✓"
    );
    assert_eq!(tok.stop_ids(), [1]);
    // No template: ChatML.
    assert!(!tok.has_chat_template());
    assert_eq!(
        tok.apply_chat_template(&[ChatMessage::user("Hi")], true)
            .unwrap(),
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn add_bos_token_prepends_bos_once() {
    let kvs = replace(
        tiny_kvs(None),
        "tokenizer.ggml.add_bos_token",
        Kv::Bool(true),
    );
    let tok = Tokenizer::from_gguf(&gguf(&kvs)).unwrap();
    let ids = tok.encode("the", true).unwrap();
    assert_eq!(ids.first(), Some(&0));
    assert_eq!(tok.encode("<|im_start|>the", true).unwrap(), ids);
    assert_eq!(tok.encode("", true).unwrap(), [0]);
}

#[test]
fn missing_tokenizer_keys_are_named() {
    for key in [
        "tokenizer.ggml.model",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.eos_token_id",
    ] {
        let err = Tokenizer::from_gguf(&gguf(&without(tiny_kvs(None), key))).unwrap_err();
        assert!(matches!(err, TokenizerError::Metadata(_)), "{err:?}");
        assert!(err.to_string().contains(key), "{key}: {err}");
    }
    // Optional keys.
    for key in [
        "tokenizer.ggml.pre",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.add_bos_token",
    ] {
        Tokenizer::from_gguf(&gguf(&without(tiny_kvs(None), key))).unwrap();
    }
}

#[test]
fn malformed_tokenizer_metadata_is_refused() {
    let cases: Vec<(Vec<(&'static str, Kv)>, &str)> = vec![
        (
            replace(tiny_kvs(None), "tokenizer.ggml.model", Kv::Str("llama")),
            "'llama'",
        ),
        (
            replace(tiny_kvs(None), "tokenizer.ggml.pre", Kv::Str("made-up")),
            "'made-up'",
        ),
        (
            replace(
                tiny_kvs(None),
                "tokenizer.ggml.eos_token_id",
                Kv::U32(100_000),
            ),
            "tokenizer.ggml.eos_token_id id 100000",
        ),
        (
            replace(
                tiny_kvs(None),
                "tokenizer.ggml.token_type",
                Kv::I32s(vec![1; 3]),
            ),
            "tokenizer.ggml.token_type has 3 entries",
        ),
        (
            replace(tiny_kvs(None), "tokenizer.ggml.model", Kv::U32(2)),
            "tokenizer.ggml.model",
        ),
        (
            replace(
                tiny_kvs(None),
                "tokenizer.ggml.merges",
                Kv::Strs(vec!["Ġt".into()]),
            ),
            "tokenizer.ggml.merges[0]",
        ),
        (
            replace(
                tiny_kvs(None),
                "tokenizer.ggml.merges",
                Kv::Strs(vec!["x yz".into()]),
            ),
            "BPE model",
        ),
        (
            replace(
                without(tiny_kvs(None), "tokenizer.ggml.token_type"),
                "tokenizer.ggml.tokens",
                Kv::Strs(vec!["a".into(), "b".into()]),
            ),
            "not a byte-level vocabulary",
        ),
        (
            tiny_kvs(Some("{% for m in messages %}{{ m.content }")),
            "chat template does not compile",
        ),
    ];
    for (kvs, want) in cases {
        let err = Tokenizer::from_gguf(&gguf(&kvs)).unwrap_err();
        assert!(err.to_string().contains(want), "want {want:?} in: {err}");
    }
}

#[test]
fn chat_templates_get_hf_semantics() {
    // Python string methods, loop controls, raise_exception, trim/lstrip
    // blocks, bos/eos in scope.
    let template = "{{ bos_token }}\n\
        {% for m in messages %}\n\
            {% if m.role not in ['system', 'user', 'assistant'] %}\n\
                {{ raise_exception('Unknown role: ' + m.role) }}\n\
            {% endif %}\n\
            {% if m.role == 'assistant' and m.content.startswith('STOP') %}{% break %}{% endif %}\n\
            [{{ m.role.upper() }}] {{ m.content.strip() }}{{ eos_token }}\n\
        {% endfor %}\n\
        {% if add_generation_prompt %}[ASSISTANT]{% endif %}";
    let tok = Tokenizer::from_gguf(&gguf(&tiny_kvs(Some(template)))).unwrap();
    let out = tok
        .apply_chat_template(
            &[
                ChatMessage::user("  hi  "),
                ChatMessage::assistant("STOP here"),
                ChatMessage::user("never"),
            ],
            true,
        )
        .unwrap();
    assert_eq!(out, "<|im_start|>\n[USER] hi<|im_end|>\n[ASSISTANT]");
    let err = tok
        .apply_chat_template(&[ChatMessage::new("tool", "x")], false)
        .unwrap_err();
    assert!(
        matches!(err, TokenizerError::TemplateRender { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("Unknown role: tool"), "{err}");
}

#[test]
fn pre_tokenizers_by_name() {
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
    let split = |pre: &str, text: &str| -> Vec<String> {
        let p = gguf_vocab::pre_tokenizer(Some(pre)).unwrap();
        let mut s = PreTokenizedString::from(text);
        p.pre_tokenize(&mut s).unwrap();
        s.get_splits(OffsetReferential::Original, OffsetType::Char)
            .into_iter()
            .map(|(piece, _, _)| piece.to_owned())
            .collect()
    };
    let text = "I'LL pay 12345 now";
    assert_eq!(
        split("gpt2", text),
        ["I", "'", "LL", "Ġpay", "Ġ12345", "Ġnow"]
    );
    assert_eq!(
        split("smollm", text),
        ["I", "'", "LL", "Ġpay", "Ġ", "1", "2", "3", "4", "5", "Ġnow"]
    );
    assert_eq!(
        split("llama-bpe", text),
        ["I", "'LL", "Ġpay", "Ġ", "123", "45", "Ġnow"]
    );
    assert_eq!(
        split("qwen2", text),
        ["I", "'LL", "Ġpay", "Ġ", "1", "2", "3", "4", "5", "Ġnow"]
    );
}

#[test]
fn indented_templates_render_as_in_jinja2() {
    // Expected output from Python jinja2 with HF's settings (trim_blocks,
    // lstrip_blocks, loopcontrols).
    let template = r#"{% set sys = messages[0]['content'] if messages[0]['role'] == 'system' else 'default' %}
<<{{ sys }}>>
{% for message in messages %}
    {% if message['role'] == 'system' %}
        {% continue %}
    {% endif %}
    {% if loop.index0 is even %}
    {{ '[' + message['role'] | capitalize + ']: ' + message['content'] | trim }}
    {% else %}
  ({{ message.content.split(' ') | length }} words)
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
Answer:
{% endif %}"#;
    let tok = Tokenizer::from_gguf(&gguf(&tiny_kvs(Some(template)))).unwrap();
    let messages = [
        ChatMessage::system("Sys"),
        ChatMessage::user(" one two "),
        ChatMessage::assistant("a b c"),
        ChatMessage::user("x"),
    ];
    assert_eq!(
        tok.apply_chat_template(&messages, true).unwrap(),
        "<<Sys>>\n  (4 words)\n    [Assistant]: a b c\n  (1 words)\nAnswer:\n"
    );
}
