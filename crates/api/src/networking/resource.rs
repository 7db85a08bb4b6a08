//! What every Neutron resource shares: show, list, delete, tags and the update loop,
//! written once over the [`Resource`] trait.

use std::future::Future;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use kuryr_model::NeutronError;
use kuryr_model::input::{Input, unwrap_body};
use kuryr_store::{Compare, Txn};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::db::{Db, Table, keys};
use super::policy::{Lazy, POLICY, Target};
use super::query::{self, ListQuery};
use super::{ApiError, ApiResult, Ctx, Shared};

pub trait Resource: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// JSON key of one resource, e.g. `network`.
    const SINGULAR: &'static str;
    /// JSON key of a collection, e.g. `networks`.
    const PLURAL: &'static str;
    /// URL path segment and store table, e.g. `security-groups`.
    const PATH: &'static str;
    /// Name in messages, e.g. `Security group`.
    const DISPLAY: &'static str;
    const NOT_FOUND: &'static str;
    /// Whether Neutron ends this resource's not-found message with a period (the
    /// L3 ones do not: `Router <id> could not be found`).
    const NOT_FOUND_PERIOD: bool = true;

    fn table(db: &Db) -> &Table<Self>;
    fn project_id(&self) -> &str;
    fn tags_mut(&mut self) -> Option<&mut Vec<String>>;
    fn revision_number(&self) -> u64;
    /// Bumps `revision_number` and `updated_at` for a write.
    fn touch(&mut self, now: &str);

    /// Facts about related resources that policy checks name (`network:project_id`,
    /// `network:shared`, `security_group:project_id`).
    fn related(&self, _db: &Db) -> Vec<(&'static str, Value)> {
        Vec::new()
    }

    /// The policy target of a create: the request item, its project filled in, and the
    /// related facts. Errors here are the ones neutron gives before its policy check
    /// (a network the caller cannot see is not found).
    fn create_target(
        _db: &Db,
        ctx: &Ctx,
        item: &Map<String, Value>,
    ) -> ApiResult<Map<String, Value>> {
        Ok(item_target(ctx, item))
    }

    /// Attribute values that need no policy check on create (neutron skips an
    /// attribute given with its default value).
    fn create_defaults() -> Vec<(&'static str, Value)> {
        Vec::new()
    }

    /// Extra facts for the policy target of an update of this resource by `body`.
    fn update_facts(&self, _body: &Map<String, Value>) -> Vec<(&'static str, Value)> {
        Vec::new()
    }

    /// Checks of an update body that need no resource, made before it is looked up
    /// (neutron validates the body first: a read-only attribute is a 400 even on a
    /// resource the caller cannot see).
    fn check_update_body(_body: &Map<String, Value>) -> ApiResult<()> {
        Ok(())
    }

    /// Attributes of the API representation that are not stored fields.
    fn extras(&self, _db: &Db) -> Vec<(&'static str, Value)> {
        vec![("tenant_id", Value::String(self.project_id().to_string()))]
    }

    fn tags(&self) -> &[String] {
        &[]
    }

    /// The API representation, as a map (for filters, `fields` and single reads).
    fn view(&self, db: &Db) -> Map<String, Value> {
        let mut m = match serde_json::to_value(self) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        for (k, v) in self.extras(db) {
            m.insert(k.to_string(), v);
        }
        m
    }

    /// The API representation written straight to JSON: lists of thousands of
    /// resources skip building maps.
    fn write_view(&self, db: &Db, out: &mut Vec<u8>) {
        let start = out.len();
        if serde_json::to_writer(&mut *out, self).is_err() || out.last() != Some(&b'}') {
            out.truncate(start);
            out.extend_from_slice(b"{}");
            return;
        }
        out.pop();
        for (k, v) in self.extras(db) {
            out.push(b',');
            let _ = serde_json::to_writer(&mut *out, k);
            out.push(b':');
            let _ = serde_json::to_writer(&mut *out, &v);
        }
        out.push(b'}');
    }

    /// Ids worth looking at for a filtered list when an index can narrow it down,
    /// and the filter that the index answers exactly.
    fn candidates(_db: &Db, _q: &ListQuery) -> Option<(Vec<String>, &'static str)> {
        None
    }

    /// Work a list must do first (security groups: the caller's default group).
    fn before_list(_net: &Shared, _ctx: &Ctx) -> impl Future<Output = ApiResult<()>> + Send {
        async { Ok(()) }
    }

    fn create(
        net: &Shared,
        ctx: &Ctx,
        items: Vec<Map<String, Value>>,
    ) -> impl Future<Output = ApiResult<Vec<Value>>> + Send;
    fn update(
        net: &Shared,
        ctx: &Ctx,
        id: &str,
        input: Input,
        if_match: Option<u64>,
    ) -> impl Future<Output = ApiResult<Value>> + Send;
    fn delete(net: &Shared, ctx: &Ctx, id: &str) -> impl Future<Output = ApiResult<()>> + Send;
}

/// The accessors every resource with Neutron's standard attributes (project, tags,
/// revision number, timestamps) implements the same way.
macro_rules! standard_fields {
    ($table:ident) => {
        fn table(db: &Db) -> &Table<Self> {
            &db.$table
        }
        fn project_id(&self) -> &str {
            &self.project_id
        }
        fn tags_mut(&mut self) -> Option<&mut Vec<String>> {
            Some(&mut self.tags)
        }
        fn tags(&self) -> &[String] {
            &self.tags
        }
        fn revision_number(&self) -> u64 {
            self.revision_number
        }
        fn touch(&mut self, now: &str) {
            self.revision_number += 1;
            self.updated_at = now.to_string();
        }
    };
}
pub(crate) use standard_fields;

pub fn key<R: Resource>(id: &str) -> String {
    keys::resource(R::PATH, id)
}

pub fn not_found<R: Resource>(id: &str) -> ApiError {
    let mut e = NeutronError::not_found(R::DISPLAY, R::NOT_FOUND, id);
    if !R::NOT_FOUND_PERIOD {
        e.message.pop();
    }
    ApiError(e)
}

/// The policy target of a stored resource: its representation and related facts.
pub fn target_of<R: Resource>(v: &R, db: &Db) -> Map<String, Value> {
    let mut m = v.view(db);
    for (k, val) in v.related(db) {
        m.insert(k.to_string(), val);
    }
    m
}

/// A create item as a policy target: the project defaults to the caller's.
pub fn item_target(ctx: &Ctx, item: &Map<String, Value>) -> Map<String, Value> {
    let mut t = item.clone();
    let project = item
        .get("project_id")
        .or_else(|| item.get("tenant_id"))
        .cloned()
        .unwrap_or_else(|| Value::String(ctx.project().to_string()));
    t.insert("project_id".into(), project.clone());
    t.insert("tenant_id".into(), project);
    t
}

/// Whether `ctx` may see `v` (neutron's `get_<resource>` rule).
pub fn can_see<R: Resource>(v: &R, ctx: &Ctx, db: &Db) -> bool {
    let action = format!("get_{}", R::SINGULAR);
    POLICY.allows(&action, ctx, &Lazy::new(|| target_of(v, db)))
}

/// Looks a resource up as the caller may see it (else it does not exist for them).
pub fn find<R: Resource>(db: &Db, ctx: &Ctx, id: &str) -> ApiResult<super::db::Entry<R>> {
    match R::table(db).get(id) {
        Some(e) if can_see(&*e.value, ctx, db) => Ok(e.clone()),
        _ => Err(not_found::<R>(id)),
    }
}

/// Checks `action` and the attribute rules a body triggers, answering neutron's
/// 403 `PolicyNotAuthorized` naming the rules, e.g.
/// `(rule:create_port and rule:create_port:mac_address) is disallowed by policy`.
pub fn enforce(
    ctx: &Ctx,
    action: &str,
    target: &dyn Target,
    attrs: &[(String, Vec<String>)],
) -> ApiResult<()> {
    let ok = POLICY.allows(action, ctx, target)
        && attrs.iter().all(|(a, subs)| {
            (!POLICY.has(a) || POLICY.allows(a, ctx, target))
                && subs.iter().all(|s| POLICY.allows(s, ctx, target))
        });
    if ok {
        return Ok(());
    }
    let message = if attrs.is_empty() {
        format!("rule:{action} is disallowed by policy")
    } else {
        let parts: Vec<String> = attrs
            .iter()
            .map(|(a, subs)| {
                if subs.is_empty() {
                    format!("rule:{a}")
                } else {
                    let inner: Vec<String> = subs.iter().map(|s| format!("rule:{s}")).collect();
                    format!("(rule:{a} and ({}))", inner.join(" and "))
                }
            })
            .collect();
        // Neutron nests the checks pairwise from the left: ((a and b) and c).
        let nested = parts.iter().fold(format!("rule:{action}"), |acc, p| {
            format!("({acc} and {p})")
        });
        format!("{nested} is disallowed by policy")
    };
    Err(ApiError(NeutronError::new(
        403,
        "PolicyNotAuthorized",
        message,
    )))
}

/// A change to a stored resource: the caller must see it (else 404) and be allowed
/// `action` with the attributes of `body` (else 403). The target is the resource as
/// the change would leave it, as in neutron.
pub fn authorize_change<R: Resource>(
    db: &Db,
    ctx: &Ctx,
    id: &str,
    action: &str,
    body: &Map<String, Value>,
) -> ApiResult<()> {
    let e = find::<R>(db, ctx, id)?;
    let mut target = target_of(&*e.value, db);
    for (k, v) in e.value.update_facts(body) {
        target.insert(k.to_string(), v);
    }
    for (k, v) in body {
        target.insert(k.clone(), v.clone());
    }
    let attrs = POLICY.attribute_rules(action, body, &[]);
    enforce(ctx, action, &target, &attrs)
}

/// A representation without the attributes the caller may not see.
pub fn redact(singular: &str, ctx: &Ctx, view: Value) -> Value {
    match view {
        Value::Object(mut m) => {
            let hidden: Vec<String> = POLICY
                .hidden(singular, ctx, &m)
                .into_iter()
                .map(str::to_string)
                .collect();
            for h in hidden {
                m.remove(&h);
            }
            Value::Object(m)
        }
        other => other,
    }
}

pub fn routes<R: Resource>() -> Router<Shared> {
    let coll = format!("/{}", R::PATH);
    let item = format!("/{}/{{id}}", R::PATH);
    let tags = format!("/{}/{{id}}/tags", R::PATH);
    let tag = format!("/{}/{{id}}/tags/{{tag}}", R::PATH);
    Router::new()
        .route(&coll, get(list::<R>).post(create::<R>))
        .route(&item, get(show::<R>).put(update::<R>).delete(delete::<R>))
        .route(
            &tags,
            get(get_tags::<R>)
                .put(put_tags::<R>)
                .delete(delete_tags::<R>),
        )
        .route(
            &tag,
            get(has_tag::<R>).put(add_tag::<R>).delete(remove_tag::<R>),
        )
}

/// Parses a JSON body, answering Neutron's 400 for anything that is not JSON.
pub fn parse_body(body: &Bytes) -> ApiResult<Value> {
    serde_json::from_slice(body)
        .map_err(|_| ApiError(NeutronError::bad_request("Body contains invalid data")))
}

async fn list<R: Resource>(
    State(net): State<Shared>,
    ctx: Ctx,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let q = ListQuery::parse(q.as_deref().unwrap_or(""))?;
    R::before_list(&net, &ctx).await?;
    let db = net.db();
    let body = query::list::<R>(&db, &ctx, &q, &net.config.public_url)?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

async fn show<R: Resource>(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let q = ListQuery::parse(q.as_deref().unwrap_or(""))?;
    let db = net.db();
    let e = find::<R>(&db, &ctx, &id)?;
    let view = match redact(R::SINGULAR, &ctx, Value::Object(e.value.view(&db))) {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let view = query::project(view, &q.fields);
    Ok(Json(json!({ R::SINGULAR: view })))
}

async fn create<R: Resource>(
    State(net): State<Shared>,
    ctx: Ctx,
    body: Bytes,
) -> ApiResult<Response> {
    let (items, bulk) = unwrap_body(parse_body(&body)?, R::SINGULAR, R::PLURAL)?;
    if items.len() > net.config.max_bulk {
        return Err(ApiError(NeutronError::bad_request(format!(
            "A bulk request may create at most {} {}; this one has {}.",
            net.config.max_bulk,
            R::PLURAL,
            items.len()
        ))));
    }
    {
        let action = format!("create_{}", R::SINGULAR);
        let defaults = R::create_defaults();
        let db = net.db();
        for item in &items {
            check_project_override(&ctx, item)?;
            let target = R::create_target(&db, &ctx, item)?;
            let attrs = POLICY.attribute_rules(&action, item, &defaults);
            enforce(&ctx, &action, &target, &attrs)?;
        }
    }
    let mut created: Vec<Value> = R::create(&net, &ctx, items)
        .await?
        .into_iter()
        .map(|v| redact(R::SINGULAR, &ctx, v))
        .collect();
    let body = if bulk {
        json!({ R::PLURAL: created })
    } else {
        json!({ R::SINGULAR: created.pop().unwrap_or(Value::Null) })
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Only admins create resources for another project (neutron's 400, before policy).
fn check_project_override(ctx: &Ctx, item: &Map<String, Value>) -> ApiResult<()> {
    for key in ["project_id", "tenant_id"] {
        if let Some(Value::String(p)) = item.get(key)
            && p != ctx.project()
            && !ctx.is_admin()
        {
            return Err(ApiError(NeutronError::bad_request(format!(
                "Specifying '{key}' other than the authenticated project in request is not allowed for the current user."
            ))));
        }
    }
    Ok(())
}

/// `If-Match: revision_number=N` (several may be given; all must hold).
fn if_match(headers: &HeaderMap) -> ApiResult<Option<u64>> {
    let Some(v) = headers.get("if-match") else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .map_err(|_| ApiError(NeutronError::bad_request("Invalid If-Match header")))?;
    for part in s.split(',') {
        if let Some(n) = part.trim().strip_prefix("revision_number=") {
            return n.trim().parse::<u64>().map(Some).map_err(|_| {
                ApiError(NeutronError::bad_request(format!(
                    "Invalid revision number in If-Match: {n}"
                )))
            });
        }
    }
    Err(ApiError(NeutronError::bad_request(
        "If-Match header must be of the form revision_number=N",
    )))
}

pub fn check_revision(current: u64, expected: Option<u64>) -> ApiResult<()> {
    match expected {
        Some(e) if e != current => Err(ApiError(NeutronError::new(
            412,
            "RevisionNumberConstraintFailed",
            format!("Constrained to {e}, but current revision is {current}"),
        ))),
        _ => Ok(()),
    }
}

async fn update<R: Resource>(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let expected = if_match(&headers)?;
    let Value::Object(mut outer) = parse_body(&body)? else {
        return Err(ApiError(NeutronError::bad_request(
            "Body contains invalid data",
        )));
    };
    let attrs = match outer.remove(R::SINGULAR) {
        Some(Value::Object(m)) if outer.is_empty() => m,
        _ => {
            return Err(ApiError(NeutronError::bad_request(format!(
                "Unable to find '{}' in request body",
                R::SINGULAR
            ))));
        }
    };
    R::check_update_body(&attrs)?;
    authorize_change::<R>(
        &net.db(),
        &ctx,
        &id,
        &format!("update_{}", R::SINGULAR),
        &attrs,
    )?;
    let input = Input::new(attrs);
    // Clients often send back what they read; these can never change.
    input.reject(
        &[
            "id",
            "project_id",
            "tenant_id",
            "created_at",
            "updated_at",
            "revision_number",
        ],
        "update",
    )?;
    let view = R::update(&net, &ctx, &id, input, expected).await?;
    Ok(Json(
        json!({ R::SINGULAR: redact(R::SINGULAR, &ctx, view) }),
    ))
}

async fn delete<R: Resource>(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    authorize_change::<R>(
        &net.db(),
        &ctx,
        &id,
        &format!("delete_{}", R::SINGULAR),
        &Map::new(),
    )?;
    R::delete(&net, &ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The update loop: read, change, compare-and-put on the revision read, retry when
/// someone else wrote in between (unless the client pinned a revision with If-Match).
/// `change` returns extra compares/ops that must commit with the update.
pub async fn update_with<R, F>(
    net: &Shared,
    ctx: &Ctx,
    id: &str,
    expected: Option<u64>,
    mut change: F,
) -> ApiResult<Value>
where
    R: Resource,
    F: FnMut(&Db, &mut R) -> ApiResult<(Vec<Compare>, Vec<kuryr_store::Op>)> + Send,
{
    for _ in 0..16 {
        let txn = {
            let db = net.db();
            let e = find::<R>(&db, ctx, id)?;
            check_revision(e.value.revision_number(), expected)?;
            let mut v = (*e.value).clone();
            let (compares, ops) = change(&db, &mut v)?;
            v.touch(&super::now());
            let value = serde_json::to_vec(&v)
                .map_err(|e| ApiError(NeutronError::internal(e.to_string())))?;
            let mut txn = Txn::new().when(Compare::ModRevision(key::<R>(id), e.rev));
            txn.compares.extend(compares);
            txn.ops.extend(ops);
            txn.put(key::<R>(id), value)
        };
        if net.commit(txn).await? {
            let db = net.db();
            let e = find::<R>(&db, ctx, id)?;
            return Ok(Value::Object(e.value.view(&db)));
        }
    }
    Err(ApiError(NeutronError::conflict(
        "Conflict",
        format!("{} {id} is changing too fast; try again", R::DISPLAY),
    )))
}

/// Deletes a resource (and whatever `extra` adds) if it is still at the revision read.
pub async fn delete_with<R, F>(net: &Shared, ctx: &Ctx, id: &str, mut check: F) -> ApiResult<()>
where
    R: Resource,
    F: FnMut(&Db, &R) -> ApiResult<(Vec<Compare>, Vec<kuryr_store::Op>)> + Send,
{
    for _ in 0..16 {
        let txn = {
            let db = net.db();
            let e = find::<R>(&db, ctx, id)?;
            let (compares, ops) = check(&db, &e.value)?;
            let mut txn = Txn::new().when(Compare::ModRevision(key::<R>(id), e.rev));
            txn.compares.extend(compares);
            txn.ops.extend(ops);
            txn.delete(key::<R>(id))
        };
        if net.commit(txn).await? {
            return Ok(());
        }
    }
    Err(ApiError(NeutronError::conflict(
        "Conflict",
        format!("{} {id} is changing too fast; try again", R::DISPLAY),
    )))
}

const MAX_TAG_LEN: usize = 255;

fn check_tag(tag: &str) -> ApiResult<()> {
    if tag.is_empty() || tag.chars().count() > MAX_TAG_LEN || tag.contains(',') || tag.contains('/')
    {
        return Err(ApiError(NeutronError::bad_request(format!(
            "Invalid input for tags. Reason: '{tag}' is not a valid tag (1 to {MAX_TAG_LEN} characters, no ',' or '/')."
        ))));
    }
    Ok(())
}

/// Validates and de-duplicates a tag list, keeping the order given.
pub fn clean_tags(tags: Vec<String>) -> ApiResult<Vec<String>> {
    let mut seen = std::collections::HashSet::with_capacity(tags.len());
    let mut out: Vec<String> = Vec::with_capacity(tags.len().min(MAX_TAGS));
    for t in tags {
        check_tag(&t)?;
        if seen.insert(t.clone()) {
            out.push(t);
        }
        if out.len() > MAX_TAGS {
            return Err(too_many_tags());
        }
    }
    Ok(out)
}

/// Neutron's per-resource tag limit.
pub const MAX_TAGS: usize = 50;

fn too_many_tags() -> ApiError {
    ApiError(NeutronError::new(
        400,
        "BadRequest",
        format!("The number of tags exceed the per-resource limit of {MAX_TAGS}."),
    ))
}

fn tags_of<R: Resource>(v: &mut R) -> ApiResult<&mut Vec<String>> {
    v.tags_mut().ok_or_else(|| {
        ApiError(NeutronError::new(
            404,
            "HTTPNotFound",
            format!("{} do not have tags", R::PLURAL),
        ))
    })
}

/// Tags are changed under `<verb>_<resource>:tags` (neutron's tag policies).
fn authorize_tags<R: Resource>(net: &Shared, ctx: &Ctx, id: &str, verb: &str) -> ApiResult<()> {
    let db = net.db();
    let e = find::<R>(&db, ctx, id)?;
    let action = format!("{verb}_{}:tags", R::SINGULAR);
    enforce(ctx, &action, &target_of(&*e.value, &db), &[])
}

async fn get_tags<R: Resource>(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let db = net.db();
    let e = find::<R>(&db, &ctx, &id)?;
    let mut v = (*e.value).clone();
    let tags = tags_of(&mut v)?.clone();
    Ok(Json(json!({ "tags": tags })))
}

async fn has_tag<R: Resource>(
    State(net): State<Shared>,
    ctx: Ctx,
    Path((id, tag)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let db = net.db();
    let e = find::<R>(&db, &ctx, &id)?;
    let mut v = (*e.value).clone();
    if tags_of(&mut v)?.contains(&tag) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError(NeutronError::new(
            404,
            "TagNotFound",
            format!("Tag {tag} could not be found for {} {id}.", R::SINGULAR),
        )))
    }
}

async fn put_tags<R: Resource>(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let body = parse_body(&body)?;
    let tags = match body.get("tags") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| t.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                ApiError(NeutronError::bad_request(
                    "Invalid input for tags. Reason: tags must be strings.",
                ))
            })?,
        _ => {
            return Err(ApiError(NeutronError::bad_request(
                "Invalid input for tags. Reason: a list of tags is required.",
            )));
        }
    };
    let tags = clean_tags(tags)?;
    authorize_tags::<R>(&net, &ctx, &id, "update")?;
    let view = update_with::<R, _>(&net, &ctx, &id, None, |_, v| {
        *tags_of(v)? = tags.clone();
        Ok((vec![], vec![]))
    })
    .await?;
    Ok(Json(
        json!({ "tags": view.get("tags").cloned().unwrap_or(Value::Array(vec![])) }),
    ))
}

async fn add_tag<R: Resource>(
    State(net): State<Shared>,
    ctx: Ctx,
    Path((id, tag)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    check_tag(&tag)?;
    authorize_tags::<R>(&net, &ctx, &id, "update")?;
    update_with::<R, _>(&net, &ctx, &id, None, |_, v| {
        let tags = tags_of(v)?;
        if !tags.contains(&tag) {
            if tags.len() >= MAX_TAGS {
                return Err(too_many_tags());
            }
            tags.push(tag.clone());
        }
        Ok((vec![], vec![]))
    })
    .await?;
    Ok(StatusCode::CREATED)
}

async fn remove_tag<R: Resource>(
    State(net): State<Shared>,
    ctx: Ctx,
    Path((id, tag)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    authorize_tags::<R>(&net, &ctx, &id, "delete")?;
    update_with::<R, _>(&net, &ctx, &id, None, |_, v| {
        let tags = tags_of(v)?;
        let before = tags.len();
        tags.retain(|t| *t != tag);
        if tags.len() == before {
            return Err(ApiError(NeutronError::new(
                404,
                "TagNotFound",
                format!("Tag {tag} could not be found for {} {id}.", R::SINGULAR),
            )));
        }
        Ok((vec![], vec![]))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_tags<R: Resource>(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    authorize_tags::<R>(&net, &ctx, &id, "delete")?;
    update_with::<R, _>(&net, &ctx, &id, None, |_, v| {
        tags_of(v)?.clear();
        Ok((vec![], vec![]))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Encodes a resource for the store.
pub fn encode<T: Serialize>(v: &T) -> ApiResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| ApiError(NeutronError::internal(e.to_string())))
}

/// The visible view after a create, read back from the db.
pub fn view_of<R: Resource>(net: &Shared, id: &str) -> Value {
    let db = net.db();
    R::table(&db)
        .get(id)
        .map(|e| Value::Object(e.value.view(&db)))
        .unwrap_or(Value::Null)
}

/// Quota check for `n` more resources of a kind.
pub fn check_quota(
    db: &Db,
    project: &str,
    resource: &str,
    limit: i64,
    used: usize,
    n: usize,
) -> ApiResult<()> {
    let _ = db;
    if limit >= 0 && (used + n) as i64 > limit {
        return Err(ApiError(NeutronError::conflict(
            "OverQuota",
            format!("Quota exceeded for resources: ['{resource}']."),
        )));
    }
    let _ = project;
    Ok(())
}
