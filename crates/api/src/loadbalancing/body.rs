//! Request bodies, validated as Octavia's wsme types do, with its messages.

use std::net::IpAddr;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::LbResult;
use super::fault::Fault;
use crate::networking::Ctx;

pub struct Body {
    pub root: &'static str,
    pub map: Map<String, Value>,
}

fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Body {
    /// `{"<root>": {...}}`.
    pub fn parse(raw: &Bytes, root: &'static str) -> LbResult<Body> {
        let v: Value = serde_json::from_slice(raw).map_err(|_| Fault::bad_body())?;
        match v {
            Value::Object(mut m) => match m.remove(root) {
                Some(Value::Object(map)) => Ok(Body { root, map }),
                Some(other) => Err(Fault::invalid(
                    root,
                    shown(&other),
                    "Value should be an object.",
                )),
                None => Err(Fault::new(
                    400,
                    format!(
                        "Invalid input for field/attribute {root}. Value: 'None'. Mandatory field missing."
                    ),
                )),
            },
            other => Err(Fault::invalid(
                root,
                shown(&other),
                "Value should be an object.",
            )),
        }
    }

    /// Refuses attributes outside `allowed`, naming the argument as Octavia's
    /// wsme types do (`load_balancer.loadbalancer`, `listener_.listener`, ...).
    pub fn only(&self, allowed: &[&str]) -> LbResult<()> {
        let argument = match self.root {
            "loadbalancer" => "load_balancer.loadbalancer",
            "listener" => "listener_.listener",
            "pool" => "pool_.pool",
            "member" => "member_.member",
            "healthmonitor" => "health_monitor_.healthmonitor",
            other => other,
        };
        match self.map.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(Fault::new(
                400,
                format!("Unknown attribute for argument {argument}: {k}"),
            )),
            None => Ok(()),
        }
    }

    /// An id attribute: Octavia checks the UUID format first.
    pub fn opt_uuid(&self, name: &str) -> LbResult<Option<String>> {
        match self.opt_str(name)? {
            Some(s) if uuid::Uuid::parse_str(&s).is_err() => {
                Err(Fault::invalid(name, &s, "Value should be UUID format"))
            }
            other => Ok(other),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// Present, not null, and not an empty list or object.
    pub fn non_empty(&self, name: &str) -> bool {
        match self.map.get(name) {
            None | Some(Value::Null) => false,
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::Object(o)) => !o.is_empty(),
            Some(_) => true,
        }
    }

    pub fn opt_str(&self, name: &str) -> LbResult<Option<String>> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => {
                if s.len() > 255 {
                    return Err(Fault::invalid(
                        name,
                        s,
                        "Value should have a maximum character requirement of 255",
                    ));
                }
                Ok(Some(s.clone()))
            }
            Some(v) => Err(Fault::invalid(name, shown(v), "Value should be string.")),
        }
    }

    pub fn req_str(&self, name: &str) -> LbResult<String> {
        self.opt_str(name)?.ok_or_else(|| {
            Fault::new(
                400,
                format!("Invalid input for field/attribute {name}. Value: 'None'. Mandatory field missing."),
            )
        })
    }

    pub fn opt_bool(&self, name: &str) -> LbResult<Option<bool>> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(v) => Err(Fault::invalid(name, shown(v), "Value should be boolean.")),
        }
    }

    pub fn opt_ip(&self, name: &str) -> LbResult<Option<IpAddr>> {
        match self.opt_str(name)? {
            None => Ok(None),
            Some(s) => s
                .parse()
                .map(Some)
                .map_err(|_| Fault::invalid(name, &s, "Value should be IPv4 or IPv6 format")),
        }
    }

    /// An integer in `min..=max`.
    pub fn opt_int(&self, name: &str, min: i64, max: i64) -> LbResult<Option<i64>> {
        let v = match self.map.get(name) {
            None | Some(Value::Null) => return Ok(None),
            Some(v) => v,
        };
        let n = match v {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .ok_or_else(|| Fault::invalid(name, shown(v), "Value should be integer."))?;
        if n < min {
            return Err(Fault::invalid(
                name,
                n,
                &format!("Value should be greater or equal to {min}"),
            ));
        }
        if n > max {
            return Err(Fault::invalid(
                name,
                n,
                &format!("Value should be lower or equal to {max}"),
            ));
        }
        Ok(Some(n))
    }

    /// One of `allowed` (Octavia's enum types).
    pub fn opt_enum(&self, name: &str, allowed: &[&str]) -> LbResult<Option<String>> {
        match self.opt_str(name)? {
            None => Ok(None),
            Some(s) if allowed.contains(&s.as_str()) => Ok(Some(s)),
            Some(s) => Err(Fault::invalid(
                name,
                &s,
                &format!("Value should be one of: {}", allowed.join(", ")),
            )),
        }
    }

    pub fn tags(&self) -> LbResult<Vec<String>> {
        match self.map.get("tags") {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|t| match t {
                    Value::String(s) if s.len() <= 255 => Ok(s.clone()),
                    other => Err(Fault::invalid(
                        "tags",
                        shown(other),
                        "Value should be string.",
                    )),
                })
                .collect(),
            Some(v) => Err(Fault::invalid("tags", shown(v), "Value should be a list.")),
        }
    }

    pub fn opt_list(&self, name: &str) -> LbResult<Option<Vec<String>>> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|t| match t {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(Fault::invalid(
                        name,
                        shown(other),
                        "Value should be string.",
                    )),
                })
                .collect::<LbResult<Vec<_>>>()
                .map(Some),
            Some(v) => Err(Fault::invalid(name, shown(v), "Value should be a list.")),
        }
    }
}

/// The project of a create: the caller's, or another one for admins only.
pub fn project(b: &Body, ctx: &Ctx) -> LbResult<String> {
    let asked = match b.opt_str("project_id")? {
        Some(p) => Some(p),
        None => b.opt_str("tenant_id")?,
    };
    let project = asked.unwrap_or_else(|| ctx.project().to_string());
    if !super::list::can_write(ctx, &project) {
        return Err(Fault::forbidden());
    }
    Ok(project)
}

/// Octavia's quota check: `-1` is unlimited.
pub fn check_quota(limit: i64, used: usize, resource: &str) -> LbResult<()> {
    if limit >= 0 && used as i64 >= limit {
        return Err(Fault::quota(resource));
    }
    Ok(())
}
