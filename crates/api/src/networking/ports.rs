//! Ports: address and MAC allocation that stays unique under concurrency (guard keys
//! created with compare-absent in the same transaction as the port), security
//! groups, port security, allowed address pairs and binding attributes.

use std::collections::HashSet;
use std::net::IpAddr;

use kuryr_model::input::{
    Input, format_mac, mac_bytes, parse_ip, parse_ip_or_cidr, parse_mac, show,
};
use kuryr_model::ipam;
use kuryr_model::{AddressPair, FixedIp, Network, NeutronError, Port, SecurityGroup, Subnet};
use kuryr_store::{Compare, Op, Txn};
use rand::Rng;
use serde_json::{Map, Value};

use super::db::{Db, Entry, Table, keys};
use super::networks::{find_network, owner_project};
use super::resource::{self, Resource, check_quota, clean_tags, encode, key, standard_fields};
use super::security_groups::ensure_default_sg;
use super::subnets::network_facts;
use super::{ApiError, ApiResult, Ctx, Networking, Reservation, Shared, new_id, now};

/// Membership of a port in a security group; a group cannot be deleted while any exist.
pub fn sg_port_key(sg: &str, port: &str) -> String {
    format!("/neutron/sg-ports/{sg}/{port}")
}

pub fn sg_port_prefix(sg: &str) -> String {
    format!("/neutron/sg-ports/{sg}/")
}

/// The guard keys a port holds: its addresses and MAC (exclusive) and its group
/// memberships.
fn exclusive_keys(p: &Port) -> Vec<String> {
    let mut k: Vec<String> = p
        .fixed_ips
        .iter()
        .map(|f| keys::ip(&f.subnet_id, &f.ip_address))
        .collect();
    k.push(keys::mac(&p.network_id, &p.mac_address));
    k
}

fn membership_keys(p: &Port) -> Vec<String> {
    p.security_groups
        .iter()
        .map(|sg| sg_port_key(sg, &p.id))
        .collect()
}

#[derive(Clone)]
pub struct IpRequest {
    pub subnet_id: Option<String>,
    pub ip: Option<IpAddr>,
}

/// Owners whose ports Neutron treats as trusted: no port security, no default group.
pub fn is_trusted(device_owner: &str) -> bool {
    device_owner.starts_with("network:")
}

pub const OWNER_ROUTER_INTERFACE: &str = "network:router_interface";
pub const OWNER_ROUTER_GATEWAY: &str = "network:router_gateway";
pub const OWNER_FLOATINGIP: &str = "network:floatingip";
/// A router's address on an internal subnet in its SNAT namespace (Neutron DVR's).
pub const OWNER_ROUTER_SNAT: &str = "network:router_centralized_snat";

/// Ports that exist for a router or a floating IP: deleted through them, never
/// directly (Neutron's `ServicePortInUse`).
fn service_owner(db: &Db, p: &Port) -> bool {
    match p.device_owner.as_str() {
        OWNER_ROUTER_INTERFACE | OWNER_ROUTER_GATEWAY | OWNER_ROUTER_SNAT => {
            db.routers.contains_key(&p.device_id)
        }
        OWNER_FLOATINGIP => db.floatingips.contains_key(&p.device_id),
        _ => false,
    }
}

/// A port create request, validated once before any allocation attempt.
#[derive(Clone)]
struct PortSpec {
    project_id: String,
    network_id: String,
    name: String,
    description: String,
    admin_state_up: bool,
    mac: Option<String>,
    fixed_ips: Option<Vec<IpRequest>>,
    device_id: String,
    device_owner: String,
    host_id: String,
    profile: Value,
    vnic_type: String,
    security_groups: Option<Vec<String>>,
    port_security: Option<bool>,
    pairs: Vec<AddressPair>,
    tags: Vec<String>,
}

/// Neutron's `max_fixed_ips_per_port` and `max_allowed_address_pair`.
pub const MAX_FIXED_IPS: usize = 5;
pub const MAX_ADDRESS_PAIRS: usize = 10;

pub fn parse_fixed_ips(items: Vec<Map<String, Value>>) -> ApiResult<Vec<IpRequest>> {
    if items.len() > MAX_FIXED_IPS {
        return Err(ApiError(NeutronError::invalid_input(
            "Exceeded maximum amount of fixed ips per port",
        )));
    }
    let mut out = Vec::new();
    for mut m in items {
        let subnet_id = match m.remove("subnet_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if kuryr_model::input::is_uuid(&s) => Some(s),
            Some(v) => {
                return Err(ApiError(NeutronError::invalid_attr(
                    "fixed_ips",
                    format!("'{}' is not a valid UUID", show(&v)),
                )));
            }
        };
        let ip = match m.remove("ip_address") {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_ip(&v, "fixed_ips")?),
        };
        if let Some(k) = m.keys().next() {
            return Err(ApiError(NeutronError::invalid_attr(
                "fixed_ips",
                format!("Unrecognized attribute '{k}'"),
            )));
        }
        if subnet_id.is_none() && ip.is_none() {
            return Err(ApiError(NeutronError::invalid_attr(
                "fixed_ips",
                "a subnet_id or an ip_address is required",
            )));
        }
        out.push(IpRequest { subnet_id, ip });
    }
    Ok(out)
}

fn parse_pairs(items: Vec<Map<String, Value>>) -> ApiResult<Vec<AddressPair>> {
    if items.len() > MAX_ADDRESS_PAIRS {
        return Err(ApiError(NeutronError::bad_request(format!(
            "The number of allowed address pair exceeds the maximum {MAX_ADDRESS_PAIRS}."
        )))
        .with_kind("AllowedAddressPairExhausted"));
    }
    let mut seen = HashSet::new();
    let mut out: Vec<AddressPair> = Vec::new();
    for mut m in items {
        let ip = match m.remove("ip_address") {
            Some(Value::String(s)) => match parse_ip_or_cidr(&s) {
                Some(n) if n.prefix_len() == n.max_prefix_len() => n.addr().to_string(),
                Some(n) => n.trunc().to_string(),
                None => {
                    return Err(ApiError(NeutronError::invalid_attr(
                        "allowed_address_pairs",
                        format!("'{s}' is not a valid IP address"),
                    )));
                }
            },
            _ => {
                return Err(ApiError(NeutronError::bad_request(
                    "AllowedAddressPair must contain ip_address",
                )));
            }
        };
        let mac = match m.remove("mac_address") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => parse_mac(&s).ok_or_else(|| {
                ApiError(NeutronError::invalid_attr(
                    "allowed_address_pairs",
                    format!("'{s}' is not a valid MAC address"),
                ))
            })?,
            Some(v) => {
                return Err(ApiError(NeutronError::invalid_attr(
                    "allowed_address_pairs",
                    format!("'{}' is not a valid MAC address", show(&v)),
                )));
            }
        };
        if let Some(k) = m.keys().next() {
            return Err(ApiError(NeutronError::bad_request(format!(
                "Unrecognized attribute(s) '{k}'"
            ))));
        }
        let pair = AddressPair {
            ip_address: ip,
            mac_address: mac,
        };
        if !seen.insert(pair.clone()) {
            return Err(ApiError(NeutronError::bad_request(
                "Request contains duplicate address pair",
            )));
        }
        out.push(pair);
    }
    Ok(out)
}

/// `security_groups` of a request: absent, `null` (none) or a list of distinct ids.
fn parse_groups(v: Option<Value>) -> ApiResult<Option<Vec<String>>> {
    let v = match v {
        None => return Ok(None),
        Some(Value::Null) => return Ok(Some(Vec::new())),
        Some(v) => v,
    };
    let mut tmp = Map::new();
    tmp.insert("security_groups".into(), v);
    let list = Input::new(tmp)
        .string_list("security_groups")?
        .unwrap_or_default();
    let mut seen = HashSet::new();
    for id in &list {
        if !kuryr_model::input::is_uuid(id) {
            return Err(ApiError(NeutronError::invalid_attr(
                "security_groups",
                format!("'{id}' is not a valid UUID"),
            )));
        }
        if !seen.insert(id.as_str()) {
            return Err(ApiError(NeutronError::invalid_attr(
                "security_groups",
                format!("Duplicate items in the list: '{id}'"),
            )));
        }
    }
    Ok(Some(list))
}

/// Pairs given without a MAC use the port's own, as in Neutron.
fn with_port_mac(pairs: Vec<AddressPair>, mac: &str) -> Vec<AddressPair> {
    pairs
        .into_iter()
        .map(|mut p| {
            if p.mac_address.is_empty() {
                p.mac_address = mac.to_string();
            }
            p
        })
        .collect()
}

fn parse_profile(v: Value) -> ApiResult<Value> {
    match v {
        Value::Object(_) => Ok(v),
        Value::Null => Ok(Value::Object(Map::new())),
        other => Err(ApiError(NeutronError::invalid_attr(
            "binding:profile",
            format!("'{}' is not a dictionary", show(&other)),
        ))),
    }
}

fn parse_spec(ctx: &Ctx, item: Map<String, Value>) -> ApiResult<PortSpec> {
    let mut input = Input::new(item);
    let project_id = owner_project(ctx, &mut input)?;
    let network_id = input.uuid("network_id")?.ok_or_else(|| {
        ApiError(NeutronError::bad_request(
            "Failed to parse request. Required attribute 'network_id' not specified",
        ))
    })?;
    let mac = match input.take("mac_address") {
        None => None,
        Some(Value::String(s)) => Some(
            parse_mac(&s)
                .filter(|m| mac_bytes(m).is_some_and(|b| b[0] & 1 == 0))
                .ok_or_else(|| {
                    ApiError(NeutronError::invalid_attr(
                        "mac_address",
                        format!("'{s}' is not a valid MAC address"),
                    ))
                })?,
        ),
        Some(v) => {
            return Err(ApiError(NeutronError::invalid_attr(
                "mac_address",
                format!("'{}' is not a valid MAC address", show(&v)),
            )));
        }
    };
    let fixed_ips = input
        .object_list("fixed_ips")?
        .map(parse_fixed_ips)
        .transpose()?;
    let host_id = input.string("binding:host_id", 255)?;
    let profile = input
        .take("binding:profile")
        .map(parse_profile)
        .transpose()?;
    let vnic_type = input.string("binding:vnic_type", 64)?;
    if let Some(v) = &vnic_type
        && v != "normal"
    {
        return Err(ApiError(NeutronError::bad_request(format!(
            "Invalid input for binding:vnic_type. Reason: '{v}' is not in ['normal']."
        ))));
    }
    let spec = PortSpec {
        project_id,
        network_id,
        name: input.string("name", 255)?.unwrap_or_default(),
        description: input.string("description", 255)?.unwrap_or_default(),
        admin_state_up: input.boolean("admin_state_up")?.unwrap_or(true),
        mac,
        fixed_ips,
        device_id: input.string("device_id", 255)?.unwrap_or_default(),
        device_owner: input.string("device_owner", 255)?.unwrap_or_default(),
        host_id: host_id.unwrap_or_default(),
        profile: profile.unwrap_or_else(|| Value::Object(Map::new())),
        vnic_type: vnic_type.unwrap_or_else(|| "normal".into()),
        security_groups: parse_groups(input.take("security_groups"))?,
        port_security: input.boolean("port_security_enabled")?,
        pairs: input
            .object_list("allowed_address_pairs")?
            .map(parse_pairs)
            .transpose()?
            .unwrap_or_default(),
        tags: clean_tags(input.string_list("tags")?.unwrap_or_default())?,
    };
    input.ignore(&["extra_dhcp_opts"]);
    input.finish()?;
    Ok(spec)
}

/// Allocation state of one create/update attempt: what this attempt has reserved
/// (given back when it is dropped, whether the request ends or is cancelled).
pub struct Alloc<'a> {
    net: &'a Networking,
    reserved: Reservation<'a>,
}

impl<'a> Alloc<'a> {
    pub fn new(net: &'a Networking) -> Self {
        Alloc {
            net,
            reserved: net.reservation(),
        }
    }

    /// Gives back what this attempt reserved (a retry starts from scratch).
    pub fn clear(&mut self) {
        self.reserved.clear();
    }

    fn taken(&self, db: &Db, subnet: &str, ip: &IpAddr) -> bool {
        let k = keys::ip(subnet, ip);
        db.ip_in_use(subnet, ip) || self.reserved.holds(&k) || self.net.is_reserved(&k)
    }

    fn reserve(&mut self, k: String) -> bool {
        self.reserved.take(k)
    }

    /// An explicitly requested address.
    fn take_ip(&mut self, db: &Db, s: &Subnet, ip: IpAddr) -> ApiResult<FixedIp> {
        if self.taken(db, &s.id, &ip) || !self.reserve(keys::ip(&s.id, &ip)) {
            return Err(ApiError(NeutronError::conflict(
                "IpAddressAlreadyAllocated",
                format!("IP address {ip} already allocated in subnet {}", s.id),
            )));
        }
        Ok(FixedIp {
            subnet_id: s.id.clone(),
            ip_address: ip,
        })
    }

    /// The next free address of a subnet (or the EUI-64 one for SLAAC subnets).
    fn pick_ip(&mut self, db: &Db, s: &Subnet, mac: &str) -> Option<FixedIp> {
        if s.is_auto_address() {
            let prefix = kuryr_model::input::parse_cidr(&s.cidr)?;
            let ip = ipam::eui64(&prefix, mac_bytes(mac)?)?;
            return self.take_ip(db, s, ip).ok();
        }
        let hint = self.net.hint(&s.id);
        loop {
            let ip = ipam::next_free(&s.allocation_pools, hint, |ip| self.taken(db, &s.id, &ip))?;
            if self.reserve(keys::ip(&s.id, &ip)) {
                self.net.set_hint(&s.id, ip);
                return Some(FixedIp {
                    subnet_id: s.id.clone(),
                    ip_address: ip,
                });
            }
        }
    }

    fn pick_mac(&mut self, db: &Db, network_id: &str) -> String {
        let mut rng = rand::rng();
        loop {
            let b: [u8; 3] = rng.random();
            let mac = format_mac([0xfa, 0x16, 0x3e, b[0], b[1], b[2]]);
            let used = db
                .macs_by_network
                .get(network_id)
                .is_some_and(|m| m.contains(&mac));
            if !used && self.reserve(keys::mac(network_id, &mac)) {
                return mac;
            }
        }
    }
}

fn exhausted(network_id: &str) -> ApiError {
    ApiError(NeutronError::conflict(
        "IpAddressGenerationFailure",
        format!("No more IP addresses available on network {network_id}."),
    ))
}

/// Resolves requested fixed IPs (or the defaults) into addresses on `subnets`.
pub fn allocate_ips(
    alloc: &mut Alloc<'_>,
    db: &Db,
    network_id: &str,
    subnets: &[std::sync::Arc<Subnet>],
    requests: Option<&[IpRequest]>,
    mac: &str,
    keep: &[FixedIp],
) -> ApiResult<Vec<FixedIp>> {
    let mut out: Vec<FixedIp> = Vec::new();
    let Some(requests) = requests else {
        // Neutron's default: one address from an IPv4 subnet, one from a stateful
        // IPv6 subnet, and one from every SLAAC subnet.
        let mut have_v4 = false;
        let mut have_v6 = false;
        let mut any_tried = false;
        for s in subnets {
            let auto = s.is_auto_address();
            if (s.ip_version == 4 && have_v4) || (s.ip_version == 6 && !auto && have_v6) {
                continue;
            }
            any_tried = true;
            if let Some(f) = alloc.pick_ip(db, s, mac) {
                if s.ip_version == 4 {
                    have_v4 = true;
                } else if !auto {
                    have_v6 = true;
                }
                out.push(f);
            }
        }
        let wanted_v4 = subnets.iter().any(|s| s.ip_version == 4);
        let wanted_v6 = subnets
            .iter()
            .any(|s| s.ip_version == 6 && !s.is_auto_address());
        if any_tried && ((wanted_v4 && !have_v4) || (wanted_v6 && !have_v6)) {
            return Err(exhausted(network_id));
        }
        return Ok(out);
    };
    for r in requests {
        let subnet = match (&r.subnet_id, r.ip) {
            (Some(sid), _) => subnets.iter().find(|s| &s.id == sid).cloned().ok_or_else(|| {
                ApiError(NeutronError::invalid_input(format!(
                    "Failed to create port on network {network_id}, because fixed_ips included invalid subnet {sid}"
                )))
            })?,
            (None, Some(ip)) => subnets
                .iter()
                .find(|s| kuryr_model::input::parse_cidr(&s.cidr).is_some_and(|c| c.contains(&ip)))
                .cloned()
                .ok_or_else(|| {
                    ApiError(NeutronError::new(
                        400,
                        "InvalidIpForNetwork",
                        format!("IP address {ip} is not a valid IP for any of the subnets on the specified network."),
                    ))
                })?,
            (None, None) => continue,
        };
        let fixed = match r.ip {
            Some(ip) => {
                if let Some(k) = keep
                    .iter()
                    .find(|k| k.ip_address == ip && k.subnet_id == subnet.id)
                {
                    k.clone()
                } else {
                    check_ip_on_subnet(&subnet, ip)?;
                    alloc.take_ip(db, &subnet, ip)?
                }
            }
            None => match keep
                .iter()
                .find(|k| k.subnet_id == subnet.id && !out.contains(k))
            {
                Some(k) => k.clone(),
                None => alloc
                    .pick_ip(db, &subnet, mac)
                    .ok_or_else(|| exhausted(network_id))?,
            },
        };
        if out.contains(&fixed) {
            return Err(ApiError(NeutronError::bad_request(format!(
                "Duplicate IP address '{}'",
                fixed.ip_address
            ))));
        }
        out.push(fixed);
    }
    Ok(out)
}

fn check_ip_on_subnet(s: &Subnet, ip: IpAddr) -> ApiResult<()> {
    let invalid = || {
        ApiError(NeutronError::new(
            400,
            "InvalidIpForSubnet",
            format!("IP address {ip} is not a valid IP for the specified subnet."),
        ))
    };
    let cidr = kuryr_model::input::parse_cidr(&s.cidr).ok_or_else(invalid)?;
    if !cidr.contains(&ip) || !ipam::usable_range(&cidr).is_some_and(|u| u.contains(ip)) {
        return Err(invalid());
    }
    if s.is_auto_address() {
        return Err(ApiError(NeutronError::invalid_input(format!(
            "IPv6 address {ip} cannot be directly assigned to a port on subnet {} as the subnet is configured for automatic addresses",
            s.id
        ))));
    }
    Ok(())
}

fn check_groups(db: &Db, project: &str, ctx: &Ctx, groups: &[String]) -> ApiResult<Vec<Compare>> {
    let mut compares = Vec::new();
    let mut kinds = HashSet::new();
    for g in groups {
        match db.security_groups.get(g) {
            Some(e) if ctx.is_admin() || e.value.project_id == project => {
                // The compare also keeps `stateful` as read until the port commits.
                compares.push(Compare::ModRevision(key::<SecurityGroup>(g), e.rev));
                kinds.insert(e.value.stateful);
            }
            _ => {
                return Err(ApiError(NeutronError::not_found(
                    "Security group",
                    "SecurityGroupNotFound",
                    g,
                )));
            }
        }
    }
    if kinds.len() > 1 {
        return Err(ApiError(NeutronError::conflict(
            "SecurityGroupConflict",
            "Error Cannot apply both stateful and stateless security groups on the same port at the same time while attempting the operation.",
        )));
    }
    Ok(compares)
}

fn check_port_security(enabled: bool, groups: &[String], pairs: &[AddressPair]) -> ApiResult<()> {
    if !enabled && !groups.is_empty() {
        return Err(ApiError(NeutronError::conflict(
            "PortSecurityAndIPRequiredForSecurityGroups",
            "Port security must be enabled and port must have an IP address in order to use security groups.",
        )));
    }
    if !enabled && !pairs.is_empty() {
        return Err(ApiError(NeutronError::conflict(
            "AddressPairAndPortSecurityRequired",
            "Port Security must be enabled in order to have allowed address pairs on a port.",
        )));
    }
    Ok(())
}

/// Builds one port and adds its writes to `txn`.
fn prepare(
    alloc: &mut Alloc<'_>,
    db: &Db,
    ctx: &Ctx,
    spec: &PortSpec,
    default_sg: Option<&String>,
    txn: &mut Txn,
) -> ApiResult<String> {
    let n: Entry<Network> = find_network(db, ctx, &spec.network_id)?;
    build(alloc, db, ctx, spec, &n, default_sg, txn).map(|p| p.id)
}

/// A port a router or floating IP owns (project `project_id`, no security groups,
/// port security off), allocated on `network` and written by `txn`.
#[allow(clippy::too_many_arguments)]
pub fn service_port(
    alloc: &mut Alloc<'_>,
    db: &Db,
    ctx: &Ctx,
    network: &Entry<Network>,
    project_id: &str,
    device_owner: &str,
    device_id: &str,
    fixed_ips: Option<Vec<IpRequest>>,
    status: &str,
    host: &str,
    txn: &mut Txn,
) -> ApiResult<Port> {
    let spec = PortSpec {
        project_id: project_id.to_string(),
        network_id: network.value.id.clone(),
        name: String::new(),
        description: String::new(),
        admin_state_up: true,
        mac: None,
        fixed_ips,
        device_id: device_id.to_string(),
        device_owner: device_owner.to_string(),
        host_id: host.to_string(),
        profile: Value::Object(Map::new()),
        vnic_type: "normal".into(),
        security_groups: Some(Vec::new()),
        port_security: Some(false),
        pairs: Vec::new(),
        tags: Vec::new(),
    };
    let mut p = build(alloc, db, ctx, &spec, network, None, txn)?;
    if p.status != status {
        // Rewrite the port record the build queued with the status asked for.
        p.status = status.to_string();
        let k = key::<Port>(&p.id);
        let bytes = encode(&p)?;
        for op in txn.ops.iter_mut() {
            if let Op::Put(ok, v) = op
                && *ok == k
            {
                *v = bytes.clone();
            }
        }
    }
    Ok(p)
}

/// The guard-key deletes that go with deleting port `p`.
pub fn delete_ops(p: &Port) -> Vec<Op> {
    exclusive_keys(p)
        .into_iter()
        .chain(membership_keys(p))
        .map(Op::Delete)
        .collect()
}

/// Re-addresses port `p` in place (a router gateway's `external_fixed_ips`),
/// returning the guard-key compares and ops; the caller writes `p`.
pub fn readdress(
    alloc: &mut Alloc<'_>,
    db: &Db,
    p: &mut Port,
    requests: &[IpRequest],
) -> ApiResult<(Vec<Compare>, Vec<Op>)> {
    let old = exclusive_keys(p);
    let subnets = db.subnets_of(&p.network_id);
    let keep = p.fixed_ips.clone();
    p.fixed_ips = allocate_ips(
        alloc,
        db,
        &p.network_id,
        &subnets,
        Some(requests),
        &p.mac_address,
        &keep,
    )?;
    let new = exclusive_keys(p);
    let mut compares = Vec::new();
    let mut ops = Vec::new();
    for k in old.iter().filter(|k| !new.contains(k)) {
        ops.push(Op::Delete(k.clone()));
    }
    for k in new.iter().filter(|k| !old.contains(k)) {
        compares.push(Compare::Absent(k.clone()));
        ops.push(Op::Put(k.clone(), p.id.clone().into_bytes()));
    }
    Ok((compares, ops))
}

fn build(
    alloc: &mut Alloc<'_>,
    db: &Db,
    ctx: &Ctx,
    spec: &PortSpec,
    n: &Entry<Network>,
    default_sg: Option<&String>,
    txn: &mut Txn,
) -> ApiResult<Port> {
    let subnets = db.subnets_of(&spec.network_id);
    let mac = match &spec.mac {
        Some(m) => {
            let k = keys::mac(&spec.network_id, m);
            let used = db
                .macs_by_network
                .get(&spec.network_id)
                .is_some_and(|s| s.contains(m));
            if used || !alloc.reserve(k) {
                return Err(ApiError(NeutronError::conflict(
                    "MacAddressInUse",
                    format!(
                        "Unable to complete operation for network {}. The mac address {m} is in use.",
                        spec.network_id
                    ),
                )));
            }
            m.clone()
        }
        None => alloc.pick_mac(db, &spec.network_id),
    };
    let fixed_ips = allocate_ips(
        alloc,
        db,
        &spec.network_id,
        &subnets,
        spec.fixed_ips.as_deref(),
        &mac,
        &[],
    )?;
    // Neutron's trusted ports (`network:*` owners) never get port security.
    let port_security = if is_trusted(&spec.device_owner) {
        false
    } else {
        spec.port_security.unwrap_or(n.value.port_security_enabled)
    };
    let groups = match &spec.security_groups {
        Some(g) => g.clone(),
        None if port_security => default_sg.cloned().into_iter().collect(),
        None => Vec::new(),
    };
    let pairs = with_port_mac(spec.pairs.clone(), &mac);
    check_port_security(port_security, &groups, &pairs)?;
    if !groups.is_empty() {
        txn.compares
            .extend(check_groups(db, &spec.project_id, ctx, &groups)?);
    }
    let ts = now();
    let p = Port {
        id: new_id(),
        name: spec.name.clone(),
        network_id: spec.network_id.clone(),
        project_id: spec.project_id.clone(),
        mac_address: mac,
        admin_state_up: spec.admin_state_up,
        status: "DOWN".into(),
        device_id: spec.device_id.clone(),
        device_owner: spec.device_owner.clone(),
        fixed_ips,
        security_groups: groups,
        port_security_enabled: port_security,
        allowed_address_pairs: pairs,
        host_id: spec.host_id.clone(),
        profile: spec.profile.clone(),
        vif_type: "unbound".into(),
        vif_details: Value::Object(Map::new()),
        vnic_type: spec.vnic_type.clone(),
        description: spec.description.clone(),
        tags: spec.tags.clone(),
        created_at: ts.clone(),
        updated_at: ts,
        revision_number: 1,
    };
    // The port exists only if its network and subnets are still what we read.
    txn.compares
        .push(Compare::ModRevision(key::<Network>(&n.value.id), n.rev));
    let used_subnets: HashSet<&str> = p.fixed_ips.iter().map(|f| f.subnet_id.as_str()).collect();
    for s in used_subnets {
        if let Some(e) = db.subnets.get(s) {
            txn.compares
                .push(Compare::ModRevision(key::<Subnet>(s), e.rev));
        }
    }
    for k in exclusive_keys(&p) {
        txn.compares.push(Compare::Absent(k.clone()));
        txn.ops.push(Op::Put(k, p.id.clone().into_bytes()));
    }
    for k in membership_keys(&p) {
        txn.ops.push(Op::Put(k, Vec::new()));
    }
    txn.ops.push(Op::Put(key::<Port>(&p.id), encode(&p)?));
    Ok(p)
}

impl Resource for Port {
    const SINGULAR: &'static str = "port";
    const PLURAL: &'static str = "ports";
    const PATH: &'static str = "ports";
    const DISPLAY: &'static str = "Port";

    const NOT_FOUND: &'static str = "PortNotFound";

    standard_fields!(ports);

    fn related(&self, db: &Db) -> Vec<(&'static str, Value)> {
        network_facts(db, &self.network_id)
    }
    fn create_target(
        db: &Db,
        ctx: &Ctx,
        item: &Map<String, Value>,
    ) -> ApiResult<Map<String, Value>> {
        let Some(Value::String(network_id)) = item.get("network_id") else {
            return Err(ApiError(NeutronError::bad_request(
                "Failed to parse request. Required attribute 'network_id' not specified",
            )));
        };
        // A network the caller cannot see does not exist for it.
        find_network(db, ctx, network_id)?;
        let mut t = resource::item_target(ctx, item);
        for (k, v) in network_facts(db, network_id) {
            t.insert(k.to_string(), v);
        }
        for (k, v) in [("device_owner", ""), ("binding:host_id", "")] {
            t.entry(k).or_insert_with(|| Value::String(v.to_string()));
        }
        Ok(t)
    }
    fn create_defaults() -> Vec<(&'static str, Value)> {
        vec![
            ("device_owner", Value::String(String::new())),
            ("device_id", Value::String(String::new())),
            ("binding:vnic_type", Value::String("normal".into())),
        ]
    }
    fn update_facts(&self, body: &Map<String, Value>) -> Vec<(&'static str, Value)> {
        // What an agent may touch: the binding of ports on its own host.
        let binding_only = body.keys().all(|k| {
            matches!(
                k.as_str(),
                "binding:host_id"
                    | "status"
                    | "binding:vif_type"
                    | "binding:vif_details"
                    | "binding:profile"
            )
        });
        vec![
            ("kuryr:prior_host", Value::String(self.host_id.clone())),
            ("kuryr:binding_only", Value::Bool(binding_only)),
        ]
    }
    fn candidates(db: &Db, q: &super::query::ListQuery) -> Option<(Vec<String>, &'static str)> {
        if let Some(ids) = q.filter("id") {
            return Some((ids.to_vec(), "id"));
        }
        if let Some(devs) = q
            .filter("device_id")
            .filter(|d| d.iter().all(|v| !v.is_empty()))
        {
            return Some((
                devs.iter()
                    .flat_map(|d| db.ports_by_device.get(d).into_iter().flatten().cloned())
                    .collect(),
                "device_id",
            ));
        }
        let nets = q.filter("network_id")?;
        Some((
            nets.iter()
                .flat_map(|n| db.ports_by_network.get(n).into_iter().flatten().cloned())
                .collect(),
            "network_id",
        ))
    }

    async fn create(
        net: &Shared,
        ctx: &Ctx,
        items: Vec<Map<String, Value>>,
    ) -> ApiResult<Vec<Value>> {
        let specs = items
            .into_iter()
            .map(|i| parse_spec(ctx, i))
            .collect::<ApiResult<Vec<_>>>()?;
        // Default security groups are made (once per project) before the ports.
        let mut defaults = std::collections::HashMap::new();
        for s in &specs {
            if s.security_groups.is_none()
                && s.port_security != Some(false)
                && !is_trusted(&s.device_owner)
                && !defaults.contains_key(&s.project_id)
            {
                let sg = ensure_default_sg(net, &s.project_id).await?;
                defaults.insert(s.project_id.clone(), sg);
            }
        }
        for _ in 0..32 {
            let mut alloc = Alloc::new(net);
            let mut txn = Txn::new();
            let built = {
                let db = net.db();
                let mut per_project: std::collections::HashMap<&str, usize> =
                    std::collections::HashMap::new();
                for s in &specs {
                    *per_project.entry(&s.project_id).or_default() += 1;
                }
                let mut quota_ok = Ok(());
                for (p, n) in &per_project {
                    let used = db.ports_per_project.get(*p).copied().unwrap_or(0);
                    quota_ok =
                        quota_ok.and(check_quota(&db, p, "port", db.quota(p).port, used, *n));
                }
                quota_ok.and_then(|_| {
                    specs
                        .iter()
                        .map(|s| {
                            prepare(
                                &mut alloc,
                                &db,
                                ctx,
                                s,
                                defaults.get(&s.project_id),
                                &mut txn,
                            )
                        })
                        .collect::<ApiResult<Vec<String>>>()
                })
            };
            let ids = built?;
            let committed = net.commit(txn).await;
            drop(alloc);
            if committed? {
                let db = net.db();
                return Ok(ids
                    .iter()
                    .filter_map(|id| db.ports.get(id))
                    .map(|e| Value::Object(e.value.view(&db)))
                    .collect());
            }
        }
        Err(ApiError(NeutronError::conflict(
            "Conflict",
            "Could not allocate the port; try again",
        )))
    }

    async fn update(
        net: &Shared,
        ctx: &Ctx,
        id: &str,
        mut input: Input,
        if_match: Option<u64>,
    ) -> ApiResult<Value> {
        input.reject(&["network_id", "tags"], "update")?;
        let name = input.string("name", 255)?;
        let description = input.string("description", 255)?;
        let admin_state_up = input.boolean("admin_state_up")?;
        let device_id = input.string("device_id", 255)?;
        let device_owner = input.string("device_owner", 255)?;
        let mac = match input.take("mac_address") {
            None => None,
            Some(Value::String(s)) => Some(parse_mac(&s).ok_or_else(|| {
                ApiError(NeutronError::invalid_attr(
                    "mac_address",
                    format!("'{s}' is not a valid MAC address"),
                ))
            })?),
            Some(v) => {
                return Err(ApiError(NeutronError::invalid_attr(
                    "mac_address",
                    format!("'{}' is not a valid MAC address", show(&v)),
                )));
            }
        };
        let fixed_ips = input
            .object_list("fixed_ips")?
            .map(parse_fixed_ips)
            .transpose()?;
        let groups = parse_groups(input.take("security_groups"))?;
        let port_security = input.boolean("port_security_enabled")?;
        let pairs = input
            .object_list("allowed_address_pairs")?
            .map(parse_pairs)
            .transpose()?;
        let host_id = input.string("binding:host_id", 255)?;
        let profile = input
            .take("binding:profile")
            .map(parse_profile)
            .transpose()?;
        let vif_type = input.string("binding:vif_type", 64)?;
        let vif_details = input
            .take("binding:vif_details")
            .map(parse_profile)
            .transpose()?;
        let status = input.string("status", 16)?;
        input.ignore(&["binding:vnic_type", "extra_dhcp_opts"]);
        input.finish()?;
        if let Some(s) = &status
            && !["ACTIVE", "DOWN", "BUILD", "ERROR"].contains(&s.as_str())
        {
            return Err(ApiError(NeutronError::bad_request(format!(
                "Invalid input for status. Reason: '{s}' is not a port status."
            ))));
        }
        let mut alloc = Alloc::new(net);
        let result = resource::update_with::<Port, _>(net, ctx, id, if_match, |db, p| {
            // A retry starts from scratch: drop what the previous attempt reserved.
            alloc.reserved.clear();
            let old_exclusive = exclusive_keys(p);
            let old_members = membership_keys(p);
            let mut compares = Vec::new();
            if let Some(m) = &mac
                && *m != p.mac_address {
                    if !p.host_id.is_empty() && p.status == "ACTIVE" {
                        return Err(ApiError(NeutronError::conflict("PortBound", format!(
                            "Unable to complete operation on port {}, port is already bound, port type: {}, old_mac {}, new_mac {}.",
                            p.id, p.vif_type, p.mac_address, m
                        ))));
                    }
                    let used = db.macs_by_network.get(&p.network_id).is_some_and(|s| s.contains(m));
                    if used || !alloc.reserve(keys::mac(&p.network_id, m)) {
                        return Err(ApiError(NeutronError::conflict(
                            "MacAddressInUse",
                            format!("Unable to complete operation for network {}. The mac address {m} is in use.", p.network_id),
                        )));
                    }
                    p.mac_address = m.clone();
                }
            let mut l3 = (Vec::new(), Vec::new());
            if let Some(reqs) = &fixed_ips {
                let subnets = db.subnets_of(&p.network_id);
                let keep = p.fixed_ips.clone();
                p.fixed_ips = allocate_ips(&mut alloc, db, &p.network_id, &subnets, Some(reqs), &p.mac_address, &keep)?;
                let v4 = |ips: &[FixedIp]| -> Vec<IpAddr> {
                    ips.iter().map(|f| f.ip_address).filter(IpAddr::is_ipv4).collect()
                };
                if p.device_owner == OWNER_ROUTER_INTERFACE
                    && db.routers.contains_key(&p.device_id)
                    && v4(&keep) != v4(&p.fixed_ips)
                {
                    return Err(ApiError(NeutronError::new(400, "BadRequest", format!(
                        "Bad ports request: IP updates for port {} are not allowed.", p.id
                    ))));
                }
                let kept: Vec<IpAddr> = p.fixed_ips.iter().map(|f| f.ip_address).collect();
                l3 = super::floatingips::release_port(db, ctx, p, Some(&kept))?;
            }
            if let Some(v) = &name {
                p.name = v.clone();
            }
            if let Some(v) = &description {
                p.description = v.clone();
            }
            if let Some(v) = admin_state_up {
                p.admin_state_up = v;
            }
            if let Some(v) = &device_id {
                p.device_id = v.clone();
            }
            if let Some(v) = &device_owner {
                p.device_owner = v.clone();
            }
            if let Some(v) = port_security {
                p.port_security_enabled = v;
            }
            if let Some(g) = &groups {
                compares.extend(check_groups(db, &p.project_id.clone(), ctx, g)?);
                p.security_groups = g.clone();
            }
            if let Some(v) = &pairs {
                p.allowed_address_pairs = with_port_mac(v.clone(), &p.mac_address);
            }
            if port_security == Some(false) && groups.is_none() && !p.security_groups.is_empty() {
                return Err(ApiError(NeutronError::conflict(
                    "PortSecurityPortHasSecurityGroup",
                    "Port has security group associated. Cannot disable port security or ip address until security group is removed",
                )));
            }
            check_port_security(p.port_security_enabled, &p.security_groups, &p.allowed_address_pairs)?;
            if let Some(v) = &host_id {
                p.host_id = v.clone();
            }
            if let Some(v) = &profile {
                p.profile = v.clone();
            }
            if let Some(v) = &vif_type {
                p.vif_type = v.clone();
            }
            if let Some(v) = &vif_details {
                p.vif_details = v.clone();
            }
            if let Some(v) = &status {
                p.status = v.clone();
            }
            let new_exclusive = exclusive_keys(p);
            let new_members = membership_keys(p);
            let mut ops = Vec::new();
            for k in old_exclusive.iter().filter(|k| !new_exclusive.contains(k)) {
                ops.push(Op::Delete(k.clone()));
            }
            for k in new_exclusive.iter().filter(|k| !old_exclusive.contains(k)) {
                compares.push(Compare::Absent(k.clone()));
                ops.push(Op::Put(k.clone(), p.id.clone().into_bytes()));
            }
            for k in old_members.iter().filter(|k| !new_members.contains(k)) {
                ops.push(Op::Delete(k.clone()));
            }
            for k in new_members.iter().filter(|k| !old_members.contains(k)) {
                ops.push(Op::Put(k.clone(), Vec::new()));
            }
            compares.extend(l3.0);
            ops.extend(l3.1);
            Ok((compares, ops))
        })
        .await;
        drop(alloc);
        result
    }

    async fn delete(net: &Shared, ctx: &Ctx, id: &str) -> ApiResult<()> {
        resource::delete_with::<Port, _>(net, ctx, id, |db, p| {
            if service_owner(db, p) {
                return Err(ApiError(NeutronError::conflict(
                    "ServicePortInUse",
                    format!(
                        "Port {} cannot be deleted directly via the port API: has device owner {}.",
                        p.id, p.device_owner
                    ),
                )));
            }
            // Floating IPs let go of the port; its port forwardings go with it.
            let (compares, mut ops) = super::floatingips::release_port(db, ctx, p, None)?;
            ops.extend(delete_ops(p));
            Ok((compares, ops))
        })
        .await
    }
}
