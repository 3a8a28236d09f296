//! A cluster's nodes change through cluster.yaml alone: a node added to the
//! spec joins (and nothing else runs), a node removed from it is drained,
//! reset and deleted, with etcd keeping quorum and the load balancer
//! following. One world serves every case (three control planes, two
//! workers, a spare control-plane host, HAProxy), to keep the suite's time
//! down.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kh_testbed::doubles::latency::Op;
use kh_testbed::eventually;
use kh_testbed::proc::Proc;
use kh_testbed::spec::{cluster_yaml, SpecNode};
use kh_testbed::world::{Out, World};

fn node(w: &World, idx: usize, role: &str) -> SpecNode {
    SpecNode {
        name: w.agents[idx].name.clone(),
        role: role.into(),
        ip: w.agents[idx].ip.to_string(),
    }
}

fn write(w: &World, file: &str, nodes: &[SpecNode]) -> PathBuf {
    kh_testbed::spec::write(w.dir(), file, &cluster_yaml("life", nodes, "")).unwrap()
}

fn rollout(w: &World, spec: &Path, extra: &[&str]) -> Out {
    let mut args = vec!["rollout", "-f", spec.to_str().unwrap(), "--allow-even"];
    args.extend_from_slice(extra);
    w.khctl(&args)
}

fn rollout_json(w: &World, spec: &Path, extra: &[&str]) -> serde_json::Value {
    let out = rollout(w, spec, &[&["-o", "json"], extra].concat());
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}):\n{}\n{}", out.stdout, out.stderr))
}

/// The names of etcd's members, sorted.
fn members(w: &World, via: usize) -> Vec<String> {
    let out = w.agents[via]
        .etcdctl(&[], &["member", "list", "-w", "json"])
        .expect_ok("etcdctl member list");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let mut names: Vec<String> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap_or_default().to_string())
        .collect();
    names.sort();
    names
}

/// Calls of `tool` with `word` among its arguments, on every host.
fn calls_with(w: &World, tool: &str, word: &str) -> usize {
    w.agents
        .iter()
        .flat_map(|a| a.calls())
        .filter(|c| c.starts_with(tool) && c.split_whitespace().any(|x| x == word))
        .count()
}

/// The kubeadm calls that change a node's membership (init, join, reset)
/// on each host, by name. A join also makes a token on a control plane
/// (`kubeadm token create`), which changes no membership.
fn kubeadm_calls(w: &World) -> Vec<(String, usize)> {
    let membership = |c: &String| {
        ["kubeadm init", "kubeadm join", "kubeadm reset"]
            .iter()
            .any(|p| c.starts_with(p))
    };
    w.agents
        .iter()
        .map(|a| {
            (
                a.name.clone(),
                a.calls().iter().filter(|c| membership(c)).count(),
            )
        })
        .collect()
}

/// Everything a refused or dry-run rollout must leave alone.
#[derive(Debug, PartialEq)]
struct Snapshot {
    calls: Vec<Vec<String>>,
    haproxy_cfg: String,
    members: Vec<String>,
    roles: Vec<(String, String)>,
}

fn snapshot(w: &World, lb: usize, via: usize) -> Snapshot {
    let nodes = w.khctl_json(&["nodes"]);
    Snapshot {
        calls: w.agents.iter().map(|a| a.calls()).collect(),
        haproxy_cfg: std::fs::read_to_string(w.agents[lb].path("/etc/haproxy/haproxy.cfg"))
            .unwrap(),
        members: members(w, via),
        roles: nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["name"].as_str().unwrap().to_string(),
                    n["role"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect(),
    }
}

fn phase_nodes(v: &serde_json::Value, phase: &str) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for p in v["plan"]["phases"].as_array().unwrap() {
        if p["name"] != phase {
            continue;
        }
        for s in p["steps"].as_array().unwrap() {
            let n = s["node"].as_str().unwrap().to_string();
            if !out.contains(&n) {
                out.push(n);
            }
        }
    }
    out
}

#[test]
fn nodes_join_and_leave_the_cluster_through_the_spec() {
    let mut w = World::new(&[]);
    let mut nodes = vec![];
    for i in 1..=3 {
        let idx = w.add_kube_node(&format!("cp-{i}"));
        nodes.push(node(&w, idx, "control-plane"));
    }
    let w1 = w.add_kube_node("w-1");
    nodes.push(node(&w, w1, "worker"));
    let lb = w.add_lb_node("lb-1");
    nodes.push(node(&w, lb, "loadbalancer"));
    let w2 = w.add_kube_node("w-2");
    let spare = w.add_kube_node("cp-4");
    let cp3 = 2;
    let spec = write(&w, "cluster.yaml", &nodes);
    let v = rollout_json(&w, &spec, &[]);
    assert_eq!(v["ok"], true, "{v:#}");

    // A worker added to the spec: it alone joins.
    let before = kubeadm_calls(&w);
    let mut grown = nodes.clone();
    grown.push(node(&w, w2, "worker"));
    let f = write(&w, "add-worker.yaml", &grown);
    let v = rollout_json(&w, &f, &[]);
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(
        v["plan"]["phases"][0]["steps"],
        serde_json::json!([{"node": "w-2", "step": "addition", "state": "pending", "detail": "new in the spec: joins as a worker"}]),
        "{v:#}"
    );
    let after = kubeadm_calls(&w);
    for ((name, b), (_, a)) in before.iter().zip(&after) {
        let expected = if name == "w-2" { b + 1 } else { *b };
        assert_eq!(*a, expected, "{name}: {before:?} then {after:?}");
    }
    assert_eq!(w.node("w-2").unwrap()["role"], "worker");

    // The spare host added as a control plane: it alone joins, and the
    // load balancer lists it.
    let before = kubeadm_calls(&w);
    grown.push(node(&w, spare, "control-plane"));
    let f = write(&w, "add-cp.yaml", &grown);
    let v = rollout_json(&w, &f, &[]);
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(
        v["plan"]["phases"][0]["steps"],
        serde_json::json!([{"node": "cp-4", "step": "addition", "state": "pending", "detail": "new in the spec: joins as a control-plane"}]),
        "{v:#}"
    );
    let after = kubeadm_calls(&w);
    for ((name, b), (_, a)) in before.iter().zip(&after) {
        if name == "cp-4" {
            assert!(*a > *b, "cp-4 joined: {after:?}");
        } else {
            assert_eq!(a, b, "{name}: {before:?} then {after:?}");
        }
    }
    assert_eq!(members(&w, 0), ["cp-1", "cp-2", "cp-3", "cp-4"]);
    let cfg = std::fs::read_to_string(w.agents[lb].path("/etc/haproxy/haproxy.cfg")).unwrap();
    assert!(cfg.contains("server cp-4 "), "{cfg}");

    // A changed role stays refused, with the two steps that do it.
    let mut promoted = grown.clone();
    promoted[3].role = "control-plane".into();
    let f = write(&w, "promote.yaml", &promoted);
    let out = rollout(&w, &f, &["--dry-run"]);
    assert_eq!(out.code, Some(2), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.lines().any(|l| l.contains(" w-1 ")
            && l.contains("joined the cluster as a worker; the spec lists it as a control-plane")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("`khctl reset --node w-1`"),
        "{}",
        out.stdout
    );

    // A key written before the removals.
    w.agents[0]
        .etcdctl(&[], &["put", "kh-e2e/lifecycle", "survives"])
        .expect_ok("etcdctl put");

    // w-1 and cp-3 leave the spec.
    let kept: Vec<SpecNode> = grown
        .iter()
        .filter(|n| n.name != "w-1" && n.name != "cp-3")
        .cloned()
        .collect();
    let f = write(&w, "removed.yaml", &kept);
    let before = snapshot(&w, lb, 0);

    // The dry run lists the removals and changes nothing.
    let dry = rollout(&w, &f, &["--dry-run"]);
    assert!(dry.ok(), "{}\n{}", dry.stdout, dry.stderr);
    for n in ["w-1", "cp-3"] {
        assert!(
            dry.stdout
                .lines()
                .any(|l| l.contains("[pending]") && l.contains(n) && l.contains("removal")),
            "{}",
            dry.stdout
        );
    }
    assert!(dry.stdout.contains("  remove-nodes:"), "{}", dry.stdout);
    let v = rollout_json(&w, &f, &["--dry-run"]);
    assert_eq!(phase_nodes(&v, "remove-nodes"), ["w-1", "cp-3"], "{v:#}");
    assert_eq!(snapshot(&w, lb, 0), before, "the dry run changed something");

    // Without --yes, and no terminal to ask on: exit 2, and the fix.
    let out = rollout(&w, &f, &[]);
    assert_eq!(out.code, Some(2), "{}\n{}", out.stdout, out.stderr);
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(text.contains("re-run with --yes"), "{text}");
    assert!(
        text.contains("the spec removes cp-3, w-1 from the cluster"),
        "{text}"
    );
    assert_eq!(
        snapshot(&w, lb, 0),
        before,
        "an unconfirmed removal changed something"
    );

    // With --yes, killed (-9) in the middle of w-1's drain.
    w.set_double_latency(Op::Drain, Duration::from_secs(4));
    let mut cmd = Command::new(kh_testbed::bin("khctl"));
    cmd.arg("--config").arg(&w.coordinator.admin).args([
        "rollout",
        "-f",
        f.to_str().unwrap(),
        "--allow-even",
        "--yes",
    ]);
    let mut khctl = Proc::spawn(
        "khctl rollout --yes",
        cmd,
        &w.dir().join("khctl-remove.log"),
    );
    eventually("w-1's drain to start", Duration::from_secs(180), || {
        if calls_with(&w, "kubectl", "w-1") > 0 && calls_with(&w, "kubectl", "drain") > 0 {
            Ok(())
        } else {
            Err(khctl.log_text())
        }
    });
    w.coordinator.kill9();
    eventually("khctl to end", Duration::from_secs(30), || {
        if khctl.is_running() {
            Err("running".to_string())
        } else {
            Ok(())
        }
    });
    let code = khctl.terminate(Duration::from_secs(1));
    assert_eq!(code, Some(5), "exit 5: interrupted\n{}", khctl.log_text());
    // Nothing was removed yet, and the held spec still lists both nodes.
    assert_eq!(members(&w, 0), ["cp-1", "cp-2", "cp-3", "cp-4"]);
    w.set_double_latency(Op::Drain, Duration::ZERO);
    w.coordinator.start();

    // The same command finishes it.
    let v = rollout_json(&w, &f, &["--yes"]);
    assert_eq!(v["ok"], true, "{v:#}");

    // Drained (through a control plane that stays), reset once, deleted.
    let on = |idx: usize, prefix: &str| {
        w.agents[idx]
            .calls()
            .iter()
            .filter(|c| c.starts_with(prefix))
            .count()
    };
    assert_eq!(on(w1, "kubeadm reset"), 1, "{:?}", w.agents[w1].calls());
    assert_eq!(on(cp3, "kubeadm reset"), 1, "{:?}", w.agents[cp3].calls());
    for (idx, a) in w.agents.iter().enumerate() {
        if idx == w1 || idx == cp3 {
            assert!(
                !a.calls()
                    .iter()
                    .any(|c| c.starts_with("kubectl") && c.contains(" drain ")),
                "{} drained itself: {:?}",
                a.name,
                a.calls()
            );
        }
    }
    let deleted = |name: &str| {
        w.agents
            .iter()
            .flat_map(|a| a.calls())
            .filter(|c| {
                let words: Vec<&str> = c.split_whitespace().collect();
                c.starts_with("kubectl") && words.windows(3).any(|x| x == ["delete", "node", name])
            })
            .count()
    };
    assert_eq!(deleted("w-1"), 1);
    assert_eq!(deleted("cp-3"), 1);
    let nodes = w.agents[0]
        .kubectl(&["get", "nodes", "-o", "name"])
        .expect_ok("kubectl get nodes");
    assert!(
        !nodes.stdout.contains("node/w-1") && !nodes.stdout.contains("node/cp-3"),
        "{}",
        nodes.stdout
    );

    // etcd kept quorum: the three that stay, and the key written before.
    assert_eq!(members(&w, 0), ["cp-1", "cp-2", "cp-4"]);
    let got = w.agents[0]
        .etcdctl(&[], &["get", "kh-e2e/lifecycle", "--print-value-only"])
        .expect_ok("etcdctl get");
    assert_eq!(got.stdout.trim(), "survives");

    // The load balancer no longer sends to cp-3.
    let cfg = std::fs::read_to_string(w.agents[lb].path("/etc/haproxy/haproxy.cfg")).unwrap();
    assert!(!cfg.contains("server cp-3 "), "{cfg}");
    assert!(cfg.contains("server cp-4 "), "{cfg}");

    // Still enrolled, without a role.
    for n in ["w-1", "cp-3"] {
        let rec = w.node(n).unwrap_or_else(|| panic!("{n} is still enrolled"));
        assert!(rec["role"].is_null() || rec["role"] == "", "{n}: {rec:#}");
    }

    // Audited: one done reset of each.
    let hist = w.khctl_json(&["history"]);
    for n in ["w-1", "cp-3"] {
        let resets: Vec<&serde_json::Value> = hist["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["node"] == n && e["step"] == "kubeadm-reset")
            .collect();
        assert_eq!(resets.len(), 1, "{n}: {hist:#}");
        assert_eq!(resets[0]["outcome"], "done", "{hist:#}");
    }

    let health = w.khctl(&["health"]);
    assert!(health.ok(), "{}\n{}", health.stdout, health.stderr);

    // The same spec again: nothing to remove, nothing reset.
    let v = rollout_json(&w, &f, &[]);
    assert_eq!(v["ok"], true, "{v:#}");
    assert!(phase_nodes(&v, "remove-nodes").is_empty(), "{v:#}");
    assert_eq!(on(w1, "kubeadm reset"), 1);

    // A removed node stays enrolled, so listing it again joins it as new.
    let mut back = kept.clone();
    back.push(node(&w, w1, "worker"));
    let f = write(&w, "back.yaml", &back);
    let v = rollout_json(&w, &f, &[]);
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(
        v["plan"]["phases"][0]["steps"],
        serde_json::json!([{"node": "w-1", "step": "addition", "state": "pending", "detail": "new in the spec: joins as a worker"}]),
        "{v:#}"
    );
    assert_eq!(on(w1, "kubeadm join"), 2, "{:?}", w.agents[w1].calls());
    assert_eq!(w.node("w-1").unwrap()["role"], "worker");
}
