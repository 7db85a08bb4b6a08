//! A host's view of the network, kept up to date from [`HostFrame`]s. Pure: no I/O.

use std::collections::BTreeMap;

use kuryr_model::{
    FloatingIp, HealthMonitor, HostFrame, HostIds, HostObjects, HostVtep, Listener, LoadBalancer,
    Member, Network, Pool, Port, PortForwarding, Router, SecurityGroup, SecurityGroupRule, Subnet,
};

/// What the host holds: objects by id per kind (VTEPs by host) and the revision the view
/// is complete up to.
#[derive(Debug, Clone, Default)]
pub struct HostMirror {
    pub networks: BTreeMap<String, Network>,
    pub subnets: BTreeMap<String, Subnet>,
    pub ports: BTreeMap<String, Port>,
    pub security_groups: BTreeMap<String, SecurityGroup>,
    pub security_group_rules: BTreeMap<String, SecurityGroupRule>,
    /// By host name.
    pub vteps: BTreeMap<String, HostVtep>,
    pub routers: BTreeMap<String, Router>,
    pub floatingips: BTreeMap<String, FloatingIp>,
    pub port_forwardings: BTreeMap<String, PortForwarding>,
    pub loadbalancers: BTreeMap<String, LoadBalancer>,
    pub listeners: BTreeMap<String, Listener>,
    pub pools: BTreeMap<String, Pool>,
    pub members: BTreeMap<String, Member>,
    pub healthmonitors: BTreeMap<String, HealthMonitor>,
    revision: u64,
    synced: bool,
    /// Bumped whenever anything but ports and VTEPs may have changed (networks,
    /// subnets, groups, rules, routers, floating IPs, a resync): see
    /// [`HostMirror::epoch`].
    epoch: u64,
}

/// What one [`HostMirror::apply`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MirrorDelta {
    /// The frame carried `present` (the first frame of a connection).
    pub resync: bool,
    /// Ids of objects added or replaced (possibly with identical content).
    pub put: HostIds,
    /// Ids of objects removed, by `delete` or for missing from `present`.
    pub removed: HostIds,
    /// Ports put whose new version differs from the one held only in what the
    /// dataplane never reads (status, binding:vif_*, name, description, tags,
    /// timestamps, revision): an agent reports status for them but need not
    /// converge. Also listed in `put`.
    pub status_only: Vec<String>,
    /// Ids that `present` lists but the mirror has no object for (the frame's `put` did
    /// not carry them). Only possible when the watch resumed from a `since` the mirror
    /// does not actually hold, e.g. a fresh mirror resuming at a non-zero revision:
    /// [`HostMirror::reset`] and watch again from `since = 0`.
    pub missing: HostIds,
}

impl MirrorDelta {
    /// Nothing changed (a keepalive, or a resync that matched what was held).
    /// Nothing changed that the dataplane reads: at most the status of some ports.
    pub fn is_status_only(&self) -> bool {
        let mut put = self.put.clone();
        put.ports.retain(|id| !self.status_only.contains(id));
        !self.resync
            && put == HostIds::default()
            && self.removed == HostIds::default()
            && self.missing == HostIds::default()
    }

    pub fn is_empty(&self) -> bool {
        self.put == HostIds::default()
            && self.removed == HostIds::default()
            && self.missing == HostIds::default()
    }
}

impl HostMirror {
    pub fn new() -> Self {
        Self::default()
    }

    /// The revision to resume the watch from (`since`).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// A frame with `present` has been applied since creation or [`HostMirror::reset`]:
    /// the mirror is a complete view (as of [`HostMirror::revision`]).
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Empties the mirror; the next watch must start from `since = 0`.
    pub fn reset(&mut self) {
        let epoch = self.epoch;
        *self = Self::default();
        self.epoch = epoch + 1;
    }

    /// Changes (never repeats, even across [`HostMirror::reset`]) whenever a
    /// network, subnet, security group or rule may have changed, or a resync
    /// replaced the view. With a port's `revision_number`, it tells a consumer
    /// whether what it derived from that port and the rest of the view still holds.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Applies one frame: with `present`, first drops every object whose id is not listed
    /// there; then removes the ids of `delete` and stores the objects of `put` (so an id
    /// in both ends up stored: `put` carries its state at the frame's revision). The
    /// revision becomes the frame's, keepalives included.
    pub fn apply(&mut self, frame: HostFrame) -> MirrorDelta {
        let HostFrame {
            revision,
            present,
            put,
            delete,
        } = frame;
        let mut delta = MirrorDelta::default();
        if let Some(present) = &present {
            delta.resync = true;
            retain_listed(
                &mut self.networks,
                &present.networks,
                &mut delta.removed.networks,
            );
            retain_listed(
                &mut self.subnets,
                &present.subnets,
                &mut delta.removed.subnets,
            );
            retain_listed(&mut self.ports, &present.ports, &mut delta.removed.ports);
            retain_listed(
                &mut self.security_groups,
                &present.security_groups,
                &mut delta.removed.security_groups,
            );
            retain_listed(
                &mut self.security_group_rules,
                &present.security_group_rules,
                &mut delta.removed.security_group_rules,
            );
            retain_listed(&mut self.vteps, &present.vteps, &mut delta.removed.vteps);
            retain_listed(
                &mut self.routers,
                &present.routers,
                &mut delta.removed.routers,
            );
            retain_listed(
                &mut self.floatingips,
                &present.floatingips,
                &mut delta.removed.floatingips,
            );
            retain_listed(
                &mut self.port_forwardings,
                &present.port_forwardings,
                &mut delta.removed.port_forwardings,
            );
            retain_listed(
                &mut self.loadbalancers,
                &present.loadbalancers,
                &mut delta.removed.loadbalancers,
            );
            retain_listed(
                &mut self.listeners,
                &present.listeners,
                &mut delta.removed.listeners,
            );
            retain_listed(&mut self.pools, &present.pools, &mut delta.removed.pools);
            retain_listed(
                &mut self.members,
                &present.members,
                &mut delta.removed.members,
            );
            retain_listed(
                &mut self.healthmonitors,
                &present.healthmonitors,
                &mut delta.removed.healthmonitors,
            );
        }

        remove_ids(
            &mut self.networks,
            delete.networks,
            &mut delta.removed.networks,
        );
        remove_ids(
            &mut self.subnets,
            delete.subnets,
            &mut delta.removed.subnets,
        );
        remove_ids(&mut self.ports, delete.ports, &mut delta.removed.ports);
        remove_ids(
            &mut self.security_groups,
            delete.security_groups,
            &mut delta.removed.security_groups,
        );
        remove_ids(
            &mut self.security_group_rules,
            delete.security_group_rules,
            &mut delta.removed.security_group_rules,
        );
        remove_ids(&mut self.vteps, delete.vteps, &mut delta.removed.vteps);
        remove_ids(
            &mut self.routers,
            delete.routers,
            &mut delta.removed.routers,
        );
        remove_ids(
            &mut self.floatingips,
            delete.floatingips,
            &mut delta.removed.floatingips,
        );
        remove_ids(
            &mut self.port_forwardings,
            delete.port_forwardings,
            &mut delta.removed.port_forwardings,
        );
        remove_ids(
            &mut self.loadbalancers,
            delete.loadbalancers,
            &mut delta.removed.loadbalancers,
        );
        remove_ids(
            &mut self.listeners,
            delete.listeners,
            &mut delta.removed.listeners,
        );
        remove_ids(&mut self.pools, delete.pools, &mut delta.removed.pools);
        remove_ids(
            &mut self.members,
            delete.members,
            &mut delta.removed.members,
        );
        remove_ids(
            &mut self.healthmonitors,
            delete.healthmonitors,
            &mut delta.removed.healthmonitors,
        );

        let HostObjects {
            networks,
            subnets,
            ports,
            security_groups,
            security_group_rules,
            vteps,
            routers,
            floatingips,
            port_forwardings,
            loadbalancers,
            listeners,
            pools,
            members,
            healthmonitors,
        } = put;
        put_all(
            &mut self.networks,
            networks,
            |o| &o.id,
            &mut delta.put.networks,
        );
        put_all(
            &mut self.subnets,
            subnets,
            |o| &o.id,
            &mut delta.put.subnets,
        );
        for p in &ports {
            if self
                .ports
                .get(&p.id)
                .is_some_and(|old| same_dataplane(old, p))
            {
                delta.status_only.push(p.id.clone());
            }
        }
        put_all(&mut self.ports, ports, |o| &o.id, &mut delta.put.ports);
        put_all(
            &mut self.security_groups,
            security_groups,
            |o| &o.id,
            &mut delta.put.security_groups,
        );
        put_all(
            &mut self.security_group_rules,
            security_group_rules,
            |o| &o.id,
            &mut delta.put.security_group_rules,
        );
        put_all(&mut self.vteps, vteps, |o| &o.host, &mut delta.put.vteps);
        put_all(
            &mut self.routers,
            routers,
            |o| &o.id,
            &mut delta.put.routers,
        );
        put_all(
            &mut self.floatingips,
            floatingips,
            |o| &o.id,
            &mut delta.put.floatingips,
        );
        put_all(
            &mut self.port_forwardings,
            port_forwardings,
            |o| &o.id,
            &mut delta.put.port_forwardings,
        );
        put_all(
            &mut self.loadbalancers,
            loadbalancers,
            |o| &o.id,
            &mut delta.put.loadbalancers,
        );
        put_all(
            &mut self.listeners,
            listeners,
            |o| &o.id,
            &mut delta.put.listeners,
        );
        put_all(&mut self.pools, pools, |o| &o.id, &mut delta.put.pools);
        put_all(
            &mut self.members,
            members,
            |o| &o.id,
            &mut delta.put.members,
        );
        put_all(
            &mut self.healthmonitors,
            healthmonitors,
            |o| &o.id,
            &mut delta.put.healthmonitors,
        );

        // An id put in this frame is not "removed" from the caller's point of view.
        unremove(&mut delta.removed.networks, &delta.put.networks);
        unremove(&mut delta.removed.subnets, &delta.put.subnets);
        unremove(&mut delta.removed.ports, &delta.put.ports);
        unremove(
            &mut delta.removed.security_groups,
            &delta.put.security_groups,
        );
        unremove(
            &mut delta.removed.security_group_rules,
            &delta.put.security_group_rules,
        );
        unremove(&mut delta.removed.vteps, &delta.put.vteps);
        unremove(&mut delta.removed.routers, &delta.put.routers);
        unremove(&mut delta.removed.floatingips, &delta.put.floatingips);
        unremove(
            &mut delta.removed.port_forwardings,
            &delta.put.port_forwardings,
        );
        unremove(&mut delta.removed.loadbalancers, &delta.put.loadbalancers);
        unremove(&mut delta.removed.listeners, &delta.put.listeners);
        unremove(&mut delta.removed.pools, &delta.put.pools);
        unremove(&mut delta.removed.members, &delta.put.members);
        unremove(&mut delta.removed.healthmonitors, &delta.put.healthmonitors);

        if let Some(present) = &present {
            missing(
                &self.networks,
                &present.networks,
                &mut delta.missing.networks,
            );
            missing(&self.subnets, &present.subnets, &mut delta.missing.subnets);
            missing(&self.ports, &present.ports, &mut delta.missing.ports);
            missing(
                &self.security_groups,
                &present.security_groups,
                &mut delta.missing.security_groups,
            );
            missing(
                &self.security_group_rules,
                &present.security_group_rules,
                &mut delta.missing.security_group_rules,
            );
            missing(&self.vteps, &present.vteps, &mut delta.missing.vteps);
            missing(&self.routers, &present.routers, &mut delta.missing.routers);
            missing(
                &self.floatingips,
                &present.floatingips,
                &mut delta.missing.floatingips,
            );
            missing(
                &self.port_forwardings,
                &present.port_forwardings,
                &mut delta.missing.port_forwardings,
            );
            missing(
                &self.loadbalancers,
                &present.loadbalancers,
                &mut delta.missing.loadbalancers,
            );
            missing(
                &self.listeners,
                &present.listeners,
                &mut delta.missing.listeners,
            );
            missing(&self.pools, &present.pools, &mut delta.missing.pools);
            missing(&self.members, &present.members, &mut delta.missing.members);
            missing(
                &self.healthmonitors,
                &present.healthmonitors,
                &mut delta.missing.healthmonitors,
            );
            if delta.missing != HostIds::default() {
                tracing::warn!(
                    revision,
                    missing = ?delta.missing,
                    "watch resync lists objects the mirror does not hold"
                );
            }
            self.synced = true;
        }
        let beyond_ports = |ids: &HostIds| {
            !(ids.networks.is_empty()
                && ids.subnets.is_empty()
                && ids.security_groups.is_empty()
                && ids.security_group_rules.is_empty()
                && ids.routers.is_empty()
                && ids.floatingips.is_empty()
                && ids.port_forwardings.is_empty()
                && ids.loadbalancers.is_empty()
                && ids.listeners.is_empty()
                && ids.pools.is_empty()
                && ids.members.is_empty()
                && ids.healthmonitors.is_empty())
        };
        if delta.resync || beyond_ports(&delta.put) || beyond_ports(&delta.removed) {
            self.epoch += 1;
        }
        self.revision = revision;
        delta
    }

    /// The ports bound to `host` (`binding:host_id`).
    pub fn ports_on<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a Port> + 'a {
        self.ports.values().filter(move |p| p.host_id == host)
    }

    /// The subnets of a network.
    pub fn subnets_of<'a>(&'a self, network_id: &'a str) -> impl Iterator<Item = &'a Subnet> + 'a {
        self.subnets
            .values()
            .filter(move |s| s.network_id == network_id)
    }

    /// The rules of a security group.
    pub fn rules_of<'a>(
        &'a self,
        security_group_id: &'a str,
    ) -> impl Iterator<Item = &'a SecurityGroupRule> + 'a {
        self.security_group_rules
            .values()
            .filter(move |r| r.security_group_id == security_group_id)
    }
}

fn retain_listed<T>(map: &mut BTreeMap<String, T>, listed: &[String], removed: &mut Vec<String>) {
    let keep: std::collections::HashSet<&str> = listed.iter().map(String::as_str).collect();
    map.retain(|id, _| {
        let k = keep.contains(id.as_str());
        if !k {
            removed.push(id.clone());
        }
        k
    });
}

fn remove_ids<T>(map: &mut BTreeMap<String, T>, ids: Vec<String>, removed: &mut Vec<String>) {
    for id in ids {
        if map.remove(&id).is_some() {
            removed.push(id);
        }
    }
}

/// Whether two versions of a port are the same for the dataplane.
fn same_dataplane(a: &Port, b: &Port) -> bool {
    a.network_id == b.network_id
        && a.mac_address == b.mac_address
        && a.admin_state_up == b.admin_state_up
        && a.fixed_ips == b.fixed_ips
        && a.security_groups == b.security_groups
        && a.port_security_enabled == b.port_security_enabled
        && a.allowed_address_pairs == b.allowed_address_pairs
        && a.host_id == b.host_id
        && a.device_id == b.device_id
        && a.device_owner == b.device_owner
        && a.profile == b.profile
        && a.vnic_type == b.vnic_type
        && a.project_id == b.project_id
}

fn put_all<T>(
    map: &mut BTreeMap<String, T>,
    objects: Vec<T>,
    id: impl Fn(&T) -> &String,
    put: &mut Vec<String>,
) {
    for o in objects {
        let key = id(&o).clone();
        put.push(key.clone());
        map.insert(key, o);
    }
}

fn unremove(removed: &mut Vec<String>, put: &[String]) {
    if removed.is_empty() || put.is_empty() {
        return;
    }
    let put: std::collections::HashSet<&str> = put.iter().map(String::as_str).collect();
    removed.retain(|id| !put.contains(id.as_str()));
}

fn missing<T>(map: &BTreeMap<String, T>, listed: &[String], out: &mut Vec<String>) {
    for id in listed {
        if !map.contains_key(id) {
            out.push(id.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stamp() -> serde_json::Value {
        json!({"description": "", "tags": [], "created_at": "2026-01-01T00:00:00Z",
               "updated_at": "2026-01-01T00:00:00Z", "revision_number": 1})
    }

    fn with_stamp(mut v: serde_json::Value) -> serde_json::Value {
        if let (Some(m), serde_json::Value::Object(s)) = (v.as_object_mut(), stamp()) {
            for (k, val) in s {
                m.entry(k).or_insert(val);
            }
        }
        v
    }

    fn network(id: &str, name: &str) -> Network {
        serde_json::from_value(with_stamp(json!({
            "id": id, "name": name, "project_id": "p", "admin_state_up": true,
            "shared": false, "mtu": 1450, "router:external": false,
            "provider:network_type": "vxlan", "provider:physical_network": null,
            "provider:segmentation_id": 7, "port_security_enabled": true,
            "is_default": false, "status": "ACTIVE"
        })))
        .expect("network fixture")
    }

    fn subnet(id: &str, network_id: &str) -> Subnet {
        serde_json::from_value(with_stamp(json!({
            "id": id, "name": "", "project_id": "p", "network_id": network_id,
            "ip_version": 4, "cidr": "10.0.0.0/24", "gateway_ip": "10.0.0.1",
            "allocation_pools": [{"start": "10.0.0.2", "end": "10.0.0.254"}],
            "dns_nameservers": [], "host_routes": [], "enable_dhcp": true,
            "ipv6_address_mode": null, "ipv6_ra_mode": null, "subnetpool_id": null
        })))
        .expect("subnet fixture")
    }

    fn port(id: &str, host: &str, name: &str) -> Port {
        serde_json::from_value(with_stamp(json!({
            "id": id, "name": name, "network_id": "n1", "project_id": "p",
            "mac_address": "fa:16:3e:00:00:01", "admin_state_up": true, "status": "ACTIVE",
            "device_id": "", "device_owner": "", "fixed_ips": [],
            "security_groups": ["sg1"], "port_security_enabled": true,
            "allowed_address_pairs": [], "binding:host_id": host,
            "binding:vif_type": "ovs", "binding:vnic_type": "normal"
        })))
        .expect("port fixture")
    }

    fn group(id: &str) -> SecurityGroup {
        serde_json::from_value(with_stamp(json!({
            "id": id, "name": "default", "project_id": "p", "stateful": true
        })))
        .expect("group fixture")
    }

    fn rule(id: &str, group: &str) -> SecurityGroupRule {
        serde_json::from_value(with_stamp(json!({
            "id": id, "project_id": "p", "security_group_id": group,
            "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
            "port_range_min": 22, "port_range_max": 22, "remote_ip_prefix": null,
            "remote_group_id": null
        })))
        .expect("rule fixture")
    }

    fn vtep(host: &str, ip: &str) -> HostVtep {
        HostVtep {
            host: host.into(),
            tunneling_ip: ip.into(),
        }
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn keys<T>(m: &BTreeMap<String, T>) -> Vec<&str> {
        m.keys().map(String::as_str).collect()
    }

    /// The first frame from `since = 0`: everything present and put.
    fn initial() -> HostFrame {
        HostFrame {
            revision: 10,
            present: Some(HostIds {
                networks: ids(&["n1"]),
                subnets: ids(&["s1"]),
                ports: ids(&["p1", "p2"]),
                security_groups: ids(&["sg1"]),
                security_group_rules: ids(&["r1", "r2"]),
                vteps: ids(&["h1", "h2"]),
                ..HostIds::default()
            }),
            put: HostObjects {
                networks: vec![network("n1", "net")],
                subnets: vec![subnet("s1", "n1")],
                ports: vec![port("p1", "h1", "a"), port("p2", "h2", "b")],
                security_groups: vec![group("sg1")],
                security_group_rules: vec![rule("r1", "sg1"), rule("r2", "sg1")],
                vteps: vec![vtep("h1", "192.0.2.1"), vtep("h2", "192.0.2.2")],
                ..HostObjects::default()
            },
            delete: HostIds::default(),
        }
    }

    /// The epoch moves with networks, subnets, groups, rules and resyncs, never with
    /// ports alone, and never goes back, even across a reset.
    #[test]
    fn epoch_moves_with_everything_but_ports() {
        let mut m = HostMirror::new();
        let frame = |revision, put: HostObjects| HostFrame {
            revision,
            present: None,
            put,
            delete: HostIds::default(),
        };
        let e0 = m.epoch();
        m.apply(frame(
            1,
            HostObjects {
                ports: vec![port("p1", "h1", "a")],
                ..Default::default()
            },
        ));
        assert_eq!(m.epoch(), e0);
        m.apply(frame(
            2,
            HostObjects {
                security_group_rules: vec![rule("r1", "sg1")],
                ..Default::default()
            },
        ));
        let e1 = m.epoch();
        assert!(e1 > e0);
        m.reset();
        assert!(m.epoch() > e1);
    }

    #[test]
    fn first_frame_fills_the_mirror() {
        let mut m = HostMirror::new();
        assert!(!m.is_synced());
        let d = m.apply(initial());
        assert!(d.resync);
        assert!(m.is_synced());
        assert_eq!(m.revision(), 10);
        assert_eq!(keys(&m.networks), ["n1"]);
        assert_eq!(keys(&m.subnets), ["s1"]);
        assert_eq!(keys(&m.ports), ["p1", "p2"]);
        assert_eq!(keys(&m.security_groups), ["sg1"]);
        assert_eq!(keys(&m.security_group_rules), ["r1", "r2"]);
        assert_eq!(keys(&m.vteps), ["h1", "h2"]);
        assert_eq!(d.put.ports, ids(&["p1", "p2"]));
        assert_eq!(d.removed, HostIds::default());
        assert_eq!(d.missing, HostIds::default());
        assert_eq!(
            m.ports_on("h1").map(|p| p.id.as_str()).collect::<Vec<_>>(),
            ["p1"]
        );
        assert_eq!(m.subnets_of("n1").count(), 1);
        assert_eq!(m.rules_of("sg1").count(), 2);
        assert_eq!(m.rules_of("sg2").count(), 0);
    }

    #[test]
    fn later_frames_put_and_delete() {
        let mut m = HostMirror::new();
        m.apply(initial());
        let d = m.apply(HostFrame {
            revision: 11,
            present: None,
            put: HostObjects {
                ports: vec![port("p1", "h1", "renamed"), port("p3", "h1", "c")],
                vteps: vec![vtep("h2", "192.0.2.22")],
                ..Default::default()
            },
            delete: HostIds {
                ports: ids(&["p2"]),
                security_group_rules: ids(&["r2", "unknown"]),
                ..Default::default()
            },
        });
        assert!(!d.resync);
        assert_eq!(m.revision(), 11);
        assert_eq!(keys(&m.ports), ["p1", "p3"]);
        assert_eq!(m.ports.get("p1").map(|p| p.name.as_str()), Some("renamed"));
        assert_eq!(keys(&m.security_group_rules), ["r1"]);
        assert_eq!(
            m.vteps.get("h2").map(|v| v.tunneling_ip.as_str()),
            Some("192.0.2.22")
        );
        assert_eq!(d.put.ports, ids(&["p1", "p3"]));
        assert_eq!(d.put.vteps, ids(&["h2"]));
        // Deleting an id the mirror does not hold is not reported.
        assert_eq!(d.removed.ports, ids(&["p2"]));
        assert_eq!(d.removed.security_group_rules, ids(&["r2"]));
        // Untouched kinds stay.
        assert_eq!(keys(&m.networks), ["n1"]);
        assert_eq!(keys(&m.subnets), ["s1"]);
    }

    #[test]
    fn a_port_changing_only_its_status_is_status_only() {
        let mut m = HostMirror::new();
        m.apply(initial());
        let put = |p: Port| HostFrame {
            revision: 12,
            present: None,
            put: HostObjects {
                ports: vec![p],
                ..Default::default()
            },
            delete: HostIds::default(),
        };
        let mut down = port("p1", "h1", "renamed");
        down.status = "DOWN".into();
        down.revision_number += 1;
        let d = m.apply(put(down));
        assert_eq!(d.status_only, ids(&["p1"]));
        assert!(d.is_status_only() && !d.is_empty());
        // moved to another host: the dataplane reads that
        let d = m.apply(put(port("p1", "h2", "renamed")));
        assert!(d.status_only.is_empty() && !d.is_status_only());
        // a new port is never status only
        let d = m.apply(put(port("p9", "h1", "new")));
        assert!(!d.is_status_only());
    }

    #[test]
    fn keepalive_moves_only_the_revision() {
        let mut m = HostMirror::new();
        m.apply(initial());
        let d = m.apply(HostFrame {
            revision: 42,
            ..Default::default()
        });
        assert!(d.is_empty());
        assert!(!d.resync);
        assert_eq!(m.revision(), 42);
        assert_eq!(m.ports.len(), 2);
    }

    #[test]
    fn resync_drops_what_is_not_present_and_keeps_unchanged_objects() {
        let mut m = HostMirror::new();
        m.apply(initial());
        // Reconnect with since=10: p2, r2, h2 left the view while disconnected, p1 changed,
        // p4 appeared; n1, s1, sg1, r1, h1 did not change so only their ids are listed.
        let d = m.apply(HostFrame {
            revision: 20,
            present: Some(HostIds {
                networks: ids(&["n1"]),
                subnets: ids(&["s1"]),
                ports: ids(&["p1", "p4"]),
                security_groups: ids(&["sg1"]),
                security_group_rules: ids(&["r1"]),
                vteps: ids(&["h1"]),
                ..HostIds::default()
            }),
            put: HostObjects {
                ports: vec![port("p1", "h1", "changed"), port("p4", "h1", "d")],
                ..Default::default()
            },
            delete: HostIds::default(),
        });
        assert!(d.resync);
        assert_eq!(m.revision(), 20);
        assert_eq!(keys(&m.ports), ["p1", "p4"]);
        assert_eq!(m.ports.get("p1").map(|p| p.name.as_str()), Some("changed"));
        assert_eq!(keys(&m.security_group_rules), ["r1"]);
        assert_eq!(keys(&m.vteps), ["h1"]);
        assert_eq!(keys(&m.networks), ["n1"]);
        assert_eq!(d.removed.ports, ids(&["p2"]));
        assert_eq!(d.removed.security_group_rules, ids(&["r2"]));
        assert_eq!(d.removed.vteps, ids(&["h2"]));
        assert_eq!(d.removed.networks, Vec::<String>::new());
        assert_eq!(d.put.ports, ids(&["p1", "p4"]));
        assert_eq!(d.missing, HostIds::default());
    }

    #[test]
    fn resync_to_an_empty_view_empties_the_mirror() {
        let mut m = HostMirror::new();
        m.apply(initial());
        let d = m.apply(HostFrame {
            revision: 30,
            present: Some(HostIds::default()),
            ..Default::default()
        });
        assert!(m.networks.is_empty() && m.subnets.is_empty() && m.ports.is_empty());
        assert!(m.security_groups.is_empty() && m.security_group_rules.is_empty());
        assert!(m.vteps.is_empty());
        assert_eq!(d.removed.ports, ids(&["p1", "p2"]));
        assert_eq!(d.removed.vteps, ids(&["h1", "h2"]));
        assert!(m.is_synced());
    }

    #[test]
    fn present_ids_without_objects_are_reported_missing() {
        // A fresh mirror resuming from a revision it never held.
        let mut m = HostMirror::new();
        let d = m.apply(HostFrame {
            revision: 5,
            present: Some(HostIds {
                ports: ids(&["p1", "p2"]),
                networks: ids(&["n1"]),
                ..Default::default()
            }),
            put: HostObjects {
                ports: vec![port("p1", "h1", "a")],
                ..Default::default()
            },
            delete: HostIds::default(),
        });
        assert_eq!(d.missing.ports, ids(&["p2"]));
        assert_eq!(d.missing.networks, ids(&["n1"]));
        assert!(!d.is_empty());
        m.reset();
        assert_eq!(m.revision(), 0);
        assert!(!m.is_synced());
        assert!(m.ports.is_empty());
    }

    #[test]
    fn an_id_both_deleted_and_put_ends_up_stored() {
        let mut m = HostMirror::new();
        m.apply(initial());
        let d = m.apply(HostFrame {
            revision: 12,
            present: None,
            put: HostObjects {
                ports: vec![port("p2", "h2", "back")],
                ..Default::default()
            },
            delete: HostIds {
                ports: ids(&["p2"]),
                ..Default::default()
            },
        });
        assert_eq!(m.ports.get("p2").map(|p| p.name.as_str()), Some("back"));
        assert_eq!(d.put.ports, ids(&["p2"]));
        assert!(d.removed.ports.is_empty());
    }

    #[test]
    fn frames_before_any_resync_still_apply() {
        let mut m = HostMirror::new();
        let d = m.apply(HostFrame {
            revision: 3,
            present: None,
            put: HostObjects {
                networks: vec![network("n9", "x")],
                ..Default::default()
            },
            delete: HostIds::default(),
        });
        assert!(!m.is_synced());
        assert_eq!(keys(&m.networks), ["n9"]);
        assert_eq!(d.put.networks, ids(&["n9"]));
        assert_eq!(m.revision(), 3);
    }

    #[test]
    fn frames_round_trip_through_json() {
        // What the watch decodes: the model's serde shape, with omitted sections.
        let line = serde_json::to_string(&initial()).expect("serialize");
        let frame: HostFrame = serde_json::from_str(&line).expect("deserialize");
        let mut m = HostMirror::new();
        m.apply(frame);
        assert_eq!(m.ports.len(), 2);
        let keepalive: HostFrame = serde_json::from_str(r#"{"revision": 9}"#).expect("keepalive");
        assert!(m.apply(keepalive).is_empty());
        assert_eq!(m.revision(), 9);
    }
}
