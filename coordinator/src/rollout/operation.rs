//! `khctl operation status | cancel`: the operations this coordinator holds
//! and which of them can be resumed or forgotten.
//!
//! An operation that has started a changing step must be finished (resumed
//! with its exact command): forgetting it could leave a cluster half-changed
//! with nothing that knows. One that stopped before its first change (killed
//! during its preconditions, or refused by them) changed nothing and can be
//! forgotten; a refused etcd replacement forgets itself.

use kh::proto::{self, CancelOperationResponse, OperationInfo};

use super::state::{self, RolloutState, Status};
use super::{certs, replace, reset, restore, upgrade};
use crate::error::CoordError;
use crate::Coordinator;

/// Each kind of operation with its state key, and whether it resumes.
const KINDS: &[(&str, &str, bool)] = &[
    ("rollout", state::KEY, true),
    ("etcd-replace", replace::KEY, true),
    ("reset", reset::KEY, false),
    ("certs-renew", certs::KEY, true),
    ("etcd-restore", restore::KEY, true),
    ("upgrade", upgrade::KEY, true),
];

struct Held {
    kind: &'static str,
    key: &'static str,
    resumable: bool,
    state: RolloutState,
    running: bool,
}

impl Held {
    fn done(&self) -> bool {
        self.state.outcome.as_ref().is_some_and(|o| o.ok)
    }

    fn pending(&self) -> bool {
        self.resumable && !self.running && !self.done()
    }

    fn name(&self) -> String {
        if self.state.operation.is_empty() {
            format!("rollout {}", self.state.cluster)
        } else {
            self.state.operation.clone()
        }
    }

    /// The exact command that resumes it.
    fn resume(&self) -> String {
        if self.state.resume.is_empty() {
            format!(
                "khctl rollout -f CLUSTER.yaml (the spec of cluster {})",
                self.state.cluster
            )
        } else {
            self.state.resume.clone()
        }
    }

    fn info(&self) -> OperationInfo {
        let state = match (&self.state.outcome, self.running) {
            (_, true) => "running",
            (Some(o), _) if o.ok => "done",
            (Some(_), _) => "failed",
            (None, _) => "interrupted",
        };
        let changed = self.state.changed();
        let next = if self.running {
            "follow it with `khctl rollout status --follow`".to_string()
        } else if self.done() {
            String::new()
        } else if !self.resumable {
            format!(
                "not resumable: run `khctl reset{}` again to continue",
                if self.name().contains(" node ") {
                    " --node NODE"
                } else {
                    " --yes"
                }
            )
        } else if changed {
            format!(
                "it has changed the cluster ({}): resume it with `{}`; it cannot be cancelled",
                self.state.changing_steps().join(", "),
                self.resume()
            )
        } else {
            format!(
                "nothing was changed: resume it with `{}`, or forget it with `khctl operation cancel {}`",
                self.resume(),
                self.kind
            )
        };
        OperationInfo {
            kind: self.kind.into(),
            operation: self.name(),
            started_unix_ms: self.state.started_ms,
            finished_unix_ms: self.state.finished_ms,
            state: state.into(),
            changed,
            pending: self.pending(),
            next,
            message: self
                .state
                .outcome
                .as_ref()
                .map(|o| o.message.clone())
                .unwrap_or_default(),
        }
    }
}

/// Every held operation; the one running here is read from memory.
async fn held(
    coord: &Coordinator,
    running: Option<&RolloutState>,
) -> Result<Vec<Held>, CoordError> {
    let mut all = vec![];
    for &(kind, key, resumable) in KINDS {
        let here = running.filter(|st| st.key == key || (st.key.is_empty() && key == state::KEY));
        let state = match here {
            Some(st) => Some(st.clone()),
            None => RolloutState::load_at(&coord.db, key)?,
        };
        if let Some(state) = state {
            all.push(Held {
                kind,
                key,
                resumable,
                running: here.is_some(),
                state,
            });
        }
    }
    Ok(all)
}

/// An unfinished resumable operation other than a rollout that has changed `node`
/// (a step of it is recorded), with the command that finishes it: a
/// rollout does not take a node out of the cluster under another
/// operation's feet.
pub fn unfinished_on(coord: &Coordinator, node: &str) -> Result<Option<String>, CoordError> {
    let prefix = format!("{node}/");
    // A reset is not resumed, so one that stopped leaves nothing waiting.
    for &(kind, key, resumable) in KINDS.iter().filter(|k| k.1 != state::KEY && k.2) {
        let Some(st) = RolloutState::load_at(&coord.db, key)? else {
            continue;
        };
        let h = Held {
            kind,
            key,
            resumable,
            running: false,
            state: st,
        };
        let touched = h
            .state
            .changing_steps()
            .iter()
            .any(|k| k.starts_with(&prefix));
        if !h.done() && touched {
            return Ok(Some(format!(
                "{} did not finish and has changed {node}; {}",
                h.name(),
                h.info().next
            )));
        }
    }
    Ok(None)
}

/// Refuses to start an operation of kind `own` while another operation
/// changed the cluster and stopped: it must be finished first. `doing` ends
/// the message ("upgrading", "renewing certificates").
pub async fn refuse_if_pending(
    coord: &Coordinator,
    own: &str,
    doing: &str,
) -> Result<(), CoordError> {
    for op in list(coord).await? {
        if op.pending && op.changed && op.kind != own {
            return Err(CoordError::FailedPrecondition(format!(
                "{} is pending: {}; finish it before {doing}",
                op.operation, op.next
            )));
        }
    }
    Ok(())
}

pub async fn list(coord: &Coordinator) -> Result<Vec<OperationInfo>, CoordError> {
    let guard = coord.rollouts.current.lock().await;
    let running = match guard.as_ref() {
        Some(rep) => {
            let st = rep.state.lock().await;
            st.outcome.is_none().then(|| st.clone())
        }
        None => None,
    };
    Ok(held(coord, running.as_ref())
        .await?
        .iter()
        .map(Held::info)
        .collect())
}

/// Forgets a pending operation that changed nothing. Holding the lock that
/// starts operations, so none starts or resumes meanwhile.
pub async fn cancel(
    coord: &Coordinator,
    kind: &str,
) -> Result<CancelOperationResponse, CoordError> {
    let guard = coord.rollouts.current.lock().await;
    let running = match guard.as_ref() {
        Some(rep) => {
            let st = rep.state.lock().await;
            st.outcome.is_none().then(|| st.clone())
        }
        None => None,
    };
    let all = held(coord, running.as_ref()).await?;
    if !kind.is_empty() && !KINDS.iter().any(|(k, _, r)| *k == kind && *r) {
        return Err(CoordError::InvalidArgument(format!(
            "{kind:?} is not an operation that can be cancelled; name one of: rollout, etcd-replace, certs-renew, etcd-restore, upgrade"
        )));
    }
    if let Some(op) = all
        .iter()
        .find(|h| h.running && (kind.is_empty() || h.kind == kind))
    {
        return Err(CoordError::FailedPrecondition(format!(
            "{} is running; it cannot be cancelled. Follow it with `khctl rollout status --follow`",
            op.name()
        )));
    }
    let pending: Vec<&Held> = all
        .iter()
        .filter(|h| h.pending() && (kind.is_empty() || h.kind == kind))
        .collect();
    let op = match pending.as_slice() {
        [] => {
            return Err(CoordError::NotFound(if kind.is_empty() {
                "no operation is pending; `khctl operation status` lists them".to_string()
            } else {
                format!("no {kind} operation is pending; `khctl operation status` lists them")
            }))
        }
        [one] => *one,
        many => {
            return Err(CoordError::InvalidArgument(format!(
                "more than one operation is pending ({}); name the one to cancel: `khctl operation cancel KIND`",
                many.iter()
                    .map(|h| format!("{}: {}", h.kind, h.name()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    };
    if op.state.changed() {
        return Err(CoordError::FailedPrecondition(format!(
            "{} has changed the cluster ({}), so it cannot be cancelled: forgetting it would leave the change half done. Finish it with `{}`; finished steps are not repeated",
            op.name(),
            op.state.changing_steps().join(", "),
            op.resume()
        )));
    }
    RolloutState::clear_at(&coord.db, op.key)?;
    drop(guard);
    Ok(CancelOperationResponse {
        message: format!(
            "cancelled {}: it had changed nothing, and nothing is pending now",
            op.name()
        ),
    })
}

/// The `khctl health` check `name` for the operation persisted at `key`:
/// ok when there is none, it finished, it changed nothing or it is running;
/// failing, with the command that resumes it, when it changed the cluster
/// and stopped. `what` names the operation when none is recorded, and
/// `consequence` says what an unfinished one may have left behind.
pub async fn unfinished_check(
    coord: &Coordinator,
    key: &str,
    name: &str,
    what: &str,
    consequence: &str,
) -> Result<proto::HealthCheck, CoordError> {
    let ok = |detail: String| proto::HealthCheck {
        name: name.into(),
        ok: true,
        detail,
        fix: String::new(),
    };
    let Some(st) = RolloutState::load_at(&coord.db, key)? else {
        return Ok(ok(format!("no unfinished {what}")));
    };
    if st.outcome.as_ref().is_some_and(|o| o.ok) || !st.changed() {
        return Ok(ok(format!("no unfinished {what}")));
    }
    let running = match coord.rollouts.current.lock().await.as_ref() {
        Some(rep) => {
            let cur = rep.state.lock().await;
            cur.key == key && cur.outcome.is_none()
        }
        None => false,
    };
    if running {
        return Ok(ok(format!(
            "{} is running; follow it with `khctl rollout status --follow`",
            st.operation
        )));
    }
    let stopped = st
        .steps
        .iter()
        .find(|(_, s)| s.status != Status::Done)
        .map(|(k, s)| match s.status {
            Status::Failed => format!(
                " ({k} failed: {})",
                s.message.lines().next().unwrap_or_default()
            ),
            _ => format!(" ({k} was running when the coordinator stopped)"),
        })
        .unwrap_or_default();
    Ok(proto::HealthCheck {
        name: name.into(),
        ok: false,
        detail: format!("{} did not finish{stopped}; {consequence}", st.operation),
        fix: format!("resume it: `{}`", st.resume),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kh::proto::rollout_event::Kind;
    use kh::time::ManualClock;

    use super::super::ops::Failure;
    use super::super::phase::Phase;
    use super::super::reporter::Reporter;
    use super::super::state::{RolloutState, Status};
    use super::*;
    use crate::config::Config;
    use crate::store::Db;

    fn coordinator(dir: &std::path::Path) -> Arc<Coordinator> {
        let config = Config::for_test(dir);
        Coordinator::with_db(
            config,
            Db::in_memory(),
            Arc::new(ManualClock::at_unix_ms(1_000_000)),
        )
        .unwrap()
    }

    fn replacement(steps: &[(&str, Status)]) -> RolloutState {
        let mut st = RolloutState {
            key: replace::KEY.into(),
            operation: "etcd replace cp-2 with cp-4".into(),
            cluster: "e2e".into(),
            resume: "khctl etcd replace --failed cp-2 --with cp-4".into(),
            started_ms: 10,
            ..Default::default()
        };
        for (k, s) in steps {
            st.steps.insert(
                k.to_string(),
                state::StepState {
                    status: *s,
                    started_ms: 10,
                    finished_ms: 0,
                    message: String::new(),
                },
            );
        }
        st
    }

    fn audit(coord: &Coordinator) -> Vec<(String, String, String)> {
        crate::audit::list(&coord.db, 100)
            .unwrap()
            .into_iter()
            .map(|e| (e.node, e.step, e.outcome))
            .collect()
    }

    #[tokio::test]
    async fn a_step_that_ended_while_the_coordinator_was_down_is_audited_and_shown_once() {
        let dir = tempfile::tempdir().unwrap();
        let coord = coordinator(dir.path());
        // The earlier coordinator persisted the join as running, and even got
        // its audit line written before it died.
        let mut st = RolloutState {
            operation: "rollout e2e".into(),
            cluster: "e2e".into(),
            ..Default::default()
        };
        st.mark(&coord.db, "w-1/join-worker", Status::Running, "", 500)
            .unwrap();
        crate::audit::append_once(
            &coord.db,
            coord.clock.as_ref(),
            "rollout e2e",
            "w-1",
            "join-worker",
            500,
            "done",
            "",
        )
        .unwrap();
        let loaded = RolloutState::load(&coord.db).unwrap().unwrap();
        let rep = Reporter::new(coord.clone(), loaded);
        let mut rx = rep.tx.subscribe();
        rep.settle(Phase::Workers, "w-1", "join-worker", "joined as a worker")
            .await;
        rep.settle(Phase::Workers, "w-1", "join-worker", "joined as a worker")
            .await;
        // Never started in this state: nothing to settle.
        rep.settle(Phase::Workers, "w-2", "join-worker", "joined as a worker")
            .await;
        assert_eq!(
            audit(&coord),
            [("w-1".into(), "join-worker".into(), "done".into())]
        );
        let ev = rx.try_recv().unwrap();
        assert_eq!(ev.kind, Kind::StepFinished as i32);
        assert_eq!((ev.node.as_str(), ev.step.as_str()), ("w-1", "join-worker"));
        assert!(rx.try_recv().is_err(), "shown once");
        assert!(RolloutState::load(&coord.db)
            .unwrap()
            .unwrap()
            .is_done("w-1/join-worker"));
    }

    #[tokio::test]
    async fn a_step_started_again_records_the_interrupted_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let coord = coordinator(dir.path());
        let mut st = RolloutState {
            operation: "rollout e2e".into(),
            cluster: "e2e".into(),
            ..Default::default()
        };
        st.mark(&coord.db, "cp-1/swap", Status::Running, "", 500)
            .unwrap();
        let rep = Reporter::new(
            coord.clone(),
            RolloutState::load(&coord.db).unwrap().unwrap(),
        );
        rep.tracked(Phase::Prepare, "cp-1", "swap", async {
            Ok(((), "off".to_string()))
        })
        .await
        .unwrap();
        assert_eq!(
            audit(&coord),
            [
                ("cp-1".into(), "swap".into(), "interrupted".into()),
                ("cp-1".into(), "swap".into(), "done".into())
            ]
        );
    }

    #[tokio::test]
    async fn a_replacement_refused_before_its_first_change_leaves_nothing_pending() {
        let dir = tempfile::tempdir().unwrap();
        let coord = coordinator(dir.path());
        let mut st = replacement(&[]);
        st.save(&coord.db, 10).unwrap();
        let rep = Reporter::new(coord.clone(), st);
        let mut rx = rep.tx.subscribe();
        let result = rep
            .tracked(Phase::Preconditions, "cp-2", "preconditions", async {
                Err::<((), String), _>(Failure {
                    class: "preflight",
                    node: "cp-2".into(),
                    step: "preconditions".into(),
                    message: "etcd has lost quorum; nothing was changed".into(),
                    hint: "restore quorum first".into(),
                    report: None,
                })
            })
            .await;
        rep.finish(&result).await;
        assert!(RolloutState::load_at(&coord.db, replace::KEY)
            .unwrap()
            .is_none());
        let fin = std::iter::from_fn(|| rx.try_recv().ok())
            .find(|e| e.kind == Kind::Finished as i32)
            .unwrap();
        assert!(fin.hint.contains("nothing is left pending"), "{}", fin.hint);
        assert!(!list(&coord).await.unwrap().iter().any(|o| o.pending));
    }

    #[tokio::test]
    async fn a_failed_replacement_names_its_own_command_and_stays_pending() {
        let dir = tempfile::tempdir().unwrap();
        let coord = coordinator(dir.path());
        let mut st = replacement(&[("cp-2/preconditions", Status::Done)]);
        st.save(&coord.db, 10).unwrap();
        let rep = Reporter::new(coord.clone(), st);
        let mut rx = rep.tx.subscribe();
        let result = rep
            .tracked(Phase::Remove, "cp-2", "delete-node", async {
                Err::<((), String), _>(Failure::at(
                    "cp-1",
                    "delete-node",
                    "kubectl failed",
                    format!("fix it, then run {} again", super::super::ops::RERUN),
                ))
            })
            .await;
        rep.finish(&result).await;
        let fin = std::iter::from_fn(|| rx.try_recv().ok())
            .find(|e| e.kind == Kind::Finished as i32)
            .unwrap();
        assert!(!fin.hint.contains("khctl rollout"), "{}", fin.hint);
        assert!(
            fin.hint
                .contains("run `khctl etcd replace --failed cp-2 --with cp-4` again"),
            "{}",
            fin.hint
        );
        assert!(fin.hint.contains("stays pending"), "{}", fin.hint);
        let ops = list(&coord).await.unwrap();
        let op = ops.iter().find(|o| o.kind == "etcd-replace").unwrap();
        assert!(op.pending && op.changed, "{op:?}");
        assert!(op
            .next
            .contains("khctl etcd replace --failed cp-2 --with cp-4"));
    }

    #[tokio::test]
    async fn cancel_forgets_only_an_operation_that_changed_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let coord = coordinator(dir.path());
        // Killed after its first change: must be resumed.
        let mut st = replacement(&[
            ("cp-2/preconditions", Status::Done),
            ("cp-2/remove-member", Status::Running),
        ]);
        st.save(&coord.db, 10).unwrap();
        let err = cancel(&coord, "etcd-replace").await.unwrap_err();
        assert!(matches!(err, CoordError::FailedPrecondition(_)), "{err}");
        assert!(
            err.to_string()
                .contains("Finish it with `khctl etcd replace --failed cp-2 --with cp-4`"),
            "{err}"
        );
        assert!(RolloutState::load_at(&coord.db, replace::KEY)
            .unwrap()
            .is_some());
        // Killed during its preconditions: nothing changed, so it can go.
        let mut st = replacement(&[("cp-2/preconditions", Status::Running)]);
        st.save(&coord.db, 20).unwrap();
        let op = list(&coord).await.unwrap();
        assert_eq!(op[0].state, "interrupted");
        assert!(op[0].pending && !op[0].changed);
        assert!(op[0].next.contains("khctl operation cancel etcd-replace"));
        let r = cancel(&coord, "").await.unwrap();
        assert!(r.message.contains("changed nothing"), "{}", r.message);
        assert!(RolloutState::load_at(&coord.db, replace::KEY)
            .unwrap()
            .is_none());
        let err = cancel(&coord, "").await.unwrap_err();
        assert!(matches!(err, CoordError::NotFound(_)), "{err}");
    }
}
