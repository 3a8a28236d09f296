//! Typed host steps, each split into `plan` (observe, compute, touch nothing)
//! and `apply` (perform exactly that plan).
//!
//! Plans are plain data so the coordinator can show them for `--dry-run`
//! and tests can assert on them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{display_argv, StepError};
use crate::failure::FailureKind;
use crate::host::{Cmd, CommandRecord, Host, SysctlKey};

pub mod containerd;
pub mod haproxy;
pub mod modules;
pub mod swap;
pub mod sysctl;

pub use containerd::ContainerdCgroup;
pub use haproxy::{Backend, LoadBalancerConfig};
pub use modules::KernelModules;
pub use swap::DisableSwap;
pub use sysctl::Sysctl;

/// Suffix of the one-time backups kh keeps of files it edits.
pub const BACKUP_SUFFIX: &str = ".kh-bak";

/// Which step a plan or report belongs to.
///
/// This is the one list of kh's steps: their names on the wire, in reports,
/// metrics and the audit log all come from [`StepKind::name`], and
/// [`StepKind::ALL`] is every one of them. The etcd membership changes are
/// steps on the wire although they run through [`crate::kube::EtcdClient`]
/// rather than as a plan-then-apply [`Step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    DisableSwap,
    KernelModules,
    Sysctl,
    ContainerdCgroup,
    KubeadmInit,
    KubeadmJoin,
    KubeadmReset,
    TokenCreate,
    TokenDelete,
    UploadCerts,
    KubectlApply,
    KubectlDeleteNode,
    PlaceFiles,
    EtcdMemberRemove,
    EtcdMoveLeader,
    LoadBalancer,
    CertsRenew,
    RestartControlPlane,
    EtcdStopControlPlane,
    EtcdRestore,
    EtcdStartControlPlane,
    EtcdRestoreDiscard,
    PackageSource,
    PackageInstall,
    KubeadmUpgradePlan,
    KubeadmUpgradeApply,
    KubeadmUpgradeNode,
    KubectlDrain,
    KubectlUncordon,
    RestartKubelet,
}

impl StepKind {
    /// Every step, in the order reports and metrics list them.
    pub const ALL: [StepKind; 30] = [
        StepKind::DisableSwap,
        StepKind::KernelModules,
        StepKind::Sysctl,
        StepKind::ContainerdCgroup,
        StepKind::KubeadmInit,
        StepKind::KubeadmJoin,
        StepKind::KubeadmReset,
        StepKind::TokenCreate,
        StepKind::TokenDelete,
        StepKind::UploadCerts,
        StepKind::KubectlApply,
        StepKind::KubectlDeleteNode,
        StepKind::PlaceFiles,
        StepKind::EtcdMemberRemove,
        StepKind::EtcdMoveLeader,
        StepKind::LoadBalancer,
        StepKind::CertsRenew,
        StepKind::RestartControlPlane,
        StepKind::EtcdStopControlPlane,
        StepKind::EtcdRestore,
        StepKind::EtcdStartControlPlane,
        StepKind::EtcdRestoreDiscard,
        StepKind::PackageSource,
        StepKind::PackageInstall,
        StepKind::KubeadmUpgradePlan,
        StepKind::KubeadmUpgradeApply,
        StepKind::KubeadmUpgradeNode,
        StepKind::KubectlDrain,
        StepKind::KubectlUncordon,
        StepKind::RestartKubelet,
    ];

    /// The step's name on the wire and in reports, metrics and the audit log.
    pub const fn name(self) -> &'static str {
        match self {
            StepKind::DisableSwap => "disable-swap",
            StepKind::KernelModules => "kernel-modules",
            StepKind::Sysctl => "sysctl",
            StepKind::ContainerdCgroup => "containerd-cgroup",
            StepKind::KubeadmInit => "kubeadm-init",
            StepKind::KubeadmJoin => "kubeadm-join",
            StepKind::KubeadmReset => "kubeadm-reset",
            StepKind::TokenCreate => "token-create",
            StepKind::TokenDelete => "token-delete",
            StepKind::UploadCerts => "upload-certs",
            StepKind::KubectlApply => "kubectl-apply",
            StepKind::KubectlDeleteNode => "kubectl-delete-node",
            StepKind::PlaceFiles => "place-files",
            StepKind::EtcdMemberRemove => "etcd-member-remove",
            StepKind::EtcdMoveLeader => "etcd-move-leader",
            StepKind::LoadBalancer => "load-balancer",
            StepKind::CertsRenew => "certs-renew",
            StepKind::RestartControlPlane => "restart-control-plane",
            StepKind::EtcdStopControlPlane => "etcd-stop-control-plane",
            StepKind::EtcdRestore => "etcd-restore",
            StepKind::EtcdStartControlPlane => "etcd-start-control-plane",
            StepKind::EtcdRestoreDiscard => "etcd-restore-discard",
            StepKind::PackageSource => "package-source",
            StepKind::PackageInstall => "package-install",
            StepKind::KubeadmUpgradePlan => "kubeadm-upgrade-plan",
            StepKind::KubeadmUpgradeApply => "kubeadm-upgrade-apply",
            StepKind::KubeadmUpgradeNode => "kubeadm-upgrade-node",
            StepKind::KubectlDrain => "kubectl-drain",
            StepKind::KubectlUncordon => "kubectl-uncordon",
            StepKind::RestartKubelet => "restart-kubelet",
        }
    }
}

/// One file a plan writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChange {
    /// Absolute host path (not including the host root).
    pub path: String,
    /// The current content; `None` when the file does not exist yet.
    pub before: Option<String>,
    pub after: String,
    pub mode: u32,
    /// Where the current content is copied first; `None` when the file is
    /// new or a backup from an earlier run already exists (that one is kept,
    /// because it holds the file as it was before kh touched it).
    pub backup: Option<String>,
    /// Unified diff from `before` to `after`.
    pub diff: String,
}

impl FileChange {
    /// Computes a change, with its diff and backup decision, from what is on
    /// the host now. `default_mode` applies to a new file; an existing file
    /// keeps its mode.
    pub fn compute(
        host: &Host,
        path: &str,
        before: Option<String>,
        after: String,
        default_mode: u32,
    ) -> Result<Self, StepError> {
        let mode = host.file_mode(path)?.unwrap_or(default_mode);
        let backup_path = format!("{path}{BACKUP_SUFFIX}");
        let backup = if before.is_some() && !host.exists(&backup_path)? {
            Some(backup_path)
        } else {
            None
        };
        let diff = unified_diff(path, before.as_deref(), &after);
        Ok(Self {
            path: path.to_string(),
            before,
            after,
            mode,
            backup,
            diff,
        })
    }
}

/// A unified diff of a file, `/dev/null` standing for a missing file.
pub fn unified_diff(path: &str, before: Option<&str>, after: &str) -> String {
    let old_name = if before.is_some() {
        format!("a{path}")
    } else {
        "/dev/null".to_string()
    };
    similar::TextDiff::from_lines(before.unwrap_or(""), after)
        .unified_diff()
        .context_radius(3)
        .header(&old_name, &format!("b{path}"))
        .to_string()
}

/// One sysctl a plan sets through `/proc/sys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysctlChange {
    pub key: SysctlKey,
    /// The current value; `None` when the key does not exist (yet).
    pub before: Option<String>,
    pub after: String,
}

/// What a step would do, computed from observed host state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub step: StepKind,
    pub files: Vec<FileChange>,
    pub commands: Vec<Vec<String>>,
    /// Runtime sysctl writes (only the Sysctl step has any).
    #[serde(default)]
    pub sysctls: Vec<SysctlChange>,
    /// Observations worth showing an operator, such as why a module needs no
    /// `modprobe`.
    pub notes: Vec<String>,
}

impl Plan {
    pub fn new(step: StepKind) -> Self {
        Self {
            step,
            files: Vec::new(),
            commands: Vec::new(),
            sysctls: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// A plan with nothing to do means the host is already right.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.commands.is_empty() && self.sysctls.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Changed,
    Unchanged,
    Failed,
}

/// What a step did (or, for a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepReport {
    pub step: StepKind,
    pub outcome: Outcome,
    pub files: Vec<FileChange>,
    pub commands: Vec<CommandRecord>,
    #[serde(default)]
    pub sysctls: Vec<SysctlChange>,
    pub message: String,
    pub error: Option<String>,
    /// True when this report describes a plan that was not applied.
    #[serde(default)]
    pub dry_run: bool,
    /// What kind of failure `error` is; `None` unless the step failed.
    #[serde(default)]
    pub failure: Option<FailureKind>,
    /// Structured lines a step hands to its caller beside the message:
    /// kubeadm's upgrade plan rows, the pods that block a drain.
    #[serde(default)]
    pub notes: Vec<String>,
}

impl StepReport {
    /// The report of a step that failed before it could do anything.
    pub fn failed(step: StepKind, error: &StepError) -> Self {
        Self {
            step,
            outcome: Outcome::Failed,
            files: Vec::new(),
            commands: Vec::new(),
            sysctls: Vec::new(),
            message: format!("{step:?} failed before changing anything"),
            error: Some(error.to_string()),
            dry_run: false,
            failure: Some(error.failure_kind()),
            notes: Vec::new(),
        }
    }

    /// A dry run: the plan, with the outcome it would have, and nothing done.
    pub fn from_plan(plan: Plan) -> Self {
        let outcome = if plan.is_empty() {
            Outcome::Unchanged
        } else {
            Outcome::Changed
        };
        let mut parts: Vec<String> = Vec::new();
        for file in &plan.files {
            parts.push(format!("would write {}", file.path));
        }
        for change in &plan.sysctls {
            parts.push(format!("would set {} = {}", change.key, change.after));
        }
        for argv in &plan.commands {
            parts.push(format!("would run `{}`", display_argv(argv)));
        }
        if parts.is_empty() {
            parts.push("nothing to do".to_string());
        }
        parts.extend(plan.notes.iter().cloned());
        Self {
            step: plan.step,
            outcome,
            files: plan.files,
            commands: Vec::new(),
            sysctls: plan.sysctls,
            message: format!("dry run: {}", parts.join("; ")),
            error: None,
            dry_run: true,
            failure: None,
            notes: Vec::new(),
        }
    }
}

/// A host step. Implementations compute plans from host state only and apply
/// nothing but their plan.
pub trait Step {
    fn kind(&self) -> StepKind;

    /// Observes the host and computes what to do; touches nothing.
    fn plan(&self, host: &Host) -> Result<Plan, StepError>;

    /// Performs exactly `plan`.
    fn apply(&self, host: &Host, plan: &Plan) -> StepReport;

    /// Plans and, unless `dry_run`, applies.
    fn run(&self, host: &Host, dry_run: bool) -> StepReport {
        match self.plan(host) {
            Err(err) => StepReport::failed(self.kind(), &err),
            Ok(plan) if dry_run => StepReport::from_plan(plan),
            Ok(plan) => self.apply(host, &plan),
        }
    }
}

/// The steps that prepare a host for kubeadm, in the order they must run:
/// the bridge sysctls exist only once br_netfilter is loaded.
pub fn prepare_steps() -> Vec<Box<dyn Step + Send + Sync>> {
    vec![
        Box::new(DisableSwap),
        Box::new(KernelModules::default()),
        Box::new(Sysctl::default()),
        Box::new(ContainerdCgroup),
    ]
}

/// Records what an apply did, so a failure halfway still reports the files
/// written and commands run before it.
pub(crate) struct Applier<'a> {
    host: &'a Host,
    step: StepKind,
    files: Vec<FileChange>,
    commands: Vec<CommandRecord>,
    sysctls: Vec<SysctlChange>,
}

impl<'a> Applier<'a> {
    /// Starts applying, refusing a plan made by another step.
    pub(crate) fn start(host: &'a Host, step: StepKind, plan: &Plan) -> Result<Self, StepError> {
        if plan.step != step {
            return Err(StepError::WrongPlan {
                expected: step,
                got: plan.step,
            });
        }
        Ok(Self {
            host,
            step,
            files: Vec::new(),
            commands: Vec::new(),
            sysctls: Vec::new(),
        })
    }

    pub(crate) fn host(&self) -> &Host {
        self.host
    }

    /// Backs up (once) and atomically writes one planned file.
    pub(crate) fn write_file(&mut self, change: &FileChange) -> Result<(), StepError> {
        if let Some((dir, _)) = change.path.rsplit_once('/') {
            if !dir.is_empty() {
                self.host.create_dir_all(dir)?;
            }
        }
        if let Some(backup) = &change.backup {
            let suffix = backup
                .strip_prefix(change.path.as_str())
                .unwrap_or(BACKUP_SUFFIX);
            self.host.backup_once(&change.path, suffix)?;
        }
        self.host
            .write_atomic(&change.path, change.after.as_bytes(), change.mode)?;
        self.files.push(change.clone());
        Ok(())
    }

    /// Runs one command, recording it whatever its outcome.
    pub(crate) fn run(
        &mut self,
        argv: &[String],
        timeout: Duration,
    ) -> Result<CommandRecord, StepError> {
        let record = self
            .host
            .run(&Cmd::from_argv(argv.to_vec()).timeout(timeout))?;
        self.commands.push(record.clone());
        Ok(record)
    }

    /// Records a file the step wrote by other means than [`Self::write_file`]
    /// (a validated candidate renamed into place).
    pub(crate) fn record_file(&mut self, change: &FileChange) {
        self.files.push(change.clone());
    }

    pub(crate) fn record_sysctl(&mut self, change: &SysctlChange) {
        self.sysctls.push(change.clone());
    }

    /// Builds the report: `Changed` when anything was done, `Unchanged` for
    /// an empty plan, `Failed` with the error otherwise.
    pub(crate) fn finish(self, result: Result<String, StepError>) -> StepReport {
        let did_something =
            !self.files.is_empty() || !self.commands.is_empty() || !self.sysctls.is_empty();
        let (outcome, message, error, failure) = match result {
            Ok(message) if did_something => (Outcome::Changed, message, None, None),
            Ok(_) => (
                Outcome::Unchanged,
                "already in the desired state".to_string(),
                None,
                None,
            ),
            Err(err) => {
                tracing::warn!(step = ?self.step, error = %err, "host step failed");
                (
                    Outcome::Failed,
                    format!("{:?} failed", self.step),
                    Some(err.to_string()),
                    Some(err.failure_kind()),
                )
            }
        };
        StepReport {
            step: self.step,
            outcome,
            files: self.files,
            commands: self.commands,
            sysctls: self.sysctls,
            message,
            error,
            dry_run: false,
            failure,
            notes: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The position of each kind in `ALL`. The match is exhaustive, so a new
    /// kind cannot compile without a place in the list.
    fn position(kind: StepKind) -> usize {
        match kind {
            StepKind::DisableSwap => 0,
            StepKind::KernelModules => 1,
            StepKind::Sysctl => 2,
            StepKind::ContainerdCgroup => 3,
            StepKind::KubeadmInit => 4,
            StepKind::KubeadmJoin => 5,
            StepKind::KubeadmReset => 6,
            StepKind::TokenCreate => 7,
            StepKind::TokenDelete => 8,
            StepKind::UploadCerts => 9,
            StepKind::KubectlApply => 10,
            StepKind::KubectlDeleteNode => 11,
            StepKind::PlaceFiles => 12,
            StepKind::EtcdMemberRemove => 13,
            StepKind::EtcdMoveLeader => 14,
            StepKind::LoadBalancer => 15,
            StepKind::CertsRenew => 16,
            StepKind::RestartControlPlane => 17,
            StepKind::EtcdStopControlPlane => 18,
            StepKind::EtcdRestore => 19,
            StepKind::EtcdStartControlPlane => 20,
            StepKind::EtcdRestoreDiscard => 21,
            StepKind::PackageSource => 22,
            StepKind::PackageInstall => 23,
            StepKind::KubeadmUpgradePlan => 24,
            StepKind::KubeadmUpgradeApply => 25,
            StepKind::KubeadmUpgradeNode => 26,
            StepKind::KubectlDrain => 27,
            StepKind::KubectlUncordon => 28,
            StepKind::RestartKubelet => 29,
        }
    }

    #[test]
    fn all_lists_every_step_once_under_its_wire_name() {
        for (i, kind) in StepKind::ALL.iter().enumerate() {
            assert_eq!(position(*kind), i, "{kind:?} is out of place in ALL");
        }
        // The names are a wire contract (reports, metrics, the audit log and
        // persisted rollout state carry them): they never change.
        let names: Vec<&str> = StepKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(
            names,
            [
                "disable-swap",
                "kernel-modules",
                "sysctl",
                "containerd-cgroup",
                "kubeadm-init",
                "kubeadm-join",
                "kubeadm-reset",
                "token-create",
                "token-delete",
                "upload-certs",
                "kubectl-apply",
                "kubectl-delete-node",
                "place-files",
                "etcd-member-remove",
                "etcd-move-leader",
                "load-balancer",
                "certs-renew",
                "restart-control-plane",
                "etcd-stop-control-plane",
                "etcd-restore",
                "etcd-start-control-plane",
                "etcd-restore-discard",
                "package-source",
                "package-install",
                "kubeadm-upgrade-plan",
                "kubeadm-upgrade-apply",
                "kubeadm-upgrade-node",
                "kubectl-drain",
                "kubectl-uncordon",
                "restart-kubelet",
            ]
        );
    }

    #[test]
    fn diffs_name_the_file_and_new_files_come_from_dev_null() {
        let diff = unified_diff("/etc/x", Some("a\nb\n"), "a\nc\n");
        assert_eq!(
            diff,
            "--- a/etc/x\n+++ b/etc/x\n@@ -1,2 +1,2 @@\n a\n-b\n+c\n"
        );
        let diff = unified_diff("/etc/x", None, "a\n");
        assert_eq!(diff, "--- /dev/null\n+++ b/etc/x\n@@ -0,0 +1 @@\n+a\n");
    }

    #[test]
    fn dry_run_reports_say_what_would_happen() {
        let mut plan = Plan::new(StepKind::DisableSwap);
        assert_eq!(
            StepReport::from_plan(plan.clone()).outcome,
            Outcome::Unchanged
        );
        plan.commands.push(vec!["swapoff".into(), "-a".into()]);
        let report = StepReport::from_plan(plan);
        assert_eq!(report.outcome, Outcome::Changed);
        assert!(report.dry_run);
        assert!(report.commands.is_empty());
        assert_eq!(report.message, "dry run: would run `swapoff -a`");
    }

    #[test]
    fn plans_round_trip_through_json() {
        let mut plan = Plan::new(StepKind::Sysctl);
        plan.sysctls.push(SysctlChange {
            key: SysctlKey::new("net.ipv4.ip_forward").unwrap(),
            before: Some("0".into()),
            after: "1".into(),
        });
        let json = serde_json::to_string(&plan).unwrap();
        assert!(json.contains("\"step\":\"sysctl\""));
        assert_eq!(serde_json::from_str::<Plan>(&json).unwrap(), plan);
    }
}
