//! The kuryr HTTP server: a Keystone v3 subset under `/identity` and Neutron v2.0
//! under `/networking`, on one listener, backed by a [`kuryr_store::Store`].

pub mod consistency;
pub mod identity;
pub mod limits;
pub mod loadbalancing;
pub mod networking;
pub mod observe;

use std::sync::Arc;

use axum::Router;
use kuryr_store::Store;

pub use identity::{AuthMode, Identity, IdentityConfig};
pub use networking::{Networking, NetworkingConfig};

/// Everything `kuryr server` needs to answer requests.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub identity: IdentityConfig,
    pub networking: NetworkingConfig,
    /// Largest request body accepted, in bytes.
    pub max_request_body: usize,
}

/// The HTTP application and the handle that ends its long-lived streams.
pub struct App {
    pub router: Router,
    pub networking: Arc<Networking>,
}

/// Starts the services over `store` and returns the HTTP application.
pub async fn app(store: Arc<dyn Store>, config: ServerConfig) -> anyhow::Result<App> {
    let identity = Identity::start(store.clone(), config.identity.clone()).await?;
    let networking =
        Networking::start(store.clone(), identity.clone(), config.networking.clone()).await?;
    let barrier = Arc::new(consistency::Barrier {
        store: store.clone(),
        identity: identity.clone(),
        networking: networking.clone(),
        wait: std::time::Duration::from_secs(5),
    });
    let obs = observe::Observability::new(store, networking.clone());
    let router = Router::new()
        .nest("/identity", identity.router())
        .nest("/networking", networking.router())
        .nest("/load-balancer", loadbalancing::start(&networking))
        .merge(obs.routes())
        .route_layer(axum::middleware::from_fn(observe::matched_route))
        // Every request sees what any replica committed before it arrived.
        .layer(axum::middleware::from_fn_with_state(
            barrier,
            consistency::barrier,
        ))
        .layer(axum::middleware::from_fn_with_state(
            config.max_request_body,
            limits::limit_body,
        ))
        // The limit above is the one that answers; axum's own must not be lower.
        .layer(axum::extract::DefaultBodyLimit::max(
            config.max_request_body,
        ))
        // Outermost: every answer, a refused body included, has its id and is counted.
        .layer(axum::middleware::from_fn_with_state(obs, observe::track));
    Ok(App { router, networking })
}
