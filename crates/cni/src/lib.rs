//! CNI spec 1.1.0 for kuryr: the types, version conversion and error codes shared by
//! the `kuryr-cni` plugin and the agent's CNI daemon.
//!
//! - [`env`]: the verb ([`Command`]) and the `CNI_*` variables ([`Invocation`]);
//! - [`conf`]: the netconf on stdin ([`NetConf`]);
//! - [`result`]: the ADD result in the 1.1.0 shape ([`CniResult`]) and its
//!   conversion to and from 0.3.0–1.0.0;
//! - [`error`]: the error result and its codes ([`CniError`]);
//! - [`request`]: the plugin → agent request ([`DaemonRequest`]).
//!
//! Supported versions: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0 (not 0.1.0/0.2.0).

pub mod conf;
pub mod env;
pub mod error;
pub mod request;
pub mod result;
pub mod version;

pub use conf::{GcAttachment, NetConf, valid_attachments};
pub use env::{Command, Invocation, parse_cni_args, validate_container_id, validate_ifname};
pub use error::CniError;
pub use request::{DAEMON_PATH, DEFAULT_SOCKET, DaemonRequest, SOCKET_ENV};
pub use result::{Cidr, CniResult, Dns, Interface, IpConfig, Route};
pub use version::{CniVersion, SUPPORTED_VERSIONS, VersionInfo};
