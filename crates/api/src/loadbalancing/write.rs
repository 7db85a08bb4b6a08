//! Octavia's state machine on kuryr's store.
//!
//! Every change to a load balancer's tree rewrites the load balancer record with
//! `PENDING_UPDATE` under a compare on its revision, in the same transaction as the
//! change: two changes never interleave, and one that arrives while another is
//! pending is refused with `ImmutableObject` (409), as Octavia does. The provisioner
//! then makes pending objects `ACTIVE`. The provider's work is the agents' (they
//! follow the store through their host watches), so there is nothing to wait for
//! but the commit; a server that stops in between finishes the job when it starts
//! (the provisioner sweeps every second too).

use std::sync::Weak;
use std::time::Duration;

use kuryr_model::lbaas::provisioning;
use kuryr_model::{HealthMonitor, Listener, LoadBalancer, Member, Pool};
use kuryr_store::{Compare, Txn};
use tokio::sync::Notify;

use super::LbResult;
use super::fault::Fault;
use super::list::{Object, key};
use super::now;
use crate::networking::db::{Db, Entry};
use crate::networking::resource::encode;
use crate::networking::{Networking, Shared};

/// Wakes the provisioner after a commit that left something pending.
pub static WAKE: Notify = Notify::const_new();

/// Builds a transaction from the current state and commits it, building again when
/// a compare fails (another change came first: the next build sees it).
pub async fn commit<T>(
    net: &Shared,
    mut build: impl FnMut(&Db) -> LbResult<(Txn, T)>,
) -> LbResult<T> {
    for _ in 0..64 {
        let (txn, out) = {
            let db = net.db();
            build(&db)?
        };
        if net.commit(txn).await? {
            WAKE.notify_one();
            return Ok(out);
        }
    }
    Err(Fault::new(409, "Too many concurrent changes; try again."))
}

/// Adds the put of `value` to `txn`, under a compare on the revision it was read at.
pub fn put_entry<O: Object>(txn: Txn, e: &Entry<O>, value: &O) -> LbResult<Txn> {
    let k = key::<O>(value.id());
    Ok(txn
        .when(Compare::ModRevision(k.clone(), e.rev))
        .put(k, encode(value)?))
}

pub fn put_new<O: Object>(txn: Txn, value: &O) -> LbResult<Txn> {
    let k = key::<O>(value.id());
    Ok(txn.when(Compare::Absent(k.clone())).put(k, encode(value)?))
}

/// Locks load balancer `lb` for a change of its tree: `ImmutableObject` while it is
/// pending, else it becomes `PENDING_UPDATE` in `txn`.
pub fn lock(db: &Db, lb: &str, txn: Txn) -> LbResult<Txn> {
    let e = db
        .loadbalancers
        .get(lb)
        .ok_or_else(|| Fault::not_found(LoadBalancer::DISPLAY, lb))?;
    if provisioning::is_pending(&e.value.provisioning_status) {
        return Err(Fault::immutable(LoadBalancer::DISPLAY, lb));
    }
    let mut v = (*e.value).clone();
    v.provisioning_status = provisioning::PENDING_UPDATE.into();
    v.touch(&now());
    put_entry(txn, e, &v)
}

/// `ImmutableObject` for an object of a tree whose load balancer is pending, named
/// as Octavia names it (the object itself when it is the pending one).
pub fn check_mutable<O: Object>(db: &Db, o: &O) -> LbResult<()> {
    if provisioning::is_pending(o.provisioning()) {
        return Err(Fault::immutable(O::DISPLAY, o.id()));
    }
    match db.loadbalancers.get(o.loadbalancer_id()) {
        Some(lb) if provisioning::is_pending(&lb.value.provisioning_status) => {
            Err(Fault::immutable(LoadBalancer::DISPLAY, o.loadbalancer_id()))
        }
        _ => Ok(()),
    }
}

/// Makes pending objects `ACTIVE`, one transaction per load balancer (children
/// and the load balancer together, so a client waiting for the load balancer sees
/// its children done too).
pub async fn provisioner(net: Weak<Networking>) {
    loop {
        tokio::select! {
            _ = WAKE.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let Some(net) = net.upgrade() else {
            return;
        };
        let txns = {
            let db = net.db();
            pending_txns(&db)
        };
        for txn in txns {
            match net.commit(txn).await {
                // Something changed meanwhile: look again at once.
                Ok(false) => WAKE.notify_one(),
                Ok(true) => {}
                Err(e) => tracing::warn!(error = %e.message, "provisioner commit failed"),
            }
        }
    }
}

fn activate<O: Object>(db: &Db, ids: impl Iterator<Item = String>, txn: &mut Option<Txn>) {
    for id in ids {
        let Some(e) = O::table(db).get(&id) else {
            continue;
        };
        if !provisioning::is_pending(e.value.provisioning()) {
            continue;
        }
        let mut v = (*e.value).clone();
        v.set_provisioning(provisioning::ACTIVE);
        // The provider's status update is a change too (Octavia sets updated_at).
        v.touch(&super::now());
        let t = txn.take().unwrap_or_default();
        match put_entry(t, e, &v) {
            Ok(t) => *txn = Some(t),
            Err(f) => tracing::error!(error = %f.message, "cannot encode a load-balancer object"),
        }
    }
}

fn pending_txns(db: &Db) -> Vec<Txn> {
    let mut out = Vec::new();
    for (id, lb) in &db.loadbalancers {
        let c = db.children_of(id);
        let mut txn = None;
        activate::<Listener>(db, c.listeners.into_iter(), &mut txn);
        activate::<Pool>(db, c.pools.into_iter(), &mut txn);
        activate::<Member>(db, c.members.into_iter(), &mut txn);
        activate::<HealthMonitor>(db, c.healthmonitors.into_iter(), &mut txn);
        if txn.is_some() || provisioning::is_pending(&lb.value.provisioning_status) {
            activate::<LoadBalancer>(db, std::iter::once(id.clone()), &mut txn);
        }
        if let Some(t) = txn {
            out.push(t);
        }
    }
    out
}
