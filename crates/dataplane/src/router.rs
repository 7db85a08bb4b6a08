//! Distributed routers (Neutron DVR-style): network namespaces brought to a declarative
//! [`RouterSpec`] by [`converge`]: the per-host router namespace `kqr-<router id>` and,
//! on the router's gateway host, its SNAT namespace `ksnat-<router id>`.
//!
//! What such a namespace holds (the issue 10 design):
//! - sysctls set before any leg exists: forwarding on, no redirects, no rp_filter,
//!   `arp_ignore=1`/`arp_announce=2` (a leg answers ARP only for its own addresses and
//!   sources its requests from them), no DAD and no RAs (the gateway addresses are
//!   anycast: the same IP and MAC on every host that has the router); `lo` up;
//! - legs: veths whose host end (`tap…`) is a port of a bridge and whose namespace end
//!   (`qr-…` router interfaces, `sg-…` SNAT ports, `qg-…` the gateway port, `qf-…` the
//!   floating IP leg: any name) is born inside the namespace with its MAC, MTU and
//!   addresses (IPv6 ones `nodad`; /32s and no address at all are fine). The host end
//!   carries a static **sticky** FDB entry for that MAC (plain static entries roam);
//! - permanent neighbour entries for every port of the legs' subnets, so the router
//!   never resolves anything across the overlay;
//! - routes in the main table ([`RouterSpec::routes`]) and in other tables
//!   ([`RouterSpec::table_routes`]), and policy rules ([`RouterSpec::rules`]), all
//!   marked with rtm_protocol / FRA_PROTOCOL [`PROTOCOL`] (`proto 107` in `ip route`
//!   and `ip rule`): only what has that mark is kuryr's, the kernel's connected routes,
//!   its default rules and anybody else's are never touched;
//! - the NAT table `table ip kuryr_nat` ([`RouterSpec::nat`]), applied with the `nft`
//!   binary as a whole-table replace (see "NAT" below);
//! - gratuitous ARPs ([`RouterSpec::announce`]) for addresses just added or legs just
//!   (re)made.
//!
//! [`converge`] is idempotent and repairs drift: a missing leg, address, neighbour,
//! FDB entry, route, rule, NAT table or sysctl comes back, a leg with wrong settings is
//! fixed (or recreated when its two ends are not one pair), and veths, addresses,
//! permanent neighbours, static FDB entries on the host ends, kuryr-marked routes and
//! rules that the spec does not have are removed. It returns how many changes it made.
//!
//! NAT: the `nft` binary (see [`set_nft_binary`]) is spawned from a short-lived thread
//! that has entered the namespace (a child inherits the spawning thread's namespace),
//! not through `ip netns exec` (no iproute2 needed, no mount namespace per call). Drift
//! is detected cheaply: this process remembers, per namespace, the digest of the last
//! applied script, the digest of `nft -s list table ip kuryr_nat` right after, and the
//! namespace's nf_tables generation (read in-process over nfnetlink, `NFT_MSG_GETGEN`;
//! every committed nf_tables transaction in the namespace bumps it). A converge whose
//! script is unchanged and whose generation did not move costs that one netlink read;
//! otherwise the table is listed and compared, and re-applied only when it differs.
//! After an agent restart every table is listed, applied once and listed again
//! (counted as a change only if the table differed).
//!
//! Gratuitous ARP: sent in-process, an `AF_PACKET` raw socket opened in a thread inside
//! the namespace (the leg's link address found with `getifaddrs`, so no `unsafe`):
//! one ARP request, broadcast, sender = target = the address, from the leg's MAC; once
//! per address when it was added or its leg (re)made, after both ends of the leg are up
//! and their queues attached. One that cannot be sent stays pending (in memory) and is
//! retried by the next converge. IPv6 (unsolicited NA) is not sent.
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
use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::link::{LinkAttribute, LinkInfo, LinkMessage, State as OperState};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteNextHop, RouteProtocol,
    RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::socket::{self as sock, MsgFlags, SockFlag, SockType};
use nix::sys::statfs::{NSFS_MAGIC, statfs};
use sha2::{Digest, Sha256};

use crate::MacAddr;
use crate::netlink::{Netlink, NetlinkError, VethSpec};
use crate::netns::{self, NetNs, NetnsError};
use crate::nft::NftError;

/// Where named network namespaces live (as for iproute2).
pub const NETNS_DIR: &str = "/run/netns";
/// Prefix of router namespaces: what [`list`] returns.
pub const NETNS_PREFIX: &str = "kqr-";
/// Prefix of router interface legs (`qr-<port id[:11]>`). Any other name works too:
/// [`converge`] removes every veth of the namespace that the spec does not name.
pub const LEG_PREFIX: &str = "qr-";
/// IFA_PROTO of the router's addresses, rtm_protocol of its routes and FRA_PROTOCOL of
/// its rules: 'k', as the agent's bridge gateway addresses.
pub const PROTOCOL: u8 = 0x6b;
/// The nft table [`RouterSpec::nat`] defines (family `ip`).
pub const NAT_TABLE: &str = "kuryr_nat";

const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const ENODEV: i32 = 19;
const RT_TABLE_LOCAL: u8 = 255;
/// Longest interface name (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;
/// How long [`converge`] waits for a leg to be ready to send its gratuitous ARPs.
const ANNOUNCE_WAIT: Duration = Duration::from_secs(1);

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

/// One router namespace as it should be on this host: `kqr-<router>` on every host
/// that has the router, `ksnat-<router>` on its gateway host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterSpec {
    /// The namespace name (a named netns under /run/netns).
    pub netns: String,
    pub legs: Vec<LegSpec>,
    /// Routes of the main table: destination via next hop (Neutron `routes`, or the
    /// SNAT namespace's default route). Several next hops for one destination make one
    /// multipath route.
    pub routes: Vec<(IpNet, IpAddr)>,
    /// Policy rules, exactly these (IPv4 and IPv6 ones: the family is `from`'s; a rule
    /// without `from` is added for both families, harmless since a table without a
    /// route of a family falls through to the next rule). Marked FRA_PROTOCOL
    /// [`PROTOCOL`]; nobody else's rules are touched.
    pub rules: Vec<RuleSpec>,
    /// Routes in tables other than main (and local), exactly these, kuryr-marked as
    /// `routes` are. One route per (table, destination).
    pub table_routes: Vec<TableRoute>,
    /// An nft script defining exactly one table, `table ip kuryr_nat { ... }`, applied
    /// inside the namespace as a whole-table replace when it changed or the kernel's
    /// table drifted; `None`: no such table (removed if present).
    pub nat: Option<String>,
    /// (leg peer name, address): addresses to announce with a gratuitous ARP from
    /// that leg after they were added or the leg was (re)made (floating IPs, gateway
    /// IPs that may have moved from another host). The address must be one of the
    /// leg's; IPv6 ones are accepted and not announced.
    pub announce: Vec<(String, IpAddr)>,
}

/// `ip rule add [from FROM] [iif IIF] lookup TABLE pref PRIORITY proto 107`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleSpec {
    /// Not 0 (that is the local table's rule).
    pub priority: u32,
    pub from: Option<IpNet>,
    /// E.g. `lo`: the router's own packets (its ICMP errors to external clients).
    pub iif: Option<String>,
    /// Not 0 (unspec) nor 255 (local).
    pub table: u32,
}

/// `ip route add DST [via VIA] dev DEV table TABLE proto 107` (scope link without
/// `via`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableRoute {
    /// Not 0, 254 (main: that is [`RouterSpec::routes`]) nor 255 (local).
    pub table: u32,
    pub dst: IpNet,
    pub via: Option<IpAddr>,
    /// The peer name of one of the spec's legs.
    pub dev: String,
}

/// One leg: a veth whose host end is a port of a bridge and whose namespace end holds
/// a MAC and addresses (a router interface's anycast gateway, an SNAT port, the
/// gateway port, the floating IP leg).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegSpec {
    /// Host end, `tap<port id[:11]>`, enslaved to `bridge` (which exists: the agent made it).
    pub host_name: String,
    pub bridge: String,
    /// Namespace end (`qr-…`, `sg-…`, `qg-…`, `qf-…`), born in the namespace.
    pub peer_name: String,
    pub mac: MacAddr,
    pub mtu: u32,
    /// The addresses with their subnets' prefix (IPv6 ones added `nodad`); may be
    /// empty, or /32s (floating IPs).
    pub addresses: Vec<IpNet>,
    /// Permanent neighbour entries on the namespace end: every port of the leg's
    /// subnets (local and remote hosts), so the router never ARPs/NDs across the
    /// overlay. Entries the kernel learns (e.g. on an external leg) are left alone.
    pub neighbours: BTreeMap<IpAddr, MacAddr>,
}

/// The `nft` binary run for [`RouterSpec::nat`]: `nft` from `PATH` unless set.
static NFT_BINARY: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Sets the `nft` binary that [`converge`] runs for NAT tables (default: `nft` from
/// `PATH`), e.g. the agent's `--nft-binary`.
pub fn set_nft_binary(path: impl Into<PathBuf>) {
    *NFT_BINARY.lock().unwrap_or_else(|p| p.into_inner()) = Some(path.into());
}

pub(crate) fn nft_binary() -> PathBuf {
    NFT_BINARY
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_else(|| PathBuf::from("nft"))
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
    /// A policy rule could not be added or removed; as for [`RouterError::Route`],
    /// everything else was converged and the first failure is reported.
    #[error("router {netns}: rule {rule}: {source}")]
    Rule {
        netns: String,
        rule: String,
        #[source]
        source: NetlinkError,
    },
    /// Reading the namespace's nf_tables generation or the NAT table's presence over
    /// nfnetlink failed (the NAT table was left as it was).
    #[error("router {netns}: reading nf_tables state: {source}")]
    NftProbe {
        netns: String,
        #[source]
        source: io::Error,
    },
    /// Running nft for the NAT table failed (e.g. the script does not parse). The
    /// rest was converged; the next converge tries again.
    #[error("router {netns}: nat table: {context}: {source}")]
    Nat {
        netns: String,
        context: String,
        #[source]
        source: Box<NftError>,
    },
    /// A gratuitous ARP could not be sent; it stays pending for the next converge.
    #[error("router {netns}: gratuitous ARP for {address} on {leg}: {source}")]
    Announce {
        netns: String,
        leg: String,
        address: IpAddr,
        #[source]
        source: io::Error,
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

/// Brings the namespace to `spec`; returns how many changes it made (0 = it already
/// was). `host` is a Netlink handle in the host (agent's) namespace, where the legs'
/// bridges are.
///
/// Order: namespace, sysctls, `lo`, veths the spec does not name removed, legs
/// (created, fixed or recreated), sticky FDB entries, addresses, neighbours, main
/// routes, rules, table routes, NAT table, gratuitous ARPs. A missing bridge stops the
/// pass at that leg (legs before it are done). A route, rule, NAT table or ARP that
/// fails does not stop the others: the first such failure is returned at the end.
pub async fn converge(host: &Netlink, spec: &RouterSpec) -> Result<usize, RouterError> {
    validate(spec)?;
    let netns = spec.netns.as_str();
    let (ns, created) = ensure_netns(netns)?;
    if created {
        forget(netns);
    }
    let ino = netns_inode(netns)?;
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

    // Veths the spec does not have (deleting the namespace end deletes the pair).
    let wanted: BTreeSet<&str> = spec.legs.iter().map(|l| l.peer_name.as_str()).collect();
    let mut deleted = BTreeSet::new();
    for link in dump_links(&router)
        .await
        .map_err(in_router(netns, "listing links"))?
    {
        if link.kind.as_deref() != Some("veth") || wanted.contains(link.name.as_str()) {
            continue;
        }
        // Both ends of a pair inside the namespace go with the first.
        if !link.peer_elsewhere && link.peer.is_some_and(|p| deleted.contains(&p)) {
            continue;
        }
        tracing::info!(netns, leg = %link.name, "removing a veth not in the spec");
        router.delete_link(link.index).await.map_err(in_router(
            netns,
            format!("deleting stale leg {}", link.name),
        ))?;
        deleted.insert(link.index);
        changes += 1;
    }

    let mut ends = Vec::with_capacity(spec.legs.len());
    let mut made = Vec::with_capacity(spec.legs.len());
    for leg in &spec.legs {
        let (c, end, fresh) = converge_leg(host, &router, &ns, netns, leg).await?;
        changes += c;
        ends.push(end);
        made.push(fresh);
    }
    changes += converge_fdb(host, netns, &spec.legs, &ends).await?;
    let (c, added) = converge_addresses(&router, netns, &spec.legs, &ends).await?;
    changes += c;
    changes += converge_neighbours(&router, netns, &spec.legs, &ends).await?;
    queue_announcements(netns, ino, spec, &made, &added);

    let mut failed: Option<RouterError> = None;
    let routes = kuryr_routes(&router)
        .await
        .map_err(in_router(netns, "listing routes"))?;
    let (c, e) = converge_routes(&router, netns, &spec.routes, &routes).await?;
    changes += c;
    failed = failed.or(e);
    let (c, e) = converge_rules(&router, netns, &spec.rules).await?;
    changes += c;
    failed = failed.or(e);
    let (c, e) = converge_table_routes(&router, netns, spec, &ends, &routes).await?;
    changes += c;
    failed = failed.or(e);
    match converge_nat(&ns, netns, ino, spec.nat.as_deref()).await {
        Ok(c) => changes += c,
        Err(e) => {
            tracing::warn!(netns, error = %e, "router nat table not converged");
            failed = failed.or(Some(e));
        }
    }
    if let Err(e) = announce(host, &router, &ns, netns, ino, spec).await {
        tracing::warn!(netns, error = %e, "gratuitous ARP not sent");
        failed = failed.or(Some(e));
    }
    if changes > 0 {
        tracing::info!(netns, changes, "router namespace converged");
    }
    match failed {
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
    forget(netns);
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
    for rule in &spec.rules {
        if rule.priority == 0 {
            return Err(invalid(netns, format!("rule {rule:?}: priority 0")));
        }
        if rule.table == 0 || rule.table == u32::from(RT_TABLE_LOCAL) {
            return Err(invalid(
                netns,
                format!("rule {rule:?}: table {}", rule.table),
            ));
        }
        if let Some(iif) = &rule.iif
            && !valid_ifname(iif)
        {
            return Err(invalid(netns, format!("rule {rule:?}: bad iif")));
        }
    }
    let mut table_dsts = BTreeMap::new();
    for r in &spec.table_routes {
        if [
            0,
            u32::from(RouteHeader::RT_TABLE_MAIN),
            u32::from(RT_TABLE_LOCAL),
        ]
        .contains(&r.table)
        {
            return Err(invalid(
                netns,
                format!("table route {}: table {}", describe_table_route(r), r.table),
            ));
        }
        if !peers.contains(r.dev.as_str()) {
            return Err(invalid(
                netns,
                format!("table route {}: no leg {}", describe_table_route(r), r.dev),
            ));
        }
        if r.via.is_some_and(|v| v.is_ipv4() != r.dst.addr().is_ipv4()) {
            return Err(invalid(
                netns,
                format!(
                    "table route {} mixes IPv4 and IPv6",
                    describe_table_route(r)
                ),
            ));
        }
        if let Some(other) = table_dsts.insert((r.table, r.dst.trunc()), r)
            && other != r
        {
            return Err(invalid(
                netns,
                format!(
                    "two routes for {} in table {}: {} and {}",
                    r.dst.trunc(),
                    r.table,
                    describe_table_route(other),
                    describe_table_route(r)
                ),
            ));
        }
    }
    for (leg, address) in &spec.announce {
        let on_leg = spec
            .legs
            .iter()
            .find(|l| &l.peer_name == leg)
            .is_some_and(|l| l.addresses.iter().any(|a| a.addr() == *address));
        if !on_leg {
            return Err(invalid(
                netns,
                format!("announce {address} on {leg}: not an address of that leg"),
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

/// The namespace's nsfs inode: tells a namespace from a new one of the same name.
fn netns_inode(netns: &str) -> Result<u64, RouterError> {
    let path = netns_path(netns);
    fs::metadata(&path)
        .map(|m| m.ino())
        .map_err(|source| RouterError::Netns {
            netns: netns.to_string(),
            source: NetnsError::Open { path, source },
        })
}

// ---- what this process remembers per namespace ------------------------------------

/// Per namespace: its NAT table as last applied or verified, and gratuitous ARPs
/// still to send. Lost on restart (then every NAT table is verified once more).
#[derive(Debug, Default)]
struct Memo {
    /// [`netns_inode`] of the namespace this is about.
    inode: u64,
    nat: Option<NatMemo>,
    pending: BTreeSet<(String, Ipv4Addr)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct NatMemo {
    /// Digest of the spec's script (None: no table wanted).
    want: Option<[u8; 32]>,
    /// Digest of `nft -s list table ip kuryr_nat` after it was applied or verified
    /// (None: no table).
    listing: Option<[u8; 32]>,
    /// The namespace's nf_tables generation then.
    genid: u32,
}

static MEMO: Mutex<BTreeMap<String, Memo>> = Mutex::new(BTreeMap::new());

fn with_memo<T>(netns: &str, inode: u64, f: impl FnOnce(&mut Memo) -> T) -> T {
    let mut all = MEMO.lock().unwrap_or_else(|p| p.into_inner());
    let memo = all.entry(netns.to_string()).or_default();
    if memo.inode != inode {
        *memo = Memo {
            inode,
            ..Memo::default()
        };
    }
    f(memo)
}

fn forget(netns: &str) {
    MEMO.lock().unwrap_or_else(|p| p.into_inner()).remove(netns);
}

fn digest(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
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
    /// IFLA_OPERSTATE is up.
    oper_up: bool,
    /// IFLA_QDISC: `noop` until the kernel attached the link's queue (after carrier).
    qdisc: Option<String>,
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
        oper_up: false,
        qdisc: None,
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
            LinkAttribute::OperState(s) => link.oper_up = *s == OperState::Up,
            LinkAttribute::Qdisc(q) => link.qdisc = Some(q.clone()),
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

/// The two ends of a leg as converged: (host end index, namespace end index).
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
) -> Result<(usize, Ends, bool), RouterError> {
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
    let fresh = !is_pair(h.as_ref(), r.as_ref());
    if fresh {
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
        fresh,
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

/// Exactly the spec's addresses on each leg (IPv6 link-local ones kept); returns the
/// changes and the addresses added, as (leg index, address).
async fn converge_addresses(
    router: &Netlink,
    netns: &str,
    legs: &[LegSpec],
    ends: &[Ends],
) -> Result<(usize, Vec<(usize, IpAddr)>), RouterError> {
    let all = router
        .all_addresses()
        .await
        .map_err(in_router(netns, "listing addresses"))?;
    let mut changes = 0;
    let mut added = Vec::new();
    for (i, (leg, end)) in legs.iter().zip(ends).enumerate() {
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
            added.push((i, a.addr()));
        }
    }
    Ok((changes, added))
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

/// One kuryr-marked (rtm_protocol [`PROTOCOL`]) unicast route, any table.
#[derive(Debug, Clone)]
struct KuryrRoute {
    table: u32,
    dst: IpNet,
    /// Next hops (several for a multipath route).
    hops: BTreeSet<IpAddr>,
    oif: Option<u32>,
    multipath: bool,
    /// As dumped: sent back as RTM_DELROUTE to delete exactly this route.
    msg: RouteMessage,
}

async fn kuryr_routes(nl: &Netlink) -> Result<Vec<KuryrRoute>, NetlinkError> {
    let replies = nl
        .request(
            "listing routes",
            NLM_F_DUMP,
            RouteNetlinkMessage::GetRoute(RouteMessage::default()),
        )
        .await?;
    let mut out = Vec::new();
    for m in replies {
        let RouteNetlinkMessage::NewRoute(r) = m else {
            continue;
        };
        if r.header.kind != RouteType::Unicast || u8::from(r.header.protocol) != PROTOCOL {
            continue;
        }
        let unspecified: IpAddr = match r.header.address_family {
            AddressFamily::Inet => Ipv4Addr::UNSPECIFIED.into(),
            AddressFamily::Inet6 => std::net::Ipv6Addr::UNSPECIFIED.into(),
            _ => continue,
        };
        let mut table = u32::from(r.header.table);
        let mut dest = unspecified;
        let mut hops = BTreeSet::new();
        let (mut oif, mut multipath) = (None, false);
        for attr in &r.attributes {
            match attr {
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Destination(a) => {
                    if let Some(ip) = route_ip(a) {
                        dest = ip;
                    }
                }
                RouteAttribute::Gateway(a) => hops.extend(route_ip(a)),
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::MultiPath(nexthops) => {
                    multipath = true;
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
        if let Ok(dst) = IpNet::new(dest, r.header.destination_prefix_length) {
            out.push(KuryrRoute {
                table,
                dst,
                hops,
                oif,
                multipath,
                msg: r,
            });
        }
    }
    Ok(out)
}

fn family_of(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn route_message(dest: IpNet, hops: &BTreeSet<IpAddr>) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family_of(dest.addr());
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

/// Exactly the spec's routes among kuryr's of the main table; returns the changes
/// and the first route that could not be added (the others were still tried).
async fn converge_routes(
    router: &Netlink,
    netns: &str,
    routes: &[(IpNet, IpAddr)],
    dump: &[KuryrRoute],
) -> Result<(usize, Option<RouterError>), RouterError> {
    let mut want: BTreeMap<IpNet, BTreeSet<IpAddr>> = BTreeMap::new();
    for (dest, via) in routes {
        want.entry(dest.trunc()).or_default().insert(*via);
    }
    let mut have: BTreeMap<IpNet, BTreeSet<IpAddr>> = BTreeMap::new();
    for r in dump
        .iter()
        .filter(|r| r.table == u32::from(RouteHeader::RT_TABLE_MAIN))
    {
        have.entry(r.dst)
            .or_default()
            .extend(r.hops.iter().copied());
    }
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

// ---- routes of other tables ------------------------------------------------------------

fn describe_table_route(r: &TableRoute) -> String {
    match r.via {
        Some(via) => format!("{} via {via} dev {} table {}", r.dst, r.dev, r.table),
        None => format!("{} dev {} table {}", r.dst, r.dev, r.table),
    }
}

/// The header's table field: the table if it fits, else RT_TABLE_UNSPEC (the
/// attribute, always sent, is what counts).
fn header_table(table: u32) -> u8 {
    u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC)
}

fn table_route_message(r: &TableRoute, oif: u32) -> RouteMessage {
    let dst = r.dst.trunc();
    let mut msg = RouteMessage::default();
    msg.header.address_family = family_of(dst.addr());
    msg.header.destination_prefix_length = dst.prefix_len();
    msg.header.table = header_table(r.table);
    msg.header.protocol = RouteProtocol::from(PROTOCOL);
    msg.header.scope = if r.via.is_some() {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    msg.header.kind = RouteType::Unicast;
    msg.attributes.push(RouteAttribute::Table(r.table));
    if dst.prefix_len() > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst.addr())));
    }
    if let Some(via) = r.via {
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(via)));
    }
    msg.attributes.push(RouteAttribute::Oif(oif));
    msg
}

/// Exactly the spec's table routes among kuryr's routes of tables other than main:
/// a route that differs in next hop or device is replaced (deleted, added).
async fn converge_table_routes(
    router: &Netlink,
    netns: &str,
    spec: &RouterSpec,
    ends: &[Ends],
    dump: &[KuryrRoute],
) -> Result<(usize, Option<RouterError>), RouterError> {
    let oif_of: BTreeMap<&str, u32> = spec
        .legs
        .iter()
        .zip(ends)
        .map(|(l, e)| (l.peer_name.as_str(), e.router))
        .collect();
    let mut want: BTreeMap<(u32, IpNet), (&TableRoute, u32)> = BTreeMap::new();
    for r in &spec.table_routes {
        if let Some(&oif) = oif_of.get(r.dev.as_str()) {
            want.insert((r.table, r.dst.trunc()), (r, oif));
        }
    }
    let mut changes = 0;
    let mut good = BTreeSet::new();
    for route in dump
        .iter()
        .filter(|r| r.table != u32::from(RouteHeader::RT_TABLE_MAIN))
    {
        let key = (route.table, route.dst);
        let matches = want.get(&key).is_some_and(|(r, oif)| {
            !route.multipath
                && route.hops.len() <= 1
                && route.hops.first().copied() == r.via
                && route.oif == Some(*oif)
        });
        if matches && good.insert(key) {
            continue;
        }
        let what = format!("deleting route {} table {}", route.dst, route.table);
        match router
            .ack(&what, 0, RouteNetlinkMessage::DelRoute(route.msg.clone()))
            .await
        {
            Ok(()) => changes += 1,
            Err(e) if e.errno() == Some(ESRCH) => {}
            Err(e) => return Err(in_router(netns, "table routes")(e)),
        }
    }
    // Routes without a next hop first: the gateways of the others are on their links.
    let mut missing: Vec<&(&TableRoute, u32)> = want
        .iter()
        .filter(|(k, _)| !good.contains(*k))
        .map(|(_, v)| v)
        .collect();
    missing.sort_by_key(|(r, _)| r.via.is_some());
    let mut first_error = None;
    for (r, oif) in missing {
        let route = describe_table_route(r);
        match router
            .ack(
                &format!("adding route {route}"),
                NLM_F_CREATE | NLM_F_EXCL,
                RouteNetlinkMessage::NewRoute(table_route_message(r, *oif)),
            )
            .await
        {
            Ok(()) => changes += 1,
            Err(source) => {
                tracing::warn!(netns, %route, error = %source, "router table route not added");
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

// ---- policy rules ----------------------------------------------------------------------

/// A rule as this module makes them; two rules with equal keys are the same rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct RuleKey {
    v6: bool,
    priority: u32,
    /// None also for a /0.
    from: Option<IpNet>,
    iif: Option<String>,
    table: u32,
}

impl RuleKey {
    fn describe(&self) -> String {
        let mut s = format!("pref {}", self.priority);
        match &self.from {
            Some(from) => s.push_str(&format!(" from {from}")),
            None => s.push_str(if self.v6 {
                " from all (v6)"
            } else {
                " from all (v4)"
            }),
        }
        if let Some(iif) = &self.iif {
            s.push_str(&format!(" iif {iif}"));
        }
        s.push_str(&format!(" lookup {}", self.table));
        s
    }
}

fn wanted_rules(rules: &[RuleSpec]) -> BTreeSet<RuleKey> {
    let mut out = BTreeSet::new();
    for r in rules {
        let families: &[bool] = match r.from {
            Some(from) => &[from.addr().is_ipv6()],
            None => &[false, true],
        };
        for &v6 in families {
            out.insert(RuleKey {
                v6,
                priority: r.priority,
                from: r.from.map(|f| f.trunc()).filter(|f| f.prefix_len() > 0),
                iif: r.iif.clone(),
                table: r.table,
            });
        }
    }
    out
}

/// kuryr's rules (FRA_PROTOCOL [`PROTOCOL`]) of both families, each with its key, or
/// None for one with anything this module does not set (a stray: deleted).
async fn kuryr_rules(nl: &Netlink) -> Result<Vec<(Option<RuleKey>, RuleMessage)>, NetlinkError> {
    let mut out = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut msg = RuleMessage::default();
        msg.header.family = family;
        let replies = nl
            .request(
                "listing rules",
                NLM_F_DUMP,
                RouteNetlinkMessage::GetRule(msg),
            )
            .await?;
        for m in replies {
            let RouteNetlinkMessage::NewRule(r) = m else {
                continue;
            };
            if r.header.family != family {
                continue;
            }
            let mut protocol = None;
            let (mut priority, mut src, mut iif) = (0, None, None);
            let mut table = u32::from(r.header.table);
            let mut plain = r.header.action == RuleAction::ToTable
                && r.header.dst_len == 0
                && r.header.tos == 0
                && !r.header.flags.contains(RuleFlags::Invert);
            for attr in &r.attributes {
                match attr {
                    RuleAttribute::Protocol(p) => protocol = Some(u8::from(*p)),
                    RuleAttribute::Priority(p) => priority = *p,
                    RuleAttribute::Source(ip) => src = Some(*ip),
                    RuleAttribute::Iifname(n) => iif = Some(n.clone()),
                    RuleAttribute::Table(t) => table = *t,
                    RuleAttribute::SuppressPrefixLen(v) | RuleAttribute::SuppressIfGroup(v) => {
                        plain &= *v == u32::MAX;
                    }
                    _ => plain = false,
                }
            }
            if protocol != Some(PROTOCOL) {
                continue;
            }
            let from = match src {
                Some(ip) => IpNet::new(ip, r.header.src_len).ok(),
                None => None,
            };
            plain &= from.is_some() == (r.header.src_len > 0);
            let key = plain.then(|| RuleKey {
                v6: family == AddressFamily::Inet6,
                priority,
                from,
                iif,
                table,
            });
            out.push((key, r));
        }
    }
    Ok(out)
}

fn rule_message(k: &RuleKey) -> RuleMessage {
    let mut msg = RuleMessage::default();
    msg.header.family = if k.v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    msg.header.action = RuleAction::ToTable;
    msg.header.table = header_table(k.table);
    msg.attributes.push(RuleAttribute::Priority(k.priority));
    msg.attributes.push(RuleAttribute::Table(k.table));
    msg.attributes
        .push(RuleAttribute::Protocol(RouteProtocol::from(PROTOCOL)));
    if let Some(from) = k.from {
        msg.header.src_len = from.prefix_len();
        msg.attributes.push(RuleAttribute::Source(from.addr()));
    }
    if let Some(iif) = &k.iif {
        msg.attributes.push(RuleAttribute::Iifname(iif.clone()));
    }
    msg
}

/// Exactly the spec's rules among kuryr's; returns the changes and the first rule
/// that could not be added (the others were still tried).
async fn converge_rules(
    router: &Netlink,
    netns: &str,
    rules: &[RuleSpec],
) -> Result<(usize, Option<RouterError>), RouterError> {
    let want = wanted_rules(rules);
    let have = kuryr_rules(router)
        .await
        .map_err(in_router(netns, "listing rules"))?;
    let mut changes = 0;
    let mut good = BTreeSet::new();
    for (key, mut msg) in have {
        if let Some(key) = key
            && want.contains(&key)
            && !good.contains(&key)
        {
            good.insert(key);
            continue;
        }
        // Sent back as dumped (less the flags the kernel only reports): exactly it.
        msg.header
            .flags
            .remove(RuleFlags::Unresolved | RuleFlags::IifDetached | RuleFlags::OifDetached);
        match router
            .ack("deleting a rule", 0, RouteNetlinkMessage::DelRule(msg))
            .await
        {
            Ok(()) => changes += 1,
            Err(e) if e.errno() == Some(ENOENT) => {}
            Err(e) => return Err(in_router(netns, "rules")(e)),
        }
    }
    let mut first_error = None;
    for key in want.difference(&good) {
        let rule = key.describe();
        match router
            .ack(
                &format!("adding rule {rule}"),
                NLM_F_CREATE | NLM_F_EXCL,
                RouteNetlinkMessage::NewRule(rule_message(key)),
            )
            .await
        {
            Ok(()) => changes += 1,
            Err(source) => {
                tracing::warn!(netns, %rule, error = %source, "router rule not added");
                first_error.get_or_insert(RouterError::Rule {
                    netns: netns.to_string(),
                    rule,
                    source,
                });
            }
        }
    }
    Ok((changes, first_error))
}

// ---- the NAT table (nft) ----------------------------------------------------------------

const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_GEN_ID: u16 = 1;
const NFPROTO_UNSPEC: u8 = 0;
const NFPROTO_IPV4: u8 = 2;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// What nfnetlink says about a namespace's nf_tables.
#[derive(Debug, Clone, Copy)]
struct NftState {
    /// The generation: every committed transaction bumps it.
    genid: u32,
    /// Whether `table ip kuryr_nat` exists.
    table: bool,
}

fn nla(buf: &mut Vec<u8>, ty: u16, value: &[u8]) {
    let len = u16::try_from(4 + value.len()).unwrap_or(u16::MAX);
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize((buf.len() + 3) & !3, 0);
}

/// Top-level attributes of a message body: (type, value).
fn nlas(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let ty = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((ty, &b[4..len]));
        b = &b[((len + 3) & !3).min(b.len())..];
    }
    out
}

/// A message's attributes: (type, value).
type Attributes = Vec<(u16, Vec<u8>)>;

/// One nf_tables get request; the reply's attributes, or None if the kernel answered
/// ENOENT. The kernel answers before `send` returns, so a non-blocking read finds it.
fn nft_get(
    socket: &Socket,
    seq: u32,
    msg: u16,
    reply: u16,
    family: u8,
    attrs: &[(u16, &[u8])],
) -> io::Result<Option<Attributes>> {
    let mut buf = Vec::with_capacity(64);
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | msg).to_ne_bytes());
    buf.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version 0, res_id 0.
    buf.extend_from_slice(&[family, 0, 0, 0]);
    for (ty, value) in attrs {
        nla(&mut buf, *ty, value);
    }
    let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
    buf[..4].copy_from_slice(&len.to_ne_bytes());
    socket.send(&buf, 0)?;
    let mut rx: Vec<u8> = Vec::with_capacity(1 << 15);
    loop {
        rx.clear();
        socket.recv(&mut rx, 0)?;
        let mut off = 0;
        while let Some(hdr) = rx.get(off..off + 16) {
            let len = u32::from_ne_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
            let ty = u16::from_ne_bytes([hdr[4], hdr[5]]);
            let got_seq = u32::from_ne_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
            if len < 16 || off + len > rx.len() {
                break;
            }
            let body = &rx[off + 16..off + len];
            off += (len + 3) & !3;
            if got_seq != seq {
                continue;
            }
            if ty == NLMSG_ERROR {
                let Some(code) = body.get(..4) else {
                    continue;
                };
                let errno = -i32::from_ne_bytes([code[0], code[1], code[2], code[3]]);
                match errno {
                    0 => continue,
                    ENOENT => return Ok(None),
                    e => return Err(io::Error::from_raw_os_error(e)),
                }
            }
            if ty == (NFNL_SUBSYS_NFTABLES << 8) | reply && body.len() >= 4 {
                return Ok(Some(
                    nlas(&body[4..])
                        .into_iter()
                        .map(|(t, v)| (t, v.to_vec()))
                        .collect(),
                ));
            }
        }
    }
}

/// Reads the generation and whether the NAT table exists, on the calling thread's
/// namespace.
fn nft_state_here() -> io::Result<NftState> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.set_non_blocking(true)?;
    let generation = nft_get(
        &socket,
        1,
        NFT_MSG_GETGEN,
        NFT_MSG_NEWGEN,
        NFPROTO_UNSPEC,
        &[],
    )?
    .ok_or_else(|| io::Error::other("no nf_tables generation"))?;
    let genid = generation
        .iter()
        .find(|(t, _)| *t == NFTA_GEN_ID)
        .and_then(|(_, v)| <[u8; 4]>::try_from(v.as_slice()).ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| io::Error::other("nf_tables generation without an id"))?;
    let mut name = NAT_TABLE.as_bytes().to_vec();
    name.push(0);
    let table = nft_get(
        &socket,
        2,
        NFT_MSG_GETTABLE,
        NFT_MSG_NEWTABLE,
        NFPROTO_IPV4,
        &[(NFTA_TABLE_NAME, &name)],
    )?
    .is_some();
    Ok(NftState { genid, table })
}

fn nft_state(ns: &NetNs, netns: &str) -> Result<NftState, RouterError> {
    netns::run_in(ns, nft_state_here)
        .map_err(|source| RouterError::Netns {
            netns: netns.to_string(),
            source,
        })?
        .map_err(|source| RouterError::NftProbe {
            netns: netns.to_string(),
            source,
        })
}

/// The first `/dev/stdin:LINE:` of nft's complaint, with that line of `script`.
fn nft_failing_line(stderr: &str, script: &str) -> Option<(usize, String)> {
    stderr.lines().find_map(|l| {
        let rest = l.strip_prefix("/dev/stdin:")?;
        let n: usize = rest
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .ok()?;
        let text = script.lines().nth(n.checked_sub(1)?)?.trim().to_string();
        Some((n, text))
    })
}

/// Runs nft on the calling thread's namespace (its child inherits it).
pub(crate) fn run_nft_here(
    binary: &Path,
    args: &[String],
    stdin: Option<&str>,
) -> Result<String, NftError> {
    let program = binary.display().to_string();
    let mut child = std::process::Command::new(binary)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NftError::Spawn {
            program: program.clone(),
            source,
        })?;
    let input = child.stdin.take();
    let output = std::thread::scope(|scope| {
        if let (Some(mut input), Some(data)) = (input, stdin) {
            // A write error means nft exited early; its status says why.
            scope.spawn(move || {
                let _ = input.write_all(data.as_bytes());
            });
        }
        child.wait_with_output()
    })
    .map_err(|source| NftError::Spawn { program, source })?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    let line = stdin.and_then(|s| nft_failing_line(&stderr, s));
    Err(NftError::Failed {
        status: output.status.to_string(),
        stderr,
        line,
    })
}

/// Runs nft inside the namespace: on a blocking-pool thread, a fresh thread enters
/// the namespace and spawns it.
async fn nft_in(
    ns: &NetNs,
    netns: &str,
    context: &str,
    args: &[&str],
    stdin: Option<String>,
) -> Result<String, RouterError> {
    let netns_err = |source| RouterError::Netns {
        netns: netns.to_string(),
        source,
    };
    let target = ns.try_clone().map_err(netns_err)?;
    let binary = nft_binary();
    let args: Vec<String> = args.iter().map(ToString::to_string).collect();
    let path = ns.path().to_path_buf();
    let ran = tokio::task::spawn_blocking(move || {
        netns::run_in(&target, move || {
            run_nft_here(&binary, &args, stdin.as_deref())
        })
    })
    .await
    .map_err(|_| netns_err(NetnsError::Panicked { path }))?
    .map_err(netns_err)?;
    ran.map_err(|source| RouterError::Nat {
        netns: netns.to_string(),
        context: context.to_string(),
        source: Box::new(source),
    })
}

/// Digest of `nft -s list table ip kuryr_nat` (stateless: no counter values).
async fn nat_listing(ns: &NetNs, netns: &str) -> Result<[u8; 32], RouterError> {
    let text = nft_in(
        ns,
        netns,
        "listing",
        &["-s", "list", "table", "ip", NAT_TABLE],
        None,
    )
    .await?;
    Ok(digest(text.as_bytes()))
}

/// The NAT table as the spec says (see the module doc for how drift is detected);
/// returns 1 if the kernel's table changed, else 0.
async fn converge_nat(
    ns: &NetNs,
    netns: &str,
    inode: u64,
    want: Option<&str>,
) -> Result<usize, RouterError> {
    let state = nft_state(ns, netns)?;
    let want_digest = want.map(|s| digest(s.as_bytes()));
    let known = with_memo(netns, inode, |m| m.nat.clone());
    if known
        .as_ref()
        .is_some_and(|k| k.want == want_digest && k.genid == state.genid)
    {
        return Ok(0);
    }
    let remember = |memo: NatMemo| with_memo(netns, inode, |m| m.nat = Some(memo));
    let before = if state.table {
        Some(nat_listing(ns, netns).await?)
    } else {
        None
    };
    let Some(script) = want else {
        let mut genid = state.genid;
        if before.is_some() {
            let delete = format!("add table ip {NAT_TABLE}\ndelete table ip {NAT_TABLE}\n");
            nft_in(ns, netns, "deleting", &["-f", "-"], Some(delete)).await?;
            tracing::info!(netns, "nat table removed");
            genid = nft_state(ns, netns)?.genid;
        }
        remember(NatMemo {
            want: None,
            listing: None,
            genid,
        });
        return Ok(usize::from(before.is_some()));
    };
    if before.is_some()
        && known
            .as_ref()
            .is_some_and(|k| k.want == want_digest && k.listing == before)
    {
        // Another transaction in the namespace, not one that touched this table.
        remember(NatMemo {
            want: want_digest,
            listing: before,
            genid: state.genid,
        });
        return Ok(0);
    }
    // One transaction: the old table (if any) goes, the script's comes.
    let full = format!("add table ip {NAT_TABLE}\ndelete table ip {NAT_TABLE}\n{script}");
    nft_in(ns, netns, "applying", &["-f", "-"], Some(full)).await?;
    let after = nft_state(ns, netns)?;
    let listing = if after.table {
        Some(nat_listing(ns, netns).await?)
    } else {
        None
    };
    remember(NatMemo {
        want: want_digest,
        listing,
        genid: after.genid,
    });
    let changed = listing != before;
    if changed {
        tracing::info!(netns, "nat table applied");
    }
    Ok(usize::from(changed))
}

// ---- gratuitous ARP ---------------------------------------------------------------------

/// Queues the spec's announcements whose address was just added or whose leg was
/// just made; drops queued ones the spec no longer has.
fn queue_announcements(
    netns: &str,
    inode: u64,
    spec: &RouterSpec,
    made: &[bool],
    added: &[(usize, IpAddr)],
) {
    with_memo(netns, inode, |memo| {
        for (leg, address) in &spec.announce {
            let IpAddr::V4(v4) = address else {
                continue;
            };
            let Some(i) = spec.legs.iter().position(|l| &l.peer_name == leg) else {
                continue;
            };
            if made.get(i).copied().unwrap_or(false) || added.contains(&(i, *address)) {
                memo.pending.insert((leg.clone(), *v4));
            }
        }
        memo.pending.retain(|(leg, v4)| {
            spec.announce
                .iter()
                .any(|(l, a)| l == leg && *a == IpAddr::V4(*v4))
        });
    });
}

/// Up, carrier, and the queue attached (a link's qdisc is `noop` until the kernel
/// activates it after carrier-on; frames sent before are dropped).
fn link_ready(link: &LinkState) -> bool {
    link.up && link.oper_up && link.qdisc.as_deref() != Some("noop")
}

/// An ARP request from `mac` for `ip` with sender `ip`, broadcast, target MAC zero
/// (an RFC 5227 announcement, what the kernel's own gratuitous ARPs look like),
/// padded to the Ethernet minimum.
fn garp_frame(mac: MacAddr, ip: Ipv4Addr) -> [u8; 60] {
    let mut f = [0u8; 60];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac.0);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac.0);
    f[28..32].copy_from_slice(&ip.octets());
    f[38..42].copy_from_slice(&ip.octets());
    f
}

type Sent = Vec<((String, Ipv4Addr), io::Result<()>)>;

/// Sends the frames on the calling thread's namespace: a raw `AF_PACKET` socket (no
/// receive protocol: it takes nothing in), each frame to its link's address as
/// `getifaddrs` reports it.
fn send_garps_here(items: Vec<(String, MacAddr, Ipv4Addr)>) -> Sent {
    let setup = || -> io::Result<_> {
        let links: BTreeMap<String, sock::LinkAddr> = nix::ifaddrs::getifaddrs()?
            .filter_map(|a| {
                let link = *a.address.as_ref()?.as_link_addr()?;
                Some((a.interface_name, link))
            })
            .collect();
        let fd = sock::socket(
            sock::AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            None::<sock::SockProtocol>,
        )?;
        Ok((links, fd))
    };
    let (links, fd) = match setup() {
        Ok(s) => s,
        Err(e) => {
            return items
                .into_iter()
                .map(|(leg, _, ip)| ((leg, ip), Err(io::Error::new(e.kind(), e.to_string()))))
                .collect();
        }
    };
    items
        .into_iter()
        .map(|(leg, mac, ip)| {
            let sent = links
                .get(&leg)
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such link"))
                .and_then(|link| {
                    let frame = garp_frame(mac, ip);
                    let n = sock::sendto(fd.as_raw_fd(), &frame, link, MsgFlags::empty())?;
                    if n == frame.len() {
                        Ok(())
                    } else {
                        Err(io::Error::other("short write"))
                    }
                });
            ((leg, ip), sent)
        })
        .collect()
}

/// Sends the pending gratuitous ARPs of the namespace, once both ends of their legs
/// are ready (waiting up to [`ANNOUNCE_WAIT`]); what is not sent stays pending.
async fn announce(
    host: &Netlink,
    router: &Netlink,
    ns: &NetNs,
    netns: &str,
    inode: u64,
    spec: &RouterSpec,
) -> Result<(), RouterError> {
    let pending: Vec<(String, Ipv4Addr)> =
        with_memo(netns, inode, |m| m.pending.iter().cloned().collect());
    if pending.is_empty() {
        return Ok(());
    }
    let legs: BTreeMap<&str, &LegSpec> = spec
        .legs
        .iter()
        .filter(|l| pending.iter().any(|(p, _)| *p == l.peer_name))
        .map(|l| (l.peer_name.as_str(), l))
        .collect();
    let deadline = Instant::now() + ANNOUNCE_WAIT;
    let ready = loop {
        let mut ready = BTreeSet::new();
        for (name, leg) in &legs {
            let r = get_link(router, name)
                .await
                .map_err(in_router(netns, format!("getting {name}")))?;
            let h = get_link(host, &leg.host_name)
                .await
                .map_err(in_host(netns, format!("getting {}", leg.host_name)))?;
            if r.as_ref().is_some_and(link_ready) && h.as_ref().is_some_and(link_ready) {
                ready.insert(*name);
            }
        }
        if ready.len() == legs.len() || Instant::now() >= deadline {
            break ready;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let items: Vec<(String, MacAddr, Ipv4Addr)> = pending
        .iter()
        .filter(|(leg, _)| ready.contains(leg.as_str()))
        .filter_map(|(leg, ip)| legs.get(leg.as_str()).map(|l| (leg.clone(), l.mac, *ip)))
        .collect();
    if items.len() < pending.len() {
        tracing::warn!(
            netns,
            "legs not ready: gratuitous ARPs left for the next pass"
        );
    }
    if items.is_empty() {
        return Ok(());
    }
    let sent =
        netns::run_in(ns, move || send_garps_here(items)).map_err(|source| RouterError::Netns {
            netns: netns.to_string(),
            source,
        })?;
    with_memo(netns, inode, |memo| {
        let mut first = None;
        for ((leg, ip), result) in sent {
            match result {
                Ok(()) => {
                    tracing::info!(netns, %leg, %ip, "gratuitous ARP sent");
                    memo.pending.remove(&(leg, ip));
                }
                Err(source) => {
                    first.get_or_insert(RouterError::Announce {
                        netns: netns.to_string(),
                        leg,
                        address: ip.into(),
                        source,
                    });
                }
            }
        }
        first.map_or(Ok(()), Err)
    })
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
            rules: vec![],
            table_routes: vec![],
            nat: None,
            announce: vec![],
        }
    }

    fn rule(priority: u32, from: Option<&str>, iif: Option<&str>, table: u32) -> RuleSpec {
        RuleSpec {
            priority,
            from: from.map(|f| f.parse().expect("net")),
            iif: iif.map(str::to_string),
            table,
        }
    }

    fn troute(table: u32, dst: &str, via: Option<&str>, dev: &str) -> TableRoute {
        TableRoute {
            table,
            dst: dst.parse().expect("net"),
            via: via.map(|v| v.parse().expect("ip")),
            dev: dev.to_string(),
        }
    }

    #[test]
    fn validation_of_the_north_south_parts() {
        let mut fip = leg("tap1", "qf-1");
        fip.addresses = vec!["203.0.113.9/32".parse().expect("net")];
        let good = RouterSpec {
            rules: vec![
                rule(100, Some("10.0.0.5/32"), None, 200),
                rule(101, None, Some("lo"), 200),
                rule(40000, Some("fd00::/64"), None, 1001),
            ],
            table_routes: vec![
                troute(200, "203.0.113.0/24", None, "qf-1"),
                troute(200, "0.0.0.0/0", Some("203.0.113.1"), "qf-1"),
                // the same route twice is one route
                troute(200, "0.0.0.0/0", Some("203.0.113.1"), "qf-1"),
            ],
            nat: Some("table ip kuryr_nat {}".to_string()),
            announce: vec![("qf-1".to_string(), "203.0.113.9".parse().expect("ip"))],
            ..spec("kqr-1", vec![fip])
        };
        assert!(validate(&good).is_ok());
    }

    #[test]
    fn rules_without_from_are_for_both_families() {
        let want = wanted_rules(&[
            rule(101, None, Some("lo"), 200),
            rule(100, Some("10.0.0.5/24"), None, 200),
            rule(102, Some("0.0.0.0/0"), None, 300),
        ]);
        let keys: Vec<(bool, u32, Option<String>)> = want
            .iter()
            .map(|k| (k.v6, k.priority, k.from.map(|f| f.to_string())))
            .collect();
        assert_eq!(
            keys,
            vec![
                (false, 100, Some("10.0.0.0/24".to_string())),
                (false, 101, None),
                (false, 102, None),
                (true, 101, None),
            ]
        );
        let msg = rule_message(want.iter().next().expect("a rule"));
        assert_eq!(msg.header.src_len, 24);
        assert_eq!(msg.header.action, RuleAction::ToTable);
        assert!(msg.attributes.contains(&RuleAttribute::Table(200)));
        assert!(
            msg.attributes
                .contains(&RuleAttribute::Protocol(RouteProtocol::from(PROTOCOL)))
        );
    }

    #[test]
    fn table_route_messages() {
        let link = table_route_message(&troute(70000, "203.0.113.0/24", None, "qf-1"), 7);
        assert_eq!(link.header.scope, RouteScope::Link);
        assert_eq!(link.header.table, RouteHeader::RT_TABLE_UNSPEC);
        assert!(link.attributes.contains(&RouteAttribute::Table(70000)));
        assert!(link.attributes.contains(&RouteAttribute::Oif(7)));
        let via = table_route_message(&troute(200, "0.0.0.0/0", Some("203.0.113.1"), "qf-1"), 7);
        assert_eq!(via.header.scope, RouteScope::Universe);
        assert_eq!(via.header.table, 200);
        assert!(
            !via.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Destination(_)))
        );
    }

    #[test]
    fn gratuitous_arp_frame() {
        let f = garp_frame(
            MacAddr([0xfa, 0x16, 0x3e, 1, 2, 3]),
            "203.0.113.50".parse().expect("ip"),
        );
        assert_eq!(&f[..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &[0xfa, 0x16, 0x3e, 1, 2, 3]);
        assert_eq!(&f[12..22], &[8, 6, 0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&f[22..28], &f[6..12]);
        assert_eq!(&f[28..32], &[203, 0, 113, 50]);
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[38..42], &[203, 0, 113, 50]);
    }

    #[test]
    fn nft_errors_name_the_line() {
        let script =
            "add table ip kuryr_nat\ndelete table ip kuryr_nat\ntable ip kuryr_nat { bogus }\n";
        let stderr = "/dev/stdin:3:22-26: Error: syntax error, unexpected string\ntable ip kuryr_nat { bogus }";
        assert_eq!(
            nft_failing_line(stderr, script),
            Some((3, "table ip kuryr_nat { bogus }".to_string()))
        );
        assert_eq!(nft_failing_line("Error: nope", script), None);
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
            RouterSpec {
                rules: vec![rule(0, None, None, 100)],
                ..spec("kqr-1", vec![])
            },
            RouterSpec {
                rules: vec![rule(10, None, None, 255)],
                ..spec("kqr-1", vec![])
            },
            RouterSpec {
                rules: vec![rule(10, None, Some("bad name"), 100)],
                ..spec("kqr-1", vec![])
            },
            RouterSpec {
                table_routes: vec![troute(254, "0.0.0.0/0", None, "qf-1")],
                ..spec("kqr-1", vec![leg("tap1", "qf-1")])
            },
            RouterSpec {
                table_routes: vec![troute(200, "0.0.0.0/0", None, "qf-2")],
                ..spec("kqr-1", vec![leg("tap1", "qf-1")])
            },
            RouterSpec {
                table_routes: vec![troute(200, "0.0.0.0/0", Some("fd00::1"), "qf-1")],
                ..spec("kqr-1", vec![leg("tap1", "qf-1")])
            },
            RouterSpec {
                table_routes: vec![
                    troute(200, "10.0.0.0/8", None, "qf-1"),
                    troute(200, "10.1.0.0/8", Some("10.0.0.1"), "qf-1"),
                ],
                ..spec("kqr-1", vec![leg("tap1", "qf-1")])
            },
            RouterSpec {
                announce: vec![("qf-1".to_string(), "203.0.113.9".parse().expect("ip"))],
                ..spec("kqr-1", vec![leg("tap1", "qf-1")])
            },
            RouterSpec {
                announce: vec![("qf-2".to_string(), "203.0.113.9".parse().expect("ip"))],
                ..spec("kqr-1", vec![leg("tap1", "qf-1")])
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
