//! kuryr-dataplane's router namespaces against the real kernel (run as root).
//!
//! Network safety: no test touches the machine's own namespace. Each test makes a
//! "host" namespace with two bridges (`brqa`, `brqb`) that plays the agent's host,
//! two "containers" (a veth onto each bridge), and lets `router::converge` make the
//! router namespace `kqr-test-<pid>-<n>` (and the SNAT namespace `ksnat-test-…`)
//! itself. North-south tests add an external bridge `brqe` and an "outside" namespace
//! on it (203.0.113.1/24, TEST-NET-3). Every namespace of a test is deleted by a Drop
//! guard, also when the test panics; a listener a test starts is ended by its own
//! guard. Addresses (10.78.x.x, fd78::/16, 203.0.113.0/24) exist only inside those
//! namespaces. Results are read with iproute2 (`ip -j`, `bridge -j`), nft and ss, and
//! checked with ping and TCP (busybox nc) between the namespaces.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use kuryr_dataplane::MacAddr;
use kuryr_dataplane::netlink::Netlink;
use kuryr_dataplane::netns::NetNs;
use kuryr_dataplane::router::{self, LegSpec, RouterError, RouterSpec, RuleSpec, TableRoute};
use serde_json::Value;

const GA: &str = "fa:16:3e:78:01:01";
const GB: &str = "fa:16:3e:78:02:01";
const M1: &str = "fa:16:3e:78:01:11";
const M2: &str = "fa:16:3e:78:02:12";
/// The SNAT port on network A, the gateway port and the floating IP leg (external).
const SG: &str = "fa:16:3e:78:01:03";
const QG: &str = "fa:16:3e:78:0e:02";
const QF: &str = "fa:16:3e:78:0e:05";
/// The outside host on the external network.
const OUT: &str = "02:78:0e:00:00:01";

/// Deletes the named namespaces on drop (those that exist).
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The throwaway topology: host (brqa, brqb), c1 on brqa (10.78.1.11), c2 on brqb
/// (10.78.2.12), and the name of the router namespace converge will make.
struct Lab {
    host: String,
    c1: String,
    c2: String,
    router: String,
    extra: String,
    /// The SNAT namespace converge makes (north-south tests).
    snat: String,
    /// The outside host on `brqe` ([`Lab::external`]).
    outside: String,
    _cleanup: Cleanup,
}

impl Lab {
    fn new() -> Lab {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let host = format!("kt-rt-{tag}-h");
        let c1 = format!("kt-rt-{tag}-c1");
        let c2 = format!("kt-rt-{tag}-c2");
        let extra = format!("kt-rt-{tag}-x");
        let router = format!("kqr-test-{tag}");
        let snat = format!("ksnat-test-{tag}");
        let outside = format!("kt-rt-{tag}-o");
        // The guard first: whatever exists of these goes, even if setup fails.
        let cleanup = Cleanup(vec![
            router.clone(),
            snat.clone(),
            c1.clone(),
            c2.clone(),
            extra.clone(),
            outside.clone(),
            host.clone(),
        ]);
        run("ip", &["netns", "add", &host]);
        ipn(&host, &["link", "set", "lo", "up"]);
        for br in ["brqa", "brqb"] {
            ipn(&host, &["link", "add", br, "type", "bridge"]);
            ipn(&host, &["link", "set", br, "up"]);
        }
        let lab = Lab {
            host,
            c1,
            c2,
            router,
            extra,
            snat,
            outside,
            _cleanup: cleanup,
        };
        lab.container(&lab.c1, "t-c1", "brqa", M1, "10.78.1.11", "fd78:1::11", 1);
        lab.container(&lab.c2, "t-c2", "brqb", M2, "10.78.2.12", "fd78:2::12", 2);
        lab
    }

    /// A namespace with eth0 on `bridge` of the host namespace, addresses and default
    /// routes via the subnet's gateway (.1 / ::1).
    #[allow(clippy::too_many_arguments)]
    fn container(&self, ns: &str, tap: &str, bridge: &str, mac: &str, v4: &str, v6: &str, s: u8) {
        run("ip", &["netns", "add", ns]);
        exec(ns, &["sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0"]);
        ipn(ns, &["link", "set", "lo", "up"]);
        ipn(
            &self.host,
            &[
                "link", "add", tap, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ],
        );
        ipn(&self.host, &["link", "set", tap, "master", bridge, "up"]);
        ipn(ns, &["link", "set", "eth0", "address", mac, "up"]);
        ipn(ns, &["addr", "add", &format!("{v4}/24"), "dev", "eth0"]);
        ipn(
            ns,
            &["addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"],
        );
        ipn(
            ns,
            &["route", "add", "default", "via", &format!("10.78.{s}.1")],
        );
        ipn(
            ns,
            &[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd78:{s}::1"),
            ],
        );
    }

    fn host_netlink(&self) -> Netlink {
        let ns = NetNs::open(format!("/run/netns/{}", self.host)).expect("open host ns");
        Netlink::in_namespace(&ns).expect("netlink in host ns")
    }

    fn leg_a(&self) -> LegSpec {
        LegSpec {
            host_name: "tapa".to_string(),
            bridge: "brqa".to_string(),
            peer_name: "qr-a".to_string(),
            mac: mac(GA),
            mtu: 1450,
            addresses: vec![net("10.78.1.1/24"), net("fd78:1::1/64")],
            neighbours: BTreeMap::from([(ip("10.78.1.11"), mac(M1)), (ip("fd78:1::11"), mac(M1))]),
        }
    }

    fn leg_b(&self) -> LegSpec {
        LegSpec {
            host_name: "tapb".to_string(),
            bridge: "brqb".to_string(),
            peer_name: "qr-b".to_string(),
            mac: mac(GB),
            mtu: 1450,
            addresses: vec![net("10.78.2.1/24"), net("fd78:2::1/64")],
            neighbours: BTreeMap::from([(ip("10.78.2.12"), mac(M2)), (ip("fd78:2::12"), mac(M2))]),
        }
    }

    fn spec(&self) -> RouterSpec {
        RouterSpec {
            netns: self.router.clone(),
            legs: vec![self.leg_a(), self.leg_b()],
            routes: vec![],
            rules: vec![],
            table_routes: vec![],
            nat: None,
            announce: vec![],
        }
    }

    /// The external network: bridge `brqe` in the host namespace and the outside
    /// host on it, 203.0.113.1/24.
    fn external(&self) {
        let (h, o) = (self.host.as_str(), self.outside.as_str());
        ipn(h, &["link", "add", "brqe", "type", "bridge"]);
        ipn(h, &["link", "set", "brqe", "up"]);
        run("ip", &["netns", "add", o]);
        ipn(o, &["link", "set", "lo", "up"]);
        ipn(
            h,
            &[
                "link", "add", "t-out", "type", "veth", "peer", "name", "eth0", "netns", o,
            ],
        );
        ipn(h, &["link", "set", "t-out", "master", "brqe", "up"]);
        ipn(o, &["link", "set", "eth0", "address", OUT, "up"]);
        ipn(o, &["addr", "add", "203.0.113.1/24", "dev", "eth0"]);
    }

    /// The router's floating IP leg on the external network: 203.0.113.50 is c1's
    /// (10.78.1.11) floating IP.
    fn leg_fip(&self) -> LegSpec {
        LegSpec {
            host_name: "tapf".to_string(),
            bridge: "brqe".to_string(),
            peer_name: "qf-r".to_string(),
            mac: mac(QF),
            mtu: 1500,
            addresses: vec![net("203.0.113.50/32")],
            neighbours: BTreeMap::new(),
        }
    }

    /// The router namespace with c1's floating IP (the design's distributed FIP leg).
    fn fip_spec(&self) -> RouterSpec {
        RouterSpec {
            legs: vec![self.leg_a(), self.leg_b(), self.leg_fip()],
            rules: vec![
                RuleSpec {
                    priority: 33000,
                    from: Some(net("10.78.1.11/32")),
                    iif: None,
                    table: 200,
                },
                RuleSpec {
                    priority: 33999,
                    from: None,
                    iif: Some("lo".to_string()),
                    table: 200,
                },
            ],
            table_routes: vec![
                TableRoute {
                    table: 200,
                    dst: net("203.0.113.0/24"),
                    via: None,
                    dev: "qf-r".to_string(),
                },
                TableRoute {
                    table: 200,
                    dst: net("0.0.0.0/0"),
                    via: Some(ip("203.0.113.1")),
                    dev: "qf-r".to_string(),
                },
            ],
            nat: Some(FIP_NAT.to_string()),
            announce: vec![("qf-r".to_string(), ip("203.0.113.50"))],
            ..self.spec()
        }
    }

    /// Both containers reach each other through the router, IPv4 and IPv6.
    fn assert_routes_both_ways(&self) {
        for (from, to) in [
            (&self.c1, "10.78.2.12"),
            (&self.c1, "fd78:2::12"),
            (&self.c2, "10.78.1.11"),
            (&self.c2, "fd78:1::11"),
        ] {
            assert!(ping(from, to), "{from} -> {to} failed");
        }
    }
}

/// c1's floating IP, as the agent renders it (with its own whole-table replace).
const FIP_NAT: &str = "add table ip kuryr_nat
delete table ip kuryr_nat
table ip kuryr_nat {
  map fip_dnat { type ipv4_addr : ipv4_addr; elements = { 203.0.113.50 : 10.78.1.11 } }
  map fip_snat { type ipv4_addr : ipv4_addr; elements = { 10.78.1.11 : 203.0.113.50 } }
  chain pre { type nat hook prerouting priority dstnat; policy accept;
    iifname \"qf-r\" dnat ip to ip daddr map @fip_dnat
  }
  chain post { type nat hook postrouting priority srcnat; policy accept;
    oifname \"qf-r\" snat ip to ip saddr map @fip_snat
  }
}
";

/// The SNAT namespace's table: the router's subnets leave as its gateway address.
const SNAT_NAT: &str = "table ip kuryr_nat {
  chain post { type nat hook postrouting priority srcnat; policy accept;
    oifname \"qg-r\" ip saddr 10.78.0.0/16 snat ip to 203.0.113.2
  }
}
";

/// A one-shot TCP listener (`busybox nc -l`) in a namespace that answers its one
/// client with what `ss` sees of the connection there; ended on drop (by its pid).
struct Listener {
    child: Child,
}

impl Listener {
    fn start(ns: &str, port: u16) -> Listener {
        let report = format!("ss -Htn state established '( sport = :{port} )'");
        let child = Command::new("ip")
            .args([
                "netns", "exec", ns, "timeout", "15", "busybox", "nc", "-l", "-p",
            ])
            .arg(port.to_string())
            .args(["-e", "sh", "-c", &report])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting busybox nc");
        let listener = Listener { child };
        let deadline = Instant::now() + Duration::from_secs(3);
        let filter = format!("( sport = :{port} )");
        while exec(ns, &["ss", "-Htln", &filter]).trim().is_empty() {
            assert!(Instant::now() < deadline, "listener in {ns} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        listener
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // SIGTERM to `timeout`, which passes it on to nc.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

/// Connects from `client` to `dst:port` where a [`Listener`] runs in `server`;
/// returns the client's address as the server saw it (None: no connection).
fn tcp_peer(server: &str, client: &str, dst: &str, port: u16) -> Option<String> {
    let _listener = Listener::start(server, port);
    let mut child = Command::new("ip")
        .args([
            "netns", "exec", client, "timeout", "5", "busybox", "nc", dst,
        ])
        .arg(port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting busybox nc");
    // stdin stays open until the server has answered and closed.
    let stdin = child.stdin.take();
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut out);
    }
    drop(stdin);
    let _ = child.wait();
    // "0 0 [::ffff:10.78.1.11]:8080 [::ffff:203.0.113.1]:40000"
    let peer = out.split_whitespace().nth(3)?;
    let (addr, _port) = peer.rsplit_once(':')?;
    Some(
        addr.trim_start_matches('[')
            .trim_end_matches(']')
            .trim_start_matches("::ffff:")
            .to_string(),
    )
}

/// The outside host's ARP entry for `ip`: (lladdr, state).
fn outside_neighbour(ns: &str, ip: &str) -> Option<(String, String)> {
    let v = json("ip", ns, &["neigh", "show", ip, "dev", "eth0"]);
    let n = v.as_array()?.first()?;
    Some((
        n["lladdr"].as_str().unwrap_or("").to_string(),
        n["state"][0].as_str().unwrap_or("").to_string(),
    ))
}

/// Gives the outside host a stale ARP entry with a wrong MAC for `ip` (what a
/// gratuitous ARP must correct: Linux only updates entries it has).
fn seed_wrong_neighbour(ns: &str, ip: &str) {
    ipn(
        ns,
        &[
            "neigh",
            "replace",
            ip,
            "lladdr",
            "02:00:00:00:00:99",
            "dev",
            "eth0",
            "nud",
            "stale",
        ],
    );
}

/// Waits (up to a second) for the outside host's entry for `ip` to have `want`.
fn outside_learns(ns: &str, ip: &str, want: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        if outside_neighbour(ns, ip).is_some_and(|(m, _)| m == want) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// kuryr's rules (proto 107), both families: "pref N from X iif Y lookup T".
fn kuryr_rules(ns: &str) -> Vec<String> {
    let mut out = Vec::new();
    for family in ["-4", "-6"] {
        let v = json("ip", ns, &[family, "rule", "show"]);
        for r in v.as_array().into_iter().flatten() {
            if r["protocol"] != "107" && r["protocol"] != 107 {
                continue;
            }
            let mut s = format!(
                "{family} pref {} from {}",
                r["priority"],
                r["src"].as_str().unwrap_or("?")
            );
            if let Some(len) = r["srclen"].as_u64() {
                s.push_str(&format!("/{len}"));
            }
            if let Some(iif) = r["iif"].as_str() {
                s.push_str(&format!(" iif {iif}"));
            }
            s.push_str(&format!(" lookup {}", r["table"].as_str().unwrap_or("?")));
            out.push(s);
        }
    }
    out.sort();
    out
}

/// kuryr's routes (proto 107) of table `table`: "dst [via gw] dev d".
fn table_routes(ns: &str, table: &str) -> Vec<String> {
    let mut out = Vec::new();
    for family in ["-4", "-6"] {
        let v = json(
            "ip",
            ns,
            &[family, "route", "show", "table", "all", "proto", "107"],
        );
        for r in v.as_array().into_iter().flatten() {
            if r["table"] != table {
                continue;
            }
            let mut s = r["dst"].as_str().unwrap_or("?").to_string();
            if let Some(gw) = r["gateway"].as_str() {
                s.push_str(&format!(" via {gw}"));
            }
            s.push_str(&format!(" dev {}", r["dev"].as_str().unwrap_or("?")));
            out.push(s);
        }
    }
    out.sort();
    out
}

fn has_nat_table(ns: &str) -> bool {
    exec(ns, &["nft", "list", "tables"]).contains("table ip kuryr_nat")
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

fn succeeds(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// `ip -n NS ARGS...`
fn ipn(ns: &str, args: &[&str]) -> String {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// `ip netns exec NS ARGS...`
fn exec(ns: &str, args: &[&str]) -> String {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    run("ip", &full)
}

fn json(cmd: &str, ns: &str, args: &[&str]) -> Value {
    let mut full = vec!["-j", "-n", ns];
    full.extend_from_slice(args);
    let out = run(cmd, &full);
    if out.trim().is_empty() {
        return Value::Array(vec![]);
    }
    serde_json::from_str(&out).expect("iproute2 -j output is JSON")
}

fn has_link(ns: &str, name: &str) -> bool {
    succeeds("ip", &["-n", ns, "link", "show", "dev", name])
}

fn link(ns: &str, name: &str) -> Value {
    json("ip", ns, &["-d", "link", "show", "dev", name])[0].clone()
}

fn is_up(link: &Value) -> bool {
    link["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f == "UP"))
}

/// "addr/len" of every address of `dev`.
fn addrs(ns: &str, dev: &str) -> Vec<String> {
    let v = json("ip", ns, &["addr", "show", "dev", dev]);
    v[0]["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or("?"), a["prefixlen"]))
        .collect()
}

/// (dst, lladdr, state) of the neighbours of `dev`.
fn neighbours(ns: &str, dev: &str) -> Vec<(String, String, String)> {
    let v = json("ip", ns, &["neigh", "show", "dev", dev]);
    v.as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            (
                n["dst"].as_str().unwrap_or("?").to_string(),
                n["lladdr"].as_str().unwrap_or("").to_string(),
                n["state"]
                    .as_array()
                    .and_then(|s| s.first())
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect()
}

/// The bridge's own FDB entries (not NTF_SELF ones) for `mac` on `bridge`:
/// (port, state, sticky).
fn fdb(ns: &str, bridge: &str, mac: &str) -> Vec<(String, String, bool)> {
    let v = json("bridge", ns, &["fdb", "show", "br", bridge]);
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["mac"] == mac && e["master"] == bridge)
        .map(|e| {
            (
                e["ifname"].as_str().unwrap_or("?").to_string(),
                e["state"].as_str().unwrap_or("").to_string(),
                e["flags"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|f| f == "sticky")),
            )
        })
        .collect()
}

/// kuryr's routes (proto 107) in the router namespace: "dst via gw[,gw]".
fn kuryr_routes(ns: &str) -> Vec<String> {
    let mut out = Vec::new();
    for family in ["-4", "-6"] {
        let v = json("ip", ns, &[family, "route", "show", "proto", "107"]);
        for r in v.as_array().into_iter().flatten() {
            let hops: Vec<&str> = match r["nexthops"].as_array() {
                Some(hops) => hops.iter().filter_map(|h| h["gateway"].as_str()).collect(),
                None => r["gateway"].as_str().into_iter().collect(),
            };
            out.push(format!(
                "{} via {}",
                r["dst"].as_str().unwrap_or("?"),
                hops.join(",")
            ));
        }
    }
    out.sort();
    out
}

fn sysctl(ns: &str, key: &str) -> String {
    exec(ns, &["sysctl", "-n", key]).trim().to_string()
}

/// One echo answered, within three tries (the first may wait for ARP/ND).
fn ping(from: &str, to: &str) -> bool {
    (0..3).any(|_| {
        succeeds(
            "ip",
            &["netns", "exec", from, "ping", "-c", "1", "-W", "1", to],
        )
    })
}

fn net(s: &str) -> IpNet {
    s.parse().expect("test network literal")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address literal")
}

fn mac(s: &str) -> MacAddr {
    s.parse().expect("test MAC literal")
}

async fn converge(host: &Netlink, spec: &RouterSpec) -> usize {
    router::converge(host, spec)
        .await
        .unwrap_or_else(|e| panic!("converge {}: {e}", spec.netns))
}

#[tokio::test]
async fn router_routes_between_subnets_and_is_idempotent() {
    let lab = Lab::new();
    let host = lab.host_netlink();
    let spec = lab.spec();
    assert!(converge(&host, &spec).await > 0);
    let r = lab.router.as_str();
    assert!(Path::new("/run/netns").join(r).exists());
    assert!(
        router::list(router::NETNS_PREFIX)
            .expect("list")
            .contains(&lab.router)
    );

    for (key, want) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv6.conf.all.forwarding", "1"),
        ("net.ipv4.conf.all.send_redirects", "0"),
        ("net.ipv4.conf.default.send_redirects", "0"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
        ("net.ipv4.conf.all.arp_ignore", "1"),
        ("net.ipv4.conf.default.arp_ignore", "1"),
        ("net.ipv4.conf.all.arp_announce", "2"),
        ("net.ipv4.conf.default.arp_announce", "2"),
        ("net.ipv6.conf.all.accept_dad", "0"),
        ("net.ipv6.conf.default.accept_dad", "0"),
        ("net.ipv6.conf.all.accept_ra", "0"),
        ("net.ipv6.conf.default.accept_ra", "0"),
        // the legs were made after the defaults were set
        ("net.ipv6.conf.qr-a.accept_dad", "0"),
        ("net.ipv4.conf.qr-b.send_redirects", "0"),
    ] {
        assert_eq!(sysctl(r, key), want, "{key}");
    }
    assert!(is_up(&link(r, "lo")));

    for (leg, gw, br) in [("a", GA, "brqa"), ("b", GB, "brqb")] {
        let qr = link(r, &format!("qr-{leg}"));
        assert_eq!(qr["address"], gw, "{qr}");
        assert_eq!(qr["mtu"], 1450);
        assert_eq!(qr["linkinfo"]["info_kind"], "veth");
        assert!(is_up(&qr), "{qr}");
        let tap = link(&lab.host, &format!("tap{leg}"));
        assert_eq!(tap["master"], br, "{tap}");
        assert_eq!(tap["mtu"], 1450);
        assert_eq!(tap["linkinfo"]["info_kind"], "veth");
        assert!(is_up(&tap), "{tap}");
        assert_eq!(
            fdb(&lab.host, br, gw),
            vec![(format!("tap{leg}"), "static".to_string(), true)],
            "sticky static FDB entry for the gateway MAC on the host end"
        );
    }

    let a = addrs(r, "qr-a");
    assert!(a.contains(&"10.78.1.1/24".to_string()), "{a:?}");
    assert!(a.contains(&"fd78:1::1/64".to_string()), "{a:?}");
    assert!(
        a.iter().any(|x| x.starts_with("fe80:")),
        "link-local kept: {a:?}"
    );
    assert_eq!(a.len(), 3, "{a:?}");
    let v = json(
        "ip",
        r,
        &["-6", "addr", "show", "dev", "qr-a", "scope", "global"],
    );
    assert_eq!(v[0]["addr_info"][0]["nodad"], true, "{v}");

    let mut n = neighbours(r, "qr-b");
    n.sort();
    assert_eq!(
        n,
        vec![
            (
                "10.78.2.12".to_string(),
                M2.to_string(),
                "PERMANENT".to_string()
            ),
            (
                "fd78:2::12".to_string(),
                M2.to_string(),
                "PERMANENT".to_string()
            ),
        ]
    );
    assert!(kuryr_routes(r).is_empty());

    lab.assert_routes_both_ways();
    // Nothing to do the second time, also after traffic (learned entries are not ours).
    assert_eq!(converge(&host, &spec).await, 0);
    assert_eq!(converge(&host, &spec).await, 0);
}

#[tokio::test]
async fn converge_repairs_drift() {
    let lab = Lab::new();
    let host = lab.host_netlink();
    let spec = lab.spec();
    let r = lab.router.as_str();
    let h = lab.host.as_str();
    assert!(converge(&host, &spec).await > 0);
    lab.assert_routes_both_ways();

    // An address deleted, a stray one added: back to exactly the spec's.
    ipn(r, &["addr", "del", "10.78.1.1/24", "dev", "qr-a"]);
    ipn(r, &["addr", "add", "10.78.1.5/24", "dev", "qr-a"]);
    ipn(r, &["addr", "add", "fd78:1::5/64", "dev", "qr-a", "nodad"]);
    // 2 deletions, 1 address, and the permanent ARP entry: removing the last IPv4
    // address of a device flushes its ARP table, permanent entries included.
    assert_eq!(converge(&host, &spec).await, 4);
    let mut a = addrs(r, "qr-a");
    a.retain(|x| !x.starts_with("fe80:"));
    a.sort();
    assert_eq!(a, vec!["10.78.1.1/24", "fd78:1::1/64"]);
    assert_eq!(converge(&host, &spec).await, 0);
    lab.assert_routes_both_ways();

    // Neighbours: one deleted, one with a wrong MAC, a stray permanent one; a
    // learned-looking (stale) one is not kuryr's and stays.
    ipn(r, &["neigh", "del", "10.78.2.12", "dev", "qr-b"]);
    ipn(
        r,
        &[
            "neigh",
            "replace",
            "fd78:2::12",
            "lladdr",
            "02:00:00:00:00:99",
            "dev",
            "qr-b",
            "nud",
            "permanent",
        ],
    );
    ipn(
        r,
        &[
            "neigh",
            "add",
            "10.78.2.99",
            "lladdr",
            "02:00:00:00:00:98",
            "dev",
            "qr-b",
            "nud",
            "permanent",
        ],
    );
    ipn(
        r,
        &[
            "neigh",
            "add",
            "10.78.2.77",
            "lladdr",
            "02:00:00:00:00:77",
            "dev",
            "qr-b",
            "nud",
            "stale",
        ],
    );
    assert_eq!(converge(&host, &spec).await, 3);
    let mut n = neighbours(r, "qr-b");
    n.sort();
    assert_eq!(
        n,
        vec![
            (
                "10.78.2.12".to_string(),
                M2.to_string(),
                "PERMANENT".to_string()
            ),
            (
                "10.78.2.77".to_string(),
                "02:00:00:00:00:77".to_string(),
                "STALE".to_string()
            ),
            (
                "fd78:2::12".to_string(),
                M2.to_string(),
                "PERMANENT".to_string()
            ),
        ]
    );
    assert_eq!(converge(&host, &spec).await, 0);
    lab.assert_routes_both_ways();

    // A leg deleted from inside the router (the host end goes with it).
    ipn(r, &["link", "del", "qr-b"]);
    assert!(!has_link(h, "tapb"));
    assert!(converge(&host, &spec).await > 0);
    assert_eq!(
        fdb(h, "brqb", GB),
        vec![("tapb".to_string(), "static".to_string(), true)]
    );
    assert_eq!(neighbours(r, "qr-b").len(), 2);
    assert_eq!(converge(&host, &spec).await, 0);
    lab.assert_routes_both_ways();

    // A leg deleted from the host side.
    ipn(h, &["link", "del", "tapa"]);
    assert!(!has_link(r, "qr-a"));
    assert!(converge(&host, &spec).await > 0);
    assert_eq!(converge(&host, &spec).await, 0);
    lab.assert_routes_both_ways();

    // Wrong settings: host end off its bridge, router end with another mtu and down
    // (which also loses its neighbours and IPv6 addresses).
    ipn(h, &["link", "set", "tapa", "nomaster"]);
    ipn(r, &["link", "set", "qr-a", "mtu", "1400"]);
    ipn(r, &["link", "set", "qr-a", "down"]);
    assert!(converge(&host, &spec).await > 0);
    assert_eq!(link(h, "tapa")["master"], "brqa");
    let qr = link(r, "qr-a");
    assert_eq!(qr["mtu"], 1450);
    assert!(is_up(&qr));
    assert_eq!(
        fdb(h, "brqa", GA),
        vec![("tapa".to_string(), "static".to_string(), true)]
    );
    assert_eq!(converge(&host, &spec).await, 0);
    lab.assert_routes_both_ways();

    // A name taken by something else on the host: replaced by the leg.
    ipn(r, &["link", "del", "qr-b"]);
    ipn(h, &["link", "add", "tapb", "type", "bridge"]);
    assert!(converge(&host, &spec).await > 0);
    assert_eq!(link(h, "tapb")["linkinfo"]["info_kind"], "veth");
    assert_eq!(converge(&host, &spec).await, 0);
    lab.assert_routes_both_ways();

    // FDB: the entry made plain static (it would roam), and a stray static entry.
    run(
        "bridge",
        &[
            "-n", h, "fdb", "replace", GA, "dev", "tapa", "master", "static",
        ],
    );
    run(
        "bridge",
        &[
            "-n",
            h,
            "fdb",
            "add",
            "02:00:00:00:00:55",
            "dev",
            "tapa",
            "master",
            "static",
        ],
    );
    assert_eq!(
        fdb(h, "brqa", GA),
        vec![("tapa".to_string(), "static".to_string(), false)]
    );
    assert_eq!(converge(&host, &spec).await, 2);
    assert_eq!(
        fdb(h, "brqa", GA),
        vec![("tapa".to_string(), "static".to_string(), true)]
    );
    assert!(fdb(h, "brqa", "02:00:00:00:00:55").is_empty());

    // Sysctls and lo.
    exec(r, &["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
    assert!(!ping(&lab.c1, "10.78.2.12"), "forwarding off still routes");
    ipn(r, &["link", "set", "lo", "down"]);
    assert_eq!(converge(&host, &spec).await, 2);
    assert_eq!(sysctl(r, "net.ipv4.ip_forward"), "1");
    assert!(is_up(&link(r, "lo")));

    // Stray veths go, whatever their names (a pair inside the namespace is one
    // change, one to the host another); links that are not veths are not legs.
    ipn(
        r,
        &[
            "link", "add", "qr-zzz", "type", "veth", "peer", "name", "other0",
        ],
    );
    ipn(
        h,
        &[
            "link", "add", "tapz", "type", "veth", "peer", "name", "sg-zzz", "netns", r,
        ],
    );
    ipn(r, &["link", "add", "keep0", "type", "bridge"]);
    assert_eq!(converge(&host, &spec).await, 2);
    assert!(!has_link(r, "qr-zzz") && !has_link(r, "other0"));
    assert!(!has_link(r, "sg-zzz") && !has_link(h, "tapz"));
    assert!(has_link(r, "keep0"));
    assert_eq!(converge(&host, &spec).await, 0);
    lab.assert_routes_both_ways();
}

#[tokio::test]
async fn spec_changes_legs_macs_and_routes() {
    let lab = Lab::new();
    let host = lab.host_netlink();
    let r = lab.router.as_str();
    let h = lab.host.as_str();
    // c2 answers for 10.78.9.1 and fd78:9::1: the extra routes' destination.
    ipn(&lab.c2, &["addr", "add", "10.78.9.1/32", "dev", "lo"]);
    ipn(&lab.c2, &["addr", "add", "fd78:9::1/128", "dev", "lo"]);
    let mut spec = lab.spec();
    spec.routes = vec![
        (net("10.78.9.0/24"), ip("10.78.2.12")),
        (net("fd78:9::/64"), ip("fd78:2::12")),
    ];
    assert!(converge(&host, &spec).await > 0);
    assert_eq!(
        kuryr_routes(r),
        vec!["10.78.9.0/24 via 10.78.2.12", "fd78:9::/64 via fd78:2::12"]
    );
    assert!(ping(&lab.c1, "10.78.9.1"));
    assert!(ping(&lab.c1, "fd78:9::1"));
    assert_eq!(converge(&host, &spec).await, 0);

    // Somebody else's route is left alone; a deleted extra route comes back.
    ipn(r, &["route", "add", "10.78.8.0/24", "via", "10.78.2.12"]);
    ipn(r, &["route", "del", "10.78.9.0/24"]);
    assert_eq!(converge(&host, &spec).await, 1);
    assert!(ping(&lab.c1, "10.78.9.1"));
    assert!(!json("ip", r, &["route", "show", "10.78.8.0/24"])[0].is_null());

    // Two next hops for a destination: one multipath route (both families).
    spec.routes.push((net("10.78.9.0/24"), ip("10.78.1.11")));
    spec.routes.push((net("fd78:9::/64"), ip("fd78:1::11")));
    assert_eq!(converge(&host, &spec).await, 4);
    assert_eq!(
        kuryr_routes(r),
        vec![
            "10.78.9.0/24 via 10.78.1.11,10.78.2.12",
            "fd78:9::/64 via fd78:1::11,fd78:2::12"
        ]
    );
    assert_eq!(converge(&host, &spec).await, 0);
    spec.routes.truncate(2);
    assert_eq!(converge(&host, &spec).await, 4);
    assert_eq!(
        kuryr_routes(r),
        vec!["10.78.9.0/24 via 10.78.2.12", "fd78:9::/64 via fd78:2::12"]
    );

    // No extra routes: kuryr's go, the connected ones and somebody else's stay.
    spec.routes.clear();
    assert_eq!(converge(&host, &spec).await, 2);
    assert!(kuryr_routes(r).is_empty());
    assert!(!ping(&lab.c1, "10.78.9.1"));
    let main = json("ip", r, &["route", "show"]);
    let dsts: Vec<&str> = main
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x["dst"].as_str())
        .collect();
    for want in ["10.78.1.0/24", "10.78.2.0/24", "10.78.8.0/24"] {
        assert!(dsts.contains(&want), "{want} missing: {main}");
    }

    // A new MAC for leg A: set on the router end, the FDB entry follows.
    let new_ga = "fa:16:3e:78:01:02";
    spec.legs[0].mac = mac(new_ga);
    assert!(converge(&host, &spec).await >= 2);
    assert_eq!(link(r, "qr-a")["address"], new_ga);
    assert_eq!(
        fdb(h, "brqa", new_ga),
        vec![("tapa".to_string(), "static".to_string(), true)]
    );
    assert!(fdb(h, "brqa", GA).is_empty());
    ipn(&lab.c1, &["neigh", "flush", "dev", "eth0"]);
    assert_eq!(converge(&host, &spec).await, 0);
    lab.assert_routes_both_ways();

    // A leg leaves the spec: both ends go.
    spec.legs.truncate(1);
    assert_eq!(converge(&host, &spec).await, 1);
    assert!(!has_link(r, "qr-b"));
    assert!(!has_link(h, "tapb"));
    assert_eq!(converge(&host, &spec).await, 0);
    assert!(!ping(&lab.c1, "10.78.2.12"));

    // A route that cannot be added is reported, after everything else was done.
    spec.legs.push(lab.leg_b());
    spec.routes = vec![
        (net("10.78.50.0/24"), ip("10.99.0.1")),
        (net("10.78.9.0/24"), ip("10.78.2.12")),
    ];
    match router::converge(&host, &spec).await {
        Err(RouterError::Route { route, .. }) => assert_eq!(route, "10.78.50.0/24 via 10.99.0.1"),
        other => panic!("expected a route error, got {other:?}"),
    }
    assert!(has_link(r, "qr-b"));
    assert_eq!(kuryr_routes(r), vec!["10.78.9.0/24 via 10.78.2.12"]);
    lab.assert_routes_both_ways();
}

#[tokio::test]
async fn sticky_fdb_entry_does_not_roam() {
    let lab = Lab::new();
    let host = lab.host_netlink();
    let spec = lab.spec();
    let h = lab.host.as_str();
    assert!(converge(&host, &spec).await > 0);
    // Another port of brqa sends frames with the gateway MAC as source.
    let x = lab.extra.as_str();
    run("ip", &["netns", "add", x]);
    ipn(
        h,
        &[
            "link", "add", "t-x", "type", "veth", "peer", "name", "eth0", "netns", x,
        ],
    );
    ipn(h, &["link", "set", "t-x", "master", "brqa", "up"]);
    ipn(x, &["link", "set", "eth0", "address", GA, "up"]);
    ipn(x, &["addr", "add", "10.78.1.99/24", "dev", "eth0"]);
    let impostor = || {
        // ARP requests (broadcast, source GA) and echo requests to c1
        let _ = succeeds(
            "ip",
            &[
                "netns",
                "exec",
                x,
                "ping",
                "-c",
                "2",
                "-i",
                "0.2",
                "-W",
                "1",
                "10.78.1.11",
            ],
        );
    };
    impostor();
    assert_eq!(
        fdb(h, "brqa", GA),
        vec![("tapa".to_string(), "static".to_string(), true)]
    );
    // Control: a plain static entry does move (so the frames did reach the bridge).
    run(
        "bridge",
        &[
            "-n", h, "fdb", "replace", GA, "dev", "tapa", "master", "static",
        ],
    );
    impostor();
    assert_eq!(
        fdb(h, "brqa", GA),
        vec![("t-x".to_string(), "static".to_string(), false)]
    );
    // converge puts it back, sticky, on the router's port.
    ipn(h, &["link", "set", "t-x", "down"]);
    assert_eq!(converge(&host, &spec).await, 1);
    assert_eq!(
        fdb(h, "brqa", GA),
        vec![("tapa".to_string(), "static".to_string(), true)]
    );
    ipn(&lab.c1, &["neigh", "flush", "dev", "eth0"]);
    lab.assert_routes_both_ways();
}

#[tokio::test]
async fn remove_deletes_namespace_and_host_ends_and_list_filters() {
    let lab = Lab::new();
    let host = lab.host_netlink();
    let spec = lab.spec();
    let path = Path::new("/run/netns").join(&lab.router);
    assert!(converge(&host, &spec).await > 0);
    let names = router::list(router::NETNS_PREFIX).expect("list");
    assert!(names.contains(&lab.router), "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("kqr-")), "{names:?}");
    assert!(!names.contains(&lab.host));

    router::remove(&host, &lab.router).await.expect("remove");
    assert!(!path.exists());
    assert!(!has_link(&lab.host, "tapa"));
    assert!(!has_link(&lab.host, "tapb"));
    assert!(fdb(&lab.host, "brqa", GA).is_empty());
    assert!(
        !router::list(router::NETNS_PREFIX)
            .expect("list")
            .contains(&lab.router)
    );
    // Removing what is gone is success.
    router::remove(&host, &lab.router)
        .await
        .expect("remove again");

    // A file left by a crash (not a mount) is taken over; the router works again.
    std::fs::write(&path, b"").expect("stale netns file");
    assert!(converge(&host, &spec).await > 0);
    assert_eq!(
        std::fs::metadata(&path).map(|m| m.len()).ok(),
        Some(0),
        "nsfs file"
    );
    ipn(&lab.c1, &["neigh", "flush", "dev", "eth0"]);
    lab.assert_routes_both_ways();
    assert_eq!(converge(&host, &spec).await, 0);
    router::remove(&host, &lab.router).await.expect("remove");
    assert!(!path.exists());
}

#[tokio::test]
async fn bad_specs_and_missing_bridges_are_errors() {
    let lab = Lab::new();
    let host = lab.host_netlink();
    let mut spec = lab.spec();
    spec.legs[1].peer_name = "qr-a".to_string();
    assert!(matches!(
        router::converge(&host, &spec).await,
        Err(RouterError::InvalidSpec { .. })
    ));
    assert!(
        !Path::new("/run/netns").join(&lab.router).exists(),
        "nothing made for an invalid spec"
    );

    let mut spec = lab.spec();
    spec.legs[1].bridge = "brqzz".to_string();
    match router::converge(&host, &spec).await {
        Err(RouterError::BridgeMissing { bridge, leg, .. }) => {
            assert_eq!((bridge.as_str(), leg.as_str()), ("brqzz", "qr-b"));
        }
        other => panic!("expected a missing bridge, got {other:?}"),
    }
    // Once the bridge exists, the same spec converges.
    ipn(&lab.host, &["link", "add", "brqzz", "type", "bridge"]);
    assert!(converge(&host, &spec).await > 0);
    assert_eq!(link(&lab.host, "tapb")["master"], "brqzz");
}

#[tokio::test]
async fn snat_namespace_sends_the_subnets_out_as_the_gateway_address() {
    let lab = Lab::new();
    lab.external();
    let host = lab.host_netlink();
    let (r, sn, o) = (lab.router.as_str(), lab.snat.as_str(), lab.outside.as_str());
    // kqr: subnet A's traffic that main has no route for goes to the SNAT port.
    let mut kqr = lab.spec();
    kqr.legs[0].neighbours.insert(ip("10.78.1.3"), mac(SG));
    kqr.legs[0].neighbours.insert(ip("fd78:1::3"), mac(SG));
    kqr.rules = vec![
        RuleSpec {
            priority: 40001,
            from: Some(net("10.78.1.0/24")),
            iif: None,
            table: 1001,
        },
        RuleSpec {
            priority: 40001,
            from: Some(net("fd78:1::/64")),
            iif: None,
            table: 1001,
        },
    ];
    kqr.table_routes = vec![
        TableRoute {
            table: 1001,
            dst: net("0.0.0.0/0"),
            via: Some(ip("10.78.1.3")),
            dev: "qr-a".to_string(),
        },
        TableRoute {
            table: 1001,
            dst: net("::/0"),
            via: Some(ip("fd78:1::3")),
            dev: "qr-a".to_string(),
        },
    ];
    // ksnat: the SNAT port on A, the gateway port on the external network.
    let snat = RouterSpec {
        netns: lab.snat.clone(),
        legs: vec![
            LegSpec {
                host_name: "tapsa".to_string(),
                bridge: "brqa".to_string(),
                peer_name: "sg-a".to_string(),
                mac: mac(SG),
                mtu: 1450,
                addresses: vec![net("10.78.1.3/24")],
                neighbours: BTreeMap::from([(ip("10.78.1.11"), mac(M1))]),
            },
            LegSpec {
                host_name: "tapg".to_string(),
                bridge: "brqe".to_string(),
                peer_name: "qg-r".to_string(),
                mac: mac(QG),
                mtu: 1500,
                addresses: vec![net("203.0.113.2/24")],
                neighbours: BTreeMap::new(),
            },
        ],
        routes: vec![(net("0.0.0.0/0"), ip("203.0.113.1"))],
        rules: vec![],
        table_routes: vec![],
        nat: Some(SNAT_NAT.to_string()),
        announce: vec![("qg-r".to_string(), ip("203.0.113.2"))],
    };
    // The gateway address "moves here": the outside host still has an old entry.
    seed_wrong_neighbour(o, "203.0.113.2");
    assert!(converge(&host, &kqr).await > 0);
    assert!(converge(&host, &snat).await > 0);
    assert!(
        outside_learns(o, "203.0.113.2", QG),
        "gratuitous ARP for the gateway address: {:?}",
        outside_neighbour(o, "203.0.113.2")
    );
    assert_eq!(
        kuryr_rules(r),
        vec![
            "-4 pref 40001 from 10.78.1.0/24 lookup 1001",
            "-6 pref 40001 from fd78:1::/64 lookup 1001",
        ]
    );
    assert_eq!(
        table_routes(r, "1001"),
        vec![
            "default via 10.78.1.3 dev qr-a",
            "default via fd78:1::3 dev qr-a"
        ]
    );
    assert_eq!(kuryr_routes(sn), vec!["default via 203.0.113.1"]);
    assert!(has_nat_table(sn));
    assert!(!has_nat_table(r));
    // sysctls as in a router namespace
    assert_eq!(sysctl(sn, "net.ipv4.conf.qg-r.arp_ignore"), "1");
    assert_eq!(sysctl(sn, "net.ipv4.conf.qg-r.arp_announce"), "2");

    assert!(ping(&lab.c1, "203.0.113.1"));
    assert_eq!(
        tcp_peer(o, &lab.c1, "203.0.113.1", 8081).as_deref(),
        Some("203.0.113.2"),
        "the outside sees the gateway address"
    );
    // East-west stays direct; subnet B has no SNAT rule.
    lab.assert_routes_both_ways();
    let conntrack = exec(sn, &["cat", "/proc/net/nf_conntrack"]);
    assert!(
        conntrack.contains("src=10.78.1.11 dst=203.0.113.1")
            && conntrack.contains("src=203.0.113.1 dst=203.0.113.2"),
        "{conntrack}"
    );
    assert!(!conntrack.contains("10.78.2.12"), "{conntrack}");
    assert_eq!(converge(&host, &kqr).await, 0);
    assert_eq!(converge(&host, &snat).await, 0);

    router::remove(&host, sn).await.expect("remove snat");
    assert!(!has_link(&lab.host, "tapg") && !has_link(&lab.host, "tapsa"));
}

#[tokio::test]
async fn floating_ip_leg_translates_both_ways_and_announces_itself() {
    let lab = Lab::new();
    lab.external();
    let host = lab.host_netlink();
    let (r, o) = (lab.router.as_str(), lab.outside.as_str());
    let spec = lab.fip_spec();
    seed_wrong_neighbour(o, "203.0.113.50");
    assert!(converge(&host, &spec).await > 0);
    assert!(
        outside_learns(o, "203.0.113.50", QF),
        "gratuitous ARP when the leg was made: {:?}",
        outside_neighbour(o, "203.0.113.50")
    );
    let qf = link(r, "qf-r");
    assert_eq!(qf["address"], QF);
    assert_eq!(addrs(r, "qf-r")[0], "203.0.113.50/32");
    assert_eq!(
        fdb(&lab.host, "brqe", QF),
        vec![("tapf".to_string(), "static".to_string(), true)]
    );
    assert_eq!(
        kuryr_rules(r),
        vec![
            "-4 pref 33000 from 10.78.1.11 lookup 200",
            "-4 pref 33999 from all iif lo lookup 200",
            "-6 pref 33999 from all iif lo lookup 200",
        ]
    );
    assert_eq!(
        table_routes(r, "200"),
        vec![
            "203.0.113.0/24 dev qf-r",
            "default via 203.0.113.1 dev qf-r"
        ]
    );
    assert_eq!(converge(&host, &spec).await, 0);

    // A converge that changes nothing announces nothing.
    seed_wrong_neighbour(o, "203.0.113.50");
    assert_eq!(converge(&host, &spec).await, 0);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        outside_neighbour(o, "203.0.113.50")
            .map(|(m, _)| m)
            .as_deref(),
        Some("02:00:00:00:00:99")
    );
    // The floating IP gone (a leg without addresses), then back: announced again.
    let mut without = spec.clone();
    without.legs[2].addresses.clear();
    without.announce.clear();
    // The address, and the table's two routes: removing a link's last IPv4 address
    // flushes the routes through it.
    assert_eq!(converge(&host, &without).await, 3);
    assert!(addrs(r, "qf-r").iter().all(|a| a.starts_with("fe80:")));
    assert_eq!(table_routes(r, "200").len(), 2);
    assert_eq!(converge(&host, &without).await, 0);
    assert_eq!(converge(&host, &spec).await, 1);
    assert!(
        outside_learns(o, "203.0.113.50", QF),
        "gratuitous ARP when the address was added: {:?}",
        outside_neighbour(o, "203.0.113.50")
    );

    // The outside reaches c1 at its floating IP, and c1 sees the outside's address.
    assert_eq!(
        tcp_peer(&lab.c1, o, "203.0.113.50", 8080).as_deref(),
        Some("203.0.113.1")
    );
    // c1's own connections leave as the floating IP.
    assert_eq!(
        tcp_peer(o, &lab.c1, "203.0.113.1", 8081).as_deref(),
        Some("203.0.113.50")
    );
    assert!(ping(o, "203.0.113.50"));
    // East-west untouched by the rules.
    lab.assert_routes_both_ways();
    // c2 has no floating IP: the outside is unreachable for it.
    assert!(!succeeds(
        "ip",
        &[
            "netns",
            "exec",
            &lab.c2,
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            "203.0.113.1"
        ]
    ));
    // PMTU: a DF packet too big for qr-a gets the router's own ICMP error back to the
    // outside (the `iif lo` rule routes it out of the floating IP leg).
    let out = Command::new("ip")
        .args(["netns", "exec", o, "ping", "-c", "1", "-W", "1", "-M", "do"])
        .args(["-s", "1472", "203.0.113.50"])
        .output()
        .expect("ping");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("mtu = 1450"), "{text}");
    assert_eq!(converge(&host, &spec).await, 0);
}

#[tokio::test]
async fn rules_table_routes_and_nat_table_are_exact_and_repaired() {
    let lab = Lab::new();
    lab.external();
    let host = lab.host_netlink();
    let r = lab.router.as_str();
    let mut spec = lab.fip_spec();
    assert!(converge(&host, &spec).await > 0);
    assert_eq!(converge(&host, &spec).await, 0);
    assert_eq!(converge(&host, &spec).await, 0);
    let rules = kuryr_rules(r);
    let routes = table_routes(r, "200");
    let nat = exec(r, &["nft", "-s", "list", "table", "ip", "kuryr_nat"]);
    let same = || {
        assert_eq!(kuryr_rules(r), rules);
        assert_eq!(table_routes(r, "200"), routes);
        assert_eq!(
            exec(r, &["nft", "-s", "list", "table", "ip", "kuryr_nat"]),
            nat
        );
    };

    // Deleted by hand: back, one change each.
    ipn(r, &["rule", "del", "pref", "33000"]);
    assert_eq!(converge(&host, &spec).await, 1);
    ipn(r, &["-6", "rule", "del", "pref", "33999"]);
    assert_eq!(converge(&host, &spec).await, 1);
    ipn(r, &["route", "del", "default", "table", "200"]);
    assert_eq!(converge(&host, &spec).await, 1);
    ipn(r, &["route", "del", "203.0.113.0/24", "table", "200"]);
    assert_eq!(converge(&host, &spec).await, 1);
    exec(r, &["nft", "delete", "table", "ip", "kuryr_nat"]);
    assert_eq!(converge(&host, &spec).await, 1);
    exec(r, &["nft", "flush", "chain", "ip", "kuryr_nat", "post"]);
    assert_eq!(converge(&host, &spec).await, 1);
    exec(
        r,
        &[
            "nft",
            "delete",
            "element",
            "ip",
            "kuryr_nat",
            "fip_dnat",
            "{ 203.0.113.50 }",
        ],
    );
    assert_eq!(converge(&host, &spec).await, 1);
    same();
    assert_eq!(converge(&host, &spec).await, 0);

    // Somebody else's table, rule and route are theirs; stray kuryr-marked ones go.
    exec(r, &["nft", "add", "table", "inet", "theirs"]);
    ipn(
        r,
        &[
            "rule", "add", "from", "10.9.9.8", "lookup", "300", "pref", "501",
        ],
    );
    ipn(
        r,
        &[
            "route",
            "add",
            "198.51.100.0/24",
            "dev",
            "qf-r",
            "table",
            "200",
        ],
    );
    assert_eq!(converge(&host, &spec).await, 0);
    ipn(
        r,
        &[
            "rule", "add", "from", "10.9.9.9", "lookup", "300", "pref", "500", "proto", "107",
        ],
    );
    ipn(
        r,
        &[
            "route",
            "add",
            "10.9.9.0/24",
            "dev",
            "qf-r",
            "table",
            "300",
            "proto",
            "107",
        ],
    );
    assert_eq!(converge(&host, &spec).await, 2);
    same();
    assert!(exec(r, &["nft", "list", "tables"]).contains("table inet theirs"));
    assert!(ipn(r, &["rule", "show"]).contains("from 10.9.9.8 lookup 300"));
    assert!(ipn(r, &["route", "show", "table", "200"]).contains("198.51.100.0/24"));

    // A changed next hop replaces the route; a changed script replaces the table.
    spec.table_routes[1].via = Some(ip("203.0.113.254"));
    assert_eq!(converge(&host, &spec).await, 2);
    assert!(table_routes(r, "200").contains(&"default via 203.0.113.254 dev qf-r".to_string()));
    spec.nat = spec.nat.map(|s| {
        s.replace(
            "policy accept;\n    iifname",
            "policy accept;\n    counter\n    iifname",
        )
    });
    assert_eq!(converge(&host, &spec).await, 1);
    assert!(exec(r, &["nft", "list", "chain", "ip", "kuryr_nat", "pre"]).contains("counter"));
    assert_eq!(converge(&host, &spec).await, 0);

    // A script nft refuses is reported, after everything else was converged.
    let mut bad = spec.clone();
    bad.nat = Some("table ip kuryr_nat { chain x { bogus } }\n".to_string());
    bad.rules.pop();
    match router::converge(&host, &bad).await {
        Err(RouterError::Nat { source, .. }) => {
            assert!(source.to_string().contains("bogus"), "{source}");
        }
        other => panic!("expected a nat error, got {other:?}"),
    }
    assert_eq!(kuryr_rules(r).len(), 1, "the rules were converged");
    assert!(exec(r, &["nft", "list", "chain", "ip", "kuryr_nat", "pre"]).contains("counter"));
    assert_eq!(converge(&host, &spec).await, 2, "both iif lo rules back");

    // Out of the spec: gone (3 rules, 2 routes, the table), the rest stays.
    spec.rules.clear();
    spec.table_routes.clear();
    spec.nat = None;
    assert_eq!(converge(&host, &spec).await, 6);
    assert!(kuryr_rules(r).is_empty());
    assert!(table_routes(r, "200").is_empty());
    assert!(!has_nat_table(r));
    assert!(exec(r, &["nft", "list", "tables"]).contains("table inet theirs"));
    assert_eq!(converge(&host, &spec).await, 0);
    lab.assert_routes_both_ways();
}
