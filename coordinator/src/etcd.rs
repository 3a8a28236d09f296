//! etcd membership and cluster health: what `khctl etcd members`, `khctl
//! health` and `khctl etcd remove-member` see and do. Every read goes through
//! a control plane's agent with that node's etcd client certificate; every
//! membership change holds the control-plane lease and keeps quorum.

#![allow(clippy::result_large_err)]

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use kh::proto::{self, run_step_request::Step};
use kh::spec::{ClusterSpec, Etcd, NodeRole, NodeSpec};
use kh::time::unix_ms;

use crate::error::CoordError;
use crate::lease;
use crate::rollout::ops::{url, Failure, Ops};
use crate::rollout::state::RolloutState;
use crate::Coordinator;

/// The spec the coordinator holds: the last rollout's, updated by
/// replacements.
pub fn held_spec(coord: &Coordinator) -> Result<ClusterSpec, CoordError> {
    let st = RolloutState::load(&coord.db)?
        .ok_or_else(|| CoordError::FailedPrecondition("no cluster has been rolled out by this coordinator yet; run `khctl rollout -f cluster.yaml`".into()))?;
    kh::spec::parse(&st.spec_yaml).map_err(|e| {
        CoordError::FailedPrecondition(format!("the held cluster spec no longer parses: {e}"))
    })
}

pub fn is_external(spec: &ClusterSpec) -> bool {
    matches!(spec.etcd, Etcd::External { .. })
}

/// The refusal for member changes on an etcd cluster kh does not run.
pub fn external_refusal(spec: &ClusterSpec) -> String {
    format!(
        "cluster {} uses an external etcd cluster (spec.etcd.topology: external): kh does not manage its members. Replace the member with your etcd tooling, then run `khctl health`",
        spec.name
    )
}

/// The members with their health, leader and DB size, mapped to kh nodes.
pub struct Membership {
    pub via: String,
    pub members: Vec<proto::MemberInfo>,
}

fn node_of(spec: &ClusterSpec, m: &proto::EtcdMember) -> Option<String> {
    spec.control_planes()
        .find(|cp| {
            m.peer_urls.contains(&url(cp.address, 2380))
                || (!m.name.is_empty() && m.name == cp.name)
        })
        .map(|cp| cp.name.clone())
}

pub fn client_endpoints(spec: &ClusterSpec) -> Vec<String> {
    match &spec.etcd {
        Etcd::External { endpoints, .. } => endpoints.clone(),
        Etcd::Stacked => spec
            .control_planes()
            .map(|n| url(n.address, 2379))
            .collect(),
    }
}

/// Reads membership through the first control plane that answers, skipping
/// `exclude` (a node known to be failed).
pub async fn membership(
    coord: &Coordinator,
    spec: &ClusterSpec,
    exclude: Option<&str>,
) -> Result<Membership, CoordError> {
    let ops = Ops { coord };
    let external = is_external(spec);
    let endpoints = client_endpoints(spec);
    let mut last = String::from("no control plane in the spec");
    for cp in spec
        .control_planes()
        .filter(|c| Some(c.name.as_str()) != exclude)
    {
        let members = match ops.etcd_members(&cp.name, &endpoints, external).await {
            Ok(m) => m,
            Err(e) => {
                last = format!("{}: {e}", cp.name);
                continue;
            }
        };
        let client_urls: Vec<String> = members.iter().flat_map(|m| m.client_urls.clone()).collect();
        let health = ops
            .etcd_health(&cp.name, &client_urls, external)
            .await
            .unwrap_or_default();
        let leader = health
            .status
            .iter()
            .map(|s| s.leader_id)
            .find(|l| *l != 0)
            .unwrap_or(0);
        let infos = members
            .iter()
            .map(|m| {
                let h = health
                    .health
                    .iter()
                    .find(|h| m.client_urls.contains(&h.endpoint));
                let st = health.status.iter().find(|s| s.member_id == m.id);
                proto::MemberInfo {
                    id: m.id,
                    id_hex: m.id_hex.clone(),
                    name: m.name.clone(),
                    peer_urls: m.peer_urls.clone(),
                    client_urls: m.client_urls.clone(),
                    is_learner: m.is_learner,
                    is_leader: m.id == leader,
                    healthy: h.is_some_and(|h| h.healthy),
                    health_error: match h {
                        Some(h) if !h.healthy => h.error.clone(),
                        Some(_) => String::new(),
                        None if m.client_urls.is_empty() => "not started".into(),
                        None => "no answer".into(),
                    },
                    db_size: st.map(|s| s.db_size).unwrap_or(0),
                    node: node_of(spec, m).unwrap_or_default(),
                }
            })
            .collect();
        return Ok(Membership {
            via: cp.name.clone(),
            members: infos,
        });
    }
    Err(CoordError::Unavailable(format!(
        "no control plane could list the etcd members ({last}); with quorum lost, see etcd's disaster-recovery guide (etcdctl snapshot restore)"
    )))
}

/// Quorum arithmetic for removing `target` from `members`.
pub struct QuorumCheck {
    pub voters_after: usize,
    pub healthy_after: usize,
    pub needed_after: usize,
    /// Members the cluster could still lose after the removal.
    pub tolerance_after: isize,
    pub target_healthy: bool,
}

pub fn quorum_without(members: &[proto::MemberInfo], target: u64) -> QuorumCheck {
    let others: Vec<&proto::MemberInfo> = members
        .iter()
        .filter(|m| !m.is_learner && m.id != target)
        .collect();
    let healthy_after = others.iter().filter(|m| m.healthy).count();
    let needed_after = others.len() / 2 + 1;
    QuorumCheck {
        voters_after: others.len(),
        healthy_after,
        needed_after,
        tolerance_after: healthy_after as isize - needed_after as isize,
        target_healthy: members.iter().any(|m| m.id == target && m.healthy),
    }
}

pub fn quorum_refusal(q: &QuorumCheck, what: &str) -> Option<String> {
    (q.healthy_after < q.needed_after).then(|| {
        format!(
            "refusing to {what}: etcd has lost quorum — only {} of the {} other voting members are healthy and quorum needs {}. No membership change can succeed without quorum. Bring failed control planes back if you can; otherwise follow etcd's disaster-recovery guide (restore a snapshot with `etcdctl snapshot restore` into a new cluster). Nothing was changed",
            q.healthy_after, q.voters_after, q.needed_after
        )
    })
}

/// The refusal when no control plane can list the members: quorum is lost.
pub fn quorum_lost(what: &str, e: &CoordError) -> String {
    format!(
        "refusing to {what}: etcd quorum is lost: no control plane can list the members ({e}). A member cannot be removed or added without quorum, so nothing was changed"
    )
}

pub fn tolerance_refusal(q: &QuorumCheck, what: &str) -> Option<String> {
    (q.target_healthy && q.tolerance_after < 1).then(|| {
        format!(
            "refusing to {what} without --force: the member is healthy, and removing it leaves {} voting members that cannot lose another one until the replacement has joined. Pass --force to accept that window",
            q.voters_after
        )
    })
}

/// Finds a member by kh node name or hex ID.
pub fn find<'a>(members: &'a [proto::MemberInfo], which: &str) -> Option<&'a proto::MemberInfo> {
    let hex = which.trim_start_matches("0x").to_ascii_lowercase();
    members
        .iter()
        .find(|m| m.node == which || m.name == which || m.id_hex == hex)
}

/// `khctl etcd remove-member`.
pub async fn remove_member(
    coord: &Coordinator,
    which: &str,
    force: bool,
) -> Result<proto::EtcdRemoveMemberResponse, CoordError> {
    let spec = held_spec(coord)?;
    if is_external(&spec) {
        return Err(CoordError::FailedPrecondition(external_refusal(&spec)));
    }
    let holder = format!("etcd remove-member {which}");
    if let Err(other) = lease::acquire(
        &coord.db,
        coord.clock.as_ref(),
        &holder,
        &format!("removing etcd member {which}"),
    )? {
        return Err(CoordError::FailedPrecondition(format!(
            "another control-plane change is in progress: {}",
            lease::describe(&other)
        )));
    }
    let result = remove_member_locked(coord, &spec, which, force, &holder).await;
    lease::release(&coord.db, &holder)?;
    result
}

async fn remove_member_locked(
    coord: &Coordinator,
    spec: &ClusterSpec,
    which: &str,
    force: bool,
    holder: &str,
) -> Result<proto::EtcdRemoveMemberResponse, CoordError> {
    // No member list means no quorum: the same refusal as `etcd replace`,
    // with the same exit code in khctl, not an unreachable coordinator.
    let view = membership(coord, spec, None).await.map_err(|e| {
        CoordError::FailedPrecondition(quorum_lost(&format!("remove member {which}"), &e))
    })?;
    let target = find(&view.members, which).cloned().ok_or_else(|| {
        CoordError::NotFound(format!(
            "no etcd member {which:?} (by node name or hex ID); see `khctl etcd members`"
        ))
    })?;
    let q = quorum_without(&view.members, target.id);
    if let Some(r) = quorum_refusal(&q, &format!("remove member {}", target.id_hex)) {
        return Err(CoordError::FailedPrecondition(r));
    }
    if !force {
        if let Some(r) = tolerance_refusal(&q, &format!("remove member {}", target.id_hex)) {
            return Err(CoordError::FailedPrecondition(r));
        }
    }
    let ops = Ops { coord };
    // Ask through a control plane other than the target, so the request does
    // not depend on the member being removed.
    let via = spec
        .control_planes()
        .find(|cp| {
            cp.name != target.node && view.members.iter().any(|m| m.node == cp.name && m.healthy)
        })
        .map(|cp| cp.name.clone())
        .unwrap_or(view.via.clone());
    let endpoints: Vec<String> = view
        .members
        .iter()
        .filter(|m| m.id != target.id && m.healthy)
        .flat_map(|m| m.client_urls.clone())
        .collect();
    if target.is_leader && target.healthy {
        if let Some(next) = view
            .members
            .iter()
            .find(|m| m.id != target.id && m.healthy && !m.is_learner)
        {
            ops.step(
                &via,
                "etcd-move-leader",
                Step::EtcdMoveLeader(proto::EtcdMoveLeader {
                    endpoints: client_endpoints(spec),
                    target_id: next.id,
                }),
                false,
            )
            .await
            .map_err(|f| CoordError::StepFailed(f.message))?;
        }
    }
    let report = ops
        .step(
            &via,
            "etcd-member-remove",
            Step::EtcdMemberRemove(proto::EtcdMemberRemove {
                endpoints,
                member_id: target.id,
            }),
            false,
        )
        .await
        .map_err(|f| CoordError::StepFailed(f.message))?;
    crate::audit::append(
        &coord.db,
        coord.clock.as_ref(),
        holder,
        &target.node,
        "etcd-member-remove",
        "done",
        &report.message,
    )?;
    Ok(proto::EtcdRemoveMemberResponse {
        removed_id_hex: target.id_hex.clone(),
        message: format!(
            "removed etcd member {} ({}{}); {} members remain",
            target.id_hex,
            if target.node.is_empty() {
                "unknown member"
            } else {
                &target.node
            },
            if target.peer_urls.is_empty() {
                String::new()
            } else {
                format!(", {}", target.peer_urls.join(","))
            },
            view.members.len() - 1
        ),
    })
}

fn check(name: &str, ok: bool, detail: String, fix: &str) -> proto::HealthCheck {
    proto::HealthCheck {
        name: name.into(),
        ok,
        detail,
        fix: if ok { String::new() } else { fix.into() },
    }
}

/// `khctl health`: each check with what is wrong and the command that fixes it.
pub async fn health(coord: &Coordinator) -> Result<proto::HealthResponse, CoordError> {
    let spec = held_spec(coord)?;
    let ops = Ops { coord };
    let mut checks = vec![];
    let now = unix_ms(coord.clock.now());
    let views = coord.registry.list(now, coord.config.heartbeat_interval)?;
    let cluster_nodes: Vec<&NodeSpec> = spec.nodes.iter().collect();

    // 1. Agents reachable and ready.
    let down: Vec<String> = cluster_nodes
        .iter()
        .filter(|n| {
            !views
                .iter()
                .any(|v| v.record.name.as_str() == n.name && v.ready)
        })
        .map(|n| n.name.clone())
        .collect();
    checks.push(check(
        "agents",
        down.is_empty(),
        if down.is_empty() {
            format!("{} agents ready", cluster_nodes.len())
        } else {
            format!("not reporting: {}", down.join(", "))
        },
        &format!(
            "check the host and `systemctl status kh-agent` on {}",
            down.join(", ")
        ),
    ));

    // 2-5. etcd.
    let external = is_external(&spec);
    match membership(coord, &spec, None).await {
        Err(e) => checks.push(check("etcd-quorum", false, e.to_string(), "restore quorum: start the failed control planes; if they are lost, follow etcd's disaster-recovery guide (etcdctl snapshot restore)")),
        Ok(view) => {
            let voters: Vec<&proto::MemberInfo> = view.members.iter().filter(|m| !m.is_learner).collect();
            let healthy = voters.iter().filter(|m| m.healthy).count();
            let needed = voters.len() / 2 + 1;
            checks.push(check(
                "etcd-quorum",
                healthy >= needed,
                format!("{healthy} of {} voting members healthy (quorum needs {needed})", voters.len()),
                "restore quorum: start the failed control planes; if they are lost, follow etcd's disaster-recovery guide (etcdctl snapshot restore)",
            ));
            // The member lists, asked of each member through its own endpoint.
            let mut lists: Vec<(String, BTreeSet<u64>)> = vec![];
            for m in view.members.iter().filter(|m| m.healthy) {
                let via = if m.node.is_empty() { view.via.clone() } else { m.node.clone() };
                if let Ok(ms) = ops.etcd_members(&via, &m.client_urls, external).await {
                    lists.push((m.node.clone(), ms.iter().map(|x| x.id).collect()));
                }
            }
            let agree = lists.windows(2).all(|w| w[0].1 == w[1].1);
            checks.push(check(
                "etcd-member-lists-agree",
                agree,
                if agree { format!("{} members agree", lists.len()) } else { format!("members disagree: {:?}", lists.iter().map(|(n, l)| (n, l.len())).collect::<Vec<_>>()) },
                "compare `khctl etcd members` with each member's own view; a member that disagrees must be removed and re-added",
            ));
            if !external {
                let mut problems = vec![];
                let mut fixes = vec![];
                for cp in spec.control_planes() {
                    match view.members.iter().find(|m| m.node == cp.name) {
                        None => {
                            problems.push(format!("{} has no etcd member", cp.name));
                            fixes.push(format!("khctl etcd replace --failed {} --with {}", cp.name, cp.name));
                        }
                        Some(m) if !m.healthy && !m.is_learner => {
                            problems.push(format!("member {} of {} is unhealthy: {}", m.id_hex, cp.name, m.health_error));
                            fixes.push(format!("khctl etcd replace --failed {} --with <new-node>", cp.name));
                        }
                        Some(_) => {}
                    }
                }
                for m in view.members.iter().filter(|m| m.node.is_empty()) {
                    problems.push(format!("member {} ({}) belongs to no control plane", m.id_hex, m.peer_urls.join(",")));
                    fixes.push(format!("khctl etcd remove-member {}", m.id_hex));
                }
                checks.push(check(
                    "etcd-members-match-control-planes",
                    problems.is_empty(),
                    if problems.is_empty() { format!("one healthy member per control plane ({})", spec.control_planes().count()) } else { problems.join("; ") },
                    &fixes.join("; "),
                ));
            }
            let learners: Vec<String> = view.members.iter().filter(|m| m.is_learner).map(|m| format!("{} ({})", m.id_hex, if m.node.is_empty() { m.peer_urls.join(",") } else { m.node.clone() })).collect();
            checks.push(check(
                "etcd-no-stuck-learner",
                learners.is_empty(),
                if learners.is_empty() { "no learners".into() } else { format!("learners: {}", learners.join(", ")) },
                &learners.iter().map(|l| format!("khctl etcd remove-member {}", l.split(' ').next().unwrap_or_default())).collect::<Vec<_>>().join("; "),
            ));
        }
    }

    // 6. Every apiserver ready, asked through its own node.
    let mut not_ready = vec![];
    for cp in spec.control_planes() {
        if let Err(e) = ops.apiserver_ready(&cp.name, &url(cp.address, 6443)).await {
            not_ready.push(format!(
                "{}: {}",
                cp.name,
                e.lines().next().unwrap_or_default()
            ));
        }
    }
    checks.push(check(
        "apiservers-ready",
        not_ready.is_empty(),
        if not_ready.is_empty() { format!("{} apiservers ready", spec.control_planes().count()) } else { not_ready.join("; ") },
        "check kube-apiserver on the failing control planes, or replace them with `khctl etcd replace --failed NODE --with NEW`",
    ));

    // 7. Nodes Ready, through a control plane that answers.
    let mut nodes_check = check(
        "nodes-ready",
        false,
        "no control plane answered kubectl".into(),
        "bring a control plane back",
    );
    for cp in spec.control_planes() {
        if let Ok(nodes) = ops.kube_nodes(&cp.name).await {
            let missing: Vec<String> = spec
                .nodes
                .iter()
                .filter(|n| n.role != NodeRole::LoadBalancer)
                .filter(|n| !nodes.iter().any(|k| k.name == n.name && k.ready))
                .map(|n| n.name.clone())
                .collect();
            nodes_check = check(
                "nodes-ready",
                missing.is_empty(),
                if missing.is_empty() { format!("{} nodes Ready", nodes.len()) } else { format!("not Ready: {}", missing.join(", ")) },
                "check the kubelet and the CNI on those nodes; a dead control plane is replaced with `khctl etcd replace`",
            );
            break;
        }
    }
    checks.push(nodes_check);
    let ok = checks.iter().all(|c| c.ok);
    Ok(proto::HealthResponse { checks, ok })
}

/// Waits until `health` passes, or returns the failing checks.
pub async fn wait_healthy(coord: &Coordinator, timeout: Duration) -> Result<(), Failure> {
    let start = std::time::Instant::now();
    loop {
        let h = health(coord).await.map_err(Failure::from)?;
        if h.ok {
            return Ok(());
        }
        if start.elapsed() > timeout {
            let bad: Vec<String> = h
                .checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| format!("{}: {}", c.name, c.detail))
                .collect();
            return Err(Failure::at(
                "cluster",
                "verify",
                format!("health checks still failing: {}", bad.join("; ")),
                "run `khctl health` for the fixes",
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The member IDs in `members` that belong to `node` (by name or address).
pub fn members_of(members: &[proto::MemberInfo], node: &str) -> HashSet<u64> {
    members
        .iter()
        .filter(|m| m.node == node)
        .map(|m| m.id)
        .collect()
}
