//! `kuryr agent` and `kuryr port bind|unbind|list`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use kuryr_agent::local::LocalClient;
use kuryr_agent::{Agent, AgentConfig};
use kuryr_client::{Client, ClientConfig, Credentials};

use crate::cni_install::CniFiles;

pub const DEFAULT_SOCKET: &str = "/run/kuryr/agent.sock";

#[derive(Args, Clone)]
pub struct AgentArgs {
    /// This host's name, as ports name it in `binding:host_id` (default: the hostname).
    #[arg(long)]
    pub host: Option<String>,

    /// The address other hosts send VXLAN traffic to.
    #[arg(long)]
    pub underlay_ip: IpAddr,

    /// Interface the vxlan devices are bound to (default: routed by the underlay address).
    #[arg(long, env = "KURYR_UNDERLAY_INTERFACE")]
    pub underlay_interface: Option<String>,

    /// UDP port of VXLAN.
    #[arg(long, default_value_t = 4789, env = "KURYR_VXLAN_PORT")]
    pub vxlan_port: u16,

    /// The agent's local API socket (`kuryr port bind` talks to it).
    #[arg(long, default_value = DEFAULT_SOCKET, env = "KURYR_AGENT_SOCKET")]
    pub socket: PathBuf,

    /// Where bindings are kept across restarts.
    #[arg(long, default_value = "/var/lib/kuryr/agent")]
    pub state_dir: PathBuf,

    /// Seconds between heartbeats.
    #[arg(long, default_value_t = 10, env = "KURYR_REPORT_INTERVAL")]
    pub report_interval: u64,

    /// Flat networks: PHYSNET:INTERFACE pairs, comma separated.
    #[arg(long, value_delimiter = ',', value_parser = parse_mapping,
          env = "KURYR_PHYSICAL_INTERFACE_MAPPINGS")]
    pub physical_interface_mappings: Vec<(String, String)>,

    /// The nft binary.
    #[arg(long, default_value = "nft")]
    pub nft: PathBuf,

    /// Credentials from this clouds.yaml entry instead of the OS_* variables.
    #[arg(long, env = "OS_CLOUD")]
    pub os_cloud: Option<String>,

    /// PEM CA bundle that verifies the server's certificate, instead of the system roots
    /// (overrides `cacert` of clouds.yaml).
    #[arg(long, env = "OS_CACERT")]
    pub os_cacert: Option<PathBuf>,

    /// Seconds a network's bridge and vxlan device stay after its last port on this
    /// host is gone (a port coming back soon reuses them).
    #[arg(long, default_value_t = 60)]
    pub network_linger: u64,

    /// Router namespaces are named PREFIX<router id>; namespaces with this prefix
    /// that no router here owns are removed. Give each agent its own when several
    /// share one machine's namespace names (a test lab).
    #[arg(long, default_value = "kqr-")]
    pub router_namespace_prefix: String,

    /// Seconds a CNI ADD of a Kubernetes pod waits for the controller to give the pod
    /// a port before it answers "try again later" (the runtime retries).
    #[arg(long, default_value_t = 30)]
    pub cni_pod_port_wait: u64,

    /// Remove everything kuryr made on this host (links, nft tables, bindings) and exit.
    #[arg(long)]
    pub cleanup: bool,

    /// Install the `kuryr-cni` plugin (shipped next to this executable) in this
    /// directory once the agent has synced; removed when kuryr is uninstalled.
    #[arg(long)]
    pub cni_bin_dir: Option<PathBuf>,

    /// Write the conflist (10-kuryr.conflist, naming --socket) in this directory once
    /// the agent has synced; removed when kuryr is uninstalled.
    #[arg(long)]
    pub cni_conf_dir: Option<PathBuf>,

    /// The DaemonSet this agent runs in (NAMESPACE/NAME, as kuryr's manifests install
    /// it; the in-cluster account reads it): when it is deleted (not updated), the agent
    /// removes everything it made on the node (as --cleanup), its CNI files and its
    /// state before it exits.
    #[arg(long)]
    pub owner_daemonset: Option<kuryr_controller::owner::DaemonSetName>,

    #[command(flatten)]
    pub docker: DockerArgs,
}

/// Docker's libnetwork plugin `kuryr` (network and IPAM driver), served by the agent.
#[derive(Args, Clone, Debug)]
pub struct DockerArgs {
    /// The plugin's unix socket (Docker finds plugins by name in /run/docker/plugins).
    #[arg(long, default_value = kuryr_docker::DEFAULT_SOCKET)]
    pub docker_socket: PathBuf,

    /// Serve the plugin on TCP instead (e.g. 127.0.0.1:23750, kuryr-libnetwork's),
    /// announced to Docker by --docker-spec-file.
    #[arg(long)]
    pub docker_listen: Option<std::net::SocketAddr>,

    /// The spec file written for --docker-listen.
    #[arg(long, default_value = "/usr/lib/docker/plugins/kuryr/kuryr.spec")]
    pub docker_spec_file: PathBuf,

    /// The network driver's scope: local, or global (swarm: AllocateNetwork/FreeNetwork).
    #[arg(long, default_value = "local", env = "CAPABILITY_SCOPE")]
    pub docker_scope: kuryr_docker::Scope,

    /// Do not serve the Docker plugin.
    #[arg(long)]
    pub no_docker: bool,

    /// The plugin's own Neutron credentials, from this clouds.yaml entry. Without it,
    /// `KURYR_DOCKER_OS_*` variables (OS_* with that prefix) when any is set, else the
    /// agent's credentials. A host-scoped agent credential cannot make networks: give
    /// the plugin a project member's (`kuryr credential plugin`), or an admin's for
    /// `neutron.net.shared`.
    #[arg(long, env = "KURYR_DOCKER_OS_CLOUD")]
    pub docker_os_cloud: Option<String>,
}

/// Prefix of the variables that hold the Docker plugin's own credentials.
const PLUGIN_ENV_PREFIX: &str = "KURYR_DOCKER_";

impl DockerArgs {
    /// The plugin's own credentials, if it was given any.
    pub fn credentials(&self) -> anyhow::Result<Option<Credentials>> {
        if let Some(cloud) = &self.docker_os_cloud {
            return Credentials::from_cloud(cloud)
                .map(Some)
                .with_context(|| format!("the Docker plugin's credentials (cloud {cloud:?})"));
        }
        let prefixed = std::env::vars().any(|(k, v)| {
            k.starts_with(PLUGIN_ENV_PREFIX)
                && k[PLUGIN_ENV_PREFIX.len()..].starts_with("OS_")
                && !v.is_empty()
        });
        if !prefixed {
            return Ok(None);
        }
        Credentials::from_vars(|k| std::env::var(format!("{PLUGIN_ENV_PREFIX}{k}")).ok())
            .map(Some)
            .context("the Docker plugin's credentials from KURYR_DOCKER_OS_* variables")
    }
}

fn parse_mapping(s: &str) -> Result<(String, String), String> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected PHYSNET:INTERFACE"))?;
    if a.is_empty() || b.is_empty() {
        return Err(format!("{s:?}: expected PHYSNET:INTERFACE"));
    }
    Ok((a.to_string(), b.to_string()))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

impl AgentArgs {
    pub fn config(&self) -> AgentConfig {
        AgentConfig {
            host: self.host.clone().unwrap_or_else(hostname),
            underlay_ip: self.underlay_ip,
            underlay_interface: self.underlay_interface.clone(),
            vxlan_port: self.vxlan_port,
            socket: self.socket.clone(),
            state_dir: self.state_dir.clone(),
            report_interval: Duration::from_secs(self.report_interval.max(1)),
            interface_mappings: self
                .physical_interface_mappings
                .iter()
                .cloned()
                .collect::<BTreeMap<_, _>>(),
            nft_binary: self.nft.clone(),
            network_linger: Duration::from_secs(self.network_linger),
            router_prefix: self.router_namespace_prefix.clone(),
            cni_pod_port_wait: Duration::from_secs(self.cni_pod_port_wait.max(1)),
        }
    }
}

/// Runs the agent (and the Docker plugin unless disabled). `credentials` override
/// the agent's OS_* / --os-cloud ones; `plugin_credentials` are the plugin's when it
/// was given none of its own (see [`DockerArgs::credentials`]).
pub async fn run_agent(
    args: AgentArgs,
    credentials: Option<Credentials>,
    plugin_credentials: Option<Credentials>,
) -> anyhow::Result<()> {
    let cfg = args.config();
    if args.cleanup {
        kuryr_agent::cleanup(&cfg).await?;
        println!("removed every kuryr link and nft table on this host");
        return Ok(());
    }
    let mut creds = match credentials {
        Some(c) => c,
        None => match &args.os_cloud {
            Some(cloud) => Credentials::from_cloud(cloud)
                .with_context(|| format!("credentials of cloud {cloud:?}"))?,
            None => Credentials::from_env().context("credentials from OS_* variables")?,
        },
    };
    if let Some(ca) = &args.os_cacert {
        creds.cacert = Some(ca.clone());
    }
    // No login yet: the agent must start (and keep the dataplane) while the server is down.
    let client = Client::new(creds, ClientConfig::default())?;
    tracing::info!(host = %cfg.host, underlay = %cfg.underlay_ip, "kuryr agent starting");
    // The plugin's socket first: one another process holds stops the agent now, with
    // the reason, rather than when the agent stops.
    let bound = if args.docker.no_docker {
        None
    } else {
        let listen = match args.docker.docker_listen {
            Some(addr) => kuryr_docker::Listen::Tcp {
                addr,
                spec_file: args.docker.docker_spec_file.clone(),
            },
            None => kuryr_docker::Listen::Unix(args.docker.docker_socket.clone()),
        };
        Some(kuryr_docker::bind(listen).await?)
    };
    // The workload's deletion is watched from the start (see kuryr_controller::owner),
    // but the agent does not wait for the apiserver: the dataplane comes first.
    let owner = Arc::new(std::sync::OnceLock::new());
    if let Some(d) = args.owner_daemonset.clone() {
        let slot = owner.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(500);
            loop {
                let watched = match crate::controller_cmd::kube_client(None).await {
                    Ok(kube) => kuryr_controller::owner::Owner::watch(kube, d.0.clone())
                        .await
                        .map_err(anyhow::Error::from),
                    Err(e) => Err(e),
                };
                match watched {
                    Ok(o) => {
                        let _ = slot.set(o);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(workload = %d.0, error = %format!("{e:#}"),
                            "cannot read the DaemonSet this agent runs in; trying again");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(30));
                    }
                }
            }
        });
    }
    let cni = CniFiles::new(
        args.cni_bin_dir.clone(),
        args.cni_conf_dir.clone(),
        cfg.socket.clone(),
    );
    let agent = Agent::new(cfg.clone(), client).await?;
    if cni.any() {
        let (a, files) = (agent.clone(), cni.clone());
        tokio::spawn(async move {
            a.wait_synced().await;
            if let Err(e) = files.install() {
                tracing::error!(error = %format!("{e:#}"), "cannot install the CNI plugin");
            }
        });
    }
    let served = serve(&args, agent, bound, plugin_credentials).await;
    if let Some(o) = owner.get()
        && o.is_gone().await
    {
        tracing::info!(workload = %o.workload(), "kuryr is being removed: removing what the agent made on this host");
        cni.uninstall()?;
        kuryr_agent::cleanup(&cfg).await?;
        match std::fs::remove_dir_all(&cfg.state_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context("removing the agent's state directory"),
        }
        tracing::info!("removed");
    }
    served
}

/// Serves the agent (and the Docker plugin when bound) until SIGTERM or ^C.
async fn serve(
    args: &AgentArgs,
    agent: Arc<Agent>,
    bound: Option<kuryr_docker::Bound>,
    plugin_credentials: Option<Credentials>,
) -> anyhow::Result<()> {
    // One signal stops both the agent's API and the plugin.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        crate::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // The plugins' own credentials: the Docker plugin's networks and ports, and the
    // ports of standalone CNI containers (Podman), are a project member's to make.
    let plugin_client = match args.docker.credentials()?.or(plugin_credentials) {
        Some(c) => Client::new(c, ClientConfig::default())?,
        None => {
            if !args.docker.no_docker
                && matches!(
                    agent.client().credentials().auth,
                    kuryr_client::AuthMethod::ApplicationCredential(_)
                )
            {
                tracing::warn!(
                    "the plugins use the agent's application credential; if it is \
                     host-scoped, Docker networks and standalone CNI ports cannot be made: \
                     give the plugins their own (--docker-os-cloud or KURYR_DOCKER_OS_* \
                     variables)"
                );
            }
            agent.client().clone()
        }
    };
    agent.set_plugin_client(plugin_client.clone());
    if let Some(bound) = bound {
        let plugin = kuryr_docker::Plugin::with_client(
            agent.clone(),
            plugin_client,
            args.docker.docker_scope,
        );
        let stop = stopped(stop_rx.clone());
        let docker = tokio::spawn(kuryr_docker::serve(plugin, bound, stop));
        let agent_run = agent.run(stopped(stop_rx));
        let (a, d) = tokio::join!(agent_run, docker);
        a?;
        return Ok(d.map_err(|e| anyhow::anyhow!("the Docker plugin task failed: {e}"))??);
    }
    Ok(agent.run(stopped(stop_rx)).await?)
}

#[derive(Subcommand)]
pub enum PortCommand {
    /// Bind a port into a network namespace on this host (through the local agent).
    Bind {
        /// Port id.
        port: String,
        /// The namespace: /run/netns/NAME or /proc/PID/ns/net.
        #[arg(long)]
        netns: PathBuf,
        /// Interface name inside the namespace.
        #[arg(long, default_value = "eth0")]
        ifname: String,
        #[arg(long, default_value = DEFAULT_SOCKET, env = "KURYR_AGENT_SOCKET")]
        socket: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a port's interface from this host and release its binding.
    Unbind {
        port: String,
        #[arg(long, default_value = DEFAULT_SOCKET, env = "KURYR_AGENT_SOCKET")]
        socket: PathBuf,
    },
    /// The ports bound on this host.
    List {
        #[arg(long, default_value = DEFAULT_SOCKET, env = "KURYR_AGENT_SOCKET")]
        socket: PathBuf,
    },
    /// The local agent's state; exits 1 unless it answers and has synced with the
    /// server (a probe for the agent's pod).
    Status {
        #[arg(long, default_value = DEFAULT_SOCKET, env = "KURYR_AGENT_SOCKET")]
        socket: PathBuf,
        /// Exit 0 when the agent answers, synced or not (a liveness probe: an agent
        /// waiting for an unreachable server is alive).
        #[arg(long)]
        answering: bool,
    },
}

pub async fn run_port(cmd: PortCommand) -> anyhow::Result<()> {
    match cmd {
        PortCommand::Bind {
            port,
            netns,
            ifname,
            socket,
            json,
        } => {
            let r = LocalClient::new(&socket)
                .bind(&port, &netns, &ifname)
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "port {} bound: {} in {} (mac {}, {}, mtu {})",
                    r.port_id,
                    r.ifname,
                    r.netns.display(),
                    r.mac_address,
                    r.addresses.join(", "),
                    r.mtu
                );
            }
        }
        PortCommand::Unbind { port, socket } => {
            if LocalClient::new(&socket).unbind(&port).await? {
                println!("port {port} unbound");
            } else {
                println!("port {port} was not bound on this host");
            }
        }
        PortCommand::List { socket } => {
            let v = LocalClient::new(&socket)
                .call("GET", "/v1/ports", None)
                .await?;
            println!("{}", serde_json::to_string_pretty(&v["bindings"])?);
        }
        PortCommand::Status { socket, answering } => {
            let v = LocalClient::new(&socket)
                .call("GET", "/v1/health", None)
                .await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            if !answering && v["synced"] != true {
                bail!("the agent has not synced with the server yet");
            }
        }
    }
    Ok(())
}
