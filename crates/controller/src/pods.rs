//! Pods: each scheduled pod (not hostNetwork, not finished) gets a port from its node's
//! pool, with the security groups its labels put it in; a pod that is gone gives its
//! port back to the pool (or the port is deleted). Ownership is the port's device_id
//! (the pod uid): no finalizer, so a pod never waits for an extra round trip before its
//! port is taken, and whatever dies when, the next reconcile of the name (or the full
//! pass, by uid) finds the port.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::time::Instant;

use crate::cache::{PortOwner, PortRec};
use crate::ctx::{Ctx, Key, NetMode};
use crate::error::{Error, Result};
use crate::metrics::NodeLabels;
use crate::pools;
use crate::tags;
use crate::view::{PORT_ANNOTATION, PodView};

/// Port updates in flight at once when a policy or label change moves many ports.
const FAN_OUT: usize = 32;

pub fn port_lock(id: &str) -> String {
    format!("port:{id}")
}

pub fn pool_lock(node: &str, network: &str) -> String {
    format!("pool:{node} {network}")
}

pub async fn reconcile(ctx: &Arc<Ctx>, namespace: &str, name: &str) -> Result<()> {
    let pod = ctx.pod(namespace, name);
    let live = pod.clone().filter(PodView::needs_port);
    // Ports of earlier pods of this name, or of this one if it needs none any more.
    // (port, the pod uid holding it when seen)
    let stale: BTreeSet<(String, String)> = {
        let c = ctx.cache();
        let mut s: BTreeSet<(String, String)> = c
            .ports_named(namespace, name)
            .into_iter()
            .filter(|p| live.as_ref().is_none_or(|l| l.uid != p.device_id))
            .map(|p| (p.id, p.device_id))
            .collect();
        if let Some(p) = &pod
            && !p.needs_port()
        {
            s.extend(c.pod_ports(&p.uid).into_iter().map(|p| (p.id, p.device_id)));
        }
        s
    };
    for (id, holder) in stale {
        release(ctx, &id, &holder).await?;
    }
    let Some(pod) = live else {
        return Ok(());
    };
    let Some(node) = pod.node.clone() else {
        return Ok(());
    };
    let network = network_for(ctx, &pod.namespace).await?;
    let mut mine = ctx.cache().pod_ports(&pod.uid);
    // Several (a crash between two takes): keep the annotated one, else the lowest id.
    mine.sort_by_key(|p| {
        (
            pod.port_annotation.as_deref() != Some(p.id.as_str()),
            p.id.clone(),
        )
    });
    for extra in mine.iter().skip(1) {
        release(ctx, &extra.id, &extra.device_id).await?;
    }
    let port_id = match mine.first() {
        Some(p) => {
            fix_port(ctx, &pod, &p.id).await?;
            p.id.clone()
        }
        None => assign(ctx, &pod, &node, &network).await?,
    };
    if pod.port_annotation.as_deref() != Some(port_id.as_str()) {
        let api: Api<Pod> = Api::namespaced(ctx.kube.clone(), namespace);
        match ctx
            .annotate(api, name, &[(PORT_ANNOTATION, &port_id)])
            .await
        {
            Ok(()) => {}
            // Deleted meanwhile: the next reconcile of the name releases the port.
            Err(e) if crate::error::kube_status(&e) == Some(404) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The network of a namespace's pods.
async fn network_for(ctx: &Arc<Ctx>, namespace: &str) -> Result<String> {
    match &ctx.net {
        NetMode::Single { network } => Ok(network.clone()),
        NetMode::PerNamespace { .. } => crate::namespaces::ensure(ctx, namespace)
            .await
            .map(|(net, _)| net),
    }
}

/// The groups the pod's port should have, sorted.
pub fn desired(ctx: &Ctx, pod: &PodView) -> Vec<String> {
    let ns = ctx.ns_labels();
    let pending = ctx.pending_policies();
    ctx.index()
        .desired(pod, &ns, &pending)
        .into_iter()
        .collect()
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v.dedup();
    v
}

/// Gives the pod a port from its pool (making a batch first if the pool is empty).
async fn assign(ctx: &Arc<Ctx>, pod: &PodView, node: &str, network: &str) -> Result<String> {
    let t0 = Instant::now();
    let mut hit = true;
    let mut last_err = None;
    for _ in 0..5 {
        let taken = ctx.cache().take(node, network);
        let Some(port) = taken else {
            hit = false;
            fill_now(ctx, node, network).await?;
            continue;
        };
        let _g = ctx.locks.lock(&port_lock(&port.id)).await;
        let groups = desired(ctx, pod);
        match ctx
            .neutron
            .assign_port(&port.id, &pod.uid, &pod.namespace, &pod.name, &groups)
            .await
        {
            Ok(mut p) => {
                // The port is the pod's from here on (device_id: the agent binds it now):
                // recorded before the tags.
                let elapsed = t0.elapsed();
                {
                    let mut c = ctx.cache();
                    let s = c.tick();
                    c.ports.put(&p.id, p.clone(), s);
                }
                ctx.pool_used(node, network);
                ctx.pool_trigger.notify_one();
                ctx.metrics.assign_seconds.observe(elapsed.as_secs_f64());
                let labels = NodeLabels { node: node.into() };
                if hit {
                    ctx.metrics.pool_hits.get_or_create(&labels).inc();
                } else {
                    ctx.metrics.pool_misses.get_or_create(&labels).inc();
                }
                tracing::info!(
                    pod = %pod.key(),
                    port = %p.id,
                    node,
                    ip = %p.addresses(),
                    pool = if hit { "hit" } else { "miss" },
                    ms = format!("{:.1}", elapsed.as_secs_f64() * 1000.0),
                    "port assigned"
                );
                let t = tags::pod_port(ctx.neutron.cluster(), &pod.uid, &pod.namespace, &pod.name);
                ctx.neutron.set_port_tags(&p.id, &t).await?;
                p.tags = t;
                let mut c = ctx.cache();
                let s = c.tick();
                c.ports.put(&p.id, p.clone(), s);
                return Ok(p.id);
            }
            Err(e) if e.is_not_found() => {
                // Deleted behind our back: forget it and take another.
                let mut c = ctx.cache();
                let s = c.tick();
                c.ports.remove(&port.id, s);
                last_err = Some(e);
            }
            Err(e) => {
                let mut c = ctx.cache();
                let s = c.tick();
                c.ports.release(&port.id, s);
                return Err(e);
            }
        }
    }
    Err(last_err
        .unwrap_or_else(|| Error::NotReady(format!("no port could be taken on node {node}"))))
}

/// Makes a batch for a pod that found its pool empty (one batch for all the pods that
/// find it empty at once: they wait on the pool's lock, then take from it).
async fn fill_now(ctx: &Arc<Ctx>, node: &str, network: &str) -> Result<()> {
    let _g = ctx.locks.lock(&pool_lock(node, network)).await;
    if ctx.cache().available(node, network) > 0 {
        return Ok(());
    }
    let n = pools::sync_batch(&ctx.cfg.pool);
    create_pool_ports(ctx, node, network, n).await
}

/// One bulk create, recorded in the cache.
pub async fn create_pool_ports(ctx: &Ctx, node: &str, network: &str, n: usize) -> Result<()> {
    let ports = ctx.neutron.create_pool_ports(node, network, n).await?;
    ctx.metrics.ports_created.inc_by(ports.len() as u64);
    tracing::debug!(node, network, n = ports.len(), "pool ports made");
    ctx.pool_used(node, network);
    let mut c = ctx.cache();
    for p in ports {
        let s = c.tick();
        c.ports.insert_new(&p.id.clone(), p, s);
    }
    Ok(())
}

/// Tags and groups of a port the pod already has (a crash may have left the tags
/// behind; labels and policies move groups).
async fn fix_port(ctx: &Arc<Ctx>, pod: &PodView, id: &str) -> Result<()> {
    let _g = ctx.locks.lock(&port_lock(id)).await;
    let Some(port) = ctx.cache().ports.get(id).cloned() else {
        return Ok(());
    };
    let want_tags = tags::pod_port(ctx.neutron.cluster(), &pod.uid, &pod.namespace, &pod.name);
    if !tags::same(&port.tags, &want_tags) {
        ctx.neutron.set_port_tags(id, &want_tags).await?;
        let mut c = ctx.cache();
        if let Some(mut p) = c.ports.get(id).cloned() {
            p.tags = want_tags;
            let s = c.tick();
            c.ports.put(id, p, s);
        }
    }
    set_groups_locked(ctx, pod, id).await
}

/// Brings one port's groups to what its pod's labels and the policies say.
pub async fn sync_groups(ctx: &Ctx, pod: &PodView, id: &str) -> Result<()> {
    let _g = ctx.locks.lock(&port_lock(id)).await;
    set_groups_locked(ctx, pod, id).await
}

async fn set_groups_locked(ctx: &Ctx, pod: &PodView, id: &str) -> Result<()> {
    let Some(current) = ctx
        .cache()
        .ports
        .get(id)
        .map(|p| sorted(&p.security_groups))
    else {
        return Ok(());
    };
    let want = desired(ctx, pod);
    if current == want {
        return Ok(());
    }
    match ctx.neutron.set_port_groups(id, &want).await {
        Ok(p) => {
            ctx.metrics.port_group_updates.inc();
            tracing::debug!(pod = %pod.key(), port = id, groups = ?want, "port groups updated");
            let mut c = ctx.cache();
            let s = c.tick();
            // Tags are not in every answer's shape the same way: keep ours.
            let tags = c.ports.get(id).map(|o| o.tags.clone()).unwrap_or_default();
            c.ports.put(id, PortRec { tags, ..p }, s);
            Ok(())
        }
        Err(e) if e.is_not_found() => {
            // Deleted behind our back: the pod's next reconcile gives it another.
            {
                let mut c = ctx.cache();
                let s = c.tick();
                c.ports.remove(id, s);
            }
            ctx.queue.add(Key::pod(&pod.namespace, &pod.name));
            Err(Error::NotReady(format!(
                "port {id} of pod {} is gone from Neutron",
                pod.key()
            )))
        }
        Err(e) => Err(e),
    }
}

/// Every assigned port whose groups differ from what they should be is updated (only
/// those: a policy change writes only the ports it moves). Ports of pods that are gone
/// are handed to their pod's reconcile.
pub async fn sync_all(ctx: &Arc<Ctx>) -> Result<()> {
    let pods: HashMap<String, PodView> = ctx
        .pods()
        .into_iter()
        .filter(PodView::needs_port)
        .map(|p| (p.uid.clone(), p))
        .collect();
    let ns = ctx.ns_labels();
    let pending = ctx.pending_policies();
    let mut work = Vec::new();
    {
        let idx = ctx.index();
        let c = ctx.cache();
        for (p, _) in c.ports.iter() {
            if p.device_id.is_empty() {
                continue;
            }
            match pods.get(&p.device_id) {
                Some(pod) => {
                    let want: Vec<String> = idx.desired(pod, &ns, &pending).into_iter().collect();
                    if sorted(&p.security_groups) != want {
                        work.push((pod.clone(), p.id.clone()));
                    }
                }
                None => {
                    if let PortOwner::Pod {
                        namespace: Some(n),
                        name: Some(m),
                        ..
                    } = p.owner()
                    {
                        ctx.queue.add(Key::pod(&n, &m));
                    }
                }
            }
        }
    }
    let results: Vec<Result<()>> = futures::stream::iter(work)
        .map(|(pod, id)| async move { sync_groups(ctx, &pod, &id).await })
        .buffer_unordered(FAN_OUT)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Whether a network still takes pods' ports.
pub fn network_alive(ctx: &Ctx, network: &str) -> bool {
    match &ctx.net {
        NetMode::Single { network: n } => n == network,
        NetMode::PerNamespace { .. } => {
            let ns = ctx
                .cache()
                .networks
                .get(network)
                .and_then(|n| n.namespace().map(str::to_string));
            ns.is_some_and(|ns| {
                ctx.stores
                    .namespaces
                    .get(&kube::runtime::reflector::ObjectRef::new(&ns))
                    .is_some_and(|n| n.metadata.deletion_timestamp.is_none())
            })
        }
    }
}

/// A pod is done with this port: back to its pool, or deleted (pool at max, node or
/// network gone). Only while `holder` (the pod uid the caller saw holding it) still
/// does: between that look and this port's lock, another reconcile may have taken the
/// port for a new pod (a pool port reused at once), which must keep it.
pub async fn release(ctx: &Ctx, id: &str, holder: &str) -> Result<()> {
    let _g = ctx.locks.lock(&port_lock(id)).await;
    let (port, keep) = {
        let Some(port) = ctx.cache().ports.get(id).cloned() else {
            return Ok(());
        };
        if port.device_id.is_empty() || port.device_id != holder {
            return Ok(());
        }
        let node_ok = ctx.node_exists(&port.host);
        let net_ok = network_alive(ctx, &port.network_id);
        let mut c = ctx.cache();
        let available = c.available(&port.host, &port.network_id);
        let keep = pools::keep_released(&ctx.cfg.pool, available, node_ok, net_ok);
        let s = c.tick();
        if !c.ports.claim(id, s) {
            // Someone else is on it (a deletion of the whole network).
            return Err(Error::NotReady(format!("port {id} is busy")));
        }
        (port, keep)
    };
    let result = if keep {
        recycle(ctx, &port).await
    } else {
        ctx.neutron.delete_port(id).await.map(|()| {
            ctx.metrics.ports_deleted.inc();
            let mut c = ctx.cache();
            let s = c.tick();
            c.ports.remove(id, s);
        })
    };
    if let Err(e) = result {
        let mut c = ctx.cache();
        let s = c.tick();
        c.ports.release(id, s);
        return Err(e);
    }
    tracing::info!(
        port = id,
        owner = %port.name,
        node = %port.host,
        to = if keep { "pool" } else { "deleted" },
        "port released"
    );
    Ok(())
}

async fn recycle(ctx: &Ctx, port: &PortRec) -> Result<()> {
    let mut p = match ctx.neutron.reset_port(&port.id).await {
        Ok(p) => p,
        Err(e) if e.is_not_found() => {
            let mut c = ctx.cache();
            let s = c.tick();
            c.ports.remove(&port.id, s);
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let t = tags::pool_port(ctx.neutron.cluster());
    // If the tags fail, the cache still says the pod's: the retry resets again (the
    // same update), and a listing would show it as a pool port (device_id "").
    ctx.neutron.set_port_tags(&p.id, &t).await?;
    p.tags = t;
    let mut c = ctx.cache();
    let s = c.tick();
    c.ports.put(&p.id, p.clone(), s);
    drop(c);
    ctx.pool_used(&p.host, &p.network_id);
    // The pool's size changed (its gauge, its max).
    ctx.pool_trigger.notify_one();
    Ok(())
}
