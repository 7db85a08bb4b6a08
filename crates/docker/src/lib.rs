//! Docker's libnetwork plugin `kuryr`: a remote network driver and an IPAM driver on
//! one socket, mapping Docker networks, pools and endpoints onto Neutron exactly as
//! kuryr-libnetwork does (same names, tags and options), so that deployments switch
//! without changing a command. Endpoints are bound through the in-process agent.
//!
//! Mapping (kuryr-libnetwork's):
//! - Docker network → Neutron network `kuryr-net-<id[:8]>` tagged
//!   `kuryr.net.uuid.lh:<id[:32]>` and `kuryr.net.uuid.uh:<id[32:]>` (an adopted one
//!   also `kuryr.net.existing:<id[:12]>`);
//! - IPAM pool → subnet pool `kuryrPool-<cidr>` (PoolID = its id); subnet
//!   `kuryr-subnet-<cidr>` tagged with the pool id;
//! - address → port (`kuryr:container`), endpoint → that port with `device_id` = endpoint
//!   id and the endpoint's two id halves as tags; the agent then claims it for this
//!   host (`binding:host_id`, which Neutron lets only admins and services set, so the
//!   plugin, with a project member's credential, never sets it).

mod driver;
mod ipam;
pub mod protocol;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use kuryr_agent::{Agent, AgentError};
use kuryr_client::{Client, ClientError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

pub const PLUGIN_NAME: &str = "kuryr";
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/kuryr.sock";

// Names and tags shared with kuryr-libnetwork.
pub const DEVICE_OWNER: &str = "kuryr:container";
pub const NET_TAG_LH: &str = "kuryr.net.uuid.lh:";
pub const NET_TAG_UH: &str = "kuryr.net.uuid.uh:";
pub const NET_EXISTING_TAG: &str = "kuryr.net.existing:";
pub const PORT_EXISTING_TAG: &str = "kuryr.port.existing";
pub const POOL_EXISTING_TAG: &str = "kuryr.subnetpool.existing";
pub const POOL_PREFIX: &str = "kuryrPool-";
pub const SUBNET_PREFIX: &str = "kuryr-subnet-";
pub const NET_PREFIX: &str = "kuryr-net-";
pub const UNBOUND_PORT_NAME: &str = "kuryr-unbound-port";
pub const ADDRESS_SPACE: &str = "no_address_space";

/// `GetCapabilities` scope: `local` (networks exist per Docker host, the default) or
/// `global` (a swarm's networks, allocated once by the manager).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Local,
    Global,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Local => "local",
            Scope::Global => "global",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Scope, String> {
        match s {
            "local" => Ok(Scope::Local),
            "global" => Ok(Scope::Global),
            other => Err(format!("scope must be local or global, not {other:?}")),
        }
    }
}

/// Where the plugin listens.
#[derive(Debug, Clone)]
pub enum Listen {
    /// A unix socket Docker finds by name (`/run/docker/plugins/kuryr.sock`).
    Unix(PathBuf),
    /// TCP, announced to Docker by a spec file holding the URL
    /// (`/usr/lib/docker/plugins/kuryr/kuryr.spec`).
    Tcp {
        addr: SocketAddr,
        spec_file: PathBuf,
    },
}

/// A plugin error: Docker shows `Err` to the user, prefixed with the call's name.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Failed(String),
}

impl PluginError {
    fn status(&self) -> StatusCode {
        match self {
            PluginError::BadRequest(_) => StatusCode::BAD_REQUEST,
            // Not 404: Docker takes a 404 from some calls as "not implemented, fine".
            PluginError::NotFound(_) | PluginError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            PluginError::Conflict(_) => StatusCode::CONFLICT,
        }
    }

    fn neutron(what: &str, e: ClientError) -> PluginError {
        match e {
            ClientError::NotFound { message, .. } => {
                PluginError::NotFound(format!("{what}: {message}"))
            }
            ClientError::Conflict { message, .. } => {
                PluginError::Conflict(format!("{what}: {message}"))
            }
            ClientError::Api {
                status, message, ..
            } if (400..500).contains(&status) => {
                PluginError::BadRequest(format!("{what}: {message}"))
            }
            other => PluginError::Failed(format!("{what}: {other}")),
        }
    }

    fn agent(what: &str, e: AgentError) -> PluginError {
        match e {
            AgentError::BadRequest(m) => PluginError::BadRequest(format!("{what}: {m}")),
            AgentError::NotFound(m) => PluginError::NotFound(format!("{what}: {m}")),
            AgentError::Conflict(m) => PluginError::Conflict(format!("{what}: {m}")),
            AgentError::Unavailable(m) => PluginError::Failed(format!("{what}: {m}")),
            e @ (AgentError::Dataplane(_) | AgentError::State(_)) => {
                PluginError::Failed(format!("{what}: {e}"))
            }
        }
    }
}

pub type PluginResult<T> = Result<T, PluginError>;

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, protocol::CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

impl IntoResponse for PluginError {
    fn into_response(self) -> Response {
        reply(self.status(), json!({ "Err": self.to_string() }))
    }
}

/// What the plugin remembers between calls to save Neutron round trips. Everything
/// here can be found again in Neutron (by tags and addresses) after a restart.
#[derive(Default)]
struct Cache {
    /// Docker network id → Neutron network id.
    networks: HashMap<String, String>,
    /// Pool id → its prefix.
    pools: HashMap<String, ipnet::IpNet>,
    /// Docker endpoint id → Neutron port id.
    endpoints: HashMap<String, String>,
}

pub struct Plugin {
    client: Client,
    agent: Arc<Agent>,
    host: String,
    scope: Scope,
    cache: Mutex<Cache>,
    /// Serializes changes to Neutron networks, pools and subnets (Docker may create
    /// two networks at once; both could otherwise make the same pool).
    network_ops: tokio::sync::Mutex<()>,
}

impl Plugin {
    /// The plugin, using the agent's credentials for Neutron.
    pub fn new(agent: Arc<Agent>, scope: Scope) -> Arc<Plugin> {
        let client = agent.client().clone();
        Self::with_client(agent, client, scope)
    }

    /// The plugin with its own Neutron client: it makes networks, subnets and ports
    /// with it, while the agent claims and binds the ports with its own (a
    /// host-scoped agent credential may do only that).
    pub fn with_client(agent: Arc<Agent>, client: Client, scope: Scope) -> Arc<Plugin> {
        Arc::new(Plugin {
            client,
            host: agent.config().host.clone(),
            agent,
            scope,
            cache: Mutex::new(Cache::default()),
            network_ops: tokio::sync::Mutex::new(()),
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `aa:bb:cc:dd:ee:ff`, as Docker writes MACs.
fn valid_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Parses a request body; an empty body reads as `{}` (Docker sends none to the
/// calls without arguments).
fn parse<T: DeserializeOwned>(call: &str, body: &Bytes) -> PluginResult<T> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|e| PluginError::BadRequest(format!("{call}: invalid request: {e}")))
}

fn ok<T: Serialize>(body: T) -> Response {
    reply(
        StatusCode::OK,
        serde_json::to_value(body).unwrap_or_else(|_| json!({})),
    )
}

macro_rules! handler {
    ($name:ident, $call:literal, $req:ty, $method:ident) => {
        async fn $name(State(p): State<Arc<Plugin>>, body: Bytes) -> Response {
            let started = std::time::Instant::now();
            let result = match parse::<$req>($call, &body) {
                Ok(req) => p.$method(req).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(v) => {
                    tracing::debug!(call = $call, ms = started.elapsed().as_secs_f64() * 1e3, "docker call");
                    ok(v)
                }
                Err(e) => {
                    tracing::warn!(call = $call, error = %e, "docker call failed");
                    e.into_response()
                }
            }
        }
    };
}

handler!(activate, "Plugin.Activate", Value, activate);
handler!(
    capabilities,
    "NetworkDriver.GetCapabilities",
    Value,
    capabilities
);
handler!(
    create_network,
    "NetworkDriver.CreateNetwork",
    protocol::CreateNetwork,
    create_network
);
handler!(
    delete_network,
    "NetworkDriver.DeleteNetwork",
    protocol::NetworkOnly,
    delete_network
);
handler!(
    create_endpoint,
    "NetworkDriver.CreateEndpoint",
    protocol::CreateEndpoint,
    create_endpoint
);
handler!(
    endpoint_info,
    "NetworkDriver.EndpointOperInfo",
    protocol::EndpointRef,
    endpoint_info
);
handler!(
    delete_endpoint,
    "NetworkDriver.DeleteEndpoint",
    protocol::EndpointRef,
    delete_endpoint
);
handler!(join, "NetworkDriver.Join", protocol::Join, join);
handler!(leave, "NetworkDriver.Leave", protocol::EndpointRef, leave);
handler!(
    discover,
    "NetworkDriver.DiscoverNew",
    protocol::Discovery,
    discover
);
handler!(
    undiscover,
    "NetworkDriver.DiscoverDelete",
    protocol::Discovery,
    discover
);
handler!(
    allocate_network,
    "NetworkDriver.AllocateNetwork",
    protocol::AllocateNetwork,
    allocate_network
);
handler!(
    free_network,
    "NetworkDriver.FreeNetwork",
    protocol::NetworkOnly,
    free_network
);
handler!(
    program_external,
    "NetworkDriver.ProgramExternalConnectivity",
    protocol::ExternalConnectivity,
    program_external
);
handler!(
    revoke_external,
    "NetworkDriver.RevokeExternalConnectivity",
    protocol::EndpointRef,
    revoke_external
);
handler!(
    ipam_capabilities,
    "IpamDriver.GetCapabilities",
    Value,
    ipam_capabilities
);
handler!(
    address_spaces,
    "IpamDriver.GetDefaultAddressSpaces",
    Value,
    address_spaces
);
handler!(
    request_pool,
    "IpamDriver.RequestPool",
    protocol::RequestPool,
    request_pool
);
handler!(
    release_pool,
    "IpamDriver.ReleasePool",
    protocol::ReleasePool,
    release_pool
);
handler!(
    request_address,
    "IpamDriver.RequestAddress",
    protocol::RequestAddress,
    request_address
);
handler!(
    release_address,
    "IpamDriver.ReleaseAddress",
    protocol::ReleaseAddress,
    release_address
);

async fn unknown(uri: axum::http::Uri) -> Response {
    reply(
        StatusCode::NOT_FOUND,
        json!({ "Err": format!("{} is not an endpoint of the kuryr plugin", uri.path()) }),
    )
}

pub fn router(plugin: Arc<Plugin>) -> Router {
    Router::new()
        .route("/Plugin.Activate", post(activate))
        .route("/NetworkDriver.GetCapabilities", post(capabilities))
        .route("/NetworkDriver.CreateNetwork", post(create_network))
        .route("/NetworkDriver.DeleteNetwork", post(delete_network))
        .route("/NetworkDriver.CreateEndpoint", post(create_endpoint))
        .route("/NetworkDriver.EndpointOperInfo", post(endpoint_info))
        .route("/NetworkDriver.DeleteEndpoint", post(delete_endpoint))
        .route("/NetworkDriver.Join", post(join))
        .route("/NetworkDriver.Leave", post(leave))
        .route("/NetworkDriver.DiscoverNew", post(discover))
        .route("/NetworkDriver.DiscoverDelete", post(undiscover))
        .route("/NetworkDriver.AllocateNetwork", post(allocate_network))
        .route("/NetworkDriver.FreeNetwork", post(free_network))
        .route(
            "/NetworkDriver.ProgramExternalConnectivity",
            post(program_external),
        )
        .route(
            "/NetworkDriver.RevokeExternalConnectivity",
            post(revoke_external),
        )
        .route("/IpamDriver.GetCapabilities", post(ipam_capabilities))
        .route("/IpamDriver.GetDefaultAddressSpaces", post(address_spaces))
        .route("/IpamDriver.RequestPool", post(request_pool))
        .route("/IpamDriver.ReleasePool", post(release_pool))
        .route("/IpamDriver.RequestAddress", post(request_address))
        .route("/IpamDriver.ReleaseAddress", post(release_address))
        .fallback(unknown)
        .with_state(plugin)
}

/// The plugin's listener, bound: made before the agent starts, so that a socket or
/// address another process holds fails `kuryr agent` at once instead of at shutdown.
pub enum Bound {
    Unix(tokio::net::UnixListener, PathBuf),
    Tcp(tokio::net::TcpListener, PathBuf),
}

/// Why the plugin could not listen, or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Socket(#[from] kuryr_agent::StartError),
    #[error("the Docker plugin cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the plugin spec file {}: {source}", path.display())]
    Spec {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("serving the Docker plugin API: {0}")]
    Serve(#[source] std::io::Error),
}

/// Binds where the plugin listens (and writes the TCP spec file Docker reads).
pub async fn bind(listen: Listen) -> Result<Bound, ServeError> {
    match listen {
        Listen::Unix(path) => {
            let listener = kuryr_agent::local::listen_unix(
                &path,
                "another Docker plugin; stop it or pass --docker-socket",
            )
            .await?;
            Ok(Bound::Unix(listener, path))
        }
        Listen::Tcp { addr, spec_file } => {
            let listen = |source| ServeError::Listen { addr, source };
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(listen)?;
            let url = format!("http://{}\n", listener.local_addr().map_err(listen)?);
            let spec = |source| ServeError::Spec {
                path: spec_file.clone(),
                source,
            };
            if let Some(dir) = spec_file.parent() {
                std::fs::create_dir_all(dir).map_err(spec)?;
            }
            std::fs::write(&spec_file, url.as_bytes()).map_err(spec)?;
            Ok(Bound::Tcp(listener, spec_file))
        }
    }
}

/// Serves Docker's plugin API on a bound listener until `shutdown`.
pub async fn serve(
    plugin: Arc<Plugin>,
    bound: Bound,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let app = router(plugin);
    match bound {
        Bound::Unix(listener, path) => {
            tracing::info!(socket = %path.display(), "Docker plugin kuryr ready (NetworkDriver, IpamDriver)");
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await;
            let _ = std::fs::remove_file(&path);
            served.map_err(ServeError::Serve)
        }
        Bound::Tcp(listener, spec_file) => {
            let url = listener.local_addr().map_err(ServeError::Serve)?;
            tracing::info!(url = %format!("http://{url}"), spec = %spec_file.display(), "Docker plugin kuryr ready (NetworkDriver, IpamDriver)");
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(ServeError::Serve)
        }
    }
}

impl Plugin {
    async fn activate(&self, _: Value) -> PluginResult<protocol::Activate> {
        Ok(protocol::Activate {
            implements: vec!["NetworkDriver", "IpamDriver"],
        })
    }

    async fn capabilities(&self, _: Value) -> PluginResult<protocol::Capabilities> {
        Ok(protocol::Capabilities {
            scope: self.scope.as_str().into(),
            connectivity_scope: self.scope.as_str().into(),
        })
    }

    async fn ipam_capabilities(&self, _: Value) -> PluginResult<protocol::IpamCapabilities> {
        // Docker then always picks the MAC and tells it to RequestAddress, so the
        // Neutron port is made with the MAC the container will have.
        Ok(protocol::IpamCapabilities {
            requires_mac_address: true,
            requires_request_replay: false,
        })
    }

    async fn address_spaces(&self, _: Value) -> PluginResult<protocol::AddressSpaces> {
        Ok(protocol::AddressSpaces {
            local_default_address_space: ADDRESS_SPACE.into(),
            global_default_address_space: ADDRESS_SPACE.into(),
        })
    }

    async fn discover(&self, _: protocol::Discovery) -> PluginResult<Value> {
        Ok(json!({}))
    }

    async fn allocate_network(&self, req: protocol::AllocateNetwork) -> PluginResult<Value> {
        // Global scope: the manager allocates once; the options travel to every
        // node's CreateNetwork unchanged.
        driver::check_docker_id("NetworkID", &req.network_id)?;
        Ok(json!({ "Options": req.options.unwrap_or_default() }))
    }

    async fn free_network(&self, req: protocol::NetworkOnly) -> PluginResult<Value> {
        driver::check_docker_id("NetworkID", &req.network_id)?;
        Ok(json!({}))
    }
}
