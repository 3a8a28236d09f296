//! `khctl health` on whole clusters with real etcd and a real HAProxy: it
//! names the control-plane endpoint when HAProxy is down, names the down
//! members when quorum is lost, never advises replacing a running member,
//! advises resuming an unfinished replacement with its own command; and
//! `khctl nodes` shows a replaced node retired until `khctl nodes delete`
//! deregisters it and revokes its certificate.

use std::process::Command;
use std::time::Duration;

use kh_testbed::eventually;
use kh_testbed::proc::Proc;
use kh_testbed::spec::{cluster_yaml, SpecNode};
use kh_testbed::world::{Out, World};

const T: Duration = Duration::from_secs(90);

fn node(w: &World, idx: usize, role: &str) -> SpecNode {
    SpecNode {
        name: w.agents[idx].name.clone(),
        role: role.into(),
        ip: w.agents[idx].ip.to_string(),
    }
}

fn idx(w: &World, name: &str) -> usize {
    w.agents.iter().position(|a| a.name == name).unwrap()
}

/// Three control planes, optionally behind HAProxy on lb-1, rolled out.
fn rolled_out(with_lb: bool) -> World {
    let mut w = World::new(&[]);
    let mut nodes = vec![];
    for i in 1..=3 {
        let idx = w.add_kube_node(&format!("cp-{i}"));
        nodes.push(node(&w, idx, "control-plane"));
    }
    if with_lb {
        let lb = w.add_lb_node("lb-1");
        nodes.push(node(&w, lb, "loadbalancer"));
    }
    let spec =
        kh_testbed::spec::write(w.dir(), "cluster.yaml", &cluster_yaml("hc", &nodes, "")).unwrap();
    let out = w.khctl(&["rollout", "-f", spec.to_str().unwrap()]);
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    w
}

/// `khctl health` until `done` holds for its output.
fn health_until(w: &World, what: &str, done: impl Fn(&Out) -> bool) -> Out {
    eventually(what, T, || {
        let out = w.khctl(&["health"]);
        if done(&out) {
            Ok(out)
        } else {
            Err(format!("{}{}", out.stdout, out.stderr))
        }
    })
}

/// The line of check `name` and its fix line, if any.
fn check_lines(out: &Out, name: &str) -> String {
    let mut lines = out.stdout.lines();
    let mut found = String::new();
    while let Some(l) = lines.next() {
        if l.split_whitespace().nth(1) == Some(name) {
            found.push_str(l);
            if let Some(next) = lines
                .clone()
                .next()
                .filter(|n| n.trim_start().starts_with("fix:"))
            {
                found.push('\n');
                found.push_str(next);
                lines.next();
            }
        }
    }
    found
}

fn systemctl(w: &World, host: &str, verb: &str) {
    let mut cmd = w.agents[idx(w, host)].tool("systemctl");
    cmd.args([verb, "haproxy"]);
    kh_testbed::world::run(cmd).expect_ok(&format!("systemctl {verb} haproxy on {host}"));
}

#[test]
fn health_names_the_endpoint_when_haproxy_is_down_and_the_down_members_when_quorum_is_lost() {
    let mut w = rolled_out(true);
    let lb_ip = w.agents[idx(&w, "lb-1")].ip;
    let h = health_until(&w, "a healthy cluster", |o| o.ok());
    assert!(
        check_lines(&h, "control-plane-endpoint").starts_with("ok"),
        "{}",
        h.stdout
    );
    assert!(
        check_lines(&h, "load-balancer-backends")
            .contains("every ready control plane is a backend (cp-1, cp-2, cp-3)"),
        "{}",
        h.stdout
    );

    // HAProxy stops: the endpoint and lb-1 are named, with the fix.
    systemctl(&w, "lb-1", "stop");
    let h = health_until(&w, "health to notice HAProxy", |o| {
        !o.ok() && o.stdout.contains("control-plane-endpoint")
    });
    assert_eq!(h.code, Some(4), "{}{}", h.stdout, h.stderr);
    let ep = check_lines(&h, "control-plane-endpoint");
    assert!(ep.starts_with("FAIL"), "{}", h.stdout);
    assert!(
        ep.contains(&format!(
            "the control-plane endpoint {lb_ip}:6443 does not answer"
        )),
        "{ep}"
    );
    assert!(ep.contains("served by HAProxy on lb-1"), "{ep}");
    assert!(ep.contains("fix: check HAProxy on lb-1"), "{ep}");
    assert!(ep.contains("systemctl start haproxy"), "{ep}");
    let lb = check_lines(&h, "load-balancer-backends");
    assert!(lb.contains("lb-1: HAProxy is not running"), "{}", h.stdout);
    assert!(
        !h.stdout.contains("no control plane answered kubectl"),
        "{}",
        h.stdout
    );
    assert!(
        check_lines(&h, "nodes-ready").contains("control-plane endpoint, which fails"),
        "{}",
        h.stdout
    );
    // Nothing else is blamed.
    for ok in [
        "etcd-quorum",
        "apiservers-ready",
        "etcd-members-match-control-planes",
    ] {
        assert!(check_lines(&h, ok).starts_with("ok"), "{ok}:\n{}", h.stdout);
    }

    systemctl(&w, "lb-1", "start");
    health_until(&w, "health again with HAProxy back", |o| o.ok());

    // Two of three control planes lose power: quorum is lost; cp-1 runs and
    // must never be advised to be replaced.
    w.agent("cp-2").power_off();
    w.agent("cp-3").power_off();
    // The two go down one after the other; wait for both to be seen.
    let h = health_until(&w, "health to see quorum lost", |o| {
        o.stdout
            .contains("etcd quorum lost: 1 of 3 members running")
    });
    let q = check_lines(&h, "etcd-quorum");
    assert!(
        q.contains("etcd quorum lost: 1 of 3 members running (cp-2, cp-3 down); quorum needs 2"),
        "{}",
        h.stdout
    );
    assert!(q.contains("fix: start cp-2 and cp-3 again"), "{q}");
    assert!(!h.stdout.contains("members agree"), "{}", h.stdout);
    assert!(!h.stdout.contains("--failed cp-1"), "{}", h.stdout);
    assert!(!h.stdout.contains("khctl etcd replace"), "{}", h.stdout);
}

#[test]
fn replacement_advice_retired_nodes_and_nodes_delete() {
    let mut w = rolled_out(false);
    w.agent("cp-2").power_off();
    // Only the dead member is to be replaced; cp-1 and cp-3 never are.
    let h = health_until(&w, "health to notice cp-2", |o| {
        o.stdout.contains("of cp-2 is unhealthy")
    });
    assert!(
        h.stdout
            .contains("khctl etcd replace --failed cp-2 --with <new-node>"),
        "{}",
        h.stdout
    );
    for healthy in ["--failed cp-1", "--failed cp-3"] {
        assert!(!h.stdout.contains(healthy), "{}", h.stdout);
    }

    // A replacement stops between removing cp-2's member and joining cp-4.
    w.add_kube_node("cp-4");
    let mut cmd = Command::new(kh_testbed::bin("khctl"));
    cmd.arg("--config")
        .arg(&w.coordinator.admin)
        .args(["etcd", "replace", "--failed", "cp-2", "--with", "cp-4"]);
    let mut khctl = Proc::spawn("khctl etcd replace", cmd, &w.dir().join("replace.log"));
    // The replacement retires cp-2 as soon as its member is removed, well
    // before cp-4 joins: stop the coordinator then.
    eventually("cp-2 to be retired", T, || {
        let nodes = w.khctl_json(&["nodes"]);
        let retired = nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "cp-2" && n["retired"] == true);
        if retired {
            Ok(())
        } else {
            Err(format!("{nodes}"))
        }
    });
    w.coordinator.kill9();
    khctl.terminate(Duration::from_secs(5));
    w.coordinator.start();

    // The fix is the replacement's own command, never `--with cp-2`.
    let h = health_until(&w, "health to advise resuming", |o| {
        o.stdout.contains("etcd-replacement-finished")
    });
    assert!(!h.ok());
    let r = check_lines(&h, "etcd-replacement-finished");
    assert!(r.starts_with("FAIL"), "{}", h.stdout);
    assert!(
        r.contains("etcd replace cp-2 with cp-4 did not finish"),
        "{r}"
    );
    assert!(
        r.contains("fix: khctl etcd replace --failed cp-2 --with cp-4 "),
        "{r}"
    );
    assert!(
        check_lines(&h, "etcd-members-match-control-planes").contains(
            "resume the unfinished replacement: khctl etcd replace --failed cp-2 --with cp-4"
        ),
        "{}",
        h.stdout
    );
    assert!(!h.stdout.contains("--with cp-2"), "{}", h.stdout);
    assert!(!h.stdout.contains("--with <new-node>"), "{}", h.stdout);
    let out = w.agents[0].etcdctl(&[], &["member", "list"]);
    assert_eq!(
        out.stdout.lines().count(),
        2,
        "cp-2's member is gone\n{}",
        out.stdout
    );
    assert!(
        !w.agents[idx(&w, "cp-4")]
            .calls()
            .iter()
            .any(|c| c.starts_with("kubeadm join")),
        "stopped before cp-4 joined"
    );

    // Retired, but the unfinished replacement still needs it.
    let out = w.khctl(&["nodes", "delete", "cp-2"]);
    assert!(!out.ok());
    assert!(
        out.stderr
            .contains("finish it first with `khctl etcd replace --failed cp-2 --with cp-4`"),
        "{}",
        out.stderr
    );

    let out = w.khctl(&["etcd", "replace", "--failed", "cp-2", "--with", "cp-4"]);
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    let h = health_until(&w, "a healthy cluster", |o| o.ok());
    assert!(
        check_lines(&h, "etcd-replacement-finished").contains("no unfinished etcd replacement"),
        "{}",
        h.stdout
    );

    // `khctl nodes` shows cp-2 retired, in the table and in JSON.
    let table = w.khctl(&["nodes"]).expect_ok("nodes").stdout;
    let row = table
        .lines()
        .find(|l| l.starts_with("cp-2 "))
        .unwrap_or_default();
    assert!(row.contains("retired"), "{table}");
    assert!(
        table.contains(
            "RETIRED cp-2: replaced by cp-4 (etcd replace cp-2 with cp-4); deregister it with `khctl nodes delete cp-2`"
        ),
        "{table}"
    );
    let nodes = w.khctl_json(&["nodes"]);
    let by_name = |n: &str| {
        nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == n)
            .cloned()
    };
    assert_eq!(by_name("cp-2").unwrap()["retired"], true);
    assert_eq!(
        by_name("cp-2").unwrap()["retiredReason"],
        "replaced by cp-4 (etcd replace cp-2 with cp-4)"
    );
    assert_eq!(by_name("cp-4").unwrap()["retired"], false);

    // A joined control plane cannot be deleted; the retired one can.
    let out = w.khctl(&["nodes", "delete", "cp-1"]);
    assert!(!out.ok());
    assert!(
        out.stderr.contains("refusing to delete node cp-1")
            && out.stderr.contains("khctl etcd replace --failed cp-1"),
        "{}",
        out.stderr
    );
    let out = w.khctl(&["nodes", "delete", "cp-2"]);
    assert!(out.ok(), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("deleted node cp-2: its certificate (serial"),
        "{}",
        out.stdout
    );
    let nodes = w.khctl_json(&["nodes"]);
    assert!(
        !nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "cp-2"),
        "{nodes}"
    );
    let hist = w.khctl_json(&["history"]);
    assert!(
        hist["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["operation"] == "nodes delete cp-2" && e["outcome"] == "done"),
        "{hist}"
    );

    // cp-2's host comes back with its old certificate: refused.
    w.agent("cp-2").start();
    let log = eventually("cp-2's heartbeat to be refused", T, || {
        let log = w.agents[idx(&w, "cp-2")].log_text();
        if log.contains("the coordinator no longer accepts this agent's certificate") {
            Ok(log)
        } else {
            Err(log)
        }
    });
    assert!(log.contains("node cp-2 is not enrolled"), "{log}");
    let nodes = w.khctl_json(&["nodes"]);
    assert!(
        !nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "cp-2"),
        "a refused heartbeat registers nothing: {nodes}"
    );
}
