//! The kuryr Kubernetes controller (`kuryr controller`): pods get Neutron ports from
//! per-node pools, namespaces get networks (optionally), NetworkPolicies become security
//! groups whose remote groups are sets of ports.
//!
//! Built as kube-rs is meant to be used: reflectors (watcher + store) for pods,
//! namespaces, NetworkPolicies and nodes feed a keyed work queue; idempotent reconciles
//! read the stores and a cache of the controller's Neutron objects, and write only the
//! differences. Ownership is in Neutron (tags, device_id = pod uid), so a full pass at
//! start and every resync period finds and removes whatever no Kubernetes object owns
//! any more, whatever was killed when. Only the leader of a Lease acts.
//!
//! Modules: `policy` (NetworkPolicy → rules, pure), `membership` (a pod's groups, pure),
//! `cidr`, `labels`, `pools` (pool sizing, pure), `gc` (orphans), `cache` (Neutron
//! state and its merge), `queue`, `leader`, then the reconciles (`pods`,
//! `namespaces`, `netpol`, `pool_manager`) and the Neutron calls (`neutron`).
//!
//! No finalizers: a finalizer on pods would cost a write (and a watch event) before a
//! pod could get its port, and would hold pods (and namespaces) up whenever the
//! controller is down. Ownership lives in Neutron instead (device_id = pod uid, tags
//! naming policies and namespaces), deletions are seen by the reflectors, and what a
//! missed deletion leaves is found by uid at the next full pass.
//!
//! Services (with `--service-subnet`): `services` (Service + EndpointSlices → the
//! load balancer it should have, pure), `lbaas` (the Octavia calls), `service_lb` (the
//! reconcile, floating IPs, status). `warm`: the reflectors, kept on every replica.
//!
//! Kubernetes permissions: pods, namespaces and networkpolicies (get, list, watch,
//! patch: the annotations), nodes (list, watch), services and
//! discovery.k8s.io endpointslices (list, watch), services/status (patch),
//! coordination.k8s.io leases in the election namespace (get, create, update),
//! events.k8s.io events (create, patch).

pub mod cache;
pub mod cidr;
pub mod ctx;
pub mod error;
pub mod gc;
pub mod labels;
pub mod lbaas;
pub mod leader;
pub mod membership;
pub mod metrics;
pub mod namespaces;
pub mod netpol;
pub mod neutron;
pub mod owner;
pub mod pods;
pub mod policy;
pub mod pool_manager;
pub mod pools;
pub mod queue;
pub mod service_lb;
pub mod services;
pub mod tags;
#[cfg(test)]
mod test_fixtures;
pub mod view;
pub mod warm;

use std::collections::hash_map::DefaultHasher;
use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::ctx::{Ctx, Key, KeyedLocks, NetMode, lock};
use crate::metrics::Metrics;
use crate::neutron::Neutron;
use crate::queue::Queue;
use crate::service_lb::ServiceNet;
use crate::view::PodView;
use crate::warm::{Handlers, Warm};

pub use error::{Error, Result};
pub use leader::LeaseConfig;
pub use pools::PoolConfig;

/// Where pods' ports go.
#[derive(Debug, Clone)]
pub enum Network {
    /// One network (name or id) for every pod.
    Single(String),
    /// A network and subnet per namespace from this subnet pool, attached to this router
    /// (names or ids).
    PerNamespace { subnetpool: String, router: String },
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The value of the `kuryr.k8s.cluster` tag.
    pub cluster: String,
    pub network: Network,
    /// The subnet (name or id) Service VIPs are made in: the cluster's service CIDR.
    /// `None`: Services get no load balancer.
    pub service_subnet: Option<String>,
    /// The external network (name or id) of `type: LoadBalancer` Services' floating IPs.
    pub external_svc_net: Option<String>,
    /// Project of what is made; `None`: the credential's.
    pub project: Option<String>,
    pub pool: PoolConfig,
    pub resync_period: Duration,
    /// Reconciles at once.
    pub workers: usize,
    /// `None`: no election, this process acts.
    pub leader: Option<LeaseConfig>,
    pub metrics_listen: Option<SocketAddr>,
    /// Events' reporting instance (the identity).
    pub instance: String,
}

impl Config {
    pub fn validate(&self) -> Result<()> {
        self.pool.validate().map_err(Error::Config)?;
        if self.cluster.is_empty() {
            return Err(Error::Config("--cluster-name must not be empty".into()));
        }
        if self.resync_period.is_zero() {
            return Err(Error::Config(
                "--resync-period must be at least 1 second".into(),
            ));
        }
        Ok(())
    }
}

/// Runs the controller until `stop` fires: waits for leadership, acts while it leads,
/// stops acting when it no longer does (and waits again).
pub async fn run(
    cfg: Config,
    client: kuryr_client::Client,
    kube: kube::Client,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    cfg.validate()?;
    let metrics = Arc::new(Metrics::new());
    // `/readyz`: Neutron's names resolved and every cache synced.
    let ready = Arc::new(AtomicBool::new(false));
    let mut background = JoinSet::new();
    if let Some(addr) = cfg.metrics_listen {
        let (m, r) = (metrics.clone(), ready.clone());
        background.spawn(async move {
            if let Err(e) = metrics::serve(addr, m, r).await {
                tracing::error!(%addr, error = %e, "the metrics listener failed");
            }
        });
    }
    let neutron = Neutron::new(client.clone(), cfg.cluster.clone(), cfg.project.clone());
    let net = tokio::select! {
        r = resolve_network(&neutron, &cfg.network) => r?,
        _ = stop.wait_for(|s| *s) => return Ok(()),
    };
    let svc_net = match &cfg.service_subnet {
        Some(s) => tokio::select! {
            r = resolve_service_subnet(&neutron, s, cfg.external_svc_net.as_deref(), &net) => Some(r?),
            _ = stop.wait_for(|s| *s) => return Ok(()),
        },
        None => None,
    };
    let octavia = lbaas::Octavia::new(client.clone(), cfg.cluster.clone(), cfg.project.clone());
    tracing::info!(cluster = %cfg.cluster, network = ?net, services = ?svc_net, "kuryr controller starting");
    // Dropped (and so stopped) when run returns.
    let mut watchers = JoinSet::new();
    let warm = Warm::start(
        &kube,
        svc_net.is_some(),
        Handlers {
            pod: on_pod,
            namespace: on_namespace,
            policy: on_policy,
            node: on_node,
            service: on_service,
            slice: on_slice,
        },
        &mut watchers,
    );
    {
        let (warm, ready) = (warm.clone(), ready.clone());
        watchers.spawn(async move {
            warm.wait_synced().await;
            ready.store(true, Ordering::SeqCst);
            std::future::pending::<()>().await;
            "ready"
        });
    }
    let (lead_tx, mut lead_rx) = watch::channel(cfg.leader.is_none());
    if let Some(lc) = cfg.leader.clone() {
        let api: Api<Lease> = Api::namespaced(kube.clone(), &lc.namespace);
        tracing::info!(identity = %lc.identity, lease = %format!("{}/{}", lc.namespace, lc.name), "leader election");
        background.spawn(leader::run(api, lc, lead_tx, stop.clone()));
    }
    let base = Base {
        cfg: cfg.clone(),
        net,
        svc_net,
        neutron,
        octavia,
        kube,
        metrics: metrics.clone(),
        warm,
    };
    let mut failures = 0u32;
    loop {
        tokio::select! {
            r = lead_rx.wait_for(|l| *l) => if r.is_err() { break },
            _ = stop.wait_for(|s| *s) => break,
        }
        metrics.leader.set(1);
        let term = run_term(&base);
        let outcome = tokio::select! {
            r = term => Some(r),
            _ = lead_rx.wait_for(|l| !*l) => {
                tracing::warn!("leadership lost: the controller stops acting");
                None
            }
            _ = stop.wait_for(|s| *s) => {
                metrics.leader.set(0);
                break;
            }
        };
        metrics.leader.set(0);
        if let Some(Err(e)) = outcome {
            let delay = queue::backoff(failures.saturating_add(3));
            failures = failures.saturating_add(1);
            tracing::error!(error = %e, retry_in_ms = delay.as_millis() as u64, "the controller stopped; starting again");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
    }
    // Let the elector give the lease up.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(r) = background.join_next().await {
            if r.is_err() {
                break;
            }
            if background.len() <= usize::from(cfg.metrics_listen.is_some()) {
                break;
            }
        }
    })
    .await;
    Ok(())
}

/// Resolves `--service-subnet` to its id and CIDR, `--external-svc-net` to its id,
/// and the pods' CIDRs (retrying while Neutron cannot be reached).
async fn resolve_service_subnet(
    neutron: &Neutron,
    subnet: &str,
    external: Option<&str>,
    pods: &NetMode,
) -> Result<ServiceNet> {
    let cidr_of = |v: &serde_json::Value| {
        v.get("cidr")
            .and_then(serde_json::Value::as_str)
            .and_then(|c| c.parse::<ipnet::IpNet>().ok())
    };
    retrying(|| async {
        let v = neutron.resolve("subnets", "subnet", subnet).await?;
        let cidr =
            cidr_of(&v).ok_or_else(|| Error::Decode(format!("subnet {subnet} without a CIDR")))?;
        let external = match external {
            Some(e) => Some(json_id(
                &neutron.resolve("networks", "network", e).await?,
                "network",
            )?),
            None => None,
        };
        let internal = match pods {
            NetMode::Single { network } => neutron
                .client()
                .list_as::<serde_json::Value>("subnets", "subnets", &[("network_id", network)])
                .await?
                .iter()
                .filter_map(cidr_of)
                .collect(),
            NetMode::PerNamespace { subnetpool, .. } => neutron
                .resolve("subnetpools", "subnetpool", subnetpool)
                .await?
                .get("prefixes")
                .and_then(serde_json::Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_str()?.parse().ok())
                .collect(),
        };
        Ok(ServiceNet {
            subnet: json_id(&v, "subnet")?,
            cidr,
            external,
            internal,
        })
    })
    .await
}

/// Runs `f` until it succeeds or fails for another reason than Neutron being
/// unreachable or failing.
async fn retrying<T, F, Fut>(mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut failures = 0u32;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(Error::Neutron(e)) if e.is_retryable() || matches!(e.status(), Some(500..)) => {
                let d = queue::backoff(failures.saturating_add(3));
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, retry_in_ms = d.as_millis() as u64, "neutron is not reachable yet");
                tokio::time::sleep(d).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Resolves the network options to ids (retrying while Neutron cannot be reached).
async fn resolve_network(neutron: &Neutron, network: &Network) -> Result<NetMode> {
    retrying(|| async {
        match network {
            Network::Single(n) => {
                let v = neutron.resolve("networks", "network", n).await?;
                let id = json_id(&v, "network")?;
                Ok(NetMode::Single { network: id })
            }
            Network::PerNamespace { subnetpool, router } => {
                let p = neutron
                    .resolve("subnetpools", "subnetpool", subnetpool)
                    .await?;
                let ip_version = p
                    .get("ip_version")
                    .and_then(serde_json::Value::as_u64)
                    .and_then(|v| u8::try_from(v).ok())
                    .unwrap_or(4);
                let r = neutron.resolve("routers", "router", router).await?;
                Ok(NetMode::PerNamespace {
                    subnetpool: json_id(&p, "subnetpool")?,
                    ip_version,
                    router: json_id(&r, "router")?,
                })
            }
        }
    })
    .await
}

fn json_id(v: &serde_json::Value, what: &str) -> Result<String> {
    v.get("id")
        .and_then(serde_json::Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| Error::Decode(format!("{what} without an id")))
}

/// One leadership term: reflectors, the start-up pass, workers, pools and the resync
/// timer. Everything runs in one task set: dropping the term stops it all.
/// What every leadership term starts from (resolved once).
struct Base {
    cfg: Config,
    net: NetMode,
    svc_net: Option<ServiceNet>,
    neutron: Neutron,
    octavia: lbaas::Octavia,
    kube: kube::Client,
    metrics: Arc<Metrics>,
    warm: Arc<Warm>,
}

async fn run_term(base: &Base) -> Result<()> {
    let Base {
        cfg,
        net,
        svc_net,
        neutron,
        octavia,
        kube,
        metrics,
        warm,
    } = base;
    let reporter = Reporter {
        controller: "kuryr-controller".into(),
        instance: Some(cfg.instance.clone()),
    };
    let ctx = Arc::new(Ctx {
        cfg: cfg.clone(),
        net: net.clone(),
        neutron: neutron.clone(),
        octavia: octavia.clone(),
        services: svc_net.clone(),
        lbs: Default::default(),
        kube: kube.clone(),
        stores: warm.stores.clone(),
        cache: Default::default(),
        index: Default::default(),
        peer_lock: Default::default(),
        locks: KeyedLocks::default(),
        queue: Queue::new(Key::urgent),
        pool_trigger: Default::default(),
        pool_activity: Default::default(),
        attached: Default::default(),
        named_port_policies: Default::default(),
        sigs: Default::default(),
        started: Default::default(),
        metrics: metrics.clone(),
        recorder: Recorder::new(kube.clone(), reporter),
    });
    // From here on, events are work; what happened while following is found by the
    // start-up pass below (everything is queued).
    let _term = warm.enter(ctx.clone());
    let mut tasks: JoinSet<&'static str> = JoinSet::new();
    warm.wait_synced().await;
    let t0 = tokio::time::Instant::now();
    gc::refresh(&ctx).await?;
    // Groups before pods (allow-all), policies before membership: a restarted controller
    // never takes a port out of a group it is about to find again.
    netpol::reconcile_groups(&ctx, netpol::Mode::Startup).await?;
    for np in ctx.stores.policies.state() {
        if let (Some(n), Some(m)) = (&np.metadata.namespace, &np.metadata.name)
            && let Err(e) = netpol::reconcile(&ctx, n, m, netpol::Mode::Startup).await
        {
            tracing::warn!(policy = %format!("{n}/{m}"), error = %e, "policy not reconciled yet");
            ctx.queue.add(Key::policy(n, m));
        }
    }
    if let Err(e) = pods::sync_all(&ctx).await {
        tracing::warn!(error = %e, "some ports' groups are not right yet");
    }
    ctx.started.store(true, Ordering::SeqCst);
    {
        let c = ctx.cache();
        tracing::info!(
            ports = c.ports.len(),
            groups = c.groups.len(),
            networks = c.networks.len(),
            pods = ctx.stores.pods.state().len(),
            policies = ctx.stores.policies.state().len(),
            ms = t0.elapsed().as_millis() as u64,
            "start-up pass done"
        );
    }
    ctx.queue.add(Key::Sweep);
    ctx.queue.add(Key::Groups);
    gc::enqueue_everything(&ctx);
    for _ in 0..cfg.workers.max(1) {
        tasks.spawn(worker(ctx.clone()));
    }
    {
        let ctx = ctx.clone();
        tasks.spawn(async move {
            pool_manager::run(ctx).await;
            "pools"
        });
    }
    {
        let ctx = ctx.clone();
        tasks.spawn(async move {
            loop {
                tokio::time::sleep(ctx.cfg.resync_period).await;
                match gc::full_pass(&ctx).await {
                    Ok(()) => tracing::debug!("resync pass done"),
                    Err(e) => tracing::warn!(error = %e, "resync pass failed"),
                }
            }
        });
    }
    let ended = tasks.join_next().await;
    ctx.queue.close();
    Err(Error::NotReady(format!(
        "the {} task ended",
        ended.and_then(|r| r.ok()).unwrap_or("?")
    )))
}

async fn worker(ctx: Arc<Ctx>) -> &'static str {
    while let Some(key) = ctx.queue.next().await {
        ctx.metrics.queue_depth.set(ctx.queue.len() as i64);
        let t0 = tokio::time::Instant::now();
        let r = handle(&ctx, &key).await;
        ctx.metrics
            .reconciled(key.kind(), t0.elapsed().as_secs_f64());
        match r {
            Ok(()) => ctx.queue.done(&key),
            Err(e) => {
                ctx.metrics.failure(key.kind());
                let delay = ctx.queue.failed(&key);
                let retry_in_ms = delay.as_millis() as u64;
                if matches!(e, Error::NotReady(_)) {
                    tracing::info!(%key, reason = %e, retry_in_ms, "waiting");
                    continue;
                }
                tracing::warn!(%key, error = %e, retry_in_ms, "reconcile failed");
                if let Key::Pod { namespace, name } = &key
                    && let Some(p) = ctx.pod_object(namespace, name)
                {
                    ctx.warn(p.as_ref(), "PortNotReady", e.to_string()).await;
                }
            }
        }
    }
    "worker"
}

async fn handle(ctx: &Arc<Ctx>, key: &Key) -> Result<()> {
    match key {
        Key::Pod { namespace, name } => pods::reconcile(ctx, namespace, name).await,
        Key::Namespace(n) => namespaces::reconcile(ctx, n).await,
        Key::Service { namespace, name } => service_lb::reconcile(ctx, namespace, name).await,
        Key::Policy { namespace, name } => {
            netpol::reconcile(ctx, namespace, name, netpol::Mode::Full).await
        }
        Key::Groups => netpol::reconcile_groups(ctx, netpol::Mode::Full).await,
        Key::Sweep => {
            gc::enqueue_orphans(ctx).await?;
            service_lb::sweep(ctx).await
        }
    }
}

fn hash_of(v: &impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// Records what policies see of an object; true when it changed.
fn changed(ctx: &Ctx, key: String, sig: Option<u64>) -> bool {
    let mut s = lock(&ctx.sigs);
    match sig {
        Some(h) => s.insert(key, h) != Some(h),
        None => s.remove(&key).is_some(),
    }
}

fn replan_named_port_policies(ctx: &Ctx) {
    let list: Vec<(String, String)> = lock(&ctx.named_port_policies).iter().cloned().collect();
    for (n, m) in list {
        ctx.queue.add(Key::policy(&n, &m));
    }
}

fn relisted(ctx: &Ctx) {
    if ctx.started.load(Ordering::SeqCst) {
        ctx.queue.add(Key::Sweep);
    }
}

fn on_pod(ctx: &Ctx, ev: watcher::Event<Pod>) {
    let (p, deleted) = match ev {
        watcher::Event::Apply(p) | watcher::Event::InitApply(p) => (p, false),
        watcher::Event::Delete(p) => (p, true),
        watcher::Event::InitDone => return relisted(ctx),
        watcher::Event::Init => return,
    };
    let (Some(ns), Some(name)) = (p.metadata.namespace.as_deref(), p.metadata.name.as_deref())
    else {
        return;
    };
    ctx.queue.add(Key::pod(ns, name));
    let sig = (!deleted)
        .then(|| PodView::from_pod(&p))
        .flatten()
        .map(|v| hash_of(&(&v.uid, &v.labels, &v.named_ports, v.needs_port())));
    if changed(ctx, format!("pod {ns}/{name}"), sig) {
        replan_named_port_policies(ctx);
    }
}

fn on_namespace(ctx: &Ctx, ev: watcher::Event<Namespace>) {
    let (n, deleted) = match ev {
        watcher::Event::Apply(n) | watcher::Event::InitApply(n) => (n, false),
        watcher::Event::Delete(n) => (n, true),
        watcher::Event::InitDone => return relisted(ctx),
        watcher::Event::Init => return,
    };
    let Some(name) = n.metadata.name.as_deref() else {
        return;
    };
    ctx.queue.add(Key::Namespace(name.to_string()));
    let sig = (!deleted).then(|| hash_of(&n.metadata.labels));
    if changed(ctx, format!("ns {name}"), sig) {
        // namespaceSelector peers: every pod of the namespace may move.
        for p in ctx.stores.pods.state() {
            if p.metadata.namespace.as_deref() == Some(name)
                && let Some(pn) = &p.metadata.name
            {
                ctx.queue.add(Key::pod(name, pn));
            }
        }
        replan_named_port_policies(ctx);
    }
}

fn on_policy(ctx: &Ctx, ev: watcher::Event<NetworkPolicy>) {
    match ev {
        watcher::Event::Apply(p) | watcher::Event::InitApply(p) | watcher::Event::Delete(p) => {
            if let (Some(n), Some(m)) =
                (p.metadata.namespace.as_deref(), p.metadata.name.as_deref())
            {
                ctx.queue.add(Key::policy(n, m));
            }
        }
        watcher::Event::InitDone => relisted(ctx),
        watcher::Event::Init => {}
    }
}

fn on_service(ctx: &Ctx, ev: watcher::Event<Service>) {
    match ev {
        watcher::Event::Apply(s) | watcher::Event::InitApply(s) | watcher::Event::Delete(s) => {
            if let (Some(n), Some(m)) =
                (s.metadata.namespace.as_deref(), s.metadata.name.as_deref())
            {
                ctx.queue.add(Key::service(n, m));
            }
        }
        watcher::Event::InitDone => relisted(ctx),
        watcher::Event::Init => {}
    }
}

fn on_slice(ctx: &Ctx, ev: watcher::Event<EndpointSlice>) {
    match ev {
        watcher::Event::Apply(s) | watcher::Event::InitApply(s) | watcher::Event::Delete(s) => {
            let svc = s
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(services::SERVICE_NAME_LABEL));
            if let (Some(n), Some(m)) = (s.metadata.namespace.as_deref(), svc) {
                ctx.queue.add(Key::service(n, m));
            }
        }
        watcher::Event::InitDone | watcher::Event::Init => {}
    }
}

fn on_node(ctx: &Ctx, ev: watcher::Event<Node>) {
    if !matches!(ev, watcher::Event::Init) {
        ctx.pool_trigger.notify_one();
    }
}

/// What `cleanup` deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CleanupReport {
    pub load_balancers: usize,
    pub floating_ips: usize,
    pub ports: usize,
    pub groups: usize,
    pub subnets: usize,
    pub networks: usize,
}

/// Deletes everything the controller made for `cluster` (tear-down: pool ports, pods'
/// ports, groups, namespace networks). Kubernetes is not needed.
pub async fn cleanup(client: kuryr_client::Client, cluster: &str) -> Result<CleanupReport> {
    let mut report = CleanupReport::default();
    // Load balancers first: their VIP ports are in subnets that may go below. A cloud
    // without Octavia has none to delete.
    let octavia = lbaas::Octavia::new(client.clone(), cluster.to_string(), None);
    match octavia.list_all().await {
        Ok(lbs) => {
            for lb in lbs {
                octavia.delete_lb(&lb.id).await?;
                report.load_balancers += 1;
            }
        }
        Err(Error::Neutron(kuryr_client::ClientError::Config(m))) => {
            tracing::info!(reason = %m, "no load balancers to delete");
        }
        Err(e) => return Err(e),
    }
    let n = Neutron::new(client, cluster.to_string(), None);
    // The Services' floating IPs: deleting their VIP ports would only disassociate them.
    for f in n.list_fips(None).await? {
        n.delete_fip(&f.id).await?;
        report.floating_ips += 1;
    }
    let ports = n.list_ports().await?;
    let deleted: Vec<Result<()>> = futures::stream::iter(ports)
        .map(|p| {
            let n = &n;
            async move { n.delete_port(&p.id).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for r in deleted {
        r?;
        report.ports += 1;
    }
    let subnets = n.list_subnets().await?;
    let nets = n.list_networks().await?;
    for net in &nets {
        for p in n.network_ports(&net.id).await? {
            if p.device_owner.starts_with("network:router_interface") {
                for f in &p.fixed_ips {
                    n.remove_router_interface(&p.device_id, &f.subnet_id)
                        .await?;
                }
            }
        }
    }
    for s in &subnets {
        n.delete_subnet(&s.id).await?;
        report.subnets += 1;
    }
    for net in &nets {
        n.delete_network(&net.id).await?;
        report.networks += 1;
    }
    for g in n.list_groups().await? {
        n.delete_group(&g.id).await?;
        report.groups += 1;
    }
    Ok(report)
}
