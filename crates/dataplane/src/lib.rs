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
//! - [`probe`]: load-balancer member health checks (Octavia's monitor types) run
//!   from inside the member's namespace, and a monitor with rise/fall.
//! - [`router`]: distributed router namespaces (`kqr-*`) converged to a spec.
//! - [`lb`]: the host side of distributed L4 load balancers (DNAT at the client's bridge).

pub mod lb;
pub mod netlink;
pub mod netns;
pub mod nfnl;
pub mod nft;
pub mod probe;
pub mod router;

mod mac;
pub use mac::MacAddr;
