//! `/v2/lbaas/pools/{pool}/members`, one by one and as a batch (`PUT` with the
//! whole list: members matched by address and port are updated, missing ones
//! deleted, new ones created, in one transaction).

use std::net::IpAddr;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use bytes::Bytes;
use kuryr_model::lbaas::{operating, provisioning};
use kuryr_model::{Member, Pool, Subnet};
use kuryr_store::{Compare, Op, Txn};
use serde_json::{Map, Value, json};

use super::LbResult;
use super::body::{self, Body};
use super::fault::Fault;
use super::list::{self, Object, Query, can_write, find, key};
use super::now;
use super::write::{self, commit, lock, put_entry};
use crate::networking::db::{Db, Entry};
use crate::networking::resource;
use crate::networking::{Ctx, Shared, new_id};

const FIELDS: [&str; 15] = [
    "name",
    "project_id",
    "tenant_id",
    "address",
    "protocol_port",
    "subnet_id",
    "weight",
    "backup",
    "admin_state_up",
    "monitor_address",
    "monitor_port",
    "tags",
    "request_sriov",
    "vnic_type",
    "id",
];

/// The pool, for the caller (404 as Octavia names it when missing).
fn pool_of(db: &Db, ctx: &Ctx, pool: &str) -> LbResult<Entry<Pool>> {
    find::<Pool>(db, ctx, pool)
}

/// Where a member's health is checked from: the host of the kuryr port that holds
/// its address on its subnet (or, without a subnet, on the VIP's network).
pub fn port_host(db: &Db, m: &Member) -> Option<String> {
    let subnets: Vec<String> = match &m.subnet_id {
        Some(s) => vec![s.clone()],
        None => {
            let lb = db.loadbalancers.get(&m.loadbalancer_id)?;
            db.subnets_by_network
                .get(&lb.value.vip_network_id)?
                .iter()
                .cloned()
                .collect()
        }
    };
    for s in &subnets {
        // The address index first: most addresses are no port of that subnet.
        if !db.ip_in_use(s, &m.address) {
            continue;
        }
        let Some(sub) = db.subnets.get(s) else {
            continue;
        };
        for pid in db
            .ports_by_network
            .get(&sub.value.network_id)
            .into_iter()
            .flatten()
        {
            if let Some(p) = db.ports.get(pid)
                && p.value
                    .fixed_ips
                    .iter()
                    .any(|f| f.subnet_id == *s && f.ip_address == m.address)
            {
                return (!p.value.host_id.is_empty()).then(|| p.value.host_id.clone());
            }
        }
    }
    None
}

struct Spec {
    address: Option<IpAddr>,
    port: Option<u16>,
    subnet_id: Option<Option<String>>,
    weight: Option<u32>,
    backup: Option<bool>,
    admin_state_up: Option<bool>,
    monitor_address: Option<Option<IpAddr>>,
    monitor_port: Option<Option<u16>>,
    name: Option<String>,
    tags: Option<Vec<String>>,
}

fn spec(b: &Body) -> LbResult<Spec> {
    b.only(&FIELDS)?;
    if b.opt_bool("request_sriov")? == Some(true) {
        return Err(Fault::unsupported("SR-IOV member ports"));
    }
    Ok(Spec {
        address: b.opt_ip("address")?,
        port: b.opt_int("protocol_port", 1, 65535)?.map(|p| p as u16),
        subnet_id: b
            .has("subnet_id")
            .then(|| b.opt_str("subnet_id"))
            .transpose()?,
        weight: b.opt_int("weight", 0, 256)?.map(|w| w as u32),
        backup: b.opt_bool("backup")?,
        admin_state_up: b.opt_bool("admin_state_up")?,
        monitor_address: b
            .has("monitor_address")
            .then(|| b.opt_ip("monitor_address"))
            .transpose()?,
        monitor_port: b
            .has("monitor_port")
            .then(|| {
                b.opt_int("monitor_port", 1, 65535)
                    .map(|p| p.map(|p| p as u16))
            })
            .transpose()?,
        name: b.opt_str("name")?,
        tags: b.has("tags").then(|| b.tags()).transpose()?,
    })
}

fn check_subnet(db: &Db, ctx: &Ctx, subnet: &Option<String>, address: IpAddr) -> LbResult<()> {
    let Some(s) = subnet else {
        return Ok(());
    };
    let sub = resource::find::<Subnet>(db, ctx, s)
        .map_err(|_| Fault::validation(format!("Subnet {s} not found.")))?;
    if sub
        .value
        .cidr
        .parse::<ipnet::IpNet>()
        .is_ok_and(|c| c.addr().is_ipv4() != address.is_ipv4())
    {
        return Err(Fault::validation(format!(
            "Member address {address} is not of the IP version of subnet {s}"
        )));
    }
    Ok(())
}

fn duplicate(
    db: &Db,
    pool: &str,
    address: IpAddr,
    port: u16,
    except: Option<&str>,
) -> LbResult<()> {
    for id in db.members_by_pool.get(pool).into_iter().flatten() {
        if Some(id.as_str()) == except {
            continue;
        }
        if let Some(m) = db.members.get(id)
            && m.value.address == address
            && m.value.protocol_port == port
        {
            return Err(Fault::new(
                409,
                format!(
                    "Another member on this pool is already using ip {address} on protocol_port {port}"
                ),
            ));
        }
    }
    Ok(())
}

fn new_member(db: &Db, pool: &Pool, s: &Spec, ts: &str) -> LbResult<Member> {
    let address = s
        .address
        .ok_or_else(|| Fault::invalid("address", "None", "Mandatory field missing."))?;
    let port = s
        .port
        .ok_or_else(|| Fault::invalid("protocol_port", "None", "Mandatory field missing."))?;
    let mut m = Member {
        id: new_id(),
        name: s.name.clone().unwrap_or_default(),
        project_id: pool.project_id.clone(),
        pool_id: pool.id.clone(),
        loadbalancer_id: pool.loadbalancer_id.clone(),
        address,
        protocol_port: port,
        subnet_id: s.subnet_id.clone().flatten(),
        weight: s.weight.unwrap_or(1),
        backup: s.backup.unwrap_or(false),
        admin_state_up: s.admin_state_up.unwrap_or(true),
        monitor_address: s.monitor_address.flatten(),
        monitor_port: s.monitor_port.flatten(),
        provisioning_status: provisioning::PENDING_CREATE.into(),
        operating_status: operating::NO_MONITOR.into(),
        monitor_host: String::new(),
        tags: s.tags.clone().unwrap_or_default(),
        created_at: ts.to_string(),
        updated_at: None,
        revision_number: 1,
    };
    m.monitor_host = port_host(db, &m).unwrap_or_default();
    Ok(m)
}

fn apply(m: &mut Member, s: &Spec) {
    if let Some(n) = &s.name {
        m.name = n.clone();
    }
    if let Some(w) = s.weight {
        m.weight = w;
    }
    if let Some(b) = s.backup {
        m.backup = b;
    }
    if let Some(a) = s.admin_state_up {
        m.admin_state_up = a;
    }
    if let Some(a) = s.monitor_address {
        m.monitor_address = a;
    }
    if let Some(p) = s.monitor_port {
        m.monitor_port = p;
    }
    if let Some(t) = &s.tags {
        m.tags = t.clone();
    }
}

fn members_used(db: &Db, project: &str) -> usize {
    db.members
        .values()
        .filter(|e| e.value.project_id == project)
        .count()
}

pub async fn list(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(pool): Path<String>,
    RawQuery(q): RawQuery,
) -> LbResult<Json<Value>> {
    let q = Query::parse(q.as_deref())?;
    let url = format!(
        "{}/load-balancer/v2/lbaas/pools/{pool}/members",
        net.config.public_url
    );
    let db = net.db();
    pool_of(&db, &ctx, &pool)?;
    Ok(Json(list::list::<Member>(&db, &ctx, &q, &url, |m| {
        m.pool_id == pool
    })?))
}

pub async fn show(
    State(net): State<Shared>,
    ctx: Ctx,
    Path((pool, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> LbResult<Json<Value>> {
    let q = Query::parse(q.as_deref())?;
    let db = net.db();
    pool_of(&db, &ctx, &pool)?;
    let e = find::<Member>(&db, &ctx, &id)?;
    if e.value.pool_id != pool {
        return Err(Fault::not_found(Member::DISPLAY, &id));
    }
    Ok(Json(
        json!({"member": list::project(e.value.view(&db), &q.fields)}),
    ))
}

pub async fn create(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(pool_id): Path<String>,
    raw: Bytes,
) -> LbResult<(StatusCode, Json<Value>)> {
    let b = Body::parse(&raw, "member")?;
    let s = spec(&b)?;
    let m = commit(&net, |db| {
        let pool = pool_of(db, &ctx, &pool_id)?;
        if !can_write(&ctx, &pool.value.project_id) {
            return Err(Fault::forbidden());
        }
        write::check_mutable(db, &*pool.value)?;
        body::check_quota(
            db.lb_quota(&pool.value.project_id).member,
            members_used(db, &pool.value.project_id),
            "Member",
        )?;
        let m = new_member(db, &pool.value, &s, &now())?;
        check_subnet(db, &ctx, &m.subnet_id, m.address)?;
        duplicate(db, &pool_id, m.address, m.protocol_port, None)?;
        let mut txn = lock(db, &pool.value.loadbalancer_id, Txn::new())?;
        txn = write::put_new(txn, &m)?;
        Ok((txn, m))
    })
    .await?;
    let db = net.db();
    Ok((StatusCode::CREATED, Json(json!({"member": m.view(&db)}))))
}

pub async fn update(
    State(net): State<Shared>,
    ctx: Ctx,
    Path((pool_id, id)): Path<(String, String)>,
    raw: Bytes,
) -> LbResult<Json<Value>> {
    let b = Body::parse(&raw, "member")?;
    for fixed in ["address", "protocol_port", "subnet_id", "project_id"] {
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
    let s = spec(&b)?;
    let m = commit(&net, |db| {
        pool_of(db, &ctx, &pool_id)?;
        let e = find::<Member>(db, &ctx, &id)?;
        if e.value.pool_id != pool_id {
            return Err(Fault::not_found(Member::DISPLAY, &id));
        }
        if !can_write(&ctx, &e.value.project_id) {
            return Err(Fault::forbidden());
        }
        write::check_mutable(db, &*e.value)?;
        let mut v = (*e.value).clone();
        apply(&mut v, &s);
        v.provisioning_status = provisioning::PENDING_UPDATE.into();
        v.touch(&now());
        let txn = lock(db, &v.loadbalancer_id, Txn::new())?;
        Ok((put_entry(txn, &e, &v)?, v))
    })
    .await?;
    let db = net.db();
    Ok(Json(json!({"member": m.view(&db)})))
}

pub async fn delete(
    State(net): State<Shared>,
    ctx: Ctx,
    Path((pool_id, id)): Path<(String, String)>,
) -> LbResult<StatusCode> {
    commit(&net, |db| {
        pool_of(db, &ctx, &pool_id)?;
        let e = find::<Member>(db, &ctx, &id)?;
        if e.value.pool_id != pool_id {
            return Err(Fault::not_found(Member::DISPLAY, &id));
        }
        if !can_write(&ctx, &e.value.project_id) {
            return Err(Fault::forbidden());
        }
        write::check_mutable(db, &*e.value)?;
        let mut txn = lock(db, &e.value.loadbalancer_id, Txn::new())?;
        txn = txn.when(Compare::ModRevision(key::<Member>(&id), e.rev));
        txn.ops.push(Op::Delete(key::<Member>(&id)));
        Ok((txn, ()))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /pools/{pool}/members`: the pool's members become the list given
/// (`additive_only=true`: none is deleted).
pub async fn batch(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(pool_id): Path<String>,
    RawQuery(q): RawQuery,
    raw: Bytes,
) -> LbResult<StatusCode> {
    let additive = form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .any(|(k, v)| k == "additive_only" && v.eq_ignore_ascii_case("true"));
    let v: Value = serde_json::from_slice(&raw).map_err(|_| Fault::bad_body())?;
    let items = match v.get("members") {
        Some(Value::Array(a)) => a.clone(),
        _ => {
            return Err(Fault::invalid(
                "members",
                v.get("members").cloned().unwrap_or(Value::Null),
                "Mandatory field missing.",
            ));
        }
    };
    let mut specs = Vec::new();
    for item in items {
        let map: Map<String, Value> = match item {
            Value::Object(m) => m,
            other => {
                return Err(Fault::invalid(
                    "members",
                    other,
                    "Value should be an object.",
                ));
            }
        };
        let s = spec(&Body {
            root: "member",
            map,
        })?;
        let address = s
            .address
            .ok_or_else(|| Fault::invalid("address", "None", "Mandatory field missing."))?;
        let port = s
            .port
            .ok_or_else(|| Fault::invalid("protocol_port", "None", "Mandatory field missing."))?;
        if specs
            .iter()
            .any(|(a, p, _): &(IpAddr, u16, Spec)| *a == address && *p == port)
        {
            return Err(Fault::new(
                409,
                format!(
                    "Another member on this pool is already using ip {address} on protocol_port {port}"
                ),
            ));
        }
        specs.push((address, port, s));
    }
    commit(&net, |db| {
        let pool = pool_of(db, &ctx, &pool_id)?;
        if !can_write(&ctx, &pool.value.project_id) {
            return Err(Fault::forbidden());
        }
        write::check_mutable(db, &*pool.value)?;
        let ts = now();
        let mut txn = lock(db, &pool.value.loadbalancer_id, Txn::new())?;
        let existing: Vec<Entry<Member>> = db
            .members_by_pool
            .get(&pool_id)
            .into_iter()
            .flatten()
            .filter_map(|id| db.members.get(id).cloned())
            .collect();
        let mut created = 0;
        for (address, port, s) in &specs {
            match existing
                .iter()
                .find(|e| e.value.address == *address && e.value.protocol_port == *port)
            {
                Some(e) => {
                    let mut v = (*e.value).clone();
                    apply(&mut v, s);
                    v.provisioning_status = provisioning::PENDING_UPDATE.into();
                    v.touch(&ts);
                    txn = put_entry(txn, e, &v)?;
                }
                None => {
                    let m = new_member(db, &pool.value, s, &ts)?;
                    check_subnet(db, &ctx, &m.subnet_id, m.address)?;
                    txn = write::put_new(txn, &m)?;
                    created += 1;
                }
            }
        }
        let mut deleted = 0;
        if !additive {
            for e in &existing {
                if !specs
                    .iter()
                    .any(|(a, p, _)| e.value.address == *a && e.value.protocol_port == *p)
                {
                    txn = txn.when(Compare::ModRevision(key::<Member>(&e.value.id), e.rev));
                    txn.ops.push(Op::Delete(key::<Member>(&e.value.id)));
                    deleted += 1;
                }
            }
        }
        let used = members_used(db, &pool.value.project_id) + created - deleted;
        let limit = db.lb_quota(&pool.value.project_id).member;
        if created > 0 && limit >= 0 && used as i64 > limit {
            return Err(Fault::quota("Member"));
        }
        Ok((txn, ()))
    })
    .await?;
    Ok(StatusCode::ACCEPTED)
}
