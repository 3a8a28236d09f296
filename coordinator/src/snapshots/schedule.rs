//! Scheduled etcd snapshots (`etcd.snapshots: {every, keep}` in the held
//! spec): a background task of the coordinator takes one when the newest
//! automatic snapshot is older than `every`, then prunes the automatic ones
//! (scheduled and `before <operation>`) beyond the newest `keep`. Manual and
//! imported snapshots are the operator's and never pruned.
//!
//! A tick does nothing while an operation runs (a restore, a rollout, a
//! replacement) or the control-plane lease is held. A failure is logged and
//! audited by `take` and tried again at the next tick, never sooner.

use std::sync::Arc;
use std::time::Duration;

use kh::spec::SnapshotSchedule;
use kh::time::unix_ms;

use super::{delete, list, take, SnapshotMeta, AUDIT_OPERATION, REASON_SCHEDULED};
use crate::error::CoordError;
use crate::Coordinator;

/// The longest pause between ticks, so a schedule changed by a rollout is
/// picked up within it.
pub const MAX_TICK: Duration = Duration::from_secs(60);

/// How often to look for a schedule while there is none: a rollout that
/// adds one (or builds the cluster) gets its first snapshot within this.
/// A look reads one record of the store.
pub const OFF_TICK: Duration = Duration::from_secs(5);

/// How often to look: a tenth of the period, between 1 s and [`MAX_TICK`];
/// [`OFF_TICK`] without a schedule.
pub fn tick_interval(schedule: Option<&SnapshotSchedule>) -> Duration {
    match schedule {
        Some(s) => (s.every / 10).clamp(Duration::from_secs(1), MAX_TICK),
        None => OFF_TICK,
    }
}

/// What one tick did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tick {
    /// No held spec, or it has no `etcd.snapshots`.
    Off,
    /// An operation runs or the control-plane lease is held.
    Busy,
    /// The newest automatic snapshot is recent enough.
    NotDue,
    /// A snapshot was taken; the ids pruned after it.
    Taken { id: String, pruned: Vec<String> },
}

fn schedule(coord: &Coordinator) -> Option<SnapshotSchedule> {
    crate::etcd::held_spec(coord)
        .ok()
        .and_then(|s| s.etcd_snapshots)
}

/// One look at the schedule.
pub async fn tick(coord: &Coordinator) -> Result<Tick, CoordError> {
    let Some(schedule) = schedule(coord) else {
        return Ok(Tick::Off);
    };
    if coord.rollouts.busy().await
        || crate::lease::current(&coord.db, coord.clock.as_ref())?.is_some()
    {
        return Ok(Tick::Busy);
    }
    let now = unix_ms(coord.clock.now());
    let newest = list(coord)?
        .into_iter()
        .filter(SnapshotMeta::is_automatic)
        .map(|m| m.created_ms)
        .max();
    let every = u64::try_from(schedule.every.as_millis()).unwrap_or(u64::MAX);
    if newest.is_some_and(|t| now.saturating_sub(t) < every) {
        return Ok(Tick::NotDue);
    }
    let meta = take(coord, REASON_SCHEDULED, None).await?;
    let pruned = prune(coord, schedule.keep)?;
    Ok(Tick::Taken {
        id: meta.id,
        pruned,
    })
}

/// Deletes the automatic snapshots beyond the newest `keep`; the ids
/// deleted, oldest first. Audited.
pub fn prune(coord: &Coordinator, keep: u32) -> Result<Vec<String>, CoordError> {
    let automatic: Vec<SnapshotMeta> = list(coord)?
        .into_iter()
        .filter(SnapshotMeta::is_automatic)
        .collect();
    let excess = automatic.len().saturating_sub(keep as usize);
    // An unfinished restore still needs its snapshot: a resumed one may
    // distribute it again.
    let restoring =
        crate::rollout::state::RolloutState::load_at(&coord.db, crate::rollout::restore::KEY)?
            .filter(|st| !st.outcome.as_ref().is_some_and(|o| o.ok))
            .map(|st| st.operation);
    let mut pruned = Vec::new();
    for m in automatic.into_iter().take(excess) {
        if restoring.as_deref().is_some_and(|op| op.contains(&m.id)) {
            continue;
        }
        if delete(coord, &m.id)? {
            crate::audit::append(
                &coord.db,
                coord.clock.as_ref(),
                AUDIT_OPERATION,
                &m.node,
                "prune",
                "ok",
                &format!(
                    "{} ({}), beyond the newest {keep} automatic snapshots",
                    m.id, m.reason
                ),
            )?;
            pruned.push(m.id);
        }
    }
    Ok(pruned)
}

/// The background task: ticks until the coordinator stops.
pub async fn run(coord: Arc<Coordinator>) {
    loop {
        match tick(&coord).await {
            Ok(Tick::Taken { id, pruned }) => {
                tracing::info!(id = %id, pruned = ?pruned, "scheduled etcd snapshot taken")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "scheduled etcd snapshot failed; trying again at the next tick")
            }
        }
        tokio::time::sleep(tick_interval(schedule(&coord).as_ref())).await;
    }
}
