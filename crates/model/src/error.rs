//! Neutron's error vocabulary: an HTTP status, a `type` and a message, rendered as
//! `{"NeutronError": {"type", "message", "detail"}}` by the API layer.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct NeutronError {
    pub status: u16,
    pub kind: &'static str,
    pub message: String,
}

impl fmt::Display for NeutronError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.kind, self.status, self.message)
    }
}

impl NeutronError {
    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    /// 400 with Neutron's `HTTPBadRequest` type (malformed bodies, unknown attributes).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "HTTPBadRequest", message)
    }

    /// 400 `InvalidInput`: "Invalid input for operation: ...".
    pub fn invalid_input(detail: impl fmt::Display) -> Self {
        Self::new(
            400,
            "InvalidInput",
            format!("Invalid input for operation: {detail}."),
        )
    }

    /// 400 for one attribute that failed validation, naming it.
    pub fn invalid_attr(attr: &str, reason: impl fmt::Display) -> Self {
        Self::bad_request(format!("Invalid input for {attr}. Reason: {reason}."))
    }

    /// 404 `<Kind>NotFound`, e.g. `("Network", "NetworkNotFound", id)`.
    pub fn not_found(what: &str, kind: &'static str, id: &str) -> Self {
        Self::new(404, kind, format!("{what} {id} could not be found."))
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "HTTPForbidden", message)
    }

    pub fn conflict(kind: &'static str, message: impl Into<String>) -> Self {
        Self::new(409, kind, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "HTTPInternalServerError", message)
    }
}
