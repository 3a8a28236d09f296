//! Static pod manifests: kubeadm's rendering (what the kubeadm double
//! writes to `/etc/kubernetes/manifests`) and the kubelet's reading.

use serde::Deserialize;
use serde_json::json;

pub const MANIFESTS_DIR: &str = "/etc/kubernetes/manifests";
pub const PKI_DIR: &str = "/etc/kubernetes/pki";

/// The parts of a Pod the kubelet double needs.
#[derive(Debug, Clone, Deserialize)]
pub struct Pod {
    pub metadata: Meta,
    pub spec: PodSpec,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct Meta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PodSpec {
    pub containers: Vec<Container>,
    #[serde(default)]
    pub volumes: Vec<Volume>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub volume_mounts: Vec<Mount>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    pub name: String,
    pub mount_path: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    pub host_path: Option<HostPath>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HostPath {
    pub path: String,
}

impl Pod {
    pub fn parse(text: &str) -> Result<Pod, String> {
        serde_yaml::from_str(text).map_err(|e| e.to_string())
    }

    /// The first container's command line with every path that lies under
    /// one of its hostPath mounts rewritten to the host path under `root`,
    /// which is what the process in a container with those mounts sees.
    pub fn host_command(&self, root: &std::path::Path) -> Vec<String> {
        let Some(c) = self.spec.containers.first() else {
            return vec![];
        };
        let mounts: Vec<(String, String)> = c
            .volume_mounts
            .iter()
            .filter_map(|m| {
                let v = self.spec.volumes.iter().find(|v| v.name == m.name)?;
                Some((m.mount_path.clone(), v.host_path.as_ref()?.path.clone()))
            })
            .collect();
        let map = |value: &str| -> String {
            // The longest mount that contains the path wins.
            let best = mounts
                .iter()
                .filter(|(mp, _)| {
                    value == mp || value.starts_with(&format!("{}/", mp.trim_end_matches('/')))
                })
                .max_by_key(|(mp, _)| mp.len());
            match best {
                Some((mp, hp)) => {
                    let rest = &value[mp.trim_end_matches('/').len()..];
                    format!(
                        "{}/{}{}",
                        root.display(),
                        hp.trim_start_matches('/').trim_end_matches('/'),
                        rest
                    )
                }
                None => value.to_string(),
            }
        };
        c.command
            .iter()
            .chain(c.args.iter())
            .map(|arg| match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") && value.starts_with('/') => {
                    format!("{flag}={}", map(value))
                }
                _ if arg.starts_with('/') => map(arg),
                _ => arg.clone(),
            })
            .collect()
    }
}

fn host_path_volume(name: &str, path: &str, kind: &str) -> serde_json::Value {
    json!({"hostPath": {"path": path, "type": kind}, "name": name})
}

fn mount(name: &str, path: &str, read_only: bool) -> serde_json::Value {
    if read_only {
        json!({"mountPath": path, "name": name, "readOnly": true})
    } else {
        json!({"mountPath": path, "name": name})
    }
}

/// `--k=v` flags from defaults overridden/extended by extra args, sorted
/// like kubeadm's output.
fn flags(defaults: Vec<(String, String)>, extra: &[(String, String)]) -> Vec<String> {
    let mut m: std::collections::BTreeMap<String, String> = defaults.into_iter().collect();
    for (k, v) in extra {
        m.insert(k.clone(), v.clone());
    }
    m.into_iter().map(|(k, v)| format!("--{k}={v}")).collect()
}

fn kv(k: &str, v: impl Into<String>) -> (String, String) {
    (k.to_string(), v.into())
}

fn pod(
    name: &str,
    component: &str,
    image: &str,
    command: Vec<String>,
    annotations: serde_json::Value,
    mounts: Vec<serde_json::Value>,
    volumes: Vec<serde_json::Value>,
) -> String {
    let v = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "annotations": annotations,
            "labels": {"component": component, "tier": "control-plane"},
            "name": name,
            "namespace": "kube-system",
        },
        "spec": {
            "containers": [{
                "command": command,
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "name": name,
                "volumeMounts": mounts,
            }],
            "hostNetwork": true,
            "priority": 2000001000,
            "priorityClassName": "system-node-critical",
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "volumes": volumes,
        },
        "status": {},
    });
    serde_yaml::to_string(&v).unwrap_or_default()
}

/// Everything the etcd manifest depends on.
#[derive(Debug, Clone)]
pub struct EtcdPod {
    pub name: String,
    pub ip: String,
    pub data_dir: String,
    /// `name=https://ip:2380,...`
    pub initial_cluster: String,
    /// `None` for a new cluster, `Some("existing")` when joining.
    pub initial_cluster_state: Option<&'static str>,
    pub extra_args: Vec<(String, String)>,
}

/// kubeadm's etcd static pod, with two testbed deviations: etcd listens
/// for clients on the node address only (every testbed node shares
/// 127.0.0.1), and the raft timing is tightened for loopback
/// (`--heartbeat-interval=100`, `--election-timeout=1000` are etcd's own
/// defaults made explicit, so a test can see and change them).
pub fn etcd(p: &EtcdPod) -> String {
    let ip = &p.ip;
    let mut d = vec![
        kv("advertise-client-urls", format!("https://{ip}:2379")),
        kv("cert-file", "/etc/kubernetes/pki/etcd/server.crt"),
        kv("client-cert-auth", "true"),
        kv("data-dir", p.data_dir.clone()),
        kv("initial-advertise-peer-urls", format!("https://{ip}:2380")),
        kv("initial-cluster", p.initial_cluster.clone()),
        kv("key-file", "/etc/kubernetes/pki/etcd/server.key"),
        kv("listen-client-urls", format!("https://{ip}:2379")),
        kv("listen-metrics-urls", format!("http://{ip}:2381")),
        kv("listen-peer-urls", format!("https://{ip}:2380")),
        kv("name", p.name.clone()),
        kv("peer-cert-file", "/etc/kubernetes/pki/etcd/peer.crt"),
        kv("peer-client-cert-auth", "true"),
        kv("peer-key-file", "/etc/kubernetes/pki/etcd/peer.key"),
        kv("peer-trusted-ca-file", "/etc/kubernetes/pki/etcd/ca.crt"),
        kv("snapshot-count", "10000"),
        kv("trusted-ca-file", "/etc/kubernetes/pki/etcd/ca.crt"),
        kv("heartbeat-interval", "100"),
        kv("election-timeout", "1000"),
    ];
    if let Some(state) = p.initial_cluster_state {
        d.push(kv("initial-cluster-state", state));
    }
    let mut command = vec!["etcd".to_string()];
    command.extend(flags(d, &p.extra_args));
    pod(
        "etcd",
        "etcd",
        "registry.k8s.io/etcd:3.5.16-0",
        command,
        json!({"kubeadm.kubernetes.io/etcd.advertise-client-urls": format!("https://{ip}:2379")}),
        vec![
            mount("etcd-data", &p.data_dir, false),
            mount("etcd-certs", "/etc/kubernetes/pki/etcd", false),
        ],
        vec![
            host_path_volume(
                "etcd-certs",
                "/etc/kubernetes/pki/etcd",
                "DirectoryOrCreate",
            ),
            host_path_volume("etcd-data", &p.data_dir, "DirectoryOrCreate"),
        ],
    )
}

#[derive(Debug, Clone)]
pub struct ApiServerPod {
    pub ip: String,
    pub bind_port: u16,
    pub etcd_servers: Vec<String>,
    pub etcd_ca: String,
    pub etcd_cert: String,
    pub etcd_key: String,
    pub service_subnet: String,
    pub dns_domain: String,
    pub version: String,
    pub extra_args: Vec<(String, String)>,
}

/// kubeadm's kube-apiserver static pod. Testbed deviation: it sets
/// `--bind-address` to the node address (kube-apiserver's default is
/// 0.0.0.0, which every testbed node would share).
pub fn apiserver(p: &ApiServerPod) -> String {
    let pki = |f: &str| format!("{PKI_DIR}/{f}");
    let d = vec![
        kv("advertise-address", p.ip.clone()),
        kv("allow-privileged", "true"),
        kv("authorization-mode", "Node,RBAC"),
        kv("bind-address", p.ip.clone()),
        kv("client-ca-file", pki("ca.crt")),
        kv("enable-admission-plugins", "NodeRestriction"),
        kv("enable-bootstrap-token-auth", "true"),
        kv("etcd-cafile", p.etcd_ca.clone()),
        kv("etcd-certfile", p.etcd_cert.clone()),
        kv("etcd-keyfile", p.etcd_key.clone()),
        kv("etcd-servers", p.etcd_servers.join(",")),
        kv(
            "kubelet-client-certificate",
            pki("apiserver-kubelet-client.crt"),
        ),
        kv("kubelet-client-key", pki("apiserver-kubelet-client.key")),
        kv(
            "kubelet-preferred-address-types",
            "InternalIP,ExternalIP,Hostname",
        ),
        kv("proxy-client-cert-file", pki("front-proxy-client.crt")),
        kv("proxy-client-key-file", pki("front-proxy-client.key")),
        kv("requestheader-allowed-names", "front-proxy-client"),
        kv("requestheader-client-ca-file", pki("front-proxy-ca.crt")),
        kv("requestheader-extra-headers-prefix", "X-Remote-Extra-"),
        kv("requestheader-group-headers", "X-Remote-Group"),
        kv("requestheader-username-headers", "X-Remote-User"),
        kv("secure-port", p.bind_port.to_string()),
        kv(
            "service-account-issuer",
            format!("https://kubernetes.default.svc.{}", p.dns_domain),
        ),
        kv("service-account-key-file", pki("sa.pub")),
        kv("service-account-signing-key-file", pki("sa.key")),
        kv("service-cluster-ip-range", p.service_subnet.clone()),
        kv("tls-cert-file", pki("apiserver.crt")),
        kv("tls-private-key-file", pki("apiserver.key")),
    ];
    let mut command = vec!["kube-apiserver".to_string()];
    command.extend(flags(d, &p.extra_args));
    let mut mounts = vec![
        mount("ca-certs", "/etc/ssl/certs", true),
        mount("etc-ca-certificates", "/etc/ca-certificates", true),
        mount("k8s-certs", PKI_DIR, true),
        mount(
            "usr-share-ca-certificates",
            "/usr/share/ca-certificates",
            true,
        ),
    ];
    let mut volumes = vec![
        host_path_volume("ca-certs", "/etc/ssl/certs", "DirectoryOrCreate"),
        host_path_volume(
            "etc-ca-certificates",
            "/etc/ca-certificates",
            "DirectoryOrCreate",
        ),
        host_path_volume("k8s-certs", PKI_DIR, "DirectoryOrCreate"),
        host_path_volume(
            "usr-share-ca-certificates",
            "/usr/share/ca-certificates",
            "DirectoryOrCreate",
        ),
    ];
    // External etcd files outside the PKI dir get their own mounts, as
    // kubeadm adds them.
    let mut dirs: Vec<String> = [&p.etcd_ca, &p.etcd_cert, &p.etcd_key]
        .iter()
        .filter(|f| !f.starts_with(&format!("{PKI_DIR}/")))
        .filter_map(|f| {
            std::path::Path::new(f.as_str())
                .parent()
                .map(|d| d.display().to_string())
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    for (i, d) in dirs.iter().enumerate() {
        let name = format!("etcd-certs-{i}");
        mounts.push(mount(&name, d, true));
        volumes.push(host_path_volume(&name, d, "DirectoryOrCreate"));
    }
    pod(
        "kube-apiserver",
        "kube-apiserver",
        &format!("registry.k8s.io/kube-apiserver:{}", p.version),
        command,
        json!({"kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint": format!("{}:{}", p.ip, p.bind_port)}),
        mounts,
        volumes,
    )
}

/// kube-controller-manager or kube-scheduler: written like kubeadm writes
/// them; the kubelet double accepts them without running a process.
pub fn other_component(component: &str, version: &str, kubeconfig: &str) -> String {
    let command = vec![
        component.to_string(),
        format!("--authentication-kubeconfig={kubeconfig}"),
        format!("--authorization-kubeconfig={kubeconfig}"),
        "--bind-address=127.0.0.1".to_string(),
        format!("--kubeconfig={kubeconfig}"),
        "--leader-elect=true".to_string(),
    ];
    pod(
        component,
        component,
        &format!("registry.k8s.io/{component}:{version}"),
        command,
        json!({}),
        vec![mount("kubeconfig", kubeconfig, true)],
        vec![host_path_volume("kubeconfig", kubeconfig, "FileOrCreate")],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_under_mounts_map_to_the_host_root() {
        let text = etcd(&EtcdPod {
            name: "cp-1".into(),
            ip: "127.0.0.2".into(),
            data_dir: "/var/lib/etcd".into(),
            initial_cluster: "cp-1=https://127.0.0.2:2380".into(),
            initial_cluster_state: None,
            extra_args: vec![("snapshot-count".into(), "5000".into())],
        });
        let pod = Pod::parse(&text).unwrap();
        let cmd = pod.host_command(std::path::Path::new("/tmp/n/root"));
        assert_eq!(cmd[0], "etcd");
        assert!(
            cmd.contains(&"--data-dir=/tmp/n/root/var/lib/etcd".to_string()),
            "{cmd:?}"
        );
        assert!(
            cmd.contains(&"--cert-file=/tmp/n/root/etc/kubernetes/pki/etcd/server.crt".to_string())
        );
        assert!(cmd.contains(&"--snapshot-count=5000".to_string()));
        assert!(cmd.contains(&"--initial-cluster=cp-1=https://127.0.0.2:2380".to_string()));
    }
}
