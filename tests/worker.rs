//! `meridian worker` on the real model, over gRPC: streamed generation, chat, bad
//! requests refused with INVALID_ARGUMENT, and cancellation freeing the sequence.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use meridian_proto::worker::v1 as pb;
use meridian_proto::worker::v1::worker_client::WorkerClient;
use support::{Proc, meridian};
use tonic::transport::Channel;

const MODEL: &str = "SmolLM2-135M-Instruct";

async fn start() -> (Proc, WorkerClient<Channel>) {
    let mut cmd = meridian();
    cmd.args(["worker", "--listen", "127.0.0.1:0"]).env(
        "MERIDIAN_POP__METRICS_LISTEN",
        support::free_addr().to_string(),
    );
    let proc = Proc::spawn(cmd);
    let line = proc.wait_for_line("worker serving", Duration::from_secs(60));
    let endpoint = line.rsplit(' ').next().unwrap().to_string();
    let client = WorkerClient::connect(endpoint).await.unwrap();
    (proc, client)
}

fn prompt(text: &str, max_tokens: u32) -> pb::GenerateRequest {
    pb::GenerateRequest {
        request_id: "test".into(),
        model: MODEL.into(),
        input: Some(pb::generate_request::Input::Prompt(text.into())),
        sampling: Some(pb::SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: None,
        }),
        max_tokens,
        ..Default::default()
    }
}

async fn collect(
    client: &mut WorkerClient<Channel>,
    req: pb::GenerateRequest,
) -> Vec<pb::GenerateResponse> {
    let mut stream = client.generate(req).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        out.push(chunk);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_generates_refuses_bad_requests_and_cancels() {
    let (_proc, mut client) = start().await;

    let health = client
        .health(pb::HealthRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.state(), pb::WorkerState::Warm);
    assert_eq!(health.models[0].id, MODEL);
    assert_eq!(health.models[0].context_length, 8192);

    // Streamed greedy generation: one chunk per token, then the finish with usage.
    let chunks = collect(&mut client, prompt("The capital of France is", 14)).await;
    let ids: Vec<u32> = chunks.iter().flat_map(|c| c.token_ids.clone()).collect();
    assert_eq!(
        ids,
        [
            7042, 30, 198, 198, 504, 1797, 1918, 553, 253, 2155, 282, 4723, 216, 35
        ]
    );
    let text: String = chunks.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(
        text,
        " Paris.\n\nThe United States has a population of approximately 3"
    );
    let last = chunks.last().unwrap();
    assert_eq!(last.finish_reason(), pb::FinishReason::Length);
    let usage = last.usage.unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (5, 14));

    // Chat input goes through the model's template and ends on its own.
    let chat = pb::GenerateRequest {
        input: Some(pb::generate_request::Input::Chat(pb::ChatInput {
            messages: vec![pb::ChatMessage {
                role: "user".into(),
                content: "Say hello.".into(),
            }],
            add_generation_prompt: true,
        })),
        ..prompt("", 64)
    };
    let chunks = collect(&mut client, chat).await;
    let last = chunks.last().unwrap();
    assert!(
        last.usage.unwrap().prompt_tokens > 20,
        "the template adds a system prompt"
    );
    assert_ne!(last.finish_reason(), pb::FinishReason::Unspecified);

    // Bad requests: INVALID_ARGUMENT with a message naming the problem.
    let bad = |r: pb::GenerateRequest| {
        let mut c = client.clone();
        async move { c.generate(r).await.expect_err("refused") }
    };
    let cases = [
        (
            pb::GenerateRequest {
                model: "gpt-9".into(),
                ..prompt("hi", 4)
            },
            "gpt-9",
        ),
        (prompt("hi", 0), "max_tokens"),
        (prompt(&"word ".repeat(9000), 8), "maximum context length"),
        (
            pb::GenerateRequest {
                input: None,
                ..prompt("hi", 4)
            },
            "input",
        ),
        (
            pb::GenerateRequest {
                sampling: Some(pb::SamplingParams {
                    temperature: -1.0,
                    ..Default::default()
                }),
                ..prompt("hi", 4)
            },
            "temperature",
        ),
        (
            pb::GenerateRequest {
                sampling: Some(pb::SamplingParams {
                    top_p: 2.0,
                    ..Default::default()
                }),
                ..prompt("hi", 4)
            },
            "top_p",
        ),
    ];
    for (req, needle) in cases {
        let status = bad(req).await;
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains(needle),
            "{needle:?} not in {:?}",
            status.message()
        );
    }

    // Cancelling the stream frees the sequence and its KV blocks.
    let long = pb::GenerateRequest {
        ignore_eos: true,
        ..prompt("Once upon a time", 4000)
    };
    let mut stream = client.generate(long).await.unwrap().into_inner();
    for _ in 0..3 {
        stream.message().await.unwrap().unwrap();
    }
    drop(stream);
    let mut freed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let load = client
            .stats(pb::StatsRequest {})
            .await
            .unwrap()
            .into_inner()
            .load
            .unwrap();
        if load.running_sequences == 0 && load.kv_blocks_free == load.kv_blocks_total {
            freed = true;
            break;
        }
    }
    assert!(freed, "the cancelled sequence still holds its blocks");

    // Still serving normally.
    let chunks = collect(&mut client, prompt("The capital of France is", 2)).await;
    let ids: Vec<u32> = chunks.iter().flat_map(|c| c.token_ids.clone()).collect();
    assert_eq!(ids, [7042, 30]);
}
