//! Octavia v2 load balancers as kuryr stores them: the load balancer, its
//! listeners, pools, members and health monitors, each a record of its own, so that
//! a member change rewrites one small record (and reaches agents as one object).
//!
//! Field names are Octavia's; what Octavia shows but kuryr's L4 provider never
//! uses (TLS references, L7 policies, timeouts) is added by the API's views.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Octavia's `provisioning_status` values.
pub mod provisioning {
    pub const ACTIVE: &str = "ACTIVE";
    pub const PENDING_CREATE: &str = "PENDING_CREATE";
    pub const PENDING_UPDATE: &str = "PENDING_UPDATE";
    pub const PENDING_DELETE: &str = "PENDING_DELETE";
    pub const ERROR: &str = "ERROR";

    pub fn is_pending(s: &str) -> bool {
        s.starts_with("PENDING_")
    }
}

/// Octavia's `operating_status` values.
pub mod operating {
    pub const ONLINE: &str = "ONLINE";
    pub const OFFLINE: &str = "OFFLINE";
    pub const DEGRADED: &str = "DEGRADED";
    pub const ERROR: &str = "ERROR";
    pub const NO_MONITOR: &str = "NO_MONITOR";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadBalancer {
    pub id: String,
    pub name: String,
    pub description: String,
    pub project_id: String,
    pub vip_address: IpAddr,
    pub vip_port_id: String,
    pub vip_subnet_id: String,
    pub vip_network_id: String,
    /// The VIP port's MAC: what hosts answer ARP with for the VIP.
    #[serde(default)]
    pub vip_mac: String,
    pub provider: String,
    pub flavor_id: Option<String>,
    pub availability_zone: Option<String>,
    pub admin_state_up: bool,
    pub provisioning_status: String,
    pub operating_status: String,
    pub tags: Vec<String>,
    pub created_at: String,
    /// None until the first change (Octavia shows `null`).
    #[serde(default)]
    pub updated_at: Option<String>,
    #[serde(default)]
    pub revision_number: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listener {
    pub id: String,
    pub name: String,
    pub description: String,
    pub project_id: String,
    pub loadbalancer_id: String,
    pub protocol: String,
    pub protocol_port: u16,
    pub connection_limit: i64,
    pub default_pool_id: Option<String>,
    pub admin_state_up: bool,
    /// Sources allowed to reach the listener (empty or None: everyone).
    pub allowed_cidrs: Option<Vec<String>>,
    pub timeout_client_data: u64,
    pub timeout_member_connect: u64,
    pub timeout_member_data: u64,
    pub timeout_tcp_inspect: u64,
    pub provisioning_status: String,
    pub operating_status: String,
    pub tags: Vec<String>,
    pub created_at: String,
    /// None until the first change (Octavia shows `null`).
    #[serde(default)]
    pub updated_at: Option<String>,
    #[serde(default)]
    pub revision_number: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionPersistence {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub cookie_name: Option<String>,
    #[serde(default)]
    pub persistence_timeout: Option<u64>,
    #[serde(default)]
    pub persistence_granularity: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pool {
    pub id: String,
    pub name: String,
    pub description: String,
    pub project_id: String,
    pub loadbalancer_id: String,
    /// The listener created with this pool as its default (Octavia's `listener_id`).
    pub listener_id: Option<String>,
    pub protocol: String,
    pub lb_algorithm: String,
    pub session_persistence: Option<SessionPersistence>,
    pub admin_state_up: bool,
    pub provisioning_status: String,
    pub operating_status: String,
    pub tags: Vec<String>,
    pub created_at: String,
    /// None until the first change (Octavia shows `null`).
    #[serde(default)]
    pub updated_at: Option<String>,
    #[serde(default)]
    pub revision_number: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    pub name: String,
    pub project_id: String,
    pub pool_id: String,
    /// The pool's load balancer, so that agents need no pool to place a member.
    pub loadbalancer_id: String,
    pub address: IpAddr,
    pub protocol_port: u16,
    pub subnet_id: Option<String>,
    pub weight: u32,
    pub backup: bool,
    pub admin_state_up: bool,
    pub monitor_address: Option<IpAddr>,
    pub monitor_port: Option<u16>,
    pub provisioning_status: String,
    /// Set by the server from the health reports of the agent that checks the
    /// member (`NO_MONITOR` while its pool has no health monitor).
    pub operating_status: String,
    /// The host whose agent checks this member: the host of the member's port, or
    /// a live agent chosen by the server for addresses that are no kuryr port.
    #[serde(default)]
    pub monitor_host: String,
    pub tags: Vec<String>,
    pub created_at: String,
    /// None until the first change (Octavia shows `null`).
    #[serde(default)]
    pub updated_at: Option<String>,
    #[serde(default)]
    pub revision_number: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthMonitor {
    pub id: String,
    pub name: String,
    pub project_id: String,
    pub pool_id: String,
    pub loadbalancer_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub delay: u32,
    pub timeout: u32,
    pub max_retries: u32,
    pub max_retries_down: u32,
    pub http_method: Option<String>,
    pub url_path: Option<String>,
    pub expected_codes: Option<String>,
    pub http_version: Option<f64>,
    pub domain_name: Option<String>,
    pub admin_state_up: bool,
    pub provisioning_status: String,
    pub operating_status: String,
    pub tags: Vec<String>,
    pub created_at: String,
    /// None until the first change (Octavia shows `null`).
    #[serde(default)]
    pub updated_at: Option<String>,
    #[serde(default)]
    pub revision_number: u64,
}

/// Octavia's quotas (`-1`: unlimited, Octavia's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbQuota {
    pub load_balancer: i64,
    pub listener: i64,
    pub pool: i64,
    pub member: i64,
    pub health_monitor: i64,
    pub l7policy: i64,
    pub l7rule: i64,
}

impl Default for LbQuota {
    fn default() -> Self {
        LbQuota {
            load_balancer: -1,
            listener: -1,
            pool: -1,
            member: -1,
            health_monitor: -1,
            l7policy: -1,
            l7rule: -1,
        }
    }
}

impl LbQuota {
    pub const NAMES: [&'static str; 7] = [
        "load_balancer",
        "listener",
        "pool",
        "member",
        "health_monitor",
        "l7policy",
        "l7rule",
    ];

    pub fn slot(&mut self, name: &str) -> Option<&mut i64> {
        Some(match name {
            "load_balancer" | "loadbalancer" => &mut self.load_balancer,
            "listener" => &mut self.listener,
            "pool" => &mut self.pool,
            "member" => &mut self.member,
            "health_monitor" | "healthmonitor" => &mut self.health_monitor,
            "l7policy" => &mut self.l7policy,
            "l7rule" => &mut self.l7rule,
            _ => return None,
        })
    }
}

/// What an agent reports of the members it checks: member id → `ONLINE` or `ERROR`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberHealthReport {
    pub members: std::collections::BTreeMap<String, String>,
}
