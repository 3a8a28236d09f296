//! kubectl with the node's admin.conf: applying a manifest (the CNI),
//! listing nodes, deleting a node object.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{HostError, StepError};
use crate::host::{Cmd, Host};
use crate::kube::apply::{apply_with, command_error, Done, StepFile};
use crate::kube::error::KubeError;
use crate::kube::kubeadm::real_path;
use crate::kube::{ADMIN_CONF, AGENT_STATE_DIR};
use crate::steps::{Plan, Step, StepKind, StepReport};

/// A CNI manifest creates a few dozen objects; the apiserver answers fast
/// unless it is unhealthy, and then waiting longer does not help.
const APPLY_TIMEOUT: Duration = Duration::from_secs(300);
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// The label prefix kubectl reads node roles from.
const ROLE_LABEL_PREFIX: &str = "node-role.kubernetes.io/";

const KUBECTL_NEXT: &str = "kubectl needs /etc/kubernetes/admin.conf on this node and an apiserver that answers; run it on a healthy control plane";

fn kubectl(host: &Host) -> Result<Cmd, HostError> {
    Ok(Cmd::new("kubectl")
        .arg("--kubeconfig")
        .arg(real_path(host, ADMIN_CONF)?))
}

/// Applies one manifest with `kubectl apply -f`, from a file that exists
/// only for the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubectlApply {
    name: String,
    manifest: String,
}

impl KubectlApply {
    /// `name` names the temporary file (`apply-<name>.yaml`), so it must be
    /// a short `[a-z0-9-]` word such as `cni`.
    pub fn new(name: &str, manifest: &str) -> Result<Self, KubeError> {
        let valid = (1..=63).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-');
        if !valid {
            return Err(KubeError::Invalid {
                what: "manifest name",
                value: name.to_string(),
                reason: "use 1-63 characters of [a-z0-9-] not starting with `-`, such as `cni`"
                    .to_string(),
            });
        }
        Ok(Self {
            name: name.to_string(),
            manifest: manifest.to_string(),
        })
    }

    pub fn path(&self) -> String {
        format!("{AGENT_STATE_DIR}/apply-{}.yaml", self.name)
    }

    fn file(&self) -> StepFile {
        StepFile::plain_temporary(&self.path(), &self.manifest)
    }

    fn command(&self, host: &Host) -> Result<Cmd, HostError> {
        Ok(kubectl(host)?
            .args(["apply", "-f"])
            .arg(real_path(host, &self.path())?)
            .timeout(APPLY_TIMEOUT))
    }
}

/// Whether `kubectl apply` found every object as it should be: each output
/// line is `<kind>/<name> unchanged`.
fn all_unchanged(stdout: &str) -> bool {
    let mut lines = stdout
        .lines()
        .filter(|line| !line.trim().is_empty())
        .peekable();
    lines.peek().is_some() && lines.all(|line| line.trim_end().ends_with(" unchanged"))
}

impl Step for KubectlApply {
    fn kind(&self) -> StepKind {
        StepKind::KubectlApply
    }

    fn plan(&self, host: &Host) -> Result<Plan, StepError> {
        let mut plan = Plan::new(StepKind::KubectlApply);
        plan.files.push(self.file().change(None));
        plan.commands.push(self.command(host)?.argv().to_vec());
        plan.notes.push(format!(
            "{} exists only while kubectl runs; kubectl decides per object whether anything changes",
            self.path()
        ));
        Ok(plan)
    }

    fn apply(&self, host: &Host, plan: &Plan) -> StepReport {
        apply_with(host, StepKind::KubectlApply, plan, |applier| {
            let file = self.file();
            let cmd = self.command(applier.host())?;
            applier.check_plan(plan, &[&file], &[&cmd])?;
            let record = applier.with_temp_file(&file, &plan.files[0], |applier| {
                applier.run_checked(&cmd, KUBECTL_NEXT)
            })?;
            let summary = record.stdout.lines().count();
            if all_unchanged(&record.stdout) {
                Ok(Done::Unchanged(format!(
                    "manifest {}: all {summary} objects unchanged",
                    self.name
                )))
            } else {
                Ok(Done::Changed(format!(
                    "applied manifest {}: {}",
                    self.name,
                    record.stdout.trim().replace('\n', "; ")
                )))
            }
        })
    }
}

/// A Kubernetes node name (a DNS-1123 subdomain), as kubectl takes it;
/// anything else (`--all`, a flag, spaces) is refused with the rule.
pub fn valid_node_name(name: &str) -> Result<String, KubeError> {
    let label_ok = |label: &str| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(KubeError::Invalid {
            what: "node name",
            value: name.chars().take(64).collect(),
            reason: "a node name is a DNS-1123 subdomain: lowercase letters, digits, `-` and `.`"
                .to_string(),
        });
    }
    Ok(name.to_string())
}

/// Deletes a node object (after its host left the cluster).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubectlDeleteNode {
    name: String,
}

impl KubectlDeleteNode {
    /// `name` must be a Kubernetes node name (a DNS-1123 subdomain).
    pub fn new(name: &str) -> Result<Self, KubeError> {
        Ok(Self {
            name: valid_node_name(name)?,
        })
    }

    fn command(&self, host: &Host) -> Result<Cmd, HostError> {
        Ok(kubectl(host)?
            .args(["delete", "node", &self.name])
            .timeout(QUERY_TIMEOUT))
    }
}

impl Step for KubectlDeleteNode {
    fn kind(&self) -> StepKind {
        StepKind::KubectlDeleteNode
    }

    fn plan(&self, host: &Host) -> Result<Plan, StepError> {
        let mut plan = Plan::new(StepKind::KubectlDeleteNode);
        plan.commands.push(self.command(host)?.argv().to_vec());
        Ok(plan)
    }

    fn apply(&self, host: &Host, plan: &Plan) -> StepReport {
        apply_with(host, StepKind::KubectlDeleteNode, plan, |applier| {
            let cmd = self.command(applier.host())?;
            applier.check_plan(plan, &[], &[&cmd])?;
            let record = applier.run(&cmd)?;
            // kubectl says `Error from server (NotFound): nodes "w-1" not found`.
            let missing = record.stderr_tail.contains("(NotFound)")
                || record
                    .stderr_tail
                    .contains(&format!("\"{}\" not found", self.name));
            if record.success() {
                Ok(Done::Changed(format!("deleted node {}", self.name)))
            } else if missing {
                Ok(Done::Unchanged(format!(
                    "node {} does not exist",
                    self.name
                )))
            } else {
                Err(command_error(&record, KUBECTL_NEXT))
            }
        })
    }
}

/// Deletes the node object `name`; `Unchanged` when it does not exist.
pub fn kubectl_delete_node(host: &Host, name: &str) -> Result<StepReport, KubeError> {
    Ok(KubectlDeleteNode::new(name)?.run(host, false))
}

/// One node as `kubectl get nodes` sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeNode {
    pub name: String,
    /// The `Ready` condition is `True`.
    pub ready: bool,
    /// From `node-role.kubernetes.io/<role>` labels, sorted.
    pub roles: Vec<String>,
    /// `status.nodeInfo.kubeletVersion`, e.g. `v1.32.4`; empty when unset.
    #[serde(default)]
    pub kubelet_version: String,
    /// `spec.unschedulable`: cordoned.
    #[serde(default)]
    pub unschedulable: bool,
}

#[derive(Deserialize)]
struct RawNodeList {
    items: Vec<RawNode>,
}

#[derive(Deserialize)]
struct RawNode {
    metadata: RawMeta,
    #[serde(default)]
    spec: RawSpec,
    #[serde(default)]
    status: RawStatus,
}

#[derive(Default, Deserialize)]
struct RawSpec {
    #[serde(default)]
    unschedulable: bool,
}

#[derive(Deserialize)]
struct RawMeta {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Default, Deserialize)]
struct RawStatus {
    #[serde(default)]
    conditions: Vec<RawCondition>,
    #[serde(default, rename = "nodeInfo")]
    node_info: RawNodeInfo,
}

#[derive(Default, Deserialize)]
struct RawNodeInfo {
    #[serde(default, rename = "kubeletVersion")]
    kubelet_version: String,
}

#[derive(Deserialize)]
struct RawCondition {
    #[serde(rename = "type")]
    kind: String,
    status: String,
}

/// Parses a `v1.NodeList` as `kubectl get nodes -o json` prints it.
pub fn parse_node_list(json: &str) -> Result<Vec<KubeNode>, String> {
    let list: RawNodeList = serde_json::from_str(json).map_err(|err| err.to_string())?;
    Ok(list
        .items
        .into_iter()
        .map(|node| KubeNode {
            ready: node
                .status
                .conditions
                .iter()
                .any(|c| c.kind == "Ready" && c.status == "True"),
            roles: node
                .metadata
                .labels
                .keys()
                .filter_map(|key| key.strip_prefix(ROLE_LABEL_PREFIX))
                .filter(|role| !role.is_empty())
                .map(str::to_string)
                .collect(),
            name: node.metadata.name,
            kubelet_version: node.status.node_info.kubelet_version,
            unschedulable: node.spec.unschedulable,
        })
        .collect())
}

/// The cluster's nodes, through this control plane's admin.conf.
pub fn kubectl_nodes(host: &Host) -> Result<Vec<KubeNode>, KubeError> {
    let cmd = kubectl(host)?
        .args(["get", "nodes", "-o", "json"])
        .timeout(QUERY_TIMEOUT);
    let record = host.run(&cmd)?;
    if !record.success() {
        return Err(command_error(&record, KUBECTL_NEXT));
    }
    parse_node_list(&record.stdout).map_err(|detail| KubeError::Output {
        argv: record.argv.clone(),
        detail,
        head: record.stdout.chars().take(200).collect(),
        next: "kubectl printed something other than a NodeList; check the kubectl version on this node".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_output_is_unchanged_only_when_every_object_is() {
        assert!(all_unchanged(
            "namespace/kube-flannel unchanged\ndaemonset.apps/kube-flannel-ds unchanged\n"
        ));
        assert!(!all_unchanged(
            "namespace/kube-flannel unchanged\nconfigmap/kube-flannel-cfg configured\n"
        ));
        assert!(!all_unchanged("namespace/kube-flannel created\n"));
        assert!(!all_unchanged(""));
    }

    #[test]
    fn node_lists_carry_versions_and_cordons() {
        let json = r#"{"apiVersion":"v1","kind":"List","items":[
          {"metadata":{"name":"cp-1","labels":{"node-role.kubernetes.io/control-plane":""}},
           "spec":{"unschedulable":true},
           "status":{"conditions":[{"type":"Ready","status":"True"}],"nodeInfo":{"kubeletVersion":"v1.32.4"}}},
          {"metadata":{"name":"w-1"},"status":{}}]}"#;
        let nodes = parse_node_list(json).unwrap();
        assert_eq!(
            nodes[0],
            KubeNode {
                name: "cp-1".into(),
                ready: true,
                roles: vec!["control-plane".into()],
                kubelet_version: "v1.32.4".into(),
                unschedulable: true,
            }
        );
        assert_eq!(
            (
                nodes[1].ready,
                nodes[1].kubelet_version.as_str(),
                nodes[1].unschedulable
            ),
            (false, "", false)
        );
    }

    #[test]
    fn node_names_are_validated() {
        for good in ["cp-1", "w-1.example.internal", "a"] {
            assert!(KubectlDeleteNode::new(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", "CP-1", "a..b", "a b", "--all"] {
            assert!(KubectlDeleteNode::new(bad).is_err(), "{bad}");
        }
        for bad in ["", "a/b", "-x", "A", "../x"] {
            assert!(KubectlApply::new(bad, "").is_err(), "{bad}");
        }
    }
}
