//! What a rollout has done, persisted at every node-step transition (before
//! and after each step runs), so a coordinator killed at any point resumes
//! without redoing finished work. Also the event journal behind
//! `khctl rollout status`.

use std::collections::BTreeMap;

use kh::proto::{rollout_event::Kind, RolloutEvent};
use kh::time::unix_ms;

use crate::error::CoordError;
use crate::store::Db;

const KEY: &str = "rollout/state";
/// Recent events kept with the state, for `rollout status` after a restart.
const KEEP_EVENTS: usize = 400;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    Done,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StepState {
    pub status: Status,
    pub started_ms: u64,
    pub finished_ms: u64,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    pub ok: bool,
    /// "spec", "preflight" or "rollout" when not ok.
    pub failure: String,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EventRecord {
    pub kind: i32,
    pub phase: String,
    pub node: String,
    pub step: String,
    pub message: String,
    pub elapsed_ms: u64,
    pub unix_ms: u64,
    pub hint: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RolloutState {
    /// Where this state lives: rollouts and etcd replacements each have one.
    #[serde(default)]
    pub key: String,
    /// What the audit log calls this operation, e.g. "rollout prod".
    #[serde(default)]
    pub operation: String,
    pub cluster: String,
    pub spec_yaml: String,
    pub started_ms: u64,
    pub updated_ms: u64,
    pub finished_ms: u64,
    pub outcome: Option<Outcome>,
    /// Keyed "node/step" (or "cluster/step"), so resuming finds its place.
    pub steps: BTreeMap<String, StepState>,
    pub events: Vec<EventRecord>,
}

impl RolloutState {
    pub fn load(db: &Db) -> Result<Option<RolloutState>, CoordError> {
        Self::load_at(db, KEY)
    }

    pub fn load_at(db: &Db, key: &str) -> Result<Option<RolloutState>, CoordError> {
        Ok(db.get_json(key)?)
    }

    /// Forgets the rollout's state and journal (`khctl reset`): the next
    /// rollout starts from nothing.
    pub fn clear(db: &Db) -> Result<(), CoordError> {
        db.delete(KEY)?;
        Ok(())
    }

    pub fn save(&mut self, db: &Db, now_ms: u64) -> Result<(), CoordError> {
        self.updated_ms = now_ms;
        let key = if self.key.is_empty() {
            KEY.to_string()
        } else {
            self.key.clone()
        };
        Ok(db.put_json(&key, self)?)
    }

    pub fn is_done(&self, key: &str) -> bool {
        self.steps
            .get(key)
            .is_some_and(|s| s.status == Status::Done)
    }

    pub fn mark(
        &mut self,
        db: &Db,
        key: &str,
        status: Status,
        message: &str,
        now_ms: u64,
    ) -> Result<(), CoordError> {
        let entry = self.steps.entry(key.to_string()).or_insert(StepState {
            status,
            started_ms: now_ms,
            finished_ms: 0,
            message: String::new(),
        });
        if status == Status::Running {
            entry.started_ms = now_ms;
            entry.finished_ms = 0;
        } else {
            entry.finished_ms = now_ms;
        }
        entry.status = status;
        entry.message = message.to_string();
        self.save(db, now_ms)
    }

    pub fn record(&mut self, ev: &RolloutEvent) {
        self.events.push(EventRecord {
            kind: ev.kind,
            phase: ev.phase.clone(),
            node: ev.node.clone(),
            step: ev.step.clone(),
            message: ev.message.clone(),
            elapsed_ms: ev.elapsed_ms,
            unix_ms: ev.unix_ms,
            hint: ev.hint.clone(),
        });
        if self.events.len() > KEEP_EVENTS {
            let cut = self.events.len() - KEEP_EVENTS;
            self.events.drain(..cut);
        }
    }

    /// The journal for replay. Closing events of earlier runs are left out:
    /// the replay ends with [`Self::summary_event`] instead.
    pub fn events_as_wire(&self) -> Vec<RolloutEvent> {
        self.events
            .iter()
            .filter(|e| e.kind != Kind::Finished as i32 && e.kind != Kind::Plan as i32)
            .map(|e| RolloutEvent {
                kind: e.kind,
                phase: e.phase.clone(),
                node: e.node.clone(),
                step: e.step.clone(),
                message: e.message.clone(),
                elapsed_ms: e.elapsed_ms,
                unix_ms: e.unix_ms,
                hint: e.hint.clone(),
                ..Default::default()
            })
            .collect()
    }

    /// The closing event of a finished rollout, or a note that one is
    /// interrupted (the coordinator stopped while it ran).
    pub fn summary_event(&self, running_here: bool) -> RolloutEvent {
        match &self.outcome {
            Some(o) => RolloutEvent {
                kind: Kind::Finished as i32,
                ok: o.ok,
                failure: o.failure.clone(),
                message: o.message.clone(),
                unix_ms: self.finished_ms,
                ..Default::default()
            },
            None if running_here => RolloutEvent {
                kind: Kind::Note as i32,
                message: format!("rollout of {} is running", self.cluster),
                unix_ms: unix_ms(std::time::SystemTime::now()),
                ..Default::default()
            },
            None => RolloutEvent {
                kind: Kind::Finished as i32,
                ok: false,
                failure: "interrupted".into(),
                message: format!(
                    "the rollout of {} was interrupted (the coordinator stopped while it ran); run `khctl rollout -f cluster.yaml` again to resume it",
                    self.cluster
                ),
                ..Default::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_survive_a_reload() {
        let db = Db::in_memory();
        let mut s = RolloutState {
            cluster: "prod".into(),
            ..Default::default()
        };
        s.mark(&db, "cp-2/join", Status::Running, "", 10).unwrap();
        let back = RolloutState::load(&db).unwrap().unwrap();
        assert_eq!(back.steps["cp-2/join"].status, Status::Running);
        assert!(!back.is_done("cp-2/join"));
        s.mark(&db, "cp-2/join", Status::Done, "joined", 20)
            .unwrap();
        let back = RolloutState::load(&db).unwrap().unwrap();
        assert!(back.is_done("cp-2/join"));
        assert_eq!(back.steps["cp-2/join"].started_ms, 10);
        assert_eq!(back.summary_event(false).failure, "interrupted");
    }

    #[test]
    fn the_journal_is_bounded() {
        let mut s = RolloutState::default();
        for i in 0..(KEEP_EVENTS + 10) {
            s.record(&RolloutEvent {
                message: i.to_string(),
                ..Default::default()
            });
        }
        assert_eq!(s.events.len(), KEEP_EVENTS);
        assert_eq!(s.events[0].message, "10");
    }

    #[test]
    fn a_replay_ends_only_with_the_summary() {
        let mut s = RolloutState::default();
        s.record(&RolloutEvent {
            kind: Kind::Finished as i32,
            ok: true,
            ..Default::default()
        });
        s.record(&RolloutEvent {
            kind: Kind::StepFinished as i32,
            ..Default::default()
        });
        s.outcome = Some(Outcome {
            ok: true,
            failure: String::new(),
            message: "done".into(),
        });
        let replay = s.events_as_wire();
        assert_eq!(replay.len(), 1);
        assert!(s.summary_event(false).ok);
    }
}
