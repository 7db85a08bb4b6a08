//! The plugin ↔ agent wire protocol: what `kuryr-cni` POSTs to the agent's CNI
//! daemon, and how the daemon answers (see the module docs of the crate).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::conf::NetConf;
use crate::env::{Command, Invocation};
use crate::error::CniError;
use crate::result::CniResult;

/// The agent's socket when the netconf has no `daemon_socket`.
pub const DEFAULT_SOCKET: &str = "/run/kuryr/agent.sock";
/// Overrides the socket (netconf and default) for the plugin, e.g. in tests.
pub const SOCKET_ENV: &str = "KURYR_CNI_SOCKET";
/// The daemon's endpoint on the agent's local API.
pub const DAEMON_PATH: &str = "/v1/cni";

/// One CNI invocation forwarded to the agent (`POST /v1/cni`).
///
/// The daemon answers HTTP 200 with, for ADD, its own attachment as a
/// [`CniResult`] (the plugin appends it to any `prevResult` and converts it
/// to the runtime's version), and `{}` for the other verbs; on failure a 4xx
/// or 5xx status with a [`CniError`] body (see [`CniError::http_status`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonRequest {
    /// ADD, DEL, CHECK, STATUS or GC (VERSION is answered by the plugin).
    pub command: Command,
    /// ADD, DEL, CHECK; null for STATUS and GC.
    pub container_id: Option<String>,
    /// ADD, CHECK; DEL when the runtime still has it (it may be gone).
    pub netns: Option<String>,
    /// ADD, DEL, CHECK.
    pub ifname: Option<String>,
    /// `CNI_ARGS` parsed (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_UID`, ...).
    #[serde(default)]
    pub args: BTreeMap<String, String>,
    /// The netconf from stdin, unchanged except that a `prevResult` is in the
    /// 1.1.0 shape (with `"cniVersion": "1.1.0"`).
    pub config: Value,
}

impl DaemonRequest {
    /// The request for an invocation and its (already converted) netconf.
    pub fn new(inv: &Invocation, config: Value) -> DaemonRequest {
        DaemonRequest {
            command: inv.command,
            container_id: inv.container_id.clone(),
            netns: inv.netns.clone(),
            ifname: inv.ifname.clone(),
            args: inv.args.clone(),
            config,
        }
    }

    /// The typed view of `config`.
    pub fn netconf(&self) -> Result<NetConf, CniError> {
        NetConf::from_value(&self.config)
    }

    /// `prevResult`, in the 1.1.0 shape, if the runtime passed one.
    pub fn prev_result(&self) -> Result<Option<CniResult>, CniError> {
        self.netconf()?.prev_result()
    }

    /// A `CNI_ARGS` value.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args.get(key).map(String::as_str)
    }
}

impl CniError {
    /// The HTTP status the daemon answers this error with. The plugin only
    /// tells 2xx from the rest; this keeps the agent's logs and metrics
    /// readable: the caller's fault 400, an unknown container 404, a conflict
    /// 409, transient conditions 503, anything else 500.
    pub fn http_status(&self) -> u16 {
        match self.code {
            CniError::INCOMPATIBLE_VERSION
            | CniError::UNSUPPORTED_FIELD
            | CniError::INVALID_ENVIRONMENT
            | CniError::DECODING_FAILURE
            | CniError::INVALID_NETWORK_CONFIG => 400,
            CniError::UNKNOWN_CONTAINER => 404,
            CniError::PLUGIN_CONFLICT => 409,
            CniError::TRY_AGAIN_LATER
            | CniError::PLUGIN_NOT_AVAILABLE
            | CniError::LIMITED_CONNECTIVITY => 503,
            _ => 500,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wire_shape() {
        let inv = Invocation {
            command: Command::Add,
            container_id: Some("c1".into()),
            netns: Some("/run/netns/x".into()),
            ifname: Some("eth0".into()),
            args: BTreeMap::from([("K8S_POD_UID".into(), "u1".into())]),
            path: Some("/opt/cni/bin".into()),
        };
        let config = json!({"cniVersion": "1.1.0", "name": "kuryr", "type": "kuryr-cni"});
        let req = DaemonRequest::new(&inv, config.clone());
        let wire = serde_json::to_value(&req).unwrap_or_default();
        assert_eq!(
            wire,
            json!({"command": "ADD", "container_id": "c1", "netns": "/run/netns/x",
                   "ifname": "eth0", "args": {"K8S_POD_UID": "u1"}, "config": config})
        );
        let back: DaemonRequest = serde_json::from_value(wire).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, req);
        assert_eq!(back.arg("K8S_POD_UID"), Some("u1"));
        assert_eq!(back.netconf().map(|c| c.name), Ok("kuryr".to_string()));
        assert_eq!(back.prev_result(), Ok(None));
    }

    #[test]
    fn gc_request_has_null_attachment_parameters() {
        let wire = json!({"command": "GC", "container_id": null, "netns": null, "ifname": null,
                          "args": {}, "config": {"cniVersion": "1.1.0", "name": "k", "type": "t",
                          "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]}});
        let req: DaemonRequest = serde_json::from_value(wire).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(req.command, Command::Gc);
        assert_eq!(req.container_id, None);
        let conf = req.netconf().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(conf.gc_valid_attachments().map(<[_]>::len), Some(1));
    }

    #[test]
    fn http_status_of_errors() {
        assert_eq!(CniError::invalid_network_config("", "").http_status(), 400);
        assert_eq!(CniError::unknown_container("", "").http_status(), 404);
        assert_eq!(CniError::try_again_later("", "").http_status(), 503);
        assert_eq!(CniError::plugin_not_available("", "").http_status(), 503);
        assert_eq!(CniError::io_failure("", "").http_status(), 500);
        assert_eq!(
            CniError::new(CniError::CHECK_FAILED, "", "").http_status(),
            500
        );
        assert_eq!(
            CniError::new(CniError::PLUGIN_CONFLICT, "", "").http_status(),
            409
        );
    }
}
