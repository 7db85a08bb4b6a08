//! The IPAM driver: pools are Neutron subnet pools, addresses are Neutron ports.
//! An address requested for an endpoint becomes a port at once (with the MAC Docker
//! chose), so that CreateEndpoint only has to claim it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use kuryr_model::{Port, Subnet, SubnetPool};
use serde_json::{Value, json};

use crate::protocol::{self, GATEWAY_REQUEST, MAC_OPTION, REQUEST_ADDRESS_TYPE};
use crate::{
    DEVICE_OWNER, POOL_EXISTING_TAG, POOL_PREFIX, PORT_EXISTING_TAG, Plugin, PluginError,
    PluginResult, SUBNET_PREFIX, UNBOUND_PORT_NAME,
};

/// The Neutron objects a user selected with `-o` / `--ipam-opt` for one IP version.
#[derive(Debug, Default)]
pub(crate) struct Selection {
    pub subnet_uuid: Option<String>,
    pub subnet_name: Option<String>,
    pub pool_uuid: Option<String>,
    pub pool_name: Option<String>,
    pub shared: bool,
}

pub(crate) fn parse_bool(key: &str, v: &str) -> PluginResult<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err(PluginError::BadRequest(format!(
            "option {key}={v:?} is not a boolean"
        ))),
    }
}

impl Selection {
    pub fn from_options(opts: &BTreeMap<String, String>, v6: bool) -> PluginResult<Selection> {
        let key = |what: &str, attr: &str| {
            if v6 {
                format!("neutron.{what}.v6.{attr}")
            } else {
                format!("neutron.{what}.{attr}")
            }
        };
        let get = |k: String| opts.get(&k).filter(|v| !v.is_empty()).cloned();
        Ok(Selection {
            subnet_uuid: get(key("subnet", "uuid")),
            subnet_name: get(key("subnet", "name")),
            pool_uuid: get(key("pool", "uuid")),
            pool_name: get(key("pool", "name")),
            shared: match opts.get("neutron.net.shared") {
                Some(v) => parse_bool("neutron.net.shared", v)?,
                None => false,
            },
        })
    }
}

/// A CIDR in Neutron's canonical form (host bits cleared).
pub(crate) fn parse_cidr(what: &str, s: &str) -> PluginResult<IpNet> {
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|_| PluginError::BadRequest(format!("{what} {s:?} is not a CIDR")))
}

/// An address as Docker sends it: plain, or with a prefix length.
pub(crate) fn parse_ip(what: &str, s: &str) -> PluginResult<Option<IpAddr>> {
    if s.is_empty() {
        return Ok(None);
    }
    let plain = s.split_once('/').map_or(s, |(ip, _)| ip);
    plain
        .parse()
        .map(Some)
        .map_err(|_| PluginError::BadRequest(format!("{what} {s:?} is not an IP address")))
}

/// Neutron's default gateway: the first address after the network's own.
fn first_host(net: &IpNet) -> Option<IpAddr> {
    let next = match net.network() {
        IpAddr::V4(a) => IpAddr::V4(u32::from(a).checked_add(1)?.into()),
        IpAddr::V6(a) => IpAddr::V6(u128::from(a).checked_add(1)?.into()),
    };
    net.contains(&next).then_some(next)
}

impl Plugin {
    pub(crate) async fn selected_subnet(&self, sel: &Selection) -> PluginResult<Option<Subnet>> {
        if let Some(id) = &sel.subnet_uuid {
            return self
                .client
                .get_subnet(id)
                .await
                .map(Some)
                .map_err(|e| PluginError::neutron(&format!("subnet {id}"), e));
        }
        if let Some(name) = &sel.subnet_name {
            let found = self
                .client
                .list_subnets(&[("name", name)])
                .await
                .map_err(|e| PluginError::neutron("listing subnets", e))?;
            return the_one_named(found, "subnet", name).map(Some);
        }
        Ok(None)
    }

    pub(crate) async fn selected_pool(&self, sel: &Selection) -> PluginResult<Option<SubnetPool>> {
        if let Some(id) = &sel.pool_uuid {
            return self
                .client
                .get_subnetpool(id)
                .await
                .map(Some)
                .map_err(|e| PluginError::neutron(&format!("subnet pool {id}"), e));
        }
        if let Some(name) = &sel.pool_name {
            let found = self
                .client
                .list_subnetpools(&[("name", name)])
                .await
                .map_err(|e| PluginError::neutron("listing subnet pools", e))?;
            return the_one_named(found, "pool", name).map(Some);
        }
        Ok(None)
    }

    /// The pool a Docker pool of `cidr` maps to: the selected one if its prefix is
    /// the CIDR, else kuryr's own `kuryrPool-<cidr>` (made by RequestPool). `None`
    /// when there is none (Docker's own IPAM with the kuryr network driver).
    pub(crate) async fn pool_for(
        &self,
        cidr: &IpNet,
        sel: &Selection,
        subnet: Option<&Subnet>,
    ) -> PluginResult<Option<SubnetPool>> {
        if let Some(p) = self.selected_pool(sel).await?
            && first_prefix(&p) == Some(*cidr)
        {
            return Ok(Some(p));
        }
        let name = format!("{POOL_PREFIX}{cidr}");
        let found = self
            .client
            .list_subnetpools(&[("name", &name)])
            .await
            .map_err(|e| PluginError::neutron("listing subnet pools", e))?;
        Ok(found
            .into_iter()
            .find(|p| subnet.is_none_or(|s| p.tags.contains(&s.id))))
    }

    pub(crate) async fn request_pool(
        &self,
        req: protocol::RequestPool,
    ) -> PluginResult<protocol::RequestPoolResponse> {
        let _serial = self.network_ops.lock().await;
        let opts = req.options.unwrap_or_default();
        let sel = Selection::from_options(&opts, req.v6)?;
        let subnet = self.selected_subnet(&sel).await?;
        let asked = if req.sub_pool.is_empty() {
            &req.pool
        } else {
            &req.sub_pool
        };
        let cidr = if !asked.is_empty() {
            parse_cidr("pool", asked)?
        } else if let Some(s) = &subnet {
            parse_cidr("subnet cidr", &s.cidr)?
        } else {
            return Err(PluginError::BadRequest(format!(
                "kuryr's IPAM needs the IPv{} subnet: pass --subnet, or select an existing Neutron \
                 subnet with --ipam-opt neutron.subnet{}.uuid=ID (or .name=NAME)",
                if req.v6 { 6 } else { 4 },
                if req.v6 { ".v6" } else { "" },
            )));
        };
        if matches!(cidr, IpNet::V6(_)) != req.v6 {
            return Err(PluginError::BadRequest(format!(
                "pool {cidr} is not an IPv{} pool",
                if req.v6 { 6 } else { 4 }
            )));
        }
        if let Some(s) = &subnet
            && parse_cidr("subnet cidr", &s.cidr)? != cidr
        {
            return Err(PluginError::BadRequest(format!(
                "the selected subnet {} is {}, not {cidr}",
                s.id, s.cidr
            )));
        }
        // A pool the user selected, used as is when its prefix is the CIDR.
        if let Some(p) = self.selected_pool(&sel).await?
            && first_prefix(&p) == Some(cidr)
        {
            if p.shared != sel.shared {
                return Err(PluginError::Conflict(format!(
                    "subnet pool {} has shared={}, the network asks shared={}",
                    p.id, p.shared, sel.shared
                )));
            }
            if !p.tags.iter().any(|t| t == POOL_EXISTING_TAG) {
                let mut tags = p.tags.clone();
                tags.push(POOL_EXISTING_TAG.into());
                self.client
                    .set_tags("subnetpools", &p.id, &tags)
                    .await
                    .map_err(|e| PluginError::neutron("tagging the subnet pool", e))?;
            }
            return Ok(self.pool_reply(&p.id, cidr));
        }
        // kuryr's own pool for the CIDR (the same one again for an identical request).
        if let Some(p) = self
            .pool_for(&cidr, &Selection::default(), subnet.as_ref())
            .await?
        {
            return Ok(self.pool_reply(&p.id, cidr));
        }
        let mut attrs = json!({
            "name": format!("{POOL_PREFIX}{cidr}"),
            "prefixes": [cidr.to_string()],
            "default_prefixlen": cidr.prefix_len(),
            "min_prefixlen": cidr.prefix_len(),
            "shared": sel.shared,
        });
        if let Some(s) = &subnet {
            attrs["tags"] = json!([s.id]);
        }
        let p = self
            .client
            .create_subnetpool(attrs)
            .await
            .map_err(|e| PluginError::neutron("creating the subnet pool", e))?;
        tracing::info!(pool = %p.id, %cidr, "subnet pool created for Docker");
        Ok(self.pool_reply(&p.id, cidr))
    }

    fn pool_reply(&self, id: &str, cidr: IpNet) -> protocol::RequestPoolResponse {
        self.cache().pools.insert(id.to_string(), cidr);
        protocol::RequestPoolResponse {
            pool_id: id.to_string(),
            pool: cidr.to_string(),
            data: BTreeMap::new(),
        }
    }

    /// A pool's prefix, from memory or Neutron; `None` if the pool does not exist.
    async fn pool_prefix(&self, pool_id: &str) -> PluginResult<Option<IpNet>> {
        if let Some(c) = self.cache().pools.get(pool_id) {
            return Ok(Some(*c));
        }
        match self.client.get_subnetpool(pool_id).await {
            Ok(p) => {
                let Some(c) = first_prefix(&p) else {
                    return Ok(None);
                };
                self.cache().pools.insert(pool_id.to_string(), c);
                Ok(Some(c))
            }
            Err(kuryr_client::ClientError::NotFound { .. }) => Ok(None),
            Err(e) => Err(PluginError::neutron("reading the subnet pool", e)),
        }
    }

    /// The Neutron subnet behind a pool: the one made from it, else the one of its
    /// prefix tagged with it (an existing subnet a network adopted).
    pub(crate) async fn subnet_of_pool(&self, pool_id: &str) -> PluginResult<Option<Subnet>> {
        let Some(prefix) = self.pool_prefix(pool_id).await? else {
            return Ok(None);
        };
        let from_pool = self
            .client
            .list_subnets(&[("subnetpool_id", pool_id)])
            .await
            .map_err(|e| PluginError::neutron("listing subnets", e))?;
        if from_pool.len() == 1 {
            return Ok(from_pool.into_iter().next());
        }
        let prefix_s = prefix.to_string();
        if let Some(s) = from_pool.iter().find(|s| s.cidr == prefix_s) {
            return Ok(Some(s.clone()));
        }
        let tagged = self
            .client
            .list_subnets(&[("cidr", &prefix_s), ("tags", pool_id)])
            .await
            .map_err(|e| PluginError::neutron("listing subnets", e))?;
        Ok(tagged.into_iter().next())
    }

    pub(crate) async fn request_address(
        &self,
        req: protocol::RequestAddress,
    ) -> PluginResult<protocol::RequestAddressResponse> {
        let opts = req.options.unwrap_or_default();
        let gateway_request =
            opts.get(REQUEST_ADDRESS_TYPE).map(String::as_str) == Some(GATEWAY_REQUEST);
        let mac = opts.get(MAC_OPTION).filter(|m| !m.is_empty()).cloned();
        if let Some(m) = &mac
            && !crate::valid_mac(m)
        {
            return Err(PluginError::BadRequest(format!(
                "{MAC_OPTION} {m:?} is not a MAC address"
            )));
        }
        let addr = parse_ip("Address", &req.address)?;
        let Some(prefix) = self.pool_prefix(&req.pool_id).await? else {
            return Err(PluginError::NotFound(format!(
                "subnet pool {} does not exist",
                req.pool_id
            )));
        };
        if let Some(a) = addr
            && !prefix.contains(&a)
        {
            return Err(PluginError::BadRequest(format!(
                "address {a} is not in pool {prefix}"
            )));
        }
        let with_len = |ip: IpAddr| format!("{ip}/{}", prefix.prefix_len());
        let subnet = self.subnet_of_pool(&req.pool_id).await?;
        if gateway_request || mac.is_none() {
            // The gateway (or an auxiliary address) of a network being created: the
            // subnet does not exist yet, or it does and has its gateway.
            let address = match (&subnet, addr) {
                (Some(s), None) => s.gateway_ip.ok_or_else(|| {
                    PluginError::Conflict(format!("subnet {} has no gateway", s.id))
                })?,
                (Some(s), Some(a)) if gateway_request && s.gateway_ip.is_some_and(|g| g != a) => {
                    return Err(PluginError::Conflict(format!(
                        "gateway {a} does not match subnet {}'s gateway {}",
                        s.id,
                        s.gateway_ip.map(|g| g.to_string()).unwrap_or_default()
                    )));
                }
                (_, Some(a)) => a,
                (None, None) => first_host(&prefix).ok_or_else(|| {
                    PluginError::BadRequest(format!("pool {prefix} has no room for a gateway"))
                })?,
            };
            return Ok(protocol::RequestAddressResponse {
                address: with_len(address),
                data: BTreeMap::new(),
            });
        }
        let subnet = subnet.ok_or_else(|| {
            PluginError::NotFound(format!("Subnet with pool {} does not exist.", req.pool_id))
        })?;
        let port = self.port_for_address(&subnet, addr, mac.as_deref()).await?;
        let ip = port
            .fixed_ips
            .iter()
            .find(|f| f.subnet_id == subnet.id)
            .map(|f| f.ip_address)
            .ok_or_else(|| {
                PluginError::Failed(format!("port {} has no address on {}", port.id, subnet.id))
            })?;
        let len = parse_cidr("subnet cidr", &subnet.cidr)?.prefix_len();
        Ok(protocol::RequestAddressResponse {
            address: format!("{ip}/{len}"),
            data: BTreeMap::new(),
        })
    }

    /// The port holding an endpoint's address: an existing one (adopted, or ours
    /// from a retried request or the other IP version's request), else a new one.
    async fn port_for_address(
        &self,
        subnet: &Subnet,
        addr: Option<IpAddr>,
        mac: Option<&str>,
    ) -> PluginResult<Port> {
        let mut candidates = Vec::new();
        if let Some(a) = addr {
            let ip_filter = format!("ip_address={a}");
            candidates = self
                .client
                .list_ports(&[
                    ("network_id", subnet.network_id.as_str()),
                    ("fixed_ips", ip_filter.as_str()),
                ])
                .await
                .map_err(|e| PluginError::neutron("listing ports", e))?;
            candidates.retain(|p| {
                p.fixed_ips
                    .iter()
                    .any(|f| f.subnet_id == subnet.id && f.ip_address == a)
            });
        }
        if candidates.is_empty()
            && let Some(m) = mac
        {
            candidates = self
                .client
                .list_ports(&[
                    ("network_id", subnet.network_id.as_str()),
                    ("mac_address", m),
                ])
                .await
                .map_err(|e| PluginError::neutron("listing ports", e))?;
            // Only a port still free (or ours, half made) is taken by MAC.
            candidates.retain(|p| is_ours(p) || p.device_id.is_empty());
        }
        if let Some(port) = candidates.into_iter().next() {
            return self.take_port(port, subnet, addr).await;
        }
        let mut fixed = json!({ "subnet_id": subnet.id });
        if let Some(a) = addr {
            fixed["ip_address"] = json!(a.to_string());
        }
        let mut attrs = json!({
            "name": UNBOUND_PORT_NAME,
            "network_id": subnet.network_id,
            "admin_state_up": true,
            "fixed_ips": [fixed],
            "device_owner": DEVICE_OWNER,
            "tags": [DEVICE_OWNER],
        });
        if let Some(m) = mac {
            attrs["mac_address"] = json!(m);
        }
        self.client
            .create_port(attrs)
            .await
            .map_err(|e| PluginError::neutron("creating the port", e))
    }

    async fn take_port(
        &self,
        port: Port,
        subnet: &Subnet,
        addr: Option<IpAddr>,
    ) -> PluginResult<Port> {
        if is_ours(&port) && !port.device_id.is_empty() {
            // An endpoint's port: the address is in use.
            return Err(PluginError::Conflict(format!(
                "address {} is in use by endpoint {} (port {})",
                addr.map(|a| a.to_string()).unwrap_or_default(),
                port.device_id,
                port.id
            )));
        }
        if is_ours(&port) {
            if port.fixed_ips.iter().any(|f| f.subnet_id == subnet.id) {
                return Ok(port); // a retried request
            }
            // The other IP version of the same endpoint: one port holds both.
            let mut fixed: Vec<Value> = port
                .fixed_ips
                .iter()
                .map(|f| json!({"subnet_id": f.subnet_id, "ip_address": f.ip_address.to_string()}))
                .collect();
            let mut new = json!({ "subnet_id": subnet.id });
            if let Some(a) = addr {
                new["ip_address"] = json!(a.to_string());
            }
            fixed.push(new);
            return self
                .client
                .update_port(&port.id, json!({ "fixed_ips": fixed }))
                .await
                .map_err(|e| PluginError::neutron("adding the address to the port", e));
        }
        if !port.device_id.is_empty() || (!port.host_id.is_empty() && port.host_id != self.host) {
            return Err(PluginError::Conflict(format!(
                "address {} is held by port {} in use by {:?} on {:?}",
                addr.map(|a| a.to_string()).unwrap_or_default(),
                port.id,
                port.device_id,
                port.host_id
            )));
        }
        // An existing, free Neutron port: adopted, and given back on release.
        let mut tags = port.tags.clone();
        tags.push(PORT_EXISTING_TAG.into());
        self.client
            .set_tags("ports", &port.id, &tags)
            .await
            .map_err(|e| PluginError::neutron("tagging the port", e))?;
        tracing::info!(port = %port.id, "existing Neutron port adopted for Docker");
        Ok(Port { tags, ..port })
    }

    pub(crate) async fn release_address(
        &self,
        req: protocol::ReleaseAddress,
    ) -> PluginResult<Value> {
        let Some(addr) = parse_ip("Address", &req.address)? else {
            return Err(PluginError::BadRequest("Address is empty".into()));
        };
        let Some(subnet) = self.subnet_of_pool(&req.pool_id).await? else {
            return Ok(json!({}));
        };
        let ip_filter = format!("ip_address={addr}");
        let ports = self
            .client
            .list_ports(&[
                ("network_id", subnet.network_id.as_str()),
                ("fixed_ips", ip_filter.as_str()),
            ])
            .await
            .map_err(|e| PluginError::neutron("listing ports", e))?;
        for p in ports {
            if !p
                .fixed_ips
                .iter()
                .any(|f| f.subnet_id == subnet.id && f.ip_address == addr)
            {
                continue;
            }
            if p.tags.iter().any(|t| t == PORT_EXISTING_TAG) {
                self.give_back(&p).await?;
            } else if is_ours(&p) {
                let elsewhere = self.bound_elsewhere(&p).await?;
                if elsewhere || self.agent.is_bound(&p.id) {
                    // Still an endpoint's (here or on another host): Docker releases an
                    // address only after DeleteEndpoint, so this is not its port.
                    tracing::warn!(port = %p.id, address = %addr, "not releasing an address in use");
                    continue;
                }
                match self.client.delete_port(&p.id).await {
                    Ok(()) | Err(kuryr_client::ClientError::NotFound { .. }) => {}
                    Err(e) => return Err(PluginError::neutron("deleting the port", e)),
                }
            }
            // Anything else (a router's or DHCP port) is not ours to touch.
        }
        Ok(json!({}))
    }

    /// Whether a port is bound to another host. The plugin's own credential may not
    /// see `binding:host_id` (Neutron shows it to admins and services): what it does not
    /// see, the agent is asked, which may read ports of this host and unbound ones only.
    async fn bound_elsewhere(&self, p: &Port) -> PluginResult<bool> {
        if !p.host_id.is_empty() {
            return Ok(p.host_id != self.host);
        }
        match self.agent.client().get_port(&p.id).await {
            Ok(seen) => Ok(!seen.host_id.is_empty() && seen.host_id != self.host),
            Err(kuryr_client::ClientError::NotFound { .. }) => Ok(true),
            Err(kuryr_client::ClientError::Api { status: 403, .. }) => Ok(true),
            Err(e) => Err(PluginError::neutron("reading the port's binding", e)),
        }
    }

    /// An adopted port goes back as it was found: unbound, untagged. The binding is
    /// cleared by the agent (setting `binding:host_id` is not the plugin's to do).
    async fn give_back(&self, p: &Port) -> PluginResult<()> {
        self.agent
            .unclaim(&p.id)
            .await
            .map_err(|e| PluginError::agent("unbinding the adopted port", e))?;
        self.client
            .update_port(&p.id, json!({"device_owner": "", "device_id": ""}))
            .await
            .map_err(|e| PluginError::neutron("releasing the adopted port", e))?;
        let tags: Vec<String> = p
            .tags
            .iter()
            .filter(|t| {
                *t != PORT_EXISTING_TAG
                    && !t.starts_with(crate::NET_TAG_LH)
                    && !t.starts_with(crate::NET_TAG_UH)
            })
            .cloned()
            .collect();
        self.client
            .set_tags("ports", &p.id, &tags)
            .await
            .map_err(|e| PluginError::neutron("untagging the adopted port", e))
    }

    pub(crate) async fn release_pool(&self, req: protocol::ReleasePool) -> PluginResult<Value> {
        let _serial = self.network_ops.lock().await;
        let pool = match self.client.get_subnetpool(&req.pool_id).await {
            Ok(p) => p,
            Err(kuryr_client::ClientError::NotFound { .. }) => return Ok(json!({})),
            Err(e) => return Err(PluginError::neutron("reading the subnet pool", e)),
        };
        self.cache().pools.remove(&pool.id);
        // Subnets that were tagged with it (adopted ones) lose the tag.
        let tagged = self
            .client
            .list_subnets(&[("tags", pool.id.as_str())])
            .await
            .map_err(|e| PluginError::neutron("listing subnets", e))?;
        for s in tagged {
            let tags: Vec<String> = s.tags.iter().filter(|t| **t != pool.id).cloned().collect();
            if let Err(e) = self.client.set_tags("subnets", &s.id, &tags).await {
                tracing::warn!(subnet = %s.id, error = %e, "could not untag the subnet");
            }
        }
        if pool.tags.iter().any(|t| t == POOL_EXISTING_TAG) {
            let tags: Vec<String> = pool
                .tags
                .iter()
                .filter(|t| *t != POOL_EXISTING_TAG)
                .cloned()
                .collect();
            self.client
                .set_tags("subnetpools", &pool.id, &tags)
                .await
                .map_err(|e| PluginError::neutron("untagging the subnet pool", e))?;
            return Ok(json!({}));
        }
        let made = self
            .client
            .list_subnets(&[("subnetpool_id", pool.id.as_str())])
            .await
            .map_err(|e| PluginError::neutron("listing subnets", e))?;
        for s in made.iter().filter(|s| s.name.starts_with(SUBNET_PREFIX)) {
            self.delete_subnet_with_our_ports(s).await?;
        }
        match self.client.delete_subnetpool(&pool.id).await {
            Ok(()) | Err(kuryr_client::ClientError::NotFound { .. }) => {}
            Err(e) => {
                tracing::warn!(pool = %pool.id, error = %e, "subnet pool left in place");
            }
        }
        Ok(json!({}))
    }

    /// Deletes a subnet kuryr made; ports kuryr made that are still on it (a
    /// container killed with its daemon) go first. Someone else's port keeps it.
    pub(crate) async fn delete_subnet_with_our_ports(&self, s: &Subnet) -> PluginResult<()> {
        let filter = format!("subnet_id={}", s.id);
        let ports = self
            .client
            .list_ports(&[
                ("network_id", s.network_id.as_str()),
                ("fixed_ips", filter.as_str()),
            ])
            .await
            .map_err(|e| PluginError::neutron("listing ports", e))?;
        for p in ports
            .iter()
            .filter(|p| is_ours(p) && p.device_id.is_empty())
        {
            let _ = self.client.delete_port(&p.id).await;
        }
        match self.client.delete_subnet(&s.id).await {
            Ok(()) | Err(kuryr_client::ClientError::NotFound { .. }) => Ok(()),
            Err(e) => Err(PluginError::neutron(
                &format!("deleting subnet {} ({})", s.id, s.cidr),
                e,
            )),
        }
    }
}

/// The single Neutron object a `neutron.<kind>.name` option names (names need not
/// be unique in Neutron; an ambiguous one is refused, not guessed).
pub(crate) fn the_one_named<T>(mut found: Vec<T>, kind: &str, name: &str) -> PluginResult<T> {
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(PluginError::NotFound(format!(
            "Neutron {kind} named {name:?} does not exist"
        ))),
        n => Err(PluginError::Conflict(format!(
            "{n} Neutron {kind}s are named {name:?}: select one by neutron.{kind}.uuid"
        ))),
    }
}

pub(crate) fn first_prefix(p: &SubnetPool) -> Option<IpNet> {
    p.prefixes
        .first()
        .and_then(|c| c.parse::<IpNet>().ok())
        .map(|n| n.trunc())
}

/// A port kuryr made for Docker (not one it adopted).
pub(crate) fn is_ours(p: &Port) -> bool {
    p.tags.iter().any(|t| t == DEVICE_OWNER) && !p.tags.iter().any(|t| t == PORT_EXISTING_TAG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_gateway_is_the_first_address_after_the_network() {
        let g = |c: &str| first_host(&c.parse().unwrap()).map(|a| a.to_string());
        assert_eq!(g("10.1.0.0/24").as_deref(), Some("10.1.0.1"));
        assert_eq!(g("fd00:5::/64").as_deref(), Some("fd00:5::1"));
        assert_eq!(g("10.1.0.7/32"), None);
    }

    #[test]
    fn options_select_per_ip_version() {
        let opts: BTreeMap<String, String> = [
            ("neutron.subnet.uuid", "s4"),
            ("neutron.subnet.v6.name", "s6"),
            ("neutron.pool.v6.uuid", "p6"),
            ("neutron.net.shared", "True"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let v4 = Selection::from_options(&opts, false).unwrap();
        assert_eq!(v4.subnet_uuid.as_deref(), Some("s4"));
        assert!(v4.pool_uuid.is_none() && v4.shared);
        let v6 = Selection::from_options(&opts, true).unwrap();
        assert_eq!(v6.subnet_name.as_deref(), Some("s6"));
        assert_eq!(v6.pool_uuid.as_deref(), Some("p6"));
        let bad: BTreeMap<String, String> =
            [("neutron.net.shared".to_string(), "maybe".to_string())].into();
        assert!(Selection::from_options(&bad, false).is_err());
    }

    #[test]
    fn addresses_as_docker_writes_them() {
        assert_eq!(parse_ip("a", "").unwrap(), None);
        assert_eq!(
            parse_ip("a", "10.0.0.5/24").unwrap(),
            "10.0.0.5".parse().ok()
        );
        assert!(parse_ip("a", "10.0.0.500").is_err());
        assert_eq!(
            parse_cidr("p", "10.0.0.5/24").unwrap().to_string(),
            "10.0.0.0/24"
        );
    }
}
