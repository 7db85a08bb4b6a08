//! The host side of a distributed L4 load balancer (Octavia's API, no amphora): a
//! connection from a local port to VIP:port is DNATed to a backend on the client's
//! own host, on the client's own bridge, in that bridge's conntrack zone; the
//! backend's replies (bridged, over the overlay or routed by a distributed router)
//! meet the entry on that bridge and are un-NATed there. [`converge`] brings a host
//! to a [`LbHost`]; [`remove_all`] takes everything away; [`counters`] reads the
//! per-listener connection counters.
//!
//! # How (checked on kernel 6.18 with br_netfilter, nft 1.0.6)
//!
//! - `table bridge kuryr_lb`, chain `pre` (prerouting, -300): a frame to a VIP
//!   (`ip daddr @vips4`, hashed) that did not come from an uplink (vxlan device) or a
//!   router leg (source MAC one of the gateway MACs) gets packet mark bit
//!   [`LB_MARK`]: it comes from a local port. (This kernel has neither `meta ibrname`
//!   nor `reject` in the bridge family, so that is all the bridge family does.)
//! - `table inet kuryr_lb` (br_netfilter: `iifname` is the bridge):
//!   - `refuse` (prerouting, -150): a marked packet to a VIP of its bridge that is no
//!     listener with backends: TCP gets a RST (`reject with tcp reset`), the rest is
//!     dropped. Replies (hairpin) pass.
//!   - `pre_nat` (dstnat): marked packets look up `bridge . daddr . l4proto . dport`
//!     in the verdict maps `svc4`/`svc6` (hashed: one lookup whatever the number of
//!     VIPs) and jump to the listener's chain `l_<id>`: allowed-CIDR check
//!     (`a_<id>`, dropped otherwise), the named counter `c_<id>` (new connections),
//!     `ct mark` bit [`LB_MARK`], `dnat to numgen inc | jhash saddr [. th sport] mod S
//!     map @m_<id>` where `m_<id>` has S slots (a power of two, ≥ 8 per backend, ≥ 64)
//!     filled in proportion to the weights. A member change is a map update.
//!   - `restore` (prerouting, -90): `ct mark` bit → packet mark bit, for every packet
//!     of a load-balanced connection (the hairpin replies need it).
//!   - `post_nat` (srcnat): a backend reaching itself through the VIP (`saddr . daddr`
//!     in `hair4`/`hair6`) is SNATed to the VIP (`ct original daddr`).
//!   - `guard_in` / `guard_fwd`: a load-balanced connection's packet is never
//!     delivered to the host nor forwarded anywhere but out of the bridge it came in.
//!   - sets `own4`/`own6`/`hairpin`: the record of the neighbour entries and the
//!     hairpin flags this module set (so it removes only its own).
//! - Routing. When br_netfilter's prerouting changed the destination,
//!   br_nf_pre_routing_finish() calls ip_route_input() on the bridge; only if the
//!   route's device is the bridge is the packet "bridged-DNATed", its destination MAC
//!   taken from the neighbour entry of the route's next hop on the bridge
//!   (br_nf_pre_routing_finish_bridge). So per bridge: the policy rule
//!   `pref 900 iif <bridge> fwmark 0x200000/0x200000 lookup <table>` (both families,
//!   FRA_PROTOCOL [`PROTOCOL`]), in the table the network's subnets `dev <bridge>`
//!   and `default via <gateway> dev <bridge> onlink` (or `blackhole default` when the
//!   network has no router of that family; rtm_protocol [`PROTOCOL`]), permanent
//!   neighbours on the bridge for the backends and the gateways, and
//!   `net.ipv4.conf.<bridge>.forwarding=1` (without it ip_route_input fails and
//!   br_netfilter falls back to an *output* lookup in the main table) and
//!   `rp_filter=0`. Nothing of the main table is used; other traffic never carries
//!   the mark.
//! - ARP for a VIP: a permanent neighbour entry VIP → VIP MAC on the network's vxlan
//!   device (created `proxy`): it answers the clients' requests on every host.
//! - Hairpin: `hairpin on` on the bridge ports ([`LbNet::hairpin_taps`]) plus the
//!   SNAT above.
//!
//! # Converging cheaply (measured: 1,000 listeners × 3 backends on one bridge)
//!
//! Listing the tables to detect drift (`nft list table`, ~2 MB of text) cost 1-2 s
//! per converge. Instead this process remembers per namespace what it applied (the
//! compiled [`LbTables`]), digests of the kernel's tables taken right after, and the
//! nf_tables generation (`NFT_MSG_GETGEN`, in-process; every committed transaction of
//! any table bumps it) at which the kernel was known to hold exactly that:
//!
//! - Generation unchanged: nobody committed anything; the change is computed from
//!   memo vs spec alone (no-op converge: one GETGEN plus the per-bridge netlink
//!   dumps, ~5 ms).
//! - Generation moved (the agent's own security-group commits move it too): both
//!   tables are read back over nfnetlink (tables, chains, rules, sets, objects'
//!   names, every set's elements; ~2,000 dumps, ~100 ms) and digested: one digest of
//!   the structure (the sets' element counts and the counters' values left out), one
//!   per element set, elements sorted. A structure that differs is rebuilt (one
//!   `nft -f`); a backend map that differs is flushed and refilled (`nft -f` of just
//!   those maps). Rejected alternatives: listing the table as text (seconds), and
//!   verifying only every N seconds (drift would stay up to N s).
//! - Member changes are element updates sent in-process (`crate::nfnl::Elements`,
//!   one transaction): only the slots of a backend map whose target changed (delete
//!   and re-add), and the differences of the record sets (`own4/6`, `hairpin`) and
//!   the hairpin SNAT sets (`hair4/6`), so that a new backend address is no rebuild
//!   either (~20 ms, ~130 ms when the generation had moved).
//! - After an apply of N transactions the generation must be exactly N further than
//!   before; then the changed sets are re-digested and the memo holds the new
//!   generation. Otherwise someone committed in between: the memo is marked
//!   unverified (and the changed sets unknown: they are rewritten) and the next
//!   converge reads back. A failure forgets the memo: the next converge lists the
//!   tables (for the record of neighbours and hairpin flags) and rebuilds, as after
//!   an agent restart.
//! - Routes, rules, neighbours, links and sysctls are read back on every converge
//!   (their dumps grow with bridges and backends, not listeners).
//!
//! # What the agent must know
//!
//! - br_netfilter on in the host namespace (`net.bridge.bridge-nf-call-iptables=1`,
//!   `-ip6tables=1`), and `table inet kuryr`'s zone chain (zones per bridge).
//! - TCP refusal (`reject with tcp reset` in inet prerouting) looks up a route to the
//!   client in the host's own tables (nf_reject_fill_skb_dst, ip_route_me_harder)
//!   although the RST is then sent straight out of the client's tap: the host needs
//!   some route covering client addresses (its default route does). Without one the
//!   SYN is only dropped. UDP/SCTP to an empty listener are dropped (an ICMP error
//!   would be routed by the host's stack).
//! - `net.ipv4.conf.all.rp_filter` must be 0 in the host namespace (the effective
//!   value is max(all, bridge); this module sets the bridge's to 0). Measured: with
//!   loose mode (2, Ubuntu's default) the DNATed packet is dropped, because the
//!   bridge has no IPv4 address and __fib_validate_source() then fails any rp_filter
//!   whose reverse lookup (unmarked, in the host's tables) does not use the bridge.
//! - The agent converges the neighbour table of vxlan devices itself and deletes
//!   entries it does not know: it must list the VIPs (VIP → VIP MAC) in its remote
//!   neighbours too, or the two flap.
//! - Security groups see the backend, not the VIP: the client's egress rules must
//!   allow the backend address and port; `forward` of `inet kuryr` lets the
//!   bridged-DNATed packets through as bridged.
//! - Forwarding/rp_filter sysctls of a bridge are set, never reset (the host's
//!   published ports may need forwarding on too).
//! - Rebuilding the tables (a change of structure) keeps established connections
//!   (their NAT lives in conntrack) but resets the counters.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::link::{
    InfoBridgePort, InfoPortData, InfoPortKind, LinkAttribute, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use sha2::{Digest, Sha256};

use crate::MacAddr;
use crate::netlink::{Netlink, NetlinkError};
use crate::netns::{self, NetNs, NetnsError};
use crate::nfnl::{self, Change, Data, Element, Elements, Family, NfnlError, Reader};
use crate::nft::NftError;
use crate::nft::lb::{self as render, LbTables};
pub use crate::nft::lb::{LB_MARK, LB_TABLE};

/// rtm_protocol of the routes and FRA_PROTOCOL of the rules this module makes ('l').
pub const PROTOCOL: u8 = 0x6c;
/// Priority of the per-bridge policy rules.
pub const RULE_PRIORITY: u32 = 900;

const ENOENT: i32 = 2;
const ESRCH: i32 = 3;

/// Everything for one host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LbHost {
    pub nets: Vec<LbNet>,
}

/// One network with local client ports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LbNet {
    /// Its bridge (`brq…`), which must exist.
    pub bridge: String,
    /// Its vxlan device (VIP ARP answers); None for flat networks (then nothing
    /// answers ARP for the VIPs of this network).
    pub vxlan: Option<String>,
    /// Routing table of this bridge (caller-assigned, stable, unique per bridge).
    pub table: u32,
    /// On-link subnets of the network.
    pub subnets: Vec<IpNet>,
    /// Router interface addresses on this network and their MACs.
    pub gateways: Vec<(IpAddr, MacAddr)>,
    /// Backends on this network: address → MAC (and local clients that are
    /// backends, for hairpin).
    pub neighbours: Vec<(IpAddr, MacAddr)>,
    /// VIPs on this network (ARP answered on this host by the vxlan device).
    pub vips: Vec<(IpAddr, MacAddr)>,
    /// Taps of local ports that are backends (bridge port flag `hairpin on`).
    pub hairpin_taps: Vec<String>,
    /// Listeners reachable from this bridge.
    pub services: Vec<LbService>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum L4Proto {
    Tcp,
    Udp,
    Sctp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Algorithm {
    RoundRobin,
    /// Also Octavia's SOURCE_IP session persistence.
    SourceIp,
    SourceIpPort,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub address: IpAddr,
    pub port: u16,
    /// 0: no new connections (established ones go on).
    pub weight: u32,
}

/// One listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbService {
    /// Listener id: names its chain, map and counter (shared by the bridges).
    pub id: String,
    pub vip: IpAddr,
    pub protocol: L4Proto,
    pub port: u16,
    pub algorithm: Algorithm,
    /// Healthy, enabled members. None (or all weight 0): connections refused.
    pub backends: Vec<Backend>,
    /// Sources allowed (empty: all); others are dropped.
    pub allowed: Vec<IpNet>,
}

/// What a [`converge`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LbStats {
    /// The nft tables were replaced whole.
    pub tables_replaced: bool,
    /// Element sets updated by element (backend maps of listeners whose members
    /// changed, the record and hairpin sets), without a rebuild.
    pub maps_updated: usize,
    pub rules: usize,
    pub routes: usize,
    pub neighbours: usize,
    pub sysctls: usize,
    pub hairpin: usize,
}

impl LbStats {
    /// Total number of changes (0: the host was already converged).
    pub fn changes(&self) -> usize {
        usize::from(self.tables_replaced)
            + self.maps_updated
            + self.rules
            + self.routes
            + self.neighbours
            + self.sysctls
            + self.hairpin
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error("load balancer: {context}: {source}")]
    Netlink {
        context: String,
        #[source]
        source: NetlinkError,
    },
    #[error("load balancer: nft {context}: {source}")]
    Nft {
        context: String,
        #[source]
        source: Box<NftError>,
    },
    #[error("load balancer: network namespace: {source}")]
    Netns {
        #[source]
        source: NetnsError,
    },
    #[error("load balancer: sysctl {key}: {source}")]
    Sysctl {
        key: String,
        #[source]
        source: io::Error,
    },
    #[error("load balancer: {context}: {source}")]
    Kernel {
        context: &'static str,
        #[source]
        source: NfnlError,
    },
    #[error("load balancer: invalid spec: {0}")]
    Invalid(String),
}

fn nl_err(context: impl Into<String>) -> impl FnOnce(NetlinkError) -> LbError {
    let context = context.into();
    move |source| LbError::Netlink { context, source }
}

// ---- running nft -------------------------------------------------------------------

/// nft in the calling thread's namespace, as the router namespaces run it.
fn run_nft_here(args: &[String], stdin: Option<&str>) -> Result<String, NftError> {
    crate::router::run_nft_here(&crate::router::nft_binary(), args, stdin)
}

/// Runs nft in `ns` (a thread that entered it spawns it) or in the caller's namespace.
async fn nft(
    ns: Option<&NetNs>,
    context: &str,
    args: &[&str],
    stdin: Option<String>,
) -> Result<String, LbError> {
    let args: Vec<String> = args.iter().map(ToString::to_string).collect();
    let target = ns
        .map(NetNs::try_clone)
        .transpose()
        .map_err(|source| LbError::Netns { source })?;
    let ran = tokio::task::spawn_blocking(move || match target {
        Some(t) => netns::run_in(&t, move || run_nft_here(&args, stdin.as_deref()))
            .map_err(|source| LbError::Netns { source }),
        None => Ok(run_nft_here(&args, stdin.as_deref())),
    })
    .await
    .map_err(|e| LbError::Invalid(format!("nft task: {e}")))??;
    ran.map_err(|source| LbError::Nft {
        context: context.to_string(),
        source: Box::new(source),
    })
}

/// `nft -s list table inet kuryr_lb` + the bridge one ("" for what is absent).
async fn listing(ns: Option<&NetNs>) -> Result<String, LbError> {
    let tables = nft(ns, "listing tables", &["list", "tables"], None).await?;
    let mut out = String::new();
    for fam in ["bridge", "inet"] {
        if tables
            .lines()
            .any(|l| l.trim() == format!("table {fam} {LB_TABLE}"))
        {
            out.push_str(
                &nft(
                    ns,
                    "listing table",
                    &["-s", "list", "table", fam, LB_TABLE],
                    None,
                )
                .await?,
            );
        }
    }
    Ok(out)
}

// ---- memo ---------------------------------------------------------------------------

/// What this process applied in one namespace, and what the kernel held then.
#[derive(Debug, Clone, Default)]
struct Memo {
    /// The tables as last applied.
    tables: LbTables,
    /// Digest of the kernel's tables but the element sets (see [`KernelDigest`]),
    /// taken when they were known to be `tables` (None: unknown, rebuild).
    structure: Option<[u8; 32]>,
    /// Digests of the element sets (`m_<id>` and [`render::ELEMENT_SETS`]) taken when
    /// they were known to be `tables`; a set missing here is rewritten.
    sets: BTreeMap<String, [u8; 32]>,
    /// The nf_tables generation at which the kernel was known to hold `tables`
    /// (None: verify on the next converge).
    genid: Option<u32>,
}

static MEMO: Mutex<BTreeMap<u64, Memo>> = Mutex::new(BTreeMap::new());

fn ns_key(ns: Option<&NetNs>) -> u64 {
    let path: PathBuf = ns.map_or_else(|| PathBuf::from("/proc/self/ns/net"), |n| n.path().into());
    std::fs::metadata(&path).map(|m| m.ino()).unwrap_or(0)
}

fn memo_take(key: u64) -> Option<Memo> {
    MEMO.lock().ok().and_then(|mut m| m.remove(&key))
}

fn memo_set(key: u64, memo: Option<Memo>) {
    if let Ok(mut m) = MEMO.lock() {
        match memo {
            Some(v) => m.insert(key, v),
            None => m.remove(&key),
        };
    }
}

// ---- the tables as the kernel holds them ---------------------------------------------

/// Attribute 1 of table, chain, rule, set, object and element-list messages: the
/// table's name; attribute 2 of set and object messages: the name.
const NFTA_TABLE: u16 = 1;
const NFTA_NAME: u16 = 2;
const NFTA_OBJ_TYPE: u16 = 3;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_COUNT: u16 = 20;

/// Digests of this module's two tables read over nfnetlink (no `nft`, no text):
/// `structure` covers the tables, chains, rules, set definitions, objects (name and
/// type: counter values move) and the elements of every set but the element sets;
/// `sets` has one digest per element set (`m_<id>`, [`render::ELEMENT_SETS`]), of its
/// elements sorted (a hash set's dump order is not its content).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct KernelDigest {
    structure: [u8; 32],
    sets: BTreeMap<String, [u8; 32]>,
}

fn chunk(h: &mut Sha256, b: &[u8]) {
    h.update((b.len() as u64).to_le_bytes());
    h.update(b);
}

fn attr<'a>(attrs: &[(u16, &'a [u8])], ty: u16) -> Option<&'a [u8]> {
    attrs.iter().find(|(t, _)| *t == ty).map(|(_, v)| *v)
}

fn is_name(v: Option<&[u8]>, name: &str) -> bool {
    v.is_some_and(|v| v.strip_suffix(&[0]).unwrap_or(v) == name.as_bytes())
}

fn is_element_set(family: Family, set: &str) -> bool {
    family == Family::Inet && (set.starts_with("m_") || render::ELEMENT_SETS.contains(&set))
}

/// Digest of the elements of `set` (sorted; "absent" differs from "empty").
fn elements_digest(r: &mut Reader, family: Family, set: &str) -> Result<[u8; 32], NfnlError> {
    let mut items: Vec<Vec<u8>> = Vec::new();
    let present = r.dump(
        nfnl::NFT_MSG_GETSETELEM,
        family,
        &[(NFTA_TABLE, LB_TABLE), (NFTA_NAME, set)],
        |body| {
            for (t, v) in nfnl::attrs_of(body) {
                if t == NFTA_SET_ELEM_LIST_ELEMENTS {
                    items.extend(nfnl::attrs_of(v).into_iter().map(|(_, e)| e.to_vec()));
                }
            }
        },
    )?;
    items.sort_unstable();
    let mut h = Sha256::new();
    h.update([u8::from(present)]);
    for i in &items {
        chunk(&mut h, i);
    }
    Ok(h.finalize().into())
}

/// Reads both tables (a few thousand netlink messages for 1,000 listeners).
fn read_kernel(r: &mut Reader) -> Result<KernelDigest, NfnlError> {
    let mut h = Sha256::new();
    let mut sets = BTreeMap::new();
    for family in [Family::Bridge, Family::Inet] {
        h.update([u8::from(family == Family::Inet)]);
        let table = [(NFTA_TABLE, LB_TABLE)];
        for msg in [nfnl::NFT_MSG_GETTABLE, nfnl::NFT_MSG_GETCHAIN] {
            h.update(msg.to_le_bytes());
            // Neither dump filters by table: the other tables are skipped here.
            r.dump(msg, family, &[], |body| {
                if is_name(attr(&nfnl::attrs_of(body), NFTA_TABLE), LB_TABLE) {
                    chunk(&mut h, body);
                }
            })?;
        }
        h.update(nfnl::NFT_MSG_GETRULE.to_le_bytes());
        r.dump(nfnl::NFT_MSG_GETRULE, family, &table, |body| {
            chunk(&mut h, body)
        })?;
        h.update(nfnl::NFT_MSG_GETOBJ.to_le_bytes());
        r.dump(nfnl::NFT_MSG_GETOBJ, family, &table, |body| {
            let a = nfnl::attrs_of(body);
            chunk(&mut h, attr(&a, NFTA_NAME).unwrap_or_default());
            chunk(&mut h, attr(&a, NFTA_OBJ_TYPE).unwrap_or_default());
        })?;
        h.update(nfnl::NFT_MSG_GETSET.to_le_bytes());
        let mut names = Vec::new();
        r.dump(nfnl::NFT_MSG_GETSET, family, &table, |body| {
            let a = nfnl::attrs_of(body);
            // Not the element count (NFTA_SET_COUNT, kernel 6.x): the element
            // digests cover the elements.
            for (t, v) in a.iter().filter(|(t, _)| *t != NFTA_SET_COUNT) {
                h.update(t.to_le_bytes());
                chunk(&mut h, v);
            }
            if let Some(n) = attr(&a, NFTA_NAME) {
                let n = n.strip_suffix(&[0]).unwrap_or(n);
                names.push(String::from_utf8_lossy(n).into_owned());
            }
        })?;
        for name in names {
            let d = elements_digest(r, family, &name)?;
            if is_element_set(family, &name) {
                sets.insert(name, d);
            } else {
                chunk(&mut h, name.as_bytes());
                h.update(d);
            }
        }
    }
    Ok(KernelDigest {
        structure: h.finalize().into(),
        sets,
    })
}

// ---- the record ---------------------------------------------------------------------

/// Neighbour entries and hairpin taps the tables say this module made.
fn record(listing: &str) -> (BTreeSet<(String, IpAddr)>, BTreeSet<String>) {
    let mut owned = BTreeSet::new();
    for set in ["own4", "own6"] {
        for item in render::listed_elements(listing, set) {
            if let Some((dev, ip)) = item.split_once(" . ")
                && let Ok(ip) = ip.trim().parse::<IpAddr>()
            {
                owned.insert((dev.trim().trim_matches('"').to_string(), ip));
            }
        }
    }
    let hairpin = render::listed_elements(listing, "hairpin")
        .into_iter()
        .map(|t| t.trim_matches('"').to_string())
        .collect();
    (owned, hairpin)
}

// ---- public API -----------------------------------------------------------------------

/// Brings the host namespace (`host`'s; `ns` is the same namespace for nft and
/// sysctls, None for the caller's own) to `spec`: idempotent, reads the kernel back
/// and changes only what differs; what the spec no longer has (this module's rules,
/// routes, neighbours, hairpin flags, listeners) is removed, all of it for an empty
/// spec.
pub async fn converge(
    host: &Netlink,
    ns: Option<&NetNs>,
    spec: &LbHost,
) -> Result<LbStats, LbError> {
    let mut tables = BTreeSet::new();
    for n in &spec.nets {
        if !tables.insert(n.table) {
            return Err(LbError::Invalid(format!(
                "table {} given to two bridges",
                n.table
            )));
        }
        if matches!(n.table, 0 | 253..=255) {
            return Err(LbError::Invalid(format!(
                "bridge {}: table {} is reserved",
                n.bridge, n.table
            )));
        }
    }
    let t = render::compile(spec);
    let mut stats = LbStats::default();
    let links = link_indexes(host).await?;
    let key = ns_key(ns);
    // What this module made: from the memo, or (first converge of this process in
    // this namespace) from the tables' record sets.
    let memo = memo_take(key);
    let (old_owned, old_hairpin, nothing_before) = match &memo {
        Some(m) => (m.tables.owned.clone(), m.tables.hairpin.clone(), false),
        None => {
            let before = listing(ns).await?;
            let (owned, hairpin) = record(&before);
            (owned, hairpin, before.is_empty())
        }
    };

    // Routing first, so that DNAT never precedes its routes.
    let present: Vec<&LbNet> = spec
        .nets
        .iter()
        .filter(|n| {
            let ok = t.bridges.contains(&n.bridge) && links.contains_key(&n.bridge);
            if !ok {
                tracing::warn!(bridge = %n.bridge, "load balancer: bridge missing, skipped");
            }
            ok
        })
        .collect();
    let routing = async {
        stats.sysctls = sysctls(ns, &present)?;
        stats.routes = converge_routes(host, &links, &present).await?;
        stats.rules = converge_rules(host, &present).await?;
        stats.neighbours = converge_neighbours(host, &links, &present, &old_owned).await?;
        stats.hairpin = converge_hairpin(host, &links, &t.hairpin, &old_hairpin).await?;
        Ok::<(), LbError>(())
    };
    if let Err(e) = routing.await {
        // The tables were not touched: what was known of them still holds.
        if let Some(m) = memo {
            memo_set(key, Some(m));
        }
        return Err(e);
    }
    let (memo, done) = match in_ns(ns, move || tables_here(t, memo, nothing_before)).await {
        Ok(v) => v,
        Err(e) => {
            memo_set(key, None);
            return Err(e);
        }
    };
    memo_set(key, Some(memo));
    stats.tables_replaced = done.replaced;
    stats.maps_updated = done.updated;
    if stats.changes() > 0 {
        tracing::info!(?stats, "load balancer converged");
    }
    Ok(stats)
}

/// Runs `f` on a thread in `ns` (or in the caller's namespace).
async fn in_ns<T: Send + 'static>(
    ns: Option<&NetNs>,
    f: impl FnOnce() -> Result<T, LbError> + Send + 'static,
) -> Result<T, LbError> {
    let target = ns
        .map(NetNs::try_clone)
        .transpose()
        .map_err(|source| LbError::Netns { source })?;
    tokio::task::spawn_blocking(move || match target {
        Some(t) => netns::run_in(&t, f).map_err(|source| LbError::Netns { source })?,
        None => f(),
    })
    .await
    .map_err(|e| LbError::Invalid(format!("nf_tables task: {e}")))?
}

fn nfnl_err(context: &'static str) -> impl FnOnce(NfnlError) -> LbError {
    move |source| LbError::Kernel { context, source }
}

/// What [`tables_here`] did.
#[derive(Debug, Default)]
struct TablesDone {
    replaced: bool,
    /// Element sets (backend maps, record and hairpin sets) updated.
    updated: usize,
}

/// Brings the two tables to `t`, on the calling thread's namespace; returns the new
/// memo. `memo`: what this process last applied here; `nothing_before` (without a
/// memo): the listing showed neither table.
fn tables_here(
    t: LbTables,
    memo: Option<Memo>,
    nothing_before: bool,
) -> Result<(Memo, TablesDone), LbError> {
    let mut r = Reader::open().map_err(nfnl_err("opening an nf_tables socket"))?;
    let generation = |r: &mut Reader| {
        r.generation()
            .map_err(nfnl_err("reading the nf_tables generation"))
    };
    let read =
        |r: &mut Reader| read_kernel(r).map_err(nfnl_err("reading the load balancer tables"));
    let g0 = generation(&mut r)?;
    let mut done = TablesDone::default();

    // 1. What of the memo the kernel still holds. The generation unchanged since our
    //    last apply: all of it. Moved (anyone committed anything, in any table): read
    //    our tables back over netlink and keep what still matches.
    let (old, structure, mut sets, consistent, g) = match memo {
        None => (None, None, BTreeMap::new(), true, g0),
        Some(m) if m.genid == Some(g0) => (Some(m.tables), m.structure, m.sets, true, g0),
        Some(m) => {
            let k = read(&mut r)?;
            let g1 = generation(&mut r)?;
            let structure = m.structure.filter(|d| *d == k.structure);
            let known = m.sets.len();
            let sets: BTreeMap<String, [u8; 32]> = m
                .sets
                .into_iter()
                .filter(|(n, d)| k.sets.get(n) == Some(d))
                .collect();
            if structure.is_none() || sets.len() < known {
                tracing::warn!(
                    structure = structure.is_some(),
                    sets_changed = known - sets.len(),
                    "load balancer: nft tables changed by someone else; repairing"
                );
            } else {
                tracing::debug!(
                    from = m.genid,
                    to = g1,
                    "load balancer: nf_tables generation moved, tables verified"
                );
            }
            (Some(m.tables), structure, sets, g1 == g0, g1)
        }
    };

    // 2. A rebuild: no memo, another structure, or a structure (or record set) not
    //    known to be ours.
    let element_sets_known =
        t.bridges.is_empty() || render::ELEMENT_SETS.iter().all(|s| sets.contains_key(*s));
    let rebuild = match (&old, structure) {
        (Some(o), Some(_)) => !render::same_structure(o, &t) || !element_sets_known,
        _ => true,
    };
    if rebuild {
        let skip = old.is_none() && t.bridges.is_empty() && nothing_before;
        if !skip {
            apply_script(render::render_full(&t))?;
            done.replaced = true;
        }
        let k = read(&mut r)?;
        let g2 = generation(&mut r)?;
        let ours = g2 == g.wrapping_add(u32::from(!skip));
        let memo = Memo {
            tables: t,
            structure: ours.then_some(k.structure),
            sets: if ours { k.sets } else { BTreeMap::new() },
            genid: ours.then_some(g2),
        };
        return Ok((memo, done));
    }
    let Some(old) = old else {
        return Err(LbError::Invalid("no memo to update".into()));
    };

    // 3. Element updates: the element sets' differences and the changed slots of the
    //    backend maps, in-process as one transaction; maps not known to be ours are
    //    flushed and refilled (one `nft -f`).
    let mut deletes = Vec::new();
    let mut adds = Vec::new();
    let mut changed: BTreeSet<String> = BTreeSet::new();
    if !t.bridges.is_empty() {
        for set in render::ELEMENT_SETS {
            let (was, want) = (render::element_set(&old, set), render::element_set(&t, set));
            let element = |key: &Vec<u8>| Element {
                key: key.clone(),
                key_end: None,
                interval_end: false,
                data: None,
            };
            let del: Vec<Element> = was.difference(&want).map(element).collect();
            let add: Vec<Element> = want.difference(&was).map(element).collect();
            if del.is_empty() && add.is_empty() {
                continue;
            }
            changed.insert(set.to_string());
            push_change(&mut deletes, set, false, del);
            push_change(&mut adds, set, true, add);
        }
    }
    let mut script = String::new();
    for (name, l) in &t.listeners {
        let set = format!("m_{name}");
        let was = old.listeners.get(name).map(|o| o.targets.as_slice());
        if !sets.contains_key(&set) {
            script.push_str(&render::render_backend_update(name, l));
            changed.insert(set);
            continue;
        }
        let Some(was) = was else {
            continue;
        };
        let (mut del, mut add) = (Vec::new(), Vec::new());
        for (i, (a, b)) in was.iter().zip(&l.targets).enumerate() {
            if a == b {
                continue;
            }
            let (key, data) = render::backend_element(i, b);
            del.push(Element {
                key: key.clone(),
                key_end: None,
                interval_end: false,
                data: None,
            });
            add.push(Element {
                key,
                key_end: None,
                interval_end: false,
                data: Some(Data::Value(data)),
            });
        }
        if !add.is_empty() {
            changed.insert(set.clone());
            push_change(&mut deletes, &set, false, del);
            push_change(&mut adds, &set, true, add);
        }
    }
    let mut commits = 0u32;
    if !script.is_empty() {
        apply_script(script)?;
        commits += 1;
    }
    if !adds.is_empty() || !deletes.is_empty() {
        deletes.extend(adds);
        let mut e = Elements::open().map_err(nfnl_err("opening an nf_tables socket"))?;
        e.apply(LB_TABLE, &deletes)
            .map_err(nfnl_err("updating the load balancer's elements"))?;
        commits += 1;
    }
    done.updated = changed.len();
    let mut genid = consistent.then_some(g);
    if commits > 0 {
        let mut fresh = BTreeMap::new();
        for set in &changed {
            let d = elements_digest(&mut r, Family::Inet, set)
                .map_err(nfnl_err("reading the load balancer tables"))?;
            fresh.insert(set.clone(), d);
        }
        let g2 = generation(&mut r)?;
        if g2 == g.wrapping_add(commits) {
            sets.extend(fresh);
            genid = genid.map(|_| g2);
        } else {
            // Someone else committed meanwhile: what they did is verified next time.
            for set in &changed {
                sets.remove(set);
            }
            genid = None;
        }
    }
    let memo = Memo {
        tables: t,
        structure,
        sets,
        genid,
    };
    Ok((memo, done))
}

fn push_change(out: &mut Vec<Change>, set: &str, add: bool, elements: Vec<Element>) {
    if !elements.is_empty() {
        out.push(Change {
            family: Family::Inet,
            set: set.to_string(),
            add,
            elements,
        });
    }
}

/// `nft -f -` with `script`, on the calling thread's namespace.
fn apply_script(script: String) -> Result<(), LbError> {
    run_nft_here(&["-f".to_string(), "-".to_string()], Some(&script))
        .map(|_| ())
        .map_err(|source| LbError::Nft {
            context: "applying the tables".to_string(),
            source: Box::new(source),
        })
}

/// Connections per listener id (new connections counted in its chain) since its
/// tables were last rebuilt. Bytes are not counted (that would cost a per-packet
/// per-listener lookup on every bridged packet).
pub async fn counters(ns: Option<&NetNs>) -> Result<BTreeMap<String, u64>, LbError> {
    let tables = nft(ns, "listing tables", &["list", "tables"], None).await?;
    if !tables
        .lines()
        .any(|l| l.trim() == format!("table inet {LB_TABLE}"))
    {
        return Ok(BTreeMap::new());
    }
    let out = nft(
        ns,
        "listing counters",
        &["-j", "list", "counters", "table", "inet", LB_TABLE],
        None,
    )
    .await?;
    let v: serde_json::Value = serde_json::from_str(&out)
        .map_err(|e| LbError::Invalid(format!("nft counters output: {e}")))?;
    let mut res = BTreeMap::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        let c = &item["counter"];
        if let Some(name) = c["name"].as_str().and_then(|n| n.strip_prefix("c_"))
            && let Some(id) = render::unescape(name)
        {
            res.insert(id, c["packets"].as_u64().unwrap_or(0));
        }
    }
    Ok(res)
}

/// Removes everything this module made in the host namespace.
pub async fn remove_all(host: &Netlink, ns: Option<&NetNs>) -> Result<(), LbError> {
    let stats = converge(host, ns, &LbHost::default()).await?;
    memo_set(ns_key(ns), None);
    tracing::info!(?stats, "load balancer removed");
    Ok(())
}

// ---- sysctls --------------------------------------------------------------------------

fn sysctls(ns: Option<&NetNs>, nets: &[&LbNet]) -> Result<usize, LbError> {
    let keys: Vec<(String, &'static str)> = nets
        .iter()
        .flat_map(|n| {
            [
                (format!("net/ipv4/conf/{}/forwarding", n.bridge), "1"),
                (format!("net/ipv4/conf/{}/rp_filter", n.bridge), "0"),
            ]
        })
        .collect();
    let work = move || -> Result<usize, (String, io::Error)> {
        let mut changed = 0;
        for (key, want) in &keys {
            let path = Path::new("/proc/sys").join(key);
            let have = std::fs::read_to_string(&path).map_err(|e| (key.clone(), e))?;
            if have.trim() != *want {
                std::fs::write(&path, want).map_err(|e| (key.clone(), e))?;
                changed += 1;
            }
        }
        Ok(changed)
    };
    let result = match ns {
        Some(ns) => netns::run_in(ns, work).map_err(|source| LbError::Netns { source })?,
        None => work(),
    };
    result.map_err(|(key, source)| LbError::Sysctl {
        key: key.replace('/', "."),
        source,
    })
}

// ---- links and hairpin ------------------------------------------------------------------

#[derive(Debug, Clone)]
struct LinkBits {
    index: u32,
    hairpin: Option<bool>,
}

async fn link_indexes(host: &Netlink) -> Result<BTreeMap<String, LinkBits>, LbError> {
    let replies = host
        .request(
            "listing links",
            NLM_F_DUMP,
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
        )
        .await
        .map_err(nl_err("listing links"))?;
    let mut out = BTreeMap::new();
    for m in replies {
        let RouteNetlinkMessage::NewLink(l) = m else {
            continue;
        };
        let mut name = None;
        let mut hairpin = None;
        for attr in &l.attributes {
            match attr {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::PortData(InfoPortData::BridgePort(attrs)) = info {
                            for a in attrs {
                                if let InfoBridgePort::HairpinMode(h) = a {
                                    hairpin = Some(*h);
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(name) = name {
            out.insert(
                name,
                LinkBits {
                    index: l.header.index,
                    hairpin,
                },
            );
        }
    }
    Ok(out)
}

async fn converge_hairpin(
    host: &Netlink,
    links: &BTreeMap<String, LinkBits>,
    want: &BTreeSet<String>,
    had: &BTreeSet<String>,
) -> Result<usize, LbError> {
    let mut changes = 0;
    for name in want.union(had) {
        let on = want.contains(name);
        let Some(link) = links.get(name) else {
            continue;
        };
        // Not a bridge port (anymore): nothing to set. (Port flags change through
        // RTM_NEWLINK on the existing link; RTM_SETLINK ignores IFLA_LINKINFO.)
        let Some(have) = link.hairpin else {
            continue;
        };
        if have == on {
            continue;
        }
        let mut msg = LinkMessage::default();
        msg.header.index = link.index;
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                on,
            )])),
        ]));
        let what = format!(
            "setting hairpin {} on {name}",
            if on { "on" } else { "off" }
        );
        host.ack(&what, 0, RouteNetlinkMessage::NewLink(msg))
            .await
            .map_err(nl_err(what.clone()))?;
        changes += 1;
    }
    Ok(changes)
}

// ---- neighbours -------------------------------------------------------------------------

fn neigh_ip(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(v4) => Some((*v4).into()),
        NeighbourAddress::Inet6(v6) => Some((*v6).into()),
        _ => None,
    }
}

/// Every neighbour entry: (ifindex, ip) → (mac, permanent).
async fn dump_neighbours(
    host: &Netlink,
) -> Result<BTreeMap<(u32, IpAddr), (Option<MacAddr>, bool)>, LbError> {
    let mut out = BTreeMap::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family;
        let replies = host
            .request(
                "listing neighbours",
                NLM_F_DUMP,
                RouteNetlinkMessage::GetNeighbour(msg),
            )
            .await
            .map_err(nl_err("listing neighbours"))?;
        for m in replies {
            let RouteNetlinkMessage::NewNeighbour(n) = m else {
                continue;
            };
            let (mut ip, mut mac) = (None, None);
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::Destination(d) => ip = neigh_ip(d),
                    NeighbourAttribute::LinkLayerAddress(b) => {
                        mac = <[u8; 6]>::try_from(b.as_slice()).ok().map(MacAddr)
                    }
                    _ => {}
                }
            }
            if let Some(ip) = ip {
                out.insert(
                    (n.header.ifindex, ip),
                    (mac, n.header.state == NeighbourState::Permanent),
                );
            }
        }
    }
    Ok(out)
}

async fn converge_neighbours(
    host: &Netlink,
    links: &BTreeMap<String, LinkBits>,
    nets: &[&LbNet],
    old: &BTreeSet<(String, IpAddr)>,
) -> Result<usize, LbError> {
    let mut want: BTreeMap<(String, IpAddr), MacAddr> = BTreeMap::new();
    for n in nets {
        for (ip, mac) in n.gateways.iter().chain(&n.neighbours) {
            want.insert((n.bridge.clone(), *ip), *mac);
        }
        if let Some(vx) = &n.vxlan {
            for (ip, mac) in &n.vips {
                want.insert((vx.clone(), *ip), *mac);
            }
        }
    }
    let have = dump_neighbours(host).await?;
    let mut changes = 0;
    for ((dev, ip), mac) in &want {
        let Some(link) = links.get(dev) else {
            tracing::warn!(device = %dev, "load balancer: device missing, neighbour skipped");
            continue;
        };
        if have.get(&(link.index, *ip)) == Some(&(Some(*mac), true)) {
            continue;
        }
        host.neighbour_replace(link.index, *ip, *mac)
            .await
            .map_err(nl_err(format!("neighbour {ip} on {dev}")))?;
        changes += 1;
    }
    for (dev, ip) in old {
        if want.contains_key(&(dev.clone(), *ip)) {
            continue;
        }
        let Some(link) = links.get(dev) else {
            continue;
        };
        if !have.contains_key(&(link.index, *ip)) {
            continue;
        }
        host.neighbour_delete(link.index, *ip)
            .await
            .map_err(nl_err(format!("deleting neighbour {ip} on {dev}")))?;
        changes += 1;
    }
    Ok(changes)
}

// ---- routes -----------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
struct WantRoute {
    blackhole: bool,
    gateway: Option<IpAddr>,
    oif: Option<u32>,
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some((*v4).into()),
        RouteAddress::Inet6(v6) => Some((*v6).into()),
        _ => None,
    }
}

fn unspecified(v6: bool) -> IpAddr {
    if v6 {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    }
}

fn header_table(table: u32) -> u8 {
    u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC)
}

fn route_message(table: u32, dst: IpNet, r: &WantRoute) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = if dst.addr().is_ipv6() {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    msg.header.destination_prefix_length = dst.prefix_len();
    msg.header.table = header_table(table);
    msg.header.protocol = RouteProtocol::from(PROTOCOL);
    msg.header.kind = if r.blackhole {
        RouteType::BlackHole
    } else {
        RouteType::Unicast
    };
    msg.header.scope = if r.gateway.is_some() || r.blackhole {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    msg.attributes.push(RouteAttribute::Table(table));
    if dst.prefix_len() > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst.addr())));
    }
    if let Some(gw) = r.gateway {
        msg.header.flags |= RouteFlags::Onlink;
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
    }
    if let Some(oif) = r.oif {
        msg.attributes.push(RouteAttribute::Oif(oif));
    }
    msg
}

async fn converge_routes(
    host: &Netlink,
    links: &BTreeMap<String, LinkBits>,
    nets: &[&LbNet],
) -> Result<usize, LbError> {
    let mut want: BTreeMap<(u32, IpNet), WantRoute> = BTreeMap::new();
    for n in nets {
        let Some(link) = links.get(&n.bridge) else {
            continue;
        };
        for s in &n.subnets {
            want.insert(
                (n.table, s.trunc()),
                WantRoute {
                    blackhole: false,
                    gateway: None,
                    oif: Some(link.index),
                },
            );
        }
        for v6 in [false, true] {
            let default = IpNet::new(unspecified(v6), 0).unwrap_or_default();
            let gw = n.gateways.iter().find(|(ip, _)| ip.is_ipv6() == v6);
            let route = match gw {
                Some((ip, _)) => WantRoute {
                    blackhole: false,
                    gateway: Some(*ip),
                    oif: Some(link.index),
                },
                None => WantRoute {
                    blackhole: true,
                    gateway: None,
                    oif: None,
                },
            };
            want.entry((n.table, default)).or_insert(route);
        }
    }
    let replies = host
        .request(
            "listing routes",
            NLM_F_DUMP,
            RouteNetlinkMessage::GetRoute(RouteMessage::default()),
        )
        .await
        .map_err(nl_err("listing routes"))?;
    let mut changes = 0;
    let mut good = BTreeSet::new();
    for m in replies {
        let RouteNetlinkMessage::NewRoute(r) = m else {
            continue;
        };
        if u8::from(r.header.protocol) != PROTOCOL {
            continue;
        }
        let v6 = match r.header.address_family {
            AddressFamily::Inet => false,
            AddressFamily::Inet6 => true,
            _ => continue,
        };
        let mut table = u32::from(r.header.table);
        let (mut dest, mut gateway, mut oif, mut multipath) = (unspecified(v6), None, None, false);
        for a in &r.attributes {
            match a {
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Destination(d) => {
                    if let Some(ip) = route_ip(d) {
                        dest = ip;
                    }
                }
                RouteAttribute::Gateway(g) => gateway = route_ip(g),
                RouteAttribute::Oif(o) => oif = Some(*o),
                RouteAttribute::MultiPath(_) => multipath = true,
                _ => {}
            }
        }
        let Ok(dst) = IpNet::new(dest, r.header.destination_prefix_length) else {
            continue;
        };
        let blackhole = r.header.kind == RouteType::BlackHole;
        let have = WantRoute {
            blackhole,
            gateway,
            // IPv6 blackhole routes are reported on `lo`.
            oif: oif.filter(|_| !blackhole),
        };
        let key = (table, dst);
        if !multipath && want.get(&key) == Some(&have) && good.insert(key) {
            continue;
        }
        let what = format!("deleting route {dst} table {table}");
        match host
            .ack(&what, 0, RouteNetlinkMessage::DelRoute(r.clone()))
            .await
        {
            Ok(()) => changes += 1,
            Err(e) if e.errno() == Some(ESRCH) => {}
            Err(e) => return Err(nl_err(what)(e)),
        }
    }
    for ((table, dst), r) in &want {
        if good.contains(&(*table, *dst)) {
            continue;
        }
        let what = format!("adding route {dst} table {table}");
        host.ack(
            &what,
            NLM_F_CREATE | NLM_F_REPLACE,
            RouteNetlinkMessage::NewRoute(route_message(*table, *dst, r)),
        )
        .await
        .map_err(nl_err(what.clone()))?;
        changes += 1;
    }
    Ok(changes)
}

// ---- rules ------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct RuleKey {
    v6: bool,
    iif: String,
    table: u32,
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
    msg.attributes.push(RuleAttribute::Priority(RULE_PRIORITY));
    msg.attributes.push(RuleAttribute::Table(k.table));
    msg.attributes
        .push(RuleAttribute::Protocol(RouteProtocol::from(PROTOCOL)));
    msg.attributes.push(RuleAttribute::Iifname(k.iif.clone()));
    msg.attributes.push(RuleAttribute::FwMark(LB_MARK));
    msg.attributes.push(RuleAttribute::FwMask(LB_MARK));
    msg
}

async fn converge_rules(host: &Netlink, nets: &[&LbNet]) -> Result<usize, LbError> {
    let want: BTreeSet<RuleKey> = nets
        .iter()
        .flat_map(|n| {
            [false, true].map(|v6| RuleKey {
                v6,
                iif: n.bridge.clone(),
                table: n.table,
            })
        })
        .collect();
    let mut changes = 0;
    let mut good = BTreeSet::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut msg = RuleMessage::default();
        msg.header.family = family;
        let replies = host
            .request(
                "listing rules",
                NLM_F_DUMP,
                RouteNetlinkMessage::GetRule(msg),
            )
            .await
            .map_err(nl_err("listing rules"))?;
        for m in replies {
            let RouteNetlinkMessage::NewRule(mut r) = m else {
                continue;
            };
            if r.header.family != family {
                continue;
            }
            let (mut protocol, mut priority, mut iif) = (None, 0, None);
            let (mut mark, mut mask) = (None, None);
            let mut table = u32::from(r.header.table);
            let mut plain = r.header.action == RuleAction::ToTable
                && r.header.src_len == 0
                && r.header.dst_len == 0
                && !r.header.flags.contains(RuleFlags::Invert);
            for a in &r.attributes {
                match a {
                    RuleAttribute::Protocol(p) => protocol = Some(u8::from(*p)),
                    RuleAttribute::Priority(p) => priority = *p,
                    RuleAttribute::Iifname(n) => iif = Some(n.clone()),
                    RuleAttribute::Table(t) => table = *t,
                    RuleAttribute::FwMark(v) => mark = Some(*v),
                    RuleAttribute::FwMask(v) => mask = Some(*v),
                    RuleAttribute::SuppressPrefixLen(v) | RuleAttribute::SuppressIfGroup(v) => {
                        plain &= *v == u32::MAX;
                    }
                    _ => plain = false,
                }
            }
            if protocol != Some(PROTOCOL) {
                continue;
            }
            let key = iif.map(|iif| RuleKey {
                v6: family == AddressFamily::Inet6,
                iif,
                table,
            });
            if let Some(key) = key
                && plain
                && priority == RULE_PRIORITY
                && mark == Some(LB_MARK)
                && mask == Some(LB_MARK)
                && want.contains(&key)
                && good.insert(key)
            {
                continue;
            }
            r.header
                .flags
                .remove(RuleFlags::Unresolved | RuleFlags::IifDetached | RuleFlags::OifDetached);
            match host
                .ack("deleting a rule", 0, RouteNetlinkMessage::DelRule(r))
                .await
            {
                Ok(()) => changes += 1,
                Err(e) if e.errno() == Some(ENOENT) => {}
                Err(e) => return Err(nl_err("deleting a rule")(e)),
            }
        }
    }
    for k in want.difference(&good) {
        let what = format!(
            "adding rule iif {} lookup {} ({})",
            k.iif,
            k.table,
            if k.v6 { "v6" } else { "v4" }
        );
        host.ack(
            &what,
            NLM_F_CREATE | NLM_F_EXCL,
            RouteNetlinkMessage::NewRule(rule_message(k)),
        )
        .await
        .map_err(nl_err(what.clone()))?;
        changes += 1;
    }
    Ok(changes)
}
