//! Hugging Face checkpoints against GGUF: one tiny random model written both ways (GGUF
//! with Q/K rows permuted as llama.cpp's converter does, safetensors as `transformers`
//! saves it) must give the same logits, which checks the name mapping and the RoPE
//! layout together.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde_json::json;

use super::ModelConfig;
use super::checkpoint::Checkpoint;
use super::safetensors::SafetensorsModel;
use super::source::WeightSource;
use crate::EngineError;
use crate::backend::cpu::CpuBackend;
use crate::backend::{Backend, Batch, BatchSeq};
use crate::gguf::{GgmlType, GgufFile, MetaType};

const N_LAYERS: usize = 2;
const D_MODEL: usize = 64;
const N_HEADS: usize = 4;
const N_KV_HEADS: usize = 2;
const HEAD_DIM: usize = 16;
const D_FF: usize = 128;
const VOCAB: usize = 96;
const CONTEXT: usize = 256;
const RMS_EPS: f32 = 1e-5;
const ROPE_THETA: f32 = 10_000.0;
const PROMPT: [u32; 7] = [1, 5, 17, 42, 3, 88, 60];

/// A tiny random Llama (or Qwen2, with q/k/v biases) in Hugging Face's names, shapes
/// (`[out, in]`) and row order.
struct TinyModel {
    arch: &'static str,
    tied: bool,
    tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl TinyModel {
    fn new(arch: &'static str, tied: bool, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut tensors = BTreeMap::new();
        let mut add = |name: String, shape: Vec<usize>, center: f32, spread: f32| {
            let n = shape.iter().product();
            let values = (0..n)
                .map(|_| center + spread * rng.random_range(-1.0f32..1.0))
                .collect();
            tensors.insert(name, (shape, values));
        };
        let (q, kv) = (N_HEADS * HEAD_DIM, N_KV_HEADS * HEAD_DIM);
        let scale = |k: usize| 1.0 / (k as f32).sqrt();
        add(
            "model.embed_tokens.weight".into(),
            vec![VOCAB, D_MODEL],
            0.0,
            1.0,
        );
        add("model.norm.weight".into(), vec![D_MODEL], 1.0, 0.2);
        if !tied {
            add(
                "lm_head.weight".into(),
                vec![VOCAB, D_MODEL],
                0.0,
                scale(D_MODEL),
            );
        }
        for i in 0..N_LAYERS {
            let p = |s: &str| format!("model.layers.{i}.{s}");
            add(p("input_layernorm.weight"), vec![D_MODEL], 1.0, 0.2);
            add(
                p("post_attention_layernorm.weight"),
                vec![D_MODEL],
                1.0,
                0.2,
            );
            // Large Q/K weights make attention peaked, so a wrong rotary pairing shows.
            add(p("self_attn.q_proj.weight"), vec![q, D_MODEL], 0.0, 0.5);
            add(p("self_attn.k_proj.weight"), vec![kv, D_MODEL], 0.0, 0.5);
            add(
                p("self_attn.v_proj.weight"),
                vec![kv, D_MODEL],
                0.0,
                scale(D_MODEL),
            );
            add(
                p("self_attn.o_proj.weight"),
                vec![D_MODEL, q],
                0.0,
                scale(q),
            );
            add(
                p("mlp.gate_proj.weight"),
                vec![D_FF, D_MODEL],
                0.0,
                scale(D_MODEL),
            );
            add(
                p("mlp.up_proj.weight"),
                vec![D_FF, D_MODEL],
                0.0,
                scale(D_MODEL),
            );
            add(
                p("mlp.down_proj.weight"),
                vec![D_MODEL, D_FF],
                0.0,
                scale(D_FF),
            );
            if arch == "qwen2" {
                add(p("self_attn.q_proj.bias"), vec![q], 0.0, 0.5);
                add(p("self_attn.k_proj.bias"), vec![kv], 0.0, 0.5);
                add(p("self_attn.v_proj.bias"), vec![kv], 0.0, 0.5);
            }
        }
        Self {
            arch,
            tied,
            tensors,
        }
    }

    fn config_json(&self) -> serde_json::Value {
        json!({
            "architectures": [if self.arch == "qwen2" { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
            "model_type": self.arch,
            "hidden_size": D_MODEL,
            "num_hidden_layers": N_LAYERS,
            "num_attention_heads": N_HEADS,
            "num_key_value_heads": N_KV_HEADS,
            "head_dim": HEAD_DIM,
            "intermediate_size": D_FF,
            "vocab_size": VOCAB,
            "max_position_embeddings": CONTEXT,
            "rope_theta": ROPE_THETA,
            "rms_norm_eps": RMS_EPS,
            "hidden_act": "silu",
            "tie_word_embeddings": self.tied,
            "rope_scaling": null,
            "torch_dtype": "float32",
        })
    }

    /// The tensors in `dtype` (F32, F16 or BF16), ready for `safetensors::serialize`.
    fn encoded(&self, dtype: Dtype) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
        self.tensors
            .iter()
            .map(|(name, (shape, values))| {
                (name.clone(), dtype, shape.clone(), encode(values, dtype))
            })
            .collect()
    }

    /// A Hugging Face directory: config.json and one model.safetensors.
    fn write_hf(&self, dir: &Path, dtype: Dtype) {
        std::fs::write(dir.join("config.json"), self.config_json().to_string()).unwrap();
        write_safetensors(&dir.join("model.safetensors"), &self.encoded(dtype));
    }

    /// The same model as a GGUF file with F32 tensors, laid out as llama.cpp's
    /// `convert_hf_to_gguf.py` writes it (Q/K rows permuted for `llama`).
    fn gguf(&self, permute_qk: bool) -> GgufFile {
        let mut w = GgufWriter::default();
        w.kv_str("general.architecture", self.arch);
        let key = |k: &str| format!("{}.{k}", self.arch);
        w.kv_u32(&key("block_count"), N_LAYERS as u32);
        w.kv_u32(&key("embedding_length"), D_MODEL as u32);
        w.kv_u32(&key("feed_forward_length"), D_FF as u32);
        w.kv_u32(&key("attention.head_count"), N_HEADS as u32);
        w.kv_u32(&key("attention.head_count_kv"), N_KV_HEADS as u32);
        w.kv_u32(&key("attention.key_length"), HEAD_DIM as u32);
        w.kv_u32(&key("vocab_size"), VOCAB as u32);
        w.kv_u32(&key("context_length"), CONTEXT as u32);
        w.kv_f32(&key("rope.freq_base"), ROPE_THETA);
        w.kv_f32(&key("attention.layer_norm_rms_epsilon"), RMS_EPS);
        for (hf, (shape, values)) in &self.tensors {
            let name = gguf_name(hf);
            let values = match (permute_qk, name.rsplit('.').nth(1)) {
                (true, Some("attn_q")) => permute(values, shape, N_HEADS),
                (true, Some("attn_k")) => permute(values, shape, N_KV_HEADS),
                _ => values.clone(),
            };
            let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
            w.tensor(&name, &dims, &values);
        }
        GgufFile::from_vec(w.build()).unwrap()
    }
}

/// llama.cpp's `LlamaModel.permute`: `w.reshape(n_head, 2, rows / n_head / 2, *rest)
/// .swapaxes(1, 2).reshape(w.shape)`, so new row `h*hd + 2i + j` is old row
/// `h*hd + j*hd/2 + i`, which turns the halves pairing into adjacent pairs.
fn permute(values: &[f32], shape: &[usize], n_head: usize) -> Vec<f32> {
    let rows = shape[0];
    let row_len: usize = shape[1..].iter().product();
    let hd = rows / n_head;
    let half = hd / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let new = h * hd + 2 * i + j;
                let old = h * hd + j * half + i;
                out[new * row_len..(new + 1) * row_len]
                    .copy_from_slice(&values[old * row_len..(old + 1) * row_len]);
            }
        }
    }
    out
}

#[test]
fn permute_matches_numpy_swapaxes() {
    // One head of 4 rows of length 1: reshape(1, 2, 2, 1).swapaxes(1, 2) takes rows
    // [0, 1 | 2, 3] to [0, 2, 1, 3].
    assert_eq!(
        permute(&[0.0, 1.0, 2.0, 3.0], &[4, 1], 1),
        [0.0, 2.0, 1.0, 3.0]
    );
    // Two heads of 4 rows: each head separately.
    let v: Vec<f32> = (0..8).map(|x| x as f32).collect();
    assert_eq!(
        permute(&v, &[8, 1], 2),
        [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]
    );
}

fn gguf_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, rest) = rest.split_once('.').unwrap();
    let (part, kind) = rest.rsplit_once('.').unwrap();
    let part = match part {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        other => panic!("no GGUF name for {other}"),
    };
    format!("blk.{layer}.{part}.{kind}")
}

fn encode(values: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect(),
        other => panic!("no encoding for {other:?}"),
    }
}

fn write_safetensors(path: &Path, tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)]) {
    let views = tensors.iter().map(|(name, dtype, shape, data)| {
        (
            name.clone(),
            TensorView::new(*dtype, shape.clone(), data).unwrap(),
        )
    });
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// Just enough of a GGUF v3 writer for this model: u32, f32 and string metadata, F32
/// tensors at 32-byte alignment.
#[derive(Default)]
struct GgufWriter {
    kvs: Vec<u8>,
    n_kv: u64,
    tensors: Vec<(String, Vec<u64>, Vec<u8>)>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl GgufWriter {
    fn kv(&mut self, key: &str, ty: MetaType, value: &[u8]) {
        put_str(&mut self.kvs, key);
        self.kvs.extend_from_slice(&ty.id().to_le_bytes());
        self.kvs.extend_from_slice(value);
        self.n_kv += 1;
    }

    fn kv_u32(&mut self, key: &str, v: u32) {
        self.kv(key, MetaType::U32, &v.to_le_bytes());
    }

    fn kv_f32(&mut self, key: &str, v: f32) {
        self.kv(key, MetaType::F32, &v.to_le_bytes());
    }

    fn kv_str(&mut self, key: &str, v: &str) {
        let mut bytes = Vec::new();
        put_str(&mut bytes, v);
        self.kv(key, MetaType::String, &bytes);
    }

    fn tensor(&mut self, name: &str, dims: &[u64], values: &[f32]) {
        self.tensors
            .push((name.into(), dims.to_vec(), encode(values, Dtype::F32)));
    }

    fn build(&self) -> Vec<u8> {
        const ALIGN: usize = 32;
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.n_kv.to_le_bytes());
        out.extend_from_slice(&self.kvs);
        let mut offset = 0usize;
        for (name, dims, data) in &self.tensors {
            put_str(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&GgmlType::F32.id().to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset = (offset + data.len()).next_multiple_of(ALIGN);
        }
        let start = out.len().next_multiple_of(ALIGN);
        out.resize(start, 0);
        for (_, _, data) in &self.tensors {
            out.extend_from_slice(data);
            out.resize(out.len().next_multiple_of(ALIGN), 0);
        }
        out
    }
}

/// A fresh directory under the system's temporary one, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "meridian-safetensors-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Logits of the prompt's last token after one prefill step on the CPU backend.
fn logits(weights: &dyn WeightSource, config: ModelConfig) -> Vec<f32> {
    let mut backend = CpuBackend::load(weights, config, 16, 8, 1, &mut |_| {}).unwrap();
    let table = [0u32];
    let seqs = [BatchSeq {
        start: 0,
        len: PROMPT.len(),
        block_table: &table,
        logits: true,
    }];
    let mut out = vec![0f32; VOCAB];
    backend
        .step(
            &Batch {
                tokens: &PROMPT,
                seqs: &seqs,
            },
            &mut out,
        )
        .unwrap();
    out
}

/// Largest difference relative to the largest logit of `want`.
fn rel_diff(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

fn hf_logits(dir: &Path) -> Vec<f32> {
    let model = SafetensorsModel::open(dir).unwrap();
    logits(&model, model.config().clone())
}

fn gguf_logits(file: &GgufFile) -> Vec<f32> {
    logits(file, ModelConfig::from_gguf(file).unwrap())
}

fn assert_same_as_gguf(arch: &'static str, tied: bool) {
    let model = TinyModel::new(arch, tied, 7);
    let dir = ScratchDir::new(&format!("same-{arch}-{tied}"));
    model.write_hf(dir.path(), Dtype::F32);
    let hf = SafetensorsModel::open(dir.path()).unwrap();
    assert_eq!(hf.has("output.weight"), !tied);
    assert!(hf.has("token_embd.weight") && hf.has("blk.1.ffn_down.weight"));
    assert_eq!(hf.has("blk.0.attn_q.bias"), arch == "qwen2");
    assert!(!hf.has("blk.2.attn_q.weight") && !hf.has("rope_freqs.weight"));

    // llama.cpp permutes Q/K only for `llama`; `qwen2` GGUF files keep HF's order.
    let gguf = model.gguf(arch == "llama");
    let (hf_config, gguf_config) = (hf.config().clone(), ModelConfig::from_gguf(&gguf).unwrap());
    assert_eq!(hf_config.rope_style, super::RopeStyle::Halves);
    assert_eq!(
        super::ModelConfig {
            rope_style: hf_config.rope_style,
            ..gguf_config.clone()
        },
        hf_config
    );

    let want = logits(&gguf, gguf_config);
    let got = logits(&hf, hf_config);
    let diff = rel_diff(&got, &want);
    assert!(diff < 1e-3, "{arch} tied={tied}: relative diff {diff}");
}

#[test]
fn llama_matches_the_converted_gguf() {
    assert_same_as_gguf("llama", false);
}

#[test]
fn llama_with_tied_embeddings_matches_the_converted_gguf() {
    assert_same_as_gguf("llama", true);
}

#[test]
fn qwen2_with_biases_matches_its_gguf() {
    assert_same_as_gguf("qwen2", false);
}

/// The comparison above has teeth: the same weights without llama.cpp's permutation,
/// run with interleaved pairs, give clearly different logits.
#[test]
fn a_wrong_rope_layout_is_detected() {
    let model = TinyModel::new("llama", false, 7);
    let right = gguf_logits(&model.gguf(true));
    let wrong = gguf_logits(&model.gguf(false));
    let diff = rel_diff(&wrong, &right);
    assert!(diff > 0.05, "relative diff only {diff}");
}

#[test]
fn f16_and_bf16_checkpoints_match_f32() {
    let model = TinyModel::new("llama", false, 11);
    let f32_dir = ScratchDir::new("f32");
    model.write_hf(f32_dir.path(), Dtype::F32);
    let want = hf_logits(f32_dir.path());
    for (dtype, ty, tolerance) in [
        (Dtype::F16, GgmlType::F16, 3e-2),
        (Dtype::BF16, GgmlType::Bf16, 5e-2),
    ] {
        let dir = ScratchDir::new(&format!("{dtype:?}"));
        model.write_hf(dir.path(), dtype);
        let hf = SafetensorsModel::open(dir.path()).unwrap();
        let t = hf.tensor("blk.0.attn_k.weight").unwrap();
        assert_eq!(t.ty, ty);
        assert_eq!(t.dims, [D_MODEL, N_KV_HEADS * HEAD_DIM]);
        assert_eq!(t.data.len(), D_MODEL * N_KV_HEADS * HEAD_DIM * 2);
        let got = hf_logits(dir.path());
        let diff = rel_diff(&got, &want);
        assert!(diff < tolerance, "{dtype:?}: relative diff {diff}");
    }
}

#[test]
fn sharded_checkpoints_load_through_the_index() {
    let model = TinyModel::new("llama", false, 3);
    let single = ScratchDir::new("single");
    model.write_hf(single.path(), Dtype::F32);
    let want = hf_logits(single.path());

    let dir = ScratchDir::new("sharded");
    std::fs::copy(
        single.path().join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let tensors = model.encoded(Dtype::F32);
    let (first, second) = tensors.split_at(tensors.len() / 2);
    let names = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    let mut weight_map = serde_json::Map::new();
    for (file, part) in names.iter().zip([first, second]) {
        write_safetensors(&dir.path().join(file), part);
        for (name, ..) in part {
            weight_map.insert(name.clone(), json!(file));
        }
    }
    let index = json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    let index_path = dir.path().join("model.safetensors.index.json");
    std::fs::write(&index_path, index.to_string()).unwrap();
    assert_eq!(hf_logits(dir.path()), want);

    // A shard outside the directory is refused, not followed.
    let mut evil = index.clone();
    evil["weight_map"]["model.norm.weight"] = json!("../norm.safetensors");
    std::fs::write(&index_path, evil.to_string()).unwrap();
    let err = open_err(dir.path());
    assert!(err.contains("not a plain file name"), "{err}");

    // The index places a tensor in a shard that lacks it.
    let mut wrong = index;
    wrong["weight_map"]["model.norm.weight"] = json!(names[0]);
    std::fs::write(&index_path, wrong.to_string()).unwrap();
    let err = open_err(dir.path());
    assert!(
        err.contains("has no tensor model.norm.weight") && err.contains(names[0]),
        "{err}"
    );
}

fn open_err(dir: &Path) -> String {
    SafetensorsModel::open(dir).unwrap_err().to_string()
}

/// A valid checkpoint directory whose config.json is `config` after `edit`.
fn with_config(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> ScratchDir {
    let model = TinyModel::new("llama", false, 5);
    let dir = ScratchDir::new(name);
    model.write_hf(dir.path(), Dtype::F32);
    let mut config = model.config_json();
    edit(&mut config);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    dir
}

#[test]
fn config_errors_name_the_file_and_the_field() {
    let dir = with_config("no-config", |_| {});
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let err = open_err(dir.path());
    assert!(
        err.contains("config.json") && err.contains("cannot read"),
        "{err}"
    );

    let dir = with_config("gpt2", |c| c["model_type"] = json!("gpt2"));
    let err = open_err(dir.path());
    assert!(
        err.contains("config.json") && err.contains("model_type \"gpt2\" is not supported"),
        "{err}"
    );

    let dir = with_config("llama3-rope", |c| {
        c["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0})
    });
    let err = open_err(dir.path());
    assert!(
        err.contains("rope_scaling") && err.contains("not supported"),
        "{err}"
    );

    let dir = with_config("no-hidden", |c| {
        c.as_object_mut().unwrap().remove("hidden_size");
    });
    let err = open_err(dir.path());
    assert!(err.contains("hidden_size"), "{err}");

    let dir = with_config("gelu", |c| c["hidden_act"] = json!("gelu"));
    assert!(open_err(dir.path()).contains("hidden_act"));

    let dir = with_config("bad-json", |_| {});
    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    let err = open_err(dir.path());
    assert!(err.contains("invalid JSON"), "{err}");
}

#[test]
fn hf_config_defaults_and_variants() {
    let base = TinyModel::new("llama", false, 1).config_json();
    let mut minimal = base.clone();
    for key in [
        "num_key_value_heads",
        "head_dim",
        "rope_theta",
        "rms_norm_eps",
        "rope_scaling",
        "hidden_act",
    ] {
        minimal.as_object_mut().unwrap().remove(key);
    }
    let c = ModelConfig::from_hf_config(&minimal).unwrap();
    assert_eq!((c.n_kv_heads, c.head_dim), (N_HEADS, D_MODEL / N_HEADS));
    assert_eq!((c.rope_theta, c.rms_eps), (10_000.0, 1e-6));
    assert!(!c.qkv_bias);

    let mut biased = base.clone();
    biased["attention_bias"] = json!(true);
    assert!(ModelConfig::from_hf_config(&biased).unwrap().qkv_bias);

    // Mistral v0.1's sliding window bounds the context the engine offers.
    let mut mistral = base.clone();
    mistral["model_type"] = json!("mistral");
    mistral["sliding_window"] = json!(128);
    let c = ModelConfig::from_hf_config(&mistral).unwrap();
    assert_eq!(
        (c.architecture.as_str(), c.context_length),
        ("mistral", 128)
    );
    mistral["sliding_window"] = json!(null);
    assert_eq!(
        ModelConfig::from_hf_config(&mistral)
            .unwrap()
            .context_length,
        CONTEXT
    );

    // transformers 5 keeps rope_theta under rope_parameters.
    let mut v5 = minimal;
    v5["rope_parameters"] = json!({"rope_theta": 500000.0, "rope_type": "default"});
    assert_eq!(
        ModelConfig::from_hf_config(&v5).unwrap().rope_theta,
        500_000.0
    );
    v5["rope_parameters"]["rope_type"] = json!("yarn");
    let err = ModelConfig::from_hf_config(&v5).unwrap_err().to_string();
    assert!(
        err.contains("rope_parameters") && err.contains("not supported"),
        "{err}"
    );

    let mut zero = base;
    zero["num_attention_heads"] = json!(0);
    assert!(ModelConfig::from_hf_config(&zero).is_err());
}

#[test]
fn unsupported_dtypes_name_the_tensor() {
    let model = TinyModel::new("llama", false, 5);
    let dir = ScratchDir::new("i64");
    model.write_hf(dir.path(), Dtype::F32);
    let mut tensors = model.encoded(Dtype::F32);
    let up = tensors
        .iter_mut()
        .find(|t| t.0 == "model.layers.0.mlp.up_proj.weight")
        .unwrap();
    up.1 = Dtype::I64;
    up.3 = vec![0u8; D_FF * D_MODEL * 8];
    write_safetensors(&dir.path().join("model.safetensors"), &tensors);

    let hf = SafetensorsModel::open(dir.path()).unwrap();
    let err = hf.tensor("blk.0.ffn_up.weight").unwrap_err().to_string();
    assert!(
        err.contains("model.layers.0.mlp.up_proj.weight")
            && err.contains("I64")
            && err.contains("model.safetensors"),
        "{err}"
    );
    let err = CpuBackend::load(&hf, hf.config().clone(), 16, 8, 1, &mut |_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("I64"), "{err}");
}

#[test]
fn malformed_safetensors_files_are_reported_by_name() {
    let model = TinyModel::new("llama", false, 5);
    let dir = ScratchDir::new("truncated");
    model.write_hf(dir.path(), Dtype::F32);
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();

    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let err = open_err(dir.path());
    assert!(
        err.contains("model.safetensors") && err.contains("not a valid safetensors file"),
        "{err}"
    );

    // Cut inside the header, a few bytes long, empty, a header length past the end,
    // a header that is not JSON: each an error, none a panic.
    let mut garbage = 12u64.to_le_bytes().to_vec();
    garbage.extend_from_slice(b"not json!!!!");
    let huge = u64::MAX.to_le_bytes().to_vec();
    for broken in [&bytes[..40], &bytes[..5], &[][..], &huge[..], &garbage[..]] {
        std::fs::write(&path, broken).unwrap();
        let err = open_err(dir.path());
        assert!(err.contains("model.safetensors"), "{err}");
    }

    std::fs::remove_file(&path).unwrap();
    let err = open_err(dir.path());
    assert!(err.contains("neither model.safetensors nor"), "{err}");
}

#[test]
fn missing_tensors_are_reported_at_open() {
    let model = TinyModel::new("llama", false, 5);
    let dir = ScratchDir::new("missing");
    model.write_hf(dir.path(), Dtype::F32);
    let path = dir.path().join("model.safetensors");

    let mut tensors = model.encoded(Dtype::F32);
    tensors.retain(|t| t.0 != "model.layers.1.mlp.down_proj.weight");
    write_safetensors(&path, &tensors);
    let err = open_err(dir.path());
    assert!(
        err.contains("model.layers.1.mlp.down_proj.weight")
            && err.contains("blk.1.ffn_down.weight")
            && err.contains("missing"),
        "{err}"
    );

    // Untied embeddings need lm_head.weight.
    let mut tensors = model.encoded(Dtype::F32);
    tensors.retain(|t| t.0 != "lm_head.weight");
    write_safetensors(&path, &tensors);
    let err = open_err(dir.path());
    assert!(err.contains("lm_head.weight"), "{err}");
}

#[test]
fn tied_checkpoints_that_also_store_lm_head_use_the_embedding() {
    let model = TinyModel::new("llama", false, 9);
    let dir = ScratchDir::new("tied-with-head");
    model.write_hf(dir.path(), Dtype::F32);
    let mut config = model.config_json();
    config["tie_word_embeddings"] = json!(true);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let hf = SafetensorsModel::open(dir.path()).unwrap();
    assert!(!hf.has("output.weight"));
    assert!(hf.tensor("output.weight").is_err());
}

#[test]
fn checkpoint_open_dispatches_on_what_the_path_is() {
    let model = TinyModel::new("llama", true, 13);
    let dir = ScratchDir::new("dispatch");
    let hf_dir = dir.path().join("hf");
    std::fs::create_dir(&hf_dir).unwrap();
    model.write_hf(&hf_dir, Dtype::F32);
    let gguf_bytes = model.gguf(true).as_bytes().to_vec();
    let gguf_path = dir.path().join("tiny.gguf");
    std::fs::write(&gguf_path, &gguf_bytes).unwrap();

    let gguf = Checkpoint::open(&gguf_path).unwrap();
    assert!(matches!(gguf, Checkpoint::Gguf(_)));
    let hf = Checkpoint::open(&hf_dir).unwrap();
    assert!(matches!(hf, Checkpoint::Safetensors(_)));
    let want = logits(gguf.weights(), gguf.config().unwrap());
    let got = logits(hf.weights(), hf.config().unwrap());
    assert!(rel_diff(&got, &want) < 1e-3);

    // GGUF by its magic, whatever the name.
    let unnamed = dir.path().join("model.bin");
    std::fs::write(&unnamed, &gguf_bytes).unwrap();
    assert!(matches!(
        Checkpoint::open(&unnamed).unwrap(),
        Checkpoint::Gguf(_)
    ));

    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "hello").unwrap();
    let err = Checkpoint::open(&text).unwrap_err().to_string();
    assert!(
        err.contains("notes.txt") && err.contains("neither a GGUF file nor a directory"),
        "{err}"
    );
    let err = Checkpoint::open(&hf_dir.join("model.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("pass the directory"), "{err}");
    let err = Checkpoint::open(&dir.path().join("absent.gguf")).unwrap_err();
    assert!(matches!(err, EngineError::Gguf(_)), "{err}");
    let err = Checkpoint::open(&dir.path().join("absent"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not exist"), "{err}");
    let err = Checkpoint::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("has no config.json"), "{err}");
}

/// A word-level tokenizer.json, the smallest file `tokenizers` loads.
const TOKENIZER_JSON: &str = r#"{
  "version": "1.0", "truncation": null, "padding": null,
  "added_tokens": [{"id": 3, "content": "<|endoftext|>", "single_word": false,
    "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
  "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
  "post_processor": null, "decoder": null,
  "model": {"type": "WordLevel", "unk_token": "<unk>",
    "vocab": {"<unk>": 0, "hello": 1, "world": 2, "<|endoftext|>": 3}}
}"#;

#[test]
fn checkpoint_tokenizer_reads_the_directory_files() {
    let model = TinyModel::new("llama", true, 13);
    let dir = ScratchDir::new("tokenizer");
    model.write_hf(dir.path(), Dtype::F32);
    let checkpoint = Checkpoint::open(dir.path()).unwrap();
    let err = checkpoint.tokenizer().unwrap_err().to_string();
    assert!(err.contains("tokenizer.json"), "{err}");

    std::fs::write(dir.path().join("tokenizer.json"), TOKENIZER_JSON).unwrap();
    let tok = checkpoint.tokenizer().unwrap();
    assert_eq!(tok.encode("hello world", false).unwrap(), [1, 2]);
    assert_eq!(tok.eos_id(), 3);
    assert!(!tok.has_chat_template());

    let config = json!({
        "eos_token": "<|endoftext|>",
        "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}",
    });
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    assert!(checkpoint.tokenizer().unwrap().has_chat_template());
}
