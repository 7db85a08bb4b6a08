//! The kuryr host agent. It follows the server's view of this host (a streaming
//! watch), keeps the local bindings (port → container namespace), and converges
//! the kernel to both: bridges, vxlan devices, veths, FDB/neighbour entries and the
//! nftables security groups. Binding requests arrive on a local unix socket.
//!
//! Nothing here tears the dataplane down when the agent stops or loses the server:
//! containers keep their connectivity, and the next start converges from what exists.

mod bind;
pub mod cni;
mod config;
pub mod desired;
pub mod engine;
mod error;
mod host;
pub mod kernel;
pub mod lb;
pub mod local;
mod loops;
pub mod metrics;
pub mod routers;
pub mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};

use kuryr_client::{Client, HostMirror};
use kuryr_dataplane::netlink::Netlink;
use kuryr_dataplane::nft::Nft;
use kuryr_model::Port;
use serde_json::json;

use crate::engine::Engine;
use crate::kernel::NftFirewall;
use crate::state::{LocalState, StateFile};

pub use bind::{BindResult, BindingView, RouteView};
pub use config::AgentConfig;
use error::from_client;
pub use error::{AgentError, StartError};
pub use host::cleanup;
use host::enable_bridge_netfilter;

/// What a finished convergence pass did, and from which mirror generation.
#[derive(Debug, Clone, Default)]
struct PassReport {
    generation: u64,
    ports: BTreeMap<String, Arc<desired::PortDesired>>,
    /// port → why it is not realized.
    problems: BTreeMap<String, String>,
    /// Ports whose interface is in place.
    realized: BTreeSet<String>,
    /// Whether the pass has also told the server about its ports' status. A pass is
    /// published twice: once its interfaces are in place (a CNI ADD answers then:
    /// a pod's start does not wait on a Neutron round trip), and again once its
    /// ports were reported ACTIVE (Docker's binds, whose callers read the status).
    reported: bool,
}

pub struct Agent {
    cfg: AgentConfig,
    client: Client,
    state_file: Arc<StateFile>,
    state: Arc<Mutex<LocalState>>,
    mirror: RwLock<HostMirror>,
    /// Bumped after every applied frame; binds wait on it for their port.
    mirror_changed: tokio::sync::watch::Sender<u64>,
    engine: tokio::sync::Mutex<Engine>,
    /// What passes derived from unchanged ports (used under the engine lock).
    memo: Mutex<desired::Memo>,
    converge_wanted: tokio::sync::Notify,
    /// The outcome of each finished pass, for binds waiting on one.
    passes: tokio::sync::watch::Sender<PassReport>,
    /// Realized ports whose ACTIVE status the server has, or was sent: the port's
    /// revision in the mirror then. A newer revision that is not ACTIVE (someone set
    /// it DOWN) is reported again.
    reported: Mutex<BTreeMap<String, u64>>,
    /// The mirror generation of the last frame and when that frame arrived.
    frame_seen: Mutex<(u64, std::time::Instant)>,
    started_at: i64,
    metrics: metrics::Metrics,
    /// Health checks of the load-balancer members this host watches, and their
    /// state changes (taken by the report loop).
    health: kuryr_dataplane::probe::Monitor,
    health_events: Mutex<Option<HealthEvents>>,
    /// The checks last given to `health`.
    checks: Mutex<BTreeMap<String, kuryr_dataplane::probe::Target>>,
    /// The plugins' own credentials (a project member's), for the ports a
    /// standalone CNI ADD makes; the agent's when none were given.
    plugin_client: std::sync::OnceLock<Client>,
    /// One CNI request at a time per container: a DEL that overtook the ADD it
    /// undoes (a runtime giving up on a sandbox) would find nothing to remove and
    /// leave the ADD's binding behind.
    cni_containers: cni::ContainerLocks,
}

type HealthEvents = tokio::sync::mpsc::UnboundedReceiver<(String, kuryr_dataplane::probe::Health)>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Agent {
    /// An input of the passes changed (a frame applied, a binding recorded or
    /// forgotten): a pass that starts after this sees it, and the convergence loop
    /// skips only wake-ups for nothing newer than its last pass.
    fn inputs_changed(&self) {
        self.mirror_changed.send_modify(|n| *n += 1);
    }

    pub async fn new(cfg: AgentConfig, client: Client) -> Result<Arc<Agent>, StartError> {
        enable_bridge_netfilter().await?;
        // Fail at start, clearly, rather than on every convergence pass.
        match tokio::process::Command::new(&cfg.nft_binary)
            .arg("--version")
            .output()
            .await
        {
            Ok(out) if out.status.success() => {}
            _ => return Err(StartError::NoNft(cfg.nft_binary.clone())),
        }
        // Router namespaces' NAT tables use the same binary.
        kuryr_dataplane::router::set_nft_binary(&cfg.nft_binary);
        let state_file = StateFile::new(&cfg.state_dir);
        let state = state_file.load()?;
        let netlink = Netlink::current()?;
        let underlay_ifindex = match &cfg.underlay_interface {
            Some(name) => Some(
                netlink
                    .link_by_name(name)
                    .await?
                    .ok_or_else(|| StartError::NoUnderlay(name.clone()))?
                    .index,
            ),
            None => None,
        };
        let engine = Engine::new(
            netlink,
            NftFirewall::new(Nft::with_binary(&cfg.nft_binary)),
            cfg.underlay_ip,
            underlay_ifindex,
            cfg.vxlan_port,
            cfg.network_linger,
        )
        .router_prefix(&cfg.router_prefix);
        let (mirror_changed, _) = tokio::sync::watch::channel(0);
        let (passes, _) = tokio::sync::watch::channel(PassReport::default());
        let (health, health_events) = kuryr_dataplane::probe::Monitor::new();
        Ok(Arc::new(Agent {
            health,
            health_events: Mutex::new(Some(health_events)),
            checks: Mutex::new(BTreeMap::new()),
            plugin_client: std::sync::OnceLock::new(),
            cni_containers: Default::default(),
            cfg,
            client,
            state_file: Arc::new(state_file),
            state: Arc::new(Mutex::new(state)),
            mirror: RwLock::new(HostMirror::new()),
            mirror_changed,
            engine: tokio::sync::Mutex::new(engine),
            memo: Mutex::new(desired::Memo::default()),
            converge_wanted: tokio::sync::Notify::new(),
            passes,
            metrics: metrics::Metrics::new(),
            reported: Mutex::new(BTreeMap::new()),
            frame_seen: Mutex::new((0, std::time::Instant::now())),
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

    /// Gives the plugins (standalone CNI) their own server connection, once.
    pub fn set_plugin_client(&self, client: Client) {
        let _ = self.plugin_client.set(client);
    }

    fn plugin_client(&self) -> &Client {
        self.plugin_client.get().unwrap_or(&self.client)
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
    ) -> Result<(), StartError> {
        tokio::spawn(self.clone().heartbeat_loop());
        tokio::spawn(self.clone().watch_loop());
        tokio::spawn(self.clone().converge_loop());
        if let Some(events) = lock(&self.health_events).take() {
            tokio::spawn(self.clone().lb_report_loop(events));
        }
        local::serve(self.clone(), shutdown).await
    }

    fn save_state(&self, state: &LocalState) -> Result<(), AgentError> {
        Ok(self.state_file.save(state)?)
    }

    /// The agent's metrics in Prometheus text.
    pub fn metrics_text(&self) -> Result<String, std::fmt::Error> {
        self.metrics
            .ports_bound
            .set(lock(&self.state).bindings.len() as i64);
        self.metrics.encode()
    }

    /// Resolves once the agent's view has synced with the server (what it serves from
    /// then on reflects the server's state).
    pub async fn wait_synced(&self) {
        let mut passes = self.passes.subscribe();
        loop {
            if self
                .mirror
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .is_synced()
            {
                return;
            }
            // Every frame the watch applies ends in a pass.
            if passes.changed().await.is_err() {
                return;
            }
        }
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

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
