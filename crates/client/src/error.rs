//! The client's error type: Neutron's error vocabulary plus the ways a request can fail
//! before Neutron answers.

use serde::Deserialize;

/// What a call to Keystone or Neutron can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The credentials or the configuration they came from are incomplete or malformed
    /// (a missing OS_* variable, an unknown cloud in clouds.yaml, an unreadable CA file).
    #[error("configuration: {0}")]
    Config(String),
    /// Keystone refused the credentials, the catalog has no usable network endpoint,
    /// or Neutron still answered 401 after a fresh token.
    #[error("authentication: {0}")]
    Auth(String),
    /// 404; `kind` is Neutron's error type (`PortNotFound`, `HTTPNotFound`, ...).
    /// Against a real Neutron, kuryr's own extensions (`/v2.0/kuryr/...`) answer this.
    #[error("not found ({kind}): {message}")]
    NotFound { kind: String, message: String },
    /// 409 (`IpAddressAlreadyAllocated`, `MacAddressInUse`, `PortInUse`...).
    #[error("conflict ({kind}): {message}")]
    Conflict { kind: String, message: String },
    /// Any other non-2xx answer.
    #[error("{kind} ({status}): {message}")]
    Api {
        status: u16,
        kind: String,
        message: String,
    },
    /// No answer: connection refused or reset, timeout, a dropped stream. Retry with backoff.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// An answer that is not what the API documents (not JSON, a missing key, a field of
    /// the wrong type, an oversized watch line).
    #[error("decode: {0}")]
    Decode(String),
}

impl ClientError {
    /// Worth retrying the same call later: no answer, or a gateway / overload status.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Unreachable(_) => true,
            ClientError::Api { status, .. } => matches!(status, 429 | 502 | 503 | 504),
            _ => false,
        }
    }

    /// A 404 of any kind.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::NotFound { .. })
    }

    /// The HTTP status Neutron (or Keystone) answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::NotFound { .. } => Some(404),
            ClientError::Conflict { .. } => Some(409),
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Builds the error for a non-2xx answer from its status and body. Understands
    /// Neutron's `{"NeutronError": {"type", "message", "detail"}}`, Keystone's
    /// `{"error": {"code", "title", "message"}}`, and falls back to the body as text.
    pub fn from_response(status: u16, body: &[u8]) -> ClientError {
        let (kind, message) = parse_error_body(status, body);
        match status {
            404 => ClientError::NotFound { kind, message },
            409 => ClientError::Conflict { kind, message },
            _ => ClientError::Api {
                status,
                kind,
                message,
            },
        }
    }
}

#[derive(Deserialize)]
struct NeutronErrorBody {
    #[serde(rename = "NeutronError")]
    neutron_error: NeutronErrorInner,
}

#[derive(Deserialize)]
struct NeutronErrorInner {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    detail: Option<String>,
}

/// Octavia's (wsme) error body.
#[derive(Deserialize)]
struct OctaviaFault {
    faultstring: String,
}

#[derive(Deserialize)]
struct KeystoneErrorBody {
    error: KeystoneErrorInner,
}

#[derive(Deserialize)]
struct KeystoneErrorInner {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// Neutron's default error type for a status, as its WSGI layer names them.
fn default_kind(status: u16) -> String {
    match status {
        400 => "HTTPBadRequest",
        401 => "HTTPUnauthorized",
        403 => "HTTPForbidden",
        404 => "HTTPNotFound",
        405 => "HTTPMethodNotAllowed",
        409 => "HTTPConflict",
        413 => "HTTPRequestEntityTooLarge",
        429 => "HTTPTooManyRequests",
        500 => "HTTPInternalServerError",
        501 => "HTTPNotImplemented",
        502 => "HTTPBadGateway",
        503 => "HTTPServiceUnavailable",
        504 => "HTTPGatewayTimeout",
        _ => "HTTPError",
    }
    .to_string()
}

const MAX_TEXT_MESSAGE: usize = 512;

fn parse_error_body(status: u16, body: &[u8]) -> (String, String) {
    if let Ok(b) = serde_json::from_slice::<NeutronErrorBody>(body) {
        let e = b.neutron_error;
        let kind = e
            .kind
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| default_kind(status));
        let mut message = e.message.unwrap_or_default();
        if let Some(detail) = e.detail.filter(|d| !d.is_empty())
            && message.is_empty()
        {
            message = detail;
        }
        return (kind, message);
    }
    if let Ok(b) = serde_json::from_slice::<OctaviaFault>(body) {
        return (default_kind(status), b.faultstring);
    }
    if let Ok(b) = serde_json::from_slice::<KeystoneErrorBody>(body) {
        let kind = b
            .error
            .title
            .map(|t| t.replace(' ', ""))
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| default_kind(status));
        return (kind, b.error.message.unwrap_or_default());
    }
    // Neutron's pecan/webob layer answers some errors (unknown paths) as plain text;
    // a proxy in front of it may answer HTML. Keep a bounded, single-line excerpt.
    let text = String::from_utf8_lossy(body);
    let mut message: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if message.len() > MAX_TEXT_MESSAGE {
        let mut cut = MAX_TEXT_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    (default_kind(status), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neutron_error_body() {
        let body = br#"{"NeutronError": {"type": "PortNotFound", "message": "Port p1 could not be found.", "detail": ""}}"#;
        assert_eq!(
            ClientError::from_response(404, body),
            ClientError::NotFound {
                kind: "PortNotFound".into(),
                message: "Port p1 could not be found.".into()
            }
        );
        let body =
            br#"{"NeutronError": {"type": "MacAddressInUse", "message": "in use", "detail": ""}}"#;
        assert!(matches!(
            ClientError::from_response(409, body),
            ClientError::Conflict { kind, .. } if kind == "MacAddressInUse"
        ));
        let body = br#"{"NeutronError": {"type": "InvalidInput", "message": "bad", "detail": ""}}"#;
        let e = ClientError::from_response(400, body);
        assert_eq!(e.status(), Some(400));
        assert!(!e.is_retryable());
    }

    #[test]
    fn octavia_fault_body() {
        let body = br#"{"faultcode": "Client", "faultstring": "Load Balancer x is immutable and cannot be updated.", "debuginfo": null}"#;
        assert_eq!(
            ClientError::from_response(409, body),
            ClientError::Conflict {
                kind: "HTTPConflict".into(),
                message: "Load Balancer x is immutable and cannot be updated.".into()
            }
        );
    }

    #[test]
    fn keystone_and_text_bodies() {
        let body = br#"{"error": {"code": 401, "title": "Unauthorized", "message": "The request you have made requires authentication."}}"#;
        assert_eq!(
            ClientError::from_response(401, body),
            ClientError::Api {
                status: 401,
                kind: "Unauthorized".into(),
                message: "The request you have made requires authentication.".into()
            }
        );
        let body = b"404 Not Found\n\nThe resource could not be found.\n\n   ";
        assert_eq!(
            ClientError::from_response(404, body),
            ClientError::NotFound {
                kind: "HTTPNotFound".into(),
                message: "404 Not Found The resource could not be found.".into()
            }
        );
        let long = "é".repeat(2000);
        match ClientError::from_response(503, long.as_bytes()) {
            ClientError::Api {
                status,
                kind,
                message,
            } => {
                assert_eq!(status, 503);
                assert_eq!(kind, "HTTPServiceUnavailable");
                assert!(message.len() <= MAX_TEXT_MESSAGE + 3);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(ClientError::from_response(503, b"").is_retryable());
    }
}
