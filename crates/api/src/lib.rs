//! The kuryr HTTP server: a Keystone v3 subset under `/identity` and Neutron v2.0
//! under `/networking`, on one listener, backed by a [`kuryr_store::Store`].

pub mod identity;
