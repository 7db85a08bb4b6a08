//! Converges this host's kernel to a [`Desired`] state: reads what exists, keeps
//! what is still wanted untouched, creates what is missing and removes what kuryr
//! made (recognized by its names: `brq*`, `vxlan-*`, `tap*`, kuryr's nft tables) and
//! no port owns any more. One engine per host; callers serialize through a mutex.
//!
//! The kernel is reached through the traits of [`crate::kernel`]: the real one by
//! default, an in-memory one in the unit tests (`engine/tests.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use kuryr_dataplane::MacAddr;
use kuryr_dataplane::netlink::{AddressEntry, Link, Netlink, NetlinkError, VxlanSpec};
use kuryr_dataplane::nft::{self, Ruleset};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tracing::Instrument;

use crate::desired::{Desired, NetDesired, NetKind, PortDesired, RemoteL2, vxlan_name};
use crate::kernel::{Firewall, InNetns, IpVersion, Kernel, NftFirewall, Veth};
use crate::routers::RouterDesired;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("netlink: {0}")]
    Netlink(#[from] NetlinkError),
    #[error("nftables: {0}")]
    Nft(#[from] nft::NftError),
}

/// Why one port could not be put in place (the others are not held up by it).
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("container namespace {}: {source}", path.display())]
    Namespace {
        path: std::path::PathBuf,
        #[source]
        source: kuryr_dataplane::netns::NetnsError,
    },
    #[error("an interface named {ifname} already exists in {}", path.display())]
    NameTaken {
        ifname: String,
        path: std::path::PathBuf,
    },
    #[error("creating the veth {tap}: {source}")]
    Veth {
        tap: String,
        #[source]
        source: NetlinkError,
    },
    #[error("setting up the host end {tap}: {source}")]
    HostEnd {
        tap: String,
        #[source]
        source: NetlinkError,
    },
    #[error("configuring {ifname} in {}: {source}", path.display())]
    ContainerEnd {
        ifname: String,
        path: std::path::PathBuf,
        #[source]
        source: NetlinkError,
    },
}

/// The outcome of one pass: ports whose interface is in place, and per-port failures.
#[derive(Debug, Default)]
pub struct Pass {
    pub realized: BTreeSet<String>,
    pub failed: BTreeMap<String, PortError>,
    /// How long the nft transaction took, when the rules changed.
    pub nft_apply: Option<std::time::Duration>,
    /// When the rules of this pass were in the kernel, if they changed.
    pub rules_done: Option<Instant>,
    /// What was found changed behind kuryr's back and put back, by kind.
    pub repairs: BTreeMap<&'static str, u64>,
}

impl Pass {
    fn repaired(&mut self, kind: &'static str, what: &str) {
        tracing::warn!(kind, what, "drift repaired");
        *self.repairs.entry(kind).or_default() += 1;
    }
}

/// Generic over the kernel it acts on; the defaults are the real one.
pub struct Engine<K: Kernel = Netlink, F: Firewall = NftFirewall> {
    kernel: K,
    firewall: F,
    underlay_ip: IpAddr,
    underlay_ifindex: Option<u32>,
    vxlan_port: u16,
    /// What the last successful pass applied, so unchanged things are not re-read.
    applied_rules: Option<(Ruleset, nft::Compiled)>,
    applied_ports: HashMap<String, Arc<PortDesired>>,
    applied_remote: HashMap<String, RemoteL2>,
    /// Links as last read (a full dump now and then, lookups by name between).
    known: HashMap<String, Link>,
    /// Links a pass found changed or gone, dropped from `known` when it ends.
    forgotten: Vec<String>,
    full_dump_at: Option<std::time::Instant>,
    /// Link names the last pass wanted: one gone means a full dump and a sweep.
    last_wanted: BTreeSet<String>,
    /// Gateway addresses by network as last converged on its bridge.
    applied_gateways: HashMap<String, (String, Vec<IpNet>)>,
    /// Forwarding (IPv4, IPv6) seen on since the last full pass.
    forwarding: (bool, bool),
    /// How long a network's bridge and vxlan device outlive its last port here, and
    /// since when each unwanted one is waiting: a network whose only container is
    /// restarted, or used by `docker run --rm` in a loop, keeps them instead of
    /// paying their deletion (kernel grace periods, tens of ms) and creation each time.
    linger: std::time::Duration,
    lingering: HashMap<String, std::time::Instant>,
    /// How often a pass reads back everything kuryr owns on the host (links,
    /// FDB/neighbour entries, gateway addresses) and a share of the container ends.
    verify: Duration,
    /// Where the last verification of container ends stopped (a port id).
    verify_cursor: Option<String>,
    /// Where the last verification of router namespaces stopped (a router id).
    router_cursor: Option<String>,
    /// Whether the firewall tells about changes others make to kuryr's tables.
    monitoring: bool,
    /// Woken when the kernel says something kuryr owns changed.
    wake: Arc<Notify>,
    /// A foreign nftables change seen and not yet repaired; the last repair.
    nft_drift: bool,
    nft_repaired_at: Option<Instant>,
    /// Routers as last converged, and the gateway containment table as last applied.
    applied_routers: HashMap<String, RouterDesired>,
    /// The load balancing last converged (None: unknown, converge next pass).
    applied_lb: Option<kuryr_dataplane::lb::LbHost>,
    applied_dvr: Option<nft::Dvr>,
    /// Router namespaces with this prefix are this agent's (see `AgentConfig`).
    router_prefix: String,
}

/// Container ends checked per verification pass: all of them on a small host, a
/// tenth of them on a large one (each one then checked every ten passes).
fn verify_share(ports: usize) -> usize {
    ports.div_ceil(10).max(64)
}

/// IFA_PROTO of the addresses kuryr puts on bridges ('k'), so that they are told
/// from anyone else's across restarts.
pub const ADDRESS_PROTOCOL: u8 = 0x6b;

const TABLE_DESCRIPTION: &str = "tables bridge kuryr and inet kuryr";

/// The default of [`Engine::verify_every`].
pub const VERIFY_INTERVAL: Duration = Duration::from_secs(2);

/// Links kuryr made, by name and kind: a `tap*` that is a veth, a `vxlan-*` that is
/// a vxlan device, a `brq*` that is a bridge. (Nova's `tap*` are tun devices.)
fn is_ours(l: &Link) -> bool {
    let kind = l.kind.as_deref();
    (l.name.starts_with("tap") && kind == Some("veth"))
        || (l.name.starts_with("vxlan-") && kind == Some("vxlan"))
        || (l.name.starts_with("brq") && kind == Some("bridge"))
}

impl<K: Kernel, F: Firewall> Engine<K, F> {
    pub fn new(
        kernel: K,
        firewall: F,
        underlay_ip: IpAddr,
        underlay_ifindex: Option<u32>,
        vxlan_port: u16,
        linger: std::time::Duration,
    ) -> Engine<K, F> {
        Engine {
            kernel,
            firewall,
            underlay_ip,
            underlay_ifindex,
            vxlan_port,
            applied_rules: None,
            applied_ports: HashMap::new(),
            applied_remote: HashMap::new(),
            known: HashMap::new(),
            forgotten: Vec::new(),
            full_dump_at: None,
            last_wanted: BTreeSet::new(),
            applied_gateways: HashMap::new(),
            forwarding: (false, false),
            linger,
            lingering: HashMap::new(),
            verify: VERIFY_INTERVAL,
            verify_cursor: None,
            router_cursor: None,
            monitoring: false,
            wake: Arc::new(Notify::new()),
            nft_drift: false,
            nft_repaired_at: None,
            applied_routers: HashMap::new(),
            applied_lb: None,
            // Nothing to apply while no router is here (a table left by a run whose
            // routers all went while the agent was down is inert, and goes with
            // `--cleanup` or the next router).
            applied_dvr: Some(nft::Dvr::default()),
            router_prefix: "kqr-".into(),
        }
    }

    /// How often a pass reads back what kuryr owns ([`VERIFY_INTERVAL`] by default).
    pub fn verify_every(mut self, every: Duration) -> Engine<K, F> {
        self.verify = every;
        self
    }

    /// The prefix of this agent's router namespaces (`kqr-` by default).
    pub fn router_prefix(mut self, prefix: &str) -> Engine<K, F> {
        self.router_prefix = prefix.to_string();
        self
    }

    /// Notified when the kernel reports a change to what kuryr owns: run a pass.
    pub fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// When the next pass is due without any event: a lingering bridge or vxlan
    /// device to remove, or the next verification.
    pub fn next_wakeup(&self) -> Option<std::time::Instant> {
        let verify = self.full_dump_at.map(|t| t + self.verify);
        self.lingering
            .values()
            .map(|t| *t + self.linger)
            .chain(verify)
            .min()
    }

    /// When a lingering bridge or vxlan device is due for removal.
    pub fn next_removal(&self) -> Option<std::time::Instant> {
        self.lingering.values().map(|t| *t + self.linger).min()
    }

    /// One convergence pass. Per-port problems (a namespace that is gone, a name
    /// taken inside it) fail that port only; host-wide ones fail the pass.
    pub async fn converge(&mut self, d: &Desired) -> Result<Pass, EngineError> {
        let started = std::time::Instant::now();
        let mut pass = Pass::default();
        if !self.monitoring {
            // Before the first apply, so that nothing after it goes unseen.
            match self.firewall.monitor(self.wake.clone()) {
                Ok(()) => self.monitoring = true,
                Err(e) => tracing::error!(error = %e,
                    "cannot follow nftables changes: drift of kuryr's tables goes unrepaired"),
            }
        }
        if self.firewall.take_foreign_change() {
            self.nft_drift = true;
            // The gateway containment table is put back too (it is small).
            if self
                .applied_dvr
                .as_ref()
                .is_some_and(|d| !d.legs.is_empty())
            {
                self.applied_dvr = None;
            }
        }
        let wanted: BTreeSet<String> = d
            .ports
            .values()
            .map(|p| p.tap.clone())
            .chain(d.networks.values().map(|n| n.bridge.clone()))
            .chain(
                d.routers
                    .iter()
                    .flat_map(|r| r.legs.iter().map(|l| l.host_name.clone())),
            )
            .chain(d.networks.values().filter_map(|n| match &n.kind {
                NetKind::Vxlan { vni } => Some(vxlan_name(*vni)),
                // Not ours, never removed: listed so that it is looked up.
                NetKind::Flat { interface } => Some(interface.clone()),
                NetKind::Local => None,
            }))
            .collect();
        // A full dump of the links when something may have to go (and now and then,
        // to notice changes made behind our back); otherwise only the links this
        // pass needs and has not seen, looked up by name. Dumps grow with the number
        // of ports; lookups don't.
        let full = self.full_dump_at.is_none_or(|t| t.elapsed() >= self.verify)
            || !self.last_wanted.is_subset(&wanted)
            || self.next_removal().is_some_and(|t| t <= started);
        if full {
            self.known = self
                .kernel
                .links()
                .await?
                .into_iter()
                .map(|l| (l.name.clone(), l))
                .collect();
            self.full_dump_at = Some(std::time::Instant::now());
        } else {
            for name in &wanted {
                if !self.known.contains_key(name)
                    && let Some(l) = self.kernel.link_by_name(name).await?
                {
                    self.known.insert(name.clone(), l);
                }
            }
        }
        // Borrowed for the pass (a clone costs thousands of allocations on a big
        // host); what the pass finds stale is dropped from it afterwards.
        let links = std::mem::take(&mut self.known);
        let outcome = self
            .converge_on(d, &links, &wanted, full, started, &mut pass)
            .await;
        let mut links = links;
        for name in self.forgotten.drain(..) {
            links.remove(&name);
        }
        self.known = links;
        outcome?;
        self.last_wanted = wanted;
        self.applied_ports.retain(|id, _| d.ports.contains_key(id));
        self.applied_remote
            .retain(|id, _| d.networks.contains_key(id));
        self.applied_gateways
            .retain(|id, _| d.networks.contains_key(id));
        Ok(pass)
    }

    /// The body of [`Engine::converge`], on the links read at its start.
    async fn converge_on(
        &mut self,
        d: &Desired,
        links: &HashMap<String, Link>,
        wanted: &BTreeSet<String>,
        full: bool,
        started: Instant,
        pass: &mut Pass,
    ) -> Result<(), EngineError> {
        // Networks: bridge, then its uplink (vxlan or a host interface).
        let mut bridges: HashMap<String, u32> = HashMap::new();
        for n in d.networks.values() {
            let br = self.ensure_network(n, links, pass).await?;
            bridges.insert(n.id.clone(), br);
        }

        // Published ports: the gateways their traffic is routed through, and
        // forwarding, before the rules that send traffic there.
        self.ensure_gateways(d, &bridges, links, full, pass).await;
        if full {
            self.forwarding = (false, false);
        }
        self.ensure_forwarding(&d.ruleset.published);

        let t_links = started.elapsed();
        // Security groups before ports come up, so a new port is filtered from its
        // first packet.
        pass.nft_apply = self.apply_rules(&d.ruleset, pass).await?;
        if pass.nft_apply.is_some() {
            pass.rules_done = Some(Instant::now());
        }
        let t_rules = started.elapsed();

        // On a full pass, a share of the container ends is read back too, in turn.
        let mut verify: BTreeSet<&str> = BTreeSet::new();
        if full {
            let share = verify_share(d.ports.len());
            let after = self.verify_cursor.take().unwrap_or_default();
            verify.extend(
                d.ports
                    .range::<String, _>((
                        std::ops::Bound::Excluded(&after),
                        std::ops::Bound::Unbounded,
                    ))
                    .chain(d.ports.iter())
                    .map(|(id, _)| id.as_str())
                    .take(share.min(d.ports.len())),
            );
            self.verify_cursor = verify.last().map(|s| s.to_string());
        }
        // Taps no port wants go before ports are made: a port unbound and another
        // bound at once into the same namespace under the same name need the old
        // container end gone first.
        if full {
            let gone: Vec<(String, u32)> = links
                .values()
                .filter(|l| l.name.starts_with("tap") && is_ours(l) && !wanted.contains(&l.name))
                .map(|l| (l.name.clone(), l.index))
                .collect();
            for (name, index) in gone {
                tracing::info!(link = %name, "removing a link no port owns");
                self.kernel.delete_link(index).await?;
                self.forget_link(&name);
            }
        }
        for p in d.ports.values() {
            let Some(&bridge) = bridges.get(&p.network_id) else {
                continue;
            };
            // Arc's equality checks identity first: an unchanged port is one compare.
            let in_place_before = self.applied_ports.get(&p.id) == Some(p);
            let check = verify.contains(p.id.as_str());
            // Unchanged and in place (most ports, most passes): nothing to do, and
            // no span or future made for it. A handed-off container end is
            // configured by Docker: never read back.
            if in_place_before
                && (!check || p.handoff)
                && links
                    .get(&p.tap)
                    .is_some_and(|l| l.master == Some(bridge) && l.up)
            {
                pass.realized.insert(p.id.clone());
                continue;
            }
            let span = tracing::debug_span!("port", port = %p.id, tap = %p.tap);
            match self
                .ensure_port(p, bridge, links.get(&p.tap), pass)
                .instrument(span)
                .await
            {
                Ok(()) => {
                    pass.realized.insert(p.id.clone());
                }
                Err(e) => {
                    self.applied_ports.remove(&p.id);
                    pass.failed.insert(p.id.clone(), e);
                }
            }
            if !in_place_before {
                // Created or changed: read it back by name next time.
                self.forget_link(&p.tap);
            }
        }

        self.converge_routers(d, full, pass).await;

        for n in d.networks.values() {
            if let NetKind::Vxlan { vni } = n.kind
                && let Err(e) = self.ensure_remote(n, vni, full, pass).await
            {
                tracing::warn!(network = %n.id, error = %e, "l2 population failed; retried next pass");
                self.applied_remote.remove(&n.id);
            }
        }

        // Load balancing last: it needs the bridges and the VIPs' ARP entries, and
        // goes (for a network no longer here) before the network's bridge.
        self.converge_lb(d, full, pass).await;

        // Remove the network links kuryr made and nothing wants (only on a fresh
        // dump), after their taps (above): vxlan devices, then bridges. The dump from
        // the start of the pass is enough: whatever this pass created is wanted.
        self.lingering.retain(|name, _| !wanted.contains(name));
        if full {
            self.lingering.retain(|name, _| links.contains_key(name));
        }
        for prefix in ["vxlan-", "brq"] {
            for l in links.values() {
                if full && l.name.starts_with(prefix) && is_ours(l) && !wanted.contains(&l.name) {
                    if !self.linger.is_zero() {
                        let since = *self.lingering.entry(l.name.clone()).or_insert(started);
                        if since.elapsed() < self.linger {
                            continue;
                        }
                    }
                    tracing::info!(link = %l.name, "removing a link no port owns");
                    self.kernel.delete_link(l.index).await?;
                    self.forget_link(&l.name);
                    self.lingering.remove(&l.name);
                }
            }
        }
        tracing::debug!(
            links_ms = t_links.as_secs_f64() * 1e3,
            rules_ms = (t_rules - t_links).as_secs_f64() * 1e3,
            rest_ms = (started.elapsed() - t_rules).as_secs_f64() * 1e3,
            ports = d.ports.len(),
            "convergence pass"
        );
        Ok(())
    }

    /// Router namespaces: the gateway containment rules first (a leg must never
    /// let its MAC be learned elsewhere or track a half flow), then each router
    /// changed since the last pass (all of them, read back, on a full pass), then
    /// the namespaces of routers no longer here. A router that fails is retried on
    /// the next pass; the others are not held up by it.
    async fn converge_routers(&mut self, d: &Desired, full: bool, pass: &mut Pass) {
        if self.applied_dvr.as_ref() != Some(&d.dvr) {
            match self.firewall.apply(&nft::render_dvr(&d.dvr)).await {
                Ok(()) => self.applied_dvr = Some(d.dvr.clone()),
                Err(e) => {
                    tracing::warn!(error = %e, "gateway containment rules not applied; retried next pass");
                    self.applied_dvr = None;
                }
            }
        }
        // Unchanged routers are read back on full passes in turn, a share each time
        // (reading one back costs a few ms: its namespace's links, addresses,
        // neighbours, rules and routes, and its legs' FDB entries).
        let mut verify: BTreeSet<&str> = BTreeSet::new();
        if full && !d.routers.is_empty() {
            let share = d.routers.len().div_ceil(10).max(8);
            let after = self.router_cursor.take().unwrap_or_default();
            let mut ids: Vec<&str> = d.routers.iter().map(|r| r.id.as_str()).collect();
            ids.sort_unstable();
            let start = ids.partition_point(|id| *id <= after.as_str());
            let taken: Vec<&str> = ids[start..]
                .iter()
                .chain(ids.iter())
                .take(share.min(ids.len()))
                .copied()
                .collect();
            self.router_cursor = taken.last().map(|s| s.to_string());
            verify.extend(taken);
        }
        for r in &d.routers {
            let same = self.applied_routers.get(&r.id) == Some(r);
            if same && !verify.contains(r.id.as_str()) {
                continue;
            }
            let span = tracing::debug_span!("router", router = %r.id);
            match self.kernel.converge_router(r).instrument(span).await {
                Ok(changes) => {
                    if same && changes > 0 {
                        pass.repaired("router", &r.netns);
                    }
                    self.applied_routers.insert(r.id.clone(), r.clone());
                }
                Err(e) => {
                    tracing::warn!(router = %r.id, error = %e, "router not realized; retried next pass");
                    self.applied_routers.remove(&r.id);
                }
            }
        }
        let gone = self
            .applied_routers
            .keys()
            .any(|id| !d.routers.iter().any(|r| &r.id == id));
        if full || gone {
            let wanted: BTreeSet<&str> = d.routers.iter().map(|r| r.netns.as_str()).collect();
            match self.kernel.router_namespaces(&self.router_prefix) {
                Ok(present) => {
                    for ns in present.iter().filter(|n| !wanted.contains(n.as_str())) {
                        tracing::info!(netns = %ns, "removing a router namespace no router here owns");
                        if let Err(e) = self.kernel.remove_router(ns).await {
                            tracing::warn!(netns = %ns, error = %e, "router namespace not removed; retried next pass");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot list router namespaces"),
            }
            self.applied_routers
                .retain(|id, _| d.routers.iter().any(|r| &r.id == id));
        }
    }

    /// The host's listeners, read back on full passes; a failure is retried on the
    /// next pass.
    async fn converge_lb(&mut self, d: &Desired, full: bool, pass: &mut Pass) {
        let same = self.applied_lb.as_ref() == Some(&d.lb.host);
        if same && !full {
            return;
        }
        let span = tracing::debug_span!("load_balancing", nets = d.lb.host.nets.len());
        match self.kernel.converge_lb(&d.lb.host).instrument(span).await {
            Ok(changes) => {
                if same && changes > 0 {
                    pass.repaired("load_balancer", "listeners");
                }
                self.applied_lb = Some(d.lb.host.clone());
            }
            Err(e) => {
                tracing::warn!(error = %e, "load balancing not realized; retried next pass");
                self.applied_lb = None;
            }
        }
    }

    /// A link changed or gone: read it again next time.
    fn forget_link(&mut self, name: &str) {
        self.forgotten.push(name.to_string());
    }

    async fn ensure_network(
        &mut self,
        n: &NetDesired,
        links: &HashMap<String, Link>,
        pass: &mut Pass,
    ) -> Result<u32, EngineError> {
        let bridge = match links.get(&n.bridge) {
            Some(l) if l.up && l.mtu == n.mtu && l.kind.as_deref() == Some("bridge") => l.index,
            _ => {
                if self.last_wanted.contains(&n.bridge) {
                    pass.repaired("link", &n.bridge);
                }
                self.forget_link(&n.bridge);
                if !links.contains_key(&n.bridge) {
                    // A new bridge holds no address yet.
                    self.applied_gateways.remove(&n.id);
                }
                self.kernel.ensure_bridge(&n.bridge, n.mtu).await?.index
            }
        };
        match &n.kind {
            NetKind::Vxlan { vni } => {
                let name = vxlan_name(*vni);
                let ok = links.get(&name).is_some_and(|l| {
                    l.master == Some(bridge)
                        && l.up
                        && l.mtu == n.mtu
                        && l.vxlan.as_ref().is_some_and(|v| {
                            v.vni == *vni
                                && v.local == Some(self.underlay_ip)
                                && v.port == self.vxlan_port
                                && !v.learning
                                && v.proxy
                                && v.underlay == self.underlay_ifindex
                        })
                });
                if !ok {
                    if self.last_wanted.contains(&name) {
                        pass.repaired("link", &name);
                    }
                    self.applied_remote.remove(&n.id);
                    self.forget_link(&name);
                    self.kernel
                        .ensure_vxlan(&VxlanSpec {
                            name,
                            vni: *vni,
                            local: self.underlay_ip,
                            port: self.vxlan_port,
                            mtu: n.mtu,
                            master: bridge,
                            underlay: self.underlay_ifindex,
                        })
                        .await?;
                }
            }
            NetKind::Flat { interface } => match links.get(interface) {
                Some(l) if l.master == Some(bridge) && l.up => {}
                Some(l) => {
                    if self.last_wanted.contains(interface) {
                        pass.repaired("link", interface);
                    }
                    self.forget_link(interface);
                    self.kernel.set_master(l.index, bridge).await?;
                    self.kernel.set_up(l.index).await?;
                }
                None => tracing::warn!(interface = %interface, network = %n.id,
                    "flat network's host interface does not exist"),
            },
            NetKind::Local => {}
        }
        Ok(bridge)
    }

    /// Puts a port's veth in place and configures its container end, or reads an
    /// unchanged one back (repairing what is missing) when it is due for a check.
    async fn ensure_port(
        &mut self,
        p: &Arc<PortDesired>,
        bridge: u32,
        tap: Option<&Link>,
        pass: &mut Pass,
    ) -> Result<(), PortError> {
        // (Unchanged ports in place that need no check never get here: see the
        // caller's loop.)
        let in_place = tap.is_some_and(|l| l.master == Some(bridge) && l.up);
        let was_applied = self.applied_ports.get(&p.id) == Some(p);
        if was_applied && !in_place {
            pass.repaired("link", &p.tap);
        }
        let ns = if p.handoff {
            self.kernel.own_netns()
        } else {
            self.kernel.open_netns(&p.netns)
        }
        .map_err(|source| PortError::Namespace {
            path: p.netns.clone(),
            source,
        })?;
        match tap {
            None => {
                let veth = Veth {
                    host_name: p.tap.clone(),
                    master: Some(bridge),
                    mtu: p.mtu,
                    peer_name: p.ifname.clone(),
                    peer_mac: Some(p.mac),
                };
                self.kernel
                    .create_veth(&veth, &ns)
                    .await
                    .map_err(|source| {
                        if source.is_exists() {
                            PortError::NameTaken {
                                ifname: p.ifname.clone(),
                                path: p.netns.clone(),
                            }
                        } else {
                            PortError::Veth {
                                tap: p.tap.clone(),
                                source,
                            }
                        }
                    })?;
            }
            Some(l) => {
                let host_end = |source| PortError::HostEnd {
                    tap: p.tap.clone(),
                    source,
                };
                if l.master != Some(bridge) {
                    self.kernel
                        .set_master(l.index, bridge)
                        .await
                        .map_err(host_end)?;
                }
                if l.mtu != p.mtu {
                    self.kernel
                        .set_mtu(l.index, p.mtu)
                        .await
                        .map_err(host_end)?;
                }
                if !l.up {
                    self.kernel.set_up(l.index).await.map_err(host_end)?;
                }
            }
        }
        if p.handoff {
            // Docker moves the container end into its sandbox and configures it.
            self.applied_ports.insert(p.id.clone(), p.clone());
            return Ok(());
        }
        let container_end = |source| PortError::ContainerEnd {
            ifname: p.ifname.clone(),
            path: p.netns.clone(),
            source,
        };
        let inside = self.kernel.enter(&ns).map_err(container_end)?;
        if tap.is_some()
            && let Ok(Some(l)) = inside.link_by_name(&p.ifname).await
            && l.mtu != p.mtu
        {
            inside
                .set_mtu(l.index, p.mtu)
                .await
                .map_err(container_end)?;
        }
        let configured = if was_applied && in_place {
            inside
                .repair_interface(&p.ifname, &p.addresses, &p.routes)
                .await
        } else {
            inside
                .configure_interface(&p.ifname, &p.addresses, &p.routes)
                .await
        };
        let changes = configured.map_err(container_end)?;
        if was_applied && in_place && changes > 0 {
            pass.repaired("address", &format!("{} in {}", p.ifname, p.netns.display()));
        }
        self.applied_ports.insert(p.id.clone(), p.clone());
        Ok(())
    }

    /// Converges the addresses of the bridges whose wanted gateways changed (all of
    /// them on a full pass) from one dump of the namespace's addresses: missing
    /// gateways are added (marked [`ADDRESS_PROTOCOL`]; the bridge's MAC is pinned
    /// first, so that the containers' gateway MAC does not follow the ports), and
    /// kuryr's addresses no longer wanted removed: those marked as kuryr's and the
    /// gateway addresses of the network's subnets. Anything else on the bridge is
    /// left alone. A bridge no network wants any more (lingering before its
    /// removal) loses kuryr's addresses at once. Failures are logged and retried on
    /// the next pass.
    async fn ensure_gateways(
        &mut self,
        d: &Desired,
        bridges: &HashMap<String, u32>,
        links: &HashMap<String, Link>,
        full: bool,
        pass: &mut Pass,
    ) {
        let todo: Vec<&NetDesired> = d
            .networks
            .values()
            .filter(|n| {
                full || self.applied_gateways.get(&n.id).map(|(_, g)| g) != Some(&n.gateways)
            })
            .collect();
        // Bridges that held gateways for a network gone from here, and on a full
        // pass every kuryr bridge no network wants.
        let wanted: BTreeSet<&str> = d.networks.values().map(|n| n.bridge.as_str()).collect();
        let mut stale: BTreeMap<&str, (u32, &[IpNet])> = BTreeMap::new();
        for (id, (bridge, gateways)) in &self.applied_gateways {
            if !d.networks.contains_key(id)
                && !gateways.is_empty()
                && let Some(l) = links.get(bridge)
            {
                stale.insert(bridge, (l.index, gateways));
            }
        }
        if full {
            for l in links.values() {
                if l.name.starts_with("brq") && is_ours(l) && !wanted.contains(l.name.as_str()) {
                    stale.entry(&l.name).or_insert((l.index, &[]));
                }
            }
        }
        if todo.is_empty() && stale.is_empty() {
            return;
        }
        let all = match self.kernel.all_addresses().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read addresses; gateways retried next pass");
                return;
            }
        };
        for (bridge, (index, gateways)) in stale {
            for a in all.iter().filter(|a| a.index == index) {
                if a.protocol == Some(ADDRESS_PROTOCOL) || gateways.contains(&a.net) {
                    tracing::info!(%bridge, address = %a.net, "removing a gateway address");
                    if let Err(e) = self.kernel.delete_address(index, a.net).await {
                        tracing::warn!(%bridge, error = %e, "removing a gateway address failed");
                    }
                }
            }
        }
        for n in todo {
            let Some(&index) = bridges.get(&n.id) else {
                continue;
            };
            let was_applied =
                self.applied_gateways.get(&n.id) == Some(&(n.bridge.clone(), n.gateways.clone()));
            match self.converge_gateways(n, index, &all).await {
                Ok(added) => {
                    if was_applied && added > 0 {
                        pass.repaired("address", &n.bridge);
                    }
                    self.applied_gateways
                        .insert(n.id.clone(), (n.bridge.clone(), n.gateways.clone()));
                }
                Err(e) => {
                    tracing::warn!(network = %n.id, bridge = %n.bridge, error = %e,
                        "gateway addresses failed; retried next pass");
                    self.applied_gateways.remove(&n.id);
                }
            }
        }
    }

    async fn converge_gateways(
        &mut self,
        n: &NetDesired,
        index: u32,
        all: &[AddressEntry],
    ) -> Result<usize, NetlinkError> {
        let have: Vec<&AddressEntry> = all.iter().filter(|a| a.index == index).collect();
        for a in &have {
            let ours = a.protocol == Some(ADDRESS_PROTOCOL) || n.subnet_gateways.contains(&a.net);
            if ours && !n.gateways.contains(&a.net) {
                tracing::info!(bridge = %n.bridge, address = %a.net, "removing a gateway address");
                self.kernel.delete_address(index, a.net).await?;
            }
        }
        let missing: Vec<IpNet> = n
            .gateways
            .iter()
            .filter(|g| !have.iter().any(|a| a.net == **g))
            .copied()
            .collect();
        if missing.is_empty() {
            return Ok(0);
        }
        if let Some(mac) = self
            .kernel
            .link_by_name(&n.bridge)
            .await?
            .and_then(|l| l.mac)
        {
            self.kernel.set_mac(index, mac).await?;
        }
        let added = missing.len();
        for g in missing {
            tracing::info!(bridge = %n.bridge, address = %g, "adding a gateway address (published ports)");
            self.kernel
                .add_address_with_protocol(index, g, ADDRESS_PROTOCOL)
                .await?;
        }
        Ok(added)
    }

    /// Turns forwarding on in this namespace while ports are published: IPv4 for
    /// any mapping, IPv6 only with an IPv6 one. Never turns it off (others on the
    /// host may need it, as Docker leaves it on). Note that IPv6 forwarding makes the
    /// host ignore router advertisements on interfaces with `accept_ra` 1.
    fn ensure_forwarding(&mut self, published: &[nft::Published]) {
        let v4 = published.iter().any(|p| p.container_ip.is_ipv4());
        let v6 = published.iter().any(|p| p.container_ip.is_ipv6());
        for (want, done, version) in [
            (v4, &mut self.forwarding.0, IpVersion::V4),
            (v6, &mut self.forwarding.1, IpVersion::V6),
        ] {
            if !want || *done {
                continue;
            }
            match self.kernel.forwarding(version) {
                Ok(true) => *done = true,
                _ => match self.kernel.enable_forwarding(version) {
                    Ok(()) => {
                        tracing::info!(?version, "forwarding enabled for published ports");
                        *done = true;
                    }
                    Err(e) => tracing::warn!(?version, error = %e,
                        "cannot enable forwarding: published ports will not be reachable"),
                },
            }
        }
    }

    /// Static FDB and neighbour entries on the network's vxlan device, converged
    /// against what the kernel holds.
    async fn ensure_remote(
        &mut self,
        n: &NetDesired,
        vni: u32,
        verify: bool,
        pass: &mut Pass,
    ) -> Result<(), EngineError> {
        let was_applied = self.applied_remote.get(&n.id) == Some(&n.remote);
        if was_applied && !verify {
            return Ok(());
        }
        let Some(dev) = self.kernel.link_by_name(&vxlan_name(vni)).await? else {
            return Ok(());
        };
        let want_fdb: BTreeSet<(MacAddr, IpAddr)> = n
            .remote
            .fdb
            .iter()
            .copied()
            .chain(n.remote.flood.iter().map(|v| (MacAddr::ZERO, *v)))
            .collect();
        let have_fdb: BTreeSet<(MacAddr, IpAddr)> = self
            .kernel
            .fdb(dev.index)
            .await?
            .into_iter()
            .map(|e| (e.mac, e.dst))
            .collect();
        for (mac, dst) in want_fdb.difference(&have_fdb) {
            if was_applied {
                pass.repaired("fdb", &format!("{mac} dst {dst} on {}", dev.name));
            }
            self.kernel.fdb_append(dev.index, *mac, *dst).await?;
        }
        for (mac, dst) in have_fdb.difference(&want_fdb) {
            self.kernel.fdb_delete(dev.index, *mac, *dst).await?;
        }
        let have_neigh: BTreeMap<IpAddr, MacAddr> = self
            .kernel
            .neighbours(dev.index)
            .await?
            .into_iter()
            .map(|n| (n.ip, n.mac))
            .collect();
        for (ip, mac) in &n.remote.neighbours {
            if have_neigh.get(ip) != Some(mac) {
                if was_applied {
                    pass.repaired("neighbour", &format!("{ip} lladdr {mac} on {}", dev.name));
                }
                self.kernel.neighbour_replace(dev.index, *ip, *mac).await?;
            }
        }
        for ip in have_neigh.keys() {
            if !n.remote.neighbours.contains_key(ip) {
                self.kernel.neighbour_delete(dev.index, *ip).await?;
            }
        }
        self.applied_remote.insert(n.id.clone(), n.remote.clone());
        Ok(())
    }

    /// The first pass replaces kuryr's tables whole (one atomic transaction, which
    /// leaves conntrack and so established flows alone); later passes apply a diff.
    async fn apply_rules(
        &mut self,
        want: &Ruleset,
        pass: &mut Pass,
    ) -> Result<Option<std::time::Duration>, EngineError> {
        // Someone else changed kuryr's tables: replace them whole (at most once a
        // second, so that a program fighting over them cannot spin the agent).
        if self.nft_drift
            && self.applied_rules.is_some()
            && self
                .nft_repaired_at
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            pass.repaired("nftables", TABLE_DESCRIPTION);
            self.applied_rules = None;
            self.nft_repaired_at = Some(Instant::now());
        }
        if self.applied_rules.is_none() {
            self.nft_drift = false;
        }
        let (script, compiled) = match self.applied_rules.take() {
            Some((old, compiled)) if old == *want => {
                self.applied_rules = Some((old, compiled));
                return Ok(None);
            }
            None => (Some(nft::render(want)), nft::compile(want)),
            Some((old, mut compiled)) => {
                // Elements only (the common case: ports and members coming and
                // going), found and applied in place: a cost that follows the
                // change, not the number of ports on the host.
                match self
                    .firewall
                    .can_batch()
                    .then(|| compiled.update(&old, want))
                    .flatten()
                {
                    Some(changes) => match self.apply_changes(want, compiled, changes) {
                        Some(took) => return Ok(took),
                        None => (Some(nft::render(want)), nft::compile(want)),
                    },
                    None => {
                        let new = nft::compile(want);
                        (nft::diff_compiled(&compiled, &new), new)
                    }
                }
            }
        };
        let mut took = None;
        if let Some(script) = script {
            tracing::trace!(%script, "nft transaction");
            let started = std::time::Instant::now();
            let applied = self.firewall.apply(&script).await;
            took = Some(started.elapsed());
            if let Err(e) = applied {
                // Next pass starts from a full replace: the kernel state is unknown.
                self.applied_rules = None;
                return Err(e.into());
            }
        }
        self.applied_rules = Some((want.clone(), compiled));
        Ok(took)
    }

    /// Sends element changes as one netlink batch, and records `want` as applied
    /// with `compiled` (already brought to it): how long the batch took, if one was
    /// needed. `None` when the batch is refused: then replace kuryr's tables whole.
    fn apply_changes(
        &mut self,
        want: &Ruleset,
        compiled: nft::Compiled,
        changes: Vec<kuryr_dataplane::nfnl::Change>,
    ) -> Option<Option<Duration>> {
        if changes.is_empty() {
            self.applied_rules = Some((want.clone(), compiled));
            return Some(None);
        }
        let started = Instant::now();
        match self.firewall.apply_elements(nft::TABLE, &changes) {
            Some(Ok(())) => {
                let took = started.elapsed();
                tracing::debug!(
                    sets = changes.len(),
                    ms = took.as_secs_f64() * 1e3,
                    "nft elements applied over netlink"
                );
                self.applied_rules = Some((want.clone(), compiled));
                Some(Some(took))
            }
            Some(Err(e)) => {
                // The kernel does not hold what was last applied: start over.
                tracing::warn!(error = %e, "element batch refused; replacing kuryr's tables");
                None
            }
            None => None,
        }
    }

    /// Removes everything kuryr made on this host (`kuryr agent --cleanup`).
    pub async fn remove_all(&mut self) -> Result<(), EngineError> {
        self.converge(&Desired::default()).await?;
        self.firewall.remove_all().await?;
        self.applied_rules = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
