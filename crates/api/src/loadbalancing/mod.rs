//! Octavia v2 under `/load-balancer`: load balancers, listeners, pools, members,
//! health monitors, quotas and providers, served from the same store and indexes
//! as Neutron (the VIP is a Neutron port of this server).
//!
//! - `fault`: Octavia's error body and the errors the API answers.
//! - `views`: the API representations (what Octavia shows, kuryr's records plus
//!   the attributes its L4 provider never uses) and the computed operating statuses.
//! - `write`: the state machine: every change locks the load balancer
//!   (`PENDING_UPDATE`, a compare on its record, so two changes never interleave and
//!   the second gets `ImmutableObject`), and the provisioner makes it `ACTIVE`.
//! - `loadbalancers`, `listeners`, `pools`, `members`, `healthmonitors`: each
//!   resource's validation and writes.
//! - `extras`: quotas, providers, status tree, stats, health reports from agents.

mod body;
mod extras;
pub use extras::agent_report;
mod fault;
mod healthmonitors;
mod list;
mod listeners;
mod loadbalancers;
mod members;
mod pools;
mod views;
mod write;

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::{Value, json};

use kuryr_model::{HealthMonitor, Listener, LoadBalancer, Pool};

use crate::networking::{Networking, Shared};
pub use fault::Fault;

/// The only provider: distributed L4 in every host's kernel.
pub const PROVIDER: &str = "kuryr";
pub const PROVIDER_DESCRIPTION: &str =
    "kuryr: distributed L4 load balancing in each host's kernel (nftables), no VM";

pub type LbResult<T> = Result<T, Fault>;

/// Octavia's timestamps: naive UTC with microseconds.
pub fn now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6f")
        .to_string()
}

/// Starts the provisioner and returns the `/load-balancer` routes.
pub fn start(net: &Arc<Networking>) -> Router {
    tokio::spawn(write::provisioner(Arc::downgrade(net)));
    tokio::spawn(extras::monitor_scheduler(Arc::downgrade(net)));
    routes(net)
}

fn routes(net: &Arc<Networking>) -> Router {
    let lbaas = Router::new()
        .route(
            "/loadbalancers",
            get(list::list_handler::<LoadBalancer>).post(loadbalancers::create),
        )
        .route(
            "/loadbalancers/{id}",
            get(list::show_handler::<LoadBalancer>)
                .put(loadbalancers::update)
                .delete(loadbalancers::delete),
        )
        .route("/loadbalancers/{id}/status", get(extras::status_tree))
        .route("/loadbalancers/{id}/stats", get(extras::lb_stats))
        .route("/loadbalancers/{id}/failover", put(loadbalancers::failover))
        .route(
            "/listeners",
            get(list::list_handler::<Listener>).post(listeners::create),
        )
        .route(
            "/listeners/{id}",
            get(list::show_handler::<Listener>)
                .put(listeners::update)
                .delete(listeners::delete),
        )
        .route("/listeners/{id}/stats", get(extras::listener_stats))
        .route(
            "/pools",
            get(list::list_handler::<Pool>).post(pools::create),
        )
        .route(
            "/pools/{id}",
            get(list::show_handler::<Pool>)
                .put(pools::update)
                .delete(pools::delete),
        )
        .route(
            "/pools/{pool}/members",
            get(members::list).post(members::create).put(members::batch),
        )
        .route(
            "/pools/{pool}/members/{id}",
            get(members::show)
                .put(members::update)
                .delete(members::delete),
        )
        .route(
            "/healthmonitors",
            get(list::list_handler::<HealthMonitor>).post(healthmonitors::create),
        )
        .route(
            "/healthmonitors/{id}",
            get(list::show_handler::<HealthMonitor>)
                .put(healthmonitors::update)
                .delete(healthmonitors::delete),
        )
        .route("/quotas", get(extras::quota_list))
        .route("/quotas/defaults", get(extras::quota_defaults))
        .route(
            "/quotas/{project}",
            get(extras::quota_show)
                .put(extras::quota_update)
                .delete(extras::quota_reset),
        )
        .route("/providers", get(extras::providers))
        .route(
            "/providers/{provider}/flavor_capabilities",
            get(extras::flavor_capabilities),
        )
        .route(
            "/providers/{provider}/availability_zone_capabilities",
            get(extras::az_capabilities),
        )
        .route("/flavors", get(extras::empty_flavors))
        .route("/flavorprofiles", get(extras::empty_flavorprofiles))
        .route("/availabilityzones", get(extras::empty_azs))
        .route(
            "/l7policies",
            get(extras::empty_l7policies).post(extras::l7_unsupported),
        );
    let v2 = Router::new()
        .route("/", get(version))
        .nest("/lbaas", lbaas)
        .layer(axum::middleware::from_fn_with_state(
            net.clone(),
            crate::networking::authenticate,
        ));
    Router::new()
        .route("/", get(versions))
        .nest("/v2", v2.clone())
        .nest("/v2.0", v2)
        .with_state(net.clone())
}

fn version_doc(net: &Shared) -> Value {
    let base = format!("{}/load-balancer", net.config.public_url);
    json!([
        {"id": "v2.0", "status": "SUPPORTED", "updated": "2016-12-11T00:00:00Z",
         "links": [{"href": format!("{base}/v2"), "rel": "self"}]},
        {"id": "v2.27", "status": "CURRENT", "updated": "2023-05-05T00:00:00Z",
         "links": [{"href": format!("{base}/v2"), "rel": "self"}]}
    ])
}

async fn versions(State(net): State<Shared>) -> Json<Value> {
    Json(json!({"versions": version_doc(&net)}))
}

async fn version(State(net): State<Shared>) -> Json<Value> {
    Json(json!({"versions": version_doc(&net)}))
}
