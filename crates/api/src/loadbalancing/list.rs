//! What the five Octavia objects share: lookup with Octavia's access rules, list
//! with filters, tags, sorting, pagination and `fields`.

use std::cmp::Ordering;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use kuryr_model::{HealthMonitor, Listener, LoadBalancer, Member, Pool};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::fault::Fault;
use super::{LbResult, views};
use crate::networking::db::{Db, Entry, Table};
use crate::networking::{Ctx, Shared};

pub trait Object: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// Store table under `/neutron/`.
    const TABLE: &'static str;
    /// Name in messages: `Load Balancer`.
    const DISPLAY: &'static str;
    const SINGULAR: &'static str;
    const PLURAL: &'static str;
    fn table(db: &Db) -> &Table<Self>;
    fn id(&self) -> &str;
    fn project_id(&self) -> &str;
    fn tags(&self) -> &[String];
    fn loadbalancer_id(&self) -> &str;
    fn provisioning(&self) -> &str;
    fn set_provisioning(&mut self, status: &str);
    fn touch(&mut self, ts: &str);
    fn view(&self, db: &Db) -> Map<String, Value>;
}

macro_rules! object {
    ($t:ty, $table:literal, $display:literal, $singular:literal, $plural:literal, $field:ident, $lb:ident, $view:path) => {
        impl Object for $t {
            const TABLE: &'static str = $table;
            const DISPLAY: &'static str = $display;
            const SINGULAR: &'static str = $singular;
            const PLURAL: &'static str = $plural;
            fn table(db: &Db) -> &Table<Self> {
                &db.$field
            }
            fn id(&self) -> &str {
                &self.id
            }
            fn project_id(&self) -> &str {
                &self.project_id
            }
            fn tags(&self) -> &[String] {
                &self.tags
            }
            fn loadbalancer_id(&self) -> &str {
                &self.$lb
            }
            fn provisioning(&self) -> &str {
                &self.provisioning_status
            }
            fn set_provisioning(&mut self, status: &str) {
                self.provisioning_status = status.to_string();
            }
            fn touch(&mut self, ts: &str) {
                self.updated_at = Some(ts.to_string());
                self.revision_number += 1;
            }
            fn view(&self, db: &Db) -> Map<String, Value> {
                $view(db, self)
            }
        }
    };
}

object!(
    LoadBalancer,
    "loadbalancers",
    "Load Balancer",
    "loadbalancer",
    "loadbalancers",
    loadbalancers,
    id,
    views::loadbalancer
);
object!(
    Listener,
    "listeners",
    "Listener",
    "listener",
    "listeners",
    listeners,
    loadbalancer_id,
    views::listener
);
object!(
    Pool,
    "lb-pools",
    "Pool",
    "pool",
    "pools",
    pools,
    loadbalancer_id,
    views::pool
);
object!(
    Member,
    "lb-members",
    "Member",
    "member",
    "members",
    members,
    loadbalancer_id,
    views::member
);
object!(
    HealthMonitor,
    "healthmonitors",
    "Health Monitor",
    "healthmonitor",
    "healthmonitors",
    healthmonitors,
    loadbalancer_id,
    views::healthmonitor
);

pub fn key<O: Object>(id: &str) -> String {
    format!("/neutron/{}/{id}", O::TABLE)
}

/// Octavia's rules (new defaults): readers of the project read, its members write,
/// admins do everything everywhere.
pub fn can_read(ctx: &Ctx, project: &str) -> bool {
    ctx.is_admin()
        || (ctx.project() == project
            && (ctx.has_role("reader") || ctx.has_role("load-balancer_observer")))
}

pub fn can_write(ctx: &Ctx, project: &str) -> bool {
    ctx.is_admin()
        || (ctx.project() == project
            && (ctx.has_role("member") || ctx.has_role("load-balancer_member")))
}

/// The object, if it exists (else 404) and the caller may read it (else 403, as
/// Octavia answers for another project's object).
pub fn find<O: Object>(db: &Db, ctx: &Ctx, id: &str) -> LbResult<Entry<O>> {
    let e = O::table(db)
        .get(id)
        .cloned()
        .ok_or_else(|| Fault::not_found(O::DISPLAY, id))?;
    if !can_read(ctx, e.value.project_id()) {
        return Err(Fault::forbidden());
    }
    Ok(e)
}

/// The object, for a change by the caller (403 without write access).
pub fn find_writable<O: Object>(db: &Db, ctx: &Ctx, id: &str) -> LbResult<Entry<O>> {
    let e = find::<O>(db, ctx, id)?;
    if !can_write(ctx, e.value.project_id()) {
        return Err(Fault::forbidden());
    }
    Ok(e)
}

/// A list query as Octavia takes it.
#[derive(Default, Debug)]
pub struct Query {
    pub limit: Option<usize>,
    pub marker: Option<String>,
    pub page_reverse: bool,
    pub sorts: Vec<(String, bool)>,
    pub fields: Vec<String>,
    pub tags: Vec<String>,
    pub tags_any: Vec<String>,
    pub not_tags: Vec<String>,
    pub not_tags_any: Vec<String>,
    pub filters: Vec<(String, Vec<String>)>,
    raw: Vec<(String, String)>,
}

fn csv(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

impl Query {
    pub fn parse(q: Option<&str>) -> LbResult<Query> {
        let mut out = Query::default();
        let mut keys = Vec::new();
        let mut dirs = Vec::new();
        for (k, v) in form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
            let (k, v) = (k.into_owned(), v.into_owned());
            out.raw.push((k.clone(), v.clone()));
            match k.as_str() {
                "limit" => {
                    let n: i64 = v
                        .parse()
                        .map_err(|_| Fault::invalid("limit", &v, "Value should be an integer."))?;
                    // Octavia: 0 or negative means no limit.
                    out.limit = (n > 0).then_some(n as usize);
                }
                "marker" => out.marker = Some(v),
                "page_reverse" => out.page_reverse = v.eq_ignore_ascii_case("true"),
                "sort" => {
                    for part in csv(&v) {
                        let (key, dir) = part.split_once(':').unwrap_or((&part, "asc"));
                        out.sorts.push((key.to_string(), parse_dir(dir)?));
                    }
                }
                "sort_key" => keys.push(v),
                "sort_dir" => dirs.push(v),
                "fields" => out.fields.extend(csv(&v)),
                "tags" => out.tags.extend(csv(&v)),
                "tags-any" => out.tags_any.extend(csv(&v)),
                "not-tags" => out.not_tags.extend(csv(&v)),
                "not-tags-any" => out.not_tags_any.extend(csv(&v)),
                _ => match out.filters.iter_mut().find(|(name, _)| *name == k) {
                    Some((_, vals)) => vals.push(v),
                    None => out.filters.push((k, vec![v])),
                },
            }
        }
        for (i, key) in keys.into_iter().enumerate() {
            let dir = match dirs.get(i) {
                Some(d) => parse_dir(d)?,
                None => true,
            };
            out.sorts.push((key, dir));
        }
        Ok(out)
    }

    fn tags_match(&self, tags: &[String]) -> bool {
        let has = |t: &String| tags.contains(t);
        self.tags.iter().all(has)
            && (self.tags_any.is_empty() || self.tags_any.iter().any(has))
            && (self.not_tags.is_empty() || !self.not_tags.iter().all(has))
            && !self.not_tags_any.iter().any(has)
    }

    /// The query string without `marker` and `page_reverse`, for links.
    fn base(&self) -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &self.raw {
            if k != "marker" && k != "page_reverse" {
                s.append_pair(k, v);
            }
        }
        s.finish()
    }
}

fn parse_dir(d: &str) -> LbResult<bool> {
    match d.to_ascii_lowercase().as_str() {
        "asc" => Ok(true),
        "desc" => Ok(false),
        _ => Err(Fault::new(
            400,
            format!(
                "Invalid input for field/attribute sort_dir. Value: '{d}'. Value should be one of: asc, desc"
            ),
        )),
    }
}

fn matches(view: &Map<String, Value>, name: &str, wanted: &[String]) -> bool {
    let Some(v) = view.get(name) else {
        // Octavia filters on model attributes; a name it does not have filters nothing.
        return true;
    };
    let shown = match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    wanted.iter().any(|w| {
        *w == shown
            || (matches!(v, Value::Bool(_)) && w.eq_ignore_ascii_case(&shown))
            || (v.is_null() && w.eq_ignore_ascii_case("none"))
    })
}

fn cmp(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .unwrap_or(0.0)
            .partial_cmp(&y.as_f64().unwrap_or(0.0))
            .unwrap_or(Ordering::Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (None | Some(Value::Null), None | Some(Value::Null)) => Ordering::Equal,
        (None | Some(Value::Null), _) => Ordering::Less,
        (_, None | Some(Value::Null)) => Ordering::Greater,
        (Some(x), Some(y)) => x.to_string().cmp(&y.to_string()),
    }
}

/// A list of what the caller may read among the objects `pick` accepts.
pub fn list<O: Object>(
    db: &Db,
    ctx: &Ctx,
    q: &Query,
    url: &str,
    pick: impl Fn(&O) -> bool,
) -> LbResult<Value> {
    let mut rows: Vec<Map<String, Value>> = O::table(db)
        .values()
        .filter(|e| can_read(ctx, e.value.project_id()))
        .filter(|e| pick(&e.value))
        .filter(|e| q.tags_match(e.value.tags()))
        .map(|e| e.value.view(db))
        .filter(|v| q.filters.iter().all(|(k, w)| matches(v, k, w)))
        .collect();
    let mut sorts = q.sorts.clone();
    if !sorts.iter().any(|(k, _)| k == "id") {
        sorts.push(("id".into(), sorts.first().map(|s| s.1).unwrap_or(true)));
    }
    for (k, _) in &sorts {
        if rows.first().is_some_and(|r| !r.contains_key(k)) {
            return Err(Fault::new(
                400,
                format!("Supplied sort key '{k}' is not valid."),
            ));
        }
    }
    rows.sort_by(|a, b| {
        for (k, asc) in &sorts {
            let o = cmp(a.get(k), b.get(k));
            let o = if *asc { o } else { o.reverse() };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    });
    if q.page_reverse {
        rows.reverse();
    }
    let mut start = 0;
    if let Some(m) = &q.marker {
        match rows
            .iter()
            .position(|r| r.get("id").and_then(Value::as_str) == Some(m))
        {
            Some(i) => start = i + 1,
            None => return Err(Fault::not_found(O::DISPLAY, m)),
        }
    }
    let mut page: Vec<Map<String, Value>> = rows.into_iter().skip(start).collect();
    let mut links = Vec::new();
    if let Some(limit) = q.limit {
        // Octavia links to a next page whenever this one is full.
        let more = page.len() >= limit;
        page.truncate(limit);
        let base = q.base();
        let id_of = |r: Option<&Map<String, Value>>| {
            r.and_then(|r| r.get("id"))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        if more && let Some(last) = id_of(page.last()) {
            let rel = if q.page_reverse { "previous" } else { "next" };
            let rev = if q.page_reverse {
                "&page_reverse=True"
            } else {
                ""
            };
            links.push(json!({"href": format!("{url}?{base}&marker={last}{rev}"), "rel": rel}));
        }
        if q.marker.is_some()
            && let Some(first) = id_of(page.first())
        {
            let rel = if q.page_reverse { "next" } else { "previous" };
            let rev = if q.page_reverse {
                ""
            } else {
                "&page_reverse=True"
            };
            links.push(json!({"href": format!("{url}?{base}&marker={first}{rev}"), "rel": rel}));
        }
    }
    if q.page_reverse {
        page.reverse();
    }
    let items: Vec<Value> = page
        .into_iter()
        .map(|v| Value::Object(project(v, &q.fields)))
        .collect();
    let mut out = Map::new();
    out.insert(O::PLURAL.into(), Value::Array(items));
    out.insert(format!("{}_links", O::PLURAL), Value::Array(links));
    Ok(Value::Object(out))
}

/// Keeps only the asked fields (all when none are asked for).
pub fn project(mut view: Map<String, Value>, fields: &[String]) -> Map<String, Value> {
    if fields.is_empty() {
        return view;
    }
    view.retain(|k, _| fields.iter().any(|f| f == k));
    view
}

/// `GET /lbaas/<objects>` (members have their own: they are listed per pool).
pub async fn list_handler<O: Object>(
    State(net): State<Shared>,
    ctx: Ctx,
    RawQuery(q): RawQuery,
) -> LbResult<Json<Value>> {
    let q = Query::parse(q.as_deref())?;
    let url = format!(
        "{}/load-balancer/v2/lbaas/{}",
        net.config.public_url,
        O::PLURAL
    );
    let db = net.db();
    Ok(Json(list::<O>(&db, &ctx, &q, &url, |_| true)?))
}

/// `GET /lbaas/<objects>/{id}`.
pub async fn show_handler<O: Object>(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> LbResult<Json<Value>> {
    let q = Query::parse(q.as_deref())?;
    let db = net.db();
    let e = find::<O>(&db, &ctx, &id)?;
    let mut out = Map::new();
    out.insert(
        O::SINGULAR.into(),
        Value::Object(project(e.value.view(&db), &q.fields)),
    );
    Ok(Json(Value::Object(out)))
}
