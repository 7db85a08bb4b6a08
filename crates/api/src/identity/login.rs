//! Secret checks (passwords, application credential secrets) under a bound: argon2
//! costs ~19 MiB and tens of ms of CPU per check, so at most `concurrency` run at
//! once, on as many threads of their own (not tokio's blocking pool: each of its many
//! threads would keep its own malloc arena holding an argon2 block); a few more may
//! wait briefly for a turn, and the rest are refused at once (503) instead of queueing
//! without bound. Every check costs the same whether the account exists or not: an
//! unknown name is checked against a dummy hash of the same parameters.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use tokio::sync::Semaphore;

#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    /// Secret checks running at once.
    pub concurrency: usize,
    /// How long a check may wait for a turn before it is refused.
    pub wait: Duration,
    /// Checks allowed to wait at once (beyond them, refused without waiting).
    pub queue: usize,
}

impl Default for LoginLimits {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        LoginLimits {
            concurrency: cpus.max(1),
            wait: Duration::from_secs(2),
            queue: cpus.max(1) * 16,
        }
    }
}

/// Too many secret checks at once: the caller answers 503 with Retry-After.
#[derive(Debug, thiserror::Error)]
pub enum Busy {
    #[error("too many logins in progress")]
    Saturated,
    #[error("the secret check's thread is gone")]
    Gone,
}

type Job = Box<dyn FnOnce() + Send>;

pub struct Gate {
    limits: LoginLimits,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    /// An argon2 hash of a random secret, checked when there is no real hash to check.
    dummy: String,
    /// To the `concurrency` threads that run the checks (they end with the gate).
    jobs: Mutex<mpsc::Sender<Job>>,
}

/// Decrements the waiting count however the wait ends (the request may be dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Gate {
    pub fn new(limits: LoginLimits, dummy: String) -> Gate {
        let n = limits.concurrency.max(1);
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..n {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("kuryr-login-{i}"))
                .spawn(move || {
                    loop {
                        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a login thread");
            }
        }
        Gate {
            permits: Arc::new(Semaphore::new(n)),
            limits,
            waiting: AtomicUsize::new(0),
            dummy,
            jobs: Mutex::new(tx),
        }
    }

    /// Runs `f` on a login thread, holding a turn.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        let permit = self.turn().await?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _permit = permit;
            let _ = tx.send(f());
        });
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .map_err(|_| Busy::Gone)?;
        rx.await.map_err(|_| Busy::Gone)
    }

    /// A turn to run one argon2 computation, waiting briefly for it.
    async fn turn(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Busy> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return Ok(p);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.limits.queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Busy::Saturated);
        }
        let _w = Waiting(&self.waiting);
        match tokio::time::timeout(self.limits.wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(Busy::Saturated),
        }
    }

    /// Checks `secret` against `hash` (or against the dummy hash when `hash` is
    /// `None` or empty, and then answers false). Same cost in every case.
    pub async fn check(&self, secret: String, hash: Option<String>) -> Result<bool, Busy> {
        let real = hash.filter(|h| !h.is_empty());
        let target = real.clone().unwrap_or_else(|| self.dummy.clone());
        let ok = self
            .run(move || super::verify_password(&secret, &target))
            .await?;
        Ok(ok && real.is_some())
    }

    /// Hashes a new secret under the same bound.
    pub async fn hash(&self, secret: String) -> Result<Result<String, super::IdentityError>, Busy> {
        self.run(move || super::hash_password(&secret)).await
    }

    /// Secret checks waiting for a turn now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(limits: LoginLimits) -> Gate {
        Gate::new(limits, super::super::hash_password("dummy").unwrap())
    }

    #[tokio::test]
    async fn unknown_accounts_are_checked_against_the_dummy_and_fail() {
        let g = gate(LoginLimits::default());
        let real = super::super::hash_password("pw").unwrap();
        assert!(g.check("pw".into(), Some(real.clone())).await.unwrap());
        assert!(!g.check("nope".into(), Some(real)).await.unwrap());
        // The dummy's own secret never logs in: there is no account behind it.
        assert!(!g.check("dummy".into(), None).await.unwrap());
        assert!(!g.check("dummy".into(), Some(String::new())).await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_beyond_the_queue_is_refused_not_queued() {
        let g = Arc::new(gate(LoginLimits {
            concurrency: 1,
            wait: Duration::from_secs(30),
            queue: 2,
        }));
        // The one turn is taken here, so both checks below wait; the next is refused.
        let held = g.permits.clone().acquire_owned().await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let g = g.clone();
            tasks.push(tokio::spawn(async move { g.check("x".into(), None).await }));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while g.waiting() < 2 {
            assert!(tokio::time::Instant::now() < deadline, "two never waited");
            tokio::task::yield_now().await;
        }
        let refused = g.check("x".into(), None).await;
        assert!(matches!(refused, Err(Busy::Saturated)), "{refused:?}");
        drop(held);
        for t in tasks {
            assert!(!t.await.unwrap().unwrap());
        }
        // Positive control: with the queue drained a check runs again.
        assert!(!g.check("x".into(), None).await.unwrap());
        assert_eq!(g.waiting(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wait_past_the_limit_is_refused() {
        let g = Arc::new(gate(LoginLimits {
            concurrency: 1,
            wait: Duration::from_millis(1),
            queue: 10,
        }));
        let held = g.permits.clone().acquire_owned().await.unwrap();
        assert!(matches!(
            g.check("x".into(), None).await,
            Err(Busy::Saturated)
        ));
        drop(held);
        assert!(!g.check("x".into(), None).await.unwrap());
    }
}
