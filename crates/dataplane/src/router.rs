//! Distributed routers (Neutron DVR-style): one network namespace per router per host,
//! `kqr-<router id>`, brought to a declarative [`RouterSpec`] by [`converge`].
//!
//! What a router namespace holds (the issue 10 design):
//! - sysctls set before any leg exists: forwarding on, no redirects, no rp_filter,
//!   `arp_ignore=1`/`arp_announce=2`, no DAD and no RAs (the gateway addresses are
//!   anycast: the same IP and MAC on every host that has the router); `lo` up;
//! - one leg per router interface: a veth whose host end (`tap…`) is a port of the
//!   network's bridge and whose router end (`qr-…`) is born inside the namespace with
//!   the interface's MAC, MTU and addresses (IPv6 ones `nodad`). The host end carries a
//!   static **sticky** FDB entry for that MAC (plain static entries roam on 6.18);
//! - permanent neighbour entries for every port of the legs' subnets, so the router
//!   never resolves anything across the overlay;
//! - the router's extra routes in the main table, marked with rtm_protocol
//!   [`PROTOCOL`] (`proto 107` in `ip route`): only routes with that mark are kuryr's,
//!   the kernel's connected routes and anybody else's are never touched.
//!
//! [`converge`] is idempotent and repairs drift: a missing leg, address, neighbour,
//! FDB entry, route or sysctl comes back, a leg with wrong settings is fixed (or
//! recreated when its two ends are not one pair), and `qr-*` legs, addresses,
//! permanent neighbours, static FDB entries on the host ends and kuryr-marked routes
//! that the spec does not have are removed. It returns how many changes it made.
//!
//! The named namespace is made in-process, the way `ip netns add` makes it: `/run/netns`
//! made a shared mount point (bound onto itself first if it is not a mount point), a
//! file there, and a fresh thread that `unshare(CLONE_NEWNET)`s and bind-mounts its
//! `/proc/thread-self/ns/net` onto the file. In-process rather than running `ip netns
//! add`: no dependency on iproute2 in the agent's image, typed errors, and a stale
//! file left by a crash (present but not a mount) is reused instead of failing with
//! "File exists". `ip netns exec/del` work on the result as on their own.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::link::{LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteNextHop, RouteProtocol,
    RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::statfs::{NSFS_MAGIC, statfs};

use crate::MacAddr;
use crate::netlink::{Netlink, NetlinkError, VethSpec};
use crate::netns::{self, NetNs, NetnsError};

/// Where named network namespaces live (as for iproute2).
pub const NETNS_DIR: &str = "/run/netns";
/// Prefix of router namespaces: what [`list`] returns.
pub const NETNS_PREFIX: &str = "kqr-";
/// Prefix of router ends: `qr-*` links in a router namespace that the spec does not
/// name are removed by [`converge`].
pub const LEG_PREFIX: &str = "qr-";
/// IFA_PROTO of the router's addresses and rtm_protocol of its extra routes: 'k', as
/// the agent's bridge gateway addresses.
pub const PROTOCOL: u8 = 0x6b;

const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const ENODEV: i32 = 19;
/// Longest interface name (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// Router namespace sysctls (path under /proc/sys, value), set before legs exist so
/// that the per-interface copies of the `default` ones are right from the start.
const SYSCTLS: &[(&str, &str)] = &[
    ("net/ipv4/ip_forward", "1"),
    ("net/ipv6/conf/all/forwarding", "1"),
    ("net/ipv4/conf/all/send_redirects", "0"),
    ("net/ipv4/conf/default/send_redirects", "0"),
    ("net/ipv4/conf/all/rp_filter", "0"),
    ("net/ipv4/conf/default/rp_filter", "0"),
    ("net/ipv4/conf/all/arp_ignore", "1"),
    ("net/ipv4/conf/default/arp_ignore", "1"),
    ("net/ipv4/conf/all/arp_announce", "2"),
    ("net/ipv4/conf/default/arp_announce", "2"),
    ("net/ipv6/conf/all/accept_dad", "0"),
    ("net/ipv6/conf/default/accept_dad", "0"),
    ("net/ipv6/conf/all/accept_ra", "0"),
    ("net/ipv6/conf/default/accept_ra", "0"),
];

/// One router namespace as it should be on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterSpec {
    /// The namespace name, `kqr-<router id>` (a named netns under /run/netns).
    pub netns: String,
    pub legs: Vec<LegSpec>,
    /// Extra routes of the router (Neutron `routes`): destination via next hop, main
    /// table. Several next hops for one destination make one multipath route.
    pub routes: Vec<(IpNet, IpAddr)>,
}

/// One router interface: a veth whose host end is a port of a network bridge and whose
/// router end holds the interface's (anycast) gateway MAC and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegSpec {
    /// Host end, `tap<port id[:11]>`, enslaved to `bridge` (which exists: the agent made it).
    pub host_name: String,
    pub bridge: String,
    /// Router end, `qr-<port id[:11]>`, born in the router namespace.
    pub peer_name: String,
    pub mac: MacAddr,
    pub mtu: u32,
    /// The gateway addresses with their subnets' prefix (IPv6 ones added `nodad`).
    pub addresses: Vec<IpNet>,
    /// Permanent neighbour entries on the router end: every port of the leg's subnets
    /// (local and remote hosts), so the router never ARPs/NDs across the overlay.
    pub neighbours: BTreeMap<IpAddr, MacAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("router spec {netns:?}: {reason}")]
    InvalidSpec { netns: String, reason: String },
    #[error("creating network namespace {}: {source}", path.display())]
    CreateNetns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("removing network namespace {}: {source}", path.display())]
    RemoveNetns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("listing {}: {source}", path.display())]
    List {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("router {netns}: {source}")]
    Netns {
        netns: String,
        #[source]
        source: NetnsError,
    },
    #[error("router {netns}: sysctl {key}: {source}")]
    Sysctl {
        netns: String,
        key: String,
        #[source]
        source: io::Error,
    },
    #[error("router {netns}: leg {leg}: bridge {bridge} does not exist")]
    BridgeMissing {
        netns: String,
        leg: String,
        bridge: String,
    },
    /// A netlink request in the router namespace failed.
    #[error("router {netns}: {context}: {source}")]
    Router {
        netns: String,
        context: String,
        #[source]
        source: NetlinkError,
    },
    /// A netlink request in the host namespace (the `host` handle) failed.
    #[error("router {netns}, host namespace: {context}: {source}")]
    Host {
        netns: String,
        context: String,
        #[source]
        source: NetlinkError,
    },
    /// An extra route could not be added (e.g. its next hop is on no leg's subnet, or
    /// a route of someone else has that destination). Everything else was converged,
    /// the other routes included; the first failure is reported.
    #[error("router {netns}: route {route}: {source}")]
    Route {
        netns: String,
        route: String,
        #[source]
        source: NetlinkError,
    },
}

fn in_router(netns: &str, context: impl Into<String>) -> impl FnOnce(NetlinkError) -> RouterError {
    let (netns, context) = (netns.to_string(), context.into());
    move |source| RouterError::Router {
        netns,
        context,
        source,
    }
}

fn in_host(netns: &str, context: impl Into<String>) -> impl FnOnce(NetlinkError) -> RouterError {
    let (netns, context) = (netns.to_string(), context.into());
    move |source| RouterError::Host {
        netns,
        context,
        source,
    }
}

// ---- the API ---------------------------------------------------------------------

/// Brings the router namespace to `spec`; returns how many changes it made (0 = it
/// already was). `host` is a Netlink handle in the host (agent's) namespace, where
/// the legs' bridges are.
///
/// Order: namespace, sysctls, `lo`, stale `qr-*` legs removed, legs (created, fixed or
/// recreated), sticky FDB entries, addresses, neighbours, routes. A missing bridge
/// stops the pass at that leg (legs before it are done). A route that cannot be added
/// does not stop the others: the first such failure is returned at the end.
pub async fn converge(host: &Netlink, spec: &RouterSpec) -> Result<usize, RouterError> {
    validate(spec)?;
    let netns = spec.netns.as_str();
    let (ns, created) = ensure_netns(netns)?;
    let mut changes = usize::from(created);
    changes += apply_sysctls(&ns, netns)?;
    let router = Netlink::in_namespace(&ns).map_err(in_router(netns, "opening netlink"))?;

    let lo = router
        .link_by_name("lo")
        .await
        .map_err(in_router(netns, "getting lo"))?
        .ok_or_else(|| RouterError::Router {
            netns: netns.to_string(),
            context: "getting lo".to_string(),
            source: NetlinkError::LinkNotFound("lo".to_string()),
        })?;
    if !lo.up {
        router
            .set_up(lo.index)
            .await
            .map_err(in_router(netns, "setting lo up"))?;
        changes += 1;
    }

    // Legs the spec no longer has (deleting the router end deletes the pair).
    let wanted: BTreeSet<&str> = spec.legs.iter().map(|l| l.peer_name.as_str()).collect();
    for link in dump_links(&router)
        .await
        .map_err(in_router(netns, "listing links"))?
    {
        if link.name.starts_with(LEG_PREFIX) && !wanted.contains(link.name.as_str()) {
            tracing::info!(netns, leg = %link.name, "removing a router leg not in the spec");
            router.delete_link(link.index).await.map_err(in_router(
                netns,
                format!("deleting stale leg {}", link.name),
            ))?;
            changes += 1;
        }
    }

    let mut ends = Vec::with_capacity(spec.legs.len());
    for leg in &spec.legs {
        let (c, end) = converge_leg(host, &router, &ns, netns, leg).await?;
        changes += c;
        ends.push(end);
    }
    changes += converge_fdb(host, netns, &spec.legs, &ends).await?;
    changes += converge_addresses(&router, netns, &spec.legs, &ends).await?;
    changes += converge_neighbours(&router, netns, &spec.legs, &ends).await?;
    let (c, route_error) = converge_routes(&router, netns, &spec.routes).await?;
    changes += c;
    if changes > 0 {
        tracing::info!(netns, changes, "router namespace converged");
    }
    match route_error {
        Some(e) => Err(e),
        None => Ok(changes),
    }
}

/// The router namespaces present: names under /run/netns starting with `prefix`
/// (an agent's, [`NETNS_PREFIX`] by default), sorted. A missing /run/netns is an
/// empty list.
pub fn list(prefix: &str) -> Result<Vec<String>, RouterError> {
    let dir = Path::new(NETNS_DIR);
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(RouterError::List {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| RouterError::List {
            path: dir.to_path_buf(),
            source,
        })?;
        if let Ok(name) = entry.file_name().into_string()
            && name.starts_with(prefix)
        {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// Removes a router namespace and the host ends of its legs; a missing one is success.
///
/// Every veth in the namespace is deleted first (which deletes its host end at once,
/// rather than whenever the kernel gets round to destroying the namespace), then the
/// name is unmounted and unlinked. `host` is not needed for that (deleting either end
/// of a veth deletes both); it is taken for symmetry with [`converge`].
pub async fn remove(_host: &Netlink, netns: &str) -> Result<(), RouterError> {
    validate_netns_name(netns)?;
    let path = netns_path(netns);
    if is_netns_mount(&path).map_err(|source| RouterError::RemoveNetns {
        path: path.clone(),
        source,
    })? {
        match NetNs::open(&path) {
            Ok(ns) => {
                let router =
                    Netlink::in_namespace(&ns).map_err(in_router(netns, "opening netlink"))?;
                for link in dump_links(&router)
                    .await
                    .map_err(in_router(netns, "listing links"))?
                {
                    if link.kind.as_deref() == Some("veth") {
                        router
                            .delete_link(link.index)
                            .await
                            .map_err(in_router(netns, format!("deleting leg {}", link.name)))?;
                    }
                }
            }
            Err(NetnsError::Open { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(RouterError::Netns {
                    netns: netns.to_string(),
                    source,
                });
            }
        }
    }
    remove_netns_file(&path)?;
    tracing::info!(netns, "router namespace removed");
    Ok(())
}

// ---- validation ------------------------------------------------------------------

fn invalid(netns: &str, reason: String) -> RouterError {
    RouterError::InvalidSpec {
        netns: netns.to_string(),
        reason,
    }
}

fn validate_netns_name(netns: &str) -> Result<(), RouterError> {
    if netns.is_empty()
        || netns.len() > 255
        || netns == "."
        || netns == ".."
        || netns.contains(['/', '\0'])
    {
        return Err(invalid(netns, "not a usable namespace name".to_string()));
    }
    Ok(())
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name != "."
        && name != ".."
        && !name.contains(|c: char| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
}

fn validate(spec: &RouterSpec) -> Result<(), RouterError> {
    let netns = spec.netns.as_str();
    validate_netns_name(netns)?;
    let mut hosts = BTreeSet::new();
    let mut peers = BTreeSet::new();
    for leg in &spec.legs {
        for name in [&leg.host_name, &leg.peer_name, &leg.bridge] {
            if !valid_ifname(name) {
                return Err(invalid(netns, format!("{name:?} is not an interface name")));
            }
        }
        if !hosts.insert(leg.host_name.as_str()) {
            return Err(invalid(
                netns,
                format!("two legs have host end {}", leg.host_name),
            ));
        }
        if !peers.insert(leg.peer_name.as_str()) {
            return Err(invalid(
                netns,
                format!("two legs have router end {}", leg.peer_name),
            ));
        }
        if leg.peer_name == "lo" {
            return Err(invalid(netns, "a leg cannot be named lo".to_string()));
        }
    }
    for (dest, via) in &spec.routes {
        if dest.addr().is_ipv4() != via.is_ipv4() {
            return Err(invalid(
                netns,
                format!("route {dest} via {via} mixes IPv4 and IPv6"),
            ));
        }
    }
    Ok(())
}

// ---- the namespace ---------------------------------------------------------------

fn netns_path(netns: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(netns)
}

/// Whether `path` is a mounted nsfs file (a live named namespace).
fn is_netns_mount(path: &Path) -> io::Result<bool> {
    match statfs(path) {
        Ok(s) => Ok(s.filesystem_type() == NSFS_MAGIC),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Opens the named namespace, creating it first if it is not there. The bool says
/// whether it was created.
fn ensure_netns(netns: &str) -> Result<(NetNs, bool), RouterError> {
    let path = netns_path(netns);
    let create_err = |source: io::Error| RouterError::CreateNetns {
        path: path.clone(),
        source,
    };
    let created = if is_netns_mount(&path).map_err(create_err)? {
        false
    } else {
        create_netns(&path).map_err(create_err)?;
        tracing::info!(netns, "router namespace created");
        true
    };
    let ns = NetNs::open(&path).map_err(|source| RouterError::Netns {
        netns: netns.to_string(),
        source,
    })?;
    Ok((ns, created))
}

/// What `ip netns add` does, in-process (see the module doc).
fn create_netns(path: &Path) -> io::Result<()> {
    let dir = Path::new(NETNS_DIR);
    fs::create_dir_all(dir)?;
    make_shared(dir)?;
    // The mount point: an empty file, as iproute2 makes it. One left by a crash
    // (present, not mounted) is reused.
    let made_file = match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(path)
    {
        Ok(_) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(e),
    };
    let target = path.to_path_buf();
    let result = std::thread::Builder::new()
        .name("kuryr-netns-add".to_string())
        .spawn(move || -> nix::Result<()> {
            // Only this thread moves to the new namespace; it ends right after.
            nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        })?
        .join()
        .map_err(|_| io::Error::other("the namespace-creating thread panicked"))?
        .map_err(io::Error::from);
    if result.is_err() && made_file {
        let _ = fs::remove_file(path);
    }
    result
}

/// Makes `dir` a shared mount point (binding it onto itself first if it is not a
/// mount point), so namespaces mounted there show in other mount namespaces: what
/// iproute2 does before each `ip netns add`.
fn make_shared(dir: &Path) -> io::Result<()> {
    let shared = || {
        nix::mount::mount(
            Some(""),
            dir,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL) => {
            nix::mount::mount(
                Some(dir),
                dir,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )?;
            shared().map_err(io::Error::from)
        }
        Err(e) => Err(e.into()),
    }
}

/// Unmounts (every stacked mount of) a named namespace and removes its file; what is
/// already gone is success.
fn remove_netns_file(path: &Path) -> Result<(), RouterError> {
    let err = |source: io::Error| RouterError::RemoveNetns {
        path: path.to_path_buf(),
        source,
    };
    for _ in 0..8 {
        match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => {}
            Err(Errno::EINVAL | Errno::ENOENT) => break,
            Err(e) => return Err(err(e.into())),
        }
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err(e)),
    }
}

/// Sets [`SYSCTLS`] inside the namespace where they differ; returns how many it
/// wrote. IPv6 ones are skipped when the kernel has no IPv6.
fn apply_sysctls(ns: &NetNs, netns: &str) -> Result<usize, RouterError> {
    let result = netns::run_in(ns, || -> Result<usize, (&'static str, io::Error)> {
        let mut changed = 0;
        for &(key, want) in SYSCTLS {
            let path = Path::new("/proc/sys").join(key);
            let have = match fs::read_to_string(&path) {
                Ok(v) => v,
                Err(e) if e.kind() == io::ErrorKind::NotFound && key.starts_with("net/ipv6/") => {
                    continue;
                }
                Err(e) => return Err((key, e)),
            };
            if have.trim() != want {
                fs::write(&path, want).map_err(|e| (key, e))?;
                changed += 1;
            }
        }
        Ok(changed)
    })
    .map_err(|source| RouterError::Netns {
        netns: netns.to_string(),
        source,
    })?;
    result.map_err(|(key, source)| RouterError::Sysctl {
        netns: netns.to_string(),
        key: key.replace('/', "."),
        source,
    })
}

// ---- legs ------------------------------------------------------------------------

/// A link as read here: what [`crate::netlink::Link`] has plus the veth peer.
#[derive(Debug, Clone)]
struct LinkState {
    index: u32,
    name: String,
    kind: Option<String>,
    master: Option<u32>,
    mtu: u32,
    mac: Option<MacAddr>,
    up: bool,
    /// IFLA_LINK: for a veth, the peer's index (in the peer's namespace).
    peer: Option<u32>,
    /// IFLA_LINK_NETNSID present: the peer is in another namespace.
    peer_elsewhere: bool,
}

fn parse_link(msg: &LinkMessage) -> LinkState {
    let mut link = LinkState {
        index: msg.header.index,
        name: String::new(),
        kind: None,
        master: None,
        mtu: 0,
        mac: None,
        up: msg
            .header
            .flags
            .contains(netlink_packet_route::link::LinkFlags::Up),
        peer: None,
        peer_elsewhere: false,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Controller(m) => link.master = Some(*m).filter(|&m| m != 0),
            LinkAttribute::Address(a) => {
                link.mac = <[u8; 6]>::try_from(a.as_slice()).ok().map(MacAddr)
            }
            LinkAttribute::Link(p) => link.peer = Some(*p).filter(|&p| p != 0),
            LinkAttribute::LinkNetNsId(_) => link.peer_elsewhere = true,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(k) = info {
                        link.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}

async fn dump_links(nl: &Netlink) -> Result<Vec<LinkState>, NetlinkError> {
    let replies = nl
        .request(
            "listing links",
            NLM_F_DUMP,
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
        )
        .await?;
    Ok(replies
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(parse_link(l)),
            _ => None,
        })
        .collect())
}

async fn get_link(nl: &Netlink, name: &str) -> Result<Option<LinkState>, NetlinkError> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    match nl
        .request(
            &format!("getting link {name}"),
            0,
            RouteNetlinkMessage::GetLink(msg),
        )
        .await
    {
        Ok(replies) => Ok(replies.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(parse_link(l)),
            _ => None,
        })),
        Err(e) if e.errno() == Some(ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether `host` and `router` are the two ends of one veth pair across namespaces.
fn is_pair(host: Option<&LinkState>, router: Option<&LinkState>) -> bool {
    match (host, router) {
        (Some(h), Some(r)) => {
            h.kind.as_deref() == Some("veth")
                && r.kind.as_deref() == Some("veth")
                && h.peer == Some(r.index)
                && r.peer == Some(h.index)
                && h.peer_elsewhere
                && r.peer_elsewhere
        }
        _ => false,
    }
}

/// The two ends of a leg as converged: (host end index, router end index).
#[derive(Debug, Clone, Copy)]
struct Ends {
    host: u32,
    router: u32,
}

async fn converge_leg(
    host: &Netlink,
    router: &Netlink,
    ns: &NetNs,
    netns: &str,
    leg: &LegSpec,
) -> Result<(usize, Ends), RouterError> {
    let (hname, rname) = (leg.host_name.as_str(), leg.peer_name.as_str());
    let bridge = host
        .link_by_name(&leg.bridge)
        .await
        .map_err(in_host(netns, format!("getting bridge {}", leg.bridge)))?
        .filter(|b| b.kind.as_deref() == Some("bridge"))
        .ok_or_else(|| RouterError::BridgeMissing {
            netns: netns.to_string(),
            leg: rname.to_string(),
            bridge: leg.bridge.clone(),
        })?;
    let mut changes = 0;
    let get_host = || async {
        get_link(host, hname)
            .await
            .map_err(in_host(netns, format!("getting {hname}")))
    };
    let get_router = || async {
        get_link(router, rname)
            .await
            .map_err(in_router(netns, format!("getting {rname}")))
    };
    let mut h = get_host().await?;
    let mut r = get_router().await?;
    if !is_pair(h.as_ref(), r.as_ref()) {
        if let Some(old) = &h {
            tracing::info!(
                netns,
                link = hname,
                "host end is not paired with the router end: recreating the leg"
            );
            host.delete_link(old.index)
                .await
                .map_err(in_host(netns, format!("deleting {hname}")))?;
            changes += 1;
        }
        // Read again: deleting the host end took its own peer with it.
        if let Some(old) = get_router().await? {
            router
                .delete_link(old.index)
                .await
                .map_err(in_router(netns, format!("deleting {rname}")))?;
            changes += 1;
        }
        host.create_veth(&VethSpec {
            host_name: hname.to_string(),
            master: Some(bridge.index),
            mtu: leg.mtu,
            peer_name: rname.to_string(),
            peer_ns: ns,
            peer_mac: Some(leg.mac),
        })
        .await
        .map_err(in_host(netns, format!("creating leg {hname}/{rname}")))?;
        changes += 1;
        h = get_host().await?;
        r = get_router().await?;
    }
    let (Some(h), Some(r)) = (h, r) else {
        return Err(RouterError::Router {
            netns: netns.to_string(),
            context: format!("leg {hname}/{rname}"),
            source: NetlinkError::LinkNotFound(format!("{hname} or {rname}")),
        });
    };
    let hctx = |what: &str| in_host(netns, format!("{what} of {hname}"));
    if h.master != Some(bridge.index) {
        host.set_master(h.index, bridge.index)
            .await
            .map_err(hctx("setting the master"))?;
        changes += 1;
    }
    if h.mtu != leg.mtu {
        host.set_mtu(h.index, leg.mtu)
            .await
            .map_err(hctx("setting the mtu"))?;
        changes += 1;
    }
    if !h.up {
        host.set_up(h.index).await.map_err(hctx("setting up"))?;
        changes += 1;
    }
    let rctx = |what: &str| in_router(netns, format!("{what} of {rname}"));
    if r.mac != Some(leg.mac) {
        router
            .set_mac(r.index, leg.mac)
            .await
            .map_err(rctx("setting the MAC"))?;
        changes += 1;
    }
    if r.mtu != leg.mtu {
        router
            .set_mtu(r.index, leg.mtu)
            .await
            .map_err(rctx("setting the mtu"))?;
        changes += 1;
    }
    if !r.up {
        router.set_up(r.index).await.map_err(rctx("setting up"))?;
        changes += 1;
    }
    Ok((
        changes,
        Ends {
            host: h.index,
            router: r.index,
        },
    ))
}

// ---- FDB (host namespace) ----------------------------------------------------------

/// A bridge FDB entry of a bridge port (NDA_MASTER set: the bridge's own entries, not
/// a device's NTF_SELF ones).
#[derive(Debug, Clone)]
struct BridgeFdb {
    port: u32,
    mac: MacAddr,
    state: NeighbourState,
    sticky: bool,
}

async fn bridge_fdb(nl: &Netlink) -> Result<Vec<BridgeFdb>, NetlinkError> {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    let replies = nl
        .request(
            "listing bridge fdb",
            NLM_F_DUMP,
            RouteNetlinkMessage::GetNeighbour(msg),
        )
        .await?;
    let mut out = Vec::new();
    for m in &replies {
        let RouteNetlinkMessage::NewNeighbour(n) = m else {
            continue;
        };
        if n.header.family != AddressFamily::Bridge {
            continue;
        }
        let (mut mac, mut master) = (None, false);
        for attr in &n.attributes {
            match attr {
                NeighbourAttribute::LinkLayerAddress(b) => {
                    mac = <[u8; 6]>::try_from(b.as_slice()).ok().map(MacAddr);
                }
                NeighbourAttribute::Controller(_) => master = true,
                _ => {}
            }
        }
        if let (Some(mac), true) = (mac, master) {
            out.push(BridgeFdb {
                port: n.header.ifindex,
                mac,
                state: n.header.state,
                sticky: n.header.flags.contains(NeighbourFlags::Sticky),
            });
        }
    }
    Ok(out)
}

fn fdb_master_message(port: u32, mac: MacAddr) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = port;
    msg.header.flags = NeighbourFlags::Controller;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    msg
}

/// `bridge fdb replace MAC dev PORT master static sticky`: moves the entry to `port`
/// if the bridge had it elsewhere.
async fn fdb_replace_sticky(nl: &Netlink, port: u32, mac: MacAddr) -> Result<(), NetlinkError> {
    let mut msg = fdb_master_message(port, mac);
    msg.header.state = NeighbourState::Noarp;
    msg.header.flags |= NeighbourFlags::Sticky;
    nl.ack(
        &format!("replacing fdb {mac} on link {port} (static sticky)"),
        NLM_F_CREATE | NLM_F_REPLACE,
        RouteNetlinkMessage::NewNeighbour(msg),
    )
    .await
}

async fn fdb_delete_master(nl: &Netlink, port: u32, mac: MacAddr) -> Result<(), NetlinkError> {
    match nl
        .ack(
            &format!("deleting fdb {mac} on link {port}"),
            0,
            RouteNetlinkMessage::DelNeighbour(fdb_master_message(port, mac)),
        )
        .await
    {
        Err(e) if e.errno() == Some(ENOENT) => Ok(()),
        other => other,
    }
}

/// Each host end: exactly one static entry, the leg's MAC, sticky. Dynamic entries
/// (learned) and the port's own permanent ones are left alone.
async fn converge_fdb(
    host: &Netlink,
    netns: &str,
    legs: &[LegSpec],
    ends: &[Ends],
) -> Result<usize, RouterError> {
    let entries = bridge_fdb(host)
        .await
        .map_err(in_host(netns, "listing the bridge fdb"))?;
    let mut changes = 0;
    for (leg, end) in legs.iter().zip(ends) {
        let ctx = || in_host(netns, format!("fdb of {}", leg.host_name));
        let on_port = || entries.iter().filter(|e| e.port == end.host);
        let good =
            on_port().any(|e| e.mac == leg.mac && e.state == NeighbourState::Noarp && e.sticky);
        if !good {
            fdb_replace_sticky(host, end.host, leg.mac)
                .await
                .map_err(ctx())?;
            changes += 1;
        }
        for stale in on_port().filter(|e| e.mac != leg.mac && e.state == NeighbourState::Noarp) {
            fdb_delete_master(host, end.host, stale.mac)
                .await
                .map_err(ctx())?;
            changes += 1;
        }
    }
    Ok(changes)
}

// ---- addresses and neighbours (router namespace) -------------------------------------

fn is_link_local_v6(net: &IpNet) -> bool {
    matches!(net, IpNet::V6(v6) if v6.addr().segments()[0] & 0xffc0 == 0xfe80)
}

async fn converge_addresses(
    router: &Netlink,
    netns: &str,
    legs: &[LegSpec],
    ends: &[Ends],
) -> Result<usize, RouterError> {
    let all = router
        .all_addresses()
        .await
        .map_err(in_router(netns, "listing addresses"))?;
    let mut changes = 0;
    for (leg, end) in legs.iter().zip(ends) {
        let ctx = || in_router(netns, format!("addresses of {}", leg.peer_name));
        let want: BTreeSet<IpNet> = leg.addresses.iter().copied().collect();
        let mut have: BTreeSet<IpNet> = all
            .iter()
            .filter(|a| a.index == end.router)
            .map(|a| a.net)
            .collect();
        let stale: Vec<IpNet> = have
            .iter()
            .filter(|a| !want.contains(a) && !is_link_local_v6(a))
            .copied()
            .collect();
        if !stale.is_empty() {
            for a in &stale {
                router.delete_address(end.router, *a).await.map_err(ctx())?;
                changes += 1;
            }
            // Read again: removing a primary IPv4 address also removes its secondaries.
            have = router
                .addresses(end.router)
                .await
                .map_err(ctx())?
                .into_iter()
                .collect();
        }
        for a in want.difference(&have) {
            router
                .add_address_with_protocol(end.router, *a, PROTOCOL)
                .await
                .map_err(ctx())?;
            changes += 1;
        }
    }
    Ok(changes)
}

#[derive(Debug, Clone)]
struct NeighbourEntry {
    index: u32,
    ip: IpAddr,
    mac: Option<MacAddr>,
    state: NeighbourState,
}

async fn dump_neighbours(nl: &Netlink) -> Result<Vec<NeighbourEntry>, NetlinkError> {
    let mut out = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family;
        let replies = nl
            .request(
                "listing neighbours",
                NLM_F_DUMP,
                RouteNetlinkMessage::GetNeighbour(msg),
            )
            .await?;
        for m in &replies {
            let RouteNetlinkMessage::NewNeighbour(n) = m else {
                continue;
            };
            let (mut ip, mut mac) = (None, None);
            for attr in &n.attributes {
                match attr {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                        ip = Some(IpAddr::from(*a));
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                        ip = Some(IpAddr::from(*a));
                    }
                    NeighbourAttribute::LinkLayerAddress(b) => {
                        mac = <[u8; 6]>::try_from(b.as_slice()).ok().map(MacAddr);
                    }
                    _ => {}
                }
            }
            if let Some(ip) = ip {
                out.push(NeighbourEntry {
                    index: n.header.ifindex,
                    ip,
                    mac,
                    state: n.header.state,
                });
            }
        }
    }
    Ok(out)
}

/// Each router end: exactly the spec's permanent entries. Entries the kernel learned
/// (any state but PERMANENT) are left alone unless the spec has their address.
async fn converge_neighbours(
    router: &Netlink,
    netns: &str,
    legs: &[LegSpec],
    ends: &[Ends],
) -> Result<usize, RouterError> {
    let all = dump_neighbours(router)
        .await
        .map_err(in_router(netns, "listing neighbours"))?;
    let mut changes = 0;
    for (leg, end) in legs.iter().zip(ends) {
        let ctx = || in_router(netns, format!("neighbours of {}", leg.peer_name));
        let have: Vec<&NeighbourEntry> = all.iter().filter(|n| n.index == end.router).collect();
        for (&ip, &mac) in &leg.neighbours {
            let good = have
                .iter()
                .any(|n| n.ip == ip && n.mac == Some(mac) && n.state == NeighbourState::Permanent);
            if !good {
                router
                    .neighbour_replace(end.router, ip, mac)
                    .await
                    .map_err(ctx())?;
                changes += 1;
            }
        }
        for stale in have
            .iter()
            .filter(|n| n.state == NeighbourState::Permanent && !leg.neighbours.contains_key(&n.ip))
        {
            router
                .neighbour_delete(end.router, stale.ip)
                .await
                .map_err(ctx())?;
            changes += 1;
        }
    }
    Ok(changes)
}

// ---- routes (router namespace) -------------------------------------------------------

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some((*v4).into()),
        RouteAddress::Inet6(v6) => Some((*v6).into()),
        _ => None,
    }
}

/// kuryr's routes of the main table (rtm_protocol [`PROTOCOL`]): destination → next
/// hops (several for a multipath route).
async fn kuryr_routes(nl: &Netlink) -> Result<BTreeMap<IpNet, BTreeSet<IpAddr>>, NetlinkError> {
    let replies = nl
        .request(
            "listing routes",
            NLM_F_DUMP,
            RouteNetlinkMessage::GetRoute(RouteMessage::default()),
        )
        .await?;
    let mut out: BTreeMap<IpNet, BTreeSet<IpAddr>> = BTreeMap::new();
    for m in &replies {
        let RouteNetlinkMessage::NewRoute(r) = m else {
            continue;
        };
        if r.header.kind != RouteType::Unicast || u8::from(r.header.protocol) != PROTOCOL {
            continue;
        }
        let unspecified: IpAddr = match r.header.address_family {
            AddressFamily::Inet => std::net::Ipv4Addr::UNSPECIFIED.into(),
            AddressFamily::Inet6 => std::net::Ipv6Addr::UNSPECIFIED.into(),
            _ => continue,
        };
        let mut table = u32::from(r.header.table);
        let mut dest = unspecified;
        let mut hops = BTreeSet::new();
        for attr in &r.attributes {
            match attr {
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Destination(a) => {
                    if let Some(ip) = route_ip(a) {
                        dest = ip;
                    }
                }
                RouteAttribute::Gateway(a) => hops.extend(route_ip(a)),
                RouteAttribute::MultiPath(nexthops) => {
                    for hop in nexthops {
                        for a in &hop.attributes {
                            if let RouteAttribute::Gateway(g) = a {
                                hops.extend(route_ip(g));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
            continue;
        }
        if let Ok(dest) = IpNet::new(dest, r.header.destination_prefix_length) {
            out.entry(dest).or_default().extend(hops);
        }
    }
    Ok(out)
}

fn route_message(dest: IpNet, hops: &BTreeSet<IpAddr>) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = if dest.addr().is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    msg.header.destination_prefix_length = dest.prefix_len();
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::from(PROTOCOL);
    msg.header.scope = RouteScope::Universe;
    msg.header.kind = RouteType::Unicast;
    if dest.prefix_len() > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dest.addr())));
    }
    match hops.iter().collect::<Vec<_>>().as_slice() {
        [] => {}
        [one] => msg
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(**one))),
        many => {
            let nexthops = many
                .iter()
                .map(|gw| {
                    let mut hop = RouteNextHop::default();
                    hop.attributes
                        .push(RouteAttribute::Gateway(RouteAddress::from(**gw)));
                    hop
                })
                .collect();
            msg.attributes.push(RouteAttribute::MultiPath(nexthops));
        }
    }
    msg
}

fn describe_route(dest: IpNet, hops: &BTreeSet<IpAddr>) -> String {
    let hops: Vec<String> = hops.iter().map(ToString::to_string).collect();
    format!("{dest} via {}", hops.join(","))
}

/// Exactly the spec's routes among kuryr's; returns the changes and the first route
/// that could not be added (the others were still tried).
async fn converge_routes(
    router: &Netlink,
    netns: &str,
    routes: &[(IpNet, IpAddr)],
) -> Result<(usize, Option<RouterError>), RouterError> {
    let mut want: BTreeMap<IpNet, BTreeSet<IpAddr>> = BTreeMap::new();
    for (dest, via) in routes {
        want.entry(dest.trunc()).or_default().insert(*via);
    }
    let have = kuryr_routes(router)
        .await
        .map_err(in_router(netns, "listing routes"))?;
    let mut changes = 0;
    for (dest, hops) in &have {
        if want.get(dest) == Some(hops) {
            continue;
        }
        // Delete by destination and protocol: the whole route, every next hop.
        let mut msg = route_message(*dest, &BTreeSet::new());
        msg.header.scope = RouteScope::NoWhere;
        let what = format!("deleting route {}", describe_route(*dest, hops));
        match router
            .ack(&what, 0, RouteNetlinkMessage::DelRoute(msg))
            .await
        {
            Ok(()) => changes += 1,
            Err(e) if e.errno() == Some(ESRCH) => {}
            Err(e) => return Err(in_router(netns, "routes")(e)),
        }
    }
    let mut first_error = None;
    for (dest, hops) in &want {
        if have.get(dest) == Some(hops) {
            continue;
        }
        let route = describe_route(*dest, hops);
        match router
            .ack(
                &format!("adding route {route}"),
                NLM_F_CREATE | NLM_F_EXCL,
                RouteNetlinkMessage::NewRoute(route_message(*dest, hops)),
            )
            .await
        {
            Ok(()) => changes += 1,
            Err(source) => {
                tracing::warn!(netns, %route, error = %source, "router route not added");
                first_error.get_or_insert(RouterError::Route {
                    netns: netns.to_string(),
                    route,
                    source,
                });
            }
        }
    }
    Ok((changes, first_error))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leg(host: &str, peer: &str) -> LegSpec {
        LegSpec {
            host_name: host.to_string(),
            bridge: "brq1".to_string(),
            peer_name: peer.to_string(),
            mac: MacAddr([0xfa, 0x16, 0x3e, 0, 0, 1]),
            mtu: 1450,
            addresses: vec![],
            neighbours: BTreeMap::new(),
        }
    }

    fn spec(netns: &str, legs: Vec<LegSpec>) -> RouterSpec {
        RouterSpec {
            netns: netns.to_string(),
            legs,
            routes: vec![],
        }
    }

    #[test]
    fn validation() {
        assert!(
            validate(&spec(
                "kqr-1",
                vec![leg("tap1", "qr-1"), leg("tap2", "qr-2")]
            ))
            .is_ok()
        );
        for bad in [
            spec("", vec![]),
            spec("..", vec![]),
            spec("kqr-a/b", vec![]),
            spec("kqr-1", vec![leg("tap1", "qr-1"), leg("tap1", "qr-2")]),
            spec("kqr-1", vec![leg("tap1", "qr-1"), leg("tap2", "qr-1")]),
            spec("kqr-1", vec![leg("tap1234567890123", "qr-1")]),
            spec("kqr-1", vec![leg("tap 1", "qr-1")]),
            spec("kqr-1", vec![leg("tap1", "lo")]),
            RouterSpec {
                routes: vec![(
                    "10.0.0.0/8".parse().expect("net"),
                    "fd00::1".parse().expect("ip"),
                )],
                ..spec("kqr-1", vec![])
            },
        ] {
            assert!(
                matches!(validate(&bad), Err(RouterError::InvalidSpec { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn route_messages() {
        let dest: IpNet = "10.9.0.0/16".parse().expect("net");
        let one: BTreeSet<IpAddr> = ["10.1.0.5".parse().expect("ip")].into();
        let msg = route_message(dest, &one);
        assert_eq!(u8::from(msg.header.protocol), PROTOCOL);
        assert!(
            msg.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Gateway(_)))
        );
        let two: BTreeSet<IpAddr> = [
            "10.1.0.5".parse().expect("ip"),
            "10.1.0.6".parse().expect("ip"),
        ]
        .into();
        let msg = route_message(dest, &two);
        assert!(
            msg.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::MultiPath(h) if h.len() == 2))
        );
        let default = route_message("0.0.0.0/0".parse().expect("net"), &one);
        assert!(
            !default
                .attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Destination(_)))
        );
        assert_eq!(
            describe_route(dest, &two),
            "10.9.0.0/16 via 10.1.0.5,10.1.0.6"
        );
    }
}
