//! The agent's loops: heartbeats, the watch of this host's view, and convergence
//! of the kernel to it (with ACTIVE reports).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kuryr_client::ClientError;
use kuryr_model::AgentReport;
use serde_json::json;

use crate::desired::Inputs;

use tracing::Instrument;

use crate::{Agent, AgentError, PassReport, desired, lock};

impl Agent {
    pub(crate) async fn heartbeat_loop(self: Arc<Self>) {
        let mut failing = false;
        loop {
            let report = AgentReport {
                host: self.cfg.host.clone(),
                tunneling_ip: self.cfg.underlay_ip.to_string(),
                interface_mappings: self.cfg.interface_mappings.clone(),
                started_at_unix: self.started_at,
                devices: self.passes.borrow().realized.len() as u64,
            };
            match self.client.heartbeat(&report).await {
                Ok(_) if failing => {
                    tracing::info!("heartbeat accepted again");
                    failing = false;
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    tracing::warn!(error = %e, "heartbeat failed; the dataplane is unaffected, retrying");
                    failing = true;
                }
                Err(_) => {}
            }
            tokio::time::sleep(self.cfg.report_interval).await;
        }
    }

    /// Follows the server's view of this host, reconnecting with backoff and
    /// resuming from the last revision seen.
    pub(crate) async fn watch_loop(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(200);
        // The server sends a keepalive at least every few seconds; silence this long
        // means the connection is dead even if TCP has not noticed.
        let silence = Duration::from_secs(45);
        loop {
            let since = self
                .mirror
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .revision();
            match self.client.watch_host(&self.cfg.host, since).await {
                Ok(mut stream) => {
                    tracing::info!(since, "watching this host's view");
                    loop {
                        match tokio::time::timeout(silence, stream.next()).await {
                            Ok(Some(Ok(frame))) => {
                                let arrived = std::time::Instant::now();
                                backoff = Duration::from_millis(200);
                                let delta = {
                                    let mut mirror =
                                        self.mirror.write().unwrap_or_else(|p| p.into_inner());
                                    let delta = mirror.apply(frame);
                                    // Bumped under the lock: whoever reads the mirror
                                    // reads the generation that matches it.
                                    self.inputs_changed();
                                    *lock(&self.frame_seen) =
                                        (*self.mirror_changed.borrow(), arrived);
                                    delta
                                };
                                if delta.missing != Default::default() {
                                    tracing::warn!("watch resumed with gaps; starting over from 0");
                                    self.mirror
                                        .write()
                                        .unwrap_or_else(|p| p.into_inner())
                                        .reset();
                                    break;
                                }
                                self.forget_removed_ports(&delta.removed.ports);
                                if delta.is_status_only() {
                                    // Our own ACTIVE coming back, or someone setting a
                                    // port DOWN: no pass (each costs the whole host),
                                    // only the status of realized ports checked.
                                    self.check_status(&delta.status_only).await;
                                } else if !delta.is_empty() || delta.resync {
                                    self.converge_wanted.notify_one();
                                }
                            }
                            Ok(Some(Err(e))) => {
                                tracing::warn!(error = %e, "watch stream failed; reconnecting");
                                break;
                            }
                            Ok(None) => {
                                tracing::warn!("watch stream ended; reconnecting");
                                break;
                            }
                            Err(_) => {
                                tracing::warn!("watch silent for {silence:?}; reconnecting");
                                break;
                            }
                        }
                    }
                }
                Err(ClientError::NotFound { .. }) => {
                    tracing::error!(
                        "the server has no host watch (/v2.0/kuryr/hosts/...): is it a kuryr server?"
                    );
                    backoff = Duration::from_secs(30);
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot reach the server; the dataplane keeps running");
                }
            }
            self.metrics.watch_reconnects.inc();
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    /// Reports ACTIVE again those of `ports` realized here whose status on the
    /// server is no longer ACTIVE.
    async fn check_status(&self, ports: &[String]) {
        let realized: Vec<(String, String)> = {
            let last = self.passes.borrow();
            ports
                .iter()
                .filter(|p| last.realized.contains(*p))
                .filter_map(|p| last.ports.get(p).map(|d| (p.clone(), d.bridge.clone())))
                .collect()
        };
        for (port, bridge) in realized {
            self.report_active(&port, &bridge).await;
        }
    }

    /// A bound port that left this host's view was deleted or moved to another host:
    /// its binding goes (the next pass removes its interface).
    pub(crate) fn forget_removed_ports(&self, removed: &[String]) {
        let mut state = lock(&self.state);
        let before = state.bindings.len();
        state.bindings.retain(|id, _| !removed.contains(id));
        if state.bindings.len() != before {
            tracing::info!(
                count = before - state.bindings.len(),
                "bindings of ports deleted or moved away released"
            );
            if let Err(e) = self.save_state(&state) {
                tracing::warn!(error = %e, "could not save the agent state");
            }
            self.inputs_changed();
        }
    }

    /// Runs a pass on every change of the server's view, every kernel event about
    /// what kuryr owns, and on the engine's cadence (verification, lingering links).
    pub(crate) async fn converge_loop(self: Arc<Self>) {
        let kernel = self.engine.lock().await.wake();
        // The generation (of the mirror and the bindings) the last good pass started
        // from: a wake-up for a change that pass already saw (a bind waking the loop
        // for the frame that woke it too) runs no second pass.
        let mut done: Option<u64> = None;
        loop {
            let due = self.engine.lock().await.next_wakeup();
            let for_inputs = match due {
                Some(at) => tokio::select! {
                    _ = self.converge_wanted.notified() => true,
                    _ = kernel.notified() => false,
                    _ = tokio::time::sleep_until(at.into()) => false,
                },
                None => tokio::select! {
                    _ = self.converge_wanted.notified() => true,
                    _ = kernel.notified() => false,
                },
            };
            if for_inputs && done == Some(*self.mirror_changed.borrow()) {
                self.metrics.passes_skipped.inc();
                continue;
            }
            let started = std::time::Instant::now();
            let result = self
                .converge_once()
                .instrument(tracing::info_span!("pass"))
                .await;
            self.metrics
                .pass_seconds
                .observe(started.elapsed().as_secs_f64());
            done = result
                .as_ref()
                .ok()
                .map(|_| self.passes.borrow().generation);
            if result.is_ok() {
                self.release_vanished_containers();
            }
            if let Err(e) = result {
                self.metrics.pass_failures.inc();
                tracing::warn!(error = %e, "convergence failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                self.converge_wanted.notify_one();
            }
        }
    }

    /// Releases the CNI attachments whose container namespace is gone: the runtime
    /// tore the sandbox down without a DEL that reached this agent (it gave up, or
    /// the agent was down). Their ports would otherwise fail every pass, and a pool
    /// port given to the next pod would first have to push the dead binding out.
    /// Done as DEL does it (a port the agent made for the container is deleted).
    fn release_vanished_containers(self: &Arc<Self>) {
        let failing: Vec<String> = self.passes.borrow().problems.keys().cloned().collect();
        if failing.is_empty() {
            return;
        }
        let gone: Vec<(String, String)> = {
            let state = lock(&self.state);
            failing
                .iter()
                .filter_map(|id| {
                    let b = state.bindings.get(id)?;
                    let c = b.cni.as_ref()?;
                    (!b.netns.exists()).then(|| (c.container_id.clone(), b.ifname.clone()))
                })
                .collect()
        };
        for (container, ifname) in gone {
            tracing::warn!(
                container,
                ifname,
                "the container's network namespace is gone without a CNI DEL: releasing its attachment"
            );
            self.metrics.repaired("vanished_container", 1);
            let agent = self.clone();
            tokio::spawn(async move { agent.cni_release_vanished(&container, &ifname).await });
        }
    }

    /// One pass: desired state from the mirror and the bindings, applied by the
    /// engine, then port status reported to the server. Does nothing until the
    /// mirror holds a complete view (never tear down from an empty one).
    pub async fn converge_once(&self) -> Result<(), AgentError> {
        let started = std::time::Instant::now();
        let mut engine = self.engine.lock().await;
        let t_lock = started.elapsed();
        let (desired, generation) = {
            let mirror = self.mirror.read().unwrap_or_else(|p| p.into_inner());
            // Read under the mirror lock, where the watch bumps it with each frame.
            let generation = *self.mirror_changed.borrow();
            if !mirror.is_synced() {
                return Err(AgentError::Unavailable(
                    "no complete view from the server yet".into(),
                ));
            }
            let mut state = lock(&self.state);
            let zones_before = state.zones.clone();
            let d = desired::compute(Inputs {
                host: &self.cfg.host,
                view: &mirror,
                state: &mut state,
                memo: &mut lock(&self.memo),
                interface_mappings: &self.cfg.interface_mappings,
                router_prefix: &self.cfg.router_prefix,
            });
            if state.zones != zones_before
                && let Err(e) = self.state_file.save(&state)
            {
                return Err(e.into());
            }
            (d, generation)
        };
        let t_desired = started.elapsed();
        let pass = engine.converge(&desired).await?;
        drop(engine);
        {
            let mut checks = lock(&self.checks);
            if *checks != desired.lb.checks {
                checks.clone_from(&desired.lb.checks);
                self.health.set(desired.lb.checks.clone());
            }
        }
        let t_engine = started.elapsed();
        if let Some(took) = pass.nft_apply {
            self.metrics.nft_apply_seconds.observe(took.as_secs_f64());
        }
        // From the frame this pass started from to its rules in the kernel (a group
        // member joining or leaving, say).
        let (seen_generation, arrived) = *lock(&self.frame_seen);
        if let Some(done) = pass.rules_done
            && seen_generation == generation
        {
            self.metrics
                .event_to_rules_seconds
                .observe(done.saturating_duration_since(arrived).as_secs_f64());
        }
        self.metrics.ports_realized.set(pass.realized.len() as i64);
        for (port, why) in &pass.failed {
            tracing::warn!(port = %port, error = %why, "port not realized");
        }
        for (port, why) in &desired.waiting {
            tracing::warn!(port = %port, reason = %why, "port not realized");
        }
        for (kind, n) in &pass.repairs {
            self.metrics.repaired(kind, *n);
        }
        {
            // Only when some port left (a walk of all of them per pass otherwise; an
            // entry of a port that failed meanwhile is harmless: it is reported
            // again only if the server no longer says ACTIVE).
            let mut reported = lock(&self.reported);
            if reported.len() > pass.realized.len() {
                reported.retain(|p, _| pass.realized.contains(p));
            }
        }
        // One read of the mirror for all: only ports whose status needs a look are
        // handed to report_active (which reads it again, per port).
        let todo: Vec<(String, String)> = {
            let mirror = self.mirror.read().unwrap_or_else(|p| p.into_inner());
            let reported = lock(&self.reported);
            pass.realized
                .iter()
                .filter_map(|id| {
                    let d = desired.ports.get(id)?;
                    let settled = mirror.ports.get(id).is_some_and(|p| {
                        p.status == "ACTIVE"
                            && p.vif_type == "bridge"
                            && reported.get(id) == Some(&p.revision_number)
                    });
                    (!settled).then(|| (id.clone(), d.bridge.clone()))
                })
                .collect()
        };
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        let n_ports = desired.ports.len();
        let t_publish = started.elapsed();
        self.passes.send_replace(PassReport {
            generation,
            ports: desired.ports,
            problems: pass
                .failed
                .into_iter()
                .map(|(port, e)| (port, e.to_string()))
                .chain(desired.waiting)
                .collect(),
            realized: pass.realized,
            reported: todo.is_empty(),
        });
        if !todo.is_empty() {
            for (port, bridge) in todo {
                self.report_active(&port, &bridge).await;
            }
            self.passes.send_if_modified(|r| {
                let mine = r.generation == generation && !r.reported;
                if mine {
                    r.reported = true;
                }
                mine
            });
        }
        tracing::debug!(
            lock_ms = ms(t_lock),
            desired_ms = ms(t_desired - t_lock),
            engine_ms = ms(t_engine - t_desired),
            publish_ms = ms(t_publish - t_engine),
            report_ms = ms(started.elapsed() - t_publish),
            ports = n_ports,
            derived = desired.derived,
            "pass timing"
        );
        Ok(())
    }

    /// Tells the server the port is `ACTIVE`, bound with vif_type `bridge`, unless
    /// the server's view already says so or was told so at this revision of the
    /// port. Run for every realized port on every pass: a port set back to DOWN by
    /// someone else is reported ACTIVE again.
    pub(crate) async fn report_active(&self, port_id: &str, bridge: &str) {
        let Some((revision, done)) = self
            .mirror
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .ports
            .get(port_id)
            .map(|p| {
                (
                    p.revision_number,
                    p.status == "ACTIVE" && p.vif_type == "bridge",
                )
            })
        else {
            return;
        };
        let before = lock(&self.reported).get(port_id).copied();
        if done || before == Some(revision) {
            lock(&self.reported).insert(port_id.to_string(), revision);
            return;
        }
        if before.is_some() {
            tracing::warn!(port = %port_id, "port no longer ACTIVE on the server; reporting it again");
            self.metrics.repaired("status", 1);
        }
        let attrs = json!({
            "status": "ACTIVE",
            "binding:vif_type": "bridge",
            "binding:vif_details": {
                "bridge_name": bridge,
                "port_filter": true,
                "connectivity": "l2",
            },
        });
        if let Err(e) = self.client.update_port(port_id, attrs).await {
            tracing::warn!(port = %port_id, error = %e, "could not report the port ACTIVE; will retry");
            return;
        }
        lock(&self.reported).insert(port_id.to_string(), revision);
    }

    /// Reports to the server the health of the members this host checks (each
    /// change at once, batched with whatever else changed meanwhile; everything
    /// again every 30 s, in case a report was lost) and, every 10 s, the
    /// per-listener connection counters of this host.
    pub(crate) async fn lb_report_loop(self: Arc<Self>, mut events: crate::HealthEvents) {
        use kuryr_dataplane::probe::Health;
        let status = |h: Health| match h {
            Health::Online => "ONLINE",
            Health::Error => "ERROR",
        };
        let mut pending: std::collections::BTreeMap<String, &str> = Default::default();
        let mut last_full = std::time::Instant::now();
        let mut last_stats = std::time::Instant::now();
        let mut sent_stats = serde_json::Value::Null;
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some((id, h)) => {
                        pending.insert(id, status(h));
                        while let Ok((id, h)) = events.try_recv() {
                            pending.insert(id, status(h));
                        }
                    }
                    None => return,
                },
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            if last_full.elapsed() >= Duration::from_secs(30) {
                for (id, h) in self.health.health() {
                    pending.entry(id).or_insert(status(h));
                }
                last_full = std::time::Instant::now();
            }
            let mut stats = serde_json::Value::Null;
            if last_stats.elapsed() >= Duration::from_secs(10) {
                last_stats = std::time::Instant::now();
                match kuryr_dataplane::lb::counters(None).await {
                    Ok(c) => {
                        let m: serde_json::Map<String, serde_json::Value> = c
                            .into_iter()
                            .map(|(l, n)| (l, json!({"total_connections": n})))
                            .collect();
                        let v = serde_json::Value::Object(m);
                        if v != sent_stats {
                            stats = v;
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "load-balancer counters not read"),
                }
            }
            if pending.is_empty() && stats.is_null() {
                continue;
            }
            let mut body = json!({"members": &pending});
            if !stats.is_null() {
                body["stats"] = stats.clone();
            }
            match self.client.lb_report(&self.cfg.host, &body).await {
                Ok(()) => {
                    pending.clear();
                    if !stats.is_null() {
                        sent_stats = stats;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "member health not reported; will retry");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}
