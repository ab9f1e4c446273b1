//! What prefix-aware scoring adds to a request on the router: turning the request into
//! the worker's exact prompt tokens with the model's own tokenizer and chat template
//! (`meridian::tokenize`), on the real SmolLM2 tokenizer, for a short chat and a long
//! one. Needs the cached model (`meridian models pull`).
//!
//! `cargo bench --bench router_tokenize`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use meridian_proto::worker::v1 as pb;
use meridian_router::tokens::PromptTokenizer;

fn chat(text: &str) -> pb::GenerateRequest {
    pb::GenerateRequest {
        input: Some(pb::generate_request::Input::Chat(pb::ChatInput {
            messages: vec![pb::ChatMessage {
                role: "user".into(),
                content: text.into(),
            }],
            add_generation_prompt: true,
        })),
        ..Default::default()
    }
}

fn main() {
    let path = meridian::assets::cached_path(&meridian::assets::SMOLLM2);
    if !path.exists() {
        eprintln!(
            "{} is not cached: run `meridian models pull`",
            path.display()
        );
        std::process::exit(2);
    }
    let tokenizer = meridian::tokenize::load(&path).expect("load the tokenizer");
    let short = chat("What is the capital of France? Answer in one word.");
    let long = chat(&"Meridian routes each request to the worker that answers first. ".repeat(80));
    for (name, request) in [("short chat", &short), ("long chat", &long)] {
        let tokens = tokenizer.prompt_tokens(request).unwrap().len();
        let mut times = Vec::with_capacity(2000);
        for round in 0..2 {
            times.clear();
            for _ in 0..2000 {
                let t = Instant::now();
                let n = tokenizer.prompt_tokens(request).map_or(0, |t| t.len());
                times.push(t.elapsed().as_nanos() as u64);
                assert_eq!(n, tokens);
            }
            if round == 0 {
                continue;
            }
        }
        times.sort_unstable();
        let pct = |p: f64| {
            times[((times.len() as f64 * p) as usize).min(times.len() - 1)] as f64 / 1000.0
        };
        println!(
            "{name}: {tokens} prompt tokens, p50 {:.1} us, p99 {:.1} us",
            pct(0.5),
            pct(0.99)
        );
    }
}
