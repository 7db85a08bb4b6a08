//! The Neutron resource model: types, input validation and IPAM arithmetic.
//! Pure: no I/O, no clocks except what callers pass in.

pub mod agents;
pub mod error;
pub mod input;
pub mod ipam;
pub mod lbaas;
pub mod resources;

pub use agents::*;
pub use error::NeutronError;
pub use lbaas::{HealthMonitor, LbQuota, Listener, LoadBalancer, Member, MemberHealthReport, Pool};
pub use resources::*;
