//! The CNI spec versions kuryr speaks, and the VERSION answer.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::CniError;

/// A spec version kuryr supports. 0.1.0 and 0.2.0 (the pre-"rich result"
/// versions, one IP per family and no interfaces) are not among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

/// Every supported version, oldest first, as VERSION lists them.
pub const SUPPORTED_VERSIONS: [CniVersion; 5] = [
    CniVersion::V0_3_0,
    CniVersion::V0_3_1,
    CniVersion::V0_4_0,
    CniVersion::V1_0_0,
    CniVersion::V1_1_0,
];

impl CniVersion {
    /// The version this crate implements.
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// The supported versions as strings, oldest first.
    pub fn supported_strings() -> Vec<&'static str> {
        SUPPORTED_VERSIONS.iter().map(|v| v.as_str()).collect()
    }

    /// Parses a netconf's `cniVersion`; anything unsupported is error code 1,
    /// worded like libcni's version reconciler.
    pub fn parse(s: &str) -> Result<CniVersion, CniError> {
        SUPPORTED_VERSIONS
            .iter()
            .copied()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                CniError::incompatible_version(
                    "incompatible CNI versions",
                    format!(
                        "config is {s:?}, plugin supports [{}]",
                        CniVersion::supported_strings().join(" ")
                    ),
                )
            })
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CniVersion {
    type Err = CniError;
    fn from_str(s: &str) -> Result<CniVersion, CniError> {
        CniVersion::parse(s)
    }
}

impl Serialize for CniVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for CniVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<CniVersion, D::Error> {
        let s = String::deserialize(d)?;
        CniVersion::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The VERSION answer: `cniVersion` echoes the input's, `supportedVersions`
/// lists ours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<String>,
}

impl VersionInfo {
    /// The answer for an input that asked in `input_version` (the spec says
    /// to echo it); without one, the version we implement.
    pub fn new(input_version: Option<&str>) -> VersionInfo {
        VersionInfo {
            cni_version: input_version
                .filter(|v| !v.is_empty())
                .unwrap_or(CniVersion::LATEST.as_str())
                .to_string(),
            supported_versions: CniVersion::supported_strings()
                .into_iter()
                .map(String::from)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_supported_version_and_nothing_else() {
        for v in SUPPORTED_VERSIONS {
            assert_eq!(CniVersion::parse(v.as_str()), Ok(v));
        }
        for bad in ["0.1.0", "0.2.0", "1.2.0", "2.0.0", "", "1.1", "v1.1.0"] {
            let e = CniVersion::parse(bad).err();
            assert_eq!(
                e.map(|e| e.code),
                Some(CniError::INCOMPATIBLE_VERSION),
                "{bad}"
            );
        }
    }

    #[test]
    fn versions_are_ordered() {
        assert!(CniVersion::V0_3_0 < CniVersion::V0_3_1);
        assert!(CniVersion::V0_4_0 < CniVersion::V1_0_0);
        assert!(CniVersion::V1_0_0 < CniVersion::LATEST);
        assert_eq!(SUPPORTED_VERSIONS.last(), Some(&CniVersion::LATEST));
    }

    #[test]
    fn version_info_echoes_the_input() {
        let v = serde_json::to_value(VersionInfo::new(Some("0.4.0"))).unwrap_or_default();
        assert_eq!(
            v,
            serde_json::json!({"cniVersion": "0.4.0",
                "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
        );
        assert_eq!(VersionInfo::new(None).cni_version, "1.1.0");
        assert_eq!(VersionInfo::new(Some("")).cni_version, "1.1.0");
    }
}
