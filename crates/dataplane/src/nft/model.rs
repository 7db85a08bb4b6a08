//! The model: a [`Ruleset`] resolved into what the kernel will hold (names
//! checked, overlaps resolved, chains shared by rules, elements typed), from which
//! both the text script and the element batches are made.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;

use super::*;
use crate::MacAddr;

/// The ingress and egress chains of port `p` (their names depend on its rules only).
pub fn chains_of(p: &PortFilter) -> (String, String) {
    let (ins, outs) = port_chains(p);
    (rules_chain("in", &ins), rules_chain("out", &outs))
}

/// `in_<digest>` / `out_<digest>`: the chain holding exactly `rules`, shared by
/// every port on the host whose groups give the same rules (so that a port bound
/// with an existing combination of groups adds map elements, never a chain). The
/// digest is the first 128 bits of the SHA-256 of the rules: stable across
/// restarts, and two different rule lists never share a chain in practice.
pub(super) fn rules_chain(prefix: &str, rules: &[String]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for r in rules {
        h.update(r.as_bytes());
        h.update(b"\n");
    }
    let digest = h.finalize();
    let mut name = format!("{prefix}_");
    for b in &digest[..16] {
        let _ = write!(name, "{b:02x}");
    }
    name
}

pub(super) fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

pub(super) fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// An address or CIDR as nft wants it (host bits cleared, /32 and /128 bare).
pub(super) fn elem(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.trunc().to_string()
    }
}

/// The nets of one family with every net inside another one dropped, so that the
/// interval set holds disjoint elements. Adjacent nets are *not* merged: adding or
/// removing one member stays one element update (a merge would turn an add into a
/// delete + add, and deletes cost the kernel a grace period: ~16 ms against ~6 ms).
pub(super) fn aggregate(nets: impl IntoIterator<Item = IpNet>, fam: EtherType) -> Vec<IpNet> {
    let mut v: Vec<IpNet> = nets
        .into_iter()
        .filter(|n| fam_of(n) == fam)
        .map(|n| n.trunc())
        .collect();
    // By first address, the widest first among equal ones: CIDRs nest or are
    // disjoint, so a net inside an earlier one is inside the last one kept.
    v.sort_by_key(|n| (n.network(), n.prefix_len()));
    v.dedup();
    let mut kept: Vec<IpNet> = Vec::with_capacity(v.len());
    for n in v {
        if !kept.last().is_some_and(|k| k.contains(&n)) {
            kept.push(n);
        }
    }
    kept.sort();
    kept
}

pub(super) fn fam_of(net: &IpNet) -> EtherType {
    match net {
        IpNet::V4(_) => EtherType::V4,
        IpNet::V6(_) => EtherType::V6,
    }
}

pub(super) fn link_local(mac: &MacAddr) -> Ipv6Addr {
    let m = mac.0;
    Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        u16::from_be_bytes([m[0] ^ 0x02, m[1]]),
        u16::from_be_bytes([m[2], 0xff]),
        u16::from_be_bytes([0xfe, m[3]]),
        u16::from_be_bytes([m[4], m[5]]),
    )
}

/// The verdict maps of the inet table, in script order. Each direction and family
/// is two maps: single addresses (the ports' fixed IPs) in a hash, looked up in
/// constant time and updated in constant time; address ranges (allowed address
/// pairs with a prefix) in an interval map, whose kernel updates cost grows with its
/// size (measured at 1,000 ports: ~5 ms per added IPv6 element, against ~0.1 ms
/// for a hash). Entries never overlap across the two (see the build).
pub(super) const VMAPS: [&str; 8] = [
    "egress4",
    "egress4_nets",
    "egress6",
    "egress6_nets",
    "ingress4",
    "ingress4_nets",
    "ingress6",
    "ingress6_nets",
];

/// Whether a set or map of kuryr's holds ranges (the `_nets` ones).
pub(super) fn holds_ranges(name: &str) -> bool {
    name.ends_with("_nets")
}

/// The map of `map` (one of the hash ones) that holds `net`.
pub(super) fn map_for(map: &'static str, net: &IpNet) -> &'static str {
    if net.prefix_len() == net.max_prefix_len() {
        return map;
    }
    match map {
        "egress4" => "egress4_nets",
        "egress6" => "egress6_nets",
        "ingress4" => "ingress4_nets",
        _ => "ingress6_nets",
    }
}

/// The sets of addresses whose traffic is not tracked (ports in stateless groups),
/// with the egress map whose entries (overlaps already resolved) they follow.
pub(super) const NOTRACK: [(&str, &str); 4] = [
    ("notrack4", "egress4"),
    ("notrack4_nets", "egress4_nets"),
    ("notrack6", "egress6"),
    ("notrack6_nets", "egress6_nets"),
];

/// The raw-priority chain: no tracking at all for ports in stateless groups, else
/// the network's conntrack zone. `notrack` is ignored on a packet that already has a
/// zone template, and `ct zone set` would replace the untracked mark: hence first,
/// and `accept` (which ends only this chain).
///
/// The first rule: frames a router leg sends toward another host (marked by
/// `bridge kuryr_dvr`, see [`super::dvr`]) are half of a routed flow whose other half
/// is routed on that host; tracked here they would be INVALID in the second packet.
pub(super) const ZONE: [&str; 10] = [
    super::dvr::NOTRACK_TRANSIT,
    "iifname . ip saddr @notrack4 notrack accept",
    "iifname . ip saddr @notrack4_nets notrack accept",
    "iifname . ip daddr @notrack4 notrack accept",
    "iifname . ip daddr @notrack4_nets notrack accept",
    "iifname . ip6 saddr @notrack6 notrack accept",
    "iifname . ip6 saddr @notrack6_nets notrack accept",
    "iifname . ip6 daddr @notrack6 notrack accept",
    "iifname . ip6 daddr @notrack6_nets notrack accept",
    "ct zone set iifname map @zones",
];

/// What render and diff work from: names resolved, bad input dropped, everything
/// sorted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Model {
    /// bridge-table sets (BSETS) -> elements.
    pub(super) bsets: BTreeMap<&'static str, BTreeSet<BElem>>,
    /// bridge -> zone.
    pub(super) zones: BTreeMap<String, u16>,
    /// set name -> (family, aggregated elements).
    pub(super) sets: BTreeMap<String, (EtherType, Vec<IpNet>)>,
    /// map name (VMAPS) -> (bridge, address) -> chain.
    pub(super) vmaps: BTreeMap<&'static str, BTreeMap<(String, IpNet), String>>,
    /// inet-table port chains (in_*, out_*) and their rules.
    pub(super) ichains: BTreeMap<String, Vec<String>>,
    /// NOTRACK sets -> (bridge, address) of ports in stateless groups.
    pub(super) notrack: BTreeMap<&'static str, BTreeSet<(String, IpNet)>>,
    /// Published host ports; `None` when there are none (no chains for them then).
    pub(super) published: Option<PubModel>,
    /// What [`Model::update`] (incremental.rs) needs to change the model in place:
    /// the number of ports using each chain,
    pub(super) chain_refs: BTreeMap<String, usize>,
    /// the number of ports whose rules name each remote-group set,
    pub(super) group_refs: BTreeMap<(String, EtherType), usize>,
    /// the addresses given to ports in the vmaps, by bridge and first address,
    pub(super) taken: BTreeMap<(String, IpAddr), IpNet>,
    /// and whether the build left nothing out (a port listed twice, a tap or an
    /// address of another port, an invalid name): only then is a change applied in
    /// place, since removing a port may bring back what another one lost to it.
    pub(super) clean: bool,
}

/// Published host ports as the elements of each of [`PUB_OBJECTS`], by name:
/// key → data, as nft text (data empty in the set).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct PubModel {
    pub(super) objects: BTreeMap<&'static str, BTreeMap<String, String>>,
}

/// The set and maps of published ports: kind, name, type. All hashed (exact
/// keys, no intervals): a lookup costs the same with one mapping or thousands.
/// `_any` maps hold the mappings for every host address (keyed by protocol and
/// port), `_ip` maps those for one host address.
pub(super) const PUB_OBJECTS: [(&str, &str, &str); 9] = [
    ("set", "pub_ports", "type inet_proto . inet_service"),
    (
        "map",
        "pub_zone_ip4",
        "typeof ip daddr . meta l4proto . th dport : ct zone",
    ),
    (
        "map",
        "pub_zone_ip6",
        "typeof ip6 daddr . meta l4proto . th dport : ct zone",
    ),
    (
        "map",
        "pub_zone_any4",
        "typeof meta l4proto . th dport : ct zone",
    ),
    (
        "map",
        "pub_zone_any6",
        "typeof meta l4proto . th dport : ct zone",
    ),
    (
        "map",
        "pub_dnat_ip4",
        "type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service",
    ),
    (
        "map",
        "pub_dnat_ip6",
        "type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service",
    ),
    (
        "map",
        "pub_dnat_any4",
        "type inet_proto . inet_service : ipv4_addr . inet_service",
    ),
    (
        "map",
        "pub_dnat_any6",
        "type inet_proto . inet_service : ipv6_addr . inet_service",
    ),
];

/// Packets to a published protocol and port on a local address (the cheap test
/// first: every packet meets it) get their zone in `pub_zone_set`.
pub(super) const PUB_ZONE: [&str; 1] =
    ["meta l4proto . th dport @pub_ports fib daddr type local jump pub_zone_set"];

/// Not loopback; the address's own mapping before an any-address one (of two `ct
/// zone set`, the first counts; a key not in a map ends that rule).
pub(super) const PUB_ZONE_SET: [&str; 6] = [
    "ip daddr 127.0.0.0/8 return",
    "ip6 daddr ::1 return",
    "ct zone set ip daddr . meta l4proto . th dport map @pub_zone_ip4",
    "ct zone set ip6 daddr . meta l4proto . th dport map @pub_zone_ip6",
    "meta nfproto ipv4 ct zone set meta l4proto . th dport map @pub_zone_any4",
    "meta nfproto ipv6 ct zone set meta l4proto . th dport map @pub_zone_any6",
];

pub(super) const PUB_DNAT: [&str; 1] =
    ["meta l4proto . th dport @pub_ports fib daddr type local jump pub_dnat_to"];

pub(super) const PUB_DNAT_TO: [&str; 6] = [
    "ip daddr 127.0.0.0/8 return",
    "ip6 daddr ::1 return",
    "meta l4proto { tcp, udp, sctp } dnat ip to ip daddr . meta l4proto . th dport map @pub_dnat_ip4",
    "meta l4proto { tcp, udp, sctp } dnat ip6 to ip6 daddr . meta l4proto . th dport map @pub_dnat_ip6",
    "meta l4proto { tcp, udp, sctp } meta nfproto ipv4 dnat ip to meta l4proto . th dport map @pub_dnat_any4",
    "meta l4proto { tcp, udp, sctp } meta nfproto ipv6 dnat ip6 to meta l4proto . th dport map @pub_dnat_any6",
];

/// Containers reach the host only with what the host started, ICMPv6 (neighbour
/// discovery for the gateway) and echo requests to the gateway.
pub(super) const PUB_INPUT: [&str; 5] = [
    "iifname != \"brq*\" return",
    "ct state established,related accept",
    "meta l4proto ipv6-icmp accept",
    "icmp type echo-request accept",
    "drop",
];

/// The chains of published ports, present only while something is published:
/// name, hook (`None`: a regular chain, jumped to), rules; in creation order.
/// `pub_zone` runs before `zone` (the first `ct zone set` of a packet counts).
pub(super) const PUB_CHAINS: [(&str, Option<&str>, &[&str]); 7] = [
    ("pub_zone_set", None, &PUB_ZONE_SET),
    ("pub_dnat_to", None, &PUB_DNAT_TO),
    (
        "pub_zone",
        Some("type filter hook prerouting priority -301; policy accept;"),
        &PUB_ZONE,
    ),
    (
        "pub_zone_out",
        Some("type filter hook output priority -300; policy accept;"),
        &PUB_ZONE,
    ),
    (
        "pub_dnat",
        Some("type nat hook prerouting priority -100; policy accept;"),
        &PUB_DNAT,
    ),
    (
        "pub_dnat_out",
        Some("type nat hook output priority -100; policy accept;"),
        &PUB_DNAT,
    ),
    (
        "pub_input",
        Some("type filter hook input priority 0; policy accept;"),
        &PUB_INPUT,
    ),
];

impl PubModel {
    pub(super) fn build(list: &[Published], zones: &BTreeMap<String, u16>) -> Option<PubModel> {
        let host_of = |p: &Published| p.host_ip.filter(|ip| !ip.is_unspecified());
        // Any-address mappings first: a specific address under one is left out.
        let mut sorted: Vec<&Published> = list.iter().collect();
        sorted.sort_by_key(|p| (host_of(p).is_some(), *p));
        let mut m = PubModel {
            objects: PUB_OBJECTS
                .iter()
                .map(|(_, name, _)| (*name, BTreeMap::new()))
                .collect(),
        };
        let mut any: BTreeSet<(EtherType, u8, u16)> = BTreeSet::new();
        let mut empty = true;
        for p in sorted {
            let proto = match p.protocol {
                6 => "tcp",
                17 => "udp",
                132 => "sctp",
                other => {
                    tracing::warn!(
                        protocol = other,
                        host_port = p.host_port,
                        "only tcp, udp and sctp ports can be published; left out"
                    );
                    continue;
                }
            };
            let Some(&zone) = zones.get(&p.bridge) else {
                tracing::warn!(bridge = %p.bridge, host_port = p.host_port,
                    "published port on a bridge with no conntrack zone; left out");
                continue;
            };
            let fam = fam_of(&host_net(p.container_ip));
            let host = host_of(p);
            if let Some(h) = host {
                if fam_of(&host_net(h)) != fam {
                    tracing::warn!(host_ip = %h, container_ip = %p.container_ip,
                        "published host address of another family than the container's; left out");
                    continue;
                }
                if h.is_loopback() {
                    tracing::warn!(host_ip = %h, host_port = p.host_port,
                        "loopback host addresses cannot be published by DNAT; left out");
                    continue;
                }
            }
            let port = format!("{proto} . {}", p.host_port);
            let (key, kind) = match host {
                Some(h) => (format!("{h} . {port}"), "ip"),
                None => (port.clone(), "any"),
            };
            let f = match fam {
                EtherType::V4 => 4,
                EtherType::V6 => 6,
            };
            let (zone_map, dnat_map) =
                (format!("pub_zone_{kind}{f}"), format!("pub_dnat_{kind}{f}"));
            let slot = (fam, p.protocol, p.host_port);
            let taken = m
                .objects
                .get(dnat_map.as_str())
                .is_some_and(|e| e.contains_key(&key));
            if any.contains(&slot) || taken {
                tracing::warn!(%key, container_ip = %p.container_ip,
                    "host port already published; left out");
                continue;
            }
            if host.is_none() {
                any.insert(slot);
            }
            let target = format!("{} . {}", p.container_ip, p.container_port);
            for (name, value) in [
                ("pub_ports", (port.clone(), String::new())),
                (zone_map.as_str(), (key.clone(), zone.to_string())),
                (dnat_map.as_str(), (key.clone(), target)),
            ] {
                if let Some(e) = m.objects.get_mut(name) {
                    e.insert(value.0, value.1);
                }
            }
            empty = false;
        }
        (!empty).then_some(m)
    }

    /// The elements of one of [`PUB_OBJECTS`] as key → data.
    pub(super) fn projection(&self, name: &str) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.objects.get(name).unwrap_or(&EMPTY)
    }

    /// The elements of one of [`PUB_OBJECTS`] as nft text.
    pub(super) fn elements(&self, name: &str) -> Vec<String> {
        self.projection(name)
            .iter()
            .map(|(k, v)| pub_elem(k, v))
            .collect()
    }
}

/// An element of a published-port set (`v` empty) or map.
pub(super) fn pub_elem(k: &str, v: &str) -> String {
    if v.is_empty() {
        k.to_string()
    } else {
        format!("{k} : {v}")
    }
}

pub(super) fn rule_match(rule: &Rule) -> Option<String> {
    let fam = rule.ethertype;
    let mut parts: Vec<String> = vec![match fam {
        EtherType::V4 => "meta nfproto ipv4".into(),
        EtherType::V6 => "meta nfproto ipv6".into(),
    }];
    match rule.protocol {
        None | Some(0) => {}
        Some(p @ (1 | 58)) if p == 1 || fam == EtherType::V6 => {
            let kw = match fam {
                EtherType::V4 => "icmp",
                EtherType::V6 => "icmpv6",
            };
            let proto = match fam {
                EtherType::V4 => "icmp",
                EtherType::V6 => "ipv6-icmp",
            };
            parts.push(format!("meta l4proto {proto}"));
            if let Some(t) = rule.port_range_min {
                if t > 255 {
                    return None;
                }
                parts.push(format!("{kw} type {t}"));
            }
            if let Some(c) = rule.port_range_max {
                if c > 255 {
                    return None;
                }
                parts.push(format!("{kw} code {c}"));
            }
        }
        Some(p @ (6 | 17 | 33 | 132 | 136)) => {
            let name = match p {
                6 => "tcp".to_string(),
                17 => "udp".to_string(),
                132 => "sctp".to_string(),
                n => n.to_string(),
            };
            parts.push(format!("meta l4proto {name}"));
            match (rule.port_range_min, rule.port_range_max) {
                (Some(a), Some(b)) if a != b => {
                    parts.push(format!("th dport {}-{}", a.min(b), a.max(b)));
                }
                (Some(a), _) | (None, Some(a)) => parts.push(format!("th dport {a}")),
                (None, None) => {}
            }
        }
        Some(p) => parts.push(format!("meta l4proto {p}")),
    }
    let (ipkw, dir) = (
        match fam {
            EtherType::V4 => "ip",
            EtherType::V6 => "ip6",
        },
        match rule.direction {
            Direction::Ingress => "saddr",
            Direction::Egress => "daddr",
        },
    );
    match &rule.remote {
        Remote::Any => {}
        Remote::Prefix(net) => {
            if fam_of(net) != fam {
                return None;
            }
            if net.prefix_len() != 0 {
                parts.push(format!("{ipkw} {dir} {}", elem(net)));
            }
        }
        Remote::Group(g) => parts.push(format!("{ipkw} {dir} @{}", group_set(g, fam))),
    }
    Some(parts.join(" "))
}

/// An element of a bridge-table set: a tap, a tap's MAC, a tap's address range.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum BElem {
    Tap(String),
    Mac(String, MacAddr),
    Net(String, IpNet),
}

impl BElem {
    pub(super) fn text(&self) -> String {
        match self {
            BElem::Tap(t) => format!("\"{t}\""),
            BElem::Mac(t, m) => format!("\"{t}\" . {m}"),
            BElem::Net(t, n) => format!("\"{t}\" . {}", elem(n)),
        }
    }
}

/// Adds the anti-spoofing set elements of port `p` (on tap `tap`) to `bsets`.
pub(super) fn spoof_elements(p: &PortFilter, bsets: &mut BTreeMap<&'static str, BTreeSet<BElem>>) {
    let tap = &p.tap;
    let mut macs = BTreeSet::from([p.mac]);
    macs.extend(p.allowed_address_pairs.iter().filter_map(|a| a.mac));
    let mut nets: Vec<IpNet> = p.ips.iter().map(|ip| host_net(*ip)).collect();
    nets.extend(p.allowed_address_pairs.iter().map(|a| a.ip));
    nets.extend(macs.iter().map(|m| IpNet::from(IpAddr::V6(link_local(m)))));
    let mut add = |set: &'static str, e: BElem| {
        bsets.entry(set).or_default().insert(e);
    };
    add("secured", BElem::Tap(tap.clone()));
    for m in &macs {
        add("macs", BElem::Mac(tap.clone(), *m));
    }
    for n in aggregate(nets.iter().copied(), EtherType::V4) {
        let set = if n.prefix_len() == 32 {
            "ips4"
        } else {
            "nets4"
        };
        add(set, BElem::Net(tap.clone(), n));
    }
    for n in aggregate(nets, EtherType::V6) {
        let set = if n.prefix_len() == 128 {
            "ips6"
        } else {
            "nets6"
        };
        add(set, BElem::Net(tap.clone(), n));
    }
}

/// The bridge-table sets: name, type, whether they hold intervals.
/// Single addresses and ranges apart, as in [`VMAPS`].
pub(super) const BSETS: [(&str, &str, bool); 6] = [
    ("secured", "ifname", false),
    ("macs", "ifname . ether_addr", false),
    ("ips4", "ifname . ipv4_addr", false),
    ("nets4", "ifname . ipv4_addr", true),
    ("ips6", "ifname . ipv6_addr", false),
    ("nets6", "ifname . ipv6_addr", true),
];

/// The one anti-spoofing chain, for every tap in `@secured`. A source address is
/// checked last for its ethertype, against the single addresses and then the
/// ranges: a match returns (allowed), and what is left of that ethertype is dropped.
pub(super) const SPOOF: [&str; 17] = [
    "iifname . ether saddr != @macs drop",
    "ether type != { arp, ip, ip6 } drop",
    "iifname . arp saddr ether != @macs drop",
    "arp saddr ip 0.0.0.0 return",
    "iifname . arp saddr ip @ips4 return",
    "iifname . arp saddr ip @nets4 return",
    "ether type arp drop",
    "udp sport { 67, 547 } drop",
    "icmpv6 type nd-router-advert drop",
    "ip saddr 0.0.0.0 udp sport 68 udp dport 67 return",
    "iifname . ip saddr @ips4 return",
    "iifname . ip saddr @nets4 return",
    "ether type ip drop",
    "ip6 saddr :: icmpv6 type { nd-router-solicit, nd-neighbor-solicit, mld-listener-report, mld2-listener-report } return",
    "iifname . ip6 saddr @ips6 return",
    "iifname . ip6 saddr @nets6 return",
    "drop",
];

pub(super) fn port_chains(p: &PortFilter) -> (Vec<String>, Vec<String>) {
    let mut ins = BTreeSet::new();
    let mut outs = BTreeSet::new();
    for rule in &p.rules {
        let Some(m) = rule_match(rule) else {
            tracing::debug!(port = %p.id, ?rule, "security group rule can never match; left out");
            continue;
        };
        match rule.direction {
            Direction::Ingress => ins.insert(m),
            Direction::Egress => outs.insert(m),
        };
    }
    let mut in_rules = vec![
        "meta nfproto ipv4 udp sport 67 udp dport 68 accept".to_string(),
        "meta nfproto ipv6 udp sport 547 udp dport 546 accept".to_string(),
    ];
    in_rules.extend(ins.into_iter().map(|m| format!("{m} accept")));
    in_rules.push("drop".to_string());
    let mut out_rules = vec![
        "meta nfproto ipv4 udp sport 68 udp dport 67 return".to_string(),
        "meta nfproto ipv6 udp sport 546 udp dport 547 return".to_string(),
    ];
    out_rules.extend(outs.into_iter().map(|m| format!("{m} return")));
    out_rules.push("drop".to_string());
    (in_rules, out_rules)
}

/// The addresses a port is given in the vmaps: its fixed IPs and its address
/// pairs' CIDRs (host bits cleared).
pub(super) fn candidate_nets(p: &PortFilter) -> BTreeSet<IpNet> {
    let mut nets: BTreeSet<IpNet> = p.ips.iter().map(|ip| host_net(*ip)).collect();
    nets.extend(p.allowed_address_pairs.iter().map(|a| a.ip.trunc()));
    nets
}

pub(super) fn referenced_groups(p: &PortFilter, out: &mut BTreeSet<(String, EtherType)>) {
    for rule in &p.rules {
        if let Remote::Group(g) = &rule.remote {
            out.insert((g.clone(), rule.ethertype));
        }
    }
}

/// A would-be map entry: address, port id, chain.
pub(super) type Candidate = (IpNet, String, String);

impl Model {
    pub(super) fn build(rs: &Ruleset) -> Model {
        let mut m = Model {
            clean: true,
            ..Model::default()
        };
        for name in VMAPS {
            m.vmaps.insert(name, BTreeMap::new());
        }
        for (name, _) in NOTRACK {
            m.notrack.insert(name, BTreeSet::new());
        }
        let mut stateless = BTreeSet::new();
        for (name, _, _) in BSETS {
            m.bsets.insert(name, BTreeSet::new());
        }
        for n in &rs.networks {
            if !valid_ifname(&n.bridge) {
                tracing::warn!(bridge = %n.bridge, "invalid bridge name; no conntrack zone");
                continue;
            }
            m.zones.entry(n.bridge.clone()).or_insert(n.zone);
        }
        m.published = PubModel::build(&rs.published, &m.zones);
        let mut referenced = BTreeSet::new();
        let mut candidates: BTreeMap<(&'static str, String), Vec<Candidate>> = BTreeMap::new();
        let mut seen = BTreeSet::new();
        let mut taps = BTreeSet::new();
        let mut chains: HashMap<&[Rule], (String, String)> = HashMap::new();
        for p in &rs.ports {
            if !p.port_security {
                continue;
            }
            if !seen.insert(p.id.clone()) {
                m.clean = false;
                tracing::warn!(port = %p.id, "port listed twice; first one used");
                continue;
            }
            if !taps.insert(p.tap.clone()) {
                m.clean = false;
                tracing::warn!(port = %p.id, tap = %p.tap, "tap of another port; no anti-spoofing");
            } else if valid_ifname(&p.tap) {
                spoof_elements(p, &mut m.bsets);
            } else {
                m.clean = false;
                tracing::warn!(port = %p.id, tap = %p.tap, "invalid tap name; no anti-spoofing");
            }
            if !valid_ifname(&p.bridge) {
                m.clean = false;
                tracing::warn!(port = %p.id, bridge = %p.bridge, "invalid bridge name; no filtering");
                continue;
            }
            let mut named = BTreeSet::new();
            referenced_groups(p, &mut named);
            for g in named {
                *m.group_refs.entry(g.clone()).or_default() += 1;
                referenced.insert(g);
            }
            if p.stateless {
                stateless.insert(p.id.clone());
            }
            // Most ports share their rules with others: render and name them once.
            let (inc, outc) = match chains.get(p.rules.as_slice()) {
                Some(names) => names.clone(),
                None => {
                    let (in_rules, out_rules) = port_chains(p);
                    let names = (rules_chain("in", &in_rules), rules_chain("out", &out_rules));
                    m.ichains.insert(names.0.clone(), in_rules);
                    m.ichains.insert(names.1.clone(), out_rules);
                    chains.insert(p.rules.as_slice(), names.clone());
                    names
                }
            };
            *m.chain_refs.entry(inc.clone()).or_default() += 1;
            *m.chain_refs.entry(outc.clone()).or_default() += 1;
            for net in candidate_nets(p) {
                let (e, i) = match net {
                    IpNet::V4(_) => ("egress4", "ingress4"),
                    IpNet::V6(_) => ("egress6", "ingress6"),
                };
                for (map, chain) in [(e, &outc), (i, &inc)] {
                    candidates
                        .entry((map, p.bridge.clone()))
                        .or_default()
                        .push((net, p.id.clone(), chain.clone()));
                }
            }
        }
        // Map entry -> the port it was given to, for the notrack sets.
        let mut owners: BTreeMap<(&'static str, String, IpNet), String> = BTreeMap::new();
        for ((map, bridge), mut cands) in candidates {
            cands.sort_by(|a, b| {
                b.0.prefix_len()
                    .cmp(&a.0.prefix_len())
                    .then_with(|| a.1.cmp(&b.1))
                    .then_with(|| a.0.cmp(&b.0))
            });
            // Taken nets by first address. Most specific first, so a candidate
            // overlaps a taken net only if that net lies inside it (CIDRs nest or are
            // disjoint): one range query, not a scan.
            let mut taken: BTreeMap<IpAddr, IpNet> = BTreeMap::new();
            for (net, port, chain) in cands {
                if taken
                    .range(net.network()..=net.broadcast())
                    .next()
                    .is_some()
                {
                    m.clean = false;
                    tracing::warn!(%port, %bridge, net = %net, map,
                        "address overlaps another port's on the same bridge; not attributed to this port");
                    continue;
                }
                taken.insert(net.network(), net);
                m.taken.insert((bridge.clone(), net.network()), net);
                let map = map_for(map, &net);
                owners.insert((map, bridge.clone(), net), port);
                m.vmaps
                    .entry(map)
                    .or_default()
                    .insert((bridge.clone(), net), chain);
            }
        }
        for (set, map) in NOTRACK {
            let addrs: BTreeSet<(String, IpNet)> = m.vmaps[map]
                .keys()
                .filter(|(bridge, net)| {
                    owners
                        .get(&(map, bridge.clone(), *net))
                        .is_some_and(|port| stateless.contains(port))
                })
                .cloned()
                .collect();
            m.notrack.insert(set, addrs);
        }
        for (g, members) in &rs.groups {
            m.sets.insert(
                group_set(g, EtherType::V4),
                (
                    EtherType::V4,
                    aggregate(members.v4.iter().copied(), EtherType::V4),
                ),
            );
            m.sets.insert(
                group_set(g, EtherType::V6),
                (
                    EtherType::V6,
                    aggregate(members.v6.iter().copied(), EtherType::V6),
                ),
            );
        }
        for (g, fam) in referenced {
            m.sets
                .entry(group_set(&g, fam))
                .or_insert((fam, Vec::new()));
        }
        m
    }
}
/// A ruleset resolved for [`super::diff_compiled`]: keeping the one last applied saves
/// resolving it again on every change (the cost grows with the number of ports).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Compiled(pub(super) Model);

pub fn compile(rs: &Ruleset) -> Compiled {
    Compiled(Model::build(rs))
}
