//! The testbed's kubectl cordon/uncordon/drain against the apiserver double
//! and the real etcd, with a PodDisruptionBudget that blocks an eviction,
//! and the apiserver's `/version` from its manifest. The doubles are driven
//! directly on one testbed host (no kh involved).

use kh_testbed::doubles::packages::{self, Family};
use kh_testbed::world::World;

const TOKEN: &str = "abcdef.0123456789abcdef";

#[test]
fn drain_evicts_the_nodes_pods_and_a_pdb_blocks_it_until_the_timeout() {
    let mut w = World::offline();
    w.add_kube_host("cp-1");
    let cp = &w.agents[0];
    let ip = cp.ip;
    let cfg = w.dir().join("kubeadm.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
bootstrapTokens:
  - token: {TOKEN}
localAPIEndpoint: {{advertiseAddress: {ip}, bindPort: 6443}}
nodeRegistration:
  name: cp-1
  criSocket: unix:///run/containerd/containerd.sock
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: v1.32.0
controlPlaneEndpoint: {ip}:6443
networking: {{podSubnet: 10.244.0.0/16, serviceSubnet: 10.96.0.0/12}}
"#
        ),
    )
    .unwrap();
    cp.kubeadm(&["init", "--config", cfg.to_str().unwrap()])
        .expect_ok("kubeadm init");

    // /version is the manifest's image tag.
    let (code, body) = cp.apiserver_get("/version").unwrap();
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["gitVersion"], "v1.32.0", "{body}");

    let objects = w.dir().join("objects.yaml");
    std::fs::write(
        &objects,
        r#"apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: default, labels: {app: web}}
spec: {nodeName: cp-1, volumes: [{name: scratch, emptyDir: {}}]}
---
apiVersion: v1
kind: Pod
metadata:
  name: kube-proxy-abcde
  namespace: kube-system
  ownerReferences: [{apiVersion: apps/v1, kind: DaemonSet, name: kube-proxy}]
spec: {nodeName: cp-1}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web, namespace: default}
spec: {minAvailable: 1, selector: {matchLabels: {app: web}}}
"#,
    )
    .unwrap();
    cp.kubectl(&["apply", "-f", objects.to_str().unwrap()])
        .expect_ok("apply pods and a PDB");

    let out = cp.kubectl(&["cordon", "cp-1"]).expect_ok("cordon");
    assert_eq!(out.stdout, "node/cp-1 cordoned\n");
    let out = cp.kubectl(&["cordon", "cp-1"]).expect_ok("cordon again");
    assert_eq!(out.stdout, "node/cp-1 already cordoned\n");
    let out = cp.kubectl(&["get", "nodes"]).expect_ok("get nodes");
    assert!(out.stdout.contains("SchedulingDisabled"), "{}", out.stdout);
    let out = cp.kubectl(&["uncordon", "cp-1"]).expect_ok("uncordon");
    assert_eq!(out.stdout, "node/cp-1 uncordoned\n");
    let out = cp
        .kubectl(&["uncordon", "cp-1"])
        .expect_ok("uncordon again");
    assert_eq!(out.stdout, "node/cp-1 already uncordoned\n");

    // Without the flags, kubectl refuses the DaemonSet and emptyDir pods.
    let out = cp.kubectl(&["drain", "cp-1"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore): kube-system/kube-proxy-abcde"), "{}", out.stderr);
    assert!(out.stderr.contains("cannot delete Pods with local storage (use --delete-emptydir-data to override): default/web-0"), "{}", out.stderr);

    let drain = [
        "drain",
        "cp-1",
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--timeout=1s",
    ];
    let out = cp.kubectl(&drain);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stdout
            .contains("node/cp-1 already cordoned\nevicting pod default/web-0\n"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr
            .contains("Warning: ignoring DaemonSet-managed Pods: kube-system/kube-proxy-abcde"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("error when evicting pods/\"web-0\" -n \"default\" (will retry after 5s): Cannot evict pod as it would violate the pod's disruption budget."), "{}", out.stderr);
    assert!(out.stderr.ends_with("There are pending nodes to be drained:\n cp-1\nerror: error when evicting pods/\"web-0\" -n \"default\": global timeout reached: 1s\n"), "{}", out.stderr);
    let out = cp.kubectl(&["get", "nodes"]).expect_ok("get nodes");
    assert!(
        out.stdout.contains("Ready,SchedulingDisabled"),
        "{}",
        out.stdout
    );

    // A budget that allows the eviction: the pod goes, the mirror pod and the
    // DaemonSet's pod stay.
    std::fs::write(
        &objects,
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: web, namespace: default}\nspec: {minAvailable: 0, selector: {matchLabels: {app: web}}}\n",
    )
    .unwrap();
    cp.kubectl(&["apply", "-f", objects.to_str().unwrap()])
        .expect_ok("relax the PDB");
    let out = cp.kubectl(&drain).expect_ok("drain");
    assert!(
        out.stdout
            .ends_with("evicting pod default/web-0\npod/web-0 evicted\nnode/cp-1 drained\n"),
        "{}",
        out.stdout
    );
    let (_, body) = cp.apiserver_get("/healthz").unwrap();
    assert_eq!(body, "ok");
    let out = cp.kubectl(&["uncordon", "cp-1"]).expect_ok("uncordon");
    assert_eq!(out.stdout, "node/cp-1 uncordoned\n");

    // A kubelet upgraded by its package and restarted posts its version.
    w.seed_default_package_repos();
    cp.seed_packages(Family::Apt, "v1.32.0", true);
    let run = |tool: &str, args: &[&str]| {
        let mut cmd = cp.tool(tool);
        cmd.args(args);
        kh_testbed::world::run(cmd)
    };
    run(
        "apt-get",
        &[
            "install",
            "-y",
            "--allow-change-held-packages",
            "kubelet=1.32.4-1.1",
        ],
    )
    .expect_ok("upgrade the kubelet package");
    let version = || {
        let out = cp
            .kubectl(&["get", "node", "cp-1", "-o", "json"])
            .expect_ok("get node");
        let n: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        n["status"]["nodeInfo"]["kubeletVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(version(), "v1.32.0");
    run("systemctl", &["restart", "kubelet"]).expect_ok("restart the kubelet");
    assert_eq!(version(), "v1.32.4");
}

/// The package manager doubles through the host's search path: an apt
/// upgrade of held packages from the next minor's repository changes what
/// the tools report and replaces their files in `bin/`.
#[test]
fn an_apt_upgrade_from_the_next_minors_repository_changes_the_tools_versions() {
    let mut w = World::offline();
    w.declare_kube_host("cp-1");
    w.seed_default_package_repos();
    let cp = &w.agents[0];
    cp.seed_packages(Family::Apt, "v1.31.4", true);
    let run = |tool: &str, args: &[&str]| {
        let mut cmd = cp.tool(tool);
        cmd.args(args);
        kh_testbed::world::run(cmd)
    };
    assert_eq!(
        run("kubeadm", &["version", "-o", "short"]).stdout,
        "v1.31.4\n"
    );
    let bin = cp.node_dir().join("bin/kubeadm");
    use std::os::unix::fs::MetadataExt;
    let before = std::fs::metadata(&bin).unwrap().ino();

    std::fs::write(cp.path(packages::APT_SOURCE), packages::apt_source("v1.32")).unwrap();
    run("apt-get", &["update"]).expect_ok("apt-get update");
    let out = run("apt-cache", &["madison", "kubeadm"]).expect_ok("madison");
    assert!(
        out.stdout.starts_with(
            "   kubeadm | 1.32.4-1.1 | https://pkgs.k8s.io/core:/stable:/v1.32/deb  Packages\n"
        ),
        "{}",
        out.stdout
    );
    let out = run("apt-get", &["install", "-y", "kubeadm=1.32.4-1.1"]);
    assert_eq!(out.code, Some(100), "{out:?}");
    run(
        "apt-get",
        &[
            "install",
            "-y",
            "--allow-change-held-packages",
            "kubeadm=1.32.4-1.1",
            "kubelet=1.32.4-1.1",
        ],
    )
    .expect_ok("apt-get install");
    assert_eq!(
        run("kubeadm", &["version", "-o", "short"]).stdout,
        "v1.32.4\n"
    );
    assert_eq!(
        run("kubelet", &["--version"]).stdout,
        "Kubernetes v1.32.4\n"
    );
    assert_eq!(
        run("kubectl", &["version", "--client"])
            .stdout
            .lines()
            .next(),
        Some("Client Version: v1.31.4")
    );
    assert_eq!(
        run("dpkg-query", &["-W", "-f=${Version}", "kubeadm"]).stdout,
        "1.32.4-1.1"
    );
    assert_ne!(std::fs::metadata(&bin).unwrap().ino(), before);
    // A benchmark's latency applies to an install that changes something.
    w.set_double_latency(
        kh_testbed::doubles::latency::Op::PackageInstall,
        std::time::Duration::from_millis(300),
    );
    let t = std::time::Instant::now();
    run(
        "apt-get",
        &[
            "install",
            "-y",
            "--allow-change-held-packages",
            "kubectl=1.32.4-1.1",
        ],
    )
    .expect_ok("apt-get install kubectl");
    assert!(t.elapsed() >= std::time::Duration::from_millis(300));
    let timings = std::fs::read_to_string(cp.node_dir().join("kubeadm-timings.log")).unwrap();
    assert!(
        timings.contains(r#""op":"package-install""#) && timings.contains(r#""latencyMs":300"#),
        "{timings}"
    );
    assert_eq!(
        run("kubectl", &["version", "--client"])
            .stdout
            .lines()
            .next(),
        Some("Client Version: v1.32.4")
    );
    let calls = std::fs::read_to_string(cp.node_dir().join("calls.log")).unwrap();
    assert!(calls.contains("apt-get install -y --allow-change-held-packages kubeadm=1.32.4-1.1 kubelet=1.32.4-1.1\n"), "{calls}");
    assert!(calls.contains("kubeadm version -o short\nkubelet --version\nkubectl version --client\ndpkg-query -W -f=${Version} kubeadm\n"), "{calls}");
}
