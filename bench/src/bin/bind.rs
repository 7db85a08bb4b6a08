//! `kuryr-bind-bench`: the timed part of `bench/dataplane.py`, meant to run inside a
//! lab host namespace (`ip netns exec <h1> kuryr-bind-bench ...`).
//!
//! - `--mode kuryr`: for each prepared namespace, `POST /v2.0/ports` to the server,
//!   then bind through the agent's unix socket ([`LocalClient`]); the clock stops
//!   when the bind returns (the interface is up with its addresses by then).
//! - `--mode cni`: the reference, a CNI plugin (`bridge` + `host-local`) exec'ed
//!   with `CNI_COMMAND=ADD` for each namespace; the clock stops when it exits.
//! - `--mode sg`: security-group membership changes: create a port in a group, wait
//!   until its address is in the host's nftables remote-group set; delete it, wait
//!   until it is gone.
//!
//! Namespaces are created and deleted by the caller, outside the clock. Everything
//! this program creates (ports, CNI attachments) is removed before it exits. The
//! results are one JSON document on stdout.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use futures::future::join_all;
use kuryr_agent::local::LocalClient;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Port create on the server + bind through the agent's socket.
    Kuryr,
    /// The reference CNI plugin, exec'ed directly.
    Cni,
    /// Security-group member add/delete until the host's nft set follows.
    Sg,
}

#[derive(Parser)]
#[command(
    name = "kuryr-bind-bench",
    about = "Bind latency (kuryr vs a CNI plugin) and security-group propagation, timed from inside a lab host"
)]
struct Args {
    #[arg(long, value_enum)]
    mode: Mode,
    /// The kuryr server (Keystone at {api}/identity/v3, Neutron at {api}/networking/v2.0).
    #[arg(long, default_value = "http://10.99.0.1:9696")]
    api: String,
    #[arg(long, default_value = "admin")]
    username: String,
    /// Keystone password (better through the environment than the command line).
    #[arg(long, env = "OS_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    #[arg(long, default_value = "admin")]
    project: String,
    #[arg(long, default_value = "Default")]
    domain: String,
    /// Network of the ports (kuryr and sg modes).
    #[arg(long)]
    network_id: Option<String>,
    /// The agent's local API socket (kuryr mode).
    #[arg(long)]
    agent_socket: Option<PathBuf>,
    /// Namespace names (under /run/netns), one a line, each used once (kuryr and cni modes).
    #[arg(long)]
    netns_file: Option<PathBuf>,
    /// Operations (default: one per namespace; sg mode: add/delete rounds).
    #[arg(long)]
    count: Option<usize>,
    /// Operations in flight at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Interface name inside the namespaces.
    #[arg(long, default_value = "eth0")]
    ifname: String,
    /// CNI network configuration (JSON) given to the plugin on stdin (cni mode).
    #[arg(long)]
    cni_config: Option<PathBuf>,
    /// The CNI plugin (cni mode).
    #[arg(long, default_value = "/usr/lib/cni/bridge")]
    cni_plugin: PathBuf,
    /// CNI_PATH (where the plugin finds its IPAM plugin).
    #[arg(long, default_value = "/usr/lib/cni")]
    cni_path: String,
    /// The security group whose membership changes (sg mode).
    #[arg(long)]
    security_group: Option<String>,
    /// The nft set that mirrors the group (sg mode), e.g. `g4_<group id>`.
    #[arg(long)]
    nft_set: Option<String>,
    /// Family and table of that set.
    #[arg(long, default_value = "inet kuryr")]
    nft_table: String,
    #[arg(long, default_value = "nft")]
    nft: PathBuf,
    /// Give up on one operation (or on a wait for nft) after this many seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Namespaces whose addresses are checked with `ip -n NS addr` after the run.
    #[arg(long, default_value_t = 5)]
    verify: usize,
}

// ------------------------------------------------------------------ statistics

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// p50/p99/mean/min/max in milliseconds (nearest rank), plus the samples.
fn stats(samples: &[Duration]) -> Value {
    if samples.is_empty() {
        return json!({"n": 0});
    }
    let mut v: Vec<f64> = samples.iter().copied().map(ms).collect();
    v.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        let k = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[k - 1]
    };
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    json!({
        "n": v.len(),
        "p50": rank(0.50),
        "p90": rank(0.90),
        "p99": rank(0.99),
        "mean": mean,
        "min": v[0],
        "max": v[v.len() - 1],
        "samples": samples.iter().copied().map(ms).collect::<Vec<_>>(),
    })
}

// ------------------------------------------------------------------ the API

struct Api {
    http: reqwest::Client,
    neutron: String,
    token: String,
}

impl Api {
    async fn login(args: &Args) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(args.timeout))
            .build()?;
        let password = args
            .password
            .as_deref()
            .context("--password (or OS_PASSWORD) is needed to reach the server")?;
        let body = json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": args.username, "domain": {"name": args.domain}, "password": password}}},
            "scope": {"project": {"name": args.project, "domain": {"name": args.domain}}}
        }});
        let url = format!("{}/identity/v3/auth/tokens", args.api.trim_end_matches('/'));
        let resp = http
            .post(&url)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            bail!("POST {url}: {status}: {text}");
        }
        let token = resp
            .headers()
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .context("Keystone answered without X-Subject-Token")?
            .to_string();
        Ok(Api {
            http,
            neutron: format!("{}/networking/v2.0", args.api.trim_end_matches('/')),
            token,
        })
    }

    async fn create_port(&self, body: Value) -> anyhow::Result<Value> {
        let url = format!("{}/ports", self.neutron);
        let resp = self
            .http
            .post(&url)
            .header("X-Auth-Token", &self.token)
            .json(&json!({ "port": body }))
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = resp.status();
        let text = resp.text().await.context("reading the port")?;
        if status.as_u16() != 201 {
            bail!("POST {url}: {status}: {text}");
        }
        let mut v: Value = serde_json::from_str(&text)
            .with_context(|| format!("POST {url} answered without JSON"))?;
        match v.get_mut("port") {
            Some(p) if p["id"].is_string() => Ok(p.take()),
            _ => bail!("POST {url}: no port in the answer: {text}"),
        }
    }

    async fn delete_port(&self, id: &str) -> anyhow::Result<()> {
        let url = format!("{}/ports/{id}", self.neutron);
        let resp = self
            .http
            .delete(&url)
            .header("X-Auth-Token", &self.token)
            .send()
            .await
            .with_context(|| format!("DELETE {url}"))?;
        let status = resp.status();
        if !status.is_success() && status.as_u16() != 404 {
            let text = resp.text().await.unwrap_or_default();
            bail!("DELETE {url}: {status}: {text}");
        }
        Ok(())
    }
}

fn first_ipv4(port: &Value) -> Option<String> {
    port["fixed_ips"]
        .as_array()?
        .iter()
        .filter_map(|f| f["ip_address"].as_str())
        .find(|ip| !ip.contains(':'))
        .map(str::to_string)
}

// ------------------------------------------------------------------ one bind

/// One timed operation: total = create + bind (kuryr); for CNI, total = bind.
struct Done {
    netns: String,
    total: Duration,
    create: Duration,
    bind: Duration,
    /// Addresses with prefix the operation reported.
    addresses: Vec<String>,
}

/// What to undo after the run.
enum Undo {
    Port(String),
    Cni { netns: String, container: String },
}

struct Bench<'a> {
    args: &'a Args,
    api: Option<Api>,
    agent: Option<LocalClient>,
    cni_config: Vec<u8>,
    undo: Mutex<Vec<Undo>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Bench<'_> {
    async fn kuryr_bind(&self, i: usize, netns: &str) -> anyhow::Result<Done> {
        let api = self.api.as_ref().context("no API")?;
        let agent = self.agent.as_ref().context("no agent socket")?;
        let network = self.args.network_id.as_deref().context("--network-id")?;
        let path = Path::new("/run/netns").join(netns);
        let t0 = Instant::now();
        let port = api
            .create_port(json!({"network_id": network, "name": format!("bind-bench-{i}")}))
            .await?;
        let t1 = Instant::now();
        let id = port["id"].as_str().unwrap_or_default().to_string();
        lock(&self.undo).push(Undo::Port(id.clone()));
        let bound = agent
            .bind(&id, &path, &self.args.ifname)
            .await
            .with_context(|| format!("binding port {id} into {netns}"))?;
        let t2 = Instant::now();
        Ok(Done {
            netns: netns.to_string(),
            total: t2 - t0,
            create: t1 - t0,
            bind: t2 - t1,
            addresses: bound.addresses,
        })
    }

    async fn cni(
        &self,
        command: &str,
        netns: &str,
        container: &str,
    ) -> anyhow::Result<std::process::Output> {
        let mut child = tokio::process::Command::new(&self.args.cni_plugin)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container)
            .env("CNI_NETNS", Path::new("/run/netns").join(netns))
            .env("CNI_IFNAME", &self.args.ifname)
            .env("CNI_PATH", &self.args.cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.args.cni_plugin.display()))?;
        let mut stdin = child.stdin.take().context("the plugin's stdin")?;
        stdin.write_all(&self.cni_config).await?;
        drop(stdin);
        let out = child.wait_with_output().await?;
        if !out.status.success() {
            bail!(
                "CNI {command} for {netns} exited with {}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }

    async fn cni_add(&self, i: usize, netns: &str) -> anyhow::Result<Done> {
        let container = format!("bind-bench-{}-{i}", std::process::id());
        let t0 = Instant::now();
        // Registered before the exec: a plugin that failed half-way is DEL'ed too.
        lock(&self.undo).push(Undo::Cni {
            netns: netns.to_string(),
            container: container.clone(),
        });
        let out = self.cni("ADD", netns, &container).await?;
        let t1 = Instant::now();
        let result: Value =
            serde_json::from_slice(&out.stdout).context("the CNI plugin printed no JSON result")?;
        let addresses = result["ips"]
            .as_array()
            .map(|ips| {
                ips.iter()
                    .filter_map(|ip| ip["address"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Done {
            netns: netns.to_string(),
            total: t1 - t0,
            create: Duration::ZERO,
            bind: t1 - t0,
            addresses,
        })
    }

    async fn one(&self, i: usize, netns: &str) -> anyhow::Result<Done> {
        let limit = Duration::from_secs(self.args.timeout);
        let work = async {
            match self.args.mode {
                Mode::Kuryr => self.kuryr_bind(i, netns).await,
                Mode::Cni => self.cni_add(i, netns).await,
                Mode::Sg => bail!("not a bind mode"),
            }
        };
        tokio::time::timeout(limit, work)
            .await
            .map_err(|_| anyhow::anyhow!("operation {i} in {netns} took over {limit:?}"))?
    }

    /// Undoes everything (unbind + delete ports, CNI DEL) with as many in flight
    /// as the binds had. Returns the errors and how long each unbind (kuryr: the
    /// agent's unbind call; the reference: the DEL exec) took.
    async fn cleanup(&self) -> (Vec<String>, Vec<Duration>) {
        let undo = std::mem::take(&mut *lock(&self.undo));
        let queue = Mutex::new(undo);
        let errors = Mutex::new(Vec::new());
        let unbinds = Mutex::new(Vec::new());
        let worker = || async {
            loop {
                let item = lock(&queue).pop();
                let Some(item) = item else { break };
                let res = match &item {
                    Undo::Port(id) => self.undo_port(id).await,
                    Undo::Cni { netns, container } => {
                        let t = Instant::now();
                        self.cni("DEL", netns, container)
                            .await
                            .map(|_| Some(t.elapsed()))
                    }
                };
                match res {
                    Ok(Some(took)) => lock(&unbinds).push(took),
                    Ok(None) => {}
                    Err(e) => lock(&errors).push(format!("cleanup: {e:#}")),
                }
            }
        };
        join_all((0..self.args.concurrency.max(1)).map(|_| worker())).await;
        (
            errors.into_inner().unwrap_or_else(|e| e.into_inner()),
            unbinds.into_inner().unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// Unbinds (timed) and deletes a port.
    async fn undo_port(&self, id: &str) -> anyhow::Result<Option<Duration>> {
        let mut took = None;
        if let Some(agent) = &self.agent {
            let t = Instant::now();
            // Not bound (a failed bind) is fine: the delete below is what matters.
            if agent.unbind(id).await.is_ok() {
                took = Some(t.elapsed());
            }
        }
        if let Some(api) = &self.api {
            api.delete_port(id).await?;
        }
        Ok(took)
    }
}

/// `ip -n NS addr`: the interface is up and carries every reported address.
async fn verify(netns: &str, ifname: &str, want: &[String]) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("ip")
        .args(["-j", "-n", netns, "addr", "show", "dev", ifname])
        .output()
        .await
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip -n {netns} addr show dev {ifname}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("ip -j output")?;
    let link = &v[0];
    let up = link["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "UP"));
    if !up {
        bail!("{ifname} in {netns} is not up");
    }
    let have: Vec<String> = link["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| Some(format!("{}/{}", i["local"].as_str()?, i["prefixlen"])))
                .collect()
        })
        .unwrap_or_default();
    if want.is_empty() {
        bail!("no address was reported for {ifname} in {netns}");
    }
    for w in want {
        if !have.contains(w) {
            bail!("{netns}: {w} missing on {ifname} (has {have:?})");
        }
    }
    Ok(())
}

async fn run_binds(args: &Args) -> anyhow::Result<Value> {
    let file = args.netns_file.as_ref().context("--netns-file")?;
    let text = std::fs::read_to_string(file).with_context(|| format!("{}", file.display()))?;
    let mut namespaces: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if let Some(n) = args.count {
        if n > namespaces.len() {
            bail!("--count {n} but only {} namespaces", namespaces.len());
        }
        namespaces.truncate(n);
    }
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let (api, agent, cni_config) = match args.mode {
        Mode::Kuryr => {
            let socket = args.agent_socket.as_ref().context("--agent-socket")?;
            (
                Some(Api::login(args).await?),
                Some(LocalClient::new(socket)),
                Vec::new(),
            )
        }
        _ => {
            let path = args.cni_config.as_ref().context("--cni-config")?;
            let cfg = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
            serde_json::from_slice::<Value>(&cfg).context("--cni-config is not JSON")?;
            (None, None, cfg)
        }
    };
    let bench = Bench {
        args,
        api,
        agent,
        cni_config,
        undo: Mutex::new(Vec::new()),
    };

    let next = AtomicUsize::new(0);
    let done = Mutex::new(Vec::new());
    let errors = Mutex::new(Vec::new());
    let started = Instant::now();
    let worker = || async {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(ns) = namespaces.get(i) else { break };
            match bench.one(i, ns).await {
                Ok(d) => lock(&done).push(d),
                Err(e) => lock(&errors).push(format!("{e:#}")),
            }
        }
    };
    join_all((0..args.concurrency).map(|_| worker())).await;
    let wall = started.elapsed();
    let done = done.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut errors = errors.into_inner().unwrap_or_else(|e| e.into_inner());

    // A sample spread over the run, checked before anything is undone.
    let mut verified = 0;
    if !done.is_empty() && args.verify > 0 {
        let k = args.verify.min(done.len());
        for j in 0..k {
            let d = &done[j * (done.len() - 1) / (k - 1).max(1)];
            match verify(&d.netns, &args.ifname, &d.addresses).await {
                Ok(()) => verified += 1,
                Err(e) => errors.push(format!("verify: {e:#}")),
            }
        }
    }
    let cleanup_started = Instant::now();
    let (cleanup_errors, unbinds) = bench.cleanup().await;
    errors.extend(cleanup_errors);
    let cleanup = cleanup_started.elapsed();

    let total: Vec<Duration> = done.iter().map(|d| d.total).collect();
    let create: Vec<Duration> = done.iter().map(|d| d.create).collect();
    let bind: Vec<Duration> = done.iter().map(|d| d.bind).collect();
    let mode = match args.mode {
        Mode::Kuryr => "kuryr",
        _ => "cni",
    };
    Ok(json!({
        "mode": mode,
        "count": namespaces.len(),
        "ok": done.len(),
        "concurrency": args.concurrency,
        "wall_s": wall.as_secs_f64(),
        "per_second": done.len() as f64 / wall.as_secs_f64().max(1e-9),
        "total_ms": stats(&total),
        "create_ms": if args.mode == Mode::Kuryr { stats(&create) } else { Value::Null },
        "bind_ms": stats(&bind),
        "unbind_ms": stats(&unbinds),
        "verified": verified,
        "example": done.first().map(|d| json!({"netns": d.netns, "addresses": d.addresses})),
        "cleanup_s": cleanup.as_secs_f64(),
        "errors": errors,
    }))
}

// ------------------------------------------------------------------ security groups

/// Whether `ip` is in the nft set (`nft get element` matches intervals too).
async fn in_set(args: &Args, set: &str, ip: &str) -> anyhow::Result<bool> {
    let mut cmd = tokio::process::Command::new(&args.nft);
    cmd.arg("get").arg("element");
    cmd.args(args.nft_table.split_whitespace());
    cmd.arg(set).arg(format!("{{ {ip} }}"));
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {}", args.nft.display()))?;
    if out.status.success() {
        return Ok(true);
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("No such file or directory") || err.contains("does not exist") {
        return Ok(false);
    }
    bail!("nft get element {set} {ip}: {}", err.trim())
}

/// Polls until `ip`'s membership is `want`; returns the time and the number of polls.
async fn wait_set(
    args: &Args,
    set: &str,
    ip: &str,
    want: bool,
    t0: Instant,
) -> anyhow::Result<(Duration, usize)> {
    let limit = Duration::from_secs(args.timeout);
    let mut polls = 0;
    loop {
        polls += 1;
        if in_set(args, set, ip).await? == want {
            return Ok((t0.elapsed(), polls));
        }
        if t0.elapsed() > limit {
            bail!(
                "{ip} still {} set {set} after {limit:?}",
                if want { "missing from" } else { "in" }
            );
        }
    }
}

async fn run_sg(args: &Args) -> anyhow::Result<Value> {
    let network = args.network_id.as_deref().context("--network-id")?;
    let group = args.security_group.as_deref().context("--security-group")?;
    let set = args.nft_set.as_deref().context("--nft-set")?;
    let rounds = args.count.unwrap_or(10);
    let api = Api::login(args).await?;

    // What one poll costs (the resolution of the figures below).
    let probe = Instant::now();
    let probes = 5;
    for _ in 0..probes {
        in_set(args, set, "192.0.2.1").await?;
    }
    let poll_cost = probe.elapsed() / probes;

    let mut add = Vec::new();
    let mut add_api = Vec::new();
    let mut del = Vec::new();
    let mut del_api = Vec::new();
    let mut polls = 0;
    let mut errors = Vec::new();
    for i in 0..rounds {
        let t0 = Instant::now();
        let port = api
            .create_port(
                json!({"network_id": network, "name": format!("sg-bench-{i}"),
                                "security_groups": [group]}),
            )
            .await?;
        add_api.push(t0.elapsed());
        let id = port["id"].as_str().unwrap_or_default().to_string();
        let round = async {
            let ip = first_ipv4(&port).context("the new port has no IPv4 address")?;
            let (t, n) = wait_set(args, set, &ip, true, t0).await?;
            add.push(t);
            polls += n;
            let t0 = Instant::now();
            api.delete_port(&id).await?;
            del_api.push(t0.elapsed());
            let (t, n) = wait_set(args, set, &ip, false, t0).await?;
            del.push(t);
            polls += n;
            anyhow::Ok(())
        };
        if let Err(e) = round.await {
            errors.push(format!("round {i}: {e:#}"));
            let _ = api.delete_port(&id).await;
        }
    }
    Ok(json!({
        "mode": "sg",
        "rounds": rounds,
        "set": set,
        "poll_ms": ms(poll_cost),
        "polls": polls,
        "add_ms": stats(&add),
        "add_api_ms": stats(&add_api),
        "delete_ms": stats(&del),
        "delete_api_ms": stats(&del_api),
        "errors": errors,
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let out = match args.mode {
        Mode::Sg => run_sg(&args).await?,
        _ => run_binds(&args).await?,
    };
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}
