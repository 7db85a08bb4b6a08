//! Subnet pools: prefixes that subnets are carved from without overlap.

use ipnet::IpNet;
use kuryr_model::input::{Input, parse_cidr};
use kuryr_model::{NeutronError, SubnetPool};
use kuryr_store::{Compare, Txn};
use serde_json::{Map, Value};

use super::db::{Db, Table};
use super::networks::owner_project;
use super::resource::{
    self, Resource, check_quota, clean_tags, encode, key, standard_fields, view_of,
};
use super::subnets::pool_usage;
use super::{ApiError, ApiResult, Ctx, Shared, new_id, now};

impl Resource for SubnetPool {
    const SINGULAR: &'static str = "subnetpool";
    const PLURAL: &'static str = "subnetpools";
    const PATH: &'static str = "subnetpools";
    const DISPLAY: &'static str = "Subnet pool";

    const NOT_FOUND: &'static str = "SubnetPoolNotFound";

    standard_fields!(subnetpools);

    fn create_defaults() -> Vec<(&'static str, Value)> {
        vec![
            ("shared", Value::Bool(false)),
            ("is_default", Value::Bool(false)),
        ]
    }

    async fn create(
        net: &Shared,
        ctx: &Ctx,
        items: Vec<Map<String, Value>>,
    ) -> ApiResult<Vec<Value>> {
        let mut out = Vec::new();
        for item in items {
            out.push(create_one(net, ctx, item).await?);
        }
        Ok(out)
    }

    async fn update(
        net: &Shared,
        ctx: &Ctx,
        id: &str,
        mut input: Input,
        if_match: Option<u64>,
    ) -> ApiResult<Value> {
        input.reject(&["shared", "ip_version", "tags"], "update")?;
        let name = input.string("name", 255)?;
        let description = input.string("description", 255)?;
        let prefixes = input.string_list("prefixes")?;
        let default_len = input.int("default_prefixlen", 0, 128)?;
        let min_len = input.int("min_prefixlen", 0, 128)?;
        let max_len = input.int("max_prefixlen", 0, 128)?;
        let is_default = input.boolean("is_default")?;
        let quota = input.nullable_int("default_quota", 0, i64::MAX)?;
        input.ignore(&["address_scope_id"]);
        input.finish()?;
        resource::update_with::<SubnetPool, _>(net, ctx, id, if_match, |db, p| {
            if let Some(v) = &name {
                p.name = v.clone();
            }
            if let Some(v) = &description {
                p.description = v.clone();
            }
            if let Some(list) = &prefixes {
                let new = parse_prefixes(list, Some(p.ip_version))?.1;
                // Prefixes may grow; whatever is already allocated must stay covered.
                for used in pool_usage(db, &p.id) {
                    if !new.iter().any(|n| n.contains(&used)) {
                        return Err(ApiError(NeutronError::bad_request(format!(
                            "Illegal update to prefixes: allocated subnet {used} would no longer be covered"
                        ))));
                    }
                }
                p.prefixes = new.iter().map(ToString::to_string).collect();
            }
            if let Some(v) = min_len {
                p.min_prefixlen = v as u8;
            }
            if let Some(v) = max_len {
                p.max_prefixlen = v as u8;
            }
            if let Some(v) = default_len {
                p.default_prefixlen = v as u8;
            }
            check_lengths(p.ip_version, p.min_prefixlen, p.default_prefixlen, p.max_prefixlen)?;
            if let Some(true) = is_default {
                check_single_default(db, p.ip_version, &p.id)?;
            }
            if let Some(v) = is_default {
                p.is_default = v;
            }
            if let Some(q) = quota {
                p.default_quota = q;
            }
            Ok((vec![], vec![]))
        })
        .await
    }

    async fn delete(net: &Shared, ctx: &Ctx, id: &str) -> ApiResult<()> {
        resource::delete_with::<SubnetPool, _>(net, ctx, id, |db, p| {
            if !pool_usage(db, &p.id).is_empty() {
                return Err(ApiError(NeutronError::conflict(
                    "SubnetPoolInUse",
                    format!("Unable to complete operation on subnet pool {}. Subnet pool has existing allocations.", p.id),
                )));
            }
            Ok((vec![], vec![]))
        })
        .await
    }
}

fn parse_prefixes(list: &[String], version: Option<u8>) -> ApiResult<(u8, Vec<IpNet>)> {
    if list.is_empty() {
        return Err(ApiError(NeutronError::bad_request(
            "Invalid input for prefixes. Reason: at least one prefix is required.",
        )));
    }
    let mut nets = Vec::new();
    for s in list {
        let n = parse_cidr(s).ok_or_else(|| {
            ApiError(NeutronError::bad_request(format!(
                "Invalid input for prefixes. Reason: '{s}' is not a valid IP subnet."
            )))
        })?;
        nets.push(n.trunc());
    }
    let v = if nets[0].addr().is_ipv4() { 4 } else { 6 };
    if nets.iter().any(|n| n.addr().is_ipv4() != (v == 4)) || version.is_some_and(|want| want != v)
    {
        return Err(ApiError(NeutronError::invalid_input(
            "Cannot mix IPv4 and IPv6 prefixes in a subnet pool",
        )));
    }
    // Same as Neutron: overlapping and adjacent prefixes are merged.
    Ok((v, IpNet::aggregate(&nets)))
}

fn check_lengths(version: u8, min: u8, default: u8, max: u8) -> ApiResult<()> {
    let top = if version == 4 { 32 } else { 128 };
    if !(min <= default && default <= max && max <= top) {
        return Err(ApiError(NeutronError::bad_request(format!(
            "Illegal prefix bounds: min_prefixlen={min}, default_prefixlen={default}, max_prefixlen={max}"
        ))));
    }
    Ok(())
}

fn check_single_default(db: &Db, version: u8, except: &str) -> ApiResult<()> {
    if db
        .subnetpools
        .values()
        .any(|p| p.value.is_default && p.value.ip_version == version && p.value.id != except)
    {
        return Err(ApiError(NeutronError::invalid_input(
            "A default subnetpool for this IP family has already been set. Only one default may exist per IP family",
        )));
    }
    Ok(())
}

async fn create_one(net: &Shared, ctx: &Ctx, item: Map<String, Value>) -> ApiResult<Value> {
    let mut input = Input::new(item);
    let project_id = owner_project(ctx, &mut input)?;
    let name = input.string("name", 255)?.unwrap_or_default();
    let description = input.string("description", 255)?.unwrap_or_default();
    let prefixes = input.string_list("prefixes")?.ok_or_else(|| {
        ApiError(NeutronError::bad_request(
            "Failed to parse request. Required attribute 'prefixes' not specified",
        ))
    })?;
    let default_len = input.int("default_prefixlen", 0, 128)?;
    let min_len = input.int("min_prefixlen", 0, 128)?;
    let max_len = input.int("max_prefixlen", 0, 128)?;
    let shared = input.boolean("shared")?.unwrap_or(false);
    let is_default = input.boolean("is_default")?.unwrap_or(false);
    let default_quota = input.nullable_int("default_quota", 0, i64::MAX)?.flatten();
    let tags = clean_tags(input.string_list("tags")?.unwrap_or_default())?;
    match input.take("address_scope_id") {
        None | Some(Value::Null) => {}
        Some(_) => {
            return Err(ApiError(NeutronError::invalid_input(
                "address scopes are not supported",
            )));
        }
    }
    input.finish()?;
    let (version, nets) = parse_prefixes(&prefixes, None)?;
    let top: u8 = if version == 4 { 32 } else { 128 };
    let min = min_len
        .map(|v| v as u8)
        .unwrap_or(if version == 4 { 8 } else { 64 });
    let max = max_len.map(|v| v as u8).unwrap_or(top);
    let default = default_len.map(|v| v as u8).unwrap_or(min);
    check_lengths(version, min, default, max)?;
    let ts = now();
    let id = new_id();
    let txn = {
        let db = net.db();
        let used = db
            .subnetpools
            .values()
            .filter(|p| p.value.project_id == project_id)
            .count();
        check_quota(
            &db,
            &project_id,
            "subnetpool",
            db.quota(&project_id).subnetpool,
            used,
            1,
        )?;
        if is_default {
            check_single_default(&db, version, &id)?;
        }
        let p = SubnetPool {
            id: id.clone(),
            name,
            project_id,
            ip_version: version,
            prefixes: nets.iter().map(ToString::to_string).collect(),
            default_prefixlen: default,
            min_prefixlen: min,
            max_prefixlen: max,
            shared,
            is_default,
            default_quota,
            address_scope_id: None,
            description,
            tags,
            created_at: ts.clone(),
            updated_at: ts,
            revision_number: 0,
        };
        Txn::new()
            .when(Compare::Absent(key::<SubnetPool>(&id)))
            .put(key::<SubnetPool>(&id), encode(&p)?)
    };
    net.commit(txn).await?;
    Ok(view_of::<SubnetPool>(net, &id))
}
