//! `/v2/lbaas/pools`: ROUND_ROBIN, SOURCE_IP and SOURCE_IP_PORT over TCP, UDP and
//! SCTP, session persistence by source IP; the rest is the provider's refusal.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bytes::Bytes;
use kuryr_model::lbaas::{SessionPersistence, operating, provisioning};
use kuryr_model::{HealthMonitor, Listener, Member, Pool};
use kuryr_store::{Compare, Op, Txn};
use serde_json::{Value, json};

use super::LbResult;
use super::body::{self, Body};
use super::fault::Fault;
use super::list::{Object, find_writable, key};
use super::listeners::transport;
use super::loadbalancers::can_change;
use super::now;
use super::write::{self, commit, lock, put_entry};
use crate::networking::db::Db;
use crate::networking::{Ctx, Shared, new_id};

const PROTOCOLS: [&str; 7] = ["HTTP", "HTTPS", "PROXY", "PROXYV2", "SCTP", "TCP", "UDP"];
const ALGORITHMS: [&str; 4] = [
    "LEAST_CONNECTIONS",
    "ROUND_ROBIN",
    "SOURCE_IP",
    "SOURCE_IP_PORT",
];
const PERSISTENCE: [&str; 3] = ["APP_COOKIE", "HTTP_COOKIE", "SOURCE_IP"];

const FIELDS: [&str; 17] = [
    "name",
    "description",
    "project_id",
    "tenant_id",
    "loadbalancer_id",
    "listener_id",
    "protocol",
    "lb_algorithm",
    "session_persistence",
    "admin_state_up",
    "tags",
    "tls_enabled",
    "tls_container_ref",
    "ca_tls_container_ref",
    "crl_container_ref",
    "tls_ciphers",
    "tls_versions",
];

fn check_algorithm(alg: &str) -> LbResult<()> {
    match alg {
        "ROUND_ROBIN" | "SOURCE_IP" | "SOURCE_IP_PORT" => Ok(()),
        other => Err(Fault::unsupported(format!(
            "kuryr's provider balances with ROUND_ROBIN, SOURCE_IP or SOURCE_IP_PORT: {other} is not supported (nothing on the client's host knows every host's connection counts)"
        ))),
    }
}

fn persistence(b: &Body) -> LbResult<Option<Option<SessionPersistence>>> {
    if !b.has("session_persistence") {
        return Ok(None);
    }
    let sp = match b.map.get("session_persistence") {
        None | Some(Value::Null) => return Ok(Some(None)),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            return Err(Fault::invalid(
                "session_persistence",
                other,
                "Value should be an object.",
            ));
        }
    };
    let inner = Body {
        root: "session_persistence",
        map: sp,
    };
    let kind = inner
        .opt_enum("type", &PERSISTENCE)?
        .ok_or_else(|| Fault::invalid("type", "None", "Mandatory field missing."))?;
    if kind != "SOURCE_IP" {
        return Err(Fault::unsupported(format!(
            "kuryr's provider is L4: session persistence {kind} is not supported; use SOURCE_IP"
        )));
    }
    let timeout = inner.opt_int("persistence_timeout", 0, 2_147_483_647)?;
    Ok(Some(Some(SessionPersistence {
        kind,
        cookie_name: None,
        persistence_timeout: timeout.map(|t| t as u64),
        persistence_granularity: inner.opt_str("persistence_granularity")?,
    })))
}

fn check_unsupported(b: &Body) -> LbResult<()> {
    if b.opt_bool("tls_enabled")? == Some(true) {
        return Err(Fault::unsupported(
            "kuryr's provider is L4: TLS to members is not supported",
        ));
    }
    for f in [
        "tls_container_ref",
        "ca_tls_container_ref",
        "crl_container_ref",
        "tls_ciphers",
        "tls_versions",
    ] {
        if b.non_empty(f) {
            return Err(Fault::unsupported(format!(
                "kuryr's provider is L4: {f} is not supported"
            )));
        }
    }
    Ok(())
}

pub async fn create(
    State(net): State<Shared>,
    ctx: Ctx,
    raw: Bytes,
) -> LbResult<(StatusCode, Json<Value>)> {
    let b = Body::parse(&raw, "pool")?;
    b.only(&FIELDS)?;
    let protocol = b
        .opt_enum("protocol", &PROTOCOLS)?
        .ok_or_else(|| Fault::invalid("protocol", "None", "Mandatory field missing."))?;
    let algorithm = b
        .opt_enum("lb_algorithm", &ALGORITHMS)?
        .ok_or_else(|| Fault::invalid("lb_algorithm", "None", "Mandatory field missing."))?;
    let sp = persistence(&b)?.flatten();
    let listener_id = b.opt_str("listener_id")?;
    let lb_given = b.opt_str("loadbalancer_id")?;
    if listener_id.is_none() && lb_given.is_none() {
        return Err(Fault::validation(
            "Either listener_id or loadbalancer_id must be specified.",
        ));
    }
    match protocol.as_str() {
        "TCP" | "UDP" | "SCTP" => {}
        other => {
            return Err(Fault::unsupported(format!(
                "kuryr's provider is L4 (TCP, UDP, SCTP): {other} pools are not supported"
            )));
        }
    }
    check_algorithm(&algorithm)?;
    check_unsupported(&b)?;
    let id = new_id();
    let pool = commit(&net, |db| {
        let listener = match &listener_id {
            Some(l) => Some(
                db.listeners
                    .get(l)
                    .cloned()
                    .ok_or_else(|| Fault::validation(format!("Invalid listener id provided: {l}")))?,
            ),
            None => None,
        };
        let lb_id = match (&lb_given, &listener) {
            (Some(lb), Some(l)) if *lb != l.value.loadbalancer_id => {
                return Err(Fault::validation(
                    "The listener is on another load balancer than the one given.",
                ));
            }
            (Some(lb), _) => lb.clone(),
            (None, Some(l)) => l.value.loadbalancer_id.clone(),
            (None, None) => {
                return Err(Fault::validation(
                    "Either listener_id or loadbalancer_id must be specified.",
                ));
            }
        };
        let lb = can_change(db, &ctx, &lb_id)?;
        let count = db
            .pools
            .values()
            .filter(|e| e.value.project_id == lb.value.project_id)
            .count();
        body::check_quota(db.lb_quota(&lb.value.project_id).pool, count, "Pool")?;
        let ts = now();
        let pool = Pool {
            id: id.clone(),
            name: b.opt_str("name")?.unwrap_or_default(),
            description: b.opt_str("description")?.unwrap_or_default(),
            project_id: lb.value.project_id.clone(),
            loadbalancer_id: lb_id.clone(),
            listener_id: listener_id.clone(),
            protocol: protocol.clone(),
            lb_algorithm: algorithm.clone(),
            session_persistence: sp.clone(),
            admin_state_up: b.opt_bool("admin_state_up")?.unwrap_or(true),
            provisioning_status: provisioning::PENDING_CREATE.into(),
            operating_status: operating::OFFLINE.into(),
            tags: b.tags()?,
            created_at: ts.clone(),
            updated_at: None,
            revision_number: 1,
        };
        let mut txn = lock(db, &lb_id, Txn::new())?;
        if let Some(l) = &listener {
            if let Some(p) = &l.value.default_pool_id {
                let _ = p;
                return Err(Fault::new(409, "This listener already has a default pool"));
            }
            if transport(&l.value.protocol) != transport(&protocol) {
                return Err(Fault::validation(format!(
                    "The pool protocol '{protocol}' is invalid while the listener protocol is '{}'.",
                    l.value.protocol
                )));
            }
            let mut lv: Listener = (*l.value).clone();
            lv.default_pool_id = Some(id.clone());
            lv.provisioning_status = provisioning::PENDING_UPDATE.into();
            lv.touch(&ts);
            txn = put_entry(txn, l, &lv)?;
        }
        txn = write::put_new(txn, &pool)?;
        Ok((txn, pool))
    })
    .await?;
    let db = net.db();
    let mut v = pool.view(&db);
    // As Octavia answers a create: not operating yet.
    v.insert("operating_status".into(), json!(operating::OFFLINE));
    Ok((StatusCode::CREATED, Json(json!({"pool": v}))))
}

pub async fn update(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(id): Path<String>,
    raw: Bytes,
) -> LbResult<Json<Value>> {
    let b = Body::parse(&raw, "pool")?;
    b.only(&FIELDS)?;
    for fixed in ["loadbalancer_id", "listener_id", "protocol", "project_id"] {
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
    let algorithm = b.opt_enum("lb_algorithm", &ALGORITHMS)?;
    if let Some(a) = &algorithm {
        check_algorithm(a)?;
    }
    let sp = persistence(&b)?;
    check_unsupported(&b)?;
    let pool = commit(&net, |db| {
        let e = find_writable::<Pool>(db, &ctx, &id)?;
        write::check_mutable(db, &*e.value)?;
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
        if let Some(a) = &algorithm {
            v.lb_algorithm = a.clone();
        }
        if let Some(sp) = &sp {
            v.session_persistence = sp.clone();
        }
        if b.has("tags") {
            v.tags = b.tags()?;
        }
        v.provisioning_status = provisioning::PENDING_UPDATE.into();
        v.touch(&now());
        let txn = lock(db, &v.loadbalancer_id, Txn::new())?;
        Ok((put_entry(txn, &e, &v)?, v))
    })
    .await?;
    let db = net.db();
    Ok(Json(json!({"pool": pool.view(&db)})))
}

/// Deletes a pool with its members and health monitor; listeners using it as
/// their default lose it.
pub fn delete_ops(db: &Db, pool: &Pool, mut txn: Txn) -> LbResult<Txn> {
    txn.ops.push(Op::Delete(key::<Pool>(&pool.id)));
    for m in db.members_by_pool.get(&pool.id).into_iter().flatten() {
        txn.ops.push(Op::Delete(key::<Member>(m)));
    }
    if let Some(h) = db.hm_by_pool.get(&pool.id) {
        txn.ops.push(Op::Delete(key::<HealthMonitor>(h)));
    }
    for lid in &db.children_of(&pool.loadbalancer_id).listeners {
        if let Some(l) = db.listeners.get(lid)
            && l.value.default_pool_id.as_deref() == Some(pool.id.as_str())
        {
            let mut v = (*l.value).clone();
            v.default_pool_id = None;
            v.touch(&now());
            txn = put_entry(txn, l, &v)?;
        }
    }
    Ok(txn)
}

pub async fn delete(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> LbResult<StatusCode> {
    commit(&net, |db| {
        let e = find_writable::<Pool>(db, &ctx, &id)?;
        write::check_mutable(db, &*e.value)?;
        let mut txn = lock(db, &e.value.loadbalancer_id, Txn::new())?;
        txn = txn.when(Compare::ModRevision(key::<Pool>(&id), e.rev));
        txn = delete_ops(db, &e.value, txn)?;
        Ok((txn, ()))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
