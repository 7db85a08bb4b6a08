//! Load balancers on this host, from the host's view: what the kernel needs
//! ([`kuryr_dataplane::lb::LbHost`]: per local network, the listeners its ports may
//! reach and their healthy members) and which members this host's agent checks
//! ([`kuryr_dataplane::probe::Target`]s).
//!
//! - A listener is served on the bridge of every network here with local ports
//!   that reaches the VIP: the VIP's own network, or one that shares a router with
//!   it (the distributed router routes the DNATed packet on this host).
//! - Members in rotation: admin up, weight above 0, and not `ERROR` when the pool
//!   has a health monitor; backup members only when no other is in rotation.
//! - Who may use the VIP is the VIP port's security groups: an ingress rule for the
//!   listener's protocol and port (or any) from a prefix. With none, nobody (the
//!   listener is left out, so traffic to it is dropped as a group would).
//! - Health: members whose `monitor_host` is this host, probed from inside the
//!   namespace of the local port that holds the address, else from the agent's own.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use kuryr_client::HostMirror;
use kuryr_dataplane::MacAddr;
use kuryr_dataplane::lb::{Algorithm, Backend, L4Proto, LbHost, LbNet, LbService};
use kuryr_dataplane::probe::{ExpectedCodes, HttpCheck, HttpVersion, ProbeKind, Target};
use kuryr_model::lbaas::operating;
use kuryr_model::{HealthMonitor, Listener, LoadBalancer, Member, Pool};

use crate::desired::{NetDesired, NetKind, PortDesired};

/// The first routing table of the per-bridge tables (table = this + the network's
/// conntrack zone, so stable across restarts while the zone is).
pub const TABLE_BASE: u32 = 20_000;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LbDesired {
    pub host: LbHost,
    /// Member id → its check.
    pub checks: BTreeMap<String, Target>,
    /// VIPs to answer ARP for: network id → (VIP, VIP port MAC).
    pub arp: BTreeMap<String, Vec<(IpAddr, MacAddr)>>,
}

/// What [`compute`] needs of the rest of the desired state.
pub struct Here<'a> {
    pub host: &'a str,
    pub networks: &'a BTreeMap<String, NetDesired>,
    pub ports: &'a BTreeMap<String, std::sync::Arc<PortDesired>>,
    /// network → conntrack zone.
    pub zones: &'a BTreeMap<String, u16>,
}

fn proto(p: &str) -> Option<L4Proto> {
    match p {
        "TCP" => Some(L4Proto::Tcp),
        "UDP" => Some(L4Proto::Udp),
        "SCTP" => Some(L4Proto::Sctp),
        _ => None,
    }
}

pub(crate) fn algorithm(p: &Pool) -> Algorithm {
    if p.session_persistence
        .as_ref()
        .is_some_and(|s| s.kind == "SOURCE_IP")
    {
        return Algorithm::SourceIp;
    }
    match p.lb_algorithm.as_str() {
        "SOURCE_IP" => Algorithm::SourceIp,
        "SOURCE_IP_PORT" => Algorithm::SourceIpPort,
        _ => Algorithm::RoundRobin,
    }
}

/// The view's load-balancing objects by parent, built once per pass: a pass
/// then costs one walk of each kind, not one per pool or listener.
pub(crate) struct Index<'a> {
    members: BTreeMap<&'a str, Vec<&'a Member>>,
    monitors: BTreeMap<&'a str, &'a HealthMonitor>,
    rules: BTreeMap<&'a str, Vec<&'a kuryr_model::SecurityGroupRule>>,
}

impl<'a> Index<'a> {
    pub(crate) fn new(view: &'a HostMirror) -> Index<'a> {
        let mut ix = Index {
            members: BTreeMap::new(),
            monitors: BTreeMap::new(),
            rules: BTreeMap::new(),
        };
        for m in view.members.values() {
            ix.members.entry(m.pool_id.as_str()).or_default().push(m);
        }
        for h in view.healthmonitors.values().filter(|h| h.admin_state_up) {
            ix.monitors.insert(h.pool_id.as_str(), h);
        }
        for r in view.security_group_rules.values() {
            ix.rules
                .entry(r.security_group_id.as_str())
                .or_default()
                .push(r);
        }
        ix
    }

    fn monitor_of(&self, pool: &str) -> Option<&'a HealthMonitor> {
        self.monitors.get(pool).copied()
    }
}

/// The members of `pool` in rotation.
pub(crate) fn backends(ix: &Index<'_>, pool: &Pool) -> Vec<Backend> {
    let monitored = ix.monitor_of(&pool.id).is_some();
    let eligible: Vec<&Member> = ix
        .members
        .get(pool.id.as_str())
        .into_iter()
        .flatten()
        .copied()
        .filter(|m| m.admin_state_up && m.weight > 0)
        .filter(|m| !(monitored && m.operating_status == operating::ERROR))
        .collect();
    let primary: Vec<&&Member> = eligible.iter().filter(|m| !m.backup).collect();
    let chosen: Vec<&&Member> = if primary.is_empty() {
        eligible.iter().filter(|m| m.backup).collect()
    } else {
        primary
    };
    let mut out: Vec<Backend> = chosen
        .into_iter()
        .map(|m| Backend {
            address: m.address,
            port: m.protocol_port,
            weight: m.weight,
        })
        .collect();
    out.sort_by_key(|b| (b.address, b.port));
    out
}

/// Sources the VIP port's groups let reach `listener`: `Some(vec![])` for
/// everyone, None for nobody.
fn allowed(
    view: &HostMirror,
    ix: &Index<'_>,
    lb: &LoadBalancer,
    l: &Listener,
) -> Option<Vec<IpNet>> {
    let port = view.ports.get(&lb.vip_port_id)?;
    let v4 = lb.vip_address.is_ipv4();
    let mut out = Vec::new();
    let mut any = false;
    let rules = port
        .security_groups
        .iter()
        .filter_map(|g| ix.rules.get(g.as_str()))
        .flatten();
    for r in rules {
        if r.direction != "ingress" {
            continue;
        }
        if (r.ethertype == "IPv4") != v4 || r.remote_group_id.is_some() {
            continue;
        }
        if let Some(p) = &r.protocol
            && !p.eq_ignore_ascii_case(&l.protocol)
        {
            continue;
        }
        let port = u32::from(l.protocol_port);
        if r.port_range_min.is_some_and(|m| port < m) || r.port_range_max.is_some_and(|m| port > m)
        {
            continue;
        }
        match r.remote_ip_prefix.as_deref().map(IpNet::from_str) {
            None => any = true,
            Some(Ok(n)) if n.prefix_len() == 0 => any = true,
            Some(Ok(n)) => out.push(n),
            Some(Err(_)) => {}
        }
    }
    if any {
        return Some(Vec::new());
    }
    (!out.is_empty()).then_some(out)
}

/// The listeners of the load balancer whose VIP port is `port`, as reached at a
/// floating IP `fip` of that port (in the router's SNAT namespace).
pub fn balanced_at(
    view: &HostMirror,
    port: &str,
    fip: std::net::Ipv4Addr,
) -> Vec<kuryr_dataplane::nft::Balanced> {
    let Some(lb) = view
        .loadbalancers
        .values()
        .find(|lb| lb.vip_port_id == port && lb.admin_state_up)
    else {
        return Vec::new();
    };
    let ix = Index::new(view);
    let mut out = Vec::new();
    for l in view.listeners.values() {
        if l.loadbalancer_id != lb.id || !l.admin_state_up || proto(&l.protocol).is_none() {
            continue;
        }
        // As on the bridges: the VIP port's groups say who may use the listener.
        let Some(sources) = allowed(view, &ix, lb, l) else {
            continue;
        };
        let Some(pool) = l
            .default_pool_id
            .as_ref()
            .and_then(|p| view.pools.get(p))
            .filter(|p| p.admin_state_up)
        else {
            continue;
        };
        let backends = backends(&ix, pool)
            .into_iter()
            .filter_map(|b| match b.address {
                IpAddr::V4(a) => Some((a, b.port, b.weight)),
                IpAddr::V6(_) => None,
            })
            .collect();
        out.push(kuryr_dataplane::nft::Balanced {
            protocol: l.protocol.to_ascii_lowercase(),
            fip,
            port: l.protocol_port,
            sources: sources
                .into_iter()
                .filter_map(|n| match n {
                    IpNet::V4(n) => Some(n),
                    IpNet::V6(_) => None,
                })
                .collect(),
            by_source: algorithm(pool) != Algorithm::RoundRobin,
            backends,
        });
    }
    out.sort();
    out
}

/// network → networks it reaches through a router here (itself included).
fn reach(view: &HostMirror) -> BTreeMap<&str, BTreeSet<&str>> {
    let mut by_router: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for p in view.ports.values() {
        if p.device_owner == "network:router_interface" {
            by_router
                .entry(p.device_id.as_str())
                .or_default()
                .insert(p.network_id.as_str());
        }
    }
    let mut out: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for nets in by_router.values() {
        for n in nets {
            out.entry(n).or_default().extend(nets.iter().copied());
        }
    }
    out
}

fn probe_kind(h: &HealthMonitor) -> Option<ProbeKind> {
    let http = || HttpCheck {
        method: h.http_method.clone().unwrap_or_else(|| "GET".into()),
        path: h.url_path.clone().unwrap_or_else(|| "/".into()),
        expected: h
            .expected_codes
            .as_deref()
            .and_then(|c| ExpectedCodes::parse(c).ok())
            .unwrap_or_default(),
        host: h.domain_name.clone(),
        version: if h.http_version == Some(1.1) {
            HttpVersion::Http11
        } else {
            HttpVersion::Http10
        },
    };
    Some(match h.kind.as_str() {
        "PING" => ProbeKind::Ping,
        "TCP" => ProbeKind::Tcp,
        "HTTP" => ProbeKind::Http(http()),
        "HTTPS" => ProbeKind::Https(http()),
        "TLS-HELLO" => ProbeKind::TlsHello,
        "UDP-CONNECT" => ProbeKind::UdpConnect,
        _ => return None,
    })
}

pub fn compute(view: &HostMirror, here: &Here<'_>) -> LbDesired {
    let mut d = LbDesired::default();
    if view.loadbalancers.is_empty() {
        return d;
    }
    let reach = reach(view);
    let ix = Index::new(view);
    // Networks with local client ports, and those ports' addresses.
    let mut local: BTreeMap<&str, Vec<&PortDesired>> = BTreeMap::new();
    for p in here.ports.values() {
        local.entry(p.network_id.as_str()).or_default().push(p);
    }
    // Listener services, by VIP network.
    let mut services: BTreeMap<&str, Vec<LbService>> = BTreeMap::new();
    let mut member_addrs: BTreeSet<IpAddr> = BTreeSet::new();
    for lb in view.loadbalancers.values() {
        if !lb.admin_state_up {
            continue;
        }
        if let Ok(mac) = lb.vip_mac.parse::<MacAddr>() {
            d.arp
                .entry(lb.vip_network_id.clone())
                .or_default()
                .push((lb.vip_address, mac));
        }
        for l in view.listeners.values() {
            if l.loadbalancer_id != lb.id || !l.admin_state_up {
                continue;
            }
            let Some(protocol) = proto(&l.protocol) else {
                continue;
            };
            let Some(allowed) = allowed(view, &ix, lb, l) else {
                continue;
            };
            let pool = l
                .default_pool_id
                .as_ref()
                .and_then(|p| view.pools.get(p))
                .filter(|p| p.admin_state_up);
            let (algorithm, backends) = match pool {
                Some(p) => (algorithm(p), backends(&ix, p)),
                None => (Algorithm::RoundRobin, Vec::new()),
            };
            member_addrs.extend(backends.iter().map(|b| b.address));
            services
                .entry(lb.vip_network_id.as_str())
                .or_default()
                .push(LbService {
                    id: l.id.clone(),
                    vip: lb.vip_address,
                    protocol,
                    port: l.protocol_port,
                    algorithm,
                    backends,
                    allowed,
                });
        }
    }
    for (net_id, ports) in &local {
        let Some(nd) = here.networks.get(*net_id) else {
            continue;
        };
        let Some(zone) = here.zones.get(*net_id) else {
            continue;
        };
        let mut svc: Vec<LbService> = Vec::new();
        let reached = reach.get(net_id);
        for (vip_net, list) in &services {
            if vip_net == net_id || reached.is_some_and(|r| r.contains(vip_net)) {
                svc.extend(list.iter().cloned());
            }
        }
        if svc.is_empty() && !d.arp.contains_key(*net_id) {
            continue;
        }
        let mut net = LbNet {
            bridge: nd.bridge.clone(),
            vxlan: match &nd.kind {
                NetKind::Vxlan { vni } => Some(crate::desired::vxlan_name(*vni)),
                _ => None,
            },
            table: TABLE_BASE + u32::from(*zone),
            ..LbNet::default()
        };
        for s in view.subnets.values().filter(|s| s.network_id == **net_id) {
            if let Ok(c) = s.cidr.parse::<IpNet>() {
                net.subnets.push(c.trunc());
            }
        }
        for p in view.ports.values().filter(|p| p.network_id == **net_id) {
            let Ok(mac) = p.mac_address.parse::<MacAddr>() else {
                continue;
            };
            for f in &p.fixed_ips {
                if p.device_owner == "network:router_interface" {
                    net.gateways.push((f.ip_address, mac));
                } else if member_addrs.contains(&f.ip_address) {
                    net.neighbours.push((f.ip_address, mac));
                }
            }
        }
        for p in ports {
            if p.addresses.iter().any(|a| member_addrs.contains(&a.addr())) {
                net.hairpin_taps.push(p.tap.clone());
            }
        }
        net.vips = d.arp.get(*net_id).cloned().unwrap_or_default();
        svc.sort_by(|a, b| a.id.cmp(&b.id));
        net.services = svc;
        net.subnets.sort();
        net.gateways.sort();
        net.neighbours.sort();
        net.neighbours.dedup();
        net.hairpin_taps.sort();
        net.vips.sort();
        d.host.nets.push(net);
    }
    d.host.nets.sort_by(|a, b| a.bridge.cmp(&b.bridge));

    // Health checks of the members this host watches, from the namespace of the
    // local port holding the address.
    let netns_of: BTreeMap<IpAddr, &std::path::Path> = here
        .ports
        .values()
        .flat_map(|p| {
            p.addresses
                .iter()
                .map(move |a| (a.addr(), p.netns.as_path()))
        })
        .collect();
    for m in view.members.values() {
        if m.monitor_host != here.host || !m.admin_state_up {
            continue;
        }
        let Some(h) = ix.monitor_of(&m.pool_id) else {
            continue;
        };
        let Some(kind) = probe_kind(h) else {
            continue;
        };
        let netns: Option<PathBuf> = netns_of.get(&m.address).map(|p| p.to_path_buf());
        let addr = SocketAddr::new(
            m.monitor_address.unwrap_or(m.address),
            m.monitor_port.unwrap_or(m.protocol_port),
        );
        d.checks.insert(
            m.id.clone(),
            Target {
                netns,
                addr,
                kind,
                delay: Duration::from_secs(u64::from(h.delay.max(1))),
                timeout: Duration::from_secs(u64::from(h.timeout.max(1))),
                rise: h.max_retries.max(1),
                fall: h.max_retries_down.max(1),
            },
        );
    }
    d
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kuryr_model::{HostFrame, HostIds, HostObjects};
    use serde_json::{Value, json};

    use super::*;
    use crate::desired::RemoteL2;

    const NET: &str = "11111111-0000-0000-0000-000000000001";
    const OTHER: &str = "11111111-0000-0000-0000-000000000002";
    const SUB: &str = "22222222-0000-0000-0000-000000000001";
    const SUB2: &str = "22222222-0000-0000-0000-000000000002";
    const LB: &str = "33333333-0000-0000-0000-000000000001";
    const VIP_PORT: &str = "44444444-0000-0000-0000-000000000001";
    const VIP_SG: &str = "55555555-0000-0000-0000-000000000001";

    fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
        let mut base = json!({"project_id": "p", "description": "", "tags": [],
            "created_at": "", "updated_at": "", "revision_number": 1, "name": "",
            "admin_state_up": true, "provisioning_status": "ACTIVE",
            "operating_status": "ONLINE"});
        if let (Some(b), Value::Object(v)) = (base.as_object_mut(), v) {
            b.extend(v);
        }
        serde_json::from_value(base).unwrap()
    }

    fn port(id: &str, net: &str, sub: &str, ip: &str, mac: &str, host: &str, owner: &str) -> Value {
        json!({"id": id, "network_id": net, "mac_address": mac, "status": "ACTIVE",
            "device_id": if owner == "network:router_interface" { "router-1" } else { "" },
            "device_owner": owner,
            "fixed_ips": [{"subnet_id": sub, "ip_address": ip}],
            "security_groups": if id == VIP_PORT { vec![VIP_SG] } else { vec![] },
            "port_security_enabled": true, "allowed_address_pairs": [],
            "binding:host_id": host, "binding:vif_type": "bridge", "binding:vnic_type": "normal"})
    }

    fn member(id: &str, ip: &str, extra: Value) -> kuryr_model::Member {
        let mut v = json!({"id": id, "pool_id": "pool-1", "loadbalancer_id": LB,
            "address": ip, "protocol_port": 8080, "subnet_id": SUB, "weight": 1,
            "backup": false, "monitor_address": null, "monitor_port": null,
            "monitor_host": "h2"});
        if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        obj(v)
    }

    /// A VIP on NET with a TCP listener on 80 and a pool with `members`; NET and
    /// OTHER joined by a router; the VIP group lets `cidr` in on tcp 80.
    fn view(members: Vec<kuryr_model::Member>, monitored: bool, cidr: Option<&str>) -> HostMirror {
        let net = |id: &str| -> kuryr_model::Network {
            obj(
                json!({"id": id, "shared": false, "mtu": 1450, "router:external": false,
                "provider:network_type": "vxlan", "provider:physical_network": null,
                "provider:segmentation_id": 7, "port_security_enabled": true,
                "is_default": false, "status": "ACTIVE"}),
            )
        };
        let subnet = |id: &str, net: &str, cidr: &str| -> kuryr_model::Subnet {
            obj(
                json!({"id": id, "network_id": net, "ip_version": 4, "cidr": cidr,
                "gateway_ip": null, "allocation_pools": [], "dns_nameservers": [],
                "host_routes": [], "enable_dhcp": true, "ipv6_address_mode": null,
                "ipv6_ra_mode": null, "subnetpool_id": null}),
            )
        };
        let mut rules = Vec::new();
        if let Some(c) = cidr {
            rules.push(obj(json!({"id": "r1", "security_group_id": VIP_SG,
                "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
                "port_range_min": 80, "port_range_max": 80, "remote_ip_prefix": c,
                "remote_group_id": null})));
        }
        let mut m = HostMirror::new();
        m.apply(HostFrame {
            revision: 1,
            present: Some(HostIds::default()),
            put: HostObjects {
                networks: vec![net(NET), net(OTHER)],
                subnets: vec![
                    subnet(SUB, NET, "10.0.0.0/24"),
                    subnet(SUB2, OTHER, "10.0.1.0/24"),
                ],
                ports: vec![
                    obj(port(
                        VIP_PORT,
                        NET,
                        SUB,
                        "10.0.0.100",
                        "fa:16:3e:00:00:64",
                        "",
                        "Octavia",
                    )),
                    obj(port(
                        "client",
                        NET,
                        SUB,
                        "10.0.0.5",
                        "fa:16:3e:00:00:05",
                        "h1",
                        "",
                    )),
                    obj(port(
                        "m-port",
                        NET,
                        SUB,
                        "10.0.0.6",
                        "fa:16:3e:00:00:06",
                        "h2",
                        "",
                    )),
                    obj(port(
                        "far",
                        OTHER,
                        SUB2,
                        "10.0.1.5",
                        "fa:16:3e:00:01:05",
                        "h1",
                        "",
                    )),
                    obj(port(
                        "qr-a",
                        NET,
                        SUB,
                        "10.0.0.1",
                        "fa:16:3e:00:00:01",
                        "",
                        "network:router_interface",
                    )),
                    obj(port(
                        "qr-b",
                        OTHER,
                        SUB2,
                        "10.0.1.1",
                        "fa:16:3e:00:01:01",
                        "",
                        "network:router_interface",
                    )),
                ],
                security_group_rules: rules,
                loadbalancers: vec![obj(json!({"id": LB, "vip_address": "10.0.0.100",
                    "vip_port_id": VIP_PORT, "vip_subnet_id": SUB, "vip_network_id": NET,
                    "vip_mac": "fa:16:3e:00:00:64", "provider": "kuryr", "flavor_id": null,
                    "availability_zone": null}))],
                listeners: vec![obj(json!({"id": "l-1", "loadbalancer_id": LB,
                    "protocol": "TCP", "protocol_port": 80, "connection_limit": -1,
                    "default_pool_id": "pool-1", "allowed_cidrs": null,
                    "timeout_client_data": 0, "timeout_member_connect": 0,
                    "timeout_member_data": 0, "timeout_tcp_inspect": 0}))],
                pools: vec![obj(json!({"id": "pool-1", "loadbalancer_id": LB,
                    "listener_id": "l-1", "protocol": "TCP", "lb_algorithm": "ROUND_ROBIN",
                    "session_persistence": null}))],
                members,
                healthmonitors: if monitored {
                    vec![obj(
                        json!({"id": "hm-1", "pool_id": "pool-1", "loadbalancer_id": LB,
                        "type": "TCP", "delay": 2, "timeout": 1, "max_retries": 2,
                        "max_retries_down": 3, "http_method": null, "url_path": null,
                        "expected_codes": null, "http_version": null, "domain_name": null}),
                    )]
                } else {
                    Vec::new()
                },
                ..HostObjects::default()
            },
            delete: HostIds::default(),
        });
        m
    }

    fn net_desired(id: &str, bridge: &str) -> NetDesired {
        NetDesired {
            id: id.into(),
            bridge: bridge.into(),
            mtu: 1450,
            kind: NetKind::Vxlan { vni: 7 },
            remote: RemoteL2::default(),
            gateways: Vec::new(),
            subnet_gateways: Vec::new(),
        }
    }

    fn local(id: &str, net: &str, ip: &str) -> (String, Arc<PortDesired>) {
        (
            id.into(),
            Arc::new(PortDesired {
                id: id.into(),
                network_id: net.into(),
                bridge: format!("brq-{net}"),
                tap: format!("tap-{id}"),
                netns: format!("/run/netns/{id}").into(),
                ifname: "eth0".into(),
                handoff: false,
                mac: "fa:16:3e:00:00:aa".parse().unwrap(),
                mtu: 1450,
                addresses: vec![format!("{ip}/24").parse().unwrap()],
                routes: Vec::new(),
            }),
        )
    }

    fn run(v: &HostMirror, host: &str, ports: &[(&str, &str, &str)]) -> LbDesired {
        let networks: BTreeMap<String, NetDesired> = [
            (NET.to_string(), net_desired(NET, "brq-a")),
            (OTHER.to_string(), net_desired(OTHER, "brq-b")),
        ]
        .into();
        let ports: BTreeMap<String, Arc<PortDesired>> =
            ports.iter().map(|(id, n, ip)| local(id, n, ip)).collect();
        let zones: BTreeMap<String, u16> = [(NET.to_string(), 1), (OTHER.to_string(), 2)].into();
        compute(
            v,
            &Here {
                host,
                networks: &networks,
                ports: &ports,
                zones: &zones,
            },
        )
    }

    #[test]
    fn members_in_rotation() {
        let ms = vec![
            member("a", "10.0.0.6", json!({})),
            member("b", "10.0.0.7", json!({"admin_state_up": false})),
            member("c", "10.0.0.8", json!({"weight": 0})),
            member("d", "10.0.0.9", json!({"operating_status": "ERROR"})),
            member("e", "10.0.0.10", json!({"backup": true})),
        ];
        let addrs = |v: &HostMirror| -> Vec<String> {
            backends(&Index::new(v), &v.pools["pool-1"])
                .iter()
                .map(|b| b.address.to_string())
                .collect()
        };
        // Without a monitor a stale ERROR means nothing; with one it takes d out.
        assert_eq!(
            addrs(&view(ms.clone(), false, None)),
            ["10.0.0.6", "10.0.0.9"]
        );
        assert_eq!(addrs(&view(ms.clone(), true, None)), ["10.0.0.6"]);
        // The backup only when no other member is in rotation.
        let down = vec![
            member("a", "10.0.0.6", json!({"operating_status": "ERROR"})),
            member("e", "10.0.0.10", json!({"backup": true})),
        ];
        assert_eq!(addrs(&view(down, true, None)), ["10.0.0.10"]);
    }

    #[test]
    fn the_vip_group_decides_who_may_use_the_listener() {
        let ms = vec![member("a", "10.0.0.6", json!({}))];
        let services = |cidr: Option<&str>| -> Vec<LbService> {
            let d = run(
                &view(ms.clone(), false, cidr),
                "h1",
                &[("client", NET, "10.0.0.5")],
            );
            d.host
                .nets
                .iter()
                .flat_map(|n| n.services.clone())
                .collect()
        };
        assert!(services(None).is_empty(), "no rule: nobody");
        assert_eq!(services(Some("0.0.0.0/0"))[0].allowed, Vec::<IpNet>::new());
        assert_eq!(
            services(Some("192.0.2.0/24"))[0].allowed,
            vec!["192.0.2.0/24".parse::<IpNet>().unwrap()]
        );
    }

    #[test]
    fn served_on_the_vip_network_and_on_networks_routed_to_it() {
        let v = view(
            vec![member("a", "10.0.0.6", json!({}))],
            true,
            Some("0.0.0.0/0"),
        );
        let d = run(
            &v,
            "h1",
            &[("client", NET, "10.0.0.5"), ("far", OTHER, "10.0.1.5")],
        );
        let a = d.host.nets.iter().find(|n| n.bridge == "brq-a").unwrap();
        let b = d.host.nets.iter().find(|n| n.bridge == "brq-b").unwrap();
        for n in [a, b] {
            assert_eq!(n.services.len(), 1, "{n:?}");
            assert_eq!(n.services[0].vip.to_string(), "10.0.0.100");
            assert_eq!(n.services[0].backends[0].address.to_string(), "10.0.0.6");
        }
        // ARP for the VIP and the member's neighbour only on the VIP's network; the
        // router legs as gateways on each.
        assert_eq!(a.vips.len(), 1);
        assert!(b.vips.is_empty());
        assert!(
            a.neighbours
                .iter()
                .any(|(ip, _)| ip.to_string() == "10.0.0.6")
        );
        assert!(
            a.gateways
                .iter()
                .any(|(ip, _)| ip.to_string() == "10.0.0.1")
        );
        assert!(
            b.gateways
                .iter()
                .any(|(ip, _)| ip.to_string() == "10.0.1.1")
        );
        assert_eq!((a.table, b.table), (TABLE_BASE + 1, TABLE_BASE + 2));
        // h1 checks no member (the member's port is on h2).
        assert!(d.checks.is_empty());
    }

    #[test]
    fn the_members_host_checks_it_from_inside_its_namespace() {
        let v = view(
            vec![member("a", "10.0.0.6", json!({}))],
            true,
            Some("0.0.0.0/0"),
        );
        let d = run(&v, "h2", &[("m-port", NET, "10.0.0.6")]);
        let t = &d.checks["a"];
        assert_eq!(
            t.netns.as_deref(),
            Some(std::path::Path::new("/run/netns/m-port"))
        );
        assert_eq!(t.addr.to_string(), "10.0.0.6:8080");
        assert_eq!((t.rise, t.fall), (2, 3));
        assert_eq!(t.kind, ProbeKind::Tcp);
        // The member that is a client of itself gets its tap in hairpin mode.
        let a = d.host.nets.iter().find(|n| n.bridge == "brq-a").unwrap();
        assert_eq!(a.hairpin_taps, ["tap-m-port"]);
        // Without a monitor nothing is checked.
        let v = view(
            vec![member("a", "10.0.0.6", json!({}))],
            false,
            Some("0.0.0.0/0"),
        );
        assert!(
            run(&v, "h2", &[("m-port", NET, "10.0.0.6")])
                .checks
                .is_empty()
        );
    }
}
