//! Containment of distributed routers' anycast gateways (`table bridge kuryr_dvr`).
//!
//! Every host with ports on a router's subnet holds the router's interface with the
//! same IP and MAC (the port's, as the API shows it), so that traffic is routed on
//! the host it starts from. The MAC must then never be looked for across the overlay:
//!
//! - each leg's host end holds a sticky FDB entry for its MAC (set by the router
//!   code): the bridge never learns it elsewhere, whatever arrives from the overlay;
//! - frames *to* a gateway MAC never leave for an uplink (vxlan device or flat
//!   interface), and frames arriving from an uplink *to* one are dropped;
//! - a router leg sends nothing but unicast IP into the overlay: no ARP, no multicast
//!   or broadcast, no neighbour discovery, router advertisements or redirects (the
//!   routers hold permanent neighbours; containers' ARP for their gateway is answered
//!   by the local leg, and the vxlan device's `proxy` answers the rest from its table);
//! - a frame from a router leg to a MAC that is not local on its bridge is the
//!   routed half of a cross-host flow: it is marked ([`TRANSIT_MARK`]) so that the
//!   zone chain of `inet kuryr` does not track it ([`NOTRACK_TRANSIT`]). Its replies
//!   are routed on the other host and never pass here; tracked, its second packet
//!   would be INVALID and dropped.
//!
//! ```text
//! table bridge kuryr_dvr
//!   set legs     ifname                 host ends of router legs
//!   set uplinks  ifname                 vxlan devices / flat interfaces of routed networks
//!   set gw_macs  ether_addr             gateway (leg) MACs
//!   set local    ifname . ether_addr    leg . MAC of a port (or another leg) on its bridge
//!   chain dvr_pre (prerouting, -250)       from an uplink to a gateway MAC: drop;
//!                                       from a leg to a non-local MAC: mark transit
//!   chain dvr_fwd (forward, -200)         to an uplink: never to a gateway MAC; from a
//!                                       leg: unicast IPv4/IPv6 only, no ND/RA/redirect
//! ```
//!
//! The table is small and changes only when routers, legs or local ports on routed
//! networks do: it is replaced whole, atomically.

use std::fmt::Write as _;

use crate::MacAddr;

pub const DVR_TABLE: &str = "kuryr_dvr";

/// The packet mark bit of routed frames leaving for another host.
pub const TRANSIT_MARK: u32 = 0x0010_0000;

/// The rule of `inet kuryr`'s zone chain that leaves those frames untracked (and
/// clears the bit, which must not follow the packet anywhere else).
pub const NOTRACK_TRANSIT: &str =
    "meta mark & 0x00100000 == 0x00100000 meta mark set meta mark & 0xffefffff notrack accept";

/// What the table holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dvr {
    /// Leg host end and its (gateway) MAC.
    pub legs: Vec<(String, MacAddr)>,
    /// Leg host end and a MAC local on its bridge.
    pub local: Vec<(String, MacAddr)>,
    pub uplinks: Vec<String>,
}

fn valid_ifname(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 15
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
}

/// The script that replaces the table (or removes it, when there are no legs).
pub fn render_dvr(d: &Dvr) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "add table bridge {DVR_TABLE}");
    let _ = writeln!(s, "delete table bridge {DVR_TABLE}");
    let legs: Vec<&(String, MacAddr)> = d.legs.iter().filter(|(n, _)| valid_ifname(n)).collect();
    if legs.is_empty() {
        return s;
    }
    let list = |items: Vec<String>| items.join(", ");
    let _ = writeln!(s, "table bridge {DVR_TABLE} {{");
    let _ = writeln!(s, "  set legs {{ type ifname;");
    let _ = writeln!(
        s,
        "    elements = {{ {} }} }}",
        list(legs.iter().map(|(n, _)| format!("\"{n}\"")).collect())
    );
    let _ = writeln!(s, "  set gw_macs {{ type ether_addr;");
    let mut macs: Vec<String> = legs.iter().map(|(_, m)| m.to_string()).collect();
    macs.sort();
    macs.dedup();
    let _ = writeln!(s, "    elements = {{ {} }} }}", list(macs));
    let uplinks: Vec<String> = d
        .uplinks
        .iter()
        .filter(|n| valid_ifname(n))
        .map(|n| format!("\"{n}\""))
        .collect();
    let _ = writeln!(s, "  set uplinks {{ type ifname;");
    if !uplinks.is_empty() {
        let _ = writeln!(s, "    elements = {{ {} }}", list(uplinks));
    }
    let _ = writeln!(s, "  }}");
    let local: Vec<String> = d
        .local
        .iter()
        .filter(|(n, _)| valid_ifname(n))
        .map(|(n, m)| format!("\"{n}\" . {m}"))
        .collect();
    let _ = writeln!(s, "  set local {{ type ifname . ether_addr;");
    if !local.is_empty() {
        let _ = writeln!(s, "    elements = {{ {} }}", list(local));
    }
    let _ = writeln!(s, "  }}");
    let _ = writeln!(
        s,
        "  chain dvr_pre {{ type filter hook prerouting priority -250; policy accept;"
    );
    let _ = writeln!(s, "    iifname @uplinks ether daddr @gw_macs drop");
    let _ = writeln!(
        s,
        "    iifname @legs iifname . ether daddr != @local meta mark set meta mark | {TRANSIT_MARK:#010x}"
    );
    let _ = writeln!(s, "  }}");
    let _ = writeln!(
        s,
        "  chain dvr_fwd {{ type filter hook forward priority -200; policy accept;"
    );
    let _ = writeln!(s, "    oifname != @uplinks return");
    let _ = writeln!(s, "    ether daddr @gw_macs drop");
    let _ = writeln!(s, "    iifname != @legs return");
    let _ = writeln!(s, "    ether type != {{ ip, ip6 }} drop");
    let _ = writeln!(
        s,
        "    ether daddr & 01:00:00:00:00:00 == 01:00:00:00:00:00 drop"
    );
    let _ = writeln!(
        s,
        "    icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert, nd-redirect }} drop"
    );
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "}}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(s: &str) -> MacAddr {
        s.parse().expect("mac")
    }

    #[test]
    fn no_legs_no_table() {
        let s = render_dvr(&Dvr::default());
        assert!(s.ends_with("delete table bridge kuryr_dvr\n"), "{s}");
        assert!(!s.contains("chain"));
    }

    #[test]
    fn legs_local_macs_and_uplinks_are_listed() {
        let d = Dvr {
            legs: vec![("tapaaaaaaaaaaa".into(), mac("fa:16:3e:00:00:01"))],
            local: vec![("tapaaaaaaaaaaa".into(), mac("fa:16:3e:00:00:02"))],
            uplinks: vec!["vxlan-101".into()],
        };
        let s = render_dvr(&d);
        assert!(s.contains("\"tapaaaaaaaaaaa\" . fa:16:3e:00:00:02"), "{s}");
        assert!(s.contains("elements = { \"vxlan-101\" }"), "{s}");
        assert!(s.contains("meta mark | 0x00100000"), "{s}");
    }
}
