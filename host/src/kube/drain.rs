//! `kubectl drain` and `kubectl uncordon` of a node, with this control
//! plane's admin.conf. They change the cluster, not this host: the agent
//! runs them beside its host steps (one control plane drains several
//! workers of a batch at once).

use std::time::Duration;

use crate::error::{HostError, StepError};
use crate::host::{Cmd, Host};
use crate::kube::apply::{apply_with, command_error, Done};
use crate::kube::error::{DrainBlocked, KubeError};
use crate::kube::kubeadm::real_path;
use crate::kube::kubectl::valid_node_name;
use crate::kube::ADMIN_CONF;
use crate::steps::{Plan, Step, StepKind, StepReport};

/// kubectl drain's `--timeout` when the caller names none.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
/// How much longer than its own `--timeout` kubectl may take to report.
const DRAIN_GRACE: Duration = Duration::from_secs(60);
const UNCORDON_TIMEOUT: Duration = Duration::from_secs(60);

const KUBECTL_NEXT: &str = "kubectl needs /etc/kubernetes/admin.conf on this node and an apiserver that answers; run it on a healthy control plane";

fn kubectl(host: &Host) -> Result<Cmd, HostError> {
    Ok(Cmd::new("kubectl")
        .arg("--kubeconfig")
        .arg(real_path(host, ADMIN_CONF)?))
}

/// The pods named in kubectl drain's eviction errors
/// (`error when evicting pods/"web-0" -n "default"`), as `ns/name`, in the
/// order kubectl names them.
pub fn blocking_pods(stderr: &str) -> Vec<String> {
    const START: &str = "evicting pods/\"";
    let mut pods: Vec<String> = Vec::new();
    let mut rest = stderr;
    while let Some(at) = rest.find(START) {
        rest = &rest[at + START.len()..];
        let Some((name, after)) = rest.split_once('"') else {
            break;
        };
        let ns = after
            .strip_prefix(" -n \"")
            .and_then(|a| a.split_once('"'))
            .map(|(ns, _)| ns);
        if let Some(ns) = ns {
            let pod = format!("{ns}/{name}");
            if !pods.contains(&pod) {
                pods.push(pod);
            }
        }
    }
    pods
}

/// Whether kubectl's output says the drain cordoned or evicted anything.
fn drain_changed(stdout: &str, node: &str) -> bool {
    stdout.lines().any(|l| {
        let l = l.trim();
        l == format!("node/{node} cordoned")
            || l.ends_with(" evicted")
            || l.starts_with("evicting pod ")
    })
}

/// `kubectl drain NODE --ignore-daemonsets --delete-emptydir-data
/// --timeout=Ns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubectlDrain {
    node: String,
    timeout: Duration,
}

impl KubectlDrain {
    /// `timeout` zero means [`DEFAULT_DRAIN_TIMEOUT`].
    pub fn new(node: &str, timeout: Duration) -> Result<Self, KubeError> {
        Ok(Self {
            node: valid_node_name(node)?,
            timeout: if timeout.is_zero() {
                DEFAULT_DRAIN_TIMEOUT
            } else {
                timeout
            },
        })
    }

    fn command(&self, host: &Host) -> Result<Cmd, HostError> {
        Ok(kubectl(host)?
            .args([
                "drain",
                &self.node,
                "--ignore-daemonsets",
                "--delete-emptydir-data",
            ])
            .arg(format!("--timeout={}s", self.timeout.as_secs()))
            .timeout(self.timeout + DRAIN_GRACE))
    }
}

impl Step for KubectlDrain {
    fn kind(&self) -> StepKind {
        StepKind::KubectlDrain
    }

    fn plan(&self, host: &Host) -> Result<Plan, StepError> {
        let mut plan = Plan::new(StepKind::KubectlDrain);
        plan.commands.push(self.command(host)?.argv().to_vec());
        plan.notes.push(format!(
            "cordons {} and evicts its pods (DaemonSet pods stay; emptyDir data is lost), waiting at most {}s for PodDisruptionBudgets",
            self.node,
            self.timeout.as_secs()
        ));
        Ok(plan)
    }

    fn apply(&self, host: &Host, plan: &Plan) -> StepReport {
        let mut notes = Vec::new();
        let mut report = apply_with(host, StepKind::KubectlDrain, plan, |applier| {
            let cmd = self.command(applier.host())?;
            applier.check_plan(plan, &[], &[&cmd])?;
            let record = applier.run(&cmd)?;
            if record.success() {
                return Ok(if drain_changed(&record.stdout, &self.node) {
                    Done::Changed(format!("drained {}", self.node))
                } else {
                    Done::Unchanged(format!(
                        "{} was already cordoned with nothing to evict",
                        self.node
                    ))
                });
            }
            let err = command_error(&record, KUBECTL_NEXT);
            if err.failure_kind() != crate::FailureKind::DrainBlocked {
                return Err(err);
            }
            let pods = blocking_pods(&record.stderr_tail);
            notes = pods.clone();
            let budget = record
                .stderr_tail
                .contains("Cannot evict pod as it would violate the pod's disruption budget");
            let named = if pods.is_empty() {
                "some pods".to_string()
            } else {
                pods.join(", ")
            };
            let (reason, next) = if budget {
                (
                    format!("evicting {named} would violate its PodDisruptionBudget"),
                    "Relax the budget (minAvailable) or move the workload, then re-run".to_string(),
                )
            } else {
                (
                    format!(
                        "{named} could not be evicted within {}s",
                        self.timeout.as_secs()
                    ),
                    "Find out why the pods do not go (`kubectl get pods -A --field-selector spec.nodeName=NODE`), or allow a longer drain timeout, then re-run".to_string(),
                )
            };
            Err(KubeError::DrainBlocked(Box::new(DrainBlocked {
                node: self.node.clone(),
                pods,
                reason,
                next,
                argv: record.argv.clone(),
                stderr_tail: record.stderr_tail.clone(),
            })))
        });
        report.notes = notes;
        report
    }
}

/// `kubectl uncordon NODE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubectlUncordon {
    node: String,
}

impl KubectlUncordon {
    pub fn new(node: &str) -> Result<Self, KubeError> {
        Ok(Self {
            node: valid_node_name(node)?,
        })
    }

    fn command(&self, host: &Host) -> Result<Cmd, HostError> {
        Ok(kubectl(host)?
            .args(["uncordon", &self.node])
            .timeout(UNCORDON_TIMEOUT))
    }
}

impl Step for KubectlUncordon {
    fn kind(&self) -> StepKind {
        StepKind::KubectlUncordon
    }

    fn plan(&self, host: &Host) -> Result<Plan, StepError> {
        let mut plan = Plan::new(StepKind::KubectlUncordon);
        plan.commands.push(self.command(host)?.argv().to_vec());
        Ok(plan)
    }

    fn apply(&self, host: &Host, plan: &Plan) -> StepReport {
        apply_with(host, StepKind::KubectlUncordon, plan, |applier| {
            let cmd = self.command(applier.host())?;
            applier.check_plan(plan, &[], &[&cmd])?;
            let record = applier.run_checked(&cmd, KUBECTL_NEXT)?;
            if record
                .stdout
                .lines()
                .any(|l| l.trim() == format!("node/{} already uncordoned", self.node))
            {
                Ok(Done::Unchanged(format!(
                    "{} is already schedulable",
                    self.node
                )))
            } else {
                Ok(Done::Changed(format!("uncordoned {}", self.node)))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kubectl drain's stderr when a PodDisruptionBudget blocks an eviction
    /// until the timeout.
    const BLOCKED: &str = "Warning: ignoring DaemonSet-managed Pods: kube-system/kube-proxy-abcde
evicting pod default/web-0
error when evicting pods/\"web-0\" -n \"default\" (will retry after 5s): Cannot evict pod as it would violate the pod's disruption budget.
error when evicting pods/\"db-1\" -n \"data\" (will retry after 5s): Cannot evict pod as it would violate the pod's disruption budget.
error when evicting pods/\"web-0\" -n \"default\" (will retry after 5s): Cannot evict pod as it would violate the pod's disruption budget.
There are pending pods in node \"w-1\" when an error occurred: error when evicting pods/\"web-0\" -n \"default\": global timeout reached: 5m0s
pod/web-0
error: unable to drain node \"w-1\" due to error: error when evicting pods/\"web-0\" -n \"default\": global timeout reached: 5m0s, continuing command...
There are pending nodes to be drained:
 w-1
error: error when evicting pods/\"web-0\" -n \"default\": global timeout reached: 5m0s
";

    #[test]
    fn blocked_drains_name_their_pods() {
        assert_eq!(blocking_pods(BLOCKED), ["default/web-0", "data/db-1"]);
        assert!(blocking_pods("error: nodes \"w-1\" not found\n").is_empty());
        assert_eq!(
            blocking_pods("error when evicting pods/\"web-0\" -n \"default\""),
            ["default/web-0"]
        );
        assert!(blocking_pods("error when evicting pods/\"web-0").is_empty());
    }

    #[test]
    fn a_drain_changes_something_only_when_it_cordons_or_evicts() {
        assert!(drain_changed(
            "node/w-1 cordoned\nnode/w-1 drained\n",
            "w-1"
        ));
        assert!(drain_changed(
            "node/w-1 already cordoned\nevicting pod default/web-0\npod/web-0 evicted\nnode/w-1 drained\n",
            "w-1"
        ));
        assert!(!drain_changed(
            "node/w-1 already cordoned\nnode/w-1 drained\n",
            "w-1"
        ));
    }

    #[test]
    fn inputs_are_validated_and_the_default_timeout_applies() {
        let d = KubectlDrain::new("w-1", Duration::ZERO).unwrap();
        assert_eq!(d.timeout, DEFAULT_DRAIN_TIMEOUT);
        let host = Host::new("/", vec![]);
        assert_eq!(
            d.command(&host).unwrap().argv(),
            [
                "kubectl",
                "--kubeconfig",
                "/etc/kubernetes/admin.conf",
                "drain",
                "w-1",
                "--ignore-daemonsets",
                "--delete-emptydir-data",
                "--timeout=300s"
            ]
        );
        for bad in ["", "--all", "W-1", "a b", "-x"] {
            assert!(KubectlDrain::new(bad, Duration::ZERO).is_err(), "{bad:?}");
            assert!(KubectlUncordon::new(bad).is_err(), "{bad:?}");
        }
    }
}
