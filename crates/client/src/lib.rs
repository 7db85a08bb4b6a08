//! kuryr-client: the one typed HTTP client kuryr's processes use to talk to a Neutron,
//! kuryr's own server or a real OpenStack.
//!
//! - [`Credentials`]: `OS_*` variables ([`Credentials::from_env`]) or clouds.yaml
//!   ([`Credentials::from_cloud`]); Keystone v3 password or application credential
//!   auth, or noauth.
//! - [`Client`]: Keystone token + catalog (re-authenticated before expiry and once on a
//!   401), typed Neutron calls, [`Client::request`] for the rest, and kuryr's extensions
//!   ([`Client::heartbeat`], [`Client::watch_host`]).
//! - [`HostMirror`]: a host's view rebuilt from the watch's frames (pure).

mod client;
mod creds;
mod error;
mod identity;
mod mirror;
mod watch;

pub use client::{Client, ClientConfig, identity_v3_url, v2_url};
pub use creds::{
    AppCredAuth, AppCredRef, AuthMethod, Credentials, Domain, Ident, PasswordAuth,
    clouds_yaml_paths,
};
pub use error::ClientError;
pub use mirror::{HostMirror, MirrorDelta};
pub use reqwest::Method;
pub use watch::HostWatch;

/// `Result` with [`ClientError`].
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
