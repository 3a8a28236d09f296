//! The upgrade's agent side end to end: a cluster rolled out by kh at
//! v1.31.4 (two control planes on apt hosts, a worker on a dnf host), then
//! every upgrade step and read RPC called on the agents over real mTLS with
//! the coordinator's own certificate, the way the coordinator calls them:
//! package versions (another minor's repository asked without touching the
//! host's source), the source and the packages moved to v1.32, `kubeadm
//! upgrade plan/apply/node`, a drain blocked by a PodDisruptionBudget, the
//! kubelet restarted at its new version, and uncordon.

use std::time::Duration;

use kh::khconfig::KhConfig;
use kh::proto::agent_client::AgentClient;
use kh::proto::run_step_request::Step;
use kh::proto::{self, FailureKind, Outcome};
use kh::tls::ClientCreds;
use kh_testbed::doubles::packages::{self, Family};
use kh_testbed::spec::{cluster_yaml, SpecNode};
use kh_testbed::world::{AgentProc, World};

/// A Kubernetes host whose kubeadm, kubelet and kubectl are `version` from
/// the official repository of its minor (held), enrolled and running.
fn seeded_node(w: &mut World, name: &str, family: Family, version: &str) -> usize {
    let idx = w.declare_kube_host(name);
    w.agents[idx].seed_packages(family, version, true);
    w.agents[idx].start_kubelet();
    let (tok, hash, addr) = w.token(name, &[]);
    w.enroll(idx, &tok, &hash, &addr, &[])
        .expect_ok(&format!("enroll {name}"));
    w.agents[idx].start();
    w.wait_health(name, "Ready", Duration::from_secs(30));
    idx
}

/// Calls agents as the coordinator: its serving certificate and key from
/// its store (the coordinator is stopped, since sled locks the store).
struct AsCoordinator {
    rt: tokio::runtime::Runtime,
    creds: ClientCreds,
}

impl AsCoordinator {
    fn new(w: &mut World) -> Self {
        let ca = KhConfig::load(&w.coordinator.admin).unwrap().ca;
        w.coordinator.kill9();
        let db = kh_coordinator::store::Db::open_dir(&w.coordinator.data_dir).unwrap();
        let rec: serde_json::Value = db.get_json("coordinator/serving").unwrap().unwrap();
        let key = db.get_secret("coordinator/serving-key").unwrap().unwrap();
        Self {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            creds: ClientCreds {
                ca_pem: ca,
                cert_pem: rec["cert_pem"].as_str().unwrap().to_string(),
                key_pem: key,
            },
        }
    }

    /// Another caller with the same certificate and its own runtime, for a
    /// call made from another thread.
    fn another(&self) -> Self {
        Self {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            creds: self.creds.clone(),
        }
    }

    fn client(&self, a: &AgentProc) -> AgentClient<tonic::transport::Channel> {
        let _guard = self.rt.enter();
        let ch = kh::tls::channel(
            &a.grpc.to_string(),
            &format!("{}.node.kh", a.name),
            Some(&self.creds),
            &self.creds.ca_pem,
        )
        .unwrap();
        AgentClient::new(ch)
    }

    fn step(&self, a: &AgentProc, step: Step) -> proto::StepReport {
        self.run(a, step, false)
    }

    fn run(&self, a: &AgentProc, step: Step, dry_run: bool) -> proto::StepReport {
        let mut c = self.client(a);
        self.rt
            .block_on(c.run_step(proto::RunStepRequest {
                step: Some(step),
                dry_run,
            }))
            .unwrap_or_else(|e| panic!("RunStep on {}: {e}", a.name))
            .into_inner()
    }

    fn versions(&self, a: &AgentProc, minor: &str) -> proto::PackageVersionsResponse {
        let mut c = self.client(a);
        self.rt
            .block_on(c.package_versions(proto::PackageVersionsRequest {
                minor: minor.into(),
            }))
            .unwrap_or_else(|e| panic!("PackageVersions on {}: {e}", a.name))
            .into_inner()
    }

    fn facts(&self, a: &AgentProc) -> proto::Facts {
        let mut c = self.client(a);
        self.rt
            .block_on(c.get_facts(proto::GetFactsRequest {}))
            .unwrap()
            .into_inner()
    }

    fn nodes(&self, a: &AgentProc) -> Vec<proto::KubeNode> {
        let mut c = self.client(a);
        self.rt
            .block_on(c.kube_nodes(proto::KubeNodesRequest {}))
            .unwrap()
            .into_inner()
            .nodes
    }

    fn apiserver(&self, a: &AgentProc) -> proto::ApiserverReadyResponse {
        let mut c = self.client(a);
        self.rt
            .block_on(c.apiserver_ready(proto::ApiserverReadyRequest {
                url: format!("https://{}:6443", a.ip),
            }))
            .unwrap()
            .into_inner()
    }
}

fn outcome(r: &proto::StepReport) -> Outcome {
    Outcome::try_from(r.outcome).unwrap()
}

#[track_caller]
fn expect(r: &proto::StepReport, want: Outcome) {
    assert_eq!(outcome(r), want, "{} {}: {}", r.step, r.message, r.error);
}

fn source(minor: &str) -> Step {
    Step::PackageSource(proto::PackageSource {
        minor: minor.into(),
    })
}

fn install(packages: &[&str], version: &str) -> Step {
    Step::PackageInstall(proto::PackageInstall {
        packages: packages.iter().map(|p| p.to_string()).collect(),
        version: version.into(),
    })
}

fn installed(v: &proto::PackageVersionsResponse) -> Vec<(String, String, bool)> {
    v.installed
        .iter()
        .map(|p| (p.name.clone(), p.version.clone(), p.held))
        .collect()
}

fn all_at(version: &str, held: bool) -> Vec<(String, String, bool)> {
    ["kubeadm", "kubelet", "kubectl"]
        .iter()
        .map(|p| (p.to_string(), version.to_string(), held))
        .collect()
}

fn node<'a>(nodes: &'a [proto::KubeNode], name: &str) -> &'a proto::KubeNode {
    nodes.iter().find(|n| n.name == name).unwrap()
}

#[test]
fn the_upgrade_steps_move_a_cluster_from_v1_31_to_v1_32() {
    let mut w = World::new(&[]);
    w.seed_default_package_repos();
    let cp1 = seeded_node(&mut w, "cp-1", Family::Apt, "v1.31.4");
    let cp2 = seeded_node(&mut w, "cp-2", Family::Apt, "v1.31.4");
    let w1 = seeded_node(&mut w, "w-1", Family::Dnf, "v1.31.4");
    let nodes: Vec<SpecNode> = [
        (cp1, "control-plane"),
        (cp2, "control-plane"),
        (w1, "worker"),
    ]
    .iter()
    .map(|(i, role)| SpecNode {
        name: w.agents[*i].name.clone(),
        role: role.to_string(),
        ip: w.agents[*i].ip.to_string(),
    })
    .collect();
    let yaml = cluster_yaml("upgrade", &nodes, "")
        .replace("kubernetesVersion: v1.32.0", "kubernetesVersion: v1.31.4");
    let spec = kh_testbed::spec::write(w.dir(), "cluster.yaml", &yaml).unwrap();
    // Two control planes: enough for apply on one and node on the other.
    w.khctl(&["rollout", "-f", spec.to_str().unwrap(), "--allow-even"])
        .expect_ok("rollout at v1.31.4");
    let kh = AsCoordinator::new(&mut w);
    let (cp1, cp2, w1) = (&w.agents[cp1], &w.agents[cp2], &w.agents[w1]);
    let apt_source = std::fs::read_to_string(cp1.path(packages::APT_SOURCE)).unwrap();

    // Facts name the package manager each host's source file calls for.
    assert_eq!(kh.facts(cp1).package_manager, "apt");
    assert_eq!(kh.facts(w1).package_manager, "dnf");

    // What the hosts have, and what the next minor offers, without
    // touching their sources.
    let v = kh.versions(cp1, "v1.32");
    assert_eq!(v.manager, "apt");
    assert_eq!(installed(&v), all_at("v1.31.4", true));
    assert_eq!(v.source_minor, "v1.31");
    assert_eq!(v.available, ["v1.32.4", "v1.32.2", "v1.32.0"]);
    assert_eq!(v.error, "");
    assert_eq!(
        std::fs::read_to_string(cp1.path(packages::APT_SOURCE)).unwrap(),
        apt_source
    );
    let v = kh.versions(cp1, "");
    assert_eq!(v.available, ["v1.31.6", "v1.31.4", "v1.31.0"]);
    let v = kh.versions(cp1, "v1.39");
    assert!(v.available.is_empty());
    assert!(
        v.error.contains("v1.39 repository could not be read") && v.error.contains("Release file"),
        "{}",
        v.error
    );
    let v = kh.versions(w1, "v1.32");
    assert_eq!(v.manager, "dnf");
    assert_eq!(installed(&v), all_at("v1.31.4", true));
    assert_eq!(v.source_minor, "v1.31");
    assert_eq!(v.available, ["v1.32.4", "v1.32.2", "v1.32.0"]);

    // The first control plane: source, kubeadm, plan, apply.
    let dry = kh.run(cp1, source("v1.32"), true);
    assert!(dry.dry_run);
    expect(&dry, Outcome::Changed);
    assert_eq!(
        std::fs::read_to_string(cp1.path(packages::APT_SOURCE)).unwrap(),
        apt_source
    );
    // A minor nobody serves: refused, the source put back and refreshed.
    let r = kh.step(cp1, source("v1.39"));
    expect(&r, Outcome::Failed);
    assert!(
        r.error.contains("The v1.39 repository could not be read")
            && r.error
                .contains("was put back as it was and its lists refreshed"),
        "{}",
        r.error
    );
    assert_eq!(
        std::fs::read_to_string(cp1.path(packages::APT_SOURCE)).unwrap(),
        apt_source
    );
    let r = kh.step(cp1, source("v1.31"));
    expect(&r, Outcome::Unchanged);
    assert!(r.commands.is_empty(), "{r:?}");

    let r = kh.step(cp1, source("v1.32"));
    expect(&r, Outcome::Changed);
    assert_eq!(
        std::fs::read_to_string(cp1.path(packages::APT_SOURCE)).unwrap(),
        apt_source.replace("/v1.31/", "/v1.32/")
    );
    assert!(
        r.commands.iter().any(|c| c.argv == ["apt-get", "update"]),
        "{r:?}"
    );
    expect(&kh.step(cp1, source("v1.32")), Outcome::Unchanged);

    let r = kh.step(cp1, install(&["kubeadm"], "v1.32.9"));
    expect(&r, Outcome::Failed);
    for part in [
        "v1.32.9",
        "v1.32 package repository",
        "apt-cache madison kubeadm",
        "E: Version '1.32.9-*' for 'kubeadm' was not found",
    ] {
        assert!(r.error.contains(part), "{part}: {}", r.error);
    }
    // The failed install left the packages held.
    assert_eq!(installed(&kh.versions(cp1, "")), all_at("v1.31.4", true));

    expect(
        &kh.step(cp1, install(&["kubeadm"], "v1.32.4")),
        Outcome::Changed,
    );
    expect(
        &kh.step(cp1, install(&["kubeadm"], "v1.32.4")),
        Outcome::Unchanged,
    );
    let v = kh.versions(cp1, "");
    assert_eq!(v.installed[0].name, "kubeadm");
    assert_eq!(
        (v.installed[0].version.as_str(), v.installed[0].held),
        ("v1.32.4", true)
    );
    assert_eq!(v.source_minor, "v1.32");

    let plan = Step::KubeadmUpgradePlan(proto::KubeadmUpgradePlan {
        version: "v1.32.4".into(),
    });
    let r = kh.step(cp1, plan.clone());
    expect(&r, Outcome::Unchanged);
    for row in [
        "kubelet\tcp-1\tv1.31.4\tv1.32.4",
        "kubelet\tw-1\tv1.31.4\tv1.32.4",
        "kube-apiserver\tcp-1\tv1.31.4\tv1.32.4",
        "kube-apiserver\tcp-2\tv1.31.4\tv1.32.4",
    ] {
        assert!(r.notes.iter().any(|n| n == row), "{row:?} in {:?}", r.notes);
    }
    let r = kh.step(
        cp1,
        Step::KubeadmUpgradePlan(proto::KubeadmUpgradePlan {
            version: "v1.33.0".into(),
        }),
    );
    expect(&r, Outcome::Failed);
    assert!(r.error.contains("too high"), "{}", r.error);

    let apply = Step::KubeadmUpgradeApply(proto::KubeadmUpgradeApply {
        version: "v1.32.4".into(),
    });
    expect(&kh.step(cp1, apply.clone()), Outcome::Changed);
    expect(&kh.step(cp1, apply), Outcome::Unchanged);
    let ready = kh.apiserver(cp1);
    assert!(ready.ready, "{}", ready.detail);
    assert_eq!(ready.version, "v1.32.4");

    // Lists that are not the source's minor's are refreshed, and the file
    // is unchanged.
    std::fs::remove_dir_all(cp2.path(packages::APT_LISTS)).unwrap();
    let dry = kh.run(cp2, source("v1.31"), true);
    expect(&dry, Outcome::Unchanged);
    assert!(
        dry.message.contains("would run `apt-get update`"),
        "{}",
        dry.message
    );
    let r = kh.step(cp2, source("v1.31"));
    expect(&r, Outcome::Unchanged);
    assert_eq!(r.commands.len(), 1, "{r:?}");
    let r = kh.step(cp2, source("v1.31"));
    expect(&r, Outcome::Unchanged);
    assert!(r.commands.is_empty(), "{r:?}");

    // The other control plane: upgrade node, then at the version.
    expect(&kh.step(cp2, source("v1.32")), Outcome::Changed);
    expect(
        &kh.step(cp2, install(&["kubeadm"], "v1.32.4")),
        Outcome::Changed,
    );
    let node_step = Step::KubeadmUpgradeNode(proto::KubeadmUpgradeNode {
        version: "v1.32.4".into(),
    });
    expect(&kh.step(cp2, node_step.clone()), Outcome::Changed);
    expect(&kh.step(cp2, node_step.clone()), Outcome::Unchanged);
    assert_eq!(kh.apiserver(cp2).version, "v1.32.4");

    // The dnf worker: the repo file keeps its exclude= line (the hold).
    expect(&kh.step(w1, source("v1.32")), Outcome::Changed);
    let repo = std::fs::read_to_string(w1.path(packages::YUM_REPO)).unwrap();
    assert_eq!(repo, packages::yum_repo("v1.32", true));
    expect(&kh.step(w1, source("v1.32")), Outcome::Unchanged);
    let r = kh.step(w1, install(&["kubeadm"], "v1.32.9"));
    expect(&r, Outcome::Failed);
    assert!(
        r.error
            .contains("dnf list --showduplicates --disableexcludes=kubernetes kubeadm")
            && r.error.contains("Unable to find a match"),
        "{}",
        r.error
    );
    expect(
        &kh.step(w1, install(&["kubeadm"], "v1.32.4")),
        Outcome::Changed,
    );
    expect(
        &kh.step(w1, install(&["kubeadm"], "v1.32.4")),
        Outcome::Unchanged,
    );
    let r = kh.step(w1, node_step.clone());
    expect(&r, Outcome::Changed);
    expect(&kh.step(w1, node_step), Outcome::Changed);

    // A drain blocked by a PodDisruptionBudget names the pod and leaves the
    // node cordoned; relaxed, the drain passes.
    let objects = w.dir().join("objects.yaml");
    let pdb = |min: u32| {
        format!("apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {{name: web, namespace: default}}\nspec: {{minAvailable: {min}, selector: {{matchLabels: {{app: web}}}}}}\n")
    };
    std::fs::write(
        &objects,
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: web-0, namespace: default, labels: {{app: web}}}}\nspec: {{nodeName: w-1}}\n---\n{}", pdb(1)),
    )
    .unwrap();
    cp1.kubectl(&["apply", "-f", objects.to_str().unwrap()])
        .expect_ok("a pod and its budget");
    let drain = Step::KubectlDrain(proto::KubectlDrain {
        node: "w-1".into(),
        timeout_seconds: 1,
    });
    let r = kh.step(cp1, drain.clone());
    expect(&r, Outcome::Failed);
    assert_eq!(r.failure_kind(), FailureKind::DrainBlocked);
    assert_eq!(r.notes, ["default/web-0"]);
    assert!(
        r.error.starts_with("drain of w-1 is blocked: evicting default/web-0 would violate its PodDisruptionBudget; the node stays cordoned. Relax the budget (minAvailable) or move the workload, then re-run"),
        "{}",
        r.error
    );
    assert!(node(&kh.nodes(cp1), "w-1").unschedulable);
    std::fs::write(&objects, pdb(0)).unwrap();
    cp1.kubectl(&["apply", "-f", objects.to_str().unwrap()])
        .expect_ok("relax the budget");
    let r = kh.step(cp1, drain.clone());
    expect(&r, Outcome::Changed);
    assert!(r.notes.is_empty(), "{:?}", r.notes);
    expect(&kh.step(cp1, drain), Outcome::Unchanged);
    expect(
        &kh.step(
            cp1,
            Step::KubectlUncordon(proto::KubectlUncordon { node: "w-1".into() }),
        ),
        Outcome::Changed,
    );

    // A drain changes the cluster, not the host: while one waits on a
    // budget, the same agent still takes host steps. (Were the drain to
    // hold the host-step turn, the step below would wait for the drain,
    // which ends only once the budget is relaxed after it.)
    std::fs::write(
        &objects,
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: web-1, namespace: default, labels: {{app: web}}}}\nspec: {{nodeName: w-1}}\n---\n{}", pdb(1)),
    )
    .unwrap();
    cp1.kubectl(&["apply", "-f", objects.to_str().unwrap()])
        .expect_ok("another pod under the budget");
    let beside = kh.another();
    std::thread::scope(|s| {
        let long = s.spawn(|| {
            beside.step(
                cp1,
                Step::KubectlDrain(proto::KubectlDrain {
                    node: "w-1".into(),
                    timeout_seconds: 120,
                }),
            )
        });
        kh_testbed::eventually("w-1 cordoned by the drain", Duration::from_secs(30), || {
            if node(&kh.nodes(cp1), "w-1").unschedulable {
                Ok(())
            } else {
                Err("schedulable".to_string())
            }
        });
        let r = kh.step(
            cp1,
            Step::KubeadmUpgradeApply(proto::KubeadmUpgradeApply {
                version: "v1.32.4".into(),
            }),
        );
        expect(&r, Outcome::Unchanged);
        assert!(
            !long.is_finished(),
            "the drain ended before its budget was relaxed"
        );
        std::fs::write(&objects, pdb(0)).unwrap();
        cp1.kubectl(&["apply", "-f", objects.to_str().unwrap()])
            .expect_ok("relax the budget again");
        let r = long.join().unwrap();
        expect(&r, Outcome::Changed);
    });

    // The kubelet at the new version once restarted; then uncordoned.
    expect(
        &kh.step(w1, install(&["kubelet", "kubectl"], "v1.32.4")),
        Outcome::Changed,
    );
    let r = kh.step(w1, Step::RestartKubelet(proto::RestartKubelet {}));
    expect(&r, Outcome::Changed);
    assert!(r.message.contains("kubelet v1.32.4"), "{}", r.message);
    let nodes = kh.nodes(cp1);
    assert_eq!(node(&nodes, "w-1").kubelet_version, "v1.32.4");
    assert_eq!(node(&nodes, "cp-1").kubelet_version, "v1.31.4");
    let uncordon = Step::KubectlUncordon(proto::KubectlUncordon { node: "w-1".into() });
    expect(&kh.step(cp1, uncordon.clone()), Outcome::Changed);
    expect(&kh.step(cp1, uncordon), Outcome::Unchanged);
    assert!(!node(&kh.nodes(cp1), "w-1").unschedulable);
    assert_eq!(installed(&kh.versions(w1, "")), all_at("v1.32.4", true));

    // The call logs: one upgrade apply, on the first control plane.
    let count =
        |a: &AgentProc, what: &str| a.calls().iter().filter(|c| c.starts_with(what)).count();
    assert_eq!(count(cp1, "kubeadm upgrade apply v1.32.4 --yes"), 1);
    assert_eq!(count(cp2, "kubeadm upgrade node"), 1);
    assert_eq!(count(w1, "kubeadm upgrade node"), 2);
    assert_eq!(count(cp2, "kubeadm upgrade apply"), 0);
}
