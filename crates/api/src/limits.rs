//! The request body limit: a body larger than the operator's limit is refused with
//! 413 in the protocol's own error format (Keystone's under `/identity`, Octavia's
//! under `/load-balancer`, Neutron's elsewhere) before any handler parses it, and never buffered past the limit.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};

/// 1 MiB: a bulk create of a thousand ports fits; neutron's oslo default is 112 KiB.
pub const DEFAULT_MAX_REQUEST_BODY: usize = 1 << 20;

fn too_large(path: &str, max: usize) -> Response {
    crate::consistency::protocol_error(
        path,
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestEntityTooLarge",
        &format!("Request body is larger than the limit of {max} bytes."),
    )
}

pub async fn limit_body(State(max): State<usize>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return too_large(req.uri().path(), max);
    }
    let (parts, body) = req.into_parts();
    match Limited::new(body, max).collect().await {
        Ok(collected) => {
            next.run(Request::from_parts(parts, Body::from(collected.to_bytes())))
                .await
        }
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            too_large(parts.uri.path(), max)
        }
        Err(e) => {
            tracing::debug!(error = %e, "request body could not be read");
            (StatusCode::BAD_REQUEST, "request body could not be read").into_response()
        }
    }
}
