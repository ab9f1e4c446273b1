//! The engine on the real SmolLM2-135M-Instruct Q4_1: known greedy continuations, batch
//! invariance, chunked prefill, prefix caching, preemption, bad requests, and a worker
//! slot loading, draining and reloading the model.
//! `scripts/test` fetches the model first; these tests fail if it is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use meridian_engine::service::WorkerService;
use meridian_engine::slot::WorkerSlot;
use meridian_engine::testing::real_model_path;
use meridian_engine::{
    Engine, EngineConfig, EngineError, Event, FinishReason, Input, Request, SamplingParams,
};
use meridian_proto::worker::v1 as pb;
use meridian_proto::worker::v1::worker_server::Worker;
use tokio_stream::StreamExt;

fn engine(config: EngineConfig) -> Arc<Engine> {
    Arc::new(Engine::load(&real_model_path(), &config).unwrap())
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
const KNOWN: &[(&str, &[u32])] = &[
    (
        "The capital of France is",
        &[
            7042, 30, 198, 198, 504, 1797, 1918, 553, 253, 2155, 282, 4723, 216, 35, 33, 33, 2215,
            701, 30, 198, 198, 504, 1797, 1918,
        ],
    ),
    (
        "def fibonacci(n):",
        &[
            472, 585, 304, 1758, 216, 32, 42, 448, 1003, 216, 33, 472, 1003, 304, 1672, 3987,
            46477, 24, 94, 731, 216, 33, 25, 198,
        ],
    ),
    (
        "Once upon a time, in a small village,",
        &[
            665, 436, 253, 9357, 1573, 267, 19341, 3365, 3906, 103, 266, 30, 3906, 103, 266, 436,
            253, 4163, 282, 9019, 284, 761, 719, 7956,
        ],
    ),
    (
        "The three primary colors are",
        &[
            260, 3003, 4683, 282, 260, 35526, 2380, 1743, 28, 527, 359, 42, 198, 198, 26, 3950,
            365, 66, 727, 378, 3003, 2380, 338, 314,
        ],
    ),
    (
        "Water boils at a temperature of",
        &[
            1130, 216, 33, 28, 32, 32, 32, 4742, 51, 28, 1625, 357, 253, 3452, 5678, 284, 38255,
            6235, 30, 198, 198, 504, 768, 2765,
        ],
    ),
    (
        "import numpy as np\n",
        &[
            2017, 14671, 30, 20682, 347, 7088, 198, 198, 1604, 7529, 79, 18938, 79, 9818, 24,
            17874, 727, 472, 1003, 2028, 24, 17874, 25, 2272,
        ],
    ),
    (
        "Photosynthesis is the process by which",
        &[
            2109, 7728, 8118, 618, 1439, 30, 669, 980, 3445, 253, 3086, 282, 2819, 6620, 338, 1188,
            1379, 281, 260, 3711, 282, 2109, 30, 378,
        ],
    ),
    (
        "1, 2, 3, 4, 5,",
        &[
            216, 38, 28, 216, 39, 28, 216, 40, 28, 216, 41, 28, 216, 33, 32, 28, 216, 33, 33, 28,
            216, 33, 34, 28,
        ],
    ),
    (
        "The largest planet in our solar system is",
        &[
            14713, 28, 564, 357, 506, 441, 260, 805, 582, 30, 1385, 359, 800, 550, 9244, 281, 653,
            3693, 817, 28, 284, 502, 2316, 511,
        ],
    ),
    (
        "To make a cup of tea, first",
        &[
            28, 339, 737, 288, 5697, 260, 1267, 30, 339, 737, 288, 17663, 357, 28, 284, 965, 339,
            737, 288, 18244, 357, 618, 260, 44328,
        ],
    ),
    (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
        &[504, 2988, 314, 42, 216, 36, 2],
    ),
    (
        "The quick brown fox",
        &[
            351, 253, 2365, 6354, 7012, 30, 198, 198, 504, 2798, 6330, 314, 253, 8170, 1183, 282,
            253, 4500, 26997, 34631, 28, 837, 827, 1924,
        ],
    ),
];

#[test]
fn greedy_continuations_match_llama_cpp() {
    let e = engine(EngineConfig::default());
    assert_eq!(
        e.prompt_tokens(&text("The capital of France is")).unwrap(),
        [504, 3575, 282, 4649, 314]
    );
    // The reference case, exactly.
    let out = e
        .generate_blocking(greedy(text("The capital of France is"), 14))
        .unwrap();
    assert_eq!(
        out.token_ids,
        [
            7042, 30, 198, 198, 504, 1797, 1918, 553, 253, 2155, 282, 4723, 216, 35
        ]
    );
    assert_eq!(
        out.text,
        " Paris.\n\nThe United States has a population of approximately 3"
    );

    // The wider table: equal up to the first near-tie. Two engines that quantize
    // activations differently may pick either of two tokens whose logits are within
    // NEAR_TIE of each other; past that point the texts legitimately part.
    const NEAR_TIE: f32 = 0.2;
    let mut report = Vec::new();
    let (mut total_agreed, mut total) = (0, 0);
    for (prompt, want) in KNOWN {
        let (ids, margins) = greedy_with_margins(prompt, want.len());
        let agreed = ids.iter().zip(*want).take_while(|(a, b)| a == b).count();
        // Where the two part, our top two logits must be within NEAR_TIE.
        let margin = margins.get(agreed).copied().unwrap_or(f32::INFINITY);
        report.push(format!(
            "{prompt:?}: {agreed}/{} equal, margin there {margin:.3}",
            want.len()
        ));
        assert!(
            agreed == want.len() || margin < NEAR_TIE,
            "{prompt:?}: differs at token {agreed} with margin {margin:.3}: {ids:?} vs {want:?}"
        );
        total_agreed += agreed;
        total += want.len();
    }
    // And most of the table agrees outright.
    assert!(
        total_agreed * 2 > total,
        "only {total_agreed} of {total} tokens agree"
    );
    println!("{}", report.join("\n"));
}

/// Greedy decoding straight on the CPU backend, with each step's top-1/top-2 logit gap.
fn greedy_with_margins(prompt: &str, n: usize) -> (Vec<u32>, Vec<f32>) {
    use meridian_engine::backend::{Backend, Batch, BatchSeq, cpu::CpuBackend};
    use meridian_engine::model::checkpoint::Checkpoint;
    let ckpt = Checkpoint::open(&real_model_path()).unwrap();
    let config = ckpt.config().unwrap();
    let tokenizer = ckpt.tokenizer().unwrap();
    let vocab = config.vocab_size;
    let mut backend = CpuBackend::load(ckpt.weights(), config, 16, 8, 0, &mut |_| {}).unwrap();
    let table: Vec<u32> = (0..8).collect();
    let mut tokens = tokenizer.encode(prompt, true).unwrap();
    let mut logits = vec![0f32; vocab];
    let (mut ids, mut margins) = (Vec::new(), Vec::new());
    let mut start = 0;
    for _ in 0..n {
        let chunk = &tokens[start..];
        let seqs = [BatchSeq {
            start,
            len: chunk.len(),
            block_table: &table,
            logits: true,
        }];
        backend
            .step(
                &Batch {
                    tokens: chunk,
                    seqs: &seqs,
                },
                &mut logits,
            )
            .unwrap();
        start = tokens.len();
        let mut order: Vec<usize> = (0..vocab).collect();
        order.select_nth_unstable_by(1, |&a, &b| logits[b].total_cmp(&logits[a]));
        let (best, second) = if logits[order[0]] >= logits[order[1]] {
            (order[0], order[1])
        } else {
            (order[1], order[0])
        };
        ids.push(best as u32);
        margins.push(logits[best] - logits[second]);
        tokens.push(best as u32);
    }
    (ids, margins)
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

/// The step profile the simulator's engine model is fitted on: one CSV line per step,
/// whose prefill and decode tokens add up to what the requests computed.
#[test]
fn the_step_profile_records_every_step() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("steps.csv");
    let e = engine(EngineConfig {
        max_batch_tokens: 16,
        step_profile: Some(path.clone()),
        ..Default::default()
    });
    let done = e
        .generate_blocking(greedy(
            text("Name the planets of the solar system, in order from the Sun, and say in one sentence what each of them is made of."),
            6,
        ))
        .unwrap();
    drop(e);
    let csv = std::fs::read_to_string(&path).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some(
            "unix_us,sequences,prefill_sequences,prefill_tokens,decode_tokens,context_tokens,step_us,prefill_attention,tile_tokens"
        )
    );
    let rows: Vec<Vec<u64>> = lines
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    let prefill: u64 = rows.iter().map(|r| r[3]).sum();
    let decode: u64 = rows.iter().map(|r| r[4]).sum();
    assert_eq!(prefill, u64::from(done.usage.prompt_tokens));
    // Chunks of 16: the prompt takes several steps; each later token one decode step.
    assert!(rows.iter().filter(|r| r[3] > 0).count() >= 2, "{csv}");
    assert_eq!(decode, u64::from(done.usage.completion_tokens) - 1, "{csv}");
    assert!(rows.iter().all(|r| r[6] > 0 && r[1] == 1));
    // The prompt's query-key pairs over its chunks: position p attends p + 1 tokens.
    let prompt = u64::from(done.usage.prompt_tokens);
    let attention: u64 = rows.iter().map(|r| r[7]).sum();
    assert_eq!(attention, prompt * (prompt + 1) / 2, "{csv}");
    assert!(rows.iter().all(|r| (r[3] == 0) == (r[7] == 0)), "{csv}");
    // The kernel's token tile on every line.
    let tile = meridian_engine::backend::cpu::matmul::Kernel::detect().token_tile() as u64;
    assert!(rows.iter().all(|r| r[8] == tile), "{csv}");
    // Appending to a profile of another format is refused, not mixed in.
    let old = dir.path().join("old.csv");
    std::fs::write(&old, "unix_us,step_us\n1,2\n").unwrap();
    let e = engine(EngineConfig {
        step_profile: Some(old.clone()),
        ..Default::default()
    });
    e.generate_blocking(greedy(text("Hello"), 2)).unwrap();
    drop(e);
    assert_eq!(
        std::fs::read_to_string(&old).unwrap(),
        "unix_us,step_us\n1,2\n"
    );
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

const MODEL_ID: &str = "SmolLM2-135M-Instruct";

/// Loads the real model into `slot` off the async threads.
async fn load_into(slot: &Arc<WorkerSlot>) {
    let (slot, path) = (slot.clone(), real_model_path());
    tokio::task::spawn_blocking(move || slot.load(MODEL_ID, &path))
        .await
        .unwrap()
        .unwrap();
}

/// Waits (at most 5 s) until the slot is DRAINING.
async fn until_draining(slot: &WorkerSlot) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while slot.state() != pb::WorkerState::Draining {
        assert!(std::time::Instant::now() < deadline, "{:?}", slot.state());
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_drains_after_its_running_generation_and_loads_again() {
    let slot = WorkerSlot::empty(EngineConfig::default());
    load_into(&slot).await;
    assert_eq!(slot.state(), pb::WorkerState::Warm);
    assert_eq!(slot.model_id().as_deref(), Some(MODEL_ID));
    assert_eq!(slot.load_progress(), 1.0);
    assert!(slot.load_figure().kv_blocks_total > 0);

    let engine = slot.engine().unwrap();
    let e = engine.clone();
    let out = tokio::task::spawn_blocking(move || {
        e.generate_blocking(greedy(text("The capital of France is"), 2))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(out.token_ids, [7042, 30]);

    // A long generation; once its first token is out the engine's stats show it, and
    // the drain must wait for its last.
    let mut events = engine
        .submit(greedy(text("Once upon a time, in a small village,"), 48))
        .unwrap();
    drop(engine);
    assert!(matches!(events.recv().await, Some(Event::Token { .. })));
    let drain = tokio::spawn({
        let slot = slot.clone();
        async move { slot.drain().await }
    });
    until_draining(&slot).await;
    assert!(slot.admit().is_err(), "a draining slot admits nothing");
    let mut tokens = 1;
    let finish = loop {
        match events.recv().await {
            Some(Event::Token { .. }) => tokens += 1,
            Some(Event::Finished { reason, usage, .. }) => break (reason, usage),
            None => panic!("the generation was cut after {tokens} tokens"),
        }
    };
    assert_eq!(finish.0, FinishReason::Length);
    assert_eq!((tokens, finish.1.completion_tokens), (48, 48));
    drain.await.unwrap().unwrap();
    assert_eq!(slot.state(), pb::WorkerState::Unloaded);
    assert!(slot.engine().is_none());
    assert_eq!(slot.model_id(), None);
    assert_eq!(slot.load_figure(), pb::WorkerLoad::default());

    load_into(&slot).await;
    assert_eq!(slot.state(), pb::WorkerState::Warm);
    let e = slot.engine().unwrap();
    let out = tokio::task::spawn_blocking(move || {
        e.generate_blocking(greedy(text("The capital of France is"), 2))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(out.token_ids, [7042, 30]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_refuses_while_draining_and_finishes_what_it_admitted() {
    let slot = WorkerSlot::with_engine(
        EngineConfig::default(),
        engine(EngineConfig::default()),
        MODEL_ID.to_string(),
    );
    let service = WorkerService::new(slot.clone());
    let request = pb::GenerateRequest {
        model: MODEL_ID.to_string(),
        input: Some(pb::generate_request::Input::Prompt(
            "Once upon a time".to_string(),
        )),
        max_tokens: 32,
        ignore_eos: true,
        ..Default::default()
    };
    let wrong_model = pb::GenerateRequest {
        model: "another-model".to_string(),
        ..request.clone()
    };
    let status = service
        .generate(tonic::Request::new(wrong_model))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(slot.in_flight(), 0);

    let mut stream = service
        .generate(tonic::Request::new(request.clone()))
        .await
        .unwrap()
        .into_inner();
    // Drain at once: the step thread may not have picked the request up yet, and the
    // drain must still wait for it.
    assert_eq!(slot.in_flight(), 1);
    let drain = tokio::spawn({
        let slot = slot.clone();
        async move { slot.drain().await }
    });
    until_draining(&slot).await;
    let status = service
        .generate(tonic::Request::new(request))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.message().starts_with("worker is draining"),
        "{}",
        status.message()
    );
    let health = service
        .health(tonic::Request::new(pb::HealthRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.state(), pb::WorkerState::Draining);
    assert_eq!(health.models[0].id, MODEL_ID);

    let mut tokens = 0;
    let mut last = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        tokens += chunk.token_ids.len();
        last = Some(chunk);
    }
    let last = last.unwrap();
    assert_eq!(last.finish_reason(), pb::FinishReason::Length);
    assert_eq!((tokens, last.usage.unwrap().completion_tokens), (32, 32));
    drain.await.unwrap().unwrap();
    assert_eq!(slot.in_flight(), 0);
    let health = service
        .health(tonic::Request::new(pb::HealthRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.state(), pb::WorkerState::Unloaded);
    assert!(health.models.is_empty());
    let stats = service
        .stats(tonic::Request::new(pb::StatsRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.load, Some(pb::WorkerLoad::default()));
}
