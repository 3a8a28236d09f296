//! The audit log: every step of every operation (rollouts, etcd member
//! changes) and its outcome, in order, kept in the store. `khctl history`
//! shows it.

use std::sync::atomic::{AtomicU64, Ordering};

use kh::time::{unix_ms, Clock};

use crate::error::CoordError;
use crate::store::Db;

const PREFIX: &str = "audit/";
/// One marker per recorded step attempt, so recording it again is a no-op.
const ONCE_PREFIX: &str = "audit-once/";
static SEQ: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub unix_ms: u64,
    pub operation: String,
    pub node: String,
    pub step: String,
    pub outcome: String,
    pub message: String,
}

pub fn append(
    db: &Db,
    clock: &dyn Clock,
    operation: &str,
    node: &str,
    step: &str,
    outcome: &str,
    message: &str,
) -> Result<(), CoordError> {
    let now = unix_ms(clock.now());
    // Zero-padded time, then a sequence, so keys sort in the order written.
    let key = format!(
        "{PREFIX}{now:020}-{:08}",
        SEQ.fetch_add(1, Ordering::Relaxed) % 100_000_000
    );
    db.put_json(
        &key,
        &Entry {
            unix_ms: now,
            operation: operation.to_string(),
            node: node.to_string(),
            step: step.to_string(),
            outcome: outcome.to_string(),
            message: message.to_string(),
        },
    )?;
    Ok(())
}

/// Appends the end of one attempt of a node step, unless that attempt is
/// already in the log. A coordinator that restarts may learn again of a step
/// it recorded before it stopped (or learn of it only then), so recording is
/// idempotent per operation, node, step and attempt (when the attempt
/// started). Returns whether the entry was new.
#[allow(clippy::too_many_arguments)]
pub fn append_once(
    db: &Db,
    clock: &dyn Clock,
    operation: &str,
    node: &str,
    step: &str,
    attempt: u64,
    outcome: &str,
    message: &str,
) -> Result<bool, CoordError> {
    let marker = format!("{ONCE_PREFIX}{operation}|{node}|{step}|{attempt:020}");
    // The marker is written first: an entry never appears twice, and a
    // crash between the two loses at most this one line.
    if !db.cas_json(&marker, None::<&u64>, Some(&unix_ms(clock.now())))? {
        return Ok(false);
    }
    append(db, clock, operation, node, step, outcome, message)?;
    Ok(true)
}

/// The newest `limit` entries, oldest first.
pub fn list(db: &Db, limit: usize) -> Result<Vec<Entry>, CoordError> {
    let all: Vec<Entry> = db.scan_json(PREFIX)?.into_iter().map(|(_, e)| e).collect();
    let skip = all.len().saturating_sub(limit);
    Ok(all.into_iter().skip(skip).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kh::time::ManualClock;

    #[test]
    fn entries_come_back_in_order_and_bounded() {
        let db = Db::in_memory();
        let clock = ManualClock::at_unix_ms(5);
        for i in 0..5 {
            append(
                &db,
                &clock,
                "rollout x",
                "cp-1",
                &format!("s{i}"),
                "done",
                "",
            )
            .unwrap();
        }
        let last = list(&db, 2).unwrap();
        assert_eq!(
            last.iter().map(|e| e.step.as_str()).collect::<Vec<_>>(),
            ["s3", "s4"]
        );
    }

    #[test]
    fn an_attempt_is_recorded_once_and_another_attempt_again() {
        let db = Db::in_memory();
        let clock = ManualClock::at_unix_ms(5);
        let rec = |attempt, outcome| {
            append_once(
                &db,
                &clock,
                "rollout x",
                "w-1",
                "join-worker",
                attempt,
                outcome,
                "",
            )
            .unwrap()
        };
        assert!(rec(100, "done"));
        assert!(!rec(100, "done"), "the same attempt again");
        assert!(rec(200, "failed"), "a new attempt");
        let all = list(&db, 10).unwrap();
        assert_eq!(
            all.iter().map(|e| e.outcome.as_str()).collect::<Vec<_>>(),
            ["done", "failed"]
        );
    }
}
