//! The CNI files an agent installs on its node (`--cni-bin-dir`, `--cni-conf-dir`):
//! the `kuryr-cni` plugin and a conflist naming it. They are written once the agent
//! has synced with the server, so that the runtime (and the kubelet's NetworkReady)
//! sees kuryr only when ADDs can be served; they stay when the agent stops (a restart
//! or an upgrade: the runtime retries meanwhile), and go when kuryr is uninstalled.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

pub const PLUGIN: &str = "kuryr-cni";
pub const CONFLIST: &str = "10-kuryr.conflist";

#[derive(Clone, Debug)]
pub struct CniFiles {
    /// The plugin shipped next to this executable.
    pub source: PathBuf,
    pub bin_dir: Option<PathBuf>,
    pub conf_dir: Option<PathBuf>,
    /// The agent's socket, as the plugin (run by the runtime on the node) reaches it.
    pub socket: PathBuf,
}

impl CniFiles {
    pub fn new(bin_dir: Option<PathBuf>, conf_dir: Option<PathBuf>, socket: PathBuf) -> Self {
        let source = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join(PLUGIN)))
            .unwrap_or_else(|| PathBuf::from(PLUGIN));
        CniFiles {
            source,
            bin_dir,
            conf_dir,
            socket,
        }
    }

    pub fn any(&self) -> bool {
        self.bin_dir.is_some() || self.conf_dir.is_some()
    }

    pub fn conflist(&self) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": "1.1.0",
            "name": "kuryr",
            "plugins": [{"type": PLUGIN, "daemon_socket": self.socket}],
        })
    }

    /// Writes the plugin, then the conflist (a runtime that reads the conflist finds
    /// the plugin), each renamed into place.
    pub fn install(&self) -> anyhow::Result<()> {
        if let Some(dir) = &self.bin_dir {
            let bytes = std::fs::read(&self.source)
                .with_context(|| format!("reading {}", self.source.display()))?;
            write_atomic(&dir.join(PLUGIN), &bytes, 0o755)?;
        }
        if let Some(dir) = &self.conf_dir {
            let text = serde_json::to_vec_pretty(&self.conflist())?;
            write_atomic(&dir.join(CONFLIST), &text, 0o644)?;
        }
        tracing::info!(bin_dir = ?self.bin_dir, conf_dir = ?self.conf_dir, "CNI plugin and conflist installed");
        Ok(())
    }

    /// Removes the conflist first (the runtime stops calling the plugin), then the plugin.
    pub fn uninstall(&self) -> anyhow::Result<()> {
        if let Some(dir) = &self.conf_dir {
            remove_if_present(&dir.join(CONFLIST))?;
        }
        if let Some(dir) = &self.bin_dir {
            remove_if_present(&dir.join(PLUGIN))?;
        }
        Ok(())
    }
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("kuryr-tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_and_removes_both_files() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("plugin-src");
        std::fs::write(&src, b"#!plugin").unwrap();
        let (bin, conf) = (d.path().join("bin"), d.path().join("net.d"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&conf).unwrap();
        // A link left by someone else is replaced, not written through.
        std::os::unix::fs::symlink(&src, bin.join(PLUGIN)).unwrap();
        let files = CniFiles {
            source: src.clone(),
            bin_dir: Some(bin.clone()),
            conf_dir: Some(conf.clone()),
            socket: "/run/kuryr/agent.sock".into(),
        };
        files.install().unwrap();
        assert_eq!(std::fs::read(bin.join(PLUGIN)).unwrap(), b"#!plugin");
        assert!(!bin.join(PLUGIN).is_symlink());
        let conflist: serde_json::Value =
            serde_json::from_slice(&std::fs::read(conf.join(CONFLIST)).unwrap()).unwrap();
        assert_eq!(
            conflist["plugins"][0]["daemon_socket"],
            "/run/kuryr/agent.sock"
        );
        files.install().unwrap();
        files.uninstall().unwrap();
        assert!(!bin.join(PLUGIN).exists() && !conf.join(CONFLIST).exists());
        assert_eq!(
            std::fs::read(&src).unwrap(),
            b"#!plugin",
            "the source stays"
        );
        files.uninstall().unwrap();
    }
}
