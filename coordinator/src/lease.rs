//! The control-plane lease: one record that every control-plane membership
//! change (join, removal, replacement) must hold.
//!
//! Why: since Kubernetes 1.29 kubeadm joins etcd members as learners and etcd
//! admits one learner at a time, so two concurrent control-plane joins make
//! one of them fail halfway. The lease names its holder and expires, so a
//! crashed holder cannot block changes forever; a live holder renews it.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kh::time::{rfc3339, unix_ms, Clock};

use crate::error::CoordError;
use crate::store::Db;
use crate::Coordinator;

const KEY: &str = "lease/control-plane";
/// A holder that stops renewing loses the lease after this long.
pub const TTL: Duration = Duration::from_secs(120);
/// A holder renews this often, so a few missed renewals still keep it.
const RENEW_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lease {
    /// Who holds it, e.g. "rollout prod" or "etcd replace cp-2".
    pub holder: String,
    /// What it is doing right now, for operators who wait on it.
    pub purpose: String,
    pub acquired_ms: u64,
    pub expires_ms: u64,
}

/// Takes the lease for `holder`, or returns who holds it. Re-taking a lease
/// one already holds renews it, so a resumed operation picks up its own.
pub fn acquire(
    db: &Db,
    clock: &dyn Clock,
    holder: &str,
    purpose: &str,
) -> Result<Result<Lease, Lease>, CoordError> {
    loop {
        let now = unix_ms(clock.now());
        let current: Option<Lease> = db.get_json(KEY)?;
        if let Some(l) = &current {
            if l.holder != holder && l.expires_ms > now {
                return Ok(Err(l.clone()));
            }
        }
        let new = Lease {
            holder: holder.to_string(),
            purpose: purpose.to_string(),
            acquired_ms: match &current {
                Some(l) if l.holder == holder && l.expires_ms > now => l.acquired_ms,
                _ => now,
            },
            expires_ms: now + TTL.as_millis() as u64,
        };
        // Compare-and-swap against exactly what was read: of two racing
        // coordinators' tasks, one wins and the other reads the winner.
        if db.cas_json(KEY, current.as_ref(), Some(&new))? {
            return Ok(Ok(new));
        }
    }
}

/// Extends a held lease. Fails if someone else took it after it expired.
pub fn renew(db: &Db, clock: &dyn Clock, holder: &str, purpose: &str) -> Result<Lease, CoordError> {
    match acquire(db, clock, holder, purpose)? {
        Ok(l) => Ok(l),
        Err(other) => Err(CoordError::FailedPrecondition(format!(
            "lost the control-plane lease to {:?} ({}); stopping before changing control-plane membership",
            other.holder, other.purpose
        ))),
    }
}

pub fn release(db: &Db, holder: &str) -> Result<(), CoordError> {
    let current: Option<Lease> = db.get_json(KEY)?;
    if let Some(l) = &current {
        if l.holder == holder {
            db.cas_json(KEY, Some(l), None)?;
        }
    }
    Ok(())
}

pub fn current(db: &Db, clock: &dyn Clock) -> Result<Option<Lease>, CoordError> {
    let now = unix_ms(clock.now());
    Ok(db.get_json::<Lease>(KEY)?.filter(|l| l.expires_ms > now))
}

pub fn describe(l: &Lease) -> String {
    format!(
        "{} holds the control-plane lease since {} ({}); it expires at {} unless renewed",
        l.holder,
        rfc3339(l.acquired_ms),
        l.purpose,
        rfc3339(l.expires_ms)
    )
}

/// The lease is held by another operation: the one refusal every holder
/// gives, naming who holds it, since when, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the control-plane lease is busy: {} holds it since {} ({}); it expires at {} unless renewed. No control-plane membership was changed by this operation",
    .0.holder,
    rfc3339(.0.acquired_ms),
    .0.purpose,
    rfc3339(.0.expires_ms)
)]
pub struct Busy(pub Lease);

impl Busy {
    /// What the operator does about a busy lease.
    pub const HINT: &'static str = "wait for that operation to finish (`khctl operation status` shows it), then run this command again";
}

impl From<Busy> for crate::rollout::ops::Failure {
    fn from(b: Busy) -> Self {
        crate::rollout::ops::Failure {
            // Refused by a precondition, like every "another operation is
            // running" refusal: khctl gives it the precondition exit code.
            class: "preflight",
            node: String::new(),
            step: "lease".into(),
            message: b.to_string(),
            hint: Busy::HINT.into(),
            report: None,
        }
    }
}

/// How [`hold_waiting`] waits for a busy lease: up to `patience`, trying
/// again `every` so often and telling `on_busy` who holds it each time.
pub struct Wait<F> {
    pub patience: Duration,
    pub every: Duration,
    pub on_busy: F,
}

/// A busy callback for holders that do not wait.
type NoWait = fn(&Lease) -> std::future::Ready<()>;

/// Holds the control-plane lease while `work` runs: takes it (or refuses
/// with [`Busy`] at once), renews it while `work` runs, and releases it
/// afterwards, whether `work` succeeded or not. Pass a large `work` boxed
/// (`Box::pin`): the helper carries it by value, and an unboxed operation's
/// whole future would be copied on the stack of the task's thread.
pub async fn hold<T, E>(
    coord: &Coordinator,
    holder: &str,
    purpose: &str,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E>
where
    E: From<Busy> + From<CoordError>,
{
    hold_with(
        &coord.db,
        coord.clock.clone(),
        holder,
        purpose,
        RENEW_EVERY,
        None::<Wait<NoWait>>,
        work,
    )
    .await
}

/// [`hold`], but a busy lease is waited for as `wait` says before the
/// refusal: a rollout's control-plane join waits for a short reset or
/// replacement to finish rather than fail.
pub async fn hold_waiting<T, E, F, Fut>(
    coord: &Coordinator,
    holder: &str,
    purpose: &str,
    wait: Wait<F>,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E>
where
    E: From<Busy> + From<CoordError>,
    F: FnMut(&Lease) -> Fut,
    Fut: Future<Output = ()>,
{
    hold_with(
        &coord.db,
        coord.clock.clone(),
        holder,
        purpose,
        RENEW_EVERY,
        Some(wait),
        work,
    )
    .await
}

/// Stops the renewal task when the holder is done, or dropped mid-work.
struct Renewer(tokio::task::JoinHandle<()>);

impl Drop for Renewer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn hold_with<T, E, F, Fut>(
    db: &Db,
    clock: Arc<dyn Clock>,
    holder: &str,
    purpose: &str,
    renew_every: Duration,
    mut wait: Option<Wait<F>>,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E>
where
    E: From<Busy> + From<CoordError>,
    F: FnMut(&Lease) -> Fut,
    Fut: Future<Output = ()>,
{
    let waited = Instant::now();
    loop {
        match acquire(db, clock.as_ref(), holder, purpose)? {
            Ok(_) => break,
            Err(other) => match wait.as_mut() {
                Some(w) if waited.elapsed() <= w.patience => {
                    (w.on_busy)(&other).await;
                    tokio::time::sleep(w.every).await;
                }
                _ => return Err(Busy(other).into()),
            },
        }
    }
    let renewer = {
        let (db, holder, purpose) = (db.clone(), holder.to_string(), purpose.to_string());
        let clock = clock.clone();
        Renewer(tokio::spawn(async move {
            loop {
                tokio::time::sleep(renew_every).await;
                if let Err(e) = renew(&db, clock.as_ref(), &holder, &purpose) {
                    tracing::error!(error = %e, "control-plane lease renewal failed");
                }
            }
        }))
    };
    let r = work.await;
    drop(renewer);
    release(db, holder)?;
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use kh::time::ManualClock;

    #[test]
    fn one_holder_at_a_time_until_release_or_expiry() {
        let db = Db::in_memory();
        let clock = ManualClock::at_unix_ms(1_000_000);
        let a = acquire(&db, &clock, "rollout prod", "joining cp-2")
            .unwrap()
            .unwrap();
        assert_eq!(a.holder, "rollout prod");
        let held = acquire(&db, &clock, "etcd replace cp-2", "x")
            .unwrap()
            .unwrap_err();
        assert_eq!(held.purpose, "joining cp-2");
        // The holder renews; the acquisition time stays.
        clock.advance(Duration::from_secs(60));
        let r = renew(&db, &clock, "rollout prod", "joining cp-3").unwrap();
        assert_eq!(r.acquired_ms, a.acquired_ms);
        assert!(r.expires_ms > a.expires_ms);
        release(&db, "rollout prod").unwrap();
        assert!(acquire(&db, &clock, "etcd replace cp-2", "x")
            .unwrap()
            .is_ok());
    }

    #[test]
    fn a_crashed_holder_loses_the_lease_when_it_expires() {
        let db = Db::in_memory();
        let clock = ManualClock::at_unix_ms(1_000_000);
        acquire(&db, &clock, "rollout prod", "joining cp-2")
            .unwrap()
            .unwrap();
        clock.advance(TTL + Duration::from_secs(1));
        assert!(current(&db, &clock).unwrap().is_none());
        acquire(&db, &clock, "etcd replace cp-2", "x")
            .unwrap()
            .unwrap();
        let err = renew(&db, &clock, "rollout prod", "joining cp-3")
            .unwrap_err()
            .to_string();
        assert!(err.contains("lost the control-plane lease"), "{err}");
    }

    #[test]
    fn release_by_a_non_holder_changes_nothing() {
        let db = Db::in_memory();
        let clock = ManualClock::at_unix_ms(5);
        acquire(&db, &clock, "a", "p").unwrap().unwrap();
        release(&db, "b").unwrap();
        assert_eq!(current(&db, &clock).unwrap().unwrap().holder, "a");
    }

    #[test]
    fn racing_acquirers_get_exactly_one_winner() {
        let db = Db::in_memory();
        let clock = std::sync::Arc::new(ManualClock::at_unix_ms(5));
        let winners: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let (db, clock) = (db.clone(), clock.clone());
                    s.spawn(move || {
                        acquire(&db, clock.as_ref(), &format!("h{i}"), "p")
                            .unwrap()
                            .is_ok()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(winners.iter().filter(|w| **w).count(), 1);
    }
    type Failure = crate::rollout::ops::Failure;

    fn work_failed() -> Failure {
        Failure::at("cp-2", "kubeadm-join", "the join failed", "")
    }

    #[tokio::test]
    async fn a_busy_lease_is_refused_with_the_one_message_and_no_work_runs() {
        let db = Db::in_memory();
        let clock = Arc::new(ManualClock::at_unix_ms(1_000_000));
        acquire(&db, clock.as_ref(), "etcd replace cp-2", "replacing cp-2")
            .unwrap()
            .unwrap();
        let mut ran = false;
        let f = hold_with(
            &db,
            clock.clone(),
            "reset prod",
            "resetting the control planes",
            RENEW_EVERY,
            None::<Wait<NoWait>>,
            async {
                ran = true;
                Ok::<_, Failure>(())
            },
        )
        .await
        .unwrap_err();
        assert!(!ran, "work ran without the lease");
        assert_eq!(f.class, "preflight");
        assert_eq!(f.step, "lease");
        assert_eq!(f.hint, Busy::HINT);
        assert_eq!(
            f.message,
            format!(
                "the control-plane lease is busy: etcd replace cp-2 holds it since {} (replacing cp-2); it expires at {} unless renewed. No control-plane membership was changed by this operation",
                rfc3339(1_000_000),
                rfc3339(1_000_000 + TTL.as_millis() as u64)
            )
        );
        // The holder keeps it.
        assert_eq!(
            current(&db, clock.as_ref()).unwrap().unwrap().holder,
            "etcd replace cp-2"
        );
    }

    #[tokio::test]
    async fn the_lease_is_released_after_work_even_when_work_fails() {
        let db = Db::in_memory();
        let clock = Arc::new(ManualClock::at_unix_ms(1_000_000));
        let f = hold_with(
            &db,
            clock.clone(),
            "rollout prod",
            "joining cp-2",
            RENEW_EVERY,
            None::<Wait<NoWait>>,
            async {
                // Held while the work runs.
                let l = current(&db, clock.as_ref()).unwrap().unwrap();
                assert_eq!(
                    (l.holder.as_str(), l.purpose.as_str()),
                    ("rollout prod", "joining cp-2")
                );
                Err::<(), _>(work_failed())
            },
        )
        .await
        .unwrap_err();
        assert_eq!(f.message, "the join failed");
        assert!(current(&db, clock.as_ref()).unwrap().is_none());
        let ok = hold_with(
            &db,
            clock.clone(),
            "rollout prod",
            "joining cp-3",
            RENEW_EVERY,
            None::<Wait<NoWait>>,
            async { Ok::<_, Failure>(7) },
        )
        .await
        .unwrap();
        assert_eq!(ok, 7);
        assert!(current(&db, clock.as_ref()).unwrap().is_none());
    }

    #[tokio::test]
    async fn the_lease_is_renewed_while_long_work_runs() {
        let db = Db::in_memory();
        let clock = Arc::new(ManualClock::at_unix_ms(1_000_000));
        let held = hold_with(
            &db,
            clock.clone(),
            "rollout prod",
            "joining cp-2",
            Duration::from_millis(5),
            None::<Wait<NoWait>>,
            async {
                // Four half-TTLs pass: unrenewed, the lease would have
                // expired after the second.
                for _ in 0..4 {
                    clock.advance(TTL / 2);
                    let now = unix_ms(clock.now());
                    let deadline = Instant::now() + Duration::from_secs(10);
                    loop {
                        let l = current(&db, clock.as_ref()).unwrap();
                        if l.as_ref()
                            .is_some_and(|l| l.expires_ms >= now + TTL.as_millis() as u64)
                        {
                            break;
                        }
                        assert!(Instant::now() < deadline, "not renewed: {l:?}");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                let l = current(&db, clock.as_ref())?.unwrap();
                Ok::<_, Failure>(l)
            },
        )
        .await
        .unwrap();
        assert_eq!(held.holder, "rollout prod");
        assert_eq!(held.acquired_ms, 1_000_000);
        // Released once the work is done.
        assert!(current(&db, clock.as_ref()).unwrap().is_none());
    }

    #[tokio::test]
    async fn a_waiting_holder_takes_the_lease_once_it_is_released_or_gives_up() {
        let db = Db::in_memory();
        let clock = Arc::new(ManualClock::at_unix_ms(1_000_000));
        acquire(&db, clock.as_ref(), "reset prod", "resetting cp-3")
            .unwrap()
            .unwrap();
        let mut told = vec![];
        let r = hold_with(
            &db,
            clock.clone(),
            "rollout prod",
            "joining cp-2",
            RENEW_EVERY,
            Some(Wait {
                patience: Duration::from_secs(60),
                every: Duration::from_millis(1),
                on_busy: |l: &Lease| {
                    told.push(l.holder.clone());
                    // The other operation finishes while we wait.
                    release(&db, "reset prod").unwrap();
                    std::future::ready(())
                },
            }),
            async { Ok::<_, Failure>("joined") },
        )
        .await
        .unwrap();
        assert_eq!(r, "joined");
        assert_eq!(told, ["reset prod"]);

        acquire(&db, clock.as_ref(), "reset prod", "resetting cp-3")
            .unwrap()
            .unwrap();
        let mut asked = 0;
        let f = hold_with(
            &db,
            clock.clone(),
            "rollout prod",
            "joining cp-2",
            RENEW_EVERY,
            Some(Wait {
                patience: Duration::from_millis(20),
                every: Duration::from_millis(1),
                on_busy: |_: &Lease| {
                    asked += 1;
                    std::future::ready(())
                },
            }),
            async { Ok::<_, Failure>("joined") },
        )
        .await
        .unwrap_err();
        assert!(asked >= 1);
        assert!(
            f.message
                .starts_with("the control-plane lease is busy: reset prod holds it since"),
            "{}",
            f.message
        );
    }
}
