//! One TOML file format per role, with environment overrides.
//!
//! Precedence, lowest first: the role's defaults, its TOML file (`--config`), then
//! variables `MERIDIAN_<ROLE>__<KEY>` (nested keys joined by `__`, e.g.
//! `MERIDIAN_UP__ROUTER__LISTEN=127.0.0.1:9000`), then command-line flags. Every role's
//! configuration is validated before anything starts. `deploy/*.toml` are the documented
//! templates; a test checks that they parse to the defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use meridian_engine::EngineConfig;
use meridian_placement::ControlConfig;
use meridian_router::RouterConfig;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// `meridian up`: every role in one process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpConfig {
    /// Catalog sites that get a PoP, each with one CPU worker.
    pub pops: Vec<String>,
    pub control: ControlConfig,
    pub router: RouterConfig,
    pub engine: EngineConfig,
}

impl Default for UpConfig {
    fn default() -> Self {
        Self {
            pops: vec!["IAD".into(), "AMS".into(), "SIN".into()],
            control: ControlConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                metrics_listen: None,
                ..Default::default()
            },
            router: RouterConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                ..Default::default()
            },
            engine: EngineConfig::default(),
        }
    }
}

impl UpConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.pops.is_empty(), "pops: at least one PoP is needed");
        let catalog = meridian_proto::catalog::Catalog::builtin();
        for (i, id) in self.pops.iter().enumerate() {
            anyhow::ensure!(
                catalog.get(id).is_some(),
                "pops: {id:?} is not in the PoP catalog"
            );
            anyhow::ensure!(!self.pops[..i].contains(id), "pops: {id:?} is listed twice");
        }
        self.control.validate()?;
        self.router.validate()?;
        self.engine.validate()?;
        Ok(())
    }
}

/// `meridian pop`: one PoP agent and its engine workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PopConfig {
    /// Catalog site id of this PoP.
    pub pop_id: String,
    /// Control-plane gRPC endpoints, tried in order.
    pub control_endpoints: Vec<String>,
    /// gRPC listen address of the first worker; worker `i` listens on port + i (port 0:
    /// free ports).
    pub worker_listen: SocketAddr,
    /// Host routers reach the workers at; none: the listen address's IP.
    pub advertise_host: Option<String>,
    /// CPU engine workers this PoP hosts.
    pub workers: usize,
    /// Site labels that placement policy matches (e.g. tier = "core").
    pub labels: BTreeMap<String, String>,
    /// Prometheus `/metrics` listen address.
    pub metrics_listen: Option<SocketAddr>,
    pub engine: EngineConfig,
}

impl Default for PopConfig {
    fn default() -> Self {
        Self {
            pop_id: "IAD".into(),
            control_endpoints: vec!["http://127.0.0.1:50051".into()],
            worker_listen: SocketAddr::from(([127, 0, 0, 1], 50061)),
            advertise_host: None,
            workers: 1,
            labels: BTreeMap::new(),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9092))),
            engine: EngineConfig::default(),
        }
    }
}

impl PopConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            meridian_proto::catalog::Catalog::builtin()
                .get(&self.pop_id)
                .is_some(),
            "pop_id {:?} is not in the PoP catalog",
            self.pop_id
        );
        anyhow::ensure!(
            !self.control_endpoints.is_empty(),
            "control_endpoints is empty"
        );
        anyhow::ensure!(
            (1..=64).contains(&self.workers),
            "workers must be 1..=64, got {}",
            self.workers
        );
        self.engine.validate()?;
        Ok(())
    }
}

/// Loads a role's configuration: defaults, then `file`, then `MERIDIAN_<ROLE>__*`.
pub fn load<T>(role: &str, file: Option<&Path>) -> anyhow::Result<T>
where
    T: Serialize + DeserializeOwned + Default,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        anyhow::ensure!(
            path.exists(),
            "config file {} does not exist",
            path.display()
        );
        figment = figment.merge(Toml::file(path));
    }
    let prefix = format!("MERIDIAN_{}__", role.to_ascii_uppercase());
    figment = figment.merge(Env::prefixed(&prefix).split("__"));
    figment
        .extract()
        .with_context(|| format!("invalid {role} configuration"))
}

/// The effective configuration as TOML, for `--print-config`.
pub fn to_toml<T: Serialize>(config: &T) -> anyhow::Result<String> {
    toml::to_string_pretty(config).context("cannot render the configuration as TOML")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy")
            .join(name)
    }

    #[test]
    fn deploy_templates_parse_to_the_defaults() {
        let up: UpConfig = load("up-template-test", Some(&template("up.toml"))).unwrap();
        assert_eq!(up, UpConfig::default());
        up.validate().unwrap();
        let pop: PopConfig = load("pop-template-test", Some(&template("pop.toml"))).unwrap();
        assert_eq!(pop, PopConfig::default());
        pop.validate().unwrap();
        let control: ControlConfig =
            load("control-template-test", Some(&template("control.toml"))).unwrap();
        assert_eq!(control, ControlConfig::default());
        let router: RouterConfig =
            load("router-template-test", Some(&template("router.toml"))).unwrap();
        assert_eq!(router, RouterConfig::default());
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail dictates the closure's error type
    fn environment_overrides_the_file_and_unknown_keys_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("up.toml", "pops = [\"FRA\"]\n[router]\nsite = \"FRA\"\n")?;
            jail.set_env("MERIDIAN_UP__ROUTER__MAX_RETRIES", "5");
            jail.set_env("MERIDIAN_UP__ENGINE__THREADS", "3");
            let up: UpConfig = load("up", Some(Path::new("up.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(up.pops, vec!["FRA".to_string()]);
            assert_eq!(up.router.site, "FRA");
            assert_eq!(up.router.max_retries, 5);
            assert_eq!(up.engine.threads, 3);

            jail.create_file("bad.toml", "[router]\nlisten_port = 80\n")?;
            let err = load::<UpConfig>("up", Some(Path::new("bad.toml"))).unwrap_err();
            assert!(format!("{err:#}").contains("listen_port"), "{err:#}");
            Ok(())
        });
    }

    #[test]
    fn validation_names_the_bad_value() {
        let up = UpConfig {
            pops: vec!["AMS".into(), "AMS".into()],
            ..Default::default()
        };
        assert!(up.validate().unwrap_err().to_string().contains("twice"));
        let up = UpConfig {
            pops: vec!["QQQ".into()],
            ..Default::default()
        };
        assert!(up.validate().unwrap_err().to_string().contains("QQQ"));
    }
}
