//! `MemStore`: the `Store` contract in process, for a single machine (`meridian up`,
//! `meridian control` without etcd) and for tests. Same semantics as etcd: one global
//! revision, leases that delete their keys when they lapse, prefix watches that replay
//! kept history, and an election where the oldest live candidate leads. State is lost
//! with the process.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::{KeyValue, LeaseId, Store, StoreError, WatchEvent, WatchStream, ttl_secs};

/// Events kept for watches that resume from a past revision.
const HISTORY: usize = 100_000;

struct Entry {
    kv: KeyValue,
    create_revision: u64,
}

struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: HashSet<String>,
}

struct Watcher {
    prefix: String,
    tx: mpsc::UnboundedSender<Result<WatchEvent, StoreError>>,
}

#[derive(Default)]
struct Inner {
    revision: u64,
    kvs: BTreeMap<String, Entry>,
    leases: HashMap<LeaseId, Lease>,
    next_lease: LeaseId,
    history: VecDeque<WatchEvent>,
    watchers: Vec<Watcher>,
}

impl Inner {
    fn emit(&mut self, event: WatchEvent) {
        self.watchers.retain(|w| {
            !event.key().starts_with(&w.prefix) || w.tx.send(Ok(event.clone())).is_ok()
        });
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(event);
    }

    fn put(&mut self, key: &str, value: Vec<u8>, lease: LeaseId) -> Result<u64, StoreError> {
        if lease != 0 && !self.leases.contains_key(&lease) {
            return Err(StoreError::LeaseNotFound(lease));
        }
        self.revision += 1;
        let revision = self.revision;
        let create_revision = match self.kvs.get(key) {
            Some(old) => {
                if old.kv.lease != 0
                    && old.kv.lease != lease
                    && let Some(l) = self.leases.get_mut(&old.kv.lease)
                {
                    l.keys.remove(key);
                }
                old.create_revision
            }
            None => revision,
        };
        if let Some(l) = self.leases.get_mut(&lease) {
            l.keys.insert(key.to_string());
        }
        let kv = KeyValue {
            key: key.to_string(),
            value,
            mod_revision: revision,
            lease,
        };
        self.kvs.insert(
            key.to_string(),
            Entry {
                kv: kv.clone(),
                create_revision,
            },
        );
        self.emit(WatchEvent::Put(kv));
        Ok(revision)
    }

    fn delete(&mut self, key: &str) -> u64 {
        if let Some(old) = self.kvs.remove(key) {
            if let Some(l) = self.leases.get_mut(&old.kv.lease) {
                l.keys.remove(key);
            }
            self.revision += 1;
            let revision = self.revision;
            self.emit(WatchEvent::Delete {
                key: key.to_string(),
                revision,
            });
        }
        self.revision
    }

    fn end_lease(&mut self, lease: LeaseId) {
        if let Some(l) = self.leases.remove(&lease) {
            let mut keys: Vec<String> = l.keys.into_iter().collect();
            keys.sort();
            for k in keys {
                self.delete(&k);
            }
        }
    }

    fn expire(&mut self, now: Instant) -> bool {
        let expired: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        for &id in &expired {
            tracing::debug!(lease = format_args!("{id:x}"), "lease expired");
            self.end_lease(id);
        }
        !expired.is_empty()
    }

    /// The leader of an election: the candidate key created first.
    fn leader(&self, election: &str) -> Option<&Entry> {
        let prefix = format!("{election}/");
        self.kvs
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, e)| e)
            .min_by_key(|e| e.create_revision)
    }
}

/// The in-process store. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct MemStore {
    inner: Arc<Mutex<Inner>>,
    /// Woken on every change, for campaigners.
    changed: Arc<Notify>,
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemStore {
    /// An empty store. A background thread expires leases (every 50 ms) for as long as
    /// the store is alive.
    pub fn new() -> Self {
        let store = Self {
            inner: Arc::new(Mutex::new(Inner {
                next_lease: 0x4d45_0000,
                ..Inner::default()
            })),
            changed: Arc::new(Notify::new()),
        };
        let inner: Weak<Mutex<Inner>> = Arc::downgrade(&store.inner);
        let changed = Arc::downgrade(&store.changed);
        let spawned = std::thread::Builder::new()
            .name("memstore-leases".into())
            .spawn(move || {
                while let Some(inner) = inner.upgrade() {
                    let expired = inner
                        .lock()
                        .map(|mut g| g.expire(Instant::now()))
                        .unwrap_or(false);
                    drop(inner);
                    if expired && let Some(n) = changed.upgrade() {
                        n.notify_waiters();
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the lease reaper; leases will not expire");
        }
        store
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, StoreError> {
        self.inner
            .lock()
            .map_err(|_| StoreError::Other("memory store poisoned".into()))
    }

    /// Runs a change and wakes campaigners.
    fn change<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> Result<T, StoreError> {
        let out = f(&mut *self.lock()?);
        self.changed.notify_waiters();
        Ok(out)
    }
}

#[async_trait::async_trait]
impl Store for MemStore {
    async fn get_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, u64), StoreError> {
        let g = self.lock()?;
        let kvs = g
            .kvs
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, e)| e.kv.clone())
            .collect();
        Ok((kvs, g.revision))
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.lock()?.kvs.get(key).map(|e| e.kv.clone()))
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: LeaseId) -> Result<u64, StoreError> {
        self.change(|g| g.put(key, value, lease))?
    }

    async fn put_if(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: u64,
        lease: LeaseId,
    ) -> Result<u64, StoreError> {
        self.change(|g| {
            let found = g.kvs.get(key).map_or(0, |e| e.kv.mod_revision);
            if found != expected {
                return Err(StoreError::Conflict {
                    key: key.to_string(),
                    expected,
                    found,
                });
            }
            g.put(key, value, lease)
        })?
    }

    async fn delete(&self, key: &str) -> Result<u64, StoreError> {
        self.change(|g| g.delete(key))
    }

    async fn grant_lease(&self, ttl_ms: u64) -> Result<LeaseId, StoreError> {
        let ttl = Duration::from_secs(ttl_secs(ttl_ms) as u64);
        let mut g = self.lock()?;
        g.next_lease += 1;
        let id = g.next_lease;
        g.leases.insert(
            id,
            Lease {
                ttl,
                deadline: Instant::now() + ttl,
                keys: HashSet::new(),
            },
        );
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        let now = Instant::now();
        g.expire(now);
        let l = g
            .leases
            .get_mut(&lease)
            .ok_or(StoreError::LeaseNotFound(lease))?;
        l.deadline = now + l.ttl;
        Ok(())
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.change(|g| g.end_lease(lease))
    }

    async fn watch_prefix(
        &self,
        prefix: &str,
        from_revision: u64,
    ) -> Result<WatchStream, StoreError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut g = self.lock()?;
        if from_revision > 0 && from_revision <= g.revision {
            let oldest = g
                .history
                .front()
                .map_or(g.revision + 1, WatchEvent::revision);
            if from_revision < oldest {
                return Err(StoreError::Compacted {
                    requested: from_revision,
                    oldest,
                });
            }
            for e in g.history.iter() {
                if e.revision() >= from_revision && e.key().starts_with(prefix) {
                    let _ = tx.send(Ok(e.clone()));
                }
            }
        }
        g.watchers.push(Watcher {
            prefix: prefix.to_string(),
            tx,
        });
        Ok(Box::pin(UnboundedReceiverStream::new(rx)))
    }

    async fn campaign(
        &self,
        election: &str,
        value: &str,
        lease: LeaseId,
    ) -> Result<(), StoreError> {
        let key = format!("{election}/{lease:x}");
        {
            let mut g = self.lock()?;
            if !g.kvs.contains_key(&key) {
                g.put(&key, value.as_bytes().to_vec(), lease)?;
            }
        }
        self.changed.notify_waiters();
        loop {
            let changed = self.changed.notified();
            {
                let g = self.lock()?;
                if !g.leases.contains_key(&lease) {
                    return Err(StoreError::LeaseNotFound(lease));
                }
                if g.leader(election).is_some_and(|e| e.kv.key == key) {
                    return Ok(());
                }
            }
            // Wake on changes, and now and then regardless (lease expiry elsewhere).
            let _ = tokio::time::timeout(Duration::from_millis(200), changed).await;
        }
    }

    async fn leader(&self, election: &str) -> Result<Option<String>, StoreError> {
        let g = self.lock()?;
        Ok(g.leader(election)
            .map(|e| String::from_utf8_lossy(&e.kv.value).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_the_store_suite() {
        super::super::conformance::run_all(Arc::new(MemStore::new())).await;
    }

    #[tokio::test]
    async fn compacted_history_is_reported() {
        let s = MemStore::new();
        {
            let mut g = s.lock().unwrap();
            g.history.clear();
            g.revision = 10;
        }
        s.put("/k", b"v".to_vec(), 0).await.unwrap();
        match s.watch_prefix("/", 3).await {
            Err(StoreError::Compacted { requested, oldest }) => {
                assert_eq!((requested, oldest), (3, 11));
            }
            Err(e) => panic!("expected Compacted, got {e:?}"),
            Ok(_) => panic!("expected Compacted, got a stream"),
        }
    }
}
