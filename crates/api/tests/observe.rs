//! Readiness and request ids of the application served in-process: `/readyz` is 503
//! until the indexes are loaded (API requests wait for them) and when the store fails,
//! and a handler's own log line carries the id of the request it serves.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kuryr_api::observe::Startup;
use kuryr_api::{AuthMode, IdentityConfig, NetworkingConfig, ServerConfig};
use kuryr_store::{EmbeddedOptions, EmbeddedStore, Store};
use serde_json::{Value, json};

fn config(url: &str) -> ServerConfig {
    ServerConfig {
        identity: IdentityConfig::new(url, Some("test-admin-pw".into())),
        networking: NetworkingConfig {
            public_url: url.into(),
            underlay_mtu: 1500,
            vni_range: (1, 100),
            auth_mode: AuthMode::NoAuth,
            agent_down_time: Duration::from_secs(30),
            watch_keepalive: Duration::from_secs(10),
            max_bulk: 1000,
            default_quota: Default::default(),
        },
        max_request_body: kuryr_api::limits::DEFAULT_MAX_REQUEST_BODY,
    }
}

/// Serves `startup` on a loopback port; returns its URL.
async fn serve(startup: &Startup) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let router = startup.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

async fn status(c: &reqwest::Client, url: &str) -> u16 {
    c.get(url)
        .header("X-Project-Id", "p1")
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

#[tokio::test]
async fn readyz_is_503_until_the_indexes_are_loaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let startup = Startup::new();
    let url = serve(&startup).await;
    let c = reqwest::Client::new();
    // Bound but not loaded: alive, not ready.
    assert_eq!(status(&c, &format!("{url}/healthz")).await, 200);
    assert_eq!(status(&c, &format!("{url}/readyz")).await, 503);
    // An API request meanwhile waits for the application instead of failing.
    let early = tokio::spawn({
        let c = c.clone();
        let url = format!("{url}/networking/v2.0/networks");
        async move { status(&c, &url).await }
    });
    assert_eq!(status(&c, &format!("{url}/readyz")).await, 503);

    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(EmbeddedOptions::new(dir.path().join("kuryr.redb"))).expect("store"),
    );
    let app = kuryr_api::app(store, config(&url)).await.expect("app");
    startup.finish(app.router);
    assert_eq!(status(&c, &format!("{url}/readyz")).await, 200);
    assert_eq!(early.await.expect("early request"), 200);
    assert_eq!(
        status(&c, &format!("{url}/networking/v2.0/networks")).await,
        200
    );
}

/// Log output kept in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

/// This process's log, from the first call on. A process-wide subscriber: a scoped
/// one may miss spans whose callsites other test threads registered first.
fn captured_logs() -> Captured {
    static LOGS: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let sink = logs.clone();
        tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .init();
        logs
    })
    .clone()
}

#[tokio::test]
async fn a_failing_store_makes_readyz_503_and_its_errors_carry_the_request_id() {
    let logs = captured_logs();

    let (backend, fail) = kuryr_store::failing::FailingBackend::new();
    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open_with_backend(backend, &EmbeddedOptions::new("unused")).expect("store"),
    );
    let startup = Startup::new();
    let url = serve(&startup).await;
    let app = kuryr_api::app(store, config(&url)).await.expect("app");
    startup.finish(app.router);
    let c = reqwest::Client::new();
    let create = || {
        c.post(format!("{url}/networking/v2.0/networks"))
            .header("X-Project-Id", "p1")
            .json(&json!({"network": {"name": "n"}}))
            .send()
    };

    // Positive control: the store works.
    assert_eq!(status(&c, &format!("{url}/readyz")).await, 200);
    assert_eq!(create().await.expect("create").status(), 201);

    fail.store(true, Ordering::SeqCst);
    let r = create().await.expect("create");
    assert_eq!(r.status(), 503);
    let id = r.headers()["x-openstack-request-id"]
        .to_str()
        .expect("ascii")
        .to_string();
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["NeutronError"]["type"], "ServiceUnavailable", "{body}");
    // The handler's own error line names the request.
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("store transaction failed") && l.contains(&id))
        .unwrap_or_else(|| panic!("no store error logged:\n{text}"));
    assert!(line.contains(&id), "{line}");
    assert!(line.contains("project=p1"), "{line}");

    // redb refuses writes after a failed commit until the file is reopened: not ready.
    fail.store(false, Ordering::SeqCst);
    let r = c.get(format!("{url}/readyz")).send().await.expect("readyz");
    assert_eq!(r.status(), 503);
    let why = r.text().await.expect("text");
    assert!(why.contains("store"), "{why}");
}
