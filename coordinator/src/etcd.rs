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
use crate::rollout::replace::Pending;
use crate::rollout::state::RolloutState;
use crate::Coordinator;

/// The spec the coordinator holds: the last rollout's, updated by
/// replacements.
pub fn held_spec(coord: &Coordinator) -> Result<ClusterSpec, CoordError> {
    // A rollout refused at its plan holds no spec yet.
    let st = RolloutState::load(&coord.db)?
        .filter(|st| !st.spec_yaml.is_empty())
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
    /// Members that answered `endpoint status`: running, with or without
    /// quorum.
    pub running: HashSet<u64>,
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
        let infos: Vec<proto::MemberInfo> = members
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
            running: health
                .status
                .iter()
                .map(|s| s.member_id)
                .chain(infos.iter().filter(|m| m.healthy).map(|m| m.id))
                .collect(),
            members: infos,
        });
    }
    Err(CoordError::Unavailable(format!(
        "no control plane could list the etcd members ({last}); with quorum lost, restore a snapshot with `khctl etcd restore --snapshot ID --yes` (IDs: `khctl etcd snapshot list`)"
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
            "refusing to {what}: etcd has lost quorum — only {} of the {} other voting members are healthy and quorum needs {}. No membership change can succeed without quorum. Bring failed control planes back if you can; otherwise restore the latest snapshot with `khctl etcd restore --snapshot ID --yes` (IDs: `khctl etcd snapshot list`). Nothing was changed",
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
    no_snapshot: bool,
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
    let result = remove_member_locked(coord, &spec, which, force, no_snapshot, &holder).await;
    lease::release(&coord.db, &holder)?;
    result
}

async fn remove_member_locked(
    coord: &Coordinator,
    spec: &ClusterSpec,
    which: &str,
    force: bool,
    no_snapshot: bool,
    holder: &str,
) -> Result<proto::EtcdRemoveMemberResponse, CoordError> {
    // No member list means no quorum: the same refusal as `etcd replace`,
    // with the same exit code in khctl, not an unreachable coordinator.
    let view = membership(coord, spec, None).await.map_err(|e| {
        CoordError::FailedPrecondition(quorum_lost(&format!("remove member {which}"), &e))
    })?;
    let target = find(&view.members, which).cloned().ok_or_else(|| {
        CoordError::NotFound(format!(
            "no etcd member {} (by node name or hex ID); see `khctl etcd members`",
            kh::echo(which)
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
    // Quorum and tolerance first: without them the removal is refused for
    // a reason no snapshot changes.
    if !no_snapshot {
        crate::snapshots::take_before(
            coord,
            "etcd remove-member",
            &format!("removing etcd member {}", target.id_hex),
        )
        .await
        .map_err(CoordError::FailedPrecondition)?;
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

/// A member as an operator knows it: its kh node, else its hex ID.
fn who(m: &proto::MemberInfo) -> String {
    if m.node.is_empty() {
        m.id_hex.clone()
    } else {
        m.node.clone()
    }
}

/// The fix for anything an unfinished replacement left behind: resume it
/// with the command that started it, or wait for it while it runs.
fn resume_fix(p: &Pending) -> String {
    if p.running {
        format!(
            "wait for the running {} to finish (`khctl rollout status --follow`)",
            p.operation
        )
    } else {
        format!("resume the unfinished replacement: {}", p.command)
    }
}

/// `etcd-quorum`, and whether quorum holds. A member that answers `endpoint
/// status` (which needs no quorum) is running even when etcd's health check
/// fails for it: without quorum every member fails that check, and the
/// members that are down are the ones to name.
pub fn quorum_check(
    members: &[proto::MemberInfo],
    running: &HashSet<u64>,
) -> (proto::HealthCheck, bool) {
    let voters: Vec<&proto::MemberInfo> = members.iter().filter(|m| !m.is_learner).collect();
    let healthy = voters.iter().filter(|m| m.healthy).count();
    let needed = voters.len() / 2 + 1;
    if healthy >= needed {
        return (
            check(
                "etcd-quorum",
                true,
                format!(
                    "{healthy} of {} voting members healthy (quorum needs {needed})",
                    voters.len()
                ),
                "",
            ),
            true,
        );
    }
    let up = voters.iter().filter(|m| running.contains(&m.id)).count();
    let mut down: Vec<String> = voters
        .iter()
        .filter(|m| !running.contains(&m.id))
        .map(|m| who(m))
        .collect();
    down.sort();
    let (detail, fix) = if down.is_empty() {
        (
            format!(
                "etcd quorum lost: all {} members run but only {healthy} pass etcd's health check; quorum needs {needed}",
                voters.len()
            ),
            "check the network between the members and their etcd logs (`khctl etcd members` shows each member's error); no member can be replaced or removed without quorum".to_string(),
        )
    } else {
        (
            format!(
                "etcd quorum lost: {up} of {} members running ({} down); quorum needs {needed}",
                voters.len(),
                down.join(", ")
            ),
            format!(
                "start {} again: etcd regains quorum once {needed} of {} members run (see `khctl etcd members`). If they are lost for good, restore a snapshot with `khctl etcd restore --snapshot ID --yes` (IDs: `khctl etcd snapshot list`); no member can be replaced or removed without quorum",
                down.join(" and "),
                voters.len()
            ),
        )
    };
    (check("etcd-quorum", false, detail, &fix), false)
}

/// `etcd-members-match-control-planes`: one healthy member per control
/// plane, each problem with its own fix. A running member is never to be
/// replaced; without quorum the fix is quorum; an unfinished replacement is
/// resumed, never started over.
pub fn members_match_check(
    control_planes: &[&str],
    members: &[proto::MemberInfo],
    running: &HashSet<u64>,
    quorum: bool,
    pending: Option<&Pending>,
) -> proto::HealthCheck {
    let mut problems = vec![];
    let mut fixes: Vec<String> = vec![];
    let mut fix = |f: String| {
        if !fixes.contains(&f) {
            fixes.push(f);
        }
    };
    let restore = "restore etcd quorum first (see etcd-quorum)".to_string();
    for &cp in control_planes {
        let pend = pending.filter(|p| p.failed == cp || p.with == cp);
        match members.iter().find(|m| m.node == cp) {
            None => {
                problems.push(format!("{cp} has no etcd member"));
                fix(match pend {
                    Some(p) => resume_fix(p),
                    None if !quorum => restore.clone(),
                    None => format!("khctl etcd replace --failed {cp} --with <new-node>"),
                });
            }
            Some(m) if m.healthy || m.is_learner => {}
            Some(m) => {
                let is_running = running.contains(&m.id);
                if !quorum {
                    // A running member is fine; the quorum check names the
                    // down ones and what brings quorum back.
                    if !is_running {
                        problems.push(format!("member {} of {cp} is down", m.id_hex));
                        fix(match pend {
                            Some(p) => resume_fix(p),
                            None => restore.clone(),
                        });
                    }
                } else if let Some(p) = pend {
                    problems.push(format!(
                        "member {} of {cp} is unhealthy: {}",
                        m.id_hex, m.health_error
                    ));
                    fix(resume_fix(p));
                } else if is_running {
                    problems.push(format!(
                        "member {} of {cp} runs but fails etcd's health check: {}",
                        m.id_hex, m.health_error
                    ));
                    fix(format!("check etcd on {cp} (its log, disk latency, the network to the other members); it is running, so do not replace it"));
                } else {
                    problems.push(format!(
                        "member {} of {cp} is unhealthy: {}",
                        m.id_hex, m.health_error
                    ));
                    fix(format!(
                        "khctl etcd replace --failed {cp} --with <new-node> (or start {cp} again if it can come back)"
                    ));
                }
            }
        }
    }
    for m in members.iter().filter(|m| m.node.is_empty()) {
        match pending.filter(|p| !m.name.is_empty() && p.with == m.name) {
            Some(p) => {
                problems.push(format!(
                    "member {} ({}) belongs to the unfinished {}",
                    m.id_hex, m.name, p.operation
                ));
                fix(resume_fix(p));
            }
            None => {
                problems.push(format!(
                    "member {} ({}) belongs to no control plane",
                    m.id_hex,
                    m.peer_urls.join(",")
                ));
                fix(format!("khctl etcd remove-member {}", m.id_hex));
            }
        }
    }
    check(
        "etcd-members-match-control-planes",
        problems.is_empty(),
        if problems.is_empty() {
            format!(
                "one healthy member per control plane ({})",
                control_planes.len()
            )
        } else {
            problems.join("; ")
        },
        &fixes.join("; "),
    )
}

/// `etcd-replacement-finished`: an etcd replacement that changed the
/// cluster and stopped is resumed with the command that started it.
pub fn replacement_check(pending: Option<&Pending>) -> proto::HealthCheck {
    match pending {
        None => check(
            "etcd-replacement-finished",
            true,
            "no unfinished etcd replacement".into(),
            "",
        ),
        Some(p) if p.running => check(
            "etcd-replacement-finished",
            true,
            format!(
                "{} is running; follow it with `khctl rollout status --follow`",
                p.operation
            ),
            "",
        ),
        Some(p) => check(
            "etcd-replacement-finished",
            false,
            format!(
                "{} did not finish{}",
                p.operation,
                if p.stopped_at.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", p.stopped_at)
                }
            ),
            &format!(
                "{} — it resumes where it stopped and repeats no finished step",
                p.command
            ),
        ),
    }
}

/// What is wrong with one load balancer, from the dry run of the
/// LoadBalancer step kh would run now (`rollout::lb::config_for` with the
/// ready control planes): nothing to do means its config is kh's, current,
/// and served.
fn lb_problem(
    lb: &str,
    report: &proto::StepReport,
    control_planes: &[&str],
) -> Option<(String, String)> {
    if report.outcome == proto::Outcome::Failed as i32 {
        return Some((
            format!("{lb}: {}", report.error.lines().next().unwrap_or_default()),
            format!("fix HAProxy's configuration on {lb}, then `khctl rollout -f cluster.yaml`"),
        ));
    }
    let rewrite = "`khctl rollout -f cluster.yaml` rewrites the backends".to_string();
    let mut missing = vec![];
    let mut stale = vec![];
    let mut other = false;
    for f in &report.files {
        for line in f.diff.lines() {
            if line.starts_with("+++") || line.starts_with("---") {
                continue;
            }
            let (sign, body) = match line.split_at_checked(1) {
                Some((s @ ("+" | "-"), b)) => (s, b.trim()),
                _ => continue,
            };
            if body.starts_with('#') || body.is_empty() {
                continue;
            }
            match body.strip_prefix("server ") {
                Some(rest) => {
                    let name = rest.split_whitespace().next().unwrap_or_default();
                    if sign == "+" {
                        missing.push(name.to_string());
                    } else if !control_planes.contains(&name) {
                        stale.push(name.to_string());
                    }
                    // A control plane of the spec that is not ready stays a
                    // backend: HAProxy's own check keeps traffic off it.
                }
                None => other = true,
            }
        }
        if f.created {
            return Some((
                format!("{lb}: kh's HAProxy config {} is missing", f.path),
                rewrite,
            ));
        }
    }
    let mut what = vec![];
    if !missing.is_empty() {
        what.push(format!(
            "ready control plane {} is not a backend",
            missing.join(", ")
        ));
    }
    if !stale.is_empty() {
        what.push(format!(
            "backend {} is not a control plane of the cluster",
            stale.join(", ")
        ));
    }
    if other {
        what.push("the config differs from what kh writes".into());
    }
    if !what.is_empty() {
        return Some((format!("{lb}: {}", what.join("; ")), rewrite));
    }
    // Commands without a file change: the config is current, but HAProxy
    // does not serve it.
    // A dry run reports its planned commands and notes in its message.
    if report.files.is_empty() && report.outcome == proto::Outcome::Changed as i32 {
        let not_running = report.message.contains("HAProxy is not running")
            || report
                .notes
                .iter()
                .any(|n| n.contains("HAProxy is not running"));
        return Some(if not_running {
            (
                format!("{lb}: HAProxy is not running"),
                format!("start it on {lb}: `systemctl start haproxy` (see `journalctl -u haproxy` for why it stopped)"),
            )
        } else {
            (
                format!("{lb}: a config change was never followed by a reload"),
                format!("reload HAProxy on {lb}: `systemctl reload haproxy`"),
            )
        });
    }
    None
}

/// `load-balancer-backends`: each load balancer runs kh's config with every
/// ready control plane as a backend.
async fn load_balancer_check(
    coord: &Coordinator,
    spec: &ClusterSpec,
    ready: &[&NodeSpec],
) -> proto::HealthCheck {
    let ops = Ops { coord };
    let cps: Vec<&str> = spec.control_planes().map(|c| c.name.as_str()).collect();
    let results = futures::future::join_all(spec.load_balancers().map(|lb| {
        let step = crate::rollout::lb::config_for(spec, lb, ready);
        let ops = &ops;
        async move {
            (
                lb.name.clone(),
                ops.step(&lb.name, crate::rollout::lb::STEP, step, true)
                    .await,
            )
        }
    }))
    .await;
    let mut problems = vec![];
    let mut fixes = vec![];
    for (lb, r) in &results {
        let found = match r {
            Ok(report) => lb_problem(lb, report, &cps),
            Err(f) => Some((
                format!("{lb}: {}", f.message.lines().next().unwrap_or_default()),
                format!("bring the agent on {lb} back (`systemctl status kh-agent`)"),
            )),
        };
        if let Some((p, f)) = found {
            problems.push(p);
            fixes.push(f);
        }
    }
    let names: Vec<&str> = ready.iter().map(|n| n.name.as_str()).collect();
    check(
        "load-balancer-backends",
        problems.is_empty(),
        if problems.is_empty() {
            format!(
                "HAProxy runs kh's config on {}; every ready control plane is a backend ({})",
                results
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                if names.is_empty() {
                    "none ready".into()
                } else {
                    names.join(", ")
                }
            )
        } else {
            problems.join("; ")
        },
        &fixes.join("; "),
    )
}

/// `control-plane-endpoint`: the endpoint every kubelet and kubectl uses,
/// asked from a node of the cluster (through its agent, as every check is):
/// `/readyz` through it, and when that fails, whether it accepts TCP at all.
async fn endpoint_check(
    coord: &Coordinator,
    spec: &ClusterSpec,
    ready_agents: &[&str],
    apiservers_ready: usize,
) -> Option<proto::HealthCheck> {
    let endpoint = spec.control_plane_endpoint.as_ref()?.to_string();
    let ops = Ops { coord };
    let lbs: Vec<&str> = spec.load_balancers().map(|n| n.name.as_str()).collect();
    let haproxy = spec.load_balancer == kh::spec::LoadBalancerType::Haproxy && !lbs.is_empty();
    let served_by = if haproxy {
        format!("; it is served by HAProxy on {}", lbs.join(", "))
    } else {
        String::new()
    };
    let fix_lb = if haproxy {
        lbs.iter()
            .map(|lb| format!("check HAProxy on {lb}: `systemctl status haproxy`, `journalctl -u haproxy`; start it with `systemctl start haproxy`"))
            .collect::<Vec<_>>()
            .join("; ")
    } else {
        format!("check the load balancer (or DNS name) behind {endpoint}: it must forward TCP to port 6443 of the control planes")
    };
    // Ask from a control plane, else any node, whose agent reports.
    let Some(via) = spec
        .control_planes()
        .chain(spec.nodes.iter().filter(|n| n.role == NodeRole::Worker))
        .find(|n| ready_agents.contains(&n.name.as_str()))
    else {
        return Some(check(
            "control-plane-endpoint",
            false,
            format!("{endpoint} not checked: no control plane or worker has a reporting agent to ask from"),
            "bring the agents back first (see agents)",
        ));
    };
    let url = format!("https://{endpoint}");
    let Err(e) = ops.apiserver_ready(&via.name, &url).await else {
        return Some(check(
            "control-plane-endpoint",
            true,
            format!("{endpoint} answers /readyz (asked from {})", via.name),
            "",
        ));
    };
    let why = e.lines().next().unwrap_or_default().to_string();
    use proto::tcp_probe_response::Result as R;
    let accepts = matches!(
        ops.tcp_probe(&via.name, &endpoint).await.map(|r| r.result),
        Ok(r) if r == R::Open as i32
    );
    Some(if accepts {
        check(
            "control-plane-endpoint",
            false,
            format!(
                "the control-plane endpoint {endpoint} accepts connections but no apiserver answered /readyz through it (from {}): {why}{served_by}",
                via.name
            ),
            if apiservers_ready == 0 {
                "no apiserver is ready: see apiservers-ready"
            } else if haproxy {
                "the load balancer does not reach a ready apiserver: see load-balancer-backends"
            } else {
                "check that the load balancer forwards to port 6443 of the control planes"
            },
        )
    } else {
        check(
            "control-plane-endpoint",
            false,
            format!(
                "the control-plane endpoint {endpoint} does not answer (from {}): {why}{served_by}",
                via.name
            ),
            &fix_lb,
        )
    })
}

/// `khctl health`: each check with what is wrong and the command that fixes it.
pub async fn health(coord: &Coordinator) -> Result<proto::HealthResponse, CoordError> {
    let spec = held_spec(coord)?;
    let ops = Ops { coord };
    let mut checks = vec![];
    let now = unix_ms(coord.clock.now());
    let views = coord.registry.list(now, coord.config.heartbeat_interval)?;
    let cluster_nodes: Vec<&NodeSpec> = spec.nodes.iter().collect();
    let pending = crate::rollout::replace::pending(coord).await?;
    let ready_agents: Vec<&str> = views
        .iter()
        .filter(|v| v.ready)
        .map(|v| v.record.name.as_str())
        .collect();

    // 1. Agents reachable and ready.
    let down: Vec<String> = cluster_nodes
        .iter()
        .filter(|n| !ready_agents.contains(&n.name.as_str()))
        .map(|n| n.name.clone())
        .collect();
    let mut agents_fix = format!(
        "check the host and `systemctl status kh-agent` on {}",
        down.join(", ")
    );
    if let Some(p) = pending.as_ref().filter(|p| down.contains(&p.failed)) {
        agents_fix.push_str(&format!(
            "; {} is being replaced: {}",
            p.failed,
            resume_fix(p)
        ));
    }
    checks.push(check(
        "agents",
        down.is_empty(),
        if down.is_empty() {
            format!("{} agents ready", cluster_nodes.len())
        } else {
            format!("not reporting: {}", down.join(", "))
        },
        &agents_fix,
    ));

    // The apiservers, each asked through its own node; the endpoint and the
    // load balancers are judged against them.
    let readiness = futures::future::join_all(spec.control_planes().map(|cp| {
        let ops = &ops;
        async move {
            (
                cp,
                ops.apiserver_ready(&cp.name, &url(cp.address, 6443)).await,
            )
        }
    }))
    .await;
    let ready_cps: Vec<&NodeSpec> = readiness
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(cp, _)| *cp)
        .collect();

    // 2. The control-plane endpoint, and 3. the load balancers behind it.
    let endpoint = endpoint_check(coord, &spec, &ready_agents, ready_cps.len()).await;
    let endpoint_down = endpoint.as_ref().filter(|c| !c.ok).cloned();
    checks.extend(endpoint);
    if spec.load_balancer == kh::spec::LoadBalancerType::Haproxy
        && spec.load_balancers().next().is_some()
    {
        checks.push(load_balancer_check(coord, &spec, &ready_cps).await);
    }

    // 4. etcd.
    let external = is_external(&spec);
    let quorum: bool;
    match membership(coord, &spec, None).await {
        Err(e) => {
            quorum = false;
            checks.push(check("etcd-quorum", false, e.to_string(), "restore quorum: start the failed control planes; if they are lost, restore a snapshot with `khctl etcd restore --snapshot ID --yes` (IDs: `khctl etcd snapshot list`)"))
        }
        Ok(view) => {
            let (q, ok) = quorum_check(&view.members, &view.running);
            quorum = ok;
            checks.push(q);
            // The member lists, asked of each running member through its own
            // endpoint (a member list needs no quorum).
            let mut lists: Vec<(String, BTreeSet<u64>)> = vec![];
            for m in view.members.iter().filter(|m| view.running.contains(&m.id)) {
                let via = if m.node.is_empty() {
                    view.via.clone()
                } else {
                    m.node.clone()
                };
                if let Ok(ms) = ops.etcd_members(&via, &m.client_urls, external).await {
                    lists.push((who(m), ms.iter().map(|x| x.id).collect()));
                }
            }
            let agree = lists.windows(2).all(|w| w[0].1 == w[1].1);
            let mut silent: Vec<String> = view
                .members
                .iter()
                .filter(|m| !lists.iter().any(|(n, _)| *n == who(m)))
                .map(who)
                .collect();
            silent.sort();
            checks.push(check(
                "etcd-member-lists-agree",
                agree,
                if !agree {
                    format!("members disagree: {:?}", lists.iter().map(|(n, l)| (n, l.len())).collect::<Vec<_>>())
                } else if silent.is_empty() {
                    format!("all {} members list the same members", lists.len())
                } else {
                    format!(
                        "the members that answered ({}) list the same members; {} did not answer",
                        lists.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", "),
                        silent.join(", ")
                    )
                },
                "compare `khctl etcd members` with each member's own view; a member that disagrees must be removed and re-added",
            ));
            if !external {
                let cps: Vec<&str> = spec.control_planes().map(|c| c.name.as_str()).collect();
                checks.push(members_match_check(
                    &cps,
                    &view.members,
                    &view.running,
                    quorum,
                    pending.as_ref(),
                ));
            }
            let learners: Vec<&proto::MemberInfo> =
                view.members.iter().filter(|m| m.is_learner).collect();
            let learner_fix: Vec<String> = learners
                .iter()
                .map(|m| {
                    match pending
                        .as_ref()
                        .filter(|p| p.with == m.name || p.with == m.node)
                    {
                        Some(p) => resume_fix(p),
                        None => format!("khctl etcd remove-member {}", m.id_hex),
                    }
                })
                .collect();
            checks.push(check(
                "etcd-no-stuck-learner",
                learners.is_empty(),
                if learners.is_empty() {
                    "no learners".into()
                } else {
                    format!(
                        "learners: {}",
                        learners
                            .iter()
                            .map(|m| format!(
                                "{} ({})",
                                m.id_hex,
                                if m.node.is_empty() {
                                    m.peer_urls.join(",")
                                } else {
                                    m.node.clone()
                                }
                            ))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
                &learner_fix.join("; "),
            ));
        }
    }
    checks.push(replacement_check(pending.as_ref()));
    checks.push(crate::rollout::restore::health_check(coord).await?);
    checks.push(crate::rollout::certs::health_check(coord).await?);
    checks.push(crate::rollout::upgrade::health_check(coord).await?);

    // 5. Every apiserver ready, asked through its own node. A control plane
    // whose agent reports is running: it is checked, not replaced.
    let mut not_ready = vec![];
    let mut fixes: Vec<String> = vec![];
    for (cp, r) in &readiness {
        let Err(e) = r else { continue };
        not_ready.push(format!(
            "{}: {}",
            cp.name,
            e.lines().next().unwrap_or_default()
        ));
        let f = if !quorum {
            "the apiservers need etcd: restore etcd quorum first (see etcd-quorum)".to_string()
        } else if let Some(p) = pending
            .as_ref()
            .filter(|p| p.failed == cp.name || p.with == cp.name)
        {
            resume_fix(p)
        } else if ready_agents.contains(&cp.name.as_str()) {
            format!("check kube-apiserver on {} (`crictl ps --name kube-apiserver` and its log); the node runs, so do not replace it", cp.name)
        } else {
            format!("start {0} again if it can come back; otherwise `khctl etcd replace --failed {0} --with <new-node>`", cp.name)
        };
        if !fixes.contains(&f) {
            fixes.push(f);
        }
    }
    checks.push(check(
        "apiservers-ready",
        not_ready.is_empty(),
        if not_ready.is_empty() {
            format!("{} apiservers ready", spec.control_planes().count())
        } else {
            not_ready.join("; ")
        },
        &fixes.join("; "),
    ));

    // 6. Nodes Ready, through a control plane that answers. kubectl there
    // reaches the cluster through the control-plane endpoint.
    let mut last = String::new();
    let mut nodes_check = None;
    for cp in spec.control_planes() {
        match ops.kube_nodes(&cp.name).await {
            Ok(nodes) => {
                let missing: Vec<String> = spec
                    .nodes
                    .iter()
                    .filter(|n| n.role != NodeRole::LoadBalancer)
                    .filter(|n| !nodes.iter().any(|k| k.name == n.name && k.ready))
                    .map(|n| n.name.clone())
                    .collect();
                nodes_check = Some(check(
                    "nodes-ready",
                    missing.is_empty(),
                    if missing.is_empty() { format!("{} nodes Ready", nodes.len()) } else { format!("not Ready: {}", missing.join(", ")) },
                    "check the kubelet and the CNI on those nodes; a dead control plane is replaced with `khctl etcd replace`",
                ));
                break;
            }
            Err(e) => last = format!("{}: {}", cp.name, e.lines().next().unwrap_or_default()),
        }
    }
    checks.push(nodes_check.unwrap_or_else(|| {
        if !quorum {
            check(
                "nodes-ready",
                false,
                format!("not checked: no control plane answered kubectl, as the apiservers need etcd quorum (see etcd-quorum); {last}"),
                "restore etcd quorum first (see etcd-quorum)",
            )
        } else if let Some(ep) = &endpoint_down {
            check(
                "nodes-ready",
                false,
                format!("not checked: kubectl on the control planes goes through the control-plane endpoint, which fails (see control-plane-endpoint); {last}"),
                &ep.fix,
            )
        } else {
            check(
                "nodes-ready",
                false,
                format!("no control plane answered kubectl; {last}"),
                "bring a control plane back",
            )
        }
    }));
    let ok = checks.iter().all(|c| c.ok);
    Ok(proto::HealthResponse { checks, ok })
}

/// Waits until `health` passes, or returns the failing checks.
pub async fn wait_healthy(coord: &Coordinator, timeout: Duration) -> Result<(), Failure> {
    let start = std::time::Instant::now();
    loop {
        let h = health(coord).await.map_err(Failure::from)?;
        // The cluster's health, not other operations' bookkeeping: an
        // unfinished operation is `khctl health`'s to report, and the
        // operation that waits here refuses to start beside a pending one
        // where that matters.
        let failing = |c: &&proto::HealthCheck| !c.ok && !c.name.ends_with("-finished");
        if !h.checks.iter().any(|c| failing(&c)) {
            return Ok(());
        }
        if start.elapsed() > timeout {
            let bad: Vec<String> = h
                .checks
                .iter()
                .filter(failing)
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A member of node `node`, healthy or not (shared with the rollout's
    /// plan tests).
    pub(crate) fn member(id: u64, node: &str, healthy: bool) -> proto::MemberInfo {
        proto::MemberInfo {
            id,
            id_hex: format!("{id:x}"),
            name: node.into(),
            node: node.into(),
            healthy,
            health_error: if healthy {
                String::new()
            } else {
                "context deadline exceeded".into()
            },
            ..Default::default()
        }
    }

    const CPS: &[&str] = &["cp-1", "cp-2", "cp-3"];

    #[test]
    fn quorum_loss_names_the_down_members_and_never_advises_a_replacement() {
        // cp-1 runs (it answers endpoint status) but, like every member
        // without quorum, fails etcd's health check.
        let ms = [
            member(1, "cp-1", false),
            member(2, "cp-2", false),
            member(3, "cp-3", false),
        ];
        let running = HashSet::from([1]);
        let (q, ok) = quorum_check(&ms, &running);
        assert!(!ok && !q.ok);
        assert_eq!(
            q.detail,
            "etcd quorum lost: 1 of 3 members running (cp-2, cp-3 down); quorum needs 2"
        );
        assert!(q.fix.starts_with("start cp-2 and cp-3 again"), "{}", q.fix);
        assert!(!q.fix.contains("khctl etcd replace"), "{}", q.fix);
        let m = members_match_check(CPS, &ms, &running, false, None);
        assert!(!m.detail.contains("cp-1"), "cp-1 runs: {}", m.detail);
        assert!(
            m.detail.contains("member 2 of cp-2 is down"),
            "{}",
            m.detail
        );
        assert!(!m.fix.contains("replace"), "{}", m.fix);
    }

    #[test]
    fn a_running_member_is_never_to_be_replaced() {
        // Quorum holds; cp-3 runs but fails its health check.
        let ms = [
            member(1, "cp-1", true),
            member(2, "cp-2", true),
            member(3, "cp-3", false),
        ];
        let m = members_match_check(CPS, &ms, &HashSet::from([1, 2, 3]), true, None);
        assert!(!m.ok);
        assert!(m.fix.contains("do not replace it"), "{}", m.fix);
        assert!(!m.fix.contains("khctl etcd replace"), "{}", m.fix);
        // Down (no answer at all): replace it, or start it again.
        let m = members_match_check(CPS, &ms, &HashSet::from([1, 2]), true, None);
        assert_eq!(
            m.fix,
            "khctl etcd replace --failed cp-3 --with <new-node> (or start cp-3 again if it can come back)"
        );
        // Healthy members give no fix at all.
        let all = [
            member(1, "cp-1", true),
            member(2, "cp-2", true),
            member(3, "cp-3", true),
        ];
        let m = members_match_check(CPS, &all, &HashSet::from([1, 2, 3]), true, None);
        assert!(m.ok && m.fix.is_empty(), "{m:?}");
    }

    #[test]
    fn an_unfinished_replacement_is_resumed_with_its_own_command() {
        // cp-2's member was removed, cp-4 joined as a learner, then the
        // coordinator stopped.
        let mut cp4 = member(4, "", false);
        cp4.name = "cp-4".into();
        cp4.is_learner = true;
        let ms = [member(1, "cp-1", true), member(3, "cp-3", true), cp4];
        let p = Pending {
            operation: "etcd replace cp-2 with cp-4".into(),
            failed: "cp-2".into(),
            with: "cp-4".into(),
            command: "khctl etcd replace --failed cp-2 --with cp-4".into(),
            running: false,
            stopped_at: String::new(),
        };
        let m = members_match_check(CPS, &ms, &HashSet::from([1, 3]), true, Some(&p));
        assert!(m.detail.contains("cp-2 has no etcd member"), "{}", m.detail);
        assert_eq!(
            m.fix,
            "resume the unfinished replacement: khctl etcd replace --failed cp-2 --with cp-4"
        );
        assert!(!m.fix.contains("--with cp-2"), "{}", m.fix);
        let r = replacement_check(Some(&p));
        assert!(!r.ok);
        assert!(
            r.fix
                .starts_with("khctl etcd replace --failed cp-2 --with cp-4 "),
            "{}",
            r.fix
        );
        // While it runs, the check passes: its own verify step waits on health.
        let running = Pending { running: true, ..p };
        assert!(replacement_check(Some(&running)).ok);
        assert!(replacement_check(None).ok);
    }

    /// A dry run's report, as the agent sends it: planned commands and notes
    /// in the message, never in `commands`.
    fn lb_report(diff: &str, commands: usize, notes: &[&str]) -> proto::StepReport {
        let changed = !diff.is_empty() || commands > 0;
        proto::StepReport {
            outcome: if changed {
                proto::Outcome::Changed as i32
            } else {
                proto::Outcome::Unchanged as i32
            },
            message: format!("dry run: {}", notes.join("; ")),
            dry_run: true,
            files: if diff.is_empty() {
                vec![]
            } else {
                vec![proto::FileChange {
                    path: "/etc/haproxy/haproxy.cfg".into(),
                    diff: diff.into(),
                    ..Default::default()
                }]
            },
            ..Default::default()
        }
    }

    #[test]
    fn load_balancer_problems_come_from_the_dry_run_of_kh_s_own_config() {
        let up_to_date = lb_report("", 0, &[]);
        assert_eq!(lb_problem("lb-1", &up_to_date, CPS), None);
        let stopped = lb_report(
            "",
            1,
            &["/etc/haproxy/haproxy.cfg is in place but HAProxy is not running; starting it"],
        );
        let (p, f) = lb_problem("lb-1", &stopped, CPS).unwrap();
        assert_eq!(p, "lb-1: HAProxy is not running");
        assert!(f.contains("systemctl start haproxy"), "{f}");
        // A ready control plane missing, a retired one still listed.
        let diff = "--- a/etc/haproxy/haproxy.cfg\n+++ b/etc/haproxy/haproxy.cfg\n@@ -30,3 +30,3 @@\n     server cp-1 10.0.0.11:6443 check\n-    server cp-9 10.0.0.19:6443 check\n+    server cp-3 10.0.0.13:6443 check\n";
        let (p, _) = lb_problem("lb-1", &lb_report(diff, 2, &[]), CPS).unwrap();
        assert_eq!(
            p,
            "lb-1: ready control plane cp-3 is not a backend; backend cp-9 is not a control plane of the cluster"
        );
        // A control plane of the spec that is down stays a backend: fine.
        let diff = "@@ -30,3 +30,2 @@\n     server cp-1 10.0.0.11:6443 check\n-    server cp-2 10.0.0.12:6443 check\n";
        assert_eq!(lb_problem("lb-1", &lb_report(diff, 2, &[]), CPS), None);
    }
}
