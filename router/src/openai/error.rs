//! The one error type of the OpenAI layer and its wire shape.
//!
//! Every failure a client can see leaves through [`ApiError::body`], so the JSON shape
//! (`{"error": {"message", "type", "param", "code"}}`) is written in exactly one place.

use serde::Serialize;

/// `type` for a request the client must fix (400, 404, 413).
pub const INVALID_REQUEST: &str = "invalid_request_error";
/// `type` for a missing or wrong API key (401).
pub const AUTHENTICATION: &str = "authentication_error";
/// `type` for a path that names no route (404).
pub const NOT_FOUND: &str = "not_found_error";
/// `type` for a client over its quota (429).
pub const RATE_LIMIT: &str = "rate_limit_error";
/// `type` for a failure on our side (500, 503).
pub const SERVER: &str = "server_error";

/// An error answered to an OpenAI client: an HTTP status plus OpenAI's error object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {kind}: {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub status: u16,
    /// Human-readable message, shown to the user by most clients.
    pub message: String,
    /// OpenAI's error `type` (one of the constants of this module).
    pub kind: &'static str,
    /// The request field at fault, as OpenAI names it (`messages.[0].content`).
    pub param: Option<String>,
    /// Machine-readable code (`model_not_found`, `invalid_api_key`, ...).
    pub code: Option<String>,
    /// Seconds for a `Retry-After` header (429 and 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// Adds a `Retry-After` hint, in seconds.
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    fn with_code(mut self, code: &str) -> Self {
        self.code = Some(code.to_owned());
        self
    }

    /// 400: the request is malformed or asks for something we do not support.
    pub fn bad_request(message: impl Into<String>, param: Option<&str>) -> Self {
        let mut e = Self::new(400, INVALID_REQUEST, message);
        e.param = param.map(str::to_owned);
        e
    }

    /// 401: no API key, or one we do not know.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(401, AUTHENTICATION, message).with_code("invalid_api_key")
    }

    /// 404 for an unknown model, worded and typed as OpenAI does.
    pub fn not_found_model(model: &str) -> Self {
        let mut e = Self::new(
            404,
            INVALID_REQUEST,
            format!("The model `{model}` does not exist"),
        )
        .with_code("model_not_found");
        e.param = Some("model".to_owned());
        e
    }

    /// 404 for a path that names no route.
    pub fn not_found_route(path: &str) -> Self {
        Self::new(404, NOT_FOUND, format!("Unknown request URL: {path}")).with_code("unknown_url")
    }

    /// 405: a known path asked with the wrong method.
    pub fn method_not_allowed(method: &str) -> Self {
        Self::new(
            405,
            INVALID_REQUEST,
            format!("Method {method} is not allowed on this path"),
        )
        .with_code("method_not_allowed")
    }

    /// 413: the body is over `limit` bytes.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            413,
            INVALID_REQUEST,
            format!("Request body exceeds the limit of {limit} bytes"),
        )
        .with_code("payload_too_large")
    }

    /// 429: the client is over its rate limit.
    pub fn rate_limited(message: impl Into<String>) -> Self {
        Self::new(429, RATE_LIMIT, message).with_code("rate_limit_exceeded")
    }

    /// 429: every worker that may serve the request is saturated; shed, retry later.
    pub fn overloaded(message: impl Into<String>) -> Self {
        Self::new(429, RATE_LIMIT, message).with_code("engine_overloaded")
    }

    /// 503: no capacity right now; the client may retry.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, SERVER, message).with_code("service_unavailable")
    }

    /// 500: a bug or a failure on our side.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, SERVER, message)
    }

    /// The JSON body in OpenAI's shape; `param` and `code` are `null` when absent.
    pub fn body(&self) -> String {
        #[derive(Serialize)]
        struct Inner<'a> {
            message: &'a str,
            #[serde(rename = "type")]
            kind: &'a str,
            param: Option<&'a str>,
            code: Option<&'a str>,
        }
        #[derive(Serialize)]
        struct Outer<'a> {
            error: Inner<'a>,
        }
        let outer = Outer {
            error: Inner {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code.as_deref(),
            },
        };
        // Serializing strings and options cannot fail; the fallback keeps the shape anyway.
        serde_json::to_string(&outer).unwrap_or_else(|_| {
            r#"{"error":{"message":"internal error","type":"server_error","param":null,"code":null}}"#
                .to_owned()
        })
    }
}
