//! A host watch keeps sending keepalives while changes that do not matter to the host
//! keep coming: agents take a silent watch for a dead one and reconnect (seen with a
//! thousand load balancers, whose health reports were such changes, every second).

use std::sync::Arc;
use std::time::Duration;

use kuryr_api::{AuthMode, IdentityConfig, NetworkingConfig, ServerConfig};
use kuryr_store::{EmbeddedOptions, EmbeddedStore, Store};
use serde_json::json;

const KEEPALIVE: Duration = Duration::from_millis(300);

async fn server() -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(EmbeddedOptions::new(dir.path().join("kuryr.redb"))).expect("store"),
    );
    let config = ServerConfig {
        identity: IdentityConfig::new(&url, Some("test-admin-pw".into())),
        networking: NetworkingConfig {
            public_url: url.clone(),
            underlay_mtu: 1500,
            vni_range: (1, 100),
            auth_mode: AuthMode::NoAuth,
            agent_down_time: Duration::from_secs(30),
            watch_keepalive: KEEPALIVE,
            max_bulk: 1000,
            default_quota: Default::default(),
        },
        max_request_body: kuryr_api::limits::DEFAULT_MAX_REQUEST_BODY,
    };
    let app = kuryr_api::app(store, config).await.expect("app");
    tokio::spawn(async move { axum::serve(listener, app.router).await });
    (url, dir)
}

/// Lines of the watch of host h1 read for `period` while `busy` makes changes.
async fn frames_during(url: &str, period: Duration, busy: bool) -> usize {
    let c = reqwest::Client::new();
    let mut resp = c
        .get(format!(
            "{url}/networking/v2.0/kuryr/hosts/h1/watch?since=0"
        ))
        .header("X-Roles", "admin")
        .header("X-Project-Id", "p1")
        .send()
        .await
        .expect("watch");
    assert_eq!(resp.status().as_u16(), 200);
    let changes = tokio::spawn({
        let c = c.clone();
        let url = url.to_string();
        async move {
            if !busy {
                return;
            }
            let mut n = 0u32;
            loop {
                // A quota: a change no host's view holds.
                n += 1;
                let r = c
                    .put(format!("{url}/networking/v2.0/quotas/p2"))
                    .header("X-Roles", "admin")
                    .header("X-Project-Id", "p1")
                    .json(&json!({"quota": {"network": 100 + n % 50}}))
                    .send()
                    .await
                    .expect("quota");
                assert!(r.status().is_success(), "quota update: {}", r.status());
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }
    });
    let mut lines = 0;
    let deadline = tokio::time::Instant::now() + period;
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, resp.chunk()).await {
        lines += chunk.iter().filter(|b| **b == b'\n').count();
    }
    changes.abort();
    lines
}

#[tokio::test]
async fn keepalives_are_not_starved_by_changes_elsewhere() {
    let (url, _dir) = server().await;
    // Control: an idle server sends the first frame then a keepalive per period.
    let idle = frames_during(&url, KEEPALIVE * 5, false).await;
    assert!(idle >= 4, "idle: {idle} lines");
    let busy = frames_during(&url, KEEPALIVE * 5, true).await;
    assert!(
        busy >= 4,
        "with changes that do not matter here: {busy} lines"
    );
}
