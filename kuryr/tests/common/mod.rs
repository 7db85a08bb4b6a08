//! A `kuryr server` process for tests: its own port and data directory, killed on drop.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub struct Server {
    pub url: String,
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    extra: Vec<String>,
}

impl Server {
    /// Starts `kuryr server --auth noauth` (plus `extra` arguments).
    pub fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        // Port 0 on the first start: the kernel picks it, so no other test can race
        // for it; restarts reuse the port the server reported.
        let mut s = Server {
            url: String::new(),
            port: 0,
            dir,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        s.spawn();
        s
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn spawn(&mut self) {
        let starts_before = self.log().matches("kuryr server ready").count();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_kuryr"))
            .arg("server")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--auth", "noauth", "--admin-password", "test-admin-pw"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start kuryr server");
        self.child = Some(child);
        self.wait_ready(starts_before);
    }

    /// Waits for this start's "ready" line (the log is appended across restarts)
    /// and takes the port from it.
    fn wait_ready(&mut self, starts_before: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = self.log();
            if let Some(line) = log
                .lines()
                .filter(|l| l.contains("kuryr server ready"))
                .nth(starts_before)
            {
                let port = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("listen="))
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("no port in the ready line: {line}"));
                self.port = port;
                self.url = format!("http://127.0.0.1:{port}");
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("kuryr server exited with {status}; log:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "kuryr server not ready in 60 s; log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn net(&self, path: &str) -> String {
        format!("{}/networking/v2.0{}", self.url, path)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .expect("http client")
}

/// POSTs JSON as project `project` (noauth mode) and returns status and body.
pub async fn post(c: &reqwest::Client, url: &str, project: &str, body: Value) -> (u16, Value) {
    let r = c
        .post(url)
        .header("X-Project-Id", project)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub async fn get(c: &reqwest::Client, url: &str, project: &str) -> (u16, Value) {
    let r = c
        .get(url)
        .header("X-Project-Id", project)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub async fn delete(c: &reqwest::Client, url: &str, project: &str) -> u16 {
    c.delete(url)
        .header("X-Project-Id", project)
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

/// Creates a network and a subnet; returns (network id, subnet id).
pub async fn network_with_subnet(
    s: &Server,
    c: &reqwest::Client,
    project: &str,
    subnet: Value,
) -> (String, String) {
    let (st, n) = post(
        c,
        &s.net("/networks"),
        project,
        json!({"network": {"name": "t"}}),
    )
    .await;
    assert_eq!(st, 201, "{n}");
    let net_id = n["network"]["id"].as_str().expect("network id").to_string();
    let mut body = subnet;
    body["network_id"] = json!(net_id);
    let (st, sn) = post(c, &s.net("/subnets"), project, json!({ "subnet": body })).await;
    assert_eq!(st, 201, "{sn}");
    (
        net_id,
        sn["subnet"]["id"].as_str().expect("subnet id").to_string(),
    )
}
