//! The router's HTTP edge without workers: API keys (401), per-key rate limits (429 with
//! Retry-After), unknown models (404), unknown routes, and the residency refusal when a
//! key's policy and the requested jurisdictions do not meet (503).

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::sync::Arc;

use meridian_router::RouterConfig;
use meridian_router::config::ApiKeyConfig;
use meridian_router::state::RouterState;
use sha2::{Digest, Sha256};

fn sha(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Sends one HTTP/1.1 request and returns (status, headers and body as text).
fn send(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    conn.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).unwrap();
    let status = out.split(' ').nth(1).unwrap().parse().unwrap();
    (status, out)
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_rate_limits_and_residency_policy() {
    let config = RouterConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        api_keys: vec![
            ApiKeyConfig {
                name: "slow".into(),
                sha256: sha("slow-key"),
                rate_limit_rps: 0.5,
                allowed_jurisdictions: vec![],
            },
            ApiKeyConfig {
                name: "eu".into(),
                sha256: sha("eu-key"),
                rate_limit_rps: 0.0,
                allowed_jurisdictions: vec!["EU".into()],
            },
        ],
        ..Default::default()
    };
    let state = Arc::new(RouterState::new(config, None).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(meridian_router::server::serve(
        state,
        listener,
        std::future::pending(),
    ));

    let body = r#"{"model": "m", "prompt": "hi", "max_tokens": 1}"#;
    let run = move |path: &'static str, headers: Vec<(&'static str, &'static str)>| {
        tokio::task::spawn_blocking(move || send(addr, path, &headers, body))
    };

    let (status, text) = run("/v1/completions", vec![]).await.unwrap();
    assert_eq!(status, 401, "{text}");
    assert!(
        text.contains("\"type\":\"authentication_error\"") || text.contains("authentication"),
        "{text}"
    );
    let (status, _) = run("/v1/completions", vec![("authorization", "Bearer wrong")])
        .await
        .unwrap();
    assert_eq!(status, 401);

    // The slow key: the first request passes admission (and finds no such model), the
    // next one within two seconds is limited.
    let (status, text) = run(
        "/v1/completions",
        vec![("authorization", "Bearer slow-key")],
    )
    .await
    .unwrap();
    assert_eq!(status, 404, "{text}");
    let (status, text) = run(
        "/v1/completions",
        vec![("authorization", "Bearer slow-key")],
    )
    .await
    .unwrap();
    assert_eq!(status, 429, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 2"),
        "{text}"
    );

    // An EU-only key asking for US: the intersection is empty, so nothing may serve it.
    let (status, text) = run(
        "/v1/completions",
        vec![
            ("authorization", "Bearer eu-key"),
            ("x-meridian-jurisdiction", "US"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("residency policy"), "{text}");

    let (status, _) = run("/v1/nothing", vec![]).await.unwrap();
    assert_eq!(status, 404);
}
