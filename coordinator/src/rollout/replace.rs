//! `khctl etcd replace --failed cp-2 --with cp-4`: replace a dead (or
//! failing) control plane without losing quorum or data.
//!
//! Preconditions are checked before anything changes; then, holding the
//! control-plane lease throughout: move leadership away from the failed
//! member if it leads, remove its member, delete its Node, reset it if it is
//! reachable, prepare the new node, join it under fresh join material, wait
//! until it is promoted and healthy, update the spec the coordinator holds,
//! and verify with the same checks as `khctl health`. Every step is persisted,
//! so a replacement resumed after a crash never removes a second member.

use std::sync::Arc;
use std::time::Duration;

use kh::names::NodeName;
use kh::proto::{self, run_step_request::Step, EtcdReplaceRequest};
use kh::spec::{ClusterSpec, NodeRole, NodeSpec};
use kh::time::unix_ms;

use super::ops::{url, Failure, Ops};
use super::phase::{control_plane::join_control_plane, prepare::prepare_node, Ctx, Phase};
use super::reporter::Reporter;
use super::state::RolloutState;
use super::Follow;
use crate::error::CoordError;
use crate::{etcd, lease, Coordinator};

pub const KEY: &str = "etcd/replace";

struct Plan {
    spec: ClusterSpec,
    spec_yaml: String,
    failed: NodeSpec,
    new: NodeSpec,
    force: bool,
    no_snapshot: bool,
}

/// Validates the request and starts the replacement in the background.
pub async fn start(coord: Arc<Coordinator>, req: EtcdReplaceRequest) -> Result<Follow, CoordError> {
    let spec = etcd::held_spec(&coord)?;
    if etcd::is_external(&spec) {
        return Err(CoordError::FailedPrecondition(etcd::external_refusal(
            &spec,
        )));
    }
    let failed = spec
        .node(&req.failed)
        .filter(|n| n.role == NodeRole::ControlPlane)
        .cloned()
        .ok_or_else(|| {
            let cps: Vec<&str> = spec.control_planes().map(|n| n.name.as_str()).collect();
            CoordError::InvalidArgument(format!(
                "--failed {}: not a control plane of cluster {} (its control planes: {})",
                kh::echo(&req.failed),
                spec.name,
                cps.join(", ")
            ))
        })?;
    let with = NodeName::new(&req.with)?;
    let record = coord.registry.get(&with)?.ok_or_else(|| {
        CoordError::FailedPrecondition(format!("--with {with}: not enrolled; enroll it first with `khctl token create --node {with}` and the printed command"))
    })?;
    if req.with != req.failed && spec.node(&req.with).is_some() {
        return Err(CoordError::InvalidArgument(format!(
            "--with {with}: already a node of cluster {}; name a new, enrolled host",
            spec.name
        )));
    }
    let address = match req.address.as_str() {
        "" if req.with == req.failed => failed.address,
        "" => record
            .endpoint
            .parse::<std::net::SocketAddr>()
            .map(|a| a.ip())
            .map_err(|_| {
                CoordError::FailedPrecondition(format!(
                    "--with {with}: its agent has not reported an address yet; pass --address IP"
                ))
            })?,
        a => a.parse().map_err(|_| {
            CoordError::InvalidArgument(format!("--address {} is not an IP address", kh::echo(a)))
        })?,
    };
    let new = NodeSpec {
        name: with.to_string(),
        role: NodeRole::ControlPlane,
        address,
    };
    let spec_yaml = RolloutState::load(&coord.db)?
        .map(|s| s.spec_yaml)
        .unwrap_or_default();
    let operation = format!("etcd replace {} with {}", failed.name, new.name);

    let mut guard = coord.rollouts.current.lock().await;
    super::refuse_if_running(&guard).await?;
    let now = unix_ms(coord.clock.now());
    let resume = resume_command(&req);
    let mut state =
        RolloutState::resume_or_begin(&coord.db, KEY, &operation, &spec.name, resume, now)?;
    if state.spec_yaml.is_empty() {
        state.spec_yaml = spec_yaml.clone();
    }
    state.save(&coord.db, now)?;
    let rep = Reporter::new(coord.clone(), state);
    let live = rep.tx.subscribe();
    *guard = Some(rep.clone());
    drop(guard);
    let plan = Plan {
        spec,
        spec_yaml,
        failed,
        new,
        force: req.force,
        no_snapshot: req.no_snapshot,
    };
    tokio::spawn(async move {
        let result = run(coord, plan, rep.clone()).await;
        if let Err(f) = &result {
            tracing::warn!(node = %f.node, step = %f.step, error = %f.message, "etcd replacement failed");
        }
        rep.finish(&result).await;
    });
    Ok(Follow {
        backlog: vec![],
        live: Some(live),
    })
}

/// The exact command that resumes this replacement.
pub fn resume_command(req: &EtcdReplaceRequest) -> String {
    let mut cmd = format!(
        "khctl etcd replace --failed {} --with {}",
        req.failed, req.with
    );
    if !req.address.is_empty() {
        cmd.push_str(&format!(" --address {}", req.address));
    }
    if req.force {
        cmd.push_str(" --force");
    }
    if req.no_snapshot {
        cmd.push_str(" --no-snapshot");
    }
    cmd
}

/// An etcd replacement that changed the cluster and did not finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// "etcd replace cp-2 with cp-4".
    pub operation: String,
    pub failed: String,
    pub with: String,
    /// The exact command that resumes it.
    pub command: String,
    /// Running in this coordinator right now (not stopped).
    pub running: bool,
    /// Where it stopped: the failed step and its message, if one failed.
    pub stopped_at: String,
}

/// The unfinished replacement, if there is one. A replacement refused
/// before its first change (only its preconditions ran) changed nothing and
/// does not count.
pub async fn pending(coord: &Coordinator) -> Result<Option<Pending>, CoordError> {
    let Some(st) = RolloutState::load_at(&coord.db, KEY)? else {
        return Ok(None);
    };
    if st.outcome.as_ref().is_some_and(|o| o.ok) {
        return Ok(None);
    }
    let changed = st.changed();
    let Some((failed, with)) = parse_operation(&st.operation) else {
        return Ok(None);
    };
    if !changed {
        return Ok(None);
    }
    let running = match coord.rollouts.current.lock().await.as_ref() {
        Some(rep) => {
            let cur = rep.state.lock().await;
            cur.key == KEY && cur.outcome.is_none()
        }
        None => false,
    };
    let stopped_at = st
        .steps
        .iter()
        .find(|(_, s)| s.status == super::state::Status::Failed)
        .map(|(k, s)| {
            format!(
                "{k} failed: {}",
                s.message.lines().next().unwrap_or_default()
            )
        })
        .or_else(|| {
            st.steps
                .iter()
                .find(|(_, s)| s.status == super::state::Status::Running)
                .map(|(k, _)| format!("{k} was running when the coordinator stopped"))
        })
        .unwrap_or_default();
    let command = if st.resume.is_empty() {
        format!("khctl etcd replace --failed {failed} --with {with}")
    } else {
        st.resume.clone()
    };
    Ok(Some(Pending {
        operation: st.operation,
        failed,
        with,
        command,
        running,
        stopped_at,
    }))
}

/// ("cp-2", "cp-4") from "etcd replace cp-2 with cp-4". Node names hold no
/// spaces, so the split is exact.
pub(crate) fn parse_operation(op: &str) -> Option<(String, String)> {
    let rest = op.strip_prefix("etcd replace ")?;
    let (failed, with) = rest.split_once(" with ")?;
    (!failed.is_empty() && !with.is_empty() && !with.contains(' '))
        .then(|| (failed.to_string(), with.to_string()))
}

async fn run(coord: Arc<Coordinator>, plan: Plan, rep: Reporter) -> Result<(), Failure> {
    let holder = format!("etcd replace {}", plan.failed.name);
    let purpose = format!(
        "replacing control plane {} with {}",
        plan.failed.name, plan.new.name
    );
    // Boxed: the replacement's steps make a large future, and the helper
    // would otherwise carry it by value, on the stack of the task's thread.
    lease::hold(
        &coord,
        &holder,
        &purpose,
        Box::pin(steps(&coord, &plan, &rep, holder.clone())),
    )
    .await
}

async fn steps(
    coord: &Arc<Coordinator>,
    plan: &Plan,
    rep: &Reporter,
    holder: String,
) -> Result<(), Failure> {
    let failed = &plan.failed;
    let new = &plan.new;
    let ops = Ops { coord };
    // The spec after the replacement: the new node in the failed one's place.
    let mut new_spec = plan.spec.clone();
    if let Some(n) = new_spec.nodes.iter_mut().find(|n| n.name == failed.name) {
        *n = new.clone();
    }
    let others: Vec<&NodeSpec> = plan
        .spec
        .control_planes()
        .filter(|n| n.name != failed.name)
        .collect();
    let other_endpoints: Vec<String> = others.iter().map(|n| url(n.address, 2379)).collect();
    let removed = rep.is_done(&format!("{}/remove-member", failed.name)).await;
    rep.emit(proto::RolloutEvent {
        kind: proto::rollout_event::Kind::Plan as i32,
        plan: Some(proto::RolloutPlan {
            cluster: plan.spec.name.clone(),
            phases: [
                Phase::Preconditions,
                Phase::Remove,
                Phase::Join,
                Phase::Verify,
            ]
            .iter()
            .map(|p| proto::PlannedPhase {
                name: p.to_string(),
                steps: vec![],
            })
            .collect(),
            notes: vec![],
            rendered: vec![],
        }),
        ..Default::default()
    })
    .await;

    // Preconditions: nothing changes unless they all hold. Once the member is
    // removed (a resumed run) they describe a cluster that no longer exists.
    let mut target: Option<proto::MemberInfo> = None;
    if !removed {
        rep.phase(Phase::Preconditions).await;
        target = rep
            .tracked(Phase::Preconditions, &failed.name, "preconditions", async {
                let view = etcd::membership(coord, &plan.spec, Some(&failed.name)).await.map_err(|e| Failure {
                    class: "preflight",
                    node: failed.name.clone(),
                    step: "preconditions".into(),
                    message: etcd::quorum_lost(&format!("replace {}", failed.name), &e),
                    hint: "bring failed control planes back if you can; otherwise restore the latest etcd snapshot with `khctl etcd restore --snapshot ID --yes` (IDs: `khctl etcd snapshot list`)".into(),
                    report: None,
                })?;
                let member = view.members.iter().find(|m| m.node == failed.name).cloned();
                let id = member.as_ref().map(|m| m.id).unwrap_or(0);
                let q = etcd::quorum_without(&view.members, id);
                let pre = |message: String, hint: &str| Failure {
                    class: "preflight",
                    node: failed.name.clone(),
                    step: "preconditions".into(),
                    message,
                    hint: hint.into(),
                    report: None,
                };
                if let Some(r) = etcd::quorum_refusal(&q, &format!("replace {}", failed.name)) {
                    return Err(pre(r, "restore quorum first: start the failed control planes, or if they are lost restore a snapshot with `khctl etcd restore --snapshot ID --yes` (IDs: `khctl etcd snapshot list`)"));
                }
                if !plan.force {
                    if let Some(r) = etcd::tolerance_refusal(&q, &format!("replace {}", failed.name)) {
                        return Err(pre(r, "pass --force to accept the window, or replace it when the cluster can lose a member"));
                    }
                }
                // The new node must pass preflight as a control plane.
                let name = NodeName::new(&new.name).map_err(|e| pre(e.to_string(), ""))?;
                let record = coord.registry.get(&name).map_err(Failure::from)?.ok_or_else(|| pre(format!("{} is not enrolled", new.name), ""))?;
                let results = crate::prepare::preflight(
                    coord.clone(),
                    Some(plan.spec.clone()),
                    vec![crate::prepare::Target {
                        record,
                        role: Some(NodeRole::ControlPlane),
                        address: Some(new.address),
                    }],
                )
                .await;
                let fails: Vec<String> = results
                    .iter()
                    .flat_map(|r| {
                        let mut v: Vec<String> = r.report.iter().flat_map(|rep| &rep.checks).filter(|c| c.status == proto::CheckStatus::Fail as i32).map(|c| format!("{} — {} (fix: {})", c.name, c.message, c.fix)).collect();
                        if !r.error.is_empty() {
                            v.push(r.error.clone());
                        }
                        v
                    })
                    .collect();
                if !fails.is_empty() {
                    return Err(pre(format!("{} fails preflight; nothing was changed:\n{}", new.name, fails.join("\n")), "fix each item, then run the replacement again"));
                }
                let note = match &member {
                    Some(m) => format!("member {} of {} will be removed; {} of {} other voters healthy", m.id_hex, failed.name, q.healthy_after, q.voters_after),
                    None => format!("{} has no etcd member", failed.name),
                };
                Ok((member, note))
            })
            .await?;
        // The snapshot comes after the preconditions (a refused replacement
        // needs none) and before the first change.
        if !plan.no_snapshot && !rep.is_done(&format!("{}/snapshot", failed.name)).await {
            rep.tracked(Phase::Preconditions, &failed.name, "snapshot", async {
                let m = crate::snapshots::take_before(
                    coord,
                    "etcd replace",
                    &format!("replacing {}", failed.name),
                )
                .await
                .map_err(|message| Failure {
                    class: "preflight",
                    node: failed.name.clone(),
                    step: "snapshot".into(),
                    message,
                    hint: format!(
                        "run `khctl etcd replace --failed {} --with {}` again once a snapshot can be taken, or add --no-snapshot",
                        failed.name, new.name
                    ),
                    report: None,
                })?;
                Ok(((), format!("etcd snapshot {} stored ({} bytes, revision {})", m.id, m.size, m.revision)))
            })
            .await?;
        }
    }

    rep.phase(Phase::Remove).await;
    let via = others.first().map(|n| n.name.clone()).unwrap_or_default();
    if let Some(m) = target.as_ref() {
        if m.is_leader && m.healthy && !rep.is_done(&format!("{}/move-leader", failed.name)).await {
            let next = etcd::membership(coord, &plan.spec, Some(&failed.name))
                .await
                .ok()
                .and_then(|v| {
                    v.members
                        .into_iter()
                        .find(|x| x.id != m.id && x.healthy && !x.is_learner)
                });
            if let Some(next) = next {
                rep.tracked(Phase::Remove, &failed.name, "move-leader", async {
                    let r = ops
                        .step(
                            &via,
                            "etcd-move-leader",
                            Step::EtcdMoveLeader(proto::EtcdMoveLeader {
                                endpoints: other_endpoints.clone(),
                                target_id: next.id,
                            }),
                            false,
                        )
                        .await?;
                    Ok(((), r.message))
                })
                .await?;
            }
        }
    }
    if !removed {
        let member = target.clone();
        rep.tracked(Phase::Remove, &failed.name, "remove-member", async {
            match member {
                None => {
                    retire(coord, failed, new);
                    Ok(((), format!("{} had no etcd member", failed.name)))
                }
                Some(m) => {
                    let r = ops
                        .step(
                            &via,
                            "etcd-member-remove",
                            Step::EtcdMemberRemove(proto::EtcdMemberRemove {
                                endpoints: other_endpoints.clone(),
                                member_id: m.id,
                            }),
                            false,
                        )
                        .await?;
                    retire(coord, failed, new);
                    // etcd derives member IDs from the peer URLs and the second;
                    // a same-address re-join must not land in the same second.
                    tokio::time::sleep(Duration::from_millis(1100)).await;
                    Ok(((), format!("{} ({})", r.message, m.peer_urls.join(","))))
                }
            }
        })
        .await?;
    }
    // Also after a resumed run whose removal finished before a crash.
    retire(coord, failed, new);
    if !rep.is_done(&format!("{}/delete-node", failed.name)).await {
        rep.tracked(Phase::Remove, &failed.name, "delete-node", async {
            let r = ops
                .step(
                    &via,
                    "kubectl-delete-node",
                    Step::KubectlDeleteNode(proto::KubectlDeleteNode {
                        name: failed.name.clone(),
                    }),
                    false,
                )
                .await?;
            Ok(((), r.message))
        })
        .await?;
    }
    if failed.name != new.name && !rep.is_done(&format!("{}/reset", failed.name)).await {
        let reachable = NodeName::new(&failed.name)
            .ok()
            .and_then(|n| {
                coord
                    .registry
                    .list(unix_ms(coord.clock.now()), coord.config.heartbeat_interval)
                    .ok()
                    .map(|v| v.into_iter().any(|x| x.record.name == n && x.ready))
            })
            .unwrap_or(false);
        if reachable {
            rep.tracked(Phase::Remove, &failed.name, "reset", async {
                let r = ops
                    .step(
                        &failed.name,
                        "kubeadm-reset",
                        Step::KubeadmReset(proto::KubeadmReset {}),
                        false,
                    )
                    .await?;
                Ok(((), r.message))
            })
            .await?;
        } else {
            rep.note(
                Phase::Remove,
                &failed.name,
                "unreachable: not reset (reset it with `kubeadm reset -f` if it ever comes back)",
            )
            .await;
        }
    }

    rep.phase(Phase::Join).await;
    let ctx = Ctx::for_operation(coord, &new_spec, rep, holder)?;
    prepare_node(&ctx, new).await?;
    let status = ops.node_status(&new.name).await?;
    join_control_plane(&ctx, new, &others, status.kubelet_conf).await?;

    rep.phase(Phase::Verify).await;
    rep.tracked(Phase::Verify, "cluster", "update-spec", async {
        update_held_spec(coord, &plan.spec_yaml, &failed.name, new)?;
        if let Ok(n) = NodeName::new(&new.name) {
            coord.registry.set_role(&n, Some("control-plane".into()))?;
        }
        if failed.name != new.name {
            if let Ok(n) = NodeName::new(&failed.name) {
                let _ = coord.registry.set_role(&n, None);
            }
        }
        Ok(((), format!("the held spec now lists {} ({}) in place of {}; update your cluster.yaml the same way", new.name, new.address, failed.name)))
    })
    .await?;
    if new_spec.load_balancer == kh::spec::LoadBalancerType::Haproxy {
        rep.tracked(Phase::Verify, "cluster", "load-balancers", async {
            super::lb::refresh(coord, &new_spec).await?;
            Ok((
                (),
                format!(
                    "load-balancer backends now list {} instead of {}",
                    new.name, failed.name
                ),
            ))
        })
        .await?;
    }
    rep.tracked(Phase::Verify, "cluster", "verify", async {
        etcd::wait_healthy(coord, Duration::from_secs(120)).await?;
        Ok(((), "khctl health passes".to_string()))
    })
    .await?;
    Ok(())
}

/// Marks the failed node retired once its member is gone: it has left the
/// cluster, `khctl nodes` shows it so, and `khctl nodes delete` may
/// deregister it. A host re-joined in place under its own name stays.
fn retire(coord: &Coordinator, failed: &NodeSpec, new: &NodeSpec) {
    if failed.name == new.name {
        return;
    }
    let Ok(n) = NodeName::new(&failed.name) else {
        return;
    };
    let reason = format!(
        "replaced by {} (etcd replace {} with {})",
        new.name, failed.name, new.name
    );
    if let Err(e) = coord
        .registry
        .retire(&n, unix_ms(coord.clock.now()), &reason)
    {
        tracing::warn!(node = %n, error = %e, "could not mark the replaced node retired");
    }
}

/// Rewrites the node entry in the held spec's YAML and stores it.
fn update_held_spec(
    coord: &Coordinator,
    yaml: &str,
    failed: &str,
    new: &NodeSpec,
) -> Result<(), Failure> {
    let text = substitute_node(yaml, failed, new)
        .map_err(|e| Failure::at("cluster", "update-spec", e, ""))?;
    let mut st = RolloutState::load(&coord.db)?.unwrap_or_default();
    st.spec_yaml = text;
    st.save(&coord.db, unix_ms(coord.clock.now()))?;
    Ok(())
}

/// A spec's YAML with the node `failed` replaced by `new` (name and
/// address; its role stays) and `new` gone from `spares`, validated.
pub(crate) fn substitute_node(yaml: &str, failed: &str, new: &NodeSpec) -> Result<String, String> {
    let mut doc: serde_yaml::Value = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
    let nodes = doc
        .get_mut("spec")
        .and_then(|s| s.get_mut("nodes"))
        .and_then(|n| n.as_sequence_mut())
        .ok_or_else(|| "the spec has no spec.nodes".to_string())?;
    for n in nodes.iter_mut() {
        if n.get("name").and_then(|v| v.as_str()) == Some(failed) {
            n["name"] = serde_yaml::Value::String(new.name.clone());
            n["address"] = serde_yaml::Value::String(new.address.to_string());
        }
    }
    // A spare that replaced a control plane leaves the spare pool.
    if let Some(spares) = doc
        .get_mut("spec")
        .and_then(|s| s.get_mut("spares"))
        .and_then(|n| n.as_sequence_mut())
    {
        spares.retain(|s| s.as_str() != Some(new.name.as_str()));
    }
    let text = serde_yaml::to_string(&doc).map_err(|e| e.to_string())?;
    kh::spec::parse(&text).map_err(|e| format!("the updated spec does not validate: {e}"))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resume_command_repeats_the_request_and_the_operation_names_its_nodes() {
        let req = EtcdReplaceRequest {
            failed: "cp-2".into(),
            with: "cp-4".into(),
            force: true,
            address: "10.0.0.14".into(),
            no_snapshot: true,
        };
        assert_eq!(
            resume_command(&req),
            "khctl etcd replace --failed cp-2 --with cp-4 --address 10.0.0.14 --force --no-snapshot"
        );
        let plain = EtcdReplaceRequest {
            force: false,
            address: String::new(),
            no_snapshot: false,
            ..req
        };
        assert_eq!(
            resume_command(&plain),
            "khctl etcd replace --failed cp-2 --with cp-4"
        );
        assert_eq!(
            parse_operation("etcd replace cp-2 with cp-4"),
            Some(("cp-2".into(), "cp-4".into()))
        );
        assert_eq!(parse_operation("rollout prod"), None);
    }

    #[test]
    fn the_spec_after_a_replacement_lists_the_spare_in_place_of_the_failed_node() {
        let yaml = "apiVersion: kh.io/v1alpha1\nkind: Cluster\nmetadata: {name: lab}\nspec:\n  spares: [cp-9, cp-10]\n  nodes:\n    - {name: cp-1, role: control-plane, address: 10.0.0.1}\n    - {name: cp-2, role: control-plane, address: 10.0.0.2}\n";
        let new = NodeSpec {
            name: "cp-9".into(),
            role: NodeRole::ControlPlane,
            address: "10.0.0.9".parse().unwrap(),
        };
        let out = kh::spec::parse(&substitute_node(yaml, "cp-2", &new).unwrap()).unwrap();
        let names: Vec<&str> = out.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["cp-1", "cp-9"]);
        assert_eq!(out.node("cp-9").unwrap().address, new.address);
        assert_eq!(out.spares, ["cp-10"]);
        // A spec without spares is rewritten the same way.
        let plain = yaml.replace("  spares: [cp-9, cp-10]\n", "");
        let out = kh::spec::parse(&substitute_node(&plain, "cp-2", &new).unwrap()).unwrap();
        assert!(out.spares.is_empty() && out.node("cp-9").is_some());
    }

    #[test]
    fn clear_at_forgets_a_replacement_and_its_steps() {
        let db = crate::store::Db::in_memory();
        let mut st = RolloutState {
            key: KEY.into(),
            operation: "etcd replace cp-2 with cp-4".into(),
            ..Default::default()
        };
        st.mark(
            &db,
            "cp-2/remove-member",
            super::super::state::Status::Done,
            "",
            1,
        )
        .unwrap();
        assert!(RolloutState::load_at(&db, KEY).unwrap().is_some());
        RolloutState::clear_at(&db, KEY).unwrap();
        assert_eq!(RolloutState::load_at(&db, KEY).unwrap(), None);
        assert!(db
            .raw()
            .scan_prefix(&format!("{KEY}#step/"))
            .unwrap()
            .is_empty());
    }
}
