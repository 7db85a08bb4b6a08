//! Host programming for kuryr. Everything here acts on the network namespace it is
//! given (or the caller's own); nothing decides *what* should exist — the agent does.
//!
//! - [`netns`]: opening namespaces and running a closure inside one on a dedicated
//!   thread (the only module with `unsafe`-adjacent syscalls).
//! - [`netlink`]: links (bridge, vxlan, veth born in a target namespace), addresses,
//!   routes, FDB and neighbour entries, read back for convergence.
//! - [`nft`]: the security-group ruleset, rendered from a desired state and applied
//!   as one nft transaction, full or as a diff.
//! - [`nfnl`]: nf_tables over netlink in-process: who changed kuryr's tables.
//! - [`router`]: distributed router namespaces (`kqr-*`) converged to a spec.

pub mod netlink;
pub mod netns;
pub mod nfnl;
pub mod nft;
pub mod router;

mod mac;
pub use mac::MacAddr;
