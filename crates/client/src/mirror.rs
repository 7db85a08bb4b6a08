//! A host's view of the network, kept up to date from [`HostFrame`]s. Pure: no I/O.

use std::collections::BTreeMap;

use kuryr_model::{
    HostFrame, HostIds, HostObjects, HostVtep, Network, Port, SecurityGroup, SecurityGroupRule,
    Subnet,
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
    revision: u64,
    synced: bool,
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
    /// Ids that `present` lists but the mirror has no object for (the frame's `put` did
    /// not carry them). Only possible when the watch resumed from a `since` the mirror
    /// does not actually hold, e.g. a fresh mirror resuming at a non-zero revision:
    /// [`HostMirror::reset`] and watch again from `since = 0`.
    pub missing: HostIds,
}

impl MirrorDelta {
    /// Nothing changed (a keepalive, or a resync that matched what was held).
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
        *self = Self::default();
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

        let HostObjects {
            networks,
            subnets,
            ports,
            security_groups,
            security_group_rules,
            vteps,
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
            if delta.missing != HostIds::default() {
                tracing::warn!(
                    revision,
                    missing = ?delta.missing,
                    "watch resync lists objects the mirror does not hold"
                );
            }
            self.synced = true;
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
