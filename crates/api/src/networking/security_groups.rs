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

/// The project's default group, created exactly once even when many requests race.
pub async fn ensure_default_sg(net: &Shared, project: &str) -> ApiResult<String> {
    if let Some(id) = net.db().default_sg.get(project) {
        return Ok(id.clone());
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
            if name == DEFAULT_NAME {
                return Err(ApiError(NeutronError::conflict(
                    "SecurityGroupDefaultAlreadyExists",
                    "Default security group already exists.",
                )));
            }
            ensure_default_sg(net, &project).await?;
            let ts = now();
            let sg = group(&project, &name, &description, stateful, tags, &ts);
            let txn = {
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
            let is_default = db.default_sg.get(&g.project_id) == Some(&g.id);
            if let Some(n) = &name {
                if is_default && n != DEFAULT_NAME {
                    return Err(ApiError(NeutronError::conflict(
                        "SecurityGroupCannotUpdateDefault",
                        "Updating default security group not allowed.",
                    )));
                }
                if !is_default && n == DEFAULT_NAME {
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
            if let Some(s) = stateful {
                g.stateful = s;
            }
            Ok((vec![], vec![]))
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

const PROTOCOLS: &[(&str, u8)] = &[
    ("icmp", 1),
    ("igmp", 2),
    ("tcp", 6),
    ("egp", 8),
    ("udp", 17),
    ("ipv6-encap", 41),
    ("ipv6-route", 43),
    ("ipv6-frag", 44),
    ("gre", 47),
    ("esp", 50),
    ("ah", 51),
    ("icmpv6", 58),
    ("ipv6-icmp", 58),
    ("ipv6-nonxt", 59),
    ("ipv6-opts", 60),
    ("ospf", 89),
    ("pgm", 113),
    ("vrrp", 112),
    ("sctp", 132),
    ("udplite", 136),
];

fn protocol_number(p: &str) -> Option<u8> {
    PROTOCOLS
        .iter()
        .find(|(n, _)| *n == p)
        .map(|(_, v)| *v)
        .or_else(|| p.parse().ok())
}

fn takes_ports(p: Option<&str>) -> bool {
    matches!(p.and_then(protocol_number), Some(6 | 17 | 132 | 136))
}

fn is_icmp(p: Option<&str>) -> bool {
    matches!(p.and_then(protocol_number), Some(1 | 58))
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
    let ethertype = input
        .string("ethertype", 8)?
        .unwrap_or_else(|| "IPv4".into());
    let ethertype = match ethertype.to_ascii_lowercase().as_str() {
        "ipv4" => "IPv4".to_string(),
        "ipv6" => "IPv6".to_string(),
        _ => {
            return Err(ApiError(NeutronError::bad_request(format!(
                "Invalid input for ethertype. Reason: '{ethertype}' is not in ['IPv4', 'IPv6']."
            ))));
        }
    };
    let protocol = match input.take("protocol") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::String(s)) => Some(s.to_ascii_lowercase()),
        Some(v) => {
            return Err(ApiError(NeutronError::bad_request(format!(
                "Invalid input for protocol. Reason: '{}' is not a valid protocol.",
                show(&v)
            ))));
        }
    };
    let protocol = match protocol.as_deref() {
        None | Some("any") | Some("") => None,
        Some(p) => match protocol_number(p) {
            Some(_) => Some(p.to_string()),
            None => {
                return Err(ApiError(NeutronError::new(
                    400,
                    "SecurityGroupRuleInvalidProtocol",
                    format!(
                        "Security group rule protocol {p} not supported. Only protocol values {:?} and integer representations [0 to 255] are supported.",
                        PROTOCOLS.iter().map(|(n, _)| *n).collect::<Vec<_>>()
                    ),
                )));
            }
        },
    };
    let pmin = input
        .nullable_int("port_range_min", 0, 65535)?
        .flatten()
        .map(|v| v as u32);
    let pmax = input
        .nullable_int("port_range_max", 0, 65535)?
        .flatten()
        .map(|v| v as u32);
    let remote_ip = input.nullable_string("remote_ip_prefix", 64)?.flatten();
    let remote_group = input.nullable_uuid("remote_group_id")?.flatten();
    let description = input.string("description", 255)?.unwrap_or_default();
    input.ignore(&["remote_address_group_id"]);
    input.finish()?;

    if remote_ip.is_some() && remote_group.is_some() {
        return Err(ApiError(NeutronError::bad_request(
            "Only remote_ip_prefix or remote_group_id may be provided.",
        )));
    }
    let remote_ip = match remote_ip {
        Some(s) => {
            let n = parse_ip_or_cidr(&s).ok_or_else(|| {
                ApiError(NeutronError::bad_request(format!(
                    "Invalid input for remote_ip_prefix. Reason: '{s}' is not a valid IP subnet."
                )))
            })?;
            if n.addr().is_ipv4() != (ethertype == "IPv4") {
                return Err(ApiError(NeutronError::bad_request(format!(
                    "Conflicting value ethertype {ethertype} for CIDR {s}"
                ))));
            }
            Some(n.trunc().to_string())
        }
        None => None,
    };
    if (pmin.is_some() || pmax.is_some())
        && !takes_ports(protocol.as_deref())
        && !is_icmp(protocol.as_deref())
    {
        return Err(ApiError(NeutronError::bad_request(
            "Security group rule for protocol requires port_range_min and port_range_max only for TCP, UDP, SCTP, UDP-Lite and ICMP.",
        )));
    }
    if takes_ports(protocol.as_deref())
        && let (Some(lo), Some(hi)) = (pmin, pmax)
        && (lo > hi || lo == 0)
    {
        return Err(ApiError(NeutronError::bad_request(
            "For TCP/UDP protocols, port_range_min must be <= port_range_max",
        )));
    }
    if is_icmp(protocol.as_deref())
        && (pmin.is_some_and(|v| v > 255)
            || pmax.is_some_and(|v| v > 255)
            || (pmin.is_none() && pmax.is_some()))
    {
        return Err(ApiError(NeutronError::bad_request(
            "Invalid value for ICMP type/code: port_range_min is the type and port_range_max the code, each 0-255",
        )));
    }
    let (pmin, pmax) = if takes_ports(protocol.as_deref()) {
        match (pmin, pmax) {
            (Some(a), None) => (Some(a), Some(a)),
            (None, Some(b)) => (Some(b), Some(b)),
            other => other,
        }
    } else {
        (pmin, pmax)
    };

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
            let norm = |r: &SecurityGroupRule| {
                let mut id = r.identity();
                id.2 =
                    id.2.as_deref()
                        .and_then(protocol_number)
                        .map(|n| n.to_string());
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
