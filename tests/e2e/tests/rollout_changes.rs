//! `khctl rollout` with a changed spec on a cluster kh has built: every
//! difference is listed (the same words in a dry run and a run), and the
//! ones kh does not carry out are refused before anything changes — no
//! agent step, no load-balancer rewrite, no registry write. One cluster
//! serves every case, to keep the suite's time down.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use kh_testbed::spec::{cluster_yaml, SpecNode};
use kh_testbed::world::{Out, World};

fn node(w: &World, idx: usize, role: &str) -> SpecNode {
    SpecNode {
        name: w.agents[idx].name.clone(),
        role: role.into(),
        ip: w.agents[idx].ip.to_string(),
    }
}

fn write(w: &World, file: &str, nodes: &[SpecNode], extra: &str) -> PathBuf {
    kh_testbed::spec::write(w.dir(), file, &cluster_yaml("changes", nodes, extra)).unwrap()
}

/// Everything a refused rollout must leave alone.
#[derive(Debug, PartialEq)]
struct Snapshot {
    /// Each agent's log of double calls (kubeadm, kubectl, systemctl, ...).
    calls: Vec<Vec<String>>,
    haproxy_cfg: Vec<u8>,
    haproxy_mtime: SystemTime,
    /// `etcdctl member list -w json`'s members, as bytes.
    etcd_members: String,
    /// Each node's role in the registry (`khctl nodes`).
    roles: Vec<(String, String)>,
}

fn snapshot(w: &World, lb: usize) -> Snapshot {
    let cfg = w.agents[lb].path("/etc/haproxy/haproxy.cfg");
    let members = w.agents[0]
        .etcdctl(&[], &["member", "list", "-w", "json"])
        .expect_ok("etcdctl member list");
    let v: serde_json::Value = serde_json::from_str(&members.stdout).unwrap();
    let nodes = w.khctl_json(&["nodes"]);
    Snapshot {
        calls: w.agents.iter().map(|a| a.calls()).collect(),
        haproxy_cfg: std::fs::read(&cfg).expect("haproxy.cfg"),
        haproxy_mtime: std::fs::metadata(&cfg).unwrap().modified().unwrap(),
        etcd_members: v["members"].to_string(),
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

fn rollout(w: &World, spec: &Path, extra: &[&str]) -> Out {
    let mut args = vec!["rollout", "-f", spec.to_str().unwrap()];
    args.extend_from_slice(extra);
    w.khctl(&args)
}

/// Runs a refused rollout (dry run first, then for real) and checks both
/// say the same, exit 2 (a spec problem) and change nothing. Returns the
/// real run's failure message.
fn refused(w: &World, lb: usize, spec: &Path, what: &str, extra: &[&str]) -> String {
    let before = snapshot(w, lb);
    let dry = rollout(w, spec, &[&["--dry-run"], extra].concat());
    assert_eq!(
        dry.code,
        Some(2),
        "{what}: dry run\n{}\n{}",
        dry.stdout,
        dry.stderr
    );
    let human = rollout(w, spec, extra);
    assert_eq!(
        human.code,
        Some(2),
        "{what}: run\n{}\n{}",
        human.stdout,
        human.stderr
    );
    let run = rollout(w, spec, &[&["-o", "json"], extra].concat());
    assert_eq!(
        run.code,
        Some(2),
        "{what}: run\n{}\n{}",
        run.stdout,
        run.stderr
    );
    let v: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("{what}: no JSON ({e}):\n{}\n{}", run.stdout, run.stderr));
    assert_eq!(v["ok"], false, "{what}: {v:#}");
    assert_eq!(v["failure"], "spec", "{what}: {v:#}");
    let message = v["message"].as_str().unwrap().to_string();
    assert!(message.contains("nothing was changed"), "{what}: {message}");
    // Every refusal the run gives, the dry run printed in the same words,
    // in its plan's "changes" phase.
    let changes: Vec<&serde_json::Value> = v["plan"]["phases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "changes")
        .flat_map(|p| p["steps"].as_array().unwrap())
        .collect();
    assert!(!changes.is_empty(), "{what}: {v:#}");
    // A refused plan plans nothing else: no phase would run.
    assert_eq!(
        v["plan"]["phases"].as_array().unwrap().len(),
        1,
        "{what}: {v:#}"
    );
    for c in changes.iter().filter(|c| c["state"] == "refused") {
        let detail = c["detail"].as_str().unwrap();
        assert!(
            message.contains(detail),
            "{what}: {detail} not in {message}"
        );
        let node = c["node"].as_str().unwrap();
        // The table wraps nothing: the detail is printed whole, by the dry
        // run and the run alike.
        for (out, which) in [(&dry, "dry run"), (&human, "run")] {
            assert!(
                out.stdout.contains(&format!(
                    "[refused] {node:<10} {:<20} {detail}",
                    c["step"].as_str().unwrap()
                )),
                "{what}: the {which}'s words differ:\n{}",
                out.stdout
            );
        }
    }
    assert_eq!(
        snapshot(w, lb),
        before,
        "{what}: a refused rollout changed something"
    );
    message
}

#[test]
fn spec_changes_to_a_built_cluster_are_refused_or_carried_out_and_reruns_touch_nothing() {
    let mut w = World::new(&[]);
    let mut nodes = vec![];
    for i in 1..=3 {
        let idx = w.add_kube_node(&format!("cp-{i}"));
        nodes.push(node(&w, idx, "control-plane"));
    }
    let idx = w.add_kube_node("w-1");
    nodes.push(node(&w, idx, "worker"));
    let lb = w.add_lb_node("lb-1");
    nodes.push(node(&w, lb, "loadbalancer"));
    let spec = write(&w, "cluster.yaml", &nodes, "");
    let v = w.khctl_json(&["rollout", "-f", spec.to_str().unwrap()]);
    assert_eq!(v["ok"], true, "{v:#}");

    // A re-run on the finished cluster: no differences, and no load-balancer
    // backend touched (the config file is not even rewritten).
    let before = snapshot(&w, lb);
    let v = w.khctl_json(&["rollout", "-f", spec.to_str().unwrap()]);
    assert_eq!(v["ok"], true, "{v:#}");
    let changes = &v["plan"]["phases"][0];
    assert_eq!(changes["name"], "changes");
    assert_eq!(changes["steps"], serde_json::json!([]), "{v:#}");
    let lb_messages: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["step"] == "load-balancer" && e["kind"] == "KIND_STEP_FINISHED")
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert!(!lb_messages.is_empty(), "{v:#}");
    for m in &lb_messages {
        assert_eq!(
            *m, "HAProxy backends unchanged: cp-1, cp-2, cp-3",
            "{lb_messages:?}"
        );
    }
    let after = snapshot(&w, lb);
    assert_eq!(after.haproxy_mtime, before.haproxy_mtime);
    assert_eq!(after.haproxy_cfg, before.haproxy_cfg);

    // A joined worker relisted as a control plane.
    let mut changed = nodes.clone();
    changed[3].role = "control-plane".into();
    let f = write(&w, "role.yaml", &changed, "");
    // A dry run persists nothing, not even its outcome: the last real
    // rollout is still the one `rollout status` reports.
    let dry = rollout(&w, &f, &["--dry-run", "--allow-even"]);
    assert_eq!(dry.code, Some(2), "{}\n{}", dry.stdout, dry.stderr);
    let st = w.khctl(&["rollout", "status"]);
    assert!(
        st.ok() && st.stdout.contains("Rollout complete"),
        "{}{}",
        st.stdout,
        st.stderr
    );
    let msg = refused(&w, lb, &f, "role change", &["--allow-even"]);
    assert!(
        msg.contains("w-1: joined the cluster as a worker; the spec lists it as a control-plane"),
        "{msg}"
    );
    assert!(msg.contains("`khctl reset --node w-1`"), "{msg}");

    // Two control planes and the worker removed from the spec: a removal
    // (tests/node_lifecycle.rs carries one out), which a run without --yes
    // and without a terminal refuses before any change, exit 2.
    let kept: Vec<SpecNode> = nodes
        .iter()
        .filter(|n| n.name == "cp-1" || n.name == "lb-1")
        .cloned()
        .collect();
    let f = write(&w, "removed.yaml", &kept, "");
    let unchanged = snapshot(&w, lb);
    let dry = rollout(&w, &f, &["--dry-run"]);
    assert!(dry.ok(), "{}\n{}", dry.stdout, dry.stderr);
    for n in ["cp-2", "cp-3", "w-1"] {
        assert!(
            dry.stdout.lines().any(|l| l.contains("[pending]")
                && l.contains(&format!(" {n} "))
                && l.contains(" removal ")
                && l.contains("joined the cluster as a")),
            "{n}: {}",
            dry.stdout
        );
    }
    let run = rollout(&w, &f, &["-o", "json"]);
    assert_eq!(run.code, Some(2), "{}\n{}", run.stdout, run.stderr);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["failure"], "spec", "{v:#}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("the spec removes cp-2, cp-3, w-1 from the cluster"),
        "{v:#}"
    );
    assert!(
        v["hint"].as_str().unwrap().starts_with("re-run with --yes"),
        "{v:#}"
    );
    assert_eq!(
        snapshot(&w, lb),
        unchanged,
        "an unconfirmed removal changed something"
    );

    // Another Kubernetes version.
    let text = cluster_yaml("changes", &nodes, "").replace("v1.32.0", "v1.33.0");
    let f = kh_testbed::spec::write(w.dir(), "version.yaml", &text).unwrap();
    let msg = refused(&w, lb, &f, "version", &[]);
    assert!(
        msg.contains(
            "upgrade it with `khctl upgrade -f cluster.yaml`, or keep kubernetesVersion at v1.32.0"
        ),
        "{msg}"
    );

    // A joined node's address changed.
    let mut changed = nodes.clone();
    let old = changed[3].ip.clone();
    changed[3].ip = "127.0.0.254".into();
    let f = write(&w, "address.yaml", &changed, "");
    let msg = refused(&w, lb, &f, "address", &[]);
    assert!(
        msg.contains(&format!(
            "w-1: joined the cluster with address {old}; the spec gives 127.0.0.254"
        )),
        "{msg}"
    );

    // The load balancer listed as a worker: refused, and its role in the
    // registry stays (the snapshot compares the roles).
    let mut changed = nodes.clone();
    changed[4].role = "worker".into();
    let f = write(&w, "lb-as-worker.yaml", &changed, "");
    let msg = refused(&w, lb, &f, "load balancer as a worker", &[]);
    assert!(
        msg.contains("lb-1: serves the cluster as a loadbalancer; the spec lists it as a worker"),
        "{msg}"
    );
    assert_eq!(w.node("lb-1").unwrap()["role"], "loadbalancer");

    // After all the refusals, the held spec is still the first one: the
    // original spec has no differences, and leaves HAProxy's file alone.
    let v = w.khctl_json(&["rollout", "-f", spec.to_str().unwrap(), "--dry-run"]);
    assert_eq!(
        v["plan"]["phases"][0]["steps"],
        serde_json::json!([]),
        "{v:#}"
    );
    let v = w.khctl_json(&["rollout", "-f", spec.to_str().unwrap()]);
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(snapshot(&w, lb).haproxy_mtime, before.haproxy_mtime);

    // A difference kh carries out: a new worker joins, listed as such in
    // the plan, and the load balancer is still left alone.
    let idx = w.add_kube_node("w-2");
    let mut grown = nodes.clone();
    grown.push(node(&w, idx, "worker"));
    let f = write(&w, "grown.yaml", &grown, "");
    let v = w.khctl_json(&["rollout", "-f", f.to_str().unwrap()]);
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(
        v["plan"]["phases"][0]["steps"],
        serde_json::json!([{"node": "w-2", "step": "addition", "state": "pending", "detail": "new in the spec: joins as a worker"}]),
        "{v:#}"
    );
    assert_eq!(w.node("w-2").unwrap()["role"], "worker");
    assert_eq!(snapshot(&w, lb).haproxy_mtime, before.haproxy_mtime);

    // A changed CNI manifest is applied again, not ignored.
    std::fs::write(
        w.dir().join("cni-2.yaml"),
        format!("{}# the next version\n", kh_testbed::spec::CNI_MANIFEST),
    )
    .unwrap();
    let text = cluster_yaml("changes", &grown, "").replace("./cni.yaml", "./cni-2.yaml");
    let f = kh_testbed::spec::write(w.dir(), "cni.yaml-changed.yaml", &text).unwrap();
    let v = w.khctl_json(&["rollout", "-f", f.to_str().unwrap()]);
    assert_eq!(v["ok"], true, "{v:#}");
    let change = &v["plan"]["phases"][0]["steps"][0];
    assert_eq!(change["step"], "cni", "{v:#}");
    assert!(
        change["detail"]
            .as_str()
            .unwrap()
            .ends_with("it is applied again with `kubectl apply`"),
        "{v:#}"
    );
    let applied = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["step"] == "cni" && e["kind"] == "KIND_STEP_FINISHED")
        .count();
    assert_eq!(applied, 1, "{v:#}");
    // Applied once is enough: the same manifest again is no difference.
    let v = w.khctl_json(&["rollout", "-f", f.to_str().unwrap(), "--dry-run"]);
    assert_eq!(
        v["plan"]["phases"][0]["steps"],
        serde_json::json!([]),
        "{v:#}"
    );

    // The two steps the role-change refusal gives work: reset the worker,
    // then list it as a control plane.
    w.khctl(&["reset", "--node", "w-1", "--yes"])
        .expect_ok("khctl reset --node w-1");
    grown[3].role = "control-plane".into();
    let f = write(&w, "promoted.yaml", &grown, "");
    let v = w.khctl_json(&["rollout", "-f", f.to_str().unwrap(), "--allow-even"]);
    assert_eq!(v["ok"], true, "{v:#}");
    let role = &v["plan"]["phases"][0]["steps"][0];
    assert_eq!(role["node"], "w-1", "{v:#}");
    assert_eq!(role["state"], "pending", "{v:#}");
    assert_eq!(w.node("w-1").unwrap()["role"], "control-plane");
    let members = snapshot(&w, lb).etcd_members;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&members)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        4,
        "{members}"
    );
    let cfg = std::fs::read_to_string(w.agents[lb].path("/etc/haproxy/haproxy.cfg")).unwrap();
    assert!(
        cfg.contains(&format!("server w-1 {}:6443", nodes[3].ip)),
        "{cfg}"
    );
}

/// A host whose recorded role differs from the spec keeps that role when
/// the rollout stops at preflight: the registry changes only after it.
#[test]
fn a_role_is_recorded_only_after_preflight_passes() {
    let mut w = World::new(&[]);
    let cp = w.add_kube_node("cp-1");
    let lb = w.add_lb_node("lb-1");
    let f = write(
        &w,
        "prepare.yaml",
        &[node(&w, cp, "control-plane"), node(&w, lb, "loadbalancer")],
        "",
    );
    w.khctl(&["prepare", "-f", f.to_str().unwrap()])
        .expect_ok("khctl prepare");
    assert_eq!(w.node("lb-1").unwrap()["role"], "loadbalancer");

    // The load-balancer host, which has no Kubernetes tools, as a worker.
    let f = write(
        &w,
        "cluster.yaml",
        &[node(&w, cp, "control-plane"), node(&w, lb, "worker")],
        "",
    );
    let dry = rollout(&w, &f, &["--dry-run"]);
    assert!(dry.ok(), "{}\n{}", dry.stdout, dry.stderr);
    let line = "recorded as a loadbalancer, listed as a worker: it has not joined, so it is recorded as a worker once preflight passes";
    assert!(
        dry.stdout.contains("[pending] lb-1") && dry.stdout.contains(line),
        "{}",
        dry.stdout
    );
    let out = rollout(&w, &f, &[]);
    assert_eq!(
        out.code,
        Some(3),
        "preflight refuses\n{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(out.stdout.contains("nothing was changed"), "{}", out.stdout);
    assert_eq!(w.node("lb-1").unwrap()["role"], "loadbalancer");
    assert!(w.agents[lb].calls().iter().all(|c| !c.contains("kubeadm")));
}
