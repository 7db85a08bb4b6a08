//! The store conformance suite, written once over the [`Store`] trait: every
//! implementation (embedded redb now, etcd later) runs exactly these cases.
//!
//! A [`Harness`] opens the store under test, and reopens it on the same data after
//! every handle was dropped. [`conformance_tests!`](crate::conformance_tests) expands
//! one `#[tokio::test]` per case; [`run_all`] runs them one after the other.
//!
//! The cases do exact revision arithmetic ("the next commit is the next revision"),
//! so while a case runs nobody else may write to its store. They use distinct key
//! prefixes and only relative revisions, so running them in sequence on one store
//! works too.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::{BoxFuture, join_all};

use crate::{Compare, Event, EventKind, Revision, Store, StoreError, Txn, TxnOutcome, WatchStream};

/// Opens the store under test.
pub trait Harness: Send + Sync {
    /// Opens the store, or reopens it on the same data once every handle from an
    /// earlier open has been dropped.
    fn open(&self) -> BoxFuture<'_, Arc<dyn Store>>;
    /// Like `open`, keeping only about `revisions` revisions of watch history: once
    /// 100 more than that have been committed, the oldest must be reported as
    /// [`StoreError::Compacted`].
    fn open_with_retention(&self, revisions: u64) -> BoxFuture<'_, Arc<dyn Store>>;
}

/// Every case, in sequence, on stores from one harness.
pub async fn run_all(h: &dyn Harness) {
    // Keep in step with `conformance_tests!` below.
    put_get_range(h).await;
    one_txn_one_revision(h).await;
    compares(h).await;
    delete_of_missing_key(h).await;
    concurrent_absent_has_one_winner(h).await;
    concurrent_read_modify_write_is_exact(h).await;
    range_is_a_consistent_snapshot(h).await;
    watch_live_and_prefix(h).await;
    watch_from_now_and_from_the_future(h).await;
    watch_resumes_from_revision(h).await;
    slow_watcher_misses_nothing(h).await;
    reopen_after_drop(h).await;
    compacted_history_is_reported(h).await;
}

/// Expands one `#[tokio::test]` per conformance case; the argument builds a fresh
/// [`Harness`] for each.
///
/// ```text
/// kuryr_store::conformance_tests!(MyHarness::new());
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@cases $harness;
            put_get_range, one_txn_one_revision, compares, delete_of_missing_key,
            concurrent_absent_has_one_winner, concurrent_read_modify_write_is_exact,
            range_is_a_consistent_snapshot, watch_live_and_prefix,
            watch_from_now_and_from_the_future, watch_resumes_from_revision,
            slow_watcher_misses_nothing, reopen_after_drop, compacted_history_is_reported);
    };
    (@cases $harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let h = $harness;
                $crate::conformance::$case(&h).await;
            }
        )*
    };
}

const WAIT: Duration = Duration::from_secs(10);

async fn put(s: &dyn Store, k: &str, v: &str) -> Revision {
    committed(s, Txn::new().put(k, v)).await
}

async fn committed(s: &dyn Store, t: Txn) -> Revision {
    match s.txn(t.clone()).await {
        Ok(TxnOutcome::Committed(r)) => r,
        other => panic!("{t:?} should commit, got {other:?}"),
    }
}

async fn next_event(w: &mut WatchStream) -> Event {
    match tokio::time::timeout(WAIT, w.next()).await {
        Ok(Some(Ok(e))) => e,
        Ok(other) => panic!("expected an event, got {other:?}"),
        Err(_) => panic!("no event within {WAIT:?}"),
    }
}

async fn events(w: &mut WatchStream, n: usize) -> Vec<Event> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(next_event(w).await);
    }
    out
}

async fn assert_quiet(w: &mut WatchStream) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(200), w.next()).await {
        panic!("expected no further event, got {item:?}");
    }
}

/// (kind, key, value, revision) of an event, for compact assertions.
fn summary(e: &Event) -> (EventKind, &str, &[u8], Revision) {
    (e.kind.clone(), e.kv.key.as_str(), &e.kv.value, e.revision())
}

/// Puts, gets and prefix ranges; revisions go up by one per transaction.
pub async fn put_get_range(h: &dyn Harness) {
    let s = h.open().await;
    let r0 = s.current_revision().await.unwrap();
    let r1 = put(&*s, "/a/1", "one").await;
    assert_eq!(r1, r0 + 1, "a commit takes the next revision");
    let r2 = put(&*s, "/a/2", "two").await;
    assert_eq!(r2, r1 + 1, "revisions increase by one per transaction");
    put(&*s, "/ab", "not under /a/").await;
    put(&*s, "/a", "not under /a/ either").await;
    let r5 = put(&*s, "/a/0", "zero").await;
    assert_eq!(s.current_revision().await.unwrap(), r5);

    let kv = s.get("/a/1").await.unwrap().expect("present");
    assert_eq!(
        (
            kv.key.as_str(),
            &kv.value[..],
            kv.create_revision,
            kv.mod_revision
        ),
        ("/a/1", &b"one"[..], r1, r1)
    );
    assert!(s.get("/a/missing").await.unwrap().is_none());
    assert!(
        s.get("/a/").await.unwrap().is_none(),
        "a prefix is not a key"
    );

    let (kvs, rev) = s.range("/a/").await.unwrap();
    assert_eq!(
        kvs.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(),
        vec!["/a/0", "/a/1", "/a/2"],
        "sorted by key, only keys under the prefix"
    );
    assert_eq!(kvs[0].value, b"zero");
    assert_eq!(rev, r5, "range reports the revision it read at");
    let (none, _) = s.range("/nothing/").await.unwrap();
    assert!(none.is_empty());
}

/// One transaction is one revision for all its writes; create_revision survives
/// updates and restarts after delete and recreate.
pub async fn one_txn_one_revision(h: &dyn Harness) {
    let s = h.open().await;
    let rev = committed(
        &*s,
        Txn::new()
            .put("/t/x", "1")
            .put("/t/y", "2")
            .delete("/t/none"),
    )
    .await;
    let (kvs, at) = s.range("/t/").await.unwrap();
    assert_eq!(kvs.len(), 2);
    assert!(
        kvs.iter()
            .all(|k| k.mod_revision == rev && k.create_revision == rev),
        "all writes of a transaction share its revision: {kvs:?}"
    );
    assert_eq!(at, rev);

    let r2 = put(&*s, "/t/x", "1b").await;
    assert_eq!(r2, rev + 1);
    let kv = s.get("/t/x").await.unwrap().unwrap();
    assert_eq!(
        (&kv.value[..], kv.create_revision, kv.mod_revision),
        (&b"1b"[..], rev, r2),
        "an update keeps create_revision"
    );

    let r3 = committed(&*s, Txn::new().delete("/t/x")).await;
    assert!(r3 > r2);
    assert!(s.get("/t/x").await.unwrap().is_none());
    let r4 = put(&*s, "/t/x", "again").await;
    let kv = s.get("/t/x").await.unwrap().unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision),
        (r4, r4),
        "recreating restarts create_revision"
    );

    // A key written twice in one transaction ends with the last value.
    let r5 = committed(&*s, Txn::new().put("/t/z", "a").put("/t/z", "b")).await;
    let kv = s.get("/t/z").await.unwrap().unwrap();
    assert_eq!(
        (&kv.value[..], kv.create_revision, kv.mod_revision),
        (&b"b"[..], r5, r5)
    );
}

/// Absent, ModRevision and PrefixEmpty compares; a failed compare writes nothing
/// and reports its index.
pub async fn compares(h: &dyn Harness) {
    let s = h.open().await;
    let r = put(&*s, "/c/k", "v1").await;

    let out = s
        .txn(
            Txn::new()
                .when(Compare::Absent("/c/new".into()))
                .when(Compare::Absent("/c/k".into()))
                .put("/c/new", "x")
                .delete("/c/k"),
        )
        .await
        .unwrap();
    assert_eq!(
        out,
        TxnOutcome::CompareFailed(1),
        "index of the failing compare"
    );
    assert!(s.get("/c/new").await.unwrap().is_none(), "nothing written");
    assert!(s.get("/c/k").await.unwrap().is_some(), "nothing deleted");
    assert_eq!(
        s.current_revision().await.unwrap(),
        r,
        "a failed transaction takes no revision"
    );

    let both_fail = s
        .txn(
            Txn::new()
                .when(Compare::Absent("/c/k".into()))
                .when(Compare::ModRevision("/c/k".into(), r + 100))
                .put("/c/k", "x"),
        )
        .await
        .unwrap();
    assert_eq!(
        both_fail,
        TxnOutcome::CompareFailed(0),
        "the first failing compare"
    );

    let created = committed(
        &*s,
        Txn::new()
            .when(Compare::Absent("/c/new".into()))
            .when(Compare::ModRevision("/c/k".into(), r))
            .put("/c/new", "x"),
    )
    .await;
    assert_eq!(created, r + 1);

    let r2 = committed(
        &*s,
        Txn::new()
            .when(Compare::ModRevision("/c/k".into(), r))
            .put("/c/k", "v2"),
    )
    .await;
    let stale = s
        .txn(
            Txn::new()
                .when(Compare::ModRevision("/c/k".into(), r))
                .put("/c/k", "v3"),
        )
        .await
        .unwrap();
    assert_eq!(stale, TxnOutcome::CompareFailed(0), "stale mod revision");
    let kv = s.get("/c/k").await.unwrap().unwrap();
    assert_eq!((&kv.value[..], kv.mod_revision), (&b"v2"[..], r2));

    let missing = s
        .txn(
            Txn::new()
                .when(Compare::ModRevision("/c/none".into(), r))
                .put("/c/none", "x"),
        )
        .await
        .unwrap();
    assert_eq!(
        missing,
        TxnOutcome::CompareFailed(0),
        "ModRevision of a missing key"
    );
    assert!(s.get("/c/none").await.unwrap().is_none());

    // PrefixEmpty sees keys under the prefix only.
    put(&*s, "/c/kids/1", "").await;
    put(&*s, "/c/kidsX", "").await;
    put(&*s, "/c/kid", "").await;
    let busy = s
        .txn(
            Txn::new()
                .when(Compare::PrefixEmpty("/c/kids/".into()))
                .put("/c/p", "x"),
        )
        .await
        .unwrap();
    assert_eq!(busy, TxnOutcome::CompareFailed(0));
    assert!(s.get("/c/p").await.unwrap().is_none());
    committed(&*s, Txn::new().delete("/c/kids/1")).await;
    committed(
        &*s,
        Txn::new()
            .when(Compare::PrefixEmpty("/c/kids/".into()))
            .put("/c/p", "x"),
    )
    .await;
}

/// Deleting a missing key commits, changes nothing and produces no event.
pub async fn delete_of_missing_key(h: &dyn Harness) {
    let s = h.open().await;
    let r1 = put(&*s, "/d/keep", "v").await;
    let mut w = s.watch("/d/", r1 + 1).await.unwrap();
    let r2 = committed(&*s, Txn::new().delete("/d/missing")).await;
    // Whether a transaction that changes nothing takes a revision is up to the store
    // (etcd does not); it must not go backwards.
    assert!(r2 >= r1);
    assert!(s.get("/d/missing").await.unwrap().is_none());
    let guarded = committed(
        &*s,
        Txn::new()
            .when(Compare::Absent("/d/missing".into()))
            .delete("/d/missing"),
    )
    .await;
    assert!(guarded >= r2);
    let r3 = put(&*s, "/d/after", "v").await;
    let e = next_event(&mut w).await;
    assert_eq!(
        (e.kv.key.as_str(), e.revision()),
        ("/d/after", r3),
        "no event for deleting nothing"
    );
    assert_eq!(s.range("/d/").await.unwrap().0.len(), 2);
}

/// 64 tasks race to create one key: exactly one wins.
pub async fn concurrent_absent_has_one_winner(h: &dyn Harness) {
    let s = h.open().await;
    let races = (0..64).map(|i| {
        let s = s.clone();
        tokio::spawn(async move {
            let t = Txn::new()
                .when(Compare::Absent("/race/k".into()))
                .put("/race/k", format!("{i}"));
            (i, s.txn(t).await.unwrap())
        })
    });
    let outcomes: Vec<(usize, TxnOutcome)> = join_all(races)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let winners: Vec<_> = outcomes
        .iter()
        .filter_map(|(i, o)| match o {
            TxnOutcome::Committed(r) => Some((*i, *r)),
            TxnOutcome::CompareFailed(_) => None,
        })
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one compare-absent wins: {outcomes:?}"
    );
    let kv = s.get("/race/k").await.unwrap().unwrap();
    assert_eq!(
        kv.value,
        winners[0].0.to_string().into_bytes(),
        "the winner's value"
    );
    assert_eq!(kv.mod_revision, winners[0].1);
}

/// 32 tasks increment one counter by read-modify-write with ModRevision retries:
/// no increment is lost.
pub async fn concurrent_read_modify_write_is_exact(h: &dyn Harness) {
    const TASKS: u64 = 32;
    const EACH: u64 = 4;
    let s = h.open().await;
    put(&*s, "/ctr", "0").await;
    let workers = (0..TASKS).map(|_| {
        let s = s.clone();
        tokio::spawn(async move {
            for _ in 0..EACH {
                loop {
                    let kv = s.get("/ctr").await.unwrap().unwrap();
                    let n: u64 = String::from_utf8(kv.value).unwrap().parse().unwrap();
                    let t = Txn::new()
                        .when(Compare::ModRevision("/ctr".into(), kv.mod_revision))
                        .put("/ctr", format!("{}", n + 1));
                    if let TxnOutcome::Committed(_) = s.txn(t).await.unwrap() {
                        break;
                    }
                }
            }
        })
    });
    for w in join_all(workers).await {
        w.unwrap();
    }
    let kv = s.get("/ctr").await.unwrap().unwrap();
    assert_eq!(kv.value, (TASKS * EACH).to_string().into_bytes());
}

/// A range is one snapshot, and its revision is where a watch picks up with no gap:
/// the list-then-watch pattern of every cache built on the store.
pub async fn range_is_a_consistent_snapshot(h: &dyn Harness) {
    const KEYS: usize = 8;
    const ROUNDS: u64 = 60;
    let s = h.open().await;
    put(&*s, "/snapX", "outside").await;
    // Each round rewrites every key with the round number, in one transaction.
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            for round in 1..=ROUNDS {
                let mut t = Txn::new();
                for k in 0..KEYS {
                    t = t.put(format!("/snap/{k}"), round.to_string());
                }
                committed(&*s, t).await;
            }
        })
    };
    let mut checks = 0;
    loop {
        let (kvs, rev) = s.range("/snap/").await.unwrap();
        let done = writer.is_finished();
        if kvs.is_empty() {
            tokio::task::yield_now().await;
            continue;
        }
        assert_eq!(kvs.len(), KEYS, "only keys under the prefix, all of them");
        let round = kvs[0].value.clone();
        assert!(
            kvs.iter()
                .all(|k| k.value == round && k.mod_revision == kvs[0].mod_revision),
            "a range never sees half a transaction: {kvs:?}"
        );
        assert!(kvs[0].mod_revision <= rev);
        let round: u64 = String::from_utf8(round).unwrap().parse().unwrap();
        if round < ROUNDS {
            // The first change after the snapshot's revision is the next round.
            let mut w = s.watch("/snap/", rev + 1).await.unwrap();
            let e = next_event(&mut w).await;
            assert_eq!(e.kv.value, (round + 1).to_string().into_bytes());
            assert!(e.revision() > rev);
        }
        checks += 1;
        if done && round == ROUNDS {
            assert_eq!(rev, s.current_revision().await.unwrap());
            break;
        }
    }
    writer.await.unwrap();
    assert!(checks > 0);
}

/// Live events: in order, with kinds, values and revisions, one per write, only
/// under the prefix.
pub async fn watch_live_and_prefix(h: &dyn Harness) {
    let s = h.open().await;
    let mut w = s.watch("/w/", 0).await.unwrap();
    let mut all = s.watch("/", 0).await.unwrap();
    let r1 = put(&*s, "/w/a", "1").await;
    let rx = put(&*s, "/wx", "x").await;
    let r3 = committed(&*s, Txn::new().put("/w/b", "2").put("/w/c", "3")).await;
    committed(&*s, Txn::new().delete("/w/missing")).await;
    let r5 = put(&*s, "/w/a", "1b").await;
    let r6 = committed(&*s, Txn::new().delete("/w/a")).await;

    let got = events(&mut w, 5).await;
    let got: Vec<_> = got.iter().map(summary).collect();
    assert_eq!(
        got,
        vec![
            (EventKind::Put, "/w/a", &b"1"[..], r1),
            (EventKind::Put, "/w/b", &b"2"[..], r3),
            (EventKind::Put, "/w/c", &b"3"[..], r3),
            (EventKind::Put, "/w/a", &b"1b"[..], r5),
            (EventKind::Delete, "/w/a", &b""[..], r6),
        ]
    );
    assert_quiet(&mut w).await;

    let everything = events(&mut all, 6).await;
    assert_eq!(everything[1].kv.key, "/wx");
    assert_eq!(everything[1].revision(), rx);
    let update = &everything[4];
    assert_eq!(
        (update.kv.create_revision, update.kv.mod_revision),
        (r1, r5),
        "events carry create_revision"
    );
}

/// `from == 0` is "from now"; a start beyond the current revision waits for it.
pub async fn watch_from_now_and_from_the_future(h: &dyn Harness) {
    let s = h.open().await;
    let r1 = put(&*s, "/f/0", "v").await;
    let mut now = s.watch("/f/", 0).await.unwrap();
    let mut future = s.watch("/f/", r1 + 3).await.unwrap();
    let mut past = s.watch("/f/", r1).await.unwrap();
    let mut revs = vec![r1];
    for i in 1..=4 {
        revs.push(put(&*s, &format!("/f/{i}"), "v").await);
    }
    let seen = |es: Vec<Event>| es.iter().map(Event::revision).collect::<Vec<_>>();
    assert_eq!(seen(events(&mut now, 4).await), revs[1..].to_vec());
    assert_eq!(seen(events(&mut future, 2).await), vec![r1 + 3, r1 + 4]);
    assert_eq!(seen(events(&mut past, 5).await), revs);
    assert_quiet(&mut future).await;
}

/// Resuming from a revision replays exactly from there, then follows live changes,
/// with no gap and no duplicate while writers keep going.
pub async fn watch_resumes_from_revision(h: &dyn Harness) {
    let s = h.open().await;
    let mut written = Vec::new();
    for i in 0..100 {
        // Every tenth write goes outside the watched prefix.
        let key = if i % 10 == 5 {
            format!("/rx/{i}")
        } else {
            format!("/r/{i}")
        };
        written.push((put(&*s, &key, "v").await, key));
    }
    let from = written[39].0;
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            for i in 100..150 {
                put(&*s, &format!("/r/{i}"), "v").await;
            }
        })
    };
    let mut w = s.watch("/r/", from).await.unwrap();
    let history: Vec<(Revision, String)> = written[39..]
        .iter()
        .filter(|(_, k)| k.starts_with("/r/"))
        .cloned()
        .collect();
    let got = events(&mut w, history.len() + 50).await;
    writer.await.unwrap();

    let replayed: Vec<(Revision, String)> = got[..history.len()]
        .iter()
        .map(|e| (e.revision(), e.kv.key.clone()))
        .collect();
    assert_eq!(
        replayed, history,
        "history replayed exactly from the revision"
    );
    let live: Vec<&str> = got[history.len()..]
        .iter()
        .map(|e| e.kv.key.as_str())
        .collect();
    let expected: Vec<String> = (100..150).map(|i| format!("/r/{i}")).collect();
    assert_eq!(live, expected, "then every later change, in order");
    assert!(
        got.windows(2).all(|p| p[1].revision() > p[0].revision()),
        "strictly increasing revisions: no duplicate"
    );
    assert_quiet(&mut w).await;
}

/// A watcher that does not read while thousands of changes commit still gets every
/// one of them, in order, exactly once. A store may instead end the stream with
/// [`StoreError::Lagged`]; resuming from its revision must then fill the gap exactly.
pub async fn slow_watcher_misses_nothing(h: &dyn Harness) {
    const WRITERS: u64 = 16;
    const EACH: u64 = 200;
    let s = h.open().await;
    let start = s.current_revision().await.unwrap();
    let mut w = s.watch("/slow/", 0).await.unwrap();
    let writers: Vec<_> = (0..WRITERS)
        .map(|n| {
            let s = s.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    put(&*s, &format!("/slow/{n}/{i}"), "v").await;
                }
            })
        })
        .collect();
    // Start reading only once most of it is written, while writers still run.
    let half = start + WRITERS * EACH * 3 / 4;
    while s.current_revision().await.unwrap() < half {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let total = (WRITERS * EACH) as usize;
    let mut got: Vec<Event> = Vec::with_capacity(total);
    let mut resumes = 0;
    while got.len() < total {
        match tokio::time::timeout(WAIT, w.next()).await {
            Ok(Some(Ok(e))) => got.push(e),
            Ok(Some(Err(StoreError::Lagged { resume_from }))) => {
                let last = got.last().map_or(start, Event::revision);
                assert!(
                    resume_from > last,
                    "resume point is past what was delivered"
                );
                resumes += 1;
                assert!(resumes < 100, "keeps lagging");
                w = s.watch("/slow/", resume_from).await.unwrap();
            }
            other => panic!("after {} events: {other:?}", got.len()),
        }
    }
    for t in writers {
        t.await.unwrap();
    }
    let revs: Vec<Revision> = got.iter().map(Event::revision).collect();
    let expected: Vec<Revision> = (start + 1..=start + total as u64).collect();
    assert!(revs == expected, "every revision exactly once, in order");
    let keys: HashSet<&str> = got.iter().map(|e| e.kv.key.as_str()).collect();
    assert_eq!(keys.len(), total);
}

/// Data, revision and history survive dropping every handle and reopening; new
/// writes continue above the old revision.
pub async fn reopen_after_drop(h: &dyn Harness) {
    let (r1, r3, cur) = {
        let s = h.open().await;
        let r1 = put(&*s, "/keep/1", "v1").await;
        put(&*s, "/keep/2", "v2").await;
        let r3 = committed(&*s, Txn::new().delete("/keep/2").put("/keep/3", "v3")).await;
        (r1, r3, s.current_revision().await.unwrap())
    };
    let s = h.open().await;
    assert_eq!(
        s.current_revision().await.unwrap(),
        cur,
        "revision survives a reopen"
    );
    let kv = s.get("/keep/1").await.unwrap().unwrap();
    assert_eq!(
        (&kv.value[..], kv.create_revision, kv.mod_revision),
        (&b"v1"[..], r1, r1)
    );
    let (kvs, rev) = s.range("/keep/").await.unwrap();
    assert_eq!(
        kvs.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(),
        vec!["/keep/1", "/keep/3"]
    );
    assert_eq!(rev, cur);

    let mut w = s.watch("/keep/", r1).await.unwrap();
    let replay: Vec<_> = events(&mut w, 4).await;
    let replay: Vec<_> = replay.iter().map(summary).collect();
    assert_eq!(
        replay,
        vec![
            (EventKind::Put, "/keep/1", &b"v1"[..], r1),
            (EventKind::Put, "/keep/2", &b"v2"[..], r1 + 1),
            (EventKind::Delete, "/keep/2", &b""[..], r3),
            (EventKind::Put, "/keep/3", &b"v3"[..], r3),
        ]
    );
    let r4 = put(&*s, "/keep/4", "v").await;
    assert_eq!(r4, cur + 1, "new writes continue above the old revision");
    assert_eq!(next_event(&mut w).await.revision(), r4);
}

/// Watching from a revision whose history was compacted fails with `Compacted`.
pub async fn compacted_history_is_reported(h: &dyn Harness) {
    const RETENTION: u64 = 10;
    let s = h.open_with_retention(RETENTION).await;
    let first = put(&*s, "/old/first", "v").await;
    // Concurrent writers, so a group-committing store gets through this quickly.
    let writers = (0..8).map(|n| {
        let s = s.clone();
        tokio::spawn(async move {
            for i in 0..(RETENTION + 100) / 8 + 1 {
                put(&*s, &format!("/old/{n}/{}", i % 3), "v").await;
            }
        })
    });
    for w in join_all(writers).await {
        w.unwrap();
    }
    match s.watch("/old/", first).await {
        Err(StoreError::Compacted { requested, oldest }) => {
            assert_eq!(requested, first);
            assert!(oldest > first);
        }
        Ok(_) => panic!("watching from a compacted revision must fail"),
        Err(e) => panic!("unexpected error {e}"),
    }
    // The latest revisions are still there, in full.
    let recent = s.current_revision().await.unwrap() - 2;
    let mut w = s.watch("/old/", recent).await.unwrap();
    let got = events(&mut w, 3).await;
    assert_eq!(
        got.iter().map(Event::revision).collect::<Vec<_>>(),
        vec![recent, recent + 1, recent + 2]
    );
    // Data itself is never compacted.
    assert_eq!(
        s.get("/old/first").await.unwrap().unwrap().mod_revision,
        first
    );
}
