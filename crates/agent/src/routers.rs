//! Distributed routers as this host should hold them: for every router with an
//! interface on a network that has ports bound here, a namespace `kqr-<router>` with a
//! leg on each of the router's networks, holding the interface's own (anycast)
//! gateway MAC and addresses, permanent neighbours for every port of those networks
//! and the router's extra routes. Every host with ports on a router's subnets routes
//! their traffic itself: east-west never crosses a third host. Pure, like `desired`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use kuryr_client::HostMirror;
use kuryr_dataplane::MacAddr;
use kuryr_dataplane::nft;
use kuryr_model::{Port, Router};

use crate::desired::{NetKind, tap_name, vxlan_name};

pub const OWNER_ROUTER_INTERFACE: &str = "network:router_interface";

/// `kqr-<router id>` (with the default prefix): Neutron's `qrouter-` would let a
/// neutron-l3-agent on the same host and kuryr each take the other's namespaces for
/// their own.
pub fn router_netns(prefix: &str, router_id: &str) -> String {
    format!("{prefix}{router_id}")
}

/// `qr-<port id[:11]>`: the router end of an interface's veth.
pub fn leg_name(port_id: &str) -> String {
    format!("qr-{}", port_id.get(..11).unwrap_or(port_id))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegDesired {
    pub port_id: String,
    pub network_id: String,
    /// `tap<port[:11]>` on the network's bridge.
    pub host_name: String,
    pub bridge: String,
    /// `qr-<port[:11]>` in the router namespace.
    pub peer_name: String,
    pub mac: MacAddr,
    pub mtu: u32,
    pub addresses: Vec<IpNet>,
    pub neighbours: BTreeMap<IpAddr, MacAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterDesired {
    pub id: String,
    pub netns: String,
    pub legs: Vec<LegDesired>,
    pub routes: Vec<(IpNet, IpAddr)>,
    /// Policy rules: (priority, from, iif, table).
    pub rules: Vec<(u32, Option<IpNet>, Option<String>, u32)>,
    /// Routes of other tables: (table, destination, next hop, leg).
    pub table_routes: Vec<(u32, IpNet, Option<IpAddr>, String)>,
    /// The namespace's NAT table (`nft::render_fip_nat` / `render_snat_nat`).
    pub nat: Option<String>,
    /// Addresses announced (gratuitous ARP) from a leg when they appear there.
    pub announce: Vec<(String, IpAddr)>,
}

/// Floating IPs: the rules of their fixed IPs, after `main` (east-west stays direct).
const FIP_PRIORITY: u32 = 33000;
/// The router's own packets (ICMP errors, PMTU) to external clients.
const FIP_LO_PRIORITY: u32 = 33500;
const FIP_TABLE: u32 = 200;
/// Ports without a floating IP: to the SNAT namespace, after the floating IPs.
const SNAT_PRIORITY: u32 = 40000;
const SNAT_TABLE: u32 = 1000;

pub const OWNER_ROUTER_GATEWAY: &str = "network:router_gateway";
pub const OWNER_ROUTER_SNAT: &str = "network:router_centralized_snat";

/// A network a router leg needs on this host, with what the engine needs to make it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegNetwork {
    pub id: String,
    pub mtu: u32,
    pub kind: NetKind,
}

/// The interface ports of a router in the view.
fn interfaces<'a>(view: &'a HostMirror, r: &'a Router) -> impl Iterator<Item = &'a Port> + 'a {
    view.ports
        .values()
        .filter(move |p| p.device_owner == OWNER_ROUTER_INTERFACE && p.device_id == r.id)
}

/// What this host needs to know about itself to realize routers.
pub struct Here<'a> {
    pub host: &'a str,
    /// Networks with ports bound here.
    pub networks: &'a BTreeSet<String>,
    /// Ports bound here.
    pub ports: &'a BTreeSet<String>,
    /// Prefix of router namespace names.
    pub prefix: &'a str,
}

/// What [`compute`] finds.
#[derive(Default)]
pub struct Computed {
    pub routers: Vec<RouterDesired>,
    /// Networks the legs need here.
    pub networks: BTreeMap<String, LegNetwork>,
    /// MACs of non-anycast legs here (SNAT and external legs), by network: local
    /// destinations for the containment rules.
    pub local_macs: BTreeMap<String, Vec<MacAddr>>,
}

/// The routers this host realizes: a router namespace for every router with an
/// interface on a network with ports here (with its floating IPs of ports here), and
/// the SNAT namespace of every router whose gateway is placed here. Routers that
/// cannot be made yet (a network not in the view, a bad MAC) are left out with the
/// reason.
pub fn compute(
    view: &HostMirror,
    here: &Here<'_>,
    kind_of: impl Fn(&kuryr_model::Network) -> Result<NetKind, String>,
    waiting: &mut BTreeMap<String, String>,
) -> Computed {
    let mut out = Computed::default();
    for r in view.routers.values() {
        if !r.admin_state_up {
            continue;
        }
        let ports: Vec<&Port> = interfaces(view, r).collect();
        if ports.iter().any(|p| here.networks.contains(&p.network_id)) {
            match router_of(view, r, &ports, here, &kind_of, &mut out) {
                Ok(rd) => out.routers.push(rd),
                Err(why) => {
                    waiting.insert(format!("router {}", r.id), why);
                }
            }
        }
        let gw = r.gateway.as_ref().and_then(|g| view.ports.get(&g.port_id));
        if let Some(gw) = gw.filter(|g| g.host_id == here.host) {
            match snat_of(view, r, gw, here, &kind_of, &mut out) {
                Ok(rd) => out.routers.push(rd),
                Err(why) => {
                    waiting.insert(format!("router {} SNAT", r.id), why);
                }
            }
        }
    }
    out
}

/// One leg: port `p` as `peer` in the namespace and `host_name` on its bridge.
fn leg_of(
    view: &HostMirror,
    p: &Port,
    peer: String,
    host_name: String,
    kind_of: &impl Fn(&kuryr_model::Network) -> Result<NetKind, String>,
    out: &mut Computed,
) -> Result<(LegDesired, Vec<IpNet>), String> {
    let net = view
        .networks
        .get(&p.network_id)
        .ok_or_else(|| format!("network {} not known yet", p.network_id))?;
    let kind = kind_of(net)?;
    let mac: MacAddr = p
        .mac_address
        .parse()
        .map_err(|_| format!("bad MAC {} on port {}", p.mac_address, p.id))?;
    let mut addresses = Vec::new();
    let mut subnets = Vec::new();
    for f in &p.fixed_ips {
        let Some(s) = view.subnets.get(&f.subnet_id) else {
            return Err(format!("subnet {} not known yet", f.subnet_id));
        };
        let Ok(cidr) = s.cidr.parse::<IpNet>() else {
            return Err(format!("bad CIDR {} of subnet {}", s.cidr, s.id));
        };
        if let Ok(a) = IpNet::new(f.ip_address, cidr.prefix_len()) {
            addresses.push(a);
        }
        subnets.push(cidr);
    }
    out.networks.insert(
        net.id.clone(),
        LegNetwork {
            id: net.id.clone(),
            mtu: net.mtu,
            kind,
        },
    );
    Ok((
        LegDesired {
            port_id: p.id.clone(),
            network_id: net.id.clone(),
            host_name,
            bridge: crate::desired::bridge_name(&net.id),
            peer_name: peer,
            mac,
            mtu: net.mtu,
            addresses,
            neighbours: BTreeMap::new(),
        },
        subnets,
    ))
}

/// Every other port of the leg's network with an address on its subnets: the
/// router never asks the overlay who has an address.
fn neighbours_of(view: &HostMirror, leg: &mut LegDesired, subnets: &[IpNet]) {
    for q in view.ports.values() {
        if q.network_id != leg.network_id || q.id == leg.port_id {
            continue;
        }
        let Ok(qmac) = q.mac_address.parse::<MacAddr>() else {
            continue;
        };
        for f in &q.fixed_ips {
            if subnets.iter().any(|c| c.contains(&f.ip_address)) {
                leg.neighbours.insert(f.ip_address, qmac);
            }
        }
        for pair in &q.allowed_address_pairs {
            let (Ok(ip), Ok(pm)) = (
                pair.ip_address.parse::<IpAddr>(),
                pair.mac_address.parse::<MacAddr>(),
            ) else {
                continue;
            };
            if subnets.iter().any(|c| c.contains(&ip)) {
                leg.neighbours.entry(ip).or_insert(pm);
            }
        }
    }
}

fn prefix11(id: &str) -> &str {
    id.get(..11).unwrap_or(id)
}

/// The MAC of a router's external leg on one host: derived from both (locally
/// administered, unicast), so that it is stable across restarts and differs from
/// every other host's leg of that router.
fn external_leg_mac(router: &str, host: &str) -> MacAddr {
    use sha2::{Digest, Sha256};
    let h: [u8; 32] = Sha256::new()
        .chain_update(router.as_bytes())
        .chain_update([0])
        .chain_update(host.as_bytes())
        .finalize()
        .into();
    MacAddr([(h[0] & 0xfc) | 0x02, h[1], h[2], h[3], h[4], h[5]])
}

fn router_of(
    view: &HostMirror,
    r: &Router,
    ports: &[&Port],
    here: &Here<'_>,
    kind_of: &impl Fn(&kuryr_model::Network) -> Result<NetKind, String>,
    out: &mut Computed,
) -> Result<RouterDesired, String> {
    let mut legs = Vec::new();
    // Interface subnet → the leg that is on it.
    let mut on_subnet: Vec<(IpNet, String)> = Vec::new();
    for p in ports {
        let (mut leg, subnets) = leg_of(view, p, leg_name(&p.id), tap_name(&p.id), kind_of, out)?;
        neighbours_of(view, &mut leg, &subnets);
        on_subnet.extend(subnets.iter().map(|c| (*c, leg.peer_name.clone())));
        legs.push(leg);
    }
    let mut rd = RouterDesired {
        id: r.id.clone(),
        netns: router_netns(here.prefix, &r.id),
        legs: Vec::new(),
        routes: r
            .routes
            .iter()
            .filter_map(|rt| Some((rt.destination.parse().ok()?, rt.nexthop.parse().ok()?)))
            .collect(),
        rules: Vec::new(),
        table_routes: Vec::new(),
        nat: None,
        announce: Vec::new(),
    };
    // What leaves for the outside without a floating IP goes to the router's SNAT
    // namespace, through its address on the source subnet.
    if r.gateway.is_some() {
        let snat: Vec<&Port> = view
            .ports
            .values()
            .filter(|p| {
                p.device_owner == OWNER_ROUTER_SNAT && p.device_id == r.id && !p.host_id.is_empty()
            })
            .collect();
        let mut table = SNAT_TABLE;
        for (cidr, leg) in &on_subnet {
            let Some(hop) = snat
                .iter()
                .flat_map(|p| p.fixed_ips.iter())
                .map(|f| f.ip_address)
                .find(|ip| cidr.contains(ip))
            else {
                continue;
            };
            let any = match cidr {
                IpNet::V4(_) => "0.0.0.0/0",
                IpNet::V6(_) => "::/0",
            };
            let Ok(default) = any.parse::<IpNet>() else {
                continue;
            };
            rd.rules.push((SNAT_PRIORITY, Some(*cidr), None, table));
            rd.table_routes
                .push((table, default, Some(hop), leg.clone()));
            table += 1;
        }
    }
    // Floating IPs of ports on this host: their own external leg here.
    let mut pairs: Vec<(Ipv4Addr, Ipv4Addr)> = Vec::new();
    for f in view.floatingips.values() {
        if f.router_id.as_deref() != Some(r.id.as_str()) {
            continue;
        }
        let (Some(port), Some(IpAddr::V4(fixed)), IpAddr::V4(fip)) =
            (&f.port_id, f.fixed_ip_address, f.floating_ip_address)
        else {
            continue;
        };
        if here.ports.contains(port) {
            pairs.push((fip, fixed));
        }
    }
    pairs.sort();
    if let (false, Some(g)) = (pairs.is_empty(), &r.gateway) {
        let net = view
            .networks
            .get(&g.network_id)
            .ok_or_else(|| format!("external network {} not known yet", g.network_id))?;
        let kind = kind_of(net)?;
        out.networks.insert(
            net.id.clone(),
            LegNetwork {
                id: net.id.clone(),
                mtu: net.mtu,
                kind,
            },
        );
        let peer = format!("qf-{}", prefix11(&r.id));
        let mac = external_leg_mac(&r.id, here.host);
        out.local_macs.entry(net.id.clone()).or_default().push(mac);
        let ext_subnets: Vec<&kuryr_model::Subnet> = view
            .subnets
            .values()
            .filter(|s| s.network_id == net.id && s.ip_version == 4)
            .collect();
        for s in &ext_subnets {
            if let Ok(c) = s.cidr.parse::<IpNet>() {
                rd.table_routes.push((FIP_TABLE, c, None, peer.clone()));
            }
        }
        if let (Some(gw), Ok(default)) = (
            ext_subnets.iter().find_map(|s| s.gateway_ip),
            "0.0.0.0/0".parse::<IpNet>(),
        ) {
            rd.table_routes
                .push((FIP_TABLE, default, Some(gw), peer.clone()));
        }
        for (fip, fixed) in &pairs {
            if let Ok(from) = IpNet::new(IpAddr::V4(*fixed), 32) {
                rd.rules.push((FIP_PRIORITY, Some(from), None, FIP_TABLE));
            }
            rd.announce.push((peer.clone(), IpAddr::V4(*fip)));
        }
        rd.rules
            .push((FIP_LO_PRIORITY, None, Some("lo".into()), FIP_TABLE));
        rd.nat = nft::render_fip_nat(&peer, &pairs);
        legs.push(LegDesired {
            port_id: format!("external-{}", r.id),
            network_id: net.id.clone(),
            host_name: format!("tap{}", prefix11(&r.id)),
            bridge: crate::desired::bridge_name(&net.id),
            peer_name: peer,
            mac,
            mtu: net.mtu,
            addresses: pairs
                .iter()
                .filter_map(|(fip, _)| IpNet::new(IpAddr::V4(*fip), 32).ok())
                .collect(),
            neighbours: BTreeMap::new(),
        });
    }
    legs.sort_by(|a, b| a.port_id.cmp(&b.port_id));
    rd.legs = legs;
    rd.rules.sort();
    rd.table_routes.sort();
    Ok(rd)
}

/// The SNAT namespace of router `r`, whose gateway port `gw` is bound here: its
/// addresses on the internal subnets (`sg-`), the gateway (`qg-`) with the router's
/// external addresses and the floating IPs of its port forwardings, a default route
/// to the external subnet's gateway, and the NAT table.
fn snat_of(
    view: &HostMirror,
    r: &Router,
    gw: &Port,
    here: &Here<'_>,
    kind_of: &impl Fn(&kuryr_model::Network) -> Result<NetKind, String>,
    out: &mut Computed,
) -> Result<RouterDesired, String> {
    let mut legs = Vec::new();
    let mut internal: Vec<Ipv4Net> = Vec::new();
    for p in view
        .ports
        .values()
        .filter(|p| p.device_owner == OWNER_ROUTER_SNAT && p.device_id == r.id)
    {
        let (mut leg, subnets) = leg_of(
            view,
            p,
            format!("sg-{}", prefix11(&p.id)),
            tap_name(&p.id),
            kind_of,
            out,
        )?;
        neighbours_of(view, &mut leg, &subnets);
        out.local_macs
            .entry(leg.network_id.clone())
            .or_default()
            .push(leg.mac);
        internal.extend(subnets.iter().filter_map(|c| match c {
            IpNet::V4(v4) => Some(*v4),
            IpNet::V6(_) => None,
        }));
        legs.push(leg);
    }
    let qg = format!("qg-{}", prefix11(&gw.id));
    let (mut gleg, _) = leg_of(view, gw, qg.clone(), tap_name(&gw.id), kind_of, out)?;
    out.local_macs
        .entry(gleg.network_id.clone())
        .or_default()
        .push(gleg.mac);
    let gw_v4 = gw.fixed_ips.iter().find_map(|f| match f.ip_address {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    });
    let mut announce: Vec<(String, IpAddr)> = gw
        .fixed_ips
        .iter()
        .filter(|f| f.ip_address.is_ipv4())
        .map(|f| (qg.clone(), f.ip_address))
        .collect();
    // Port forwardings of the router's floating IPs: the floating IP lives here.
    let mut forwards: Vec<nft::Forward> = Vec::new();
    for pf in view.port_forwardings.values() {
        let Some(f) = view.floatingips.get(&pf.floatingip_id) else {
            continue;
        };
        if f.router_id.as_deref() != Some(r.id.as_str()) {
            continue;
        }
        let (IpAddr::V4(fip), IpAddr::V4(internal_ip)) =
            (f.floating_ip_address, pf.internal_ip_address)
        else {
            continue;
        };
        forwards.push(nft::Forward {
            protocol: pf.protocol.clone(),
            fip,
            external: pf.external,
            internal_ip,
            internal: pf.internal,
        });
        if let Ok(a) = IpNet::new(IpAddr::V4(fip), 32)
            && !gleg.addresses.contains(&a)
        {
            gleg.addresses.push(a);
            announce.push((qg.clone(), IpAddr::V4(fip)));
        }
    }
    // Floating IPs of load balancers' VIPs: balanced here, where they enter.
    let mut balanced: Vec<nft::Balanced> = Vec::new();
    for f in view.floatingips.values() {
        if f.router_id.as_deref() != Some(r.id.as_str()) {
            continue;
        }
        let (Some(port), IpAddr::V4(fip)) = (&f.port_id, f.floating_ip_address) else {
            continue;
        };
        if view
            .ports
            .get(port)
            .is_none_or(|p| p.device_owner != "Octavia")
        {
            continue;
        }
        balanced.extend(crate::lb::balanced_at(view, port, fip));
        if let Ok(a) = IpNet::new(IpAddr::V4(fip), 32)
            && !gleg.addresses.contains(&a)
        {
            gleg.addresses.push(a);
            announce.push((qg.clone(), IpAddr::V4(fip)));
        }
    }
    forwards.sort();
    internal.sort();
    internal.dedup();
    let ext_gateway = gw.fixed_ips.iter().find_map(|f| {
        let s = view.subnets.get(&f.subnet_id)?;
        (s.ip_version == 4).then_some(s.gateway_ip).flatten()
    });
    let mut routes = Vec::new();
    if let (Some(g), Ok(default)) = (ext_gateway, "0.0.0.0/0".parse::<IpNet>()) {
        routes.push((default, g));
    }
    let enable_snat = r.gateway.as_ref().is_some_and(|g| g.enable_snat);
    let nat = nft::render_snat_nat(
        &qg,
        gw_v4.filter(|_| enable_snat),
        &internal,
        &forwards,
        &balanced,
    );
    legs.push(gleg);
    legs.sort_by(|a, b| a.port_id.cmp(&b.port_id));
    Ok(RouterDesired {
        id: format!("snat-{}", r.id),
        netns: router_netns(here.prefix, &format!("snat-{}", r.id)),
        legs,
        routes,
        rules: Vec::new(),
        table_routes: Vec::new(),
        nat,
        announce,
    })
}

/// The anycast gateway containment rules for these routers (see
/// `kuryr_dataplane::nft::dvr`): their legs, the uplinks of their networks, and the
/// MACs that are local on each leg's bridge (`local_macs`: network → MACs of the
/// ports bound here).
pub fn dvr_rules(
    routers: &[RouterDesired],
    nets: &BTreeMap<String, LegNetwork>,
    local_macs: &BTreeMap<String, Vec<MacAddr>>,
) -> nft::Dvr {
    let mut d = nft::Dvr::default();
    let mut legs_by_net: BTreeMap<&str, Vec<&LegDesired>> = BTreeMap::new();
    // A frame from a router leg to a SNAT leg on this host is the routed half of a
    // flow on its way out, as a frame to another host is: untracked too. Tracked, a
    // flow a load balancer DNATed on this bridge would meet itself again with the
    // member as destination, clash with its own reply tuple and be dropped.
    let snat_macs: BTreeSet<MacAddr> = routers
        .iter()
        .flat_map(|r| &r.legs)
        .filter(|l| l.peer_name.starts_with("sg-"))
        .map(|l| l.mac)
        .collect();
    // Only the anycast legs: SNAT and external legs have addresses of their own
    // and resolve them as any host does.
    for r in routers {
        for l in r.legs.iter().filter(|l| l.peer_name.starts_with("qr-")) {
            legs_by_net.entry(&l.network_id).or_default().push(l);
        }
    }
    for (net, legs) in &legs_by_net {
        for l in legs {
            d.legs.push((l.host_name.clone(), l.mac));
            for m in local_macs.get(*net).into_iter().flatten() {
                if !snat_macs.contains(m) {
                    d.local.push((l.host_name.clone(), *m));
                }
            }
            for other in legs.iter().filter(|o| o.port_id != l.port_id) {
                d.local.push((l.host_name.clone(), other.mac));
            }
        }
        if let Some(n) = nets.get(*net) {
            match &n.kind {
                NetKind::Vxlan { vni } => d.uplinks.push(vxlan_name(*vni)),
                NetKind::Flat { interface } => d.uplinks.push(interface.clone()),
                NetKind::Local => {}
            }
        }
    }
    d.legs.sort();
    d.legs.dedup();
    d.local.sort();
    d.local.dedup();
    d.uplinks.sort();
    d.uplinks.dedup();
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leg(port: &str, peer: &str, mac: &str) -> LegDesired {
        LegDesired {
            port_id: port.into(),
            network_id: "net".into(),
            host_name: format!("tap{port}"),
            bridge: "brqnet".into(),
            peer_name: format!("{peer}-{port}"),
            mac: mac.parse().expect("mac"),
            mtu: 1450,
            addresses: Vec::new(),
            neighbours: BTreeMap::new(),
        }
    }

    #[test]
    fn frames_from_a_router_leg_to_its_snat_leg_are_transit() {
        let qr = leg("a", "qr", "fa:16:3e:00:00:01");
        let sg = leg("b", "sg", "fa:16:3e:00:00:02");
        let routers = vec![RouterDesired {
            id: "r".into(),
            netns: "qrouter-r".into(),
            legs: vec![qr.clone(), sg.clone()],
            routes: Vec::new(),
            rules: Vec::new(),
            table_routes: Vec::new(),
            nat: None,
            announce: Vec::new(),
        }];
        let port_mac: MacAddr = "fa:16:3e:00:00:03".parse().expect("mac");
        let local = BTreeMap::from([("net".to_string(), vec![port_mac, sg.mac])]);
        let d = dvr_rules(&routers, &BTreeMap::new(), &local);
        assert_eq!(d.legs, vec![(qr.host_name.clone(), qr.mac)]);
        assert!(
            d.local.contains(&(qr.host_name.clone(), port_mac)),
            "a port: local"
        );
        assert!(
            !d.local.contains(&(qr.host_name.clone(), sg.mac)),
            "the SNAT leg: not local, so untracked like a frame to another host"
        );
    }
}
