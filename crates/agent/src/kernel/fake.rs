//! An in-memory kernel and firewall for the engine's unit tests: links, addresses,
//! routes, FDB and neighbour entries and namespaces in maps, scripts and element
//! batches recorded. Both share one [`World`] that a test reads and changes
//! "behind the engine's back" through [`FakeKernel::world`].
//!
//! It behaves like the kernel where the engine relies on it: names are unique per
//! namespace (EEXIST), deleting one end of a veth deletes the other and a link's
//! addresses, routes and entries go with it, a bridge's ports lose their master
//! with it. Every call that changes something is logged in [`World::writes`] (in
//! order, the firewall's too); reads the engine makes to verify go to
//! [`World::reads`].

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::IpNet;
use kuryr_dataplane::MacAddr;
use kuryr_dataplane::netlink::{
    AddressEntry, FdbEntry, Link, Neighbour, NetlinkError, Route, RouteSpec, VxlanSpec,
};
use kuryr_dataplane::netns::NetnsError;
use kuryr_dataplane::nfnl::{Change, NfnlError};
use kuryr_dataplane::nft::NftError;
use tokio::sync::Notify;

use super::{Firewall, InNetns, IpVersion, Kernel, LbError, LbHost, RouterError, Veth};
use crate::routers::RouterDesired;

const EEXIST: i32 = 17;
const ENODEV: i32 = 19;

/// Where a link is: the host (`None`) or a container namespace, by path.
pub(crate) type Place = Option<PathBuf>;

/// One network namespace.
#[derive(Debug, Default, Clone)]
pub(crate) struct Space {
    pub links: BTreeMap<u32, Link>,
    pub addresses: Vec<AddressEntry>,
    pub routes: Vec<Route>,
}

impl Space {
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.values().find(|l| l.name == name)
    }

    /// The addresses of link `name`.
    pub fn addresses_of(&self, name: &str) -> Vec<IpNet> {
        let Some(index) = self.link(name).map(|l| l.index) else {
            return vec![];
        };
        self.addresses
            .iter()
            .filter(|a| a.index == index)
            .map(|a| a.net)
            .collect()
    }
}

/// Everything the fake kernel and firewall hold.
#[derive(Debug, Default)]
pub(crate) struct World {
    pub host: Space,
    pub containers: BTreeMap<PathBuf, Space>,
    pub fdb: BTreeMap<u32, BTreeSet<FdbEntry>>,
    pub neighbours: BTreeMap<u32, BTreeMap<IpAddr, MacAddr>>,
    pub forwarding: BTreeSet<IpVersion>,
    /// Router namespaces by name, as last converged.
    pub routers: BTreeMap<String, RouterDesired>,
    pub lb: LbHost,
    /// Each veth end (place, index) to its peer.
    peers: BTreeMap<(Place, u32), (Place, u32)>,
    next_index: u32,
    /// Every change, in order: `create veth tap1 peer eth0`, `nft script`, ...
    pub writes: Vec<String>,
    /// Reads: `links`, `fdb vxlan-7`, `repair eth0 in /run/netns/c`, ...
    pub reads: Vec<String>,

    /// The nft scripts and element batches applied, in order.
    pub scripts: Vec<String>,
    pub batches: Vec<Vec<Change>>,
    pub tables_removed: usize,
    /// The next script fails / the next element batch is refused.
    pub fail_script: bool,
    pub refuse_batch: bool,
    /// No element batches at all (as without an nf_tables socket).
    pub no_elements: bool,
    foreign: bool,
    wake: Option<Arc<Notify>>,
}

fn kernel_error(what: String, errno: i32) -> NetlinkError {
    NetlinkError::Kernel {
        what,
        errno,
        message: io::Error::from_raw_os_error(errno).to_string(),
    }
}

impl World {
    /// A container namespace at `path` holding only `lo` (down), as a fresh one does.
    pub fn add_netns(&mut self, path: &str) {
        let index = self.index();
        let mut space = Space::default();
        space.links.insert(index, link(index, "lo", None, 65536));
        self.containers.insert(PathBuf::from(path), space);
    }

    /// A plain host interface (no kind), up.
    pub fn add_host_interface(&mut self, name: &str) -> u32 {
        let index = self.index();
        let mut l = link(index, name, None, 1500);
        l.up = true;
        self.host.links.insert(index, l);
        index
    }

    /// A link `name` (down) in container namespace `path`, made by someone else.
    pub fn add_container_interface(&mut self, path: &str, name: &str) {
        let index = self.index();
        if let Some(space) = self.container_mut(path) {
            space
                .links
                .insert(index, link(index, name, Some("veth"), 1500));
        }
    }

    pub fn container(&self, path: &str) -> &Space {
        static EMPTY: std::sync::LazyLock<Space> = std::sync::LazyLock::new(Space::default);
        self.containers.get(Path::new(path)).unwrap_or(&EMPTY)
    }

    pub fn container_mut(&mut self, path: &str) -> Option<&mut Space> {
        self.containers.get_mut(Path::new(path))
    }

    /// A host link by name.
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.host.link(name)
    }

    /// The FDB entries of host link `name`, as (MAC, destination).
    pub fn fdb_of(&self, name: &str) -> BTreeSet<(MacAddr, IpAddr)> {
        let index = self.link(name).map(|l| l.index).unwrap_or(0);
        self.fdb
            .get(&index)
            .into_iter()
            .flatten()
            .map(|e| (e.mac, e.dst))
            .collect()
    }

    pub fn neighbours_of(&self, name: &str) -> BTreeMap<IpAddr, MacAddr> {
        let index = self.link(name).map(|l| l.index).unwrap_or(0);
        self.neighbours.get(&index).cloned().unwrap_or_default()
    }

    /// Deletes host link `name` as someone else would (not logged).
    pub fn delete_link_named(&mut self, name: &str) {
        if let Some(index) = self.link(name).map(|l| l.index) {
            self.remove_link(&None, index);
        }
    }

    /// Someone else changes kuryr's tables: flagged, and the engine woken.
    pub fn foreign_change(&mut self) {
        self.foreign = true;
        if let Some(w) = &self.wake {
            w.notify_one();
        }
    }

    fn index(&mut self) -> u32 {
        self.next_index += 1;
        self.next_index
    }

    fn space(&self, place: &Place) -> Option<&Space> {
        match place {
            None => Some(&self.host),
            Some(p) => self.containers.get(p),
        }
    }

    fn space_mut(&mut self, place: &Place) -> Option<&mut Space> {
        match place {
            None => Some(&mut self.host),
            Some(p) => self.containers.get_mut(p),
        }
    }

    fn link_mut(
        &mut self,
        place: &Place,
        index: u32,
        what: &str,
    ) -> Result<&mut Link, NetlinkError> {
        self.space_mut(place)
            .and_then(|s| s.links.get_mut(&index))
            .ok_or_else(|| kernel_error(format!("{what} of link {index}"), ENODEV))
    }

    /// Removes a link with all that goes with it in a kernel.
    fn remove_link(&mut self, place: &Place, index: u32) {
        let Some(space) = self.space_mut(place) else {
            return;
        };
        if space.links.remove(&index).is_none() {
            return;
        }
        space.addresses.retain(|a| a.index != index);
        space.routes.retain(|r| r.index != index);
        for l in space.links.values_mut() {
            if l.master == Some(index) {
                l.master = None;
            }
        }
        if place.is_none() {
            self.fdb.remove(&index);
            self.neighbours.remove(&index);
        }
        if let Some(peer) = self.peers.remove(&(place.clone(), index)) {
            self.peers.remove(&peer);
            self.remove_link(&peer.0, peer.1);
        }
    }

    fn write(&mut self, what: String) {
        self.writes.push(what);
    }
}

fn link(index: u32, name: &str, kind: Option<&str>, mtu: u32) -> Link {
    let [.., hi, lo] = index.to_be_bytes();
    Link {
        index,
        name: name.to_string(),
        kind: kind.map(str::to_string),
        master: None,
        mtu,
        mac: Some(MacAddr([0x02, 0, 0, 0, hi, lo])),
        up: false,
        vxlan: None,
    }
}

fn describe(place: &Place) -> String {
    match place {
        None => "the host".to_string(),
        Some(p) => p.display().to_string(),
    }
}

/// The fake kernel: a handle on a shared [`World`].
#[derive(Clone, Default)]
pub(crate) struct FakeKernel(Arc<Mutex<World>>);

impl FakeKernel {
    pub fn new() -> FakeKernel {
        FakeKernel::default()
    }

    pub fn world(&self) -> MutexGuard<'_, World> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A firewall sharing this kernel's world.
    pub fn firewall(&self) -> FakeFirewall {
        FakeFirewall(self.0.clone())
    }

    /// Brings a host link to `master`/`mtu`/up, logging each change.
    fn converge_link(
        w: &mut World,
        index: u32,
        master: Option<u32>,
        mtu: u32,
    ) -> Result<Link, NetlinkError> {
        let l = w.link_mut(&None, index, "converging")?;
        let mut changes = vec![];
        if master.is_some() && l.master != master {
            l.master = master;
            changes.push(format!("set master {}", l.name));
        }
        if l.mtu != mtu {
            l.mtu = mtu;
            changes.push(format!("set mtu {} {mtu}", l.name));
        }
        if !l.up {
            l.up = true;
            changes.push(format!("set up {}", l.name));
        }
        let l = l.clone();
        w.writes.extend(changes);
        Ok(l)
    }

    fn set(&self, index: u32, what: &str, f: impl FnOnce(&mut Link)) -> Result<(), NetlinkError> {
        let mut w = self.world();
        let l = w.link_mut(&None, index, what)?;
        f(l);
        let name = l.name.clone();
        w.write(format!("{what} {name}"));
        Ok(())
    }
}

/// An open container namespace of the fake (the host's own for `None`).
pub(crate) struct FakeNetns(Place);

impl Kernel for FakeKernel {
    type Netns = FakeNetns;
    type InNetns = FakeInNetns;

    fn open_netns(&self, path: &Path) -> Result<FakeNetns, NetnsError> {
        if self.world().containers.contains_key(path) {
            Ok(FakeNetns(Some(path.to_path_buf())))
        } else {
            Err(NetnsError::Open {
                path: path.to_path_buf(),
                source: io::Error::from(io::ErrorKind::NotFound),
            })
        }
    }

    fn own_netns(&self) -> Result<FakeNetns, NetnsError> {
        Ok(FakeNetns(None))
    }

    fn enter(&self, ns: &FakeNetns) -> Result<FakeInNetns, NetlinkError> {
        Ok(FakeInNetns {
            world: self.0.clone(),
            place: ns.0.clone(),
        })
    }

    async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        let mut w = self.world();
        w.reads.push("links".into());
        Ok(w.host.links.values().cloned().collect())
    }

    async fn link_by_name(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let mut w = self.world();
        w.reads.push(format!("link {name}"));
        Ok(w.link(name).cloned())
    }

    async fn ensure_bridge(&self, name: &str, mtu: u32) -> Result<Link, NetlinkError> {
        let mut w = self.world();
        let index = match w.link(name) {
            Some(l) if l.kind.as_deref() != Some("bridge") => {
                return Err(NetlinkError::Unexpected {
                    what: format!("ensuring bridge {name}"),
                    detail: format!("a link of kind {:?} has that name", l.kind),
                });
            }
            Some(l) => l.index,
            None => {
                let index = w.index();
                w.host
                    .links
                    .insert(index, link(index, name, Some("bridge"), mtu));
                w.write(format!("create bridge {name}"));
                index
            }
        };
        FakeKernel::converge_link(&mut w, index, None, mtu)
    }

    async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<Link, NetlinkError> {
        let wanted = spec.info();
        let mut w = self.world();
        let existing = w.link(&spec.name).cloned();
        let index = match existing {
            Some(l) if l.kind.as_deref() == Some("vxlan") && l.vxlan.as_ref() == Some(&wanted) => {
                l.index
            }
            other => {
                if let Some(l) = other {
                    w.remove_link(&None, l.index);
                    w.write(format!("delete link {}", spec.name));
                }
                let index = w.index();
                let mut l = link(index, &spec.name, Some("vxlan"), spec.mtu);
                l.vxlan = Some(wanted);
                l.master = Some(spec.master);
                w.host.links.insert(index, l);
                w.write(format!("create vxlan {}", spec.name));
                index
            }
        };
        FakeKernel::converge_link(&mut w, index, Some(spec.master), spec.mtu)
    }

    async fn create_veth(&self, veth: &Veth, peer_ns: &FakeNetns) -> Result<Link, NetlinkError> {
        let mut w = self.world();
        let place = peer_ns.0.clone();
        let what = format!(
            "creating veth {} (peer {} in {})",
            veth.host_name,
            veth.peer_name,
            describe(&place)
        );
        let Some(peer_space) = w.space(&place) else {
            return Err(NetlinkError::Unexpected {
                what,
                detail: "no such namespace".into(),
            });
        };
        if w.link(&veth.host_name).is_some() || peer_space.link(&veth.peer_name).is_some() {
            return Err(kernel_error(what, EEXIST));
        }
        let (index, peer_index) = (w.index(), w.index());
        let mut host = link(index, &veth.host_name, Some("veth"), veth.mtu);
        host.master = veth.master;
        host.up = true;
        let mut peer = link(peer_index, &veth.peer_name, Some("veth"), veth.mtu);
        if let Some(mac) = veth.peer_mac {
            peer.mac = Some(mac);
        }
        w.host.links.insert(index, host.clone());
        if let Some(s) = w.space_mut(&place) {
            s.links.insert(peer_index, peer);
        }
        w.peers.insert((None, index), (place.clone(), peer_index));
        w.peers.insert((place.clone(), peer_index), (None, index));
        w.write(format!(
            "create veth {} peer {} in {}",
            veth.host_name,
            veth.peer_name,
            describe(&place)
        ));
        Ok(host)
    }

    async fn set_master(&self, index: u32, master: u32) -> Result<(), NetlinkError> {
        self.set(index, "set master", |l| l.master = Some(master))
    }

    async fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        self.set(index, "set up", |l| l.up = true)
    }

    async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        self.set(index, "set mtu", |l| l.mtu = mtu)
    }

    async fn set_mac(&self, index: u32, mac: MacAddr) -> Result<(), NetlinkError> {
        self.set(index, "set mac", |l| l.mac = Some(mac))
    }

    async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        let mut w = self.world();
        let name = w.host.links.get(&index).map(|l| l.name.clone());
        w.remove_link(&None, index);
        w.write(format!(
            "delete link {}",
            name.unwrap_or_else(|| index.to_string())
        ));
        Ok(())
    }

    async fn fdb(&self, index: u32) -> Result<Vec<FdbEntry>, NetlinkError> {
        let mut w = self.world();
        w.reads.push(format!("fdb {index}"));
        Ok(w.fdb.get(&index).into_iter().flatten().copied().collect())
    }

    async fn fdb_append(&self, index: u32, mac: MacAddr, dst: IpAddr) -> Result<(), NetlinkError> {
        let mut w = self.world();
        w.link_mut(&None, index, "fdb append")?;
        w.fdb
            .entry(index)
            .or_default()
            .insert(FdbEntry { mac, dst });
        w.write(format!("fdb append {mac} dst {dst}"));
        Ok(())
    }

    async fn fdb_delete(&self, index: u32, mac: MacAddr, dst: IpAddr) -> Result<(), NetlinkError> {
        let mut w = self.world();
        if let Some(set) = w.fdb.get_mut(&index) {
            set.remove(&FdbEntry { mac, dst });
        }
        w.write(format!("fdb delete {mac} dst {dst}"));
        Ok(())
    }

    async fn neighbours(&self, index: u32) -> Result<Vec<Neighbour>, NetlinkError> {
        let mut w = self.world();
        w.reads.push(format!("neighbours {index}"));
        Ok(w.neighbours
            .get(&index)
            .into_iter()
            .flatten()
            .map(|(&ip, &mac)| Neighbour { ip, mac })
            .collect())
    }

    async fn neighbour_replace(
        &self,
        index: u32,
        ip: IpAddr,
        mac: MacAddr,
    ) -> Result<(), NetlinkError> {
        let mut w = self.world();
        w.link_mut(&None, index, "neighbour replace")?;
        w.neighbours.entry(index).or_default().insert(ip, mac);
        w.write(format!("neighbour replace {ip} lladdr {mac}"));
        Ok(())
    }

    async fn neighbour_delete(&self, index: u32, ip: IpAddr) -> Result<(), NetlinkError> {
        let mut w = self.world();
        if let Some(m) = w.neighbours.get_mut(&index) {
            m.remove(&ip);
        }
        w.write(format!("neighbour delete {ip}"));
        Ok(())
    }

    async fn all_addresses(&self) -> Result<Vec<AddressEntry>, NetlinkError> {
        let mut w = self.world();
        w.reads.push("addresses".into());
        Ok(w.host.addresses.clone())
    }

    async fn add_address_with_protocol(
        &self,
        index: u32,
        net: IpNet,
        protocol: u8,
    ) -> Result<(), NetlinkError> {
        let mut w = self.world();
        let what = format!("adding {net} to link {index}");
        w.link_mut(&None, index, &what)?;
        if w.host
            .addresses
            .iter()
            .any(|a| a.index == index && a.net == net)
        {
            return Err(kernel_error(what, EEXIST));
        }
        w.host.addresses.push(AddressEntry {
            index,
            net,
            protocol: Some(protocol),
        });
        w.write(format!("add address {net}"));
        Ok(())
    }

    async fn delete_address(&self, index: u32, net: IpNet) -> Result<(), NetlinkError> {
        let mut w = self.world();
        w.host
            .addresses
            .retain(|a| !(a.index == index && a.net == net));
        w.write(format!("delete address {net}"));
        Ok(())
    }

    fn forwarding(&self, version: IpVersion) -> io::Result<bool> {
        Ok(self.world().forwarding.contains(&version))
    }

    fn enable_forwarding(&self, version: IpVersion) -> io::Result<()> {
        let mut w = self.world();
        w.forwarding.insert(version);
        w.write(format!("forwarding {version:?}"));
        Ok(())
    }

    fn router_namespaces(&self, prefix: &str) -> Result<Vec<String>, RouterError> {
        let mut w = self.world();
        w.reads.push("router namespaces".into());
        Ok(w.routers
            .keys()
            .filter(|n| n.starts_with(prefix))
            .cloned()
            .collect())
    }

    async fn converge_router(&self, router: &RouterDesired) -> Result<usize, RouterError> {
        let mut w = self.world();
        w.reads.push(format!("router {}", router.netns));
        if w.routers.get(&router.netns) == Some(router) {
            return Ok(0);
        }
        w.write(format!("router {}", router.netns));
        w.routers.insert(router.netns.clone(), router.clone());
        Ok(1)
    }

    async fn remove_router(&self, netns: &str) -> Result<(), RouterError> {
        let mut w = self.world();
        if w.routers.remove(netns).is_some() {
            w.write(format!("remove router {netns}"));
        }
        Ok(())
    }

    async fn converge_lb(&self, spec: &LbHost) -> Result<usize, LbError> {
        let mut w = self.world();
        w.reads.push("load balancing".into());
        if w.lb == *spec {
            return Ok(0);
        }
        w.write("load balancing".into());
        w.lb = spec.clone();
        Ok(1)
    }
}

/// Acting inside one namespace of the fake.
pub(crate) struct FakeInNetns {
    world: Arc<Mutex<World>>,
    place: Place,
}

impl FakeInNetns {
    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The kernel's converge_interface: lo and `ifname` up, addresses (pruned when
    /// asked, link-local ones kept), missing routes added.
    fn converge(
        &self,
        ifname: &str,
        addresses: &[IpNet],
        routes: &[RouteSpec],
        prune: bool,
    ) -> Result<usize, NetlinkError> {
        let mut w = self.world();
        let verb = if prune { "configure" } else { "repair" };
        w.reads
            .push(format!("{verb} {ifname} in {}", describe(&self.place)));
        let gone = || NetlinkError::Unexpected {
            what: format!("{verb} {ifname}"),
            detail: "the namespace is gone".into(),
        };
        let space = w.space_mut(&self.place).ok_or_else(gone)?;
        let mut changes = vec![];
        for name in ["lo", ifname] {
            let l = space
                .links
                .values_mut()
                .find(|l| l.name == name)
                .ok_or_else(|| NetlinkError::LinkNotFound(name.to_string()))?;
            if !l.up {
                l.up = true;
                changes.push(format!("set up {name}"));
            }
        }
        let index = space.link(ifname).map(|l| l.index).unwrap_or_default();
        let link_local =
            |n: &IpNet| matches!(n, IpNet::V6(v6) if v6.addr().segments()[0] & 0xffc0 == 0xfe80);
        space.addresses.retain(|a| {
            let keep =
                a.index != index || !prune || addresses.contains(&a.net) || link_local(&a.net);
            if !keep {
                changes.push(format!("delete address {}", a.net));
            }
            keep
        });
        for net in addresses {
            if !space
                .addresses
                .iter()
                .any(|a| a.index == index && a.net == *net)
            {
                space.addresses.push(AddressEntry {
                    index,
                    net: *net,
                    protocol: None,
                });
                changes.push(format!("add address {net}"));
            }
        }
        for spec in routes {
            let route = Route {
                index,
                dest: spec.dest.trunc(),
                gateway: spec.gateway,
            };
            if !space.routes.contains(&route) {
                space.routes.push(route);
                changes.push(format!("add route {}", spec.dest));
            }
        }
        let n = changes.len();
        let at = describe(&self.place);
        w.writes
            .extend(changes.into_iter().map(|c| format!("{c} in {at}")));
        Ok(n)
    }
}

impl InNetns for FakeInNetns {
    async fn link_by_name(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let w = self.world();
        Ok(w.space(&self.place).and_then(|s| s.link(name)).cloned())
    }

    async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let mut w = self.world();
        w.link_mut(&self.place, index, "set mtu")?.mtu = mtu;
        let at = describe(&self.place);
        w.write(format!("set mtu {index} {mtu} in {at}"));
        Ok(())
    }

    async fn configure_interface(
        &self,
        ifname: &str,
        addresses: &[IpNet],
        routes: &[RouteSpec],
    ) -> Result<usize, NetlinkError> {
        self.converge(ifname, addresses, routes, true)
    }

    async fn repair_interface(
        &self,
        ifname: &str,
        addresses: &[IpNet],
        routes: &[RouteSpec],
    ) -> Result<usize, NetlinkError> {
        self.converge(ifname, addresses, routes, false)
    }
}

/// The fake firewall: records into the kernel's [`World`].
pub(crate) struct FakeFirewall(Arc<Mutex<World>>);

impl FakeFirewall {
    fn world(&self) -> MutexGuard<'_, World> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Firewall for FakeFirewall {
    fn monitor(&mut self, wake: Arc<Notify>) -> io::Result<()> {
        self.world().wake = Some(wake);
        Ok(())
    }

    fn take_foreign_change(&self) -> bool {
        std::mem::take(&mut self.world().foreign)
    }

    async fn apply(&mut self, script: &str) -> Result<(), NftError> {
        let mut w = self.world();
        w.write("nft script".into());
        if std::mem::take(&mut w.fail_script) {
            return Err(NftError::Failed {
                status: "exit status: 1".into(),
                stderr: "Error: injected by the test".into(),
                line: None,
            });
        }
        w.scripts.push(script.to_string());
        Ok(())
    }

    fn can_batch(&mut self) -> bool {
        !self.world().no_elements
    }

    fn apply_elements(
        &mut self,
        _table: &str,
        changes: &[Change],
    ) -> Option<Result<(), NfnlError>> {
        let mut w = self.world();
        if w.no_elements {
            return None;
        }
        w.write("nft elements".into());
        if std::mem::take(&mut w.refuse_batch) {
            let set = changes.first().map(|c| c.set.clone()).unwrap_or_default();
            return Some(Err(NfnlError::Refused {
                errno: 2,
                set,
                message: None,
            }));
        }
        w.batches.push(changes.to_vec());
        Some(Ok(()))
    }

    async fn remove_all(&mut self) -> Result<(), NftError> {
        let mut w = self.world();
        w.write("nft remove all".into());
        w.tables_removed += 1;
        Ok(())
    }
}
