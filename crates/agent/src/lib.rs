//! The kuryr host agent. It follows the server's view of this host (a streaming
//! watch), keeps the local bindings (port → container namespace), and converges
//! the kernel to both: bridges, vxlan devices, veths, FDB/neighbour entries and the
//! nftables security groups. Binding requests arrive on a local unix socket.
//!
//! Nothing here tears the dataplane down when the agent stops or loses the server:
//! containers keep their connectivity, and the next start converges from what exists.

pub mod desired;
pub mod engine;
pub mod local;
pub mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use kuryr_client::{Client, ClientError, HostMirror};
use kuryr_dataplane::netlink::Netlink;
use kuryr_dataplane::netns::NetNs;
use kuryr_dataplane::nft::Nft;
use kuryr_model::{AgentReport, Port};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::desired::Inputs;
use crate::engine::Engine;
use crate::state::{Binding, LocalState, PublishedPort, StateFile};

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
}

/// Errors of the local API, each with the HTTP status the socket answers with.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The server or the kernel failed; retrying may help.
    #[error("{0}")]
    Unavailable(String),
}

impl AgentError {
    pub fn status(&self) -> u16 {
        match self {
            AgentError::BadRequest(_) => 400,
            AgentError::NotFound(_) => 404,
            AgentError::Conflict(_) => 409,
            AgentError::Unavailable(_) => 503,
        }
    }
}

fn from_client(what: &str, e: ClientError) -> AgentError {
    match e {
        ClientError::NotFound { message, .. } => AgentError::NotFound(message),
        ClientError::Conflict { message, .. } => AgentError::Conflict(message),
        ClientError::Api {
            status, message, ..
        } if (400..500).contains(&status) => AgentError::BadRequest(message),
        other => AgentError::Unavailable(format!("{what}: {other}")),
    }
}

/// What a bind returns: enough for the Docker plugin and the CNI to answer their callers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BindResult {
    pub port_id: String,
    pub network_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub mac_address: String,
    /// Addresses with their subnet prefix (`10.0.0.5/24`).
    pub addresses: Vec<String>,
    pub gateways: Vec<String>,
    pub routes: Vec<RouteView>,
    pub mtu: u32,
    pub tap: String,
    pub bridge: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteView {
    pub destination: String,
    pub gateway: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BindingView {
    pub port_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub realized: bool,
    pub waiting: Option<String>,
}

/// What a finished convergence pass did, and from which mirror generation.
#[derive(Debug, Clone, Default)]
struct PassReport {
    generation: u64,
    ports: BTreeMap<String, desired::PortDesired>,
    /// port → why it is not realized.
    problems: BTreeMap<String, String>,
    /// Ports whose interface is in place.
    realized: BTreeSet<String>,
}

pub struct Agent {
    cfg: AgentConfig,
    client: Client,
    state_file: StateFile,
    state: Mutex<LocalState>,
    mirror: RwLock<HostMirror>,
    /// Bumped after every applied frame; binds wait on it for their port.
    mirror_changed: tokio::sync::watch::Sender<u64>,
    engine: tokio::sync::Mutex<Engine>,
    converge_wanted: tokio::sync::Notify,
    /// The outcome of each finished pass, for binds waiting on one.
    passes: tokio::sync::watch::Sender<PassReport>,
    /// Ports this process has reported ACTIVE (or seen ACTIVE on the server).
    reported: Mutex<BTreeSet<String>>,
    started_at: i64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

impl Agent {
    pub async fn new(cfg: AgentConfig, client: Client) -> anyhow::Result<Arc<Agent>> {
        enable_bridge_netfilter().await?;
        // Fail at start, clearly, rather than on every convergence pass.
        match tokio::process::Command::new(&cfg.nft_binary)
            .arg("--version")
            .output()
            .await
        {
            Ok(out) if out.status.success() => {}
            _ => anyhow::bail!(
                "cannot run {} (security groups need it): install Debian's nftables or pass --nft",
                cfg.nft_binary.display()
            ),
        }
        let state_file = StateFile::new(&cfg.state_dir);
        let state = state_file.load()?;
        let netlink = Netlink::current()?;
        let underlay_ifindex = match &cfg.underlay_interface {
            Some(name) => Some(
                netlink
                    .link_by_name(name)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("underlay interface {name} does not exist"))?
                    .index,
            ),
            None => None,
        };
        let engine = Engine::new(
            netlink,
            Nft::with_binary(&cfg.nft_binary),
            cfg.underlay_ip,
            underlay_ifindex,
            cfg.vxlan_port,
            cfg.network_linger,
        );
        let (mirror_changed, _) = tokio::sync::watch::channel(0);
        let (passes, _) = tokio::sync::watch::channel(PassReport::default());
        Ok(Arc::new(Agent {
            cfg,
            client,
            state_file,
            state: Mutex::new(state),
            mirror: RwLock::new(HostMirror::new()),
            mirror_changed,
            engine: tokio::sync::Mutex::new(engine),
            converge_wanted: tokio::sync::Notify::new(),
            passes,
            reported: Mutex::new(BTreeSet::new()),
            started_at: unix_now(),
        }))
    }

    pub fn config(&self) -> &AgentConfig {
        &self.cfg
    }

    /// The server connection (shared with the Docker plugin and the CNI daemon).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A port of this host's view and the subnets of its addresses, as the watch
    /// delivered them (no server round trip); `None` if the view does not hold it.
    pub fn view_port(&self, port_id: &str) -> Option<(Port, Vec<kuryr_model::Subnet>)> {
        let m = self.mirror.read().unwrap_or_else(|p| p.into_inner());
        let port = m.ports.get(port_id)?.clone();
        let mut subnets = Vec::new();
        for f in &port.fixed_ips {
            if let Some(s) = m.subnets.get(&f.subnet_id)
                && !subnets.iter().any(|x: &kuryr_model::Subnet| x.id == s.id)
            {
                subnets.push(s.clone());
            }
        }
        Some((port, subnets))
    }

    /// Runs the agent: heartbeats, the watch, convergence and the local API, until
    /// `shutdown` resolves. The dataplane stays as it is on return.
    pub async fn run(
        self: Arc<Self>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tokio::spawn(self.clone().heartbeat_loop());
        tokio::spawn(self.clone().watch_loop());
        tokio::spawn(self.clone().converge_loop());
        local::serve(self.clone(), shutdown).await
    }

    async fn heartbeat_loop(self: Arc<Self>) {
        let mut failing = false;
        loop {
            let report = AgentReport {
                host: self.cfg.host.clone(),
                tunneling_ip: self.cfg.underlay_ip.to_string(),
                interface_mappings: self.cfg.interface_mappings.clone(),
                started_at_unix: self.started_at,
                devices: self.passes.borrow().realized.len() as u64,
            };
            match self.client.heartbeat(&report).await {
                Ok(_) if failing => {
                    tracing::info!("heartbeat accepted again");
                    failing = false;
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    tracing::warn!(error = %e, "heartbeat failed; the dataplane is unaffected, retrying");
                    failing = true;
                }
                Err(_) => {}
            }
            tokio::time::sleep(self.cfg.report_interval).await;
        }
    }

    /// Follows the server's view of this host, reconnecting with backoff and
    /// resuming from the last revision seen.
    async fn watch_loop(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(200);
        // The server sends a keepalive at least every few seconds; silence this long
        // means the connection is dead even if TCP has not noticed.
        let silence = Duration::from_secs(45);
        loop {
            let since = self
                .mirror
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .revision();
            match self.client.watch_host(&self.cfg.host, since).await {
                Ok(mut stream) => {
                    tracing::info!(since, "watching this host's view");
                    loop {
                        match tokio::time::timeout(silence, stream.next()).await {
                            Ok(Some(Ok(frame))) => {
                                backoff = Duration::from_millis(200);
                                let delta = {
                                    let mut mirror =
                                        self.mirror.write().unwrap_or_else(|p| p.into_inner());
                                    let delta = mirror.apply(frame);
                                    // Bumped under the lock: whoever reads the mirror
                                    // reads the generation that matches it.
                                    self.mirror_changed.send_modify(|n| *n += 1);
                                    delta
                                };
                                if delta.missing != Default::default() {
                                    tracing::warn!("watch resumed with gaps; starting over from 0");
                                    self.mirror
                                        .write()
                                        .unwrap_or_else(|p| p.into_inner())
                                        .reset();
                                    break;
                                }
                                self.forget_removed_ports(&delta.removed.ports);
                                if !delta.is_empty() || delta.resync {
                                    self.converge_wanted.notify_one();
                                }
                            }
                            Ok(Some(Err(e))) => {
                                tracing::warn!(error = %e, "watch stream failed; reconnecting");
                                break;
                            }
                            Ok(None) => {
                                tracing::warn!("watch stream ended; reconnecting");
                                break;
                            }
                            Err(_) => {
                                tracing::warn!("watch silent for {silence:?}; reconnecting");
                                break;
                            }
                        }
                    }
                }
                Err(ClientError::NotFound { .. }) => {
                    tracing::error!(
                        "the server has no host watch (/v2.0/kuryr/hosts/...): is it a kuryr server?"
                    );
                    backoff = Duration::from_secs(30);
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot reach the server; the dataplane keeps running");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    /// A bound port that left this host's view was deleted or moved to another host:
    /// its binding goes (the next pass removes its interface).
    fn forget_removed_ports(&self, removed: &[String]) {
        let mut state = lock(&self.state);
        let before = state.bindings.len();
        state.bindings.retain(|id, _| !removed.contains(id));
        if state.bindings.len() != before {
            tracing::info!(
                count = before - state.bindings.len(),
                "bindings of ports deleted or moved away released"
            );
            if let Err(e) = self.save_state(&state) {
                tracing::warn!(error = %e, "could not save the agent state");
            }
        }
    }

    async fn converge_loop(self: Arc<Self>) {
        loop {
            let due = self.engine.lock().await.next_wakeup();
            match due {
                Some(at) => tokio::select! {
                    _ = self.converge_wanted.notified() => {}
                    _ = tokio::time::sleep_until(at.into()) => {}
                },
                None => self.converge_wanted.notified().await,
            }
            if let Err(e) = self.converge_once().await {
                tracing::warn!(error = %e, "convergence failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                self.converge_wanted.notify_one();
            }
        }
    }

    /// One pass: desired state from the mirror and the bindings, applied by the
    /// engine, then port status reported to the server. Does nothing until the
    /// mirror holds a complete view (never tear down from an empty one).
    pub async fn converge_once(&self) -> Result<desired::Desired, AgentError> {
        let mut engine = self.engine.lock().await;
        let (desired, generation) = {
            let mirror = self.mirror.read().unwrap_or_else(|p| p.into_inner());
            // Read under the mirror lock, where the watch bumps it with each frame.
            let generation = *self.mirror_changed.borrow();
            if !mirror.is_synced() {
                return Err(AgentError::Unavailable(
                    "no complete view from the server yet".into(),
                ));
            }
            let mut state = lock(&self.state);
            let zones_before = state.zones.clone();
            let d = desired::compute(Inputs {
                host: &self.cfg.host,
                view: &mirror,
                state: &mut state,
                interface_mappings: &self.cfg.interface_mappings,
            });
            if state.zones != zones_before
                && let Err(e) = self.state_file.save(&state)
            {
                return Err(AgentError::Unavailable(e.to_string()));
            }
            (d, generation)
        };
        let pass = engine
            .converge(&desired)
            .await
            .map_err(|e| AgentError::Unavailable(e.to_string()))?;
        drop(engine);
        for (port, why) in pass.failed.iter().chain(desired.waiting.iter()) {
            tracing::warn!(port = %port, reason = %why, "port not realized");
        }
        lock(&self.reported).retain(|p| pass.realized.contains(p));
        for port in &pass.realized {
            if let Some(d) = desired.ports.get(port) {
                self.report_active(port, &d.bridge).await;
            }
        }
        self.passes.send_replace(PassReport {
            generation,
            ports: desired.ports.clone(),
            problems: pass
                .failed
                .into_iter()
                .chain(desired.waiting.clone())
                .collect(),
            realized: pass.realized,
        });
        Ok(desired)
    }

    /// Tells the server the port is `ACTIVE`, bound with vif_type `bridge` (once).
    async fn report_active(&self, port_id: &str, bridge: &str) {
        if lock(&self.reported).contains(port_id) {
            return;
        }
        let current = self
            .mirror
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .ports
            .get(port_id)
            .cloned();
        let done = current
            .as_ref()
            .is_some_and(|p| p.status == "ACTIVE" && p.vif_type == "bridge");
        if !done {
            let attrs = json!({
                "status": "ACTIVE",
                "binding:vif_type": "bridge",
                "binding:vif_details": {
                    "bridge_name": bridge,
                    "port_filter": true,
                    "connectivity": "l2",
                },
            });
            if let Err(e) = self.client.update_port(port_id, attrs).await {
                tracing::warn!(port = %port_id, error = %e, "could not report the port ACTIVE; will retry");
                return;
            }
        }
        lock(&self.reported).insert(port_id.to_string());
    }

    /// Waits until the mirror shows `port_id` on this host at `revision_number` or later.
    /// Returns the mirror generation the port was seen at.
    async fn wait_for_port(&self, port_id: &str, revision_number: u64) -> Result<u64, AgentError> {
        let mut changed = self.mirror_changed.subscribe();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            {
                let m = self.mirror.read().unwrap_or_else(|p| p.into_inner());
                if m.is_synced()
                    && m.ports.get(port_id).is_some_and(|p| {
                        p.host_id == self.cfg.host && p.revision_number >= revision_number
                    })
                {
                    return Ok(*self.mirror_changed.borrow());
                }
            }
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                return Err(AgentError::Unavailable(format!(
                    "the server's watch did not deliver port {port_id} to this host within 15 s"
                )));
            }
        }
    }

    fn save_state(&self, state: &LocalState) -> Result<(), AgentError> {
        self.state_file
            .save(state)
            .map_err(|e| AgentError::Unavailable(e.to_string()))
    }

    /// Binds a port into a namespace: records the binding, claims the port for this
    /// host on the server, realizes it and reports it `ACTIVE`. The same binding
    /// again is a no-op; a different one is a conflict. On failure nothing is left.
    pub async fn bind(
        &self,
        port_id: &str,
        netns: PathBuf,
        ifname: String,
    ) -> Result<BindResult, AgentError> {
        if let Err(e) = NetNs::open(&netns) {
            return Err(AgentError::BadRequest(format!(
                "{} is not a network namespace: {e}",
                netns.display()
            )));
        }
        let binding = Binding {
            netns,
            ifname,
            ..Default::default()
        };
        self.bind_with(port_id, binding, None).await
    }

    /// Binds a port Docker's way: the container end is created in this agent's own
    /// namespace as `ifname` (bare: MAC and MTU) for Docker to move into its sandbox.
    /// `port` is the port as the caller just read or wrote it (no second read).
    pub async fn bind_handoff(
        &self,
        port: &Port,
        ifname: String,
    ) -> Result<BindResult, AgentError> {
        let binding = Binding {
            netns: PathBuf::from("/proc/self/ns/net"),
            ifname,
            handoff: true,
            published: Vec::new(),
        };
        self.bind_with(&port.id, binding, Some(port)).await
    }

    async fn bind_with(
        &self,
        port_id: &str,
        binding: Binding,
        known: Option<&Port>,
    ) -> Result<BindResult, AgentError> {
        if !kuryr_model::input::is_uuid(port_id) {
            return Err(AgentError::BadRequest(format!(
                "{port_id:?} is not a port id (a UUID)"
            )));
        }
        if !valid_ifname(&binding.ifname) {
            return Err(AgentError::BadRequest(format!(
                "invalid interface name {:?}: 1 to 15 printable characters, no '/' or ':'",
                binding.ifname
            )));
        }
        let existing = lock(&self.state).bindings.get(port_id).cloned();
        if let Some(b) = &existing
            && !b.same_place(&binding)
        {
            return Err(AgentError::Conflict(format!(
                "port {port_id} is already bound on this host to {} in {}",
                b.ifname,
                b.netns.display()
            )));
        }
        let port = match known {
            Some(p) => p.clone(),
            None => self
                .client
                .get_port(port_id)
                .await
                .map_err(|e| from_client("reading the port", e))?,
        };
        if !port.host_id.is_empty() && port.host_id != self.cfg.host {
            return Err(AgentError::Conflict(format!(
                "port {port_id} is bound to host {}",
                port.host_id
            )));
        }
        // Checked again where it is recorded: a concurrent bind of the same port may
        // have recorded its own while this one read the port.
        let recorded = {
            let mut state = lock(&self.state);
            match state.bindings.get(port_id) {
                Some(b) if !b.same_place(&binding) => {
                    return Err(AgentError::Conflict(format!(
                        "port {port_id} is already bound on this host to {} in {}",
                        b.ifname,
                        b.netns.display()
                    )));
                }
                Some(_) => false,
                None => {
                    state.bindings.insert(port_id.to_string(), binding);
                    self.save_state(&state)?;
                    // A new input of the passes: only a pass that starts after this
                    // counts (the port may already be in the view, claimed when made).
                    self.mirror_changed.send_modify(|n| *n += 1);
                    true
                }
            }
        };
        match self.realize_bound(&port).await {
            Ok(r) => Ok(r),
            Err(e) => {
                if recorded {
                    tracing::warn!(port = %port_id, error = %e, "bind failed; undoing it");
                    let _ = self.unbind(port_id).await;
                }
                Err(e)
            }
        }
    }

    async fn realize_bound(&self, port: &Port) -> Result<BindResult, AgentError> {
        let started = std::time::Instant::now();
        let claimed = if port.host_id == self.cfg.host {
            port.clone()
        } else {
            self.client
                .update_port(&port.id, json!({"binding:host_id": self.cfg.host}))
                .await
                .map_err(|e| from_client("claiming the port for this host", e))?
        };
        let t_claim = started.elapsed();
        let seen = self
            .wait_for_port(&port.id, claimed.revision_number)
            .await?;
        let t_watch = started.elapsed();
        // The convergence loop realizes the port (it was woken by the same frame):
        // wait for a pass that started from a mirror holding it, rather than running
        // a second pass of our own.
        let mut passes = self.passes.subscribe();
        self.converge_wanted.notify_one();
        let report = tokio::time::timeout(
            Duration::from_secs(15),
            passes.wait_for(|r| r.generation >= seen),
        )
        .await
        .map_err(|_| {
            AgentError::Unavailable(format!(
                "port {} was not realized within 15 s (see the agent log)",
                port.id
            ))
        })?
        .map_err(|_| AgentError::Unavailable("the agent is shutting down".into()))?
        .clone();
        tracing::info!(
            port = %port.id,
            claim_ms = t_claim.as_secs_f64() * 1e3,
            watch_ms = (t_watch - t_claim).as_secs_f64() * 1e3,
            converge_ms = (started.elapsed() - t_watch).as_secs_f64() * 1e3,
            "port bound"
        );
        if let Some(why) = report.problems.get(&port.id) {
            return Err(AgentError::Unavailable(format!(
                "port {} cannot be realized: {why}",
                port.id
            )));
        }
        let d = report
            .ports
            .get(&port.id)
            .ok_or_else(|| AgentError::Unavailable(format!("port {} was not realized", port.id)))?;
        if !lock(&self.reported).contains(&port.id) {
            return Err(AgentError::Unavailable(format!(
                "port {} is up but the server did not take its ACTIVE status",
                port.id
            )));
        }
        Ok(BindResult {
            port_id: port.id.clone(),
            network_id: d.network_id.clone(),
            netns: d.netns.clone(),
            ifname: d.ifname.clone(),
            mac_address: d.mac.to_string(),
            addresses: d.addresses.iter().map(|a| a.to_string()).collect(),
            gateways: d
                .routes
                .iter()
                .filter(|r| r.dest.prefix_len() == 0)
                .filter_map(|r| r.gateway.map(|g| g.to_string()))
                .collect(),
            routes: d
                .routes
                .iter()
                .map(|r| RouteView {
                    destination: r.dest.to_string(),
                    gateway: r.gateway.map(|g| g.to_string()),
                })
                .collect(),
            mtu: d.mtu,
            tap: d.tap.clone(),
            bridge: d.bridge.clone(),
        })
    }

    /// Removes a binding: the interface goes, and the server is told the port is no
    /// longer on this host. Unbinding a port that is not bound here is a no-op.
    pub async fn unbind(&self, port_id: &str) -> Result<bool, AgentError> {
        let removed = {
            let mut state = lock(&self.state);
            let removed = state.bindings.remove(port_id).is_some();
            if removed {
                self.save_state(&state)?;
            }
            removed
        };
        if !removed {
            return Ok(false);
        }
        if let Err(e) = self.converge_once().await {
            tracing::warn!(error = %e, "convergence after unbind failed; retried later");
            self.converge_wanted.notify_one();
        }
        self.unclaim(port_id).await?;
        Ok(true)
    }

    /// Tells the server a port is no longer bound on this host (`binding:host_id`
    /// cleared, `DOWN`, unbound), without touching the kernel. A port that is gone, or
    /// that this agent may not change (bound to another host under a host-scoped
    /// credential), is left alone.
    pub async fn unclaim(&self, port_id: &str) -> Result<(), AgentError> {
        let attrs = json!({
            "binding:host_id": "",
            "status": "DOWN",
            "binding:vif_type": "unbound",
            "binding:vif_details": {},
        });
        match self.client.update_port(port_id, attrs).await {
            Ok(_) | Err(ClientError::NotFound { .. }) => Ok(()),
            Err(ClientError::Api { status: 403, .. }) => {
                tracing::warn!(port = %port_id, "not unbinding a port this agent may not change");
                Ok(())
            }
            Err(e) => Err(from_client("releasing the port on the server", e)),
        }
    }

    /// Replaces the host ports published to a bound port, and returns once a
    /// convergence pass has applied them.
    pub async fn set_published(
        &self,
        port_id: &str,
        published: Vec<PublishedPort>,
    ) -> Result<(), AgentError> {
        {
            let mut state = lock(&self.state);
            let taken: Vec<&PublishedPort> = state
                .bindings
                .iter()
                .filter(|(id, _)| id.as_str() != port_id)
                .flat_map(|(_, b)| b.published.iter())
                .collect();
            if let Some(clash) = published.iter().find(|p| {
                taken.iter().any(|t| {
                    t.protocol == p.protocol
                        && t.host_port == p.host_port
                        && (t.host_ip.is_none() || p.host_ip.is_none() || t.host_ip == p.host_ip)
                })
            }) {
                return Err(AgentError::Conflict(format!(
                    "host port {}/{} is already published on this host",
                    clash.host_port, clash.protocol
                )));
            }
            let Some(b) = state.bindings.get_mut(port_id) else {
                return Err(AgentError::NotFound(format!(
                    "port {port_id} is not bound on this host"
                )));
            };
            if b.published == published {
                return Ok(());
            }
            b.published = published;
            self.save_state(&state)?;
        }
        self.converge_once().await.map(|_| ())
    }

    /// Forgets a binding without waiting for the kernel: the interface goes with the
    /// next pass, which this wakes. For callers that settle the port on the server
    /// themselves (Docker's DeleteEndpoint, then ReleaseAddress deletes the port).
    /// Returns whether the port was bound here.
    pub fn release(&self, port_id: &str) -> Result<bool, AgentError> {
        let removed = {
            let mut state = lock(&self.state);
            let removed = state.bindings.remove(port_id).is_some();
            if removed {
                self.save_state(&state)?;
            }
            removed
        };
        if removed {
            self.converge_wanted.notify_one();
        }
        Ok(removed)
    }

    /// Whether a port is bound on this host.
    pub fn is_bound(&self, port_id: &str) -> bool {
        lock(&self.state).bindings.contains_key(port_id)
    }

    pub fn bindings(&self) -> Vec<BindingView> {
        let state = lock(&self.state);
        let last = self.passes.borrow();
        state
            .bindings
            .iter()
            .map(|(id, b)| BindingView {
                port_id: id.clone(),
                netns: b.netns.clone(),
                ifname: b.ifname.clone(),
                realized: last.realized.contains(id),
                waiting: last.problems.get(id).cloned(),
            })
            .collect()
    }

    pub fn health(&self) -> serde_json::Value {
        let m = self.mirror.read().unwrap_or_else(|p| p.into_inner());
        json!({
            "host": self.cfg.host,
            "synced": m.is_synced(),
            "revision": m.revision(),
            "bindings": lock(&self.state).bindings.len(),
            "realized": self.passes.borrow().realized.len(),
        })
    }
}

/// Removes everything kuryr made on this host (bridges, vxlan devices, veths, nft
/// tables) and forgets the bindings: `kuryr agent --cleanup`, for decommissioning a
/// host. Needs no server.
pub async fn cleanup(cfg: &AgentConfig) -> anyhow::Result<()> {
    let mut engine = Engine::new(
        Netlink::current()?,
        Nft::with_binary(&cfg.nft_binary),
        cfg.underlay_ip,
        None,
        cfg.vxlan_port,
        Duration::ZERO,
    );
    engine.remove_all().await?;
    StateFile::new(&cfg.state_dir).save(&LocalState::default())?;
    Ok(())
}

/// Security groups are stateful through br_netfilter: bridged IP traffic must go
/// through the inet hooks (and conntrack) of this namespace. These sysctls are per
/// network namespace; the module may need loading first.
async fn enable_bridge_netfilter() -> anyhow::Result<()> {
    const SYSCTLS: [&str; 2] = [
        "/proc/sys/net/bridge/bridge-nf-call-iptables",
        "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
    ];
    if !std::path::Path::new(SYSCTLS[0]).exists() {
        let status = tokio::process::Command::new("modprobe")
            .arg("br_netfilter")
            .status()
            .await;
        if !matches!(status, Ok(s) if s.success()) {
            anyhow::bail!(
                "br_netfilter is not available (modprobe br_netfilter failed): stateful \
                 security groups on bridged traffic need it"
            );
        }
    }
    for path in SYSCTLS {
        if std::fs::read_to_string(path)
            .map(|v| v.trim() == "1")
            .unwrap_or(false)
        {
            continue;
        }
        std::fs::write(path, "1").map_err(|e| anyhow::anyhow!("setting {path} to 1: {e}"))?;
        tracing::info!(
            sysctl = path,
            "enabled so that bridged traffic is filtered statefully"
        );
    }
    Ok(())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
