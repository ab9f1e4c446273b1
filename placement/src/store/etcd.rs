//! `EtcdStore`: the `Store` contract on a real etcd cluster (v3 API, through
//! `etcd-client`). Revisions, leases, watches and the election are etcd's own; this file
//! only translates types and errors.
//!
//! Every unary call runs under the store's request timeout, enforced here rather than by
//! the gRPC channel: `campaign` is a unary call that legitimately blocks until this
//! caller leads, and a channel-wide timeout would cut it short. A call that times out or
//! whose transport fails is `StoreError::Unavailable`, so callers retry with backoff.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions, WatchResponse,
};
use futures::stream;
use tonic::Code;

use super::{KeyValue, LeaseId, Store, StoreError, WatchEvent, WatchStream, ttl_secs};

/// etcd's message for an operation on a lease it does not hold (expired or revoked).
const LEASE_NOT_FOUND: &str = "requested lease not found";
/// The election service's message when nobody campaigns in an election.
const NO_LEADER: &str = "election: no leader";
/// HTTP/2 pings on open streams (watches, a blocked campaign) find a dead connection.
/// etcd answers pings closer than `--grpc-keepalive-min-time` (5 s by default) with
/// GOAWAY, so this stays above it.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// The production [`Store`]: one `etcd_client::Client` (cheap to clone, shared by all
/// calls) over the cluster's endpoints.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    timeout: Duration,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// A client for the etcd cluster at `endpoints` (`http://host:port`). `timeout`
    /// bounds connecting and every request except `campaign` and an open watch.
    ///
    /// Connections are made lazily: this succeeds while etcd is still starting, and the
    /// first request that cannot reach it returns `Unavailable`.
    pub async fn connect(endpoints: &[String], timeout: Duration) -> Result<Self, StoreError> {
        if endpoints.is_empty() {
            return Err(StoreError::Other("no etcd endpoints given".into()));
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_keep_alive(KEEP_ALIVE_INTERVAL, timeout);
        let client =
            match tokio::time::timeout(timeout, Client::connect(endpoints, Some(options))).await {
                Ok(client) => client.map_err(|e| store_error(e, 0))?,
                Err(_) => {
                    return Err(StoreError::Unavailable(format!(
                        "connecting to etcd at {endpoints:?}: no answer within {timeout:?}"
                    )));
                }
            };
        Ok(Self { client, timeout })
    }

    /// Runs one request under the store's timeout; `lease` names the lease that a
    /// lease-not-found answer refers to (0: none).
    async fn call<T>(
        &self,
        what: &str,
        lease: LeaseId,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, request).await {
            Ok(result) => result.map_err(|e| store_error(e, lease)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "etcd {what}: no answer within {:?}",
                self.timeout
            ))),
        }
    }
}

/// Sorts an etcd error into the contract's kinds.
fn store_error(e: etcd_client::Error, lease: LeaseId) -> StoreError {
    use etcd_client::Error as E;
    let message = e.to_string();
    if lease != 0 && message.contains(LEASE_NOT_FOUND) {
        return StoreError::LeaseNotFound(lease);
    }
    match &e {
        E::TransportError(_) | E::IoError(_) => StoreError::Unavailable(message),
        E::GRpcStatus(status) => match status.code() {
            // Unavailable also covers etcd's own transient answers: "no leader",
            // "leader changed", "request timed out".
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => {
                StoreError::Unavailable(message)
            }
            // A connection that dies mid-call surfaces as an h2 or hyper error.
            Code::Unknown if is_transport_failure(status) => StoreError::Unavailable(message),
            _ => StoreError::Other(message),
        },
        _ => StoreError::Other(message),
    }
}

fn is_transport_failure(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<std::io::Error>() || e.is::<tonic::transport::Error>() {
            return true;
        }
        source = e.source();
    }
    let message = status.message();
    [
        "transport error",
        "connection",
        "broken pipe",
        "h2 protocol error",
    ]
    .iter()
    .any(|m| message.contains(m))
}

fn revision(r: i64) -> u64 {
    u64::try_from(r).unwrap_or(0)
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> u64 {
    header.map_or(0, |h| revision(h.revision()))
}

fn utf8_key(key: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(key.to_vec())
        .map_err(|_| StoreError::Other(format!("etcd key is not UTF-8: {key:?}")))
}

fn key_value(kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
    Ok(KeyValue {
        key: utf8_key(kv.key())?,
        value: kv.value().to_vec(),
        mod_revision: revision(kv.mod_revision()),
        lease: kv.lease(),
    })
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, u64), StoreError> {
        let mut kv = self.client.kv_client();
        // etcd returns a range sorted by key unless told otherwise.
        let resp = self
            .call(
                "get_prefix",
                0,
                kv.get(prefix, Some(GetOptions::new().with_prefix())),
            )
            .await?;
        let kvs = resp.kvs().iter().map(key_value).collect::<Result<_, _>>()?;
        Ok((kvs, header_revision(resp.header())))
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let mut kv = self.client.kv_client();
        let resp = self.call("get", 0, kv.get(key, None)).await?;
        resp.kvs().first().map(key_value).transpose()
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: LeaseId) -> Result<u64, StoreError> {
        let mut kv = self.client.kv_client();
        let options = (lease != 0).then(|| PutOptions::new().with_lease(lease));
        let resp = self.call("put", lease, kv.put(key, value, options)).await?;
        Ok(header_revision(resp.header()))
    }

    async fn put_if(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: u64,
        lease: LeaseId,
    ) -> Result<u64, StoreError> {
        let compare = if expected == 0 {
            Compare::create_revision(key, CompareOp::Equal, 0)
        } else {
            let expected = i64::try_from(expected).map_err(|_| {
                StoreError::Other(format!("revision {expected} is beyond etcd's range"))
            })?;
            Compare::mod_revision(key, CompareOp::Equal, expected)
        };
        let options = (lease != 0).then(|| PutOptions::new().with_lease(lease));
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::put(key, value, options)])
            .or_else([TxnOp::get(key, None)]);
        let mut kv = self.client.kv_client();
        let resp = self.call("put_if", lease, kv.txn(txn)).await?;
        if resp.succeeded() {
            return Ok(header_revision(resp.header()));
        }
        let found = resp
            .op_responses()
            .iter()
            .find_map(|op| match op {
                TxnOpResponse::Get(get) => {
                    Some(get.kvs().first().map_or(0, |kv| kv.mod_revision()))
                }
                _ => None,
            })
            .map_or(0, revision);
        Err(StoreError::Conflict {
            key: key.to_string(),
            expected,
            found,
        })
    }

    async fn delete(&self, key: &str) -> Result<u64, StoreError> {
        let mut kv = self.client.kv_client();
        let resp = self.call("delete", 0, kv.delete(key, None)).await?;
        Ok(header_revision(resp.header()))
    }

    async fn grant_lease(&self, ttl_ms: u64) -> Result<LeaseId, StoreError> {
        let mut lease = self.client.lease_client();
        let resp = self
            .call("grant_lease", 0, lease.grant(ttl_secs(ttl_ms), None))
            .await?;
        if !resp.error().is_empty() {
            return Err(StoreError::Other(format!(
                "etcd refused a lease of {ttl_ms} ms: {}",
                resp.error()
            )));
        }
        Ok(resp.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        let mut client = self.client.lease_client();
        // etcd-client 0.21 opens the keep-alive stream, sends one renewal and reads its
        // answer before returning: that is exactly one renewal, and a TTL of 0 in the
        // answer (the lease is gone) comes back as an error. Dropping the keeper and the
        // stream closes the stream.
        let result = self
            .call("keep_alive", lease, client.keep_alive(lease))
            .await;
        match result {
            Ok((_keeper, _stream)) => Ok(()),
            Err(StoreError::Other(message)) if message.contains("lease not found") => {
                Err(StoreError::LeaseNotFound(lease))
            }
            // The stream closed before answering the renewal.
            Err(StoreError::Other(message))
                if message.contains("failed to create lease keeper") =>
            {
                Err(StoreError::Unavailable(message))
            }
            Err(e) => Err(e),
        }
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        let mut client = self.client.lease_client();
        match self.call("revoke", lease, client.revoke(lease)).await {
            Ok(_) | Err(StoreError::LeaseNotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn watch_prefix(
        &self,
        prefix: &str,
        from_revision: u64,
    ) -> Result<WatchStream, StoreError> {
        let mut options = WatchOptions::new().with_prefix();
        if from_revision > 0 {
            let start = i64::try_from(from_revision).map_err(|_| {
                StoreError::Other(format!("revision {from_revision} is beyond etcd's range"))
            })?;
            options = options.with_start_revision(start);
        }
        let mut client = self.client.watch_client();
        // The gRPC call returns once the stream is open, before etcd has registered the
        // watch; wait for etcd's "created" answer so that a write made after this returns
        // is seen.
        let (watch, created) = self
            .call("watch", 0, async {
                let mut watch = client.watch(prefix, Some(options)).await?;
                let created = watch.message().await?;
                Ok((watch, created))
            })
            .await?;
        let created = match created {
            Some(resp) if resp.created() => resp,
            Some(resp) => {
                return Err(StoreError::Other(format!(
                    "etcd answered a watch request with watch {} that was not created",
                    resp.watch_id()
                )));
            }
            None => {
                return Err(StoreError::Unavailable(
                    "etcd closed the watch stream before creating the watch".into(),
                ));
            }
        };
        let mut state = WatchState {
            stream: watch,
            pending: VecDeque::new(),
            requested: from_revision,
            done: false,
        };
        state.absorb(created);
        Ok(Box::pin(stream::unfold(state, WatchState::next)))
    }

    async fn campaign(
        &self,
        election: &str,
        value: &str,
        lease: LeaseId,
    ) -> Result<(), StoreError> {
        // No timeout: the answer comes when this caller leads, however long that takes.
        // HTTP/2 keep-alive pings end the call if the connection dies meanwhile.
        let mut client = self.client.election_client();
        client
            .campaign(election, value, lease)
            .await
            .map(drop)
            .map_err(|e| store_error(e, lease))
    }

    async fn leader(&self, election: &str) -> Result<Option<String>, StoreError> {
        let mut client = self.client.election_client();
        match self.call("leader", 0, client.leader(election)).await {
            Ok(resp) => match resp.kv() {
                Some(kv) => String::from_utf8(kv.value().to_vec())
                    .map(Some)
                    .map_err(|_| StoreError::Other(format!("leader of {election} is not UTF-8"))),
                None => Ok(None),
            },
            Err(StoreError::Other(message)) if message.contains(NO_LEADER) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// One open watch: etcd's stream, the converted events of the last answer not yet
/// handed out, and whether the stream has ended (after an error).
struct WatchState {
    stream: etcd_client::WatchStream,
    pending: VecDeque<Result<WatchEvent, StoreError>>,
    requested: u64,
    done: bool,
}

impl WatchState {
    async fn next(mut self) -> Option<(Result<WatchEvent, StoreError>, Self)> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some((item, self));
            }
            if self.done {
                return None;
            }
            match self.stream.message().await {
                Ok(Some(resp)) => self.absorb(resp),
                Ok(None) => self.fail(StoreError::Unavailable(
                    "etcd closed the watch stream".into(),
                )),
                Err(e) => self.fail(store_error(e, 0)),
            }
        }
    }

    /// Queues the events of one watch answer, and the error that ends the stream if the
    /// watch was compacted or canceled.
    fn absorb(&mut self, resp: WatchResponse) {
        if resp.compact_revision() > 0 {
            self.fail(StoreError::Compacted {
                requested: self.requested,
                oldest: revision(resp.compact_revision()),
            });
            return;
        }
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let event = match event.event_type() {
                EventType::Put => key_value(kv).map(WatchEvent::Put),
                // etcd sets a deleted key's mod_revision to the revision of the delete.
                EventType::Delete => utf8_key(kv.key()).map(|key| WatchEvent::Delete {
                    key,
                    revision: revision(kv.mod_revision()),
                }),
            };
            let failed = event.is_err();
            self.pending.push_back(event);
            if failed {
                self.done = true;
                return;
            }
        }
        if resp.canceled() {
            let reason = resp.cancel_reason();
            self.fail(if reason.contains("leader") || reason.is_empty() {
                StoreError::Unavailable(format!("etcd canceled the watch: {reason}"))
            } else {
                StoreError::Other(format!("etcd canceled the watch: {reason}"))
            });
        }
    }

    fn fail(&mut self, error: StoreError) {
        self.pending.push_back(Err(error));
        self.done = true;
    }
}
