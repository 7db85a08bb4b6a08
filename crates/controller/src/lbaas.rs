//! The Octavia calls the controller makes for Services (through kuryr's client, so a
//! real Octavia works too): load balancers, listeners, pools, the members' batch
//! update, cascade deletes, and reading a Service's tree back.
//!
//! Octavia takes one change of a tree at a time: a write while the load balancer is
//! `PENDING_*` gets 409 `ImmutableObject`. kuryr's provisioner makes it `ACTIVE`
//! within milliseconds (Octavia with amphorae, within seconds), so writes are retried
//! on that answer with a short backoff instead of polling the status first.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use kuryr_client::{Client, ClientError, Method};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::neutron::decode;
use crate::services::{LbSpec, ListenerKey, MemberKey, MemberSpec, PoolSpec, Proto};
use crate::tags;

/// How long a write waits for its load balancer to leave `PENDING_*`.
const IMMUTABLE_WAIT: Duration = Duration::from_secs(20);

/// A Service's load balancer as Octavia has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbState {
    pub id: String,
    /// The Service uid it was made for (its tag).
    pub uid: String,
    pub vip: IpAddr,
    pub vip_port: String,
    pub listeners: BTreeMap<ListenerKey, ListenerState>,
    /// The floating IP on the VIP (`type: LoadBalancer`): id and address.
    pub fip: Option<(String, IpAddr)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerState {
    pub id: String,
    /// Who may use it (`None`: anyone).
    pub allowed: Option<Vec<IpNet>>,
    pub pool: Option<PoolState>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolState {
    pub id: String,
    pub source_ip: bool,
    pub members: BTreeMap<MemberKey, MemberSpec>,
}

impl PoolState {
    pub fn matches(&self, want: &PoolSpec) -> bool {
        self.source_ip == want.source_ip && self.members == want.members
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct RawLb {
    pub id: String,
    #[serde(default)]
    pub vip_address: Option<String>,
    #[serde(default)]
    pub vip_port_id: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

impl RawLb {
    pub fn service(&self) -> Option<(&str, &str)> {
        Some((
            tags::value(&self.tags, tags::SERVICE_NAMESPACE)?,
            tags::value(&self.tags, tags::SERVICE_NAME)?,
        ))
    }

    pub fn uid(&self) -> Option<&str> {
        tags::value(&self.tags, tags::SERVICE_UID)
    }
}

#[derive(Deserialize)]
struct IdRef {
    id: String,
}

#[derive(Deserialize)]
struct RawListener {
    id: String,
    protocol: String,
    protocol_port: u16,
    #[serde(default)]
    loadbalancers: Vec<IdRef>,
    #[serde(default)]
    allowed_cidrs: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct Persistence {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct RawPool {
    id: String,
    #[serde(default)]
    session_persistence: Option<Persistence>,
    #[serde(default)]
    listeners: Vec<IdRef>,
}

#[derive(Deserialize)]
struct RawMember {
    address: String,
    protocol_port: u16,
    #[serde(default)]
    weight: Option<u8>,
    #[serde(default)]
    name: Option<String>,
}

fn immutable(e: &ClientError) -> bool {
    matches!(e, ClientError::Conflict { message, .. } if message.contains("immutable"))
}

#[derive(Clone, Debug)]
pub struct Octavia {
    client: Client,
    cluster: String,
    /// Project of what is made (`None`: the credential's).
    project: Option<String>,
}

impl Octavia {
    pub fn new(client: Client, cluster: String, project: Option<String>) -> Octavia {
        Octavia {
            client,
            cluster,
            project,
        }
    }

    fn cluster_tag(&self) -> String {
        tags::tag(tags::CLUSTER, &self.cluster)
    }

    /// A write, retried while the tree is pending.
    async fn write(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let start = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(2);
        loop {
            match self
                .client
                .lb_request(method.clone(), path, body.clone())
                .await
            {
                Err(e) if immutable(&e) && start.elapsed() < IMMUTABLE_WAIT => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(250));
                }
                Err(e) if immutable(&e) => {
                    return Err(Error::NotReady(format!("{method} {path}: {e}")));
                }
                r => return r.map_err(Error::from),
            }
        }
    }

    /// Every load balancer of the cluster.
    pub async fn list_all(&self) -> Result<Vec<RawLb>> {
        let path = format!("/lbaas/loadbalancers?tags={}", self.cluster_tag());
        let v = self.client.lb_request(Method::GET, &path, None).await?;
        decode(v, "loadbalancers", "load balancers")
    }

    /// The load balancers made for Service `namespace/name` (normally one).
    pub async fn find(&self, namespace: &str, name: &str) -> Result<Vec<RawLb>> {
        let path = format!(
            "/lbaas/loadbalancers?tags={},{},{}",
            self.cluster_tag(),
            tags::tag(tags::SERVICE_NAMESPACE, namespace),
            tags::tag(tags::SERVICE_NAME, name)
        );
        let v = self.client.lb_request(Method::GET, &path, None).await?;
        decode(v, "loadbalancers", "load balancers")
    }

    /// A load balancer's listeners, pools and members (its children carry the uid tag).
    pub async fn load(&self, lb: &RawLb) -> Result<Option<LbState>> {
        let (Some(uid), Some(vip)) = (
            lb.uid(),
            lb.vip_address.as_deref().and_then(|a| a.parse().ok()),
        ) else {
            return Ok(None);
        };
        let filter = format!(
            "tags={},{}",
            self.cluster_tag(),
            tags::tag(tags::SERVICE_UID, uid)
        );
        let v = self
            .client
            .lb_request(Method::GET, &format!("/lbaas/listeners?{filter}"), None)
            .await?;
        let listeners: Vec<RawListener> = decode(v, "listeners", "listeners")?;
        let v = self
            .client
            .lb_request(Method::GET, &format!("/lbaas/pools?{filter}"), None)
            .await?;
        let pools: Vec<RawPool> = decode(v, "pools", "pools")?;
        let mut state = LbState {
            id: lb.id.clone(),
            uid: uid.to_string(),
            vip,
            vip_port: lb.vip_port_id.clone().unwrap_or_default(),
            listeners: BTreeMap::new(),
            fip: None,
        };
        for l in listeners {
            if !l.loadbalancers.iter().any(|r| r.id == lb.id) {
                continue;
            }
            let Some(proto) = Proto::parse(Some(&l.protocol)) else {
                continue;
            };
            let pool = match pools
                .iter()
                .find(|p| p.listeners.iter().any(|r| r.id == l.id))
            {
                Some(p) => Some(PoolState {
                    id: p.id.clone(),
                    source_ip: p
                        .session_persistence
                        .as_ref()
                        .is_some_and(|s| s.kind == "SOURCE_IP"),
                    members: self.members(&p.id).await?,
                }),
                None => None,
            };
            let allowed = l.allowed_cidrs.as_ref().filter(|c| !c.is_empty()).map(|c| {
                let mut v: Vec<IpNet> = c.iter().filter_map(|s| s.parse().ok()).collect();
                v.sort();
                v
            });
            state.listeners.insert(
                (proto, l.protocol_port),
                ListenerState {
                    id: l.id,
                    allowed,
                    pool,
                },
            );
        }
        Ok(Some(state))
    }

    async fn members(&self, pool: &str) -> Result<BTreeMap<MemberKey, MemberSpec>> {
        let v = self
            .client
            .lb_request(Method::GET, &format!("/lbaas/pools/{pool}/members"), None)
            .await?;
        let raw: Vec<RawMember> = decode(v, "members", "members")?;
        Ok(raw
            .into_iter()
            .filter_map(|m| {
                let addr: IpAddr = m.address.parse().ok()?;
                Some((
                    (addr, m.protocol_port),
                    MemberSpec {
                        weight: m.weight.unwrap_or(1),
                        name: m.name.unwrap_or_default(),
                    },
                ))
            })
            .collect())
    }

    fn service_tags(&self, lb: &LbSpec) -> Vec<String> {
        tags::service(&self.cluster, &lb.uid, &lb.namespace, &lb.name)
    }

    fn with_project(&self, mut body: Value) -> Value {
        if let (Some(p), Some(o)) = (&self.project, body.as_object_mut()) {
            o.insert("project_id".into(), json!(p));
        }
        body
    }

    pub async fn create_lb(&self, lb: &LbSpec, subnet: &str) -> Result<LbState> {
        let body = self.with_project(json!({
            "name": format!("{}/{}", lb.namespace, lb.name),
            "description": "kuryr: Kubernetes Service",
            "vip_subnet_id": subnet,
            "vip_address": lb.vip.to_string(),
            "tags": self.service_tags(lb),
        }));
        let v = self
            .write(
                Method::POST,
                "/lbaas/loadbalancers",
                Some(json!({"loadbalancer": body})),
            )
            .await?;
        let raw: RawLb = decode(v, "loadbalancer", "load balancer")?;
        Ok(LbState {
            id: raw.id,
            uid: lb.uid.clone(),
            vip: lb.vip,
            vip_port: raw.vip_port_id.unwrap_or_default(),
            listeners: BTreeMap::new(),
            fip: None,
        })
    }

    /// A listener and its pool with members.
    pub async fn create_listener(
        &self,
        lb: &LbSpec,
        lb_id: &str,
        key: ListenerKey,
        allowed: Option<&[IpNet]>,
        pool: &PoolSpec,
    ) -> Result<ListenerState> {
        let (proto, port) = key;
        let name = format!("{}/{}:{}:{port}", lb.namespace, lb.name, proto.as_str());
        let body = self.with_project(json!({
            "name": name,
            "loadbalancer_id": lb_id,
            "protocol": proto.as_str(),
            "protocol_port": port,
            "allowed_cidrs": cidrs(allowed),
            "tags": self.service_tags(lb),
        }));
        let v = self
            .write(
                Method::POST,
                "/lbaas/listeners",
                Some(json!({"listener": body})),
            )
            .await?;
        let listener: IdRef = decode(v, "listener", "listener")?;
        let body = self.with_project(json!({
            "name": name,
            "listener_id": listener.id,
            "protocol": proto.as_str(),
            "lb_algorithm": "ROUND_ROBIN",
            "session_persistence": persistence(pool.source_ip),
            "tags": self.service_tags(lb),
        }));
        let v = match self
            .write(Method::POST, "/lbaas/pools", Some(json!({"pool": body})))
            .await
        {
            Ok(v) => v,
            Err(e) => {
                // No listener without its pool: the next reconcile makes both again.
                let _ = self.delete_listener(&listener.id).await;
                return Err(e);
            }
        };
        let p: IdRef = decode(v, "pool", "pool")?;
        let mut state = PoolState {
            id: p.id,
            source_ip: pool.source_ip,
            members: BTreeMap::new(),
        };
        self.update_pool(&mut state, pool).await?;
        Ok(ListenerState {
            id: listener.id,
            allowed: allowed.map(<[IpNet]>::to_vec),
            pool: Some(state),
        })
    }

    /// Who may use a listener (`None`: anyone).
    pub async fn set_allowed(
        &self,
        l: &mut ListenerState,
        allowed: Option<&[IpNet]>,
    ) -> Result<()> {
        let body = json!({"listener": {"allowed_cidrs": cidrs(allowed)}});
        self.write(
            Method::PUT,
            &format!("/lbaas/listeners/{}", l.id),
            Some(body),
        )
        .await?;
        l.allowed = allowed.map(<[IpNet]>::to_vec);
        Ok(())
    }

    /// Brings a pool to `want`: its persistence, then its members in one batch.
    pub async fn update_pool(&self, have: &mut PoolState, want: &PoolSpec) -> Result<()> {
        if have.source_ip != want.source_ip {
            let body = json!({"pool": {"session_persistence": persistence(want.source_ip)}});
            self.write(
                Method::PUT,
                &format!("/lbaas/pools/{}", have.id),
                Some(body),
            )
            .await?;
            have.source_ip = want.source_ip;
        }
        if have.members != want.members {
            let members: Vec<Value> = want
                .members
                .iter()
                .map(|((addr, port), m)| {
                    let mut v = json!({
                        "address": addr.to_string(),
                        "protocol_port": port,
                        "weight": m.weight,
                    });
                    if !m.name.is_empty() {
                        v["name"] = json!(m.name);
                    }
                    v
                })
                .collect();
            self.write(
                Method::PUT,
                &format!("/lbaas/pools/{}/members", have.id),
                Some(json!({ "members": members })),
            )
            .await?;
            have.members = want.members.clone();
        }
        Ok(())
    }

    pub async fn delete_listener(&self, id: &str) -> Result<()> {
        gone_ok(
            self.write(Method::DELETE, &format!("/lbaas/listeners/{id}"), None)
                .await,
        )
    }

    pub async fn delete_pool(&self, id: &str) -> Result<()> {
        gone_ok(
            self.write(Method::DELETE, &format!("/lbaas/pools/{id}"), None)
                .await,
        )
    }

    /// The load balancer and everything under it.
    pub async fn delete_lb(&self, id: &str) -> Result<()> {
        gone_ok(
            self.write(
                Method::DELETE,
                &format!("/lbaas/loadbalancers/{id}?cascade=true"),
                None,
            )
            .await,
        )
    }
}

fn cidrs(allowed: Option<&[IpNet]>) -> Value {
    match allowed {
        Some(a) => json!(a.iter().map(ToString::to_string).collect::<Vec<_>>()),
        None => Value::Null,
    }
}

fn persistence(source_ip: bool) -> Value {
    if source_ip {
        json!({"type": "SOURCE_IP"})
    } else {
        Value::Null
    }
}

fn gone_ok(r: Result<Value>) -> Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}
