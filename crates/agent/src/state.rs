//! What only this host knows and must survive a restart (even a `kill -9`): which
//! namespace each port is bound into, and the conntrack zone of each network here.
//! Written atomically (temp file, fsync, rename) before the kernel is touched, so a
//! crash leaves a record of everything that may exist.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The container's network namespace (a path like /run/netns/X or /proc/PID/ns/net).
    pub netns: PathBuf,
    /// The interface name inside it.
    pub ifname: String,
    /// Docker's way: the container end is made in the agent's own namespace under
    /// `ifname`, bare (MAC and MTU only), and Docker moves it into the sandbox and
    /// configures it. The agent never touches that end again; `netns` is unused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub handoff: bool,
    /// Host ports forwarded to this port (Docker's `-p`), kept with the binding so
    /// that they survive restarts and go with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub published: Vec<PublishedPort>,
}

impl Binding {
    /// Where the interface is, without what is published on it: two binds of a port
    /// are the same if this is.
    pub fn same_place(&self, other: &Binding) -> bool {
        self.netns == other.netns && self.ifname == other.ifname && self.handoff == other.handoff
    }
}

/// One published port: traffic to `host_port` on this host's addresses (or only
/// `host_ip`) is sent to `container_ip:container_port`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublishedPort {
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<std::net::IpAddr>,
    pub host_port: u16,
    pub container_ip: std::net::IpAddr,
    pub container_port: u16,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LocalState {
    /// port id → where it is bound.
    #[serde(default)]
    pub bindings: BTreeMap<String, Binding>,
    /// network id → conntrack zone used for it on this host.
    #[serde(default)]
    pub zones: BTreeMap<String, u16>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading agent state {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("agent state {path} is not valid: {source}")]
    Decode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("writing agent state {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no free conntrack zone left on this host")]
    ZonesExhausted,
}

pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(dir: &Path) -> StateFile {
        StateFile {
            path: dir.join("state.json"),
        }
    }

    pub fn load(&self) -> Result<LocalState, StateError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StateError::Decode {
                path: self.path.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LocalState::default()),
            Err(source) => Err(StateError::Read {
                path: self.path.clone(),
                source,
            }),
        }
    }

    pub fn save(&self, state: &LocalState) -> Result<(), StateError> {
        let err = |source| StateError::Write {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| err(std::io::Error::other(e)))?;
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        if let Some(dir) = self.path.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl LocalState {
    /// The zone of `network`, allocating the lowest free one on first use.
    pub fn zone_for(&mut self, network: &str) -> Result<u16, StateError> {
        if let Some(z) = self.zones.get(network) {
            return Ok(*z);
        }
        let used: std::collections::BTreeSet<u16> = self.zones.values().copied().collect();
        let z = (1..=u16::MAX)
            .find(|z| !used.contains(z))
            .ok_or(StateError::ZonesExhausted)?;
        self.zones.insert(network.to_string(), z);
        Ok(z)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_are_stable_and_reused() {
        let mut s = LocalState::default();
        assert_eq!(s.zone_for("a").unwrap(), 1);
        assert_eq!(s.zone_for("b").unwrap(), 2);
        assert_eq!(s.zone_for("a").unwrap(), 1);
        s.zones.remove("a");
        assert_eq!(s.zone_for("c").unwrap(), 1);
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = std::env::temp_dir().join(format!("kuryr-state-{}", std::process::id()));
        let f = StateFile::new(&dir);
        assert!(f.load().unwrap().bindings.is_empty());
        let mut s = LocalState::default();
        s.bindings.insert(
            "p".into(),
            Binding {
                netns: "/run/netns/x".into(),
                ifname: "eth0".into(),
                ..Default::default()
            },
        );
        f.save(&s).unwrap();
        assert_eq!(f.load().unwrap().bindings, s.bindings);
        std::fs::write(dir.join("state.json"), b"{not json").unwrap();
        assert!(matches!(f.load(), Err(StateError::Decode { .. })));
        let _ = std::fs::remove_dir_all(dir);
    }
}
