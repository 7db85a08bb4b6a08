//! kuryr-dataplane's distributed load balancer against the real kernel (run as root;
//! without root the setup commands fail, so the tests fail).
//!
//! Network safety: nothing touches the machine's own namespace. Each test makes a
//! "host" namespace `kt-lb-<pid>-<n>-h` (br_netfilter sysctls set there only, a
//! `table inet kuryr` zone chain like the security-group table's, bridges `brqa` and
//! `brqb`, a vxlan device `vxlan-100` on `brqa` over a veth underlay with a default
//! route like a real host's), containers (veths onto the bridges) and a router
//! namespace built by hand (legs `qr-a`/`qr-b` on both bridges). Addresses are
//! 10.90.x.x / 10.255.0.0/24 inside those namespaces only. A Drop guard kills the
//! processes left in the namespaces and deletes them, also when a test panics.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::IpAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use kuryr_dataplane::MacAddr;
use kuryr_dataplane::lb::{self, Algorithm, Backend, L4Proto, LbHost, LbNet, LbService};
use kuryr_dataplane::netlink::Netlink;
use kuryr_dataplane::netns::NetNs;

const VIP: &str = "10.90.1.100";
const VIP_MAC: &str = "02:00:00:01:01:00";
const GWA: &str = "02:00:00:01:00:01";
const GWB: &str = "02:00:00:02:00:01";

struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::env::var_os("KURYR_LB_KEEP_LAB").is_some() {
            return;
        }
        for ns in &self.0 {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
        }
        for ns in &self.0 {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

struct Lab {
    tag: String,
    host: String,
    /// Servers started in the containers: killed and reaped on drop.
    servers: std::sync::Mutex<Vec<Child>>,
    _cleanup: Cleanup,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Ok(mut servers) = self.servers.lock() {
            for c in servers.iter_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ipn(ns: &str, args: &[&str]) -> String {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    run("ip", &full)
}

fn exec(ns: &str, args: &[&str]) -> String {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    run("ip", &full)
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn net(s: &str) -> IpNet {
    s.parse().expect("test network")
}

fn mac(s: &str) -> MacAddr {
    s.parse().expect("test MAC")
}

/// Containers: (name, tap, bridge, last MAC byte / address byte, subnet 1 or 2).
const CONTAINERS: &[(&str, &str, &str, u8, u8)] = &[
    ("c1", "tapc1", "brqa", 11, 1),
    ("b1", "tapb1", "brqa", 21, 1),
    ("b2", "tapb2", "brqa", 22, 1),
    ("b3", "tapb3", "brqa", 23, 1),
    ("c2", "tapc2", "brqb", 12, 2),
    ("b4", "tapb4", "brqb", 24, 2),
];

fn cmac(s: u8, b: u8) -> String {
    format!("02:00:00:0{s}:00:{b:02}")
}

fn caddr(s: u8, b: u8) -> String {
    format!("10.90.{s}.{b}")
}

impl Lab {
    fn new() -> Lab {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "kt-lb-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let host = format!("{tag}-h");
        let mut names = vec![format!("{tag}-r")];
        names.extend(CONTAINERS.iter().map(|c| format!("{tag}-{}", c.0)));
        names.push(host.clone());
        let lab = Lab {
            tag: tag.clone(),
            host: host.clone(),
            servers: std::sync::Mutex::new(Vec::new()),
            _cleanup: Cleanup(names),
        };
        let h = host.as_str();
        run("ip", &["netns", "add", h]);
        ipn(h, &["link", "set", "lo", "up"]);
        exec(
            h,
            &[
                "sysctl",
                "-qw",
                "net.bridge.bridge-nf-call-iptables=1",
                "net.bridge.bridge-nf-call-ip6tables=1",
                "net.ipv4.conf.all.rp_filter=0",
            ],
        );
        // The underlay and a default route, as a real host has.
        ipn(
            h,
            &["link", "add", "ul0", "type", "veth", "peer", "name", "ul1"],
        );
        ipn(h, &["addr", "add", "10.255.0.1/24", "dev", "ul0"]);
        ipn(h, &["link", "set", "ul0", "up"]);
        ipn(h, &["link", "set", "ul1", "up"]);
        ipn(h, &["route", "add", "default", "via", "10.255.0.254"]);
        for br in ["brqa", "brqb"] {
            ipn(h, &["link", "add", br, "type", "bridge"]);
            ipn(h, &["link", "set", br, "up"]);
        }
        ipn(
            h,
            &[
                "link",
                "add",
                "vxlan-100",
                "type",
                "vxlan",
                "id",
                "100",
                "local",
                "10.255.0.1",
                "dstport",
                "4789",
                "proxy",
                "nolearning",
            ],
        );
        ipn(h, &["link", "set", "vxlan-100", "master", "brqa", "up"]);
        // The security-group table's zones (one conntrack zone per bridge).
        let zones = "table inet kuryr {\n map zones { typeof iifname : ct zone; elements = { \"brqa\" : 1, \"brqb\" : 2 }; }\n chain zone { type filter hook prerouting priority raw; policy accept; ct zone set iifname map @zones; }\n}\n";
        let mut child = Command::new("ip")
            .args(["netns", "exec", h, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(zones.as_bytes())
            .expect("write");
        assert!(child.wait().expect("nft").success());
        for &(name, tap, br, b, s) in CONTAINERS {
            let ns = format!("{tag}-{name}");
            run("ip", &["netns", "add", &ns]);
            ipn(&ns, &["link", "set", "lo", "up"]);
            ipn(
                h,
                &[
                    "link", "add", tap, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            );
            ipn(h, &["link", "set", tap, "master", br, "up"]);
            ipn(&ns, &["link", "set", "eth0", "address", &cmac(s, b), "up"]);
            ipn(
                &ns,
                &["addr", "add", &format!("{}/24", caddr(s, b)), "dev", "eth0"],
            );
            ipn(&ns, &["route", "add", "default", "via", &caddr(s, 1)]);
        }
        let r = format!("{tag}-r");
        run("ip", &["netns", "add", &r]);
        ipn(&r, &["link", "set", "lo", "up"]);
        exec(&r, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        for (leg, tap, br, gw, s) in [
            ("qr-a", "tapra", "brqa", GWA, 1u8),
            ("qr-b", "taprb", "brqb", GWB, 2u8),
        ] {
            ipn(
                h,
                &[
                    "link", "add", tap, "type", "veth", "peer", "name", leg, "netns", &r,
                ],
            );
            ipn(h, &["link", "set", tap, "master", br, "up"]);
            ipn(&r, &["link", "set", leg, "address", gw, "up"]);
            ipn(
                &r,
                &["addr", "add", &format!("{}/24", caddr(s, 1)), "dev", leg],
            );
        }
        lab
    }

    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.tag)
    }

    fn netns(&self) -> NetNs {
        NetNs::open(format!("/run/netns/{}", self.host)).expect("open host ns")
    }

    /// Starts a TCP server in container `name` on `port`: it sends its name, then
    /// echoes.
    fn tcp_server(&self, name: &str, port: u16) {
        let ns = self.ns(name);
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, "socat"])
            .arg(format!("TCP-LISTEN:{port},fork,reuseaddr"))
            .arg(format!("SYSTEM:echo {name}; cat"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat server");
        self.servers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child);
    }

    fn udp_server(&self, name: &str, port: u16) {
        let ns = self.ns(name);
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, "socat"])
            .arg(format!("UDP-RECVFROM:{port},fork"))
            .arg(format!("SYSTEM:echo {name}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat udp server");
        self.servers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child);
    }

    fn wait_listening(&self, name: &str, port: u16, udp: bool) {
        let ns = self.ns(name);
        let flags = if udp { "-Hlnu" } else { "-Hlnt" };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            let out = exec(&ns, &["ss", flags]);
            if out.contains(&format!(":{port} ")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("server {name}:{port} not listening");
    }

    /// One TCP connection from container `from`; the backend's name, or None.
    fn tcp(&self, from: &str, dst: &str, port: u16) -> Option<String> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(from),
                "timeout",
                "3",
                "socat",
                "-T2",
                "-",
            ])
            .arg(format!("TCP:{dst}:{port}"))
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .expect("socat client");
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!s.is_empty()).then_some(s)
    }

    fn udp(&self, from: &str, dst: &str, port: u16) -> Option<String> {
        // UDP promises no delivery and the server forks a shell per datagram: on a
        // loaded CI host one exchange can take over a second, so a client retries
        // as a real one would (three tries of two seconds each).
        (0..3).find_map(|_| self.udp_once(from, dst, port))
    }

    fn udp_once(&self, from: &str, dst: &str, port: u16) -> Option<String> {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(from),
                "timeout",
                "4",
                "socat",
                "-T2",
                "-",
            ])
            .arg(format!("UDP:{dst}:{port}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat udp client");
        if let Some(mut i) = child.stdin.take() {
            let _ = i.write_all(b"hello\n");
        }
        let out = child.wait_with_output().expect("udp client");
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!s.is_empty()).then_some(s)
    }

    /// A held connection: (process, its stdin, its stdout, backend name).
    fn hold(&self, from: &str, dst: &str, port: u16) -> Held {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns(from), "socat", "-"])
            .arg(format!("TCP:{dst}:{port}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat held client");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut name = String::new();
        let _ = stdout.read_line(&mut name);
        Held {
            child,
            stdin,
            stdout,
            name: name.trim().to_string(),
        }
    }

    fn host_nft(&self) -> String {
        exec(&self.host, &["nft", "list", "ruleset"])
    }
}

struct Held {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    name: String,
}

impl Held {
    fn echo(&mut self, line: &str) -> String {
        let _ = writeln!(self.stdin, "{line}");
        let _ = self.stdin.flush();
        let mut got = String::new();
        let _ = self.stdout.read_line(&mut got);
        got.trim().to_string()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn backend(addr: &str, port: u16, weight: u32) -> Backend {
    Backend {
        address: ip(addr),
        port,
        weight,
    }
}

fn service(id: &str, proto: L4Proto, port: u16, alg: Algorithm, b: Vec<Backend>) -> LbService {
    LbService {
        id: id.to_string(),
        vip: ip(VIP),
        protocol: proto,
        port,
        algorithm: alg,
        backends: b,
        allowed: vec![],
    }
}

fn three() -> Vec<Backend> {
    vec![
        backend("10.90.1.21", 8080, 1),
        backend("10.90.1.22", 8080, 1),
        backend("10.90.1.23", 8080, 1),
    ]
}

/// The spec of the lab: VIP on network A, reachable from both bridges.
fn spec(services: Vec<LbService>) -> LbHost {
    let neighbours_a: Vec<(IpAddr, MacAddr)> = CONTAINERS
        .iter()
        .filter(|c| c.4 == 1)
        .map(|c| (ip(&caddr(1, c.3)), mac(&cmac(1, c.3))))
        .collect();
    let neighbours_b: Vec<(IpAddr, MacAddr)> = CONTAINERS
        .iter()
        .filter(|c| c.4 == 2)
        .map(|c| (ip(&caddr(2, c.3)), mac(&cmac(2, c.3))))
        .collect();
    LbHost {
        nets: vec![
            LbNet {
                bridge: "brqa".into(),
                vxlan: Some("vxlan-100".into()),
                table: 1001,
                subnets: vec![net("10.90.1.0/24")],
                gateways: vec![(ip("10.90.1.1"), mac(GWA))],
                neighbours: neighbours_a,
                vips: vec![(ip(VIP), mac(VIP_MAC))],
                hairpin_taps: vec!["tapb1".into(), "tapb2".into(), "tapb3".into()],
                services: services.clone(),
            },
            LbNet {
                bridge: "brqb".into(),
                vxlan: None,
                table: 1002,
                subnets: vec![net("10.90.2.0/24")],
                gateways: vec![(ip("10.90.2.1"), mac(GWB))],
                neighbours: neighbours_b,
                vips: vec![],
                hairpin_taps: vec!["tapb4".into()],
                services,
            },
        ],
    }
}

async fn converge(host: &Netlink, ns: &NetNs, spec: &LbHost) -> lb::LbStats {
    lb::converge(host, Some(ns), spec)
        .await
        .unwrap_or_else(|e| panic!("converge: {e}"))
}

#[tokio::test]
async fn balances_routes_refuses_hairpins_and_cleans_up() {
    let lab = Lab::new();
    let ns = lab.netns();
    let host = Netlink::in_namespace(&ns).expect("netlink");
    for b in ["b1", "b2", "b3", "b4"] {
        lab.tcp_server(b, 8080);
    }
    lab.udp_server("b1", 5353);
    for b in ["b1", "b2", "b3", "b4"] {
        lab.wait_listening(b, 8080, false);
    }
    lab.wait_listening("b1", 5353, true);
    let mut sticky = service("sticky", L4Proto::Tcp, 82, Algorithm::SourceIp, three());
    sticky.allowed = vec![];
    let mut only_b = service("only-b", L4Proto::Tcp, 84, Algorithm::RoundRobin, three());
    only_b.allowed = vec![net("10.90.2.0/24")];
    let services = vec![
        service("rr", L4Proto::Tcp, 80, Algorithm::RoundRobin, three()),
        service(
            "remote",
            L4Proto::Tcp,
            81,
            Algorithm::RoundRobin,
            vec![backend("10.90.2.24", 8080, 1)],
        ),
        sticky,
        service("empty", L4Proto::Tcp, 83, Algorithm::RoundRobin, three()),
        only_b,
        service(
            "udp",
            L4Proto::Udp,
            53,
            Algorithm::SourceIpPort,
            vec![backend("10.90.1.21", 5353, 1)],
        ),
    ];
    let full = spec(services.clone());
    let first = converge(&host, &ns, &full).await;
    assert!(first.tables_replaced && first.changes() > 0, "{first:?}");
    let again = converge(&host, &ns, &full).await;
    assert_eq!(again.changes(), 0, "second converge changed {again:?}");

    // VIP ARP answered by the vxlan device's proxy.
    assert!(lab.tcp("c1", VIP, 80).is_some());
    let neigh = ipn(&lab.ns("c1"), &["neigh", "show", VIP]);
    assert!(
        neigh.contains(VIP_MAC),
        "client's ARP entry for the VIP: {neigh}"
    );

    // Round robin over three backends, from the VIP's network; the connection works
    // at all only if the replies are un-NATed (the client talks to the VIP).
    let seen: Vec<String> = (0..6).filter_map(|_| lab.tcp("c1", VIP, 80)).collect();
    assert_eq!(seen.len(), 6, "{seen:?}");
    for b in ["b1", "b2", "b3"] {
        assert!(seen.iter().any(|s| s == b), "{b} never chosen: {seen:?}");
    }
    // From another network (DNAT at brqb, routed by the router to brqa and back).
    let seen: Vec<String> = (0..6).filter_map(|_| lab.tcp("c2", VIP, 80)).collect();
    assert_eq!(seen.len(), 6, "from brqb: {seen:?}");
    for b in ["b1", "b2", "b3"] {
        assert!(
            seen.iter().any(|s| s == b),
            "{b} never chosen from brqb: {seen:?}"
        );
    }
    // A backend behind the router.
    assert_eq!(lab.tcp("c1", VIP, 81).as_deref(), Some("b4"));
    // SOURCE_IP: one client, always the same backend.
    let sticky: Vec<String> = (0..5).filter_map(|_| lab.tcp("c1", VIP, 82)).collect();
    assert_eq!(sticky.len(), 5);
    assert!(sticky.iter().all(|s| *s == sticky[0]), "{sticky:?}");
    // UDP.
    assert_eq!(lab.udp("c1", VIP, 53).as_deref(), Some("b1"));
    // Allowed CIDRs: only network B's clients.
    assert!(lab.tcp("c2", VIP, 84).is_some());
    assert!(lab.tcp("c1", VIP, 84).is_none(), "c1 not allowed on :84");
    // Hairpin: b1 reaches itself through the VIP.
    let hair: Vec<String> = (0..6).filter_map(|_| lab.tcp("b1", VIP, 80)).collect();
    assert!(hair.iter().any(|s| s == "b1"), "hairpin: {hair:?}");
    assert_eq!(hair.len(), 6, "{hair:?}");

    // Member change: b3 drained (weight 0) while a connection to it is held.
    let mut held = None;
    for _ in 0..6 {
        let h = lab.hold("c1", VIP, 80);
        if h.name == "b3" {
            held = Some(h);
            break;
        }
    }
    let mut held = held.expect("a connection to b3");
    let mut drained = services.clone();
    drained[0].backends[2].weight = 0;
    let st = converge(&host, &ns, &spec(drained.clone())).await;
    assert_eq!(st.maps_updated, 1, "{st:?}");
    assert!(
        !st.tables_replaced,
        "a member change is a map update: {st:?}"
    );
    assert_eq!(held.echo("still there"), "still there");
    let after: Vec<String> = (0..6).filter_map(|_| lab.tcp("c1", VIP, 80)).collect();
    assert_eq!(after.len(), 6);
    assert!(
        !after.iter().any(|s| s == "b3"),
        "drained b3 chosen: {after:?}"
    );
    drop(held);

    // Empty backends: refused at once (positive control first).
    assert!(lab.tcp("c1", VIP, 83).is_some());
    drained[3].backends.clear();
    converge(&host, &ns, &spec(drained.clone())).await;
    let start = Instant::now();
    assert!(lab.tcp("c1", VIP, 83).is_none(), "empty listener answered");
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "refusal took {:?}",
        start.elapsed()
    );
    // The others still work after the rebuild.
    assert!(lab.tcp("c1", VIP, 80).is_some());
    let counters = lb::counters(Some(&ns)).await.expect("counters");
    assert!(
        counters.get("rr").copied().unwrap_or(0) >= 1,
        "{counters:?}"
    );

    // Nothing reached the host's own stack nor left by the underlay.
    let ruleset = lab.host_nft();
    assert!(ruleset.contains("table inet kuryr_lb"));
    let ul = ipn(&lab.host, &["-s", "link", "show", "ul1"]);
    let rx_packets: u64 = ul
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("RX:"))
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(rx_packets < 20, "underlay saw {rx_packets} packets:\n{ul}");

    // remove_all leaves nothing.
    lb::remove_all(&host, Some(&ns)).await.expect("remove_all");
    let ruleset = lab.host_nft();
    assert!(!ruleset.contains("kuryr_lb"), "{ruleset}");
    let rules = ipn(&lab.host, &["rule", "show"]) + &ipn(&lab.host, &["-6", "rule", "show"]);
    assert!(
        !rules.contains("lookup 1001") && !rules.contains("lookup 1002"),
        "{rules}"
    );
    let routes = ipn(
        &lab.host,
        &["route", "show", "table", "all", "proto", "108"],
    ) + &ipn(
        &lab.host,
        &["-6", "route", "show", "table", "all", "proto", "108"],
    );
    assert!(routes.trim().is_empty(), "{routes}");
    for dev in ["brqa", "brqb", "vxlan-100"] {
        let n = ipn(
            &lab.host,
            &["neigh", "show", "dev", dev, "nud", "permanent"],
        );
        assert!(n.trim().is_empty(), "{dev}: {n}");
    }
    let d = ipn(&lab.host, &["-d", "link", "show", "tapb1"]);
    assert!(d.contains("hairpin off"), "{d}");
    assert!(lab.tcp("c1", VIP, 80).is_none());
    let idle = lb::converge(&host, Some(&ns), &LbHost::default())
        .await
        .expect("empty converge");
    assert_eq!(idle.changes(), 0, "{idle:?}");
}

/// Commits an nf_tables transaction that touches no table of the load balancer
/// (as the agent's security-group changes do): the generation moves.
fn bump_generation(lab: &Lab) {
    exec(
        &lab.host,
        &["nft", "add table ip kt_bump; delete table ip kt_bump"],
    );
}

fn listed_map(lab: &Lab, map: &str) -> String {
    exec(&lab.host, &["nft", "list", "map", "inet", "kuryr_lb", map])
}

#[tokio::test]
async fn thousand_listeners_converge_in_reasonable_time() {
    let lab = Lab::new();
    let ns = lab.netns();
    let host = Netlink::in_namespace(&ns).expect("netlink");
    let services: Vec<LbService> = (0..1000u32)
        .map(|i| {
            let vip = format!("10.91.{}.{}", i / 250, i % 250 + 1);
            LbService {
                id: format!("listener-{i:04}"),
                vip: ip(&vip),
                protocol: L4Proto::Tcp,
                port: 80,
                algorithm: Algorithm::RoundRobin,
                backends: three(),
                allowed: vec![],
            }
        })
        .collect();
    let mut s = spec(services);
    s.nets.truncate(1);
    let t = Instant::now();
    let first = converge(&host, &ns, &s).await;
    let full = t.elapsed();
    assert!(first.tables_replaced, "{first:?}");
    let t = Instant::now();
    let idle = converge(&host, &ns, &s).await;
    let noop = t.elapsed();
    assert_eq!(idle.changes(), 0, "{idle:?}");

    // Another table changed: the generation moved, the tables are read back.
    bump_generation(&lab);
    let t = Instant::now();
    let idle = converge(&host, &ns, &s).await;
    let noop_moved = t.elapsed();
    assert_eq!(idle.changes(), 0, "verified, nothing to repair: {idle:?}");

    // One member gone.
    s.nets[0].services[500].backends.pop();
    let t = Instant::now();
    let st = converge(&host, &ns, &s).await;
    let member = t.elapsed();
    assert_eq!(st.maps_updated, 1, "{st:?}");
    assert!(!st.tables_replaced, "{st:?}");
    let map = listed_map(&lab, "m_listener-0500");
    assert!(
        map.contains("10.90.1.21 . 8080") && map.contains("10.90.1.22 . 8080"),
        "{map}"
    );
    assert!(
        !map.contains("10.90.1.23"),
        "removed member still mapped: {map}"
    );
    let other = listed_map(&lab, "m_listener-0499");
    assert!(other.contains("10.90.1.23 . 8080"), "{other}");

    // A member back after someone else's commit.
    bump_generation(&lab);
    s.nets[0].services[500].backends = three();
    let t = Instant::now();
    let st = converge(&host, &ns, &s).await;
    let member_moved = t.elapsed();
    assert_eq!(st.maps_updated, 1, "{st:?}");
    assert!(!st.tables_replaced, "{st:?}");
    let map = listed_map(&lab, "m_listener-0500");
    assert!(map.contains("10.90.1.23 . 8080"), "member not back: {map}");

    // A member with a new address (hairpin set and neighbour record change too).
    s.nets[0].services[7].backends[0] = backend("10.90.1.99", 8080, 1);
    s.nets[0]
        .neighbours
        .push((ip("10.90.1.99"), mac("02:00:00:01:00:99")));
    let t = Instant::now();
    let st = converge(&host, &ns, &s).await;
    let new_address = t.elapsed();
    assert!(!st.tables_replaced, "{st:?}");
    assert_eq!(st.neighbours, 1, "{st:?}");
    let map = listed_map(&lab, "m_listener-0007");
    assert!(map.contains("10.90.1.99 . 8080"), "{map}");
    let hair = exec(
        &lab.host,
        &["nft", "list", "set", "inet", "kuryr_lb", "hair4"],
    );
    assert!(hair.contains("10.90.1.99 . 10.90.1.99"), "{hair}");
    let own = exec(
        &lab.host,
        &["nft", "list", "set", "inet", "kuryr_lb", "own4"],
    );
    assert!(own.contains("\"brqa\" . 10.90.1.99"), "{own}");
    let idle = converge(&host, &ns, &s).await;
    assert_eq!(idle.changes(), 0, "{idle:?}");

    let listing = exec(&lab.host, &["nft", "list", "table", "inet", "kuryr_lb"]);
    println!(
        "1000 listeners: full converge {full:?}, no-op {noop:?}, no-op after a foreign \
         commit {noop_moved:?}, member change {member:?}, member change after a foreign \
         commit {member_moved:?}, member with a new address {new_address:?}, inet table \
         listing {} lines / {} bytes",
        listing.lines().count(),
        listing.len()
    );
    lb::remove_all(&host, Some(&ns)).await.expect("remove_all");
    let ruleset = lab.host_nft();
    assert!(!ruleset.contains("kuryr_lb"), "{ruleset}");
}

#[tokio::test]
async fn foreign_changes_are_repaired() {
    let lab = Lab::new();
    let ns = lab.netns();
    let host = Netlink::in_namespace(&ns).expect("netlink");
    for b in ["b1", "b2", "b3"] {
        lab.tcp_server(b, 8080);
    }
    for b in ["b1", "b2", "b3"] {
        lab.wait_listening(b, 8080, false);
    }
    let full = spec(vec![
        service("rr", L4Proto::Tcp, 80, Algorithm::RoundRobin, three()),
        service("rr2", L4Proto::Tcp, 81, Algorithm::RoundRobin, three()),
    ]);
    assert!(converge(&host, &ns, &full).await.tables_replaced);
    let pristine = listed_map(&lab, "m_rr");
    assert_eq!(pristine.matches(" . 8080").count(), 64, "{pristine}");
    // Traffic (counters move), then another table's commit: nothing to repair.
    assert!(lab.tcp("c1", VIP, 80).is_some());
    bump_generation(&lab);
    let st = converge(&host, &ns, &full).await;
    assert_eq!(st.changes(), 0, "{st:?}");

    // An element deleted from a backend map: that map is refilled.
    exec(
        &lab.host,
        &["nft", "delete element inet kuryr_lb m_rr { 5 }"],
    );
    let st = converge(&host, &ns, &full).await;
    assert_eq!(st.maps_updated, 1, "{st:?}");
    assert!(!st.tables_replaced, "{st:?}");
    assert_eq!(listed_map(&lab, "m_rr"), pristine);

    // A backend map flushed.
    exec(&lab.host, &["nft", "flush map inet kuryr_lb m_rr2"]);
    let st = converge(&host, &ns, &full).await;
    assert_eq!(st.maps_updated, 1, "{st:?}");
    assert_eq!(listed_map(&lab, "m_rr2").matches(" . 8080").count(), 64);
    let seen: Vec<String> = (0..3).filter_map(|_| lab.tcp("c1", VIP, 81)).collect();
    assert_eq!(seen.len(), 3, "after the repair: {seen:?}");

    // The hairpin set flushed, a rule deleted: the tables are rebuilt.
    exec(&lab.host, &["nft", "flush set inet kuryr_lb hair4"]);
    let st = converge(&host, &ns, &full).await;
    assert!(st.tables_replaced, "{st:?}");
    let hair = exec(
        &lab.host,
        &["nft", "list", "set", "inet", "kuryr_lb", "hair4"],
    );
    assert!(hair.contains("10.90.1.21 . 10.90.1.21"), "{hair}");
    exec(&lab.host, &["nft", "flush chain inet kuryr_lb pre_nat"]);
    let st = converge(&host, &ns, &full).await;
    assert!(st.tables_replaced, "{st:?}");
    assert!(lab.tcp("c1", VIP, 80).is_some());

    // The whole table deleted.
    exec(&lab.host, &["nft", "delete table inet kuryr_lb"]);
    let st = converge(&host, &ns, &full).await;
    assert!(st.tables_replaced, "{st:?}");
    assert!(lab.tcp("c1", VIP, 80).is_some());
    let st = converge(&host, &ns, &full).await;
    assert_eq!(st.changes(), 0, "{st:?}");
    lb::remove_all(&host, Some(&ns)).await.expect("remove_all");
}
