//! The kernel as the [`Engine`](crate::engine::Engine) sees it: the host's links,
//! addresses, FDB and neighbour entries ([`Kernel`]), a container's namespace
//! ([`InNetns`]) and kuryr's nftables tables ([`Firewall`]). The engine decides
//! what to change; these only do it. The real ones are `Netlink` and
//! [`NftFirewall`] (see `real`); in-memory ones let the engine's logic be tested
//! without root (see `fake`).
//!
//! Errors stay the dataplane's own (`NetlinkError`, `NetnsError`, `NftError`,
//! `NfnlError`): they already tell the kernel's refusals apart (errno, EEXIST), and
//! a fake can make any of them.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use ipnet::IpNet;
use kuryr_dataplane::MacAddr;
use kuryr_dataplane::netlink::{
    AddressEntry, FdbEntry, Link, Neighbour, NetlinkError, RouteSpec, VxlanSpec,
};
use kuryr_dataplane::netns::NetnsError;
use kuryr_dataplane::nfnl::{Change, NfnlError};
use kuryr_dataplane::nft::NftError;
use tokio::sync::Notify;

use crate::routers::RouterDesired;
pub use kuryr_dataplane::lb::{LbError, LbHost};
pub use kuryr_dataplane::router::RouterError;

#[cfg(test)]
pub(crate) mod fake;
mod real;

pub use real::NftFirewall;

/// A veth pair to create: `host_name` on the host (in `master`, up), `peer_name`
/// born in the peer's namespace with `peer_mac`; both with `mtu`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Veth {
    pub host_name: String,
    pub master: Option<u32>,
    pub mtu: u32,
    pub peer_name: String,
    pub peer_mac: Option<MacAddr>,
}

/// An IP version, for per-version host settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum IpVersion {
    V4,
    V6,
}

/// The host's network namespace: its links, addresses, FDB and neighbour entries and
/// forwarding, and the way into containers' namespaces. Reads and writes are
/// separate calls so that the engine can compare before it changes anything.
///
/// Futures are `Send` so that the engine can run on any tokio worker.
pub trait Kernel: Send + Sync {
    /// An open container namespace, kept open (so alive) while it is used.
    type Netns: Send + Sync;
    /// Acts inside one container namespace.
    type InNetns: InNetns;

    /// Opens the namespace named by a file (`/run/netns/NAME`, `/proc/PID/ns/net`).
    fn open_netns(&self, path: &Path) -> Result<Self::Netns, NetnsError>;
    /// The agent's own namespace (a veth whose container end Docker moves).
    fn own_netns(&self) -> Result<Self::Netns, NetnsError>;
    /// Something acting inside `ns`.
    fn enter(&self, ns: &Self::Netns) -> Result<Self::InNetns, NetlinkError>;

    /// Every link of the host.
    fn links(&self) -> impl Future<Output = Result<Vec<Link>, NetlinkError>> + Send;
    fn link_by_name(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<Link>, NetlinkError>> + Send;
    /// Creates the bridge if missing, brings it to `mtu` and up; returns it.
    fn ensure_bridge(
        &self,
        name: &str,
        mtu: u32,
    ) -> impl Future<Output = Result<Link, NetlinkError>> + Send;
    /// Creates the vxlan device (recreates one with other settings), in its master,
    /// at its mtu, up; returns it.
    fn ensure_vxlan(
        &self,
        spec: &VxlanSpec,
    ) -> impl Future<Output = Result<Link, NetlinkError>> + Send;
    /// Creates a veth pair whose peer is born in `peer_ns`; returns the host end.
    /// EEXIST ([`NetlinkError::is_exists`]) when either name is taken.
    fn create_veth(
        &self,
        veth: &Veth,
        peer_ns: &Self::Netns,
    ) -> impl Future<Output = Result<Link, NetlinkError>> + Send;
    fn set_master(
        &self,
        index: u32,
        master: u32,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    fn set_up(&self, index: u32) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    fn set_mtu(
        &self,
        index: u32,
        mtu: u32,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    /// Sets (on a bridge: pins) a link's MAC address.
    fn set_mac(
        &self,
        index: u32,
        mac: MacAddr,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    /// Deletes a link (both ends of a veth); a missing one is success.
    fn delete_link(&self, index: u32) -> impl Future<Output = Result<(), NetlinkError>> + Send;

    /// Static FDB entries with a destination IP on a (vxlan) device.
    fn fdb(&self, index: u32) -> impl Future<Output = Result<Vec<FdbEntry>, NetlinkError>> + Send;
    fn fdb_append(
        &self,
        index: u32,
        mac: MacAddr,
        dst: IpAddr,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    fn fdb_delete(
        &self,
        index: u32,
        mac: MacAddr,
        dst: IpAddr,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    fn neighbours(
        &self,
        index: u32,
    ) -> impl Future<Output = Result<Vec<Neighbour>, NetlinkError>> + Send;
    fn neighbour_replace(
        &self,
        index: u32,
        ip: IpAddr,
        mac: MacAddr,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    fn neighbour_delete(
        &self,
        index: u32,
        ip: IpAddr,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;

    /// Every address of the host, with the link it is on and its IFA_PROTO.
    fn all_addresses(&self)
    -> impl Future<Output = Result<Vec<AddressEntry>, NetlinkError>> + Send;
    fn add_address_with_protocol(
        &self,
        index: u32,
        net: IpNet,
        protocol: u8,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    /// Removes an address; a missing one is success.
    fn delete_address(
        &self,
        index: u32,
        net: IpNet,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;

    /// Whether the host forwards packets of `version`.
    fn forwarding(&self, version: IpVersion) -> io::Result<bool>;
    fn enable_forwarding(&self, version: IpVersion) -> io::Result<()>;

    /// The router namespaces on the host whose names start with `prefix`.
    fn router_namespaces(&self, prefix: &str) -> Result<Vec<String>, RouterError>;
    /// Brings a router namespace, its legs (host ends on their bridges, which
    /// exist), neighbours and routes to `router`, repairing whatever differs;
    /// returns how many changes it made.
    fn converge_router(
        &self,
        router: &RouterDesired,
    ) -> impl Future<Output = Result<usize, RouterError>> + Send;
    /// Removes a router namespace and its legs; a missing one is success.
    fn remove_router(&self, netns: &str) -> impl Future<Output = Result<(), RouterError>> + Send;

    /// Brings the host's load balancing (per-bridge listeners, routes, neighbours,
    /// VIP tables) to `spec`, reading the kernel back; returns the changes made.
    /// An empty spec removes it all.
    fn converge_lb(&self, spec: &LbHost) -> impl Future<Output = Result<usize, LbError>> + Send;
}

/// Inside a container's namespace: its end of the port's veth.
pub trait InNetns: Send + Sync {
    fn link_by_name(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<Link>, NetlinkError>> + Send;
    fn set_mtu(
        &self,
        index: u32,
        mtu: u32,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    /// `lo` and `ifname` up, exactly `addresses` (IPv6 link-local ones kept), and
    /// `routes` added where missing. Returns how many changes it made.
    fn configure_interface(
        &self,
        ifname: &str,
        addresses: &[IpNet],
        routes: &[RouteSpec],
    ) -> impl Future<Output = Result<usize, NetlinkError>> + Send;
    /// Like [`InNetns::configure_interface`], but only puts back what is missing:
    /// addresses someone else added stay. Returns how many changes it made.
    fn repair_interface(
        &self,
        ifname: &str,
        addresses: &[IpNet],
        routes: &[RouteSpec],
    ) -> impl Future<Output = Result<usize, NetlinkError>> + Send;
}

/// kuryr's nftables tables (`bridge kuryr`, `inet kuryr`).
pub trait Firewall: Send {
    /// Starts flagging changes that others make to kuryr's tables, notifying `wake`
    /// on each. Called before the first apply, and again until it succeeds.
    fn monitor(&mut self, wake: Arc<Notify>) -> io::Result<()>;
    /// Whether a foreign change was flagged since the last call.
    fn take_foreign_change(&self) -> bool;
    /// Applies an nft script (a full replace or a diff) as one transaction.
    fn apply(&mut self, script: &str) -> impl Future<Output = Result<(), NftError>> + Send;
    /// Whether this firewall can apply element changes (asked before computing
    /// them in place, which leaves no old state to diff a script from).
    fn can_batch(&mut self) -> bool;
    /// Applies set and map element changes to `table` as one transaction; `None`
    /// when this firewall cannot (then a script does it).
    fn apply_elements(&mut self, table: &str, changes: &[Change]) -> Option<Result<(), NfnlError>>;
    /// Deletes kuryr's tables.
    fn remove_all(&mut self) -> impl Future<Output = Result<(), NftError>> + Send;
}
