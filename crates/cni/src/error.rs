//! The CNI error result (spec section 5, "Error") and its well-known codes.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A CNI error: what the plugin prints on stdout (with `cniVersion`, see
/// [`CniError::to_output`]) and what the agent's daemon answers with an HTTP
/// error status (the bare `{code, msg, details}` of this type's serde form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{msg} (CNI error {code}){}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    /// Always serialized (the spec lists it among the keys), possibly empty.
    #[serde(default)]
    pub details: String,
}

impl CniError {
    // The well-known codes of the spec (0–99 are reserved).
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration (msg names key and value).
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist: the runtime need not clean up.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables (msg names them).
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODING_FAILURE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    /// Try again later: a transient condition.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// The plugin is not available (cannot service ADD).
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// Not available, and existing containers may have limited connectivity.
    pub const LIMITED_CONNECTIVITY: u32 = 51;

    // kuryr's own codes (100+ are plugin specific), shared by plugin and agent.
    /// CHECK found the attachment other than `prevResult` says.
    pub const CHECK_FAILED: u32 = 100;
    /// The request conflicts with what the agent holds (an interface name
    /// taken, a port bound to another container).
    pub const PLUGIN_CONFLICT: u32 = 101;

    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// Code 1.
    pub fn incompatible_version(msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError::new(CniError::INCOMPATIBLE_VERSION, msg, details)
    }

    /// Code 2; the spec wants the message to carry the key and the value.
    pub fn unsupported_field(key: &str, value: &Value) -> CniError {
        CniError::new(
            CniError::UNSUPPORTED_FIELD,
            format!("unsupported field in network configuration: {key}={value}"),
            String::new(),
        )
    }

    /// Code 3.
    pub fn unknown_container(msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError::new(CniError::UNKNOWN_CONTAINER, msg, details)
    }

    /// Code 4; the message must name the variables.
    pub fn invalid_environment(msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError::new(CniError::INVALID_ENVIRONMENT, msg, details)
    }

    /// Code 5.
    pub fn io_failure(msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError::new(CniError::IO_FAILURE, msg, details)
    }

    /// Code 6.
    pub fn decoding_failure(msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError::new(CniError::DECODING_FAILURE, msg, details)
    }

    /// Code 7.
    pub fn invalid_network_config(msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError::new(CniError::INVALID_NETWORK_CONFIG, msg, details)
    }

    /// Code 11.
    pub fn try_again_later(msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError::new(CniError::TRY_AGAIN_LATER, msg, details)
    }

    /// Code 50 (STATUS: cannot service ADD).
    pub fn plugin_not_available(msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError::new(CniError::PLUGIN_NOT_AVAILABLE, msg, details)
    }

    /// Code 51 (STATUS: not available, existing containers may suffer).
    pub fn limited_connectivity(msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError::new(CniError::LIMITED_CONNECTIVITY, msg, details)
    }

    /// The error object as the plugin prints it: `cniVersion` is the protocol
    /// version in use.
    pub fn to_output(&self, cni_version: &str) -> Value {
        json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_has_the_four_keys_of_the_spec() {
        let e = CniError::invalid_network_config("Invalid Configuration", "too small");
        assert_eq!(
            e.to_output("1.1.0"),
            json!({"cniVersion": "1.1.0", "code": 7, "msg": "Invalid Configuration", "details": "too small"})
        );
        // The daemon's wire form is the same object without cniVersion.
        assert_eq!(
            serde_json::to_value(&e).unwrap_or_default(),
            json!({"code": 7, "msg": "Invalid Configuration", "details": "too small"})
        );
    }

    #[test]
    fn constructors_carry_the_well_known_codes() {
        let codes = [
            (CniError::incompatible_version("", ""), 1),
            (CniError::unsupported_field("k", &json!("v")), 2),
            (CniError::unknown_container("", ""), 3),
            (CniError::invalid_environment("", ""), 4),
            (CniError::io_failure("", ""), 5),
            (CniError::decoding_failure("", ""), 6),
            (CniError::invalid_network_config("", ""), 7),
            (CniError::try_again_later("", ""), 11),
            (CniError::plugin_not_available("", ""), 50),
            (CniError::limited_connectivity("", ""), 51),
        ];
        for (e, c) in codes {
            assert_eq!(e.code, c, "{e:?}");
        }
        let f = CniError::unsupported_field("mode", &json!("l3"));
        assert!(f.msg.contains("mode") && f.msg.contains("l3"), "{}", f.msg);
    }

    #[test]
    fn details_may_be_absent_on_the_wire() {
        let e: CniError = serde_json::from_str(r#"{"code": 11, "msg": "later"}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e, CniError::try_again_later("later", ""));
        // A body without a code is not a CNI error (positive control above).
        assert!(serde_json::from_str::<CniError>(r#"{"msg": "x"}"#).is_err());
    }

    #[test]
    fn display_names_the_code() {
        assert_eq!(
            CniError::io_failure("read", "EOF").to_string(),
            "read (CNI error 5): EOF"
        );
        assert_eq!(
            CniError::io_failure("read", "").to_string(),
            "read (CNI error 5)"
        );
    }
}
