//! Parsing of request bodies the way Neutron does it: each attribute is taken out
//! of the body and checked, with a 400 that names the attribute when it is wrong;
//! whatever is left at the end is an unrecognized attribute.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Map, Value};

use crate::error::NeutronError;

type Result<T> = std::result::Result<T, NeutronError>;

/// How a JSON value reads in Neutron's messages (Python's repr, roughly).
pub fn show(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Splits a request body `{"<resource>": {...}}` (or the bulk form
/// `{"<resources>": [{...}, ...]}`, whose items may also be wrapped as
/// `{"<resource>": {...}}`) into attribute maps, with neutron's answers to the
/// malformed ones. As in neutron, the collection wins when both keys are given
/// and other top-level keys are ignored.
pub fn unwrap_body(
    body: Value,
    singular: &str,
    plural: &str,
) -> Result<(Vec<Map<String, Value>>, bool)> {
    let Value::Object(mut outer) = body else {
        return Err(NeutronError::bad_request("Body contains invalid data"));
    };
    let object = |v: Value| match v {
        Value::Object(m) => Ok(m),
        _ => Err(NeutronError::bad_request(format!(
            "Object '{singular}' contains invalid data"
        ))),
    };
    if let Some(v) = outer.remove(plural) {
        let Value::Array(items) = v else {
            return Err(NeutronError::bad_request("Body contains invalid data"));
        };
        if items.is_empty() {
            return Err(NeutronError::bad_request("Resources required"));
        }
        let mut maps = Vec::with_capacity(items.len());
        for item in items {
            let Value::Object(mut m) = item else {
                return Err(NeutronError::bad_request("Body contains invalid data"));
            };
            maps.push(match m.remove(singular) {
                Some(inner) => object(inner)?,
                None => m,
            });
        }
        return Ok((maps, true));
    }
    if let Some(v) = outer.remove(singular) {
        return Ok((vec![object(v)?], false));
    }
    Err(NeutronError::bad_request(format!(
        "Unable to find '{singular}' in request body"
    )))
}

/// One resource's attributes being consumed.
pub struct Input {
    map: Map<String, Value>,
}

impl Input {
    pub fn new(map: Map<String, Value>) -> Self {
        Self { map }
    }

    pub fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    pub fn take(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key)
    }

    /// Attributes that may be given but are ignored (read-only echoes clients send back).
    pub fn ignore(&mut self, keys: &[&str]) {
        for k in keys {
            self.map.remove(*k);
        }
    }

    /// Attributes that exist but cannot be changed in this operation.
    pub fn reject(&self, keys: &[&str], verb: &str) -> Result<()> {
        for k in keys {
            if self.map.contains_key(*k) {
                return Err(NeutronError::bad_request(format!(
                    "Attribute '{k}' not allowed in {verb}"
                )));
            }
        }
        Ok(())
    }

    /// Read-only attributes in an update, answered as Neutron does.
    pub fn read_only(&self, keys: &[&str]) -> Result<()> {
        for k in keys {
            if self.map.contains_key(*k) {
                return Err(NeutronError::bad_request(format!(
                    "Cannot update read-only attribute {k}"
                )));
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// A non-null string of at most `max` characters.
    pub fn string(&mut self, key: &str, max: usize) -> Result<Option<String>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => {
                if s.chars().count() > max {
                    Err(NeutronError::invalid_attr(
                        key,
                        format!("'{s}' exceeds maximum length of {max}"),
                    ))
                } else {
                    Ok(Some(s))
                }
            }
            Some(v) => Err(NeutronError::invalid_attr(
                key,
                format!("'{}' is not a valid string", show(&v)),
            )),
        }
    }

    /// A string that may also be null: `Some(None)` means explicitly null.
    pub fn nullable_string(&mut self, key: &str, max: usize) -> Result<Option<Option<String>>> {
        match self.map.get(key) {
            Some(Value::Null) => {
                self.map.remove(key);
                Ok(Some(None))
            }
            _ => Ok(self.string(key, max)?.map(Some)),
        }
    }

    pub fn boolean(&mut self, key: &str) -> Result<Option<bool>> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => to_bool(&v).map(Some).ok_or_else(|| {
                NeutronError::invalid_attr(
                    key,
                    format!("'{}' cannot be converted to boolean", show(&v)),
                )
            }),
        }
    }

    pub fn int(&mut self, key: &str, min: i64, max: i64) -> Result<Option<i64>> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => to_int(&v, key, min, max).map(Some),
        }
    }

    /// An integer that may be null.
    pub fn nullable_int(&mut self, key: &str, min: i64, max: i64) -> Result<Option<Option<i64>>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(v) => to_int(&v, key, min, max).map(|i| Some(Some(i))),
        }
    }

    pub fn uuid(&mut self, key: &str) -> Result<Option<String>> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => uuid(&v, key).map(Some),
        }
    }

    pub fn nullable_uuid(&mut self, key: &str) -> Result<Option<Option<String>>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(v) => uuid(&v, key).map(|u| Some(Some(u))),
        }
    }

    /// A list of strings (tags, security group ids, name servers...).
    pub fn string_list(&mut self, key: &str) -> Result<Option<Vec<String>>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::String(s) => out.push(s),
                        other => {
                            return Err(NeutronError::invalid_attr(
                                key,
                                format!("'{}' is not a valid string", show(&other)),
                            ));
                        }
                    }
                }
                Ok(Some(out))
            }
            Some(v) => Err(NeutronError::invalid_attr(
                key,
                format!("'{}' is not a list", show(&v)),
            )),
        }
    }

    /// A list of objects, returned as maps for the caller to check.
    pub fn object_list(&mut self, key: &str) -> Result<Option<Vec<Map<String, Value>>>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::Object(m) => out.push(m),
                        other => {
                            return Err(NeutronError::invalid_attr(
                                key,
                                format!("'{}' is not a dictionary", show(&other)),
                            ));
                        }
                    }
                }
                Ok(Some(out))
            }
            Some(Value::Null) => Ok(Some(Vec::new())),
            Some(v) => Err(NeutronError::invalid_attr(
                key,
                format!("'{}' is not a list", show(&v)),
            )),
        }
    }

    /// Ends parsing: anything not consumed is an unrecognized attribute.
    pub fn finish(self) -> Result<()> {
        if self.map.is_empty() {
            return Ok(());
        }
        let mut keys: Vec<&str> = self.map.keys().map(String::as_str).collect();
        keys.sort_unstable();
        Err(NeutronError::bad_request(format!(
            "Unrecognized attribute(s) '{}'",
            keys.join(", ")
        )))
    }
}

pub fn to_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Some(true),
            "false" | "0" | "no" | "off" => Some(false),
            _ => None,
        },
        Value::Number(n) => match n.as_i64() {
            Some(1) => Some(true),
            Some(0) => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn to_int(v: &Value, key: &str, min: i64, max: i64) -> Result<i64> {
    let n = match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    let Some(n) = n else {
        return Err(NeutronError::invalid_attr(
            key,
            format!("'{}' is not an integer", show(v)),
        ));
    };
    if n < min {
        return Err(NeutronError::invalid_attr(
            key,
            format!("'{n}' is too small - must be at least '{min}'"),
        ));
    }
    if n > max {
        return Err(NeutronError::invalid_attr(
            key,
            format!("'{n}' is too large - must be no larger than '{max}'"),
        ));
    }
    Ok(n)
}

fn uuid(v: &Value, key: &str) -> Result<String> {
    match v {
        Value::String(s) if is_uuid(s) => Ok(s.clone()),
        other => Err(NeutronError::invalid_attr(
            key,
            format!("'{}' is not a valid UUID", show(other)),
        )),
    }
}

/// UUIDs in any case, with or without dashes (Keystone project ids have none).
pub fn is_uuid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok()
}

pub fn parse_ip(v: &Value, key: &str) -> Result<IpAddr> {
    match v {
        Value::String(s) => s.parse::<IpAddr>().map_err(|_| {
            NeutronError::invalid_attr(key, format!("'{s}' is not a valid IP address"))
        }),
        other => Err(NeutronError::invalid_attr(
            key,
            format!("'{}' is not a valid IP address", show(other)),
        )),
    }
}

/// A CIDR; the address part may have host bits set only when `strict` is false.
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    let net: IpNet = s.parse().ok()?;
    Some(net)
}

/// An IP address or a CIDR, as `remote_ip_prefix` and allowed address pairs take.
pub fn parse_ip_or_cidr(s: &str) -> Option<IpNet> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(IpNet::from(ip));
    }
    s.parse::<IpNet>().ok()
}

/// A unicast MAC address, normalized to lower case with colons.
pub fn parse_mac(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut bytes = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return None;
        }
        bytes[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(format_mac(bytes))
}

pub fn format_mac(b: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[0], b[1], b[2], b[3], b[4], b[5]
    )
}

pub fn mac_bytes(mac: &str) -> Option<[u8; 6]> {
    let norm = parse_mac(mac)?;
    let mut b = [0u8; 6];
    for (i, p) in norm.split(':').enumerate() {
        b[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_attributes_are_named() {
        let Value::Object(m) = json!({"name": "x", "bogus": 1, "alpha": 2}) else {
            unreachable!()
        };
        let mut i = Input::new(m);
        assert_eq!(i.string("name", 255).unwrap().as_deref(), Some("x"));
        let e = i.finish().unwrap_err();
        assert_eq!(e.kind, "HTTPBadRequest");
        assert_eq!(e.message, "Unrecognized attribute(s) 'alpha, bogus'");
    }

    #[test]
    fn wrong_types_name_the_field() {
        let Value::Object(m) = json!({"admin_state_up": "maybe", "mtu": "x"}) else {
            unreachable!()
        };
        let mut i = Input::new(m);
        let e = i.boolean("admin_state_up").unwrap_err();
        assert!(e.message.contains("admin_state_up"), "{}", e.message);
        let e = i.int("mtu", 68, 9000).unwrap_err();
        assert!(e.message.contains("mtu") && e.message.contains("not an integer"));
    }

    #[test]
    fn macs_normalize_and_reject_garbage() {
        assert_eq!(
            parse_mac("FA-16-3E-00-00-0A").as_deref(),
            Some("fa:16:3e:00:00:0a")
        );
        assert!(parse_mac("fa:16:3e:00:00").is_none());
        assert!(parse_mac("zz:16:3e:00:00:00").is_none());
    }

    #[test]
    fn bulk_and_single_bodies() {
        let (items, bulk) =
            unwrap_body(json!({"ports": [{"a": 1}, {"b": 2}]}), "port", "ports").unwrap();
        assert!(bulk);
        assert_eq!(items.len(), 2);
        let (items, bulk) =
            unwrap_body(json!({"port": {"a": 1}, "x": 2}), "port", "ports").unwrap();
        assert!(!bulk);
        assert_eq!(items, vec![json!({"a": 1}).as_object().cloned().unwrap()]);
        let message = |body: Value| unwrap_body(body, "port", "ports").unwrap_err().message;
        assert_eq!(
            message(json!({"port": 3})),
            "Object 'port' contains invalid data"
        );
        assert_eq!(message(json!([1])), "Body contains invalid data");
        assert_eq!(message(json!({"ports": []})), "Resources required");
        assert_eq!(message(json!({"ports": [1]})), "Body contains invalid data");
        assert_eq!(
            message(json!({"ports": [{"port": 1}]})),
            "Object 'port' contains invalid data"
        );
        assert_eq!(
            message(json!({"prt": {}})),
            "Unable to find 'port' in request body"
        );
    }

    #[test]
    fn bulk_items_may_be_wrapped_as_single_bodies() {
        let body = json!({"security_groups": [
            {"security_group": {"name": "a"}},
            {"name": "b"},
        ]});
        let (items, bulk) = unwrap_body(body, "security_group", "security_groups").unwrap();
        assert!(bulk);
        let names: Vec<&str> = items
            .iter()
            .filter_map(|m| m.get("name").and_then(Value::as_str))
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert!(items.iter().all(|m| !m.contains_key("security_group")));
    }
}
