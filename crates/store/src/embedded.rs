//! The embedded store: one redb file, every commit fsynced before it is acknowledged.
//!
//! One writer thread owns the write side. It takes whatever transactions are queued
//! and runs them, in order, inside a single redb write transaction (group commit):
//! each keeps its own revision and its own compare outcome, later ones see the
//! effects of earlier ones, and all share one fsync. Committed changes go to a
//! history table, which watches replay from, and are then published live.
//!
//! Rows are stored as plain bytes in our own layout and decoded with checks, so a
//! damaged row is reported as [`StoreError::Io`] instead of panicking inside redb's
//! typed decoders.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak, mpsc};
use std::thread::JoinHandle;

use async_trait::async_trait;
use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition};
use tokio::sync::{broadcast, oneshot};

use crate::{
    Compare, Event, EventKind, KeyValue, Op, Result, Revision, Store, StoreError, Txn, TxnOutcome,
    WatchStream,
};

/// key (UTF-8) → create revision (u64 LE), mod revision (u64 LE), value.
const KEYS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("keys");
/// revision → the changes of that transaction, see [`encode_changes`]. A
/// transaction that changes nothing (deletes of missing keys) takes no revision.
const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history");
const META: TableDefinition<&[u8], u64> = TableDefinition::new("meta");
const META_FORMAT: &[u8] = b"format";
const META_REVISION: &[u8] = b"revision";
/// Oldest revision still in the history (1 until something was compacted).
const META_OLDEST: &[u8] = b"oldest";
/// Bumped whenever the row layout changes; a file of another format is refused.
const FORMAT: u64 = 1;

/// Transactions committed together at most; bounds the latency of one batch.
const MAX_BATCH: usize = 1024;
/// Committed revisions buffered for live watchers. A watcher that falls further
/// behind is not cancelled: it catches up from the history table, so this only
/// trades memory for fewer history reads.
const LIVE_BUFFER: usize = 1024;
/// History rows (revisions) read per catch-up step, and bytes of events at most,
/// so a watcher resuming from far back never holds much in memory.
const CATCHUP_ROWS: usize = 512;
const CATCHUP_BYTES: usize = 4 << 20;
/// History is trimmed once it holds this many revisions beyond the retention
/// (at most 1,000), so the deletion cost is paid in batches rather than per commit.
const MAX_COMPACT_STEP: u64 = 1_000;

#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// The redb file; its parent directory is created if missing.
    pub path: PathBuf,
    /// Revisions of change history kept for watchers that resume (at least 1).
    pub history_retention: u64,
    /// redb's page cache. Memory matters more than cache hits here: the OS page
    /// cache still serves what redb's does not.
    pub cache_size_bytes: usize,
}

impl EmbeddedOptions {
    /// Defaults: 100,000 revisions of history, a 16 MiB cache.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        EmbeddedOptions {
            path: path.into(),
            history_retention: 100_000,
            cache_size_bytes: 16 << 20,
        }
    }
}

/// The changes of one committed revision, as published to live watchers.
struct Change {
    revision: Revision,
    events: Vec<Event>,
}

struct Request {
    txn: Txn,
    reply: oneshot::Sender<Result<TxnOutcome>>,
}

/// What the writer measures: one observation per group commit.
#[derive(Clone)]
struct Metrics {
    commit_seconds: Histogram,
    batch_transactions: Histogram,
    commit_failures: Counter,
    revision: Gauge,
}

impl Metrics {
    fn new() -> Self {
        Metrics {
            // 100 µs to ~6.5 s: an fsync on fast flash up to a stalled disk.
            commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 17)),
            // 1 to MAX_BATCH transactions.
            batch_transactions: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            commit_failures: Counter::default(),
            revision: Gauge::default(),
        }
    }
}

struct Inner {
    db: Arc<Database>,
    requests: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    live: broadcast::Sender<Arc<Change>>,
    /// Latest committed revision; only stored after its commit is durable.
    revision: Arc<AtomicU64>,
    /// Set by the writer when a commit fails (redb then refuses writes until reopened).
    fatal: tokio::sync::watch::Sender<Option<String>>,
    metrics: Metrics,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue stops the writer once it has answered everything queued;
        // joining it means the file is released when the last handle is gone.
        self.requests.take();
        if let Some(w) = self.writer.take()
            && w.join().is_err()
        {
            tracing::error!("store writer thread panicked");
        }
    }
}

/// The embedded store. Cheap to clone; the file closes when the last clone (and any
/// read still running) is dropped. Open watch streams do not keep it open: they end
/// with [`StoreError::Closed`].
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

fn io<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Io(e.to_string())
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Io(format!("corrupt store data: {what}"))
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store file and starts its writer thread.
    pub fn open(opts: EmbeddedOptions) -> Result<Self> {
        if let Some(dir) = opts.path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let db = Database::builder()
            .set_cache_size(opts.cache_size_bytes)
            .create(&opts.path)
            .map_err(|e| StoreError::Io(format!("opening {}: {e}", opts.path.display())))?;
        Self::start(db, opts.history_retention)
    }

    /// Opens the store on another redb storage backend (`opts.path` is not used):
    /// in-memory, or one that injects I/O failures in tests.
    pub fn open_with_backend(
        backend: impl redb::StorageBackend,
        opts: &EmbeddedOptions,
    ) -> Result<Self> {
        let db = Database::builder()
            .set_cache_size(opts.cache_size_bytes)
            .create_with_backend(backend)
            .map_err(|e| StoreError::Io(format!("opening the store backend: {e}")))?;
        Self::start(db, opts.history_retention)
    }

    fn start(db: Database, history_retention: u64) -> Result<Self> {
        let (revision, oldest) = init_tables(&db)?;
        tracing::debug!(revision, oldest, "store opened");
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel::<Request>();
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        let revision_pub = Arc::new(AtomicU64::new(revision));
        let retention = history_retention.max(1);
        let (fatal, _) = tokio::sync::watch::channel(None);
        let metrics = Metrics::new();
        metrics.revision.set(revision_i64(revision));
        let writer = Writer {
            fatal: fatal.clone(),
            db: db.clone(),
            live: live.clone(),
            revision_pub: revision_pub.clone(),
            metrics: metrics.clone(),
            revision,
            oldest,
            retention,
            compact_step: (retention / 10).clamp(1, MAX_COMPACT_STEP),
        };
        let writer = std::thread::Builder::new()
            .name("kuryr-store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(io)?;
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                db,
                requests: Some(tx),
                writer: Some(writer),
                live,
                revision: revision_pub,
                fatal,
                metrics,
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

/// Creates the tables of a new file, checks the format of an existing one, and
/// returns its (revision, oldest kept revision).
fn init_tables(db: &Database) -> Result<(Revision, Revision)> {
    let mismatch = |e: redb::TableError| match e {
        redb::TableError::Storage(e) => io(e),
        // The tables exist with other key or value types.
        e => StoreError::Io(format!(
            "store file has an incompatible layout (written by another kuryr version?): {e}"
        )),
    };
    let mut w = db.begin_write().map_err(io)?;
    w.set_durability(Durability::Immediate).map_err(io)?;
    let found = {
        w.open_table(KEYS).map_err(mismatch)?;
        w.open_table(HISTORY).map_err(mismatch)?;
        let mut meta = w.open_table(META).map_err(mismatch)?;
        let get = |m: &Table<&[u8], u64>, k: &[u8]| -> Result<Option<u64>> {
            Ok(m.get(k).map_err(io)?.map(|v| v.value()))
        };
        match get(&meta, META_FORMAT)? {
            Some(FORMAT) => {}
            Some(other) => {
                return Err(StoreError::Io(format!(
                    "store file format {other} is not supported (expected {FORMAT})"
                )));
            }
            None => {
                meta.insert(META_FORMAT, FORMAT).map_err(io)?;
            }
        }
        let revision = get(&meta, META_REVISION)?.unwrap_or(0);
        let oldest = get(&meta, META_OLDEST)?.unwrap_or(1);
        if oldest == 0 || oldest > revision + 1 {
            return Err(corrupt("oldest kept revision is past the current one"));
        }
        (revision, oldest)
    };
    w.commit().map_err(io)?;
    Ok(found)
}

// ---- row layout ----

fn encode_kv(create: Revision, rev: Revision, value: &[u8]) -> Vec<u8> {
    let mut row = Vec::with_capacity(16 + value.len());
    row.extend_from_slice(&create.to_le_bytes());
    row.extend_from_slice(&rev.to_le_bytes());
    row.extend_from_slice(value);
    row
}

fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn read_u32(b: &[u8], at: usize) -> Option<usize> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize)
}

/// (create revision, mod revision) of a key row.
fn kv_revisions(row: &[u8]) -> Result<(Revision, Revision)> {
    match (read_u64(row, 0), read_u64(row, 8)) {
        (Some(c), Some(m)) => Ok((c, m)),
        _ => Err(corrupt("short key row")),
    }
}

fn decode_key(k: &[u8]) -> Result<String> {
    String::from_utf8(k.to_vec()).map_err(|_| corrupt("key is not UTF-8"))
}

fn decode_kv(k: &[u8], row: &[u8]) -> Result<KeyValue> {
    let (create_revision, mod_revision) = kv_revisions(row)?;
    Ok(KeyValue {
        key: decode_key(k)?,
        value: row[16..].to_vec(),
        create_revision,
        mod_revision,
    })
}

/// One history row: per change, kind (0 put, 1 delete), create revision (u64 LE),
/// key length and value length (u32 LE), key, value.
fn encode_changes(events: &[Event]) -> Result<Vec<u8>> {
    let len = events
        .iter()
        .map(|e| 17 + e.kv.key.len() + e.kv.value.len())
        .sum();
    let mut row = Vec::with_capacity(len);
    for e in events {
        let (Ok(klen), Ok(vlen)) = (
            u32::try_from(e.kv.key.len()),
            u32::try_from(e.kv.value.len()),
        ) else {
            return Err(StoreError::Io("key or value larger than 4 GiB".into()));
        };
        row.push(match e.kind {
            EventKind::Put => 0,
            EventKind::Delete => 1,
        });
        row.extend_from_slice(&e.kv.create_revision.to_le_bytes());
        row.extend_from_slice(&klen.to_le_bytes());
        row.extend_from_slice(&vlen.to_le_bytes());
        row.extend_from_slice(e.kv.key.as_bytes());
        row.extend_from_slice(&e.kv.value);
    }
    Ok(row)
}

/// Appends the changes of a history row whose key starts with `prefix`; returns the
/// bytes appended.
fn decode_changes(rev: Revision, row: &[u8], prefix: &str, out: &mut Vec<Event>) -> Result<usize> {
    let mut at = 0;
    let mut bytes = 0;
    while at < row.len() {
        let bad = || corrupt("history row");
        let kind = match row[at] {
            0 => EventKind::Put,
            1 => EventKind::Delete,
            _ => return Err(bad()),
        };
        let create = read_u64(row, at + 1).ok_or_else(bad)?;
        let klen = read_u32(row, at + 9).ok_or_else(bad)?;
        let vlen = read_u32(row, at + 13).ok_or_else(bad)?;
        let kstart = at + 17;
        let vstart = kstart.checked_add(klen).ok_or_else(bad)?;
        let end = vstart.checked_add(vlen).ok_or_else(bad)?;
        let (Some(key), Some(value)) = (row.get(kstart..vstart), row.get(vstart..end)) else {
            return Err(bad());
        };
        if key.starts_with(prefix.as_bytes()) {
            bytes += key.len() + value.len();
            out.push(Event {
                kind,
                kv: KeyValue {
                    key: decode_key(key)?,
                    value: value.to_vec(),
                    create_revision: create,
                    mod_revision: rev,
                },
            });
        }
        at = end;
    }
    Ok(bytes)
}

// ---- the writer ----

/// Revisions as a gauge value (they stay far below i64::MAX).
fn revision_i64(rev: Revision) -> i64 {
    i64::try_from(rev).unwrap_or(i64::MAX)
}

struct Writer {
    db: Arc<Database>,
    fatal: tokio::sync::watch::Sender<Option<String>>,
    live: broadcast::Sender<Arc<Change>>,
    revision_pub: Arc<AtomicU64>,
    metrics: Metrics,
    /// Latest durable revision. Advanced only after a successful commit.
    revision: Revision,
    oldest: Revision,
    retention: u64,
    compact_step: u64,
}

/// What one batch did: an outcome per transaction, the changes to publish, the
/// revision reached, and the oldest kept revision if history was trimmed.
struct Batch {
    outcomes: Vec<Result<TxnOutcome>>,
    changes: Vec<Change>,
    revision: Revision,
    oldest: Option<Revision>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Request>) {
        let mut batch = Vec::with_capacity(64);
        // Ends when every handle to the store is gone and the queue is drained.
        while let Ok(first) = rx.recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            // A caller that gave up (its client went away) before its turn is not
            // committed: its outcome was never going to be seen, and under overload
            // this sheds exactly the work nobody waits for.
            batch.retain(|r| !r.reply.is_closed());
            if !batch.is_empty() {
                self.commit(&mut batch);
            }
        }
        tracing::debug!(revision = self.revision, "store writer stopped");
    }

    /// Commits one batch and answers its callers.
    fn commit(&mut self, batch: &mut Vec<Request>) {
        let started = std::time::Instant::now();
        let result = self.write(batch);
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.batch_transactions.observe(batch.len() as f64);
        match result {
            Ok(done) => {
                self.revision = done.revision;
                if let Some(oldest) = done.oldest {
                    self.oldest = oldest;
                }
                // Published before anyone is answered, so a caller's next read sees it.
                self.revision_pub.store(done.revision, Ordering::SeqCst);
                self.metrics.revision.set(revision_i64(done.revision));
                for (req, outcome) in batch.drain(..).zip(done.outcomes) {
                    // The caller may have given up waiting; the commit stands anyway.
                    let _ = req.reply.send(outcome);
                }
                for change in done.changes {
                    // No receivers just means nobody is watching.
                    let _ = self.live.send(Arc::new(change));
                }
            }
            Err(e) => {
                self.metrics.commit_failures.inc();
                tracing::error!(error = %e, transactions = batch.len(), "store commit failed");
                self.fatal.send_replace(Some(e.to_string()));
                for req in batch.drain(..) {
                    let _ = req.reply.send(Err(StoreError::Io(e.to_string())));
                }
            }
        }
    }

    /// Runs the batch's transactions in one redb transaction and commits it. An
    /// error here (redb failing) fails the whole batch; a damaged row only fails the
    /// transaction that reads it.
    fn write(&self, batch: &mut [Request]) -> Result<Batch> {
        let mut w = self.db.begin_write().map_err(io)?;
        // redb's default, spelled out: the commit returns only once fsynced.
        w.set_durability(Durability::Immediate).map_err(io)?;
        let mut rev = self.revision;
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut changes = Vec::new();
        let mut oldest = None;
        {
            let mut keys = w.open_table(KEYS).map_err(io)?;
            let mut history = w.open_table(HISTORY).map_err(io)?;
            for req in batch.iter_mut() {
                let txn = std::mem::take(&mut req.txn);
                let prior = match check(&keys, &txn)? {
                    Ok(Checked::Holds(prior)) => prior,
                    Ok(Checked::Fails(i)) => {
                        outcomes.push(Ok(TxnOutcome::CompareFailed(i)));
                        continue;
                    }
                    Err(damaged) => {
                        tracing::error!(error = %damaged, "transaction reads a damaged row");
                        outcomes.push(Err(damaged));
                        continue;
                    }
                };
                let events = apply(&mut keys, txn.ops, prior, rev + 1)?;
                // A transaction that changed nothing (deletes of missing keys) takes no
                // revision, as in etcd: every revision then has events, and a watcher
                // that saw revision R has seen everything up to R.
                if !events.is_empty() {
                    rev += 1;
                    history
                        .insert(rev, encode_changes(&events)?.as_slice())
                        .map_err(io)?;
                    changes.push(Change {
                        revision: rev,
                        events,
                    });
                }
                outcomes.push(Ok(TxnOutcome::Committed(rev)));
            }
            if rev != self.revision {
                let mut meta = w.open_table(META).map_err(io)?;
                meta.insert(META_REVISION, rev).map_err(io)?;
                // Keep exactly `retention` revisions once enough extra has piled up.
                if rev - self.oldest + 1 >= self.retention + self.compact_step {
                    let keep_from = rev - self.retention + 1;
                    history.retain_in(..keep_from, |_, _| false).map_err(io)?;
                    meta.insert(META_OLDEST, keep_from).map_err(io)?;
                    oldest = Some(keep_from);
                }
            }
        }
        w.commit().map_err(io)?;
        Ok(Batch {
            outcomes,
            changes,
            revision: rev,
            oldest,
        })
    }
}

/// What a transaction finds before writing.
enum Checked {
    /// Every compare holds. For each key the writes touch, in order of first use,
    /// the create revision of its current version (None: absent).
    Holds(Vec<(String, Option<Revision>)>),
    /// The compare at this index does not hold.
    Fails(usize),
}

/// Checks a transaction's compares and reads what its writes replace, all before
/// anything is written. The outer error is redb failing (fatal to the batch); the
/// inner one a damaged row (fatal to this transaction only, which then has written
/// nothing).
fn check(keys: &Table<&[u8], &[u8]>, txn: &Txn) -> Result<Result<Checked>> {
    for (i, c) in txn.compares.iter().enumerate() {
        let holds = match c {
            Compare::Absent(k) => keys.get(k.as_bytes()).map_err(io)?.is_none(),
            Compare::ModRevision(k, r) => match keys.get(k.as_bytes()).map_err(io)? {
                Some(row) => match kv_revisions(row.value()) {
                    Ok((_, m)) => m == *r,
                    Err(e) => return Ok(Err(e)),
                },
                None => false,
            },
            Compare::PrefixEmpty(p) => match keys.range(p.as_bytes()..).map_err(io)?.next() {
                Some(item) => !item.map_err(io)?.0.value().starts_with(p.as_bytes()),
                None => true,
            },
        };
        if !holds {
            return Ok(Ok(Checked::Fails(i)));
        }
    }
    let mut prior: Vec<(String, Option<Revision>)> = Vec::with_capacity(txn.ops.len());
    for op in &txn.ops {
        let (Op::Put(k, _) | Op::Delete(k)) = op;
        // Transactions are small: a linear search beats hashing here.
        if prior.iter().any(|(seen, _)| seen == k) {
            continue;
        }
        let create = match keys.get(k.as_bytes()).map_err(io)? {
            Some(row) => match kv_revisions(row.value()) {
                Ok((c, _)) => Some(c),
                Err(e) => return Ok(Err(e)),
            },
            None => None,
        };
        prior.push((k.clone(), create));
    }
    Ok(Ok(Checked::Holds(prior)))
}

/// Applies a transaction's writes at `rev`, given what [`check`] found; returns its
/// changes (deleting a missing key is no change).
fn apply(
    keys: &mut Table<&[u8], &[u8]>,
    ops: Vec<Op>,
    mut prior: Vec<(String, Option<Revision>)>,
    rev: Revision,
) -> Result<Vec<Event>> {
    let mut events = Vec::with_capacity(ops.len());
    for op in ops {
        let (Op::Put(key, _) | Op::Delete(key)) = &op;
        let Some(slot) = prior.iter_mut().find(|(k, _)| k == key) else {
            return Err(StoreError::Io(
                "internal: write without a prior read".into(),
            ));
        };
        match op {
            Op::Put(key, value) => {
                let create = *slot.1.get_or_insert(rev);
                keys.insert(key.as_bytes(), encode_kv(create, rev, &value).as_slice())
                    .map_err(io)?;
                events.push(Event {
                    kind: EventKind::Put,
                    kv: KeyValue {
                        key,
                        value,
                        create_revision: create,
                        mod_revision: rev,
                    },
                });
            }
            Op::Delete(key) => {
                if let Some(create) = slot.1.take() {
                    keys.remove(key.as_bytes()).map_err(io)?;
                    events.push(Event {
                        kind: EventKind::Delete,
                        kv: KeyValue {
                            key,
                            value: Vec::new(),
                            create_revision: create,
                            mod_revision: rev,
                        },
                    });
                }
            }
        }
    }
    Ok(events)
}

// ---- watch ----

/// One step of catching up from the history table.
struct Catchup {
    events: Vec<Event>,
    /// First revision not covered by this step.
    next: Revision,
    /// Whether the step reached the snapshot's latest revision.
    complete: bool,
}

/// Reads the changes under `prefix` from revision `from` on, a bounded amount at a
/// time, from one snapshot.
fn read_history(db: &Database, prefix: &str, from: Revision) -> Result<Catchup> {
    let r = db.begin_read().map_err(io)?;
    let meta = r.open_table(META).map_err(io)?;
    let meta_get =
        |k: &[u8]| -> Result<Option<u64>> { Ok(meta.get(k).map_err(io)?.map(|v| v.value())) };
    let current = meta_get(META_REVISION)?.unwrap_or(0);
    let oldest = meta_get(META_OLDEST)?.unwrap_or(1);
    // Checked in the same snapshot as the rows, so a compaction can never open a gap.
    if from < oldest {
        return Err(StoreError::Compacted {
            requested: from,
            oldest,
        });
    }
    let history = r.open_table(HISTORY).map_err(io)?;
    let mut events = Vec::new();
    let (mut rows, mut bytes) = (0, 0);
    if from <= current {
        for item in history.range(from..=current).map_err(io)? {
            let (rev, row) = item.map_err(io)?;
            let rev = rev.value();
            bytes += decode_changes(rev, row.value(), prefix, &mut events)?;
            rows += 1;
            if (rows >= CATCHUP_ROWS || bytes >= CATCHUP_BYTES) && rev < current {
                return Ok(Catchup {
                    events,
                    next: rev + 1,
                    complete: false,
                });
            }
        }
    }
    Ok(Catchup {
        events,
        next: from.max(current + 1),
        complete: true,
    })
}

struct Watch {
    /// Weak, so that a forgotten watch does not keep the file open.
    db: Weak<Database>,
    live: broadcast::Receiver<Arc<Change>>,
    prefix: String,
    /// Every change below this revision has been delivered or filtered out.
    next: Revision,
    /// Following live changes (otherwise catching up from the history table).
    following: bool,
    pending: VecDeque<Event>,
    done: bool,
}

impl Watch {
    async fn catch_up(&mut self) -> Result<()> {
        let db = self.db.upgrade().ok_or(StoreError::Closed)?;
        let (prefix, from) = (self.prefix.clone(), self.next);
        let step = tokio::task::spawn_blocking(move || read_history(&db, &prefix, from))
            .await
            .map_err(io)??;
        self.pending.extend(step.events);
        self.next = step.next;
        self.following = step.complete;
        Ok(())
    }

    async fn next_event(&mut self) -> Option<Result<Event>> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(Ok(e));
            }
            if self.done {
                return None;
            }
            if !self.following {
                if let Err(e) = self.catch_up().await {
                    self.done = true;
                    return Some(Err(e));
                }
                continue;
            }
            match self.live.recv().await {
                Ok(change) => {
                    // Already replayed from history, or before the requested start.
                    if change.revision < self.next {
                        continue;
                    }
                    self.next = change.revision + 1;
                    let prefix = self.prefix.as_str();
                    self.pending.extend(
                        change
                            .events
                            .iter()
                            .filter(|e| e.kv.key.starts_with(prefix))
                            .cloned(),
                    );
                }
                // Missed live changes are all committed, hence in the history table:
                // read them from there rather than cancelling the watch.
                Err(broadcast::error::RecvError::Lagged(_)) => self.following = false,
                Err(broadcast::error::RecvError::Closed) => {
                    self.done = true;
                    return Some(Err(StoreError::Closed));
                }
            }
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn fatal(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.inner.fatal.subscribe()
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        // A point read is a few page lookups, cheaper than a hop to the blocking pool.
        let r = self.inner.db.begin_read().map_err(io)?;
        let t = r.open_table(KEYS).map_err(io)?;
        match t.get(key.as_bytes()).map_err(io)? {
            Some(row) => {
                let (create_revision, mod_revision) = kv_revisions(row.value())?;
                Ok(Some(KeyValue {
                    key: key.to_string(),
                    value: row.value()[16..].to_vec(),
                    create_revision,
                    mod_revision,
                }))
            }
            None => Ok(None),
        }
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
            for item in t.range(prefix.as_bytes()..).map_err(io)? {
                let (k, v) = item.map_err(io)?;
                if !k.value().starts_with(prefix.as_bytes()) {
                    break;
                }
                out.push(decode_kv(k.value(), v.value())?);
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

    /// Fails once a commit has failed (redb then refuses writes until the file is
    /// reopened) or when a read transaction cannot start.
    async fn check(&self) -> Result<()> {
        if let Some(why) = self.inner.fatal.borrow().clone() {
            return Err(StoreError::Io(format!("a commit failed: {why}")));
        }
        self.inner.db.begin_read().map_err(io)?;
        Ok(())
    }

    fn register_metrics(&self, registry: &mut Registry) {
        let m = &self.inner.metrics;
        registry.register_with_unit(
            "commit_duration",
            "Duration of one group commit: a redb write transaction holding every queued \
             store transaction, and its fsync",
            Unit::Seconds,
            m.commit_seconds.clone(),
        );
        registry.register(
            "commit_batch_transactions",
            "Store transactions committed together in one group commit (one fsync)",
            m.batch_transactions.clone(),
        );
        registry.register(
            "commit_failures",
            "Group commits that failed (every transaction in them failed)",
            m.commit_failures.clone(),
        );
        registry.register(
            "revision",
            "Latest durable store revision",
            m.revision.clone(),
        );
    }

    async fn watch(&self, prefix: &str, from_revision: Revision) -> Result<WatchStream> {
        // Subscribe first: whatever commits after the history snapshot below is then
        // in the live channel, so the hand-over from history to live has no gap.
        let live = self.inner.live.subscribe();
        let mut w = Watch {
            db: Arc::downgrade(&self.inner.db),
            live,
            prefix: prefix.to_string(),
            next: from_revision,
            following: false,
            pending: VecDeque::new(),
            done: false,
        };
        if from_revision == 0 {
            // From now: only changes after the latest commit.
            w.next = self.inner.revision.load(Ordering::SeqCst) + 1;
            w.following = true;
        } else {
            // The first step runs here so that a compacted start fails the call itself.
            w.catch_up().await?;
        }
        Ok(futures::stream::unfold(w, |mut w| async move {
            let item = w.next_event().await?;
            Some((item, w))
        })
        .boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_commit_fails_the_whole_batch_and_keeps_the_revision() {
        let (backend, fail) = crate::failing::FailingBackend::new();
        let db = Database::builder()
            .create_with_backend(backend)
            .expect("in-memory db");
        let s = EmbeddedStore::start(db, 100).expect("start");
        let ok = s.txn(Txn::new().put("/k", "v")).await.expect("first put");
        assert_eq!(ok, TxnOutcome::Committed(1));
        assert!(s.fatal().borrow().is_none());
        let mut w = s.watch("/", 0).await.expect("watch");

        fail.store(true, Ordering::SeqCst);
        let attempts = (0..8).map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.txn(Txn::new().put(format!("/f/{i}"), "x")).await })
        });
        for r in futures::future::join_all(attempts).await {
            let r = r.expect("task");
            assert!(matches!(r, Err(StoreError::Io(_))), "{r:?}");
        }
        assert_eq!(s.current_revision().await.expect("rev"), 1);
        assert!(s.get("/f/0").await.expect("get").is_none());
        assert!(s.fatal().borrow().is_some(), "the owner is told to restart");

        // redb refuses to write after a failed commit until the file is reopened (the
        // page cache can no longer be trusted), so the store keeps failing writes
        // rather than skipping or reusing a revision; nothing was published.
        fail.store(false, Ordering::SeqCst);
        let again = s.txn(Txn::new().put("/after", "v")).await;
        assert!(matches!(again, Err(StoreError::Io(_))), "{again:?}");
        assert_eq!(s.current_revision().await.expect("rev"), 1);
        // Reads keep serving the last durable state.
        assert_eq!(
            s.get("/k").await.expect("get").expect("kept").mod_revision,
            1
        );
        assert_eq!(s.range("/").await.expect("range").1, 1);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(100), w.next())
                .await
                .is_err(),
            "no event for a failed commit"
        );
    }

    #[test]
    fn damaged_rows_are_errors() {
        assert!(kv_revisions(&[1, 2, 3]).is_err());
        assert!(decode_key(&[0xff, 0xfe]).is_err());
        let mut out = Vec::new();
        assert!(decode_changes(1, &[7], "", &mut out).is_err());
        assert!(decode_changes(1, &[0, 1, 2], "", &mut out).is_err());
        let good = encode_changes(&[Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: "/a".into(),
                value: b"v".to_vec(),
                create_revision: 3,
                mod_revision: 4,
            },
        }])
        .expect("encode");
        assert!(decode_changes(4, &good[..good.len() - 1], "", &mut out).is_err());
        out.clear();
        decode_changes(4, &good, "/", &mut out).expect("decode");
        assert_eq!(out.len(), 1);
        assert_eq!(
            (
                out[0].kv.create_revision,
                out[0].revision(),
                &out[0].kv.value[..]
            ),
            (3, 4, &b"v"[..])
        );
    }
}
