//! NetworkPolicies → security groups in Neutron (the translation itself is `policy`):
//! the policy's groups and rules, the peer groups, the cluster's allow-all groups, and
//! moving ports in and out of them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use tokio::time::Instant;

use crate::cache::{GroupKind, RuleRec};
use crate::ctx::{Ctx, lock};
use crate::error::{Error, Result};
use crate::membership::PolicyGroups;
use crate::pods;
use crate::policy::{self, Direction, NamedPort, PeerKey, RuleSpec};
use crate::tags;
use crate::view::GROUP_ANNOTATION;

/// Which group is meant.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Which {
    AllowAll(Direction),
    Policy {
        uid: String,
        named: Option<NamedPort>,
    },
    Peer(String),
}

impl Which {
    fn matches(&self, k: &GroupKind) -> bool {
        match (self, k) {
            (Which::AllowAll(d), GroupKind::AllowAll(e)) => d == e,
            (
                Which::Policy { uid, named },
                GroupKind::Policy {
                    uid: u, named: n, ..
                },
            ) => uid == u && named == n,
            (Which::Peer(h), GroupKind::Peer(g)) => h == g,
            _ => false,
        }
    }
}

/// The group's id if the cache has it (the lowest id when a crash left two).
fn find(ctx: &Ctx, which: &Which) -> Option<String> {
    ctx.cache()
        .groups
        .values()
        .filter(|g| which.matches(&g.kind()))
        .map(|g| g.id.clone())
        .min()
}

async fn ensure_group(
    ctx: &Ctx,
    which: Which,
    name: &str,
    description: &str,
    t: &[String],
) -> Result<String> {
    if let Some(id) = find(ctx, &which) {
        return Ok(id);
    }
    let g = ctx.neutron.create_group(name, description, t).await?;
    tracing::info!(group = %g.id, name, "security group made");
    let id = g.id.clone();
    let mut c = ctx.cache();
    let s = c.tick();
    c.groups.put(&id, g, s);
    Ok(id)
}

/// Rules to delete and to create so that a group holds exactly `desired` (rules the
/// controller does not understand, and duplicates, are deleted).
pub fn diff_rules(
    current: &[RuleRec],
    desired: &BTreeSet<RuleSpec>,
) -> (Vec<String>, Vec<RuleSpec>) {
    let mut kept = BTreeSet::new();
    let mut delete = Vec::new();
    for r in current {
        match &r.spec {
            Some(s) if desired.contains(s) && kept.insert(s.clone()) => {}
            _ => delete.push(r.id.clone()),
        }
    }
    let create = desired
        .iter()
        .filter(|s| !kept.contains(*s))
        .cloned()
        .collect();
    (delete, create)
}

/// Brings a group's rules to `desired`: only the differences are written.
async fn sync_rules(ctx: &Ctx, group: &str, desired: &BTreeSet<RuleSpec>) -> Result<()> {
    let current = match ctx.cache().groups.get(group) {
        Some(g) => g.rules.clone(),
        None => return Err(Error::NotReady(format!("group {group} is not known"))),
    };
    let (delete, create) = diff_rules(&current, desired);
    if delete.is_empty() && create.is_empty() {
        return Ok(());
    }
    // Additions first: a changed rule never leaves a gap that denies.
    let created = ctx.neutron.create_rules(group, &create).await?;
    {
        let mut c = ctx.cache();
        if let Some(mut g) = c.groups.get(group).cloned() {
            g.rules.extend(created);
            let s = c.tick();
            c.groups.put(group, g, s);
        }
    }
    for id in &delete {
        ctx.neutron.delete_rule(id).await?;
        let mut c = ctx.cache();
        if let Some(mut g) = c.groups.get(group).cloned() {
            g.rules.retain(|r| &r.id != id);
            let s = c.tick();
            c.groups.put(group, g, s);
        }
    }
    tracing::debug!(
        group,
        added = create.len(),
        deleted = delete.len(),
        "rules updated"
    );
    Ok(())
}

async fn ensure_peer_group(ctx: &Ctx, key: &PeerKey) -> Result<String> {
    let hash = key.hash();
    let name = format!("sel-{}", &hash[..12.min(hash.len())]);
    let id = ensure_group(
        ctx,
        Which::Peer(hash.clone()),
        &name,
        &key.describe(),
        &tags::peer(ctx.neutron.cluster(), &hash),
    )
    .await?;
    // A set, not a filter: Neutron's default egress rules must go.
    sync_rules(ctx, &id, &BTreeSet::new()).await?;
    Ok(id)
}

/// Deletes a group once no port of the controller's holds it.
async fn delete_group(ctx: &Arc<Ctx>, id: &str) -> Result<()> {
    let holders: Vec<(String, String)> = ctx
        .cache()
        .ports
        .values()
        .filter(|p| p.security_groups.iter().any(|g| g == id))
        .map(|p| (p.id.clone(), p.device_id.clone()))
        .collect();
    for (port, device) in holders {
        let pod = ctx
            .pods()
            .into_iter()
            .find(|p| p.uid == device && p.needs_port());
        match pod {
            Some(pod) => pods::sync_groups(ctx, &pod, &port).await?,
            None if device.is_empty() => {
                let _g = ctx.locks.lock(&pods::port_lock(&port)).await;
                let p = ctx.neutron.set_port_groups(&port, &[]).await?;
                let mut c = ctx.cache();
                let s = c.tick();
                let tags = c
                    .ports
                    .get(&port)
                    .map(|o| o.tags.clone())
                    .unwrap_or_default();
                c.ports.put(&port, crate::cache::PortRec { tags, ..p }, s);
            }
            None => pods::release(ctx, &port, &device).await?,
        }
    }
    ctx.neutron.delete_group(id).await?;
    tracing::info!(group = id, "security group deleted");
    let mut c = ctx.cache();
    let s = c.tick();
    c.groups.remove(id, s);
    // Neutron deleted the rules of other groups that named it as remote group.
    let naming: Vec<crate::cache::GroupRec> = c
        .groups
        .values()
        .filter(|g| g.rules.iter().any(|r| names_group(r, id)))
        .cloned()
        .collect();
    for mut g in naming {
        g.rules.retain(|r| !names_group(r, id));
        let s = c.tick();
        c.groups.put(&g.id.clone(), g, s);
    }
    Ok(())
}

fn names_group(r: &RuleRec, group: &str) -> bool {
    r.spec
        .as_ref()
        .is_some_and(|s| s.remote_group_id.as_deref() == Some(group))
}

/// Forgets a policy (deleted, replaced by a new uid, or unusable): its ports leave its
/// groups, which are then deleted.
async fn remove_policy(ctx: &Arc<Ctx>, uid: &str) -> Result<()> {
    ctx.index_mut().policies.remove(uid);
    pods::sync_all(ctx).await?;
    let groups: Vec<String> = ctx
        .cache()
        .groups
        .values()
        .filter(|g| matches!(g.kind(), GroupKind::Policy { uid: u, .. } if u == uid))
        .map(|g| g.id.clone())
        .collect();
    for g in groups {
        delete_group(ctx, &g).await?;
    }
    Ok(())
}

fn policy_group_name(ns: &str, name: &str, named: Option<&NamedPort>) -> String {
    let base = format!("sg-{ns}-{name}");
    match named {
        Some(np) => format!("{base}-{}-{}-{}", np.proto.neutron(), np.name, np.number),
        None => base,
    }
}

/// How a policy reconcile runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Groups and rules, then every port's membership, then what the policy no longer
    /// uses is deleted.
    Full,
    /// The start-up pass: groups and rules only, into the index. No port is touched and
    /// nothing deleted while the index does not hold every policy yet (a port would
    /// briefly lose a group it is about to get back); the full reconciles that follow
    /// do the rest.
    Startup,
}

/// Reconciles one policy.
pub async fn reconcile(ctx: &Arc<Ctx>, ns: &str, name: &str, mode: Mode) -> Result<()> {
    let full = mode == Mode::Full;
    let t0 = Instant::now();
    let _peers = ctx.peer_lock.read().await;
    let np = ctx.policy(ns, name);
    let live_uid = np.as_ref().and_then(|p| p.metadata.uid.clone());
    // Groups of an earlier policy of this name (deleted, or deleted and re-created).
    let stale: BTreeSet<String> = {
        let mut s: BTreeSet<String> = ctx
            .cache()
            .groups
            .values()
            .filter_map(|g| match g.kind() {
                GroupKind::Policy {
                    uid,
                    namespace: Some(n),
                    name: Some(m),
                    ..
                } if n == ns && m == name && Some(&uid) != live_uid.as_ref() => Some(uid),
                _ => None,
            })
            .collect();
        s.extend(
            ctx.index()
                .policies
                .values()
                .filter(|p| {
                    p.namespace == ns && p.name == name && Some(&p.uid) != live_uid.as_ref()
                })
                .map(|p| p.uid.clone()),
        );
        s
    };
    if full {
        for uid in &stale {
            remove_policy(ctx, uid).await?;
        }
    }
    let (Some(np), Some(uid)) = (np, live_uid) else {
        lock(&ctx.named_port_policies).remove(&(ns.to_string(), name.to_string()));
        if !stale.is_empty() {
            // Its peer groups may be unused now.
            ctx.queue.add(crate::ctx::Key::Groups);
        }
        return Ok(());
    };
    let pods_now = ctx.pods();
    let nsl = ctx.ns_labels();
    let plan = match policy::plan(&np, &pods_now, &nsl) {
        Ok(p) => p,
        Err(reason) => {
            tracing::warn!(policy = %format!("{ns}/{name}"), %reason, "policy cannot be enforced");
            ctx.warn(np.as_ref(), "InvalidNetworkPolicy", reason).await;
            return if full {
                remove_policy(ctx, &uid).await
            } else {
                Ok(())
            };
        }
    };
    if !plan.warnings.is_empty() {
        let note = plan.warnings.join("; ");
        tracing::warn!(policy = %format!("{ns}/{name}"), %note, "parts of the policy are left out");
        ctx.warn(np.as_ref(), "NetworkPolicyPartlyEnforced", note)
            .await;
    }
    // Peer groups first: the rules name them.
    let mut peer_ids: HashMap<PeerKey, String> = HashMap::new();
    for key in plan.peers() {
        let id = ensure_peer_group(ctx, &key).await?;
        ctx.index_mut()
            .peers
            .insert(key.hash(), (key.clone(), id.clone()));
        peer_ids.insert(key, id);
    }
    let cluster = ctx.neutron.cluster().to_string();
    let main = ensure_group(
        ctx,
        Which::Policy {
            uid: uid.clone(),
            named: None,
        },
        &policy_group_name(ns, name, None),
        &format!("NetworkPolicy {ns}/{name}"),
        &tags::policy(&cluster, &uid, ns, name, None),
    )
    .await?;
    let rules = policy::materialize(&plan.main, |k| peer_ids.get(k).cloned());
    sync_rules(ctx, &main, &rules).await?;
    let mut named = BTreeMap::new();
    for (np_key, templates) in &plan.named {
        let g = ensure_group(
            ctx,
            Which::Policy {
                uid: uid.clone(),
                named: Some(np_key.clone()),
            },
            &policy_group_name(ns, name, Some(np_key)),
            &format!(
                "NetworkPolicy {ns}/{name}: port {} = {}",
                np_key.name, np_key.number
            ),
            &tags::policy(&cluster, &uid, ns, name, Some(&np_key.tag_value())),
        )
        .await?;
        let rules = policy::materialize(templates, |k| peer_ids.get(k).cloned());
        sync_rules(ctx, &g, &rules).await?;
        named.insert(np_key.clone(), g);
    }
    let peers_now: BTreeSet<String> = plan.peers().iter().map(PeerKey::hash).collect();
    let peers_before = {
        let mut idx = ctx.index_mut();
        let before = idx.policies.get(&uid).map(|p| p.peers.clone());
        idx.policies.insert(
            uid.clone(),
            PolicyGroups {
                uid: uid.clone(),
                namespace: ns.into(),
                name: name.into(),
                pod_selector: plan.pod_selector.clone(),
                ingress: plan.ingress,
                egress: plan.egress,
                group: main.clone(),
                named: named.clone(),
                peers: peers_now.clone(),
            },
        );
        before
    };
    {
        let mut np_set = lock(&ctx.named_port_policies);
        let key = (ns.to_string(), name.to_string());
        if policy_uses_named_ports(&np) {
            np_set.insert(key);
        } else {
            np_set.remove(&key);
        }
    }
    let have = np
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(GROUP_ANNOTATION));
    if have != Some(&main) {
        let api: Api<NetworkPolicy> = Api::namespaced(ctx.kube.clone(), ns);
        match ctx.annotate(api, name, &[(GROUP_ANNOTATION, &main)]).await {
            Ok(()) => {}
            Err(e) if crate::error::kube_status(&e) == Some(404) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if !full {
        return Ok(());
    }
    pods::sync_all(ctx).await?;
    ctx.metrics
        .policy_seconds
        .observe(t0.elapsed().as_secs_f64());
    // This policy's groups it no longer uses (a named port's old number, duplicates).
    let keep: HashSet<&String> = std::iter::once(&main).chain(named.values()).collect();
    let unused: Vec<String> = ctx
        .cache()
        .groups
        .values()
        .filter(|g| matches!(g.kind(), GroupKind::Policy { uid: u, .. } if u == uid))
        .filter(|g| !keep.contains(&g.id))
        .map(|g| g.id.clone())
        .collect();
    for g in unused {
        delete_group(ctx, &g).await?;
    }
    if peers_before.is_some_and(|b| b != peers_now) {
        // Peer groups the policy's earlier version named may be unused now.
        ctx.queue.add(crate::ctx::Key::Groups);
    }
    tracing::debug!(policy = %format!("{ns}/{name}"), ms = t0.elapsed().as_millis() as u64, "policy reconciled");
    Ok(())
}

fn policy_uses_named_ports(np: &NetworkPolicy) -> bool {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let Some(spec) = &np.spec else {
        return false;
    };
    let named = |ports: Option<&Vec<k8s_openapi::api::networking::v1::NetworkPolicyPort>>| {
        ports
            .into_iter()
            .flatten()
            .any(|p| matches!(p.port, Some(IntOrString::String(_))))
    };
    spec.ingress
        .iter()
        .flatten()
        .any(|r| named(r.ports.as_ref()))
        || spec
            .egress
            .iter()
            .flatten()
            .any(|r| named(r.ports.as_ref()))
}

/// The cluster-wide groups: the allow-all groups exist with their rules; then (unless
/// `mode` is the start-up pass, see [`Mode`]) peer groups no live policy names, groups
/// of policies that are gone, duplicates and unknown groups of the cluster are emptied
/// of ports and deleted.
pub async fn reconcile_groups(ctx: &Arc<Ctx>, mode: Mode) -> Result<()> {
    let _w = ctx.peer_lock.write().await;
    let cluster = ctx.neutron.cluster().to_string();
    for (dir, name) in [
        (Direction::Ingress, "allow-all-ingress"),
        (Direction::Egress, "allow-all-egress"),
    ] {
        let id = ensure_group(
            ctx,
            Which::AllowAll(dir),
            name,
            "Pods that no NetworkPolicy isolates in this direction",
            &tags::allow_all(&cluster, dir.neutron()),
        )
        .await?;
        sync_rules(ctx, &id, &policy::allow_all_rules(dir)).await?;
        let mut idx = ctx.index_mut();
        match dir {
            Direction::Ingress => idx.allow_ingress = Some(id),
            Direction::Egress => idx.allow_egress = Some(id),
        }
    }
    if mode == Mode::Startup {
        return Ok(());
    }
    let pods_now = ctx.pods();
    let nsl = ctx.ns_labels();
    let mut referenced = HashSet::new();
    let mut live_uids = HashSet::new();
    for np in ctx.stores.policies.state() {
        if let Some(uid) = &np.metadata.uid {
            live_uids.insert(uid.clone());
        }
        if let Ok(plan) = policy::plan(&np, &pods_now, &nsl) {
            referenced.extend(plan.peers().iter().map(PeerKey::hash));
        }
    }
    let doomed = doomed_groups(ctx, &referenced, &live_uids);
    if doomed.is_empty() {
        return Ok(());
    }
    {
        let mut idx = ctx.index_mut();
        idx.peers
            .retain(|h, (_, id)| referenced.contains(h) && !doomed.contains(id));
        idx.policies.retain(|uid, _| live_uids.contains(uid));
    }
    pods::sync_all(ctx).await?;
    let mut first_err = None;
    for id in &doomed {
        if let Err(e) = delete_group(ctx, id).await {
            tracing::warn!(group = %id, error = %e, "cannot delete a group yet");
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

fn doomed_groups(
    ctx: &Ctx,
    referenced: &HashSet<String>,
    live_uids: &HashSet<String>,
) -> BTreeSet<String> {
    let idx_allow: HashSet<String> = {
        let idx = ctx.index();
        idx.allow_ingress
            .iter()
            .chain(idx.allow_egress.iter())
            .cloned()
            .collect()
    };
    let c = ctx.cache();
    let groups: Vec<(String, GroupKind)> = c
        .groups
        .values()
        .map(|g| (g.id.clone(), g.kind()))
        .collect();
    drop(c);
    doomed(&groups, referenced, live_uids, &idx_allow)
}

/// The pure part: which of the cluster's groups go.
pub fn doomed(
    groups: &[(String, GroupKind)],
    referenced: &HashSet<String>,
    live_uids: &HashSet<String>,
    allow: &HashSet<String>,
) -> BTreeSet<String> {
    // The canonical (lowest id) group of each peer hash.
    let mut canonical: HashMap<&str, &str> = HashMap::new();
    for (id, k) in groups {
        if let GroupKind::Peer(h) = k {
            let e = canonical.entry(h.as_str()).or_insert(id.as_str());
            if id.as_str() < *e {
                *e = id.as_str();
            }
        }
    }
    groups
        .iter()
        .filter(|(id, k)| match k {
            GroupKind::Peer(h) => {
                !referenced.contains(h) || canonical.get(h.as_str()) != Some(&id.as_str())
            }
            GroupKind::AllowAll(_) => !allow.contains(id),
            GroupKind::Policy { uid, .. } => !live_uids.contains(uid),
            GroupKind::Unknown => true,
        })
        .map(|(id, _)| id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::EtherType;

    fn rule(port: u16) -> RuleSpec {
        RuleSpec {
            direction: Direction::Ingress,
            ethertype: EtherType::V4,
            protocol: Some(crate::view::Proto::Tcp),
            port_min: Some(port),
            port_max: Some(port),
            remote_ip_prefix: None,
            remote_group_id: None,
        }
    }

    #[test]
    fn rule_diff_writes_only_differences() {
        let current = vec![
            RuleRec {
                id: "r80".into(),
                spec: Some(rule(80)),
            },
            RuleRec {
                id: "r80-dup".into(),
                spec: Some(rule(80)),
            },
            RuleRec {
                id: "r22".into(),
                spec: Some(rule(22)),
            },
            RuleRec {
                id: "icmp".into(),
                spec: None,
            },
        ];
        let desired: BTreeSet<RuleSpec> = [rule(80), rule(443)].into();
        let (del, add) = diff_rules(&current, &desired);
        assert_eq!(del, vec!["r80-dup", "r22", "icmp"]);
        assert_eq!(add, vec![rule(443)]);
        let (del, add) = diff_rules(&current[..1], &[rule(80)].into());
        assert!(del.is_empty() && add.is_empty(), "nothing to write");
        // Neutron's default egress rules on a new peer group all go.
        let (del, add) = diff_rules(&current, &BTreeSet::new());
        assert_eq!(del.len(), 4);
        assert!(add.is_empty());
    }

    #[test]
    fn which_groups_go() {
        let pol = |uid: &str| GroupKind::Policy {
            uid: uid.into(),
            namespace: Some("ns".into()),
            name: Some("p".into()),
            named: None,
        };
        let groups = vec![
            ("a1".to_string(), GroupKind::AllowAll(Direction::Ingress)),
            ("a2".to_string(), GroupKind::AllowAll(Direction::Ingress)),
            ("p-live".to_string(), pol("u1")),
            ("p-dead".to_string(), pol("u0")),
            ("s1".to_string(), GroupKind::Peer("h1".into())),
            ("s0".to_string(), GroupKind::Peer("h1".into())),
            ("s2".to_string(), GroupKind::Peer("h2".into())),
            ("x".to_string(), GroupKind::Unknown),
        ];
        let referenced: HashSet<String> = ["h1".to_string()].into();
        let live: HashSet<String> = ["u1".to_string()].into();
        let allow: HashSet<String> = ["a1".to_string()].into();
        let d = doomed(&groups, &referenced, &live, &allow);
        let want: BTreeSet<String> = ["a2", "p-dead", "s1", "s2", "x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            d, want,
            "duplicate allow-all, dead policy, duplicate and unused peers, unknown"
        );
    }

    #[test]
    fn group_names() {
        assert_eq!(policy_group_name("ns", "web", None), "sg-ns-web");
        let np = NamedPort {
            proto: crate::view::Proto::Tcp,
            name: "http".into(),
            number: 8080,
        };
        assert_eq!(
            policy_group_name("ns", "web", Some(&np)),
            "sg-ns-web-tcp-http-8080"
        );
        assert!(Which::Peer("h".into()).matches(&GroupKind::Peer("h".into())));
        assert!(!Which::Peer("h".into()).matches(&GroupKind::Peer("g".into())));
        let main = Which::Policy {
            uid: "u".into(),
            named: None,
        };
        let group = |named| GroupKind::Policy {
            uid: "u".into(),
            namespace: None,
            name: None,
            named,
        };
        assert!(main.matches(&group(None)));
        // The policy's main group is not its named-port group.
        assert!(!main.matches(&group(Some(np))));
    }
}
