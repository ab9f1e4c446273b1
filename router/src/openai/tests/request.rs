use serde_json::{Value, json};

use super::assert_400;
use crate::openai::request::DEFAULT_COMPLETION_MAX_TOKENS;
use crate::openai::{
    ApiError, ChatMessage, Endpoint, GenerationRequest, Prompt, Role, parse_chat, parse_completion,
};

fn chat(v: Value) -> Result<GenerationRequest, ApiError> {
    parse_chat(v.to_string().as_bytes())
}

fn completion(v: Value) -> Result<GenerationRequest, ApiError> {
    parse_completion(v.to_string().as_bytes())
}

/// A minimal chat body with `extra` merged in (a `null` in `extra` removes the key).
fn chat_with(extra: Value) -> Value {
    let mut base = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    merge(&mut base, extra);
    base
}

fn completion_with(extra: Value) -> Value {
    let mut base = json!({"model": "m", "prompt": "hi"});
    merge(&mut base, extra);
    base
}

fn merge(base: &mut Value, extra: Value) {
    let (Some(base), Value::Object(extra)) = (base.as_object_mut(), extra) else {
        return;
    };
    for (k, v) in extra {
        if v.is_null() {
            base.remove(&k);
        } else {
            base.insert(k, v);
        }
    }
}

fn chat_err(extra: Value, param: Option<&str>) -> ApiError {
    let e = chat(chat_with(extra)).expect_err("should be rejected");
    assert_400(&e, param);
    e
}

fn completion_err(extra: Value, param: Option<&str>) -> ApiError {
    let e = completion(completion_with(extra)).expect_err("should be rejected");
    assert_400(&e, param);
    e
}

#[test]
fn minimal_chat_gets_openai_defaults() {
    let r = chat(chat_with(json!({}))).unwrap();
    assert_eq!(r.model, "m");
    assert_eq!(
        r.prompt,
        Prompt::Chat(vec![ChatMessage {
            role: Role::User,
            content: "hi".into()
        }])
    );
    assert_eq!(r.max_tokens, None);
    assert_eq!(
        (r.temperature, r.top_p, r.top_k, r.min_p),
        (1.0, 1.0, 0, 0.0)
    );
    assert_eq!(r.seed, None);
    assert!(r.stop.is_empty());
    assert!(!r.stream && !r.include_usage && !r.logprobs && !r.ignore_eos);
    assert_eq!(r.user, None);
    assert_eq!(r.kind, Endpoint::Chat);
}

#[test]
fn every_field_is_read() {
    let r = chat(chat_with(json!({
        "max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "top_k": 40, "min_p": 0.05,
        "seed": 42, "stop": ["a", "b"], "stream": true,
        "stream_options": {"include_usage": true}, "logprobs": true, "ignore_eos": true,
        "user": "u-1", "n": 1, "frequency_penalty": 0, "presence_penalty": 0.0,
    })))
    .unwrap();
    assert_eq!(r.max_tokens, Some(7));
    assert_eq!(
        (r.temperature, r.top_p, r.top_k, r.min_p),
        (0.5, 0.9, 40, 0.05)
    );
    assert_eq!(r.seed, Some(42));
    assert_eq!(r.stop, ["a", "b"]);
    assert!(r.stream && r.include_usage && r.logprobs && r.ignore_eos);
    assert_eq!(r.user.as_deref(), Some("u-1"));
}

#[test]
fn nulls_read_as_absent() {
    let body = r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":null,
        "temperature":null,"top_p":null,"stop":null,"seed":null,"stream":null,"n":null,
        "stream_options":null,"user":null,"tools":null,"tool_choice":null,"logit_bias":null,
        "response_format":null,"frequency_penalty":null,"logprobs":null,"top_logprobs":null}"#;
    let r = parse_chat(body.as_bytes()).unwrap();
    assert_eq!((r.max_tokens, r.temperature, r.stream), (None, 1.0, false));
}

#[test]
fn max_completion_tokens_is_an_alias_and_wins() {
    assert_eq!(
        chat(chat_with(json!({"max_completion_tokens": 9})))
            .unwrap()
            .max_tokens,
        Some(9)
    );
    let both = json!({"max_tokens": 5, "max_completion_tokens": 9});
    assert_eq!(chat(chat_with(both)).unwrap().max_tokens, Some(9));
    chat_err(
        json!({"max_completion_tokens": 0}),
        Some("max_completion_tokens"),
    );
    chat_err(json!({"max_tokens": 0}), Some("max_tokens"));
    chat_err(json!({"max_tokens": -1}), Some("max_tokens"));
    chat_err(json!({"max_tokens": 1.5}), Some("max_tokens"));
    chat_err(json!({"max_tokens": "10"}), Some("max_tokens"));
}

#[test]
fn include_usage_needs_stream() {
    let r = chat(chat_with(
        json!({"stream_options": {"include_usage": true}}),
    ))
    .unwrap();
    assert!(!r.include_usage);
    let r = chat(chat_with(json!({"stream": true, "stream_options": {}}))).unwrap();
    assert!(r.stream && !r.include_usage);
    chat_err(
        json!({"stream": true, "stream_options": true}),
        Some("stream_options"),
    );
    chat_err(
        json!({"stream": true, "stream_options": {"include_usage": "yes"}}),
        Some("stream_options.include_usage"),
    );
}

#[test]
fn content_parts_are_concatenated() {
    let r = chat(json!({"model": "m", "messages": [
        {"role": "system", "content": [{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}]},
        {"role": "developer", "content": "d"},
        {"role": "assistant", "content": null, "tool_calls": []},
        {"role": "tool", "content": "t", "tool_call_id": "c1"},
        {"role": "user", "content": [], "name": "ann"},
    ]}))
    .unwrap();
    let Prompt::Chat(m) = r.prompt else {
        panic!("chat prompt")
    };
    let got: Vec<(&str, &str)> = m
        .iter()
        .map(|m| (m.role.as_str(), m.content.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("system", "be brief"),
            ("developer", "d"),
            ("assistant", ""),
            ("tool", "t"),
            ("user", "")
        ]
    );
}

#[test]
fn bad_messages_name_the_field() {
    chat_err(json!({"messages": null}), Some("messages"));
    chat_err(json!({"messages": []}), Some("messages"));
    chat_err(json!({"messages": "hi"}), Some("messages"));
    chat_err(json!({"messages": ["hi"]}), Some("messages.[0]"));
    chat_err(
        json!({"messages": [{"content": "x"}]}),
        Some("messages.[0].role"),
    );
    chat_err(
        json!({"messages": [{"role": 3, "content": "x"}]}),
        Some("messages.[0].role"),
    );
    let e = chat_err(
        json!({"messages": [{"role": "user", "content": "a"}, {"role": "function", "content": "x"}]}),
        Some("messages.[1].role"),
    );
    assert!(e.message.contains("function"), "{}", e.message);
    chat_err(
        json!({"messages": [{"role": "user"}]}),
        Some("messages.[0].content"),
    );
    chat_err(
        json!({"messages": [{"role": "user", "content": 5}]}),
        Some("messages.[0].content"),
    );
    let image = json!({"type": "image_url", "image_url": {"url": "http://x/y.png"}});
    let e = chat_err(
        json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, image]}]}),
        Some("messages.[0].content.[1].type"),
    );
    assert!(e.message.contains("image_url"), "{}", e.message);
    assert_eq!(e.code.as_deref(), Some("unsupported_parameter"));
    chat_err(
        json!({"messages": [{"role": "user", "content": [{"type": "text"}]}]}),
        Some("messages.[0].content.[0].text"),
    );
    chat_err(
        json!({"messages": [{"role": "user", "content": [{"text": "a"}]}]}),
        Some("messages.[0].content.[0].type"),
    );
    chat_err(
        json!({"messages": [{"role": "user", "content": [7]}]}),
        Some("messages.[0].content.[0]"),
    );
}

#[test]
fn model_is_required() {
    chat_err(json!({"model": null}), Some("model"));
    chat_err(json!({"model": ""}), Some("model"));
    chat_err(json!({"model": 5}), Some("model"));
    completion_err(json!({"model": null}), Some("model"));
}

#[test]
fn malformed_json_and_non_objects() {
    for body in [&b"{"[..], b"", b"nope", b"{\"model\": }", b"\xff\xfe"] {
        let e = parse_chat(body).expect_err("malformed");
        assert_400(&e, None);
        assert!(e.message.contains("could not parse"), "{}", e.message);
        assert_eq!(e.code, None);
    }
    for body in ["[]", "1", "\"s\"", "null"] {
        assert_400(
            &parse_completion(body.as_bytes()).expect_err("not an object"),
            None,
        );
    }
}

#[test]
fn sampling_ranges() {
    for ok in [
        json!({"temperature": 0}),
        json!({"temperature": 2}),
        json!({"top_p": 0}),
        json!({"top_p": 1}),
        json!({"top_k": -1}),
        json!({"top_k": 0}),
        json!({"min_p": 1}),
    ] {
        chat(chat_with(ok.clone())).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    assert_eq!(chat(chat_with(json!({"top_k": -1}))).unwrap().top_k, 0);
    chat_err(json!({"temperature": 2.01}), Some("temperature"));
    chat_err(json!({"temperature": -0.1}), Some("temperature"));
    chat_err(json!({"temperature": "hot"}), Some("temperature"));
    chat_err(json!({"top_p": 1.5}), Some("top_p"));
    chat_err(json!({"top_p": -1}), Some("top_p"));
    chat_err(json!({"min_p": 2}), Some("min_p"));
    chat_err(json!({"top_k": -2}), Some("top_k"));
    chat_err(json!({"top_k": 1.5}), Some("top_k"));
    chat_err(json!({"seed": -1}), Some("seed"));
    chat_err(json!({"seed": "1"}), Some("seed"));
    chat_err(json!({"stream": "true"}), Some("stream"));
    chat_err(json!({"ignore_eos": 1}), Some("ignore_eos"));
    chat_err(json!({"user": 1}), Some("user"));
    chat_err(json!({"logprobs": 1}), Some("logprobs"));
}

#[test]
fn n_must_be_one() {
    let e = chat_err(json!({"n": 2}), Some("n"));
    assert_eq!(e.message, "n > 1 is not supported");
    chat_err(json!({"n": 0}), Some("n"));
    completion_err(json!({"n": 3}), Some("n"));
}

#[test]
fn stop_forms() {
    assert_eq!(chat(chat_with(json!({"stop": "\n"}))).unwrap().stop, ["\n"]);
    assert_eq!(
        chat(chat_with(json!({"stop": ["x", ""]}))).unwrap().stop,
        ["x"]
    );
    assert!(
        chat(chat_with(json!({"stop": []})))
            .unwrap()
            .stop
            .is_empty()
    );
    assert!(
        chat(chat_with(json!({"stop": ""})))
            .unwrap()
            .stop
            .is_empty()
    );
    chat(chat_with(json!({"stop": ["a", "b", "c", "d"]}))).unwrap();
    chat_err(json!({"stop": ["a", "b", "c", "d", "e"]}), Some("stop"));
    chat_err(json!({"stop": 5}), Some("stop"));
    chat_err(json!({"stop": ["a", 5]}), Some("stop"));
}

#[test]
fn unsupported_features_are_refused() {
    for (extra, param) in [
        (json!({"frequency_penalty": 0.5}), "frequency_penalty"),
        (json!({"presence_penalty": -1}), "presence_penalty"),
        (json!({"repetition_penalty": 1.2}), "repetition_penalty"),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f"}}]}),
            "tools",
        ),
        (json!({"functions": [{"name": "f"}]}), "functions"),
        (json!({"tool_choice": "required"}), "tool_choice"),
        (
            json!({"response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (json!({"logit_bias": {"50256": -100}}), "logit_bias"),
        (json!({"top_logprobs": 2}), "top_logprobs"),
        (json!({"audio": {"voice": "alloy"}}), "audio"),
    ] {
        let e = chat_err(extra, Some(param));
        assert!(e.message.contains("not supported"), "{}", e.message);
    }
    // Their neutral values pass.
    chat(chat_with(
        json!({"tools": [], "tool_choice": "none", "logit_bias": {},
        "response_format": {"type": "text"}, "repetition_penalty": 1.0, "top_logprobs": 0}),
    ))
    .unwrap();
}

#[test]
fn prompt_forms() {
    let p =
        |prompt: Value| completion(completion_with(json!({"prompt": prompt}))).map(|r| r.prompt);
    assert_eq!(p(json!("hello")).unwrap(), Prompt::Text("hello".into()));
    assert_eq!(p(json!(["hello"])).unwrap(), Prompt::Text("hello".into()));
    assert_eq!(p(json!([1, 2, 3])).unwrap(), Prompt::Tokens(vec![1, 2, 3]));
    assert_eq!(p(json!([[4, 5]])).unwrap(), Prompt::Tokens(vec![4, 5]));
    assert_eq!(
        p(json!([4294967295u64])).unwrap(),
        Prompt::Tokens(vec![u32::MAX])
    );
    for batched in [json!(["a", "b"]), json!([[1], [2]]), json!(["a", [2]])] {
        let e = p(batched).expect_err("batched");
        assert_400(&e, Some("prompt"));
        assert_eq!(e.message, "batched prompts are not supported");
    }
    for bad in [
        json!(""),
        json!([]),
        json!([[]]),
        json!([""]),
        json!(5),
        json!({"a": 1}),
        json!([-1]),
        json!([1.5]),
        json!([4294967296u64]),
        json!([1, "a"]),
        json!([null]),
    ] {
        assert_400(&p(bad.clone()).expect_err(&bad.to_string()), Some("prompt"));
    }
    completion_err(json!({"prompt": null}), Some("prompt"));
}

#[test]
fn completion_fields() {
    let r = completion(completion_with(json!({}))).unwrap();
    assert_eq!(r.kind, Endpoint::Completion);
    assert_eq!(r.max_tokens, Some(DEFAULT_COMPLETION_MAX_TOKENS));
    assert!(!r.logprobs);
    for (lp, want) in [(json!(0), false), (json!(1), true), (json!(true), true)] {
        assert_eq!(
            completion(completion_with(json!({"logprobs": lp})))
                .unwrap()
                .logprobs,
            want
        );
    }
    completion_err(json!({"logprobs": 5}), Some("logprobs"));
    completion_err(json!({"logprobs": -1}), Some("logprobs"));
    completion_err(json!({"logprobs": "1"}), Some("logprobs"));
    completion_err(json!({"echo": true}), Some("echo"));
    completion_err(json!({"suffix": "end"}), Some("suffix"));
    completion_err(json!({"best_of": 2}), Some("best_of"));
    completion(completion_with(
        json!({"echo": false, "suffix": "", "best_of": 1}),
    ))
    .unwrap();
}

/// What `openai` (Python, v1) sends for `client.chat.completions.create(..., stream=True,
/// stream_options={"include_usage": True})`, plus fields other clients add.
#[test]
fn openai_python_chat_body() {
    let body = br#"{"messages":[{"role":"system","content":"You are terse."},{"role":"user","content":[{"type":"text","text":"Say hi"}]}],"model":"meridian-8b","max_completion_tokens":64,"stream":true,"stream_options":{"include_usage":true},"temperature":0.2,"tools":null,"tool_choice":null,"parallel_tool_calls":null,"metadata":{"trace":"abc"},"store":false,"service_tier":"auto","reasoning_effort":null}"#;
    let r = parse_chat(body).unwrap();
    assert_eq!(r.model, "meridian-8b");
    assert_eq!(r.max_tokens, Some(64));
    assert!(r.stream && r.include_usage);
    assert_eq!(r.temperature, 0.2);
    let Prompt::Chat(m) = &r.prompt else {
        panic!("chat")
    };
    assert_eq!(m[1].content, "Say hi");
}

/// `client.completions.create(model=..., prompt=..., max_tokens=32, n=1, stop=["\n\n"])`.
#[test]
fn openai_python_completion_body() {
    let body = br#"{"model":"meridian-8b","prompt":"Once upon a time","max_tokens":32,"n":1,"stop":["\n\n"],"temperature":0.7,"top_p":1,"logprobs":null,"echo":false,"seed":7,"user":"alice"}"#;
    let r = parse_completion(body).unwrap();
    assert_eq!(r.prompt, Prompt::Text("Once upon a time".into()));
    assert_eq!(
        (r.max_tokens, r.seed, r.stop.as_slice()),
        (Some(32), Some(7), &["\n\n".to_owned()][..])
    );
    assert_eq!(r.user.as_deref(), Some("alice"));
    assert!(!r.stream);
}

#[test]
fn tools_from_the_python_client_are_refused() {
    let body = br#"{"messages":[{"role":"user","content":"weather?"}],"model":"m","tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{}}}}]}"#;
    assert_400(&parse_chat(body).expect_err("tools"), Some("tools"));
}

#[test]
fn deep_nesting_is_a_400_not_a_stack_overflow() {
    let deep = format!(
        "{{\"model\":\"m\",\"prompt\":{}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert_400(
        &parse_completion(deep.as_bytes()).expect_err("too deep"),
        None,
    );
}
