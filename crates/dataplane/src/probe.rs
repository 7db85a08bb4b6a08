//! Health checks of load-balancer members, with Octavia's health-monitor semantics
//! but no amphora: the agent on a member's host probes the member itself.
//!
//! A probe runs from *inside* the member's network namespace (a kuryr port's
//! container: the target is then one of the namespace's own addresses, so
//! overlapping tenant CIDRs and security groups do not matter) or, with no
//! namespace, from the agent's own one (members that are not kuryr ports). Only the
//! socket is made in the namespace (see [`crate::netns`]); everything else runs on
//! tokio, in whichever thread.
//!
//! [`probe`] is one check:
//!
//! - `PING`: one ICMP / ICMPv6 echo, up iff the matching echo reply comes back
//!   (an ICMP error such as host unreachable is down at once). An ICMP datagram
//!   socket is tried first (no privilege, but only for the groups in the
//!   namespace's `net.ipv4.ping_group_range`, which is empty in a new namespace,
//!   root included), then a raw socket (`CAP_NET_RAW`, which the agent has).
//! - `TCP`: the connection is established (then closed).
//! - `HTTP`: `METHOD path HTTP/1.x`, `Host` = the domain name if any, else the
//!   address for HTTP/1.1 (none for HTTP/1.0, like haproxy); up iff the status code
//!   is one of the expected codes ([`ExpectedCodes`], Octavia's `expected_codes`).
//! - `HTTPS`: the same through TLS, *without* verifying the certificate (Octavia's
//!   amphora checks with `verify none` too); SNI is the domain name if it is one.
//! - `TLS-HELLO`: the TLS handshake completes (no verification either).
//! - `UDP-CONNECT`: one empty datagram on a connected UDP socket; an ICMP
//!   port/host unreachable coming back (`ECONNREFUSED`, `EHOSTUNREACH` on the
//!   socket) is down, a reply *or silence until the timeout* is up — Octavia's
//!   definition (its amphora runs `nc -uz`), which only detects closed ports.
//!
//! Octavia's `SCTP` type is not implemented (it needs the kernel's sctp module).
//!
//! [`Monitor`] keeps many members under watch (one light tokio task each) and
//! reports their [`Health`] changes with haproxy's rise/fall hysteresis.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, socket};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;

use crate::netns::{NetNs, NetnsError};

// ---------------------------------------------------------------------------
// Expected HTTP status codes

/// Octavia's `expected_codes`: one code (`200`), a list (`200,202`, spaces allowed
/// around the commas) or one inclusive range (`200-204`); codes are three digits,
/// 100 to 599. A list and a range cannot be mixed (Octavia's own rule).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ExpectedCodes {
    List(Vec<u16>),
    Range(u16, u16),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid expected_codes {input:?}: {reason} (expected a code like 200, a list like 200,202 or a range like 200-204)"
)]
pub struct ExpectedCodesError {
    pub input: String,
    pub reason: &'static str,
}

impl ExpectedCodes {
    pub fn parse(input: &str) -> Result<ExpectedCodes, ExpectedCodesError> {
        let fail = |reason| ExpectedCodesError {
            input: input.to_string(),
            reason,
        };
        let code = |s: &str| -> Result<u16, ExpectedCodesError> {
            if s.len() != 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(fail("a code is exactly three digits"));
            }
            let n: u16 = s
                .parse()
                .map_err(|_| fail("a code is exactly three digits"))?;
            if !(100..=599).contains(&n) {
                return Err(fail("a code is between 100 and 599"));
            }
            Ok(n)
        };
        if let Some((lo, hi)) = input.split_once('-') {
            let (lo, hi) = (code(lo)?, code(hi)?);
            if lo > hi {
                return Err(fail("a range goes from the lower code to the higher"));
            }
            return Ok(ExpectedCodes::Range(lo, hi));
        }
        // Octavia's regex allows blanks around the commas only.
        if input.starts_with(char::is_whitespace) || input.ends_with(char::is_whitespace) {
            return Err(fail("blanks are allowed around commas only"));
        }
        let codes = input
            .split(',')
            .map(|c| code(c.trim()))
            .collect::<Result<Vec<u16>, _>>()?;
        Ok(ExpectedCodes::List(codes))
    }

    pub fn matches(&self, status: u16) -> bool {
        match self {
            ExpectedCodes::List(codes) => codes.contains(&status),
            ExpectedCodes::Range(lo, hi) => (*lo..=*hi).contains(&status),
        }
    }
}

/// Octavia's default: `200`.
impl Default for ExpectedCodes {
    fn default() -> ExpectedCodes {
        ExpectedCodes::List(vec![200])
    }
}

impl FromStr for ExpectedCodes {
    type Err = ExpectedCodesError;
    fn from_str(s: &str) -> Result<ExpectedCodes, ExpectedCodesError> {
        ExpectedCodes::parse(s)
    }
}

/// The canonical form: `200`, `200,202`, `200-204`.
impl fmt::Display for ExpectedCodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedCodes::List(codes) => {
                for (i, c) in codes.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{c}")?;
                }
                Ok(())
            }
            ExpectedCodes::Range(lo, hi) => write!(f, "{lo}-{hi}"),
        }
    }
}

// ---------------------------------------------------------------------------
// What to probe

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HttpVersion {
    /// Octavia's default.
    #[default]
    Http10,
    Http11,
}

impl HttpVersion {
    fn as_str(self) -> &'static str {
        match self {
            HttpVersion::Http10 => "HTTP/1.0",
            HttpVersion::Http11 => "HTTP/1.1",
        }
    }
}

/// An HTTP(S) check: Octavia's `http_method`, `url_path`, `expected_codes`,
/// `domain_name` and `http_version`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpCheck {
    pub method: String,
    pub path: String,
    pub expected: ExpectedCodes,
    /// Sent as the `Host` header (and the TLS SNI) when set.
    pub host: Option<String>,
    pub version: HttpVersion,
}

/// Octavia's defaults: `GET / HTTP/1.0`, expecting 200.
impl Default for HttpCheck {
    fn default() -> HttpCheck {
        HttpCheck {
            method: "GET".to_string(),
            path: "/".to_string(),
            expected: ExpectedCodes::default(),
            host: None,
            version: HttpVersion::default(),
        }
    }
}

/// Octavia's health monitor types (but `SCTP`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Ping,
    Tcp,
    Http(HttpCheck),
    Https(HttpCheck),
    TlsHello,
    UdpConnect,
}

/// Octavia's `http_method` values.
pub const HTTP_METHODS: [&str; 9] = [
    "CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidProbe {
    #[error("HTTP method {0:?} is not one of {HTTP_METHODS:?}")]
    Method(String),
    #[error("URL path {0:?} must start with / and hold no blanks or control characters")]
    Path(String),
    #[error("domain name {0:?} must be non-empty and hold no blanks or control characters")]
    Host(String),
}

impl ProbeKind {
    /// Checks what goes into an HTTP request (so nothing can be smuggled into it).
    /// [`probe`] does it too; the API server can call it on creation.
    pub fn validate(&self) -> Result<(), InvalidProbe> {
        let (ProbeKind::Http(check) | ProbeKind::Https(check)) = self else {
            return Ok(());
        };
        let clean =
            |s: &str| !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control());
        if !HTTP_METHODS.contains(&check.method.as_str()) {
            return Err(InvalidProbe::Method(check.method.clone()));
        }
        if !check.path.starts_with('/') || !clean(&check.path) {
            return Err(InvalidProbe::Path(check.path.clone()));
        }
        if let Some(host) = &check.host
            && !clean(host)
        {
            return Err(InvalidProbe::Host(host.clone()));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// One probe

/// Why a probe failed: the member is down for this probe.
#[derive(Debug, thiserror::Error)]
pub enum ProbeFailure {
    #[error("invalid probe: {source}")]
    Invalid { source: InvalidProbe },
    #[error("making the probe socket in the member's namespace: {source}")]
    Netns { source: NetnsError },
    #[error("making the probe socket: {source}")]
    Socket { source: io::Error },
    #[error("no answer from {target} within {timeout:?}")]
    Timeout {
        target: SocketAddr,
        timeout: Duration,
    },
    #[error("connecting to {target}: {source}")]
    Connect {
        target: SocketAddr,
        source: io::Error,
    },
    #[error("{target} is unreachable: {source}")]
    Unreachable {
        target: SocketAddr,
        source: io::Error,
    },
    #[error("talking to {target}: {source}")]
    Io {
        target: SocketAddr,
        source: io::Error,
    },
    #[error("TLS with {target}: {source}")]
    Tls {
        target: SocketAddr,
        source: io::Error,
    },
    #[error("{target} sent no HTTP status line: {line:?}")]
    BadResponse { target: SocketAddr, line: String },
    #[error("{target} answered HTTP {status}, expected {expected}")]
    Status {
        target: SocketAddr,
        status: u16,
        expected: ExpectedCodes,
    },
}

/// Probes `target` once, from inside the network namespace `netns` (a path as for
/// [`NetNs::open`]) or the caller's own. Everything, socket creation included, must
/// finish within `timeout` ([`ProbeFailure::Timeout`] otherwise) — but for
/// `UDP-CONNECT`, where silence until `timeout` is success. The port of `target` is
/// ignored for `PING`.
pub async fn probe(
    netns: Option<&Path>,
    target: SocketAddr,
    kind: &ProbeKind,
    timeout: Duration,
) -> Result<(), ProbeFailure> {
    kind.validate()
        .map_err(|source| ProbeFailure::Invalid { source })?;
    let deadline = Instant::now() + timeout;
    let timed_out = || ProbeFailure::Timeout { target, timeout };
    if let ProbeKind::UdpConnect = kind {
        return udp_connect(netns, target, deadline, timeout).await;
    }
    let work = async {
        match kind {
            ProbeKind::Ping => ping(netns, target).await,
            ProbeKind::Tcp => tcp_connect(netns, target).await.map(drop),
            ProbeKind::Http(check) => {
                let mut stream = tcp_connect(netns, target).await?;
                http_check(&mut stream, target, check, 80).await
            }
            ProbeKind::Https(check) => {
                let stream = tcp_connect(netns, target).await?;
                let mut tls = tls_handshake(stream, target, check.host.as_deref()).await?;
                http_check(&mut tls, target, check, 443).await
            }
            ProbeKind::TlsHello => {
                let stream = tcp_connect(netns, target).await?;
                tls_handshake(stream, target, None).await.map(drop)
            }
            ProbeKind::UdpConnect => Ok(()), // handled above
        }
    };
    tokio::time::timeout_at(deadline, work)
        .await
        .unwrap_or_else(|_| Err(timed_out()))
}

fn family(addr: IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

const FLAGS: SockFlag = SockFlag::SOCK_NONBLOCK.union(SockFlag::SOCK_CLOEXEC);

/// What makes a probe's socket (a `socket(2)` call).
type Make = Box<dyn FnOnce() -> Result<OwnedFd, Errno> + Send>;

/// A socket to make in a namespace, and where to send it.
struct Job {
    netns: PathBuf,
    make: Make,
    reply: tokio::sync::oneshot::Sender<Result<OwnedFd, ProbeFailure>>,
}

/// Threads that make probe sockets in members' namespaces. [`crate::netns::run_in`]
/// spawns a thread per call (tens of µs, and 1,000 probes starting together queue
/// up on thread creation); these few long-lived threads instead `setns` into the
/// job's namespace, make the socket and `setns` back home (so that no thread pins
/// a deleted container's namespace), a few µs per socket.
const SOCKET_THREADS: usize = 2;

fn socket_threads() -> Result<&'static std::sync::mpsc::Sender<Job>, ProbeFailure> {
    static JOBS: OnceLock<std::sync::mpsc::Sender<Job>> = OnceLock::new();
    if let Some(jobs) = JOBS.get() {
        return Ok(jobs);
    }
    let home = NetNs::current().map_err(|source| ProbeFailure::Netns { source })?;
    let (jobs, queue) = std::sync::mpsc::channel::<Job>();
    let queue = Arc::new(Mutex::new(queue));
    let mut started = 0;
    let mut spawn_error = None;
    for i in 0..SOCKET_THREADS {
        let home = home
            .try_clone()
            .map_err(|source| ProbeFailure::Netns { source })?;
        let queue = queue.clone();
        match std::thread::Builder::new()
            .name(format!("kuryr-probe-ns-{i}"))
            .spawn(move || socket_thread(&home, &queue))
        {
            Ok(_) => started += 1,
            Err(e) => spawn_error = Some(e),
        }
    }
    if started == 0 {
        return Err(ProbeFailure::Socket {
            source: spawn_error.unwrap_or_else(|| io::Error::other("no socket thread")),
        });
    }
    // Lost race: another caller's threads serve; ours end with their queue.
    Ok(JOBS.get_or_init(|| jobs))
}

fn socket_thread(home: &NetNs, queue: &Mutex<std::sync::mpsc::Receiver<Job>>) {
    loop {
        let job = {
            let queue = queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            queue.recv()
        };
        let Ok(job) = job else {
            return; // every sender gone
        };
        let made = NetNs::open(&job.netns)
            .and_then(|ns| enter(&ns))
            .map_err(|source| ProbeFailure::Netns { source });
        let made = made.and_then(|()| {
            (job.make)().map_err(|errno| ProbeFailure::Socket {
                source: io::Error::from(errno),
            })
        });
        // Home before anything else: a failed setns there would leave this thread
        // in a member's namespace, so it ends instead (the others go on).
        if let Err(error) = enter(home) {
            tracing::error!(%error, "probe socket thread cannot return to its namespace; ending it");
            let _ = job
                .reply
                .send(made.and(Err(ProbeFailure::Netns { source: error })));
            return;
        }
        // The prober may have timed out and gone: the socket is then closed.
        let _ = job.reply.send(made);
    }
}

fn enter(ns: &NetNs) -> Result<(), NetnsError> {
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|errno| NetnsError::Enter {
        path: ns.path().to_path_buf(),
        source: io::Error::from(errno),
    })
}

/// Makes a non-blocking socket with `make`, in `netns` if given (on a socket
/// thread, see [`SOCKET_THREADS`]) or right here.
async fn make_socket(
    netns: Option<&Path>,
    make: impl FnOnce() -> Result<OwnedFd, Errno> + Send + 'static,
) -> Result<OwnedFd, ProbeFailure> {
    let Some(path) = netns else {
        return make().map_err(|errno| ProbeFailure::Socket {
            source: io::Error::from(errno),
        });
    };
    let (reply, made) = tokio::sync::oneshot::channel();
    let job = Job {
        netns: path.to_path_buf(),
        make: Box::new(make),
        reply,
    };
    let gone = || ProbeFailure::Socket {
        source: io::Error::other("the probe socket threads are gone"),
    };
    socket_threads()?.send(job).map_err(|_| gone())?;
    made.await.map_err(|_| gone())?
}

async fn tcp_connect(netns: Option<&Path>, target: SocketAddr) -> Result<TcpStream, ProbeFailure> {
    let af = family(target.ip());
    let fd = make_socket(netns, move || socket(af, SockType::Stream, FLAGS, None)).await?;
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
    socket
        .connect(target)
        .await
        .map_err(|source| ProbeFailure::Connect { target, source })
}

/// `Host` for HTTP/1.1 without a domain name: the address, with its port unless it
/// is the scheme's default.
fn host_header(check: &HttpCheck, target: SocketAddr, default_port: u16) -> Option<String> {
    if let Some(host) = &check.host {
        return Some(host.clone());
    }
    if check.version == HttpVersion::Http10 {
        return None;
    }
    let ip = match target.ip() {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    };
    Some(if target.port() == default_port {
        ip
    } else {
        format!("{ip}:{}", target.port())
    })
}

/// The longest status line read.
const MAX_STATUS_LINE: usize = 4096;

async fn http_check<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    target: SocketAddr,
    check: &HttpCheck,
    default_port: u16,
) -> Result<(), ProbeFailure> {
    let io_error = |source| ProbeFailure::Io { target, source };
    let mut request = format!(
        "{} {} {}\r\n",
        check.method,
        check.path,
        check.version.as_str()
    );
    if let Some(host) = host_header(check, target, default_port) {
        request.push_str(&format!("Host: {host}\r\n"));
    }
    request.push_str("User-Agent: kuryr-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(io_error)?;
    stream.flush().await.map_err(io_error)?;

    let mut line = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).await.map_err(io_error)?;
        line.extend_from_slice(&chunk[..n]);
        if let Some(end) = line.iter().position(|&b| b == b'\n') {
            line.truncate(end);
            break;
        }
        if n == 0 || line.len() > MAX_STATUS_LINE {
            break;
        }
    }
    let line = String::from_utf8_lossy(&line).trim_end().to_string();
    let Some(status) = parse_status_line(&line) else {
        return Err(ProbeFailure::BadResponse { target, line });
    };
    if check.expected.matches(status) {
        Ok(())
    } else {
        Err(ProbeFailure::Status {
            target,
            status,
            expected: check.expected.clone(),
        })
    }
}

/// `HTTP/1.1 200 OK` → 200.
fn parse_status_line(line: &str) -> Option<u16> {
    let mut words = line.split_ascii_whitespace();
    let version = words.next()?;
    let code = words.next()?;
    if !version.starts_with("HTTP/") || code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    code.parse().ok()
}

// ---------------------------------------------------------------------------
// TLS without verification

/// Accepts any certificate: a health check asks "does it answer", like the
/// amphora's `check-ssl verify none`. Handshake signatures are still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_config() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    if let Some(config) = CONFIG.get() {
        return Ok(config.clone());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Ok(CONFIG.get_or_init(|| Arc::new(config)).clone())
}

async fn tls_handshake(
    stream: TcpStream,
    target: SocketAddr,
    host: Option<&str>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ProbeFailure> {
    let tls_error = |source| ProbeFailure::Tls { target, source };
    let config = tls_config().map_err(|e| tls_error(io::Error::other(e)))?;
    // SNI: the domain name if it is a DNS name; none for an address.
    let name = host
        .and_then(|h| rustls::pki_types::ServerName::try_from(h.to_string()).ok())
        .unwrap_or_else(|| rustls::pki_types::ServerName::IpAddress(target.ip().into()));
    TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(tls_error)
}

// ---------------------------------------------------------------------------
// UDP-CONNECT

/// Sends one empty datagram; down iff an ICMP error comes back before `deadline`.
async fn udp_connect(
    netns: Option<&Path>,
    target: SocketAddr,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), ProbeFailure> {
    let send = async {
        let af = family(target.ip());
        let fd = make_socket(netns, move || socket(af, SockType::Datagram, FLAGS, None)).await?;
        let socket = UdpSocket::from_std(std::net::UdpSocket::from(fd))
            .map_err(|source| ProbeFailure::Socket { source })?;
        socket
            .connect(target)
            .await
            .map_err(|source| ProbeFailure::Connect { target, source })?;
        socket
            .send(&[])
            .await
            .map_err(|source| ProbeFailure::Unreachable { target, source })?;
        Ok(socket)
    };
    let socket = tokio::time::timeout_at(deadline, send)
        .await
        .map_err(|_| ProbeFailure::Timeout { target, timeout })??;
    let mut buf = [0u8; 64];
    // An ICMP error for the datagram is reported on this recv.
    match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
        Err(_silence) => Ok(()),
        Ok(Ok(_reply)) => Ok(()),
        Ok(Err(source)) => Err(ProbeFailure::Unreachable { target, source }),
    }
}

// ---------------------------------------------------------------------------
// PING

/// Identifiers of the echo requests (raw sockets see every reply of the namespace).
static ICMP_IDENT: AtomicU32 = AtomicU32::new(0);

/// The internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in data.chunks(2) {
        let word = match pair {
            [a, b] => u16::from_be_bytes([*a, *b]),
            [a] => u16::from_be_bytes([*a, 0]),
            _ => 0,
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The loop leaves sum ≤ 0xffff.
    !(u16::try_from(sum).unwrap_or(0xffff))
}

/// Whether the socket is raw (sees IPv4 headers and foreign identifiers) or an
/// ICMP datagram socket (the kernel owns the identifier).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IcmpSocket {
    Raw,
    Datagram,
}

async fn ping(netns: Option<&Path>, target: SocketAddr) -> Result<(), ProbeFailure> {
    let ip = target.ip();
    let (af, proto, request_type, reply_type) = match ip {
        IpAddr::V4(_) => (AddressFamily::Inet, SockProtocol::Icmp, 8u8, 0u8),
        IpAddr::V6(_) => (AddressFamily::Inet6, SockProtocol::IcmpV6, 128u8, 129u8),
    };
    let fd = make_socket(netns, move || {
        socket(af, SockType::Datagram, FLAGS, proto).or_else(|errno| match errno {
            Errno::EPERM | Errno::EACCES => socket(af, SockType::Raw, FLAGS, proto),
            other => Err(other),
        })
    })
    .await?;
    let kind = match nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::SockType) {
        Ok(SockType::Raw) => IcmpSocket::Raw,
        _ => IcmpSocket::Datagram,
    };
    let socket = UdpSocket::from_std(std::net::UdpSocket::from(fd))
        .map_err(|source| ProbeFailure::Socket { source })?;
    // Port 0: raw and ICMP sockets take the address only.
    let peer = SocketAddr::new(ip, 0);
    socket
        .connect(peer)
        .await
        .map_err(|source| ProbeFailure::Connect { target, source })?;

    let ident_seed = ICMP_IDENT.fetch_add(1, Ordering::Relaxed);
    let ident = (std::process::id() as u16).wrapping_add(ident_seed as u16);
    let sequence = (ident_seed >> 16) as u16 ^ 0x6b72; // "kr"
    let mut nonce = [0u8; 16];
    nonce[..4].copy_from_slice(&ident_seed.to_be_bytes());
    nonce[4..].copy_from_slice(b"kuryr-probe!");
    let mut packet = Vec::with_capacity(8 + nonce.len());
    packet.extend_from_slice(&[request_type, 0, 0, 0]);
    packet.extend_from_slice(&ident.to_be_bytes());
    packet.extend_from_slice(&sequence.to_be_bytes());
    packet.extend_from_slice(&nonce);
    if ip.is_ipv4() {
        // ICMPv6's checksum covers a pseudo-header: the kernel fills it in (for
        // both socket kinds), as it does for ICMP datagram sockets.
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    socket
        .send(&packet)
        .await
        .map_err(|source| ProbeFailure::Unreachable { target, source })?;

    let mut buf = [0u8; 1500];
    loop {
        let n = socket
            .recv(&mut buf)
            .await
            .map_err(|source| ProbeFailure::Unreachable { target, source })?;
        let mut icmp = buf.get(..n).unwrap_or(&[]);
        if kind == IcmpSocket::Raw && ip.is_ipv4() {
            let header = usize::from(icmp.first().copied().unwrap_or(0) & 0x0f) * 4;
            icmp = icmp.get(header..).unwrap_or(&[]);
        }
        let Some((head, payload)) = icmp.split_at_checked(8) else {
            continue;
        };
        let ident_ok = kind == IcmpSocket::Datagram || head[4..6] == ident.to_be_bytes();
        if head[0] == reply_type
            && ident_ok
            && head[6..8] == sequence.to_be_bytes()
            && payload == nonce
        {
            return Ok(());
        }
    }
}

// ---------------------------------------------------------------------------
// The monitor

/// A member under watch: Octavia's health monitor applied to one member address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The member's network namespace (probed from inside), or None for the
    /// agent's own.
    pub netns: Option<PathBuf>,
    pub addr: SocketAddr,
    pub kind: ProbeKind,
    /// Between the starts of two probes (Octavia's `delay`; the first probe is at
    /// once, the second 0.5 to 1.5 delays later, spread by id).
    pub delay: Duration,
    /// For one probe (Octavia's `timeout`).
    pub timeout: Duration,
    /// Consecutive successes to go from Error to Online (`max_retries`).
    pub rise: u32,
    /// Consecutive failures to go from Online to Error (`max_retries_down`).
    pub fall: u32,
}

/// A member's operating status under a health monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    Online,
    /// Down (Octavia's `ERROR` operating status).
    Error,
}

/// The rise/fall hysteresis, haproxy's with its default `init-state up`: a new
/// member is up until proven otherwise, but has no definite state until its first
/// probe, which decides it at once (up: Online; down: Error without waiting for
/// `fall` failures). From then on `fall` consecutive failures turn Online into
/// Error and `rise` consecutive successes Error into Online.
#[derive(Debug, Clone)]
struct Hysteresis {
    rise: u32,
    fall: u32,
    state: Option<Health>,
    streak: u32,
}

impl Hysteresis {
    fn new(rise: u32, fall: u32) -> Hysteresis {
        Hysteresis {
            rise: rise.max(1),
            fall: fall.max(1),
            state: None,
            streak: 0,
        }
    }

    /// Records one probe result; the new state if it changed.
    fn record(&mut self, up: bool) -> Option<Health> {
        let next = match (self.state, up) {
            (None, true) => Health::Online,
            (None, false) => Health::Error,
            (Some(Health::Online), true) | (Some(Health::Error), false) => {
                self.streak = 0;
                return None;
            }
            (Some(current), _) => {
                self.streak += 1;
                let needed = if current == Health::Online {
                    self.fall
                } else {
                    self.rise
                };
                if self.streak < needed {
                    return None;
                }
                if current == Health::Online {
                    Health::Error
                } else {
                    Health::Online
                }
            }
        };
        self.streak = 0;
        self.state = Some(next);
        Some(next)
    }
}

/// The shortest delay between probes of one member.
const MIN_DELAY: Duration = Duration::from_millis(10);

/// Keeps members under watch and reports their health changes, each in order and
/// none lost, on the channel [`Monitor::new`] returns (an unbounded one: changes
/// are rare and a slow reader must not hold up probing). Dropping the monitor stops
/// every probe.
#[derive(Debug)]
pub struct Monitor {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
}

#[derive(Debug)]
struct Shared {
    members: Mutex<HashMap<String, Member>>,
    events: mpsc::UnboundedSender<(String, Health)>,
    generation: AtomicU32,
}

#[derive(Debug)]
struct Member {
    target: Target,
    generation: u32,
    health: Option<Health>,
    task: JoinHandle<()>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Member>> {
        self.members
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records and sends a change, unless the member was removed or replaced since.
    fn report(&self, id: &str, generation: u32, health: Health) {
        let mut members = self.lock();
        let Some(member) = members.get_mut(id) else {
            return;
        };
        if member.generation != generation {
            return;
        }
        tracing::info!(member = id, target = %member.target.addr, ?health, "member health changed");
        member.health = Some(health);
        // The receiver may be gone: health() still answers.
        let _ = self.events.send((id.to_string(), health));
    }
}

impl Monitor {
    /// Must be called within a tokio runtime (the probes run on it); panics
    /// otherwise, like `tokio::spawn`.
    pub fn new() -> (Monitor, mpsc::UnboundedReceiver<(String, Health)>) {
        let (events, rx) = mpsc::unbounded_channel();
        let monitor = Monitor {
            shared: Arc::new(Shared {
                members: Mutex::new(HashMap::new()),
                events,
                generation: AtomicU32::new(0),
            }),
            runtime: tokio::runtime::Handle::current(),
        };
        (monitor, rx)
    }

    /// Replaces the set of members under watch: new ids start (first probe now),
    /// removed ones stop, changed ones restart from scratch (no state until their
    /// first probe again); unchanged ones go on undisturbed.
    pub fn set(&self, targets: BTreeMap<String, Target>) {
        let mut members = self.shared.lock();
        members.retain(|id, member| {
            let keep = targets.get(id) == Some(&member.target);
            if !keep {
                member.task.abort();
                tracing::debug!(member = id.as_str(), "member no longer watched as it was");
            }
            keep
        });
        for (id, target) in targets {
            if members.contains_key(&id) {
                continue;
            }
            let generation = self.shared.generation.fetch_add(1, Ordering::Relaxed);
            let task = self.runtime.spawn(watch(
                self.shared.clone(),
                id.clone(),
                generation,
                target.clone(),
            ));
            members.insert(
                id,
                Member {
                    target,
                    generation,
                    health: None,
                    task,
                },
            );
        }
    }

    /// The members with a definite state (those probed at least once).
    pub fn health(&self) -> BTreeMap<String, Health> {
        self.shared
            .lock()
            .iter()
            .filter_map(|(id, m)| Some((id.clone(), m.health?)))
            .collect()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        for member in self.shared.lock().values() {
            member.task.abort();
        }
    }
}

/// When a member's second probe comes after its first: between half a delay and
/// one and a half, by a hash of its id. Members set together (1,000 when the agent
/// starts) are all probed at once first — their state is known quickly — but then
/// spread over the delay instead of in one burst every `delay` (haproxy's
/// `spread-checks`).
fn spread(id: &str, delay: Duration) -> Duration {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    id.hash(&mut hasher);
    let fraction = (hasher.finish() % 1024) as f64 / 1024.0;
    delay / 2 + delay.mul_f64(fraction)
}

async fn watch(shared: Arc<Shared>, id: String, generation: u32, target: Target) {
    let delay = target.delay.max(MIN_DELAY);
    let first = Instant::now();
    let mut ticker = tokio::time::interval_at(first + spread(&id, delay), delay);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut hysteresis = Hysteresis::new(target.rise, target.fall);
    let mut probed = false;
    loop {
        if probed {
            ticker.tick().await;
        }
        probed = true;
        let result = probe(
            target.netns.as_deref(),
            target.addr,
            &target.kind,
            target.timeout,
        )
        .await;
        if let Err(failure) = &result {
            tracing::debug!(member = id.as_str(), error = %failure, "health probe failed");
        }
        if let Some(health) = hysteresis.record(result.is_ok()) {
            shared.report(&id, generation, health);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_codes_follow_octavia() {
        let ok = [
            ("200", ExpectedCodes::List(vec![200])),
            ("200,202", ExpectedCodes::List(vec![200, 202])),
            ("200, 202 ,204", ExpectedCodes::List(vec![200, 202, 204])),
            ("200-204", ExpectedCodes::Range(200, 204)),
            ("404-404", ExpectedCodes::Range(404, 404)),
        ];
        for (input, codes) in ok {
            assert_eq!(ExpectedCodes::parse(input), Ok(codes.clone()), "{input}");
        }
        assert_eq!(
            ExpectedCodes::parse("200, 202 ,204").map(|c| c.to_string()),
            Ok("200,202,204".to_string())
        );
        for bad in [
            "",
            "20",
            "2000",
            "abc",
            "200,",
            ",200",
            "200-",
            "-200",
            "204-200",
            "200-202,204",
            "200,202-204",
            " 200",
            "200 ",
            "099",
            "600",
            "200-600",
            "200 - 204",
            "+20",
        ] {
            assert!(ExpectedCodes::parse(bad).is_err(), "{bad:?} accepted");
        }
        let range = ExpectedCodes::Range(200, 204);
        assert!(range.matches(200) && range.matches(204) && !range.matches(205));
        let list = ExpectedCodes::List(vec![200, 202]);
        assert!(list.matches(202) && !list.matches(201));
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(parse_status_line("HTTP/1.0 404"), Some(404));
        assert_eq!(parse_status_line("HTTP/1.1 20 OK"), None);
        assert_eq!(parse_status_line("SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status_line(""), None);
    }

    #[test]
    fn requests_cannot_be_smuggled() {
        let http = |f: fn(&mut HttpCheck)| {
            let mut check = HttpCheck::default();
            f(&mut check);
            ProbeKind::Http(check).validate()
        };
        assert_eq!(http(|_| {}), Ok(()));
        assert!(http(|c| c.method = "get".into()).is_err());
        assert!(http(|c| c.path = "/a b".into()).is_err());
        assert!(http(|c| c.path = "/\r\nX: y".into()).is_err());
        assert!(http(|c| c.path = "a".into()).is_err());
        assert!(http(|c| c.host = Some("a\r\nb".into())).is_err());
        assert_eq!(http(|c| c.host = Some("www.example.com".into())), Ok(()));
    }

    #[test]
    fn host_header_follows_version() {
        let target: SocketAddr = "[fd00::1]:8080".parse().unwrap_or_else(|_| unreachable!());
        let mut check = HttpCheck::default();
        assert_eq!(host_header(&check, target, 80), None);
        check.version = HttpVersion::Http11;
        assert_eq!(
            host_header(&check, target, 80).as_deref(),
            Some("[fd00::1]:8080")
        );
        check.host = Some("svc.example".into());
        assert_eq!(
            host_header(&check, target, 80).as_deref(),
            Some("svc.example")
        );
    }

    #[test]
    fn checksum_of_an_echo_request() {
        // type 8, code 0, id 0x1234, seq 1: the checksum makes the sum ~0.
        let mut packet = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1, b'a', b'b', b'c'];
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(checksum(&packet), 0);
    }

    #[test]
    fn hysteresis_like_haproxy() {
        // First result decides at once, either way.
        assert_eq!(Hysteresis::new(2, 3).record(true), Some(Health::Online));
        assert_eq!(Hysteresis::new(2, 3).record(false), Some(Health::Error));
        let mut h = Hysteresis::new(2, 3);
        h.record(true);
        // fall = 3 consecutive failures, a success in between resets.
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), Some(Health::Error));
        // rise = 2.
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(true), Some(Health::Online));
        // 0 counts as 1.
        let mut h = Hysteresis::new(0, 0);
        h.record(true);
        assert_eq!(h.record(false), Some(Health::Error));
        assert_eq!(h.record(true), Some(Health::Online));
    }
}
