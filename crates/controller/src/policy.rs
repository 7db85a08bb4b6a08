//! NetworkPolicy → security groups, as a pure translation.
//!
//! A policy becomes:
//! - its **main group** (`sg-<ns>-<name>`): every rule whose ports are numbers (or all
//!   ports), in the directions the policy isolates. The pods the policy selects are its
//!   members, which is what isolates them (they lose the cluster's allow-all group for
//!   those directions, see `membership`);
//! - one **named-port group** per resolution of a named *ingress* port (`http` → 8080):
//!   its rules are the ingress rules on that number, its members the selected pods whose
//!   containers resolve the name to that number. Pods that disagree on a name's number
//!   (`http` = 80 on some, 8080 on others) each open only their own number;
//! - rules whose remote is a **peer group**: a group without rules whose members are the
//!   ports of the pods a peer (podSelector / namespaceSelector, alone or combined)
//!   matches. A named *egress* port refines the peer by resolution: one peer group per
//!   (peer, number), holding the peers that resolve the name to that number, so again
//!   only the right number opens towards each peer.
//!
//! Pod churn is then membership (a port's `security_groups`), never rule updates; rules
//! change when a policy does, or when a named port gains a number nobody had.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::cidr;
use crate::labels::Selector;
use crate::view::{NsLabels, PodView, Proto};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn neutron(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    pub fn from_neutron(s: &str) -> Option<Direction> {
        match s {
            "ingress" => Some(Direction::Ingress),
            "egress" => Some(Direction::Egress),
            _ => None,
        }
    }
}

/// One resolution of a named port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct NamedPort {
    pub proto: Proto,
    pub name: String,
    pub number: u16,
}

impl NamedPort {
    /// `tcp:http:8080`, the value of the named-port tag.
    pub fn tag_value(&self) -> String {
        format!("{}:{}:{}", self.proto.neutron(), self.name, self.number)
    }

    pub fn parse_tag_value(s: &str) -> Option<NamedPort> {
        let mut it = s.splitn(3, ':');
        let proto = Proto::from_neutron(it.next()?)?;
        let name = it.next()?.to_string();
        let number = it.next()?.parse().ok()?;
        Some(NamedPort {
            proto,
            name,
            number,
        })
    }
}

/// A peer in canonical form: two peers that select the same pods the same way share
/// one peer group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PeerKey {
    /// `None`: only the policy's own namespace (then `namespace` is set).
    pub namespace_selector: Option<Selector>,
    pub namespace: Option<String>,
    /// `None`: every pod (of the selected namespaces).
    pub pod_selector: Option<Selector>,
    /// Only the pods that resolve this named port to this number.
    pub named_port: Option<NamedPort>,
}

impl PeerKey {
    /// Every pod of every namespace.
    pub fn everyone() -> PeerKey {
        PeerKey {
            namespace_selector: Some(Selector::everything()),
            namespace: None,
            pod_selector: None,
            named_port: None,
        }
    }

    pub fn matches(&self, pod: &PodView, ns: &NsLabels) -> bool {
        let ns_ok = match &self.namespace_selector {
            Some(s) => {
                let empty = Default::default();
                s.matches(ns.get(&pod.namespace).unwrap_or(&empty))
            }
            None => self.namespace.as_deref() == Some(pod.namespace.as_str()),
        };
        ns_ok
            && self
                .pod_selector
                .as_ref()
                .is_none_or(|s| s.matches(&pod.labels))
            && self
                .named_port
                .as_ref()
                .is_none_or(|np| pod.named_port(np.proto, &np.name) == Some(np.number))
    }

    fn with_port(&self, np: NamedPort) -> PeerKey {
        PeerKey {
            named_port: Some(np),
            ..self.clone()
        }
    }

    /// The group's identity in Neutron (its peer tag): a hash of the canonical JSON.
    pub fn hash(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        let digest = Sha256::digest(json.as_bytes());
        digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
    }

    /// A readable description (the group's, cut to Neutron's 255 characters).
    pub fn describe(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_default();
        if s.len() > 255 {
            let mut cut = 252;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s.push_str("...");
        }
        s
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Remote {
    /// Anywhere (both families).
    Any,
    Cidr(IpNet),
    Peer(PeerKey),
}

/// A rule before its peer groups have ids.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleTemplate {
    pub direction: Direction,
    /// `None`: every protocol (and then every port).
    pub proto: Option<Proto>,
    /// `None`: every port of `proto`.
    pub ports: Option<(u16, u16)>,
    pub remote: Remote,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EtherType {
    V4,
    V6,
}

impl EtherType {
    pub fn neutron(self) -> &'static str {
        match self {
            EtherType::V4 => "IPv4",
            EtherType::V6 => "IPv6",
        }
    }

    pub fn from_neutron(s: &str) -> Option<EtherType> {
        match s {
            "IPv4" => Some(EtherType::V4),
            "IPv6" => Some(EtherType::V6),
            _ => None,
        }
    }

    fn of(net: &IpNet) -> EtherType {
        match net {
            IpNet::V4(_) => EtherType::V4,
            IpNet::V6(_) => EtherType::V6,
        }
    }
}

/// A security group rule as Neutron holds it (what rules are compared by).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleSpec {
    pub direction: Direction,
    pub ethertype: EtherType,
    pub protocol: Option<Proto>,
    pub port_min: Option<u16>,
    pub port_max: Option<u16>,
    pub remote_ip_prefix: Option<IpNet>,
    pub remote_group_id: Option<String>,
}

impl RuleSpec {
    /// The body of `POST /v2.0/security-group-rules` for group `sg`.
    pub fn body(&self, sg: &str) -> serde_json::Value {
        serde_json::json!({
            "security_group_id": sg,
            "direction": self.direction.neutron(),
            "ethertype": self.ethertype.neutron(),
            "protocol": self.protocol.map(Proto::neutron),
            "port_range_min": self.port_min,
            "port_range_max": self.port_max,
            "remote_ip_prefix": self.remote_ip_prefix.map(|n| n.to_string()),
            "remote_group_id": self.remote_group_id,
        })
    }
}

/// What a policy becomes (see the module's documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyPlan {
    pub namespace: String,
    pub pod_selector: Selector,
    /// The directions the policy isolates (policyTypes, explicit or implied).
    pub ingress: bool,
    pub egress: bool,
    pub main: BTreeSet<RuleTemplate>,
    /// Ingress rules per resolution of a named port.
    pub named: BTreeMap<NamedPort, BTreeSet<RuleTemplate>>,
    /// What was left out and why (reported as an Event on the policy).
    pub warnings: Vec<String>,
}

impl PolicyPlan {
    /// Every peer group the rules name.
    pub fn peers(&self) -> BTreeSet<PeerKey> {
        self.main
            .iter()
            .chain(self.named.values().flatten())
            .filter_map(|r| match &r.remote {
                Remote::Peer(k) => Some(k.clone()),
                _ => None,
            })
            .collect()
    }

    /// Whether the policy selects this pod.
    pub fn selects(&self, pod: &PodView) -> bool {
        pod.namespace == self.namespace && self.pod_selector.matches(&pod.labels)
    }

    /// Whether some rule uses a named port (its plan then depends on the pods' ports).
    pub fn uses_named_ports(&self) -> bool {
        !self.named.is_empty()
    }
}

enum PeerSpec {
    Any,
    Cidrs(Vec<IpNet>),
    Pods(PeerKey),
}

enum PortSpec {
    All,
    Range(Proto, Option<(u16, u16)>),
    Named(Proto, String),
}

/// What a policy isolates, from its spec alone: which pods, in which directions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isolation {
    pub namespace: String,
    pub pod_selector: Selector,
    pub ingress: bool,
    pub egress: bool,
}

impl Isolation {
    pub fn selects(&self, pod: &PodView) -> bool {
        pod.namespace == self.namespace && self.pod_selector.matches(&pod.labels)
    }
}

/// The policy's pod selector and directions (policyTypes, explicit or implied).
pub fn isolation(np: &NetworkPolicy) -> Result<Isolation, String> {
    let namespace = np
        .metadata
        .namespace
        .clone()
        .ok_or("the policy has no namespace")?;
    let spec = np.spec.as_ref();
    let pod_selector = Selector::from_k8s(
        &spec
            .and_then(|s| s.pod_selector.clone())
            .unwrap_or_default(),
    )
    .map_err(|e| format!("podSelector: {e}"))?;
    let (ingress, egress) = match spec.and_then(|s| s.policy_types.as_ref()) {
        Some(types) if !types.is_empty() => (
            types.iter().any(|t| t == "Ingress"),
            types.iter().any(|t| t == "Egress"),
        ),
        // The API server's default: Ingress, and Egress when there are egress rules.
        _ => (
            true,
            spec.and_then(|s| s.egress.as_ref())
                .is_some_and(|e| !e.is_empty()),
        ),
    };
    Ok(Isolation {
        namespace,
        pod_selector,
        ingress,
        egress,
    })
}

/// Translates a policy. `pods` are every pod (named ports resolve against the pods
/// concerned: the selected ones for ingress, the peers for egress); `ns` the namespaces'
/// labels. An error means the policy's own pod selector is unusable: nothing can be
/// enforced (the caller reports it).
pub fn plan(np: &NetworkPolicy, pods: &[PodView], ns: &NsLabels) -> Result<PolicyPlan, String> {
    let Isolation {
        namespace,
        pod_selector,
        ingress,
        egress,
    } = isolation(np)?;
    let spec = np.spec.clone().unwrap_or_default();
    let mut plan = PolicyPlan {
        namespace: namespace.clone(),
        pod_selector,
        ingress,
        egress,
        main: BTreeSet::new(),
        named: BTreeMap::new(),
        warnings: Vec::new(),
    };
    let live: Vec<&PodView> = pods.iter().filter(|p| p.needs_port()).collect();
    let selected: Vec<&PodView> = live.iter().copied().filter(|p| plan.selects(p)).collect();

    if ingress {
        for (i, rule) in spec.ingress.iter().flatten().enumerate() {
            let peers = peers(rule.from.as_deref(), &namespace, &mut plan.warnings, i);
            let ports = ports(rule.ports.as_deref(), &mut plan.warnings, i);
            for port in &ports {
                for peer in &peers {
                    let remotes = match peer {
                        PeerSpec::Any => vec![Remote::Any],
                        PeerSpec::Cidrs(c) => c.iter().map(|n| Remote::Cidr(*n)).collect(),
                        PeerSpec::Pods(k) => vec![Remote::Peer(k.clone())],
                    };
                    match port {
                        PortSpec::All | PortSpec::Range(..) => {
                            let (proto, range) = split(port);
                            for remote in remotes {
                                plan.main.insert(RuleTemplate {
                                    direction: Direction::Ingress,
                                    proto,
                                    ports: range,
                                    remote,
                                });
                            }
                        }
                        PortSpec::Named(proto, name) => {
                            let numbers: BTreeSet<u16> = selected
                                .iter()
                                .filter_map(|p| p.named_port(*proto, name))
                                .collect();
                            for n in numbers {
                                let key = NamedPort {
                                    proto: *proto,
                                    name: name.clone(),
                                    number: n,
                                };
                                let set = plan.named.entry(key).or_default();
                                for remote in &remotes {
                                    set.insert(RuleTemplate {
                                        direction: Direction::Ingress,
                                        proto: Some(*proto),
                                        ports: Some((n, n)),
                                        remote: remote.clone(),
                                    });
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    if egress {
        for (i, rule) in spec.egress.iter().flatten().enumerate() {
            let peers = peers(rule.to.as_deref(), &namespace, &mut plan.warnings, i);
            let ports = ports(rule.ports.as_deref(), &mut plan.warnings, i);
            for port in &ports {
                for peer in &peers {
                    match port {
                        PortSpec::All | PortSpec::Range(..) => {
                            let (proto, range) = split(port);
                            let remotes = match peer {
                                PeerSpec::Any => vec![Remote::Any],
                                PeerSpec::Cidrs(c) => c.iter().map(|n| Remote::Cidr(*n)).collect(),
                                PeerSpec::Pods(k) => vec![Remote::Peer(k.clone())],
                            };
                            for remote in remotes {
                                plan.main.insert(RuleTemplate {
                                    direction: Direction::Egress,
                                    proto,
                                    ports: range,
                                    remote,
                                });
                            }
                        }
                        PortSpec::Named(proto, name) => {
                            // A named port is a pod's: towards "anywhere" it means towards
                            // every pod that has it; an ipBlock has no named ports.
                            let base = match peer {
                                PeerSpec::Any => PeerKey::everyone(),
                                PeerSpec::Pods(k) => k.clone(),
                                PeerSpec::Cidrs(_) => {
                                    plan.warnings.push(format!(
                                        "egress rule {i}: named port {name:?} cannot apply to an ipBlock peer"
                                    ));
                                    continue;
                                }
                            };
                            let numbers: BTreeSet<u16> = live
                                .iter()
                                .filter(|p| base.matches(p, ns))
                                .filter_map(|p| p.named_port(*proto, name))
                                .collect();
                            for n in numbers {
                                let np = NamedPort {
                                    proto: *proto,
                                    name: name.clone(),
                                    number: n,
                                };
                                plan.main.insert(RuleTemplate {
                                    direction: Direction::Egress,
                                    proto: Some(*proto),
                                    ports: Some((n, n)),
                                    remote: Remote::Peer(base.with_port(np)),
                                });
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(plan)
}

fn split(port: &PortSpec) -> (Option<Proto>, Option<(u16, u16)>) {
    match port {
        PortSpec::Range(p, r) => (Some(*p), *r),
        _ => (None, None),
    }
}

fn selector(s: &LabelSelector, what: &str, warnings: &mut Vec<String>) -> Option<Selector> {
    match Selector::from_k8s(s) {
        Ok(s) => Some(s),
        Err(e) => {
            warnings.push(format!("{what}: {e}"));
            None
        }
    }
}

/// The peers of a rule; none listed = anywhere. A peer that cannot be understood is
/// left out (fail closed) with a warning.
fn peers(
    list: Option<&[NetworkPolicyPeer]>,
    namespace: &str,
    warnings: &mut Vec<String>,
    rule: usize,
) -> Vec<PeerSpec> {
    let Some(list) = list.filter(|l| !l.is_empty()) else {
        return vec![PeerSpec::Any];
    };
    let mut out = Vec::new();
    for peer in list {
        if let Some(block) = &peer.ip_block {
            let base = match block.cidr.parse::<IpNet>() {
                Ok(n) => n,
                Err(_) => {
                    warnings.push(format!("rule {rule}: bad ipBlock cidr {:?}", block.cidr));
                    continue;
                }
            };
            let mut excepts = Vec::new();
            for e in block.except.iter().flatten() {
                match e.parse::<IpNet>() {
                    Ok(n) => excepts.push(n),
                    Err(_) => warnings.push(format!("rule {rule}: bad ipBlock except {e:?}")),
                }
            }
            out.push(PeerSpec::Cidrs(cidr::subtract(base, &excepts)));
            continue;
        }
        let what = format!("rule {rule}");
        let ns_sel = match &peer.namespace_selector {
            Some(s) => match selector(s, &format!("{what} namespaceSelector"), warnings) {
                Some(s) => Some(s),
                None => continue,
            },
            None => None,
        };
        let pod_sel = match &peer.pod_selector {
            Some(s) => match selector(s, &format!("{what} podSelector"), warnings) {
                Some(s) => Some(s),
                None => continue,
            },
            None => None,
        };
        if ns_sel.is_none() && pod_sel.is_none() {
            warnings.push(format!("{what}: a peer with no selector and no ipBlock"));
            continue;
        }
        let pod_selector = pod_sel.filter(|s| !s.is_everything());
        let key = match ns_sel {
            Some(s) => PeerKey {
                namespace_selector: Some(s),
                namespace: None,
                pod_selector,
                named_port: None,
            },
            None => PeerKey {
                namespace_selector: None,
                namespace: Some(namespace.to_string()),
                pod_selector,
                named_port: None,
            },
        };
        out.push(PeerSpec::Pods(key));
    }
    out
}

/// The ports of a rule; none listed = every port of every protocol.
fn ports(
    list: Option<&[NetworkPolicyPort]>,
    warnings: &mut Vec<String>,
    rule: usize,
) -> Vec<PortSpec> {
    let Some(list) = list.filter(|l| !l.is_empty()) else {
        return vec![PortSpec::All];
    };
    let mut out = Vec::new();
    for p in list {
        let Some(proto) = Proto::from_k8s(p.protocol.as_deref()) else {
            warnings.push(format!(
                "rule {rule}: unsupported protocol {:?}",
                p.protocol.as_deref().unwrap_or_default()
            ));
            continue;
        };
        match &p.port {
            None => out.push(PortSpec::Range(proto, None)),
            Some(IntOrString::Int(n)) => {
                let Some(lo) = u16::try_from(*n).ok().filter(|n| *n != 0) else {
                    warnings.push(format!("rule {rule}: port {n} is out of range"));
                    continue;
                };
                let hi = match p.end_port {
                    None => lo,
                    Some(e) => match u16::try_from(e).ok().filter(|e| *e >= lo) {
                        Some(e) => e,
                        None => {
                            warnings.push(format!("rule {rule}: endPort {e} is below port {lo}"));
                            continue;
                        }
                    },
                };
                out.push(PortSpec::Range(proto, Some((lo, hi))));
            }
            Some(IntOrString::String(name)) => {
                out.push(PortSpec::Named(proto, name.clone()));
            }
        }
    }
    out
}

/// Rules with ids for their peer groups. A peer whose group does not exist (yet) gets
/// no rule: fail closed until it does.
pub fn materialize<'a>(
    templates: impl IntoIterator<Item = &'a RuleTemplate>,
    group_of: impl Fn(&PeerKey) -> Option<String>,
) -> BTreeSet<RuleSpec> {
    let mut out = BTreeSet::new();
    for t in templates {
        let (min, max) = match t.ports {
            Some((a, b)) => (Some(a), Some(b)),
            None => (None, None),
        };
        let rule = |ethertype, prefix, group| RuleSpec {
            direction: t.direction,
            ethertype,
            protocol: t.proto,
            port_min: min,
            port_max: max,
            remote_ip_prefix: prefix,
            remote_group_id: group,
        };
        match &t.remote {
            Remote::Any => {
                out.insert(rule(EtherType::V4, None, None));
                out.insert(rule(EtherType::V6, None, None));
            }
            Remote::Cidr(n) => {
                // A /0 is "anywhere of this family": Neutron shows it without a prefix.
                let prefix = (n.prefix_len() != 0).then_some(*n);
                out.insert(rule(EtherType::of(n), prefix, None));
            }
            Remote::Peer(k) => {
                if let Some(g) = group_of(k) {
                    out.insert(rule(EtherType::V4, None, Some(g.clone())));
                    out.insert(rule(EtherType::V6, None, Some(g)));
                }
            }
        }
    }
    out
}

/// The rules of the cluster's allow-all group for one direction.
pub fn allow_all_rules(direction: Direction) -> BTreeSet<RuleSpec> {
    let t = RuleTemplate {
        direction,
        proto: None,
        ports: None,
        remote: Remote::Any,
    };
    materialize([&t], |_| None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::{labels, pod, sel};
    use serde_json::json;

    fn with_port(mut p: PodView, proto: Proto, name: &str, n: u16) -> PodView {
        p.named_ports.insert((proto, name.into()), n);
        p
    }

    fn np(ns: &str, spec: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": "p", "uid": "pu"},
            "spec": spec
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn nss(v: &[(&str, &[(&str, &str)])]) -> NsLabels {
        v.iter().map(|(n, l)| (n.to_string(), labels(l))).collect()
    }

    fn ok(np: &NetworkPolicy, pods: &[PodView], ns: &NsLabels) -> PolicyPlan {
        plan(np, pods, ns).unwrap_or_else(|e| panic!("{e}"))
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    fn ns_key(ns: &str, pod: Option<Selector>) -> PeerKey {
        PeerKey {
            namespace_selector: None,
            namespace: Some(ns.into()),
            pod_selector: pod,
            named_port: None,
        }
    }

    #[test]
    fn default_deny_ingress() {
        let p = ok(
            &np("a", json!({"podSelector": {}, "policyTypes": ["Ingress"]})),
            &[],
            &NsLabels::new(),
        );
        assert!(p.ingress && !p.egress);
        assert!(p.main.is_empty() && p.named.is_empty());
        assert!(p.selects(&pod("a", "x", &[])));
        assert!(!p.selects(&pod("b", "x", &[])));
    }

    #[test]
    fn implied_policy_types() {
        // No policyTypes: Ingress, plus Egress when there are egress rules.
        let p = ok(&np("a", json!({"podSelector": {}})), &[], &NsLabels::new());
        assert!(p.ingress && !p.egress);
        let p = ok(
            &np("a", json!({"podSelector": {}, "egress": [{}]})),
            &[],
            &NsLabels::new(),
        );
        assert!(p.ingress && p.egress);
        let p = ok(
            &np("a", json!({"podSelector": {}, "egress": []})),
            &[],
            &NsLabels::new(),
        );
        assert!(!p.egress);
        // Explicit Egress only: default deny egress, ingress rules ignored.
        let p = ok(
            &np(
                "a",
                json!({"podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}]}),
            ),
            &[],
            &NsLabels::new(),
        );
        assert!(!p.ingress && p.egress && p.main.is_empty());
    }

    #[test]
    fn allow_all_ingress_rule() {
        let p = ok(&np("a", json!({"ingress": [{}]})), &[], &NsLabels::new());
        let want: BTreeSet<_> = [RuleTemplate {
            direction: Direction::Ingress,
            proto: None,
            ports: None,
            remote: Remote::Any,
        }]
        .into();
        assert_eq!(p.main, want);
        let rules = materialize(&p.main, |_| None);
        assert_eq!(rules.len(), 2, "IPv4 and IPv6");
        assert!(rules.iter().all(|r| r.remote_ip_prefix.is_none()
            && r.remote_group_id.is_none()
            && r.protocol.is_none()));
    }

    #[test]
    fn pod_and_namespace_selectors() {
        let p = ok(
            &np(
                "a",
                json!({"podSelector": {"matchLabels": {"app": "db"}},
                "ingress": [{"from": [
                    {"podSelector": {"matchLabels": {"role": "web"}}},
                    {"namespaceSelector": {"matchLabels": {"team": "x"}}},
                    {"namespaceSelector": {"matchLabels": {"team": "y"}},
                     "podSelector": {"matchLabels": {"role": "api"}}},
                    {"podSelector": {}},
                    {"namespaceSelector": {}, "podSelector": {}}
                ]}]}),
            ),
            &[],
            &NsLabels::new(),
        );
        let peers = p.peers();
        assert_eq!(peers.len(), 5);
        assert!(peers.contains(&ns_key("a", Some(sel(&[("role", "web")])))));
        assert!(
            peers.contains(&ns_key("a", None)),
            "podSelector {{}} = the namespace"
        );
        assert!(
            peers.contains(&PeerKey::everyone()),
            "both empty = everyone"
        );
        let combined = PeerKey {
            namespace_selector: Some(sel(&[("team", "y")])),
            namespace: None,
            pod_selector: Some(sel(&[("role", "api")])),
            named_port: None,
        };
        assert!(peers.contains(&combined));

        let ns = nss(&[("a", &[]), ("b", &[("team", "y")]), ("c", &[("team", "x")])]);
        let api_b = pod("b", "p", &[("role", "api")]);
        let api_a = pod("a", "p", &[("role", "api")]);
        let web_b = pod("b", "w", &[("role", "web")]);
        assert!(combined.matches(&api_b, &ns));
        assert!(!combined.matches(&api_a, &ns), "wrong namespace");
        assert!(!combined.matches(&web_b, &ns), "wrong pod");
        let team_x = PeerKey {
            namespace_selector: Some(sel(&[("team", "x")])),
            namespace: None,
            pod_selector: None,
            named_port: None,
        };
        assert!(team_x.matches(&pod("c", "any", &[]), &ns));
        assert!(!team_x.matches(&pod("b", "any", &[]), &ns));
        assert!(!team_x.matches(&pod("zz", "unknown-ns", &[]), &ns));
        assert!(ns_key("a", None).matches(&api_a, &ns));
        assert!(!ns_key("a", None).matches(&api_b, &ns));
        assert!(PeerKey::everyone().matches(&pod("zz", "q", &[]), &ns));

        // Each peer group gets its two rules (IPv4 and IPv6).
        let rules = materialize(&p.main, |k| Some(k.hash()));
        assert_eq!(rules.len(), 10);
        let missing = materialize(&p.main, |k| (k != &combined).then(|| k.hash()));
        assert_eq!(missing.len(), 8, "no rule for a peer without a group");
    }

    #[test]
    fn same_peer_same_group_in_any_policy() {
        let a = ok(
            &np(
                "a",
                json!({"ingress": [{"from": [{"podSelector": {"matchLabels": {"x": "1", "y": "2"}}}]}]}),
            ),
            &[],
            &NsLabels::new(),
        );
        let b = ok(
            &np(
                "a",
                json!({"podSelector": {"matchLabels": {"z": "1"}},
                        "ingress": [{"from": [{"podSelector": {"matchExpressions": [
                            {"key": "y", "operator": "In", "values": ["2"]},
                            {"key": "x", "operator": "In", "values": ["1"]}]}}]}]}),
            ),
            &[],
            &NsLabels::new(),
        );
        assert_eq!(a.peers(), b.peers());
        let hashes: BTreeSet<String> = a.peers().iter().map(PeerKey::hash).collect();
        assert_eq!(hashes, b.peers().iter().map(PeerKey::hash).collect());
        // ...but the same pod selector in another namespace is another peer.
        let c = ok(
            &np(
                "other",
                json!({"ingress": [{"from": [{"podSelector": {"matchLabels": {"x": "1", "y": "2"}}}]}]}),
            ),
            &[],
            &NsLabels::new(),
        );
        assert_ne!(a.peers(), c.peers());
    }

    #[test]
    fn ip_block_with_except() {
        let p = ok(
            &np(
                "a",
                json!({"policyTypes": ["Ingress", "Egress"],
                "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/24", "except": ["10.0.0.128/25"]}}],
                              "ports": [{"port": 80}]}],
                "egress": [{"to": [{"ipBlock": {"cidr": "fd00::/64", "except": ["fd00::/65"]}}]}]}),
            ),
            &[],
            &NsLabels::new(),
        );
        let rules = materialize(&p.main, |_| None);
        let want: BTreeSet<RuleSpec> = [
            RuleSpec {
                direction: Direction::Ingress,
                ethertype: EtherType::V4,
                protocol: Some(Proto::Tcp),
                port_min: Some(80),
                port_max: Some(80),
                remote_ip_prefix: Some(net("10.0.0.0/25")),
                remote_group_id: None,
            },
            RuleSpec {
                direction: Direction::Egress,
                ethertype: EtherType::V6,
                protocol: None,
                port_min: None,
                port_max: None,
                remote_ip_prefix: Some(net("fd00::8000:0:0:0/65")),
                remote_group_id: None,
            },
        ]
        .into();
        assert_eq!(rules, want);
    }

    #[test]
    fn ports_protocols_and_end_port() {
        let p = ok(
            &np(
                "a",
                json!({"ingress": [{"ports": [
                    {"port": 80},
                    {"protocol": "UDP", "port": 5000, "endPort": 5010},
                    {"protocol": "SCTP"},
                    {"protocol": "ICMP", "port": 1},
                    {"port": 90, "endPort": 85}
                ]}]}),
            ),
            &[],
            &NsLabels::new(),
        );
        type ProtoPorts = (Option<Proto>, Option<(u16, u16)>);
        let got: BTreeSet<ProtoPorts> = p.main.iter().map(|r| (r.proto, r.ports)).collect();
        let want: BTreeSet<_> = [
            (Some(Proto::Tcp), Some((80, 80))),
            (Some(Proto::Udp), Some((5000, 5010))),
            (Some(Proto::Sctp), None),
        ]
        .into();
        assert_eq!(got, want);
        assert_eq!(p.warnings.len(), 2, "{:?}", p.warnings);
        let body = materialize(&p.main, |_| None)
            .into_iter()
            .find(|r| r.protocol == Some(Proto::Udp) && r.ethertype == EtherType::V4)
            .map(|r| r.body("sg1"));
        assert_eq!(
            body,
            Some(
                json!({"security_group_id": "sg1", "direction": "ingress", "ethertype": "IPv4",
                        "protocol": "udp", "port_range_min": 5000, "port_range_max": 5010,
                        "remote_ip_prefix": null, "remote_group_id": null})
            )
        );
    }

    #[test]
    fn named_ingress_ports_split_by_resolution() {
        let pods = vec![
            with_port(pod("a", "w1", &[("app", "web")]), Proto::Tcp, "http", 8080),
            with_port(pod("a", "w2", &[("app", "web")]), Proto::Tcp, "http", 8080),
            with_port(pod("a", "w3", &[("app", "web")]), Proto::Tcp, "http", 80),
            // Not selected: its number must not open anything.
            with_port(pod("a", "db", &[("app", "db")]), Proto::Tcp, "http", 9999),
            pod("a", "w4", &[("app", "web")]),
        ];
        let p = ok(
            &np(
                "a",
                json!({"podSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                              "ports": [{"port": "http"}, {"port": 443}]}]}),
            ),
            &pods,
            &NsLabels::new(),
        );
        assert!(p.uses_named_ports());
        let keys: Vec<u16> = p.named.keys().map(|k| k.number).collect();
        assert_eq!(keys, vec![80, 8080]);
        for (k, rules) in &p.named {
            assert_eq!(rules.len(), 1);
            assert!(rules.iter().all(|r| r.ports == Some((k.number, k.number))
                && r.direction == Direction::Ingress
                && matches!(&r.remote, Remote::Peer(pk) if pk.pod_selector == Some(sel(&[("role", "client")])))));
        }
        // The number 443 is in the main group.
        assert!(p.main.iter().all(|r| r.ports == Some((443, 443))));
        assert_eq!(p.main.len(), 1);
        let np80 = NamedPort {
            proto: Proto::Tcp,
            name: "http".into(),
            number: 80,
        };
        assert_eq!(np80.tag_value(), "tcp:http:80");
        assert_eq!(NamedPort::parse_tag_value("tcp:http:80"), Some(np80));
        assert_eq!(NamedPort::parse_tag_value("tcp:http"), None);
    }

    #[test]
    fn named_egress_ports_refine_the_peer() {
        let ns = nss(&[("a", &[]), ("b", &[("kind", "backend")])]);
        let pods = vec![
            with_port(pod("b", "s1", &[("app", "svc")]), Proto::Tcp, "api", 7000),
            with_port(pod("b", "s2", &[("app", "svc")]), Proto::Tcp, "api", 7001),
            with_port(pod("a", "s3", &[("app", "svc")]), Proto::Tcp, "api", 7002),
            with_port(pod("b", "o", &[("app", "other")]), Proto::Tcp, "api", 7003),
        ];
        let p = ok(
            &np(
                "a",
                json!({"policyTypes": ["Egress"],
                "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"kind": "backend"}},
                                    "podSelector": {"matchLabels": {"app": "svc"}}},
                                   {"ipBlock": {"cidr": "192.0.2.0/24"}}],
                            "ports": [{"port": "api"}]},
                           {"ports": [{"port": "api"}]}]}),
            ),
            &pods,
            &ns,
        );
        let mut by_number: BTreeMap<u16, Vec<PeerKey>> = BTreeMap::new();
        for r in &p.main {
            let (Some((lo, _)), Remote::Peer(k)) = (r.ports, &r.remote) else {
                panic!("unexpected rule {r:?}");
            };
            by_number.entry(lo).or_default().push(k.clone());
        }
        // First rule: 7000 and 7001 (the selected backends); second rule ("anywhere"):
        // every pod's number, each towards its own refined peer.
        assert_eq!(
            by_number.keys().copied().collect::<Vec<_>>(),
            vec![7000, 7001, 7002, 7003]
        );
        assert_eq!(by_number[&7000].len(), 2);
        assert_eq!(by_number[&7002].len(), 1);
        let k7001 = by_number[&7001]
            .iter()
            .find(|k| k.namespace_selector != Some(Selector::everything()))
            .cloned()
            .unwrap_or_else(|| panic!("no refined backend peer"));
        assert!(k7001.matches(&pods[1], &ns));
        assert!(!k7001.matches(&pods[0], &ns), "7000 is another group");
        assert_eq!(p.warnings.len(), 1, "ipBlock with a named port");
    }

    #[test]
    fn unusable_peers_fail_closed() {
        let p = ok(
            &np(
                "a",
                json!({"ingress": [{"from": [
                    {"podSelector": {"matchExpressions": [{"key": "k", "operator": "Bogus"}]}},
                    {"ipBlock": {"cidr": "not-a-cidr"}}
                ]}]}),
            ),
            &[],
            &NsLabels::new(),
        );
        assert!(p.main.is_empty(), "{:?}", p.main);
        assert_eq!(p.warnings.len(), 2);
        assert!(
            plan(
                &np(
                    "a",
                    json!({"podSelector": {"matchExpressions": [{"key": "k", "operator": "In"}]}})
                ),
                &[],
                &NsLabels::new()
            )
            .is_err()
        );
    }

    #[test]
    fn hashes_are_stable_and_distinct() {
        let a = ns_key("a", Some(sel(&[("x", "1")])));
        assert_eq!(a.hash(), a.clone().hash());
        assert_eq!(a.hash().len(), 32);
        assert_ne!(a.hash(), ns_key("b", Some(sel(&[("x", "1")]))).hash());
        let refined = a.with_port(NamedPort {
            proto: Proto::Tcp,
            name: "http".into(),
            number: 80,
        });
        assert_ne!(a.hash(), refined.hash());
        assert!(a.describe().len() <= 255);
    }

    #[test]
    fn whole_family_blocks_compare_as_neutron_shows_them() {
        let p = ok(
            &np(
                "a",
                json!({"ingress": [{"from": [{"ipBlock": {"cidr": "0.0.0.0/0",
                                                           "except": ["10.0.0.0/8"]}},
                                             {"ipBlock": {"cidr": "::/0"}}]}]}),
            ),
            &[],
            &NsLabels::new(),
        );
        let rules = materialize(&p.main, |_| None);
        let v6: Vec<_> = rules
            .iter()
            .filter(|r| r.ethertype == EtherType::V6)
            .collect();
        assert_eq!(v6.len(), 1);
        assert_eq!(v6[0].remote_ip_prefix, None, "::/0 is no prefix");
        let v4 = rules
            .iter()
            .filter(|r| r.ethertype == EtherType::V4)
            .count();
        assert_eq!(v4, 8, "0.0.0.0/0 minus 10/8: eight blocks");
    }

    #[test]
    fn allow_all() {
        let r = allow_all_rules(Direction::Egress);
        assert_eq!(r.len(), 2);
        assert!(r.iter().all(|r| r.direction == Direction::Egress));
    }
}
