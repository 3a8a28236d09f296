//! `khctl certs renew [--all | NAME...]`: renew the control planes' kubeadm
//! certificates, one control plane at a time, and restart their static pods
//! so they use them.
//!
//! Preconditions are checked before anything changes (a held spec, every
//! control plane's agent reachable, kubeadm's certificate names). Then,
//! holding the control-plane lease throughout, on each control plane in
//! turn: `kubeadm certs renew`, the static pods restarted the kubeadm way
//! (the agent's RestartControlPlane step: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, each back serving the renewed
//! certificate before the next), and a gate before the next control plane.
//!
//! The gate depends on the health observed before the first change. A
//! healthy cluster must stay healthy: the node's apiserver ready and its
//! etcd member healthy. A cluster that was already down (certificates
//! expired: etcd peers refuse each other and no apiserver serves until a
//! majority is renewed) cannot pass that gate node by node, so there the
//! gate is the node's components back with the renewed certificates (which
//! the restart step proves), and the whole cluster's health (every member
//! healthy, every apiserver ready) is required after the last one. Nothing
//! on the agent's path needs the apiserver.
//!
//! Every step is persisted, so a renewal resumed after a crash repeats no
//! finished node; the operation is the same one `khctl certs renew` and the
//! automatic renewal ([`super::autorenew`]) start.

use std::sync::Arc;
use std::time::Duration;

use kh::proto::{self, run_step_request::Step, CertsRenewRequest};
use kh::spec::{ClusterSpec, NodeSpec};
use kh::time::unix_ms;

use super::ops::{url, Failure, Ops};
use super::phase::Phase;
use super::reporter::Reporter;
use super::state::RolloutState;
use super::Follow;
use crate::error::CoordError;
use crate::{etcd, lease, Coordinator};

pub const KEY: &str = "certs/renew";

/// How long a renewed control plane may take to pass its gate.
const NODE_GATE: Duration = Duration::from_secs(120);
/// How long the whole cluster may take to be healthy after the last one.
const CLUSTER_GATE: Duration = Duration::from_secs(180);

/// Marks in the preconditions' persisted message which gate applies, so a
/// resumed renewal keeps the one decided before its first change.
const GATE_HEALTHY: &str = "gate: each control plane healthy before the next";
const GATE_DOWN: &str = "gate: each control plane's components back with the renewed certificates; cluster health after the last";

struct Plan {
    spec: ClusterSpec,
    names: Vec<String>,
    /// Who started it and why, when it was not an operator.
    trigger: Option<String>,
    /// `--no-snapshot`: no etcd snapshot before the first change.
    no_snapshot: bool,
}

/// `certs renew all` or `certs renew apiserver,etcd-server`.
fn operation(names: &[String]) -> String {
    if names.is_empty() {
        "certs renew all".into()
    } else {
        format!("certs renew {}", names.join(","))
    }
}

/// The exact command that resumes this renewal.
pub fn resume_command(req: &CertsRenewRequest) -> String {
    let mut cmd = if req.all {
        "khctl certs renew --all".to_string()
    } else {
        format!("khctl certs renew {}", req.names.join(" "))
    };
    if req.no_snapshot {
        cmd.push_str(" --no-snapshot");
    }
    cmd
}

/// The request's certificate names (empty for all), validated.
pub fn validate(req: &CertsRenewRequest) -> Result<Vec<String>, CoordError> {
    match (req.all, req.names.is_empty()) {
        (true, false) => Err(CoordError::InvalidArgument(
            "--all and certificate names exclude each other; pass one or the other".into(),
        )),
        (false, true) => Err(CoordError::InvalidArgument(format!(
            "name the certificates to renew, or pass --all; kubeadm's names: {}",
            kh::RENEWABLE_CERTS.join(", ")
        ))),
        (true, true) => Ok(vec![]),
        (false, false) => {
            let mut names: Vec<String> = vec![];
            for n in &req.names {
                if !kh::RENEWABLE_CERTS.contains(&n.as_str()) {
                    return Err(CoordError::InvalidArgument(format!(
                        "{} is not a certificate kubeadm renews; name one of: {} (or pass --all)",
                        kh::echo(n),
                        kh::RENEWABLE_CERTS.join(", ")
                    )));
                }
                if !names.contains(n) {
                    names.push(n.clone());
                }
            }
            Ok(names)
        }
    }
}

/// Validates the request and starts the renewal in the background.
pub async fn start(coord: Arc<Coordinator>, req: CertsRenewRequest) -> Result<Follow, CoordError> {
    start_as(coord, req, None).await
}

/// [`start`], saying who started it and why when it was not an operator
/// (the automatic renewal).
pub(crate) async fn start_as(
    coord: Arc<Coordinator>,
    req: CertsRenewRequest,
    trigger: Option<String>,
) -> Result<Follow, CoordError> {
    let names = validate(&req)?;
    let spec = etcd::held_spec(&coord)?;
    if spec.control_planes().next().is_none() {
        return Err(CoordError::FailedPrecondition(format!(
            "cluster {} has no control plane to renew",
            spec.name
        )));
    }
    let operation = operation(&names);
    let resume = resume_command(&req);
    // Another operation that changed the cluster and stopped must be
    // finished first: renewing under a half-done replacement would restart
    // members while their membership is in flux.
    super::operation::refuse_if_pending(&coord, "certs-renew", "renewing certificates").await?;

    let guard = coord.rollouts.current.lock().await;
    super::refuse_if_running(&guard).await?;
    let now = unix_ms(coord.clock.now());
    let state = RolloutState::resume_or_begin(&coord.db, KEY, &operation, &spec.name, resume, now)?;
    let plan = Plan {
        spec,
        names,
        trigger,
        no_snapshot: req.no_snapshot,
    };
    let (rep, live) = Reporter::begin(&coord, guard, state, req.dry_run, now)?;
    let dry_run = req.dry_run;
    tokio::spawn(async move {
        let result = if dry_run {
            dry(&coord, &plan, &rep).await
        } else {
            run(coord, plan, rep.clone()).await
        };
        if let Err(f) = &result {
            tracing::warn!(node = %f.node, step = %f.step, error = %f.message, "certificate renewal failed");
        }
        rep.finish(&result).await;
    });
    Ok(Follow {
        backlog: vec![],
        live: Some(live),
    })
}

/// What each control plane gets, in the words the run uses.
fn node_plan(plan: &Plan, cp: &NodeSpec) -> String {
    let what = if plan.names.is_empty() {
        "kubeadm certs renew all".to_string()
    } else {
        plan.names
            .iter()
            .map(|n| format!("kubeadm certs renew {n}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let etcd = if etcd::is_external(&plan.spec) {
        ""
    } else {
        "etcd, "
    };
    format!(
        "{}: {what}; restart {etcd}kube-apiserver, kube-controller-manager, kube-scheduler (manifests moved out and back, each back before the next); then the gate",
        cp.name
    )
}

async fn emit_plan(plan: &Plan, rep: &Reporter) {
    let step = |node: &str, step: &str| proto::PlannedStep {
        node: node.into(),
        step: step.into(),
        ..Default::default()
    };
    let renew: Vec<proto::PlannedStep> = plan
        .spec
        .control_planes()
        .flat_map(|cp| {
            [
                step(&cp.name, "certs-renew"),
                step(&cp.name, "restart"),
                step(&cp.name, "ready"),
            ]
        })
        .collect();
    let mut notes: Vec<String> = plan
        .spec
        .control_planes()
        .map(|cp| node_plan(plan, cp))
        .collect();
    notes.push("one control plane at a time, under the control-plane lease; the gate between control planes is decided from the cluster's health before the first change".into());
    notes.push(if plan.no_snapshot {
        "no etcd snapshot first (--no-snapshot)".into()
    } else {
        "an etcd snapshot first, stored on the coordinator (`khctl etcd snapshot list`), when the cluster answers; a cluster already down (expired certificates) cannot be read, and the renewal goes ahead without one, changing certificates only, never etcd's data".into()
    });
    rep.emit(proto::RolloutEvent {
        kind: proto::rollout_event::Kind::Plan as i32,
        plan: Some(proto::RolloutPlan {
            cluster: plan.spec.name.clone(),
            phases: vec![
                proto::PlannedPhase {
                    name: Phase::Preconditions.to_string(),
                    steps: if plan.no_snapshot {
                        vec![step("cluster", "preconditions")]
                    } else {
                        vec![
                            step("cluster", "preconditions"),
                            step("cluster", "snapshot"),
                        ]
                    },
                },
                proto::PlannedPhase {
                    name: Phase::Renew.to_string(),
                    steps: renew,
                },
                proto::PlannedPhase {
                    name: Phase::Verify.to_string(),
                    steps: vec![
                        step("cluster", "verify"),
                        step("cluster", "admin-kubeconfig"),
                    ],
                },
            ],
            notes,
            rendered: vec![],
        }),
        ..Default::default()
    })
    .await;
}

/// The dry run: the plan and the preconditions' findings, nothing changed
/// and nothing persisted.
async fn dry(coord: &Arc<Coordinator>, plan: &Plan, rep: &Reporter) -> Result<(), Failure> {
    emit_plan(plan, rep).await;
    let gate = preconditions(coord, plan).await?;
    rep.note(Phase::Preconditions, "cluster", gate).await;
    for cp in plan.spec.control_planes() {
        rep.note(
            Phase::Renew,
            &cp.name,
            format!("would run {}", node_plan(plan, cp)),
        )
        .await;
    }
    Ok(())
}

/// Every control plane's agent answers; returns the observed health and
/// the gate it decides, as one message.
async fn preconditions(coord: &Arc<Coordinator>, plan: &Plan) -> Result<String, Failure> {
    let pre = |node: &str, message: String, hint: &str| Failure {
        class: "preflight",
        node: node.to_string(),
        step: "preconditions".into(),
        message,
        hint: hint.into(),
        report: None,
    };
    // Reachable means its agent answers now, with what it reads of its
    // certificates (read from files: no apiserver needed).
    for cp in plan.spec.control_planes() {
        let rec = Ops { coord }.record(&cp.name).map_err(|f| {
            pre(
                &cp.name,
                f.message,
                "enroll or start its agent, then renew again",
            )
        })?;
        if let Err(e) = coord
            .agents
            .cluster_certs(&rec, Duration::from_secs(20))
            .await
        {
            return Err(pre(
                &cp.name,
                format!(
                    "control plane {} is unreachable: {}; nothing was changed",
                    cp.name,
                    crate::agents::explain(&cp.name, &e)
                ),
                &format!("bring the agent on {} back (`systemctl status kh-agent` there), then renew again", cp.name),
            ));
        }
    }
    let (healthy, detail) = cluster_health(coord, &plan.spec).await;
    let gate = if healthy { GATE_HEALTHY } else { GATE_DOWN };
    let mut msg = format!(
        "{} control planes reachable; before the renewal the cluster was {}; {gate}",
        plan.spec.control_planes().count(),
        if healthy {
            "healthy".to_string()
        } else {
            format!("down ({detail})")
        }
    );
    if let Some(t) = &plan.trigger {
        msg = format!("{t}; {msg}");
    }
    Ok(msg)
}

/// Whether every etcd member is healthy (stacked etcd) and every control
/// plane's apiserver is ready, and what is not when not.
async fn cluster_health(coord: &Coordinator, spec: &ClusterSpec) -> (bool, String) {
    let ops = Ops { coord };
    let mut bad = vec![];
    if !etcd::is_external(spec) {
        match etcd::membership(coord, spec, None).await {
            Ok(view) => {
                for m in view.members.iter().filter(|m| !m.healthy) {
                    bad.push(format!("etcd member of {} unhealthy", m.node));
                }
            }
            Err(e) => bad.push(format!("etcd: {}", short(&e.to_string()))),
        }
    }
    for cp in spec.control_planes() {
        if let Err(e) = ops.apiserver_ready(&cp.name, &url(cp.address, 6443)).await {
            bad.push(format!("apiserver on {}: {}", cp.name, short(&e)));
        }
    }
    (bad.is_empty(), bad.join("; "))
}

/// The gist of a failure for a one-line summary: its first line, cut.
fn short(text: &str) -> String {
    const MAX: usize = 160;
    let line = text.lines().next().unwrap_or_default();
    if line.len() <= MAX {
        return line.to_string();
    }
    let mut cut = MAX;
    while !line.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{} …", &line[..cut])
}

/// One control plane healthy: its apiserver ready and its etcd member
/// healthy.
async fn node_healthy(
    coord: &Coordinator,
    spec: &ClusterSpec,
    cp: &NodeSpec,
) -> Result<(), String> {
    let ops = Ops { coord };
    ops.apiserver_ready(&cp.name, &url(cp.address, 6443))
        .await
        .map_err(|e| format!("its kube-apiserver is not ready: {e}"))?;
    if etcd::is_external(spec) {
        return Ok(());
    }
    let view = etcd::membership(coord, spec, None)
        .await
        .map_err(|e| format!("etcd membership unreadable: {e}"))?;
    match view.members.iter().find(|m| m.node == cp.name) {
        Some(m) if m.healthy => Ok(()),
        Some(_) => Err("its etcd member is not healthy".into()),
        None => Err("it has no etcd member".into()),
    }
}

async fn wait_for<F, Fut>(limit: Duration, mut f: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let start = std::time::Instant::now();
    loop {
        match f().await {
            Ok(()) => return Ok(()),
            Err(e) if start.elapsed() >= limit => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

async fn run(coord: Arc<Coordinator>, plan: Plan, rep: Reporter) -> Result<(), Failure> {
    let holder = "certs renew".to_string();
    let purpose = format!(
        "renewing the kubeadm certificates of cluster {}",
        plan.spec.name
    );
    lease::hold(
        &coord,
        &holder,
        &purpose,
        Box::pin(steps(&coord, &plan, &rep)),
    )
    .await
}

/// The etcd snapshot before the first change, unless `--no-snapshot`. A
/// cluster that was down before the renewal (its certificates expired) has
/// no member that answers a snapshot; the renewal touches certificates only,
/// not etcd's data, so it goes ahead and says so. A snapshot that fails on a
/// healthy cluster refuses the renewal before anything changed.
async fn snapshot_first(
    coord: &Coordinator,
    plan: &Plan,
    healthy_gate: bool,
    rep: &Reporter,
) -> Result<(), Failure> {
    if plan.no_snapshot || rep.is_done("cluster/snapshot").await {
        return Ok(());
    }
    if !healthy_gate {
        rep.note(
            Phase::Preconditions,
            "cluster",
            "no etcd snapshot: the cluster was down before the renewal, so no member can be read; the renewal changes certificates only, never etcd's data",
        )
        .await;
        return Ok(());
    }
    let what = format!("renewing the certificates of cluster {}", plan.spec.name);
    rep.tracked(Phase::Preconditions, "cluster", "snapshot", async {
        let m = crate::snapshots::take_before(coord, "certs renew", &what)
            .await
            .map_err(|message| Failure {
                class: "preflight",
                node: "cluster".into(),
                step: "snapshot".into(),
                message,
                hint: "run the same `khctl certs renew` again once a snapshot can be taken, or add --no-snapshot".into(),
                report: None,
            })?;
        Ok((
            (),
            format!(
                "etcd snapshot {} stored ({} bytes, revision {})",
                m.id, m.size, m.revision
            ),
        ))
    })
    .await
}

async fn steps(coord: &Arc<Coordinator>, plan: &Plan, rep: &Reporter) -> Result<(), Failure> {
    let ops = Ops { coord };
    emit_plan(plan, rep).await;
    rep.phase(Phase::Preconditions).await;
    // A resumed renewal keeps the gate decided before its first change: the
    // cluster it sees now is half renewed.
    let decided = {
        let st = rep.state.lock().await;
        st.steps
            .get("cluster/preconditions")
            .filter(|s| s.status == super::state::Status::Done && st.changed())
            .map(|s| s.message.clone())
    };
    let gate = match decided {
        Some(m) => {
            rep.note(
                Phase::Preconditions,
                "cluster",
                format!("resuming; decided before the first change: {m}"),
            )
            .await;
            m
        }
        None => {
            rep.tracked(Phase::Preconditions, "cluster", "preconditions", async {
                let m = preconditions(coord, plan).await?;
                Ok((m.clone(), m))
            })
            .await?
        }
    };
    let healthy_gate = gate.contains(GATE_HEALTHY);
    snapshot_first(coord, plan, healthy_gate, rep).await?;

    rep.phase(Phase::Renew).await;
    let cps: Vec<&NodeSpec> = plan.spec.control_planes().collect();
    for cp in &cps {
        let node = cp.name.as_str();
        let hint = |what: &str| {
            format!(
                "{what}; then resume with {}; finished control planes are not repeated",
                super::ops::RERUN
            )
        };
        if !rep.is_done(&format!("{node}/certs-renew")).await {
            rep.tracked(Phase::Renew, node, "certs-renew", async {
                let r = ops
                    .step(
                        node,
                        "certs-renew",
                        Step::CertsRenew(proto::CertsRenew {
                            names: plan.names.clone(),
                        }),
                        false,
                    )
                    .await?;
                Ok(((), r.message))
            })
            .await?;
        }
        if !rep.is_done(&format!("{node}/restart")).await {
            rep.tracked(Phase::Renew, node, "restart", async {
                let r = ops
                    .step(
                        node,
                        "restart-control-plane",
                        Step::RestartControlPlane(proto::RestartControlPlane { wait_seconds: 0 }),
                        false,
                    )
                    .await
                    .map_err(|mut f| {
                        f.step = "restart".into();
                        f.hint = hint(&format!(
                            "a control-plane component on {node} did not come back (the message names it): look at its static pod log and the kubelet on {node}"
                        ));
                        f
                    })?;
                Ok(((), r.message.replace('\n', "; ")))
            })
            .await?;
        }
        if !rep.is_done(&format!("{node}/ready")).await {
            rep.tracked(Phase::Renew, node, "ready", async {
                if !healthy_gate {
                    return Ok((
                        (),
                        "its components are back and serve the renewed certificates; the cluster was down before the renewal, so its health is required after the last control plane".to_string(),
                    ));
                }
                wait_for(NODE_GATE, || node_healthy(coord, &plan.spec, cp))
                    .await
                    .map_err(|e| {
                        Failure::at(
                            node,
                            "ready",
                            format!("{node} did not become healthy within {}s after its restart: {e}", NODE_GATE.as_secs()),
                            hint(&format!("the other control planes were not touched; check {node}'s kube-apiserver and etcd (`khctl health`)")),
                        )
                    })?;
                Ok(((), "kube-apiserver ready and etcd member healthy".to_string()))
            })
            .await?;
        }
    }

    rep.phase(Phase::Verify).await;
    rep.tracked(Phase::Verify, "cluster", "verify", async {
        wait_for(CLUSTER_GATE, || async {
            match cluster_health(coord, &plan.spec).await {
                (true, _) => Ok(()),
                (false, why) => Err(why),
            }
        })
        .await
        .map_err(|e| {
            Failure::at(
                "cluster",
                "verify",
                format!(
                    "the cluster is not healthy {}s after the last control plane was renewed: {e}",
                    CLUSTER_GATE.as_secs()
                ),
                "run `khctl health` for the fixes, then resume the renewal with the same command",
            )
        })?;
        Ok((
            (),
            "every etcd member healthy and every kube-apiserver ready".to_string(),
        ))
    })
    .await?;
    rep.tracked(Phase::Verify, "cluster", "admin-kubeconfig", async {
        let m = admin_kubeconfig(coord, &plan.spec).await?;
        Ok(((), m))
    })
    .await?;
    Ok(())
}

/// `khctl kubeconfig` reads admin.conf from a control plane when asked, so
/// the one it hands out is the renewed one once every control plane is
/// renewed. This confirms it: admin.conf's client certificate on the first
/// control plane `khctl kubeconfig` asks.
async fn admin_kubeconfig(coord: &Coordinator, spec: &ClusterSpec) -> Result<String, Failure> {
    let ops = Ops { coord };
    let mut last = String::new();
    for cp in spec.control_planes() {
        let rec = ops.record(&cp.name)?;
        match coord
            .agents
            .cluster_certs(&rec, Duration::from_secs(20))
            .await
        {
            Ok(r) => {
                if let Some(c) = r.certs.iter().find(|c| c.name == "admin.conf") {
                    return Ok(format!(
                        "`khctl kubeconfig` hands out admin.conf from {}; its client certificate is valid until {}",
                        cp.name,
                        kh::time::rfc3339(c.not_after_unix.max(0) as u64 * 1000)
                    ));
                }
                last = format!("{} has no admin.conf", cp.name);
            }
            Err(e) => last = crate::agents::explain(&cp.name, &e),
        }
    }
    Err(Failure::at(
        "cluster",
        "admin-kubeconfig",
        format!("no control plane reported its admin.conf: {last}"),
        "run `khctl certs check` to see each node's certificates",
    ))
}

/// `certs-renew-finished` for `khctl health`: a renewal that changed the
/// cluster and stopped leaves control planes on different certificates; it
/// must be resumed with its command.
pub async fn health_check(coord: &Coordinator) -> Result<proto::HealthCheck, CoordError> {
    super::operation::unfinished_check(
        coord,
        KEY,
        "certs-renew-finished",
        "certificate renewal",
        "some control planes may still serve their old certificates, or have a static pod manifest moved aside",
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_all_or_known_names_and_resume_with_the_same_command() {
        let req = |all: bool, names: &[&str]| CertsRenewRequest {
            all,
            names: names.iter().map(|s| s.to_string()).collect(),
            dry_run: false,
            no_snapshot: false,
        };
        assert_eq!(validate(&req(true, &[])).unwrap(), Vec::<String>::new());
        assert!(validate(&req(true, &["apiserver"])).is_err());
        assert!(validate(&req(false, &[])).is_err());
        let err = validate(&req(false, &["apiserver", "etcd-bogus"])).unwrap_err();
        assert!(err.to_string().contains("etcd-bogus"), "{err}");
        assert!(err.to_string().contains("etcd-server"), "{err}");
        assert_eq!(
            validate(&req(false, &["apiserver", "etcd-server", "apiserver"])).unwrap(),
            vec!["apiserver".to_string(), "etcd-server".to_string()]
        );
        assert_eq!(operation(&[]), "certs renew all");
        assert_eq!(
            resume_command(&CertsRenewRequest {
                no_snapshot: true,
                ..req(true, &[])
            }),
            "khctl certs renew --all --no-snapshot"
        );
        assert_eq!(
            resume_command(&req(false, &["apiserver", "etcd-server"])),
            "khctl certs renew apiserver etcd-server"
        );
    }
}
