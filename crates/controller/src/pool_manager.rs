//! Keeps the pools at their size (decisions in `pools`): every update period, and at
//! once when a pod took from a pool or a node came.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::ctx::{Ctx, NetMode, lock};
use crate::metrics::PoolLabels;
use crate::pods::{self, pool_lock};
use crate::pools::{self, PoolAction, PoolFacts};
use crate::tags;

const IDLE_PERIODS: u32 = 3;

pub async fn run(ctx: Arc<Ctx>) {
    // Pool work runs in this set: dropped (leadership lost) = stopped.
    let mut work: JoinSet<()> = JoinSet::new();
    loop {
        while work.try_join_next().is_some() {}
        evaluate(&ctx, &mut work);
        tokio::select! {
            _ = tokio::time::sleep(ctx.cfg.pool.update_frequency) => {}
            _ = ctx.pool_trigger.notified() => {}
        }
    }
}

/// The pools that should exist: (node, network).
fn wanted(ctx: &Ctx) -> HashSet<(String, String)> {
    match &ctx.net {
        // Warm-up: every node from the start.
        NetMode::Single { network } => ctx
            .node_names()
            .into_iter()
            .map(|n| (n, network.clone()))
            .collect(),
        NetMode::PerNamespace { .. } => {
            let c = ctx.cache();
            ctx.pods()
                .into_iter()
                .filter(|p| p.needs_port())
                .filter_map(|p| {
                    let net = c
                        .networks
                        .values()
                        .filter(|n| n.namespace() == Some(p.namespace.as_str()))
                        .map(|n| n.id.clone())
                        .min()?;
                    Some((p.node?, net))
                })
                .collect()
        }
    }
}

fn evaluate(ctx: &Arc<Ctx>, work: &mut JoinSet<()>) {
    let wanted = wanted(ctx);
    let mut keys: BTreeSet<(String, String)> = wanted.iter().cloned().collect();
    let mut retag = Vec::new();
    {
        let c = ctx.cache();
        for (p, busy) in c.ports.iter() {
            if p.device_id.is_empty() {
                keys.insert((p.host.clone(), p.network_id.clone()));
                // Released just before a crash: device_id "" but not yet the pool's tags.
                if !busy && !tags::has(&p.tags, tags::POOL) {
                    retag.push(p.id.clone());
                }
            }
        }
    }
    let now = Instant::now();
    let freq = ctx.cfg.pool.update_frequency;
    // Idle: three update periods without a take, a return or a refill (a pool that was
    // just filled past min by a batch is not shrunk straight back).
    let idle_after = freq.saturating_mul(IDLE_PERIODS);
    for (node, net) in keys {
        let idle = {
            let mut act = lock(&ctx.pool_activity);
            let last = *act.entry((node.clone(), net.clone())).or_insert(now);
            now.duration_since(last) >= idle_after
        };
        // One lock at a time: network_alive takes the cache's lock itself (a guard
        // living to the end of a struct literal would deadlock it).
        let available = ctx.cache().available(&node, &net);
        let network_exists = pods::network_alive(ctx, &net);
        let facts = PoolFacts {
            available,
            wanted: wanted.contains(&(node.clone(), net.clone())),
            node_exists: ctx.node_exists(&node),
            network_exists,
            idle,
        };
        ctx.metrics
            .pool_ports
            .get_or_create(&PoolLabels {
                node: node.clone(),
                network: net.clone(),
            })
            .set(i64::try_from(facts.available).unwrap_or(i64::MAX));
        let action = pools::decide(&ctx.cfg.pool, &facts);
        if action == PoolAction::Nothing {
            continue;
        }
        let ctx = ctx.clone();
        work.spawn(async move {
            // One operation per pool at a time (a pod's own batch included).
            let Some(_g) = ctx.locks.try_lock(&pool_lock(&node, &net)) else {
                return;
            };
            match action {
                PoolAction::Create(n) => {
                    // Re-read: a pod's batch may have landed while this waited.
                    let available = ctx.cache().available(&node, &net);
                    let f = PoolFacts { available, ..facts };
                    let PoolAction::Create(n2) = pools::decide(&ctx.cfg.pool, &f) else {
                        return;
                    };
                    let n = n.min(n2);
                    match pods::create_pool_ports(&ctx, &node, &net, n).await {
                        Ok(()) => tracing::info!(%node, network = %net, n, "pool refilled"),
                        Err(e) => {
                            tracing::warn!(%node, network = %net, error = %e, "cannot refill the pool")
                        }
                    }
                }
                PoolAction::Delete(n) => shrink(&ctx, &node, &net, n).await,
                PoolAction::Nothing => {}
            }
        });
    }
    for id in retag {
        let ctx = ctx.clone();
        work.spawn(async move {
            let t = tags::pool_port(ctx.neutron.cluster());
            if let Err(e) = ctx.neutron.set_port_tags(&id, &t).await {
                tracing::debug!(port = %id, error = %e, "cannot re-tag a pool port");
                return;
            }
            let mut c = ctx.cache();
            if let Some(mut p) = c.ports.get(&id).cloned() {
                p.tags = t;
                let s = c.tick();
                c.ports.put(&id, p, s);
            }
        });
    }
}

async fn shrink(ctx: &Arc<Ctx>, node: &str, net: &str, n: usize) {
    let ports = ctx.cache().take_many(node, net, n);
    let count = ports.len();
    let results: Vec<(String, bool)> = futures::stream::iter(ports)
        .map(|p| async move {
            let ok = match ctx.neutron.delete_port(&p.id).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(port = %p.id, error = %e, "cannot delete a pool port");
                    false
                }
            };
            (p.id, ok)
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut c = ctx.cache();
    for (id, ok) in results {
        let s = c.tick();
        if ok {
            ctx.metrics.ports_deleted.inc();
            c.ports.remove(&id, s);
        } else {
            c.ports.release(&id, s);
        }
    }
    tracing::info!(node, network = net, n = count, "pool shrunk");
}
