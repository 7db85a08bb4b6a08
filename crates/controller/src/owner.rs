//! The workload a kuryr process runs in (`--owner-daemonset` for the agent,
//! `--owner-deployment` for the controller), so that `kubectl delete -f` of kuryr's
//! manifests removes what kuryr made, while a rolling update, a deleted pod or an
//! orphaning delete (`--cascade=orphan`) leaves it alone.
//!
//! The decision is taken when the process is told to stop (SIGTERM: its pod is being
//! deleted): kuryr is being uninstalled when the workload it started under is gone,
//! is being deleted, or was replaced by another of the same name (a new uid). A watch
//! on the workload (RBAC: get, list, watch of that one name) records its deletion as
//! it happens, because `kubectl delete -f` also deletes the ServiceAccount, after
//! which a question asked at SIGTERM time could not be answered; the question is
//! still asked when the watch saw nothing (a SIGTERM that overtook the event).
//! Anything unclear keeps the dataplane: stopping without cleaning is recoverable,
//! cleaning by mistake is an outage.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher;
use tokio::sync::watch;

use crate::error::{Error, Result, kube_status};

/// The kinds of workload kuryr runs as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    DaemonSet,
    Deployment,
}

impl Kind {
    fn resource(self) -> ApiResource {
        let kind = match self {
            Kind::DaemonSet => "DaemonSet",
            Kind::Deployment => "Deployment",
        };
        ApiResource::from_gvk(&GroupVersionKind::gvk("apps", "v1", kind))
    }
}

/// A workload named NAMESPACE/NAME.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl Workload {
    /// Parses NAMESPACE/NAME.
    pub fn parse(kind: Kind, s: &str) -> std::result::Result<Workload, String> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Workload {
                    kind,
                    namespace: ns.into(),
                    name: name.into(),
                })
            }
            _ => Err(format!("{s:?}: expected NAMESPACE/NAME")),
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// For clap: `--owner-daemonset NS/NAME`.
#[derive(Clone, Debug)]
pub struct DaemonSetName(pub Workload);

impl FromStr for DaemonSetName {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Workload::parse(Kind::DaemonSet, s).map(DaemonSetName)
    }
}

/// For clap: `--owner-deployment NS/NAME`.
#[derive(Clone, Debug)]
pub struct DeploymentName(pub Workload);

impl FromStr for DeploymentName {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Workload::parse(Kind::Deployment, s).map(DeploymentName)
    }
}

/// The workload this process started under, watched.
pub struct Owner {
    workload: Workload,
    api: Api<DynamicObject>,
    uid: String,
    gone: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// What the answer to "is it gone?" is when the workload is there: gone if it is
/// being deleted or is another object of the same name.
fn gone_if(obj: &DynamicObject, uid: &str) -> bool {
    obj.metadata.deletion_timestamp.is_some() || obj.metadata.uid.as_deref() != Some(uid)
}

impl Owner {
    /// Reads the workload (it must exist: the process runs in it) and starts watching it.
    pub async fn watch(kube: kube::Client, workload: Workload) -> Result<Owner> {
        let api = Api::<DynamicObject>::namespaced_with(
            kube,
            &workload.namespace,
            &workload.kind.resource(),
        );
        let obj = api
            .get(&workload.name)
            .await
            .map_err(|e| match kube_status(&e) {
                Some(404) => Error::Config(format!("{workload} does not exist")),
                _ => Error::Kube(e),
            })?;
        let uid = obj
            .metadata
            .uid
            .clone()
            .ok_or_else(|| Error::Config(format!("{workload} has no uid")))?;
        let (tx, gone) = watch::channel(gone_if(&obj, &uid));
        let cfg = watcher::Config::default().fields(&format!("metadata.name={}", workload.name));
        let stream = watcher::watcher(api.clone(), cfg);
        let (w, u) = (workload.clone(), uid.clone());
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            // A relist's objects, to tell "absent after a relist" (deleted while the
            // watch was down) from a relist in progress.
            let mut listed = false;
            while let Some(ev) = stream.next().await {
                let now_gone = match ev {
                    Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::InitApply(o)) => {
                        listed = true;
                        gone_if(&o, &u)
                    }
                    Ok(watcher::Event::Delete(_)) => true,
                    Ok(watcher::Event::Init) => {
                        listed = false;
                        continue;
                    }
                    Ok(watcher::Event::InitDone) if !listed => true,
                    Ok(watcher::Event::InitDone) => continue,
                    Err(e) => {
                        tracing::debug!(workload = %w, error = %e, "watch of the owner interrupted");
                        continue;
                    }
                };
                if now_gone && !*tx.borrow() {
                    tracing::info!(workload = %w, "the workload kuryr runs in is deleted");
                    let _ = tx.send(true);
                }
            }
        });
        Ok(Owner {
            workload,
            api,
            uid,
            gone,
            task,
        })
    }

    pub fn workload(&self) -> &Workload {
        &self.workload
    }

    /// An owner reference to the workload (for objects that should go with it).
    pub fn reference(&self) -> OwnerReference {
        let ar = self.workload.kind.resource();
        OwnerReference {
            api_version: ar.api_version,
            kind: ar.kind,
            name: self.workload.name.clone(),
            uid: self.uid.clone(),
            ..Default::default()
        }
    }

    /// Whether kuryr is being uninstalled: asked when the process is told to stop.
    pub async fn is_gone(&self) -> bool {
        if *self.gone.borrow() {
            return true;
        }
        let read = tokio::time::timeout(Duration::from_secs(3), self.api.get(&self.workload.name));
        match read.await {
            Ok(Ok(obj)) => gone_if(&obj, &self.uid),
            Ok(Err(e)) if kube_status(&e) == Some(404) => true,
            Ok(Err(e)) => {
                tracing::warn!(workload = %self.workload, error = %e,
                    "cannot tell whether kuryr is being removed: keeping what it made");
                false
            }
            Err(_) => {
                tracing::warn!(workload = %self.workload,
                    "no answer on whether kuryr is being removed: keeping what it made");
                false
            }
        }
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_namespace_and_name() {
        let w = Workload::parse(Kind::DaemonSet, "kube-system/kuryr-agent").unwrap();
        assert_eq!(
            (w.namespace.as_str(), w.name.as_str()),
            ("kube-system", "kuryr-agent")
        );
        for bad in ["kuryr-agent", "/x", "x/", "a/b/c", ""] {
            assert!(Workload::parse(Kind::Deployment, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn gone_when_deleting_or_replaced() {
        let mut o = DynamicObject::new("x", &Kind::DaemonSet.resource());
        o.metadata.uid = Some("u1".into());
        assert!(!gone_if(&o, "u1"));
        assert!(gone_if(&o, "u2"), "another object of the same name");
        o.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ));
        assert!(gone_if(&o, "u1"), "being deleted");
    }
}
