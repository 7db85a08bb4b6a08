//! What every reconcile shares: the options, the clients, the reflectors' stores, the
//! Neutron cache, the index of groups, the work queue, locks, metrics and events.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource};
use serde_json::json;
use tokio::sync::{Notify, OwnedMutexGuard};
use tokio::time::Instant;

use crate::Config;
use crate::cache::Cache;
use crate::lbaas::{LbState, Octavia};
use crate::membership::Index;
use crate::metrics::Metrics;
use crate::neutron::Neutron;
use crate::policy::{self, Isolation};
use crate::queue::Queue;
use crate::service_lb::ServiceNet;
use crate::view::{NsLabels, PodView, namespace_labels};

/// Where pods' ports are, with the names resolved to ids.
#[derive(Debug, Clone)]
pub enum NetMode {
    Single {
        network: String,
    },
    PerNamespace {
        subnetpool: String,
        ip_version: u8,
        router: String,
    },
}

/// A unit of work.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Pod {
        namespace: String,
        name: String,
    },
    Namespace(String),
    Policy {
        namespace: String,
        name: String,
    },
    /// A Service's load balancer.
    Service {
        namespace: String,
        name: String,
    },
    /// The cluster-wide groups: allow-all, and peer groups no policy names any more.
    Groups,
    /// Objects whose owner is gone, from the cache as it is (after a relist).
    Sweep,
}

impl Key {
    pub fn pod(namespace: &str, name: &str) -> Key {
        Key::Pod {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub fn policy(namespace: &str, name: &str) -> Key {
        Key::Policy {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub fn service(namespace: &str, name: &str) -> Key {
        Key::Service {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Key::Pod { .. } => "pod",
            Key::Service { .. } => "service",
            Key::Namespace(_) => "namespace",
            Key::Policy { .. } => "policy",
            Key::Groups => "groups",
            Key::Sweep => "sweep",
        }
    }

    /// Pods wait for their ports: they go first.
    pub fn urgent(&self) -> bool {
        matches!(self, Key::Pod { .. })
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Pod { namespace, name } => write!(f, "pod {namespace}/{name}"),
            Key::Namespace(n) => write!(f, "namespace {n}"),
            Key::Policy { namespace, name } => write!(f, "networkpolicy {namespace}/{name}"),
            Key::Service { namespace, name } => write!(f, "service {namespace}/{name}"),
            Key::Groups => f.write_str("cluster groups"),
            Key::Sweep => f.write_str("orphan sweep"),
        }
    }
}

#[derive(Clone)]
pub struct Stores {
    pub pods: Store<Pod>,
    pub namespaces: Store<Namespace>,
    pub policies: Store<NetworkPolicy>,
    pub nodes: Store<Node>,
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
}

/// Async mutexes by name, made on demand and forgotten when nobody holds or waits.
#[derive(Default)]
pub struct KeyedLocks {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

pub struct KeyedGuard<'a> {
    locks: &'a KeyedLocks,
    key: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for KeyedGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.locks.map.lock().unwrap_or_else(|e| e.into_inner());
        if map
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            map.remove(&self.key);
        }
    }
}

impl KeyedLocks {
    pub async fn lock(&self, key: &str) -> KeyedGuard<'_> {
        let m = {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(key.to_string()).or_default().clone()
        };
        let guard = m.lock_owned().await;
        KeyedGuard {
            locks: self,
            key: key.to_string(),
            guard: Some(guard),
        }
    }

    /// Without waiting: `None` when someone holds it.
    pub fn try_lock(&self, key: &str) -> Option<KeyedGuard<'_>> {
        let m = {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(key.to_string()).or_default().clone()
        };
        let guard = m.try_lock_owned().ok();
        // Built even on failure, so that its drop forgets an entry made for nothing.
        let g = KeyedGuard {
            locks: self,
            key: key.to_string(),
            guard,
        };
        g.guard.is_some().then_some(g)
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or_default()
    }
}

pub struct Ctx {
    pub cfg: Config,
    pub net: NetMode,
    pub neutron: Neutron,
    pub octavia: Octavia,
    /// Where Service VIPs go (`None`: Services are not balanced by kuryr).
    pub services: Option<ServiceNet>,
    /// Each Service's load balancer as last made or read (`None`: it has none).
    pub lbs: Mutex<HashMap<String, Option<LbState>>>,
    pub kube: kube::Client,
    pub stores: Stores,
    pub cache: Mutex<Cache>,
    pub index: RwLock<Index>,
    /// Peer groups are made by policy reconciles (read) and deleted by the groups
    /// reconcile (write): none is deleted while a policy is about to use it.
    pub peer_lock: tokio::sync::RwLock<()>,
    /// `port:<id>`, `pool:<node> <network>`, `ns:<name>`.
    pub locks: KeyedLocks,
    pub queue: Queue<Key>,
    pub pool_trigger: Notify,
    /// Last take or return per (node, network) pool (idle pools shrink).
    pub pool_activity: Mutex<HashMap<(String, String), Instant>>,
    /// Subnets known to be on the router.
    pub attached: Mutex<HashSet<String>>,
    /// Policies whose rules depend on pods' named ports: reconciled when pods change.
    pub named_port_policies: Mutex<HashSet<(String, String)>>,
    /// What each pod and namespace looked like last time, as far as policies care
    /// (labels, named ports): a change re-plans the policies that use named ports.
    pub sigs: Mutex<HashMap<String, u64>>,
    /// Set once the start-up pass is done (before it, relists find nothing to collect).
    pub started: std::sync::atomic::AtomicBool,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
}

/// Locks a std mutex; a panic elsewhere while it was held leaves usable data here
/// (writes are single map operations), so poisoning is ignored.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Ctx {
    pub fn cache(&self) -> MutexGuard<'_, Cache> {
        lock(&self.cache)
    }

    pub fn index(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn index_mut(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<PodView> {
        self.stores
            .pods
            .get(&ObjectRef::new(name).within(namespace))
            .and_then(|p| PodView::from_pod(&p))
    }

    pub fn pod_object(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.stores
            .pods
            .get(&ObjectRef::new(name).within(namespace))
    }

    pub fn pods(&self) -> Vec<PodView> {
        self.stores
            .pods
            .state()
            .iter()
            .filter_map(|p| PodView::from_pod(p))
            .collect()
    }

    pub fn ns_labels(&self) -> NsLabels {
        let all = self.stores.namespaces.state();
        namespace_labels(all.iter().map(|n| n.as_ref()))
    }

    pub fn namespace_exists(&self, name: &str) -> bool {
        self.stores.namespaces.get(&ObjectRef::new(name)).is_some()
    }

    pub fn node_exists(&self, name: &str) -> bool {
        self.stores.nodes.get(&ObjectRef::new(name)).is_some()
    }

    pub fn node_names(&self) -> Vec<String> {
        self.stores
            .nodes
            .state()
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect()
    }

    pub fn policy(&self, namespace: &str, name: &str) -> Option<Arc<NetworkPolicy>> {
        self.stores
            .policies
            .get(&ObjectRef::new(name).within(namespace))
    }

    /// A Warning event on an object (failures to publish are only logged).
    pub async fn warn<K: Resource<DynamicType = ()>>(&self, obj: &K, reason: &str, note: String) {
        let ev = Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(truncate(note, 1000)),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::debug!(error = %e, "could not publish an event");
        }
    }

    /// Sets one annotation with a merge patch (other annotations untouched).
    pub async fn annotate<K>(
        &self,
        api: Api<K>,
        name: &str,
        values: &[(&str, &str)],
    ) -> kube::Result<()>
    where
        K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let ann: serde_json::Map<String, serde_json::Value> = values
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let patch = json!({"metadata": {"annotations": ann}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
    }

    /// Policies in force in Kubernetes that the index does not hold (see
    /// [`Index::desired`]).
    pub fn pending_policies(&self) -> Vec<Isolation> {
        let known: HashSet<String> = self.index().policies.keys().cloned().collect();
        self.stores
            .policies
            .state()
            .iter()
            .filter(|p| p.metadata.uid.as_ref().is_some_and(|u| !known.contains(u)))
            .filter_map(|p| policy::isolation(p).ok())
            .collect()
    }

    /// Marks a pool as just used (it is not idle).
    pub fn pool_used(&self, node: &str, network: &str) {
        lock(&self.pool_activity).insert((node.to_string(), network.to_string()), Instant::now());
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keyed_locks_exclude_and_forget() {
        let l = KeyedLocks::default();
        let a = l.lock("a").await;
        assert!(l.try_lock("a").is_none(), "held");
        let b = l.try_lock("b");
        assert!(b.is_some(), "another key is free");
        drop(b);
        drop(a);
        assert_eq!(l.held(), 0, "nothing held: nothing kept");
        let a2 = l.try_lock("a");
        assert!(a2.is_some());
    }

    #[test]
    fn keys() {
        assert!(Key::pod("a", "b").urgent());
        assert!(!Key::Groups.urgent());
        assert_eq!(Key::policy("a", "b").to_string(), "networkpolicy a/b");
        assert_eq!(truncate("héllo".into(), 2), "h");
    }
}
