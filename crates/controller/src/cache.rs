//! What the controller knows of its Neutron objects: read at start, kept up to date by
//! its own writes, and merged with a fresh listing at every full pass.
//!
//! The merge must not undo writes that raced with the listing: every local write
//! stamps its entry with a logical clock, an entry in the middle of a write is `busy`,
//! and a deletion leaves a tombstone. Merging a listing that began at clock `start`
//! keeps busy entries and entries stamped since `start`, does not resurrect what was
//! deleted since `start`, and otherwise believes the listing (objects made or deleted
//! behind the controller's back).

use std::collections::{BTreeMap, HashMap};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use crate::policy::{Direction, EtherType, NamedPort, RuleSpec};
use crate::tags;
use crate::view::Proto;

/// `null` read as the default (Neutron shows some absent attributes as null).
fn nullable<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FixedIp {
    #[serde(default, deserialize_with = "nullable")]
    pub subnet_id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub ip_address: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PortRec {
    pub id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub network_id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub device_id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub device_owner: String,
    #[serde(rename = "binding:host_id", default, deserialize_with = "nullable")]
    pub host: String,
    #[serde(default, deserialize_with = "nullable")]
    pub security_groups: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub tags: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub fixed_ips: Vec<FixedIp>,
}

/// Whose a port is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortOwner {
    /// Waiting in its (host, network) pool.
    Pool,
    /// A pod's (`device_id` is its uid). Namespace and name come from the tags, or from
    /// the port's name when a crash came between the port update and the tags.
    Pod {
        uid: String,
        namespace: Option<String>,
        name: Option<String>,
    },
}

impl PortRec {
    /// The device_id decides: the contract's update sets it first, so a port is a pod's
    /// from the moment Neutron holds the uid, whatever its tags say.
    pub fn owner(&self) -> PortOwner {
        if self.device_id.is_empty() {
            return PortOwner::Pool;
        }
        let from_name = self.name.split_once('/');
        let namespace = tags::value(&self.tags, tags::POD_NAMESPACE)
            .map(str::to_string)
            .or_else(|| from_name.map(|(n, _)| n.to_string()));
        let name = tags::value(&self.tags, tags::POD_NAME)
            .map(str::to_string)
            .or_else(|| from_name.map(|(_, n)| n.to_string()));
        PortOwner::Pod {
            uid: self.device_id.clone(),
            namespace,
            name,
        }
    }

    pub fn addresses(&self) -> String {
        self.fixed_ips
            .iter()
            .map(|f| f.ip_address.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A rule as Neutron shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct RawRule {
    pub id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub security_group_id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub direction: String,
    #[serde(default, deserialize_with = "nullable")]
    pub ethertype: String,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub port_range_min: Option<u32>,
    #[serde(default)]
    pub port_range_max: Option<u32>,
    #[serde(default)]
    pub remote_ip_prefix: Option<String>,
    #[serde(default)]
    pub remote_group_id: Option<String>,
    #[serde(default)]
    pub remote_address_group_id: Option<String>,
}

impl RawRule {
    /// The rule in the controller's terms; `None` for what it never makes (ICMP, a
    /// remote address group...), which then goes as a stranger in its groups.
    pub fn spec(&self) -> Option<RuleSpec> {
        if self.remote_address_group_id.is_some() {
            return None;
        }
        let protocol = match self.protocol.as_deref() {
            None | Some("") | Some("any") => None,
            Some(p) => Some(Proto::from_neutron(p)?),
        };
        let port = |p: Option<u32>| p.map(u16::try_from).transpose().ok();
        let remote_ip_prefix = match self.remote_ip_prefix.as_deref() {
            None | Some("") => None,
            Some(s) => {
                let n = s.parse::<IpNet>().ok()?.trunc();
                // Anywhere is anywhere, with or without a prefix.
                (n.prefix_len() != 0).then_some(n)
            }
        };
        Some(RuleSpec {
            direction: Direction::from_neutron(&self.direction)?,
            ethertype: EtherType::from_neutron(&self.ethertype)?,
            protocol,
            port_min: port(self.port_range_min)?,
            port_max: port(self.port_range_max)?,
            remote_ip_prefix,
            remote_group_id: self.remote_group_id.clone().filter(|g| !g.is_empty()),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRec {
    pub id: String,
    pub spec: Option<RuleSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RawGroup {
    pub id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRec {
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub rules: Vec<RuleRec>,
}

/// What a group is for, from its tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupKind {
    AllowAll(Direction),
    Policy {
        uid: String,
        namespace: Option<String>,
        name: Option<String>,
        /// `Some` for a named-port group.
        named: Option<NamedPort>,
    },
    Peer(String),
    Unknown,
}

impl GroupRec {
    pub fn kind(&self) -> GroupKind {
        let t = &self.tags;
        if let Some(d) = tags::value(t, tags::ALLOW_ALL) {
            return match Direction::from_neutron(d) {
                Some(d) => GroupKind::AllowAll(d),
                None => GroupKind::Unknown,
            };
        }
        if let Some(uid) = tags::value(t, tags::POLICY_UID) {
            let named = match tags::value(t, tags::NAMED_PORT) {
                Some(v) => match NamedPort::parse_tag_value(v) {
                    Some(np) => Some(np),
                    None => return GroupKind::Unknown,
                },
                None => None,
            };
            return GroupKind::Policy {
                uid: uid.to_string(),
                namespace: tags::value(t, tags::POLICY_NAMESPACE).map(str::to_string),
                name: tags::value(t, tags::POLICY_NAME).map(str::to_string),
                named,
            };
        }
        if let Some(h) = tags::value(t, tags::PEER) {
            return GroupKind::Peer(h.to_string());
        }
        GroupKind::Unknown
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NetRec {
    pub id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SubnetRec {
    pub id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub network_id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub cidr: String,
    #[serde(default, deserialize_with = "nullable")]
    pub tags: Vec<String>,
}

impl NetRec {
    pub fn namespace(&self) -> Option<&str> {
        tags::value(&self.tags, tags::NAMESPACE)
    }
}

impl SubnetRec {
    pub fn namespace(&self) -> Option<&str> {
        tags::value(&self.tags, tags::NAMESPACE)
    }
}

#[derive(Debug, Clone)]
struct Entry<T> {
    value: T,
    stamp: u64,
    busy: bool,
}

/// One kind of object by id (see the module's documentation for the merge).
#[derive(Debug, Clone)]
pub struct Table<T> {
    items: BTreeMap<String, Entry<T>>,
    tombstones: HashMap<String, u64>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            items: BTreeMap::new(),
            tombstones: HashMap::new(),
        }
    }
}

impl<T: Clone> Table<T> {
    pub fn get(&self, id: &str) -> Option<&T> {
        self.items.get(id).map(|e| &e.value)
    }

    pub fn is_busy(&self, id: &str) -> bool {
        self.items.get(id).is_some_and(|e| e.busy)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Every entry, with whether it is busy.
    pub fn iter(&self) -> impl Iterator<Item = (&T, bool)> {
        self.items.values().map(|e| (&e.value, e.busy))
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.items.values().map(|e| &e.value)
    }

    /// Records a write's result (and ends the entry's busy time).
    pub fn put(&mut self, id: &str, value: T, stamp: u64) {
        self.tombstones.remove(id);
        self.items.insert(
            id.to_string(),
            Entry {
                value,
                stamp,
                busy: false,
            },
        );
    }

    /// Records a created object unless something already knows it (a listing that saw
    /// it first, and a take since: that newer state wins).
    pub fn insert_new(&mut self, id: &str, value: T, stamp: u64) -> bool {
        if self.items.contains_key(id) {
            return false;
        }
        self.put(id, value, stamp);
        true
    }

    pub fn remove(&mut self, id: &str, stamp: u64) {
        self.items.remove(id);
        self.tombstones.insert(id.to_string(), stamp);
    }

    /// Marks an entry busy; false when it is absent or already busy (someone else has it).
    pub fn claim(&mut self, id: &str, stamp: u64) -> bool {
        match self.items.get_mut(id) {
            Some(e) if !e.busy => {
                e.busy = true;
                e.stamp = stamp;
                true
            }
            _ => false,
        }
    }

    /// Ends a busy time without a new value (the write failed or was not needed).
    pub fn release(&mut self, id: &str, stamp: u64) {
        if let Some(e) = self.items.get_mut(id) {
            e.busy = false;
            e.stamp = stamp;
        }
    }

    /// Merges a listing that started at clock `start` (see the module's documentation).
    pub fn merge(&mut self, listing: Vec<(String, T)>, start: u64) {
        let mut seen = std::collections::HashSet::with_capacity(listing.len());
        for (id, value) in listing {
            seen.insert(id.clone());
            match self.items.get_mut(&id) {
                Some(e) if e.busy || e.stamp >= start => {}
                Some(e) => e.value = value,
                None => {
                    if self.tombstones.get(&id).is_some_and(|s| *s >= start) {
                        continue;
                    }
                    self.items.insert(
                        id,
                        Entry {
                            value,
                            stamp: 0,
                            busy: false,
                        },
                    );
                }
            }
        }
        self.items
            .retain(|id, e| seen.contains(id) || e.busy || e.stamp >= start);
        self.tombstones.retain(|_, s| *s >= start);
    }
}

/// Every kind of object the controller makes, and the clock of its writes.
#[derive(Debug, Default)]
pub struct Cache {
    pub ports: Table<PortRec>,
    pub groups: Table<GroupRec>,
    pub networks: Table<NetRec>,
    pub subnets: Table<SubnetRec>,
    clock: u64,
}

impl Cache {
    /// A new stamp (every write and every listing start takes one).
    pub fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The pool ports of (host, network) that can be taken.
    pub fn available(&self, host: &str, network: &str) -> usize {
        self.ports
            .iter()
            .filter(|(p, busy)| {
                !busy && p.host == host && p.network_id == network && p.device_id.is_empty()
            })
            .count()
    }

    /// Claims one pool port of (host, network) for a pod.
    pub fn take(&mut self, host: &str, network: &str) -> Option<PortRec> {
        let id = self
            .ports
            .iter()
            .find(|(p, busy)| {
                !busy && p.host == host && p.network_id == network && p.device_id.is_empty()
            })
            .map(|(p, _)| p.id.clone())?;
        let stamp = self.tick();
        self.ports.claim(&id, stamp);
        self.ports.get(&id).cloned()
    }

    /// Claims up to `n` pool ports of (host, network), to delete them.
    pub fn take_many(&mut self, host: &str, network: &str, n: usize) -> Vec<PortRec> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.take(host, network) {
                Some(p) => out.push(p),
                None => break,
            }
        }
        out
    }

    /// The port of a pod (by uid), if any. Several (a crash between two takes) → the
    /// lowest id; the pod's reconcile releases the others.
    pub fn pod_ports(&self, uid: &str) -> Vec<PortRec> {
        self.ports
            .values()
            .filter(|p| p.device_id == uid)
            .cloned()
            .collect()
    }

    /// Every port that names this pod (namespace/name), whatever its uid.
    pub fn ports_named(&self, namespace: &str, name: &str) -> Vec<PortRec> {
        self.ports
            .values()
            .filter(|p| match p.owner() {
                PortOwner::Pod {
                    namespace: Some(n),
                    name: Some(m),
                    ..
                } => n == namespace && m == name,
                _ => false,
            })
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn port(id: &str, host: &str, net: &str, device: &str) -> PortRec {
        PortRec {
            id: id.into(),
            network_id: net.into(),
            name: String::new(),
            device_id: device.into(),
            device_owner: tags::DEVICE_OWNER.into(),
            host: host.into(),
            security_groups: vec![],
            tags: vec![],
            fixed_ips: vec![],
        }
    }

    #[test]
    fn port_decoding_and_owner() {
        let p: PortRec = serde_json::from_value(json!({
            "id": "p1", "network_id": "n", "name": "ns/web", "device_id": "u1",
            "binding:host_id": null, "security_groups": ["a"], "tags": null,
            "fixed_ips": [{"subnet_id": "s", "ip_address": "10.0.0.5"}],
            "unknown": 1
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.host, "");
        assert_eq!(p.addresses(), "10.0.0.5");
        // Tags missing (a crash before the tag update): the name tells.
        assert_eq!(
            p.owner(),
            PortOwner::Pod {
                uid: "u1".into(),
                namespace: Some("ns".into()),
                name: Some("web".into())
            }
        );
        let mut t = p.clone();
        t.tags = tags::pod_port("c", "u1", "other", "pod");
        assert_eq!(
            t.owner(),
            PortOwner::Pod {
                uid: "u1".into(),
                namespace: Some("other".into()),
                name: Some("pod".into())
            }
        );
        // device_id "" is a pool port even with a pod's tags (crash before the re-tag).
        t.device_id.clear();
        assert_eq!(t.owner(), PortOwner::Pool);
    }

    #[test]
    fn rule_normalisation() {
        let r = |v: serde_json::Value| -> RawRule {
            serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
        };
        let spec = r(
            json!({"id": "r", "security_group_id": "g", "direction": "ingress",
            "ethertype": "IPv4", "protocol": "6", "port_range_min": 80, "port_range_max": 80,
            "remote_ip_prefix": "10.0.0.1/24", "remote_group_id": null}),
        )
        .spec();
        assert_eq!(
            spec,
            Some(RuleSpec {
                direction: Direction::Ingress,
                ethertype: EtherType::V4,
                protocol: Some(Proto::Tcp),
                port_min: Some(80),
                port_max: Some(80),
                remote_ip_prefix: "10.0.0.0/24".parse().ok(),
                remote_group_id: None,
            })
        );
        // Neutron's default egress rules: any protocol, 0.0.0.0/0 or no prefix.
        let any = r(
            json!({"id": "r", "direction": "egress", "ethertype": "IPv6",
                           "remote_ip_prefix": "::/0"}),
        )
        .spec();
        assert_eq!(
            any,
            Some(RuleSpec {
                direction: Direction::Egress,
                ethertype: EtherType::V6,
                protocol: None,
                port_min: None,
                port_max: None,
                remote_ip_prefix: None,
                remote_group_id: None,
            })
        );
        assert_eq!(
            r(json!({"id": "r", "direction": "ingress", "ethertype": "IPv4", "protocol": "icmp"}))
                .spec(),
            None
        );
    }

    #[test]
    fn group_kinds() {
        let g = |t: Vec<String>| GroupRec {
            id: "g".into(),
            name: String::new(),
            tags: t,
            rules: vec![],
        };
        assert_eq!(
            g(tags::allow_all("c", "ingress")).kind(),
            GroupKind::AllowAll(Direction::Ingress)
        );
        assert_eq!(
            g(tags::policy("c", "u", "ns", "p", Some("tcp:http:80"))).kind(),
            GroupKind::Policy {
                uid: "u".into(),
                namespace: Some("ns".into()),
                name: Some("p".into()),
                named: NamedPort::parse_tag_value("tcp:http:80"),
            }
        );
        assert_eq!(
            g(tags::peer("c", "abc")).kind(),
            GroupKind::Peer("abc".into())
        );
        assert_eq!(
            g(vec![tags::tag(tags::CLUSTER, "c")]).kind(),
            GroupKind::Unknown
        );
    }

    fn ids(t: &Table<PortRec>) -> Vec<String> {
        t.values().map(|p| p.id.clone()).collect()
    }

    #[test]
    fn merge_believes_the_listing_for_untouched_entries() {
        let mut c = Cache::default();
        let s = c.tick();
        c.ports.put("a", port("a", "n1", "net", ""), s);
        c.ports.put("b", port("b", "n1", "net", ""), s);
        let start = c.tick();
        // Listing: a changed behind our back, b deleted, c new.
        c.ports.merge(
            vec![
                ("a".into(), port("a", "n1", "net", "someone")),
                ("c".into(), port("c", "n1", "net", "")),
            ],
            start,
        );
        assert_eq!(ids(&c.ports), vec!["a", "c"]);
        assert_eq!(
            c.ports.get("a").map(|p| p.device_id.as_str()),
            Some("someone")
        );
    }

    #[test]
    fn merge_keeps_writes_that_raced_with_the_listing() {
        let mut c = Cache::default();
        let s = c.tick();
        c.ports.put("a", port("a", "n1", "net", ""), s);
        c.ports.put("b", port("b", "n1", "net", ""), s);
        c.ports.put("d", port("d", "n1", "net", ""), s);
        let start = c.tick();
        // During the listing: a taken (busy), b assigned and written, d deleted, e created.
        let taken = c.take("n1", "net").map(|p| p.id);
        assert_eq!(taken.as_deref(), Some("a"));
        let s = c.tick();
        c.ports.put("b", port("b", "n1", "net", "pod-b"), s);
        let s = c.tick();
        c.ports.remove("d", s);
        let s = c.tick();
        c.ports.insert_new("e", port("e", "n1", "net", ""), s);
        // The listing saw the old state of everything, and not e.
        c.ports.merge(
            vec![
                ("a".into(), port("a", "n1", "net", "")),
                ("b".into(), port("b", "n1", "net", "")),
                ("d".into(), port("d", "n1", "net", "")),
            ],
            start,
        );
        assert_eq!(ids(&c.ports), vec!["a", "b", "e"]);
        assert!(c.ports.is_busy("a"), "still being taken");
        assert_eq!(c.available("n1", "net"), 1, "only e");
        assert_eq!(
            c.ports.get("b").map(|p| p.device_id.as_str()),
            Some("pod-b")
        );
        // The next listing (after the deletion) forgets the tombstone.
        let start2 = c.tick();
        c.ports
            .merge(vec![("e".into(), port("e", "n1", "net", ""))], start2);
        assert_eq!(
            ids(&c.ports),
            vec!["a", "e"],
            "a busy stays, b gone from Neutron"
        );
    }

    #[test]
    fn created_ports_do_not_override_a_take() {
        let mut c = Cache::default();
        let start = c.tick();
        // A listing saw the new port before the create returned, and a pod took it.
        c.ports
            .merge(vec![("x".into(), port("x", "n1", "net", ""))], start);
        let got = c.take("n1", "net").map(|p| p.id);
        assert_eq!(got.as_deref(), Some("x"));
        let s = c.tick();
        assert!(!c.ports.insert_new("x", port("x", "n1", "net", ""), s));
        assert!(c.ports.is_busy("x"));
        assert_eq!(c.available("n1", "net"), 0);
    }

    #[test]
    fn pools_and_owners() {
        let mut c = Cache::default();
        let s = c.tick();
        for (id, host, net, dev) in [
            ("1", "n1", "a", ""),
            ("2", "n1", "a", ""),
            ("3", "n2", "a", ""),
            ("4", "n1", "b", ""),
            ("5", "n1", "a", "uid-x"),
        ] {
            c.ports.put(id, port(id, host, net, dev), s);
        }
        assert_eq!(c.available("n1", "a"), 2);
        let many = c.take_many("n1", "a", 5);
        assert_eq!(many.len(), 2);
        assert_eq!(c.available("n1", "a"), 0);
        assert!(c.take("n1", "a").is_none());
        let s = c.tick();
        c.ports.release("1", s);
        assert_eq!(c.available("n1", "a"), 1);
        assert_eq!(c.pod_ports("uid-x").len(), 1);
        let mut named = port("6", "n1", "a", "uid-y");
        named.tags = tags::pod_port("c", "uid-y", "ns", "web");
        c.ports.put("6", named, s);
        assert_eq!(c.ports_named("ns", "web").len(), 1);
        assert!(c.ports_named("ns", "db").is_empty());
    }
}
