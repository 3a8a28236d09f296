//! Kubernetes files on a node: what kubeadm left there ([`node_state`]),
//! pulling the shared CA set and admin.conf ([`read_files`],
//! [`read_admin_conf`]) and placing files such as that CA set before a
//! control-plane join ([`PlaceFiles`]).

use std::collections::BTreeSet;
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

use crate::error::StepError;
use crate::host::Host;
use crate::kube::apply::{apply_with, Done, StepFile};
use crate::kube::error::KubeError;
use crate::kube::{
    shared_ca_file_mode, ADMIN_CONF, APISERVER_MANIFEST, ETCD_MANIFEST, KUBELET_CONF,
};
use crate::secret::{SecretBytes, SecretString};
use crate::steps::{Plan, Step, StepKind, StepReport};

/// Which of kubeadm's marker files exist on a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// The node has joined (or initialized) a cluster.
    pub kubelet_conf: bool,
    /// The node is a control plane set up by init or a control-plane join.
    pub admin_conf: bool,
    pub apiserver_manifest: bool,
    /// A stacked etcd member runs here.
    pub etcd_manifest: bool,
}

pub fn node_state(host: &Host) -> Result<NodeState, KubeError> {
    Ok(NodeState {
        kubelet_conf: host.exists(KUBELET_CONF)?,
        admin_conf: host.exists(ADMIN_CONF)?,
        apiserver_manifest: host.exists(APISERVER_MANIFEST)?,
        etcd_manifest: host.exists(ETCD_MANIFEST)?,
    })
}

/// Reads files that hold secrets, such as the shared CA set after init.
/// Every path must exist: a partial CA set is useless to a joining control
/// plane, so a missing file is an error naming it.
pub fn read_files(host: &Host, paths: &[&str]) -> Result<Vec<(String, SecretString)>, KubeError> {
    paths
        .iter()
        .map(|path| match host.read_to_string(path)? {
            Some(text) => Ok((path.to_string(), SecretString::new(text))),
            None => Err(KubeError::MissingFile {
                path: path.to_string(),
                next: "read it from a control plane that kubeadm init or a control-plane join set up; if this is one, its /etc/kubernetes/pki was removed or never completed".to_string(),
            }),
        })
        .collect()
}

/// The cluster's admin kubeconfig, which embeds a client key.
pub fn read_admin_conf(host: &Host) -> Result<SecretString, KubeError> {
    match host.read_to_string(ADMIN_CONF)? {
        Some(text) => Ok(SecretString::new(text)),
        None => Err(KubeError::MissingFile {
            path: ADMIN_CONF.to_string(),
            next: "only an initialized control plane has it; ask another control plane".to_string(),
        }),
    }
}

/// Writes files atomically with their modes, such as the shared CA set
/// under /etc/kubernetes/pki before a control-plane join that uses no
/// certificate key, or the external etcd client files. Contents never appear
/// in plans or reports, are written byte for byte, and never through a
/// symbolic link: a link at any component of a path is refused, in the plan
/// and again when writing, so a file can never land outside the host root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceFiles {
    files: Vec<StepFile>,
}

impl PlaceFiles {
    /// `files` are (absolute host path, content, mode). Paths must be
    /// absolute without `..` and unique; modes are plain permission bits.
    pub fn new(files: Vec<(String, SecretBytes, u32)>) -> Result<Self, KubeError> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::with_capacity(files.len());
        for (path, content, mode) in files {
            let invalid = |reason: &str| KubeError::Invalid {
                what: "file to place",
                value: path.clone(),
                reason: reason.to_string(),
            };
            let traverses = Path::new(&path)
                .components()
                .any(|c| matches!(c, Component::ParentDir));
            if !path.starts_with('/') || traverses || path.ends_with('/') {
                return Err(invalid(
                    "give an absolute file path without `..`, such as /etc/kubernetes/pki/ca.crt",
                ));
            }
            if mode > 0o777 {
                return Err(invalid(&format!(
                    "mode {mode:o} has setuid, setgid or sticky bits; placed files take plain permissions such as 600 or 644"
                )));
            }
            if !seen.insert(path.clone()) {
                return Err(invalid("the path is listed twice"));
            }
            out.push(StepFile::secret_placed(&path, &content, mode));
        }
        Ok(Self { files: out })
    }

    /// The shared CA set with the modes kubeadm itself uses: keys 0600,
    /// certificates and `sa.pub` 0644.
    pub fn shared_ca(files: Vec<(String, SecretString)>) -> Result<Self, KubeError> {
        Self::new(
            files
                .into_iter()
                .map(|(path, content)| {
                    let mode = shared_ca_file_mode(&path);
                    (path, SecretBytes::from(content), mode)
                })
                .collect(),
        )
    }

    pub fn paths(&self) -> Vec<&str> {
        self.files.iter().map(StepFile::path).collect()
    }
}

impl Step for PlaceFiles {
    fn kind(&self) -> StepKind {
        StepKind::PlaceFiles
    }

    fn plan(&self, host: &Host) -> Result<Plan, StepError> {
        let mut plan = Plan::new(StepKind::PlaceFiles);
        let mut in_place = 0;
        for file in &self.files {
            let current = host.read_nofollow(file.path())?;
            let mode = host.file_mode_nofollow(file.path())?;
            let same_content = current.as_deref().is_some_and(|c| file.has_content(c));
            if same_content && mode == Some(file.mode()) {
                in_place += 1;
                continue;
            }
            if current.is_some() && !same_content {
                plan.notes
                    .push(format!("replaces the different content of {}", file.path()));
            } else if same_content {
                plan.notes.push(format!(
                    "{} has the content but mode {:04o}; it is rewritten with {:04o}",
                    file.path(),
                    mode.unwrap_or(0),
                    file.mode()
                ));
            }
            plan.files
                .push(file.secret_change(current.as_ref().map(Vec::len)));
        }
        if in_place > 0 {
            plan.notes.push(format!(
                "{in_place} of {} files already in place",
                self.files.len()
            ));
        }
        Ok(plan)
    }

    fn apply(&self, host: &Host, plan: &Plan) -> StepReport {
        apply_with(host, StepKind::PlaceFiles, plan, |applier| {
            if plan.is_empty() {
                return Ok(Done::Unchanged(format!(
                    "all {} files already in place",
                    self.files.len()
                )));
            }
            // The plan lists only the files that differ, so each planned path
            // must be one of this step's files; the content comes from the
            // step, since a plan never holds it.
            let mut to_write = Vec::new();
            for change in &plan.files {
                let file = self
                    .files
                    .iter()
                    .find(|f| f.path() == change.path)
                    .ok_or_else(|| KubeError::Invalid {
                        what: "plan",
                        value: change.path.clone(),
                        reason: "PlaceFiles was not asked to place this file; plans must come from the same step's plan()".to_string(),
                    })?;
                to_write.push((file, change));
            }
            if let Some(argv) = plan.commands.first() {
                return Err(StepError::UnexpectedCommand {
                    step: StepKind::PlaceFiles,
                    argv: argv.clone(),
                }
                .into());
            }
            for (file, change) in &to_write {
                applier.write(file, change)?;
            }
            Ok(Done::Changed(format!(
                "placed {}",
                to_write
                    .iter()
                    .map(|(file, _)| file.path())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        })
    }
}

/// The client URL of this host's stacked etcd member, read from the static
/// pod manifest kubeadm wrote (`--advertise-client-urls`). `None` on hosts
/// that run no etcd member.
pub fn local_etcd_endpoint(host: &Host) -> Result<Option<String>, KubeError> {
    let Some(manifest) = host.read_to_string(ETCD_MANIFEST)? else {
        return Ok(None);
    };
    Ok(parse_advertise_client_url(&manifest))
}

/// The first URL of `--advertise-client-urls=` in an etcd manifest.
pub fn parse_advertise_client_url(manifest: &str) -> Option<String> {
    manifest.lines().find_map(|l| {
        let rest = l.split("--advertise-client-urls=").nth(1)?;
        let url = rest
            .trim()
            .trim_matches(|c| c == '"' || c == '\'')
            .split(',')
            .next()?;
        (!url.is_empty()).then(|| url.to_string())
    })
}

#[cfg(test)]
mod local_etcd_tests {
    use super::*;

    #[test]
    fn the_advertised_client_url_comes_from_the_manifest() {
        let m = "spec:\n  containers:\n  - command:\n    - etcd\n    - --advertise-client-urls=https://10.0.0.11:2379\n    - --name=cp-1\n";
        assert_eq!(
            parse_advertise_client_url(m).as_deref(),
            Some("https://10.0.0.11:2379")
        );
        let quoted =
            "    - \"--advertise-client-urls=https://[fd00::1]:2379,https://10.0.0.1:2379\"\n";
        assert_eq!(
            parse_advertise_client_url(quoted).as_deref(),
            Some("https://[fd00::1]:2379")
        );
        assert_eq!(parse_advertise_client_url("kind: Pod\n"), None);
    }
}
