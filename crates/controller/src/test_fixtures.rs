//! Objects the unit tests of several modules build alike (pods, selectors, labels).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::labels::{Labels, Selector};
use crate::view::PodView;

pub(crate) fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A selector of `matchLabels` only.
pub(crate) fn sel(pairs: &[(&str, &str)]) -> Selector {
    Selector::from_k8s(&LabelSelector {
        match_labels: Some(labels(pairs)),
        match_expressions: None,
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// A running pod on node `n1` that needs a port.
pub(crate) fn pod(ns: &str, name: &str, labels: &[(&str, &str)]) -> PodView {
    PodView {
        namespace: ns.into(),
        name: name.into(),
        uid: format!("uid-{ns}-{name}"),
        labels: self::labels(labels),
        node: Some("n1".into()),
        host_network: false,
        terminal: false,
        named_ports: BTreeMap::new(),
        port_annotation: None,
    }
}
