//! What only this host knows and must survive a restart (even a `kill -9`): which
//! namespace each port is bound into, and the conntrack zone of each network here.
//! Written atomically (temp file, rename) by the time a bind answers, so that an
//! agent restarted after a crash finds every binding its callers were told of (an
//! interface without a record, from a bind cut short, is removed as no port's);
//! one file per binding (see [`StateFile`]), so that the cost of a bind does not
//! grow with the host's ports. Binding files are not fsynced (see `write_replace`);
//! `state.json` (the zones) is.

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
    /// Made by a CNI ADD: the container and network config it belongs to, so that
    /// DEL, CHECK and GC find it by what the runtime knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<CniAttachment>,
}

/// A binding's CNI identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniAttachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// The network configuration's `name` (GC is per configuration).
    pub network: String,
    /// The pod whose port this is (`K8S_POD_UID`), in Kubernetes mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The agent made the port for this container (standalone mode): DEL deletes it.
    /// A pod's port belongs to the controller, which recycles it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub owned: bool,
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

/// The state on disk, in a directory: `state.json` holds the zones, and
/// `bindings/<port>.json` one binding each, so that a bind or unbind writes (and
/// fsyncs) one small file whatever the number of ports on the host. A
/// `state.json` that still holds bindings (the earlier single-file layout) is read,
/// and its bindings move to their own files on the next save.
pub struct StateFile {
    path: PathBuf,
    dir: PathBuf,
    /// What the files hold now (`None` until loaded or saved once), and whether
    /// `state.json` still holds bindings of the earlier layout.
    written: std::sync::Mutex<Option<(LocalState, bool)>>,
}

/// A port id as a file name: ASCII letters, digits and `-` as they are, any other
/// byte as `_` and two hex digits (injective, and never `.` or `..`).
fn file_name(port: &str) -> String {
    let mut out = String::with_capacity(port.len() + 5);
    for b in port.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out.push_str(".json");
    out
}

fn port_of(file: &str) -> Option<String> {
    let stem = file.strip_suffix(".json")?;
    let mut out = Vec::with_capacity(stem.len());
    let bytes = stem.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Writes `bytes` to `path` atomically and durably (temp file, fsync, rename); the
/// caller fsyncs the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Writes `bytes` to `path` atomically (temp file, rename), not durably: for the
/// binding files. A binding describes an interface in a container's namespace;
/// neither outlives a crash of the host, and a crash of the agent keeps what it
/// wrote in the page cache. So a bind (on a pod's path) waits for no disk, like the
/// reference CNI's host-local store; a file a host crash tore is skipped at load.
fn write_replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

impl StateFile {
    pub fn new(dir: &Path) -> StateFile {
        StateFile {
            path: dir.join("state.json"),
            dir: dir.join("bindings"),
            written: std::sync::Mutex::new(None),
        }
    }

    pub fn load(&self) -> Result<LocalState, StateError> {
        let read_err = |path: &Path, source| StateError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut state: LocalState = match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StateError::Decode {
                path: self.path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => LocalState::default(),
            Err(source) => return Err(read_err(&self.path, source)),
        };
        // Bindings still in state.json are not in files yet: written on next save.
        let legacy = !state.bindings.is_empty();
        let mut on_disk = LocalState {
            bindings: BTreeMap::new(),
            zones: state.zones.clone(),
        };
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => Some(entries),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(read_err(&self.dir, source)),
        };
        for entry in entries.into_iter().flatten() {
            let entry = entry.map_err(|source| read_err(&self.dir, source))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(port) = port_of(&name) else {
                continue; // a temp file of a write cut short, or someone else's
            };
            let path = entry.path();
            let bytes = std::fs::read(&path).map_err(|source| read_err(&path, source))?;
            let b: Binding = match serde_json::from_slice(&bytes) {
                Ok(b) => b,
                Err(e) => {
                    // Torn by a crash of the host (see write_replace): the interface
                    // it described went with that crash.
                    tracing::warn!(path = %path.display(), error = %e, "skipping an unreadable binding file");
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
            };
            on_disk.bindings.insert(port.clone(), b.clone());
            state.bindings.insert(port, b);
        }
        *self.written.lock().unwrap_or_else(|p| p.into_inner()) = Some((on_disk, legacy));
        Ok(state)
    }

    /// Makes the files hold `state`, writing only what changed since the last load
    /// or save.
    pub fn save(&self, state: &LocalState) -> Result<(), StateError> {
        let mut written = self.written()?;
        let changes = Changes::between(written.as_ref(), state);
        self.apply(&mut written, changes)
    }

    /// Like [`StateFile::save`], but holds `state`'s lock only to find what changed:
    /// the files are written and synced after it is released, so that convergence
    /// passes (which read the state) run meanwhile. Saves are still applied one at a
    /// time, each from the state as it was when it took the lock.
    pub fn save_from(&self, state: &std::sync::Mutex<LocalState>) -> Result<(), StateError> {
        // Lock order as in `save`'s callers: the state, then the files.
        let st = state.lock().unwrap_or_else(|p| p.into_inner());
        let mut written = self.written()?;
        let changes = Changes::between(written.as_ref(), &st);
        drop(st);
        self.apply(&mut written, changes)
    }

    /// What the files hold, read from disk first if never loaded (cleanup, say), so
    /// that files of bindings gone are removed.
    fn written(&self) -> Result<std::sync::MutexGuard<'_, Option<(LocalState, bool)>>, StateError> {
        let unknown = self
            .written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none();
        if unknown {
            self.load()?;
        }
        Ok(self.written.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn apply(
        &self,
        written: &mut Option<(LocalState, bool)>,
        changes: Changes,
    ) -> Result<(), StateError> {
        let err = |path: &Path, source| StateError::Write {
            path: path.to_path_buf(),
            source,
        };
        // Brought up to date in place (a clone of every binding per save would cost
        // what the per-binding files save); left out on an error, so that the
        // next save starts from what is on disk.
        let (mut before, legacy) = written.take().unwrap_or_default();
        std::fs::create_dir_all(&self.dir).map_err(|e| err(&self.dir, e))?;
        for (port, b) in changes.write {
            let path = self.dir.join(file_name(&port));
            let bytes =
                serde_json::to_vec_pretty(&b).map_err(|e| err(&path, std::io::Error::other(e)))?;
            write_replace(&path, &bytes).map_err(|e| err(&path, e))?;
            before.bindings.insert(port, b);
        }
        for port in changes.remove {
            let path = self.dir.join(file_name(&port));
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(err(&path, e));
            }
            before.bindings.remove(&port);
        }
        // state.json: the zones (and no bindings: they are in their files now).
        if changes.zones != before.zones || legacy || !self.path.exists() {
            let zones_only = LocalState {
                bindings: BTreeMap::new(),
                zones: changes.zones,
            };
            let bytes = serde_json::to_vec_pretty(&zones_only)
                .map_err(|e| err(&self.path, std::io::Error::other(e)))?;
            write_atomic(&self.path, &bytes).map_err(|e| err(&self.path, e))?;
            if let Some(parent) = self.path.parent() {
                sync_dir(parent);
            }
            before.zones = zones_only.zones;
        }
        *written = Some((before, false));
        Ok(())
    }
}

/// What a save writes: the bindings new or changed since the files were written,
/// the ones gone, and the zones.
struct Changes {
    write: Vec<(String, Binding)>,
    remove: Vec<String>,
    zones: BTreeMap<String, u16>,
}

impl Changes {
    fn between(written: Option<&(LocalState, bool)>, state: &LocalState) -> Changes {
        let empty = LocalState::default();
        let before = written.map_or(&empty, |(b, _)| b);
        let write = state
            .bindings
            .iter()
            .filter(|(port, b)| before.bindings.get(*port) != Some(*b))
            .map(|(port, b)| (port.clone(), b.clone()))
            .collect();
        // Every file is looked at: one binding gone and another new in the same save
        // leave the count as it was.
        let remove = before
            .bindings
            .keys()
            .filter(|port| !state.bindings.contains_key(*port))
            .cloned()
            .collect();
        Changes {
            write,
            remove,
            zones: state.zones.clone(),
        }
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
    fn bindings_of_the_single_file_layout_move_to_their_own_files() {
        let dir = std::env::temp_dir().join(format!("kuryr-state-old-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("state.json"),
            br#"{"bindings": {"p": {"netns": "/run/netns/x", "ifname": "eth0"}}, "zones": {"n": 3}}"#,
        )
        .unwrap();
        let f = StateFile::new(&dir);
        let s = f.load().unwrap();
        assert_eq!(s.bindings["p"].ifname, "eth0");
        assert_eq!(s.zones["n"], 3);
        f.save(&s).unwrap();
        assert!(dir.join("bindings/p.json").exists());
        let json = std::fs::read_to_string(dir.join("state.json")).unwrap();
        assert!(!json.contains("eth0"), "{json}");
        let again = StateFile::new(&dir).load().unwrap();
        assert_eq!(again.bindings, s.bindings);
        assert_eq!(again.zones, s.zones);
        // A fresh StateFile (cleanup) saving nothing removes every binding file.
        StateFile::new(&dir).save(&LocalState::default()).unwrap();
        assert!(StateFile::new(&dir).load().unwrap().bindings.is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn port_ids_map_to_file_names_and_back() {
        for id in ["3f1c2d4e-aaaa", "a/b", "..", "x_y", "é"] {
            let f = file_name(id);
            assert!(!f.contains('/') && f != "..json", "{f}");
            assert_eq!(port_of(&f).as_deref(), Some(id));
        }
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
        assert!(dir.join("bindings/p.json").exists());
        // another binding, then the first one gone: one file each
        s.bindings.insert(
            "q/1".into(),
            Binding {
                netns: "/run/netns/y".into(),
                ifname: "eth1".into(),
                ..Default::default()
            },
        );
        s.bindings.remove("p");
        f.save(&s).unwrap();
        assert!(!dir.join("bindings/p.json").exists());
        assert!(dir.join("bindings/q_2f1.json").exists());
        assert_eq!(StateFile::new(&dir).load().unwrap().bindings, s.bindings);
        // A torn binding file is skipped (and removed); a torn state.json is an error.
        std::fs::write(dir.join("bindings/q_2f1.json"), b"{not js").unwrap();
        let loaded = StateFile::new(&dir).load().unwrap();
        assert!(loaded.bindings.is_empty());
        assert!(!dir.join("bindings/q_2f1.json").exists());
        std::fs::write(dir.join("state.json"), b"{not json").unwrap();
        assert!(matches!(f.load(), Err(StateError::Decode { .. })));
        let _ = std::fs::remove_dir_all(dir);
    }
}
