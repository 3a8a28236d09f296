//! Kubernetes operations on one host, through the [`Host`](crate::Host) seam
//! only: kubeadm init/join/reset and token upkeep, kubectl with the node's
//! `admin.conf`, placing the shared cluster CA set, etcd membership through
//! the real `etcdctl`, read-only probes (node files, nodes, `/readyz`,
//! `/version`), and upgrades: the Kubernetes packages through apt or dnf
//! (`packages`), `kubeadm upgrade` (`upgrade`) and drains (`drain`).
//!
//! Steps follow the crate's plan-then-apply contract. What differs from the
//! host-preparation steps is that most of these carry secrets (join tokens,
//! certificate keys, CA private keys, kubeadm configs with a token inside):
//! plans and reports describe secret files without their content, secret
//! arguments show as `<redacted>`, and command output is scrubbed of every
//! secret the step knows, because kubeadm echoes tokens and keys.

pub mod apply;
pub mod certs;
pub mod drain;
pub mod error;
pub mod etcd;
pub mod files;
pub mod kubeadm;
pub mod kubectl;
pub mod packages;
pub mod readyz;
pub mod renew;
pub mod restore;
pub mod snapshot;
pub mod upgrade;
pub mod version;

pub use apply::{go_duration, StepFile};
pub use certs::{cluster_certs, ClusterCert};
pub use drain::{KubectlDrain, KubectlUncordon};
pub use error::KubeError;
pub use etcd::{
    EndpointHealth, EndpointStatus, EndpointStatuses, EtcdClient, EtcdMember, EtcdTls, Scope,
    UnreachableEndpoint,
};
pub use files::{
    local_etcd_endpoint, node_state, read_admin_conf, read_files, NodeState, PlaceFiles,
};
pub use kubeadm::{
    remove_leftover_configs, KubeadmInit, KubeadmJoin, KubeadmReset, TokenCreate, TokenDelete,
    UploadCerts, STEP_CONFIG_FILES,
};
pub use kubectl::{
    kubectl_delete_node, kubectl_nodes, valid_node_name, KubeNode, KubectlApply, KubectlDeleteNode,
};
pub use packages::{
    package_versions, InstalledPackage, PackageInstall, PackageManager, PackageSource,
    PackageVersions,
};
pub use readyz::{apiserver_readyz, apiserver_version, READYZ_TIMEOUT};
pub use renew::{CertsRenew, Component, RestartControlPlane, RENEWABLE_CERTS};
pub use snapshot::{remove_leftover_snapshots, SnapshotStatus, TakenSnapshot};
pub use upgrade::{KubeadmUpgradeApply, KubeadmUpgradeNode, KubeadmUpgradePlan, RestartKubelet};
pub use version::{KubeVersion, Minor};

/// The kubeconfig kubeadm writes for cluster administrators on a control plane.
pub const ADMIN_CONF: &str = "/etc/kubernetes/admin.conf";
/// The kubelet's kubeconfig; it exists once a node has joined (or initialized).
pub const KUBELET_CONF: &str = "/etc/kubernetes/kubelet.conf";
pub const MANIFESTS_DIR: &str = "/etc/kubernetes/manifests";
pub const APISERVER_MANIFEST: &str = "/etc/kubernetes/manifests/kube-apiserver.yaml";
pub const ETCD_MANIFEST: &str = "/etc/kubernetes/manifests/etcd.yaml";
/// The cluster CA certificate, which verifies every apiserver.
pub const CLUSTER_CA_CERT: &str = "/etc/kubernetes/pki/ca.crt";
/// Where the agent keeps files that live for one step.
pub const AGENT_STATE_DIR: &str = "/var/lib/kh-agent";
pub const INIT_CONFIG_FILE: &str = "/var/lib/kh-agent/kubeadm-init.yaml";
pub const JOIN_CONFIG_FILE: &str = "/var/lib/kh-agent/kubeadm-join.yaml";
pub const TOKEN_CONFIG_FILE: &str = "/var/lib/kh-agent/kubeadm-token.yaml";
pub const UPLOAD_CERTS_CONFIG_FILE: &str = "/var/lib/kh-agent/kubeadm-upload-certs.yaml";

/// The shared cluster CA set that every control plane must have the same
/// copy of (the kubeadm HA guide's list of files to copy), and nothing else:
/// the node's own serving and client certificates are generated per node.
pub const SHARED_CA_FILES: [&str; 8] = [
    "/etc/kubernetes/pki/ca.crt",
    "/etc/kubernetes/pki/ca.key",
    "/etc/kubernetes/pki/sa.key",
    "/etc/kubernetes/pki/sa.pub",
    "/etc/kubernetes/pki/front-proxy-ca.crt",
    "/etc/kubernetes/pki/front-proxy-ca.key",
    "/etc/kubernetes/pki/etcd/ca.crt",
    "/etc/kubernetes/pki/etcd/ca.key",
];

/// The mode a placed file of the CA set gets: certificates and the service
/// account public key are public, private keys are root's only.
pub fn shared_ca_file_mode(path: &str) -> u32 {
    if path.ends_with(".key") {
        0o600
    } else {
        0o644
    }
}
