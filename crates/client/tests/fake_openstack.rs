//! The client against an in-process Keystone + Neutron imitation on 127.0.0.1.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use futures::StreamExt;
use kuryr_client::{
    AuthMethod, Client, ClientConfig, ClientError, Credentials, Domain, HostMirror, Ident, Method,
    PasswordAuth,
};
use kuryr_model::{AgentReport, HostFrame};
use serde_json::{Value, json};

#[derive(Default)]
struct Fake {
    base: String,
    tokens_issued: AtomicUsize,
    /// Lifetime of issued tokens, seconds.
    token_lifetime: AtomicI64,
    valid_tokens: Mutex<HashSet<String>>,
    /// Neutron answers 401 to every token.
    reject_all: AtomicBool,
    /// `X-Auth-Token` (or `noauth:<project>`) of each Neutron request, in order.
    seen: Mutex<Vec<String>>,
    /// Query strings of list requests.
    queries: Mutex<Vec<String>>,
    /// Bodies of write requests.
    bodies: Mutex<Vec<Value>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn stamp(mut v: Value) -> Value {
    if let Some(m) = v.as_object_mut() {
        for (k, val) in [
            ("description", json!("")),
            ("tags", json!([])),
            ("created_at", json!("2026-01-01T00:00:00Z")),
            ("updated_at", json!("2026-01-01T00:00:00Z")),
            ("revision_number", json!(1)),
        ] {
            m.entry(k).or_insert(val);
        }
    }
    v
}

fn port_json(id: &str, name: &str) -> Value {
    stamp(json!({
        "id": id, "name": name, "network_id": "n1", "project_id": "p",
        "mac_address": "fa:16:3e:00:00:01", "admin_state_up": true, "status": "ACTIVE",
        "device_id": "", "device_owner": "", "fixed_ips": [{"subnet_id": "s1", "ip_address": "10.0.0.5"}],
        "security_groups": [], "port_security_enabled": true, "allowed_address_pairs": [],
        "binding:host_id": "h1", "binding:vif_type": "ovs", "binding:vnic_type": "normal"
    }))
}

fn network_json(id: &str) -> Value {
    stamp(json!({
        "id": id, "name": "net", "project_id": "p", "admin_state_up": true,
        "shared": false, "mtu": 1450, "router:external": false,
        "provider:network_type": "vxlan", "provider:physical_network": null,
        "provider:segmentation_id": 7, "port_security_enabled": true,
        "is_default": false, "status": "ACTIVE"
    }))
}

fn neutron_error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"NeutronError": {"type": kind, "message": message, "detail": ""}})),
    )
        .into_response()
}

async fn issue_token(State(f): State<Arc<Fake>>, axum::Json(body): axum::Json<Value>) -> Response {
    let user = &body["auth"]["identity"]["password"]["user"];
    let project = &body["auth"]["scope"]["project"];
    let ok = user["name"] == "kuryr"
        && user["domain"]["name"] == "Default"
        && user["password"] == "secret"
        && project["name"] == "service"
        && project["domain"]["id"] == "default"
        && body["auth"]["identity"]["methods"] == json!(["password"]);
    if !ok {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": {"code": 401, "title": "Unauthorized",
                "message": "The request you have made requires authentication."}})),
        )
            .into_response();
    }
    let n = f.tokens_issued.fetch_add(1, Ordering::SeqCst) + 1;
    let token = format!("tok-{n}");
    lock(&f.valid_tokens).insert(token.clone());
    let lifetime = f.token_lifetime.load(Ordering::SeqCst);
    let expires = chrono::Utc::now() + chrono::Duration::seconds(lifetime);
    let base = &f.base;
    let body = json!({"token": {
        "methods": ["password"],
        "expires_at": expires.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        "project": {"id": "p", "name": "service", "domain": {"id": "default", "name": "Default"}},
        "catalog": [
            {"type": "identity", "name": "keystone", "endpoints": [
                {"interface": "public", "region_id": "RegionOne", "region": "RegionOne",
                 "url": format!("{base}/identity")}]},
            {"type": "network", "name": "neutron", "endpoints": [
                {"interface": "internal", "region_id": "RegionOne", "region": "RegionOne",
                 "url": "http://192.0.2.1:9696"},
                {"interface": "public", "region_id": "RegionTwo", "region": "RegionTwo",
                 "url": "http://192.0.2.2:9696"},
                {"interface": "public", "region_id": "RegionOne", "region": "RegionOne",
                 "url": format!("{base}/network/")}
            ]}
        ]
    }});
    (
        StatusCode::CREATED,
        [("X-Subject-Token", token)],
        axum::Json(body),
    )
        .into_response()
}

/// Neutron's side of auth: a known token, or noauth's `X-Roles: admin`; the 401 to
/// answer otherwise.
fn refuse(f: &Fake, h: &HeaderMap) -> Option<Response> {
    let header = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
    if let Some(t) = header("x-auth-token") {
        lock(&f.seen).push(t.clone());
        if !f.reject_all.load(Ordering::SeqCst) && lock(&f.valid_tokens).contains(&t) {
            return None;
        }
    } else if header("x-roles").as_deref() == Some("admin") {
        let project = header("x-project-id").unwrap_or_default();
        lock(&f.seen).push(format!("noauth:{project}"));
        return None;
    }
    Some(
        (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": {"code": 401, "title": "Unauthorized",
            "message": "The request you have made requires authentication."}})),
        )
            .into_response(),
    )
}

async fn get_port(State(f): State<Arc<Fake>>, h: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(r) = refuse(&f, &h) {
        return r;
    }
    if id == "p1" {
        axum::Json(json!({"port": port_json("p1", "one")})).into_response()
    } else {
        neutron_error(
            StatusCode::NOT_FOUND,
            "PortNotFound",
            &format!("Port {id} could not be found."),
        )
    }
}

async fn list_ports(State(f): State<Arc<Fake>>, h: HeaderMap, RawQuery(q): RawQuery) -> Response {
    if let Some(r) = refuse(&f, &h) {
        return r;
    }
    let q = q.unwrap_or_default();
    lock(&f.queries).push(q.clone());
    let base = &f.base;
    // Two pages: the first links to the second with a marker.
    if q.contains("marker=p1") {
        axum::Json(json!({"ports": [port_json("p2", "two")], "ports_links": [
            {"rel": "previous", "href": format!("{base}/network/v2.0/ports?limit=1&marker=p2&page_reverse=True")}
        ]}))
        .into_response()
    } else {
        axum::Json(json!({"ports": [port_json("p1", "one")], "ports_links": [
            {"rel": "next", "href": format!("{base}/network/v2.0/ports?device_owner=compute%3Akuryr&limit=1&marker=p1")}
        ]}))
        .into_response()
    }
}

async fn create_port(
    State(f): State<Arc<Fake>>,
    h: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if let Some(r) = refuse(&f, &h) {
        return r;
    }
    lock(&f.bodies).push(body.clone());
    if body["port"]["mac_address"] == "fa:16:3e:00:00:01" {
        return neutron_error(
            StatusCode::CONFLICT,
            "MacAddressInUse",
            "Unable to complete operation for network n1. The mac address fa:16:3e:00:00:01 is in use.",
        );
    }
    let name = body["port"]["name"].as_str().unwrap_or("").to_string();
    (
        StatusCode::CREATED,
        axum::Json(json!({"port": port_json("p9", &name)})),
    )
        .into_response()
}

async fn port_item(
    State(f): State<Arc<Fake>>,
    h: HeaderMap,
    Path(id): Path<String>,
    method: axum::http::Method,
    body: Bytes,
) -> Response {
    if let Some(r) = refuse(&f, &h) {
        return r;
    }
    if method == axum::http::Method::DELETE {
        return StatusCode::NO_CONTENT.into_response();
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    lock(&f.bodies).push(body.clone());
    let name = body["port"]["name"].as_str().unwrap_or("").to_string();
    axum::Json(json!({"port": port_json(&id, &name)})).into_response()
}

async fn get_network(State(f): State<Arc<Fake>>, h: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(r) = refuse(&f, &h) {
        return r;
    }
    // "partial": what Neutron (and kuryr) send a non-admin, without the provider
    // attributes; "broken": a network without its MTU.
    let hidden: &[&str] = match id.as_str() {
        "partial" => &[
            "provider:network_type",
            "provider:physical_network",
            "provider:segmentation_id",
        ],
        "broken" => &["mtu"],
        _ => &[],
    };
    if !hidden.is_empty() {
        let mut n = network_json(&id);
        if let Some(m) = n.as_object_mut() {
            for k in hidden {
                m.remove(*k);
            }
        }
        return axum::Json(json!({"network": n})).into_response();
    }
    axum::Json(json!({"network": network_json(&id)})).into_response()
}

async fn boom(State(f): State<Arc<Fake>>, h: HeaderMap) -> Response {
    if let Some(r) = refuse(&f, &h) {
        return r;
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "<html><body>503 Service Unavailable</body></html>",
    )
        .into_response()
}

async fn slow(State(f): State<Arc<Fake>>, h: HeaderMap) -> Response {
    if let Some(r) = refuse(&f, &h) {
        return r;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    axum::Json(json!({})).into_response()
}

async fn heartbeat(
    State(f): State<Arc<Fake>>,
    h: HeaderMap,
    Path(host): Path<String>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if let Some(r) = refuse(&f, &h) {
        return r;
    }
    lock(&f.bodies).push(body.clone());
    let report = &body["agent"];
    axum::Json(json!({"agent": {
        "id": "a1", "agent_type": "Kuryr agent", "binary": "kuryr-agent", "host": host,
        "topic": "N/A", "admin_state_up": true, "availability_zone": null,
        "configurations": {"tunneling_ip": report["tunneling_ip"]},
        "description": "", "created_at": "2026-01-01T00:00:00Z",
        "started_at": "2026-01-01T00:00:00Z", "heartbeat_timestamp": "2026-01-01T00:00:01Z",
        "heartbeat_unix": 1
    }}))
    .into_response()
}

enum Part {
    Data(Vec<u8>),
    Pause(u64),
    Abort,
    Hang,
}

fn frame_lines() -> Vec<String> {
    let frames = [
        json!({"revision": 5, "present": {"ports": ["p1", "p2"], "networks": ["n1"]},
               "put": {"ports": [port_json("p1", "one"), port_json("p2", "two")],
                       "networks": [network_json("n1")]},
               "delete": {}}),
        json!({"revision": 6}),
        json!({"revision": 7, "put": {"ports": [port_json("p1", "renamed")]},
               "delete": {"ports": ["p2"]}}),
        json!({"revision": 8}),
    ];
    frames.iter().map(|f| format!("{f}\n")).collect()
}

/// Splits `text` into chunks of `n` bytes with a short pause between them, so that the
/// client really sees frames cut across reads.
fn chunked(text: &str, n: usize) -> Vec<Part> {
    let mut parts = Vec::new();
    for c in text.as_bytes().chunks(n) {
        parts.push(Part::Data(c.to_vec()));
        parts.push(Part::Pause(1));
    }
    parts
}

fn script(host: &str) -> Vec<Part> {
    let lines = frame_lines();
    match host {
        // All frames, blank lines and a CRLF between them, cut into 37-byte pieces.
        "h-chunks" => {
            let text = format!(
                "{}\n{}\r\n{}{}",
                lines[0],
                lines[1].trim_end(),
                lines[2],
                lines[3]
            );
            chunked(&text, 37)
        }
        // One frame, half of the next, then the connection is cut.
        "h-drop" => {
            let half = &lines[2][..lines[2].len() / 2];
            let mut p = chunked(&format!("{}{}", lines[0], half), 50);
            p.push(Part::Abort);
            p
        }
        // One frame, half of the next, then a clean end of the response.
        "h-eof-mid" => {
            let half = &lines[2][..lines[2].len() / 2];
            chunked(&format!("{}{}", lines[0], half), 50)
        }
        // A last frame without its newline.
        "h-eof-whole" => vec![Part::Data(lines[0].trim_end().as_bytes().to_vec())],
        // A line that never ends.
        "h-long" => {
            let mut p = Vec::new();
            for _ in 0..50 {
                p.push(Part::Data(vec![b'x'; 100]));
            }
            p.push(Part::Hang);
            p
        }
        "h-bad" => vec![
            Part::Data(lines[0].clone().into_bytes()),
            Part::Data(b"{not json}\n".to_vec()),
            Part::Data(lines[1].clone().into_bytes()),
        ],
        "h-idle" => vec![Part::Data(lines[0].clone().into_bytes()), Part::Hang],
        _ => Vec::new(),
    }
}

async fn watch(
    State(f): State<Arc<Fake>>,
    h: HeaderMap,
    Path(host): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    if let Some(r) = refuse(&f, &h) {
        return r;
    }
    lock(&f.queries).push(q.unwrap_or_default());
    let parts = script(&host);
    let stream = futures::stream::unfold(parts.into_iter(), |mut it| async move {
        loop {
            match it.next()? {
                Part::Data(d) => return Some((Ok(Bytes::from(d)), it)),
                Part::Pause(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                Part::Abort => {
                    return Some((Err(std::io::Error::other("cut")), it));
                }
                Part::Hang => {
                    futures::future::pending::<()>().await;
                }
            }
        }
    });
    (
        [("content-type", "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn start() -> Arc<Fake> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let fake = Arc::new(Fake {
        base: format!("http://{addr}"),
        token_lifetime: AtomicI64::new(3600),
        ..Default::default()
    });
    let app = Router::new()
        .route("/identity/v3/auth/tokens", post(issue_token))
        .route("/network/v2.0/ports", get(list_ports).post(create_port))
        .route(
            "/network/v2.0/ports/{id}",
            get(get_port).put(port_item).delete(port_item),
        )
        .route("/network/v2.0/networks/{id}", get(get_network))
        .route("/network/v2.0/boom", get(boom))
        .route("/network/v2.0/slow", get(slow))
        .route("/network/v2.0/kuryr/agents/{host}", put(heartbeat))
        .route("/network/v2.0/kuryr/hosts/{host}/watch", get(watch))
        .with_state(fake.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    fake
}

fn password_creds(f: &Fake, password: &str) -> Credentials {
    Credentials {
        auth: AuthMethod::Password(PasswordAuth {
            auth_url: format!("{}/identity", f.base),
            user: Ident::Name {
                name: "kuryr".into(),
                domain: Domain::Name("Default".into()),
            },
            password: password.into(),
            project: Ident::Name {
                name: "service".into(),
                domain: Domain::Id("default".into()),
            },
        }),
        region_name: Some("RegionOne".into()),
        interface: "public".into(),
        cacert: None,
        insecure: false,
        network_endpoint: None,
    }
}

async fn connect(f: &Fake) -> Client {
    Client::connect(password_creds(f, "secret"))
        .await
        .expect("connect")
}

fn seen(f: &Fake) -> Vec<String> {
    lock(&f.seen).clone()
}

#[tokio::test]
async fn auth_and_catalog() {
    let f = start().await;
    let c = connect(&f).await;
    assert_eq!(f.tokens_issued.load(Ordering::SeqCst), 1);
    // The public RegionOne endpoint, its trailing slash dropped and /v2.0 appended.
    assert_eq!(
        c.network_url().await,
        Ok(format!("{}/network/v2.0", f.base))
    );
    let p = c.get_port("p1").await.expect("port");
    assert_eq!(p.name, "one");
    assert_eq!(seen(&f), ["tok-1"]);

    // Bad password: an Auth error naming the user.
    let e = Client::connect(password_creds(&f, "wrong")).await.err();
    assert!(
        matches!(&e, Some(ClientError::Auth(m)) if m.contains("kuryr") && m.contains("Unauthorized")),
        "{e:?}"
    );

    // No endpoint for the interface/region asked for.
    let mut creds = password_creds(&f, "secret");
    creds.region_name = Some("RegionThree".into());
    let e = Client::connect(creds).await.err();
    assert!(
        matches!(&e, Some(ClientError::Auth(m)) if m.contains("RegionThree")),
        "{e:?}"
    );

    // The override bypasses the catalog.
    let mut creds = password_creds(&f, "secret");
    creds.network_endpoint = Some(format!("{}/network/v2.0/", f.base));
    let c = Client::connect(creds).await.expect("connect");
    assert_eq!(
        c.network_url().await,
        Ok(format!("{}/network/v2.0", f.base))
    );
}

#[tokio::test]
async fn reauthenticates_once_on_401() {
    let f = start().await;
    let c = connect(&f).await;
    // Keystone revoked every token (e.g. restarted): the next call re-authenticates.
    lock(&f.valid_tokens).clear();
    let p = c.get_port("p1").await.expect("port after 401");
    assert_eq!(p.id, "p1");
    assert_eq!(f.tokens_issued.load(Ordering::SeqCst), 2);
    assert_eq!(seen(&f), ["tok-1", "tok-2"]);
    // The new token is kept.
    c.get_port("p1").await.expect("port");
    assert_eq!(f.tokens_issued.load(Ordering::SeqCst), 2);

    // A Neutron that refuses every token: one retry, then Auth.
    f.reject_all.store(true, Ordering::SeqCst);
    let e = c.get_port("p1").await.err();
    assert!(
        matches!(&e, Some(ClientError::Auth(m)) if m.contains("401")),
        "{e:?}"
    );
    assert_eq!(f.tokens_issued.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn reauthenticates_before_expiry() {
    let f = start().await;
    // Tokens that expire within the 60 s margin are replaced before each request.
    f.token_lifetime.store(30, Ordering::SeqCst);
    let c = connect(&f).await;
    assert_eq!(f.tokens_issued.load(Ordering::SeqCst), 1);
    f.token_lifetime.store(3600, Ordering::SeqCst);
    c.get_port("p1").await.expect("port");
    assert_eq!(f.tokens_issued.load(Ordering::SeqCst), 2);
    assert_eq!(seen(&f), ["tok-2"]);
    c.get_port("p1").await.expect("port");
    assert_eq!(f.tokens_issued.load(Ordering::SeqCst), 2);

    // Concurrent callers share one re-authentication.
    f.token_lifetime.store(3600, Ordering::SeqCst);
    let cfg = ClientConfig {
        refresh_margin: Duration::from_secs(7200),
        ..Default::default()
    };
    let c = Client::new(password_creds(&f, "secret"), cfg).expect("client");
    let before = f.tokens_issued.load(Ordering::SeqCst);
    let (a, b) = tokio::join!(c.get_port("p1"), c.get_port("p1"));
    assert!(a.is_ok() && b.is_ok());
    // Margin longer than the lifetime: every request re-authenticates, one at a time.
    assert_eq!(f.tokens_issued.load(Ordering::SeqCst), before + 2);
}

#[tokio::test]
async fn neutron_calls_and_errors() {
    let f = start().await;
    let c = connect(&f).await;

    let e = c.get_port("nope").await.err();
    assert_eq!(
        e,
        Some(ClientError::NotFound {
            kind: "PortNotFound".into(),
            message: "Port nope could not be found.".into()
        })
    );

    // Filters go out as query pairs; the second page is fetched through the next link.
    let ports = c
        .list_ports(&[("device_owner", "compute:kuryr"), ("id", "a b")])
        .await
        .expect("ports");
    assert_eq!(
        ports.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        ["p1", "p2"]
    );
    assert_eq!(
        lock(&f.queries).clone(),
        [
            "device_owner=compute%3Akuryr&id=a+b",
            "device_owner=compute%3Akuryr&limit=1&marker=p1"
        ]
    );

    let p = c
        .create_port(json!({"network_id": "n1", "name": "new"}))
        .await
        .expect("create");
    assert_eq!((p.id.as_str(), p.name.as_str()), ("p9", "new"));
    let e = c
        .create_port(json!({"port": {"network_id": "n1", "mac_address": "fa:16:3e:00:00:01"}}))
        .await
        .err();
    assert!(
        matches!(&e, Some(ClientError::Conflict { kind, message }) if kind == "MacAddressInUse" && message.contains("in use")),
        "{e:?}"
    );
    let p = c
        .update_port("p1", json!({"name": "upd", "binding:host_id": "h1"}))
        .await
        .expect("update");
    assert_eq!(p.name, "upd");
    assert_eq!(
        lock(&f.bodies).clone(),
        [
            json!({"port": {"network_id": "n1", "name": "new"}}),
            json!({"port": {"network_id": "n1", "mac_address": "fa:16:3e:00:00:01"}}),
            json!({"port": {"name": "upd", "binding:host_id": "h1"}}),
        ]
    );
    c.delete_port("p1").await.expect("delete");

    let n = c.get_network("n1").await.expect("network");
    assert_eq!(n.segmentation_id, Some(7));
    // Admin-only attributes may be absent (a non-admin's view)...
    let n = c.get_network("partial").await.expect("a non-admin's view");
    assert_eq!((n.network_type.as_str(), n.segmentation_id), ("", None));
    // ...but a field the model requires and the server left out is a Decode error naming it.
    let e = c.get_network("broken").await.err();
    assert!(
        matches!(&e, Some(ClientError::Decode(m)) if m.contains("mtu")),
        "{e:?}"
    );

    // The generic call: JSON in, JSON out, null for 204.
    let v = c
        .request(Method::GET, "/v2.0/ports/p1", None)
        .await
        .expect("generic");
    assert_eq!(v["port"]["id"], "p1");
    let v = c
        .request(Method::GET, "ports?marker=p1", None)
        .await
        .expect("generic with query");
    assert_eq!(v["ports"][0]["id"], "p2");
    let v = c
        .request(Method::DELETE, "/ports/p1", None)
        .await
        .expect("generic delete");
    assert_eq!(v, Value::Null);

    // A non-Neutron error body (a proxy's HTML) still gives status and a message.
    let e = c.request(Method::GET, "/boom", None).await.err();
    assert!(
        matches!(&e, Some(ClientError::Api { status: 503, kind, message }) if kind == "HTTPServiceUnavailable" && message.contains("503")),
        "{e:?}"
    );
    assert!(e.is_some_and(|e| e.is_retryable()));
}

#[tokio::test]
async fn timeouts_and_unreachable() {
    let f = start().await;
    let cfg = ClientConfig {
        request_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let c = Client::connect_with(password_creds(&f, "secret"), cfg)
        .await
        .expect("connect");
    let e = c.request(Method::GET, "/slow", None).await.err();
    assert!(
        matches!(&e, Some(ClientError::Unreachable(m)) if m.contains("timed out")),
        "{e:?}"
    );

    // Nothing listens on the port any more.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    let creds = Credentials::noauth(format!("http://{addr}"), None);
    let c = Client::connect(creds)
        .await
        .expect("noauth connects lazily");
    let e = c.get_port("p1").await.err();
    assert!(matches!(&e, Some(ClientError::Unreachable(_))), "{e:?}");
    assert!(e.is_some_and(|e| e.is_retryable()));

    let mut creds = password_creds(&f, "secret");
    if let AuthMethod::Password(p) = &mut creds.auth {
        p.auth_url = format!("http://{addr}/identity");
    }
    let e = Client::connect(creds).await.err();
    assert!(matches!(&e, Some(ClientError::Unreachable(_))), "{e:?}");
}

#[tokio::test]
async fn noauth_headers_and_extensions() {
    let f = start().await;
    let c = Client::connect(Credentials::noauth(
        format!("{}/network", f.base),
        Some("proj".into()),
    ))
    .await
    .expect("connect");
    c.get_port("p1").await.expect("port");
    assert_eq!(seen(&f), ["noauth:proj"]);
    assert_eq!(f.tokens_issued.load(Ordering::SeqCst), 0);

    let report = AgentReport {
        host: "h1".into(),
        tunneling_ip: "192.0.2.10".into(),
        interface_mappings: [("physnet1".to_string(), "eth1".to_string())]
            .into_iter()
            .collect(),
        started_at_unix: 1_700_000_000,
        devices: 3,
    };
    let agent = c.heartbeat(&report).await.expect("heartbeat");
    assert_eq!(agent.host, "h1");
    assert_eq!(agent.configurations["tunneling_ip"], "192.0.2.10");
    assert_eq!(
        lock(&f.bodies).clone(),
        [json!({"agent": {"host": "h1", "tunneling_ip": "192.0.2.10",
            "interface_mappings": {"physnet1": "eth1"}, "started_at_unix": 1_700_000_000, "devices": 3}})]
    );

    // A Neutron without kuryr's extensions: 404 → NotFound.
    let plain = Client::connect(Credentials::noauth(format!("{}/plain", f.base), None))
        .await
        .expect("connect");
    let e = plain.heartbeat(&report).await.err();
    assert!(
        matches!(&e, Some(ClientError::NotFound { kind, .. }) if kind == "HTTPNotFound"),
        "{e:?}"
    );
    let e = plain.watch_host("h1", 0).await.err();
    assert!(matches!(&e, Some(ClientError::NotFound { .. })), "{e:?}");
}

async fn collect(c: &Client, host: &str, since: u64) -> Vec<Result<HostFrame, ClientError>> {
    let mut w = c.watch_host(host, since).await.expect("watch");
    let mut out = Vec::new();
    while let Some(item) = tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("watch item within 10 s")
    {
        out.push(item);
    }
    out
}

fn revisions(items: &[Result<HostFrame, ClientError>]) -> Vec<Result<u64, String>> {
    items
        .iter()
        .map(|r| match r {
            Ok(f) => Ok(f.revision),
            Err(e) => Err(e.to_string()),
        })
        .collect()
}

#[tokio::test]
async fn watch_frames_across_chunks() {
    let f = start().await;
    let c = connect(&f).await;
    let items = collect(&c, "h-chunks", 4).await;
    assert_eq!(revisions(&items), [Ok(5), Ok(6), Ok(7), Ok(8)]);
    assert_eq!(lock(&f.queries).clone(), ["since=4"]);

    let mut m = HostMirror::new();
    for frame in items.into_iter().flatten() {
        m.apply(frame);
    }
    assert!(m.is_synced());
    assert_eq!(m.revision(), 8);
    assert_eq!(m.ports.keys().collect::<Vec<_>>(), ["p1"]);
    assert_eq!(m.ports.get("p1").map(|p| p.name.as_str()), Some("renamed"));
    assert_eq!(m.networks.len(), 1);
}

#[tokio::test]
async fn watch_ends_on_drops_and_bad_lines() {
    let f = start().await;
    let cfg = ClientConfig {
        max_watch_line: 4096,
        watch_idle_timeout: Some(Duration::from_millis(500)),
        ..Default::default()
    };
    let c = Client::connect_with(password_creds(&f, "secret"), cfg)
        .await
        .expect("connect");

    let r = revisions(&collect(&c, "h-drop", 0).await);
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(r[0], Ok(5));
    assert!(
        matches!(&r[1], Err(m) if m.starts_with("unreachable")),
        "{r:?}"
    );

    let r = revisions(&collect(&c, "h-eof-mid", 0).await);
    assert_eq!(r.len(), 2, "{r:?}");
    assert!(
        matches!(&r[1], Err(m) if m.contains("middle of a frame")),
        "{r:?}"
    );

    assert_eq!(revisions(&collect(&c, "h-eof-whole", 0).await), [Ok(5)]);

    let r = revisions(&collect(&c, "h-long", 0).await);
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(
        matches!(&r[0], Err(m) if m.contains("longer than 4096")),
        "{r:?}"
    );

    let r = revisions(&collect(&c, "h-bad", 0).await);
    assert_eq!(r.len(), 2, "{r:?}");
    assert!(matches!(&r[1], Err(m) if m.starts_with("decode")), "{r:?}");

    let r = revisions(&collect(&c, "h-idle", 0).await);
    assert_eq!(r.len(), 2, "{r:?}");
    assert!(
        matches!(&r[1], Err(m) if m.contains("nothing received")),
        "{r:?}"
    );

    // A watch survives an expired token at connect time like any call.
    lock(&f.valid_tokens).clear();
    let items = collect(&c, "h-chunks", 0).await;
    assert_eq!(items.len(), 4);
}
