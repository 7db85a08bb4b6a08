//! The network configuration a runtime passes on stdin (spec section 3, the
//! "request configuration"), as kuryr reads it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::env::is_valid_cni_name;
use crate::error::CniError;
use crate::result::CniResult;
use crate::version::CniVersion;

/// The key a runtime puts the still-valid attachments under for GC.
pub const VALID_ATTACHMENTS_KEY: &str = "cni.dev/valid-attachments";
/// The name the spec used for that key before it was aligned with libcni
/// (libcni sends both).
pub const LEGACY_ATTACHMENTS_KEY: &str = "cni.dev/attachments";

/// One still-valid attachment named by a GC request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GcAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// A typed view of a kuryr netconf. Fields kuryr does not use (kuryr-kubernetes'
/// `kuryr_conf`, `debug`, `capabilities`, `ipam`, ...) are kept in `other` and
/// otherwise ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetConf {
    /// As given; [`NetConf::version`] parses it.
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// The agent's socket; `/run/kuryr/agent.sock` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon_socket: Option<PathBuf>,
    /// A Neutron network (name or id): standalone mode, the agent makes the
    /// container's port. Absent: Kubernetes mode, the controller made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The previous result, as the runtime wrote it (any supported version);
    /// [`NetConf::prev_result`] decodes it.
    #[serde(
        rename = "prevResult",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub prev_result: Option<Value>,
    #[serde(
        rename = "runtimeConfig",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub runtime_config: Option<Map<String, Value>>,
    #[serde(
        rename = "cni.dev/valid-attachments",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub valid_attachments: Option<Vec<GcAttachment>>,
    #[serde(
        rename = "cni.dev/attachments",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub legacy_attachments: Option<Vec<GcAttachment>>,
    /// Every other field, unchanged.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl NetConf {
    /// Decodes and validates a netconf the way libcni's plugin skeleton does:
    /// undecodable (not an object, a field of the wrong type) is code 6; a
    /// missing or malformed `name` or `type` code 7; a missing `cniVersion`
    /// means 0.1.0, which like any unsupported version is code 1.
    pub fn from_value(value: &Value) -> Result<NetConf, CniError> {
        let conf = NetConf::deserialize(value).map_err(|e| {
            CniError::decoding_failure("error decoding the network config", e.to_string())
        })?;
        if conf.name.is_empty() {
            return Err(CniError::invalid_network_config("missing network name", ""));
        }
        if !is_valid_cni_name(&conf.name) {
            return Err(CniError::invalid_network_config(
                "invalid characters found in network name",
                conf.name,
            ));
        }
        if conf.plugin_type.is_empty() {
            return Err(CniError::invalid_network_config("missing plugin type", ""));
        }
        if conf.plugin_type.contains(['/', '\\', '\0']) {
            return Err(CniError::invalid_network_config(
                "invalid characters found in plugin type",
                conf.plugin_type,
            ));
        }
        conf.version()?;
        Ok(conf)
    }

    /// The same from raw stdin bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            CniError::decoding_failure("error decoding the network config", e.to_string())
        })?;
        NetConf::from_value(&value)
    }

    /// The spec version the runtime speaks (code 1 if unsupported).
    pub fn version(&self) -> Result<CniVersion, CniError> {
        if self.cni_version.is_empty() {
            // libcni reads an absent cniVersion as 0.1.0.
            return Err(CniError::incompatible_version(
                "incompatible CNI versions",
                format!(
                    "config has no cniVersion (0.1.0), plugin supports [{}]",
                    CniVersion::supported_strings().join(" ")
                ),
            ));
        }
        CniVersion::parse(&self.cni_version)
    }

    /// `prevResult` in the 1.1.0 shape, if there is one.
    pub fn prev_result(&self) -> Result<Option<CniResult>, CniError> {
        let Some(prev) = &self.prev_result else {
            return Ok(None);
        };
        CniResult::from_prev_result(prev, self.version()?).map(Some)
    }

    /// The attachments a GC must keep: `cni.dev/valid-attachments`, or the
    /// older `cni.dev/attachments`. `None` when the runtime sent neither (a GC
    /// without the list: nothing is known to be valid, but nothing is known to
    /// be stale either).
    pub fn gc_valid_attachments(&self) -> Option<&[GcAttachment]> {
        self.valid_attachments
            .as_deref()
            .or(self.legacy_attachments.as_deref())
    }
}

/// The `(containerID, ifname)` pairs a GC request names as still valid, from
/// its raw netconf. A netconf without the list counts as an empty one, as in
/// libcni: it sends no list only when it was given none, after it has DEL'ed
/// every attachment it had cached.
pub fn valid_attachments(config: &Value) -> Result<Vec<(String, String)>, CniError> {
    let conf = NetConf::from_value(config)?;
    Ok(conf
        .gc_valid_attachments()
        .unwrap_or_default()
        .iter()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(v: Value) -> Result<NetConf, CniError> {
        NetConf::from_value(&v)
    }

    #[test]
    fn reads_kuryr_fields_and_keeps_the_others() {
        let c = conf(json!({
            "cniVersion": "1.1.0", "name": "kuryr", "type": "kuryr-cni",
            "daemon_socket": "/tmp/a.sock", "network": "private",
            "runtimeConfig": {"mac": "fa:16:3e:00:00:01"},
            "kuryr_conf": "/etc/kuryr/kuryr.conf", "debug": true
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.version(), Ok(CniVersion::V1_1_0));
        assert_eq!(c.daemon_socket, Some(PathBuf::from("/tmp/a.sock")));
        assert_eq!(c.network.as_deref(), Some("private"));
        assert_eq!(c.runtime_config.as_ref().map(|m| m.len()), Some(1));
        assert_eq!(c.other.get("debug"), Some(&json!(true)));
        assert_eq!(
            c.other.get("kuryr_conf"),
            Some(&json!("/etc/kuryr/kuryr.conf"))
        );
        assert_eq!(c.prev_result(), Ok(None));
        assert_eq!(c.gc_valid_attachments(), None);
    }

    #[test]
    fn gc_attachments_under_either_key() {
        let valid = json!([{"containerID": "c1", "ifname": "eth0"}]);
        let want = [GcAttachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        }];
        for key in [VALID_ATTACHMENTS_KEY, LEGACY_ATTACHMENTS_KEY] {
            let mut v = json!({"cniVersion": "1.1.0", "name": "k", "type": "kuryr-cni"});
            v[key] = valid.clone();
            let c = conf(v).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(c.gc_valid_attachments(), Some(&want[..]), "{key}");
        }
        // An empty list is "nothing is valid", not "no list".
        let c = conf(json!({"cniVersion": "1.1.0", "name": "k", "type": "t",
                            "cni.dev/valid-attachments": []}));
        assert_eq!(
            c.map(|c| c.gc_valid_attachments().map(<[_]>::len)),
            Ok(Some(0))
        );
        // An entry without ifname does not decode.
        let bad = conf(json!({"cniVersion": "1.1.0", "name": "k", "type": "t",
                              "cni.dev/valid-attachments": [{"containerID": "c1"}]}));
        assert_eq!(bad.err().map(|e| e.code), Some(CniError::DECODING_FAILURE));
    }

    #[test]
    fn valid_attachment_pairs() {
        let v = json!({"cniVersion": "1.1.0", "name": "k", "type": "t",
                       "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]});
        assert_eq!(
            valid_attachments(&v),
            Ok(vec![("c1".to_string(), "eth0".to_string())])
        );
        let none = json!({"cniVersion": "1.1.0", "name": "k", "type": "t"});
        assert_eq!(valid_attachments(&none), Ok(vec![]));
        let bad = json!({"cniVersion": "1.1.0", "name": "k", "type": "t",
                         "cni.dev/valid-attachments": "c1"});
        assert_eq!(
            valid_attachments(&bad).err().map(|e| e.code),
            Some(CniError::DECODING_FAILURE)
        );
    }

    #[test]
    fn validation_codes() {
        let good = json!({"cniVersion": "0.3.1", "name": "a_b.c-d", "type": "kuryr-cni"});
        assert!(conf(good).is_ok());
        let cases = [
            (json!([]), CniError::DECODING_FAILURE),
            (
                json!({"cniVersion": 1, "name": "k", "type": "t"}),
                CniError::DECODING_FAILURE,
            ),
            (
                json!({"cniVersion": "1.1.0", "name": 5, "type": "t"}),
                CniError::DECODING_FAILURE,
            ),
            (
                json!({"cniVersion": "1.1.0", "type": "t"}),
                CniError::INVALID_NETWORK_CONFIG,
            ),
            (
                json!({"cniVersion": "1.1.0", "name": "-k", "type": "t"}),
                CniError::INVALID_NETWORK_CONFIG,
            ),
            (
                json!({"cniVersion": "1.1.0", "name": "a/b", "type": "t"}),
                CniError::INVALID_NETWORK_CONFIG,
            ),
            (
                json!({"cniVersion": "1.1.0", "name": "k"}),
                CniError::INVALID_NETWORK_CONFIG,
            ),
            (
                json!({"cniVersion": "1.1.0", "name": "k", "type": "../x"}),
                CniError::INVALID_NETWORK_CONFIG,
            ),
            (
                json!({"name": "k", "type": "t"}),
                CniError::INCOMPATIBLE_VERSION,
            ),
            (
                json!({"cniVersion": "0.2.0", "name": "k", "type": "t"}),
                CniError::INCOMPATIBLE_VERSION,
            ),
            (
                json!({"cniVersion": "2.0.0", "name": "k", "type": "t"}),
                CniError::INCOMPATIBLE_VERSION,
            ),
        ];
        for (v, want) in cases {
            assert_eq!(conf(v.clone()).err().map(|e| e.code), Some(want), "{v}");
        }
        assert_eq!(
            NetConf::from_slice(b"{not json").err().map(|e| e.code),
            Some(CniError::DECODING_FAILURE)
        );
    }

    #[test]
    fn prev_result_in_the_netconf_version() {
        let c = conf(json!({"cniVersion": "0.4.0", "name": "k", "type": "t",
            "prevResult": {"ips": [{"version": "4", "address": "10.0.0.2/24"}]}}))
        .unwrap_or_else(|e| panic!("{e}"));
        let prev = c.prev_result().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(prev.map(|p| p.ips.len()), Some(1));
    }

    #[test]
    fn round_trips_unknown_fields() {
        let v = json!({"cniVersion": "1.0.0", "name": "k", "type": "t", "x": {"y": [1]}});
        let c = conf(v.clone()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(serde_json::to_value(&c).ok(), Some(v));
    }
}
