//! The engine's reconcile logic on the in-memory kernel of `kernel::fake`: runs as
//! any user, no namespaces. (The engine on a real kernel, as root:
//! `tests/engine_kernel.rs`.)

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use ipnet::IpNet;
use kuryr_dataplane::MacAddr;
use kuryr_dataplane::netlink::{AddressEntry, Route, RouteSpec};
use kuryr_dataplane::nft;

use super::{ADDRESS_PROTOCOL, Engine, EngineError, Pass};
use crate::desired::{Desired, NetDesired, NetKind, PortDesired, RemoteL2, vxlan_name};
use crate::kernel::IpVersion;
use crate::kernel::fake::{FakeFirewall, FakeKernel};

const CT1: &str = "/run/netns/ct-1";
const CT2: &str = "/run/netns/ct-2";
const BR: &str = "brq-net1";
const MTU: u32 = 1450;

fn net(s: &str) -> IpNet {
    s.parse().expect("a test literal")
}

fn network(kind: NetKind) -> NetDesired {
    NetDesired {
        id: "net-1".into(),
        bridge: BR.into(),
        mtu: MTU,
        kind,
        remote: RemoteL2::default(),
        gateways: vec![],
        subnet_gateways: vec![net("10.78.1.254/24")],
    }
}

/// Port `n` of net-1, its container end `eth0` in `netns`.
fn port(n: u8, netns: &str) -> PortDesired {
    PortDesired {
        id: format!("port-{n}"),
        network_id: "net-1".into(),
        bridge: BR.into(),
        tap: format!("tap-port{n}"),
        netns: netns.into(),
        ifname: "eth0".into(),
        handoff: false,
        mac: MacAddr([0xfa, 0x16, 0x3e, 0, 1, n]),
        mtu: MTU,
        addresses: vec![
            net(&format!("10.78.1.{n}/24")),
            net(&format!("fd78:1::{n}/64")),
        ],
        routes: vec![
            RouteSpec {
                dest: net("0.0.0.0/0"),
                gateway: "10.78.1.254".parse().ok(),
            },
            RouteSpec {
                dest: net("::/0"),
                gateway: "fd78:1::fe".parse().ok(),
            },
        ],
    }
}

/// Egress anything, ingress tcp/80 (both ethertypes), plus `extra`.
fn rules(extra: &[nft::Rule]) -> Vec<nft::Rule> {
    let rule = |direction, ethertype, protocol, port| nft::Rule {
        direction,
        ethertype,
        protocol,
        port_range_min: port,
        port_range_max: port,
        remote: nft::Remote::Any,
    };
    let mut v = vec![];
    for e in [nft::EtherType::V4, nft::EtherType::V6] {
        v.push(rule(nft::Direction::Egress, e, None, None));
        v.push(rule(nft::Direction::Ingress, e, Some(6), Some(80)));
    }
    v.extend_from_slice(extra);
    v
}

fn ssh() -> nft::Rule {
    nft::Rule {
        direction: nft::Direction::Ingress,
        ethertype: nft::EtherType::V4,
        protocol: Some(6),
        port_range_min: Some(22),
        port_range_max: Some(22),
        remote: nft::Remote::Any,
    }
}

/// net-1 of `kind` and `ports` on it, each filtered by [`rules`].
fn desired(kind: NetKind, ports: &[PortDesired]) -> Desired {
    let mut d = Desired::default();
    d.networks.insert("net-1".into(), network(kind));
    d.ruleset.networks.push(nft::NetworkZone {
        bridge: BR.into(),
        zone: 1,
    });
    for p in ports {
        d.ports.insert(p.id.clone(), Arc::new(p.clone()));
        d.ruleset.ports.push(Arc::new(nft::PortFilter {
            id: p.id.clone(),
            tap: p.tap.clone(),
            bridge: p.bridge.clone(),
            mac: p.mac,
            ips: p.addresses.iter().map(IpNet::addr).collect(),
            allowed_address_pairs: vec![],
            port_security: true,
            stateless: false,
            rules: rules(&[]),
        }));
    }
    d
}

/// A fake kernel whose container namespaces `netns` exist.
fn kernel(netns: &[&str]) -> FakeKernel {
    let k = FakeKernel::new();
    for path in netns {
        k.world().add_netns(path);
    }
    k
}

fn engine(k: &FakeKernel, linger: Duration) -> Engine<FakeKernel, FakeFirewall> {
    let underlay = "10.79.1.1".parse().expect("a test literal");
    Engine::new(k.clone(), k.firewall(), underlay, None, 4789, linger)
}

async fn converge(e: &mut Engine<FakeKernel, FakeFirewall>, d: &Desired) -> Pass {
    e.converge(d).await.expect("converge")
}

/// Forgets the writes and reads so far.
fn clear(k: &FakeKernel) {
    let mut w = k.world();
    w.writes.clear();
    w.reads.clear();
}

fn ids(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn a_port_is_realized_with_its_rules_first() {
    let k = kernel(&[CT1]);
    let mut e = engine(&k, Duration::ZERO);
    let p = port(1, CT1);
    let d = desired(NetKind::Local, std::slice::from_ref(&p));
    let pass = converge(&mut e, &d).await;
    assert_eq!(pass.realized, ids(&["port-1"]));
    assert!(
        pass.failed.is_empty() && pass.repairs.is_empty(),
        "{pass:?}"
    );
    assert!(pass.nft_apply.is_some());

    let w = k.world();
    let br = w.link(BR).expect("the bridge");
    assert_eq!(
        (br.kind.as_deref(), br.mtu, br.up),
        (Some("bridge"), MTU, true)
    );
    let tap = w.link("tap-port1").expect("the host end");
    assert_eq!(
        (tap.kind.as_deref(), tap.master, tap.mtu, tap.up),
        (Some("veth"), Some(br.index), MTU, true)
    );
    let ct = w.container(CT1);
    let eth0 = ct.link("eth0").expect("the container end");
    assert_eq!((eth0.mac, eth0.mtu, eth0.up), (Some(p.mac), MTU, true));
    assert!(ct.link("lo").is_some_and(|l| l.up));
    assert_eq!(ct.addresses_of("eth0"), p.addresses);
    let routes: Vec<Route> = p
        .routes
        .iter()
        .map(|r| Route {
            index: eth0.index,
            dest: r.dest,
            gateway: r.gateway,
        })
        .collect();
    assert_eq!(ct.routes, routes);

    // The whole ruleset as one script, before the port's veth exists.
    assert_eq!(w.scripts, [nft::render(&d.ruleset)]);
    assert!(w.batches.is_empty());
    let at = |what: &str| w.writes.iter().position(|x| x.starts_with(what));
    let script = at("nft script").expect("a script");
    let veth = at("create veth tap-port1 peer eth0 in /run/netns/ct-1").expect("a veth");
    assert!(script < veth, "{:#?}", w.writes);
}

#[tokio::test]
async fn an_unchanged_pass_writes_nothing() {
    let k = kernel(&[CT1]);
    // No verification due in between.
    let mut e = engine(&k, Duration::ZERO).verify_every(Duration::from_secs(3600));
    let d = desired(NetKind::Vxlan { vni: 100 }, &[port(1, CT1)]);
    converge(&mut e, &d).await;
    assert!(!k.world().writes.is_empty(), "the first pass wrote");
    clear(&k);
    let pass = converge(&mut e, &d).await;
    assert_eq!(pass.realized, ids(&["port-1"]));
    assert!(
        pass.nft_apply.is_none() && pass.repairs.is_empty(),
        "{pass:?}"
    );
    let w = k.world();
    assert!(w.writes.is_empty(), "{:#?}", w.writes);
    assert_eq!(w.scripts.len(), 1);
    // Nor reads the container end back (a verifying pass does, below).
    assert!(!w.reads.iter().any(|r| r.contains(CT1)), "{:#?}", w.reads);
}

#[tokio::test]
async fn a_verifying_pass_reads_back_and_writes_nothing() {
    let k = kernel(&[CT1]);
    let mut e = engine(&k, Duration::ZERO).verify_every(Duration::ZERO);
    let d = remote_desired();
    converge(&mut e, &d).await;
    clear(&k);
    let pass = converge(&mut e, &d).await;
    assert_eq!(pass.realized, ids(&["port-1"]));
    assert!(pass.repairs.is_empty(), "{pass:?}");
    let w = k.world();
    assert!(w.writes.is_empty(), "{:#?}", w.writes);
    // It did look: links dumped, the container end, FDB and neighbours read.
    let vxlan = w.link(&vxlan_name(100)).expect("vxlan").index;
    for read in [
        "links".to_string(),
        format!("repair eth0 in {CT1}"),
        format!("fdb {vxlan}"),
        format!("neighbours {vxlan}"),
    ] {
        assert!(w.reads.contains(&read), "{read} not in {:#?}", w.reads);
    }
}

#[tokio::test]
async fn a_deleted_tap_is_put_back() {
    let k = kernel(&[CT1]);
    let mut e = engine(&k, Duration::ZERO).verify_every(Duration::ZERO);
    let p = port(1, CT1);
    let d = desired(NetKind::Local, std::slice::from_ref(&p));
    converge(&mut e, &d).await;
    k.world().delete_link_named("tap-port1");
    {
        let w = k.world();
        assert!(w.link("tap-port1").is_none() && w.container(CT1).link("eth0").is_none());
    }
    let pass = converge(&mut e, &d).await;
    assert_eq!(pass.repairs, BTreeMap::from([("link", 1)]));
    assert_eq!(pass.realized, ids(&["port-1"]));
    let w = k.world();
    let br = w.link(BR).expect("bridge").index;
    assert!(
        w.link("tap-port1")
            .is_some_and(|l| l.master == Some(br) && l.up)
    );
    assert_eq!(w.container(CT1).addresses_of("eth0"), p.addresses);
}

#[tokio::test]
async fn a_removed_container_address_is_put_back_and_others_stay() {
    let k = kernel(&[CT1]);
    let mut e = engine(&k, Duration::ZERO).verify_every(Duration::ZERO);
    let p = port(1, CT1);
    let d = desired(NetKind::Local, std::slice::from_ref(&p));
    converge(&mut e, &d).await;
    let (gone, vip) = (p.addresses[0], net("192.0.2.7/32"));
    {
        let mut w = k.world();
        let ct = w.container_mut(CT1).expect("container");
        let eth0 = ct.link("eth0").expect("eth0").index;
        ct.addresses.retain(|a| a.net != gone);
        ct.addresses.push(AddressEntry {
            index: eth0,
            net: vip,
            protocol: None,
        });
        assert!(!ct.addresses_of("eth0").contains(&gone));
    }
    let pass = converge(&mut e, &d).await;
    assert_eq!(pass.repairs, BTreeMap::from([("address", 1)]));
    let have = k.world().container(CT1).addresses_of("eth0");
    assert!(have.contains(&gone), "{have:?}");
    assert!(have.contains(&vip), "someone's address stays: {have:?}");
}

/// net-1 as a vxlan network with one remote port (FDB, flood, neighbour entries).
fn remote_desired() -> Desired {
    let mut d = desired(NetKind::Vxlan { vni: 100 }, &[port(1, CT1)]);
    let (mac, vtep) = (MacAddr([0xfa, 0x16, 0x3e, 0, 2, 9]), "10.79.1.2".parse());
    let vtep = vtep.expect("a test literal");
    if let Some(n) = d.networks.get_mut("net-1") {
        n.remote = RemoteL2 {
            fdb: BTreeSet::from([(mac, vtep)]),
            flood: BTreeSet::from([vtep]),
            neighbours: BTreeMap::from([("10.78.1.9".parse().expect("a test literal"), mac)]),
        };
    }
    d
}

#[tokio::test]
async fn removed_fdb_and_neighbour_entries_are_put_back() {
    let k = kernel(&[CT1]);
    let mut e = engine(&k, Duration::ZERO).verify_every(Duration::ZERO);
    let d = remote_desired();
    let remote = d.networks["net-1"].remote.clone();
    let vxlan = vxlan_name(100);
    converge(&mut e, &d).await;
    let want_fdb: BTreeSet<(MacAddr, std::net::IpAddr)> = remote
        .fdb
        .iter()
        .copied()
        .chain(remote.flood.iter().map(|v| (MacAddr::ZERO, *v)))
        .collect();
    let stranger = (
        MacAddr([2, 0, 0, 0, 0, 0x77]),
        "10.79.1.77".parse().expect("a test literal"),
    );
    {
        let mut w = k.world();
        assert_eq!(w.fdb_of(&vxlan), want_fdb);
        assert_eq!(w.neighbours_of(&vxlan), remote.neighbours);
        let index = w.link(&vxlan).expect("vxlan").index;
        let (mac, dst) = *remote.fdb.first().expect("an entry");
        let entries = w.fdb.get_mut(&index).expect("entries");
        entries.remove(&kuryr_dataplane::netlink::FdbEntry { mac, dst });
        // An entry nobody wants: removed, but not a repair.
        entries.insert(kuryr_dataplane::netlink::FdbEntry {
            mac: stranger.0,
            dst: stranger.1,
        });
        w.neighbours.remove(&index);
    }
    let pass = converge(&mut e, &d).await;
    assert_eq!(pass.repairs, BTreeMap::from([("fdb", 1), ("neighbour", 1)]));
    let w = k.world();
    assert_eq!(w.fdb_of(&vxlan), want_fdb);
    assert_eq!(w.neighbours_of(&vxlan), remote.neighbours);
}

#[tokio::test]
async fn drift_waits_for_a_verifying_pass() {
    let k = kernel(&[CT1]);
    let mut e = engine(&k, Duration::ZERO).verify_every(Duration::from_secs(1));
    let d = remote_desired();
    let vxlan = vxlan_name(100);
    converge(&mut e, &d).await;
    let before = k.world().fdb_of(&vxlan);
    {
        let mut w = k.world();
        let index = w.link(&vxlan).expect("vxlan").index;
        w.fdb.remove(&index);
    }
    clear(&k);
    // Between verifications only what changed in the desired state is looked at.
    let pass = converge(&mut e, &d).await;
    assert!(pass.repairs.is_empty(), "{pass:?}");
    assert!(k.world().fdb_of(&vxlan).is_empty());
    assert!(k.world().writes.is_empty());
    let due = e.next_wakeup().expect("a verification is due");
    tokio::time::sleep_until(due.into()).await;
    let pass = converge(&mut e, &d).await;
    assert_eq!(pass.repairs, BTreeMap::from([("fdb", before.len() as u64)]));
    assert_eq!(k.world().fdb_of(&vxlan), before);
}

#[tokio::test]
async fn a_foreign_nft_change_replaces_the_tables() {
    let k = kernel(&[CT1]);
    let mut e = engine(&k, Duration::ZERO);
    let d = desired(NetKind::Local, &[port(1, CT1)]);
    converge(&mut e, &d).await;
    converge(&mut e, &d).await;
    assert_eq!(
        k.world().scripts.len(),
        1,
        "no script while nothing changed"
    );

    k.world().foreign_change();
    let wake = e.wake();
    assert!(
        wake.notified().now_or_never().is_some(),
        "the engine is woken"
    );
    let pass = converge(&mut e, &d).await;
    assert_eq!(pass.repairs, BTreeMap::from([("nftables", 1)]));
    assert_eq!(
        k.world().scripts,
        [nft::render(&d.ruleset), nft::render(&d.ruleset)]
    );
    // Repaired once: the next pass has nothing to do.
    let pass = converge(&mut e, &d).await;
    assert!(
        pass.repairs.is_empty() && pass.nft_apply.is_none(),
        "{pass:?}"
    );
    assert_eq!(k.world().scripts.len(), 2);
}

/// One port, then a second one with the same rules (only set and map elements
/// change), then that one with one more rule (a new chain).
fn three_states() -> [Desired; 3] {
    let d1 = desired(NetKind::Local, &[port(1, CT1)]);
    let d2 = desired(NetKind::Local, &[port(1, CT1), port(2, CT2)]);
    let mut d3 = d2.clone();
    if let Some(f) = d3.ruleset.ports.iter_mut().find(|f| f.id == "port-2") {
        Arc::make_mut(f).rules = rules(&[ssh()]);
    }
    [d1, d2, d3]
}

#[tokio::test]
async fn an_element_only_change_goes_as_one_batch() {
    let k = kernel(&[CT1, CT2]);
    let mut e = engine(&k, Duration::ZERO);
    let [d1, d2, d3] = three_states();
    let (c1, c2, c3) = (
        nft::compile(&d1.ruleset),
        nft::compile(&d2.ruleset),
        nft::compile(&d3.ruleset),
    );
    let batch = nft::element_changes(&c1, &c2).expect("elements only");
    converge(&mut e, &d1).await;
    let pass = converge(&mut e, &d2).await;
    assert_eq!(pass.realized, ids(&["port-1", "port-2"]));
    assert!(pass.nft_apply.is_some());
    {
        let w = k.world();
        assert_eq!(w.batches, std::slice::from_ref(&batch));
        assert_eq!(w.scripts.len(), 1, "no script for elements");
    }
    // A new rule is more than elements: a script, the diff.
    assert!(nft::element_changes(&c2, &c3).is_none());
    converge(&mut e, &d3).await;
    let w = k.world();
    assert_eq!(w.batches, [batch]);
    assert_eq!(w.scripts.len(), 2);
    assert_eq!(w.scripts[1], nft::diff_compiled(&c2, &c3).expect("a diff"));
}

#[tokio::test]
async fn a_refused_element_batch_replaces_the_tables() {
    let k = kernel(&[CT1, CT2]);
    let mut e = engine(&k, Duration::ZERO);
    let [d1, d2, _] = three_states();
    converge(&mut e, &d1).await;
    k.world().refuse_batch = true;
    converge(&mut e, &d2).await;
    let w = k.world();
    assert!(
        w.writes.contains(&"nft elements".to_string()),
        "a batch was tried"
    );
    assert!(w.batches.is_empty());
    assert_eq!(
        w.scripts,
        [nft::render(&d1.ruleset), nft::render(&d2.ruleset)]
    );
}

#[tokio::test]
async fn without_element_batches_a_diff_script_does() {
    let k = kernel(&[CT1, CT2]);
    let mut e = engine(&k, Duration::ZERO);
    let [d1, d2, _] = three_states();
    converge(&mut e, &d1).await;
    k.world().no_elements = true;
    converge(&mut e, &d2).await;
    let w = k.world();
    let diff = nft::diff_compiled(&nft::compile(&d1.ruleset), &nft::compile(&d2.ruleset));
    assert_eq!(w.scripts.len(), 2);
    assert_eq!(Some(&w.scripts[1]), diff.as_ref());
    assert!(w.batches.is_empty());
}

#[tokio::test]
async fn a_failed_script_fails_the_pass_and_the_next_replaces_the_tables() {
    let k = kernel(&[CT1, CT2]);
    let mut e = engine(&k, Duration::ZERO);
    let [_, d2, d3] = three_states();
    converge(&mut e, &d2).await;
    k.world().fail_script = true;
    let failed = e.converge(&d3).await;
    assert!(matches!(failed, Err(EngineError::Nft(_))), "{failed:?}");
    converge(&mut e, &d3).await;
    let w = k.world();
    // Not the diff from d2: what the kernel holds is unknown after a failure.
    assert_eq!(
        w.scripts,
        [nft::render(&d2.ruleset), nft::render(&d3.ruleset)]
    );
}

#[tokio::test]
async fn without_linger_network_links_go_with_the_last_port() {
    let k = kernel(&[CT1]);
    let mut e = engine(&k, Duration::ZERO);
    let d = desired(NetKind::Vxlan { vni: 100 }, &[port(1, CT1)]);
    converge(&mut e, &d).await;
    assert!(k.world().link(BR).is_some() && k.world().link(&vxlan_name(100)).is_some());
    converge(&mut e, &Desired::default()).await;
    let w = k.world();
    for name in [BR, "tap-port1", &vxlan_name(100)] {
        assert!(w.link(name).is_none(), "{name} is still there");
    }
    assert!(e.next_removal().is_none());
}

#[tokio::test]
async fn network_links_linger_and_are_reused() {
    let k = kernel(&[CT1]);
    let mut e = engine(&k, Duration::from_secs(60));
    let d = desired(NetKind::Vxlan { vni: 100 }, &[port(1, CT1)]);
    let vxlan = vxlan_name(100);
    converge(&mut e, &d).await;
    let (bridge, device) = {
        let w = k.world();
        let index = |name: &str| w.link(name).expect("a network link").index;
        (index(BR), index(&vxlan))
    };
    // The last port goes: its tap at once, the network's links later.
    converge(&mut e, &Desired::default()).await;
    {
        let w = k.world();
        assert!(w.link("tap-port1").is_none());
        assert!(w.link(BR).is_some() && w.link(&vxlan).is_some());
    }
    assert!(e.next_removal().is_some());
    // A port coming back meanwhile gets the same ones.
    clear(&k);
    let pass = converge(&mut e, &d).await;
    assert_eq!(pass.realized, ids(&["port-1"]));
    let w = k.world();
    assert_eq!(w.link(BR).map(|l| l.index), Some(bridge));
    assert_eq!(w.link(&vxlan).map(|l| l.index), Some(device));
    assert!(w.writes.iter().any(|x| x.starts_with("create veth")));
    assert!(
        !w.writes
            .iter()
            .any(|x| x.starts_with("create bridge") || x.starts_with("create vxlan"))
    );
    assert!(e.next_removal().is_none());
}

#[tokio::test]
async fn lingering_network_links_go_when_due() {
    let k = kernel(&[CT1]);
    let mut e = engine(&k, Duration::from_millis(100));
    let d = desired(NetKind::Vxlan { vni: 100 }, &[port(1, CT1)]);
    converge(&mut e, &d).await;
    converge(&mut e, &Desired::default()).await;
    assert!(k.world().link(BR).is_some());
    let due = e.next_removal().expect("lingering");
    tokio::time::sleep_until(due.into()).await;
    converge(&mut e, &Desired::default()).await;
    let w = k.world();
    assert!(w.link(BR).is_none() && w.link(&vxlan_name(100)).is_none());
    assert!(e.next_removal().is_none());
}

#[tokio::test]
async fn a_missing_namespace_fails_only_its_port() {
    let k = kernel(&[CT1]);
    let mut e = engine(&k, Duration::ZERO);
    let d = desired(NetKind::Local, &[port(1, CT1), port(2, CT2)]);
    let pass = converge(&mut e, &d).await;
    assert_eq!(pass.realized, ids(&["port-1"]));
    assert_eq!(pass.failed.keys().collect::<Vec<_>>(), ["port-2"]);
    assert!(
        pass.failed["port-2"].to_string().contains(CT2),
        "{:?}",
        pass.failed
    );
    {
        let w = k.world();
        assert!(w.link("tap-port1").is_some());
        assert!(w.link("tap-port2").is_none());
    }
    // The namespace appears: the next pass realizes the port.
    k.world().add_netns(CT2);
    let pass = converge(&mut e, &d).await;
    assert_eq!(pass.realized, ids(&["port-1", "port-2"]));
    assert!(pass.failed.is_empty());
}

#[tokio::test]
async fn a_taken_interface_name_fails_the_port() {
    let k = kernel(&[CT1, CT2]);
    k.world().add_container_interface(CT2, "eth0");
    let mut e = engine(&k, Duration::ZERO);
    let d = desired(NetKind::Local, &[port(1, CT1), port(2, CT2)]);
    let pass = converge(&mut e, &d).await;
    assert_eq!(pass.realized, ids(&["port-1"]));
    let why = pass.failed["port-2"].to_string();
    assert!(
        why.contains("an interface named eth0 already exists"),
        "{why}"
    );
}

#[tokio::test]
async fn a_handed_off_port_is_left_to_docker() {
    let k = kernel(&[]);
    let mut e = engine(&k, Duration::ZERO);
    let mut p = port(1, "/proc/self/ns/net");
    p.handoff = true;
    p.ifname = "tmp-port1".into();
    let pass = converge(&mut e, &desired(NetKind::Local, std::slice::from_ref(&p))).await;
    assert_eq!(pass.realized, ids(&["port-1"]));
    let w = k.world();
    // Both ends here, the container's to be moved by Docker, unconfigured.
    assert!(w.link("tap-port1").is_some());
    let end = w.link("tmp-port1").expect("the container end");
    assert_eq!(end.mac, Some(p.mac));
    assert!(w.host.addresses_of("tmp-port1").is_empty());
    assert!(
        !w.reads.iter().any(|r| r.starts_with("configure")),
        "{:#?}",
        w.reads
    );
}

#[tokio::test]
async fn published_ports_get_gateways_and_forwarding() {
    let k = kernel(&[CT1]);
    let mut e = engine(&k, Duration::ZERO);
    let unpublished = desired(NetKind::Local, &[port(1, CT1)]);
    let mut published = unpublished.clone();
    let gateway = net("10.78.1.254/24");
    if let Some(n) = published.networks.get_mut("net-1") {
        n.gateways = vec![gateway];
    }
    published.ruleset.published = vec![nft::Published {
        bridge: BR.into(),
        protocol: 6,
        host_ip: None,
        host_port: 8080,
        container_ip: "10.78.1.1".parse().expect("a test literal"),
        container_port: 80,
    }];
    converge(&mut e, &unpublished).await;
    let someones = net("192.0.2.9/32");
    {
        let mut w = k.world();
        assert!(w.host.addresses_of(BR).is_empty() && w.forwarding.is_empty());
        let index = w.link(BR).expect("bridge").index;
        w.host.addresses.push(AddressEntry {
            index,
            net: someones,
            protocol: None,
        });
    }
    converge(&mut e, &published).await;
    {
        let w = k.world();
        let index = w.link(BR).expect("bridge").index;
        let mut on_bridge: Vec<(IpNet, Option<u8>)> = w
            .host
            .addresses
            .iter()
            .filter(|a| a.index == index)
            .map(|a| (a.net, a.protocol))
            .collect();
        on_bridge.sort();
        assert_eq!(
            on_bridge,
            [(gateway, Some(ADDRESS_PROTOCOL)), (someones, None)]
        );
        // The bridge's MAC is pinned before it gets the gateway.
        let at = |what: &str| w.writes.iter().position(|x| x.starts_with(what));
        assert!(at("set mac brq-net1") < at("add address 10.78.1.254/24"));
        assert!(at("set mac brq-net1").is_some());
        // IPv4 forwarding only: no IPv6 mapping.
        assert_eq!(w.forwarding, BTreeSet::from([IpVersion::V4]));
    }
    converge(&mut e, &unpublished).await;
    let w = k.world();
    assert_eq!(w.host.addresses_of(BR), [someones]);
    assert_eq!(w.forwarding, BTreeSet::from([IpVersion::V4]), "left on");
}

#[tokio::test]
async fn remove_all_removes_what_kuryr_made_only() {
    let k = kernel(&[CT1]);
    k.world().add_host_interface("eth0");
    let mut e = engine(&k, Duration::ZERO);
    converge(
        &mut e,
        &desired(NetKind::Vxlan { vni: 100 }, &[port(1, CT1)]),
    )
    .await;
    assert!(k.world().link(BR).is_some());
    e.remove_all().await.expect("remove all");
    let w = k.world();
    let left: Vec<&str> = w.host.links.values().map(|l| l.name.as_str()).collect();
    assert_eq!(left, ["eth0"]);
    assert_eq!(w.tables_removed, 1);
}
