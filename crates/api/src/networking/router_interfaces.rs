//! A router's member actions: `add_router_interface` / `remove_router_interface`
//! (by subnet or by port) and the atomic `add_extraroutes` / `remove_extraroutes`.
//! Each is one transaction that also rewrites the router, so that two actions on
//! one router never interleave.

use std::net::IpAddr;

use axum::extract::{Path, State};
use axum::routing::put;
use axum::{Json, Router as Routes};
use bytes::Bytes;
use ipnet::IpNet;
use kuryr_model::input::{is_uuid, parse_cidr, show};
use kuryr_model::{HostRoute, NeutronError, Port, Router, Subnet};
use kuryr_store::{Compare, Op, Txn};
use serde_json::{Map, Value, json};

use super::db::Db;
use super::ports::{self, Alloc, IpRequest, OWNER_ROUTER_INTERFACE};
use super::resource::{self, authorize_change, encode, find, key, parse_body, redact};
use super::routers::{
    Writes, add_snat_ports, bad_router, check_overlap, check_routes, interface_ports, parse_routes,
    router_subnets, snat_host, snat_ports, sort_routes,
};
use super::{ApiError, ApiResult, Ctx, Shared, now};

pub fn routes() -> Routes<Shared> {
    Routes::new().route("/routers/{id}/{action}", put(action))
}

async fn action(
    State(net): State<Shared>,
    ctx: Ctx,
    Path((id, action)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    match action.as_str() {
        "add_router_interface" | "remove_router_interface" => {
            authorize_change::<Router>(&net.db(), &ctx, &id, &action, &Map::new())?;
            let req = InterfaceRequest::parse(&body)?;
            let out = if action == "add_router_interface" {
                add_interface(&net, &ctx, &id, &req).await?
            } else {
                remove_interface(&net, &ctx, &id, &req).await?
            };
            Ok(Json(out))
        }
        "add_extraroutes" | "remove_extraroutes" => {
            authorize_change::<Router>(&net.db(), &ctx, &id, &action, &Map::new())?;
            let given = parse_extraroutes(&body)?;
            let view = edit_routes(&net, &ctx, &id, &given, action == "add_extraroutes").await?;
            Ok(Json(json!({"router": redact("router", &ctx, view)})))
        }
        _ => Err(ApiError(NeutronError::new(
            404,
            "HTTPNotFound",
            "The resource could not be found.",
        ))),
    }
}

struct InterfaceRequest {
    subnet_id: Option<String>,
    port_id: Option<String>,
}

impl InterfaceRequest {
    /// The body is not wrapped: `{"subnet_id": ...}` or `{"port_id": ...}`; other
    /// keys are ignored, as neutron does.
    fn parse(body: &Bytes) -> ApiResult<Self> {
        let v = if body.is_empty() {
            Value::Object(Map::new())
        } else {
            parse_body(body)?
        };
        let Value::Object(m) = v else {
            return Err(ApiError(NeutronError::bad_request(
                "Body contains invalid data",
            )));
        };
        let id = |k: &str| -> ApiResult<Option<String>> {
            match m.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if is_uuid(s) => Ok(Some(s.clone())),
                Some(other) => Err(bad_router(format!("'{}' is not a valid UUID", show(other)))),
            }
        };
        Ok(InterfaceRequest {
            subnet_id: id("subnet_id")?,
            port_id: id("port_id")?,
        })
    }
}

fn touched(r: &Router) -> Router {
    let mut r = r.clone();
    r.revision_number += 1;
    r.updated_at = now();
    r
}

/// The answer of both interface actions.
fn interface_info(r: &Router, p: &Port, subnet_ids: Vec<String>, first: bool) -> Value {
    let subnet_id = if first {
        subnet_ids.first().cloned()
    } else {
        subnet_ids.last().cloned()
    };
    json!({
        "id": r.id, "tenant_id": p.project_id, "project_id": p.project_id,
        "port_id": p.id, "network_id": p.network_id,
        "subnet_id": subnet_id, "subnet_ids": subnet_ids,
    })
}

fn check_subnet_modes(s: &Subnet) -> ApiResult<()> {
    if s.ip_version == 6 && s.ipv6_ra_mode.is_none() && s.ipv6_address_mode.is_some() {
        return Err(bad_router(format!(
            "IPv6 subnet {} configured to receive RAs from an external router cannot be added to Neutron Router.",
            s.id
        )));
    }
    Ok(())
}

fn cidr_of(s: &Subnet) -> ApiResult<IpNet> {
    parse_cidr(&s.cidr).ok_or_else(|| ApiError(NeutronError::internal("stored CIDR is invalid")))
}

/// What one attempt of an action writes, and what it answers once committed.
struct Plan {
    txn: Txn,
    answer: Value,
}

async fn run<F>(net: &Shared, mut attempt: F) -> ApiResult<Value>
where
    F: FnMut(&Db, &mut Alloc<'_>) -> ApiResult<Plan> + Send,
{
    for _ in 0..16 {
        let mut alloc = Alloc::new(net);
        let plan = {
            let db = net.db();
            attempt(&db, &mut alloc)?
        };
        let ok = net.commit(plan.txn).await;
        drop(alloc);
        if ok? {
            return Ok(plan.answer);
        }
    }
    Err(ApiError(NeutronError::conflict(
        "Conflict",
        "The router is changing too fast; try again",
    )))
}

/// The router as read, with the compare that pins it and its touched copy.
fn pinned(db: &Db, ctx: &Ctx, id: &str) -> ApiResult<(Router, Txn)> {
    let e = find::<Router>(db, ctx, id)?;
    let r = (*e.value).clone();
    let next = touched(&r);
    let txn = Txn::new()
        .when(Compare::ModRevision(key::<Router>(id), e.rev))
        .put(key::<Router>(id), encode(&next)?);
    Ok((r, txn))
}

async fn add_interface(
    net: &Shared,
    ctx: &Ctx,
    id: &str,
    req: &InterfaceRequest,
) -> ApiResult<Value> {
    match (&req.subnet_id, &req.port_id) {
        (Some(_), Some(_)) => Err(bad_router("Cannot specify both subnet-id and port-id")),
        (None, None) => Err(bad_router("Either subnet_id or port_id must be specified")),
        (Some(sid), None) => run(net, |db, alloc| add_by_subnet(db, ctx, alloc, id, sid)).await,
        (None, Some(pid)) => run(net, |db, alloc| add_by_port(db, ctx, alloc, id, pid)).await,
    }
}

fn gw_network(r: &Router) -> Option<&str> {
    r.gateway.as_ref().map(|g| g.network_id.as_str())
}

fn add_by_subnet(
    db: &Db,
    ctx: &Ctx,
    alloc: &mut Alloc<'_>,
    id: &str,
    sid: &str,
) -> ApiResult<Plan> {
    let (r, mut txn) = pinned(db, ctx, id)?;
    let s = find::<Subnet>(db, ctx, sid)?.value;
    let Some(gw) = s.gateway_ip else {
        return Err(bad_router(
            "Subnet for router interface must have a gateway IP",
        ));
    };
    if !ctx.is_admin() && s.project_id != ctx.project() {
        return Err(bad_router(format!(
            "Cannot add interface to router because subnet {sid} is not owned by project making the request"
        )));
    }
    check_subnet_modes(&s)?;
    let existing = router_subnets(db, &r, gw_network(&r));
    check_overlap(&[(s.id.clone(), cidr_of(&s)?)], &existing)?;
    let Some(n) = db.networks.get(&s.network_id).cloned() else {
        return Err(ApiError(NeutronError::not_found(
            "Network",
            "NetworkNotFound",
            &s.network_id,
        )));
    };
    // A second IPv6 prefix on a network joins the router's IPv6 port there.
    if s.ip_version == 6
        && let Some(p) = interface_ports(db, &r.id).into_iter().find(|p| {
            p.network_id == s.network_id && p.fixed_ips.iter().any(|f| f.ip_address.is_ipv6())
        })
    {
        let Some(e) = db.ports.get(&p.id) else {
            return Err(ApiError(NeutronError::internal("router port vanished")));
        };
        let mut reqs: Vec<IpRequest> = p
            .fixed_ips
            .iter()
            .map(|f| IpRequest {
                subnet_id: Some(f.subnet_id.clone()),
                ip: Some(f.ip_address),
            })
            .collect();
        reqs.push(IpRequest {
            subnet_id: Some(s.id.clone()),
            ip: Some(gw),
        });
        let mut q = (*p).clone();
        let (c, o) = ports::readdress(alloc, db, &mut q, &reqs)?;
        q.revision_number += 1;
        q.updated_at = now();
        txn.compares
            .push(Compare::ModRevision(key::<Port>(&q.id), e.rev));
        txn.compares.extend(c);
        txn.ops.extend(o);
        txn.ops.push(Op::Put(key::<Port>(&q.id), encode(&q)?));
        with_snat_ports(alloc, db, ctx, &r, std::slice::from_ref(&s.id), &mut txn)?;
        let answer = interface_info(&r, &q, vec![s.id.clone()], false);
        return Ok(Plan { txn, answer });
    }
    let p = ports::service_port(
        alloc,
        db,
        ctx,
        &n,
        &r.project_id,
        OWNER_ROUTER_INTERFACE,
        &r.id,
        Some(vec![IpRequest {
            subnet_id: Some(s.id.clone()),
            ip: Some(gw),
        }]),
        "ACTIVE",
        "",
        &mut txn,
    )?;
    with_snat_ports(alloc, db, ctx, &r, std::slice::from_ref(&s.id), &mut txn)?;
    let answer = interface_info(&r, &p, vec![s.id.clone()], false);
    Ok(Plan { txn, answer })
}

/// A router with a gateway gets a SNAT port on each new interface subnet.
fn with_snat_ports(
    alloc: &mut Alloc<'_>,
    db: &Db,
    ctx: &Ctx,
    r: &Router,
    subnets: &[String],
    txn: &mut Txn,
) -> ApiResult<()> {
    if r.gateway.is_none() {
        return Ok(());
    }
    let mut w = Writes::default();
    add_snat_ports(alloc, db, ctx, r, subnets, &snat_host(db, r), &mut w)?;
    txn.compares.extend(w.compares);
    txn.ops.extend(w.ops);
    Ok(())
}

fn add_by_port(db: &Db, ctx: &Ctx, alloc: &mut Alloc<'_>, id: &str, pid: &str) -> ApiResult<Plan> {
    let (r, mut txn) = pinned(db, ctx, id)?;
    let e = find::<Port>(db, ctx, pid)?;
    let p = &e.value;
    if !p.device_id.is_empty() {
        return Err(ApiError(NeutronError::conflict(
            "PortInUse",
            format!(
                "Unable to complete operation on port {} for network {}. Port already has an attached device {}.",
                p.id, p.network_id, p.device_id
            ),
        )));
    }
    if p.fixed_ips.is_empty() {
        return Err(bad_router("Router port must have at least one fixed IP"));
    }
    let mut subnets: Vec<std::sync::Arc<Subnet>> = Vec::new();
    for f in &p.fixed_ips {
        if let Some(s) = db.subnets.get(&f.subnet_id)
            && !subnets.iter().any(|x| x.id == s.value.id)
        {
            check_subnet_modes(&s.value)?;
            subnets.push(s.value.clone());
        }
    }
    if p.fixed_ips.iter().any(|f| f.ip_address.is_ipv6())
        && let Some(other) = interface_ports(db, &r.id).into_iter().find(|o| {
            o.network_id == p.network_id && o.fixed_ips.iter().any(|f| f.ip_address.is_ipv6())
        })
    {
        return Err(bad_router(format!(
            "Router already contains IPv6 port {} belonging to network id {}. Only one IPv6 port from the same network subnet can be connected to a router.",
            other.id, p.network_id
        )));
    }
    let new: Vec<(String, IpNet)> = subnets
        .iter()
        .map(|s| Ok((s.id.clone(), cidr_of(s)?)))
        .collect::<ApiResult<_>>()?;
    check_overlap(&new, &router_subnets(db, &r, gw_network(&r)))?;
    if subnets.iter().filter(|s| s.ip_version == 4).count() > 1 {
        return Err(bad_router(
            "Cannot have multiple IPv4 subnets on router port",
        ));
    }
    if !ctx.is_admin() {
        for f in &p.fixed_ips {
            if let Some(s) = subnets.iter().find(|s| s.id == f.subnet_id)
                && s.project_id != ctx.project()
                && !s
                    .allocation_pools
                    .iter()
                    .any(|pool| pool.contains(f.ip_address))
            {
                return Err(bad_router(format!(
                    "Cannot add interface to router because specified port {} has an IP address out of the allocation pool of subnet {}, which is not owned by the project making the request",
                    p.id, s.id
                )));
            }
        }
    }
    let mut q = (**p).clone();
    q.device_id = r.id.clone();
    q.device_owner = OWNER_ROUTER_INTERFACE.into();
    q.status = "ACTIVE".into();
    q.revision_number += 1;
    q.updated_at = now();
    txn.compares
        .push(Compare::ModRevision(key::<Port>(&q.id), e.rev));
    txn.ops.push(Op::Put(key::<Port>(&q.id), encode(&q)?));
    let ids: Vec<String> = subnets.iter().map(|s| s.id.clone()).collect();
    with_snat_ports(alloc, db, ctx, &r, &ids, &mut txn)?;
    let answer = interface_info(&r, &q, ids, false);
    Ok(Plan { txn, answer })
}

/// Refuses to take subnet `s` off router `r` while floating IPs, port forwardings
/// or extra routes need it.
fn check_removable(db: &Db, r: &Router, s: &Subnet) -> ApiResult<()> {
    let cidr = cidr_of(s)?;
    let on_subnet = |port: &str, ip: &IpAddr| {
        cidr.contains(ip)
            && db
                .ports
                .get(port)
                .is_some_and(|p| p.value.fixed_ips.iter().any(|f| f.subnet_id == s.id))
    };
    for f in db
        .fips_by_router
        .get(&r.id)
        .into_iter()
        .flatten()
        .filter_map(|f| db.floatingips.get(f))
    {
        let by_fip = matches!((&f.value.port_id, &f.value.fixed_ip_address), (Some(p), Some(ip)) if on_subnet(p, ip));
        let by_pf = db
            .pfs_by_fip
            .get(&f.value.id)
            .into_iter()
            .flatten()
            .filter_map(|pf| db.port_forwardings.get(pf))
            .any(|pf| on_subnet(&pf.value.internal_port_id, &pf.value.internal_ip_address));
        if by_fip || by_pf {
            return Err(ApiError(NeutronError::conflict(
                "RouterInterfaceInUseByFloatingIP",
                format!(
                    "Router interface for subnet {} on router {} cannot be deleted, as it is required by one or more floating IPs.",
                    s.id, r.id
                ),
            )));
        }
    }
    let needed = r.routes.iter().any(|rt| {
        rt.nexthop
            .parse::<IpAddr>()
            .is_ok_and(|h| cidr.contains(&h))
    });
    if needed {
        return Err(ApiError(NeutronError::conflict(
            "RouterInterfaceInUseByRoute",
            format!(
                "Router interface for subnet {} on router {} cannot be deleted, as it is required by one or more routes.",
                s.id, r.id
            ),
        )));
    }
    Ok(())
}

async fn remove_interface(
    net: &Shared,
    ctx: &Ctx,
    id: &str,
    req: &InterfaceRequest,
) -> ApiResult<Value> {
    if req.subnet_id.is_none() && req.port_id.is_none() {
        return Err(bad_router("Either subnet_id or port_id must be specified"));
    }
    run(net, |db, alloc| {
        let (r, mut txn) = pinned(db, ctx, id)?;
        let (port, subnets) = match (&req.port_id, &req.subnet_id) {
            (Some(pid), sid) => {
                let p = interface_ports(db, &r.id)
                    .into_iter()
                    .find(|p| p.id == *pid)
                    .ok_or_else(|| {
                        ApiError(NeutronError::new(
                            404,
                            "RouterInterfaceNotFound",
                            format!("Router {} does not have an interface with id {pid}", r.id),
                        ))
                    })?;
                let mut ids: Vec<String> = Vec::new();
                for f in &p.fixed_ips {
                    if !ids.contains(&f.subnet_id) {
                        ids.push(f.subnet_id.clone());
                    }
                }
                if let Some(sid) = sid
                    && !ids.contains(sid)
                {
                    return Err(ApiError(NeutronError::new(
                        400,
                        "SubnetMismatchForPort",
                        format!("Subnet on port {pid} does not match the requested subnet {sid}."),
                    )));
                }
                (p, ids)
            }
            (None, Some(sid)) => {
                find::<Subnet>(db, ctx, sid)?;
                let p = interface_ports(db, &r.id)
                    .into_iter()
                    .find(|p| p.fixed_ips.iter().any(|f| f.subnet_id == *sid))
                    .ok_or_else(|| {
                        ApiError(NeutronError::new(
                            404,
                            "RouterInterfaceNotFoundForSubnet",
                            format!("Router {} has no interface on subnet {sid}", r.id),
                        ))
                    })?;
                (p, vec![sid.clone()])
            }
            (None, None) => {
                return Err(bad_router("Either subnet_id or port_id must be specified"));
            }
        };
        for sid in &subnets {
            if let Some(s) = db.subnets.get(sid) {
                check_removable(db, &r, &s.value)?;
            }
        }
        let Some(e) = db.ports.get(&port.id) else {
            return Err(ApiError(NeutronError::internal("router port vanished")));
        };
        txn.compares
            .push(Compare::ModRevision(key::<Port>(&port.id), e.rev));
        let remaining: Vec<IpRequest> = port
            .fixed_ips
            .iter()
            .filter(|f| !subnets.contains(&f.subnet_id))
            .map(|f| IpRequest {
                subnet_id: Some(f.subnet_id.clone()),
                ip: Some(f.ip_address),
            })
            .collect();
        if req.port_id.is_none() && !remaining.is_empty() {
            // One prefix of a multi-prefix IPv6 port: the port stays.
            let mut q = (*port).clone();
            let (c, o) = ports::readdress(alloc, db, &mut q, &remaining)?;
            q.revision_number += 1;
            q.updated_at = now();
            txn.compares.extend(c);
            txn.ops.extend(o);
            txn.ops.push(Op::Put(key::<Port>(&q.id), encode(&q)?));
        } else {
            let mut w = Writes::default();
            w.ops.extend(ports::delete_ops(&port));
            w.ops.push(Op::Delete(key::<Port>(&port.id)));
            txn.ops.extend(w.ops);
        }
        let mut w = Writes::default();
        for sp in snat_ports(db, &r.id) {
            if sp.fixed_ips.iter().any(|f| subnets.contains(&f.subnet_id)) {
                w.delete_port(db, &sp.id);
            }
        }
        txn.compares.extend(w.compares);
        txn.ops.extend(w.ops);
        let answer = interface_info(&r, &port, subnets, true);
        Ok(Plan { txn, answer })
    })
    .await
}

/// `{"router": {"routes": [...]}}` of the atomic route actions.
fn parse_extraroutes(body: &Bytes) -> ApiResult<Vec<HostRoute>> {
    let v = parse_body(body)?;
    let routes = v
        .get("router")
        .and_then(Value::as_object)
        .and_then(|r| r.get("routes"))
        .cloned()
        .ok_or_else(|| {
            ApiError(NeutronError::bad_request(
                "Invalid input for routes. Reason: a body {\"router\": {\"routes\": [...]}} is required.",
            ))
        })?;
    if !routes.is_array() {
        return Err(ApiError(NeutronError::invalid_attr(
            "routes",
            format!("Invalid data format for hostroute: '{}'", show(&routes)),
        )));
    }
    parse_routes(routes)
}

async fn edit_routes(
    net: &Shared,
    ctx: &Ctx,
    id: &str,
    given: &[HostRoute],
    add: bool,
) -> ApiResult<Value> {
    run(net, |db, _| {
        let e = find::<Router>(db, ctx, id)?;
        let mut next = touched(&e.value);
        if add {
            for r in given {
                if !next.routes.contains(r) {
                    next.routes.push(r.clone());
                }
            }
        } else {
            next.routes.retain(|r| !given.contains(r));
        }
        sort_routes(&mut next.routes);
        let subnets = router_subnets(db, &next, gw_network(&next));
        let ips: Vec<IpAddr> = db
            .ports_by_device
            .get(&next.id)
            .into_iter()
            .flatten()
            .filter_map(|p| db.ports.get(p))
            .flat_map(|p| p.value.fixed_ips.iter().map(|f| f.ip_address))
            .collect();
        check_routes(db, &next, &next.routes, &subnets, &ips)?;
        let txn = Txn::new()
            .when(Compare::ModRevision(key::<Router>(id), e.rev))
            .put(key::<Router>(id), encode(&next)?);
        let answer = Value::Object(resource::Resource::view(&next, db));
        Ok(Plan { txn, answer })
    })
    .await
}
