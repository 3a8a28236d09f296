//! Rollouts: bring a cluster to its spec, one rollout at a time, resumable.
//!
//! A rollout runs as a task of the coordinator, not of the caller: khctl
//! follows its events, and a khctl that leaves (Ctrl-C, a dropped SSH session)
//! does not stop it. A second rollout while one runs is refused with the way to
//! follow the first.

// A rollout failure carries the failing step's whole report for the
// operator; failures are rare and cold, so their size does not matter.
#![allow(clippy::result_large_err)]

pub mod autorenew;
pub mod certs;
pub mod engine;
pub mod external_etcd;
pub mod lb;
pub mod material;
pub mod operation;
pub mod ops;
pub mod phase;
pub mod plan;
pub mod replace;
pub mod reporter;
pub mod reset;
pub mod restore;
pub mod state;
pub mod upgrade;

use std::collections::HashMap;
use std::sync::Arc;

use kh::proto::{rollout_event::Kind, RolloutEvent, RolloutRequest};
use kh::time::unix_ms;
use tokio::sync::broadcast;

use crate::error::CoordError;
use crate::Coordinator;
use engine::Input;
use reporter::Reporter;
use state::RolloutState;

/// The rollout this coordinator process is running, if any.
#[derive(Default)]
pub struct Running {
    current: tokio::sync::Mutex<Option<Reporter>>,
}

impl Running {
    /// Whether an operation (rollout, replacement, reset, ...) is running
    /// now; background work that must not overlap one checks this.
    pub async fn busy(&self) -> bool {
        let guard = self.current.lock().await;
        match guard.as_ref() {
            Some(rep) => rep.state.lock().await.outcome.is_none(),
            None => false,
        }
    }

    /// The state key and name of the operation running now, if any.
    pub async fn running_operation(&self) -> Option<(String, String)> {
        let guard = self.current.lock().await;
        let rep = guard.as_ref()?;
        let st = rep.state.lock().await;
        st.outcome
            .is_none()
            .then(|| (st.key.clone(), st.operation.clone()))
    }
}

/// A started (or dry-run) rollout: its past events and a live feed.
pub struct Follow {
    pub backlog: Vec<RolloutEvent>,
    pub live: Option<broadcast::Receiver<RolloutEvent>>,
}

/// Validates the request, then starts the rollout in the background.
pub async fn start(coord: Arc<Coordinator>, mut req: RolloutRequest) -> Result<Follow, CoordError> {
    // A spec from before a remediation keeps the replacement, never undoes it.
    let (followed, notes) = crate::remediation::follow_replacements(&coord, &req.spec_yaml)?;
    req.spec_yaml = followed;
    let mut spec = kh::spec::parse(&req.spec_yaml)
        .map_err(|e| CoordError::InvalidArgument(format!("the cluster spec is invalid:\n{e}")))?;
    if let Err(e) = spec.control_plane_count_check(req.allow_even) {
        return Err(CoordError::InvalidArgument(format!(
            "the cluster spec is invalid:\n{e}"
        )));
    }
    // Roles are recorded by the engine, once the plan is accepted and
    // preflight has passed: a refused rollout changes nothing.
    crate::prepare::check_enrolled(&coord, &spec)?;
    // Relative paths were resolved by khctl, which sent the files themselves.
    spec.resolve_relative_paths(std::path::Path::new("/"));
    let files: HashMap<String, Vec<u8>> = req
        .files
        .into_iter()
        .map(|f| (f.field, f.contents))
        .collect();

    let mut guard = coord.rollouts.current.lock().await;
    if let Some(rep) = guard.as_ref() {
        let st = rep.state.lock().await;
        if st.outcome.is_none() {
            return Err(CoordError::FailedPrecondition(format!(
                "a rollout of {} is already running (started {}); follow it with `khctl rollout status --follow`",
                st.cluster,
                kh::time::rfc3339(st.started_ms)
            )));
        }
    }
    let now = unix_ms(coord.clock.now());
    let previous = RolloutState::load(&coord.db)?;
    let held = held(&coord, previous.as_ref())?;
    // Resume: a previous rollout keeps its finished steps, and the spec it
    // accepted stays the held one until the engine accepts this one's plan.
    // (A different cluster name on a built cluster is refused by the plan,
    // so its steps must survive that refusal too.)
    let mut state = match previous {
        Some(p) if !req.dry_run => RolloutState {
            cluster: spec.name.clone(),
            started_ms: now,
            finished_ms: 0,
            outcome: None,
            ..p
        },
        _ => RolloutState {
            cluster: spec.name.clone(),
            started_ms: now,
            ..Default::default()
        },
    };
    state.operation = format!("rollout {}", spec.name);
    if !req.dry_run {
        state.save(&coord.db, now)?;
    }
    let rep = if req.dry_run {
        Reporter::dry_run(coord.clone(), state)
    } else {
        Reporter::new(coord.clone(), state)
    };
    let live = rep.tx.subscribe();
    let input = Input {
        spec,
        spec_yaml: req.spec_yaml,
        files,
        dry_run: req.dry_run,
        held,
        no_snapshot: req.no_snapshot,
        confirm_removals: req.confirm_removals,
        notes,
    };
    let task_rep = rep.clone();
    let task_coord = coord.clone();
    if !req.dry_run {
        *guard = Some(rep.clone());
    }
    drop(guard);
    tokio::spawn(async move {
        let result = engine::run(task_coord, input, task_rep.clone()).await;
        if let Err(f) = &result {
            tracing::warn!(node = %f.node, step = %f.step, error = %f.message, "rollout failed");
        } else {
            tracing::info!("rollout finished");
        }
        task_rep.finish(&result).await;
    });
    Ok(Follow {
        backlog: vec![],
        live: Some(live),
    })
}

/// What the coordinator holds about the cluster: the spec the last rollout
/// accepted, the registry's roles, and the load balancers a rollout
/// configured.
fn held(coord: &Coordinator, previous: Option<&RolloutState>) -> Result<plan::Held, CoordError> {
    let roles = coord
        .registry
        .list(0, std::time::Duration::from_secs(1))?
        .into_iter()
        .filter_map(|v| {
            let role = match v.record.role.as_deref()? {
                "control-plane" => kh::spec::NodeRole::ControlPlane,
                "worker" => kh::spec::NodeRole::Worker,
                "loadbalancer" => kh::spec::NodeRole::LoadBalancer,
                _ => return None,
            };
            Some((v.record.name.to_string(), role))
        })
        .collect();
    let Some(p) = previous else {
        return Ok(plan::Held {
            roles,
            ..Default::default()
        });
    };
    let lb_step = format!("/{}", lb::STEP);
    Ok(plan::Held {
        spec: (!p.spec_yaml.is_empty())
            .then(|| kh::spec::parse(&p.spec_yaml).ok())
            .flatten(),
        roles,
        lb_configured: p
            .steps
            .iter()
            .filter(|(k, s)| k.ends_with(&lb_step) && s.status == state::Status::Done)
            .filter_map(|(k, _)| k.strip_suffix(&lb_step).map(str::to_string))
            .collect(),
        cni_applied: p
            .steps
            .iter()
            .filter(|(k, s)| k.ends_with("/cni") && s.status == state::Status::Done)
            .find_map(|(_, s)| plan::cni_recorded(&s.message)),
        removing: p
            .steps
            .keys()
            .filter_map(|k| k.split_once('/'))
            .filter(|(_, step)| plan::REMOVAL_STEPS.contains(step))
            .map(|(node, _)| node.to_string())
            .collect(),
    })
}

/// The running rollout's events so far plus a live feed, or the last one's
/// journal and outcome.
pub async fn status(coord: &Coordinator, follow: bool) -> Result<Follow, CoordError> {
    let guard = coord.rollouts.current.lock().await;
    if let Some(rep) = guard.as_ref() {
        let st = rep.state.lock().await;
        let running = st.outcome.is_none();
        let mut backlog = vec![st.header_event(running)];
        backlog.extend(st.events_as_wire());
        let live = (follow && running).then(|| rep.tx.subscribe());
        if !running || !follow {
            backlog.push(st.summary_event(running));
        }
        return Ok(Follow { backlog, live });
    }
    drop(guard);
    // The last operation `khctl rollout status` and `khctl upgrade status`
    // show: an upgrade that started after the last rollout is the one.
    let rollout = RolloutState::load(&coord.db)?;
    let upgrade = RolloutState::load_at(&coord.db, upgrade::KEY)?;
    let last = match (rollout, upgrade) {
        (Some(r), Some(u)) if u.started_ms > r.started_ms => Some(u),
        (None, Some(u)) => Some(u),
        (r, _) => r,
    };
    match last {
        Some(st) => {
            let mut backlog = vec![st.header_event(false)];
            backlog.extend(st.events_as_wire());
            backlog.push(st.summary_event(false));
            Ok(Follow { backlog, live: None })
        }
        None => Ok(Follow {
            backlog: vec![RolloutEvent {
                kind: Kind::Finished as i32,
                ok: false,
                failure: "none".into(),
                message: "no rollout has run on this coordinator; start one with `khctl rollout -f cluster.yaml`".into(),
                ..Default::default()
            }],
            live: None,
        }),
    }
}

#[cfg(test)]
mod certs_tests;
#[cfg(test)]
mod remove_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod upgrade_tests;

/// Refuses a new operation while the one in `current` runs, naming it and
/// how to follow it. Every operation but a rollout checks this (a rollout
/// says it in its own words).
pub(crate) async fn refuse_if_running(current: &Option<Reporter>) -> Result<(), CoordError> {
    let Some(rep) = current.as_ref() else {
        return Ok(());
    };
    let st = rep.state.lock().await;
    if st.outcome.is_some() {
        return Ok(());
    }
    Err(CoordError::FailedPrecondition(format!(
        "{} is running (started {}); wait for it or follow it with `khctl rollout status --follow`",
        if st.operation.is_empty() {
            format!("a rollout of {}", st.cluster)
        } else {
            st.operation.clone()
        },
        kh::time::rfc3339(st.started_ms)
    )))
}
