//! The engine on a real kernel: a "host" namespace the test makes, entered by a
//! thread of its own that runs the engine; a container namespace the port is bound
//! into and a client namespace on the host's `eth0`. Needs root (network
//! namespaces) and fails without it; everything happens inside the test's own
//! namespaces, deleted when the test ends (on a panic too).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use kuryr_agent::desired::{Desired, NetDesired, NetKind, PortDesired, RemoteL2};
use kuryr_agent::engine::{ADDRESS_PROTOCOL, Engine, Pass};
use kuryr_agent::kernel::NftFirewall;
use kuryr_dataplane::MacAddr;
use kuryr_dataplane::netlink::{Netlink, RouteSpec};
use kuryr_dataplane::netns::{self, NetNs};
use kuryr_dataplane::nft::{self, Nft};

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const IP6_FORWARDING: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

/// Fails (rather than skips) a test run without root: these tests are the only
/// ones of the engine against a real kernel.
fn needs_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root (network namespaces)"
    );
}

/// A namespace's name (cheap to move into the engine's thread).
#[derive(Clone)]
struct Name(String);

impl Name {
    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
    fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", &self.0];
        full.extend_from_slice(args);
        run("ip", &full)
    }
    fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.0];
        full.extend_from_slice(args);
        run("ip", &full)
    }
}

/// A namespace of this test, deleted on drop.
struct Ns(Name);

impl Ns {
    fn new(tag: &str) -> Ns {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("kt-eng-{}-{tag}-{nanos:x}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let ns = Ns(Name(name));
        ns.0.ip(&["link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0.0])
            .status();
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A listener, killed when dropped (on a panic too).
struct Listener(std::process::Child);

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `client` gets data through `to:port` to a listener on `listen` in
/// `server` (busybox nc; two tries, the first may wait for ARP/ND).
fn connects(server: &Name, listen: u16, client: &Name, to: &str, port: u16) -> bool {
    (0..2).any(|_| {
        let mut srv = Listener(
            Command::new("ip")
                .args(["netns", "exec", &server.0, "busybox", "nc", "-l", "-p"])
                .arg(listen.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("nc server"),
        );
        // Listening before the client tries: a failed try is then the firewall's.
        let filter = format!("sport = :{listen}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while run("ip", &["netns", "exec", &server.0, "ss", "-Hltn", &filter]).is_empty() {
            assert!(Instant::now() < deadline, "nc never listened on {listen}");
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = Command::new("ip")
            .args(["netns", "exec", &client.0, "sh", "-c"])
            .arg(format!("echo kuryr-hello | busybox nc -w1 {to} {port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // The listener ends with the connection; none came if it is still there.
        let deadline = Instant::now() + Duration::from_millis(800);
        while Instant::now() < deadline && matches!(srv.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = srv.0.kill();
        let mut out = String::new();
        if let Some(mut stdout) = srv.0.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
        }
        out.contains("kuryr-hello")
    })
}

const BR: &str = "brqkt-eng";

fn desired(ct: &Name, published: &[(u16, &str)]) -> Desired {
    let net = |s: &str| s.parse::<IpNet>().unwrap();
    let gateways = vec![net("10.78.1.254/24"), net("fd78:1::fe/64")];
    let mut d = Desired::default();
    d.networks.insert(
        "net-1".into(),
        NetDesired {
            id: "net-1".into(),
            bridge: BR.into(),
            mtu: 1500,
            kind: NetKind::Local,
            remote: RemoteL2::default(),
            gateways: if published.is_empty() {
                vec![]
            } else {
                gateways.clone()
            },
            subnet_gateways: gateways,
        },
    );
    let mac: MacAddr = "fa:16:3e:00:01:05".parse().unwrap();
    d.ports.insert(
        "port-1".into(),
        Arc::new(PortDesired {
            id: "port-1".into(),
            network_id: "net-1".into(),
            bridge: BR.into(),
            tap: "tapkt-eng1".into(),
            netns: ct.path().into(),
            ifname: "eth0".into(),
            handoff: false,
            mac,
            mtu: 1500,
            addresses: vec![net("10.78.1.5/24"), net("fd78:1::5/64")],
            routes: vec![
                RouteSpec {
                    dest: net("0.0.0.0/0"),
                    gateway: Some("10.78.1.254".parse().unwrap()),
                },
                RouteSpec {
                    dest: net("::/0"),
                    gateway: Some("fd78:1::fe".parse().unwrap()),
                },
            ],
        }),
    );
    let any =
        |d: nft::Direction, e: nft::EtherType, proto: Option<u8>, port: Option<u16>| nft::Rule {
            direction: d,
            ethertype: e,
            protocol: proto,
            port_range_min: port,
            port_range_max: port,
            remote: nft::Remote::Any,
        };
    let mut rules = vec![];
    for e in [nft::EtherType::V4, nft::EtherType::V6] {
        rules.push(any(nft::Direction::Egress, e, None, None));
        rules.push(any(nft::Direction::Ingress, e, Some(6), Some(80)));
    }
    d.ruleset.networks.push(nft::NetworkZone {
        bridge: BR.into(),
        zone: 1,
    });
    d.ruleset.ports.push(Arc::new(nft::PortFilter {
        id: "port-1".into(),
        tap: "tapkt-eng1".into(),
        bridge: BR.into(),
        mac,
        ips: vec!["10.78.1.5".parse().unwrap(), "fd78:1::5".parse().unwrap()],
        allowed_address_pairs: vec![],
        port_security: true,
        stateless: false,
        rules,
    }));
    d.ruleset.published = published
        .iter()
        .map(|(hport, to)| nft::Published {
            bridge: BR.into(),
            protocol: 6,
            host_ip: None,
            host_port: *hport,
            container_ip: to.parse().unwrap(),
            container_port: 80,
        })
        .collect();
    d
}

/// Runs `f` with a fresh engine on a thread inside `host`, and a netlink socket
/// there to look at what the engine did.
fn with_engine<T: Send + 'static>(
    host: &Name,
    f: impl AsyncFnOnce(&mut Engine, &Netlink) -> T + Send + 'static,
) -> T {
    with_engine_lingering(host, Duration::ZERO, f)
}

fn with_engine_lingering<T: Send + 'static>(
    host: &Name,
    linger: Duration,
    f: impl AsyncFnOnce(&mut Engine, &Netlink) -> T + Send + 'static,
) -> T {
    let ns = NetNs::open(host.path()).expect("open host namespace");
    netns::run_in(&ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let netlink = Netlink::current().expect("netlink");
            let mut engine = Engine::new(
                netlink.clone(),
                NftFirewall::new(Nft::new()),
                "10.79.1.1".parse().unwrap(),
                None,
                4789,
                linger,
            );
            f(&mut engine, &netlink).await
        })
    })
    .expect("run in the host namespace")
}

fn converge(host: &Name, d: Desired) -> Pass {
    with_engine(host, async move |e: &mut Engine, _: &Netlink| {
        e.converge(&d).await.expect("converge")
    })
}

fn bridge_addresses(host: &Name) -> Vec<String> {
    let out = host.ip(&["-o", "addr", "show", "dev", BR]);
    let mut v: Vec<String> = out
        .lines()
        .filter_map(|l| {
            let mut w = l
                .split_whitespace()
                .skip_while(|w| *w != "inet" && *w != "inet6");
            w.next()?;
            w.next().map(str::to_string)
        })
        .filter(|a| !a.starts_with("fe80:"))
        .collect();
    v.sort();
    v
}

#[test]
fn network_links_linger_after_the_last_port() {
    needs_root();
    let (host_ns, ct_ns) = (Ns::new("h"), Ns::new("c"));
    let (host, ct) = (host_ns.0.clone(), ct_ns.0.clone());
    let h = host.clone();
    with_engine_lingering(
        &host,
        Duration::from_millis(400),
        async move |e: &mut Engine, nl: &Netlink| {
            let bridge = async || nl.link_by_name(BR).await.expect("netlink");
            let pass = e.converge(&desired(&ct, &[])).await.expect("converge");
            assert!(pass.realized.contains("port-1"), "{:?}", pass.failed);
            let first = bridge().await.expect("bridge").index;
            // The last port goes: its tap at once, the bridge only later.
            e.converge(&Desired::default()).await.expect("converge");
            assert!(
                nl.link_by_name("tapkt-eng1")
                    .await
                    .expect("netlink")
                    .is_none()
            );
            assert!(bridge().await.is_some() && e.next_removal().is_some());
            // A port coming back meanwhile reuses it.
            e.converge(&desired(&ct, &[])).await.expect("converge");
            assert_eq!(bridge().await.expect("bridge").index, first);
            assert!(e.next_removal().is_none());
            e.converge(&Desired::default()).await.expect("converge");
            let due = e.next_removal().expect("lingering");
            tokio::time::sleep_until(due.into()).await;
            e.converge(&Desired::default()).await.expect("converge");
            assert!(bridge().await.is_none(), "{}", h.ip(&["-br", "link"]));
            assert!(e.next_removal().is_none());
        },
    );
}

/// Published ports through the engine: gateway addresses on the bridge (and
/// only kuryr's removed), forwarding on, DNAT from a client and from the host;
/// one mapping removed, then the last; then, by fresh engines (agent restarts),
/// what the bridge holds is read back; a bridge lingering after its network's
/// last port keeps none of kuryr's addresses.
#[test]
fn published_ports_through_the_engine() {
    needs_root();
    let (host_ns, ct_ns, client_ns) = (Ns::new("h"), Ns::new("c"), Ns::new("x"));
    let (host, ct, client) = (host_ns.0.clone(), ct_ns.0.clone(), client_ns.0.clone());
    host.exec(&["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"]);
    host.exec(&["sysctl", "-qw", "net.bridge.bridge-nf-call-ip6tables=1"]);
    host.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &client.0,
    ]);
    host.ip(&["addr", "add", "10.79.1.1/24", "dev", "eth0"]);
    host.ip(&["addr", "add", "fd79:1::1/64", "dev", "eth0", "nodad"]);
    host.ip(&["link", "set", "eth0", "up"]);
    client.ip(&["addr", "add", "10.79.1.2/24", "dev", "eth0"]);
    client.ip(&["addr", "add", "fd79:1::2/64", "dev", "eth0", "nodad"]);
    client.ip(&["link", "set", "eth0", "up"]);
    let both = [(8080, "10.78.1.5"), (8080, "fd78:1::5")];

    // One engine through the changes (incremental passes). Blocking checks on
    // its thread are fine: nothing else runs there meanwhile.
    let h = host.clone();
    with_engine(&host, async move |e: &mut Engine, nl: &Netlink| {
        let (host, ct, client) = (h, ct, client);
        // bound, nothing published: no gateway, forwarding left as it is
        let pass = e.converge(&desired(&ct, &[])).await.expect("converge");
        assert!(pass.realized.contains("port-1"), "{:?}", pass.failed);
        assert!(bridge_addresses(&host).is_empty());
        assert_eq!(host.exec(&["cat", IP_FORWARD]).trim(), "0");
        // an address someone else put on the bridge is left alone throughout
        host.ip(&["addr", "add", "192.0.2.9/32", "dev", BR]);

        e.converge(&desired(&ct, &both)).await.expect("converge");
        assert_eq!(
            bridge_addresses(&host),
            ["10.78.1.254/24", "192.0.2.9/32", "fd78:1::fe/64"]
        );
        assert_eq!(host.exec(&["cat", IP_FORWARD]).trim(), "1");
        assert_eq!(host.exec(&["cat", IP6_FORWARDING]).trim(), "1");
        // marked as kuryr's (iproute2 6.1 does not show IFA_PROTO: read here)
        let br = nl
            .link_by_name(BR)
            .await
            .expect("netlink")
            .expect("bridge")
            .index;
        let mut marked: Vec<(String, Option<u8>)> = nl
            .all_addresses()
            .await
            .expect("netlink")
            .into_iter()
            .filter(|a| a.index == br && !a.net.to_string().starts_with("fe80:"))
            .map(|a| (a.net.to_string(), a.protocol))
            .collect();
        marked.sort();
        let k = Some(ADDRESS_PROTOCOL);
        assert_eq!(
            marked,
            [
                ("10.78.1.254/24".to_string(), k),
                ("192.0.2.9/32".to_string(), None),
                ("fd78:1::fe/64".to_string(), k)
            ]
        );
        assert!(connects(&ct, 80, &client, "10.79.1.1", 8080));
        assert!(connects(&ct, 80, &client, "fd79:1::1", 8080));
        assert!(connects(&ct, 80, &host, "10.79.1.1", 8080));
        // the gateway MAC is pinned: a port with a lower MAC does not change it
        let mac = |h: &Name| h.ip(&["-br", "link", "show", BR]);
        let before = mac(&host);
        host.ip(&[
            "link", "add", "tmp-low", "type", "veth", "peer", "name", "tmp-peer",
        ]);
        host.ip(&["link", "set", "tmp-low", "address", "02:00:00:00:00:01"]);
        host.ip(&["link", "set", "tmp-low", "master", BR]);
        assert_eq!(mac(&host), before);
        host.ip(&["link", "del", "tmp-low"]);

        // the IPv6 mapping goes: the gateways stay for the other
        e.converge(&desired(&ct, &both[..1]))
            .await
            .expect("converge");
        assert!(!connects(&ct, 80, &client, "fd79:1::1", 8080));
        assert!(connects(&ct, 80, &client, "10.79.1.1", 8080));
        assert_eq!(bridge_addresses(&host).len(), 3);

        // the last one goes: kuryr's addresses and chains go, forwarding stays
        e.converge(&desired(&ct, &[])).await.expect("converge");
        assert_eq!(bridge_addresses(&host), ["192.0.2.9/32"]);
        assert!(!connects(&ct, 80, &client, "10.79.1.1", 8080));
        let rules = host.exec(&["nft", "list", "table", "inet", "kuryr"]);
        assert!(!rules.contains("pub"), "{rules}");
        assert_eq!(host.exec(&["cat", IP_FORWARD]).trim(), "1");
    });

    // Restarts: published again by one engine; the next one, whose view no
    // longer has the subnet (only the mark tells the address is kuryr's), and
    // nothing published, removes it.
    converge(&host, desired(&ct_ns.0, &both[..1]));
    assert_eq!(bridge_addresses(&host).len(), 3);
    let mut gone_subnet = desired(&ct_ns.0, &[]);
    if let Some(n) = gone_subnet.networks.get_mut("net-1") {
        n.subnet_gateways.clear();
    }
    converge(&host, gone_subnet);
    assert_eq!(bridge_addresses(&host), ["192.0.2.9/32"]);

    // The port goes with its mapping while the bridge lingers: the gateways go
    // at once, from the same engine and, after a restart, from a fresh one.
    let linger = Duration::from_secs(60);
    let c = ct_ns.0.clone();
    with_engine_lingering(&host, linger, async move |e: &mut Engine, _: &Netlink| {
        e.converge(&desired(&c, &both[..1]))
            .await
            .expect("converge");
        e.converge(&Desired::default()).await.expect("converge");
    });
    assert!(host.ip(&["-br", "link", "show", BR]).contains(BR));
    assert_eq!(bridge_addresses(&host), ["192.0.2.9/32"]);
    converge(&host, desired(&ct_ns.0, &both[..1]));
    with_engine_lingering(&host, linger, async move |e: &mut Engine, _: &Netlink| {
        e.converge(&Desired::default()).await.expect("converge");
    });
    assert!(host.ip(&["-br", "link", "show", BR]).contains(BR));
    assert_eq!(bridge_addresses(&host), ["192.0.2.9/32"]);
    drop((host_ns, ct_ns, client_ns));
}
