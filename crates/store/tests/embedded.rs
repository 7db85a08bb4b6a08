//! The conformance suite against the embedded (redb) store.

use std::sync::Arc;

use futures::future::BoxFuture;
use kuryr_store::conformance::Harness;
use kuryr_store::{EmbeddedOptions, EmbeddedStore, Store};

struct Embedded(tempfile::TempDir);

impl Embedded {
    fn new() -> Self {
        Embedded(tempfile::tempdir().expect("tempdir"))
    }
    fn open_opts(&self, retention: u64) -> Arc<dyn Store> {
        let mut o = EmbeddedOptions::new(self.0.path().join("store.redb"));
        o.history_retention = retention;
        Arc::new(EmbeddedStore::open(o).expect("open embedded store"))
    }
}

impl Harness for Embedded {
    fn open(&self) -> BoxFuture<'_, Arc<dyn Store>> {
        Box::pin(async move { self.open_opts(100_000) })
    }
    fn open_with_retention(&self, revisions: u64) -> BoxFuture<'_, Arc<dyn Store>> {
        Box::pin(async move { self.open_opts(revisions) })
    }
}

kuryr_store::conformance_tests!(Embedded::new());
