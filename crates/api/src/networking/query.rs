//! Neutron's list semantics: attribute filters (repeated = OR), tag filters,
//! `fields`, sorting and marker pagination with `*_links`.

use std::cmp::Ordering;

use kuryr_model::NeutronError;
use serde_json::{Map, Value, json};

use super::db::{Db, Entry};
use super::policy::{Lazy, POLICY, Target};
use super::resource::{Resource, target_of};
use super::{ApiError, ApiResult, Ctx};

#[derive(Debug, Default)]
pub struct ListQuery {
    pub fields: Vec<String>,
    pub limit: Option<usize>,
    pub marker: Option<String>,
    pub page_reverse: bool,
    pub sorts: Vec<(String, bool)>,
    pub tags: Vec<String>,
    pub tags_any: Vec<String>,
    pub not_tags: Vec<String>,
    pub not_tags_any: Vec<String>,
    /// Attribute → accepted values (any of them).
    pub filters: Vec<(String, Vec<String>)>,
    raw: Vec<(String, String)>,
}

impl ListQuery {
    pub fn parse(q: &str) -> ApiResult<Self> {
        let mut out = ListQuery::default();
        let mut sort_keys = Vec::new();
        let mut sort_dirs = Vec::new();
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            let (k, v) = (k.into_owned(), v.into_owned());
            out.raw.push((k.clone(), v.clone()));
            let split = |v: &str| {
                v.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            };
            match k.as_str() {
                "fields" => out.fields.extend(split(&v)),
                "limit" => {
                    let n = v.parse::<i64>().map_err(|_| {
                        ApiError(NeutronError::bad_request(format!(
                            "Limit must be an integer 0 or greater and not '{v}'"
                        )))
                    })?;
                    out.limit = (n > 0).then_some(n as usize);
                }
                "marker" => out.marker = Some(v),
                "page_reverse" => {
                    out.page_reverse =
                        kuryr_model::input::to_bool(&Value::String(v)).unwrap_or(false)
                }
                "sort_key" => sort_keys.push(v),
                "sort_dir" => sort_dirs.push(v),
                "tags" => out.tags.extend(split(&v)),
                "tags-any" => out.tags_any.extend(split(&v)),
                "not-tags" => out.not_tags.extend(split(&v)),
                "not-tags-any" => out.not_tags_any.extend(split(&v)),
                _ => match out.filters.iter_mut().find(|(name, _)| *name == k) {
                    Some((_, vals)) => vals.push(v),
                    None => out.filters.push((k, vec![v])),
                },
            }
        }
        for (i, key) in sort_keys.into_iter().enumerate() {
            let asc = match sort_dirs.get(i).map(String::as_str) {
                None | Some("asc") => true,
                Some("desc") => false,
                Some(d) => {
                    return Err(ApiError(NeutronError::bad_request(format!(
                        "Sort direction specified '{d}' is not valid; use 'asc' or 'desc'"
                    ))));
                }
            };
            out.sorts.push((key, asc));
        }
        Ok(out)
    }

    pub fn filter(&self, name: &str) -> Option<&[String]> {
        self.filters
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// Keeps only the requested fields (all when none are asked for).
pub fn project(mut view: Map<String, Value>, fields: &[String]) -> Map<String, Value> {
    if fields.is_empty() {
        return view;
    }
    view.retain(|k, _| fields.iter().any(|f| f == k));
    view
}

/// Writes only the requested fields of a view, without copying it.
fn write_fields(view: &Map<String, Value>, fields: &[String], out: &mut Vec<u8>) {
    out.push(b'{');
    let mut first = true;
    for (k, v) in view.iter().filter(|(k, _)| fields.contains(k)) {
        if !first {
            out.push(b',');
        }
        first = false;
        let _ = serde_json::to_writer(&mut *out, k);
        out.push(b':');
        let _ = serde_json::to_writer(&mut *out, v);
    }
    out.push(b'}');
}

/// What a list of one resource may filter on: neutron's attributes with `is_filter`
/// (neutron-lib's definitions and the extensions kuryr advertises, as neutron-server 29
/// answers), besides the tag filters.
struct FilterSpec {
    resource: &'static str,
    /// Filters on attributes of the representation.
    shown: &'static [&'static str],
    /// Filters on attributes the representation does not show (`is_filter` without
    /// `is_visible`), with the fact of the policy target that holds their value.
    hidden: &'static [(&'static str, &'static str)],
}

impl FilterSpec {
    fn accepts(&self, name: &str) -> bool {
        COMMON_FILTERS.contains(&name)
            || self.shown.contains(&name)
            || self.hidden.iter().any(|(a, _)| *a == name)
    }
}

/// Filters every resource here has (standard attributes and the project).
const COMMON_FILTERS: [&str; 5] = [
    "id",
    "project_id",
    "tenant_id",
    "description",
    "revision_number",
];

const FILTER_SPECS: &[FilterSpec] = &[
    FilterSpec {
        resource: "router",
        shown: &["name", "admin_state_up"],
        hidden: &[],
    },
    FilterSpec {
        resource: "floatingip",
        shown: &[
            "floating_ip_address",
            "floating_network_id",
            "router_id",
            "port_id",
            "fixed_ip_address",
            "status",
        ],
        hidden: &[],
    },
    FilterSpec {
        resource: "network",
        shown: &[
            "name",
            "admin_state_up",
            "status",
            "shared",
            "mtu",
            "router:external",
            "is_default",
            "provider:network_type",
            "provider:physical_network",
            "provider:segmentation_id",
        ],
        hidden: &[],
    },
    FilterSpec {
        resource: "subnet",
        shown: &[
            "name",
            "network_id",
            "ip_version",
            "cidr",
            "gateway_ip",
            "enable_dhcp",
            "ipv6_address_mode",
            "ipv6_ra_mode",
            "subnetpool_id",
            "segment_id",
            "router:external",
        ],
        // A subnet is shared when its network is.
        hidden: &[("shared", "network:shared")],
    },
    FilterSpec {
        resource: "port",
        shown: &[
            "name",
            "network_id",
            "mac_address",
            "admin_state_up",
            "status",
            "device_id",
            "device_owner",
            "fixed_ips",
            "security_groups",
            "binding:host_id",
            "ip_allocation",
        ],
        hidden: &[],
    },
    FilterSpec {
        resource: "subnetpool",
        shown: &[
            "name",
            "ip_version",
            "default_prefixlen",
            "min_prefixlen",
            "max_prefixlen",
            "shared",
            "is_default",
            "default_quota",
            "address_scope_id",
        ],
        hidden: &[],
    },
    FilterSpec {
        resource: "security_group",
        shown: &["name", "stateful", "shared"],
        hidden: &[],
    },
    FilterSpec {
        resource: "security_group_rule",
        shown: &[
            "security_group_id",
            "direction",
            "ethertype",
            "protocol",
            "port_range_min",
            "port_range_max",
            "remote_ip_prefix",
            "remote_group_id",
            "remote_address_group_id",
            "normalized_cidr",
            "belongs_to_default_sg",
        ],
        hidden: &[],
    },
];

fn filter_spec(resource: &str) -> Option<&'static FilterSpec> {
    FILTER_SPECS.iter().find(|s| s.resource == resource)
}

/// Neutron's 400 for filters that are not filters, naming all of them as a Python
/// list: `['foo', 'bar'] is invalid attribute for filtering`.
pub(super) fn check_filters<'a>(
    names: impl Iterator<Item = &'a str>,
    valid: impl Fn(&str) -> bool,
) -> ApiResult<()> {
    let invalid: Vec<String> = names.filter(|k| !valid(k)).map(py_repr).collect();
    if invalid.is_empty() {
        return Ok(());
    }
    Err(ApiError(NeutronError::bad_request(format!(
        "[{}] is invalid attribute for filtering",
        invalid.join(", ")
    ))))
}

/// A string as Python's `repr` writes it (what neutron's messages quote).
pub(super) fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

fn scalar_matches(v: &Value, want: &str) -> bool {
    match v {
        Value::String(s) => s == want,
        Value::Bool(b) => kuryr_model::input::to_bool(&Value::String(want.to_string())) == Some(*b),
        Value::Number(n) => n.to_string() == want,
        Value::Null => want.is_empty() || want == "None" || want == "null",
        _ => false,
    }
}

/// One attribute filter against a view. Lists match when any element matches;
/// `fixed_ips=ip_address=X` / `subnet_id=Y` match inside the list of objects.
fn matches(view: &Map<String, Value>, attr: &str, wants: &[String]) -> bool {
    let Some(v) = view.get(attr) else {
        return false;
    };
    wants.iter().any(|want| match v {
        Value::Array(items) => items.iter().any(|item| match item {
            Value::Object(obj) => want.split_once('=').is_some_and(|(k, val)| match k {
                "ip_address_substr" => obj
                    .get("ip_address")
                    .and_then(Value::as_str)
                    .is_some_and(|s| s.contains(val)),
                _ => obj.get(k).is_some_and(|x| scalar_matches(x, val)),
            }),
            other => scalar_matches(other, want),
        }),
        other => scalar_matches(other, want),
    })
}

fn tags_match(tags: &[String], q: &ListQuery) -> bool {
    let has = |t: &String| tags.contains(t);
    (q.tags.is_empty() || q.tags.iter().all(has))
        && (q.tags_any.is_empty() || q.tags_any.iter().any(has))
        && (q.not_tags.is_empty() || !q.not_tags.iter().all(has))
        && (q.not_tags_any.is_empty() || !q.not_tags_any.iter().any(has))
}

fn cmp_values(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .unwrap_or(0.0)
            .partial_cmp(&y.as_f64().unwrap_or(0.0))
            .unwrap_or(Ordering::Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (Some(Value::Null) | None, Some(Value::Null) | None) => Ordering::Equal,
        (Some(Value::Null) | None, _) => Ordering::Less,
        (_, Some(Value::Null) | None) => Ordering::Greater,
        (Some(x), Some(y)) => x.to_string().cmp(&y.to_string()),
    }
}

/// A resource chosen for a list: its id, its entry, and its map when one was needed
/// (always when the policy hides some of its attributes from this caller).
type Picked<'a, R> = (&'a str, &'a Entry<R>, Option<Map<String, Value>>, bool);

/// One list request, answered as JSON bytes. Maps of attributes are built only
/// when filters, sorting or `fields` need them; otherwise resources are written
/// straight to the output.
pub fn list<R: Resource>(
    db: &Db,
    ctx: &Ctx,
    q: &ListQuery,
    public_url: &str,
) -> ApiResult<Vec<u8>> {
    let table = R::table(db);
    let (candidates, served) = match R::candidates(db, q) {
        Some((ids, f)) => (Some(ids), Some(f)),
        None => (None, None),
    };
    // Neutron's filter validation: every name must be a filter of the resource, even
    // when the list turns out empty.
    let spec = filter_spec(R::SINGULAR);
    if let Some(spec) = spec {
        check_filters(q.filters.iter().map(|(k, _)| k.as_str()), |k| {
            spec.accepts(k)
        })?;
    }
    // Empty values filter nothing (neutron without `empty-string-filtering`).
    let owned: Vec<(String, Vec<String>)> = q
        .filters
        .iter()
        .filter(|(k, _)| Some(k.as_str()) != served)
        .map(|(k, vals)| {
            (
                k.clone(),
                vals.iter().filter(|v| !v.is_empty()).cloned().collect(),
            )
        })
        .filter(|(_, vals): &(String, Vec<String>)| !vals.is_empty())
        .collect();
    let filters: Vec<&(String, Vec<String>)> = owned.iter().collect();
    let entries: Box<dyn Iterator<Item = (&String, &Entry<R>)>> = match &candidates {
        Some(ids) => Box::new(ids.iter().filter_map(|id| table.get_key_value(id))),
        None => Box::new(table.iter()),
    };
    let has_tag_filters = !(q.tags.is_empty()
        && q.tags_any.is_empty()
        && q.not_tags.is_empty()
        && q.not_tags_any.is_empty());
    let need_view = !filters.is_empty() || !q.sorts.is_empty() || !q.fields.is_empty();
    let mut picked: Vec<Picked<'_, R>> = Vec::new();
    let mut validated = spec.is_some();
    let get_rule = format!("get_{}", R::SINGULAR);
    for (id, e) in entries {
        if has_tag_filters && !tags_match(e.value.tags(), q) {
            continue;
        }
        let target = Lazy::new(|| target_of(&*e.value, db));
        if !POLICY.allows(&get_rule, ctx, &target) {
            continue;
        }
        let hidden = POLICY.hidden(R::SINGULAR, ctx, &target);
        let mut view = (need_view || !hidden.is_empty()).then(|| e.value.view(db));
        if let Some(v) = &mut view {
            if !validated {
                // A resource without a filter table: what its representation shows.
                check_filters(q.filters.iter().map(|(k, _)| k.as_str()), |k| {
                    v.contains_key(k)
                })?;
                validated = true;
            }
            // A filter on an attribute the caller may not see matches nothing.
            for h in &hidden {
                v.remove(*h);
            }
            let matched = filters.iter().all(|(k, wants)| {
                match spec.and_then(|s| s.hidden.iter().find(|(a, _)| a == k)) {
                    Some((_, fact)) => target
                        .get(fact)
                        .is_some_and(|val| wants.iter().any(|w| scalar_matches(&val, w))),
                    None => matches(v, k, wants),
                }
            });
            if !matched {
                continue;
            }
        }
        picked.push((id.as_str(), e, view, !hidden.is_empty()));
    }
    if candidates.is_some() {
        // Index order is not id order; lists are sorted by id unless asked otherwise.
        picked.sort_by(|a, b| a.0.cmp(b.0));
    }
    if !q.sorts.is_empty() {
        picked.sort_by(|(ia, _, a, _), (ib, _, b, _)| {
            let (a, b) = (a.as_ref(), b.as_ref());
            for (key, asc) in &q.sorts {
                let o = cmp_values(a.and_then(|m| m.get(key)), b.and_then(|m| m.get(key)));
                if o != Ordering::Equal {
                    return if *asc { o } else { o.reverse() };
                }
            }
            ia.cmp(ib)
        });
    }
    // Marker pagination over the sorted list.
    let position = |m: &str| picked.iter().position(|(id, _, _, _)| *id == m);
    let (start, end) = match (&q.marker, q.page_reverse) {
        (Some(m), false) => (position(m).map(|p| p + 1).unwrap_or(0), picked.len()),
        (Some(m), true) => (0, position(m).unwrap_or(picked.len())),
        (None, _) => (0, picked.len()),
    };
    let (start, end) = match q.limit {
        Some(l) if q.page_reverse => (end.saturating_sub(l).max(start), end),
        Some(l) => (start, (start + l).min(end)),
        None => (start, end),
    };
    let page = &picked[start..end];
    let mut out = Vec::with_capacity(64 + page.len() * 700);
    out.extend_from_slice(b"{\"");
    out.extend_from_slice(R::PLURAL.as_bytes());
    out.extend_from_slice(b"\":[");
    for (i, (_, e, view, stripped)) in page.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match view {
            Some(v) if !q.fields.is_empty() => write_fields(v, &q.fields, &mut out),
            Some(v) if *stripped => {
                let _ = serde_json::to_writer(&mut out, v);
            }
            _ => e.value.write_view(db, &mut out),
        }
    }
    out.push(b']');
    if let Some(limit) = q.limit {
        let base: Vec<(String, String)> = q
            .raw
            .iter()
            .filter(|(k, _)| k != "marker" && k != "page_reverse")
            .cloned()
            .collect();
        // Neutron's links: `next` unless a forward page came out short, `previous`
        // unless a reverse page did; an empty page's links carry no marker.
        let link = |marker: Option<&str>, reverse: bool| {
            let mut ser = form_urlencoded::Serializer::new(String::new());
            for (k, v) in &base {
                ser.append_pair(k, v);
            }
            if let Some(m) = marker {
                ser.append_pair("marker", m);
            }
            if reverse {
                ser.append_pair("page_reverse", "True");
            }
            format!("{public_url}/networking/v2.0/{}?{}", R::PATH, ser.finish())
        };
        let short = page.len() < limit;
        let mut links = Vec::new();
        if !short || q.page_reverse {
            let last = page.last().map(|(id, _, _, _)| *id);
            links.push(json!({"rel": "next", "href": link(last, false)}));
        }
        if !short || !q.page_reverse {
            let first = page.first().map(|(id, _, _, _)| *id);
            links.push(json!({"rel": "previous", "href": link(first, true)}));
        }
        if !links.is_empty() {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(R::PLURAL.as_bytes());
            out.extend_from_slice(b"_links\":");
            let _ = serde_json::to_writer(&mut out, &links);
        }
    }
    out.push(b'}');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kuryr_model::{Network, Port, SecurityGroup, SecurityGroupRule, Subnet, SubnetPool};

    #[test]
    fn every_listed_resource_has_its_filters() {
        for r in [
            Network::SINGULAR,
            Subnet::SINGULAR,
            SubnetPool::SINGULAR,
            Port::SINGULAR,
            SecurityGroup::SINGULAR,
            SecurityGroupRule::SINGULAR,
            kuryr_model::Router::SINGULAR,
            kuryr_model::FloatingIp::SINGULAR,
        ] {
            let spec = filter_spec(r).unwrap_or_else(|| panic!("no filters for {r}"));
            for common in ["id", "project_id", "tenant_id", "revision_number"] {
                assert!(spec.accepts(common), "{r}: {common}");
            }
        }
    }

    #[test]
    fn invalid_filters_are_named_as_neutron_names_them() {
        let valid = |k: &str| k == "name";
        assert!(check_filters(["name", "name"].into_iter(), valid).is_ok());
        let err = check_filters(["foo", "name", "it's"].into_iter(), valid)
            .err()
            .map(|e| e.0.message);
        assert_eq!(
            err.as_deref(),
            Some(r#"['foo', "it's"] is invalid attribute for filtering"#)
        );
        assert_eq!(py_repr(r#"a'b"c"#), r#"'a\'b"c'"#);
    }

    #[test]
    fn empty_values_and_repeats_are_kept_for_the_list_to_judge() {
        let q = ListQuery::parse("name=&name=x&shared=False&limit=2&page_reverse=True")
            .unwrap_or_default();
        assert_eq!(
            q.filter("name"),
            Some(&["".to_string(), "x".to_string()][..])
        );
        assert_eq!(q.limit, Some(2));
        assert!(q.page_reverse);
    }
}
