//! kuryr-dataplane's netlink and netns against the real kernel (run as root).
//!
//! Network safety: no test touches the machine's own namespace. Each test makes its
//! own namespaces (`ip netns add kt-nl-...`, removed by a Drop guard even when the
//! test panics), talks netlink only through `Netlink::in_namespace` on them, and
//! uses addresses (10.77.x.x, fd77::/16) only inside them. Results are checked with
//! iproute2 (`ip -j`, `bridge -j`) and ping run in those namespaces.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use kuryr_dataplane::MacAddr;
use kuryr_dataplane::netlink::{
    FdbEntry, Neighbour, Netlink, Route, RouteSpec, VethSpec, VxlanInfo, VxlanSpec,
};
use kuryr_dataplane::netns::{self, NetNs};
use serde_json::Value;

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
            "kt-nl-{}-{}-{:x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            nanos
        );
        run("ip", &["netns", "add", &name]);
        TestNs { name }
    }

    fn open(&self) -> NetNs {
        NetNs::open(format!("/run/netns/{}", self.name)).expect("open test namespace")
    }

    fn netlink(&self) -> Netlink {
        Netlink::in_namespace(&self.open()).expect("netlink in test namespace")
    }

    /// `ip -j -n NS ARGS...`, parsed.
    fn ip_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["-j", "-n", &self.name];
        full.extend_from_slice(args);
        let out = run("ip", &full);
        if out.trim().is_empty() {
            return Value::Array(vec![]);
        }
        serde_json::from_str(&out).expect("ip -j output is JSON")
    }

    fn bridge_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["-j", "-n", &self.name];
        full.extend_from_slice(args);
        let out = run("bridge", &full);
        if out.trim().is_empty() {
            return Value::Array(vec![]);
        }
        serde_json::from_str(&out).expect("bridge -j output is JSON")
    }

    fn link_json(&self, name: &str) -> Value {
        self.ip_json(&["-d", "link", "show", "dev", name])[0].clone()
    }

    fn has_link(&self, name: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.name, "link", "show", "dev", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    fn exec_ok(&self, args: &[&str]) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// `ip -n NS monitor OBJECTS...` in the background, subscribed once it returns:
    /// a marker link made after it started has been seen (no sleep).
    fn monitor(&self, objects: &[&str]) -> Monitor {
        assert!(objects.contains(&"link"), "the monitor's markers are links");
        let mut child = Command::new("ip")
            .args(["-n", &self.name, "monitor"])
            .args(objects)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ip monitor");
        let stdout = child.stdout.take().expect("monitor stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let m = Monitor {
            child,
            lines,
            ns: self.name.clone(),
        };
        // Until the marker shows, the monitor may not be subscribed yet: make it again.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if m.mark("kmarkstart", Duration::from_millis(100)).is_some() {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "ip monitor never saw a marker link"
            );
        }
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

struct Monitor {
    child: Child,
    lines: mpsc::Receiver<String>,
    ns: String,
}

impl Monitor {
    /// Makes and deletes a bridge named `name`; returns the lines printed before its
    /// creation, or None if its deletion was not seen within `wait`. Netlink events
    /// come in order, so every change made before the marker is among those lines.
    fn mark(&self, name: &str, wait: Duration) -> Option<Vec<String>> {
        run(
            "ip",
            &["-n", &self.ns, "link", "add", name, "type", "bridge"],
        );
        run("ip", &["-n", &self.ns, "link", "del", name]);
        let deadline = Instant::now() + wait;
        let mut before = Vec::new();
        let mut created = false;
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if !line.contains(name) {
                if !created {
                    before.push(line);
                }
            } else if line.starts_with("Deleted") {
                return Some(before);
            } else {
                created = true;
            }
        }
        None
    }

    /// Stops the monitor and returns what it printed since it started.
    fn finish(self) -> String {
        let lines = self
            .mark("kmarkend", Duration::from_secs(10))
            .expect("ip monitor never saw the end marker");
        // The start marker's last event may go on over indented lines, and a start
        // marker made twice (a slow first one) may leave its lines behind.
        lines
            .into_iter()
            .skip_while(|l| l.starts_with(char::is_whitespace))
            .filter(|l| !l.contains("kmarkstart"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

fn net(s: &str) -> IpNet {
    s.parse().expect("test network literal")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address literal")
}

fn mac(s: &str) -> MacAddr {
    s.parse().expect("test MAC literal")
}

fn flags(link: &Value) -> Vec<String> {
    link["flags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `ip -j addr show dev X` as a set of "addr/len".
fn addr_set(ns: &TestNs, dev: &str) -> BTreeSet<String> {
    let v = ns.ip_json(&["addr", "show", "dev", dev]);
    let mut out = BTreeSet::new();
    for info in v[0]["addr_info"].as_array().into_iter().flatten() {
        out.insert(format!(
            "{}/{}",
            info["local"].as_str().unwrap_or("?"),
            info["prefixlen"]
        ));
    }
    out
}

/// `ip -j [-6] route show` as a set of "dst via gw dev d".
fn route_set(ns: &TestNs, v6: bool) -> BTreeSet<String> {
    let v = if v6 {
        ns.ip_json(&["-6", "route", "show"])
    } else {
        ns.ip_json(&["route", "show"])
    };
    let mut out = BTreeSet::new();
    for r in v.as_array().into_iter().flatten() {
        out.insert(format!(
            "{} via {} dev {}",
            r["dst"].as_str().unwrap_or("?"),
            r["gateway"].as_str().unwrap_or("-"),
            r["dev"].as_str().unwrap_or("?")
        ));
    }
    out
}

/// Waits until no address of `dev` is tentative (link-local DAD), so later
/// checks see a quiet interface.
fn wait_no_tentative(ns: &TestNs, dev: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = ns.ip_json(&["addr", "show", "dev", dev]);
        let tentative = v[0]["addr_info"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["tentative"].as_bool() == Some(true));
        if !tentative {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "addresses of {dev} stay tentative: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn run_in_enters_the_namespace_on_another_thread() {
    let ns = TestNs::new();
    let netns = ns.open();
    let target_ino = std::fs::metadata(netns.path()).expect("stat ns").ino();
    let before = std::fs::metadata("/proc/thread-self/ns/net")
        .expect("stat own ns")
        .ino();
    assert_ne!(before, target_ino, "test namespace is the caller's own");
    let inside = netns::run_in(&netns, || {
        std::fs::metadata("/proc/thread-self/ns/net")
            .map(|m| m.ino())
            .ok()
    })
    .expect("run_in");
    assert_eq!(inside, Some(target_ino));
    let after = std::fs::metadata("/proc/thread-self/ns/net")
        .expect("stat own ns")
        .ino();
    assert_eq!(after, before, "the calling thread changed namespace");
    // NetNs::current is this thread's namespace.
    let cur = NetNs::current().expect("current ns");
    assert_eq!(
        netns::run_in(&cur, || std::fs::metadata("/proc/thread-self/ns/net")
            .map(|m| m.ino())
            .ok())
        .expect("run_in current"),
        Some(before)
    );

    // Errors: a missing file, a file that is not a network namespace, a panic.
    assert!(NetNs::open("/run/netns/kt-nl-does-not-exist").is_err());
    let uts = NetNs::open("/proc/thread-self/ns/uts").expect("open uts ns file");
    let err = netns::run_in(&uts, || ()).expect_err("setns into a uts ns as a netns");
    assert!(err.to_string().contains("setns"), "{err}");
    assert!(netns::run_in(&netns, || panic!("boom")).is_err());
    // A Netlink needs a tokio runtime for its connection task.
    assert!(matches!(
        Netlink::in_namespace(&netns),
        Err(kuryr_dataplane::netlink::NetlinkError::NoRuntime)
    ));
}

#[tokio::test]
async fn bridge_and_vxlan_created_read_back_idempotent_and_recreated() {
    let ns = TestNs::new();
    // An underlay device for the vxlan (this kernel has no dummy driver).
    run(
        "ip",
        &[
            "-n", &ns.name, "link", "add", "ul0", "type", "veth", "peer", "name", "ul1",
        ],
    );
    let nl = ns.netlink();
    let ul0 = nl
        .link_by_name("ul0")
        .await
        .expect("get ul0")
        .expect("ul0 exists");
    assert_eq!(nl.link_by_name("nope0").await.expect("get missing"), None);

    let br = nl
        .ensure_bridge("br-kt", 1450)
        .await
        .expect("ensure bridge");
    assert_eq!(br.kind.as_deref(), Some("bridge"));
    assert_eq!((br.name.as_str(), br.mtu, br.up), ("br-kt", 1450, true));
    let j = ns.link_json("br-kt");
    assert_eq!(j["linkinfo"]["info_kind"], "bridge");
    assert_eq!(j["mtu"], 1450);
    assert!(flags(&j).contains(&"UP".to_string()), "{j}");
    let br2 = nl
        .ensure_bridge("br-kt", 1450)
        .await
        .expect("ensure bridge again");
    assert_eq!(br2.index, br.index);

    let mut spec = VxlanSpec {
        name: "vx-kt".to_string(),
        vni: 4242,
        local: ip("10.77.0.1"),
        port: 4789,
        mtu: 1450,
        master: br.index,
        underlay: Some(ul0.index),
    };
    let vx = nl.ensure_vxlan(&spec).await.expect("ensure vxlan");
    assert_eq!(vx.kind.as_deref(), Some("vxlan"));
    assert_eq!(
        vx.vxlan,
        Some(VxlanInfo {
            vni: 4242,
            local: Some(ip("10.77.0.1")),
            port: 4789,
            learning: false,
            proxy: true,
            underlay: Some(ul0.index),
        })
    );
    assert_eq!((vx.master, vx.mtu, vx.up), (Some(br.index), 1450, true));
    let j = ns.link_json("vx-kt");
    let data = &j["linkinfo"]["info_data"];
    assert_eq!(data["id"], 4242, "{j}");
    assert_eq!(data["local"], "10.77.0.1");
    assert_eq!(data["port"], 4789);
    assert_eq!(data["learning"], false);
    assert_eq!(data["proxy"], true);
    assert_eq!(data["link"], "ul0");
    assert_eq!(j["master"], "br-kt");
    assert_eq!(j["mtu"], 1450);
    assert!(flags(&j).contains(&"UP".to_string()), "{j}");

    // Same spec: nothing recreated; a drifted mtu is put back.
    let again = nl.ensure_vxlan(&spec).await.expect("ensure vxlan again");
    assert_eq!(again.index, vx.index);
    nl.set_mtu(vx.index, 1400).await.expect("set mtu");
    assert_eq!(ns.link_json("vx-kt")["mtu"], 1400);
    let again = nl
        .ensure_vxlan(&spec)
        .await
        .expect("ensure vxlan after mtu drift");
    assert_eq!((again.index, again.mtu), (vx.index, 1450));
    assert_eq!(ns.link_json("vx-kt")["mtu"], 1450);

    // Another vni: deleted and recreated, still enslaved and up.
    spec.vni = 4243;
    let re = nl.ensure_vxlan(&spec).await.expect("ensure vxlan, new vni");
    assert_ne!(re.index, vx.index);
    assert_eq!(re.vxlan.as_ref().map(|v| v.vni), Some(4243));
    let j = ns.link_json("vx-kt");
    assert_eq!(j["linkinfo"]["info_data"]["id"], 4243);
    assert_eq!(j["master"], "br-kt");
    assert!(flags(&j).contains(&"UP".to_string()), "{j}");
    // Learning turned on behind our back: recreated with learning off.
    run(
        "ip",
        &[
            "-n", &ns.name, "link", "set", "vx-kt", "type", "vxlan", "learning",
        ],
    );
    let re2 = nl
        .ensure_vxlan(&spec)
        .await
        .expect("ensure vxlan after learning on");
    assert_eq!(
        ns.link_json("vx-kt")["linkinfo"]["info_data"]["learning"],
        false
    );
    assert_eq!(re2.vxlan.map(|v| v.learning), Some(false));

    let links = nl.links().await.expect("links");
    let names: BTreeSet<&str> = links.iter().map(|l| l.name.as_str()).collect();
    for n in ["lo", "ul0", "ul1", "br-kt", "vx-kt"] {
        assert!(names.contains(n), "{n} missing from {names:?}");
    }

    // A bridge name taken by another kind is an error.
    assert!(nl.ensure_bridge("ul0", 1450).await.is_err());
}

#[tokio::test]
async fn veth_peer_is_born_in_the_other_namespace() {
    let host = TestNs::new();
    let cont = TestNs::new();
    let nl = host.netlink();
    let br = nl.ensure_bridge("br-kt", 1500).await.expect("bridge");
    let cont_ns = cont.open();
    let spec = VethSpec {
        host_name: "vh-kt".to_string(),
        master: Some(br.index),
        mtu: 1400,
        peer_name: "ceth0".to_string(),
        peer_ns: &cont_ns,
        peer_mac: Some(mac("fa:16:3e:00:aa:01")),
    };
    let host_watch = host.monitor(&["link"]);
    let cont_watch = cont.monitor(&["link"]);
    let link = nl.create_veth(&spec).await.expect("create veth");
    let host_events = host_watch.finish();
    let cont_events = cont_watch.finish();
    assert!(
        host_events.contains("vh-kt"),
        "monitor saw nothing: {host_events}"
    );
    assert!(
        !host_events.contains("ceth0"),
        "the peer appeared in the host namespace: {host_events}"
    );
    assert!(cont_events.contains("ceth0"), "{cont_events}");

    assert_eq!(link.name, "vh-kt");
    assert_eq!(link.kind.as_deref(), Some("veth"));
    assert_eq!(
        (link.master, link.mtu, link.up),
        (Some(br.index), 1400, true)
    );
    let j = host.link_json("vh-kt");
    assert_eq!(j["master"], "br-kt");
    assert_eq!(j["mtu"], 1400);
    assert!(flags(&j).contains(&"UP".to_string()), "{j}");
    assert!(!host.has_link("ceth0"));
    let p = cont.link_json("ceth0");
    assert_eq!(p["address"], "fa:16:3e:00:aa:01");
    assert_eq!(p["mtu"], 1400);
    assert_eq!(p["linkinfo"]["info_kind"], "veth");

    // The name is taken now: EEXIST, for the caller to decide.
    let err = nl.create_veth(&spec).await.expect_err("second create");
    assert!(err.is_exists(), "{err}");
    assert!(err.to_string().contains("vh-kt"), "{err}");

    // Deleting the host end takes the peer with it; deleting again is fine.
    nl.delete_link(link.index).await.expect("delete veth");
    assert!(!host.has_link("vh-kt"));
    assert!(!cont.has_link("ceth0"));
    nl.delete_link(link.index)
        .await
        .expect("delete missing veth");
}

#[tokio::test]
async fn configure_interface_converges_addresses_and_routes() {
    let host = TestNs::new();
    let cont = TestNs::new();
    let nl = host.netlink();
    let cont_ns = cont.open();
    nl.create_veth(&VethSpec {
        host_name: "vh-kt".to_string(),
        master: None,
        mtu: 1500,
        peer_name: "eth0".to_string(),
        peer_ns: &cont_ns,
        peer_mac: Some(mac("fa:16:3e:00:bb:01")),
    })
    .await
    .expect("create veth");
    // A stale address the configuration must remove.
    run(
        "ip",
        &[
            "-n",
            &cont.name,
            "addr",
            "add",
            "10.77.9.9/24",
            "dev",
            "eth0",
        ],
    );

    let cnl = cont.netlink();
    let addresses = [net("10.77.1.5/24"), net("fd77:1::5/64")];
    let routes = [
        RouteSpec {
            dest: net("0.0.0.0/0"),
            gateway: Some(ip("10.77.1.1")),
        },
        RouteSpec {
            dest: net("::/0"),
            gateway: Some(ip("fd77:1::1")),
        },
        RouteSpec {
            dest: net("10.78.0.0/16"),
            gateway: Some(ip("10.77.1.1")),
        },
    ];
    cnl.configure_interface("eth0", &addresses, &routes)
        .await
        .expect("configure");

    assert!(flags(&cont.link_json("lo")).contains(&"UP".to_string()));
    assert!(flags(&cont.link_json("eth0")).contains(&"UP".to_string()));
    let addrs = addr_set(&cont, "eth0");
    assert!(addrs.contains("10.77.1.5/24"), "{addrs:?}");
    assert!(addrs.contains("fd77:1::5/64"), "{addrs:?}");
    assert!(
        !addrs.contains("10.77.9.9/24"),
        "stale address kept: {addrs:?}"
    );
    let v4 = route_set(&cont, false);
    assert!(v4.contains("default via 10.77.1.1 dev eth0"), "{v4:?}");
    assert!(v4.contains("10.78.0.0/16 via 10.77.1.1 dev eth0"), "{v4:?}");
    let v6 = route_set(&cont, true);
    assert!(v6.contains("default via fd77:1::1 dev eth0"), "{v6:?}");
    // IPv6 addresses are usable at once (NODAD): none tentative.
    let j = cont.ip_json(&["-6", "addr", "show", "dev", "eth0"]);
    for a in j[0]["addr_info"].as_array().into_iter().flatten() {
        if a["local"] == "fd77:1::5" {
            assert_ne!(a["tentative"], true, "{a}");
        }
    }

    // Read back through the library too.
    let eth0 = cnl.link_by_name("eth0").await.expect("get").expect("eth0");
    let got = cnl.addresses(eth0.index).await.expect("addresses");
    assert!(got.contains(&net("10.77.1.5/24")) && got.contains(&net("fd77:1::5/64")));
    let got = cnl.routes(eth0.index).await.expect("routes");
    for r in &routes {
        let want = Route {
            index: eth0.index,
            dest: r.dest,
            gateway: r.gateway,
        };
        assert!(got.contains(&want), "{want:?} not in {got:?}");
    }

    // Second call: the kernel sees no change at all.
    wait_no_tentative(&cont, "eth0");
    let before = (
        addr_set(&cont, "eth0"),
        route_set(&cont, false),
        route_set(&cont, true),
    );
    let watch = cont.monitor(&["link", "address", "route"]);
    cnl.configure_interface("eth0", &addresses, &routes)
        .await
        .expect("configure again");
    let events = watch.finish();
    let events: Vec<&str> = events.lines().filter(|l| !l.contains("fe80")).collect();
    assert!(
        events.is_empty(),
        "second call changed something: {events:?}"
    );
    let after = (
        addr_set(&cont, "eth0"),
        route_set(&cont, false),
        route_set(&cont, true),
    );
    assert_eq!(before, after);

    // Changed configuration: the old v4 address goes, the new one comes.
    let addresses2 = [net("10.77.2.5/24"), net("fd77:1::5/64")];
    let routes2 = [RouteSpec {
        dest: net("0.0.0.0/0"),
        gateway: Some(ip("10.77.2.1")),
    }];
    cnl.configure_interface("eth0", &addresses2, &routes2)
        .await
        .expect("reconfigure");
    let addrs = addr_set(&cont, "eth0");
    assert!(
        addrs.contains("10.77.2.5/24") && !addrs.contains("10.77.1.5/24"),
        "{addrs:?}"
    );
    assert!(route_set(&cont, false).contains("default via 10.77.2.1 dev eth0"));

    // A wanted secondary survives the removal of its stale primary (the kernel
    // drops secondaries with their primary; they must be added back).
    run(
        "ip",
        &[
            "-n",
            &cont.name,
            "addr",
            "add",
            "10.77.2.6/24",
            "dev",
            "eth0",
        ],
    );
    let addresses3 = [net("10.77.2.6/24"), net("fd77:1::5/64")];
    cnl.configure_interface("eth0", &addresses3, &routes2)
        .await
        .expect("reconfigure to the secondary");
    let addrs = addr_set(&cont, "eth0");
    assert!(
        addrs.contains("10.77.2.6/24") && !addrs.contains("10.77.2.5/24"),
        "{addrs:?}"
    );
    assert!(route_set(&cont, false).contains("default via 10.77.2.1 dev eth0"));

    // Route and address removal by hand.
    let extra = Route {
        index: eth0.index,
        dest: net("10.79.0.0/16"),
        gateway: None,
    };
    cnl.add_route(&extra).await.expect("add link route");
    cnl.add_route(&extra).await.expect("add link route again");
    assert!(route_set(&cont, false).contains("10.79.0.0/16 via - dev eth0"));
    cnl.delete_route(&extra).await.expect("delete route");
    cnl.delete_route(&extra)
        .await
        .expect("delete missing route");
    assert!(!route_set(&cont, false).contains("10.79.0.0/16 via - dev eth0"));
    cnl.delete_address(eth0.index, net("fd77:1::5/64"))
        .await
        .expect("delete address");
    cnl.delete_address(eth0.index, net("fd77:1::5/64"))
        .await
        .expect("delete missing address");
    assert!(!addr_set(&cont, "eth0").contains("fd77:1::5/64"));

    // The kernel's own explanation (extended ack) is part of the error.
    let unreachable = Route {
        index: eth0.index,
        dest: net("10.80.0.0/16"),
        gateway: Some(ip("10.99.0.1")),
    };
    let err = cnl
        .add_route(&unreachable)
        .await
        .expect_err("gateway off-link");
    assert!(err.errno().is_some(), "{err}");
    assert!(
        err.to_string().contains("Nexthop has invalid gateway"),
        "{err}"
    );

    let err = cnl
        .configure_interface("nope0", &addresses, &routes)
        .await
        .expect_err("missing interface");
    assert!(err.to_string().contains("nope0"), "{err}");
}

#[tokio::test]
async fn fdb_and_neighbour_entries() {
    let ns = TestNs::new();
    let nl = ns.netlink();
    let br = nl.ensure_bridge("br-kt", 1450).await.expect("bridge");
    let vx = nl
        .ensure_vxlan(&VxlanSpec {
            name: "vx-kt".to_string(),
            vni: 100,
            local: ip("10.77.0.1"),
            port: 4789,
            mtu: 1450,
            master: br.index,
            underlay: None,
        })
        .await
        .expect("vxlan");

    let remote_mac = mac("fa:16:3e:00:cc:01");
    nl.fdb_append(vx.index, MacAddr::ZERO, ip("10.77.0.2"))
        .await
        .expect("flood 1");
    nl.fdb_append(vx.index, MacAddr::ZERO, ip("10.77.0.3"))
        .await
        .expect("flood 2");
    nl.fdb_append(vx.index, remote_mac, ip("10.77.0.2"))
        .await
        .expect("unicast");
    nl.fdb_append(vx.index, MacAddr::ZERO, ip("10.77.0.2"))
        .await
        .expect("flood 1 again");
    let got: BTreeSet<FdbEntry> = nl.fdb(vx.index).await.expect("fdb").into_iter().collect();
    let want: BTreeSet<FdbEntry> = [
        FdbEntry {
            mac: MacAddr::ZERO,
            dst: ip("10.77.0.2"),
        },
        FdbEntry {
            mac: MacAddr::ZERO,
            dst: ip("10.77.0.3"),
        },
        FdbEntry {
            mac: remote_mac,
            dst: ip("10.77.0.2"),
        },
    ]
    .into();
    assert_eq!(got, want);
    let tool = |ns: &TestNs| -> BTreeSet<String> {
        ns.bridge_json(&["fdb", "show", "dev", "vx-kt"])
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e.get("dst").is_some())
            .map(|e| {
                format!(
                    "{} {} {}",
                    e["mac"].as_str().unwrap_or("?"),
                    e["dst"].as_str().unwrap_or("?"),
                    e["state"].as_str().unwrap_or("-")
                )
            })
            .collect()
    };
    assert_eq!(
        tool(&ns),
        [
            "00:00:00:00:00:00 10.77.0.2 permanent",
            "00:00:00:00:00:00 10.77.0.3 permanent",
            "fa:16:3e:00:cc:01 10.77.0.2 permanent",
        ]
        .map(String::from)
        .into()
    );

    nl.fdb_delete(vx.index, MacAddr::ZERO, ip("10.77.0.3"))
        .await
        .expect("delete flood 2");
    nl.fdb_delete(vx.index, MacAddr::ZERO, ip("10.77.0.3"))
        .await
        .expect("delete missing");
    nl.fdb_delete(vx.index, remote_mac, ip("10.77.0.9"))
        .await
        .expect("delete missing dst");
    assert_eq!(
        tool(&ns),
        [
            "00:00:00:00:00:00 10.77.0.2 permanent",
            "fa:16:3e:00:cc:01 10.77.0.2 permanent",
        ]
        .map(String::from)
        .into()
    );

    // Neighbours (answered by the vxlan's ARP/ND proxy).
    let (m1, m2, m3) = (
        mac("fa:16:3e:00:dd:01"),
        mac("fa:16:3e:00:dd:02"),
        mac("fa:16:3e:00:dd:03"),
    );
    nl.neighbour_replace(vx.index, ip("10.77.5.2"), m1)
        .await
        .expect("neigh v4");
    nl.neighbour_replace(vx.index, ip("fd77:5::2"), m2)
        .await
        .expect("neigh v6");
    nl.neighbour_replace(vx.index, ip("10.77.5.2"), m3)
        .await
        .expect("neigh v4 replaced");
    let got: BTreeSet<Neighbour> = nl
        .neighbours(vx.index)
        .await
        .expect("neighbours")
        .into_iter()
        .collect();
    let want: BTreeSet<Neighbour> = [
        Neighbour {
            ip: ip("10.77.5.2"),
            mac: m3,
        },
        Neighbour {
            ip: ip("fd77:5::2"),
            mac: m2,
        },
    ]
    .into();
    assert_eq!(got, want);
    let neigh_tool = |ns: &TestNs| -> BTreeSet<String> {
        ns.ip_json(&["neigh", "show", "dev", "vx-kt"])
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                format!(
                    "{} {} {}",
                    e["dst"].as_str().unwrap_or("?"),
                    e["lladdr"].as_str().unwrap_or("?"),
                    e["state"][0].as_str().unwrap_or("-")
                )
            })
            .collect()
    };
    assert_eq!(
        neigh_tool(&ns),
        [
            "10.77.5.2 fa:16:3e:00:dd:03 PERMANENT",
            "fd77:5::2 fa:16:3e:00:dd:02 PERMANENT",
        ]
        .map(String::from)
        .into()
    );
    nl.neighbour_delete(vx.index, ip("10.77.5.2"))
        .await
        .expect("delete neigh");
    nl.neighbour_delete(vx.index, ip("10.77.5.2"))
        .await
        .expect("delete missing neigh");
    assert_eq!(
        neigh_tool(&ns),
        ["fd77:5::2 fa:16:3e:00:dd:02 PERMANENT"]
            .map(String::from)
            .into()
    );
    assert_eq!(
        nl.neighbours(vx.index).await.expect("neighbours"),
        vec![Neighbour {
            ip: ip("fd77:5::2"),
            mac: m2
        }]
    );
}

#[tokio::test]
async fn two_containers_on_one_bridge_ping_each_other() {
    let host = TestNs::new();
    let c1 = TestNs::new();
    let c2 = TestNs::new();
    let nl = host.netlink();
    let br = nl.ensure_bridge("br-kt", 1500).await.expect("bridge");
    for (i, c) in [(1, &c1), (2, &c2)] {
        let cns = c.open();
        nl.create_veth(&VethSpec {
            host_name: format!("vh-kt{i}"),
            master: Some(br.index),
            mtu: 1500,
            peer_name: "eth0".to_string(),
            peer_ns: &cns,
            peer_mac: Some(mac(&format!("fa:16:3e:00:ee:0{i}"))),
        })
        .await
        .expect("veth");
        c.netlink()
            .configure_interface(
                "eth0",
                &[
                    net(&format!("10.77.3.{i}/24")),
                    net(&format!("fd77:3::{i}/64")),
                ],
                &[],
            )
            .await
            .expect("configure");
    }
    let ping = |from: &TestNs, args: &[&str]| -> bool {
        // A few tries: carrier and bridge port state settle asynchronously.
        (0..10).any(|_| {
            let mut full = vec!["ping", "-c1", "-W1"];
            full.extend_from_slice(args);
            from.exec_ok(&full)
        })
    };
    assert!(ping(&c1, &["10.77.3.2"]), "c1 -> c2 v4");
    assert!(ping(&c2, &["10.77.3.1"]), "c2 -> c1 v4");
    assert!(ping(&c1, &["-6", "fd77:3::2"]), "c1 -> c2 v6");
    assert!(ping(&c2, &["-6", "fd77:3::1"]), "c2 -> c1 v6");
    // And not to an address nobody has (the test can fail).
    assert!(!c1.exec_ok(&["ping", "-c1", "-W1", "10.77.3.3"]));
}
