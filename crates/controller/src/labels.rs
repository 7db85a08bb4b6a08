//! Label selectors (`metav1.LabelSelector`) in a canonical form: requirements sorted
//! and de-duplicated, so that two selectors that mean the same thing compare (and hash)
//! equal, and a peer group is shared by every policy that names the same peer.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::Serialize;

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Requirement {
    /// The label is set to one of `values` (`matchLabels` are `In` with one value).
    In {
        key: String,
        values: Vec<String>,
    },
    /// The label is absent or set to none of `values`.
    NotIn {
        key: String,
        values: Vec<String>,
    },
    Exists {
        key: String,
    },
    DoesNotExist {
        key: String,
    },
}

impl Requirement {
    fn matches(&self, labels: &Labels) -> bool {
        match self {
            Requirement::In { key, values } => labels.get(key).is_some_and(|v| values.contains(v)),
            Requirement::NotIn { key, values } => {
                labels.get(key).is_none_or(|v| !values.contains(v))
            }
            Requirement::Exists { key } => labels.contains_key(key),
            Requirement::DoesNotExist { key } => !labels.contains_key(key),
        }
    }
}

/// A selector: all its requirements hold. No requirement = everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Selector {
    reqs: Vec<Requirement>,
}

impl Selector {
    /// The selector that matches every object (`{}`).
    pub fn everything() -> Selector {
        Selector::default()
    }

    pub fn is_everything(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Parses a Kubernetes selector; an operator the API does not define, or `In` /
    /// `NotIn` without values, is an error (the API server validates these, so this is
    /// only a guard against what it might let through).
    pub fn from_k8s(sel: &LabelSelector) -> Result<Selector, String> {
        let mut reqs = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            reqs.push(Requirement::In {
                key: k.clone(),
                values: vec![v.clone()],
            });
        }
        for e in sel.match_expressions.iter().flatten() {
            let mut values = e.values.clone().unwrap_or_default();
            values.sort();
            values.dedup();
            let key = e.key.clone();
            let r = match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(format!(
                        "selector operator {} on {key:?} needs values",
                        e.operator
                    ));
                }
                "In" => Requirement::In { key, values },
                "NotIn" => Requirement::NotIn { key, values },
                "Exists" => Requirement::Exists { key },
                "DoesNotExist" => Requirement::DoesNotExist { key },
                op => return Err(format!("unknown selector operator {op:?} on {key:?}")),
            };
            reqs.push(r);
        }
        reqs.sort();
        reqs.dedup();
        Ok(Selector { reqs })
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.reqs.iter().all(|r| r.matches(labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::labels;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: if values.is_empty() {
                None
            } else {
                Some(values.iter().map(|v| v.to_string()).collect())
            },
        }
    }

    fn sel(ml: &[(&str, &str)], ex: Vec<LabelSelectorRequirement>) -> Selector {
        let s = LabelSelector {
            match_labels: if ml.is_empty() {
                None
            } else {
                Some(labels(ml))
            },
            match_expressions: if ex.is_empty() { None } else { Some(ex) },
        };
        Selector::from_k8s(&s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn empty_matches_everything() {
        let s = sel(&[], vec![]);
        assert!(s.is_everything());
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn match_labels_and_expressions() {
        let s = sel(
            &[("app", "web")],
            vec![
                expr("tier", "In", &["front", "edge"]),
                expr("env", "NotIn", &["prod"]),
                expr("team", "Exists", &[]),
                expr("legacy", "DoesNotExist", &[]),
            ],
        );
        let ok = labels(&[("app", "web"), ("tier", "edge"), ("team", "x")]);
        assert!(s.matches(&ok));
        // NotIn matches an absent label and a different value, not a listed one.
        let mut l = ok.clone();
        l.insert("env".into(), "dev".into());
        assert!(s.matches(&l));
        l.insert("env".into(), "prod".into());
        assert!(!s.matches(&l));
        let mut l = ok.clone();
        l.insert("legacy".into(), "".into());
        assert!(!s.matches(&l));
        let mut l = ok.clone();
        l.remove("team");
        assert!(!s.matches(&l));
        let mut l = ok.clone();
        l.insert("tier".into(), "back".into());
        assert!(!s.matches(&l));
        let mut l = ok;
        l.insert("app".into(), "db".into());
        assert!(!s.matches(&l));
    }

    #[test]
    fn canonical_form() {
        let a = sel(
            &[("b", "2"), ("a", "1")],
            vec![expr("c", "In", &["y", "x", "x"])],
        );
        let b = sel(
            &[],
            vec![expr("c", "In", &["x", "y"]), expr("a", "In", &["1"])],
        );
        let b2 = {
            let mut s = b.clone();
            s.reqs.push(Requirement::In {
                key: "b".into(),
                values: vec!["2".into()],
            });
            s.reqs.sort();
            s
        };
        assert_eq!(a, b2);
        assert_ne!(a, b);
    }

    #[test]
    fn bad_selectors_are_errors() {
        for (op, vals) in [("In", vec![]), ("NotIn", vec![]), ("Gt", vec!["1"])] {
            let s = LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![expr("k", op, &vals)]),
            };
            assert!(Selector::from_k8s(&s).is_err(), "{op}");
        }
    }
}
