//! Floating IPs (`router`, `fip-port-details`, `floatingip-pools`,
//! `floating-ip-router-writable`): an address on an external network held by a
//! `network:floatingip` port, associated with one fixed IPv4 address of a port whose
//! subnet reaches that network through a router.

use std::net::IpAddr;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router as Routes};
use kuryr_model::input::{Input, parse_ip};
use kuryr_model::{FloatingIp, Network, NeutronError, Port, PortForwarding, Router};
use kuryr_store::{Compare, Op, Txn};
use serde_json::{Map, Value, json};

use super::db::{Db, Entry, Table};
use super::networks::{find_network, owner_project};
use super::ports::{self, Alloc, IpRequest, OWNER_FLOATINGIP, OWNER_ROUTER_INTERFACE};
use super::resource::{
    self, Resource, check_quota, clean_tags, encode, find, key, standard_fields, view_of,
};
use super::{ApiError, ApiResult, Ctx, Shared, new_id, now};

/// One floating IP per (port, fixed IP, external network), kept under concurrency.
pub fn assoc_key(port: &str, ip: &IpAddr, network: &str) -> String {
    format!("/neutron/fip-assoc/{port}/{ip}/{network}")
}

pub fn bad_fip(msg: impl std::fmt::Display) -> ApiError {
    ApiError(NeutronError::new(
        400,
        "BadRequest",
        format!("Bad floatingip request: {msg}."),
    ))
}

/// The router through which `subnet` reaches external network `ext`: one with an
/// interface on the subnet and its gateway on `ext`, preferring the one that holds
/// the subnet's gateway address (Neutron's choice).
pub fn router_for(db: &Db, subnet: &str, ext: &str) -> Option<String> {
    let s = db.subnets.get(subnet)?;
    let mut found: Option<String> = None;
    for pid in db
        .ports_by_network
        .get(&s.value.network_id)
        .into_iter()
        .flatten()
    {
        let Some(p) = db.ports.get(pid) else { continue };
        if p.value.device_owner != OWNER_ROUTER_INTERFACE {
            continue;
        }
        let Some(r) = db.routers.get(&p.value.device_id) else {
            continue;
        };
        if r.value.gateway.as_ref().map(|g| g.network_id.as_str()) != Some(ext) {
            continue;
        }
        let on_subnet: Vec<_> = p
            .value
            .fixed_ips
            .iter()
            .filter(|f| f.subnet_id == subnet)
            .collect();
        if on_subnet.is_empty() {
            continue;
        }
        if on_subnet
            .iter()
            .any(|f| Some(f.ip_address) == s.value.gateway_ip)
        {
            return Some(r.value.id.clone());
        }
        found.get_or_insert_with(|| r.value.id.clone());
    }
    found
}

/// A resolved association: the port, its fixed IPv4 address and the router.
pub struct Association {
    pub port: Entry<Port>,
    pub ip: IpAddr,
    pub router: Entry<Router>,
}

/// Neutron's association checks, in its order (`fip`: the floating IP as it will be).
pub fn associate(
    db: &Db,
    ctx: &Ctx,
    fip: &FloatingIp,
    port_id: &str,
    fixed_ip: Option<IpAddr>,
    router_id: Option<&str>,
) -> ApiResult<Association> {
    let port = find::<Port>(db, ctx, port_id)?;
    let p = &port.value;
    if p.project_id != ctx.project() && !ctx.is_admin() {
        return Err(bad_fip(format!(
            "Cannot process floating IP association with Port {port_id}, since that port is owned by a different project"
        )));
    }
    if p.device_owner == "network:dhcp" {
        return Err(bad_fip(
            "Port %(id)s is unable to be assigned a floating IP",
        ));
    }
    let v4: Vec<_> = p
        .fixed_ips
        .iter()
        .filter(|f| f.ip_address.is_ipv4())
        .collect();
    let chosen = match fixed_ip {
        Some(ip) if !ip.is_ipv4() => {
            return Err(bad_fip(format!(
                "Cannot process floating IP association with {ip}, since that is not an IPv4 address"
            )));
        }
        Some(ip) => v4
            .iter()
            .find(|f| f.ip_address == ip)
            .ok_or_else(|| bad_fip(format!("Port {port_id} does not have fixed ip {ip}")))?,
        None => match v4.as_slice() {
            [] => {
                return Err(bad_fip(format!(
                    "Cannot add floating IP to port {port_id} that has no fixed IPv4 addresses"
                )));
            }
            [one] => one,
            _ => {
                return Err(bad_fip(format!(
                    "Port {port_id} has multiple fixed IPv4 addresses.  Must provide a specific IPv4 address when assigning a floating IP"
                )));
            }
        },
    };
    let ext = &fip.floating_network_id;
    let router = match router_id {
        Some(rid) => {
            let r = find::<Router>(db, ctx, rid)?;
            if r.value.gateway.as_ref().map(|g| g.network_id.as_str()) != Some(ext.as_str()) {
                return Err(ApiError(NeutronError::conflict(
                    "Conflict",
                    "An unknown exception occurred.",
                )));
            }
            r
        }
        None => {
            let rid = router_for(db, &chosen.subnet_id, ext).ok_or_else(|| {
                ApiError(NeutronError::new(
                    404,
                    "ExternalGatewayForFloatingIPNotFound",
                    format!(
                        "External network {ext} is not reachable from subnet {}.  Therefore, cannot associate Port {port_id} with a Floating IP.",
                        chosen.subnet_id
                    ),
                ))
            })?;
            db.routers
                .get(&rid)
                .cloned()
                .ok_or_else(|| ApiError(NeutronError::internal("router vanished")))?
        }
    };
    let taken = db
        .fips_by_port
        .get(port_id)
        .into_iter()
        .flatten()
        .filter_map(|f| db.floatingips.get(f))
        .any(|f| {
            f.value.id != fip.id
                && f.value.fixed_ip_address == Some(chosen.ip_address)
                && f.value.floating_network_id == *ext
        });
    if taken {
        return Err(already_associated(fip, port_id, &chosen.ip_address));
    }
    Ok(Association {
        ip: chosen.ip_address,
        port: port.clone(),
        router,
    })
}

pub fn already_associated(fip: &FloatingIp, port_id: &str, ip: &IpAddr) -> ApiError {
    ApiError(NeutronError::conflict(
        "FloatingIPPortAlreadyAssociated",
        format!(
            "Cannot associate floating IP {} ({}) with port {port_id} using fixed IP {ip}, as that fixed IP already has a floating IP on external network {}.",
            fip.floating_ip_address, fip.id, fip.floating_network_id
        ),
    ))
}

fn in_use_by_pf(id: &str) -> ApiError {
    ApiError(NeutronError::conflict(
        "FipInUseByPortForwarding",
        format!("Floating IP {id} in use by Port Forwarding resources."),
    ))
}

/// Applies an association (or `None`: none) to `fip`, with its guard-key writes.
fn set_association(
    fip: &mut FloatingIp,
    assoc: Option<&Association>,
    compares: &mut Vec<Compare>,
    ops: &mut Vec<Op>,
) {
    let old = match (&fip.port_id, &fip.fixed_ip_address) {
        (Some(p), Some(ip)) => Some(assoc_key(p, ip, &fip.floating_network_id)),
        _ => None,
    };
    let new = assoc.map(|a| assoc_key(&a.port.value.id, &a.ip, &fip.floating_network_id));
    if old != new {
        if let Some(k) = &old {
            ops.push(Op::Delete(k.clone()));
        }
        if let Some(k) = &new {
            compares.push(Compare::Absent(k.clone()));
            ops.push(Op::Put(k.clone(), fip.id.clone().into_bytes()));
        }
    }
    match assoc {
        Some(a) => {
            // The port and the router must still be as read when this commits.
            compares.push(Compare::ModRevision(
                key::<Port>(&a.port.value.id),
                a.port.rev,
            ));
            compares.push(Compare::ModRevision(
                key::<Router>(&a.router.value.id),
                a.router.rev,
            ));
            fip.port_id = Some(a.port.value.id.clone());
            fip.fixed_ip_address = Some(a.ip);
            fip.router_id = Some(a.router.value.id.clone());
        }
        None => {
            fip.port_id = None;
            fip.fixed_ip_address = None;
            fip.router_id = None;
        }
    }
}

fn port_details(db: &Db, port_id: &Option<String>) -> Value {
    let Some(p) = port_id.as_ref().and_then(|id| db.ports.get(id)) else {
        return Value::Null;
    };
    let p = &p.value;
    json!({"name": p.name, "network_id": p.network_id, "mac_address": p.mac_address,
        "admin_state_up": p.admin_state_up, "status": p.status, "device_id": p.device_id,
        "device_owner": p.device_owner})
}

/// A port forwarding as a floating IP lists it.
fn pf_summary(pf: &PortForwarding) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(pf.id));
    m.insert("protocol".into(), json!(pf.protocol));
    m.insert(
        "internal_ip_address".into(),
        json!(pf.internal_ip_address.to_string()),
    );
    m.insert("internal_port_id".into(), json!(pf.internal_port_id));
    if pf.internal.0 == pf.internal.1 && pf.external.0 == pf.external.1 {
        m.insert("internal_port".into(), json!(pf.internal.0));
        m.insert("external_port".into(), json!(pf.external.0));
    }
    Value::Object(m)
}

impl Resource for FloatingIp {
    const SINGULAR: &'static str = "floatingip";
    const PLURAL: &'static str = "floatingips";
    const PATH: &'static str = "floatingips";
    const DISPLAY: &'static str = "Floating IP";
    const NOT_FOUND: &'static str = "FloatingIPNotFound";
    const NOT_FOUND_PERIOD: bool = false;

    standard_fields!(floatingips);

    fn view(&self, db: &Db) -> Map<String, Value> {
        let pfs: Vec<Value> = db
            .pfs_by_fip
            .get(&self.id)
            .into_iter()
            .flatten()
            .filter_map(|id| db.port_forwardings.get(id))
            .map(|e| pf_summary(&e.value))
            .collect();
        let mut m = Map::new();
        m.insert("id".into(), json!(self.id));
        m.insert("tenant_id".into(), json!(self.project_id));
        m.insert("project_id".into(), json!(self.project_id));
        m.insert(
            "floating_ip_address".into(),
            json!(self.floating_ip_address.to_string()),
        );
        m.insert(
            "floating_network_id".into(),
            json!(self.floating_network_id),
        );
        m.insert("router_id".into(), json!(self.router_id));
        m.insert("port_id".into(), json!(self.port_id));
        m.insert(
            "fixed_ip_address".into(),
            json!(self.fixed_ip_address.map(|ip| ip.to_string())),
        );
        m.insert("status".into(), json!(self.status));
        m.insert("description".into(), json!(self.description));
        m.insert("port_details".into(), port_details(db, &self.port_id));
        m.insert("port_forwardings".into(), Value::Array(pfs));
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

    fn create_target(
        db: &Db,
        ctx: &Ctx,
        item: &Map<String, Value>,
    ) -> ApiResult<Map<String, Value>> {
        if !matches!(item.get("floating_network_id"), Some(Value::String(_))) {
            return Err(ApiError(NeutronError::bad_request(
                "Failed to parse request. Required attribute 'floating_network_id' not specified",
            )));
        }
        let _ = db;
        Ok(resource::item_target(ctx, item))
    }

    fn create_defaults() -> Vec<(&'static str, Value)> {
        vec![
            ("floating_ip_address", Value::Null),
            ("router_id", Value::Null),
        ]
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
        input.read_only(&[
            "floating_ip_address",
            "floating_network_id",
            "subnet_id",
            "status",
            "port_details",
            "port_forwardings",
            "tags",
        ])?;
        // An empty body disassociates, as `port_id: null` does (Neutron's rule).
        let empty = input.is_empty();
        let port_id = input.nullable_uuid("port_id")?;
        let fixed_ip = match input.take("fixed_ip_address") {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_ip(&v, "fixed_ip_address")?),
        };
        let router_id = input.nullable_uuid("router_id")?;
        let description = input.string("description", 255)?;
        input.finish()?;
        let port_id: Option<Option<String>> = if empty { Some(None) } else { port_id };
        resource::update_with::<FloatingIp, _>(net, ctx, id, if_match, |db, f| {
            if let Some(d) = &description {
                f.description = d.clone();
            }
            let mut compares = Vec::new();
            let mut ops = Vec::new();
            let target: Option<(String, Option<IpAddr>)> = match &port_id {
                Some(None) => None,
                Some(Some(p)) => Some((p.clone(), fixed_ip)),
                // Not given: the association stays (re-checked against the router asked for).
                None => f
                    .port_id
                    .clone()
                    .map(|p| (p, fixed_ip.or(f.fixed_ip_address))),
            };
            if fixed_ip.is_some() && target.is_none() {
                return Err(bad_fip(
                    "fixed_ip_address cannot be specified without a port_id",
                ));
            }
            match target {
                Some((p, ip)) => {
                    if matches!(port_id, Some(Some(_)))
                        && db.pfs_by_fip.get(&f.id).is_some_and(|s| !s.is_empty())
                    {
                        return Err(in_use_by_pf(&f.id));
                    }
                    let rid = match &router_id {
                        Some(Some(r)) => Some(r.clone()),
                        Some(None) => None,
                        None if port_id.is_none() => f.router_id.clone(),
                        None => None,
                    };
                    let a = associate(db, ctx, f, &p, ip, rid.as_deref())?;
                    set_association(f, Some(&a), &mut compares, &mut ops);
                }
                None => {
                    if db.pfs_by_fip.get(&f.id).is_some_and(|s| !s.is_empty()) {
                        // Port forwardings keep the router; only a port association goes.
                        f.port_id = None;
                        f.fixed_ip_address = None;
                    } else {
                        set_association(f, None, &mut compares, &mut ops);
                    }
                }
            }
            f.status = status_of(f);
            Ok((compares, ops))
        })
        .await
    }

    async fn delete(net: &Shared, ctx: &Ctx, id: &str) -> ApiResult<()> {
        resource::delete_with::<FloatingIp, _>(net, ctx, id, |db, f| {
            if db.pfs_by_fip.get(&f.id).is_some_and(|s| !s.is_empty()) {
                return Err(in_use_by_pf(&f.id));
            }
            let mut compares = Vec::new();
            let mut ops = Vec::new();
            // The association's guard key goes with it.
            if let (Some(p), Some(ip)) = (&f.port_id, &f.fixed_ip_address) {
                ops.push(Op::Delete(assoc_key(p, ip, &f.floating_network_id)));
            }
            if let Some(p) = db.ports.get(&f.floating_port_id) {
                compares.push(Compare::ModRevision(key::<Port>(&p.value.id), p.rev));
                ops.extend(ports::delete_ops(&p.value));
                ops.push(Op::Delete(key::<Port>(&p.value.id)));
            }
            Ok((compares, ops))
        })
        .await
    }
}

/// `ACTIVE` while associated (the agents realize it from the association), `DOWN`
/// otherwise, as Neutron's L3 agents report.
fn status_of(f: &FloatingIp) -> String {
    if f.port_id.is_some() {
        "ACTIVE".into()
    } else {
        "DOWN".into()
    }
}

async fn create_one(net: &Shared, ctx: &Ctx, item: Map<String, Value>) -> ApiResult<Value> {
    let mut input = Input::new(item);
    let project_id = owner_project(ctx, &mut input)?;
    let network_id = input.uuid("floating_network_id")?.ok_or_else(|| {
        ApiError(NeutronError::bad_request(
            "Failed to parse request. Required attribute 'floating_network_id' not specified",
        ))
    })?;
    let address = match input.take("floating_ip_address") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_ip(&v, "floating_ip_address")?),
    };
    let subnet_id = input.nullable_uuid("subnet_id")?.flatten();
    let port_id = input.nullable_uuid("port_id")?.flatten();
    let fixed_ip = match input.take("fixed_ip_address") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_ip(&v, "fixed_ip_address")?),
    };
    let router_id = input.nullable_uuid("router_id")?.flatten();
    let description = input.string("description", 255)?.unwrap_or_default();
    let tags = clean_tags(input.string_list("tags")?.unwrap_or_default())?;
    input.ignore(&["qos_policy_id", "dns_name", "dns_domain"]);
    input.finish()?;
    if fixed_ip.is_some() && port_id.is_none() {
        return Err(bad_fip(
            "fixed_ip_address cannot be specified without a port_id",
        ));
    }
    for _ in 0..16 {
        let id = new_id();
        let ts = now();
        let mut alloc = Alloc::new(net);
        let txn = {
            let db = net.db();
            let n: Entry<Network> = find_network(&db, ctx, &network_id)?;
            if !n.value.router_external {
                return Err(bad_fip(format!(
                    "Network {network_id} is not a valid external network"
                )));
            }
            let v4: Vec<String> = db
                .subnets_of(&network_id)
                .iter()
                .filter(|s| s.ip_version == 4)
                .map(|s| s.id.clone())
                .collect();
            if v4.is_empty() {
                return Err(bad_fip(format!(
                    "Network {network_id} does not contain any IPv4 subnet"
                )));
            }
            let used = db
                .floatingips
                .values()
                .filter(|f| f.value.project_id == project_id)
                .count();
            check_quota(
                &db,
                &project_id,
                "floatingip",
                db.quota(&project_id).floatingip,
                used,
                1,
            )?;
            let mut txn = Txn::new();
            // The address: as asked, else the first IPv4 subnet with one free.
            let tries: Vec<Vec<IpRequest>> = match (&subnet_id, address) {
                (None, None) => v4
                    .iter()
                    .map(|s| {
                        vec![IpRequest {
                            subnet_id: Some(s.clone()),
                            ip: None,
                        }]
                    })
                    .collect(),
                (s, ip) => vec![vec![IpRequest {
                    subnet_id: s.clone(),
                    ip,
                }]],
            };
            let mut port = None;
            let mut last_err = None;
            for t in tries {
                match ports::service_port(
                    &mut alloc,
                    &db,
                    ctx,
                    &n,
                    "",
                    OWNER_FLOATINGIP,
                    &id,
                    Some(t),
                    "N/A",
                    "",
                    &mut txn,
                ) {
                    Ok(p) => {
                        port = Some(p);
                        break;
                    }
                    Err(e) => last_err = Some(e),
                }
            }
            let Some(port) = port else {
                return Err(last_err
                    .unwrap_or_else(|| ApiError(NeutronError::internal("no address tried"))));
            };
            let Some(addr) = port.fixed_ips.first().map(|f| f.ip_address) else {
                return Err(ApiError(NeutronError::internal(
                    "floating IP port without an address",
                )));
            };
            let mut f = FloatingIp {
                id: id.clone(),
                project_id: project_id.clone(),
                floating_network_id: network_id.clone(),
                floating_ip_address: addr,
                floating_port_id: port.id.clone(),
                port_id: None,
                fixed_ip_address: None,
                router_id: None,
                status: "DOWN".into(),
                description: description.clone(),
                tags: tags.clone(),
                created_at: ts.clone(),
                updated_at: ts,
                revision_number: 0,
            };
            if let Some(p) = &port_id {
                let a = associate(&db, ctx, &f, p, fixed_ip, router_id.as_deref())?;
                let (mut c, mut o) = (Vec::new(), Vec::new());
                set_association(&mut f, Some(&a), &mut c, &mut o);
                txn.compares.extend(c);
                txn.ops.extend(o);
            }
            f.status = status_of(&f);
            txn.put(key::<FloatingIp>(&id), encode(&f)?)
        };
        let ok = net.commit(txn).await;
        drop(alloc);
        if ok? {
            return Ok(view_of::<FloatingIp>(net, &id));
        }
        // Another floating IP took the fixed IP first: say so.
        if let Some(p) = &port_id {
            let db = net.db();
            if let Some(other) = db
                .fips_by_port
                .get(p)
                .into_iter()
                .flatten()
                .filter_map(|f| db.floatingips.get(f))
                .find(|f| {
                    f.value.floating_network_id == network_id
                        && (fixed_ip.is_none() || f.value.fixed_ip_address == fixed_ip)
                })
            {
                let ip = other.value.fixed_ip_address;
                return Err(ApiError(NeutronError::conflict(
                    "FloatingIPPortAlreadyAssociated",
                    format!(
                        "Cannot associate floating IP with port {p} using fixed IP {}, as that fixed IP already has a floating IP on external network {network_id}.",
                        ip.map(|i| i.to_string()).unwrap_or_default()
                    ),
                )));
            }
        }
    }
    Err(ApiError(NeutronError::conflict(
        "Conflict",
        "Could not create the floating IP; try again",
    )))
}

/// What deleting port `p` (or re-addressing it to `kept`) does to the floating IPs
/// and port forwardings that use it: associations go (or, on re-addressing, are
/// refused), port forwardings to vanished addresses are deleted.
pub fn release_port(
    db: &Db,
    ctx: &Ctx,
    p: &Port,
    kept: Option<&[IpAddr]>,
) -> ApiResult<(Vec<Compare>, Vec<Op>)> {
    let mut compares = Vec::new();
    let mut ops = Vec::new();
    for e in db
        .fips_by_port
        .get(&p.id)
        .into_iter()
        .flatten()
        .filter_map(|f| db.floatingips.get(f))
    {
        let f = &e.value;
        match kept {
            Some(ips) => {
                if f.fixed_ip_address.is_some_and(|ip| !ips.contains(&ip)) {
                    return Err(ApiError(NeutronError::new(
                        400,
                        "BadRequest",
                        format!(
                            "Bad port request: Cannot update the fixed_ips of the port {}, because its original fixed_ip has been associated to a floating ip.",
                            p.id
                        ),
                    )));
                }
            }
            None => {
                if f.project_id != ctx.project() && !ctx.is_admin() {
                    return Err(ApiError(NeutronError::conflict(
                        "FipAssociated",
                        format!(
                            "Unable to complete the operation on port {} because the port still has an associated floating IP.",
                            p.id
                        ),
                    )));
                }
                let mut g = (**f).clone();
                set_association(&mut g, None, &mut Vec::new(), &mut ops);
                g.status = status_of(&g);
                g.revision_number += 1;
                g.updated_at = now();
                compares.push(Compare::ModRevision(key::<FloatingIp>(&g.id), e.rev));
                ops.push(Op::Put(key::<FloatingIp>(&g.id), encode(&g)?));
            }
        }
    }
    // Port forwardings whose internal address goes.
    let gone: Vec<&Entry<PortForwarding>> = db
        .pfs_by_port
        .get(&p.id)
        .into_iter()
        .flatten()
        .filter_map(|id| db.port_forwardings.get(id))
        .filter(|pf| kept.is_none_or(|ips| !ips.contains(&pf.value.internal_ip_address)))
        .collect();
    let mut fips: Vec<&str> = Vec::new();
    for pf in &gone {
        ops.push(Op::Delete(super::port_forwardings::pf_key(&pf.value.id)));
        if !fips.contains(&pf.value.floatingip_id.as_str()) {
            fips.push(&pf.value.floatingip_id);
        }
    }
    for fid in fips {
        let Some(e) = db.floatingips.get(fid) else {
            continue;
        };
        let left = db
            .pfs_by_fip
            .get(fid)
            .into_iter()
            .flatten()
            .filter(|id| !gone.iter().any(|g| g.value.id == **id))
            .count();
        if left == 0 && e.value.port_id.is_none() && e.value.router_id.is_some() {
            let mut g = (*e.value).clone();
            g.router_id = None;
            g.revision_number += 1;
            g.updated_at = now();
            compares.push(Compare::ModRevision(key::<FloatingIp>(fid), e.rev));
            ops.push(Op::Put(key::<FloatingIp>(fid), encode(&g)?));
        }
    }
    Ok((compares, ops))
}

/// `GET /floatingip_pools`: every IPv4 subnet of every external network, shown as
/// the caller's (Neutron's view).
pub fn routes() -> Routes<Shared> {
    // Neutron's path has a dash; the collection key an underscore.
    Routes::new()
        .route("/floatingip-pools", get(pools))
        .route("/floatingip_pools", get(pools))
}

async fn pools(State(net): State<Shared>, ctx: Ctx) -> ApiResult<Json<Value>> {
    let db = net.db();
    let list: Vec<Value> = db
        .networks
        .values()
        .filter(|n| n.value.router_external)
        .flat_map(|n| db.subnets_of(&n.value.id))
        .filter(|s| s.ip_version == 4)
        .map(|s| {
            json!({"subnet_id": s.id, "subnet_name": s.name, "network_id": s.network_id,
                "cidr": s.cidr, "project_id": ctx.project(), "tenant_id": ctx.project()})
        })
        .collect();
    Ok(Json(json!({"floatingip_pools": list})))
}
