//! The embedded store: one redb file, every commit fsynced before it is acknowledged.
//!
//! One writer thread owns the write side and commits whatever transactions are
//! queued in a single redb transaction (group commit): each keeps its own revision
//! and its own compare outcome, but they share one fsync. Committed changes are
//! appended to a history table that watches replay from, then published live.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use async_trait::async_trait;
use futures::StreamExt;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, oneshot};

use crate::{
    Compare, Event, EventKind, KeyValue, Op, Result, Revision, Store, StoreError, Txn, TxnOutcome,
    WatchStream,
};

/// key → (create revision, mod revision, value)
const KEYS: TableDefinition<&str, (u64, u64, &[u8])> = TableDefinition::new("keys");
/// One change: kind (0 put, 1 delete), key, value, create revision.
type HistoryRow<'a> = (u8, &'a str, &'a [u8], u64);
/// (revision, index within the transaction) → change.
const HISTORY: TableDefinition<(u64, u32), HistoryRow> = TableDefinition::new("history");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_REVISION: &str = "revision";
const META_OLDEST: &str = "oldest";

/// Transactions committed together at most; bounds the latency of one batch.
const MAX_BATCH: usize = 1024;
/// Live events buffered per watcher before it is told it lagged.
const WATCH_BUFFER: usize = 4096;
/// How often (in revisions) old history is trimmed.
const COMPACT_EVERY: u64 = 1_000;

#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    pub path: PathBuf,
    /// Revisions of change history kept for watchers that resume.
    pub history_retention: u64,
    /// redb's page cache; memory matters more than cache hits here.
    pub cache_size_bytes: usize,
}

impl EmbeddedOptions {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        EmbeddedOptions {
            path: path.into(),
            history_retention: 100_000,
            cache_size_bytes: 16 << 20,
        }
    }
}

struct Request {
    txn: Txn,
    reply: oneshot::Sender<Result<TxnOutcome>>,
}

struct Inner {
    db: Arc<Database>,
    requests: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    events: broadcast::Sender<Arc<Vec<Event>>>,
    revision: Arc<AtomicU64>,
    oldest: Arc<AtomicU64>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue stops the writer; joining it releases the file.
        self.requests.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// Cheap to clone; the file closes when the last clone is dropped.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

fn io<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Io(e.to_string())
}

impl EmbeddedStore {
    pub fn open(opts: EmbeddedOptions) -> Result<Self> {
        if let Some(dir) = opts.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let db = Database::builder()
            .set_cache_size(opts.cache_size_bytes)
            .create(&opts.path)
            .map_err(io)?;
        let (revision, oldest) = {
            let w = db.begin_write().map_err(io)?;
            let meta = {
                w.open_table(KEYS).map_err(io)?;
                w.open_table(HISTORY).map_err(io)?;
                let m = w.open_table(META).map_err(io)?;
                let rev = m
                    .get(META_REVISION)
                    .map_err(io)?
                    .map(|v| v.value())
                    .unwrap_or(0);
                let old = m
                    .get(META_OLDEST)
                    .map_err(io)?
                    .map(|v| v.value())
                    .unwrap_or(1);
                (rev, old)
            };
            w.commit().map_err(io)?;
            meta
        };
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel::<Request>();
        let (events, _) = broadcast::channel(WATCH_BUFFER);
        let revision = Arc::new(AtomicU64::new(revision));
        let oldest = Arc::new(AtomicU64::new(oldest));
        let writer = {
            let (db, events, revision, oldest) =
                (db.clone(), events.clone(), revision.clone(), oldest.clone());
            let retention = opts.history_retention.max(1);
            std::thread::Builder::new()
                .name("kuryr-store-writer".into())
                .spawn(move || writer_loop(&db, rx, &events, &revision, &oldest, retention))
                .map_err(io)?
        };
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                db,
                requests: Some(tx),
                writer: Some(writer),
                events,
                revision,
                oldest,
            }),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(io)?
    }
}

/// One transaction inside the batch's write transaction: compares, then writes.
fn apply(
    w: &redb::WriteTransaction,
    txn: &Txn,
    rev: Revision,
    out: &mut Vec<Event>,
) -> Result<TxnOutcome> {
    let mut keys = w.open_table(KEYS).map_err(io)?;
    for (i, c) in txn.compares.iter().enumerate() {
        let ok = match c {
            Compare::Absent(k) => keys.get(k.as_str()).map_err(io)?.is_none(),
            Compare::ModRevision(k, r) => keys
                .get(k.as_str())
                .map_err(io)?
                .is_some_and(|v| v.value().1 == *r),
            Compare::PrefixEmpty(p) => match keys.range(p.as_str()..).map_err(io)?.next() {
                Some(item) => {
                    let (k, _) = item.map_err(io)?;
                    !k.value().starts_with(p.as_str())
                }
                None => true,
            },
        };
        if !ok {
            return Ok(TxnOutcome::CompareFailed(i));
        }
    }
    let mut history = w.open_table(HISTORY).map_err(io)?;
    for (seq, op) in (0u32..).zip(txn.ops.iter()) {
        match op {
            Op::Put(k, v) => {
                let create = keys
                    .get(k.as_str())
                    .map_err(io)?
                    .map(|old| old.value().0)
                    .unwrap_or(rev);
                keys.insert(k.as_str(), (create, rev, v.as_slice()))
                    .map_err(io)?;
                history
                    .insert((rev, seq), (0u8, k.as_str(), v.as_slice(), create))
                    .map_err(io)?;
                out.push(Event {
                    kind: EventKind::Put,
                    kv: KeyValue {
                        key: k.clone(),
                        value: v.clone(),
                        create_revision: create,
                        mod_revision: rev,
                    },
                });
            }
            Op::Delete(k) => {
                let old = keys.remove(k.as_str()).map_err(io)?.map(|o| o.value().0);
                if let Some(create) = old {
                    history
                        .insert((rev, seq), (1u8, k.as_str(), &[][..], create))
                        .map_err(io)?;
                    out.push(Event {
                        kind: EventKind::Delete,
                        kv: KeyValue {
                            key: k.clone(),
                            value: Vec::new(),
                            create_revision: create,
                            mod_revision: rev,
                        },
                    });
                }
            }
        }
    }
    Ok(TxnOutcome::Committed(rev))
}

/// Per transaction its outcome; the changes to publish, one entry per revision; the new revision.
type BatchResult = (Vec<Result<TxnOutcome>>, Vec<Arc<Vec<Event>>>, Revision);

fn writer_loop(
    db: &Database,
    rx: mpsc::Receiver<Request>,
    events: &broadcast::Sender<Arc<Vec<Event>>>,
    revision: &AtomicU64,
    oldest: &AtomicU64,
    retention: u64,
) {
    let mut last_compaction = revision.load(Ordering::SeqCst);
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let base = revision.load(Ordering::SeqCst);
        let result = (|| -> Result<BatchResult> {
            let w = db.begin_write().map_err(io)?;
            let mut outcomes = Vec::with_capacity(batch.len());
            let mut published = Vec::new();
            let mut rev = base;
            for r in &batch {
                // Compares are all checked before any write of the same transaction,
                // so a failed compare leaves nothing behind.
                let mut changes = Vec::new();
                let outcome = apply(&w, &r.txn, rev + 1, &mut changes)?;
                if matches!(outcome, TxnOutcome::Committed(_)) {
                    rev += 1;
                    published.push(Arc::new(changes));
                }
                outcomes.push(Ok(outcome));
            }
            if rev != base {
                let mut meta = w.open_table(META).map_err(io)?;
                meta.insert(META_REVISION, rev).map_err(io)?;
                if rev - last_compaction >= COMPACT_EVERY && rev > retention {
                    let keep_from = rev - retention + 1;
                    let mut history = w.open_table(HISTORY).map_err(io)?;
                    history
                        .retain_in((0u64, 0u32)..(keep_from, 0u32), |_, _| false)
                        .map_err(io)?;
                    meta.insert(META_OLDEST, keep_from).map_err(io)?;
                }
            }
            w.commit().map_err(io)?;
            Ok((outcomes, published, rev))
        })();
        match result {
            Ok((outcomes, published, rev)) => {
                if rev - last_compaction >= COMPACT_EVERY && rev > retention {
                    oldest.store(rev - retention + 1, Ordering::SeqCst);
                    last_compaction = rev;
                }
                revision.store(rev, Ordering::SeqCst);
                for ev in published {
                    // No receivers is fine: nobody is watching.
                    let _ = events.send(ev);
                }
                for (r, o) in batch.into_iter().zip(outcomes) {
                    let _ = r.reply.send(o);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store commit failed");
                for r in batch {
                    let _ = r.reply.send(Err(StoreError::Io(e.to_string())));
                }
            }
        }
    }
}

fn read_kv(k: &str, v: (u64, u64, &[u8])) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: v.2.to_vec(),
        create_revision: v.0,
        mod_revision: v.1,
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_string();
        self.blocking(move |db| {
            let r = db.begin_read().map_err(io)?;
            let t = r.open_table(KEYS).map_err(io)?;
            Ok(t.get(key.as_str())
                .map_err(io)?
                .map(|v| read_kv(&key, v.value())))
        })
        .await
    }

    async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        let prefix = prefix.to_string();
        self.blocking(move |db| {
            let r = db.begin_read().map_err(io)?;
            let rev = r
                .open_table(META)
                .map_err(io)?
                .get(META_REVISION)
                .map_err(io)?
                .map(|v| v.value())
                .unwrap_or(0);
            let t = r.open_table(KEYS).map_err(io)?;
            let mut out = Vec::new();
            for item in t.range(prefix.as_str()..).map_err(io)? {
                let (k, v) = item.map_err(io)?;
                if !k.value().starts_with(prefix.as_str()) {
                    break;
                }
                out.push(read_kv(k.value(), v.value()));
            }
            Ok((out, rev))
        })
        .await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .requests
            .as_ref()
            .ok_or(StoreError::Closed)?
            .send(Request { txn, reply })
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.inner.revision.load(Ordering::SeqCst))
    }

    async fn watch(&self, prefix: &str, from_revision: Revision) -> Result<WatchStream> {
        // Subscribe before reading the revision: whatever commits after the read is
        // then both past `current` and in the live channel.
        let live = self.inner.events.subscribe();
        let current = self.inner.revision.load(Ordering::SeqCst);
        let start = if from_revision == 0 {
            current + 1
        } else {
            from_revision
        };
        let oldest = self.inner.oldest.load(Ordering::SeqCst);
        if start < oldest {
            return Err(StoreError::Compacted {
                requested: start,
                oldest,
            });
        }
        let p = prefix.to_string();
        let history = if start <= current {
            self.blocking(move |db| {
                let r = db.begin_read().map_err(io)?;
                let t = r.open_table(HISTORY).map_err(io)?;
                let mut out = Vec::new();
                for item in t.range((start, 0u32)..=(current, u32::MAX)).map_err(io)? {
                    let (k, v) = item.map_err(io)?;
                    let (rev, _) = k.value();
                    let (kind, key, value, create) = v.value();
                    if !key.starts_with(p.as_str()) {
                        continue;
                    }
                    out.push(Event {
                        kind: if kind == 0 {
                            EventKind::Put
                        } else {
                            EventKind::Delete
                        },
                        kv: KeyValue {
                            key: key.to_string(),
                            value: value.to_vec(),
                            create_revision: create,
                            mod_revision: rev,
                        },
                    });
                }
                Ok(out)
            })
            .await?
        } else {
            Vec::new()
        };
        // A compaction may have raced the history read.
        let oldest = self.inner.oldest.load(Ordering::SeqCst);
        if start < oldest {
            return Err(StoreError::Compacted {
                requested: start,
                oldest,
            });
        }
        let prefix = prefix.to_string();
        let replay = futures::stream::iter(history.into_iter().map(Ok));
        /// Live changes arrive one committed transaction (one revision) at a time,
        /// so a watcher that lags loses whole revisions and can resume exactly.
        struct Live {
            rx: broadcast::Receiver<Arc<Vec<Event>>>,
            /// Last revision passed (delivered or filtered out).
            seen: Revision,
            prefix: String,
            pending: std::collections::VecDeque<Event>,
            done: bool,
        }
        let state = Live {
            rx: live,
            seen: current,
            prefix,
            pending: Default::default(),
            done: false,
        };
        let follow = futures::stream::unfold(state, |mut s| async move {
            loop {
                if let Some(ev) = s.pending.pop_front() {
                    return Some((Ok(ev), s));
                }
                if s.done {
                    return None;
                }
                match s.rx.recv().await {
                    Ok(changes) => {
                        let Some(rev) = changes.first().map(Event::revision) else {
                            continue;
                        };
                        if rev <= s.seen {
                            continue;
                        }
                        s.seen = rev;
                        s.pending.extend(
                            changes
                                .iter()
                                .filter(|e| e.kv.key.starts_with(s.prefix.as_str()))
                                .cloned(),
                        );
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        s.done = true;
                        return Some((
                            Err(StoreError::Lagged {
                                resume_from: s.seen + 1,
                            }),
                            s,
                        ));
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        s.done = true;
                        return Some((Err(StoreError::Closed), s));
                    }
                }
            }
        });
        Ok(replay.chain(follow).boxed())
    }
}
