//! The ADD result (spec section 5, "ADD Success") in the 1.1.0 shape, and its
//! conversion to and from the older versions.
//!
//! What differs between the versions kuryr supports:
//! - 0.3.0, 0.3.1, 0.4.0: each `ips` entry carries `"version": "4"|"6"`;
//!   interfaces have only `name`, `mac`, `sandbox`; routes only `dst`, `gw`.
//! - 1.0.0: `version` is gone from `ips`; interfaces and routes as in 0.4.0.
//! - 1.1.0: interfaces gain `mtu`, `socketPath`, `pciID`; routes gain `mtu`,
//!   `advmss`, `priority`, `table`, `scope`.
//!
//! libcni keeps the 1.1.0 fields when it writes a 1.0.0 result (its Go types
//! did not change); kuryr writes each version as that version's spec defines
//! it, so an older runtime sees nothing it does not know.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::error::CniError;
use crate::version::CniVersion;

/// An address with its prefix length, as CNI writes it (`"10.1.0.5/16"`: the
/// host bits are kept, so this is an interface address, not a network).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

/// Why a string is not a CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not in CIDR notation (address/prefix)")]
    NoPrefix(String),
    #[error("{0:?}: the address is not an IPv4 or IPv6 address")]
    BadAddress(String),
    #[error("{0:?}: the prefix length is not a number of bits of the address")]
    BadPrefix(String),
}

impl Cidr {
    /// `prefix_len` must fit the family (≤ 32 for IPv4, ≤ 128 for IPv6).
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Cidr, CidrError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(CidrError::BadPrefix(format!("{addr}/{prefix_len}")));
        }
        Ok(Cidr { addr, prefix_len })
    }

    /// `"4"` or `"6"`, as the 0.x results' `version` field wants it.
    pub fn family(&self) -> &'static str {
        if self.addr.is_ipv4() { "4" } else { "6" }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| CidrError::NoPrefix(s.to_string()))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| CidrError::BadAddress(s.to_string()))?;
        // Digits only: u8's parser would take a leading '+'.
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CidrError::BadPrefix(s.to_string()));
        }
        let prefix_len: u8 = prefix
            .parse()
            .map_err(|_| CidrError::BadPrefix(s.to_string()))?;
        Cidr::new(addr, prefix_len).map_err(|_| CidrError::BadPrefix(s.to_string()))
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An interface the attachment created.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// 1.1.0 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path (CNI_NETNS) for interfaces inside the container; absent
    /// for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// 1.1.0 only.
    #[serde(
        default,
        rename = "socketPath",
        skip_serializing_if = "Option::is_none"
    )]
    pub socket_path: Option<String>,
    /// 1.1.0 only.
    #[serde(default, rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

impl Interface {
    /// A host-side interface.
    pub fn new(name: impl Into<String>) -> Interface {
        Interface {
            name: name.into(),
            ..Interface::default()
        }
    }

    /// An interface inside the container's netns `sandbox`.
    pub fn in_sandbox(name: impl Into<String>, sandbox: impl Into<String>) -> Interface {
        Interface {
            sandbox: Some(sandbox.into()),
            ..Interface::new(name)
        }
    }

    pub fn with_mac(mut self, mac: impl Into<String>) -> Interface {
        self.mac = Some(mac.into());
        self
    }

    pub fn with_mtu(mut self, mtu: u32) -> Interface {
        self.mtu = Some(mtu);
        self
    }
}

/// An address the attachment assigned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    pub address: Cidr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into the result's `interfaces` (absent in IPAM results).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<u32>,
}

impl IpConfig {
    pub fn new(address: Cidr, gateway: Option<IpAddr>, interface: Option<u32>) -> IpConfig {
        IpConfig {
            address,
            gateway,
            interface,
        }
    }
}

/// A route the attachment created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: Cidr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// 1.1.0 only, like every field below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// 0 global, 253 link, 254 host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

impl Route {
    pub fn new(dst: Cidr, gw: Option<IpAddr>) -> Route {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

/// Resolver settings; omitted from a result when empty.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Dns {
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub search: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.as_deref().is_none_or(str::is_empty)
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// An ADD result in the 1.1.0 shape, without `cniVersion` (the plugin adds it
/// when it prints, see [`CniResult::to_output`]). This is what the agent's
/// daemon answers to ADD. Empty lists and an empty `dns` are omitted, as
/// libcni does.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub interfaces: Vec<Interface>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ips: Vec<IpConfig>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub routes: Vec<Route>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Dns::is_empty"
    )]
    pub dns: Dns,
}

/// Go writes a nil slice as `null` when a field lacks omitempty; read it as empty.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl CniResult {
    /// The result as printed for a netconf of `version`: `cniVersion` set, and
    /// only the fields that version defines.
    pub fn to_output(&self, version: CniVersion) -> Value {
        let rich = version >= CniVersion::V1_1_0;
        let mut out = Map::new();
        out.insert("cniVersion".into(), version.as_str().into());
        if !self.interfaces.is_empty() {
            let list = self.interfaces.iter().map(|i| interface_value(i, rich));
            out.insert("interfaces".into(), Value::Array(list.collect()));
        }
        if !self.ips.is_empty() {
            let with_family = version < CniVersion::V1_0_0;
            let list = self.ips.iter().map(|ip| ip_value(ip, with_family));
            out.insert("ips".into(), Value::Array(list.collect()));
        }
        if !self.routes.is_empty() {
            let list = self.routes.iter().map(|r| route_value(r, rich));
            out.insert("routes".into(), Value::Array(list.collect()));
        }
        if !self.dns.is_empty() {
            out.insert("dns".into(), dns_value(&self.dns));
        }
        Value::Object(out)
    }

    /// A `prevResult` of any supported version, in the 1.1.0 shape. Its version
    /// is its own `cniVersion` if it has one, else the netconf's (results before
    /// 1.0.0 need not carry one). 0.x's per-address `version` is dropped.
    /// Unsupported versions are code 1, undecodable results code 6.
    pub fn from_prev_result(prev: &Value, conf_version: CniVersion) -> Result<CniResult, CniError> {
        // Only checked: the 1.1.0 shape is a superset of every supported
        // version's, so one decoder reads them all (0.x's `version` is ignored).
        prev_result_version(prev, conf_version)?;
        CniResult::deserialize(prev)
            .map_err(|e| CniError::decoding_failure("failed to decode prevResult", e.to_string()))
    }

    /// The result of a chained ADD: `self` (this plugin's attachment) after
    /// `prev` (the result of the plugins before it). Our `ips` indices shift
    /// past the previous interfaces; our `dns` replaces the previous one only
    /// when it says something.
    pub fn appended_to(self, prev: CniResult) -> CniResult {
        let shift = u32::try_from(prev.interfaces.len()).unwrap_or(u32::MAX);
        let mut out = prev;
        out.interfaces.extend(self.interfaces);
        out.ips.extend(self.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i.saturating_add(shift));
            ip
        }));
        out.routes.extend(self.routes);
        if !self.dns.is_empty() {
            out.dns = self.dns;
        }
        out
    }
}

/// The version a `prevResult` is written in.
fn prev_result_version(prev: &Value, conf_version: CniVersion) -> Result<CniVersion, CniError> {
    match prev.get("cniVersion") {
        None | Some(Value::Null) => Ok(conf_version),
        Some(Value::String(v)) if v.is_empty() => Ok(conf_version),
        Some(Value::String(v)) => CniVersion::parse(v).map_err(|e| {
            CniError::incompatible_version("incompatible prevResult version", e.details)
        }),
        Some(other) => Err(CniError::decoding_failure(
            "failed to decode prevResult",
            format!("cniVersion is not a string: {other}"),
        )),
    }
}

fn interface_value(i: &Interface, rich: bool) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), i.name.clone().into());
    if let Some(mac) = &i.mac {
        m.insert("mac".into(), mac.clone().into());
    }
    if let Some(sandbox) = &i.sandbox {
        m.insert("sandbox".into(), sandbox.clone().into());
    }
    if rich {
        if let Some(mtu) = i.mtu {
            m.insert("mtu".into(), mtu.into());
        }
        if let Some(p) = &i.socket_path {
            m.insert("socketPath".into(), p.clone().into());
        }
        if let Some(p) = &i.pci_id {
            m.insert("pciID".into(), p.clone().into());
        }
    }
    Value::Object(m)
}

fn ip_value(ip: &IpConfig, with_family: bool) -> Value {
    let mut m = Map::new();
    if with_family {
        m.insert("version".into(), ip.address.family().into());
    }
    m.insert("address".into(), ip.address.to_string().into());
    if let Some(gw) = ip.gateway {
        m.insert("gateway".into(), gw.to_string().into());
    }
    if let Some(i) = ip.interface {
        m.insert("interface".into(), i.into());
    }
    Value::Object(m)
}

fn route_value(r: &Route, rich: bool) -> Value {
    let mut m = Map::new();
    m.insert("dst".into(), r.dst.to_string().into());
    if let Some(gw) = r.gw {
        m.insert("gw".into(), gw.to_string().into());
    }
    if rich {
        let extra = [
            ("mtu", r.mtu),
            ("advmss", r.advmss),
            ("priority", r.priority),
            ("table", r.table),
            ("scope", r.scope),
        ];
        for (key, value) in extra {
            if let Some(v) = value {
                m.insert(key.into(), v.into());
            }
        }
    }
    Value::Object(m)
}

fn dns_value(d: &Dns) -> Value {
    let mut m = Map::new();
    let list = |v: &[String]| Value::Array(v.iter().cloned().map(Value::String).collect());
    if !d.nameservers.is_empty() {
        m.insert("nameservers".into(), list(&d.nameservers));
    }
    if let Some(domain) = d.domain.as_deref().filter(|s| !s.is_empty()) {
        m.insert("domain".into(), domain.into());
    }
    if !d.search.is_empty() {
        m.insert("search".into(), list(&d.search));
    }
    if !d.options.is_empty() {
        m.insert("options".into(), list(&d.options));
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// A result using every field 1.1.0 has.
    fn rich() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface::new("tap1").with_mac("fa:16:3e:00:00:01"),
                Interface {
                    socket_path: Some("/run/x.sock".into()),
                    pci_id: Some("0000:00:01.0".into()),
                    ..Interface::in_sandbox("eth0", "/run/netns/blue")
                        .with_mac("fa:16:3e:00:00:02")
                        .with_mtu(1450)
                },
            ],
            ips: vec![
                IpConfig::new(cidr("10.1.0.5/16"), Some(ip("10.1.0.1")), Some(1)),
                IpConfig::new(cidr("fd00::5/64"), None, Some(1)),
            ],
            routes: vec![
                Route {
                    mtu: Some(1400),
                    advmss: Some(1360),
                    priority: Some(10),
                    table: Some(100),
                    scope: Some(0),
                    ..Route::new(cidr("0.0.0.0/0"), Some(ip("10.1.0.1")))
                },
                Route::new(cidr("::/0"), None),
            ],
            dns: Dns {
                nameservers: vec!["10.1.0.1".into()],
                domain: Some("example.org".into()),
                search: vec!["a.example.org".into()],
                options: vec!["ndots:2".into()],
            },
        }
    }

    #[test]
    fn cidr_parses_and_prints_host_addresses() {
        assert_eq!(cidr("10.1.0.5/16").to_string(), "10.1.0.5/16");
        assert_eq!(cidr("fd00::5/64").to_string(), "fd00::5/64");
        assert_eq!(cidr("0.0.0.0/0").family(), "4");
        assert_eq!(cidr("::/0").family(), "6");
        for bad in [
            "10.1.0.5",
            "10.1.0.5/33",
            "fd00::/129",
            "x/8",
            "10.0.0.1/",
            "10.0.0.1/+8",
            "/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn latest_keeps_every_field() {
        let out = rich().to_output(CniVersion::V1_1_0);
        assert_eq!(
            out,
            json!({
                "cniVersion": "1.1.0",
                "interfaces": [
                    {"name": "tap1", "mac": "fa:16:3e:00:00:01"},
                    {"name": "eth0", "mac": "fa:16:3e:00:00:02", "mtu": 1450,
                     "sandbox": "/run/netns/blue", "socketPath": "/run/x.sock",
                     "pciID": "0000:00:01.0"}
                ],
                "ips": [
                    {"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 1},
                    {"address": "fd00::5/64", "interface": 1}
                ],
                "routes": [
                    {"dst": "0.0.0.0/0", "gw": "10.1.0.1", "mtu": 1400, "advmss": 1360,
                     "priority": 10, "table": 100, "scope": 0},
                    {"dst": "::/0"}
                ],
                "dns": {"nameservers": ["10.1.0.1"], "domain": "example.org",
                        "search": ["a.example.org"], "options": ["ndots:2"]}
            })
        );
        // The serde form (the daemon's answer) is the same without cniVersion.
        let mut wire = serde_json::to_value(rich()).unwrap_or_default();
        if let Some(m) = wire.as_object_mut() {
            m.insert("cniVersion".into(), "1.1.0".into());
        }
        assert_eq!(wire, out);
    }

    #[test]
    fn v1_0_0_drops_what_1_1_0_added() {
        let out = rich().to_output(CniVersion::V1_0_0);
        assert_eq!(out["cniVersion"], "1.0.0");
        assert_eq!(
            out["interfaces"][1],
            json!({"name": "eth0", "mac": "fa:16:3e:00:00:02", "sandbox": "/run/netns/blue"})
        );
        assert_eq!(
            out["routes"][0],
            json!({"dst": "0.0.0.0/0", "gw": "10.1.0.1"})
        );
        assert_eq!(
            out["ips"][0],
            json!({"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 1})
        );
        assert_eq!(out["dns"], rich().to_output(CniVersion::V1_1_0)["dns"]);
    }

    #[test]
    fn v0_x_adds_the_address_family() {
        for v in [CniVersion::V0_3_0, CniVersion::V0_3_1, CniVersion::V0_4_0] {
            let out = rich().to_output(v);
            assert_eq!(out["cniVersion"], v.as_str());
            assert_eq!(
                out["ips"],
                json!([
                    {"version": "4", "address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 1},
                    {"version": "6", "address": "fd00::5/64", "interface": 1}
                ])
            );
            assert_eq!(
                out["routes"][0],
                json!({"dst": "0.0.0.0/0", "gw": "10.1.0.1"})
            );
            assert!(out["interfaces"][1].get("mtu").is_none());
        }
        // Positive control: 1.x results carry no family.
        assert!(
            rich().to_output(CniVersion::V1_0_0)["ips"][0]
                .get("version")
                .is_none()
        );
    }

    #[test]
    fn empty_parts_are_omitted() {
        let out = CniResult::default().to_output(CniVersion::V1_1_0);
        assert_eq!(out, json!({"cniVersion": "1.1.0"}));
        assert_eq!(
            serde_json::to_value(CniResult::default()).unwrap_or_default(),
            json!({})
        );
    }

    #[test]
    fn every_version_round_trips_to_the_1_1_0_shape() {
        let full = rich();
        let mut older = rich();
        for i in &mut older.interfaces {
            (i.mtu, i.socket_path, i.pci_id) = (None, None, None);
        }
        for r in &mut older.routes {
            (r.mtu, r.advmss, r.priority, r.table, r.scope) = (None, None, None, None, None);
        }
        for v in crate::version::SUPPORTED_VERSIONS {
            let printed = full.to_output(v);
            let back = CniResult::from_prev_result(&printed, CniVersion::V1_1_0)
                .unwrap_or_else(|e| panic!("{v}: {e}"));
            let want = if v == CniVersion::V1_1_0 {
                &full
            } else {
                &older
            };
            assert_eq!(&back, want, "{v}");
        }
    }

    #[test]
    fn prev_result_without_version_takes_the_netconf_version() {
        // A 0.4.0 result as libcni's cache may hold it: no cniVersion.
        let prev = json!({
            "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}],
            "ips": [{"version": "4", "address": "10.0.0.2/24", "interface": 0}],
            "dns": {}
        });
        let r = CniResult::from_prev_result(&prev, CniVersion::V0_4_0)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            r.ips,
            vec![IpConfig::new(cidr("10.0.0.2/24"), None, Some(0))]
        );
        assert!(r.dns.is_empty());
        // Go's nil slices may be written as null.
        let nulls = json!({"cniVersion": "1.0.0", "interfaces": null, "ips": null,
                           "routes": null, "dns": {"nameservers": null}});
        assert_eq!(
            CniResult::from_prev_result(&nulls, CniVersion::V1_1_0),
            Ok(CniResult::default())
        );
    }

    #[test]
    fn prev_result_errors() {
        let ok =
            json!({"cniVersion": "0.3.1", "ips": [{"version": "4", "address": "10.0.0.2/24"}]});
        assert!(CniResult::from_prev_result(&ok, CniVersion::V1_1_0).is_ok());
        let cases = [
            (
                json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.2/24"}}),
                CniError::INCOMPATIBLE_VERSION,
            ),
            (
                json!({"cniVersion": "9.9.9"}),
                CniError::INCOMPATIBLE_VERSION,
            ),
            (json!({"cniVersion": 4}), CniError::DECODING_FAILURE),
            (
                json!({"ips": [{"address": "10.0.0.2"}]}),
                CniError::DECODING_FAILURE,
            ),
            (
                json!({"ips": [{"address": "10.0.0.2/24", "interface": -1}]}),
                CniError::DECODING_FAILURE,
            ),
            (
                json!({"interfaces": [{"mac": "x"}]}),
                CniError::DECODING_FAILURE,
            ),
            (json!("a string"), CniError::DECODING_FAILURE),
        ];
        for (prev, want) in cases {
            let got = CniResult::from_prev_result(&prev, CniVersion::V1_1_0).err();
            assert_eq!(got.map(|e| e.code), Some(want), "{prev}");
        }
    }

    #[test]
    fn chaining_shifts_our_interface_indices() {
        let prev = CniResult {
            interfaces: vec![Interface::new("cni0"), Interface::new("veth1")],
            ips: vec![IpConfig::new(cidr("10.1.0.5/16"), None, Some(1))],
            routes: vec![Route::new(cidr("0.0.0.0/0"), None)],
            dns: Dns {
                nameservers: vec!["10.1.0.1".into()],
                ..Dns::default()
            },
        };
        let ours = CniResult {
            interfaces: vec![Interface::in_sandbox("eth1", "/run/netns/x")],
            ips: vec![
                IpConfig::new(cidr("192.0.2.7/24"), None, Some(0)),
                IpConfig::new(cidr("192.0.2.8/24"), None, None),
            ],
            routes: vec![Route::new(cidr("198.51.100.0/24"), None)],
            dns: Dns::default(),
        };
        let merged = ours.clone().appended_to(prev.clone());
        let names: Vec<_> = merged.interfaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["cni0", "veth1", "eth1"]);
        let idx: Vec<_> = merged.ips.iter().map(|i| i.interface).collect();
        assert_eq!(idx, [Some(1), Some(2), None]);
        assert_eq!(merged.routes.len(), 2);
        assert_eq!(merged.dns, prev.dns, "our empty dns keeps the previous one");

        let with_dns = CniResult {
            dns: Dns {
                search: vec!["svc".into()],
                ..Dns::default()
            },
            ..ours
        };
        let merged = with_dns.clone().appended_to(prev);
        assert_eq!(merged.dns, with_dns.dns, "our dns wins when set");
        // Without a previous result nothing shifts.
        assert_eq!(with_dns.clone().appended_to(CniResult::default()), with_dns);
    }
}
