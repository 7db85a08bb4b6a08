//! Around the five objects: the status tree, statistics, quotas, providers, the
//! health and counter reports of agents, and who checks members that are no
//! kuryr port.

use std::collections::BTreeMap;
use std::sync::Weak;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bytes::Bytes;
use kuryr_model::lbaas::operating;
use kuryr_model::{LbQuota, Listener, LoadBalancer, Member};
use kuryr_store::Txn;
use serde_json::{Map, Value, json};

use super::fault::Fault;
use super::list::find;
use super::members::port_host;
use super::views;
use super::write::put_entry;
use super::{LbResult, PROVIDER, PROVIDER_DESCRIPTION};
use crate::networking::agents::{authorize_host, check_host, unix_now};
use crate::networking::db::{Db, keys};
use crate::networking::l3_scheduler::{alive, score};
use crate::networking::resource::encode;
use crate::networking::{Ctx, Networking, Shared};

pub async fn status_tree(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> LbResult<Json<Value>> {
    let db = net.db();
    let lb = find::<LoadBalancer>(&db, &ctx, &id)?;
    let c = db.children_of(&id);
    let mut ls: Vec<_> = c
        .listeners
        .iter()
        .filter_map(|l| db.listeners.get(l))
        .collect();
    ls.sort_by(|a, b| a.value.created_at.cmp(&b.value.created_at));
    let listeners: Vec<Value> = ls
        .into_iter()
        .map(|l| {
            let l = &l.value;
            let pools: Vec<Value> = l
                .default_pool_id
                .iter()
                .filter_map(|p| db.pools.get(p))
                .map(|p| pool_tree(&db, &p.value.id))
                .collect();
            json!({"id": l.id, "name": l.name, "provisioning_status": l.provisioning_status,
                   "operating_status": views::listener_status(&db, l), "pools": pools})
        })
        .collect();
    let v = &lb.value;
    Ok(Json(json!({"statuses": {"loadbalancer": {
        "id": v.id, "name": v.name, "provisioning_status": v.provisioning_status,
        "operating_status": views::lb_status(&db, v), "listeners": listeners}}})))
}

fn pool_tree(db: &Db, pool: &str) -> Value {
    let Some(p) = db.pools.get(pool) else {
        return json!({});
    };
    let p = &p.value;
    let members: Vec<Value> = db
        .members_by_pool
        .get(pool)
        .into_iter()
        .flatten()
        .filter_map(|m| db.members.get(m))
        .map(|m| {
            let m = &m.value;
            json!({"id": m.id, "name": m.name, "address": m.address.to_string(),
                   "protocol_port": m.protocol_port,
                   "provisioning_status": m.provisioning_status,
                   "operating_status": views::member_status(db, m)})
        })
        .collect();
    let mut v = json!({"id": p.id, "name": p.name, "provisioning_status": p.provisioning_status,
                   "operating_status": views::pool_status(db, p), "members": members});
    if let Some(h) = db
        .hm_by_pool
        .get(pool)
        .and_then(|h| db.healthmonitors.get(h))
        && let Some(o) = v.as_object_mut()
    {
        let h = &h.value;
        o.insert(
            "health_monitor".into(),
            json!({"id": h.id, "name": h.name, "type": h.kind,
                   "provisioning_status": h.provisioning_status,
                   "operating_status": if h.admin_state_up { operating::ONLINE } else { operating::OFFLINE }}),
        );
    }
    v
}

const COUNTERS: [&str; 5] = [
    "active_connections",
    "bytes_in",
    "bytes_out",
    "request_errors",
    "total_connections",
];

/// The sum over every host's counters of `listeners`.
fn stats(db: &Db, listeners: &[String]) -> Value {
    let mut sum: BTreeMap<&str, u64> = COUNTERS.iter().map(|c| (*c, 0)).collect();
    for report in db.lb_stats.values() {
        for l in listeners {
            if let Some(c) = report.get(l) {
                for name in COUNTERS {
                    if let Some(n) = c.get(name).and_then(Value::as_u64)
                        && let Some(s) = sum.get_mut(name)
                    {
                        *s = s.saturating_add(n);
                    }
                }
            }
        }
    }
    json!({"stats": sum})
}

pub async fn lb_stats(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> LbResult<Json<Value>> {
    let db = net.db();
    find::<LoadBalancer>(&db, &ctx, &id)?;
    let ls: Vec<String> = db.children_of(&id).listeners.into_iter().collect();
    Ok(Json(stats(&db, &ls)))
}

pub async fn listener_stats(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> LbResult<Json<Value>> {
    let db = net.db();
    find::<Listener>(&db, &ctx, &id)?;
    Ok(Json(stats(&db, &[id])))
}

fn quota_view(q: &LbQuota) -> Value {
    let mut m = Map::new();
    let mut q = *q;
    for name in LbQuota::NAMES {
        if let Some(v) = q.slot(name) {
            m.insert(name.to_string(), json!(*v));
        }
    }
    // Octavia shows both spellings.
    m.insert("loadbalancer".into(), json!(q.load_balancer));
    m.insert("healthmonitor".into(), json!(q.health_monitor));
    Value::Object(m)
}

pub async fn quota_list(State(net): State<Shared>, ctx: Ctx) -> LbResult<Json<Value>> {
    let db = net.db();
    let mut out = Vec::new();
    let mut projects: Vec<&String> = db.lb_quotas.keys().collect();
    projects.sort();
    for p in projects {
        if ctx.is_admin() || p == ctx.project() {
            let mut v = quota_view(&db.lb_quota(p));
            if let Some(o) = v.as_object_mut() {
                o.insert("project_id".into(), json!(p));
            }
            out.push(v);
        }
    }
    Ok(Json(json!({"quotas": out, "quotas_links": []})))
}

pub async fn quota_defaults(ctx: Ctx) -> LbResult<Json<Value>> {
    let _ = ctx;
    Ok(Json(json!({"quota": quota_view(&LbQuota::default())})))
}

pub async fn quota_show(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(project): Path<String>,
) -> LbResult<Json<Value>> {
    if !(ctx.is_admin() || ctx.project() == project) {
        return Err(Fault::forbidden());
    }
    let db = net.db();
    Ok(Json(json!({"quota": quota_view(&db.lb_quota(&project))})))
}

pub async fn quota_update(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(project): Path<String>,
    raw: Bytes,
) -> LbResult<(StatusCode, Json<Value>)> {
    if !ctx.is_admin() {
        return Err(Fault::forbidden());
    }
    let v: Value = serde_json::from_slice(&raw).map_err(|_| Fault::bad_body())?;
    let Some(Value::Object(body)) = v.get("quota") else {
        return Err(Fault::invalid("quota", "None", "Mandatory field missing."));
    };
    let mut q = net.db().lb_quota(&project);
    for (k, val) in body {
        let n = val
            .as_i64()
            .or_else(|| val.as_str().and_then(|s| s.parse().ok()))
            .filter(|n| *n >= -1 && *n <= 2_000_000_000)
            .ok_or_else(|| {
                Fault::invalid(k, val, "Value should be an integer from -1 to 2000000000.")
            })?;
        let slot = q.slot(k).ok_or_else(|| {
            Fault::new(
                400,
                format!("Invalid input for field/attribute quota. Value: '{v}'. Unknown attribute for argument quota: {k}"),
            )
        })?;
        *slot = n;
    }
    net.commit(Txn::new().put(keys::lb_quota(&project), encode(&q)?))
        .await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"quota": quota_view(&q)}))))
}

pub async fn quota_reset(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(project): Path<String>,
) -> LbResult<StatusCode> {
    if !ctx.is_admin() {
        return Err(Fault::forbidden());
    }
    if !net.db().lb_quotas.contains_key(&project) {
        return Err(Fault::new(404, format!("Quotas {project} not found.")));
    }
    net.commit(Txn::new().delete(keys::lb_quota(&project)))
        .await?;
    Ok(StatusCode::ACCEPTED)
}

pub async fn providers(_ctx: Ctx) -> Json<Value> {
    Json(json!({"providers": [{"name": PROVIDER, "description": PROVIDER_DESCRIPTION}]}))
}

fn known(provider: &str) -> LbResult<()> {
    if provider == PROVIDER {
        Ok(())
    } else {
        Err(Fault::new(
            400,
            format!("Provider '{provider}' is not enabled."),
        ))
    }
}

pub async fn flavor_capabilities(_ctx: Ctx, Path(p): Path<String>) -> LbResult<Json<Value>> {
    known(&p)?;
    Ok(Json(json!({"flavor_capabilities": []})))
}

pub async fn az_capabilities(_ctx: Ctx, Path(p): Path<String>) -> LbResult<Json<Value>> {
    known(&p)?;
    Ok(Json(json!({"availability_zone_capabilities": []})))
}

pub async fn empty_flavors(_ctx: Ctx) -> Json<Value> {
    Json(json!({"flavors": [], "flavors_links": []}))
}

pub async fn empty_flavorprofiles(_ctx: Ctx) -> Json<Value> {
    Json(json!({"flavorprofiles": [], "flavorprofiles_links": []}))
}

pub async fn empty_azs(_ctx: Ctx) -> Json<Value> {
    Json(json!({"availability_zones": [], "availability_zones_links": []}))
}

pub async fn empty_l7policies(_ctx: Ctx) -> Json<Value> {
    Json(json!({"l7policies": [], "l7policies_links": []}))
}

pub async fn l7_unsupported(_ctx: Ctx) -> Fault {
    Fault::unsupported("kuryr's provider is L4: L7 policies are not supported")
}

/// `PUT /networking/v2.0/kuryr/hosts/{host}/lb-report`, by the host's agent:
/// `{"members": {id: "ONLINE"|"ERROR"}, "stats": {listener: {counters}}}`. Only
/// members this host checks are taken.
pub async fn agent_report(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(host): Path<String>,
    raw: Bytes,
) -> LbResult<StatusCode> {
    check_host(&host)?;
    authorize_host(&ctx, &host, "kuryr_report_state")?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| Fault::bad_body())?;
    let health: BTreeMap<String, String> = v
        .get("members")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|_| Fault::new(400, "members must map member ids to ONLINE or ERROR"))?
        .unwrap_or_default();
    for s in health.values() {
        if s != operating::ONLINE && s != operating::ERROR {
            return Err(Fault::new(400, format!("Invalid member health {s:?}")));
        }
    }
    for _ in 0..16 {
        let txn = {
            let db = net.db();
            let mut txn = Txn::new();
            let mut any = false;
            for (id, status) in &health {
                let Some(e) = db.members.get(id) else {
                    continue;
                };
                if e.value.monitor_host != host || e.value.operating_status == *status {
                    continue;
                }
                let mut m: Member = (*e.value).clone();
                m.operating_status = status.clone();
                txn = put_entry(txn, e, &m)?;
                any = true;
            }
            if let Some(stats) = v.get("stats").filter(|s| s.is_object())
                && db.lb_stats.get(&host).is_none_or(|old| **old != *stats)
            {
                txn = txn.put(format!("/neutron/lb-stats/{host}"), encode(stats)?);
                any = true;
            }
            if !any {
                return Ok(StatusCode::NO_CONTENT);
            }
            txn
        };
        if net.commit(txn).await? {
            return Ok(StatusCode::NO_CONTENT);
        }
    }
    Err(Fault::new(409, "Too many concurrent changes; try again."))
}

/// Who checks each member: the agent of its port's host; for an address that is no
/// kuryr port, a live agent picked by rendezvous hashing (kept while it lives).
/// Checked every second, as SNAT placements are.
pub async fn monitor_scheduler(net: Weak<Networking>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(net) = net.upgrade() else {
            return;
        };
        let txn = {
            let db = net.db();
            let down = net.config.agent_down_time;
            let now = unix_now();
            let live: Vec<&String> = db
                .agents
                .iter()
                .filter(|(_, a)| alive(&a.value, down, now))
                .map(|(h, _)| h)
                .collect();
            let mut txn = Txn::new();
            let mut any = false;
            for e in db.members.values() {
                let m = &e.value;
                let want = match port_host(&db, m) {
                    Some(h) => h,
                    None if live.contains(&&m.monitor_host) => continue,
                    None => live
                        .iter()
                        .max_by_key(|h| score(&m.id, h))
                        .map(|h| h.to_string())
                        .unwrap_or_default(),
                };
                if want == m.monitor_host {
                    continue;
                }
                let mut v: Member = (**m).clone();
                v.monitor_host = want;
                match put_entry(txn.clone(), e, &v) {
                    Ok(t) => {
                        txn = t;
                        any = true;
                    }
                    Err(f) => tracing::error!(error = %f.message, "cannot encode a member"),
                }
            }
            any.then_some(txn)
        };
        if let Some(txn) = txn
            && let Err(e) = net.commit(txn).await
        {
            tracing::warn!(error = %e.message, "member monitor placement failed");
        }
    }
}
