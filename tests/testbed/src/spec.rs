//! Cluster specs for testbed clusters, shared by kh-sandbox and the tests.

use std::path::{Path, PathBuf};

/// A stand-in CNI: applying a DaemonSet is what makes the kubectl double
/// report nodes Ready, as a real CNI's pods do.
pub const CNI_MANIFEST: &str = "# A stand-in CNI for the kh testbed: applying a DaemonSet is what makes the\n# kubectl double report nodes Ready.\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: kube-flannel\n---\napiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: kube-flannel-ds\n  namespace: kube-flannel\nspec:\n  selector:\n    matchLabels: {app: flannel}\n  template:\n    metadata:\n      labels: {app: flannel}\n    spec:\n      containers:\n        - name: kube-flannel\n          image: ghcr.io/flannel-io/flannel:v0.26.1\n";

/// One node line of a spec.
#[derive(Debug, Clone)]
pub struct SpecNode {
    pub name: String,
    pub role: String,
    pub ip: String,
}

/// cluster.yaml text: v1.32.0, the stand-in CNI at ./cni.yaml, and as the
/// endpoint the first load-balancer node's `IP:6443` (kh configures HAProxy
/// there), or the first control plane's without one. `extra` lines are
/// appended inside `spec:` (two-space indented already).
pub fn cluster_yaml(name: &str, nodes: &[SpecNode], extra: &str) -> String {
    let lb = nodes.iter().find(|n| n.role == "loadbalancer");
    let (endpoint, comment) = match lb {
        Some(lb) => (
            format!("{}:6443", lb.ip),
            format!("HAProxy on {}, configured by kh", lb.name),
        ),
        None => (
            nodes
                .iter()
                .find(|n| n.role == "control-plane")
                .map(|n| format!("{}:6443", n.ip))
                .unwrap_or_default(),
            "The first control plane: this cluster has no load balancer".to_string(),
        ),
    };
    let mut y = format!(
        "apiVersion: kh.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: {name}\nspec:\n  kubernetesVersion: v1.32.0\n  # {comment}.\n  controlPlaneEndpoint: \"{endpoint}\"\n  networking:\n    podSubnet: 10.244.0.0/16\n    serviceSubnet: 10.96.0.0/12\n  cni:\n    manifest: ./cni.yaml\n{extra}  nodes:\n"
    );
    for n in nodes {
        y.push_str(&format!(
            "    - {{name: {}, role: {}, address: {}}}\n",
            n.name, n.role, n.ip
        ));
    }
    y
}

/// Writes `dir/<file>` and `dir/cni.yaml`; returns the spec's path.
pub fn write(dir: &Path, file: &str, yaml: &str) -> std::io::Result<PathBuf> {
    std::fs::write(dir.join("cni.yaml"), CNI_MANIFEST)?;
    let p = dir.join(file);
    std::fs::write(&p, yaml)?;
    Ok(p)
}
