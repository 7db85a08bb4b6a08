//! `/v2/lbaas/healthmonitors`: PING, TCP, HTTP, HTTPS and UDP-CONNECT checks, run
//! by the agent of each member's host (see `kuryr_dataplane::probe`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bytes::Bytes;
use kuryr_model::lbaas::{operating, provisioning};
use kuryr_model::{HealthMonitor, Pool};
use kuryr_store::{Compare, Op, Txn};
use serde_json::{Value, json};

use super::LbResult;
use super::body::{self, Body};
use super::fault::Fault;
use super::list::{Object, can_write, find, find_writable, key};
use super::now;
use super::write::{self, commit, lock, put_entry};
use crate::networking::{Ctx, Shared, new_id};

const TYPES: [&str; 7] = [
    "HTTP",
    "HTTPS",
    "PING",
    "SCTP",
    "TCP",
    "TLS-HELLO",
    "UDP-CONNECT",
];
const METHODS: [&str; 9] = [
    "CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE",
];

const FIELDS: [&str; 16] = [
    "name",
    "project_id",
    "tenant_id",
    "pool_id",
    "type",
    "delay",
    "timeout",
    "max_retries",
    "max_retries_down",
    "http_method",
    "url_path",
    "expected_codes",
    "http_version",
    "domain_name",
    "admin_state_up",
    "tags",
];

fn is_http(kind: &str) -> bool {
    kind == "HTTP" || kind == "HTTPS"
}

/// Octavia's `expected_codes`: `200`, `200,202`, `200-204`.
pub fn check_codes(codes: &str) -> LbResult<()> {
    let code = |s: &str| s.parse::<u16>().ok().filter(|c| (100..=599).contains(c));
    let ok = codes.split(',').all(|part| match part.split_once('-') {
        Some((a, b)) => matches!((code(a), code(b)), (Some(a), Some(b)) if a <= b),
        None => code(part).is_some(),
    });
    if ok {
        Ok(())
    } else {
        Err(Fault::invalid(
            "expected_codes",
            codes,
            "Value should match the pattern ^(\\d{3}(\\s*,\\s*\\d{3})*)$|^(\\d{3}-\\d{3})$",
        ))
    }
}

fn check_url(path: &str) -> LbResult<()> {
    if path.starts_with('/') && !path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Ok(())
    } else {
        Err(Fault::invalid(
            "url_path",
            path,
            "Value should be a URL path starting with /",
        ))
    }
}

/// Applies the body's checks settings to `h` and validates them together.
fn settings(b: &Body, h: &mut HealthMonitor) -> LbResult<()> {
    if let Some(d) = b.opt_int("delay", 0, 2_147_483_647)? {
        h.delay = d as u32;
    }
    if let Some(t) = b.opt_int("timeout", 0, 2_147_483_647)? {
        h.timeout = t as u32;
    }
    if let Some(r) = b.opt_int("max_retries", 1, 10)? {
        h.max_retries = r as u32;
    }
    if let Some(r) = b.opt_int("max_retries_down", 1, 10)? {
        h.max_retries_down = r as u32;
    }
    // Octavia takes a delay of 0 and a timeout above the delay; the agents probe at
    // least every second, and never more than one probe of a member at a time.
    let http = is_http(&h.kind);
    for f in [
        "http_method",
        "url_path",
        "expected_codes",
        "http_version",
        "domain_name",
    ] {
        if !http && b.non_empty(f) {
            return Err(Fault::validation(format!(
                "{f} is not a valid option for health monitors of type {}",
                h.kind
            )));
        }
    }
    if http {
        if let Some(m) = b.opt_enum("http_method", &METHODS)? {
            h.http_method = Some(m);
        }
        if let Some(u) = b.opt_str("url_path")? {
            check_url(&u)?;
            h.url_path = Some(u);
        }
        if let Some(c) = b.opt_str("expected_codes")? {
            check_codes(&c)?;
            h.expected_codes = Some(c);
        }
        if b.has("http_version") {
            h.http_version = match b.map.get("http_version") {
                Some(Value::Null) | None => None,
                Some(v) => match v.as_f64() {
                    Some(x) if x == 1.0 || x == 1.1 => Some(x),
                    _ => {
                        return Err(Fault::invalid(
                            "http_version",
                            v,
                            "Value should be one of: 1.0, 1.1",
                        ));
                    }
                },
            };
        }
        if b.has("domain_name") {
            h.domain_name = b.opt_str("domain_name")?;
            if h.domain_name.is_some() && h.http_version != Some(1.1) {
                return Err(Fault::validation(
                    "http_version 1.1 is required with domain_name",
                ));
            }
        }
    }
    Ok(())
}

fn h_delay(b: &Body) -> LbResult<i64> {
    Ok(b.opt_int("delay", 0, 2_147_483_647)?.unwrap_or(0))
}

pub async fn create(
    State(net): State<Shared>,
    ctx: Ctx,
    raw: Bytes,
) -> LbResult<(StatusCode, Json<Value>)> {
    let b = Body::parse(&raw, "healthmonitor")?;
    b.only(&FIELDS)?;
    let pool_id = b.req_str("pool_id")?;
    let kind = b
        .opt_enum("type", &TYPES)?
        .ok_or_else(|| Fault::invalid("type", "None", "Mandatory field missing."))?;
    for f in ["delay", "timeout", "max_retries"] {
        if b.opt_int(f, i64::MIN, i64::MAX)?.is_none() {
            return Err(Fault::invalid(f, "None", "Mandatory field missing."));
        }
    }
    if kind == "SCTP" {
        return Err(Fault::unsupported(
            "SCTP health monitors are not supported; use TCP, HTTP, HTTPS, TLS-HELLO, PING or UDP-CONNECT",
        ));
    }
    let h = commit(&net, |db| {
        let pool = find::<Pool>(db, &ctx, &pool_id)
            .map_err(|_| Fault::validation(format!("Invalid pool id provided: {pool_id}")))?;
        if !can_write(&ctx, &pool.value.project_id) {
            return Err(Fault::forbidden());
        }
        write::check_mutable(db, &*pool.value)?;
        if db.hm_by_pool.contains_key(&pool_id) {
            return Err(Fault::new(409, "This pool already has a health monitor"));
        }
        let udp = pool.value.protocol == "UDP";
        if udp && !matches!(kind.as_str(), "UDP-CONNECT" | "HTTP" | "TCP") {
            return Err(Fault::validation(
                "The associated pool protocol is UDP, so only a UDP-CONNECT/SCTP/TCP/HTTP health monitor is supported.",
            ));
        }
        if kind == "UDP-CONNECT" && h_delay(&b)? <= 3 {
            return Err(Fault::validation(format!(
                "The request delay value {} should be larger than 3 for UDP-CONNECT health monitor type.",
                h_delay(&b)?
            )));
        }
        if !udp && kind == "UDP-CONNECT" {
            return Err(Fault::validation(format!(
                "The associated pool protocol is {}, so a UDP-CONNECT health monitor is not supported.",
                pool.value.protocol
            )));
        }
        let count = db
            .healthmonitors
            .values()
            .filter(|e| e.value.project_id == pool.value.project_id)
            .count();
        body::check_quota(
            db.lb_quota(&pool.value.project_id).health_monitor,
            count,
            "Health Monitor",
        )?;
        let ts = now();
        let http = is_http(&kind);
        let mut h = HealthMonitor {
            id: new_id(),
            name: b.opt_str("name")?.unwrap_or_default(),
            project_id: pool.value.project_id.clone(),
            pool_id: pool_id.clone(),
            loadbalancer_id: pool.value.loadbalancer_id.clone(),
            kind: kind.clone(),
            delay: 0,
            timeout: 0,
            max_retries: 0,
            max_retries_down: 3,
            http_method: http.then(|| "GET".to_string()),
            url_path: http.then(|| "/".to_string()),
            expected_codes: http.then(|| "200".to_string()),
            http_version: None,
            domain_name: None,
            admin_state_up: b.opt_bool("admin_state_up")?.unwrap_or(true),
            provisioning_status: provisioning::PENDING_CREATE.into(),
            operating_status: operating::OFFLINE.into(),
            tags: b.tags()?,
            created_at: ts.clone(),
            updated_at: None,
            revision_number: 1,
        };
        settings(&b, &mut h)?;
        let mut txn = lock(db, &pool.value.loadbalancer_id, Txn::new())?;
        txn = write::put_new(txn, &h)?;
        Ok((txn, h))
    })
    .await?;
    let db = net.db();
    let mut v = h.view(&db);
    // As Octavia answers a create: not operating yet.
    v.insert("operating_status".into(), json!(operating::OFFLINE));
    Ok((StatusCode::CREATED, Json(json!({"healthmonitor": v}))))
}

pub async fn update(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(id): Path<String>,
    raw: Bytes,
) -> LbResult<Json<Value>> {
    let b = Body::parse(&raw, "healthmonitor")?;
    b.only(&FIELDS)?;
    for fixed in ["pool_id", "type", "project_id"] {
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
    let h = commit(&net, |db| {
        let e = find_writable::<HealthMonitor>(db, &ctx, &id)?;
        write::check_mutable(db, &*e.value)?;
        let mut v = (*e.value).clone();
        settings(&b, &mut v)?;
        if let Some(n) = b.opt_str("name")? {
            v.name = n;
        }
        if let Some(a) = b.opt_bool("admin_state_up")? {
            v.admin_state_up = a;
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
    Ok(Json(json!({"healthmonitor": h.view(&db)})))
}

pub async fn delete(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> LbResult<StatusCode> {
    commit(&net, |db| {
        let e = find_writable::<HealthMonitor>(db, &ctx, &id)?;
        write::check_mutable(db, &*e.value)?;
        let mut txn = lock(db, &e.value.loadbalancer_id, Txn::new())?;
        txn = txn.when(Compare::ModRevision(key::<HealthMonitor>(&id), e.rev));
        txn.ops.push(Op::Delete(key::<HealthMonitor>(&id)));
        Ok((txn, ()))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
