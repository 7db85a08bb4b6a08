//! The controller's metrics (Prometheus text on `--metrics-listen`, `GET /metrics`):
//! pool sizes, pool hits and misses, port assignment latency, reconciles (counts,
//! failures and latency by kind), the work queue's depth, and whether this replica
//! leads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::encoding::{EncodeLabelSet, prometheus_text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub node: String,
    pub network: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

pub struct Metrics {
    registry: Registry,
    /// Ports ready to take, per pool.
    pub pool_ports: Family<PoolLabels, Gauge>,
    /// A pod took a pre-made port.
    pub pool_hits: Family<NodeLabels, Counter>,
    /// A pod found its pool empty and waited for a batch.
    pub pool_misses: Family<NodeLabels, Counter>,
    pub ports_created: Counter,
    pub ports_deleted: Counter,
    /// From the reconcile's start to the port being the pod's.
    pub assign_seconds: Histogram,
    /// From a policy reconcile's start to every port's groups being right.
    pub policy_seconds: Histogram,
    pub port_group_updates: Counter,
    pub reconcile_failures: Family<KindLabels, Counter>,
    pub reconciles: Family<KindLabels, Counter>,
    pub reconcile_seconds: Family<KindLabels, Histogram, fn() -> Histogram>,
    /// Keys waiting in the work queue.
    pub queue_depth: Gauge,
    pub leader: Gauge,
}

/// 0.5 ms to ~16 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kuryr_controller");
        let pool_ports = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "pool_ports",
            "Pre-made ports ready to take, per (node, network) pool",
            pool_ports.clone(),
        );
        let pool_hits = Family::<NodeLabels, Counter>::default();
        registry.register(
            "pool_hits",
            "Pods that took a pre-made port from their node's pool",
            pool_hits.clone(),
        );
        let pool_misses = Family::<NodeLabels, Counter>::default();
        registry.register(
            "pool_misses",
            "Pods that found their node's pool empty and waited for a batch",
            pool_misses.clone(),
        );
        let ports_created = Counter::default();
        registry.register("ports_created", "Pool ports made", ports_created.clone());
        let ports_deleted = Counter::default();
        registry.register(
            "ports_deleted",
            "Ports deleted (pool above max, shrinking, garbage)",
            ports_deleted.clone(),
        );
        // 0.5 ms to ~16 s.
        let assign_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register_with_unit(
            "port_assign",
            "Time to give a pod its port",
            Unit::Seconds,
            assign_seconds.clone(),
        );
        let policy_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register_with_unit(
            "policy_reconcile",
            "Time from a policy reconcile's start to every port's groups being right",
            Unit::Seconds,
            policy_seconds.clone(),
        );
        let port_group_updates = Counter::default();
        registry.register(
            "port_group_updates",
            "Port security group (membership) updates",
            port_group_updates.clone(),
        );
        let reconcile_failures = Family::<KindLabels, Counter>::default();
        registry.register(
            "reconcile_failures",
            "Failed reconciles by kind (retried with backoff)",
            reconcile_failures.clone(),
        );
        let reconciles = Family::<KindLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles done by kind (successful or not)",
            reconciles.clone(),
        );
        let reconcile_seconds =
            Family::<KindLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register_with_unit(
            "reconcile_duration",
            "Time of one reconcile by kind",
            Unit::Seconds,
            reconcile_seconds.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Keys waiting in the work queue",
            queue_depth.clone(),
        );
        let leader = Gauge::default();
        registry.register("leader", "1 when this replica leads", leader.clone());
        Metrics {
            registry,
            pool_ports,
            pool_hits,
            pool_misses,
            ports_created,
            ports_deleted,
            assign_seconds,
            policy_seconds,
            port_group_updates,
            reconcile_failures,
            reconciles,
            reconcile_seconds,
            queue_depth,
            leader,
        }
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut body = String::new();
        prometheus_text::encode(&mut body, &self.registry)?;
        Ok(body)
    }

    /// One reconcile of `kind` took `secs`.
    pub fn reconciled(&self, kind: &str, secs: f64) {
        let l = KindLabels { kind: kind.into() };
        self.reconciles.get_or_create(&l).inc();
        self.reconcile_seconds.get_or_create(&l).observe(secs);
    }

    pub fn failure(&self, kind: &str) {
        self.reconcile_failures
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }
}

/// Serves `GET /metrics`, `/healthz` (the process answers) and `/readyz` (`ready`:
/// Neutron's names resolved and the caches synced; 503 before) until the listener
/// fails.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
) -> std::io::Result<()> {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let m = metrics.clone();
                async move {
                    match m.encode() {
                        Ok(body) => (
                            [(
                                header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            body,
                        )
                            .into_response(),
                        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    }
                }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let r = ready.load(Ordering::SeqCst);
                async move {
                    if r {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced yet")
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving metrics");
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes() {
        let m = Metrics::new();
        m.pool_hits
            .get_or_create(&NodeLabels { node: "n1".into() })
            .inc();
        m.pool_ports
            .get_or_create(&PoolLabels {
                node: "n1".into(),
                network: "net".into(),
            })
            .set(5);
        m.failure("pod");
        m.reconciled("service", 0.002);
        let text = m.encode().unwrap_or_default();
        assert!(
            text.contains("kuryr_controller_pool_hits_total{node=\"n1\"} 1"),
            "{text}"
        );
        assert!(text.contains("kuryr_controller_pool_ports{node=\"n1\",network=\"net\"} 5"));
        assert!(text.contains("kuryr_controller_reconcile_failures_total{kind=\"pod\"} 1"));
        assert!(text.contains("kuryr_controller_reconciles_total{kind=\"service\"} 1"));
        assert!(
            text.contains("kuryr_controller_reconcile_duration_seconds_count{kind=\"service\"} 1")
        );
    }
}
