//! The Neutron calls the controller makes, through kuryr's client (so the same
//! controller works against kuryr's server and a real OpenStack): ports in bulk,
//! security groups and rules, namespace networks, router interfaces. Everything it makes
//! is tagged with the cluster and its owner (see `tags`).

use kuryr_client::{Client, ClientError, Method};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::cache::{GroupRec, NetRec, PortRec, RawGroup, RawRule, RuleRec, SubnetRec};
use crate::error::{Error, Result};
use crate::policy::RuleSpec;
use crate::tags;

/// Rules listed per call (ids go in the query string).
const RULE_LIST_CHUNK: usize = 40;

#[derive(Clone, Debug)]
pub struct Neutron {
    client: Client,
    cluster: String,
    /// Project of what is made (`None`: the credential's).
    project: Option<String>,
}

/// The object under `key` of an answer (Neutron's and Octavia's bodies alike).
pub(crate) fn decode<T: DeserializeOwned>(mut v: Value, key: &str, what: &str) -> Result<T> {
    let inner = v
        .get_mut(key)
        .map(Value::take)
        .ok_or_else(|| Error::Decode(format!("{what}: no {key:?} in the answer")))?;
    serde_json::from_value(inner).map_err(|e| Error::Decode(format!("{what}: {e}")))
}

/// A 404 is what a delete wanted.
fn gone_ok(r: Result<Value, ClientError>) -> Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether Neutron refused `tags` in a create body (releases before tags-on-create).
fn refuses_tags(e: &ClientError) -> bool {
    matches!(e, ClientError::Api { status: 400, message, .. } if message.contains("tags"))
}

/// A floating IP the controller made for a Service.
#[derive(Debug, Clone, Deserialize)]
pub struct FipRec {
    pub id: String,
    pub floating_ip_address: String,
    #[serde(default)]
    pub port_id: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Deserialize)]
struct CreatedGroup {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    security_group_rules: Option<Vec<RawRule>>,
}

impl Neutron {
    pub fn new(client: Client, cluster: String, project: Option<String>) -> Neutron {
        Neutron {
            client,
            cluster,
            project,
        }
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn cluster_tag(&self) -> String {
        tags::tag(tags::CLUSTER, &self.cluster)
    }

    fn with_project(&self, mut body: Value) -> Value {
        if let (Some(p), Some(m)) = (&self.project, body.as_object_mut()) {
            m.insert("project_id".into(), json!(p));
        }
        body
    }

    /// `POST /{collection}` of one object with its tags; where Neutron refuses tags in
    /// the body, creates without and tags after. Returns the created object.
    async fn create_tagged(
        &self,
        collection: &str,
        key: &str,
        mut body: Value,
        tags: &[String],
    ) -> Result<Value> {
        if let Some(m) = body.as_object_mut() {
            m.insert("tags".into(), json!(tags));
        }
        let path = format!("/{collection}");
        let created = match self
            .client
            .request(Method::POST, &path, Some(json!({ key: body.clone() })))
            .await
        {
            Ok(v) => v,
            Err(e) if refuses_tags(&e) => {
                if let Some(m) = body.as_object_mut() {
                    m.remove("tags");
                }
                self.client
                    .request(Method::POST, &path, Some(json!({ key: body })))
                    .await?
            }
            Err(e) => return Err(e.into()),
        };
        let mut obj: Value = decode(created, key, collection)?;
        let have: Vec<String> = obj
            .get("tags")
            .cloned()
            .and_then(|t| serde_json::from_value(t).ok())
            .unwrap_or_default();
        if !tags::same(&have, tags) {
            let id = obj.get("id").and_then(Value::as_str).unwrap_or_default();
            self.client.set_tags(collection, id, tags).await?;
            obj["tags"] = json!(tags);
        }
        Ok(obj)
    }

    // ---- ports ----

    /// Every port of the cluster.
    pub async fn list_ports(&self) -> Result<Vec<PortRec>> {
        let t = self.cluster_tag();
        Ok(self
            .client
            .list_as("ports", "ports", &[("tags", &t)])
            .await?)
    }

    /// Makes `n` pool ports on (host, network) in one bulk call.
    pub async fn create_pool_ports(
        &self,
        host: &str,
        network: &str,
        n: usize,
    ) -> Result<Vec<PortRec>> {
        let t = tags::pool_port(&self.cluster);
        let one = self.with_project(json!({
            "network_id": network,
            "binding:host_id": host,
            "device_owner": tags::DEVICE_OWNER,
            "device_id": "",
            "name": tags::POOL_PORT_NAME,
            "security_groups": [],
            "admin_state_up": true,
            "tags": t,
        }));
        let body = json!({ "ports": vec![one; n] });
        let v = self
            .client
            .request(Method::POST, "/ports", Some(body))
            .await?;
        let mut ports: Vec<PortRec> = decode(v, "ports", "bulk port create")?;
        for p in &mut ports {
            if !tags::same(&p.tags, &t) {
                self.client.set_tags("ports", &p.id, &t).await?;
                p.tags = t.clone();
            }
        }
        Ok(ports)
    }

    /// The contract's assignment, first step: device_id = pod uid, name ns/name, the
    /// pod's groups (the agent binds as soon as the device_id is there). The pod's tags
    /// follow with [`Neutron::set_port_tags`].
    pub async fn assign_port(
        &self,
        id: &str,
        uid: &str,
        namespace: &str,
        name: &str,
        groups: &[String],
    ) -> Result<PortRec> {
        let body = json!({"port": {
            "device_id": uid,
            "name": format!("{namespace}/{name}"),
            "security_groups": groups,
        }});
        let v = self
            .client
            .request(Method::PUT, &format!("/ports/{id}"), Some(body))
            .await?;
        decode(v, "port", "port update")
    }

    pub async fn set_port_tags(&self, id: &str, t: &[String]) -> Result<()> {
        Ok(self.client.set_tags("ports", id, t).await?)
    }

    pub async fn set_port_groups(&self, id: &str, groups: &[String]) -> Result<PortRec> {
        let body = json!({"port": {"security_groups": groups}});
        let v = self
            .client
            .request(Method::PUT, &format!("/ports/{id}"), Some(body))
            .await?;
        decode(v, "port", "port update")
    }

    /// Back to the pool, first step: no device, no groups (deny all), the pool's name.
    /// The pool's tags follow with [`Neutron::set_port_tags`].
    pub async fn reset_port(&self, id: &str) -> Result<PortRec> {
        let body = json!({"port": {
            "device_id": "",
            "name": tags::POOL_PORT_NAME,
            "security_groups": [],
        }});
        let v = self
            .client
            .request(Method::PUT, &format!("/ports/{id}"), Some(body))
            .await?;
        decode(v, "port", "port update")
    }

    pub async fn delete_port(&self, id: &str) -> Result<()> {
        gone_ok(self.client.delete_port(id).await.map(|_| Value::Null))
    }

    // ---- security groups ----

    /// Every group of the cluster with its rules.
    pub async fn list_groups(&self) -> Result<Vec<GroupRec>> {
        let t = self.cluster_tag();
        let raw: Vec<RawGroup> = self
            .client
            .list_as("security-groups", "security_groups", &[("tags", &t)])
            .await?;
        let ids: Vec<&str> = raw.iter().map(|g| g.id.as_str()).collect();
        let mut rules: std::collections::HashMap<String, Vec<RuleRec>> = Default::default();
        for chunk in ids.chunks(RULE_LIST_CHUNK) {
            let filters: Vec<(&str, &str)> =
                chunk.iter().map(|id| ("security_group_id", *id)).collect();
            let list: Vec<RawRule> = self
                .client
                .list_as("security-group-rules", "security_group_rules", &filters)
                .await?;
            for r in list {
                rules
                    .entry(r.security_group_id.clone())
                    .or_default()
                    .push(RuleRec {
                        spec: r.spec(),
                        id: r.id,
                    });
            }
        }
        Ok(raw
            .into_iter()
            .map(|g| GroupRec {
                rules: rules.remove(&g.id).unwrap_or_default(),
                id: g.id,
                name: g.name,
                tags: g.tags,
            })
            .collect())
    }

    /// A new group, with whatever rules Neutron starts it with (its default egress rules:
    /// the caller's rule diff removes them).
    pub async fn create_group(
        &self,
        name: &str,
        description: &str,
        t: &[String],
    ) -> Result<GroupRec> {
        let body = self.with_project(json!({"name": name, "description": description}));
        let v = self
            .create_tagged("security-groups", "security_group", body, t)
            .await?;
        let g: CreatedGroup = serde_json::from_value(v)
            .map_err(|e| Error::Decode(format!("security group create: {e}")))?;
        let rules = match g.security_group_rules {
            Some(r) => r,
            // Not in the create answer: ask.
            None => {
                self.client
                    .list_as(
                        "security-group-rules",
                        "security_group_rules",
                        &[("security_group_id", &g.id)],
                    )
                    .await?
            }
        };
        Ok(GroupRec {
            name: g.name.unwrap_or_else(|| name.to_string()),
            tags: g.tags.unwrap_or_else(|| t.to_vec()),
            rules: rules
                .into_iter()
                .map(|r| RuleRec {
                    spec: r.spec(),
                    id: r.id,
                })
                .collect(),
            id: g.id,
        })
    }

    pub async fn delete_group(&self, id: &str) -> Result<()> {
        gone_ok(
            self.client
                .request(Method::DELETE, &format!("/security-groups/{id}"), None)
                .await,
        )
    }

    /// Creates rules in one bulk call.
    pub async fn create_rules(&self, group: &str, specs: &[RuleSpec]) -> Result<Vec<RuleRec>> {
        if specs.is_empty() {
            return Ok(Vec::new());
        }
        let rules: Vec<Value> = specs
            .iter()
            .map(|s| self.with_project(s.body(group)))
            .collect();
        let v = self
            .client
            .request(
                Method::POST,
                "/security-group-rules",
                Some(json!({ "security_group_rules": rules })),
            )
            .await?;
        let created: Vec<RawRule> = decode(v, "security_group_rules", "bulk rule create")?;
        Ok(created
            .into_iter()
            .map(|r| RuleRec {
                spec: r.spec(),
                id: r.id,
            })
            .collect())
    }

    pub async fn delete_rule(&self, id: &str) -> Result<()> {
        gone_ok(
            self.client
                .request(Method::DELETE, &format!("/security-group-rules/{id}"), None)
                .await,
        )
    }

    // ---- namespace networks ----

    pub async fn list_networks(&self) -> Result<Vec<NetRec>> {
        let t = self.cluster_tag();
        Ok(self
            .client
            .list_as("networks", "networks", &[("tags", &t)])
            .await?)
    }

    pub async fn list_subnets(&self) -> Result<Vec<SubnetRec>> {
        let t = self.cluster_tag();
        Ok(self
            .client
            .list_as("subnets", "subnets", &[("tags", &t)])
            .await?)
    }

    pub async fn create_network(&self, name: &str, t: &[String]) -> Result<NetRec> {
        let body = self.with_project(json!({"name": name, "admin_state_up": true}));
        let v = self.create_tagged("networks", "network", body, t).await?;
        serde_json::from_value(v).map_err(|e| Error::Decode(format!("network create: {e}")))
    }

    pub async fn create_subnet(
        &self,
        network: &str,
        name: &str,
        subnetpool: &str,
        ip_version: u8,
        t: &[String],
    ) -> Result<SubnetRec> {
        let body = self.with_project(json!({
            "network_id": network,
            "name": name,
            "subnetpool_id": subnetpool,
            "ip_version": ip_version,
        }));
        let v = self.create_tagged("subnets", "subnet", body, t).await?;
        serde_json::from_value(v).map_err(|e| Error::Decode(format!("subnet create: {e}")))
    }

    /// Every port on a network, the controller's or not.
    pub async fn network_ports(&self, network: &str) -> Result<Vec<PortRec>> {
        Ok(self
            .client
            .list_as("ports", "ports", &[("network_id", network)])
            .await?)
    }

    /// Whether the router has an interface on the subnet.
    pub async fn router_has_interface(
        &self,
        router: &str,
        network: &str,
        subnet: &str,
    ) -> Result<bool> {
        let ports: Vec<PortRec> = self
            .client
            .list_as(
                "ports",
                "ports",
                &[("device_id", router), ("network_id", network)],
            )
            .await?;
        Ok(ports
            .iter()
            .any(|p| p.fixed_ips.iter().any(|f| f.subnet_id == subnet)))
    }

    pub async fn add_router_interface(&self, router: &str, subnet: &str) -> Result<()> {
        self.client
            .request(
                Method::PUT,
                &format!("/routers/{router}/add_router_interface"),
                Some(json!({"subnet_id": subnet})),
            )
            .await?;
        Ok(())
    }

    pub async fn remove_router_interface(&self, router: &str, subnet: &str) -> Result<()> {
        gone_ok(
            self.client
                .request(
                    Method::PUT,
                    &format!("/routers/{router}/remove_router_interface"),
                    Some(json!({"subnet_id": subnet})),
                )
                .await,
        )
    }

    pub async fn delete_subnet(&self, id: &str) -> Result<()> {
        gone_ok(
            self.client
                .request(Method::DELETE, &format!("/subnets/{id}"), None)
                .await,
        )
    }

    pub async fn delete_network(&self, id: &str) -> Result<()> {
        gone_ok(
            self.client
                .request(Method::DELETE, &format!("/networks/{id}"), None)
                .await,
        )
    }

    /// The floating IPs the controller made for Services (all of them, or the one
    /// Service's with `uid`).
    pub async fn list_fips(&self, uid: Option<&str>) -> Result<Vec<FipRec>> {
        let mut t = tags::tag(tags::CLUSTER, &self.cluster);
        if let Some(u) = uid {
            t = format!("{t},{}", tags::tag(tags::SERVICE_UID, u));
        }
        Ok(self
            .client
            .list_as("floatingips", "floatingips", &[("tags", t.as_str())])
            .await?)
    }

    /// A floating IP from `network` on `port` (at `address` when given), tagged.
    pub async fn create_fip(
        &self,
        network: &str,
        port: &str,
        address: Option<std::net::IpAddr>,
        t: &[String],
    ) -> Result<FipRec> {
        let mut body = json!({"floating_network_id": network, "port_id": port,
                              "description": "kuryr: Kubernetes Service", "tags": t});
        if let Some(a) = address {
            body["floating_ip_address"] = json!(a.to_string());
        }
        if let Some(p) = &self.project {
            body["project_id"] = json!(p);
        }
        let v = self
            .client
            .request(
                Method::POST,
                "/floatingips",
                Some(json!({ "floatingip": body })),
            )
            .await?;
        decode(v, "floatingip", "floating IP")
    }

    pub async fn delete_fip(&self, id: &str) -> Result<()> {
        gone_ok(
            self.client
                .request(Method::DELETE, &format!("/floatingips/{id}"), None)
                .await,
        )
    }

    /// Finds an object by id, or else by its (unique) name: the object's JSON.
    pub async fn resolve(&self, collection: &str, key: &str, name_or_id: &str) -> Result<Value> {
        match self
            .client
            .request(Method::GET, &format!("/{collection}/{name_or_id}"), None)
            .await
        {
            Ok(v) => return decode(v, key, collection),
            Err(e) if e.is_not_found() || matches!(e, ClientError::Api { status: 400, .. }) => {}
            Err(e) => return Err(e.into()),
        }
        // The list's key is the collection's name for every kind resolved here.
        let found: Vec<Value> = self
            .client
            .list_as(collection, collection, &[("name", name_or_id)])
            .await?;
        match found.len() {
            1 => Ok(found.into_iter().next().unwrap_or_default()),
            0 => Err(Error::Config(format!(
                "no {key} named or with id {name_or_id:?}"
            ))),
            n => Err(Error::Config(format!(
                "{n} {collection} are named {name_or_id:?}: give the id"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_refusals() {
        let e = ClientError::Api {
            status: 400,
            kind: "HTTPBadRequest".into(),
            message: "Unrecognized attribute(s) 'tags'".into(),
        };
        assert!(refuses_tags(&e));
        let other = ClientError::Api {
            status: 400,
            kind: "HTTPBadRequest".into(),
            message: "Invalid input for name".into(),
        };
        assert!(!refuses_tags(&other));
    }

    #[test]
    fn deletes_of_gone_objects_succeed() {
        assert!(
            gone_ok(Err(ClientError::NotFound {
                kind: "PortNotFound".into(),
                message: String::new()
            }))
            .is_ok()
        );
        assert!(gone_ok(Err(ClientError::Unreachable("x".into()))).is_err());
    }
}
