//! The engine on the real SmolLM2-135M-Instruct Q4_1: known greedy continuations, batch
//! invariance, chunked prefill, prefix caching, preemption and bad requests.
//! `scripts/test` fetches the model first; these tests fail if it is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;

use meridian_engine::{
    Engine, EngineConfig, EngineError, FinishReason, Input, Request, SamplingParams,
};

fn model_path() -> PathBuf {
    let cache = std::env::var_os("MERIDIAN_CACHE_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/meridian")
        });
    let path = cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "{} is missing: run scripts/test (it runs `meridian models pull`)",
        path.display()
    );
    path
}

fn engine(config: EngineConfig) -> Arc<Engine> {
    Arc::new(Engine::load(&model_path(), &config).unwrap())
}

fn greedy(input: Input, max_tokens: u32) -> Request {
    Request {
        input,
        sampling: SamplingParams::default(),
        max_tokens,
        stop: Vec::new(),
        logprobs: false,
        ignore_eos: true,
    }
}

fn text(s: &str) -> Input {
    Input::Text(s.to_string())
}

/// Greedy continuations as llama.cpp gives them for the same GGUF (raw prompt, no BOS).
const KNOWN: &[(&str, &[u32])] = &[(
    "The capital of France is",
    &[
        7042, 30, 198, 198, 504, 1797, 1918, 553, 253, 2155, 282, 4723, 216, 35,
    ],
)];

#[test]
fn greedy_continuations_match_llama_cpp() {
    let e = engine(EngineConfig::default());
    for (prompt, want) in KNOWN {
        assert_eq!(e.prompt_tokens(&text(prompt)).unwrap().len(), 5);
        let out = e
            .generate_blocking(greedy(text(prompt), want.len() as u32))
            .unwrap();
        assert_eq!(
            out.token_ids, *want,
            "prompt {prompt:?} gave {:?}",
            out.text
        );
        assert_eq!(out.finish, Some(FinishReason::Length));
    }
    let out = e
        .generate_blocking(greedy(text("The capital of France is"), 14))
        .unwrap();
    assert_eq!(
        out.text,
        " Paris.\n\nThe United States has a population of approximately 3"
    );
}

/// Prompts of mixed lengths for the batch tests.
fn prompts() -> Vec<String> {
    let base = [
        "The capital of France is",
        "Write a haiku about the sea.",
        "def fibonacci(n):",
        "In 1492, Columbus",
        "The quick brown fox",
        "Explain how a transformer language model works, step by step, for a student who knows linear algebra.",
        "1, 2, 3, 4,",
        "Once upon a time",
    ];
    (0..32)
        .map(|i| {
            format!(
                "{}{}",
                base[i % base.len()],
                " and then".repeat(i / base.len())
            )
        })
        .collect()
}

fn run_all(e: &Engine, prompts: &[String], max_tokens: u32) -> Vec<Vec<u32>> {
    let receivers: Vec<_> = prompts
        .iter()
        .map(|p| e.submit(greedy(text(p), max_tokens)).unwrap())
        .collect();
    receivers
        .into_iter()
        .map(|mut rx| {
            let mut ids = Vec::new();
            while let Some(ev) = rx.blocking_recv() {
                match ev {
                    meridian_engine::Event::Token { id, .. } => ids.push(id),
                    meridian_engine::Event::Finished { .. } => break,
                }
            }
            ids
        })
        .collect()
}

#[test]
fn batching_and_chunked_prefill_do_not_change_greedy_tokens() {
    let prompts = prompts();
    let alone_engine = engine(EngineConfig::default());
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            alone_engine
                .generate_blocking(greedy(text(p), 12))
                .unwrap()
                .token_ids
        })
        .collect();
    drop(alone_engine);
    for max_batch_tokens in [512, 64, 7] {
        let e = engine(EngineConfig {
            max_batch_tokens,
            ..Default::default()
        });
        let batched = run_all(&e, &prompts, 12);
        for (i, (a, b)) in alone.iter().zip(&batched).enumerate() {
            assert_eq!(a, b, "prompt {i} with max_batch_tokens {max_batch_tokens}");
        }
    }
}

#[test]
fn a_cached_prefix_gives_the_same_tokens() {
    let e = engine(EngineConfig::default());
    let prompt = "Explain how a transformer language model works, step by step, for a student who knows linear algebra and some calculus.";
    let first = e.generate_blocking(greedy(text(prompt), 16)).unwrap();
    let second = e.generate_blocking(greedy(text(prompt), 16)).unwrap();
    assert_eq!(first.usage.cached_prompt_tokens, 0);
    assert!(
        second.usage.cached_prompt_tokens >= 16,
        "{:?}",
        second.usage
    );
    assert_eq!(first.token_ids, second.token_ids);
    assert!(e.stats().prefix_hit_rate > 0.0);
}

#[test]
fn a_cache_too_small_preempts_and_still_completes_every_request() {
    let prompts: Vec<String> = prompts().into_iter().take(12).collect();
    let reference = engine(EngineConfig::default());
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            reference
                .generate_blocking(greedy(text(p), 24))
                .unwrap()
                .token_ids
        })
        .collect();
    drop(reference);
    // 24 blocks of 16 tokens: enough for any one request, far from all twelve at once.
    let e = engine(EngineConfig {
        kv_blocks: 24,
        ..Default::default()
    });
    let batched = run_all(&e, &prompts, 24);
    assert!(
        e.stats().preemptions > 0,
        "the cache was meant to be too small"
    );
    assert_eq!(alone, batched);
    // Stats are published at the end of each step, just after the last events went out.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while e.stats().kv_blocks_free != 24 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(e.stats().kv_blocks_free, 24, "every block came back");
}

#[test]
fn bad_requests_are_refused_with_a_message() {
    let e = engine(EngineConfig::default());
    let err = |r: Request| match e.submit(r) {
        Err(EngineError::InvalidRequest(m)) => m,
        Err(other) => other.to_string(),
        Ok(_) => panic!("accepted"),
    };
    assert!(err(greedy(text("hi"), 0)).contains("max_tokens"));
    let long = "word ".repeat(9000);
    assert!(err(greedy(text(&long), 16)).contains("maximum context length"));
    let mut hot = greedy(text("hi"), 4);
    hot.sampling.temperature = -1.0;
    assert!(err(hot).contains("temperature"));
    let mut top_p = greedy(text("hi"), 4);
    top_p.sampling.top_p = 1.5;
    assert!(err(top_p).contains("top_p"));
    assert!(err(greedy(Input::Tokens(vec![]), 4)).contains("empty"));
    assert!(err(greedy(Input::Tokens(vec![999_999]), 4)).contains("vocabulary"));
    // The engine still serves normally afterwards.
    assert_eq!(
        e.generate_blocking(greedy(text("The capital of France is"), 2))
            .unwrap()
            .token_ids,
        [7042, 30]
    );
}

#[test]
fn seeded_sampling_is_reproducible_and_stop_strings_end_generation() {
    let e = engine(EngineConfig::default());
    let sampled = |seed| {
        let mut r = greedy(text("Once upon a time"), 24);
        r.sampling = SamplingParams {
            temperature: 0.9,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.0,
            seed: Some(seed),
        };
        e.generate_blocking(r).unwrap().token_ids
    };
    assert_eq!(sampled(7), sampled(7));
    assert_ne!(sampled(7), sampled(8));

    let mut r = greedy(text("The capital of France is"), 14);
    r.stop = vec!["United".into()];
    let out = e.generate_blocking(r).unwrap();
    assert_eq!(out.text, " Paris.\n\nThe ");
    assert_eq!(out.finish, Some(FinishReason::Stop));
}
