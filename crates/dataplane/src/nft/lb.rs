//! The distributed load balancer's nft tables (`bridge kuryr_lb`, `inet kuryr_lb`),
//! compiled from a [`crate::lb::LbHost`]; see [`crate::lb`] for the design.
//!
//! The script is split in two: the *structure* (tables, chains, every set and map but
//! the backend maps' elements) and one element list per listener. A member change
//! is then a `flush map` + `add element` of that listener's map, not a rule change;
//! the structure changes only when listeners, VIPs, bridges, algorithms, allowed
//! CIDRs or a listener's slot count (a power of two) change.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::MacAddr;
use crate::lb::{Algorithm, L4Proto, LbHost};

/// Name of both tables.
pub const LB_TABLE: &str = "kuryr_lb";
/// Packet and conntrack mark bit of load-balanced traffic (next to the DVR's
/// transit bit, 0x00100000).
pub const LB_MARK: u32 = 0x0020_0000;
/// Seed of the source hashes (fixed: the same client lands on the same slot after
/// an agent restart).
const SEED: u32 = 0x6b75_726c;
/// Fewest slots of a listener's backend map.
const MIN_SLOTS: usize = 64;

/// One listener as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbListener {
    /// The listener id as given.
    pub id: String,
    pub v6: bool,
    pub protocol: L4Proto,
    pub algorithm: Algorithm,
    /// Slot i of the backend map holds `targets[i]` (len = the slot count).
    pub targets: Vec<(IpAddr, u16)>,
    pub allowed: Vec<IpNet>,
}

/// Everything the two tables hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LbTables {
    pub uplinks: BTreeSet<String>,
    pub gw_macs: BTreeSet<MacAddr>,
    /// Every VIP some bridge reaches (the bridge chain's cheap first test).
    pub vips: BTreeSet<IpAddr>,
    pub bridges: BTreeSet<String>,
    /// bridge . VIP . protocol . port of listeners with backends.
    pub live: BTreeSet<(String, IpAddr, L4Proto, u16)>,
    /// bridge . VIP: what a local port may not reach except through `live`.
    pub vip_on: BTreeSet<(String, IpAddr)>,
    /// bridge . VIP . protocol . port -> escaped listener name.
    pub svc: BTreeMap<(String, IpAddr, L4Proto, u16), String>,
    /// Escaped name -> listener.
    pub listeners: BTreeMap<String, LbListener>,
    /// Backend addresses (hairpin: a backend reaching itself through the VIP).
    pub hair: BTreeSet<IpAddr>,
    /// Record: neighbour entries this module made (device . address).
    pub owned: BTreeSet<(String, IpAddr)>,
    /// Record: taps this module turned hairpin on.
    pub hairpin: BTreeSet<String>,
}

/// Valid interface name (1-15 bytes of ASCII letters, digits, `-_.@`).
pub fn valid_ifname(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 15
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
}

/// Listener ids in nft names: ASCII letters, digits and `-` kept, any other byte
/// `_` + two hex digits (injective), cut at 200 bytes.
pub fn escape(id: &str) -> String {
    let mut s = String::new();
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            s.push(char::from(b));
        } else {
            let _ = write!(s, "_{b:02x}");
        }
    }
    s.truncate(200);
    s
}

/// The inverse of [`escape`] (None for what it cannot have made).
pub fn unescape(name: &str) -> Option<String> {
    let mut out = Vec::new();
    let b = name.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'_' {
            let hex = name.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Slot count for `n` backends: a power of two, at least 8 per backend and 64.
pub fn slot_count(n: usize) -> usize {
    (n.saturating_mul(8)).next_power_of_two().max(MIN_SLOTS)
}

/// Fills `slots` slots with the backends in proportion to their weights,
/// interleaved (smooth weighted round robin). Weight-0 backends get none.
pub fn fill_slots(backends: &[(IpAddr, u16, u32)], slots: usize) -> Vec<(IpAddr, u16)> {
    let live: Vec<&(IpAddr, u16, u32)> = backends.iter().filter(|b| b.2 > 0).collect();
    let total: i64 = live.iter().map(|b| i64::from(b.2)).sum();
    if live.is_empty() {
        return Vec::new();
    }
    let mut current = vec![0i64; live.len()];
    let mut out = Vec::with_capacity(slots);
    for _ in 0..slots {
        let mut best = 0;
        for (i, b) in live.iter().enumerate() {
            current[i] += i64::from(b.2);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push((live[best].0, live[best].1));
    }
    out
}

fn proto_name(p: L4Proto) -> &'static str {
    match p {
        L4Proto::Tcp => "tcp",
        L4Proto::Udp => "udp",
        L4Proto::Sctp => "sctp",
    }
}

/// Resolves the host spec into the tables' content (invalid names and backends of
/// the other family than their VIP are left out with a warning).
pub fn compile(spec: &LbHost) -> LbTables {
    let mut t = LbTables::default();
    for net in &spec.nets {
        if !valid_ifname(&net.bridge) {
            tracing::warn!(bridge = %net.bridge, "load balancer: invalid bridge name skipped");
            continue;
        }
        t.bridges.insert(net.bridge.clone());
        if let Some(vx) = net.vxlan.as_ref().filter(|v| valid_ifname(v)) {
            t.uplinks.insert(vx.clone());
            for (ip, _) in &net.vips {
                t.owned.insert((vx.clone(), *ip));
            }
        }
        for (ip, mac) in &net.gateways {
            t.gw_macs.insert(*mac);
            t.owned.insert((net.bridge.clone(), *ip));
        }
        for (ip, _) in &net.neighbours {
            t.owned.insert((net.bridge.clone(), *ip));
        }
        for tap in net.hairpin_taps.iter().filter(|n| valid_ifname(n)) {
            t.hairpin.insert(tap.clone());
        }
        for s in &net.services {
            t.vips.insert(s.vip);
            t.vip_on.insert((net.bridge.clone(), s.vip));
            let v6 = s.vip.is_ipv6();
            let backends: Vec<(IpAddr, u16, u32)> = s
                .backends
                .iter()
                .filter(|b| {
                    let same = b.address.is_ipv6() == v6;
                    if !same {
                        tracing::warn!(listener = %s.id, backend = %b.address, "load balancer: backend of the other family than the VIP skipped");
                    }
                    same
                })
                .map(|b| (b.address, b.port, b.weight))
                .collect();
            let used = backends.iter().filter(|b| b.2 > 0).count();
            if used == 0 {
                continue;
            }
            let name = escape(&s.id);
            let targets = fill_slots(&backends, slot_count(used));
            for b in &backends {
                t.hair.insert(b.0);
            }
            let key = (net.bridge.clone(), s.vip, s.protocol, s.port);
            t.live.insert(key.clone());
            t.svc.insert(key, name.clone());
            let mut allowed: Vec<IpNet> = s
                .allowed
                .iter()
                .filter(|n| n.addr().is_ipv6() == v6)
                .map(|n| n.trunc())
                .collect();
            allowed.sort();
            allowed.dedup();
            if !s.allowed.is_empty() && allowed.is_empty() {
                // Only other-family CIDRs: nobody is allowed.
                allowed.push(
                    if v6 {
                        IpNet::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 128)
                    } else {
                        IpNet::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 32)
                    }
                    .unwrap_or_default(),
                );
            }
            let listener = LbListener {
                id: s.id.clone(),
                v6,
                protocol: s.protocol,
                algorithm: s.algorithm,
                targets,
                allowed,
            };
            if let Some(old) = t.listeners.get(&name)
                && *old != listener
            {
                tracing::warn!(listener = %s.id, "load balancer: listener given twice with different content; the first kept");
                continue;
            }
            t.listeners.insert(name, listener);
        }
    }
    t
}

fn join<I: IntoIterator<Item = String>>(items: I) -> String {
    items.into_iter().collect::<Vec<_>>().join(", ")
}

fn elements(s: &mut String, items: Vec<String>) {
    if !items.is_empty() {
        let _ = writeln!(s, "\t\telements = {{ {} }}", join(items));
    }
}

fn fam(v6: bool) -> (&'static str, &'static str) {
    if v6 {
        ("ip6", "ipv6_addr")
    } else {
        ("ip", "ipv4_addr")
    }
}

/// The script that replaces both tables by their structure (backend maps empty), or
/// only deletes them when `t` has no bridge.
pub fn render_structure(t: &LbTables) -> String {
    let mut s = String::new();
    for f in ["bridge", "inet"] {
        let _ = writeln!(s, "add table {f} {LB_TABLE}");
        let _ = writeln!(s, "delete table {f} {LB_TABLE}");
    }
    if t.bridges.is_empty() {
        return s;
    }
    let m = format!("{LB_MARK:#010x}");
    // ---- bridge family: mark frames to a VIP from local ports
    let _ = writeln!(s, "table bridge {LB_TABLE} {{");
    let _ = writeln!(s, "\tset uplinks {{\n\t\ttype ifname");
    elements(
        &mut s,
        t.uplinks.iter().map(|u| format!("\"{u}\"")).collect(),
    );
    let _ = writeln!(s, "\t}}\n\tset gw_macs {{\n\t\ttype ether_addr");
    elements(&mut s, t.gw_macs.iter().map(ToString::to_string).collect());
    let _ = writeln!(s, "\t}}");
    for v6 in [false, true] {
        let (_, ty) = fam(v6);
        let n = if v6 { 6 } else { 4 };
        let _ = writeln!(s, "\tset vips{n} {{\n\t\ttype {ty}");
        elements(
            &mut s,
            t.vips
                .iter()
                .filter(|v| v.is_ipv6() == v6)
                .map(ToString::to_string)
                .collect(),
        );
        let _ = writeln!(s, "\t}}");
    }
    let _ = writeln!(
        s,
        "\tchain pre {{\n\t\ttype filter hook prerouting priority -300; policy accept;\n\
         \t\tip daddr @vips4 jump from_port\n\t\tip6 daddr @vips6 jump from_port\n\t}}"
    );
    let _ = writeln!(
        s,
        "\tchain from_port {{\n\t\tiifname @uplinks return\n\t\tether saddr @gw_macs return\n\
         \t\tmeta mark set meta mark | {m}\n\t}}"
    );
    let _ = writeln!(s, "}}");

    // ---- inet family
    let _ = writeln!(s, "table inet {LB_TABLE} {{");
    for v6 in [false, true] {
        let (_, ty) = fam(v6);
        let n = if v6 { 6 } else { 4 };
        let _ = writeln!(s, "\tset own{n} {{\n\t\ttype ifname . {ty}");
        elements(
            &mut s,
            t.owned
                .iter()
                .filter(|(_, ip)| ip.is_ipv6() == v6)
                .map(|(d, ip)| format!("\"{d}\" . {ip}"))
                .collect(),
        );
        let _ = writeln!(s, "\t}}");
        let _ = writeln!(
            s,
            "\tset live{n} {{\n\t\ttype ifname . {ty} . inet_proto . inet_service"
        );
        elements(
            &mut s,
            t.live
                .iter()
                .filter(|k| k.1.is_ipv6() == v6)
                .map(|(b, ip, p, port)| format!("\"{b}\" . {ip} . {} . {port}", proto_name(*p)))
                .collect(),
        );
        let _ = writeln!(s, "\t}}\n\tset vip_on{n} {{\n\t\ttype ifname . {ty}");
        elements(
            &mut s,
            t.vip_on
                .iter()
                .filter(|k| k.1.is_ipv6() == v6)
                .map(|(b, ip)| format!("\"{b}\" . {ip}"))
                .collect(),
        );
        let _ = writeln!(
            s,
            "\t}}\n\tmap svc{n} {{\n\t\ttype ifname . {ty} . inet_proto . inet_service : verdict"
        );
        elements(
            &mut s,
            t.svc
                .iter()
                .filter(|(k, _)| k.1.is_ipv6() == v6)
                .map(|((b, ip, p, port), name)| {
                    format!(
                        "\"{b}\" . {ip} . {} . {port} : jump l_{name}",
                        proto_name(*p)
                    )
                })
                .collect(),
        );
        let _ = writeln!(s, "\t}}\n\tset hair{n} {{\n\t\ttype {ty} . {ty}");
        elements(
            &mut s,
            t.hair
                .iter()
                .filter(|ip| ip.is_ipv6() == v6)
                .map(|ip| format!("{ip} . {ip}"))
                .collect(),
        );
        let _ = writeln!(s, "\t}}");
    }
    let _ = writeln!(s, "\tset hairpin {{\n\t\ttype ifname");
    elements(
        &mut s,
        t.hairpin.iter().map(|n| format!("\"{n}\"")).collect(),
    );
    let _ = writeln!(s, "\t}}\n\tset same {{\n\t\ttype ifname . ifname");
    elements(
        &mut s,
        t.bridges
            .iter()
            .map(|b| format!("\"{b}\" . \"{b}\""))
            .collect(),
    );
    let _ = writeln!(s, "\t}}");
    for (name, l) in &t.listeners {
        let (f, ty) = fam(l.v6);
        let _ = writeln!(
            s,
            "\tmap m_{name} {{\n\t\ttypeof numgen inc mod {} : {f} daddr . th dport\n\t}}",
            l.targets.len()
        );
        let _ = writeln!(s, "\tcounter c_{name} {{\n\t}}");
        if !l.allowed.is_empty() {
            let _ = writeln!(
                s,
                "\tset a_{name} {{\n\t\ttype {ty}\n\t\tflags interval\n\t\tauto-merge"
            );
            elements(&mut s, l.allowed.iter().map(ToString::to_string).collect());
            let _ = writeln!(s, "\t}}");
        }
    }
    // Refusal: a local port's packet to a VIP of its bridge that is no live listener.
    let _ = writeln!(
        s,
        "\tchain refuse {{\n\t\ttype filter hook prerouting priority -150; policy accept;\n\
         \t\tmeta mark & {m} == 0 return\n\t\tct direction reply return\n\
         \t\tiifname . ip daddr . meta l4proto . th dport @live4 return\n\
         \t\tiifname . ip6 daddr . meta l4proto . th dport @live6 return\n\
         \t\tiifname . ip daddr @vip_on4 jump refuse_it\n\
         \t\tiifname . ip6 daddr @vip_on6 jump refuse_it\n\t}}"
    );
    let _ = writeln!(
        s,
        "\tchain refuse_it {{\n\t\tmeta l4proto tcp reject with tcp reset\n\t\tdrop\n\t}}"
    );
    let _ = writeln!(
        s,
        "\tchain pre_nat {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         \t\tmeta mark & {m} == 0 return\n\
         \t\tiifname . ip daddr . meta l4proto . th dport vmap @svc4\n\
         \t\tiifname . ip6 daddr . meta l4proto . th dport vmap @svc6\n\t}}"
    );
    for (name, l) in &t.listeners {
        let (f, _) = fam(l.v6);
        let slots = l.targets.len();
        let select = match l.algorithm {
            Algorithm::RoundRobin => format!("numgen inc mod {slots}"),
            Algorithm::SourceIp => format!("jhash {f} saddr mod {slots} seed {SEED:#x}"),
            Algorithm::SourceIpPort => {
                format!("jhash {f} saddr . th sport mod {slots} seed {SEED:#x}")
            }
        };
        let _ = writeln!(s, "\tchain l_{name} {{");
        if !l.allowed.is_empty() {
            let _ = writeln!(s, "\t\t{f} saddr != @a_{name} drop");
        }
        let _ = writeln!(
            s,
            "\t\tmeta l4proto {} counter name c_{name} ct mark set ct mark | {m} dnat {f} to {select} map @m_{name}\n\t}}",
            proto_name(l.protocol)
        );
    }
    let _ = writeln!(
        s,
        "\tchain restore {{\n\t\ttype filter hook prerouting priority -90; policy accept;\n\
         \t\tct mark & {m} == {m} meta mark set meta mark | {m}\n\t}}"
    );
    let _ = writeln!(
        s,
        "\tchain post_nat {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tct mark & {m} == 0 return\n\
         \t\tip saddr . ip daddr @hair4 snat ip to ct original ip daddr\n\
         \t\tip6 saddr . ip6 daddr @hair6 snat ip6 to ct original ip6 daddr\n\t}}"
    );
    let _ = writeln!(
        s,
        "\tchain guard_in {{\n\t\ttype filter hook input priority filter; policy accept;\n\
         \t\tct mark & {m} == {m} drop\n\t}}"
    );
    let _ = writeln!(
        s,
        "\tchain guard_fwd {{\n\t\ttype filter hook forward priority -10; policy accept;\n\
         \t\tct mark & {m} == {m} iifname . oifname != @same drop\n\t}}"
    );
    let _ = writeln!(s, "}}");
    s
}

/// The elements of a listener's backend map (`add element` of every slot).
pub fn render_backends(name: &str, l: &LbListener) -> String {
    let items: Vec<String> = l
        .targets
        .iter()
        .enumerate()
        .map(|(i, (ip, port))| format!("{i} : {ip} . {port}"))
        .collect();
    if items.is_empty() {
        return String::new();
    }
    format!(
        "add element inet {LB_TABLE} m_{name} {{ {} }}\n",
        items.join(", ")
    )
}

/// Replaces a listener's backend map content (one transaction with the others).
pub fn render_backend_update(name: &str, l: &LbListener) -> String {
    format!(
        "flush map inet {LB_TABLE} m_{name}\n{}",
        render_backends(name, l)
    )
}

/// Structure and every backend map: the full replace.
pub fn render_full(t: &LbTables) -> String {
    let mut s = render_structure(t);
    for (name, l) in &t.listeners {
        s.push_str(&render_backends(name, l));
    }
    s
}

/// Sets of the inet table whose elements are changed element by element (not by a
/// rebuild): the record sets and the hairpin SNAT sets.
pub const ELEMENT_SETS: [&str; 5] = ["own4", "own6", "hair4", "hair6", "hairpin"];

/// Whether `a` and `b` have the same *structure*: everything but the content of the
/// backend maps and of [`ELEMENT_SETS`] (a listener's slot count is structure).
pub fn same_structure(a: &LbTables, b: &LbTables) -> bool {
    // Destructured so that a new field cannot be forgotten here.
    let LbTables {
        uplinks,
        gw_macs,
        vips,
        bridges,
        live,
        vip_on,
        svc,
        listeners,
        hair: _,
        owned: _,
        hairpin: _,
    } = a;
    *uplinks == b.uplinks
        && *gw_macs == b.gw_macs
        && *vips == b.vips
        && *bridges == b.bridges
        && *live == b.live
        && *vip_on == b.vip_on
        && *svc == b.svc
        && listeners.len() == b.listeners.len()
        && listeners
            .iter()
            .zip(&b.listeners)
            .all(|((na, la), (nb, lb))| {
                let LbListener {
                    id,
                    v6,
                    protocol,
                    algorithm,
                    targets,
                    allowed,
                } = la;
                na == nb
                    && *id == lb.id
                    && *v6 == lb.v6
                    && *protocol == lb.protocol
                    && *algorithm == lb.algorithm
                    && targets.len() == lb.targets.len()
                    && *allowed == lb.allowed
            })
}

/// An element's key or data as nf_tables stores a concatenation: each part padded
/// to 4 bytes.
fn concat(parts: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p);
        v.resize(v.len().div_ceil(4) * 4, 0);
    }
    v
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// An interface name as nft's `ifname` type (16 bytes, zero padded).
fn ifname_bytes(n: &str) -> Vec<u8> {
    let mut v = n.as_bytes().to_vec();
    v.resize(16, 0);
    v
}

/// The kernel elements of [`ELEMENT_SETS`] set `set` for `t` (unknown names: none).
pub fn element_set(t: &LbTables, set: &str) -> BTreeSet<Vec<u8>> {
    let v6 = set.ends_with('6');
    match set {
        "own4" | "own6" => t
            .owned
            .iter()
            .filter(|(_, ip)| ip.is_ipv6() == v6)
            .map(|(d, ip)| concat(&[&ifname_bytes(d), &ip_bytes(ip)]))
            .collect(),
        "hair4" | "hair6" => t
            .hair
            .iter()
            .filter(|ip| ip.is_ipv6() == v6)
            .map(|ip| concat(&[&ip_bytes(ip), &ip_bytes(ip)]))
            .collect(),
        "hairpin" => t.hairpin.iter().map(|n| ifname_bytes(n)).collect(),
        _ => BTreeSet::new(),
    }
}

/// A backend map's element: slot `i` (a `numgen`/`jhash` value: host byte order)
/// → address . port.
pub fn backend_element(i: usize, target: &(IpAddr, u16)) -> (Vec<u8>, Vec<u8>) {
    let slot = u32::try_from(i).unwrap_or(u32::MAX);
    (
        slot.to_ne_bytes().to_vec(),
        concat(&[&ip_bytes(&target.0), &target.1.to_be_bytes()]),
    )
}

/// Elements of set `set` in an `nft list` output of the inet table, as text items
/// (`"brqa" . 10.0.0.1`); empty when absent.
pub fn listed_elements(listing: &str, set: &str) -> Vec<String> {
    let head = format!("set {set} {{");
    let Some(start) = listing.find(&head) else {
        return Vec::new();
    };
    let rest = &listing[start + head.len()..];
    let Some(end) = rest.find("\n\t}") else {
        return Vec::new();
    };
    let block = &rest[..end];
    let Some(e) = block.find("elements = {") else {
        return Vec::new();
    };
    let inner = &block[e + "elements = {".len()..];
    let inner = inner.rsplit_once('}').map(|(a, _)| a).unwrap_or(inner);
    inner
        .split(',')
        .map(|i| i.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|i| !i.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn slots_follow_weights_and_skip_zero() {
        let b = [
            (ip("10.0.0.1"), 80, 1),
            (ip("10.0.0.2"), 80, 3),
            (ip("10.0.0.3"), 80, 0),
        ];
        let s = fill_slots(&b, 64);
        assert_eq!(s.len(), 64);
        assert_eq!(s.iter().filter(|t| t.0 == ip("10.0.0.1")).count(), 16);
        assert_eq!(s.iter().filter(|t| t.0 == ip("10.0.0.2")).count(), 48);
        assert!(!s.iter().any(|t| t.0 == ip("10.0.0.3")));
        // interleaved: never four of the heavy one in a row... at most 3
        assert!(
            s.windows(4)
                .all(|w| w.iter().any(|t| t.0 == ip("10.0.0.1")))
        );
    }

    #[test]
    fn slot_counts_are_size_classes() {
        assert_eq!(slot_count(1), 64);
        assert_eq!(slot_count(8), 64);
        assert_eq!(slot_count(9), 128);
        assert_eq!(slot_count(100), 1024);
    }

    #[test]
    fn escape_round_trips() {
        for id in ["5b3c1a2e-aaaa-bbbb", "a_b c", "ü"] {
            assert_eq!(unescape(&escape(id)).as_deref(), Some(id));
        }
    }

    #[test]
    fn listed_elements_parse() {
        let l = "table inet kuryr_lb {\n\tset own4 {\n\t\ttype ifname . ipv4_addr\n\t\telements = { \"brqa\" . 10.0.0.1,\n\t\t\t     \"brqb\" . 10.0.0.2 }\n\t}\n\tset own6 {\n\t\ttype ifname . ipv6_addr\n\t}\n}";
        assert_eq!(
            listed_elements(l, "own4"),
            vec!["\"brqa\" . 10.0.0.1", "\"brqb\" . 10.0.0.2"]
        );
        assert!(listed_elements(l, "own6").is_empty());
    }
}
