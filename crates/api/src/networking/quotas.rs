//! Per-project quotas (`/v2.0/quotas`), enforced at create time.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use kuryr_model::input::{self, Input};
use kuryr_model::{NeutronError, Quota};
use kuryr_store::Txn;
use serde_json::{Map, Value, json};

use super::db::{Db, keys};
use super::policy::POLICY;
use super::resource::{encode, enforce, parse_body};
use super::{ApiError, ApiResult, Ctx, Shared};

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/quotas", get(list))
        .route("/quotas/{project}", get(show).put(update).delete(reset))
        .route("/quotas/{project}/default", get(defaults))
        .route("/quotas/{project}/details", get(details))
        .route("/quotas/{project}/details.json", get(details))
}

fn to_json(q: &Quota) -> Value {
    json!({
        "network": q.network, "subnet": q.subnet, "subnetpool": q.subnetpool, "port": q.port,
        "security_group": q.security_group, "security_group_rule": q.security_group_rule,
        "router": q.router, "floatingip": q.floatingip, "router_route": q.router_route,
    })
}

fn target(project: &str) -> Map<String, Value> {
    let mut t = Map::new();
    t.insert("project_id".into(), json!(project));
    t.insert("tenant_id".into(), json!(project));
    t
}

/// A project may always read its own quota (neutron's quota controller); other
/// projects' under `get_quota`.
fn may_read(ctx: &Ctx, project: &str) -> bool {
    ctx.project() == project || POLICY.allows("get_quota", ctx, &target(project))
}

fn check_access(ctx: &Ctx, project: &str) -> ApiResult<()> {
    if may_read(ctx, project) {
        Ok(())
    } else {
        enforce(ctx, "get_quota", &target(project), &[])
    }
}

async fn list(State(net): State<Shared>, ctx: Ctx) -> ApiResult<Json<Value>> {
    let db = net.db();
    let quotas: Vec<Value> = db
        .quotas
        .iter()
        .filter(|(p, _)| may_read(&ctx, p))
        .map(|(p, q)| {
            let mut v = to_json(q);
            v["project_id"] = json!(p);
            v["tenant_id"] = json!(p);
            v
        })
        .collect();
    Ok(Json(json!({"quotas": quotas})))
}

async fn show(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(project): Path<String>,
) -> ApiResult<Json<Value>> {
    check_access(&ctx, &project)?;
    Ok(Json(json!({"quota": to_json(&net.db().quota(&project))})))
}

async fn defaults(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(project): Path<String>,
) -> ApiResult<Json<Value>> {
    check_access(&ctx, &project)?;
    Ok(Json(json!({"quota": to_json(&net.db().default_quota)})))
}

fn usage(db: &Db, project: &str) -> Quota {
    let count = |n: usize| n as i64;
    Quota {
        network: count(
            db.networks
                .values()
                .filter(|e| e.value.project_id == project)
                .count(),
        ),
        subnet: count(
            db.subnets
                .values()
                .filter(|e| e.value.project_id == project)
                .count(),
        ),
        subnetpool: count(
            db.subnetpools
                .values()
                .filter(|e| e.value.project_id == project)
                .count(),
        ),
        port: count(db.ports_per_project.get(project).copied().unwrap_or(0)),
        security_group: count(
            db.security_groups
                .values()
                .filter(|e| e.value.project_id == project)
                .count(),
        ),
        security_group_rule: count(
            db.security_group_rules
                .values()
                .filter(|e| e.value.project_id == project)
                .count(),
        ),
        router: count(
            db.routers
                .values()
                .filter(|e| e.value.project_id == project)
                .count(),
        ),
        floatingip: count(
            db.floatingips
                .values()
                .filter(|e| e.value.project_id == project)
                .count(),
        ),
        // Checked per router when routes are written (Neutron shows 0 used too).
        router_route: 0,
    }
}

async fn details(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(project): Path<String>,
) -> ApiResult<Json<Value>> {
    check_access(&ctx, &project)?;
    let db = net.db();
    let (limit, used) = (to_json(&db.quota(&project)), to_json(&usage(&db, &project)));
    let mut out = serde_json::Map::new();
    if let (Value::Object(l), Value::Object(u)) = (limit, used) {
        for (k, v) in l {
            out.insert(
                k.clone(),
                json!({"limit": v, "used": u.get(&k).cloned().unwrap_or(json!(0)), "reserved": 0}),
            );
        }
    }
    Ok(Json(json!({"quota": out})))
}

async fn update(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(project): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    enforce(&ctx, "update_quota", &target(&project), &[])?;
    let body = parse_body(&body)?;
    let Some(Value::Object(attrs)) = body.get("quota").cloned() else {
        return Err(ApiError(NeutronError::bad_request(
            "Unable to find 'quota' in request body",
        )));
    };
    let mut input = Input::new(attrs);
    // `force: true` sets a limit below what is already used; `check_limit` is what
    // neutron does anyway since 2025.1 (accepted and ignored, as there).
    let force = input.take("force") == Some(Value::Bool(true));
    input.ignore(&["check_limit"]);
    let mut given: Vec<(&str, i64)> = Vec::new();
    for name in Quota::NAMES {
        if let Some(v) = input.take(name) {
            given.push((name, quota_value(name, &v)?));
        }
    }
    input.finish()?;
    let mut q = {
        let db = net.db();
        if !force {
            let used = to_json(&usage(&db, &project));
            for (name, limit) in &given {
                let in_use = used.get(*name).and_then(Value::as_i64).unwrap_or(0);
                if *limit != -1 && in_use > *limit {
                    return Err(ApiError(NeutronError::bad_request(format!(
                        "Quota limit {limit} for {name} must be greater than or equal to already used {in_use}"
                    ))));
                }
            }
        }
        db.quota(&project)
    };
    for (name, limit) in given {
        if let Some(slot) = q.slot(name) {
            *slot = limit;
        }
    }
    net.commit(Txn::new().put(keys::quota(&project), encode(&q)?))
        .await?;
    Ok(Json(json!({"quota": to_json(&q)})))
}

/// A limit as neutron's quota attributes take it: an integer (or its string) from -1
/// (unlimited) to 2^31-1.
fn quota_value(name: &str, v: &Value) -> ApiResult<i64> {
    let n = match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    let Some(n) = n else {
        return Err(ApiError(NeutronError::invalid_input(format!(
            "'{}' is not an integer",
            input::show(v)
        ))));
    };
    let max = i64::from(i32::MAX);
    if n < -1 {
        return Err(ApiError(NeutronError::invalid_attr(
            name,
            format!("'{n}' is too small - must be at least '-1'"),
        )));
    }
    if n > max {
        return Err(ApiError(NeutronError::invalid_attr(
            name,
            format!("'{n}' is too large - must be no larger than '{max}'"),
        )));
    }
    Ok(n)
}

async fn reset(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(project): Path<String>,
) -> ApiResult<StatusCode> {
    enforce(&ctx, "delete_quota", &target(&project), &[])?;
    // Only an existing record is deleted: a write that changes nothing produces no
    // watch event, and commit() waits for the event.
    if net.db().quotas.contains_key(&project) {
        net.commit(Txn::new().delete(keys::quota(&project))).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}
