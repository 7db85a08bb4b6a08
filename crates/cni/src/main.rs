//! `kuryr-cni`: the CNI plugin binary (spec 1.1.0, versions 0.3.0–1.1.0).
//!
//! A thin client of the node's kuryr agent: it validates the invocation,
//! answers VERSION itself, and forwards ADD, DEL, CHECK, STATUS and GC to the
//! agent's CNI daemon over its unix socket (see `kuryr_cni::request`). It execs
//! nothing. Results and errors go to stdout as JSON; stderr carries one log
//! line on failure.
//!
//! Environment beyond the spec's `CNI_*`:
//! - `KURYR_CNI_SOCKET`: the agent's socket (over the netconf's `daemon_socket`);
//! - `KURYR_CNI_TIMEOUT`: seconds to wait for the agent (default 120).

mod transport;

use std::io::{self, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use kuryr_cni::{
    CniError, CniResult, CniVersion, Command, DAEMON_PATH, DEFAULT_SOCKET, DaemonRequest,
    Invocation, NetConf, SOCKET_ENV, VersionInfo,
};
use serde_json::Value;

use crate::transport::{Response, TransportError};

/// Long enough for an ADD that waits on the controller (the agent gives up
/// after 30 s with code 11); short enough that a stuck agent does not hang the
/// runtime forever.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
const TIMEOUT_ENV: &str = "KURYR_CNI_TIMEOUT";

fn main() -> ExitCode {
    // Lossy rather than "unset": a non-UTF-8 value then fails validation with a
    // message naming the variable instead of claiming it is missing.
    let env = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
    // The version errors are reported in: the netconf's once it is known.
    let mut reply_version = CniVersion::LATEST;
    match run(&env, &mut reply_version) {
        Ok(Some(out)) => {
            if let Err(e) = print_json(&out) {
                eprintln!("kuryr-cni: writing the result to stdout: {e}");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "kuryr-cni: {} {}/{}: {e}",
                env("CNI_COMMAND").unwrap_or_default(),
                env("CNI_CONTAINERID").unwrap_or_default(),
                env("CNI_IFNAME").unwrap_or_default()
            );
            if env("CNI_COMMAND").is_none_or(|c| c.is_empty()) {
                // Someone ran the plugin by hand: say what it is.
                eprintln!(
                    "kuryr-cni: the kuryr CNI plugin, a client of the kuryr agent; CNI \
                     protocol versions supported: {}",
                    CniVersion::supported_strings().join(", ")
                );
            }
            // The error is reported even if stdout is gone: the exit code says it.
            let _ = print_json(&e.to_output(reply_version.as_str()));
            ExitCode::FAILURE
        }
    }
}

fn print_json(v: &Value) -> io::Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(io::Error::other)?;
    let mut out = io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()
}

/// One invocation: the JSON to print on success (None: print nothing).
fn run(
    env: &dyn Fn(&str) -> Option<String>,
    reply_version: &mut CniVersion,
) -> Result<Option<Value>, CniError> {
    let stdin = read_stdin()?;
    let parsed: Option<Value> = serde_json::from_slice(&stdin).ok();
    let input_version = parsed
        .as_ref()
        .and_then(|v| v.get("cniVersion"))
        .and_then(Value::as_str);
    if let Some(v) = input_version.and_then(|v| CniVersion::parse(v).ok()) {
        *reply_version = v;
    }

    let inv = Invocation::from_env(env)?;
    if inv.command == Command::Version {
        // stdin is not validated for VERSION (libcni ignores it); its
        // cniVersion, if any, is echoed as the spec says.
        let info = VersionInfo::new(input_version);
        return serde_json::to_value(info)
            .map(Some)
            .map_err(|e| CniError::io_failure("encoding the VERSION answer", e.to_string()));
    }

    let Some(config) = parsed else {
        let details = match serde_json::from_slice::<Value>(&stdin) {
            Err(e) if stdin.is_empty() => format!("nothing on stdin ({e})"),
            Err(e) => e.to_string(),
            Ok(_) => String::new(),
        };
        return Err(CniError::decoding_failure(
            "error decoding the network config",
            details,
        ));
    };
    let conf = NetConf::from_value(&config)?;
    let version = conf.version()?;
    inv.command.check_version(version)?;
    let (config, prev) = convert_prev_result(config, &conf, inv.command)?;

    let socket = env(SOCKET_ENV)
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .or(conf.daemon_socket)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    let timeout = match env(TIMEOUT_ENV).filter(|s| !s.is_empty()) {
        None => DEFAULT_TIMEOUT,
        Some(s) => match s.parse::<u64>() {
            Ok(secs) if secs > 0 => Duration::from_secs(secs),
            _ => {
                return Err(CniError::invalid_environment(
                    format!("invalid {TIMEOUT_ENV}"),
                    format!("{s:?} is not a positive number of seconds"),
                ));
            }
        },
    };

    let request = DaemonRequest::new(&inv, config);
    let body = serde_json::to_vec(&request)
        .map_err(|e| CniError::io_failure("encoding the request to the agent", e.to_string()))?;
    let response = transport::post(&socket, DAEMON_PATH, &body, timeout)
        .map_err(|e| unreachable_error(inv.command, e))?;
    answer(inv.command, response, prev, version)
}

/// The runtime's stdin. A terminal (someone running the plugin by hand) reads
/// as empty rather than waiting for input.
fn read_stdin() -> Result<Vec<u8>, CniError> {
    let stdin = io::stdin();
    if stdin.is_terminal() {
        return Ok(Vec::new());
    }
    let mut bytes = Vec::new();
    stdin.lock().read_to_end(&mut bytes).map_err(|e| {
        CniError::io_failure("error reading the network config from stdin", e.to_string())
    })?;
    Ok(bytes)
}

/// The netconf to forward: its `prevResult` rewritten in the 1.1.0 shape, so
/// the agent reads one shape whatever the runtime's version. CHECK needs a
/// `prevResult` (the spec makes the runtime pass it); DEL is best effort, so a
/// `prevResult` it cannot read is dropped rather than failing the DEL.
fn convert_prev_result(
    mut config: Value,
    conf: &NetConf,
    command: Command,
) -> Result<(Value, Option<CniResult>), CniError> {
    if !command.is_attachment() {
        return Ok((config, None));
    }
    let prev = match conf.prev_result() {
        Ok(prev) => prev,
        Err(e) if command == Command::Del => {
            eprintln!("kuryr-cni: DEL: ignoring a prevResult that does not decode: {e}");
            if let Some(obj) = config.as_object_mut() {
                obj.remove("prevResult");
            }
            None
        }
        Err(e) => return Err(e),
    };
    if command == Command::Check && prev.is_none() {
        return Err(CniError::invalid_network_config(
            "CHECK needs a prevResult",
            "the runtime must pass the result of the ADD as prevResult",
        ));
    }
    if let (Some(prev), Some(obj)) = (&prev, config.as_object_mut()) {
        obj.insert("prevResult".into(), prev.to_output(CniVersion::LATEST));
    }
    Ok((config, prev))
}

/// The error for an agent that could not be reached or did not answer. For
/// the attachment verbs and GC that is transient (the agent is starting or
/// restarting): code 11, so the runtime retries. STATUS reports it as the
/// plugin being unavailable: code 50.
fn unreachable_error(command: Command, e: TransportError) -> CniError {
    let details = e.to_string();
    if command == Command::Status {
        return CniError::plugin_not_available("the kuryr agent is not available", details);
    }
    match &e {
        TransportError::Connect { source, .. }
            if matches!(
                source.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            CniError::try_again_later("the kuryr agent is not running", details)
        }
        // Permission denied, not a socket...: retrying will not help.
        TransportError::Connect { .. } => {
            CniError::io_failure("cannot connect to the kuryr agent", details)
        }
        TransportError::Timeout { .. } => {
            CniError::try_again_later("the kuryr agent did not answer in time", details)
        }
        // Reset or closed mid-answer: the agent went away (a restart).
        TransportError::Io { .. } => {
            CniError::try_again_later("the kuryr agent closed the connection", details)
        }
        TransportError::Protocol { .. } => {
            CniError::io_failure("the kuryr agent's answer is not HTTP", details)
        }
    }
}

/// What the agent answered, as the runtime must see it.
fn answer(
    command: Command,
    response: Response,
    prev: Option<CniResult>,
    version: CniVersion,
) -> Result<Option<Value>, CniError> {
    let snippet = || {
        let text = String::from_utf8_lossy(&response.body);
        let text: String = text.chars().take(200).collect();
        format!("HTTP {}: {text:?}", response.status)
    };
    // An answer that is not what the protocol says is code 5: the exchange with
    // the daemon is this plugin's I/O. Not 6, which blames the runtime's input;
    // and the runtime cannot act on a plugin-specific code. STATUS says 50: an
    // agent that answers nonsense cannot serve ADD either.
    let garbled = |why: String| {
        if command == Command::Status {
            CniError::plugin_not_available("the kuryr agent is not available", why)
        } else {
            CniError::io_failure("the kuryr agent's answer is not a CNI answer", why)
        }
    };
    if (200..300).contains(&response.status) {
        if command != Command::Add {
            // `{}` by the protocol; any JSON (or nothing) will do, but not a
            // page from something that is not the agent.
            if response.body.iter().all(u8::is_ascii_whitespace)
                || serde_json::from_slice::<Value>(&response.body).is_ok()
            {
                return Ok(None);
            }
            return Err(garbled(snippet()));
        }
        let ours: CniResult = serde_json::from_slice(&response.body)
            .map_err(|e| garbled(format!("{e}; {}", snippet())))?;
        let result = match prev {
            // Chained after other plugins: their result, then ours.
            Some(prev) => ours.appended_to(prev),
            None => ours,
        };
        return Ok(Some(result.to_output(version)));
    }
    match serde_json::from_slice::<CniError>(&response.body) {
        Ok(e) if e.code != 0 => Err(e),
        _ => Err(garbled(snippet())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn resp(status: u16, body: &str) -> Response {
        Response {
            status,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn agent_answers() {
        for body in ["{}", "", "null"] {
            let ok = answer(Command::Del, resp(200, body), None, CniVersion::V1_1_0);
            assert_eq!(ok, Ok(None), "{body:?}");
        }
        let add = answer(
            Command::Add,
            resp(200, r#"{"ips": [{"address": "10.0.0.2/24"}]}"#),
            None,
            CniVersion::V0_4_0,
        );
        assert_eq!(
            add,
            Ok(Some(json!({"cniVersion": "0.4.0",
                          "ips": [{"version": "4", "address": "10.0.0.2/24"}]})))
        );
        let err = answer(
            Command::Add,
            resp(
                503,
                r#"{"code": 11, "msg": "no port yet", "details": "pod u1"}"#,
            ),
            None,
            CniVersion::V1_1_0,
        );
        assert_eq!(err, Err(CniError::try_again_later("no port yet", "pod u1")));
        for (cmd, status, body, want) in [
            (Command::Add, 200, "not json", CniError::IO_FAILURE),
            (Command::Gc, 200, "<html>", CniError::IO_FAILURE),
            (
                Command::Status,
                200,
                "<html>",
                CniError::PLUGIN_NOT_AVAILABLE,
            ),
            (Command::Add, 404, "<html>", CniError::IO_FAILURE),
            (
                Command::Del,
                500,
                r#"{"code": 0, "msg": "x"}"#,
                CniError::IO_FAILURE,
            ),
            (Command::Status, 404, "", CniError::PLUGIN_NOT_AVAILABLE),
        ] {
            let got = answer(cmd, resp(status, body), None, CniVersion::V1_1_0);
            assert_eq!(
                got.err().map(|e| e.code),
                Some(want),
                "{cmd} {status} {body}"
            );
        }
    }

    #[test]
    fn transport_failures() {
        let socket = PathBuf::from("/run/x.sock");
        let connect = |kind| TransportError::Connect {
            socket: socket.clone(),
            source: io::Error::from(kind),
        };
        let cases = [
            (
                Command::Add,
                connect(io::ErrorKind::NotFound),
                CniError::TRY_AGAIN_LATER,
            ),
            (
                Command::Gc,
                connect(io::ErrorKind::ConnectionRefused),
                CniError::TRY_AGAIN_LATER,
            ),
            (
                Command::Del,
                connect(io::ErrorKind::PermissionDenied),
                CniError::IO_FAILURE,
            ),
            (
                Command::Status,
                connect(io::ErrorKind::NotFound),
                CniError::PLUGIN_NOT_AVAILABLE,
            ),
            (
                Command::Check,
                TransportError::Timeout {
                    socket: socket.clone(),
                    after: Duration::from_secs(1),
                },
                CniError::TRY_AGAIN_LATER,
            ),
            (
                Command::Add,
                TransportError::Protocol {
                    socket: socket.clone(),
                    reason: "x".into(),
                },
                CniError::IO_FAILURE,
            ),
        ];
        for (cmd, e, want) in cases {
            let got = unreachable_error(cmd, e);
            assert_eq!(got.code, want, "{cmd}: {got}");
            assert!(got.details.contains("/run/x.sock"), "{}", got.details);
        }
    }
}
