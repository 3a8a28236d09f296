//! etcd member replacement, `khctl health` and `khctl etcd ...` on the
//! testbed with real etcd.

use std::process::Command;
use std::time::Duration;

use kh_testbed::eventually;
use kh_testbed::hostroot::{self, HostSpec};
use kh_testbed::proc::Proc;
use kh_testbed::spec::{cluster_yaml, SpecNode};
use kh_testbed::world::{Out, World};

/// A rolled-out cluster of `cps` control planes and `workers` workers.
fn rolled_out(cps: usize, workers: usize) -> World {
    let mut w = World::new(&[]);
    let mut nodes = vec![];
    for (prefix, role, n) in [("cp", "control-plane", cps), ("w", "worker", workers)] {
        for i in 1..=n {
            let idx = w.add_kube_node(&format!("{prefix}-{i}"));
            nodes.push(SpecNode {
                name: format!("{prefix}-{i}"),
                role: role.into(),
                ip: w.agents[idx].ip.to_string(),
            });
        }
    }
    let spec =
        kh_testbed::spec::write(w.dir(), "cluster.yaml", &cluster_yaml("e2e", &nodes, "")).unwrap();
    let out = w.khctl(&["rollout", "-f", spec.to_str().unwrap()]);
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    w
}

fn idx(w: &World, name: &str) -> usize {
    w.agents.iter().position(|a| a.name == name).unwrap()
}

/// (name, isLearner) of every member, as the real etcdctl sees it through `via`.
fn members(w: &World, via: &str) -> Vec<(String, bool)> {
    let out = w.agents[idx(w, via)]
        .etcdctl(&[], &["member", "list", "-w", "json"])
        .expect_ok("member list");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
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

fn khctl_replace(w: &World, failed: &str, with: &str, extra: &[&str]) -> Out {
    let mut args = vec!["etcd", "replace", "--failed", failed, "--with", with];
    args.extend_from_slice(extra);
    w.khctl(&args)
}

#[test]
fn a_dead_control_plane_is_replaced_and_the_data_survives() {
    let mut w = rolled_out(3, 1);
    let cp1 = idx(&w, "cp-1");
    w.agents[cp1]
        .etcdctl(&[], &["put", "kh-e2e/key", "precious"])
        .expect_ok("put");
    w.agent("cp-2").power_off();

    // health names the dead member and the fix.
    let h = eventually("health to notice cp-2", Duration::from_secs(30), || {
        let out = w.khctl(&["health"]);
        if !out.ok() && out.stdout.contains("of cp-2 is unhealthy") {
            Ok(out)
        } else {
            Err(format!("{}{}", out.stdout, out.stderr))
        }
    });
    assert!(
        h.stdout
            .contains("fix: khctl etcd replace --failed cp-2 --with <new-node>"),
        "{}",
        h.stdout
    );
    let members_json = w.khctl_json(&["etcd", "members"]);
    let cp2 = members_json["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["node"] == "cp-2")
        .unwrap()
        .clone();
    assert_eq!(cp2["healthy"], false);
    assert!(
        u64::from_str_radix(cp2["id"].as_str().unwrap(), 16).is_ok(),
        "hex ID: {cp2}"
    );

    w.add_kube_node("cp-4");
    let out = khctl_replace(&w, "cp-2", "cp-4", &[]);
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("Replacement complete"),
        "{}",
        out.stdout
    );
    assert_eq!(
        members(&w, "cp-1"),
        [
            ("cp-1".into(), false),
            ("cp-3".into(), false),
            ("cp-4".into(), false)
        ]
    );
    let got = w.agents[cp1]
        .etcdctl(&[], &["get", "kh-e2e/key", "--print-value-only"])
        .expect_ok("get");
    assert_eq!(got.stdout.trim(), "precious");
    let h = w.khctl(&["health"]);
    assert!(h.ok(), "{}{}", h.stdout, h.stderr);
    // The audit log has every step.
    let hist = w.khctl_json(&["history"]);
    let steps: Vec<&str> = hist["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["operation"] == "etcd replace cp-2 with cp-4")
        .map(|e| e["step"].as_str().unwrap())
        .collect();
    for s in [
        "preconditions",
        "snapshot",
        "remove-member",
        "delete-node",
        "join-control-plane",
        "update-spec",
        "verify",
    ] {
        assert!(steps.contains(&s), "{s} missing from {steps:?}");
    }
    // The snapshot taken before the first change is stored, with the key.
    let snaps = w.khctl_json(&["etcd", "snapshot", "list"]);
    let before: Vec<&serde_json::Value> = snaps["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["reason"] == "before etcd replace")
        .collect();
    assert_eq!(before.len(), 1, "{snaps}");
    assert!(before[0]["totalKeys"].as_i64().unwrap() > 0, "{snaps}");
}

#[test]
fn a_live_control_plane_is_removed_reset_and_its_etcd_stops() {
    let mut w = rolled_out(3, 0);
    w.add_kube_node("cp-4");
    // Healthy member: removing it leaves a cluster that cannot lose another.
    let out = khctl_replace(&w, "cp-2", "cp-4", &[]);
    assert!(!out.ok());
    assert!(
        format!("{}{}", out.stdout, out.stderr).contains("without --force"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(members(&w, "cp-1").len(), 3, "nothing changed");

    let out = khctl_replace(&w, "cp-2", "cp-4", &["--force"]);
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        members(&w, "cp-1"),
        [
            ("cp-1".into(), false),
            ("cp-3".into(), false),
            ("cp-4".into(), false)
        ]
    );
    let cp2 = &w.agents[idx(&w, "cp-2")];
    assert!(
        cp2.calls().iter().any(|c| c.starts_with("kubeadm reset")),
        "{:?}",
        cp2.calls()
    );
    assert!(!cp2.path("/etc/kubernetes/manifests/etcd.yaml").exists());
    eventually("cp-2's etcd to exit", Duration::from_secs(20), || {
        match std::net::TcpStream::connect_timeout(
            &format!("{}:2379", cp2.ip).parse().unwrap(),
            Duration::from_millis(200),
        ) {
            Err(_) => Ok(()),
            Ok(_) => Err("still listening".into()),
        }
    });
}

#[test]
fn without_quorum_the_replacement_is_refused_and_nothing_changes() {
    let mut w = rolled_out(3, 0);
    w.add_kube_node("cp-4");
    w.agent("cp-2").power_off();
    w.agent("cp-3").power_off();
    let out = khctl_replace(&w, "cp-2", "cp-4", &["--force"]);
    assert!(!out.ok());
    assert_eq!(
        out.code,
        Some(3),
        "refused before anything changed (exit 3)\n{}{}",
        out.stdout,
        out.stderr
    );
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(text.contains("lost quorum"), "{text}");
    assert!(text.contains("khctl etcd restore --snapshot"), "{text}");
    // Bring the two back: all three members are still there.
    for n in ["cp-2", "cp-3"] {
        let a = w.agent(n);
        a.start_kubelet();
        a.start();
    }
    eventually("quorum back", Duration::from_secs(60), || {
        let out = w.agents[0].etcdctl(&[], &["member", "list"]);
        if out.ok() && out.stdout.lines().count() == 3 {
            Ok(())
        } else {
            Err(out.stderr)
        }
    });
    let hist = w.khctl_json(&["history"]);
    assert!(
        !hist["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["step"] == "remove-member"),
        "{hist}"
    );
}

#[test]
fn a_replacement_resumes_after_the_coordinator_dies_between_removal_and_join() {
    let mut w = rolled_out(3, 0);
    w.agent("cp-2").power_off();
    w.add_kube_node("cp-4");
    let mut cmd = Command::new(kh_testbed::bin("khctl"));
    cmd.arg("--config")
        .arg(&w.coordinator.admin)
        .args(["etcd", "replace", "--failed", "cp-2", "--with", "cp-4"]);
    let mut khctl = Proc::spawn("khctl etcd replace", cmd, &w.dir().join("replace.log"));
    // Kill the coordinator as soon as the member is gone, before cp-4 joins.
    eventually(
        "cp-2's member to be removed",
        Duration::from_secs(60),
        || {
            let ms = members(&w, "cp-1");
            if ms.len() == 2 {
                Ok(())
            } else {
                Err(format!("{ms:?}"))
            }
        },
    );
    w.coordinator.kill9();
    // The follower says the coordinator went away and to re-run the command.
    eventually("khctl to end", Duration::from_secs(30), || {
        if khctl.is_running() {
            Err("running".to_string())
        } else {
            Ok(())
        }
    });
    let code = khctl.terminate(Duration::from_secs(1));
    let log = khctl.log_text();
    assert_eq!(code, Some(5), "{log}");
    assert!(
        log.contains("the coordinator closed the connection (it stopped or restarted)"),
        "{log}"
    );
    assert!(
        !w.agents[idx(&w, "cp-4")]
            .calls()
            .iter()
            .any(|c| c.starts_with("kubeadm join")),
        "killed before the join"
    );
    w.coordinator.start();
    // It removed a member: it is pending, can only be resumed, and says how.
    let ops = w.khctl_json(&["operation", "status"]);
    let op = ops["operations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "etcd-replace")
        .cloned()
        .unwrap_or_else(|| panic!("{ops}"));
    assert_eq!(op["pending"], true, "{op}");
    assert_eq!(op["changed"], true, "{op}");
    assert_eq!(op["state"], "interrupted", "{op}");
    assert!(
        op["next"]
            .as_str()
            .unwrap()
            .contains("`khctl etcd replace --failed cp-2 --with cp-4`"),
        "{op}"
    );
    // `rollout status` names it too.
    let st = w.khctl(&["rollout", "status"]);
    assert!(
        st.stdout.contains(
            "Pending: etcd replace cp-2 with cp-4 (interrupted): it has changed the cluster"
        ),
        "{}",
        st.stdout
    );
    let out = w.khctl(&["operation", "cancel"]);
    assert_eq!(out.code, Some(3), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("cannot be cancelled")
            && out
                .stderr
                .contains("Finish it with `khctl etcd replace --failed cp-2 --with cp-4`"),
        "{}",
        out.stderr
    );
    let out = khctl_replace(&w, "cp-3", "cp-4", &["--force"]);
    assert_eq!(out.code, Some(3), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("finish it first: `khctl etcd replace --failed cp-2 --with cp-4`"),
        "{}",
        out.stderr
    );
    let out = khctl_replace(&w, "cp-2", "cp-4", &[]);
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        members(&w, "cp-1"),
        [
            ("cp-1".into(), false),
            ("cp-3".into(), false),
            ("cp-4".into(), false)
        ]
    );
    // The resumed run did not remove a second member.
    let hist = w.khctl_json(&["history"]);
    let removals = hist["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["step"] == "remove-member" && e["outcome"] == "done")
        .count();
    assert_eq!(removals, 1, "{hist}");
}

#[test]
fn a_rebuilt_host_rejoins_in_place_under_its_own_name() {
    let mut w = rolled_out(3, 0);
    let i = idx(&w, "cp-2");
    w.agents[i].power_off();
    // The host is rebuilt: a wiped root, a fresh agent identity.
    let (root, data) = (w.agents[i].root.clone(), w.agents[i].data_dir.clone());
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::remove_dir_all(&data).unwrap();
    hostroot::create(&root, &HostSpec::numbered("cp-2", 2)).unwrap();
    w.agents[i].install_kube_doubles();
    let (tok, hash, addr) = w.token("cp-2", &["--force"]);
    w.enroll(i, &tok, &hash, &addr, &[])
        .expect_ok("re-enroll cp-2");
    w.agents[i].start_kubelet();
    w.agents[i].start();
    w.wait_health("cp-2", "Ready", Duration::from_secs(30));

    let out = khctl_replace(&w, "cp-2", "cp-2", &[]);
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        members(&w, "cp-1"),
        [
            ("cp-1".into(), false),
            ("cp-2".into(), false),
            ("cp-3".into(), false)
        ]
    );
    let h = w.khctl(&["health"]);
    assert!(h.ok(), "{}{}", h.stdout, h.stderr);
}

#[test]
fn remove_member_keeps_quorum_and_names_members_by_node_or_id() {
    let mut w = rolled_out(3, 0);
    // A healthy member needs --force.
    let out = w.khctl(&["etcd", "remove-member", "cp-3"]);
    assert!(!out.ok());
    assert!(out.stderr.contains("without --force"), "{}", out.stderr);
    w.agent("cp-3").power_off();
    let id = eventually("cp-3 unhealthy", Duration::from_secs(30), || {
        let v = w.khctl_json(&["etcd", "members"]);
        let m = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["node"] == "cp-3")
            .cloned()
            .ok_or("no cp-3")?;
        if m["healthy"] == false {
            Ok(m["id"].as_str().unwrap().to_string())
        } else {
            Err(format!("{m}"))
        }
    });
    let out = w.khctl(&["etcd", "remove-member", &id]);
    assert!(out.ok(), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(&format!("removed etcd member {id}")),
        "{}",
        out.stdout
    );
    assert_eq!(members(&w, "cp-1").len(), 2);
    let out = w.khctl(&["etcd", "remove-member", "nope"]);
    assert!(
        out.stderr.contains("no etcd member \"nope\""),
        "{}",
        out.stderr
    );
}

#[test]
fn a_rollout_and_a_replacement_never_run_together() {
    let mut w = rolled_out(3, 0);
    w.agent("cp-2").power_off();
    w.add_kube_node("cp-4");
    let spec = w.dir().join("cluster.yaml");
    let mut cmd = Command::new(kh_testbed::bin("khctl"));
    cmd.arg("--config")
        .arg(&w.coordinator.admin)
        .args(["etcd", "replace", "--failed", "cp-2", "--with", "cp-4"]);
    let mut replace = Proc::spawn("khctl etcd replace", cmd, &w.dir().join("replace.log"));
    eventually("the replacement to run", Duration::from_secs(30), || {
        let st = w.khctl(&["rollout", "status"]);
        if st.stdout.contains("etcd replace")
            || st.stdout.contains("preconditions")
            || st.stdout.contains("remove")
        {
            Ok(())
        } else {
            Err(st.stdout)
        }
    });
    let rollout = w.khctl(&["rollout", "-f", spec.to_str().unwrap()]);
    assert!(!rollout.ok());
    assert!(
        rollout.stderr.contains("is already running") || rollout.stderr.contains("is running"),
        "{}",
        rollout.stderr
    );
    eventually(
        "the replacement to finish",
        Duration::from_secs(120),
        || {
            if replace.is_running() {
                Err("running".into())
            } else {
                Ok(())
            }
        },
    );
    let log = replace.log_text();
    assert!(log.contains("Replacement complete"), "{log}");
}

#[test]
fn a_quorum_refusal_leaves_nothing_pending_and_exits_3_for_replace_and_remove_member() {
    let mut w = rolled_out(3, 0);
    w.add_kube_node("cp-4");
    w.agent("cp-2").power_off();
    w.agent("cp-3").power_off();
    let out = khctl_replace(&w, "cp-2", "cp-4", &["--force"]);
    let text = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, Some(3), "{text}");
    assert!(text.contains("nothing is left pending"), "{text}");
    let out = w.khctl(&["etcd", "remove-member", "cp-2", "--force"]);
    assert_eq!(
        out.code,
        Some(3),
        "the same refusal, the same exit code\n{}{}",
        out.stdout,
        out.stderr
    );
    assert!(out.stderr.contains("quorum"), "{}", out.stderr);
    // Nothing is pending: another replacement is refused for quorum only,
    // not told to finish the first.
    let ops = w.khctl_json(&["operation", "status"]);
    assert!(
        !ops["operations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["pending"] == true),
        "{ops}"
    );
    let out = khctl_replace(&w, "cp-3", "cp-4", &["--force"]);
    let text = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, Some(3), "{text}");
    assert!(!text.contains("did not finish"), "{text}");
    assert!(text.contains("quorum"), "{text}");
    let out = w.khctl(&["operation", "cancel"]);
    assert!(
        out.stderr.contains("no operation is pending"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_failed_replacement_advises_running_the_replacement_again() {
    let mut w = rolled_out(3, 0);
    w.agent("cp-2").power_off();
    w.add_kube_node("cp-4");
    // The member is removed, then deleting the Node through cp-1 fails.
    let cp1 = idx(&w, "cp-1");
    w.agents[cp1].fail_tool("kubectl", "error: injected failure\n");
    let out = khctl_replace(&w, "cp-2", "cp-4", &[]);
    assert_eq!(out.code, Some(4), "{}{}", out.stdout, out.stderr);
    let next = out
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("next:"))
        .unwrap_or_else(|| panic!("no next step:\n{}", out.stdout));
    assert!(
        next.contains("run `khctl etcd replace --failed cp-2 --with cp-4` again"),
        "{next}"
    );
    assert!(next.contains("stays pending"), "{next}");
    assert!(!next.contains("khctl rollout"), "{next}");
    std::fs::remove_file(w.agents[cp1].node_dir().join("fail/kubectl")).unwrap();
    let out = khctl_replace(&w, "cp-2", "cp-4", &[]);
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
}
