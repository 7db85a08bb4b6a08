//! `kuryr-bench`: starts a `kuryr server` (release build next to this binary) on a
//! fresh data directory and prints port-create throughput and latency, list latency
//! and resident memory. With `--reference-url` it measures a real Neutron (noauth
//! endpoint) the same way in the same run and prints the ratios.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures::future::join_all;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "Benchmark kuryr server: port creates, lists and memory")]
struct Args {
    /// Sequential creates.
    #[arg(long, default_value_t = 1000)]
    sequential: usize,
    /// Creates with 16 concurrent clients (this network is the 10,000-port list).
    #[arg(long, default_value_t = 10_000)]
    concurrent: usize,
    /// Total ports for the memory figure.
    #[arg(long, default_value_t = 100_000)]
    total: usize,
    /// A real Neutron's noauth endpoint, e.g. http://127.0.0.1:19696/v2.0, measured the same way.
    #[arg(long)]
    reference_url: Option<String>,
    /// Sequential creates against the reference (it is slow).
    #[arg(long, default_value_t = 200)]
    reference_sequential: usize,
    /// Path of the kuryr binary (default: next to this one).
    #[arg(long)]
    kuryr: Option<std::path::PathBuf>,
}

struct Target {
    base: String,
    project: String,
    http: reqwest::Client,
}

impl Target {
    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("X-Project-Id", &self.project)
            .json(body)
            .send()
            .await?;
        let st = r.status().as_u16();
        Ok((st, r.json().await.unwrap_or(Value::Null)))
    }
    async fn get_bytes(&self, path: &str) -> anyhow::Result<usize> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header("X-Project-Id", &self.project)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("GET {path}: {}", r.status());
        }
        Ok(r.bytes().await?.len())
    }
    async fn put(&self, path: &str, body: &Value) -> anyhow::Result<u16> {
        let r = self
            .http
            .put(format!("{}{path}", self.base))
            .header("X-Project-Id", &self.project)
            .json(body)
            .send()
            .await?;
        Ok(r.status().as_u16())
    }
    async fn network(&self, cidr: &str) -> anyhow::Result<String> {
        let (st, n) = self
            .post(
                "/networks",
                &json!({"network": {"name": "bench", "project_id": self.project}}),
            )
            .await?;
        if st != 201 {
            bail!("network create: {st} {n}");
        }
        let id = n["network"]["id"]
            .as_str()
            .context("network id")?
            .to_string();
        let (st, s) = self
            .post(
                "/subnets",
                &json!({"subnet": {"network_id": id, "ip_version": 4, "cidr": cidr, "project_id": self.project}}),
            )
            .await?;
        if st != 201 {
            bail!("subnet create: {st} {s}");
        }
        Ok(id)
    }
    async fn create_port(&self, net: &str) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let (st, b) = self
            .post(
                "/ports",
                &json!({"port": {"network_id": net, "project_id": self.project}}),
            )
            .await?;
        if st != 201 {
            bail!("port create: {st} {b}");
        }
        Ok(t.elapsed())
    }
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    let idx = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[idx.min(v.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct CreateFigures {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

async fn sequential(t: &Target, net: &str, n: usize) -> anyhow::Result<CreateFigures> {
    let start = Instant::now();
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        lat.push(t.create_port(net).await?);
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    Ok(CreateFigures {
        rate,
        p50: percentile(lat.clone(), 0.5),
        p99: percentile(lat, 0.99),
    })
}

async fn concurrent(
    t: &Target,
    net: &str,
    n: usize,
    clients: usize,
) -> anyhow::Result<CreateFigures> {
    let start = Instant::now();
    let per = n / clients;
    let runs = (0..clients).map(|_| async move {
        let mut lat = Vec::with_capacity(per);
        for _ in 0..per {
            lat.push(t.create_port(net).await?);
        }
        anyhow::Ok(lat)
    });
    let mut lat = Vec::with_capacity(n);
    for r in join_all(runs).await {
        lat.extend(r?);
    }
    let rate = lat.len() as f64 / start.elapsed().as_secs_f64();
    Ok(CreateFigures {
        rate,
        p50: percentile(lat.clone(), 0.5),
        p99: percentile(lat, 0.99),
    })
}

async fn list_p50(t: &Target, path: &str, times: usize) -> anyhow::Result<(Duration, usize)> {
    let mut lat = Vec::new();
    let mut bytes = 0;
    for _ in 0..times {
        let s = Instant::now();
        bytes = t.get_bytes(path).await?;
        lat.push(s.elapsed());
    }
    Ok((percentile(lat, 0.5), bytes))
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_string)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

struct ServerProcess(Child);
impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let kuryr = match &args.kuryr {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("kuryr"),
    };
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(&kuryr)
        .args([
            "server",
            "--auth",
            "noauth",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", kuryr.display()))?;
    let pid = child.id();
    let _server = ServerProcess(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("kuryr server did not start");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let k = Target {
        base: format!("http://127.0.0.1:{port}/networking/v2.0"),
        project: "bench".into(),
        http: http.clone(),
    };
    if k.put(
        "/quotas/bench",
        &json!({"quota": {"port": -1, "network": -1, "subnet": -1}}),
    )
    .await?
        != 200
    {
        bail!("could not lift the port quota");
    }
    println!(
        "kuryr server {} (pid {pid}), embedded store with fsync on every commit; client and server on this machine ({} cores)",
        kuryr.display(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    let net_a = k.network("10.0.0.0/16").await?;
    let seq = sequential(&k, &net_a, args.sequential).await?;
    println!(
        "port create, sequential ({} ports):      {:>8.0} creates/s  p50 {:>6.2} ms  p99 {:>6.2} ms",
        args.sequential,
        seq.rate,
        ms(seq.p50),
        ms(seq.p99)
    );
    let net_b = k.network("10.1.0.0/16").await?;
    let conc = concurrent(&k, &net_b, args.concurrent, 16).await?;
    println!(
        "port create, 16 concurrent clients ({}): {:>8.0} creates/s  p50 {:>6.2} ms  p99 {:>6.2} ms",
        args.concurrent,
        conc.rate,
        ms(conc.p50),
        ms(conc.p99)
    );

    let list_a = format!("/ports?network_id={net_a}");
    let (l1, b1) = list_p50(&k, &list_a, 21).await?;
    let (l1f, _) = list_p50(&k, &format!("{list_a}&fields=id"), 21).await?;
    let list_b = format!("/ports?network_id={net_b}");
    let (l10, b10) = list_p50(&k, &list_b, 9).await?;
    let (l10f, _) = list_p50(&k, &format!("{list_b}&fields=id"), 9).await?;
    println!(
        "list {} ports:  p50 {:>7.2} ms ({} KB)   fields=id p50 {:>6.2} ms",
        args.sequential,
        ms(l1),
        b1 / 1024,
        ms(l1f)
    );
    println!(
        "list {} ports: p50 {:>7.2} ms ({} KB)  fields=id p50 {:>6.2} ms",
        args.concurrent,
        ms(l10),
        b10 / 1024,
        ms(l10f)
    );
    let have = args.sequential + args.concurrent;
    println!("resident memory at {have} ports: {:.1} MB", rss_mb(pid));

    // Fill up to the total with bulk creates (500 per request, 8 in flight).
    let net_c = k.network("10.128.0.0/9").await?;
    let mut remaining = args.total.saturating_sub(have);
    let fill_start = Instant::now();
    while remaining > 0 {
        let sizes: Vec<usize> = (0..8)
            .map(|_| {
                let n = remaining.min(500);
                remaining -= n;
                n
            })
            .filter(|n| *n > 0)
            .collect();
        let batch = sizes.into_iter().map(|n| {
            let body =
                json!({"ports": (0..n).map(|_| json!({"network_id": net_c, "project_id": "bench"})).collect::<Vec<_>>()});
            let k = &k;
            async move {
                let (st, b) = k.post("/ports", &body).await?;
                if st != 201 {
                    bail!("bulk create: {st} {b}");
                }
                anyhow::Ok(())
            }
        });
        for r in join_all(batch.collect::<Vec<_>>()).await {
            r?;
        }
    }
    let filled = args.total.saturating_sub(have);
    if filled > 0 {
        println!(
            "bulk fill: {filled} ports in {:.1} s ({:.0} ports/s)",
            fill_start.elapsed().as_secs_f64(),
            filled as f64 / fill_start.elapsed().as_secs_f64()
        );
    }
    println!(
        "resident memory at {} ports: {:.1} MB",
        args.total.max(have),
        rss_mb(pid)
    );
    let (lall, ball) = list_p50(&k, &format!("{list_a}&fields=id"), 5).await?;
    println!(
        "list {} ports (fields=id) with {} ports stored: p50 {:.2} ms ({} KB)",
        args.sequential,
        args.total.max(have),
        ms(lall),
        ball / 1024
    );

    if let Some(url) = &args.reference_url {
        let r = Target {
            base: url.trim_end_matches('/').to_string(),
            project: "bench-reference".into(),
            http: http.clone(),
        };
        let _ = r
            .put(
                "/quotas/bench-reference",
                &json!({"quota": {"port": -1, "network": -1, "subnet": -1}}),
            )
            .await;
        let rnet = r.network("10.99.0.0/16").await?;
        let rseq = sequential(&r, &rnet, args.reference_sequential).await?;
        let rnet2 = r.network("10.98.0.0/16").await?;
        let rconc = concurrent(&r, &rnet2, args.reference_sequential, 16).await?;
        // Top the first network up to the same 1,000 ports as kuryr's list.
        let more = args.sequential.saturating_sub(args.reference_sequential);
        let top = concurrent(&r, &rnet, more.max(16), 16).await;
        if let Err(e) = top {
            println!("reference top-up failed: {e}");
        }
        let (rl1, _) = list_p50(&r, &format!("/ports?network_id={rnet}"), 5).await?;
        println!();
        println!("reference Neutron at {url}:");
        println!(
            "  port create sequential:      {:>8.1} creates/s  p50 {:>7.2} ms   kuryr is {:.0}x faster",
            rseq.rate,
            ms(rseq.p50),
            seq.rate / rseq.rate
        );
        println!(
            "  port create 16 concurrent:   {:>8.1} creates/s  p50 {:>7.2} ms   kuryr is {:.0}x faster",
            rconc.rate,
            ms(rconc.p50),
            conc.rate / rconc.rate
        );
        println!(
            "  list {} ports:              p50 {:>7.2} ms   kuryr is {:.0}x faster",
            args.sequential,
            ms(rl1),
            ms(rl1) / ms(l1)
        );
    }
    Ok(())
}
