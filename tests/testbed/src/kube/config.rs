//! kubeadm's configuration files, read strictly: `InitConfiguration` +
//! `ClusterConfiguration` for `init`, `JoinConfiguration` for `join`, in
//! `kubeadm.k8s.io/v1beta3` (Kubernetes < 1.31) or `v1beta4` (>= 1.31).
//! Unknown fields are errors here, where kubeadm only warns, so a mistake in
//! what kh renders surfaces in tests. `KubeletConfiguration` and
//! `KubeProxyConfiguration` documents are accepted and not interpreted.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub const V1BETA3: &str = "kubeadm.k8s.io/v1beta3";
pub const V1BETA4: &str = "kubeadm.k8s.io/v1beta4";

/// The config API version a kubeadm of `version` reads.
pub fn api_for(version: &str) -> &'static str {
    match super::minor_of(version) {
        Some((1, m)) if m < 31 => V1BETA3,
        _ => V1BETA4,
    }
}

// ---------------------------------------------------------------------------
// Raw shapes (both versions; version-specific fields are checked after).

#[derive(Deserialize)]
#[serde(untagged)]
enum RawArgs {
    Map(BTreeMap<String, String>),
    List(Vec<RawArg>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArg {
    name: String,
    value: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawInit {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    bootstrap_tokens: Option<Vec<RawToken>>,
    #[serde(rename = "localAPIEndpoint")]
    local_api_endpoint: Option<RawEndpoint>,
    node_registration: Option<RawNodeReg>,
    certificate_key: Option<String>,
    skip_phases: Option<Vec<String>>,
    timeouts: Option<serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawToken {
    token: Option<String>,
    ttl: Option<String>,
    usages: Option<Vec<String>>,
    groups: Option<Vec<String>>,
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawEndpoint {
    advertise_address: Option<String>,
    bind_port: Option<u16>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawNodeReg {
    name: Option<String>,
    cri_socket: Option<String>,
    kubelet_extra_args: Option<RawArgs>,
    taints: Option<Vec<Taint>>,
    ignore_preflight_errors: Option<Vec<String>>,
    image_pull_policy: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCluster {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    kubernetes_version: Option<String>,
    control_plane_endpoint: Option<String>,
    networking: Option<RawNetworking>,
    etcd: Option<RawEtcd>,
    api_server: Option<RawApiServer>,
    controller_manager: Option<RawComponent>,
    scheduler: Option<RawComponent>,
    cluster_name: Option<String>,
    image_repository: Option<String>,
    feature_gates: Option<BTreeMap<String, bool>>,
    encryption_algorithm: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawNetworking {
    pod_subnet: Option<String>,
    service_subnet: Option<String>,
    dns_domain: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawEtcd {
    local: Option<RawLocalEtcd>,
    external: Option<RawExternalEtcd>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawLocalEtcd {
    data_dir: Option<String>,
    #[serde(rename = "serverCertSANs")]
    server_cert_sans: Option<Vec<String>>,
    #[serde(rename = "peerCertSANs")]
    peer_cert_sans: Option<Vec<String>>,
    extra_args: Option<RawArgs>,
    image_repository: Option<String>,
    image_tag: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawExternalEtcd {
    endpoints: Vec<String>,
    ca_file: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawApiServer {
    #[serde(rename = "certSANs")]
    cert_sans: Option<Vec<String>>,
    extra_args: Option<RawArgs>,
    timeout_for_control_plane: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawComponent {
    extra_args: Option<RawArgs>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawJoin {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    discovery: Option<RawDiscovery>,
    node_registration: Option<RawNodeReg>,
    control_plane: Option<RawJoinCp>,
    skip_phases: Option<Vec<String>>,
    ca_cert_path: Option<String>,
    timeouts: Option<serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDiscovery {
    bootstrap_token: Option<RawBootstrapDiscovery>,
    tls_bootstrap_token: Option<String>,
    timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawBootstrapDiscovery {
    api_server_endpoint: Option<String>,
    token: Option<String>,
    ca_cert_hashes: Option<Vec<String>>,
    unsafe_skip_ca_verification: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawJoinCp {
    #[serde(rename = "localAPIEndpoint")]
    local_api_endpoint: Option<RawEndpoint>,
    certificate_key: Option<String>,
}

// ---------------------------------------------------------------------------
// Validated shapes

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Taint {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub effect: String,
}

#[derive(Debug, Clone)]
pub struct TokenSpec {
    pub token: Option<String>,
    /// Zero: never expires.
    pub ttl: Duration,
    pub usages: Vec<String>,
    pub groups: Vec<String>,
    pub description: String,
}

#[derive(Debug, Clone, Default)]
pub struct NodeReg {
    pub name: Option<String>,
    pub cri_socket: Option<String>,
    pub kubelet_extra_args: Vec<(String, String)>,
    /// `None`: kubeadm's default (the control-plane taint on control planes).
    pub taints: Option<Vec<Taint>>,
    pub ignore_preflight_errors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EtcdMode {
    Local {
        data_dir: String,
        server_cert_sans: Vec<String>,
        peer_cert_sans: Vec<String>,
        extra_args: Vec<(String, String)>,
    },
    External {
        endpoints: Vec<String>,
        ca_file: String,
        cert_file: String,
        key_file: String,
    },
}

/// The cluster-wide settings; kubeadm stores them in the `kubeadm-config`
/// ConfigMap and `join` reads them back from there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    pub kubernetes_version: String,
    pub control_plane_endpoint: Option<String>,
    pub pod_subnet: Option<String>,
    pub service_subnet: String,
    pub dns_domain: String,
    pub etcd: EtcdMode,
    pub cert_sans: Vec<String>,
    pub cluster_name: String,
    pub api_server_extra_args: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct Init {
    pub api_version: String,
    pub tokens: Vec<TokenSpec>,
    pub advertise_address: Option<IpAddr>,
    pub bind_port: u16,
    pub node: NodeReg,
    pub certificate_key: Option<String>,
    pub skip_phases: Vec<String>,
    pub cluster: Cluster,
}

#[derive(Debug, Clone)]
pub struct JoinCp {
    pub advertise_address: Option<IpAddr>,
    pub bind_port: u16,
    pub certificate_key: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Join {
    pub endpoint: String,
    pub token: String,
    pub tls_bootstrap_token: String,
    pub ca_cert_hashes: Vec<String>,
    pub unsafe_skip_ca_verification: bool,
    pub node: NodeReg,
    pub control_plane: Option<JoinCp>,
    pub skip_phases: Vec<String>,
}

// ---------------------------------------------------------------------------
// Parsing

fn documents(text: &str) -> Result<Vec<serde_yaml::Value>, String> {
    let mut out = vec![];
    for de in serde_yaml::Deserializer::from_str(text) {
        let v = serde_yaml::Value::deserialize(de)
            .map_err(|e| format!("error converting YAML to JSON: {e}"))?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

fn strict<T: DeserializeOwned>(v: serde_yaml::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.inner().to_string();
        if let Some(rest) = msg.strip_prefix("unknown field `") {
            let field = rest.split('`').next().unwrap_or_default();
            let full = if path == "." || path.is_empty() {
                field.to_string()
            } else if path.ends_with(field) {
                path
            } else {
                format!("{path}.{field}")
            };
            format!("strict decoding error: unknown field \"{full}\"")
        } else {
            format!("error unmarshaling JSON: while decoding JSON: json: {msg} (at {path})")
        }
    })
}

fn args(
    raw: Option<RawArgs>,
    api: &str,
    go_struct: &str,
    field: &str,
) -> Result<Vec<(String, String)>, String> {
    match (raw, api) {
        (None, _) => Ok(vec![]),
        (Some(RawArgs::List(l)), V1BETA4) => Ok(l.into_iter().map(|a| (a.name, a.value)).collect()),
        (Some(RawArgs::Map(m)), V1BETA3) => Ok(m.into_iter().collect()),
        (Some(RawArgs::Map(m)), _) if m.is_empty() => Ok(vec![]),
        (Some(RawArgs::Map(_)), _) => Err(format!(
            "json: cannot unmarshal object into Go struct field {go_struct}.{field} of type []v1beta4.Arg"
        )),
        (Some(RawArgs::List(_)), _) => Err(format!(
            "json: cannot unmarshal array into Go struct field {go_struct}.{field} of type map[string]string"
        )),
    }
}

fn node_reg(raw: Option<RawNodeReg>, api: &str) -> Result<NodeReg, String> {
    let raw = raw.unwrap_or_default();
    let _ = raw.image_pull_policy;
    Ok(NodeReg {
        name: raw.name,
        cri_socket: raw.cri_socket,
        kubelet_extra_args: args(
            raw.kubelet_extra_args,
            api,
            "NodeRegistrationOptions",
            "nodeRegistration.kubeletExtraArgs",
        )?,
        taints: raw.taints,
        ignore_preflight_errors: raw.ignore_preflight_errors.unwrap_or_default(),
    })
}

fn endpoint(raw: Option<RawEndpoint>) -> Result<(Option<IpAddr>, u16), String> {
    let Some(e) = raw else {
        return Ok((None, 6443));
    };
    let addr = match e.advertise_address.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(a) => Some(a.parse::<IpAddr>().map_err(|_| {
            format!("localAPIEndpoint.advertiseAddress: Invalid value: \"{a}\": couldn't use \"{a}\" as \"apiserver-advertise-address\", must be ipv4 or ipv6 address")
        })?),
    };
    Ok((addr, e.bind_port.unwrap_or(6443)))
}

/// Checks the document's apiVersion against what the node's kubeadm reads.
fn check_api(doc: &serde_yaml::Value, kubeadm_version: &str) -> Result<String, String> {
    let api = doc["apiVersion"].as_str().unwrap_or_default().to_string();
    let kind = doc["kind"].as_str().unwrap_or_default();
    let want = api_for(kubeadm_version);
    if api == want {
        return Ok(api);
    }
    if api == V1BETA3 && want == V1BETA4 {
        return Err(format!(
            "your configuration file uses a deprecated API spec: \"{V1BETA3}\" (kind: \"{kind}\"); kubeadm {kubeadm_version} reads \"{V1BETA4}\". Please use 'kubeadm config migrate --old-config old-config-file --new-config new-config-file', which will write the new, similar spec using a newer API version. (The kh testbed refuses what kubeadm only warns about.)"
        ));
    }
    if api.starts_with("kubeadm.k8s.io/") {
        return Err(format!(
            "no kind \"{kind}\" is registered for version \"{api}\" in scheme \"k8s.io/kubernetes/cmd/kubeadm/app/apis/kubeadm/scheme/scheme.go:31\""
        ));
    }
    Err(format!(
        "no kind \"{kind}\" is registered for version \"{api}\" in scheme \"k8s.io/kubernetes/cmd/kubeadm/app/apis/kubeadm/scheme/scheme.go:31\""
    ))
}

fn is_component_config(doc: &serde_yaml::Value) -> bool {
    matches!(
        (doc["apiVersion"].as_str(), doc["kind"].as_str()),
        (
            Some("kubelet.config.k8s.io/v1beta1"),
            Some("KubeletConfiguration")
        ) | (
            Some("kubeproxy.config.k8s.io/v1alpha1"),
            Some("KubeProxyConfiguration")
        )
    )
}

fn token_spec(t: RawToken) -> Result<TokenSpec, String> {
    let ttl = match t.ttl.as_deref() {
        None => Duration::from_secs(24 * 3600),
        Some(s) => crate::clock::parse_go_duration(s)
            .ok_or_else(|| format!("time: invalid duration \"{s}\""))?,
    };
    if let Some(tok) = &t.token {
        if !valid_token(tok) {
            return Err(format!(
                "the bootstrap token \"{tok}\" was not of the form \"^([a-z0-9]{{6}})\\\\.([a-z0-9]{{16}})$\""
            ));
        }
    }
    Ok(TokenSpec {
        token: t.token,
        ttl,
        usages: t
            .usages
            .unwrap_or_else(|| vec!["signing".into(), "authentication".into()]),
        groups: t
            .groups
            .unwrap_or_else(|| vec!["system:bootstrappers:kubeadm:default-node-token".into()]),
        description: t.description.unwrap_or_default(),
    })
}

/// `[a-z0-9]{6}.[a-z0-9]{16}`.
pub fn valid_token(t: &str) -> bool {
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    matches!(t.split_once('.'), Some((id, secret)) if ok(id, 6) && ok(secret, 16))
}

/// Parses `kubeadm init --config` for a kubeadm of `kubeadm_version`.
pub fn parse_init(text: &str, kubeadm_version: &str) -> Result<Init, String> {
    let mut init: Option<(String, RawInit)> = None;
    let mut cluster: Option<(String, RawCluster)> = None;
    for doc in documents(text)? {
        if is_component_config(&doc) {
            continue;
        }
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        match kind.as_str() {
            "InitConfiguration" => {
                let api = check_api(&doc, kubeadm_version)?;
                init = Some((api, strict(doc)?));
            }
            "ClusterConfiguration" => {
                let api = check_api(&doc, kubeadm_version)?;
                cluster = Some((api, strict(doc)?));
            }
            "JoinConfiguration" => {
                return Err("invalid configuration for GroupVersionKind: kind JoinConfiguration is not allowed for kubeadm init; use kubeadm join --config".into())
            }
            other => {
                let api = doc["apiVersion"].as_str().unwrap_or_default();
                return Err(format!(
                    "no kind \"{other}\" is registered for version \"{api}\" in scheme \"k8s.io/kubernetes/cmd/kubeadm/app/apis/kubeadm/scheme/scheme.go:31\""
                ));
            }
        }
    }
    let (api, raw) = match init {
        Some(x) => x,
        None => (api_for(kubeadm_version).to_string(), RawInit::default()),
    };
    if api == V1BETA3 && raw.timeouts.is_some() {
        return Err("strict decoding error: unknown field \"timeouts\"".into());
    }
    let (advertise_address, bind_port) = endpoint(raw.local_api_endpoint)?;
    let tokens = match raw.bootstrap_tokens {
        None => vec![token_spec(RawToken {
            token: None,
            ttl: None,
            usages: None,
            groups: None,
            description: Some("The default bootstrap token generated by 'kubeadm init'.".into()),
        })?],
        Some(list) => list.into_iter().map(token_spec).collect::<Result<_, _>>()?,
    };
    let cluster = cluster_from(cluster, kubeadm_version)?;
    if let Some(k) = &raw.certificate_key {
        check_certificate_key(k)?;
    }
    Ok(Init {
        api_version: api.clone(),
        tokens,
        advertise_address,
        bind_port,
        node: node_reg(raw.node_registration, &api)?,
        certificate_key: raw.certificate_key,
        skip_phases: raw.skip_phases.unwrap_or_default(),
        cluster,
    })
}

pub fn check_certificate_key(k: &str) -> Result<(), String> {
    match hex::decode(k) {
        Ok(b) if b.len() == 32 => Ok(()),
        Ok(b) => Err(format!("crypto/aes: invalid key size {}", b.len())),
        Err(e) => Err(format!("error decoding certificate key: encoding/hex: {e}")),
    }
}

fn cluster_from(
    raw: Option<(String, RawCluster)>,
    kubeadm_version: &str,
) -> Result<Cluster, String> {
    let Some((api, c)) = raw else {
        return Ok(Cluster {
            kubernetes_version: kubeadm_version.to_string(),
            control_plane_endpoint: None,
            pod_subnet: None,
            service_subnet: "10.96.0.0/12".into(),
            dns_domain: "cluster.local".into(),
            etcd: EtcdMode::Local {
                data_dir: "/var/lib/etcd".into(),
                server_cert_sans: vec![],
                peer_cert_sans: vec![],
                extra_args: vec![],
            },
            cert_sans: vec![],
            cluster_name: "kubernetes".into(),
            api_server_extra_args: vec![],
        });
    };
    if api == V1BETA4 {
        if c.api_server
            .as_ref()
            .is_some_and(|a| a.timeout_for_control_plane.is_some())
        {
            return Err(
                "strict decoding error: unknown field \"apiServer.timeoutForControlPlane\"".into(),
            );
        }
    } else if c.encryption_algorithm.is_some() {
        return Err("strict decoding error: unknown field \"encryptionAlgorithm\"".into());
    }
    let _ = (&c.image_repository, &c.feature_gates);
    for comp in [c.controller_manager, c.scheduler].into_iter().flatten() {
        args(comp.extra_args, &api, "ControlPlaneComponent", "extraArgs")?;
    }
    let kubernetes_version = c
        .kubernetes_version
        .unwrap_or_else(|| kubeadm_version.to_string());
    let kv = super::minor_of(&kubernetes_version)
        .ok_or_else(|| format!("couldn't parse Kubernetes version \"{kubernetes_version}\""))?;
    let kadm = super::minor_of(kubeadm_version).unwrap_or((1, 0));
    if kv.1 + 1 < kadm.1 {
        return Err(format!(
            "this version of kubeadm only supports deploying clusters with the control plane version >= 1.{}.0. Current version: {kubernetes_version}",
            kadm.1 - 1
        ));
    }
    if kv.1 > kadm.1 {
        return Err(format!(
            "the kubernetes version \"{kubernetes_version}\" is newer than this kubeadm ({kubeadm_version}); kubeadm cannot deploy a control plane newer than itself"
        ));
    }
    let net = c.networking;
    let etcd = match c.etcd {
        Some(RawEtcd {
            local: Some(_),
            external: Some(_),
        }) => {
            return Err("etcd.local and etcd.external are mutually exclusive".into());
        }
        Some(RawEtcd {
            external: Some(e), ..
        }) => {
            if e.endpoints.is_empty() {
                return Err("etcd.external.endpoints: Required value: must not be empty".into());
            }
            EtcdMode::External {
                endpoints: e.endpoints,
                ca_file: e.ca_file.unwrap_or_default(),
                cert_file: e.cert_file.unwrap_or_default(),
                key_file: e.key_file.unwrap_or_default(),
            }
        }
        Some(RawEtcd { local: Some(l), .. }) => {
            let _ = (&l.image_repository, &l.image_tag);
            EtcdMode::Local {
                data_dir: l.data_dir.unwrap_or_else(|| "/var/lib/etcd".into()),
                server_cert_sans: l.server_cert_sans.unwrap_or_default(),
                peer_cert_sans: l.peer_cert_sans.unwrap_or_default(),
                extra_args: args(l.extra_args, &api, "LocalEtcd", "etcd.local.extraArgs")?,
            }
        }
        _ => EtcdMode::Local {
            data_dir: "/var/lib/etcd".into(),
            server_cert_sans: vec![],
            peer_cert_sans: vec![],
            extra_args: vec![],
        },
    };
    let (cert_sans, api_server_extra_args) = match c.api_server {
        Some(a) => (
            a.cert_sans.unwrap_or_default(),
            args(a.extra_args, &api, "APIServer", "apiServer.extraArgs")?,
        ),
        None => (vec![], vec![]),
    };
    Ok(Cluster {
        kubernetes_version,
        control_plane_endpoint: c.control_plane_endpoint.filter(|s| !s.is_empty()),
        pod_subnet: net.as_ref().and_then(|n| n.pod_subnet.clone()),
        service_subnet: net
            .as_ref()
            .and_then(|n| n.service_subnet.clone())
            .unwrap_or_else(|| "10.96.0.0/12".into()),
        dns_domain: net
            .as_ref()
            .and_then(|n| n.dns_domain.clone())
            .unwrap_or_else(|| "cluster.local".into()),
        etcd,
        cert_sans,
        cluster_name: c.cluster_name.unwrap_or_else(|| "kubernetes".into()),
        api_server_extra_args,
    })
}

/// Parses `kubeadm join --config` for a kubeadm of `kubeadm_version`.
pub fn parse_join(text: &str, kubeadm_version: &str) -> Result<Join, String> {
    let mut found = None;
    for doc in documents(text)? {
        if is_component_config(&doc) {
            continue;
        }
        match doc["kind"].as_str().unwrap_or_default() {
            "JoinConfiguration" => {
                let api = check_api(&doc, kubeadm_version)?;
                found = Some((api, strict::<RawJoin>(doc)?));
            }
            other => {
                let api = doc["apiVersion"].as_str().unwrap_or_default();
                return Err(format!(
                    "no kind \"{other}\" is registered for version \"{api}\" in scheme \"k8s.io/kubernetes/cmd/kubeadm/app/apis/kubeadm/scheme/scheme.go:31\""
                ));
            }
        }
    }
    let (api, raw) = found.ok_or("no JoinConfiguration kind was found in the YAML file")?;
    if api == V1BETA3 && raw.timeouts.is_some() {
        return Err("strict decoding error: unknown field \"timeouts\"".into());
    }
    let _ = raw.ca_cert_path;
    let disc = raw
        .discovery
        .ok_or("discovery: Invalid value: \"\": bootstrapToken or file must be set")?;
    if api == V1BETA4 && disc.timeout.is_some() {
        return Err("strict decoding error: unknown field \"discovery.timeout\"".into());
    }
    let bt = disc
        .bootstrap_token
        .ok_or("discovery: Invalid value: \"\": bootstrapToken or file must be set")?;
    let token = bt.token.unwrap_or_default();
    if !valid_token(&token) {
        return Err(format!(
            "discovery.bootstrapToken.token: Invalid value: \"{token}\": the bootstrap token is invalid"
        ));
    }
    let api_endpoint = bt
        .api_server_endpoint
        .ok_or("discovery.bootstrapToken.apiServerEndpoint: Invalid value: \"\": using token-based discovery without a control-plane endpoint")?;
    let hashes = bt.ca_cert_hashes.unwrap_or_default();
    let skip = bt.unsafe_skip_ca_verification.unwrap_or(false);
    if hashes.is_empty() && !skip {
        return Err("discovery.bootstrapToken: Invalid value: \"\": using token-based discovery without caCertHashes can be unsafe. Set unsafeSkipCAVerification as true in your kubeadm config file or pass --discovery-token-unsafe-skip-ca-verification flag to continue".into());
    }
    let control_plane = match raw.control_plane {
        None => None,
        Some(cp) => {
            let (advertise_address, bind_port) = endpoint(cp.local_api_endpoint)?;
            if let Some(k) = &cp.certificate_key {
                check_certificate_key(k)?;
            }
            Some(JoinCp {
                advertise_address,
                bind_port,
                certificate_key: cp.certificate_key,
            })
        }
    };
    Ok(Join {
        endpoint: api_endpoint,
        tls_bootstrap_token: disc.tls_bootstrap_token.unwrap_or_else(|| token.clone()),
        token,
        ca_cert_hashes: hashes,
        unsafe_skip_ca_verification: skip,
        node: node_reg(raw.node_registration, &api)?,
        control_plane,
        skip_phases: raw.skip_phases.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &str = r#"
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
bootstrapTokens:
  - token: abcdef.0123456789abcdef
    ttl: 2h
localAPIEndpoint: {advertiseAddress: 10.0.0.11, bindPort: 6443}
nodeRegistration:
  name: cp-1
  criSocket: unix:///run/containerd/containerd.sock
  kubeletExtraArgs:
    - {name: node-ip, value: 10.0.0.11}
certificateKey: 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: v1.32.0
controlPlaneEndpoint: 10.0.0.11:6443
networking: {podSubnet: 10.244.0.0/16, serviceSubnet: 10.96.0.0/12}
etcd:
  local:
    extraArgs:
      - {name: quota-backend-bytes, value: "8589934592"}
---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: systemd
"#;

    #[test]
    fn v1beta4_parses_with_list_args() {
        let c = parse_init(V4, "v1.32.0").unwrap();
        assert_eq!(
            c.node.kubelet_extra_args,
            [("node-ip".into(), "10.0.0.11".into())]
        );
        assert_eq!(c.tokens[0].ttl, Duration::from_secs(7200));
        assert_eq!(
            c.cluster.control_plane_endpoint.as_deref(),
            Some("10.0.0.11:6443")
        );
        match &c.cluster.etcd {
            EtcdMode::Local { extra_args, .. } => assert_eq!(extra_args.len(), 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_api_version_must_match_the_kubeadm_version() {
        let e = parse_init(V4, "v1.30.2").unwrap_err();
        assert!(e.contains("no kind \"InitConfiguration\" is registered for version \"kubeadm.k8s.io/v1beta4\""), "{e}");
        let v3 = V4.replace("v1beta4", "v1beta3");
        let e = parse_init(&v3, "v1.32.0").unwrap_err();
        assert!(e.contains("deprecated API spec"), "{e}");
        // v1beta3 wants maps where v1beta4 has lists.
        let e = parse_init(&v3.replace("v1.32.0", "v1.30.0"), "v1.30.0").unwrap_err();
        assert!(e.contains("cannot unmarshal array"), "{e}");
        let v3_maps = v3
            .replace(
                "    - {name: node-ip, value: 10.0.0.11}",
                "    node-ip: 10.0.0.11",
            )
            .replace(
                "      - {name: quota-backend-bytes, value: \"8589934592\"}",
                "      quota-backend-bytes: \"8589934592\"",
            )
            .replace("v1.32.0", "v1.30.0");
        let c = parse_init(&v3_maps, "v1.30.0").unwrap();
        assert_eq!(
            c.node.kubelet_extra_args,
            [("node-ip".into(), "10.0.0.11".into())]
        );
    }

    #[test]
    fn unknown_fields_are_errors() {
        let bad = V4.replace("  criSocket:", "  criSockett:");
        let e = parse_init(&bad, "v1.32.0").unwrap_err();
        assert!(
            e.starts_with("strict decoding error: unknown field \"nodeRegistration.criSockett\""),
            "{e}"
        );
    }

    #[test]
    fn join_configs_parse() {
        let j = parse_join(
            r#"
apiVersion: kubeadm.k8s.io/v1beta4
kind: JoinConfiguration
discovery:
  bootstrapToken:
    apiServerEndpoint: 10.0.0.11:6443
    token: abcdef.0123456789abcdef
    caCertHashes: ["sha256:00"]
nodeRegistration: {name: cp-2}
controlPlane:
  localAPIEndpoint: {advertiseAddress: 10.0.0.12}
  certificateKey: 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff
"#,
            "v1.32.0",
        )
        .unwrap();
        assert_eq!(j.endpoint, "10.0.0.11:6443");
        assert_eq!(j.tls_bootstrap_token, "abcdef.0123456789abcdef");
        assert!(j.control_plane.is_some());
    }
}
