//! Keystone v3 subset under `/identity`: password, token and application credential
//! authentication, stateless signed tokens that expire and can be revoked (by token
//! and its descendants, by user, by project), signing keys that rotate, a service
//! catalog, and projects, users, roles, role assignments and application credentials.
//! State lives in the store under `/identity/`, with an in-memory copy kept current by
//! a watch so that token validation (on every Neutron request) never touches the store.

mod appcreds;
mod handlers;
pub mod login;
mod tokens;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use futures::StreamExt;
use kuryr_store::{Compare, Event, EventKind, Revision, Store, StoreError, Txn, TxnOutcome};
use serde::{Deserialize, Serialize};

pub use login::LoginLimits;
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
    /// Bounds on concurrent password / secret checks.
    pub login: LoginLimits,
    /// Make a new signing key when the current one is this old (`None`: only on
    /// request, `POST /identity/v3/OS-KURYR/signing_keys`).
    pub signing_key_rotation: Option<Duration>,
}

impl IdentityConfig {
    /// Defaults for everything but what only the caller knows.
    pub fn new(public_url: impl Into<String>, admin_password: Option<String>) -> Self {
        IdentityConfig {
            admin_password,
            token_ttl: Duration::from_secs(3600),
            public_url: public_url.into(),
            region: "RegionOne".into(),
            login: LoginLimits::default(),
            signing_key_rotation: None,
        }
    }
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
/// A role named `kuryr_agent:<host>` lets its holder act as the agent of `<host>`.
pub const AGENT_ROLE_PREFIX: &str = "kuryr_agent:";
/// Roles every store has (Neutron's secure-RBAC personas).
pub const BUILTIN_ROLES: [&str; 5] = ["admin", "manager", "member", "reader", "service"];
const PREFIX: &str = "/identity/";
/// How long after a key stops signing it still verifies, beyond the token lifetime:
/// a replica that learns of a rotation late signs with the old key for that long.
const ROTATION_SLACK: i64 = 5;

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A key tokens are signed with. Only the primary one signs; the others verify the
/// tokens they signed until those have expired.
#[derive(Clone, Serialize, Deserialize)]
pub struct SigningKey {
    pub id: String,
    #[serde(with = "b64")]
    pub secret: Vec<u8>,
    pub created: i64,
    /// When it stopped signing.
    #[serde(default)]
    pub retired: Option<i64>,
    /// After this it verifies nothing and is deleted.
    #[serde(default)]
    pub verify_until: Option<i64>,
    /// The store's original secret: verifies tokens of the first format too.
    #[serde(default)]
    pub legacy: bool,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .field("created", &self.created)
            .field("retired", &self.retired)
            .field("verify_until", &self.verify_until)
            .finish_non_exhaustive()
    }
}

mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// Keystone's application credential: a secret that logs in as its user on one
/// project with a subset of the user's roles there.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppCred {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub user_id: String,
    pub project_id: String,
    pub secret_hash: String,
    /// Role ids.
    pub roles: Vec<String>,
    /// Unix seconds; `None`: never.
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// May its tokens manage application credentials?
    #[serde(default)]
    pub unrestricted: bool,
}

/// A revocation of every token of a user or project issued before the record.
#[derive(Debug, Clone, Copy)]
pub struct Revocation {
    /// Tokens issued at a lower identity revision are revoked.
    pub revision: Revision,
    /// Unix seconds after which no token it revokes can still be alive.
    pub expires: i64,
    /// When it was written (unix seconds), for `OS-REVOKE/events`.
    pub issued_before: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct RevocationRecord {
    expires: i64,
    issued_before: i64,
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
    pub revoked_users: HashMap<String, Revocation>,
    pub revoked_projects: HashMap<String, Revocation>,
    pub app_creds: HashMap<String, AppCred>,
    pub keys: HashMap<String, SigningKey>,
    /// The primary key's id, and the revision it was set at.
    pub signing_key: Option<(String, Revision)>,
    /// The first format's secret (stores made before key ids).
    pub secret: Vec<u8>,
    /// The latest identity revision applied.
    pub revision: Revision,
}

impl State {
    fn apply(&mut self, ev: &Event) {
        let put = ev.kind == EventKind::Put;
        self.revision = self.revision.max(ev.kv.mod_revision);
        let Some(rest) = ev.kv.key.strip_prefix(PREFIX) else {
            return;
        };
        let Some((kind, id)) = rest.split_once('/') else {
            match rest {
                "secret" if put => self.secret = ev.kv.value.clone(),
                "signing_key" => {
                    self.signing_key = put.then(|| {
                        (
                            String::from_utf8_lossy(&ev.kv.value).into_owned(),
                            ev.kv.mod_revision,
                        )
                    })
                }
                _ => {}
            }
            return;
        };
        let v = &ev.kv.value;
        fn de<T: serde::de::DeserializeOwned>(key: &str, v: &[u8]) -> Option<T> {
            serde_json::from_slice(v)
                .map_err(|e| tracing::error!(key, error = %e, "undecodable identity record"))
                .ok()
        }
        fn upsert<T: serde::de::DeserializeOwned>(
            map: &mut HashMap<String, T>,
            id: &str,
            put: bool,
            key: &str,
            v: &[u8],
        ) {
            map.remove(id);
            if let Some(x) = put.then(|| de::<T>(key, v)).flatten() {
                map.insert(id.to_string(), x);
            }
        }
        let key = ev.kv.key.as_str();
        match kind {
            "projects" => upsert(&mut self.projects, id, put, key, v),
            "users" => upsert(&mut self.users, id, put, key, v),
            "roles" => upsert(&mut self.roles, id, put, key, v),
            "app_creds" => upsert(&mut self.app_creds, id, put, key, v),
            "keys" => upsert(&mut self.keys, id, put, key, v),
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
                    let exp = de::<i64>(key, v).unwrap_or(i64::MAX);
                    self.revoked.insert(id.to_string(), exp);
                } else {
                    self.revoked.remove(id);
                }
            }
            "revoked_users" | "revoked_projects" => {
                let map = if kind == "revoked_users" {
                    &mut self.revoked_users
                } else {
                    &mut self.revoked_projects
                };
                map.remove(id);
                if put {
                    // An undecodable record revokes for ever rather than not at all.
                    let r = de::<RevocationRecord>(key, v).unwrap_or(RevocationRecord {
                        expires: i64::MAX,
                        issued_before: 0,
                    });
                    map.insert(
                        id.to_string(),
                        Revocation {
                            revision: ev.kv.mod_revision,
                            expires: r.expires,
                            issued_before: r.issued_before,
                        },
                    );
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

    /// The roles a token has on `project`: the user's roles there, narrowed to the
    /// application credential's when it was got with one.
    pub fn token_roles(&self, claims: &TokenClaims, project: &str) -> Vec<&Role> {
        let app_cred = claims.app_cred.as_ref().and_then(|a| self.app_creds.get(a));
        let mut roles: Vec<&Role> = self
            .assignments
            .iter()
            .filter(|(p, u, _)| p == project && *u == claims.user)
            .filter(|(_, _, r)| app_cred.is_none_or(|a| a.roles.contains(r)))
            .filter_map(|(_, _, r)| self.roles.get(r))
            .collect();
        roles.sort_by(|a, b| a.name.cmp(&b.name));
        roles
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

    /// The key that signs new tokens.
    pub fn primary_key(&self) -> Option<&SigningKey> {
        self.signing_key
            .as_ref()
            .and_then(|(kid, _)| self.keys.get(kid))
    }

    /// The claims of a token whose signature holds under one of the keys, whatever
    /// its expiry and revocation.
    pub fn verify_signature(&self, token: &str, now: i64) -> Option<TokenClaims> {
        let key = match tokens::key_id(token) {
            Some(kid) => self.keys.get(kid)?,
            None => self.keys.values().find(|k| k.legacy)?,
        };
        if key.verify_until.is_some_and(|t| t <= now) {
            return None;
        }
        tokens::verify(&key.secret, token)
    }

    /// Whether a correctly signed token is alive now: not expired, neither it nor a
    /// token it was got from revoked, its user enabled and not revoked since, its
    /// project not revoked since, its application credential still there.
    pub fn alive(&self, c: &TokenClaims, now: i64) -> bool {
        let since = |r: Option<&Revocation>| r.is_some_and(|r| c.revision < r.revision);
        c.expires > now
            && !c.lineage().any(|a| self.revoked.contains_key(a))
            && self.users.get(&c.user).is_some_and(|u| u.enabled)
            && !since(self.revoked_users.get(&c.user))
            && c.project
                .as_ref()
                .is_none_or(|p| !since(self.revoked_projects.get(p)))
            && c.app_cred.as_ref().is_none_or(|id| {
                self.app_creds.get(id).is_some_and(|a| {
                    a.user_id == c.user
                        && Some(&a.project_id) == c.project.as_ref()
                        && a.expires_at.is_none_or(|e| e > now)
                })
            })
    }

    /// The claims of a token that is valid now.
    pub fn live_token(&self, token: &str) -> Option<TokenClaims> {
        let now = chrono::Utc::now().timestamp();
        self.verify_signature(token, now)
            .filter(|c| self.alive(c, now))
    }

    /// Store keys of records that can go: revocations nothing they revoke outlives,
    /// keys past their verification time. At most `limit`.
    fn expired(&self, now: i64, limit: usize) -> Vec<String> {
        let audits = self
            .revoked
            .iter()
            .filter(|(_, e)| **e <= now)
            .map(|(a, _)| keys::revoked(a));
        let users = self
            .revoked_users
            .iter()
            .filter(|(_, r)| r.expires <= now)
            .map(|(u, _)| keys::revoked_user(u));
        let projects = self
            .revoked_projects
            .iter()
            .filter(|(_, r)| r.expires <= now)
            .map(|(p, _)| keys::revoked_project(p));
        let primary = self.signing_key.as_ref().map(|(k, _)| k.as_str());
        let old_keys = self
            .keys
            .values()
            .filter(|k| Some(k.id.as_str()) != primary && k.verify_until.is_some_and(|t| t <= now))
            .map(|k| keys::signing_key(&k.id));
        audits
            .chain(users)
            .chain(projects)
            .chain(old_keys)
            .take(limit)
            .collect()
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
    pub fn revoked_user(user: &str) -> String {
        format!("/identity/revoked_users/{user}")
    }
    pub fn revoked_project(project: &str) -> String {
        format!("/identity/revoked_projects/{project}")
    }
    pub fn app_cred(id: &str) -> String {
        format!("/identity/app_creds/{id}")
    }
    pub fn app_cred_name(user: &str, name: &str) -> String {
        format!("/identity/names/app_creds/{user}/{name}")
    }
    pub fn signing_key(kid: &str) -> String {
        format!("/identity/keys/{kid}")
    }
    /// The primary signing key's id.
    pub const SIGNING_KEY: &str = "/identity/signing_key";
    /// The first format's single secret (stores made before key ids).
    pub const SECRET: &str = "/identity/secret";
}

pub struct Identity {
    store: Arc<dyn Store>,
    state: RwLock<State>,
    applied: tokio::sync::watch::Sender<Revision>,
    pub config: IdentityConfig,
    /// Bounds password and secret checks.
    pub gate: login::Gate,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("encoding: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("no signing key in the store")]
    NoKey,
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

fn random_text(len: usize) -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn new_key(secret: Option<Vec<u8>>, now: i64) -> SigningKey {
    let legacy = secret.is_some();
    SigningKey {
        id: new_id()[..16].to_string(),
        secret: secret.unwrap_or_else(|| rand::random::<[u8; 32]>().to_vec()),
        created: now,
        retired: None,
        verify_until: None,
        legacy,
    }
}

fn load(kvs: Vec<kuryr_store::KeyValue>, rev: Revision) -> State {
    let mut state = State::default();
    for kv in kvs {
        state.apply(&Event {
            kind: EventKind::Put,
            kv,
        });
    }
    state.revision = state.revision.max(rev);
    state
}

impl Identity {
    pub async fn start(store: Arc<dyn Store>, cfg: IdentityConfig) -> anyhow::Result<Arc<Self>> {
        bootstrap(&*store, &cfg).await?;
        upgrade(&*store).await?;
        let (kvs, rev) = store.range(PREFIX).await?;
        let state = load(kvs, rev);
        let (applied, _) = tokio::sync::watch::channel(rev);
        // Unknown users are checked against this, at the cost of a real hash.
        let dummy = tokio::task::spawn_blocking(|| hash_password(&random_text(24))).await??;
        let this = Arc::new(Identity {
            store,
            state: RwLock::new(state),
            applied,
            gate: login::Gate::new(cfg.login, dummy),
            config: cfg,
        });
        tokio::spawn(Self::follow(Arc::downgrade(&this), rev + 1));
        tokio::spawn(Self::maintain(Arc::downgrade(&this)));
        Ok(this)
    }

    async fn follow(this: std::sync::Weak<Self>, mut from: Revision) {
        loop {
            let Some(me) = this.upgrade() else { return };
            // Every key, not only /identity/: `applied` then follows the store's own
            // revision, which is what the consistent-read barrier waits for.
            let stream = me.store.watch("/", from).await;
            let mut stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "identity watch failed; re-listing");
                    if let Ok((kvs, rev)) = me.store.range(PREFIX).await {
                        *me.state.write().unwrap_or_else(|p| p.into_inner()) = load(kvs, rev);
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
                    Err(e) => {
                        tracing::warn!(error = %e, from, "identity watch ended; resuming");
                        drop(me);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        break;
                    }
                }
            }
        }
    }

    /// Housekeeping on every replica: expired revocations and keys are deleted, and
    /// the signing key is rotated when it is older than the configured period
    /// (compare-and-swap on the primary key: one replica wins a concurrent rotation).
    async fn maintain(this: std::sync::Weak<Self>) {
        let every = {
            let Some(me) = this.upgrade() else { return };
            let ttl = me.config.token_ttl.as_secs();
            let rotation = me
                .config
                .signing_key_rotation
                .map_or(u64::MAX, |r| r.as_secs());
            Duration::from_secs((ttl.min(rotation) / 2).clamp(1, 60))
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(me) = this.upgrade() else { return };
            if let Err(e) = me.prune().await {
                tracing::warn!(error = %e, "pruning expired identity records failed; retried later");
            }
            if let Some(period) = me.config.signing_key_rotation {
                let now = chrono::Utc::now().timestamp();
                let due = me
                    .state()
                    .primary_key()
                    .is_some_and(|k| k.created + period.as_secs() as i64 <= now);
                if due && let Err(e) = me.rotate_key().await {
                    tracing::warn!(error = %e, "signing key rotation failed; retried later");
                }
            }
        }
    }

    /// Deletes expired revocation records and keys; returns how many went.
    pub async fn prune(&self) -> Result<usize, IdentityError> {
        let txn = self.with_pruning(Txn::new());
        let n = txn.ops.len();
        if n > 0 {
            self.commit(txn).await?;
            tracing::debug!(records = n, "expired identity records pruned");
        }
        Ok(n)
    }

    /// `txn` plus the deletion of some expired records (pruning on write).
    pub fn with_pruning(&self, mut txn: Txn) -> Txn {
        let now = chrono::Utc::now().timestamp();
        for key in self.state().expired(now, 256) {
            txn = txn.delete(key);
        }
        txn
    }

    /// When a revocation written now can be forgotten: every token it may revoke has
    /// expired by then.
    pub fn revocation_expiry(&self) -> i64 {
        chrono::Utc::now().timestamp() + self.config.token_ttl.as_secs() as i64 + ROTATION_SLACK
    }

    /// A revocation record (of a user's or project's tokens) to put at `key`.
    pub fn revocation_record(&self, key: String) -> Result<(String, Vec<u8>), IdentityError> {
        let rec = RevocationRecord {
            expires: self.revocation_expiry(),
            issued_before: chrono::Utc::now().timestamp(),
        };
        Ok((key, serde_json::to_vec(&rec)?))
    }

    /// Makes a new primary signing key; the previous one keeps verifying the tokens
    /// it signed until they have expired. Returns the new key's id.
    pub async fn rotate_key(&self) -> Result<String, IdentityError> {
        let now = chrono::Utc::now().timestamp();
        let key = new_key(None, now);
        let mut txn = Txn::new()
            .put(keys::signing_key(&key.id), serde_json::to_vec(&key)?)
            .put(keys::SIGNING_KEY, key.id.clone())
            .when(Compare::Absent(keys::signing_key(&key.id)));
        {
            let st = self.state();
            match &st.signing_key {
                Some((kid, rev)) => {
                    txn = txn.when(Compare::ModRevision(keys::SIGNING_KEY.into(), *rev));
                    if let Some(old) = st.keys.get(kid) {
                        let mut old = old.clone();
                        old.retired = Some(now);
                        old.verify_until =
                            Some(now + self.config.token_ttl.as_secs() as i64 + ROTATION_SLACK);
                        txn = txn.put(keys::signing_key(&old.id), serde_json::to_vec(&old)?);
                    }
                }
                None => txn = txn.when(Compare::Absent(keys::SIGNING_KEY.into())),
            }
        }
        let txn = self.with_pruning(txn);
        if self.commit(txn).await? {
            tracing::info!(kid = %key.id, "signing key rotated");
            Ok(key.id)
        } else {
            // Another replica rotated at the same moment: its key is the new one.
            self.state()
                .signing_key
                .as_ref()
                .map(|(k, _)| k.clone())
                .ok_or(IdentityError::NoKey)
        }
    }

    pub fn state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the in-memory state reflects store revision `rev`.
    pub async fn caught_up(&self, rev: Revision) {
        let mut rx = self.applied.subscribe();
        let _ = rx.wait_for(|r| *r >= rev).await;
    }

    /// Commits and waits until the in-memory state shows it.
    pub async fn commit(&self, txn: Txn) -> Result<bool, IdentityError> {
        match self.store.txn(txn).await? {
            TxnOutcome::Committed(rev) => {
                self.caught_up(rev).await;
                Ok(true)
            }
            TxnOutcome::CompareFailed(_) => Ok(false),
        }
    }

    pub fn router(self: &Arc<Self>) -> axum::Router {
        handlers::router(self.clone())
    }

    /// The caller behind a project-scoped token, or `None` if the token is not valid
    /// now (bad signature, expired, revoked, user or project gone or disabled, no
    /// role left, application credential gone or expired).
    pub fn validate(&self, token: &str) -> Option<AuthContext> {
        let st = self.state();
        let claims = st.live_token(token)?;
        let project = claims.project.as_deref()?;
        Self::context(&st, &claims, project)
    }

    fn context(st: &State, claims: &TokenClaims, project: &str) -> Option<AuthContext> {
        let user = st.users.get(&claims.user)?;
        let proj = st.projects.get(project).filter(|p| p.enabled)?;
        let roles: Vec<String> = st
            .token_roles(claims, project)
            .into_iter()
            .map(|r| r.name.clone())
            .collect();
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

/// First start: roles, the `admin` project and user, the first signing key.
/// Idempotent, and safe when replicas start together (compare-absent on a marker key).
async fn bootstrap(store: &dyn Store, cfg: &IdentityConfig) -> anyhow::Result<()> {
    if store.get("/identity/bootstrapped").await?.is_some() {
        return Ok(());
    }
    let password = match &cfg.admin_password {
        Some(p) => p.clone(),
        None => random_text(20),
    };
    let mut txn = Txn::new()
        .when(Compare::Absent("/identity/bootstrapped".into()))
        .put("/identity/bootstrapped", "1");
    let mut role_ids = HashMap::new();
    for name in BUILTIN_ROLES {
        let r = Role {
            id: new_id(),
            name: name.into(),
            description: None,
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
    let key = new_key(None, chrono::Utc::now().timestamp());
    txn = txn
        .put(keys::project(&project.id), serde_json::to_vec(&project)?)
        .put(keys::project_name("admin"), project.id.clone())
        .put(keys::user(&user.id), serde_json::to_vec(&user)?)
        .put(keys::user_name("admin"), user.id.clone())
        .put(
            keys::assignment(&project.id, &user.id, &role_ids["admin"]),
            "",
        )
        .put(keys::signing_key(&key.id), serde_json::to_vec(&key)?)
        .put(keys::SIGNING_KEY, key.id.clone());
    if let TxnOutcome::Committed(_) = store.txn(txn).await? {
        if cfg.admin_password.is_none() {
            println!("kuryr: bootstrap admin password: {password}");
        }
        tracing::info!(project = %project.id, user = %user.id, "identity bootstrapped: admin project and user created");
    }
    Ok(())
}

/// What stores made by earlier versions lack: the `service` and `manager` roles (Neutron's
/// secure-RBAC personas), and a signing key with an id (the original secret
/// becomes a key flagged `legacy`, so the tokens it signed stay valid). Idempotent
/// and race-free (compare-absent).
async fn upgrade(store: &dyn Store) -> anyhow::Result<()> {
    for name in BUILTIN_ROLES {
        if store.get(&keys::role_name(name)).await?.is_some() {
            continue;
        }
        let r = Role {
            id: new_id(),
            name: name.into(),
            description: None,
        };
        let txn = Txn::new()
            .when(Compare::Absent(keys::role_name(name)))
            .put(keys::role(&r.id), serde_json::to_vec(&r)?)
            .put(keys::role_name(name), r.id.clone());
        if let TxnOutcome::Committed(_) = store.txn(txn).await? {
            tracing::info!(role = name, "role created (absent from this store)");
        }
    }
    if store.get(keys::SIGNING_KEY).await?.is_none() {
        let legacy = store.get(keys::SECRET).await?.map(|kv| kv.value);
        let key = new_key(legacy, chrono::Utc::now().timestamp());
        let txn = Txn::new()
            .when(Compare::Absent(keys::SIGNING_KEY.into()))
            .put(keys::signing_key(&key.id), serde_json::to_vec(&key)?)
            .put(keys::SIGNING_KEY, key.id.clone());
        if let TxnOutcome::Committed(_) = store.txn(txn).await? {
            tracing::info!(kid = %key.id, legacy = key.legacy, "signing key with an id made");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store as the first versions left it: three roles, a single `secret`, tokens of
    /// the first format.
    #[tokio::test]
    async fn an_older_store_gets_the_service_role_and_keeps_its_tokens() {
        use base64::Engine;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use hmac::{Hmac, Mac};

        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            kuryr_store::EmbeddedStore::open(kuryr_store::EmbeddedOptions::new(
                dir.path().join("s.redb"),
            ))
            .unwrap(),
        );
        let secret = b"an old secret of 32 bytes, or so".to_vec();
        let project = Project {
            id: "p1".into(),
            name: "admin".into(),
            description: String::new(),
            enabled: true,
        };
        let user = User {
            id: "u1".into(),
            name: "admin".into(),
            password_hash: String::new(),
            enabled: true,
            default_project_id: None,
            email: None,
            description: None,
        };
        let mut txn = Txn::new()
            .put("/identity/bootstrapped", "1")
            .put(keys::SECRET, secret.clone())
            .put(keys::project("p1"), serde_json::to_vec(&project).unwrap())
            .put(keys::user("u1"), serde_json::to_vec(&user).unwrap())
            .put(keys::assignment("p1", "u1", "r-admin"), "");
        for name in ["admin", "member", "reader"] {
            let id = format!("r-{name}");
            txn = txn
                .put(
                    keys::role(&id),
                    format!(r#"{{"id":"{id}","name":"{name}"}}"#),
                )
                .put(keys::role_name(name), id.clone());
        }
        assert!(matches!(
            store.txn(txn).await.unwrap(),
            TxnOutcome::Committed(_)
        ));
        let now = chrono::Utc::now().timestamp();
        let claims = format!(
            r#"{{"u":"u1","p":"p1","i":{now},"e":{},"a":"old-audit","m":["password"]}}"#,
            now + 600
        );
        let mut m = Hmac::<sha2::Sha256>::new_from_slice(&secret).unwrap();
        m.update(claims.as_bytes());
        let old_token = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(claims.as_bytes()),
            URL_SAFE_NO_PAD.encode(m.finalize().into_bytes())
        );

        let id = Identity::start(store.clone(), IdentityConfig::new("http://x", None))
            .await
            .unwrap();
        assert!(id.state().role_by_name("service").is_some());
        let ctx = id
            .validate(&old_token)
            .expect("a first-format token still validates");
        assert_eq!(
            (ctx.user_id.as_str(), ctx.roles.clone()),
            ("u1", vec!["admin".to_string()])
        );
        let primary = id.state().primary_key().cloned().unwrap();
        assert!(primary.legacy && primary.secret == secret);

        // Rotated: the old format still verifies until the legacy key retires.
        let kid = id.rotate_key().await.unwrap();
        assert_ne!(kid, primary.id);
        assert!(id.validate(&old_token).is_some());
        // Started again (another replica, a restart): nothing is made twice.
        let again = Identity::start(store, IdentityConfig::new("http://x", None))
            .await
            .unwrap();
        assert_eq!(again.state().primary_key().unwrap().id, kid);
        assert_eq!(
            again
                .state()
                .roles
                .values()
                .filter(|r| r.name == "service")
                .count(),
            1
        );
    }
}
