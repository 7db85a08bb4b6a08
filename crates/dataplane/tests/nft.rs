//! kuryr-dataplane's nft module: render/diff unit tests, and the security groups
//! proven on real traffic through the kernel (run as root).
//!
//! Network safety: no test touches the machine's own namespace or firewall. Each
//! kernel test makes its own namespaces (`ip netns add kt-nft-...`, removed by a Drop
//! guard even when the test panics): a "host" one holding a bridge `brqnet1` and the
//! `tap*` ends of veths whose other ends are `eth0` in "container" namespaces, with
//! addresses in 10.78.0.0/24 and fd78::/64. nft only ever runs as
//! `ip netns exec kt-nft-... nft` ([`Nft::in_netns`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use kuryr_dataplane::MacAddr;
use kuryr_dataplane::netns::{self, NetNs};
use kuryr_dataplane::nfnl::Elements;
use kuryr_dataplane::nft::{
    AddressPair, Direction, EtherType, GroupMembers, NetworkZone, Nft, PortFilter, Published,
    Remote, Rule, Ruleset, chains_of, compile, diff, element_changes, group_set, render,
};
use serde_json::Value;

// ---------------------------------------------------------------------------
// Helpers

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A namespace of this test, deleted on drop.
struct TestNs {
    name: String,
}

impl TestNs {
    fn new() -> TestNs {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "kt-nft-{}-{}-{:x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            nanos
        );
        run("ip", &["netns", "add", &name]);
        TestNs { name }
    }

    fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run("ip", &full);
    }

    fn exec(&self, args: &[&str]) -> bool {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        ok("ip", &full)
    }

    fn nft(&self) -> Nft {
        Nft::new().in_netns(&self.name)
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn mac(last: u8) -> MacAddr {
    MacAddr([0x02, 0, 0, 0, 0, last])
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn net(s: &str) -> IpNet {
    s.parse().expect("test cidr")
}

/// Whether a TCP connection from namespace `client` to `to:port` carries data to a
/// listener on port `listen` in namespace `server` (busybox nc on both ends).
fn tcp_between(server_ns: &TestNs, listen: u16, client: &TestNs, to: &str, port: u16) -> bool {
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &server_ns.name,
            "busybox",
            "nc",
            "-l",
            "-p",
        ])
        .arg(listen.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nc server");
    wait_listening(&server_ns.name, listen);
    let sent = Command::new("ip")
        .args(["netns", "exec", &client.name, "sh", "-c"])
        .arg(format!("echo kuryr-hello | busybox nc -w1 {to} {port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    // The server exits once it got the data and the client closed. A client that
    // exited cleanly has handed the data over: wait generously then (the machine may
    // be loaded); otherwise (refused, dropped, or a timeout on close) a short while.
    let wait = if sent {
        Duration::from_secs(10)
    } else {
        Duration::from_millis(800)
    };
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = server.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = server.kill();
    let out = server
        .wait_with_output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    String::from_utf8_lossy(&out).contains("kuryr-hello")
}

/// Waits until a TCP socket listens on `port` in namespace `ns`, so that a refused or
/// dropped connection afterwards is the firewall's doing, never a listener not yet up.
fn wait_listening(ns: &str, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let filter = format!("sport = :{port}");
    loop {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "ss", "-Hltn", &filter])
            .output()
            .expect("ss");
        if !out.stdout.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nothing listens on {port} in {ns}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// [`tcp_between`], tried twice (the first connection may wait for ARP/ND).
fn connects(server: &TestNs, listen: u16, client: &TestNs, to: &str, port: u16) -> bool {
    (0..2).any(|_| tcp_between(server, listen, client, to, port))
}

/// A host namespace with bridge `brqnet1` and one container namespace per port.
struct Topo {
    host: TestNs,
    /// Containers by letter: namespace, IPv4, IPv6.
    cts: BTreeMap<char, (TestNs, String, String)>,
}

const BRIDGE: &str = "brqnet1";

impl Topo {
    fn new(letters: &[char]) -> Topo {
        let host = TestNs::new();
        host.ip(&["link", "set", "lo", "up"]);
        assert!(host.exec(&["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"]));
        assert!(host.exec(&["sysctl", "-qw", "net.bridge.bridge-nf-call-ip6tables=1"]));
        host.ip(&["link", "add", BRIDGE, "type", "bridge"]);
        host.ip(&["link", "set", BRIDGE, "up"]);
        let mut cts = BTreeMap::new();
        for (i, l) in letters.iter().enumerate() {
            let n = i as u8 + 1;
            let ct = TestNs::new();
            let tap = format!("tap{l}");
            host.ip(&[
                "link", "add", &tap, "type", "veth", "peer", "name", "eth0", "netns", &ct.name,
            ]);
            ct.ip(&["link", "set", "eth0", "address", &mac(n).to_string()]);
            ct.ip(&["link", "set", "lo", "up"]);
            ct.ip(&["link", "set", "eth0", "up"]);
            let (v4, v6) = (format!("10.78.0.{n}"), format!("fd78::{n}"));
            ct.ip(&["addr", "add", &format!("{v4}/24"), "dev", "eth0"]);
            ct.ip(&["addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"]);
            host.ip(&["link", "set", &tap, "master", BRIDGE]);
            host.ip(&["link", "set", &tap, "up"]);
            cts.insert(*l, (ct, v4, v6));
        }
        Topo { host, cts }
    }

    fn ct(&self, l: char) -> &TestNs {
        &self.cts[&l].0
    }
    fn v4(&self, l: char) -> &str {
        &self.cts[&l].1
    }
    fn v6(&self, l: char) -> &str {
        &self.cts[&l].2
    }

    fn ping_once(&self, from: char, to: &str) -> bool {
        self.ct(from).exec(&["ping", "-c1", "-W1", "-q", to])
    }

    /// Whether `from` reaches `to` by ping (a few tries, for ARP/ND warm-up).
    fn ping(&self, from: char, to: &str) -> bool {
        (0..3).any(|_| self.ping_once(from, to))
    }

    /// Whether a TCP connection from `from` to `to_ct`'s address `to:port` carries data.
    fn tcp(&self, from: char, to_ct: char, to: &str, port: u16) -> bool {
        (0..2).any(|_| self.tcp_once(from, to_ct, to, port))
    }

    fn tcp_once(&self, from: char, to_ct: char, to: &str, port: u16) -> bool {
        tcp_between(self.ct(to_ct), port, self.ct(from), to, port)
    }

    fn port(&self, l: char, rules: Vec<Rule>) -> PortFilter {
        PortFilter {
            id: format!("port-{l}"),
            tap: format!("tap{l}"),
            bridge: BRIDGE.to_string(),
            mac: mac(self.cts.keys().position(|c| *c == l).expect("letter") as u8 + 1),
            ips: vec![ip(self.v4(l)), ip(self.v6(l))],
            allowed_address_pairs: vec![],
            port_security: true,
            stateless: false,
            rules,
        }
    }

    fn members(&self, letters: &[char]) -> GroupMembers {
        let mut g = GroupMembers::default();
        for l in letters {
            g.v4.insert(IpNet::from(ip(self.v4(*l))));
            g.v6.insert(IpNet::from(ip(self.v6(*l))));
        }
        g
    }
}

fn rule(
    direction: Direction,
    ethertype: EtherType,
    protocol: Option<u8>,
    range: (Option<u16>, Option<u16>),
    remote: Remote,
) -> Rule {
    Rule {
        direction,
        ethertype,
        protocol,
        port_range_min: range.0,
        port_range_max: range.1,
        remote,
    }
}

/// Neutron's default group: ingress from members, egress anywhere, both families.
fn default_rules(sg: &str) -> Vec<Rule> {
    let mut v = vec![];
    for et in [EtherType::V4, EtherType::V6] {
        v.push(rule(
            Direction::Ingress,
            et,
            None,
            (None, None),
            Remote::Group(sg.into()),
        ));
        v.push(rule(Direction::Egress, et, None, (None, None), Remote::Any));
    }
    v
}

fn allow_all() -> Vec<Rule> {
    let mut v = vec![];
    for et in [EtherType::V4, EtherType::V6] {
        for d in [Direction::Ingress, Direction::Egress] {
            v.push(rule(d, et, None, (None, None), Remote::Any));
        }
    }
    v
}

fn egress_only() -> Vec<Rule> {
    allow_all()
        .into_iter()
        .filter(|r| r.direction == Direction::Egress)
        .collect()
}

fn zone() -> Vec<NetworkZone> {
    vec![NetworkZone {
        bridge: BRIDGE.into(),
        zone: 1,
    }]
}

/// Drops `handle` keys everywhere.
fn strip_handles(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("handle");
            for x in m.values_mut() {
                strip_handles(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(strip_handles),
        _ => {}
    }
}

/// kuryr's two tables as the kernel lists them, independent of handles and of the
/// order chains/sets were created in (rules keep their order within a chain).
async fn kernel_state(nft: &Nft) -> (BTreeSet<String>, BTreeMap<String, Vec<String>>) {
    let mut objects = BTreeSet::new();
    let mut rules: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for fam in ["bridge", "inet"] {
        let out = nft
            .run(&["-j", "list", "table", fam, "kuryr"], None)
            .await
            .expect("list table");
        let mut v: Value = serde_json::from_str(&out).expect("nft -j output is JSON");
        strip_handles(&mut v);
        for obj in v["nftables"].as_array().cloned().unwrap_or_default() {
            if obj.get("metainfo").is_some() {
                continue;
            }
            if let Some(r) = obj.get("rule") {
                let chain = format!("{fam} {}", r["chain"].as_str().unwrap_or(""));
                rules.entry(chain).or_default().push(r.to_string());
            } else {
                let mut obj = obj;
                // pipapo sets list elements in insertion order
                for kind in ["set", "map"] {
                    if let Some(Value::Array(elems)) =
                        obj.get_mut(kind).and_then(|o| o.get_mut("elem"))
                    {
                        elems.sort_by_key(|e| e.to_string());
                    }
                }
                objects.insert(obj.to_string());
            }
        }
    }
    (objects, rules)
}

/// Applies `diff(old,new)` on top of `old`, then checks the kernel holds exactly what
/// `render(new)` gives.
async fn assert_diff_equals_render(nft: &Nft, old: &Ruleset, new: &Ruleset) {
    nft.apply(&render(old)).await.expect("apply old");
    if let Some(d) = diff(old, new) {
        nft.apply(&d)
            .await
            .unwrap_or_else(|e| panic!("apply diff failed: {e}\n{d}"));
    }
    let after_diff = kernel_state(nft).await;
    nft.apply(&render(new)).await.expect("apply new");
    let after_render = kernel_state(nft).await;
    if after_diff != after_render {
        let only = |a: &BTreeSet<String>, b: &BTreeSet<String>| -> Vec<String> {
            a.difference(b).cloned().collect()
        };
        let chains: Vec<&String> = after_diff
            .1
            .iter()
            .filter(|(c, r)| after_render.1.get(*c) != Some(r))
            .chain(
                after_render
                    .1
                    .iter()
                    .filter(|(c, r)| after_diff.1.get(*c) != Some(r)),
            )
            .map(|(c, _)| c)
            .collect();
        panic!(
            "diff(old,new) != render(new)\nonly after diff: {:?}\nonly after render: {:?}\nchains differing: {chains:?}\ndiff script:\n{}",
            only(&after_diff.0, &after_render.0),
            only(&after_render.0, &after_diff.0),
            diff(old, new).unwrap_or_default()
        );
    }
}

/// Applies `element_changes(old, new)` over netlink on top of `render(old)`, then
/// checks the kernel holds exactly what `render(new)` gives. False (nothing
/// checked) when the change is not elements only.
async fn elements_equal_render(ns: &TestNs, old: &Ruleset, new: &Ruleset) -> bool {
    let Some(changes) = element_changes(&compile(old), &compile(new)) else {
        return false;
    };
    let nft = ns.nft();
    nft.apply(&render(old)).await.expect("apply old");
    let path = format!("/run/netns/{}", ns.name);
    let handle = NetNs::open(&path).expect("open the test namespace");
    let mut elements = netns::run_in(&handle, Elements::open)
        .expect("enter the test namespace")
        .expect("nf_tables socket");
    elements
        .apply("kuryr", &changes)
        .unwrap_or_else(|e| panic!("element batch refused: {e}\n{changes:#?}"));
    let after = kernel_state(&nft).await;
    nft.apply(&render(new)).await.expect("apply new");
    let rendered = kernel_state(&nft).await;
    assert!(
        after == rendered,
        "element changes != render(new)\nonly after the batch: {:#?}\nonly after render: {:#?}\nchanges: {changes:#?}",
        after.0.difference(&rendered.0).collect::<Vec<_>>(),
        rendered.0.difference(&after.0).collect::<Vec<_>>(),
    );
    true
}

// ---------------------------------------------------------------------------
// Unit tests (no kernel)

fn sample() -> Ruleset {
    let mut groups = BTreeMap::new();
    let mut g = GroupMembers::default();
    g.v4.insert(net("10.0.0.4/32"));
    g.v4.insert(net("10.0.0.5/32"));
    g.v6.insert(net("fd00::5/128"));
    groups.insert("sg-1".to_string(), g);
    Ruleset {
        networks: vec![NetworkZone {
            bridge: "brqaaaa".into(),
            zone: 7,
        }],
        ports: arcs(vec![
            PortFilter {
                id: "3f1c2d4e-aaaa-bbbb-cccc-0123456789ab".into(),
                tap: "tap3f1c2d4e-aa".into(),
                bridge: "brqaaaa".into(),
                mac: "fa:16:3e:00:00:01".parse().expect("mac"),
                ips: vec![ip("10.0.0.5"), ip("fd00::5")],
                allowed_address_pairs: vec![AddressPair {
                    ip: net("10.0.1.0/24"),
                    mac: Some("fa:16:3e:00:00:99".parse().expect("mac")),
                }],
                port_security: true,
                stateless: false,
                rules: vec![
                    rule(
                        Direction::Ingress,
                        EtherType::V4,
                        Some(6),
                        (Some(22), Some(22)),
                        Remote::Prefix(net("192.168.0.0/16")),
                    ),
                    rule(
                        Direction::Ingress,
                        EtherType::V4,
                        None,
                        (None, None),
                        Remote::Group("sg-1".into()),
                    ),
                    rule(
                        Direction::Egress,
                        EtherType::V6,
                        Some(58),
                        (Some(128), Some(0)),
                        Remote::Any,
                    ),
                    rule(
                        Direction::Egress,
                        EtherType::V4,
                        Some(17),
                        (Some(1000), Some(2000)),
                        Remote::Group("sg-2".into()),
                    ),
                ],
            },
            PortFilter {
                id: "open".into(),
                tap: "tapopen".into(),
                bridge: "brqaaaa".into(),
                mac: "fa:16:3e:00:00:02".parse().expect("mac"),
                ips: vec![ip("10.0.0.6")],
                allowed_address_pairs: vec![],
                port_security: false,
                stateless: false,
                rules: vec![],
            },
        ]),
        groups,
        published: vec![],
    }
}

#[test]
fn render_is_deterministic_and_names_things_by_id() {
    let rs = sample();
    let s = render(&rs);
    assert_eq!(s, render(&rs.clone()));
    let (inc, outc) = chains_of(&rs.ports[0]);
    assert!(inc.starts_with("in_") && inc.len() == 35, "{inc}");
    assert!(outc.starts_with("out_") && outc.len() == 36, "{outc}");
    for needle in [
        "add table bridge kuryr\ndelete table bridge kuryr\nadd table inet kuryr\ndelete table inet kuryr\n",
        "\"tap3f1c2d4e-aa\" . fa:16:3e:00:00:01",
        "\"tap3f1c2d4e-aa\" . fa:16:3e:00:00:99",
        "\"tap3f1c2d4e-aa\" . 10.0.1.0/24",
        "\"tap3f1c2d4e-aa\" . fe80::f816:3eff:fe00:1",
        "iifname @secured jump spoof",
        &format!("\"brqaaaa\" . 10.0.0.5 : jump {outc}"),
        &format!("\"brqaaaa\" . 10.0.1.0/24 : jump {inc}"),
        &format!("\"brqaaaa\" . fd00::5 : jump {inc}"),
        "\"brqaaaa\" : 7",
        "set g4_sg-1 {",
        "set g6_sg-1 {",
        // referenced but without members: still exists, empty
        "set g4_sg-2 {",
        // adjacent members stay separate elements (one update per member)
        "elements = { 10.0.0.4,\n\t\t\t10.0.0.5 }",
        "meta nfproto ipv4 meta l4proto tcp th dport 22 ip saddr 192.168.0.0/16 accept",
        "meta nfproto ipv4 ip saddr @g4_sg-1 accept",
        "meta nfproto ipv6 meta l4proto ipv6-icmp icmpv6 type 128 icmpv6 code 0 return",
        "meta nfproto ipv4 meta l4proto udp th dport 1000-2000 ip daddr @g4_sg-2 return",
    ] {
        assert!(s.contains(needle), "render lacks {needle:?}:\n{s}");
    }
    // port_security=false: nothing for that port
    assert!(!s.contains("open"), "{s}");
    assert!(!s.contains("10.0.0.6 :"), "{s}");
}

#[test]
fn diff_of_equal_is_none_and_membership_is_elements_only() {
    let old = sample();
    assert_eq!(diff(&old, &old.clone()), None);
    // reordering rules does not change anything
    let mut reordered = old.clone();
    Arc::make_mut(&mut reordered.ports[0]).rules.reverse();
    assert_eq!(diff(&old, &reordered), None);

    let mut new = old.clone();
    let g = new.groups.get_mut("sg-1").expect("group");
    g.v4.insert(net("10.0.9.9/32"));
    g.v6.remove(&net("fd00::5/128"));
    let d = diff(&old, &new).expect("a diff");
    for line in d.lines() {
        assert!(
            line.starts_with("add element inet kuryr g4_sg-1 ")
                || line.starts_with("delete element inet kuryr g6_sg-1 "),
            "unexpected line {line:?} in\n{d}"
        );
    }
    assert!(d.contains("10.0.9.9"), "{d}");
}

#[test]
fn diff_of_port_changes() {
    let old = sample();
    let (inc, outc) = chains_of(&old.ports[0]);
    // a new rule: a chain with the new rules, the port's map elements sent there,
    // then the old chain deleted; the egress side untouched
    let mut new = old.clone();
    Arc::make_mut(&mut new.ports[0]).rules.push(rule(
        Direction::Ingress,
        EtherType::V6,
        Some(17),
        (Some(53), None),
        Remote::Any,
    ));
    let d = diff(&old, &new).expect("a diff");
    let (new_in, new_out) = chains_of(&new.ports[0]);
    assert_eq!(new_out, outc);
    assert_ne!(new_in, inc);
    let pos = |s: &str| d.find(s).unwrap_or_else(|| panic!("{s:?} not in\n{d}"));
    assert!(
        pos(&format!("add chain inet kuryr {new_in}")) < pos("add element inet kuryr ingress4")
    );
    assert!(
        pos("add element inet kuryr ingress4") < pos(&format!("delete chain inet kuryr {inc}"))
    );
    assert!(!d.contains(&outc) && !d.contains("egress"), "{d}");
    assert!(
        d.contains("meta nfproto ipv6 meta l4proto udp th dport 53 accept"),
        "{d}"
    );

    // the port goes: elements first, then its chains
    let mut gone = old.clone();
    gone.ports.remove(0);
    let d = diff(&old, &gone).expect("a diff");
    let pos = |s: &str| d.find(s).unwrap_or_else(|| panic!("{s:?} not in\n{d}"));
    assert!(d.contains("delete element bridge kuryr secured { \"tap3f1c2d4e-aa\" }"));
    assert!(pos("delete element inet kuryr ingress4") < pos("delete chain inet kuryr in_"));
    // sg-2 was only referenced by that port: its sets go too, after the chains
    assert!(pos("delete chain inet kuryr out_") < pos("delete set inet kuryr g4_sg-2"));
    assert!(!d.contains("g4_sg-1"), "{d}");

    // and comes back: chains created before the elements that jump to them
    let d = diff(&gone, &old).expect("a diff");
    let pos = |s: &str| d.find(s).unwrap_or_else(|| panic!("{s:?} not in\n{d}"));
    assert!(pos("add set inet kuryr g4_sg-2") < pos(&format!("add chain inet kuryr {outc}")));
    assert!(pos("add chain inet kuryr out_") < pos("add element inet kuryr egress4"));

    // turning port security off removes everything of the port
    let mut off = old.clone();
    Arc::make_mut(&mut off.ports[0]).port_security = false;
    let d = diff(&old, &off).expect("a diff");
    assert!(d.contains(&format!("delete chain inet kuryr {outc}")));
    assert_eq!(render(&off), render(&gone));
}

/// A second port with the same rules as one already on the host shares its chains:
/// binding it, or a group member joining, is element updates only; a port with new
/// rules is not.
#[test]
fn ports_with_the_same_rules_share_chains_and_bind_by_elements() {
    let old = sample();
    let mut twin = (*old.ports[0]).clone();
    twin.id = "twin".into();
    twin.tap = "taptwin".into();
    twin.mac = "fa:16:3e:00:00:07".parse().expect("mac");
    twin.ips = vec![ip("10.0.0.7")];
    twin.allowed_address_pairs.clear();
    assert_eq!(chains_of(&twin), chains_of(&old.ports[0]));
    let mut new = old.clone();
    new.ports.push(Arc::new(twin));
    new.groups
        .get_mut("sg-1")
        .expect("group")
        .v4
        .insert(net("10.0.0.7/32"));
    let changes = element_changes(&compile(&old), &compile(&new)).expect("elements only");
    let sets: BTreeSet<(bool, &str)> = changes.iter().map(|c| (c.add, c.set.as_str())).collect();
    assert_eq!(
        sets,
        BTreeSet::from([
            (true, "secured"),
            (true, "macs"),
            (true, "ips4"),
            (true, "ips6"),
            (true, "egress4"),
            (true, "ingress4"),
            (true, "g4_sg-1"),
        ])
    );
    // the text diff agrees: no chain
    let d = diff(&old, &new).expect("a diff");
    assert!(d.lines().all(|l| l.contains(" element ")), "{d}");
    // and back: deletes only
    let back = element_changes(&compile(&new), &compile(&old)).expect("elements only");
    assert!(back.iter().all(|c| !c.add), "{back:?}");

    let mut other = new.clone();
    Arc::make_mut(&mut other.ports[2]).rules.pop();
    assert_ne!(chains_of(&other.ports[2]), chains_of(&other.ports[0]));
    assert!(element_changes(&compile(&new), &compile(&other)).is_none());
    assert!(element_changes(&compile(&new), &compile(&new)).is_some_and(|c| c.is_empty()));
}

#[test]
fn stateless_ports_are_in_the_notrack_sets_and_toggle_by_elements() {
    let old = sample();
    let s = render(&old);
    // The sets and the raw rules are always there; empty while nothing is stateless.
    assert!(
        s.contains("\tset notrack4 {\n\t\ttype ifname . ipv4_addr\n\t}"),
        "{s}"
    );
    assert!(
        s.contains("\tset notrack4_nets {\n\t\ttype ifname . ipv4_addr\n\t\tflags interval\n\t}"),
        "{s}"
    );
    assert!(
        s.contains("iifname . ip saddr @notrack4 notrack accept"),
        "{s}"
    );
    assert!(
        s.contains("iifname . ip6 daddr @notrack6_nets notrack accept\n\t\tct zone set"),
        "{s}"
    );

    let mut new = old.clone();
    Arc::make_mut(&mut new.ports[0]).stateless = true;
    let s = render(&new);
    assert!(
        s.contains(
            "set notrack4 {\n\t\ttype ifname . ipv4_addr\n\t\telements = { \"brqaaaa\" . 10.0.0.5 }"
        ),
        "its addresses: {s}"
    );
    assert!(
        s.contains("set notrack4_nets {\n\t\ttype ifname . ipv4_addr\n\t\tflags interval\n\t\telements = { \"brqaaaa\" . 10.0.1.0/24 }"),
        "its address pairs: {s}"
    );
    assert!(s.contains("\"brqaaaa\" . fd00::5 }"), "{s}");
    // The port with port security off is never in them.
    assert!(!s.contains("\"brqaaaa\" . 10.0.0.6"), "{s}");
    // Its rules are the same rules.
    assert_eq!(
        s.lines()
            .filter(|l| l.contains(" accept") || l.contains(" return"))
            .count(),
        render(&old)
            .lines()
            .filter(|l| l.contains(" accept") || l.contains(" return"))
            .count()
    );

    // Becoming stateless and back is set elements only.
    let d = diff(&old, &new).expect("a diff");
    assert!(
        d.lines()
            .all(|l| l.starts_with("add element inet kuryr notrack4 ")
                || l.starts_with("add element inet kuryr notrack4_nets ")
                || l.starts_with("add element inet kuryr notrack6 ")),
        "{d}"
    );
    let d = diff(&new, &old).expect("a diff");
    assert!(
        d.lines()
            .all(|l| l.starts_with("delete element inet kuryr notrack")),
        "{d}"
    );
    // A stateless port going away takes its elements with it.
    let mut gone = new.clone();
    gone.ports.remove(0);
    let d = diff(&new, &gone).expect("a diff");
    assert!(
        d.contains("delete element inet kuryr notrack4 { \"brqaaaa\" . 10.0.0.5"),
        "{d}"
    );
}

#[test]
fn bad_names_and_impossible_rules_are_left_out() {
    let mut rs = sample();
    Arc::make_mut(&mut rs.ports[0]).tap = "tap\"; flush ruleset".into();
    rs.networks[0].bridge = "a-very-long-bridge-name".into();
    Arc::make_mut(&mut rs.ports[0]).rules.push(rule(
        Direction::Ingress,
        EtherType::V4,
        None,
        (None, None),
        Remote::Prefix(net("fd00::/8")),
    ));
    let s = render(&rs);
    assert!(!s.contains("flush ruleset"), "{s}");
    assert!(!s.contains("a-very-long"), "{s}");
    assert!(!s.contains("fd00::/8"), "{s}");
    assert_eq!(group_set("x y", EtherType::V6), "g6_x_20y");
}

fn publish(
    bridge: &str,
    protocol: u8,
    host: Option<&str>,
    host_port: u16,
    to: &str,
    port: u16,
) -> Published {
    Published {
        bridge: bridge.into(),
        protocol,
        host_ip: host.map(ip),
        host_port,
        container_ip: ip(to),
        container_port: port,
    }
}

#[test]
fn published_ports_render_as_map_elements_and_chains() {
    let mut rs = sample();
    let s = render(&rs);
    assert!(
        !s.contains("pub"),
        "nothing published, no chains for it:\n{s}"
    );
    assert!(
        s.contains("elements = { \"brqaaaa\" . \"brqaaaa\" }"),
        "{s}"
    );
    rs.published = vec![
        publish("brqaaaa", 6, None, 8080, "10.0.0.5", 80),
        publish("brqaaaa", 17, Some("192.0.2.1"), 5353, "10.0.0.5", 53),
        publish("brqaaaa", 6, None, 8080, "fd00::5", 80),
        // an unspecified host address is any address
        publish("brqaaaa", 132, Some("::"), 9000, "fd00::5", 9),
        // left out: under the any-address mapping of the same port, the same host
        // port again, loopback, another family, not tcp/udp/sctp, no zone
        publish("brqaaaa", 6, Some("192.0.2.1"), 8080, "10.0.0.6", 81),
        publish("brqaaaa", 6, None, 8080, "10.0.0.6", 82),
        publish("brqaaaa", 6, Some("127.0.0.1"), 8081, "10.0.0.5", 80),
        publish("brqaaaa", 6, Some("192.0.2.1"), 8082, "fd00::5", 80),
        publish("brqaaaa", 1, None, 8083, "10.0.0.5", 80),
        publish("brqnone", 6, None, 8084, "10.0.0.5", 80),
    ];
    let s = render(&rs);
    for needle in [
        "set pub_ports {\n\t\ttype inet_proto . inet_service\n\t\telements = { sctp . 9000,\n\t\t\ttcp . 8080,\n\t\t\tudp . 5353 }",
        "map pub_zone_any4 {\n\t\ttypeof meta l4proto . th dport : ct zone\n\t\telements = { tcp . 8080 : 7 }",
        "map pub_dnat_any4 {\n\t\ttype inet_proto . inet_service : ipv4_addr . inet_service\n\t\telements = { tcp . 8080 : 10.0.0.5 . 80 }",
        "192.0.2.1 . udp . 5353 : 7",
        "192.0.2.1 . udp . 5353 : 10.0.0.5 . 53",
        "tcp . 8080 : fd00::5 . 80",
        "sctp . 9000 : fd00::5 . 9",
        "chain pub_zone {\n\t\ttype filter hook prerouting priority -301;",
        "chain pub_zone_out {\n\t\ttype filter hook output priority -300;",
        "chain pub_dnat {\n\t\ttype nat hook prerouting priority -100;",
        "chain pub_dnat_out {\n\t\ttype nat hook output priority -100;",
        "chain pub_input {\n\t\ttype filter hook input priority 0;",
        "chain pub_zone_set {\n\t\tip daddr 127.0.0.0/8 return",
        "meta l4proto . th dport @pub_ports fib daddr type local jump pub_zone_set",
        "ct zone set ip daddr . meta l4proto . th dport map @pub_zone_ip4",
        "dnat ip6 to meta l4proto . th dport map @pub_dnat_any6",
    ] {
        assert!(s.contains(needle), "render lacks {needle:?}:\n{s}");
    }
    for absent in ["10.0.0.6", "8081", "8082", "8083", "8084", "brqnone"] {
        assert!(!s.contains(absent), "{absent} should be left out:\n{s}");
    }
    // the order mappings come in does not matter
    let mut reversed = rs.clone();
    reversed.published.reverse();
    assert_eq!(render(&reversed), s);
    // only left-out mappings: as if nothing were published
    let mut bad = sample();
    bad.published = vec![publish("brqaaaa", 6, Some("127.0.0.1"), 80, "10.0.0.5", 80)];
    assert_eq!(render(&bad), render(&sample()));
}

#[test]
fn diff_of_published_ports() {
    let old = sample();
    let mut new = old.clone();
    new.published = vec![
        publish("brqaaaa", 6, None, 8080, "10.0.0.5", 80),
        publish("brqaaaa", 6, None, 8080, "fd00::5", 80),
    ];
    // the first one: sets and maps, then the chains that use them; nothing else
    let d = diff(&old, &new).expect("a diff");
    let pos = |d: &str, s: &str| d.find(s).unwrap_or_else(|| panic!("{s:?} not in\n{d}"));
    assert!(
        pos(&d, "add map inet kuryr pub_dnat_any4") < pos(&d, "add chain inet kuryr pub_dnat_to\n")
    );
    assert!(
        pos(&d, "add chain inet kuryr pub_dnat_to\n") < pos(&d, "add chain inet kuryr pub_dnat {")
    );
    assert!(d.contains(
        "add chain inet kuryr pub_zone { type filter hook prerouting priority -301; policy accept; }"
    ));
    assert!(d.contains("add element inet kuryr pub_dnat_any6 { tcp . 8080 : fd00::5 . 80 }"));
    assert!(d.lines().all(|l| l.contains(" pub")), "{d}");

    // more or changed mappings: element updates only; the zone stays
    let mut moved = new.clone();
    moved.published[0].container_port = 81;
    moved.published.push(publish(
        "brqaaaa",
        17,
        Some("192.0.2.1"),
        53,
        "10.0.0.5",
        53,
    ));
    let d = diff(&new, &moved).expect("a diff");
    for line in d.lines() {
        assert!(
            line.starts_with("add element inet kuryr pub")
                || line.starts_with("delete element inet kuryr pub"),
            "not an element update: {line:?}\n{d}"
        );
    }
    assert!(
        d.contains("delete element inet kuryr pub_dnat_any4 { tcp . 8080 }"),
        "{d}"
    );
    assert!(
        d.contains("add element inet kuryr pub_dnat_any4 { tcp . 8080 : 10.0.0.5 . 81 }"),
        "{d}"
    );
    assert!(
        d.contains("add element inet kuryr pub_dnat_ip4 { 192.0.2.1 . udp . 53 : 10.0.0.5 . 53 }"),
        "{d}"
    );
    assert!(
        d.contains("add element inet kuryr pub_ports { udp . 53 }"),
        "{d}"
    );
    assert!(!d.contains("pub_zone_any4"), "{d}");

    // the last one goes: chains first, then what they used
    let d = diff(&moved, &old).expect("a diff");
    assert!(
        pos(&d, "delete chain inet kuryr pub_dnat\n")
            < pos(&d, "delete chain inet kuryr pub_dnat_to\n")
    );
    assert!(
        pos(&d, "delete chain inet kuryr pub_dnat_to\n")
            < pos(&d, "delete map inet kuryr pub_dnat_any4")
    );
    assert!(d.contains("delete set inet kuryr pub_ports"), "{d}");
    assert!(d.lines().all(|l| l.contains(" pub")), "{d}");

    // networks come and go in the bridged set with their zones
    let mut two = old.clone();
    two.networks.push(NetworkZone {
        bridge: "brqbbbb".into(),
        zone: 3,
    });
    let d = diff(&old, &two).expect("a diff");
    assert!(
        d.contains("add element inet kuryr bridged { \"brqbbbb\" . \"brqbbbb\" }"),
        "{d}"
    );
    let d = diff(&two, &old).expect("a diff");
    assert!(
        d.contains("delete element inet kuryr bridged { \"brqbbbb\" . \"brqbbbb\" }"),
        "{d}"
    );
}

/// Syntax and semantics of render and diff against the kernel, in an empty namespace.
#[tokio::test]
async fn kernel_accepts_render_and_diffs() {
    let ns = TestNs::new();
    let nft = ns.nft();
    let rs = sample();
    nft.check(&render(&rs)).await.expect("render passes nft -c");
    nft.check(&render(&Ruleset::default()))
        .await
        .expect("empty render passes nft -c");

    let mut variants = vec![Ruleset::default(), rs.clone()];
    let mut v = rs.clone();
    Arc::make_mut(&mut v.ports[0]).ips.push(ip("10.0.0.77"));
    Arc::make_mut(&mut v.ports[0]).allowed_address_pairs.clear();
    variants.push(v.clone());
    v.groups.remove("sg-1");
    v.networks[0].zone = 9;
    v.networks.push(NetworkZone {
        bridge: "brqbbbb".into(),
        zone: 3,
    });
    variants.push(v.clone());
    Arc::make_mut(&mut v.ports[0]).mac = "fa:16:3e:00:00:05".parse().expect("mac");
    Arc::make_mut(&mut v.ports[1]).port_security = true;
    Arc::make_mut(&mut v.ports[0]).tap = "tapnew".into();
    variants.push(v);
    // published ports come, change and go
    let mut p = rs.clone();
    p.published = vec![
        publish("brqaaaa", 6, None, 8080, "10.0.0.5", 80),
        publish("brqaaaa", 17, Some("192.0.2.1"), 53, "10.0.0.5", 53),
        publish("brqaaaa", 132, None, 9, "fd00::5", 9),
    ];
    nft.check(&render(&p))
        .await
        .expect("render with published passes nft -c");
    variants.push(p.clone());
    p.published[0].container_port = 81;
    p.published.remove(1);
    p.networks[0].zone = 4;
    variants.push(p);
    for old in &variants {
        for new in &variants {
            assert_diff_equals_render(&nft, old, new).await;
        }
    }
    nft.remove_all().await.expect("remove_all");
    nft.remove_all().await.expect("remove_all twice");
    let listed = nft.run(&["list", "ruleset"], None).await.expect("list");
    assert!(!listed.contains("kuryr"), "{listed}");
}

/// Ports sharing chains coming, changing and going, members joining and leaving,
/// zones, stateless toggles: every element-only change, sent over netlink, leaves
/// the kernel exactly as rendering the new state does.
#[tokio::test]
async fn element_batches_leave_what_render_leaves() {
    let ns = TestNs::new();
    let v0 = sample();
    let mut twin = (*v0.ports[0]).clone();
    twin.id = "twin".into();
    twin.tap = "taptwin".into();
    twin.mac = "fa:16:3e:00:00:07".parse().expect("mac");
    twin.ips = vec![ip("10.0.0.7"), ip("fd00::7")];
    twin.allowed_address_pairs = vec![AddressPair {
        ip: net("10.0.2.0/25"),
        mac: None,
    }];
    let mut v1 = v0.clone();
    v1.ports.push(Arc::new(twin));
    let g = v1.groups.get_mut("sg-1").expect("group");
    g.v4.insert(net("10.0.0.7/32"));
    g.v4.insert(net("10.0.2.0/25"));
    g.v6.insert(net("fd00::7/128"));
    let mut v2 = v1.clone();
    Arc::make_mut(&mut v2.ports[2]).ips = vec![ip("10.0.0.8")];
    Arc::make_mut(&mut v2.ports[2]).mac = "fa:16:3e:00:00:08".parse().expect("mac");
    Arc::make_mut(&mut v2.ports[2]).stateless = true;
    v2.networks[0].zone = 9;
    let g = v2.groups.get_mut("sg-1").expect("group");
    g.v4.remove(&net("10.0.0.7/32"));
    g.v4.insert(net("10.0.0.8/32"));
    // the first port goes; its twin keeps the chains and sets
    let mut v3 = v1.clone();
    v3.ports.remove(0);
    v3.networks.push(NetworkZone {
        bridge: "brqbbbb".into(),
        zone: 3,
    });
    let variants = [v0, v1, v2, v3];
    let mut checked = 0;
    for old in &variants {
        for new in &variants {
            if elements_equal_render(&ns, old, new).await {
                checked += 1;
            }
        }
    }
    // every pair is elements only (the twin keeps the chains and sets when the
    // first port goes); a pair that is not is covered by the unit test above
    assert_eq!(checked, variants.len() * variants.len());
}

#[tokio::test]
async fn errors_carry_stderr_and_line() {
    let ns = TestNs::new();
    let nft = ns.nft();
    let err = nft
        .apply("add table inet kt\nadd chain inet kt c\nadd rule inet kt c bogus thing\n")
        .await
        .expect_err("bad script fails");
    let msg = err.to_string();
    assert!(
        msg.contains("script line 3: add rule inet kt c bogus thing"),
        "{msg}"
    );
    let missing = Nft::with_binary("/nonexistent/nft").apply("").await;
    assert!(missing.is_err());
}

// ---------------------------------------------------------------------------
// Traffic

#[tokio::test]
async fn default_group_port_rules_and_established() {
    let t = Topo::new(&['a', 'b', 'c']);
    let nft = t.host.nft();
    let mut a_rules = default_rules("sg-default");
    a_rules.push(rule(
        Direction::Ingress,
        EtherType::V4,
        Some(6),
        (Some(8080), Some(8080)),
        Remote::Any,
    ));
    let mut c_rules = vec![rule(
        Direction::Ingress,
        EtherType::V4,
        Some(1),
        (Some(8), None),
        Remote::Any,
    )];
    c_rules.push(rule(
        Direction::Egress,
        EtherType::V4,
        None,
        (None, None),
        Remote::Any,
    ));
    c_rules.push(rule(
        Direction::Egress,
        EtherType::V6,
        None,
        (None, None),
        Remote::Any,
    ));
    let rs = Ruleset {
        networks: zone(),
        ports: arcs(vec![
            t.port('a', a_rules),
            t.port('b', default_rules("sg-default")),
            t.port('c', c_rules),
        ]),
        groups: BTreeMap::from([("sg-default".to_string(), t.members(&['a', 'b']))]),
        published: vec![],
    };
    nft.apply(&render(&rs)).await.expect("apply");

    // members of the group reach each other, both families
    assert!(t.ping('a', t.v4('b')));
    assert!(t.ping('b', t.v4('a')));
    assert!(t.ping('a', t.v6('b')));
    assert!(t.tcp('b', 'a', t.v4('a'), 9090));
    // c is not a member: no ping, no tcp to b; only a's tcp 8080 rule lets it in
    assert!(!t.ping_once('c', t.v4('a')));
    assert!(!t.ping_once('c', t.v4('b')));
    assert!(!t.ping_once('c', t.v6('b')));
    assert!(t.tcp('c', 'a', t.v4('a'), 8080));
    assert!(!t.tcp_once('c', 'a', t.v4('a'), 9090));
    // c's ICMP rule (type 8) lets a ping it, but not connect to it
    assert!(t.ping('a', t.v4('c')));
    assert!(!t.tcp_once('a', 'c', t.v4('c'), 8080));
    // established: a -> c works both ways (c's replies pass a's ingress, which does
    // not allow c), while new inbound from c to a is dropped
    assert!(t.ping('a', t.v4('c')));
    assert!(!t.ping_once('c', t.v4('a')));
    assert!(t.tcp('a', 'b', t.v4('b'), 7000));
}

#[tokio::test]
async fn remote_group_membership_follows_diff() {
    let t = Topo::new(&['a', 'b', 'c']);
    let nft = t.host.nft();
    let old = Ruleset {
        networks: zone(),
        ports: arcs(vec![
            t.port('a', default_rules("sg-default")),
            t.port('b', default_rules("sg-default")),
            t.port('c', default_rules("sg-other")),
        ]),
        groups: BTreeMap::from([
            ("sg-default".to_string(), t.members(&['a', 'b'])),
            ("sg-other".to_string(), t.members(&['c'])),
        ]),
        published: vec![],
    };
    nft.apply(&render(&old)).await.expect("apply");
    assert!(t.ping('b', t.v4('a')));
    assert!(!t.ping_once('c', t.v4('a')));
    assert!(!t.ping_once('c', t.v6('a')));

    // c joins sg-default: element updates only
    let mut new = old.clone();
    new.groups
        .insert("sg-default".into(), t.members(&['a', 'b', 'c']));
    let d = diff(&old, &new).expect("a diff");
    let g4 = group_set("sg-default", EtherType::V4);
    let g6 = group_set("sg-default", EtherType::V6);
    for line in d.lines() {
        assert!(
            line.starts_with(&format!("add element inet kuryr {g4} "))
                || line.starts_with(&format!("add element inet kuryr {g6} "))
                || line.starts_with(&format!("delete element inet kuryr {g4} "))
                || line.starts_with(&format!("delete element inet kuryr {g6} ")),
            "not an element update: {line:?}\n{d}"
        );
    }
    nft.apply(&d).await.expect("apply diff");
    assert!(t.ping('c', t.v4('a')));
    assert!(t.ping('c', t.v6('a')));
    assert!(t.tcp('c', 'b', t.v4('b'), 7001));

    // and leaves it again
    let d = diff(&new, &old).expect("a diff");
    assert!(
        d.lines().all(|l| l.contains(" element inet kuryr g")),
        "{d}"
    );
    nft.apply(&d).await.expect("apply diff back");
    // conntrack remembers the old ping flow; a new protocol is a new flow
    assert!(!t.tcp_once('c', 'b', t.v4('b'), 7002));
    assert!(!t.ping_once('c', t.v6('b')));
    assert!(t.ping('a', t.v4('b')));

    // the state diffs lead to is exactly what render gives
    assert_diff_equals_render(&nft, &old, &new).await;
    assert_diff_equals_render(&nft, &new, &old).await;
}

#[tokio::test]
async fn egress_restriction_and_ipv6_rule() {
    let t = Topo::new(&['a', 'b']);
    let nft = t.host.nft();
    let a_rules = vec![
        rule(
            Direction::Egress,
            EtherType::V4,
            Some(6),
            (Some(8080), Some(8081)),
            Remote::Prefix(net(&format!("{}/32", t.v4('b')))),
        ),
        rule(
            Direction::Egress,
            EtherType::V6,
            Some(58),
            (Some(128), None),
            Remote::Prefix(net("fd78::/64")),
        ),
    ];
    let rs = Ruleset {
        networks: zone(),
        ports: arcs(vec![t.port('a', a_rules), t.port('b', allow_all())]),
        groups: BTreeMap::new(),
        published: vec![],
    };
    nft.apply(&render(&rs)).await.expect("apply");
    assert!(t.tcp('a', 'b', t.v4('b'), 8081));
    assert!(!t.tcp_once('a', 'b', t.v4('b'), 9090));
    assert!(!t.ping_once('a', t.v4('b')));
    // IPv6: only echo requests (ICMPv6 type 128) go out
    assert!(t.ping('a', t.v6('b')));
    assert!(!t.tcp_once('a', 'b', t.v6('b'), 8081));
    // b's ingress is open but a's replies are established: b reaches a? a's ingress
    // has no rule, so new inbound is dropped
    assert!(!t.ping_once('b', t.v4('a')));
    assert!(!t.ping_once('b', t.v6('a')));
}

#[tokio::test]
async fn anti_spoofing_cuts_off_changed_ip_or_mac() {
    let t = Topo::new(&['a', 'b']);
    let nft = t.host.nft();
    let rs = Ruleset {
        networks: zone(),
        ports: arcs(vec![t.port('a', allow_all()), t.port('b', allow_all())]),
        groups: BTreeMap::new(),
        published: vec![],
    };
    nft.apply(&render(&rs)).await.expect("apply");
    assert!(t.ping('a', t.v4('b')));
    assert!(t.ping('a', t.v6('b')));
    let a = t.ct('a');

    // a takes another IPv4 address
    a.ip(&["addr", "del", "10.78.0.1/24", "dev", "eth0"]);
    a.ip(&["addr", "add", "10.78.0.99/24", "dev", "eth0"]);
    assert!(!t.ping_once('a', t.v4('b')));
    a.ip(&["addr", "del", "10.78.0.99/24", "dev", "eth0"]);
    a.ip(&["addr", "add", "10.78.0.1/24", "dev", "eth0"]);
    assert!(t.ping('a', t.v4('b')));

    // a sends from another IPv6 address
    a.ip(&["addr", "add", "fd78::99/64", "dev", "eth0", "nodad"]);
    assert!(!a.exec(&["ping", "-c1", "-W1", "-q", "-I", "fd78::99", t.v6('b')]));
    a.ip(&["addr", "del", "fd78::99/64", "dev", "eth0"]);

    // a changes its MAC
    a.ip(&["link", "set", "eth0", "address", "02:00:00:00:00:99"]);
    assert!(!t.ping_once('a', t.v4('b')));
    assert!(!t.ping_once('a', t.v6('b')));
    a.ip(&["link", "set", "eth0", "address", &mac(1).to_string()]);
    assert!(t.ping('a', t.v4('b')));

    // an allowed address pair makes the other address legitimate
    let mut rs2 = rs.clone();
    Arc::make_mut(&mut rs2.ports[0])
        .allowed_address_pairs
        .push(AddressPair {
            ip: net("10.78.0.96/29"),
            mac: None,
        });
    nft.apply(&diff(&rs, &rs2).expect("a diff"))
        .await
        .expect("apply diff");
    a.ip(&["addr", "del", "10.78.0.1/24", "dev", "eth0"]);
    a.ip(&["addr", "add", "10.78.0.99/24", "dev", "eth0"]);
    assert!(t.ping('a', t.v4('b')));
}

#[tokio::test]
async fn port_security_false_passes_everything() {
    let t = Topo::new(&['a', 'b', 'c']);
    let nft = t.host.nft();
    let mut open = t.port('a', vec![]);
    open.port_security = false;
    let rs = Ruleset {
        networks: zone(),
        ports: arcs(vec![open, t.port('b', allow_all()), t.port('c', vec![])]),
        groups: BTreeMap::new(),
        published: vec![],
    };
    nft.apply(&render(&rs)).await.expect("apply");
    // c (port security on, no rules) takes no new connection
    assert!(!t.ping_once('b', t.v4('c')));
    // a (port security off) takes everything, and may send from any address
    assert!(t.ping('b', t.v4('a')));
    assert!(t.ping('b', t.v6('a')));
    assert!(t.tcp('b', 'a', t.v4('a'), 7003));
    let a = t.ct('a');
    a.ip(&["addr", "add", "10.78.0.42/24", "dev", "eth0"]);
    assert!(a.exec(&["ping", "-c1", "-W1", "-q", "-I", "10.78.0.42", t.v4('b')]));
    a.ip(&["link", "set", "eth0", "address", "02:00:00:00:00:77"]);
    t.ct('b').ip(&["neigh", "flush", "all"]);
    assert!(t.ping('a', t.v4('b')));
}

/// The host namespace's conntrack table (`/proc/net/nf_conntrack` is per namespace).
fn conntrack(ns: &TestNs) -> String {
    run(
        "ip",
        &["netns", "exec", &ns.name, "cat", "/proc/net/nf_conntrack"],
    )
}

/// A stateless port (Neutron's `stateful: false` groups): its traffic is never
/// tracked, so replies pass only by rules of their own direction. The same rules on
/// a stateful port are the positive control; b and c, stateful, stay tracked.
#[tokio::test]
async fn stateless_ports_need_rules_both_ways_and_are_not_tracked() {
    let t = Topo::new(&['a', 'b', 'c']);
    let nft = t.host.nft();
    let ruleset = |a: PortFilter| Ruleset {
        networks: zone(),
        ports: arcs(vec![a, t.port('b', allow_all()), t.port('c', allow_all())]),
        groups: BTreeMap::new(),
        published: vec![],
    };
    // a may send anything and take nothing new (a new group's two egress rules).
    let stateful = ruleset(t.port('a', egress_only()));
    nft.apply(&render(&stateful)).await.expect("apply");
    assert!(t.ping('a', t.v4('b')));
    assert!(t.tcp('a', 'b', t.v4('b'), 7100));
    assert!(
        conntrack(&t.host).contains("dport=7100"),
        "a stateful port's connection is tracked"
    );
    assert!(!t.ping_once('b', t.v4('a')));

    // Stateless with the same rules: requests go out, replies do not come back.
    let mut a = t.port('a', egress_only());
    a.stateless = true;
    let stateless = ruleset(a.clone());
    nft.apply(&diff(&stateful, &stateless).expect("a diff"))
        .await
        .expect("apply diff");
    assert!(!t.tcp_once('a', 'b', t.v4('b'), 7101));
    assert!(!t.ping_once('a', t.v4('b')));
    assert!(!t.ping_once('a', t.v6('b')));

    // A rule for the way back (from b only) and both ways work, none of it tracked.
    for (et, b) in [(EtherType::V4, t.v4('b')), (EtherType::V6, t.v6('b'))] {
        a.rules.push(rule(
            Direction::Ingress,
            et,
            None,
            (None, None),
            Remote::Prefix(IpNet::from(ip(b))),
        ));
    }
    let both_ways = ruleset(a);
    nft.apply(&diff(&stateless, &both_ways).expect("a diff"))
        .await
        .expect("apply diff");
    assert!(t.ping('a', t.v4('b')));
    assert!(t.ping('a', t.v6('b')));
    assert!(t.tcp('a', 'b', t.v4('b'), 7102));
    assert!(t.tcp('b', 'a', t.v4('a'), 7103));
    // c has no rule back into a: its requests stop there, and a's to c get no reply.
    assert!(!t.ping_once('c', t.v4('a')));
    assert!(!t.tcp_once('a', 'c', t.v4('c'), 7104));
    let table = conntrack(&t.host);
    for port in [7101, 7102, 7103, 7104] {
        assert!(
            !table.contains(&format!("dport={port} ")),
            "tracked: {port}\n{table}"
        );
    }
    // Positive control: b and c are still tracked between themselves.
    assert!(t.tcp('b', 'c', t.v4('c'), 7105));
    assert!(conntrack(&t.host).contains("dport=7105 "));

    assert_diff_equals_render(&nft, &stateful, &both_ways).await;
    assert_diff_equals_render(&nft, &both_ways, &stateful).await;
}

/// Published host ports (Docker's `-p`) on real traffic. The host namespace gets what
/// the agent gives it (gateway addresses on the bridge, forwarding on) and a client
/// namespace on its `eth0` (10.79.0.0/24, fd79::/64). The client reaches container a
/// through the host's address, the host through its own address, container b
/// through the host (hairpin); a's ingress rules still decide; nothing but the
/// published port is routed to or from the containers; a mapping removed is closed.
#[tokio::test]
async fn published_ports_forward_to_the_container_and_go_away() {
    let t = Topo::new(&['a', 'b']);
    let host = &t.host;
    let nft = host.nft();
    host.ip(&["addr", "add", "10.78.0.254/24", "dev", BRIDGE]);
    host.ip(&["addr", "add", "fd78::fe/64", "dev", BRIDGE, "nodad"]);
    assert!(host.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]));
    assert!(host.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]));
    for l in ['a', 'b'] {
        t.ct(l)
            .ip(&["route", "add", "default", "via", "10.78.0.254"]);
        t.ct(l)
            .ip(&["-6", "route", "add", "default", "via", "fd78::fe"]);
    }
    let client = TestNs::new();
    client.ip(&["link", "set", "lo", "up"]);
    host.ip(&[
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &client.name,
    ]);
    host.ip(&["addr", "add", "10.79.0.1/24", "dev", "eth0"]);
    host.ip(&["addr", "add", "fd79::1/64", "dev", "eth0", "nodad"]);
    host.ip(&["link", "set", "eth0", "up"]);
    client.ip(&["addr", "add", "10.79.0.2/24", "dev", "eth0"]);
    client.ip(&["addr", "add", "fd79::2/64", "dev", "eth0", "nodad"]);
    client.ip(&["link", "set", "eth0", "up"]);
    // The client could route to the containers directly; only the published port
    // may pass.
    client.ip(&["route", "add", "10.78.0.0/24", "via", "10.79.0.1"]);
    client.ip(&["-6", "route", "add", "fd78::/64", "via", "fd79::1"]);

    // a: egress anywhere, ingress tcp 80 (what Docker's exposed-ports group allows)
    let mut a_rules = egress_only();
    for et in [EtherType::V4, EtherType::V6] {
        a_rules.push(rule(
            Direction::Ingress,
            et,
            Some(6),
            (Some(80), Some(80)),
            Remote::Any,
        ));
    }
    let base = Ruleset {
        networks: zone(),
        ports: arcs(vec![t.port('a', a_rules), t.port('b', egress_only())]),
        groups: BTreeMap::new(),
        published: vec![],
    };
    let mut rs = base.clone();
    rs.published = vec![
        publish(BRIDGE, 6, None, 8080, t.v4('a'), 80),
        publish(BRIDGE, 6, None, 8080, t.v6('a'), 80),
        publish(BRIDGE, 6, Some("10.79.0.1"), 8081, t.v4('a'), 80),
    ];
    nft.apply(&render(&base)).await.expect("apply base");
    let a = t.ct('a');
    assert!(
        !tcp_between(a, 80, &client, "10.79.0.1", 8080),
        "nothing published yet"
    );
    nft.apply(&diff(&base, &rs).expect("a diff"))
        .await
        .expect("publish");

    assert!(connects(a, 80, &client, "10.79.0.1", 8080), "client, IPv4");
    assert!(connects(a, 80, &client, "fd79::1", 8080), "client, IPv6");
    assert!(
        connects(a, 80, &client, "10.79.0.1", 8081),
        "client, given address"
    );
    // any address of the host, but the 8081 mapping only on 10.79.0.1
    assert!(connects(a, 80, &client, "10.78.0.254", 8080));
    assert!(!tcp_between(a, 80, &client, "10.78.0.254", 8081));
    // both directions of the forwarded connection were in the network's zone
    let ct = run(
        "ip",
        &["netns", "exec", &host.name, "cat", "/proc/net/nf_conntrack"],
    );
    assert!(
        ct.lines()
            .any(|l| l.contains("dport=8080") && l.contains("zone=1") && l.contains("ASSURED")),
        "{ct}"
    );
    assert!(
        connects(a, 80, host, "10.79.0.1", 8080),
        "the host itself, IPv4"
    );
    assert!(
        connects(a, 80, host, "fd79::1", 8080),
        "the host itself, IPv6"
    );
    assert!(
        connects(a, 80, t.ct('b'), "10.79.0.1", 8080),
        "hairpin, IPv4"
    );
    assert!(connects(a, 80, t.ct('b'), "fd79::1", 8080), "hairpin, IPv6");

    // nothing else is routed: not the client to a's address, not a to the client,
    // and the containers reach the host only for ICMP
    assert!(!tcp_between(a, 80, &client, t.v4('a'), 80));
    assert!(!tcp_between(a, 80, &client, t.v6('a'), 80));
    assert!(!tcp_between(&client, 7070, a, "10.79.0.2", 7070));
    assert!(!tcp_between(host, 7071, a, "10.78.0.254", 7071));
    assert!(t.ping('a', "10.78.0.254"));
    assert!(t.ping('a', "fd78::fe"));

    // a's ingress rules still apply to what is forwarded
    let mut closed = rs.clone();
    Arc::make_mut(&mut closed.ports[0])
        .rules
        .retain(|r| r.direction == Direction::Egress);
    nft.apply(&diff(&rs, &closed).expect("a diff"))
        .await
        .expect("close port 80");
    assert!(!tcp_between(a, 80, &client, "10.79.0.1", 8080));
    nft.apply(&diff(&closed, &rs).expect("a diff"))
        .await
        .expect("open port 80");
    assert!(connects(a, 80, &client, "10.79.0.1", 8080));

    // one mapping removed: that one is closed, the others stay
    let mut fewer = rs.clone();
    fewer.published.remove(1);
    nft.apply(&diff(&rs, &fewer).expect("a diff"))
        .await
        .expect("unpublish one");
    assert!(!tcp_between(a, 80, &client, "fd79::1", 8080));
    assert!(connects(a, 80, &client, "10.79.0.1", 8080));
    // the last one removed: all gone, chains included
    nft.apply(&diff(&fewer, &base).expect("a diff"))
        .await
        .expect("unpublish all");
    assert!(!tcp_between(a, 80, &client, "10.79.0.1", 8080));
    assert!(!tcp_between(a, 80, &client, "10.79.0.1", 8081));
    assert!(!tcp_between(a, 80, host, "10.79.0.1", 8080));
    let listed = nft
        .run(&["list", "table", "inet", "kuryr"], None)
        .await
        .expect("list");
    assert!(!listed.contains("pub"), "{listed}");
    assert_diff_equals_render(&nft, &base, &rs).await;
    assert_diff_equals_render(&nft, &rs, &base).await;
}

/// Two networks with the same CIDR on one host: conntrack zones keep them apart.
#[tokio::test]
async fn overlapping_networks_are_kept_apart_by_zones() {
    let t = Topo::new(&['a', 'b']);
    // a second bridge with two containers using the very same addresses
    let host = &t.host;
    host.ip(&["link", "add", "brqnet2", "type", "bridge"]);
    host.ip(&["link", "set", "brqnet2", "up"]);
    let mut others = vec![];
    for (n, l) in [(1u8, 'x'), (2u8, 'y')] {
        let ct = TestNs::new();
        let tap = format!("tap{l}");
        host.ip(&[
            "link", "add", &tap, "type", "veth", "peer", "name", "eth0", "netns", &ct.name,
        ]);
        ct.ip(&["link", "set", "eth0", "address", &mac(0x10 + n).to_string()]);
        ct.ip(&["link", "set", "eth0", "up"]);
        ct.ip(&["addr", "add", &format!("10.78.0.{n}/24"), "dev", "eth0"]);
        host.ip(&["link", "set", &tap, "master", "brqnet2"]);
        host.ip(&["link", "set", &tap, "up"]);
        others.push(ct);
    }
    let nft = host.nft();
    let mut x = t.port('a', vec![]);
    x.id = "port-x".into();
    x.tap = "tapx".into();
    x.bridge = "brqnet2".into();
    x.mac = mac(0x11);
    x.rules = default_rules("sg-x");
    let mut y = x.clone();
    y.id = "port-y".into();
    y.tap = "tapy".into();
    y.mac = mac(0x12);
    y.ips = vec![ip("10.78.0.2"), ip("fd78::2")];
    let rs = Ruleset {
        networks: vec![
            NetworkZone {
                bridge: BRIDGE.into(),
                zone: 1,
            },
            NetworkZone {
                bridge: "brqnet2".into(),
                zone: 2,
            },
        ],
        // a allows everything in; b allows nothing in (established only)
        ports: arcs(vec![
            t.port('a', allow_all()),
            t.port('b', egress_only()),
            x,
            y,
        ]),
        groups: BTreeMap::from([(
            "sg-x".to_string(),
            GroupMembers {
                v4: BTreeSet::from([net("10.78.0.1/32"), net("10.78.0.2/32")]),
                v6: BTreeSet::new(),
            },
        )]),
        published: vec![],
    };
    nft.apply(&render(&rs)).await.expect("apply");
    // a probe table of the test's own, counting forwarded packets per zone
    nft.apply(
        "table inet probe {\n\tchain f {\n\t\ttype filter hook forward priority 10; policy accept;\n\t\tct zone 1 counter\n\t\tct zone 2 counter\n\t}\n}\n",
    )
    .await
    .expect("probe table");
    assert!(t.ping('b', t.v4('a')));
    assert!(!t.ping_once('a', t.v4('b')));
    // x and y use the same addresses in their own network and zone
    assert!(ok(
        "ip",
        &[
            "netns",
            "exec",
            &others[0].name,
            "ping",
            "-c1",
            "-W1",
            "10.78.0.2"
        ]
    ));
    assert!(ok(
        "ip",
        &[
            "netns",
            "exec",
            &others[1].name,
            "ping",
            "-c1",
            "-W1",
            "10.78.0.1"
        ]
    ));
    let probe: Value = serde_json::from_str(
        &nft.run(&["-j", "list", "table", "inet", "probe"], None)
            .await
            .expect("list probe"),
    )
    .expect("json");
    let counts: Vec<u64> = probe["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("rule"))
        .filter_map(|r| {
            r["expr"]
                .as_array()?
                .iter()
                .find_map(|e| e.get("counter")?.get("packets")?.as_u64())
        })
        .collect();
    assert_eq!(counts.len(), 2, "{probe}");
    assert!(
        counts[0] > 0 && counts[1] > 0,
        "zone 1 and 2 packets: {counts:?}"
    );
}

// ---------------------------------------------------------------------------
// Text vs JSON (run with: cargo test --release -p kuryr-dataplane --test nft
// bench_text_vs_json -- --ignored --nocapture)

fn big_ruleset(ports: usize) -> Ruleset {
    let mut rs = Ruleset {
        networks: (0..10)
            .map(|n| NetworkZone {
                bridge: format!("brqnet{n}"),
                zone: n as u16 + 1,
            })
            .collect(),
        ..Ruleset::default()
    };
    let mut members = GroupMembers::default();
    for i in 0..ports {
        let (hi, lo) = ((i / 250) as u8, (i % 250) as u8 + 1);
        let v4 = ip(&format!("10.{hi}.{}.{lo}", i % 10));
        let v6 = ip(&format!("fd00::{hi:x}:{lo:x}"));
        members.v4.insert(IpNet::from(v4));
        members.v6.insert(IpNet::from(v6));
        let mut rules = default_rules("sg-default");
        rules.push(rule(
            Direction::Ingress,
            EtherType::V4,
            Some(6),
            (Some(22), Some(22)),
            Remote::Prefix(net("192.168.0.0/16")),
        ));
        rules.push(rule(
            Direction::Ingress,
            EtherType::V4,
            Some(1),
            (None, None),
            Remote::Any,
        ));
        rs.ports.push(Arc::new(PortFilter {
            id: format!("00000000-0000-0000-0000-{i:012}"),
            tap: format!("tap{i:011}"),
            bridge: format!("brqnet{}", i % 10),
            mac: MacAddr([0xfa, 0x16, 0x3e, 0, (i >> 8) as u8, i as u8]),
            ips: vec![v4, v6],
            allowed_address_pairs: vec![],
            port_security: true,
            stateless: false,
            rules,
        }));
    }
    rs.groups.insert("sg-default".into(), members);
    rs
}

async fn timed(nft: &Nft, args: &[&str], script: &str) -> Duration {
    let start = Instant::now();
    nft.run(args, Some(script))
        .await
        .unwrap_or_else(|e| panic!("nft {args:?}: {e}"));
    start.elapsed()
}

#[tokio::test]
#[ignore = "benchmark; run with --ignored --nocapture"]
async fn bench_text_vs_json() {
    let ns = TestNs::new();
    let nft = ns.nft();

    // full ruleset, 1,000 ports: text as rendered; JSON as nft itself lists it
    let rs = big_ruleset(1000);
    let text = render(&rs);
    if let Ok(path) = std::env::var("KURYR_NFT_DUMP") {
        std::fs::write(path, &text).expect("dump script");
    }
    nft.apply(&text).await.expect("apply text");
    let mut json: Value = serde_json::from_str(
        &nft.run(&["-j", "list", "ruleset"], None)
            .await
            .expect("list"),
    )
    .expect("json");
    strip_handles(&mut json);
    // nft 1.0.6 lists the `typeof iifname : ct zone` map as `integer`, which it does
    // not take back: the JSON side goes without the zone map and the zone chain (one
    // map of 10 elements and one rule out of ~10,000).
    if let Some(a) = json["nftables"].as_array_mut() {
        a.retain(|o| {
            o.get("metainfo").is_none()
                && o["map"]["name"] != "zones"
                && o["chain"]["name"] != "zone"
                && o["rule"]["chain"] != "zone"
        });
        // objects before what refers to them
        a.sort_by_key(|o| {
            ["table", "chain", "set", "map", "rule"]
                .iter()
                .position(|k| o.get(*k).is_some())
                .unwrap_or(5)
        });
    }
    let delete = r#"{"nftables":[{"add":{"table":{"family":"bridge","name":"kuryr"}}},{"delete":{"table":{"family":"bridge","name":"kuryr"}}},{"add":{"table":{"family":"inet","name":"kuryr"}}},{"delete":{"table":{"family":"inet","name":"kuryr"}}}]}"#;
    let json_full = json.to_string();
    let mut t_text = vec![];
    let mut t_json = vec![];
    for _ in 0..3 {
        nft.remove_all().await.expect("remove");
        t_text.push(timed(&nft, &["-f", "-"], &text).await);
        nft.run(&["-j", "-f", "-"], Some(delete))
            .await
            .expect("json delete");
        t_json.push(timed(&nft, &["-j", "-f", "-"], &json_full).await);
    }
    println!(
        "full ruleset, 1000 ports: text {} bytes {:?}; JSON {} bytes {:?}",
        text.len(),
        t_text,
        json_full.len(),
        t_json
    );
    let (_, json_rules) = kernel_state(&nft).await;
    nft.apply(&text).await.expect("apply text");
    let (_, mut text_rules) = kernel_state(&nft).await;
    text_rules.remove("inet zone");
    assert_eq!(json_rules, text_rules, "JSON and text give the same rules");

    // a 1,000-member group update (one new group of 1000 members, then removed)
    let g = group_set("sg-default", EtherType::V4);
    let elems: Vec<String> = (0..1000)
        .map(|i| format!("172.16.{}.{}", i / 250, i % 250 + 1))
        .collect();
    let text_add = format!("add element inet kuryr {g} {{ {} }}\n", elems.join(", "));
    let text_del = format!("delete element inet kuryr {g} {{ {} }}\n", elems.join(", "));
    let json_elems: Vec<Value> = elems.iter().map(|e| Value::String(e.clone())).collect();
    let json_op = |op: &str| {
        serde_json::json!({"nftables": [{op: {"element": {
            "family": "inet", "table": "kuryr", "name": g, "elem": json_elems
        }}}]})
        .to_string()
    };
    let (json_add, json_del) = (json_op("add"), json_op("delete"));
    let mut tt = vec![];
    let mut tj = vec![];
    for _ in 0..3 {
        tt.push(timed(&nft, &["-f", "-"], &text_add).await);
        timed(&nft, &["-f", "-"], &text_del).await;
        tj.push(timed(&nft, &["-j", "-f", "-"], &json_add).await);
        timed(&nft, &["-j", "-f", "-"], &json_del).await;
    }
    println!("1000-member group add: text {tt:?}; JSON {tj:?}");
    // and the same through diff()
    let mut new = rs.clone();
    if let Some(m) = new.groups.get_mut("sg-default") {
        for e in &elems {
            m.v4.insert(net(&format!("{e}/32")));
        }
    }
    let start = Instant::now();
    let d = diff(&rs, &new).expect("a diff");
    let t_diff = start.elapsed();
    let t_apply = timed(&nft, &["-f", "-"], &d).await;
    let start = Instant::now();
    let r = render(&rs);
    println!(
        "diff() of 1000 members: compute {t_diff:?}, apply {t_apply:?}, {} lines; render() of 1000 ports: {:?}",
        d.lines().count(),
        start.elapsed()
    );
    assert!(!r.is_empty());
}

/// Cost of published ports (run with: cargo test --release -p kuryr-dataplane --test
/// nft bench_published -- --ignored --nocapture): apply times of the first mapping
/// (sets, maps and chains), one more among N, N at once, and the last going; and
/// the per-packet cost for traffic that is not published (bridged iperf3 between
/// two containers, without and with 1,000 mappings present).
#[tokio::test]
#[ignore = "benchmark; run with --ignored --nocapture"]
async fn bench_published() {
    let t = Topo::new(&['a', 'b']);
    let nft = t.host.nft();
    let base = Ruleset {
        networks: zone(),
        ports: arcs(vec![t.port('a', allow_all()), t.port('b', allow_all())]),
        groups: BTreeMap::new(),
        published: vec![],
    };
    let with = |n: u16| {
        let mut rs = base.clone();
        rs.published = (0..n)
            .map(|i| publish(BRIDGE, 6, None, 10000 + i, t.v4('a'), 5201))
            .collect();
        rs
    };
    let timed_apply = async |script: &str| {
        let start = Instant::now();
        nft.apply(script).await.expect("apply");
        start.elapsed()
    };
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (mut first, mut more, mut last) = (vec![], vec![], vec![]);
    for _ in 0..5 {
        nft.apply(&render(&base)).await.expect("base");
        first.push(timed_apply(&diff(&base, &with(1)).expect("d")).await);
        more.push(timed_apply(&diff(&with(1), &with(2)).expect("d")).await);
        nft.apply(&render(&with(1000))).await.expect("1000");
        let d = diff(&with(1000), &with(1001)).expect("d");
        let one_of_1000 = timed_apply(&d).await;
        more.push(one_of_1000);
        last.push(timed_apply(&diff(&with(1001), &base).expect("d")).await);
    }
    let mut all = vec![];
    for _ in 0..3 {
        nft.apply(&render(&base)).await.expect("base");
        all.push(timed_apply(&diff(&base, &with(1000)).expect("d")).await);
    }
    println!(
        "apply (median): first mapping {:?}; one more (of 1 or 1000) {:?}; 1000 at once {:?}; all 1001 removed {:?}",
        median(first),
        median(more),
        median(all),
        median(last)
    );

    // bridged throughput a -> b, not published: without, then with 1000 mappings
    // b -> a bridged, and through a published port (b to the host's address on
    // the bridge, DNAT'd to a: the published path, hairpin)
    t.host.ip(&["addr", "add", "10.78.0.254/24", "dev", BRIDGE]);
    assert!(t.host.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]));
    for _ in 0..2 {
        let a = t.v4('a');
        let without = iperf_gbps(&t, &nft, &base, 'b', 'a', a, 5201).await;
        let with_1 = iperf_gbps(&t, &nft, &with(1), 'b', 'a', a, 5201).await;
        let with_1000 = iperf_gbps(&t, &nft, &with(1000), 'b', 'a', a, 5201).await;
        let pub_1 = iperf_gbps(&t, &nft, &with(1), 'b', 'a', "10.78.0.254", 10000).await;
        let pub_1000 = iperf_gbps(&t, &nft, &with(1000), 'b', 'a', "10.78.0.254", 10000).await;
        println!(
            "TCP b -> a, best of 3 (Gbit/s): bridged {without:.2} without published ports, \
             {with_1:.2} with 1, {with_1000:.2} with 1000; through the published port \
             {pub_1:.2} with 1, {pub_1000:.2} with 1000"
        );
    }
}

/// Best of three 3-second iperf3 runs from `from` to `to:port` (the server in
/// `server`, on 5201) under `rs`, in Gbit/s.
async fn iperf_gbps(
    t: &Topo,
    nft: &Nft,
    rs: &Ruleset,
    from: char,
    server: char,
    to: &str,
    port: u16,
) -> f64 {
    nft.apply(&render(rs)).await.expect("apply");
    let mut best: f64 = 0.0;
    for _ in 0..3 {
        let mut srv = Command::new("ip")
            .args(["netns", "exec", &t.ct(server).name, "iperf3", "-s", "-1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 server");
        wait_listening(&t.ct(server).name, 5201);
        let port = port.to_string();
        let out = Command::new("ip")
            .args(["netns", "exec", &t.ct(from).name, "iperf3", "-c", to, "-p"])
            .args([port.as_str(), "-t", "3", "-J", "--connect-timeout", "2000"])
            .output()
            .expect("iperf3 client");
        let _ = srv.kill();
        let _ = srv.wait();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let bps = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0);
        if bps == 0.0 {
            eprintln!(
                "iperf3 to {to}:{port} failed: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        best = best.max(bps / 1e9);
    }
    best
}

/// What the agent's pass costs in userspace per change, as a host fills: compiling
/// the desired ruleset, comparing, and computing the element changes.
#[test]
#[ignore = "benchmark; run with --ignored --nocapture"]
fn bench_compile_and_element_changes() {
    for ports in [100, 1000] {
        let old = big_ruleset(ports);
        let mut new = old.clone();
        new.ports.pop();
        // Best of 5 (the agent's passes run warm).
        let mut compile_ms = f64::MAX;
        let (mut co, mut cn) = (compile(&old), compile(&new));
        for _ in 0..5 {
            let t = Instant::now();
            (co, cn) = (compile(&old), compile(&new));
            compile_ms = compile_ms.min(t.elapsed().as_secs_f64() * 1e3 / 2.0);
        }
        let t = Instant::now();
        let same = old == new;
        let eq_ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let changes = element_changes(&co, &cn).expect("elements only");
        let changes_ms = t.elapsed().as_secs_f64() * 1e3;
        // What the agent does instead: the same change found and made in place.
        let mut model = co.clone();
        let t = Instant::now();
        let in_place = model.update(&old, &new).expect("in place");
        let update_ms = t.elapsed().as_secs_f64() * 1e3;
        assert_eq!(model, cn);
        assert_eq!(in_place.len(), changes.len());
        println!(
            "{ports} ports: compile {compile_ms:.2} ms, Ruleset == {eq_ms:.3} ms ({same}), element_changes {changes_ms:.2} ms ({} sets), Compiled::update in place {update_ms:.3} ms",
            changes.len()
        );
    }
}

/// What one port's element batch costs the kernel as the host fills, set by set.
#[tokio::test]
#[ignore = "benchmark; run with --ignored --nocapture"]
async fn bench_element_batches() {
    for ports in [10, 200, 1000] {
        let ns = TestNs::new();
        let nft = ns.nft();
        let old = big_ruleset(ports);
        nft.apply(&render(&old)).await.expect("load");
        let handle = NetNs::open(format!("/run/netns/{}", ns.name)).expect("ns");
        let mut elements = netns::run_in(&handle, Elements::open)
            .expect("enter")
            .expect("socket");
        let mut new = old.clone();
        let mut p = (*new.ports[0]).clone();
        p.id = "extra".into();
        p.tap = "tapextra".into();
        p.ips = vec![ip("10.250.0.1"), ip("fd00::fa:1")];
        new.ports.push(Arc::new(p));
        let g = new.groups.get_mut("sg-default").expect("group");
        g.v4.insert(net("10.250.0.1/32"));
        g.v6.insert(net("fd00::fa:1/128"));
        let changes = element_changes(&compile(&old), &compile(&new)).expect("elements");
        let mut line = format!("{ports} ports:");
        let mut total = Duration::ZERO;
        for c in &changes {
            let t = Instant::now();
            elements
                .apply("kuryr", std::slice::from_ref(c))
                .expect("apply");
            let took = t.elapsed();
            total += took;
            line += &format!(" {} {:.3}", c.set, took.as_secs_f64() * 1e3);
        }
        println!("{line} | total {:.3} ms", total.as_secs_f64() * 1e3);
    }
}

fn arcs(ports: Vec<PortFilter>) -> Vec<Arc<PortFilter>> {
    ports.into_iter().map(Arc::new).collect()
}
