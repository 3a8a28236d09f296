//! The testbed's Kubernetes doubles against the real etcd: kubeadm init and
//! joins, learners and their promotion, expiry on the testbed clock, quorum
//! loss and reset. These tests drive the doubles directly on testbed hosts
//! (no kh involved), so later tests can trust what the doubles report.

use std::path::PathBuf;
use std::time::Duration;

use kh_testbed::eventually;
use kh_testbed::world::{AgentProc, Out, World};

const TOKEN: &str = "abcdef.0123456789abcdef";

/// A kubeadm v1beta4 config for `cp` as the first control plane, with the
/// control-plane endpoint on its own address.
fn init_config(w: &World, cp: &AgentProc) -> PathBuf {
    let ip = cp.ip;
    let text = format!(
        r#"apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
bootstrapTokens:
  - token: {TOKEN}
    ttl: 24h
localAPIEndpoint: {{advertiseAddress: {ip}, bindPort: 6443}}
nodeRegistration:
  name: {name}
  criSocket: unix:///run/containerd/containerd.sock
  kubeletExtraArgs:
    - {{name: node-ip, value: {ip}}}
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: v1.32.0
controlPlaneEndpoint: {ip}:6443
networking: {{podSubnet: 10.244.0.0/16, serviceSubnet: 10.96.0.0/12}}
"#,
        name = cp.name
    );
    let p = w.dir().join(format!("kubeadm-{}.yaml", cp.name));
    std::fs::write(&p, text).unwrap();
    p
}

/// What `kubeadm init --upload-certs` printed: (endpoint, ca hash, key).
struct Joinable {
    endpoint: String,
    hash: String,
    key: String,
}

fn init(w: &World, cp: &AgentProc) -> Joinable {
    let cfg = init_config(w, cp);
    let out = cp
        .kubeadm(&["init", "--config", cfg.to_str().unwrap(), "--upload-certs"])
        .expect_ok("kubeadm init");
    let key = certificate_key(&out.stdout);
    let hash = out
        .stdout
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .expect("a CA hash in the join command")
        .to_string();
    assert!(
        out.stdout.contains(&format!(
            "kubeadm join {}:6443 --token {TOKEN} \\\n\t--discovery-token-ca-cert-hash {hash} \\\n\t--control-plane --certificate-key {key}",
            cp.ip
        )),
        "{}",
        out.stdout
    );
    Joinable {
        endpoint: format!("{}:6443", cp.ip),
        hash,
        key,
    }
}

/// The key on the line after `[upload-certs] Using certificate key:`.
fn certificate_key(stdout: &str) -> String {
    let mut lines = stdout.lines();
    lines
        .find(|l| *l == "[upload-certs] Using certificate key:")
        .expect("the upload-certs key line");
    let key = lines.next().expect("the key").trim().to_string();
    assert_eq!(key.len(), 64, "{key}");
    key
}

fn join_cp(host: &AgentProc, j: &Joinable, key: &str) -> Out {
    host.kubeadm(&[
        "join",
        &j.endpoint,
        "--token",
        TOKEN,
        "--discovery-token-ca-cert-hash",
        &j.hash,
        "--control-plane",
        "--certificate-key",
        key,
        "--apiserver-advertise-address",
        &host.ip.to_string(),
        "--node-name",
        &host.name,
    ])
}

fn join_worker(host: &AgentProc, j: &Joinable, token: &str) -> Out {
    host.kubeadm(&[
        "join",
        &j.endpoint,
        "--token",
        token,
        "--discovery-token-ca-cert-hash",
        &j.hash,
        "--node-name",
        &host.name,
    ])
}

fn members(cp: &AgentProc, endpoints: &[String]) -> Vec<serde_json::Value> {
    let out = cp
        .etcdctl(endpoints, &["member", "list", "-w", "json"])
        .expect_ok("etcdctl member list");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    v["members"].as_array().cloned().unwrap_or_default()
}

fn nodes(cp: &AgentProc) -> Vec<(String, bool)> {
    let out = cp
        .kubectl(&["get", "nodes", "-o", "json"])
        .expect_ok("kubectl get nodes");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let ready = n["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            (n["metadata"]["name"].as_str().unwrap().to_string(), ready)
        })
        .collect()
}

const CNI: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: kube-flannel}\n---\napiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: kube-flannel-ds, namespace: kube-flannel}\nspec: {}\n";

#[test]
fn three_control_planes_and_a_worker_then_reset_leaves_two_members() {
    let mut w = World::offline();
    for n in ["cp-1", "cp-2", "cp-3", "w-1"] {
        w.add_kube_host(n);
    }
    let j = init(&w, &w.agents[0]);
    join_cp(&w.agents[1], &j, &j.key).expect_ok("join cp-2");
    join_cp(&w.agents[2], &j, &j.key).expect_ok("join cp-3");
    let out = join_worker(&w.agents[3], &j, TOKEN).expect_ok("join w-1");
    assert!(
        out.stdout.contains("This node has joined the cluster:"),
        "{}",
        out.stdout
    );

    // Three started, promoted, healthy members, checked with the real etcdctl.
    let eps: Vec<String> = w.agents[..3].iter().map(|a| a.etcd_endpoint()).collect();
    let ms = members(&w.agents[0], &[]);
    let mut names: Vec<&str> = ms.iter().map(|m| m["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["cp-1", "cp-2", "cp-3"], "{ms:?}");
    assert!(ms.iter().all(|m| m["isLearner"] != true), "{ms:?}");
    let health = w.agents[0]
        .etcdctl(&eps, &["endpoint", "health"])
        .expect_ok("endpoint health");
    assert_eq!(
        health.stdout.matches("is healthy").count() + health.stderr.matches("is healthy").count(),
        3,
        "{health:?}"
    );

    // Four nodes, NotReady until a CNI is applied.
    let ns = nodes(&w.agents[0]);
    assert_eq!(ns.len(), 4, "{ns:?}");
    assert!(ns.iter().all(|(_, ready)| !ready), "{ns:?}");
    let cni = w.dir().join("cni.yaml");
    std::fs::write(&cni, CNI).unwrap();
    let out = w.agents[0]
        .kubectl(&["apply", "-f", cni.to_str().unwrap()])
        .expect_ok("kubectl apply");
    assert_eq!(
        out.stdout,
        "namespace/kube-flannel created\ndaemonset.apps/kube-flannel-ds created\n"
    );
    assert!(nodes(&w.agents[1]).iter().all(|(_, ready)| *ready));
    let table = w.agents[2]
        .kubectl(&["get", "nodes"])
        .expect_ok("get nodes");
    assert!(
        table
            .stdout
            .starts_with("NAME   STATUS   ROLES           AGE"),
        "{}",
        table.stdout
    );
    assert!(
        table.stdout.contains("w-1    Ready    <none>"),
        "{}",
        table.stdout
    );

    // A second join of a joined host fails in preflight.
    let again = join_worker(&w.agents[3], &j, TOKEN);
    assert!(
        again.stderr.contains("[ERROR FileAvailable--etc-kubernetes-kubelet.conf]: /etc/kubernetes/kubelet.conf already exists"),
        "{}",
        again.stderr
    );

    // reset on a control plane removes its member through the cluster and
    // stops its static pods.
    w.agents[2]
        .kubeadm(&["reset", "-f"])
        .expect_ok("kubeadm reset");
    let ms = members(&w.agents[0], &eps[..2]);
    assert_eq!(ms.len(), 2, "{ms:?}");
    assert!(!w.agents[2].path("/etc/kubernetes/admin.conf").exists());
    assert!(!w.agents[2]
        .path("/etc/kubernetes/manifests/etcd.yaml")
        .exists());
    eventually("cp-3's etcd to stop", Duration::from_secs(10), || {
        match std::net::TcpStream::connect_timeout(
            &(w.agents[2].ip, 2379).into(),
            Duration::from_millis(100),
        ) {
            Ok(_) => Err("2379 still open".into()),
            Err(_) => Ok(()),
        }
    });
    w.agents[0]
        .etcdctl(&eps[..2], &["endpoint", "health"])
        .expect_ok("two healthy members");
}

const EXPIRED_SECRET: &str = "error execution phase control-plane-prepare/download-certs: error downloading certs: error downloading the secret: Secret \"kubeadm-certs\" was not found in the \"kube-system\" Namespace. This Secret might have expired. Please, run `kubeadm init phase upload-certs --upload-certs` on a control plane to generate a new one";

#[test]
fn the_kubeadm_certs_secret_expires_after_two_hours_until_uploaded_again() {
    let mut w = World::offline();
    for n in ["cp-1", "cp-2"] {
        w.add_kube_host(n);
    }
    let j = init(&w, &w.agents[0]);

    // The wrong key cannot open the Secret.
    let wrong = "00".repeat(32);
    let out = join_cp(&w.agents[1], &j, &wrong);
    assert!(
        out.stderr.contains(
            "error decoding secret data with provided key: cipher: message authentication failed"
        ),
        "{}",
        out.stderr
    );

    w.advance_clock(Duration::from_secs(2 * 3600 + 1));
    let out = join_cp(&w.agents[1], &j, &j.key);
    assert_eq!(out.code, Some(1));
    assert_eq!(
        out.stderr,
        format!(
            "{EXPIRED_SECRET}\nTo see the stack trace of this error execute with --v=5 or higher\n"
        )
    );

    let up = w.agents[0]
        .kubeadm(&["init", "phase", "upload-certs", "--upload-certs"])
        .expect_ok("upload-certs");
    assert!(
        up.stdout.starts_with("[upload-certs] Storing the certificates in Secret \"kubeadm-certs\" in the \"kube-system\" Namespace\n[upload-certs] Using certificate key:\n"),
        "{}",
        up.stdout
    );
    let key = certificate_key(&up.stdout);
    assert_ne!(key, j.key);
    join_cp(&w.agents[1], &j, &key).expect_ok("join with the new key");
    assert_eq!(members(&w.agents[0], &[]).len(), 2);
}

#[test]
fn a_token_join_fails_after_25_hours_and_a_new_token_works() {
    let mut w = World::offline();
    for n in ["cp-1", "w-1"] {
        w.add_kube_host(n);
    }
    let j = init(&w, &w.agents[0]);

    // A wrong CA pin is refused before anything is written.
    let bad = Joinable {
        endpoint: j.endpoint.clone(),
        hash: format!("sha256:{}", "ab".repeat(32)),
        key: String::new(),
    };
    let out = join_worker(&w.agents[1], &bad, TOKEN);
    assert!(
        out.stderr.contains("cluster CA found in cluster-info ConfigMap is invalid: none of the public keys \"sha256:"),
        "{}",
        out.stderr
    );

    let list = w.agents[0]
        .kubeadm(&["token", "list"])
        .expect_ok("token list");
    assert!(list.stdout.contains(TOKEN), "{}", list.stdout);
    w.advance_clock(Duration::from_secs(25 * 3600));
    let out = join_worker(&w.agents[1], &j, TOKEN);
    assert!(
        out.stderr.starts_with("error execution phase preflight: couldn't validate the identity of the API Server: could not find a JWS signature in the cluster-info ConfigMap for token ID \"abcdef\"\n"),
        "{}",
        out.stderr
    );
    assert!(!w.agents[1].path("/etc/kubernetes/kubelet.conf").exists());
    let list = w.agents[0]
        .kubeadm(&["token", "list"])
        .expect_ok("token list");
    assert!(!list.stdout.contains(TOKEN), "{}", list.stdout);

    let cmd = w.agents[0]
        .kubeadm(&["token", "create", "--print-join-command"])
        .expect_ok("token create");
    let words: Vec<&str> = cmd.stdout.split_whitespace().collect();
    assert_eq!(
        &words[..3],
        ["kubeadm", "join", j.endpoint.as_str()],
        "{}",
        cmd.stdout
    );
    assert_eq!(words[5], "--discovery-token-ca-cert-hash");
    assert_eq!(words[6], j.hash);
    join_worker(&w.agents[1], &j, words[4]).expect_ok("join with the new token");
}

/// etcd admits one learner at a time. While another control plane's join
/// has its learner pending (added, not yet promoted), a join fails with
/// etcd's error and adds nothing; once that learner is gone it succeeds.
/// The pending learner is added the way a concurrent join adds it, with the
/// real etcdctl, so the window is held open instead of raced for.
#[test]
fn a_control_plane_join_while_a_learner_is_pending_fails_with_the_learner_error() {
    let mut w = World::offline();
    for n in ["cp-1", "cp-2", "cp-3"] {
        w.add_kube_host(n);
    }
    let j = init(&w, &w.agents[0]);
    let cp1 = &w.agents[0];
    let pending_peer = format!("--peer-urls=https://{}:2380", w.agents[1].ip);
    cp1.etcdctl(&[], &["member", "add", "cp-2", &pending_peer, "--learner"])
        .expect_ok("add a pending learner, as cp-2's join would");

    let out = join_cp(&w.agents[2], &j, &j.key);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains(
            "error execution phase control-plane-join/etcd: error creating local etcd static pod manifest file: etcdserver: too many learner members in cluster"
        ),
        "{}",
        out.stderr
    );
    let ms = members(cp1, &[]);
    assert_eq!(ms.len(), 2, "cp-3 added no member: {ms:?}");

    // The pending learner goes (its join gave up); cp-3 joins now.
    let learner = ms
        .iter()
        .find(|m| m["isLearner"] == true)
        .and_then(|m| m["ID"].as_u64())
        .expect("the pending learner");
    cp1.etcdctl(&[], &["member", "remove", &format!("{learner:x}")])
        .expect_ok("remove the pending learner");
    w.agents[2]
        .kubeadm(&["reset", "-f"])
        .expect_ok("reset cp-3");
    join_cp(&w.agents[2], &j, &j.key).expect_ok("join cp-3");
    let ms = members(cp1, &[]);
    assert_eq!(ms.len(), 2, "{ms:?}");
    assert!(ms.iter().all(|m| m["isLearner"] != true), "{ms:?}");
}

#[test]
fn without_quorum_token_create_and_get_nodes_fail_until_a_member_returns() {
    let mut w = World::offline();
    for n in ["cp-1", "cp-2", "cp-3"] {
        w.add_kube_host(n);
    }
    let j = init(&w, &w.agents[0]);
    join_cp(&w.agents[1], &j, &j.key).expect_ok("join cp-2");
    join_cp(&w.agents[2], &j, &j.key).expect_ok("join cp-3");

    w.agents[1].power_off();
    w.agents[2].power_off();
    let cp1 = &w.agents[0];
    let out = cp1.kubeadm(&["token", "create"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("context deadline exceeded")
            || out.stderr.contains("etcdserver: request timed out"),
        "{}",
        out.stderr
    );
    let out = cp1.kubectl(&["get", "nodes"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.starts_with("Error from server: "),
        "{}",
        out.stderr
    );
    let ready = cp1.apiserver_get("/readyz").unwrap();
    assert_eq!(ready.0, 500, "{ready:?}");
    assert!(ready.1.contains("[-]etcd failed"), "{ready:?}");

    w.agents[1].start_kubelet();
    let cp1 = &w.agents[0];
    eventually("quorum to return", Duration::from_secs(30), || {
        let out = cp1.kubeadm(&["token", "create"]);
        if out.ok() {
            Ok(())
        } else {
            Err(out.stderr)
        }
    });
    assert_eq!(nodes(cp1).len(), 3);
}

/// `kubeadm token create --config` and `kubeadm init phase upload-certs
/// --config` take their secret from the file, as real kubeadm does, and
/// refuse the secret flags beside `--config` with kubeadm's error.
#[test]
fn token_create_and_upload_certs_take_their_secret_from_a_config_file() {
    let mut w = World::offline();
    for n in ["cp-1", "w-1"] {
        w.add_kube_host(n);
    }
    let j = init(&w, &w.agents[0]);
    let new_token = "ghijkl.0123456789abcdef";
    let key = "4f0c6b2e9d8a7c1b3e5f7a9c0d2e4f6a8b1c3d5e7f9a0b2c4d6e8f1a3b5c7d9e";
    let cluster = "---\napiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nkubernetesVersion: v1.32.0\n";
    let token_cfg = w.dir().join("token.yaml");
    std::fs::write(
        &token_cfg,
        format!("apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\nbootstrapTokens:\n- token: {new_token}\n  ttl: 1h0m0s\n{cluster}"),
    )
    .unwrap();
    let token_cfg = token_cfg.to_str().unwrap();
    let cp = &w.agents[0];

    let out = cp.kubeadm(&["token", "create", "--config", token_cfg, "--ttl", "2h"]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .starts_with("can not mix '--config' with arguments [ttl]"),
        "{}",
        out.stderr
    );
    let out = cp
        .kubeadm(&["token", "create", "--config", token_cfg])
        .expect_ok("token create --config");
    assert_eq!(out.stdout, format!("{new_token}\n"));
    let list = cp.kubeadm(&["token", "list"]).expect_ok("token list");
    let line = list
        .stdout
        .lines()
        .find(|l| l.starts_with(new_token))
        .unwrap_or_else(|| panic!("{}", list.stdout));
    assert!(line.contains(" 59m ") || line.contains(" 1h "), "{line}");
    join_worker(&w.agents[1], &j, new_token).expect_ok("join with the token from the file");

    let key_cfg = w.dir().join("upload.yaml");
    std::fs::write(
        &key_cfg,
        format!("apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\ncertificateKey: {key}\n{cluster}"),
    )
    .unwrap();
    let key_cfg = key_cfg.to_str().unwrap();
    let out = cp.kubeadm(&[
        "init",
        "phase",
        "upload-certs",
        "--upload-certs",
        "--config",
        key_cfg,
        "--certificate-key",
        key,
    ]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .starts_with("can not mix '--config' with arguments [certificate-key]"),
        "{}",
        out.stderr
    );
    let up = cp
        .kubeadm(&[
            "init",
            "phase",
            "upload-certs",
            "--upload-certs",
            "--config",
            key_cfg,
        ])
        .expect_ok("upload-certs --config");
    assert_eq!(certificate_key(&up.stdout), key);
    // The calls that worked had no secret on their command line.
    let calls = cp.calls();
    for call in [
        format!("kubeadm token create --config {token_cfg}"),
        format!("kubeadm init phase upload-certs --upload-certs --config {key_cfg}"),
    ] {
        assert!(calls.contains(&call), "{call} not in {calls:?}");
    }
}

fn set_version(host: &AgentProc, v: &str) {
    std::fs::write(host.node_dir().join("kube-version"), format!("{v}\n")).unwrap();
}

fn image_of(host: &AgentProc, component: &str) -> String {
    let m =
        std::fs::read_to_string(host.path(&format!("/etc/kubernetes/manifests/{component}.yaml")))
            .unwrap();
    m.lines()
        .find_map(|l| l.trim().strip_prefix("image: "))
        .unwrap()
        .to_string()
}

#[test]
fn upgrade_apply_then_upgrade_node_move_the_cluster_one_minor() {
    let mut w = World::offline();
    for n in ["cp-1", "cp-2", "w-1"] {
        w.add_kube_host(n);
        set_version(w.agents.last().unwrap(), "v1.31.4");
    }
    let (cp1, cp2, w1) = (&w.agents[0], &w.agents[1], &w.agents[2]);
    let cfg = init_config(&w, cp1);
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("v1.32.0", "v1.31.4")).unwrap();
    let out = cp1
        .kubeadm(&["init", "--config", cfg.to_str().unwrap(), "--upload-certs"])
        .expect_ok("kubeadm init at v1.31.4");
    let hash = out
        .stdout
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .unwrap()
        .to_string();
    let j = Joinable {
        endpoint: format!("{}:6443", cp1.ip),
        hash,
        key: certificate_key(&out.stdout),
    };
    join_cp(cp2, &j, &j.key).expect_ok("join cp-2");
    join_worker(w1, &j, TOKEN).expect_ok("join w-1");
    assert_eq!(
        image_of(cp1, "kube-apiserver"),
        "registry.k8s.io/kube-apiserver:v1.31.4"
    );

    // kubeadm v1.31.4 cannot go to v1.32; the new kubeadm plans it.
    let out = cp1.kubeadm(&["upgrade", "apply", "v1.32.0", "--yes"]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("Specified version to upgrade to \"v1.32.0\" is at least one minor release higher than the kubeadm minor release (32 > 31). Such an upgrade is not supported"), "{}", out.stderr);
    set_version(cp1, "v1.32.0");
    let plan = cp1.kubeadm(&["upgrade", "plan"]).expect_ok("upgrade plan");
    for want in [
        "[upgrade/versions] Cluster version: v1.31.4\n",
        "[upgrade/versions] kubeadm version: v1.32.0\n",
        "\tkubeadm upgrade apply v1.32.0\n",
    ] {
        assert!(plan.stdout.contains(want), "{want:?} in\n{}", plan.stdout);
    }
    for node in ["cp-1", "cp-2", "w-1"] {
        assert!(
            plan.stdout.lines().any(|l| l.starts_with("kubelet")
                && l.contains(node)
                && l.ends_with("v1.31.4   v1.32.0")),
            "{node} in\n{}",
            plan.stdout
        );
    }
    let out = cp1.kubeadm(&["upgrade", "apply", "v1.33.0", "-y"]);
    assert!(
        out.stderr
            .contains("the --version argument is invalid due to these fatal errors:"),
        "{}",
        out.stderr
    );
    // Without --yes kubeadm asks; no answer is a no.
    let out = cp1.kubeadm(&["upgrade", "apply", "v1.32.0"]);
    assert!(out
        .stdout
        .contains("[upgrade/confirm] Are you sure you want to proceed? [y/N]: "));
    assert!(
        out.stderr
            .contains("won't proceed; the user didn't answer (Y|y) in order to continue"),
        "{}",
        out.stderr
    );
    assert_eq!(
        image_of(cp1, "kube-apiserver"),
        "registry.k8s.io/kube-apiserver:v1.31.4"
    );

    let out = cp1
        .kubeadm(&["upgrade", "apply", "v1.32.0", "--yes"])
        .expect_ok("upgrade apply");
    assert!(
        out.stdout.contains(
            "[upgrade/successful] SUCCESS! Your cluster was upgraded to \"v1.32.0\". Enjoy!"
        ),
        "{}",
        out.stdout
    );
    for c in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ] {
        assert_eq!(image_of(cp1, c), format!("registry.k8s.io/{c}:v1.32.0"));
    }
    assert_eq!(image_of(cp1, "etcd"), "registry.k8s.io/etcd:3.5.16-0");
    cp1.apiserver_get("/healthz")
        .expect("the restarted apiserver answers");
    let plan = cp1.kubeadm(&["upgrade", "plan"]).expect_ok("upgrade plan");
    assert!(
        plan.stdout
            .contains("[upgrade/versions] Cluster version: v1.32.0\n"),
        "{}",
        plan.stdout
    );
    let again = cp1
        .kubeadm(&[
            "upgrade",
            "apply",
            "v1.32.0",
            "-y",
            "--certificate-renewal=false",
        ])
        .expect_ok("re-apply");
    assert!(
        again
            .stdout
            .contains("Current and new manifests of kube-apiserver are equal, skipping upgrade"),
        "{}",
        again.stdout
    );

    // cp-2 follows the cluster version once its kubeadm is new enough.
    let out = cp2.kubeadm(&["upgrade", "node"]);
    assert!(
        out.stderr.contains(
            "the cluster version \"v1.32.0\" is higher than the kubeadm version \"v1.31.4\""
        ),
        "{}",
        out.stderr
    );
    assert_eq!(
        image_of(cp2, "kube-apiserver"),
        "registry.k8s.io/kube-apiserver:v1.31.4"
    );
    set_version(cp2, "v1.32.0");
    let out = cp2
        .kubeadm(&["upgrade", "node"])
        .expect_ok("upgrade node cp-2");
    assert!(out.stdout.ends_with("[upgrade] The control plane instance for this node was successfully updated!\n[upgrade] Now you should go ahead and upgrade the kubelet package using your package manager.\n"), "{}", out.stdout);
    assert_eq!(
        image_of(cp2, "kube-scheduler"),
        "registry.k8s.io/kube-scheduler:v1.32.0"
    );
    cp2.apiserver_get("/healthz")
        .expect("cp-2's apiserver answers");

    let out = w1
        .kubeadm(&["upgrade", "node"])
        .expect_ok("upgrade node w-1");
    assert!(out.stdout.ends_with("[upgrade] The configuration for this node was successfully updated!\n[upgrade] Now you should go ahead and upgrade the kubelet package using your package manager.\n"), "{}", out.stdout);
    let calls = std::fs::read_to_string(cp1.node_dir().join("calls.log")).unwrap();
    assert!(calls.contains("upgrade apply v1.32.0 --yes"), "{calls}");
}
