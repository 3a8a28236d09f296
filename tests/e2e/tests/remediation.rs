//! Self-healing control planes (`spec.remediation`, `spec.spares`) on the
//! testbed with real etcd and a real HAProxy: the coordinator replaces a
//! powered-off control plane with a spare on its own, and leaves alone what
//! its rules say it must (an agent that alone died, no spare, no quorum,
//! maxRetry reached); a replacement the coordinator was killed in the middle
//! of is resumed, never repeated.
//!
//! Two worlds, each telling one story in order, to keep the suite lean.

use std::time::Duration;

use kh_testbed::eventually;
use kh_testbed::spec::{cluster_yaml, SpecNode};
use kh_testbed::world::World;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(240);

fn idx(w: &World, name: &str) -> usize {
    w.agents.iter().position(|a| a.name == name).unwrap()
}

/// Three control planes behind HAProxy on lb-1, `spares` enrolled and
/// listed as spares, rolled out with `remediation`.
fn rolled_out(spares: &[&str], remediation: &str, metrics: std::net::SocketAddr) -> World {
    let mut w = World::new(&["--metrics-address", &metrics.to_string()]);
    let mut nodes = vec![];
    for i in 1..=3 {
        let name = format!("cp-{i}");
        let idx = w.add_kube_node(&name);
        nodes.push(SpecNode {
            name,
            role: "control-plane".into(),
            ip: w.agents[idx].ip.to_string(),
        });
    }
    let lb = w.add_lb_node("lb-1");
    nodes.push(SpecNode {
        name: "lb-1".into(),
        role: "loadbalancer".into(),
        ip: w.agents[lb].ip.to_string(),
    });
    for s in spares {
        w.add_kube_node(s);
    }
    let extra = format!(
        "  spares: [{}]\n  remediation: {remediation}\n",
        spares.join(", ")
    );
    let spec = kh_testbed::spec::write(
        w.dir(),
        "cluster.yaml",
        &cluster_yaml("e2e", &nodes, &extra),
    )
    .unwrap();
    let out = w.khctl(&["rollout", "-f", spec.to_str().unwrap()]);
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    w
}

/// (name, isLearner) of every member, as the real etcdctl sees it through `via`.
fn members(w: &World, via: &str) -> Vec<(String, bool)> {
    let out = w.agents[idx(w, via)]
        .etcdctl(&[], &["member", "list", "-w", "json"])
        .expect_ok("member list");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    let mut ms: Vec<(String, bool)> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or_default().to_string(),
                m["isLearner"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    ms.sort();
    ms
}

fn voters(names: &[&str]) -> Vec<(String, bool)> {
    let mut v: Vec<(String, bool)> = names.iter().map(|n| (n.to_string(), false)).collect();
    v.sort();
    v
}

/// The remediation entries of the audit log: (node, step, message).
fn decisions(w: &World) -> Vec<(String, String, String)> {
    w.khctl_json(&["history", "--limit", "100000"])["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["operation"] == "remediation")
        .map(|e| {
            (
                e["node"].as_str().unwrap_or_default().to_string(),
                e["step"].as_str().unwrap_or_default().to_string(),
                e["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn wait_decision(w: &World, node: &str, step: &str) -> String {
    eventually(
        &format!("remediation to decide {step} for {node}"),
        WAIT,
        || {
            let d = decisions(w);
            d.iter()
                .find(|(n, s, _)| n == node && s == step)
                .map(|(_, _, m)| m.clone())
                .ok_or_else(|| format!("{d:#?}"))
        },
    )
}

fn metric(addr: std::net::SocketAddr, line_start: &str) -> f64 {
    let (code, body) = kh_testbed::world::http_get(addr, "/metrics").expect("metrics");
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{line_start} missing from:\n{body}"))
}

fn status_node(w: &World, node: &str) -> Value {
    let s = w.khctl_json(&["remediation", "status"]);
    s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == node)
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn a_dead_control_plane_is_replaced_by_a_spare_and_the_rules_hold() {
    let metrics = kh_testbed::net::fresh_addr();
    let mut w = rolled_out(
        &["cp-4"],
        "{enabled: true, unhealthyAfter: 3s, retryPeriod: 10m, maxRetry: 2}",
        metrics,
    );
    // The spare was prepared, never joined.
    let cp4 = &w.agents[idx(&w, "cp-4")];
    assert!(
        cp4.calls().iter().all(|c| !c.starts_with("kubeadm join")),
        "{:?}",
        cp4.calls()
    );
    assert!(!cp4.path("/etc/kubernetes/kubelet.conf").exists());
    let spares = w.khctl_json(&["spares", "list"]);
    assert_eq!(spares["spares"][0]["node"], "cp-4", "{spares}");
    assert_eq!(spares["spares"][0]["usable"], true, "{spares}");
    w.agents[idx(&w, "cp-1")]
        .etcdctl(&[], &["put", "kh-e2e/key", "precious"])
        .expect_ok("put");

    // 1. cp-3's agent alone dies; its etcd and apiserver serve on: not a
    // candidate, however long it lasts.
    w.agent("cp-3").kill9();
    eventually(
        "cp-3 to be observed without its agent for 3 windows",
        WAIT,
        || {
            let n = status_node(&w, "cp-3");
            let observed = n["observed"].as_str().unwrap_or_default();
            let for_ms = n["observedForMs"].as_u64().unwrap_or(0);
            if observed.starts_with("agent gone, etcd healthy, apiserver ready") && for_ms > 9_000 {
                Ok(())
            } else {
                Err(format!("{n}"))
            }
        },
    );
    let n = status_node(&w, "cp-3");
    assert_eq!(n["candidate"], false, "{n}");
    assert_ne!(n["state"], "failing", "{n}");
    assert!(
        !decisions(&w).iter().any(|(node, _, _)| node == "cp-3"),
        "{:#?}",
        decisions(&w)
    );
    assert_eq!(members(&w, "cp-1").len(), 3);
    w.agent("cp-3").start();

    // 2. cp-2 loses power: replaced by cp-4 on its own.
    w.agent("cp-2").power_off();
    let why = wait_decision(&w, "cp-2", "replace");
    assert!(why.contains("cp-2 has been failing for"), "{why}");
    assert!(why.contains("agent gone"), "{why}");
    assert!(why.contains("apiserver not answering"), "{why}");
    assert!(why.contains("replacing it with spare cp-4"), "{why}");
    let done = wait_decision(&w, "cp-2", "succeeded");
    assert!(done.contains("cluster.yaml"), "{done}");
    assert_eq!(members(&w, "cp-1"), voters(&["cp-1", "cp-3", "cp-4"]));
    let got = w.agents[idx(&w, "cp-1")]
        .etcdctl(&[], &["get", "kh-e2e/key", "--print-value-only"])
        .expect_ok("get");
    assert_eq!(got.stdout.trim(), "precious");
    let cfg = std::fs::read_to_string(w.agents[idx(&w, "lb-1")].path("/etc/haproxy/haproxy.cfg"))
        .unwrap();
    let cp4_ip = w.agents[idx(&w, "cp-4")].ip;
    assert!(
        cfg.contains(&format!("    server cp-4 {cp4_ip}:6443 check\n")),
        "{cfg}"
    );
    assert!(!cfg.contains("server cp-2 "), "{cfg}");
    let h = w.khctl(&["health"]);
    assert!(h.ok(), "{}{}", h.stdout, h.stderr);
    // The audit log has the decision with its reasons, and the replacement's steps.
    let steps: Vec<String> = w.khctl_json(&["history", "--limit", "100000"])["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["operation"] == "etcd replace cp-2 with cp-4")
        .map(|e| e["step"].as_str().unwrap().to_string())
        .collect();
    for s in [
        "preconditions",
        "remove-member",
        "join-control-plane",
        "update-spec",
        "verify",
    ] {
        assert!(steps.iter().any(|x| x == s), "{s} missing from {steps:?}");
    }
    let st = w.khctl_json(&["remediation", "status"]);
    assert_eq!(st["replaced"][0], "cp-2 -> cp-4", "{st}");
    assert_eq!(st["spares"].as_array().unwrap().len(), 0, "{st}");
    assert_eq!(st["remediations"]["succeeded"], 1, "{st}");
    assert_eq!(
        metric(
            metrics,
            "kh_coordinator_remediations_total{result=\"succeeded\"}"
        ),
        1.0
    );

    // 3. The old cp-2 comes back: told it is retired, shown retired, and
    // its etcd does not disturb the cluster.
    let cp2 = idx(&w, "cp-2");
    w.agents[cp2].start_kubelet();
    w.agent("cp-2").start();
    eventually("cp-2's agent to learn it is retired", WAIT, || {
        if w.agents[cp2]
            .log_text()
            .contains("the coordinator retired this node")
        {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    let nodes = w.khctl_json(&["nodes"]);
    let cp2_row = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "cp-2")
        .cloned()
        .unwrap();
    assert!(cp2_row.to_string().contains("retired"), "{cp2_row}");
    assert_eq!(members(&w, "cp-1"), voters(&["cp-1", "cp-3", "cp-4"]));
    let h = w.khctl(&["health"]);
    assert!(h.ok(), "{}{}", h.stdout, h.stderr);

    // A rollout of the operator's cluster.yaml from before the replacement
    // keeps it (cp-4 in cp-2's place, out of the spares) and says what to
    // change; it never joins cp-2 again.
    let spec = w.dir().join("cluster.yaml");
    let joins = |w: &World| {
        w.agents[cp2]
            .calls()
            .iter()
            .filter(|c| c.starts_with("kubeadm join"))
            .count()
    };
    let joins_before = joins(&w);
    let v = w.khctl_json(&["rollout", "-f", spec.to_str().unwrap()]);
    assert_eq!(v["ok"], true, "{v:#}");
    assert!(
        v["plan"]["notes"]
            .to_string()
            .contains("cp-2 was replaced by cp-4 (remediation)"),
        "{v:#}"
    );
    assert_eq!(joins(&w), joins_before, "{:?}", w.agents[cp2].calls());
    assert_eq!(members(&w, "cp-1"), voters(&["cp-1", "cp-3", "cp-4"]));

    // 4. It goes back to the spare pool: reset first, through its agent.
    let out = w.khctl_json(&["spares", "add", "cp-2"]);
    assert!(
        out["message"]
            .as_str()
            .unwrap()
            .contains("kubeadm reset -f"),
        "{out}"
    );
    assert!(
        w.agents[cp2]
            .calls()
            .iter()
            .any(|c| c.starts_with("kubeadm reset")),
        "{:?}",
        w.agents[cp2].calls()
    );
    assert_eq!(out["spares"][0]["node"], "cp-2", "{out}");
    assert_eq!(members(&w, "cp-1"), voters(&["cp-1", "cp-3", "cp-4"]));

    // 5. No spare left (the only one is powered off): the alert, nothing changes.
    w.agent("cp-2").power_off();
    w.agent("cp-3").power_off();
    let why = wait_decision(&w, "cp-3", "no-spare");
    assert!(why.contains("cp-2: its agent is not reporting"), "{why}");
    eventually("the no-spare alert", WAIT, || {
        let v = metric(
            metrics,
            "kh_coordinator_remediation_blocked{reason=\"no-spare\"}",
        );
        if v == 1.0 {
            Ok(())
        } else {
            Err(v.to_string())
        }
    });
    assert_eq!(members(&w, "cp-1"), voters(&["cp-1", "cp-3", "cp-4"]));
    assert_eq!(
        metric(
            metrics,
            "kh_coordinator_remediations_total{result=\"started\"}"
        ),
        1.0
    );

    // 6. Two control planes of three down: no quorum, the alert, nothing done.
    w.agent("cp-4").power_off();
    let why = wait_decision(&w, "cp-3", "no-quorum");
    assert!(why.contains("quorum needs 2"), "{why}");
    eventually("the no-quorum alert", WAIT, || {
        let v = metric(
            metrics,
            "kh_coordinator_remediation_blocked{reason=\"no-quorum\"}",
        );
        if v == 1.0 {
            Ok(())
        } else {
            Err(v.to_string())
        }
    });
    assert_eq!(
        metric(
            metrics,
            "kh_coordinator_remediations_total{result=\"started\"}"
        ),
        1.0
    );
    let st = w.khctl_json(&["remediation", "status"]);
    assert_eq!(st["blocked"], "no-quorum", "{st}");
}

#[test]
fn a_killed_coordinator_resumes_its_replacement_and_max_retry_stops_failing_ones() {
    let metrics = kh_testbed::net::fresh_addr();
    let mut w = rolled_out(
        &["cp-4", "cp-5"],
        "{enabled: true, unhealthyAfter: 3s, retryPeriod: 10m, maxRetry: 2}",
        metrics,
    );

    // 1. Paused: decides, audits, does not act.
    let out = w.khctl_json(&["remediation", "pause"]);
    assert_eq!(out["paused"], true, "{out}");
    // A slow join leaves time to kill the coordinator in the middle.
    w.set_kubeadm_latency(Duration::ZERO, Duration::from_secs(6), Duration::ZERO);
    w.agent("cp-2").power_off();
    let why = wait_decision(&w, "cp-2", "paused");
    assert!(why.contains("remediation is paused"), "{why}");
    assert_eq!(members(&w, "cp-1").len(), 3, "nothing was changed");
    let out = w.khctl_json(&["remediation", "resume"]);
    assert_eq!(out["paused"], false, "{out}");
    let d = decisions(&w);
    for step in ["pause", "resume"] {
        assert!(
            d.iter().any(|(n, s, _)| n == "cluster" && s == step),
            "{step} missing from {d:#?}"
        );
    }

    // 2. Killed while cp-4 joins; the restarted coordinator resumes that very
    // replacement.
    let cp4 = idx(&w, "cp-4");
    eventually("cp-4's join to start", WAIT, || {
        if w.agents[cp4]
            .calls()
            .iter()
            .any(|c| c.starts_with("kubeadm join"))
        {
            Ok(())
        } else {
            Err(format!("{:?}", decisions(&w)))
        }
    });
    w.coordinator.kill9();
    w.coordinator.start();
    let resumed = wait_decision(&w, "cp-2", "resume");
    assert!(resumed.contains("cp-2 with cp-4"), "{resumed}");
    wait_decision(&w, "cp-2", "succeeded");
    assert_eq!(members(&w, "cp-1"), voters(&["cp-1", "cp-3", "cp-4"]));
    let d = decisions(&w);
    let started: Vec<_> = d.iter().filter(|(_, s, _)| s == "replace").collect();
    assert_eq!(started.len(), 1, "{d:#?}");
    let cp5 = idx(&w, "cp-5");
    assert!(
        w.agents[cp5]
            .calls()
            .iter()
            .all(|c| !c.starts_with("kubeadm join")),
        "{:?}",
        w.agents[cp5].calls()
    );
    let h = w.khctl(&["health"]);
    assert!(h.ok(), "{}{}", h.stdout, h.stderr);

    // 3. The last spare's kubeadm fails: two attempts, then it stops.
    w.set_kubeadm_latency(Duration::ZERO, Duration::ZERO, Duration::ZERO);
    w.agents[cp5].fail_tool("kubeadm", "kubeadm: injected failure\n");
    w.agent("cp-3").power_off();
    let why = wait_decision(&w, "cp-3", "max-retry");
    assert!(
        why.contains("2 replacements of cp-3 were attempted"),
        "{why}"
    );
    let d = decisions(&w);
    let tries = d
        .iter()
        .filter(|(n, s, _)| n == "cp-3" && s == "replace")
        .count();
    assert_eq!(tries, 2, "{d:#?}");
    assert!(
        d.iter().any(|(n, s, _)| n == "cp-3" && s == "failed"),
        "{d:#?}"
    );
    assert_eq!(
        metric(
            metrics,
            "kh_coordinator_remediation_blocked{reason=\"max-retry\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            metrics,
            "kh_coordinator_remediations_total{result=\"failed\"}"
        ),
        2.0
    );
}
