//! The conformance suite against a real etcd: a three-member cluster on loopback,
//! started by the test from the etcd that `scripts/k8s-build.sh` builds from etcd's Go
//! module (or `KURYR_ETCD_BIN`), plus what only a cluster can be asked: losing quorum.
//!
//! Not part of a plain `cargo test` (the target has `test = false`); `scripts/test.sh`
//! runs it with `cargo test --features etcd --test etcd` once etcd is built.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use kuryr_store::conformance::Harness;
use kuryr_store::{EtcdOptions, EtcdStore, Store, StoreError, Txn, TxnOutcome};

fn etcd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KURYR_ETCD_BIN") {
        return p.into();
    }
    let cache = PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/kuryr");
    let found = std::fs::read_dir(&cache)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin/etcd"))
        .find(|p| p.exists());
    found.unwrap_or_else(|| {
        panic!(
            "no etcd: set KURYR_ETCD_BIN or build it with scripts/k8s-build.sh (looked in {})",
            cache.display()
        )
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A cluster of etcd members on loopback, in a temporary directory; every member is
/// killed when it is dropped, whatever the test did.
struct Cluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
}

struct Member {
    args: Vec<String>,
    client_url: String,
    child: Option<Child>,
}

impl Cluster {
    fn start(n: usize) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let token = format!("kuryr-test-{}", std::process::id());
        let members = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| {
                let client_url = format!("http://127.0.0.1:{client}");
                let peer_url = format!("http://127.0.0.1:{peer}");
                let args = vec![
                    format!("--name=m{i}"),
                    format!("--data-dir={}", dir.path().join(format!("m{i}")).display()),
                    format!("--listen-client-urls={client_url}"),
                    format!("--advertise-client-urls={client_url}"),
                    format!("--listen-peer-urls={peer_url}"),
                    format!("--initial-advertise-peer-urls={peer_url}"),
                    format!("--initial-cluster={}", initial.join(",")),
                    format!("--initial-cluster-token={token}"),
                    "--initial-cluster-state=new".into(),
                    // kuryr's bulk creates are large transactions.
                    "--max-txn-ops=20000".into(),
                    "--max-request-bytes=16777216".into(),
                    // A test cluster on one machine: no fsync, short elections.
                    "--unsafe-no-fsync".into(),
                    "--heartbeat-interval=50".into(),
                    "--election-timeout=500".into(),
                    "--log-level=error".into(),
                ];
                let mut m = Member {
                    args,
                    client_url,
                    child: None,
                };
                m.spawn(dir.path());
                m
            })
            .collect();
        Cluster { dir, members }
    }

    fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    fn restart(&mut self, i: usize) {
        let dir = self.dir.path().to_path_buf();
        self.members[i].spawn(&dir);
    }

    fn options(&self) -> EtcdOptions {
        let mut o = EtcdOptions::new(self.endpoints());
        o.request_timeout = Duration::from_secs(3);
        o
    }

    /// A store on the whole cluster, once the cluster answers.
    async fn store(&self, options: EtcdOptions) -> EtcdStore {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match EtcdStore::connect(options.clone()).await {
                Ok(s) => return s,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("waiting for etcd: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("etcd did not come up: {e}"),
            }
        }
    }
}

impl Member {
    fn spawn(&mut self, dir: &std::path::Path) {
        let log = std::fs::File::create(dir.join(format!("{}.log", &self.args[0][7..])))
            .expect("member log");
        let child = Command::new(etcd_bin())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }
}

struct OnEtcd(Cluster);

impl Harness for OnEtcd {
    fn open(&self) -> BoxFuture<'_, Arc<dyn Store>> {
        Box::pin(async move { Arc::new(self.0.store(self.0.options()).await) as Arc<dyn Store> })
    }
    fn open_with_retention(&self, revisions: u64) -> BoxFuture<'_, Arc<dyn Store>> {
        Box::pin(async move {
            let mut o = self.0.options();
            o.history_retention = revisions;
            Arc::new(self.0.store(o).await) as Arc<dyn Store>
        })
    }
}

/// The whole suite, in sequence (revisions are the cluster's, shared by the cases).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_on_a_three_member_cluster() {
    let h = OnEtcd(Cluster::start(3));
    kuryr_store::conformance::run_all(&h).await;
}

/// Two of three members gone: writes fail as `Unavailable` within the request
/// timeout (not a hang, not a silent loss), and succeed again by themselves once
/// one member is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_quorum_is_unavailable_and_passes() {
    let mut c = Cluster::start(3);
    let s = c.store(c.options()).await;
    let put = |k: &str| Txn::new().put(k.to_string(), "v");
    // Control: a healthy cluster commits.
    match s.txn(put("/q/before")).await {
        Ok(TxnOutcome::Committed(_)) => {}
        other => panic!("a healthy cluster must commit: {other:?}"),
    }
    c.kill(1);
    c.kill(2);
    let started = Instant::now();
    match s.txn(put("/q/during")).await {
        Err(StoreError::Unavailable(why)) => eprintln!("without quorum: {why}"),
        other => panic!("a write without quorum must be Unavailable, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the failure came after {:?}",
        started.elapsed()
    );
    assert!(matches!(s.check().await, Err(StoreError::Unavailable(_))));
    c.restart(2);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match s.txn(put("/q/after")).await {
            Ok(TxnOutcome::Committed(_)) => break,
            other if Instant::now() < deadline => {
                eprintln!("waiting for quorum: {other:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => panic!("quorum came back but writes still fail: {other:?}"),
        }
    }
    s.check().await.expect("ready again");
    assert!(s.get("/q/before").await.unwrap().is_some());
    assert!(s.get("/q/after").await.unwrap().is_some());
}
