//! The kubeadm side of a Kubernetes upgrade on one node: `kubeadm upgrade
//! plan` (read-only, its component table parsed), `kubeadm upgrade apply` on
//! the first control plane, `kubeadm upgrade node` on every other node, and
//! the kubelet restart that follows a kubelet package upgrade.
//!
//! Whether a control plane is already at a version is read from its
//! kube-apiserver static pod manifest, which `upgrade apply` and `upgrade
//! node` rewrite: the image tag is the version the kubelet runs.

use std::time::Duration;

use crate::error::StepError;
use crate::host::{Cmd, Host};
use crate::kube::apply::{apply_with, Done};
use crate::kube::error::KubeError;
use crate::kube::version::{manifest_image_tag, KubeVersion};
use crate::kube::{APISERVER_MANIFEST, KUBELET_CONF};
use crate::steps::{Plan, Step, StepKind, StepReport};
use crate::tools::{self, ToolVersion};

/// `kubeadm upgrade plan` asks the cluster and prints; a few minutes cover
/// a slow apiserver.
const PLAN_TIMEOUT: Duration = Duration::from_secs(300);
/// `upgrade apply` and `upgrade node` pull images and wait for each static
/// pod to come back (kubeadm allows 5 minutes per component).
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(900);
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(120);

const PLAN_NEXT: &str = "kubeadm refused the target or could not read the cluster: fix what it reports (upgrade kubeadm first, or one minor at a time) and run the plan again";
const APPLY_NEXT: &str = "kubeadm restores the previous static pod manifests when a component does not come back; fix what it reports (kubeadm's package at the target version, images, the kubelet) and run the step again";
const NODE_NEXT: &str = "Install kubeadm at the cluster's version on this node first (PackageInstall), check the kubelet, then run the step again";
const RESTART_NEXT: &str = "Check the kubelet unit (`systemctl status kubelet`, `journalctl -u kubelet`) and its configuration in /var/lib/kubelet, then run the step again";

/// One row of kubeadm's upgrade plan table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanRow {
    pub component: String,
    /// Empty for cluster-wide components (kube-proxy, CoreDNS).
    pub node: String,
    pub current: String,
    pub target: String,
}

impl PlanRow {
    /// The row as a report note: `COMPONENT\tNODE\tCURRENT\tTARGET`.
    pub fn note(&self) -> String {
        format!(
            "{}\t{}\t{}\t{}",
            self.component, self.node, self.current, self.target
        )
    }
}

/// The rows of every `COMPONENT NODE CURRENT TARGET` table in `kubeadm
/// upgrade plan` output. The tables are aligned with spaces (Go's
/// tabwriter), so cells are cut at the header's column starts: a cell may
/// be empty (kube-proxy and CoreDNS have no node).
pub fn parse_plan_tables(stdout: &str) -> Vec<PlanRow> {
    const HEADER: [&str; 4] = ["COMPONENT", "NODE", "CURRENT", "TARGET"];
    let mut rows = Vec::new();
    let mut columns: Option<[usize; 4]> = None;
    for line in stdout.lines() {
        if line.split_whitespace().eq(HEADER) {
            let mut starts = [0; 4];
            let mut from = 0;
            for (i, word) in HEADER.iter().enumerate() {
                let at = line[from..].find(word).map_or(from, |p| from + p);
                starts[i] = at;
                from = at + word.len();
            }
            columns = Some(starts);
            continue;
        }
        let Some(starts) = columns else { continue };
        if line.trim().is_empty() {
            columns = None;
            continue;
        }
        let cell = |i: usize| {
            let from = starts[i].min(line.len());
            let to = starts.get(i + 1).map_or(line.len(), |&e| e.min(line.len()));
            line.get(from..to.max(from))
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        let row = PlanRow {
            component: cell(0),
            node: cell(1),
            current: cell(2),
            target: cell(3),
        };
        if row.component.is_empty() || row.target.is_empty() {
            columns = None;
            continue;
        }
        rows.push(row);
    }
    rows
}

/// This node's kube-apiserver version (its manifest's image tag); `None`
/// on a node without the manifest (a worker).
pub fn apiserver_manifest_version(host: &Host) -> Result<Option<String>, StepError> {
    Ok(host
        .read_to_string(APISERVER_MANIFEST)?
        .map(|text| manifest_image_tag(&text).unwrap_or_default()))
}

// ---------------------------------------------------------------------------
// plan

/// `kubeadm upgrade plan V`: read-only. The report's notes are kubeadm's
/// component rows. Since it changes nothing, a dry run runs it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KubeadmUpgradePlan {
    pub version: KubeVersion,
}

impl KubeadmUpgradePlan {
    fn command(&self) -> Cmd {
        Cmd::new("kubeadm")
            .args(["upgrade", "plan"])
            .arg(self.version.to_string())
            .timeout(PLAN_TIMEOUT)
    }
}

impl Step for KubeadmUpgradePlan {
    fn kind(&self) -> StepKind {
        StepKind::KubeadmUpgradePlan
    }

    fn plan(&self, host: &Host) -> Result<Plan, StepError> {
        let mut plan = Plan::new(StepKind::KubeadmUpgradePlan);
        if !host.exists(APISERVER_MANIFEST)? {
            plan.notes.push(format!(
                "{APISERVER_MANIFEST} does not exist: kubeadm plans upgrades on a control plane"
            ));
        }
        plan.commands.push(self.command().argv().to_vec());
        Ok(plan)
    }

    fn apply(&self, host: &Host, plan: &Plan) -> StepReport {
        let mut notes = Vec::new();
        let mut report = apply_with(host, StepKind::KubeadmUpgradePlan, plan, |applier| {
            let cmd = self.command();
            applier.check_plan(plan, &[], &[&cmd])?;
            let record = applier.run_checked(&cmd, PLAN_NEXT)?;
            let rows = parse_plan_tables(&record.stdout);
            if rows.is_empty() {
                return Err(KubeError::Output {
                    argv: record.argv.clone(),
                    detail: "no COMPONENT NODE CURRENT TARGET table".into(),
                    head: record.stdout.chars().take(200).collect(),
                    next: "kh reads kubeadm's component table (kubeadm v1.29 and newer print it with a NODE column); check the kubeadm version on this node".into(),
                });
            }
            notes = rows.iter().map(PlanRow::note).collect();
            Ok(Done::Unchanged(format!(
                "kubeadm upgrade plan {}: {} components, nothing changed",
                self.version,
                rows.len()
            )))
        });
        report.notes = notes;
        report
    }

    /// Planning an upgrade changes nothing, so a dry run asks kubeadm too:
    /// the operator's `--dry-run` shows kubeadm's own table.
    fn run(&self, host: &Host, dry_run: bool) -> StepReport {
        match self.plan(host) {
            Err(err) => StepReport::failed(self.kind(), &err),
            Ok(plan) => {
                let mut report = self.apply(host, &plan);
                report.dry_run = dry_run;
                report
            }
        }
    }
}

// ---------------------------------------------------------------------------
// apply and node

/// `kubeadm upgrade apply V --yes` on the first control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KubeadmUpgradeApply {
    pub version: KubeVersion,
}

impl KubeadmUpgradeApply {
    fn command(&self) -> Cmd {
        Cmd::new("kubeadm")
            .args(["upgrade", "apply"])
            .arg(self.version.to_string())
            .arg("--yes")
            .timeout(UPGRADE_TIMEOUT)
    }
}

impl Step for KubeadmUpgradeApply {
    fn kind(&self) -> StepKind {
        StepKind::KubeadmUpgradeApply
    }

    fn plan(&self, host: &Host) -> Result<Plan, StepError> {
        let mut plan = Plan::new(StepKind::KubeadmUpgradeApply);
        let Some(current) = apiserver_manifest_version(host)? else {
            return Err(StepError::Kube(Box::new(KubeError::MissingFile {
                path: APISERVER_MANIFEST.into(),
                next: "kubeadm upgrade apply runs on the first control plane; run KubeadmUpgradeNode on the other nodes".into(),
            })));
        };
        let target = self.version.to_string();
        if current == target {
            plan.notes.push(format!(
                "this control plane's kube-apiserver already runs {target}"
            ));
        } else {
            plan.notes.push(format!(
                "kube-apiserver {current} → {target}; kubeadm rewrites the static pod manifests and stores the cluster version"
            ));
            plan.commands.push(self.command().argv().to_vec());
        }
        Ok(plan)
    }

    fn apply(&self, host: &Host, plan: &Plan) -> StepReport {
        apply_with(host, StepKind::KubeadmUpgradeApply, plan, |applier| {
            if plan.is_empty() {
                return Ok(Done::Unchanged(plan.notes.join("; ")));
            }
            let cmd = self.command();
            applier.check_plan(plan, &[], &[&cmd])?;
            applier.run_checked(&cmd, APPLY_NEXT)?;
            Ok(Done::Changed(format!(
                "kubeadm upgraded the cluster to {}",
                self.version
            )))
        })
    }
}

/// `kubeadm upgrade node` on every node but the first control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KubeadmUpgradeNode {
    pub version: KubeVersion,
}

impl KubeadmUpgradeNode {
    fn command() -> Cmd {
        Cmd::new("kubeadm")
            .args(["upgrade", "node"])
            .timeout(UPGRADE_TIMEOUT)
    }
}

impl Step for KubeadmUpgradeNode {
    fn kind(&self) -> StepKind {
        StepKind::KubeadmUpgradeNode
    }

    fn plan(&self, host: &Host) -> Result<Plan, StepError> {
        let mut plan = Plan::new(StepKind::KubeadmUpgradeNode);
        let target = self.version.to_string();
        match apiserver_manifest_version(host)? {
            Some(current) if current == target => {
                plan.notes.push(format!(
                    "this control plane's kube-apiserver already runs {target}"
                ));
            }
            Some(current) => {
                plan.notes.push(format!(
                    "control plane: kube-apiserver {current} → the cluster's version ({target})"
                ));
                plan.commands.push(Self::command().argv().to_vec());
            }
            None => {
                if !host.exists(KUBELET_CONF)? {
                    return Err(StepError::Kube(Box::new(KubeError::MissingFile {
                        path: KUBELET_CONF.into(),
                        next: "this node has not joined a cluster, so there is nothing to upgrade; join it first".into(),
                    })));
                }
                plan.notes.push(
                    "worker: kubeadm rewrites the kubelet configuration (idempotent), so it always runs".into(),
                );
                plan.commands.push(Self::command().argv().to_vec());
            }
        }
        Ok(plan)
    }

    fn apply(&self, host: &Host, plan: &Plan) -> StepReport {
        apply_with(host, StepKind::KubeadmUpgradeNode, plan, |applier| {
            if plan.is_empty() {
                return Ok(Done::Unchanged(plan.notes.join("; ")));
            }
            let cmd = Self::command();
            applier.check_plan(plan, &[], &[&cmd])?;
            applier.run_checked(&cmd, NODE_NEXT)?;
            Ok(Done::Changed(format!(
                "kubeadm upgraded this node for {}",
                self.version
            )))
        })
    }
}

// ---------------------------------------------------------------------------
// kubelet restart

/// `systemctl daemon-reload`, `systemctl restart kubelet`: always runs (the
/// restart is the point); the report names the installed kubelet version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestartKubelet;

impl RestartKubelet {
    fn commands() -> [Cmd; 2] {
        [
            Cmd::new("systemctl")
                .arg("daemon-reload")
                .timeout(SYSTEMCTL_TIMEOUT),
            Cmd::new("systemctl")
                .args(["restart", "kubelet"])
                .timeout(SYSTEMCTL_TIMEOUT),
        ]
    }
}

impl Step for RestartKubelet {
    fn kind(&self) -> StepKind {
        StepKind::RestartKubelet
    }

    fn plan(&self, _host: &Host) -> Result<Plan, StepError> {
        let mut plan = Plan::new(StepKind::RestartKubelet);
        plan.commands = Self::commands().iter().map(|c| c.argv().to_vec()).collect();
        Ok(plan)
    }

    fn apply(&self, host: &Host, plan: &Plan) -> StepReport {
        apply_with(host, StepKind::RestartKubelet, plan, |applier| {
            let cmds = Self::commands();
            applier.check_plan(plan, &[], &[&cmds[0], &cmds[1]])?;
            for cmd in &cmds {
                applier.run_checked(cmd, RESTART_NEXT)?;
            }
            let version = match tools::kubelet_version(applier.host()) {
                ToolVersion::Found(v) => format!("kubelet {v}"),
                ToolVersion::Missing => "kubelet is not on the agent's search path".into(),
                ToolVersion::Unreadable(why) => format!("the kubelet version is unreadable: {why}"),
            };
            Ok(Done::Changed(format!(
                "restarted the kubelet; installed: {version}"
            )))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kubeadm v1.31's `upgrade plan` output (tabwriter, padding 3).
    const PLAN: &str = "[upgrade/versions] Cluster version: v1.31.4
[upgrade/versions] kubeadm version: v1.32.4
[upgrade/versions] Target version: v1.32.4

Components that must be upgraded manually after you have upgraded the control plane with 'kubeadm upgrade apply':
COMPONENT   NODE   CURRENT   TARGET
kubelet     cp-1   v1.31.4   v1.32.4
kubelet     w-1    v1.31.4   v1.32.4

Upgrade to the latest stable version:

COMPONENT                 NODE   CURRENT    TARGET
kube-apiserver            cp-1   v1.31.4    v1.32.4
kube-controller-manager   cp-1   v1.31.4    v1.32.4
kube-scheduler            cp-1   v1.31.4    v1.32.4
kube-proxy                       1.31.4     v1.32.4
CoreDNS                          v1.11.3    v1.11.3
etcd                      cp-1   3.5.15-0   3.5.15-0

You can now apply the upgrade by executing the following command:

\tkubeadm upgrade apply v1.32.4

_____________________________________________________________________
";

    #[test]
    fn kubeadms_plan_tables_become_one_row_each() {
        let rows = parse_plan_tables(PLAN);
        let notes: Vec<String> = rows.iter().map(PlanRow::note).collect();
        assert_eq!(
            notes,
            [
                "kubelet\tcp-1\tv1.31.4\tv1.32.4",
                "kubelet\tw-1\tv1.31.4\tv1.32.4",
                "kube-apiserver\tcp-1\tv1.31.4\tv1.32.4",
                "kube-controller-manager\tcp-1\tv1.31.4\tv1.32.4",
                "kube-scheduler\tcp-1\tv1.31.4\tv1.32.4",
                "kube-proxy\t\t1.31.4\tv1.32.4",
                "CoreDNS\t\tv1.11.3\tv1.11.3",
                "etcd\tcp-1\t3.5.15-0\t3.5.15-0",
            ]
        );
        assert!(parse_plan_tables("[upgrade/versions] Target version: v1.32.4\n").is_empty());
    }
}
