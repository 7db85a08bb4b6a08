//! CNI spec 1.1.0 for kuryr: the types, version conversion and error codes shared by
//! the `kuryr-cni` plugin and the agent's CNI daemon.
