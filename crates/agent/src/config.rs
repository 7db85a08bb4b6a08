//! What an agent is told at start: its host, underlay, paths and intervals.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This host's name: ports with `binding:host_id` equal to it are realized here.
    pub host: String,
    /// The underlay address other hosts reach this one's VXLAN endpoint at.
    pub underlay_ip: IpAddr,
    /// The underlay interface vxlan devices are bound to (optional).
    pub underlay_interface: Option<String>,
    pub vxlan_port: u16,
    /// Local API socket.
    pub socket: PathBuf,
    /// Where the bindings survive restarts.
    pub state_dir: PathBuf,
    pub report_interval: Duration,
    /// physical network → host interface, for flat networks.
    pub interface_mappings: BTreeMap<String, String>,
    pub nft_binary: PathBuf,
    /// How long a network's bridge and vxlan device stay after its last port here.
    pub network_linger: Duration,
    /// Router namespaces are `<prefix><router id>`; those with the prefix that no
    /// router here owns are removed. `kqr-` unless several agents share one machine
    /// (the test lab), each then with its own.
    pub router_prefix: String,
    /// How long a CNI ADD of a pod waits for the controller to give it a port.
    pub cni_pod_port_wait: Duration,
}
