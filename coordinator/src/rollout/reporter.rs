//! The rollout's voice: sends progress to followers and records every step
//! transition with the persisted state (`rollout::state`) and the audit log.
//! The engine, its phases, `lb`, `reset` and `replace` all report through it.

use std::sync::Arc;
use std::time::Instant;

use kh::proto::{rollout_event::Kind, RolloutEvent};
use kh::time::unix_ms;
use tokio::sync::{broadcast, Mutex};

use super::ops::Failure;
use super::phase::Phase;
use super::state::{Outcome, RolloutState, Status};
use crate::Coordinator;

/// Sends progress to followers and records it with the persisted state.
#[derive(Clone)]
pub struct Reporter {
    pub tx: broadcast::Sender<RolloutEvent>,
    pub state: Arc<Mutex<RolloutState>>,
    coord: Arc<Coordinator>,
    /// False for a dry run, whose outcome must not replace the held state.
    persist: bool,
    /// What a successful end says, when the operation says it in its own
    /// words (an upgrade that found nothing to do).
    done: Arc<std::sync::Mutex<Option<String>>>,
}

impl Reporter {
    pub fn new(coord: Arc<Coordinator>, state: RolloutState) -> Self {
        let (tx, _) = broadcast::channel(1024);
        Reporter {
            tx,
            state: Arc::new(Mutex::new(state)),
            coord,
            persist: true,
            done: Arc::default(),
        }
    }

    /// The reporter of an operation that starts now, and a receiver of its
    /// events. A real run is saved first and becomes the coordinator's
    /// current operation (`current` is the caller's held slot, released
    /// here); a dry run writes nothing and leaves the slot alone.
    pub(crate) fn begin(
        coord: &Arc<Coordinator>,
        mut current: tokio::sync::MutexGuard<'_, Option<Reporter>>,
        mut state: RolloutState,
        dry_run: bool,
        now: u64,
    ) -> Result<(Reporter, broadcast::Receiver<RolloutEvent>), crate::error::CoordError> {
        let rep = if dry_run {
            Reporter::dry_run(coord.clone(), state)
        } else {
            state.save(&coord.db, now)?;
            let rep = Reporter::new(coord.clone(), state);
            *current = Some(rep.clone());
            rep
        };
        let live = rep.tx.subscribe();
        Ok((rep, live))
    }

    /// What the closing event says if the operation succeeds.
    pub(crate) fn set_done_message(&self, message: impl Into<String>) {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = Some(message.into());
    }

    /// A reporter for a dry run: events only, nothing written to the store.
    pub fn dry_run(coord: Arc<Coordinator>, state: RolloutState) -> Self {
        Reporter {
            persist: false,
            ..Self::new(coord, state)
        }
    }

    fn now(&self) -> u64 {
        unix_ms(self.coord.clock.now())
    }

    pub async fn emit(&self, mut ev: RolloutEvent) {
        ev.unix_ms = self.now();
        self.state.lock().await.record(&ev);
        let _ = self.tx.send(ev);
    }

    pub(crate) async fn note(&self, phase: Phase, node: &str, message: impl Into<String>) {
        self.emit(RolloutEvent {
            kind: Kind::Note as i32,
            phase: phase.name().into(),
            node: node.into(),
            message: message.into(),
            ..Default::default()
        })
        .await;
    }

    pub(crate) async fn waiting(&self, phase: Phase, node: &str, message: impl Into<String>) {
        self.emit(RolloutEvent {
            kind: Kind::Waiting as i32,
            phase: phase.name().into(),
            node: node.into(),
            message: message.into(),
            ..Default::default()
        })
        .await;
    }

    pub(crate) async fn is_done(&self, key: &str) -> bool {
        self.state.lock().await.is_done(key)
    }

    /// Persists a step transition before the step goes on. The synced
    /// writes run on the blocking pool, outside the state lock, so steps of
    /// many nodes at once share sled's flushes instead of queueing for them.
    ///
    /// The end of each attempt goes to the audit log once, before the step
    /// record: a coordinator that dies in between finds the step still
    /// running, learns its end again, and the audit skips the repeat. A
    /// step found running from an earlier process and started again is
    /// recorded as interrupted, so every attempt that happened is listed.
    async fn mark(&self, key: &str, status: Status, message: &str) -> Result<(), Failure> {
        let now = self.now();
        let (write, operation, interrupted) = {
            let mut st = self.state.lock().await;
            let interrupted = match status {
                Status::Running => st.running_since(key),
                _ => None,
            };
            let write = st
                .transition(&self.coord.db, key, status, message, now)
                .map_err(Failure::from)?;
            (write, st.operation.clone(), interrupted)
        };
        let coord = self.coord.clone();
        let (key, message) = (key.to_string(), message.to_string());
        let persisted = tokio::task::spawn_blocking(move || {
            let (node, step) = key.split_once('/').unwrap_or(("", &key));
            let audit = |attempt, outcome: &str, message: &str| {
                crate::audit::append_once(
                    &coord.db,
                    coord.clock.as_ref(),
                    &operation,
                    node,
                    step,
                    attempt,
                    outcome,
                    message,
                )
            };
            if let Some(attempt) = interrupted {
                audit(
                    attempt,
                    "interrupted",
                    "the coordinator stopped while this step ran; it was started again",
                )?;
            }
            match status {
                Status::Running => {}
                Status::Done => {
                    audit(write.attempt(), "done", &message)?;
                }
                Status::Failed => {
                    audit(write.attempt(), "failed", &message)?;
                }
            }
            write.write(&coord.db)?;
            Ok::<_, crate::error::CoordError>(())
        })
        .await;
        match persisted {
            Ok(result) => result.map_err(Failure::from),
            Err(e) => Err(Failure::at(
                "",
                "coordinator",
                format!("persisting the step failed: {e}"),
                "",
            )),
        }
    }

    /// Records a step that ended while no coordinator watched it: persisted
    /// as running by an earlier process, and reported done by its node now
    /// (a join that finished while the coordinator was down). It is marked
    /// done, audited and shown once; a step not left running is untouched.
    pub(crate) async fn settle(&self, phase: Phase, node: &str, step: &str, message: &str) {
        let key = format!("{node}/{step}");
        let Some(started) = self.state.lock().await.running_since(&key) else {
            return;
        };
        let message = format!("{message} (it finished while the coordinator was not watching)");
        if let Err(f) = self.mark(&key, Status::Done, &message).await {
            tracing::error!(error = %f.message, key, "could not record a step found done");
            return;
        }
        self.emit(RolloutEvent {
            kind: Kind::StepFinished as i32,
            phase: phase.name().into(),
            node: node.into(),
            step: step.into(),
            message,
            elapsed_ms: self.now().saturating_sub(started),
            ..Default::default()
        })
        .await;
    }

    /// A hint in the words of this operation: the generic "run the rollout
    /// again" becomes the exact command that resumes it.
    async fn advise(&self, hint: &str) -> String {
        let st = self.state.lock().await;
        if st.resume.is_empty() {
            hint.to_string()
        } else {
            hint.replace(super::ops::RERUN, &format!("`{}`", st.resume))
        }
    }

    /// Runs one tracked node step: persisted as running, then as done or
    /// failed, with events either side.
    pub(crate) async fn tracked<T, F>(
        &self,
        phase: Phase,
        node: &str,
        step: &str,
        f: F,
    ) -> Result<T, Failure>
    where
        F: std::future::Future<Output = Result<(T, String), Failure>>,
    {
        let key = format!("{node}/{step}");
        self.mark(&key, Status::Running, "").await?;
        self.emit(RolloutEvent {
            kind: Kind::StepStarted as i32,
            phase: phase.name().into(),
            node: node.into(),
            step: step.into(),
            ..Default::default()
        })
        .await;
        let t0 = Instant::now();
        match f.await {
            Ok((v, message)) => {
                self.mark(&key, Status::Done, &message).await?;
                self.emit(RolloutEvent {
                    kind: Kind::StepFinished as i32,
                    phase: phase.name().into(),
                    node: node.into(),
                    step: step.into(),
                    message,
                    elapsed_ms: t0.elapsed().as_millis() as u64,
                    ..Default::default()
                })
                .await;
                Ok(v)
            }
            Err(mut fail) => {
                if fail.node.is_empty() {
                    fail.node = node.to_string();
                }
                if fail.step.is_empty() || fail.step == "coordinator" {
                    fail.step = step.to_string();
                }
                fail.hint = self.advise(&fail.hint).await;
                self.mark(&key, Status::Failed, &fail.message).await?;
                self.emit(RolloutEvent {
                    kind: Kind::StepFailed as i32,
                    phase: phase.name().into(),
                    node: node.into(),
                    step: step.into(),
                    message: fail.message.clone(),
                    hint: fail.hint.clone(),
                    report: fail.report.clone(),
                    elapsed_ms: t0.elapsed().as_millis() as u64,
                    ..Default::default()
                })
                .await;
                Err(fail)
            }
        }
    }

    pub(crate) async fn phase(&self, phase: Phase) {
        self.emit(RolloutEvent {
            kind: Kind::PhaseStarted as i32,
            phase: phase.name().into(),
            ..Default::default()
        })
        .await;
    }

    /// What a failed operation leaves behind, said with its hint: one with
    /// a resume command either must be finished with it (it changed
    /// something) or left nothing pending.
    async fn pending_hint(&self, hint: &str) -> String {
        let st = self.state.lock().await;
        if st.resume.is_empty() {
            return hint.to_string();
        }
        let tail = if st.changed() {
            format!(
                "{} has changed the cluster and stays pending: finish it with `{}` (finished steps are not repeated); `khctl operation status` shows it",
                st.operation, st.resume
            )
        } else {
            "nothing was changed and nothing is left pending".to_string()
        };
        if hint.is_empty() {
            tail
        } else {
            format!("{hint}. {tail}")
        }
    }

    /// Records the outcome and sends the closing event.
    pub async fn finish(&self, result: &Result<(), Failure>) {
        let now = self.now();
        let own = self.done.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let key = self.state.lock().await.key.clone();
        let done = own.unwrap_or_else(|| done_message(&key).to_string());
        let (outcome, ev) = match result {
            Ok(()) => (
                Outcome {
                    ok: true,
                    failure: String::new(),
                    message: done.clone(),
                },
                RolloutEvent {
                    kind: Kind::Finished as i32,
                    ok: true,
                    message: done,
                    ..Default::default()
                },
            ),
            Err(f) => {
                let hint = self.pending_hint(&self.advise(&f.hint).await).await;
                (
                    Outcome {
                        ok: false,
                        failure: f.class.to_string(),
                        message: f.message.clone(),
                    },
                    RolloutEvent {
                        kind: Kind::Finished as i32,
                        ok: false,
                        failure: f.class.to_string(),
                        node: f.node.clone(),
                        step: f.step.clone(),
                        message: f.message.clone(),
                        hint,
                        report: f.report.clone(),
                        ..Default::default()
                    },
                )
            }
        };
        {
            let mut st = self.state.lock().await;
            st.outcome = Some(outcome);
            st.finished_ms = now;
            // An operation with a resume command that stopped before its
            // first change leaves nothing pending: the next one of its kind
            // starts afresh instead of being told to finish this one.
            let drop_it = result.is_err() && !st.resume.is_empty() && !st.changed();
            let key = st.key.clone();
            let saved = if !self.persist {
                // A dry run's outcome is only the events it sends.
                Ok(())
            } else if drop_it {
                RolloutState::clear_at(&self.coord.db, &key)
            } else {
                st.save(&self.coord.db, now)
            };
            if let Err(e) = saved {
                tracing::error!(error = %e, "could not persist the rollout outcome");
            }
        }
        self.emit(ev).await;
    }
}

/// What a finished operation says it achieved: a renewal or a restore
/// proves less than "the cluster matches the spec".
fn done_message(key: &str) -> &'static str {
    match key {
        super::certs::KEY => {
            "every control plane serves its renewed certificates and the cluster is healthy"
        }
        super::restore::KEY => "etcd is restored and every restored control plane is healthy",
        super::upgrade::KEY => "every node runs the spec's Kubernetes version",
        _ => "the cluster matches the spec",
    }
}
