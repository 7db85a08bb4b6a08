//! The kuryr store: revisioned keys and values, compare-and-put transactions and
//! watches that never miss a change.
//!
//! The model follows etcd v3 so that the embedded implementation (redb, one file,
//! fsync on every commit) and the distributed one (etcd, cargo feature `etcd`) pass the same
//! [`conformance`] suite:
//! - every committed transaction gets the next global revision; all its writes carry it;
//! - a key remembers the revision that created it and the one that last changed it;
//! - a transaction first checks its [`Compare`]s (key absent / key at a revision) and
//!   then applies all its [`Op`]s atomically, or nothing;
//! - `watch(prefix, from)` yields every change with revision `>= from`, in order, then
//!   follows live changes. Old history may be compacted: asking for a revision older
//!   than what is kept fails with [`StoreError::Compacted`] and the caller re-lists.

pub mod conformance;
mod embedded;
#[cfg(feature = "etcd")]
mod etcd;
pub mod failing;

pub use embedded::{EmbeddedOptions, EmbeddedStore};
#[cfg(feature = "etcd")]
pub use etcd::{EtcdOptions, EtcdStore};

use async_trait::async_trait;
use futures::stream::BoxStream;

/// A global, strictly increasing commit number. 0 means "nothing written yet".
pub type Revision = u64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the transaction that created this key (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the transaction that last wrote this key.
    pub mod_revision: Revision,
}

/// A condition checked before a transaction's writes are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist.
    Absent(String),
    /// The key exists and was last written at exactly this revision.
    ModRevision(String, Revision),
    /// No key exists under this prefix (etcd: a range compare on version 0). This is
    /// how a parent refuses to be deleted while children hold guard keys under it.
    PrefixEmpty(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(String, Vec<u8>),
    /// Deleting a key that does not exist is allowed and produces no event.
    Delete(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn when(mut self, compare: Compare) -> Self {
        self.compares.push(compare);
        self
    }
    pub fn put(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.ops.push(Op::Put(key.into(), value.into()));
        self
    }
    pub fn delete(mut self, key: impl Into<String>) -> Self {
        self.ops.push(Op::Delete(key.into()));
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnOutcome {
    /// All compares held; the writes are durable at this revision.
    Committed(Revision),
    /// The compare at this index did not hold; nothing was written.
    CompareFailed(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change seen by a watch. For a delete, `kv.value` is empty and
/// `kv.mod_revision` is the revision of the deleting transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
}

impl Event {
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("revision {requested} has been compacted (oldest kept: {oldest})")]
    Compacted {
        requested: Revision,
        oldest: Revision,
    },
    #[error("store I/O error: {0}")]
    Io(String),
    #[error("store is closed")]
    Closed,
    /// The store cannot answer now (etcd without quorum, unreachable or too slow);
    /// it passes without kuryr doing anything, so callers answer 503 and retry.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("watch fell too far behind and was cancelled; resume from revision {resume_from}")]
    Lagged { resume_from: Revision },
}

pub type Result<T> = std::result::Result<T, StoreError>;

pub type WatchStream = BoxStream<'static, Result<Event>>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one key at the latest revision.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Reads every key under `prefix` (sorted by key) from one consistent snapshot,
    /// with the revision of that snapshot.
    async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)>;

    /// Runs a compare-then-write transaction; durable once this returns `Committed`.
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome>;

    /// The revision of the latest commit.
    async fn current_revision(&self) -> Result<Revision>;

    /// Every change under `prefix` with revision `>= from_revision`, then live changes.
    /// A stream item `Err` ends the stream.
    async fn watch(&self, prefix: &str, from_revision: Revision) -> Result<WatchStream>;

    /// Becomes `Some(reason)` when the store can no longer commit without being
    /// reopened (the embedded store after a failed commit): its owner should stop so
    /// that a supervisor restarts it on a reopened store.
    fn fatal(&self) -> tokio::sync::watch::Receiver<Option<String>>;

    /// Whether the store can take writes now (readiness probes). By default: it has
    /// not turned [`Store::fatal`] and it answers a revision query.
    async fn check(&self) -> Result<()> {
        if let Some(why) = self.fatal().borrow().clone() {
            return Err(StoreError::Io(why));
        }
        self.current_revision().await.map(|_| ())
    }

    /// Adds what this store measures about itself (commit latency, batch sizes...)
    /// to `registry`; nothing by default.
    fn register_metrics(&self, _registry: &mut prometheus_client::registry::Registry) {}
}
