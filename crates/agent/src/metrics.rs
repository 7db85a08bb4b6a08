//! The agent's metrics, served as Prometheus text on its local API (`GET /metrics`):
//! what is bound and realized here, how long convergence passes and nft
//! transactions take, how often they fail, and how often the watch reconnects.

use prometheus_client::encoding::{EncodeLabelSet, prometheus_text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

pub struct Metrics {
    registry: Registry,
    pub ports_bound: Gauge,
    pub ports_realized: Gauge,
    pub pass_seconds: Histogram,
    pub pass_failures: Counter,
    pub passes_skipped: Counter,
    pub nft_apply_seconds: Histogram,
    pub watch_reconnects: Counter,
    pub event_to_rules_seconds: Histogram,
    drift_repairs: Family<Kind, Counter>,
    cni_requests: Family<CniLabels, Counter>,
    cni_seconds: Family<CniCommand, Histogram>,
    cni_pod_ports: Family<PodPort, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CniLabels {
    command: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CniCommand {
    command: String,
}

/// Whether a pod's port was assigned before its ADD came (`ready`) or the ADD
/// waited for the controller (`waited`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PodPort {
    port: String,
}

/// What kind of thing a repair put back.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: String,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kuryr_agent");
        let ports_bound = Gauge::default();
        let ports_realized = Gauge::default();
        // 100 µs to ~3 s: a pass with nothing to do is well under a millisecond.
        let pass_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        let pass_failures = Counter::default();
        let passes_skipped = Counter::default();
        let nft_apply_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        let watch_reconnects = Counter::default();
        // 50 µs to ~1.6 s.
        let event_to_rules_seconds = Histogram::new(exponential_buckets(0.00005, 2.0, 16));
        registry.register_with_unit(
            "event_to_rules",
            "From a watch frame's arrival to the rules it changed being in the kernel",
            Unit::Seconds,
            event_to_rules_seconds.clone(),
        );
        let drift_repairs = Family::<Kind, Counter>::default();
        registry.register(
            "drift_repairs",
            "Things found changed behind the agent's back and put back, by kind \
             (nftables, link, address, fdb, neighbour, status)",
            drift_repairs.clone(),
        );
        registry.register(
            "ports_bound",
            "Ports bound on this host (local bindings)",
            ports_bound.clone(),
        );
        registry.register(
            "ports_realized",
            "Ports whose interface the last pass found in place",
            ports_realized.clone(),
        );
        registry.register_with_unit(
            "pass",
            "Duration of convergence passes",
            Unit::Seconds,
            pass_seconds.clone(),
        );
        registry.register(
            "pass_failures",
            "Convergence passes that failed (retried)",
            pass_failures.clone(),
        );
        registry.register(
            "passes_skipped",
            "Wake-ups for a change the last pass had already seen (no pass run)",
            passes_skipped.clone(),
        );
        registry.register_with_unit(
            "nft_apply",
            "Duration of nftables transactions (passes whose rules changed)",
            Unit::Seconds,
            nft_apply_seconds.clone(),
        );
        registry.register(
            "watch_reconnects",
            "Times the watch of this host's view was opened again",
            watch_reconnects.clone(),
        );
        let cni_requests = Family::<CniLabels, Counter>::default();
        registry.register(
            "cni_requests",
            "CNI requests served, by command and outcome (ok, error)",
            cni_requests.clone(),
        );
        // 100 µs to ~3 s.
        let cni_seconds = Family::<CniCommand, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 16))
        });
        registry.register_with_unit(
            "cni_request",
            "Duration of CNI requests, by command",
            Unit::Seconds,
            cni_seconds.clone(),
        );
        let cni_pod_ports = Family::<PodPort, Counter>::default();
        registry.register(
            "cni_pod_ports",
            "Pods wired by CNI ADD: their port was assigned before the ADD came (ready) \
             or the ADD waited for the controller (waited)",
            cni_pod_ports.clone(),
        );
        Metrics {
            cni_requests,
            cni_seconds,
            cni_pod_ports,
            registry,
            ports_bound,
            ports_realized,
            pass_seconds,
            pass_failures,
            passes_skipped,
            nft_apply_seconds,
            watch_reconnects,
            event_to_rules_seconds,
            drift_repairs,
        }
    }

    /// Counts `n` repairs of `kind`.
    pub fn repaired(&self, kind: &str, n: u64) {
        self.drift_repairs
            .get_or_create(&Kind {
                kind: kind.to_string(),
            })
            .inc_by(n);
    }

    /// Counts a CNI request and its duration.
    pub fn cni_request(&self, command: &str, ok: bool, took: std::time::Duration) {
        self.cni_requests
            .get_or_create(&CniLabels {
                command: command.to_string(),
                outcome: if ok { "ok" } else { "error" }.to_string(),
            })
            .inc();
        self.cni_seconds
            .get_or_create(&CniCommand {
                command: command.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// Counts a pod wired, by whether its port was there when the ADD came.
    pub fn cni_pod_port(&self, ready: bool) {
        self.cni_pod_ports
            .get_or_create(&PodPort {
                port: if ready { "ready" } else { "waited" }.to_string(),
            })
            .inc();
    }

    /// The exposition text.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut body = String::new();
        prometheus_text::encode(&mut body, &self.registry)?;
        Ok(body)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
