//! The HTTP client: Keystone v3 tokens and catalog, Neutron v2.0 calls, kuryr's
//! extensions.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kuryr_model::{
    Agent, AgentReport, Network, Port, SecurityGroup, SecurityGroupRule, Subnet, SubnetPool,
};
use reqwest::{Method, StatusCode, Url, header};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::creds::{AppCredAuth, AppCredRef, AuthMethod, Credentials, Domain, Ident, PasswordAuth};
use crate::error::ClientError;
use crate::watch::{self, HostWatch};

type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Tunables. `Default` gives the values documented on each field.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Whole-request timeout (connect, send, read the body) for every call but the
    /// watch. Default 30 s.
    pub request_timeout: Duration,
    /// TCP (and TLS) connect timeout, also for the watch. Default 10 s.
    pub connect_timeout: Duration,
    /// Re-authenticate before a request when the token expires within this. Default 60 s.
    pub refresh_margin: Duration,
    /// Longest accepted watch line. Default 64 MiB.
    pub max_watch_line: usize,
    /// End the watch with `Unreachable` when nothing (not even a keepalive) arrives for
    /// this long. Default `None`: the watch has no timeout at all.
    pub watch_idle_timeout: Option<Duration>,
    pub user_agent: String,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            refresh_margin: Duration::from_secs(60),
            max_watch_line: 64 << 20,
            watch_idle_timeout: None,
            user_agent: concat!("kuryr-client/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

/// A typed client for one Neutron. Cheap to clone (shares the connection pool and the
/// token); safe to use from many tasks at once.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    creds: Credentials,
    config: ClientConfig,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
}

/// A token and where it lets us go.
#[derive(Debug)]
struct Session {
    /// `None` for noauth.
    token: Option<String>,
    expires_at: Option<DateTime<Utc>>,
    /// Neutron's URL ending in `/v2.0`, no trailing slash.
    network_url: String,
    /// Octavia's URL ending in `/v2` (the catalog's `load-balancer` service), if any.
    lb_url: Option<String>,
}

impl Session {
    fn expiring(&self, margin: Duration) -> bool {
        let Some(exp) = self.expires_at else {
            return false;
        };
        let margin = chrono::Duration::from_std(margin).unwrap_or(chrono::Duration::MAX);
        Utc::now() + margin >= exp
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("auth", &self.inner.creds.auth)
            .finish_non_exhaustive()
    }
}

/// Which API of the cloud a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    /// Neutron (`/v2.0`).
    Network,
    /// Octavia (`/v2`).
    LoadBalancer,
}

/// What a request is aimed at: a path under the API's version root plus query pairs.
struct Target<'a> {
    api: Api,
    path: &'a str,
    query: &'a [(String, String)],
}

impl Client {
    /// Builds the client and authenticates once (so bad credentials or a catalog without
    /// a network endpoint fail here).
    pub async fn connect(creds: Credentials) -> Result<Client> {
        Self::connect_with(creds, ClientConfig::default()).await
    }

    pub async fn connect_with(creds: Credentials, config: ClientConfig) -> Result<Client> {
        let client = Self::new(creds, config)?;
        client.session().await?;
        Ok(client)
    }

    /// Builds the client without contacting anything; the first call authenticates.
    pub fn new(creds: Credentials, config: ClientConfig) -> Result<Client> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .user_agent(config.user_agent.clone());
        builder = configure_tls(builder, &creds)?;
        let http = builder
            .build()
            .map_err(|e| ClientError::Config(format!("HTTP client: {}", error_chain(&e))))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                creds,
                config,
                session: tokio::sync::Mutex::new(None),
            }),
        })
    }

    pub fn credentials(&self) -> &Credentials {
        &self.inner.creds
    }

    /// Neutron's URL (ending in `/v2.0`) as the catalog or the credentials name it.
    pub async fn network_url(&self) -> Result<String> {
        Ok(self.session().await?.network_url.clone())
    }

    /// The current session, authenticating first when there is none or its token is
    /// about to expire.
    async fn session(&self) -> Result<Arc<Session>> {
        let mut guard = self.inner.session.lock().await;
        if let Some(s) = guard.as_ref()
            && !s.expiring(self.inner.config.refresh_margin)
        {
            return Ok(s.clone());
        }
        if guard.is_some() {
            tracing::debug!("token expires soon, re-authenticating");
        }
        let s = Arc::new(self.authenticate().await?);
        *guard = Some(s.clone());
        Ok(s)
    }

    /// The HTTP client and the current token (`None` for noauth), for calls outside
    /// Neutron (Keystone's own API, see `identity.rs`).
    pub(crate) async fn http_and_token(&self) -> Result<(reqwest::Client, Option<String>)> {
        let s = self.session().await?;
        Ok((self.inner.http.clone(), s.token.clone()))
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.config.request_timeout
    }

    /// Forgets `stale` (unless another task already replaced it).
    async fn invalidate(&self, stale: &Arc<Session>) {
        let mut guard = self.inner.session.lock().await;
        if guard.as_ref().is_some_and(|s| Arc::ptr_eq(s, stale)) {
            *guard = None;
        }
    }

    async fn authenticate(&self) -> Result<Session> {
        let creds = &self.inner.creds;
        match &creds.auth {
            AuthMethod::NoAuth { .. } => {
                let Some(endpoint) = creds.network_endpoint.as_deref() else {
                    return Err(ClientError::Config(
                        "noauth needs the network endpoint (OS_ENDPOINT / OS_NETWORK_ENDPOINT)"
                            .into(),
                    ));
                };
                Ok(Session {
                    token: None,
                    expires_at: None,
                    network_url: v2_url(endpoint),
                    lb_url: None,
                })
            }
            AuthMethod::Password(p) => {
                let who = format!(
                    "user {} in project {}",
                    describe(&p.user),
                    describe(&p.project)
                );
                self.keystone_token(&p.auth_url, &token_request(p), &who)
                    .await
            }
            AuthMethod::ApplicationCredential(a) => {
                let who = match &a.credential {
                    AppCredRef::Id(id) => format!("application credential {id}"),
                    AppCredRef::Name { name, user } => {
                        format!("application credential {name:?} of user {}", describe(user))
                    }
                };
                self.keystone_token(&a.auth_url, &app_cred_request(a), &who)
                    .await
            }
        }
    }

    async fn keystone_token(&self, auth_url: &str, request: &Value, who: &str) -> Result<Session> {
        let url = format!("{}/auth/tokens", identity_v3_url(auth_url));
        tracing::debug!(%url, "requesting a Keystone token");
        let resp = self
            .inner
            .http
            .post(&url)
            .header(header::ACCEPT, "application/json")
            .json(request)
            .timeout(self.inner.config.request_timeout)
            .send()
            .await
            .map_err(|e| transport_error("POST", &url, &e))?;
        let status = resp.status();
        let token = resp
            .headers()
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .bytes()
            .await
            .map_err(|e| transport_error("POST", &url, &e))?;
        if !status.is_success() {
            let err = ClientError::from_response(status.as_u16(), &body);
            if err.is_retryable() || status.is_server_error() {
                return Err(err);
            }
            return Err(ClientError::Auth(format!(
                "Keystone at {url} refused the token request for {who}: {err}"
            )));
        }
        let token = token.ok_or_else(|| {
            ClientError::Auth(format!(
                "Keystone at {url} answered without X-Subject-Token"
            ))
        })?;
        let body: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| ClientError::Decode(format!("Keystone token from {url}: {e}")))?;
        let expires_at = match body.token.expires_at.as_deref() {
            Some(s) => Some(
                DateTime::parse_from_rfc3339(s)
                    .map_err(|e| {
                        ClientError::Decode(format!("Keystone token expires_at {s:?}: {e}"))
                    })?
                    .with_timezone(&Utc),
            ),
            None => None,
        };
        let creds = &self.inner.creds;
        let network_url = match creds.network_endpoint.as_deref() {
            Some(e) => v2_url(e),
            None => v2_url(&pick_endpoint(
                &body.token.catalog,
                "network",
                &creds.interface,
                creds.region_name.as_deref(),
            )?),
        };
        // Octavia is optional: only load-balancer calls need it.
        let lb_url = pick_endpoint(
            &body.token.catalog,
            "load-balancer",
            &creds.interface,
            creds.region_name.as_deref(),
        )
        .ok()
        .map(|u| lb_v2_url(&u));
        tracing::info!(%network_url, expires_at = ?expires_at, "authenticated with Keystone");
        Ok(Session {
            token: Some(token),
            expires_at,
            network_url,
            lb_url,
        })
    }

    /// Sends one request to Neutron, re-authenticating once on 401. Non-2xx answers
    /// become errors.
    async fn send(
        &self,
        method: Method,
        target: Target<'_>,
        body: Option<&Value>,
        timeout: Option<Duration>,
    ) -> Result<(reqwest::Response, String)> {
        let mut retried = false;
        loop {
            let session = self.session().await?;
            let base = match target.api {
                Api::Network => session.network_url.as_str(),
                Api::LoadBalancer => session.lb_url.as_deref().ok_or_else(|| {
                    ClientError::Config(
                        "the Keystone catalog has no \"load-balancer\" service (Octavia)".into(),
                    )
                })?,
            };
            let url = build_url(base, target.path, target.query)?;
            let url_text = url.to_string();
            let mut rb = self
                .inner
                .http
                .request(method.clone(), url)
                .header(header::ACCEPT, "application/json");
            if let Some(t) = timeout {
                rb = rb.timeout(t);
            }
            rb = match (&session.token, &self.inner.creds.auth) {
                (Some(token), _) => rb.header("X-Auth-Token", token),
                (None, AuthMethod::NoAuth { project_id }) => {
                    let rb = rb.header("X-Roles", "admin");
                    match project_id {
                        Some(p) => rb.header("X-Project-Id", p),
                        None => rb,
                    }
                }
                (None, _) => rb,
            };
            if let Some(b) = body {
                rb = rb.json(b);
            }
            tracing::trace!(%method, url = %url_text, "neutron request");
            let resp = rb
                .send()
                .await
                .map_err(|e| transport_error(method.as_str(), &url_text, &e))?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && session.token.is_some() && !retried {
                tracing::info!(url = %url_text, "401 from Neutron, re-authenticating once");
                self.invalidate(&session).await;
                retried = true;
                continue;
            }
            if status.is_success() {
                return Ok((resp, url_text));
            }
            let bytes = resp.bytes().await.unwrap_or_default();
            let err = ClientError::from_response(status.as_u16(), &bytes);
            if status == StatusCode::UNAUTHORIZED {
                return Err(ClientError::Auth(format!(
                    "{method} {url_text} answered 401 even with a fresh token: {err}"
                )));
            }
            tracing::debug!(%method, url = %url_text, error = %err, "neutron error");
            return Err(err);
        }
    }

    /// Sends a Neutron request and reads its JSON body (`Value::Null` for an empty body).
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(String, String)],
        body: Option<&Value>,
    ) -> Result<Value> {
        self.call_api(Api::Network, method, path, query, body).await
    }

    async fn call_api(
        &self,
        api: Api,
        method: Method,
        path: &str,
        query: &[(String, String)],
        body: Option<&Value>,
    ) -> Result<Value> {
        let (resp, url) = self
            .send(
                method.clone(),
                Target { api, path, query },
                body,
                Some(self.inner.config.request_timeout),
            )
            .await?;
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport_error(method.as_str(), &url, &e))?;
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Decode(format!("{method} {url}: body is not JSON: {e}")))
    }

    /// Any Neutron call: `path` is relative to `/v2.0` (a leading `/v2.0` is accepted too)
    /// and may carry a query string. Returns the JSON body, `Value::Null` when empty
    /// (204 of a DELETE).
    pub async fn request(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        self.request_api(Api::Network, method, path, body).await
    }

    /// Any Octavia call: `path` is relative to `/v2` (`/lbaas/loadbalancers?...`), through
    /// the catalog's `load-balancer` service. Octavia's faults become [`ClientError`]s as
    /// Neutron's errors do (409 `ImmutableObject` is a [`ClientError::Conflict`]).
    pub async fn lb_request(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        self.request_api(Api::LoadBalancer, method, path, body)
            .await
    }

    async fn request_api(
        &self,
        api: Api,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (
                p,
                Url::parse(&format!("http://x/?{q}"))
                    .map(|u| {
                        u.query_pairs()
                            .map(|(k, v)| (k.into_owned(), v.into_owned()))
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            None => (path, Vec::new()),
        };
        self.call_api(api, method, path, &query, body.as_ref())
            .await
    }

    async fn get_one<T: DeserializeOwned>(
        &self,
        collection: &str,
        id: &str,
        key: &str,
    ) -> Result<T> {
        let path = format!("/{collection}/{}", encode_segment(id));
        let v = self.call(Method::GET, &path, &[], None).await?;
        take(v, key, &path)
    }

    /// Lists a collection whose JSON key is its path.
    async fn list<T: DeserializeOwned>(
        &self,
        collection: &str,
        filters: &[(&str, &str)],
    ) -> Result<Vec<T>> {
        self.list_keyed(collection, collection, filters).await
    }

    async fn create<T: DeserializeOwned>(
        &self,
        collection: &str,
        key: &str,
        body: Value,
    ) -> Result<T> {
        let body = wrap(key, body);
        let path = format!("/{collection}");
        let v = self.call(Method::POST, &path, &[], Some(&body)).await?;
        take(v, key, &path)
    }

    async fn update<T: DeserializeOwned>(
        &self,
        collection: &str,
        key: &str,
        id: &str,
        attrs: Value,
    ) -> Result<T> {
        let body = wrap(key, attrs);
        let path = format!("/{collection}/{}", encode_segment(id));
        let v = self.call(Method::PUT, &path, &[], Some(&body)).await?;
        take(v, key, &path)
    }

    async fn delete(&self, collection: &str, id: &str) -> Result<()> {
        let path = format!("/{collection}/{}", encode_segment(id));
        self.call(Method::DELETE, &path, &[], None).await?;
        Ok(())
    }

    pub async fn get_port(&self, id: &str) -> Result<Port> {
        self.get_one("ports", id, "port").await
    }

    /// `filters` become query pairs (a key may repeat: `id=a&id=b`).
    pub async fn list_ports(&self, filters: &[(&str, &str)]) -> Result<Vec<Port>> {
        self.list("ports", filters).await
    }

    /// `attrs` are the port's attributes; a body already wrapped as `{"port": {...}}` is
    /// sent as is.
    pub async fn create_port(&self, attrs: Value) -> Result<Port> {
        self.create("ports", "port", attrs).await
    }

    /// `PUT /v2.0/ports/{id}` with `{"port": attrs}`.
    pub async fn update_port(&self, id: &str, attrs: Value) -> Result<Port> {
        self.update("ports", "port", id, attrs).await
    }

    pub async fn delete_port(&self, id: &str) -> Result<()> {
        self.delete("ports", id).await
    }

    pub async fn get_network(&self, id: &str) -> Result<Network> {
        self.get_one("networks", id, "network").await
    }

    pub async fn list_networks(&self, filters: &[(&str, &str)]) -> Result<Vec<Network>> {
        self.list("networks", filters).await
    }

    pub async fn create_network(&self, attrs: Value) -> Result<Network> {
        self.create("networks", "network", attrs).await
    }

    pub async fn update_network(&self, id: &str, attrs: Value) -> Result<Network> {
        self.update("networks", "network", id, attrs).await
    }

    pub async fn delete_network(&self, id: &str) -> Result<()> {
        self.delete("networks", id).await
    }

    pub async fn get_subnet(&self, id: &str) -> Result<Subnet> {
        self.get_one("subnets", id, "subnet").await
    }

    pub async fn list_subnets(&self, filters: &[(&str, &str)]) -> Result<Vec<Subnet>> {
        self.list("subnets", filters).await
    }

    pub async fn create_subnet(&self, attrs: Value) -> Result<Subnet> {
        self.create("subnets", "subnet", attrs).await
    }

    pub async fn delete_subnet(&self, id: &str) -> Result<()> {
        self.delete("subnets", id).await
    }

    pub async fn get_security_group(&self, id: &str) -> Result<SecurityGroup> {
        self.get_one("security-groups", id, "security_group").await
    }

    pub async fn list_security_groups(
        &self,
        filters: &[(&str, &str)],
    ) -> Result<Vec<SecurityGroup>> {
        self.list_keyed("security-groups", "security_groups", filters)
            .await
    }

    pub async fn list_security_group_rules(
        &self,
        filters: &[(&str, &str)],
    ) -> Result<Vec<SecurityGroupRule>> {
        self.list_keyed("security-group-rules", "security_group_rules", filters)
            .await
    }

    pub async fn update_subnet(&self, id: &str, attrs: Value) -> Result<Subnet> {
        self.update("subnets", "subnet", id, attrs).await
    }

    pub async fn get_subnetpool(&self, id: &str) -> Result<SubnetPool> {
        self.get_one("subnetpools", id, "subnetpool").await
    }

    pub async fn list_subnetpools(&self, filters: &[(&str, &str)]) -> Result<Vec<SubnetPool>> {
        self.list("subnetpools", filters).await
    }

    pub async fn create_subnetpool(&self, attrs: Value) -> Result<SubnetPool> {
        self.create("subnetpools", "subnetpool", attrs).await
    }

    pub async fn delete_subnetpool(&self, id: &str) -> Result<()> {
        self.delete("subnetpools", id).await
    }

    pub async fn create_security_group(&self, attrs: Value) -> Result<SecurityGroup> {
        self.create("security-groups", "security_group", attrs)
            .await
    }

    pub async fn delete_security_group(&self, id: &str) -> Result<()> {
        self.delete("security-groups", id).await
    }

    pub async fn create_security_group_rule(&self, attrs: Value) -> Result<SecurityGroupRule> {
        self.create("security-group-rules", "security_group_rule", attrs)
            .await
    }

    /// Replaces every tag of a resource (`PUT /v2.0/{collection}/{id}/tags`): one
    /// call, whatever the number of tags added or removed.
    pub async fn set_tags(&self, collection: &str, id: &str, tags: &[String]) -> Result<()> {
        let path = format!("/{collection}/{}/tags", encode_segment(id));
        let body = json!({ "tags": tags });
        self.call(Method::PUT, &path, &[], Some(&body)).await?;
        Ok(())
    }

    /// Lists any collection as the caller's own type (a lean view of the attributes it
    /// needs, or `serde_json::Value`), following pagination. `collection` is the path
    /// under `/v2.0` (`security-groups`), `key` the JSON key (`security_groups`);
    /// `filters` as for [`Client::list_ports`].
    pub async fn list_as<T: DeserializeOwned>(
        &self,
        collection: &str,
        key: &str,
        filters: &[(&str, &str)],
    ) -> Result<Vec<T>> {
        self.list_keyed(collection, key, filters).await
    }

    /// Lists `/{collection}` (the JSON key is `key`), following Neutron's
    /// `<key>_links` pagination.
    async fn list_keyed<T: DeserializeOwned>(
        &self,
        collection: &str,
        key: &str,
        filters: &[(&str, &str)],
    ) -> Result<Vec<T>> {
        let path = format!("/{collection}");
        let mut query: Vec<(String, String)> = filters
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut out = Vec::new();
        loop {
            let mut v = self.call(Method::GET, &path, &query, None).await?;
            let next = next_page_query(&v, key);
            let page: Vec<T> = take(v.take(), key, &path)?;
            let empty = page.is_empty();
            out.extend(page);
            match next {
                Some(q) if !empty && q != query => query = q,
                _ => return Ok(out),
            }
        }
    }

    /// kuryr extension: `PUT /v2.0/kuryr/agents/{host}` with `{"agent": report}`.
    /// A real Neutron answers 404 ([`ClientError::NotFound`]).
    pub async fn heartbeat(&self, report: &AgentReport) -> Result<Agent> {
        let body = json!({ "agent": report });
        let path = format!("/kuryr/agents/{}", encode_segment(&report.host));
        let v = self.call(Method::PUT, &path, &[], Some(&body)).await?;
        take(v, "agent", &path)
    }

    /// kuryr extension: `PUT /v2.0/kuryr/hosts/{host}/lb-report` with the health of
    /// the load-balancer members this host checks and its per-listener counters.
    pub async fn lb_report(&self, host: &str, report: &Value) -> Result<()> {
        let path = format!("/kuryr/hosts/{}/lb-report", encode_segment(host));
        self.call(Method::PUT, &path, &[], Some(report)).await?;
        Ok(())
    }

    /// kuryr extension: `GET /v2.0/kuryr/hosts/{host}/watch?since=N`, the host's view as
    /// a stream of [`kuryr_model::HostFrame`]s. Errors before the stream starts (404 from a
    /// real Neutron, auth, unreachable) are returned here; see [`HostWatch`] for how the
    /// stream ends.
    pub async fn watch_host(&self, host: &str, since: u64) -> Result<HostWatch> {
        let path = format!("/kuryr/hosts/{}/watch", encode_segment(host));
        let query = [("since".to_string(), since.to_string())];
        let (resp, url) = self
            .send(
                Method::GET,
                Target {
                    api: Api::Network,
                    path: &path,
                    query: &query,
                },
                None,
                None,
            )
            .await?;
        tracing::debug!(%url, "watch connected");
        Ok(watch::frames(
            resp,
            url,
            self.inner.config.max_watch_line,
            self.inner.config.watch_idle_timeout,
        ))
    }
}

/// HTTPS trust, on rustls: with a CA bundle (OS_CACERT / `cacert`), that bundle only,
/// as the openstack CLI does (requests' `verify=<bundle>`); without, the system's roots.
fn configure_tls(
    mut builder: reqwest::ClientBuilder,
    creds: &Credentials,
) -> Result<reqwest::ClientBuilder> {
    if let Some(path) = &creds.cacert {
        let pem = std::fs::read(path).map_err(|e| {
            ClientError::Config(format!("cannot read CA bundle {}: {e}", path.display()))
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            ClientError::Config(format!("CA bundle {}: {}", path.display(), error_chain(&e)))
        })?;
        if certs.is_empty() {
            return Err(ClientError::Config(format!(
                "CA bundle {} holds no PEM certificate",
                path.display()
            )));
        }
        builder = builder.tls_certs_only(certs);
    }
    if creds.insecure {
        tracing::warn!("TLS certificate verification is disabled (insecure)");
        builder = builder.tls_danger_accept_invalid_certs(true);
    }
    Ok(builder)
}

/// The error and its sources, `: `-joined (reqwest's own message is terse).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        src = cause.source();
    }
    s
}

pub(crate) fn transport_error(method: &str, url: &str, e: &reqwest::Error) -> ClientError {
    if e.is_timeout() {
        ClientError::Unreachable(format!("{method} {url}: timed out"))
    } else if e.is_builder() {
        ClientError::Config(format!("{method} {url}: {}", error_chain(e)))
    } else {
        ClientError::Unreachable(format!("{method} {url}: {}", error_chain(e)))
    }
}

/// `body` unless it is already `{key: {...}}`, else `{key: body}`.
fn wrap(key: &str, body: Value) -> Value {
    match &body {
        Value::Object(m) if m.len() == 1 && m.get(key).is_some_and(Value::is_object) => body,
        _ => json!({ key: body }),
    }
}

/// Decodes `v[key]` as a `T`.
fn take<T: DeserializeOwned>(mut v: Value, key: &str, what: &str) -> Result<T> {
    let Some(inner) = v.get_mut(key).map(Value::take) else {
        return Err(ClientError::Decode(format!(
            "{what}: no {key:?} key in the response"
        )));
    };
    serde_json::from_value(inner).map_err(|e| ClientError::Decode(format!("{what}: {key}: {e}")))
}

/// The query of the `rel: next` link of a paginated list, if any.
fn next_page_query(v: &Value, key: &str) -> Option<Vec<(String, String)>> {
    let links = v.get(format!("{key}_links"))?.as_array()?;
    let href = links
        .iter()
        .find(|l| l.get("rel").and_then(Value::as_str) == Some("next"))?
        .get("href")?
        .as_str()?;
    let url = Url::parse(href).ok()?;
    Some(
        url.query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
    )
}

/// Percent-encodes one path segment (ids and host names are plain, but be safe).
pub(crate) fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn build_url(base: &str, path: &str, query: &[(String, String)]) -> Result<Url> {
    let path = path.strip_prefix("/v2.0").unwrap_or(path);
    let path = path.trim_start_matches('/');
    let mut url = Url::parse(&format!("{base}/{path}"))
        .map_err(|e| ClientError::Config(format!("bad Neutron URL {base}/{path}: {e}")))?;
    if !query.is_empty() {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in query {
            pairs.append_pair(k, v);
        }
    }
    Ok(url)
}

/// Neutron's root URL → its `/v2.0` URL (not doubled when already there).
pub fn v2_url(endpoint: &str) -> String {
    let e = endpoint.trim().trim_end_matches('/');
    if e.ends_with("/v2.0") {
        e.to_string()
    } else {
        format!("{e}/v2.0")
    }
}

/// Octavia's root URL → its `/v2` URL (not doubled when already there).
pub fn lb_v2_url(endpoint: &str) -> String {
    let e = endpoint.trim().trim_end_matches('/');
    if e.ends_with("/v2") || e.ends_with("/v2.0") {
        e.to_string()
    } else {
        format!("{e}/v2")
    }
}

/// Keystone's URL → its `/v3` URL.
pub fn identity_v3_url(auth_url: &str) -> String {
    let a = auth_url.trim().trim_end_matches('/');
    if a.ends_with("/v3") {
        a.to_string()
    } else if let Some(root) = a.strip_suffix("/v2.0") {
        format!("{root}/v3")
    } else {
        format!("{a}/v3")
    }
}

fn describe(i: &Ident) -> String {
    match i {
        Ident::Id(id) => format!("id {id}"),
        Ident::Name { name, domain } => match domain {
            Domain::Id(d) => format!("{name:?} (domain id {d})"),
            Domain::Name(d) => format!("{name:?} (domain {d})"),
        },
    }
}

fn ident_json(i: &Ident) -> Value {
    match i {
        Ident::Id(id) => json!({ "id": id }),
        Ident::Name { name, domain } => {
            let d = match domain {
                Domain::Id(id) => json!({ "id": id }),
                Domain::Name(n) => json!({ "name": n }),
            };
            json!({ "name": name, "domain": d })
        }
    }
}

fn app_cred_request(a: &AppCredAuth) -> Value {
    let credential = match &a.credential {
        AppCredRef::Id(id) => json!({ "id": id, "secret": a.secret }),
        AppCredRef::Name { name, user } => {
            json!({ "name": name, "user": ident_json(user), "secret": a.secret })
        }
    };
    json!({
        "auth": {
            "identity": {
                "methods": ["application_credential"],
                "application_credential": credential
            }
        }
    })
}

fn token_request(p: &PasswordAuth) -> Value {
    let mut user = ident_json(&p.user);
    if let Some(m) = user.as_object_mut() {
        m.insert("password".into(), Value::String(p.password.clone()));
    }
    json!({
        "auth": {
            "identity": { "methods": ["password"], "password": { "user": user } },
            "scope": { "project": ident_json(&p.project) }
        }
    })
}

#[derive(Deserialize)]
struct TokenResponse {
    token: TokenBody,
}

#[derive(Deserialize)]
struct TokenBody {
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    catalog: Vec<CatalogService>,
}

#[derive(Deserialize)]
struct CatalogService {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    endpoints: Vec<CatalogEndpoint>,
}

#[derive(Deserialize)]
struct CatalogEndpoint {
    #[serde(default)]
    interface: String,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    region_id: Option<String>,
    url: String,
}

fn pick_endpoint(
    catalog: &[CatalogService],
    service: &str,
    interface: &str,
    region: Option<&str>,
) -> Result<String> {
    let network: Vec<&CatalogEndpoint> = catalog
        .iter()
        .filter(|s| s.kind == service)
        .flat_map(|s| s.endpoints.iter())
        .collect();
    if network.is_empty() {
        let kinds: Vec<&str> = catalog.iter().map(|s| s.kind.as_str()).collect();
        return Err(ClientError::Auth(format!(
            "the Keystone catalog has no {service:?} service (it has: {})",
            if kinds.is_empty() {
                "nothing".to_string()
            } else {
                kinds.join(", ")
            }
        )));
    }
    let in_region = |e: &CatalogEndpoint| match region {
        None => true,
        Some(r) => e.region_id.as_deref() == Some(r) || e.region.as_deref() == Some(r),
    };
    if let Some(e) = network
        .iter()
        .find(|e| e.interface == interface && in_region(e))
    {
        return Ok(e.url.clone());
    }
    let have: Vec<String> = network
        .iter()
        .map(|e| {
            format!(
                "{} in {}",
                e.interface,
                e.region_id
                    .as_deref()
                    .or(e.region.as_deref())
                    .unwrap_or("no region")
            )
        })
        .collect();
    Err(ClientError::Auth(format!(
        "no {service:?} endpoint with interface {interface}{} in the Keystone catalog \
         (it has: {}); set OS_INTERFACE / OS_REGION_NAME",
        region
            .map(|r| format!(" in region {r}"))
            .unwrap_or_default(),
        have.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(v2_url("http://n:9696"), "http://n:9696/v2.0");
        assert_eq!(v2_url("http://n:9696/"), "http://n:9696/v2.0");
        assert_eq!(v2_url("http://n:9696/v2.0/"), "http://n:9696/v2.0");
        assert_eq!(v2_url("https://c/network"), "https://c/network/v2.0");
        assert_eq!(
            lb_v2_url("http://n:9696/load-balancer"),
            "http://n:9696/load-balancer/v2"
        );
        assert_eq!(lb_v2_url("http://o:9876/v2/"), "http://o:9876/v2");
        assert_eq!(identity_v3_url("http://k:5000"), "http://k:5000/v3");
        assert_eq!(identity_v3_url("http://k:5000/v3/"), "http://k:5000/v3");
        assert_eq!(identity_v3_url("http://k/identity"), "http://k/identity/v3");
        assert_eq!(identity_v3_url("http://k:5000/v2.0"), "http://k:5000/v3");
        let u = build_url(
            "http://n/v2.0",
            "/v2.0/ports",
            &[("device_id".into(), "a b&c".into())],
        )
        .map(|u| u.to_string());
        assert_eq!(u, Ok("http://n/v2.0/ports?device_id=a+b%26c".to_string()));
        assert_eq!(encode_segment("host-1.example"), "host-1.example");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn wraps_bodies_once() {
        assert_eq!(
            wrap("port", json!({"network_id": "n"})),
            json!({"port": {"network_id": "n"}})
        );
        assert_eq!(
            wrap("port", json!({"port": {"network_id": "n"}})),
            json!({"port": {"network_id": "n"}})
        );
    }

    #[test]
    fn catalog_selection() {
        let catalog: Vec<CatalogService> = serde_json::from_value(json!([
            {"type": "identity", "endpoints": [{"interface": "public", "region_id": "R1", "url": "http://k"}]},
            {"type": "network", "endpoints": [
                {"interface": "public", "region_id": "R1", "region": "R1", "url": "http://pub1"},
                {"interface": "internal", "region_id": "R1", "url": "http://int1"},
                {"interface": "public", "region_id": "R2", "url": "http://pub2"}
            ]}
        ]))
        .unwrap_or_default();
        assert_eq!(
            pick_endpoint(&catalog, "network", "public", None),
            Ok("http://pub1".into())
        );
        assert_eq!(
            pick_endpoint(&catalog, "network", "public", Some("R2")),
            Ok("http://pub2".into())
        );
        assert_eq!(
            pick_endpoint(&catalog, "network", "internal", Some("R1")),
            Ok("http://int1".into())
        );
        assert!(matches!(
            pick_endpoint(&catalog, "network", "admin", None),
            Err(ClientError::Auth(m)) if m.contains("public in R1")
        ));
        assert!(matches!(
            pick_endpoint(&catalog[..1], "network", "public", None),
            Err(ClientError::Auth(m)) if m.contains("identity")
        ));
    }

    #[test]
    fn pagination_links() {
        let v = json!({"ports": [], "ports_links": [
            {"rel": "next", "href": "http://elsewhere/v2.0/ports?limit=2&marker=abc"},
            {"rel": "previous", "href": "http://elsewhere/v2.0/ports?limit=2&marker=x&page_reverse=True"}
        ]});
        assert_eq!(
            next_page_query(&v, "ports"),
            Some(vec![
                ("limit".into(), "2".into()),
                ("marker".into(), "abc".into())
            ])
        );
        assert_eq!(next_page_query(&json!({"ports": []}), "ports"), None);
    }
}
