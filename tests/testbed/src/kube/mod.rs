//! The Kubernetes side of the testbed: what the kubeadm, kubectl and kubelet
//! doubles and the apiserver double share. Cluster state lives in the real
//! etcd cluster that the kubelet double runs from kubeadm's static pod
//! manifests; only the apiserver double talks to etcd for cluster state, and
//! the command-line doubles talk to the apiserver double over HTTPS, so a
//! cluster without quorum fails everywhere the way a real one does.

pub mod config;
pub mod etcd_client;
pub mod etcdctl;
pub mod http;
pub mod kubeconfig;
pub mod manifest;
pub mod pki;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The Kubernetes version a testbed node's tools report unless the node's
/// `kube-version` file says otherwise.
pub const DEFAULT_VERSION: &str = "v1.32.0";

/// Env vars the testbed sets on agents and kubelet doubles; the doubles
/// read them, product code never does.
pub const ROOT_ENV: &str = "KH_TESTBED_ROOT";
pub const NODE_DIR_ENV: &str = "KH_TESTBED_NODE_DIR";

/// Files in a node dir that describe the host to the doubles.
pub const NODE_IP_FILE: &str = "ip";
pub const NODE_VERSION_FILE: &str = "kube-version";
pub const KUBELET_PID_FILE: &str = "kubelet.pid";

/// The real etcd tools, used by the kubelet double (etcd) and by the kubeadm
/// double, as kubeadm's Go etcd client (etcdctl). The apiserver double keeps
/// an in-process client instead (`etcd_client`).
pub const ETCD_BIN: &str = "/usr/bin/etcd";
pub const ETCDCTL_BIN: &str = "/usr/bin/etcdctl";

/// One testbed host as a double sees it.
#[derive(Debug, Clone)]
pub struct NodeEnv {
    /// The host root: `/etc/kubernetes` of the host is `<root>/etc/kubernetes`.
    pub root: PathBuf,
    /// The node's testbed dir (logs, pid files, switches).
    pub node_dir: PathBuf,
    /// The world (sandbox) dir, for the clock.
    pub world_dir: Option<PathBuf>,
}

impl NodeEnv {
    pub fn new(root: &Path, node_dir: &Path, world_dir: Option<&Path>) -> NodeEnv {
        NodeEnv {
            root: root.to_path_buf(),
            node_dir: node_dir.to_path_buf(),
            world_dir: world_dir.map(Path::to_path_buf),
        }
    }

    /// From `KH_TESTBED_ROOT`, `KH_TESTBED_NODE_DIR` and `KH_TESTBED_DIR`.
    pub fn from_env() -> Option<NodeEnv> {
        let get = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Some(NodeEnv {
            root: get(ROOT_ENV)?,
            node_dir: get(NODE_DIR_ENV)?,
            world_dir: crate::clock::world_dir_from_env(),
        })
    }

    /// A host path under the root.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    /// The host's address (the testbed's stand-in for the default route's
    /// interface address that kubeadm detects).
    pub fn ip(&self) -> Option<Ipv4Addr> {
        std::fs::read_to_string(self.node_dir.join(NODE_IP_FILE))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The host name, lowercased, as kubeadm's default node name.
    pub fn hostname(&self) -> String {
        std::fs::read_to_string(self.path("/etc/hostname"))
            .map(|s| s.trim().to_lowercase())
            .unwrap_or_else(|_| "localhost".into())
    }

    /// The version of kubeadm installed on this host (`version_of`).
    pub fn version(&self) -> String {
        self.version_of("kubeadm")
    }

    /// The version of `tool` (kubeadm, kubelet, kubectl) on this host: its
    /// package's in `<node>/packages.json` when installed (the package
    /// manager doubles), else the node's `kube-version` file, else
    /// [`DEFAULT_VERSION`].
    pub fn version_of(&self, tool: &str) -> String {
        if let Some(v) = crate::doubles::packages::installed_version(&self.node_dir, tool) {
            return v;
        }
        std::fs::read_to_string(self.node_dir.join(NODE_VERSION_FILE))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_VERSION.to_string())
    }

    pub fn now(&self) -> std::time::SystemTime {
        crate::clock::now_in(self.world_dir.as_deref())
    }

    /// Whether this host's kubelet double is running.
    pub fn kubelet_running(&self) -> bool {
        std::fs::read_to_string(self.node_dir.join(KUBELET_PID_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .is_some_and(|pid| crate::proc::alive_with(pid, &self.node_dir.to_string_lossy()))
    }
}

/// `(major, minor)` of `v1.32.0`.
pub fn minor_of(version: &str) -> Option<(u32, u32)> {
    let v = version.trim().trim_start_matches('v');
    let mut it = v.split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()?;
    Some((major, minor))
}

/// Standard base64 of bytes.
pub fn b64(data: impl AsRef<[u8]>) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

pub fn unb64(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()
}

/// Writes `contents` to `path`, creating parent dirs, with `mode`.
pub fn write_file(path: &Path, contents: impl AsRef<[u8]>, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::write(path, contents)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}
