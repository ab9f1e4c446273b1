//! The router role's configuration (`router.toml`, or `[router]` in `up.toml`).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::RouterError;

/// One API key. Only its SHA-256 is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Tenant name, for logs and metrics.
    pub name: String,
    /// Hex SHA-256 of the key (`printf %s KEY | sha256sum`).
    pub sha256: String,
    /// Requests per second allowed, 0: unlimited.
    #[serde(default)]
    pub rate_limit_rps: f64,
    /// Jurisdictions this tenant's requests may be served in; empty: any.
    #[serde(default)]
    pub allowed_jurisdictions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// HTTP listen address of the OpenAI API (port 0: any free port, printed at start).
    pub listen: SocketAddr,
    /// The catalog site this router runs at; callers without `x-meridian-region` are
    /// taken to be here.
    pub site: String,
    /// Control-plane gRPC endpoints, tried in order.
    pub control_endpoints: Vec<String>,
    /// Largest request body accepted, bytes (413 above).
    pub max_body_bytes: usize,
    /// Deadline for a whole request, milliseconds.
    pub request_timeout_ms: u64,
    /// Other candidates tried when a worker fails before its first token.
    pub max_retries: u32,
    /// Requests a worker may have waiting (its reported queue plus those this router
    /// sent since) before it is passed over; when every allowed worker is that full the
    /// request is shed with 429 and Retry-After. 0: no limit.
    pub max_waiting_per_worker: u32,
    /// Id of this router in demand reports; empty: `<site>-<random>` at start.
    pub id: String,
    /// How often the router reports the demand it saw to the control plane,
    /// milliseconds; 0: never.
    pub demand_report_ms: u64,
    /// Model checkpoints (GGUF files or safetensors directories) whose tokenizers the
    /// router loads, each for the model id its workers derive from the same path, for
    /// prefix-aware scoring. Workers receive the tokens these make, so each must be the
    /// file the workers of that model serve. Empty: the default model's, when it is in
    /// the cache.
    pub tokenizers: Vec<std::path::PathBuf>,
    /// API keys; none configured on a loopback listener: requests need no key.
    pub api_keys: Vec<ApiKeyConfig>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            site: "IAD".into(),
            control_endpoints: vec!["http://127.0.0.1:50051".into()],
            max_body_bytes: 1 << 20,
            request_timeout_ms: 300_000,
            max_retries: 2,
            max_waiting_per_worker: 256,
            id: String::new(),
            demand_report_ms: 10_000,
            tokenizers: Vec::new(),
            api_keys: Vec::new(),
        }
    }
}

impl RouterConfig {
    pub fn validate(&self) -> Result<(), RouterError> {
        if meridian_proto::catalog::Catalog::builtin()
            .get(&self.site)
            .is_none()
        {
            return Err(RouterError::Config(format!(
                "site {:?} is not in the PoP catalog",
                self.site
            )));
        }
        if self.max_body_bytes < 1024 {
            return Err(RouterError::Config(
                "max_body_bytes must be at least 1024".into(),
            ));
        }
        for key in &self.api_keys {
            let hex_ok =
                key.sha256.len() == 64 && key.sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if !hex_ok {
                return Err(RouterError::Config(format!(
                    "api key {:?}: sha256 must be 64 hex digits",
                    key.name
                )));
            }
        }
        if self.api_keys.is_empty() && !self.listen.ip().is_loopback() {
            return Err(RouterError::Config(format!(
                "listening on {} with no api_keys would serve anyone: configure keys or bind loopback",
                self.listen
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_open_listeners_need_keys() {
        RouterConfig::default().validate().unwrap();
        let open = RouterConfig {
            listen: "0.0.0.0:8080".parse().unwrap(),
            ..Default::default()
        };
        assert!(
            open.validate()
                .unwrap_err()
                .to_string()
                .contains("no api_keys")
        );
        let unknown = RouterConfig {
            site: "ZZZ".into(),
            ..Default::default()
        };
        assert!(
            unknown
                .validate()
                .unwrap_err()
                .to_string()
                .contains("catalog")
        );
    }
}
