//! Networks: provider attributes, VNI allocation, MTU, sharing.

use kuryr_model::input::Input;
use kuryr_model::{FloatingIp, Network, NeutronError, Port};
use kuryr_store::{Compare, Op, Txn};
use serde_json::{Map, Value};

use super::db::{Db, Table, keys};
use super::ports::{OWNER_FLOATINGIP, OWNER_ROUTER_GATEWAY};
use super::resource::{self, Resource, check_quota, clean_tags, encode, standard_fields, view_of};
use super::{ApiError, ApiResult, Ctx, Shared, new_id, now};

const NETWORK_TYPES: &[&str] = &["vxlan", "flat", "local"];
const VXLAN_OVERHEAD: u32 = 50;

fn flat_key(physnet: &str) -> String {
    format!("/neutron/flat/{physnet}")
}

/// The project a new resource belongs to: the caller's unless given (only admins may
/// give another: the resource layer checks that before any create).
pub fn owner_project(ctx: &Ctx, input: &mut Input) -> ApiResult<String> {
    let p = input.string("project_id", 255)?;
    let t = input.string("tenant_id", 255)?;
    if let (Some(p), Some(t)) = (&p, &t)
        && p != t
    {
        return Err(ApiError(NeutronError::bad_request(
            "'project_id' and 'tenant_id' do not match",
        )));
    }
    Ok(p.or(t).unwrap_or_else(|| ctx.project().to_string()))
}

impl Resource for Network {
    const SINGULAR: &'static str = "network";
    const PLURAL: &'static str = "networks";
    const PATH: &'static str = "networks";
    const DISPLAY: &'static str = "Network";

    const NOT_FOUND: &'static str = "NetworkNotFound";

    standard_fields!(networks);

    fn create_defaults() -> Vec<(&'static str, Value)> {
        vec![
            ("shared", Value::Bool(false)),
            ("router:external", Value::Bool(false)),
            ("is_default", Value::Bool(false)),
        ]
    }
    fn extras(&self, db: &Db) -> Vec<(&'static str, Value)> {
        let subnets = db
            .subnets_by_network
            .get(&self.id)
            .map(|s| s.iter().cloned().map(Value::String).collect())
            .unwrap_or_default();
        vec![
            ("tenant_id", Value::String(self.project_id.clone())),
            ("subnets", Value::Array(subnets)),
            ("availability_zone_hints", Value::Array(vec![])),
            ("availability_zones", Value::Array(vec![])),
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
        input.reject(
            &[
                "provider:network_type",
                "provider:physical_network",
                "provider:segmentation_id",
            ],
            "update",
        )?;
        input.reject(&["tags", "status", "subnets"], "update")?;
        let name = input.string("name", 255)?;
        let description = input.string("description", 255)?;
        let admin_state_up = input.boolean("admin_state_up")?;
        let shared = input.boolean("shared")?;
        let external = input.boolean("router:external")?;
        let mtu = input.int("mtu", 0, 65535)?;
        let port_security = input.boolean("port_security_enabled")?;
        input.ignore(&["availability_zone_hints", "is_default"]);
        input.finish()?;
        let max_mtu = net.config.underlay_mtu;
        resource::update_with::<Network, _>(net, ctx, id, if_match, |db, n| {
            if let Some(v) = &name {
                n.name = v.clone();
            }
            if let Some(v) = &description {
                n.description = v.clone();
            }
            if let Some(v) = admin_state_up {
                n.admin_state_up = v;
            }
            if let Some(false) = shared {
                // Un-sharing is refused while other projects have ports on it.
                let foreign = db
                    .ports_by_network
                    .get(&n.id)
                    .into_iter()
                    .flatten()
                    .filter_map(|p| db.ports.get(p))
                    .any(|p| p.value.project_id != n.project_id);
                if foreign {
                    return Err(ApiError(NeutronError::conflict(
                        "InvalidSharedSetting",
                        format!("Unable to reconfigure sharing settings for network {}. Multiple tenants are using it.", n.id),
                    )));
                }
            }
            if let Some(v) = shared {
                n.shared = v;
            }
            if external == Some(false) && n.router_external {
                let gateways = db
                    .ports_by_network
                    .get(&n.id)
                    .into_iter()
                    .flatten()
                    .filter_map(|p| db.ports.get(p))
                    .any(|p| p.value.device_owner == OWNER_ROUTER_GATEWAY);
                if gateways {
                    return Err(ApiError(NeutronError::conflict(
                        "ExternalNetworkInUse",
                        format!("External network {} cannot be updated to be made non-external, since it has existing gateway ports.", n.id),
                    )));
                }
            }
            if let Some(v) = external {
                n.router_external = v;
            }
            if let Some(v) = mtu {
                // Neutron takes any MTU; its subnets' IP versions set the floor.
                let floor = db
                    .subnets_by_network
                    .get(&n.id)
                    .into_iter()
                    .flatten()
                    .filter_map(|s| db.subnets.get(s))
                    .map(|s| super::subnets::min_mtu(s.value.ip_version))
                    .max()
                    .unwrap_or(0);
                if (v as u32) < floor {
                    return Err(super::subnets::mtu_conflict(&n.id, floor));
                }
                let limit = max_for(&n.network_type, max_mtu);
                if v as u32 > limit {
                    return Err(ApiError(NeutronError::invalid_input(format!("Requested MTU is too big, maximum is {limit}"))));
                }
                n.mtu = v as u32;
            }
            if let Some(v) = port_security {
                n.port_security_enabled = v;
            }
            Ok((vec![], vec![]))
        })
        .await
    }

    async fn delete(net: &Shared, ctx: &Ctx, id: &str) -> ApiResult<()> {
        // Floating IPs nobody uses go first, as in Neutron (even when the network
        // then turns out to be in use).
        let idle: Vec<(Port, FloatingIp, u64)> = {
            let db = net.db();
            resource::find::<Network>(&db, ctx, id)?;
            db.ports_by_network
                .get(id)
                .into_iter()
                .flatten()
                .filter_map(|p| db.ports.get(p))
                .filter(|p| p.value.device_owner == OWNER_FLOATINGIP)
                .filter_map(|p| {
                    let f = db.floatingips.get(&p.value.device_id)?;
                    (f.value.port_id.is_none() && f.value.router_id.is_none())
                        .then(|| ((*p.value).clone(), (*f.value).clone(), f.rev))
                })
                .collect()
        };
        if !idle.is_empty() {
            let mut txn = Txn::new();
            for (p, f, rev) in &idle {
                txn = txn.when(Compare::ModRevision(
                    keys::resource("floatingips", &f.id),
                    *rev,
                ));
                txn.ops
                    .push(Op::Delete(keys::resource("floatingips", &f.id)));
                txn.ops.extend(super::ports::delete_ops(p));
                txn.ops.push(Op::Delete(keys::resource("ports", &p.id)));
            }
            // A floating IP that changed meanwhile is in use now: leave it.
            net.commit(txn).await?;
        }
        resource::delete_with::<Network, _>(net, ctx, id, |db, n| {
            if let Some(ports) = db.ports_by_network.get(&n.id).filter(|p| !p.is_empty()) {
                let ids: Vec<&str> = ports.iter().map(String::as_str).collect();
                return Err(ApiError(NeutronError::conflict(
                    "NetworkInUse",
                    format!(
                        "Unable to complete operation on network {}. There are one or more ports still in use on the network, id for these ports is: {}.",
                        n.id,
                        ids.join(",")
                    ),
                )));
            }
            // No port may appear while we delete: every port holds a MAC guard key.
            let mut compares = vec![Compare::PrefixEmpty(keys::mac_prefix(&n.id))];
            let mut ops = Vec::new();
            for s in db.subnets_by_network.get(&n.id).into_iter().flatten() {
                if let Some(e) = db.subnets.get(s) {
                    compares.push(Compare::ModRevision(keys::resource("subnets", s), e.rev));
                    ops.push(Op::Delete(keys::resource("subnets", s)));
                }
            }
            if let Some(vni) = n.segmentation_id.filter(|_| n.network_type == "vxlan") {
                ops.push(Op::Delete(keys::vni(vni)));
            }
            if let (Some(p), "flat") = (&n.physical_network, n.network_type.as_str()) {
                ops.push(Op::Delete(flat_key(p)));
            }
            Ok((compares, ops))
        })
        .await
    }
}

fn max_for(network_type: &str, underlay: u32) -> u32 {
    if network_type == "vxlan" {
        underlay - VXLAN_OVERHEAD
    } else {
        underlay
    }
}

async fn create_one(net: &Shared, ctx: &Ctx, item: Map<String, Value>) -> ApiResult<Value> {
    let mut input = Input::new(item);
    let project_id = owner_project(ctx, &mut input)?;
    let name = input.string("name", 255)?.unwrap_or_default();
    let description = input.string("description", 255)?.unwrap_or_default();
    let admin_state_up = input.boolean("admin_state_up")?.unwrap_or(true);
    let shared = input.boolean("shared")?.unwrap_or(false);
    let external = input.boolean("router:external")?.unwrap_or(false);
    let mtu = input.int("mtu", 0, 65535)?;
    let port_security_enabled = input.boolean("port_security_enabled")?.unwrap_or(true);
    let tags = clean_tags(input.string_list("tags")?.unwrap_or_default())?;
    let network_type = input.string("provider:network_type", 255)?;
    let physical_network = input
        .nullable_string("provider:physical_network", 64)?
        .flatten();
    let segmentation_id = input
        .nullable_int("provider:segmentation_id", 0, i64::from(u32::MAX))?
        .flatten();
    let is_default = input.boolean("is_default")?.unwrap_or(false);
    // Accepted for compatibility; kuryr has one availability zone.
    input.ignore(&["availability_zone_hints"]);
    input.finish()?;

    let network_type = network_type.unwrap_or_else(|| "vxlan".into());
    if !NETWORK_TYPES.contains(&network_type.as_str()) {
        return Err(ApiError(NeutronError::invalid_input(format!(
            "network_type value '{network_type}' not supported"
        ))));
    }
    match network_type.as_str() {
        "flat" if physical_network.is_none() => {
            return Err(ApiError(NeutronError::invalid_input(
                "physical_network required for flat provider network",
            )));
        }
        "flat" | "local" if segmentation_id.is_some() => {
            return Err(ApiError(NeutronError::invalid_input(format!(
                "segmentation_id specified for {network_type} network"
            ))));
        }
        "vxlan" | "local" if physical_network.is_some() => {
            return Err(ApiError(NeutronError::invalid_input(format!(
                "provider:physical_network specified for {network_type} network"
            ))));
        }
        _ => {}
    }
    let limit = max_for(&network_type, net.config.underlay_mtu);
    let mtu = match mtu {
        Some(m) if m as u32 > limit => {
            return Err(ApiError(NeutronError::invalid_input(format!(
                "Requested MTU is too big, maximum is {limit}"
            ))));
        }
        Some(m) => m as u32,
        None => limit,
    };
    let (lo, hi) = net.config.vni_range;
    if let Some(s) = segmentation_id
        && network_type == "vxlan"
        && !(1..=16_777_215).contains(&s)
    {
        return Err(ApiError(NeutronError::invalid_input(format!(
            "{s} is not a valid VXLAN VNI, valid range is 1-16777215"
        ))));
    }

    for _ in 0..16 {
        let ts = now();
        let id = new_id();
        let (txn, reserved) = {
            let db = net.db();
            let used = db
                .networks
                .values()
                .filter(|n| n.value.project_id == project_id)
                .count();
            check_quota(
                &db,
                &project_id,
                "network",
                db.quota(&project_id).network,
                used,
                1,
            )?;
            let mut txn = Txn::new();
            let mut reserved = net.reservation();
            let vni = match (network_type.as_str(), segmentation_id) {
                ("vxlan", Some(s)) => {
                    let s = s as u32;
                    if db.segmentation_ids.contains(&s) || net.is_reserved(&keys::vni(s)) {
                        return Err(ApiError(NeutronError::conflict(
                            "TunnelIdInUse",
                            format!("Unable to create the network. The tunnel ID {s} is in use."),
                        )));
                    }
                    Some(s)
                }
                ("vxlan", None) => {
                    let free = (lo..=hi).find(|v| {
                        !db.segmentation_ids.contains(v) && !net.is_reserved(&keys::vni(*v))
                    });
                    match free {
                        Some(v) => Some(v),
                        None => {
                            return Err(ApiError(NeutronError::conflict(
                                "NoNetworkAvailable",
                                "Unable to create the network. No tenant network is available for allocation.",
                            )));
                        }
                    }
                }
                _ => None,
            };
            if let Some(v) = vni {
                let k = keys::vni(v);
                if !reserved.take(k.clone()) {
                    continue;
                }
                txn = txn.when(Compare::Absent(k.clone())).put(k, id.clone());
            }
            if let (Some(p), "flat") = (&physical_network, network_type.as_str()) {
                let k = flat_key(p);
                txn = txn.when(Compare::Absent(k.clone())).put(k, id.clone());
            }
            let n = Network {
                id: id.clone(),
                name: name.clone(),
                project_id: project_id.clone(),
                admin_state_up,
                shared,
                mtu,
                router_external: external,
                network_type: network_type.clone(),
                physical_network: physical_network.clone(),
                segmentation_id: vni,
                port_security_enabled,
                is_default,
                status: "ACTIVE".into(),
                description: description.clone(),
                tags: tags.clone(),
                created_at: ts.clone(),
                updated_at: ts,
                revision_number: 1,
            };
            (
                txn.put(keys::resource("networks", &id), encode(&n)?),
                reserved,
            )
        };
        let flat_guard = txn
            .compares
            .iter()
            .any(|c| matches!(c, Compare::Absent(k) if k.starts_with("/neutron/flat/")));
        let ok = net.commit(txn).await;
        drop(reserved);
        if ok? {
            return Ok(view_of::<Network>(net, &id));
        }
        if flat_guard
            && let Some(p) = &physical_network
            && net.store_has(&flat_key(p)).await
        {
            return Err(ApiError(NeutronError::conflict(
                "FlatNetworkInUse",
                format!("Unable to create the flat network. Physical network {p} is in use."),
            )));
        }
        if segmentation_id.is_some() {
            return Err(ApiError(NeutronError::conflict(
                "TunnelIdInUse",
                format!(
                    "Unable to create the network. The tunnel ID {} is in use.",
                    segmentation_id.unwrap_or_default()
                ),
            )));
        }
    }
    Err(ApiError(NeutronError::conflict(
        "Conflict",
        "Could not allocate the network; try again",
    )))
}

/// Used by other resources: the network a child is created on, as the caller sees it.
pub fn find_network(db: &Db, ctx: &Ctx, id: &str) -> ApiResult<super::db::Entry<Network>> {
    resource::find::<Network>(db, ctx, id)
}
