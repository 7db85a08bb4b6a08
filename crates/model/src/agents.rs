//! Agents and the host view: what `kuryr agent` reports about itself, and what the
//! server streams to it (only the objects that host needs).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    FloatingIp, Network, Port, PortForwarding, Router, SecurityGroup, SecurityGroupRule, Subnet,
};

/// `agent_type` of kuryr's host agent, as `openstack network agent list` shows it.
pub const AGENT_TYPE: &str = "Kuryr agent";
/// `binary` of kuryr's host agent.
pub const AGENT_BINARY: &str = "kuryr-agent";

/// A registered agent as stored. `alive` is not stored: the server derives it from
/// `heartbeat_timestamp` and its `--agent-down-time`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Agent {
    pub id: String,
    pub agent_type: String,
    pub binary: String,
    pub host: String,
    pub topic: String,
    pub admin_state_up: bool,
    pub availability_zone: Option<String>,
    pub configurations: Value,
    pub description: String,
    pub created_at: String,
    pub started_at: String,
    pub heartbeat_timestamp: String,
    /// Unix seconds of the last heartbeat (what `alive` is computed from).
    #[serde(default)]
    pub heartbeat_unix: i64,
}

/// What an agent sends with each heartbeat (`PUT /v2.0/kuryr/agents/{host}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentReport {
    pub host: String,
    /// The underlay address other hosts send VXLAN traffic to.
    pub tunneling_ip: String,
    /// physical network name → host interface, for flat networks.
    #[serde(default)]
    pub interface_mappings: std::collections::BTreeMap<String, String>,
    /// Unix seconds at which this agent process started (a change = a restart).
    pub started_at_unix: i64,
    /// Ports currently realized on this host.
    #[serde(default)]
    pub devices: u64,
}

/// The VTEP of one host: where VXLAN traffic for its ports goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostVtep {
    pub host: String,
    pub tunneling_ip: String,
}

/// Full objects, per kind.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HostObjects {
    #[serde(default)]
    pub networks: Vec<Network>,
    #[serde(default)]
    pub subnets: Vec<Subnet>,
    #[serde(default)]
    pub ports: Vec<Port>,
    #[serde(default)]
    pub security_groups: Vec<SecurityGroup>,
    #[serde(default)]
    pub security_group_rules: Vec<SecurityGroupRule>,
    #[serde(default)]
    pub vteps: Vec<HostVtep>,
    #[serde(default)]
    pub routers: Vec<Router>,
    #[serde(default)]
    pub floatingips: Vec<FloatingIp>,
    #[serde(default)]
    pub port_forwardings: Vec<PortForwarding>,
    #[serde(default)]
    pub loadbalancers: Vec<crate::LoadBalancer>,
    #[serde(default)]
    pub listeners: Vec<crate::Listener>,
    #[serde(default)]
    pub pools: Vec<crate::Pool>,
    #[serde(default)]
    pub members: Vec<crate::Member>,
    #[serde(default)]
    pub healthmonitors: Vec<crate::HealthMonitor>,
}

/// Object ids per kind (`vteps` are named by host).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostIds {
    #[serde(default)]
    pub networks: Vec<String>,
    #[serde(default)]
    pub subnets: Vec<String>,
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub security_groups: Vec<String>,
    #[serde(default)]
    pub security_group_rules: Vec<String>,
    #[serde(default)]
    pub vteps: Vec<String>,
    #[serde(default)]
    pub routers: Vec<String>,
    #[serde(default)]
    pub floatingips: Vec<String>,
    #[serde(default)]
    pub port_forwardings: Vec<String>,
    #[serde(default)]
    pub loadbalancers: Vec<String>,
    #[serde(default)]
    pub listeners: Vec<String>,
    #[serde(default)]
    pub pools: Vec<String>,
    #[serde(default)]
    pub members: Vec<String>,
    #[serde(default)]
    pub healthmonitors: Vec<String>,
}

/// One line (NDJSON) of `GET /v2.0/kuryr/hosts/{host}/watch?since=REV`.
///
/// The first frame of every stream has `present`: every id now in the host's view.
/// The client drops whatever it holds that is not listed there, and takes `put`,
/// which holds every object of the view changed after `since` (all of them when
/// `since` is 0). Later frames carry only changes: `put` (new or changed objects)
/// and `delete` (ids that left the view). A frame with neither is a keepalive.
/// `revision` is the store revision the view is complete up to: reconnect with
/// `since=<last revision seen>` to resume.
///
/// The view of host H: the ports bound to H; their networks and those networks'
/// subnets and ports (all hosts); the VTEPs of the hosts with ports on them; the
/// security groups of H's ports, their rules, and the ports that are members of
/// any group those rules name as `remote_group_id`; the routers with an interface on
/// any of those networks, with every network they connect (its subnets and ports);
/// the floating IPs and port forwardings through those routers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HostFrame {
    pub revision: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<HostIds>,
    #[serde(default)]
    pub put: HostObjects,
    #[serde(default)]
    pub delete: HostIds,
}
