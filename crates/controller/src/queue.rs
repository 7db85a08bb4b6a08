//! A keyed work queue, as controllers use them: a key waits at most once, one worker at a
//! time holds a key (a key added while it is worked on runs again afterwards, so no
//! change is lost and no two reconciles of one object overlap), failed keys come back
//! after an exponential backoff, and urgent keys (pods waiting for a port) go first.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

struct State<K> {
    urgent: VecDeque<K>,
    normal: VecDeque<K>,
    /// In `urgent` or `normal`.
    queued: HashSet<K>,
    /// Held by a worker.
    active: HashSet<K>,
    /// Added while active: runs again when done.
    again: HashSet<K>,
    delayed: BTreeMap<(Instant, u64), K>,
    seq: u64,
    failures: HashMap<K, u32>,
    closed: bool,
}

pub struct Queue<K> {
    state: Mutex<State<K>>,
    notify: Notify,
    urgent: fn(&K) -> bool,
}

impl<K: Eq + Hash + Clone> Queue<K> {
    /// `urgent` tells which keys go before the others.
    pub fn new(urgent: fn(&K) -> bool) -> Queue<K> {
        Queue {
            state: Mutex::new(State {
                urgent: VecDeque::new(),
                normal: VecDeque::new(),
                queued: HashSet::new(),
                active: HashSet::new(),
                again: HashSet::new(),
                delayed: BTreeMap::new(),
                seq: 0,
                failures: HashMap::new(),
                closed: false,
            }),
            notify: Notify::new(),
            urgent,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        // A worker that panicked while holding the lock left consistent data (every
        // update is a single collection operation): keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn enqueue(&self, s: &mut State<K>, k: K) {
        if s.closed || s.queued.contains(&k) {
            return;
        }
        if s.active.contains(&k) {
            s.again.insert(k);
            return;
        }
        s.queued.insert(k.clone());
        if (self.urgent)(&k) {
            s.urgent.push_back(k);
        } else {
            s.normal.push_back(k);
        }
        self.notify.notify_one();
    }

    pub fn add(&self, k: K) {
        let mut s = self.lock();
        self.enqueue(&mut s, k);
    }

    pub fn add_after(&self, k: K, after: Duration) {
        if after.is_zero() {
            return self.add(k);
        }
        let mut s = self.lock();
        if s.closed {
            return;
        }
        s.seq += 1;
        let at = (Instant::now() + after, s.seq);
        s.delayed.insert(at, k);
        // A worker may be sleeping until a later deadline.
        self.notify.notify_one();
    }

    /// The next key to work on; `None` once the queue is closed.
    pub async fn next(&self) -> Option<K> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wake = {
                let mut s = self.lock();
                if s.closed {
                    return None;
                }
                let now = Instant::now();
                while let Some(entry) = s.delayed.first_entry() {
                    if entry.key().0 > now {
                        break;
                    }
                    let k = entry.remove();
                    self.enqueue(&mut s, k);
                }
                let k = s.urgent.pop_front().or_else(|| s.normal.pop_front());
                if let Some(k) = k {
                    s.queued.remove(&k);
                    s.active.insert(k.clone());
                    // Another key may be waiting for another worker.
                    if !s.urgent.is_empty() || !s.normal.is_empty() {
                        self.notify.notify_one();
                    }
                    return Some(k);
                }
                s.delayed.keys().next().map(|(at, _)| *at)
            };
            match wake {
                Some(at) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// The work on `k` is over, successfully: its backoff is reset.
    pub fn done(&self, k: &K) {
        let mut s = self.lock();
        s.failures.remove(k);
        self.finish(&mut s, k);
    }

    /// The work on `k` failed: it comes back after its backoff (returned).
    pub fn failed(&self, k: &K) -> Duration {
        let mut s = self.lock();
        let n = s.failures.entry(k.clone()).or_insert(0);
        let delay = backoff(*n);
        *n = n.saturating_add(1);
        self.finish(&mut s, k);
        drop(s);
        self.add_after(k.clone(), delay);
        delay
    }

    fn finish(&self, s: &mut State<K>, k: &K) {
        s.active.remove(k);
        if s.again.remove(k) {
            self.enqueue(s, k.clone());
        }
    }

    /// Wakes every worker with `None` from now on.
    pub fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        s.urgent.clear();
        s.normal.clear();
        s.queued.clear();
        s.delayed.clear();
        drop(s);
        self.notify.notify_waiters();
        // A worker between `enable` and its wait gets this permit.
        self.notify.notify_one();
    }

    /// Keys waiting now (not the delayed ones).
    pub fn len(&self) -> usize {
        let s = self.lock();
        s.urgent.len() + s.normal.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// 100 ms, 200 ms, 400 ms... up to 30 s.
pub fn backoff(failures: u32) -> Duration {
    BACKOFF_BASE
        .checked_mul(1u32.checked_shl(failures.min(20)).unwrap_or(u32::MAX))
        .unwrap_or(BACKOFF_MAX)
        .min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn q() -> Queue<String> {
        Queue::new(|k: &String| k.starts_with("pod"))
    }

    async fn next(q: &Queue<String>) -> String {
        tokio::time::timeout(Duration::from_secs(5), q.next())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("no key"))
    }

    #[tokio::test]
    async fn dedupes_and_orders_urgent_first() {
        let q = q();
        q.add("ns-a".into());
        q.add("pod-1".into());
        q.add("ns-a".into());
        q.add("pod-2".into());
        assert_eq!(q.len(), 3);
        assert_eq!(next(&q).await, "pod-1");
        assert_eq!(next(&q).await, "pod-2");
        assert_eq!(next(&q).await, "ns-a");
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn a_key_is_held_by_one_worker_and_rerun_when_changed() {
        let q = q();
        q.add("pod-1".into());
        let k = next(&q).await;
        // Changed while worked on: not handed out twice at once...
        q.add("pod-1".into());
        assert!(q.is_empty());
        let again = tokio::time::timeout(Duration::from_millis(50), q.next()).await;
        assert!(again.is_err(), "must wait for done");
        // ...but once done, it runs again.
        q.done(&k);
        assert_eq!(next(&q).await, "pod-1");
        q.done(&k);
        // Positive control for the timeout above: a free key is handed out at once.
        q.add("pod-2".into());
        assert_eq!(next(&q).await, "pod-2");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially() {
        let q = q();
        q.add("ns".into());
        let k = next(&q).await;
        assert_eq!(q.failed(&k), Duration::from_millis(100));
        let t0 = Instant::now();
        let k = next(&q).await;
        assert!(t0.elapsed() >= Duration::from_millis(100));
        assert_eq!(q.failed(&k), Duration::from_millis(200));
        let k = next(&q).await;
        q.done(&k);
        q.add("ns".into());
        let k = next(&q).await;
        assert_eq!(q.failed(&k), Duration::from_millis(100), "reset by success");
        assert_eq!(backoff(3), Duration::from_millis(800));
        assert_eq!(backoff(40), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_keys_wake_a_sleeping_worker() {
        let q = Arc::new(q());
        let w = {
            let q = q.clone();
            tokio::spawn(async move { q.next().await })
        };
        tokio::task::yield_now().await;
        q.add_after("later".into(), Duration::from_secs(2));
        let t0 = Instant::now();
        let got = w.await.ok().flatten();
        assert_eq!(got.as_deref(), Some("later"));
        assert!(t0.elapsed() >= Duration::from_secs(2));
    }

    #[tokio::test]
    async fn many_workers_share_the_keys() {
        let q = Arc::new(q());
        let mut workers = Vec::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        for _ in 0..4 {
            let q = q.clone();
            let seen = seen.clone();
            workers.push(tokio::spawn(async move {
                while let Some(k) = q.next().await {
                    seen.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(k.clone());
                    q.done(&k);
                }
            }));
        }
        for i in 0..100 {
            q.add(format!("k{i}"));
        }
        for _ in 0..500 {
            if seen.lock().unwrap_or_else(|e| e.into_inner()).len() == 100 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        q.close();
        for w in workers {
            let _ = w.await;
        }
        let mut got = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 100);
    }
}
