//! Garbage collection by ownership. Every object the controller makes carries the
//! cluster tag and names its owner (a pod uid in device_id, a policy uid, a namespace);
//! a full pass lists them all again, and every object whose owner is gone is handed to
//! the reconcile of that owner's key, which recycles or deletes it. Run at start and
//! every resync period, so nothing leaks whatever was killed when.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::cache::{Cache, GroupKind, PortOwner};
use crate::ctx::{Ctx, Key, NetMode};
use crate::error::Result;
use crate::pods;

/// The Kubernetes objects that own things.
#[derive(Debug, Default)]
pub struct Live {
    /// Pods that have (or get) a port, by uid.
    pub pods: HashSet<String>,
    pub policies: HashSet<String>,
    pub namespaces: HashSet<String>,
    pub per_namespace: bool,
}

/// What the pass found without an owner.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Orphans {
    /// Pod names whose reconcile releases their ports.
    pub pods: BTreeSet<(String, String)>,
    /// Ports of pods gone that name no pod (neither tags nor name), with the uid that
    /// held them: released directly.
    pub ports: BTreeSet<(String, String)>,
    /// Policy names whose reconcile deletes their stale groups.
    pub policies: BTreeSet<(String, String)>,
    /// Groups the groups reconcile deletes.
    pub groups: bool,
    /// Namespaces whose network goes.
    pub namespaces: BTreeSet<String>,
}

pub fn orphans(cache: &Cache, live: &Live) -> Orphans {
    let mut o = Orphans::default();
    for (p, busy) in cache.ports.iter() {
        if busy {
            continue;
        }
        if let PortOwner::Pod {
            uid,
            namespace,
            name,
        } = p.owner()
            && !live.pods.contains(&uid)
        {
            match (namespace, name) {
                (Some(n), Some(m)) => {
                    o.pods.insert((n, m));
                }
                _ => {
                    o.ports.insert((p.id.clone(), p.device_id.clone()));
                }
            }
        }
    }
    for g in cache.groups.values() {
        match g.kind() {
            GroupKind::Policy {
                uid,
                namespace,
                name,
                ..
            } if !live.policies.contains(&uid) => {
                if let (Some(n), Some(m)) = (namespace, name) {
                    o.policies.insert((n, m));
                }
                o.groups = true;
            }
            GroupKind::Unknown => o.groups = true,
            _ => {}
        }
    }
    let owned = cache
        .networks
        .values()
        .filter_map(|n| n.namespace())
        .chain(cache.subnets.values().filter_map(|s| s.namespace()));
    for ns in owned {
        if !live.per_namespace || !live.namespaces.contains(ns) {
            o.namespaces.insert(ns.to_string());
        }
    }
    o
}

fn live(ctx: &Ctx) -> Live {
    Live {
        pods: ctx
            .pods()
            .into_iter()
            .filter(|p| p.needs_port())
            .map(|p| p.uid)
            .collect(),
        policies: ctx
            .stores
            .policies
            .state()
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect(),
        namespaces: ctx
            .stores
            .namespaces
            .state()
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect(),
        per_namespace: matches!(ctx.net, NetMode::PerNamespace { .. }),
    }
}

/// Lists everything of the cluster in Neutron again and merges it into the cache.
pub async fn refresh(ctx: &Ctx) -> Result<()> {
    let start = ctx.cache().tick();
    let n = &ctx.neutron;
    let (ports, groups, nets, subnets) = futures::try_join!(
        n.list_ports(),
        n.list_groups(),
        n.list_networks(),
        n.list_subnets()
    )?;
    let counts = (ports.len(), groups.len(), nets.len(), subnets.len());
    let mut c = ctx.cache();
    c.ports.merge(
        ports.into_iter().map(|p| (p.id.clone(), p)).collect(),
        start,
    );
    c.groups.merge(
        groups.into_iter().map(|g| (g.id.clone(), g)).collect(),
        start,
    );
    c.networks
        .merge(nets.into_iter().map(|n| (n.id.clone(), n)).collect(), start);
    c.subnets.merge(
        subnets.into_iter().map(|s| (s.id.clone(), s)).collect(),
        start,
    );
    tracing::debug!(
        ports = counts.0,
        groups = counts.1,
        networks = counts.2,
        subnets = counts.3,
        "neutron state listed"
    );
    Ok(())
}

/// Hands what has no owner to the reconciles that recycle or delete it (from the cache
/// as it is: after a reflector's relist, or after a refresh).
pub async fn enqueue_orphans(ctx: &Arc<Ctx>) -> Result<()> {
    let o = {
        let l = live(ctx);
        orphans(&ctx.cache(), &l)
    };
    for (n, m) in &o.pods {
        ctx.queue.add(Key::pod(n, m));
    }
    for (n, m) in &o.policies {
        ctx.queue.add(Key::policy(n, m));
    }
    for n in &o.namespaces {
        ctx.queue.add(Key::Namespace(n.clone()));
    }
    if o.groups {
        ctx.queue.add(Key::Groups);
    }
    let mut first_err = None;
    for (id, holder) in &o.ports {
        if let Err(e) = pods::release(ctx, id, holder).await {
            first_err.get_or_insert(e);
        }
    }
    if !(o.pods.is_empty()
        && o.ports.is_empty()
        && o.policies.is_empty()
        && o.namespaces.is_empty())
    {
        tracing::info!(
            pods = o.pods.len(),
            unnamed_ports = o.ports.len(),
            policies = o.policies.len(),
            namespaces = o.namespaces.len(),
            "objects without an owner found"
        );
    }
    first_err.map_or(Ok(()), Err)
}

/// The full pass: list, collect orphans, and reconcile every object (drift from
/// anything done behind the controller's back is repaired there).
pub async fn full_pass(ctx: &Arc<Ctx>) -> Result<()> {
    refresh(ctx).await?;
    ctx.queue.add(Key::Groups);
    enqueue_orphans(ctx).await?;
    crate::service_lb::sweep(ctx).await?;
    enqueue_everything(ctx);
    ctx.pool_trigger.notify_one();
    Ok(())
}

pub fn enqueue_everything(ctx: &Ctx) {
    let mut by_kind: HashMap<&str, usize> = HashMap::new();
    for np in ctx.stores.policies.state() {
        if let (Some(n), Some(m)) = (&np.metadata.namespace, &np.metadata.name) {
            ctx.queue.add(Key::policy(n, m));
            *by_kind.entry("policies").or_default() += 1;
        }
    }
    if matches!(ctx.net, NetMode::PerNamespace { .. }) {
        for ns in ctx.stores.namespaces.state() {
            if let Some(n) = &ns.metadata.name {
                ctx.queue.add(Key::Namespace(n.clone()));
                *by_kind.entry("namespaces").or_default() += 1;
            }
        }
    }
    for p in ctx.stores.pods.state() {
        if let (Some(n), Some(m)) = (&p.metadata.namespace, &p.metadata.name) {
            ctx.queue.add(Key::pod(n, m));
            *by_kind.entry("pods").or_default() += 1;
        }
    }
    if ctx.services.is_some() {
        for s in ctx.stores.services.state() {
            if let (Some(n), Some(m)) = (&s.metadata.namespace, &s.metadata.name) {
                ctx.queue.add(Key::service(n, m));
                *by_kind.entry("services").or_default() += 1;
            }
        }
    }
    tracing::debug!(?by_kind, "everything queued for reconcile");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{GroupRec, NetRec, PortRec, SubnetRec};
    use crate::tags;

    fn port(id: &str, device: &str, t: Vec<String>, name: &str) -> PortRec {
        PortRec {
            id: id.into(),
            network_id: "net".into(),
            name: name.into(),
            device_id: device.into(),
            device_owner: tags::DEVICE_OWNER.into(),
            host: "n1".into(),
            security_groups: vec![],
            tags: t,
            fixed_ips: vec![],
        }
    }

    fn group(id: &str, t: Vec<String>) -> GroupRec {
        GroupRec {
            id: id.into(),
            name: String::new(),
            tags: t,
            rules: vec![],
        }
    }

    /// Objects with nothing to clean up under `live(_)` (a pool port, the live pod's
    /// port, the live policy's group, a peer group): the base of both tests' caches.
    fn put_owned(c: &mut Cache, s: u64) {
        c.ports.put(
            "pool",
            port("pool", "", tags::pool_port("c"), "available-port"),
            s,
        );
        c.ports.put(
            "live",
            port(
                "live",
                "u-live",
                tags::pod_port("c", "u-live", "a", "web"),
                "a/web",
            ),
            s,
        );
        c.groups.put(
            "pl",
            group("pl", tags::policy("c", "p-live", "a", "deny", None)),
            s,
        );
        c.groups.put("peer", group("peer", tags::peer("c", "h")), s);
    }

    fn cache() -> Cache {
        let mut c = Cache::default();
        let s = c.tick();
        put_owned(&mut c, s);
        c.ports.put(
            "dead",
            port(
                "dead",
                "u-dead",
                tags::pod_port("c", "u-dead", "a", "old"),
                "a/old",
            ),
            s,
        );
        // A crash between the port update and its tags: the name still tells.
        c.ports.put(
            "half",
            port("half", "u-half", tags::pool_port("c"), "b/half"),
            s,
        );
        // Nothing tells whose it was.
        c.ports
            .put("anon", port("anon", "u-anon", vec![], "weird"), s);
        c.groups
            .put("allow", group("allow", tags::allow_all("c", "ingress")), s);
        c.groups.put(
            "pd",
            group("pd", tags::policy("c", "p-dead", "a", "gone", None)),
            s,
        );
        for (id, ns) in [("n-a", "a"), ("n-x", "x")] {
            c.networks.put(
                id,
                NetRec {
                    id: id.into(),
                    name: String::new(),
                    tags: tags::namespace("c", ns),
                },
                s,
            );
        }
        c.subnets.put(
            "s-y",
            SubnetRec {
                id: "s-y".into(),
                network_id: "n-y".into(),
                name: String::new(),
                cidr: String::new(),
                tags: tags::namespace("c", "y"),
            },
            s,
        );
        c
    }

    fn live(per_namespace: bool) -> Live {
        Live {
            pods: ["u-live".to_string()].into(),
            policies: ["p-live".to_string()].into(),
            namespaces: ["a".to_string()].into(),
            per_namespace,
        }
    }

    fn pairs(v: &[(&str, &str)]) -> BTreeSet<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn finds_what_no_owner_holds() {
        let o = orphans(&cache(), &live(true));
        assert_eq!(o.pods, pairs(&[("a", "old"), ("b", "half")]));
        assert_eq!(o.ports, pairs(&[("anon", "u-anon")]));
        assert_eq!(o.policies, pairs(&[("a", "gone")]));
        assert!(o.groups);
        assert_eq!(o.namespaces, ["x".to_string(), "y".to_string()].into());
    }

    #[test]
    fn single_network_mode_owns_no_namespace_network() {
        let o = orphans(&cache(), &live(false));
        assert_eq!(
            o.namespaces,
            ["a".to_string(), "x".to_string(), "y".to_string()].into()
        );
    }

    #[test]
    fn nothing_to_do_when_everything_is_owned() {
        let mut c = Cache::default();
        let s = c.tick();
        put_owned(&mut c, s);
        let o = orphans(&c, &live(true));
        assert_eq!(o, Orphans::default());
        // A port being taken right now is nobody's business.
        let s = c.tick();
        c.ports.put("t", port("t", "u-new", vec![], "a/new"), s);
        c.ports.claim("t", s);
        assert_eq!(orphans(&c, &live(true)), Orphans::default());
    }
}
