//! Network IP availability (`/v2.0/network-ip-availabilities[/{network_id}]`, the
//! `network-ip-availability` and `network-ip-availability-details` extensions): per
//! network and per subnet, how many addresses the allocation pools hold and how many
//! are allocated. Admin and service callers only (`get_network_ip_availability`).
//!
//! The numbers exceed u64 for IPv6 (a /64 holds 2^64 addresses), so they are u128
//! written straight to JSON; a /0 IPv6 subnet (2^128) and sums past u128 are capped
//! at `u128::MAX`.
//!
//! Lists follow neutron's emulated sorting and pagination for this resource: the only
//! sort key is `network_id`, `sort_key` and `sort_dir` must pair up, and a marker that
//! is not in the list gives an empty page.

use std::net::IpAddr;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ipnet::IpNet;
use kuryr_model::input::parse_cidr;
use kuryr_model::ipam::IpRange;
use kuryr_model::{Network, NeutronError, Subnet};
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::{Map, Value};

use super::db::Db;
use super::policy::{Lazy, POLICY};
use super::query::{check_filters, py_repr};
use super::{ApiError, ApiResult, Ctx, Shared};

const PATH: &str = "network-ip-availabilities";
const RULE: &str = "get_network_ip_availability";
/// Neutron's `is_filter` attributes of this resource (`project_id` mirrors `tenant_id`).
const FILTERS: [&str; 5] = [
    "network_id",
    "network_name",
    "tenant_id",
    "project_id",
    "ip_version",
];

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/network-ip-availabilities", get(list))
        .route("/network-ip-availabilities/{network_id}", get(show))
}

// ---------------------------------------------------------------- the numbers

/// `ip_availability_details`, per subnet and summed per network.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
struct Details {
    /// The CIDR's size, without network and broadcast for IPv4.
    total_ips_in_subnet: u128,
    /// The pools' sizes (0 without pools).
    total_ips_in_allocation_pool: u128,
    used_ips_in_subnet: u128,
    /// Allocations inside a pool (a router port on the gateway IP is outside).
    used_ips_in_allocation_pool: u128,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    used_ips: u128,
    /// The pools' sizes; without pools, the whole CIDR (network and broadcast included).
    total_ips: u128,
    details: Details,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        let (d, e) = (&mut self.details, &o.details);
        self.used_ips = self.used_ips.saturating_add(o.used_ips);
        self.total_ips = self.total_ips.saturating_add(o.total_ips);
        d.total_ips_in_subnet = d.total_ips_in_subnet.saturating_add(e.total_ips_in_subnet);
        d.total_ips_in_allocation_pool = d
            .total_ips_in_allocation_pool
            .saturating_add(e.total_ips_in_allocation_pool);
        d.used_ips_in_subnet = d.used_ips_in_subnet.saturating_add(e.used_ips_in_subnet);
        d.used_ips_in_allocation_pool = d
            .used_ips_in_allocation_pool
            .saturating_add(e.used_ips_in_allocation_pool);
    }
}

/// Addresses in `cidr`, network and broadcast included; a /0 IPv6 (2^128) is capped
/// at `u128::MAX`.
fn cidr_size(cidr: &IpNet) -> u128 {
    let bits = cidr.max_prefix_len().saturating_sub(cidr.prefix_len());
    1u128.checked_shl(u32::from(bits)).unwrap_or(u128::MAX)
}

/// One subnet's numbers, as neutron counts them. `cidr` is `None` for a record whose
/// CIDR does not parse (counted as empty).
fn subnet_counts(
    cidr: Option<&IpNet>,
    pools: &[IpRange],
    allocated: impl IntoIterator<Item = IpAddr>,
) -> Counts {
    let size = cidr.map(cidr_size).unwrap_or(0);
    let in_pools = pools.iter().fold(0u128, |a, p| a.saturating_add(p.size()));
    let in_subnet = match cidr {
        // Without network and broadcast (0 for a /31 or /32, where neutron says -1).
        Some(IpNet::V4(_)) => size.saturating_sub(2),
        _ => size,
    };
    let (mut used, mut used_in_pools) = (0u128, 0u128);
    for ip in allocated {
        used += 1;
        if pools.iter().any(|p| p.contains(ip)) {
            used_in_pools += 1;
        }
    }
    Counts {
        used_ips: used,
        total_ips: if pools.is_empty() { size } else { in_pools },
        details: Details {
            total_ips_in_subnet: in_subnet,
            total_ips_in_allocation_pool: in_pools,
            used_ips_in_subnet: used,
            used_ips_in_allocation_pool: used_in_pools,
        },
    }
}

// ---------------------------------------------------------------- the view

#[derive(Serialize)]
struct SubnetView<'a> {
    subnet_id: &'a str,
    ip_version: u8,
    cidr: &'a str,
    subnet_name: &'a str,
    used_ips: u128,
    total_ips: u128,
    ip_availability_details: Details,
}

struct NetworkView<'a> {
    network: &'a Network,
    subnets: Vec<SubnetView<'a>>,
    counts: Counts,
}

/// Whether subnet `s` is counted under an `ip_version` filter (`None`: no filter).
fn version_matches(s: &Subnet, versions: Option<&[String]>) -> bool {
    versions.is_none_or(|vs| {
        vs.iter()
            .any(|v| v.trim().parse::<i64>().ok() == Some(i64::from(s.ip_version)))
    })
}

fn subnets_of<'a>(db: &'a Db, network_id: &str) -> impl Iterator<Item = &'a Subnet> {
    db.subnets_by_network
        .get(network_id)
        .into_iter()
        .flatten()
        .filter_map(|sid| db.subnets.get(sid))
        .map(|e| &*e.value)
}

fn availability<'a>(db: &'a Db, n: &'a Network, versions: Option<&[String]>) -> NetworkView<'a> {
    let mut total = Counts::default();
    let subnets = subnets_of(db, &n.id)
        .filter(|s| version_matches(s, versions))
        .map(|s| {
            let allocated = db.ips_by_subnet.get(&s.id).into_iter().flatten().copied();
            let c = subnet_counts(parse_cidr(&s.cidr).as_ref(), &s.allocation_pools, allocated);
            total.add(&c);
            SubnetView {
                subnet_id: &s.id,
                ip_version: s.ip_version,
                cidr: &s.cidr,
                subnet_name: &s.name,
                used_ips: c.used_ips,
                total_ips: c.total_ips,
                ip_availability_details: c.details,
            }
        })
        .collect();
    NetworkView {
        network: n,
        subnets,
        counts: total,
    }
}

/// Which attributes a response shows (`fields`). Neutron's quirk, kept: in a list
/// `tenant_id` comes only with `project_id`; a show gives both for either.
struct Mask<'a> {
    fields: &'a [String],
    show: bool,
}

impl Mask<'_> {
    fn wants(&self, key: &str) -> bool {
        let has = |k: &str| self.fields.iter().any(|f| f == k);
        match key {
            _ if self.fields.is_empty() => true,
            "project_id" | "tenant_id" if self.show => has("project_id") || has("tenant_id"),
            "tenant_id" => has("project_id"),
            k => has(k),
        }
    }
}

struct Shown<'a> {
    view: &'a NetworkView<'a>,
    mask: &'a Mask<'a>,
}

impl Serialize for Shown<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (v, n, m) = (self.view, self.view.network, self.mask);
        let mut out = s.serialize_map(None)?;
        if m.wants("network_id") {
            out.serialize_entry("network_id", &n.id)?;
        }
        if m.wants("network_name") {
            out.serialize_entry("network_name", &n.name)?;
        }
        if m.wants("project_id") {
            out.serialize_entry("project_id", &n.project_id)?;
        }
        if m.wants("subnet_ip_availability") {
            out.serialize_entry("subnet_ip_availability", &v.subnets)?;
        }
        if m.wants("used_ips") {
            out.serialize_entry("used_ips", &v.counts.used_ips)?;
        }
        if m.wants("total_ips") {
            out.serialize_entry("total_ips", &v.counts.total_ips)?;
        }
        if m.wants("ip_availability_details") {
            out.serialize_entry("ip_availability_details", &v.counts.details)?;
        }
        if m.wants("tenant_id") {
            out.serialize_entry("tenant_id", &n.project_id)?;
        }
        out.end()
    }
}

#[derive(Serialize)]
struct Link {
    rel: &'static str,
    href: String,
}

#[derive(Serialize)]
struct ListBody<'a> {
    network_ip_availabilities: Vec<Shown<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    network_ip_availabilities_links: Vec<Link>,
}

#[derive(Serialize)]
struct ShowBody<'a> {
    network_ip_availability: Shown<'a>,
}

fn json_response<T: Serialize>(body: &T) -> ApiResult<Response> {
    let bytes = serde_json::to_vec(body).map_err(|e| {
        tracing::error!(error = %e, "network IP availability did not serialize");
        ApiError(NeutronError::internal(
            "Request Failed: internal server error while processing your request.",
        ))
    })?;
    Ok(([(header::CONTENT_TYPE, "application/json")], bytes).into_response())
}

// ---------------------------------------------------------------- requests

/// A list request's query, checked in neutron's order: filters, limit, sorting.
#[derive(Debug, Default)]
struct ListParams {
    fields: Vec<String>,
    /// Filter → accepted values (any of them); empty values dropped.
    filters: Vec<(String, Vec<String>)>,
    limit: Option<usize>,
    marker: Option<String>,
    page_reverse: bool,
    descending: bool,
    raw: Vec<(String, String)>,
}

/// `fields=a&fields=b`, or `fields=a,b` as kuryr's other lists take it.
fn split_fields(v: &str) -> impl Iterator<Item = String> + '_ {
    v.split(',').filter(|s| !s.is_empty()).map(str::to_string)
}

impl ListParams {
    fn parse(q: &str) -> ApiResult<Self> {
        let mut p = ListParams::default();
        let (mut keys, mut dirs) = (Vec::new(), Vec::new());
        let mut limit = None;
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            let (k, v) = (k.into_owned(), v.into_owned());
            p.raw.push((k.clone(), v.clone()));
            match k.as_str() {
                "fields" => p.fields.extend(split_fields(&v)),
                "sort_key" => keys.push(v),
                "sort_dir" => dirs.push(v),
                "limit" => limit = Some(v),
                "marker" => p.marker = Some(v),
                "page_reverse" => p.page_reverse = v.eq_ignore_ascii_case("true"),
                _ => match p.filters.iter_mut().find(|(name, _)| *name == k) {
                    Some((_, vals)) => vals.push(v),
                    None => p.filters.push((k, vec![v])),
                },
            }
        }
        check_filters(p.filters.iter().map(|(k, _)| k.as_str()), |k| {
            FILTERS.contains(&k)
        })?;
        // Empty values filter nothing (kuryr does not advertise `empty-string-filtering`).
        for (_, vals) in &mut p.filters {
            vals.retain(|v| !v.is_empty());
        }
        p.filters.retain(|(_, vals)| !vals.is_empty());
        if let Some(l) = limit {
            let n = l.parse::<i128>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                ApiError(NeutronError::new(
                    400,
                    "BadRequest",
                    format!(
                        "Bad limit request: Limit must be an integer 0 or greater and not '{l}'."
                    ),
                ))
            })?;
            p.limit = (n > 0).then(|| usize::try_from(n).unwrap_or(usize::MAX));
        }
        keys.retain(|k| !k.is_empty());
        dirs.retain(|d| !d.is_empty());
        if keys.len() != dirs.len() {
            return Err(bad_request(
                "The number of sort_keys and sort_dirs must be same".into(),
            ));
        }
        let absent: Vec<String> = keys
            .iter()
            .filter(|k| *k != "network_id")
            .map(|k| py_repr(k))
            .collect();
        if !absent.is_empty() {
            return Err(bad_request(format!(
                "[{}] is invalid attribute for sort_keys",
                absent.join(", ")
            )));
        }
        let invalid: Vec<String> = dirs
            .iter()
            .filter(|d| *d != "asc" && *d != "desc")
            .map(|d| py_repr(d))
            .collect();
        if !invalid.is_empty() {
            return Err(bad_request(format!(
                "[{}] is invalid value for sort_dirs, valid value is 'asc' and 'desc'",
                invalid.join(", ")
            )));
        }
        // Every sort key is `network_id`: the first direction decides.
        p.descending = dirs.first().is_some_and(|d| d == "desc");
        Ok(p)
    }

    fn filter(&self, name: &str) -> Option<&[String]> {
        self.filters
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
}

fn bad_request(message: String) -> ApiError {
    ApiError(NeutronError::bad_request(message))
}

fn network_matches(n: &Network, p: &ListParams) -> bool {
    p.filters.iter().all(|(k, wants)| {
        let have = match k.as_str() {
            "network_id" => &n.id,
            "network_name" => &n.name,
            "tenant_id" | "project_id" => &n.project_id,
            _ => return true,
        };
        wants.iter().any(|w| w == have)
    })
}

/// The policy target: the network's project (the default rule needs only the caller).
fn target(n: &Network) -> Map<String, Value> {
    let mut t = Map::new();
    t.insert("network_id".into(), Value::String(n.id.clone()));
    t.insert("project_id".into(), Value::String(n.project_id.clone()));
    t.insert("tenant_id".into(), Value::String(n.project_id.clone()));
    t
}

fn may_read(ctx: &Ctx, n: &Network) -> bool {
    POLICY.allows(RULE, ctx, &Lazy::new(|| target(n)))
}

/// Neutron's emulated pagination: a marker not in the list gives an empty page.
fn paginate<'a, T>(items: &'a [T], key: impl Fn(&T) -> &str, p: &ListParams) -> &'a [T] {
    let Some(limit) = p.limit else {
        return items;
    };
    let at = match &p.marker {
        Some(m) => match items.iter().position(|i| key(i) == m) {
            Some(at) => at,
            None => return &[],
        },
        None if p.page_reverse => items.len(),
        None => 0,
    };
    if p.page_reverse {
        return &items[at.saturating_sub(limit)..at];
    }
    let start = if p.marker.is_some() { at + 1 } else { at };
    let start = start.min(items.len());
    &items[start..start.saturating_add(limit).min(items.len())]
}

/// `next` unless a forward page came out short, `previous` unless a reverse page did;
/// an empty page's links carry no marker.
fn links(page_ids: &[&str], p: &ListParams, base_url: &str) -> Vec<Link> {
    let Some(limit) = p.limit else {
        return Vec::new();
    };
    let link = |marker: Option<&str>, reverse: bool| {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in p
            .raw
            .iter()
            .filter(|(k, _)| k != "marker" && k != "page_reverse")
        {
            ser.append_pair(k, v);
        }
        if let Some(m) = marker {
            ser.append_pair("marker", m);
        }
        if reverse {
            ser.append_pair("page_reverse", "True");
        }
        format!("{base_url}?{}", ser.finish())
    };
    let short = page_ids.len() < limit;
    let mut out = Vec::new();
    if !short || p.page_reverse {
        out.push(Link {
            rel: "next",
            href: link(page_ids.last().copied(), false),
        });
    }
    if !short || !p.page_reverse {
        out.push(Link {
            rel: "previous",
            href: link(page_ids.first().copied(), true),
        });
    }
    out
}

async fn list(State(net): State<Shared>, ctx: Ctx, RawQuery(q): RawQuery) -> ApiResult<Response> {
    let p = ListParams::parse(q.as_deref().unwrap_or(""))?;
    let versions = p.filter("ip_version");
    let db = net.db();
    // `db.networks` is in id order, which is also the `network_id` sort.
    let mut picked: Vec<&Network> = db
        .networks
        .values()
        .map(|e| &*e.value)
        .filter(|n| network_matches(n, &p))
        .filter(|n| {
            versions.is_none() || subnets_of(&db, &n.id).any(|s| version_matches(s, versions))
        })
        .filter(|n| may_read(&ctx, n))
        .collect();
    if p.descending {
        picked.reverse();
    }
    let page = paginate(&picked, |n| n.id.as_str(), &p);
    let views: Vec<NetworkView<'_>> = page
        .iter()
        .map(|n| availability(&db, n, versions))
        .collect();
    let mask = Mask {
        fields: &p.fields,
        show: false,
    };
    let ids: Vec<&str> = page.iter().map(|n| n.id.as_str()).collect();
    let base_url = format!("{}/networking/v2.0/{PATH}", net.config.public_url);
    json_response(&ListBody {
        network_ip_availabilities: views
            .iter()
            .map(|view| Shown { view, mask: &mask })
            .collect(),
        network_ip_availabilities_links: links(&ids, &p, &base_url),
    })
}

/// Only `fields` counts here; neutron ignores every other parameter of a show.
async fn show(
    State(net): State<Shared>,
    ctx: Ctx,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let fields: Vec<String> = form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "fields")
        .flat_map(|(_, v)| split_fields(&v).collect::<Vec<_>>())
        .collect();
    let db = net.db();
    // Neutron looks the network up before its policy check: an unknown network is
    // `NetworkNotFound` for every caller, a known one `HTTPNotFound` for the others.
    let Some(e) = db.networks.get(&id) else {
        return Err(ApiError(NeutronError::not_found(
            "Network",
            "NetworkNotFound",
            &id,
        )));
    };
    if !may_read(&ctx, &e.value) {
        return Err(ApiError(NeutronError::new(
            404,
            "HTTPNotFound",
            "The resource could not be found.",
        )));
    }
    let view = availability(&db, &e.value, None);
    let mask = Mask {
        fields: &fields,
        show: true,
    };
    json_response(&ShowBody {
        network_ip_availability: Shown {
            view: &view,
            mask: &mask,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kuryr_model::ipam::default_pools;

    fn net(s: &str) -> IpNet {
        parse_cidr(s).unwrap_or_else(|| panic!("bad cidr {s}"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|_| panic!("bad ip {s}"))
    }

    /// A subnet with neutron's default pools around gateway `gw`.
    fn counts(cidr: &str, gw: Option<&str>, allocated: &[&str]) -> Counts {
        let c = net(cidr);
        let pools = default_pools(&c, gw.map(ip));
        subnet_counts(Some(&c), &pools, allocated.iter().map(|a| ip(a)))
    }

    #[test]
    fn cidr_sizes() {
        assert_eq!(cidr_size(&net("10.0.0.0/24")), 256);
        assert_eq!(cidr_size(&net("10.0.0.1/32")), 1);
        assert_eq!(cidr_size(&net("0.0.0.0/0")), 1 << 32);
        assert_eq!(cidr_size(&net("2001:db8::/64")), 1 << 64);
        assert_eq!(cidr_size(&net("::/1")), 1 << 127);
        assert_eq!(cidr_size(&net("::/0")), u128::MAX);
    }

    #[test]
    fn v4_default_pool() {
        let c = counts("10.0.0.0/24", Some("10.0.0.1"), &[]);
        assert_eq!(c.total_ips, 253);
        assert_eq!(c.used_ips, 0);
        assert_eq!(
            c.details,
            Details {
                total_ips_in_subnet: 254,
                total_ips_in_allocation_pool: 253,
                used_ips_in_subnet: 0,
                used_ips_in_allocation_pool: 0,
            }
        );
        // Without a gateway the pool is the whole usable range.
        assert_eq!(counts("10.0.0.0/24", None, &[]).total_ips, 254);
        // tempest: 2^(32 - prefix) - 3.
        assert_eq!(
            counts("10.100.0.0/28", Some("10.100.0.1"), &[]).total_ips,
            13
        );
    }

    #[test]
    fn allocations_inside_and_outside_the_pools() {
        // A router port on the gateway IP is used but outside the pools.
        let c = counts(
            "10.0.0.0/24",
            Some("10.0.0.1"),
            &["10.0.0.1", "10.0.0.2", "10.0.0.254"],
        );
        assert_eq!(c.used_ips, 3);
        assert_eq!(c.details.used_ips_in_subnet, 3);
        assert_eq!(c.details.used_ips_in_allocation_pool, 2);
    }

    #[test]
    fn no_pools_count_the_whole_cidr() {
        let c = net("10.0.0.0/24");
        let got = subnet_counts(Some(&c), &[], [ip("10.0.0.5")]);
        assert_eq!(got.total_ips, 256);
        assert_eq!(got.used_ips, 1);
        assert_eq!(
            got.details,
            Details {
                total_ips_in_subnet: 254,
                total_ips_in_allocation_pool: 0,
                used_ips_in_subnet: 1,
                used_ips_in_allocation_pool: 0,
            }
        );
        // Tiny v4 subnets do not go below zero.
        let c = net("10.0.0.7/32");
        assert_eq!(
            subnet_counts(Some(&c), &[], []).details.total_ips_in_subnet,
            0
        );
        // A CIDR that does not parse counts as empty.
        assert_eq!(subnet_counts(None, &[], []).total_ips, 0);
    }

    #[test]
    fn v6_exceeds_u64() {
        let c = counts("2001:db8::/64", Some("2001:db8::1"), &["2001:db8::2"]);
        assert_eq!(c.details.total_ips_in_subnet, 1 << 64);
        // tempest: 2^(128 - prefix) - 2.
        assert_eq!(c.total_ips, (1 << 64) - 2);
        assert_eq!(c.details.used_ips_in_allocation_pool, 1);
        let mut sum = counts("10.0.0.0/24", Some("10.0.0.1"), &[]);
        sum.add(&c);
        assert_eq!(sum.total_ips, (1u128 << 64) + 251);
        assert_eq!(sum.details.total_ips_in_subnet, (1u128 << 64) + 254);
        assert_eq!(sum.used_ips, 1);
        // Sums saturate rather than wrap.
        let whole = subnet_counts(Some(&net("::/0")), &[], []);
        let mut big = whole;
        big.add(&whole);
        assert_eq!(big.total_ips, u128::MAX);
    }

    #[test]
    fn u128_values_serialize_as_json_integers() {
        let d = Details {
            total_ips_in_subnet: 1 << 64,
            ..Details::default()
        };
        let s = serde_json::to_string(&d).unwrap_or_default();
        assert!(
            s.contains("\"total_ips_in_subnet\":18446744073709551616"),
            "{s}"
        );
    }

    #[test]
    fn fields_and_the_tenant_id_quirk() {
        let f = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let only_tenant = f(&["tenant_id"]);
        let list = Mask {
            fields: &only_tenant,
            show: false,
        };
        assert!(!list.wants("tenant_id") && !list.wants("project_id"));
        let show = Mask {
            fields: &only_tenant,
            show: true,
        };
        assert!(show.wants("tenant_id") && show.wants("project_id"));
        let project = f(&["project_id"]);
        let list = Mask {
            fields: &project,
            show: false,
        };
        assert!(list.wants("tenant_id") && !list.wants("network_id"));
        let all = Mask {
            fields: &[],
            show: false,
        };
        assert!(all.wants("subnet_ip_availability"));
    }

    #[test]
    fn query_checks_in_neutron_words() {
        let err = |q: &str| ListParams::parse(q).err().map(|e| (e.0.kind, e.0.message));
        assert_eq!(
            err("foo=1&ip_version=4&bar=2&foo=3"),
            Some((
                "HTTPBadRequest",
                "['foo', 'bar'] is invalid attribute for filtering".to_string()
            ))
        );
        assert_eq!(
            err("tags=x").map(|e| e.1),
            Some("['tags'] is invalid attribute for filtering".to_string())
        );
        assert_eq!(
            err("limit=x"),
            Some((
                "BadRequest",
                "Bad limit request: Limit must be an integer 0 or greater and not 'x'.".to_string()
            ))
        );
        assert_eq!(
            err("sort_key=network_id").map(|e| e.1),
            Some("The number of sort_keys and sort_dirs must be same".to_string())
        );
        assert_eq!(
            err("sort_key=network_name&sort_dir=asc").map(|e| e.1),
            Some("['network_name'] is invalid attribute for sort_keys".to_string())
        );
        assert_eq!(
            err("sort_key=network_id&sort_dir=up").map(|e| e.1),
            Some(
                "['up'] is invalid value for sort_dirs, valid value is 'asc' and 'desc'"
                    .to_string()
            )
        );
        let p = ListParams::parse(
            "network_name=&ip_version=6&sort_key=network_id&sort_dir=desc&limit=0&fields=a,b",
        )
        .unwrap_or_default();
        assert_eq!(
            p.filters,
            vec![("ip_version".to_string(), vec!["6".to_string()])]
        );
        assert!(p.descending);
        assert_eq!(p.limit, None);
        assert_eq!(p.fields, vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn pagination_is_neutrons_emulated_one() {
        let items = ["a", "b", "c", "d"];
        let page = |q: &str| {
            let p = ListParams::parse(q).unwrap_or_default();
            paginate(&items, |s| s, &p).to_vec()
        };
        assert_eq!(page(""), items.to_vec());
        assert_eq!(page("limit=2"), vec!["a", "b"]);
        assert_eq!(page("limit=2&marker=b"), vec!["c", "d"]);
        assert_eq!(page("limit=2&marker=d"), Vec::<&str>::new());
        assert_eq!(page("limit=2&marker=zz"), Vec::<&str>::new());
        assert_eq!(page("limit=2&marker=c&page_reverse=True"), vec!["a", "b"]);
        assert_eq!(page("limit=3&page_reverse=true"), vec!["b", "c", "d"]);
        let p = ListParams::parse("limit=1&marker=zz").unwrap_or_default();
        let l = links(&[], &p, "http://x/v2.0/n");
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].rel, "previous");
        assert_eq!(l[0].href, "http://x/v2.0/n?limit=1&page_reverse=True");
    }
}
