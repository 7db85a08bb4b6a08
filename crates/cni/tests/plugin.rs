//! The `kuryr-cni` binary run as a runtime runs it (environment, stdin, stdout,
//! exit code) against a fake agent on a temporary unix socket. The fake only
//! records what the plugin sent and answers canned replies: the real agent's
//! daemon is tested in the agent crate.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Value, json};

const PLUGIN: &str = env!("CARGO_BIN_EXE_kuryr-cni");
const ALL_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A directory under the system's temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("kuryr-cni-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How the fake agent answers every request.
#[derive(Clone)]
enum Reply {
    /// A status and a JSON (or not) body with Content-Length.
    Body(u16, String),
    /// The same, chunked.
    Chunked(u16, String),
    /// Reads the request, then never answers (until the test ends).
    Hang,
    /// Reads the request, then closes without a word.
    Close,
}

/// What the plugin sent.
struct Request {
    head: String,
    body: Value,
}

struct FakeAgent {
    _dir: TempDir,
    socket: PathBuf,
    requests: Receiver<Request>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeAgent {
    fn start(reply: Reply) -> FakeAgent {
        let dir = TempDir::new();
        let socket = dir.0.join("agent.sock");
        let listener = UnixListener::bind(&socket).unwrap_or_else(|e| panic!("bind: {e}"));
        let (tx, requests) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || serve(listener, reply, tx, stopping));
        FakeAgent {
            _dir: dir,
            socket,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn socket(&self) -> &str {
        self.socket.to_str().unwrap_or_default()
    }

    /// The request the plugin sent (the plugin has exited by then, so it is
    /// already queued if it was sent at all).
    fn request(&self) -> Request {
        self.requests
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("the plugin sent no request: {e}"))
    }

    /// The plugin did not call the agent.
    fn assert_no_request(&self) {
        match self.requests.try_recv() {
            Err(_) => {}
            Ok(r) => panic!("unexpected request to the agent: {}", r.body),
        }
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = UnixStream::connect(&self.socket);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: UnixListener, reply: Reply, tx: Sender<Request>, stop: Arc<AtomicBool>) {
    let mut held = Vec::new();
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(mut stream) = stream else { continue };
        let Some(request) = read_request(&mut stream) else {
            continue;
        };
        let _ = tx.send(request);
        let raw = match &reply {
            Reply::Body(status, body) => format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            ),
            Reply::Chunked(status, body) => {
                let (a, b) = body.split_at(body.len() / 2);
                format!(
                    "HTTP/1.1 {status} X\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                    a.len(),
                    b.len()
                )
            }
            Reply::Hang => {
                held.push(stream);
                continue;
            }
            Reply::Close => continue,
        };
        let _ = stream.write_all(raw.as_bytes());
    }
}

fn read_request(stream: &mut UnixStream) -> Option<Request> {
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))?
        .trim()
        .parse()
        .ok()?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        head,
        body: serde_json::from_slice(&body).ok()?,
    })
}

/// What the plugin did.
struct Outcome {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }

    /// Succeeded with nothing on stdout.
    fn assert_silent_success(&self) {
        assert!(self.ok, "failed: {} {}", self.stdout, self.stderr);
        assert_eq!(self.stdout, "", "stderr: {}", self.stderr);
    }

    /// Failed with a CNI error of `code` in `version`; returns it.
    fn assert_error(&self, code: u64, version: &str) -> Value {
        assert!(!self.ok, "succeeded: {}", self.stdout);
        let e = self.json();
        assert_eq!(e["code"], code, "{e}");
        assert_eq!(e["cniVersion"], version, "{e}");
        assert!(e["msg"].is_string() && e["details"].is_string(), "{e}");
        let keys: Vec<_> = e
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        assert_eq!(keys, ["cniVersion", "code", "details", "msg"], "{e}");
        e
    }
}

fn run(env: &[(&str, &str)], stdin: &str) -> Outcome {
    let mut child = Command::new(PLUGIN)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{PLUGIN}: {e}"));
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin.as_bytes());
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{PLUGIN}: {e}"));
    Outcome {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The environment of an attachment verb.
fn attach_env<'a>(command: &'a str, socket: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "ctr-1"),
        ("CNI_NETNS", "/run/netns/ctr-1"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=u-1",
        ),
        ("CNI_PATH", "/opt/cni/bin"),
        ("KURYR_CNI_SOCKET", socket),
    ]
}

/// The environment of GC or STATUS, as libcni sets it (attachment variables empty).
fn network_env<'a>(command: &'a str, socket: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", ""),
        ("CNI_NETNS", ""),
        ("CNI_IFNAME", ""),
        ("CNI_ARGS", ""),
        ("CNI_PATH", "/opt/cni/bin"),
        ("KURYR_CNI_SOCKET", socket),
    ]
}

fn with<'a>(
    mut env: Vec<(&'a str, &'a str)>,
    key: &'a str,
    value: &'a str,
) -> Vec<(&'a str, &'a str)> {
    env.retain(|(k, _)| *k != key);
    env.push((key, value));
    env
}

fn without<'a>(mut env: Vec<(&'a str, &'a str)>, key: &str) -> Vec<(&'a str, &'a str)> {
    env.retain(|(k, _)| *k != key);
    env
}

fn conf(version: &str) -> Value {
    json!({"cniVersion": version, "name": "kuryr", "type": "kuryr-cni",
           "kuryr_conf": "/etc/kuryr/kuryr.conf", "debug": true})
}

fn conf_with(version: &str, key: &str, value: Value) -> String {
    let mut c = conf(version);
    c[key] = value;
    c.to_string()
}

/// The agent's ADD answer: one interface in the container, every 1.1.0 field.
fn agent_result() -> Value {
    json!({
        "interfaces": [{"name": "eth0", "mac": "fa:16:3e:11:22:33", "mtu": 1450,
                        "sandbox": "/run/netns/ctr-1"}],
        "ips": [{"address": "10.0.0.5/24", "gateway": "10.0.0.1", "interface": 0},
                {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 0}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.1", "mtu": 1400}],
        "dns": {"nameservers": ["10.0.0.2"], "search": ["default.svc"]}
    })
}

fn ok_agent() -> FakeAgent {
    FakeAgent::start(Reply::Body(200, "{}".into()))
}

fn add_agent() -> FakeAgent {
    FakeAgent::start(Reply::Body(200, agent_result().to_string()))
}

/// A 0.4.0 result of two plugins before us: a bridge and a veth.
fn prev_result_040() -> Value {
    json!({
        "cniVersion": "0.4.0",
        "interfaces": [{"name": "cni0", "mac": "00:11:22:33:44:55"},
                       {"name": "veth1", "mac": "55:44:33:22:11:11", "sandbox": "/run/netns/ctr-1"}],
        "ips": [{"version": "4", "address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 1}],
        "routes": [{"dst": "10.1.0.0/16"}],
        "dns": {"nameservers": ["10.1.0.1"]}
    })
}

#[test]
fn version_is_answered_locally() {
    let out = run(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion": "0.4.0"}"#);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        out.json(),
        json!({"cniVersion": "0.4.0", "supportedVersions": ALL_VERSIONS})
    );
    // Without a version on input: the one we implement.
    let out = run(&[("CNI_COMMAND", "VERSION")], "");
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.json()["cniVersion"], "1.1.0");
    // The agent is never asked.
    let agent = ok_agent();
    let out = run(
        &[
            ("CNI_COMMAND", "VERSION"),
            ("KURYR_CNI_SOCKET", agent.socket()),
        ],
        &conf("1.1.0").to_string(),
    );
    assert!(out.ok);
    agent.assert_no_request();
}

#[test]
fn add_in_every_version() {
    let agent = add_agent();
    for version in ALL_VERSIONS {
        let out = run(
            &attach_env("ADD", agent.socket()),
            &conf(version).to_string(),
        );
        assert!(out.ok, "{version}: {} {}", out.stdout, out.stderr);
        let req = agent.request();
        assert!(
            req.head.starts_with("POST /v1/cni HTTP/1.1\r\n"),
            "{}",
            req.head
        );
        for h in [
            "Host: kuryr-agent",
            "Connection: close",
            "Content-Type: application/json",
        ] {
            assert!(req.head.contains(h), "{h} missing: {}", req.head);
        }
        assert_eq!(
            req.body,
            json!({"command": "ADD", "container_id": "ctr-1", "netns": "/run/netns/ctr-1",
                   "ifname": "eth0",
                   "args": {"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": "default",
                            "K8S_POD_NAME": "web-0", "K8S_POD_UID": "u-1"},
                   "config": conf(version)}),
            "{version}"
        );

        let result = out.json();
        assert_eq!(result["cniVersion"], version);
        let v0 = version.starts_with("0.");
        let v11 = version == "1.1.0";
        let family = |i: usize| result["ips"][i].get("version").cloned();
        assert_eq!(family(0), v0.then(|| json!("4")), "{version}: {result}");
        assert_eq!(family(1), v0.then(|| json!("6")), "{version}: {result}");
        assert_eq!(result["ips"][1]["address"], "fd00::5/64");
        assert_eq!(result["ips"][0]["interface"], 0);
        assert_eq!(result["interfaces"][0]["sandbox"], "/run/netns/ctr-1");
        assert_eq!(
            result["interfaces"][0].get("mtu").is_some(),
            v11,
            "{version}: {result}"
        );
        assert_eq!(
            result["routes"][0].get("mtu").is_some(),
            v11,
            "{version}: {result}"
        );
        assert_eq!(result["routes"][0]["gw"], "10.0.0.1");
        assert_eq!(result["dns"], agent_result()["dns"]);
    }
}

#[test]
fn add_reads_a_chunked_answer() {
    let agent = FakeAgent::start(Reply::Chunked(200, agent_result().to_string()));
    let out = run(
        &attach_env("ADD", agent.socket()),
        &conf("1.1.0").to_string(),
    );
    assert!(out.ok, "{} {}", out.stdout, out.stderr);
    let mut want = agent_result();
    want["cniVersion"] = json!("1.1.0");
    assert_eq!(out.json(), want);
}

#[test]
fn add_chained_after_a_prev_result() {
    let agent = add_agent();
    let stdin = conf_with("0.4.0", "prevResult", prev_result_040());
    let out = run(&attach_env("ADD", agent.socket()), &stdin);
    assert!(out.ok, "{} {}", out.stdout, out.stderr);

    // The agent sees the prevResult in the 1.1.0 shape.
    let sent = agent.request().body;
    assert_eq!(
        sent["config"]["prevResult"],
        json!({"cniVersion": "1.1.0",
               "interfaces": [{"name": "cni0", "mac": "00:11:22:33:44:55"},
                              {"name": "veth1", "mac": "55:44:33:22:11:11", "sandbox": "/run/netns/ctr-1"}],
               "ips": [{"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 1}],
               "routes": [{"dst": "10.1.0.0/16"}],
               "dns": {"nameservers": ["10.1.0.1"]}})
    );
    assert_eq!(sent["config"]["kuryr_conf"], "/etc/kuryr/kuryr.conf");

    // The runtime gets theirs then ours, in 0.4.0, our index shifted past theirs.
    let r = out.json();
    assert_eq!(r["cniVersion"], "0.4.0");
    let names: Vec<_> = r["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| i["name"].clone())
        .collect();
    assert_eq!(names, [json!("cni0"), json!("veth1"), json!("eth0")]);
    let idx: Vec<_> = r["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| i["interface"].clone())
        .collect();
    assert_eq!(idx, [json!(1), json!(2), json!(2)]);
    assert_eq!(r["ips"][0]["version"], "4");
    assert_eq!(r["routes"].as_array().map(Vec::len), Some(2));
    assert_eq!(r["dns"], agent_result()["dns"], "ours is set, so it wins");
}

#[test]
fn del_tolerates_a_gone_netns_and_a_broken_prev_result() {
    let agent = ok_agent();
    // Positive control: everything there, prevResult converted.
    let stdin = conf_with("1.0.0", "prevResult", prev_result_040());
    let out = run(&attach_env("DEL", agent.socket()), &stdin);
    out.assert_silent_success();
    let sent = agent.request().body;
    assert_eq!(sent["command"], "DEL");
    assert_eq!(sent["netns"], "/run/netns/ctr-1");
    assert_eq!(sent["config"]["prevResult"]["cniVersion"], "1.1.0");

    // No netns (empty, as libcni passes it, or unset): still a DEL, netns null.
    for env in [
        with(attach_env("DEL", agent.socket()), "CNI_NETNS", ""),
        without(attach_env("DEL", agent.socket()), "CNI_NETNS"),
    ] {
        run(&env, &conf("1.1.0").to_string()).assert_silent_success();
        let sent = agent.request().body;
        assert_eq!(sent["netns"], Value::Null);
        assert_eq!(sent["container_id"], "ctr-1");
    }

    // A prevResult that does not decode is dropped, not fatal.
    let stdin = conf_with(
        "1.1.0",
        "prevResult",
        json!({"ips": [{"address": "nonsense"}]}),
    );
    run(&attach_env("DEL", agent.socket()), &stdin).assert_silent_success();
    assert!(agent.request().body["config"].get("prevResult").is_none());
    // ... while ADD refuses it (code 6) without calling the agent.
    run(&attach_env("ADD", agent.socket()), &stdin).assert_error(6, "1.1.0");
    agent.assert_no_request();
}

#[test]
fn check_converts_an_old_prev_result() {
    let agent = ok_agent();
    for version in ["0.4.0", "1.0.0", "1.1.0"] {
        let mut prev = prev_result_040();
        if version != "0.4.0" {
            // Results without cniVersion are read in the netconf's version.
            prev.as_object_mut().map(|o| o.remove("cniVersion"));
        }
        let stdin = conf_with(version, "prevResult", prev);
        run(&attach_env("CHECK", agent.socket()), &stdin).assert_silent_success();
        let sent = agent.request().body;
        assert_eq!(sent["command"], "CHECK");
        let prev = &sent["config"]["prevResult"];
        assert_eq!(prev["cniVersion"], "1.1.0", "{version}");
        assert_eq!(prev["ips"][0].get("version"), None, "{version}: {prev}");
        assert_eq!(prev["ips"][0]["interface"], 1);
    }

    // CHECK came in 0.4.0.
    let stdin = conf_with("0.3.1", "prevResult", prev_result_040());
    let e = run(&attach_env("CHECK", agent.socket()), &stdin).assert_error(1, "0.3.1");
    assert!(
        e["msg"].as_str().is_some_and(|m| m.contains("CHECK")),
        "{e}"
    );
    // CHECK without prevResult is an invalid config.
    run(
        &attach_env("CHECK", agent.socket()),
        &conf("1.1.0").to_string(),
    )
    .assert_error(7, "1.1.0");
    // A prevResult of an unsupported version.
    let stdin = conf_with(
        "1.1.0",
        "prevResult",
        json!({"cniVersion": "0.2.0", "ip4": {}}),
    );
    run(&attach_env("CHECK", agent.socket()), &stdin).assert_error(1, "1.1.0");
    agent.assert_no_request();
}

#[test]
fn status_and_gc_are_forwarded() {
    let agent = ok_agent();
    run(
        &network_env("STATUS", agent.socket()),
        &conf("1.1.0").to_string(),
    )
    .assert_silent_success();
    let sent = agent.request().body;
    assert_eq!(
        sent,
        json!({"command": "STATUS", "container_id": null, "netns": null, "ifname": null,
               "args": {}, "config": conf("1.1.0")})
    );

    let valid = json!([{"containerID": "ctr-1", "ifname": "eth0"},
                       {"containerID": "ctr-2", "ifname": "eth1"}]);
    let mut gc = conf("1.1.0");
    gc["cni.dev/valid-attachments"] = valid.clone();
    gc["cni.dev/attachments"] = valid.clone();
    run(&network_env("GC", agent.socket()), &gc.to_string()).assert_silent_success();
    let sent = agent.request().body;
    assert_eq!(sent["command"], "GC");
    assert_eq!(sent["container_id"], Value::Null);
    assert_eq!(sent["config"]["cni.dev/valid-attachments"], valid);

    // Both need 1.1.0; GC needs CNI_PATH.
    for verb in ["STATUS", "GC"] {
        let e = run(
            &network_env(verb, agent.socket()),
            &conf("1.0.0").to_string(),
        );
        let e = e.assert_error(1, "1.0.0");
        assert!(e["msg"].as_str().is_some_and(|m| m.contains(verb)), "{e}");
    }
    let e = run(
        &without(network_env("GC", agent.socket()), "CNI_PATH"),
        &gc.to_string(),
    );
    let e = e.assert_error(4, "1.1.0");
    assert!(
        e["msg"].as_str().is_some_and(|m| m.contains("CNI_PATH")),
        "{e}"
    );
    // STATUS does not need CNI_PATH.
    run(
        &without(network_env("STATUS", agent.socket()), "CNI_PATH"),
        &conf("1.1.0").to_string(),
    )
    .assert_silent_success();
    agent.request();
    agent.assert_no_request();
}

#[test]
fn environment_errors_are_code_4() {
    let agent = add_agent();
    let stdin = conf("1.0.0").to_string();
    // Positive control.
    assert!(run(&attach_env("ADD", agent.socket()), &stdin).ok);
    agent.request();

    let base = || attach_env("ADD", "/nonexistent/agent.sock");
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (without(base(), "CNI_COMMAND"), "CNI_COMMAND"),
        (with(base(), "CNI_COMMAND", "add"), "CNI_COMMAND"),
        (with(base(), "CNI_COMMAND", "DELETE"), "CNI_COMMAND"),
        (without(base(), "CNI_NETNS"), "CNI_NETNS"),
        (with(base(), "CNI_CONTAINERID", ""), "CNI_CONTAINERID"),
        (without(base(), "CNI_IFNAME"), "CNI_IFNAME"),
        (with(base(), "CNI_CONTAINERID", "-ctr"), "CNI_CONTAINERID"),
        (with(base(), "CNI_CONTAINERID", "ctr/1"), "CNI_CONTAINERID"),
        (
            with(base(), "CNI_IFNAME", "a-very-long-name0"),
            "CNI_IFNAME",
        ),
        (with(base(), "CNI_IFNAME", "eth:0"), "CNI_IFNAME"),
        (with(base(), "CNI_IFNAME", ".."), "CNI_IFNAME"),
        (with(base(), "CNI_ARGS", "K8S_POD_NAME"), "CNI_ARGS"),
        (
            with(base(), "KURYR_CNI_TIMEOUT", "soon"),
            "KURYR_CNI_TIMEOUT",
        ),
    ];
    for (env, var) in cases {
        let out = run(&env, &stdin);
        let e = out.assert_error(4, "1.0.0");
        assert!(
            e["msg"].as_str().is_some_and(|m| m.contains(var)),
            "{var}: {e}"
        );
    }
}

#[test]
fn stdin_errors() {
    let agent = ok_agent();
    let env = attach_env("DEL", agent.socket());
    // Positive control.
    run(&env, &conf("0.3.0").to_string()).assert_silent_success();
    agent.request();

    let cases: [(&str, u64, &str); 10] = [
        ("{not json", 6, "1.1.0"),
        ("", 6, "1.1.0"),
        (r#"["cniVersion", "1.1.0"]"#, 6, "1.1.0"),
        (
            r#"{"cniVersion": "0.3.0", "name": 7, "type": "kuryr-cni"}"#,
            6,
            "0.3.0",
        ),
        (
            r#"{"cniVersion": "0.3.0", "type": "kuryr-cni"}"#,
            7,
            "0.3.0",
        ),
        (
            r#"{"cniVersion": "1.0.0", "name": "bad name", "type": "kuryr-cni"}"#,
            7,
            "1.0.0",
        ),
        (r#"{"cniVersion": "0.4.0", "name": "kuryr"}"#, 7, "0.4.0"),
        (r#"{"name": "kuryr", "type": "kuryr-cni"}"#, 1, "1.1.0"),
        (
            r#"{"cniVersion": "0.2.0", "name": "kuryr", "type": "kuryr-cni"}"#,
            1,
            "1.1.0",
        ),
        (
            r#"{"cniVersion": "1.2.0", "name": "kuryr", "type": "kuryr-cni"}"#,
            1,
            "1.1.0",
        ),
    ];
    for (stdin, code, version) in cases {
        let out = run(&env, stdin);
        assert!(!out.stderr.is_empty(), "a log line on stderr");
        out.assert_error(code, version);
    }
    agent.assert_no_request();
}

#[test]
fn an_unreachable_agent_is_try_again_later_or_not_available() {
    let dir = TempDir::new();
    let missing = dir.0.join("missing.sock");
    let missing = missing.to_str().unwrap_or_default();
    // A socket file nobody listens on: connection refused.
    let refused = dir.0.join("refused.sock");
    drop(UnixListener::bind(&refused).unwrap_or_else(|e| panic!("{e}")));
    let refused = refused.to_str().unwrap_or_default();
    let live = ok_agent();

    let check_conf = conf_with("1.1.0", "prevResult", prev_result_040());
    let cases = [
        (attach_env("ADD", ""), conf("1.1.0").to_string(), 11),
        (attach_env("DEL", ""), conf("1.1.0").to_string(), 11),
        (attach_env("CHECK", ""), check_conf, 11),
        (network_env("GC", ""), conf("1.1.0").to_string(), 11),
        (network_env("STATUS", ""), conf("1.1.0").to_string(), 50),
    ];
    for (env, stdin, code) in cases {
        let verb = env[0].1;
        for socket in [missing, refused] {
            let e = run(&with_socket(env.clone(), socket), &stdin).assert_error(code, "1.1.0");
            assert!(
                e["details"].as_str().is_some_and(|d| d.contains(socket)),
                "{verb}: the details name the socket: {e}"
            );
        }
        // Positive control: the same call with the agent there.
        run(&with_socket(env, live.socket()), &stdin).assert_silent_success_unless_add(verb);
        assert_eq!(live.request().body["command"], verb);
    }
}

trait SuccessUnlessAdd {
    fn assert_silent_success_unless_add(&self, verb: &str);
}

impl SuccessUnlessAdd for Outcome {
    /// ADD answered `{}` prints an empty result; the others print nothing.
    fn assert_silent_success_unless_add(&self, verb: &str) {
        if verb == "ADD" {
            assert!(self.ok, "{}", self.stderr);
            assert_eq!(self.json(), json!({"cniVersion": "1.1.0"}));
        } else {
            self.assert_silent_success();
        }
    }
}

#[test]
fn agent_errors_pass_through() {
    let cases = [
        (
            503,
            json!({"code": 11, "msg": "no port for the pod yet", "details": "K8S_POD_UID=u-1"}),
        ),
        (
            500,
            json!({"code": 107, "msg": "binding failed", "details": "eth0 exists"}),
        ),
        (
            404,
            json!({"code": 3, "msg": "container unknown", "details": ""}),
        ),
    ];
    for (status, body) in cases {
        let agent = FakeAgent::start(Reply::Body(status, body.to_string()));
        let out = run(
            &attach_env("ADD", agent.socket()),
            &conf("0.4.0").to_string(),
        );
        let e = out.assert_error(body["code"].as_u64().unwrap_or_default(), "0.4.0");
        assert_eq!(e["msg"], body["msg"]);
        assert_eq!(e["details"], body["details"]);
        agent.request();
    }
    // A CNI error without details, chunked.
    let agent = FakeAgent::start(Reply::Chunked(
        503,
        r#"{"code": 51, "msg": "uplink down"}"#.into(),
    ));
    let e = run(
        &network_env("STATUS", agent.socket()),
        &conf("1.1.0").to_string(),
    )
    .assert_error(51, "1.1.0");
    assert_eq!(e["msg"], "uplink down");
    assert_eq!(e["details"], "");
}

#[test]
fn answers_that_are_not_cni_are_io_failures() {
    // (the answer, whether STATUS fails on it too: a JSON 200 is fine for it)
    let cases = [
        (Reply::Body(200, "<html>hello</html>".into()), true),
        (
            Reply::Body(200, r#"{"ips": [{"address": "10.0.0.5"}]}"#.into()),
            false,
        ),
        (Reply::Body(404, "Not Found".into()), true),
        (
            Reply::Body(422, r#"{"error": "missing field `command`"}"#.into()),
            true,
        ),
    ];
    for (reply, status_fails) in cases {
        let agent = FakeAgent::start(reply);
        let e = run(
            &attach_env("ADD", agent.socket()),
            &conf("1.1.0").to_string(),
        )
        .assert_error(5, "1.1.0");
        assert!(
            e["details"].as_str().is_some_and(|d| d.contains("HTTP")),
            "{e}"
        );
        // STATUS: the plugin is not available.
        let status = run(
            &network_env("STATUS", agent.socket()),
            &conf("1.1.0").to_string(),
        );
        if status_fails {
            status.assert_error(50, "1.1.0");
        } else {
            status.assert_silent_success();
        }
    }
    // Positive control: a well-formed answer.
    let agent = add_agent();
    assert!(
        run(
            &attach_env("ADD", agent.socket()),
            &conf("1.1.0").to_string()
        )
        .ok
    );
}

#[test]
fn a_stuck_or_vanishing_agent_is_try_again_later() {
    for reply in [Reply::Hang, Reply::Close] {
        let agent = FakeAgent::start(reply);
        let env = with(attach_env("ADD", ""), "KURYR_CNI_TIMEOUT", "1");
        let env: Vec<_> = with_socket(env, agent.socket());
        let e = run(&env, &conf("1.1.0").to_string()).assert_error(11, "1.1.0");
        assert!(
            e["details"]
                .as_str()
                .is_some_and(|d| d.contains(agent.socket())),
            "{e}"
        );
        let status = with_socket(
            with(network_env("STATUS", ""), "KURYR_CNI_TIMEOUT", "1"),
            agent.socket(),
        );
        run(&status, &conf("1.1.0").to_string()).assert_error(50, "1.1.0");
    }
    // Positive control: the same timeout with an agent that answers.
    let agent = add_agent();
    let env = with_socket(
        with(attach_env("ADD", ""), "KURYR_CNI_TIMEOUT", "1"),
        agent.socket(),
    );
    assert!(run(&env, &conf("1.1.0").to_string()).ok);
}

fn with_socket<'a>(mut env: Vec<(&'a str, &'a str)>, socket: &'a str) -> Vec<(&'a str, &'a str)> {
    env.retain(|(k, _)| *k != "KURYR_CNI_SOCKET");
    env.push(("KURYR_CNI_SOCKET", socket));
    env
}

#[test]
fn the_socket_comes_from_the_netconf_unless_overridden() {
    let agent = ok_agent();
    let stdin = conf_with("1.1.0", "daemon_socket", json!(agent.socket()));
    let env = without(attach_env("DEL", ""), "KURYR_CNI_SOCKET");
    run(&env, &stdin).assert_silent_success();
    assert_eq!(agent.request().body["command"], "DEL");
    // The environment wins over the netconf.
    let env = with_socket(attach_env("DEL", ""), "/nonexistent/agent.sock");
    run(&env, &stdin).assert_error(11, "1.1.0");
    agent.assert_no_request();
}

#[test]
fn errors_are_reported_in_the_netconf_version() {
    // An unreachable agent, asked in each version: the error says that version.
    for version in ALL_VERSIONS {
        let env = attach_env("DEL", "/nonexistent/agent.sock");
        run(&env, &conf(version).to_string()).assert_error(11, version);
    }
}

#[test]
fn a_hand_run_plugin_explains_itself() {
    let out = run(&[], "");
    out.assert_error(4, "1.1.0");
    assert!(
        out.stderr.contains("0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"),
        "{}",
        out.stderr
    );
    // Positive control: a runtime's call does not print the explanation.
    let out = run(
        &attach_env("DEL", "/nonexistent/agent.sock"),
        &conf("1.1.0").to_string(),
    );
    assert!(!out.stderr.contains("versions supported"), "{}", out.stderr);
}
