//! Subnets: CIDR checks, gateway and allocation pools, subnet pool allocation.

use std::net::IpAddr;

use ipnet::IpNet;
use kuryr_model::input::{Input, parse_cidr, parse_ip, show};
use kuryr_model::ipam::{self, IpRange};
use kuryr_model::{HostRoute, Network, NeutronError, Subnet, SubnetPool};
use kuryr_store::{Compare, Txn};
use serde_json::{Map, Value};

use super::db::{Db, Table, keys};
use super::networks::{find_network, owner_project};
use super::resource::{
    self, Resource, check_quota, clean_tags, encode, key, standard_fields, view_of,
};
use super::{ApiError, ApiResult, Ctx, Shared, new_id, now};

/// The smallest MTU an IP version works with (RFC 791, RFC 8200).
pub fn min_mtu(ip_version: u8) -> u32 {
    if ip_version == 6 { 1280 } else { 68 }
}

pub fn mtu_conflict(network: &str, min: u32) -> ApiError {
    ApiError(NeutronError::conflict(
        "NetworkMTUSubnetConflict",
        format!("MTU of {network} is not valid, subnet requires a minimum of {min}"),
    ))
}

/// A subnet's change is a change of its network too (neutron bumps the network's
/// revision on subnet create, update and delete).
fn bump_network(db: &Db, id: &str) -> ApiResult<(Vec<Compare>, Vec<kuryr_store::Op>)> {
    let Some(n) = db.networks.get(id) else {
        return Ok((vec![], vec![]));
    };
    let mut network = (*n.value).clone();
    network.touch(&now());
    Ok((
        vec![Compare::ModRevision(key::<Network>(id), n.rev)],
        vec![kuryr_store::Op::Put(key::<Network>(id), encode(&network)?)],
    ))
}

/// What policy checks of a child of network `id` ask about it.
pub fn network_facts(db: &Db, id: &str) -> Vec<(&'static str, Value)> {
    match db.networks.get(id) {
        Some(n) => vec![
            (
                "network:project_id",
                Value::String(n.value.project_id.clone()),
            ),
            (
                "network:tenant_id",
                Value::String(n.value.project_id.clone()),
            ),
            ("network:shared", Value::Bool(n.value.shared)),
        ],
        None => Vec::new(),
    }
}

const V6_MODES: &[&str] = &["slaac", "dhcpv6-stateful", "dhcpv6-stateless"];

impl Resource for Subnet {
    const SINGULAR: &'static str = "subnet";
    const PLURAL: &'static str = "subnets";
    const PATH: &'static str = "subnets";
    const DISPLAY: &'static str = "Subnet";

    const NOT_FOUND: &'static str = "SubnetNotFound";

    standard_fields!(subnets);

    fn related(&self, db: &Db) -> Vec<(&'static str, Value)> {
        network_facts(db, &self.network_id)
    }
    fn create_target(
        db: &Db,
        ctx: &Ctx,
        item: &Map<String, Value>,
    ) -> ApiResult<Map<String, Value>> {
        let mut t = resource::item_target(ctx, item);
        // The network's owner decides (neutron answers 403, not 404, here).
        if let Some(Value::String(n)) = item.get("network_id") {
            for (k, v) in network_facts(db, n) {
                t.insert(k.to_string(), v);
            }
        }
        Ok(t)
    }
    fn extras(&self, db: &Db) -> Vec<(&'static str, Value)> {
        let external = db
            .networks
            .get(&self.network_id)
            .is_some_and(|n| n.value.router_external);
        vec![
            ("tenant_id", Value::String(self.project_id.clone())),
            ("router:external", Value::Bool(external)),
            ("service_types", Value::Array(vec![])),
            ("segment_id", Value::Null),
        ]
    }
    fn candidates(db: &Db, q: &super::query::ListQuery) -> Option<(Vec<String>, &'static str)> {
        let nets = q.filter("network_id")?;
        Some((
            nets.iter()
                .flat_map(|n| db.subnets_by_network.get(n).into_iter().flatten().cloned())
                .collect(),
            "network_id",
        ))
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
                "cidr",
                "network_id",
                "ip_version",
                "subnetpool_id",
                "prefixlen",
                "tags",
            ],
            "update",
        )?;
        input.reject(&["ipv6_address_mode", "ipv6_ra_mode"], "update")?;
        let name = input.string("name", 255)?;
        let description = input.string("description", 255)?;
        let enable_dhcp = input.boolean("enable_dhcp")?;
        let gateway = take_gateway(&mut input)?;
        let pools = input.object_list("allocation_pools")?;
        let dns = input.string_list("dns_nameservers")?;
        let routes = input.object_list("host_routes")?;
        input.ignore(&["service_types", "segment_id"]);
        input.finish()?;
        resource::update_with::<Subnet, _>(net, ctx, id, if_match, |db, s| {
            let cidr = parse_cidr(&s.cidr)
                .ok_or_else(|| ApiError(NeutronError::internal("stored CIDR is invalid")))?;
            if let Some(v) = &name {
                s.name = v.clone();
            }
            if let Some(v) = &description {
                s.description = v.clone();
            }
            if let Some(v) = enable_dhcp {
                s.enable_dhcp = v;
            }
            if let Some(g) = gateway {
                if let Some(ip) = g {
                    check_gateway(&cidr, ip)?;
                }
                if let Some(cur) = s.gateway_ip
                    && g != Some(cur)
                    && let Some(holder) = port_holding(db, &s.network_id, &s.id, cur)
                {
                    return Err(ApiError(NeutronError::conflict(
                        "GatewayIpInUse",
                        format!("Current gateway ip {cur} already in use by port {holder}. Unable to update."),
                    )));
                }
                s.gateway_ip = g;
            }
            if let Some(p) = &pools {
                s.allocation_pools = parse_pools(&cidr, p.clone())?;
            }
            if let Some(d) = &dns {
                s.dns_nameservers = parse_dns(d.clone(), cidr.addr().is_ipv4(), Some(&s.id))?;
            }
            if let Some(r) = &routes {
                s.host_routes = parse_routes(r.clone(), &cidr, Some(&s.id))?;
            }
            check_pools_vs_gateway(&s.allocation_pools, s.gateway_ip)?;
            bump_network(db, &s.network_id)
        })
        .await
    }

    async fn delete(net: &Shared, ctx: &Ctx, id: &str) -> ApiResult<()> {
        resource::delete_with::<Subnet, _>(net, ctx, id, |db, s| {
            if db.ips_by_subnet.get(&s.id).is_some_and(|ips| !ips.is_empty()) {
                return Err(ApiError(NeutronError::conflict(
                    "SubnetInUse",
                    format!(
                        "Unable to complete operation on subnet {}: One or more ports have an IP allocation from this subnet.",
                        s.id
                    ),
                )));
            }
            // Every allocated address holds a guard key: none may appear meanwhile.
            let (mut compares, ops) = bump_network(db, &s.network_id)?;
            compares.push(Compare::PrefixEmpty(keys::ip_prefix(&s.id)));
            Ok((compares, ops))
        })
        .await
    }
}

/// The port that holds address `ip` of subnet `subnet`, if any.
fn port_holding(db: &Db, network: &str, subnet: &str, ip: IpAddr) -> Option<String> {
    if !db.ip_in_use(subnet, &ip) {
        return None;
    }
    db.ports_by_network
        .get(network)
        .into_iter()
        .flatten()
        .filter_map(|p| db.ports.get(p))
        .find(|p| {
            p.value
                .fixed_ips
                .iter()
                .any(|f| f.subnet_id == subnet && f.ip_address == ip)
        })
        .map(|p| p.value.id.clone())
}

/// `gateway_ip`: absent, null (no gateway), or an address.
fn take_gateway(input: &mut Input) -> ApiResult<Option<Option<IpAddr>>> {
    match input.take("gateway_ip") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(v) => Ok(Some(Some(parse_ip(&v, "gateway_ip")?))),
    }
}

fn check_gateway(cidr: &IpNet, gw: IpAddr) -> ApiResult<()> {
    let ok = cidr.contains(&gw)
        && gw != cidr.network()
        && !(cidr.addr().is_ipv4() && cidr.prefix_len() < 31 && gw == cidr.broadcast());
    if ok {
        Ok(())
    } else {
        Err(ApiError(NeutronError::invalid_input(format!(
            "Gateway is not valid on subnet. {gw} is not in {cidr}"
        ))))
    }
}

fn range_text(r: &IpRange) -> String {
    format!("{}-{}", r.start, r.end)
}

fn parse_pools(cidr: &IpNet, items: Vec<Map<String, Value>>) -> ApiResult<Vec<IpRange>> {
    let mut pools: Vec<IpRange> = Vec::new();
    for mut m in items {
        let start = m.remove("start").ok_or_else(|| {
            ApiError(NeutronError::invalid_attr(
                "allocation_pools",
                "start is missing",
            ))
        })?;
        let end = m.remove("end").ok_or_else(|| {
            ApiError(NeutronError::invalid_attr(
                "allocation_pools",
                "end is missing",
            ))
        })?;
        if let Some(k) = m.keys().next() {
            return Err(ApiError(NeutronError::invalid_attr(
                "allocation_pools",
                format!("Unrecognized attribute '{k}'"),
            )));
        }
        let r = IpRange {
            start: parse_ip(&start, "allocation_pools")?,
            end: parse_ip(&end, "allocation_pools")?,
        };
        if !ipam::same_family(r.start, r.end) || ipam::to_u128(r.start) > ipam::to_u128(r.end) {
            return Err(ApiError(NeutronError::new(
                400,
                "InvalidAllocationPool",
                format!("The allocation pool {} is not valid.", range_text(&r)),
            )));
        }
        let usable = ipam::usable_range(cidr);
        if !usable.is_some_and(|u| u.contains(r.start) && u.contains(r.end)) {
            return Err(ApiError(NeutronError::new(
                400,
                "OutOfBoundsAllocationPool",
                format!(
                    "The allocation pool {} spans beyond the subnet cidr {cidr}.",
                    range_text(&r)
                ),
            )));
        }
        if let Some(o) = pools.iter().find(|p| p.overlaps(&r)) {
            return Err(ApiError(NeutronError::new(
                400,
                "OverlappingAllocationPools",
                format!(
                    "Found overlapping allocation pools: {} and {} for subnet {cidr}.",
                    range_text(o),
                    range_text(&r)
                ),
            )));
        }
        pools.push(r);
    }
    pools.sort_by_key(|p| ipam::to_u128(p.start));
    Ok(pools)
}

fn check_pools_vs_gateway(pools: &[IpRange], gw: Option<IpAddr>) -> ApiResult<()> {
    if let Some(gw) = gw
        && let Some(p) = pools.iter().find(|p| p.contains(gw))
    {
        return Err(ApiError(NeutronError::conflict(
            "GatewayConflictWithAllocationPools",
            format!(
                "Gateway ip {gw} conflicts with allocation pool {}",
                range_text(p)
            ),
        )));
    }
    Ok(())
}

/// Neutron's `max_dns_nameservers` and `max_subnet_host_routes`.
pub const MAX_DNS_NAMESERVERS: usize = 5;
pub const MAX_HOST_ROUTES: usize = 20;

/// Whose subnet a limit message names: "new subnet" or "subnet <id>".
fn exhausted(kind: &'static str, what: &str, limit: usize, subnet: Option<&str>) -> ApiError {
    let target = subnet.map_or_else(|| "new subnet".to_string(), |id| format!("subnet {id}"));
    ApiError(NeutronError::bad_request(format!(
        "Unable to complete operation for {target}. The number of {what} exceeds the limit {limit}."
    )))
    .with_kind(kind)
}

fn parse_dns(items: Vec<String>, v4: bool, subnet: Option<&str>) -> ApiResult<Vec<String>> {
    if items.len() > MAX_DNS_NAMESERVERS {
        return Err(exhausted(
            "DNSNameServersExhausted",
            "DNS nameservers",
            MAX_DNS_NAMESERVERS,
            subnet,
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for s in items {
        let ip: IpAddr = s.parse().map_err(|_| {
            ApiError(NeutronError::invalid_attr(
                "dns_nameservers",
                format!("'{s}' is not a valid nameserver"),
            ))
        })?;
        if ip.is_ipv4() != v4 {
            return Err(ApiError(NeutronError::invalid_input(format!(
                "dns_nameserver {ip} does not match the subnet's IP version"
            ))));
        }
        if out.contains(&ip.to_string()) {
            return Err(ApiError(NeutronError::invalid_attr(
                "dns_nameservers",
                format!("Duplicate nameserver '{s}'"),
            )));
        }
        out.push(ip.to_string());
    }
    Ok(out)
}

fn parse_routes(
    items: Vec<Map<String, Value>>,
    cidr: &IpNet,
    subnet: Option<&str>,
) -> ApiResult<Vec<HostRoute>> {
    if items.len() > MAX_HOST_ROUTES {
        return Err(exhausted(
            "HostRoutesExhausted",
            "host routes",
            MAX_HOST_ROUTES,
            subnet,
        ));
    }
    let mut out: Vec<HostRoute> = Vec::new();
    for mut m in items {
        let dest = m.remove("destination").unwrap_or(Value::Null);
        let hop = m.remove("nexthop").unwrap_or(Value::Null);
        if let Some(k) = m.keys().next() {
            return Err(ApiError(NeutronError::invalid_attr(
                "host_routes",
                format!("Unrecognized attribute '{k}'"),
            )));
        }
        let d = dest.as_str().and_then(parse_cidr).ok_or_else(|| {
            ApiError(NeutronError::invalid_attr(
                "host_routes",
                format!("'{}' is not a valid IP subnet", show(&dest)),
            ))
        })?;
        let h = parse_ip(&hop, "host_routes")?;
        if d.addr().is_ipv4() != cidr.addr().is_ipv4() || h.is_ipv4() != cidr.addr().is_ipv4() {
            return Err(ApiError(NeutronError::invalid_input(format!(
                "Host route {d} via {h} does not match the subnet's IP version"
            ))));
        }
        let r = HostRoute {
            destination: d.trunc().to_string(),
            nexthop: h.to_string(),
        };
        if out.contains(&r) {
            return Err(ApiError(NeutronError::invalid_attr(
                "host_routes",
                "Duplicate hostroute",
            )));
        }
        out.push(r);
    }
    Ok(out)
}

fn find_pool(db: &Db, ctx: &Ctx, id: &str) -> ApiResult<super::db::Entry<SubnetPool>> {
    resource::find::<SubnetPool>(db, ctx, id)
}

async fn create_one(net: &Shared, ctx: &Ctx, item: Map<String, Value>) -> ApiResult<Value> {
    let mut input = Input::new(item);
    let project_id = owner_project(ctx, &mut input)?;
    let network_id = input.uuid("network_id")?.ok_or_else(|| {
        ApiError(NeutronError::bad_request(
            "Failed to parse request. Required attribute 'network_id' not specified",
        ))
    })?;
    let ip_version = input.int("ip_version", 0, 100)?;
    let cidr_text = input.nullable_string("cidr", 64)?.flatten();
    let prefixlen = input.int("prefixlen", 0, 128)?;
    let mut subnetpool_id = input.nullable_uuid("subnetpool_id")?.flatten();
    let use_default_pool = input.boolean("use_default_subnetpool")?.unwrap_or(false);
    let gateway = take_gateway(&mut input)?;
    let pools_in = input.object_list("allocation_pools")?;
    let dns_in = input.string_list("dns_nameservers")?.unwrap_or_default();
    let routes_in = input.object_list("host_routes")?.unwrap_or_default();
    let enable_dhcp = input.boolean("enable_dhcp")?.unwrap_or(true);
    let addr_mode = input.nullable_string("ipv6_address_mode", 32)?.flatten();
    let ra_mode = input.nullable_string("ipv6_ra_mode", 32)?.flatten();
    let name = input.string("name", 255)?.unwrap_or_default();
    let description = input.string("description", 255)?.unwrap_or_default();
    let tags = clean_tags(input.string_list("tags")?.unwrap_or_default())?;
    if let Some(Value::Array(a)) = input.take("service_types")
        && !a.is_empty()
    {
        return Err(ApiError(NeutronError::invalid_input(
            "subnet service types are not supported",
        )));
    }
    match input.take("segment_id") {
        None | Some(Value::Null) => {}
        Some(_) => {
            return Err(ApiError(NeutronError::invalid_input(
                "segments are not supported",
            )));
        }
    }
    input.finish()?;

    for m in [&addr_mode, &ra_mode].into_iter().flatten() {
        if !V6_MODES.contains(&m.as_str()) {
            return Err(ApiError(NeutronError::bad_request(format!(
                "Invalid input for ipv6_address_mode. Reason: '{m}' is not in {V6_MODES:?}."
            ))));
        }
    }
    if let (Some(a), Some(r)) = (&addr_mode, &ra_mode)
        && a != r
    {
        return Err(ApiError(NeutronError::invalid_input(format!(
            "ipv6_ra_mode set to '{r}' with ipv6_address_mode set to '{a}' is not valid. If both attributes are set, they must be the same value"
        ))));
    }

    for _ in 0..16 {
        let ts = now();
        let id = new_id();
        let txn = {
            let db = net.db();
            let n = find_network(&db, ctx, &network_id)?;
            let used = db
                .subnets
                .values()
                .filter(|s| s.value.project_id == project_id)
                .count();
            check_quota(
                &db,
                &project_id,
                "subnet",
                db.quota(&project_id).subnet,
                used,
                1,
            )?;
            if use_default_pool && subnetpool_id.is_none() {
                let v = ip_version.unwrap_or(4);
                subnetpool_id = db
                    .subnetpools
                    .values()
                    .find(|p| p.value.is_default && i64::from(p.value.ip_version) == v)
                    .map(|p| p.value.id.clone());
                if subnetpool_id.is_none() {
                    return Err(ApiError(NeutronError::bad_request(format!(
                        "No default subnetpool found for IPv{v}"
                    ))));
                }
            }
            let mut txn = Txn::new();
            let pool = match &subnetpool_id {
                Some(pid) => Some(find_pool(&db, ctx, pid)?),
                None => None,
            };
            let cidr: IpNet = match (&cidr_text, &pool) {
                (Some(t), _) => {
                    let c = parse_cidr(t).ok_or_else(|| {
                        ApiError(NeutronError::invalid_input(format!(
                            "{t} is not in a CIDR format"
                        )))
                    })?;
                    if c.trunc() != c {
                        return Err(ApiError(NeutronError::invalid_input(format!(
                            "'{t}' isn't a recognized IP subnet cidr, '{}' is recommended",
                            c.trunc()
                        ))));
                    }
                    if let Some(p) = &pool {
                        check_in_pool(&db, &p.value, &c)?;
                    }
                    c
                }
                (None, Some(p)) => {
                    let len = prefixlen
                        .map(|l| l as u8)
                        .unwrap_or(p.value.default_prefixlen);
                    if len < p.value.min_prefixlen || len > p.value.max_prefixlen {
                        return Err(ApiError(NeutronError::bad_request(format!(
                            "Illegal prefix bounds: prefixlen={len}, base_prefixlen={}, max_prefixlen={}",
                            p.value.min_prefixlen, p.value.max_prefixlen
                        ))));
                    }
                    let prefixes: Vec<IpNet> = p
                        .value
                        .prefixes
                        .iter()
                        .filter_map(|s| parse_cidr(s))
                        .collect();
                    let used = pool_usage(&db, &p.value.id);
                    ipam::allocate_prefix(&prefixes, &used, len).ok_or_else(|| {
                        ApiError(NeutronError::conflict(
                            "SubnetAllocationError",
                            format!("Failed to allocate subnet: Insufficient prefix space to allocate subnet size /{len}."),
                        ))
                    })?
                }
                (None, None) => {
                    return Err(ApiError(NeutronError::bad_request(
                        "Invalid input for operation: a cidr must be specified in the absence of a subnet pool.",
                    )));
                }
            };
            let version: u8 = if cidr.addr().is_ipv4() { 4 } else { 6 };
            if let Some(v) = ip_version {
                if v != 4 && v != 6 {
                    return Err(ApiError(NeutronError::bad_request(format!(
                        "Invalid input for ip_version. Reason: {v} is not in [4, 6]."
                    ))));
                }
                if v != i64::from(version) {
                    return Err(ApiError(NeutronError::invalid_input(format!(
                        "Cidr {cidr} does not match ip_version {v}"
                    ))));
                }
            }
            let min_mtu = min_mtu(version);
            if n.value.mtu < min_mtu {
                return Err(mtu_conflict(&n.value.id, min_mtu));
            }
            if let Some(p) = &pool
                && p.value.ip_version != version
            {
                return Err(ApiError(NeutronError::invalid_input(format!(
                    "Cannot allocate IPv{version} subnet from IPv{} subnet pool",
                    p.value.ip_version
                ))));
            }
            if version == 4 && (addr_mode.is_some() || ra_mode.is_some()) {
                return Err(ApiError(NeutronError::invalid_input(
                    "ipv6_ra_mode or ipv6_address_mode cannot be set for an IPv4 subnet",
                )));
            }
            if matches!(addr_mode.as_deref(), Some("slaac" | "dhcpv6-stateless"))
                && cidr.prefix_len() != 64
            {
                return Err(ApiError(NeutronError::invalid_input(format!(
                    "Invalid CIDR {cidr} for IPv6 address mode. OpenStack uses the EUI-64 address format, which requires the prefix to be /64"
                ))));
            }
            for other in db.subnets_of(&network_id) {
                if parse_cidr(&other.cidr).is_some_and(|o| ipam::nets_overlap(&o, &cidr)) {
                    return Err(ApiError(NeutronError::invalid_input(format!(
                        "Requested subnet with cidr: {cidr} for network: {network_id} overlaps with another subnet"
                    ))));
                }
            }
            let gateway_ip = match gateway {
                Some(None) => None,
                Some(Some(g)) => {
                    check_gateway(&cidr, g)?;
                    Some(g)
                }
                None => ipam::default_gateway(&cidr),
            };
            let allocation_pools = match &pools_in {
                Some(p) => parse_pools(&cidr, p.clone())?,
                None => ipam::default_pools(&cidr, gateway_ip),
            };
            check_pools_vs_gateway(&allocation_pools, gateway_ip)?;
            let s = Subnet {
                id: id.clone(),
                name: name.clone(),
                project_id: project_id.clone(),
                network_id: network_id.clone(),
                ip_version: version,
                cidr: cidr.to_string(),
                gateway_ip,
                allocation_pools,
                dns_nameservers: parse_dns(dns_in.clone(), version == 4, None)?,
                host_routes: parse_routes(routes_in.clone(), &cidr, None)?,
                enable_dhcp,
                ipv6_address_mode: addr_mode.clone(),
                ipv6_ra_mode: ra_mode.clone(),
                subnetpool_id: pool.as_ref().map(|p| p.value.id.clone()),
                description: description.clone(),
                tags: tags.clone(),
                created_at: ts.clone(),
                updated_at: ts.clone(),
                revision_number: 0,
            };
            // Serialize subnet changes per network (overlap check) and per pool
            // (prefix allocation): both are compare-and-put on the parent.
            let mut network: Network = (*n.value).clone();
            network.touch(&ts);
            txn = txn
                .when(Compare::ModRevision(key::<Network>(&network_id), n.rev))
                .put(key::<Network>(&network_id), encode(&network)?);
            if let Some(p) = &pool {
                txn = txn
                    .when(Compare::ModRevision(key::<SubnetPool>(&p.value.id), p.rev))
                    .put(key::<SubnetPool>(&p.value.id), encode(&*p.value)?);
            }
            txn.put(key::<Subnet>(&id), encode(&s)?)
        };
        if net.commit(txn).await? {
            return Ok(view_of::<Subnet>(net, &id));
        }
    }
    Err(ApiError(NeutronError::conflict(
        "Conflict",
        "The network is changing too fast; try again",
    )))
}

/// The prefixes already carved out of a subnet pool.
pub fn pool_usage(db: &Db, pool_id: &str) -> Vec<IpNet> {
    db.subnets
        .values()
        .filter(|s| s.value.subnetpool_id.as_deref() == Some(pool_id))
        .filter_map(|s| parse_cidr(&s.value.cidr))
        .collect()
}

fn check_in_pool(db: &Db, pool: &SubnetPool, cidr: &IpNet) -> ApiResult<()> {
    let inside = pool
        .prefixes
        .iter()
        .filter_map(|p| parse_cidr(p))
        .any(|p| p.contains(cidr));
    if !inside {
        return Err(ApiError(NeutronError::bad_request(format!(
            "Cidr {cidr} is not within the prefixes of subnet pool {}",
            pool.id
        ))));
    }
    if pool_usage(db, &pool.id)
        .iter()
        .any(|u| ipam::nets_overlap(u, cidr))
    {
        return Err(ApiError(NeutronError::conflict(
            "SubnetAllocationError",
            format!(
                "Failed to allocate subnet: Cidr {cidr} overlaps with another subnet of the pool"
            ),
        )));
    }
    Ok(())
}
