//! The NAT table of a router namespace (`table ip kuryr_nat`), rendered whole.
//!
//! - In a router namespace (`kqr-`), floating IPs of the ports on this host: what
//!   arrives on the external leg for a floating IP goes to its fixed IP (DNAT), and
//!   what the fixed IP sends out of that leg leaves as the floating IP (SNAT).
//! - In the SNAT namespace (`ksnat-`) on the router's gateway host: ports without a
//!   floating IP leave as the router's gateway address (SNAT), and port forwardings
//!   of floating IPs go to their internal address and port (DNAT).
//!
//! Both are replaced whole when they change (a handful of rules per router).

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

pub const NAT_TABLE: &str = "kuryr_nat";

/// One port forwarding: `protocol` (tcp, udp, ...) to `fip` on the external ports
/// goes to `internal` on the internal ports (N:N ranges keep their offset; 1:N
/// sends every external port to the one internal port).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Forward {
    pub protocol: String,
    pub fip: Ipv4Addr,
    pub external: (u16, u16),
    pub internal_ip: Ipv4Addr,
    pub internal: (u16, u16),
}

/// A load-balancer listener reached at a floating IP of its VIP (in the router's
/// SNAT namespace, where the floating IP lives): new connections to `fip:port` are
/// DNATed to a backend, round robin or by source address; the backends' replies
/// come back here (they have no floating IP of their own) and are un-NATed. Only
/// `sources` (the VIP port's groups) are balanced: others meet the floating IP
/// itself, which serves nothing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Balanced {
    pub protocol: String,
    pub fip: Ipv4Addr,
    pub port: u16,
    /// Who may connect (empty: anyone).
    pub sources: Vec<ipnet::Ipv4Net>,
    /// Pick by source address (SOURCE_IP, session persistence) instead of in turn.
    pub by_source: bool,
    /// Address, port, weight (weight 0 never picked).
    pub backends: Vec<(Ipv4Addr, u16, u32)>,
}

/// The slots of a balanced rule: each backend as often as its weight (reduced by
/// their greatest common divisor, at most 256 slots in all).
fn slots(backends: &[(Ipv4Addr, u16, u32)]) -> Vec<(Ipv4Addr, u16)> {
    fn gcd(a: u32, b: u32) -> u32 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    let live: Vec<&(Ipv4Addr, u16, u32)> = backends.iter().filter(|b| b.2 > 0).collect();
    let g = live.iter().fold(0, |g, b| gcd(g, b.2)).max(1);
    let total: u32 = live.iter().map(|b| b.2 / g).sum();
    let scale = if total > 256 {
        f64::from(total) / 256.0
    } else {
        1.0
    };
    let mut out = Vec::new();
    // Interleaved, so that consecutive picks go to different backends.
    let counts: Vec<u32> = live
        .iter()
        .map(|b| ((f64::from(b.2 / g) / scale).round() as u32).max(1))
        .collect();
    let most = counts.iter().copied().max().unwrap_or(0);
    for round in 0..most {
        for (b, c) in live.iter().zip(&counts) {
            if round < *c {
                out.push((b.0, b.1));
            }
        }
    }
    out
}

fn valid_ifname(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 15
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
}

/// Protocols nft names in `meta l4proto` (Neutron's port forwarding ones).
fn l4proto(p: &str) -> Option<&'static str> {
    Some(match p {
        "tcp" => "tcp",
        "udp" => "udp",
        "sctp" => "sctp",
        "dccp" => "dccp",
        _ => return None,
    })
}

fn header(s: &mut String) {
    let _ = writeln!(s, "add table ip {NAT_TABLE}");
    let _ = writeln!(s, "delete table ip {NAT_TABLE}");
    let _ = writeln!(s, "table ip {NAT_TABLE} {{");
}

/// The floating IPs of a router namespace: (floating IP, fixed IP) on leg `leg`.
pub fn render_fip_nat(leg: &str, pairs: &[(Ipv4Addr, Ipv4Addr)]) -> Option<String> {
    if pairs.is_empty() || !valid_ifname(leg) {
        return None;
    }
    let mut s = String::new();
    header(&mut s);
    let dnat: Vec<String> = pairs.iter().map(|(f, x)| format!("{f} : {x}")).collect();
    let snat: Vec<String> = pairs.iter().map(|(f, x)| format!("{x} : {f}")).collect();
    let _ = writeln!(s, "  map fip_dnat {{ type ipv4_addr : ipv4_addr;");
    let _ = writeln!(s, "    elements = {{ {} }} }}", dnat.join(", "));
    let _ = writeln!(s, "  map fip_snat {{ type ipv4_addr : ipv4_addr;");
    let _ = writeln!(s, "    elements = {{ {} }} }}", snat.join(", "));
    let _ = writeln!(
        s,
        "  chain pre {{ type nat hook prerouting priority dstnat; policy accept;"
    );
    let _ = writeln!(s, "    iifname \"{leg}\" dnat ip to ip daddr map @fip_dnat");
    let _ = writeln!(s, "  }}");
    let _ = writeln!(
        s,
        "  chain post {{ type nat hook postrouting priority srcnat; policy accept;"
    );
    let _ = writeln!(s, "    oifname \"{leg}\" snat ip to ip saddr map @fip_snat");
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "}}");
    Some(s)
}

/// The SNAT namespace: `snat` (the gateway address) for `internal` subnets leaving
/// by `leg`, and port forwardings arriving on it.
pub fn render_snat_nat(
    leg: &str,
    snat: Option<Ipv4Addr>,
    internal: &[Ipv4Net],
    forwards: &[Forward],
    balanced: &[Balanced],
) -> Option<String> {
    if !valid_ifname(leg)
        || (forwards.is_empty() && balanced.is_empty() && (snat.is_none() || internal.is_empty()))
    {
        return None;
    }
    let mut s = String::new();
    header(&mut s);
    let _ = writeln!(
        s,
        "  chain pre {{ type nat hook prerouting priority dstnat; policy accept;"
    );
    for f in forwards {
        let Some(proto) = l4proto(&f.protocol) else {
            continue;
        };
        let ext_w = f.external.1.saturating_sub(f.external.0);
        let int_w = f.internal.1.saturating_sub(f.internal.0);
        if int_w == 0 {
            // One internal port for one or many external ones.
            let dport = if ext_w == 0 {
                format!("{}", f.external.0)
            } else {
                format!("{}-{}", f.external.0, f.external.1)
            };
            let _ = writeln!(
                s,
                "    iifname \"{leg}\" ip daddr {} {proto} dport {dport} dnat ip to {}:{}",
                f.fip, f.internal_ip, f.internal.0
            );
        } else if f.external == f.internal {
            // The same ports: only the address changes.
            let _ = writeln!(
                s,
                "    iifname \"{leg}\" ip daddr {} {proto} dport {}-{} dnat ip to {}",
                f.fip, f.external.0, f.external.1, f.internal_ip
            );
        } else {
            // N:N with an offset: nft's port ranges pick a port instead of shifting
            // by the offset, so one element per port.
            let pairs: Vec<String> = (0..=ext_w)
                .map(|i| {
                    format!(
                        "{} : {} . {}",
                        f.external.0 + i,
                        f.internal_ip,
                        f.internal.0 + i
                    )
                })
                .collect();
            let _ = writeln!(
                s,
                "    iifname \"{leg}\" ip daddr {} meta l4proto {proto} dnat ip to {proto} dport map {{ {} }}",
                f.fip,
                pairs.join(", ")
            );
        }
    }
    for b in balanced {
        let Some(proto) = l4proto(&b.protocol) else {
            continue;
        };
        let slots = slots(&b.backends);
        if slots.is_empty() {
            continue;
        }
        let pick = if b.by_source {
            format!("jhash ip saddr mod {} seed 0x6b757279", slots.len())
        } else {
            format!("numgen inc mod {}", slots.len())
        };
        let map: Vec<String> = slots
            .iter()
            .enumerate()
            .map(|(i, (a, p))| format!("{i} : {a} . {p}"))
            .collect();
        let from = if b.sources.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = b.sources.iter().map(ToString::to_string).collect();
            format!("ip saddr {{ {} }} ", list.join(", "))
        };
        let _ = writeln!(
            s,
            "    iifname \"{leg}\" {from}ip daddr {} {proto} dport {} dnat ip to {pick} map {{ {} }}",
            b.fip,
            b.port,
            map.join(", ")
        );
    }
    let _ = writeln!(s, "  }}");
    let _ = writeln!(
        s,
        "  chain post {{ type nat hook postrouting priority srcnat; policy accept;"
    );
    if let Some(gw) = snat
        && !internal.is_empty()
    {
        let nets: Vec<String> = internal.iter().map(|n| n.to_string()).collect();
        let _ = writeln!(
            s,
            "    oifname \"{leg}\" ip saddr {{ {} }} snat ip to {gw}",
            nets.join(", ")
        );
    }
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "}}");
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_slots_follow_weights_interleaved() {
        let a: Ipv4Addr = "10.0.0.1".parse().unwrap();
        let b: Ipv4Addr = "10.0.0.2".parse().unwrap();
        let c: Ipv4Addr = "10.0.0.3".parse().unwrap();
        assert_eq!(
            slots(&[(a, 80, 2), (b, 80, 4), (c, 80, 0)]),
            vec![(a, 80), (b, 80), (b, 80)]
        );
        assert_eq!(slots(&[(a, 80, 1), (b, 81, 1)]), vec![(a, 80), (b, 81)]);
        assert!(slots(&[(a, 80, 0)]).is_empty());
        let s = render_snat_nat(
            "qg-x",
            None,
            &[],
            &[],
            &[Balanced {
                protocol: "tcp".into(),
                fip: "203.0.113.9".parse().unwrap(),
                port: 80,
                sources: vec!["198.51.100.0/24".parse().unwrap()],
                by_source: false,
                backends: vec![(a, 8080, 1), (b, 8080, 1)],
            }],
        )
        .unwrap();
        assert!(
            s.contains("ip saddr { 198.51.100.0/24 } ip daddr 203.0.113.9 tcp dport 80 dnat ip to numgen inc mod 2 map { 0 : 10.0.0.1 . 8080, 1 : 10.0.0.2 . 8080 }"),
            "{s}"
        );
    }

    #[test]
    fn floating_ips_map_both_ways() {
        let s = render_fip_nat(
            "qf-abc",
            &[("203.0.113.5".parse().unwrap(), "10.0.0.5".parse().unwrap())],
        )
        .unwrap();
        assert!(s.contains("203.0.113.5 : 10.0.0.5"), "{s}");
        assert!(s.contains("10.0.0.5 : 203.0.113.5"), "{s}");
        assert!(render_fip_nat("qf-abc", &[]).is_none());
    }

    #[test]
    fn forwards_single_same_range_and_offset_range() {
        let f = |ext, int| Forward {
            protocol: "tcp".into(),
            fip: "203.0.113.9".parse().unwrap(),
            external: ext,
            internal_ip: "10.0.0.7".parse().unwrap(),
            internal: int,
        };
        let s = render_snat_nat(
            "qg-x",
            Some("203.0.113.2".parse().unwrap()),
            &["10.0.0.0/24".parse().unwrap()],
            &[
                f((8080, 8080), (80, 80)),
                f((9000, 9001), (9000, 9001)),
                f((100, 101), (200, 201)),
            ],
            &[],
        )
        .unwrap();
        assert!(s.contains("tcp dport 8080 dnat ip to 10.0.0.7:80"), "{s}");
        assert!(
            s.contains("tcp dport 9000-9001 dnat ip to 10.0.0.7\n"),
            "{s}"
        );
        assert!(
            s.contains("100 : 10.0.0.7 . 200, 101 : 10.0.0.7 . 201"),
            "{s}"
        );
        assert!(
            s.contains("ip saddr { 10.0.0.0/24 } snat ip to 203.0.113.2"),
            "{s}"
        );
    }
}
