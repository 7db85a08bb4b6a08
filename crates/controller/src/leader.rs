//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection
//! does it: the holder renews `renewTime` every retry period; another candidate takes the
//! lease over only when it has seen the same holder and renewTime for a whole lease
//! duration on its own clock (no trust in clock agreement); the holder that cannot renew
//! within the renew deadline stops acting before anyone may take over. Updates go
//! through the Lease's resourceVersion, so two candidates never both win.
//!
//! The identity defaults to the host name: a controller restarted on the same host
//! (kill -9, then start) is the same candidate and resumes at once instead of waiting
//! out its own lease.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::Error;

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    /// The lease goes with this object (the controller's Deployment: `kubectl delete`
    /// of kuryr's manifests removes the lease through the garbage collector).
    pub owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
}

/// What a candidate does after reading the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Create,
    Renew,
    TakeOver,
    /// Someone else holds it.
    Wait(String),
}

/// `unchanged_for`: how long this candidate has seen the same holder and renewTime.
pub fn decide(
    spec: Option<&LeaseSpec>,
    me: &str,
    unchanged_for: Duration,
    lease_duration: Duration,
) -> Step {
    let Some(spec) = spec else {
        return Step::Create;
    };
    match spec.holder_identity.as_deref() {
        Some(h) if h == me => Step::Renew,
        None | Some("") => Step::TakeOver,
        Some(h) => {
            // The holder's own duration if it says one, ours otherwise.
            let d = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs)
                .unwrap_or(lease_duration);
            if unchanged_for >= d {
                Step::TakeOver
            } else {
                Step::Wait(h.to_string())
            }
        }
    }
}

/// What a candidate remembers of the lease between reads.
#[derive(Debug, Default)]
struct Observed {
    record: Option<(Option<String>, Option<Timestamp>)>,
    since: Option<Instant>,
}

impl Observed {
    fn see(&mut self, spec: Option<&LeaseSpec>, now: Instant) -> Duration {
        let rec = spec.map(|s| {
            (
                s.holder_identity.clone(),
                s.renew_time.as_ref().map(|t| t.0),
            )
        });
        let rec = rec.unwrap_or((None, None));
        if self.record.as_ref() != Some(&rec) {
            self.record = Some(rec);
            self.since = Some(now);
        }
        self.since
            .map(|s| now.duration_since(s))
            .unwrap_or_default()
    }
}

fn lease_spec(cfg: &LeaseConfig, old: Option<&LeaseSpec>, take_over: bool) -> LeaseSpec {
    let now = MicroTime(Timestamp::now());
    let mut spec = old.cloned().unwrap_or_default();
    spec.holder_identity = Some(cfg.identity.clone());
    spec.lease_duration_seconds = i32::try_from(cfg.lease_duration.as_secs()).ok();
    spec.renew_time = Some(now.clone());
    if take_over || old.is_none() {
        spec.acquire_time = Some(now);
        spec.lease_transitions = Some(
            old.and_then(|s| s.lease_transitions)
                .unwrap_or(0)
                .saturating_add(i32::from(old.is_some())),
        );
    }
    spec
}

/// One round: `Ok(true)` when this candidate holds the lease now.
async fn round(api: &Api<Lease>, cfg: &LeaseConfig, seen: &mut Observed) -> Result<bool, Error> {
    let lease = api.get_opt(&cfg.name).await?;
    let spec = lease.as_ref().and_then(|l| l.spec.as_ref());
    let unchanged = seen.see(spec, Instant::now());
    let step = decide(spec, &cfg.identity, unchanged, cfg.lease_duration);
    let pp = PostParams::default();
    let result = match (&step, lease) {
        (Step::Wait(holder), _) => {
            tracing::debug!(%holder, "the lease is held by another controller");
            return Ok(false);
        }
        (Step::Create, _) => {
            let l = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    owner_references: cfg.owner.clone().map(|o| vec![o]),
                    ..Default::default()
                },
                spec: Some(lease_spec(cfg, None, true)),
            };
            api.create(&pp, &l).await.map(|_| ())
        }
        (_, Some(mut l)) => {
            if let Some(o) = &cfg.owner {
                l.metadata.owner_references = Some(vec![o.clone()]);
            }
            l.spec = Some(lease_spec(cfg, l.spec.as_ref(), step == Step::TakeOver));
            api.replace(&cfg.name, &pp, &l).await.map(|_| ())
        }
        (_, None) => return Ok(false),
    };
    match result {
        Ok(()) => {
            if step == Step::TakeOver {
                tracing::info!(identity = %cfg.identity, lease = %cfg.name, "took the lease over");
            }
            Ok(true)
        }
        // Someone else wrote first: not ours this round.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Runs the election until `stop` fires; `tx` carries whether this process leads. On
/// stop, a held lease is given up (holder cleared) so that another replica takes over
/// without waiting for it to expire.
pub async fn run(
    api: Api<Lease>,
    cfg: LeaseConfig,
    tx: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut seen = Observed::default();
    let mut last_renew: Option<Instant> = None;
    loop {
        match round(&api, &cfg, &mut seen).await {
            Ok(true) => {
                if last_renew.is_none() {
                    tracing::info!(identity = %cfg.identity, lease = %cfg.name, "leading");
                }
                last_renew = Some(Instant::now());
            }
            Ok(false) => last_renew = None,
            Err(e) => tracing::warn!(error = %e, "leader election: cannot read or write the lease"),
        }
        let leading = last_renew.is_some_and(|t| t.elapsed() < cfg.renew_deadline);
        if *tx.borrow() != leading {
            if !leading {
                tracing::warn!(identity = %cfg.identity, "no longer the leader");
            }
            let _ = tx.send(leading);
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.retry_period) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    if *tx.borrow() {
        let _ = tx.send(false);
        if let Ok(Some(mut l)) = api.get_opt(&cfg.name).await
            && l.spec.as_ref().and_then(|s| s.holder_identity.as_deref())
                == Some(cfg.identity.as_str())
        {
            if let Some(s) = l.spec.as_mut() {
                s.holder_identity = None;
                s.lease_duration_seconds = Some(1);
            }
            match api.replace(&cfg.name, &PostParams::default(), &l).await {
                Ok(_) => tracing::info!("gave up the lease"),
                Err(e) => tracing::warn!(error = %e, "could not give up the lease"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(15);

    fn spec(holder: Option<&str>, secs: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: secs,
            ..Default::default()
        }
    }

    #[test]
    fn decisions() {
        assert_eq!(decide(None, "me", Duration::ZERO, D), Step::Create);
        let mine = spec(Some("me"), Some(15));
        assert_eq!(decide(Some(&mine), "me", Duration::ZERO, D), Step::Renew);
        let theirs = spec(Some("other"), Some(15));
        assert_eq!(
            decide(Some(&theirs), "me", Duration::from_secs(14), D),
            Step::Wait("other".into())
        );
        assert_eq!(
            decide(Some(&theirs), "me", Duration::from_secs(15), D),
            Step::TakeOver
        );
        // The holder's own duration wins over ours.
        let long = spec(Some("other"), Some(60));
        assert_eq!(
            decide(Some(&long), "me", Duration::from_secs(30), D),
            Step::Wait("other".into())
        );
        let released = spec(None, Some(1));
        assert_eq!(
            decide(Some(&released), "me", Duration::ZERO, D),
            Step::TakeOver
        );
        let empty = spec(Some(""), None);
        assert_eq!(
            decide(Some(&empty), "me", Duration::ZERO, D),
            Step::TakeOver
        );
    }

    #[test]
    fn expiry_is_measured_on_our_clock() {
        let mut o = Observed::default();
        let t0 = Instant::now();
        let s1 = spec(Some("other"), Some(15));
        assert_eq!(o.see(Some(&s1), t0), Duration::ZERO);
        assert_eq!(o.see(Some(&s1), t0 + D), D);
        // A renewal (new renewTime) restarts the count.
        let mut s2 = s1.clone();
        s2.renew_time = Some(MicroTime(Timestamp::now()));
        assert_eq!(o.see(Some(&s2), t0 + D), Duration::ZERO);
        assert_eq!(
            o.see(Some(&s2), t0 + D + Duration::from_secs(3)),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn specs_written() {
        let cfg = LeaseConfig {
            namespace: "kube-system".into(),
            name: "kuryr-controller".into(),
            identity: "me".into(),
            lease_duration: D,
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            owner: None,
        };
        let first = lease_spec(&cfg, None, true);
        assert_eq!(first.holder_identity.as_deref(), Some("me"));
        assert_eq!(first.lease_transitions, Some(0));
        assert_eq!(first.lease_duration_seconds, Some(15));
        assert!(first.acquire_time.is_some() && first.renew_time.is_some());
        let mut theirs = spec(Some("other"), Some(15));
        theirs.lease_transitions = Some(3);
        let taken = lease_spec(&cfg, Some(&theirs), true);
        assert_eq!(taken.lease_transitions, Some(4));
        let renewed = lease_spec(&cfg, Some(&first), false);
        assert_eq!(renewed.lease_transitions, Some(0));
        assert_eq!(renewed.acquire_time, first.acquire_time);
    }
}
