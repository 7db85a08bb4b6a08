//! What the controller needs of Kubernetes objects, read once from the API types: the
//! pure logic (policy plans, membership, GC) works on these views.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use serde::Serialize;

use crate::labels::Labels;

/// The annotation that shows a pod's port.
pub const PORT_ANNOTATION: &str = "kuryr.openstack.org/port-id";
/// A namespace's network and subnet (namespace-subnet mode).
pub const NETWORK_ANNOTATION: &str = "kuryr.openstack.org/network-id";
pub const SUBNET_ANNOTATION: &str = "kuryr.openstack.org/subnet-id";
/// A NetworkPolicy's security group.
pub const GROUP_ANNOTATION: &str = "kuryr.openstack.org/security-group-id";

/// A protocol of a NetworkPolicy port, as Neutron names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    /// Kubernetes' name (`TCP`, `UDP`, `SCTP`); absent means TCP.
    pub fn from_k8s(p: Option<&str>) -> Option<Proto> {
        match p.unwrap_or("TCP") {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            "SCTP" => Some(Proto::Sctp),
            _ => None,
        }
    }

    /// Neutron's name.
    pub fn neutron(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }

    /// Neutron's name or IANA number, as a rule may show it.
    pub fn from_neutron(p: &str) -> Option<Proto> {
        match p.to_ascii_lowercase().as_str() {
            "tcp" | "6" => Some(Proto::Tcp),
            "udp" | "17" => Some(Proto::Udp),
            "sctp" | "132" => Some(Proto::Sctp),
            _ => None,
        }
    }
}

/// A pod as the controller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: Labels,
    pub node: Option<String>,
    pub host_network: bool,
    /// Succeeded or Failed: its containers are gone for good.
    pub terminal: bool,
    /// Named container ports: (protocol, name) → number.
    pub named_ports: BTreeMap<(Proto, String), u16>,
    /// The `kuryr.openstack.org/port-id` annotation.
    pub port_annotation: Option<String>,
}

impl PodView {
    /// `None` for an object without namespace, name or uid (never from the API).
    pub fn from_pod(p: &Pod) -> Option<PodView> {
        let md = &p.metadata;
        let spec = p.spec.as_ref();
        let mut named_ports = BTreeMap::new();
        if let Some(spec) = spec {
            // Sidecars (init containers that keep running) have ports too.
            let all = spec
                .containers
                .iter()
                .chain(spec.init_containers.iter().flatten());
            for c in all {
                for cp in c.ports.iter().flatten() {
                    let (Some(name), Some(proto), Ok(num)) = (
                        cp.name.as_deref(),
                        Proto::from_k8s(cp.protocol.as_deref()),
                        u16::try_from(cp.container_port),
                    ) else {
                        continue;
                    };
                    if num != 0 {
                        named_ports.entry((proto, name.to_string())).or_insert(num);
                    }
                }
            }
        }
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        Some(PodView {
            namespace: md.namespace.clone()?,
            name: md.name.clone()?,
            uid: md.uid.clone()?,
            labels: md.labels.clone().unwrap_or_default(),
            node: spec
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty()),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            terminal: matches!(phase, Some("Succeeded") | Some("Failed")),
            named_ports,
            port_annotation: md
                .annotations
                .as_ref()
                .and_then(|a| a.get(PORT_ANNOTATION).cloned()),
        })
    }

    /// Scheduled, on the pod network, and not finished: it has (or gets) a port.
    pub fn needs_port(&self) -> bool {
        self.node.is_some() && !self.host_network && !self.terminal
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn named_port(&self, proto: Proto, name: &str) -> Option<u16> {
        self.named_ports.get(&(proto, name.to_string())).copied()
    }
}

/// Namespace name → its labels.
pub type NsLabels = HashMap<String, Labels>;

pub fn namespace_labels<'a>(nss: impl IntoIterator<Item = &'a Namespace>) -> NsLabels {
    nss.into_iter()
        .filter_map(|n| {
            Some((
                n.metadata.name.clone()?,
                n.metadata.labels.clone().unwrap_or_default(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn pod_view() {
        let p = pod(json!({
            "metadata": {"namespace": "ns", "name": "web-1", "uid": "u1",
                         "labels": {"app": "web"},
                         "annotations": {"kuryr.openstack.org/port-id": "p1"}},
            "spec": {"nodeName": "n1",
                     "containers": [{"name": "c", "ports": [
                         {"name": "http", "containerPort": 8080},
                         {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                         {"containerPort": 9000}]}],
                     "initContainers": [{"name": "side", "restartPolicy": "Always",
                         "ports": [{"name": "metrics", "containerPort": 9100}]}]},
            "status": {"phase": "Running"}
        }));
        let v = PodView::from_pod(&p).unwrap_or_else(|| panic!("no view"));
        assert!(v.needs_port());
        assert_eq!(v.key(), "ns/web-1");
        assert_eq!(v.named_port(Proto::Tcp, "http"), Some(8080));
        assert_eq!(v.named_port(Proto::Udp, "dns"), Some(53));
        assert_eq!(v.named_port(Proto::Tcp, "dns"), None);
        assert_eq!(v.named_port(Proto::Tcp, "metrics"), Some(9100));
        assert_eq!(v.named_ports.len(), 3);
        assert_eq!(v.port_annotation.as_deref(), Some("p1"));
    }

    #[test]
    fn who_needs_a_port() {
        let base = json!({"metadata": {"namespace": "ns", "name": "a", "uid": "u"},
                          "spec": {"containers": []}});
        let v = PodView::from_pod(&pod(base.clone())).unwrap_or_else(|| panic!());
        assert!(!v.needs_port(), "unscheduled");
        let mut s = base.clone();
        s["spec"]["nodeName"] = json!("n");
        s["spec"]["hostNetwork"] = json!(true);
        assert!(!PodView::from_pod(&pod(s.clone())).is_some_and(|v| v.needs_port()));
        s["spec"]["hostNetwork"] = json!(false);
        assert!(PodView::from_pod(&pod(s.clone())).is_some_and(|v| v.needs_port()));
        s["status"] = json!({"phase": "Succeeded"});
        assert!(!PodView::from_pod(&pod(s.clone())).is_some_and(|v| v.needs_port()));
        s["status"] = json!({"phase": "Pending"});
        assert!(PodView::from_pod(&pod(s)).is_some_and(|v| v.needs_port()));
        let mut nouid = base;
        nouid["metadata"].as_object_mut().map(|m| m.remove("uid"));
        assert!(PodView::from_pod(&pod(nouid)).is_none());
    }

    #[test]
    fn protocols() {
        assert_eq!(Proto::from_k8s(None), Some(Proto::Tcp));
        assert_eq!(Proto::from_k8s(Some("SCTP")), Some(Proto::Sctp));
        assert_eq!(Proto::from_k8s(Some("ICMP")), None);
        assert_eq!(Proto::from_neutron("6"), Some(Proto::Tcp));
        assert_eq!(Proto::from_neutron("UDP"), Some(Proto::Udp));
        assert_eq!(Proto::from_neutron("132"), Some(Proto::Sctp));
        assert_eq!(Proto::from_neutron("icmp"), None);
    }
}
