//! Namespaces (namespace-subnet mode): each namespace gets a network `ns/<name>-net`
//! and a subnet `ns/<name>-subnet` from the subnet pool, attached to the pod router; the
//! namespace is annotated with their ids. When the namespace is gone (after its pods:
//! Kubernetes deletes them first), its ports, router interface, subnet and network go.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;

use crate::cache::{NetRec, SubnetRec};
use crate::ctx::{Ctx, NetMode, lock};
use crate::error::{Error, Result};
use crate::pods;
use crate::tags;
use crate::view::{NETWORK_ANNOTATION, SUBNET_ANNOTATION};

fn ns_lock(ns: &str) -> String {
    format!("ns:{ns}")
}

/// The namespace's network and subnet (lowest id when a crash left two).
fn lookup(ctx: &Ctx, ns: &str) -> (Option<NetRec>, Option<SubnetRec>) {
    let c = ctx.cache();
    let net = c
        .networks
        .values()
        .filter(|n| n.namespace() == Some(ns))
        .min_by(|a, b| a.id.cmp(&b.id))
        .cloned();
    let subnet = net.as_ref().and_then(|n| {
        c.subnets
            .values()
            .filter(|s| s.network_id == n.id && s.namespace() == Some(ns))
            .min_by(|a, b| a.id.cmp(&b.id))
            .cloned()
    });
    (net, subnet)
}

/// Makes (or finds) the namespace's network, subnet and router interface.
pub async fn ensure(ctx: &Arc<Ctx>, ns: &str) -> Result<(String, String)> {
    let NetMode::PerNamespace {
        subnetpool,
        ip_version,
        router,
    } = &ctx.net
    else {
        return Err(Error::Config("not in namespace-subnet mode".into()));
    };
    // Fast path: a pod of a ready namespace takes no lock.
    if let (Some(n), Some(s)) = lookup(ctx, ns)
        && lock(&ctx.attached).contains(&s.id)
    {
        return Ok((n.id, s.id));
    }
    let _g = ctx.locks.lock(&ns_lock(ns)).await;
    if !ctx.namespace_exists(ns) {
        return Err(Error::NotReady(format!(
            "namespace {ns} is not known (yet)"
        )));
    }
    let (net, subnet) = lookup(ctx, ns);
    let t = tags::namespace(ctx.neutron.cluster(), ns);
    let net = match net {
        Some(n) => n,
        None => {
            let n = ctx
                .neutron
                .create_network(&format!("ns/{ns}-net"), &t)
                .await?;
            tracing::info!(namespace = ns, network = %n.id, "namespace network made");
            let mut c = ctx.cache();
            let s = c.tick();
            c.networks.put(&n.id.clone(), n.clone(), s);
            n
        }
    };
    let subnet = match subnet {
        Some(s) => s,
        None => {
            let s = ctx
                .neutron
                .create_subnet(
                    &net.id,
                    &format!("ns/{ns}-subnet"),
                    subnetpool,
                    *ip_version,
                    &t,
                )
                .await?;
            tracing::info!(namespace = ns, subnet = %s.id, cidr = %s.cidr, "namespace subnet made");
            let mut c = ctx.cache();
            let st = c.tick();
            c.subnets.put(&s.id.clone(), s.clone(), st);
            s
        }
    };
    if !lock(&ctx.attached).contains(&subnet.id) {
        if !ctx
            .neutron
            .router_has_interface(router, &net.id, &subnet.id)
            .await?
        {
            ctx.neutron.add_router_interface(router, &subnet.id).await?;
            tracing::info!(namespace = ns, %router, subnet = %subnet.id, "subnet attached to the router");
        }
        lock(&ctx.attached).insert(subnet.id.clone());
    }
    Ok((net.id, subnet.id))
}

pub async fn reconcile(ctx: &Arc<Ctx>, ns: &str) -> Result<()> {
    let obj = ctx
        .stores
        .namespaces
        .get(&kube::runtime::reflector::ObjectRef::new(ns));
    let per_ns = matches!(ctx.net, NetMode::PerNamespace { .. });
    match obj {
        Some(o) if per_ns => {
            if o.metadata.deletion_timestamp.is_some() {
                // Terminating: its pods are going; the network goes after the namespace.
                return Ok(());
            }
            let (net, subnet) = ensure(ctx, ns).await?;
            let ann = o.metadata.annotations.as_ref();
            let have = |k: &str| ann.and_then(|a| a.get(k)).map(String::as_str);
            if have(NETWORK_ANNOTATION) != Some(net.as_str())
                || have(SUBNET_ANNOTATION) != Some(subnet.as_str())
            {
                let api: Api<Namespace> = Api::all(ctx.kube.clone());
                match ctx
                    .annotate(
                        api,
                        ns,
                        &[(NETWORK_ANNOTATION, &net), (SUBNET_ANNOTATION, &subnet)],
                    )
                    .await
                {
                    Ok(()) => {}
                    Err(e) if crate::error::kube_status(&e) == Some(404) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        }
        // Gone, or single-network mode (leftovers of an earlier namespace-subnet run).
        _ => teardown(ctx, ns).await,
    }
}

/// Deletes the namespace's ports, router interfaces, subnets and networks.
async fn teardown(ctx: &Arc<Ctx>, ns: &str) -> Result<()> {
    let _g = ctx.locks.lock(&ns_lock(ns)).await;
    let (nets, subnets): (Vec<NetRec>, Vec<SubnetRec>) = {
        let c = ctx.cache();
        (
            c.networks
                .values()
                .filter(|n| n.namespace() == Some(ns))
                .cloned()
                .collect(),
            c.subnets
                .values()
                .filter(|s| s.namespace() == Some(ns))
                .cloned()
                .collect(),
        )
    };
    if nets.is_empty() && subnets.is_empty() {
        return Ok(());
    }
    let live: std::collections::HashSet<String> = ctx
        .pods()
        .into_iter()
        .filter(|p| p.needs_port())
        .map(|p| p.uid)
        .collect();
    for net in &nets {
        let ports = ctx.neutron.network_ports(&net.id).await?;
        if let Some(p) = ports.iter().find(|p| live.contains(&p.device_id)) {
            return Err(Error::NotReady(format!(
                "namespace {ns}: pod port {} ({}) still on network {}",
                p.id, p.name, net.id
            )));
        }
        let cluster = tags::tag(tags::CLUSTER, ctx.neutron.cluster());
        for p in &ports {
            if p.device_owner.starts_with("network:router_interface") {
                for f in &p.fixed_ips {
                    ctx.neutron
                        .remove_router_interface(&p.device_id, &f.subnet_id)
                        .await?;
                }
            } else if tags::has(&p.tags, &cluster) {
                let _pg = ctx.locks.lock(&pods::port_lock(&p.id)).await;
                ctx.neutron.delete_port(&p.id).await?;
                ctx.metrics.ports_deleted.inc();
                let mut c = ctx.cache();
                let s = c.tick();
                c.ports.remove(&p.id, s);
            }
            // Others (DHCP...) go with the network, or block it (then retried).
        }
    }
    for s in &subnets {
        ctx.neutron.delete_subnet(&s.id).await?;
        lock(&ctx.attached).remove(&s.id);
        let mut c = ctx.cache();
        let st = c.tick();
        c.subnets.remove(&s.id, st);
    }
    for n in &nets {
        ctx.neutron.delete_network(&n.id).await?;
        let mut c = ctx.cache();
        let s = c.tick();
        c.networks.remove(&n.id, s);
        tracing::info!(namespace = ns, network = %n.id, "namespace network deleted");
    }
    Ok(())
}
