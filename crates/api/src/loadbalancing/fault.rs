//! Octavia's error body, `{"faultcode", "faultstring", "debuginfo"}`, and the
//! errors this API answers with Octavia's texts.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::networking::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub status: u16,
    pub message: String,
}

impl Fault {
    pub fn new(status: u16, message: impl Into<String>) -> Fault {
        Fault {
            status,
            message: message.into(),
        }
    }

    /// `NotFound`: `Load Balancer <id> not found.`
    pub fn not_found(display: &str, id: &str) -> Fault {
        Fault::new(404, format!("{display} {id} not found."))
    }

    /// `ImmutableObject`: a change while the load balancer is `PENDING_*`.
    pub fn immutable(display: &str, id: &str) -> Fault {
        Fault::new(
            409,
            format!("{display} {id} is immutable and cannot be updated."),
        )
    }

    /// `PolicyForbidden`.
    pub fn forbidden() -> Fault {
        Fault::new(403, "Policy does not allow this request to be performed.")
    }

    /// A wsme validation error, as Octavia words it.
    pub fn invalid(field: &str, value: impl std::fmt::Display, reason: &str) -> Fault {
        Fault::new(
            400,
            format!("Invalid input for field/attribute {field}. Value: '{value}'. {reason}"),
        )
    }

    /// `ValidationException`.
    pub fn validation(detail: impl std::fmt::Display) -> Fault {
        Fault::new(400, format!("Validation failure: {detail}"))
    }

    /// `ProviderUnsupportedOptionError`, as the OVN provider's refusals read.
    pub fn unsupported(option: impl std::fmt::Display) -> Fault {
        Fault::new(
            501,
            format!(
                "Provider '{}' does not support a requested option: {option}",
                super::PROVIDER
            ),
        )
    }

    /// `QuotaException`, naming the resource as Octavia does (`Load Balancer`).
    pub fn quota(resource: &str) -> Fault {
        Fault::new(403, format!("Quota has been met for resources: {resource}"))
    }

    pub fn bad_body() -> Fault {
        Fault::new(400, "Request is not in valid JSON format")
    }
}

impl From<ApiError> for Fault {
    fn from(e: ApiError) -> Fault {
        Fault::new(e.0.status, e.0.message)
    }
}

impl From<kuryr_model::NeutronError> for Fault {
    fn from(e: kuryr_model::NeutronError) -> Fault {
        Fault::new(e.status, e.message)
    }
}

impl IntoResponse for Fault {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let code = if self.status >= 500 {
            "Server"
        } else {
            "Client"
        };
        (
            status,
            Json(json!({"faultcode": code, "faultstring": self.message, "debuginfo": null})),
        )
            .into_response()
    }
}
