//! Routers (Neutron's `router`, `ext-gw-mode` and `extraroute` extensions): the
//! router record, its external gateway port and its extra routes. Interfaces are in
//! `router_interfaces.rs`.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use kuryr_model::input::{Input, is_uuid, parse_cidr, show, to_bool};
use kuryr_model::{HostRoute, Network, NeutronError, Port, Router, RouterGateway};
use kuryr_store::{Compare, Op, Txn};
use serde_json::{Map, Value, json};

use super::db::{Db, Entry, Table};
use super::networks::{find_network, owner_project};
use super::ports::{
    self, Alloc, IpRequest, OWNER_ROUTER_GATEWAY, OWNER_ROUTER_INTERFACE, OWNER_ROUTER_SNAT,
};
use super::resource::{
    self, Resource, check_quota, clean_tags, encode, key, standard_fields, view_of,
};
use super::{ApiError, ApiResult, Ctx, Shared, new_id, now};

/// 400 `BadRequest` as neutron words it for routers (the period is always added).
pub fn bad_router(msg: impl std::fmt::Display) -> ApiError {
    ApiError(NeutronError::new(
        400,
        "BadRequest",
        format!("Bad router request: {msg}."),
    ))
}

/// A requested gateway: `None` removes it.
#[derive(Clone)]
pub struct GatewaySpec {
    network_id: String,
    enable_snat: Option<bool>,
    fixed_ips: Option<Vec<IpRequest>>,
}

fn gw_invalid(reason: impl std::fmt::Display) -> ApiError {
    ApiError(NeutronError::invalid_attr("external_gateway_info", reason))
}

/// `external_gateway_info` as neutron validates it (`type:dict_or_nodata`).
fn parse_gateway(v: Value) -> ApiResult<Option<GatewaySpec>> {
    let mut m = match v {
        Value::Null => return Ok(None),
        Value::Object(m) if m.is_empty() => return Ok(None),
        Value::Object(m) => m,
        other => {
            return Err(gw_invalid(format!(
                "'{}' is not a dictionary",
                show(&other)
            )));
        }
    };
    let unknown: Vec<&String> = m
        .keys()
        .filter(|k| !["network_id", "enable_snat", "external_fixed_ips"].contains(&k.as_str()))
        .collect();
    if !unknown.is_empty() {
        let names: Vec<&str> = unknown.iter().map(|s| s.as_str()).collect();
        return Err(gw_invalid(format!(
            "Unexpected keys supplied: {}",
            names.join(", ")
        )));
    }
    let network_id = match m.remove("network_id") {
        Some(Value::String(s)) if is_uuid(&s) => s,
        Some(other) => {
            return Err(gw_invalid(format!(
                "'{}' is not a valid UUID",
                show(&other)
            )));
        }
        None => {
            return Err(gw_invalid(
                "Validation of dictionary's keys failed. Expected keys: {'network_id'} Provided keys: set()",
            ));
        }
    };
    let enable_snat = match m.remove("enable_snat") {
        None | Some(Value::Null) => None,
        Some(v) => Some(to_bool(&v).ok_or_else(|| {
            ApiError(NeutronError::invalid_input(format!(
                "'{}' cannot be converted to boolean",
                show(&v)
            )))
        })?),
    };
    let fixed_ips = match m.remove("external_fixed_ips") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            let maps = items
                .into_iter()
                .map(|i| match i {
                    Value::Object(m) => Ok(m),
                    other => Err(gw_invalid(format!(
                        "'{}' is not a dictionary",
                        show(&other)
                    ))),
                })
                .collect::<ApiResult<Vec<_>>>()?;
            Some(ports::parse_fixed_ips(maps)?)
        }
        Some(other) => return Err(gw_invalid(format!("'{}' is not a list", show(&other)))),
    };
    Ok(Some(GatewaySpec {
        network_id,
        enable_snat,
        fixed_ips,
    }))
}

/// The `network:router_interface` ports of a router.
pub fn interface_ports(db: &Db, router_id: &str) -> Vec<Arc<Port>> {
    db.ports_by_device
        .get(router_id)
        .into_iter()
        .flatten()
        .filter_map(|id| db.ports.get(id))
        .filter(|e| e.value.device_owner == OWNER_ROUTER_INTERFACE)
        .map(|e| e.value.clone())
        .collect()
}

/// The router's addresses on its internal subnets in its SNAT namespace (one
/// `network:router_centralized_snat` port per interface subnet while it has a gateway).
pub fn snat_ports(db: &Db, router_id: &str) -> Vec<Arc<Port>> {
    db.ports_by_device
        .get(router_id)
        .into_iter()
        .flatten()
        .filter_map(|id| db.ports.get(id))
        .filter(|e| e.value.device_owner == OWNER_ROUTER_SNAT)
        .map(|e| e.value.clone())
        .collect()
}

/// The host the router's SNAT namespace is on (its gateway port's binding).
pub fn snat_host(db: &Db, r: &Router) -> String {
    r.gateway
        .as_ref()
        .and_then(|g| db.ports.get(&g.port_id))
        .map(|p| p.value.host_id.clone())
        .unwrap_or_default()
}

/// Adds a SNAT port on each subnet of `subnets` (ids) of router `r`, on `host`.
pub fn add_snat_ports(
    alloc: &mut Alloc<'_>,
    db: &Db,
    ctx: &Ctx,
    r: &Router,
    subnets: &[String],
    host: &str,
    w: &mut Writes,
) -> ApiResult<()> {
    for sid in subnets {
        let Some(s) = db.subnets.get(sid) else {
            continue;
        };
        let Some(n) = db.networks.get(&s.value.network_id).cloned() else {
            continue;
        };
        let mut txn = Txn::new();
        ports::service_port(
            alloc,
            db,
            ctx,
            &n,
            "",
            OWNER_ROUTER_SNAT,
            &r.id,
            Some(vec![IpRequest {
                subnet_id: Some(sid.clone()),
                ip: None,
            }]),
            "DOWN",
            host,
            &mut txn,
        )?;
        w.compares.extend(txn.compares);
        w.ops.extend(txn.ops);
    }
    Ok(())
}

/// The subnet ids of a router's interfaces.
pub fn interface_subnet_ids(db: &Db, router_id: &str) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for p in interface_ports(db, router_id) {
        for f in &p.fixed_ips {
            if !ids.contains(&f.subnet_id) {
                ids.push(f.subnet_id.clone());
            }
        }
    }
    ids
}

/// Every subnet a router is on: its interfaces' and, through the gateway, all of
/// the external network's (neutron's overlap and next-hop checks use both).
pub fn router_subnets(db: &Db, r: &Router, gw_network: Option<&str>) -> Vec<(String, IpNet)> {
    let mut ids: BTreeSet<String> = BTreeSet::new();
    for p in interface_ports(db, &r.id) {
        for f in &p.fixed_ips {
            ids.insert(f.subnet_id.clone());
        }
    }
    if let Some(n) = gw_network {
        for s in db.subnets_of(n) {
            ids.insert(s.id.clone());
        }
    }
    ids.into_iter()
        .filter_map(|id| {
            let s = db.subnets.get(&id)?;
            let c = parse_cidr(&s.value.cidr)?;
            Some((id, c))
        })
        .collect()
}

/// The addresses of a router's ports (interfaces and gateway).
fn router_ips(db: &Db, r: &Router) -> Vec<IpAddr> {
    db.ports_by_device
        .get(&r.id)
        .into_iter()
        .flatten()
        .filter_map(|id| db.ports.get(id))
        .filter(|e| {
            e.value.device_owner == OWNER_ROUTER_INTERFACE
                || e.value.device_owner == OWNER_ROUTER_GATEWAY
        })
        .flat_map(|e| e.value.fixed_ips.iter().map(|f| f.ip_address))
        .collect()
}

/// A routes list as Python prints it in neutron's messages.
pub fn routes_repr(routes: &[HostRoute]) -> String {
    let items: Vec<String> = routes
        .iter()
        .map(|r| {
            format!(
                "{{'destination': '{}', 'nexthop': '{}'}}",
                r.destination, r.nexthop
            )
        })
        .collect();
    format!("[{}]", items.join(", "))
}

fn invalid_routes(routes: &[HostRoute], reason: &str) -> ApiError {
    ApiError(NeutronError::new(
        400,
        "InvalidRoutes",
        format!(
            "Invalid format for routes: {}, {reason}",
            routes_repr(routes)
        ),
    ))
}

/// Neutron's checks of a router's routes against where the router is connected;
/// `extra` are subnets about to be added (or the gateway's, about to change).
pub fn check_routes(
    db: &Db,
    r: &Router,
    routes: &[HostRoute],
    subnets: &[(String, IpNet)],
    own_ips: &[IpAddr],
) -> ApiResult<()> {
    let limit = db.quota(&r.project_id).router_route;
    if limit >= 0 && routes.len() as i64 > limit {
        return Err(ApiError(NeutronError::conflict(
            "OverQuota",
            "Quota exceeded for resources: ['router_route'].",
        )));
    }
    for route in routes {
        let Ok(hop) = route.nexthop.parse::<IpAddr>() else {
            return Err(invalid_routes(
                routes,
                "the nexthop is not connected with router",
            ));
        };
        if !subnets.iter().any(|(_, c)| c.contains(&hop)) {
            return Err(invalid_routes(
                routes,
                "the nexthop is not connected with router",
            ));
        }
        if own_ips.contains(&hop) {
            return Err(invalid_routes(routes, "the nexthop is used by router"));
        }
    }
    Ok(())
}

/// `routes` as neutron validates them (`type:hostroutes`), sorted as neutron
/// stores them (by destination, then next hop, as strings).
pub fn parse_routes(v: Value) -> ApiResult<Vec<HostRoute>> {
    let invalid = |reason: String| ApiError(NeutronError::invalid_attr("routes", reason));
    let items = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        other => {
            return Err(invalid(format!(
                "Invalid data format for hostroute: '{}'",
                show(&other)
            )));
        }
    };
    let mut out: Vec<HostRoute> = Vec::new();
    for item in items {
        let Value::Object(mut m) = item else {
            return Err(invalid(format!(
                "Invalid data format for hostroute: '{}'",
                show(&item)
            )));
        };
        let keys: BTreeSet<&str> = m.keys().map(String::as_str).collect();
        if keys != BTreeSet::from(["destination", "nexthop"]) {
            let provided: Vec<String> = keys.iter().map(|k| format!("'{k}'")).collect();
            return Err(invalid(format!(
                "Validation of dictionary's keys failed. Expected keys: {{'destination', 'nexthop'}} Provided keys: {{{}}}",
                provided.join(", ")
            )));
        }
        let dest = m.remove("destination").unwrap_or(Value::Null);
        let hop = m.remove("nexthop").unwrap_or(Value::Null);
        // Neutron takes only canonical CIDRs (no host bits).
        let d = dest
            .as_str()
            .and_then(parse_cidr)
            .filter(|c| c.trunc() == *c)
            .ok_or_else(|| invalid(format!("'{}' is not a valid CIDR", show(&dest))))?;
        let h = match hop.as_str().map(str::parse::<IpAddr>) {
            Some(Ok(ip)) => ip,
            _ => {
                return Err(invalid(format!(
                    "'{}' is not a valid IP address",
                    show(&hop)
                )));
            }
        };
        let r = HostRoute {
            destination: d.to_string(),
            nexthop: h.to_string(),
        };
        if out.contains(&r) {
            return Err(invalid(format!(
                "Duplicate hostroute '{{'destination': '{}', 'nexthop': '{}'}}'",
                r.destination, r.nexthop
            )));
        }
        out.push(r);
    }
    sort_routes(&mut out);
    Ok(out)
}

pub fn sort_routes(routes: &mut [HostRoute]) {
    routes.sort_by(|a, b| {
        (a.destination.as_str(), a.nexthop.as_str())
            .cmp(&(b.destination.as_str(), b.nexthop.as_str()))
    });
}

/// The writes of one router change, gathered for one transaction.
#[derive(Default)]
pub struct Writes {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
}

impl Writes {
    pub fn delete_port(&mut self, db: &Db, port_id: &str) {
        if let Some(e) = db.ports.get(port_id) {
            self.compares
                .push(Compare::ModRevision(key::<Port>(port_id), e.rev));
            self.ops.extend(ports::delete_ops(&e.value));
            self.ops.push(Op::Delete(key::<Port>(port_id)));
        }
    }
}

/// Refuses to take a router's gateway off `network` while floating IPs reach the
/// outside through it.
fn check_gateway_unused(db: &Db, r: &Router, network: &str) -> ApiResult<()> {
    let used = db
        .fips_by_router
        .get(&r.id)
        .into_iter()
        .flatten()
        .filter_map(|f| db.floatingips.get(f))
        .any(|f| f.value.floating_network_id == network);
    if used {
        return Err(ApiError(NeutronError::conflict(
            "RouterExternalGatewayInUseByFloatingIp",
            format!(
                "Gateway cannot be updated for router {}, since a gateway to external network {network} is required by one or more floating IPs.",
                r.id
            ),
        )));
    }
    Ok(())
}

/// Neutron's overlap check: `new` subnets may not overlap any of `existing`.
pub fn check_overlap(new: &[(String, IpNet)], existing: &[(String, IpNet)]) -> ApiResult<()> {
    for (nid, nc) in new {
        for (eid, ec) in existing {
            if nid == eid {
                return Err(bad_router(format!(
                    "Router already has a port on subnet {nid}"
                )));
            }
            if kuryr_model::ipam::nets_overlap(nc, ec) {
                return Err(bad_router(format!(
                    "Cidr {nc} of subnet {nid} overlaps with cidr {ec} of subnet {eid}"
                )));
            }
        }
    }
    Ok(())
}

/// Sets, changes or removes the gateway of `r` (already holding its id), adding the
/// port writes to `w`.
pub fn apply_gateway(
    alloc: &mut Alloc<'_>,
    db: &Db,
    ctx: &Ctx,
    r: &mut Router,
    spec: Option<&GatewaySpec>,
    w: &mut Writes,
) -> ApiResult<()> {
    let Some(spec) = spec else {
        if let Some(old) = r.gateway.take() {
            check_gateway_unused(db, r, &old.network_id)?;
            w.delete_port(db, &old.port_id);
            for p in snat_ports(db, &r.id) {
                w.delete_port(db, &p.id);
            }
            let subnets = router_subnets(db, r, None);
            let ips = router_ips(db, r);
            check_routes(db, r, &r.routes, &subnets, &ips)?;
        }
        return Ok(());
    };
    let n: Entry<Network> = find_network(db, ctx, &spec.network_id)?;
    if !n.value.router_external {
        return Err(bad_router(format!(
            "Network {} is not an external network",
            spec.network_id
        )));
    }
    let subnets = db.subnets_of(&spec.network_id);
    for req in spec.fixed_ips.iter().flatten() {
        if let Some(ip) = req.ip
            && subnets.iter().any(|s| s.gateway_ip == Some(ip))
        {
            return Err(bad_router(format!(
                "External IP {ip} is the same as the gateway IP"
            )));
        }
    }
    let enable_snat = spec.enable_snat.unwrap_or(true);
    match r.gateway.clone() {
        Some(old) if old.network_id == spec.network_id => {
            if let Some(reqs) = &spec.fixed_ips
                && let Some(e) = db.ports.get(&old.port_id)
            {
                let mut p = (*e.value).clone();
                let (c, o) = ports::readdress(alloc, db, &mut p, reqs)?;
                if p.fixed_ips != e.value.fixed_ips {
                    p.revision_number += 1;
                    p.updated_at = now();
                    w.compares
                        .push(Compare::ModRevision(key::<Port>(&p.id), e.rev));
                    w.compares.extend(c);
                    w.ops.extend(o);
                    w.ops.push(Op::Put(key::<Port>(&p.id), encode(&p)?));
                }
            }
            r.gateway = Some(RouterGateway { enable_snat, ..old });
            return Ok(());
        }
        Some(old) => {
            check_gateway_unused(db, r, &old.network_id)?;
            w.delete_port(db, &old.port_id);
            for p in snat_ports(db, &r.id) {
                w.delete_port(db, &p.id);
            }
        }
        None => {}
    }
    // The SNAT namespace's addresses on the internal subnets (placed by the
    // scheduler along with the gateway port).
    let internal = interface_subnet_ids(db, &r.id);
    add_snat_ports(alloc, db, ctx, r, &internal, "", w)?;
    let interfaces = router_subnets(db, r, None);
    let external: Vec<(String, IpNet)> = subnets
        .iter()
        .filter_map(|s| Some((s.id.clone(), parse_cidr(&s.cidr)?)))
        .collect();
    check_overlap(&external, &interfaces)?;
    let mut txn = Txn::new();
    let port = ports::service_port(
        alloc,
        db,
        ctx,
        &n,
        "",
        OWNER_ROUTER_GATEWAY,
        &r.id,
        spec.fixed_ips.clone(),
        "DOWN",
        "",
        &mut txn,
    )?;
    w.compares.extend(txn.compares);
    w.ops.extend(txn.ops);
    r.gateway = Some(RouterGateway {
        network_id: spec.network_id.clone(),
        enable_snat,
        port_id: port.id.clone(),
    });
    let mut all = interfaces;
    all.extend(external);
    let mut ips = router_ips(db, r);
    ips.extend(port.fixed_ips.iter().map(|f| f.ip_address));
    check_routes(db, r, &r.routes, &all, &ips)
}

/// `external_gateway_info` as the API shows it.
fn gateway_view(db: &Db, g: &RouterGateway) -> Value {
    let ips: Vec<Value> = db
        .ports
        .get(&g.port_id)
        .map(|e| {
            e.value
                .fixed_ips
                .iter()
                .map(|f| json!({"subnet_id": f.subnet_id, "ip_address": f.ip_address.to_string()}))
                .collect()
        })
        .unwrap_or_default();
    json!({"network_id": g.network_id, "external_fixed_ips": ips, "enable_snat": g.enable_snat})
}

impl Resource for Router {
    const SINGULAR: &'static str = "router";
    const PLURAL: &'static str = "routers";
    const PATH: &'static str = "routers";
    const DISPLAY: &'static str = "Router";
    const NOT_FOUND: &'static str = "RouterNotFound";
    const NOT_FOUND_PERIOD: bool = false;

    standard_fields!(routers);

    fn create_defaults() -> Vec<(&'static str, Value)> {
        vec![
            ("external_gateway_info", Value::Null),
            ("external_gateway_info", Value::Object(Map::new())),
        ]
    }

    fn view(&self, db: &Db) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("id".into(), json!(self.id));
        m.insert("name".into(), json!(self.name));
        m.insert("project_id".into(), json!(self.project_id));
        m.insert("tenant_id".into(), json!(self.project_id));
        m.insert("admin_state_up".into(), json!(self.admin_state_up));
        m.insert("status".into(), json!(self.status));
        m.insert(
            "external_gateway_info".into(),
            self.gateway
                .as_ref()
                .map(|g| gateway_view(db, g))
                .unwrap_or(Value::Null),
        );
        m.insert("description".into(), json!(self.description));
        m.insert("routes".into(), json!(self.routes));
        m.insert("tags".into(), json!(self.tags));
        m.insert("created_at".into(), json!(self.created_at));
        m.insert("updated_at".into(), json!(self.updated_at));
        m.insert("revision_number".into(), json!(self.revision_number));
        m
    }

    fn write_view(&self, db: &Db, out: &mut Vec<u8>) {
        if serde_json::to_writer(&mut *out, &self.view(db)).is_err() {
            out.extend_from_slice(b"{}");
        }
    }

    async fn create(
        net: &Shared,
        ctx: &Ctx,
        items: Vec<Map<String, Value>>,
    ) -> ApiResult<Vec<Value>> {
        let mut out = Vec::new();
        for item in items {
            out.push(create_one(net, ctx, item).await?);
        }
        Ok(out)
    }

    async fn update(
        net: &Shared,
        ctx: &Ctx,
        id: &str,
        mut input: Input,
        if_match: Option<u64>,
    ) -> ApiResult<Value> {
        input.reject(&["status", "tags", "gw_port_id"], "update")?;
        let name = input.string("name", 255)?;
        let description = input.string("description", 255)?;
        let admin_state_up = input.boolean("admin_state_up")?;
        let gateway = input
            .take("external_gateway_info")
            .map(parse_gateway)
            .transpose()?;
        let routes = input.take("routes").map(parse_routes).transpose()?;
        input.finish()?;
        let mut alloc = Alloc::new(net);
        let result = resource::update_with::<Router, _>(net, ctx, id, if_match, |db, r| {
            alloc.clear();
            let mut w = Writes::default();
            if let Some(v) = &name {
                r.name = v.clone();
            }
            if let Some(v) = &description {
                r.description = v.clone();
            }
            if let Some(v) = admin_state_up {
                r.admin_state_up = v;
            }
            if let Some(rs) = &routes {
                r.routes = rs.clone();
            }
            match &gateway {
                Some(g) => apply_gateway(&mut alloc, db, ctx, r, g.as_ref(), &mut w)?,
                None if routes.is_some() => {
                    let subnets =
                        router_subnets(db, r, r.gateway.as_ref().map(|g| g.network_id.as_str()));
                    check_routes(db, r, &r.routes, &subnets, &router_ips(db, r))?;
                }
                None => {}
            }
            Ok((w.compares, w.ops))
        })
        .await;
        drop(alloc);
        result
    }

    async fn delete(net: &Shared, ctx: &Ctx, id: &str) -> ApiResult<()> {
        resource::delete_with::<Router, _>(net, ctx, id, |db, r| {
            let attached = interface_ports(db, &r.id);
            if !attached.is_empty() {
                let ids: Vec<&str> = attached.iter().map(|p| p.id.as_str()).collect();
                return Err(ApiError(NeutronError::conflict(
                    "RouterInUse",
                    format!(
                        "Router {} has ports still attached: {}",
                        r.id,
                        ids.join(", ")
                    ),
                )));
            }
            let mut w = Writes::default();
            if let Some(g) = &r.gateway {
                check_gateway_unused(db, r, &g.network_id)?;
                w.delete_port(db, &g.port_id);
                for p in snat_ports(db, &r.id) {
                    w.delete_port(db, &p.id);
                }
            }
            // No interface may be added while the router goes.
            for p in db.ports_by_device.get(&r.id).into_iter().flatten() {
                if let Some(e) = db.ports.get(p) {
                    w.compares.push(Compare::ModRevision(key::<Port>(p), e.rev));
                }
            }
            Ok((w.compares, w.ops))
        })
        .await
    }
}

async fn create_one(net: &Shared, ctx: &Ctx, item: Map<String, Value>) -> ApiResult<Value> {
    let mut input = Input::new(item);
    let project_id = owner_project(ctx, &mut input)?;
    let name = input.string("name", 255)?.unwrap_or_default();
    let description = input.string("description", 255)?.unwrap_or_default();
    let admin_state_up = input.boolean("admin_state_up")?.unwrap_or(true);
    let tags = clean_tags(input.string_list("tags")?.unwrap_or_default())?;
    let gateway = input
        .take("external_gateway_info")
        .map(parse_gateway)
        .transpose()?
        .flatten();
    if input.has("routes") {
        return Err(ApiError(NeutronError::bad_request(
            "Attribute 'routes' not allowed in POST",
        )));
    }
    input.finish()?;
    for _ in 0..16 {
        let id = new_id();
        let ts = now();
        let mut alloc = Alloc::new(net);
        let txn = {
            let db = net.db();
            let used = db
                .routers
                .values()
                .filter(|r| r.value.project_id == project_id)
                .count();
            check_quota(
                &db,
                &project_id,
                "router",
                db.quota(&project_id).router,
                used,
                1,
            )?;
            let mut r = Router {
                id: id.clone(),
                name: name.clone(),
                project_id: project_id.clone(),
                admin_state_up,
                status: "ACTIVE".into(),
                description: description.clone(),
                gateway: None,
                routes: Vec::new(),
                tags: tags.clone(),
                created_at: ts.clone(),
                updated_at: ts,
                revision_number: 1,
            };
            let mut w = Writes::default();
            if let Some(g) = &gateway {
                apply_gateway(&mut alloc, &db, ctx, &mut r, Some(g), &mut w)?;
                r.revision_number = 2;
            }
            let mut txn = Txn::new();
            txn.compares = w.compares;
            txn.ops = w.ops;
            txn.put(key::<Router>(&id), encode(&r)?)
        };
        let ok = net.commit(txn).await;
        drop(alloc);
        if ok? {
            return Ok(view_of::<Router>(net, &id));
        }
    }
    Err(ApiError(NeutronError::conflict(
        "Conflict",
        "Could not create the router; try again",
    )))
}
