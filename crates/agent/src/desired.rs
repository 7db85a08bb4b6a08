//! What the kernel of this host should look like, computed from the host's view of
//! the server and the local bindings. Pure: no I/O, so every rule of the mapping is
//! unit-tested here and the engine only compares and applies.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ipnet::IpNet;
use kuryr_client::HostMirror;
use kuryr_dataplane::MacAddr;
use kuryr_dataplane::netlink::RouteSpec;
use kuryr_dataplane::nft;
use kuryr_model::{Port, SecurityGroupRule, Subnet};

use crate::state::{Binding, LocalState, PublishedPort};

/// `brq<network-id[:11]>`, as Neutron's Linux bridge agent names it.
pub fn bridge_name(network_id: &str) -> String {
    format!("brq{}", prefix11(network_id))
}

/// `tap<port-id[:11]>`: the host end of a port's veth.
pub fn tap_name(port_id: &str) -> String {
    format!("tap{}", prefix11(port_id))
}

/// `vxlan-<vni>`, as Neutron's Linux bridge agent names it.
pub fn vxlan_name(vni: u32) -> String {
    format!("vxlan-{vni}")
}

fn prefix11(id: &str) -> &str {
    id.get(..11).unwrap_or(id)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetKind {
    Vxlan {
        vni: u32,
    },
    /// Bridged onto a host interface (`--physical-interface-mappings`).
    Flat {
        interface: String,
    },
    /// A bridge on this host only.
    Local,
}

/// What other hosts' ports look like from here: static FDB and neighbour entries on
/// the vxlan device, and flood entries only toward hosts with ports on the network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteL2 {
    pub fdb: BTreeSet<(MacAddr, IpAddr)>,
    pub flood: BTreeSet<IpAddr>,
    pub neighbours: BTreeMap<IpAddr, MacAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetDesired {
    pub id: String,
    pub bridge: String,
    pub mtu: u32,
    pub kind: NetKind,
    pub remote: RemoteL2,
    /// Addresses the bridge holds: the gateway address of each subnet with one
    /// (with the subnet's prefix), while ports of the network bound here have
    /// published host ports (the forwarded traffic is routed onto the bridge, and
    /// the containers' replies go to their gateway); none otherwise.
    pub gateways: Vec<IpNet>,
    /// The gateway addresses of all the network's subnets: found on the bridge and
    /// not wanted, they are removed (as are addresses marked as kuryr's).
    pub subnet_gateways: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortDesired {
    pub id: String,
    pub network_id: String,
    pub bridge: String,
    pub tap: String,
    pub netns: PathBuf,
    pub ifname: String,
    /// The container end is made here and handed over (Docker); never touched after.
    pub handoff: bool,
    pub mac: MacAddr,
    pub mtu: u32,
    pub addresses: Vec<IpNet>,
    pub routes: Vec<RouteSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub networks: BTreeMap<String, NetDesired>,
    /// Shared with the [`Memo`]: the same allocation while the port is unchanged.
    pub ports: BTreeMap<String, Arc<PortDesired>>,
    pub ruleset: nft::Ruleset,
    /// Bound ports that cannot be realized yet, with the reason (logged, retried on
    /// the next change).
    pub waiting: BTreeMap<String, String>,
    /// How many bound ports this computation derived anew (the others came from
    /// the [`Memo`]).
    pub derived: usize,
    /// Router namespaces (see `crate::routers`).
    pub routers: Vec<crate::routers::RouterDesired>,
    /// The anycast gateway containment rules of those routers.
    pub dvr: nft::Dvr,
    /// Load balancers (see `crate::lb`).
    pub lb: crate::lb::LbDesired,
}

pub struct Inputs<'a> {
    pub host: &'a str,
    pub view: &'a HostMirror,
    pub state: &'a mut LocalState,
    /// What earlier passes derived (see [`Memo`]).
    pub memo: &'a mut Memo,
    /// physical network → host interface.
    pub interface_mappings: &'a BTreeMap<String, String>,
    /// Names of router namespaces: this prefix and the router id.
    pub router_prefix: &'a str,
}

/// Neutron protocol names (and numbers given as strings) → IP protocol number.
/// `icmp` in an IPv6 rule means ICMPv6, as Neutron treats it.
pub fn protocol_number(protocol: &str, v6: bool) -> Option<u8> {
    let n = match protocol.to_ascii_lowercase().as_str() {
        "icmp" if v6 => 58,
        "icmp" => 1,
        "ip" | "hopopt" => 0,
        "igmp" => 2,
        "ipip" => 4,
        "tcp" => 6,
        "egp" => 8,
        "udp" => 17,
        "dccp" => 33,
        "ipv6-encap" => 41,
        "ipv6-route" => 43,
        "ipv6-frag" => 44,
        "rsvp" => 46,
        "gre" => 47,
        "esp" => 50,
        "ah" => 51,
        "icmpv6" | "ipv6-icmp" => 58,
        "ipv6-nonxt" => 59,
        "ipv6-opts" => 60,
        "ospf" => 89,
        "encap" => 98,
        "pgm" => 113,
        "vrrp" => 112,
        "sctp" => 132,
        "udplite" => 136,
        other => return other.parse().ok(),
    };
    Some(n)
}

fn rule_of(r: &SecurityGroupRule) -> Option<nft::Rule> {
    let v6 = r.ethertype == "IPv6";
    let protocol = match r.protocol.as_deref() {
        None | Some("any") | Some("") => None,
        Some(p) => Some(protocol_number(p, v6)?),
    };
    let remote = if let Some(g) = &r.remote_group_id {
        nft::Remote::Group(g.clone())
    } else if let Some(p) = &r.remote_ip_prefix {
        nft::Remote::Prefix(p.parse::<IpNet>().ok()?.trunc())
    } else {
        nft::Remote::Any
    };
    let port = |p: Option<u32>| p.and_then(|v| u16::try_from(v).ok());
    Some(nft::Rule {
        direction: if r.direction == "egress" {
            nft::Direction::Egress
        } else {
            nft::Direction::Ingress
        },
        ethertype: if v6 {
            nft::EtherType::V6
        } else {
            nft::EtherType::V4
        },
        protocol,
        port_range_min: port(r.port_range_min),
        port_range_max: port(r.port_range_max),
        remote,
    })
}

/// An address pair's address or CIDR, if it parses.
fn pair_net(a: &kuryr_model::AddressPair) -> Option<IpNet> {
    a.ip_address
        .parse::<IpNet>()
        .or_else(|_| a.ip_address.parse::<IpAddr>().map(IpNet::from))
        .ok()
}

/// The address pairs of a port, as nft and the neighbour table want them.
fn address_pairs(p: &Port) -> Vec<nft::AddressPair> {
    p.allowed_address_pairs
        .iter()
        .filter_map(|a| {
            let ip = pair_net(a)?;
            Some(nft::AddressPair {
                ip,
                mac: a.mac_address.parse().ok(),
            })
        })
        .collect()
}

fn subnet_addresses(p: &Port, subnets: &BTreeMap<&str, &Subnet>) -> Result<Vec<IpNet>, String> {
    let mut out = Vec::new();
    for ip in &p.fixed_ips {
        let s = subnets
            .get(ip.subnet_id.as_str())
            .ok_or_else(|| format!("subnet {} not known yet", ip.subnet_id))?;
        let cidr: IpNet = s
            .cidr
            .parse()
            .map_err(|_| format!("subnet {} has an invalid cidr {}", s.id, s.cidr))?;
        let net = IpNet::new(ip.ip_address, cidr.prefix_len())
            .map_err(|_| format!("address {} does not fit {}", ip.ip_address, s.cidr))?;
        out.push(net);
    }
    Ok(out)
}

/// Default routes via each family's first gateway, then the subnets' host routes.
fn routes_for(p: &Port, subnets: &BTreeMap<&str, &Subnet>) -> Vec<RouteSpec> {
    let mut routes = Vec::new();
    let mut have_default = (false, false);
    for ip in &p.fixed_ips {
        let Some(s) = subnets.get(ip.subnet_id.as_str()) else {
            continue;
        };
        if let Some(gw) = s.gateway_ip {
            let slot = if gw.is_ipv4() {
                &mut have_default.0
            } else {
                &mut have_default.1
            };
            if !*slot {
                *slot = true;
                let dest = if gw.is_ipv4() {
                    "0.0.0.0/0".parse()
                } else {
                    "::/0".parse()
                };
                if let Ok(dest) = dest {
                    routes.push(RouteSpec {
                        dest,
                        gateway: Some(gw),
                    });
                }
            }
        }
        for hr in &s.host_routes {
            if let (Ok(dest), Ok(gw)) = (
                hr.destination.parse::<IpNet>(),
                hr.nexthop.parse::<IpAddr>(),
            ) {
                let r = RouteSpec {
                    dest: dest.trunc(),
                    gateway: Some(gw),
                };
                if !routes.contains(&r) {
                    routes.push(r);
                }
            }
        }
    }
    routes
}

/// The gateway address (with the subnet's prefix) of each subnet of the network
/// that has one, sorted.
fn gateways_of(network_id: &str, view: &HostMirror) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = view
        .subnets
        .values()
        .filter(|s| s.network_id == network_id)
        .filter_map(|s| {
            let prefix = s.cidr.parse::<IpNet>().ok()?.prefix_len();
            IpNet::new(s.gateway_ip?, prefix).ok()
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// A published host port of a port with addresses `ips` on `bridge`, checked: a
/// protocol nft can forward, and a container address that is the port's own.
fn published_of(
    pp: &PublishedPort,
    ips: &[IpAddr],
    bridge: &str,
) -> Result<nft::Published, String> {
    let protocol = match pp.protocol.to_ascii_lowercase().as_str() {
        "tcp" => 6,
        "udp" => 17,
        "sctp" => 132,
        other => return Err(format!("protocol {other:?} cannot be published")),
    };
    if !ips.contains(&pp.container_ip) {
        return Err(format!("{} is not an address of the port", pp.container_ip));
    }
    Ok(nft::Published {
        bridge: bridge.to_string(),
        protocol,
        host_ip: pp.host_ip,
        host_port: pp.host_port,
        container_ip: pp.container_ip,
        container_port: pp.container_port,
    })
}

/// What [`compute`] derived from one bound port, kept between passes and derived
/// again only when the port (its revision), its binding or the rest of the view
/// (the mirror's epoch) changed: a pass then costs little per unchanged port, and
/// an unchanged port is the same allocation from pass to pass (which the engine
/// and the nft model use to find what changed without comparing).
#[derive(Debug, Default)]
pub struct Memo {
    ports: HashMap<String, Derived>,
}

#[derive(Debug)]
struct Derived {
    revision: u64,
    epoch: u64,
    binding: Binding,
    local: Result<Local, String>,
}

#[derive(Debug)]
struct Local {
    kind: NetKind,
    /// The remote groups its rules name.
    groups: Vec<String>,
    desired: Arc<PortDesired>,
    filter: Arc<nft::PortFilter>,
}

/// How a network is carried on this host; `Err` says why it cannot be.
pub fn net_kind(
    net: &kuryr_model::Network,
    interface_mappings: &BTreeMap<String, String>,
) -> Result<NetKind, String> {
    Ok(match net.network_type.as_str() {
        "vxlan" => match net.segmentation_id {
            Some(vni) => NetKind::Vxlan { vni },
            None => return Err("vxlan network without a VNI".into()),
        },
        "flat" => {
            let physnet = net.physical_network.clone().unwrap_or_default();
            match interface_mappings.get(&physnet) {
                Some(i) => NetKind::Flat {
                    interface: i.clone(),
                },
                None => {
                    return Err(format!(
                        "no interface mapped to physical network {physnet:?}"
                    ));
                }
            }
        }
        "local" => NetKind::Local,
        other => return Err(format!("network type {other} not supported")),
    })
}

/// A bound port's interface and filter, from the port, its network, subnets and
/// groups; `Err` says why it cannot be realized yet.
fn derive(
    p: &Port,
    b: &Binding,
    view: &HostMirror,
    interface_mappings: &BTreeMap<String, String>,
) -> Result<Local, String> {
    let net = view
        .networks
        .get(&p.network_id)
        .ok_or("network not known yet")?;
    let kind = net_kind(net, interface_mappings)?;
    let mac: MacAddr = p
        .mac_address
        .parse()
        .map_err(|_| format!("bad MAC {}", p.mac_address))?;
    let subnets: BTreeMap<&str, &Subnet> =
        view.subnets.values().map(|s| (s.id.as_str(), s)).collect();
    let addresses = subnet_addresses(p, &subnets)?;
    let bridge = bridge_name(&net.id);
    let tap = tap_name(&p.id);
    let ips: Vec<IpAddr> = p.fixed_ips.iter().map(|f| f.ip_address).collect();
    let port_security = p.port_security_enabled;
    // Neutron refuses ports mixing stateful and stateless groups; a group not in
    // the view yet counts as stateful (the default).
    let stateless = port_security
        && !p.security_groups.is_empty()
        && p.security_groups
            .iter()
            .all(|g| view.security_groups.get(g).is_some_and(|g| !g.stateful));
    let mut rules = Vec::new();
    if port_security {
        let mut rule_list: Vec<&SecurityGroupRule> = view
            .security_group_rules
            .values()
            .filter(|r| p.security_groups.contains(&r.security_group_id))
            .collect();
        rule_list.sort_by(|a, b| a.id.cmp(&b.id));
        rules = rule_list.into_iter().filter_map(rule_of).collect();
    }
    let filter = nft::PortFilter {
        id: p.id.clone(),
        tap: tap.clone(),
        bridge: bridge.clone(),
        mac,
        ips,
        allowed_address_pairs: address_pairs(p),
        port_security,
        stateless,
        rules,
    };
    let desired = PortDesired {
        id: p.id.clone(),
        network_id: net.id.clone(),
        bridge,
        tap,
        netns: b.netns.clone(),
        ifname: b.ifname.clone(),
        handoff: b.handoff,
        mac,
        mtu: net.mtu,
        addresses,
        routes: routes_for(p, &subnets),
    };
    let mut groups: Vec<String> = filter
        .rules
        .iter()
        .filter_map(|r| match &r.remote {
            nft::Remote::Group(g) => Some(g.clone()),
            _ => None,
        })
        .collect();
    groups.sort();
    groups.dedup();
    Ok(Local {
        kind,
        groups,
        desired: Arc::new(desired),
        filter: Arc::new(filter),
    })
}

/// Equal bindings; paths compared as bytes (`Path`'s own equality walks their
/// components, which costs more than everything else a pass does per port).
fn same_binding(a: &Binding, b: &Binding) -> bool {
    a.netns.as_os_str() == b.netns.as_os_str()
        && a.ifname == b.ifname
        && a.handoff == b.handoff
        && a.published == b.published
}

pub fn compute(inp: Inputs<'_>) -> Desired {
    let view = inp.view;
    let mut d = Desired::default();
    let epoch = view.epoch();

    // Local ports: bound here by us, and the server agrees they are on this host.
    // (Taken out for the loop, which needs the state for zones; put back below.)
    let bindings = std::mem::take(&mut inp.state.bindings);
    // Networks with published host ports here.
    let mut publishing = BTreeSet::new();
    for (port_id, b) in &bindings {
        let Some(p) = view.ports.get(port_id) else {
            d.waiting
                .insert(port_id.clone(), "port not in this host's view yet".into());
            continue;
        };
        if p.host_id != inp.host {
            d.waiting.insert(
                port_id.clone(),
                format!("port is bound to host {:?} on the server", p.host_id),
            );
            continue;
        }
        let fresh = inp.memo.ports.get(port_id).is_some_and(|m| {
            m.revision == p.revision_number && m.epoch == epoch && same_binding(&m.binding, b)
        });
        if !fresh {
            d.derived += 1;
            inp.memo.ports.insert(
                port_id.clone(),
                Derived {
                    revision: p.revision_number,
                    epoch,
                    binding: b.clone(),
                    local: derive(p, b, view, inp.interface_mappings),
                },
            );
        }
        let Some(derived) = inp.memo.ports.get(port_id) else {
            continue;
        };
        let local = match &derived.local {
            Ok(l) => l,
            Err(why) => {
                d.waiting.insert(port_id.clone(), why.clone());
                continue;
            }
        };
        let net_id = &local.desired.network_id;
        let bridge = &local.desired.bridge;
        if !d.networks.contains_key(net_id) {
            let zone = match inp.state.zone_for(net_id) {
                Ok(z) => z,
                Err(e) => {
                    d.waiting.insert(port_id.clone(), e.to_string());
                    continue;
                }
            };
            d.networks.insert(
                net_id.clone(),
                NetDesired {
                    id: net_id.clone(),
                    bridge: bridge.clone(),
                    mtu: local.desired.mtu,
                    kind: local.kind.clone(),
                    remote: RemoteL2::default(),
                    gateways: Vec::new(),
                    subnet_gateways: gateways_of(net_id, view),
                },
            );
            d.ruleset.networks.push(nft::NetworkZone {
                bridge: bridge.clone(),
                zone,
            });
        }
        let stateless = local.filter.stateless;
        d.ruleset.ports.push(local.filter.clone());
        for pp in &b.published {
            if stateless {
                tracing::warn!(port = %p.id, mapping = ?pp,
                    "the port's security groups are stateless and published ports need \
                     connection tracking; not published");
                continue;
            }
            match published_of(pp, &local.filter.ips, bridge) {
                Ok(x) => {
                    publishing.insert(net_id.clone());
                    d.ruleset.published.push(x);
                }
                Err(why) => tracing::warn!(port = %p.id, mapping = ?pp, "{why}; not published"),
            }
        }
        d.ports.insert(p.id.clone(), local.desired.clone());
    }
    // Entries of ports no longer bound (only when there can be some: a walk of
    // every entry per pass is what the memo saves).
    if inp.memo.ports.len() > bindings.len() {
        inp.memo.ports.retain(|id, _| bindings.contains_key(id));
    }
    inp.state.bindings = bindings;
    for id in &publishing {
        if let Some(n) = d.networks.get_mut(id) {
            n.gateways = n.subnet_gateways.clone();
            if n.gateways.is_empty() {
                tracing::warn!(network = %id,
                    "published ports on a network whose subnets have no gateway: replies cannot return");
            }
        }
    }
    d.ruleset.published.sort();
    // Zones of networks no longer here are released.
    let here: BTreeSet<String> = d.networks.keys().cloned().collect();
    inp.state.zones.retain(|n, _| here.contains(n));

    // Routers with a leg on a network here or their SNAT namespace here, and the
    // networks their legs need.
    if !view.routers.is_empty() {
        let local_nets: BTreeSet<String> = d.networks.keys().cloned().collect();
        let local_ports: BTreeSet<String> = d.ports.keys().cloned().collect();
        let here = crate::routers::Here {
            host: inp.host,
            networks: &local_nets,
            ports: &local_ports,
            prefix: inp.router_prefix,
        };
        let computed = crate::routers::compute(
            view,
            &here,
            |n| net_kind(n, inp.interface_mappings),
            &mut d.waiting,
        );
        for n in computed.networks.values() {
            if d.networks.contains_key(&n.id) {
                continue;
            }
            let zone = match inp.state.zone_for(&n.id) {
                Ok(z) => z,
                Err(e) => {
                    d.waiting.insert(format!("network {}", n.id), e.to_string());
                    continue;
                }
            };
            let bridge = bridge_name(&n.id);
            d.networks.insert(
                n.id.clone(),
                NetDesired {
                    id: n.id.clone(),
                    bridge: bridge.clone(),
                    mtu: n.mtu,
                    kind: n.kind.clone(),
                    remote: RemoteL2::default(),
                    gateways: Vec::new(),
                    subnet_gateways: gateways_of(&n.id, view),
                },
            );
            d.ruleset.networks.push(nft::NetworkZone { bridge, zone });
        }
        let mut local_macs = computed.local_macs.clone();
        for p in d.ports.values() {
            local_macs
                .entry(p.network_id.clone())
                .or_default()
                .push(p.mac);
        }
        d.dvr = crate::routers::dvr_rules(&computed.routers, &computed.networks, &local_macs);
        d.routers = computed.routers;
        // Zones of router-only networks are kept too.
        let here: BTreeSet<String> = d.networks.keys().cloned().collect();
        inp.state.zones.retain(|n, _| here.contains(n));
    }

    // Remote ports of the networks present here.
    for p in view.ports.values() {
        if p.host_id.is_empty() || p.host_id == inp.host {
            continue;
        }
        let Some(nd) = d.networks.get_mut(&p.network_id) else {
            continue;
        };
        if !matches!(nd.kind, NetKind::Vxlan { .. }) {
            continue;
        }
        let Some(vtep) = view.vteps.get(&p.host_id) else {
            continue;
        };
        let (Ok(vtep), Ok(mac)) = (
            vtep.tunneling_ip.parse::<IpAddr>(),
            p.mac_address.parse::<MacAddr>(),
        ) else {
            continue;
        };
        nd.remote.fdb.insert((mac, vtep));
        nd.remote.flood.insert(vtep);
        for f in &p.fixed_ips {
            nd.remote.neighbours.insert(f.ip_address, mac);
        }
    }

    // Load balancers: listeners reachable from the networks here, the members this
    // host checks, and ARP answers for the VIPs (on the vxlan device, as for
    // remote ports: the engine keeps its neighbour table to exactly that list).
    if !view.loadbalancers.is_empty() {
        let zones = inp.state.zones.clone();
        d.lb = crate::lb::compute(
            view,
            &crate::lb::Here {
                host: inp.host,
                networks: &d.networks,
                ports: &d.ports,
                zones: &zones,
            },
        );
        for (net, vips) in &d.lb.arp {
            if let Some(nd) = d.networks.get_mut(net)
                && matches!(nd.kind, NetKind::Vxlan { .. })
            {
                for (ip, mac) in vips {
                    nd.remote.neighbours.insert(*ip, *mac);
                }
            }
        }
    }

    // Remote groups: member addresses of every group a local rule names.
    let mut named: BTreeMap<&str, nft::GroupMembers> = BTreeMap::new();
    for l in inp
        .memo
        .ports
        .values()
        .filter_map(|m| m.local.as_ref().ok())
    {
        if d.ports.contains_key(&l.desired.id) {
            for g in &l.groups {
                if !named.contains_key(g.as_str()) {
                    named.insert(g.as_str(), nft::GroupMembers::default());
                }
            }
        }
    }
    // One walk over the ports for all the groups named.
    if !named.is_empty() {
        for p in view.ports.values() {
            for g in &p.security_groups {
                let Some(members) = named.get_mut(g.as_str()) else {
                    continue;
                };
                let pairs = p.allowed_address_pairs.iter().filter_map(pair_net);
                for n in p
                    .fixed_ips
                    .iter()
                    .map(|f| IpNet::from(f.ip_address))
                    .chain(pairs)
                {
                    match n {
                        IpNet::V4(_) => members.v4.insert(n),
                        IpNet::V6(_) => members.v6.insert(n),
                    };
                }
            }
        }
    }
    let named: Vec<(String, nft::GroupMembers)> =
        named.into_iter().map(|(g, m)| (g.to_string(), m)).collect();
    d.ruleset.groups.extend(named);
    d.ruleset.ports.sort_by(|a, b| a.id.cmp(&b.id));
    d.ruleset.networks.sort_by(|a, b| a.bridge.cmp(&b.bridge));
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Binding, PublishedPort};
    use kuryr_model::{HostFrame, HostIds, HostObjects, HostVtep};
    use serde_json::{Value, json};

    const NET: &str = "11111111-2222-3333-4444-555555555555";
    const SUB4: &str = "aaaaaaaa-0000-0000-0000-000000000004";
    const SUB6: &str = "aaaaaaaa-0000-0000-0000-000000000006";
    const SG: &str = "bbbbbbbb-0000-0000-0000-000000000001";
    const WEB: &str = "bbbbbbbb-0000-0000-0000-000000000002";

    fn std_attrs() -> Value {
        json!({"project_id": "p", "description": "", "tags": [], "created_at": "",
               "updated_at": "", "revision_number": 1})
    }

    fn merge(mut a: Value, b: Value) -> Value {
        if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
            a.extend(b);
        }
        a
    }

    fn network() -> kuryr_model::Network {
        serde_json::from_value(merge(
            std_attrs(),
            json!({
            "id": NET, "name": "n", "admin_state_up": true, "shared": false, "mtu": 1450,
            "router:external": false, "provider:network_type": "vxlan",
            "provider:physical_network": null, "provider:segmentation_id": 77,
            "port_security_enabled": true, "is_default": false, "status": "ACTIVE"}),
        ))
        .unwrap()
    }

    fn subnet(id: &str, cidr: &str, gw: &str, v: u8, routes: Value) -> Subnet {
        serde_json::from_value(merge(
            std_attrs(),
            json!({
            "id": id, "name": "s", "network_id": NET, "ip_version": v, "cidr": cidr,
            "gateway_ip": gw, "allocation_pools": [], "dns_nameservers": [],
            "host_routes": routes, "enable_dhcp": true, "ipv6_address_mode": null,
            "ipv6_ra_mode": null, "subnetpool_id": null}),
        ))
        .unwrap()
    }

    fn port(id: &str, host: &str, mac: &str, ips: &[(&str, &str)], sgs: &[&str]) -> Port {
        let fixed: Vec<Value> = ips
            .iter()
            .map(|(s, ip)| json!({"subnet_id": s, "ip_address": ip}))
            .collect();
        serde_json::from_value(merge(
            std_attrs(),
            json!({
            "id": id, "name": "", "network_id": NET, "mac_address": mac,
            "admin_state_up": true, "status": "DOWN", "device_id": "", "device_owner": "",
            "fixed_ips": fixed, "security_groups": sgs, "port_security_enabled": true,
            "allowed_address_pairs": [], "binding:host_id": host, "binding:vif_type": "unbound",
            "binding:vnic_type": "normal"}),
        ))
        .unwrap()
    }

    fn rule(
        id: &str,
        sg: &str,
        dir: &str,
        proto: Option<&str>,
        remote_group: Option<&str>,
    ) -> SecurityGroupRule {
        serde_json::from_value(merge(
            std_attrs(),
            json!({
            "id": id, "security_group_id": sg, "direction": dir, "ethertype": "IPv4",
            "protocol": proto, "port_range_min": null, "port_range_max": null,
            "remote_ip_prefix": null, "remote_group_id": remote_group}),
        ))
        .unwrap()
    }

    fn mirror() -> HostMirror {
        let mut m = HostMirror::new();
        m.apply(HostFrame {
            revision: 5,
            present: Some(HostIds::default()),
            put: HostObjects {
                networks: vec![network()],
                subnets: vec![
                    subnet(
                        SUB4,
                        "10.0.0.0/24",
                        "10.0.0.1",
                        4,
                        json!([{"destination": "192.168.0.0/16", "nexthop": "10.0.0.254"}]),
                    ),
                    subnet(SUB6, "fd00::/64", "fd00::1", 6, json!([])),
                ],
                ports: vec![
                    port(
                        "local-port-0001",
                        "h1",
                        "fa:16:3e:00:00:01",
                        &[(SUB4, "10.0.0.5"), (SUB6, "fd00::5")],
                        &[SG],
                    ),
                    port(
                        "remote-port-001",
                        "h2",
                        "fa:16:3e:00:00:02",
                        &[(SUB4, "10.0.0.6")],
                        &[WEB],
                    ),
                    port(
                        "unbound-port-01",
                        "",
                        "fa:16:3e:00:00:03",
                        &[(SUB4, "10.0.0.7")],
                        &[WEB],
                    ),
                ],
                security_groups: vec![],
                security_group_rules: vec![
                    rule("r1", SG, "ingress", Some("icmp"), Some(WEB)),
                    rule("r2", SG, "egress", None, None),
                ],
                vteps: vec![HostVtep {
                    host: "h2".into(),
                    tunneling_ip: "10.99.0.12".into(),
                }],
                ..HostObjects::default()
            },
            delete: HostIds::default(),
        });
        m
    }

    fn desired_for(host: &str, view: &HostMirror, state: &mut LocalState) -> Desired {
        compute(Inputs {
            host,
            view,
            state,
            memo: &mut Memo::default(),
            interface_mappings: &BTreeMap::new(),
            router_prefix: "kqr-",
        })
    }

    fn bound_state() -> LocalState {
        let mut s = LocalState::default();
        s.bindings.insert(
            "local-port-0001".into(),
            Binding {
                netns: "/run/netns/c1".into(),
                ifname: "eth0".into(),
                ..Default::default()
            },
        );
        s
    }

    /// An unchanged port is derived once and shared from pass to pass; a change
    /// of the rest of the view (a subnet's routes) or of the binding derives it
    /// again, with the change in it.
    #[test]
    fn ports_are_derived_again_only_when_something_they_depend_on_changed() {
        let mut view = mirror();
        let mut state = bound_state();
        let mut memo = Memo::default();
        let mut run = |view: &HostMirror, state: &mut LocalState| {
            compute(Inputs {
                host: "h1",
                view,
                state,
                memo: &mut memo,
                interface_mappings: &BTreeMap::new(),
                router_prefix: "kqr-",
            })
        };
        let id = "local-port-0001";
        let a = run(&view, &mut state);
        let b = run(&view, &mut state);
        assert!(Arc::ptr_eq(&a.ports[id], &b.ports[id]));
        assert!(Arc::ptr_eq(&a.ruleset.ports[0], &b.ruleset.ports[0]));

        view.apply(HostFrame {
            revision: 6,
            present: None,
            put: HostObjects {
                subnets: vec![subnet(
                    SUB4,
                    "10.0.0.0/24",
                    "10.0.0.1",
                    4,
                    json!([{"destination": "172.16.0.0/12", "nexthop": "10.0.0.254"}]),
                )],
                ..Default::default()
            },
            delete: HostIds::default(),
        });
        let c = run(&view, &mut state);
        assert!(!Arc::ptr_eq(&b.ports[id], &c.ports[id]));
        let dests = |d: &Desired| -> Vec<String> {
            d.ports[id]
                .routes
                .iter()
                .map(|r| r.dest.to_string())
                .collect()
        };
        assert!(
            dests(&b).contains(&"192.168.0.0/16".to_string()),
            "{:?}",
            dests(&b)
        );
        assert!(
            dests(&c).contains(&"172.16.0.0/12".to_string()),
            "{:?}",
            dests(&c)
        );

        state.bindings.get_mut(id).expect("bound").ifname = "eth1".into();
        let e = run(&view, &mut state);
        assert_eq!(c.ports[id].ifname, "eth0");
        assert_eq!(e.ports[id].ifname, "eth1");
    }

    #[test]
    fn local_port_gets_addresses_routes_and_names() {
        let m = mirror();
        let mut s = bound_state();
        let d = desired_for("h1", &m, &mut s);
        let p = &d.ports["local-port-0001"];
        assert_eq!(p.tap, "taplocal-port-");
        assert_eq!(p.bridge, "brq11111111-22");
        assert_eq!(p.mtu, 1450);
        let addrs: Vec<String> = p.addresses.iter().map(|a| a.to_string()).collect();
        assert_eq!(addrs, ["10.0.0.5/24", "fd00::5/64"]);
        let routes: Vec<String> = p
            .routes
            .iter()
            .map(|r| format!("{} via {:?}", r.dest, r.gateway))
            .collect();
        assert_eq!(
            routes,
            [
                "0.0.0.0/0 via Some(10.0.0.1)",
                "192.168.0.0/16 via Some(10.0.0.254)",
                "::/0 via Some(fd00::1)",
            ]
        );
        assert_eq!(d.networks[NET].kind, NetKind::Vxlan { vni: 77 });
        assert_eq!(s.zones[NET], 1);
    }

    #[test]
    fn remote_ports_become_fdb_neighbour_and_flood_entries() {
        let m = mirror();
        let d = desired_for("h1", &m, &mut bound_state());
        let r = &d.networks[NET].remote;
        let vtep: IpAddr = "10.99.0.12".parse().unwrap();
        let mac: MacAddr = "fa:16:3e:00:00:02".parse().unwrap();
        assert_eq!(r.fdb, BTreeSet::from([(mac, vtep)]));
        assert_eq!(r.flood, BTreeSet::from([vtep]));
        // The unbound port has no host: no entry anywhere.
        assert_eq!(r.neighbours.len(), 1);
        assert_eq!(r.neighbours[&"10.0.0.6".parse::<IpAddr>().unwrap()], mac);
    }

    #[test]
    fn rules_and_remote_group_members() {
        let m = mirror();
        let d = desired_for("h1", &m, &mut bound_state());
        let pf = &d.ruleset.ports[0];
        assert!(pf.port_security);
        assert_eq!(pf.rules.len(), 2);
        let icmp = pf
            .rules
            .iter()
            .find(|r| r.direction == nft::Direction::Ingress)
            .unwrap();
        assert_eq!(icmp.protocol, Some(1));
        assert_eq!(icmp.remote, nft::Remote::Group(WEB.into()));
        let members = &d.ruleset.groups[WEB];
        let v4: Vec<String> = members.v4.iter().map(|n| n.to_string()).collect();
        assert_eq!(v4, ["10.0.0.6/32", "10.0.0.7/32"]);
    }

    #[test]
    fn nothing_without_a_binding_or_on_another_host() {
        let m = mirror();
        let d = desired_for("h1", &m, &mut LocalState::default());
        assert!(d.ports.is_empty() && d.networks.is_empty());
        let mut s = bound_state();
        let d = desired_for("h3", &m, &mut s);
        assert!(d.ports.is_empty());
        assert!(d.waiting["local-port-0001"].contains("bound to host \"h1\""));
        assert!(s.zones.is_empty());
    }

    fn publish(proto: &str, host: Option<&str>, hport: u16, to: &str, port: u16) -> PublishedPort {
        PublishedPort {
            protocol: proto.into(),
            host_ip: host.map(|h| h.parse().unwrap()),
            host_port: hport,
            container_ip: to.parse().unwrap(),
            container_port: port,
        }
    }

    #[test]
    fn published_ports_become_dnat_entries_and_gateways() {
        let m = mirror();
        // nothing published: the gateways are known, not wanted
        let d = desired_for("h1", &m, &mut bound_state());
        let n = &d.networks[NET];
        assert!(n.gateways.is_empty() && d.ruleset.published.is_empty());
        let all: Vec<String> = n.subnet_gateways.iter().map(|g| g.to_string()).collect();
        assert_eq!(all, ["10.0.0.1/24", "fd00::1/64"]);

        let mut s = bound_state();
        s.bindings.get_mut("local-port-0001").unwrap().published = vec![
            publish("tcp", None, 8080, "10.0.0.5", 80),
            publish("UDP", Some("192.0.2.1"), 53, "10.0.0.5", 5353),
            publish("sctp", None, 9, "fd00::5", 9),
            // not the port's address, not a protocol that has ports: left out
            publish("tcp", None, 8081, "10.0.0.6", 80),
            publish("icmp", None, 8082, "10.0.0.5", 80),
        ];
        let d = desired_for("h1", &m, &mut s);
        let got: Vec<String> = d
            .ruleset
            .published
            .iter()
            .map(|p| {
                format!(
                    "{} {} {:?}:{} -> {}:{}",
                    p.bridge, p.protocol, p.host_ip, p.host_port, p.container_ip, p.container_port
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                "brq11111111-22 6 None:8080 -> 10.0.0.5:80",
                "brq11111111-22 17 Some(192.0.2.1):53 -> 10.0.0.5:5353",
                "brq11111111-22 132 None:9 -> fd00::5:9",
            ]
        );
        let n = &d.networks[NET];
        assert_eq!(n.gateways, n.subnet_gateways);
        assert_eq!(n.gateways.len(), 2);
        // the network's zone is there for them
        assert!(
            d.ruleset
                .networks
                .iter()
                .any(|z| z.bridge == "brq11111111-22")
        );

        // only left-out mappings: no gateways
        s.bindings.get_mut("local-port-0001").unwrap().published =
            vec![publish("tcp", None, 8081, "10.0.0.6", 80)];
        let d = desired_for("h1", &m, &mut s);
        assert!(d.networks[NET].gateways.is_empty() && d.ruleset.published.is_empty());

        // a published port whose binding is not realized (moved to another host)
        // publishes nothing
        s.bindings.get_mut("local-port-0001").unwrap().published =
            vec![publish("tcp", None, 8080, "10.0.0.5", 80)];
        let d = desired_for("h3", &m, &mut s);
        assert!(d.ruleset.published.is_empty() && d.networks.is_empty());
    }

    fn group(id: &str, stateful: bool) -> kuryr_model::SecurityGroup {
        serde_json::from_value(merge(
            std_attrs(),
            json!({"id": id, "name": id, "stateful": stateful}),
        ))
        .unwrap()
    }

    /// Puts groups into the mirror (and a second group on the local port).
    fn with_groups(m: &mut HostMirror, groups: Vec<kuryr_model::SecurityGroup>, sgs: &[&str]) {
        let mut p = m.ports["local-port-0001"].clone();
        p.security_groups = sgs.iter().map(|s| s.to_string()).collect();
        m.apply(HostFrame {
            revision: 6,
            present: None,
            put: HostObjects {
                ports: vec![p],
                security_groups: groups,
                ..Default::default()
            },
            delete: HostIds::default(),
        });
    }

    #[test]
    fn ports_whose_groups_are_all_stateless_are_stateless_and_publish_nothing() {
        let mut s = bound_state();
        s.bindings.get_mut("local-port-0001").unwrap().published =
            vec![publish("tcp", None, 8080, "10.0.0.5", 80)];
        // Groups not in the view yet are stateful (the default).
        let m = mirror();
        let d = desired_for("h1", &m, &mut s);
        assert!(!d.ruleset.ports[0].stateless);
        assert_eq!(d.ruleset.published.len(), 1);

        let mut m = mirror();
        with_groups(&mut m, vec![group(SG, false)], &[SG]);
        let d = desired_for("h1", &m, &mut s);
        let pf = &d.ruleset.ports[0];
        assert!(pf.stateless);
        assert_eq!(pf.rules.len(), 2, "its rules are there all the same");
        assert!(d.ruleset.published.is_empty(), "DNAT needs conntrack");
        assert!(d.networks[NET].gateways.is_empty());

        // A stateful group with it (neutron refuses that mix): stateful.
        let mut m = mirror();
        with_groups(&mut m, vec![group(SG, false), group(WEB, true)], &[SG, WEB]);
        assert!(!desired_for("h1", &m, &mut s).ruleset.ports[0].stateless);
        // No group at all: nothing to be stateless about.
        let mut m = mirror();
        with_groups(&mut m, vec![group(SG, false)], &[]);
        assert!(!desired_for("h1", &m, &mut s).ruleset.ports[0].stateless);
    }

    #[test]
    fn protocol_names_and_numbers() {
        assert_eq!(protocol_number("tcp", false), Some(6));
        assert_eq!(protocol_number("icmp", true), Some(58));
        assert_eq!(protocol_number("ipv6-icmp", true), Some(58));
        assert_eq!(protocol_number("132", false), Some(132));
        assert_eq!(protocol_number("rsvp", false), Some(46));
        assert_eq!(protocol_number("hopopt", false), Some(0));
        assert_eq!(protocol_number("bogus", false), None);
    }

    /// A router with an interface on the local network and one on another: a leg
    /// on each (the other network made here too, with a zone), neighbours for every
    /// port of the leg's subnets, containment rules naming the legs, local MACs and
    /// uplinks. A router with no interface on a local network is not realized.
    #[test]
    fn routers_with_a_leg_on_a_local_network_are_realized_with_all_their_legs() {
        const NET2: &str = "net-two-000000001";
        const SUB2: &str = "sub-two-000000001";
        let mut view = mirror();
        let mut net2 = network();
        net2.id = NET2.into();
        net2.segmentation_id = Some(78);
        let mut sub2 = subnet(SUB2, "10.0.1.0/24", "10.0.1.1", 4, json!([]));
        sub2.network_id = NET2.into();
        let mut leg1 = port(
            "leg-one-00000001",
            "",
            "fa:16:3e:aa:00:01",
            &[(SUB4, "10.0.0.1")],
            &[],
        );
        leg1.device_owner = "network:router_interface".into();
        leg1.device_id = "router-1".into();
        let mut leg2 = port(
            "leg-two-00000001",
            "",
            "fa:16:3e:aa:00:02",
            &[(SUB2, "10.0.1.1")],
            &[],
        );
        leg2.device_owner = "network:router_interface".into();
        leg2.device_id = "router-1".into();
        leg2.network_id = NET2.into();
        let mut far = port(
            "far-port-0000001",
            "h2",
            "fa:16:3e:bb:00:01",
            &[(SUB2, "10.0.1.9")],
            &[],
        );
        far.network_id = NET2.into();
        let router: kuryr_model::Router = serde_json::from_value(merge(
            std_attrs(),
            json!({"id": "router-1", "name": "r", "admin_state_up": true, "status": "ACTIVE",
                "gateway": null, "routes": [{"destination": "192.168.9.0/24", "nexthop": "10.0.1.9"}]}),
        ))
        .unwrap();
        let mut lonely = router.clone();
        lonely.id = "router-2".into();
        view.apply(HostFrame {
            revision: 6,
            present: None,
            put: HostObjects {
                networks: vec![net2],
                subnets: vec![sub2],
                ports: vec![leg1, leg2, far],
                routers: vec![router, lonely],
                ..HostObjects::default()
            },
            delete: HostIds::default(),
        });
        let mut s = bound_state();
        let d = desired_for("h1", &view, &mut s);
        assert_eq!(d.routers.len(), 1, "{:?}", d.routers);
        let r = &d.routers[0];
        assert_eq!(r.netns, "kqr-router-1");
        assert_eq!(r.legs.len(), 2);
        let l1 = r
            .legs
            .iter()
            .find(|l| l.port_id == "leg-one-00000001")
            .unwrap();
        assert_eq!(l1.peer_name, "qr-leg-one-000");
        assert_eq!(l1.host_name, "tapleg-one-000");
        assert_eq!(l1.addresses, vec!["10.0.0.1/24".parse::<IpNet>().unwrap()]);
        assert_eq!(
            l1.neighbours.get(&"10.0.0.5".parse::<IpAddr>().unwrap()),
            Some(&"fa:16:3e:00:00:01".parse().unwrap()),
            "the local port"
        );
        let l2 = r
            .legs
            .iter()
            .find(|l| l.port_id == "leg-two-00000001")
            .unwrap();
        assert_eq!(
            l2.neighbours.get(&"10.0.1.9".parse::<IpAddr>().unwrap()),
            Some(&"fa:16:3e:bb:00:01".parse().unwrap()),
            "a port on another host"
        );
        assert_eq!(r.routes.len(), 1);
        assert!(
            d.networks.contains_key(NET2),
            "the other leg's network is made here"
        );
        assert!(
            d.ruleset
                .networks
                .iter()
                .any(|z| z.bridge == bridge_name(NET2)),
            "with a conntrack zone"
        );
        assert_eq!(
            d.networks[NET2].remote.fdb.len(),
            1,
            "and the far port l2-populated"
        );
        assert_eq!(d.dvr.legs.len(), 2);
        assert!(d.dvr.uplinks.contains(&"vxlan-78".to_string()));
        assert!(
            d.dvr.local.contains(&(
                "tapleg-one-000".into(),
                "fa:16:3e:00:00:01".parse().unwrap()
            )),
            "{:?}",
            d.dvr.local
        );

        // Without the local port's binding, no router and no second network here.
        let mut none = LocalState::default();
        let d = desired_for("h1", &view, &mut none);
        assert!(d.routers.is_empty());
        assert!(!d.networks.contains_key(NET2));
        assert_eq!(d.dvr, nft::Dvr::default());
    }
}
