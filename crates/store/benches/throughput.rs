//! Store throughput: `cargo bench -p kuryr-store` (a plain `main`, no timing assertions).
//!
//! Prints committed transactions per second for `Absent`-guarded puts of 1 KiB values,
//! sequentially and from 16 concurrent tasks, and the latency of point reads and of a
//! range over every key. `KURYR_BENCH_DIR` picks the directory of the store file (the
//! disk's fsync cost is most of what this measures); it defaults to the system temp dir.

use std::sync::Arc;
use std::time::Instant;

use kuryr_store::{Compare, EmbeddedOptions, EmbeddedStore, Store, Txn, TxnOutcome};

const VALUE: usize = 1024;

async fn create(s: &dyn Store, key: String) {
    let t = Txn::new()
        .when(Compare::Absent(key.clone()))
        .put(key, vec![b'x'; VALUE]);
    match s.txn(t).await {
        Ok(TxnOutcome::Committed(_)) => {}
        other => panic!("create failed: {other:?}"),
    }
}

async fn sequential(s: &Arc<dyn Store>, n: usize) {
    let t = Instant::now();
    for i in 0..n {
        create(&**s, format!("/seq/{i:08}")).await;
    }
    let dt = t.elapsed();
    println!(
        "sequential puts:     {n:>6} in {:>7.3} s = {:>8.0} txn/s ({:.3} ms each)",
        dt.as_secs_f64(),
        n as f64 / dt.as_secs_f64(),
        dt.as_secs_f64() * 1e3 / n as f64
    );
}

async fn concurrent(s: &Arc<dyn Store>, tasks: usize, per_task: usize) {
    let t = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|w| {
            let s = s.clone();
            tokio::spawn(async move {
                for i in 0..per_task {
                    create(&*s, format!("/con{tasks}/{w:02}/{i:08}")).await;
                }
            })
        })
        .collect();
    for h in handles {
        h.await.expect("task");
    }
    let dt = t.elapsed();
    let n = tasks * per_task;
    println!(
        "{tasks}-concurrent puts: {n:>6} in {:>7.3} s = {:>8.0} txn/s",
        dt.as_secs_f64(),
        n as f64 / dt.as_secs_f64()
    );
}

async fn reads(s: &Arc<dyn Store>, n: usize) {
    let t = Instant::now();
    for i in 0..n {
        let k = format!("/seq/{:08}", i % 2000);
        s.get(&k).await.expect("get").expect("present");
    }
    let dt = t.elapsed();
    println!(
        "point reads:         {n:>6} in {:>7.3} s = {:>8.1} us each",
        dt.as_secs_f64(),
        dt.as_secs_f64() * 1e6 / n as f64
    );
    let t = Instant::now();
    let (kvs, _) = s.range("/").await.expect("range");
    println!(
        "range over all keys: {:>6} in {:>7.3} s",
        kvs.len(),
        t.elapsed().as_secs_f64()
    );
}

/// Point-read latency while 16 tasks keep committing: reads must not wait for fsyncs.
async fn reads_during_writes(s: &Arc<dyn Store>, n: usize) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let (s, stop) = (s.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    create(&*s, format!("/mix/{w:02}/{i:08}")).await;
                    i += 1;
                }
            })
        })
        .collect();
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let k = format!("/seq/{:08}", i % 2000);
        let t = Instant::now();
        s.get(&k).await.expect("get").expect("present");
        lat.push(t.elapsed());
        if i % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    lat.sort();
    println!(
        "reads during writes: {n:>6}: p50 {:?} p99 {:?} max {:?}",
        lat[n / 2],
        lat[n * 99 / 100],
        lat[n - 1]
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let base = std::env::var_os("KURYR_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    rt.block_on(async {
        let store: Arc<dyn Store> = Arc::new(
            EmbeddedStore::open(EmbeddedOptions::new(dir.path().join("bench.redb"))).expect("open"),
        );
        sequential(&store, 2_000).await;
        concurrent(&store, 16, 1_000).await;
        concurrent(&store, 64, 250).await;
        reads(&store, 20_000).await;
        reads_during_writes(&store, 20_000).await;
    });
}
