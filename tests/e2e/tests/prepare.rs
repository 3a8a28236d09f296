//! `khctl prepare` and `khctl preflight` across real agents on testbed hosts:
//! the real containerd for `config default` / `config dump`, doubles for
//! systemctl, modprobe and swapoff.

use std::collections::BTreeMap;
use std::path::Path;

use kh_testbed::world::World;

fn spec(w: &World, nodes: &[(&str, &str)]) -> std::path::PathBuf {
    let mut yaml = String::from(
        "apiVersion: kh.io/v1alpha1\nkind: Cluster\nmetadata: {name: e2e}\nspec:\n  nodes:\n",
    );
    for (name, role) in nodes {
        let a = w
            .agents
            .iter()
            .find(|a| a.name == *name)
            .expect("declared agent");
        yaml.push_str(&format!(
            "    - {{name: {name}, role: {role}, address: {}}}\n",
            a.ip
        ));
    }
    let p = w.dir().join("cluster.yaml");
    std::fs::write(&p, yaml).unwrap();
    p
}

/// Every file under `root` with its bytes, to prove a dry run changed nothing.
fn snapshot(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().display().to_string(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

fn outcomes(v: &serde_json::Value, node: &str) -> Vec<String> {
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node)
        .unwrap()["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{}={}",
                s["step"].as_str().unwrap(),
                s["outcome"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn two_agents_are_prepared_then_unchanged() {
    let mut w = World::new(&[]);
    w.add_agent("cp-1");
    w.add_agent("w-1");
    let f = spec(&w, &[("cp-1", "control-plane"), ("w-1", "worker")]);
    let f = f.to_str().unwrap();

    // A dry run touches no byte, and says what it would do.
    let before: Vec<_> = w.agents.iter().map(|a| snapshot(&a.root)).collect();
    let v = w.khctl_json(&["prepare", "-f", f, "--dry-run"]);
    assert_eq!(v["dryRun"], true);
    assert_eq!(
        outcomes(&v, "cp-1"),
        [
            "disable-swap=Changed",
            "kernel-modules=Changed",
            "sysctl=Changed",
            "containerd-cgroup=Changed"
        ]
    );
    for (a, snap) in w.agents.iter().zip(&before) {
        assert_eq!(&snapshot(&a.root), snap, "dry run changed {}", a.name);
        assert!(a.calls().is_empty(), "dry run ran {:?}", a.calls());
    }

    let v = w.khctl_json(&["prepare", "-f", f]);
    assert_eq!(v["ok"], true, "{v}");
    for node in ["cp-1", "w-1"] {
        assert_eq!(
            outcomes(&v, node),
            [
                "disable-swap=Changed",
                "kernel-modules=Changed",
                "sysctl=Changed",
                "containerd-cgroup=Changed"
            ],
            "{node}"
        );
    }
    for a in &w.agents {
        let read = |p: &str| std::fs::read_to_string(a.root.join(p)).unwrap();
        assert!(
            read("etc/fstab").contains("\n#/swapfile none swap sw 0 0\n"),
            "{}",
            read("etc/fstab")
        );
        assert_eq!(
            read("etc/fstab.kh-bak")
                .matches("/swapfile none swap")
                .count(),
            1
        );
        assert_eq!(read("proc/swaps").lines().count(), 1, "swap is off");
        assert!(read("etc/modules-load.d/kh-kubernetes.conf").ends_with("overlay\nbr_netfilter\n"));
        let sysctl = read("etc/sysctl.d/99-kh-kubernetes.conf");
        for k in [
            "net.bridge.bridge-nf-call-iptables = 1",
            "net.bridge.bridge-nf-call-ip6tables = 1",
            "net.ipv4.ip_forward = 1",
        ] {
            assert!(sysctl.contains(k), "{sysctl}");
        }
        assert_eq!(read("proc/sys/net/ipv4/ip_forward").trim(), "1");
        assert_eq!(
            read("proc/sys/net/bridge/bridge-nf-call-iptables").trim(),
            "1"
        );
        // The real containerd reads the result back.
        let dump = std::process::Command::new("containerd")
            .arg("--config")
            .arg(a.root.join("etc/containerd/config.toml"))
            .args(["config", "dump"])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&dump.stdout).contains("SystemdCgroup = true"));
        assert_eq!(
            a.calls(),
            [
                "swapoff -a",
                "modprobe overlay",
                "modprobe br_netfilter",
                "systemctl restart containerd"
            ],
            "{}",
            a.name
        );
    }

    // Again: nothing to do, nothing run.
    let v = w.khctl_json(&["prepare", "-f", f]);
    for node in ["cp-1", "w-1"] {
        assert_eq!(
            outcomes(&v, node),
            [
                "disable-swap=Unchanged",
                "kernel-modules=Unchanged",
                "sysctl=Unchanged",
                "containerd-cgroup=Unchanged"
            ]
        );
    }
    for a in &w.agents {
        assert_eq!(
            a.calls().len(),
            4,
            "no new calls on {}: {:?}",
            a.name,
            a.calls()
        );
    }

    // The spec's roles are now in the registry.
    assert_eq!(w.node("cp-1").unwrap()["role"], "control-plane");
    assert_eq!(w.node("w-1").unwrap()["role"], "worker");

    // The agent counted its steps.
    let (_, metrics) = w.agents[0].http_get("/metrics").unwrap();
    assert!(
        metrics.contains("kh_agent_steps_total{step=\"sysctl\",result=\"changed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kh_agent_steps_total{step=\"sysctl\",result=\"unchanged\"} 1"),
        "{metrics}"
    );
}

#[test]
fn one_failing_node_does_not_stop_the_others() {
    let mut w = World::new(&[]);
    w.add_agent("w-1");
    w.add_agent("w-2");
    w.agents[1].fail_tool(
        "systemctl",
        "Failed to restart containerd.service: Unit containerd.service not found.\n",
    );
    let out = w.khctl(&["prepare", "--node", "w-1", "--node", "w-2"]);
    assert_eq!(
        out.code,
        Some(4),
        "exit code 4: the operation failed on a node\n{}{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr.contains("1 of 2 node(s) failed: w-2"),
        "{}",
        out.stderr
    );
    assert!(
        out.stdout
            .contains("$ systemctl restart containerd   (exit 1)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("Unit containerd.service not found."),
        "{}",
        out.stdout
    );
    let summary: Vec<&str> = out.stdout.lines().filter(|l| l.starts_with("w-")).collect();
    assert_eq!(summary.len(), 2, "{}", out.stdout);
    assert!(summary[0].ends_with("ok"), "{}", summary[0]);
    assert!(
        summary[1].contains("Failed") && summary[1].ends_with("FAILED"),
        "{}",
        summary[1]
    );

    let v = serde_json::from_str::<serde_json::Value>(
        &w.khctl(&["prepare", "--node", "w-2", "-o", "json"]).stdout,
    )
    .unwrap();
    assert_eq!(v["ok"], false);
    let step = &v["nodes"][0]["steps"][3];
    assert_eq!(step["outcome"], "Failed");
    assert_eq!(
        step["commands"].as_array().unwrap().last().unwrap()["argv"],
        serde_json::json!(["systemctl", "restart", "containerd"])
    );
}

#[test]
fn an_unreachable_node_is_reported_and_the_rest_proceed() {
    let mut w = World::new(&[]);
    w.add_agent("w-1");
    w.add_agent("w-2");
    w.wait_health("w-2", "Ready", std::time::Duration::from_secs(20));
    w.agent("w-2").kill9();
    let out = w.khctl(&["prepare", "--node", "w-1", "--node", "w-2"]);
    assert_eq!(out.code, Some(4), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("cannot reach the agent on w-2"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("w-1") && l.ends_with("ok")),
        "{}",
        out.stdout
    );
}

#[test]
fn bad_specs_and_unknown_nodes_are_refused_before_anything_runs() {
    let mut w = World::new(&[]);
    w.add_agent("cp-1");
    let bad = w.dir().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: kh.io/v1alpha1\nkind: Cluster\nmetadata: {name: x}\nspec:\n  nodes:\n    - {name: cp-1, role: control-plane, address: 10.0.0.1, zone: a}\n",
    )
    .unwrap();
    let out = w.khctl(&["prepare", "-f", bad.to_str().unwrap()]);
    assert_eq!(
        out.code,
        Some(2),
        "exit code 2: spec invalid\n{}",
        out.stderr
    );
    assert!(out.stderr.contains("spec.nodes[0].zone"), "{}", out.stderr);

    let f = w.dir().join("c.yaml");
    std::fs::write(
        &f,
        "apiVersion: kh.io/v1alpha1\nkind: Cluster\nmetadata: {name: x}\nspec:\n  nodes:\n    - {name: cp-1, role: control-plane, address: 10.0.0.1}\n    - {name: w-9, role: worker, address: 10.0.0.9}\n",
    )
    .unwrap();
    let out = w.khctl(&["prepare", "-f", f.to_str().unwrap()]);
    assert_eq!(
        out.code,
        Some(2),
        "an unenrolled node is a spec error\n{}",
        out.stderr
    );
    assert!(out.stderr.contains("spec.nodes[1].name"), "{}", out.stderr);
    assert!(
        out.stderr.contains("khctl token create --node w-9"),
        "{}",
        out.stderr
    );
    assert!(w.agents[0].calls().is_empty(), "nothing ran on cp-1");

    let out = w.khctl(&["prepare", "--node", "nope"]);
    assert!(
        out.stderr.contains("node nope is not enrolled"),
        "{}",
        out.stderr
    );
}

#[test]
fn preflight_reports_each_check_with_its_fix() {
    let mut w = World::new(&[]);
    w.add_agent("cp-1");
    let f = spec(&w, &[("cp-1", "control-plane")]);
    let out = w.khctl(&["preflight", "-f", f.to_str().unwrap()]);
    // Nothing is prepared and kubeadm is not installed on a testbed host
    // without the kubeadm double: preflight fails, exit code 3.
    assert_eq!(out.code, Some(3), "{}{}", out.stdout, out.stderr);
    let v = serde_json::from_str::<serde_json::Value>(
        &w.khctl(&["preflight", "-f", f.to_str().unwrap(), "-o", "json"])
            .stdout,
    )
    .unwrap();
    let checks = v["nodes"][0]["checks"].as_array().unwrap();
    let by_name = |n: &str| {
        checks
            .iter()
            .find(|c| c["name"] == n)
            .unwrap_or_else(|| panic!("no check {n}: {checks:?}"))
    };
    assert_eq!(by_name("swap")["status"], "warn");
    assert_eq!(by_name("kubeadm-version")["status"], "fail");
    assert!(!by_name("kubeadm-version")["fix"]
        .as_str()
        .unwrap()
        .is_empty());
    assert_eq!(by_name("cpu")["status"], "pass");
    assert_eq!(by_name("port:6443")["status"], "pass");
}
