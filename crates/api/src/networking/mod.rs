//! Neutron v2.0 core under `/networking`: networks, subnets, subnet pools, ports,
//! security groups and rules, tags, quotas and extensions.

pub(crate) mod agents;
pub(crate) mod db;
mod floatingips;
mod ip_availability;
pub(crate) mod l3_scheduler;
pub(crate) mod networks;
pub mod policy;
mod port_forwardings;
pub(crate) mod ports;
pub(crate) mod query;
mod quotas;
pub(crate) mod resource;
mod router_interfaces;
mod routers;
pub(crate) mod security_groups;
mod subnetpools;
mod subnets;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use kuryr_model::NeutronError;
use kuryr_store::{Revision, Store, StoreError, Txn, TxnOutcome};
use serde_json::{Value, json};

use crate::identity::{AuthContext, AuthMode, Identity};
pub use db::Db;

/// Networking settings that are the operator's choice.
#[derive(Debug, Clone)]
pub struct NetworkingConfig {
    pub public_url: String,
    /// MTU of the underlay; vxlan networks get 50 bytes less.
    pub underlay_mtu: u32,
    /// Inclusive VNI range for `provider:segmentation_id` of vxlan networks.
    pub vni_range: (u32, u32),
    pub auth_mode: AuthMode,
    /// An agent whose last heartbeat is older than this is shown `alive: false`.
    pub agent_down_time: Duration,
    /// How often a host watch sends a keepalive frame when nothing changed.
    pub watch_keepalive: Duration,
    /// The most resources one bulk create may hold.
    pub max_bulk: usize,
    /// Quotas of projects that have none of their own.
    pub default_quota: kuryr_model::Quota,
}

pub struct Networking {
    store: Arc<dyn Store>,
    db: RwLock<Db>,
    applied: tokio::sync::watch::Sender<Revision>,
    /// The keys each applied batch changed (empty: everything may have changed), for
    /// host watches to decide whether to recompute their view.
    changes: tokio::sync::broadcast::Sender<Arc<Vec<String>>>,
    /// Set when the server shuts down: host watches end, so that graceful shutdown
    /// (which waits for open responses) can finish.
    closing: tokio::sync::watch::Sender<bool>,
    /// Guard keys (addresses, MACs, VNIs) picked by requests in flight and not yet
    /// visible in `db`, so that concurrent requests here pick different ones.
    reserved: Mutex<HashSet<String>>,
    /// Per subnet, where the last automatic address allocation ended.
    hints: Mutex<HashMap<String, IpAddr>>,
    identity: Arc<Identity>,
    pub config: NetworkingConfig,
}

pub type Shared = Arc<Networking>;

impl Networking {
    pub async fn start(
        store: Arc<dyn Store>,
        identity: Arc<Identity>,
        config: NetworkingConfig,
    ) -> Result<Arc<Self>, StoreError> {
        let (kvs, rev) = store.range(db::PREFIX).await?;
        let mut db = Db {
            default_quota: config.default_quota,
            ..Db::default()
        };
        for kv in kvs {
            db.apply(&kuryr_store::Event {
                kind: kuryr_store::EventKind::Put,
                kv,
            });
        }
        let (applied, _) = tokio::sync::watch::channel(rev);
        let (changes, _) = tokio::sync::broadcast::channel(1024);
        let (closing, _) = tokio::sync::watch::channel(false);
        let this = Arc::new(Networking {
            store,
            db: RwLock::new(db),
            applied,
            changes,
            closing,
            reserved: Mutex::new(HashSet::new()),
            hints: Mutex::new(HashMap::new()),
            identity,
            config,
        });
        tokio::spawn(Self::follow(Arc::downgrade(&this), rev + 1));
        tokio::spawn(l3_scheduler::run(Arc::downgrade(&this)));
        Ok(this)
    }

    /// Keeps `db` current from the store's watch; re-lists when the watch cannot resume.
    async fn follow(this: std::sync::Weak<Self>, mut from: Revision) {
        loop {
            let Some(me) = this.upgrade() else { return };
            // Every key, not only /neutron/: `applied` then follows the store's own
            // revision, which is what the consistent-read barrier waits for.
            let stream = me.store.watch("/", from).await;
            drop(me);
            let mut stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "networking watch failed; retrying");
                    if let Some(me) = this.upgrade()
                        && matches!(e, StoreError::Compacted { .. })
                    {
                        from = me.relist().await.unwrap_or(from);
                        continue;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            while let Some(item) = stream.next().await {
                let Some(me) = this.upgrade() else { return };
                match item {
                    Ok(ev) => {
                        let mut batch = vec![ev];
                        // Apply whatever else is already queued under one lock.
                        let mut ended = false;
                        loop {
                            match stream.now_or_never_ext() {
                                Some(Some(Ok(more))) => batch.push(more),
                                Some(Some(Err(_))) | Some(None) => {
                                    ended = true;
                                    break;
                                }
                                None => break,
                            }
                        }
                        let last = batch.iter().map(|e| e.revision()).max().unwrap_or(from);
                        {
                            let mut db = me.db.write().unwrap_or_else(|p| p.into_inner());
                            for ev in &batch {
                                db.apply(ev);
                            }
                        }
                        from = last + 1;
                        me.applied.send_replace(last);
                        let keys: Vec<String> = batch
                            .into_iter()
                            .map(|e| e.kv.key)
                            .filter(|k| k.starts_with(db::PREFIX))
                            .collect();
                        // (An empty list means "everything may have changed".)
                        if !keys.is_empty() {
                            let _ = me.changes.send(Arc::new(keys));
                        }
                        if ended {
                            // Re-watch from the next revision; nothing was skipped.
                            break;
                        }
                    }
                    Err(StoreError::Lagged { resume_from }) => {
                        from = resume_from;
                        break;
                    }
                    Err(e @ StoreError::Compacted { .. }) => {
                        tracing::warn!(error = %e, "networking watch fell behind a compaction; re-listing");
                        from = me.relist().await.unwrap_or(from);
                        break;
                    }
                    // etcd lost a member or its quorum: resume from where it stopped,
                    // nothing is missed.
                    Err(e) => {
                        tracing::warn!(error = %e, from, "networking watch ended; resuming");
                        drop(me);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        break;
                    }
                }
            }
        }
    }

    async fn relist(&self) -> Option<Revision> {
        let (kvs, rev) = self.store.range(db::PREFIX).await.ok()?;
        let mut fresh = Db {
            default_quota: self.config.default_quota,
            ..Db::default()
        };
        for kv in kvs {
            fresh.apply(&kuryr_store::Event {
                kind: kuryr_store::EventKind::Put,
                kv,
            });
        }
        *self.db.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        self.applied.send_replace(rev);
        let _ = self.changes.send(Arc::new(Vec::new()));
        Some(rev + 1)
    }

    /// Ends every host watch (their agents reconnect to another replica or later).
    pub fn close_watches(&self) {
        self.closing.send_replace(true);
    }

    pub fn db(&self) -> RwLockReadGuard<'_, Db> {
        self.db.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `db` reflects revision `rev` (read-your-writes).
    pub async fn caught_up(&self, rev: Revision) {
        let mut rx = self.applied.subscribe();
        let _ = rx.wait_for(|applied| *applied >= rev).await;
    }

    /// Commits a transaction and waits until `db` shows it. `Ok(false)`: a compare failed.
    pub async fn commit(&self, txn: Txn) -> Result<bool, NeutronError> {
        match self.store.txn(txn).await {
            Ok(TxnOutcome::Committed(rev)) => {
                // Bounded: a view that stopped following (its store watch broken for
                // long) must not hold the request forever.
                if tokio::time::timeout(Duration::from_secs(10), self.caught_up(rev))
                    .await
                    .is_err()
                {
                    tracing::error!(
                        revision = rev,
                        "committed, but this server's view did not follow"
                    );
                    return Err(NeutronError::new(
                        503,
                        "ServiceUnavailable",
                        "The change was committed but this server's view of it is behind; \
                         check before retrying.",
                    ));
                }
                Ok(true)
            }
            Ok(TxnOutcome::CompareFailed(_)) => {
                // Let the db catch up with whatever beat us before the caller retries.
                if let Ok(rev) = self.store.current_revision().await {
                    self.caught_up(rev).await;
                }
                Ok(false)
            }
            Err(e) => {
                tracing::error!(error = %e, "store transaction failed");
                Err(NeutronError::new(
                    503,
                    "ServiceUnavailable",
                    "The store is unavailable; try again.",
                ))
            }
        }
    }

    /// A guard for the keys one request in flight picks (see [`Reservation`]).
    pub fn reservation(&self) -> Reservation<'_> {
        Reservation {
            net: self,
            keys: Vec::new(),
        }
    }

    pub fn is_reserved(&self, key: &str) -> bool {
        self.reserved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key)
    }

    /// How many keys requests in flight hold (0 when the server is idle).
    pub fn reserved_count(&self) -> usize {
        self.reserved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    pub fn hint(&self, subnet: &str) -> Option<IpAddr> {
        self.hints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(subnet)
            .copied()
    }

    pub fn set_hint(&self, subnet: &str, ip: IpAddr) {
        self.hints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(subnet.to_string(), ip);
    }

    pub async fn store_has(&self, key: &str) -> bool {
        matches!(self.store.get(key).await, Ok(Some(_)))
    }

    pub fn router(self: &Arc<Self>) -> Router {
        let v2 = Router::new()
            .route("/", get(resources_doc))
            .route("/extensions", get(extensions))
            .route("/extensions/{alias}", get(extension))
            .merge(resource::routes::<kuryr_model::Network>())
            .merge(resource::routes::<kuryr_model::Subnet>())
            .merge(resource::routes::<kuryr_model::SubnetPool>())
            .merge(resource::routes::<kuryr_model::Port>())
            .merge(resource::routes::<kuryr_model::SecurityGroup>())
            .merge(resource::routes::<kuryr_model::SecurityGroupRule>())
            .merge(resource::routes::<kuryr_model::Router>())
            .merge(router_interfaces::routes())
            .merge(resource::routes::<kuryr_model::FloatingIp>())
            .merge(floatingips::routes())
            .merge(port_forwardings::routes())
            .merge(quotas::routes())
            .merge(agents::routes())
            .merge(ip_availability::routes())
            .route(
                "/kuryr/hosts/{host}/lb-report",
                axum::routing::put(crate::loadbalancing::agent_report),
            )
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                authenticate,
            ));
        Router::new()
            .route("/", get(versions))
            .nest("/v2.0", v2)
            .with_state(self.clone())
    }
}

/// Guard keys (addresses, MACs, VNIs) held by one request in flight, so that
/// concurrent requests pick different ones before either commits. They are given
/// back when the guard is dropped: after the commit, on an error, and when the
/// request is cancelled mid-way because its client went away.
pub struct Reservation<'a> {
    net: &'a Networking,
    keys: Vec<String>,
}

impl Reservation<'_> {
    /// Takes `key` for this request; false if this or another request holds it.
    pub fn take(&mut self, key: String) -> bool {
        let mut r = self.net.reserved.lock().unwrap_or_else(|p| p.into_inner());
        if !r.insert(key.clone()) {
            return false;
        }
        self.keys.push(key);
        true
    }

    pub fn holds(&self, key: &str) -> bool {
        self.keys.iter().any(|k| k == key)
    }

    /// Gives everything back (a retry starts from scratch).
    pub fn clear(&mut self) {
        let mut r = self.net.reserved.lock().unwrap_or_else(|p| p.into_inner());
        for k in self.keys.drain(..) {
            r.remove(&k);
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.clear();
    }
}

/// A small extension to poll a stream once without waiting.
trait NowOrNever: futures::Stream + Unpin {
    fn now_or_never_ext(&mut self) -> Option<Option<Self::Item>> {
        futures::FutureExt::now_or_never(self.next())
    }
}
impl<S: futures::Stream + Unpin> NowOrNever for S {}

/// The caller of a Neutron request, with Keystone's implied roles expanded
/// (admin → manager → member → reader), as a Keystone token lists them.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub auth: AuthContext,
    roles: HashSet<String>,
}

impl Ctx {
    pub fn new(auth: AuthContext) -> Self {
        let mut roles: HashSet<String> = auth.roles.iter().cloned().collect();
        for (prior, implied) in [
            ("admin", "manager"),
            ("manager", "member"),
            ("member", "reader"),
        ] {
            if roles.contains(prior) {
                roles.insert(implied.to_string());
            }
        }
        Ctx { auth, roles }
    }
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.contains(role)
    }
    pub fn is_admin(&self) -> bool {
        self.has_role("admin")
    }
    pub fn project(&self) -> &str {
        &self.auth.project_id
    }
    /// A credential attribute, for `project_id:%(...)s`-style checks.
    pub fn credential(&self, key: &str) -> Option<&str> {
        match key {
            "project_id" | "tenant_id" | "tenant" => Some(&self.auth.project_id),
            "user_id" => Some(&self.auth.user_id),
            _ => None,
        }
    }
    /// The hosts this caller is the agent of (`kuryr_agent:<host>` roles).
    pub fn agent_hosts(&self) -> impl Iterator<Item = &str> {
        self.roles
            .iter()
            .filter_map(|r| r.strip_prefix(policy::AGENT_ROLE_PREFIX))
            .filter(|h| !h.is_empty())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Ctx>().cloned().ok_or_else(|| {
            ApiError(NeutronError::new(
                401,
                "HTTPUnauthorized",
                "Authentication required",
            ))
        })
    }
}

pub(crate) async fn authenticate(
    State(net): State<Shared>,
    mut req: Request,
    next: Next,
) -> Response {
    let ctx = match net.config.auth_mode {
        AuthMode::NoAuth => noauth_context(req.headers()),
        AuthMode::Keystone => {
            let token = req
                .headers()
                .get("x-auth-token")
                .and_then(|v| v.to_str().ok());
            match token.and_then(|t| net.identity.validate(t)) {
                Some(ctx) => ctx,
                None => {
                    return (
                        StatusCode::UNAUTHORIZED,
                        [(
                            "www-authenticate",
                            format!("Keystone uri=\"{}/identity\"", net.config.public_url),
                        )],
                        Json(json!({"error": {"code": 401, "title": "Unauthorized",
                            "message": "The request you have made requires authentication."}})),
                    )
                        .into_response();
                }
            }
        }
    };
    crate::observe::record_project(&ctx.project_id);
    req.extensions_mut().insert(Ctx::new(ctx));
    next.run(req).await
}

/// Development mode: the project comes from `X-Project-Id`; everyone is admin unless
/// `X-Roles` says otherwise (as Neutron's noauth does).
fn noauth_context(h: &HeaderMap) -> AuthContext {
    let header = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    let project = header("x-project-id")
        .or_else(|| header("x-tenant-id"))
        .unwrap_or_else(|| "admin".into());
    let roles = header("x-roles")
        .map(|r| {
            r.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_else(|| vec!["admin".to_string()]);
    AuthContext {
        user_id: header("x-user-id").unwrap_or_else(|| "admin".into()),
        user_name: "noauth".into(),
        project_name: project.clone(),
        project_id: project,
        roles,
    }
}

/// A Neutron error as an HTTP response.
#[derive(Debug)]
pub struct ApiError(pub NeutronError);

impl ApiError {
    /// The same error under another Neutron `type`.
    pub fn with_kind(mut self, kind: &'static str) -> Self {
        self.0.kind = kind;
        self
    }
}

impl From<NeutronError> for ApiError {
    fn from(e: NeutronError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body =
            json!({"NeutronError": {"type": self.0.kind, "message": self.0.message, "detail": ""}});
        (status, Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

async fn versions(State(net): State<Shared>) -> Json<Value> {
    Json(json!({"versions": [{"id": "v2.0", "status": "CURRENT",
        "links": [{"rel": "self", "href": format!("{}/networking/v2.0/", net.config.public_url)}]}]}))
}

async fn resources_doc(State(net): State<Shared>) -> Json<Value> {
    let base = format!("{}/networking/v2.0", net.config.public_url);
    let res: Vec<Value> = [
        ("network", "networks"),
        ("subnet", "subnets"),
        ("subnetpool", "subnetpools"),
        ("port", "ports"),
        ("security_group", "security-groups"),
        ("security_group_rule", "security-group-rules"),
        ("quota", "quotas"),
        ("agent", "agents"),
        ("router", "routers"),
        ("floatingip", "floatingips"),
        ("floatingip_pool", "floatingip-pools"),
    ]
    .iter()
    .map(|(n, c)| json!({"name": n, "collection": c, "links": [{"rel": "self", "href": format!("{base}/{c}")}]}))
    .collect();
    Json(json!({"resources": res}))
}

/// Exactly the extensions implemented here; clients decide what to send from this list.
const EXTENSIONS: &[(&str, &str, &str)] = &[
    ("agent", "agent", "The agent management extension."),
    (
        "allowed-address-pairs",
        "Allowed Address Pairs",
        "Provides allowed address pairs",
    ),
    (
        "binding",
        "Port Binding",
        "Expose port bindings of a virtual port to external application",
    ),
    (
        "default-subnetpools",
        "Default Subnetpools",
        "Provides ability to mark and use a subnetpool as the default.",
    ),
    (
        "expose-port-forwarding-in-fip",
        "Expose Floating IP port forwardings",
        "Expose port forwarding fields in floating IP response",
    ),
    (
        "ext-gw-mode",
        "Neutron L3 Configurable external gateway mode",
        "Extension of the router abstraction for specifying whether SNAT should occur on the external gateway",
    ),
    (
        "external-net",
        "Neutron external network",
        "Adds external network attribute to network resource.",
    ),
    (
        "extraroute",
        "Neutron Extra Route",
        "Extra routes configuration for L3 router",
    ),
    (
        "extraroute-atomic",
        "Atomically add/remove extra routes",
        "Edit extra routes of a router on server side by atomically adding/removing extra routes",
    ),
    (
        "filter-validation",
        "Filter parameters validation",
        "Provides validation on filter parameters.",
    ),
    (
        "fip-port-details",
        "Floating IP Port Details Extension",
        "Add port_details attribute to Floating IP resource",
    ),
    (
        "floating-ip-port-forwarding",
        "Floating IP Port Forwarding",
        "Allow port forwarding from floating IP port to an internal port",
    ),
    (
        "floating-ip-port-forwarding-description",
        "Floating IP Port Forwarding new attribute description",
        "Add a description field to Port Forwarding rules",
    ),
    (
        "floating-ip-port-forwarding-detail",
        "Floating IP port forwarding detail",
        "Floating IPs list their port forwardings with their id and internal_port_id",
    ),
    (
        "floating-ip-port-forwarding-port-ranges",
        "Floating IP Port Forwarding support port ranges",
        "Add support to port ranges",
    ),
    (
        "floating-ip-router-writable",
        "Floating IP Router (writable)",
        "Provides a writable router_id attribute for a floating IP resource.",
    ),
    (
        "floatingip-pools",
        "Floating IP Pools Extension",
        "Provides a floating IP pools API.",
    ),
    (
        "l3-port-ip-change-not-allowed",
        "Prevent L3 router ports IP address change extension",
        "Prevent change of IP address for some L3 router ports",
    ),
    (
        "network-ip-availability",
        "Network IP Availability",
        "Provides IP availability data for each network and subnet.",
    ),
    (
        "network-ip-availability-details",
        "Network IP Availability Details Extension",
        "Add ip_availability_details attribute to network-ip-availabilities resource.",
    ),
    (
        "net-mtu",
        "Network MTU",
        "Provides MTU attribute for a network resource.",
    ),
    (
        "net-mtu-writable",
        "Network MTU (writable)",
        "Provides a writable MTU attribute for a network resource.",
    ),
    (
        "pagination",
        "Pagination support",
        "Extension that indicates that pagination is enabled.",
    ),
    ("port-security", "Port Security", "Provides port security"),
    (
        "project-id",
        "project_id field enabled",
        "Extension that indicates that project_id field is enabled.",
    ),
    (
        "provider",
        "Provider Network",
        "Expose mapping of virtual networks to physical networks",
    ),
    (
        "quota_details",
        "Quota details management support",
        "Expose functions for quotas usage statistics per project",
    ),
    (
        "quotas",
        "Quota management support",
        "Expose functions for quotas management per project",
    ),
    (
        "revision-if-match",
        "If-Match constraints based on revision_number",
        "Extension indicating that If-Match based on revision_number is supported.",
    ),
    (
        "router",
        "Neutron L3 Router",
        "Router abstraction for basic L3 forwarding between L2 Neutron networks and access to external networks via a NAT gateway.",
    ),
    (
        "security-group",
        "security-group",
        "The security groups extension.",
    ),
    (
        "sorting",
        "Sorting support",
        "Extension that indicates that sorting is enabled.",
    ),
    (
        "standard-attr-description",
        "standard-attr-description",
        "Extension to add descriptions to standard attributes",
    ),
    (
        "standard-attr-revisions",
        "Resource revision numbers",
        "This extension will display the revision number of neutron resources.",
    ),
    (
        "standard-attr-tag",
        "Tag support for resources with standard attribute",
        "Enables to set tag on resources with standard attribute.",
    ),
    (
        "standard-attr-timestamp",
        "Resource timestamps",
        "Adds created_at and updated_at fields to all Neutron resources that have Neutron standard attributes.",
    ),
    (
        "stateful-security-group",
        "Stateful security group",
        "Indicates if the security group is stateful or not",
    ),
    (
        "subnet-external-network",
        "Subnet External Network",
        "Informs if the subnet is associated to an external network",
    ),
    (
        "subnet_allocation",
        "Subnet Allocation",
        "Enables allocation of subnets from a subnet pool",
    ),
];

fn extension_doc(alias: &str, name: &str, description: &str) -> Value {
    json!({"alias": alias, "name": name, "description": description, "updated": "2026-01-01T00:00:00-00:00", "links": []})
}

async fn extensions() -> Json<Value> {
    let list: Vec<Value> = EXTENSIONS
        .iter()
        .map(|(a, n, d)| extension_doc(a, n, d))
        .collect();
    Json(json!({"extensions": list}))
}

async fn extension(
    axum::extract::Path(alias): axum::extract::Path<String>,
) -> ApiResult<Json<Value>> {
    EXTENSIONS
        .iter()
        .find(|(a, _, _)| *a == alias)
        .map(|(a, n, d)| Json(json!({"extension": extension_doc(a, n, d)})))
        .ok_or_else(|| {
            ApiError(NeutronError::new(
                404,
                "HTTPNotFound",
                format!("Extension with alias {alias} does not exist"),
            ))
        })
}

pub fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
