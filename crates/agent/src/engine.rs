//! Converges this host's kernel to a [`Desired`] state: reads what exists, keeps
//! what is still wanted untouched, creates what is missing and removes what kuryr
//! made (recognized by its names: `brq*`, `vxlan-*`, `tap*`, kuryr's nft tables) and
//! no port owns any more. One engine per host; callers serialize through a mutex.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use kuryr_dataplane::MacAddr;
use kuryr_dataplane::netlink::{Link, Netlink, NetlinkError, VethSpec, VxlanSpec};
use kuryr_dataplane::netns::NetNs;
use kuryr_dataplane::nft::{self, Nft, Ruleset};

use crate::desired::{Desired, NetDesired, NetKind, PortDesired, RemoteL2, vxlan_name};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("netlink: {0}")]
    Netlink(#[from] NetlinkError),
    #[error("nftables: {0}")]
    Nft(#[from] nft::NftError),
}

/// The outcome of one pass: ports whose interface is in place, and per-port failures.
#[derive(Debug, Default)]
pub struct Pass {
    pub realized: BTreeSet<String>,
    pub failed: BTreeMap<String, String>,
}

pub struct Engine {
    netlink: Netlink,
    nft: Nft,
    underlay_ip: IpAddr,
    underlay_ifindex: Option<u32>,
    vxlan_port: u16,
    /// What the last successful pass applied, so unchanged things are not re-read.
    applied_rules: Option<(Ruleset, nft::Compiled)>,
    applied_ports: HashMap<String, PortDesired>,
    applied_remote: HashMap<String, RemoteL2>,
    /// Links as last read (a full dump now and then, lookups by name between).
    known: HashMap<String, Link>,
    full_dump_at: Option<std::time::Instant>,
    /// Link names the last pass wanted: one gone means a full dump and a sweep.
    last_wanted: BTreeSet<String>,
}

/// How often a pass re-reads every link even when nothing is to be removed.
const FULL_RESYNC: std::time::Duration = std::time::Duration::from_secs(30);

/// Links kuryr made, by name and kind: a `tap*` that is a veth, a `vxlan-*` that is
/// a vxlan device, a `brq*` that is a bridge. (Nova's `tap*` are tun devices.)
fn is_ours(l: &Link) -> bool {
    let kind = l.kind.as_deref();
    (l.name.starts_with("tap") && kind == Some("veth"))
        || (l.name.starts_with("vxlan-") && kind == Some("vxlan"))
        || (l.name.starts_with("brq") && kind == Some("bridge"))
}

impl Engine {
    pub fn new(
        netlink: Netlink,
        nft: Nft,
        underlay_ip: IpAddr,
        underlay_ifindex: Option<u32>,
        vxlan_port: u16,
    ) -> Engine {
        Engine {
            netlink,
            nft,
            underlay_ip,
            underlay_ifindex,
            vxlan_port,
            applied_rules: None,
            applied_ports: HashMap::new(),
            applied_remote: HashMap::new(),
            known: HashMap::new(),
            full_dump_at: None,
            last_wanted: BTreeSet::new(),
        }
    }

    /// One convergence pass. Per-port problems (a namespace that is gone, a name
    /// taken inside it) fail that port only; host-wide ones fail the pass.
    pub async fn converge(&mut self, d: &Desired) -> Result<Pass, EngineError> {
        let started = std::time::Instant::now();
        let mut pass = Pass::default();
        let wanted: BTreeSet<String> = d
            .ports
            .values()
            .map(|p| p.tap.clone())
            .chain(d.networks.values().map(|n| n.bridge.clone()))
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
        let full = self.full_dump_at.is_none_or(|t| t.elapsed() > FULL_RESYNC)
            || !self.last_wanted.is_subset(&wanted);
        if full {
            self.known = self
                .netlink
                .links()
                .await?
                .into_iter()
                .map(|l| (l.name.clone(), l))
                .collect();
            self.full_dump_at = Some(std::time::Instant::now());
        } else {
            for name in &wanted {
                if !self.known.contains_key(name)
                    && let Some(l) = self.netlink.link_by_name(name).await?
                {
                    self.known.insert(name.clone(), l);
                }
            }
        }
        let links = self.known.clone();

        // Networks: bridge, then its uplink (vxlan or a host interface).
        let mut bridges: HashMap<String, u32> = HashMap::new();
        for n in d.networks.values() {
            let br = self.ensure_network(n, &links).await?;
            bridges.insert(n.id.clone(), br);
        }

        let t_links = started.elapsed();
        // Security groups before ports come up, so a new port is filtered from its
        // first packet.
        self.apply_rules(&d.ruleset).await?;
        let t_rules = started.elapsed();

        for p in d.ports.values() {
            let Some(&bridge) = bridges.get(&p.network_id) else {
                continue;
            };
            let in_place_before = self.applied_ports.get(&p.id) == Some(p);
            match self.ensure_port(p, bridge, links.get(&p.tap)).await {
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
                self.known.remove(&p.tap);
            }
        }

        for n in d.networks.values() {
            if let NetKind::Vxlan { vni } = n.kind
                && let Err(e) = self.ensure_remote(n, vni).await
            {
                tracing::warn!(network = %n.id, error = %e, "l2 population failed; retried next pass");
                self.applied_remote.remove(&n.id);
            }
        }

        // Remove what kuryr made and nothing wants (only on a fresh dump): taps first
        // (that also removes the container end), then vxlan devices, then bridges.
        // The dump from the start of the pass is enough: whatever this pass created
        // is wanted.
        for prefix in ["tap", "vxlan-", "brq"] {
            for l in links.values() {
                if full && l.name.starts_with(prefix) && is_ours(l) && !wanted.contains(&l.name) {
                    tracing::info!(link = %l.name, "removing a link no port owns");
                    self.netlink.delete_link(l.index).await?;
                    self.known.remove(&l.name);
                }
            }
        }
        self.last_wanted = wanted;
        self.applied_ports.retain(|id, _| d.ports.contains_key(id));
        self.applied_remote
            .retain(|id, _| d.networks.contains_key(id));
        tracing::debug!(
            links_ms = t_links.as_secs_f64() * 1e3,
            rules_ms = (t_rules - t_links).as_secs_f64() * 1e3,
            rest_ms = (started.elapsed() - t_rules).as_secs_f64() * 1e3,
            ports = d.ports.len(),
            "convergence pass"
        );
        Ok(pass)
    }

    async fn ensure_network(
        &mut self,
        n: &NetDesired,
        links: &HashMap<String, Link>,
    ) -> Result<u32, EngineError> {
        let bridge = match links.get(&n.bridge) {
            Some(l) if l.up && l.mtu == n.mtu && l.kind.as_deref() == Some("bridge") => l.index,
            _ => {
                self.known.remove(&n.bridge);
                self.netlink.ensure_bridge(&n.bridge, n.mtu).await?.index
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
                    self.applied_remote.remove(&n.id);
                    self.known.remove(&name);
                    self.netlink
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
                    self.known.remove(interface);
                    self.netlink.set_master(l.index, bridge).await?;
                    self.netlink.set_up(l.index).await?;
                }
                None => tracing::warn!(interface = %interface, network = %n.id,
                    "flat network's host interface does not exist"),
            },
            NetKind::Local => {}
        }
        Ok(bridge)
    }

    async fn ensure_port(
        &mut self,
        p: &PortDesired,
        bridge: u32,
        tap: Option<&Link>,
    ) -> Result<(), String> {
        let in_place = tap.is_some_and(|l| l.master == Some(bridge) && l.up);
        if in_place && self.applied_ports.get(&p.id) == Some(p) {
            return Ok(());
        }
        let ns = if p.handoff {
            NetNs::current()
        } else {
            NetNs::open(&p.netns)
        }
        .map_err(|e| format!("container namespace {}: {e}", p.netns.display()))?;
        match tap {
            None => {
                self.netlink
                    .create_veth(&VethSpec {
                        host_name: p.tap.clone(),
                        master: Some(bridge),
                        mtu: p.mtu,
                        peer_name: p.ifname.clone(),
                        peer_ns: &ns,
                        peer_mac: Some(p.mac),
                    })
                    .await
                    .map_err(|e| {
                        if e.is_exists() {
                            format!(
                                "an interface named {} already exists in {}",
                                p.ifname,
                                p.netns.display()
                            )
                        } else {
                            format!("creating the veth: {e}")
                        }
                    })?;
            }
            Some(l) => {
                if l.master != Some(bridge) {
                    self.netlink
                        .set_master(l.index, bridge)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                if l.mtu != p.mtu {
                    self.netlink
                        .set_mtu(l.index, p.mtu)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                if !l.up {
                    self.netlink
                        .set_up(l.index)
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        if p.handoff {
            // Docker moves the container end into its sandbox and configures it.
            self.applied_ports.insert(p.id.clone(), p.clone());
            return Ok(());
        }
        let inside = Netlink::in_namespace(&ns).map_err(|e| e.to_string())?;
        if tap.is_some()
            && let Ok(Some(l)) = inside.link_by_name(&p.ifname).await
            && l.mtu != p.mtu
        {
            inside
                .set_mtu(l.index, p.mtu)
                .await
                .map_err(|e| e.to_string())?;
        }
        inside
            .configure_interface(&p.ifname, &p.addresses, &p.routes)
            .await
            .map_err(|e| format!("configuring {} in {}: {e}", p.ifname, p.netns.display()))?;
        self.applied_ports.insert(p.id.clone(), p.clone());
        Ok(())
    }

    /// Static FDB and neighbour entries on the network's vxlan device, converged
    /// against what the kernel holds.
    async fn ensure_remote(&mut self, n: &NetDesired, vni: u32) -> Result<(), EngineError> {
        if self.applied_remote.get(&n.id) == Some(&n.remote) {
            return Ok(());
        }
        let Some(dev) = self.netlink.link_by_name(&vxlan_name(vni)).await? else {
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
            .netlink
            .fdb(dev.index)
            .await?
            .into_iter()
            .map(|e| (e.mac, e.dst))
            .collect();
        for (mac, dst) in want_fdb.difference(&have_fdb) {
            self.netlink.fdb_append(dev.index, *mac, *dst).await?;
        }
        for (mac, dst) in have_fdb.difference(&want_fdb) {
            self.netlink.fdb_delete(dev.index, *mac, *dst).await?;
        }
        let have_neigh: BTreeMap<IpAddr, MacAddr> = self
            .netlink
            .neighbours(dev.index)
            .await?
            .into_iter()
            .map(|n| (n.ip, n.mac))
            .collect();
        for (ip, mac) in &n.remote.neighbours {
            if have_neigh.get(ip) != Some(mac) {
                self.netlink.neighbour_replace(dev.index, *ip, *mac).await?;
            }
        }
        for ip in have_neigh.keys() {
            if !n.remote.neighbours.contains_key(ip) {
                self.netlink.neighbour_delete(dev.index, *ip).await?;
            }
        }
        self.applied_remote.insert(n.id.clone(), n.remote.clone());
        Ok(())
    }

    /// The first pass replaces kuryr's tables whole (one atomic transaction, which
    /// leaves conntrack and so established flows alone); later passes apply a diff.
    async fn apply_rules(&mut self, want: &Ruleset) -> Result<(), EngineError> {
        let (script, compiled) = match &self.applied_rules {
            Some((old, _)) if old == want => return Ok(()),
            None => (Some(nft::render(want)), nft::compile(want)),
            Some((_, old)) => {
                let new = nft::compile(want);
                (nft::diff_compiled(old, &new), new)
            }
        };
        if let Some(script) = script {
            tracing::trace!(%script, "nft transaction");
            if let Err(e) = self.nft.apply(&script).await {
                // Next pass starts from a full replace: the kernel state is unknown.
                self.applied_rules = None;
                return Err(e.into());
            }
        }
        self.applied_rules = Some((want.clone(), compiled));
        Ok(())
    }

    /// Removes everything kuryr made on this host (`kuryr agent --cleanup`).
    pub async fn remove_all(&mut self) -> Result<(), EngineError> {
        self.converge(&Desired::default()).await?;
        self.nft.remove_all().await?;
        self.applied_rules = None;
        Ok(())
    }
}
