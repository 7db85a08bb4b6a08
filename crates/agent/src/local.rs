//! The agent's local API on a unix socket (root-only), and its client.
//!
//! - `POST /v1/ports/{id}/bind` `{"netns": PATH, "ifname": "eth0"}` → [`BindResult`]
//! - `POST /v1/ports/{id}/unbind` → `{"port_id", "unbound": bool}`
//! - `GET /v1/ports` → the bindings of this host
//! - `GET /v1/health`
//! - `POST /v1/cni`: the CNI daemon (see [`crate::cni`])
//!
//! Errors: `{"error": {"code": STATUS, "message": "..."}}`.

use crate::StartError;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{Agent, AgentError, BindResult};

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            Json(json!({"error": {"code": self.status(), "message": self.to_string()}})),
        )
            .into_response()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BindRequest {
    netns: PathBuf,
    #[serde(default = "default_ifname")]
    ifname: String,
}

fn default_ifname() -> String {
    "eth0".into()
}

async fn bind(
    State(agent): State<Arc<Agent>>,
    UrlPath(port): UrlPath<String>,
    body: Bytes,
) -> Result<Json<BindResult>, AgentError> {
    let req: BindRequest = serde_json::from_slice(&body).map_err(|e| {
        AgentError::BadRequest(format!(
            "body must be {{\"netns\": PATH, \"ifname\": NAME}}: {e}"
        ))
    })?;
    agent.bind(&port, req.netns, req.ifname).await.map(Json)
}

async fn unbind(
    State(agent): State<Arc<Agent>>,
    UrlPath(port): UrlPath<String>,
) -> Result<Json<Value>, AgentError> {
    let unbound = agent.unbind(&port).await?;
    Ok(Json(json!({"port_id": port, "unbound": unbound})))
}

async fn list(State(agent): State<Arc<Agent>>) -> Json<Value> {
    Json(json!({"bindings": agent.bindings()}))
}

async fn metrics(State(agent): State<Arc<Agent>>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match agent.metrics_text() {
        Ok(body) => (
            [(
                axum::http::header::CONTENT_TYPE,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "encoding metrics failed");
            axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn health(State(agent): State<Arc<Agent>>) -> Json<Value> {
    Json(agent.health())
}

pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/ports", get(list))
        .route("/v1/ports/{id}/bind", post(bind))
        .route("/v1/ports/{id}/unbind", post(unbind))
        .route("/v1/health", get(health))
        .route("/v1/cni", post(crate::cni::handle))
        .route("/metrics", get(metrics))
        .with_state(agent)
}

/// Serves the local API until `shutdown`. A stale socket file (no one listening)
/// is replaced; a live one is an error (another agent owns this host).
pub async fn serve(
    agent: Arc<Agent>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let path = agent.config().socket.clone();
    let listener = listen_unix(&path, "another agent; stop it or pass --socket").await?;
    tracing::info!(socket = %path.display(), "agent API ready");
    let served = axum::serve(listener, router(agent))
        .with_graceful_shutdown(shutdown)
        .await;
    let _ = std::fs::remove_file(&path);
    served.map_err(StartError::Serve)
}

/// A root-only unix socket at `path`. A stale socket file (no one listening) is
/// replaced; a live one is an error naming `owner`.
pub async fn listen_unix(path: &Path, owner: &str) -> Result<tokio::net::UnixListener, StartError> {
    let socket = |source| StartError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(socket)?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(StartError::SocketInUse {
                path: path.to_path_buf(),
                owner: owner.to_string(),
            });
        }
        std::fs::remove_file(path).map_err(socket)?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(socket)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(socket)?;
    Ok(listener)
}

/// A client of the local API (the `kuryr port` commands; the Docker plugin and CNI
/// daemon call the agent in-process instead).
pub struct LocalClient {
    socket: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("cannot reach the agent at {socket}: {source} (is `kuryr agent` running?)")]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the agent: {0}")]
    Http(String),
    /// The agent answered with an error.
    #[error("{message}")]
    Agent { status: u16, message: String },
}

impl LocalClient {
    pub fn new(socket: impl AsRef<Path>) -> LocalClient {
        LocalClient {
            socket: socket.as_ref().to_path_buf(),
        }
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, LocalError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| LocalError::Connect {
                socket: self.socket.clone(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| LocalError::Http(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "kuryr-agent")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| LocalError::Http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| LocalError::Http(e.to_string()))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| LocalError::Http(e.to_string()))?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            LocalError::Http(format!("the agent answered {status} without JSON: {e}"))
        })?;
        if status >= 400 {
            let message = value["error"]["message"]
                .as_str()
                .unwrap_or("unknown error")
                .to_string();
            return Err(LocalError::Agent { status, message });
        }
        Ok(value)
    }

    pub async fn bind(
        &self,
        port: &str,
        netns: &Path,
        ifname: &str,
    ) -> Result<BindResult, LocalError> {
        let v = self
            .call(
                "POST",
                &format!("/v1/ports/{port}/bind"),
                Some(json!({"netns": netns, "ifname": ifname})),
            )
            .await?;
        serde_json::from_value(v)
            .map_err(|e| LocalError::Http(format!("unexpected bind answer: {e}")))
    }

    pub async fn unbind(&self, port: &str) -> Result<bool, LocalError> {
        let v = self
            .call("POST", &format!("/v1/ports/{port}/unbind"), None)
            .await?;
        Ok(v["unbound"].as_bool().unwrap_or(false))
    }
}
