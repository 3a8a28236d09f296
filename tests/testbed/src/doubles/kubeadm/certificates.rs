//! Certificates and kubeconfigs, and the cluster pieces `init` and `join` both
//! write: manifests, kubelet files, node objects, etcd endpoints, bootstrap
//! tokens, the `kubeadm-certs` Secret and the stored cluster configuration.

use super::*;

/// The shared CA set: files kubeadm copies between control planes.
pub(super) fn shared_files(cluster: &Cluster) -> Vec<(&'static str, String)> {
    let mut v = vec![
        ("ca.crt", format!("{PKI}/ca.crt")),
        ("ca.key", format!("{PKI}/ca.key")),
        ("sa.key", format!("{PKI}/sa.key")),
        ("sa.pub", format!("{PKI}/sa.pub")),
        ("front-proxy-ca.crt", format!("{PKI}/front-proxy-ca.crt")),
        ("front-proxy-ca.key", format!("{PKI}/front-proxy-ca.key")),
    ];
    match &cluster.etcd {
        EtcdMode::Local { .. } => {
            v.push(("etcd-ca.crt", format!("{PKI}/etcd/ca.crt")));
            v.push(("etcd-ca.key", format!("{PKI}/etcd/ca.key")));
        }
        EtcdMode::External {
            ca_file,
            cert_file,
            key_file,
            ..
        } => {
            v.push(("external-etcd-ca.crt", ca_file.clone()));
            v.push(("external-etcd.crt", cert_file.clone()));
            v.push(("external-etcd.key", key_file.clone()));
        }
    }
    v
}

fn load_or_generate_ca(env: &NodeEnv, base: &str, cn: &str, generate: bool) -> R<CaPair> {
    let cert = read(env, &format!("{PKI}/{base}.crt"));
    let key = read(env, &format!("{PKI}/{base}.key"));
    match (cert, key) {
        (Some(cert_pem), Some(key_pem)) => {
            println!("[certs] Using existing {base} certificate authority");
            Ok(CaPair { cert_pem, key_pem })
        }
        (Some(_), None) if !generate => Err(plain(format!(
            "failure loading {base} certificate authority: couldn't load the private key file {PKI}/{base}.key: open {PKI}/{base}.key: no such file or directory"
        ))),
        (Some(_), None) => Err(phase(
            "certs/ca",
            format!("failure loading {base} certificate authority: couldn't load the private key file {PKI}/{base}.key: open {PKI}/{base}.key: no such file or directory"),
        )),
        (None, _) if !generate => Err(plain(format!(
            "couldn't load the certificate file {PKI}/{base}.crt: open {PKI}/{base}.crt: no such file or directory"
        ))),
        (None, _) => {
            println!("[certs] Generating \"{base}\" certificate and key");
            let ca = CaPair::generate(cn).map_err(|e| plain(e.to_string()))?;
            write(env, &format!("{PKI}/{base}.crt"), &ca.cert_pem, 0o644)?;
            write(env, &format!("{PKI}/{base}.key"), &ca.key_pem, 0o600)?;
            Ok(ca)
        }
    }
}

fn leaf(env: &NodeEnv, ca: &CaPair, base: &str, spec: &Leaf) -> R<()> {
    let crt = format!("{PKI}/{base}.crt");
    if env.path(&crt).exists() && env.path(&format!("{PKI}/{base}.key")).exists() {
        println!("[certs] Using existing {base} certificate and key on disk");
        return Ok(());
    }
    println!("[certs] Generating \"{base}\" certificate and key");
    if spec.server {
        let ips: Vec<String> = spec.ips.iter().map(|i| i.to_string()).collect();
        println!(
            "[certs] {base} serving cert is signed for DNS names [{}] and IPs [{}]",
            spec.dns.join(" "),
            ips.join(" ")
        );
    }
    let (c, k) = ca.issue(spec).map_err(|e| plain(e.to_string()))?;
    write(env, &crt, &c, 0o644)?;
    write(env, &format!("{PKI}/{base}.key"), &k, 0o600)
}

fn split_sans(sans: &[String]) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = vec![];
    let mut ips = vec![];
    for s in sans {
        match s.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(s.clone()),
        }
    }
    (dns, ips)
}

/// kubeadm's certs phase. `generate_cas`: init may create CAs; a joining
/// control plane must already have them.
pub(super) fn certs_phase(
    env: &NodeEnv,
    cluster: &Cluster,
    name: &str,
    ip: IpAddr,
    generate_cas: bool,
) -> R<()> {
    println!("[certs] Using certificateDir folder \"{PKI}\"");
    let ca = load_or_generate_ca(env, "ca", "kubernetes", generate_cas)?;
    let mut dns: Vec<String> = vec![
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        format!("kubernetes.default.svc.{}", cluster.dns_domain),
        name.to_string(),
    ];
    let mut ips: Vec<IpAddr> = first_service_ip(&cluster.service_subnet)
        .into_iter()
        .collect();
    ips.push(ip);
    if let Some(ep) = &cluster.control_plane_endpoint {
        let host = ep.rsplit_once(':').map(|(h, _)| h).unwrap_or(ep);
        match host.parse::<IpAddr>() {
            Ok(a) => ips.push(a),
            Err(_) => dns.push(host.to_string()),
        }
    }
    let (sdns, sips) = split_sans(&cluster.cert_sans);
    dns.extend(sdns);
    ips.extend(sips);
    dns.dedup();
    ips.sort();
    ips.dedup();
    leaf(
        env,
        &ca,
        "apiserver",
        &Leaf {
            cn: "kube-apiserver".into(),
            dns,
            ips,
            server: true,
            ..Leaf::default()
        },
    )?;
    leaf(
        env,
        &ca,
        "apiserver-kubelet-client",
        &Leaf {
            cn: "kube-apiserver-kubelet-client".into(),
            orgs: vec!["kubeadm:cluster-admins".into()],
            client: true,
            ..Leaf::default()
        },
    )?;
    let fp = load_or_generate_ca(env, "front-proxy-ca", "front-proxy-ca", generate_cas)?;
    leaf(
        env,
        &fp,
        "front-proxy-client",
        &Leaf {
            cn: "front-proxy-client".into(),
            client: true,
            ..Leaf::default()
        },
    )?;
    if let EtcdMode::Local {
        server_cert_sans,
        peer_cert_sans,
        ..
    } = &cluster.etcd
    {
        let eca = load_or_generate_ca(env, "etcd/ca", "etcd-ca", generate_cas)?;
        let base_ips: Vec<IpAddr> = vec![
            ip,
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            "::1".parse().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ];
        for (base, sans) in [
            ("etcd/server", server_cert_sans),
            ("etcd/peer", peer_cert_sans),
        ] {
            let (d, i) = split_sans(sans);
            let mut dns = vec![name.to_string(), "localhost".to_string()];
            dns.extend(d);
            let mut ips = base_ips.clone();
            ips.extend(i);
            leaf(
                env,
                &eca,
                base,
                &Leaf {
                    cn: name.to_string(),
                    dns,
                    ips,
                    server: true,
                    client: true,
                    ..Leaf::default()
                },
            )?;
        }
        leaf(
            env,
            &eca,
            "etcd/healthcheck-client",
            &Leaf {
                cn: "kube-etcd-healthcheck-client".into(),
                client: true,
                ..Leaf::default()
            },
        )?;
        leaf(
            env,
            &eca,
            "apiserver-etcd-client",
            &Leaf {
                cn: "kube-apiserver-etcd-client".into(),
                client: true,
                ..Leaf::default()
            },
        )?;
    }
    if env.path(&format!("{PKI}/sa.key")).exists() && env.path(&format!("{PKI}/sa.pub")).exists() {
        println!("[certs] Using the existing \"sa\" key");
    } else if generate_cas {
        println!("[certs] Generating \"sa\" key and public key");
        let (k, p) = pki::sa_key_pair().map_err(|e| plain(e.to_string()))?;
        write(env, &format!("{PKI}/sa.key"), &k, 0o600)?;
        write(env, &format!("{PKI}/sa.pub"), &p, 0o644)?;
    } else {
        return Err(plain(format!(
            "failure loading key for service account: couldn't load the private key file {PKI}/sa.key: open {PKI}/sa.key: no such file or directory"
        )));
    }
    Ok(())
}

fn ca_pair(env: &NodeEnv) -> R<CaPair> {
    match (
        read(env, &format!("{PKI}/ca.crt")),
        read(env, &format!("{PKI}/ca.key")),
    ) {
        (Some(cert_pem), Some(key_pem)) => Ok(CaPair { cert_pem, key_pem }),
        _ => Err(plain(format!(
            "couldn't load the CA certificate and key from {PKI}/ca.crt and {PKI}/ca.key"
        ))),
    }
}

fn write_kubeconfig(
    env: &NodeEnv,
    ca: &CaPair,
    cluster_name: &str,
    file: &str,
    server: &str,
    user: &str,
    orgs: &[&str],
) -> R<()> {
    println!("[kubeconfig] Writing \"{file}\" kubeconfig file");
    let (cert, key) = ca
        .issue(&Leaf {
            cn: user.to_string(),
            orgs: orgs.iter().map(|s| s.to_string()).collect(),
            client: true,
            ..Leaf::default()
        })
        .map_err(|e| plain(e.to_string()))?;
    let text = kubeconfig::render(
        cluster_name,
        server,
        &ca.cert_pem,
        user,
        &User::CertData { cert, key },
    );
    write(env, &format!("/etc/kubernetes/{file}"), &text, 0o600)
}

pub(super) fn kubeconfig_phase(
    env: &NodeEnv,
    cluster: &Cluster,
    name: &str,
    endpoint: &str,
    local: &str,
    init: bool,
) -> R<()> {
    let ca = ca_pair(env)?;
    println!("[kubeconfig] Using kubeconfig folder \"/etc/kubernetes\"");
    let server = https(endpoint);
    let cn = &cluster.cluster_name;
    write_kubeconfig(
        env,
        &ca,
        cn,
        "admin.conf",
        &server,
        "kubernetes-admin",
        &["kubeadm:cluster-admins"],
    )?;
    if init {
        write_kubeconfig(
            env,
            &ca,
            cn,
            "super-admin.conf",
            &server,
            "kubernetes-super-admin",
            &["system:masters"],
        )?;
        let node_user = format!("system:node:{name}");
        write_kubeconfig(
            env,
            &ca,
            cn,
            "kubelet.conf",
            &server,
            &node_user,
            &["system:nodes"],
        )?;
    }
    let local = https(local);
    write_kubeconfig(
        env,
        &ca,
        cn,
        "controller-manager.conf",
        &local,
        "system:kube-controller-manager",
        &[],
    )?;
    write_kubeconfig(
        env,
        &ca,
        cn,
        "scheduler.conf",
        &local,
        "system:kube-scheduler",
        &[],
    )
}

pub(super) fn control_plane_manifests(
    env: &NodeEnv,
    cluster: &Cluster,
    ip: IpAddr,
    bind_port: u16,
) -> R<()> {
    println!("[control-plane] Using manifest folder \"{MANIFESTS_DIR}\"");
    let (servers, ca, cert, key) = match &cluster.etcd {
        EtcdMode::Local { .. } => (
            vec![format!("https://{ip}:2379")],
            format!("{PKI}/etcd/ca.crt"),
            format!("{PKI}/apiserver-etcd-client.crt"),
            format!("{PKI}/apiserver-etcd-client.key"),
        ),
        EtcdMode::External {
            endpoints,
            ca_file,
            cert_file,
            key_file,
        } => (
            endpoints.clone(),
            ca_file.clone(),
            cert_file.clone(),
            key_file.clone(),
        ),
    };
    println!("[control-plane] Creating static Pod manifest for \"kube-apiserver\"");
    let api = manifest::apiserver(&ApiServerPod {
        ip: ip.to_string(),
        bind_port,
        etcd_servers: servers,
        etcd_ca: ca,
        etcd_cert: cert,
        etcd_key: key,
        service_subnet: cluster.service_subnet.clone(),
        dns_domain: cluster.dns_domain.clone(),
        version: cluster.kubernetes_version.clone(),
        extra_args: cluster.api_server_extra_args.clone(),
    });
    write(
        env,
        &format!("{MANIFESTS_DIR}/kube-apiserver.yaml"),
        &api,
        0o600,
    )?;
    for (c, conf) in [
        (
            "kube-controller-manager",
            "/etc/kubernetes/controller-manager.conf",
        ),
        ("kube-scheduler", "/etc/kubernetes/scheduler.conf"),
    ] {
        println!("[control-plane] Creating static Pod manifest for \"{c}\"");
        let m = manifest::other_component(c, &cluster.kubernetes_version, conf);
        write(env, &format!("{MANIFESTS_DIR}/{c}.yaml"), &m, 0o600)?;
    }
    Ok(())
}

fn cri_socket(node: &NodeReg) -> String {
    node.cri_socket
        .clone()
        .unwrap_or_else(|| "unix:///var/run/containerd/containerd.sock".into())
}

/// The kubelet-start phase's files: config.yaml and kubeadm-flags.env with
/// `nodeRegistration.kubeletExtraArgs`.
pub(super) fn kubelet_files(env: &NodeEnv, node: &NodeReg, ip: IpAddr, taints: &[Taint]) -> R<()> {
    println!(
        "[kubelet-start] Writing kubelet configuration to file \"/var/lib/kubelet/config.yaml\""
    );
    write(
        env,
        "/var/lib/kubelet/config.yaml",
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\ncgroupDriver: systemd\nclusterDNS:\n- 10.96.0.10\nclusterDomain: cluster.local\nrotateCertificates: true\nstaticPodPath: /etc/kubernetes/manifests\n",
        0o644,
    )?;
    let mut flags = vec![
        format!("--container-runtime-endpoint={}", cri_socket(node)),
        format!("--node-ip={ip}"),
        "--pod-infra-container-image=registry.k8s.io/pause:3.10".to_string(),
    ];
    if !taints.is_empty() {
        let t: Vec<String> = taints
            .iter()
            .map(|t| match &t.value {
                Some(v) => format!("{}={}:{}", t.key, v, t.effect),
                None => format!("{}:{}", t.key, t.effect),
            })
            .collect();
        flags.push(format!("--register-with-taints={}", t.join(",")));
    }
    for (k, v) in &node.kubelet_extra_args {
        flags.retain(|f| !f.starts_with(&format!("--{k}=")));
        flags.push(format!("--{k}={v}"));
    }
    println!("[kubelet-start] Writing kubelet environment file with flags to file \"/var/lib/kubelet/kubeadm-flags.env\"");
    write(
        env,
        "/var/lib/kubelet/kubeadm-flags.env",
        &format!("KUBELET_KUBEADM_ARGS=\"{}\"\n", flags.join(" ")),
        0o644,
    )?;
    println!("[kubelet-start] Starting the kubelet");
    Ok(())
}

/// kubeadm's kubelet-check, against the kubelet double.
pub(super) fn kubelet_check(env: &NodeEnv, phase_name: &str) -> R<()> {
    println!("[kubelet-check] Waiting for a healthy kubelet at http://127.0.0.1:10248/healthz. This can take up to 4m0s");
    let start = Instant::now();
    wait_for(Duration::from_secs(10), || {
        if env.kubelet_running() {
            Ok(())
        } else {
            Err("dial tcp 127.0.0.1:10248: connect: connection refused".to_string())
        }
    })
    .map_err(|e| {
        phase(
            phase_name,
            format!("The HTTP call equal to 'curl -sSL http://127.0.0.1:10248/healthz' returned error: Get \"http://127.0.0.1:10248/healthz\": {e}\n\nUnfortunately, an error has occurred, likely caused by:\n\t- The kubelet is not running\n\t- The kubelet is unhealthy due to a misconfiguration of the node in some way (required cgroups disabled)"),
        )
    })?;
    println!(
        "[kubelet-check] The kubelet is healthy after {}",
        secs(start.elapsed())
    );
    Ok(())
}

pub(super) fn taints_for(node: &NodeReg, control_plane: bool) -> Vec<Taint> {
    match &node.taints {
        Some(t) => t.clone(),
        None if control_plane => vec![Taint {
            key: CONTROL_PLANE_LABEL.into(),
            value: None,
            effect: "NoSchedule".into(),
        }],
        None => vec![],
    }
}

pub(super) fn node_object(
    env: &NodeEnv,
    name: &str,
    ip: IpAddr,
    node: &NodeReg,
    control_plane: bool,
) -> Value {
    let mut labels = json!({
        "beta.kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
    });
    if control_plane {
        labels[CONTROL_PLANE_LABEL] = json!("");
        labels["node.kubernetes.io/exclude-from-external-load-balancers"] = json!("");
    }
    let v = env.version_of("kubelet");
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {
                "kubeadm.alpha.kubernetes.io/cri-socket": cri_socket(node),
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
        },
        "spec": {"taints": taints_for(node, control_plane)},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": ip.to_string()},
                {"type": "Hostname", "address": name},
            ],
            "nodeInfo": {
                "architecture": "amd64",
                "containerRuntimeVersion": "containerd://1.6.20",
                "kernelVersion": "6.1.0-kh-testbed",
                "kubeProxyVersion": v,
                "kubeletVersion": v,
                "operatingSystem": "linux",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
            },
        },
    })
}

pub(super) fn etcd_mirror_pod(name: &str, ip: IpAddr) -> Value {
    json!({
        "metadata": {
            "name": format!("etcd-{name}"),
            "namespace": "kube-system",
            "labels": {"component": "etcd", "tier": "control-plane"},
            "annotations": {
                "kubeadm.kubernetes.io/etcd.advertise-client-urls": format!("https://{ip}:2379"),
                "kubernetes.io/config.mirror": "static",
                "kubernetes.io/config.source": "file",
            },
        },
        "spec": {"nodeName": name},
    })
}

/// The etcd client endpoints of the cluster, from the etcd pods'
/// `kubeadm.kubernetes.io/etcd.advertise-client-urls` annotations, as
/// kubeadm's `etcdutil.NewFromCluster` finds them.
pub(super) fn etcd_endpoints(c: &Client) -> Result<Vec<String>, String> {
    let pods = client::get(c, "/api/v1/namespaces/kube-system/pods").map_err(|e| e.to_string())?;
    let mut eps: Vec<String> = pods["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|p| p["metadata"]["labels"]["component"] == "etcd")
                .filter_map(|p| {
                    p["metadata"]["annotations"]["kubeadm.kubernetes.io/etcd.advertise-client-urls"]
                        .as_str()
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    eps.sort();
    eps.dedup();
    if eps.is_empty() {
        return Err(
            "etcd cluster is not healthy: no etcd endpoints found in the etcd Pods' annotations"
                .into(),
        );
    }
    Ok(eps)
}

pub(super) fn etcdctl(env: &NodeEnv, endpoints: Vec<String>) -> Etcdctl {
    Etcdctl::new(
        endpoints,
        env.path(&format!("{PKI}/etcd/ca.crt")),
        env.path(&format!("{PKI}/etcd/healthcheck-client.crt")),
        env.path(&format!("{PKI}/etcd/healthcheck-client.key")),
    )
}

/// Waits for `https://ip:port/healthz` with the cluster CA.
pub(super) fn wait_apiserver(env: &NodeEnv, ip: IpAddr, port: u16, phase_name: &str) -> R<()> {
    println!("[api-check] Waiting for a healthy API server. This can take up to 4m0s");
    let ca = read(env, &format!("{PKI}/ca.crt")).unwrap_or_default();
    let c = Client::new(
        &format!("https://{ip}:{port}"),
        &Trust::Ca(ca),
        &Credentials::default(),
    )
    .map_err(|e| plain(e.to_string()))?;
    let start = Instant::now();
    wait_for(WAIT_LIMIT, || match c.get("/healthz") {
        Ok(r) if r.status == 200 => Ok(()),
        Ok(r) => Err(format!("the API server returned {}: {}", r.status, r.body.trim())),
        Err(e) => Err(e.to_string()),
    })
    .map_err(|e| {
        phase(
            phase_name,
            format!("failed while waiting for the control plane to start: kube-apiserver check failed at https://{ip}:{port}/healthz: {e}"),
        )
    })?;
    println!(
        "[api-check] The API server is healthy after {}",
        secs(start.elapsed())
    );
    Ok(())
}

/// kubeadm's API calls through the control-plane endpoint are retried until
/// its `kubernetesAPICall` timeout, so a load balancer that takes a new
/// apiserver into service only once its health checks pass (HAProxy's
/// `rise`) delays init instead of failing it. The double waits for the
/// endpoint to answer `/healthz` once, silently, before its first call.
pub(super) fn wait_endpoint(env: &NodeEnv, endpoint: &str, phase_name: &str) -> R<()> {
    let admin = admin_client(env, None)?;
    wait_for(WAIT_LIMIT, || match admin.get("/healthz") {
        Ok(r) if r.status == 200 => Ok(()),
        Ok(r) => Err(format!("the API server returned {}: {}", r.status, r.body.trim())),
        Err(e) => Err(e.to_string()),
    })
    .map_err(|e| {
        phase(
            phase_name,
            format!("error uploading configuration: unable to reach the control-plane endpoint https://{endpoint}: {e}"),
        )
    })
}

fn token_secret(token: &str, spec: &TokenSpec, now: std::time::SystemTime) -> Value {
    let (id, secret) = token.split_once('.').unwrap_or((token, ""));
    let mut data = json!({
        "token-id": b64(id),
        "token-secret": b64(secret),
    });
    if !spec.ttl.is_zero() {
        data["expiration"] = json!(b64(clock::rfc3339(now + spec.ttl)));
    }
    if !spec.description.is_empty() {
        data["description"] = json!(b64(&spec.description));
    }
    for u in &spec.usages {
        data[format!("usage-bootstrap-{u}")] = json!(b64("true"));
    }
    if !spec.groups.is_empty() {
        data["auth-extra-groups"] = json!(b64(spec.groups.join(",")));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system"},
        "type": "bootstrap.kubernetes.io/token",
        "data": data,
    })
}

pub(super) fn create_token(
    c: &Client,
    token: &str,
    spec: &TokenSpec,
    now: std::time::SystemTime,
) -> Result<(), String> {
    let id = token.split('.').next().unwrap_or_default();
    let name = format!("bootstrap-token-{id}");
    let path = format!("/api/v1/namespaces/kube-system/secrets/{name}");
    match client::get(c, &path) {
        Ok(_) => return Err(format!("a token with id \"{id}\" already exists")),
        Err(e) if e.is_not_found() => {}
        Err(e) => {
            return Err(format!(
                "failed to create or update bootstrap token with name {name}: {e}"
            ))
        }
    }
    client::put(c, &path, &token_secret(token, spec, now))
        .map(|_| ())
        .map_err(|e| format!("failed to create or update bootstrap token with name {name}: {e}"))
}

/// `[upload-certs]`: the shared CA set encrypted with `key` into the
/// `kubeadm-certs` Secret, owned by a 2 h bootstrap token so it expires
/// with it.
pub(super) fn upload_certs(
    env: &NodeEnv,
    c: &Client,
    cluster: &Cluster,
    key: &str,
) -> Result<(), String> {
    record_secrets(env, [key]);
    println!("[upload-certs] Storing the certificates in Secret \"{CERTS_SECRET}\" in the \"kube-system\" Namespace");
    let k = hex::decode(key).map_err(|e| format!("error decoding certificate key: {e}"))?;
    let mut data = serde_json::Map::new();
    for (name, path) in shared_files(cluster) {
        let bytes = std::fs::read(env.path(&path)).unwrap_or_default();
        let sealed = pki::encrypt(&k, &bytes).map_err(|e| e.to_string())?;
        data.insert(name.to_string(), json!(b64(sealed)));
    }
    let owner_token = random_token();
    let spec = TokenSpec {
        token: None,
        ttl: Duration::from_secs(2 * 3600),
        usages: vec![],
        groups: vec![],
        description: "Proxy for managing TTL for the kubeadm-certs secret".into(),
    };
    create_token(c, &owner_token, &spec, env.now())?;
    let owner = format!(
        "bootstrap-token-{}",
        owner_token.split('.').next().unwrap_or_default()
    );
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": CERTS_SECRET,
            "namespace": "kube-system",
            "ownerReferences": [{"apiVersion": "v1", "kind": "Secret", "name": owner, "controller": true, "blockOwnerDeletion": true}],
        },
        "type": "Opaque",
        "data": data,
    });
    client::put(
        c,
        &format!("/api/v1/namespaces/kube-system/secrets/{CERTS_SECRET}"),
        &secret,
    )
    .map_err(|e| format!("error uploading certs: {e}"))?;
    println!("[upload-certs] Using certificate key:\n{key}");
    Ok(())
}

/// kubeadm's join command template.
pub(super) fn join_command(
    endpoint: &str,
    token: &str,
    hash: &str,
    control_plane: bool,
    cert_key: Option<&str>,
) -> String {
    let mut s = format!(
        "kubeadm join {endpoint} --token {token} \\\n\t--discovery-token-ca-cert-hash {hash} "
    );
    if control_plane {
        s.push_str("\\\n\t--control-plane ");
        if let Some(k) = cert_key {
            s.push_str(&format!("--certificate-key {k}"));
        }
    }
    s
}

pub(super) fn cluster_info_kubeconfig(server: &str, ca: &str) -> String {
    let v = json!({
        "apiVersion": "v1",
        "clusters": [{"cluster": {"certificate-authority-data": b64(ca), "server": server}, "name": ""}],
        "contexts": null,
        "current-context": "",
        "kind": "Config",
        "preferences": {},
        "users": null,
    });
    serde_yaml::to_string(&v).unwrap_or_default()
}

pub(super) fn store_cluster_config(c: &Client, cluster: &Cluster) -> Result<(), String> {
    let cm = json!({
        "metadata": {"name": "kubeadm-config", "namespace": "kube-system"},
        "data": {"ClusterConfiguration": serde_json::to_string(cluster).unwrap_or_default()},
    });
    client::put(
        c,
        "/api/v1/namespaces/kube-system/configmaps/kubeadm-config",
        &cm,
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

pub(super) fn load_cluster_config(c: &Client) -> Result<Cluster, String> {
    let cm = client::get(
        c,
        "/api/v1/namespaces/kube-system/configmaps/kubeadm-config",
    )
    .map_err(|e| format!("unable to fetch the kubeadm-config ConfigMap: {e}"))?;
    serde_json::from_str(
        cm["data"]["ClusterConfiguration"]
            .as_str()
            .unwrap_or_default(),
    )
    .map_err(|e| format!("unable to decode the kubeadm-config ConfigMap: {e}"))
}
