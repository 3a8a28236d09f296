//! `kubeadm reset`.

use super::*;

pub(super) fn reset(env: &NodeEnv, argv: &[String]) -> R<()> {
    let p = parse(
        argv,
        &[
            short(boolean("force"), 'f'),
            boolean("cleanup-tmp-dir"),
            value("cri-socket"),
            value("ignore-preflight-errors"),
            value("kubeconfig"),
            value("skip-phases"),
            value("config"),
        ],
    )?;
    if !p.flag("force") {
        println!("W0000 00:00:00.000000       1 preflight.go:56] [reset] WARNING: Changes made to this host by 'kubeadm init' or 'kubeadm join' will be reverted.");
        print!("[reset] Are you sure you want to proceed? [y/N]: ");
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        if !matches!(line.trim(), "y" | "Y") {
            return Err(phase(
                "preflight",
                "won't proceed; the user didn't answer (Y|y) in order to continue",
            ));
        }
    }
    let skip = p.all("skip-phases");
    let ip = env.ip();
    let etcd_manifest = read(env, &format!("{MANIFESTS_DIR}/etcd.yaml"));
    let data_dir = etcd_manifest
        .as_deref()
        .and_then(|m| manifest::Pod::parse(m).ok())
        .and_then(|pod| {
            pod.spec.containers.first().and_then(|c| {
                c.command
                    .iter()
                    .find_map(|a| a.strip_prefix("--data-dir=").map(str::to_string))
            })
        })
        .unwrap_or_else(|| "/var/lib/etcd".to_string());
    let admin = admin_client(env, p.get("kubeconfig")).ok();
    if admin.is_some() {
        println!("[reset] Reading configuration from the \"kubeadm-config\" ConfigMap in namespace \"kube-system\"...");
        println!("[reset] Use 'kubeadm init phase upload-config --config your-config.yaml' to re-upload it.");
    } else {
        println!("W0000 00:00:00.000000       1 reset.go:124] [reset] Unable to fetch the kubeadm-config ConfigMap from cluster: failed to get config map: the admin kubeconfig is missing");
    }
    println!("[preflight] Running pre-flight checks");
    if let (Some(_), Some(ip)) = (&etcd_manifest, ip) {
        if !skip.iter().any(|s| s == "remove-etcd-member") {
            remove_etcd_member(env, admin.as_ref(), ip);
        }
    }
    println!("[reset] Stopping the kubelet service");
    // The kubelet double keeps running (it is the host's kubelet); with the
    // manifests gone it stops the static pods. Wait for that before the
    // etcd data goes away, as kubeadm removes the containers first.
    let manifests = env.path(MANIFESTS_DIR);
    let mut removed = vec![];
    if let Ok(rd) = std::fs::read_dir(&manifests) {
        for e in rd.flatten() {
            if std::fs::remove_file(e.path()).is_ok() {
                removed.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    if let Some(ip) = ip {
        let _ = wait_for(Duration::from_secs(15), || {
            for port in [2379u16, 2380, 6443] {
                if std::net::TcpStream::connect_timeout(
                    &(ip, port).into(),
                    Duration::from_millis(100),
                )
                .is_ok()
                {
                    return Err(format!("port {port} still open"));
                }
            }
            Ok(())
        });
    }
    println!("[reset] Unmounting mounted directories in \"/var/lib/kubelet\"");
    if etcd_manifest.is_some() {
        let _ = remove_contents(&env.path(&data_dir));
        println!("[reset] Deleted contents of the etcd data directory: {data_dir}");
    }
    for d in [MANIFESTS_DIR, "/var/lib/kubelet", PKI] {
        let _ = remove_contents(&env.path(d));
    }
    println!("[reset] Deleting contents of directories: [{MANIFESTS_DIR} /var/lib/kubelet {PKI}]");
    let files = [
        "/etc/kubernetes/admin.conf",
        "/etc/kubernetes/super-admin.conf",
        "/etc/kubernetes/kubelet.conf",
        "/etc/kubernetes/bootstrap-kubelet.conf",
        "/etc/kubernetes/controller-manager.conf",
        "/etc/kubernetes/scheduler.conf",
    ];
    for f in files {
        let _ = std::fs::remove_file(env.path(f));
    }
    println!("[reset] Deleting files: [{}]", files.join(" "));
    print!("\nThe reset process does not perform cleanup of CNI plugin configuration,\nnetwork filtering rules and kubeconfig files.\n\nFor information on how to perform this cleanup manually, please see:\n    https://k8s.io/docs/reference/setup-tools/kubeadm/kubeadm-reset/\n\nThe reset process does not clean CNI configuration. To do so, you must remove /etc/cni/net.d\n\nThe reset process does not reset or clean up iptables rules or IPVS tables.\nIf you wish to reset iptables, you must do so manually by using the \"iptables\" command.\n\nIf your cluster was setup to utilize IPVS, run ipvsadm --clear (or similar)\nto reset your system's IPVS tables.\n\nThe reset process does not clean your kubeconfig files and you must remove them manually.\nPlease, check the contents of the $HOME/.kube/config file.\n");
    Ok(())
}

/// kubeadm reset's remove-etcd-member phase: through the cluster's etcd
/// endpoints, falling back to the local member; failures are warnings.
fn remove_etcd_member(env: &NodeEnv, admin: Option<&Client>, ip: Ipv4Addr) {
    let peer = format!("https://{ip}:2380");
    let mut endpoints = admin
        .and_then(|c| etcd_endpoints(c).ok())
        .unwrap_or_default();
    let local = format!("https://{ip}:2379");
    endpoints.retain(|e| e != &local);
    endpoints.push(local);
    let ctl = etcdctl(env, endpoints);
    let r = ctl.members().and_then(|ms| {
        let me = ms
            .iter()
            .find(|m| m.peer_urls.contains(&peer))
            .ok_or_else(|| format!("no etcd member with peer URL {peer}"))?;
        // Retried while etcd calls the cluster unhealthy, as kubeadm
        // retries member removal.
        let start = Instant::now();
        loop {
            match ctl.run(&["member", "remove", &me.hex_id()]) {
                Ok(_) => break,
                Err(e) if e.contains("unhealthy cluster") && start.elapsed() < ADD_MEMBER_RETRY => {
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(me.hex_id())
    });
    match r {
        Ok(id) => {
            println!("[reset] Removed etcd member {id} ({peer}) from the etcd cluster");
            if let Some(c) = admin {
                let name = env.hostname();
                let _ = client::delete(c, &format!("/api/v1/namespaces/kube-system/pods/etcd-{name}"));
                // The mirror pod is named after the node, which may differ
                // from the host name: remove any etcd pod with this address.
                if let Ok(pods) = client::get(c, "/api/v1/namespaces/kube-system/pods") {
                    for p in pods["items"].as_array().cloned().unwrap_or_default() {
                        let url = p["metadata"]["annotations"]["kubeadm.kubernetes.io/etcd.advertise-client-urls"].as_str().unwrap_or_default();
                        if url == format!("https://{ip}:2379") {
                            let n = p["metadata"]["name"].as_str().unwrap_or_default();
                            let _ = client::delete(c, &format!("/api/v1/namespaces/kube-system/pods/{n}"));
                        }
                    }
                }
            }
        }
        Err(e) => println!("W0000 00:00:00.000000       1 removeetcdmember.go:106] [reset] Failed to remove etcd member: {e}, please manually remove this etcd member using etcdctl"),
    }
}

fn remove_contents(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)?.flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(())
}
