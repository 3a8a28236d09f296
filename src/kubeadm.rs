//! kubeadm configuration rendering: InitConfiguration + ClusterConfiguration
//! for `kubeadm init`, JoinConfiguration for `kubeadm join`, and the join
//! material the coordinator generates (bootstrap token, certificate key).
//!
//! Rendering is pure: typed serde structs in a fixed field order become
//! YAML, so the same parameters always give the same bytes (which the
//! `--dry-run` output and the tests rely on). The config API follows the
//! kubeadm release on the node: `kubeadm.k8s.io/v1beta3` below 1.31,
//! `v1beta4` from 1.31, which differ here only in `kubeletExtraArgs` (a map
//! in v1beta3, a list of `{name, value}` in v1beta4). Secrets are rendered
//! into a [`Secret`], or as `<redacted>` for display.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use serde::Serialize;

use crate::secret::Secret;
use crate::spec::KubeVersion;
use crate::token::random_string;

/// containerd's CRI socket, the only runtime kh sets up.
pub const CRI_SOCKET: &str = "unix:///var/run/containerd/containerd.sock";
pub const DNS_DOMAIN: &str = "cluster.local";
/// The group kubeadm's own tokens carry, which its RBAC rules allow to join.
pub const BOOTSTRAP_TOKEN_GROUP: &str = "system:bootstrappers:kubeadm:default-node-token";
pub const LOCAL_ETCD_DATA_DIR: &str = "/var/lib/etcd";
/// Where kube-apiserver finds the external etcd's CA and its client
/// certificate (placed there by the coordinator, kubeadm's own layout).
pub const EXTERNAL_ETCD_CA_FILE: &str = "/etc/kubernetes/pki/etcd/ca.crt";
pub const EXTERNAL_ETCD_CERT_FILE: &str = "/etc/kubernetes/pki/apiserver-etcd-client.crt";
pub const EXTERNAL_ETCD_KEY_FILE: &str = "/etc/kubernetes/pki/apiserver-etcd-client.key";
/// What a redacted rendering shows in place of each secret.
pub const REDACTED: &str = "<redacted>";

/// The kubeadm config API a kubeadm release reads.
pub fn api_version(kubeadm: &KubeVersion) -> &'static str {
    kubeadm.kubeadm_api_version()
}

/// Whether the release reads `kubeletExtraArgs` as a list (v1beta4).
fn extra_args_as_list(kubeadm: &KubeVersion) -> bool {
    api_version(kubeadm).ends_with("/v1beta4")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdConfig {
    /// kubeadm runs an etcd member on every control plane.
    Stacked,
    /// kube-apiserver talks to an etcd kh does not run, over TLS with the
    /// files at [`EXTERNAL_ETCD_CA_FILE`], [`EXTERNAL_ETCD_CERT_FILE`] and
    /// [`EXTERNAL_ETCD_KEY_FILE`].
    External { endpoints: Vec<String> },
}

/// Everything `kubeadm init` on the first control plane needs.
#[derive(Debug, Clone)]
pub struct InitParams {
    /// The kubeadm release on the node, which picks the config API.
    pub kubeadm_version: KubeVersion,
    pub kubernetes_version: KubeVersion,
    pub cluster_name: String,
    /// `host:port` of the load balancer in front of the apiservers.
    pub control_plane_endpoint: String,
    pub advertise_address: IpAddr,
    pub bind_port: u16,
    pub node_name: String,
    pub pod_subnet: String,
    pub service_subnet: String,
    pub bootstrap_token: Secret<String>,
    pub token_ttl: Duration,
    /// Encrypts the `kubeadm-certs` Secret that `--upload-certs` writes.
    pub certificate_key: Secret<String>,
    pub etcd: EtcdConfig,
    /// Extra names and addresses for the apiserver certificate.
    pub cert_sans: Vec<String>,
}

/// The control-plane part of a join.
#[derive(Debug, Clone)]
pub struct ControlPlaneJoin {
    /// Decrypts the `kubeadm-certs` Secret; `None` when the coordinator has
    /// placed the shared CA files on the node instead.
    pub certificate_key: Option<Secret<String>>,
    pub bind_port: u16,
}

/// Everything `kubeadm join` needs, for a worker or a control plane.
#[derive(Debug, Clone)]
pub struct JoinParams {
    pub kubeadm_version: KubeVersion,
    /// `host:port` the node discovers the cluster through (the
    /// control-plane endpoint).
    pub api_server_endpoint: String,
    pub token: Secret<String>,
    /// `sha256:<hex>` of the cluster CA's SubjectPublicKeyInfo.
    pub ca_cert_hash: String,
    pub node_name: String,
    pub advertise_address: IpAddr,
    pub control_plane: Option<ControlPlaneJoin>,
}

// ---------------------------------------------------------------------------
// The YAML shapes, in kubeadm's field names and a fixed order.

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InitConfiguration {
    api_version: &'static str,
    kind: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    bootstrap_tokens: Vec<BootstrapToken>,
    #[serde(rename = "localAPIEndpoint")]
    local_api_endpoint: ApiEndpoint,
    node_registration: NodeRegistration,
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate_key: Option<String>,
}

#[derive(Serialize)]
struct BootstrapToken {
    token: String,
    ttl: String,
    usages: Vec<&'static str>,
    groups: Vec<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ApiEndpoint {
    advertise_address: String,
    bind_port: u16,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeRegistration {
    name: String,
    cri_socket: &'static str,
    kubelet_extra_args: ExtraArgs,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ExtraArgs {
    /// v1beta3
    Map(BTreeMap<&'static str, String>),
    /// v1beta4
    List(Vec<Arg>),
}

#[derive(Serialize)]
struct Arg {
    name: &'static str,
    value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ClusterConfiguration {
    api_version: &'static str,
    kind: &'static str,
    kubernetes_version: String,
    cluster_name: String,
    control_plane_endpoint: String,
    networking: NetworkingYaml,
    etcd: EtcdYaml,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_server: Option<ApiServer>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NetworkingYaml {
    pod_subnet: String,
    service_subnet: String,
    dns_domain: &'static str,
}

#[derive(Serialize)]
struct EtcdYaml {
    #[serde(skip_serializing_if = "Option::is_none")]
    local: Option<LocalEtcd>,
    #[serde(skip_serializing_if = "Option::is_none")]
    external: Option<ExternalEtcd>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LocalEtcd {
    data_dir: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExternalEtcd {
    endpoints: Vec<String>,
    ca_file: &'static str,
    cert_file: &'static str,
    key_file: &'static str,
}

#[derive(Serialize)]
struct ApiServer {
    #[serde(rename = "certSANs")]
    cert_sans: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JoinConfiguration {
    api_version: &'static str,
    kind: &'static str,
    discovery: Discovery,
    node_registration: NodeRegistration,
    #[serde(skip_serializing_if = "Option::is_none")]
    control_plane: Option<JoinControlPlane>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Discovery {
    bootstrap_token: BootstrapTokenDiscovery,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BootstrapTokenDiscovery {
    api_server_endpoint: String,
    token: String,
    ca_cert_hashes: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JoinControlPlane {
    #[serde(rename = "localAPIEndpoint")]
    local_api_endpoint: ApiEndpoint,
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate_key: Option<String>,
}

// ---------------------------------------------------------------------------
// Rendering

fn reveal(secret: &Secret<String>, redact: bool) -> String {
    if redact {
        REDACTED.to_string()
    } else {
        secret.expose().clone()
    }
}

fn node_registration(kubeadm: &KubeVersion, name: &str, address: IpAddr) -> NodeRegistration {
    // The kubelet picks the address of the default route otherwise, which
    // on multi-homed hosts is often not the one the cluster should use.
    let node_ip = address.to_string();
    let kubelet_extra_args = if extra_args_as_list(kubeadm) {
        ExtraArgs::List(vec![Arg {
            name: "node-ip",
            value: node_ip,
        }])
    } else {
        ExtraArgs::Map(BTreeMap::from([("node-ip", node_ip)]))
    };
    NodeRegistration {
        name: name.to_string(),
        cri_socket: CRI_SOCKET,
        kubelet_extra_args,
    }
}

fn to_yaml(document: &impl Serialize) -> String {
    // These are plain structs of strings, numbers, lists and string-keyed
    // maps, which serde_yaml cannot fail to serialize.
    serde_yaml::to_string(document).expect("kubeadm config structs always serialize")
}

/// The InitConfiguration and ClusterConfiguration documents for `kubeadm
/// init --config`. With `redact`, the token and the certificate key show as
/// `<redacted>` (for plans and `--dry-run`).
pub fn render_init(params: &InitParams, redact: bool) -> Secret<String> {
    render_init_documents(params, Secrets::Both, redact)
}

/// The config for `kubeadm token create --config`, run on the control plane
/// `params` describes: kubeadm creates the InitConfiguration's
/// `bootstrapTokens`, so the token reaches it in a file instead of on the
/// command line, where every user of the host could read it in `ps`. The
/// ClusterConfiguration is the cluster's: kubeadm loads it with the file,
/// and without a `kubernetesVersion` it would look the version up on the
/// internet. The certificate key is left out, as token create has no use
/// for it.
pub fn render_token_create(params: &InitParams, redact: bool) -> Secret<String> {
    render_init_documents(params, Secrets::Token, redact)
}

/// The config for `kubeadm init phase upload-certs --upload-certs --config`:
/// the certificate key in the InitConfiguration (kubeadm refuses
/// `--certificate-key` beside `--config`, and on the command line `ps` would
/// show it), and the cluster's ClusterConfiguration, from which kubeadm
/// decides which files to upload (an external etcd's client certificate
/// instead of the stacked etcd CA). No bootstrap token.
pub fn render_upload_certs(params: &InitParams, redact: bool) -> Secret<String> {
    render_init_documents(params, Secrets::CertificateKey, redact)
}

/// Which secrets an InitConfiguration carries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Secrets {
    Both,
    Token,
    CertificateKey,
}

fn render_init_documents(params: &InitParams, secrets: Secrets, redact: bool) -> Secret<String> {
    let api = api_version(&params.kubeadm_version);
    let bootstrap_tokens = if secrets == Secrets::CertificateKey {
        Vec::new()
    } else {
        vec![BootstrapToken {
            token: reveal(&params.bootstrap_token, redact),
            ttl: go_duration(params.token_ttl),
            usages: vec!["signing", "authentication"],
            groups: vec![BOOTSTRAP_TOKEN_GROUP],
        }]
    };
    let init = InitConfiguration {
        api_version: api,
        kind: "InitConfiguration",
        bootstrap_tokens,
        local_api_endpoint: ApiEndpoint {
            advertise_address: params.advertise_address.to_string(),
            bind_port: params.bind_port,
        },
        node_registration: node_registration(
            &params.kubeadm_version,
            &params.node_name,
            params.advertise_address,
        ),
        certificate_key: (secrets != Secrets::Token)
            .then(|| reveal(&params.certificate_key, redact)),
    };
    let etcd = match &params.etcd {
        EtcdConfig::Stacked => EtcdYaml {
            local: Some(LocalEtcd {
                data_dir: LOCAL_ETCD_DATA_DIR,
            }),
            external: None,
        },
        EtcdConfig::External { endpoints } => EtcdYaml {
            local: None,
            external: Some(ExternalEtcd {
                endpoints: endpoints.clone(),
                ca_file: EXTERNAL_ETCD_CA_FILE,
                cert_file: EXTERNAL_ETCD_CERT_FILE,
                key_file: EXTERNAL_ETCD_KEY_FILE,
            }),
        },
    };
    let cluster = ClusterConfiguration {
        api_version: api,
        kind: "ClusterConfiguration",
        kubernetes_version: params.kubernetes_version.to_string(),
        cluster_name: params.cluster_name.clone(),
        control_plane_endpoint: params.control_plane_endpoint.clone(),
        networking: NetworkingYaml {
            pod_subnet: params.pod_subnet.clone(),
            service_subnet: params.service_subnet.clone(),
            dns_domain: DNS_DOMAIN,
        },
        etcd,
        api_server: (!params.cert_sans.is_empty()).then(|| ApiServer {
            cert_sans: params.cert_sans.clone(),
        }),
    };
    Secret::new(format!("{}---\n{}", to_yaml(&init), to_yaml(&cluster)))
}

/// The JoinConfiguration for `kubeadm join --config`, for a worker or (with
/// `control_plane`) a control plane. With `redact`, the token and the
/// certificate key show as `<redacted>`.
pub fn render_join(params: &JoinParams, redact: bool) -> Secret<String> {
    let join = JoinConfiguration {
        api_version: api_version(&params.kubeadm_version),
        kind: "JoinConfiguration",
        discovery: Discovery {
            bootstrap_token: BootstrapTokenDiscovery {
                api_server_endpoint: params.api_server_endpoint.clone(),
                token: reveal(&params.token, redact),
                ca_cert_hashes: vec![params.ca_cert_hash.clone()],
            },
        },
        node_registration: node_registration(
            &params.kubeadm_version,
            &params.node_name,
            params.advertise_address,
        ),
        control_plane: params.control_plane.as_ref().map(|cp| JoinControlPlane {
            local_api_endpoint: ApiEndpoint {
                advertise_address: params.advertise_address.to_string(),
                bind_port: cp.bind_port,
            },
            certificate_key: cp.certificate_key.as_ref().map(|key| reveal(key, redact)),
        }),
    };
    Secret::new(to_yaml(&join))
}

/// Formats a duration as Go's `time.Duration.String` does (`24h0m0s`,
/// `1h30m0s`, `45s`, `1.5s`, `500ms`), the form kubeadm itself prints.
pub fn go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    if nanos < 1_000_000_000 {
        let (unit, scale) = match nanos {
            0..=999 => ("ns", 1),
            1_000..=999_999 => ("µs", 1_000),
            _ => ("ms", 1_000_000),
        };
        return format!("{}{unit}", scaled(nanos, scale));
    }
    let secs = d.as_secs();
    let seconds = scaled(
        u128::from(secs % 60) * 1_000_000_000 + u128::from(d.subsec_nanos()),
        1_000_000_000,
    );
    match (secs / 3600, (secs % 3600) / 60) {
        (0, 0) => format!("{seconds}s"),
        (0, m) => format!("{m}m{seconds}s"),
        (h, m) => format!("{h}h{m}m{seconds}s"),
    }
}

/// `value / scale` as a decimal without trailing zeros in the fraction.
fn scaled(value: u128, scale: u128) -> String {
    let (whole, fraction) = (value / scale, value % scale);
    if fraction == 0 {
        return whole.to_string();
    }
    let width = scale.ilog10() as usize;
    let digits = format!("{fraction:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// A certificate key for `--upload-certs`: 32 random bytes (an AES-256
/// key) as 64 lowercase hex characters, the form kubeadm generates.
pub fn generate_certificate_key() -> Secret<String> {
    let mut key = [0u8; 32];
    SystemRandom::new()
        .fill(&mut key)
        .expect("the system random source failed");
    Secret::new(hex::encode(key))
}

/// A bootstrap token `[a-z0-9]{6}.[a-z0-9]{16}`, the form kubeadm accepts.
pub fn generate_bootstrap_token() -> Secret<String> {
    Secret::new(format!("{}.{}", random_string(6), random_string(16)))
}

/// The public id (the part before the dot) of a bootstrap token, which
/// names it in `kubeadm token list` and `kubeadm token delete`.
pub fn bootstrap_token_id(token: &Secret<String>) -> Option<&str> {
    token.expose().split_once('.').map(|(id, _)| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "abcdef.0123456789abcdef";
    const KEY: &str = "4f0c6b2e9d8a7c1b3e5f7a9c0d2e4f6a8b1c3d5e7f9a0b2c4d6e8f1a3b5c7d9e";
    const HASH: &str = "sha256:2b1ab9a4a3b1d1c0e5f7a0c4b8e6d2f9a1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1";

    fn v(text: &str) -> KubeVersion {
        KubeVersion::parse(text).unwrap()
    }

    fn init_params(kubeadm: &str) -> InitParams {
        InitParams {
            kubeadm_version: v(kubeadm),
            kubernetes_version: v(kubeadm),
            cluster_name: "prod".to_string(),
            control_plane_endpoint: "lb.example.internal:6443".to_string(),
            advertise_address: "10.0.0.11".parse().unwrap(),
            bind_port: 6443,
            node_name: "cp-1".to_string(),
            pod_subnet: "10.244.0.0/16".to_string(),
            service_subnet: "10.96.0.0/12".to_string(),
            bootstrap_token: Secret::new(TOKEN.to_string()),
            token_ttl: Duration::from_secs(24 * 3600),
            certificate_key: Secret::new(KEY.to_string()),
            etcd: EtcdConfig::Stacked,
            cert_sans: Vec::new(),
        }
    }

    fn join_params(kubeadm: &str, control_plane: Option<ControlPlaneJoin>) -> JoinParams {
        JoinParams {
            kubeadm_version: v(kubeadm),
            api_server_endpoint: "lb.example.internal:6443".to_string(),
            token: Secret::new(TOKEN.to_string()),
            ca_cert_hash: HASH.to_string(),
            node_name: "cp-2".to_string(),
            advertise_address: "10.0.0.12".parse().unwrap(),
            control_plane,
        }
    }

    #[test]
    fn the_api_version_follows_the_kubeadm_release() {
        assert_eq!(api_version(&v("v1.30.5")), "kubeadm.k8s.io/v1beta3");
        assert_eq!(api_version(&v("v1.31.0-rc.1")), "kubeadm.k8s.io/v1beta4");
        assert_eq!(api_version(&v("v1.31.0")), "kubeadm.k8s.io/v1beta4");
        assert_eq!(api_version(&v("v1.32.0")), "kubeadm.k8s.io/v1beta4");
    }

    #[test]
    fn init_for_v1beta3_with_stacked_etcd() {
        let rendered = render_init(&init_params("v1.30.5"), false);
        assert_eq!(
            rendered.expose(),
            "\
apiVersion: kubeadm.k8s.io/v1beta3
kind: InitConfiguration
bootstrapTokens:
- token: abcdef.0123456789abcdef
  ttl: 24h0m0s
  usages:
  - signing
  - authentication
  groups:
  - system:bootstrappers:kubeadm:default-node-token
localAPIEndpoint:
  advertiseAddress: 10.0.0.11
  bindPort: 6443
nodeRegistration:
  name: cp-1
  criSocket: unix:///var/run/containerd/containerd.sock
  kubeletExtraArgs:
    node-ip: 10.0.0.11
certificateKey: 4f0c6b2e9d8a7c1b3e5f7a9c0d2e4f6a8b1c3d5e7f9a0b2c4d6e8f1a3b5c7d9e
---
apiVersion: kubeadm.k8s.io/v1beta3
kind: ClusterConfiguration
kubernetesVersion: v1.30.5
clusterName: prod
controlPlaneEndpoint: lb.example.internal:6443
networking:
  podSubnet: 10.244.0.0/16
  serviceSubnet: 10.96.0.0/12
  dnsDomain: cluster.local
etcd:
  local:
    dataDir: /var/lib/etcd
"
        );
    }

    #[test]
    fn init_for_v1beta4_with_external_etcd_and_sans() {
        let mut params = init_params("v1.32.0");
        params.etcd = EtcdConfig::External {
            endpoints: vec![
                "https://10.0.0.31:2379".to_string(),
                "https://10.0.0.32:2379".to_string(),
            ],
        };
        params.cert_sans = vec!["lb.example.internal".to_string(), "10.0.0.10".to_string()];
        params.token_ttl = Duration::from_secs(2 * 3600 + 30 * 60);
        params.advertise_address = "fd00::11".parse().unwrap();
        let rendered = render_init(&params, false);
        assert_eq!(
            rendered.expose(),
            "\
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
bootstrapTokens:
- token: abcdef.0123456789abcdef
  ttl: 2h30m0s
  usages:
  - signing
  - authentication
  groups:
  - system:bootstrappers:kubeadm:default-node-token
localAPIEndpoint:
  advertiseAddress: fd00::11
  bindPort: 6443
nodeRegistration:
  name: cp-1
  criSocket: unix:///var/run/containerd/containerd.sock
  kubeletExtraArgs:
  - name: node-ip
    value: fd00::11
certificateKey: 4f0c6b2e9d8a7c1b3e5f7a9c0d2e4f6a8b1c3d5e7f9a0b2c4d6e8f1a3b5c7d9e
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: v1.32.0
clusterName: prod
controlPlaneEndpoint: lb.example.internal:6443
networking:
  podSubnet: 10.244.0.0/16
  serviceSubnet: 10.96.0.0/12
  dnsDomain: cluster.local
etcd:
  external:
    endpoints:
    - https://10.0.0.31:2379
    - https://10.0.0.32:2379
    caFile: /etc/kubernetes/pki/etcd/ca.crt
    certFile: /etc/kubernetes/pki/apiserver-etcd-client.crt
    keyFile: /etc/kubernetes/pki/apiserver-etcd-client.key
apiServer:
  certSANs:
  - lb.example.internal
  - 10.0.0.10
"
        );
    }

    #[test]
    fn redacted_renderings_hide_every_secret_and_nothing_else() {
        let params = init_params("v1.32.0");
        let shown = render_init(&params, true);
        let text = shown.expose();
        assert!(!text.contains(TOKEN) && !text.contains(KEY), "{text}");
        assert!(text.contains("- token: <redacted>\n"), "{text}");
        assert!(text.contains("\ncertificateKey: <redacted>\n"), "{text}");
        // Redaction changes exactly the two secret lines.
        let real = render_init(&params, false);
        let differing = real
            .expose()
            .lines()
            .zip(text.lines())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(differing, 2);
        assert_eq!(format!("{:?}", real), "<redacted>");
        assert!(!format!("{params:?}").contains(TOKEN));

        let join = join_params(
            "v1.32.0",
            Some(ControlPlaneJoin {
                certificate_key: Some(Secret::new(KEY.to_string())),
                bind_port: 6443,
            }),
        );
        let shown = render_join(&join, true);
        assert!(!shown.expose().contains(TOKEN) && !shown.expose().contains(KEY));
        assert!(shown.expose().contains("certificateKey: <redacted>"));
    }

    #[test]
    fn token_create_and_upload_certs_configs_carry_only_their_own_secret() {
        let mut params = init_params("v1.32.0");
        params.etcd = EtcdConfig::External {
            endpoints: vec!["https://10.0.0.31:2379".to_string()],
        };
        let token = render_token_create(&params, false);
        let text = token.expose();
        assert!(
            text.contains("- token: abcdef.0123456789abcdef\n"),
            "{text}"
        );
        assert!(
            !text.contains(KEY) && !text.contains("certificateKey"),
            "{text}"
        );
        // kubeadm loads the ClusterConfiguration with the file: without a
        // kubernetesVersion it would ask the internet for one.
        assert!(text.contains("\nkubernetesVersion: v1.32.0\n"), "{text}");

        let upload = render_upload_certs(&params, false);
        let text = upload.expose();
        assert!(
            text.contains(&format!("\ncertificateKey: {KEY}\n")),
            "{text}"
        );
        assert!(
            !text.contains(TOKEN) && !text.contains("bootstrapTokens"),
            "{text}"
        );
        // The external etcd's client files are what upload-certs must upload.
        assert!(
            text.contains("keyFile: /etc/kubernetes/pki/apiserver-etcd-client.key"),
            "{text}"
        );
        // Both are init's documents less the other secret.
        let init = render_init(&params, false);
        assert_eq!(
            init.expose().lines().count(),
            token.expose().lines().count() + 1
        );
        let shown = render_upload_certs(&params, true);
        assert!(shown.expose().contains("\ncertificateKey: <redacted>\n"));
        let shown = render_token_create(&params, true);
        assert!(shown.expose().contains("- token: <redacted>\n"));
    }

    #[test]
    fn a_worker_join_for_v1beta3() {
        let rendered = render_join(&join_params("v1.29.9", None), false);
        assert_eq!(
            rendered.expose(),
            "\
apiVersion: kubeadm.k8s.io/v1beta3
kind: JoinConfiguration
discovery:
  bootstrapToken:
    apiServerEndpoint: lb.example.internal:6443
    token: abcdef.0123456789abcdef
    caCertHashes:
    - sha256:2b1ab9a4a3b1d1c0e5f7a0c4b8e6d2f9a1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1
nodeRegistration:
  name: cp-2
  criSocket: unix:///var/run/containerd/containerd.sock
  kubeletExtraArgs:
    node-ip: 10.0.0.12
"
        );
    }

    #[test]
    fn control_plane_joins_for_v1beta4_with_and_without_a_certificate_key() {
        let with_key = join_params(
            "v1.31.2",
            Some(ControlPlaneJoin {
                certificate_key: Some(Secret::new(KEY.to_string())),
                bind_port: 6443,
            }),
        );
        assert_eq!(
            render_join(&with_key, false).expose(),
            "\
apiVersion: kubeadm.k8s.io/v1beta4
kind: JoinConfiguration
discovery:
  bootstrapToken:
    apiServerEndpoint: lb.example.internal:6443
    token: abcdef.0123456789abcdef
    caCertHashes:
    - sha256:2b1ab9a4a3b1d1c0e5f7a0c4b8e6d2f9a1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1
nodeRegistration:
  name: cp-2
  criSocket: unix:///var/run/containerd/containerd.sock
  kubeletExtraArgs:
  - name: node-ip
    value: 10.0.0.12
controlPlane:
  localAPIEndpoint:
    advertiseAddress: 10.0.0.12
    bindPort: 6443
  certificateKey: 4f0c6b2e9d8a7c1b3e5f7a9c0d2e4f6a8b1c3d5e7f9a0b2c4d6e8f1a3b5c7d9e
"
        );
        // The coordinator placed the CA set: no key, kubeadm uses the files.
        let placed = join_params(
            "v1.31.2",
            Some(ControlPlaneJoin {
                certificate_key: None,
                bind_port: 7443,
            }),
        );
        assert!(render_join(&placed, false).expose().ends_with(
            "controlPlane:\n  localAPIEndpoint:\n    advertiseAddress: 10.0.0.12\n    bindPort: 7443\n"
        ));
    }

    #[test]
    fn renderings_are_yaml_kubeadm_can_read_back() {
        let rendered = render_init(&init_params("v1.32.0"), false);
        let documents: Vec<serde_yaml::Value> =
            serde_yaml::Deserializer::from_str(rendered.expose())
                .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
                .collect();
        assert_eq!(documents.len(), 2);
        assert_eq!(documents[0]["kind"], "InitConfiguration");
        assert_eq!(documents[0]["bootstrapTokens"][0]["token"], TOKEN);
        assert_eq!(documents[0]["certificateKey"], KEY);
        assert_eq!(documents[1]["networking"]["dnsDomain"], "cluster.local");
        // A token of digits only must stay a string, not become a number.
        let mut params = init_params("v1.32.0");
        params.bootstrap_token = Secret::new("123456.1234567890123456".to_string());
        params.certificate_key = Secret::new("1".repeat(64));
        let rendered = render_init(&params, false);
        let doc: serde_yaml::Value = serde_yaml::Deserializer::from_str(rendered.expose())
            .next()
            .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
            .unwrap();
        assert_eq!(
            doc["bootstrapTokens"][0]["token"],
            "123456.1234567890123456"
        );
        assert_eq!(doc["certificateKey"], "1".repeat(64).as_str());
    }

    #[test]
    fn durations_print_like_go() {
        let cases = [
            (Duration::from_secs(24 * 3600), "24h0m0s"),
            (Duration::from_secs(2 * 3600), "2h0m0s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(45), "45s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_micros(1500), "1.5ms"),
            (Duration::from_nanos(2500), "2.5µs"),
            (Duration::from_nanos(9), "9ns"),
            (Duration::ZERO, "0s"),
        ];
        for (d, want) in cases {
            assert_eq!(go_duration(d), want, "{d:?}");
        }
    }

    #[test]
    fn generated_join_material_has_kubeadm_s_shapes() {
        let key = generate_certificate_key();
        assert_eq!(key.expose().len(), 64);
        assert!(key
            .expose()
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_ne!(generate_certificate_key().expose(), key.expose());

        let token = generate_bootstrap_token();
        let (id, secret) = token.expose().split_once('.').unwrap();
        let valid = |s: &str, n| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        assert!(valid(id, 6) && valid(secret, 16), "{}", token.expose());
        assert_eq!(bootstrap_token_id(&token), Some(id));
        assert_ne!(generate_bootstrap_token().expose(), token.expose());
    }
}
