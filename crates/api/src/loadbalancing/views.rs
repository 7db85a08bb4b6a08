//! What Octavia shows for each object: kuryr's record, the links to related
//! objects, the attributes of features the L4 provider does not have (with the
//! values Octavia gives them when unused), and operating statuses computed from
//! the members' health.

use kuryr_model::lbaas::operating;
use kuryr_model::{HealthMonitor, Listener, LoadBalancer, Member, Pool};
use serde_json::{Map, Value, json};

use crate::networking::db::Db;

fn ids<'a>(it: impl Iterator<Item = &'a String>) -> Value {
    Value::Array(it.map(|id| json!({"id": id})).collect())
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Whether the pool's health monitor is on (members then have a health).
pub fn monitored(db: &Db, pool_id: &str) -> bool {
    db.hm_by_pool
        .get(pool_id)
        .and_then(|h| db.healthmonitors.get(h))
        .is_some_and(|h| h.value.admin_state_up)
}

pub fn member_status(db: &Db, m: &Member) -> &'static str {
    if !m.admin_state_up {
        return operating::OFFLINE;
    }
    if !monitored(db, &m.pool_id) {
        return operating::NO_MONITOR;
    }
    match m.operating_status.as_str() {
        operating::ONLINE => operating::ONLINE,
        operating::ERROR => operating::ERROR,
        // Monitored, not checked yet.
        _ => operating::OFFLINE,
    }
}

pub fn pool_status(db: &Db, p: &Pool) -> &'static str {
    if !p.admin_state_up {
        return operating::OFFLINE;
    }
    let (mut total, mut down) = (0, 0);
    for id in db.members_by_pool.get(&p.id).into_iter().flatten() {
        if let Some(m) = db.members.get(id) {
            if !m.value.admin_state_up {
                continue;
            }
            total += 1;
            if member_status(db, &m.value) == operating::ERROR {
                down += 1;
            }
        }
    }
    match (total, down) {
        (t, d) if t > 0 && d == t => operating::ERROR,
        (_, d) if d > 0 => operating::DEGRADED,
        _ => operating::ONLINE,
    }
}

pub fn listener_status(db: &Db, l: &Listener) -> &'static str {
    if !l.admin_state_up {
        return operating::OFFLINE;
    }
    match l.default_pool_id.as_ref().and_then(|p| db.pools.get(p)) {
        Some(p) => match pool_status(db, &p.value) {
            operating::ERROR => operating::ERROR,
            operating::DEGRADED => operating::DEGRADED,
            _ => operating::ONLINE,
        },
        None => operating::ONLINE,
    }
}

pub fn lb_status(db: &Db, lb: &LoadBalancer) -> &'static str {
    if !lb.admin_state_up {
        return operating::OFFLINE;
    }
    let c = db.children_of(&lb.id);
    let worst = c
        .listeners
        .iter()
        .filter_map(|id| db.listeners.get(id))
        .map(|l| listener_status(db, &l.value))
        .any(|s| s == operating::ERROR || s == operating::DEGRADED);
    if worst {
        operating::DEGRADED
    } else {
        operating::ONLINE
    }
}

pub fn loadbalancer(db: &Db, lb: &LoadBalancer) -> Map<String, Value> {
    let c = db.children_of(&lb.id);
    object(json!({
        "id": lb.id,
        "name": lb.name,
        "description": lb.description,
        "project_id": lb.project_id,
        "tenant_id": lb.project_id,
        "vip_address": lb.vip_address.to_string(),
        "vip_port_id": lb.vip_port_id,
        "vip_subnet_id": lb.vip_subnet_id,
        "vip_network_id": lb.vip_network_id,
        "vip_qos_policy_id": null,
        "vip_vnic_type": "normal",
        "vip_sg_ids": [],
        "additional_vips": [],
        "provider": lb.provider,
        "flavor_id": lb.flavor_id,
        "availability_zone": lb.availability_zone,
        "admin_state_up": lb.admin_state_up,
        "provisioning_status": lb.provisioning_status,
        "operating_status": lb_status(db, lb),
        "listeners": ids(c.listeners.iter()),
        "pools": ids(c.pools.iter()),
        "tags": lb.tags,
        "created_at": lb.created_at,
        "updated_at": lb.updated_at,
    }))
}

pub fn listener(db: &Db, l: &Listener) -> Map<String, Value> {
    object(json!({
        "id": l.id,
        "name": l.name,
        "description": l.description,
        "project_id": l.project_id,
        "tenant_id": l.project_id,
        "protocol": l.protocol,
        "protocol_port": l.protocol_port,
        "connection_limit": l.connection_limit,
        "default_pool_id": l.default_pool_id,
        "default_tls_container_ref": null,
        "sni_container_refs": [],
        "insert_headers": {},
        "l7policies": [],
        "loadbalancers": [{"id": l.loadbalancer_id}],
        "admin_state_up": l.admin_state_up,
        "provisioning_status": l.provisioning_status,
        "operating_status": listener_status(db, l),
        "timeout_client_data": l.timeout_client_data,
        "timeout_member_connect": l.timeout_member_connect,
        "timeout_member_data": l.timeout_member_data,
        "timeout_tcp_inspect": l.timeout_tcp_inspect,
        "allowed_cidrs": l.allowed_cidrs,
        "client_ca_tls_container_ref": null,
        "client_authentication": "NONE",
        "client_crl_container_ref": null,
        "tls_ciphers": null,
        "tls_versions": null,
        "alpn_protocols": null,
        "hsts_max_age": null,
        "hsts_include_subdomains": false,
        "hsts_preload": false,
        "tags": l.tags,
        "created_at": l.created_at,
        "updated_at": l.updated_at,
    }))
}

pub fn pool(db: &Db, p: &Pool) -> Map<String, Value> {
    let listeners: Vec<String> = db
        .children_of(&p.loadbalancer_id)
        .listeners
        .into_iter()
        .filter(|l| {
            db.listeners
                .get(l)
                .is_some_and(|e| e.value.default_pool_id.as_deref() == Some(p.id.as_str()))
        })
        .collect();
    let members = db.members_by_pool.get(&p.id);
    let mut m = object(json!({
        "id": p.id,
        "name": p.name,
        "description": p.description,
        "project_id": p.project_id,
        "tenant_id": p.project_id,
        "protocol": p.protocol,
        "lb_algorithm": p.lb_algorithm,
        "session_persistence": p.session_persistence,
        "admin_state_up": p.admin_state_up,
        "provisioning_status": p.provisioning_status,
        "operating_status": pool_status(db, p),
        "listeners": ids(listeners.iter()),
        "loadbalancers": [{"id": p.loadbalancer_id}],
        "members": ids(members.into_iter().flatten()),
        "tls_container_ref": null,
        "ca_tls_container_ref": null,
        "crl_container_ref": null,
        "tls_enabled": false,
        "tls_ciphers": null,
        "tls_versions": null,
        "alpn_protocols": null,
        "tags": p.tags,
        "created_at": p.created_at,
        "updated_at": p.updated_at,
    }));
    // Octavia leaves the key out when the pool has no monitor.
    if let Some(h) = db.hm_by_pool.get(&p.id) {
        m.insert("healthmonitor_id".into(), json!(h));
    }
    m
}

pub fn member(db: &Db, m: &Member) -> Map<String, Value> {
    object(json!({
        "id": m.id,
        "name": m.name,
        "project_id": m.project_id,
        "tenant_id": m.project_id,
        "address": m.address.to_string(),
        "protocol_port": m.protocol_port,
        "subnet_id": m.subnet_id,
        "weight": m.weight,
        "backup": m.backup,
        "admin_state_up": m.admin_state_up,
        "monitor_address": m.monitor_address.map(|a| a.to_string()),
        "monitor_port": m.monitor_port,
        "provisioning_status": m.provisioning_status,
        "operating_status": member_status(db, m),
        "vnic_type": "normal",
        "tags": m.tags,
        "created_at": m.created_at,
        "updated_at": m.updated_at,
    }))
}

pub fn healthmonitor(_db: &Db, h: &HealthMonitor) -> Map<String, Value> {
    object(json!({
        "id": h.id,
        "name": h.name,
        "project_id": h.project_id,
        "tenant_id": h.project_id,
        "type": h.kind,
        "delay": h.delay,
        "timeout": h.timeout,
        "max_retries": h.max_retries,
        "max_retries_down": h.max_retries_down,
        "http_method": h.http_method,
        "url_path": h.url_path,
        "expected_codes": h.expected_codes,
        "http_version": h.http_version,
        "domain_name": h.domain_name,
        "admin_state_up": h.admin_state_up,
        "provisioning_status": h.provisioning_status,
        "operating_status": if h.admin_state_up { operating::ONLINE } else { operating::OFFLINE },
        "pools": [{"id": h.pool_id}],
        "tags": h.tags,
        "created_at": h.created_at,
        "updated_at": h.updated_at,
    }))
}
