//! Which security groups a pod's port belongs to: the pure function at the heart of
//! NetworkPolicy enforcement. Policies and label changes move ports between groups;
//! rules stay put.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::labels::Selector;
use crate::policy::{Isolation, NamedPort, PeerKey};
use crate::view::{NsLabels, PodView};

/// A reconciled policy: its groups exist in Neutron.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyGroups {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub pod_selector: Selector,
    pub ingress: bool,
    pub egress: bool,
    pub group: String,
    /// Named-port resolution → its group.
    pub named: BTreeMap<NamedPort, String>,
    /// Hashes of the peer groups its rules name.
    pub peers: BTreeSet<String>,
}

impl PolicyGroups {
    fn selects(&self, pod: &PodView) -> bool {
        pod.namespace == self.namespace && self.pod_selector.matches(&pod.labels)
    }

    /// Every group of the policy.
    pub fn groups(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.group).chain(self.named.values())
    }
}

/// What the groups of the cluster are, as far as they exist.
#[derive(Debug, Clone, Default)]
pub struct Index {
    /// By policy uid.
    pub policies: HashMap<String, PolicyGroups>,
    /// Peer groups by their key's hash.
    pub peers: HashMap<String, (PeerKey, String)>,
    pub allow_ingress: Option<String>,
    pub allow_egress: Option<String>,
}

impl Index {
    /// The groups of a pod's port:
    /// - each policy that selects it (union of policies), and the named-port groups of
    ///   those policies whose names the pod resolves to that number;
    /// - the allow-all group of each direction no selecting policy isolates;
    /// - every peer group whose peer matches the pod (its port is in every set it is in).
    ///
    /// `pending`: policies in force in Kubernetes whose groups are not in the index (yet,
    /// or because Neutron refuses them): they isolate the pods they select without
    /// allowing anything, so that a pod is never more open than its policies say.
    pub fn desired(&self, pod: &PodView, ns: &NsLabels, pending: &[Isolation]) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let (mut iso_in, mut iso_out) = (false, false);
        for p in pending.iter().filter(|p| p.selects(pod)) {
            iso_in |= p.ingress;
            iso_out |= p.egress;
        }
        for p in self.policies.values().filter(|p| p.selects(pod)) {
            out.insert(p.group.clone());
            iso_in |= p.ingress;
            iso_out |= p.egress;
            for (np, g) in &p.named {
                if pod.named_port(np.proto, &np.name) == Some(np.number) {
                    out.insert(g.clone());
                }
            }
        }
        if !iso_in && let Some(g) = &self.allow_ingress {
            out.insert(g.clone());
        }
        if !iso_out && let Some(g) = &self.allow_egress {
            out.insert(g.clone());
        }
        for (key, g) in self.peers.values() {
            if key.matches(pod, ns) {
                out.insert(g.clone());
            }
        }
        out
    }

    /// Every group id the index knows (what the cluster's ports may hold).
    pub fn all_groups(&self) -> BTreeSet<String> {
        let mut s: BTreeSet<String> = self
            .policies
            .values()
            .flat_map(|p| p.groups().cloned())
            .collect();
        s.extend(self.peers.values().map(|(_, g)| g.clone()));
        s.extend(self.allow_ingress.clone());
        s.extend(self.allow_egress.clone());
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::sel;
    use crate::view::Proto;

    /// Membership depends on namespace and labels only.
    fn pod(ns: &str, labels: &[(&str, &str)]) -> PodView {
        crate::test_fixtures::pod(ns, "p", labels)
    }

    fn policy(uid: &str, ns: &str, s: Selector, ingress: bool, egress: bool) -> PolicyGroups {
        PolicyGroups {
            uid: uid.into(),
            namespace: ns.into(),
            name: uid.into(),
            pod_selector: s,
            ingress,
            egress,
            group: format!("sg-{uid}"),
            named: BTreeMap::new(),
            peers: BTreeSet::new(),
        }
    }

    impl Index {
        fn desired_t(&self, pod: &PodView, ns: &NsLabels) -> BTreeSet<String> {
            self.desired(pod, ns, &[])
        }
    }

    #[test]
    fn policies_not_in_the_index_yet_isolate_without_allowing() {
        let mut idx = index();
        idx.policies.insert(
            "p1".into(),
            policy("p1", "a", sel(&[("app", "db")]), true, false),
        );
        let pending = [Isolation {
            namespace: "a".into(),
            pod_selector: sel(&[("app", "db")]),
            ingress: false,
            egress: true,
        }];
        let db = pod("a", &[("app", "db")]);
        assert_eq!(
            idx.desired(&db, &NsLabels::new(), &pending),
            set(&["sg-p1"]),
            "isolated both ways: no allow-all"
        );
        // Positive control: without the pending policy, egress is open.
        assert_eq!(
            idx.desired_t(&db, &NsLabels::new()),
            set(&["sg-p1", "allow-out"])
        );
        // A pod it does not select is untouched.
        assert_eq!(
            idx.desired(&pod("a", &[("app", "web")]), &NsLabels::new(), &pending),
            set(&["allow-in", "allow-out"])
        );
    }

    fn index() -> Index {
        Index {
            allow_ingress: Some("allow-in".into()),
            allow_egress: Some("allow-out".into()),
            ..Default::default()
        }
    }

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn unselected_pods_are_open_both_ways() {
        let idx = index();
        assert_eq!(
            idx.desired_t(&pod("a", &[]), &NsLabels::new()),
            set(&["allow-in", "allow-out"])
        );
    }

    #[test]
    fn isolation_per_direction_and_union() {
        let mut idx = index();
        idx.policies.insert(
            "p1".into(),
            policy("p1", "a", sel(&[("app", "db")]), true, false),
        );
        idx.policies.insert(
            "p2".into(),
            policy("p2", "a", Selector::everything(), false, true),
        );
        idx.policies.insert(
            "p3".into(),
            policy("p3", "b", Selector::everything(), true, true),
        );
        let ns = NsLabels::new();
        // db in a: p1 isolates ingress, p2 egress: both groups, no allow-all.
        assert_eq!(
            idx.desired_t(&pod("a", &[("app", "db")]), &ns),
            set(&["sg-p1", "sg-p2"])
        );
        // web in a: only p2 (egress): keeps allow-all ingress.
        assert_eq!(
            idx.desired_t(&pod("a", &[("app", "web")]), &ns),
            set(&["sg-p2", "allow-in"])
        );
        // Relabelling moves the pod in or out of p1.
        assert_eq!(
            idx.desired_t(&pod("c", &[("app", "db")]), &ns),
            set(&["allow-in", "allow-out"])
        );
    }

    #[test]
    fn peer_groups_by_labels() {
        let mut idx = index();
        let k = PeerKey {
            namespace_selector: Some(sel(&[("team", "x")])),
            namespace: None,
            pod_selector: Some(sel(&[("role", "api")])),
            named_port: None,
        };
        idx.peers.insert(k.hash(), (k, "peer-1".into()));
        let mut ns = NsLabels::new();
        ns.insert("a".into(), [("team".to_string(), "x".to_string())].into());
        ns.insert("b".into(), Default::default());
        assert!(
            idx.desired_t(&pod("a", &[("role", "api")]), &ns)
                .contains("peer-1")
        );
        assert!(
            !idx.desired_t(&pod("b", &[("role", "api")]), &ns)
                .contains("peer-1")
        );
        assert!(
            !idx.desired_t(&pod("a", &[("role", "web")]), &ns)
                .contains("peer-1")
        );
        // Namespace relabelled: the pod leaves the set.
        ns.insert("a".into(), Default::default());
        assert!(
            !idx.desired_t(&pod("a", &[("role", "api")]), &ns)
                .contains("peer-1")
        );
    }

    #[test]
    fn named_port_groups_follow_resolution() {
        let mut idx = index();
        let mut p = policy("p1", "a", Selector::everything(), true, false);
        let np = |n| NamedPort {
            proto: Proto::Tcp,
            name: "http".into(),
            number: n,
        };
        p.named.insert(np(80), "np-80".into());
        p.named.insert(np(8080), "np-8080".into());
        idx.policies.insert("p1".into(), p);
        let mut a = pod("a", &[]);
        a.named_ports.insert((Proto::Tcp, "http".into()), 8080);
        assert_eq!(
            idx.desired(&a, &NsLabels::new(), &[]),
            set(&["sg-p1", "np-8080", "allow-out"])
        );
        let b = pod("a", &[]);
        assert_eq!(
            idx.desired(&b, &NsLabels::new(), &[]),
            set(&["sg-p1", "allow-out"])
        );
        assert_eq!(idx.all_groups().len(), 5);
    }
}
