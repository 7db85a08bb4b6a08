//! Observability of a real `kuryr server` process: request ids in responses and in its
//! log lines, Prometheus metrics that move with requests, host watches and agents,
//! and the health and readiness probes.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// One sample of the Prometheus text format: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses a sample line strictly by the text format: `name{k="v",...} value`, label
/// values quoted with `\\`, `\"` and `\n` escapes (a route like `/x/{id}` holds braces).
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("bad metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find('=').ok_or("label without =")?;
            let key = rest[..eq].to_string();
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("bad label name {key:?}"));
            }
            let mut chars = rest[eq + 1..]
                .strip_prefix('"')
                .ok_or("unquoted label")?
                .char_indices();
            let mut value = String::new();
            let close = loop {
                match chars.next().ok_or("unterminated label value")? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        c => return Err(format!("bad escape \\{c}")),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.insert(key, value);
            rest = &rest[eq + 1..][1 + close + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
    let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().map_err(|e| format!("value {v:?}: {e}"))?,
    };
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Scrapes /metrics; every line must be a HELP/TYPE comment or a well-formed sample.
async fn scrape(s: &Server, c: &reqwest::Client) -> Vec<Sample> {
    let r = c
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .expect("scrape");
    assert_eq!(r.status(), 200);
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = r.text().await.expect("metrics body");
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            assert!(
                comment.starts_with("HELP ") || comment.starts_with("TYPE "),
                "{line}"
            );
            continue;
        }
        samples.push(parse_sample(line).unwrap_or_else(|e| panic!("{line:?}: {e}")));
    }
    samples
}

/// The value of the sample with exactly these labels (0 if there is none yet: a label
/// set appears with its first observation).
fn value(m: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    m.iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map_or(0.0, |s| s.value)
}

fn is_request_id(v: &str) -> bool {
    v.strip_prefix("req-")
        .is_some_and(|u| u.len() == 36 && u.chars().all(|c| c.is_ascii_hexdigit() || c == '-'))
}

/// Waits until the server's log has a line containing `needle` (log lines are written
/// as the request ends, possibly just after the response).
fn log_line(s: &Server, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(line) = s.log().lines().find(|l| l.contains(needle)) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {needle}; log:\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn requests_have_ids_in_responses_and_log_lines_and_are_counted_by_route() {
    let s = Server::start(&[]);
    let c = client();
    let before = scrape(&s, &c).await;
    let created = ("method", "POST");
    let networks = ("route", "/networking/v2.0/networks");
    assert_eq!(
        value(
            &before,
            "kuryr_http_requests_total",
            &[created, networks, ("status", "201")]
        ),
        0.0
    );

    let r = c
        .post(s.net("/networks"))
        .header("X-Project-Id", "p-observed")
        .json(&json!({"network": {"name": "observed"}}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201);
    let id = r
        .headers()
        .get("x-openstack-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("request id header")
        .to_string();
    assert!(is_request_id(&id), "{id}");
    let body: serde_json::Value = r.json().await.expect("json");
    let net_id = body["network"]["id"].as_str().expect("id").to_string();

    // The request's log line names it, with its route, project and status.
    let line = log_line(&s, &id);
    for part in [
        "method=POST",
        "route=/networking/v2.0/networks ",
        "project=p-observed",
        "status=201",
        "duration_ms=",
    ] {
        assert!(line.contains(part), "{part:?} missing from {line}");
    }

    // A client's own id is kept as the global id; the server still makes its own.
    let theirs = "req-0b5e0a2c-4a36-4c3e-9d0b-6a8e2f1c9d47";
    let r = c
        .get(s.net(&format!("/networks/{net_id}")))
        .header("X-Project-Id", "p-observed")
        .header("X-OpenStack-Request-ID", theirs)
        .send()
        .await
        .expect("show");
    assert_eq!(r.status(), 200);
    let ours = r.headers()["x-openstack-request-id"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(
        is_request_id(&ours) && ours != theirs && ours != id,
        "{ours}"
    );
    let line = log_line(&s, &ours);
    assert!(line.contains(&format!("global_id={theirs}")), "{line}");
    assert!(
        line.contains("route=/networking/v2.0/networks/{id}"),
        "{line}"
    );

    // An unknown id and an unknown path: labelled by route, never by the raw path.
    let missing = "5a0c0d1e-0000-4000-8000-000000000000";
    let r = c
        .get(s.net(&format!("/networks/{missing}")))
        .header("X-Project-Id", "p-observed")
        .send()
        .await
        .expect("show missing");
    assert_eq!(r.status(), 404);
    assert!(r.headers().contains_key("x-openstack-request-id"));
    let r = c
        .get(format!("{}/no/such/{missing}", s.url))
        .send()
        .await
        .expect("unknown path");
    assert_eq!(r.status(), 404);
    assert!(r.headers().contains_key("x-openstack-request-id"));

    let after = scrape(&s, &c).await;
    let by_id = ("route", "/networking/v2.0/networks/{id}");
    assert_eq!(
        value(
            &after,
            "kuryr_http_requests_total",
            &[created, networks, ("status", "201")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "kuryr_http_requests_total",
            &[("method", "GET"), by_id, ("status", "200")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "kuryr_http_requests_total",
            &[("method", "GET"), by_id, ("status", "404")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "kuryr_http_requests_total",
            &[("method", "GET"), ("route", "unmatched"), ("status", "404")]
        ),
        1.0
    );
    assert!(
        after.iter().all(|x| x
            .labels
            .values()
            .all(|v| !v.contains(missing) && !v.contains(&net_id))),
        "a raw id became a label"
    );
    assert_eq!(
        value(
            &after,
            "kuryr_http_request_duration_seconds_count",
            &[created, networks]
        ),
        1.0
    );
    // The create committed (at least one group commit of at least one transaction).
    let commits = value(&after, "kuryr_store_commit_duration_seconds_count", &[]);
    assert!(
        commits > value(&before, "kuryr_store_commit_duration_seconds_count", &[]),
        "{commits}"
    );
    assert!(value(&after, "kuryr_store_commit_batch_transactions_sum", &[]) >= commits);
    assert!(
        value(&after, "kuryr_store_revision", &[]) > value(&before, "kuryr_store_revision", &[])
    );
}

#[tokio::test]
async fn healthz_and_readyz_answer_once_started() {
    let s = Server::start(&[]);
    let c = client();
    for probe in ["healthz", "readyz"] {
        let r = c
            .get(format!("{}/{probe}", s.url))
            .send()
            .await
            .expect("probe");
        assert_eq!(r.status(), 200, "{probe}");
    }
}

/// Polls /metrics until `ok` holds for the scrape.
async fn wait_metrics(s: &Server, c: &reqwest::Client, what: &str, ok: impl Fn(&[Sample]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = scrape(s, c).await;
        if ok(&m) {
            return;
        }
        assert!(Instant::now() < deadline, "metrics never showed {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn heartbeat(s: &Server, c: &reqwest::Client, host: &str) {
    let r = c
        .put(s.net(&format!("/kuryr/agents/{host}")))
        .json(&json!({"agent": {"host": host, "tunneling_ip": "127.0.0.1", "started_at_unix": 1}}))
        .send()
        .await
        .expect("heartbeat");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn open_host_watches_and_live_agents_are_counted() {
    // Keepalives every second: a closed stream is noticed at the next write.
    let s = Server::start(&["--watch-keepalive", "1"]);
    let c = client();
    heartbeat(&s, &c, "h1").await;
    heartbeat(&s, &c, "h2").await;
    let m = scrape(&s, &c).await;
    assert_eq!(value(&m, "kuryr_agents", &[("alive", "true")]), 2.0);
    assert_eq!(value(&m, "kuryr_agents", &[("alive", "false")]), 0.0);
    assert_eq!(value(&m, "kuryr_host_watches_open", &[]), 0.0);

    let watch = |host: &str| {
        c.get(s.net(&format!("/kuryr/hosts/{host}/watch?since=0")))
            .send()
    };
    let w1 = watch("h1").await.expect("watch h1");
    let w2 = watch("h2").await.expect("watch h2");
    assert_eq!((w1.status().as_u16(), w2.status().as_u16()), (200, 200));
    wait_metrics(&s, &c, "two open watches", |m| {
        value(m, "kuryr_host_watches_open", &[]) == 2.0
    })
    .await;
    // The server notices a closed stream on its next frame (at most one keepalive).
    drop(w1);
    wait_metrics(&s, &c, "one open watch", |m| {
        value(m, "kuryr_host_watches_open", &[]) == 1.0
    })
    .await;
    drop(w2);
    wait_metrics(&s, &c, "no open watch", |m| {
        value(m, "kuryr_host_watches_open", &[]) == 0.0
    })
    .await;
}

#[tokio::test]
async fn an_agent_without_heartbeats_is_counted_down() {
    let s = Server::start(&["--agent-down-time", "1"]);
    let c = client();
    heartbeat(&s, &c, "h1").await;
    // With a 1 s down time the agent is down a second or two after its heartbeat (the
    // other test shows heartbeating agents counted alive).
    wait_metrics(&s, &c, "the agent down", |m| {
        value(m, "kuryr_agents", &[("alive", "false")]) == 1.0
            && value(m, "kuryr_agents", &[("alive", "true")]) == 0.0
    })
    .await;
    let (st, agents) = get(&c, &s.net("/agents"), "admin").await;
    assert_eq!(st, 200);
    assert_eq!(agents["agents"][0]["alive"], json!(false), "{agents}");
}
