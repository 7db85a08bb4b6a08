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

/// A CA and what etcd and its client need from it: a server certificate for 127.0.0.1
/// and a client certificate, all as PEM files.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn pki(dir: &std::path::Path) -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair,
    };
    let write = |name: &str, pem: String| {
        let p = dir.join(name);
        std::fs::write(&p, pem).expect("write pem");
        p
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "etcd test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("key")).expect("CA");
    let leaf = |name: &str, sans: Vec<String>, usage| {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(sans).expect("params");
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![usage];
        (
            p.signed_by(&key, &ca).expect("cert").pem(),
            key.serialize_pem(),
        )
    };
    let (sc, sk) = leaf(
        "etcd",
        vec!["127.0.0.1".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (cc, ck) = leaf("kuryr", vec![], ExtendedKeyUsagePurpose::ClientAuth);
    Pki {
        ca: write("ca.pem", ca.pem()),
        server_cert: write("server.pem", sc),
        server_key: write("server.key", sk),
        client_cert: write("client.pem", cc),
        client_key: write("client.key", ck),
    }
}

impl Cluster {
    fn start(n: usize) -> Cluster {
        Cluster::start_with(n, None)
    }

    /// `tls`: clients must speak TLS to the members and show a certificate of this CA.
    fn start_with(n: usize, tls: Option<&Pki>) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let scheme = if tls.is_some() { "https" } else { "http" };
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
                let client_url = format!("{scheme}://127.0.0.1:{client}");
                let peer_url = format!("http://127.0.0.1:{peer}");
                let mut args = vec![
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
                if let Some(t) = tls {
                    args.extend([
                        format!("--cert-file={}", t.server_cert.display()),
                        format!("--key-file={}", t.server_key.display()),
                        format!("--trusted-ca-file={}", t.ca.display()),
                        "--client-cert-auth".into(),
                    ]);
                }
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

/// etcd with client certificates (`--client-cert-auth`): kuryr connects with the CA and
/// its certificate, and cannot without its certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    let certs = tempfile::tempdir().expect("tempdir");
    let pki = pki(certs.path());
    let c = Cluster::start_with(1, Some(&pki));
    let mut o = c.options();
    o.cacert = Some(pki.ca.clone());
    o.cert = Some(pki.client_cert.clone());
    o.key = Some(pki.client_key.clone());
    let s = c.store(o.clone()).await;
    match s.txn(Txn::new().put("/tls/k", "v")).await {
        Ok(TxnOutcome::Committed(_)) => {}
        other => panic!("a write over TLS: {other:?}"),
    }
    // Without a client certificate the member refuses the connection.
    let mut anonymous = o;
    anonymous.cert = None;
    anonymous.key = None;
    assert!(
        EtcdStore::connect(anonymous).await.is_err(),
        "no client certificate, no store"
    );
}

/// etcd with authentication on: kuryr logs in as a user with its password; a wrong
/// password is an error at once (not something to wait for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password() {
    let c = Cluster::start(1);
    // Control: before authentication is on, anyone writes.
    let open = c.store(c.options()).await;
    open.txn(Txn::new().put("/auth/before", "v"))
        .await
        .expect("write without authentication");
    let mut admin = etcd_client::Client::connect(c.endpoints(), None)
        .await
        .expect("etcd client");
    admin
        .user_add("root", "root-pw", None)
        .await
        .expect("add root");
    admin
        .user_grant_role("root", "root")
        .await
        .expect("grant root");
    admin.auth_enable().await.expect("enable authentication");

    let mut o = c.options();
    o.user = Some(("root".into(), "root-pw".into()));
    let s = c.store(o.clone()).await;
    match s.txn(Txn::new().put("/auth/k", "v")).await {
        Ok(TxnOutcome::Committed(_)) => {}
        other => panic!("a write as root: {other:?}"),
    }
    assert!(s.get("/auth/before").await.expect("read").is_some());
    o.user = Some(("root".into(), "wrong".into()));
    match EtcdStore::connect(o).await {
        Err(StoreError::Io(why)) => eprintln!("wrong password: {why}"),
        Err(e) => panic!("a wrong password must be a plain error, not {e:?}"),
        Ok(_) => panic!("a wrong password must not connect"),
    }
}
