//! `kuryr`: container networking on the OpenStack Neutron model, in one binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use kuryr_api::{AuthMode, IdentityConfig, NetworkingConfig, ServerConfig};

mod agent_cmd;
mod cni_install;
mod controller_cmd;
mod credential_cmd;
mod store_cmd;
mod tls;

#[derive(Parser)]
#[command(
    name = "kuryr",
    version,
    about = "Container networking on the OpenStack Neutron model",
    long_about = "Container networking on the OpenStack Neutron model: networks, subnets, subnet pools, \
                  ports and security groups, served by a Neutron-compatible API that the `openstack` CLI \
                  and openstacksdk use unmodified."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server: Keystone v3 subset under /identity, Neutron v2.0 under /networking.
    Server(ServerArgs),
    /// Run an all-in-one node (server on the embedded store + agent on this host) and print how to use it.
    Up(Box<UpArgs>),
    /// Run the host agent: realizes the ports bound to this host (veth, bridge, VXLAN, nftables).
    Agent(agent_cmd::AgentArgs),
    /// Run the Kubernetes controller: pods' ports from per-node pools, namespace
    /// networks, NetworkPolicies as security groups.
    Controller(controller_cmd::ControllerArgs),
    /// Bind ports into network namespaces on this host, through the local agent.
    Port {
        #[command(subcommand)]
        command: agent_cmd::PortCommand,
    },
    /// Make application credentials for agents (host-scoped) and Docker plugins
    /// (project member), with admin credentials (OS_* variables or --os-cloud).
    Credential {
        #[command(subcommand)]
        command: credential_cmd::CredentialCommand,
    },
    /// The server's store: copy it between the embedded file and etcd.
    Store {
        #[command(subcommand)]
        command: store_cmd::StoreCommand,
    },
}

#[derive(Args, Clone)]
struct ServerArgs {
    /// Address and port to listen on.
    #[arg(long, default_value = "127.0.0.1:9696", env = "KURYR_LISTEN")]
    listen: SocketAddr,

    /// Directory of the embedded store (one redb file, fsync on every commit).
    #[arg(long, default_value = "/var/lib/kuryr", env = "KURYR_DATA_DIR")]
    data_dir: PathBuf,

    #[command(flatten)]
    store: store_cmd::StoreArgs,

    /// Password of the `admin` user created on first start (default: generated and printed once).
    #[arg(long, env = "KURYR_ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: Option<String>,

    /// `keystone`: built-in identity with tokens; `noauth`: development mode, project from X-Project-Id.
    #[arg(long, default_value = "keystone", value_parser = ["keystone", "noauth"])]
    auth: String,

    /// Lifetime of issued tokens, in seconds.
    #[arg(long, default_value_t = 3600)]
    token_ttl: u64,

    /// URL clients reach this server at (goes into the service catalog and links).
    /// Default: http://<listen address>, or https:// with --tls-cert.
    #[arg(long, env = "KURYR_PUBLIC_URL")]
    public_url: Option<String>,

    /// Serve HTTPS with this PEM certificate chain (server certificate first).
    #[arg(long, env = "KURYR_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(long, env = "KURYR_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Region name in the service catalog.
    #[arg(long, default_value = "RegionOne")]
    region: String,

    /// MTU of the underlay network; vxlan networks get 50 bytes less.
    #[arg(long, default_value_t = 1500)]
    underlay_mtu: u32,

    /// VNI range for vxlan networks, as MIN:MAX.
    #[arg(long, default_value = "1:65535", value_parser = parse_range)]
    vni_range: (u32, u32),

    /// Largest request body accepted, in bytes (larger ones get 413).
    #[arg(long, default_value_t = kuryr_api::limits::DEFAULT_MAX_REQUEST_BODY)]
    max_request_body: usize,

    /// The most resources one bulk create may hold.
    #[arg(long, default_value_t = 1000)]
    max_bulk: usize,

    /// Quota of projects without their own, as RESOURCE=LIMIT (repeatable or comma
    /// separated; -1: unlimited), e.g. `router=100,floatingip=500` (Neutron's
    /// `[quotas] quota_router`, ...).
    #[arg(long, value_delimiter = ',', value_parser = parse_quota)]
    default_quota: Vec<(String, i64)>,

    /// Revisions of change history kept so that watchers can resume.
    #[arg(long, default_value_t = 100_000)]
    history: u64,

    /// Seconds without a heartbeat after which an agent is shown `alive: false`.
    #[arg(long, default_value_t = 30)]
    agent_down_time: u64,

    /// Seconds between keepalive frames on an idle host watch.
    #[arg(long, default_value_t = 10)]
    watch_keepalive: u64,

    #[command(flatten)]
    identity: IdentityArgs,
}

/// Limits and keys of the built-in identity service.
#[derive(Args, Clone)]
struct IdentityArgs {
    /// Password and secret checks (argon2, ~19 MiB each) running at once; more logins
    /// wait up to --login-wait-ms for a turn, then get 503 (default: the CPU count).
    #[arg(long)]
    login_concurrency: Option<usize>,

    /// Milliseconds a login waits for a turn before it is refused with 503.
    #[arg(long, default_value_t = 2000)]
    login_wait_ms: u64,

    /// Seconds after which a new token signing key replaces the current one (the old
    /// one still verifies its tokens until they expire); 0: only on request
    /// (POST /identity/v3/OS-KURYR/signing_keys).
    #[arg(long, default_value_t = 86400)]
    signing_key_rotation: u64,
}

impl IdentityArgs {
    fn login_limits(&self) -> kuryr_api::identity::LoginLimits {
        let mut l = kuryr_api::identity::LoginLimits::default();
        if let Some(n) = self.login_concurrency {
            l.concurrency = n.max(1);
            l.queue = n.max(1) * 16;
        }
        l.wait = Duration::from_millis(self.login_wait_ms);
        l
    }
}

#[derive(Args, Clone)]
struct UpArgs {
    #[command(flatten)]
    server: ServerArgs,

    /// This host's name for the agent (default: the hostname).
    #[arg(long)]
    host: Option<String>,

    /// The agent's underlay address (a single host needs no other than loopback).
    #[arg(long, default_value = "127.0.0.1")]
    underlay_ip: std::net::IpAddr,

    /// The agent's local API socket.
    #[arg(long, default_value = agent_cmd::DEFAULT_SOCKET, env = "KURYR_AGENT_SOCKET")]
    agent_socket: PathBuf,

    /// Run only the server, no agent on this host.
    #[arg(long)]
    no_agent: bool,

    /// With --tls-cert: the PEM CA bundle that verifies the server's certificate, for
    /// this host's agent and the OS_CACERT of admin-openrc.sh (default: system roots).
    #[arg(long)]
    os_cacert: Option<PathBuf>,

    #[command(flatten)]
    docker: agent_cmd::DockerArgs,
}

fn parse_quota(s: &str) -> Result<(String, i64), String> {
    let (name, limit) = s
        .split_once('=')
        .ok_or_else(|| format!("{s}: expected RESOURCE=LIMIT"))?;
    if !kuryr_model::Quota::NAMES.contains(&name) {
        return Err(format!(
            "{name}: not a quota resource (one of {})",
            kuryr_model::Quota::NAMES.join(", ")
        ));
    }
    let limit: i64 = limit
        .parse()
        .map_err(|_| format!("{limit}: not an integer"))?;
    if limit < -1 {
        return Err(format!("{limit}: a limit is -1 (unlimited) or more"));
    }
    Ok((name.to_string(), limit))
}

fn parse_range(s: &str) -> Result<(u32, u32), String> {
    let (a, b) = s.split_once(':').ok_or("expected MIN:MAX")?;
    let (a, b) = (
        a.parse::<u32>().map_err(|e| e.to_string())?,
        b.parse::<u32>().map_err(|e| e.to_string())?,
    );
    if a == 0 || a > b || b > 16_777_215 {
        return Err("need 1 <= MIN <= MAX <= 16777215".into());
    }
    Ok((a, b))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Server(args) => server(args, None).await,
            Command::Up(args) => {
                let server_args = args.server.clone();
                server(server_args, Some(*args)).await
            }
            Command::Agent(args) => agent_cmd::run_agent(args, None, None).await,
            Command::Controller(args) => controller_cmd::run(args).await,
            Command::Port { command } => agent_cmd::run_port(command).await,
            Command::Credential { command } => credential_cmd::run(command).await,
            Command::Store { command } => store_cmd::run(command).await,
        }
    })
}

/// The admin password `kuryr up` uses: given, or the one it generated before, or new.
fn up_password(args: &ServerArgs) -> anyhow::Result<String> {
    if let Some(p) = &args.admin_password {
        return Ok(p.clone());
    }
    let file = args.data_dir.join("admin-password");
    if let Ok(p) = std::fs::read_to_string(&file) {
        return Ok(p.trim().to_string());
    }
    use rand::Rng;
    let p: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(20)
        .map(char::from)
        .collect();
    write_private(&file, &p)?;
    Ok(p)
}

pub(crate) fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(content.as_bytes())?;
    Ok(())
}

async fn server(mut args: ServerArgs, up_args: Option<UpArgs>) -> anyhow::Result<()> {
    let up = up_args.is_some();
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data directory {}", args.data_dir.display()))?;
    if up {
        args.admin_password = Some(up_password(&args)?);
    }
    // Bind first: with port 0 the kernel picks the port, and the catalog must name it.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let bound = listener.local_addr()?;
    // Read before anything is served: a bad certificate or key stops the start.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls::server_config(cert, key)?),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let public_url = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{bound}"))
        .trim_end_matches('/')
        .to_string();
    // Serve at once: /healthz answers and /readyz says 503 while the store and the
    // indexes load; the application takes over when it is built.
    let startup = kuryr_api::observe::Startup::new();
    let loaded: Arc<std::sync::OnceLock<Arc<kuryr_api::Networking>>> = Default::default();
    // A store that failed a commit refuses writes until it is reopened: stop (non-zero)
    // so that the supervisor (systemd, Kubernetes) restarts kuryr on a reopened store,
    // rather than answering 503 forever.
    let (fatal_tx, fatal_rx) = tokio::sync::oneshot::channel::<()>();
    let store_failed = Arc::new(std::sync::Mutex::new(None::<String>));
    let serving = match tls {
        Some(config) => tokio::spawn(serve(
            tls::listener(listener, config),
            startup.router(),
            loaded.clone(),
            fatal_rx,
        )),
        None => tokio::spawn(serve(listener, startup.router(), loaded.clone(), fatal_rx)),
    };
    let auth_mode = match args.auth.as_str() {
        "noauth" => AuthMode::NoAuth,
        "keystone" => AuthMode::Keystone,
        other => bail!("unknown auth mode {other}"),
    };
    // /readyz says 503 while this waits for etcd.
    let store = store_cmd::open(&args.store, &args.data_dir, args.history).await?;
    let config = ServerConfig {
        identity: IdentityConfig {
            admin_password: args.admin_password.clone(),
            token_ttl: Duration::from_secs(args.token_ttl),
            public_url: public_url.clone(),
            region: args.region.clone(),
            login: args.identity.login_limits(),
            signing_key_rotation: (args.identity.signing_key_rotation > 0)
                .then(|| Duration::from_secs(args.identity.signing_key_rotation)),
        },
        networking: NetworkingConfig {
            public_url: public_url.clone(),
            underlay_mtu: args.underlay_mtu,
            vni_range: args.vni_range,
            auth_mode,
            agent_down_time: Duration::from_secs(args.agent_down_time),
            watch_keepalive: Duration::from_secs(args.watch_keepalive.max(1)),
            max_bulk: args.max_bulk,
            default_quota: {
                let mut q = kuryr_model::Quota::default();
                for (name, limit) in &args.default_quota {
                    if let Some(slot) = q.slot(name) {
                        *slot = *limit;
                    }
                }
                q
            },
        },
        max_request_body: args.max_request_body,
    };
    let mut fatal = store.fatal();
    let failed_seen = store_failed.clone();
    tokio::spawn(async move {
        if let Ok(reason) = fatal.wait_for(Option::is_some).await {
            let reason = reason.clone().unwrap_or_default();
            tracing::error!(%reason, "the store failed a commit; stopping so that kuryr is restarted on a reopened store");
            *failed_seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
            let _ = fatal_tx.send(());
        }
    });
    let app = kuryr_api::app(store, config).await?;
    let _ = loaded.set(app.networking.clone());
    startup.finish(app.router);
    tracing::info!(listen = %bound, data_dir = %args.data_dir.display(), "kuryr server ready");
    if let Some(u) = up_args.clone().filter(|u| !u.no_agent) {
        let agent_args = agent_cmd::AgentArgs {
            host: u.host,
            underlay_ip: u.underlay_ip,
            underlay_interface: None,
            vxlan_port: 4789,
            socket: u.agent_socket,
            state_dir: args.data_dir.join("agent"),
            report_interval: 10,
            physical_interface_mappings: Vec::new(),
            nft: "nft".into(),
            network_linger: 60,
            router_namespace_prefix: "kqr-".into(),
            cni_pod_port_wait: 30,
            os_cloud: None,
            os_cacert: None,
            cleanup: false,
            cni_bin_dir: None,
            cni_conf_dir: None,
            owner_daemonset: None,
            docker: u.docker,
        };
        let admin = kuryr_client::Credentials {
            auth: kuryr_client::AuthMethod::Password(kuryr_client::PasswordAuth {
                auth_url: format!("{public_url}/identity/v3"),
                user: kuryr_client::Ident::Name {
                    name: "admin".into(),
                    domain: kuryr_client::Domain::default(),
                },
                password: args.admin_password.clone().unwrap_or_default(),
                project: kuryr_client::Ident::Name {
                    name: "admin".into(),
                    domain: kuryr_client::Domain::default(),
                },
            }),
            region_name: Some(args.region.clone()),
            interface: "public".into(),
            cacert: u.os_cacert.clone(),
            insecure: false,
            network_endpoint: None,
        };
        tokio::spawn(async move {
            // The agent gets a credential scoped to this host and the plugin a project
            // member's, both made now through the API this process is about to serve:
            // the admin password stays with the operator.
            let run = async {
                let host = agent_args.config().host;
                let admin =
                    kuryr_client::Client::new(admin, kuryr_client::ClientConfig::default())?;
                let agent = credential_cmd::provision(
                    &admin,
                    &credential_cmd::Spec::agent(&host, "service"),
                )
                .await
                .context("making the agent's credential")?;
                let plugin =
                    if agent_args.docker.no_docker || agent_args.docker.credentials()?.is_some() {
                        None
                    } else {
                        let made = credential_cmd::provision(
                            &admin,
                            &credential_cmd::Spec::plugin(&host, "admin"),
                        )
                        .await
                        .context("making the Docker plugin's credential")?;
                        Some(made.credentials())
                    };
                agent_cmd::run_agent(agent_args, Some(agent.credentials()), plugin).await
            };
            if let Err(e) = run.await {
                tracing::error!(error = format!("{e:#}"), "the agent stopped");
            }
        });
    }
    if let Some(u) = &up_args {
        print_usage(&args, &public_url, u.os_cacert.as_deref())?;
    }
    serving.await.context("the HTTP server task")??;
    if let Some(reason) = store_failed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        anyhow::bail!("the store failed a commit ({reason}); restart kuryr to reopen it");
    }
    tracing::info!("kuryr server stopped");
    Ok(())
}

/// Serves `router` until a shutdown signal, then ends the host watches (they never end
/// by themselves, and graceful shutdown waits for open responses).
async fn serve<L>(
    listener: L,
    router: axum::Router,
    loaded: Arc<std::sync::OnceLock<Arc<kuryr_api::Networking>>>,
    store_failed: tokio::sync::oneshot::Receiver<()>,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = shutdown_signal() => {}
                Ok(()) = store_failed => {}
            }
            if let Some(networking) = loaded.get() {
                networking.close_watches();
            }
        })
        .await
}

fn print_usage(args: &ServerArgs, public_url: &str, cacert: Option<&Path>) -> anyhow::Result<()> {
    let password = args.admin_password.clone().unwrap_or_default();
    let openrc = format!(
        "export OS_AUTH_URL={public_url}/identity/v3\n\
         export OS_USERNAME=admin\n\
         export OS_PASSWORD={password}\n\
         export OS_PROJECT_NAME=admin\n\
         export OS_USER_DOMAIN_NAME=Default\n\
         export OS_PROJECT_DOMAIN_NAME=Default\n\
         export OS_IDENTITY_API_VERSION=3\n\
         export OS_REGION_NAME={}\n",
        args.region
    );
    let openrc = match cacert {
        Some(ca) => format!(
            "{openrc}export OS_CACERT={}\n",
            std::path::absolute(ca)?.display()
        ),
        None => openrc,
    };
    let rc_path = args.data_dir.join("admin-openrc.sh");
    write_private(&rc_path, &openrc)?;
    println!("kuryr is up.");
    println!("  Identity (Keystone v3): {public_url}/identity/v3");
    println!("  Networking (Neutron):   {public_url}/networking/v2.0");
    match args.store.store {
        store_cmd::Backend::Embedded => println!(
            "  Store:                  {}",
            store_cmd::embedded_path(&args.data_dir).display()
        ),
        store_cmd::Backend::Etcd => println!(
            "  Store:                  etcd {} (prefix {})",
            args.store.etcd.etcd_endpoints.join(","),
            args.store.etcd.etcd_prefix
        ),
    }
    println!();
    println!("Use it from another shell:");
    println!("  source {}", rc_path.display());
    println!("  openstack network list");
    println!();
    println!("Press Ctrl-C to stop.");
    Ok(())
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
