//! An in-memory redb backend whose writes and syncs fail on demand: for tests of
//! what the store and its users do when a commit fails (a full or broken disk).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug)]
pub struct FailingBackend {
    inner: redb::backends::InMemoryBackend,
    fail: Arc<AtomicBool>,
}

impl FailingBackend {
    /// A backend, and the switch that makes its writes fail while it is true.
    pub fn new() -> (FailingBackend, Arc<AtomicBool>) {
        let fail = Arc::new(AtomicBool::new(false));
        let backend = FailingBackend {
            inner: redb::backends::InMemoryBackend::new(),
            fail: fail.clone(),
        };
        (backend, fail)
    }

    fn check(&self) -> std::io::Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            Err(std::io::Error::other("injected I/O failure"))
        } else {
            Ok(())
        }
    }
}

impl redb::StorageBackend for FailingBackend {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.check()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.check()?;
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.check()?;
        self.inner.write(offset, data)
    }
}
