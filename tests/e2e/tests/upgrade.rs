//! `khctl upgrade` end to end on the testbed: real agents and coordinator,
//! real etcd 3.4, the kubeadm/kubelet/kubectl and package-manager doubles.
//!
//! Two worlds keep the file lean. The first (3 control planes, 3 workers,
//! one of them a dnf host, v1.31.4) is refused a downgrade, a version its
//! repositories do not offer and an upgrade while a control plane's agent is
//! down, each before anything changes; then a dry run; then the upgrade to
//! v1.32.4 with the coordinator killed during the second control plane's
//! turn, resumed by the same command; then a re-run that changes nothing.
//! The second (1 control plane, 2 workers at v1.30.8) is refused a skipped
//! minor, then upgraded `--through` v1.31 to v1.32 with a drain that a
//! PodDisruptionBudget blocks until it is relaxed.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use kh_testbed::doubles::latency::Op;
use kh_testbed::doubles::packages::{self, Family};
use kh_testbed::eventually;
use kh_testbed::proc::Proc;
use kh_testbed::spec::{cluster_yaml, SpecNode};
use kh_testbed::world::{AgentProc, Out, World};

const FROM: &str = "v1.31.4";
const TARGET: &str = "v1.32.4";

/// A testbed cluster rolled out at one version, and its spec's pieces.
struct Cluster {
    w: World,
    nodes: Vec<SpecNode>,
    extra: String,
}

impl Cluster {
    /// Hosts `(name, role, family)` with kubeadm, kubelet and kubectl
    /// installed and held at `version` from the official per-minor
    /// repositories (v1.30..v1.33 served), rolled out at that version.
    fn build(hosts: &[(&str, &str, Family)], version: &str, extra: &str) -> Cluster {
        let mut w = World::new(&[]);
        w.seed_default_package_repos();
        let mut nodes = vec![];
        for (name, role, family) in hosts {
            let idx = w.declare_kube_host(name);
            // Before the agent starts: it reports its host's versions and
            // package manager from its first heartbeat.
            w.agents[idx].seed_packages(*family, version, true);
            w.agents[idx].start_kubelet();
            let (tok, hash, addr) = w.token(name, &[]);
            w.enroll(idx, &tok, &hash, &addr, &[])
                .expect_ok(&format!("enroll {name}"));
            w.agents[idx].start();
            w.wait_health(name, "Ready", Duration::from_secs(30));
            nodes.push(SpecNode {
                name: name.to_string(),
                role: role.to_string(),
                ip: w.agents[idx].ip.to_string(),
            });
        }
        let c = Cluster {
            w,
            nodes,
            extra: extra.to_string(),
        };
        let spec = c.spec(version);
        let out = c.w.khctl(&["rollout", "-f", &spec]);
        assert!(
            out.ok(),
            "rollout at {version}:\n{}\n{}",
            out.stdout,
            out.stderr
        );
        c
    }

    /// The spec at `version`, written as `cluster-<version>.yaml`; its path.
    fn spec(&self, version: &str) -> String {
        let yaml = cluster_yaml("e2e", &self.nodes, &self.extra).replace(
            "kubernetesVersion: v1.32.0",
            &format!("kubernetesVersion: {version}"),
        );
        assert!(yaml.contains(version), "{yaml}");
        kh_testbed::spec::write(self.w.dir(), &format!("cluster-{version}.yaml"), &yaml)
            .unwrap()
            .display()
            .to_string()
    }

    fn upgrade(&self, version: &str, flags: &[&str]) -> Out {
        let spec = self.spec(version);
        let mut args = vec!["upgrade", "-f", spec.as_str()];
        args.extend_from_slice(flags);
        self.w.khctl(&args)
    }

    fn host(&self, name: &str) -> &AgentProc {
        self.w
            .agents
            .iter()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// What every host looks like where an upgrade would change it.
    fn state(&self) -> BTreeMap<String, HostState> {
        self.w
            .agents
            .iter()
            .map(|a| (a.name.clone(), HostState::of(a)))
            .collect()
    }

    /// Nodes as `kubectl get nodes -o json` on the first control plane
    /// shows them: name -> (kubelet version, cordoned).
    fn kube_nodes(&self) -> BTreeMap<String, (String, bool)> {
        let out = self.w.agents[0]
            .kubectl(&["get", "nodes", "-o", "json"])
            .expect_ok("kubectl get nodes");
        json(&out)["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|n| {
                (
                    n["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    (
                        n["status"]["nodeInfo"]["kubeletVersion"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        n["spec"]["unschedulable"].as_bool().unwrap_or(false),
                    ),
                )
            })
            .collect()
    }

    /// The audit log, oldest first.
    fn history(&self) -> Vec<serde_json::Value> {
        self.w.khctl_json(&["history", "--limit", "10000"])["entries"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Spawns `khctl upgrade` in the background (to kill the coordinator
    /// under it).
    fn spawn_upgrade(&self, version: &str, log: &str) -> Proc {
        let spec = self.spec(version);
        let mut cmd = Command::new(kh_testbed::bin("khctl"));
        cmd.arg("--config")
            .arg(&self.w.coordinator.admin)
            .args(["upgrade", "-f", &spec]);
        Proc::spawn("khctl upgrade", cmd, &self.w.dir().join(log))
    }

    /// Asserts the upgrade finished at `version`: every kubelet at it and
    /// schedulable, every apiserver reporting it, every host's packages at
    /// it, held, from the version's minor repository.
    fn assert_upgraded(&self, version: &str) {
        let nodes = self.kube_nodes();
        assert_eq!(nodes.len(), self.nodes.len(), "{nodes:?}");
        for (name, (kubelet, cordoned)) in &nodes {
            assert_eq!(kubelet, version, "{name}'s kubelet: {nodes:?}");
            assert!(!cordoned, "{name} is left cordoned: {nodes:?}");
        }
        for n in self.nodes.iter().filter(|n| n.role == "control-plane") {
            let a = self.host(&n.name);
            let (code, body) = a.apiserver_get("/version").unwrap();
            assert_eq!(code, 200, "{}: {body}", n.name);
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["gitVersion"], version, "{}'s apiserver: {body}", n.name);
        }
        let minor = minor_of(version);
        for a in &self.w.agents {
            let s = HostState::of(a);
            let db: packages::Db = serde_json::from_str(&s.packages).unwrap();
            for p in packages::KUBE_PACKAGES {
                assert_eq!(
                    db.installed.get(*p).map(String::as_str),
                    Some(version.trim_start_matches('v')),
                    "{}: {p} in {}",
                    a.name,
                    s.packages
                );
            }
            assert_eq!(
                packages::source_minor(&s.source).as_deref(),
                Some(minor.as_str()),
                "{}'s source: {}",
                a.name,
                s.source
            );
            if s.source.contains("[kubernetes]") {
                // dnf: the repo's exclude= line is the hold.
                assert!(
                    s.source
                        .contains("exclude=kubelet kubeadm kubectl cri-tools kubernetes-cni"),
                    "{}: {}",
                    a.name,
                    s.source
                );
            } else {
                let held: Vec<&str> = db.held.iter().map(String::as_str).collect();
                assert_eq!(held, ["kubeadm", "kubectl", "kubelet"], "{}", a.name);
            }
        }
    }
}

/// Where an upgrade leaves its marks on a host: the calls that changed
/// something, the package database, the Kubernetes package source.
#[derive(Debug, Clone, PartialEq)]
struct HostState {
    changes: Vec<String>,
    packages: String,
    source: String,
}

impl HostState {
    fn of(a: &AgentProc) -> HostState {
        let source = [packages::APT_SOURCE, packages::YUM_REPO]
            .iter()
            .filter_map(|p| std::fs::read_to_string(a.path(p)).ok())
            .collect::<Vec<_>>()
            .join("");
        HostState {
            changes: a.calls().into_iter().filter(|c| !read_only(c)).collect(),
            packages: std::fs::read_to_string(a.node_dir().join(packages::PACKAGES_FILE))
                .unwrap_or_default(),
            source,
        }
    }
}

/// Whether a recorded call only reads: version probes, `kubectl get`,
/// package queries, the private-lists repository probe of PackageVersions,
/// `kubeadm upgrade plan` and certificate checks.
fn read_only(call: &str) -> bool {
    let w: Vec<&str> = call.split_whitespace().collect();
    // kubectl's subcommand is the first word that is neither a flag nor a
    // flag's value (`--kubeconfig F`).
    let kubectl_verb = || {
        let mut it = w.iter().skip(1);
        while let Some(x) = it.next() {
            if *x == "--kubeconfig" {
                it.next();
            } else if !x.starts_with('-') {
                return *x;
            }
        }
        ""
    };
    match w.as_slice() {
        ["kubeadm", "version", ..] => true,
        ["kubeadm", "upgrade", "plan", ..] => true,
        ["kubeadm", "certs", "check-expiration", ..] => true,
        ["kubeadm", "token", "list", ..] => true,
        ["kubelet", ..] => w.contains(&"--version"),
        ["kubectl", ..] => matches!(kubectl_verb(), "get" | "version"),
        ["systemctl", verb, ..] => matches!(*verb, "is-active" | "is-enabled" | "status" | "show"),
        ["apt-get", "update", ..] => call.contains("Dir::Etc::SourceList="),
        ["apt-mark", "showhold", ..] => true,
        ["apt-cache", ..] | ["dpkg-query", ..] | ["rpm", ..] => true,
        ["dnf", "list", ..] | ["dnf", "repoquery", ..] | ["dnf", "info", ..] => true,
        _ => false,
    }
}

fn json(out: &Out) -> serde_json::Value {
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}):\n{}\n{}", out.stdout, out.stderr))
}

fn minor_of(version: &str) -> String {
    let mut it = version.split('.');
    format!("{}.{}", it.next().unwrap(), it.next().unwrap())
}

/// `out` failed with exit code `code` and says every one of `texts`
/// (stdout and stderr together).
fn assert_exit(out: &Out, code: i32, texts: &[&str]) {
    let all = format!("{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.code, Some(code), "{all}");
    for t in texts {
        assert!(all.contains(t), "no {t:?} in:\n{all}");
    }
}

/// The calls of `a` whose words start with `prefix`'s.
fn calls_like(a: &AgentProc, prefix: &str) -> Vec<String> {
    a.calls()
        .into_iter()
        .filter(|c| c.starts_with(prefix))
        .collect()
}

/// `kubectl ... VERB NODE ...` calls for `node`, on every host (drains and
/// uncordons run on a control plane's agent, not necessarily the node's).
fn kubectl_verb_calls(w: &World, verb: &str, node: &str) -> usize {
    w.agents
        .iter()
        .flat_map(|a| a.calls())
        .filter(|c| {
            let words: Vec<&str> = c.split_whitespace().collect();
            words.first() == Some(&"kubectl")
                && words.windows(2).any(|p| p[0] == verb && p[1] == node)
        })
        .count()
}

/// Package installs that changed something on `a`, from the doubles'
/// timings log: (start ms, end ms), oldest first.
fn install_windows(a: &AgentProc) -> Vec<(u64, u64)> {
    let path = a
        .node_dir()
        .join(kh_testbed::doubles::latency::TIMINGS_FILE);
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|j| j["op"] == "package-install")
        .map(|j| {
            (
                j["startMs"].as_u64().unwrap_or(0),
                j["endMs"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// The package installs of one upgrade of `a` (kubeadm, then kubelet and
/// kubectl): the first start and the last end of installs `from..from+2`.
fn upgrade_window(a: &AgentProc, from: usize) -> (u64, u64) {
    let v = install_windows(a);
    assert!(
        v.len() >= from + 2,
        "{}: {} package installs, wanted {}: {v:?}",
        a.name,
        v.len(),
        from + 2
    );
    (v[from].0, v[from + 1].1)
}

/// Asserts the windows do not overlap, in the given order.
fn assert_in_order(what: &str, windows: &[(String, (u64, u64))]) {
    for pair in windows.windows(2) {
        assert!(
            pair[0].1 .1 <= pair[1].1 .0,
            "{what}: {} ({:?}) overlaps or follows {} ({:?}); all: {windows:?}",
            pair[0].0,
            pair[0].1,
            pair[1].0,
            pair[1].1
        );
    }
}

/// Every node-step the audit log records as done, at most once each.
fn assert_no_step_done_twice(history: &[serde_json::Value], operation: &str) {
    let mut done: BTreeMap<(String, String), usize> = BTreeMap::new();
    for e in history
        .iter()
        .filter(|e| {
            e["operation"]
                .as_str()
                .unwrap_or_default()
                .contains(operation)
        })
        .filter(|e| e["outcome"] == "done" && e["node"].as_str().is_some_and(|n| !n.is_empty()))
    {
        *done
            .entry((
                e["node"].as_str().unwrap_or_default().to_string(),
                e["step"].as_str().unwrap_or_default().to_string(),
            ))
            .or_default() += 1;
    }
    assert!(!done.is_empty(), "no node-step audited: {history:?}");
    let twice: Vec<_> = done.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "done more than once: {twice:?}");
}

#[test]
fn three_control_planes_and_three_workers_upgrade_a_minor_resuming_after_a_kill() {
    let hosts = [
        ("cp-1", "control-plane", Family::Apt),
        ("cp-2", "control-plane", Family::Apt),
        ("cp-3", "control-plane", Family::Apt),
        ("w-1", "worker", Family::Apt),
        ("w-2", "worker", Family::Apt),
        ("w-3", "worker", Family::Dnf),
    ];
    let mut c = Cluster::build(&hosts, FROM, "  upgrade: {maxUnavailable: 2}\n");
    let names = c.names();
    let untouched = c.state();

    // Refused before anything changes: a downgrade, a version the
    // repositories do not offer, a control plane whose agent is down.
    let out = c.upgrade("v1.31.0", &[]);
    assert_exit(
        &out,
        3,
        &[
            "a downgrade",
            "v1.31.0 is older than the cluster's v1.31.4",
            "runs v1.31.4 (its lowest kube-apiserver)",
            "nothing was changed",
        ],
    );
    let out = c.upgrade("v1.32.9", &[]);
    assert_exit(
        &out,
        3,
        &[
            "cp-1: its apt repository for v1.32 offers v1.32.4, v1.32.2, v1.32.0, not v1.32.9",
            "w-3: its dnf repository for v1.32 offers",
            "choose a version those repositories offer",
        ],
    );
    c.w.agent("cp-3").kill9();
    eventually(
        "cp-3 to be seen down",
        Duration::from_secs(30),
        || match c.w.node("cp-3") {
            Some(n) if n["health"] != "Ready" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let out = c.upgrade(TARGET, &[]);
    assert_exit(
        &out,
        3,
        &[
            "cluster-healthy: agents: not reporting: cp-3",
            "certificates: not checked on every node: cp-3",
            "nothing was changed",
        ],
    );
    assert!(!out.stdout.contains("renew them first"), "{}", out.stdout);
    c.w.agent("cp-3").start();
    c.w.wait_health("cp-3", "Ready", Duration::from_secs(30));
    assert_eq!(c.state(), untouched, "a refused upgrade changed a host");
    // The held spec is still at FROM: a rollout of it has nothing to refuse.
    let spec_from = c.spec(FROM);
    c.w.khctl(&["rollout", "-f", &spec_from, "--dry-run"])
        .expect_ok("a dry-run rollout of the unchanged spec");

    // The dry run prints the plan and changes nothing; -o json parses.
    let dry = c.upgrade(TARGET, &["--dry-run"]);
    assert!(dry.ok(), "{}\n{}", dry.stdout, dry.stderr);
    for n in &names {
        assert!(
            dry.stdout.contains(n.as_str()),
            "{n} not in the plan:\n{}",
            dry.stdout
        );
    }
    assert!(dry.stdout.contains(TARGET), "{}", dry.stdout);
    assert!(
        dry.stdout.contains("Dry run: nothing was changed."),
        "{}",
        dry.stdout
    );
    let dry = json(&c.upgrade(TARGET, &["--dry-run", "-o", "json"]));
    assert_eq!(
        (dry["ok"].clone(), dry["dryRun"].clone()),
        (true.into(), true.into()),
        "{dry}"
    );
    // The plan: cp-1 first with `upgrade apply`, the other control planes,
    // then the workers, each of them with `upgrade node`.
    let phases = dry["plan"]["phases"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no plan phases: {dry}"));
    let steps_in = |phase: &str| -> Vec<(String, String)> {
        phases
            .iter()
            .filter(|p| p["name"] == phase)
            .flat_map(|p| p["steps"].as_array().cloned().unwrap_or_default())
            .map(|s| {
                (
                    s["node"].as_str().unwrap_or_default().to_string(),
                    s["step"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    let kubeadm_steps = |phase: &str| -> Vec<(String, String)> {
        steps_in(phase)
            .into_iter()
            .filter(|(_, s)| {
                s.starts_with("kubeadm-upgrade-apply") || s.starts_with("kubeadm-upgrade-node")
            })
            .collect()
    };
    let at = |n: &str, s: &str| (n.to_string(), format!("{s}@{TARGET}"));
    assert_eq!(
        kubeadm_steps("upgrade-first-control-plane"),
        [at("cp-1", "kubeadm-upgrade-apply")],
        "{dry}"
    );
    assert_eq!(
        kubeadm_steps("upgrade-control-planes"),
        [
            at("cp-2", "kubeadm-upgrade-node"),
            at("cp-3", "kubeadm-upgrade-node")
        ],
        "{dry}"
    );
    assert_eq!(
        kubeadm_steps("upgrade-workers"),
        [
            at("w-1", "kubeadm-upgrade-node"),
            at("w-2", "kubeadm-upgrade-node"),
            at("w-3", "kubeadm-upgrade-node")
        ],
        "{dry}"
    );
    assert_eq!(c.state(), untouched, "the dry run changed a host");

    // The upgrade, with the coordinator killed during the second control
    // plane's turn: package installs that take a second give the window.
    c.w.set_double_latency(Op::PackageInstall, Duration::from_secs(1));
    let installs = |c: &Cluster| calls_like(c.host("cp-2"), "apt-get install").len();
    let mut khctl = c.spawn_upgrade(TARGET, "upgrade-killed.log");
    eventually(
        "cp-2's first package install",
        Duration::from_secs(120),
        || {
            if installs(&c) > 0 {
                Ok(())
            } else if !khctl.is_running() {
                panic!("khctl upgrade ended early:\n{}", khctl.log_text())
            } else {
                Err(khctl.log_text())
            }
        },
    );
    c.w.coordinator.kill9();
    c.w.set_double_latency(Op::PackageInstall, Duration::ZERO);
    eventually("khctl to end", Duration::from_secs(30), || {
        if khctl.is_running() {
            Err("running".to_string())
        } else {
            Ok(())
        }
    });
    assert_eq!(
        khctl.terminate(Duration::from_secs(1)),
        Some(5),
        "{}",
        khctl.log_text()
    );
    // Nothing of cp-3 or the workers was touched yet.
    for n in ["cp-3", "w-1", "w-2", "w-3"] {
        assert_eq!(
            c.state()[n],
            untouched[n],
            "{n} was changed before cp-2 finished"
        );
    }
    c.w.coordinator.start();
    let ops = c.w.khctl_json(&["operation", "status"]);
    let op = ops["operations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["pending"] == true)
        .cloned()
        .unwrap_or_else(|| panic!("no pending operation: {ops}"));
    assert!(
        op["next"]
            .as_str()
            .unwrap_or_default()
            .contains("khctl upgrade -f"),
        "{op}"
    );
    let status = c.w.khctl(&["upgrade", "status"]);
    assert!(
        status.stdout.contains("cp-2"),
        "{}\n{}",
        status.stdout,
        status.stderr
    );

    // The same command resumes and finishes it.
    let out = c.upgrade(TARGET, &[]);
    assert!(
        out.ok(),
        "{}\n{}\n{}",
        out.stdout,
        out.stderr,
        c.w.coordinator.log_text()
    );
    c.assert_upgraded(TARGET);

    // Exactly one `kubeadm upgrade apply`, on the first control plane;
    // `upgrade node` once on every other node; every node's packages
    // installed once (kubeadm, then kubelet and kubectl), drained once and
    // uncordoned once: nothing done before the kill ran again.
    let applies: Vec<usize> =
        c.w.agents
            .iter()
            .map(|a| calls_like(a, "kubeadm upgrade apply").len())
            .collect();
    assert_eq!(
        applies,
        [1, 0, 0, 0, 0, 0],
        "kubeadm upgrade apply per host"
    );
    assert_eq!(
        calls_like(c.host("cp-1"), "kubeadm upgrade apply"),
        [format!("kubeadm upgrade apply {TARGET} --yes")]
    );
    for n in &names {
        let a = c.host(n);
        let nodes = calls_like(a, "kubeadm upgrade node").len();
        assert_eq!(nodes, usize::from(n != "cp-1"), "{n}: {:?}", a.calls());
        let install = if n == "w-3" {
            "dnf install"
        } else {
            "apt-get install"
        };
        assert_eq!(calls_like(a, install).len(), 2, "{n}: {:?}", a.calls());
        assert_eq!(install_windows(a).len(), 2, "{n}");
        assert_eq!(kubectl_verb_calls(&c.w, "drain", n), 1, "{n} drains");
        assert_eq!(kubectl_verb_calls(&c.w, "uncordon", n), 1, "{n} uncordons");
    }
    assert_no_step_done_twice(&c.history(), "upgrade");

    // Control planes one at a time, then the workers in batches of
    // maxUnavailable (2): w-1 and w-2, then w-3.
    let window = |n: &str| (n.to_string(), upgrade_window(c.host(n), 0));
    assert_in_order(
        "control planes, then the workers",
        &[
            window("cp-1"),
            window("cp-2"),
            window("cp-3"),
            window("w-1"),
        ],
    );
    assert_in_order(
        "control planes, then the workers",
        &[window("cp-3"), window("w-2")],
    );
    assert_in_order("batch 1 before batch 2", &[window("w-1"), window("w-3")]);
    assert_in_order("batch 1 before batch 2", &[window("w-2"), window("w-3")]);

    // The held spec is the target now: a rollout of it is not refused.
    let spec_to = c.spec(TARGET);
    c.w.khctl(&["rollout", "-f", &spec_to, "--dry-run"])
        .expect_ok("a dry-run rollout of the upgraded spec");

    // Again, on the upgraded cluster: nothing to do, nothing changed.
    let upgraded = c.state();
    let again = c.upgrade(TARGET, &[]);
    assert!(again.ok(), "{}\n{}", again.stdout, again.stderr);
    assert!(
        again
            .stdout
            .contains("nothing to do: every node already runs v1.32.4"),
        "{}",
        again.stdout
    );
    assert_eq!(c.state(), upgraded, "a re-run changed a host");
}

#[test]
fn through_two_minors_with_a_drain_blocked_by_a_disruption_budget() {
    let hosts = [
        ("cp-1", "control-plane", Family::Apt),
        ("w-1", "worker", Family::Apt),
        ("w-2", "worker", Family::Apt),
    ];
    let c = Cluster::build(&hosts, "v1.30.8", "");
    let untouched = c.state();

    // v1.30 to v1.32 skips a minor: refused, with the way forward.
    let out = c.upgrade(TARGET, &[]);
    assert_exit(
        &out,
        3,
        &[
            "v1.32.4 skips a minor version: the cluster runs v1.30.8",
            "upgrade to v1.31.6 first",
            "pass --through",
        ],
    );
    assert_eq!(c.state(), untouched, "a refused upgrade changed a host");

    // A pod on w-1 whose budget allows no disruption.
    let cp = c.host("cp-1");
    let objects = c.w.dir().join("web.yaml");
    let budget = |min: u32| {
        format!("apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {{name: web, namespace: default}}\nspec: {{minAvailable: {min}, selector: {{matchLabels: {{app: web}}}}}}\n")
    };
    std::fs::write(
        &objects,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: web-0, namespace: default, labels: {{app: web}}}}\nspec: {{nodeName: w-1}}\n---\n{}",
            budget(1)
        ),
    )
    .unwrap();
    cp.kubectl(&["apply", "-f", objects.to_str().unwrap()])
        .expect_ok("apply a pod and its budget");

    // The chain stops at w-1's drain, naming the pod; w-1 stays cordoned
    // and nothing further is touched (w-2 not at all).
    let out = c.upgrade(TARGET, &["--through", "--drain-timeout", "2s"]);
    assert_exit(
        &out,
        4,
        &[
            "the drain of w-1 is blocked",
            "default/web-0",
            "w-1 stays cordoned",
            "relax or remove that PodDisruptionBudget",
        ],
    );
    assert_eq!(c.kube_nodes()["w-1"], ("v1.30.8".to_string(), true));
    assert_eq!(c.state()["w-2"], untouched["w-2"], "w-2 was touched");
    let w1 = packages::Db::load(&c.host("w-1").node_dir());
    assert_eq!(
        (
            w1.installed["kubeadm"].as_str(),
            w1.installed["kubelet"].as_str()
        ),
        ("1.31.6", "1.30.8"),
        "w-1 went on past its drain"
    );
    let w1_after_block = c.state()["w-1"].clone();

    // With the budget relaxed, the same command finishes both hops.
    std::fs::write(&objects, budget(0)).unwrap();
    cp.kubectl(&["apply", "-f", objects.to_str().unwrap()])
        .expect_ok("relax the budget");
    let out = c.upgrade(TARGET, &["--through", "--drain-timeout", "2s"]);
    assert!(
        out.ok(),
        "{}\n{}\n{}",
        out.stdout,
        out.stderr,
        c.w.coordinator.log_text()
    );
    c.assert_upgraded(TARGET);
    // web-0 was evicted (through cp-1's admin kubeconfig).
    let env = kh_testbed::kube::NodeEnv::new(&cp.root, &cp.node_dir(), None);
    let admin = kh_testbed::kube::kubeconfig::load(&env, &cp.path("/etc/kubernetes/admin.conf"))
        .unwrap()
        .client()
        .unwrap();
    let web = kh_testbed::doubles::client::get(&admin, "/api/v1/namespaces/default/pods/web-0");
    assert!(
        web.as_ref().is_err_and(|e| e.is_not_found()),
        "web-0 was not evicted: {web:?}"
    );

    // Two upgrades in order: v1.31.6 (the newest patch the v1.31
    // repository offers) everywhere, then v1.32.4.
    assert_eq!(
        calls_like(cp, "kubeadm upgrade apply"),
        [
            "kubeadm upgrade apply v1.31.6 --yes".to_string(),
            format!("kubeadm upgrade apply {TARGET} --yes")
        ]
    );
    for n in ["w-1", "w-2"] {
        let a = c.host(n);
        assert_eq!(
            calls_like(a, "kubeadm upgrade node").len(),
            2,
            "{n}: {:?}",
            a.calls()
        );
        assert_eq!(install_windows(a).len(), 4, "{n}");
    }
    // w-1's kubeadm upgrade node of the first hop ran before the block and
    // not again.
    let before: Vec<String> = w1_after_block
        .changes
        .iter()
        .filter(|l| l.starts_with("kubeadm upgrade node"))
        .cloned()
        .collect();
    assert_eq!(before.len(), 1, "{:?}", w1_after_block.changes);
    let hop1_end =
        c.w.agents
            .iter()
            .map(|a| upgrade_window(a, 0).1)
            .max()
            .unwrap();
    let hop2_start =
        c.w.agents
            .iter()
            .map(|a| upgrade_window(a, 2).0)
            .min()
            .unwrap();
    assert!(
        hop1_end <= hop2_start,
        "the hops overlap: {hop1_end} > {hop2_start}"
    );
    // Control plane, then the workers one at a time (maxUnavailable 1).
    let window = |n: &str, hop: usize| (n.to_string(), upgrade_window(c.host(n), hop * 2));
    for hop in [0, 1] {
        assert_in_order(
            &format!("hop {}", hop + 1),
            &[window("cp-1", hop), window("w-1", hop), window("w-2", hop)],
        );
    }
}
