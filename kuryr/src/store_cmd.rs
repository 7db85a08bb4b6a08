//! Which store `kuryr server` runs on (the embedded file, or etcd for several
//! replicas), waiting for etcd at start, and `kuryr store migrate` between the two.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use kuryr_store::{Compare, EmbeddedOptions, EmbeddedStore, Store, Txn, TxnOutcome};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// One redb file in --data-dir, fsync on every commit: one server.
    Embedded,
    /// An etcd v3 cluster: any number of server replicas on one cloud.
    Etcd,
}

/// The etcd connection, with the option names etcdctl users know (`--endpoints`,
/// `--cacert`, `--cert`, `--key`, `--user`) under an `etcd-` prefix.
#[derive(Args, Clone, Debug)]
pub struct EtcdArgs {
    /// etcd client URLs, comma separated (https:// with TLS).
    #[arg(long, value_delimiter = ',', env = "KURYR_ETCD_ENDPOINTS")]
    pub etcd_endpoints: Vec<String>,

    /// Every kuryr key lives under this prefix, so one etcd can serve other programs too.
    #[arg(long, default_value = "/kuryr", env = "KURYR_ETCD_PREFIX")]
    pub etcd_prefix: String,

    /// PEM CA bundle that verifies the etcd members' certificates.
    #[arg(long, env = "KURYR_ETCD_CACERT")]
    pub etcd_cacert: Option<PathBuf>,

    /// PEM client certificate, for etcd's --client-cert-auth.
    #[arg(long, env = "KURYR_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,

    /// The PEM private key of --etcd-cert.
    #[arg(long, env = "KURYR_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,

    /// etcd user, as USER or USER:PASSWORD (etcd's authentication).
    #[arg(long, env = "KURYR_ETCD_USER")]
    pub etcd_user: Option<String>,

    /// The password of --etcd-user (when not given there).
    #[arg(long, env = "KURYR_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,

    /// Seconds one etcd request may take: past it (etcd without quorum) kuryr answers
    /// 503 instead of waiting.
    #[arg(long, default_value_t = 5)]
    pub etcd_timeout: u64,
}

#[derive(Args, Clone, Debug)]
pub struct StoreArgs {
    /// The store: `embedded` (one file in --data-dir) or `etcd` (--etcd-endpoints).
    #[arg(long, value_enum, default_value = "embedded", env = "KURYR_STORE")]
    pub store: Backend,

    #[command(flatten)]
    pub etcd: EtcdArgs,
}

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Copy every key of one store into another, empty one: the embedded store in
    /// --data-dir into etcd (`--to etcd`), or back (`--to embedded`). Stop every
    /// `kuryr server` first: what they write during the copy would be lost.
    Migrate {
        /// The destination; the source is the other store.
        #[arg(long, value_enum)]
        to: Backend,
        /// Directory of the embedded store.
        #[arg(long, default_value = "/var/lib/kuryr", env = "KURYR_DATA_DIR")]
        data_dir: PathBuf,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
}

pub fn embedded_path(data_dir: &Path) -> PathBuf {
    data_dir.join("kuryr.redb")
}

/// Opens the embedded store.
pub fn open_embedded(data_dir: &Path, history: u64) -> anyhow::Result<Arc<dyn Store>> {
    let mut options = EmbeddedOptions::new(embedded_path(data_dir));
    options.history_retention = history;
    let store = EmbeddedStore::open(options).with_context(|| {
        format!(
            "opening the store in {} (is another kuryr using it?)",
            data_dir.display()
        )
    })?;
    Ok(Arc::new(store))
}

/// Connects to etcd, waiting with backoff while it does not answer (a server started
/// before its etcd, or during an etcd outage, comes up when etcd does).
#[cfg(feature = "etcd")]
pub async fn open_etcd(args: &EtcdArgs, history: u64) -> anyhow::Result<Arc<dyn Store>> {
    use kuryr_store::{EtcdOptions, EtcdStore};
    if args.etcd_endpoints.is_empty() {
        bail!("--store etcd needs --etcd-endpoints (or KURYR_ETCD_ENDPOINTS)");
    }
    let mut options = EtcdOptions::new(args.etcd_endpoints.clone());
    options.prefix = args.etcd_prefix.clone();
    options.cacert = args.etcd_cacert.clone();
    options.cert = args.etcd_cert.clone();
    options.key = args.etcd_key.clone();
    options.history_retention = history;
    options.request_timeout = std::time::Duration::from_secs(args.etcd_timeout.max(1));
    options.user = match (&args.etcd_user, &args.etcd_password) {
        (None, _) => None,
        (Some(u), Some(p)) => Some((u.clone(), p.clone())),
        (Some(u), None) => match u.split_once(':') {
            Some((u, p)) => Some((u.to_string(), p.to_string())),
            None => bail!("--etcd-user {u}: give the password as USER:PASSWORD or --etcd-password"),
        },
    };
    let started = Instant::now();
    let mut pause = std::time::Duration::from_millis(200);
    loop {
        match EtcdStore::connect(options.clone()).await {
            Ok(store) => {
                tracing::info!(
                    endpoints = %args.etcd_endpoints.join(","),
                    prefix = %args.etcd_prefix,
                    waited_ms = started.elapsed().as_millis() as u64,
                    "connected to etcd"
                );
                return Ok(Arc::new(store));
            }
            // Only waiting helps with these; anything else (a bad certificate, a
            // wrong password) is the operator's to fix.
            Err(kuryr_store::StoreError::Unavailable(why)) => {
                tracing::warn!(
                    endpoints = %args.etcd_endpoints.join(","),
                    error = %why,
                    retry_in_ms = pause.as_millis() as u64,
                    "waiting for etcd"
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(5));
            }
            Err(e) => return Err(e).context("connecting to etcd"),
        }
    }
}

#[cfg(not(feature = "etcd"))]
pub async fn open_etcd(_: &EtcdArgs, _: u64) -> anyhow::Result<Arc<dyn Store>> {
    bail!(
        "this kuryr was built without the etcd store: build it with `cargo build --release \
         --features kuryr/etcd` (needs protoc: apt-get install protobuf-compiler libprotobuf-dev)"
    )
}

/// The store `kuryr server` runs on.
pub async fn open(
    args: &StoreArgs,
    data_dir: &Path,
    history: u64,
) -> anyhow::Result<Arc<dyn Store>> {
    match args.store {
        Backend::Embedded => open_embedded(data_dir, history),
        Backend::Etcd => open_etcd(&args.etcd, history).await,
    }
}

/// Keys copied per transaction.
const BATCH: usize = 256;

pub async fn run(command: StoreCommand) -> anyhow::Result<()> {
    match command {
        StoreCommand::Migrate { to, data_dir, etcd } => {
            let embedded = open_embedded(&data_dir, 100_000)?;
            let etcd_store = open_etcd(&etcd, 100_000).await?;
            let (from, into, what) = match to {
                Backend::Etcd => (embedded, etcd_store, "embedded store → etcd"),
                Backend::Embedded => (etcd_store, embedded, "etcd → embedded store"),
            };
            let started = Instant::now();
            let copied = copy(&*from, &*into).await?;
            println!(
                "copied {copied} keys ({what}) in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}

/// Copies every key of `from` (one consistent snapshot) into the empty `into`. Every
/// write is guarded by "absent", so a destination that is not empty, or that someone
/// writes to meanwhile, stops the copy rather than mixing two clouds.
pub async fn copy(from: &dyn Store, into: &dyn Store) -> anyhow::Result<usize> {
    let (existing, _) = into.range("/").await.context("reading the destination")?;
    if let Some(kv) = existing.first() {
        bail!(
            "the destination is not empty ({} keys, e.g. {}): refusing to mix two clouds",
            existing.len(),
            kv.key
        );
    }
    let (kvs, revision) = from.range("/").await.context("reading the source")?;
    tracing::info!(keys = kvs.len(), revision, "copying a snapshot");
    for chunk in kvs.chunks(BATCH) {
        let mut txn = Txn::new();
        for kv in chunk {
            txn = txn
                .when(Compare::Absent(kv.key.clone()))
                .put(kv.key.clone(), kv.value.clone());
        }
        match into.txn(txn).await.context("writing the destination")? {
            TxnOutcome::Committed(_) => {}
            TxnOutcome::CompareFailed(i) => bail!(
                "{} appeared in the destination during the copy: is a kuryr server running on it?",
                chunk.get(i).map_or("a key", |kv| kv.key.as_str())
            ),
        }
    }
    Ok(kvs.len())
}
