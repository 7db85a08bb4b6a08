//! Network namespaces: an open handle on one, and running a closure inside it.
//!
//! A namespace is named by a file: `/run/netns/NAME` (what `ip netns add` creates)
//! or `/proc/PID/ns/net` (a process's, e.g. a container's init). Holding the file
//! open keeps the namespace alive even if its name is removed meanwhile.
//!
//! [`run_in`] never switches the calling thread: it enters the namespace on a fresh
//! OS thread that ends with the closure, so no tokio worker ever changes namespace.
//! Sockets keep the namespace they were created in, which is how
//! [`crate::netlink::Netlink::in_namespace`] gets a socket acting in another one.
//!
//! No `unsafe` here: `nix::sched::setns` wraps the syscall.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("opening network namespace {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("duplicating the handle of network namespace {path}: {source}")]
    Dup { path: PathBuf, source: io::Error },
    #[error("spawning a thread to enter network namespace {path}: {source}")]
    Spawn { path: PathBuf, source: io::Error },
    #[error("entering network namespace {path} (setns): {source}")]
    Enter { path: PathBuf, source: io::Error },
    #[error("the closure run in network namespace {path} panicked")]
    Panicked { path: PathBuf },
}

/// An open network namespace.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Opens `/run/netns/NAME`, `/proc/PID/ns/net` or any other nsfs file of a
    /// network namespace. Whether it really is one is checked when it is entered.
    pub fn open(path: impl AsRef<Path>) -> Result<NetNs, NetnsError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| NetnsError::Open {
            path: path.clone(),
            source,
        })?;
        Ok(NetNs { file, path })
    }

    /// The namespace of the calling thread.
    pub fn current() -> Result<NetNs, NetnsError> {
        NetNs::open("/proc/thread-self/ns/net")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A second handle on the same namespace (a `dup` of the file).
    pub fn try_clone(&self) -> Result<NetNs, NetnsError> {
        let file = self.file.try_clone().map_err(|source| NetnsError::Dup {
            path: self.path.clone(),
            source,
        })?;
        Ok(NetNs {
            file,
            path: self.path.clone(),
        })
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Runs `f` on a fresh OS thread that has entered `ns` with setns, waits for it and
/// returns its result. The calling thread (maybe a tokio worker) never changes
/// namespace; it blocks only for as long as `f` runs, so keep `f` short.
pub fn run_in<T: Send + 'static>(
    ns: &NetNs,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetnsError> {
    let target = ns.try_clone()?;
    let path = ns.path.clone();
    let thread = std::thread::Builder::new()
        .name("kuryr-netns".to_string())
        .spawn(move || -> Result<T, NetnsError> {
            setns(target.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|errno| NetnsError::Enter {
                path: target.path.clone(),
                source: io::Error::from(errno),
            })?;
            tracing::debug!(netns = %target.path.display(), "thread entered network namespace");
            Ok(f())
        })
        .map_err(|source| NetnsError::Spawn {
            path: path.clone(),
            source,
        })?;
    thread.join().map_err(|_| NetnsError::Panicked { path })?
}
