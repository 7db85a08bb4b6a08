//! The Service reconcile: a Service's load balancer brought to what its spec and
//! EndpointSlices say ([`services::desired`]), writing only the differences.
//!
//! What each Service's load balancer looks like is cached (`Ctx::lbs`); a miss reads
//! it back from Octavia by its tags, and any failure forgets the entry, so the next
//! attempt starts from what Octavia has. Everything made is tagged with the Service
//! (cluster, uid, namespace, name) at creation: a controller killed between two calls
//! finds its half-made load balancer by those tags and finishes or deletes it; the
//! sweep of every full pass deletes load balancers whose Service is gone.

use std::collections::HashSet;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::ObjectRef;

use crate::ctx::{Ctx, Key, lock};
use crate::error::Result;
use crate::lbaas::{LbState, RawLb};
use crate::services::{self, LbSpec, NoLb};

/// The subnet Service VIPs are made in (`--service-subnet`).
#[derive(Debug, Clone)]
pub struct ServiceNet {
    pub subnet: String,
    pub cidr: IpNet,
}

fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// What the Service `namespace/name` should have, with the slices of the store.
fn wanted(
    ctx: &Ctx,
    net: &ServiceNet,
    namespace: &str,
    name: &str,
) -> (Option<LbSpec>, Option<(Arc<Service>, String)>) {
    let Some(svc) = ctx
        .stores
        .services
        .get(&ObjectRef::new(name).within(namespace))
    else {
        return (None, None);
    };
    let slices = ctx.stores.slices.state();
    let refs: Vec<&EndpointSlice> = slices.iter().map(|s| s.as_ref()).collect();
    match services::desired(&svc, &refs, &net.cidr) {
        Ok(lb) => (Some(lb), None),
        Err(NoLb::NotBalanced) => (None, None),
        Err(NoLb::Refused(why)) => (None, Some((svc, why))),
    }
}

pub async fn reconcile(ctx: &Arc<Ctx>, namespace: &str, name: &str) -> Result<()> {
    let Some(net) = ctx.services.clone() else {
        return Ok(());
    };
    let k = key(namespace, name);
    let _g = ctx.locks.lock(&format!("svc:{k}")).await;
    let (want, refused) = wanted(ctx, &net, namespace, name);
    if let Some((svc, why)) = refused {
        ctx.warn(svc.as_ref(), "LoadBalancerRefused", why).await;
    }
    let r = converge(ctx, &net, namespace, name, want.as_ref()).await;
    match &r {
        Ok(state) => {
            lock(&ctx.lbs).insert(k, state.clone());
        }
        Err(_) => {
            lock(&ctx.lbs).remove(&k);
        }
    }
    r.map(|_| ())
}

/// What Octavia has for the Service (cached, else read back by the Service's tags;
/// extra load balancers, from a crash between a create and its record, go).
async fn current(
    ctx: &Ctx,
    namespace: &str,
    name: &str,
    want: Option<&LbSpec>,
) -> Result<Option<LbState>> {
    if let Some(s) = lock(&ctx.lbs).get(&key(namespace, name)) {
        return Ok(s.clone());
    }
    let mut found = None;
    for raw in ctx.octavia.find(namespace, name).await? {
        let keep = found.is_none()
            && want.is_some_and(|w| {
                raw.uid() == Some(w.uid.as_str())
                    && raw.vip_address.as_deref() == Some(w.vip.to_string().as_str())
            });
        if keep && let Some(s) = ctx.octavia.load(&raw).await? {
            found = Some(s);
            continue;
        }
        tracing::info!(lb = %raw.id, service = %key(namespace, name), "deleting a stale load balancer");
        ctx.octavia.delete_lb(&raw.id).await?;
    }
    Ok(found)
}

async fn converge(
    ctx: &Ctx,
    net: &ServiceNet,
    namespace: &str,
    name: &str,
    want: Option<&LbSpec>,
) -> Result<Option<LbState>> {
    let mut have = current(ctx, namespace, name, want).await?;
    if let Some(h) = &have
        && want.is_none_or(|w| w.uid != h.uid || w.vip != h.vip)
    {
        tracing::info!(lb = %h.id, service = %key(namespace, name), "deleting the Service's load balancer");
        ctx.octavia.delete_lb(&h.id).await?;
        have = None;
    }
    let Some(want) = want else {
        return Ok(None);
    };
    let mut state = match have {
        Some(s) => s,
        None => {
            let s = ctx.octavia.create_lb(want, &net.subnet).await?;
            tracing::info!(lb = %s.id, service = %key(namespace, name), vip = %s.vip, "load balancer made");
            s
        }
    };
    // Listeners no port asks for, and any left without its pool by a crash, go first.
    let stale: Vec<_> = state
        .listeners
        .iter()
        .filter(|(k, l)| !want.listeners.contains_key(k) || l.pool.is_none())
        .map(|(k, _)| *k)
        .collect();
    for k in stale {
        if let Some(l) = state.listeners.remove(&k) {
            if let Some(p) = &l.pool {
                ctx.octavia.delete_pool(&p.id).await?;
            }
            ctx.octavia.delete_listener(&l.id).await?;
        }
    }
    for (k, pool) in &want.listeners {
        match state.listeners.get_mut(k).and_then(|l| l.pool.as_mut()) {
            Some(p) if p.matches(pool) => {}
            Some(p) => ctx.octavia.update_pool(p, pool).await?,
            None => {
                let l = ctx
                    .octavia
                    .create_listener(want, &state.id, *k, pool)
                    .await?;
                state.listeners.insert(*k, l);
            }
        }
    }
    Ok(Some(state))
}

/// Every load balancer of the cluster whose Service is gone (or that names none) is
/// handed to its Service's reconcile, or deleted when it names no Service; cached
/// entries that disagree with Octavia are forgotten.
pub async fn sweep(ctx: &Arc<Ctx>) -> Result<()> {
    if ctx.services.is_none() {
        return Ok(());
    }
    let all: Vec<RawLb> = ctx.octavia.list_all().await?;
    let live: HashSet<String> = ctx
        .stores
        .services
        .state()
        .iter()
        .filter_map(|s| s.metadata.uid.clone())
        .collect();
    let mut queued = 0usize;
    for lb in &all {
        let Some((ns, name)) = lb.service() else {
            tracing::info!(lb = %lb.id, "deleting a load balancer that names no Service");
            ctx.octavia.delete_lb(&lb.id).await?;
            continue;
        };
        let k = key(ns, name);
        let cached_id = lock(&ctx.lbs)
            .get(&k)
            .map(|s| s.as_ref().map(|s| s.id.clone()));
        if cached_id
            .as_ref()
            .is_some_and(|id| id.as_deref() != Some(lb.id.as_str()))
        {
            lock(&ctx.lbs).remove(&k);
        }
        if lb.uid().is_none_or(|u| !live.contains(u)) || cached_id.is_none() {
            ctx.queue.add(Key::service(ns, name));
            queued += 1;
        }
    }
    tracing::debug!(load_balancers = all.len(), queued, "load balancers swept");
    Ok(())
}
