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

fn monitor_of<'a>(view: &'a HostMirror, pool: &str) -> Option<&'a HealthMonitor> {
    view.healthmonitors
        .values()
        .find(|h| h.pool_id == pool && h.admin_state_up)
}

/// The members of `pool` in rotation.
pub(crate) fn backends(view: &HostMirror, pool: &Pool) -> Vec<Backend> {
    let monitored = monitor_of(view, &pool.id).is_some();
    let eligible: Vec<&Member> = view
        .members
        .values()
        .filter(|m| m.pool_id == pool.id && m.admin_state_up && m.weight > 0)
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
fn allowed(view: &HostMirror, lb: &LoadBalancer, l: &Listener) -> Option<Vec<IpNet>> {
    let port = view.ports.get(&lb.vip_port_id)?;
    let v4 = lb.vip_address.is_ipv4();
    let mut out = Vec::new();
    let mut any = false;
    for r in view.security_group_rules.values() {
        if !port.security_groups.contains(&r.security_group_id) || r.direction != "ingress" {
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
    let mut out = Vec::new();
    for l in view.listeners.values() {
        if l.loadbalancer_id != lb.id || !l.admin_state_up || proto(&l.protocol).is_none() {
            continue;
        }
        let Some(pool) = l
            .default_pool_id
            .as_ref()
            .and_then(|p| view.pools.get(p))
            .filter(|p| p.admin_state_up)
        else {
            continue;
        };
        let backends = backends(view, pool)
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
            let Some(allowed) = allowed(view, lb, l) else {
                continue;
            };
            let pool = l
                .default_pool_id
                .as_ref()
                .and_then(|p| view.pools.get(p))
                .filter(|p| p.admin_state_up);
            let (algorithm, backends) = match pool {
                Some(p) => (algorithm(p), backends(view, p)),
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

    // Health checks of the members this host watches.
    for m in view.members.values() {
        if m.monitor_host != here.host || !m.admin_state_up {
            continue;
        }
        let Some(h) = monitor_of(view, &m.pool_id) else {
            continue;
        };
        let Some(kind) = probe_kind(h) else {
            continue;
        };
        let netns: Option<PathBuf> = here
            .ports
            .values()
            .find(|p| p.addresses.iter().any(|a| a.addr() == m.address))
            .map(|p| p.netns.clone());
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
