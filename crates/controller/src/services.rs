//! Service + EndpointSlices → the load balancer kuryr makes for it (pure).
//!
//! As kuryr-kubernetes made Services Octavia load balancers: the VIP is the Service's
//! ClusterIP (in the service subnet), a listener per Service port (protocol and port),
//! a pool per listener whose members are the ready endpoints of the EndpointSlices
//! that name the Service. Terminating endpoints that still serve stay as members of
//! weight 0 (drained: their connections go on, no new one is sent to them).
//! `sessionAffinity: ClientIP` is the pool's SOURCE_IP persistence. Headless and
//! ExternalName Services get no load balancer. `type: LoadBalancer` adds a floating
//! IP on the VIP (`loadBalancerIP` asks for its address) and
//! `loadBalancerSourceRanges`, which restrict who may use the listeners.
//! `type: NodePort` is balanced on its ClusterIP only (see [`node_ports`]).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::{EndpointPort, EndpointSlice};

/// The label naming an EndpointSlice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub fn parse(s: Option<&str>) -> Option<Proto> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            "SCTP" => Some(Proto::Sctp),
            _ => None,
        }
    }

    /// Octavia's name of the protocol.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
        }
    }
}

/// A listener's key on its load balancer.
pub type ListenerKey = (Proto, u16);
/// A member's key in its pool.
pub type MemberKey = (IpAddr, u16);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSpec {
    /// 1, or 0 for a terminating endpoint that still serves.
    pub weight: u8,
    /// The pod behind it (`targetRef`), shown as the member's name.
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    /// SOURCE_IP persistence (`sessionAffinity: ClientIP`).
    pub source_ip: bool,
    pub members: BTreeMap<MemberKey, MemberSpec>,
}

/// What `type: LoadBalancer` adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct External {
    /// `spec.loadBalancerIP`: the floating IP address asked for.
    pub address: Option<IpAddr>,
    /// `spec.loadBalancerSourceRanges` (empty: anyone).
    pub source_ranges: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbSpec {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub vip: IpAddr,
    pub listeners: BTreeMap<ListenerKey, PoolSpec>,
    pub external: Option<External>,
}

/// The node ports a Service asks for (kuryr serves none: traffic to a node's address
/// never enters a pod network; the caller reports them).
pub fn node_ports(svc: &Service) -> Vec<i32> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    if !matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer")) {
        return Vec::new();
    }
    spec.ports
        .iter()
        .flatten()
        .filter_map(|p| p.node_port)
        .filter(|p| *p > 0)
        .collect()
}

/// Why a Service gets no load balancer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoLb {
    /// Headless, ExternalName, or not allocated yet: nothing to do, no event.
    NotBalanced,
    /// Something kuryr cannot serve (reported as an event on the Service).
    Refused(String),
}

/// The load balancer `svc` should have, from `slices` (any; those of other Services
/// are ignored). `service_cidr`: where VIPs may be (the service subnet).
pub fn desired(
    svc: &Service,
    slices: &[&EndpointSlice],
    service_cidr: &IpNet,
) -> Result<LbSpec, NoLb> {
    let meta = &svc.metadata;
    let (Some(uid), Some(namespace), Some(name)) = (&meta.uid, &meta.namespace, &meta.name) else {
        return Err(NoLb::NotBalanced);
    };
    let spec = svc.spec.as_ref().ok_or(NoLb::NotBalanced)?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return Err(NoLb::NotBalanced);
    }
    let ip = match spec.cluster_ip.as_deref() {
        None | Some("") | Some("None") => return Err(NoLb::NotBalanced),
        Some(ip) => ip,
    };
    let vip: IpAddr = ip
        .parse()
        .map_err(|_| NoLb::Refused(format!("clusterIP {ip:?} is not an address")))?;
    if !service_cidr.contains(&vip) {
        return Err(NoLb::Refused(format!(
            "clusterIP {vip} is outside kuryr's service subnet {service_cidr}"
        )));
    }
    let source_ip = spec.session_affinity.as_deref() == Some("ClientIP");
    let family = if vip.is_ipv4() { "IPv4" } else { "IPv6" };
    let mine: Vec<&EndpointSlice> = slices
        .iter()
        .copied()
        .filter(|s| {
            s.metadata.namespace.as_deref() == Some(namespace)
                && s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL))
                    .is_some_and(|n| n == name)
                && s.address_type == family
        })
        .collect();
    let external = if spec.type_.as_deref() == Some("LoadBalancer") {
        let address =
            match spec.load_balancer_ip.as_deref().filter(|s| !s.is_empty()) {
                Some(a) => Some(a.parse::<IpAddr>().map_err(|_| {
                    NoLb::Refused(format!("loadBalancerIP {a:?} is not an address"))
                })?),
                None => None,
            };
        let mut source_ranges = Vec::new();
        for r in spec.load_balancer_source_ranges.iter().flatten() {
            let net: IpNet = r.trim().parse().map_err(|_| {
                NoLb::Refused(format!("loadBalancerSourceRanges: {r:?} is not a CIDR"))
            })?;
            source_ranges.push(net.trunc());
        }
        Some(External {
            address,
            source_ranges,
        })
    } else {
        None
    };
    let mut listeners = BTreeMap::new();
    for sp in spec.ports.iter().flatten() {
        let proto = Proto::parse(sp.protocol.as_deref()).ok_or_else(|| {
            NoLb::Refused(format!(
                "port {} has protocol {:?}",
                sp.port,
                sp.protocol.as_deref().unwrap_or("")
            ))
        })?;
        let port = u16::try_from(sp.port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| NoLb::Refused(format!("port {} is out of range", sp.port)))?;
        let pool = PoolSpec {
            source_ip,
            members: members(sp, proto, &mine),
        };
        listeners.insert((proto, port), pool);
    }
    Ok(LbSpec {
        uid: uid.clone(),
        namespace: namespace.clone(),
        name: name.clone(),
        vip,
        listeners,
        external,
    })
}

/// The endpoint port that serves Service port `sp`: the one of the same name (both
/// unnamed when the Service has a single port) and protocol.
fn endpoint_port(sp: &ServicePort, proto: Proto, ports: &[EndpointPort]) -> Option<u16> {
    let want = sp.name.as_deref().unwrap_or("");
    ports
        .iter()
        .find(|p| {
            p.name.as_deref().unwrap_or("") == want
                && Proto::parse(p.protocol.as_deref()) == Some(proto)
        })
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
}

fn members(
    sp: &ServicePort,
    proto: Proto,
    slices: &[&EndpointSlice],
) -> BTreeMap<MemberKey, MemberSpec> {
    let mut out = BTreeMap::new();
    for s in slices {
        let Some(port) = endpoint_port(sp, proto, s.ports.as_deref().unwrap_or_default()) else {
            continue;
        };
        for ep in &s.endpoints {
            let c = ep.conditions.as_ref();
            // The API's rules: ready unset means ready; serving unset means as ready.
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            let serving = c.and_then(|c| c.serving).unwrap_or(ready);
            let weight = if ready && !terminating {
                1
            } else if terminating && serving {
                0
            } else {
                continue;
            };
            let name = ep
                .target_ref
                .as_ref()
                .and_then(|r| r.name.clone())
                .unwrap_or_default();
            // One address per endpoint is the API's rule; more are ignored as kube-proxy does.
            let Some(addr) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
                continue;
            };
            let m = out
                .entry((addr, port))
                .or_insert(MemberSpec { weight, name });
            // The same endpoint in two slices (a move between them): the ready one wins.
            m.weight = m.weight.max(weight);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).expect("service")
    }

    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).expect("slice")
    }

    fn cidr() -> IpNet {
        "10.96.0.0/16".parse().expect("cidr")
    }

    fn web() -> Service {
        svc(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
            "spec": {"clusterIP": "10.96.0.10", "type": "ClusterIP",
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080},
                               {"name": "dns", "port": 53, "protocol": "UDP"}]}
        }))
    }

    fn web_slice() -> EndpointSlice {
        slice(json!({
            "metadata": {"name": "web-x", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                      {"name": "dns", "port": 5353, "protocol": "UDP"}],
            "endpoints": [
                {"addresses": ["10.245.0.5"], "conditions": {"ready": true},
                 "targetRef": {"kind": "Pod", "name": "web-1"}},
                {"addresses": ["10.245.0.6"], "conditions": {"ready": false}},
                {"addresses": ["10.245.0.7"],
                 "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.245.0.8"]}
            ]
        }))
    }

    #[test]
    fn listeners_and_members_from_slices() {
        let s = web_slice();
        let other = slice(json!({
            "metadata": {"name": "db-x", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 1, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.245.0.9"]}]
        }));
        let lb = desired(&web(), &[&s, &other], &cidr()).expect("balanced");
        assert_eq!(lb.vip, "10.96.0.10".parse::<IpAddr>().expect("ip"));
        let tcp = &lb.listeners[&(Proto::Tcp, 80)];
        let got: Vec<(String, u16, u8)> = tcp
            .members
            .iter()
            .map(|((a, p), m)| (a.to_string(), *p, m.weight))
            .collect();
        assert_eq!(
            got,
            vec![
                ("10.245.0.5".into(), 8080, 1),
                ("10.245.0.7".into(), 8080, 0),
                ("10.245.0.8".into(), 8080, 1),
            ],
            "ready in, not ready out, terminating drained, other services ignored"
        );
        assert_eq!(
            tcp.members[&("10.245.0.5".parse().expect("ip"), 8080)].name,
            "web-1"
        );
        let udp = &lb.listeners[&(Proto::Udp, 53)];
        assert_eq!(udp.members.len(), 3);
        assert!(udp.members.keys().all(|(_, p)| *p == 5353));
        assert!(!tcp.source_ip);
        assert_eq!(lb.external, None);
    }

    #[test]
    fn load_balancer_type() {
        let mut s = web();
        if let Some(spec) = s.spec.as_mut() {
            spec.type_ = Some("LoadBalancer".into());
            spec.load_balancer_ip = Some("203.0.113.50".into());
            spec.load_balancer_source_ranges = Some(vec!["198.51.100.7/24".into()]);
            for p in spec.ports.iter_mut().flatten() {
                p.node_port = Some(30080);
            }
        }
        let lb = desired(&s, &[], &cidr()).expect("balanced");
        let ext = lb.external.expect("external");
        assert_eq!(ext.address, Some("203.0.113.50".parse().expect("ip")));
        assert_eq!(
            ext.source_ranges,
            vec!["198.51.100.0/24".parse::<IpNet>().expect("net")]
        );
        assert_eq!(node_ports(&s), vec![30080, 30080]);
        assert!(node_ports(&web()).is_empty());
        if let Some(spec) = s.spec.as_mut() {
            spec.load_balancer_source_ranges = Some(vec!["everyone".into()]);
        }
        assert!(
            matches!(desired(&s, &[], &cidr()), Err(NoLb::Refused(m)) if m.contains("everyone"))
        );
    }

    #[test]
    fn affinity_headless_and_refusals() {
        let mut s = web();
        if let Some(spec) = s.spec.as_mut() {
            spec.session_affinity = Some("ClientIP".into());
        }
        let lb = desired(&s, &[], &cidr()).expect("balanced");
        assert!(
            lb.listeners
                .values()
                .all(|p| p.source_ip && p.members.is_empty())
        );

        let mut headless = web();
        if let Some(spec) = headless.spec.as_mut() {
            spec.cluster_ip = Some("None".into());
        }
        assert_eq!(desired(&headless, &[], &cidr()), Err(NoLb::NotBalanced));
        let mut ext = web();
        if let Some(spec) = ext.spec.as_mut() {
            spec.type_ = Some("ExternalName".into());
        }
        assert_eq!(desired(&ext, &[], &cidr()), Err(NoLb::NotBalanced));
        let mut outside = web();
        if let Some(spec) = outside.spec.as_mut() {
            spec.cluster_ip = Some("10.0.0.1".into());
        }
        assert!(
            matches!(desired(&outside, &[], &cidr()), Err(NoLb::Refused(m)) if m.contains("outside"))
        );
    }

    #[test]
    fn unnamed_single_port_matches_unnamed_endpoint_port() {
        let s = svc(json!({
            "metadata": {"name": "one", "namespace": "ns", "uid": "u2"},
            "spec": {"clusterIP": "10.96.1.1", "ports": [{"port": 80}]}
        }));
        let sl = slice(json!({
            "metadata": {"name": "one-a", "namespace": "ns",
                         "labels": {"kubernetes.io/service-name": "one"}},
            "addressType": "IPv4",
            "ports": [{"port": 9376, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.1.2.3"]}]
        }));
        let wrong_ns = slice(json!({
            "metadata": {"name": "one-b", "namespace": "other",
                         "labels": {"kubernetes.io/service-name": "one"}},
            "addressType": "IPv4",
            "ports": [{"port": 9376, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.1.2.4"]}]
        }));
        let lb = desired(&s, &[&sl, &wrong_ns], &cidr()).expect("balanced");
        let m: Vec<_> = lb.listeners[&(Proto::Tcp, 80)]
            .members
            .keys()
            .cloned()
            .collect();
        assert_eq!(m, vec![("10.1.2.3".parse().expect("ip"), 9376)]);
    }
}
