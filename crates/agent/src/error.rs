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
