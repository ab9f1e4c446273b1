//! The parsers must never panic: any bytes give a request or a well-formed 400.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::assert_shape;
use crate::openai::{parse_chat, parse_completion};

fn check(body: &[u8]) {
    for result in [parse_chat(body), parse_completion(body)] {
        if let Err(e) = result {
            assert_eq!(e.status, 400, "{e}");
            assert_shape(&e);
        }
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "[a-z_ ]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(field_name(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Field names we read, so random values land on them, plus a few we do not.
fn field_name() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "model",
        "messages",
        "prompt",
        "role",
        "content",
        "type",
        "text",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "n",
        "stop",
        "seed",
        "stream",
        "stream_options",
        "include_usage",
        "user",
        "logprobs",
        "top_logprobs",
        "frequency_penalty",
        "presence_penalty",
        "ignore_eos",
        "tools",
        "tool_choice",
        "response_format",
        "logit_bias",
        "echo",
        "suffix",
        "best_of",
        "other",
    ])
    .prop_map(str::to_owned)
}

proptest! {
    #[test]
    fn random_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
        check(&body);
    }

    #[test]
    fn random_json_never_panics(value in json_value()) {
        check(value.to_string().as_bytes());
    }

    #[test]
    fn random_fields_on_a_valid_body_never_panic(
        fields in prop::collection::btree_map(field_name(), json_value(), 0..8),
    ) {
        let mut body: Map<String, Value> = json!({
            "model": "m", "prompt": "p", "messages": [{"role": "user", "content": "c"}],
        })
        .as_object()
        .cloned()
        .unwrap_or_default();
        body.extend(fields);
        check(Value::Object(body).to_string().as_bytes());
    }
}
