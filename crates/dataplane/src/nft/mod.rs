//! Neutron security groups, and host ports published to containers, on nftables.
//!
//! - `model`: [`compile`] resolves the desired state of one host ([`Ruleset`]) into
//!   what the kernel will hold ([`Compiled`]).
//! - `elements`: [`element_changes`] gives the change between two states as set and
//!   map element updates when that is all it is (ports and members coming and going),
//!   for [`crate::nfnl::Elements`] to send in-process as one atomic netlink batch.
//! - `render`: [`render`] is one nft script that atomically replaces kuryr's two
//!   tables; [`diff`] the smallest script from one state to the next (new chains,
//!   rule changes, group sets, published ports).
//! - `process`: [`Nft`] runs scripts (`nft -f -`, text: measured faster than
//!   `nft -j -f -`, see the `bench_text_vs_json` test).
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
//!   set ips4/ips6   ifname . addr (hash)          tap . fixed IP / EUI-64 link-local
//!   set nets4/nets6 ifname . addr (intervals)     tap . allowed-address-pair CIDR
//!   chain prerouting (hook prerouting)            iifname @secured jump spoof
//!   chain spoof     MAC / ARP sender / IPv4 / IPv6 source checks against the sets
//!                   (DHCP discover from 0.0.0.0 and DAD/RS/MLD from :: allowed), no
//!                   DHCP server replies (udp sport 67/547) or RAs from the port
//! table inet kuryr
//!   map zones       iifname : ct zone             "brqA" : 1
//!   set g4_<sg>, g6_<sg>                          remote-group members (interval sets)
//!   map egress4/6   ifname . addr : verdict       bridge . source : jump out_<rules>
//!   map ingress4/6  ifname . addr : verdict       bridge . dest   : jump in_<rules>
//!   map egress4/6_nets, ingress4/6_nets           the same for pair CIDRs (intervals)
//!   set bridged     ifname . ifname               "brqA" . "brqA": in and out the same bridge
//!   set notrack4/6  ifname . addr (hash)          bridge . address of ports in stateless groups
//!   set notrack4/6_nets  (intervals)              their pair CIDRs
//!   chain zone      (prerouting, raw)             notrack what comes from or goes to
//!                                                 @notrack4/6, else ct zone set iifname map @zones
//!   chain forward   (forward, filter)             in or out of brq* only: established/related
//!                   accept, invalid drop, routed (not in @bridged) and not DNAT'd drop,
//!                   ICMPv6 ND/MLD accept, egress vmaps, ingress vmaps
//!   chain out_<rules>  DHCP client implicit, each rule `return`, then drop
//!   chain in_<rules>   DHCP replies implicit, each rule `accept`, then drop
//!                      (one chain per distinct rule list on the host, shared by the
//!                      ports with those rules; named by its digest)
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
//! Port chains are `in_<digest>`, `out_<digest>`: the first 128 bits of the SHA-256
//! of the chain's rules, in hex (see [`chains_of`]), so ports with the same rules
//! share them and a restarted agent finds the same names. Sets are `g4_<sg id>` /
//! `g6_<sg id>` with full ids; published ports use the fixed names `bridged`,
//! `pub_*`, which cannot clash with those. Characters other than ASCII letters, digits and `-` are
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
//! - Single addresses and ranges are kept apart (hash sets and maps beside interval
//!   ones) because the kernel's interval sets of concatenations cost an update time
//!   that grows with their size: measured on 6.18, adding one port's elements took
//!   23.6 ms at 1,000 ports with everything in interval sets (9.9 ms for `ips6`
//!   alone), 1.2 ms with the addresses hashed (0.12 ms at 10 ports).
//! - [`diff`] assumes the kernel holds exactly `old` (as applied by [`render`] or an
//!   earlier diff); if an apply fails, re-apply [`render`] of the desired state.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::MacAddr;

mod dvr;
mod elements;
mod incremental;
pub mod lb;
mod model;
mod nat;
mod process;
mod render;

pub use dvr::{DVR_TABLE, Dvr, render_dvr};
pub use elements::element_changes;
pub use model::{Compiled, chains_of, compile};
pub use nat::{Balanced, Forward, NAT_TABLE, render_fip_nat, render_snat_nat};
pub use process::{Nft, NftError};
pub use render::{diff, diff_compiled, render};

/// Name of both kuryr tables (`bridge kuryr` and `inet kuryr`).
pub const TABLE: &str = "kuryr";

/// The desired security-group state of one host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ruleset {
    pub networks: Vec<NetworkZone>,
    /// Sorted by id. Shared: a port whose filter did not change between two rulesets
    /// is the same allocation in both, which is how [`Compiled::update`] finds the
    /// few that changed among thousands without comparing them.
    pub ports: Vec<Arc<PortFilter>>,
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

/// `g4_<sg>` / `g6_<sg>`: remote-group member set (inet table).
pub fn group_set(sg_id: &str, ethertype: EtherType) -> String {
    match ethertype {
        EtherType::V4 => format!("g4_{}", name_part(sg_id)),
        EtherType::V6 => format!("g6_{}", name_part(sg_id)),
    }
}
