//! Rollouts: bring a cluster to its spec, one rollout at a time, resumable.
//!
//! A rollout runs as a task of the coordinator, not of the caller: khctl
//! follows its events, and a khctl that leaves (Ctrl-C, a dropped SSH session)
//! does not stop it. A second rollout while one runs is refused with the way to
//! follow the first.

// A rollout failure carries the failing step's whole report for the
// operator; failures are rare and cold, so their size does not matter.
#![allow(clippy::result_large_err)]

pub mod engine;
pub mod external_etcd;
pub mod lb;
pub mod material;
pub mod operation;
pub mod ops;
pub mod replace;
pub mod reset;
pub mod state;

use std::collections::HashMap;
use std::sync::Arc;

use kh::proto::{rollout_event::Kind, RolloutEvent, RolloutRequest};
use kh::time::unix_ms;
use tokio::sync::broadcast;

use crate::error::CoordError;
use crate::Coordinator;
use engine::{Input, Reporter};
use state::RolloutState;

/// The rollout this coordinator process is running, if any.
#[derive(Default)]
pub struct Running {
    current: tokio::sync::Mutex<Option<Reporter>>,
}

/// A started (or dry-run) rollout: its past events and a live feed.
pub struct Follow {
    pub backlog: Vec<RolloutEvent>,
    pub live: Option<broadcast::Receiver<RolloutEvent>>,
}

/// Validates the request, then starts the rollout in the background.
pub async fn start(coord: Arc<Coordinator>, req: RolloutRequest) -> Result<Follow, CoordError> {
    let mut spec = kh::spec::parse(&req.spec_yaml)
        .map_err(|e| CoordError::InvalidArgument(format!("the cluster spec is invalid:\n{e}")))?;
    if let Err(e) = spec.control_plane_count_check(req.allow_even) {
        return Err(CoordError::InvalidArgument(format!(
            "the cluster spec is invalid:\n{e}"
        )));
    }
    crate::prepare::check_enrolled(&coord, &spec)?;
    for n in &spec.nodes {
        let name = kh::names::NodeName::new(&n.name)?;
        coord
            .registry
            .set_role(&name, Some(n.role.as_str().to_string()))?;
    }
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
    // Resume: a previous rollout of the same cluster keeps its finished steps.
    let mut state = match previous {
        Some(p) if p.cluster == spec.name && !req.dry_run => RolloutState {
            spec_yaml: req.spec_yaml.clone(),
            started_ms: now,
            finished_ms: 0,
            outcome: None,
            ..p
        },
        _ => RolloutState {
            cluster: spec.name.clone(),
            spec_yaml: req.spec_yaml.clone(),
            started_ms: now,
            ..Default::default()
        },
    };
    state.operation = format!("rollout {}", spec.name);
    if !req.dry_run {
        state.save(&coord.db, now)?;
    }
    let rep = Reporter::new(coord.clone(), state);
    let live = rep.tx.subscribe();
    let input = Input {
        spec,
        spec_yaml: req.spec_yaml,
        files,
        dry_run: req.dry_run,
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
    match RolloutState::load(&coord.db)? {
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
