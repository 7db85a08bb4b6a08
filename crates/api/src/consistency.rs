//! Consistent reads on any replica: before a request is handled, this replica's
//! in-memory view waits until it holds every change the store had committed when the
//! request arrived (one revision query; etcd answers it from its quorum). A port
//! created through one replica is then seen by the next request on any other, as it
//! is by the replica that wrote it. On the embedded store the query is a memory read.
//!
//! The views follow every key of the store, so they reach its revision; this needs the
//! store (the etcd prefix) to be kuryr's alone, which is said where the option is.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kuryr_store::Store;
use serde_json::json;

use crate::{Identity, Networking};

pub struct Barrier {
    pub store: Arc<dyn Store>,
    pub identity: Arc<Identity>,
    pub networking: Arc<Networking>,
    /// Longest wait for the views; past it the request gets 503.
    pub wait: Duration,
}

/// An error in the format of the API the path belongs to: Keystone's under
/// `/identity`, Octavia's under `/load-balancer`, Neutron's elsewhere (`kind` is
/// NeutronError's `type`).
pub fn protocol_error(path: &str, status: StatusCode, kind: &str, message: &str) -> Response {
    let body = if path.starts_with("/identity") {
        // Keystone's own wording for 413 (HTTP's is now "Payload Too Large").
        let title = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "Request Entity Too Large",
            s => s.canonical_reason().unwrap_or("Error"),
        };
        json!({"error": {"code": status.as_u16(), "title": title, "message": message}})
    } else if path.starts_with("/load-balancer") {
        json!({"faultcode": if status.is_server_error() { "Server" } else { "Client" },
               "faultstring": message, "debuginfo": null})
    } else {
        json!({"NeutronError": {"type": kind, "message": message, "detail": ""}})
    };
    (status, Json(body)).into_response()
}

/// 503 in the path's API's error format, with Retry-After.
pub fn unavailable(path: &str, message: &str) -> Response {
    let mut r = protocol_error(
        path,
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        message,
    );
    r.headers_mut()
        .insert("retry-after", axum::http::HeaderValue::from_static("1"));
    r
}

pub async fn barrier(State(b): State<Arc<Barrier>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if crate::observe::is_probe(path) {
        return next.run(req).await;
    }
    let rev = match b.store.current_revision().await {
        Ok(rev) => rev,
        Err(e) => {
            tracing::warn!(error = %e, "store unavailable; answering 503");
            return unavailable(path, &format!("The store is unavailable ({e}); try again."));
        }
    };
    let views = async {
        b.networking.caught_up(rev).await;
        b.identity.caught_up(rev).await;
    };
    if tokio::time::timeout(b.wait, views).await.is_err() {
        tracing::warn!(
            revision = rev,
            "this replica's view did not reach the store's revision in time; answering 503 \
             (if another program writes to kuryr's etcd, give kuryr an etcd of its own)"
        );
        return unavailable(
            path,
            "This server's view of the store is behind; try again.",
        );
    }
    next.run(req).await
}
