//! `kubeadm join`, worker and control plane.

use super::*;

const JOIN_FLAGS: &[Flag] = &[
    value("config"),
    value("token"),
    value("discovery-token"),
    value("discovery-token-ca-cert-hash"),
    boolean("discovery-token-unsafe-skip-ca-verification"),
    value("tls-bootstrap-token"),
    boolean("control-plane"),
    value("certificate-key"),
    value("apiserver-advertise-address"),
    value("apiserver-bind-port"),
    value("node-name"),
    value("cri-socket"),
    value("ignore-preflight-errors"),
    value("skip-phases"),
];

fn join_from_flags(p: &Parsed) -> R<Join> {
    let endpoint = p.positional.first().cloned().ok_or_else(|| {
        plain("discovery: Invalid value: \"\": bootstrapToken or file must be set")
    })?;
    let token = p
        .get("discovery-token")
        .or(p.get("token"))
        .unwrap_or_default()
        .to_string();
    if !config::valid_token(&token) {
        return Err(plain(format!(
            "discovery.bootstrapToken.token: Invalid value: \"{token}\": the bootstrap token is invalid"
        )));
    }
    let hashes = p.all("discovery-token-ca-cert-hash");
    let skip = p.flag("discovery-token-unsafe-skip-ca-verification");
    if hashes.is_empty() && !skip {
        return Err(plain("discovery.bootstrapToken: Invalid value: \"\": using token-based discovery without caCertHashes can be unsafe. Set unsafeSkipCAVerification as true in your kubeadm config file or pass --discovery-token-unsafe-skip-ca-verification flag to continue"));
    }
    let control_plane = if p.flag("control-plane") {
        let advertise_address = match p.get("apiserver-advertise-address") {
            Some(a) => Some(a.parse().map_err(|_| plain(format!("couldn't use \"{a}\" as \"apiserver-advertise-address\", must be ipv4 or ipv6 address")))?),
            None => None,
        };
        let bind_port = p
            .get("apiserver-bind-port")
            .and_then(|x| x.parse().ok())
            .unwrap_or(6443);
        let certificate_key = p.get("certificate-key").map(str::to_string);
        if let Some(k) = &certificate_key {
            config::check_certificate_key(k).map_err(plain)?;
        }
        Some(JoinCp {
            advertise_address,
            bind_port,
            certificate_key,
        })
    } else {
        None
    };
    Ok(Join {
        endpoint,
        tls_bootstrap_token: p.get("tls-bootstrap-token").unwrap_or(&token).to_string(),
        token,
        ca_cert_hashes: hashes,
        unsafe_skip_ca_verification: skip,
        node: NodeReg {
            name: p.get("node-name").map(str::to_string),
            cri_socket: p.get("cri-socket").map(str::to_string),
            ..NodeReg::default()
        },
        control_plane,
        skip_phases: vec![],
    })
}

/// Token discovery: fetch cluster-info without trusting the server, check
/// the token's JWS signature and the CA pin, then trust that CA.
fn discover(j: &Join) -> R<String> {
    println!(
        "[preflight] Discovering cluster-info: fetching the cluster-info ConfigMap from https://{}",
        j.endpoint
    );
    let insecure = Client::new(
        &https(&j.endpoint),
        &Trust::Insecure,
        &Credentials::default(),
    )
    .map_err(|e| plain(e.to_string()))?;
    let fail = |m: String| {
        phase(
            "preflight",
            format!("couldn't validate the identity of the API Server: {m}"),
        )
    };
    let cm = client::get(
        &insecure,
        "/api/v1/namespaces/kube-public/configmaps/cluster-info",
    )
    .map_err(|e| fail(format!("failed to request the cluster-info ConfigMap: {e}")))?;
    let id = j.token.split('.').next().unwrap_or_default();
    let kc = cm["data"]["kubeconfig"].as_str().unwrap_or_default();
    let Some(sig) = cm["data"][format!("jws-kubeconfig-{id}")].as_str() else {
        return Err(fail(format!(
            "could not find a JWS signature in the cluster-info ConfigMap for token ID \"{id}\""
        )));
    };
    if crate::apiserver::jws_detached(kc, id, &j.token) != sig {
        return Err(fail("failed to verify JWS signature of received cluster info object, can't trust this API Server".into()));
    }
    let ca = kubeconfig::first_cluster_ca(kc).map_err(|e| fail(e.to_string()))?;
    if !j.unsafe_skip_ca_verification {
        let h = pki::ca_cert_hash(&ca).map_err(|e| fail(e.to_string()))?;
        if !j.ca_cert_hashes.iter().any(|x| x.eq_ignore_ascii_case(&h)) {
            return Err(fail(format!(
                "cluster CA found in cluster-info ConfigMap is invalid: none of the public keys \"{h}\" are pinned"
            )));
        }
    }
    println!("[preflight] Cluster info signature and contents are valid and TLS certificate validates against pinned roots, will use API Server \"https://{}\"", j.endpoint);
    Ok(ca)
}

pub(super) fn join(env: &NodeEnv, argv: &[String]) -> R<()> {
    let p = parse(argv, JOIN_FLAGS)?;
    let version = env.version();
    let mut j = match p.get("config") {
        Some(file) => {
            let mut others = mixed(&p);
            if !p.positional.is_empty() {
                others.extend(p.positional.iter().cloned());
            }
            let text = config_file(file, &others)?;
            config::parse_join(&text, &version).map_err(plain)?
        }
        None => join_from_flags(&p)?,
    };
    j.skip_phases.extend(p.all("skip-phases"));
    let mut ignore = j.node.ignore_preflight_errors.clone();
    ignore.extend(p.all("ignore-preflight-errors"));
    record_secrets(
        env,
        [j.token.as_str(), j.tls_bootstrap_token.as_str()]
            .into_iter()
            .chain(
                j.control_plane
                    .as_ref()
                    .and_then(|c| c.certificate_key.as_deref()),
            ),
    );
    let node_ip = node_ip(env)?;
    let ip = j
        .control_plane
        .as_ref()
        .and_then(|c| c.advertise_address)
        .unwrap_or(IpAddr::V4(node_ip));
    let name = j.node.name.clone().unwrap_or_else(|| env.hostname());
    let cp = j.control_plane.clone();
    // Benchmarks only: a configured latency (none by default), see latency.rs.
    let _timed = super::latency::begin(
        env,
        if cp.is_some() {
            super::latency::Op::JoinControlPlane
        } else {
            super::latency::Op::JoinWorker
        },
    );

    println!("[preflight] Running pre-flight checks");
    let mut pf = Preflight::new();
    pf.file_available(env, KUBELET_CONF);
    pf.file_available(env, "/etc/kubernetes/bootstrap-kubelet.conf");
    if let Some(cp) = &cp {
        manifests_preflight(env, &mut pf, true);
        if let IpAddr::V4(v4) = ip {
            pf.port(v4, cp.bind_port);
        }
    } else {
        pf.file_available(env, &format!("{PKI}/ca.crt"));
    }
    pf.finish(&ignore)?;
    let ca_pem = discover(&j)?;
    let bootstrap = Client::new(
        &https(&j.endpoint),
        &Trust::Ca(ca_pem.clone()),
        &Credentials {
            cert: None,
            bearer: Some(j.tls_bootstrap_token.clone()),
        },
    )
    .map_err(|e| plain(e.to_string()))?;
    println!("[preflight] Reading configuration from the \"kubeadm-config\" ConfigMap in namespace \"kube-system\"...");
    println!("[preflight] Use 'kubeadm init phase upload-config --config your-config.yaml' to re-upload it.");
    let cluster = load_cluster_config(&bootstrap).map_err(|e| phase("preflight", e))?;
    let local_etcd = matches!(cluster.etcd, EtcdMode::Local { .. });

    if let Some(cp) = &cp {
        if cluster.control_plane_endpoint.is_none() {
            return Err(phase("preflight", "\nOne or more conditions for hosting a new control plane instance is not satisfied.\n\nunable to add a new control plane instance to a cluster that doesn't have a stable controlPlaneEndpoint address\n\nPlease ensure that:\n* The cluster has a stable controlPlaneEndpoint address.\n* The certificates that must be shared among control plane instances are provided.\n\n"));
        }
        println!("[preflight] Running pre-flight checks before initializing the new control plane instance");
        let mut pf = Preflight::new();
        if let IpAddr::V4(v4) = ip {
            if local_etcd {
                pf.port(v4, 2379);
                pf.port(v4, 2380);
            }
        }
        if let EtcdMode::Local { data_dir, .. } = &cluster.etcd {
            pf.dir_available(env, data_dir);
        }
        pf.finish(&ignore)?;
        if cp.certificate_key.is_none() {
            let missing: Vec<String> = shared_files(&cluster)
                .into_iter()
                .filter(|(_, path)| !env.path(path).exists())
                .map(|(name, path)| {
                    let what = if name.ends_with(".crt") || name.ends_with(".pub") { "certificate" } else { "key" };
                    format!("failure loading {what} {name}: couldn't load the file {path}: open {path}: no such file or directory")
                })
                .collect();
            if !missing.is_empty() {
                return Err(phase(
                    "preflight",
                    format!("\nOne or more conditions for hosting a new control plane instance is not satisfied.\n\n[{}]\n\nPlease ensure that:\n* The cluster has a stable controlPlaneEndpoint address.\n* The certificates that must be shared among control plane instances are provided.\n\n", missing.join(", ")),
                ));
            }
        }
        println!("[preflight] Pulling images required for setting up a Kubernetes cluster");
        println!("[preflight] This might take a minute or two, depending on the speed of your internet connection");
        println!("[preflight] You can also perform this action beforehand using 'kubeadm config images pull'");
        if let Some(key) = &cp.certificate_key {
            download_certs(env, &bootstrap, &cluster, key)?;
        }
        certs_phase(env, &cluster, &name, ip, false)
            .map_err(|Fail(m)| phase("control-plane-prepare/certs", m))?;
        let endpoint = cluster.control_plane_endpoint.clone().unwrap_or_default();
        kubeconfig_phase(
            env,
            &cluster,
            &name,
            &endpoint,
            &format!("{ip}:{}", cp.bind_port),
            false,
        )
        .map_err(|Fail(m)| phase("control-plane-prepare/kubeconfig", m))?;
        control_plane_manifests(env, &cluster, ip, cp.bind_port)?;
    }

    // kubelet-start: the TLS bootstrap the kubelet does with the token.
    let taints = taints_for(&j.node, cp.is_some());
    kubelet_files(env, &j.node, ip, &taints)?;
    kubelet_check(env, "kubelet-start")?;
    println!("[kubelet-start] Waiting for the kubelet to perform the TLS Bootstrap");
    match client::get(&bootstrap, &format!("/api/v1/nodes/{name}")) {
        Ok(n) => {
            let ready = n["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            if ready {
                return Err(phase("kubelet-start", format!("a Node with name \"{name}\" and status \"Ready\" already exists in the cluster. You must delete the existing Node or change the name of this new joining Node")));
            }
        }
        Err(e) if e.is_not_found() => {}
        Err(e) => {
            return Err(phase(
                "kubelet-start",
                format!("cannot get Node \"{name}\": {e}"),
            ))
        }
    }
    let (key_pem, csr) = pki::key_and_csr(&format!("system:node:{name}"), &["system:nodes"])
        .map_err(|e| plain(e.to_string()))?;
    let csr_obj = json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "spec": {"request": b64(&csr), "signerName": "kubernetes.io/kube-apiserver-client-kubelet", "usages": ["digital signature", "client auth"], "nodeName": name},
    });
    let signed = client::post(
        &bootstrap,
        "/apis/certificates.k8s.io/v1/certificatesigningrequests",
        &csr_obj,
    )
    .map_err(|e| {
        phase(
            "kubelet-start",
            format!("failed to run Kubelet: unable to request signed certificate: {e}"),
        )
    })?;
    let cert_pem = signed["status"]["certificate"]
        .as_str()
        .and_then(crate::kube::unb64)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    write(
        env,
        KUBELET_CLIENT_PEM,
        &format!("{cert_pem}{key_pem}"),
        0o600,
    )?;
    let node_user = format!("system:node:{name}");
    let kc = kubeconfig::render(
        "default-cluster",
        &https(&j.endpoint),
        &ca_pem,
        "default-auth",
        &User::CertFile(KUBELET_CLIENT_PEM.into()),
    );
    write(env, KUBELET_CONF, &kc, 0o600)?;
    let kubelet = kubeconfig::load(env, &env.path(KUBELET_CONF))
        .and_then(|t| t.client())
        .map_err(|e| phase("kubelet-start", e))?;
    register_node(&kubelet, &node_object(env, &name, ip, &j.node, false))
        .map_err(|e| phase("kubelet-start", format!("{node_user}: {e}")))?;

    let Some(cp) = cp else {
        print!("\nThis node has joined the cluster:\n* Certificate signing request was sent to apiserver and a response was received.\n* The Kubelet was informed of the new secure connection details.\n\nRun 'kubectl get nodes' on the control-plane to see this node join the cluster.\n\n");
        return Ok(());
    };
    let admin = admin_client(env, None)?;
    if let EtcdMode::Local {
        data_dir,
        extra_args,
        ..
    } = &cluster.etcd
    {
        etcd_join(env, &admin, &name, ip, data_dir, extra_args)?;
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
    client::put(
        &admin,
        &format!("/api/v1/nodes/{name}"),
        &node_object(env, &name, ip, &j.node, true),
    )
    .map_err(|e| phase("control-plane-join/mark-control-plane", e))?;
    wait_apiserver(env, ip, cp.bind_port, "wait-control-plane")?;
    print!("\nThis node has joined the cluster and a new control plane instance was created:\n\n* Certificate signing request was sent to apiserver and approval was received.\n* The Kubelet was informed of the new secure connection details.\n* Control plane label and taint were applied to the new node.\n* The Kubernetes control plane instances scaled up.\n* A new etcd member was added to the local/stacked etcd cluster.\n\nTo start administering your cluster from this node, you need to run the following as a regular user:\n\n\tmkdir -p $HOME/.kube\n\tsudo cp -i /etc/kubernetes/admin.conf $HOME/.kube/config\n\tsudo chown $(id -u):$(id -g) $HOME/.kube/config\n\nRun 'kubectl get nodes' to see this node join the cluster.\n\n");
    Ok(())
}

fn download_certs(env: &NodeEnv, c: &Client, cluster: &Cluster, key: &str) -> R<()> {
    const PH: &str = "control-plane-prepare/download-certs";
    println!("[download-certs] Downloading the certificates in Secret \"{CERTS_SECRET}\" in the \"kube-system\" Namespace");
    let k = hex::decode(key).map_err(|e| {
        phase(
            PH,
            format!("error downloading certs: error decoding certificate key: {e}"),
        )
    })?;
    let secret = match client::get(
        c,
        &format!("/api/v1/namespaces/kube-system/secrets/{CERTS_SECRET}"),
    ) {
        Ok(s) => s,
        Err(e) if e.is_not_found() => {
            return Err(phase(PH, format!("error downloading certs: error downloading the secret: Secret \"{CERTS_SECRET}\" was not found in the \"kube-system\" Namespace. This Secret might have expired. Please, run `kubeadm init phase upload-certs --upload-certs` on a control plane to generate a new one")));
        }
        Err(e) => {
            return Err(phase(
                PH,
                format!("error downloading certs: error downloading the secret: {e}"),
            ))
        }
    };
    let mut files = vec![];
    for (name, path) in shared_files(cluster) {
        let Some(sealed) = client::secret_field(&secret, name) else {
            return Err(phase(PH, format!("error downloading certs: the Secret does not include the required certificate or key - name: {name}, path: {path}")));
        };
        let plain_bytes = pki::decrypt(&k, &sealed).map_err(|e| {
            phase(
                PH,
                format!(
                    "error downloading certs: error decoding secret data with provided key: {e}"
                ),
            )
        })?;
        files.push((path, plain_bytes));
    }
    println!("[download-certs] Saving the certificates to the folder: \"{PKI}\"");
    for (path, bytes) in files {
        if bytes.is_empty() {
            continue;
        }
        let mode = if path.ends_with(".key") { 0o600 } else { 0o644 };
        write_file(&env.path(&path), &bytes, mode)
            .map_err(|e| phase(PH, format!("{path}: {e}")))?;
    }
    Ok(())
}

/// control-plane-join/etcd: add this host as a learner, start it through
/// the kubelet, promote it once it has caught up.
fn etcd_join(
    env: &NodeEnv,
    admin: &Client,
    name: &str,
    ip: IpAddr,
    data_dir: &str,
    extra: &[(String, String)],
) -> R<()> {
    const PH: &str = "control-plane-join/etcd";
    let fail = |e: String| {
        phase(
            PH,
            format!("error creating local etcd static pod manifest file: {e}"),
        )
    };
    let endpoints = etcd_endpoints(admin).map_err(fail)?;
    let ctl = etcdctl(env, endpoints);
    let peer = format!("https://{ip}:2380");
    println!("[etcd] Adding etcd member as learner: {peer}");
    // etcd refuses membership changes until every voting member has been
    // connected for 5 s ("unhealthy cluster"), as right after the previous
    // join; kubeadm retries that. Other errors (a pending learner, a stale
    // member with this peer URL) fail at once.
    let start = Instant::now();
    let mut refused: Option<Instant> = None;
    // A call that timed out on our side may still have added the member;
    // like kubeadm, a retry that then finds its own peer URL takes the
    // member as added.
    let mut timed_out = false;
    let out = loop {
        match ctl.run(&[
            "member",
            "add",
            name,
            &format!("--peer-urls={peer}"),
            "--learner",
        ]) {
            Ok(out) => break out,
            Err(e) if e.contains("unhealthy cluster") && start.elapsed() < ADD_MEMBER_RETRY => {
                refused.get_or_insert_with(Instant::now);
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e)
                if e.contains("context deadline exceeded")
                    && start.elapsed() < ADD_MEMBER_RETRY =>
            {
                timed_out = true;
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) if timed_out && e.contains("Peer URLs already exists") => {
                let list = ctl.run(&["member", "list"]).map_err(fail)?;
                let initial: Vec<String> = list
                    .lines()
                    .filter_map(|l| {
                        let f: Vec<&str> = l.split(", ").collect();
                        let (member, peers) = (*f.get(2)?, *f.get(3)?);
                        let member = if member.is_empty() && peers == peer {
                            name
                        } else {
                            member
                        };
                        (!member.is_empty()).then(|| format!("{member}={peers}"))
                    })
                    .collect();
                break format!("ETCD_INITIAL_CLUSTER=\"{}\"", initial.join(","));
            }
            Err(e) => return Err(fail(e)),
        }
    };
    if let Some(t) = refused {
        super::latency::note_etcd_settle(t.elapsed());
    }
    let initial = out
        .lines()
        .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER="))
        .map(|s| s.trim_matches('"').to_string())
        .ok_or_else(|| fail(format!("unexpected output from etcd member add: {out}")))?;
    println!("[etcd] Announced new etcd member joining to the existing etcd cluster");
    println!("[etcd] Creating static Pod manifest for \"etcd\"");
    let m = manifest::etcd(&EtcdPod {
        name: name.to_string(),
        ip: ip.to_string(),
        data_dir: data_dir.to_string(),
        initial_cluster: initial,
        initial_cluster_state: Some("existing"),
        extra_args: extra.to_vec(),
    });
    write(env, &format!("{MANIFESTS_DIR}/etcd.yaml"), &m, 0o600)?;
    println!("[etcd] Waiting for the new etcd member to join the cluster. This can take up to 40s");
    let start = Instant::now();
    wait_for(PROMOTE_LIMIT, || {
        let members = ctl.members()?;
        let me = members
            .iter()
            .find(|m| m.peer_urls.contains(&peer))
            .ok_or_else(|| format!("etcd member with peer URL {peer} not found"))?;
        if !me.is_learner {
            return Ok(());
        }
        ctl.run(&["member", "promote", &me.hex_id()]).map(|_| ())
    })
    .map_err(|e| phase(PH, format!("error creating local etcd static pod manifest file: timeout waiting for etcd cluster to be available: {e}")))?;
    println!(
        "[etcd] The learner member was promoted to a voting member after {}",
        secs(start.elapsed())
    );
    let local = etcdctl(env, vec![format!("https://{ip}:2379")]);
    wait_for(WAIT_LIMIT, || {
        local.run(&["endpoint", "health"]).map(|_| ())
    })
    .map_err(|e| {
        phase(
            PH,
            format!("error waiting for the local etcd member to become healthy: {e}"),
        )
    })?;
    client::put(
        admin,
        &format!("/api/v1/namespaces/kube-system/pods/etcd-{name}"),
        &etcd_mirror_pod(name, ip),
    )
    .map_err(|e| phase(PH, e))?;
    Ok(())
}
