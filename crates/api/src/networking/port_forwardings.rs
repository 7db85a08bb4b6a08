//! Floating IP port forwardings (`/floatingips/{id}/port_forwardings`): TCP/UDP
//! (and Neutron's other protocols) from ports of a floating IP to ports of one fixed
//! IPv4 address, single ports or ranges (N:N and 1:N). Every write also rewrites the
//! floating IP, so that the collision checks of two writes never interleave.

use std::net::IpAddr;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router as Routes};
use bytes::Bytes;
use kuryr_model::input::{Input, parse_ip, show, unwrap_body};
use kuryr_model::{FloatingIp, NeutronError, Port, PortForwarding};
use kuryr_store::{Compare, Txn};
use serde_json::{Map, Value, json};

use super::db::{Db, Entry, keys};
use super::floatingips::{already_associated, router_for};
use super::query::{ListQuery, project};
use super::resource::{encode, enforce, find, key, parse_body};
use super::{ApiError, ApiResult, Ctx, Shared, new_id, now};

pub fn pf_key(id: &str) -> String {
    keys::resource("port-forwardings", id)
}

const PROTOCOLS: &[&str] = &["tcp", "udp", "icmp", "ipv6-icmp", "dccp", "sctp"];
const FILTERS: &[&str] = &[
    "id",
    "external_port",
    "protocol",
    "internal_port_id",
    "external_port_range",
    "description",
];

pub fn routes() -> Routes<Shared> {
    Routes::new()
        .route("/floatingips/{id}/port_forwardings", get(list).post(create))
        .route(
            "/floatingips/{id}/port_forwardings/{pf}",
            get(show_one).put(update).delete(delete),
        )
}

fn bad_pf(msg: impl std::fmt::Display) -> ApiError {
    ApiError(NeutronError::new(
        400,
        "BadRequest",
        format!("Bad port_forwarding request: {msg}."),
    ))
}

fn pf_not_found(id: &str) -> ApiError {
    ApiError(NeutronError::new(
        404,
        "PortForwardingNotFound",
        format!("Port Forwarding {id} could not be found."),
    ))
}

fn range_text(r: (u16, u16)) -> String {
    format!("{}:{}", r.0, r.1)
}

/// A port forwarding as the API shows it. `created`: the create answer, which shows
/// `null` single ports for ranges.
fn view(pf: &PortForwarding, created: bool) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("id".into(), json!(pf.id));
    let single = |r: (u16, u16)| (r.0 == r.1).then_some(r.0);
    match single(pf.external) {
        Some(p) => {
            m.insert("external_port".into(), json!(p));
        }
        None if created => {
            m.insert("external_port".into(), Value::Null);
        }
        None => {}
    }
    m.insert("external_port_range".into(), json!(range_text(pf.external)));
    m.insert("protocol".into(), json!(pf.protocol));
    m.insert("internal_port_id".into(), json!(pf.internal_port_id));
    m.insert(
        "internal_ip_address".into(),
        json!(pf.internal_ip_address.to_string()),
    );
    match single(pf.internal) {
        Some(p) => {
            m.insert("internal_port".into(), json!(p));
        }
        None if created => {
            m.insert("internal_port".into(), Value::Null);
        }
        None => {}
    }
    m.insert("internal_port_range".into(), json!(range_text(pf.internal)));
    m.insert("description".into(), json!(pf.description));
    m
}

fn port_number(attr: &str, v: &Value) -> ApiResult<u16> {
    let Some(n) = v.as_i64() else {
        return Err(ApiError(NeutronError::invalid_attr(
            attr,
            format!("'{}' is not an integer", show(v)),
        )));
    };
    if n < 1 {
        return Err(ApiError(NeutronError::invalid_attr(
            attr,
            format!("'{n}' is too small - must be at least '1'"),
        )));
    }
    if n > 65535 {
        return Err(ApiError(NeutronError::invalid_attr(
            attr,
            format!("'{n}' is too large - must be no larger than '65535'"),
        )));
    }
    Ok(n as u16)
}

fn port_range(attr: &str, v: &Value) -> ApiResult<(u16, u16)> {
    let bad = || {
        ApiError(NeutronError::invalid_attr(
            attr,
            format!(
                "'{}' is not a valid port range (N or N:M, 1-65535)",
                show(v)
            ),
        ))
    };
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return Err(bad()),
    };
    let (a, b) = s.split_once(':').unwrap_or((&s, &s));
    let a: u16 = a.trim().parse().map_err(|_| bad())?;
    let b: u16 = b.trim().parse().map_err(|_| bad())?;
    if a == 0 || b == 0 || a > b {
        return Err(bad());
    }
    Ok((a, b))
}

/// The attributes of a create or update body, each `None` when not given.
#[derive(Default)]
struct Given {
    protocol: Option<String>,
    internal_port_id: Option<String>,
    internal_ip_address: Option<IpAddr>,
    internal: Option<(u16, u16)>,
    external: Option<(u16, u16)>,
    description: Option<String>,
}

fn parse(item: Map<String, Value>) -> ApiResult<Given> {
    let mut input = Input::new(item);
    input.read_only(&["id"])?;
    let mut g = Given {
        protocol: input.string("protocol", 40)?,
        internal_port_id: input.uuid("internal_port_id")?,
        internal_ip_address: match input.take("internal_ip_address") {
            None => None,
            Some(v) => Some(parse_ip(&v, "internal_ip_address")?),
        },
        description: input.string("description", 255)?,
        ..Given::default()
    };
    if let Some(p) = &g.protocol
        && !PROTOCOLS.contains(&p.as_str())
    {
        return Err(ApiError(NeutronError::invalid_attr(
            "protocol",
            format!("{p} is not in valid_values"),
        )));
    }
    // A range wins over a single port when both are given (Neutron's rule).
    for (single, range, slot) in [
        ("external_port", "external_port_range", &mut g.external),
        ("internal_port", "internal_port_range", &mut g.internal),
    ] {
        let s = match input.take(single) {
            None | Some(Value::Null) => None,
            Some(v) => Some(port_number(single, &v)?),
        };
        let r = match input.take(range) {
            None | Some(Value::Null) => None,
            Some(v) => Some(port_range(range, &v)?),
        };
        *slot = r.or(s.map(|p| (p, p)));
    }
    input.ignore(&["project_id", "tenant_id"]);
    input.finish()?;
    Ok(g)
}

fn required(attr: &str) -> ApiError {
    ApiError(NeutronError::bad_request(format!(
        "Failed to parse request. Required attribute '{attr}' not specified"
    )))
}

fn overlaps(a: (u16, u16), b: (u16, u16)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

/// A Python repr of fixed IPs, as Neutron's messages print them.
fn fixed_ips_repr(p: &Port, v4_only: bool) -> String {
    let items: Vec<String> = p
        .fixed_ips
        .iter()
        .filter(|f| !v4_only || f.ip_address.is_ipv4())
        .map(|f| {
            format!(
                "{{'subnet_id': '{}', 'ip_address': '{}'}}",
                f.subnet_id, f.ip_address
            )
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// Neutron's checks of a forwarding `pf` on `fip` (`old`: the forwarding being
/// updated). Returns the router that carries it.
fn validate(
    db: &Db,
    ctx: &Ctx,
    fip: &FloatingIp,
    pf: &PortForwarding,
    old: Option<&PortForwarding>,
) -> ApiResult<String> {
    let int_w = pf.internal.1 - pf.internal.0;
    let ext_w = pf.external.1 - pf.external.0;
    if int_w != 0 && int_w != ext_w {
        return Err(bad_pf(
            "Invalid ranges of internal and/or external ports. The relation between internal and external ports must be N-N or 1-N",
        ));
    }
    // Only forwardings of the same floating IP or to the same port can collide:
    // the indexes name them (not every forwarding of the cloud).
    let mut ids: std::collections::BTreeSet<&String> = std::collections::BTreeSet::new();
    ids.extend(db.pfs_by_fip.get(&pf.floatingip_id).into_iter().flatten());
    ids.extend(
        db.pfs_by_port
            .get(&pf.internal_port_id)
            .into_iter()
            .flatten(),
    );
    let others = ids
        .into_iter()
        .filter_map(|id| db.port_forwardings.get(id))
        .map(|e| &e.value)
        .filter(|o| o.id != pf.id);
    for o in others {
        if o.internal_port_id == pf.internal_port_id
            && o.protocol == pf.protocol
            && o.internal_ip_address == pf.internal_ip_address
            && overlaps(o.internal, pf.internal)
        {
            return Err(bad_pf(format!(
                "There is a port collision with the internal_port_range. The following ranges collide: {} and {}",
                range_text(o.internal),
                range_text(pf.internal)
            )));
        }
        if o.floatingip_id == pf.floatingip_id
            && o.protocol == pf.protocol
            && overlaps(o.external, pf.external)
        {
            return Err(bad_pf(format!(
                "There is a port collision with the external_port_range. The following ranges collide: {} and {}",
                range_text(o.external),
                range_text(pf.external)
            )));
        }
    }
    let port_changed = old.is_none_or(|o| o.internal_port_id != pf.internal_port_id);
    if port_changed
        && let Some(bound) = db
            .fips_by_port
            .get(&pf.internal_port_id)
            .into_iter()
            .flatten()
            .filter_map(|f| db.floatingips.get(f))
            .next()
    {
        return Err(ApiError(NeutronError::conflict(
            "PortHasBindingFloatingIP",
            format!(
                "Cannot create port forwarding to floating IP {} ({}) with port {} using fixed IP {}, as that port already has a binding floating IP.",
                bound.value.floating_ip_address,
                bound.value.id,
                pf.internal_port_id,
                pf.internal_ip_address
            ),
        )));
    }
    if fip.port_id.is_some() {
        return Err(already_associated(
            fip,
            &pf.internal_port_id,
            &pf.internal_ip_address,
        ));
    }
    let port = find::<Port>(db, ctx, &pf.internal_port_id)?;
    let p = &port.value;
    if !p.fixed_ips.iter().any(|f| f.ip_address.is_ipv4()) {
        return Err(bad_pf(format!(
            "Requested internal port {} must allocate an IPv4 address at least.",
            p.id
        )));
    }
    let Some(fixed) = p
        .fixed_ips
        .iter()
        .find(|f| f.ip_address == pf.internal_ip_address && f.ip_address.is_ipv4())
    else {
        return Err(if old.is_some() {
            bad_pf(format!(
                "The internal IP does not correspond to an address on the internal port, which has fixed_ips {}",
                fixed_ips_repr(p, false)
            ))
        } else {
            bad_pf(format!(
                "Requested internal IP address {} is not suitable for internal neutron port {}, as its fixed_ips are {}",
                pf.internal_ip_address,
                p.id,
                fixed_ips_repr(p, true)
            ))
        });
    };
    let Some(router) = router_for(db, &fixed.subnet_id, &fip.floating_network_id) else {
        return Err(bad_pf(format!(
            "External network {} is not reachable from subnet {}. Cannot set Port forwarding for port {} with Floating IP {}",
            fip.floating_network_id, fixed.subnet_id, p.id, fip.id
        )));
    };
    if let Some(r) = &fip.router_id
        && *r != router
    {
        return Err(bad_pf(format!(
            "The Floating IP {} had been set on router {r}, the internal Neutron port {} can not reach it",
            fip.id, p.id
        )));
    }
    Ok(router)
}

/// The floating IP of a forwarding request, for policy: any that exists (a
/// forwarding on another project's floating IP is refused, not hidden).
fn parent(db: &Db, id: &str) -> ApiResult<Entry<FloatingIp>> {
    db.floatingips.get(id).cloned().ok_or_else(|| {
        ApiError(NeutronError::new(
            404,
            "FloatingIPNotFound",
            format!("Floating IP {id} could not be found"),
        ))
    })
}

fn target(fip: &FloatingIp) -> Map<String, Value> {
    let mut t = Map::new();
    t.insert("ext_parent:project_id".into(), json!(fip.project_id));
    t.insert("project_id".into(), json!(fip.project_id));
    t.insert("tenant_id".into(), json!(fip.project_id));
    t
}

/// The writes of a forwarding change: the forwarding (or its deletion) and the
/// floating IP rewritten with `router_id`, both pinned to what was read.
fn commit_txn(
    fip: &Entry<FloatingIp>,
    router: Option<String>,
    port: Option<&Entry<Port>>,
) -> ApiResult<Txn> {
    let mut f = (*fip.value).clone();
    if f.router_id != router {
        f.router_id = router;
        f.revision_number += 1;
        f.updated_at = now();
    }
    let mut txn = Txn::new()
        .when(Compare::ModRevision(key::<FloatingIp>(&f.id), fip.rev))
        .put(key::<FloatingIp>(&f.id), encode(&f)?);
    if let Some(p) = port {
        txn = txn.when(Compare::ModRevision(key::<Port>(&p.value.id), p.rev));
    }
    Ok(txn)
}

async fn create(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(fip_id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let (items, bulk) = unwrap_body(parse_body(&body)?, "port_forwarding", "port_forwardings")?;
    {
        let db = net.db();
        let fip = parent(&db, &fip_id)?;
        enforce(
            &ctx,
            "create_floatingip_port_forwarding",
            &target(&fip.value),
            &[],
        )?;
    }
    let mut out = Vec::new();
    for item in items {
        let g = parse(item)?;
        let protocol = g.protocol.ok_or_else(|| required("protocol"))?;
        let internal_port_id = g
            .internal_port_id
            .ok_or_else(|| required("internal_port_id"))?;
        let internal_ip_address = g
            .internal_ip_address
            .ok_or_else(|| required("internal_ip_address"))?;
        let external = g.external.ok_or_else(|| required("external_port"))?;
        let internal = g.internal.ok_or_else(|| required("internal_port"))?;
        let id = new_id();
        let mut done = None;
        for _ in 0..16 {
            let txn = {
                let db = net.db();
                let fip = parent(&db, &fip_id)?;
                let pf = PortForwarding {
                    id: id.clone(),
                    floatingip_id: fip_id.clone(),
                    project_id: fip.value.project_id.clone(),
                    protocol: protocol.clone(),
                    internal_port_id: internal_port_id.clone(),
                    internal_ip_address,
                    internal,
                    external,
                    description: g.description.clone().unwrap_or_default(),
                };
                let router = validate(&db, &ctx, &fip.value, &pf, None)?;
                let port = db.ports.get(&internal_port_id).cloned();
                let txn = commit_txn(&fip, Some(router), port.as_ref())?;
                done = Some(pf.clone());
                txn.when(Compare::Absent(pf_key(&id)))
                    .put(pf_key(&id), encode(&pf)?)
            };
            if net.commit(txn).await? {
                break;
            }
            done = None;
        }
        let pf = done.ok_or_else(|| {
            ApiError(NeutronError::conflict(
                "Conflict",
                "The floating IP is changing too fast; try again",
            ))
        })?;
        out.push(Value::Object(view(&pf, true)));
    }
    let body = if bulk {
        json!({ "port_forwardings": out })
    } else {
        json!({ "port_forwarding": out.pop().unwrap_or(Value::Null) })
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// The floating IP for a read: one the caller may see, and may read forwardings of.
fn readable(db: &Db, ctx: &Ctx, fip_id: &str) -> ApiResult<Entry<FloatingIp>> {
    let fip = find::<FloatingIp>(db, ctx, fip_id)?;
    enforce(
        ctx,
        "get_floatingip_port_forwarding",
        &target(&fip.value),
        &[],
    )?;
    Ok(fip)
}

async fn list(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(fip_id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let q = ListQuery::parse(q.as_deref().unwrap_or(""))?;
    let invalid: Vec<String> = q
        .filters
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !FILTERS.contains(k) && *k != "floatingip_id")
        .map(|k| format!("'{k}'"))
        .collect();
    if !invalid.is_empty() {
        return Err(ApiError(NeutronError::bad_request(format!(
            "[{}] is invalid attribute for filtering",
            invalid.join(", ")
        ))));
    }
    if let Some((k, _)) = q.sorts.iter().find(|(k, _)| k != "id") {
        return Err(ApiError(NeutronError::new(
            400,
            "BadRequest",
            format!("Bad portforwardings request: '{k}' is an invalid attribute for sort key."),
        )));
    }
    let db = net.db();
    let fip = readable(&db, &ctx, &fip_id)?;
    let mut items: Vec<Map<String, Value>> = db
        .pfs_by_fip
        .get(&fip.value.id)
        .into_iter()
        .flatten()
        .filter_map(|id| db.port_forwardings.get(id))
        .map(|e| view(&e.value, false))
        .filter(|v| {
            q.filters.iter().all(|(k, wants)| {
                k == "floatingip_id"
                    || wants.iter().all(|w| w.is_empty())
                    || wants.iter().any(|w| match v.get(k) {
                        Some(Value::String(s)) => s == w,
                        Some(other) => w.as_str() == other.to_string().as_str(),
                        None => false,
                    })
            })
        })
        .collect();
    if q.sorts.first().is_some_and(|(_, asc)| !asc) {
        items.reverse();
    }
    let items: Vec<Value> = items
        .into_iter()
        .map(|m| Value::Object(project(m, &q.fields)))
        .collect();
    Ok(Json(json!({ "port_forwardings": items })))
}

/// A forwarding of `fip` by id (404 when it is not one of that floating IP's).
fn forwarding(db: &Db, fip: &str, id: &str) -> ApiResult<Entry<PortForwarding>> {
    match db.port_forwardings.get(id) {
        Some(e) if e.value.floatingip_id == fip => Ok(e.clone()),
        _ => Err(pf_not_found(id)),
    }
}

async fn show_one(
    State(net): State<Shared>,
    ctx: Ctx,
    Path((fip_id, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let q = ListQuery::parse(q.as_deref().unwrap_or(""))?;
    let db = net.db();
    readable(&db, &ctx, &fip_id)?;
    let pf = forwarding(&db, &fip_id, &id)?;
    Ok(Json(
        json!({ "port_forwarding": project(view(&pf.value, false), &q.fields) }),
    ))
}

/// The floating IP for a change: visible to the caller (else 404), and the caller
/// allowed `action` on its forwardings (else 403).
fn changeable(db: &Db, ctx: &Ctx, fip_id: &str, action: &str) -> ApiResult<Entry<FloatingIp>> {
    let fip = find::<FloatingIp>(db, ctx, fip_id)?;
    enforce(ctx, action, &target(&fip.value), &[])?;
    Ok(fip)
}

async fn update(
    State(net): State<Shared>,
    ctx: Ctx,
    Path((fip_id, id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let Value::Object(mut outer) = parse_body(&body)? else {
        return Err(ApiError(NeutronError::bad_request(
            "Body contains invalid data",
        )));
    };
    let item = match outer.remove("port_forwarding") {
        Some(Value::Object(m)) => m,
        _ => {
            return Err(ApiError(NeutronError::bad_request(
                "Unable to find 'port_forwarding' in request body",
            )));
        }
    };
    let g = parse(item)?;
    for _ in 0..16 {
        let (txn, pf) = {
            let db = net.db();
            let fip = changeable(&db, &ctx, &fip_id, "update_floatingip_port_forwarding")?;
            let old = forwarding(&db, &fip_id, &id)?;
            let mut pf = (*old.value).clone();
            if let Some(v) = &g.protocol {
                pf.protocol = v.clone();
            }
            if let Some(v) = &g.internal_port_id {
                pf.internal_port_id = v.clone();
            }
            if let Some(v) = g.internal_ip_address {
                pf.internal_ip_address = v;
            }
            if let Some(v) = g.internal {
                pf.internal = v;
            }
            if let Some(v) = g.external {
                pf.external = v;
            }
            if let Some(v) = &g.description {
                pf.description = v.clone();
            }
            let router = validate(&db, &ctx, &fip.value, &pf, Some(&old.value))?;
            let port = db.ports.get(&pf.internal_port_id).cloned();
            let txn = commit_txn(&fip, Some(router), port.as_ref())?
                .when(Compare::ModRevision(pf_key(&id), old.rev))
                .put(pf_key(&id), encode(&pf)?);
            (txn, pf)
        };
        if net.commit(txn).await? {
            return Ok(Json(json!({ "port_forwarding": view(&pf, false) })));
        }
    }
    Err(ApiError(NeutronError::conflict(
        "Conflict",
        "The floating IP is changing too fast; try again",
    )))
}

async fn delete(
    State(net): State<Shared>,
    ctx: Ctx,
    Path((fip_id, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    for _ in 0..16 {
        let txn = {
            let db = net.db();
            let fip = changeable(&db, &ctx, &fip_id, "delete_floatingip_port_forwarding")?;
            let old = forwarding(&db, &fip_id, &id)?;
            let left = db
                .pfs_by_fip
                .get(&fip_id)
                .map(|s| s.iter().filter(|p| **p != id).count())
                .unwrap_or(0);
            // The last forwarding takes the floating IP off its router.
            let router = if left == 0 && fip.value.port_id.is_none() {
                None
            } else {
                fip.value.router_id.clone()
            };
            commit_txn(&fip, router, None)?
                .when(Compare::ModRevision(pf_key(&id), old.rev))
                .delete(pf_key(&id))
        };
        if net.commit(txn).await? {
            return Ok(StatusCode::NO_CONTENT);
        }
    }
    Err(ApiError(NeutronError::conflict(
        "Conflict",
        "The floating IP is changing too fast; try again",
    )))
}
