//! `kuryr-login-bench`: how a `kuryr server` (Keystone mode) behaves under a login
//! flood. Prints figures, asserts nothing:
//! - password login times, one at a time: a known user with the right and a wrong
//!   password, an unknown user (equal cost is the point);
//! - Neutron API latency (list networks, create + delete a port, with a token) alone,
//!   then during a flood of logins with unknown names and a known name, with the
//!   server's login limit (default: the CPU count), and with a limit high enough to
//!   be none, for comparison; the flood's outcome (201/401/503) and the server's
//!   resident memory.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "Login flood against kuryr server: API latency and login cost")]
struct Args {
    /// Seconds of each phase.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Concurrent login loops during the flood.
    #[arg(long, default_value_t = 32)]
    flood: usize,
    /// Concurrent API clients.
    #[arg(long, default_value_t = 4)]
    api_clients: usize,
    /// Logins of each kind in the one-at-a-time measurement.
    #[arg(long, default_value_t = 30)]
    samples: usize,
    /// Path of the kuryr binary (default: next to this one).
    #[arg(long)]
    kuryr: Option<std::path::PathBuf>,
}

struct Server {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const ADMIN_PW: &str = "bench-admin-pw";
const USER_PW: &str = "bench-user-pw";

async fn start(kuryr: &std::path::Path, extra: &[&str]) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(kuryr)
        .args([
            "server",
            "--listen",
            &format!("127.0.0.1:{port}"),
            &format!("--admin-password={ADMIN_PW}"),
            "--data-dir",
        ])
        .arg(dir.path())
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", kuryr.display()))?;
    let server = Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{}/identity/v3", server.url))
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
        != 200
    {
        if Instant::now() > deadline {
            bail!("kuryr server did not start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(server)
}

fn login_body(user: &str, password: &str, project: Option<&str>) -> Value {
    let mut b = json!({"auth": {"identity": {"methods": ["password"], "password": {
        "user": {"name": user, "domain": {"name": "Default"}, "password": password}}}}});
    if let Some(p) = project {
        b["auth"]["scope"] = json!({"project": {"name": p, "domain": {"name": "Default"}}});
    }
    b
}

async fn login(http: &reqwest::Client, url: &str, body: &Value) -> anyhow::Result<(u16, String)> {
    let r = http
        .post(format!("{url}/identity/v3/auth/tokens"))
        .json(body)
        .send()
        .await?;
    let token = r
        .headers()
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok((r.status().as_u16(), token))
}

async fn token(http: &reqwest::Client, url: &str, user: &str, pw: &str) -> anyhow::Result<String> {
    match login(http, url, &login_body(user, pw, Some("admin"))).await? {
        (201, t) => Ok(t),
        (st, _) => bail!("login of {user}: {st}"),
    }
}

/// A member user `known` in the admin project, and a network with a subnet.
async fn setup(http: &reqwest::Client, url: &str) -> anyhow::Result<(String, String)> {
    let admin = token(http, url, "admin", ADMIN_PW).await?;
    let id = format!("{url}/identity/v3");
    let r: Value = http
        .post(format!("{id}/users"))
        .header("x-auth-token", &admin)
        .json(&json!({"user": {"name": "known", "password": USER_PW}}))
        .send()
        .await?
        .json()
        .await?;
    let uid = r["user"]["id"].as_str().context("user id")?.to_string();
    let roles: Value = http
        .get(format!("{id}/roles?name=member"))
        .header("x-auth-token", &admin)
        .send()
        .await?
        .json()
        .await?;
    let rid = roles["roles"][0]["id"].as_str().context("member role")?;
    let projects: Value = http
        .get(format!("{id}/projects?name=admin"))
        .header("x-auth-token", &admin)
        .send()
        .await?
        .json()
        .await?;
    let pid = projects["projects"][0]["id"].as_str().context("project")?;
    let st = http
        .put(format!("{id}/projects/{pid}/users/{uid}/roles/{rid}"))
        .header("x-auth-token", &admin)
        .send()
        .await?
        .status();
    if !st.is_success() {
        bail!("grant: {st}");
    }
    let net = format!("{url}/networking/v2.0");
    let n: Value = http
        .post(format!("{net}/networks"))
        .header("x-auth-token", &admin)
        .json(&json!({"network": {"name": "bench"}}))
        .send()
        .await?
        .json()
        .await?;
    let nid = n["network"]["id"]
        .as_str()
        .context("network id")?
        .to_string();
    let st = http
        .post(format!("{net}/subnets"))
        .header("x-auth-token", &admin)
        .json(&json!({"subnet": {"network_id": nid, "ip_version": 4, "cidr": "10.9.0.0/16"}}))
        .send()
        .await?
        .status();
    if !st.is_success() {
        bail!("subnet: {st}");
    }
    Ok((admin, nid))
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// One API client's loop: list networks, create a port, delete it; each call timed.
async fn api_loop(
    http: reqwest::Client,
    url: String,
    token: String,
    net: String,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<Duration>> {
    let base = format!("{url}/networking/v2.0");
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let st = http
            .get(format!("{base}/networks"))
            .header("x-auth-token", &token)
            .send()
            .await?
            .status();
        out.push(t.elapsed());
        if !st.is_success() {
            bail!("list networks: {st}");
        }
        let t = Instant::now();
        let p: Value = http
            .post(format!("{base}/ports"))
            .header("x-auth-token", &token)
            .json(&json!({"port": {"network_id": net}}))
            .send()
            .await?
            .json()
            .await?;
        out.push(t.elapsed());
        let id = p["port"]["id"]
            .as_str()
            .with_context(|| format!("port create: {p}"))?;
        let t = Instant::now();
        let st = http
            .delete(format!("{base}/ports/{id}"))
            .header("x-auth-token", &token)
            .send()
            .await?
            .status();
        out.push(t.elapsed());
        if !st.is_success() {
            bail!("port delete: {st}");
        }
    }
    Ok(out)
}

#[derive(Default)]
struct FloodOutcome {
    created: usize,
    refused: usize,
    busy: usize,
    other: usize,
    latencies: Vec<Duration>,
}

/// One flood loop: logins with unknown names (3 of 4) and the known name with a
/// wrong password (1 of 4), until stopped.
async fn flood_loop(
    http: reqwest::Client,
    url: String,
    me: usize,
    stop: Arc<AtomicBool>,
) -> FloodOutcome {
    let mut out = FloodOutcome::default();
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let body = if i.is_multiple_of(4) {
            login_body("known", "wrong", None)
        } else {
            login_body(&format!("nobody-{me}-{i}"), "x", None)
        };
        let t = Instant::now();
        match login(&http, &url, &body).await {
            Ok((201, _)) => out.created += 1,
            Ok((401, _)) => out.refused += 1,
            Ok((503, _)) => out.busy += 1,
            _ => out.other += 1,
        }
        out.latencies.push(t.elapsed());
    }
    out
}

async fn phase(
    server: &Server,
    args: &Args,
    token: &str,
    net: &str,
    flood: usize,
) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let mut api = Vec::new();
    for _ in 0..args.api_clients {
        api.push(tokio::spawn(api_loop(
            http.clone(),
            server.url.clone(),
            token.to_string(),
            net.to_string(),
            stop.clone(),
        )));
    }
    let mut floods = Vec::new();
    for me in 0..flood {
        floods.push(tokio::spawn(flood_loop(
            http.clone(),
            server.url.clone(),
            me,
            stop.clone(),
        )));
    }
    let pid = server.child.id();
    let mut peak = rss_mb(pid);
    let end = Instant::now() + Duration::from_secs(args.seconds);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(rss_mb(pid));
    }
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for a in api {
        lat.extend(a.await??);
    }
    let mut total = FloodOutcome::default();
    for f in floods {
        let o = f.await?;
        total.created += o.created;
        total.refused += o.refused;
        total.busy += o.busy;
        total.other += o.other;
        total.latencies.extend(o.latencies);
    }
    println!(
        "  API ({} clients): {} calls, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        args.api_clients,
        lat.len(),
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        pct(&mut lat, 1.0)
    );
    if flood > 0 {
        let n = total.latencies.len();
        println!(
            "  logins ({flood} loops): {n} answered in {} s ({:.0}/s): 401 {}, 503 {}, other {}; p50 {:.1} ms, p99 {:.1} ms",
            args.seconds,
            n as f64 / args.seconds as f64,
            total.refused,
            total.busy,
            total.other + total.created,
            pct(&mut total.latencies, 0.5),
            pct(&mut total.latencies, 0.99)
        );
    }
    println!("  server RSS peak {peak:.0} MB");
    Ok(())
}

async fn login_costs(server: &Server, samples: usize) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let kinds: [(&str, Value, u16); 3] = [
        (
            "known user, right password",
            login_body("known", USER_PW, None),
            201,
        ),
        (
            "known user, wrong password",
            login_body("known", "wrong", None),
            401,
        ),
        ("unknown user", login_body("nobody", "x", None), 401),
    ];
    let mut all: Vec<(&str, Vec<Duration>)> = kinds.iter().map(|k| (k.0, Vec::new())).collect();
    // Interleaved, so that the machine's load shifts touch every kind alike.
    for _ in 0..samples {
        for (i, (name, body, want)) in kinds.iter().enumerate() {
            let t = Instant::now();
            let (st, _) = login(&http, &server.url, body).await?;
            all[i].1.push(t.elapsed());
            if st != *want {
                bail!("{name}: {st}, expected {want}");
            }
        }
    }
    for (name, mut v) in all {
        println!(
            "  {name:<28} p50 {:>6.1} ms  p90 {:>6.1} ms  ({samples} logins)",
            pct(&mut v, 0.5),
            pct(&mut v, 0.9)
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let kuryr = match &args.kuryr {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("kuryr"),
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "kuryr server {} on this machine ({cores} cores, load average {}), {} s per phase",
        kuryr.display(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .next()
            .unwrap_or("?"),
        args.seconds
    );
    let http = reqwest::Client::new();
    for (label, extra) in [
        ("login limit: default (the CPU count)", vec![]),
        (
            "login limit: 1024 (none, for comparison)",
            vec!["--login-concurrency", "1024"],
        ),
    ] {
        let server = start(&kuryr, &extra).await?;
        let (token, net) = setup(&http, &server.url).await?;
        println!("{label}");
        if extra.is_empty() {
            println!(" password logins, one at a time:");
            login_costs(&server, args.samples).await?;
            println!(" API traffic alone:");
            phase(&server, &args, &token, &net, 0).await?;
        }
        println!(
            " API traffic during a login flood (unknown names, and a known name with a wrong password):"
        );
        phase(&server, &args, &token, &net, args.flood).await?;
    }
    Ok(())
}
