//! The operator's cluster spec (`cluster.yaml`): what the cluster should look
//! like, parsed and validated once at the edge. [`parse`] reads the YAML into
//! private raw serde structs (unknown fields refused), then converts them into
//! the validated [`ClusterSpec`] that the rest of kh trusts without checking
//! again. Validation collects every problem it can find, each with the path of
//! the offending field and what to do about it, so an operator fixes a spec in
//! one pass instead of one error per run. This module reads no files: relative
//! paths in the spec are resolved against a directory the caller supplies.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::names::NodeName;

mod convert;
mod endpoint;
mod raw;
#[cfg(test)]
mod tests;
mod version;

pub use convert::parse;
pub use endpoint::{Endpoint, InvalidEndpoint};
pub use version::{InvalidVersion, KubeVersion};

use endpoint::*;
use raw::*;

/// The only `apiVersion` this kh understands.
pub const API_VERSION: &str = "kh.io/v1alpha1";
/// The only `kind` a cluster spec may have.
pub const KIND: &str = "Cluster";
/// kubeadm's documented pod subnet for flannel, the most common first CNI.
pub const DEFAULT_POD_SUBNET: &str = "10.244.0.0/16";
/// kubeadm's own default service subnet.
pub const DEFAULT_SERVICE_SUBNET: &str = "10.96.0.0/12";
pub const DEFAULT_WORKER_CONCURRENCY: u32 = 10;
pub const MAX_WORKER_CONCURRENCY: u32 = 1000;
/// `certificates.renewBefore` by default: kubeadm's certificates last a year,
/// and a month leaves time to notice a renewal that failed.
pub const DEFAULT_RENEW_BEFORE: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);
/// The validity of kubeadm's leaf certificates; a window as long renews always.
pub const LEAF_CERT_VALIDITY: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);
/// The oldest Kubernetes minor kh drives. Older kubeadm releases are out of
/// upstream support and predate the config APIs kh renders (v1beta3/v1beta4).
pub const MIN_KUBERNETES_MINOR: u32 = 24;
/// kubeadm's config API moved to v1beta4 in Kubernetes 1.31.
const V1BETA4_SINCE_MINOR: u32 = 31;

const ENDPOINT_EXAMPLE: &str = "lb.example.internal:6443";
const ETCD_ENDPOINT_EXAMPLE: &str = "https://10.0.0.31:2379";
const NODE_EXAMPLE: &str = "{name: cp-1, role: control-plane, address: 10.0.0.11}";

// ---------------------------------------------------------------------------
// Errors

/// One problem in a spec: where it is and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct SpecError {
    /// The field, e.g. `spec.nodes[1].address`.
    pub path: String,
    /// What is wrong, and the fix.
    pub message: String,
}

impl SpecError {
    /// Both parts are cut to a readable length: a path can hold a key from
    /// the spec and serde's messages quote values, either of which may be
    /// huge.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError {
            path: crate::bounds::cut(path.into(), 256),
            message: crate::bounds::cut(message.into(), 2048),
        }
    }
}

/// Every problem found in a spec; `Display` prints one `path: message` per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecErrors {
    pub errors: Vec<SpecError>,
}

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

// ---------------------------------------------------------------------------
// Validated domain types

/// A validated cluster spec. Every field has been checked by [`parse`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSpec {
    pub name: String,
    pub kubernetes_version: Option<KubeVersion>,
    pub control_plane_endpoint: Option<Endpoint>,
    pub networking: Networking,
    pub etcd: Etcd,
    pub certificates: CertDistribution,
    /// `certificates.renewBefore` and `certificates.autoRenew`.
    pub cert_renewal: CertRenewal,
    pub cni: Option<Cni>,
    pub load_balancer: LoadBalancerType,
    pub worker_concurrency: u32,
    /// `upgrade`: how `khctl upgrade` proceeds.
    pub upgrade: UpgradeSettings,
    pub nodes: Vec<NodeSpec>,
    /// `etcd.snapshots`: the coordinator's scheduled etcd snapshots; `None`
    /// when the spec has none.
    pub etcd_snapshots: Option<SnapshotSchedule>,
    /// `spares`: enrolled hosts kept prepared (preflight and prepare, never
    /// joined) for the remediation of a failed control plane. Never a node.
    pub spares: Vec<String>,
    /// `remediation`: how the coordinator replaces a failed control plane
    /// with a spare on its own.
    pub remediation: Remediation,
}

/// `remediation` in the spec: the coordinator's automatic replacement of a
/// failed control plane by a spare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Remediation {
    /// Off unless the spec turns it on.
    pub enabled: bool,
    /// How long a control plane must stay failed, continuously, before it
    /// is replaced.
    #[serde(with = "crate::time::serde_duration")]
    pub unhealthy_after: std::time::Duration,
    /// How many replacements at once: 1 (one membership change at a time).
    pub max_in_flight: u32,
    /// The window in which at most `max_retry` replacements of one control
    /// plane are attempted.
    #[serde(with = "crate::time::serde_duration")]
    pub retry_period: std::time::Duration,
    pub max_retry: u32,
    /// A control plane healthy this long has its retry count reset.
    #[serde(with = "crate::time::serde_duration")]
    pub min_healthy_period: std::time::Duration,
}

impl Default for Remediation {
    fn default() -> Self {
        Remediation {
            enabled: false,
            unhealthy_after: std::time::Duration::from_secs(300),
            max_in_flight: 1,
            retry_period: std::time::Duration::from_secs(600),
            max_retry: 3,
            min_healthy_period: std::time::Duration::from_secs(3600),
        }
    }
}

/// How often the coordinator takes an automatic etcd snapshot, and how many
/// automatic ones it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSchedule {
    #[serde(with = "crate::time::serde_duration")]
    pub every: std::time::Duration,
    pub keep: u32,
}

/// `upgrade` in the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeSettings {
    /// How many workers `khctl upgrade` drains and upgrades at once.
    pub max_unavailable: MaxUnavailable,
}

/// `upgrade.maxUnavailable`: a number of workers (at least 1) or a
/// percentage of them (1% to 100%, rounded down, at least one worker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxUnavailable {
    Count(u32),
    Percent(u32),
}

impl Default for MaxUnavailable {
    fn default() -> Self {
        MaxUnavailable::Count(1)
    }
}

impl MaxUnavailable {
    /// How many of `workers` workers make one batch: at least one (when
    /// there are any), at most all of them.
    pub fn batch(self, workers: usize) -> usize {
        let n = match self {
            MaxUnavailable::Count(n) => n as usize,
            MaxUnavailable::Percent(p) => workers * p as usize / 100,
        };
        n.clamp(1, workers.max(1))
    }
}

impl fmt::Display for MaxUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaxUnavailable::Count(n) => write!(f, "{n}"),
            MaxUnavailable::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for MaxUnavailable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MaxUnavailable::Count(n) => s.serialize_u32(*n),
            MaxUnavailable::Percent(_) => s.collect_str(self),
        }
    }
}

pub const DEFAULT_SNAPSHOT_EVERY: std::time::Duration = std::time::Duration::from_secs(6 * 3600);
pub const DEFAULT_SNAPSHOT_KEEP: u32 = 14;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Networking {
    pub pod_subnet: IpNet,
    pub service_subnet: IpNet,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(
    tag = "topology",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Etcd {
    /// kubeadm runs an etcd member on every control plane.
    Stacked,
    /// The operator runs etcd; kube-apiserver connects to it over TLS.
    External {
        /// `https://host:port` client URLs, as written in the spec.
        endpoints: Vec<String>,
        ca_file: PathBuf,
        cert_file: PathBuf,
        key_file: PathBuf,
    },
}

/// How the shared cluster CA set reaches a joining control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertDistribution {
    /// kubeadm's encrypted `kubeadm-certs` Secret (`--upload-certs`).
    UploadCerts,
    /// The coordinator keeps the CA set and places it on the host.
    Coordinator,
}

impl CertDistribution {
    pub fn as_str(self) -> &'static str {
        match self {
            CertDistribution::UploadCerts => "upload-certs",
            CertDistribution::Coordinator => "coordinator",
        }
    }
}

/// When the cluster's kubeadm certificates are due for renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertRenewal {
    /// A certificate expiring within this window needs renewal: `khctl
    /// certs check` warns, and automatic renewal renews.
    #[serde(serialize_with = "crate::time::serde_duration::serialize")]
    pub renew_before: std::time::Duration,
    /// Whether the coordinator renews on its own when one is due.
    pub auto_renew: bool,
}

impl Default for CertRenewal {
    fn default() -> Self {
        CertRenewal {
            renew_before: DEFAULT_RENEW_BEFORE,
            auto_renew: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cni {
    /// The manifest to apply after `kubeadm init`; relative paths are relative
    /// to the spec file (see [`ClusterSpec::resolve_relative_paths`]).
    pub manifest: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadBalancerType {
    /// kh configures haproxy on the spec's `loadbalancer` nodes.
    Haproxy,
    /// Something outside kh already balances `controlPlaneEndpoint`.
    External,
}

impl LoadBalancerType {
    pub fn as_str(self) -> &'static str {
        match self {
            LoadBalancerType::Haproxy => "haproxy",
            LoadBalancerType::External => "external",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeRole {
    ControlPlane,
    Worker,
    #[serde(rename = "loadbalancer")]
    LoadBalancer,
}

impl NodeRole {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::ControlPlane => "control-plane",
            NodeRole::Worker => "worker",
            NodeRole::LoadBalancer => "loadbalancer",
        }
    }
}

impl fmt::Display for NodeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeSpec {
    /// A valid [`NodeName`]; kept as a string because that is how every
    /// consumer (kubeadm flags, registry keys) uses it.
    pub name: String,
    pub role: NodeRole,
    /// The address kubeadm advertises for this node; always an IP.
    pub address: IpAddr,
}

impl ClusterSpec {
    pub fn control_planes(&self) -> impl Iterator<Item = &NodeSpec> + '_ {
        self.nodes_with(NodeRole::ControlPlane)
    }

    pub fn workers(&self) -> impl Iterator<Item = &NodeSpec> + '_ {
        self.nodes_with(NodeRole::Worker)
    }

    pub fn load_balancers(&self) -> impl Iterator<Item = &NodeSpec> + '_ {
        self.nodes_with(NodeRole::LoadBalancer)
    }

    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.name == name)
    }

    fn nodes_with(&self, role: NodeRole) -> impl Iterator<Item = &NodeSpec> + '_ {
        self.nodes.iter().filter(move |n| n.role == role)
    }

    /// Judges the number of control planes. This is not part of [`parse`]
    /// because a deliberate operator may want an even count (`--allow-even`),
    /// and a single control plane is legitimate for a test cluster.
    ///
    /// `Ok(None)`: fine. `Ok(Some(warning))`: allowed, but tell the operator.
    /// `Err`: refuse unless the operator passes `--allow-even`.
    pub fn control_plane_count_check(&self, allow_even: bool) -> Result<Option<String>, SpecError> {
        const SINGLE: &str =
            "a single control plane is not highly available: losing it stops the cluster";
        const TWO: &str = "two control planes are worse than one: etcd needs both for quorum, so either failure stops the cluster";
        let n = self.control_planes().count();
        let refuse = |why: String, instead: &str| {
            SpecError::new(
                "spec.nodes",
                format!("{why}. Use {instead}, or pass --allow-even"),
            )
        };
        match n {
            0 => Err(SpecError::new(
                "spec.nodes",
                "no node has role control-plane; add one (three for high availability)",
            )),
            1 => Ok(Some(SINGLE.to_string())),
            2 if allow_even => Ok(Some(TWO.to_string())),
            2 => Err(refuse(TWO.to_string(), "1 or 3")),
            n if n % 2 == 0 => {
                // etcd needs a majority, n/2 + 1, so an even member count
                // tolerates exactly as many failures as the odd count below it
                // while adding one more member that can fail.
                let why = format!(
                    "{n} control planes survive no more failures than {}: etcd needs {} of them for quorum, so the cluster tolerates only {}",
                    n - 1,
                    n / 2 + 1,
                    failures((n - 1) / 2)
                );
                if allow_even {
                    Ok(Some(why))
                } else {
                    Err(refuse(why, &format!("{} or {}", n - 1, n + 1)))
                }
            }
            _ => Ok(None),
        }
    }

    /// One error per spec node that has not enrolled with the coordinator; a
    /// rollout cannot run steps on a host without an agent identity.
    pub fn check_enrolled(&self, enrolled: &[&str]) -> Vec<SpecError> {
        let mut errs: Vec<SpecError> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| !enrolled.contains(&n.name.as_str()))
            .map(|(i, n)| {
                SpecError::new(
                    format!("spec.nodes[{i}].name"),
                    format!(
                        "node {:?} is not enrolled with the coordinator; enroll it first: `khctl token create --node {}` and run the printed command on the host",
                        n.name, n.name
                    ),
                )
            })
            .collect();
        errs.extend(
            self.spares
                .iter()
                .enumerate()
                .filter(|(_, n)| !enrolled.contains(&n.as_str()))
                .map(|(i, n)| {
                    SpecError::new(
                        format!("spec.spares[{i}]"),
                        format!(
                            "spare {n:?} is not enrolled with the coordinator; enroll it first: `khctl token create --node {n}` and run the printed command on the host, or remove it from spares"
                        ),
                    )
                }),
        );
        errs
    }

    /// Makes the spec's relative file paths (CNI manifest, external etcd
    /// certificates) relative to `spec_dir`, the directory of the spec file,
    /// so the spec means the same thing whatever directory khctl runs in.
    pub fn resolve_relative_paths(&mut self, spec_dir: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = spec_dir.join(&*p);
            }
        };
        if let Some(cni) = &mut self.cni {
            resolve(&mut cni.manifest);
        }
        if let Etcd::External {
            ca_file,
            cert_file,
            key_file,
            ..
        } = &mut self.etcd
        {
            resolve(ca_file);
            resolve(cert_file);
            resolve(key_file);
        }
    }
}

fn failures(k: usize) -> String {
    if k == 1 {
        "one failure".to_string()
    } else {
        format!("{k} failures")
    }
}
