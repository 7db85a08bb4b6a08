//! Keystone's application credentials under `/v3/users/{user_id}/application_credentials`:
//! a user makes one from a token scoped to a project; it then logs in (method
//! `application_credential`, by id or by name and user, with its secret) as that
//! user on that project, with the roles it was given (a subset of the user's roles
//! there, narrowed again at every use to those the user still has). Restricted ones
//! (the default) cannot manage application credentials.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use kuryr_store::{Compare, Txn};
use serde_json::{Value, json};

use super::handlers::{
    KsError, KsResult, Shared, bad_request, busy, caller_claims, check_name, conflict, field,
    fmt_time, forbidden, internal, list_links, not_found, opt_bool, opt_str, parse_json, v3_url,
};
use super::tokens::TokenClaims;
use super::{AppCred, AuthContext, Identity, State as IdState, keys, new_id};

fn app_cred_json(id: &Identity, st: &IdState, ac: &AppCred) -> Value {
    let roles: Vec<Value> = ac
        .roles
        .iter()
        .filter_map(|r| st.roles.get(r))
        .map(|r| json!({"id": r.id, "name": r.name, "domain_id": null}))
        .collect();
    json!({
        "id": ac.id,
        "name": ac.name,
        "description": ac.description,
        "user_id": ac.user_id,
        "project_id": ac.project_id,
        "roles": roles,
        "expires_at": ac.expires_at.map(fmt_time),
        "unrestricted": ac.unrestricted,
        "access_rules": [],
        "links": {"self": format!("{}users/{}/application_credentials/{}", v3_url(id), ac.user_id, ac.id)},
    })
}

/// Tokens got with a restricted application credential may not manage them (Keystone).
fn check_unrestricted(st: &IdState, claims: &TokenClaims) -> KsResult<()> {
    let restricted = claims
        .app_cred
        .as_ref()
        .is_some_and(|a| st.app_creds.get(a).is_none_or(|ac| !ac.unrestricted));
    if restricted {
        return Err(KsError(
            StatusCode::FORBIDDEN,
            "Using method 'application_credential' is not allowed for managing additional application credentials.".into(),
        ));
    }
    Ok(())
}

/// The owner, or an admin (list, show, delete).
fn owner_or_admin(ctx: &AuthContext, user_id: &str) -> KsResult<()> {
    if ctx.user_id == user_id || ctx.is_admin() {
        Ok(())
    } else {
        Err(forbidden())
    }
}

/// `expires_at` as Keystone takes it: ISO 8601, with or without a zone (UTC then).
fn parse_expiry(s: &str) -> KsResult<i64> {
    let t = s.trim();
    if let Ok(d) = chrono::DateTime::parse_from_rfc3339(t) {
        return Ok(d.timestamp());
    }
    for f in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S%.f",
    ] {
        if let Ok(d) = chrono::NaiveDateTime::parse_from_str(t, f) {
            return Ok(d.and_utc().timestamp());
        }
    }
    Err(bad_request(format!(
        "Invalid input for field 'expires_at': {s:?} is not an ISO 8601 date and time."
    )))
}

pub(super) async fn create(
    State(id): State<Shared>,
    headers: HeaderMap,
    Path(user_id): Path<String>,
    body: Bytes,
) -> KsResult<Response> {
    let (claims, ctx) = caller_claims(&id, &headers)?;
    check_unrestricted(&id.state(), &claims)?;
    if ctx.user_id != user_id {
        return Err(KsError(
            StatusCode::FORBIDDEN,
            "Cannot create an application credential for another user.".into(),
        ));
    }
    let body = parse_json(&body)?;
    if !body
        .get("application_credential")
        .is_some_and(Value::is_object)
    {
        return Err(bad_request(
            "'application_credential' is a required property",
        ));
    }
    let name = opt_str(field(&body, "application_credential", "name"), "name")?
        .ok_or_else(|| bad_request("'name' is a required property"))?;
    check_name(&name, 255)?;
    let description = opt_str(
        field(&body, "application_credential", "description"),
        "description",
    )?;
    let secret = match opt_str(field(&body, "application_credential", "secret"), "secret")? {
        Some(s) if s.is_empty() => return Err(bad_request("The secret may not be empty.")),
        Some(s) => s,
        None => {
            use base64::Engine;
            let bytes: [u8; 64] = rand::random();
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        }
    };
    let now = chrono::Utc::now().timestamp();
    let expires_at = match opt_str(
        field(&body, "application_credential", "expires_at"),
        "expires_at",
    )? {
        Some(s) => {
            let t = parse_expiry(&s)?;
            if t <= now {
                return Err(bad_request(format!(
                    "The 'expires_at' ({s}) must be in the future."
                )));
            }
            Some(t)
        }
        None => None,
    };
    let unrestricted = opt_bool(
        field(&body, "application_credential", "unrestricted"),
        "unrestricted",
    )?
    .unwrap_or(false);
    if field(&body, "application_credential", "access_rules")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        return Err(bad_request(
            "Access rules are not supported by this identity service.",
        ));
    }
    let roles: Vec<String> = {
        let st = id.state();
        // What the creating token holds on its project is the most it may delegate.
        let held: Vec<&super::Role> = st.token_roles(&claims, &ctx.project_id);
        match field(&body, "application_credential", "roles") {
            None | Some(Value::Null) => held.iter().map(|r| r.id.clone()).collect(),
            Some(Value::Array(list)) if list.is_empty() => {
                held.iter().map(|r| r.id.clone()).collect()
            }
            Some(Value::Array(list)) => {
                let mut out = Vec::new();
                for r in list {
                    let found = match (r["id"].as_str(), r["name"].as_str()) {
                        (Some(rid), _) => st.roles.get(rid),
                        (None, Some(n)) => st.role_by_name(n),
                        _ => {
                            return Err(bad_request(
                                "Each role is given as {\"id\": ...} or {\"name\": ...}.",
                            ));
                        }
                    };
                    let role = found.ok_or_else(|| {
                        not_found(
                            "role",
                            r["id"].as_str().or(r["name"].as_str()).unwrap_or(""),
                        )
                    })?;
                    if !held.iter().any(|h| h.id == role.id) {
                        return Err(bad_request(format!(
                            "Cannot create an application credential with unassigned role {}.",
                            role.name
                        )));
                    }
                    if !out.contains(&role.id) {
                        out.push(role.id.clone());
                    }
                }
                out
            }
            Some(_) => {
                return Err(bad_request(
                    "Invalid input for field 'roles': expected a list.",
                ));
            }
        }
    };
    if roles.is_empty() {
        return Err(bad_request(
            "An application credential needs at least one role.",
        ));
    }
    let secret_hash = id
        .gate
        .hash(secret.clone())
        .await
        .map_err(busy)?
        .map_err(internal)?;
    let ac = AppCred {
        id: new_id(),
        name: name.clone(),
        description,
        user_id: user_id.clone(),
        project_id: ctx.project_id.clone(),
        secret_hash,
        roles,
        expires_at,
        unrestricted,
    };
    let txn = Txn::new()
        .when(Compare::Absent(keys::app_cred_name(&user_id, &name)))
        .put(keys::app_cred_name(&user_id, &name), ac.id.clone())
        .put(
            keys::app_cred(&ac.id),
            serde_json::to_vec(&ac).map_err(internal)?,
        );
    if !id.commit(txn).await.map_err(internal)? {
        return Err(conflict(format!(
            "Conflict occurred attempting to store application_credential - Duplicate entry found with name {name}."
        )));
    }
    let mut out = app_cred_json(&id, &id.state(), &ac);
    // The secret is shown once, now; only its hash is kept.
    out["secret"] = json!(secret);
    Ok((
        StatusCode::CREATED,
        Json(json!({ "application_credential": out })),
    )
        .into_response())
}

pub(super) async fn list(
    State(id): State<Shared>,
    headers: HeaderMap,
    Path(user_id): Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> KsResult<Json<Value>> {
    let (_, ctx) = caller_claims(&id, &headers)?;
    owner_or_admin(&ctx, &user_id)?;
    let st = id.state();
    if !st.users.contains_key(&user_id) {
        return Err(not_found("user", &user_id));
    }
    let mut list: Vec<&AppCred> = st
        .app_creds
        .values()
        .filter(|a| a.user_id == user_id)
        .filter(|a| q.get("name").is_none_or(|n| *n == a.name))
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    let items: Vec<Value> = list
        .into_iter()
        .map(|a| app_cred_json(&id, &st, a))
        .collect();
    Ok(Json(
        json!({"application_credentials": items, "links": list_links()}),
    ))
}

pub(super) async fn show(
    State(id): State<Shared>,
    headers: HeaderMap,
    Path((user_id, acid)): Path<(String, String)>,
) -> KsResult<Json<Value>> {
    let (_, ctx) = caller_claims(&id, &headers)?;
    owner_or_admin(&ctx, &user_id)?;
    let st = id.state();
    let ac = st
        .app_creds
        .get(&acid)
        .filter(|a| a.user_id == user_id)
        .ok_or_else(|| not_found("application credential", &acid))?;
    Ok(Json(
        json!({"application_credential": app_cred_json(&id, &st, ac)}),
    ))
}

/// Deleting one also revokes its tokens (they are only valid while it exists).
pub(super) async fn delete(
    State(id): State<Shared>,
    headers: HeaderMap,
    Path((user_id, acid)): Path<(String, String)>,
) -> KsResult<StatusCode> {
    let (claims, ctx) = caller_claims(&id, &headers)?;
    owner_or_admin(&ctx, &user_id)?;
    let txn = {
        let st = id.state();
        check_unrestricted(&st, &claims)?;
        let ac = st
            .app_creds
            .get(&acid)
            .filter(|a| a.user_id == user_id)
            .ok_or_else(|| not_found("application credential", &acid))?;
        Txn::new()
            .delete(keys::app_cred(&ac.id))
            .delete(keys::app_cred_name(&ac.user_id, &ac.name))
    };
    id.commit(txn).await.map_err(internal)?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::parse_expiry;

    #[test]
    fn expiry_formats() {
        let t = 1_893_456_000; // 2030-01-01T00:00:00Z
        assert_eq!(parse_expiry("2030-01-01T00:00:00Z").unwrap(), t);
        assert_eq!(parse_expiry("2030-01-01T00:00:00").unwrap(), t);
        assert_eq!(parse_expiry("2030-01-01T00:00:00.000000").unwrap(), t);
        assert_eq!(parse_expiry("2030-01-01T01:00:00+01:00").unwrap(), t);
        assert!(parse_expiry("tomorrow").is_err());
    }
}
