//! The controller's errors.

use kuryr_client::ClientError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Neutron call failed (the reconcile is retried with backoff).
    #[error("neutron: {0}")]
    Neutron(#[from] ClientError),
    /// A Kubernetes call failed.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// The options or what they name (a network, a subnet pool, a router) are unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// Something the work needs is not there yet (a namespace's network...): retried.
    #[error("not ready: {0}")]
    NotReady(String),
    /// Neutron answered something the controller cannot use.
    #[error("unexpected answer from neutron: {0}")]
    Decode(String),
    /// A Kubernetes object the controller cannot act on as it is (reported as an Event).
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },
}

impl Error {
    /// Neutron said the object is gone.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Neutron(e) if e.is_not_found())
    }

    /// Neutron refused because of another object (a group in use, a network with ports).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Neutron(e) if e.status() == Some(409))
    }
}

/// The HTTP status of a Kubernetes API error.
pub fn kube_status(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
