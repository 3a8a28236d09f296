//! The Kubernetes steps and queries on temp host roots, with `kubeadm` and
//! `kubectl` doubles that print what the real tools print.

mod common;

use std::time::Duration;

use common::TestHost;
use kh_host::kube::{
    kubectl_delete_node, kubectl_nodes, node_state, read_admin_conf, read_files,
    remove_leftover_configs, KubeadmInit, KubeadmJoin, KubeadmReset, KubectlApply, NodeState,
    PlaceFiles, TokenCreate, TokenDelete, UploadCerts, ADMIN_CONF, INIT_CONFIG_FILE,
    JOIN_CONFIG_FILE, KUBELET_CONF, SHARED_CA_FILES, STEP_CONFIG_FILES, TOKEN_CONFIG_FILE,
    UPLOAD_CERTS_CONFIG_FILE,
};
use kh_host::{FailureKind, Outcome, SecretBytes, SecretString, Step, StepKind, StepReport};

const TOKEN: &str = "abcdef.0123456789abcdef";
const CERT_KEY: &str = "4f0c6b2e9d8a7c1b3e5f7a9c0d2e4f6a8b1c3d5e7f9a0b2c4d6e8f1a3b5c7d9e";

fn init_config() -> String {
    format!(
        "apiVersion: kubeadm.k8s.io/v1beta4\n\
kind: InitConfiguration\n\
bootstrapTokens:\n\
- token: {TOKEN}\n\
  ttl: 24h0m0s\n\
localAPIEndpoint:\n\
  advertiseAddress: 10.0.0.11\n\
  bindPort: 6443\n\
certificateKey: {CERT_KEY}\n\
---\n\
apiVersion: kubeadm.k8s.io/v1beta4\n\
kind: ClusterConfiguration\n\
kubernetesVersion: v1.32.0\n\
controlPlaneEndpoint: lb.example.internal:6443\n"
    )
}

fn join_config(control_plane: bool) -> String {
    let mut config = format!(
        "apiVersion: kubeadm.k8s.io/v1beta4\n\
kind: JoinConfiguration\n\
discovery:\n\
  bootstrapToken:\n\
    apiServerEndpoint: lb.example.internal:6443\n\
    token: {TOKEN}\n\
    caCertHashes:\n\
    - {}\n\
nodeRegistration:\n\
  name: cp-2\n",
        common::CA_CERT_HASH
    );
    if control_plane {
        config.push_str(&format!(
            "controlPlane:\n  localAPIEndpoint:\n    advertiseAddress: 10.0.0.12\n    bindPort: 6443\n  certificateKey: {CERT_KEY}\n"
        ));
    }
    config
}

fn kube_host() -> TestHost {
    let t = TestHost::new();
    t.install_kube_doubles();
    t
}

/// Neither the Debug form, the JSON form nor the error text of a report may
/// contain any of `secrets`.
fn assert_clean(report: &StepReport, secrets: &[&str]) {
    let debug = format!("{report:?}");
    let json = serde_json::to_string(report).expect("report to json");
    for secret in secrets {
        assert!(!debug.contains(secret), "secret in Debug: {debug}");
        assert!(!json.contains(secret), "secret in JSON: {json}");
        if let Some(error) = &report.error {
            assert!(!error.contains(secret), "secret in error: {error}");
        }
    }
}

fn real(t: &TestHost, abs: &str) -> String {
    t.root()
        .join(abs.trim_start_matches('/'))
        .display()
        .to_string()
}

fn init_step() -> KubeadmInit {
    KubeadmInit {
        config: SecretString::new(init_config()),
        upload_certs: true,
    }
}

#[test]
fn init_runs_kubeadm_on_a_0600_config_removed_afterwards_then_is_unchanged() {
    let t = kube_host();
    let host = t.host();
    let report = init_step().run(&host, false);
    assert_eq!(report.outcome, Outcome::Changed, "{report:#?}");
    assert_eq!(report.step, StepKind::KubeadmInit);
    let config_path = real(&t, INIT_CONFIG_FILE);
    assert_eq!(
        t.calls(),
        vec![format!(
            "kubeadm init --config {config_path} --upload-certs"
        )]
    );
    // kubeadm read the real config from a 0600 file in a directory only
    // root may enter, which is gone now.
    assert_eq!(t.modes_seen(), vec!["600"]);
    assert_eq!(t.dir_modes_seen(), vec!["700"]);
    assert_eq!(t.tmp_file("seen-init.yaml").unwrap(), init_config());
    assert!(!t.exists(INIT_CONFIG_FILE));

    // kubeadm printed the token and the key; the record has neither.
    let record = &report.commands[0];
    assert!(
        record.stdout.contains("--token <redacted>"),
        "{}",
        record.stdout
    );
    assert!(record.stdout.contains("--certificate-key <redacted>"));
    assert!(record
        .stdout
        .contains("[bootstrap-token] Using token: <redacted>"));
    assert_eq!(
        report.files[0].after,
        "<secret: 2 documents, 0600, removed after the step>"
    );
    assert_clean(&report, &[TOKEN, CERT_KEY, "0123456789abcdef"]);
    assert_eq!(
        node_state(&host).unwrap(),
        NodeState {
            kubelet_conf: true,
            admin_conf: true,
            apiserver_manifest: true,
            etcd_manifest: true,
        }
    );

    let again = init_step().run(&host, false);
    assert_eq!(again.outcome, Outcome::Unchanged, "{again:#?}");
    assert_eq!(again.message, "already initialized");
    assert!(again.commands.is_empty() && again.files.is_empty());
    assert_eq!(t.calls().len(), 1, "no second kubeadm init");
}

#[test]
fn a_dry_run_of_init_touches_nothing_and_shows_no_secret() {
    let t = kube_host();
    let before = t.snapshot();
    let report = init_step().run(&t.host(), true);
    assert_eq!(t.snapshot(), before);
    assert!(t.calls().is_empty());
    assert!(report.dry_run);
    assert_eq!(report.outcome, Outcome::Changed);
    assert!(report.message.contains(&format!(
        "would run `kubeadm init --config {} --upload-certs`",
        real(&t, INIT_CONFIG_FILE)
    )));
    assert!(report
        .message
        .contains("would write /var/lib/kh-agent/kubeadm-init.yaml"));
    assert_eq!(
        report.files[0].diff,
        "--- /dev/null\n+++ b/var/lib/kh-agent/kubeadm-init.yaml\n<secret: 2 documents, 0600, removed after the step>\n"
    );
    assert_clean(&report, &[TOKEN, CERT_KEY]);
}

#[test]
fn a_failing_init_reports_argv_status_and_stderr_and_still_removes_the_config() {
    let t = kube_host();
    std::fs::write(
        t.tmp().join("kubeadm-fails"),
        "[preflight] Running pre-flight checks\nerror execution phase preflight: [preflight] Some fatal errors occurred:\n\t[ERROR Port-6443]: Port 6443 is in use\n\t[ERROR BootstrapToken]: token TOKEN rejected\n",
    )
    .unwrap();
    let report = init_step().run(&t.host(), false);
    assert_eq!(report.outcome, Outcome::Failed);
    let error = report.error.clone().unwrap();
    assert!(
        error.contains(&format!(
            "`kubeadm init --config {} --upload-certs` failed (exit status 1)",
            real(&t, INIT_CONFIG_FILE)
        )),
        "{error}"
    );
    assert!(error.contains("Port 6443 is in use"), "{error}");
    assert!(error.contains("token <redacted> rejected"), "{error}");
    assert!(error.contains("reset the node"), "{error}");
    assert_eq!(t.modes_seen(), vec!["600"], "0600 while kubeadm ran");
    assert!(!t.exists(INIT_CONFIG_FILE), "removed after a failure too");
    assert_eq!(report.commands.len(), 1);
    assert_eq!(report.commands[0].exit_code, Some(1));
    assert_clean(&report, &[TOKEN, CERT_KEY]);
}

#[test]
fn a_partial_or_interrupted_init_is_explained() {
    let t = kube_host();
    // An agent killed between kubeadm init and the cleanup left the config.
    t.write(ADMIN_CONF, "apiVersion: v1\n");
    t.write(
        "/etc/kubernetes/manifests/kube-apiserver.yaml",
        "kind: Pod\n",
    );
    t.write(INIT_CONFIG_FILE, &init_config());
    let plan = init_step().plan(&t.host()).unwrap();
    assert!(plan.is_empty());
    assert!(
        plan.notes.iter().any(|n| n.contains("left behind")),
        "{plan:?}"
    );
    let report = init_step().run(&t.host(), false);
    assert_eq!(report.outcome, Outcome::Unchanged);
    assert!(report
        .message
        .contains("removed `/var/lib/kh-agent/kubeadm-init.yaml`"));
    assert!(!t.exists(INIT_CONFIG_FILE));
    assert!(t.calls().is_empty());

    let t = kube_host();
    t.write(ADMIN_CONF, "apiVersion: v1\n");
    let plan = init_step().plan(&t.host()).unwrap();
    assert_eq!(plan.commands.len(), 1);
    assert!(
        plan.notes[0].starts_with("partially initialized"),
        "{plan:?}"
    );
}

#[test]
fn workers_and_control_planes_join_once() {
    let t = kube_host();
    let host = t.host();
    let worker = KubeadmJoin {
        config: SecretString::new(join_config(false)),
        control_plane: false,
    };
    let report = worker.run(&host, false);
    assert_eq!(report.outcome, Outcome::Changed, "{report:#?}");
    assert_eq!(report.message, "kubeadm join added this node as a worker");
    assert_eq!(
        t.calls(),
        vec![format!(
            "kubeadm join --config {}",
            real(&t, JOIN_CONFIG_FILE)
        )]
    );
    assert_eq!(t.modes_seen(), vec!["600"]);
    assert_eq!(t.tmp_file("seen-join.yaml").unwrap(), join_config(false));
    assert!(!t.exists(JOIN_CONFIG_FILE));
    assert!(t.exists(KUBELET_CONF));
    assert_clean(&report, &[TOKEN]);
    let again = worker.run(&host, false);
    assert_eq!(again.outcome, Outcome::Unchanged);
    assert_eq!(t.calls().len(), 1);

    // Asked to join as a control plane, a node that joined as a worker is
    // not silently accepted.
    let as_cp = KubeadmJoin {
        config: SecretString::new(join_config(true)),
        control_plane: true,
    };
    let plan = as_cp.plan(&host).unwrap();
    assert!(plan.is_empty());
    assert!(
        plan.notes.iter().any(|n| n.contains("joined as a worker")),
        "{plan:?}"
    );

    let t = kube_host();
    let report = as_cp.run(&t.host(), false);
    assert_eq!(report.outcome, Outcome::Changed, "{report:#?}");
    assert!(t.exists("/etc/kubernetes/manifests/etcd.yaml"));
    assert_clean(&report, &[TOKEN, CERT_KEY]);
    assert_eq!(as_cp.run(&t.host(), false).outcome, Outcome::Unchanged);
}

#[test]
fn a_failing_join_removes_its_config_and_scrubs_the_token() {
    let t = kube_host();
    std::fs::write(
        t.tmp().join("kubeadm-fails"),
        "error execution phase preflight: couldn't validate the identity of the API Server: token id \"TOKEN\" is invalid for this cluster or it has expired. Use \"kubeadm token create\" on the control-plane node to create a new valid token\n",
    )
    .unwrap();
    let join = KubeadmJoin {
        config: SecretString::new(join_config(false)),
        control_plane: false,
    };
    let report = join.run(&t.host(), false);
    assert_eq!(report.outcome, Outcome::Failed);
    let error = report.error.clone().unwrap();
    assert!(error.contains("kubeadm join --config"), "{error}");
    assert!(
        error.contains("token id \"<redacted>\" is invalid"),
        "{error}"
    );
    assert_eq!(report.failure, Some(FailureKind::TokenRefused));
    assert!(!t.exists(JOIN_CONFIG_FILE));
    assert_eq!(t.modes_seen(), vec!["600"]);
    assert_clean(&report, &[TOKEN]);
}

#[test]
fn a_control_plane_join_without_the_kubeadm_certs_secret_is_a_certificate_key_failure() {
    let t = kube_host();
    std::fs::write(
        t.tmp().join("kubeadm-fails"),
        "error execution phase control-plane-prepare/download-certs: error downloading certs: error downloading the secret: Secret \"kubeadm-certs\" was not found in the \"kube-system\" Namespace. This Secret might have expired. Please, run `kubeadm init phase upload-certs --upload-certs` on a control plane to generate a new one\nTo see the stack trace of this error execute with --v=5 or higher\n",
    )
    .unwrap();
    let join = KubeadmJoin {
        config: SecretString::new(join_config(true)),
        control_plane: true,
    };
    let report = join.run(&t.host(), false);
    assert_eq!(report.outcome, Outcome::Failed);
    assert_eq!(report.failure, Some(FailureKind::CertificateKey));
    // The human message stays beside the kind.
    let error = report.error.unwrap();
    assert!(error.contains("This Secret might have expired"), "{error}");

    std::fs::remove_file(t.tmp().join("kubeadm-fails")).unwrap();
    let report = join.run(&t.host(), false);
    assert_eq!(report.outcome, Outcome::Changed, "{:?}", report.error);
    assert_eq!(report.failure, None);
}

#[test]
fn reset_runs_only_when_kubeadm_left_something() {
    let t = kube_host();
    let host = t.host();
    let clean = KubeadmReset.run(&host, false);
    assert_eq!(clean.outcome, Outcome::Unchanged);
    assert!(t.calls().is_empty());

    t.write("/etc/kubernetes/manifests/etcd.yaml", "kind: Pod\n");
    let plan = KubeadmReset.plan(&host).unwrap();
    assert_eq!(plan.commands, vec![vec!["kubeadm", "reset", "-f"]]);
    assert!(plan.notes[0].contains("/etc/kubernetes/manifests/etcd.yaml"));
    let report = KubeadmReset.run(&host, false);
    assert_eq!(report.outcome, Outcome::Changed, "{report:#?}");
    assert_eq!(t.calls(), vec!["kubeadm reset -f"]);
    assert!(!t.exists("/etc/kubernetes/manifests/etcd.yaml"));
    assert_eq!(KubeadmReset.run(&host, false).outcome, Outcome::Unchanged);
    assert_eq!(t.calls().len(), 1);
}

/// What the coordinator renders for `kubeadm token create --config`.
fn token_config(ttl: &str) -> SecretString {
    SecretString::new(format!(
        "apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\nbootstrapTokens:\n- token: {TOKEN}\n  ttl: {ttl}\n---\napiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nkubernetesVersion: v1.32.0\n"
    ))
}

fn token_create(ttl: Duration, ttl_text: &str) -> TokenCreate {
    TokenCreate::new(SecretString::new(TOKEN), ttl, token_config(ttl_text)).unwrap()
}

#[test]
fn tokens_are_created_from_a_private_config_file_and_recreated_when_they_exist() {
    let t = kube_host();
    t.write(ADMIN_CONF, "apiVersion: v1\n");
    let host = t.host();
    let admin = real(&t, ADMIN_CONF);
    let config = real(&t, TOKEN_CONFIG_FILE);
    let create = token_create(Duration::from_secs(24 * 3600), "24h0m0s");
    let plan = create.plan(&host).unwrap();
    let argv = [
        "kubeadm",
        "token",
        "create",
        "--config",
        &config,
        "--kubeconfig",
        &admin,
    ];
    assert_eq!(plan.commands[0], argv);
    let report = create.run(&host, false);
    assert_eq!(report.outcome, Outcome::Changed, "{report:#?}");
    // No secret on kubeadm's command line, where `ps` would show it: the
    // double got the token from a 0600 file in a 0700 directory, which is
    // gone now.
    assert_eq!(t.calls(), vec![argv.join(" ")]);
    assert_eq!(t.modes_seen(), vec!["600"]);
    assert_eq!(t.dir_modes_seen(), vec!["700"]);
    assert_eq!(
        t.tmp_file("seen-token.yaml").unwrap(),
        token_config("24h0m0s").expose()
    );
    assert!(!t.exists(TOKEN_CONFIG_FILE));
    assert_eq!(report.commands[0].argv, argv);
    assert_eq!(report.commands[0].stdout, "<redacted>\n");
    assert_eq!(t.tmp_file("tokens/abcdef").unwrap(), "24h0m0s");
    assert_clean(&report, &[TOKEN, "0123456789abcdef"]);

    // kubeadm refuses an existing id; the step deletes and recreates it so
    // the TTL starts over, from the same file.
    let refresh = token_create(Duration::from_secs(7200), "2h0m0s");
    let report = refresh.run(&host, false);
    assert_eq!(report.outcome, Outcome::Changed, "{report:#?}");
    assert_eq!(report.commands.len(), 3);
    assert_eq!(report.commands[0].exit_code, Some(1));
    assert_eq!(
        report.commands[1].argv,
        [
            "kubeadm",
            "token",
            "delete",
            "abcdef",
            "--kubeconfig",
            admin.as_str()
        ]
    );
    assert!(report.message.contains("created it again with TTL 2h0m0s"));
    assert_eq!(t.tmp_file("tokens/abcdef").unwrap(), "2h0m0s");
    assert!(!t.exists(TOKEN_CONFIG_FILE));
    assert_clean(&report, &[TOKEN]);
    assert!(t.calls().iter().all(|c| !c.contains("0123456789abcdef")));
}

#[test]
fn a_failed_token_create_leaves_no_config_behind() {
    let t = kube_host();
    let host = t.host();
    t.fail(
        "kubeadm",
        "failed to load admin kubeconfig: open /etc/kubernetes/admin.conf: no such file or directory\n",
    );
    let report = token_create(Duration::from_secs(60), "1m0s").run(&host, false);
    assert_eq!(report.outcome, Outcome::Failed, "{report:#?}");
    assert!(!t.exists(TOKEN_CONFIG_FILE));
    let err = UploadCerts::new(SecretString::new(CERT_KEY), upload_config())
        .unwrap()
        .run(&host, false);
    assert_eq!(err.outcome, Outcome::Failed, "{err:#?}");
    assert!(!t.exists(UPLOAD_CERTS_CONFIG_FILE));
}

#[test]
fn a_config_without_the_step_s_secret_is_refused() {
    let other = SecretString::new("ghijkl.0123456789abcdef");
    let err = TokenCreate::new(other, Duration::from_secs(60), token_config("1m0s")).unwrap_err();
    assert!(err.to_string().contains("bootstrapTokens"), "{err}");
    assert!(!err.to_string().contains("ghijkl"), "{err}");
    let err = UploadCerts::new(SecretString::new("a".repeat(64)), upload_config()).unwrap_err();
    assert!(err.to_string().contains("certificateKey"), "{err}");
}

#[test]
fn deleting_a_token_is_unchanged_once_it_is_gone() {
    let t = kube_host();
    t.write(ADMIN_CONF, "apiVersion: v1\n");
    let host = t.host();
    token_create(Duration::from_secs(60), "1m0s").run(&host, false);
    let delete = TokenDelete::new("abcdef").unwrap();
    let first = delete.run(&host, false);
    assert_eq!(first.outcome, Outcome::Changed, "{first:#?}");
    assert_eq!(first.message, "deleted bootstrap token abcdef");
    let second = delete.run(&host, false);
    assert_eq!(second.outcome, Outcome::Unchanged, "{second:#?}");
    assert_eq!(second.message, "bootstrap token abcdef does not exist");
    assert_eq!(second.error, None);

    t.fail(
        "kubeadm",
        "failed to load admin kubeconfig: open /etc/kubernetes/admin.conf: permission denied\n",
    );
    let failed = delete.run(&host, false);
    assert_eq!(failed.outcome, Outcome::Failed);
    let error = failed.error.unwrap();
    assert!(
        error.contains("kubeadm token delete abcdef --kubeconfig"),
        "{error}"
    );
    assert!(error.contains("permission denied"), "{error}");
    assert!(error.contains("healthy control plane"), "{error}");
}

/// What the coordinator renders for `kubeadm init phase upload-certs --config`.
fn upload_config() -> SecretString {
    SecretString::new(format!(
        "apiVersion: kubeadm.k8s.io/v1beta4\n\
kind: InitConfiguration\n\
certificateKey: {CERT_KEY}\n\
---\n\
apiVersion: kubeadm.k8s.io/v1beta4\n\
kind: ClusterConfiguration\n\
kubernetesVersion: v1.32.0\n"
    ))
}

#[test]
fn upload_certs_passes_the_key_only_to_kubeadm_in_a_private_file() {
    let t = kube_host();
    t.write(ADMIN_CONF, "apiVersion: v1\n");
    let step = UploadCerts::new(SecretString::new(CERT_KEY), upload_config()).unwrap();
    let report = step.run(&t.host(), false);
    assert_eq!(report.outcome, Outcome::Changed, "{report:#?}");
    let config = real(&t, UPLOAD_CERTS_CONFIG_FILE);
    let admin = real(&t, ADMIN_CONF);
    let argv = [
        "kubeadm",
        "init",
        "phase",
        "upload-certs",
        "--upload-certs",
        "--config",
        &config,
        "--kubeconfig",
        &admin,
    ];
    assert_eq!(report.commands[0].argv, argv);
    assert_eq!(
        t.calls(),
        vec![argv.join(" ")],
        "no key on the command line"
    );
    assert_eq!(t.modes_seen(), vec!["600"]);
    assert_eq!(t.dir_modes_seen(), vec!["700"]);
    assert_eq!(
        t.tmp_file("seen-upload-certs.yaml").unwrap(),
        upload_config().expose()
    );
    assert!(!t.exists(UPLOAD_CERTS_CONFIG_FILE));
    assert!(report.commands[0]
        .stdout
        .ends_with("Using certificate key:\n<redacted>\n"));
    assert_clean(&report, &[CERT_KEY]);
}

#[test]
fn kubectl_apply_uses_a_temporary_0600_manifest_and_reports_unchanged_objects() {
    let t = kube_host();
    t.write(ADMIN_CONF, "apiVersion: v1\n");
    let manifest = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: kube-flannel\n";
    let step = KubectlApply::new("cni", manifest).unwrap();
    let report = step.run(&t.host(), false);
    assert_eq!(report.outcome, Outcome::Changed, "{report:#?}");
    let path = real(&t, "/var/lib/kh-agent/apply-cni.yaml");
    assert_eq!(
        t.calls(),
        vec![format!(
            "kubectl --kubeconfig {} apply -f {path}",
            real(&t, ADMIN_CONF)
        )]
    );
    assert_eq!(t.modes_seen(), vec!["600"]);
    assert!(!t.exists("/var/lib/kh-agent/apply-cni.yaml"));
    assert_eq!(report.files[0].after, manifest);

    let again = step.run(&t.host(), false);
    assert_eq!(again.outcome, Outcome::Unchanged, "{again:#?}");
    assert_eq!(again.message, "manifest cni: all 2 objects unchanged");
}

// What `kubectl get nodes -o json` prints, trimmed to the fields kh reads
// plus some it must ignore.
const NODE_LIST: &str = r#"{
    "apiVersion": "v1",
    "items": [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "annotations": {"kubeadm.alpha.kubernetes.io/cri-socket": "unix:///var/run/containerd/containerd.sock"},
                "creationTimestamp": "2025-01-10T09:12:44Z",
                "labels": {
                    "beta.kubernetes.io/arch": "amd64",
                    "kubernetes.io/hostname": "cp-1",
                    "node-role.kubernetes.io/control-plane": "",
                    "node.kubernetes.io/exclude-from-external-load-balancers": ""
                },
                "name": "cp-1",
                "resourceVersion": "1043",
                "uid": "6f1b2c1e-4f4a-4d7e-9a53-3c1d2b8e0f11"
            },
            "spec": {"podCIDR": "10.244.0.0/24", "taints": [{"effect": "NoSchedule", "key": "node-role.kubernetes.io/control-plane"}]},
            "status": {
                "conditions": [
                    {"lastHeartbeatTime": "2025-01-10T09:20:01Z", "message": "kubelet has sufficient memory available", "reason": "KubeletHasSufficientMemory", "status": "False", "type": "MemoryPressure"},
                    {"lastHeartbeatTime": "2025-01-10T09:20:01Z", "message": "kubelet is posting ready status", "reason": "KubeletReady", "status": "True", "type": "Ready"}
                ],
                "nodeInfo": {"kubeletVersion": "v1.32.0"}
            }
        },
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"labels": {"kubernetes.io/hostname": "w-1"}, "name": "w-1"},
            "status": {
                "conditions": [
                    {"message": "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized", "reason": "KubeletNotReady", "status": "False", "type": "Ready"}
                ]
            }
        },
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"labels": {"node-role.kubernetes.io/worker": "true", "node-role.kubernetes.io/ingress": ""}, "name": "w-2"},
            "status": {"conditions": [{"status": "Unknown", "type": "Ready"}]}
        }
    ],
    "kind": "List",
    "metadata": {"resourceVersion": ""}
}"#;

#[test]
fn nodes_are_listed_with_readiness_and_roles() {
    let t = kube_host();
    t.write(ADMIN_CONF, "apiVersion: v1\n");
    std::fs::write(t.tmp().join("nodes.json"), NODE_LIST).unwrap();
    let nodes = kubectl_nodes(&t.host()).unwrap();
    let summary: Vec<(&str, bool, Vec<&str>)> = nodes
        .iter()
        .map(|n| {
            (
                n.name.as_str(),
                n.ready,
                n.roles.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("cp-1", true, vec!["control-plane"]),
            ("w-1", false, vec![]),
            ("w-2", false, vec!["ingress", "worker"]),
        ]
    );
    assert_eq!(
        t.calls(),
        vec![format!(
            "kubectl --kubeconfig {} get nodes -o json",
            real(&t, ADMIN_CONF)
        )]
    );

    t.fail("kubectl", "The connection to the server lb.example.internal:6443 was refused - did you specify the right host or port?\n");
    let err = kubectl_nodes(&t.host()).unwrap_err().to_string();
    assert!(err.contains("kubectl --kubeconfig"), "{err}");
    assert!(err.contains("get nodes -o json"), "{err}");
    assert!(err.contains("was refused"), "{err}");
    t.heal("kubectl");

    std::fs::write(t.tmp().join("nodes.json"), "No resources found\n").unwrap();
    let err = kubectl_nodes(&t.host()).unwrap_err().to_string();
    assert!(err.contains("cannot read the output"), "{err}");
    assert!(err.contains("No resources found"), "{err}");
}

#[test]
fn deleting_a_node_is_unchanged_when_it_is_not_found() {
    let t = kube_host();
    t.write(ADMIN_CONF, "apiVersion: v1\n");
    std::fs::create_dir_all(t.tmp().join("nodes")).unwrap();
    std::fs::write(t.tmp().join("nodes/w-1"), "").unwrap();
    let first = kubectl_delete_node(&t.host(), "w-1").unwrap();
    assert_eq!(first.outcome, Outcome::Changed, "{first:#?}");
    let second = kubectl_delete_node(&t.host(), "w-1").unwrap();
    assert_eq!(second.outcome, Outcome::Unchanged, "{second:#?}");
    assert_eq!(second.message, "node w-1 does not exist");
    assert!(kubectl_delete_node(&t.host(), "--all").is_err());
}

fn ca_set() -> Vec<(String, SecretString)> {
    SHARED_CA_FILES
        .iter()
        .map(|path| {
            let body = if path.ends_with(".key") {
                format!("-----BEGIN PRIVATE KEY-----\nSECRET-KEY-OF {path}\n-----END PRIVATE KEY-----\n")
            } else {
                format!("-----BEGIN CERTIFICATE-----\nPUBLIC {path}\n-----END CERTIFICATE-----\n")
            };
            (path.to_string(), SecretString::new(body))
        })
        .collect()
}

#[test]
fn the_shared_ca_set_is_placed_with_modes_and_redacted_diffs() {
    let t = kube_host();
    let host = t.host();
    let step = PlaceFiles::shared_ca(ca_set()).unwrap();
    let dry = step.run(&host, true);
    assert_eq!(dry.files.len(), 8);
    assert!(!t.exists("/etc/kubernetes/pki/ca.key"));

    let report = step.run(&host, false);
    assert_eq!(report.outcome, Outcome::Changed, "{report:#?}");
    assert_clean(&report, &["SECRET-KEY-OF", "PUBLIC /etc"]);
    assert_clean(&dry, &["SECRET-KEY-OF", "PUBLIC /etc"]);
    for (path, content) in ca_set() {
        assert_eq!(t.read(&path), content.expose());
        let mode = host.file_mode(&path).unwrap().unwrap();
        let want = if path.ends_with(".key") { 0o600 } else { 0o644 };
        assert_eq!(mode, want, "{path}");
    }
    assert_eq!(
        read_files(&host, &SHARED_CA_FILES).unwrap(),
        ca_set(),
        "what was placed reads back the same"
    );

    let again = step.run(&host, false);
    assert_eq!(again.outcome, Outcome::Unchanged, "{again:#?}");
    assert!(again.files.is_empty());

    t.write("/etc/kubernetes/pki/sa.key", "stale key\n");
    let plan = step.plan(&host).unwrap();
    assert_eq!(plan.files.len(), 1);
    assert_eq!(plan.files[0].path, "/etc/kubernetes/pki/sa.key");
    assert_eq!(
        plan.files[0].before.as_deref(),
        Some("<secret: 10 bytes, replaced>")
    );
    assert!(plan.notes[0].contains("replaces the different content"));
    let fixed = step.run(&host, false);
    assert_eq!(fixed.outcome, Outcome::Changed);
    assert_eq!(fixed.message, "placed /etc/kubernetes/pki/sa.key");
    assert!(t.calls().is_empty(), "placing files runs no command");
}

#[test]
fn placed_files_are_validated() {
    let file = |path: &str, mode| vec![(path.to_string(), SecretBytes::new("x"), mode)];
    assert!(PlaceFiles::new(file("etc/x", 0o600)).is_err());
    assert!(PlaceFiles::new(file("/etc/../x", 0o600)).is_err());
    assert!(PlaceFiles::new(file("/etc/x", 0o4755)).is_err());
    let mut twice = file("/etc/x", 0o600);
    twice.extend(file("/etc/x", 0o644));
    assert!(PlaceFiles::new(twice).is_err());
}

#[test]
fn placed_files_are_written_byte_for_byte() {
    let t = kube_host();
    let host = t.host();
    // Every byte value, including sequences that are not UTF-8, as a DER
    // key or any binary file has them.
    let binary: Vec<u8> = (0..=255u8).chain([0xff, 0xfe, 0x00, 0xc3]).collect();
    let path = "/etc/kubernetes/pki/etcd-client.der";
    let step =
        PlaceFiles::new(vec![(path.into(), SecretBytes::new(binary.clone()), 0o600)]).unwrap();
    let report = step.run(&host, false);
    assert_eq!(report.outcome, Outcome::Changed, "{report:#?}");
    assert_eq!(t.read_bytes(path), binary);
    assert_eq!(report.files[0].after, "<secret: 260 bytes, 0600>");
    let again = step.run(&host, false);
    assert_eq!(
        again.outcome,
        Outcome::Unchanged,
        "binary content compares equal: {again:#?}"
    );
}

/// A symbolic link at any component of a placed path is refused, in the
/// plan and in the write, and nothing lands where it points.
#[test]
fn placed_files_never_follow_a_symlink() {
    let t = kube_host();
    let host = t.host();
    let outside = tempfile::tempdir().unwrap();
    let key = || SecretBytes::new("-----BEGIN PRIVATE KEY-----\nK\n");
    let place = |path: &str| PlaceFiles::new(vec![(path.into(), key(), 0o600)]).unwrap();

    // A directory of the path is a link out of the host root.
    std::fs::create_dir_all(t.root().join("etc/kubernetes")).unwrap();
    std::os::unix::fs::symlink(outside.path(), t.root().join("etc/kubernetes/pki")).unwrap();
    let step = place("/etc/kubernetes/pki/ca.key");
    let err = step.plan(&host).unwrap_err().to_string();
    assert!(
        err.contains("`/etc/kubernetes/pki` is a symbolic link"),
        "{err}"
    );
    let report = step.run(&host, false);
    assert_eq!(report.outcome, Outcome::Failed, "{report:#?}");
    // Even a plan made before the link appeared does not write through it.
    std::fs::remove_file(t.root().join("etc/kubernetes/pki")).unwrap();
    let plan = step.plan(&host).unwrap();
    std::os::unix::fs::symlink(outside.path(), t.root().join("etc/kubernetes/pki")).unwrap();
    let report = step.apply(&host, &plan);
    assert_eq!(report.outcome, Outcome::Failed, "{report:#?}");
    assert!(
        report
            .error
            .as_deref()
            .unwrap_or("")
            .contains("symbolic link"),
        "{report:#?}"
    );
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        0,
        "nothing was written outside the root"
    );

    // The file itself is a link: its target is neither read nor replaced.
    std::fs::remove_file(t.root().join("etc/kubernetes/pki")).unwrap();
    std::fs::create_dir_all(t.root().join("etc/kubernetes/pki")).unwrap();
    let target = outside.path().join("victim");
    std::fs::write(&target, "precious\n").unwrap();
    std::os::unix::fs::symlink(&target, t.root().join("etc/kubernetes/pki/sa.key")).unwrap();
    let step = place("/etc/kubernetes/pki/sa.key");
    let err = step.plan(&host).unwrap_err().to_string();
    assert!(
        err.contains("`/etc/kubernetes/pki/sa.key` is a symbolic link"),
        "{err}"
    );
    assert_eq!(step.run(&host, false).outcome, Outcome::Failed);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
}

#[test]
fn reading_files_names_what_is_missing() {
    let t = kube_host();
    let host = t.host();
    let err = read_files(&host, &SHARED_CA_FILES).unwrap_err().to_string();
    assert!(err.contains("/etc/kubernetes/pki/ca.crt"), "{err}");
    let err = read_admin_conf(&host).unwrap_err().to_string();
    assert!(err.contains(ADMIN_CONF), "{err}");
    t.write(
        ADMIN_CONF,
        "apiVersion: v1\nusers:\n- user:\n    client-key-data: S3CR3T\n",
    );
    let conf = read_admin_conf(&host).unwrap();
    assert!(conf.expose().contains("S3CR3T"));
    assert_eq!(format!("{conf:?}"), "<redacted>");
    assert!(node_state(&host).unwrap().admin_conf);
}

#[test]
fn a_missing_kubeadm_fails_with_the_search_path() {
    let t = TestHost::new();
    let host = t.isolated_host(&["sh"]);
    let report = KubeadmReset.run(&host, false);
    assert_eq!(
        report.outcome,
        Outcome::Unchanged,
        "nothing to reset needs no kubeadm"
    );
    t.write(KUBELET_CONF, "apiVersion: v1\n");
    let report = KubeadmReset.run(&host, false);
    assert_eq!(report.outcome, Outcome::Failed);
    let error = report.error.unwrap();
    assert!(
        error.contains("command `kubeadm` not found in search path"),
        "{error}"
    );
    assert_eq!(report.failure, Some(FailureKind::CommandNotFound));
}

#[test]
fn plans_from_other_steps_or_other_inputs_are_refused() {
    let t = kube_host();
    let host = t.host();
    let reset_plan = {
        t.write(KUBELET_CONF, "x");
        KubeadmReset.plan(&host).unwrap()
    };
    let report = init_step().apply(&host, &reset_plan);
    assert_eq!(report.outcome, Outcome::Failed);
    assert!(report.error.unwrap().contains("bug in the caller"));

    let mut plan = TokenDelete::new("abcdef").unwrap().plan(&host).unwrap();
    plan.commands[0][3] = "ghijkl".to_string();
    let report = TokenDelete::new("abcdef").unwrap().apply(&host, &plan);
    assert_eq!(report.outcome, Outcome::Failed);
    assert!(report.error.unwrap().contains("unexpected command"));
    assert!(t.calls().is_empty());
}

#[test]
fn configs_left_by_a_killed_step_are_removed_and_nothing_else() {
    let t = kube_host();
    let host = t.host();
    assert_eq!(
        remove_leftover_configs(&host).unwrap(),
        Vec::<String>::new()
    );
    for path in STEP_CONFIG_FILES {
        t.write(path, &init_config());
    }
    t.write("/var/lib/kh-agent/.kubeadm-join.yaml.kh-tmp-77-3", "half");
    // The agent's own identity may live in the same directory on a host.
    t.write("/var/lib/kh-agent/node.key", "identity");
    t.write("/var/lib/kh-agent/apply-cni.yaml", "kind: List\n");
    let mut removed = remove_leftover_configs(&host).unwrap();
    removed.sort();
    let mut want: Vec<String> = STEP_CONFIG_FILES.iter().map(|p| p.to_string()).collect();
    want.push("/var/lib/kh-agent/.kubeadm-join.yaml.kh-tmp-77-3".to_string());
    want.sort();
    assert_eq!(removed, want);
    assert!(t.exists("/var/lib/kh-agent/node.key"));
    assert!(t.exists("/var/lib/kh-agent/apply-cni.yaml"));
}
