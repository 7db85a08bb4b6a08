//! Bindings: a port into a container namespace (or handed to Docker), claimed for
//! this host, realized by the convergence loop and reported ACTIVE; and undone.

use std::path::PathBuf;
use std::time::Duration;

use kuryr_client::ClientError;
use kuryr_dataplane::netns::NetNs;
use kuryr_model::Port;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::state::{Binding, PublishedPort};

use crate::{Agent, AgentError, from_client, lock};

/// What a bind returns: enough for the Docker plugin and the CNI to answer their callers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BindResult {
    pub port_id: String,
    pub network_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub mac_address: String,
    /// Addresses with their subnet prefix (`10.0.0.5/24`).
    pub addresses: Vec<String>,
    pub gateways: Vec<String>,
    pub routes: Vec<RouteView>,
    pub mtu: u32,
    pub tap: String,
    pub bridge: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteView {
    pub destination: String,
    pub gateway: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BindingView {
    pub port_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub realized: bool,
    pub waiting: Option<String>,
}

pub(crate) fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

impl Agent {
    /// Waits until the mirror shows `port_id` on this host at `revision_number` or later.
    /// Returns the mirror generation the port was seen at.
    pub(crate) async fn wait_for_port(
        &self,
        port_id: &str,
        revision_number: u64,
    ) -> Result<u64, AgentError> {
        let mut changed = self.mirror_changed.subscribe();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            {
                let m = self.mirror.read().unwrap_or_else(|p| p.into_inner());
                if m.is_synced()
                    && m.ports.get(port_id).is_some_and(|p| {
                        p.host_id == self.cfg.host && p.revision_number >= revision_number
                    })
                {
                    return Ok(*self.mirror_changed.borrow());
                }
            }
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                return Err(AgentError::Unavailable(format!(
                    "the server's watch did not deliver port {port_id} to this host within 15 s"
                )));
            }
        }
    }

    /// Binds a port into a namespace: records the binding, claims the port for this
    /// host on the server, realizes it and reports it `ACTIVE`. The same binding
    /// again is a no-op; a different one is a conflict. On failure nothing is left.
    pub async fn bind(
        &self,
        port_id: &str,
        netns: PathBuf,
        ifname: String,
    ) -> Result<BindResult, AgentError> {
        if let Err(e) = NetNs::open(&netns) {
            return Err(AgentError::BadRequest(format!(
                "{} is not a network namespace: {e}",
                netns.display()
            )));
        }
        let binding = Binding {
            netns,
            ifname,
            ..Default::default()
        };
        self.bind_with(port_id, binding, None).await
    }

    /// Binds a port Docker's way: the container end is created in this agent's own
    /// namespace as `ifname` (bare: MAC and MTU) for Docker to move into its sandbox.
    /// `port` is the port as the caller just read or wrote it (no second read).
    pub async fn bind_handoff(
        &self,
        port: &Port,
        ifname: String,
    ) -> Result<BindResult, AgentError> {
        let binding = Binding {
            netns: PathBuf::from("/proc/self/ns/net"),
            ifname,
            handoff: true,
            published: Vec::new(),
            cni: None,
        };
        self.bind_with(&port.id, binding, Some(port)).await
    }

    #[tracing::instrument(name = "bind_with", skip_all, fields(port = %port_id))]
    pub(crate) async fn bind_with(
        &self,
        port_id: &str,
        binding: Binding,
        known: Option<&Port>,
    ) -> Result<BindResult, AgentError> {
        if !kuryr_model::input::is_uuid(port_id) {
            return Err(AgentError::BadRequest(format!(
                "{port_id:?} is not a port id (a UUID)"
            )));
        }
        if !valid_ifname(&binding.ifname) {
            return Err(AgentError::BadRequest(format!(
                "invalid interface name {:?}: 1 to 15 printable characters, no '/' or ':'",
                binding.ifname
            )));
        }
        // A CNI ADD does not wait for the server to take the port's ACTIVE status:
        // a pod's start must not wait on a Neutron round trip (the status follows).
        let wait_reported = binding.cni.is_none();
        let existing = lock(&self.state).bindings.get(port_id).cloned();
        if let Some(b) = &existing
            && !b.same_place(&binding)
        {
            return Err(AgentError::Conflict(format!(
                "port {port_id} is already bound on this host to {} in {}",
                b.ifname,
                b.netns.display()
            )));
        }
        let port = match known {
            Some(p) => p.clone(),
            None => self
                .client
                .get_port(port_id)
                .await
                .map_err(|e| from_client("reading the port", e))?,
        };
        if !port.host_id.is_empty() && port.host_id != self.cfg.host {
            return Err(AgentError::Conflict(format!(
                "port {port_id} is bound to host {}",
                port.host_id
            )));
        }
        // Checked again where it is recorded: a concurrent bind of the same port may
        // have recorded its own while this one read the port.
        let recorded = {
            let mut state = lock(&self.state);
            match state.bindings.get(port_id) {
                Some(b) if !b.same_place(&binding) => {
                    return Err(AgentError::Conflict(format!(
                        "port {port_id} is already bound on this host to {} in {}",
                        b.ifname,
                        b.netns.display()
                    )));
                }
                Some(_) => false,
                None => {
                    state.bindings.insert(port_id.to_string(), binding);
                    // A new input of the passes: only a pass that starts after this
                    // counts (the port may already be in the view, claimed when made).
                    self.inputs_changed();
                    true
                }
            }
        };
        // The record reaches the disk while the pass wires the port (an fsync is
        // milliseconds on a busy host); the caller hears back only once both are
        // done. A crash in between leaves an interface without a record, which the
        // next agent removes, and a caller that never heard success.
        let saved = async {
            if !recorded {
                return Ok(());
            }
            let (file, state) = (self.state_file.clone(), self.state.clone());
            match tokio::task::spawn_blocking(move || file.save_from(&state)).await {
                Ok(r) => r.map_err(AgentError::from),
                Err(e) => Err(AgentError::Unavailable(format!(
                    "saving the binding did not finish: {e}"
                ))),
            }
        };
        let (realized, saved) = tokio::join!(self.realize_bound(&port, wait_reported), saved);
        match saved.and(realized) {
            Ok(r) => Ok(r),
            Err(e) => {
                if recorded {
                    tracing::warn!(port = %port_id, error = %e, "bind failed; undoing it");
                    let _ = self.unbind(port_id).await;
                }
                Err(e)
            }
        }
    }

    pub(crate) async fn realize_bound(
        &self,
        port: &Port,
        wait_reported: bool,
    ) -> Result<BindResult, AgentError> {
        let started = std::time::Instant::now();
        let claimed = if port.host_id == self.cfg.host {
            port.clone()
        } else {
            self.client
                .update_port(&port.id, json!({"binding:host_id": self.cfg.host}))
                .await
                .map_err(|e| from_client("claiming the port for this host", e))?
        };
        let t_claim = started.elapsed();
        let seen = self
            .wait_for_port(&port.id, claimed.revision_number)
            .await?;
        let t_watch = started.elapsed();
        // The convergence loop realizes the port (it was woken by the same frame):
        // wait for a pass that started from a mirror holding it, rather than running
        // a second pass of our own.
        let mut passes = self.passes.subscribe();
        self.converge_wanted.notify_one();
        let report = tokio::time::timeout(
            Duration::from_secs(15),
            passes.wait_for(|r| r.generation >= seen && (r.reported || !wait_reported)),
        )
        .await
        .map_err(|_| {
            AgentError::Unavailable(format!(
                "port {} was not realized within 15 s (see the agent log)",
                port.id
            ))
        })?
        .map_err(|_| AgentError::Unavailable("the agent is shutting down".into()))?
        .clone();
        tracing::info!(
            port = %port.id,
            claim_ms = t_claim.as_secs_f64() * 1e3,
            watch_ms = (t_watch - t_claim).as_secs_f64() * 1e3,
            converge_ms = (started.elapsed() - t_watch).as_secs_f64() * 1e3,
            "port bound"
        );
        if let Some(why) = report.problems.get(&port.id) {
            return Err(AgentError::Unavailable(format!(
                "port {} cannot be realized: {why}",
                port.id
            )));
        }
        let d = report
            .ports
            .get(&port.id)
            .ok_or_else(|| AgentError::Unavailable(format!("port {} was not realized", port.id)))?;
        if wait_reported && !lock(&self.reported).contains_key(&port.id) {
            return Err(AgentError::Unavailable(format!(
                "port {} is up but the server did not take its ACTIVE status",
                port.id
            )));
        }
        Ok(BindResult {
            port_id: port.id.clone(),
            network_id: d.network_id.clone(),
            netns: d.netns.clone(),
            ifname: d.ifname.clone(),
            mac_address: d.mac.to_string(),
            addresses: d.addresses.iter().map(|a| a.to_string()).collect(),
            gateways: d
                .routes
                .iter()
                .filter(|r| r.dest.prefix_len() == 0)
                .filter_map(|r| r.gateway.map(|g| g.to_string()))
                .collect(),
            routes: d
                .routes
                .iter()
                .map(|r| RouteView {
                    destination: r.dest.to_string(),
                    gateway: r.gateway.map(|g| g.to_string()),
                })
                .collect(),
            mtu: d.mtu,
            tap: d.tap.clone(),
            bridge: d.bridge.clone(),
        })
    }

    /// Drops a binding from the local state (saved); whether there was one.
    fn forget_binding(&self, port_id: &str) -> Result<bool, AgentError> {
        let mut state = lock(&self.state);
        let removed = state.bindings.remove(port_id).is_some();
        if removed {
            self.save_state(&state)?;
            self.inputs_changed();
        }
        Ok(removed)
    }

    /// Removes a binding: the interface goes, and the server is told the port is no
    /// longer on this host. Unbinding a port that is not bound here is a no-op.
    #[tracing::instrument(name = "unbind", skip_all, fields(port = %port_id))]
    pub async fn unbind(&self, port_id: &str) -> Result<bool, AgentError> {
        let removed = self.forget_binding(port_id)?;
        if !removed {
            return Ok(false);
        }
        // The next pass removes the interface and the port's rules; the caller need
        // not wait for it (deleting a link waits for kernel grace periods). The
        // binding is forgotten on disk already, so a restart removes them as well,
        // and a bind into the same namespace meanwhile finds the old end gone first.
        self.converge_wanted.notify_one();
        self.unclaim(port_id).await?;
        Ok(true)
    }

    /// Tells the server a port is no longer bound on this host (`binding:host_id`
    /// cleared, `DOWN`, unbound), without touching the kernel. A port that is gone, or
    /// that this agent may not change (bound to another host under a host-scoped
    /// credential), is left alone.
    #[tracing::instrument(name = "unclaim", skip_all, fields(port = %port_id))]
    pub async fn unclaim(&self, port_id: &str) -> Result<(), AgentError> {
        let attrs = json!({
            "binding:host_id": "",
            "status": "DOWN",
            "binding:vif_type": "unbound",
            "binding:vif_details": {},
        });
        match self.client.update_port(port_id, attrs).await {
            Ok(_) | Err(ClientError::NotFound { .. }) => Ok(()),
            Err(ClientError::Api { status: 403, .. }) => {
                tracing::warn!(port = %port_id, "not unbinding a port this agent may not change");
                Ok(())
            }
            Err(e) => Err(from_client("releasing the port on the server", e)),
        }
    }

    /// Replaces the host ports published to a bound port, and returns once a
    /// convergence pass has applied them.
    #[tracing::instrument(name = "set_published", skip_all, fields(port = %port_id))]
    pub async fn set_published(
        &self,
        port_id: &str,
        published: Vec<PublishedPort>,
    ) -> Result<(), AgentError> {
        {
            let mut state = lock(&self.state);
            let taken: Vec<&PublishedPort> = state
                .bindings
                .iter()
                .filter(|(id, _)| id.as_str() != port_id)
                .flat_map(|(_, b)| b.published.iter())
                .collect();
            if let Some(clash) = published.iter().find(|p| {
                taken.iter().any(|t| {
                    t.protocol == p.protocol
                        && t.host_port == p.host_port
                        && (t.host_ip.is_none() || p.host_ip.is_none() || t.host_ip == p.host_ip)
                })
            }) {
                return Err(AgentError::Conflict(format!(
                    "host port {}/{} is already published on this host",
                    clash.host_port, clash.protocol
                )));
            }
            let Some(b) = state.bindings.get_mut(port_id) else {
                return Err(AgentError::NotFound(format!(
                    "port {port_id} is not bound on this host"
                )));
            };
            if b.published == published {
                return Ok(());
            }
            b.published = published;
            self.save_state(&state)?;
            self.inputs_changed();
        }
        self.converge_once().await
    }

    /// Forgets a binding without waiting for the kernel: the interface goes with the
    /// next pass, which this wakes. For callers that settle the port on the server
    /// themselves (Docker's DeleteEndpoint, then ReleaseAddress deletes the port).
    /// Returns whether the port was bound here.
    #[tracing::instrument(name = "release", skip_all, fields(port = %port_id))]
    pub fn release(&self, port_id: &str) -> Result<bool, AgentError> {
        let removed = self.forget_binding(port_id)?;
        if removed {
            self.converge_wanted.notify_one();
        }
        Ok(removed)
    }

    /// Whether a port is bound on this host.
    pub fn is_bound(&self, port_id: &str) -> bool {
        lock(&self.state).bindings.contains_key(port_id)
    }

    pub fn bindings(&self) -> Vec<BindingView> {
        let state = lock(&self.state);
        let last = self.passes.borrow();
        state
            .bindings
            .iter()
            .map(|(id, b)| BindingView {
                port_id: id.clone(),
                netns: b.netns.clone(),
                ifname: b.ifname.clone(),
                realized: last.realized.contains(id),
                waiting: last.problems.get(id).cloned(),
            })
            .collect()
    }
}
