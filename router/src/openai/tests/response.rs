use serde_json::{Value, json};

use super::assert_shape;
use crate::openai::{
    ApiError, Endpoint, FinishReason, SSE_DONE, StreamWriter, Usage, chat_completion,
    completion_body, model_object, models_list, response_id, sse_error, sse_event, text_completion,
    token_id_logprobs,
};

fn parse(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

fn usage_json() -> Value {
    json!({"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13,
        "prompt_tokens_details": {"cached_tokens": 8}})
}

#[test]
fn error_constructors() {
    let cases = [
        (
            ApiError::unauthorized("bad key"),
            401,
            "authentication_error",
        ),
        (
            ApiError::not_found_model("gpt-9"),
            404,
            "invalid_request_error",
        ),
        (ApiError::not_found_route("/v2/x"), 404, "not_found_error"),
        (
            ApiError::payload_too_large(1024),
            413,
            "invalid_request_error",
        ),
        (ApiError::rate_limited("slow down"), 429, "rate_limit_error"),
        (ApiError::unavailable("no capacity"), 503, "server_error"),
        (ApiError::internal("boom"), 500, "server_error"),
        (
            ApiError::bad_request("x", None),
            400,
            "invalid_request_error",
        ),
    ];
    for (e, status, kind) in cases {
        assert_eq!((e.status, e.kind), (status, kind));
        assert_shape(&e);
    }
    let e = ApiError::not_found_model("gpt-9");
    assert_eq!(e.message, "The model `gpt-9` does not exist");
    assert_eq!(e.code.as_deref(), Some("model_not_found"));
    assert!(ApiError::payload_too_large(1024).message.contains("1024"));
    let body = parse(&ApiError::bad_request("m \"quoted\"\n", Some("p")).body());
    assert_eq!(
        body,
        json!({"error": {"message": "m \"quoted\"\n", "type": "invalid_request_error",
            "param": "p", "code": null}})
    );
}

#[test]
fn ids_and_framing() {
    assert_eq!(
        response_id(Endpoint::Chat, 255),
        "chatcmpl-00000000000000ff"
    );
    assert_eq!(
        response_id(Endpoint::Completion, 1),
        "cmpl-0000000000000001"
    );
    assert_eq!(sse_event("{}"), "data: {}\n\n");
    assert_eq!(SSE_DONE, "data: [DONE]\n\n");
    let e = sse_error(&ApiError::internal("x"));
    assert!(e.starts_with("data: {\"error\":") && e.ends_with("}\n\n"));
}

#[test]
fn whole_chat_completion() {
    let lp = [
        ("Hel".to_owned(), -0.5),
        ("lo".to_owned(), f32::NEG_INFINITY),
    ];
    let body = parse(&chat_completion(
        "chatcmpl-1",
        1_700_000_000,
        "m",
        "Hello",
        FinishReason::Stop,
        Usage::new(10, 3, 8),
        Some(&lp),
    ));
    assert_eq!(
        body,
        json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000u64,
            "model": "m", "choices": [{"index": 0,
                "message": {"role": "assistant", "content": "Hello"},
                "logprobs": {"content": [
                    {"token": "Hel", "logprob": -0.5, "bytes": null, "top_logprobs": []},
                    {"token": "lo", "logprob": -9999.0, "bytes": null, "top_logprobs": []}]},
                "finish_reason": "stop"}],
            "usage": usage_json()})
    );
    let body = parse(&chat_completion(
        "c",
        1,
        "m",
        "",
        FinishReason::Length,
        Usage::default(),
        None,
    ));
    assert!(body["choices"][0]["logprobs"].is_null());
    assert_eq!(body["choices"][0]["finish_reason"], "length");
}

#[test]
fn whole_text_completion() {
    let lp = [("é".to_owned(), -1.0), ("b".to_owned(), -2.0)];
    let body = parse(&text_completion(
        "cmpl-1",
        5,
        "m",
        "éb",
        FinishReason::Length,
        Usage::new(10, 3, 8),
        Some(&lp),
    ));
    assert_eq!(
        body,
        json!({"id": "cmpl-1", "object": "text_completion", "created": 5, "model": "m",
            "choices": [{"index": 0, "text": "éb", "finish_reason": "length", "logprobs": {
                "tokens": ["é", "b"], "token_logprobs": [-1.0, -2.0],
                "top_logprobs": [{"é": -1.0}, {"b": -2.0}], "text_offset": [0, 1]}}],
            "usage": usage_json()})
    );
    let body = parse(&completion_body(
        Endpoint::Completion,
        "cmpl-2",
        5,
        "m",
        "x",
        FinishReason::Stop,
        Usage::default(),
        None,
    ));
    assert_eq!(body["object"], "text_completion");
    assert!(body["choices"][0]["logprobs"].is_null());
}

#[test]
fn chat_stream_shapes() {
    let mut w = StreamWriter::new(Endpoint::Chat, "chatcmpl-9", 7, "m", true);
    let first = parse(&w.start().expect("chat has a first chunk"));
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(
        (first["id"].as_str(), first["created"].as_u64()),
        (Some("chatcmpl-9"), Some(7))
    );
    assert_eq!(
        first["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert!(first["choices"][0]["finish_reason"].is_null());
    assert!(first["usage"].is_null() && first.get("usage").is_some());

    let lp = [("Hi".to_owned(), -0.25)];
    let delta = parse(&w.delta("Hi", Some(&lp)));
    assert_eq!(delta["choices"][0]["delta"], json!({"content": "Hi"}));
    assert_eq!(
        delta["choices"][0]["logprobs"]["content"][0]["logprob"],
        -0.25
    );
    let plain = parse(&w.delta("!", None));
    assert!(plain["choices"][0]["logprobs"].is_null());

    let last = parse(&w.finish(FinishReason::Stop));
    assert_eq!(last["choices"][0]["delta"], json!({}));
    assert_eq!(last["choices"][0]["finish_reason"], "stop");

    let usage = parse(&w.usage(Usage::new(10, 3, 8)).expect("asked for usage"));
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["object"], "chat.completion.chunk");
    assert_eq!(usage["usage"], usage_json());
}

#[test]
fn stream_without_usage_omits_it() {
    let mut w = StreamWriter::new(Endpoint::Chat, "c", 7, "m", false);
    assert!(parse(&w.delta("x", None)).get("usage").is_none());
    assert!(w.usage(Usage::default()).is_none());
}

#[test]
fn completion_stream_shapes() {
    let mut w = StreamWriter::new(Endpoint::Completion, "cmpl-9", 7, "m", true);
    assert!(w.start().is_none());
    let a = parse(&w.delta("ab", Some(&[("ab".to_owned(), -1.0)])));
    assert_eq!(a["object"], "text_completion");
    assert_eq!(a["choices"][0]["text"], "ab");
    assert!(a["choices"][0]["finish_reason"].is_null());
    let b = parse(&w.delta("c", Some(&[("c".to_owned(), -1.0)])));
    assert_eq!(b["choices"][0]["logprobs"]["text_offset"], json!([2]));
    let last = parse(&w.finish(FinishReason::Length));
    assert_eq!(last["choices"][0]["text"], "");
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    let usage = parse(&w.usage(Usage::new(10, 3, 8)).expect("usage"));
    assert_eq!(
        (usage["choices"].clone(), usage["usage"].clone()),
        (json!([]), usage_json())
    );
}

#[test]
fn model_list() {
    let body = parse(&models_list([("a", 1), ("b", 2)]));
    assert_eq!(
        body,
        json!({"object": "list", "data": [
            {"id": "a", "object": "model", "created": 1, "owned_by": "meridian"},
            {"id": "b", "object": "model", "created": 2, "owned_by": "meridian"}]})
    );
    assert_eq!(
        parse(&models_list([])),
        json!({"object": "list", "data": []})
    );
    assert_eq!(parse(&model_object("a", 1))["id"], "a");
}

#[test]
fn token_ids_as_logprob_tokens() {
    assert_eq!(
        token_id_logprobs(&[7, 9], &[-0.5, -1.5, -3.0]),
        [
            ("token_id:7".to_owned(), -0.5),
            ("token_id:9".to_owned(), -1.5)
        ]
    );
}
