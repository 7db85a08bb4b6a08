//! `/v2/lbaas/listeners`: TCP, UDP and SCTP; anything at L7 is the provider's
//! refusal (501), as Octavia's OVN provider answers.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bytes::Bytes;
use kuryr_model::lbaas::{operating, provisioning};
use kuryr_model::{Listener, LoadBalancer, Pool};
use kuryr_store::{Op, Txn};
use serde_json::{Value, json};

use super::LbResult;
use super::body::{self, Body};
use super::fault::Fault;
use super::list::{Object, find_writable, key};
use super::loadbalancers::{can_change, sync_vip_group};
use super::now;
use super::write::{self, commit, lock, put_entry};
use crate::networking::db::Db;
use crate::networking::{Ctx, Shared, new_id};

pub const PROTOCOLS: [&str; 7] = [
    "HTTP",
    "HTTPS",
    "PROMETHEUS",
    "SCTP",
    "TCP",
    "TERMINATED_HTTPS",
    "UDP",
];

/// The transport a listener or pool protocol runs on (two listeners of one load
/// balancer may share a port only on different transports).
pub fn transport(protocol: &str) -> &'static str {
    match protocol {
        "UDP" => "UDP",
        "SCTP" => "SCTP",
        _ => "TCP",
    }
}

fn refuse_l7(protocol: &str) -> LbResult<()> {
    match protocol {
        "TCP" | "UDP" | "SCTP" => Ok(()),
        other => Err(Fault::unsupported(format!(
            "kuryr's provider is L4 (TCP, UDP, SCTP): {other} listeners are not supported"
        ))),
    }
}

const UNSUPPORTED: [(&str, &str); 9] = [
    ("insert_headers", "header insertion (L7)"),
    ("default_tls_container_ref", "TLS termination"),
    ("sni_container_refs", "TLS termination"),
    ("client_ca_tls_container_ref", "TLS client authentication"),
    ("client_crl_container_ref", "TLS client authentication"),
    ("tls_ciphers", "TLS termination"),
    ("tls_versions", "TLS termination"),
    ("alpn_protocols", "TLS termination"),
    ("l7policies", "L7 policies"),
];

const FIELDS: [&str; 29] = [
    "name",
    "description",
    "project_id",
    "tenant_id",
    "loadbalancer_id",
    "protocol",
    "protocol_port",
    "connection_limit",
    "default_pool_id",
    "default_pool",
    "admin_state_up",
    "allowed_cidrs",
    "timeout_client_data",
    "timeout_member_connect",
    "timeout_member_data",
    "timeout_tcp_inspect",
    "tags",
    "insert_headers",
    "default_tls_container_ref",
    "sni_container_refs",
    "client_ca_tls_container_ref",
    "client_authentication",
    "client_crl_container_ref",
    "tls_ciphers",
    "tls_versions",
    "alpn_protocols",
    "l7policies",
    "hsts_max_age",
    "hsts_include_subdomains",
];

fn check_unsupported(b: &Body) -> LbResult<()> {
    for (field, what) in UNSUPPORTED {
        if b.non_empty(field) {
            return Err(Fault::unsupported(format!(
                "kuryr's provider is L4: {what} ({field}) is not supported"
            )));
        }
    }
    match b.opt_str("client_authentication")?.as_deref() {
        None | Some("NONE") => {}
        Some(_) => {
            return Err(Fault::unsupported(
                "kuryr's provider is L4: TLS client authentication is not supported",
            ));
        }
    }
    if b.non_empty("default_pool") {
        return Err(Fault::unsupported(
            "creating a listener with its pool in one call; create the pool with listener_id",
        ));
    }
    Ok(())
}

fn allowed_cidrs(b: &Body, lb: &LoadBalancer) -> LbResult<Option<Option<Vec<String>>>> {
    if !b.has("allowed_cidrs") {
        return Ok(None);
    }
    let Some(list) = b.opt_list("allowed_cidrs")? else {
        return Ok(Some(None));
    };
    let mut out = Vec::new();
    for c in list {
        let net: ipnet::IpNet = c
            .parse()
            .map_err(|_| Fault::invalid("allowed_cidrs", &c, "Value should be a valid CIDR."))?;
        if net.addr().is_ipv4() != lb.vip_address.is_ipv4() {
            return Err(Fault::validation(format!(
                "CIDR {c} IP version incompatible with all VIPs ['{}'] IP version.",
                lb.vip_address
            )));
        }
        let c = net.trunc().to_string();
        if !out.contains(&c) {
            out.push(c);
        }
    }
    Ok(Some(Some(out)))
}

fn timeouts(b: &Body, l: &mut Listener) -> LbResult<()> {
    const MAX: i64 = 31_536_000_000;
    if let Some(v) = b.opt_int("timeout_client_data", 0, MAX)? {
        l.timeout_client_data = v as u64;
    }
    if let Some(v) = b.opt_int("timeout_member_connect", 0, MAX)? {
        l.timeout_member_connect = v as u64;
    }
    if let Some(v) = b.opt_int("timeout_member_data", 0, MAX)? {
        l.timeout_member_data = v as u64;
    }
    if let Some(v) = b.opt_int("timeout_tcp_inspect", 0, MAX)? {
        l.timeout_tcp_inspect = v as u64;
    }
    Ok(())
}

/// A pool that may be `listener`'s default: of its load balancer, of a protocol
/// its transport carries.
fn check_default_pool(db: &Db, l: &Listener, pool_id: &str) -> LbResult<()> {
    let p = db
        .pools
        .get(pool_id)
        .ok_or_else(|| Fault::not_found(Pool::DISPLAY, pool_id))?;
    if p.value.loadbalancer_id != l.loadbalancer_id {
        return Err(Fault::validation(format!(
            "Pool {pool_id} is on another load balancer"
        )));
    }
    if transport(&p.value.protocol) != transport(&l.protocol) {
        return Err(Fault::validation(format!(
            "The pool protocol '{}' is invalid while the listener protocol is '{}'.",
            p.value.protocol, l.protocol
        )));
    }
    Ok(())
}

fn check_port_free(db: &Db, l: &Listener) -> LbResult<()> {
    for id in &db.children_of(&l.loadbalancer_id).listeners {
        if *id == l.id {
            continue;
        }
        if let Some(o) = db.listeners.get(id)
            && o.value.protocol_port == l.protocol_port
            && transport(&o.value.protocol) == transport(&l.protocol)
        {
            return Err(Fault::new(
                409,
                format!(
                    "Another Listener on this Load Balancer is already using protocol {} and protocol_port {}",
                    l.protocol, l.protocol_port
                ),
            ));
        }
    }
    Ok(())
}

/// The load balancer's listeners as a change leaves them (`changed` replaces or
/// adds one, `removed` drops one), for the VIP group.
fn after<'a>(
    db: &'a Db,
    lb: &str,
    changed: Option<&'a Listener>,
    removed: Option<&str>,
) -> Vec<&'a Listener> {
    let mut out: Vec<&Listener> = db
        .children_of(lb)
        .listeners
        .iter()
        .filter(|id| Some(id.as_str()) != removed)
        .filter(|id| changed.is_none_or(|c| c.id != **id))
        .filter_map(|id| db.listeners.get(id).map(|e| &*e.value))
        .collect();
    out.extend(changed);
    out
}

pub async fn create(
    State(net): State<Shared>,
    ctx: Ctx,
    raw: Bytes,
) -> LbResult<(StatusCode, Json<Value>)> {
    let b = Body::parse(&raw, "listener")?;
    b.only(&FIELDS)?;
    let lb_id = b.req_str("loadbalancer_id")?;
    let protocol = b
        .opt_enum("protocol", &PROTOCOLS)?
        .ok_or_else(|| Fault::invalid("protocol", "None", "Mandatory field missing."))?;
    let port = b
        .opt_int("protocol_port", 1, 65535)?
        .ok_or_else(|| Fault::invalid("protocol_port", "None", "Mandatory field missing."))?;
    let connection_limit = b
        .opt_int("connection_limit", -1, 2_147_483_647)?
        .unwrap_or(-1);
    refuse_l7(&protocol)?;
    check_unsupported(&b)?;
    let id = new_id();
    let l = commit(&net, |db| {
        let lb = can_change(db, &ctx, &lb_id).map_err(|f| {
            if f.status == 404 {
                Fault::validation(format!("Invalid load balancer id provided: {lb_id}"))
            } else {
                f
            }
        })?;
        let count = db
            .listeners
            .values()
            .filter(|e| e.value.project_id == lb.value.project_id)
            .count();
        body::check_quota(
            db.lb_quota(&lb.value.project_id).listener,
            count,
            "Listener",
        )?;
        let ts = now();
        let mut l = Listener {
            id: id.clone(),
            name: b.opt_str("name")?.unwrap_or_default(),
            description: b.opt_str("description")?.unwrap_or_default(),
            project_id: lb.value.project_id.clone(),
            loadbalancer_id: lb_id.clone(),
            protocol: protocol.clone(),
            protocol_port: port as u16,
            connection_limit,
            default_pool_id: b.opt_str("default_pool_id")?,
            admin_state_up: b.opt_bool("admin_state_up")?.unwrap_or(true),
            allowed_cidrs: allowed_cidrs(&b, &lb.value)?.flatten(),
            timeout_client_data: 50000,
            timeout_member_connect: 5000,
            timeout_member_data: 50000,
            timeout_tcp_inspect: 0,
            provisioning_status: provisioning::PENDING_CREATE.into(),
            operating_status: operating::OFFLINE.into(),
            tags: b.tags()?,
            created_at: ts.clone(),
            updated_at: None,
            revision_number: 1,
        };
        timeouts(&b, &mut l)?;
        if let Some(p) = &l.default_pool_id {
            check_default_pool(db, &l, p)?;
        }
        check_port_free(db, &l)?;
        let mut txn = lock(db, &lb_id, Txn::new())?;
        txn = write::put_new(txn, &l)?;
        txn = sync_vip_group(db, &lb.value, &after(db, &lb_id, Some(&l), None), txn)?;
        Ok((txn, l))
    })
    .await?;
    let db = net.db();
    let mut v = l.view(&db);
    v.insert("operating_status".into(), json!(operating::OFFLINE));
    Ok((StatusCode::CREATED, Json(json!({"listener": v}))))
}

pub async fn update(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(id): Path<String>,
    raw: Bytes,
) -> LbResult<Json<Value>> {
    let b = Body::parse(&raw, "listener")?;
    b.only(&FIELDS)?;
    for fixed in ["loadbalancer_id", "protocol", "protocol_port", "project_id"] {
        if b.has(fixed) {
            return Err(Fault::new(
                400,
                format!(
                    "Invalid input for field/attribute {fixed}. Value: '{}'. The attribute cannot be changed.",
                    b.map[fixed]
                ),
            ));
        }
    }
    check_unsupported(&b)?;
    let l = commit(&net, |db| {
        let e = find_writable::<Listener>(db, &ctx, &id)?;
        write::check_mutable(db, &*e.value)?;
        let lb = db
            .loadbalancers
            .get(&e.value.loadbalancer_id)
            .ok_or_else(|| Fault::not_found(LoadBalancer::DISPLAY, &e.value.loadbalancer_id))?;
        let mut v = (*e.value).clone();
        if let Some(n) = b.opt_str("name")? {
            v.name = n;
        }
        if let Some(d) = b.opt_str("description")? {
            v.description = d;
        }
        if let Some(a) = b.opt_bool("admin_state_up")? {
            v.admin_state_up = a;
        }
        if let Some(c) = b.opt_int("connection_limit", -1, 2_147_483_647)? {
            v.connection_limit = c;
        }
        if b.has("default_pool_id") {
            v.default_pool_id = b.opt_str("default_pool_id")?;
            if let Some(p) = &v.default_pool_id {
                check_default_pool(db, &v, p)?;
            }
        }
        if let Some(c) = allowed_cidrs(&b, &lb.value)? {
            v.allowed_cidrs = c;
        }
        timeouts(&b, &mut v)?;
        if b.has("tags") {
            v.tags = b.tags()?;
        }
        v.provisioning_status = provisioning::PENDING_UPDATE.into();
        v.touch(&now());
        let mut txn = lock(db, &v.loadbalancer_id, Txn::new())?;
        txn = put_entry(txn, &e, &v)?;
        txn = sync_vip_group(
            db,
            &lb.value,
            &after(db, &v.loadbalancer_id, Some(&v), None),
            txn,
        )?;
        Ok((txn, v))
    })
    .await?;
    let db = net.db();
    Ok(Json(json!({"listener": l.view(&db)})))
}

pub async fn delete(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> LbResult<StatusCode> {
    commit(&net, |db| {
        let e = find_writable::<Listener>(db, &ctx, &id)?;
        write::check_mutable(db, &*e.value)?;
        let lb_id = e.value.loadbalancer_id.clone();
        let lb = db
            .loadbalancers
            .get(&lb_id)
            .ok_or_else(|| Fault::not_found(LoadBalancer::DISPLAY, &lb_id))?;
        let mut txn = lock(db, &lb_id, Txn::new())?;
        txn = txn.when(kuryr_store::Compare::ModRevision(
            key::<Listener>(&id),
            e.rev,
        ));
        txn.ops.push(Op::Delete(key::<Listener>(&id)));
        txn = sync_vip_group(db, &lb.value, &after(db, &lb_id, None, Some(&id)), txn)?;
        Ok((txn, ()))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
