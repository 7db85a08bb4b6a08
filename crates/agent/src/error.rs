//! The agent's error type: what the local API, the Docker plugin and the CNI answer.

use kuryr_client::ClientError;

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
    /// A convergence pass failed host-wide (retried by the agent).
    #[error("the dataplane: {0}")]
    Dataplane(#[from] crate::engine::EngineError),
    /// The bindings could not be saved.
    #[error("the agent's state: {0}")]
    State(#[from] crate::state::StateError),
}

impl AgentError {
    pub fn status(&self) -> u16 {
        match self {
            AgentError::BadRequest(_) => 400,
            AgentError::NotFound(_) => 404,
            AgentError::Conflict(_) => 409,
            AgentError::Unavailable(_) | AgentError::Dataplane(_) | AgentError::State(_) => 503,
        }
    }
}

/// Why the agent, its local API or its cleanup could not start or went down.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "br_netfilter is not available (modprobe br_netfilter failed): stateful security \
         groups on bridged traffic need it"
    )]
    NoBrNetfilter,
    #[error("setting {path} to 1: {source}")]
    Sysctl {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot run {} (security groups need it): install Debian's nftables or pass --nft",
        .0.display()
    )]
    NoNft(std::path::PathBuf),
    #[error("underlay interface {0} does not exist")]
    NoUnderlay(String),
    #[error("the agent's state: {0}")]
    State(#[from] crate::state::StateError),
    #[error("netlink: {0}")]
    Netlink(#[from] kuryr_dataplane::netlink::NetlinkError),
    #[error("the dataplane: {0}")]
    Dataplane(#[from] crate::engine::EngineError),
    #[error("{} is in use by {owner}", path.display())]
    SocketInUse {
        path: std::path::PathBuf,
        owner: String,
    },
    #[error("socket {}: {source}", path.display())]
    Socket {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("serving the local API: {0}")]
    Serve(#[source] std::io::Error),
}

pub(crate) fn from_client(what: &str, e: ClientError) -> AgentError {
    match e {
        ClientError::NotFound { message, .. } => AgentError::NotFound(message),
        ClientError::Conflict { message, .. } => AgentError::Conflict(message),
        ClientError::Api {
            status, message, ..
        } if (400..500).contains(&status) => AgentError::BadRequest(message),
        other => AgentError::Unavailable(format!("{what}: {other}")),
    }
}
