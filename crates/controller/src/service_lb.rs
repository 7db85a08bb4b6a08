//! The Service reconcile: a Service's load balancer brought to what its spec and
//! EndpointSlices say ([`services::desired`]), writing only the differences.
//!
//! What each Service's load balancer looks like is cached (`Ctx::lbs`); a miss reads
//! it back from Octavia by its tags, and any failure forgets the entry, so the next
//! attempt starts from what Octavia has. Everything made is tagged with the Service
//! (cluster, uid, namespace, name) at creation: a controller killed between two calls
//! finds its half-made load balancer by those tags and finishes or deletes it; the
//! sweep of every full pass deletes load balancers whose Service is gone.
//!
//! `type: LoadBalancer`: a floating IP from `--external-svc-net` on the VIP port, in
//! the Service's `status.loadBalancer.ingress`; `loadBalancerSourceRanges` become
//! the listeners' `allowed_cidrs`, with the cluster's own pod CIDRs added (the ranges
//! are about traffic from outside; pods still use the ClusterIP, which is the same
//! VIP). Node ports are not served (a Warning event says so): traffic to a node's
//! own address never enters a pod network here. `externalTrafficPolicy: Local` needs
//! nothing: members always see the client's own address (no SNAT toward them), and no
//! node is on the path (a Normal event says so).

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::Resource;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use crate::ctx::{Ctx, Key, lock};
use crate::error::Result;
use crate::lbaas::{LbState, RawLb};
use crate::services::{self, LbSpec, NoLb};
use crate::tags;

/// Where Services' addresses come from.
#[derive(Debug, Clone)]
pub struct ServiceNet {
    /// The subnet of VIPs (`--service-subnet`) and its CIDR.
    pub subnet: String,
    pub cidr: IpNet,
    /// The network of floating IPs (`--external-svc-net`).
    pub external: Option<String>,
    /// The pods' CIDRs (always allowed to use a VIP).
    pub internal: Vec<IpNet>,
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
    let state = r?;
    if let Some(svc) = ctx
        .stores
        .services
        .get(&ObjectRef::new(name).within(namespace))
    {
        publish_status(ctx, &svc, state.as_ref()).await?;
    }
    Ok(())
}

/// `status.loadBalancer.ingress` of a `type: LoadBalancer` Service: its floating IP
/// (written only when it differs).
async fn publish_status(ctx: &Ctx, svc: &Service, state: Option<&LbState>) -> Result<()> {
    let is_lb = svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer");
    let want: Vec<String> = match (is_lb, state.and_then(|s| s.fip.as_ref())) {
        (true, Some((_, ip))) => vec![ip.to_string()],
        _ => Vec::new(),
    };
    let have: Vec<String> = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .map(|i| i.iter().filter_map(|x| x.ip.clone()).collect())
        .unwrap_or_default();
    if want == have {
        return Ok(());
    }
    let (Some(ns), Some(name)) = (&svc.metadata.namespace, &svc.metadata.name) else {
        return Ok(());
    };
    let ingress: Vec<_> = want.iter().map(|ip| json!({"ip": ip})).collect();
    let patch = json!({"status": {"loadBalancer": {"ingress": ingress}}});
    Api::<Service>::namespaced(ctx.kube.clone(), ns)
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// What a new load balancer's Service is told about what kuryr does not do.
async fn explain(ctx: &Ctx, net: &ServiceNet, want: &LbSpec) {
    let Some(svc) = ctx
        .stores
        .services
        .get(&ObjectRef::new(&want.name).within(&want.namespace))
    else {
        return;
    };
    let spec = svc.spec.clone().unwrap_or_default();
    let node_ports = services::node_ports(&svc);
    if !node_ports.is_empty() {
        let note = format!(
            "kuryr serves this Service on its ClusterIP{} but not on node ports {node_ports:?}: \
             traffic to a node's address does not enter pod networks (use type LoadBalancer)",
            if want.external.is_some() {
                " and floating IP"
            } else {
                ""
            }
        );
        ctx.warn(svc.as_ref(), "NodePortNotServed", note).await;
    }
    if want.external.is_some() && net.external.is_none() {
        ctx.warn(
            svc.as_ref(),
            "NoExternalNetwork",
            "type LoadBalancer: kuryr controller runs without --external-svc-net, so the \
             Service gets no floating IP"
                .into(),
        )
        .await;
    }
    if spec.external_traffic_policy.as_deref() == Some("Local") {
        let ev = Event {
            type_: EventType::Normal,
            reason: "ExternalTrafficPolicy".into(),
            note: Some(
                "kuryr: members always see the client's own address, and no node is on the \
                 path: Local and Cluster behave the same"
                    .into(),
            ),
            action: "Balance".into(),
            secondary: None,
        };
        let _ = ctx.recorder.publish(&ev, &svc.object_ref(&())).await;
    }
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
        if keep && let Some(mut s) = ctx.octavia.load(&raw).await? {
            let mut fips = ctx.neutron.list_fips(Some(&s.uid)).await?.into_iter();
            s.fip = fips
                .next()
                .and_then(|f| Some((f.id, f.floating_ip_address.parse().ok()?)));
            for extra in fips {
                ctx.neutron.delete_fip(&extra.id).await?;
            }
            found = Some(s);
            continue;
        }
        tracing::info!(lb = %raw.id, service = %key(namespace, name), "deleting a stale load balancer");
        delete_lb(ctx, &raw.id, raw.uid()).await?;
    }
    Ok(found)
}

/// A load balancer and the floating IPs made for its Service (deleting the VIP port
/// would only disassociate them).
async fn delete_lb(ctx: &Ctx, id: &str, uid: Option<&str>) -> Result<()> {
    if let Some(u) = uid {
        for f in ctx.neutron.list_fips(Some(u)).await? {
            ctx.neutron.delete_fip(&f.id).await?;
        }
    }
    ctx.octavia.delete_lb(id).await
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
        delete_lb(ctx, &h.id, Some(&h.uid)).await?;
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
            explain(ctx, net, want).await;
            s
        }
    };
    let allowed = allowed_cidrs(net, want);
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
        match state.listeners.get_mut(k) {
            Some(l) => {
                if l.allowed.as_deref() != allowed.as_deref() {
                    ctx.octavia.set_allowed(l, allowed.as_deref()).await?;
                }
                if let Some(p) = l.pool.as_mut()
                    && !p.matches(pool)
                {
                    ctx.octavia.update_pool(p, pool).await?;
                }
            }
            None => {
                let l = ctx
                    .octavia
                    .create_listener(want, &state.id, *k, allowed.as_deref(), pool)
                    .await?;
                state.listeners.insert(*k, l);
            }
        }
    }
    converge_fip(ctx, net, want, &mut state).await?;
    Ok(Some(state))
}

/// Who may use the listeners: anyone, or the source ranges and the pods.
fn allowed_cidrs(net: &ServiceNet, want: &LbSpec) -> Option<Vec<IpNet>> {
    let ext = want.external.as_ref()?;
    if ext.source_ranges.is_empty() {
        return None;
    }
    let mut v: Vec<IpNet> = ext
        .source_ranges
        .iter()
        .chain(&net.internal)
        .copied()
        .collect();
    v.sort();
    v.dedup();
    Some(v)
}

/// The floating IP a `type: LoadBalancer` Service has on its VIP (and no other).
async fn converge_fip(
    ctx: &Ctx,
    net: &ServiceNet,
    want: &LbSpec,
    state: &mut LbState,
) -> Result<()> {
    let target: Option<(&str, Option<IpAddr>)> = match (&want.external, &net.external) {
        (Some(e), Some(ext_net)) => Some((ext_net, e.address)),
        _ => None,
    };
    if let Some((id, ip)) = &state.fip {
        let keep = target.is_some_and(|(_, asked)| asked.is_none_or(|a| a == *ip));
        if keep {
            return Ok(());
        }
        ctx.neutron.delete_fip(id).await?;
        state.fip = None;
    }
    let Some((ext_net, address)) = target else {
        return Ok(());
    };
    let t = tags::service(
        ctx.neutron.cluster(),
        &want.uid,
        &want.namespace,
        &want.name,
    );
    let f = ctx
        .neutron
        .create_fip(ext_net, &state.vip_port, address, &t)
        .await?;
    let ip: IpAddr = f
        .floating_ip_address
        .parse()
        .map_err(|_| crate::Error::Decode(format!("floating IP {:?}", f.floating_ip_address)))?;
    tracing::info!(service = %key(&want.namespace, &want.name), fip = %ip, "floating IP on the VIP");
    state.fip = Some((f.id, ip));
    Ok(())
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
    // Floating IPs of Services gone (made just before a crash, or whose load balancer
    // was deleted by hand).
    for f in ctx.neutron.list_fips(None).await? {
        if tags::value(&f.tags, tags::SERVICE_UID).is_none_or(|u| !live.contains(u)) {
            tracing::info!(fip = %f.floating_ip_address, "deleting a floating IP whose Service is gone");
            ctx.neutron.delete_fip(&f.id).await?;
        }
    }
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
