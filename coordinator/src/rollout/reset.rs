//! `khctl reset`: tear the cluster down in a safe order, or reset one node.
//!
//! The whole cluster: workers first (in parallel), then the control planes
//! one at a time under the control-plane lease, the first control plane
//! last, each with `kubeadm reset -f` (with stacked etcd, kubeadm removes
//! the node's own member as it goes). Then the coordinator forgets the
//! cluster: join material, external etcd client files and the rollout state,
//! so the next rollout starts a new cluster with fresh material. A failure
//! stops before the next group of nodes; the reset is re-runnable, since a
//! node already reset reports Unchanged.
//!
//! One node (`--node`): a worker always; a control plane only when etcd
//! keeps quorum without its member (the preconditions of `khctl etcd
//! remove-member`), and never the spec's first control plane (a rollout
//! would initialize a new cluster there) or the last one. A control plane
//! leaves the load balancers' backends first, then is reset, its member is
//! removed if kubeadm left it, and its Node object is deleted through
//! another control plane. That path, [`take_out`], is also how a rollout
//! removes a node the spec no longer lists (`phase::remove`), with a drain
//! first.

use std::sync::Arc;

use kh::proto::{self, rollout_event::Kind, run_step_request::Step, ResetRequest, RolloutEvent};
use kh::spec::{ClusterSpec, Etcd, NodeRole, NodeSpec};
use kh::time::unix_ms;

use super::ops::{url, Failure, Ops};
use super::phase::Phase;
use super::reporter::Reporter;
use super::state::{Outcome, RolloutState};
use super::Follow;
use crate::error::CoordError;
use crate::{etcd, lease, Coordinator};

/// Where the reset's own journal lives.
pub const KEY: &str = "reset/state";

#[derive(Clone)]
enum Target {
    Cluster,
    Node(NodeSpec),
}

/// The order the whole cluster is reset in: workers (together), then the
/// control planes one at a time, the first one last.
pub fn order(spec: &ClusterSpec) -> (Vec<&NodeSpec>, Vec<&NodeSpec>) {
    let workers = spec.workers().collect();
    let mut cps: Vec<&NodeSpec> = spec.control_planes().collect();
    cps.reverse();
    (workers, cps)
}

fn planned(node: &str, step: &str, detail: &str) -> proto::PlannedStep {
    proto::PlannedStep {
        node: node.into(),
        step: step.into(),
        state: "pending".into(),
        detail: detail.into(),
    }
}

fn plan(spec: &ClusterSpec, target: &Target) -> proto::RolloutPlan {
    let mut phases = vec![];
    let mut notes = vec![];
    match target {
        Target::Cluster => {
            let (workers, cps) = order(spec);
            phases.push(proto::PlannedPhase {
                name: Phase::Workers.name().into(),
                steps: workers
                    .iter()
                    .map(|n| {
                        planned(
                            &n.name,
                            "kubeadm-reset",
                            "kubeadm reset -f (all workers at once)",
                        )
                    })
                    .collect(),
            });
            phases.push(proto::PlannedPhase {
                name: Phase::ControlPlanes.name().into(),
                steps: cps
                    .iter()
                    .map(|n| planned(&n.name, "kubeadm-reset", "kubeadm reset -f, one at a time under the control-plane lease; the first control plane last"))
                    .collect(),
            });
            phases.push(proto::PlannedPhase {
                name: Phase::Cleanup.name().into(),
                steps: vec![planned(
                    "",
                    "forget-cluster",
                    "wipe the join material, external etcd client files and rollout state on the coordinator",
                )],
            });
            if etcd::is_external(spec) {
                notes.push(external_etcd_note(spec));
            }
            if spec.load_balancers().next().is_some() {
                notes.push(
                    "load-balancer nodes keep their HAProxy config; the next rollout rewrites it"
                        .into(),
                );
            }
        }
        Target::Node(n) => {
            let mut steps = vec![];
            if n.role == NodeRole::ControlPlane {
                steps.push(planned(
                    &n.name,
                    super::lb::STEP,
                    "remove it from the load balancers' backends",
                ));
            }
            steps.push(planned(&n.name, "kubeadm-reset", "kubeadm reset -f"));
            if n.role == NodeRole::ControlPlane && !etcd::is_external(spec) {
                steps.push(planned(
                    &n.name,
                    "etcd-member",
                    "make sure its etcd member is gone",
                ));
            }
            steps.push(planned(
                &n.name,
                "delete-node",
                "kubectl delete node, through another control plane",
            ));
            phases.push(proto::PlannedPhase {
                name: Phase::Reset.name().into(),
                steps,
            });
            notes.push(format!(
                "{} stays in the spec: the next `khctl rollout` joins it again",
                n.name
            ));
        }
    }
    proto::RolloutPlan {
        cluster: spec.name.clone(),
        phases,
        rendered: vec![],
        notes,
    }
}

/// kubeadm reset leaves an external etcd's data alone, and so does kh: the
/// etcd cluster is the operator's. A new cluster on the same endpoints would
/// find the old one's Nodes and Secrets.
fn external_etcd_note(spec: &ClusterSpec) -> String {
    format!(
        "the external etcd cluster ({}) keeps this cluster's data under /registry; kh does not touch it. Before building a new cluster on it, delete it with `etcdctl --endpoints=... del /registry --prefix` (with the apiserver's client certificate)",
        etcd::client_endpoints(spec).join(",")
    )
}

/// Checks everything `--node` needs before anything changes (and what a
/// rollout's removal of a node needs, with `force`: the spec's final shape
/// is the operator's).
pub(crate) async fn node_preconditions(
    coord: &Coordinator,
    spec: &ClusterSpec,
    node: &NodeSpec,
    force: bool,
) -> Result<(), CoordError> {
    match node.role {
        NodeRole::Worker => Ok(()),
        NodeRole::LoadBalancer => Err(CoordError::InvalidArgument(format!(
            "--node {}: a load balancer runs no kubeadm; stop HAProxy there yourself, or remove the node from the spec",
            node.name
        ))),
        NodeRole::ControlPlane => {
            let cps: Vec<&NodeSpec> = spec.control_planes().collect();
            if cps.len() < 2 {
                return Err(CoordError::FailedPrecondition(format!(
                    "refusing to reset {}: it is the only control plane; reset the whole cluster with `khctl reset`",
                    node.name
                )));
            }
            if cps[0].name == node.name {
                return Err(CoordError::FailedPrecondition(format!(
                    "refusing to reset {}: it is the spec's first control plane, where a rollout runs kubeadm init, so the next rollout would start a second cluster on it. Replace it with `khctl etcd replace --failed {} --with NEW`, or reset the whole cluster",
                    node.name, node.name
                )));
            }
            if etcd::is_external(spec) {
                return Ok(());
            }
            let view = etcd::membership(coord, spec, Some(&node.name)).await?;
            let Some(member) = view.members.iter().find(|m| m.node == node.name) else {
                // No member left: nothing for etcd to lose.
                return Ok(());
            };
            let q = etcd::quorum_without(&view.members, member.id);
            let what = format!("reset control plane {} (etcd member {})", node.name, member.id_hex);
            if let Some(r) = etcd::quorum_refusal(&q, &what) {
                return Err(CoordError::FailedPrecondition(r));
            }
            if !force {
                if let Some(r) = etcd::tolerance_refusal(&q, &what) {
                    return Err(CoordError::FailedPrecondition(r));
                }
            }
            Ok(())
        }
    }
}

/// Validates the request and starts the reset in the background; a dry run
/// returns only the plan.
pub async fn start(coord: Arc<Coordinator>, req: ResetRequest) -> Result<Follow, CoordError> {
    let spec = etcd::held_spec(&coord)?;
    let target = match req.node.as_str() {
        "" => Target::Cluster,
        name => Target::Node(spec.node(name).cloned().ok_or_else(|| {
            let names: Vec<&str> = spec.nodes.iter().map(|n| n.name.as_str()).collect();
            CoordError::InvalidArgument(format!(
                "--node {}: not a node of cluster {} (its nodes: {})",
                kh::echo(name),
                spec.name,
                names.join(", ")
            ))
        })?),
    };
    let plan_event = RolloutEvent {
        kind: Kind::Plan as i32,
        plan: Some(plan(&spec, &target)),
        ..Default::default()
    };
    if req.dry_run {
        return Ok(Follow {
            backlog: vec![
                plan_event,
                RolloutEvent {
                    kind: Kind::Finished as i32,
                    ok: true,
                    message: "dry run: nothing was changed".into(),
                    ..Default::default()
                },
            ],
            live: None,
        });
    }
    if let Target::Node(n) = &target {
        node_preconditions(&coord, &spec, n, req.force).await?;
    }
    let mut guard = coord.rollouts.current.lock().await;
    super::refuse_if_running(&guard).await?;
    let operation = match &target {
        Target::Cluster => format!("reset {}", spec.name),
        Target::Node(n) => format!("reset {} node {}", spec.name, n.name),
    };
    let now = unix_ms(coord.clock.now());
    let mut state = RolloutState {
        key: KEY.into(),
        operation,
        cluster: spec.name.clone(),
        spec_yaml: RolloutState::load(&coord.db)?
            .map(|s| s.spec_yaml)
            .unwrap_or_default(),
        started_ms: now,
        ..Default::default()
    };
    state.save(&coord.db, now)?;
    let rep = Reporter::new(coord.clone(), state);
    let live = rep.tx.subscribe();
    *guard = Some(rep.clone());
    drop(guard);
    tokio::spawn(async move {
        rep.emit(plan_event).await;
        let result = match &target {
            Target::Cluster => reset_cluster(&coord, &spec, &rep).await,
            Target::Node(n) => reset_node(&coord, &spec, n, req.force, &rep).await,
        };
        match result {
            Err(f) => {
                tracing::warn!(node = %f.node, step = %f.step, error = %f.message, "reset failed");
                rep.finish(&Err(f)).await;
            }
            Ok(message) => finish_ok(&coord, &rep, &message).await,
        }
    });
    Ok(Follow {
        backlog: vec![],
        live: Some(live),
    })
}

async fn finish_ok(coord: &Coordinator, rep: &Reporter, message: &str) {
    let now = unix_ms(coord.clock.now());
    {
        let mut st = rep.state.lock().await;
        st.outcome = Some(Outcome {
            ok: true,
            failure: String::new(),
            message: message.to_string(),
        });
        st.finished_ms = now;
        if let Err(e) = st.save(&coord.db, now) {
            tracing::error!(error = %e, "could not persist the reset outcome");
        }
    }
    rep.emit(RolloutEvent {
        kind: Kind::Finished as i32,
        ok: true,
        message: message.to_string(),
        ..Default::default()
    })
    .await;
}

const RESET_HINT: &str =
    "fix the cause on the node, then run `khctl reset` again: nodes already reset are not touched";

/// `kubeadm reset -f` on `node` as a tracked step; `hint` says how to go on
/// after a failure.
async fn kubeadm_reset(
    ops: &Ops<'_>,
    rep: &Reporter,
    phase: Phase,
    node: &str,
    hint: &str,
) -> Result<(), Failure> {
    rep.tracked(phase, node, "kubeadm-reset", async {
        let r = ops
            .step(
                node,
                "kubeadm-reset",
                Step::KubeadmReset(proto::KubeadmReset {}),
                false,
            )
            .await
            .map_err(|mut f| {
                f.hint = hint.into();
                f
            })?;
        Ok(((), r.message))
    })
    .await
}

async fn reset_cluster(
    coord: &Coordinator,
    spec: &ClusterSpec,
    rep: &Reporter,
) -> Result<String, Failure> {
    let ops = Ops { coord };
    let (workers, cps) = order(spec);
    rep.phase(Phase::Workers).await;
    let results = futures::future::join_all(
        workers
            .iter()
            .map(|w| kubeadm_reset(&ops, rep, Phase::Workers, &w.name, RESET_HINT)),
    )
    .await;
    if let Some(f) = results.into_iter().find_map(Result::err) {
        return Err(f);
    }
    rep.phase(Phase::ControlPlanes).await;
    let holder = format!("reset {}", spec.name);
    lease::hold(
        coord,
        &holder,
        "resetting the control planes",
        Box::pin(async {
            for cp in &cps {
                kubeadm_reset(&ops, rep, Phase::ControlPlanes, &cp.name, RESET_HINT).await?;
            }
            Ok::<_, Failure>(())
        }),
    )
    .await?;
    rep.phase(Phase::Cleanup).await;
    rep.tracked(Phase::Cleanup, "cluster", "forget-cluster", async {
        super::material::wipe(&coord.db)?;
        super::external_etcd::wipe(&coord.db)?;
        super::state::RolloutState::clear(&coord.db)?;
        // An unfinished replacement of the torn-down cluster is moot.
        super::state::RolloutState::clear_at(&coord.db, super::replace::KEY)?;
        Ok((
            (),
            "wiped the join material, external etcd client files and rollout state".to_string(),
        ))
    })
    .await?;
    let mut message = format!(
        "cluster {} was reset: {} workers and {} control planes; run `khctl rollout -f cluster.yaml` to build it again",
        spec.name,
        workers.len(),
        cps.len()
    );
    if etcd::is_external(spec) {
        message.push_str(&format!(". Note: {}", external_etcd_note(spec)));
    }
    Ok(message)
}

/// A control plane other than `except` whose apiserver answers.
async fn healthy_cp(ops: &Ops<'_>, spec: &ClusterSpec, except: &str) -> Option<String> {
    for cp in spec.control_planes().filter(|c| c.name != except) {
        if ops
            .apiserver_ready(&cp.name, &url(cp.address, 6443))
            .await
            .is_ok()
        {
            return Some(cp.name.clone());
        }
    }
    None
}

async fn reset_node(
    coord: &Coordinator,
    spec: &ClusterSpec,
    node: &NodeSpec,
    force: bool,
    rep: &Reporter,
) -> Result<String, Failure> {
    rep.phase(Phase::Reset).await;
    let name = node.name.as_str();
    take_out(
        coord,
        node,
        &TakeOut {
            phase: Phase::Reset,
            spec,
            remaining: spec,
            holder: format!("reset {} node {name}", spec.name),
            drain: false,
            reachable: true,
            force,
            hint: RESET_HINT,
        },
        rep,
    )
    .await?;
    forget_node(coord, name).await?;
    Ok(format!(
        "node {name} was reset and removed from the cluster; it stays in the spec, so `khctl rollout -f cluster.yaml` joins it again"
    ))
}

/// How a node leaves the cluster: `khctl reset --node` and a rollout's
/// remove-nodes phase share it.
pub(crate) struct TakeOut<'a> {
    pub(crate) phase: Phase,
    /// A spec that lists the node: its preconditions and etcd member are
    /// judged against it.
    pub(crate) spec: &'a ClusterSpec,
    /// The spec of what stays: its load balancers get its control planes
    /// that answer as backends, and kubectl runs on one of them.
    pub(crate) remaining: &'a ClusterSpec,
    /// The control-plane lease's holder.
    pub(crate) holder: String,
    /// `kubectl drain` it first, through another control plane.
    pub(crate) drain: bool,
    /// Its agent answers: without it, the host is neither drained nor
    /// reset, and only the cluster's side is cleaned up.
    pub(crate) reachable: bool,
    /// Accept a removal that leaves etcd unable to lose another member.
    pub(crate) force: bool,
    /// What to do after a failed step.
    pub(crate) hint: &'a str,
}

/// Takes `node` out of the cluster: a control plane under the lease (its
/// preconditions again, out of the load balancers' backends, drained,
/// reset, its etcd member gone), a worker drained and reset; then its Node
/// object is deleted through a control plane that stays. kubelet
/// re-registers a Node deleted while it runs, so the host is reset before
/// its Node goes. A step the operation's state records as done is not run
/// again, so a resumed removal resets a host once.
pub(crate) async fn take_out(
    coord: &Coordinator,
    node: &NodeSpec,
    how: &TakeOut<'_>,
    rep: &Reporter,
) -> Result<(), Failure> {
    let ops = Ops { coord };
    let name = node.name.as_str();
    let phase = how.phase;
    let done = |step: &'static str| async move { rep.is_done(&format!("{name}/{step}")).await };
    let host = || async {
        if how.drain && how.reachable && !done("drain").await {
            drain(&ops, how, name, rep).await?;
        }
        if how.reachable && !done("kubeadm-reset").await {
            kubeadm_reset(&ops, rep, phase, name, how.hint).await?;
        }
        Ok::<_, Failure>(())
    };
    if node.role == NodeRole::ControlPlane {
        lease::hold(
            coord,
            &how.holder,
            &format!("taking control plane {name} out of the cluster"),
            Box::pin(async {
                // Again under the lease: membership may have changed since the
                // request was checked.
                node_preconditions(coord, how.spec, node, how.force)
                    .await
                    .map_err(|e| Failure {
                        class: "preflight",
                        node: name.to_string(),
                        step: "preconditions".into(),
                        message: e.to_string(),
                        hint: "nothing more was changed".into(),
                        report: None,
                    })?;
                let others: Vec<NodeSpec> = super::lb::ready_control_planes(coord, how.remaining)
                    .await
                    .into_iter()
                    .filter(|c| c.name != name)
                    .collect();
                let refs: Vec<&NodeSpec> = others.iter().collect();
                super::lb::configure(coord, how.remaining, rep, phase, &refs).await?;
                host().await?;
                if matches!(how.spec.etcd, Etcd::Stacked) && !done("etcd-member").await {
                    remove_leftover_member(coord, how.spec, node, rep, phase).await?;
                }
                Ok::<_, Failure>(())
            }),
        )
        .await?;
    } else {
        host().await?;
    }
    if done("delete-node").await {
        return Ok(());
    }
    let deleted = Step::KubectlDeleteNode(proto::KubectlDeleteNode { name: name.into() });
    let unasked = format!("delete it later with `kubectl delete node {name}`");
    from_another(
        &ops,
        how,
        rep,
        name,
        "delete-node",
        deleted,
        "delete its Node object",
        &unasked,
        None,
    )
    .await
}

/// A kubectl step about `name` (`step` in the operation's records), run
/// through a control plane of `how.remaining` that answers, never through
/// the node itself (a worker is never drained from its own agent).
/// `failed` replaces the hint of a failure of the step itself.
#[allow(clippy::too_many_arguments)]
async fn from_another(
    ops: &Ops<'_>,
    how: &TakeOut<'_>,
    rep: &Reporter,
    name: &str,
    step: &str,
    wire: Step,
    what: &str,
    unasked: &str,
    failed: Option<String>,
) -> Result<(), Failure> {
    rep.tracked(how.phase, name, step, async {
        let via = healthy_cp(ops, how.remaining, name).await.ok_or_else(|| {
            Failure::at(
                name,
                step,
                format!("no other control plane answers, so kh could not {what}"),
                unasked,
            )
        })?;
        let r = ops
            .step(&via, wire.name(), wire, false)
            .await
            .map_err(|mut f| {
                if let Some(hint) = &failed {
                    f.hint.clone_from(hint);
                }
                f
            })?;
        Ok(((), format!("{} (through {via})", r.message)))
    })
    .await
}

/// `kubectl drain` of `name` through a control plane that stays.
async fn drain(
    ops: &Ops<'_>,
    how: &TakeOut<'_>,
    name: &str,
    rep: &Reporter,
) -> Result<(), Failure> {
    let wire = Step::KubectlDrain(proto::KubectlDrain {
        node: name.into(),
        timeout_seconds: 0,
    });
    let failed = format!(
        "the drain did not finish (a PodDisruptionBudget, or a pod that will not leave? `kubectl get pods -A -o wide --field-selector spec.nodeName={name}` shows what is left); {}",
        how.hint
    );
    from_another(
        ops,
        how,
        rep,
        name,
        "drain",
        wire,
        "drain it",
        how.hint,
        Some(failed),
    )
    .await
}

/// kubeadm reset removes the node's own etcd member, but only warns when it
/// cannot; a member left behind would make the cluster count a dead voter.
async fn remove_leftover_member(
    coord: &Coordinator,
    spec: &ClusterSpec,
    node: &NodeSpec,
    rep: &Reporter,
    phase: Phase,
) -> Result<(), Failure> {
    rep.tracked(phase, &node.name, "etcd-member", async {
        let view = etcd::membership(coord, spec, Some(&node.name)).await?;
        let left = etcd::members_of(&view.members, &node.name);
        if left.is_empty() {
            return Ok((
                (),
                "its etcd member is gone (kubeadm reset removed it)".to_string(),
            ));
        }
        let endpoints: Vec<String> = view
            .members
            .iter()
            .filter(|m| !left.contains(&m.id) && m.healthy)
            .flat_map(|m| m.client_urls.clone())
            .collect();
        let ops = Ops { coord };
        for id in &left {
            ops.step(
                &view.via,
                "etcd-member-remove",
                Step::EtcdMemberRemove(proto::EtcdMemberRemove {
                    endpoints: endpoints.clone(),
                    member_id: *id,
                }),
                false,
            )
            .await?;
        }
        Ok((
            (),
            format!(
                "removed its etcd member, which was still listed ({} of them)",
                left.len()
            ),
        ))
    })
    .await
}

/// Drops the node's finished rollout steps, so the next rollout treats it
/// as new.
async fn forget_node(coord: &Coordinator, name: &str) -> Result<(), Failure> {
    if let Some(mut st) = RolloutState::load(&coord.db)? {
        let prefix = format!("{name}/");
        st.steps.retain(|k, _| !k.starts_with(&prefix));
        st.save(&coord.db, unix_ms(coord.clock.now()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_go_first_and_the_first_control_plane_last() {
        let spec = kh::spec::parse("apiVersion: kh.io/v1alpha1\nkind: Cluster\nmetadata: {name: t}\nspec:\n  nodes:\n    - {name: cp-1, role: control-plane, address: 10.0.0.11}\n    - {name: w-1, role: worker, address: 10.0.0.21}\n    - {name: cp-2, role: control-plane, address: 10.0.0.12}\n    - {name: cp-3, role: control-plane, address: 10.0.0.13}\n    - {name: w-2, role: worker, address: 10.0.0.22}\n").unwrap();
        let (workers, cps) = order(&spec);
        let names = |v: &[&NodeSpec]| v.iter().map(|n| n.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&workers), ["w-1", "w-2"]);
        assert_eq!(names(&cps), ["cp-3", "cp-2", "cp-1"]);
        let p = plan(&spec, &Target::Cluster);
        let phases: Vec<&str> = p.phases.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(phases, ["workers", "control-planes", "cleanup"]);
    }
}
