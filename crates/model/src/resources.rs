//! Neutron resources as kuryr stores them. Field names are Neutron's API names, so
//! that serializing a resource gives (most of) its API representation.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ipam::IpRange;

fn unbound() -> String {
    "unbound".to_string()
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// A prefix length as Neutron shows it (a string, `"24"`) or as kuryr stores it (24).
fn prefix_len<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    match Value::deserialize(d)? {
        Value::Number(n) => n.as_u64().and_then(|n| u8::try_from(n).ok()),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| serde::de::Error::custom("a prefix length must be an integer 0 to 128"))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Network {
    pub id: String,
    pub name: String,
    pub project_id: String,
    pub admin_state_up: bool,
    pub shared: bool,
    pub mtu: u32,
    #[serde(rename = "router:external")]
    pub router_external: bool,
    // Admin-only attributes: absent from what other callers read (Neutron's policy).
    #[serde(rename = "provider:network_type", default)]
    pub network_type: String,
    #[serde(rename = "provider:physical_network")]
    pub physical_network: Option<String>,
    #[serde(rename = "provider:segmentation_id")]
    pub segmentation_id: Option<u32>,
    pub port_security_enabled: bool,
    pub is_default: bool,
    pub status: String,
    pub description: String,
    pub tags: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
    pub revision_number: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRoute {
    pub destination: String,
    pub nexthop: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Subnet {
    pub id: String,
    pub name: String,
    pub project_id: String,
    pub network_id: String,
    pub ip_version: u8,
    pub cidr: String,
    pub gateway_ip: Option<IpAddr>,
    pub allocation_pools: Vec<IpRange>,
    pub dns_nameservers: Vec<String>,
    pub host_routes: Vec<HostRoute>,
    pub enable_dhcp: bool,
    pub ipv6_address_mode: Option<String>,
    pub ipv6_ra_mode: Option<String>,
    pub subnetpool_id: Option<String>,
    pub description: String,
    pub tags: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
    pub revision_number: u64,
}

impl Subnet {
    /// Addresses of SLAAC / DHCPv6-stateless subnets come from the MAC, not the pool.
    pub fn is_auto_address(&self) -> bool {
        matches!(
            self.ipv6_address_mode.as_deref(),
            Some("slaac") | Some("dhcpv6-stateless")
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubnetPool {
    pub id: String,
    pub name: String,
    pub project_id: String,
    pub ip_version: u8,
    pub prefixes: Vec<String>,
    #[serde(deserialize_with = "prefix_len")]
    pub default_prefixlen: u8,
    #[serde(deserialize_with = "prefix_len")]
    pub min_prefixlen: u8,
    #[serde(deserialize_with = "prefix_len")]
    pub max_prefixlen: u8,
    pub shared: bool,
    pub is_default: bool,
    pub default_quota: Option<i64>,
    pub address_scope_id: Option<String>,
    pub description: String,
    pub tags: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
    pub revision_number: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixedIp {
    pub subnet_id: String,
    pub ip_address: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AddressPair {
    pub ip_address: String,
    pub mac_address: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Port {
    pub id: String,
    pub name: String,
    pub network_id: String,
    pub project_id: String,
    pub mac_address: String,
    pub admin_state_up: bool,
    pub status: String,
    pub device_id: String,
    pub device_owner: String,
    pub fixed_ips: Vec<FixedIp>,
    pub security_groups: Vec<String>,
    pub port_security_enabled: bool,
    pub allowed_address_pairs: Vec<AddressPair>,
    // The binding attributes are admin-only (agents: their host's): absent otherwise.
    #[serde(rename = "binding:host_id", default)]
    pub host_id: String,
    #[serde(rename = "binding:profile", default = "empty_object")]
    pub profile: Value,
    #[serde(rename = "binding:vif_type", default = "unbound")]
    pub vif_type: String,
    #[serde(rename = "binding:vif_details", default = "empty_object")]
    pub vif_details: Value,
    #[serde(rename = "binding:vnic_type")]
    pub vnic_type: String,
    pub description: String,
    pub tags: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
    pub revision_number: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecurityGroup {
    pub id: String,
    pub name: String,
    pub project_id: String,
    pub stateful: bool,
    pub description: String,
    pub tags: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
    pub revision_number: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecurityGroupRule {
    pub id: String,
    pub project_id: String,
    pub security_group_id: String,
    pub direction: String,
    pub ethertype: String,
    pub protocol: Option<String>,
    pub port_range_min: Option<u32>,
    pub port_range_max: Option<u32>,
    pub remote_ip_prefix: Option<String>,
    pub remote_group_id: Option<String>,
    pub description: String,
    pub created_at: String,
    pub updated_at: String,
    pub revision_number: u64,
}

/// direction, ethertype, protocol, port range, remote prefix, remote group.
pub type RuleIdentity = (
    String,
    String,
    Option<String>,
    Option<u32>,
    Option<u32>,
    Option<String>,
    Option<String>,
);

impl SecurityGroupRule {
    /// What makes two rules the same rule for duplicate detection.
    pub fn identity(&self) -> RuleIdentity {
        (
            self.direction.clone(),
            self.ethertype.clone(),
            self.protocol.clone(),
            self.port_range_min,
            self.port_range_max,
            self.remote_ip_prefix.clone(),
            self.remote_group_id.clone(),
        )
    }
}

/// A router as stored. Its interfaces are the ports whose `device_id` is the router
/// (owner `network:router_interface`); its gateway port is `gateway.port_id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Router {
    pub id: String,
    pub name: String,
    pub project_id: String,
    pub admin_state_up: bool,
    pub status: String,
    pub description: String,
    pub gateway: Option<RouterGateway>,
    pub routes: Vec<HostRoute>,
    pub tags: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
    pub revision_number: u64,
}

/// A router's external gateway: the network, whether ports without a floating IP
/// are SNATed, and the `network:router_gateway` port that holds its addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterGateway {
    pub network_id: String,
    pub enable_snat: bool,
    pub port_id: String,
}

/// A floating IP as stored. `floating_port_id` is its `network:floatingip` port on
/// the external network (it holds the address).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FloatingIp {
    pub id: String,
    pub project_id: String,
    pub floating_network_id: String,
    pub floating_ip_address: IpAddr,
    pub floating_port_id: String,
    pub port_id: Option<String>,
    pub fixed_ip_address: Option<IpAddr>,
    pub router_id: Option<String>,
    pub status: String,
    pub description: String,
    pub tags: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
    pub revision_number: u64,
}

/// A floating IP port forwarding: `protocol` traffic to the floating IP's
/// `external` ports goes to `internal_ip_address`'s `internal` ports on port
/// `internal_port_id`. Ranges are inclusive; a single port is `(p, p)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortForwarding {
    pub id: String,
    pub floatingip_id: String,
    pub project_id: String,
    pub protocol: String,
    pub internal_port_id: String,
    pub internal_ip_address: IpAddr,
    pub internal: (u16, u16),
    pub external: (u16, u16),
    pub description: String,
}

/// Per-project limits; -1 means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    pub network: i64,
    pub subnet: i64,
    pub subnetpool: i64,
    pub port: i64,
    pub security_group: i64,
    pub security_group_rule: i64,
    pub router: i64,
    pub floatingip: i64,
    /// Extra routes per router (Neutron's `router_route`).
    #[serde(default = "default_router_route")]
    pub router_route: i64,
}

fn default_router_route() -> i64 {
    30
}

impl Quota {
    /// The resource names, as Neutron's quota API and `[quotas] quota_<name>` call them.
    pub const NAMES: [&'static str; 9] = [
        "network",
        "subnet",
        "subnetpool",
        "port",
        "security_group",
        "security_group_rule",
        "router",
        "floatingip",
        "router_route",
    ];

    /// The limit of resource `name` (None: no such resource).
    pub fn slot(&mut self, name: &str) -> Option<&mut i64> {
        Some(match name {
            "network" => &mut self.network,
            "subnet" => &mut self.subnet,
            "subnetpool" => &mut self.subnetpool,
            "port" => &mut self.port,
            "security_group" => &mut self.security_group,
            "security_group_rule" => &mut self.security_group_rule,
            "router" => &mut self.router,
            "floatingip" => &mut self.floatingip,
            "router_route" => &mut self.router_route,
            _ => return None,
        })
    }
}

impl Default for Quota {
    /// Neutron's defaults.
    fn default() -> Self {
        Quota {
            network: 100,
            subnet: 100,
            subnetpool: -1,
            port: 500,
            security_group: 10,
            security_group_rule: 100,
            router: 10,
            floatingip: 50,
            router_route: default_router_route(),
        }
    }
}
