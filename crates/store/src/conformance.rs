//! The store conformance suite, written once over the [`Store`] trait: every
//! implementation (embedded redb now, etcd later) runs exactly these cases.
//!
//! A [`Harness`] opens the store under test, and reopens it on the same data after
//! every handle was dropped. Use [`conformance_tests!`](crate::conformance_tests) to
//! expand one `#[tokio::test]` per case.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::{BoxFuture, join_all};

use crate::{Compare, Event, EventKind, Store, StoreError, Txn, TxnOutcome};

pub trait Harness: Send + Sync {
    /// Opens (or reopens) the store on this harness's data.
    fn open(&self) -> BoxFuture<'_, Arc<dyn Store>>;
    /// Like `open`, keeping only about `revisions` revisions of history (compaction case).
    fn open_with_retention(&self, revisions: u64) -> BoxFuture<'_, Arc<dyn Store>>;
}

async fn put(s: &dyn Store, k: &str, v: &str) -> u64 {
    match s.txn(Txn::new().put(k, v)).await.expect("txn") {
        TxnOutcome::Committed(r) => r,
        other => panic!("unconditional put failed: {other:?}"),
    }
}

async fn next_event(w: &mut crate::WatchStream) -> Event {
    match tokio::time::timeout(Duration::from_secs(5), w.next()).await {
        Ok(Some(Ok(e))) => e,
        other => panic!("expected an event, got {other:?}"),
    }
}

pub async fn put_get_range(h: &dyn Harness) {
    let s = h.open().await;
    let r0 = s.current_revision().await.unwrap();
    let r1 = put(&*s, "/a/1", "one").await;
    assert!(r1 > r0);
    let r2 = put(&*s, "/a/2", "two").await;
    assert_eq!(r2, r1 + 1, "revisions increase by one per transaction");
    put(&*s, "/ab", "not under /a/").await;
    let kv = s.get("/a/1").await.unwrap().expect("present");
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision, kv.mod_revision),
        (&b"one"[..], r1, r1)
    );
    assert!(s.get("/a/missing").await.unwrap().is_none());
    let (kvs, rev) = s.range("/a/").await.unwrap();
    assert_eq!(
        kvs.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(),
        vec!["/a/1", "/a/2"]
    );
    assert_eq!(rev, s.current_revision().await.unwrap());
}

pub async fn one_txn_one_revision(h: &dyn Harness) {
    let s = h.open().await;
    let out = s
        .txn(
            Txn::new()
                .put("/t/x", "1")
                .put("/t/y", "2")
                .delete("/t/none"),
        )
        .await
        .unwrap();
    let TxnOutcome::Committed(rev) = out else {
        panic!("{out:?}")
    };
    let (kvs, _) = s.range("/t/").await.unwrap();
    assert!(
        kvs.iter().all(|k| k.mod_revision == rev),
        "all writes of a transaction share its revision"
    );
    // Update keeps create_revision; delete + recreate resets it.
    let r2 = put(&*s, "/t/x", "1b").await;
    let kv = s.get("/t/x").await.unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision), (rev, r2));
    s.txn(Txn::new().delete("/t/x")).await.unwrap();
    let r4 = put(&*s, "/t/x", "again").await;
    assert_eq!(s.get("/t/x").await.unwrap().unwrap().create_revision, r4);
}

pub async fn compares(h: &dyn Harness) {
    let s = h.open().await;
    let r = put(&*s, "/c/k", "v1").await;
    // Absent fails on an existing key, and nothing of the transaction is written.
    let out = s
        .txn(
            Txn::new()
                .when(Compare::Absent("/c/new".into()))
                .when(Compare::Absent("/c/k".into()))
                .put("/c/new", "x"),
        )
        .await;
    assert_eq!(out.unwrap(), TxnOutcome::CompareFailed(1));
    assert!(s.get("/c/new").await.unwrap().is_none());
    // ModRevision: right revision commits, stale one fails.
    let ok = s
        .txn(
            Txn::new()
                .when(Compare::ModRevision("/c/k".into(), r))
                .put("/c/k", "v2"),
        )
        .await
        .unwrap();
    assert!(matches!(ok, TxnOutcome::Committed(_)));
    let stale = s
        .txn(
            Txn::new()
                .when(Compare::ModRevision("/c/k".into(), r))
                .put("/c/k", "v3"),
        )
        .await
        .unwrap();
    assert_eq!(stale, TxnOutcome::CompareFailed(0));
    assert_eq!(s.get("/c/k").await.unwrap().unwrap().value, b"v2");
    let missing = s
        .txn(
            Txn::new()
                .when(Compare::ModRevision("/c/none".into(), r))
                .put("/c/none", "x"),
        )
        .await
        .unwrap();
    assert_eq!(missing, TxnOutcome::CompareFailed(0));
    // PrefixEmpty sees keys under the prefix only.
    put(&*s, "/c/kids/1", "").await;
    put(&*s, "/c/kidsX", "").await;
    let busy = s
        .txn(
            Txn::new()
                .when(Compare::PrefixEmpty("/c/kids/".into()))
                .put("/c/p", "x"),
        )
        .await
        .unwrap();
    assert_eq!(busy, TxnOutcome::CompareFailed(0));
    s.txn(Txn::new().delete("/c/kids/1")).await.unwrap();
    let free = s
        .txn(
            Txn::new()
                .when(Compare::PrefixEmpty("/c/kids/".into()))
                .put("/c/p", "x"),
        )
        .await
        .unwrap();
    assert!(matches!(free, TxnOutcome::Committed(_)));
}

pub async fn concurrent_absent_has_one_winner(h: &dyn Harness) {
    let s = h.open().await;
    let races = (0..64).map(|i| {
        let s = s.clone();
        tokio::spawn(async move {
            s.txn(
                Txn::new()
                    .when(Compare::Absent("/race/k".into()))
                    .put("/race/k", format!("{i}")),
            )
            .await
            .unwrap()
        })
    });
    let outcomes: Vec<TxnOutcome> = join_all(races)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let winners = outcomes
        .iter()
        .filter(|o| matches!(o, TxnOutcome::Committed(_)))
        .count();
    assert_eq!(winners, 1, "exactly one compare-absent wins");
}

pub async fn concurrent_read_modify_write_is_exact(h: &dyn Harness) {
    let s = h.open().await;
    put(&*s, "/ctr", "0").await;
    let workers = (0..32).map(|_| {
        let s = s.clone();
        tokio::spawn(async move {
            loop {
                let kv = s.get("/ctr").await.unwrap().unwrap();
                let n: u64 = String::from_utf8(kv.value).unwrap().parse().unwrap();
                let t = Txn::new()
                    .when(Compare::ModRevision("/ctr".into(), kv.mod_revision))
                    .put("/ctr", format!("{}", n + 1));
                if let TxnOutcome::Committed(_) = s.txn(t).await.unwrap() {
                    return;
                }
            }
        })
    });
    join_all(workers).await;
    assert_eq!(s.get("/ctr").await.unwrap().unwrap().value, b"32");
}

pub async fn watch_live_and_prefix(h: &dyn Harness) {
    let s = h.open().await;
    let mut w = s.watch("/w/", 0).await.unwrap();
    let r1 = put(&*s, "/w/a", "1").await;
    put(&*s, "/other", "x").await;
    let r3 = s.txn(Txn::new().delete("/w/a")).await.unwrap();
    let e1 = next_event(&mut w).await;
    assert_eq!(
        (&e1.kind, e1.kv.key.as_str(), e1.revision()),
        (&EventKind::Put, "/w/a", r1)
    );
    let e2 = next_event(&mut w).await;
    assert_eq!(e2.kind, EventKind::Delete);
    assert_eq!(TxnOutcome::Committed(e2.revision()), r3);
}

pub async fn watch_resumes_from_revision(h: &dyn Harness) {
    let s = h.open().await;
    let mut revs = Vec::new();
    for i in 0..100 {
        revs.push(put(&*s, &format!("/r/{i}"), "v").await);
    }
    let from = revs[39];
    // Writers keep going while the watcher catches up.
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            for i in 100..150 {
                put(&*s, &format!("/r/{i}"), "v").await;
            }
        })
    };
    let mut w = s.watch("/r/", from).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 110 {
        got.push(next_event(&mut w).await);
    }
    writer.await.unwrap();
    let seen: Vec<u64> = got.iter().map(Event::revision).collect();
    assert_eq!(seen[0], from, "starts exactly at the requested revision");
    assert!(
        seen.windows(2).all(|p| p[1] > p[0]),
        "in order, without duplicates"
    );
    let keys: HashSet<&str> = got.iter().map(|e| e.kv.key.as_str()).collect();
    assert_eq!(keys.len(), 110, "no gap: /r/39 .. /r/149");
}

pub async fn reopen_after_drop(h: &dyn Harness) {
    let (r, cur) = {
        let s = h.open().await;
        let r = put(&*s, "/keep/1", "v").await;
        put(&*s, "/keep/2", "v").await;
        (r, s.current_revision().await.unwrap())
    };
    let s = h.open().await;
    assert_eq!(
        s.current_revision().await.unwrap(),
        cur,
        "revision survives a reopen"
    );
    assert_eq!(s.get("/keep/1").await.unwrap().unwrap().mod_revision, r);
    let mut w = s.watch("/keep/", r).await.unwrap();
    assert_eq!(next_event(&mut w).await.kv.key, "/keep/1");
    assert_eq!(next_event(&mut w).await.kv.key, "/keep/2");
    assert!(
        put(&*s, "/keep/3", "v").await > cur,
        "new writes continue above the old revision"
    );
}

pub async fn compacted_history_is_reported(h: &dyn Harness) {
    let s = h.open_with_retention(10).await;
    let first = put(&*s, "/old/0", "v").await;
    for i in 1..2_100 {
        put(&*s, &format!("/old/{}", i % 7), "v").await;
    }
    match s.watch("/old/", first).await {
        Err(StoreError::Compacted { requested, oldest }) => assert!(requested < oldest),
        Ok(_) => panic!("watching from a compacted revision must fail"),
        Err(e) => panic!("unexpected error {e}"),
    }
    let recent = s.current_revision().await.unwrap();
    assert!(
        s.watch("/old/", recent).await.is_ok(),
        "recent history is still there"
    );
}

/// Expands one `#[tokio::test]` per conformance case for a harness expression.
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@cases $harness;
            put_get_range, one_txn_one_revision, compares, concurrent_absent_has_one_winner,
            concurrent_read_modify_write_is_exact, watch_live_and_prefix, watch_resumes_from_revision,
            reopen_after_drop, compacted_history_is_reported);
    };
    (@cases $harness:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let h = $harness;
                $crate::conformance::$case(&h).await;
            }
        )*
    };
}
