//! `khctl upgrade -f cluster.yaml`: upgrade the cluster to the spec's
//! `kubernetesVersion` the kubeadm way, one minor at a time, resumable.
//!
//! First the plan, from what the nodes say now: each node's kubeadm,
//! kubelet and kubectl packages (`PackageVersions`), each control plane's
//! kube-apiserver version (`ApiserverReady.version`) and each kubelet's
//! version (`KubeNodes`). The cluster's version is the lowest apiserver
//! version. The plan lists every node's versions, the target, the order
//! and the checks; every run shows it and `--dry-run` shows only it.
//!
//! The checks refuse before anything changes (failure class `preflight`,
//! khctl's exit code 3), each with the reason and the fix: a version that
//! cannot be read, a downgrade, a skipped minor without `--through`, a
//! kubelet that would end up newer than the apiservers or older than the
//! supported skew, an unhealthy cluster (`khctl health`'s checks), the
//! control-plane lease held by another operation, kubeadm certificates
//! expiring within the upgrade window (24 h), and a version missing from a
//! node's package repository. A cluster whose nodes all run the target
//! already has nothing to do: the run says so and changes nothing.
//!
//! Then, holding the control-plane lease: an etcd snapshot (unless
//! `--no-snapshot`), and per minor hop (one hop, or with `--through` the
//! newest patch of each intermediate minor, then the target): the first
//! control plane, the other control planes one at a time, the workers in
//! batches of `upgrade.maxUnavailable`, the nodes of a batch at once.
//!
//! Names on the wire (the `RolloutEvent` stream and the audit log):
//!
//! - operation: `upgrade <cluster> to <target>`; state key `upgrade`.
//! - phases: `preconditions`, `upgrade-first-control-plane`,
//!   `upgrade-control-planes`, `upgrade-workers`, `verify`.
//! - cluster steps: `cluster/preconditions`, `cluster/snapshot`,
//!   `cluster/verify`, `cluster/update-spec`; in the audit log also
//!   `cluster/start` (outcome `started`) and `cluster/finish` (`done`,
//!   `failed` or `refused`) around each run.
//! - node steps, each named `<step>@<hop version>` (e.g.
//!   `cp-1/kubeadm-upgrade-apply@v1.32.4`), in this order:
//!   `package-source`, `install-kubeadm`, then on the first control plane
//!   `kubeadm-upgrade-plan` and `kubeadm-upgrade-apply`, on every other
//!   node `kubeadm-upgrade-node`; then `drain`, `install-kubelet` (kubelet
//!   and kubectl), `restart-kubelet`, `node-ready` (Ready at the hop's
//!   kubelet version), `uncordon`; control planes end with `healthy` (their
//!   apiserver at the hop's version and their etcd member healthy).
//!   `--skip-drain` leaves out `drain` and `uncordon`.
//! - agent steps (kh-host's wire names): `package-source`,
//!   `package-install`, `kubeadm-upgrade-plan`, `kubeadm-upgrade-apply`,
//!   `kubeadm-upgrade-node`, `kubectl-drain`, `kubectl-uncordon`,
//!   `restart-kubelet`. A drain and an uncordon run on a control plane's
//!   agent: a control plane's on its own, a worker's on a healthy upgraded
//!   control plane, never on the worker itself.
//!
//! Every node step is persisted before and after it runs, so the same
//! command after a crash repeats no finished step (never a second `upgrade
//! apply`) and runs the one in flight again (each is idempotent on the
//! agent). A drain that a PodDisruptionBudget blocks stops the run at that
//! node, which stays cordoned; no new node starts. At the end every node
//! the run cordoned is uncordoned and the coordinator's held spec names the
//! target, so `khctl rollout` with the new spec has nothing to do.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kh::proto::{self, run_step_request::Step, UpgradeRequest};
use kh::spec::{ClusterSpec, KubeVersion, NodeRole, NodeSpec};
use kh::time::unix_ms;

use super::ops::{url, Failure, Ops, RERUN};
use super::phase::Phase;
use super::reporter::Reporter;
use super::state::{RolloutState, Status};
use super::Follow;
use crate::agents::explain;
use crate::error::CoordError;
use crate::{etcd, lease, Coordinator};

pub const KEY: &str = "upgrade";

/// Certificates must outlive the upgrade by this much.
pub const CERT_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// `--drain-timeout` by default.
pub const DEFAULT_DRAIN_TIMEOUT_SECONDS: u32 = 300;
/// How long a node may take to be Ready at the new kubelet version.
const READY_WAIT: Duration = Duration::from_secs(300);
/// How long an upgraded control plane may take to be healthy.
const HEALTH_WAIT: Duration = Duration::from_secs(180);
/// How long the whole cluster may take to be healthy at the end.
const VERIFY_WAIT: Duration = Duration::from_secs(300);
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a wait asks again: short, since each wait is on the upgrade's
/// critical path.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// Marks the hops in the preconditions' persisted message, so a resumed
/// upgrade runs the chain decided before its first change.
const CHAIN: &str = "chain: ";
/// Marks the nodes that were cordoned before the upgrade, in the same
/// message.
const CORDONED: &str = "cordoned before the upgrade: ";
/// The step a node skips because another node of its batch failed.
const STOPPED: &str = "stopped";

/// How many minors a kubelet may be older than the apiserver: three since
/// Kubernetes 1.28, two before.
pub fn kubelet_skew(apiserver_minor: u32) -> u32 {
    if apiserver_minor >= 28 {
        3
    } else {
        2
    }
}

/// `v1.32` of `v1.32.4`: the repository's name.
fn minor(v: &KubeVersion) -> String {
    format!("v{}.{}", v.major(), v.minor())
}

/// What the audit log and `khctl operation` call it.
fn operation(cluster: &str, target: &KubeVersion) -> String {
    format!("upgrade {cluster} to {target}")
}

/// The exact command that resumes this upgrade, flags included.
pub fn resume_command(req: &UpgradeRequest) -> String {
    let mut cmd = "khctl upgrade -f cluster.yaml".to_string();
    if req.through {
        cmd.push_str(" --through");
    }
    if req.drain_timeout_seconds != 0 && req.drain_timeout_seconds != DEFAULT_DRAIN_TIMEOUT_SECONDS
    {
        cmd.push_str(&format!(" --drain-timeout {}s", req.drain_timeout_seconds));
    }
    if req.skip_drain {
        cmd.push_str(" --skip-drain");
    }
    if req.no_snapshot {
        cmd.push_str(" --no-snapshot");
    }
    cmd
}

struct Plan {
    spec: ClusterSpec,
    target: KubeVersion,
    through: bool,
    drain_timeout: u32,
    skip_drain: bool,
    no_snapshot: bool,
    holder: String,
}

/// The nodes of `a` that `b` lacks or has otherwise, in words.
fn node_differences(held: &ClusterSpec, spec: &ClusterSpec) -> Vec<String> {
    let mut out = vec![];
    for n in &held.nodes {
        match spec.node(&n.name) {
            None => out.push(format!("{} is in the cluster but not in the spec", n.name)),
            Some(s) if s.role != n.role => out.push(format!(
                "{} is a {} in the cluster but a {} in the spec",
                n.name, n.role, s.role
            )),
            Some(s) if s.address != n.address => out.push(format!(
                "{} has address {} in the cluster but {} in the spec",
                n.name, n.address, s.address
            )),
            Some(_) => {}
        }
    }
    for n in &spec.nodes {
        if held.node(&n.name).is_none() {
            out.push(format!("{} is in the spec but not in the cluster", n.name));
        }
    }
    out
}

/// Validates the request and starts the upgrade (or its dry run) in the
/// background.
pub async fn start(coord: Arc<Coordinator>, req: UpgradeRequest) -> Result<Follow, CoordError> {
    let spec = kh::spec::parse(&req.spec_yaml)
        .map_err(|e| CoordError::InvalidArgument(format!("the cluster spec is invalid:\n{e}")))?;
    let target = spec.kubernetes_version.clone().ok_or_else(|| {
        CoordError::InvalidArgument(
            "spec.kubernetesVersion: missing; set the version to upgrade to, e.g. kubernetesVersion: v1.32.4".into(),
        )
    })?;
    let held = etcd::held_spec(&coord)?;
    if held.name != spec.name {
        return Err(CoordError::InvalidArgument(format!(
            "metadata.name is {}, but this coordinator holds cluster {}; upgrade with that cluster's spec",
            kh::echo(&spec.name),
            held.name
        )));
    }
    let differences = node_differences(&held, &spec);
    if !differences.is_empty() {
        return Err(CoordError::InvalidArgument(format!(
            "spec.nodes differs from the cluster: {}. An upgrade changes versions only: keep the nodes as the cluster has them, and add or remove nodes with `khctl rollout -f cluster.yaml` before or after",
            differences.join("; ")
        )));
    }
    if spec.control_planes().next().is_none() {
        return Err(CoordError::InvalidArgument(
            "spec.nodes: no control plane to upgrade".into(),
        ));
    }
    // Another operation that changed the cluster and stopped must be
    // finished first: upgrading under a half-done replacement or renewal
    // would restart components whose state is in flux.
    super::operation::refuse_if_pending(&coord, "upgrade", "upgrading").await?;

    let guard = coord.rollouts.current.lock().await;
    super::refuse_if_running(&guard).await?;
    let now = unix_ms(coord.clock.now());
    let resume = resume_command(&req);
    let state = RolloutState::resume_or_begin(
        &coord.db,
        KEY,
        &operation(&spec.name, &target),
        &spec.name,
        resume,
        now,
    )?;
    let plan = Plan {
        holder: format!("upgrade {}", spec.name),
        spec,
        target,
        through: req.through,
        drain_timeout: if req.drain_timeout_seconds == 0 {
            DEFAULT_DRAIN_TIMEOUT_SECONDS
        } else {
            req.drain_timeout_seconds
        },
        skip_drain: req.skip_drain,
        no_snapshot: req.no_snapshot,
    };
    let (rep, live) = Reporter::begin(&coord, guard, state, req.dry_run, now)?;
    let dry_run = req.dry_run;
    let name = operation(&plan.spec.name, &plan.target);
    let command = resume_command(&req);
    tokio::spawn(async move {
        let result = if dry_run {
            dry(&coord, &plan, &rep).await
        } else {
            audit_operation(&coord, &name, "start", "started", &format!("`{command}`"));
            let result = run(&coord, &plan, &rep).await;
            match &result {
                Ok(()) => audit_operation(
                    &coord,
                    &name,
                    "finish",
                    "done",
                    &format!("the cluster runs {}", plan.target),
                ),
                Err(f) => audit_operation(
                    &coord,
                    &name,
                    "finish",
                    if f.class == "preflight" {
                        "refused"
                    } else {
                        "failed"
                    },
                    f.message.lines().next().unwrap_or_default(),
                ),
            }
            result
        };
        if let Err(f) = &result {
            tracing::warn!(node = %f.node, step = %f.step, error = %f.message, "upgrade failed");
        }
        rep.finish(&result).await;
    });
    Ok(Follow {
        backlog: vec![],
        live: Some(live),
    })
}

/// The operation's own start and end in the audit log, beside its steps.
fn audit_operation(coord: &Coordinator, operation: &str, step: &str, outcome: &str, message: &str) {
    if let Err(e) = crate::audit::append(
        &coord.db,
        coord.clock.as_ref(),
        operation,
        "cluster",
        step,
        outcome,
        message,
    ) {
        tracing::error!(error = %e, operation, step, "could not write the audit log");
    }
}

// ---------------------------------------------------------------------------
// What the nodes say now

/// One node's versions as its agent and the cluster report them; `None`
/// where they could not be read.
#[derive(Debug, Clone)]
struct NodeNow {
    name: String,
    role: NodeRole,
    kubeadm: Option<KubeVersion>,
    kubelet: Option<KubeVersion>,
    kubectl: Option<KubeVersion>,
    /// The version the running kubelet reports (`KubeNodes`).
    running: Option<KubeVersion>,
    /// The kube-apiserver's version (control planes).
    apiserver: Option<KubeVersion>,
    manager: String,
    source_minor: String,
    cordoned: bool,
    /// What could not be read, in words.
    problems: Vec<String>,
}

impl NodeNow {
    fn components(&self) -> Vec<&Option<KubeVersion>> {
        let mut c = vec![&self.kubeadm, &self.kubelet, &self.kubectl, &self.running];
        if self.role == NodeRole::ControlPlane {
            c.push(&self.apiserver);
        }
        c
    }

    /// Whether anything on this node is below `v` (or unknown).
    fn below(&self, v: &KubeVersion) -> bool {
        self.components()
            .iter()
            .any(|c| c.as_ref().is_none_or(|c| c < v))
    }

    /// The newest kubelet this node has, installed or running.
    fn newest_kubelet(&self) -> Option<&KubeVersion> {
        [&self.kubelet, &self.running].into_iter().flatten().max()
    }

    /// The oldest kubelet this node has, installed or running.
    fn oldest_kubelet(&self) -> Option<&KubeVersion> {
        [&self.kubelet, &self.running].into_iter().flatten().min()
    }

    fn describe(&self) -> String {
        let v = |o: &Option<KubeVersion>| o.as_ref().map_or("?".to_string(), |v| v.to_string());
        let mut s = format!("{} ({}): ", self.name, self.role);
        if self.role == NodeRole::ControlPlane {
            s.push_str(&format!("kube-apiserver {}, ", v(&self.apiserver)));
        }
        s.push_str(&format!(
            "kubeadm {}, kubelet {} (running {}), kubectl {}",
            v(&self.kubeadm),
            v(&self.kubelet),
            v(&self.running),
            v(&self.kubectl)
        ));
        if !self.manager.is_empty() {
            s.push_str(&format!(
                "; {} source {}",
                self.manager,
                if self.source_minor.is_empty() {
                    "none"
                } else {
                    &self.source_minor
                }
            ));
        }
        if self.cordoned {
            s.push_str("; cordoned");
        }
        s
    }
}

struct Survey {
    nodes: Vec<NodeNow>,
}

impl Survey {
    fn node(&self, name: &str) -> Option<&NodeNow> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The cluster's version: the lowest kube-apiserver version, when every
    /// control plane's is known.
    fn cluster(&self) -> Option<KubeVersion> {
        let cps: Vec<&NodeNow> = self
            .nodes
            .iter()
            .filter(|n| n.role == NodeRole::ControlPlane)
            .collect();
        if cps.iter().any(|n| n.apiserver.is_none()) {
            return None;
        }
        cps.iter().filter_map(|n| n.apiserver.clone()).min()
    }

    fn problems(&self) -> Vec<String> {
        self.nodes
            .iter()
            .flat_map(|n| n.problems.iter().map(move |p| format!("{}: {p}", n.name)))
            .collect()
    }
}

fn version(text: &str) -> Option<KubeVersion> {
    let t = text.trim();
    (!t.is_empty()).then(|| t.parse().ok()).flatten()
}

/// `PackageVersions` on `node` for `minor`'s repository ("" for the host's
/// own source).
async fn package_versions(
    coord: &Coordinator,
    node: &str,
    minor: &str,
) -> Result<proto::PackageVersionsResponse, String> {
    let rec = Ops { coord }.record(node).map_err(|f| f.message)?;
    coord
        .agents
        .package_versions(
            &rec,
            proto::PackageVersionsRequest {
                minor: minor.to_string(),
            },
            QUERY_TIMEOUT,
        )
        .await
        .map_err(|e| explain(node, &e))
}

/// The version of `cp`'s own kube-apiserver, when it is ready.
async fn apiserver_version(coord: &Coordinator, cp: &NodeSpec) -> Result<String, String> {
    let rec = Ops { coord }.record(&cp.name).map_err(|f| f.message)?;
    let r = coord
        .agents
        .apiserver_ready(
            &rec,
            proto::ApiserverReadyRequest {
                url: url(cp.address, 6443),
            },
            QUERY_TIMEOUT,
        )
        .await
        .map_err(|e| explain(&cp.name, &e))?;
    if !r.ready {
        return Err(format!("its kube-apiserver is not ready: {}", r.detail));
    }
    if r.version.is_empty() {
        return Err("its kube-apiserver did not say its version (/version)".into());
    }
    Ok(r.version)
}

/// The cluster's Nodes, asked through the first control plane that
/// answers.
async fn kube_nodes(
    coord: &Coordinator,
    spec: &ClusterSpec,
) -> Result<Vec<proto::KubeNode>, String> {
    let ops = Ops { coord };
    let mut last = String::from("no control plane");
    for cp in spec.control_planes() {
        match ops.kube_nodes(&cp.name).await {
            Ok(n) => return Ok(n),
            Err(e) => last = format!("{}: {e}", cp.name),
        }
    }
    Err(last)
}

async fn survey(coord: &Coordinator, spec: &ClusterSpec) -> Survey {
    let targets: Vec<&NodeSpec> = spec
        .nodes
        .iter()
        .filter(|n| n.role != NodeRole::LoadBalancer)
        .collect();
    let packages =
        futures::future::join_all(targets.iter().map(|n| package_versions(coord, &n.name, "")))
            .await;
    let apiservers = futures::future::join_all(targets.iter().map(|n| async move {
        if n.role == NodeRole::ControlPlane {
            Some(apiserver_version(coord, n).await)
        } else {
            None
        }
    }))
    .await;
    let kube = kube_nodes(coord, spec).await;
    let mut nodes = vec![];
    for ((n, pkg), api) in targets.iter().zip(packages).zip(apiservers) {
        let mut now = NodeNow {
            name: n.name.clone(),
            role: n.role,
            kubeadm: None,
            kubelet: None,
            kubectl: None,
            running: None,
            apiserver: None,
            manager: String::new(),
            source_minor: String::new(),
            cordoned: false,
            problems: vec![],
        };
        match pkg {
            Ok(p) => {
                now.manager = p.manager.clone();
                now.source_minor = p.source_minor.clone();
                for name in ["kubeadm", "kubelet", "kubectl"] {
                    let v = p
                        .installed
                        .iter()
                        .find(|i| i.name == name)
                        .and_then(|i| version(&i.version));
                    // kubectl is not needed on a node to upgrade it (the
                    // upgrade installs it there); kubeadm and kubelet are.
                    if v.is_none() && name != "kubectl" {
                        now.problems.push(format!(
                            "{name} is not installed (as its package manager says)"
                        ));
                    }
                    match name {
                        "kubeadm" => now.kubeadm = v,
                        "kubelet" => now.kubelet = v,
                        _ => now.kubectl = v,
                    }
                }
            }
            Err(e) => now
                .problems
                .push(format!("its package versions could not be read: {e}")),
        }
        match api {
            Some(Ok(v)) => match version(&v) {
                Some(v) => now.apiserver = Some(v),
                None => now.problems.push(format!(
                    "its kube-apiserver reports version {}",
                    kh::echo(&v)
                )),
            },
            Some(Err(e)) => now.problems.push(e),
            None => {}
        }
        match &kube {
            Ok(list) => match list.iter().find(|k| k.name == n.name) {
                Some(k) => {
                    now.running = version(&k.kubelet_version);
                    now.cordoned = k.unschedulable;
                    if now.running.is_none() {
                        now.problems
                            .push("its Node does not report a kubelet version".into());
                    }
                }
                None => now.problems.push("it has no Node in the cluster".into()),
            },
            Err(e) => now
                .problems
                .push(format!("the cluster's Nodes could not be listed: {e}")),
        }
        nodes.push(now);
    }
    Survey { nodes }
}

// ---------------------------------------------------------------------------
// The checks

#[derive(Debug, Clone)]
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
    fix: String,
}

impl Check {
    fn pass(name: &'static str, detail: impl Into<String>) -> Self {
        Check {
            name,
            ok: true,
            detail: detail.into(),
            fix: String::new(),
        }
    }

    fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            name,
            ok: false,
            detail: detail.into(),
            fix: fix.into(),
        }
    }

    fn line(&self) -> String {
        if self.ok {
            format!("check {}: ok: {}", self.name, self.detail)
        } else {
            format!(
                "check {}: FAILED: {}; fix: {}",
                self.name, self.detail, self.fix
            )
        }
    }
}

/// The newest release of `minor` that `node`'s repository offers.
async fn newest_in(
    coord: &Coordinator,
    node: &str,
    minor_name: &str,
) -> Result<KubeVersion, String> {
    let r = package_versions(coord, node, minor_name).await?;
    if !r.error.is_empty() {
        return Err(format!(
            "{node}'s {} repository for {minor_name} could not be read: {}",
            r.manager, r.error
        ));
    }
    r.available
        .iter()
        .filter_map(|v| version(v))
        .filter(|v| minor(v) == minor_name && v.pre().is_none())
        .max()
        .ok_or_else(|| {
            format!(
                "{node}'s {} repository for {minor_name} offers no {minor_name} release",
                r.manager
            )
        })
}

/// The order of versions from `cluster` to `target`, or the check that
/// refuses it.
async fn chain(
    coord: &Coordinator,
    plan: &Plan,
    cluster: &KubeVersion,
) -> Result<Vec<KubeVersion>, Check> {
    let target = &plan.target;
    if target < cluster {
        return Err(Check::fail(
            "version",
            format!(
                "spec.kubernetesVersion {target} is older than the cluster's {cluster} (its lowest kube-apiserver): a downgrade, which kubeadm does not do"
            ),
            format!("set kubernetesVersion to {cluster} or newer"),
        ));
    }
    if target.minor() <= cluster.minor() + 1 {
        return Ok(vec![target.clone()]);
    }
    let first = plan
        .spec
        .control_planes()
        .next()
        .map(|n| n.name.clone())
        .unwrap_or_default();
    if !plan.through {
        let next = format!("v1.{}", cluster.minor() + 1);
        let named = match newest_in(coord, &first, &next).await {
            Ok(v) => format!("{v} first (the newest {next} release {first}'s repository offers)"),
            Err(_) => format!("{next} first (its newest patch release)"),
        };
        return Err(Check::fail(
            "version",
            format!(
                "spec.kubernetesVersion {target} skips a minor version: the cluster runs {cluster}, and kubeadm upgrades one minor at a time"
            ),
            format!(
                "upgrade to {named}, or pass --through to run the chain one minor at a time"
            ),
        ));
    }
    let mut hops = vec![];
    for m in cluster.minor() + 1..target.minor() {
        let name = format!("v1.{m}");
        match newest_in(coord, &first, &name).await {
            Ok(v) => hops.push(v),
            Err(e) => {
                return Err(Check::fail(
                    "version",
                    format!("--through needs a {name} release for the step between {cluster} and {target}: {e}"),
                    format!("make {name}'s repository reachable from {first}, or upgrade to a {name} release yourself first"),
                ))
            }
        }
    }
    hops.push(target.clone());
    Ok(hops)
}

fn chain_text(cluster: &KubeVersion, hops: &[KubeVersion]) -> String {
    std::iter::once(cluster.to_string())
        .chain(hops.iter().map(|h| h.to_string()))
        .collect::<Vec<_>>()
        .join(" -> ")
}

/// The hops recorded by the preconditions of an earlier run.
fn parse_chain(message: &str) -> Option<Vec<KubeVersion>> {
    let at = message.find(CHAIN)? + CHAIN.len();
    let text = message[at..].split(';').next()?;
    let mut all: Vec<KubeVersion> = text
        .split(" -> ")
        .map(|v| v.trim().parse().ok())
        .collect::<Option<Vec<_>>>()?;
    if all.len() < 2 {
        return None;
    }
    all.remove(0);
    Some(all)
}

/// The nodes cordoned before the upgrade, as the preconditions recorded
/// them.
fn parse_cordoned(message: &str) -> Vec<String> {
    let Some(at) = message.find(CORDONED) else {
        return vec![];
    };
    let text = message[at + CORDONED.len()..]
        .split(';')
        .next()
        .unwrap_or("");
    text.split(", ")
        .map(str::trim)
        .filter(|n| !n.is_empty() && *n != "none")
        .map(str::to_string)
        .collect()
}

/// Every check with its finding, and the hops when the versions allow
/// them.
async fn checks(
    coord: &Coordinator,
    plan: &Plan,
    survey: &Survey,
) -> (Vec<Check>, Option<(KubeVersion, Vec<KubeVersion>)>) {
    let mut out = vec![];
    let problems = survey.problems();
    let cluster = survey.cluster();
    if problems.is_empty() {
        out.push(Check::pass(
            "versions-read",
            format!("every node's versions read ({} nodes)", survey.nodes.len()),
        ));
    } else {
        out.push(Check::fail(
            "versions-read",
            problems.join("; "),
            "bring those agents and apiservers back (`khctl health` says what is down), then run the upgrade again",
        ));
    }
    let mut hops = None;
    match &cluster {
        None => out.push(Check::fail(
            "version",
            "not checked: the cluster's version (its lowest kube-apiserver) is unknown",
            "see versions-read",
        )),
        Some(cluster) => match chain(coord, plan, cluster).await {
            Ok(h) => {
                out.push(Check::pass(
                    "version",
                    format!(
                        "the cluster runs {cluster}; {}",
                        if h.len() > 1 {
                            format!("--through: {}", chain_text(cluster, &h))
                        } else if &plan.target == cluster {
                            format!("already {cluster}")
                        } else {
                            chain_text(cluster, &h)
                        }
                    ),
                ));
                hops = Some((cluster.clone(), h));
            }
            Err(c) => out.push(c),
        },
    }

    // Kubelets: never newer than the apiservers, never older than the skew
    // allows against the first hop's apiservers.
    let first_hop = hops.as_ref().and_then(|(_, h)| h.first().cloned());
    let mut newer = vec![];
    let mut older = vec![];
    for n in &survey.nodes {
        if let Some(k) = n.newest_kubelet().filter(|k| **k > plan.target) {
            newer.push(format!("{} runs kubelet {k}", n.name));
        }
        if let (Some(k), Some(h)) = (n.oldest_kubelet(), &first_hop) {
            if k.minor() + kubelet_skew(h.minor()) < h.minor() {
                older.push(format!(
                    "{} runs kubelet {k}, more than {} minors older than {h}",
                    n.name,
                    kubelet_skew(h.minor())
                ));
            }
        }
    }
    if !newer.is_empty() {
        out.push(Check::fail(
            "kubelet-skew",
            format!(
                "{}: newer than the target {}, so a kubelet would end up newer than the apiservers",
                newer.join(", "),
                plan.target
            ),
            format!(
                "set kubernetesVersion to at least the newest kubelet, or downgrade those kubelets to {} or older first",
                plan.target
            ),
        ));
    } else if !older.is_empty() {
        out.push(Check::fail(
            "kubelet-skew",
            format!("{}: the supported kubelet skew would be exceeded", older.join(", ")),
            "upgrade those nodes' kubelets to within the supported skew of the cluster first (`kubeadm upgrade node` and the kubelet package on each)",
        ));
    } else {
        out.push(Check::pass(
            "kubelet-skew",
            "no kubelet would be newer than an apiserver or older than the supported skew",
        ));
    }

    // The cluster's health, as `khctl health` judges it (other operations'
    // bookkeeping aside: a pending one is refused when the upgrade starts).
    match etcd::health(coord).await {
        Ok(h) => {
            let bad: Vec<&proto::HealthCheck> = h
                .checks
                .iter()
                .filter(|c| !c.ok && !c.name.ends_with("-finished"))
                .collect();
            if bad.is_empty() {
                out.push(Check::pass("cluster-healthy", "`khctl health` passes"));
            } else {
                out.push(Check::fail(
                    "cluster-healthy",
                    bad.iter()
                        .map(|c| format!("{}: {}", c.name, c.detail))
                        .collect::<Vec<_>>()
                        .join("; "),
                    format!(
                        "{}; then run the upgrade again",
                        bad.iter()
                            .map(|c| c.fix.as_str())
                            .filter(|f| !f.is_empty())
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                ));
            }
        }
        Err(e) => out.push(Check::fail(
            "cluster-healthy",
            format!("the cluster's health could not be checked: {e}"),
            "run `khctl health`",
        )),
    }

    match lease::current(&coord.db, coord.clock.as_ref()) {
        Ok(Some(l)) if l.holder != plan.holder => {
            out.push(Check::fail("lease", lease::describe(&l), lease::Busy::HINT))
        }
        Ok(_) => out.push(Check::pass("lease", "the control-plane lease is free")),
        Err(e) => out.push(Check::fail(
            "lease",
            e.to_string(),
            "check the coordinator's store",
        )),
    }

    match crate::certs::check(coord).await {
        Ok(r) => {
            // A node whose certificates could not be read is not a
            // certificate about to expire: its fix is the node, not a
            // renewal.
            let (unread, due): (Vec<_>, Vec<_>) =
                crate::certs::attention(&r.nodes, r.now_unix, CERT_WINDOW)
                    .into_iter()
                    .filter(|a| a.cert != crate::certs::KUBELET_CLIENT)
                    .partition(|a| a.cert.is_empty());
            let unread: Vec<String> = unread
                .iter()
                .map(|a| format!("{}: {}", a.node, a.detail))
                .collect();
            let due: Vec<String> = due
                .iter()
                .map(|a| format!("{} {}: {}", a.node, a.cert, a.detail))
                .collect();
            if !due.is_empty() {
                out.push(Check::fail(
                    "certificates",
                    format!(
                        "within the upgrade window ({}): {}",
                        humantime::format_duration(CERT_WINDOW),
                        due.iter()
                            .chain(&unread)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                    "renew them first: `khctl certs renew --all`",
                ));
            } else if !unread.is_empty() {
                out.push(Check::fail(
                    "certificates",
                    format!("not checked on every node: {}", unread.join("; ")),
                    "bring those agents back (`khctl health` says what is down), then run the upgrade again",
                ));
            } else {
                out.push(Check::pass(
                    "certificates",
                    format!(
                        "no kubeadm certificate expires within {}",
                        humantime::format_duration(CERT_WINDOW)
                    ),
                ));
            }
        }
        Err(e) => out.push(Check::fail(
            "certificates",
            format!("the certificates could not be checked: {e}"),
            "run `khctl certs check`",
        )),
    }

    // Each hop's version in the repository of every node that needs it:
    // asked of the package manager, never guessed.
    if let Some((_, hs)) = &hops {
        let mut missing = vec![];
        for h in hs {
            let asks = survey
                .nodes
                .iter()
                .filter(|n| n.below(h))
                .map(|n| async move { (n, package_versions(coord, &n.name, &minor(h)).await) });
            for (n, r) in futures::future::join_all(asks).await {
                match r {
                    Ok(r) if !r.error.is_empty() => missing.push(format!(
                        "{}: its {} repository for {} could not be read: {}",
                        n.name,
                        r.manager,
                        minor(h),
                        r.error
                    )),
                    Ok(r) if !r.available.iter().any(|v| version(v).as_ref() == Some(h)) => missing
                        .push(format!(
                            "{}: its {} repository for {} offers {}, not {h}",
                            n.name,
                            r.manager,
                            minor(h),
                            if r.available.is_empty() {
                                "nothing".to_string()
                            } else {
                                r.available.join(", ")
                            }
                        )),
                    Ok(_) => {}
                    Err(e) => missing.push(format!("{}: {e}", n.name)),
                }
            }
        }
        if missing.is_empty() {
            out.push(Check::pass(
                "repository",
                format!(
                    "{} offered by every node's repository",
                    hs.iter()
                        .map(|h| h.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        } else {
            out.push(Check::fail(
                "repository",
                missing.join("; "),
                "choose a version those repositories offer (set kubernetesVersion to it), or fix the node's package source (its mirror or proxy) and run the upgrade again",
            ));
        }
    }
    (out, hops)
}

// ---------------------------------------------------------------------------
// The plan

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    First,
    ControlPlane,
    Worker,
}

/// A node's steps for one hop, in order.
fn node_steps(kind: Kind, skip_drain: bool) -> Vec<&'static str> {
    let mut s = vec!["package-source", "install-kubeadm"];
    if kind == Kind::First {
        s.extend(["kubeadm-upgrade-plan", "kubeadm-upgrade-apply"]);
    } else {
        s.push("kubeadm-upgrade-node");
    }
    if !skip_drain {
        s.push("drain");
    }
    s.extend(["install-kubelet", "restart-kubelet", "node-ready"]);
    if !skip_drain {
        s.push("uncordon");
    }
    if kind != Kind::Worker {
        s.push("healthy");
    }
    s
}

fn step_key(node: &str, step: &str, hop: &KubeVersion) -> String {
    format!("{node}/{step}@{hop}")
}

/// Which nodes a hop upgrades, in its order: the first control plane, the
/// other control planes, the workers in batches.
struct HopPlan {
    version: KubeVersion,
    first: Option<String>,
    control_planes: Vec<String>,
    batches: Vec<Vec<String>>,
}

/// Whether `node` needs `hop`: something on it is below the hop's version,
/// or an earlier run started the node's hop and did not end it.
fn needs(
    st: &RolloutState,
    survey: &Survey,
    node: &NodeSpec,
    hop: &KubeVersion,
    last_step: &str,
) -> bool {
    let below = survey.node(&node.name).is_none_or(|n| n.below(hop));
    let prefix = format!("{}/", node.name);
    let suffix = format!("@{hop}");
    let started = st
        .steps
        .keys()
        .any(|k| k.starts_with(&prefix) && k.ends_with(&suffix));
    let ended = st.is_done(&step_key(&node.name, last_step, hop));
    below || (started && !ended)
}

fn hop_plans(
    plan: &Plan,
    st: &RolloutState,
    survey: &Survey,
    hops: &[KubeVersion],
) -> Vec<HopPlan> {
    let batch = plan
        .spec
        .upgrade
        .max_unavailable
        .batch(plan.spec.workers().count());
    let last = |k: Kind| *node_steps(k, plan.skip_drain).last().unwrap_or(&"");
    let mut out = vec![];
    // A node a hop leaves below the next one needs that one too.
    for h in hops {
        let mut cps = plan.spec.control_planes();
        let first = cps
            .next()
            .filter(|n| needs(st, survey, n, h, last(Kind::First)))
            .map(|n| n.name.clone());
        let control_planes = cps
            .filter(|n| needs(st, survey, n, h, last(Kind::ControlPlane)))
            .map(|n| n.name.clone())
            .collect();
        let workers: Vec<String> = plan
            .spec
            .workers()
            .filter(|n| needs(st, survey, n, h, last(Kind::Worker)))
            .map(|n| n.name.clone())
            .collect();
        out.push(HopPlan {
            version: h.clone(),
            first,
            control_planes,
            batches: workers.chunks(batch).map(<[String]>::to_vec).collect(),
        });
    }
    out
}

fn nothing_to_do(hops: &[HopPlan]) -> bool {
    hops.iter()
        .all(|h| h.first.is_none() && h.control_planes.is_empty() && h.batches.is_empty())
}

fn planned(
    st: &RolloutState,
    node: &str,
    step: &str,
    hop: &KubeVersion,
    detail: String,
) -> proto::PlannedStep {
    let key = step_key(node, step, hop);
    proto::PlannedStep {
        node: node.into(),
        step: format!("{step}@{hop}"),
        state: if st.is_done(&key) { "done" } else { "pending" }.into(),
        detail,
    }
}

fn step_detail(plan: &Plan, step: &str, node: &str, hop: &KubeVersion, via: &str) -> String {
    let m = minor(hop);
    match step {
        "package-source" => format!("point the Kubernetes package source at the {m} repository"),
        "install-kubeadm" => format!("install kubeadm {hop}, held"),
        "kubeadm-upgrade-plan" => format!("kubeadm upgrade plan {hop}"),
        "kubeadm-upgrade-apply" => format!("kubeadm upgrade apply {hop} --yes"),
        "kubeadm-upgrade-node" => "kubeadm upgrade node".into(),
        "drain" => format!(
            "kubectl drain {node} --ignore-daemonsets --delete-emptydir-data --timeout={}s (on {via})",
            plan.drain_timeout
        ),
        "install-kubelet" => format!("install kubelet and kubectl {hop}, held"),
        "restart-kubelet" => "systemctl daemon-reload; systemctl restart kubelet".into(),
        "node-ready" => format!("wait until {node} is Ready with kubelet {hop}"),
        "uncordon" => format!("kubectl uncordon {node} (on {via})"),
        "healthy" => format!("its kube-apiserver at {hop} and its etcd member healthy"),
        _ => String::new(),
    }
}

fn emit_plan_event(
    plan: &Plan,
    st: &RolloutState,
    survey: &Survey,
    checks: &[Check],
    cluster: Option<&KubeVersion>,
    hops: &[HopPlan],
) -> proto::RolloutEvent {
    let cluster_step = |step: &str, detail: &str| proto::PlannedStep {
        node: "cluster".into(),
        step: step.into(),
        state: if st.is_done(&format!("cluster/{step}")) {
            "done"
        } else {
            "pending"
        }
        .into(),
        detail: detail.into(),
    };
    let mut pre = vec![cluster_step("preconditions", "the checks below")];
    if !plan.no_snapshot {
        pre.push(cluster_step(
            "snapshot",
            "an etcd snapshot stored on the coordinator before the first change",
        ));
    }
    let mut phases = vec![proto::PlannedPhase {
        name: Phase::Preconditions.to_string(),
        steps: pre,
    }];
    let first_cp = plan
        .spec
        .control_planes()
        .next()
        .map(|n| n.name.clone())
        .unwrap_or_default();
    for h in hops {
        let steps_of = |node: &str, kind: Kind, via: &str| -> Vec<proto::PlannedStep> {
            node_steps(kind, plan.skip_drain)
                .into_iter()
                .map(|s| {
                    planned(
                        st,
                        node,
                        s,
                        &h.version,
                        step_detail(plan, s, node, &h.version, via),
                    )
                })
                .collect()
        };
        if let Some(f) = &h.first {
            phases.push(proto::PlannedPhase {
                name: Phase::UpgradeFirst.to_string(),
                steps: steps_of(f, Kind::First, f),
            });
        }
        if !h.control_planes.is_empty() {
            phases.push(proto::PlannedPhase {
                name: Phase::UpgradeControlPlanes.to_string(),
                steps: h
                    .control_planes
                    .iter()
                    .flat_map(|n| steps_of(n, Kind::ControlPlane, n))
                    .collect(),
            });
        }
        if !h.batches.is_empty() {
            phases.push(proto::PlannedPhase {
                name: Phase::UpgradeWorkers.to_string(),
                steps: h
                    .batches
                    .iter()
                    .flatten()
                    .flat_map(|n| steps_of(n, Kind::Worker, "a healthy upgraded control plane"))
                    .collect(),
            });
        }
    }
    phases.push(proto::PlannedPhase {
        name: Phase::Verify.to_string(),
        steps: vec![
            cluster_step("verify", "`khctl health`'s checks pass"),
            cluster_step(
                "update-spec",
                &format!("the held spec's kubernetesVersion becomes {}", plan.target),
            ),
        ],
    });

    let mut notes = vec![format!(
        "cluster {}: runs {} (its lowest kube-apiserver); target {}",
        plan.spec.name,
        // A refused version check decides no chain, but the survey still
        // knows what the cluster runs.
        cluster
            .cloned()
            .or_else(|| survey.cluster())
            .map_or("an unknown version".to_string(), |c| c.to_string()),
        plan.target
    )];
    notes.extend(survey.nodes.iter().map(|n| format!("now {}", n.describe())));
    let batch = plan
        .spec
        .upgrade
        .max_unavailable
        .batch(plan.spec.workers().count());
    for h in hops {
        let mut order = vec![];
        if let Some(f) = &h.first {
            order.push(format!("{f} first (kubeadm upgrade apply)"));
        } else {
            order.push(format!(
                "{first_cp} already at {} (nothing to do there)",
                h.version
            ));
        }
        if !h.control_planes.is_empty() {
            order.push(format!(
                "then {} one at a time (kubeadm upgrade node), each healthy before the next",
                h.control_planes.join(", ")
            ));
        }
        if !h.batches.is_empty() {
            order.push(format!(
                "then the workers in batches of {batch} (upgrade.maxUnavailable {}): {}",
                plan.spec.upgrade.max_unavailable,
                h.batches
                    .iter()
                    .map(|b| format!("[{}]", b.join(", ")))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
        notes.push(format!("to {}: {}", h.version, order.join("; ")));
    }
    if plan.skip_drain {
        notes.push("--skip-drain: no node is drained or uncordoned".into());
    } else {
        notes.push(format!(
            "each node drained before its kubelet is upgraded (timeout {}s) and uncordoned after",
            plan.drain_timeout
        ));
    }
    notes.push(if plan.no_snapshot {
        "no etcd snapshot first (--no-snapshot)".into()
    } else {
        "an etcd snapshot first, stored on the coordinator (`khctl etcd snapshot list`)".into()
    });
    notes.extend(checks.iter().map(Check::line));
    proto::RolloutEvent {
        kind: proto::rollout_event::Kind::Plan as i32,
        plan: Some(proto::RolloutPlan {
            cluster: plan.spec.name.clone(),
            phases,
            notes,
            rendered: vec![],
        }),
        ..Default::default()
    }
}

/// The refusal the first failing check makes.
fn refusal(checks: &[Check]) -> Option<Failure> {
    let failed: Vec<&Check> = checks.iter().filter(|c| !c.ok).collect();
    failed.first()?;
    let message = failed
        .iter()
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect::<Vec<_>>()
        .join("\n");
    Some(Failure {
        class: "preflight",
        node: "cluster".into(),
        step: "preconditions".into(),
        message: format!("the upgrade is refused; nothing was changed.\n{message}"),
        hint: failed
            .iter()
            .map(|c| format!("{}: {}", c.name, c.fix))
            .collect::<Vec<_>>()
            .join("; "),
        report: None,
    })
}

// ---------------------------------------------------------------------------
// The run

/// The dry run: the plan with its checks, nothing changed and nothing
/// persisted. A failing check ends it as the run would be refused.
async fn dry(coord: &Arc<Coordinator>, plan: &Plan, rep: &Reporter) -> Result<(), Failure> {
    let survey = survey(coord, &plan.spec).await;
    let (checks, hops) = checks(coord, plan, &survey).await;
    let st = rep.state.lock().await.clone();
    let hop_plans = hops
        .as_ref()
        .map(|(_, h)| hop_plans(plan, &st, &survey, h))
        .unwrap_or_default();
    rep.emit(emit_plan_event(
        plan,
        &st,
        &survey,
        &checks,
        hops.as_ref().map(|(c, _)| c),
        &hop_plans,
    ))
    .await;
    // A cluster already at the version has nothing for the checks to
    // guard: nothing will change.
    let idle = hops.is_some() && nothing_to_do(&hop_plans);
    if let Some(f) = refusal(&checks).filter(|_| !idle) {
        return Err(f);
    }
    if idle {
        let m = format!(
            "nothing to do: every node already runs {}; the upgrade would change nothing",
            plan.target
        );
        rep.note(Phase::Preconditions, "cluster", &m).await;
        rep.set_done_message(m);
    } else {
        rep.set_done_message(format!(
            "dry run: the upgrade to {} would run as planned; nothing was changed",
            plan.target
        ));
    }
    Ok(())
}

async fn run(coord: &Arc<Coordinator>, plan: &Plan, rep: &Reporter) -> Result<(), Failure> {
    let survey = survey(coord, &plan.spec).await;
    // A resumed upgrade keeps the chain decided before its first change:
    // the cluster it sees now is half upgraded.
    let decided = {
        let st = rep.state.lock().await;
        st.steps
            .get("cluster/preconditions")
            .filter(|s| s.status == Status::Done && st.changed())
            .map(|s| s.message.clone())
    };
    let (hops, keep_cordoned) = match decided.as_deref().and_then(|m| Some((m, parse_chain(m)?))) {
        Some((m, hops)) => {
            let st = rep.state.lock().await.clone();
            let hp = hop_plans(plan, &st, &survey, &hops);
            rep.emit(emit_plan_event(
                plan,
                &st,
                &survey,
                &[],
                survey.cluster().as_ref(),
                &hp,
            ))
            .await;
            rep.note(
                Phase::Preconditions,
                "cluster",
                format!("resuming; decided before the first change: {m}"),
            )
            .await;
            (hops, parse_cordoned(m))
        }
        None => {
            let cordoned: Vec<String> = survey
                .nodes
                .iter()
                .filter(|n| n.cordoned)
                .map(|n| n.name.clone())
                .collect();
            let hops = rep
                .tracked(Phase::Preconditions, "cluster", "preconditions", async {
                    let (checks, hops) = checks(coord, plan, &survey).await;
                    let st = rep.state.lock().await.clone();
                    let hp = hops
                        .as_ref()
                        .map(|(_, h)| hop_plans(plan, &st, &survey, h))
                        .unwrap_or_default();
                    rep.emit(emit_plan_event(
                        plan,
                        &st,
                        &survey,
                        &checks,
                        hops.as_ref().map(|(c, _)| c),
                        &hp,
                    ))
                    .await;
                    let idle = hops.is_some() && nothing_to_do(&hp);
                    if let Some(f) = refusal(&checks).filter(|_| !idle) {
                        return Err(f);
                    }
                    let (cluster, hops) = hops.ok_or_else(|| {
                        Failure::at("cluster", "preconditions", "no upgrade chain", "")
                    })?;
                    let m = format!(
                        "{}; {CHAIN}{}; target {}; {CORDONED}{}",
                        if checks.iter().all(|c| c.ok) {
                            "every check passed"
                        } else {
                            "nothing to change, so no check has anything to guard"
                        },
                        chain_text(&cluster, &hops),
                        plan.target,
                        if cordoned.is_empty() {
                            "none".to_string()
                        } else {
                            cordoned.join(", ")
                        }
                    );
                    Ok((hops, m))
                })
                .await?;
            (hops, cordoned)
        }
    };
    let st = rep.state.lock().await.clone();
    let hop_plans = hop_plans(plan, &st, &survey, &hops);
    if nothing_to_do(&hop_plans) {
        let changed = update_held_spec(coord, &plan.target)?;
        let m = format!(
            "nothing to do: every node already runs {}{}",
            plan.target,
            if changed {
                "; the held spec now names it"
            } else {
                ""
            }
        );
        rep.note(Phase::Preconditions, "cluster", &m).await;
        rep.set_done_message(m);
        return Ok(());
    }
    if !keep_cordoned.is_empty() && !plan.skip_drain {
        rep.note(
            Phase::Preconditions,
            "cluster",
            format!(
                "{} cordoned before the upgrade: drained for it, and left cordoned after",
                keep_cordoned.join(", ")
            ),
        )
        .await;
    }
    let purpose = format!("upgrading cluster {} to {}", plan.spec.name, plan.target);
    lease::hold(
        coord,
        &plan.holder,
        &purpose,
        Box::pin(changes(coord, plan, rep, hop_plans, keep_cordoned)),
    )
    .await
}

/// Everything that changes the cluster, under the lease.
async fn changes(
    coord: &Arc<Coordinator>,
    plan: &Plan,
    rep: &Reporter,
    hops: Vec<HopPlan>,
    keep_cordoned: Vec<String>,
) -> Result<(), Failure> {
    snapshot_first(coord, plan, rep).await?;
    let runner = Runner {
        coord,
        plan,
        rep,
        stop: AtomicBool::new(false),
        keep_cordoned,
        nodes: SharedNodes::default(),
    };
    for h in &hops {
        runner.hop(h).await?;
    }
    rep.phase(Phase::Verify).await;
    rep.tracked(Phase::Verify, "cluster", "verify", async {
        etcd::wait_healthy(coord, VERIFY_WAIT).await.map_err(|mut f| {
            f.message = format!(
                "the cluster is not healthy after the upgrade: {}",
                f.message
            );
            f.hint = format!(
                "run `khctl health` for the fixes, then run {RERUN} again; finished steps are not repeated"
            );
            f
        })?;
        let nodes = kube_nodes(coord, &plan.spec).await.map_err(|e| {
            Failure::at("cluster", "verify", format!("the Nodes could not be listed: {e}"), format!("run {RERUN} again"))
        })?;
        let behind: Vec<String> = plan
            .spec
            .nodes
            .iter()
            .filter(|n| n.role != NodeRole::LoadBalancer)
            .filter_map(|n| {
                let k = nodes.iter().find(|k| k.name == n.name)?;
                (version(&k.kubelet_version).as_ref() != Some(&plan.target))
                    .then(|| format!("{} runs kubelet {}", n.name, k.kubelet_version))
            })
            .collect();
        if !behind.is_empty() {
            return Err(Failure::at(
                "cluster",
                "verify",
                format!("not every kubelet runs {}: {}", plan.target, behind.join(", ")),
                format!("run {RERUN} again; finished steps are not repeated"),
            ));
        }
        Ok((
            (),
            format!(
                "`khctl health` passes and every kubelet runs {}",
                plan.target
            ),
        ))
    })
    .await?;
    if !rep.is_done("cluster/update-spec").await {
        rep.tracked(Phase::Verify, "cluster", "update-spec", async {
            let changed = update_held_spec(coord, &plan.target)?;
            Ok((
                (),
                if changed {
                    format!("the held spec's kubernetesVersion is now {}", plan.target)
                } else {
                    format!("the held spec already names {}", plan.target)
                },
            ))
        })
        .await?;
    }
    rep.set_done_message(format!(
        "every node runs {}, every node it cordoned is uncordoned, and the held spec names {}",
        plan.target, plan.target
    ));
    Ok(())
}

async fn snapshot_first(coord: &Coordinator, plan: &Plan, rep: &Reporter) -> Result<(), Failure> {
    if plan.no_snapshot || rep.is_done("cluster/snapshot").await {
        return Ok(());
    }
    let what = format!("upgrading cluster {} to {}", plan.spec.name, plan.target);
    rep.tracked(Phase::Preconditions, "cluster", "snapshot", async {
        let m = crate::snapshots::take_before(coord, "upgrade", &what)
            .await
            .map_err(|message| Failure {
                class: "preflight",
                node: "cluster".into(),
                step: "snapshot".into(),
                message,
                hint: format!(
                    "run {RERUN} again once a snapshot can be taken, or add --no-snapshot"
                ),
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

/// The held spec (the last rollout's) names `target` as its version.
/// Returns whether it changed.
fn update_held_spec(coord: &Coordinator, target: &KubeVersion) -> Result<bool, Failure> {
    let fail = |m: String| Failure::at("cluster", "update-spec", m, "check the coordinator's log");
    let mut st = RolloutState::load(&coord.db)?
        .filter(|s| !s.spec_yaml.is_empty())
        .ok_or_else(|| fail("the coordinator holds no cluster spec".into()))?;
    let mut doc: serde_yaml::Value =
        serde_yaml::from_str(&st.spec_yaml).map_err(|e| fail(e.to_string()))?;
    let spec = doc
        .get_mut("spec")
        .and_then(|s| s.as_mapping_mut())
        .ok_or_else(|| fail("the held spec has no spec mapping".into()))?;
    let key = serde_yaml::Value::String("kubernetesVersion".into());
    let now = serde_yaml::Value::String(target.to_string());
    if spec.get(&key) == Some(&now) {
        return Ok(false);
    }
    spec.insert(key, now);
    let text = serde_yaml::to_string(&doc).map_err(|e| fail(e.to_string()))?;
    kh::spec::parse(&text).map_err(|e| fail(format!("the updated spec does not validate: {e}")))?;
    st.spec_yaml = text;
    st.save(&coord.db, unix_ms(coord.clock.now()))?;
    Ok(true)
}

struct Runner<'a> {
    coord: &'a Arc<Coordinator>,
    plan: &'a Plan,
    rep: &'a Reporter,
    /// Set when a node fails: no node starts another step.
    stop: AtomicBool,
    /// Nodes cordoned before the upgrade: the upgrade does not uncordon
    /// what it did not cordon.
    keep_cordoned: Vec<String>,
    /// The Node list the `node-ready` waits share.
    nodes: SharedNodes,
}

/// One control plane's answer to `KubeNodes`, numbered in the order the
/// lists were asked for.
struct NodesAnswer {
    seq: u64,
    via: String,
    nodes: Result<Vec<proto::KubeNode>, String>,
}

/// The Node list shared by the nodes of a batch that wait for their Node at
/// the same time. Each wait used to run its own `kubectl get nodes` on the
/// control plane every poll, so a batch of ten cost ten kubectl processes
/// on one host per interval; now a wait takes the newest list asked for
/// after its previous one (its first: after the wait began), and asks for a
/// new one only when there is none. What a wait sees is never older than
/// what its own poll would have seen, so it decides exactly as before.
#[derive(Default)]
pub(super) struct SharedNodes {
    /// How many lists were asked for: the number the next one gets.
    asked: AtomicU64,
    /// The newest answer. Held while a list is being asked for, so the
    /// waits that come meanwhile take that list instead of asking again.
    last: tokio::sync::Mutex<Option<NodesAnswer>>,
}

impl SharedNodes {
    /// The number a wait that begins now passes to [`Self::list`] first:
    /// no list asked for before this moment is good for it.
    pub(super) fn mark(&self) -> u64 {
        self.asked.load(Ordering::SeqCst)
    }

    /// The Nodes as `via`'s kubectl lists them, from a list numbered `from`
    /// or later: the newest one when it qualifies, else a new one. Returns
    /// the list's number; the next poll passes that plus one.
    pub(super) async fn list(
        &self,
        ops: &Ops<'_>,
        via: &str,
        from: u64,
    ) -> (u64, Result<Vec<proto::KubeNode>, String>) {
        let mut last = self.last.lock().await;
        if let Some(a) = last.as_ref().filter(|a| a.seq >= from && a.via == via) {
            return (a.seq, a.nodes.clone());
        }
        let seq = self.asked.fetch_add(1, Ordering::SeqCst);
        let nodes = ops.kube_nodes(via).await;
        *last = Some(NodesAnswer {
            seq,
            via: via.to_string(),
            nodes: nodes.clone(),
        });
        (seq, nodes)
    }
}

impl Runner<'_> {
    async fn hop(&self, h: &HopPlan) -> Result<(), Failure> {
        let hop = &h.version;
        let spec = &self.plan.spec;
        if let Some(first) = &h.first {
            self.rep.phase(Phase::UpgradeFirst).await;
            self.rep
                .note(
                    Phase::UpgradeFirst,
                    first,
                    format!("upgrading {first} to {hop}: kubeadm upgrade apply"),
                )
                .await;
            let node = spec.node(first).cloned().ok_or_else(|| unknown(first))?;
            self.node(Phase::UpgradeFirst, &node, hop, Kind::First, first)
                .await?;
        }
        if !h.control_planes.is_empty() {
            self.rep.phase(Phase::UpgradeControlPlanes).await;
            for cp in &h.control_planes {
                let node = spec.node(cp).cloned().ok_or_else(|| unknown(cp))?;
                self.node(
                    Phase::UpgradeControlPlanes,
                    &node,
                    hop,
                    Kind::ControlPlane,
                    cp,
                )
                .await?;
            }
        }
        if !h.batches.is_empty() {
            self.rep.phase(Phase::UpgradeWorkers).await;
            let via = self.worker_via(hop).await?;
            self.rep
                .note(
                    Phase::UpgradeWorkers,
                    &via,
                    format!("workers are drained and uncordoned through {via}'s kubectl"),
                )
                .await;
            for (i, batch) in h.batches.iter().enumerate() {
                self.rep
                    .note(
                        Phase::UpgradeWorkers,
                        "cluster",
                        format!(
                            "batch {} of {}: {}",
                            i + 1,
                            h.batches.len(),
                            batch.join(", ")
                        ),
                    )
                    .await;
                let runs = batch.iter().map(|w| {
                    let via = via.clone();
                    async move {
                        let node = spec.node(w).cloned().ok_or_else(|| unknown(w))?;
                        let r = self
                            .node(Phase::UpgradeWorkers, &node, hop, Kind::Worker, &via)
                            .await;
                        if r.is_err() {
                            self.stop.store(true, Ordering::SeqCst);
                        }
                        r
                    }
                });
                let results = futures::future::join_all(runs).await;
                let mut failures: Vec<Failure> =
                    results.into_iter().filter_map(Result::err).collect();
                // The failure that stopped the batch, not the nodes it stopped.
                failures.sort_by_key(|f| f.step == STOPPED);
                if let Some(f) = failures.into_iter().next() {
                    return Err(f);
                }
            }
        }
        Ok(())
    }

    /// The control plane whose kubectl drains and uncordons the workers: the
    /// first one whose apiserver answers at the hop's version.
    async fn worker_via(&self, hop: &KubeVersion) -> Result<String, Failure> {
        let mut seen = vec![];
        for cp in self.plan.spec.control_planes() {
            match apiserver_version(self.coord, cp).await {
                Ok(v) if version(&v).as_ref() == Some(hop) => return Ok(cp.name.clone()),
                Ok(v) => seen.push(format!("{}: kube-apiserver {v}", cp.name)),
                Err(e) => seen.push(format!("{}: {e}", cp.name)),
            }
        }
        Err(Failure::at(
            "cluster",
            "drain",
            format!(
                "no control plane is healthy at {hop} to drain the workers through: {}",
                seen.join("; ")
            ),
            format!("bring a control plane back (`khctl health`), then run {RERUN} again; finished steps are not repeated"),
        ))
    }

    /// One tracked node step, unless an earlier run finished it.
    async fn step<F>(
        &self,
        phase: Phase,
        node: &str,
        step: &str,
        hop: &KubeVersion,
        f: F,
    ) -> Result<(), Failure>
    where
        F: std::future::Future<Output = Result<String, Failure>>,
    {
        let key = format!("{step}@{hop}");
        if self.rep.is_done(&format!("{node}/{key}")).await {
            return Ok(());
        }
        if self.stop.load(Ordering::SeqCst) {
            return Err(Failure::at(
                node,
                STOPPED,
                "another node of its batch failed",
                "",
            ));
        }
        let named = key.clone();
        self.rep
            .tracked(phase, node, &key, async move {
                f.await.map(|m| ((), m)).map_err(|mut e| {
                    // No node starts another step from now on, while this
                    // failure is still being recorded.
                    self.stop.store(true, Ordering::SeqCst);
                    // The node step's name, not the agent step's.
                    e.step = named;
                    e
                })
            })
            .await
    }

    /// An agent step on `via` for `node`; its failure is `node`'s.
    async fn agent(
        &self,
        node: &str,
        via: &str,
        name: &str,
        step: Step,
    ) -> Result<String, Failure> {
        // A drain may take as long as the operator allows, and the agent
        // needs a moment beyond kubectl's own timeout to report.
        let timeout = match &step {
            Step::KubectlDrain(d) => super::ops::STEP_TIMEOUT
                .max(Duration::from_secs(u64::from(d.timeout_seconds) + 120)),
            _ => super::ops::STEP_TIMEOUT,
        };
        let r = Ops { coord: self.coord }
            .step_within(via, name, step, false, timeout)
            .await
            .map_err(|mut f| {
                f.node = node.to_string();
                f
            })?;
        let mut m = if r.message.is_empty() {
            name.to_string()
        } else {
            r.message.replace('\n', "; ")
        };
        if r.outcome == proto::Outcome::Unchanged as i32 {
            m = format!("already so: {m}");
        }
        if via != node {
            m.push_str(&format!(" (on {via})"));
        }
        Ok(m)
    }

    async fn node(
        &self,
        phase: Phase,
        n: &NodeSpec,
        hop: &KubeVersion,
        kind: Kind,
        via: &str,
    ) -> Result<(), Failure> {
        let node = n.name.as_str();
        let plan = self.plan;
        self.step(
            phase,
            node,
            "package-source",
            hop,
            self.agent(
                node,
                node,
                "package-source",
                Step::PackageSource(proto::PackageSource { minor: minor(hop) }),
            ),
        )
        .await?;
        self.step(
            phase,
            node,
            "install-kubeadm",
            hop,
            self.agent(
                node,
                node,
                "package-install",
                Step::PackageInstall(proto::PackageInstall {
                    packages: vec!["kubeadm".into()],
                    version: hop.to_string(),
                }),
            ),
        )
        .await?;
        if kind == Kind::First {
            self.step(phase, node, "kubeadm-upgrade-plan", hop, async {
                let r = Ops { coord: self.coord }
                    .step(
                        node,
                        "kubeadm-upgrade-plan",
                        Step::KubeadmUpgradePlan(proto::KubeadmUpgradePlan {
                            version: hop.to_string(),
                        }),
                        false,
                    )
                    .await?;
                let table: Vec<String> = r.notes.iter().map(|l| l.replace('\t', "  ")).collect();
                if !table.is_empty() {
                    self.rep
                        .note(
                            phase,
                            node,
                            format!("kubeadm upgrade plan {hop}:\n{}", table.join("\n")),
                        )
                        .await;
                }
                Ok(format!(
                    "kubeadm upgrade plan {hop}: {} components listed",
                    table.len()
                ))
            })
            .await?;
            self.step(
                phase,
                node,
                "kubeadm-upgrade-apply",
                hop,
                self.agent(
                    node,
                    node,
                    "kubeadm-upgrade-apply",
                    Step::KubeadmUpgradeApply(proto::KubeadmUpgradeApply {
                        version: hop.to_string(),
                    }),
                ),
            )
            .await?;
        } else {
            self.step(
                phase,
                node,
                "kubeadm-upgrade-node",
                hop,
                self.agent(
                    node,
                    node,
                    "kubeadm-upgrade-node",
                    Step::KubeadmUpgradeNode(proto::KubeadmUpgradeNode {
                        version: hop.to_string(),
                    }),
                ),
            )
            .await?;
        }
        // A control plane drains itself with its own admin.conf; a worker
        // is drained from a control plane, never from itself.
        let kubectl_via = if kind == Kind::Worker { via } else { node };
        if !plan.skip_drain {
            self.step(phase, node, "drain", hop, async {
                self.agent(
                    node,
                    kubectl_via,
                    "kubectl-drain",
                    Step::KubectlDrain(proto::KubectlDrain {
                        node: node.to_string(),
                        timeout_seconds: plan.drain_timeout,
                    }),
                )
                .await
                .map_err(|f| drain_failure(node, plan.drain_timeout, f))
            })
            .await?;
        }
        self.step(
            phase,
            node,
            "install-kubelet",
            hop,
            self.agent(
                node,
                node,
                "package-install",
                Step::PackageInstall(proto::PackageInstall {
                    packages: vec!["kubelet".into(), "kubectl".into()],
                    version: hop.to_string(),
                }),
            ),
        )
        .await?;
        self.step(
            phase,
            node,
            "restart-kubelet",
            hop,
            self.agent(
                node,
                node,
                "restart-kubelet",
                Step::RestartKubelet(proto::RestartKubelet {}),
            ),
        )
        .await?;
        self.step(
            phase,
            node,
            "node-ready",
            hop,
            self.ready(node, kubectl_via, hop),
        )
        .await?;
        if !plan.skip_drain {
            let keep = self.keep_cordoned.iter().any(|k| k == node);
            self.step(phase, node, "uncordon", hop, async {
                if keep {
                    return Ok(format!(
                        "left cordoned: {node} was cordoned before the upgrade"
                    ));
                }
                self.agent(
                    node,
                    kubectl_via,
                    "kubectl-uncordon",
                    Step::KubectlUncordon(proto::KubectlUncordon {
                        node: node.to_string(),
                    }),
                )
                .await
            })
            .await?;
        }
        if kind != Kind::Worker {
            self.step(phase, node, "healthy", hop, self.healthy(n, hop))
                .await?;
        }
        Ok(())
    }

    /// Waits until `node` is Ready with kubelet `hop`, asking `via`.
    async fn ready(&self, node: &str, via: &str, hop: &KubeVersion) -> Result<String, Failure> {
        let ops = Ops { coord: self.coord };
        // The other nodes of the batch wait at the same time: they share
        // the lists (see `SharedNodes`).
        let from = AtomicU64::new(self.nodes.mark());
        wait_for(READY_WAIT, || async {
            let (seq, nodes) = self
                .nodes
                .list(&ops, via, from.load(Ordering::SeqCst))
                .await;
            from.store(seq + 1, Ordering::SeqCst);
            let nodes = nodes?;
            let k = nodes
                .iter()
                .find(|k| k.name == node)
                .ok_or_else(|| format!("{via}'s kubectl lists no Node {node}"))?;
            match (k.ready, version(&k.kubelet_version)) {
                (true, Some(v)) if &v == hop => Ok(()),
                (ready, _) => Err(format!(
                    "{node} is {} with kubelet {}",
                    if ready { "Ready" } else { "NotReady" },
                    if k.kubelet_version.is_empty() { "?" } else { &k.kubelet_version }
                )),
            }
        })
        .await
        .map_err(|e| {
            Failure::at(
                node,
                "node-ready",
                format!("{node} did not become Ready with kubelet {hop} within {}s: {e}", READY_WAIT.as_secs()),
                format!("check the kubelet on {node} (`journalctl -u kubelet`), then run {RERUN} again; finished steps are not repeated"),
            )
        })?;
        Ok(format!("Ready with kubelet {hop}"))
    }

    /// Waits until a control plane's apiserver serves `hop` and its etcd
    /// member is healthy.
    async fn healthy(&self, cp: &NodeSpec, hop: &KubeVersion) -> Result<String, Failure> {
        let coord = self.coord;
        let spec = &self.plan.spec;
        wait_for(HEALTH_WAIT, || async {
            let v = apiserver_version(coord, cp).await?;
            if version(&v).as_ref() != Some(hop) {
                return Err(format!("its kube-apiserver serves {v}, not {hop}"));
            }
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
        })
        .await
        .map_err(|e| {
            Failure::at(
                &cp.name,
                "healthy",
                format!("{} is not healthy within {}s after its upgrade: {e}", cp.name, HEALTH_WAIT.as_secs()),
                format!("the next nodes were not touched; check {}'s kube-apiserver and etcd (`khctl health`), then run {RERUN} again", cp.name),
            )
        })?;
        Ok(format!(
            "kube-apiserver at {hop}{}",
            if etcd::is_external(spec) {
                ""
            } else {
                " and etcd member healthy"
            }
        ))
    }
}

fn unknown(node: &str) -> Failure {
    Failure::at(node, "plan", format!("{node} is not in the spec"), "")
}

/// A blocked drain says which pods, that the node stays cordoned, and how
/// to go on.
fn drain_failure(node: &str, timeout: u32, mut f: Failure) -> Failure {
    if f.kind() != proto::FailureKind::DrainBlocked {
        return f;
    }
    let pods = f
        .report
        .as_ref()
        .map(|r| r.notes.join(", "))
        .unwrap_or_default();
    f.message = format!(
        "the drain of {node} is blocked: a PodDisruptionBudget keeps {} from being evicted within {timeout}s. {node} stays cordoned; nothing further was touched",
        if pods.is_empty() { "its pods".to_string() } else { pods }
    );
    f.hint = format!(
        "relax or remove that PodDisruptionBudget (`kubectl get pdb -A`), or give the upgrade a longer --drain-timeout, then run {RERUN} again; finished steps are not repeated"
    );
    f
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
            Err(_) => tokio::time::sleep(POLL_EVERY).await,
        }
    }
}

/// `upgrade-finished` for `khctl health`: an upgrade that changed the
/// cluster and stopped leaves nodes on different versions, perhaps one
/// cordoned; it must be resumed with its command.
pub async fn health_check(coord: &Coordinator) -> Result<proto::HealthCheck, CoordError> {
    super::operation::unfinished_check(
        coord,
        KEY,
        "upgrade-finished",
        "upgrade",
        "nodes may run different Kubernetes versions, and one may be left cordoned",
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resume_command_repeats_every_flag() {
        let req = UpgradeRequest {
            through: true,
            drain_timeout_seconds: 600,
            skip_drain: true,
            no_snapshot: true,
            ..Default::default()
        };
        assert_eq!(
            resume_command(&req),
            "khctl upgrade -f cluster.yaml --through --drain-timeout 600s --skip-drain --no-snapshot"
        );
        assert_eq!(
            resume_command(&UpgradeRequest {
                drain_timeout_seconds: 300,
                ..Default::default()
            }),
            "khctl upgrade -f cluster.yaml"
        );
    }

    #[test]
    fn a_chain_survives_its_message() {
        let v = |s: &str| s.parse::<KubeVersion>().unwrap();
        let m = format!(
            "every check passed; {CHAIN}{}; target v1.32.4",
            chain_text(&v("v1.30.2"), &[v("v1.31.9"), v("v1.32.4")])
        );
        assert_eq!(parse_chain(&m), Some(vec![v("v1.31.9"), v("v1.32.4")]));
        assert_eq!(parse_chain("gate: healthy"), None);
    }

    #[test]
    fn kubelet_skew_is_three_minors_since_1_28() {
        assert_eq!(kubelet_skew(27), 2);
        assert_eq!(kubelet_skew(28), 3);
        assert_eq!(kubelet_skew(32), 3);
    }

    #[test]
    fn every_node_kind_has_its_steps_in_order() {
        assert_eq!(
            node_steps(Kind::First, false),
            [
                "package-source",
                "install-kubeadm",
                "kubeadm-upgrade-plan",
                "kubeadm-upgrade-apply",
                "drain",
                "install-kubelet",
                "restart-kubelet",
                "node-ready",
                "uncordon",
                "healthy"
            ]
        );
        assert_eq!(
            node_steps(Kind::Worker, true),
            [
                "package-source",
                "install-kubeadm",
                "kubeadm-upgrade-node",
                "install-kubelet",
                "restart-kubelet",
                "node-ready"
            ]
        );
    }
}
