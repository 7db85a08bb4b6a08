//! Agents: Neutron's agents API (`/v2.0/agents`, what `openstack network agent list`
//! shows) and kuryr's two agent-facing extensions: the heartbeat
//! (`PUT /v2.0/kuryr/agents/{host}`) and the host watch
//! (`GET /v2.0/kuryr/hosts/{host}/watch?since=REV`, NDJSON `HostFrame`s).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use bytes::Bytes;
use kuryr_model::input::Input;
use kuryr_model::{
    AGENT_BINARY, AGENT_TYPE, Agent, AgentReport, HostFrame, HostIds, HostObjects, HostVtep,
    NeutronError,
};
use kuryr_store::{Compare, Revision, Txn};
use serde_json::{Map, Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::db::{Db, Entry, HostView, Table, keys};
use super::policy::POLICY;
use super::resource::{encode, enforce, parse_body};
use super::{ApiError, ApiResult, Ctx, Shared, new_id};

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/agents", get(list))
        .route("/agents/{id}", get(show).put(update).delete(remove))
        .route("/kuryr/agents/{host}", put(heartbeat))
        .route("/kuryr/hosts/{host}/watch", get(watch))
}

/// Agents are one kind of record: every rule is about the caller alone, so an agent
/// the caller may not read does not exist for it (a list is simply empty).
fn may(ctx: &Ctx, action: &str) -> bool {
    POLICY.allows(action, ctx, &Map::new())
}

fn authorize(ctx: &Ctx, id: &str, action: &str) -> ApiResult<()> {
    if !may(ctx, "get_agent") {
        return Err(not_found(id));
    }
    enforce(ctx, action, &Map::new(), &[])
}

/// kuryr's per-host actions: an admin, or the agent of `host`.
pub(crate) fn authorize_host(ctx: &Ctx, host: &str, action: &str) -> ApiResult<()> {
    let mut t = Map::new();
    t.insert("host".into(), Value::String(host.to_string()));
    enforce(ctx, action, &t, &[])
}

fn not_found(id: &str) -> ApiError {
    ApiError(NeutronError::new(
        404,
        "AgentNotFound",
        format!("Agent {id} could not be found."),
    ))
}

/// Host names become store keys and device-independent labels: keep them plain.
pub(crate) fn check_host(host: &str) -> ApiResult<()> {
    let ok = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ApiError(NeutronError::invalid_input(format!(
            "Invalid host name {host:?}: use letters, digits, '.', '-' and '_'"
        ))))
    }
}

pub(crate) fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn neutron_time(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .unwrap_or_default()
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

fn view(a: &Agent, down_time: Duration) -> Value {
    let alive = unix_now() - a.heartbeat_unix <= down_time.as_secs() as i64;
    json!({
        "id": a.id, "agent_type": a.agent_type, "binary": a.binary, "host": a.host,
        "topic": a.topic, "admin_state_up": a.admin_state_up, "alive": alive,
        "availability_zone": a.availability_zone, "configurations": a.configurations,
        "description": a.description, "created_at": a.created_at, "started_at": a.started_at,
        "heartbeat_timestamp": a.heartbeat_timestamp, "resources_synced": null,
    })
}

fn find<'a>(db: &'a Db, id: &str) -> Option<&'a Entry<Agent>> {
    db.agents.values().find(|e| e.value.id == id)
}

async fn list(
    State(net): State<Shared>,
    ctx: Ctx,
    Query(params): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    if !may(&ctx, "get_agent") {
        return Ok(Json(json!({ "agents": [] })));
    }
    let fields: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k == "fields")
        .map(|(_, v)| v.as_str())
        .collect();
    // Repeated filters on one attribute are alternatives, as elsewhere in Neutron.
    let mut filters: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (k, v) in &params {
        if !matches!(
            k.as_str(),
            "fields" | "limit" | "marker" | "sort_key" | "sort_dir" | "page_reverse"
        ) {
            filters.entry(k).or_default().push(v);
        }
    }
    let down = net.config.agent_down_time;
    let db = net.db();
    let mut out = Vec::new();
    for e in db.agents.values() {
        let v = view(&e.value, down);
        let matches = filters.iter().all(|(k, wanted)| {
            let have = match &v[*k] {
                Value::String(s) => s.clone(),
                Value::Bool(b) => b.to_string(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            wanted.iter().any(|w| w.eq_ignore_ascii_case(&have))
        });
        if !matches {
            continue;
        }
        out.push(if fields.is_empty() {
            v
        } else {
            let m: Map<String, Value> = fields
                .iter()
                .filter_map(|f| v.get(*f).map(|x| (f.to_string(), x.clone())))
                .collect();
            Value::Object(m)
        });
    }
    Ok(Json(json!({ "agents": out })))
}

async fn show(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    authorize(&ctx, &id, "get_agent")?;
    let db = net.db();
    let e = find(&db, &id).ok_or_else(|| not_found(&id))?;
    Ok(Json(
        json!({"agent": view(&e.value, net.config.agent_down_time)}),
    ))
}

async fn update(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    authorize(&ctx, &id, "update_agent")?;
    let body = parse_body(&body)?;
    let Some(Value::Object(attrs)) = body.get("agent").cloned() else {
        return Err(ApiError(NeutronError::bad_request(
            "Resource body required: {\"agent\": {...}}",
        )));
    };
    let mut input = Input::new(attrs);
    let admin_state_up = input.boolean("admin_state_up")?;
    let description = input.string("description", 255)?;
    input.finish()?;
    loop {
        let (key, rev, mut agent) = {
            let db = net.db();
            let e = find(&db, &id).ok_or_else(|| not_found(&id))?;
            (keys::agent(&e.value.host), e.rev, (*e.value).clone())
        };
        if let Some(v) = admin_state_up {
            agent.admin_state_up = v;
        }
        if let Some(d) = &description {
            agent.description = d.clone();
        }
        let txn = Txn::new()
            .when(Compare::ModRevision(key.clone(), rev))
            .put(key, encode(&agent)?);
        if net.commit(txn).await? {
            return Ok(Json(
                json!({"agent": view(&agent, net.config.agent_down_time)}),
            ));
        }
    }
}

async fn remove(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    authorize(&ctx, &id, "delete_agent")?;
    let key = {
        let db = net.db();
        keys::agent(&find(&db, &id).ok_or_else(|| not_found(&id))?.value.host)
    };
    net.commit(Txn::new().delete(key)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Registers the agent on its first report and records every later one. The
/// operator's `admin_state_up` and `description` survive heartbeats.
async fn heartbeat(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(host): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    check_host(&host)?;
    authorize_host(&ctx, &host, "kuryr_report_state")?;
    let body = parse_body(&body)?;
    let report: AgentReport = body
        .get("agent")
        .cloned()
        .and_then(|v| serde_json::from_value(v).ok())
        .ok_or_else(|| {
            ApiError(NeutronError::bad_request(
                "Body must be {\"agent\": {\"host\", \"tunneling_ip\", \"started_at_unix\", ...}}",
            ))
        })?;
    if report.host != host {
        return Err(ApiError(NeutronError::invalid_input(format!(
            "Report for host {} sent to /kuryr/agents/{host}",
            report.host
        ))));
    }
    if report.tunneling_ip.parse::<std::net::IpAddr>().is_err() {
        return Err(ApiError(NeutronError::invalid_input(format!(
            "Invalid tunneling_ip {:?}",
            report.tunneling_ip
        ))));
    }
    let key = keys::agent(&host);
    loop {
        let now = unix_now();
        let existing = net.db().agents.get(&host).cloned();
        let configurations = json!({
            "tunneling_ip": report.tunneling_ip,
            "tunnel_types": ["vxlan"],
            "l2_population": true,
            "interface_mappings": report.interface_mappings,
            "devices": report.devices,
        });
        let (agent, compare) = match &existing {
            Some(e) => {
                let mut a = (*e.value).clone();
                a.configurations = configurations;
                a.started_at = neutron_time(report.started_at_unix);
                a.heartbeat_timestamp = neutron_time(now);
                a.heartbeat_unix = now;
                (a, Compare::ModRevision(key.clone(), e.rev))
            }
            None => (
                Agent {
                    id: new_id(),
                    agent_type: AGENT_TYPE.into(),
                    binary: AGENT_BINARY.into(),
                    host: host.clone(),
                    topic: "N/A".into(),
                    admin_state_up: true,
                    availability_zone: None,
                    configurations,
                    description: String::new(),
                    created_at: neutron_time(now),
                    started_at: neutron_time(report.started_at_unix),
                    heartbeat_timestamp: neutron_time(now),
                    heartbeat_unix: now,
                },
                Compare::Absent(key.clone()),
            ),
        };
        let txn = Txn::new().when(compare).put(key.clone(), encode(&agent)?);
        if net.commit(txn).await? {
            return Ok(Json(
                json!({"agent": view(&agent, net.config.agent_down_time)}),
            ));
        }
    }
}

#[derive(serde::Deserialize)]
struct WatchParams {
    #[serde(default)]
    since: Revision,
}

/// What a watch has sent so far: id → store revision of the version sent.
#[derive(Default)]
struct Sent {
    networks: HashMap<String, Revision>,
    subnets: HashMap<String, Revision>,
    ports: HashMap<String, Revision>,
    security_groups: HashMap<String, Revision>,
    security_group_rules: HashMap<String, Revision>,
    vteps: HashMap<String, String>,
    routers: HashMap<String, Revision>,
    floatingips: HashMap<String, Revision>,
    port_forwardings: HashMap<String, Revision>,
    loadbalancers: HashMap<String, Revision>,
    listeners: HashMap<String, Revision>,
    pools: HashMap<String, Revision>,
    members: HashMap<String, Revision>,
    healthmonitors: HashMap<String, Revision>,
}

/// Puts objects that are new or changed since `sent` (or, with `since`, changed
/// after that revision) and deletes ids that left; records what was sent.
fn diff_table<T: Clone>(
    table: &Table<T>,
    sent: &mut HashMap<String, Revision>,
    since: Option<Revision>,
    put: &mut Vec<T>,
    delete: &mut Vec<String>,
) {
    for (id, e) in table {
        let changed = match since {
            Some(since) => e.rev > since,
            None => sent.get(id) != Some(&e.rev),
        };
        if changed {
            put.push((*e.value).clone());
        }
    }
    let gone: Vec<String> = sent
        .keys()
        .filter(|id| !table.contains_key(*id))
        .cloned()
        .collect();
    for id in gone {
        sent.remove(&id);
        delete.push(id);
    }
    for (id, e) in table {
        sent.insert(id.clone(), e.rev);
    }
}

impl Sent {
    /// The next frame for `view`. `since` is set for the first frame of a stream.
    fn frame(&mut self, view: &HostView, revision: Revision, since: Option<Revision>) -> HostFrame {
        let mut put = HostObjects::default();
        let mut delete = HostIds::default();
        diff_table(
            &view.networks,
            &mut self.networks,
            since,
            &mut put.networks,
            &mut delete.networks,
        );
        diff_table(
            &view.subnets,
            &mut self.subnets,
            since,
            &mut put.subnets,
            &mut delete.subnets,
        );
        diff_table(
            &view.ports,
            &mut self.ports,
            since,
            &mut put.ports,
            &mut delete.ports,
        );
        diff_table(
            &view.security_groups,
            &mut self.security_groups,
            since,
            &mut put.security_groups,
            &mut delete.security_groups,
        );
        diff_table(
            &view.security_group_rules,
            &mut self.security_group_rules,
            since,
            &mut put.security_group_rules,
            &mut delete.security_group_rules,
        );
        diff_table(
            &view.routers,
            &mut self.routers,
            since,
            &mut put.routers,
            &mut delete.routers,
        );
        diff_table(
            &view.floatingips,
            &mut self.floatingips,
            since,
            &mut put.floatingips,
            &mut delete.floatingips,
        );
        diff_table(
            &view.port_forwardings,
            &mut self.port_forwardings,
            since,
            &mut put.port_forwardings,
            &mut delete.port_forwardings,
        );
        diff_table(
            &view.loadbalancers,
            &mut self.loadbalancers,
            since,
            &mut put.loadbalancers,
            &mut delete.loadbalancers,
        );
        diff_table(
            &view.listeners,
            &mut self.listeners,
            since,
            &mut put.listeners,
            &mut delete.listeners,
        );
        diff_table(
            &view.pools,
            &mut self.pools,
            since,
            &mut put.pools,
            &mut delete.pools,
        );
        diff_table(
            &view.members,
            &mut self.members,
            since,
            &mut put.members,
            &mut delete.members,
        );
        diff_table(
            &view.healthmonitors,
            &mut self.healthmonitors,
            since,
            &mut put.healthmonitors,
            &mut delete.healthmonitors,
        );
        for (host, ip) in &view.vteps {
            if since.is_some() || self.vteps.get(host) != Some(ip) {
                put.vteps.push(HostVtep {
                    host: host.clone(),
                    tunneling_ip: ip.clone(),
                });
            }
        }
        let gone: Vec<String> = self
            .vteps
            .keys()
            .filter(|h| !view.vteps.contains_key(*h))
            .cloned()
            .collect();
        for h in gone {
            self.vteps.remove(&h);
            delete.vteps.push(h);
        }
        self.vteps = view.vteps.clone().into_iter().collect();
        let present = since.map(|_| {
            let ids = |t: &HashMap<String, Revision>| {
                let mut v: Vec<String> = t.keys().cloned().collect();
                v.sort();
                v
            };
            HostIds {
                networks: ids(&self.networks),
                subnets: ids(&self.subnets),
                ports: ids(&self.ports),
                security_groups: ids(&self.security_groups),
                security_group_rules: ids(&self.security_group_rules),
                vteps: view.vteps.keys().cloned().collect(),
                routers: ids(&self.routers),
                floatingips: ids(&self.floatingips),
                port_forwardings: ids(&self.port_forwardings),
                loadbalancers: ids(&self.loadbalancers),
                listeners: ids(&self.listeners),
                pools: ids(&self.pools),
                members: ids(&self.members),
                healthmonitors: ids(&self.healthmonitors),
            }
        });
        HostFrame {
            revision,
            present,
            put,
            delete,
        }
    }
}

fn is_empty(f: &HostFrame) -> bool {
    let p = &f.put;
    let d = &f.delete;
    f.present.is_none()
        && p.networks.is_empty()
        && p.subnets.is_empty()
        && p.ports.is_empty()
        && p.security_groups.is_empty()
        && p.security_group_rules.is_empty()
        && p.vteps.is_empty()
        && p.routers.is_empty()
        && p.floatingips.is_empty()
        && p.port_forwardings.is_empty()
        && p.loadbalancers.is_empty()
        && p.listeners.is_empty()
        && p.pools.is_empty()
        && p.members.is_empty()
        && p.healthmonitors.is_empty()
        && d == &HostIds::default()
}

fn line(frame: &HostFrame) -> Bytes {
    let mut v = serde_json::to_vec(frame).unwrap_or_else(|_| b"{}".to_vec());
    v.push(b'\n');
    Bytes::from(v)
}

/// Could this batch of changed keys alter the host's view? Agent records matter only
/// for hosts the view names; everything Neutron does may.
fn relevant(keys: &[String], hosts_in_view: &HashSet<String>) -> bool {
    keys.is_empty()
        || keys
            .iter()
            .any(|k| match k.strip_prefix("/neutron/agents/") {
                Some(host) => hosts_in_view.contains(host),
                None => [
                    "networks/",
                    "subnets/",
                    "ports/",
                    "security-groups/",
                    "security-group-rules/",
                    "routers/",
                    "floatingips/",
                    "port-forwardings/",
                    "loadbalancers/",
                    "listeners/",
                    "lb-pools/",
                    "lb-members/",
                    "healthmonitors/",
                ]
                .iter()
                .any(|t| k["/neutron/".len().min(k.len())..].starts_with(t)),
            })
}

/// A chunked NDJSON stream of the host's view: first everything changed since
/// `since` plus the ids now present, then changes as they are applied, with a
/// keepalive frame when nothing happens.
async fn watch(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(host): Path<String>,
    Query(params): Query<WatchParams>,
    watches: crate::observe::OpenWatches,
) -> ApiResult<Response> {
    check_host(&host)?;
    authorize_host(&ctx, &host, "kuryr_watch_host")?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::convert::Infallible>>(16);
    let mut changes = net.changes.subscribe();
    let keepalive = net.config.watch_keepalive;
    let mut closing = net.closing.subscribe();
    tokio::spawn(async move {
        let _open = watches.opened();
        let mut sent = Sent::default();
        let mut since = Some(params.since);
        let mut last_sent = tokio::time::Instant::now();
        loop {
            let closed = *closing.borrow();
            if closed {
                return;
            }
            let frame = {
                let db = net.db();
                let revision = *net.applied.borrow();
                let view = db.host_view(&host);
                let hosts = view
                    .ports
                    .values()
                    .map(|p| p.value.host_id.clone())
                    .collect();
                // A `since` beyond this store's revision comes from another store's
                // history (a migration): the agent gets everything.
                let since = since.take().filter(|s| *s <= revision);
                (sent.frame(&view, revision, since), hosts)
            };
            let (frame, hosts_in_view): (HostFrame, HashSet<String>) = frame;
            if !is_empty(&frame) {
                if tx.send(Ok(line(&frame))).await.is_err() {
                    return;
                }
                last_sent = tokio::time::Instant::now();
            }
            // Wait for a change that may matter; a keepalive when nothing was sent for
            // `keepalive` (counted from the last frame: a steady flow of changes that
            // do not matter here must not starve it).
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = closing.changed() => return,
                    _ = tokio::time::sleep_until(last_sent + keepalive) => {
                        let ka = HostFrame { revision: *net.applied.borrow(), ..Default::default() };
                        if tx.send(Ok(line(&ka))).await.is_err() {
                            return;
                        }
                        last_sent = tokio::time::Instant::now();
                    }
                    got = changes.recv() => match got {
                        Ok(keys) if relevant(&keys, &hosts_in_view) => break,
                        Ok(_) => {}
                        Err(RecvError::Lagged(_)) => break,
                        Err(RecvError::Closed) => return,
                    }
                }
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relevance_of_changed_keys() {
        let hosts: HashSet<String> = ["h2".to_string()].into();
        assert!(relevant(&[], &hosts));
        assert!(relevant(&["/neutron/ports/x".into()], &hosts));
        assert!(relevant(&["/neutron/agents/h2".into()], &hosts));
        assert!(!relevant(&["/neutron/agents/h9".into()], &hosts));
        assert!(!relevant(&["/neutron/quotas/p".into()], &hosts));
        assert!(!relevant(&["/identity/users/u".into()], &hosts));
    }
}
