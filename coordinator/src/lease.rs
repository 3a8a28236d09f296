//! The control-plane lease: one record that every control-plane membership
//! change (join, removal, replacement) must hold.
//!
//! Why: since Kubernetes 1.29 kubeadm joins etcd members as learners and etcd
//! admits one learner at a time, so two concurrent control-plane joins make
//! one of them fail halfway. The lease names its holder and expires, so a
//! crashed holder cannot block changes forever; a live holder renews it.

use std::time::Duration;

use kh::time::{rfc3339, unix_ms, Clock};

use crate::error::CoordError;
use crate::store::Db;

const KEY: &str = "lease/control-plane";
/// A holder that stops renewing loses the lease after this long.
pub const TTL: Duration = Duration::from_secs(120);

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
}
