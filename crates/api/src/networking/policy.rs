//! Neutron's default policy (the secure-RBAC defaults of neutron 29: admin, project
//! manager/member/reader, network owner, service role), as ONE table of oslo.policy
//! check strings, plus kuryr's host-scoped agent rules. The generic resource layer
//! evaluates it for every action on every resource, for every attribute a request
//! sets, and for every attribute a response shows. No handler checks roles itself.
//!
//! The check language is oslo.policy's: `rule:NAME`, `role:NAME`,
//! `field:RESOURCE:ATTR=VALUE` (`=~^prefix` for a prefix match), `KEY:%(target)s`
//! (a credential equal to a target attribute), `@`, `!`, `not`, `and`, `or`,
//! parentheses. kuryr adds `kuryr_agent:%(attr)s`: the caller holds the role
//! `kuryr_agent:<value of attr>` (the agent of that host), and `kuryr_agent:*` (the
//! agent of any host).

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::{Map, Value};

use super::Ctx;

/// The role prefix that makes a caller the agent of one host.
pub use crate::identity::AGENT_ROLE_PREFIX;

const ADMIN_OR_MEMBER: &str = "(rule:admin_only) or (role:member and project_id:%(project_id)s)";

/// kuryr's defaults. Names and check strings follow neutron's `policy.yaml` defaults,
/// restricted to the resources kuryr serves; `kuryr_*` rules are kuryr's own.
pub const DEFAULTS: &[(&str, &str)] = &[
    // Building blocks.
    ("context_is_admin", "role:admin"),
    ("admin_only", "rule:context_is_admin"),
    ("service_api", "role:service"),
    ("context_is_advsvc", "role:advsvc"),
    ("regular_user", "@"),
    ("owner", "project_id:%(project_id)s"),
    ("admin_or_owner", "rule:context_is_admin or rule:owner"),
    ("default", "rule:admin_or_owner"),
    ("network_owner", "project_id:%(network:project_id)s"),
    ("sg_owner", "project_id:%(security_group:project_id)s"),
    ("shared", "field:networks:shared=True"),
    ("external", "field:networks:router:external=True"),
    ("external_network", "field:subnets:router:external=True"),
    ("shared_subnetpools", "field:subnetpools:shared=True"),
    ("shared_security_group", "field:security_groups:shared=True"),
    ("network_device", "field:port:device_owner=~^network:"),
    ("compute_device", "field:port:device_owner=~^compute:"),
    ("baremetal_device", "field:port:device_owner=~^baremetal:"),
    ("manila_device", "field:port:device_owner=~^manila:"),
    // kuryr: an agent acts on the ports of its own host, and claims unbound ones.
    (
        "kuryr_port_agent",
        "kuryr_agent:%(kuryr:prior_host)s or (field:ports:kuryr:prior_host= and kuryr_agent:%(binding:host_id)s)",
    ),
    (
        "kuryr_binding_agent",
        "field:ports:kuryr:binding_only=True and rule:kuryr_port_agent",
    ),
    // ... and moves a port only between its own host and none.
    (
        "kuryr_agent_host_change",
        "field:ports:kuryr:binding_only=True and (kuryr_agent:%(binding:host_id)s and (kuryr_agent:%(kuryr:prior_host)s or field:ports:kuryr:prior_host=) or field:ports:binding:host_id= and kuryr_agent:%(kuryr:prior_host)s)",
    ),
    // Networks.
    ("create_network", ADMIN_OR_MEMBER),
    ("create_network:shared", "rule:admin_only"),
    ("create_network:router:external", "rule:admin_only"),
    ("create_network:is_default", "rule:admin_only"),
    ("create_network:port_security_enabled", ADMIN_OR_MEMBER),
    ("create_network:segments", "rule:admin_only"),
    ("create_network:provider:network_type", "rule:admin_only"),
    (
        "create_network:provider:physical_network",
        "rule:admin_only",
    ),
    ("create_network:provider:segmentation_id", "rule:admin_only"),
    ("create_network:tags", ADMIN_OR_MEMBER),
    (
        "get_network",
        "(rule:admin_only) or (role:reader and project_id:%(project_id)s) or rule:service_api or rule:shared or rule:external or rule:context_is_advsvc",
    ),
    ("get_network:segments", "rule:admin_only"),
    ("get_network:provider:network_type", "rule:admin_only"),
    ("get_network:provider:physical_network", "rule:admin_only"),
    ("get_network:provider:segmentation_id", "rule:admin_only"),
    (
        "get_network:tags",
        "(rule:admin_only) or (role:reader and project_id:%(project_id)s) or rule:shared or rule:external or rule:context_is_advsvc",
    ),
    ("update_network", ADMIN_OR_MEMBER),
    ("update_network:segments", "rule:admin_only"),
    ("update_network:shared", "rule:admin_only"),
    ("update_network:provider:network_type", "rule:admin_only"),
    (
        "update_network:provider:physical_network",
        "rule:admin_only",
    ),
    ("update_network:provider:segmentation_id", "rule:admin_only"),
    ("update_network:router:external", "rule:admin_only"),
    ("update_network:is_default", "rule:admin_only"),
    ("update_network:port_security_enabled", ADMIN_OR_MEMBER),
    ("update_network:tags", ADMIN_OR_MEMBER),
    ("delete_network", ADMIN_OR_MEMBER),
    ("delete_network:tags", ADMIN_OR_MEMBER),
    // Subnets.
    (
        "create_subnet",
        "(rule:admin_only) or (role:member and rule:network_owner)",
    ),
    ("create_subnet:segment_id", "rule:admin_only"),
    ("create_subnet:service_types", "rule:admin_only"),
    (
        "create_subnet:tags",
        "role:member and project_id:%(project_id)s or (rule:admin_only) or (role:member and rule:network_owner)",
    ),
    (
        "get_subnet",
        "role:reader and project_id:%(project_id)s or rule:shared or rule:external_network or (rule:admin_only) or (role:reader and rule:network_owner) or rule:service_api",
    ),
    ("get_subnet:segment_id", "rule:admin_only"),
    (
        "get_subnet:tags",
        "role:reader and project_id:%(project_id)s or rule:shared or rule:external_network or (rule:admin_only) or (role:reader and rule:network_owner)",
    ),
    (
        "update_subnet",
        "role:member and project_id:%(project_id)s or (rule:admin_only) or (role:member and rule:network_owner)",
    ),
    ("update_subnet:segment_id", "rule:admin_only"),
    ("update_subnet:service_types", "rule:admin_only"),
    (
        "update_subnet:tags",
        "role:member and project_id:%(project_id)s or (rule:admin_only) or (role:member and rule:network_owner)",
    ),
    (
        "delete_subnet",
        "role:member and project_id:%(project_id)s or (rule:admin_only) or (role:member and rule:network_owner)",
    ),
    (
        "delete_subnet:tags",
        "role:member and project_id:%(project_id)s or (rule:admin_only) or (role:member and rule:network_owner)",
    ),
    // Subnet pools.
    ("create_subnetpool", ADMIN_OR_MEMBER),
    ("create_subnetpool:shared", "rule:admin_only"),
    ("create_subnetpool:is_default", "rule:admin_only"),
    ("create_subnetpool:tags", ADMIN_OR_MEMBER),
    (
        "get_subnetpool",
        "(rule:admin_only) or (role:reader and project_id:%(project_id)s) or rule:shared_subnetpools",
    ),
    (
        "get_subnetpool:tags",
        "(rule:admin_only) or (role:reader and project_id:%(project_id)s) or rule:shared_subnetpools",
    ),
    ("update_subnetpool", ADMIN_OR_MEMBER),
    ("update_subnetpool:is_default", "rule:admin_only"),
    ("update_subnetpool:tags", ADMIN_OR_MEMBER),
    ("delete_subnetpool", ADMIN_OR_MEMBER),
    ("delete_subnetpool:tags", ADMIN_OR_MEMBER),
    // Ports.
    (
        "create_port",
        "(rule:admin_only) or (rule:service_api) or role:member and rule:network_owner or rule:shared",
    ),
    (
        "create_port:device_id",
        "(rule:admin_only) or (role:member and project_id:%(project_id)s) or rule:service_api",
    ),
    (
        "create_port:device_owner",
        "not rule:network_device or (rule:admin_only) or (rule:service_api) or role:member and rule:network_owner",
    ),
    (
        "create_port:mac_address",
        "(rule:admin_only) or (rule:service_api) or role:member and rule:network_owner",
    ),
    (
        "create_port:fixed_ips",
        "(rule:admin_only) or (rule:service_api) or role:member and rule:network_owner or rule:shared",
    ),
    (
        "create_port:fixed_ips:ip_address",
        "(rule:admin_only) or (rule:service_api) or role:member and rule:network_owner",
    ),
    (
        "create_port:fixed_ips:subnet_id",
        "(rule:admin_only) or (rule:service_api) or role:member and rule:network_owner or rule:shared",
    ),
    (
        "create_port:port_security_enabled",
        "(rule:admin_only) or (rule:service_api) or role:member and rule:network_owner",
    ),
    (
        "create_port:binding:host_id",
        "(rule:admin_only) or (rule:service_api)",
    ),
    ("create_port:binding:profile", "rule:service_api"),
    (
        "create_port:binding:vnic_type",
        "(rule:admin_only) or (role:member and project_id:%(project_id)s) or rule:service_api",
    ),
    (
        "create_port:allowed_address_pairs",
        "(rule:admin_only) or (role:member and rule:network_owner) or rule:service_api",
    ),
    (
        "create_port:allowed_address_pairs:mac_address",
        "(rule:admin_only) or (role:member and rule:network_owner) or rule:service_api",
    ),
    (
        "create_port:allowed_address_pairs:ip_address",
        "(rule:admin_only) or (role:member and rule:network_owner) or rule:service_api",
    ),
    (
        "create_port:tags",
        "(rule:admin_only) or (role:member and project_id:%(project_id)s) or rule:context_is_advsvc",
    ),
    (
        "get_port",
        "(rule:admin_only) or (rule:service_api) or role:reader and rule:network_owner or role:reader and project_id:%(project_id)s or kuryr_agent:%(binding:host_id)s or (field:ports:binding:host_id= and kuryr_agent:*)",
    ),
    (
        "get_port:binding:vif_type",
        "(rule:admin_only) or (rule:service_api) or kuryr_agent:%(binding:host_id)s",
    ),
    (
        "get_port:binding:vif_details",
        "(rule:admin_only) or (rule:service_api) or kuryr_agent:%(binding:host_id)s",
    ),
    (
        "get_port:binding:host_id",
        "(rule:admin_only) or (rule:service_api) or kuryr_agent:%(binding:host_id)s or kuryr_agent:*",
    ),
    (
        "get_port:binding:profile",
        "(rule:admin_only) or (rule:service_api) or kuryr_agent:%(binding:host_id)s",
    ),
    (
        "get_port:tags",
        "rule:context_is_advsvc or (rule:admin_only) or (role:reader and rule:network_owner) or role:reader and project_id:%(project_id)s",
    ),
    (
        "update_port",
        "(rule:admin_only) or (rule:service_api) or role:member and project_id:%(project_id)s or rule:kuryr_binding_agent",
    ),
    (
        "update_port:device_id",
        "(rule:admin_only) or (role:member and project_id:%(project_id)s) or rule:service_api",
    ),
    (
        "update_port:device_owner",
        "not rule:network_device or (rule:admin_only) or (rule:service_api) or role:member and rule:network_owner",
    ),
    (
        "update_port:mac_address",
        "(rule:admin_only) or (rule:service_api) or role:manager and rule:network_owner",
    ),
    (
        "update_port:fixed_ips",
        "(rule:admin_only) or (rule:service_api) or role:member and rule:network_owner",
    ),
    (
        "update_port:fixed_ips:ip_address",
        "(rule:admin_only) or (rule:service_api) or role:member and rule:network_owner",
    ),
    (
        "update_port:fixed_ips:subnet_id",
        "(rule:admin_only) or (rule:service_api) or role:member and rule:network_owner or rule:shared",
    ),
    (
        "update_port:port_security_enabled",
        "(rule:admin_only) or (rule:service_api) or role:member and rule:network_owner",
    ),
    (
        "update_port:binding:host_id",
        "(rule:admin_only) or (rule:service_api) or rule:kuryr_agent_host_change",
    ),
    (
        "update_port:binding:profile",
        "rule:service_api or rule:kuryr_binding_agent",
    ),
    (
        "update_port:binding:vnic_type",
        "(rule:admin_only) or (rule:service_api) or role:member and project_id:%(project_id)s",
    ),
    (
        "update_port:allowed_address_pairs",
        "(rule:admin_only) or (role:member and rule:network_owner) or rule:service_api",
    ),
    (
        "update_port:allowed_address_pairs:mac_address",
        "(rule:admin_only) or (role:member and rule:network_owner) or rule:service_api",
    ),
    (
        "update_port:allowed_address_pairs:ip_address",
        "(rule:admin_only) or (role:member and rule:network_owner) or rule:service_api",
    ),
    (
        "update_port:tags",
        "(rule:admin_only) or (role:member and project_id:%(project_id)s) or rule:context_is_advsvc",
    ),
    // Read-only in Neutron (its agents report over RPC); kuryr's agents report here.
    (
        "update_port:status",
        "(rule:admin_only) or (rule:service_api) or rule:kuryr_binding_agent",
    ),
    (
        "update_port:binding:vif_type",
        "(rule:admin_only) or (rule:service_api) or rule:kuryr_binding_agent",
    ),
    (
        "update_port:binding:vif_details",
        "(rule:admin_only) or (rule:service_api) or rule:kuryr_binding_agent",
    ),
    (
        "delete_port",
        "(rule:admin_only) or (rule:service_api) or (service_roles:service and (role:member and rule:network_owner or role:member and project_id:%(project_id)s)) or (not rule:compute_device and not rule:baremetal_device and not rule:manila_device and (role:member and rule:network_owner or role:member and project_id:%(project_id)s))",
    ),
    (
        "delete_port:tags",
        "rule:context_is_advsvc or role:member and project_id:%(project_id)s or (rule:admin_only) or (role:member and rule:network_owner)",
    ),
    // Security groups and rules.
    ("create_security_group", ADMIN_OR_MEMBER),
    ("create_security_group:tags", ADMIN_OR_MEMBER),
    (
        "get_security_group",
        "(rule:admin_only) or (role:reader and project_id:%(project_id)s) or rule:shared_security_group",
    ),
    (
        "get_security_group:tags",
        "(rule:admin_only) or (role:reader and project_id:%(project_id)s) or rule:shared_security_group",
    ),
    ("update_security_group", ADMIN_OR_MEMBER),
    ("update_security_group:tags", ADMIN_OR_MEMBER),
    ("delete_security_group", ADMIN_OR_MEMBER),
    ("delete_security_group:tags", ADMIN_OR_MEMBER),
    (
        "create_security_group_rule",
        "(rule:admin_only) or (role:member and rule:sg_owner)",
    ),
    (
        "get_security_group_rule",
        "(rule:admin_only) or (role:reader and rule:sg_owner)",
    ),
    (
        "delete_security_group_rule",
        "(rule:admin_only) or (role:member and rule:sg_owner)",
    ),
    // Quotas (a project may always read its own: neutron's quota controller).
    (
        "get_quota",
        "(rule:admin_only) or (role:manager and project_id:%(project_id)s)",
    ),
    ("update_quota", "rule:admin_only"),
    ("delete_quota", "rule:admin_only"),
    // Agents.
    ("create_agent", "rule:admin_only"),
    ("get_agent", "rule:admin_only"),
    ("update_agent", "rule:admin_only"),
    ("delete_agent", "rule:admin_only"),
    // kuryr's agent-facing API: heartbeats and the host watch, per host.
    (
        "kuryr_report_state",
        "(rule:admin_only) or kuryr_agent:%(host)s",
    ),
    (
        "kuryr_watch_host",
        "(rule:admin_only) or kuryr_agent:%(host)s",
    ),
    // Routers.
    ("create_router", ADMIN_OR_MEMBER),
    ("create_router:external_gateway_info", ADMIN_OR_MEMBER),
    (
        "create_router:external_gateway_info:network_id",
        ADMIN_OR_MEMBER,
    ),
    (
        "create_router:external_gateway_info:enable_snat",
        "rule:admin_only",
    ),
    (
        "create_router:external_gateway_info:external_fixed_ips",
        "rule:admin_only",
    ),
    ("create_router:tags", ADMIN_OR_MEMBER),
    (
        "get_router",
        "(rule:admin_only) or (role:reader and project_id:%(project_id)s)",
    ),
    (
        "get_router:tags",
        "(rule:admin_only) or (role:reader and project_id:%(project_id)s)",
    ),
    ("update_router", ADMIN_OR_MEMBER),
    ("update_router:external_gateway_info", ADMIN_OR_MEMBER),
    (
        "update_router:external_gateway_info:network_id",
        ADMIN_OR_MEMBER,
    ),
    (
        "update_router:external_gateway_info:enable_snat",
        "rule:admin_only",
    ),
    (
        "update_router:external_gateway_info:external_fixed_ips",
        "rule:admin_only",
    ),
    ("update_router:tags", ADMIN_OR_MEMBER),
    ("delete_router", ADMIN_OR_MEMBER),
    ("delete_router:tags", ADMIN_OR_MEMBER),
    ("add_router_interface", ADMIN_OR_MEMBER),
    ("remove_router_interface", ADMIN_OR_MEMBER),
    ("add_extraroutes", ADMIN_OR_MEMBER),
    ("remove_extraroutes", ADMIN_OR_MEMBER),
    // Floating IPs.
    ("create_floatingip", ADMIN_OR_MEMBER),
    (
        "create_floatingip:floating_ip_address",
        "(rule:admin_only) or (role:manager and project_id:%(project_id)s)",
    ),
    ("create_floatingip:router_id", ADMIN_OR_MEMBER),
    ("create_floatingip:tags", ADMIN_OR_MEMBER),
    (
        "get_floatingip",
        "(rule:admin_only) or (role:reader and project_id:%(project_id)s)",
    ),
    (
        "get_floatingip:tags",
        "(rule:admin_only) or (role:reader and project_id:%(project_id)s)",
    ),
    ("update_floatingip", ADMIN_OR_MEMBER),
    ("update_floatingip:router_id", ADMIN_OR_MEMBER),
    ("update_floatingip:tags", ADMIN_OR_MEMBER),
    ("delete_floatingip", ADMIN_OR_MEMBER),
    ("delete_floatingip:tags", ADMIN_OR_MEMBER),
    (
        "get_floatingip_pool",
        "(rule:admin_only) or (role:reader and project_id:%(project_id)s)",
    ),
    // Port forwardings: owned through their floating IP.
    ("ext_parent_owner", "project_id:%(ext_parent:project_id)s"),
    (
        "create_floatingip_port_forwarding",
        "(rule:admin_only) or (role:member and rule:ext_parent_owner)",
    ),
    (
        "get_floatingip_port_forwarding",
        "(rule:admin_only) or (role:reader and rule:ext_parent_owner)",
    ),
    (
        "update_floatingip_port_forwarding",
        "(rule:admin_only) or (role:member and rule:ext_parent_owner)",
    ),
    (
        "delete_floatingip_port_forwarding",
        "(rule:admin_only) or (role:member and rule:ext_parent_owner)",
    ),
    (
        "get_network_ip_availability",
        "(rule:admin_only) or (rule:service_api)",
    ),
];

/// One parsed check.
#[derive(Debug, Clone, PartialEq)]
enum Check {
    True,
    False,
    Rule(String),
    Role(String),
    /// `field:resource:attr=value`; `prefix` for `=~^value`.
    Field {
        resource: String,
        attr: String,
        value: String,
        prefix: bool,
    },
    /// `cred:%(target)s`: a credential equal to a target attribute.
    Generic {
        cred: String,
        target: String,
    },
    /// `cred:literal`.
    Literal {
        cred: String,
        value: String,
    },
    /// `kuryr_agent:%(attr)s` (`None`: any host).
    Agent(Option<String>),
    Not(Box<Check>),
    And(Vec<Check>),
    Or(Vec<Check>),
}

#[derive(Debug, thiserror::Error)]
#[error("policy rule {name:?}: {reason}")]
pub struct PolicyParseError {
    name: String,
    reason: String,
}

fn tokenize(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    for tok in s.split_whitespace() {
        let clean = tok.trim_start_matches('(');
        for _ in 0..tok.len() - clean.len() {
            out.push("(".to_string());
        }
        let core = clean.trim_end_matches(')');
        if !core.is_empty() {
            out.push(core.to_string());
        }
        for _ in 0..clean.len() - core.len() {
            out.push(")".to_string());
        }
    }
    out
}

struct Parser {
    toks: Vec<String>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&str> {
        self.toks.get(self.pos).map(String::as_str)
    }
    fn next(&mut self) -> Option<String> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn or(&mut self) -> Result<Check, String> {
        let mut items = vec![self.and()?];
        while self.peek() == Some("or") {
            self.pos += 1;
            items.push(self.and()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Check::Or(items)
        })
    }
    fn and(&mut self) -> Result<Check, String> {
        let mut items = vec![self.not()?];
        while self.peek() == Some("and") {
            self.pos += 1;
            items.push(self.not()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Check::And(items)
        })
    }
    fn not(&mut self) -> Result<Check, String> {
        if self.peek() == Some("not") {
            self.pos += 1;
            return Ok(Check::Not(Box::new(self.not()?)));
        }
        self.atom()
    }
    fn atom(&mut self) -> Result<Check, String> {
        match self.next().as_deref() {
            Some("(") => {
                let c = self.or()?;
                match self.next().as_deref() {
                    Some(")") => Ok(c),
                    _ => Err("unbalanced parentheses".into()),
                }
            }
            Some(t) => parse_check(t),
            None => Err("unexpected end".into()),
        }
    }
}

fn target_ref(s: &str) -> Option<&str> {
    s.strip_prefix("%(")?.strip_suffix(")s")
}

fn parse_check(t: &str) -> Result<Check, String> {
    match t {
        "@" => return Ok(Check::True),
        "!" => return Ok(Check::False),
        _ => {}
    }
    let (kind, rest) = t
        .split_once(':')
        .ok_or_else(|| format!("{t:?} is not a check"))?;
    Ok(match kind {
        "rule" => Check::Rule(rest.to_string()),
        "role" => Check::Role(rest.to_string()),
        "field" => {
            let (resource, fv) = rest
                .split_once(':')
                .ok_or_else(|| format!("{t:?}: field checks are field:resource:attr=value"))?;
            let (attr, value) = fv
                .split_once('=')
                .ok_or_else(|| format!("{t:?}: field checks are field:resource:attr=value"))?;
            match value.strip_prefix("~") {
                Some(re) => Check::Field {
                    resource: resource.into(),
                    attr: attr.into(),
                    value: re
                        .strip_prefix('^')
                        .ok_or_else(|| format!("{t:?}: only ^prefix patterns are supported"))?
                        .into(),
                    prefix: true,
                },
                None => Check::Field {
                    resource: resource.into(),
                    attr: attr.into(),
                    value: value.into(),
                    prefix: false,
                },
            }
        }
        "kuryr_agent" => match rest {
            "*" => Check::Agent(None),
            r => Check::Agent(Some(
                target_ref(r)
                    .ok_or_else(|| format!("{t:?}: use kuryr_agent:%(attr)s or kuryr_agent:*"))?
                    .to_string(),
            )),
        },
        // Service tokens (X-Service-Token) are not used with kuryr: never true.
        "service_roles" => Check::False,
        cred => match target_ref(rest) {
            Some(target) => Check::Generic {
                cred: cred.into(),
                target: target.into(),
            },
            None => Check::Literal {
                cred: cred.into(),
                value: rest.into(),
            },
        },
    })
}

fn parse(name: &str, s: &str) -> Result<Check, PolicyParseError> {
    let toks = tokenize(s);
    if toks.is_empty() {
        return Ok(Check::True);
    }
    let mut p = Parser { toks, pos: 0 };
    let c = p.or().map_err(|reason| PolicyParseError {
        name: name.into(),
        reason,
    })?;
    if p.pos != p.toks.len() {
        return Err(PolicyParseError {
            name: name.into(),
            reason: format!("unexpected {:?}", p.toks[p.pos]),
        });
    }
    Ok(c)
}

/// What a check looks at: the resource as the request would leave it, plus the
/// related facts neutron's checks name (`network:project_id`, ...).
pub trait Target {
    fn get(&self, key: &str) -> Option<Value>;
}

impl Target for Map<String, Value> {
    fn get(&self, key: &str) -> Option<Value> {
        Map::get(self, key).cloned()
    }
}

/// A target built only when a check needs it: admins never pay for it.
pub struct Lazy<F: Fn() -> Map<String, Value>> {
    make: F,
    made: std::cell::OnceCell<Map<String, Value>>,
}

impl<F: Fn() -> Map<String, Value>> Lazy<F> {
    pub fn new(make: F) -> Self {
        Lazy {
            make,
            made: std::cell::OnceCell::new(),
        }
    }
}

impl<F: Fn() -> Map<String, Value>> Target for Lazy<F> {
    fn get(&self, key: &str) -> Option<Value> {
        self.made.get_or_init(&self.make).get(key).cloned()
    }
}

/// Values compare as oslo.policy compares them: as Python would print them.
fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Null => "None".into(),
        other => other.to_string(),
    }
}

/// The policy table, parsed.
pub struct Policy {
    rules: HashMap<String, Check>,
    /// `get_<resource>:` attribute rules, by resource: what responses hide.
    read_rules: HashMap<String, Vec<(String, String)>>,
}

pub static POLICY: LazyLock<Policy> = LazyLock::new(|| Policy::new(DEFAULTS));

impl Policy {
    /// Parses a table; a rule that does not parse denies (and is logged), so a
    /// mistake can never open anything.
    pub fn new(table: &[(&str, &str)]) -> Policy {
        let mut rules = HashMap::new();
        let mut read_rules: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for (name, s) in table {
            let check = parse(name, s).unwrap_or_else(|e| {
                tracing::error!(error = %e, "policy rule does not parse; it denies");
                Check::False
            });
            rules.insert(name.to_string(), check);
            if let Some((res, attr)) = name
                .strip_prefix("get_")
                .and_then(|r| r.split_once(':'))
                .filter(|(_, a)| *a != "tags")
            {
                read_rules
                    .entry(res.to_string())
                    .or_default()
                    .push((attr.to_string(), name.to_string()));
            }
        }
        Policy { rules, read_rules }
    }

    pub fn has(&self, name: &str) -> bool {
        self.rules.contains_key(name)
    }

    /// Whether rule `name` allows `ctx` on `target`. An unknown action falls back
    /// to `default`, as oslo.policy does.
    pub fn allows(&self, name: &str, ctx: &Ctx, target: &dyn Target) -> bool {
        let check = self.rules.get(name).or_else(|| self.rules.get("default"));
        check.is_some_and(|c| self.eval(c, ctx, target, 0))
    }

    fn eval(&self, c: &Check, ctx: &Ctx, t: &dyn Target, depth: u8) -> bool {
        if depth > 16 {
            return false;
        }
        match c {
            Check::True => true,
            Check::False => false,
            Check::Rule(name) => self
                .rules
                .get(name)
                .is_some_and(|r| self.eval(r, ctx, t, depth + 1)),
            Check::Role(r) => ctx.has_role(r),
            Check::Field {
                resource,
                attr,
                value,
                prefix,
            } => {
                let got = t.get(attr).or_else(|| {
                    // Ports and subnets are shared through their network.
                    (resource == "networks" && attr == "shared")
                        .then(|| t.get("network:shared"))
                        .flatten()
                });
                match got.filter(|v| !v.is_null()) {
                    Some(v) if *prefix => as_text(&v).starts_with(value.as_str()),
                    Some(v) => as_text(&v) == *value,
                    None => false,
                }
            }
            Check::Generic { cred, target } => {
                let Some(mine) = ctx.credential(cred) else {
                    return false;
                };
                t.get(target).is_some_and(|v| as_text(&v) == mine)
            }
            Check::Literal { cred, value } => ctx.credential(cred).is_some_and(|m| m == *value),
            Check::Agent(None) => ctx.agent_hosts().next().is_some(),
            Check::Agent(Some(_)) if ctx.agent_hosts().next().is_none() => false,
            Check::Agent(Some(attr)) => match t.get(attr) {
                Some(Value::String(h)) if !h.is_empty() => ctx.agent_hosts().any(|a| a == h),
                _ => false,
            },
            Check::Not(c) => !self.eval(c, ctx, t, depth + 1),
            Check::And(cs) => cs.iter().all(|c| self.eval(c, ctx, t, depth + 1)),
            Check::Or(cs) => cs.iter().any(|c| self.eval(c, ctx, t, depth + 1)),
        }
    }

    /// The attributes of a `singular` resource that `ctx` may not see on `target`.
    pub fn hidden(&self, singular: &str, ctx: &Ctx, target: &dyn Target) -> Vec<&str> {
        let Some(rules) = self.read_rules.get(singular) else {
            return Vec::new();
        };
        rules
            .iter()
            .filter(|(_, rule)| !self.allows(rule, ctx, target))
            .map(|(attr, _)| attr.as_str())
            .collect()
    }

    /// The attribute rules a create or update body triggers, in neutron's order:
    /// `action:attr` for each attribute given, then `action:attr:sub` for the keys
    /// given inside it. `defaults` are values that need no check on create.
    pub fn attribute_rules(
        &self,
        action: &str,
        body: &Map<String, Value>,
        defaults: &[(&str, Value)],
    ) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        for (attr, value) in body {
            if defaults.iter().any(|(a, d)| a == attr && d == value) {
                continue;
            }
            let name = format!("{action}:{attr}");
            let mut subs: Vec<String> = Vec::new();
            let objects: Vec<&Map<String, Value>> = match value {
                Value::Object(m) => vec![m],
                Value::Array(items) => items.iter().filter_map(Value::as_object).collect(),
                _ => Vec::new(),
            };
            for m in objects {
                for k in m.keys() {
                    let sub = format!("{name}:{k}");
                    if self.has(&sub) && !subs.contains(&sub) {
                        subs.push(sub);
                    }
                }
            }
            if self.has(&name) || !subs.is_empty() {
                out.push((name, subs));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::AuthContext;
    use serde_json::json;

    fn ctx(project: &str, roles: &[&str]) -> Ctx {
        Ctx::new(AuthContext {
            user_id: "u".into(),
            user_name: "u".into(),
            project_id: project.into(),
            project_name: project.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        })
    }

    fn target(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn the_whole_table_parses() {
        for (name, s) in DEFAULTS {
            assert!(parse(name, s).is_ok(), "{name}: {s}");
        }
        assert!(parse("x", "(role:a").is_err());
        assert!(parse("x", "role:a role:b").is_err());
        assert!(parse("x", "nonsense").is_err());
        assert_eq!(parse("x", "").ok(), Some(Check::True));
    }

    #[test]
    fn and_binds_tighter_than_or() {
        let p = Policy::new(&[("r", "role:a and role:b or role:c")]);
        let t = Map::new();
        assert!(p.allows("r", &ctx("p", &["c"]), &t));
        assert!(!p.allows("r", &ctx("p", &["a"]), &t));
        assert!(p.allows("r", &ctx("p", &["a", "b"]), &t));
        let q = Policy::new(&[("r", "role:a and (role:b or role:c)")]);
        assert!(!q.allows("r", &ctx("p", &["c"]), &t));
    }

    #[test]
    fn implied_roles_follow_keystone() {
        let p = &*POLICY;
        let t = target(json!({"project_id": "p"}));
        assert!(p.allows("update_network", &ctx("p", &["admin"]), &t));
        assert!(p.allows("update_network", &ctx("p", &["manager"]), &t));
        assert!(p.allows("update_network", &ctx("p", &["member"]), &t));
        assert!(!p.allows("update_network", &ctx("p", &["reader"]), &t));
        assert!(p.allows("get_network", &ctx("p", &["reader"]), &t));
        assert!(!p.allows("get_network", &ctx("q", &["member"]), &t));
    }

    #[test]
    fn shared_networks_let_others_create_plain_ports_only() {
        let p = &*POLICY;
        let b = ctx("b", &["member"]);
        let t =
            target(json!({"project_id": "b", "network:project_id": "a", "network:shared": true}));
        assert!(p.allows("create_port", &b, &t));
        assert!(p.allows("create_port:fixed_ips:subnet_id", &b, &t));
        assert!(!p.allows("create_port:fixed_ips:ip_address", &b, &t));
        assert!(!p.allows("create_port:mac_address", &b, &t));
        assert!(!p.allows("create_port:port_security_enabled", &b, &t));
        assert!(!p.allows("create_port:allowed_address_pairs", &b, &t));
        let owner = ctx("a", &["member"]);
        let t2 =
            target(json!({"project_id": "a", "network:project_id": "a", "network:shared": true}));
        assert!(p.allows("create_port:mac_address", &owner, &t2));
        let unshared =
            target(json!({"project_id": "b", "network:project_id": "a", "network:shared": false}));
        assert!(!p.allows("create_port", &b, &unshared));
    }

    #[test]
    fn device_owner_prefix_rules() {
        let p = &*POLICY;
        let b = ctx("b", &["member"]);
        let t = target(json!({"device_owner": "network:dhcp", "network:project_id": "a"}));
        assert!(!p.allows("create_port:device_owner", &b, &t));
        let t = target(json!({"device_owner": "compute:nova", "network:project_id": "a"}));
        assert!(p.allows("create_port:device_owner", &b, &t));
        // A member cannot delete a compute port of its own project (nova owns it).
        let t = target(
            json!({"device_owner": "compute:nova", "project_id": "b", "network:project_id": "a"}),
        );
        assert!(!p.allows("delete_port", &b, &t));
        let t = target(json!({"device_owner": "", "project_id": "b", "network:project_id": "a"}));
        assert!(p.allows("delete_port", &b, &t));
    }

    #[test]
    fn agents_act_only_for_their_host() {
        let p = &*POLICY;
        let h1 = ctx("service", &["kuryr_agent:h1"]);
        let claim = target(
            json!({"project_id": "x", "binding:host_id": "h1", "kuryr:prior_host": "", "kuryr:binding_only": true}),
        );
        assert!(p.allows("update_port", &h1, &claim));
        assert!(p.allows("update_port:binding:host_id", &h1, &claim));
        let steal = target(
            json!({"project_id": "x", "binding:host_id": "h1", "kuryr:prior_host": "h2", "kuryr:binding_only": true}),
        );
        assert!(!p.allows("update_port", &h1, &steal));
        let give = target(
            json!({"project_id": "x", "binding:host_id": "h2", "kuryr:prior_host": "h1", "kuryr:binding_only": true}),
        );
        // Its own port, but never handed to another host.
        assert!(p.allows("update_port", &h1, &give));
        assert!(!p.allows("update_port:binding:host_id", &h1, &give));
        let release = target(
            json!({"project_id": "x", "binding:host_id": "", "kuryr:prior_host": "h1", "kuryr:binding_only": true}),
        );
        assert!(p.allows("update_port:binding:host_id", &h1, &release));
        assert!(!p.allows("update_port:binding:host_id", &h1, &steal));
        let rename = target(
            json!({"project_id": "x", "binding:host_id": "h1", "kuryr:prior_host": "h1", "kuryr:binding_only": false}),
        );
        assert!(!p.allows("update_port", &h1, &rename));
        assert!(p.allows("kuryr_report_state", &h1, &target(json!({"host": "h1"}))));
        assert!(!p.allows("kuryr_report_state", &h1, &target(json!({"host": "h2"}))));
        assert!(!p.allows(
            "create_network",
            &h1,
            &target(json!({"project_id": "service"}))
        ));
        assert!(p.allows(
            "get_port",
            &h1,
            &target(json!({"project_id": "x", "binding:host_id": ""}))
        ));
        assert!(!p.allows(
            "get_port",
            &h1,
            &target(json!({"project_id": "x", "binding:host_id": "h2"}))
        ));
    }

    #[test]
    fn attribute_rules_name_sub_attributes() {
        let p = &*POLICY;
        let body = target(
            json!({"name": "x", "fixed_ips": [{"subnet_id": "s"}, {"ip_address": "10.0.0.1"}], "shared": false}),
        );
        let rules = p.attribute_rules("create_port", &body, &[]);
        assert_eq!(
            rules,
            vec![(
                "create_port:fixed_ips".to_string(),
                vec![
                    "create_port:fixed_ips:subnet_id".to_string(),
                    "create_port:fixed_ips:ip_address".to_string()
                ]
            )]
        );
        let rules = p.attribute_rules("create_network", &body, &[("shared", json!(false))]);
        assert!(rules.is_empty());
        let body = target(json!({"shared": true}));
        assert_eq!(
            p.attribute_rules("create_network", &body, &[("shared", json!(false))])
                .len(),
            1
        );
    }

    #[test]
    fn responses_hide_binding_attributes_from_tenants() {
        let p = &*POLICY;
        let t = target(json!({"project_id": "b", "binding:host_id": "h1"}));
        let mut hidden = p.hidden("port", &ctx("b", &["member"]), &t);
        hidden.sort();
        assert_eq!(
            hidden,
            vec![
                "binding:host_id",
                "binding:profile",
                "binding:vif_details",
                "binding:vif_type"
            ]
        );
        assert!(p.hidden("port", &ctx("b", &["admin"]), &t).is_empty());
        assert!(
            p.hidden("port", &ctx("s", &["kuryr_agent:h1"]), &t)
                .is_empty()
        );
    }
}
