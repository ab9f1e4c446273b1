//! Tests of the OpenAI layer: requests, responses, and never-panic properties.

mod fuzz;
mod request;
mod response;

use serde_json::Value;

use super::ApiError;

/// Checks that `e` is a 400 naming `param`, and that its body has OpenAI's exact shape.
pub(super) fn assert_400(e: &ApiError, param: Option<&str>) {
    assert_eq!(e.status, 400, "{e}");
    assert_eq!(e.param.as_deref(), param, "{e}");
    assert_shape(e);
}

/// `{"error": {"message": str, "type": str, "param": str|null, "code": str|null}}`, no more.
pub(super) fn assert_shape(e: &ApiError) {
    let body: Value = serde_json::from_str(&e.body()).expect("error body is JSON");
    let outer = body.as_object().expect("object");
    assert_eq!(outer.len(), 1);
    let inner = body["error"].as_object().expect("error object");
    assert_eq!(inner.len(), 4, "{inner:?}");
    assert_eq!(inner["message"].as_str(), Some(e.message.as_str()));
    assert_eq!(inner["type"].as_str(), Some(e.kind));
    match &e.param {
        Some(p) => assert_eq!(inner["param"].as_str(), Some(p.as_str())),
        None => assert!(inner["param"].is_null()),
    }
    match &e.code {
        Some(c) => assert_eq!(inner["code"].as_str(), Some(c.as_str())),
        None => assert!(inner["code"].is_null()),
    }
}
