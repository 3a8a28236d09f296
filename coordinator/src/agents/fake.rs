//! A fake of every agent of a cluster, for in-process tests of the
//! coordinator's decisions (resume points, refreshes, refusals) without
//! processes, sockets or TLS.
//!
//! It keeps a small model of the cluster: what kubeadm left on each node
//! (the `NodeStatus` answer), the etcd members, and which agents and etcd
//! members are down. Steps act on the model as kubeadm would (an init or a
//! control-plane join adds a voting member, a reset removes the node's own),
//! every step is recorded in order, and a test scripts failures: a step's
//! Failed report, or an agent that does not answer.
//!
//! For upgrades it also keeps each node's Kubernetes packages (installed
//! versions, the minor its package source names), a repository index per
//! minor (the same on every node unless a test gives one node its own),
//! each control plane's apiserver version, the version kubeadm recorded for
//! the cluster, cordoned nodes, and PodDisruptionBudgets that block a
//! node's drain. The upgrade steps act on that model as the real tools do:
//! `kubeadm upgrade apply` refuses a skipped minor and a version newer than
//! the installed kubeadm, a package install refuses a version the source's
//! repository does not offer, a blocked drain leaves the node cordoned.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use kh::proto::{self, run_step_request::Step};
use kh::spec::{ClusterSpec, NodeRole};

use super::{AgentApi, AgentCall, AgentError, AgentErrorKind, SnapshotChunks, SnapshotPieces};
use crate::registry::NodeRecord;

/// One recorded step: on which node, which step (`Step::name`), and
/// whether this entry is its start or its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepCall {
    pub node: String,
    pub step: String,
    pub started: bool,
}

#[derive(Default)]
struct Model {
    addresses: HashMap<String, IpAddr>,
    roles: HashMap<String, NodeRole>,
    status: HashMap<String, proto::NodeStatusResponse>,
    members: Vec<proto::EtcdMember>,
    next_member: u64,
    /// Agents that do not answer.
    down: HashSet<String>,
    /// Nodes whose etcd member runs but is not healthy.
    etcd_down: HashSet<String>,
    /// Scripted Failed reports, by node and step name, used up in order.
    failures: HashMap<(String, String), VecDeque<(proto::FailureKind, String)>>,
    steps: Vec<StepCall>,
    status_asked: Vec<String>,
    cluster_ca_pem: String,
    /// What `cluster_certs` answers, by node, as a test scripted it.
    certs: HashMap<String, Vec<proto::ClusterCert>>,
    /// Nodes asked for an etcd snapshot, in order.
    snapshots_taken: Vec<String>,
    /// Snapshot refusals scripted per node (the agent's message).
    snapshot_failures: HashMap<String, String>,
    /// Nodes whose snapshot stream ends after the data, without the status.
    snapshot_cut: HashSet<String>,
    /// Each node's Kubernetes packages and source.
    packages: HashMap<String, Packages>,
    /// The version each running kubelet reports (restart-kubelet sets it
    /// from the installed package).
    kubelet_running: HashMap<String, String>,
    /// Each control plane's kube-apiserver version.
    apiserver_version: HashMap<String, String>,
    /// The version in kubeadm's ClusterConfiguration (`upgrade apply`).
    cluster_version: String,
    /// Versions each minor's repository offers, newest first.
    repos: HashMap<String, Vec<String>>,
    /// A node's own repository for a minor, when it differs.
    node_repos: HashMap<(String, String), Vec<String>>,
    /// Nodes with spec.unschedulable.
    cordoned: HashSet<String>,
    /// Pods a PodDisruptionBudget keeps on a node: its drain is blocked.
    pdb_blocked: HashMap<String, Vec<String>>,
    /// Every drain and uncordon: (the agent it ran on, the node it named).
    kubectl_calls: Vec<(String, String, String)>,
    /// Nodes asked for their package versions, with the minor asked.
    package_asks: Vec<(String, String)>,
    /// Every `KubeNodes` list: the agent asked, and how many entries the
    /// step log had then (to place it among the steps).
    node_lists: Vec<(String, usize)>,
    /// Nodes whose Node reports NotReady from its kubelet restart until
    /// every one of them has restarted, and the nodes that restarted.
    ready_together: HashSet<String>,
    restarted: HashSet<String>,
}

/// An upgrade step's outcome and notes, or its failure kind, error and
/// notes.
type UpgradeStepResult =
    Result<(proto::Outcome, Vec<String>), (proto::FailureKind, String, Vec<String>)>;

/// A node's Kubernetes packages as its package manager sees them.
#[derive(Debug, Clone, Default)]
struct Packages {
    kubeadm: String,
    kubelet: String,
    kubectl: String,
    /// The minor the host's Kubernetes source names, e.g. v1.31.
    source_minor: String,
}

/// `v1.31` of `v1.31.4`.
fn minor_of(version: &str) -> String {
    let mut parts = version.splitn(3, '.');
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => format!("{a}.{b}"),
        _ => version.to_string(),
    }
}

fn minor_number(version: &str) -> u32 {
    version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

pub struct FakeAgents {
    model: Mutex<Model>,
}

fn url(addr: IpAddr, port: u16) -> String {
    crate::rollout::ops::url(addr, port)
}

impl FakeAgents {
    /// Agents for every node of `spec`, none of which kubeadm has touched.
    pub fn new(spec: &ClusterSpec) -> Self {
        let ca = kh::pki::Ca::generate(std::time::SystemTime::now()).expect("a test CA");
        let version = spec
            .kubernetes_version
            .as_ref()
            .map(|v| v.to_string())
            .unwrap_or_else(|| "v1.32.0".into());
        let model = Model {
            cluster_version: version.clone(),
            packages: spec
                .nodes
                .iter()
                .filter(|n| n.role != NodeRole::LoadBalancer)
                .map(|n| {
                    (
                        n.name.clone(),
                        Packages {
                            kubeadm: version.clone(),
                            kubelet: version.clone(),
                            kubectl: version.clone(),
                            source_minor: minor_of(&version),
                        },
                    )
                })
                .collect(),
            repos: [(minor_of(&version), vec![version.clone()])].into(),
            addresses: spec
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.address))
                .collect(),
            roles: spec
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.role))
                .collect(),
            next_member: 0x10,
            cluster_ca_pem: ca.cert_pem().to_string(),
            ..Default::default()
        };
        FakeAgents {
            model: Mutex::new(model),
        }
    }

    fn model(&self) -> std::sync::MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A node kubeadm has already set up: init (`first`) or a join, as a
    /// control plane (with its etcd member) or a worker.
    pub fn joined(&self, node: &str) {
        let mut m = self.model();
        m.set_up(node);
    }

    /// Scripts the next run of `step` on `node` to fail with `error`.
    pub fn fail_step(&self, node: &str, step: &str, kind: proto::FailureKind, error: &str) {
        self.model()
            .failures
            .entry((node.to_string(), step.to_string()))
            .or_default()
            .push_back((kind, error.to_string()));
    }

    /// Scripts what `cluster_certs` answers for `node` (nothing until then).
    pub fn set_certs(&self, node: &str, certs: Vec<proto::ClusterCert>) {
        self.model().certs.insert(node.to_string(), certs);
    }

    /// The agent on `node` stops answering.
    pub fn agent_down(&self, node: &str) {
        self.model().down.insert(node.to_string());
    }

    /// The etcd member on `node` stops being healthy.
    pub fn etcd_down(&self, node: &str) {
        self.model().etcd_down.insert(node.to_string());
    }

    /// Every step start and end, in order.
    pub fn step_log(&self) -> Vec<StepCall> {
        self.model().steps.clone()
    }

    /// The steps run, as (node, step), in the order they started.
    pub fn steps(&self) -> Vec<(String, String)> {
        self.step_log()
            .into_iter()
            .filter(|c| c.started)
            .map(|c| (c.node, c.step))
            .collect()
    }

    /// The nodes asked for their status, in order.
    pub fn status_asked(&self) -> Vec<String> {
        self.model().status_asked.clone()
    }

    pub fn member_names(&self) -> Vec<String> {
        self.model()
            .members
            .iter()
            .map(|m| m.name.clone())
            .collect()
    }

    /// Every node (packages, kubelet, apiserver, the cluster) runs
    /// `version`, from the repository of its minor.
    pub fn run_version(&self, version: &str) {
        let mut m = self.model();
        let nodes: Vec<String> = m.packages.keys().cloned().collect();
        for n in nodes {
            m.set_node_version(&n, version);
        }
        m.cluster_version = version.to_string();
    }

    /// One node runs `version` (packages, kubelet, and its apiserver if it
    /// is a control plane), as after an upgrade of that node alone.
    pub fn node_runs(&self, node: &str, version: &str) {
        self.model().set_node_version(node, version);
    }

    /// What `minor`'s repository offers (newest first), on every node.
    pub fn offer(&self, minor: &str, versions: &[&str]) {
        self.model().repos.insert(
            minor.to_string(),
            versions.iter().map(|v| v.to_string()).collect(),
        );
    }

    /// What `minor`'s repository offers on `node` alone.
    pub fn offer_on(&self, node: &str, minor: &str, versions: &[&str]) {
        self.model().node_repos.insert(
            (node.to_string(), minor.to_string()),
            versions.iter().map(|v| v.to_string()).collect(),
        );
    }

    /// A PodDisruptionBudget keeps `pods` (ns/name) on `node`: its drain
    /// fails as blocked until [`Self::remove_pdb`].
    pub fn block_drain(&self, node: &str, pods: &[&str]) {
        self.model().pdb_blocked.insert(
            node.to_string(),
            pods.iter().map(|p| p.to_string()).collect(),
        );
    }

    pub fn remove_pdb(&self, node: &str) {
        self.model().pdb_blocked.remove(node);
    }

    /// The nodes cordoned now, sorted.
    pub fn cordoned(&self) -> Vec<String> {
        let mut v: Vec<String> = self.model().cordoned.iter().cloned().collect();
        v.sort();
        v
    }

    /// Cordons `node`, as an operator would.
    pub fn cordon(&self, node: &str) {
        self.model().cordoned.insert(node.to_string());
    }

    /// Every `KubeNodes` list: (the agent asked, how many entries
    /// `step_log` had then).
    pub fn node_lists(&self) -> Vec<(String, usize)> {
        self.model().node_lists.clone()
    }

    /// Each of `nodes` reports NotReady from its kubelet restart until the
    /// last of them has restarted theirs, so their node-ready waits overlap.
    pub fn ready_together(&self, nodes: &[&str]) {
        self.model().ready_together = nodes.iter().map(|n| n.to_string()).collect();
    }

    /// Every kubectl drain and uncordon: (the agent that ran it, "drain" or
    /// "uncordon", the node it named).
    pub fn kubectl_calls(&self) -> Vec<(String, String, String)> {
        self.model().kubectl_calls.clone()
    }

    /// The nodes asked for package versions, with the minor asked.
    pub fn package_asks(&self) -> Vec<(String, String)> {
        self.model().package_asks.clone()
    }

    /// (kubeadm, kubelet, kubectl) installed on `node`, the kubelet it
    /// runs, and its apiserver's version ("" for a worker).
    pub fn versions(&self, node: &str) -> (String, String, String, String, String) {
        let m = self.model();
        let p = m.packages.get(node).cloned().unwrap_or_default();
        (
            p.kubeadm,
            p.kubelet,
            p.kubectl,
            m.kubelet_running.get(node).cloned().unwrap_or_default(),
            m.apiserver_version.get(node).cloned().unwrap_or_default(),
        )
    }

    /// The version kubeadm recorded for the cluster.
    pub fn cluster_version(&self) -> String {
        self.model().cluster_version.clone()
    }

    /// The nodes asked for an etcd snapshot, in order.
    pub fn snapshots_taken(&self) -> Vec<String> {
        self.model().snapshots_taken.clone()
    }

    /// The next snapshots on `node` end after the data, without a status.
    pub fn cut_snapshot_stream(&self, node: &str) {
        self.model().snapshot_cut.insert(node.to_string());
    }

    /// The next snapshots on `node` fail with `message`.
    pub fn fail_snapshot(&self, node: &str, message: &str) {
        self.model()
            .snapshot_failures
            .insert(node.to_string(), message.to_string());
    }

    fn answer<T: Send + 'static>(
        &self,
        node: &NodeRecord,
        f: impl FnOnce(&mut Model, &str) -> T,
    ) -> AgentCall<'_, T> {
        let name = node.name.to_string();
        let result = {
            let mut m = self.model();
            if m.down.contains(&name) {
                Err(AgentError::new(
                    AgentErrorKind::Unreachable,
                    "transport error: connection refused",
                ))
            } else {
                Ok(f(&mut m, &name))
            }
        };
        Box::pin(async move { result })
    }
}

impl Model {
    fn set_node_version(&mut self, node: &str, version: &str) {
        let p = self.packages.entry(node.to_string()).or_default();
        p.kubeadm = version.to_string();
        p.kubelet = version.to_string();
        p.kubectl = version.to_string();
        p.source_minor = minor_of(version);
        self.kubelet_running
            .insert(node.to_string(), version.to_string());
        if self.roles.get(node) == Some(&NodeRole::ControlPlane) {
            self.apiserver_version
                .insert(node.to_string(), version.to_string());
        }
        self.repos
            .entry(minor_of(version))
            .or_insert_with(|| vec![version.to_string()]);
    }

    fn repo(&self, node: &str, minor: &str) -> Vec<String> {
        self.node_repos
            .get(&(node.to_string(), minor.to_string()))
            .or_else(|| self.repos.get(minor))
            .cloned()
            .unwrap_or_default()
    }

    /// The upgrade steps, as apt/dnf, kubeadm, kubectl and systemctl do them.
    fn upgrade_step(&mut self, node: &str, step: &Step) -> UpgradeStepResult {
        use proto::Outcome::{Changed, Unchanged};
        let other = |e: String| Err((proto::FailureKind::Other, e, vec![]));
        match step {
            Step::PackageSource(s) => {
                let p = self.packages.entry(node.to_string()).or_default();
                if p.source_minor == s.minor {
                    return Ok((Unchanged, vec![]));
                }
                p.source_minor = s.minor.clone();
                Ok((Changed, vec![]))
            }
            Step::PackageInstall(i) => {
                let source = self
                    .packages
                    .get(node)
                    .map(|p| p.source_minor.clone())
                    .unwrap_or_default();
                if !self.repo(node, &source).contains(&i.version) {
                    let bare = i.version.trim_start_matches('v');
                    return other(format!(
                        "E: Version '{bare}-*' for '{}' was not found",
                        i.packages.first().cloned().unwrap_or_default()
                    ));
                }
                let p = self.packages.entry(node.to_string()).or_default();
                let mut changed = false;
                for name in &i.packages {
                    let slot = match name.as_str() {
                        "kubeadm" => &mut p.kubeadm,
                        "kubelet" => &mut p.kubelet,
                        "kubectl" => &mut p.kubectl,
                        other_name => {
                            return other(format!("E: Unable to locate package {other_name}"))
                        }
                    };
                    if *slot != i.version {
                        *slot = i.version.clone();
                        changed = true;
                    }
                }
                Ok((if changed { Changed } else { Unchanged }, vec![]))
            }
            Step::KubeadmUpgradePlan(p) => Ok((
                Unchanged,
                [
                    "kube-apiserver",
                    "kube-controller-manager",
                    "kube-scheduler",
                    "kube-proxy",
                    "etcd",
                ]
                .iter()
                .map(|c| {
                    format!(
                        "{c}\t{node}\t{}\t{}",
                        self.apiserver_version
                            .get(node)
                            .cloned()
                            .unwrap_or_default(),
                        p.version
                    )
                })
                .collect(),
            )),
            Step::KubeadmUpgradeApply(a) => {
                if self.apiserver_version.get(node) == Some(&a.version) {
                    return Ok((Unchanged, vec![]));
                }
                let kubeadm = self
                    .packages
                    .get(node)
                    .map(|p| p.kubeadm.clone())
                    .unwrap_or_default();
                if kubeadm != a.version {
                    return other(format!(
                        "[upgrade/version] FATAL: the --version argument is invalid due to these errors:\n\n\t- Specified version to upgrade to \"{}\" is higher than the kubeadm version \"{kubeadm}\". Upgrade kubeadm first using the tool you used to install kubeadm",
                        a.version
                    ));
                }
                if minor_number(&a.version) > minor_number(&self.cluster_version) + 1 {
                    return other(format!(
                        "[upgrade/version] FATAL: the --version argument is invalid due to these errors:\n\n\t- Specified version to upgrade to \"{}\" is too high; kubeadm can upgrade only 1 minor version at a time",
                        a.version
                    ));
                }
                self.apiserver_version
                    .insert(node.to_string(), a.version.clone());
                self.cluster_version = a.version.clone();
                Ok((Changed, vec![]))
            }
            Step::KubeadmUpgradeNode(n) => {
                let cp = self.roles.get(node) == Some(&NodeRole::ControlPlane);
                if cp {
                    if self.apiserver_version.get(node) == Some(&n.version) {
                        return Ok((Unchanged, vec![]));
                    }
                    if self.cluster_version != n.version {
                        return other(format!(
                            "the cluster runs {} (kubeadm-config); `kubeadm upgrade apply {}` must run first",
                            self.cluster_version, n.version
                        ));
                    }
                    self.apiserver_version
                        .insert(node.to_string(), n.version.clone());
                }
                Ok((Changed, vec![]))
            }
            Step::KubectlDrain(d) => {
                self.kubectl_calls
                    .push((node.to_string(), "drain".into(), d.node.clone()));
                let newly = self.cordoned.insert(d.node.clone());
                if let Some(pods) = self.pdb_blocked.get(&d.node) {
                    return Err((
                        proto::FailureKind::DrainBlocked,
                        format!(
                            "kubectl drain {} did not finish within {}s: a PodDisruptionBudget blocks the eviction of {}",
                            d.node,
                            if d.timeout_seconds == 0 { 300 } else { d.timeout_seconds },
                            pods.join(", ")
                        ),
                        pods.clone(),
                    ));
                }
                Ok((if newly { Changed } else { Unchanged }, vec![]))
            }
            Step::KubectlUncordon(u) => {
                self.kubectl_calls
                    .push((node.to_string(), "uncordon".into(), u.node.clone()));
                let was = self.cordoned.remove(&u.node);
                Ok((if was { Changed } else { Unchanged }, vec![]))
            }
            Step::RestartKubelet(_) => {
                let installed = self
                    .packages
                    .get(node)
                    .map(|p| p.kubelet.clone())
                    .unwrap_or_default();
                self.kubelet_running
                    .insert(node.to_string(), installed.clone());
                self.restarted.insert(node.to_string());
                Ok((Changed, vec![format!("kubelet {installed} installed")]))
            }
            _ => Ok((Changed, vec![])),
        }
    }

    fn set_up(&mut self, node: &str) {
        let cp = self.roles.get(node) == Some(&NodeRole::ControlPlane);
        let kubelet = self
            .packages
            .get(node)
            .map(|p| p.kubelet.clone())
            .unwrap_or_default();
        self.kubelet_running.insert(node.to_string(), kubelet);
        if cp {
            let kubeadm = self
                .packages
                .get(node)
                .map(|p| p.kubeadm.clone())
                .unwrap_or_default();
            self.apiserver_version.insert(node.to_string(), kubeadm);
        }
        self.status.insert(
            node.to_string(),
            proto::NodeStatusResponse {
                kubelet_conf: true,
                admin_conf: cp,
                apiserver_manifest: cp,
                etcd_manifest: cp,
            },
        );
        if cp && !self.members.iter().any(|m| m.name == node) {
            let addr = self.addresses[node];
            let id = self.next_member;
            self.next_member += 1;
            self.members.push(proto::EtcdMember {
                id,
                id_hex: format!("{id:x}"),
                name: node.to_string(),
                peer_urls: vec![url(addr, 2380)],
                client_urls: vec![url(addr, 2379)],
                is_learner: false,
            });
        }
    }

    fn tear_down(&mut self, node: &str) {
        self.status.remove(node);
        self.members.retain(|m| m.name != node);
    }

    fn member_healthy(&self, m: &proto::EtcdMember) -> bool {
        !self.etcd_down.contains(&m.name) && !self.down.contains(&m.name)
    }

    fn apiserver_up(&self, node: &str) -> bool {
        !self.down.contains(node) && self.status.get(node).is_some_and(|s| s.apiserver_manifest)
    }

    /// A step as kubeadm and etcdctl would carry it out on the model.
    fn run(&mut self, node: &str, step: &Step) -> proto::StepReport {
        let name = step.name();
        let failed = self
            .failures
            .get_mut(&(node.to_string(), name.to_string()))
            .and_then(VecDeque::pop_front);
        if let Some((kind, error)) = failed {
            return proto::StepReport {
                step: name.into(),
                outcome: proto::Outcome::Failed as i32,
                failure_kind: kind as i32,
                error,
                ..Default::default()
            };
        }
        match step {
            Step::KubeadmInit(_) | Step::KubeadmJoin(_) => self.set_up(node),
            Step::KubeadmReset(_) => self.tear_down(node),
            Step::EtcdMemberRemove(r) => self.members.retain(|m| m.id != r.member_id),
            // A restart with renewed certificates brings back a member that
            // was down because its certificates had expired.
            Step::RestartControlPlane(_) => {
                self.etcd_down.remove(node);
            }
            Step::EtcdStopControlPlane(_) => {
                if let Some(s) = self.status.get_mut(node) {
                    s.etcd_manifest = false;
                    s.apiserver_manifest = false;
                }
                self.etcd_down.insert(node.to_string());
            }
            // Every member restored from one snapshot with one
            // --initial-cluster gets the same membership: those members.
            Step::EtcdRestore(r) => {
                let members: Vec<proto::EtcdMember> = r
                    .initial_cluster
                    .split(',')
                    .filter_map(|m| m.split_once('='))
                    .enumerate()
                    .map(|(i, (name, peer))| {
                        let id = 0x1000 + i as u64;
                        let client = peer.replace(":2380", ":2379");
                        proto::EtcdMember {
                            id,
                            id_hex: format!("{id:x}"),
                            name: name.to_string(),
                            peer_urls: vec![peer.to_string()],
                            client_urls: vec![client],
                            is_learner: false,
                        }
                    })
                    .collect();
                self.members = members;
            }
            Step::EtcdStartControlPlane(_) => {
                if let Some(s) = self.status.get_mut(node) {
                    s.etcd_manifest = true;
                    s.apiserver_manifest = true;
                }
                self.etcd_down.remove(node);
            }
            Step::PackageSource(_)
            | Step::PackageInstall(_)
            | Step::KubeadmUpgradePlan(_)
            | Step::KubeadmUpgradeApply(_)
            | Step::KubeadmUpgradeNode(_)
            | Step::KubectlDrain(_)
            | Step::KubectlUncordon(_)
            | Step::RestartKubelet(_) => {
                return match self.upgrade_step(node, step) {
                    Ok((outcome, notes)) => proto::StepReport {
                        step: name.into(),
                        outcome: outcome as i32,
                        message: format!("{name} done on {node}"),
                        notes,
                        ..Default::default()
                    },
                    Err((kind, error, notes)) => proto::StepReport {
                        step: name.into(),
                        outcome: proto::Outcome::Failed as i32,
                        failure_kind: kind as i32,
                        error,
                        notes,
                        ..Default::default()
                    },
                };
            }
            _ => {}
        }
        proto::StepReport {
            step: name.into(),
            outcome: proto::Outcome::Changed as i32,
            message: format!("{name} done on {node}"),
            ..Default::default()
        }
    }
}

impl AgentApi for FakeAgents {
    fn connect(&self, _node: &NodeRecord) -> Result<(), AgentError> {
        Ok(())
    }

    fn run_step(
        &self,
        node: &NodeRecord,
        req: proto::RunStepRequest,
        _timeout: Duration,
    ) -> AgentCall<'_, proto::StepReport> {
        let name = node.name.to_string();
        Box::pin(async move {
            let step = req.step.expect("a step");
            {
                let mut m = self.model();
                if m.down.contains(&name) {
                    return Err(AgentError::new(
                        AgentErrorKind::Unreachable,
                        "transport error: connection refused",
                    ));
                }
                m.steps.push(StepCall {
                    node: name.clone(),
                    step: step.name().into(),
                    started: true,
                });
            }
            // A step takes time on a host: give every other task a turn,
            // so steps that may overlap do.
            for _ in 0..8 {
                tokio::task::yield_now().await;
            }
            let mut m = self.model();
            let report = m.run(&name, &step);
            m.steps.push(StepCall {
                node: name,
                step: step.name().into(),
                started: false,
            });
            Ok(report)
        })
    }

    fn preflight(
        &self,
        node: &NodeRecord,
        _req: proto::PreflightRequest,
        _timeout: Duration,
    ) -> AgentCall<'_, proto::PreflightReport> {
        self.answer(node, |_, _| proto::PreflightReport::default())
    }

    fn node_status(
        &self,
        node: &NodeRecord,
        _timeout: Duration,
    ) -> AgentCall<'_, proto::NodeStatusResponse> {
        let name = node.name.to_string();
        self.model().status_asked.push(name);
        self.answer(node, |m, n| m.status.get(n).cloned().unwrap_or_default())
    }

    fn etcd_members(
        &self,
        node: &NodeRecord,
        _req: proto::EtcdRequest,
        _timeout: Duration,
    ) -> AgentCall<'_, proto::EtcdMembersResponse> {
        self.answer(node, |m, _| proto::EtcdMembersResponse {
            members: m.members.clone(),
        })
    }

    fn etcd_health(
        &self,
        node: &NodeRecord,
        req: proto::EtcdRequest,
        _timeout: Duration,
    ) -> AgentCall<'_, proto::EtcdHealthResponse> {
        self.answer(node, |m, _| {
            let leader = m
                .members
                .iter()
                .find(|x| m.member_healthy(x))
                .map(|x| x.id)
                .unwrap_or(0);
            let mut out = proto::EtcdHealthResponse::default();
            for endpoint in &req.endpoints {
                let member = m.members.iter().find(|x| x.client_urls.contains(endpoint));
                let healthy = member.is_some_and(|x| m.member_healthy(x));
                out.health.push(proto::EtcdEndpointHealth {
                    endpoint: endpoint.clone(),
                    healthy,
                    error: if healthy {
                        String::new()
                    } else {
                        "context deadline exceeded".into()
                    },
                    took_ms: 1,
                });
                if let Some(x) = member.filter(|x| m.member_healthy(x)) {
                    out.status.push(proto::EtcdEndpointStatus {
                        endpoint: endpoint.clone(),
                        member_id: x.id,
                        leader_id: leader,
                        db_size: 1 << 20,
                        is_learner: x.is_learner,
                        raft_term: 2,
                    });
                }
            }
            out
        })
    }

    fn kube_nodes(
        &self,
        node: &NodeRecord,
        _timeout: Duration,
    ) -> AgentCall<'_, proto::KubeNodesResponse> {
        self.answer(node, |m, via| {
            let at = m.steps.len();
            m.node_lists.push((via.to_string(), at));
            let waiting = !m.ready_together.is_subset(&m.restarted);
            proto::KubeNodesResponse {
                nodes: m
                    .status
                    .iter()
                    .filter(|(_, s)| s.kubelet_conf)
                    .map(|(n, _)| proto::KubeNode {
                        name: n.clone(),
                        ready: !(waiting
                            && m.ready_together.contains(n)
                            && m.restarted.contains(n)),
                        roles: vec![],
                        kubelet_version: m.kubelet_running.get(n).cloned().unwrap_or_default(),
                        unschedulable: m.cordoned.contains(n),
                    })
                    .collect(),
            }
        })
    }

    fn apiserver_ready(
        &self,
        node: &NodeRecord,
        req: proto::ApiserverReadyRequest,
        _timeout: Duration,
    ) -> AgentCall<'_, proto::ApiserverReadyResponse> {
        self.answer(node, |m, n| {
            let own = m.addresses.get(n).map(|a| url(*a, 6443)) == Some(req.url.clone());
            let ready = if own {
                m.apiserver_up(n)
            } else {
                // The control-plane endpoint: any apiserver behind it.
                m.status.keys().any(|c| m.apiserver_up(c))
            };
            let version = if !ready {
                String::new()
            } else if own {
                m.apiserver_version.get(n).cloned().unwrap_or_default()
            } else {
                // Behind the endpoint: whichever apiserver answers; the
                // lowest, as a client may meet it.
                let mut up: Vec<&String> = m
                    .apiserver_version
                    .iter()
                    .filter(|(c, _)| m.apiserver_up(c))
                    .map(|(_, v)| v)
                    .collect();
                up.sort_by_key(|v| {
                    v.parse::<kh::spec::KubeVersion>()
                        .ok()
                        .map(|k| (k.minor(), k.patch()))
                });
                up.first().map(|v| v.to_string()).unwrap_or_default()
            };
            proto::ApiserverReadyResponse {
                ready,
                detail: if ready {
                    String::new()
                } else {
                    format!("Get \"{}/readyz\": connection refused", req.url)
                },
                version,
            }
        })
    }

    fn tcp_probe(
        &self,
        node: &NodeRecord,
        _req: proto::TcpProbeRequest,
        _timeout: Duration,
    ) -> AgentCall<'_, proto::TcpProbeResponse> {
        self.answer(node, |_, _| proto::TcpProbeResponse {
            result: proto::tcp_probe_response::Result::Refused as i32,
            detail: "connection refused".into(),
        })
    }

    fn read_cluster_files(
        &self,
        node: &NodeRecord,
        req: proto::ReadClusterFilesRequest,
        _timeout: Duration,
    ) -> AgentCall<'_, proto::ReadClusterFilesResponse> {
        use proto::read_cluster_files_request::Set;
        if req.set != Set::ClusterCa as i32 {
            let e = AgentError::new(
                AgentErrorKind::Answered("Unimplemented".into()),
                "the fake agents hold only the cluster CA certificate",
            );
            return Box::pin(async move { Err(e) });
        }
        self.answer(node, |m, _| proto::ReadClusterFilesResponse {
            files: vec![proto::PlacedFile {
                path: "ca.crt".into(),
                contents: m.cluster_ca_pem.clone().into_bytes(),
                mode: 0o644,
            }],
        })
    }

    fn cluster_certs(
        &self,
        node: &NodeRecord,
        _timeout: Duration,
    ) -> AgentCall<'_, proto::ClusterCertsResponse> {
        self.answer(node, |m, name| proto::ClusterCertsResponse {
            certs: m.certs.get(name).cloned().unwrap_or_default(),
        })
    }

    fn package_versions(
        &self,
        node: &NodeRecord,
        req: proto::PackageVersionsRequest,
        _timeout: Duration,
    ) -> AgentCall<'_, proto::PackageVersionsResponse> {
        let name = node.name.to_string();
        self.model()
            .package_asks
            .push((name.clone(), req.minor.clone()));
        self.answer(node, |m, n| {
            let p = m.packages.get(n).cloned().unwrap_or_default();
            let minor = if req.minor.is_empty() {
                p.source_minor.clone()
            } else {
                req.minor.clone()
            };
            let installed = [
                ("kubeadm", &p.kubeadm),
                ("kubelet", &p.kubelet),
                ("kubectl", &p.kubectl),
            ]
            .into_iter()
            .map(|(name, v)| proto::InstalledPackage {
                name: name.into(),
                version: v.clone(),
                held: !v.is_empty(),
            })
            .collect();
            proto::PackageVersionsResponse {
                manager: "apt".into(),
                installed,
                source_minor: p.source_minor.clone(),
                available: m.repo(n, &minor),
                error: String::new(),
            }
        })
    }

    fn etcd_snapshot(
        &self,
        node: &NodeRecord,
        _req: proto::EtcdSnapshotRequest,
        _timeout: Duration,
    ) -> AgentCall<'_, SnapshotChunks> {
        use futures::StreamExt;
        let name = node.name.to_string();
        let result = {
            let mut m = self.model();
            if m.down.contains(&name) {
                Err(AgentError::new(
                    AgentErrorKind::Unreachable,
                    "transport error: connection refused",
                ))
            } else if let Some(msg) = m.snapshot_failures.get(&name) {
                Err(AgentError::new(
                    AgentErrorKind::Answered("FailedPrecondition".into()),
                    msg.clone(),
                ))
            } else {
                m.snapshots_taken.push(name.clone());
                let revision = i64::try_from(m.snapshots_taken.len()).unwrap_or(0);
                let file = fake_etcd_snapshot(revision);
                let size = file.len() as u64;
                // As the agent sends it: the data, then the size and status.
                let mut chunks: Vec<Result<proto::EtcdSnapshotChunk, AgentError>> = file
                    .chunks(4096)
                    .map(|c| {
                        Ok(proto::EtcdSnapshotChunk {
                            data: c.to_vec(),
                            status: None,
                            file_size: 0,
                        })
                    })
                    .collect();
                if m.snapshot_cut.contains(&name) {
                    return Box::pin(async move { Ok(futures::stream::iter(chunks).boxed()) });
                }
                chunks.push(Ok(proto::EtcdSnapshotChunk {
                    data: Vec::new(),
                    status: Some(proto::EtcdSnapshotStatus {
                        hash: 7,
                        revision,
                        total_keys: 3,
                        total_size: (size - 32) as i64,
                    }),
                    file_size: size,
                }));
                Ok(futures::stream::iter(chunks).boxed())
            }
        };
        Box::pin(async move { result })
    }

    /// Takes the whole stream and checks its size and SHA-256 as the agent
    /// does; a scripted failure of `put-etcd-snapshot` is the agent's
    /// `etcdctl snapshot status` refusing the file.
    fn put_etcd_snapshot(
        &self,
        node: &NodeRecord,
        header: proto::EtcdSnapshotPiece,
        data: SnapshotPieces,
        _timeout: Duration,
    ) -> AgentCall<'_, proto::PutEtcdSnapshotResponse> {
        use futures::StreamExt;
        let name = node.name.to_string();
        Box::pin(async move {
            let bytes: Vec<u8> = data.concat().await;
            let mut m = self.model();
            if m.down.contains(&name) {
                return Err(AgentError::new(
                    AgentErrorKind::Unreachable,
                    "transport error: connection refused",
                ));
            }
            m.steps.push(StepCall {
                node: name.clone(),
                step: "put-etcd-snapshot".into(),
                started: true,
            });
            let sha = ring::digest::digest(&ring::digest::SHA256, &bytes);
            let sha: String = sha.as_ref().iter().map(|b| format!("{b:02x}")).collect();
            let scripted = m
                .failures
                .get_mut(&(name.clone(), "put-etcd-snapshot".to_string()))
                .and_then(VecDeque::pop_front);
            let refused = if bytes.len() as u64 != header.size || sha != header.sha256 {
                Some(format!("snapshot transfer: {} bytes with SHA-256 {sha} arrived; {} bytes with {} were announced", bytes.len(), header.size, header.sha256))
            } else {
                scripted.map(|(_, e)| e)
            };
            m.steps.push(StepCall {
                node: name,
                step: "put-etcd-snapshot".into(),
                started: false,
            });
            match refused {
                Some(e) => Err(AgentError::new(
                    AgentErrorKind::Answered("FailedPrecondition".into()),
                    e,
                )),
                None => Ok(proto::PutEtcdSnapshotResponse {
                    hash: 1,
                    revision: 42,
                    total_keys: 10,
                    total_size: bytes.len() as u64,
                }),
            }
        })
    }
}

/// Bytes shaped like an etcd snapshot file: whole 4 KiB pages (a bolt
/// database) and the SHA-256 of them appended, as `etcdctl snapshot save`
/// writes it. `revision` varies the content.
pub fn fake_etcd_snapshot(revision: i64) -> Vec<u8> {
    let mut file: Vec<u8> = (0..3 * 4096u32)
        .map(|i| (i as u8) ^ (revision as u8))
        .collect();
    let digest = ring::digest::digest(&ring::digest::SHA256, &file);
    file.extend_from_slice(digest.as_ref());
    file
}
