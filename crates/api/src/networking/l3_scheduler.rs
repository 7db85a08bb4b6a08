//! Places each router's SNAT namespace (its gateway port and its
//! `network:router_centralized_snat` ports) on one live agent that can reach the
//! router's external network, and moves it when that agent dies.
//!
//! The choice is rendezvous hashing of (router, host) over the candidates, so it is
//! stable while the host lives and only the routers of a dead host move. It is
//! written as the ports' `binding:host_id`: the host watches carry it to every agent
//! (the SNAT host builds the namespace, the others l2-populate the SNAT ports and
//! route to them), with nothing else to keep in sync. A router whose gateway host
//! is alive is never moved, even when a "better" host appears.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use kuryr_model::{Agent, Port};
use kuryr_store::{Compare, Txn};
use sha2::{Digest, Sha256};

use super::db::Db;
use super::resource::{encode, key};
use super::routers::snat_ports;
use super::{Networking, now};

/// How often placements are checked (a dead agent is seen after `agent_down_time`).
pub const INTERVAL: Duration = Duration::from_secs(1);

pub(crate) fn alive(a: &Agent, down_time: Duration, now_unix: i64) -> bool {
    a.admin_state_up && now_unix - a.heartbeat_unix <= down_time.as_secs() as i64
}

/// Whether the agent can carry external network `net` (flat: its physical network is
/// mapped to an interface there; vxlan/local: any agent).
fn reaches(db: &Db, a: &Agent, net: &str) -> bool {
    let Some(n) = db.networks.get(net) else {
        return false;
    };
    match (n.value.network_type.as_str(), &n.value.physical_network) {
        ("flat", Some(physnet)) => a.configurations["interface_mappings"]
            .get(physnet)
            .is_some_and(|v| v.is_string()),
        _ => true,
    }
}

pub(crate) fn score(router: &str, host: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(router.as_bytes());
    h.update([0]);
    h.update(host.as_bytes());
    h.finalize().into()
}

/// Router id → (the host its SNAT namespace should move to, the ports to move).
fn moves(db: &Db, down_time: Duration, now_unix: i64) -> BTreeMap<String, (String, Vec<String>)> {
    let mut out = BTreeMap::new();
    for r in db.routers.values() {
        let Some(g) = &r.value.gateway else { continue };
        let Some(gw_port) = db.ports.get(&g.port_id) else {
            continue;
        };
        let candidates: Vec<&Agent> = db
            .agents
            .values()
            .map(|a| &*a.value)
            .filter(|a| alive(a, down_time, now_unix) && reaches(db, a, &g.network_id))
            .collect();
        let current = &gw_port.value.host_id;
        let snat: Vec<std::sync::Arc<Port>> = snat_ports(db, &r.value.id);
        let settled = candidates.iter().any(|a| &a.host == current)
            && snat.iter().all(|p| &p.host_id == current);
        if settled {
            continue;
        }
        let target = if candidates.iter().any(|a| &a.host == current) {
            current.clone()
        } else {
            match candidates
                .iter()
                .max_by_key(|a| score(&r.value.id, &a.host))
            {
                Some(a) => a.host.clone(),
                // Nowhere to go: stay put until an agent that can carry it lives.
                None => continue,
            }
        };
        let mut ports = vec![gw_port.value.id.clone()];
        ports.extend(
            snat.iter()
                .filter(|p| p.host_id != target)
                .map(|p| p.id.clone()),
        );
        out.insert(r.value.id.clone(), (target, ports));
    }
    out
}

/// Moves the ports of each router to their host in one transaction per router.
async fn place(net: &Arc<Networking>) {
    let now_unix = chrono::Utc::now().timestamp();
    let plans: Vec<(String, String, Txn)> = {
        let db = net.db();
        moves(&db, net.config.agent_down_time, now_unix)
            .into_iter()
            .filter_map(|(router, (host, ports))| {
                let mut txn = Txn::new();
                for pid in ports {
                    let e = db.ports.get(&pid)?;
                    let mut p = (*e.value).clone();
                    if p.host_id == host {
                        continue;
                    }
                    p.host_id = host.clone();
                    p.revision_number += 1;
                    p.updated_at = now();
                    txn = txn.when(Compare::ModRevision(key::<Port>(&pid), e.rev));
                    let value = encode(&p).ok()?;
                    txn = txn.put(key::<Port>(&pid), value);
                }
                (!txn.ops.is_empty()).then_some((router, host, txn))
            })
            .collect()
    };
    for (router, host, txn) in plans {
        match net.commit(txn).await {
            Ok(true) => tracing::info!(%router, %host, "router SNAT placed"),
            // Changed meanwhile: looked at again on the next round.
            Ok(false) => {}
            Err(e) => tracing::warn!(%router, error = %e, "router SNAT not placed"),
        }
    }
}

/// Runs placements until the server goes.
pub async fn run(net: Weak<Networking>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(net) = net.upgrade() else { return };
        place(&net).await;
    }
}
