//! `kubeadm init`.

use super::*;

const INIT_FLAGS: &[Flag] = &[
    value("config"),
    boolean("upload-certs"),
    value("certificate-key"),
    value("skip-phases"),
    value("ignore-preflight-errors"),
    value("apiserver-advertise-address"),
    value("apiserver-bind-port"),
    value("control-plane-endpoint"),
    value("pod-network-cidr"),
    value("service-cidr"),
    value("service-dns-domain"),
    value("kubernetes-version"),
    value("node-name"),
    value("token"),
    value("token-ttl"),
    value("cri-socket"),
    value("apiserver-cert-extra-sans"),
];

/// Flags that may be combined with --config, as in kubeadm.
/// The flags kubeadm lets stand beside `--config` (its
/// `validation.isAllowedFlag`); every `--skip-*` flag is allowed too. A
/// secret flag such as `--certificate-key` is not: with a config file the
/// secret goes into the file.
const MIXABLE: &[&str] = &[
    "config",
    "ignore-preflight-errors",
    "dry-run",
    "kubeconfig",
    "node-name",
    "kubeconfig-dir",
    "upload-certs",
    "print-join-command",
    "rootfs",
    "v",
    "log-file",
];

/// The flags given beside `--config` that kubeadm refuses with it.
pub(super) fn mixed(p: &Parsed) -> Vec<String> {
    p.others(MIXABLE)
        .into_iter()
        .filter(|f| !f.starts_with("skip-"))
        .collect()
}

/// The testbed's record of every bootstrap token and certificate key this
/// double was given or made (`<node>/kubeadm-secrets.log`, one per line),
/// so tests can prove none of them ever reached a command line (`calls.log`)
/// or a file left on a host. Testbed-only: real kubeadm keeps no such list.
pub const SECRETS_FILE: &str = "kubeadm-secrets.log";

pub(super) fn record_secrets<'a>(env: &NodeEnv, secrets: impl IntoIterator<Item = &'a str>) {
    use std::io::Write;
    let lines: String = secrets
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(|s| format!("{s}\n"))
        .collect();
    if lines.is_empty() {
        return;
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(env.node_dir.join(SECRETS_FILE))
    {
        // One write: doubles on one node may run at once.
        let _ = f.write_all(lines.as_bytes());
    }
}

fn init_from_flags(p: &Parsed, version: &str) -> R<Init> {
    let mut doc = format!(
        "apiVersion: {}\nkind: ClusterConfiguration\nkubernetesVersion: {}\n",
        config::api_for(version),
        p.get("kubernetes-version").unwrap_or(version)
    );
    if let Some(e) = p.get("control-plane-endpoint") {
        doc.push_str(&format!("controlPlaneEndpoint: \"{e}\"\n"));
    }
    doc.push_str("networking:\n");
    if let Some(c) = p.get("pod-network-cidr") {
        doc.push_str(&format!("  podSubnet: \"{c}\"\n"));
    }
    doc.push_str(&format!(
        "  serviceSubnet: \"{}\"\n  dnsDomain: \"{}\"\n",
        p.get("service-cidr").unwrap_or("10.96.0.0/12"),
        p.get("service-dns-domain").unwrap_or("cluster.local")
    ));
    let sans = p.all("apiserver-cert-extra-sans");
    if !sans.is_empty() {
        doc.push_str(&format!(
            "apiServer:\n  certSANs: {}\n",
            serde_json::to_string(&sans).unwrap_or_default()
        ));
    }
    let mut init = config::parse_init(&doc, version).map_err(plain)?;
    if let Some(a) = p.get("apiserver-advertise-address") {
        init.advertise_address = Some(a.parse().map_err(|_| plain(format!("couldn't use \"{a}\" as \"apiserver-advertise-address\", must be ipv4 or ipv6 address")))?);
    }
    if let Some(port) = p.get("apiserver-bind-port") {
        init.bind_port = port.parse().map_err(|_| {
            plain(format!(
                "invalid argument \"{port}\" for \"--apiserver-bind-port\""
            ))
        })?;
    }
    init.node.name = p.get("node-name").map(str::to_string);
    init.node.cri_socket = p.get("cri-socket").map(str::to_string);
    if let Some(t) = p.get("token") {
        if !config::valid_token(t) {
            return Err(plain(format!("the bootstrap token \"{t}\" was not of the form \"^([a-z0-9]{{6}})\\\\.([a-z0-9]{{16}})$\"")));
        }
        init.tokens[0].token = Some(t.to_string());
    }
    if let Some(ttl) = p.get("token-ttl") {
        init.tokens[0].ttl = clock::parse_go_duration(ttl).ok_or_else(|| plain(format!("invalid argument \"{ttl}\" for \"--token-ttl\" flag: time: invalid duration \"{ttl}\"")))?;
    }
    Ok(init)
}

pub(super) fn init(env: &NodeEnv, argv: &[String]) -> R<()> {
    let p = parse(argv, INIT_FLAGS)?;
    if let Some(extra) = p.positional.first() {
        return Err(plain(format!(
            "unknown command \"{extra}\" for \"kubeadm init\""
        )));
    }
    let version = env.version();
    let mut cfg = match p.get("config") {
        Some(file) => {
            let text = config_file(file, &mixed(&p))?;
            config::parse_init(&text, &version).map_err(plain)?
        }
        None => init_from_flags(&p, &version)?,
    };
    if let Some(k) = p.get("certificate-key") {
        config::check_certificate_key(k).map_err(plain)?;
        cfg.certificate_key = Some(k.to_string());
    }
    let mut skip = cfg.skip_phases.clone();
    skip.extend(p.all("skip-phases"));
    let mut ignore = cfg.node.ignore_preflight_errors.clone();
    ignore.extend(p.all("ignore-preflight-errors"));
    let cluster = cfg.cluster.clone();
    let node_ip = node_ip(env)?;
    let ip = cfg.advertise_address.unwrap_or(IpAddr::V4(node_ip));
    let name = cfg.node.name.clone().unwrap_or_else(|| env.hostname());
    let local_etcd = matches!(cluster.etcd, EtcdMode::Local { .. });
    // Benchmarks only: a configured latency (none by default), see latency.rs.
    let _timed = super::latency::begin(env, super::latency::Op::Init);

    println!(
        "[init] Using Kubernetes version: {}",
        cluster.kubernetes_version
    );
    println!("[preflight] Running pre-flight checks");
    let mut pf = Preflight::new();
    manifests_preflight(env, &mut pf, local_etcd);
    pf.file_available(env, ADMIN_CONF);
    if let IpAddr::V4(v4) = ip {
        pf.port(v4, cfg.bind_port);
        if local_etcd {
            pf.port(v4, 2379);
            pf.port(v4, 2380);
        }
    }
    if let EtcdMode::Local { data_dir, .. } = &cluster.etcd {
        pf.dir_available(env, data_dir);
    }
    pf.finish(&ignore)?;
    println!("[preflight] Pulling images required for setting up a Kubernetes cluster");
    println!("[preflight] This might take a minute or two, depending on the speed of your internet connection");
    println!("[preflight] You can also perform this action beforehand using 'kubeadm config images pull'");

    let endpoint = cluster
        .control_plane_endpoint
        .clone()
        .unwrap_or_else(|| format!("{ip}:{}", cfg.bind_port));
    let local = format!("{ip}:{}", cfg.bind_port);
    certs_phase(env, &cluster, &name, ip, true).map_err(|Fail(m)| {
        if m.starts_with("error execution phase") {
            Fail(m)
        } else {
            phase("certs", m)
        }
    })?;
    kubeconfig_phase(env, &cluster, &name, &endpoint, &local, true)?;
    if let EtcdMode::Local {
        data_dir,
        extra_args,
        ..
    } = &cluster.etcd
    {
        println!("[etcd] Creating static Pod manifest for local etcd in \"{MANIFESTS_DIR}\"");
        let m = manifest::etcd(&EtcdPod {
            name: name.clone(),
            ip: ip.to_string(),
            data_dir: data_dir.clone(),
            initial_cluster: format!("{name}=https://{ip}:2380"),
            initial_cluster_state: None,
            extra_args: extra_args.clone(),
        });
        write(env, &format!("{MANIFESTS_DIR}/etcd.yaml"), &m, 0o600)?;
    }
    control_plane_manifests(env, &cluster, ip, cfg.bind_port)?;
    let taints = taints_for(&cfg.node, true);
    kubelet_files(env, &cfg.node, ip, &taints)?;
    println!("[wait-control-plane] Waiting for the kubelet to boot up the control plane as static Pods from directory \"{MANIFESTS_DIR}\"");
    kubelet_check(env, "wait-control-plane")?;
    wait_apiserver(env, ip, cfg.bind_port, "wait-control-plane")?;
    if endpoint != local {
        wait_endpoint(env, &endpoint, "upload-config/kubeadm")?;
    }

    let admin = admin_client(env, None)?;
    let api = |phase_name: &'static str| move |e: String| phase(phase_name, e);
    println!("[upload-config] Storing the configuration used in ConfigMap \"kubeadm-config\" in the \"kube-system\" Namespace");
    store_cluster_config(&admin, &cluster).map_err(api("upload-config/kubeadm"))?;
    println!("[kubelet] Creating a ConfigMap \"kubelet-config\" in namespace kube-system with the configuration for the kubelets in the cluster");
    if p.flag("upload-certs") && !skip.iter().any(|s| s == "upload-certs") {
        let key = cfg.certificate_key.clone().unwrap_or_else(random_key);
        upload_certs(env, &admin, &cluster, &key).map_err(api("upload-certs"))?;
        cfg.certificate_key = Some(key);
    } else {
        println!("[upload-certs] Skipping phase. Please see --upload-certs");
        cfg.certificate_key = None;
    }
    println!("[mark-control-plane] Marking the node {name} as control-plane by adding the labels: [{CONTROL_PLANE_LABEL} node.kubernetes.io/exclude-from-external-load-balancers]");
    let t: Vec<String> = taints
        .iter()
        .map(|t| format!("{}:{}", t.key, t.effect))
        .collect();
    println!(
        "[mark-control-plane] Marking the node {name} as control-plane by adding the taints [{}]",
        t.join(" ")
    );
    register_node(&admin, &node_object(env, &name, ip, &cfg.node, true))
        .map_err(api("mark-control-plane"))?;
    if local_etcd {
        client::put(
            &admin,
            &format!("/api/v1/namespaces/kube-system/pods/etcd-{name}"),
            &etcd_mirror_pod(&name, ip),
        )
        .map_err(|e| phase("mark-control-plane", e))?;
    }
    let mut tokens = vec![];
    for spec in &cfg.tokens {
        let t = spec.token.clone().unwrap_or_else(random_token);
        record_secrets(env, [t.as_str()]);
        create_token(&admin, &t, spec, env.now()).map_err(api("bootstrap-token"))?;
        tokens.push(t);
    }
    println!("[bootstrap-token] Using token: {}", tokens[0]);
    println!("[bootstrap-token] Configuring bootstrap tokens, cluster-info ConfigMap, RBAC Roles");
    println!("[bootstrap-token] Configured RBAC rules to allow Node Bootstrap tokens to get nodes");
    println!("[bootstrap-token] Configured RBAC rules to allow Node Bootstrap tokens to post CSRs in order for nodes to get long term certificate credentials");
    println!("[bootstrap-token] Configured RBAC rules to allow the csrapprover controller automatically approve CSRs from a Node Bootstrap Token");
    println!("[bootstrap-token] Configured RBAC rules to allow certificate rotation for all node client certificates in the cluster");
    println!("[bootstrap-token] Creating the \"cluster-info\" ConfigMap in the \"kube-public\" namespace");
    let ca = read(env, &format!("{PKI}/ca.crt")).unwrap_or_default();
    let ci = json!({
        "metadata": {"name": "cluster-info", "namespace": "kube-public"},
        "data": {"kubeconfig": cluster_info_kubeconfig(&https(&endpoint), &ca)},
    });
    client::put(
        &admin,
        "/api/v1/namespaces/kube-public/configmaps/cluster-info",
        &ci,
    )
    .map_err(|e| phase("bootstrap-token", e))?;
    println!("[kubelet-finalize] Updating \"{KUBELET_CONF}\" to point to a rotatable kubelet client certificate and key");
    println!("[addons] Applied essential addon: CoreDNS");
    println!("[addons] Applied essential addon: kube-proxy");
    let hash = pki::ca_cert_hash(&ca).map_err(|e| plain(e.to_string()))?;
    print!("\nYour Kubernetes control-plane has initialized successfully!\n\nTo start using your cluster, you need to run the following as a regular user:\n\n  mkdir -p $HOME/.kube\n  sudo cp -i /etc/kubernetes/admin.conf $HOME/.kube/config\n  sudo chown $(id -u):$(id -g) $HOME/.kube/config\n\nAlternatively, if you are the root user, you can run:\n\n  export KUBECONFIG=/etc/kubernetes/admin.conf\n\nYou should now deploy a pod network to the cluster.\nRun \"kubectl apply -f [podnetwork].yaml\" with one of the options listed at:\n  https://kubernetes.io/docs/concepts/cluster-administration/addons/\n\n");
    if cluster.control_plane_endpoint.is_some() {
        match &cfg.certificate_key {
            Some(k) => print!(
                "You can now join any number of control-plane nodes running the following command on each as root:\n\n  {}\n\nPlease note that the certificate-key gives access to cluster sensitive data, keep it secret!\nAs a safeguard, uploaded-certs will be deleted in two hours; If necessary, you can use\n\"kubeadm init phase upload-certs --upload-certs\" to reload certs afterward.\n\n",
                join_command(&endpoint, &tokens[0], &hash, true, Some(k))
            ),
            None => print!(
                "You can now join any number of control-plane nodes by copying certificate authorities\nand service account keys on each node and then running the following as root:\n\n  {}\n\n",
                join_command(&endpoint, &tokens[0], &hash, true, None)
            ),
        }
    }
    println!(
        "Then you can join any number of worker nodes by running the following on each as root:\n\n{}",
        join_command(&endpoint, &tokens[0], &hash, false, None)
    );
    Ok(())
}

/// The `--config` file's text, as kubeadm refuses it: mixed with other
/// arguments, or unreadable.
pub(super) fn config_file(file: &str, others: &[String]) -> R<String> {
    if !others.is_empty() {
        // Go's %v of a []string: `[ttl certificate-key]`.
        return Err(plain(format!(
            "can not mix '--config' with arguments [{}]",
            others.join(" ")
        )));
    }
    std::fs::read_to_string(file).map_err(|e| {
        plain(format!(
            "unable to read config from \"{file}\" : open {file}: {}",
            io_text(&e)
        ))
    })
}

fn io_text(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

pub(super) fn register_node(c: &Client, node: &Value) -> Result<(), String> {
    let name = node["metadata"]["name"].as_str().unwrap_or_default();
    match client::post(c, "/api/v1/nodes", node) {
        Ok(_) => Ok(()),
        Err(e) if e.is_already_exists() => {
            // A node object left from before (not Ready, or the same host
            // joining again): the kubelet takes it over.
            client::put(c, &format!("/api/v1/nodes/{name}"), node)
                .map(|_| ())
                .map_err(|e| format!("unable to register node {name:?} with API server: {e}"))
        }
        Err(e) => Err(format!(
            "unable to register node {name:?} with API server: {e}"
        )),
    }
}
