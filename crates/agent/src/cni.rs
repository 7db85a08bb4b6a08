//! The CNI daemon: what `kuryr-cni` asks of this agent (`POST /v1/cni` on the local
//! API), answered in the CNI's own terms: ADD results in the spec's 1.1.0 shape (the
//! plugin converts them to the version the runtime asked for), errors with the
//! spec's codes.
//!
//! A container's port comes one of two ways:
//! - Kubernetes (the configuration names no `network`): the controller assigns one
//!   of this node's pool ports to the pod (`device_id` = the pod's uid). ADD waits
//!   for that in this host's view, which the server's watch keeps current, and binds
//!   the port: no Neutron call on the pod's path. DEL releases the binding; the
//!   port stays this node's, for the controller to recycle.
//! - standalone (`network` names a Neutron network: Podman, cnitool): the agent
//!   makes a port for the container (`kuryr:container`, as Docker's) with the
//!   plugins' credentials; DEL deletes it.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use kuryr_client::ClientError;
use kuryr_cni::{Cidr, CniError, CniResult, DaemonRequest, Dns, Interface, IpConfig, Route};
use kuryr_dataplane::netns::NetNs;
use kuryr_model::Port;
use serde_json::json;

use crate::state::{Binding, CniAttachment};
use crate::{Agent, AgentError, BindResult, lock};

/// The `device_owner` of pods' ports (kuryr-kubernetes' own, which the controller sets).
pub const POD_DEVICE_OWNER: &str = "compute:kuryr";
/// The `device_owner` of standalone containers' ports: kuryr-libnetwork's, as the
/// Docker plugin's. Not a `compute:` one: a project member may not delete those.
pub const CONTAINER_DEVICE_OWNER: &str = "kuryr:container";

/// Per-container locks of CNI requests (see `Agent::cni_containers`); an entry goes
/// when its last holder is done.
#[derive(Default)]
pub(crate) struct ContainerLocks(std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl ContainerLocks {
    async fn run<T>(&self, container: &str, f: impl std::future::Future<Output = T>) -> T {
        let entry = lock(&self.0)
            .entry(container.to_string())
            .or_default()
            .clone();
        let out = {
            let _held = entry.lock().await;
            f.await
        };
        let mut map = lock(&self.0);
        // Ours and the map's: nobody else waits on it.
        if Arc::strong_count(&entry) == 2 {
            map.remove(container);
        }
        out
    }
}

/// A failed CNI request: the spec's error object, with an HTTP status for the
/// local API (the plugin reads the code, not the status).
struct Failure(CniError);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.0)).into_response()
    }
}

fn fail(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Failure {
    Failure(CniError::new(code, msg, details))
}

/// An agent error in CNI terms: what the caller got wrong is an invalid
/// configuration (7), a missing container is 3, the rest may pass (11).
fn from_agent(what: &str, e: AgentError) -> Failure {
    let code = match &e {
        AgentError::BadRequest(_) | AgentError::NotFound(_) => CniError::INVALID_NETWORK_CONFIG,
        AgentError::Conflict(_) => CniError::PLUGIN_CONFLICT,
        _ => CniError::TRY_AGAIN_LATER,
    };
    fail(code, what, e.to_string())
}

fn from_client(what: &str, e: ClientError) -> Failure {
    from_agent(what, crate::error::from_client(what, e))
}

/// `POST /v1/cni`.
pub(crate) async fn handle(State(agent): State<Arc<Agent>>, body: Bytes) -> Response {
    let req: DaemonRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return fail(
                CniError::DECODING_FAILURE,
                "the agent could not decode the plugin's request",
                e.to_string(),
            )
            .into_response();
        }
    };
    let started = Instant::now();
    let command = req.command.as_str().to_string();
    let serve = async {
        match command.as_str() {
            "ADD" => agent.cni_add(&req).await.map(|r| Json(r).into_response()),
            "DEL" => agent.cni_del(&req).await.map(|_| empty()),
            "CHECK" => agent.cni_check(&req).await.map(|_| empty()),
            "STATUS" => agent.cni_status().map(|_| empty()),
            "GC" => agent.cni_gc(&req).await.map(|_| empty()),
            other => Err(fail(
                CniError::INVALID_ENVIRONMENT,
                format!("the agent does not serve CNI_COMMAND {other:?}"),
                "",
            )),
        }
    };
    let outcome = match req.container_id.as_deref().filter(|c| !c.is_empty()) {
        Some(container) => agent.cni_containers.run(container, serve).await,
        None => serve.await,
    };
    let ok = outcome.is_ok();
    agent.metrics.cni_request(&command, ok, started.elapsed());
    match outcome {
        Ok(body) => body,
        Err(f) => {
            tracing::warn!(command, code = f.0.code, msg = %f.0.msg, details = %f.0.details, "CNI request failed");
            f.into_response()
        }
    }
}

/// The answer of a verb that returns nothing.
fn empty() -> Response {
    Json(json!({})).into_response()
}

fn required<'a>(v: &'a Option<String>, var: &str) -> Result<&'a str, Failure> {
    match v.as_deref() {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(fail(
            CniError::INVALID_ENVIRONMENT,
            format!("{var} is required"),
            "",
        )),
    }
}

/// The configuration's `name` (bindings are kept per configuration, for GC).
fn conf_name(req: &DaemonRequest) -> Result<String, Failure> {
    Ok(req.netconf().map_err(Failure)?.name)
}

/// The Neutron network of a standalone configuration; `None` in Kubernetes mode.
fn standalone_network(req: &DaemonRequest) -> Option<String> {
    req.netconf()
        .ok()
        .and_then(|c| c.network)
        .filter(|s| !s.is_empty())
}

/// The pod an ADD in Kubernetes mode is for.
struct Pod<'a> {
    uid: Option<&'a str>,
    namespace: Option<&'a str>,
    name: Option<&'a str>,
}

impl Pod<'_> {
    /// Whether `port` is this pod's: its `device_id` is the pod's uid, or (a runtime
    /// that passes no uid) its name is `namespace/name`.
    fn owns(&self, port: &Port) -> bool {
        match (self.uid, self.namespace, self.name) {
            (Some(uid), _, _) => port.device_id == uid,
            (None, Some(ns), Some(name)) => port.name == format!("{ns}/{name}"),
            _ => false,
        }
    }

    fn describe(&self) -> String {
        match (self.uid, self.namespace, self.name) {
            (_, Some(ns), Some(name)) => format!("{ns}/{name}"),
            (Some(uid), _, _) => format!("uid {uid}"),
            _ => "?".into(),
        }
    }
}

/// The ADD result (1.1.0 shape, which the plugin converts to the runtime's version)
/// from what the bind realized. The bind's strings are the agent's own rendering of
/// typed addresses, so a parse failure is an agent bug, reported as such.
fn add_result(r: &BindResult, dns: &[String]) -> Result<CniResult, Failure> {
    let bad = |what: &str, v: &str| {
        fail(
            CniError::IO_FAILURE,
            "the agent could not render the ADD result",
            format!("{what} {v:?}"),
        )
    };
    let mut ips = Vec::new();
    for a in &r.addresses {
        let address: Cidr = a.parse().map_err(|_| bad("address", a))?;
        let gateway = r
            .gateways
            .iter()
            .filter_map(|g| g.parse::<IpAddr>().ok())
            .find(|g| g.is_ipv4() == address.addr.is_ipv4());
        ips.push(IpConfig::new(address, gateway, Some(0)));
    }
    let mut routes = Vec::new();
    for rt in &r.routes {
        let dst: Cidr = rt
            .destination
            .parse()
            .map_err(|_| bad("route", &rt.destination))?;
        let gw = match &rt.gateway {
            Some(g) => Some(g.parse::<IpAddr>().map_err(|_| bad("gateway", g))?),
            None => None,
        };
        routes.push(Route::new(dst, gw));
    }
    Ok(CniResult {
        interfaces: vec![
            Interface::in_sandbox(&r.ifname, r.netns.to_string_lossy())
                .with_mac(&r.mac_address)
                .with_mtu(r.mtu),
        ],
        ips,
        routes,
        dns: Dns {
            nameservers: dns.to_vec(),
            ..Dns::default()
        },
    })
}

impl Agent {
    /// The bindings CNI made for `container` (all of them, or the one of `ifname`).
    fn cni_bindings(&self, container: &str, ifname: Option<&str>) -> Vec<(String, Binding)> {
        lock(&self.state)
            .bindings
            .iter()
            .filter(|(_, b)| {
                b.cni.as_ref().is_some_and(|c| c.container_id == container)
                    && ifname.is_none_or(|i| b.ifname == i)
            })
            .map(|(id, b)| (id.clone(), b.clone()))
            .collect()
    }

    /// The DNS servers of a port's subnets, from this host's view.
    fn dns_of(&self, port_id: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        if let Some((_, subnets)) = self.view_port(port_id) {
            for s in subnets {
                for d in s.dns_nameservers {
                    if !out.contains(&d) {
                        out.push(d);
                    }
                }
            }
        }
        out
    }

    #[tracing::instrument(name = "cni_add", skip_all, fields(container = ?req.container_id))]
    async fn cni_add(&self, req: &DaemonRequest) -> Result<CniResult, Failure> {
        let container = required(&req.container_id, "CNI_CONTAINERID")?;
        let netns = required(&req.netns, "CNI_NETNS")?;
        let ifname = required(&req.ifname, "CNI_IFNAME")?;
        let network = conf_name(req)?;
        if let Err(e) = NetNs::open(std::path::Path::new(netns)) {
            return Err(fail(
                CniError::UNKNOWN_CONTAINER,
                format!("{netns} is not a network namespace"),
                e.to_string(),
            ));
        }
        let mut attachment = CniAttachment {
            container_id: container.to_string(),
            network,
            ..Default::default()
        };
        let binding = |attachment: CniAttachment| Binding {
            netns: PathBuf::from(netns),
            ifname: ifname.to_string(),
            cni: Some(attachment),
            ..Default::default()
        };
        let result = match standalone_network(req) {
            None => {
                let pod = Pod {
                    uid: req.arg("K8S_POD_UID"),
                    namespace: req.arg("K8S_POD_NAMESPACE"),
                    name: req.arg("K8S_POD_NAME"),
                };
                if pod.uid.is_none() && (pod.namespace.is_none() || pod.name.is_none()) {
                    return Err(fail(
                        CniError::INVALID_ENVIRONMENT,
                        "Kubernetes mode needs K8S_POD_UID, or K8S_POD_NAMESPACE and \
                         K8S_POD_NAME, in CNI_ARGS",
                        "a configuration for other runtimes names a Neutron \"network\"",
                    ));
                }
                let started = Instant::now();
                let (port, premade) = self.wait_pod_port(&pod).await?;
                let waited = started.elapsed();
                attachment.pod_uid = pod.uid.map(str::to_string);
                self.replace_stale(&port.id, container, ifname).await?;
                let r = self
                    .bind_with(&port.id, binding(attachment), Some(&port))
                    .await
                    .map_err(|e| from_agent("binding the pod's port", e))?;
                self.metrics.cni_pod_port(premade);
                tracing::info!(
                    pod = %pod.describe(),
                    port = %port.id,
                    assigned_before_add = premade,
                    waited_ms = waited.as_secs_f64() * 1e3,
                    total_ms = started.elapsed().as_secs_f64() * 1e3,
                    "CNI ADD: pod wired"
                );
                r
            }
            Some(net) => {
                self.standalone_add(&net, container, ifname, attachment, binding)
                    .await?
            }
        };
        let dns = self.dns_of(&result.port_id);
        add_result(&result, &dns)
    }

    /// Waits for the port the controller gives `pod` on this host. Returns it and
    /// whether it was there when the ADD came (the pod's port was assigned before
    /// the runtime asked).
    async fn wait_pod_port(&self, pod: &Pod<'_>) -> Result<(Port, bool), Failure> {
        let mut changed = self.mirror_changed.subscribe();
        // The runtime retries an ADD that answers "try again later" (code 11).
        let wait = self.cfg.cni_pod_port_wait;
        let deadline = tokio::time::Instant::now() + wait;
        let mut first = true;
        loop {
            {
                let m = self.mirror.read().unwrap_or_else(|p| p.into_inner());
                let mut mine = m.ports.values().filter(|p| {
                    p.host_id == self.cfg.host && p.device_owner == POD_DEVICE_OWNER && pod.owns(p)
                });
                if let Some(p) = mine.next() {
                    return Ok((p.clone(), first));
                }
            }
            if first {
                tracing::info!(pod = %pod.describe(), "CNI ADD: waiting for the port of pod {}", pod.describe());
            }
            first = false;
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                return Err(fail(
                    CniError::TRY_AGAIN_LATER,
                    format!(
                        "pod {} has no port on host {} yet",
                        pod.describe(),
                        self.cfg.host
                    ),
                    format!(
                        "waited {} s for the kuryr controller to assign one (is it running?)",
                        wait.as_secs()
                    ),
                ));
            }
        }
    }

    /// Forgets bindings an ADD supersedes: the port bound for another container (its
    /// pod is gone and the port was given to this one, or the pod's sandbox was made
    /// again), and another port bound for this container's interface.
    async fn replace_stale(
        &self,
        port_id: &str,
        container: &str,
        ifname: &str,
    ) -> Result<(), Failure> {
        let stale: Vec<String> = lock(&self.state)
            .bindings
            .iter()
            .filter(|(id, b)| {
                let ours = b
                    .cni
                    .as_ref()
                    .is_some_and(|c| c.container_id == container && b.ifname == ifname);
                (id.as_str() == port_id && !ours) || (id.as_str() != port_id && ours)
            })
            .map(|(id, _)| id.clone())
            .collect();
        if stale.is_empty() {
            return Ok(());
        }
        for id in stale {
            tracing::info!(port = %id, "CNI ADD: replacing a stale binding");
            self.release(&id)
                .map_err(|e| from_agent("replacing a stale binding", e))?;
        }
        // The old interface (same port, same host-side name) goes before the new.
        self.wait_released().await;
        Ok(())
    }

    /// Waits (a while) for a pass that no longer has the bindings just forgotten, so
    /// that their interfaces are gone when the runtime hears back. Without a view
    /// from the server there is no pass to wait for: the next one removes them.
    async fn wait_released(&self) {
        let synced = self
            .mirror
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_synced();
        if !synced {
            return;
        }
        let seen = *self.mirror_changed.borrow();
        let mut passes = self.passes.subscribe();
        self.converge_wanted.notify_one();
        let waited = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            passes.wait_for(|r| r.generation >= seen),
        )
        .await;
        if waited.is_err() {
            tracing::warn!(
                "no convergence pass within 10 s: the released interfaces go with the next one"
            );
        }
    }

    async fn standalone_add(
        &self,
        net: &str,
        container: &str,
        ifname: &str,
        mut attachment: CniAttachment,
        binding: impl Fn(CniAttachment) -> Binding,
    ) -> Result<BindResult, Failure> {
        // ADD again for an interface already there: the same answer.
        if let Some((port_id, b)) = self.cni_bindings(container, Some(ifname)).pop() {
            return self
                .bind_with(&port_id, b, None)
                .await
                .map_err(|e| from_agent("binding the container's port", e));
        }
        let client = self.plugin_client();
        let network = if kuryr_model::input::is_uuid(net) {
            client
                .get_network(net)
                .await
                .map_err(|e| from_client(&format!("network {net}"), e))?
        } else {
            let mut found = client
                .list_networks(&[("name", net)])
                .await
                .map_err(|e| from_client(&format!("network {net}"), e))?;
            match found.len() {
                1 => found.remove(0),
                0 => {
                    return Err(fail(
                        CniError::INVALID_NETWORK_CONFIG,
                        format!("no Neutron network is named {net:?}"),
                        "",
                    ));
                }
                n => {
                    return Err(fail(
                        CniError::INVALID_NETWORK_CONFIG,
                        format!("{n} Neutron networks are named {net:?}: give its id"),
                        "",
                    ));
                }
            }
        };
        let short: String = container.chars().take(12).collect();
        // Made unbound (binding:host_id is not a project member's to set); the bind
        // claims it for this host with the agent's own credential.
        let port = client
            .create_port(json!({
                "network_id": network.id,
                "name": format!("cni-{short}"),
                "device_owner": CONTAINER_DEVICE_OWNER,
                "device_id": container,
            }))
            .await
            .map_err(|e| from_client("making the container's port", e))?;
        attachment.owned = true;
        match self
            .bind_with(&port.id, binding(attachment), Some(&port))
            .await
        {
            Ok(r) => Ok(r),
            Err(e) => {
                if let Err(de) = client.delete_port(&port.id).await {
                    tracing::warn!(port = %port.id, error = %de, "could not delete the port of a failed ADD");
                }
                Err(from_agent("binding the container's port", e))
            }
        }
    }

    /// Removes what an ADD made for `container` (and `ifname`, when given):
    /// nothing made is fine (DEL is idempotent).
    async fn cni_release(
        &self,
        container: &str,
        ifname: Option<&str>,
        standalone: bool,
    ) -> Result<(), Failure> {
        let bindings = self.cni_bindings(container, ifname);
        for (port_id, _) in &bindings {
            self.release(port_id)
                .map_err(|e| from_agent("releasing the binding", e))?;
        }
        if !bindings.is_empty() {
            self.wait_released().await;
        }
        for (port_id, b) in bindings {
            if b.cni.is_some_and(|c| c.owned) {
                self.delete_container_port(&port_id).await?;
            }
        }
        if standalone {
            // A port made by an ADD that died before it recorded its binding.
            let client = self.plugin_client();
            let left = client
                .list_ports(&[
                    ("device_id", container),
                    ("device_owner", CONTAINER_DEVICE_OWNER),
                ])
                .await
                .map_err(|e| from_client("finding the container's ports", e))?;
            // Unbound (the ADD died before its claim) or this host's.
            for p in left
                .into_iter()
                .filter(|p| p.host_id.is_empty() || p.host_id == self.cfg.host)
            {
                self.delete_container_port(&p.id).await?;
            }
        }
        Ok(())
    }

    /// Deletes a port made for a container (one already gone is fine).
    async fn delete_container_port(&self, port_id: &str) -> Result<(), Failure> {
        match self.plugin_client().delete_port(port_id).await {
            Ok(()) | Err(ClientError::NotFound { .. }) => Ok(()),
            Err(e) => Err(from_client("deleting the container's port", e)),
        }
    }

    /// Undoes a container's attachment as its DEL would (and under the same
    /// per-container lock): for a container whose namespace vanished without one.
    pub(crate) async fn cni_release_vanished(&self, container: &str, ifname: &str) {
        let released = self
            .cni_containers
            .run(container, self.cni_release(container, Some(ifname), false))
            .await;
        if let Err(f) = released {
            tracing::warn!(container, code = f.0.code, msg = %f.0.msg, details = %f.0.details,
                "could not release a vanished container's attachment; retried on a later pass");
        }
    }

    #[tracing::instrument(name = "cni_del", skip_all, fields(container = ?req.container_id))]
    async fn cni_del(&self, req: &DaemonRequest) -> Result<(), Failure> {
        let container = required(&req.container_id, "CNI_CONTAINERID")?;
        let ifname = required(&req.ifname, "CNI_IFNAME")?;
        self.cni_release(container, Some(ifname), standalone_network(req).is_some())
            .await
    }

    async fn cni_check(&self, req: &DaemonRequest) -> Result<(), Failure> {
        let container = required(&req.container_id, "CNI_CONTAINERID")?;
        let ifname = required(&req.ifname, "CNI_IFNAME")?;
        let Some((port_id, b)) = self.cni_bindings(container, Some(ifname)).pop() else {
            return Err(fail(
                CniError::UNKNOWN_CONTAINER,
                format!("container {container} has no interface {ifname} on this host"),
                "",
            ));
        };
        if NetNs::open(&b.netns).is_err() {
            return Err(fail(
                CniError::UNKNOWN_CONTAINER,
                format!("the network namespace {} is gone", b.netns.display()),
                "",
            ));
        }
        {
            let last = self.passes.borrow();
            if let Some(why) = last.problems.get(&port_id) {
                return Err(fail(
                    CniError::CHECK_FAILED,
                    format!("interface {ifname} is not in place"),
                    why.clone(),
                ));
            }
            if !last.realized.contains(&port_id) {
                return Err(fail(
                    CniError::CHECK_FAILED,
                    format!("interface {ifname} is not in place"),
                    "the agent's last pass did not find it",
                ));
            }
        }
        // The addresses the runtime was given must still be the port's.
        let have: BTreeSet<String> = self
            .view_port(&port_id)
            .map(|(p, _)| {
                p.fixed_ips
                    .iter()
                    .map(|f| f.ip_address.to_string())
                    .collect()
            })
            .unwrap_or_default();
        let prev = req.prev_result().map_err(Failure)?.unwrap_or_default();
        for ip in &prev.ips {
            let bare = ip.address.addr.to_string();
            if !have.contains(&bare) {
                return Err(fail(
                    CniError::CHECK_FAILED,
                    format!(
                        "address {} of the previous result is not the port's",
                        ip.address
                    ),
                    format!("port {port_id} has {have:?}"),
                ));
            }
        }
        Ok(())
    }

    fn cni_status(&self) -> Result<(), Failure> {
        let m = self.mirror.read().unwrap_or_else(|p| p.into_inner());
        if m.is_synced() {
            Ok(())
        } else {
            Err(fail(
                CniError::PLUGIN_NOT_AVAILABLE,
                "the kuryr agent has not synced with the server",
                "containers already wired keep their interfaces; new ones wait",
            ))
        }
    }

    async fn cni_gc(&self, req: &DaemonRequest) -> Result<(), Failure> {
        let network = conf_name(req)?;
        let valid: BTreeSet<(String, String)> = kuryr_cni::valid_attachments(&req.config)
            .map_err(Failure)?
            .into_iter()
            .collect();
        let stale: BTreeSet<(String, String)> = lock(&self.state)
            .bindings
            .values()
            .filter_map(|b| {
                let c = b.cni.as_ref()?;
                (c.network == network
                    && !valid.contains(&(c.container_id.clone(), b.ifname.clone())))
                .then(|| (c.container_id.clone(), b.ifname.clone()))
            })
            .collect();
        for (container, ifname) in &stale {
            tracing::info!(
                container,
                ifname,
                "CNI GC: removing an attachment the runtime no longer has"
            );
            self.cni_release(container, Some(ifname), false).await?;
        }
        Ok(())
    }
}
