//! Where fleet state lives: a small key-value contract with etcd's semantics (global
//! revisions, leases, prefix watches that resume from a revision, an election), and two
//! implementations of it: [`EtcdStore`] for production and [`MemStore`] in process.
//!
//! The control plane's logic (`crate::fleet`, `crate::service`) speaks only this trait,
//! so one replica on `MemStore` and three on etcd behave alike. [`conformance`] is the
//! shared suite that both implementations pass.

pub mod conformance;
mod etcd;
mod mem;

use std::pin::Pin;

use futures_core::Stream;

pub use etcd::EtcdStore;
pub use mem::MemStore;

/// A lease id; keys put under a lease are deleted when it expires or is revoked.
pub type LeaseId = i64;

/// One key and its value at a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Store revision of the key's last change.
    pub mod_revision: u64,
    /// Lease the key is attached to; 0: none.
    pub lease: LeaseId,
}

/// One change seen by a watch, in revision order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was created or changed; `kv.mod_revision` is the event's revision.
    Put(KeyValue),
    /// A key was deleted (explicitly or by its lease expiring) at `revision`.
    Delete { key: String, revision: u64 },
}

impl WatchEvent {
    pub fn revision(&self) -> u64 {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { revision, .. } => *revision,
        }
    }

    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }
}

/// Events of one prefix watch. The stream ends with an error when the store goes away;
/// the caller resumes with `watch_prefix(prefix, last_revision + 1)`.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, StoreError>> + Send>>;

/// Store failures. `Unavailable` is transient (retry with backoff); the others are
/// answers.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// The store cannot be reached or did not answer in time.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The lease expired or was revoked.
    #[error("lease {0:x} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    /// A conditional write found the key at another revision.
    #[error("conflict on {key}: expected revision {expected}, found {found}")]
    Conflict {
        key: String,
        expected: u64,
        found: u64,
    },
    /// The history a watch asked for has been compacted away; take a snapshot instead.
    #[error("revision {requested} is compacted (oldest kept: {oldest})")]
    Compacted { requested: u64, oldest: u64 },
    /// Anything else the store said.
    #[error("store error: {0}")]
    Other(String),
}

/// The store contract. All keys are plain strings under the caller's prefix; values are
/// bytes (Meridian stores protobuf messages).
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Every key under `prefix`, sorted, and the store revision they were read at.
    async fn get_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, u64), StoreError>;

    /// One key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Writes `key`, attached to `lease` (0: none). Returns the new revision.
    /// `LeaseNotFound` if the lease is gone.
    async fn put(&self, key: &str, value: Vec<u8>, lease: LeaseId) -> Result<u64, StoreError>;

    /// Writes `key` only if its current mod revision is `expected` (0: the key must not
    /// exist); `Conflict` otherwise. Returns the new revision.
    async fn put_if(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: u64,
        lease: LeaseId,
    ) -> Result<u64, StoreError>;

    /// Deletes `key`; returns the store revision after the call (unchanged if the key did
    /// not exist).
    async fn delete(&self, key: &str) -> Result<u64, StoreError>;

    /// A new lease of `ttl_ms` (rounded up to whole seconds, as etcd counts them).
    async fn grant_lease(&self, ttl_ms: u64) -> Result<LeaseId, StoreError>;

    /// Renews a lease to its full TTL; `LeaseNotFound` if it already expired.
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError>;

    /// Ends a lease now, deleting its keys. Revoking an unknown lease is not an error.
    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError>;

    /// Changes under `prefix` with revision >= `from_revision` (0: from now on), in
    /// revision order. `Compacted` if that history is gone.
    async fn watch_prefix(
        &self,
        prefix: &str,
        from_revision: u64,
    ) -> Result<WatchStream, StoreError>;

    /// Campaigns in `election` with `value`, held by `lease`; returns once this caller is
    /// the leader. Leadership ends when the lease ends (expiry, revoke).
    async fn campaign(&self, election: &str, value: &str, lease: LeaseId)
    -> Result<(), StoreError>;

    /// The current leader's value in `election`, if any.
    async fn leader(&self, election: &str) -> Result<Option<String>, StoreError>;
}

/// Lease TTL in whole seconds, at least 1, as etcd grants them.
pub fn ttl_secs(ttl_ms: u64) -> i64 {
    ttl_ms.div_ceil(1000).max(1) as i64
}
