//! HTTP handlers of the Keystone v3 subset, with Keystone's error shape
//! `{"error": {"code", "title", "message"}}`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use kuryr_store::{Compare, Txn};
use serde_json::{Value, json};

use super::tokens::{self, TokenClaims};
use super::{
    AppCred, AuthContext, BUILTIN_ROLES, DOMAIN_ID, DOMAIN_NAME, Identity, Project, Role, User,
    keys, login, new_id,
};

pub(super) type Shared = Arc<Identity>;

#[derive(Debug)]
pub struct KsError(pub(super) StatusCode, pub(super) String);

impl IntoResponse for KsError {
    fn into_response(self) -> Response {
        let title = self.0.canonical_reason().unwrap_or("Error");
        let mut resp = (
            self.0,
            Json(json!({"error": {"code": self.0.as_u16(), "title": title, "message": self.1}})),
        )
            .into_response();
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            // Only logins are refused this way (too many at once): soon is fine.
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
        }
        resp
    }
}

pub(super) type KsResult<T> = Result<T, KsError>;

pub(super) fn unauthorized() -> KsError {
    KsError(
        StatusCode::UNAUTHORIZED,
        "The request you have made requires authentication.".into(),
    )
}
pub(super) fn forbidden() -> KsError {
    KsError(
        StatusCode::FORBIDDEN,
        "You are not authorized to perform the requested action.".into(),
    )
}
pub(super) fn not_found(what: &str, id: &str) -> KsError {
    KsError(
        StatusCode::NOT_FOUND,
        format!("Could not find {what}: {id}."),
    )
}
pub(super) fn bad_request(msg: impl Into<String>) -> KsError {
    KsError(StatusCode::BAD_REQUEST, msg.into())
}
pub(super) fn conflict(msg: impl Into<String>) -> KsError {
    KsError(StatusCode::CONFLICT, msg.into())
}
pub(super) fn internal(e: impl std::fmt::Display) -> KsError {
    tracing::error!(error = %e, "identity request failed");
    KsError(
        StatusCode::INTERNAL_SERVER_ERROR,
        "An unexpected error prevented the server from fulfilling your request.".into(),
    )
}

pub fn router(id: Shared) -> Router {
    Router::new()
        .route("/", get(versions))
        .route("/v3", get(version))
        .route("/v3/", get(version))
        .route(
            "/v3/auth/tokens",
            get(validate).head(validate).post(issue).delete(revoke),
        )
        .route("/v3/auth/catalog", get(auth_catalog))
        .route("/v3/auth/projects", get(auth_projects))
        .route("/v3/domains", get(domains))
        .route("/v3/domains/{id}", get(domain))
        .route("/v3/projects", get(list_projects).post(create_project))
        .route(
            "/v3/projects/{id}",
            get(show_project)
                .patch(update_project)
                .delete(delete_project),
        )
        .route("/v3/users", get(list_users).post(create_user))
        .route(
            "/v3/users/{id}",
            get(show_user).patch(update_user).delete(delete_user),
        )
        .route("/v3/users/{id}/projects", get(user_projects))
        .route("/v3/roles", get(list_roles).post(create_role))
        .route("/v3/roles/{id}", get(show_role).delete(delete_role))
        .route(
            "/v3/users/{id}/application_credentials",
            get(super::appcreds::list).post(super::appcreds::create),
        )
        .route(
            "/v3/users/{id}/application_credentials/{ac}",
            get(super::appcreds::show).delete(super::appcreds::delete),
        )
        .route("/v3/OS-REVOKE/events", get(revocation_events))
        .route(
            "/v3/OS-KURYR/signing_keys",
            get(list_signing_keys).post(rotate_signing_key),
        )
        .route("/v3/projects/{p}/users/{u}/roles", get(project_user_roles))
        .route(
            "/v3/projects/{p}/users/{u}/roles/{r}",
            put(grant)
                .head(check_grant)
                .get(check_grant)
                .delete(ungrant),
        )
        .route("/v3/role_assignments", get(role_assignments))
        .route("/v3/services", get(services))
        .route("/v3/endpoints", get(endpoints))
        .route("/v3/regions", get(regions))
        .with_state(id)
}

pub(super) fn v3_url(id: &Identity) -> String {
    format!("{}/identity/v3/", id.config.public_url)
}

fn version_doc(id: &Identity) -> Value {
    json!({"id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
        "links": [{"rel": "self", "href": v3_url(id)}],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}]})
}

async fn versions(State(id): State<Shared>) -> Response {
    (
        StatusCode::MULTIPLE_CHOICES,
        Json(json!({"versions": {"values": [version_doc(&id)]}})),
    )
        .into_response()
}

async fn version(State(id): State<Shared>) -> Json<Value> {
    Json(json!({"version": version_doc(&id)}))
}

pub(super) fn domain_ref() -> Value {
    json!({"id": DOMAIN_ID, "name": DOMAIN_NAME})
}

/// The services of this server, as catalog entries.
fn catalog(id: &Identity) -> Value {
    let base = &id.config.public_url;
    let region = &id.config.region;
    let services: &[(&str, &str, &str)] = &[
        ("identity", "keystone", "/identity"),
        ("network", "neutron", "/networking"),
        ("load-balancer", "octavia", "/load-balancer"),
    ];
    let entries: Vec<Value> = services
        .iter()
        .map(|(kind, name, path)| {
            let eps: Vec<Value> = ["public", "internal", "admin"]
                .iter()
                .map(|i| json!({"id": format!("{kind}-{i}"), "interface": i, "region": region, "region_id": region, "url": format!("{base}{path}")}))
                .collect();
            json!({"id": format!("{kind}-service"), "type": kind, "name": name, "endpoints": eps})
        })
        .collect();
    Value::Array(entries)
}

pub(super) fn fmt_time(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S.000000Z")
        .to_string()
}

fn token_body(id: &Identity, claims: &TokenClaims, with_catalog: bool) -> KsResult<Value> {
    let st = id.state();
    let user = st.users.get(&claims.user).ok_or_else(unauthorized)?;
    let mut t = json!({
        "methods": claims.methods,
        "user": {"id": user.id, "name": user.name, "domain": domain_ref(), "password_expires_at": null},
        "audit_ids": claims.audit_ids(),
        "expires_at": fmt_time(claims.expires),
        "issued_at": fmt_time(claims.issued),
    });
    if let Some(pid) = &claims.project {
        let p = st.projects.get(pid).ok_or_else(unauthorized)?;
        let roles: Vec<Value> = st
            .token_roles(claims, pid)
            .into_iter()
            .map(|r| json!({"id": r.id, "name": r.name}))
            .collect();
        t["project"] = json!({"id": p.id, "name": p.name, "domain": domain_ref()});
        t["roles"] = Value::Array(roles);
        t["is_domain"] = json!(false);
        if with_catalog {
            t["catalog"] = catalog(id);
        }
    }
    if let Some(ac) = claims.app_cred.as_ref().and_then(|a| st.app_creds.get(a)) {
        t["application_credential"] =
            json!({"id": ac.id, "name": ac.name, "restricted": !ac.unrestricted});
    }
    Ok(json!({ "token": t }))
}

fn auth_token(headers: &HeaderMap) -> KsResult<&str> {
    headers
        .get("x-auth-token")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(unauthorized)
}

/// The caller's token claims and context, from X-Auth-Token (project-scoped).
pub(super) fn caller_claims(
    id: &Identity,
    headers: &HeaderMap,
) -> KsResult<(TokenClaims, AuthContext)> {
    let token = auth_token(headers)?;
    let st = id.state();
    let claims = st.live_token(token).ok_or_else(unauthorized)?;
    let project = claims.project.clone().ok_or_else(unauthorized)?;
    let ctx = Identity::context(&st, &claims, &project).ok_or_else(unauthorized)?;
    Ok((claims, ctx))
}

/// The caller, from X-Auth-Token (project-scoped).
pub(super) fn caller(id: &Identity, headers: &HeaderMap) -> KsResult<AuthContext> {
    caller_claims(id, headers).map(|(_, ctx)| ctx)
}

fn admin(id: &Identity, headers: &HeaderMap) -> KsResult<AuthContext> {
    let ctx = caller(id, headers)?;
    if ctx.is_admin() {
        Ok(ctx)
    } else {
        Err(forbidden())
    }
}

pub(super) fn parse_json(body: &Bytes) -> KsResult<Value> {
    serde_json::from_slice(body).map_err(|_| bad_request("The request body is not valid JSON."))
}

fn check_domain(v: Option<&Value>) -> KsResult<()> {
    let Some(d) = v else { return Ok(()) };
    let ok = d
        .get("id")
        .and_then(Value::as_str)
        .map(|i| i == DOMAIN_ID)
        .unwrap_or(true)
        && d.get("name")
            .and_then(Value::as_str)
            .map(|n| n == DOMAIN_NAME)
            .unwrap_or(true);
    if ok { Ok(()) } else { Err(unauthorized()) }
}

/// Too many logins at once: try again shortly (Keystone's error shape, 503).
pub(super) fn busy(e: login::Busy) -> KsError {
    match e {
        login::Busy::Saturated => KsError(
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many authentication requests are in progress; retry shortly.".into(),
        ),
        login::Busy::Gone => internal(e),
    }
}

/// A user named by `{"id"}` or `{"name", "domain"}`.
fn find_user<'a>(st: &'a super::State, u: &Value) -> KsResult<Option<&'a User>> {
    check_domain(u.get("domain"))?;
    Ok(match (u["id"].as_str(), u["name"].as_str()) {
        (Some(uid), _) => st.users.get(uid),
        (None, Some(name)) => st.user_by_name(name),
        _ => None,
    })
}

/// Who authenticated, before the token is made.
struct Authenticated {
    user_id: String,
    methods: Vec<String>,
    /// The password hash that was checked: the token is refused if it changed meanwhile.
    checked_hash: Option<String>,
    /// The token this one is got from.
    parent: Option<TokenClaims>,
    app_cred: Option<AppCred>,
}

async fn authenticate(
    id: &Identity,
    auth: &Value,
    methods: Vec<String>,
) -> KsResult<Authenticated> {
    let has = |m: &str| methods.iter().any(|x| x == m);
    if has("password") {
        let u = &auth["identity"]["password"]["user"];
        let password = u["password"].as_str().ok_or_else(unauthorized)?.to_string();
        let user = find_user(&id.state(), u)?.cloned();
        // Unknown users cost a check of the dummy hash: the answer comes no sooner.
        let hash = user.as_ref().map(|u| u.password_hash.clone());
        let ok = id.gate.check(password, hash.clone()).await.map_err(busy)?;
        let user = user.filter(|u| ok && u.enabled).ok_or_else(unauthorized)?;
        Ok(Authenticated {
            user_id: user.id,
            methods,
            checked_hash: hash,
            parent: None,
            app_cred: None,
        })
    } else if has("application_credential") {
        let a = &auth["identity"]["application_credential"];
        let secret = a["secret"].as_str().ok_or_else(unauthorized)?.to_string();
        let found = {
            let st = id.state();
            match (a["id"].as_str(), a["name"].as_str()) {
                (Some(acid), _) => st.app_creds.get(acid).cloned(),
                (None, Some(name)) => {
                    let owner = find_user(&st, &a["user"])?.map(|u| u.id.clone());
                    st.app_creds
                        .values()
                        .find(|c| c.name == name && Some(&c.user_id) == owner.as_ref())
                        .cloned()
                }
                _ => None,
            }
        };
        let hash = found.as_ref().map(|c| c.secret_hash.clone());
        let ok = id.gate.check(secret, hash).await.map_err(busy)?;
        let ac = found.filter(|_| ok).ok_or_else(unauthorized)?;
        let now = chrono::Utc::now().timestamp();
        if ac.expires_at.is_some_and(|e| e <= now) {
            return Err(KsError(
                StatusCode::UNAUTHORIZED,
                "The application credential has expired.".into(),
            ));
        }
        Ok(Authenticated {
            user_id: ac.user_id.clone(),
            methods,
            checked_hash: None,
            parent: None,
            app_cred: Some(ac),
        })
    } else if has("token") {
        let t = auth["identity"]["token"]["id"]
            .as_str()
            .ok_or_else(unauthorized)?;
        let st = id.state();
        let parent = st.live_token(t).ok_or_else(unauthorized)?;
        if parent.chain.len() >= tokens::MAX_CHAIN {
            return Err(KsError(
                StatusCode::UNAUTHORIZED,
                format!(
                    "This token was got from {} tokens in a row; authenticate with a password or an application credential.",
                    parent.chain.len() + 1
                ),
            ));
        }
        let app_cred = parent
            .app_cred
            .as_ref()
            .and_then(|a| st.app_creds.get(a))
            .cloned();
        // The new token also counts as got by its parent's methods (Keystone does
        // so; what an application credential may do depends on it).
        let mut all = methods;
        for m in &parent.methods {
            if !all.contains(m) {
                all.push(m.clone());
            }
        }
        Ok(Authenticated {
            user_id: parent.user.clone(),
            methods: all,
            checked_hash: None,
            parent: Some(parent),
            app_cred,
        })
    } else {
        Err(unauthorized())
    }
}

async fn issue(
    State(id): State<Shared>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    body: Bytes,
) -> KsResult<Response> {
    let body = parse_json(&body)?;
    let auth = body
        .get("auth")
        .ok_or_else(|| bad_request("'auth' is a required property"))?;
    let methods: Vec<String> = auth["identity"]["methods"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let who = authenticate(&id, auth, methods).await?;
    let now = chrono::Utc::now().timestamp();
    // One look at the state for every check and for the revision the token carries:
    // a change applied after it (a new password, a revocation) is then newer.
    let (claims, token) = {
        let st = id.state();
        let user = st
            .users
            .get(&who.user_id)
            .filter(|u| u.enabled)
            .ok_or_else(unauthorized)?;
        if who
            .checked_hash
            .as_ref()
            .is_some_and(|h| *h != user.password_hash)
        {
            return Err(unauthorized());
        }
        let scope = auth.get("scope").and_then(|s| s.get("project"));
        let requested = match scope {
            None => None,
            Some(p) => {
                check_domain(p.get("domain"))?;
                let found = match (p["id"].as_str(), p["name"].as_str()) {
                    (Some(pid), _) => st.projects.get(pid),
                    (None, Some(name)) => st.project_by_name(name),
                    _ => None,
                };
                Some(found.ok_or_else(unauthorized)?.id.clone())
            }
        };
        let project = match &who.app_cred {
            Some(ac) => {
                // Bound to its project: it may not be scoped elsewhere.
                let current = st.app_creds.get(&ac.id).ok_or_else(unauthorized)?;
                if current.secret_hash != ac.secret_hash
                    || requested.as_ref().is_some_and(|p| *p != ac.project_id)
                {
                    return Err(unauthorized());
                }
                Some(ac.project_id.clone())
            }
            None => requested,
        };
        let mut expires = now + id.config.token_ttl.as_secs() as i64;
        if let Some(p) = &who.parent {
            expires = expires.min(p.expires);
        }
        if let Some(e) = who.app_cred.as_ref().and_then(|a| a.expires_at) {
            expires = expires.min(e);
        }
        let mut chain = Vec::new();
        if let Some(p) = &who.parent {
            chain = p.chain.clone();
            chain.push(p.audit.clone());
        }
        let claims = TokenClaims {
            user: who.user_id.clone(),
            project,
            issued: now,
            expires,
            audit: new_id(),
            methods: who.methods,
            chain,
            revision: st.revision,
            app_cred: who.app_cred.as_ref().map(|a| a.id.clone()),
        };
        if let Some(pid) = &claims.project {
            let enabled = st.projects.get(pid).is_some_and(|p| p.enabled);
            if !enabled || st.token_roles(&claims, pid).is_empty() {
                return Err(unauthorized());
            }
        }
        let key = st.primary_key().ok_or_else(|| internal("no signing key"))?;
        let token = tokens::sign(&key.id, &key.secret, &claims)
            .ok_or_else(|| internal("signing failed"))?;
        (claims, token)
    };
    let body = token_body(&id, &claims, !q.contains_key("nocatalog"))?;
    let mut resp = (StatusCode::CREATED, Json(body)).into_response();
    resp.headers_mut().insert(
        "x-subject-token",
        HeaderValue::from_str(&token).map_err(internal)?,
    );
    Ok(resp)
}

/// Claims of X-Subject-Token if it is valid now.
fn subject(id: &Identity, headers: &HeaderMap) -> Option<(TokenClaims, String)> {
    let t = headers
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())?;
    let c = id.state().live_token(t)?;
    Some((c, t.to_string()))
}

/// Any valid token may check itself; checking others' tokens needs admin.
fn may_inspect(id: &Identity, headers: &HeaderMap) -> KsResult<()> {
    let own = headers.get("x-auth-token") == headers.get("x-subject-token");
    let token = auth_token(headers)?;
    if id.state().live_token(token).is_none() {
        return Err(unauthorized());
    }
    if own || id.validate(token).is_some_and(|ctx| ctx.is_admin()) {
        Ok(())
    } else {
        Err(forbidden())
    }
}

async fn validate(
    State(id): State<Shared>,
    method: Method,
    headers: HeaderMap,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> KsResult<Response> {
    may_inspect(&id, &headers)?;
    let (claims, token) =
        subject(&id, &headers).ok_or_else(|| not_found("token", "the subject token"))?;
    let body = token_body(&id, &claims, !q.contains_key("nocatalog"))?;
    let mut resp = if method == Method::HEAD {
        StatusCode::OK.into_response()
    } else {
        Json(body).into_response()
    };
    resp.headers_mut().insert(
        "x-subject-token",
        HeaderValue::from_str(&token).map_err(internal)?,
    );
    Ok(resp)
}

/// Revokes the subject token by its audit id, which also revokes every token got
/// from it (they carry it in their chain).
async fn revoke(State(id): State<Shared>, headers: HeaderMap) -> KsResult<StatusCode> {
    may_inspect(&id, &headers)?;
    let (claims, _) =
        subject(&id, &headers).ok_or_else(|| not_found("token", "the subject token"))?;
    let txn = Txn::new().put(keys::revoked(&claims.audit), claims.expires.to_string());
    id.commit(id.with_pruning(txn)).await.map_err(internal)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn auth_catalog(State(id): State<Shared>, headers: HeaderMap) -> KsResult<Json<Value>> {
    caller(&id, &headers)?;
    Ok(Json(
        json!({"catalog": catalog(&id), "links": {"self": format!("{}auth/catalog", v3_url(&id))}}),
    ))
}

fn project_json(id: &Identity, p: &Project) -> Value {
    json!({"id": p.id, "name": p.name, "description": p.description, "enabled": p.enabled,
        "domain_id": DOMAIN_ID, "parent_id": DOMAIN_ID, "is_domain": false, "tags": [], "options": {},
        "links": {"self": format!("{}projects/{}", v3_url(id), p.id)}})
}

fn user_json(id: &Identity, u: &User) -> Value {
    let mut v = json!({"id": u.id, "name": u.name, "enabled": u.enabled, "domain_id": DOMAIN_ID,
        "password_expires_at": null, "options": {},
        "links": {"self": format!("{}users/{}", v3_url(id), u.id)}});
    if let Some(p) = &u.default_project_id {
        v["default_project_id"] = json!(p);
    }
    if let Some(e) = &u.email {
        v["email"] = json!(e);
    }
    if let Some(d) = &u.description {
        v["description"] = json!(d);
    }
    v
}

fn role_json(id: &Identity, r: &Role) -> Value {
    json!({"id": r.id, "name": r.name, "domain_id": null, "description": r.description, "options": {},
        "links": {"self": format!("{}roles/{}", v3_url(id), r.id)}})
}

async fn auth_projects(State(id): State<Shared>, headers: HeaderMap) -> KsResult<Json<Value>> {
    let token = auth_token(&headers)?;
    let st = id.state();
    let c = st.live_token(token).ok_or_else(unauthorized)?;
    // An application credential's tokens see only its project.
    let bound = c
        .app_cred
        .as_ref()
        .and_then(|a| st.app_creds.get(a))
        .map(|a| a.project_id.clone());
    let projects: Vec<Value> = st
        .projects
        .values()
        .filter(|p| bound.as_ref().is_none_or(|b| *b == p.id))
        .filter(|p| !st.role_names(&p.id, &c.user).is_empty())
        .map(|p| project_json(&id, p))
        .collect();
    Ok(Json(
        json!({"projects": projects, "links": {"self": null, "next": null, "previous": null}}),
    ))
}

async fn domains(State(id): State<Shared>, headers: HeaderMap) -> KsResult<Json<Value>> {
    caller(&id, &headers)?;
    Ok(Json(
        json!({"domains": [domain_json()], "links": {"self": null, "next": null, "previous": null}}),
    ))
}

fn domain_json() -> Value {
    json!({"id": DOMAIN_ID, "name": DOMAIN_NAME, "description": "The default domain", "enabled": true, "tags": [], "options": {}, "links": {}})
}

async fn domain(
    State(id): State<Shared>,
    headers: HeaderMap,
    Path(d): Path<String>,
) -> KsResult<Json<Value>> {
    caller(&id, &headers)?;
    if d == DOMAIN_ID || d == DOMAIN_NAME {
        Ok(Json(json!({"domain": domain_json()})))
    } else {
        Err(not_found("domain", &d))
    }
}

pub(super) fn list_links() -> Value {
    json!({"self": null, "next": null, "previous": null})
}

async fn list_projects(
    State(id): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> KsResult<Json<Value>> {
    admin(&id, &headers)?;
    let st = id.state();
    let mut list: Vec<&Project> = st
        .projects
        .values()
        .filter(|p| q.get("name").is_none_or(|n| *n == p.name))
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(
        json!({"projects": list.into_iter().map(|p| project_json(&id, p)).collect::<Vec<_>>(), "links": list_links()}),
    ))
}

async fn show_project(
    State(id): State<Shared>,
    headers: HeaderMap,
    Path(pid): Path<String>,
) -> KsResult<Json<Value>> {
    let ctx = caller(&id, &headers)?;
    if !ctx.is_admin() && ctx.project_id != pid {
        return Err(forbidden());
    }
    let st = id.state();
    let p = st
        .projects
        .get(&pid)
        .ok_or_else(|| not_found("project", &pid))?;
    Ok(Json(json!({"project": project_json(&id, p)})))
}

pub(super) fn field<'a>(v: &'a Value, wrapper: &str, name: &str) -> Option<&'a Value> {
    v.get(wrapper).and_then(|w| w.get(name))
}

pub(super) fn opt_str(v: Option<&Value>, name: &str) -> KsResult<Option<String>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad_request(format!(
            "Invalid input for field '{name}': expected a string."
        ))),
    }
}

pub(super) fn opt_bool(v: Option<&Value>, name: &str) -> KsResult<Option<bool>> {
    match v {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(bad_request(format!(
            "Invalid input for field '{name}': expected a boolean."
        ))),
    }
}

/// Stores a new object under `key` with its unique name index `name_key` (→ `obj_id`),
/// in one transaction that fails with 409 `duplicate` if the name is taken.
async fn store_named(
    id: &Identity,
    name_key: String,
    key: String,
    obj_id: &str,
    obj: &impl serde::Serialize,
    duplicate: String,
) -> KsResult<()> {
    let txn = Txn::new()
        .when(Compare::Absent(name_key.clone()))
        .put(name_key, obj_id.to_string())
        .put(key, serde_json::to_vec(obj).map_err(internal)?);
    if !id.commit(txn).await.map_err(internal)? {
        return Err(conflict(duplicate));
    }
    Ok(())
}

/// 201 with `{kind: body}`.
fn created(kind: &str, body: Value) -> Response {
    (StatusCode::CREATED, Json(json!({ kind: body }))).into_response()
}

/// Keystone's limits: project names up to 64 characters; user, role and
/// application credential names up to 255.
pub(super) fn check_name(name: &str, max: usize) -> KsResult<()> {
    if name.is_empty() || name.chars().count() > max || name.contains('/') {
        return Err(bad_request(format!(
            "Invalid name '{name}': 1 to {max} characters, no '/'."
        )));
    }
    Ok(())
}

async fn create_project(
    State(id): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> KsResult<Response> {
    admin(&id, &headers)?;
    let body = parse_json(&body)?;
    let name = opt_str(field(&body, "project", "name"), "name")?
        .ok_or_else(|| bad_request("'name' is a required property"))?;
    check_name(&name, 64)?;
    let p = Project {
        id: new_id(),
        name: name.clone(),
        description: opt_str(field(&body, "project", "description"), "description")?
            .unwrap_or_default(),
        enabled: opt_bool(field(&body, "project", "enabled"), "enabled")?.unwrap_or(true),
    };
    let duplicate = format!(
        "Conflict occurred attempting to store project - it is not permitted to have two projects with the same name in the same domain : {name}."
    );
    let (name_key, key) = (keys::project_name(&name), keys::project(&p.id));
    store_named(&id, name_key, key, &p.id, &p, duplicate).await?;
    Ok(created("project", project_json(&id, &p)))
}

async fn update_project(
    State(id): State<Shared>,
    headers: HeaderMap,
    Path(pid): Path<String>,
    body: Bytes,
) -> KsResult<Json<Value>> {
    admin(&id, &headers)?;
    let body = parse_json(&body)?;
    let mut p = id
        .state()
        .projects
        .get(&pid)
        .cloned()
        .ok_or_else(|| not_found("project", &pid))?;
    let old_name = p.name.clone();
    if let Some(n) = opt_str(field(&body, "project", "name"), "name")? {
        check_name(&n, 64)?;
        p.name = n;
    }
    if let Some(d) = opt_str(field(&body, "project", "description"), "description")? {
        p.description = d;
    }
    let was_enabled = p.enabled;
    if let Some(e) = opt_bool(field(&body, "project", "enabled"), "enabled")? {
        p.enabled = e;
    }
    let mut txn = Txn::new().put(
        keys::project(&p.id),
        serde_json::to_vec(&p).map_err(internal)?,
    );
    if was_enabled && !p.enabled {
        // Its tokens stay revoked if it is enabled again (as in Keystone).
        let (k, v) = id
            .revocation_record(keys::revoked_project(&p.id))
            .map_err(internal)?;
        txn = id.with_pruning(txn.put(k, v));
    }
    if p.name != old_name {
        txn = txn
            .when(Compare::Absent(keys::project_name(&p.name)))
            .put(keys::project_name(&p.name), p.id.clone())
            .delete(keys::project_name(&old_name));
    }
    if !id.commit(txn).await.map_err(internal)? {
        return Err(conflict(format!(
            "Conflict occurred attempting to store project - duplicate name {}.",
            p.name
        )));
    }
    Ok(Json(json!({"project": project_json(&id, &p)})))
}

async fn delete_project(
    State(id): State<Shared>,
    headers: HeaderMap,
    Path(pid): Path<String>,
) -> KsResult<StatusCode> {
    admin(&id, &headers)?;
    let txn = {
        let st = id.state();
        let p = st
            .projects
            .get(&pid)
            .ok_or_else(|| not_found("project", &pid))?;
        let (k, v) = id
            .revocation_record(keys::revoked_project(&p.id))
            .map_err(internal)?;
        let mut txn = Txn::new()
            .delete(keys::project(&p.id))
            .delete(keys::project_name(&p.name))
            .put(k, v);
        for (ap, u, r) in st.assignments.iter().filter(|(ap, _, _)| *ap == pid) {
            txn = txn.delete(keys::assignment(ap, u, r));
        }
        for ac in st.app_creds.values().filter(|a| a.project_id == pid) {
            txn = txn
                .delete(keys::app_cred(&ac.id))
                .delete(keys::app_cred_name(&ac.user_id, &ac.name));
        }
        txn
    };
    let txn = id.with_pruning(txn);
    id.commit(txn).await.map_err(internal)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_users(
    State(id): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> KsResult<Json<Value>> {
    admin(&id, &headers)?;
    let st = id.state();
    let mut list: Vec<&User> = st
        .users
        .values()
        .filter(|u| q.get("name").is_none_or(|n| *n == u.name))
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(
        json!({"users": list.into_iter().map(|u| user_json(&id, u)).collect::<Vec<_>>(), "links": list_links()}),
    ))
}

async fn show_user(
    State(id): State<Shared>,
    headers: HeaderMap,
    Path(uid): Path<String>,
) -> KsResult<Json<Value>> {
    let ctx = caller(&id, &headers)?;
    if !ctx.is_admin() && ctx.user_id != uid {
        return Err(forbidden());
    }
    let st = id.state();
    let u = st.users.get(&uid).ok_or_else(|| not_found("user", &uid))?;
    Ok(Json(json!({"user": user_json(&id, u)})))
}

async fn user_projects(
    State(id): State<Shared>,
    headers: HeaderMap,
    Path(uid): Path<String>,
) -> KsResult<Json<Value>> {
    let ctx = caller(&id, &headers)?;
    if !ctx.is_admin() && ctx.user_id != uid {
        return Err(forbidden());
    }
    let st = id.state();
    let projects: Vec<Value> = st
        .projects
        .values()
        .filter(|p| !st.role_names(&p.id, &uid).is_empty())
        .map(|p| project_json(&id, p))
        .collect();
    Ok(Json(json!({"projects": projects, "links": list_links()})))
}

async fn create_user(
    State(id): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> KsResult<Response> {
    admin(&id, &headers)?;
    let body = parse_json(&body)?;
    let name = opt_str(field(&body, "user", "name"), "name")?
        .ok_or_else(|| bad_request("'name' is a required property"))?;
    check_name(&name, 255)?;
    let password = opt_str(field(&body, "user", "password"), "password")?;
    let default_project_id = opt_str(
        field(&body, "user", "default_project_id"),
        "default_project_id",
    )?;
    if let Some(p) = &default_project_id
        && !id.state().projects.contains_key(p)
    {
        return Err(bad_request(format!("Invalid default project {p}.")));
    }
    // Without a password the user can never log in (as in Keystone).
    let hash = match password {
        Some(p) => id.gate.hash(p).await.map_err(busy)?.map_err(internal)?,
        None => String::new(),
    };
    let u = User {
        id: new_id(),
        name: name.clone(),
        password_hash: hash,
        enabled: opt_bool(field(&body, "user", "enabled"), "enabled")?.unwrap_or(true),
        default_project_id,
        email: opt_str(field(&body, "user", "email"), "email")?,
        description: opt_str(field(&body, "user", "description"), "description")?,
    };
    let duplicate = format!(
        "Conflict occurred attempting to store user - Duplicate entry found with name {name} at domain ID default."
    );
    let (name_key, key) = (keys::user_name(&name), keys::user(&u.id));
    store_named(&id, name_key, key, &u.id, &u, duplicate).await?;
    Ok(created("user", user_json(&id, &u)))
}

async fn update_user(
    State(id): State<Shared>,
    headers: HeaderMap,
    Path(uid): Path<String>,
    body: Bytes,
) -> KsResult<Json<Value>> {
    admin(&id, &headers)?;
    let body = parse_json(&body)?;
    let mut u = id
        .state()
        .users
        .get(&uid)
        .cloned()
        .ok_or_else(|| not_found("user", &uid))?;
    let old_name = u.name.clone();
    if let Some(n) = opt_str(field(&body, "user", "name"), "name")? {
        check_name(&n, 255)?;
        u.name = n;
    }
    let was_enabled = u.enabled;
    let new_password = opt_str(field(&body, "user", "password"), "password")?;
    let password_changed = new_password.is_some();
    if let Some(p) = new_password {
        u.password_hash = id.gate.hash(p).await.map_err(busy)?.map_err(internal)?;
    }
    if let Some(e) = opt_bool(field(&body, "user", "enabled"), "enabled")? {
        u.enabled = e;
    }
    if let Some(p) = opt_str(
        field(&body, "user", "default_project_id"),
        "default_project_id",
    )? {
        u.default_project_id = Some(p);
    }
    if let Some(e) = opt_str(field(&body, "user", "email"), "email")? {
        u.email = Some(e);
    }
    if let Some(d) = opt_str(field(&body, "user", "description"), "description")? {
        u.description = Some(d);
    }
    let mut txn = Txn::new().put(keys::user(&u.id), serde_json::to_vec(&u).map_err(internal)?);
    if password_changed || (was_enabled && !u.enabled) {
        // Every token of the user issued before this change is revoked.
        let (k, v) = id
            .revocation_record(keys::revoked_user(&u.id))
            .map_err(internal)?;
        txn = id.with_pruning(txn.put(k, v));
    }
    if u.name != old_name {
        txn = txn
            .when(Compare::Absent(keys::user_name(&u.name)))
            .put(keys::user_name(&u.name), u.id.clone())
            .delete(keys::user_name(&old_name));
    }
    if !id.commit(txn).await.map_err(internal)? {
        return Err(conflict(format!(
            "Conflict occurred attempting to store user - duplicate name {}.",
            u.name
        )));
    }
    Ok(Json(json!({"user": user_json(&id, &u)})))
}

async fn delete_user(
    State(id): State<Shared>,
    headers: HeaderMap,
    Path(uid): Path<String>,
) -> KsResult<StatusCode> {
    admin(&id, &headers)?;
    let txn = {
        let st = id.state();
        let u = st.users.get(&uid).ok_or_else(|| not_found("user", &uid))?;
        let (k, v) = id
            .revocation_record(keys::revoked_user(&u.id))
            .map_err(internal)?;
        let mut txn = Txn::new()
            .delete(keys::user(&u.id))
            .delete(keys::user_name(&u.name))
            .put(k, v);
        for (p, au, r) in st.assignments.iter().filter(|(_, au, _)| *au == uid) {
            txn = txn.delete(keys::assignment(p, au, r));
        }
        for ac in st.app_creds.values().filter(|a| a.user_id == uid) {
            txn = txn
                .delete(keys::app_cred(&ac.id))
                .delete(keys::app_cred_name(&ac.user_id, &ac.name));
        }
        txn
    };
    let txn = id.with_pruning(txn);
    id.commit(txn).await.map_err(internal)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_roles(
    State(id): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> KsResult<Json<Value>> {
    caller(&id, &headers)?;
    let st = id.state();
    let mut list: Vec<&Role> = st
        .roles
        .values()
        .filter(|r| q.get("name").is_none_or(|n| *n == r.name))
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(
        json!({"roles": list.into_iter().map(|r| role_json(&id, r)).collect::<Vec<_>>(), "links": list_links()}),
    ))
}

async fn show_role(
    State(id): State<Shared>,
    headers: HeaderMap,
    Path(rid): Path<String>,
) -> KsResult<Json<Value>> {
    caller(&id, &headers)?;
    let st = id.state();
    let r = st.roles.get(&rid).ok_or_else(|| not_found("role", &rid))?;
    Ok(Json(json!({"role": role_json(&id, r)})))
}

fn check_triple(id: &Identity, p: &str, u: &str, r: Option<&str>) -> KsResult<()> {
    let st = id.state();
    if !st.projects.contains_key(p) {
        return Err(not_found("project", p));
    }
    if !st.users.contains_key(u) {
        return Err(not_found("user", u));
    }
    if let Some(r) = r
        && !st.roles.contains_key(r)
    {
        return Err(not_found("role", r));
    }
    Ok(())
}

async fn project_user_roles(
    State(id): State<Shared>,
    headers: HeaderMap,
    Path((p, u)): Path<(String, String)>,
) -> KsResult<Json<Value>> {
    admin(&id, &headers)?;
    check_triple(&id, &p, &u, None)?;
    let st = id.state();
    let roles: Vec<Value> = st
        .assignments
        .iter()
        .filter(|(ap, au, _)| *ap == p && *au == u)
        .filter_map(|(_, _, r)| st.roles.get(r))
        .map(|r| role_json(&id, r))
        .collect();
    Ok(Json(json!({"roles": roles, "links": list_links()})))
}

async fn grant(
    State(id): State<Shared>,
    headers: HeaderMap,
    Path((p, u, r)): Path<(String, String, String)>,
) -> KsResult<StatusCode> {
    admin(&id, &headers)?;
    check_triple(&id, &p, &u, Some(&r))?;
    id.commit(Txn::new().put(keys::assignment(&p, &u, &r), ""))
        .await
        .map_err(internal)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn check_grant(
    State(id): State<Shared>,
    headers: HeaderMap,
    Path((p, u, r)): Path<(String, String, String)>,
) -> KsResult<StatusCode> {
    admin(&id, &headers)?;
    check_triple(&id, &p, &u, Some(&r))?;
    if id
        .state()
        .assignments
        .contains(&(p.clone(), u.clone(), r.clone()))
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(
            "role assignment",
            &format!("{r} for user {u} on project {p}"),
        ))
    }
}

async fn ungrant(
    State(id): State<Shared>,
    headers: HeaderMap,
    Path((p, u, r)): Path<(String, String, String)>,
) -> KsResult<StatusCode> {
    admin(&id, &headers)?;
    check_triple(&id, &p, &u, Some(&r))?;
    if !id
        .state()
        .assignments
        .contains(&(p.clone(), u.clone(), r.clone()))
    {
        return Err(not_found(
            "role assignment",
            &format!("{r} for user {u} on project {p}"),
        ));
    }
    id.commit(Txn::new().delete(keys::assignment(&p, &u, &r)))
        .await
        .map_err(internal)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn role_assignments(
    State(id): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> KsResult<Json<Value>> {
    let ctx = caller(&id, &headers)?;
    let by_user = q.get("user.id");
    if !ctx.is_admin() && by_user != Some(&ctx.user_id) {
        return Err(forbidden());
    }
    let names = q
        .get("include_names")
        .is_some_and(|v| v != "0" && !v.eq_ignore_ascii_case("false"));
    let st = id.state();
    let mut out: Vec<Value> = Vec::new();
    let mut rows: Vec<&(String, String, String)> = st
        .assignments
        .iter()
        .filter(|(p, u, r)| {
            by_user.is_none_or(|x| x == u)
                && q.get("scope.project.id").is_none_or(|x| x == p)
                && q.get("role.id").is_none_or(|x| x == r)
        })
        .collect();
    rows.sort();
    for (p, u, r) in rows {
        let mut user = json!({"id": u});
        let mut project = json!({"id": p});
        let mut role = json!({"id": r});
        if names {
            user["name"] = json!(st.users.get(u).map(|x| x.name.clone()));
            user["domain"] = domain_ref();
            project["name"] = json!(st.projects.get(p).map(|x| x.name.clone()));
            project["domain"] = domain_ref();
            role["name"] = json!(st.roles.get(r).map(|x| x.name.clone()));
        }
        out.push(
            json!({"user": user, "scope": {"project": project}, "role": role,
            "links": {"assignment": format!("{}projects/{p}/users/{u}/roles/{r}", v3_url(&id))}}),
        );
    }
    Ok(Json(
        json!({"role_assignments": out, "links": list_links()}),
    ))
}

async fn services(State(id): State<Shared>, headers: HeaderMap) -> KsResult<Json<Value>> {
    caller(&id, &headers)?;
    let list: Vec<Value> = catalog(&id)
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| json!({"id": s["id"], "type": s["type"], "name": s["name"], "enabled": true, "description": "", "links": {}}))
        .collect();
    Ok(Json(json!({"services": list, "links": list_links()})))
}

async fn endpoints(State(id): State<Shared>, headers: HeaderMap) -> KsResult<Json<Value>> {
    caller(&id, &headers)?;
    let mut list = Vec::new();
    for s in catalog(&id).as_array().into_iter().flatten() {
        for e in s["endpoints"].as_array().into_iter().flatten() {
            list.push(json!({"id": e["id"], "interface": e["interface"], "region": e["region"], "region_id": e["region_id"],
                "url": e["url"], "service_id": s["id"], "enabled": true, "links": {}}));
        }
    }
    Ok(Json(json!({"endpoints": list, "links": list_links()})))
}

async fn regions(State(id): State<Shared>, headers: HeaderMap) -> KsResult<Json<Value>> {
    caller(&id, &headers)?;
    Ok(Json(
        json!({"regions": [{"id": id.config.region, "description": "", "parent_region_id": null, "links": {}}], "links": list_links()}),
    ))
}

async fn create_role(
    State(id): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> KsResult<Response> {
    admin(&id, &headers)?;
    let body = parse_json(&body)?;
    let name = opt_str(field(&body, "role", "name"), "name")?
        .ok_or_else(|| bad_request("'name' is a required property"))?;
    check_name(&name, 255)?;
    if let Some(d) = opt_str(field(&body, "role", "domain_id"), "domain_id")? {
        return Err(bad_request(format!(
            "Domain-specific roles are not supported (domain_id {d})."
        )));
    }
    let r = Role {
        id: new_id(),
        name: name.clone(),
        description: opt_str(field(&body, "role", "description"), "description")?,
    };
    let duplicate = format!(
        "Conflict occurred attempting to store role - Duplicate entry found with name {name}."
    );
    let (name_key, key) = (keys::role_name(&name), keys::role(&r.id));
    store_named(&id, name_key, key, &r.id, &r, duplicate).await?;
    Ok(created("role", role_json(&id, &r)))
}

async fn delete_role(
    State(id): State<Shared>,
    headers: HeaderMap,
    Path(rid): Path<String>,
) -> KsResult<StatusCode> {
    admin(&id, &headers)?;
    let txn = {
        let st = id.state();
        let r = st.roles.get(&rid).ok_or_else(|| not_found("role", &rid))?;
        // kuryr's policy and bootstrap rely on these.
        if BUILTIN_ROLES.contains(&r.name.as_str()) {
            return Err(KsError(
                StatusCode::FORBIDDEN,
                format!("The role {} is built in and cannot be deleted.", r.name),
            ));
        }
        let mut txn = Txn::new()
            .delete(keys::role(&r.id))
            .delete(keys::role_name(&r.name));
        for (p, u, ar) in st.assignments.iter().filter(|(_, _, ar)| *ar == rid) {
            txn = txn.delete(keys::assignment(p, u, ar));
        }
        txn
    };
    id.commit(txn).await.map_err(internal)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Keystone's revocation list: what is revoked now (expired records are pruned).
async fn revocation_events(State(id): State<Shared>, headers: HeaderMap) -> KsResult<Json<Value>> {
    admin(&id, &headers)?;
    let st = id.state();
    let mut events: Vec<Value> = Vec::new();
    for (audit, exp) in &st.revoked {
        events.push(json!({"audit_id": audit, "expires_at": fmt_time(*exp)}));
    }
    for (user, r) in &st.revoked_users {
        events.push(
            json!({"user_id": user, "issued_before": fmt_time(r.issued_before),
            "revoked_at": fmt_time(r.issued_before), "expires_at": fmt_time(r.expires)}),
        );
    }
    for (project, r) in &st.revoked_projects {
        events.push(
            json!({"project_id": project, "issued_before": fmt_time(r.issued_before),
            "revoked_at": fmt_time(r.issued_before), "expires_at": fmt_time(r.expires)}),
        );
    }
    Ok(Json(json!({"events": events, "links": list_links()})))
}

fn signing_key_json(st: &super::State, k: &super::SigningKey) -> Value {
    let primary = st.signing_key.as_ref().is_some_and(|(p, _)| *p == k.id);
    json!({"id": k.id, "primary": primary, "created_at": fmt_time(k.created),
        "retired_at": k.retired.map(fmt_time), "verify_until": k.verify_until.map(fmt_time),
        "legacy": k.legacy})
}

/// kuryr's extension: the signing keys (ids and times, never the secrets).
async fn list_signing_keys(State(id): State<Shared>, headers: HeaderMap) -> KsResult<Json<Value>> {
    admin(&id, &headers)?;
    let st = id.state();
    let mut list: Vec<&super::SigningKey> = st.keys.values().collect();
    list.sort_by_key(|k| (k.created, k.id.clone()));
    let keys: Vec<Value> = list.into_iter().map(|k| signing_key_json(&st, k)).collect();
    Ok(Json(json!({ "signing_keys": keys })))
}

/// kuryr's extension: a new primary signing key; tokens signed with the previous one
/// stay valid until they expire.
async fn rotate_signing_key(State(id): State<Shared>, headers: HeaderMap) -> KsResult<Response> {
    admin(&id, &headers)?;
    let kid = id.rotate_key().await.map_err(internal)?;
    let st = id.state();
    let k = st
        .keys
        .get(&kid)
        .ok_or_else(|| internal("the new key vanished"))?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "signing_key": signing_key_json(&st, k) })),
    )
        .into_response())
}
