//! The network driver: Docker networks are Neutron networks, endpoints are ports
//! bound through the agent. Every call can be repeated (Docker retries after a lost
//! connection) and finds what an earlier attempt made.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use kuryr_agent::state::PublishedPort;
use kuryr_model::{Network, Port, Subnet};
use serde_json::{Value, json};

use crate::ipam::{Selection, parse_bool, parse_cidr, parse_ip, the_one_named};
use crate::protocol::{self, EXPOSED_PORTS, GENERIC_OPTIONS, PORT_MAP};
use crate::{
    DEVICE_OWNER, NET_EXISTING_TAG, NET_PREFIX, NET_TAG_LH, NET_TAG_UH, Plugin, PluginError,
    PluginResult, SUBNET_PREFIX,
};

/// Docker ids are 64 hex digits; the two halves become Neutron tags.
pub(crate) fn check_docker_id(what: &str, id: &str) -> PluginResult<()> {
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(PluginError::BadRequest(format!(
            "{what} {id:?} is not a Docker id (64 hex digits)"
        )))
    }
}

fn id_tags(id: &str) -> [String; 2] {
    [
        format!("{NET_TAG_LH}{}", &id[..32]),
        format!("{NET_TAG_UH}{}", &id[32..]),
    ]
}

/// The veth end Docker moves into the container (kuryr-libnetwork's name).
pub(crate) fn container_ifname(port_id: &str) -> String {
    format!("t_c{port_id}").chars().take(14).collect()
}

/// `-o key=value` options: strings, whatever JSON type Docker gave them.
fn generic_options(options: &Option<BTreeMap<String, Value>>) -> BTreeMap<String, String> {
    let Some(Value::Object(m)) = options.as_ref().and_then(|o| o.get(GENERIC_OPTIONS)) else {
        return BTreeMap::new();
    };
    m.iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), v)
        })
        .collect()
}

fn protocol_name(proto: u8) -> Option<&'static str> {
    match proto {
        1 => Some("icmp"),
        6 => Some("tcp"),
        17 => Some("udp"),
        132 => Some("sctp"),
        _ => None,
    }
}

/// Sorted ports → inclusive ranges of consecutive ones.
fn ranges(mut ports: Vec<u16>) -> Vec<(u16, u16)> {
    ports.sort_unstable();
    ports.dedup();
    let mut out: Vec<(u16, u16)> = Vec::new();
    for p in ports {
        match out.last_mut() {
            Some((_, hi)) if hi.checked_add(1) == Some(p) => *hi = p,
            _ => out.push((p, p)),
        }
    }
    out
}

fn option_list<T: serde::de::DeserializeOwned>(
    options: &Option<BTreeMap<String, Value>>,
    key: &str,
) -> PluginResult<Vec<T>> {
    match options.as_ref().and_then(|o| o.get(key)) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| PluginError::BadRequest(format!("option {key} is not valid: {e}"))),
    }
}

impl Plugin {
    /// The Neutron network of a Docker network (found by its id tags).
    pub(crate) async fn neutron_network(&self, docker_id: &str) -> PluginResult<Option<Network>> {
        let [lh, uh] = id_tags(docker_id);
        let tags = format!("{lh},{uh}");
        let found = self
            .client
            .list_networks(&[("tags", tags.as_str())])
            .await
            .map_err(|e| PluginError::neutron("listing networks", e))?;
        Ok(found.into_iter().next())
    }

    async fn neutron_network_id(&self, docker_id: &str) -> PluginResult<String> {
        check_docker_id("NetworkID", docker_id)?;
        if let Some(id) = self.cache().networks.get(docker_id) {
            return Ok(id.clone());
        }
        let net = self.neutron_network(docker_id).await?.ok_or_else(|| {
            PluginError::NotFound(format!(
                "Neutron net associated with identifier {docker_id} doesn't exist."
            ))
        })?;
        self.cache()
            .networks
            .insert(docker_id.to_string(), net.id.clone());
        Ok(net.id)
    }

    pub(crate) async fn create_network(&self, req: protocol::CreateNetwork) -> PluginResult<Value> {
        check_docker_id("NetworkID", &req.network_id)?;
        let generic = generic_options(&req.options);
        let shared = match generic.get("neutron.net.shared") {
            Some(v) => parse_bool("neutron.net.shared", v)?,
            None => false,
        };
        let first = |d: &Option<Vec<protocol::IpamData>>| {
            d.as_ref()
                .and_then(|v| v.iter().find(|x| !x.pool.is_empty()))
                .cloned()
        };
        let (v4, v6) = (first(&req.ipv4_data), first(&req.ipv6_data));
        if v4.is_none() && v6.is_none() {
            return Err(PluginError::BadRequest(
                "the network has no address pool (IPv4Data and IPv6Data are empty)".into(),
            ));
        }
        let _serial = self.network_ops.lock().await;
        let [lh, uh] = id_tags(&req.network_id);
        let (net, made) = match self.neutron_network(&req.network_id).await? {
            Some(n) => (n, false), // a retry
            None => match self
                .adopt_network(&req.network_id, &generic, shared)
                .await?
            {
                Some(n) => (n, false),
                None => {
                    let n = self
                        .client
                        .create_network(json!({
                            "name": format!("{NET_PREFIX}{}", &req.network_id[..8]),
                            "admin_state_up": true,
                            "shared": shared,
                            "tags": [lh, uh],
                        }))
                        .await
                        .map_err(|e| PluginError::neutron("creating the network", e))?;
                    (n, true)
                }
            },
        };
        for (data, v6) in [(v4, false), (v6, true)] {
            let Some(data) = data else { continue };
            if let Err(e) = self.ensure_subnet(&net, &data, v6, &generic).await {
                if made {
                    // Nothing half made: the network goes with what it got.
                    self.remove_network(&net).await.ok();
                }
                return Err(e);
            }
        }
        self.cache()
            .networks
            .insert(req.network_id.clone(), net.id.clone());
        tracing::info!(docker = %req.network_id, network = %net.id, adopted = !made, "Docker network created");
        Ok(json!({}))
    }

    /// `-o neutron.net.uuid|name`: an existing network, tagged as Docker's and as
    /// adopted (kept when the Docker network goes).
    async fn adopt_network(
        &self,
        docker_id: &str,
        generic: &BTreeMap<String, String>,
        shared: bool,
    ) -> PluginResult<Option<Network>> {
        let net = if let Some(id) = generic.get("neutron.net.uuid") {
            self.client
                .get_network(id)
                .await
                .map_err(|e| PluginError::neutron(&format!("network {id}"), e))?
        } else if let Some(name) = generic.get("neutron.net.name") {
            let found = self
                .client
                .list_networks(&[("name", name)])
                .await
                .map_err(|e| PluginError::neutron("listing networks", e))?;
            the_one_named(found, "net", name)?
        } else {
            return Ok(None);
        };
        if generic.contains_key("neutron.net.shared") && net.shared != shared {
            return Err(PluginError::Conflict(format!(
                "network {} has shared={}, the option asks shared={shared}",
                net.id, net.shared
            )));
        }
        let mut tags = net.tags.clone();
        for t in id_tags(docker_id)
            .into_iter()
            .chain([format!("{NET_EXISTING_TAG}{}", &docker_id[..12])])
        {
            if !tags.contains(&t) {
                tags.push(t);
            }
        }
        self.client
            .set_tags("networks", &net.id, &tags)
            .await
            .map_err(|e| PluginError::neutron("tagging the network", e))?;
        tracing::info!(network = %net.id, "existing Neutron network adopted for Docker");
        Ok(Some(Network { tags, ..net }))
    }

    async fn ensure_subnet(
        &self,
        net: &Network,
        data: &protocol::IpamData,
        v6: bool,
        generic: &BTreeMap<String, String>,
    ) -> PluginResult<()> {
        let cidr = parse_cidr("pool", &data.pool)?;
        if matches!(cidr, IpNet::V6(_)) != v6 {
            return Err(PluginError::BadRequest(format!(
                "pool {cidr} given as IPv{}",
                if v6 { 6 } else { 4 }
            )));
        }
        let gateway = parse_ip("gateway", &data.gateway)?;
        let sel = Selection::from_options(generic, v6)?;
        let selected = self.selected_subnet(&sel).await?;
        let pool = self.pool_for(&cidr, &sel, selected.as_ref()).await?;
        let cidr_s = cidr.to_string();
        let existing: Vec<Subnet> = self
            .client
            .list_subnets(&[("network_id", net.id.as_str()), ("cidr", cidr_s.as_str())])
            .await
            .map_err(|e| PluginError::neutron("listing subnets", e))?;
        if existing.len() > 1 {
            return Err(PluginError::Conflict(format!(
                "network {} has {} subnets of {cidr}",
                net.id,
                existing.len()
            )));
        }
        if let Some(s) = existing.into_iter().next() {
            // An existing subnet: tagged with the pool, so its addresses are found.
            if let Some(p) = &pool
                && !s.tags.contains(&p.id)
            {
                let mut tags = s.tags.clone();
                tags.push(p.id.clone());
                self.client
                    .set_tags("subnets", &s.id, &tags)
                    .await
                    .map_err(|e| PluginError::neutron("tagging the subnet", e))?;
            }
            return Ok(());
        }
        let mut attrs = json!({
            "name": format!("{SUBNET_PREFIX}{cidr}"),
            "network_id": net.id,
            "ip_version": if v6 { 6 } else { 4 },
            "cidr": cidr_s,
            "enable_dhcp": false,
        });
        if let Some(g) = gateway {
            attrs["gateway_ip"] = json!(g.to_string());
        }
        if let Some(p) = &pool {
            attrs["subnetpool_id"] = json!(p.id);
            attrs["tags"] = json!([p.id]);
        }
        self.client
            .create_subnet(attrs)
            .await
            .map_err(|e| PluginError::neutron(&format!("creating the subnet {cidr}"), e))?;
        Ok(())
    }

    /// Deletes a network kuryr made, with its subnets and the ports kuryr left on it.
    async fn remove_network(&self, net: &Network) -> PluginResult<()> {
        let subnets = self
            .client
            .list_subnets(&[("network_id", net.id.as_str())])
            .await
            .map_err(|e| PluginError::neutron("listing subnets", e))?;
        for s in &subnets {
            self.delete_subnet_with_our_ports(s).await?;
        }
        match self.client.delete_network(&net.id).await {
            Ok(()) | Err(kuryr_client::ClientError::NotFound { .. }) => Ok(()),
            Err(e) => Err(PluginError::neutron("deleting the network", e)),
        }
    }

    pub(crate) async fn delete_network(&self, req: protocol::NetworkOnly) -> PluginResult<Value> {
        check_docker_id("NetworkID", &req.network_id)?;
        let _serial = self.network_ops.lock().await;
        self.cache().networks.remove(&req.network_id);
        let Some(net) = self.neutron_network(&req.network_id).await? else {
            tracing::warn!(docker = %req.network_id, "no Neutron network for this Docker network; nothing to delete");
            return Ok(json!({}));
        };
        let existing_tag = format!("{NET_EXISTING_TAG}{}", &req.network_id[..12]);
        if net.tags.contains(&existing_tag) {
            // Adopted: it stays, without Docker's tags and the subnets kuryr added.
            let [lh, uh] = id_tags(&req.network_id);
            let tags: Vec<String> = net
                .tags
                .iter()
                .filter(|t| **t != lh && **t != uh && **t != existing_tag)
                .cloned()
                .collect();
            let subnets = self
                .client
                .list_subnets(&[("network_id", net.id.as_str())])
                .await
                .map_err(|e| PluginError::neutron("listing subnets", e))?;
            for s in subnets.iter().filter(|s| s.name.starts_with(SUBNET_PREFIX)) {
                if let Err(e) = self.delete_subnet_with_our_ports(s).await {
                    tracing::warn!(subnet = %s.id, error = %e, "subnet left in place");
                }
            }
            self.client
                .set_tags("networks", &net.id, &tags)
                .await
                .map_err(|e| PluginError::neutron("untagging the network", e))?;
            return Ok(json!({}));
        }
        self.remove_network(&net).await?;
        tracing::info!(docker = %req.network_id, network = %net.id, "Docker network deleted");
        Ok(json!({}))
    }

    /// The port of an endpoint (found by its id tags); `None` if there is none.
    async fn endpoint_port(&self, endpoint_id: &str) -> PluginResult<Option<Port>> {
        check_docker_id("EndpointID", endpoint_id)?;
        let cached = self.cache().endpoints.get(endpoint_id).cloned();
        if let Some(id) = cached {
            if let Some((p, _)) = self.agent.view_port(&id) {
                return Ok(Some(p));
            }
            match self.client.get_port(&id).await {
                Ok(p) => return Ok(Some(p)),
                Err(kuryr_client::ClientError::NotFound { .. }) => {}
                Err(e) => return Err(PluginError::neutron("reading the port", e)),
            }
        }
        let [lh, uh] = id_tags(endpoint_id);
        let tags = format!("{lh},{uh}");
        let found = self
            .client
            .list_ports(&[("tags", tags.as_str())])
            .await
            .map_err(|e| PluginError::neutron("listing ports", e))?;
        Ok(found.into_iter().next())
    }

    pub(crate) async fn create_endpoint(
        &self,
        req: protocol::CreateEndpoint,
    ) -> PluginResult<Value> {
        check_docker_id("EndpointID", &req.endpoint_id)?;
        let net_id = self.neutron_network_id(&req.network_id).await?;
        let iface = req.interface.unwrap_or_default();
        let addresses: Vec<IpAddr> = [
            parse_ip("Interface.Address", &iface.address)?,
            parse_ip("Interface.AddressIPv6", &iface.address_ipv6)?,
        ]
        .into_iter()
        .flatten()
        .collect();
        if addresses.is_empty() {
            return Err(PluginError::BadRequest(
                "Interface address v4 or v6 not provided.".into(),
            ));
        }
        let mac = (!iface.mac_address.is_empty()).then(|| iface.mac_address.to_lowercase());
        if let Some(m) = &mac
            && !crate::valid_mac(m)
        {
            return Err(PluginError::BadRequest(format!(
                "Interface.MacAddress {m:?} is not a MAC address"
            )));
        }
        let ep_tags = id_tags(&req.endpoint_id);
        let ip_filter = format!("ip_address={}", addresses[0]);
        let mut found = self
            .client
            .list_ports(&[
                ("network_id", net_id.as_str()),
                ("fixed_ips", ip_filter.as_str()),
            ])
            .await
            .map_err(|e| PluginError::neutron("listing ports", e))?;
        found.retain(|p| p.fixed_ips.iter().any(|f| f.ip_address == addresses[0]));
        let port = match found.into_iter().next() {
            Some(p) => {
                if !p.device_id.is_empty() && p.device_id != req.endpoint_id {
                    return Err(PluginError::Conflict(format!(
                        "address {} is held by port {} of device {}",
                        addresses[0], p.id, p.device_id
                    )));
                }
                // The agent claims it for this host (binding:host_id) when it binds it.
                let mut attrs = json!({
                    "device_owner": DEVICE_OWNER,
                    "device_id": req.endpoint_id,
                    "admin_state_up": true,
                });
                if let Some(m) = &mac
                    && *m != p.mac_address
                {
                    attrs["mac_address"] = json!(m);
                }
                let needs_update = p.device_id != req.endpoint_id
                    || p.device_owner != DEVICE_OWNER
                    || attrs.get("mac_address").is_some();
                // The claim and the endpoint's tags are independent writes: at once.
                let mut tags = p.tags.clone();
                tags.extend(ep_tags.iter().filter(|t| !p.tags.contains(t)).cloned());
                let claim = async {
                    if needs_update {
                        self.client.update_port(&p.id, attrs).await.map(Some)
                    } else {
                        Ok(None)
                    }
                };
                let tag = async {
                    if tags.len() != p.tags.len() {
                        self.client.set_tags("ports", &p.id, &tags).await
                    } else {
                        Ok(())
                    }
                };
                let (claimed, tagged) = tokio::join!(claim, tag);
                tagged.map_err(|e| PluginError::neutron("tagging the port", e))?;
                match claimed.map_err(|e| PluginError::neutron("claiming the port", e))? {
                    Some(updated) => Port { tags, ..updated },
                    None => Port { tags, ..p },
                }
            }
            // Docker's own IPAM chose the address: the port is made here.
            None => {
                let fixed: Vec<Value> = addresses
                    .iter()
                    .map(|a| json!({"ip_address": a.to_string()}))
                    .collect();
                let mut attrs = json!({
                    "name": format!("{}-port", req.endpoint_id),
                    "network_id": net_id,
                    "admin_state_up": true,
                    "fixed_ips": fixed,
                    "device_owner": DEVICE_OWNER,
                    "device_id": req.endpoint_id,
                    "tags": [DEVICE_OWNER, ep_tags[0], ep_tags[1]],
                });
                if let Some(m) = &mac {
                    attrs["mac_address"] = json!(m);
                }
                self.client
                    .create_port(attrs)
                    .await
                    .map_err(|e| PluginError::neutron("creating the port", e))?
            }
        };
        self.cache()
            .endpoints
            .insert(req.endpoint_id.clone(), port.id.clone());
        self.agent
            .bind_handoff(&port, container_ifname(&port.id))
            .await
            .map_err(|e| PluginError::agent("binding the port", e))?;
        // Docker chose the MAC (the IPAM driver asks it to); the port has it. Only
        // when Docker sent none does it learn the port's.
        let iface = if mac.is_none() {
            json!({ "MacAddress": port.mac_address })
        } else {
            json!({})
        };
        Ok(json!({ "Interface": iface }))
    }

    pub(crate) async fn endpoint_info(&self, req: protocol::EndpointRef) -> PluginResult<Value> {
        check_docker_id("NetworkID", &req.network_id)?;
        Ok(match self.endpoint_port(&req.endpoint_id).await? {
            Some(p) => json!({ "Value": { "id": p.id, "status": p.status } }),
            None => json!({ "Value": {} }),
        })
    }

    pub(crate) async fn delete_endpoint(&self, req: protocol::EndpointRef) -> PluginResult<Value> {
        check_docker_id("NetworkID", &req.network_id)?;
        let Some(port) = self.endpoint_port(&req.endpoint_id).await? else {
            self.cache().endpoints.remove(&req.endpoint_id);
            return Ok(json!({}));
        };
        // The interface goes in the background (a veth, and with the network's last
        // port its bridge, take tens of ms to delete); Docker need not wait for it.
        self.agent
            .release(&port.id)
            .map_err(|e| PluginError::agent("unbinding the port", e))?;
        if port.name == format!("{}-port", req.endpoint_id) && crate::ipam::is_ours(&port) {
            // Made by CreateEndpoint for Docker's own IPAM: no ReleaseAddress will
            // come to this plugin for it.
            match self.client.delete_port(&port.id).await {
                Ok(()) | Err(kuryr_client::ClientError::NotFound { .. }) => {}
                Err(e) => return Err(PluginError::neutron("deleting the port", e)),
            }
            self.cache().endpoints.remove(&req.endpoint_id);
            return Ok(json!({}));
        }
        // Docker's ReleaseAddress follows at once and settles the port on the
        // server: ours are deleted, adopted ones given back unbound and untagged.
        self.cache().endpoints.remove(&req.endpoint_id);
        Ok(json!({}))
    }

    pub(crate) async fn join(&self, req: protocol::Join) -> PluginResult<protocol::JoinResponse> {
        check_docker_id("NetworkID", &req.network_id)?;
        let port = self.endpoint_port(&req.endpoint_id).await?.ok_or_else(|| {
            PluginError::NotFound(format!(
                "no port for endpoint {} (was it created?)",
                req.endpoint_id
            ))
        })?;
        let subnets = match self.agent.view_port(&port.id) {
            Some((_, s)) if s.len() == count_subnets(&port) => s,
            _ => {
                let mut out = Vec::new();
                for f in &port.fixed_ips {
                    if out.iter().any(|s: &Subnet| s.id == f.subnet_id) {
                        continue;
                    }
                    out.push(
                        self.client
                            .get_subnet(&f.subnet_id)
                            .await
                            .map_err(|e| PluginError::neutron("reading the subnet", e))?,
                    );
                }
                out
            }
        };
        let gateway = |v: u8| {
            subnets
                .iter()
                .filter(|s| s.ip_version == v)
                .find_map(|s| s.gateway_ip)
                .map(|g| g.to_string())
        };
        let static_routes = subnets
            .iter()
            .flat_map(|s| s.host_routes.iter())
            .map(|r| protocol::StaticRoute {
                destination: r.destination.clone(),
                route_type: 0,
                next_hop: Some(r.nexthop.clone()),
            })
            .collect();
        Ok(protocol::JoinResponse {
            interface_name: protocol::InterfaceName {
                src_name: container_ifname(&port.id),
                dst_prefix: "eth".into(),
            },
            gateway: gateway(4),
            gateway_ipv6: gateway(6),
            static_routes,
            disable_gateway_service: true,
        })
    }

    pub(crate) async fn leave(&self, req: protocol::EndpointRef) -> PluginResult<Value> {
        check_docker_id("NetworkID", &req.network_id)?;
        check_docker_id("EndpointID", &req.endpoint_id)?;
        Ok(json!({}))
    }

    pub(crate) async fn program_external(
        &self,
        req: protocol::ExternalConnectivity,
    ) -> PluginResult<Value> {
        check_docker_id("NetworkID", &req.network_id)?;
        let exposed: Vec<protocol::ExposedPort> = option_list(&req.options, EXPOSED_PORTS)?;
        let bindings: Vec<protocol::PortBinding> = option_list(&req.options, PORT_MAP)?;
        let port = self.endpoint_port(&req.endpoint_id).await?.ok_or_else(|| {
            PluginError::NotFound(format!("no port for endpoint {}", req.endpoint_id))
        })?;
        let published = published_ports(&port, &bindings)?;
        if !exposed.is_empty() {
            self.expose(&port, &exposed).await?;
        }
        if !published.is_empty() {
            self.agent
                .set_published(&port.id, published)
                .await
                .map_err(|e| PluginError::agent("publishing the ports", e))?;
        }
        Ok(json!({}))
    }

    /// `--expose`: a security group `<port>-exposed_ports` allowing the exposed
    /// ports in, added to the port's groups (kuryr-libnetwork's way).
    async fn expose(&self, port: &Port, exposed: &[protocol::ExposedPort]) -> PluginResult<()> {
        let mut by_proto: BTreeMap<&'static str, Vec<u16>> = BTreeMap::new();
        for e in exposed {
            let name = protocol_name(e.proto).ok_or_else(|| {
                PluginError::BadRequest(format!(
                    "exposed port protocol {} is not supported",
                    e.proto
                ))
            })?;
            by_proto.entry(name).or_default().push(e.port);
        }
        let name = format!("{}-exposed_ports", port.id);
        let existing = self
            .client
            .list_security_groups(&[("name", name.as_str())])
            .await
            .map_err(|e| PluginError::neutron("listing security groups", e))?;
        let sg = match existing.into_iter().next() {
            Some(sg) => sg, // a retry
            None => {
                let sg = self
                    .client
                    .create_security_group(json!({
                        "name": name,
                        "description": "Docker exposed ports created by Kuryr.",
                    }))
                    .await
                    .map_err(|e| PluginError::neutron("creating the security group", e))?;
                let ethertypes: Vec<&str> = ["IPv4", "IPv6"]
                    .into_iter()
                    .filter(|et| {
                        port.fixed_ips
                            .iter()
                            .any(|f| f.ip_address.is_ipv6() == (*et == "IPv6"))
                    })
                    .collect();
                let mut made = Ok(());
                'rules: for (proto, ports) in &by_proto {
                    for et in &ethertypes {
                        let spans = if *proto == "icmp" {
                            vec![(0, 0)]
                        } else {
                            ranges(ports.clone())
                        };
                        for (lo, hi) in spans {
                            let mut rule = json!({
                                "security_group_id": sg.id,
                                "direction": "ingress",
                                "ethertype": et,
                                "protocol": if *proto == "icmp" && *et == "IPv6" { "ipv6-icmp" } else { proto },
                            });
                            if *proto != "icmp" {
                                rule["port_range_min"] = json!(lo);
                                rule["port_range_max"] = json!(hi);
                            }
                            if let Err(e) = self.client.create_security_group_rule(rule).await {
                                made =
                                    Err(PluginError::neutron("creating a security group rule", e));
                                break 'rules;
                            }
                        }
                    }
                }
                if let Err(e) = made {
                    let _ = self.client.delete_security_group(&sg.id).await;
                    return Err(e);
                }
                sg
            }
        };
        if !port.security_groups.contains(&sg.id) {
            let mut groups = vec![sg.id.clone()];
            groups.extend(port.security_groups.iter().cloned());
            self.client
                .update_port(&port.id, json!({ "security_groups": groups }))
                .await
                .map_err(|e| PluginError::neutron("adding the security group to the port", e))?;
        }
        Ok(())
    }

    pub(crate) async fn revoke_external(&self, req: protocol::EndpointRef) -> PluginResult<Value> {
        check_docker_id("NetworkID", &req.network_id)?;
        let Some(port) = self.endpoint_port(&req.endpoint_id).await? else {
            return Ok(json!({}));
        };
        match self.agent.set_published(&port.id, Vec::new()).await {
            Ok(()) | Err(kuryr_agent::AgentError::NotFound(_)) => {}
            Err(e) => return Err(PluginError::agent("unpublishing the ports", e)),
        }
        let name = format!("{}-exposed_ports", port.id);
        let groups = self
            .client
            .list_security_groups(&[("name", name.as_str())])
            .await
            .map_err(|e| PluginError::neutron("listing security groups", e))?;
        if groups.is_empty() {
            return Ok(json!({}));
        }
        let keep: Vec<&String> = port
            .security_groups
            .iter()
            .filter(|g| !groups.iter().any(|x| x.id == **g))
            .collect();
        if keep.len() != port.security_groups.len()
            && let Err(e) = self
                .client
                .update_port(&port.id, json!({ "security_groups": keep }))
                .await
        {
            tracing::warn!(port = %port.id, error = %e, "could not remove the exposed-ports group");
        }
        for g in groups {
            if let Err(e) = self.client.delete_security_group(&g.id).await {
                tracing::warn!(group = %g.id, error = %e, "exposed-ports group left in place");
            }
        }
        Ok(json!({}))
    }
}

fn count_subnets(p: &Port) -> usize {
    let mut ids: Vec<&str> = p.fixed_ips.iter().map(|f| f.subnet_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids.len()
}

/// `-p` bindings → what the agent publishes. The container address is the port's
/// (of the host address's family); kuryr needs an explicit host port.
fn published_ports(
    port: &Port,
    bindings: &[protocol::PortBinding],
) -> PluginResult<Vec<PublishedPort>> {
    let mut out = Vec::new();
    for b in bindings {
        let protocol = match protocol_name(b.proto) {
            Some(p) if p != "icmp" => p,
            _ => {
                return Err(PluginError::BadRequest(format!(
                    "published port protocol {} is not supported",
                    b.proto
                )));
            }
        };
        if b.host_port == 0 {
            return Err(PluginError::BadRequest(format!(
                "kuryr publishes explicit host ports only: use -p HOSTPORT:{}",
                b.port
            )));
        }
        let host_ip = match b.host_ip.as_deref() {
            None | Some("") => None,
            Some(s) => match parse_ip("HostIP", s)? {
                Some(ip) if ip.is_unspecified() => None,
                other => other,
            },
        };
        let want_v6 = host_ip.is_some_and(|ip| ip.is_ipv6());
        let container_ip = match b
            .ip
            .as_deref()
            .map(|s| parse_ip("IP", s))
            .transpose()?
            .flatten()
        {
            Some(ip) => ip,
            None => port
                .fixed_ips
                .iter()
                .map(|f| f.ip_address)
                .find(|ip| ip.is_ipv6() == want_v6)
                .ok_or_else(|| {
                    PluginError::BadRequest(format!(
                        "port {} has no IPv{} address to publish to",
                        port.id,
                        if want_v6 { 6 } else { 4 }
                    ))
                })?,
        };
        out.push(PublishedPort {
            protocol: protocol.to_string(),
            host_ip,
            host_port: b.host_port,
            container_ip,
            container_port: b.port,
        });
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_ports_merge_into_ranges() {
        assert_eq!(
            ranges(vec![80, 1234, 1236, 1235, 443, 80, 1238]),
            vec![(80, 80), (443, 443), (1234, 1236), (1238, 1238)]
        );
        assert_eq!(ranges(vec![65535, 65534]), vec![(65534, 65535)]);
    }

    #[test]
    fn docker_ids_and_names() {
        let id = "a".repeat(32) + &"b".repeat(32);
        assert!(check_docker_id("NetworkID", &id).is_ok());
        assert!(check_docker_id("NetworkID", "abc").is_err());
        assert!(check_docker_id("NetworkID", &"z".repeat(64)).is_err());
        let [lh, uh] = id_tags(&id);
        assert_eq!(lh, format!("kuryr.net.uuid.lh:{}", "a".repeat(32)));
        assert_eq!(uh, format!("kuryr.net.uuid.uh:{}", "b".repeat(32)));
        assert_eq!(container_ifname("0123456789ab-cdef"), "t_c0123456789a");
    }

    #[test]
    fn generic_options_become_strings() {
        let opts: BTreeMap<String, Value> = serde_json::from_value(json!({
            "com.docker.network.generic": {"neutron.net.name": "n", "neutron.net.shared": true},
            "com.docker.network.enable_ipv6": false,
        }))
        .unwrap();
        let g = generic_options(&Some(opts));
        assert_eq!(g.get("neutron.net.name").map(String::as_str), Some("n"));
        assert_eq!(
            g.get("neutron.net.shared").map(String::as_str),
            Some("true")
        );
        assert!(generic_options(&None).is_empty());
    }
}
