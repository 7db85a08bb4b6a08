//! Distributed routers as this host should hold them: for every router with an
//! interface on a network that has ports bound here, a namespace `kqr-<router>` with a
//! leg on each of the router's networks, holding the interface's own (anycast)
//! gateway MAC and addresses, permanent neighbours for every port of those networks
//! and the router's extra routes. Every host with ports on a router's subnets routes
//! their traffic itself: east-west never crosses a third host. Pure, like `desired`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
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
}

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

/// The routers this host realizes (`local_networks`: networks with ports bound here),
/// and the networks their legs need. Routers whose legs cannot be made yet (a
/// network not in the view, a bad MAC) are left out with the reason.
pub fn compute(
    view: &HostMirror,
    local_networks: &BTreeSet<String>,
    prefix: &str,
    kind_of: impl Fn(&kuryr_model::Network) -> Result<NetKind, String>,
    waiting: &mut BTreeMap<String, String>,
) -> (Vec<RouterDesired>, BTreeMap<String, LegNetwork>) {
    let mut routers = Vec::new();
    let mut nets = BTreeMap::new();
    for r in view.routers.values() {
        if !r.admin_state_up {
            continue;
        }
        let ports: Vec<&Port> = interfaces(view, r).collect();
        if !ports.iter().any(|p| local_networks.contains(&p.network_id)) {
            continue;
        }
        match router_of(view, r, &ports, prefix, &kind_of) {
            Ok((rd, legs)) => {
                routers.push(rd);
                nets.extend(legs.into_iter().map(|n| (n.id.clone(), n)));
            }
            Err(why) => {
                waiting.insert(format!("router {}", r.id), why);
            }
        }
    }
    (routers, nets)
}

fn router_of(
    view: &HostMirror,
    r: &Router,
    ports: &[&Port],
    prefix: &str,
    kind_of: &impl Fn(&kuryr_model::Network) -> Result<NetKind, String>,
) -> Result<(RouterDesired, Vec<LegNetwork>), String> {
    let mut legs = Vec::new();
    let mut nets = Vec::new();
    for p in ports {
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
        // Every other port of the network with an address on the leg's subnets: the
        // router never asks the overlay who has an address.
        let mut neighbours = BTreeMap::new();
        for q in view.ports.values() {
            if q.network_id != p.network_id || q.id == p.id {
                continue;
            }
            let Ok(qmac) = q.mac_address.parse::<MacAddr>() else {
                continue;
            };
            for f in &q.fixed_ips {
                if subnets.iter().any(|c| c.contains(&f.ip_address)) {
                    neighbours.insert(f.ip_address, qmac);
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
                    neighbours.entry(ip).or_insert(pm);
                }
            }
        }
        legs.push(LegDesired {
            port_id: p.id.clone(),
            network_id: net.id.clone(),
            host_name: tap_name(&p.id),
            bridge: crate::desired::bridge_name(&net.id),
            peer_name: leg_name(&p.id),
            mac,
            mtu: net.mtu,
            addresses,
            neighbours,
        });
        nets.push(LegNetwork {
            id: net.id.clone(),
            mtu: net.mtu,
            kind,
        });
    }
    legs.sort_by(|a, b| a.port_id.cmp(&b.port_id));
    let routes = r
        .routes
        .iter()
        .filter_map(|rt| Some((rt.destination.parse().ok()?, rt.nexthop.parse().ok()?)))
        .collect();
    Ok((
        RouterDesired {
            id: r.id.clone(),
            netns: router_netns(prefix, &r.id),
            legs,
            routes,
        },
        nets,
    ))
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
    for r in routers {
        for l in &r.legs {
            legs_by_net.entry(&l.network_id).or_default().push(l);
        }
    }
    for (net, legs) in &legs_by_net {
        for l in legs {
            d.legs.push((l.host_name.clone(), l.mac));
            for m in local_macs.get(*net).into_iter().flatten() {
                d.local.push((l.host_name.clone(), *m));
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
