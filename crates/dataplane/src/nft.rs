//! Neutron security groups, and host ports published to containers, on nftables.
//!
//! [`render`] turns the desired state of one host ([`Ruleset`]) into one nft script
//! that atomically replaces kuryr's two tables; [`diff`] gives the smallest script
//! that moves the kernel from one state to the next; [`Nft`] runs scripts (`nft -f -`,
//! text: measured faster than `nft -j -f -`, see the `bench_text_vs_json` test).
//!
//! # Layout in the kernel
//!
//! The bridge family has no conntrack, so statefulness comes from br_netfilter
//! (`net.bridge.bridge-nf-call-ip{,6}tables=1`), which runs bridged IP packets through
//! the inet hooks. There `iifname` and `oifname` are the *bridge*, never the tap
//! (checked on kernel 6.18 in both prerouting and forward), so a port is identified by
//! bridge + address, which anti-spoofing (done in the bridge family, where `iifname`
//! is the tap) makes trustworthy.
//!
//! ```text
//! table bridge kuryr
//!   set secured     ifname                        taps of ports with port security
//!   set macs        ifname . ether_addr           tap . port MAC (+ pair MACs)
//!   set ips4/ips6   ifname . addr (intervals)     tap . fixed IP / pair CIDR / EUI-64 LL
//!   chain prerouting (hook prerouting)            iifname @secured jump spoof
//!   chain spoof     MAC / ARP sender / IPv4 / IPv6 source checks against the sets
//!                   (DHCP discover from 0.0.0.0 and DAD/RS/MLD from :: allowed), no
//!                   DHCP server replies (udp sport 67/547) or RAs from the port
//! table inet kuryr
//!   map zones       iifname : ct zone             "brqA" : 1
//!   set g4_<sg>, g6_<sg>                          remote-group members (interval sets)
//!   map egress4/6   ifname . addr : verdict       bridge . source : jump out_<port>
//!   map ingress4/6  ifname . addr : verdict       bridge . dest   : jump in_<port>
//!   set bridged     ifname . ifname               "brqA" . "brqA": in and out the same bridge
//!   set notrack4/6  ifname . addr (intervals)     bridge . address of ports in stateless groups
//!   chain zone      (prerouting, raw)             notrack what comes from or goes to
//!                                                 @notrack4/6, else ct zone set iifname map @zones
//!   chain forward   (forward, filter)             in or out of brq* only: established/related
//!                   accept, invalid drop, routed (not in @bridged) and not DNAT'd drop,
//!                   ICMPv6 ND/MLD accept, egress vmaps, ingress vmaps
//!   chain out_<port>   DHCP client implicit, each rule `return`, then drop
//!   chain in_<port>    DHCP replies implicit, each rule `accept`, then drop
//!  only while host ports are published (Ruleset::published), all hashed:
//!   set pub_ports   inet_proto . port             tcp . 8080: every published one
//!   map pub_zone_any4/6   proto . port : ct zone  mappings for every host address
//!   map pub_zone_ip4/6    addr . proto . port : ct zone   for one host address
//!   map pub_dnat_any4/6   proto . port : addr . port      the container's address
//!   map pub_dnat_ip4/6    addr . proto . port : addr . port
//!   chain pub_zone     (prerouting, raw - 1)      proto . dport in @pub_ports, fib daddr
//!   chain pub_zone_out (output, raw)              type local: jump pub_zone_set
//!   chain pub_zone_set not loopback; ct zone set from the _ip map, else the _any one
//!   chain pub_dnat     (prerouting, dstnat)       same test: jump pub_dnat_to
//!   chain pub_dnat_out (output, -100)
//!   chain pub_dnat_to  not loopback; dnat to the _ip map's target, else the _any one's
//!   chain pub_input    (input, filter)            from brq*: established/related, ICMPv6,
//!                                                 echo requests; anything else drop
//! ```
//!
//! # Published ports
//!
//! A host port is forwarded by DNAT in prerouting (traffic arriving on any of the
//! host's addresses, `fib daddr type local`, or only on the given one) and in output
//! (clients on the host itself). Conntrack zones are per bridge, so a forwarded
//! connection would arrive in zone 0 (from eth0) and its replies in the network's zone
//! (from the bridge) and miss their NAT entry: `pub_zone` gives packets to a
//! published host port the network's zone before conntrack, ahead of `zone` (of two
//! `ct zone set` on one packet, the first counts). The DNAT'd packet is then routed
//! onto the bridge (the agent puts the subnets' gateway addresses on it) and
//! filtered by the port's ingress rules in `forward`; the replies come back through
//! the gateway; the host must forward (the agent turns `ip_forward` on). A container
//! on the same network using HOST_IP:HOST_PORT (hairpin) needs nothing more: the
//! DNAT'd packet is bridged to the target, and br_netfilter un-NATs the target's
//! bridged reply (checked on kernel 6.18; not without forwarding). Routing into, out of
//! or between kuryr bridges is allowed only for DNAT'd connections, so gateway
//! addresses do not make the host a router for containers; `pub_input` keeps
//! containers from opening connections to the host through them.
//!
//! Every packet that reaches the host meets `pub_zone` (raw, before conntrack): its
//! first test is one hash lookup of protocol and port, so that cost does not grow
//! with the number of mappings (interval sets did: 1,000 mappings as `addr/0 .
//! proto . port` intervals cut bridged throughput between two containers by ~60%).
//!
//! Loopback host addresses are never forwarded (`-p 127.0.0.1:...` is left out with a
//! warning): a packet from 127.0.0.1 cannot leave on the bridge without
//! `route_localnet`, which would open the host's loopback services to containers.
//! Host-originated traffic (the host's own clients of a published port included) is
//! not subject to security groups, as before. A packet arriving for a published
//! host port is put in the network's zone even when it belongs to a connection the
//! host itself opened from that local port (an ephemeral port that is also
//! published): that connection then breaks. Two networks with the same CIDR cannot
//! both publish on one host (their gateway routes collide).
//!
//! # Stateless groups
//!
//! A port whose security groups are stateless (Neutron's `stateful: false`) has its
//! addresses in `notrack4`/`notrack6`: `zone` marks every packet from or to them
//! `notrack` before conntrack sees it, as Neutron's firewall drivers do. No conntrack
//! entry is made, `ct state established,related accept` in `forward` never matches
//! them (their state is `untracked`), so each packet must pass the sender's egress
//! and the receiver's ingress rules: return traffic needs rules of its own. The
//! other end of such a flow, when on the same host, is untracked too whatever its
//! groups (there is one conntrack table per bridge here, not one per port as in
//! Neutron's OVS firewall); on another host it is tracked there as its groups say.
//! Entries of connections tracked before a port became stateless no longer match
//! its packets and expire. Published host ports need conntrack (DNAT), so the agent
//! publishes none for such a port.
//!
//! # Names
//!
//! Chains are `in_<port id>`, `out_<port id>`; sets are `g4_<sg id>` / `g6_<sg id>`;
//! full ids are used; published ports use the fixed names `bridged`, `pub_*`, which
//! cannot clash with those. Characters other than ASCII letters, digits and `-` are
//! escaped as `_` + two hex digits per byte (so `_` itself becomes `_5f`): Neutron
//! UUIDs come out unchanged and the mapping is injective. Escaped ids are cut at
//! 200 bytes (nft's limit is 255).
//!
//! # Deviations and details the agent must know
//!
//! - Anti-spoofing is NOT one `spoof_<port>` chain per port behind an
//!   `iifname vmap`, but one shared `spoof` chain matching `iifname . <source>`
//!   against the four bridge sets above. Measured: per-port chains need ~7 anonymous
//!   sets per port, and 1,000 ports took ~6 s of kernel time to load (5.4 s of it
//!   for the anonymous sets); shared named sets load in well under a second, and a
//!   port's address/MAC change or arrival is a set-element update, not a chain.
//! - ICMPv6 neighbour discovery/MLD is accepted once in `forward` (before the
//!   vmaps) rather than at the top of every `in_`/`out_` chain, for the same reason.
//! - [`Nft::in_netns`] (an addition) runs nft through `ip netns exec NAME`; [`Nft::check`]
//!   (`nft -c`) and [`Nft::run`] (any arguments, e.g. `-j list table inet kuryr`) are
//!   additions too.
//! - Allowed-address-pair MACs and IPs are checked separately (any allowed MAC with any
//!   allowed IP), not as pairs. Frames of other ethertypes than ARP/IPv4/IPv6 (VLAN
//!   tags included) from a port with port security are dropped. The IPv6 link-local
//!   allowed is the EUI-64 one of the port's MAC (and pair MACs): containers must
//!   keep `addr_gen_mode` 0 (the default).
//! - Protocol `Some(0)` means any, like `None`. Protocol 1 on an IPv6 rule means
//!   ICMPv6 (Neutron does the same). Port ranges apply to tcp, udp, dccp, sctp and
//!   udplite; for ICMP min is the type and max the code.
//! - A rule whose remote prefix is of the other family than its ethertype can never
//!   match and is left out. Rules are deduplicated and sorted (all are allow rules,
//!   so order is meaningless), which keeps chains stable when Neutron reorders them.
//! - Egress/ingress map keys on one bridge must not overlap (the kernel rejects
//!   overlapping intervals): addresses are taken most specific first, and an
//!   address (usually a wide allowed-address-pair CIDR, or a duplicate IP) that
//!   overlaps one already taken is left out of the maps with a warning: traffic from
//!   or to it is then not attributed to that port.
//! - Group member sets drop nets inside other nets but never merge adjacent ones, so a
//!   member joining or leaving is one element update (a wide pair CIDR swallowing
//!   members can make it a delete + add); never a rule rewrite.
//! - Bridges and taps whose names are not valid interface names (1-15 bytes of ASCII
//!   letters, digits, `-_.@`) are skipped with a warning.
//! - Conntrack zones are per bridge, so the host namespace must not route between two
//!   kuryr bridges (routers live in their own namespaces): `forward` drops routed
//!   traffic that is not a DNAT'd connection of a published port.
//! - [`diff`] assumes the kernel holds exactly `old` (as applied by [`render`] or an
//!   earlier diff); if an apply fails, re-apply [`render`] of the desired state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::process::Stdio;

use ipnet::IpNet;
use tokio::io::AsyncWriteExt;

use crate::MacAddr;
use crate::nfnl;

/// Name of both kuryr tables (`bridge kuryr` and `inet kuryr`).
pub const TABLE: &str = "kuryr";

/// The desired security-group state of one host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ruleset {
    pub networks: Vec<NetworkZone>,
    pub ports: Vec<PortFilter>,
    /// Remote-group members by security-group id.
    pub groups: BTreeMap<String, GroupMembers>,
    /// Host ports forwarded to ports on this host (Docker's `-p`). While there are
    /// none, the NAT, raw-output and input chains are not there at all.
    pub published: Vec<Published>,
}

/// One host port forwarded (DNAT) to a port on this host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Published {
    /// The bridge of the port's network; its conntrack zone (from
    /// [`Ruleset::networks`]) is given to the forwarded connections.
    pub bridge: String,
    /// IP protocol: 6 (tcp), 17 (udp) or 132 (sctp).
    pub protocol: u8,
    /// Only traffic to this host address; `None` (or an unspecified address): to
    /// any address of this host of the container address's family, loopback
    /// excepted.
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_ip: IpAddr,
    pub container_port: u16,
}

/// One kuryr bridge and the conntrack zone of its network.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetworkZone {
    pub bridge: String,
    pub zone: u16,
}

/// One port on this host and the rules of all its security groups.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortFilter {
    pub id: String,
    pub tap: String,
    pub bridge: String,
    pub mac: MacAddr,
    pub ips: Vec<IpAddr>,
    pub allowed_address_pairs: Vec<AddressPair>,
    pub port_security: bool,
    /// The port's security groups are stateless (Neutron's `stateful: false`): its
    /// traffic is not tracked, so every packet, replies included, passes only by a
    /// rule of the direction it goes (see "Stateless groups" above).
    pub stateless: bool,
    pub rules: Vec<Rule>,
}

/// An allowed address pair; `mac: None` means the port's own MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressPair {
    pub ip: IpNet,
    pub mac: Option<MacAddr>,
}

/// One Neutron security-group rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    pub direction: Direction,
    pub ethertype: EtherType,
    /// IP protocol number; `None` (or `Some(0)`) is any.
    pub protocol: Option<u8>,
    /// Lowest destination port, or the ICMP type.
    pub port_range_min: Option<u16>,
    /// Highest destination port, or the ICMP code.
    pub port_range_max: Option<u16>,
    pub remote: Remote,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EtherType {
    V4,
    V6,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub enum Remote {
    #[default]
    Any,
    Prefix(IpNet),
    /// A remote security-group id (members in [`Ruleset::groups`]).
    Group(String),
}

/// Addresses of the ports in one security group (fixed IPs as /32 or /128, plus
/// allowed-address-pair CIDRs).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupMembers {
    pub v4: BTreeSet<IpNet>,
    pub v6: BTreeSet<IpNet>,
}

/// Escapes an id into the characters nft accepts in an unquoted name.
pub fn name_part(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(b as char);
        } else {
            let _ = write!(out, "_{b:02x}");
        }
        if out.len() >= 200 {
            out.truncate(200);
            break;
        }
    }
    out
}

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
fn rules_chain(prefix: &str, rules: &[String]) -> String {
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
/// `g4_<sg>` / `g6_<sg>`: remote-group member set (inet table).
pub fn group_set(sg_id: &str, ethertype: EtherType) -> String {
    match ethertype {
        EtherType::V4 => format!("g4_{}", name_part(sg_id)),
        EtherType::V6 => format!("g6_{}", name_part(sg_id)),
    }
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// An address or CIDR as nft wants it (host bits cleared, /32 and /128 bare).
fn elem(net: &IpNet) -> String {
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
fn aggregate(nets: impl IntoIterator<Item = IpNet>, fam: EtherType) -> Vec<IpNet> {
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

fn fam_of(net: &IpNet) -> EtherType {
    match net {
        IpNet::V4(_) => EtherType::V4,
        IpNet::V6(_) => EtherType::V6,
    }
}

fn link_local(mac: &MacAddr) -> Ipv6Addr {
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
const VMAPS: [&str; 8] = [
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
fn holds_ranges(name: &str) -> bool {
    name.ends_with("_nets")
}

/// The map of `map` (one of the hash ones) that holds `net`.
fn map_for(map: &'static str, net: &IpNet) -> &'static str {
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
const NOTRACK: [(&str, &str); 4] = [
    ("notrack4", "egress4"),
    ("notrack4_nets", "egress4_nets"),
    ("notrack6", "egress6"),
    ("notrack6_nets", "egress6_nets"),
];

/// The raw-priority chain: no tracking at all for ports in stateless groups, else
/// the network's conntrack zone. `notrack` is ignored on a packet that already has a
/// zone template, and `ct zone set` would replace the untracked mark: hence first,
/// and `accept` (which ends only this chain).
const ZONE: [&str; 9] = [
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
struct Model {
    /// bridge-table sets (BSETS) -> elements.
    bsets: BTreeMap<&'static str, BTreeSet<BElem>>,
    /// bridge -> zone.
    zones: BTreeMap<String, u16>,
    /// set name -> (family, aggregated elements).
    sets: BTreeMap<String, (EtherType, Vec<IpNet>)>,
    /// map name (VMAPS) -> (bridge, address) -> chain.
    vmaps: BTreeMap<&'static str, BTreeMap<(String, IpNet), String>>,
    /// inet-table port chains (in_*, out_*) and their rules.
    ichains: BTreeMap<String, Vec<String>>,
    /// NOTRACK sets -> (bridge, address) of ports in stateless groups.
    notrack: BTreeMap<&'static str, BTreeSet<(String, IpNet)>>,
    /// Published host ports; `None` when there are none (no chains for them then).
    published: Option<PubModel>,
}

/// Published host ports as the elements of each of [`PUB_OBJECTS`], by name:
/// key → data, as nft text (data empty in the set).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct PubModel {
    objects: BTreeMap<&'static str, BTreeMap<String, String>>,
}

/// The set and maps of published ports: kind, name, type. All hashed (exact
/// keys, no intervals): a lookup costs the same with one mapping or thousands.
/// `_any` maps hold the mappings for every host address (keyed by protocol and
/// port), `_ip` maps those for one host address.
const PUB_OBJECTS: [(&str, &str, &str); 9] = [
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
const PUB_ZONE: [&str; 1] =
    ["meta l4proto . th dport @pub_ports fib daddr type local jump pub_zone_set"];

/// Not loopback; the address's own mapping before an any-address one (of two `ct
/// zone set`, the first counts; a key not in a map ends that rule).
const PUB_ZONE_SET: [&str; 6] = [
    "ip daddr 127.0.0.0/8 return",
    "ip6 daddr ::1 return",
    "ct zone set ip daddr . meta l4proto . th dport map @pub_zone_ip4",
    "ct zone set ip6 daddr . meta l4proto . th dport map @pub_zone_ip6",
    "meta nfproto ipv4 ct zone set meta l4proto . th dport map @pub_zone_any4",
    "meta nfproto ipv6 ct zone set meta l4proto . th dport map @pub_zone_any6",
];

const PUB_DNAT: [&str; 1] =
    ["meta l4proto . th dport @pub_ports fib daddr type local jump pub_dnat_to"];

const PUB_DNAT_TO: [&str; 6] = [
    "ip daddr 127.0.0.0/8 return",
    "ip6 daddr ::1 return",
    "meta l4proto { tcp, udp, sctp } dnat ip to ip daddr . meta l4proto . th dport map @pub_dnat_ip4",
    "meta l4proto { tcp, udp, sctp } dnat ip6 to ip6 daddr . meta l4proto . th dport map @pub_dnat_ip6",
    "meta l4proto { tcp, udp, sctp } meta nfproto ipv4 dnat ip to meta l4proto . th dport map @pub_dnat_any4",
    "meta l4proto { tcp, udp, sctp } meta nfproto ipv6 dnat ip6 to meta l4proto . th dport map @pub_dnat_any6",
];

/// Containers reach the host only with what the host started, ICMPv6 (neighbour
/// discovery for the gateway) and echo requests to the gateway.
const PUB_INPUT: [&str; 5] = [
    "iifname != \"brq*\" return",
    "ct state established,related accept",
    "meta l4proto ipv6-icmp accept",
    "icmp type echo-request accept",
    "drop",
];

/// The chains of published ports, present only while something is published:
/// name, hook (`None`: a regular chain, jumped to), rules; in creation order.
/// `pub_zone` runs before `zone` (the first `ct zone set` of a packet counts).
const PUB_CHAINS: [(&str, Option<&str>, &[&str]); 7] = [
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
    fn build(list: &[Published], zones: &BTreeMap<String, u16>) -> Option<PubModel> {
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
    fn projection(&self, name: &str) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.objects.get(name).unwrap_or(&EMPTY)
    }

    /// The elements of one of [`PUB_OBJECTS`] as nft text.
    fn elements(&self, name: &str) -> Vec<String> {
        self.projection(name)
            .iter()
            .map(|(k, v)| pub_elem(k, v))
            .collect()
    }
}

/// An element of a published-port set (`v` empty) or map.
fn pub_elem(k: &str, v: &str) -> String {
    if v.is_empty() {
        k.to_string()
    } else {
        format!("{k} : {v}")
    }
}

fn rule_match(rule: &Rule) -> Option<String> {
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
enum BElem {
    Tap(String),
    Mac(String, MacAddr),
    Net(String, IpNet),
}

impl BElem {
    fn text(&self) -> String {
        match self {
            BElem::Tap(t) => format!("\"{t}\""),
            BElem::Mac(t, m) => format!("\"{t}\" . {m}"),
            BElem::Net(t, n) => format!("\"{t}\" . {}", elem(n)),
        }
    }
}

/// Adds the anti-spoofing set elements of port `p` (on tap `tap`) to `bsets`.
fn spoof_elements(p: &PortFilter, bsets: &mut BTreeMap<&'static str, BTreeSet<BElem>>) {
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
const BSETS: [(&str, &str, bool); 6] = [
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
const SPOOF: [&str; 17] = [
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

fn port_chains(p: &PortFilter) -> (Vec<String>, Vec<String>) {
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

fn referenced_groups(p: &PortFilter, out: &mut BTreeSet<(String, EtherType)>) {
    for rule in &p.rules {
        if let Remote::Group(g) = &rule.remote {
            out.insert((g.clone(), rule.ethertype));
        }
    }
}

/// A would-be map entry: address, port id, chain.
type Candidate = (IpNet, String, String);

impl Model {
    fn build(rs: &Ruleset) -> Model {
        let mut m = Model::default();
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
                tracing::warn!(port = %p.id, "port listed twice; first one used");
                continue;
            }
            if !taps.insert(p.tap.clone()) {
                tracing::warn!(port = %p.id, tap = %p.tap, "tap of another port; no anti-spoofing");
            } else if valid_ifname(&p.tap) {
                spoof_elements(p, &mut m.bsets);
            } else {
                tracing::warn!(port = %p.id, tap = %p.tap, "invalid tap name; no anti-spoofing");
            }
            if !valid_ifname(&p.bridge) {
                tracing::warn!(port = %p.id, bridge = %p.bridge, "invalid bridge name; no filtering");
                continue;
            }
            referenced_groups(p, &mut referenced);
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
            let mut nets: BTreeSet<IpNet> = p.ips.iter().map(|ip| host_net(*ip)).collect();
            nets.extend(p.allowed_address_pairs.iter().map(|a| a.ip.trunc()));
            for net in nets {
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
                    tracing::warn!(%port, %bridge, net = %net, map,
                        "address overlaps another port's on the same bridge; not attributed to this port");
                    continue;
                }
                taken.insert(net.network(), net);
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

fn addr_type(fam: EtherType) -> &'static str {
    match fam {
        EtherType::V4 => "ipv4_addr",
        EtherType::V6 => "ipv6_addr",
    }
}

fn vmap_type(map: &str) -> &'static str {
    if map.contains('4') {
        "ifname . ipv4_addr"
    } else {
        "ifname . ipv6_addr"
    }
}

fn vmap_elem((bridge, net): &(String, IpNet)) -> String {
    format!("\"{bridge}\" . {}", elem(net))
}

fn bridged_elem(bridge: &String) -> String {
    format!("\"{bridge}\" . \"{bridge}\"")
}

fn join_elems(items: impl IntoIterator<Item = String>) -> String {
    items.into_iter().collect::<Vec<_>>().join(",\n\t\t\t")
}

const FORWARD: [&str; 13] = [
    "iifname != \"brq*\" oifname != \"brq*\" return",
    "ct state established,related accept",
    "ct state invalid drop",
    "iifname . oifname != @bridged ct status & dnat == 0 drop",
    "icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, \
     mld-listener-query, mld-listener-report, mld-listener-done, mld2-listener-report } accept",
    "iifname . ip saddr vmap @egress4",
    "iifname . ip saddr vmap @egress4_nets",
    "iifname . ip6 saddr vmap @egress6",
    "iifname . ip6 saddr vmap @egress6_nets",
    "oifname . ip daddr vmap @ingress4",
    "oifname . ip daddr vmap @ingress4_nets",
    "oifname . ip6 daddr vmap @ingress6",
    "oifname . ip6 daddr vmap @ingress6_nets",
];

/// The whole script: atomically replaces kuryr's two tables (`add table`, `delete
/// table`, `table {...}` for each family, in one transaction). Deterministic.
pub fn render(rs: &Ruleset) -> String {
    render_model(&Model::build(rs))
}

fn render_model(m: &Model) -> String {
    let mut s = String::new();
    for fam in ["bridge", "inet"] {
        let _ = writeln!(s, "add table {fam} {TABLE}");
        let _ = writeln!(s, "delete table {fam} {TABLE}");
    }
    let _ = writeln!(s, "table bridge {TABLE} {{");
    for (name, ty, interval) in BSETS {
        let _ = writeln!(s, "\tset {name} {{\n\t\ttype {ty}");
        if interval {
            s.push_str("\t\tflags interval\n");
        }
        if let Some(elems) = m.bsets.get(name).filter(|e| !e.is_empty()) {
            let _ = writeln!(
                s,
                "\t\telements = {{ {} }}",
                join_elems(elems.iter().map(BElem::text))
            );
        }
        s.push_str("\t}\n");
    }
    s.push_str(
        "\tchain prerouting {\n\t\ttype filter hook prerouting priority filter; policy accept;\n\
         \t\tiifname @secured jump spoof\n\t}\n",
    );
    write_chain(&mut s, "spoof", &SPOOF);
    s.push_str("}\n");

    let _ = writeln!(s, "table inet {TABLE} {{");
    s.push_str("\tmap zones {\n\t\ttypeof iifname : ct zone\n");
    if !m.zones.is_empty() {
        let _ = writeln!(
            s,
            "\t\telements = {{ {} }}",
            join_elems(m.zones.iter().map(|(b, z)| format!("\"{b}\" : {z}")))
        );
    }
    s.push_str("\t}\n");
    s.push_str("\tset bridged {\n\t\ttype ifname . ifname\n");
    if !m.zones.is_empty() {
        let _ = writeln!(
            s,
            "\t\telements = {{ {} }}",
            join_elems(m.zones.keys().map(bridged_elem))
        );
    }
    s.push_str("\t}\n");
    for (name, (fam, elems)) in &m.sets {
        let _ = writeln!(
            s,
            "\tset {name} {{\n\t\ttype {}\n\t\tflags interval",
            addr_type(*fam)
        );
        if !elems.is_empty() {
            let _ = writeln!(
                s,
                "\t\telements = {{ {} }}",
                join_elems(elems.iter().map(elem))
            );
        }
        s.push_str("\t}\n");
    }
    for (name, entries) in &m.vmaps {
        let _ = writeln!(
            s,
            "\tmap {name} {{\n\t\ttype {} : verdict{}",
            vmap_type(name),
            if holds_ranges(name) {
                "\n\t\tflags interval"
            } else {
                ""
            }
        );
        if !entries.is_empty() {
            let _ = writeln!(
                s,
                "\t\telements = {{ {} }}",
                join_elems(
                    entries
                        .iter()
                        .map(|(k, chain)| format!("{} : jump {chain}", vmap_elem(k)))
                )
            );
        }
        s.push_str("\t}\n");
    }
    for (name, map) in NOTRACK {
        let _ = writeln!(
            s,
            "\tset {name} {{\n\t\ttype {}{}",
            vmap_type(map),
            if holds_ranges(name) {
                "\n\t\tflags interval"
            } else {
                ""
            }
        );
        if let Some(elems) = m.notrack.get(name).filter(|e| !e.is_empty()) {
            let _ = writeln!(
                s,
                "\t\telements = {{ {} }}",
                join_elems(elems.iter().map(vmap_elem))
            );
        }
        s.push_str("\t}\n");
    }
    if let Some(p) = &m.published {
        for (kind, name, ty) in PUB_OBJECTS {
            let _ = writeln!(s, "\t{kind} {name} {{\n\t\t{ty}");
            let elems = p.elements(name);
            if !elems.is_empty() {
                let _ = writeln!(s, "\t\telements = {{ {} }}", join_elems(elems));
            }
            s.push_str("\t}\n");
        }
    }
    s.push_str("\tchain zone {\n\t\ttype filter hook prerouting priority raw; policy accept;\n");
    for r in ZONE {
        let _ = writeln!(s, "\t\t{r}");
    }
    s.push_str("\t}\n");
    s.push_str("\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n");
    for r in FORWARD {
        let _ = writeln!(s, "\t\t{r}");
    }
    s.push_str("\t}\n");
    if m.published.is_some() {
        for (name, hook, rules) in PUB_CHAINS {
            let _ = writeln!(s, "\tchain {name} {{");
            if let Some(hook) = hook {
                let _ = writeln!(s, "\t\t{hook}");
            }
            for r in rules {
                let _ = writeln!(s, "\t\t{r}");
            }
            s.push_str("\t}\n");
        }
    }
    for (chain, rules) in &m.ichains {
        write_chain(&mut s, chain, rules);
    }
    s.push_str("}\n");
    s
}

fn write_chain<T: AsRef<str>>(s: &mut String, chain: &str, rules: &[T]) {
    let _ = writeln!(s, "\tchain {chain} {{");
    for r in rules {
        let _ = writeln!(s, "\t\t{}", r.as_ref());
    }
    s.push_str("\t}\n");
}

/// Adds to `out` the commands that turn chains `old` into `new` in table `fam kuryr`:
/// new chains are created and filled, changed ones flushed and refilled. Removed
/// chains are returned for deletion after the map elements that jump to them.
fn diff_chains(
    out: &mut String,
    fam: &str,
    old: &BTreeMap<String, Vec<String>>,
    new: &BTreeMap<String, Vec<String>>,
) -> Vec<String> {
    for (chain, rules) in new {
        match old.get(chain) {
            Some(o) if o == rules => continue,
            Some(_) => {
                let _ = writeln!(out, "flush chain {fam} {TABLE} {chain}");
            }
            None => {
                let _ = writeln!(out, "add chain {fam} {TABLE} {chain}");
            }
        }
        for r in rules {
            let _ = writeln!(out, "add rule {fam} {TABLE} {chain} {r}");
        }
    }
    old.keys()
        .filter(|c| !new.contains_key(*c))
        .cloned()
        .collect()
}

/// Deletes then adds the elements of map `name` that differ (a changed value is a
/// delete and an add).
fn diff_map<K: Ord, V: PartialEq>(
    out: &mut String,
    fam: &str,
    name: &str,
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    key: impl Fn(&K) -> String,
    val: impl Fn(&V) -> String,
) {
    let dels: Vec<String> = old
        .iter()
        .filter(|(k, v)| new.get(k) != Some(v))
        .map(|(k, _)| key(k))
        .collect();
    let adds: Vec<String> = new
        .iter()
        .filter(|(k, v)| old.get(k) != Some(v))
        .map(|(k, v)| format!("{} : {}", key(k), val(v)))
        .collect();
    if !dels.is_empty() {
        let _ = writeln!(
            out,
            "delete element {fam} {TABLE} {name} {{ {} }}",
            dels.join(", ")
        );
    }
    if !adds.is_empty() {
        let _ = writeln!(
            out,
            "add element {fam} {TABLE} {name} {{ {} }}",
            adds.join(", ")
        );
    }
}

/// The smallest script that turns the kernel state of `render(old)` into that of
/// `render(new)`, or `None` when they are the same. Membership changes are set
/// element updates only; a port whose rules or addresses changed gets its chains
/// flushed and refilled; ports coming or going add or delete chains and map
/// elements; zones are map elements; sets come and go with their groups.
pub fn diff(old: &Ruleset, new: &Ruleset) -> Option<String> {
    diff_compiled(&compile(old), &compile(new))
}

/// A ruleset resolved for [`diff_compiled`]: keeping the one last applied saves
/// resolving it again on every change (the cost grows with the number of ports).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Compiled(Model);

pub fn compile(rs: &Ruleset) -> Compiled {
    Compiled(Model::build(rs))
}

/// [`diff`] of two compiled rulesets.
pub fn diff_compiled(old: &Compiled, new: &Compiled) -> Option<String> {
    let (o, n) = (&old.0, &new.0);
    if o == n {
        return None;
    }
    let mut s = String::new();
    // 1. New sets, so that new rules can refer to them.
    for (name, (fam, elems)) in &n.sets {
        if !o.sets.contains_key(name) {
            let _ = writeln!(
                s,
                "add set inet {TABLE} {name} {{ type {}; flags interval; }}",
                addr_type(*fam)
            );
            if !elems.is_empty() {
                let _ = writeln!(
                    s,
                    "add element inet {TABLE} {name} {{ {} }}",
                    elems.iter().map(elem).collect::<Vec<_>>().join(", ")
                );
            }
        }
    }
    if let (None, Some(p)) = (&o.published, &n.published) {
        for (kind, name, ty) in PUB_OBJECTS {
            let _ = writeln!(s, "add {kind} inet {TABLE} {name} {{ {ty}; }}");
            let elems = p.elements(name);
            if !elems.is_empty() {
                let _ = writeln!(
                    s,
                    "add element inet {TABLE} {name} {{ {} }}",
                    elems.join(", ")
                );
            }
        }
    }
    // 2. Chains: new ones created, changed ones refilled.
    let gone_i = diff_chains(&mut s, "inet", &o.ichains, &n.ichains);
    if o.published.is_none() && n.published.is_some() {
        for (name, hook, rules) in PUB_CHAINS {
            match hook {
                Some(hook) => {
                    let _ = writeln!(s, "add chain inet {TABLE} {name} {{ {hook} }}");
                }
                None => {
                    let _ = writeln!(s, "add chain inet {TABLE} {name}");
                }
            }
            for r in rules {
                let _ = writeln!(s, "add rule inet {TABLE} {name} {r}");
            }
        }
    }
    // 3. Members of sets that stay.
    for (name, (_, elems)) in &n.sets {
        let Some((_, old_elems)) = o.sets.get(name) else {
            continue;
        };
        let dels: Vec<String> = old_elems
            .iter()
            .filter(|e| !elems.contains(e))
            .map(elem)
            .collect();
        let adds: Vec<String> = elems
            .iter()
            .filter(|e| !old_elems.contains(e))
            .map(elem)
            .collect();
        if !dels.is_empty() {
            let _ = writeln!(
                s,
                "delete element inet {TABLE} {name} {{ {} }}",
                dels.join(", ")
            );
        }
        if !adds.is_empty() {
            let _ = writeln!(
                s,
                "add element inet {TABLE} {name} {{ {} }}",
                adds.join(", ")
            );
        }
    }
    // 4. Map elements.
    diff_map(
        &mut s,
        "inet",
        "zones",
        &o.zones,
        &n.zones,
        |b| format!("\"{b}\""),
        |z| z.to_string(),
    );
    let dels: Vec<String> = o
        .zones
        .keys()
        .filter(|b| !n.zones.contains_key(*b))
        .map(bridged_elem)
        .collect();
    let adds: Vec<String> = n
        .zones
        .keys()
        .filter(|b| !o.zones.contains_key(*b))
        .map(bridged_elem)
        .collect();
    if !dels.is_empty() {
        let _ = writeln!(
            s,
            "delete element inet {TABLE} bridged {{ {} }}",
            dels.join(", ")
        );
    }
    if !adds.is_empty() {
        let _ = writeln!(
            s,
            "add element inet {TABLE} bridged {{ {} }}",
            adds.join(", ")
        );
    }
    if let (Some(op), Some(np)) = (&o.published, &n.published) {
        for (_, name, _) in PUB_OBJECTS {
            let (old_e, new_e) = (op.projection(name), np.projection(name));
            let dels: Vec<&str> = old_e
                .iter()
                .filter(|(k, v)| new_e.get(*k) != Some(v))
                .map(|(k, _)| k.as_str())
                .collect();
            let adds: Vec<String> = new_e
                .iter()
                .filter(|(k, v)| old_e.get(*k) != Some(v))
                .map(|(k, v)| pub_elem(k, v))
                .collect();
            if !dels.is_empty() {
                let _ = writeln!(
                    s,
                    "delete element inet {TABLE} {name} {{ {} }}",
                    dels.join(", ")
                );
            }
            if !adds.is_empty() {
                let _ = writeln!(
                    s,
                    "add element inet {TABLE} {name} {{ {} }}",
                    adds.join(", ")
                );
            }
        }
    }
    let none = BTreeSet::new();
    for (name, _, _) in BSETS {
        let (old_e, new_e) = (
            o.bsets.get(name).unwrap_or(&none),
            n.bsets.get(name).unwrap_or(&none),
        );
        let dels: Vec<String> = old_e.difference(new_e).map(BElem::text).collect();
        let adds: Vec<String> = new_e.difference(old_e).map(BElem::text).collect();
        if !dels.is_empty() {
            let _ = writeln!(
                s,
                "delete element bridge {TABLE} {name} {{ {} }}",
                dels.join(", ")
            );
        }
        if !adds.is_empty() {
            let _ = writeln!(
                s,
                "add element bridge {TABLE} {name} {{ {} }}",
                adds.join(", ")
            );
        }
    }
    let empty = BTreeMap::new();
    for name in VMAPS {
        diff_map(
            &mut s,
            "inet",
            name,
            o.vmaps.get(name).unwrap_or(&empty),
            n.vmaps.get(name).unwrap_or(&empty),
            vmap_elem,
            |c| format!("jump {c}"),
        );
    }
    let no_addrs = BTreeSet::new();
    for (name, _) in NOTRACK {
        let (old_e, new_e) = (
            o.notrack.get(name).unwrap_or(&no_addrs),
            n.notrack.get(name).unwrap_or(&no_addrs),
        );
        let dels: Vec<String> = old_e.difference(new_e).map(vmap_elem).collect();
        let adds: Vec<String> = new_e.difference(old_e).map(vmap_elem).collect();
        if !dels.is_empty() {
            let _ = writeln!(
                s,
                "delete element inet {TABLE} {name} {{ {} }}",
                dels.join(", ")
            );
        }
        if !adds.is_empty() {
            let _ = writeln!(
                s,
                "add element inet {TABLE} {name} {{ {} }}",
                adds.join(", ")
            );
        }
    }
    // 5. Chains nothing jumps to any more, then sets no rule refers to any more.
    for chain in gone_i {
        let _ = writeln!(s, "delete chain inet {TABLE} {chain}");
    }
    for name in o.sets.keys() {
        if !n.sets.contains_key(name) {
            let _ = writeln!(s, "delete set inet {TABLE} {name}");
        }
    }
    if o.published.is_some() && n.published.is_none() {
        for (name, _, _) in PUB_CHAINS.iter().rev() {
            let _ = writeln!(s, "delete chain inet {TABLE} {name}");
        }
        for (kind, name, _) in PUB_OBJECTS {
            let _ = writeln!(s, "delete {kind} inet {TABLE} {name}");
        }
    }
    if s.is_empty() { None } else { Some(s) }
}

// ---- element changes over netlink ------------------------------------------

/// `name` as the kernel keys an `ifname`: 16 bytes, zero-padded.
fn ifname_key(name: &str) -> Vec<u8> {
    let mut k = name.as_bytes().to_vec();
    k.resize(16, 0);
    k
}

fn addr_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The address after the last of `net`, if there is one (the exclusive end of a
/// range in a set of single values).
fn after(net: &IpNet) -> Option<IpAddr> {
    match net.broadcast() {
        IpAddr::V4(a) => u32::from(a)
            .checked_add(1)
            .map(|v| IpAddr::from(v.to_be_bytes())),
        IpAddr::V6(a) => u128::from(a)
            .checked_add(1)
            .map(|v| IpAddr::from(v.to_be_bytes())),
    }
}

/// `ifname . addr` over the range of `net`, for concatenations with intervals.
fn concat_range(name: &str, net: &IpNet) -> nfnl::Element {
    let mut key = ifname_key(name);
    key.extend(addr_bytes(net.network()));
    let mut end = ifname_key(name);
    end.extend(addr_bytes(net.broadcast()));
    nfnl::Element {
        key,
        key_end: Some(end),
        interval_end: false,
        data: None,
    }
}

/// `ifname . addr` exactly, for the hash sets and maps of single addresses.
fn concat_exact(name: &str, net: &IpNet) -> nfnl::Element {
    let mut key = ifname_key(name);
    key.extend(addr_bytes(net.addr()));
    nfnl::Element {
        key,
        key_end: None,
        interval_end: false,
        data: None,
    }
}

/// `ifname . addr` in set `set`: a range or an exact key, as the set holds.
fn concat(set: &str, name: &str, net: &IpNet) -> nfnl::Element {
    if holds_ranges(set) || set.starts_with("nets") {
        concat_range(name, net)
    } else {
        concat_exact(name, net)
    }
}

fn belem(set: &str, e: &BElem) -> nfnl::Element {
    let plain = |key: Vec<u8>| nfnl::Element {
        key,
        key_end: None,
        interval_end: false,
        data: None,
    };
    match e {
        BElem::Tap(t) => plain(ifname_key(t)),
        BElem::Mac(t, m) => {
            let mut k = ifname_key(t);
            k.extend_from_slice(&m.0);
            k.extend_from_slice(&[0, 0]);
            plain(k)
        }
        BElem::Net(t, n) => concat(set, t, n),
    }
}

/// A single-value interval set's elements for `net`: its start, and its
/// exclusive end flagged as such (none when the range ends the address space).
fn interval(net: &IpNet) -> Vec<nfnl::Element> {
    let mut v = vec![nfnl::Element {
        key: addr_bytes(net.network()),
        key_end: None,
        interval_end: false,
        data: None,
    }];
    if let Some(end) = after(net) {
        v.push(nfnl::Element {
            key: addr_bytes(end),
            key_end: None,
            interval_end: true,
            data: None,
        });
    }
    v
}

/// Collects the element changes of one set or map.
struct Changes(Vec<nfnl::Change>, Vec<nfnl::Change>);

impl Changes {
    fn push(
        &mut self,
        family: nfnl::Family,
        set: &str,
        dels: Vec<nfnl::Element>,
        adds: Vec<nfnl::Element>,
    ) {
        for (add, elements) in [(false, dels), (true, adds)] {
            if !elements.is_empty() {
                let c = nfnl::Change {
                    family,
                    set: set.to_string(),
                    add,
                    elements,
                };
                if add { self.1.push(c) } else { self.0.push(c) }
            }
        }
    }

    fn map<K: Ord, V: PartialEq>(
        &mut self,
        family: nfnl::Family,
        set: &str,
        old: &BTreeMap<K, V>,
        new: &BTreeMap<K, V>,
        elem: impl Fn(&K, &V) -> nfnl::Element,
    ) {
        let dels = old
            .iter()
            .filter(|(k, v)| new.get(k) != Some(v))
            .map(|(k, v)| nfnl::Element {
                data: None,
                ..elem(k, v)
            })
            .collect();
        let adds = new
            .iter()
            .filter(|(k, v)| old.get(k) != Some(v))
            .map(|(k, v)| elem(k, v))
            .collect();
        self.push(family, set, dels, adds);
    }

    fn set<T: Ord>(
        &mut self,
        family: nfnl::Family,
        set: &str,
        old: &BTreeSet<T>,
        new: &BTreeSet<T>,
        elem: impl Fn(&T) -> Vec<nfnl::Element>,
    ) {
        let dels = old.difference(new).flat_map(&elem).collect();
        let adds = new.difference(old).flat_map(&elem).collect();
        self.push(family, set, dels, adds);
    }
}

/// The change from `old` to `new` as set and map element updates only, for
/// [`nfnl::Elements::apply`] (deletes first, one atomic batch), or `None` when the
/// change needs more: chains created, refilled or deleted, group sets created or
/// deleted, published ports changed (those go through [`diff_compiled`]). A port
/// bound with rules another port on the host already has, a port going away while
/// another keeps its chain, a group member joining or leaving: all elements.
pub fn element_changes(old: &Compiled, new: &Compiled) -> Option<Vec<nfnl::Change>> {
    use nfnl::Family::{Bridge, Inet};
    let (o, n) = (&old.0, &new.0);
    if o.ichains != n.ichains || o.published != n.published || !o.sets.keys().eq(n.sets.keys()) {
        return None;
    }
    let mut c = Changes(Vec::new(), Vec::new());
    let none = BTreeSet::new();
    for (name, _, _) in BSETS {
        let (old_e, new_e) = (
            o.bsets.get(name).unwrap_or(&none),
            n.bsets.get(name).unwrap_or(&none),
        );
        c.set(Bridge, name, old_e, new_e, |e| vec![belem(name, e)]);
    }
    c.map(Inet, "zones", &o.zones, &n.zones, |b, z| nfnl::Element {
        key: ifname_key(b),
        key_end: None,
        interval_end: false,
        data: Some(nfnl::Data::Value(z.to_ne_bytes().to_vec())),
    });
    let bridges = |m: &Model| m.zones.keys().cloned().collect::<BTreeSet<String>>();
    c.set(Inet, "bridged", &bridges(o), &bridges(n), |b| {
        let mut key = ifname_key(b);
        key.extend(ifname_key(b));
        vec![nfnl::Element {
            key,
            key_end: None,
            interval_end: false,
            data: None,
        }]
    });
    for (name, (_, elems)) in &n.sets {
        let old_e: BTreeSet<IpNet> = o
            .sets
            .get(name)
            .map(|(_, e)| e.iter().copied().collect())
            .unwrap_or_default();
        let new_e: BTreeSet<IpNet> = elems.iter().copied().collect();
        c.set(Inet, name, &old_e, &new_e, interval);
    }
    let empty = BTreeMap::new();
    for name in VMAPS {
        c.map(
            Inet,
            name,
            o.vmaps.get(name).unwrap_or(&empty),
            n.vmaps.get(name).unwrap_or(&empty),
            |(bridge, net), chain| nfnl::Element {
                data: Some(nfnl::Data::Jump(chain.clone())),
                ..concat(name, bridge, net)
            },
        );
    }
    let no_addrs = BTreeSet::new();
    for (name, _) in NOTRACK {
        c.set(
            Inet,
            name,
            o.notrack.get(name).unwrap_or(&no_addrs),
            n.notrack.get(name).unwrap_or(&no_addrs),
            |(bridge, net)| vec![concat(name, bridge, net)],
        );
    }
    let Changes(mut dels, adds) = c;
    dels.extend(adds);
    Some(dels)
}

/// Why running nft failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nft failed ({status}): {stderr}{}", line.as_ref().map(|(n, l)| format!(" [script line {n}: {l}]")).unwrap_or_default())]
    Failed {
        /// Exit status as text (`exit status: 1`).
        status: String,
        /// nft's standard error, trimmed.
        stderr: String,
        /// The first script line nft complained about (1-based) and its text.
        line: Option<(usize, String)>,
    },
}

/// Runs the nft binary, optionally inside a named network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nft {
    binary: PathBuf,
    netns: Option<String>,
}

impl Default for Nft {
    fn default() -> Self {
        Nft::new()
    }
}

/// Finds the first `/dev/stdin:LINE:` (or `-:LINE:`) in nft's error output.
fn failing_line(stderr: &str, script: &str) -> Option<(usize, String)> {
    for l in stderr.lines() {
        let rest = l
            .strip_prefix("/dev/stdin:")
            .or_else(|| l.strip_prefix("-:"))
            .or_else(|| l.strip_prefix("stdin:"));
        if let Some(rest) = rest {
            let num: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            if let Ok(n) = num.parse::<usize>()
                && n >= 1
            {
                let text = script.lines().nth(n - 1).unwrap_or("").trim().to_string();
                return Some((n, text));
            }
        }
    }
    None
}

impl Nft {
    /// `nft` from `PATH`, in the caller's namespace.
    pub fn new() -> Nft {
        Nft {
            binary: PathBuf::from("nft"),
            netns: None,
        }
    }

    /// A given nft binary.
    pub fn with_binary(path: impl Into<PathBuf>) -> Nft {
        Nft {
            binary: path.into(),
            netns: None,
        }
    }

    /// The same binary run as `ip netns exec NAME nft ...` (NAME under /run/netns).
    pub fn in_netns(mut self, name: impl Into<String>) -> Nft {
        self.netns = Some(name.into());
        self
    }

    fn command(&self) -> tokio::process::Command {
        match &self.netns {
            Some(ns) => {
                let mut c = tokio::process::Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.binary);
                c
            }
            None => tokio::process::Command::new(&self.binary),
        }
    }

    /// Runs nft with `args`, feeding `stdin` if given; returns its standard output.
    pub async fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, NftError> {
        let program = self.binary.display().to_string();
        let mut cmd = self.command();
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| NftError::Spawn {
            program: program.clone(),
            source,
        })?;
        if let Some(pid) = child.id() {
            crate::nfnl::remember_child(pid);
        }
        let writer = {
            let input = child.stdin.take();
            let data = stdin.unwrap_or("").as_bytes().to_vec();
            async move {
                if let Some(mut input) = input {
                    // A write error means nft exited early; its status says why.
                    let _ = input.write_all(&data).await;
                    let _ = input.shutdown().await;
                }
            }
        };
        let (_, output) = tokio::join!(writer, child.wait_with_output());
        let output = output.map_err(|source| NftError::Spawn { program, source })?;
        if output.status.success() {
            return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        let line = stdin.and_then(|s| failing_line(&stderr, s));
        tracing::warn!(status = %output.status, %stderr, ?line, "nft failed");
        Err(NftError::Failed {
            status: output.status.to_string(),
            stderr,
            line,
        })
    }

    /// `nft -f -` with the script on stdin: one atomic transaction.
    pub async fn apply(&self, script: &str) -> Result<(), NftError> {
        tracing::debug!(bytes = script.len(), "applying nft script");
        self.run(&["-f", "-"], Some(script)).await.map(|_| ())
    }

    /// `nft -c -f -`: checks the script against the kernel without committing it.
    pub async fn check(&self, script: &str) -> Result<(), NftError> {
        self.run(&["-c", "-f", "-"], Some(script)).await.map(|_| ())
    }

    /// Deletes kuryr's tables if present (agent cleanup); one transaction.
    pub async fn remove_all(&self) -> Result<(), NftError> {
        let mut s = String::new();
        for fam in ["bridge", "inet"] {
            let _ = writeln!(s, "add table {fam} {TABLE}");
            let _ = writeln!(s, "delete table {fam} {TABLE}");
        }
        self.apply(&s).await
    }
}
