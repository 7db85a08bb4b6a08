//! Security groups and their rules; each project's `default` group is created on
//! first use with Neutron's default rules.

use kuryr_model::input::{Input, parse_ip_or_cidr, show};
use kuryr_model::{NeutronError, SecurityGroup, SecurityGroupRule};
use kuryr_store::{Compare, Op, Txn};
use serde_json::{Map, Value};

use super::db::{Db, Table, keys};
use super::networks::owner_project;
use super::ports::sg_port_prefix;
use super::resource::{
    self, Resource, check_quota, clean_tags, encode, key, standard_fields, view_of,
};
use super::{ApiError, ApiResult, Ctx, Shared, new_id, now};

const DEFAULT_NAME: &str = "default";

fn rule(
    project: &str,
    sg: &str,
    direction: &str,
    ethertype: &str,
    remote_group: Option<&str>,
    ts: &str,
) -> SecurityGroupRule {
    SecurityGroupRule {
        id: new_id(),
        project_id: project.to_string(),
        security_group_id: sg.to_string(),
        direction: direction.into(),
        ethertype: ethertype.into(),
        protocol: None,
        port_range_min: None,
        port_range_max: None,
        remote_ip_prefix: None,
        remote_group_id: remote_group.map(str::to_string),
        description: String::new(),
        created_at: ts.to_string(),
        updated_at: ts.to_string(),
        revision_number: 0,
    }
}

fn group(
    project: &str,
    name: &str,
    description: &str,
    stateful: bool,
    tags: Vec<String>,
    ts: &str,
) -> SecurityGroup {
    SecurityGroup {
        id: new_id(),
        name: name.to_string(),
        project_id: project.to_string(),
        stateful,
        description: description.to_string(),
        tags,
        created_at: ts.to_string(),
        updated_at: ts.to_string(),
        revision_number: 1,
    }
}

/// Adds a group and its rules to a transaction: egress anywhere for both families,
/// and for the default group ingress from members of the group itself.
fn add_group(txn: Txn, sg: &SecurityGroup, default: bool, ts: &str) -> ApiResult<Txn> {
    let mut txn = txn.put(key::<SecurityGroup>(&sg.id), encode(sg)?);
    for eth in ["IPv4", "IPv6"] {
        let r = rule(&sg.project_id, &sg.id, "egress", eth, None, ts);
        txn = txn.put(key::<SecurityGroupRule>(&r.id), encode(&r)?);
        if default {
            let r = rule(&sg.project_id, &sg.id, "ingress", eth, Some(&sg.id), ts);
            txn = txn.put(key::<SecurityGroupRule>(&r.id), encode(&r)?);
        }
    }
    Ok(txn)
}

/// The rules a new group starts with: egress anywhere for both families, and for a
/// default group ingress from its own members too (neutron's rule templates).
fn template_rules(default: bool) -> usize {
    if default { 4 } else { 2 }
}

/// Rules of `project`, the usage the rule quota counts.
fn project_rules(db: &Db, project: &str) -> usize {
    db.security_group_rules
        .values()
        .filter(|r| r.value.project_id == project)
        .count()
}

/// A new group's rules count against the rule quota (neutron checks the template's
/// rules before it creates any group, the default one included).
fn check_rule_quota_for_group(db: &Db, project: &str, default: bool) -> ApiResult<()> {
    check_quota(
        db,
        project,
        "security_group_rule",
        db.quota(project).security_group_rule,
        project_rules(db, project),
        template_rules(default),
    )
}

/// The project's default group, created exactly once even when many requests race.
pub async fn ensure_default_sg(net: &Shared, project: &str) -> ApiResult<String> {
    {
        let db = net.db();
        if let Some(id) = db.default_sg.get(project) {
            return Ok(id.clone());
        }
        check_rule_quota_for_group(&db, project, true)?;
    }
    let ts = now();
    let sg = group(
        project,
        DEFAULT_NAME,
        "Default security group",
        true,
        Vec::new(),
        &ts,
    );
    let marker = keys::default_sg(project);
    let txn = add_group(
        Txn::new().when(Compare::Absent(marker.clone())),
        &sg,
        true,
        &ts,
    )?
    .put(marker, sg.id.clone());
    net.commit(txn).await?;
    net.db()
        .default_sg
        .get(project)
        .cloned()
        .ok_or_else(|| ApiError(NeutronError::internal("default security group vanished")))
}

impl Resource for SecurityGroup {
    const SINGULAR: &'static str = "security_group";
    const PLURAL: &'static str = "security_groups";
    const PATH: &'static str = "security-groups";
    const DISPLAY: &'static str = "Security group";

    const NOT_FOUND: &'static str = "SecurityGroupNotFound";

    standard_fields!(security_groups);

    fn extras(&self, db: &Db) -> Vec<(&'static str, Value)> {
        let rules: Vec<Value> = db
            .rules_by_group
            .get(&self.id)
            .into_iter()
            .flatten()
            .filter_map(|r| db.security_group_rules.get(r))
            .map(|r| Value::Object(r.value.view(db)))
            .collect();
        vec![
            ("tenant_id", Value::String(self.project_id.clone())),
            ("shared", Value::Bool(false)),
            ("security_group_rules", Value::Array(rules)),
        ]
    }

    /// Neutron creates the caller's default group when its groups are listed.
    async fn before_list(net: &Shared, ctx: &Ctx) -> ApiResult<()> {
        ensure_default_sg(net, ctx.project()).await.map(|_| ())
    }

    async fn create(
        net: &Shared,
        ctx: &Ctx,
        items: Vec<Map<String, Value>>,
    ) -> ApiResult<Vec<Value>> {
        let mut out = Vec::new();
        for item in items {
            let mut input = Input::new(item);
            let project = owner_project(ctx, &mut input)?;
            let name = input.string("name", 255)?.unwrap_or_default();
            let description = input.string("description", 255)?.unwrap_or_default();
            let stateful = input.boolean("stateful")?.unwrap_or(true);
            let tags = clean_tags(input.string_list("tags")?.unwrap_or_default())?;
            input.finish()?;
            if name.eq_ignore_ascii_case(DEFAULT_NAME) {
                return Err(ApiError(NeutronError::conflict(
                    "SecurityGroupDefaultAlreadyExists",
                    "Default security group already exists.",
                )));
            }
            // Neutron's order: the group quota (before the default group exists, which
            // it does not count), then the default group, then the new rules' quota.
            {
                let db = net.db();
                let used = db
                    .security_groups
                    .values()
                    .filter(|g| g.value.project_id == project)
                    .count();
                check_quota(
                    &db,
                    &project,
                    "security_group",
                    db.quota(&project).security_group,
                    used,
                    1,
                )?;
            }
            ensure_default_sg(net, &project).await?;
            let ts = now();
            let sg = group(&project, &name, &description, stateful, tags, &ts);
            let txn = {
                let db = net.db();
                check_rule_quota_for_group(&db, &project, false)?;
                add_group(Txn::new(), &sg, false, &ts)?
            };
            net.commit(txn).await?;
            out.push(view_of::<SecurityGroup>(net, &sg.id));
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
        input.reject(&["tags", "security_group_rules"], "update")?;
        let name = input.string("name", 255)?;
        let description = input.string("description", 255)?;
        let stateful = input.boolean("stateful")?;
        input.finish()?;
        resource::update_with::<SecurityGroup, _>(net, ctx, id, if_match, |db, g| {
            let mut compares = Vec::new();
            // Ports enforce their groups' statefulness (conntrack or not): it cannot
            // change under them.
            if let Some(s) = stateful
                && s != g.stateful
            {
                if db.ports_by_group.get(&g.id).is_some_and(|p| !p.is_empty()) {
                    return Err(ApiError(NeutronError::conflict(
                        "SecurityGroupInUse",
                        format!("Security Group {} in use.", g.id),
                    )));
                }
                compares.push(Compare::PrefixEmpty(sg_port_prefix(&g.id)));
                g.stateful = s;
            }
            let is_default = db.default_sg.get(&g.project_id) == Some(&g.id);
            if let Some(n) = &name {
                if is_default {
                    return Err(ApiError(NeutronError::conflict(
                        "SecurityGroupCannotUpdateDefault",
                        "Updating default security group not allowed.",
                    )));
                }
                if n.eq_ignore_ascii_case(DEFAULT_NAME) {
                    return Err(ApiError(NeutronError::conflict(
                        "SecurityGroupDefaultAlreadyExists",
                        "Default security group already exists.",
                    )));
                }
                g.name = n.clone();
            }
            if let Some(d) = &description {
                g.description = d.clone();
            }
            Ok((compares, vec![]))
        })
        .await
    }

    async fn delete(net: &Shared, ctx: &Ctx, id: &str) -> ApiResult<()> {
        resource::delete_with::<SecurityGroup, _>(net, ctx, id, |db, g| {
            let is_default = db.default_sg.get(&g.project_id) == Some(&g.id);
            if is_default && !ctx.is_admin() {
                return Err(ApiError(NeutronError::conflict(
                    "SecurityGroupCannotRemoveDefault",
                    "Insufficient rights for removing default security group.",
                )));
            }
            if db
                .ports
                .values()
                .any(|p| p.value.security_groups.contains(&g.id))
            {
                return Err(ApiError(NeutronError::conflict(
                    "SecurityGroupInUse",
                    format!("Security Group {} in use.", g.id),
                )));
            }
            // Its own rules, and rules of other groups that name it as remote group.
            let mut ops: Vec<Op> = db
                .security_group_rules
                .values()
                .filter(|r| {
                    r.value.security_group_id == g.id
                        || r.value.remote_group_id.as_deref() == Some(&g.id)
                })
                .map(|r| Op::Delete(key::<SecurityGroupRule>(&r.value.id)))
                .collect();
            if is_default {
                ops.push(Op::Delete(keys::default_sg(&g.project_id)));
            }
            Ok((vec![Compare::PrefixEmpty(sg_port_prefix(&g.id))], ops))
        })
        .await
    }
}

/// Neutron's protocol names (neutron-lib's `IP_PROTOCOL_MAP`), in the order its
/// messages list them.
const PROTOCOLS: &[(&str, u8)] = &[
    ("ah", 51),
    ("dccp", 33),
    ("egp", 8),
    ("esp", 50),
    ("gre", 47),
    ("hopopt", 0),
    ("icmp", 1),
    ("igmp", 2),
    ("ip", 0),
    ("ipip", 4),
    ("ipv6-encap", 41),
    ("ipv6-frag", 44),
    ("ipv6-icmp", 58),
    ("icmpv6", 58),
    ("ipv6-nonxt", 59),
    ("ipv6-opts", 60),
    ("ipv6-route", 43),
    ("ospf", 89),
    ("pgm", 113),
    ("rsvp", 46),
    ("sctp", 132),
    ("tcp", 6),
    ("udp", 17),
    ("udplite", 136),
    ("vrrp", 112),
];

/// Protocols whose rules may give port ranges (neutron's `SG_PORT_PROTO_NUMS`).
const PORT_PROTOCOLS: &[u8] = &[33, 132, 6, 17, 136];
/// Protocols (by number) that exist only for IPv6.
const IPV6_ONLY: &[u8] = &[41, 43, 44, 58, 59, 60];

fn protocol_number(p: &str) -> Option<u8> {
    PROTOCOLS
        .iter()
        .find(|(n, _)| *n == p)
        .map(|(_, v)| *v)
        .or_else(|| p.parse().ok())
}

fn invalid_protocol(shown: &str) -> ApiError {
    let names: Vec<String> = PROTOCOLS.iter().map(|(n, _)| format!("'{n}'")).collect();
    ApiError(NeutronError::new(
        400,
        "SecurityGroupRuleInvalidProtocol",
        format!(
            "Security group rule protocol {shown} not supported. Only protocol values (None, 'any', {}) and integer representations [0 to 255] are supported.",
            names.join(", ")
        ),
    ))
}

/// neutron's `convert_protocol`: a name (any case) or a number 0 to 255; `any` and
/// null mean every protocol.
fn parse_protocol(v: Option<Value>) -> ApiResult<Option<String>> {
    let s = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(n) if n <= 255 => return Ok(Some(n.to_string())),
            _ => return Err(invalid_protocol(&n.to_string())),
        },
        Some(Value::String(s)) => s,
        Some(other) => return Err(invalid_protocol(&show(&other))),
    };
    if s == "any" {
        return Ok(None);
    }
    if let Ok(n) = s.trim().parse::<i64>() {
        return match u8::try_from(n) {
            Ok(n) => Ok(Some(n.to_string())),
            Err(_) => Err(invalid_protocol(&s)),
        };
    }
    let lower = s.to_lowercase();
    if lower == "any" {
        return Ok(None);
    }
    if PROTOCOLS.iter().any(|(n, _)| *n == lower) {
        Ok(Some(lower))
    } else {
        Err(invalid_protocol(&s))
    }
}

/// neutron's `convert_validate_port_value`: absent, null or a port number 0 to 65535.
fn parse_port(input: &mut Input, key: &str) -> ApiResult<Option<u32>> {
    let bad = |v: &Value| {
        ApiError(NeutronError::new(
            400,
            "SecurityGroupInvalidPortValue",
            format!("Invalid value for port {}", show(v)),
        ))
    };
    match input.take(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let n = match &v {
                Value::Number(n) => n.as_i64(),
                Value::String(s) => s.trim().parse::<i64>().ok(),
                _ => None,
            };
            match n {
                Some(n) if (0..=65535).contains(&n) => Ok(Some(n as u32)),
                _ => Err(bad(&v)),
            }
        }
    }
}

fn invalid_input(kind: &'static str, message: String) -> ApiError {
    ApiError(NeutronError::new(400, kind, message))
}

/// neutron's `_validate_port_range`, on a rule already made canonical.
fn check_port_range(protocol: Option<&str>, pmin: Option<u32>, pmax: Option<u32>) -> ApiResult<()> {
    if pmin.is_none() && pmax.is_none() {
        return Ok(());
    }
    let Some(proto) = protocol.and_then(protocol_number) else {
        return Err(invalid_input(
            "SecurityGroupProtocolRequiredWithPorts",
            "Must also specify protocol if port range is given.".into(),
        ));
    };
    if PORT_PROTOCOLS.contains(&proto) {
        if pmin == Some(0) || pmax == Some(0) {
            return Err(invalid_input(
                "SecurityGroupInvalidPortValue",
                "Invalid value for port 0".into(),
            ));
        }
        match (pmin, pmax) {
            (Some(lo), Some(hi)) if lo <= hi => Ok(()),
            _ => Err(invalid_input(
                "SecurityGroupInvalidPortRange",
                "For TCP/UDP protocols, port_range_min must be <= port_range_max".into(),
            )),
        }
    } else if proto == 1 || proto == 58 {
        for (attr, field, v) in [
            ("port_range_min", "type", pmin),
            ("port_range_max", "code", pmax),
        ] {
            if let Some(v) = v.filter(|v| *v > 255) {
                return Err(invalid_input(
                    "SecurityGroupInvalidIcmpValue",
                    format!("Invalid value for ICMP {field} ({attr}) {v}. It must be 0 to 255."),
                ));
            }
        }
        match (pmin, pmax) {
            (None, Some(code)) => Err(invalid_input(
                "SecurityGroupMissingIcmpType",
                format!(
                    "ICMP code (port-range-max) {code} is provided but ICMP type (port-range-min) is missing."
                ),
            )),
            _ => Ok(()),
        }
    } else {
        Err(invalid_input(
            "SecurityGroupInvalidProtocolForPort",
            format!(
                "Ports cannot be specified for protocol {proto}. Ports are only supported for DCCP, SCTP, TCP, UDP, UDPLITE."
            ),
        ))
    }
}

impl Resource for SecurityGroupRule {
    const SINGULAR: &'static str = "security_group_rule";
    const PLURAL: &'static str = "security_group_rules";
    const PATH: &'static str = "security-group-rules";
    const DISPLAY: &'static str = "Security group rule";
    const NOT_FOUND: &'static str = "SecurityGroupRuleNotFound";

    fn table(db: &Db) -> &Table<Self> {
        &db.security_group_rules
    }
    fn project_id(&self) -> &str {
        &self.project_id
    }
    fn tags_mut(&mut self) -> Option<&mut Vec<String>> {
        None
    }
    fn revision_number(&self) -> u64 {
        self.revision_number
    }
    fn touch(&mut self, now: &str) {
        self.revision_number += 1;
        self.updated_at = now.to_string();
    }
    fn related(&self, db: &Db) -> Vec<(&'static str, Value)> {
        group_facts(db, &self.security_group_id)
    }
    fn create_target(
        db: &Db,
        ctx: &Ctx,
        item: &Map<String, Value>,
    ) -> ApiResult<Map<String, Value>> {
        let mut t = resource::item_target(ctx, item);
        if let Some(Value::String(sg)) = item.get("security_group_id") {
            // A group the caller cannot see does not exist for it.
            resource::find::<SecurityGroup>(db, ctx, sg)?;
            for (k, v) in group_facts(db, sg) {
                t.insert(k.to_string(), v);
            }
        }
        Ok(t)
    }
    fn extras(&self, db: &Db) -> Vec<(&'static str, Value)> {
        let normalized = self
            .remote_ip_prefix
            .as_deref()
            .and_then(parse_ip_or_cidr)
            .map(|n| n.trunc().to_string());
        let in_default = db
            .security_groups
            .get(&self.security_group_id)
            .is_some_and(|g| {
                db.default_sg.get(&g.value.project_id) == Some(&self.security_group_id)
            });
        vec![
            ("tenant_id", Value::String(self.project_id.clone())),
            ("remote_address_group_id", Value::Null),
            (
                "normalized_cidr",
                normalized.map(Value::String).unwrap_or(Value::Null),
            ),
            ("belongs_to_default_sg", Value::Bool(in_default)),
        ]
    }
    fn candidates(db: &Db, q: &super::query::ListQuery) -> Option<(Vec<String>, &'static str)> {
        let groups = q.filter("security_group_id")?;
        Some((
            groups
                .iter()
                .flat_map(|g| db.rules_by_group.get(g).into_iter().flatten().cloned())
                .collect(),
            "security_group_id",
        ))
    }

    async fn create(
        net: &Shared,
        ctx: &Ctx,
        items: Vec<Map<String, Value>>,
    ) -> ApiResult<Vec<Value>> {
        let mut out = Vec::new();
        for item in items {
            out.push(create_rule(net, ctx, item).await?);
        }
        Ok(out)
    }

    async fn update(
        _net: &Shared,
        _ctx: &Ctx,
        _id: &str,
        _input: Input,
        _if_match: Option<u64>,
    ) -> ApiResult<Value> {
        Err(ApiError(NeutronError::bad_request(
            "Security group rules cannot be updated; delete and create instead.",
        )))
    }

    async fn delete(net: &Shared, ctx: &Ctx, id: &str) -> ApiResult<()> {
        resource::delete_with::<SecurityGroupRule, _>(net, ctx, id, |db, r| {
            // Bump the group's revision, as Neutron does when its rules change.
            match db.security_groups.get(&r.security_group_id) {
                Some(g) => {
                    let mut sg = (*g.value).clone();
                    sg.touch(&now());
                    Ok((
                        vec![Compare::ModRevision(key::<SecurityGroup>(&sg.id), g.rev)],
                        vec![Op::Put(key::<SecurityGroup>(&sg.id), encode(&sg)?)],
                    ))
                }
                None => Ok((vec![], vec![])),
            }
        })
        .await
    }
}

async fn create_rule(net: &Shared, ctx: &Ctx, item: Map<String, Value>) -> ApiResult<Value> {
    let mut input = Input::new(item);
    let project = owner_project(ctx, &mut input)?;
    let sg_id = input.uuid("security_group_id")?.ok_or_else(|| {
        ApiError(NeutronError::bad_request(
            "Failed to parse request. Required attribute 'security_group_id' not specified",
        ))
    })?;
    let direction = input.string("direction", 16)?.ok_or_else(|| {
        ApiError(NeutronError::bad_request(
            "Failed to parse request. Required attribute 'direction' not specified",
        ))
    })?;
    if direction != "ingress" && direction != "egress" {
        return Err(ApiError(NeutronError::bad_request(format!(
            "Invalid input for direction. Reason: '{direction}' is not in ['ingress', 'egress']."
        ))));
    }
    let ethertype = match input.take("ethertype") {
        None | Some(Value::Null) => "IPv4".to_string(),
        Some(Value::String(e)) if e.eq_ignore_ascii_case("ipv4") => "IPv4".to_string(),
        Some(Value::String(e)) if e.eq_ignore_ascii_case("ipv6") => "IPv6".to_string(),
        Some(other) => {
            return Err(invalid_input(
                "SecurityGroupRuleInvalidEtherType",
                format!(
                    "Security group rule for ethertype '{}' not supported. Allowed values are ['IPv4', 'IPv6'].",
                    show(&other)
                ),
            ));
        }
    };
    let mut protocol = parse_protocol(input.take("protocol"))?;
    let mut pmin = parse_port(&mut input, "port_range_min")?;
    let mut pmax = parse_port(&mut input, "port_range_max")?;
    let remote_ip = input.nullable_string("remote_ip_prefix", 64)?.flatten();
    let remote_group = input.nullable_uuid("remote_group_id")?.flatten();
    let description = input.string("description", 255)?.unwrap_or_default();
    input.ignore(&["remote_address_group_id"]);
    input.finish()?;

    // neutron's checks, in its order. Legacy names of ICMPv6 become `ipv6-icmp`.
    if ethertype == "IPv6" {
        match protocol.as_deref() {
            Some("icmp" | "icmpv6") => protocol = Some("ipv6-icmp".into()),
            Some("1") => protocol = Some("58".into()),
            _ => {}
        }
    }
    // The whole port range is no range.
    if (pmin, pmax) == (Some(1), Some(65535)) {
        (pmin, pmax) = (None, None);
    }
    check_port_range(protocol.as_deref(), pmin, pmax)?;
    let remote_ip = match remote_ip {
        Some(s) if !s.is_empty() => {
            let n = parse_ip_or_cidr(&s).ok_or_else(|| {
                ApiError(NeutronError::bad_request(format!(
                    "Invalid input for remote_ip_prefix. Reason: '{s}' is not a valid IP subnet."
                )))
            })?;
            if n.addr().is_ipv4() != (ethertype == "IPv4") {
                return Err(invalid_input(
                    "SecurityGroupRuleParameterConflict",
                    format!("Conflicting value ethertype {ethertype} for CIDR {s}"),
                ));
            }
            Some(n.trunc().to_string())
        }
        _ => None,
    };
    if ethertype == "IPv4"
        && let Some(p) = protocol.as_deref()
        && protocol_number(p).is_some_and(|n| IPV6_ONLY.contains(&n))
    {
        return Err(invalid_input(
            "SecurityGroupEthertypeConflictWithProtocol",
            format!("Invalid ethertype IPv4 for protocol {p}."),
        ));
    }
    if remote_ip.is_some() && remote_group.is_some() {
        return Err(invalid_input(
            "SecurityGroupMultipleRemoteEntites",
            "Only one of remote_ip_prefix or remote_group_id or remote_address_group_id may be provided.".into(),
        ));
    }

    for _ in 0..16 {
        let ts = now();
        let txn = {
            let db = net.db();
            let g = resource::find::<SecurityGroup>(&db, ctx, &sg_id)?;
            if let Some(rg) = &remote_group {
                resource::find::<SecurityGroup>(&db, ctx, rg)?;
            }
            let r = SecurityGroupRule {
                id: new_id(),
                project_id: project.clone(),
                security_group_id: sg_id.clone(),
                direction: direction.clone(),
                ethertype: ethertype.clone(),
                protocol: protocol.clone(),
                port_range_min: pmin,
                port_range_max: pmax,
                remote_ip_prefix: remote_ip.clone(),
                remote_group_id: remote_group.clone(),
                description: description.clone(),
                created_at: ts.clone(),
                updated_at: ts.clone(),
                revision_number: 0,
            };
            // neutron's duplicate key: protocol names and numbers are one protocol,
            // and the any-address prefix is no prefix.
            let norm = |r: &SecurityGroupRule| {
                let mut id = r.identity();
                id.2 =
                    id.2.as_deref()
                        .and_then(protocol_number)
                        .map(|n| n.to_string());
                if matches!(id.5.as_deref(), Some("0.0.0.0/0" | "::/0")) {
                    id.5 = None;
                }
                id
            };
            let want = norm(&r);
            if let Some(dup) = db
                .rules_by_group
                .get(&sg_id)
                .into_iter()
                .flatten()
                .filter_map(|id| db.security_group_rules.get(id))
                .find(|e| norm(&e.value) == want)
            {
                return Err(ApiError(NeutronError::conflict(
                    "SecurityGroupRuleExists",
                    format!(
                        "Security group rule already exists. Rule id is {}.",
                        dup.value.id
                    ),
                )));
            }
            let used = db
                .security_group_rules
                .values()
                .filter(|x| x.value.project_id == project)
                .count();
            check_quota(
                &db,
                &project,
                "security_group_rule",
                db.quota(&project).security_group_rule,
                used,
                1,
            )?;
            // Rules of one group are serialized through the group's revision, which
            // makes the duplicate check exact.
            let mut sg = (*g.value).clone();
            sg.touch(&ts);
            (
                Txn::new()
                    .when(Compare::ModRevision(key::<SecurityGroup>(&sg_id), g.rev))
                    .put(key::<SecurityGroup>(&sg_id), encode(&sg)?)
                    .put(key::<SecurityGroupRule>(&r.id), encode(&r)?),
                r.id,
            )
        };
        let (txn, rid) = txn;
        if net.commit(txn).await? {
            return Ok(view_of::<SecurityGroupRule>(net, &rid));
        }
    }
    Err(ApiError(NeutronError::conflict(
        "Conflict",
        "The security group is changing too fast; try again",
    )))
}

/// What policy checks of a rule ask about its group.
fn group_facts(db: &Db, id: &str) -> Vec<(&'static str, Value)> {
    match db.security_groups.get(id) {
        Some(g) => vec![
            (
                "security_group:project_id",
                Value::String(g.value.project_id.clone()),
            ),
            (
                "security_group:tenant_id",
                Value::String(g.value.project_id.clone()),
            ),
        ],
        None => Vec::new(),
    }
}
