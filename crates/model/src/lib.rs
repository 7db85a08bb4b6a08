//! The Neutron resource model: types, input validation and IPAM arithmetic.
//! Pure: no I/O, no clocks except what callers pass in.

pub mod agents;
pub mod error;
pub mod input;
pub mod ipam;
pub mod resources;

pub use agents::*;
pub use error::NeutronError;
pub use resources::*;
