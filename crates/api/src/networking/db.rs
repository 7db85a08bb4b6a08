//! The in-memory view of everything under `/neutron/` in the store: rebuilt with one
//! `range` at start and kept current by a watch, so that reads never touch the store.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use kuryr_model::{
    Agent, FloatingIp, HealthMonitor, LbQuota, Listener, LoadBalancer, Member, Network, Pool, Port,
    PortForwarding, Quota, Router, SecurityGroup, SecurityGroupRule, Subnet, SubnetPool,
};
use kuryr_store::{Event, EventKind, KeyValue, Revision};
use serde::de::DeserializeOwned;

pub const PREFIX: &str = "/neutron/";

/// A resource as last written, with the store revision it was written at (the
/// compare target for the next update).
#[derive(Debug)]
pub struct Entry<T> {
    pub rev: Revision,
    pub value: Arc<T>,
}

impl<T> Clone for Entry<T> {
    fn clone(&self) -> Self {
        Entry {
            rev: self.rev,
            value: self.value.clone(),
        }
    }
}

pub type Table<T> = BTreeMap<String, Entry<T>>;

#[derive(Default)]
pub struct Db {
    pub networks: Table<Network>,
    pub subnets: Table<Subnet>,
    pub subnetpools: Table<SubnetPool>,
    pub ports: Table<Port>,
    pub security_groups: Table<SecurityGroup>,
    pub security_group_rules: Table<SecurityGroupRule>,
    pub routers: Table<Router>,
    pub floatingips: Table<FloatingIp>,
    pub port_forwardings: Table<PortForwarding>,
    pub loadbalancers: Table<LoadBalancer>,
    pub listeners: Table<Listener>,
    pub pools: Table<Pool>,
    pub members: Table<Member>,
    pub healthmonitors: Table<HealthMonitor>,
    pub lb_quotas: HashMap<String, LbQuota>,
    /// host → its agent's last load-balancer counters (listener id → counters).
    pub lb_stats: HashMap<String, Arc<serde_json::Value>>,
    pub quotas: HashMap<String, Quota>,
    /// The limits of projects without their own (the operator's `--default-quota`).
    pub default_quota: Quota,
    /// Registered agents, by host.
    pub agents: Table<Agent>,
    /// project id → its `default` security group.
    pub default_sg: HashMap<String, String>,

    // Secondary indexes, derived from the tables above.
    pub subnets_by_network: HashMap<String, BTreeSet<String>>,
    pub ports_by_network: HashMap<String, BTreeSet<String>>,
    pub rules_by_group: HashMap<String, BTreeSet<String>>,
    pub ips_by_subnet: HashMap<String, HashSet<IpAddr>>,
    pub macs_by_network: HashMap<String, HashSet<String>>,
    pub segmentation_ids: HashSet<u32>,
    pub ports_per_project: HashMap<String, usize>,
    /// `binding:host_id` → ports bound there.
    pub ports_by_host: HashMap<String, BTreeSet<String>>,
    /// security group → its member ports.
    pub ports_by_group: HashMap<String, BTreeSet<String>>,
    /// `device_id` → ports (a router's interface and gateway ports).
    pub ports_by_device: HashMap<String, BTreeSet<String>>,
    /// fixed port → floating IPs associated with it.
    pub fips_by_port: HashMap<String, BTreeSet<String>>,
    /// router → floating IPs that go through it.
    pub fips_by_router: HashMap<String, BTreeSet<String>>,
    /// floating IP → its port forwardings.
    pub pfs_by_fip: HashMap<String, BTreeSet<String>>,
    /// internal port → port forwardings to it.
    pub pfs_by_port: HashMap<String, BTreeSet<String>>,
    /// load balancer → its listeners, pools, members and health monitors.
    pub lb_children: HashMap<String, LbChildren>,
    /// pool → its members.
    pub members_by_pool: HashMap<String, BTreeSet<String>>,
    /// pool → its health monitor.
    pub hm_by_pool: HashMap<String, String>,
    /// VIP network → load balancers.
    pub lbs_by_network: HashMap<String, BTreeSet<String>>,
    /// host → members its agent checks.
    pub members_by_monitor: HashMap<String, BTreeSet<String>>,
}

/// The objects of one load balancer, by kind.
#[derive(Debug, Default, Clone)]
pub struct LbChildren {
    pub listeners: BTreeSet<String>,
    pub pools: BTreeSet<String>,
    pub members: BTreeSet<String>,
    pub healthmonitors: BTreeSet<String>,
}

impl LbChildren {
    fn is_empty(&self) -> bool {
        self.listeners.is_empty()
            && self.pools.is_empty()
            && self.members.is_empty()
            && self.healthmonitors.is_empty()
    }
}

fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Option<Arc<T>> {
    match serde_json::from_slice(&kv.value) {
        Ok(v) => Some(Arc::new(v)),
        Err(e) => {
            tracing::error!(key = %kv.key, error = %e, "undecodable record in store; ignored");
            None
        }
    }
}

impl Db {
    pub fn apply(&mut self, ev: &Event) {
        let put = ev.kind == EventKind::Put;
        let Some(rest) = ev.kv.key.strip_prefix(PREFIX) else {
            return;
        };
        let Some((table, id)) = rest.split_once('/') else {
            return;
        };
        let id = id.to_string();
        let kv = &ev.kv;
        match table {
            "networks" => {
                let old = self.networks.remove(&id);
                if let Some(o) = &old
                    && let Some(s) = o.value.segmentation_id
                {
                    self.segmentation_ids.remove(&s);
                }
                if put && let Some(v) = decode::<Network>(kv) {
                    if let Some(s) = v.segmentation_id {
                        self.segmentation_ids.insert(s);
                    }
                    self.networks.insert(
                        id,
                        Entry {
                            rev: kv.mod_revision,
                            value: v,
                        },
                    );
                }
            }
            "subnets" => {
                if let Some(o) = self.subnets.remove(&id) {
                    remove_from(&mut self.subnets_by_network, &o.value.network_id, &id);
                }
                if put && let Some(v) = decode::<Subnet>(kv) {
                    self.subnets_by_network
                        .entry(v.network_id.clone())
                        .or_default()
                        .insert(id.clone());
                    self.subnets.insert(
                        id,
                        Entry {
                            rev: kv.mod_revision,
                            value: v,
                        },
                    );
                }
            }
            "subnetpools" => {
                self.subnetpools.remove(&id);
                if put && let Some(v) = decode::<SubnetPool>(kv) {
                    self.subnetpools.insert(
                        id,
                        Entry {
                            rev: kv.mod_revision,
                            value: v,
                        },
                    );
                }
            }
            "ports" => {
                if let Some(o) = self.ports.remove(&id) {
                    self.unindex_port(&o.value);
                }
                if put && let Some(v) = decode::<Port>(kv) {
                    self.index_port(&v);
                    self.ports.insert(
                        id,
                        Entry {
                            rev: kv.mod_revision,
                            value: v,
                        },
                    );
                }
            }
            "security-groups" => {
                self.security_groups.remove(&id);
                if put && let Some(v) = decode::<SecurityGroup>(kv) {
                    self.security_groups.insert(
                        id,
                        Entry {
                            rev: kv.mod_revision,
                            value: v,
                        },
                    );
                }
            }
            "security-group-rules" => {
                if let Some(o) = self.security_group_rules.remove(&id) {
                    remove_from(&mut self.rules_by_group, &o.value.security_group_id, &id);
                }
                if put && let Some(v) = decode::<SecurityGroupRule>(kv) {
                    self.rules_by_group
                        .entry(v.security_group_id.clone())
                        .or_default()
                        .insert(id.clone());
                    self.security_group_rules.insert(
                        id,
                        Entry {
                            rev: kv.mod_revision,
                            value: v,
                        },
                    );
                }
            }
            "routers" => {
                self.routers.remove(&id);
                if put && let Some(v) = decode::<Router>(kv) {
                    self.routers.insert(
                        id,
                        Entry {
                            rev: kv.mod_revision,
                            value: v,
                        },
                    );
                }
            }
            "floatingips" => {
                if let Some(o) = self.floatingips.remove(&id) {
                    if let Some(p) = &o.value.port_id {
                        remove_from(&mut self.fips_by_port, p, &id);
                    }
                    if let Some(r) = &o.value.router_id {
                        remove_from(&mut self.fips_by_router, r, &id);
                    }
                }
                if put && let Some(v) = decode::<FloatingIp>(kv) {
                    if let Some(p) = &v.port_id {
                        self.fips_by_port
                            .entry(p.clone())
                            .or_default()
                            .insert(id.clone());
                    }
                    if let Some(r) = &v.router_id {
                        self.fips_by_router
                            .entry(r.clone())
                            .or_default()
                            .insert(id.clone());
                    }
                    self.floatingips.insert(
                        id,
                        Entry {
                            rev: kv.mod_revision,
                            value: v,
                        },
                    );
                }
            }
            "port-forwardings" => {
                if let Some(o) = self.port_forwardings.remove(&id) {
                    remove_from(&mut self.pfs_by_fip, &o.value.floatingip_id, &id);
                    remove_from(&mut self.pfs_by_port, &o.value.internal_port_id, &id);
                }
                if put && let Some(v) = decode::<PortForwarding>(kv) {
                    self.pfs_by_fip
                        .entry(v.floatingip_id.clone())
                        .or_default()
                        .insert(id.clone());
                    self.pfs_by_port
                        .entry(v.internal_port_id.clone())
                        .or_default()
                        .insert(id.clone());
                    self.port_forwardings.insert(
                        id,
                        Entry {
                            rev: kv.mod_revision,
                            value: v,
                        },
                    );
                }
            }
            "loadbalancers" => {
                if let Some(o) = self.loadbalancers.remove(&id) {
                    remove_from(&mut self.lbs_by_network, &o.value.vip_network_id, &id);
                }
                if put && let Some(v) = decode::<LoadBalancer>(kv) {
                    self.lbs_by_network
                        .entry(v.vip_network_id.clone())
                        .or_default()
                        .insert(id.clone());
                    self.loadbalancers.insert(
                        id,
                        Entry {
                            rev: kv.mod_revision,
                            value: v,
                        },
                    );
                }
            }
            "listeners" => {
                if let Some(o) = self.listeners.remove(&id) {
                    self.unchild(&o.value.loadbalancer_id, |c| &mut c.listeners, &id);
                }
                if put && let Some(v) = decode::<Listener>(kv) {
                    self.child(&v.loadbalancer_id, |c| &mut c.listeners, &id);
                    self.listeners.insert(
                        id,
                        Entry {
                            rev: kv.mod_revision,
                            value: v,
                        },
                    );
                }
            }
            "lb-pools" => {
                if let Some(o) = self.pools.remove(&id) {
                    self.unchild(&o.value.loadbalancer_id, |c| &mut c.pools, &id);
                }
                if put && let Some(v) = decode::<Pool>(kv) {
                    self.child(&v.loadbalancer_id, |c| &mut c.pools, &id);
                    self.pools.insert(
                        id,
                        Entry {
                            rev: kv.mod_revision,
                            value: v,
                        },
                    );
                }
            }
            "lb-members" => {
                if let Some(o) = self.members.remove(&id) {
                    self.unchild(&o.value.loadbalancer_id, |c| &mut c.members, &id);
                    remove_from(&mut self.members_by_pool, &o.value.pool_id, &id);
                    remove_from(&mut self.members_by_monitor, &o.value.monitor_host, &id);
                }
                if put && let Some(v) = decode::<Member>(kv) {
                    self.child(&v.loadbalancer_id, |c| &mut c.members, &id);
                    self.members_by_pool
                        .entry(v.pool_id.clone())
                        .or_default()
                        .insert(id.clone());
                    if !v.monitor_host.is_empty() {
                        self.members_by_monitor
                            .entry(v.monitor_host.clone())
                            .or_default()
                            .insert(id.clone());
                    }
                    self.members.insert(
                        id,
                        Entry {
                            rev: kv.mod_revision,
                            value: v,
                        },
                    );
                }
            }
            "healthmonitors" => {
                if let Some(o) = self.healthmonitors.remove(&id) {
                    self.unchild(&o.value.loadbalancer_id, |c| &mut c.healthmonitors, &id);
                    if self.hm_by_pool.get(&o.value.pool_id) == Some(&id) {
                        self.hm_by_pool.remove(&o.value.pool_id);
                    }
                }
                if put && let Some(v) = decode::<HealthMonitor>(kv) {
                    self.child(&v.loadbalancer_id, |c| &mut c.healthmonitors, &id);
                    self.hm_by_pool.insert(v.pool_id.clone(), id.clone());
                    self.healthmonitors.insert(
                        id,
                        Entry {
                            rev: kv.mod_revision,
                            value: v,
                        },
                    );
                }
            }
            "lb-stats" => {
                self.lb_stats.remove(&id);
                if put && let Some(v) = decode::<serde_json::Value>(kv) {
                    self.lb_stats.insert(id, v);
                }
            }
            "lb-quotas" => {
                self.lb_quotas.remove(&id);
                if put && let Some(q) = decode::<LbQuota>(kv) {
                    self.lb_quotas.insert(id, *q);
                }
            }
            "agents" => {
                self.agents.remove(&id);
                if put && let Some(v) = decode::<Agent>(kv) {
                    self.agents.insert(
                        id,
                        Entry {
                            rev: kv.mod_revision,
                            value: v,
                        },
                    );
                }
            }
            "quotas" => {
                self.quotas.remove(&id);
                if put && let Some(q) = decode::<Quota>(kv) {
                    self.quotas.insert(id, *q);
                }
            }
            "default-sg" => {
                if put {
                    match String::from_utf8(kv.value.clone()) {
                        Ok(sg) => {
                            self.default_sg.insert(id, sg);
                        }
                        Err(_) => tracing::error!(key = %kv.key, "undecodable default-sg record"),
                    }
                } else {
                    self.default_sg.remove(&id);
                }
            }
            // Uniqueness guards (ipam, macs, vni) are derived from the resources.
            _ => {}
        }
    }

    fn child(&mut self, lb: &str, set: fn(&mut LbChildren) -> &mut BTreeSet<String>, id: &str) {
        set(self.lb_children.entry(lb.to_string()).or_default()).insert(id.to_string());
    }

    fn unchild(&mut self, lb: &str, set: fn(&mut LbChildren) -> &mut BTreeSet<String>, id: &str) {
        if let Some(c) = self.lb_children.get_mut(lb) {
            set(c).remove(id);
            if c.is_empty() {
                self.lb_children.remove(lb);
            }
        }
    }

    /// The children of a load balancer (empty when it has none).
    pub fn children_of(&self, lb: &str) -> LbChildren {
        self.lb_children.get(lb).cloned().unwrap_or_default()
    }

    pub fn lb_quota(&self, project: &str) -> LbQuota {
        self.lb_quotas.get(project).copied().unwrap_or_default()
    }

    /// Puts a load balancer and everything under it into `v`.
    fn lb_into(&self, lb: &str, v: &mut HostView) {
        let Some(e) = self.loadbalancers.get(lb) else {
            return;
        };
        v.loadbalancers.insert(lb.to_string(), e.clone());
        // The VIP port and its groups' rules: who may reach the VIP.
        if let Some(p) = self.ports.get(&e.value.vip_port_id) {
            v.ports.insert(p.value.id.clone(), p.clone());
            for sg in &p.value.security_groups {
                if let Some(g) = self.security_groups.get(sg) {
                    v.security_groups.insert(sg.clone(), g.clone());
                }
                for rid in self.rules_by_group.get(sg).into_iter().flatten() {
                    if let Some(r) = self.security_group_rules.get(rid) {
                        v.security_group_rules.insert(rid.clone(), r.clone());
                    }
                }
            }
        }
        let Some(c) = self.lb_children.get(lb) else {
            return;
        };
        for id in &c.listeners {
            if let Some(e) = self.listeners.get(id) {
                v.listeners.insert(id.clone(), e.clone());
            }
        }
        for id in &c.pools {
            if let Some(e) = self.pools.get(id) {
                v.pools.insert(id.clone(), e.clone());
            }
        }
        for id in &c.members {
            if let Some(e) = self.members.get(id) {
                v.members.insert(id.clone(), e.clone());
            }
        }
        for id in &c.healthmonitors {
            if let Some(e) = self.healthmonitors.get(id) {
                v.healthmonitors.insert(id.clone(), e.clone());
            }
        }
    }

    fn index_port(&mut self, p: &Port) {
        *self
            .ports_per_project
            .entry(p.project_id.clone())
            .or_default() += 1;
        self.ports_by_network
            .entry(p.network_id.clone())
            .or_default()
            .insert(p.id.clone());
        self.macs_by_network
            .entry(p.network_id.clone())
            .or_default()
            .insert(p.mac_address.clone());
        for ip in &p.fixed_ips {
            self.ips_by_subnet
                .entry(ip.subnet_id.clone())
                .or_default()
                .insert(ip.ip_address);
        }
        if !p.device_id.is_empty() {
            self.ports_by_device
                .entry(p.device_id.clone())
                .or_default()
                .insert(p.id.clone());
        }
        if !p.host_id.is_empty() {
            self.ports_by_host
                .entry(p.host_id.clone())
                .or_default()
                .insert(p.id.clone());
        }
        for sg in &p.security_groups {
            self.ports_by_group
                .entry(sg.clone())
                .or_default()
                .insert(p.id.clone());
        }
    }

    fn unindex_port(&mut self, p: &Port) {
        if let Some(n) = self.ports_per_project.get_mut(&p.project_id) {
            *n -= 1;
            if *n == 0 {
                self.ports_per_project.remove(&p.project_id);
            }
        }
        remove_from(&mut self.ports_by_network, &p.network_id, &p.id);
        remove_from(&mut self.ports_by_host, &p.host_id, &p.id);
        remove_from(&mut self.ports_by_device, &p.device_id, &p.id);
        for sg in &p.security_groups {
            remove_from(&mut self.ports_by_group, sg, &p.id);
        }
        if let Some(set) = self.macs_by_network.get_mut(&p.network_id) {
            set.remove(&p.mac_address);
            if set.is_empty() {
                self.macs_by_network.remove(&p.network_id);
            }
        }
        for ip in &p.fixed_ips {
            if let Some(set) = self.ips_by_subnet.get_mut(&ip.subnet_id) {
                set.remove(&ip.ip_address);
                if set.is_empty() {
                    self.ips_by_subnet.remove(&ip.subnet_id);
                }
            }
        }
    }

    pub fn quota(&self, project: &str) -> Quota {
        self.quotas
            .get(project)
            .copied()
            .unwrap_or(self.default_quota)
    }

    /// The objects host `host` needs (see `kuryr_model::HostFrame`).
    pub fn host_view(&self, host: &str) -> HostView {
        let mut v = HostView::default();
        let empty = BTreeSet::new();
        let local = self.ports_by_host.get(host).unwrap_or(&empty);
        let mut remote_groups = BTreeSet::new();
        for pid in local {
            let Some(p) = self.ports.get(pid) else {
                continue;
            };
            if let Some(n) = self.networks.get(&p.value.network_id) {
                v.networks.insert(n.value.id.clone(), n.clone());
            }
            for sg in &p.value.security_groups {
                if let Some(g) = self.security_groups.get(sg) {
                    v.security_groups.insert(sg.clone(), g.clone());
                }
                for rid in self.rules_by_group.get(sg).unwrap_or(&empty) {
                    if let Some(r) = self.security_group_rules.get(rid) {
                        if let Some(remote) = &r.value.remote_group_id {
                            remote_groups.insert(remote.clone());
                        }
                        v.security_group_rules.insert(rid.clone(), r.clone());
                    }
                }
            }
        }
        // Routers with an interface on a network here: their legs are needed on this
        // host, so are all the networks they connect (routed traffic goes there).
        // A router whose SNAT namespace is here (its gateway and SNAT ports are
        // bound here) is needed whole.
        for pid in local {
            if let Some(p) = self.ports.get(pid)
                && matches!(
                    p.value.device_owner.as_str(),
                    "network:router_gateway" | "network:router_centralized_snat"
                )
                && let Some(r) = self.routers.get(&p.value.device_id)
            {
                v.routers.insert(r.value.id.clone(), r.clone());
            }
        }
        let local_nets: Vec<String> = v.networks.keys().cloned().collect();
        for net in &local_nets {
            for pid in self.ports_by_network.get(net).unwrap_or(&empty) {
                let Some(p) = self.ports.get(pid) else {
                    continue;
                };
                if p.value.device_owner != "network:router_interface" {
                    continue;
                }
                if let Some(r) = self.routers.get(&p.value.device_id) {
                    v.routers.insert(r.value.id.clone(), r.clone());
                }
            }
        }
        for (rid, r) in &v.routers {
            // The external network: floating IPs of ports here leave through it.
            if let Some(g) = &r.value.gateway
                && let Some(n) = self.networks.get(&g.network_id)
            {
                v.networks.insert(n.value.id.clone(), n.clone());
            }
            for pid in self.ports_by_device.get(rid).unwrap_or(&empty) {
                let Some(p) = self.ports.get(pid) else {
                    continue;
                };
                if p.value.device_owner != "network:router_interface" {
                    continue;
                }
                if let Some(n) = self.networks.get(&p.value.network_id) {
                    v.networks.insert(n.value.id.clone(), n.clone());
                }
            }
            for fid in self.fips_by_router.get(rid).unwrap_or(&empty) {
                if let Some(f) = self.floatingips.get(fid) {
                    v.floatingips.insert(fid.clone(), f.clone());
                    for pf in self.pfs_by_fip.get(fid).unwrap_or(&empty) {
                        if let Some(e) = self.port_forwardings.get(pf) {
                            v.port_forwardings.insert(pf.clone(), e.clone());
                        }
                    }
                }
            }
        }
        // Load balancers whose VIP some port here may reach (on one of the networks
        // here, local or routed), and those with members this host's agent checks.
        let mut lbs = BTreeSet::new();
        for net in v.networks.keys() {
            lbs.extend(
                self.lbs_by_network
                    .get(net)
                    .unwrap_or(&empty)
                    .iter()
                    .cloned(),
            );
        }
        for m in self.members_by_monitor.get(host).unwrap_or(&empty) {
            if let Some(e) = self.members.get(m) {
                lbs.insert(e.value.loadbalancer_id.clone());
            }
        }
        for lb in &lbs {
            self.lb_into(lb, &mut v);
        }
        for net in v.networks.keys() {
            for sid in self.subnets_by_network.get(net).unwrap_or(&empty) {
                if let Some(s) = self.subnets.get(sid) {
                    v.subnets.insert(sid.clone(), s.clone());
                }
            }
            for pid in self.ports_by_network.get(net).unwrap_or(&empty) {
                if let Some(p) = self.ports.get(pid) {
                    v.ports.insert(pid.clone(), p.clone());
                }
            }
        }
        for g in &remote_groups {
            for pid in self.ports_by_group.get(g).unwrap_or(&empty) {
                if let Some(p) = self.ports.get(pid) {
                    v.ports.insert(pid.clone(), p.clone());
                }
            }
        }
        for p in v.ports.values() {
            let h = &p.value.host_id;
            if h.is_empty() || v.vteps.contains_key(h) {
                continue;
            }
            if let Some(a) = self.agents.get(h)
                && let Some(ip) = a.value.configurations["tunneling_ip"].as_str()
            {
                v.vteps.insert(h.clone(), ip.to_string());
            }
        }
        v
    }

    pub fn subnets_of(&self, network_id: &str) -> Vec<Arc<Subnet>> {
        self.subnets_by_network
            .get(network_id)
            .map(|ids| {
                ids.iter()
                    .filter_map(|i| self.subnets.get(i))
                    .map(|e| e.value.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn ip_in_use(&self, subnet_id: &str, ip: &IpAddr) -> bool {
        self.ips_by_subnet
            .get(subnet_id)
            .is_some_and(|s| s.contains(ip))
    }
}

/// What one host needs, by id (vteps: host → tunneling IP).
#[derive(Default)]
pub struct HostView {
    pub networks: Table<Network>,
    pub subnets: Table<Subnet>,
    pub ports: Table<Port>,
    pub security_groups: Table<SecurityGroup>,
    pub security_group_rules: Table<SecurityGroupRule>,
    pub vteps: BTreeMap<String, String>,
    pub routers: Table<Router>,
    pub floatingips: Table<FloatingIp>,
    pub port_forwardings: Table<PortForwarding>,
    pub loadbalancers: Table<LoadBalancer>,
    pub listeners: Table<Listener>,
    pub pools: Table<Pool>,
    pub members: Table<Member>,
    pub healthmonitors: Table<HealthMonitor>,
}

fn remove_from(map: &mut HashMap<String, BTreeSet<String>>, key: &str, id: &str) {
    if let Some(set) = map.get_mut(key) {
        set.remove(id);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

/// Store keys.
pub mod keys {
    pub fn resource(table: &str, id: &str) -> String {
        format!("/neutron/{table}/{id}")
    }
    pub fn ip(subnet_id: &str, ip: &std::net::IpAddr) -> String {
        format!("/neutron/ipam/{subnet_id}/{ip}")
    }
    pub fn ip_prefix(subnet_id: &str) -> String {
        format!("/neutron/ipam/{subnet_id}/")
    }
    pub fn mac(network_id: &str, mac: &str) -> String {
        format!("/neutron/macs/{network_id}/{mac}")
    }
    pub fn mac_prefix(network_id: &str) -> String {
        format!("/neutron/macs/{network_id}/")
    }
    pub fn vni(vni: u32) -> String {
        format!("/neutron/vni/{vni}")
    }
    pub fn default_sg(project: &str) -> String {
        format!("/neutron/default-sg/{project}")
    }
    pub fn quota(project: &str) -> String {
        format!("/neutron/quotas/{project}")
    }
    pub fn lb_quota(project: &str) -> String {
        format!("/neutron/lb-quotas/{project}")
    }
    pub fn agent(host: &str) -> String {
        format!("/neutron/agents/{host}")
    }
}
