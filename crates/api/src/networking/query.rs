//! Neutron's list semantics: attribute filters (repeated = OR), tag filters,
//! `fields`, sorting and marker pagination with `*_links`.

use std::cmp::Ordering;

use kuryr_model::NeutronError;
use serde_json::{Map, Value, json};

use super::db::Db;
use super::resource::Resource;
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
            let split = |v: &str| v.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect::<Vec<_>>();
            match k.as_str() {
                "fields" => out.fields.extend(split(&v)),
                "limit" => {
                    let n = v.parse::<i64>().map_err(|_| {
                        ApiError(NeutronError::bad_request(format!("Limit must be an integer 0 or greater and not '{v}'")))
                    })?;
                    out.limit = (n > 0).then_some(n as usize);
                }
                "marker" => out.marker = Some(v),
                "page_reverse" => out.page_reverse = kuryr_model::input::to_bool(&Value::String(v)).unwrap_or(false),
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
        self.filters.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
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
    let Some(v) = view.get(attr) else { return false };
    wants.iter().any(|want| match v {
        Value::Array(items) => items.iter().any(|item| match item {
            Value::Object(obj) => want.split_once('=').is_some_and(|(k, val)| match k {
                "ip_address_substr" => obj.get("ip_address").and_then(Value::as_str).is_some_and(|s| s.contains(val)),
                _ => obj.get(k).is_some_and(|x| scalar_matches(x, val)),
            }),
            other => scalar_matches(other, want),
        }),
        other => scalar_matches(other, want),
    })
}

fn tags_match(tags: &[Value], q: &ListQuery) -> bool {
    let has = |t: &String| tags.iter().any(|x| x.as_str() == Some(t.as_str()));
    (q.tags.is_empty() || q.tags.iter().all(has))
        && (q.tags_any.is_empty() || q.tags_any.iter().any(has))
        && (q.not_tags.is_empty() || !q.not_tags.iter().all(has))
        && (q.not_tags_any.is_empty() || !q.not_tags_any.iter().any(has))
}

fn cmp_values(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => {
            x.as_f64().unwrap_or(0.0).partial_cmp(&y.as_f64().unwrap_or(0.0)).unwrap_or(Ordering::Equal)
        }
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (Some(Value::Null) | None, Some(Value::Null) | None) => Ordering::Equal,
        (Some(Value::Null) | None, _) => Ordering::Less,
        (_, Some(Value::Null) | None) => Ordering::Greater,
        (Some(x), Some(y)) => x.to_string().cmp(&y.to_string()),
    }
}

pub fn list<R: Resource>(db: &Db, ctx: &Ctx, q: &ListQuery, public_url: &str) -> ApiResult<Value> {
    let table = R::table(db);
    let ids: Box<dyn Iterator<Item = &super::db::Entry<R>>> = match R::candidates(db, q) {
        Some(ids) => Box::new(ids.into_iter().filter_map(|id| table.get(&id)).collect::<Vec<_>>().into_iter()),
        None => Box::new(table.values()),
    };
    let has_tag_filters =
        !(q.tags.is_empty() && q.tags_any.is_empty() && q.not_tags.is_empty() && q.not_tags_any.is_empty());
    let mut views: Vec<Map<String, Value>> = Vec::new();
    let mut known_checked = false;
    for e in ids {
        if !e.value.visible(ctx, db) {
            continue;
        }
        let view = e.value.view(db);
        if !known_checked {
            // Neutron's filter validation: filtering on an attribute that does not exist is an error.
            for (k, _) in &q.filters {
                if !view.contains_key(k) {
                    return Err(ApiError(NeutronError::bad_request(format!("{k} is invalid attribute for filtering"))));
                }
            }
            known_checked = true;
        }
        if has_tag_filters {
            let tags = view.get("tags").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
            if !tags_match(tags, q) {
                continue;
            }
        }
        if q.filters.iter().all(|(k, wants)| matches(&view, k, wants)) {
            views.push(view);
        }
    }
    if !q.sorts.is_empty() {
        views.sort_by(|a, b| {
            for (key, asc) in &q.sorts {
                let o = cmp_values(a.get(key), b.get(key));
                if o != Ordering::Equal {
                    return if *asc { o } else { o.reverse() };
                }
            }
            cmp_values(a.get("id"), b.get("id"))
        });
    }
    let id_of = |v: &Map<String, Value>| v.get("id").and_then(Value::as_str).map(str::to_string);
    // Marker pagination over the sorted list.
    let (start, end) = match (&q.marker, q.page_reverse) {
        (Some(m), false) => {
            let pos = views.iter().position(|v| id_of(v).as_deref() == Some(m.as_str())).map(|p| p + 1).unwrap_or(0);
            (pos, views.len())
        }
        (Some(m), true) => {
            let pos = views.iter().position(|v| id_of(v).as_deref() == Some(m.as_str())).unwrap_or(views.len());
            (0, pos)
        }
        (None, _) => (0, views.len()),
    };
    let (start, end) = match q.limit {
        Some(l) if q.page_reverse => (end.saturating_sub(l).max(start), end),
        Some(l) => (start, (start + l).min(end)),
        None => (start, end),
    };
    let more_after = end < views.len();
    let more_before = start > 0;
    let page: Vec<Value> = views
        .drain(start..end)
        .map(|v| Value::Object(project(v, &q.fields)))
        .collect();
    let mut body = Map::new();
    if let Some(limit) = q.limit {
        let base: Vec<(String, String)> =
            q.raw.iter().filter(|(k, _)| k != "marker" && k != "page_reverse").cloned().collect();
        let link = |marker: &str, reverse: bool| {
            let mut ser = form_urlencoded::Serializer::new(String::new());
            for (k, v) in &base {
                ser.append_pair(k, v);
            }
            ser.append_pair("marker", marker);
            if reverse {
                ser.append_pair("page_reverse", "True");
            }
            format!("{public_url}/networking/v2.0/{}?{}", R::PATH, ser.finish())
        };
        let first = page.first().and_then(|v| v.get("id")).and_then(Value::as_str);
        let last = page.last().and_then(|v| v.get("id")).and_then(Value::as_str);
        let mut links = Vec::new();
        let (next_exists, prev_exists) = if q.page_reverse { (more_after || q.marker.is_some(), more_before) } else { (more_after, more_before || q.marker.is_some()) };
        if let (Some(last), true) = (last, next_exists && page.len() == limit.min(page.len().max(1))) {
            links.push(json!({"rel": "next", "href": link(last, false)}));
        }
        if let (Some(first), true) = (first, prev_exists) {
            links.push(json!({"rel": "previous", "href": link(first, true)}));
        }
        if !links.is_empty() {
            body.insert(format!("{}_links", R::PLURAL), Value::Array(links));
        }
    }
    body.insert(R::PLURAL.to_string(), Value::Array(page));
    Ok(Value::Object(body))
}
