//! kuryr-dataplane's member health probes against the real kernel (run as root;
//! they fail, not skip, otherwise).
//!
//! Network safety: every test makes its own namespaces `kt-pr-<pid>-<n>` and
//! deletes them in a Drop guard, also when it panics; servers (busybox httpd,
//! openssl s_server) are ended by their own guards, by pid. A "member" namespace
//! has a veth pair `m0`/`m0p` with 10.79.0.2/24 and fd79::2/64 on `m0` — the same
//! in every namespace, as overlapping tenant CIDRs would be — and a veth pair
//! `bh0`/`bh0p` that 10.79.250.0/24 and fd79:ff::/64 are routed to, with permanent
//! neighbour entries to a MAC nobody has: packets silently vanish (what a timeout
//! is tested against). Probes run from inside the member namespace, as
//! the agent's do. The only thing in the machine's own namespace is one test's
//! listener on 127.0.0.1 (probes with no namespace).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kuryr_dataplane::netns::{self, NetNs};
use kuryr_dataplane::probe::{
    ExpectedCodes, Health, HttpCheck, HttpVersion, Monitor, ProbeFailure, ProbeKind, Target, probe,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;

const V4: &str = "10.79.0.2";
const V6: &str = "fd79::2";
const HOLE4: &str = "10.79.250.9";
const HOLE6: &str = "fd79:ff::9";

fn require_root() {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .expect("running id -u");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "these tests need root (they make network namespaces)"
    );
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .expect("running a command");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().expect("an address"), port)
}

/// A member namespace, deleted on drop.
struct Ns {
    name: String,
    path: PathBuf,
}

impl Ns {
    fn new() -> Ns {
        require_root();
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "kt-pr-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        // The guard from here on: whatever exists goes, even if setup fails.
        let ns = Ns {
            path: PathBuf::from(format!("/run/netns/{name}")),
            name,
        };
        ns.ip(&["link", "set", "lo", "up"]);
        for (link, peer) in [("m0", "m0p"), ("bh0", "bh0p")] {
            ns.ip(&["link", "add", link, "type", "veth", "peer", "name", peer]);
            ns.ip(&["link", "set", peer, "up"]);
            ns.ip(&["link", "set", link, "up"]);
        }
        ns.ip(&["addr", "add", &format!("{V4}/24"), "dev", "m0"]);
        ns.ip(&["addr", "add", &format!("{V6}/64"), "dev", "m0", "nodad"]);
        // The hole: frames to a MAC nobody has, out of a veth whose peer drops them.
        ns.ip(&["route", "add", "10.79.250.0/24", "dev", "bh0"]);
        ns.ip(&["-6", "route", "add", "fd79:ff::/64", "dev", "bh0"]);
        for hole in [HOLE4, HOLE6] {
            ns.ip(&[
                "neigh",
                "add",
                hole,
                "lladdr",
                "02:79:00:00:00:99",
                "dev",
                "bh0",
                "nud",
                "permanent",
            ]);
        }
        ns
    }

    fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    fn path(&self) -> Option<&Path> {
        Some(&self.path)
    }

    /// Starts `args` inside the namespace; ended on drop.
    fn spawn(&self, args: &[&str]) -> Proc {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: stop() ends the server's children too.
            .process_group(0)
            .spawn()
            .expect("starting a server in the namespace");
        Proc(Some(child))
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A server process, killed (by its pid) on drop.
struct Proc(Option<Child>);

impl Proc {
    fn stop(&mut self) {
        if let Some(mut child) = self.0.take() {
            // The group the child leads (busybox httpd forks per connection, and a
            // child keeps the listening socket open).
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A directory under /tmp, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "kt-probe-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("making a temporary directory");
        TempDir(dir)
    }

    fn file(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A tokio task aborted on drop (an in-process server).
struct Task(JoinHandle<()>);

impl Task {
    /// Aborts and waits until the task is gone (and what it owned closed).
    async fn stop(mut self) {
        let handle = std::mem::replace(&mut self.0, tokio::spawn(async {}));
        handle.abort();
        let _ = handle.await;
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// busybox httpd on port `port` of the namespace serving `/` (index.html); other
/// paths are 404.
fn httpd(ns: &Ns, port: u16) -> (Proc, TempDir) {
    let dir = TempDir::new("www");
    std::fs::write(dir.0.join("index.html"), "member up\n").expect("writing index.html");
    let www = dir.0.display().to_string();
    let proc = ns.spawn(&[
        "busybox",
        "httpd",
        "-f",
        "-p",
        &port.to_string(),
        "-h",
        &www,
    ]);
    (proc, dir)
}

/// openssl s_server -www (a self-signed certificate) on `port`: answers 200.
fn tls_server(ns: &Ns, port: u16) -> (Proc, TempDir) {
    let dir = TempDir::new("tls");
    let (key, cert) = (dir.file("key.pem"), dir.file("cert.pem"));
    run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &cert,
            "-days",
            "1",
            "-subj",
            "/CN=member",
        ],
    );
    let accept = format!("{V4}:{port}");
    let proc = ns.spawn(&[
        "openssl", "s_server", "-accept", &accept, "-cert", &cert, "-key", &key, "-www", "-quiet",
    ]);
    (proc, dir)
}

/// A TCP listener bound inside the namespace, served here: counts connections
/// and answers each with `response` (if any). Stops (closes) on drop.
struct TcpServer {
    accepted: Arc<AtomicU64>,
    /// The first request line and headers of the last connection.
    request: Arc<std::sync::Mutex<String>>,
    _task: Task,
}

impl TcpServer {
    fn start(ns: &Ns, addr: SocketAddr, response: Option<&'static str>) -> TcpServer {
        let handle = NetNs::open(&ns.path).expect("opening the namespace");
        let socket = netns::run_in(&handle, move || {
            if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            }
        })
        .expect("entering the namespace")
        .expect("a socket in the namespace");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(addr).expect("binding in the namespace");
        // A deep backlog: the figures test connects 1,000 at once.
        let listener = socket.listen(4096).expect("listening");
        let accepted = Arc::new(AtomicU64::new(0));
        let request = Arc::new(std::sync::Mutex::new(String::new()));
        let (count, seen) = (accepted.clone(), request.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::Relaxed);
                let Some(response) = response else {
                    continue;
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 2048];
                    let mut len = 0;
                    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
                        match stream.read(&mut buf[len..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => len += n,
                        }
                    }
                    if let Ok(mut s) = seen.lock() {
                        *s = String::from_utf8_lossy(&buf[..len]).to_string();
                    }
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        TcpServer {
            accepted,
            request,
            _task: Task(task),
        }
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Closes the listener (when this returns, connecting is refused).
    async fn stop(self) {
        self._task.stop().await;
    }
}

/// A UDP echo server bound inside the namespace; closed on drop.
fn udp_echo(ns: &Ns, addr: SocketAddr) -> Task {
    let handle = NetNs::open(&ns.path).expect("opening the namespace");
    let socket = netns::run_in(&handle, move || std::net::UdpSocket::bind(addr))
        .expect("entering the namespace")
        .expect("binding in the namespace");
    socket.set_nonblocking(true).expect("non-blocking");
    let socket = tokio::net::UdpSocket::from_std(socket).expect("a tokio socket");
    Task(tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    }))
}

/// Probes until it succeeds (a server starting) or the deadline.
async fn until_up(netns: Option<&Path>, target: SocketAddr, kind: &ProbeKind) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match probe(netns, target, kind, Duration::from_millis(500)).await {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{target} {kind:?} never up: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

const T: Duration = Duration::from_secs(2);

fn http(path: &str, expected: &str) -> HttpCheck {
    HttpCheck {
        path: path.to_string(),
        expected: ExpectedCodes::parse(expected).expect("valid codes"),
        ..HttpCheck::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_up_then_down_when_the_server_stops() {
    let ns = Ns::new();
    let (mut server, _www) = httpd(&ns, 8080);
    for ip in [V4, V6] {
        until_up(ns.path(), sa(ip, 8080), &ProbeKind::Tcp).await;
    }
    // A port nobody listens on: refused at once.
    let refused = probe(ns.path(), sa(V4, 8081), &ProbeKind::Tcp, T).await;
    assert!(
        matches!(refused, Err(ProbeFailure::Connect { .. })),
        "{refused:?}"
    );
    server.stop();
    for ip in [V4, V6] {
        let r = probe(ns.path(), sa(ip, 8080), &ProbeKind::Tcp, T).await;
        assert!(matches!(r, Err(ProbeFailure::Connect { .. })), "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_status_against_expected_codes() {
    let ns = Ns::new();
    let (mut server, _www) = httpd(&ns, 8080);
    let target = sa(V4, 8080);
    until_up(ns.path(), target, &ProbeKind::Tcp).await;
    let check = |path: &str, codes: &str| ProbeKind::Http(http(path, codes));
    // 200 for / (both versions, both families).
    for version in [HttpVersion::Http10, HttpVersion::Http11] {
        let kind = ProbeKind::Http(HttpCheck {
            version,
            ..http("/", "200")
        });
        probe(ns.path(), target, &kind, T)
            .await
            .expect("GET / is 200");
        probe(ns.path(), sa(V6, 8080), &kind, T)
            .await
            .expect("GET / is 200 over IPv6");
    }
    // 404 vs "200": down; the same 404 is fine for "200-404" and "200,404".
    let r = probe(ns.path(), target, &check("/missing", "200"), T).await;
    assert!(
        matches!(r, Err(ProbeFailure::Status { status: 404, .. })),
        "{r:?}"
    );
    for codes in ["200-404", "200,404", "404"] {
        probe(ns.path(), target, &check("/missing", codes), T)
            .await
            .unwrap_or_else(|e| panic!("404 with {codes}: {e}"));
    }
    // 200 vs "201-204": down.
    let r = probe(ns.path(), target, &check("/", "201-204"), T).await;
    assert!(
        matches!(r, Err(ProbeFailure::Status { status: 200, .. })),
        "{r:?}"
    );
    server.stop();
    let r = probe(ns.path(), target, &check("/", "200"), T).await;
    assert!(matches!(r, Err(ProbeFailure::Connect { .. })), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_request_has_method_path_version_and_host() {
    let ns = Ns::new();
    let target = sa(V4, 8090);
    let server = TcpServer::start(&ns, target, Some("HTTP/1.1 204 No Content\r\n\r\n"));
    let kind = ProbeKind::Http(HttpCheck {
        method: "HEAD".to_string(),
        path: "/healthz?x=1".to_string(),
        expected: ExpectedCodes::parse("200-204").expect("codes"),
        host: Some("svc.example.org".to_string()),
        version: HttpVersion::Http11,
    });
    probe(ns.path(), target, &kind, T)
        .await
        .expect("204 is in 200-204");
    let request = server.request.lock().expect("lock").clone();
    assert!(
        request.starts_with("HEAD /healthz?x=1 HTTP/1.1\r\n"),
        "{request:?}"
    );
    assert!(
        request.contains("\r\nHost: svc.example.org\r\n"),
        "{request:?}"
    );
    // HTTP/1.1 without a domain name: the address (and port) as Host.
    let kind = ProbeKind::Http(HttpCheck {
        version: HttpVersion::Http11,
        ..http("/", "204")
    });
    probe(ns.path(), target, &kind, T).await.expect("204");
    let request = server.request.lock().expect("lock").clone();
    assert!(
        request.contains("\r\nHost: 10.79.0.2:8090\r\n"),
        "{request:?}"
    );
    // Not HTTP at all: down.
    let garbage = TcpServer::start(&ns, sa(V4, 8091), Some("SSH-2.0-OpenSSH_9.2\r\n"));
    let r = probe(
        ns.path(),
        sa(V4, 8091),
        &ProbeKind::Http(http("/", "200")),
        T,
    )
    .await;
    assert!(matches!(r, Err(ProbeFailure::BadResponse { .. })), "{r:?}");
    assert_eq!(garbage.accepted(), 1);
    // An invalid check never reaches the network.
    let bad = ProbeKind::Http(http("/a\r\nX-Evil: 1", "200"));
    let r = probe(ns.path(), target, &bad, T).await;
    assert!(matches!(r, Err(ProbeFailure::Invalid { .. })), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_tls_hello_without_verification() {
    let ns = Ns::new();
    let (mut server, _certs) = tls_server(&ns, 8443);
    let target = sa(V4, 8443);
    // Self-signed and for another name: accepted anyway (no verification).
    until_up(ns.path(), target, &ProbeKind::TlsHello).await;
    let https = |codes: &str| ProbeKind::Https(http("/", codes));
    probe(ns.path(), target, &https("200"), T)
        .await
        .expect("HTTPS 200");
    let with_host = ProbeKind::Https(HttpCheck {
        host: Some("member.example".to_string()),
        version: HttpVersion::Http11,
        ..http("/", "200")
    });
    probe(ns.path(), target, &with_host, T)
        .await
        .expect("HTTPS 200 with SNI and Host");
    let r = probe(ns.path(), target, &https("404"), T).await;
    assert!(
        matches!(r, Err(ProbeFailure::Status { status: 200, .. })),
        "{r:?}"
    );
    // A plain HTTP server: HTTPS and TLS-HELLO fail in the handshake, HTTP works.
    let (_plain, _www) = httpd(&ns, 8080);
    let plain = sa(V4, 8080);
    until_up(ns.path(), plain, &ProbeKind::Http(http("/", "200"))).await;
    for kind in [https("200"), ProbeKind::TlsHello] {
        let r = probe(ns.path(), plain, &kind, T).await;
        assert!(
            matches!(r, Err(ProbeFailure::Tls { .. })),
            "{kind:?}: {r:?}"
        );
    }
    server.stop();
    let r = probe(ns.path(), target, &ProbeKind::TlsHello, T).await;
    assert!(matches!(r, Err(ProbeFailure::Connect { .. })), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_connect_is_down_only_on_port_unreachable() {
    let ns = Ns::new();
    let timeout = Duration::from_millis(400);
    for ip in [V4, V6] {
        let target = sa(ip, 5353);
        // A listener that answers: up at once.
        let echo = udp_echo(&ns, target);
        let start = Instant::now();
        probe(ns.path(), target, &ProbeKind::UdpConnect, timeout)
            .await
            .expect("an echo server is up");
        assert!(start.elapsed() < timeout, "a reply ends the probe early");
        echo.stop().await;
        // Nobody on the port: ICMP port unreachable, down well before the timeout.
        let start = Instant::now();
        let r = probe(ns.path(), target, &ProbeKind::UdpConnect, timeout).await;
        assert!(
            matches!(&r, Err(ProbeFailure::Unreachable { source, .. })
                if source.kind() == std::io::ErrorKind::ConnectionRefused),
            "{ip}: {r:?}"
        );
        assert!(start.elapsed() < timeout, "{:?}", start.elapsed());
    }
    // A listener that never answers: up (silence), after the timeout. Its
    // control: the same port closed again is down.
    let silent = {
        let handle = NetNs::open(&ns.path).expect("ns");
        netns::run_in(&handle, || std::net::UdpSocket::bind(sa(V4, 5354)))
            .expect("entering")
            .expect("binding")
    };
    let start = Instant::now();
    probe(ns.path(), sa(V4, 5354), &ProbeKind::UdpConnect, timeout)
        .await
        .expect("a silent listener is up");
    assert!(start.elapsed() >= timeout - Duration::from_millis(20));
    drop(silent);
    let r = probe(ns.path(), sa(V4, 5354), &ProbeKind::UdpConnect, timeout).await;
    assert!(matches!(r, Err(ProbeFailure::Unreachable { .. })), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_up_then_down_when_the_address_goes() {
    let ns = Ns::new();
    for ip in [V4, V6] {
        probe(ns.path(), sa(ip, 0), &ProbeKind::Ping, T)
            .await
            .unwrap_or_else(|e| panic!("ping {ip}: {e}"));
    }
    // Many at once (raw sockets see each other's replies: identifiers tell them apart).
    let pings = (0..50).map(|i| {
        let path = ns.path.clone();
        let ip = if i % 2 == 0 { V4 } else { V6 };
        tokio::spawn(async move { probe(Some(&path), sa(ip, 0), &ProbeKind::Ping, T).await })
    });
    for ping in pings {
        ping.await.expect("task").expect("concurrent ping");
    }
    // ICMP datagram sockets where the namespace allows them (root's group), raw
    // sockets otherwise (above: a new namespace allows no group).
    let dgram = Ns::new();
    run(
        "ip",
        &[
            "netns",
            "exec",
            &dgram.name,
            "sysctl",
            "-qw",
            "net.ipv4.ping_group_range=0 0",
        ],
    );
    for ip in [V4, V6] {
        probe(dgram.path(), sa(ip, 0), &ProbeKind::Ping, T)
            .await
            .unwrap_or_else(|e| panic!("ping {ip} over an ICMP datagram socket: {e}"));
    }
    ns.ip(&["addr", "del", &format!("{V4}/24"), "dev", "m0"]);
    let r = probe(ns.path(), sa(V4, 0), &ProbeKind::Ping, T).await;
    assert!(r.is_err(), "ping of a removed address: {r:?}");
    // The link down takes the IPv6 address's routes with it.
    probe(ns.path(), sa(V6, 0), &ProbeKind::Ping, T)
        .await
        .expect("IPv6 still up");
    ns.ip(&["link", "set", "m0", "down"]);
    let r = probe(ns.path(), sa(V6, 0), &ProbeKind::Ping, T).await;
    assert!(r.is_err(), "ping over a down link: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_target_fails_within_the_timeout() {
    let ns = Ns::new();
    let (_server, _www) = httpd(&ns, 8080);
    let timeout = Duration::from_millis(300);
    let kinds = [
        ProbeKind::Tcp,
        ProbeKind::Http(http("/", "200")),
        ProbeKind::Https(http("/", "200")),
        ProbeKind::TlsHello,
        ProbeKind::Ping,
    ];
    // Controls: the same probes on the member's address are answered (the TLS ones
    // reach a plain HTTP server and fail in the handshake, not by timeout).
    until_up(ns.path(), sa(V4, 8080), &ProbeKind::Tcp).await;
    for kind in &kinds {
        let start = Instant::now();
        let r = probe(ns.path(), sa(V4, 8080), kind, timeout).await;
        assert!(start.elapsed() < timeout);
        assert!(
            !matches!(r, Err(ProbeFailure::Timeout { .. })),
            "{kind:?}: {r:?}"
        );
    }
    for hole in [HOLE4, HOLE6] {
        for kind in &kinds {
            let start = Instant::now();
            let r = probe(ns.path(), sa(hole, 8080), kind, timeout).await;
            let elapsed = start.elapsed();
            assert!(
                matches!(r, Err(ProbeFailure::Timeout { .. })),
                "{hole} {kind:?}: {r:?}"
            );
            assert!(
                elapsed >= timeout && elapsed < timeout + Duration::from_millis(150),
                "{hole} {kind:?}: {elapsed:?}"
            );
        }
        // Octavia's UDP-CONNECT: silence is up.
        let start = Instant::now();
        probe(ns.path(), sa(hole, 53), &ProbeKind::UdpConnect, timeout)
            .await
            .expect("silence is up for UDP-CONNECT");
        let elapsed = start.elapsed();
        assert!(elapsed >= timeout && elapsed < timeout + Duration::from_millis(150));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_without_a_namespace_use_the_callers() {
    require_root();
    // The only thing in the machine's own namespace: a listener on 127.0.0.1.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding on 127.0.0.1");
    let target = listener.local_addr().expect("its address");
    let accept = Task(tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\n").await;
        }
    }));
    probe(None, target, &ProbeKind::Tcp, T).await.expect("TCP");
    probe(None, target, &ProbeKind::Http(http("/", "200")), T)
        .await
        .expect("HTTP");
    // The same address inside a member namespace is another machine: refused.
    let ns = Ns::new();
    let r = probe(ns.path(), target, &ProbeKind::Tcp, T).await;
    assert!(matches!(r, Err(ProbeFailure::Connect { .. })), "{r:?}");
    accept.stop().await;
    let r = probe(None, target, &ProbeKind::Tcp, T).await;
    assert!(matches!(r, Err(ProbeFailure::Connect { .. })), "{r:?}");
}

// ---------------------------------------------------------------------------
// The monitor

fn target(ns: &Ns, addr: SocketAddr, delay_ms: u64, rise: u32, fall: u32) -> Target {
    Target {
        netns: Some(ns.path.clone()),
        addr,
        kind: ProbeKind::Tcp,
        delay: Duration::from_millis(delay_ms),
        timeout: Duration::from_millis(100),
        rise,
        fall,
    }
}

/// The next event, within `within`.
async fn next_event(
    rx: &mut UnboundedReceiver<(String, Health)>,
    within: Duration,
) -> (String, Health) {
    tokio::time::timeout(within, rx.recv())
        .await
        .expect("an event in time")
        .expect("the monitor is alive")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_falls_after_fall_failures_and_rises_after_rise_successes() {
    let ns = Ns::new();
    let addr = sa(V4, 9000);
    let server = TcpServer::start(&ns, addr, None);
    let (monitor, mut rx) = Monitor::new();
    let (delay, rise, fall) = (200u64, 2u32, 3u32);
    monitor.set(BTreeMap::from([(
        "m1".to_string(),
        target(&ns, addr, delay, rise, fall),
    )]));
    // The first probe decides at once.
    let started = Instant::now();
    assert_eq!(
        next_event(&mut rx, Duration::from_secs(2)).await,
        ("m1".to_string(), Health::Online)
    );
    assert!(
        started.elapsed() < Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(monitor.health().get("m1"), Some(&Health::Online));

    // The server counts the first probe's connection on its own thread, which a
    // loaded machine may run after the monitor's event.
    let counted = Instant::now() + Duration::from_secs(2);
    while server.accepted() == 0 && Instant::now() < counted {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Server gone: `fall` failed probes, delay apart: (fall-1)..fall delays.
    let probes_before = server.accepted();
    server.stop().await;
    let stopped = Instant::now();
    assert_eq!(
        next_event(&mut rx, Duration::from_secs(3)).await,
        ("m1".to_string(), Health::Error)
    );
    let took = stopped.elapsed();
    let d = Duration::from_millis(delay);
    assert!(
        took >= d * (fall - 1) - Duration::from_millis(20)
            && took <= d * fall + Duration::from_millis(150),
        "Error after {took:?}"
    );
    assert_eq!(monitor.health().get("m1"), Some(&Health::Error));
    assert!(probes_before >= 1);

    // Back: `rise` successes.
    let server = TcpServer::start(&ns, addr, None);
    let restarted = Instant::now();
    assert_eq!(
        next_event(&mut rx, Duration::from_secs(3)).await,
        ("m1".to_string(), Health::Online)
    );
    let took = restarted.elapsed();
    assert!(
        took >= d * (rise - 1) - Duration::from_millis(20)
            && took <= d * rise + Duration::from_millis(150),
        "Online after {took:?}"
    );
    // The probes reached it (accept() may lag the kernel's handshake a little).
    let deadline = Instant::now() + Duration::from_secs(1);
    while server.accepted() < u64::from(rise) {
        assert!(
            Instant::now() < deadline,
            "{} probes seen",
            server.accepted()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "monitor: Error {fall} probes × {delay} ms after the server stopped; Online again after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_first_failure_is_error_at_once() {
    let ns = Ns::new();
    let (monitor, mut rx) = Monitor::new();
    // fall = 3, but a member never seen up is Error on its first failed probe.
    monitor.set(BTreeMap::from([(
        "down".to_string(),
        target(&ns, sa(V4, 9100), 1000, 2, 3),
    )]));
    let started = Instant::now();
    assert_eq!(
        next_event(&mut rx, Duration::from_secs(2)).await,
        ("down".to_string(), Health::Error)
    );
    assert!(started.elapsed() < Duration::from_millis(150));
    // Its control: a member with a server is Online as fast.
    let _server = TcpServer::start(&ns, sa(V4, 9101), None);
    let mut both = BTreeMap::from([
        ("down".to_string(), target(&ns, sa(V4, 9100), 1000, 2, 3)),
        ("up".to_string(), target(&ns, sa(V4, 9101), 1000, 2, 3)),
    ]);
    monitor.set(both.clone());
    let started = Instant::now();
    assert_eq!(
        next_event(&mut rx, Duration::from_secs(2)).await,
        ("up".to_string(), Health::Online)
    );
    assert!(started.elapsed() < Duration::from_millis(150));
    // Unchanged "down" was not restarted (no second event for it).
    assert_eq!(monitor.health().len(), 2);
    both.remove("down");
    monitor.set(both);
    assert_eq!(
        monitor.health(),
        BTreeMap::from([("up".to_string(), Health::Online)])
    );
    assert!(rx.try_recv().is_err(), "no event for removals");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_set_stops_removed_and_restarts_changed() {
    let ns = Ns::new();
    let (a, b, c) = (sa(V4, 9201), sa(V4, 9202), sa(V4, 9203));
    let (sa_, sb, sc) = (
        TcpServer::start(&ns, a, None),
        TcpServer::start(&ns, b, None),
        TcpServer::start(&ns, c, None),
    );
    let (monitor, mut rx) = Monitor::new();
    monitor.set(BTreeMap::from([
        ("a".to_string(), target(&ns, a, 50, 1, 1)),
        ("b".to_string(), target(&ns, b, 50, 1, 1)),
    ]));
    let mut seen = BTreeMap::new();
    while seen.len() < 2 {
        let (id, h) = next_event(&mut rx, Duration::from_secs(2)).await;
        seen.insert(id, h);
    }
    assert_eq!(seen.values().filter(|h| **h == Health::Online).count(), 2);

    // Positive control: a is being probed.
    let deadline = Instant::now() + Duration::from_secs(3);
    let a0 = sa_.accepted();
    while sa_.accepted() < a0 + 3 {
        assert!(Instant::now() < deadline, "a is not probed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // a goes, c comes, b stays.
    monitor.set(BTreeMap::from([
        ("b".to_string(), target(&ns, b, 50, 1, 1)),
        ("c".to_string(), target(&ns, c, 50, 1, 1)),
    ]));
    let a_after = sa_.accepted();
    assert_eq!(
        next_event(&mut rx, Duration::from_secs(2)).await,
        ("c".to_string(), Health::Online)
    );
    let (b0, c0) = (sb.accepted(), sc.accepted());
    let deadline = Instant::now() + Duration::from_secs(3);
    while sb.accepted() < b0 + 5 || sc.accepted() < c0 + 5 {
        assert!(Instant::now() < deadline, "b and c are not probed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // At most one probe of a was in flight at set().
    assert!(sa_.accepted() <= a_after + 1, "a is still probed");
    assert_eq!(
        monitor.health().keys().cloned().collect::<Vec<_>>(),
        ["b", "c"]
    );

    // b changed (now a port nobody listens on): restarted, Error at its first probe.
    monitor.set(BTreeMap::from([
        ("b".to_string(), target(&ns, sa(V4, 9299), 50, 1, 1)),
        ("c".to_string(), target(&ns, c, 50, 1, 1)),
    ]));
    assert_eq!(
        next_event(&mut rx, Duration::from_secs(2)).await,
        ("b".to_string(), Health::Error)
    );
    // Empty set: everything stops.
    monitor.set(BTreeMap::new());
    assert!(monitor.health().is_empty());
    let c_after = sc.accepted();
    // Control for "stopped": b's old server still answers, so a probe would count.
    let b_now = sb.accepted();
    probe(ns.path(), b, &ProbeKind::Tcp, T)
        .await
        .expect("b's server is up");
    let deadline = Instant::now() + Duration::from_secs(2);
    while sb.accepted() < b_now + 1 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(sc.accepted() <= c_after + 1);
    drop(monitor);
    assert!(
        rx.recv().await.is_none(),
        "dropping the monitor ends the events"
    );
}

// ---------------------------------------------------------------------------
// Figures

/// CPU time (user + system) of this process so far.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // After the command in parentheses: state is field 3; utime, stime are 14, 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_latency_and_a_thousand_members() {
    let ns = Ns::new();
    let (_www, _dir) = httpd(&ns, 8080);
    let tcp = sa(V4, 9300);
    let server = TcpServer::start(&ns, tcp, None);
    until_up(ns.path(), sa(V4, 8080), &ProbeKind::Tcp).await;

    // The cost of entering a namespace for a socket: run_in alone.
    let handle = NetNs::open(&ns.path).expect("ns");
    let n = 500u32;
    let start = Instant::now();
    for _ in 0..n {
        netns::run_in(&handle, || {
            std::net::UdpSocket::bind("127.0.0.1:0").map(drop)
        })
        .expect("run_in")
        .expect("socket");
    }
    let run_in = start.elapsed() / n;

    // Sequential probe latency.
    let mut latency = Vec::new();
    let kinds: [(&str, Option<&Path>, SocketAddr, ProbeKind); 7] = [
        ("TCP in netns", ns.path(), tcp, ProbeKind::Tcp),
        (
            "HTTP in netns (busybox httpd)",
            ns.path(),
            sa(V4, 8080),
            ProbeKind::Http(http("/", "200")),
        ),
        ("PING in netns", ns.path(), sa(V4, 0), ProbeKind::Ping),
        ("PING6 in netns", ns.path(), sa(V6, 0), ProbeKind::Ping),
        (
            "UDP-CONNECT refused in netns",
            ns.path(),
            sa(V4, 9999),
            ProbeKind::UdpConnect,
        ),
        (
            "TCP refused in netns",
            ns.path(),
            sa(V4, 9998),
            ProbeKind::Tcp,
        ),
        (
            "TCP refused, no netns (127.0.0.1:1)",
            None,
            sa("127.0.0.1", 1),
            ProbeKind::Tcp,
        ),
    ];
    for (name, path, addr, kind) in &kinds {
        let n = 200u32;
        let start = Instant::now();
        for _ in 0..n {
            let _ = probe(*path, *addr, kind, T).await;
        }
        latency.push((*name, start.elapsed() / n));
    }

    // 1,000 members of one namespace's server, delay 1 s: all Online, then the
    // probe rate and CPU over a window.
    let (monitor, mut rx) = Monitor::new();
    // Octavia's timeouts are whole seconds: 1 s, so that a loaded test machine
    // (other tests run alongside) does not fail first probes.
    let member = Target {
        timeout: Duration::from_secs(1),
        ..target(&ns, tcp, 1000, 2, 3)
    };
    let members: BTreeMap<String, Target> = (0..1000)
        .map(|i| (format!("m{i:04}"), member.clone()))
        .collect();
    let set_at = Instant::now();
    monitor.set(members);
    let (mut online, mut error) = (0, 0);
    while online + error < 1000 {
        match next_event(&mut rx, Duration::from_secs(5)).await.1 {
            Health::Online => online += 1,
            Health::Error => error += 1,
        }
    }
    let all_online = set_at.elapsed();
    assert_eq!(
        error, 0,
        "{error} of 1,000 members Error at their first probe, after {all_online:?}"
    );
    // Past the spread second probes (0.5 to 1.5 s after the first): steady state.
    let deadline = Instant::now() + Duration::from_secs(20);
    let settled = server.accepted() + 1500;
    while server.accepted() < settled {
        assert!(Instant::now() < deadline, "1,000 members are not probed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (p0, c0, t0) = (server.accepted(), cpu_time(), Instant::now());
    while server.accepted() < p0 + 5000 {
        assert!(
            Instant::now() < deadline,
            "1,000 members at 1/s are not probed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (probes, cpu, wall) = (server.accepted() - p0, cpu_time() - c0, t0.elapsed());
    let rate = probes as f64 / wall.as_secs_f64();
    assert!(rate > 800.0, "{rate:.0} probes/s for 1,000 members at 1 s");
    assert!(rx.try_recv().is_err(), "no flapping");

    // Capacity: the same 1,000 with the shortest delay.
    let members: BTreeMap<String, Target> = (0..1000)
        .map(|i| {
            let fast = Target {
                delay: Duration::from_millis(10),
                ..member.clone()
            };
            (format!("m{i:04}"), fast)
        })
        .collect();
    monitor.set(members);
    let (p1, c1, t1) = (server.accepted(), cpu_time(), Instant::now());
    while t1.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (max_probes, max_cpu, max_wall) = (server.accepted() - p1, cpu_time() - c1, t1.elapsed());
    drop(monitor);

    eprintln!(
        "--- probe figures ({} cores) ---",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    eprintln!("run_in (thread + setns + socket): {run_in:?}");
    for (name, l) in &latency {
        eprintln!("{name}: {l:?} per probe");
    }
    eprintln!("1,000 members set → all Online: {all_online:?}");
    eprintln!(
        "1,000 members, delay 1 s: {rate:.0} probes/s, CPU {:.1}% of one core ({:?} per probe)",
        cpu.as_secs_f64() / wall.as_secs_f64() * 100.0,
        cpu.checked_div(u32::try_from(probes).unwrap_or(u32::MAX))
            .unwrap_or_default()
    );
    eprintln!(
        "1,000 members, delay 10 ms (saturated): {:.0} probes/s, CPU {:.0}% of one core",
        max_probes as f64 / max_wall.as_secs_f64(),
        max_cpu.as_secs_f64() / max_wall.as_secs_f64() * 100.0
    );
}
