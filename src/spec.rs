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
    pub cni: Option<Cni>,
    pub load_balancer: LoadBalancerType,
    pub worker_concurrency: u32,
    pub nodes: Vec<NodeSpec>,
}

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
        self.nodes
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
            .collect()
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

// ---------------------------------------------------------------------------
// Kubernetes version

/// An exact Kubernetes release kh supports: `v1.<minor>.<patch>` with an
/// optional pre-release such as `-rc.1`, minor at least
/// [`MIN_KUBERNETES_MINOR`]. Ordered by semantic-versioning precedence, so
/// `v1.32.0-rc.1 < v1.32.0`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KubeVersion {
    major: u32,
    minor: u32,
    patch: u32,
    pre: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} {why}", crate::echo(input))]
pub struct InvalidVersion {
    pub input: String,
    pub why: String,
}

impl KubeVersion {
    /// Accepts `v1.32.0` and `1.32.0` alike; both print as `v1.32.0`.
    pub fn parse(text: &str) -> Result<Self, InvalidVersion> {
        let bad = |why: String| InvalidVersion {
            input: text.to_string(),
            why,
        };
        let syntax = || {
            bad("is not an exact Kubernetes release: write v<major>.<minor>.<patch>, e.g. v1.32.0 (kh installs exactly what the spec names)".to_string())
        };
        let body = text.strip_prefix('v').unwrap_or(text);
        let (core, pre) = match body.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (body, None),
        };
        let numbers = core
            .split('.')
            .map(parse_number)
            .collect::<Option<Vec<u32>>>()
            .ok_or_else(syntax)?;
        let [major, minor, patch] = numbers[..] else {
            return Err(syntax());
        };
        if let Some(pre) = pre {
            let identifier_ok = |id: &str| {
                !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            };
            if !pre.split('.').all(identifier_ok) {
                return Err(syntax());
            }
        }
        if major != 1 {
            return Err(bad(
                "is not a Kubernetes 1.x release: kh drives kubeadm for Kubernetes 1.x only; use e.g. v1.32.0".to_string(),
            ));
        }
        if minor < MIN_KUBERNETES_MINOR {
            return Err(bad(format!(
                "is too old: kh supports kubeadm releases v1.{MIN_KUBERNETES_MINOR} and newer only; choose a newer release, e.g. v1.32.0"
            )));
        }
        Ok(KubeVersion {
            major,
            minor,
            patch,
            pre: pre.map(str::to_string),
        })
    }

    pub fn major(&self) -> u32 {
        self.major
    }

    pub fn minor(&self) -> u32 {
        self.minor
    }

    pub fn patch(&self) -> u32 {
        self.patch
    }

    /// The pre-release part without its `-`, e.g. `rc.1`.
    pub fn pre(&self) -> Option<&str> {
        self.pre.as_deref()
    }

    /// The kubeadm configuration API this release reads.
    pub fn kubeadm_api_version(&self) -> &'static str {
        if self.minor >= V1BETA4_SINCE_MINOR {
            "kubeadm.k8s.io/v1beta4"
        } else {
            "kubeadm.k8s.io/v1beta3"
        }
    }
}

/// A version number component: digits only, without leading zeros, as
/// semantic versioning requires (so `v1.032.0` is refused, not reinterpreted).
fn parse_number(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

impl FromStr for KubeVersion {
    type Err = InvalidVersion;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KubeVersion::parse(s)
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)?;
        if let Some(pre) = &self.pre {
            write!(f, "-{pre}")?;
        }
        Ok(())
    }
}

impl Serialize for KubeVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Ord for KubeVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (&self.pre, &other.pre) {
                (None, None) => Ordering::Equal,
                // A pre-release comes before its release.
                (None, Some(_)) => Ordering::Greater,
                (Some(_), None) => Ordering::Less,
                (Some(a), Some(b)) => compare_pre_release(a, b),
            })
    }
}

impl PartialOrd for KubeVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Semantic-versioning precedence of pre-release identifiers: numeric ones
/// compare as numbers (so `rc.2 < rc.10`) and sort before alphanumeric ones;
/// a shorter list that is a prefix of a longer one comes first.
fn compare_pre_release(a: &str, b: &str) -> Ordering {
    let numeric = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mut left = a.split('.');
    let mut right = b.split('.');
    loop {
        match (left.next(), right.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let order = match (numeric(x), numeric(y)) {
                    // Comparing length first compares numbers of any size
                    // without overflow.
                    (true, true) => x.len().cmp(&y.len()).then_with(|| x.cmp(y)),
                    (true, false) => Ordering::Less,
                    (false, true) => Ordering::Greater,
                    (false, false) => x.cmp(y),
                };
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Endpoint

/// `host:port` where host is an IP address or an RFC 1123 DNS name. IPv6
/// hosts are written `[fd00::1]:6443` and kept here without brackets.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {why}", crate::echo(input))]
pub struct InvalidEndpoint {
    pub input: String,
    pub why: String,
}

impl Endpoint {
    pub fn parse(text: &str) -> Result<Self, InvalidEndpoint> {
        let bad = |why: &str| InvalidEndpoint {
            input: text.to_string(),
            why: why.to_string(),
        };
        if text.is_empty() {
            return Err(bad("it is empty"));
        }
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| bad("'[' is never closed"))?;
            let ip: Ipv6Addr = inside
                .parse()
                .map_err(|_| bad("only an IPv6 address may stand in brackets"))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| bad("the port is missing"))?;
            (ip.to_string(), port)
        } else {
            let Some((host, port)) = text.rsplit_once(':') else {
                return Err(bad("the port is missing"));
            };
            if host.contains(':') {
                return Err(bad("IPv6 addresses need brackets"));
            }
            if host.parse::<IpAddr>().is_err() && !is_dns_name(host) {
                return Err(bad(&format!(
                    "host {} is neither an IP address nor an RFC 1123 DNS name",
                    crate::echo(host)
                )));
            }
            (host.to_string(), port)
        };
        // u16's parser accepts a leading '+', which no endpoint should have.
        let port = Some(port)
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|&p| p != 0)
            .ok_or_else(|| bad("port must be a number 1-65535"))?;
        Ok(Endpoint { host, port })
    }

    /// The host as an IP address, when it is one.
    pub fn host_ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl FromStr for Endpoint {
    type Err = InvalidEndpoint;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Endpoint::parse(s)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// An RFC 1123 host name. A name made only of numeric labels is refused: it is
/// a mistyped IPv4 address (`10.0.0.256`), never a real host name.
fn is_dns_name(s: &str) -> bool {
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    (1..=253).contains(&s.len())
        && s.split('.').all(label_ok)
        && !s.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

/// A DNS-1123 label, as Kubernetes requires for object names.
fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

// ---------------------------------------------------------------------------
// Raw YAML shape. Scalars that need validation are plain strings here so that
// one bad value does not stop the others from being checked. `expecting`
// replaces the Rust struct name that serde would otherwise quote to the
// operator in a type error.

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with apiVersion, kind, metadata and spec"
)]
struct RawCluster {
    api_version: Option<String>,
    kind: Option<String>,
    metadata: Option<RawMetadata>,
    spec: Option<RawSpec>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping such as {name: prod}"
)]
struct RawMetadata {
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping of the cluster's settings and nodes"
)]
struct RawSpec {
    kubernetes_version: Option<String>,
    control_plane_endpoint: Option<String>,
    networking: Option<RawNetworking>,
    etcd: Option<RawEtcd>,
    certificates: Option<RawCertificates>,
    cni: Option<RawCni>,
    load_balancer: Option<RawLoadBalancer>,
    rollout: Option<RawRollout>,
    nodes: Option<Vec<RawNode>>,
}

#[derive(Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping such as {podSubnet: 10.244.0.0/16, serviceSubnet: 10.96.0.0/12}"
)]
struct RawNetworking {
    pod_subnet: Option<String>,
    service_subnet: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping such as {topology: stacked}"
)]
struct RawEtcd {
    topology: Option<EtcdTopology>,
    endpoints: Option<Vec<String>>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum EtcdTopology {
    Stacked,
    External,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping such as {distribution: upload-certs}"
)]
struct RawCertificates {
    distribution: Option<CertDistribution>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping such as {manifest: ./cni/flannel.yaml}"
)]
struct RawCni {
    manifest: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping such as {type: haproxy}"
)]
struct RawLoadBalancer {
    #[serde(rename = "type")]
    kind: Option<LoadBalancerType>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping such as {workerConcurrency: 10}"
)]
struct RawRollout {
    /// Signed and wide so that 0 or -1 reach validation and get a range
    /// message instead of a serde type error.
    worker_concurrency: Option<i64>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping such as {name: cp-1, role: control-plane, address: 10.0.0.11}"
)]
struct RawNode {
    name: Option<String>,
    role: Option<NodeRole>,
    address: Option<String>,
}

// ---------------------------------------------------------------------------
// Parsing and validation

/// Parses and validates a cluster spec. YAML and shape errors (syntax, unknown
/// fields, wrong types) stop parsing and come alone; validation errors are all
/// collected.
pub fn parse(text: &str) -> Result<ClusterSpec, SpecErrors> {
    let single = |path: &str, message: String| SpecErrors {
        errors: vec![SpecError::new(path, message)],
    };
    // A syntax error has no field path: a first pass that only checks the
    // YAML keeps the typed pass from blaming whatever field it was reading.
    if let Err(e) = serde_yaml::from_str::<serde::de::IgnoredAny>(text) {
        return Err(single(DOCUMENT, e.to_string()));
    }
    if serde_yaml::from_str::<Option<serde::de::IgnoredAny>>(text).is_ok_and(|v| v.is_none()) {
        return Err(single(
            DOCUMENT,
            format!("the spec is empty; start with apiVersion: {API_VERSION}, kind: {KIND}, metadata.name and spec.nodes"),
        ));
    }
    let raw: RawCluster = serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(
        text,
    ))
    .map_err(|e| {
        let path = e.path().to_string();
        // serde_path_to_error prints the document root as ".", which
        // reads like a typo in a `path: message` line.
        let path = if path == "." {
            DOCUMENT.to_string()
        } else {
            path
        };
        let message = e.into_inner().to_string();
        let message = strip_yaml_path(&message, &path).to_string();
        single(&path, message)
    })?;
    let mut errors = Errors::default();
    match convert(raw, &mut errors) {
        Some(spec) if errors.0.is_empty() => Ok(spec),
        _ => Err(SpecErrors { errors: errors.0 }),
    }
}

/// The path of errors that concern the whole document rather than a field.
const DOCUMENT: &str = "(document)";

/// serde_yaml prefixes its messages with its own idea of the path (the
/// enclosing mapping for an unknown field). The line already starts with the
/// more precise path from serde_path_to_error, so the prefix only repeats it.
fn strip_yaml_path<'a>(message: &'a str, path: &str) -> &'a str {
    match message.split_once(": ") {
        Some((head, rest)) if !head.is_empty() && !head.contains(' ') && path.starts_with(head) => {
            rest
        }
        _ => message,
    }
}

#[derive(Default)]
struct Errors(Vec<SpecError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(SpecError::new(path, message));
    }
}

/// Returns the spec when every part converted; errors are collected in `errs`
/// either way, in document order.
fn convert(raw: RawCluster, errs: &mut Errors) -> Option<ClusterSpec> {
    match raw.api_version.as_deref() {
        Some(API_VERSION) => {}
        Some(other) => errs.push(
            "apiVersion",
            format!(
                "{} is not a version this kh reads; set apiVersion: {API_VERSION}",
                crate::echo(other)
            ),
        ),
        None => errs.push(
            "apiVersion",
            format!("missing; add apiVersion: {API_VERSION}"),
        ),
    }
    match raw.kind.as_deref() {
        Some(KIND) => {}
        Some(other) => errs.push(
            "kind",
            format!(
                "{} is not a kh cluster spec; set kind: {KIND}",
                crate::echo(other)
            ),
        ),
        None => errs.push("kind", format!("missing; add kind: {KIND}")),
    }
    let name = match raw.metadata.and_then(|m| m.name) {
        Some(name) if is_dns_label(&name) => Some(name),
        Some(name) => {
            errs.push("metadata.name", format!("{} is not a DNS-1123 label; use lowercase letters, digits and '-', at most 63 characters, starting and ending with a letter or digit, e.g. prod", crate::echo(&name)));
            None
        }
        None => {
            errs.push(
                "metadata.name",
                "missing; name the cluster, e.g. metadata: {name: prod}",
            );
            None
        }
    };
    let Some(spec) = raw.spec else {
        errs.push(
            "spec",
            format!("missing; add spec: with at least the nodes, e.g. spec: {{nodes: [{NODE_EXAMPLE}]}}"),
        );
        return None;
    };

    let kubernetes_version = match spec.kubernetes_version {
        None => Ok(None),
        Some(v) => KubeVersion::parse(&v).map(Some).map_err(|e| {
            errs.push("spec.kubernetesVersion", format!("kubernetesVersion {e}"));
        }),
    };
    let control_plane_endpoint = match spec.control_plane_endpoint {
        None => Ok(None),
        Some(ep) => Endpoint::parse(&ep).map(Some).map_err(|e| {
            // An IPv6 example for an IPv6 mistake; otherwise the usual name.
            let example = if ep.starts_with('[') || ep.matches(':').count() > 1 {
                "[fd00::10]:6443"
            } else {
                ENDPOINT_EXAMPLE
            };
            errs.push(
                "spec.controlPlaneEndpoint",
                format!("controlPlaneEndpoint {e}, e.g. {example}"),
            );
        }),
    };
    let networking = convert_networking(spec.networking.unwrap_or_default(), errs);
    let etcd = convert_etcd(spec.etcd.unwrap_or_default(), errs);
    let certificates = spec
        .certificates
        .and_then(|c| c.distribution)
        .unwrap_or(CertDistribution::UploadCerts);
    let cni = match spec.cni {
        None => Ok(None),
        Some(RawCni {
            manifest: Some(manifest),
        }) if !manifest.as_os_str().is_empty() => Ok(Some(Cni { manifest })),
        Some(_) => {
            errs.push("spec.cni.manifest", "missing; give the CNI manifest's path relative to this file, e.g. ./cni/flannel.yaml, or remove cni to install one yourself");
            Err(())
        }
    };
    let explicit_lb = spec.load_balancer.and_then(|lb| lb.kind);
    let worker_concurrency = match spec.rollout.and_then(|r| r.worker_concurrency) {
        None => Ok(DEFAULT_WORKER_CONCURRENCY),
        Some(n) => u32::try_from(n)
            .ok()
            .filter(|n| (1..=MAX_WORKER_CONCURRENCY).contains(n))
            .ok_or_else(|| {
                errs.push(
                    "spec.rollout.workerConcurrency",
                    format!("{n} is out of range; use 1 to {MAX_WORKER_CONCURRENCY} (default {DEFAULT_WORKER_CONCURRENCY})"),
                );
            }),
    };

    let (nodes, roles) = convert_nodes(spec.nodes, networking.as_ref().ok(), errs);

    // Role checks are only meaningful when every node's role is known: a node
    // missing its role may be the very control plane or load balancer.
    let load_balancer = roles.as_ref().map(|roles| {
        let lb_nodes: Vec<usize> = (0..roles.len())
            .filter(|&i| roles[i] == NodeRole::LoadBalancer)
            .collect();
        if !roles.is_empty() && !roles.contains(&NodeRole::ControlPlane) {
            errs.push(
                "spec.nodes",
                "no node has role control-plane; give at least one node role: control-plane (three for high availability)",
            );
        }
        let lb = explicit_lb.unwrap_or(if lb_nodes.is_empty() {
            LoadBalancerType::External
        } else {
            LoadBalancerType::Haproxy
        });
        match lb {
            LoadBalancerType::Haproxy if lb_nodes.is_empty() => errs.push(
                "spec.loadBalancer.type",
                "haproxy needs at least one node with role loadbalancer; add one, or set type: external if a load balancer outside kh fronts the control planes",
            ),
            LoadBalancerType::External => {
                for i in lb_nodes {
                    errs.push(
                        format!("spec.nodes[{i}].role"),
                        "loadbalancer nodes need loadBalancer.type: haproxy, but it is external; remove the node or set loadBalancer.type: haproxy",
                    );
                }
            }
            LoadBalancerType::Haproxy => {}
        }
        lb
    });

    Some(ClusterSpec {
        name: name?,
        kubernetes_version: kubernetes_version.ok()?,
        control_plane_endpoint: control_plane_endpoint.ok()?,
        networking: networking.ok()?,
        etcd: etcd?,
        certificates,
        cni: cni.ok()?,
        load_balancer: load_balancer?,
        worker_concurrency: worker_concurrency.ok()?,
        nodes: nodes?,
    })
}

fn convert_networking(raw: RawNetworking, errs: &mut Errors) -> Result<Networking, ()> {
    let pod = subnet(
        "spec.networking.podSubnet",
        raw.pod_subnet.as_deref(),
        DEFAULT_POD_SUBNET,
        errs,
    );
    let service = subnet(
        "spec.networking.serviceSubnet",
        raw.service_subnet.as_deref(),
        DEFAULT_SERVICE_SUBNET,
        errs,
    );
    let (pod_subnet, service_subnet) = (pod.ok_or(())?, service.ok_or(())?);
    if overlaps(&pod_subnet, &service_subnet) {
        errs.push(
            "spec.networking.serviceSubnet",
            format!("{service_subnet} overlaps podSubnet {pod_subnet}; Service and Pod addresses must not collide, so pick ranges that do not overlap (the defaults are podSubnet {DEFAULT_POD_SUBNET} and serviceSubnet {DEFAULT_SERVICE_SUBNET})"),
        );
        return Err(());
    }
    Ok(Networking {
        pod_subnet,
        service_subnet,
    })
}

fn subnet(path: &str, value: Option<&str>, default: &str, errs: &mut Errors) -> Option<IpNet> {
    let text = value.unwrap_or(default);
    let Ok(net) = text.parse::<IpNet>() else {
        errs.push(
            path,
            format!(
                "{} is not a CIDR; write address/prefix, e.g. {default}",
                crate::echo(text)
            ),
        );
        return None;
    };
    // kubeadm would silently use the network part; say so instead, since a
    // stray host part usually means a typo in the prefix length.
    if net.trunc() != net {
        errs.push(
            path,
            format!(
                "{net} has host bits set; write the network address, {}",
                net.trunc()
            ),
        );
        return None;
    }
    Some(net)
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn convert_etcd(raw: RawEtcd, errs: &mut Errors) -> Option<Etcd> {
    match raw.topology.unwrap_or(EtcdTopology::Stacked) {
        EtcdTopology::Stacked => {
            let external_only = [
                ("endpoints", raw.endpoints.is_some()),
                ("caFile", raw.ca_file.is_some()),
                ("certFile", raw.cert_file.is_some()),
                ("keyFile", raw.key_file.is_some()),
            ];
            let mut ok = true;
            for (field, present) in external_only {
                if present {
                    ok = false;
                    errs.push(
                        format!("spec.etcd.{field}"),
                        "only used with topology: external; remove it, or set topology: external to use an etcd cluster of your own",
                    );
                }
            }
            ok.then_some(Etcd::Stacked)
        }
        EtcdTopology::External => {
            let endpoints = match raw.endpoints {
                None => {
                    errs.push("spec.etcd.endpoints", format!("missing; external etcd needs its client URLs, e.g. [{ETCD_ENDPOINT_EXAMPLE}]"));
                    None
                }
                Some(list) if list.is_empty() => {
                    errs.push("spec.etcd.endpoints", format!("empty; external etcd needs at least one client URL, e.g. [{ETCD_ENDPOINT_EXAMPLE}]"));
                    None
                }
                Some(list) => {
                    let mut ok = true;
                    for (i, url) in list.iter().enumerate() {
                        if let Err(problem) = etcd_endpoint(url) {
                            ok = false;
                            errs.push(
                                format!("spec.etcd.endpoints[{i}]"),
                                format!("etcd endpoint {problem}; write https://host:port, e.g. {ETCD_ENDPOINT_EXAMPLE}"),
                            );
                        }
                    }
                    ok.then_some(list)
                }
            };
            let mut file = |field: &str, value: Option<PathBuf>, what: &str| match value {
                Some(p) if !p.as_os_str().is_empty() => Some(p),
                _ => {
                    errs.push(
                        format!("spec.etcd.{field}"),
                        format!("missing; external etcd needs {what}"),
                    );
                    None
                }
            };
            let ca_file = file(
                "caFile",
                raw.ca_file,
                "the CA certificate that signed the etcd servers' certificates",
            );
            let cert_file = file(
                "certFile",
                raw.cert_file,
                "the client certificate kube-apiserver presents to etcd",
            );
            let key_file = file(
                "keyFile",
                raw.key_file,
                "the private key of that client certificate",
            );
            Some(Etcd::External {
                endpoints: endpoints?,
                ca_file: ca_file?,
                cert_file: cert_file?,
                key_file: key_file?,
            })
        }
    }
}

/// Checks an external etcd client URL; the error names the URL and what is
/// wrong with it.
fn etcd_endpoint(url: &str) -> Result<Endpoint, String> {
    let Some(rest) = url.strip_prefix("https://") else {
        return Err(format!(
            "{} does not use https, but kube-apiserver talks to external etcd over TLS only",
            crate::echo(url)
        ));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    Endpoint::parse(rest).map_err(|e| format!("{}: {}", crate::echo(url), e.why))
}

/// Converts the node list. Returns the nodes when all converted, and the roles
/// when every node has one (for the role checks of the caller).
fn convert_nodes(
    raw: Option<Vec<RawNode>>,
    networking: Option<&Networking>,
    errs: &mut Errors,
) -> (Option<Vec<NodeSpec>>, Option<Vec<NodeRole>>) {
    let Some(raw) = raw else {
        errs.push(
            "spec.nodes",
            format!(
                "missing; list the cluster's hosts, e.g. nodes: [{}]",
                NODE_EXAMPLE
            ),
        );
        return (None, None);
    };
    if raw.is_empty() {
        errs.push(
            "spec.nodes",
            format!(
                "empty; list at least one control-plane node, e.g. nodes: [{}]",
                NODE_EXAMPLE
            ),
        );
        return (None, Some(Vec::new()));
    }
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut addresses: HashMap<IpAddr, usize> = HashMap::new();
    let mut nodes = Vec::with_capacity(raw.len());
    let mut roles = Vec::with_capacity(raw.len());
    let mut all_ok = true;
    let mut all_roles = true;
    for (i, node) in raw.into_iter().enumerate() {
        let path = format!("spec.nodes[{i}]");
        let name = match node.name {
            None => {
                errs.push(
                    format!("{path}.name"),
                    "missing; give the node its Kubernetes node name, e.g. cp-1",
                );
                None
            }
            Some(name) => match NodeName::new(&name) {
                Err(e) => {
                    errs.push(format!("{path}.name"), format!("node name {} is invalid: {}; use a lowercase RFC 1123 name such as cp-1", crate::echo(&name), e.why));
                    None
                }
                Ok(_) => match names.get(&name) {
                    Some(first) => {
                        errs.push(format!("{path}.name"), format!("node name {} is already used by spec.nodes[{first}]; give every node a unique name", crate::echo(&name)));
                        None
                    }
                    None => {
                        names.insert(name.clone(), i);
                        Some(name)
                    }
                },
            },
        };
        let role = node.role;
        match role {
            Some(role) => roles.push(role),
            None => {
                all_roles = false;
                errs.push(
                    format!("{path}.role"),
                    "missing; set role: control-plane, worker or loadbalancer",
                );
            }
        }
        let address = match node.address {
            None => {
                errs.push(
                    format!("{path}.address"),
                    "missing; give the IP address kubeadm advertises for this node, e.g. 10.0.0.11",
                );
                None
            }
            Some(text) => node_address(&path, &text, networking, &mut addresses, i, errs),
        };
        match (name, role, address) {
            (Some(name), Some(role), Some(address)) => nodes.push(NodeSpec {
                name,
                role,
                address,
            }),
            _ => all_ok = false,
        }
    }
    (all_ok.then_some(nodes), all_roles.then_some(roles))
}

fn node_address(
    node_path: &str,
    text: &str,
    networking: Option<&Networking>,
    seen: &mut HashMap<IpAddr, usize>,
    index: usize,
    errs: &mut Errors,
) -> Option<IpAddr> {
    let path = format!("{node_path}.address");
    let Ok(ip) = text.parse::<IpAddr>() else {
        errs.push(path, format!("{} is not an IP address; kubeadm's advertiseAddress needs one, so write the host's IP, e.g. 10.0.0.11", crate::echo(text)));
        return None;
    };
    // Loopback stays allowed on purpose: the local testbed gives each host
    // its own 127.0.0.x address.
    if ip.is_unspecified() {
        errs.push(
            path,
            format!(
                "{ip} is the unspecified address; write the IP the other hosts reach this node on"
            ),
        );
        return None;
    }
    if let Some(first) = seen.get(&ip) {
        errs.push(
            path,
            format!(
                "{ip} is already used by spec.nodes[{first}]; every node needs its own address"
            ),
        );
        return None;
    }
    seen.insert(ip, index);
    if let Some(net) = networking {
        let clashes = [
            ("podSubnet", &net.pod_subnet, "Pod"),
            ("serviceSubnet", &net.service_subnet, "Service"),
        ];
        for (field, subnet, what) in clashes {
            if subnet.contains(&ip) {
                errs.push(path, format!("{ip} lies inside {field} {subnet}, so {what} addresses would collide with the node; move spec.networking.{field} or the node to a range that does not contain node addresses"));
                return None;
            }
        }
    }
    Some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = "\
apiVersion: kh.io/v1alpha1
kind: Cluster
metadata: {name: prod}
spec:
  kubernetesVersion: 1.31.2-rc.1
  controlPlaneEndpoint: lb.example.internal:6443
  networking: {podSubnet: 10.32.0.0/16, serviceSubnet: 10.112.0.0/12}
  etcd:
    topology: external
    endpoints: [https://10.0.0.31:2379, 'https://[fd00::32]:2379/']
    caFile: etcd/ca.crt
    certFile: /etc/kh/etcd/client.crt
    keyFile: etcd/client.key
  certificates: {distribution: coordinator}
  cni: {manifest: ./cni/flannel.yaml}
  loadBalancer: {type: haproxy}
  rollout: {workerConcurrency: 25}
  nodes:
    - {name: cp-1, role: control-plane, address: 10.0.0.11}
    - {name: cp-2, role: control-plane, address: 10.0.0.12}
    - {name: cp-3, role: control-plane, address: 10.0.0.13}
    - {name: w-1, role: worker, address: 10.0.0.21}
    - {name: w-2, role: worker, address: 'fd00::22'}
    - {name: lb-1, role: loadbalancer, address: 10.0.0.5}
";

    const MINIMAL: &str = "\
apiVersion: kh.io/v1alpha1
kind: Cluster
metadata: {name: lab}
spec:
  nodes:
    - {name: cp-1, role: control-plane, address: 127.0.0.11}
    - {name: w-1, role: worker, address: 127.0.0.21}
";

    fn node(name: &str, role: NodeRole, address: &str) -> NodeSpec {
        NodeSpec {
            name: name.to_string(),
            role,
            address: address.parse().unwrap(),
        }
    }

    fn with_control_planes(n: usize) -> ClusterSpec {
        let mut spec = parse(MINIMAL).unwrap();
        spec.nodes = (1..=n)
            .map(|i| {
                node(
                    &format!("cp-{i}"),
                    NodeRole::ControlPlane,
                    &format!("10.0.0.{i}"),
                )
            })
            .collect();
        spec
    }

    #[test]
    fn full_spec_parses_to_exactly_what_it_says() {
        let spec = parse(FULL).unwrap();
        let expected = ClusterSpec {
            name: "prod".into(),
            kubernetes_version: Some(KubeVersion::parse("v1.31.2-rc.1").unwrap()),
            control_plane_endpoint: Some(Endpoint {
                host: "lb.example.internal".into(),
                port: 6443,
            }),
            networking: Networking {
                pod_subnet: "10.32.0.0/16".parse().unwrap(),
                service_subnet: "10.112.0.0/12".parse().unwrap(),
            },
            etcd: Etcd::External {
                endpoints: vec![
                    "https://10.0.0.31:2379".into(),
                    "https://[fd00::32]:2379/".into(),
                ],
                ca_file: "etcd/ca.crt".into(),
                cert_file: "/etc/kh/etcd/client.crt".into(),
                key_file: "etcd/client.key".into(),
            },
            certificates: CertDistribution::Coordinator,
            cni: Some(Cni {
                manifest: "./cni/flannel.yaml".into(),
            }),
            load_balancer: LoadBalancerType::Haproxy,
            worker_concurrency: 25,
            nodes: vec![
                node("cp-1", NodeRole::ControlPlane, "10.0.0.11"),
                node("cp-2", NodeRole::ControlPlane, "10.0.0.12"),
                node("cp-3", NodeRole::ControlPlane, "10.0.0.13"),
                node("w-1", NodeRole::Worker, "10.0.0.21"),
                node("w-2", NodeRole::Worker, "fd00::22"),
                node("lb-1", NodeRole::LoadBalancer, "10.0.0.5"),
            ],
        };
        assert_eq!(spec, expected);
        assert_eq!(
            spec.kubernetes_version.as_ref().unwrap().to_string(),
            "v1.31.2-rc.1"
        );
    }

    #[test]
    fn minimal_spec_takes_the_defaults() {
        let spec = parse(MINIMAL).unwrap();
        assert_eq!(
            spec,
            ClusterSpec {
                name: "lab".into(),
                kubernetes_version: None,
                control_plane_endpoint: None,
                networking: Networking {
                    pod_subnet: DEFAULT_POD_SUBNET.parse().unwrap(),
                    service_subnet: DEFAULT_SERVICE_SUBNET.parse().unwrap(),
                },
                etcd: Etcd::Stacked,
                certificates: CertDistribution::UploadCerts,
                cni: None,
                load_balancer: LoadBalancerType::External,
                worker_concurrency: DEFAULT_WORKER_CONCURRENCY,
                nodes: vec![
                    node("cp-1", NodeRole::ControlPlane, "127.0.0.11"),
                    node("w-1", NodeRole::Worker, "127.0.0.21"),
                ],
            }
        );
        assert_eq!(spec.networking.pod_subnet.to_string(), "10.244.0.0/16");
        assert_eq!(spec.networking.service_subnet.to_string(), "10.96.0.0/12");
    }

    #[test]
    fn load_balancer_defaults_to_haproxy_exactly_when_a_loadbalancer_node_exists() {
        let with_lb =
            format!("{MINIMAL}    - {{name: lb-1, role: loadbalancer, address: 127.0.0.5}}\n");
        assert_eq!(
            parse(&with_lb).unwrap().load_balancer,
            LoadBalancerType::Haproxy
        );
        assert_eq!(
            parse(MINIMAL).unwrap().load_balancer,
            LoadBalancerType::External
        );
        // Empty sub-sections mean "all defaults", like absent ones.
        let empty_sections = MINIMAL.replace(
            "  nodes:\n",
            "  etcd: {}\n  certificates: {}\n  loadBalancer: {}\n  rollout: {}\n  networking: {}\n  nodes:\n",
        );
        assert_eq!(parse(&empty_sections).unwrap(), parse(MINIMAL).unwrap());
    }

    #[test]
    fn role_helpers_and_node_lookup() {
        let spec = parse(FULL).unwrap();
        let names = |it: &mut dyn Iterator<Item = &NodeSpec>| {
            it.map(|n| n.name.clone()).collect::<Vec<_>>()
        };
        assert_eq!(names(&mut spec.control_planes()), ["cp-1", "cp-2", "cp-3"]);
        assert_eq!(names(&mut spec.workers()), ["w-1", "w-2"]);
        assert_eq!(names(&mut spec.load_balancers()), ["lb-1"]);
        assert_eq!(
            spec.node("w-2").unwrap().address,
            "fd00::22".parse::<IpAddr>().unwrap()
        );
        assert_eq!(spec.node("w-3"), None);
        assert_eq!(NodeRole::ControlPlane.as_str(), "control-plane");
        assert_eq!(NodeRole::LoadBalancer.to_string(), "loadbalancer");
        assert_eq!(CertDistribution::UploadCerts.as_str(), "upload-certs");
        assert_eq!(LoadBalancerType::Haproxy.as_str(), "haproxy");
    }

    #[test]
    fn json_output_uses_the_yaml_vocabulary() {
        let json = serde_json::to_value(parse(FULL).unwrap()).unwrap();
        assert_eq!(json["kubernetesVersion"], "v1.31.2-rc.1");
        assert_eq!(json["controlPlaneEndpoint"]["port"], 6443);
        assert_eq!(json["networking"]["podSubnet"], "10.32.0.0/16");
        assert_eq!(json["etcd"]["topology"], "external");
        assert_eq!(json["etcd"]["caFile"], "etcd/ca.crt");
        assert_eq!(json["certificates"], "coordinator");
        assert_eq!(json["loadBalancer"], "haproxy");
        assert_eq!(json["workerConcurrency"], 25);
        assert_eq!(json["nodes"][0]["role"], "control-plane");
        assert_eq!(json["nodes"][5]["role"], "loadbalancer");
        let minimal = serde_json::to_value(parse(MINIMAL).unwrap()).unwrap();
        assert_eq!(minimal["etcd"], serde_json::json!({"topology": "stacked"}));
    }

    #[test]
    fn all_validation_errors_are_reported_one_per_line() {
        let text = MINIMAL
            .replace("kind: Cluster", "kind: Clusters")
            .replace("127.0.0.21", "worker-1");
        let errors = parse(&text).unwrap_err();
        assert_eq!(errors.errors.len(), 2);
        assert_eq!(errors.errors[0].path, "kind");
        assert_eq!(errors.errors[1].path, "spec.nodes[1].address");
        assert_eq!(
            errors.to_string(),
            format!("{}\n{}", errors.errors[0], errors.errors[1])
        );
        assert!(errors
            .to_string()
            .starts_with("kind: \"Clusters\" is not a kh cluster spec; set kind: Cluster\n"));
    }

    #[test]
    fn relative_paths_resolve_against_the_spec_directory() {
        let mut spec = parse(FULL).unwrap();
        spec.resolve_relative_paths(Path::new("/srv/clusters/prod"));
        assert_eq!(
            spec.cni.as_ref().unwrap().manifest,
            Path::new("/srv/clusters/prod/./cni/flannel.yaml")
        );
        let Etcd::External {
            ca_file, cert_file, ..
        } = &spec.etcd
        else {
            panic!("the full spec has external etcd");
        };
        assert_eq!(ca_file, Path::new("/srv/clusters/prod/etcd/ca.crt"));
        assert_eq!(
            cert_file,
            Path::new("/etc/kh/etcd/client.crt"),
            "absolute paths stay"
        );
    }

    #[test]
    fn control_plane_counts_are_judged_for_quorum() {
        assert_eq!(
            with_control_planes(1).control_plane_count_check(false),
            Ok(Some(
                "a single control plane is not highly available: losing it stops the cluster"
                    .into()
            ))
        );
        assert_eq!(
            with_control_planes(2).control_plane_count_check(false),
            Err(SpecError::new(
                "spec.nodes",
                "two control planes are worse than one: etcd needs both for quorum, so either failure stops the cluster. Use 1 or 3, or pass --allow-even"
            ))
        );
        assert_eq!(
            with_control_planes(2).control_plane_count_check(true),
            Ok(Some(
                "two control planes are worse than one: etcd needs both for quorum, so either failure stops the cluster".into()
            ))
        );
        assert_eq!(
            with_control_planes(3).control_plane_count_check(false),
            Ok(None)
        );
        assert_eq!(
            with_control_planes(4).control_plane_count_check(false),
            Err(SpecError::new(
                "spec.nodes",
                "4 control planes survive no more failures than 3: etcd needs 3 of them for quorum, so the cluster tolerates only one failure. Use 3 or 5, or pass --allow-even"
            ))
        );
        assert_eq!(
            with_control_planes(6).control_plane_count_check(true),
            Ok(Some(
                "6 control planes survive no more failures than 5: etcd needs 4 of them for quorum, so the cluster tolerates only 2 failures".into()
            ))
        );
        assert_eq!(
            with_control_planes(5).control_plane_count_check(false),
            Ok(None)
        );
        assert_eq!(
            with_control_planes(5).control_plane_count_check(true),
            Ok(None)
        );
        assert!(with_control_planes(0)
            .control_plane_count_check(true)
            .is_err());
    }

    #[test]
    fn check_enrolled_names_each_missing_node_with_the_enroll_command() {
        let spec = parse(FULL).unwrap();
        let all: Vec<&str> = spec.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(spec.check_enrolled(&all), Vec::new());
        let errors = spec.check_enrolled(&["cp-1", "cp-2", "cp-3", "w-1", "unrelated"]);
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "spec.nodes[4].name: node \"w-2\" is not enrolled with the coordinator; enroll it first: `khctl token create --node w-2` and run the printed command on the host",
                "spec.nodes[5].name: node \"lb-1\" is not enrolled with the coordinator; enroll it first: `khctl token create --node lb-1` and run the printed command on the host",
            ]
        );
    }

    #[test]
    fn kube_versions_parse_normalize_and_refuse() {
        let v = KubeVersion::parse("1.32.0").unwrap();
        assert_eq!(v.to_string(), "v1.32.0");
        assert_eq!((v.major(), v.minor(), v.patch(), v.pre()), (1, 32, 0, None));
        assert_eq!(v, "v1.32.0".parse::<KubeVersion>().unwrap());
        let rc = KubeVersion::parse("v1.33.0-rc.1").unwrap();
        assert_eq!(rc.pre(), Some("rc.1"));
        assert_eq!(rc.to_string(), "v1.33.0-rc.1");
        assert_eq!(
            KubeVersion::parse("v1.24.0").unwrap().minor(),
            MIN_KUBERNETES_MINOR
        );

        let syntax = "is not an exact Kubernetes release: write v<major>.<minor>.<patch>, e.g. v1.32.0 (kh installs exactly what the spec names)";
        for bad in [
            "latest",
            "stable",
            "1.32",
            "v1.32",
            "v1.32.x",
            "v1.32.0.1",
            "",
            "v",
            "V1.32.0",
            "v1.032.0",
            "v1.32.-1",
            "v1.32.0-",
            "v1.32.0-rc..1",
            "v1.32.0+k3s1",
            " v1.32.0",
        ] {
            let err = KubeVersion::parse(bad).unwrap_err();
            assert_eq!(err.why, syntax, "{bad:?}");
            assert_eq!(err.input, bad);
        }
        assert!(KubeVersion::parse("v1.20.0")
            .unwrap_err()
            .why
            .starts_with("is too old"));
        assert!(KubeVersion::parse("v1.23.17")
            .unwrap_err()
            .why
            .starts_with("is too old"));
        assert!(KubeVersion::parse("v2.0.0")
            .unwrap_err()
            .why
            .contains("1.x only"));
        assert!(KubeVersion::parse("v0.32.0")
            .unwrap_err()
            .why
            .contains("1.x only"));
    }

    #[test]
    fn kubeadm_api_version_switches_at_1_31() {
        let api = |v: &str| KubeVersion::parse(v).unwrap().kubeadm_api_version();
        assert_eq!(api("v1.24.0"), "kubeadm.k8s.io/v1beta3");
        assert_eq!(api("v1.30.5"), "kubeadm.k8s.io/v1beta3");
        assert_eq!(api("v1.31.0-alpha.1"), "kubeadm.k8s.io/v1beta4");
        assert_eq!(api("v1.31.0"), "kubeadm.k8s.io/v1beta4");
        assert_eq!(api("v1.33.2"), "kubeadm.k8s.io/v1beta4");
    }

    #[test]
    fn kube_versions_order_by_semver_precedence() {
        let ordered = [
            "v1.24.0",
            "v1.30.5",
            "v1.31.0-alpha.1",
            "v1.31.0-alpha.beta",
            "v1.31.0-beta.2",
            "v1.31.0-beta.11",
            "v1.31.0-rc.1",
            "v1.31.0-rc.1.1",
            "v1.31.0",
            "v1.31.1",
            "v1.100.0",
        ];
        let versions: Vec<KubeVersion> = ordered
            .iter()
            .map(|v| KubeVersion::parse(v).unwrap())
            .collect();
        for pair in versions.windows(2) {
            assert!(pair[0] < pair[1], "{} < {}", pair[0], pair[1]);
        }
        let mut shuffled = versions.clone();
        shuffled.reverse();
        shuffled.sort();
        assert_eq!(shuffled, versions);
        assert_eq!(
            KubeVersion::parse("1.31.0")
                .unwrap()
                .cmp(&KubeVersion::parse("v1.31.0").unwrap()),
            Ordering::Equal
        );
    }

    #[test]
    fn endpoints_parse_hosts_and_ports() {
        let ep = |s: &str| Endpoint::parse(s).map(|e| (e.host.clone(), e.port, e.to_string()));
        assert_eq!(
            ep("lb.example.internal:6443"),
            Ok((
                "lb.example.internal".into(),
                6443,
                "lb.example.internal:6443".into()
            ))
        );
        assert_eq!(
            ep("10.0.0.5:443"),
            Ok(("10.0.0.5".into(), 443, "10.0.0.5:443".into()))
        );
        assert_eq!(
            ep("[::1]:6443"),
            Ok(("::1".into(), 6443, "[::1]:6443".into()))
        );
        assert_eq!(
            ep("[FD00:0::10]:65535"),
            Ok(("fd00::10".into(), 65535, "[fd00::10]:65535".into()))
        );
        assert_eq!(ep("LB-1:1").unwrap().1, 1);
        assert_eq!(
            Endpoint::parse("[::1]:6443").unwrap().host_ip(),
            Some("::1".parse().unwrap())
        );
        assert_eq!(Endpoint::parse("lb:6443").unwrap().host_ip(), None);

        let why = |s: &str| Endpoint::parse(s).unwrap_err().why;
        assert_eq!(why(""), "it is empty");
        assert_eq!(why("lb"), "the port is missing");
        assert_eq!(why("[::1]"), "the port is missing");
        for bad_port in [
            "lb:abc", "lb:", "lb:0", "lb:65536", "lb:+443", "lb:-1", "[::1]:x",
        ] {
            assert_eq!(why(bad_port), "port must be a number 1-65535", "{bad_port}");
        }
        assert_eq!(why("::1:6443"), "IPv6 addresses need brackets");
        assert_eq!(why("[::1:6443"), "'[' is never closed");
        assert_eq!(
            why("[lb]:6443"),
            "only an IPv6 address may stand in brackets"
        );
        for bad_host in [
            "-lb:6443",
            "lb-:6443",
            "lb..x:6443",
            "lb_1:6443",
            "10.0.0.256:6443",
            ":6443",
        ] {
            assert!(
                why(bad_host).contains("neither an IP address nor an RFC 1123 DNS name"),
                "{bad_host}"
            );
        }
        assert!(why(&format!("{}:6443", "a".repeat(64))).contains("RFC 1123"));
        assert_eq!(
            Endpoint::parse("lb:abc").unwrap_err().to_string(),
            "\"lb:abc\": port must be a number 1-65535"
        );
    }

    #[test]
    fn cluster_names_are_dns_labels() {
        for ok in ["prod", "a", "prod-2", &"a".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in [
            "",
            "Prod",
            "prod.eu",
            "-prod",
            "prod-",
            "pr_od",
            &"a".repeat(64),
        ] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }

    #[test]
    fn errors_quoting_a_huge_key_or_value_stay_short() {
        let huge = "k".repeat(1 << 20);
        for text in [
            format!("apiVersion: {API_VERSION}\nkind: Cluster\nmetadata: {{name: x}}\n? {huge}\n: 1\n"),
            format!("apiVersion: {huge}\nkind: Cluster\nmetadata: {{name: x}}\n"),
            format!("apiVersion: {API_VERSION}\nkind: Cluster\nmetadata: {{name: x}}\nspec:\n  nodes:\n  - {{name: {huge}, role: worker, address: 10.0.0.1}}\n"),
        ] {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.len() < 4096, "a {}-byte error: {}", err.len(), &err[..300]);
            assert!(err.contains("(1048576 bytes)"), "{err}");
        }
    }

    #[test]
    fn worker_concurrency_bounds() {
        let with = |n: &str| {
            parse(&MINIMAL.replace(
                "  nodes:\n",
                &format!("  rollout: {{workerConcurrency: {n}}}\n  nodes:\n"),
            ))
            .map(|s| s.worker_concurrency)
        };
        assert_eq!(with("1"), Ok(1));
        assert_eq!(with("1000"), Ok(1000));
        for bad in ["0", "-1", "1001", "99999999999"] {
            let err = with(bad).unwrap_err();
            assert_eq!(
                err.errors[0].path, "spec.rollout.workerConcurrency",
                "{bad}"
            );
        }
    }

    /// Every `src/spec_corpus/*.yaml` starts with `# expect: <line>` comments:
    /// the exact `Display` of the errors its parse must produce, in order.
    #[test]
    fn corpus_of_invalid_specs_gives_exactly_the_expected_errors() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/spec_corpus");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        let mut failures = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            let expected: Vec<&str> = text
                .lines()
                .map_while(|l| l.strip_prefix("# expect: "))
                .collect();
            assert!(
                !expected.is_empty(),
                "{} has no `# expect:` line",
                file.display()
            );
            let actual = match parse(&text) {
                Ok(spec) => format!("parsed fine: {spec:?}"),
                Err(e) => e.to_string(),
            };
            if actual != expected.join("\n") {
                failures.push(format!(
                    "{}\n  expected:\n    {}\n  actual:\n    {}",
                    file.file_name().unwrap().to_string_lossy(),
                    expected.join("\n    "),
                    actual.replace('\n', "\n    ")
                ));
            }
        }
        assert!(
            files.len() >= 20,
            "the corpus shrank to {} files",
            files.len()
        );
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}
