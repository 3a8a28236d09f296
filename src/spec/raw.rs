//! The raw YAML shape. Scalars that need validation are plain strings here so that
//! one bad value does not stop the others from being checked. `expecting`
//! replaces the Rust struct name that serde would otherwise quote to the
//! operator in a type error.

use super::*;

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with apiVersion, kind, metadata and spec"
)]
pub(super) struct RawCluster {
    pub(super) api_version: Option<String>,
    pub(super) kind: Option<String>,
    pub(super) metadata: Option<RawMetadata>,
    pub(super) spec: Option<RawSpec>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping such as {name: prod}"
)]
pub(super) struct RawMetadata {
    pub(super) name: Option<String>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping of the cluster's settings and nodes"
)]
pub(super) struct RawSpec {
    pub(super) kubernetes_version: Option<String>,
    pub(super) control_plane_endpoint: Option<String>,
    pub(super) networking: Option<RawNetworking>,
    pub(super) etcd: Option<RawEtcd>,
    pub(super) certificates: Option<RawCertificates>,
    pub(super) cni: Option<RawCni>,
    pub(super) load_balancer: Option<RawLoadBalancer>,
    pub(super) rollout: Option<RawRollout>,
    pub(super) upgrade: Option<RawUpgrade>,
    pub(super) nodes: Option<Vec<RawNode>>,
    pub(super) spares: Option<Vec<String>>,
    pub(super) remediation: Option<RawRemediation>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping such as {enabled: true, unhealthyAfter: 5m, maxInFlight: 1, retryPeriod: 10m, maxRetry: 3, minHealthyPeriod: 1h}"
)]
pub(super) struct RawRemediation {
    pub(super) enabled: Option<bool>,
    pub(super) unhealthy_after: Option<String>,
    /// Signed and wide so that 0 or -1 reach validation.
    pub(super) max_in_flight: Option<i64>,
    pub(super) retry_period: Option<String>,
    pub(super) max_retry: Option<i64>,
    pub(super) min_healthy_period: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping such as {podSubnet: 10.244.0.0/16, serviceSubnet: 10.96.0.0/12}"
)]
pub(super) struct RawNetworking {
    pub(super) pod_subnet: Option<String>,
    pub(super) service_subnet: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping such as {topology: stacked}"
)]
pub(super) struct RawEtcd {
    pub(super) topology: Option<EtcdTopology>,
    pub(super) endpoints: Option<Vec<String>>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) cert_file: Option<PathBuf>,
    pub(super) key_file: Option<PathBuf>,
    pub(super) snapshots: Option<RawSnapshots>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping such as {every: 6h, keep: 14}"
)]
pub(super) struct RawSnapshots {
    pub(super) every: Option<String>,
    pub(super) keep: Option<i64>,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum EtcdTopology {
    Stacked,
    External,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping such as {distribution: upload-certs, renewBefore: 30d, autoRenew: true}"
)]
pub(super) struct RawCertificates {
    pub(super) distribution: Option<CertDistribution>,
    pub(super) renew_before: Option<String>,
    pub(super) auto_renew: Option<bool>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping such as {manifest: ./cni/flannel.yaml}"
)]
pub(super) struct RawCni {
    pub(super) manifest: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping such as {type: haproxy}"
)]
pub(super) struct RawLoadBalancer {
    #[serde(rename = "type")]
    pub(super) kind: Option<LoadBalancerType>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping such as {workerConcurrency: 10}"
)]
pub(super) struct RawRollout {
    /// Signed and wide so that 0 or -1 reach validation and get a range
    /// message instead of a serde type error.
    pub(super) worker_concurrency: Option<i64>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping such as {maxUnavailable: 1} or {maxUnavailable: 25%}"
)]
pub(super) struct RawUpgrade {
    /// Any YAML value, so that a count, a percentage and garbage all reach
    /// validation and get a message that names the field.
    pub(super) max_unavailable: Option<serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping such as {name: cp-1, role: control-plane, address: 10.0.0.11}"
)]
pub(super) struct RawNode {
    pub(super) name: Option<String>,
    pub(super) role: Option<NodeRole>,
    pub(super) address: Option<String>,
}
