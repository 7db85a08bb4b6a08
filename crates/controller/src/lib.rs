//! The kuryr Kubernetes controller.
