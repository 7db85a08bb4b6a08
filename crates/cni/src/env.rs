//! The execution protocol's parameters (spec section 2): the verb and the
//! `CNI_*` environment variables, which of them each verb needs, and how they
//! are validated.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::CniError;
use crate::version::CniVersion;

/// Interface names are at most this many bytes (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// A CNI verb (`CNI_COMMAND`), spelled on the wire as the spec spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }

    /// `CNI_COMMAND`'s value; case matters, as in libcni. Unknown is code 4.
    pub fn parse(s: &str) -> Result<Command, CniError> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => {
                return Err(CniError::invalid_environment(
                    format!("unknown CNI_COMMAND: {s}"),
                    "CNI_COMMAND must be one of ADD, DEL, CHECK, STATUS, GC, VERSION",
                ));
            }
        })
    }

    /// The attachment verbs carry a container, a netns and an interface.
    pub fn is_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }

    /// The first spec version that has this verb.
    pub fn min_version(self) -> CniVersion {
        match self {
            Command::Check => CniVersion::V0_4_0,
            Command::Status | Command::Gc => CniVersion::V1_1_0,
            Command::Add | Command::Del | Command::Version => CniVersion::V0_3_0,
        }
    }

    /// Code 1 when the netconf's version predates the verb (libcni's wording).
    pub fn check_version(self, version: CniVersion) -> Result<(), CniError> {
        if version < self.min_version() {
            return Err(CniError::incompatible_version(
                format!("config version does not allow {self}"),
                format!(
                    "{self} needs cniVersion {} or later, the config is {version}",
                    self.min_version()
                ),
            ));
        }
        Ok(())
    }

    /// Which environment variables the spec requires for this verb, beyond
    /// `CNI_COMMAND`.
    pub fn required_env(self) -> &'static [&'static str] {
        match self {
            Command::Add | Command::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
            // DEL must work when the netns is already gone.
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
            Command::Gc => &["CNI_PATH"],
            Command::Status | Command::Version => &[],
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One invocation's parameters, read from the environment and validated.
/// Empty variables count as unset: libcni always sets all of them, empty when
/// they do not apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    /// Set for ADD, DEL, CHECK.
    pub container_id: Option<String>,
    /// Set for ADD, CHECK; for DEL when the runtime still has one.
    pub netns: Option<String>,
    /// Set for ADD, DEL, CHECK.
    pub ifname: Option<String>,
    /// `CNI_ARGS` parsed (ADD, DEL, CHECK); empty otherwise.
    pub args: BTreeMap<String, String>,
    pub path: Option<String>,
}

impl Invocation {
    /// Reads the parameters through `get` (`std::env::var` in the plugin).
    /// Missing required variables are reported together, then malformed ones;
    /// each is code 4 naming the variable.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Invocation, CniError> {
        let var = |name: &str| get(name).filter(|v| !v.is_empty());
        let command = match var("CNI_COMMAND") {
            Some(c) => Command::parse(&c)?,
            None => {
                return Err(CniError::invalid_environment(
                    "required env variables [CNI_COMMAND] missing",
                    "",
                ));
            }
        };
        let missing: Vec<&str> = command
            .required_env()
            .iter()
            .copied()
            .filter(|name| var(name).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(CniError::invalid_environment(
                format!("required env variables [{}] missing", missing.join(",")),
                format!("{command} needs {}", command.required_env().join(", ")),
            ));
        }
        let mut inv = Invocation {
            command,
            container_id: None,
            netns: None,
            ifname: None,
            args: BTreeMap::new(),
            path: var("CNI_PATH"),
        };
        // GC and STATUS have no attachment parameters: whatever is set is ignored.
        if command.is_attachment() {
            if let Some(id) = var("CNI_CONTAINERID") {
                validate_container_id(&id)?;
                inv.container_id = Some(id);
            }
            if let Some(name) = var("CNI_IFNAME") {
                validate_ifname(&name)?;
                inv.ifname = Some(name);
            }
            inv.netns = var("CNI_NETNS");
            if let Some(args) = var("CNI_ARGS") {
                inv.args = parse_cni_args(&args)?;
            }
        }
        Ok(inv)
    }
}

/// The spec's rule for container ids and network names: an alphanumeric, then
/// alphanumerics, `_`, `.` or `-`.
pub fn is_valid_cni_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `CNI_CONTAINERID` (code 4 when malformed).
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    if !is_valid_cni_name(id) {
        return Err(CniError::invalid_environment(
            "invalid characters in CNI_CONTAINERID",
            format!(
                "{id:?}: a container id starts with an alphanumeric character, \
                 followed by alphanumerics, '_', '.' or '-'"
            ),
        ));
    }
    Ok(())
}

/// `CNI_IFNAME` (code 4 when malformed): what the kernel accepts as a name.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let invalid = |why: &str| {
        CniError::invalid_environment(format!("invalid CNI_IFNAME: {why}"), format!("{name:?}"))
    };
    if name.is_empty() {
        return Err(invalid("interface name is empty"));
    }
    if name.len() > MAX_IFNAME_LEN {
        return Err(invalid("interface name is longer than 15 bytes"));
    }
    if name == "." || name == ".." {
        return Err(invalid("interface name is . or .."));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(invalid("interface name contains '/', ':' or whitespace"));
    }
    Ok(())
}

/// `CNI_ARGS`: `K=V` pairs separated by `;`. A value may itself contain `=`
/// (split at the first one); empty segments (a trailing `;`) are skipped; a
/// repeated key keeps its last value. A segment without `=` or with an empty
/// key is code 4. `IgnoreUnknown=1` is an ordinary key.
pub fn parse_cni_args(s: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut args = BTreeMap::new();
    for pair in s.split(';').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                args.insert(k.to_string(), v.to_string());
            }
            _ => {
                return Err(CniError::invalid_environment(
                    "invalid CNI_ARGS",
                    format!("{pair:?} is not KEY=VALUE (CNI_ARGS is K=V;K=V)"),
                ));
            }
        }
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    fn err_code(r: Result<Invocation, CniError>) -> Option<u32> {
        r.err().map(|e| e.code)
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c0ffee.1_a-b"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
        ),
        ("CNI_PATH", "/opt/cni/bin"),
    ];

    #[test]
    fn add_reads_everything() {
        let inv = Invocation::from_env(env(ADD)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(inv.command, Command::Add);
        assert_eq!(inv.container_id.as_deref(), Some("c0ffee.1_a-b"));
        assert_eq!(inv.netns.as_deref(), Some("/run/netns/x"));
        assert_eq!(inv.ifname.as_deref(), Some("eth0"));
        assert_eq!(inv.args.get("IgnoreUnknown").map(String::as_str), Some("1"));
        assert_eq!(
            inv.args.get("K8S_POD_NAME").map(String::as_str),
            Some("web-0")
        );
        assert_eq!(inv.path.as_deref(), Some("/opt/cni/bin"));
    }

    #[test]
    fn each_verb_requires_its_variables() {
        // (verb, the variables set, the missing ones the message must name)
        let cases: &[(&str, &[&str], Option<&str>)] = &[
            ("ADD", &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"], None),
            (
                "ADD",
                &["CNI_CONTAINERID", "CNI_IFNAME"],
                Some("[CNI_NETNS]"),
            ),
            ("ADD", &["CNI_NETNS"], Some("[CNI_CONTAINERID,CNI_IFNAME]")),
            (
                "CHECK",
                &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
                None,
            ),
            (
                "CHECK",
                &["CNI_CONTAINERID", "CNI_NETNS"],
                Some("[CNI_IFNAME]"),
            ),
            ("DEL", &["CNI_CONTAINERID", "CNI_IFNAME"], None),
            (
                "DEL",
                &["CNI_IFNAME", "CNI_NETNS"],
                Some("[CNI_CONTAINERID]"),
            ),
            ("GC", &["CNI_PATH"], None),
            ("GC", &[], Some("[CNI_PATH]")),
            ("STATUS", &[], None),
            ("VERSION", &[], None),
        ];
        let value = |n: &str| match n {
            "CNI_CONTAINERID" => "c1",
            "CNI_NETNS" => "/run/netns/x",
            "CNI_IFNAME" => "eth0",
            _ => "/opt/cni/bin",
        };
        for (verb, set, missing) in cases {
            let mut vars: Vec<(&str, &str)> = vec![("CNI_COMMAND", verb)];
            vars.extend(set.iter().map(|n| (*n, value(n))));
            // Empty means unset, as libcni passes variables that do not apply.
            vars.push(("CNI_ARGS", ""));
            let got = Invocation::from_env(env(&vars));
            match missing {
                None => assert!(got.is_ok(), "{verb} {set:?}: {got:?}"),
                Some(names) => {
                    let e = got.err().unwrap_or_else(|| panic!("{verb} {set:?} passed"));
                    assert_eq!(e.code, CniError::INVALID_ENVIRONMENT);
                    assert!(e.msg.contains(names), "{verb}: {}", e.msg);
                }
            }
        }
    }

    #[test]
    fn gc_and_status_ignore_attachment_parameters() {
        let vars = [
            ("CNI_COMMAND", "GC"),
            ("CNI_PATH", "/opt/cni/bin"),
            ("CNI_CONTAINERID", "-bad"),
            ("CNI_IFNAME", "bad/name"),
            ("CNI_ARGS", "garbage"),
        ];
        let inv = Invocation::from_env(env(&vars)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (inv.container_id, inv.ifname, inv.args.len()),
            (None, None, 0)
        );
    }

    #[test]
    fn command_errors() {
        assert_eq!(
            err_code(Invocation::from_env(env(&[]))),
            Some(CniError::INVALID_ENVIRONMENT)
        );
        let e = Invocation::from_env(env(&[("CNI_COMMAND", "add")])).err();
        assert_eq!(
            e.as_ref().map(|e| e.code),
            Some(CniError::INVALID_ENVIRONMENT)
        );
        assert!(e.is_some_and(|e| e.msg.contains("CNI_COMMAND")));
        assert!(Invocation::from_env(env(&[("CNI_COMMAND", "VERSION")])).is_ok());
    }

    #[test]
    fn container_id_and_ifname_are_validated() {
        let with = |k: &'static str, v: &'static str| {
            let mut vars = ADD.to_vec();
            for e in &mut vars {
                if e.0 == k {
                    e.1 = v;
                }
            }
            Invocation::from_env(env(&vars))
        };
        assert!(with("CNI_CONTAINERID", "a").is_ok());
        assert!(
            with("CNI_IFNAME", "abcdefghijklmno").is_ok(),
            "15 bytes is fine"
        );
        for (k, v) in [
            ("CNI_CONTAINERID", "-abc"),
            ("CNI_CONTAINERID", "ab/c"),
            ("CNI_CONTAINERID", "ab c"),
            ("CNI_CONTAINERID", "é"),
            ("CNI_IFNAME", "abcdefghijklmnop"),
            ("CNI_IFNAME", "."),
            ("CNI_IFNAME", ".."),
            ("CNI_IFNAME", "eth/0"),
            ("CNI_IFNAME", "eth:0"),
            ("CNI_IFNAME", "eth 0"),
            ("CNI_IFNAME", "eth\t0"),
        ] {
            let e = with(k, v)
                .err()
                .unwrap_or_else(|| panic!("{k}={v:?} passed"));
            assert_eq!(e.code, CniError::INVALID_ENVIRONMENT, "{k}={v:?}");
            assert!(e.msg.contains(k), "{k}: {}", e.msg);
        }
    }

    #[test]
    fn cni_args() {
        let args = parse_cni_args("A=1;B=x=y;;C=;A=2;").unwrap_or_else(|e| panic!("{e}"));
        let got: Vec<_> = args.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, [("A", "2"), ("B", "x=y"), ("C", "")]);
        assert_eq!(parse_cni_args("").map(|a| a.len()), Ok(0));
        for bad in ["A", "A=1;B", "=1", "A=1;=2"] {
            let e = parse_cni_args(bad).err();
            assert_eq!(
                e.as_ref().map(|e| e.code),
                Some(CniError::INVALID_ENVIRONMENT),
                "{bad}"
            );
            assert!(e.is_some_and(|e| e.msg.contains("CNI_ARGS")));
        }
    }

    #[test]
    fn verbs_and_versions() {
        for (cmd, s) in [
            (Command::Add, "ADD"),
            (Command::Del, "DEL"),
            (Command::Check, "CHECK"),
            (Command::Status, "STATUS"),
            (Command::Gc, "GC"),
            (Command::Version, "VERSION"),
        ] {
            assert_eq!(Command::parse(s), Ok(cmd));
            assert_eq!(serde_json::to_value(cmd).ok(), Some(serde_json::json!(s)));
        }
        assert!(Command::Check.check_version(CniVersion::V0_4_0).is_ok());
        assert!(Command::Add.check_version(CniVersion::V0_3_0).is_ok());
        assert!(Command::Gc.check_version(CniVersion::V1_1_0).is_ok());
        for (cmd, v) in [
            (Command::Check, CniVersion::V0_3_1),
            (Command::Status, CniVersion::V1_0_0),
            (Command::Gc, CniVersion::V1_0_0),
        ] {
            let e = cmd.check_version(v).err();
            assert_eq!(
                e.as_ref().map(|e| e.code),
                Some(CniError::INCOMPATIBLE_VERSION)
            );
            assert!(e.is_some_and(|e| e.msg.contains(cmd.as_str())));
        }
    }
}
