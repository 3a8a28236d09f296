//! Host preparation and preflight across nodes: resolve the targets, then fan
//! out to their agents in parallel. One node failing never stops the others.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kh::names::NodeName;
use kh::proto::{self, prepare_event::Kind, run_step_request::Step};
use kh::spec::{ClusterSpec, NodeRole};
use tokio::sync::mpsc;

use crate::agents::explain;
use crate::error::CoordError;
use crate::registry::NodeRecord;
use crate::Coordinator;

/// How many nodes are worked on at once.
const PARALLEL: usize = 64;
const STEP_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct Target {
    pub record: NodeRecord,
    pub role: Option<NodeRole>,
    pub address: Option<std::net::IpAddr>,
}

/// Refuses a spec naming a node that is not enrolled: a spec error (each
/// line with its field path and the fix), as for any other invalid field.
pub fn check_enrolled(coord: &Coordinator, spec: &ClusterSpec) -> Result<(), CoordError> {
    let enrolled: Vec<String> = coord
        .registry
        .list(0, Duration::from_secs(1))?
        .into_iter()
        .map(|v| v.record.name.to_string())
        .collect();
    let names: Vec<&str> = enrolled.iter().map(|s| s.as_str()).collect();
    let missing = spec.check_enrolled(&names);
    if missing.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = missing.iter().map(|e| e.to_string()).collect();
    Err(CoordError::InvalidArgument(format!(
        "the cluster spec is invalid:\n{}",
        lines.join("\n")
    )))
}

/// Records the spec's roles in the registry: for `khctl prepare`, which
/// changes the hosts. Preflight and dry runs change nothing, and a rollout
/// records roles itself once its plan is accepted.
pub fn record_roles(coord: &Coordinator, spec: &ClusterSpec) -> Result<(), CoordError> {
    for n in &spec.nodes {
        coord
            .registry
            .set_role(&NodeName::new(&n.name)?, Some(n.role.as_str().to_string()))?;
    }
    Ok(())
}

/// Turns a spec or a list of names into enrolled nodes. A spec is validated in
/// full (every node enrolled); nothing is written.
pub fn resolve(
    coord: &Coordinator,
    targets: Option<proto::Targets>,
) -> Result<(Option<ClusterSpec>, Vec<Target>), CoordError> {
    let t = targets.unwrap_or_default();
    if !t.spec_yaml.is_empty() {
        let spec = kh::spec::parse(&t.spec_yaml).map_err(|e| {
            CoordError::InvalidArgument(format!("the cluster spec is invalid:\n{e}"))
        })?;
        check_enrolled(coord, &spec)?;
        let mut out = vec![];
        for n in &spec.nodes {
            let name = NodeName::new(&n.name)?;
            let record = coord
                .registry
                .get(&name)?
                .ok_or_else(|| CoordError::NotFound(format!("node {name} vanished")))?;
            out.push(Target {
                record,
                role: Some(n.role),
                address: Some(n.address),
            });
        }
        return Ok((Some(spec), out));
    }
    if t.nodes.is_empty() {
        return Err(CoordError::InvalidArgument(
            "name the nodes: -f cluster.yaml or --node NAME (repeatable)".into(),
        ));
    }
    let mut out = vec![];
    for n in &t.nodes {
        let name = NodeName::new(n)?;
        let record = coord.registry.get(&name)?.ok_or_else(|| {
            CoordError::NotFound(format!(
                "node {name} is not enrolled; enroll it with `khctl token create --node {name}` and the printed command"
            ))
        })?;
        let role = record.role.as_deref().and_then(|r| match r {
            "control-plane" => Some(NodeRole::ControlPlane),
            "worker" => Some(NodeRole::Worker),
            "loadbalancer" => Some(NodeRole::LoadBalancer),
            _ => None,
        });
        out.push(Target {
            record,
            role,
            address: None,
        });
    }
    Ok((None, out))
}

/// The steps a node of `role` needs. A load balancer runs no Kubernetes
/// components, so it needs none of them.
pub fn steps_for(role: Option<NodeRole>) -> Vec<Step> {
    if role == Some(NodeRole::LoadBalancer) {
        return vec![];
    }
    vec![
        Step::DisableSwap(proto::DisableSwap {}),
        Step::KernelModules(proto::KernelModules {}),
        Step::Sysctl(proto::Sysctl {}),
        Step::ContainerdCgroup(proto::ContainerdCgroup {}),
    ]
}

pub fn step_name(s: &Step) -> &'static str {
    s.name()
}

/// Prepares every target, sending progress to `tx`. Returns when all are done.
pub async fn prepare(
    coord: Arc<Coordinator>,
    targets: Vec<Target>,
    dry_run: bool,
    tx: mpsc::Sender<proto::PrepareEvent>,
) {
    let plan = targets
        .iter()
        .map(|t| proto::NodePlan {
            node: t.record.name.to_string(),
            role: t.role.map(|r| r.as_str().to_string()).unwrap_or_default(),
            steps: steps_for(t.role)
                .iter()
                .map(|s| step_name(s).to_string())
                .collect(),
        })
        .collect();
    let _ = tx
        .send(proto::PrepareEvent {
            kind: Kind::Plan as i32,
            plan,
            ..Default::default()
        })
        .await;
    let sem = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    let mut tasks = tokio::task::JoinSet::new();
    for t in targets {
        let (coord, tx, sem) = (coord.clone(), tx.clone(), sem.clone());
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await;
            prepare_node(&coord, t, dry_run, &tx).await;
        });
    }
    while tasks.join_next().await.is_some() {}
}

async fn prepare_node(
    coord: &Coordinator,
    t: Target,
    dry_run: bool,
    tx: &mpsc::Sender<proto::PrepareEvent>,
) {
    let node = t.record.name.to_string();
    let started = Instant::now();
    let ev = |kind: Kind| proto::PrepareEvent {
        kind: kind as i32,
        node: node.clone(),
        ..Default::default()
    };
    let finish = |error: String| proto::PrepareEvent {
        error,
        elapsed_ms: started.elapsed().as_millis() as u64,
        ..ev(Kind::NodeFinished)
    };
    if let Err(e) = coord.agents.connect(&t.record) {
        let _ = tx.send(finish(e.to_string())).await;
        return;
    }
    for step in steps_for(t.role) {
        let name = step_name(&step).to_string();
        let _ = tx
            .send(proto::PrepareEvent {
                step: name.clone(),
                ..ev(Kind::StepStarted)
            })
            .await;
        let t0 = Instant::now();
        let result = coord
            .agents
            .run_step(
                &t.record,
                proto::RunStepRequest {
                    step: Some(step),
                    dry_run,
                },
                STEP_TIMEOUT,
            )
            .await;
        let report = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(finish(explain(&node, &e))).await;
                return;
            }
        };
        let failed = report.outcome == proto::Outcome::Failed as i32;
        let error = report.error.clone();
        let _ = tx
            .send(proto::PrepareEvent {
                step: name.clone(),
                report: Some(report),
                elapsed_ms: t0.elapsed().as_millis() as u64,
                ..ev(Kind::StepFinished)
            })
            .await;
        if failed {
            // Later steps assume the earlier ones held; stop this node here.
            let _ = tx
                .send(finish(format!("step {name} failed: {error}")))
                .await;
            return;
        }
    }
    let _ = tx.send(finish(String::new())).await;
}

/// Preflight on every target in parallel.
pub async fn preflight(
    coord: Arc<Coordinator>,
    spec: Option<ClusterSpec>,
    targets: Vec<Target>,
) -> Vec<proto::NodePreflight> {
    let version = spec
        .as_ref()
        .and_then(|s| s.kubernetes_version.as_ref())
        .map(|v| v.to_string())
        .unwrap_or_default();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, t) in targets.into_iter().enumerate() {
        let coord = coord.clone();
        let version = version.clone();
        tasks.spawn(async move {
            let node = t.record.name.to_string();
            let role = t.role.unwrap_or(NodeRole::Worker);
            let wire_role = match role {
                NodeRole::ControlPlane => proto::NodeRole::ControlPlane,
                NodeRole::Worker => proto::NodeRole::Worker,
                NodeRole::LoadBalancer => proto::NodeRole::Loadbalancer,
            };
            let mut out = proto::NodePreflight {
                node: node.clone(),
                role: role.as_str().to_string(),
                ..Default::default()
            };
            match coord.agents.connect(&t.record) {
                Err(e) => out.error = e.to_string(),
                Ok(()) => {
                    let req = proto::PreflightRequest {
                        role: wire_role as i32,
                        address: t.address.map(|a| a.to_string()).unwrap_or_default(),
                        kubernetes_version: version,
                    };
                    match coord
                        .agents
                        .preflight(&t.record, req, Duration::from_secs(60))
                        .await
                    {
                        Ok(r) => out.report = Some(r),
                        Err(e) => out.error = explain(&node, &e),
                    }
                }
            }
            (i, out)
        });
    }
    let mut all: Vec<(usize, proto::NodePreflight)> = tasks.join_all().await;
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, n)| n).collect()
}
