//! Observability of the server: every request gets its `x-openstack-request-id` and a
//! tracing span before any handler runs; Prometheus metrics at `/metrics`; liveness at
//! `/healthz` and readiness at `/readyz`.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kuryr_store::Store;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tracing::Instrument;
use tracing::field::{Empty, display};

use crate::networking::Networking;

/// The header OpenStack services name a request by.
pub const REQUEST_ID_HEADER: &str = "x-openstack-request-id";

/// This request's id (`req-<uuid>`), in the request's extensions from the start.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

impl RequestId {
    fn new() -> Self {
        RequestId(format!("req-{}", uuid::Uuid::new_v4()).into())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: Cow<'static, str>,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: Cow<'static, str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    alive: bool,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms to ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The route label of requests no route matched (unknown paths are not labels:
/// anyone could mint new series).
const UNMATCHED: &str = "unmatched";

/// The server's metrics and what `/readyz` asks.
pub struct Observability {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily<RouteLabels>,
    watches: Gauge,
    agents: Family<AgentLabels, Gauge>,
    store: Arc<dyn Store>,
    networking: Arc<Networking>,
}

impl Observability {
    pub fn new(store: Arc<dyn Store>, networking: Arc<Networking>) -> Arc<Self> {
        let mut registry = Registry::with_prefix("kuryr");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, matched route and status",
            requests.clone(),
        );
        let latency: HistogramFamily<RouteLabels> = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "http_request_duration",
            "Time from a request's arrival to its response head, by method and matched route",
            Unit::Seconds,
            latency.clone(),
        );
        let watches = Gauge::default();
        registry.register(
            "host_watches_open",
            "Host watch streams (agents following their host's view) open now",
            watches.clone(),
        );
        let agents = Family::<AgentLabels, Gauge>::default();
        // Both series exist from the start, at 0.
        agents.get_or_create(&AgentLabels { alive: true }).set(0);
        agents.get_or_create(&AgentLabels { alive: false }).set(0);
        registry.register(
            "agents",
            "Registered agents, by whether their last heartbeat is within agent_down_time \
             (counted when scraped)",
            agents.clone(),
        );
        store.register_metrics(registry.sub_registry_with_prefix("store"));
        Arc::new(Observability {
            registry,
            requests,
            latency,
            watches,
            agents,
            store,
            networking,
        })
    }

    /// `/metrics`, `/healthz` and `/readyz`.
    pub fn routes(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(self.clone())
    }

    /// Counts agents alive and down now, by the rule of the agents API.
    fn count_agents(&self) {
        let down_time = self.networking.config.agent_down_time;
        let now = chrono::Utc::now().timestamp();
        let (mut alive, mut down) = (0i64, 0i64);
        for e in self.networking.db().agents.values() {
            if agent_alive(e.value.heartbeat_unix, now, down_time) {
                alive += 1;
            } else {
                down += 1;
            }
        }
        self.agents
            .get_or_create(&AgentLabels { alive: true })
            .set(alive);
        self.agents
            .get_or_create(&AgentLabels { alive: false })
            .set(down);
    }

    fn record(&self, method: &'static str, route: Cow<'static, str>, status: u16, took: Duration) {
        self.latency
            .get_or_create(&RouteLabels {
                method,
                route: route.clone(),
            })
            .observe(took.as_secs_f64());
        self.requests
            .get_or_create(&RequestLabels {
                method,
                route,
                status,
            })
            .inc();
    }
}

/// The agents API's rule: alive while the last heartbeat is at most `down_time` old.
fn agent_alive(heartbeat_unix: i64, now_unix: i64, down_time: Duration) -> bool {
    now_unix - heartbeat_unix <= i64::try_from(down_time.as_secs()).unwrap_or(i64::MAX)
}

/// A bounded method label (any token is a valid method; labels must not be minted by
/// clients).
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// A client's own `X-OpenStack-Request-ID`, kept as the global request id when it has
/// the `req-<uuid>` form (as oslo.middleware does); a new local id is made regardless.
fn global_request_id(req: &Request) -> Option<&str> {
    let v = req.headers().get(REQUEST_ID_HEADER)?.to_str().ok()?;
    let uuid = v.strip_prefix("req-")?;
    uuid::Uuid::parse_str(uuid).ok().map(|_| v)
}

/// A duration in milliseconds with µs precision, for log lines.
struct Millis(Duration);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.3}", self.0.as_secs_f64() * 1000.0)
    }
}

/// Probes and scrapes are logged at debug level: they come every few seconds.
pub(crate) fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// The outermost layer: names the request, opens its span (every log line of the
/// request carries the id), and measures it.
pub async fn track(
    State(obs): State<Arc<Observability>>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let id = RequestId::new();
    let method = method_label(req.method());
    let path = req.uri().path().to_string();
    let span = tracing::info_span!(
        "request",
        id = %id.0,
        method = %method,
        path = %path,
        route = Empty,
        project = Empty,
        global_id = Empty,
        status = Empty,
        duration_ms = Empty,
    );
    if let Some(g) = global_request_id(&req) {
        span.record("global_id", display(g));
    }
    req.extensions_mut().insert(id.clone());
    req.extensions_mut()
        .insert(OpenWatches(Some(obs.watches.clone())));
    let mut resp = next.run(req).instrument(span.clone()).await;
    let took = started.elapsed();
    let status = resp.status().as_u16();
    let route: Cow<'static, str> = match resp.extensions().get::<MatchedPath>() {
        Some(p) => Cow::Owned(p.as_str().to_string()),
        None => Cow::Borrowed(UNMATCHED),
    };
    obs.record(method, route, status, took);
    span.record("status", status);
    span.record("duration_ms", display(Millis(took)));
    span.in_scope(|| {
        if status >= 500 {
            tracing::warn!("request failed");
        } else if is_probe(&path) {
            tracing::debug!("request done");
        } else {
            tracing::info!("request done");
        }
    });
    if let Ok(v) = HeaderValue::from_str(&id.0) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    resp
}

/// Runs once a route matched: names the route in the span, and hands it back to
/// [`track`] (which runs before routing) for the metric labels.
pub async fn matched_route(path: MatchedPath, req: Request, next: Next) -> Response {
    tracing::Span::current().record("route", display(path.as_str()));
    let mut resp = next.run(req).await;
    resp.extensions_mut().insert(path);
    resp
}

/// Records the caller's project into the request's span (called by authentication).
pub fn record_project(project_id: &str) {
    tracing::Span::current().record("project", display(project_id));
}

/// The open-watches gauge, for the host watch handler: `opened()` counts a stream
/// until the returned guard is dropped.
#[derive(Clone, Default)]
pub struct OpenWatches(Option<Gauge>);

impl OpenWatches {
    pub fn opened(&self) -> OpenWatch {
        if let Some(g) = &self.0 {
            g.inc();
        }
        OpenWatch(self.0.clone())
    }
}

pub struct OpenWatch(Option<Gauge>);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        if let Some(g) = &self.0 {
            g.dec();
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for OpenWatches {
    type Rejection = Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // Without the tracking layer (a router used on its own) nothing is counted.
        Ok(parts
            .extensions
            .get::<OpenWatches>()
            .cloned()
            .unwrap_or_default())
    }
}

async fn metrics(State(obs): State<Arc<Observability>>) -> Response {
    obs.count_agents();
    let mut body = String::new();
    match prometheus_text::encode(&mut body, &obs.registry) {
        Ok(()) => (
            [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "encoding metrics failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready: the indexes were built from the store (they are, once this app exists) and
/// the store takes writes.
async fn readyz(State(obs): State<Arc<Observability>>) -> Response {
    match obs.store.check().await {
        Ok(()) => "ready\n".into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: the store fails");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: store: {e}\n"),
            )
                .into_response()
        }
    }
}

/// What the listener serves from the moment it is bound: `/healthz` at once, `/readyz`
/// answering 503 until [`Startup::finish`] hands over the loaded application (its
/// indexes built from the store), which then answers everything. Other requests that
/// come before wait for it, as they did in the listen queue before the listener served.
#[derive(Clone)]
pub struct Startup {
    app: Arc<OnceLock<Router>>,
    loaded: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for Startup {
    fn default() -> Self {
        Startup {
            app: Arc::default(),
            loaded: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }
}

impl Startup {
    pub fn new() -> Self {
        Self::default()
    }

    /// The router to serve.
    pub fn router(&self) -> Router {
        let this = self.clone();
        Router::new().fallback(move |req: Request| {
            let this = this.clone();
            async move {
                let app = match this.app.get() {
                    Some(app) => app.clone(),
                    None if matches!(req.uri().path(), "/healthz" | "/readyz") => {
                        return loading(req.uri().path());
                    }
                    None => {
                        let _ = this.loaded.subscribe().wait_for(|l| *l).await;
                        match this.app.get() {
                            Some(app) => app.clone(),
                            None => return loading(req.uri().path()),
                        }
                    }
                };
                let Ok(resp) = tower::ServiceExt::oneshot(app, req).await;
                resp
            }
        })
    }

    /// Hands over the loaded application; later calls are ignored.
    pub fn finish(&self, app: Router) {
        let _ = self.app.set(app);
        self.loaded.send_replace(true);
    }
}

fn loading(path: &str) -> Response {
    if path == "/healthz" {
        return "ok\n".into_response();
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "not ready: kuryr server is starting: its indexes are being loaded from the store\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(method_label(&Method::GET), "GET");
        let odd = Method::from_bytes(b"BREW").expect("a valid token");
        assert_eq!(method_label(&odd), "other");
    }

    #[test]
    fn alive_follows_the_agents_api_rule() {
        let d = Duration::from_secs(30);
        assert!(agent_alive(100, 130, d));
        assert!(!agent_alive(100, 131, d));
    }
}
