//! What a rollout has done, persisted at every node-step transition (before
//! and after each step runs), so a coordinator killed at any point resumes
//! without redoing finished work. Also the event journal behind
//! `khctl rollout status`.
//!
//! On disk a state is one record under its key (cluster, spec, outcome and
//! the journal) plus one small record per step under `<key>#step/`. A step
//! transition writes only its own step record, so its cost does not grow
//! with the size of the rollout; the journal is written with the header at
//! most once a second while steps run, and always at the start and the end.
//! A coordinator killed in between loses at most that last second of
//! journal, never a step's state.

use std::collections::BTreeMap;

use kh::proto::{rollout_event::Kind, RolloutEvent};
use kh::time::unix_ms;

use crate::error::CoordError;
use crate::store::Db;

pub const KEY: &str = "rollout/state";
/// Recent events kept with the state, for `rollout status` after a restart.
const KEEP_EVENTS: usize = 400;
/// How often a step transition also writes the journal.
const JOURNAL_EVERY_MS: u64 = 1_000;
/// Steps that only look: an operation that ran nothing else changed nothing.
/// (An etcd restore's `receive-snapshot` only places a file under the
/// agent's own directory and verifies it.)
pub const READ_ONLY_STEPS: &[&str] = &[
    "preconditions",
    "preflight",
    "endpoint-check",
    "snapshot",
    "receive-snapshot",
];

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
    /// The exact command that resumes this operation, e.g.
    /// "khctl etcd replace --failed cp-2 --with cp-4"; empty for a rollout,
    /// which resumes with its own spec file.
    #[serde(default)]
    pub resume: String,
    /// Keyed "node/step" (or "cluster/step"), so resuming finds its place.
    /// Stored as records of their own; a header written before they were
    /// (an older coordinator's) still carries them and is read as well.
    #[serde(default, skip_serializing)]
    pub steps: BTreeMap<String, StepState>,
    pub events: Vec<EventRecord>,
    /// When the header and journal were last written.
    #[serde(skip)]
    pub(super) journal_saved_ms: u64,
}

/// One step's record, to be written after [`RolloutState::transition`].
#[derive(Debug, Clone)]
pub struct StepWrite {
    record: String,
    step: StepState,
}

impl StepWrite {
    /// Which attempt of the step this is: when it was last started. The
    /// audit log records each attempt once, by this.
    pub fn attempt(&self) -> u64 {
        self.step.started_ms
    }

    /// A synced write of the step's own record.
    pub fn write(&self, db: &Db) -> Result<(), CoordError> {
        Ok(db.put_json(&self.record, &self.step)?)
    }
}

fn step_prefix(key: &str) -> String {
    format!("{key}#step/")
}

impl RolloutState {
    /// The state an operation at `key` starts from: the unfinished one
    /// that changed something, resumed (and only by the same `operation`:
    /// another one is refused with the command that finishes it), or a new
    /// one. One that changed nothing is forgotten.
    pub fn resume_or_begin(
        db: &Db,
        key: &str,
        operation: &str,
        cluster: &str,
        resume: String,
        now_ms: u64,
    ) -> Result<RolloutState, CoordError> {
        match RolloutState::load_at(db, key)? {
            Some(p) if !p.outcome.as_ref().is_some_and(|o| o.ok) && p.changed() => {
                if p.operation != operation {
                    return Err(CoordError::FailedPrecondition(format!(
                        "an earlier {} did not finish and has changed the cluster ({}); finish it first: `{}`",
                        p.operation,
                        p.changing_steps().join(", "),
                        if p.resume.is_empty() {
                            format!("the command that started {}", p.operation)
                        } else {
                            p.resume.clone()
                        }
                    )));
                }
                Ok(RolloutState {
                    resume,
                    started_ms: now_ms,
                    finished_ms: 0,
                    outcome: None,
                    ..p
                })
            }
            _ => Ok(RolloutState {
                key: key.into(),
                operation: operation.into(),
                cluster: cluster.into(),
                started_ms: now_ms,
                resume,
                ..Default::default()
            }),
        }
    }

    pub fn load(db: &Db) -> Result<Option<RolloutState>, CoordError> {
        Self::load_at(db, KEY)
    }

    pub fn load_at(db: &Db, key: &str) -> Result<Option<RolloutState>, CoordError> {
        let Some(mut st) = db.get_json::<RolloutState>(key)? else {
            return Ok(None);
        };
        let prefix = step_prefix(key);
        for (k, step) in db.scan_json::<StepState>(&prefix)? {
            st.steps.insert(k[prefix.len()..].to_string(), step);
        }
        Ok(Some(st))
    }

    /// Forgets the rollout's state and journal (`khctl reset`): the next
    /// rollout starts from nothing.
    pub fn clear(db: &Db) -> Result<(), CoordError> {
        Self::clear_at(db, KEY)
    }

    /// Forgets the state under `key`, steps and journal.
    pub fn clear_at(db: &Db, key: &str) -> Result<(), CoordError> {
        // Steps first: a header without steps resumes nothing, which is safe.
        for (k, _) in db.raw().scan_prefix(&step_prefix(key))? {
            db.delete(&k)?;
        }
        db.delete(key)?;
        Ok(())
    }

    /// Whether any step that changes something has started, in this run or
    /// an earlier one. Read-only checks do not count; a step that started
    /// and failed (or whose coordinator died) does, since it may have got
    /// halfway.
    pub fn changed(&self) -> bool {
        !self.changing_steps().is_empty()
    }

    /// The steps [`Self::changed`] counts, "node/step", for messages.
    pub fn changing_steps(&self) -> Vec<String> {
        self.steps
            .keys()
            .filter(|k| !READ_ONLY_STEPS.contains(&k.rsplit('/').next().unwrap_or(k)))
            .cloned()
            .collect()
    }

    /// When the step under `key` last started, and whether it is still
    /// recorded as running (its coordinator stopped before it ended).
    pub fn running_since(&self, key: &str) -> Option<u64> {
        self.steps
            .get(key)
            .filter(|s| s.status == Status::Running)
            .map(|s| s.started_ms)
    }

    fn key(&self) -> String {
        if self.key.is_empty() {
            KEY.to_string()
        } else {
            self.key.clone()
        }
    }

    /// Writes the whole state: the step records that differ from what is
    /// stored (none, usually; all of them when a state is replaced or was
    /// written by an older coordinator), then the header and journal.
    pub fn save(&mut self, db: &Db, now_ms: u64) -> Result<(), CoordError> {
        let key = self.key();
        let prefix = step_prefix(&key);
        let stored: BTreeMap<String, StepState> = db
            .scan_json::<StepState>(&prefix)?
            .into_iter()
            .map(|(k, v)| (k[prefix.len()..].to_string(), v))
            .collect();
        for k in stored.keys().filter(|k| !self.steps.contains_key(*k)) {
            db.delete(&format!("{prefix}{k}"))?;
        }
        for (k, step) in &self.steps {
            if stored.get(k) != Some(step) {
                db.put_json(&format!("{prefix}{k}"), step)?;
            }
        }
        self.save_journal(db, now_ms)
    }

    /// The header and journal alone.
    fn save_journal(&mut self, db: &Db, now_ms: u64) -> Result<(), CoordError> {
        self.updated_ms = now_ms;
        self.journal_saved_ms = now_ms;
        Ok(db.put_json(&self.key(), self)?)
    }

    pub fn is_done(&self, key: &str) -> bool {
        self.steps
            .get(key)
            .is_some_and(|s| s.status == Status::Done)
    }

    /// Records a step transition and writes it, in one call. The engine
    /// makes the write itself, outside the state lock; tests use this.
    #[cfg(test)]
    pub fn mark(
        &mut self,
        db: &Db,
        key: &str,
        status: Status,
        message: &str,
        now_ms: u64,
    ) -> Result<(), CoordError> {
        self.transition(db, key, status, message, now_ms)?.write(db)
    }

    /// Records a step transition in memory and returns its write, for the
    /// caller to make without holding this state (many steps run at once,
    /// and their synced writes then share the disk's flushes). The journal is
    /// written here when it is due, and the whole state when this process
    /// has not written it yet.
    pub fn transition(
        &mut self,
        db: &Db,
        key: &str,
        status: Status,
        message: &str,
        now_ms: u64,
    ) -> Result<StepWrite, CoordError> {
        let record = format!("{}{key}", step_prefix(&self.key()));
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
        let write = StepWrite {
            record,
            step: entry.clone(),
        };
        if self.journal_saved_ms == 0 {
            // Never written by this process: write it whole, steps included.
            self.save(db, now_ms)?;
        } else if now_ms.saturating_sub(self.journal_saved_ms) >= JOURNAL_EVERY_MS {
            self.save_journal(db, now_ms)?;
        }
        Ok(write)
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

    /// The first line of `rollout status`: which operation, when it
    /// started, and its state.
    pub fn header_event(&self, running_here: bool) -> RolloutEvent {
        let state = match &self.outcome {
            _ if running_here => "running".to_string(),
            Some(o) if o.ok => "finished: ok".to_string(),
            Some(o) => format!("failed ({})", o.failure),
            None => "interrupted (the coordinator stopped while it ran)".to_string(),
        };
        RolloutEvent {
            kind: Kind::Header as i32,
            operation: if self.operation.is_empty() {
                format!("rollout {}", self.cluster)
            } else {
                self.operation.clone()
            },
            started_unix_ms: self.started_ms,
            unix_ms: if running_here { 0 } else { self.finished_ms },
            message: state,
            ..Default::default()
        }
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
                message: if self.resume.is_empty() {
                    format!(
                        "the rollout of {} was interrupted (the coordinator stopped while it ran); run `khctl rollout -f cluster.yaml` again to resume it",
                        self.cluster
                    )
                } else {
                    format!(
                        "{} was interrupted (the coordinator stopped while it ran); run `{}` again to resume it",
                        self.operation, self.resume
                    )
                },
                ..Default::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(cluster: &str) -> RolloutState {
        RolloutState {
            cluster: cluster.into(),
            ..Default::default()
        }
    }

    #[test]
    fn transitions_survive_a_reload() {
        let db = Db::in_memory();
        let mut s = of("prod");
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
    fn a_transition_writes_its_step_and_the_journal_at_most_once_a_second() {
        let db = Db::in_memory();
        let mut s = of("prod");
        s.save(&db, 1_000).unwrap();
        s.record(&RolloutEvent {
            message: "first".into(),
            ..Default::default()
        });
        s.mark(&db, "w-1/join", Status::Running, "", 1_200).unwrap();
        let back = RolloutState::load(&db).unwrap().unwrap();
        assert_eq!(back.steps["w-1/join"].status, Status::Running);
        assert!(
            back.events.is_empty(),
            "journal written again within a second"
        );
        s.mark(&db, "w-1/join", Status::Done, "joined", 2_000)
            .unwrap();
        let back = RolloutState::load(&db).unwrap().unwrap();
        assert!(back.is_done("w-1/join"));
        assert_eq!(back.events.len(), 1);
        // The header no longer carries the steps.
        let raw: serde_json::Value = db.get_json(KEY).unwrap().unwrap();
        assert!(raw.get("steps").is_none(), "{raw}");
    }

    #[test]
    fn an_older_header_with_its_steps_is_read_and_moved_out() {
        let db = Db::in_memory();
        let done = StepState {
            status: Status::Done,
            started_ms: 1,
            finished_ms: 2,
            message: "prepared".into(),
        };
        db.put_json(
            KEY,
            &serde_json::json!({
                "cluster": "prod", "spec_yaml": "", "started_ms": 1, "updated_ms": 2,
                "finished_ms": 0, "outcome": null, "events": [],
                "steps": {"cp-1/prepare": done},
            }),
        )
        .unwrap();
        let mut s = RolloutState::load(&db).unwrap().unwrap();
        assert!(s.is_done("cp-1/prepare"));
        s.save(&db, 10).unwrap();
        let back = RolloutState::load(&db).unwrap().unwrap();
        assert_eq!(back.steps["cp-1/prepare"], done);
        let raw: serde_json::Value = db.get_json(KEY).unwrap().unwrap();
        assert!(raw.get("steps").is_none(), "{raw}");
    }

    #[test]
    fn saving_a_new_state_drops_the_old_steps_and_clear_forgets_all() {
        let db = Db::in_memory();
        let mut old = of("old");
        old.save(&db, 1).unwrap();
        old.mark(&db, "a/prepare", Status::Done, "", 2).unwrap();
        let mut new = of("new");
        new.mark(&db, "b/prepare", Status::Running, "", 3).unwrap();
        let back = RolloutState::load(&db).unwrap().unwrap();
        assert_eq!(back.cluster, "new");
        assert_eq!(back.steps.keys().collect::<Vec<_>>(), ["b/prepare"]);
        RolloutState::clear(&db).unwrap();
        assert!(RolloutState::load(&db).unwrap().is_none());
        assert!(db.raw().scan_prefix(&step_prefix(KEY)).unwrap().is_empty());
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
