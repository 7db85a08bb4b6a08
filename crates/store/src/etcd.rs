//! The distributed store: etcd v3, for several `kuryr server` replicas on one cloud.
//!
//! The trait was modelled on etcd, so this is mostly a translation:
//! - every key lives under one prefix (`/kuryr` by default), so an etcd shared with
//!   other programs (a Kubernetes control plane) keeps them apart;
//! - a [`Txn`] is one etcd transaction. etcd only says whether all compares held;
//!   to name the one that failed, the failure branch reads the compared keys at the
//!   same revision and the compares are evaluated again on what it read;
//! - etcd refuses a transaction that writes one key twice; ours allows it and the
//!   last write wins, so writes are collapsed to the last one per key first;
//! - ranges are read in pages at one revision (a consistent snapshot of any size);
//! - watches start with etcd's own start revision and report its compaction as
//!   [`StoreError::Compacted`]. History is compacted by kuryr itself, keeping
//!   `history_retention` revisions, as the embedded store does.
//!
//! Revisions are etcd's: exact ("+1 per commit") only while nothing else writes to
//! the same etcd, which is what the conformance suite assumes of its store.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare as EtcdCompare, CompareOp, ConnectOptions, GetOptions, Identity,
    TlsOptions, Txn as EtcdTxn, TxnOp, TxnOpResponse, WatchOptions,
};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::{
    Compare, Event, EventKind, KeyValue, Op, Result, Revision, Store, StoreError, Txn, TxnOutcome,
    WatchStream,
};

/// Keys read per page of a range.
const PAGE: i64 = 1_000;
/// Pause before sending again a request that did not reach a member.
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// History is compacted in steps of at most this many revisions.
const MAX_COMPACT_STEP: u64 = 1_000;

/// Where the etcd cluster is and how to log in to it (the flags etcdctl users know).
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Client URLs (`http://` or `https://`), any member of the cluster.
    pub endpoints: Vec<String>,
    /// Every kuryr key is stored under this prefix.
    pub prefix: String,
    /// etcd user and password (when etcd's authentication is on).
    pub user: Option<(String, String)>,
    /// CA bundle that signed the members' certificates (PEM).
    pub cacert: Option<PathBuf>,
    /// Client certificate and key for etcd's `--client-cert-auth` (PEM).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Revisions of change history kept for watchers that resume.
    pub history_retention: u64,
    /// Longest wait for one request: past it (etcd without quorum), the request
    /// fails with [`StoreError::Unavailable`] rather than hanging.
    pub request_timeout: Duration,
}

impl EtcdOptions {
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdOptions {
            endpoints,
            prefix: "/kuryr".into(),
            user: None,
            cacert: None,
            cert: None,
            key: None,
            history_retention: 100_000,
            request_timeout: Duration::from_secs(5),
        }
    }
}

pub struct EtcdStore {
    client: Client,
    prefix: String,
    retention: u64,
    timeout: Duration,
    /// The revision this replica last compacted to (others may have gone further).
    compacted_to: AtomicU64,
    /// Never set: etcd's failures are not fatal to this process, they pass.
    fatal: tokio::sync::watch::Sender<Option<String>>,
    commit_seconds: Histogram,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn read_pem(path: &PathBuf, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| StoreError::Io(format!("reading the etcd {what} {}: {e}", path.display())))
}

/// What etcd's errors mean to callers: a missing quorum, an unreachable or slow
/// cluster are [`StoreError::Unavailable`] (they pass); the rest is reported as is.
fn etcd_error(e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    use tonic::Code;
    match e {
        E::GRpcStatus(s) => match s.code() {
            // Unknown: tonic's code for a connection that broke mid-request.
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
            | Code::Unknown => StoreError::Unavailable(format!("etcd: {}", s.message())),
            Code::OutOfRange if s.message().contains("compacted") => StoreError::Compacted {
                requested: 0,
                oldest: 0,
            },
            Code::InvalidArgument if s.message().contains("too many operations") => {
                StoreError::Io(format!(
                    "etcd refused a transaction: {} (raise etcd's --max-txn-ops)",
                    s.message()
                ))
            }
            Code::InvalidArgument if s.message().contains("request is too large") => {
                StoreError::Io(format!(
                    "etcd refused a transaction: {} (raise etcd's --max-request-bytes)",
                    s.message()
                ))
            }
            _ => StoreError::Io(format!("etcd: {}", s.message())),
        },
        E::TransportError(t) => StoreError::Unavailable(format!("etcd: {t}")),
        E::IoError(io) => StoreError::Unavailable(format!("etcd: {io}")),
        other => StoreError::Io(format!("etcd: {other}")),
    }
}

/// Whether a failed request certainly was not applied: the connection was refused
/// or the member had no leader to propose it to.
fn not_sent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == tonic::Code::Unavailable
                && (s.message().contains("connect") || s.message().contains("no leader"))
        }
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

/// The first key after every key that starts with `prefix` (etcd's range end).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Only 0xff bytes: every key from the prefix on ("\0" is etcd's "to the end").
    vec![0]
}

fn revision(r: i64) -> Revision {
    u64::try_from(r).unwrap_or(0)
}

/// Keeps the last write of each key, in the order of those last writes.
fn collapse(ops: Vec<Op>) -> Vec<Op> {
    let key = |op: &Op| match op {
        Op::Put(k, _) | Op::Delete(k) => k.clone(),
    };
    let mut last: HashMap<String, usize> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        last.insert(key(op), i);
    }
    ops.into_iter()
        .enumerate()
        .filter(|(i, op)| last.get(&key(op)) == Some(i))
        .map(|(_, op)| op)
        .collect()
}

impl EtcdStore {
    /// Connects and checks that the cluster answers (one linearizable read). Fails
    /// at once when it does not: the caller decides how long to wait for etcd.
    pub async fn connect(options: EtcdOptions) -> Result<EtcdStore> {
        let mut connect = ConnectOptions::new()
            .with_timeout(options.request_timeout)
            .with_connect_timeout(options.request_timeout)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
            .with_keep_alive_while_idle(true)
            // A member that lost its leader refuses watches instead of keeping
            // them open silently.
            .with_require_leader(true);
        if let Some((user, password)) = &options.user {
            connect = connect
                .with_user(user.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        if options.cacert.is_some() || options.cert.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &options.cacert {
                tls = tls.ca_certificate(Certificate::from_pem(read_pem(ca, "CA")?));
            }
            match (&options.cert, &options.key) {
                (Some(cert), Some(key)) => {
                    tls = tls.identity(Identity::from_pem(
                        read_pem(cert, "client certificate")?,
                        read_pem(key, "client key")?,
                    ));
                }
                (None, None) => {}
                _ => {
                    return Err(StoreError::Io(
                        "an etcd client certificate needs its key, and a key its certificate"
                            .into(),
                    ));
                }
            }
            connect = connect.with_tls(tls);
        }
        let client = Client::connect(&options.endpoints, Some(connect))
            .await
            .map_err(etcd_error)?;
        let (fatal, _) = tokio::sync::watch::channel(None);
        let store = EtcdStore {
            client,
            prefix: options.prefix.trim_end_matches('/').to_string(),
            retention: options.history_retention.max(1),
            timeout: options.request_timeout,
            compacted_to: AtomicU64::new(0),
            fatal,
            commit_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
        };
        store.current_revision().await?;
        Ok(store)
    }

    fn full(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.prefix).into_bytes()
    }

    /// Our view of one of etcd's keys (`None`: not ours, or not UTF-8).
    fn ours(&self, kv: &etcd_client::KeyValue) -> Option<KeyValue> {
        let key = std::str::from_utf8(kv.key())
            .ok()?
            .strip_prefix(&self.prefix)?;
        Some(KeyValue {
            key: key.to_string(),
            value: kv.value().to_vec(),
            create_revision: revision(kv.create_revision()),
            mod_revision: revision(kv.mod_revision()),
        })
    }

    /// Runs one request within the store's deadline. A request that certainly did
    /// not reach a working member (refused connection to a dead member, a member
    /// without a leader during an election) is sent again until the deadline: the
    /// client balances over every endpoint, dead ones included, and one member down
    /// must not fail a third of the requests. A request that may have been applied is
    /// never sent twice.
    async fn call<T, F, Fut>(&self, mut request: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, request()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if not_sent(&e) && Instant::now() + RETRY_PAUSE < deadline => {
                    tracing::debug!(error = %e, "etcd request not sent; again");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Ok(Err(e)) => return Err(etcd_error(e)),
                Err(_) => {
                    return Err(StoreError::Unavailable(format!(
                        "etcd did not answer within {:?}",
                        self.timeout
                    )));
                }
            }
        }
    }

    /// Waits for one answer on an open stream, within the store's deadline.
    async fn within<T>(
        &self,
        f: impl std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r.map_err(etcd_error),
            Err(_) => Err(StoreError::Unavailable(format!(
                "etcd did not answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// Keeps about `retention` revisions of history: compacts once the oldest kept
    /// revision is a step behind. Every replica does this; etcd refuses the ones
    /// already done, which is fine.
    async fn compact_after(&self, rev: Revision) {
        let target = rev.saturating_sub(self.retention);
        let step = self.retention.clamp(1, MAX_COMPACT_STEP);
        if target < self.compacted_to.load(Ordering::Relaxed) + step {
            return;
        }
        self.compacted_to.fetch_max(target, Ordering::Relaxed);
        let kv = self.client.kv_client();
        let compact = || {
            let mut kv = kv.clone();
            async move { kv.compact(target as i64, None).await }
        };
        match self.call(compact).await {
            Ok(_) => tracing::debug!(revision = target, "etcd history compacted"),
            Err(e) => tracing::debug!(revision = target, error = %e, "etcd compaction not done"),
        }
    }

    /// Which compare failed, from the failure branch's reads (one per compare, same
    /// revision as the compares).
    fn failed_compare(&self, compares: &[Compare], reads: Vec<TxnOpResponse>) -> usize {
        for (i, (c, read)) in compares.iter().zip(reads).enumerate() {
            let TxnOpResponse::Get(get) = read else {
                continue;
            };
            let first = get.kvs().first();
            let holds = match c {
                Compare::Absent(_) | Compare::PrefixEmpty(_) => first.is_none(),
                Compare::ModRevision(_, r) => {
                    first.is_some_and(|kv| revision(kv.mod_revision()) == *r)
                }
            };
            if !holds {
                return i;
            }
        }
        // Every compare holds now: one changed between the two evaluations, which
        // cannot happen inside one etcd transaction; name the first.
        0
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let kv = self.client.kv_client();
        let key = self.full(key);
        let resp = self
            .call(|| {
                let (mut kv, key) = (kv.clone(), key.clone());
                async move { kv.get(key, None).await }
            })
            .await?;
        Ok(resp.kvs().first().and_then(|kv| self.ours(kv)))
    }

    async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        let start = self.full(prefix);
        let end = prefix_end(&start);
        // A compaction between two pages makes the snapshot's revision unreadable:
        // start over (a few times at most).
        'snapshot: for _ in 0..5 {
            let kv = self.client.kv_client();
            let mut out = Vec::new();
            let mut at: i64 = 0;
            let mut from = start.clone();
            loop {
                let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
                if at > 0 {
                    opts = opts.with_revision(at);
                }
                let page = self
                    .call(|| {
                        let (mut kv, from, opts) = (kv.clone(), from.clone(), opts.clone());
                        async move { kv.get(from, Some(opts)).await }
                    })
                    .await;
                let resp = match page {
                    Ok(r) => r,
                    // The snapshot's revision was compacted between two pages.
                    Err(StoreError::Compacted { .. }) if at > 0 => continue 'snapshot,
                    Err(e) => return Err(e),
                };
                if at == 0 {
                    at = resp.header().map_or(0, |h| h.revision());
                }
                out.extend(resp.kvs().iter().filter_map(|kv| self.ours(kv)));
                match resp.kvs().last() {
                    Some(last) if resp.more() => {
                        from = last.key().to_vec();
                        from.push(0);
                    }
                    _ => return Ok((out, revision(at))),
                }
            }
        }
        Err(StoreError::Unavailable(
            "etcd kept compacting while a range was read".into(),
        ))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome> {
        let started = Instant::now();
        let compares: Vec<EtcdCompare> = txn
            .compares
            .iter()
            .map(|c| match c {
                Compare::Absent(k) => EtcdCompare::version(self.full(k), CompareOp::Equal, 0),
                Compare::ModRevision(k, r) => {
                    EtcdCompare::mod_revision(self.full(k), CompareOp::Equal, *r as i64)
                }
                // Over a range, every key must hold the condition; none exists
                // when no key has a version other than 0.
                Compare::PrefixEmpty(p) => {
                    let full = self.full(p);
                    let end = prefix_end(&full);
                    EtcdCompare::version(full, CompareOp::Equal, 0).with_range(end)
                }
            })
            .collect();
        let reads: Vec<TxnOp> = txn
            .compares
            .iter()
            .map(|c| match c {
                Compare::Absent(k) | Compare::ModRevision(k, _) => {
                    TxnOp::get(self.full(k), Some(GetOptions::new().with_keys_only()))
                }
                Compare::PrefixEmpty(p) => {
                    let full = self.full(p);
                    let end = prefix_end(&full);
                    TxnOp::get(
                        full,
                        Some(
                            GetOptions::new()
                                .with_range(end)
                                .with_limit(1)
                                .with_keys_only(),
                        ),
                    )
                }
            })
            .collect();
        let writes: Vec<TxnOp> = collapse(txn.ops)
            .into_iter()
            .map(|op| match op {
                Op::Put(k, v) => TxnOp::put(self.full(&k), v, None),
                Op::Delete(k) => TxnOp::delete(self.full(&k), None),
            })
            .collect();
        let request = EtcdTxn::new()
            .when(compares)
            .and_then(writes)
            .or_else(reads);
        let kv = self.client.kv_client();
        let resp = self
            .call(|| {
                let (mut kv, request) = (kv.clone(), request.clone());
                async move { kv.txn(request).await }
            })
            .await?;
        let rev = revision(resp.header().map_or(0, |h| h.revision()));
        if !resp.succeeded() {
            return Ok(TxnOutcome::CompareFailed(
                self.failed_compare(&txn.compares, resp.op_responses()),
            ));
        }
        self.commit_seconds.observe(started.elapsed().as_secs_f64());
        self.compact_after(rev).await;
        Ok(TxnOutcome::Committed(rev))
    }

    async fn current_revision(&self) -> Result<Revision> {
        let kv = self.client.kv_client();
        let key = self.full("/");
        let resp = self
            .call(|| {
                let (mut kv, key) = (kv.clone(), key.clone());
                async move { kv.get(key, Some(GetOptions::new().with_count_only())).await }
            })
            .await?;
        Ok(revision(resp.header().map_or(0, |h| h.revision())))
    }

    async fn watch(&self, prefix: &str, from_revision: Revision) -> Result<WatchStream> {
        let start = self.full(prefix);
        let end = prefix_end(&start);
        let mut opts = WatchOptions::new().with_range(end.clone());
        if from_revision > 0 {
            opts = opts.with_start_revision(from_revision as i64);
        }
        let watch = self.client.watch_client();
        let mut stream = self
            .call(|| {
                let (mut watch, start, opts) = (watch.clone(), start.clone(), opts.clone());
                async move { watch.watch(start, Some(opts)).await }
            })
            .await?;
        // etcd confirms the watch first: from then on nothing is missed.
        let created = self.within(stream.message()).await?;
        match created {
            Some(r) if r.created() && !r.canceled() => {}
            Some(r) => {
                return Err(StoreError::Unavailable(format!(
                    "etcd refused the watch: {}",
                    r.cancel_reason()
                )));
            }
            None => return Err(StoreError::Unavailable("etcd closed the watch".into())),
        }
        // A start revision that was compacted is reported by etcd on the stream just
        // after; ask first so the caller gets it here, where it re-lists.
        if from_revision > 0 {
            let kv = self.client.kv_client();
            let probe = GetOptions::new()
                .with_range(end)
                .with_revision(from_revision as i64)
                .with_count_only();
            let probed = self
                .call(|| {
                    let (mut kv, start, probe) = (kv.clone(), start.clone(), probe.clone());
                    async move { kv.get(start, Some(probe)).await }
                })
                .await;
            if let Err(StoreError::Compacted { .. }) = probed {
                let oldest = match self.within(stream.message()).await {
                    Ok(Some(r)) if r.compact_revision() > 0 => revision(r.compact_revision()),
                    _ => from_revision + 1,
                };
                return Err(StoreError::Compacted {
                    requested: from_revision,
                    oldest,
                });
            }
        }
        let prefix = self.prefix.clone();
        let events = futures::stream::unfold(
            (stream, std::collections::VecDeque::<Event>::new(), false),
            move |(mut stream, mut queue, done)| {
                let prefix = prefix.clone();
                async move {
                    loop {
                        if let Some(e) = queue.pop_front() {
                            return Some((Ok(e), (stream, queue, done)));
                        }
                        if done {
                            return None;
                        }
                        let resp = match stream.message().await {
                            Ok(Some(r)) => r,
                            Ok(None) => {
                                let e = StoreError::Unavailable("etcd closed the watch".into());
                                return Some((Err(e), (stream, queue, true)));
                            }
                            Err(e) => return Some((Err(etcd_error(e)), (stream, queue, true))),
                        };
                        if resp.compact_revision() > 0 {
                            let e = StoreError::Compacted {
                                requested: from_revision,
                                oldest: revision(resp.compact_revision()),
                            };
                            return Some((Err(e), (stream, queue, true)));
                        }
                        if resp.canceled() {
                            let e = StoreError::Unavailable(format!(
                                "etcd cancelled the watch: {}",
                                resp.cancel_reason()
                            ));
                            return Some((Err(e), (stream, queue, true)));
                        }
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            let Some(key) = std::str::from_utf8(kv.key())
                                .ok()
                                .and_then(|k| k.strip_prefix(&prefix))
                            else {
                                continue;
                            };
                            let delete = ev.event_type() == etcd_client::EventType::Delete;
                            queue.push_back(Event {
                                kind: if delete {
                                    EventKind::Delete
                                } else {
                                    EventKind::Put
                                },
                                kv: KeyValue {
                                    key: key.to_string(),
                                    value: if delete {
                                        Vec::new()
                                    } else {
                                        kv.value().to_vec()
                                    },
                                    create_revision: revision(kv.create_revision()),
                                    mod_revision: revision(kv.mod_revision()),
                                },
                            });
                        }
                    }
                }
            },
        );
        Ok(Box::pin(events))
    }

    fn fatal(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.fatal.subscribe()
    }

    async fn check(&self) -> Result<()> {
        self.current_revision().await.map(|_| ())
    }

    fn register_metrics(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "commit_duration",
            "Duration of one committed etcd transaction, as this replica saw it",
            Unit::Seconds,
            self.commit_seconds.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end(b"/kuryr/a/"), b"/kuryr/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn the_last_write_of_a_key_wins() {
        let ops = vec![
            Op::Put("/a".into(), b"1".to_vec()),
            Op::Delete("/b".into()),
            Op::Put("/a".into(), b"2".to_vec()),
            Op::Put("/c".into(), b"3".to_vec()),
            Op::Delete("/c".into()),
        ];
        assert_eq!(
            collapse(ops),
            vec![
                Op::Delete("/b".into()),
                Op::Put("/a".into(), b"2".to_vec()),
                Op::Delete("/c".into()),
            ]
        );
        // Control: distinct keys keep every write, in order.
        let distinct = vec![Op::Put("/x".into(), vec![]), Op::Delete("/y".into())];
        assert_eq!(collapse(distinct.clone()), distinct);
    }
}
