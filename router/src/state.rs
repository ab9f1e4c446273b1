//! The router's shared state: configuration, the current fleet view with this router's
//! in-flight counts, the RTT table, pooled worker clients, metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use meridian_proto::catalog::Catalog;
use meridian_proto::worker::v1::worker_client::WorkerClient;
use tonic::transport::{Channel, Endpoint};

use crate::admission::RateLimit;
use crate::demand::DemandCounter;
use crate::fleet::{FleetView, RttTable};
use crate::tokens::Tokenizers;

/// Burst allowed on top of a key's rate: one second's worth, at least one request.
fn burst(rate: f64) -> u32 {
    rate.ceil().clamp(1.0, 10_000.0) as u32
}
use crate::{RouterConfig, RouterError};

/// A fleet view and, per worker, the requests this router has outstanding on it.
pub struct Fleet {
    pub view: FleetView,
    pub in_flight: Vec<AtomicU32>,
    /// Per worker, until when (milliseconds since the router's epoch) its circuit is
    /// open after a connection failure: dispatch tries it only as a last resort.
    pub broken_until: Vec<AtomicU64>,
}

impl Fleet {
    pub fn new(view: FleetView) -> Self {
        let in_flight = (0..view.workers.len()).map(|_| AtomicU32::new(0)).collect();
        let broken_until = (0..view.workers.len()).map(|_| AtomicU64::new(0)).collect();
        Self {
            view,
            in_flight,
            broken_until,
        }
    }
}

/// Everything a request handler reads.
pub struct RouterState {
    pub config: RouterConfig,
    pub catalog: &'static Catalog,
    pub rtt: RttTable,
    /// Catalog index of the router's own site.
    pub site_index: usize,
    fleet: ArcSwap<Fleet>,
    clients: std::sync::Mutex<HashMap<String, WorkerClient<Channel>>>,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// API key SHA-256 (hex) -> index into `config.api_keys`.
    pub keys: HashMap<String, usize>,
    /// Per key (same index), its rate limit if it has one.
    pub limits: Vec<Option<RateLimit>>,
    /// Origin of the admission clock.
    pub epoch: std::time::Instant,
    /// Per model, the tokenizer that gives exact prompt tokens (prefix-aware scoring).
    pub tokenizers: Tokenizers,
    /// Demand seen in the current window, for the control plane.
    pub demand: DemandCounter,
    /// This router's id in demand reports.
    pub id: String,
}

impl RouterState {
    pub fn new(
        config: RouterConfig,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ) -> Result<Self, RouterError> {
        config.validate()?;
        let catalog = Catalog::builtin();
        let site_index = catalog.index_of(&config.site).ok_or_else(|| {
            RouterError::Config(format!("site {} is not in the catalog", config.site))
        })?;
        let keys = config
            .api_keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.sha256.to_ascii_lowercase(), i))
            .collect();
        Ok(Self {
            rtt: RttTable::from_catalog(catalog),
            catalog,
            site_index,
            fleet: ArcSwap::from_pointee(Fleet::new(FleetView::default())),
            clients: std::sync::Mutex::new(HashMap::new()),
            metrics,
            keys,
            limits: config
                .api_keys
                .iter()
                .map(|k| {
                    (k.rate_limit_rps > 0.0)
                        .then(|| RateLimit::new(k.rate_limit_rps, burst(k.rate_limit_rps)))
                })
                .collect(),
            epoch: std::time::Instant::now(),
            tokenizers: Tokenizers::new(),
            demand: DemandCounter::default(),
            id: if config.id.is_empty() {
                format!("{}-{:08x}", config.site, rand::random::<u32>())
            } else {
                config.id.clone()
            },
            config,
        })
    }

    /// Sets the tokenizers (before serving).
    pub fn with_tokenizers(mut self, tokenizers: Tokenizers) -> Self {
        self.tokenizers = tokenizers;
        self
    }

    /// The current fleet.
    pub fn fleet(&self) -> Arc<Fleet> {
        self.fleet.load_full()
    }

    /// Swaps in a new view; in-flight counts carry over for workers still present.
    pub fn set_view(&self, view: FleetView) {
        let old = self.fleet.load();
        let next = Fleet::new(view);
        let old_index: HashMap<&str, usize> = old
            .view
            .workers
            .iter()
            .enumerate()
            .map(|(j, o)| (o.endpoint.as_str(), j))
            .collect();
        for (i, w) in next.view.workers.iter().enumerate() {
            if let Some(&j) = old_index.get(w.endpoint.as_str()) {
                next.in_flight[i]
                    .store(old.in_flight[j].load(Ordering::Relaxed), Ordering::Relaxed);
                next.broken_until[i].store(
                    old.broken_until[j].load(Ordering::Relaxed),
                    Ordering::Relaxed,
                );
            }
        }
        self.fleet.store(Arc::new(next));
    }

    /// A client for a worker endpoint; channels connect lazily and are shared.
    pub fn client(&self, endpoint: &str) -> Result<WorkerClient<Channel>, RouterError> {
        let mut clients = self
            .clients
            .lock()
            .map_err(|_| RouterError::Config("client pool poisoned".into()))?;
        if let Some(c) = clients.get(endpoint) {
            return Ok(c.clone());
        }
        let channel = Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| RouterError::Config(format!("bad worker endpoint {endpoint}: {e}")))?
            .connect_timeout(std::time::Duration::from_secs(2))
            .tcp_nodelay(true)
            .connect_lazy();
        let client =
            WorkerClient::new(channel).max_decoding_message_size(meridian_proto::MAX_MESSAGE_BYTES);
        clients.insert(endpoint.to_string(), client.clone());
        Ok(client)
    }
}
