//! The reflectors, kept warm on every replica, leader or not: a follower that takes
//! over starts from synced caches instead of listing every pod, Service and slice
//! first. Their events become work only while this replica leads (the current
//! term's context is installed here for as long as the term runs).

use std::fmt::Debug;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::ctx::{Ctx, Stores};

pub struct Warm {
    pub stores: Stores,
    /// Services and EndpointSlices are watched (kuryr balances Services).
    pub balancing: bool,
    term: RwLock<Option<Arc<Ctx>>>,
    /// Every store has been listed once (`/readyz`). A store's own readiness can be
    /// awaited once only: this is what everyone else waits on.
    synced: watch::Sender<bool>,
}

/// Uninstalls the term's context when the term ends (or is dropped).
pub struct TermGuard<'a>(&'a Warm);

impl Drop for TermGuard<'_> {
    fn drop(&mut self) {
        *self.0.term.write().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// What an event of kind `K` becomes while leading.
pub type Handler<K> = fn(&Ctx, watcher::Event<K>);

pub struct Handlers {
    pub pod: Handler<Pod>,
    pub namespace: Handler<Namespace>,
    pub policy: Handler<NetworkPolicy>,
    pub node: Handler<Node>,
    pub service: Handler<Service>,
    pub slice: Handler<EndpointSlice>,
}

impl Warm {
    /// Starts the watches (in `tasks`, which must be polled or kept alive).
    pub fn start(
        kube: &kube::Client,
        balancing: bool,
        on: Handlers,
        tasks: &mut JoinSet<&'static str>,
    ) -> Arc<Warm> {
        let (pods_r, pods_w) = reflector::store::<Pod>();
        let (ns_r, ns_w) = reflector::store::<Namespace>();
        let (np_r, np_w) = reflector::store::<NetworkPolicy>();
        let (nodes_r, nodes_w) = reflector::store::<Node>();
        let (svc_r, svc_w) = reflector::store::<Service>();
        let (slices_r, slices_w) = reflector::store::<EndpointSlice>();
        let warm = Arc::new(Warm {
            stores: Stores {
                pods: pods_r,
                namespaces: ns_r,
                policies: np_r,
                nodes: nodes_r,
                services: svc_r,
                slices: slices_r,
            },
            balancing,
            term: RwLock::new(None),
            synced: watch::Sender::new(false),
        });
        let k = kube;
        tasks.spawn(watch(
            Api::all(k.clone()),
            pods_w,
            warm.clone(),
            on.pod,
            "pods",
        ));
        tasks.spawn(watch(
            Api::all(k.clone()),
            ns_w,
            warm.clone(),
            on.namespace,
            "namespaces",
        ));
        tasks.spawn(watch(
            Api::all(k.clone()),
            np_w,
            warm.clone(),
            on.policy,
            "networkpolicies",
        ));
        tasks.spawn(watch(
            Api::all(k.clone()),
            nodes_w,
            warm.clone(),
            on.node,
            "nodes",
        ));
        if balancing {
            tasks.spawn(watch(
                Api::all(k.clone()),
                svc_w,
                warm.clone(),
                on.service,
                "services",
            ));
            tasks.spawn(watch(
                Api::all(k.clone()),
                slices_w,
                warm.clone(),
                on.slice,
                "endpointslices",
            ));
        }
        {
            let warm = warm.clone();
            tasks.spawn(async move {
                if warm.stores_ready().await.is_ok() {
                    warm.synced.send_replace(true);
                    tracing::info!("caches synced");
                }
                // Done: the set keeps running the watches.
                std::future::pending::<()>().await;
                "sync"
            });
        }
        warm
    }

    /// Waits until every store has been listed once.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    async fn stores_ready(&self) -> Result<(), reflector::store::WriterDropped> {
        let s = &self.stores;
        s.pods.wait_until_ready().await?;
        s.namespaces.wait_until_ready().await?;
        s.policies.wait_until_ready().await?;
        s.nodes.wait_until_ready().await?;
        if self.balancing {
            s.services.wait_until_ready().await?;
            s.slices.wait_until_ready().await?;
        }
        Ok(())
    }

    /// Makes `ctx` the one events go to, until the guard drops.
    pub fn enter(&self, ctx: Arc<Ctx>) -> TermGuard<'_> {
        *self.term.write().unwrap_or_else(|e| e.into_inner()) = Some(ctx);
        TermGuard(self)
    }

    fn active(&self) -> Option<Arc<Ctx>> {
        self.term.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A reflector whose events become keys while a term runs.
async fn watch<K>(
    api: Api<K>,
    writer: Writer<K>,
    warm: Arc<Warm>,
    on: Handler<K>,
    what: &'static str,
) -> &'static str
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    futures::pin_mut!(stream);
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(ev) => {
                if let Some(ctx) = warm.active() {
                    on(&ctx, ev);
                }
            }
            Err(e) => tracing::warn!(what, error = %e, "watch error (retried)"),
        }
    }
    what
}
