//! `khctl etcd restore --snapshot ID`: etcd's disaster recovery after a
//! lost quorum, as kubeadm clusters need it.
//!
//! Preconditions first, before any change: stacked etcd only, the snapshot
//! exists and passes its integrity check, quorum is lost (or `--force`),
//! and which control planes answer. Then, holding the control-plane lease:
//! the snapshot goes to every reachable control plane and is verified there
//! (`etcdctl snapshot status`), so a bad file is refused before anything
//! stops; etcd and the apiserver stop on each; each restores the snapshot
//! with its node name, `https://<address>:2380`, one new
//! `--initial-cluster-token` and the full `--initial-cluster` of the
//! reachable control planes (the old data moved aside, never deleted); the
//! members start and the cluster is verified.
//!
//! The restored membership is fixed once, when the first changing step
//! runs, and persisted with the operation id and token (`PLAN_KEY`): a
//! resumed restore uses exactly the same, and skips every finished step, so
//! a coordinator killed at any point ends with one cluster.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use kh::proto::{self, run_step_request::Step, EtcdRestoreRequest};
use kh::spec::ClusterSpec;
use kh::time::unix_ms;
use serde::{Deserialize, Serialize};

use super::ops::{url, Failure, Ops};
use super::phase::Phase;
use super::reporter::Reporter;
use super::state::RolloutState;
use super::Follow;
use crate::agents::SnapshotPieces;
use crate::error::CoordError;
use crate::{etcd, lease, Coordinator};

pub const KEY: &str = "etcd/restore";
/// The restore's fixed decisions (operation id, token, members).
const PLAN_KEY: &str = "etcd/restore-plan";
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const REACH_TIMEOUT: Duration = Duration::from_secs(10);

/// A stored snapshot as the restore needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRef {
    pub id: String,
    pub size: u64,
    /// SHA-256 of the plaintext, lowercase hex.
    pub sha256: String,
    pub created_ms: u64,
}

/// Where snapshots come from: the coordinator's snapshot store.
pub trait Snapshots: Send + Sync {
    fn get(&self, id: &str) -> Result<Option<SnapshotRef>, CoordError>;
    /// The newest stored snapshot.
    fn latest(&self) -> Result<Option<SnapshotRef>, CoordError>;
    /// Reads the stored file through, checking every sealed chunk and the
    /// SHA-256 of the whole (etcd's integrity trailer was checked when it
    /// was stored); the error says why it fails.
    fn verify(&self, id: &str) -> futures::future::BoxFuture<'static, Result<(), CoordError>>;
    /// The plaintext in pieces.
    fn pieces(&self, id: &str) -> Result<SnapshotPieces, CoordError>;
}

/// What a restore fixes before its first change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fixed {
    /// Names the agents' files and directories of this restore.
    pub op_id: String,
    pub token: String,
    pub snapshot: String,
    /// The restored members: (node, address), in spec order.
    pub members: Vec<(String, IpAddr)>,
    /// Control planes of the spec that did not answer.
    pub left_out: Vec<String>,
}

impl Fixed {
    pub fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|(n, a)| format!("{n}={}", url(*a, 2380)))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn operation_name(snapshot: &str) -> String {
    format!("etcd restore {snapshot}")
}

/// The exact command that resumes this restore.
pub fn resume_command(req: &EtcdRestoreRequest) -> String {
    let mut cmd = format!("khctl etcd restore --snapshot {} --yes", req.snapshot);
    if req.force {
        cmd.push_str(" --force");
    }
    cmd
}

/// How to add a control plane back that the restore left out.
pub fn add_back_advice(node: &str) -> String {
    format!("{node} was not restored (its agent did not answer): when it is back, reset it with `khctl reset --node {node}` (or `kubeadm reset -f` on it), then run `khctl rollout -f CLUSTER.yaml` to join it to the restored cluster")
}

struct Plan {
    spec: ClusterSpec,
    snapshot: SnapshotRef,
    req: EtcdRestoreRequest,
    source: Arc<dyn Snapshots>,
}

/// Validates the request and starts the restore (or its dry run) in the
/// background.
pub async fn start(
    coord: Arc<Coordinator>,
    req: EtcdRestoreRequest,
    source: Arc<dyn Snapshots>,
) -> Result<Follow, CoordError> {
    let spec = etcd::held_spec(&coord)?;
    if etcd::is_external(&spec) {
        return Err(CoordError::FailedPrecondition(format!(
            "cluster {} uses an external etcd cluster (spec.etcd.topology: external): kh does not run its members, so it cannot restore them. Restore it with your etcd tooling (`etcdutl snapshot restore` on every member), then run `khctl health`",
            spec.name
        )));
    }
    if req.snapshot.is_empty() {
        return Err(CoordError::InvalidArgument(
            "--snapshot is required: a stored snapshot's id (`khctl etcd snapshot list`) or a file"
                .into(),
        ));
    }
    let snapshot = source.get(&req.snapshot)?.ok_or_else(|| {
        CoordError::FailedPrecondition(format!(
            "--snapshot {}: no such snapshot in the store; `khctl etcd snapshot list` shows the stored ones, or pass a file",
            kh::echo(&req.snapshot)
        ))
    })?;
    let operation = operation_name(&snapshot.id);
    let guard = coord.rollouts.current.lock().await;
    super::refuse_if_running(&guard).await?;
    // An unfinished replacement would fight the restore over the members.
    if let Some(p) = super::replace::pending(&coord)
        .await?
        .filter(|_| !req.force)
    {
        return Err(CoordError::FailedPrecondition(format!(
            "{} did not finish and has changed the cluster; finish it first with `{}`. If it cannot finish because quorum is lost, restore with --force",
            p.operation, p.command
        )));
    }
    let now = unix_ms(coord.clock.now());
    let resume = resume_command(&req);
    let mut state =
        RolloutState::resume_or_begin(&coord.db, KEY, &operation, &spec.name, resume, now)?;
    if req.dry_run {
        state.steps.clear();
    }
    let (rep, live) = Reporter::begin(&coord, guard, state, req.dry_run, now)?;
    let plan = Plan {
        spec,
        snapshot,
        req,
        source,
    };
    tokio::spawn(async move {
        let result = run(coord, plan, rep.clone()).await;
        if let Err(f) = &result {
            tracing::warn!(node = %f.node, step = %f.step, error = %f.message, "etcd restore failed");
        }
        rep.finish(&result).await;
    });
    Ok(Follow {
        backlog: vec![],
        live: Some(live),
    })
}

async fn run(coord: Arc<Coordinator>, plan: Plan, rep: Reporter) -> Result<(), Failure> {
    if plan.req.dry_run {
        return Box::pin(steps(&coord, &plan, &rep)).await;
    }
    let holder = format!("etcd restore {}", plan.snapshot.id);
    let purpose = format!(
        "restoring etcd of cluster {} from snapshot {}",
        plan.spec.name, plan.snapshot.id
    );
    lease::hold(
        &coord,
        &holder,
        &purpose,
        Box::pin(steps(&coord, &plan, &rep)),
    )
    .await
}

fn pre(message: String, hint: &str) -> Failure {
    Failure {
        class: "preflight",
        node: "cluster".into(),
        step: "preconditions".into(),
        message,
        hint: hint.into(),
        report: None,
    }
}

fn age(now_ms: u64, then_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

/// Which control planes answer, in spec order.
async fn reachable(
    coord: &Coordinator,
    spec: &ClusterSpec,
) -> (Vec<(String, IpAddr)>, Vec<String>) {
    let checks = spec.control_planes().map(|cp| async move {
        let ok = match (Ops { coord }).record(&cp.name) {
            Ok(rec) => {
                tokio::time::timeout(REACH_TIMEOUT, coord.agents.node_status(&rec, REACH_TIMEOUT))
                    .await
                    .is_ok_and(|r| r.is_ok())
            }
            Err(_) => false,
        };
        (cp.name.clone(), cp.address, ok)
    });
    let all = futures::future::join_all(checks).await;
    let up = all
        .iter()
        .filter(|(_, _, ok)| *ok)
        .map(|(n, a, _)| (n.clone(), *a))
        .collect();
    let down = all
        .into_iter()
        .filter(|(_, _, ok)| !*ok)
        .map(|(n, _, _)| n)
        .collect();
    (up, down)
}

/// The preconditions; on success, what the restore will do.
async fn preconditions(coord: &Coordinator, plan: &Plan) -> Result<Fixed, Failure> {
    let snap = &plan.snapshot;
    plan.source.verify(&snap.id).await.map_err(|e| {
        pre(
            format!("snapshot {} fails its integrity check: {e}", snap.id),
            "take a new snapshot with `khctl etcd snapshot save` while the cluster is healthy, or pass another with --snapshot",
        )
    })?;
    let now = unix_ms(coord.clock.now());
    let latest = plan.source.latest().ok().flatten();
    let (members, left_out) = reachable(coord, &plan.spec).await;
    if members.is_empty() {
        return Err(pre(
            format!(
                "no control plane of cluster {} answers ({}); the restore runs on the control planes' agents",
                plan.spec.name,
                left_out.join(", ")
            ),
            "start kh-agent on the control planes (`systemctl status kh-agent`), then run the restore again",
        ));
    }
    // A cluster with quorum keeps accepting writes: restoring over it throws
    // away every write since the snapshot.
    if let Ok(view) = etcd::membership(coord, &plan.spec, None).await {
        let voters = view.members.iter().filter(|m| !m.is_learner).count();
        let healthy = view
            .members
            .iter()
            .filter(|m| !m.is_learner && m.healthy)
            .count();
        if voters > 0 && healthy > voters / 2 && !plan.req.force {
            let newest = latest
                .as_ref()
                .map(|l| {
                    format!(
                        "the latest snapshot, {}, is {} old",
                        l.id,
                        age(now, l.created_ms)
                    )
                })
                .unwrap_or_else(|| "no snapshot is stored".into());
            return Err(pre(
                format!(
                    "etcd of cluster {} has quorum ({healthy} of {voters} members healthy): restoring snapshot {} (taken {} ago) over a live cluster loses every write made since it; {newest}",
                    plan.spec.name,
                    snap.id,
                    age(now, snap.created_ms)
                ),
                "restore only after quorum is lost (`khctl health` shows it); to restore anyway, add --force",
            ));
        }
    }
    Ok(Fixed {
        op_id: format!("r{}", now),
        token: format!("kh-restore-{now}"),
        snapshot: snap.id.clone(),
        members,
        left_out,
    })
}

fn plan_notes(plan: &Plan, fixed: &Fixed, now_ms: u64) -> Vec<String> {
    let names: Vec<&str> = fixed.members.iter().map(|(n, _)| n.as_str()).collect();
    let mut notes = vec![
        format!(
            "snapshot {} (taken {} ago, {} bytes) goes to {} and is verified there with `etcdctl snapshot status` before anything stops",
            plan.snapshot.id,
            age(now_ms, plan.snapshot.created_ms),
            plan.snapshot.size,
            names.join(", ")
        ),
        format!("etcd and kube-apiserver stop on {}", names.join(", ")),
        format!(
            "each restores it as a new cluster: --initial-cluster {} --initial-cluster-token {}; the old data dir is moved aside (never deleted)",
            fixed.initial_cluster(),
            fixed.token
        ),
        "the members start, quorum and every apiserver's /readyz are awaited, and the cluster is verified".into(),
        "every write made after the snapshot is lost".into(),
    ];
    for n in &fixed.left_out {
        notes.push(add_back_advice(n));
    }
    notes
}

fn step_detail(plan: &Plan, fixed: &Fixed, step: &str, node: &str, addr: IpAddr) -> String {
    let aside = format!("/etc/kubernetes/kh-etcd-restore-{}", fixed.op_id);
    match step {
        "receive-snapshot" => format!(
            "snapshot {} ({} bytes), checked by size and SHA-256, then `etcdctl snapshot status`",
            plan.snapshot.id, plan.snapshot.size
        ),
        "stop" => format!(
            "move etcd.yaml and kube-apiserver.yaml to {aside}; wait until {addr}:2379, :2380 and :6443 close"
        ),
        "restore" => format!(
            "etcdctl snapshot restore --name={node} --initial-advertise-peer-urls={} into a new dir; the old data dir moved aside",
            url(addr, 2380)
        ),
        _ => "etcd.yaml back, wait until the member answers, then kube-apiserver.yaml".into(),
    }
}

async fn steps(coord: &Arc<Coordinator>, plan: &Plan, rep: &Reporter) -> Result<(), Failure> {
    let ops = &Ops { coord };
    let resumed = rep.state.lock().await.changed();
    let held: Option<Fixed> = if resumed {
        coord.db.get_json(PLAN_KEY).map_err(CoordError::from)?
    } else {
        None
    };
    let fixed = match held {
        Some(f) if f.snapshot == plan.snapshot.id => {
            rep.note(
                Phase::Preconditions,
                "cluster",
                format!(
                    "resuming: members {} (operation {}); finished steps are not repeated",
                    f.initial_cluster(),
                    f.op_id
                ),
            )
            .await;
            f
        }
        _ => {
            rep.phase(Phase::Preconditions).await;
            let check = async {
                let f = preconditions(coord, plan).await?;
                let note = format!(
                    "restoring {} on {}{}",
                    plan.snapshot.id,
                    f.members
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    if f.left_out.is_empty() {
                        String::new()
                    } else {
                        format!("; not reachable, left out: {}", f.left_out.join(", "))
                    }
                );
                Ok((f, note))
            };
            if plan.req.dry_run {
                // A dry run records nothing: no step record, no audit entry.
                let (f, note) = check.await?;
                rep.note(Phase::Preconditions, "cluster", note).await;
                f
            } else {
                let f = rep
                    .tracked(Phase::Preconditions, "cluster", "preconditions", check)
                    .await?;
                coord.db.put_json(PLAN_KEY, &f).map_err(CoordError::from)?;
                f
            }
        }
    };
    let now = unix_ms(coord.clock.now());
    let mut phases = vec![];
    for (phase, step) in [
        (Phase::Distribute, "receive-snapshot"),
        (Phase::Stop, "stop"),
        (Phase::Restore, "restore"),
        (Phase::Start, "start"),
    ] {
        let mut steps = vec![];
        for (node, addr) in &fixed.members {
            let done = rep.is_done(&format!("{node}/{step}")).await;
            steps.push(proto::PlannedStep {
                node: node.clone(),
                step: step.into(),
                state: if done { "done" } else { "pending" }.into(),
                detail: step_detail(plan, &fixed, step, node, *addr),
            });
        }
        phases.push(proto::PlannedPhase {
            name: phase.to_string(),
            steps,
        });
    }
    phases.push(proto::PlannedPhase {
        name: Phase::Verify.to_string(),
        steps: vec![proto::PlannedStep {
            node: "cluster".into(),
            step: "verify".into(),
            state: "pending".into(),
            detail: format!(
                "{} healthy etcd members, each apiserver's /readyz",
                fixed.members.len()
            ),
        }],
    });
    rep.emit(proto::RolloutEvent {
        kind: proto::rollout_event::Kind::Plan as i32,
        plan: Some(proto::RolloutPlan {
            cluster: plan.spec.name.clone(),
            phases,
            notes: plan_notes(plan, &fixed, now),
            rendered: vec![],
        }),
        ..Default::default()
    })
    .await;
    if plan.req.dry_run {
        return Ok(());
    }
    let op = fixed.op_id.clone();

    // b. Distribute and verify: a bad snapshot stops the restore here,
    // before anything is stopped.
    rep.phase(Phase::Distribute).await;
    let sends = fixed.members.iter().map(|(node, _)| {
        let op = op.clone();
        async move {
            if rep.is_done(&format!("{node}/restore")).await {
                return Ok(());
            }
            rep.tracked(Phase::Distribute, node, "receive-snapshot", async {
                let rec = ops.record(node)?;
                let pieces = plan.source.pieces(&plan.snapshot.id).map_err(Failure::from)?;
                let header = proto::EtcdSnapshotPiece {
                    operation: op.clone(),
                    size: plan.snapshot.size,
                    sha256: plan.snapshot.sha256.clone(),
                    data: vec![],
                };
                let r = coord
                    .agents
                    .put_etcd_snapshot(&rec, header, pieces, SNAPSHOT_TIMEOUT)
                    .await
                    .map_err(|e| Failure {
                        class: "preflight",
                        node: node.clone(),
                        step: "receive-snapshot".into(),
                        message: format!("snapshot {} refused on {node}: {}", plan.snapshot.id, crate::agents::explain(node, &e)),
                        hint: "nothing was stopped; take a new snapshot (`khctl etcd snapshot save`) or pass another with --snapshot, or bring the agent back".into(),
                        report: None,
                    })?;
                Ok((
                    (),
                    format!(
                        "received {} bytes; etcdctl snapshot status: revision {}, {} keys",
                        plan.snapshot.size, r.revision, r.total_keys
                    ),
                ))
            })
            .await
        }
    });
    let refused = futures::future::join_all(sends)
        .await
        .into_iter()
        .find_map(Result::err);
    if let Some(f) = refused {
        // Nothing was stopped: the copies that arrived are removed, since
        // they hold every Secret of the cluster. Best effort; a node that
        // keeps one is named.
        if !rep.state.lock().await.changed() {
            for (node, _) in &fixed.members {
                let step = Step::EtcdRestoreDiscard(proto::EtcdRestoreDiscard {
                    operation: op.clone(),
                });
                if let Err(e) = ops.step(node, step.name(), step, false).await {
                    rep.note(
                        Phase::Distribute,
                        node,
                        format!("could not remove the received snapshot: {}; remove /var/lib/kh-agent/etcd-restore-{op} there by hand", e.message),
                    )
                    .await;
                }
            }
        }
        return Err(f);
    }

    // c. Stop etcd and the apiserver everywhere before any member restores.
    // A leader told to stop first hands its leadership to a peer, which
    // waits for followers that are stopping too (etcd's request timeout,
    // beyond the kubelet's grace): the leader, if there is one, stops last.
    rep.phase(Phase::Stop).await;
    let mut all_stopped = true;
    for (n, _) in &fixed.members {
        all_stopped &= rep.is_done(&format!("{n}/stop")).await;
    }
    let leader = if all_stopped {
        None
    } else {
        leader_node(coord, &plan.spec).await
    };
    let followers = fixed
        .members
        .iter()
        .filter(|(n, _)| Some(n) != leader.as_ref())
        .map(|(n, a)| node_step(ops, rep, Phase::Stop, n, "stop", stop_step(&op, *a)));
    for r in futures::future::join_all(followers).await {
        r?;
    }
    if let Some((n, a)) = fixed
        .members
        .iter()
        .find(|(n, _)| Some(n) == leader.as_ref())
    {
        node_step(ops, rep, Phase::Stop, n, "stop", stop_step(&op, *a)).await?;
    }

    // d. Restore on each, with the same membership and token.
    rep.phase(Phase::Restore).await;
    let restores = fixed.members.iter().map(|(node, addr)| {
        let step = Step::EtcdRestore(proto::EtcdRestore {
            operation: op.clone(),
            name: node.clone(),
            initial_cluster: fixed.initial_cluster(),
            initial_cluster_token: fixed.token.clone(),
            initial_advertise_peer_url: url(*addr, 2380),
        });
        node_step(ops, rep, Phase::Restore, node, "restore", step)
    });
    for r in futures::future::join_all(restores).await {
        r?;
    }

    // e. Start the members together: each waits for its own member, and
    // quorum needs a majority of them running.
    rep.phase(Phase::Start).await;
    let starts = fixed.members.iter().map(|(node, _)| {
        let step = Step::EtcdStartControlPlane(proto::EtcdStartControlPlane {
            operation: op.clone(),
        });
        node_step(ops, rep, Phase::Start, node, "start", step)
    });
    for r in futures::future::join_all(starts).await {
        r?;
    }

    // f. Verify as `khctl health` does for etcd and the apiservers: the
    // restored members form one healthy cluster and every restored
    // apiserver is ready.
    rep.phase(Phase::Verify).await;
    rep.tracked(Phase::Verify, "cluster", "verify", async {
        verify(coord, &plan.spec, &fixed).await?;
        let mut msg = format!(
            "etcd has {} healthy members ({}); their apiservers are ready",
            fixed.members.len(),
            fixed
                .members
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        if !fixed.left_out.is_empty() {
            msg.push_str(&format!("; not restored: {}", fixed.left_out.join(", ")));
        }
        Ok(((), msg))
    })
    .await?;
    for n in &fixed.left_out {
        rep.note(Phase::Verify, n, add_back_advice(n)).await;
    }
    Ok(())
}

/// The node whose member leads, when etcd has a leader (it has none without
/// quorum). Best effort: without an answer every member stops at once.
async fn leader_node(coord: &Coordinator, spec: &ClusterSpec) -> Option<String> {
    let view = tokio::time::timeout(REACH_TIMEOUT, etcd::membership(coord, spec, None))
        .await
        .ok()?
        .ok()?;
    view.members
        .iter()
        .find(|m| m.is_leader && m.healthy)
        .map(|m| m.node.clone())
        .filter(|n| !n.is_empty())
}

fn stop_step(op: &str, addr: IpAddr) -> Step {
    Step::EtcdStopControlPlane(proto::EtcdStopControlPlane {
        operation: op.to_string(),
        ports: [2379u16, 2380, 6443]
            .iter()
            .map(|p| std::net::SocketAddr::new(addr, *p).to_string())
            .collect(),
    })
}

async fn node_step(
    ops: &Ops<'_>,
    rep: &Reporter,
    phase: Phase,
    node: &str,
    name: &str,
    step: Step,
) -> Result<(), Failure> {
    if rep.is_done(&format!("{node}/{name}")).await {
        return Ok(());
    }
    let wire = step.name();
    rep.tracked(phase, node, name, async {
        let r = ops.step(node, wire, step, false).await?;
        Ok(((), r.message))
    })
    .await
}

/// The restored members are exactly the planned ones, all healthy, and each
/// restored control plane's apiserver answers /readyz.
async fn verify(coord: &Coordinator, spec: &ClusterSpec, fixed: &Fixed) -> Result<(), Failure> {
    let mut restored = spec.clone();
    restored.nodes.retain(|n| {
        n.role != kh::spec::NodeRole::ControlPlane
            || fixed.members.iter().any(|(m, _)| *m == n.name)
    });
    let ops = Ops { coord };
    let start = std::time::Instant::now();
    let mut last = String::new();
    while start.elapsed() < Duration::from_secs(180) {
        match etcd::membership(coord, &restored, None).await {
            Ok(view) => {
                let names: Vec<&str> = view.members.iter().map(|m| m.name.as_str()).collect();
                let all = fixed
                    .members
                    .iter()
                    .all(|(n, _)| names.contains(&n.as_str()));
                let healthy = view.members.iter().all(|m| m.healthy);
                if all && healthy && view.members.len() == fixed.members.len() {
                    let mut not_ready = vec![];
                    for (n, a) in &fixed.members {
                        if let Err(e) = ops.apiserver_ready(n, &url(*a, 6443)).await {
                            not_ready.push(format!("{n}: {e}"));
                        }
                    }
                    if not_ready.is_empty() {
                        return Ok(());
                    }
                    last = format!("apiservers not ready: {}", not_ready.join("; "));
                } else {
                    last = format!(
                        "members now: {}",
                        view.members
                            .iter()
                            .map(|m| format!(
                                "{} ({})",
                                m.name,
                                if m.healthy {
                                    "healthy"
                                } else {
                                    &m.health_error
                                }
                            ))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(Failure::at(
        "cluster",
        "verify",
        format!("the restored cluster is not healthy after 180s: {last}"),
        "run `khctl health`; read etcd's log on the control planes (`crictl logs` of the etcd container)",
    ))
}

/// `etcd-restore-finished` for `khctl health`: a restore that changed the
/// cluster and stopped must be resumed with its command.
pub async fn health_check(coord: &Coordinator) -> Result<proto::HealthCheck, CoordError> {
    super::operation::unfinished_check(
        coord,
        KEY,
        "etcd-restore-finished",
        "etcd restore",
        "etcd and the apiservers may be stopped",
    )
    .await
}

/// The coordinator's snapshot store (`crate::snapshots`) as the restore's
/// source.
pub struct StoreSnapshots(pub Arc<Coordinator>);

fn reference(m: crate::snapshots::SnapshotMeta) -> SnapshotRef {
    SnapshotRef {
        id: m.id,
        size: m.size,
        sha256: m.sha256,
        created_ms: m.created_ms,
    }
}

impl Snapshots for StoreSnapshots {
    fn get(&self, id: &str) -> Result<Option<SnapshotRef>, CoordError> {
        Ok(crate::snapshots::get(&self.0, id)?.map(reference))
    }

    fn latest(&self) -> Result<Option<SnapshotRef>, CoordError> {
        Ok(crate::snapshots::list(&self.0)?.pop().map(reference))
    }

    fn verify(&self, id: &str) -> futures::future::BoxFuture<'static, Result<(), CoordError>> {
        let (coord, id) = (self.0.clone(), id.to_string());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                for chunk in crate::snapshots::reader(&coord, &id)? {
                    chunk?;
                }
                Ok(())
            })
            .await
            .map_err(|e| CoordError::Unavailable(format!("the snapshot check panicked: {e}")))?
        })
    }

    fn pieces(&self, id: &str) -> Result<SnapshotPieces, CoordError> {
        use futures::StreamExt;
        let id = id.to_string();
        // A read error ends the stream early; the agent then refuses the
        // short file by its size and SHA-256, and the error is logged here.
        Ok(crate::snapshots::read_stream(&self.0, &id)?
            .take_while(move |r| {
                if let Err(e) = r {
                    tracing::warn!(snapshot = %id, error = %e, "reading a stored snapshot failed");
                }
                futures::future::ready(r.is_ok())
            })
            .filter_map(|r| futures::future::ready(r.ok()))
            .boxed())
    }
}
