//! Keystone v3 subset (placeholder interface; see the identity helper's spec).

use std::sync::Arc;
use std::time::Duration;

use kuryr_store::Store;

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

pub struct Identity {
    _store: Arc<dyn Store>,
}

impl Identity {
    pub async fn start(store: Arc<dyn Store>, _cfg: IdentityConfig) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Identity { _store: store }))
    }
    pub fn router(self: &Arc<Self>) -> axum::Router {
        axum::Router::new()
    }
    pub fn validate(&self, _token: &str) -> Option<AuthContext> {
        None
    }
}
