//! The real kernel: rtnetlink through `Netlink` (bound to the namespace it was
//! opened in), the nft binary, and nf_tables netlink sockets for element batches
//! and for watching kuryr's tables.

use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use ipnet::IpNet;
use kuryr_dataplane::MacAddr;
use kuryr_dataplane::netlink::{
    AddressEntry, FdbEntry, Link, Neighbour, Netlink, NetlinkError, RouteSpec, VethSpec, VxlanSpec,
};
use kuryr_dataplane::netns::{NetNs, NetnsError};
use kuryr_dataplane::nfnl::{Change, Elements, Monitor, NfnlError};
use kuryr_dataplane::nft::{Nft, NftError};
use tokio::sync::Notify;

use kuryr_dataplane::router::{self, LegSpec, RouterSpec, RuleSpec, TableRoute};

use super::{Firewall, InNetns, IpVersion, Kernel, LbError, LbHost, RouterError, Veth};
use crate::routers::RouterDesired;

/// Forwarding of the calling thread's namespace (the agent's).
fn forwarding_sysctl(version: IpVersion) -> &'static str {
    match version {
        IpVersion::V4 => "/proc/sys/net/ipv4/ip_forward",
        IpVersion::V6 => "/proc/sys/net/ipv6/conf/all/forwarding",
    }
}

// Each method calls Netlink's inherent method of the same name (inherent methods
// take precedence over trait ones).
impl Kernel for Netlink {
    type Netns = NetNs;
    type InNetns = Netlink;

    fn open_netns(&self, path: &Path) -> Result<NetNs, NetnsError> {
        NetNs::open(path)
    }

    fn own_netns(&self) -> Result<NetNs, NetnsError> {
        NetNs::current()
    }

    fn enter(&self, ns: &NetNs) -> Result<Netlink, NetlinkError> {
        Netlink::in_namespace(ns)
    }

    async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        Netlink::links(self).await
    }

    async fn link_by_name(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        Netlink::link_by_name(self, name).await
    }

    async fn ensure_bridge(&self, name: &str, mtu: u32) -> Result<Link, NetlinkError> {
        Netlink::ensure_bridge(self, name, mtu).await
    }

    async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<Link, NetlinkError> {
        Netlink::ensure_vxlan(self, spec).await
    }

    async fn create_veth(&self, veth: &Veth, peer_ns: &NetNs) -> Result<Link, NetlinkError> {
        Netlink::create_veth(
            self,
            &VethSpec {
                host_name: veth.host_name.clone(),
                master: veth.master,
                mtu: veth.mtu,
                peer_name: veth.peer_name.clone(),
                peer_ns,
                peer_mac: veth.peer_mac,
            },
        )
        .await
    }

    async fn set_master(&self, index: u32, master: u32) -> Result<(), NetlinkError> {
        Netlink::set_master(self, index, master).await
    }

    async fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        Netlink::set_up(self, index).await
    }

    async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        Netlink::set_mtu(self, index, mtu).await
    }

    async fn set_mac(&self, index: u32, mac: MacAddr) -> Result<(), NetlinkError> {
        Netlink::set_mac(self, index, mac).await
    }

    async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        Netlink::delete_link(self, index).await
    }

    async fn fdb(&self, index: u32) -> Result<Vec<FdbEntry>, NetlinkError> {
        Netlink::fdb(self, index).await
    }

    async fn fdb_append(&self, index: u32, mac: MacAddr, dst: IpAddr) -> Result<(), NetlinkError> {
        Netlink::fdb_append(self, index, mac, dst).await
    }

    async fn fdb_delete(&self, index: u32, mac: MacAddr, dst: IpAddr) -> Result<(), NetlinkError> {
        Netlink::fdb_delete(self, index, mac, dst).await
    }

    async fn neighbours(&self, index: u32) -> Result<Vec<Neighbour>, NetlinkError> {
        Netlink::neighbours(self, index).await
    }

    async fn neighbour_replace(
        &self,
        index: u32,
        ip: IpAddr,
        mac: MacAddr,
    ) -> Result<(), NetlinkError> {
        Netlink::neighbour_replace(self, index, ip, mac).await
    }

    async fn neighbour_delete(&self, index: u32, ip: IpAddr) -> Result<(), NetlinkError> {
        Netlink::neighbour_delete(self, index, ip).await
    }

    async fn all_addresses(&self) -> Result<Vec<AddressEntry>, NetlinkError> {
        Netlink::all_addresses(self).await
    }

    async fn add_address_with_protocol(
        &self,
        index: u32,
        net: IpNet,
        protocol: u8,
    ) -> Result<(), NetlinkError> {
        Netlink::add_address_with_protocol(self, index, net, protocol).await
    }

    async fn delete_address(&self, index: u32, net: IpNet) -> Result<(), NetlinkError> {
        Netlink::delete_address(self, index, net).await
    }

    fn forwarding(&self, version: IpVersion) -> io::Result<bool> {
        Ok(std::fs::read_to_string(forwarding_sysctl(version))?.trim() == "1")
    }

    fn enable_forwarding(&self, version: IpVersion) -> io::Result<()> {
        std::fs::write(forwarding_sysctl(version), "1")
    }

    fn router_namespaces(&self, prefix: &str) -> Result<Vec<String>, RouterError> {
        router::list(prefix)
    }

    async fn converge_router(&self, r: &RouterDesired) -> Result<usize, RouterError> {
        router::converge(self, &spec_of(r)).await
    }

    async fn remove_router(&self, netns: &str) -> Result<(), RouterError> {
        router::remove(self, netns).await
    }

    async fn converge_lb(&self, spec: &LbHost) -> Result<usize, LbError> {
        kuryr_dataplane::lb::converge(self, None, spec)
            .await
            .map(|s| s.changes())
    }
}

/// The dataplane's spec of a router namespace.
fn spec_of(r: &RouterDesired) -> RouterSpec {
    RouterSpec {
        netns: r.netns.clone(),
        legs: r
            .legs
            .iter()
            .map(|l| LegSpec {
                host_name: l.host_name.clone(),
                bridge: l.bridge.clone(),
                peer_name: l.peer_name.clone(),
                mac: l.mac,
                mtu: l.mtu,
                addresses: l.addresses.clone(),
                neighbours: l.neighbours.clone(),
            })
            .collect(),
        routes: r.routes.clone(),
        rules: r
            .rules
            .iter()
            .map(|(priority, from, iif, table)| RuleSpec {
                priority: *priority,
                from: *from,
                iif: iif.clone(),
                table: *table,
            })
            .collect(),
        table_routes: r
            .table_routes
            .iter()
            .map(|(table, dst, via, dev)| TableRoute {
                table: *table,
                dst: *dst,
                via: *via,
                dev: dev.clone(),
            })
            .collect(),
        nat: r.nat.clone(),
        announce: r.announce.clone(),
    }
}

impl InNetns for Netlink {
    async fn link_by_name(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        Netlink::link_by_name(self, name).await
    }

    async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        Netlink::set_mtu(self, index, mtu).await
    }

    async fn configure_interface(
        &self,
        ifname: &str,
        addresses: &[IpNet],
        routes: &[RouteSpec],
    ) -> Result<usize, NetlinkError> {
        Netlink::configure_interface(self, ifname, addresses, routes).await
    }

    async fn repair_interface(
        &self,
        ifname: &str,
        addresses: &[IpNet],
        routes: &[RouteSpec],
    ) -> Result<usize, NetlinkError> {
        Netlink::repair_interface(self, ifname, addresses, routes).await
    }
}

/// kuryr's tables through the nft binary (full scripts and diffs), an nf_tables
/// socket for element batches and a monitor of foreign changes; both sockets are
/// opened on first use, in the calling thread's namespace.
pub struct NftFirewall {
    nft: Nft,
    monitor: Option<Monitor>,
    elements: Option<Elements>,
}

impl NftFirewall {
    pub fn new(nft: Nft) -> NftFirewall {
        NftFirewall {
            nft,
            monitor: None,
            elements: None,
        }
    }
}

impl Firewall for NftFirewall {
    fn monitor(&mut self, wake: Arc<Notify>) -> io::Result<()> {
        if self.monitor.is_none() {
            self.monitor = Some(Monitor::start(wake)?);
        }
        Ok(())
    }

    fn take_foreign_change(&self) -> bool {
        self.monitor.as_ref().is_some_and(Monitor::take)
    }

    async fn apply(&mut self, script: &str) -> Result<(), NftError> {
        self.nft.apply(script).await
    }

    fn can_batch(&mut self) -> bool {
        if self.elements.is_none() {
            match Elements::open() {
                Ok(e) => self.elements = Some(e),
                Err(e) => {
                    tracing::warn!(error = %e,
                        "cannot open an nf_tables netlink socket: element changes run nft");
                    return false;
                }
            }
        }
        true
    }

    fn apply_elements(&mut self, table: &str, changes: &[Change]) -> Option<Result<(), NfnlError>> {
        if !self.can_batch() {
            return None;
        }
        self.elements.as_mut().map(|e| e.apply(table, changes))
    }

    async fn remove_all(&mut self) -> Result<(), NftError> {
        self.nft.remove_all().await
    }
}
