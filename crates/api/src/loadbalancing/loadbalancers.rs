//! `/v2/lbaas/loadbalancers`: the VIP is a Neutron port of this server
//! (`device_owner` `Octavia`, `device_id` `lb-<id>`) in a security group
//! `lb-<id>` whose ingress rules are the listeners' ports from their allowed CIDRs,
//! as Octavia makes them. Deleting (with `cascade`) removes the whole tree, the
//! port and the group in one transaction.

use std::net::IpAddr;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use bytes::Bytes;
use kuryr_model::lbaas::{operating, provisioning};
use kuryr_model::{
    HealthMonitor, Listener, LoadBalancer, Member, Network, Pool, Port, SecurityGroup,
    SecurityGroupRule, Subnet,
};
use kuryr_store::{Op, Txn};
use serde_json::{Value, json};

use super::body::{self, Body};
use super::fault::Fault;
use super::list::{Object, can_write, find, find_writable, key};
use super::write::{self, commit, put_entry};
use super::{LbResult, PROVIDER};
use crate::networking::db::{Db, Entry};
use crate::networking::ports::{self, Alloc, IpRequest};
use crate::networking::resource::{self, encode};
use crate::networking::{Ctx, Shared, new_id, now};

pub const VIP_OWNER: &str = "Octavia";

/// The network, subnet and address the VIP goes on, from what the request names.
struct VipPlan {
    network: Entry<Network>,
    subnet: Subnet,
    address: Option<IpAddr>,
    /// An existing port the caller gave.
    port: Option<Entry<Port>>,
}

fn plan_vip(db: &Db, ctx: &Ctx, b: &Body) -> LbResult<VipPlan> {
    let port_id = b.opt_uuid("vip_port_id")?;
    let net_id = b.opt_uuid("vip_network_id")?;
    let subnet_id = b.opt_uuid("vip_subnet_id")?;
    let address = b.opt_ip("vip_address")?;
    let invalid_net = |id: &str| Fault::validation(format!("Invalid network id provided: {id}"));
    if let Some(pid) = port_id {
        let port = resource::find::<Port>(db, ctx, &pid)
            .map_err(|_| Fault::validation(format!("Invalid port id provided: {pid}")))?;
        if !port.value.device_owner.is_empty() {
            return Err(Fault::new(
                409,
                format!(
                    "Port {pid} is already in use by {}.",
                    port.value.device_owner
                ),
            ));
        }
        let fixed =
            port.value.fixed_ips.first().ok_or_else(|| {
                Fault::validation(format!("Port {pid} has no fixed IP for the VIP"))
            })?;
        let subnet = db
            .subnets
            .get(&fixed.subnet_id)
            .map(|s| (*s.value).clone())
            .ok_or_else(|| Fault::validation("The VIP port's subnet no longer exists"))?;
        let network = resource::find::<Network>(db, ctx, &port.value.network_id)
            .map_err(|_| invalid_net(&port.value.network_id))?;
        return Ok(VipPlan {
            network,
            subnet,
            address: Some(fixed.ip_address),
            port: Some(port),
        });
    }
    let subnet = match (&subnet_id, &net_id) {
        (Some(sid), _) => {
            let s = resource::find::<Subnet>(db, ctx, sid)
                .map_err(|_| Fault::validation(format!("Invalid subnet id provided: {sid}")))?;
            if let Some(n) = &net_id
                && *n != s.value.network_id
            {
                return Err(Fault::validation(format!(
                    "Subnet {sid} is not on network {n}"
                )));
            }
            (*s.value).clone()
        }
        (None, Some(nid)) => {
            resource::find::<Network>(db, ctx, nid).map_err(|_| invalid_net(nid))?;
            let mut subnets = db.subnets_of(nid);
            // The address's family when one is given, else IPv4 first.
            subnets.sort_by_key(|s| s.ip_version);
            let pick = match address {
                Some(a) => subnets
                    .into_iter()
                    .find(|s| s.cidr.parse::<ipnet::IpNet>().is_ok_and(|c| c.contains(&a))),
                None => subnets.into_iter().next(),
            };
            let s = pick.ok_or_else(|| {
                Fault::validation(format!(
                    "Supplied network does not contain a subnet for the VIP: {nid}"
                ))
            })?;
            (*s).clone()
        }
        (None, None) => {
            return Err(Fault::validation(
                "VIP must contain one of: vip_port_id, vip_network_id, vip_subnet_id.",
            ));
        }
    };
    let network = resource::find::<Network>(db, ctx, &subnet.network_id)
        .map_err(|_| invalid_net(&subnet.network_id))?;
    Ok(VipPlan {
        network,
        subnet,
        address,
        port: None,
    })
}

pub async fn create(
    State(net): State<Shared>,
    ctx: Ctx,
    raw: Bytes,
) -> LbResult<(StatusCode, Json<Value>)> {
    let b = Body::parse(&raw, "loadbalancer")?;
    b.only(&[
        "name",
        "description",
        "project_id",
        "tenant_id",
        "vip_address",
        "vip_port_id",
        "vip_subnet_id",
        "vip_network_id",
        "vip_qos_policy_id",
        "vip_sg_ids",
        "vip_vnic_type",
        "additional_vips",
        "provider",
        "flavor_id",
        "availability_zone",
        "admin_state_up",
        "tags",
        "listeners",
        "pools",
    ])?;
    let project = body::project(&b, &ctx)?;
    match b.opt_str("provider")?.as_deref() {
        None | Some(PROVIDER) => {}
        Some(other) => {
            return Err(Fault::new(
                400,
                format!("Provider '{other}' is not enabled."),
            ));
        }
    }
    if let Some(f) = b.opt_str("flavor_id")? {
        return Err(Fault::validation(format!(
            "Invalid flavor_id: {f}. There are no flavors; kuryr's provider has one behaviour."
        )));
    }
    if let Some(az) = b.opt_str("availability_zone")? {
        return Err(Fault::validation(format!(
            "Invalid availability zone: {az}. kuryr's load balancers are on every host."
        )));
    }
    if b.opt_str("vip_qos_policy_id")?.is_some() {
        return Err(Fault::unsupported("VIP QoS policies"));
    }
    if b.non_empty("additional_vips") {
        return Err(Fault::unsupported("additional VIPs"));
    }
    if b.non_empty("listeners") || b.non_empty("pools") {
        return Err(Fault::unsupported(
            "creating a load balancer tree in one call; create its listeners and pools one by one",
        ));
    }
    let name = b.opt_str("name")?.unwrap_or_default();
    let description = b.opt_str("description")?.unwrap_or_default();
    let admin_state_up = b.opt_bool("admin_state_up")?.unwrap_or(true);
    let tags = b.tags()?;
    let id = new_id();
    let lb = commit(&net, |db| {
        let count = db
            .loadbalancers
            .values()
            .filter(|e| e.value.project_id == project)
            .count();
        body::check_quota(db.lb_quota(&project).load_balancer, count, "Load Balancer")?;
        let plan = plan_vip(db, &ctx, &b)?;
        let ts = now();
        let mut txn = Txn::new();
        let sg = SecurityGroup {
            id: new_id(),
            name: format!("lb-{id}"),
            project_id: project.clone(),
            stateful: true,
            description: format!("The VIP of load balancer {id}: its listeners' ports"),
            tags: Vec::new(),
            created_at: ts.clone(),
            updated_at: ts.clone(),
            revision_number: 1,
        };
        txn = txn.put(resource::key::<SecurityGroup>(&sg.id), encode(&sg)?);
        let mut alloc = Alloc::new(&net);
        let mut port = match &plan.port {
            Some(p) => {
                let mut v = (*p.value).clone();
                txn = txn.when(kuryr_store::Compare::ModRevision(
                    resource::key::<Port>(&v.id),
                    p.rev,
                ));
                for sg in &v.security_groups {
                    txn.ops.push(Op::Delete(ports::sg_port_key(sg, &v.id)));
                }
                v.revision_number += 1;
                v.updated_at = ts.clone();
                v
            }
            None => ports::service_port(
                &mut alloc,
                db,
                &ctx,
                &plan.network,
                &project,
                VIP_OWNER,
                &format!("lb-{id}"),
                Some(vec![IpRequest {
                    subnet_id: Some(plan.subnet.id.clone()),
                    ip: plan.address,
                }]),
                "DOWN",
                "",
                &mut txn,
            )
            .map_err(Fault::from)?,
        };
        port.device_owner = VIP_OWNER.into();
        port.device_id = format!("lb-{id}");
        if port.name.is_empty() {
            port.name = format!("octavia-lb-{id}");
        }
        port.security_groups = vec![sg.id.clone()];
        port.port_security_enabled = true;
        txn.ops
            .push(Op::Put(ports::sg_port_key(&sg.id, &port.id), Vec::new()));
        let pkey = resource::key::<Port>(&port.id);
        txn.ops
            .retain(|op| !matches!(op, Op::Put(k, _) if *k == pkey));
        txn.ops.push(Op::Put(pkey, encode(&port)?));
        let vip = port
            .fixed_ips
            .iter()
            .find(|f| f.subnet_id == plan.subnet.id)
            .map(|f| f.ip_address)
            .ok_or_else(|| Fault::validation("The VIP port has no address on the VIP subnet"))?;
        let lb = LoadBalancer {
            id: id.clone(),
            name: name.clone(),
            description: description.clone(),
            project_id: project.clone(),
            vip_address: vip,
            vip_port_id: port.id.clone(),
            vip_subnet_id: plan.subnet.id.clone(),
            vip_network_id: plan.network.value.id.clone(),
            vip_mac: port.mac_address.clone(),
            provider: PROVIDER.into(),
            flavor_id: None,
            availability_zone: None,
            admin_state_up,
            provisioning_status: provisioning::PENDING_CREATE.into(),
            operating_status: operating::OFFLINE.into(),
            tags: tags.clone(),
            created_at: super::now(),
            updated_at: None,
            revision_number: 1,
        };
        txn = write::put_new(txn, &lb)?;
        Ok((txn, lb))
    })
    .await?;
    let db = net.db();
    let mut v = lb.view(&db);
    // As Octavia answers a create: pending, not yet operating.
    v.insert(
        "provisioning_status".into(),
        json!(provisioning::PENDING_CREATE),
    );
    v.insert("operating_status".into(), json!(operating::OFFLINE));
    Ok((StatusCode::CREATED, Json(json!({"loadbalancer": v}))))
}

pub async fn update(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(id): Path<String>,
    raw: Bytes,
) -> LbResult<Json<Value>> {
    let b = Body::parse(&raw, "loadbalancer")?;
    b.only(&[
        "name",
        "description",
        "admin_state_up",
        "tags",
        "vip_qos_policy_id",
        "vip_sg_ids",
    ])?;
    if b.opt_str("vip_qos_policy_id")?.is_some() {
        return Err(Fault::unsupported("VIP QoS policies"));
    }
    let lb = commit(&net, |db| {
        let e = find_writable::<LoadBalancer>(db, &ctx, &id)?;
        invalid_state(&e.value)?;
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
        if b.has("tags") {
            v.tags = b.tags()?;
        }
        v.provisioning_status = provisioning::PENDING_UPDATE.into();
        v.touch(&super::now());
        Ok((put_entry(Txn::new(), &e, &v)?, v))
    })
    .await?;
    let db = net.db();
    Ok(Json(json!({"loadbalancer": lb.view(&db)})))
}

/// Octavia's failover rebuilds amphorae; kuryr's load balancer lives in every
/// host's kernel, so failover re-provisions it: every agent rewrites its maps for
/// it (the record changes), which is what an operator wants of it.
pub async fn failover(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> LbResult<StatusCode> {
    commit(&net, |db| {
        let e = find::<LoadBalancer>(db, &ctx, &id)?;
        if !ctx.is_admin() {
            return Err(Fault::forbidden());
        }
        write::check_mutable(db, &*e.value)?;
        let mut v = (*e.value).clone();
        v.provisioning_status = provisioning::PENDING_UPDATE.into();
        v.touch(&super::now());
        Ok((put_entry(Txn::new(), &e, &v)?, ()))
    })
    .await?;
    Ok(StatusCode::ACCEPTED)
}

pub async fn delete(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> LbResult<StatusCode> {
    let cascade = form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .any(|(k, v)| k == "cascade" && v.eq_ignore_ascii_case("true"));
    commit(&net, |db| {
        let e = find_writable::<LoadBalancer>(db, &ctx, &id)?;
        invalid_state(&e.value)?;
        let c = db.children_of(&id);
        let childless = c.listeners.is_empty() && c.pools.is_empty();
        if !cascade && !childless {
            return Err(Fault::new(
                400,
                format!("Validation failure: Cannot delete Load Balancer {id} - it has children"),
            ));
        }
        let mut txn = Txn::new();
        txn = txn.when(kuryr_store::Compare::ModRevision(
            key::<LoadBalancer>(&id),
            e.rev,
        ));
        txn.ops.push(Op::Delete(key::<LoadBalancer>(&id)));
        for l in &c.listeners {
            txn.ops.push(Op::Delete(key::<Listener>(l)));
        }
        for p in &c.pools {
            txn.ops.push(Op::Delete(key::<Pool>(p)));
        }
        for m in &c.members {
            txn.ops.push(Op::Delete(key::<Member>(m)));
        }
        for h in &c.healthmonitors {
            txn.ops.push(Op::Delete(key::<HealthMonitor>(h)));
        }
        txn = release_vip(db, &e.value, txn);
        Ok((txn, ()))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Octavia's answer to a change of the load balancer itself while it is pending.
fn invalid_state(lb: &LoadBalancer) -> LbResult<()> {
    if provisioning::is_pending(&lb.provisioning_status) {
        return Err(Fault::new(
            409,
            format!(
                "Invalid state {} of loadbalancer resource {}",
                lb.provisioning_status, lb.id
            ),
        ));
    }
    Ok(())
}

/// Deletes the VIP port (a port the user gave is handed back instead) and the VIP
/// group with its rules.
fn release_vip(db: &Db, lb: &LoadBalancer, mut txn: Txn) -> Txn {
    let Some(p) = db.ports.get(&lb.vip_port_id) else {
        return txn;
    };
    let given = p.value.name != format!("octavia-lb-{}", lb.id);
    for sg in &p.value.security_groups {
        if db
            .security_groups
            .get(sg)
            .is_some_and(|g| g.value.name == format!("lb-{}", lb.id))
        {
            txn.ops.push(Op::Delete(resource::key::<SecurityGroup>(sg)));
            for r in db.rules_by_group.get(sg).into_iter().flatten() {
                txn.ops
                    .push(Op::Delete(resource::key::<SecurityGroupRule>(r)));
            }
        }
    }
    if given {
        let mut v = (*p.value).clone();
        for sg in &v.security_groups {
            txn.ops.push(Op::Delete(ports::sg_port_key(sg, &v.id)));
        }
        v.security_groups.clear();
        v.device_owner.clear();
        v.device_id.clear();
        v.revision_number += 1;
        v.updated_at = now();
        if let Ok(bytes) = encode(&v) {
            txn.ops.push(Op::Put(resource::key::<Port>(&v.id), bytes));
        }
    } else {
        txn.ops.push(Op::Delete(resource::key::<Port>(&p.value.id)));
        txn.ops.extend(ports::delete_ops(&p.value));
    }
    txn
}

/// The VIP group's rules for `listeners` (the load balancer's listeners as the
/// change leaves them): ingress to each listener's protocol and port from each of
/// its allowed CIDRs (everyone when it has none), put and deleted in `txn` so that
/// the group holds exactly those.
pub fn sync_vip_group(
    db: &Db,
    lb: &LoadBalancer,
    listeners: &[&Listener],
    mut txn: Txn,
) -> LbResult<Txn> {
    let Some(port) = db.ports.get(&lb.vip_port_id) else {
        return Ok(txn);
    };
    let Some(sg) = port
        .value
        .security_groups
        .iter()
        .find(|sg| {
            db.security_groups
                .get(*sg)
                .is_some_and(|g| g.value.name == format!("lb-{}", lb.id))
        })
        .cloned()
    else {
        return Ok(txn);
    };
    let ethertype = if lb.vip_address.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    };
    let any = if lb.vip_address.is_ipv4() {
        "0.0.0.0/0"
    } else {
        "::/0"
    };
    let mut want: Vec<(String, u32, String)> = Vec::new();
    for l in listeners {
        let proto = l.protocol.to_ascii_lowercase();
        let cidrs = l
            .allowed_cidrs
            .clone()
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| vec![any.to_string()]);
        for c in cidrs {
            want.push((proto.clone(), u32::from(l.protocol_port), c));
        }
    }
    want.sort();
    want.dedup();
    let mut have = Vec::new();
    for rid in db.rules_by_group.get(&sg).into_iter().flatten() {
        let Some(r) = db.security_group_rules.get(rid) else {
            continue;
        };
        let r = &r.value;
        let ident = (
            r.protocol.clone().unwrap_or_default(),
            r.port_range_min.unwrap_or(0),
            r.remote_ip_prefix.clone().unwrap_or_default(),
        );
        if r.direction == "ingress" && want.contains(&ident) {
            have.push(ident);
        } else {
            txn.ops
                .push(Op::Delete(resource::key::<SecurityGroupRule>(rid)));
        }
    }
    let ts = now();
    for (proto, port, cidr) in want {
        if have.contains(&(proto.clone(), port, cidr.clone())) {
            continue;
        }
        let r = SecurityGroupRule {
            id: new_id(),
            project_id: lb.project_id.clone(),
            security_group_id: sg.clone(),
            direction: "ingress".into(),
            ethertype: ethertype.into(),
            protocol: Some(proto),
            port_range_min: Some(port),
            port_range_max: Some(port),
            remote_ip_prefix: Some(cidr),
            remote_group_id: None,
            description: String::new(),
            created_at: ts.clone(),
            updated_at: ts.clone(),
            revision_number: 0,
        };
        txn = txn.put(resource::key::<SecurityGroupRule>(&r.id), encode(&r)?);
    }
    Ok(txn)
}

/// The body's view of `lb` after a create or change, for handlers of children.
pub fn can_change(db: &Db, ctx: &Ctx, lb: &str) -> LbResult<Entry<LoadBalancer>> {
    let e = find::<LoadBalancer>(db, ctx, lb)?;
    if !can_write(ctx, &e.value.project_id) {
        return Err(Fault::forbidden());
    }
    Ok(e)
}
