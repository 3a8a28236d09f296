//! `kubeadm upgrade plan|apply|node`.
//!
//! The version that matters is the host's kubeadm (`env.version()`); the
//! cluster version is the `kubernetesVersion` of the ClusterConfiguration in
//! the `kubeadm-config` ConfigMap (stored in etcd through the apiserver
//! double). `apply` enforces kubeadm's version skew policy, rewrites the
//! image tags of this node's control-plane static pod manifests (the kubelet
//! double restarts a changed manifest), waits for the apiserver to answer
//! again, records the new version in the ConfigMap and renews the
//! certificates. `node` brings another control plane's manifests to the
//! cluster version; on a worker it only prints kubeadm's kubelet lines.

use super::*;

/// A `vX.Y.Z` version (a pre-release suffix after the patch is dropped).
type Semver = (u32, u32, u32);

pub(super) fn semver(s: &str) -> Option<Semver> {
    let v = s.trim().strip_prefix('v').unwrap_or(s.trim());
    let mut it = v.splitn(3, '.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    let patch: String = it
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor, patch.parse().ok()?))
}

/// kubeadm's policy limits.
const MAX_UPGRADE_SKEW: u32 = 1;
const MAX_DOWNGRADE_SKEW: u32 = 1;

/// kubeadm's version skew policy (`EnforceVersionPolicies`) for released
/// versions: the mandatory errors and the ones `--force` skips.
pub(super) fn policy(
    target_str: &str,
    target: Semver,
    cluster: Semver,
    kubeadm_str: &str,
    kubeadm: Semver,
) -> (Vec<String>, Vec<String>) {
    let (mut mandatory, mut skippable) = (vec![], vec![]);
    // kubeadm's minimum control-plane version: one minor below its own.
    let minimum = (kubeadm.0, kubeadm.1.saturating_sub(1), 0);
    if target < minimum {
        mandatory.push(format!("Specified version to upgrade to \"{target_str}\" is equal to or lower than the minimum supported version \"v{}.{}.{}\". Please specify a higher version to upgrade to", minimum.0, minimum.1, minimum.2));
    }
    if target.1 > cluster.1 + MAX_UPGRADE_SKEW {
        mandatory.push(format!("Specified version to upgrade to \"{target_str}\" is too high; kubeadm can upgrade only {MAX_UPGRADE_SKEW} minor version at a time"));
    }
    if target.1 + MAX_DOWNGRADE_SKEW < cluster.1 {
        mandatory.push(format!("Specified version to downgrade to \"{target_str}\" is too low; kubeadm can downgrade only {MAX_DOWNGRADE_SKEW} minor version at a time"));
    }
    if kubeadm < target {
        if target.1 > kubeadm.1 {
            mandatory.push(format!("Specified version to upgrade to \"{target_str}\" is at least one minor release higher than the kubeadm minor release ({} > {}). Such an upgrade is not supported", target.1, kubeadm.1));
        } else {
            skippable.push(format!("Specified version to upgrade to \"{target_str}\" is higher than the kubeadm version \"{kubeadm_str}\". Upgrade kubeadm first using the tool you used to install kubeadm"));
        }
    }
    if kubeadm.0 > target.0 || kubeadm.1 > target.1 {
        skippable.push(format!(
            "Kubeadm version {kubeadm_str} can only be used to upgrade to Kubernetes version {}.{}",
            kubeadm.0, kubeadm.1
        ));
    }
    (mandatory, skippable)
}

/// The refusal kubeadm prints for policy errors, or `None` to go on
/// (skippable errors with `--force` are printed as a warning).
fn enforce(mandatory: &[String], skippable: &[String], force: bool) -> Option<String> {
    let list = |v: &[String]| v.iter().map(|e| format!("\t- {e}\n")).collect::<String>();
    if !mandatory.is_empty() {
        return Some(format!("the --version argument is invalid due to these fatal errors:\n\n{}\nPlease fix the misalignments highlighted above and try upgrading again", list(mandatory)));
    }
    if skippable.is_empty() {
        return None;
    }
    if !force {
        return Some(format!(
            "the --version argument is invalid due to these errors:\n\n{}\nCan be bypassed if you pass the --force flag",
            list(skippable)
        ));
    }
    print!("[upgrade/version] Found {} potential version compatibility errors but skipping since the --force flag is set: \n\n{}", skippable.len(), list(skippable));
    None
}

/// The control-plane components whose manifests the upgrade retags, in
/// kubeadm's order.
const COMPONENTS: [&str; 3] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];

const COREDNS: &str = "v1.11.3";

/// The image tag of a static pod manifest's first container.
pub(super) fn tag_of(text: &str) -> Option<String> {
    let doc: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
    let image = doc["spec"]["containers"][0]["image"].as_str()?;
    split_image(image).1.map(str::to_string)
}

/// `repo[:tag]`: the tag is after the last ':' that follows the last '/'.
fn split_image(image: &str) -> (&str, Option<&str>) {
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[slash..].rfind(':') {
        Some(i) => (&image[..slash + i], Some(&image[slash + i + 1..])),
        None => (image, None),
    }
}

/// The manifest with its first container's image tag set to `version`.
pub(super) fn retag(text: &str, version: &str) -> Result<String, String> {
    let mut doc: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| format!("invalid static pod manifest: {e}"))?;
    let image = doc
        .get_mut("spec")
        .and_then(|s| s.get_mut("containers"))
        .and_then(|c| c.get_mut(0))
        .and_then(|c| c.get_mut("image"))
        .ok_or("the static pod manifest has no container image")?;
    let repo = split_image(image.as_str().unwrap_or_default())
        .0
        .to_string();
    *image = serde_yaml::Value::from(format!("{repo}:{version}"));
    serde_yaml::to_string(&doc).map_err(|e| e.to_string())
}

fn read_cluster(c: &Client) -> R<Cluster> {
    println!("[upgrade/config] Reading configuration from the \"kubeadm-config\" ConfigMap in namespace \"kube-system\"...");
    println!("[upgrade/config] Use 'kubeadm init phase upload-config --config your-config.yaml' to re-upload it.");
    load_cluster_config(c).map_err(|e| {
        plain(format!(
            "[upgrade/config] FATAL: failed to get config map: {e}"
        ))
    })
}

fn parse_version(s: &str) -> R<Semver> {
    semver(s).ok_or_else(|| {
        plain(format!(
            "unable to parse normalized version \"{s}\" as a semantic version"
        ))
    })
}

pub(super) fn upgrade(env: &NodeEnv, argv: &[String]) -> R<()> {
    match argv.first().map(String::as_str) {
        Some("plan") => plan(env, &argv[1..]),
        Some("apply") => apply(env, &argv[1..]),
        Some("node") => node(env, &argv[1..]),
        Some(other) => Err(plain(format!(
            "unknown command \"{other}\" for \"kubeadm upgrade\""
        ))),
        None => Err(plain(
            "the kh testbed kubeadm double needs `kubeadm upgrade plan|apply|node`; see tests/testbed/CONTRACT.md",
        )),
    }
}

const COMMON_FLAGS: [Flag; 3] = [
    value("kubeconfig"),
    value("ignore-preflight-errors"),
    value("config"),
];

fn flags(extra: &[Flag]) -> Vec<Flag> {
    let mut all = COMMON_FLAGS.to_vec();
    all.extend_from_slice(extra);
    all
}

/// One row of kubeadm's plan tables.
type Row = [String; 4];

/// kubeadm's `upgrade plan` text after the version lines.
pub(super) fn plan_text(
    cluster: &str,
    target: &str,
    kubelets: &[(String, String)],
    control_planes: &[String],
    etcd: Option<&str>,
) -> String {
    let head = ["COMPONENT", "NODE", "CURRENT", "TARGET"].map(str::to_string);
    let kubelet_rows: Vec<Row> = kubelets
        .iter()
        .map(|(n, v)| ["kubelet".into(), n.clone(), v.clone(), target.into()])
        .collect();
    let mut rows: Vec<Row> = vec![];
    for c in COMPONENTS {
        for n in control_planes {
            rows.push([c.into(), n.clone(), cluster.into(), target.into()]);
        }
    }
    let bare = cluster.trim_start_matches('v');
    rows.push([
        "kube-proxy".into(),
        String::new(),
        bare.into(),
        target.into(),
    ]);
    rows.push([
        "CoreDNS".into(),
        String::new(),
        COREDNS.into(),
        COREDNS.into(),
    ]);
    if let Some(e) = etcd {
        for n in control_planes {
            rows.push(["etcd".into(), n.clone(), e.into(), e.into()]);
        }
    }
    format!(
        "Components that must be upgraded manually after you have upgraded the control plane with 'kubeadm upgrade apply':\n{}\nUpgrade to the latest stable version:\n\n{}\nYou can now apply the upgrade by executing the following command:\n\n\tkubeadm upgrade apply {target}\n\n_____________________________________________________________________\n\n",
        table(&head, &kubelet_rows),
        table(&head, &rows)
    )
}

fn plan(env: &NodeEnv, argv: &[String]) -> R<()> {
    let p = parse(argv, &flags(&[]))?;
    let kubeadm_str = env.version();
    let kubeadm = parse_version(&kubeadm_str)?;
    let c = admin_client(env, p.get("kubeconfig"))?;
    println!("[preflight] Running pre-flight checks.");
    let cluster = read_cluster(&c)?;
    println!("[upgrade] Running cluster health checks");
    println!("[upgrade] Fetching available versions to upgrade to");
    let cluster_v = parse_version(&cluster.kubernetes_version)?;
    let target_str = p
        .positional
        .first()
        .cloned()
        .unwrap_or_else(|| kubeadm_str.clone());
    let target = parse_version(&target_str)?;
    println!(
        "[upgrade/versions] Cluster version: {}",
        cluster.kubernetes_version
    );
    println!("[upgrade/versions] kubeadm version: {kubeadm_str}");
    println!("[upgrade/versions] Target version: {target_str}");
    let (mandatory, skippable) = policy(&target_str, target, cluster_v, &kubeadm_str, kubeadm);
    if let Some(e) = enforce(&mandatory, &skippable, false) {
        return Err(plain(e));
    }
    let nodes = client::get(&c, "/api/v1/nodes").map_err(|e| {
        plain(format!(
            "[upgrade/versions] FATAL: couldn't list the nodes: {e}"
        ))
    })?;
    let mut kubelets = vec![];
    let mut control_planes = vec![];
    for n in nodes["items"].as_array().into_iter().flatten() {
        let name = n["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let v = n["status"]["nodeInfo"]["kubeletVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if n["metadata"]["labels"].get(CONTROL_PLANE_LABEL).is_some() {
            control_planes.push(name.clone());
        }
        kubelets.push((name, v));
    }
    kubelets.sort();
    control_planes.sort();
    let etcd = matches!(cluster.etcd, EtcdMode::Local { .. })
        .then(|| read(env, &format!("{MANIFESTS_DIR}/etcd.yaml")))
        .flatten()
        .and_then(|m| tag_of(&m));
    print!(
        "\n{}",
        plan_text(
            &cluster.kubernetes_version,
            &target_str,
            &kubelets,
            &control_planes,
            etcd.as_deref()
        )
    );
    Ok(())
}

fn pod_pid(env: &NodeEnv, pod: &str) -> Option<String> {
    std::fs::read_to_string(env.node_dir.join("pods").join(format!("{pod}.pid")))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The apiserver endpoint kubeadm wrote into this node's manifest.
fn apiserver_endpoint(text: &str) -> Option<(IpAddr, u16)> {
    let pod = manifest::Pod::parse(text).ok()?;
    let ep = pod
        .metadata
        .annotations
        .get("kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint")?;
    let (ip, port) = ep.rsplit_once(':')?;
    Some((ip.parse().ok()?, port.parse().ok()?))
}

/// Retags this node's control-plane manifests to `version`, waiting for the
/// kubelet to restart the apiserver; on failure the old manifests are put
/// back, as kubeadm rolls back.
fn upgrade_static_pods(env: &NodeEnv, version: &str, limit: Duration) -> R<()> {
    println!("[upgrade/staticpods] Writing new Static Pod manifests to \"/etc/kubernetes/tmp/kubeadm-upgraded-manifests\"");
    let stamp = env
        .now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let backup = format!("/etc/kubernetes/tmp/kubeadm-backup-manifests-{stamp}");
    let mut changed: Vec<(String, String)> = vec![];
    for c in COMPONENTS {
        let path = format!("{MANIFESTS_DIR}/{c}.yaml");
        println!("[upgrade/staticpods] Preparing for \"{c}\" upgrade");
        let Some(old) = read(env, &path) else {
            return Err(plain(format!(
                "[upgrade/apply] FATAL: couldn't upgrade control plane: the static pod manifest {path} does not exist"
            )));
        };
        if tag_of(&old).as_deref() == Some(version) {
            println!(
                "[upgrade/staticpods] Current and new manifests of {c} are equal, skipping upgrade"
            );
            continue;
        }
        let new = retag(&old, version).map_err(|e| {
            plain(format!(
                "[upgrade/apply] FATAL: couldn't upgrade control plane: {path}: {e}"
            ))
        })?;
        write(env, &format!("{backup}/{c}.yaml"), &old, 0o600)?;
        let pid_before = pod_pid(env, c);
        println!("[upgrade/staticpods] Moving new manifest to \"{path}\" and backing up old manifest to \"{backup}/{c}.yaml\"");
        write(env, &path, &new, 0o600)?;
        changed.push((path.clone(), old.clone()));
        println!("[upgrade/staticpods] Waiting for the kubelet to restart the component");
        if c == "kube-apiserver" {
            let waited = wait_for(limit, || match pod_pid(env, c) {
                Some(p) if Some(&p) != pid_before.as_ref() => Ok(()),
                _ => Err("timed out waiting for the condition".to_string()),
            })
            .map_err(plain)
            .and_then(|()| {
                let (ip, port) = apiserver_endpoint(&new).ok_or_else(|| {
                    plain(format!(
                        "{path} has no advertise-address endpoint annotation"
                    ))
                })?;
                wait_apiserver(env, ip, port, "upgrade/staticpods")
            });
            if let Err(Fail(e)) = waited {
                for (p, text) in &changed {
                    let _ = write(env, p, text, 0o600);
                }
                return Err(plain(format!("[upgrade/apply] FATAL: couldn't upgrade control plane. kubeadm has tried to recover everything into the earlier state. Errors faced: {e}")));
            }
        }
        println!("[upgrade/staticpods] Component \"{c}\" upgraded successfully!");
    }
    Ok(())
}

/// Renews this control plane's certificates as `upgrade` does by default,
/// before the manifests change so the restarted apiserver serves them.
fn renew_certificates(env: &NodeEnv) -> R<()> {
    let stacked = env.path(&format!("{PKI}/etcd/ca.key")).exists();
    for r in RENEWABLE.iter() {
        if (r.etcd && !stacked) || !exists(env, r) {
            continue;
        }
        renew_one(env, r).map_err(|e| {
            plain(format!(
                "[upgrade/apply] FATAL: failed to renew certificate {}: {e}",
                r.name
            ))
        })?;
    }
    println!("[upgrade/staticpods] Renewing the certificates of this control plane");
    Ok(())
}

fn kubelet_lines() {
    println!("[upgrade] Backing up kubelet config file to /etc/kubernetes/tmp/kubeadm-kubelet-config/config.yaml");
    println!(
        "[kubelet-start] Writing kubelet configuration to file \"/var/lib/kubelet/config.yaml\""
    );
    println!("[upgrade/kubelet-config] The kubelet configuration for this node was successfully upgraded!");
}

const APPLY_FLAGS: [Flag; 6] = [
    short(boolean("yes"), 'y'),
    short(boolean("force"), 'f'),
    boolean("certificate-renewal"),
    boolean("etcd-upgrade"),
    boolean("allow-experimental-upgrades"),
    boolean("allow-release-candidate-upgrades"),
];

fn apply(env: &NodeEnv, argv: &[String]) -> R<()> {
    let p = parse(argv, &flags(&APPLY_FLAGS))?;
    let Some(target_str) = p.positional.first().cloned() else {
        return Err(plain("missing one or more required arguments: [version]"));
    };
    if let Some(extra) = p.positional.get(1) {
        return Err(plain(format!(
            "unknown command \"{extra}\" for \"kubeadm upgrade apply\""
        )));
    }
    let target = parse_version(&target_str)?;
    let kubeadm_str = env.version();
    let kubeadm = parse_version(&kubeadm_str)?;
    let c = admin_client(env, p.get("kubeconfig"))?;
    let mut cluster = read_cluster(&c)?;
    println!("[upgrade/preflight] Running preflight checks");
    println!("[upgrade] Running cluster health checks");
    println!("[upgrade/version] You have chosen to change the cluster version to \"{target_str}\"");
    println!(
        "[upgrade/versions] Cluster version: {}",
        cluster.kubernetes_version
    );
    println!("[upgrade/versions] kubeadm version: {kubeadm_str}");
    let cluster_v = parse_version(&cluster.kubernetes_version)?;
    let (mandatory, skippable) = policy(&target_str, target, cluster_v, &kubeadm_str, kubeadm);
    if let Some(e) = enforce(&mandatory, &skippable, p.flag("force")) {
        return Err(phase("preflight", e));
    }
    if !p.flag("yes") && !p.flag("force") {
        print!("[upgrade/confirm] Are you sure you want to proceed? [y/N]: ");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        if !matches!(line.trim(), "y" | "Y") {
            return Err(phase(
                "preflight",
                "won't proceed; the user didn't answer (Y|y) in order to continue",
            ));
        }
    }
    // A benchmark's latency stands for the image pulls and restarts;
    // refusals above come back at once, as kubeadm's preflight does.
    let _timed = crate::doubles::latency::begin(env, crate::doubles::latency::Op::UpgradeApply);
    println!("[upgrade/preflight] Pulling images required for setting up a Kubernetes cluster");
    println!("[upgrade/control-plane] Upgrading your static Pod-hosted control plane to version \"{target_str}\" (timeout: 5m0s)...");
    if p.get("certificate-renewal") != Some("false") {
        renew_certificates(env)?;
    }
    upgrade_static_pods(env, &target_str, WAIT_LIMIT)?;
    println!("[upgrade/control-plane] The control plane instance for this node was successfully upgraded!");
    println!("[upload-config] Storing the configuration used in ConfigMap \"kubeadm-config\" in the \"kube-system\" Namespace");
    cluster.kubernetes_version = target_str.clone();
    store_cluster_config(&c, &cluster).map_err(|e| phase("upload-config", e))?;
    println!("[kubelet] Creating a ConfigMap \"kubelet-config\" in namespace kube-system with the configuration for the kubelets in the cluster");
    kubelet_lines();
    println!("[upgrade/bootstrap-token] Configuring bootstrap token and cluster-info RBAC rules");
    println!("[addons] Applied essential addon: CoreDNS");
    println!("[addons] Applied essential addon: kube-proxy");
    println!(
        "\n[upgrade/successful] SUCCESS! Your cluster was upgraded to \"{target_str}\". Enjoy!\n"
    );
    println!("[upgrade/kubelet] Now that your control plane is upgraded, please proceed with upgrading your kubelets if you haven't already done so.");
    Ok(())
}

const NODE_FLAGS: [Flag; 2] = [boolean("certificate-renewal"), boolean("etcd-upgrade")];

fn node(env: &NodeEnv, argv: &[String]) -> R<()> {
    let p = parse(argv, &flags(&NODE_FLAGS))?;
    if let Some(extra) = p.positional.first() {
        return Err(plain(format!(
            "unknown command \"{extra}\" for \"kubeadm upgrade node\""
        )));
    }
    let control_plane = env
        .path(&format!("{MANIFESTS_DIR}/kube-apiserver.yaml"))
        .exists();
    let kubeconfig = p.get("kubeconfig").unwrap_or(if control_plane {
        ADMIN_CONF
    } else {
        KUBELET_CONF
    });
    let c = admin_client(env, Some(kubeconfig))?;
    let cluster = read_cluster(&c)?;
    let _timed = crate::doubles::latency::begin(env, crate::doubles::latency::Op::UpgradeNode);
    println!("[preflight] Running pre-flight checks");
    if !control_plane {
        println!("[preflight] Skipping prepull. Not a control plane node.");
        println!("[upgrade/control-plane] Skipping phase. Not a control plane node.");
        println!("[upgrade/kubeconfig] Skipping phase. Not a control plane node.");
        kubelet_lines();
        println!("[upgrade/addon] Skipping the addon/coredns phase. Not a control plane node.");
        println!("[upgrade/addon] Skipping the addon/kube-proxy phase. Not a control plane node.");
        println!("[upgrade] The configuration for this node was successfully updated!");
        println!("[upgrade] Now you should go ahead and upgrade the kubelet package using your package manager.");
        return Ok(());
    }
    let kubeadm_str = env.version();
    let kubeadm = parse_version(&kubeadm_str)?;
    let version = cluster.kubernetes_version.clone();
    let cluster_v = parse_version(&version)?;
    if cluster_v > kubeadm {
        return Err(phase(
            "control-plane",
            format!("the cluster version \"{version}\" is higher than the kubeadm version \"{kubeadm_str}\". Upgrade kubeadm first using the tool you used to install kubeadm"),
        ));
    }
    println!("[preflight] Pulling images required for setting up a Kubernetes cluster");
    println!("[upgrade/control-plane] Upgrading your Static Pod-hosted control plane instance to version \"{version}\"...");
    if p.get("certificate-renewal") != Some("false") {
        renew_certificates(env)?;
    }
    upgrade_static_pods(env, &version, WAIT_LIMIT)?;
    println!("[upgrade/control-plane] The control plane instance for this node was successfully upgraded!");
    kubelet_lines();
    println!("[upgrade] The control plane instance for this node was successfully updated!");
    println!("[upgrade] Now you should go ahead and upgrade the kubelet package using your package manager.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Semver {
        semver(s).unwrap()
    }

    fn check(target: &str, cluster: &str, kubeadm: &str) -> (Vec<String>, Vec<String>) {
        policy(target, v(target), v(cluster), kubeadm, v(kubeadm))
    }

    fn host(version: &str) -> (tempfile::TempDir, NodeEnv) {
        let dir = tempfile::tempdir().unwrap();
        let env = NodeEnv::new(&dir.path().join("root"), dir.path(), None);
        let api = manifest::apiserver(&ApiServerPod {
            ip: "127.0.0.5".into(),
            bind_port: 6443,
            etcd_servers: vec!["https://127.0.0.5:2379".into()],
            etcd_ca: format!("{PKI}/etcd/ca.crt"),
            etcd_cert: format!("{PKI}/apiserver-etcd-client.crt"),
            etcd_key: format!("{PKI}/apiserver-etcd-client.key"),
            service_subnet: "10.96.0.0/12".into(),
            dns_domain: "cluster.local".into(),
            version: version.into(),
            extra_args: vec![],
        });
        write(
            &env,
            &format!("{MANIFESTS_DIR}/kube-apiserver.yaml"),
            &api,
            0o600,
        )
        .unwrap_or_else(|Fail(e)| panic!("{e}"));
        for c in ["kube-controller-manager", "kube-scheduler"] {
            let m = manifest::other_component(c, version, "/etc/kubernetes/x.conf");
            write(&env, &format!("{MANIFESTS_DIR}/{c}.yaml"), &m, 0o600)
                .unwrap_or_else(|Fail(e)| panic!("{e}"));
        }
        (dir, env)
    }

    fn tags(env: &NodeEnv) -> Vec<String> {
        COMPONENTS
            .iter()
            .map(|c| tag_of(&read(env, &format!("{MANIFESTS_DIR}/{c}.yaml")).unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn manifests_at_the_target_are_left_alone_and_others_retagged() {
        let (_d, env) = host("v1.32.0");
        let before = read(&env, &format!("{MANIFESTS_DIR}/kube-apiserver.yaml"));
        // Only the scheduler lags: the apiserver is not restarted.
        let m = manifest::other_component("kube-scheduler", "v1.31.4", "/etc/kubernetes/x.conf");
        write(
            &env,
            &format!("{MANIFESTS_DIR}/kube-scheduler.yaml"),
            &m,
            0o600,
        )
        .unwrap_or_else(|Fail(e)| panic!("{e}"));
        assert!(upgrade_static_pods(&env, "v1.32.0", Duration::from_millis(200)).is_ok());
        assert_eq!(tags(&env), vec!["v1.32.0"; 3]);
        assert_eq!(
            read(&env, &format!("{MANIFESTS_DIR}/kube-apiserver.yaml")),
            before
        );
    }

    #[test]
    fn an_apiserver_the_kubelet_never_restarts_is_rolled_back() {
        let (_d, env) = host("v1.31.4");
        let Err(Fail(e)) = upgrade_static_pods(&env, "v1.32.0", Duration::from_millis(300)) else {
            panic!("no kubelet restarted the apiserver, yet the upgrade succeeded");
        };
        assert!(e.starts_with("[upgrade/apply] FATAL: couldn't upgrade control plane. kubeadm has tried to recover everything into the earlier state. Errors faced: timed out waiting for the condition"), "{e}");
        assert_eq!(tags(&env), vec!["v1.31.4"; 3]);
    }

    #[test]
    fn versions_parse_like_kubeadm() {
        assert_eq!(semver("v1.32.1"), Some((1, 32, 1)));
        assert_eq!(semver("1.31.0"), Some((1, 31, 0)));
        assert_eq!(semver("v1.32.0-rc.1"), Some((1, 32, 0)));
        assert_eq!(semver("v1.32"), None);
        assert_eq!(semver("latest"), None);
    }

    #[test]
    fn one_minor_up_to_kubeadms_own_version_is_allowed() {
        assert_eq!(check("v1.32.0", "v1.31.4", "v1.32.0"), (vec![], vec![]));
        // Re-applying the same version, and a patch upgrade.
        assert_eq!(check("v1.32.0", "v1.32.0", "v1.32.0"), (vec![], vec![]));
        assert_eq!(check("v1.32.2", "v1.32.0", "v1.32.2"), (vec![], vec![]));
        // A downgrade of one minor is kubeadm's policy too (with skew warnings only).
        let (m, _) = check("v1.31.0", "v1.32.0", "v1.32.0");
        assert!(m.is_empty(), "{m:?}");
    }

    #[test]
    fn a_minor_skip_is_refused_with_kubeadms_text() {
        let (m, _) = check("v1.32.0", "v1.30.2", "v1.32.0");
        assert_eq!(
            m,
            vec!["Specified version to upgrade to \"v1.32.0\" is too high; kubeadm can upgrade only 1 minor version at a time".to_string()]
        );
    }

    #[test]
    fn a_target_newer_than_kubeadm_is_refused() {
        let (m, s) = check("v1.33.0", "v1.32.0", "v1.32.0");
        assert_eq!(m, vec!["Specified version to upgrade to \"v1.33.0\" is at least one minor release higher than the kubeadm minor release (33 > 32). Such an upgrade is not supported".to_string()]);
        assert!(s.is_empty(), "{s:?}");
        let (m, s) = check("v1.32.3", "v1.32.0", "v1.32.1");
        assert!(m.is_empty());
        assert_eq!(s, vec!["Specified version to upgrade to \"v1.32.3\" is higher than the kubeadm version \"v1.32.1\". Upgrade kubeadm first using the tool you used to install kubeadm".to_string()]);
        let e = enforce(&m, &s, false).unwrap();
        assert!(
            e.ends_with("Can be bypassed if you pass the --force flag"),
            "{e}"
        );
        assert!(enforce(&m, &s, true).is_none());
    }

    #[test]
    fn a_downgrade_of_two_minors_is_refused() {
        let (m, s) = check("v1.30.0", "v1.32.0", "v1.32.0");
        assert!(m.contains(&"Specified version to downgrade to \"v1.30.0\" is too low; kubeadm can downgrade only 1 minor version at a time".to_string()), "{m:?}");
        assert!(s.contains(
            &"Kubeadm version v1.32.0 can only be used to upgrade to Kubernetes version 1.32"
                .to_string()
        ));
        let e = enforce(&m, &s, true).unwrap();
        assert!(
            e.starts_with("the --version argument is invalid due to these fatal errors:\n\n\t- "),
            "{e}"
        );
        assert!(
            e.ends_with("Please fix the misalignments highlighted above and try upgrading again")
        );
    }

    #[test]
    fn retagging_changes_only_the_image_tag() {
        let old = manifest::other_component(
            "kube-scheduler",
            "v1.31.4",
            "/etc/kubernetes/scheduler.conf",
        );
        assert_eq!(tag_of(&old).as_deref(), Some("v1.31.4"));
        let new = retag(&old, "v1.32.0").unwrap();
        assert_eq!(tag_of(&new).as_deref(), Some("v1.32.0"));
        assert!(
            new.contains("image: registry.k8s.io/kube-scheduler:v1.32.0"),
            "{new}"
        );
        assert_eq!(new.replace("v1.32.0", "v1.31.4"), old);
        assert_eq!(
            split_image("host:5000/kube-apiserver"),
            ("host:5000/kube-apiserver", None)
        );
        assert_eq!(
            split_image("host:5000/etcd:3.5.16-0"),
            ("host:5000/etcd", Some("3.5.16-0"))
        );
    }

    #[test]
    fn the_apiserver_endpoint_comes_from_the_manifest() {
        let (_d, env) = host("v1.31.4");
        let m = read(&env, &format!("{MANIFESTS_DIR}/kube-apiserver.yaml")).unwrap();
        assert_eq!(
            apiserver_endpoint(&m),
            Some(("127.0.0.5".parse().unwrap(), 6443))
        );
        assert_eq!(tag_of(&m).as_deref(), Some("v1.31.4"));
    }

    #[test]
    fn the_plan_prints_kubeadms_tables_and_the_apply_command() {
        let t = plan_text(
            "v1.31.4",
            "v1.32.0",
            &[
                ("cp-1".into(), "v1.31.4".into()),
                ("w-1".into(), "v1.31.4".into()),
            ],
            &["cp-1".into()],
            Some("3.5.16-0"),
        );
        let want = "Components that must be upgraded manually after you have upgraded the control plane with 'kubeadm upgrade apply':
COMPONENT   NODE   CURRENT   TARGET
kubelet     cp-1   v1.31.4   v1.32.0
kubelet     w-1    v1.31.4   v1.32.0

Upgrade to the latest stable version:

COMPONENT                 NODE   CURRENT    TARGET
kube-apiserver            cp-1   v1.31.4    v1.32.0
kube-controller-manager   cp-1   v1.31.4    v1.32.0
kube-scheduler            cp-1   v1.31.4    v1.32.0
kube-proxy                       1.31.4     v1.32.0
CoreDNS                          v1.11.3    v1.11.3
etcd                      cp-1   3.5.16-0   3.5.16-0

You can now apply the upgrade by executing the following command:

\tkubeadm upgrade apply v1.32.0

";
        assert!(t.starts_with(want), "{t}");
    }
}
