//! Keystone v3 subset under `/identity`: password and token authentication,
//! stateless signed tokens that expire and can be revoked, a service catalog, and
//! projects, users, roles and role assignments. State lives in the store under
//! `/identity/`, with an in-memory copy kept current by a watch so that token
//! validation (on every Neutron request) never touches the store.

mod handlers;
mod tokens;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use futures::StreamExt;
use kuryr_store::{Compare, Event, EventKind, Revision, Store, StoreError, Txn, TxnOutcome};
use serde::{Deserialize, Serialize};

pub use tokens::TokenClaims;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Keystone,
    NoAuth,
}

#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// Password of the bootstrap `admin` user; generated and printed once when `None`.
    pub admin_password: Option<String>,
    pub token_ttl: Duration,
    /// Base URL clients reach this server at, e.g. `http://127.0.0.1:9696`.
    pub public_url: String,
    pub region: String,
}

/// Who is calling, resolved from a token (or from headers in noauth mode).
#[derive(Debug, Clone)]
pub struct AuthContext {
    pub user_id: String,
    pub user_name: String,
    pub project_id: String,
    pub project_name: String,
    pub roles: Vec<String>,
}

impl AuthContext {
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == "admin")
    }
}

pub const DOMAIN_ID: &str = "default";
pub const DOMAIN_NAME: &str = "Default";
const PREFIX: &str = "/identity/";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub description: String,
    pub enabled: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub name: String,
    pub password_hash: String,
    pub enabled: bool,
    pub default_project_id: Option<String>,
    pub email: Option<String>,
    pub description: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Role {
    pub id: String,
    pub name: String,
}

/// The in-memory identity state.
#[derive(Default)]
pub struct State {
    pub projects: HashMap<String, Project>,
    pub users: HashMap<String, User>,
    pub roles: HashMap<String, Role>,
    /// (project, user, role)
    pub assignments: HashSet<(String, String, String)>,
    /// audit id → expiry (unix seconds)
    pub revoked: HashMap<String, i64>,
    pub secret: Vec<u8>,
}

impl State {
    fn apply(&mut self, ev: &Event) {
        let put = ev.kind == EventKind::Put;
        let Some(rest) = ev.kv.key.strip_prefix(PREFIX) else {
            return;
        };
        let Some((kind, id)) = rest.split_once('/') else {
            if rest == "secret" && put {
                self.secret = ev.kv.value.clone();
            }
            return;
        };
        let v = &ev.kv.value;
        fn de<T: serde::de::DeserializeOwned>(key: &str, v: &[u8]) -> Option<T> {
            serde_json::from_slice(v)
                .map_err(|e| tracing::error!(key, error = %e, "undecodable identity record"))
                .ok()
        }
        match kind {
            "projects" => {
                self.projects.remove(id);
                if let Some(p) = put.then(|| de::<Project>(&ev.kv.key, v)).flatten() {
                    self.projects.insert(id.to_string(), p);
                }
            }
            "users" => {
                self.users.remove(id);
                if let Some(u) = put.then(|| de::<User>(&ev.kv.key, v)).flatten() {
                    self.users.insert(id.to_string(), u);
                }
            }
            "roles" => {
                self.roles.remove(id);
                if let Some(r) = put.then(|| de::<Role>(&ev.kv.key, v)).flatten() {
                    self.roles.insert(id.to_string(), r);
                }
            }
            "assignments" => {
                let parts: Vec<&str> = id.split('/').collect();
                if let [p, u, r] = parts[..] {
                    let t = (p.to_string(), u.to_string(), r.to_string());
                    if put {
                        self.assignments.insert(t);
                    } else {
                        self.assignments.remove(&t);
                    }
                }
            }
            "revoked" => {
                if put {
                    let exp = de::<i64>(&ev.kv.key, v).unwrap_or(i64::MAX);
                    self.revoked.insert(id.to_string(), exp);
                } else {
                    self.revoked.remove(id);
                }
            }
            _ => {}
        }
    }

    pub fn role_names(&self, project: &str, user: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .assignments
            .iter()
            .filter(|(p, u, _)| p == project && u == user)
            .filter_map(|(_, _, r)| self.roles.get(r).map(|r| r.name.clone()))
            .collect();
        names.sort();
        names
    }

    pub fn project_by_name(&self, name: &str) -> Option<&Project> {
        self.projects.values().find(|p| p.name == name)
    }

    pub fn user_by_name(&self, name: &str) -> Option<&User> {
        self.users.values().find(|u| u.name == name)
    }

    pub fn role_by_name(&self, name: &str) -> Option<&Role> {
        self.roles.values().find(|r| r.name == name)
    }
}

pub mod keys {
    pub fn project(id: &str) -> String {
        format!("/identity/projects/{id}")
    }
    pub fn user(id: &str) -> String {
        format!("/identity/users/{id}")
    }
    pub fn role(id: &str) -> String {
        format!("/identity/roles/{id}")
    }
    pub fn project_name(name: &str) -> String {
        format!("/identity/names/projects/{name}")
    }
    pub fn user_name(name: &str) -> String {
        format!("/identity/names/users/{name}")
    }
    pub fn role_name(name: &str) -> String {
        format!("/identity/names/roles/{name}")
    }
    pub fn assignment(p: &str, u: &str, r: &str) -> String {
        format!("/identity/assignments/{p}/{u}/{r}")
    }
    pub fn revoked(audit: &str) -> String {
        format!("/identity/revoked/{audit}")
    }
    pub const SECRET: &str = "/identity/secret";
}

pub struct Identity {
    store: Arc<dyn Store>,
    state: RwLock<State>,
    applied: tokio::sync::watch::Sender<Revision>,
    pub config: IdentityConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("encoding: {0}")]
    Encode(#[from] serde_json::Error),
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

pub fn hash_password(password: &str) -> Result<String, IdentityError> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&bytes).map_err(|e| IdentityError::Hash(e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| IdentityError::Hash(e.to_string()))
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

impl Identity {
    pub async fn start(store: Arc<dyn Store>, cfg: IdentityConfig) -> anyhow::Result<Arc<Self>> {
        bootstrap(&*store, &cfg).await?;
        let (kvs, rev) = store.range(PREFIX).await?;
        let mut state = State::default();
        for kv in kvs {
            state.apply(&Event {
                kind: EventKind::Put,
                kv,
            });
        }
        let (applied, _) = tokio::sync::watch::channel(rev);
        let this = Arc::new(Identity {
            store,
            state: RwLock::new(state),
            applied,
            config: cfg,
        });
        tokio::spawn(Self::follow(Arc::downgrade(&this), rev + 1));
        Ok(this)
    }

    async fn follow(this: std::sync::Weak<Self>, mut from: Revision) {
        loop {
            let Some(me) = this.upgrade() else { return };
            let stream = me.store.watch(PREFIX, from).await;
            let mut stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "identity watch failed; re-listing");
                    if let Ok((kvs, rev)) = me.store.range(PREFIX).await {
                        let mut fresh = State::default();
                        for kv in kvs {
                            fresh.apply(&Event {
                                kind: EventKind::Put,
                                kv,
                            });
                        }
                        *me.state.write().unwrap_or_else(|p| p.into_inner()) = fresh;
                        me.applied.send_replace(rev);
                        from = rev + 1;
                    }
                    drop(me);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            drop(me);
            while let Some(item) = stream.next().await {
                let Some(me) = this.upgrade() else { return };
                match item {
                    Ok(ev) => {
                        let rev = ev.revision();
                        me.state
                            .write()
                            .unwrap_or_else(|p| p.into_inner())
                            .apply(&ev);
                        from = rev + 1;
                        me.applied.send_replace(rev);
                    }
                    Err(StoreError::Lagged { resume_from }) => {
                        from = resume_from;
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
    }

    pub fn state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Commits and waits until the in-memory state shows it.
    pub async fn commit(&self, txn: Txn) -> Result<bool, IdentityError> {
        match self.store.txn(txn).await? {
            TxnOutcome::Committed(rev) => {
                let mut rx = self.applied.subscribe();
                let _ = rx.wait_for(|r| *r >= rev).await;
                Ok(true)
            }
            TxnOutcome::CompareFailed(_) => Ok(false),
        }
    }

    pub fn router(self: &Arc<Self>) -> axum::Router {
        handlers::router(self.clone())
    }

    /// The caller behind a project-scoped token, or `None` if the token is not valid
    /// now (bad signature, expired, revoked, user or project gone, no role left).
    pub fn validate(&self, token: &str) -> Option<AuthContext> {
        let st = self.state();
        let claims = tokens::verify(&st.secret, token)?;
        let project = claims.project.as_deref()?;
        self.context(&st, &claims, project)
    }

    fn context(&self, st: &State, claims: &TokenClaims, project: &str) -> Option<AuthContext> {
        if claims.expires <= chrono::Utc::now().timestamp()
            || st.revoked.contains_key(&claims.audit)
        {
            return None;
        }
        let user = st.users.get(&claims.user).filter(|u| u.enabled)?;
        let proj = st.projects.get(project).filter(|p| p.enabled)?;
        let roles = st.role_names(project, &user.id);
        if roles.is_empty() {
            return None;
        }
        Some(AuthContext {
            user_id: user.id.clone(),
            user_name: user.name.clone(),
            project_id: proj.id.clone(),
            project_name: proj.name.clone(),
            roles,
        })
    }
}

/// First start: roles, the `admin` project and user, the token secret. Idempotent,
/// and safe when replicas start together (compare-absent on a marker key).
async fn bootstrap(store: &dyn Store, cfg: &IdentityConfig) -> anyhow::Result<()> {
    if store.get("/identity/bootstrapped").await?.is_some() {
        return Ok(());
    }
    let password = match &cfg.admin_password {
        Some(p) => p.clone(),
        None => {
            use rand::Rng;
            rand::rng()
                .sample_iter(rand::distr::Alphanumeric)
                .take(20)
                .map(char::from)
                .collect()
        }
    };
    let mut txn = Txn::new()
        .when(Compare::Absent("/identity/bootstrapped".into()))
        .put("/identity/bootstrapped", "1");
    let mut role_ids = HashMap::new();
    for name in ["admin", "member", "reader"] {
        let r = Role {
            id: new_id(),
            name: name.into(),
        };
        txn = txn
            .put(keys::role(&r.id), serde_json::to_vec(&r)?)
            .put(keys::role_name(name), r.id.clone());
        role_ids.insert(name, r.id);
    }
    let project = Project {
        id: new_id(),
        name: "admin".into(),
        description: "Bootstrap project".into(),
        enabled: true,
    };
    let user = User {
        id: new_id(),
        name: "admin".into(),
        password_hash: hash_password(&password)?,
        enabled: true,
        default_project_id: Some(project.id.clone()),
        email: None,
        description: None,
    };
    let secret: [u8; 32] = rand::random();
    txn = txn
        .put(keys::project(&project.id), serde_json::to_vec(&project)?)
        .put(keys::project_name("admin"), project.id.clone())
        .put(keys::user(&user.id), serde_json::to_vec(&user)?)
        .put(keys::user_name("admin"), user.id.clone())
        .put(
            keys::assignment(&project.id, &user.id, &role_ids["admin"]),
            "",
        )
        .put(keys::SECRET, secret.to_vec());
    if let TxnOutcome::Committed(_) = store.txn(txn).await? {
        if cfg.admin_password.is_none() {
            println!("kuryr: bootstrap admin password: {password}");
        }
        tracing::info!(project = %project.id, user = %user.id, "identity bootstrapped: admin project and user created");
    }
    Ok(())
}
