//! The tags that mark what the controller made and who owns it. Every object carries
//! `kuryr.k8s.cluster=<cluster>`; the other tags name its owner, so that a full pass can
//! tell which objects no Kubernetes object owns any more (the contract's GC by ownership).
//!
//! Neutron tags are 1 to 255 characters without `,` or `/`: values are cut to fit
//! (the uid tags, never longer than 255, are the authoritative owners).

pub const CLUSTER: &str = "kuryr.k8s.cluster=";
/// A pre-made port waiting in its (node, network) pool.
pub const POOL: &str = "kuryr.k8s.pool";
pub const POD_UID: &str = "kuryr.k8s.pod.uid=";
pub const POD_NAMESPACE: &str = "kuryr.k8s.pod.namespace=";
pub const POD_NAME: &str = "kuryr.k8s.pod.name=";
/// Networks and subnets of a namespace (namespace-subnet mode).
pub const NAMESPACE: &str = "kuryr.k8s.namespace=";
pub const POLICY_UID: &str = "kuryr.k8s.policy.uid=";
pub const POLICY_NAMESPACE: &str = "kuryr.k8s.policy.namespace=";
pub const POLICY_NAME: &str = "kuryr.k8s.policy.name=";
/// A policy's group for one resolution of a named ingress port: `<proto>:<name>:<number>`.
pub const NAMED_PORT: &str = "kuryr.k8s.named-port=";
/// A Service's load balancer and its listeners and pools.
pub const SERVICE_UID: &str = "kuryr.k8s.service.uid=";
pub const SERVICE_NAMESPACE: &str = "kuryr.k8s.service.namespace=";
pub const SERVICE_NAME: &str = "kuryr.k8s.service.name=";
/// A peer (selector) group: the hash of its canonical peer.
pub const PEER: &str = "kuryr.k8s.peer=";
/// The cluster's non-isolation groups: `ingress` or `egress`.
pub const ALLOW_ALL: &str = "kuryr.k8s.allow-all=";

/// The port name of a pool port.
pub const POOL_PORT_NAME: &str = "available-port";
/// `device_owner` of every port the controller makes.
pub const DEVICE_OWNER: &str = "compute:kuryr";

/// Neutron's longest tag.
const MAX_TAG: usize = 255;

/// `prefix` + `value`, with the characters Neutron refuses in tags replaced and the
/// result cut to 255 characters.
pub fn tag(prefix: &str, value: &str) -> String {
    let mut t = String::with_capacity(prefix.len() + value.len());
    t.push_str(prefix);
    for c in value.chars() {
        if t.chars().count() >= MAX_TAG {
            break;
        }
        t.push(match c {
            ',' | '/' => '_',
            c => c,
        });
    }
    t
}

/// The value of the first tag starting with `prefix`.
pub fn value<'a>(tags: &'a [String], prefix: &str) -> Option<&'a str> {
    tags.iter().find_map(|t| t.strip_prefix(prefix))
}

pub fn has(tags: &[String], exact: &str) -> bool {
    tags.iter().any(|t| t == exact)
}

/// Tags of a pool port.
pub fn pool_port(cluster: &str) -> Vec<String> {
    vec![tag(CLUSTER, cluster), POOL.to_string()]
}

/// Tags of a port assigned to a pod.
pub fn pod_port(cluster: &str, uid: &str, namespace: &str, name: &str) -> Vec<String> {
    vec![
        tag(CLUSTER, cluster),
        tag(POD_UID, uid),
        tag(POD_NAMESPACE, namespace),
        tag(POD_NAME, name),
    ]
}

/// Tags of a namespace's network and subnet.
pub fn namespace(cluster: &str, ns: &str) -> Vec<String> {
    vec![tag(CLUSTER, cluster), tag(NAMESPACE, ns)]
}

/// Tags of a policy's groups (`named`: the named-port variant, for its sub-groups).
pub fn policy(cluster: &str, uid: &str, ns: &str, name: &str, named: Option<&str>) -> Vec<String> {
    let mut t = vec![
        tag(CLUSTER, cluster),
        tag(POLICY_UID, uid),
        tag(POLICY_NAMESPACE, ns),
        tag(POLICY_NAME, name),
    ];
    if let Some(n) = named {
        t.push(tag(NAMED_PORT, n));
    }
    t
}

/// Tags of what a Service has: its load balancer, listeners, pools, floating IP.
pub fn service(cluster: &str, uid: &str, ns: &str, name: &str) -> Vec<String> {
    vec![
        tag(CLUSTER, cluster),
        tag(SERVICE_UID, uid),
        tag(SERVICE_NAMESPACE, ns),
        tag(SERVICE_NAME, name),
    ]
}

pub fn peer(cluster: &str, hash: &str) -> Vec<String> {
    vec![tag(CLUSTER, cluster), tag(PEER, hash)]
}

pub fn allow_all(cluster: &str, direction: &str) -> Vec<String> {
    vec![tag(CLUSTER, cluster), tag(ALLOW_ALL, direction)]
}

/// The same tags, order aside.
pub fn same(a: &[String], b: &[String]) -> bool {
    let mut a: Vec<&String> = a.iter().collect();
    let mut b: Vec<&String> = b.iter().collect();
    a.sort();
    a.dedup();
    b.sort();
    b.dedup();
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_fit_neutron() {
        assert_eq!(tag(CLUSTER, "kubernetes"), "kuryr.k8s.cluster=kubernetes");
        assert_eq!(tag(POD_NAME, "a,b/c"), "kuryr.k8s.pod.name=a_b_c");
        let long = "x".repeat(300);
        let t = tag(POD_NAME, &long);
        assert_eq!(t.chars().count(), 255);
        assert!(t.starts_with(POD_NAME));
    }

    #[test]
    fn values_and_sets() {
        let t = pod_port("c", "u-1", "ns", "p");
        assert_eq!(value(&t, POD_UID), Some("u-1"));
        assert_eq!(value(&t, POD_NAMESPACE), Some("ns"));
        assert_eq!(value(&t, POLICY_UID), None);
        assert!(has(&pool_port("c"), POOL));
        let mut r = t.clone();
        r.reverse();
        assert!(same(&t, &r));
        assert!(!same(&t, &pool_port("c")));
    }
}
