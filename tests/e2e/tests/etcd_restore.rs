//! `khctl etcd restore` on the testbed: real etcd 3.4 and its own
//! `etcdctl snapshot status/restore`, the kubelet double stopping and
//! starting the static pods as their manifests move. One 3-control-plane
//! cluster carries every case in order: refused while healthy, a bad
//! snapshot refused before anything stops, the restore after quorum is lost
//! with a coordinator killed in the middle and resumed, and a timed forced
//! restore (docs/BENCHMARKS.md).

use std::process::Command;
use std::time::{Duration, Instant};

use kh_testbed::eventually;
use kh_testbed::proc::Proc;
use kh_testbed::spec::{cluster_yaml, SpecNode};
use kh_testbed::world::World;

const CPS: [&str; 3] = ["cp-1", "cp-2", "cp-3"];

fn rolled_out() -> World {
    let mut w = World::new(&[]);
    let mut nodes = vec![];
    for name in CPS {
        let idx = w.add_kube_node(name);
        nodes.push(SpecNode {
            name: name.into(),
            role: "control-plane".into(),
            ip: w.agents[idx].ip.to_string(),
        });
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

/// Member names as the real etcdctl sees them through `via`.
fn members(w: &World, via: &str) -> Result<Vec<String>, String> {
    let out = w.agents[idx(w, via)].etcdctl(&[], &["member", "list", "-w", "json"]);
    if !out.ok() {
        return Err(out.stderr);
    }
    let v: serde_json::Value = serde_json::from_str(&out.stdout).map_err(|e| e.to_string())?;
    let mut names: Vec<String> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap_or_default().to_string())
        .collect();
    names.sort();
    Ok(names)
}

fn get(w: &World, key: &str) -> String {
    w.agents[idx(w, "cp-1")]
        .etcdctl(&[], &["get", key, "--print-value-only"])
        .expect_ok("etcdctl get")
        .stdout
        .trim()
        .to_string()
}

fn manifests_in_place(w: &World) -> Vec<(String, bool)> {
    CPS.iter()
        .map(|n| {
            let a = &w.agents[idx(w, n)];
            (
                n.to_string(),
                a.path("/etc/kubernetes/manifests/etcd.yaml").exists()
                    && a.path("/etc/kubernetes/manifests/kube-apiserver.yaml")
                        .exists(),
            )
        })
        .collect()
}

fn restore_pending(w: &World) -> Option<serde_json::Value> {
    let ops = w.khctl_json(&["operation", "status"]);
    ops["operations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "etcd-restore" && o["pending"] == true)
        .cloned()
}

/// The old data dirs a restore moved aside on `node`.
fn old_dirs(w: &World, node: &str) -> Vec<std::path::PathBuf> {
    let lib = w.agents[idx(w, node)].path("/var/lib");
    std::fs::read_dir(&lib)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("etcd.kh-old-")
        })
        .collect()
}

#[test]
fn etcd_is_restored_after_quorum_loss_and_a_restore_resumes_after_a_coordinator_kill() {
    let mut w = rolled_out();
    let cp1 = idx(&w, "cp-1");
    w.agents[cp1]
        .etcdctl(&[], &["put", "kh-e2e/a", "before"])
        .expect_ok("put a");
    let snap = w.khctl_json(&["etcd", "snapshot", "save"]);
    let id = snap["id"].as_str().unwrap().to_string();
    w.agents[cp1]
        .etcdctl(&[], &["put", "kh-e2e/b", "after"])
        .expect_ok("put b");

    // Refused on a healthy cluster without --force: nothing stopped, nothing
    // pending.
    let out = w.khctl(&["etcd", "restore", "--snapshot", &id, "--yes"]);
    let text = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, Some(3), "{text}");
    assert!(text.contains("loses every write made since it"), "{text}");
    assert!(text.contains("--force"), "{text}");
    assert!(restore_pending(&w).is_none());
    assert!(manifests_in_place(&w).iter().all(|(_, ok)| *ok));
    // Without --yes and without a terminal: refused, and says to add --yes.
    let out = w.khctl(&["etcd", "restore", "--snapshot", &id]);
    assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("pass --yes"), "{}", out.stderr);

    // A file that passes the store's integrity trailer but is no etcd
    // database: every node's `etcdctl snapshot status` refuses it, before
    // anything is stopped.
    let mut bad = vec![0x5au8; 8192];
    let digest = ring::digest::digest(&ring::digest::SHA256, &bad);
    bad.extend_from_slice(digest.as_ref());
    let bad_file = w.dir().join("bad.db");
    std::fs::write(&bad_file, &bad).unwrap();
    let out = w.khctl(&[
        "etcd",
        "restore",
        "--snapshot",
        bad_file.to_str().unwrap(),
        "--yes",
        "--force",
    ]);
    let text = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, Some(3), "{text}");
    assert!(text.contains("refused on"), "{text}");
    assert!(text.contains("nothing was stopped"), "{text}");
    assert!(manifests_in_place(&w).iter().all(|(_, ok)| *ok));
    // No copy of it stays on any node.
    for n in CPS {
        let dir = w.agents[idx(&w, n)].path("/var/lib/kh-agent");
        let left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|f| f.starts_with("etcd-restore-"))
            .collect();
        assert!(left.is_empty(), "{n}: {left:?}");
    }
    assert_eq!(members(&w, "cp-1").unwrap(), CPS);
    assert!(restore_pending(&w).is_none());

    // Quorum lost: two control planes die and lose their etcd data. Their
    // agents come back; their kubelets only once the restore has moved the
    // manifests aside: real etcd 3.4 started on an empty data dir with
    // `--initial-cluster-state=existing` rejoins the surviving member and
    // would bring quorum back by itself.
    for n in ["cp-2", "cp-3"] {
        w.agent(n).power_off();
        let data = w.agent(n).path("/var/lib/etcd");
        std::fs::remove_dir_all(&data).unwrap();
        w.agent(n).start();
    }
    eventually(
        "health to see the lost quorum",
        Duration::from_secs(60),
        || {
            let out = w.khctl(&["health"]);
            if !out.ok() {
                Ok(())
            } else {
                Err(out.stdout)
            }
        },
    );

    // The restore, with the coordinator killed once every pod is stopped
    // (the agents finish the step they run).
    let mut cmd = Command::new(kh_testbed::bin("khctl"));
    cmd.arg("--config").arg(&w.coordinator.admin).args([
        "etcd",
        "restore",
        "--snapshot",
        &id,
        "--yes",
    ]);
    let mut khctl = Proc::spawn("khctl etcd restore", cmd, &w.dir().join("restore.log"));
    eventually(
        "every etcd manifest to be moved aside",
        Duration::from_secs(120),
        || {
            let placed = manifests_in_place(&w);
            if placed.iter().all(|(_, ok)| !*ok) {
                Ok(())
            } else if !khctl.is_running() {
                panic!("khctl ended early:\n{}", khctl.log_text());
            } else {
                Err(format!("{placed:?}"))
            }
        },
    );
    w.coordinator.kill9();
    for n in ["cp-2", "cp-3"] {
        w.agent(n).start_kubelet();
    }
    eventually("khctl to end", Duration::from_secs(30), || {
        if khctl.is_running() {
            Err("running".to_string())
        } else {
            Ok(())
        }
    });
    let code = khctl.terminate(Duration::from_secs(1));
    assert_eq!(code, Some(5), "{}", khctl.log_text());
    w.coordinator.start();
    let op = restore_pending(&w).expect("the restore is pending");
    assert_eq!(op["changed"], true, "{op}");
    let resume = format!("khctl etcd restore --snapshot {id} --yes");
    assert!(op["next"].as_str().unwrap().contains(&resume), "{op}");
    let h = w.khctl(&["health"]);
    assert!(!h.ok());
    assert!(
        h.stdout.contains("etcd-restore-finished") && h.stdout.contains(&resume),
        "{}",
        h.stdout
    );

    let out = w.khctl(&["etcd", "restore", "--snapshot", &id, "--yes"]);
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("Restore complete"), "{}", out.stdout);

    // One 3-member cluster, with the key written before the snapshot and
    // without the one written after it.
    for n in CPS {
        assert_eq!(members(&w, n).unwrap(), CPS, "members through {n}");
    }
    assert_eq!(get(&w, "kh-e2e/a"), "before");
    assert_eq!(get(&w, "kh-e2e/b"), "");
    eventually("khctl health to pass", Duration::from_secs(60), || {
        let out = w.khctl(&["health"]);
        if out.ok() {
            Ok(())
        } else {
            Err(out.stdout)
        }
    });
    // The old data is moved aside on every node, never deleted: cp-1's holds
    // its database.
    for n in CPS {
        assert_eq!(old_dirs(&w, n).len(), 1, "{n}");
    }
    assert!(old_dirs(&w, "cp-1")[0].join("member/snap/db").exists());
    for n in CPS {
        let a = &w.agents[idx(&w, n)];
        let left: Vec<String> = std::fs::read_dir(a.path("/var/lib/kh-agent"))
            .unwrap()
            .chain(std::fs::read_dir(a.path("/etc/kubernetes")).unwrap())
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|f| f.contains("etcd-restore-"))
            .collect();
        assert!(left.is_empty(), "{n}: {left:?}");
    }
    assert!(restore_pending(&w).is_none());
    let hist = w.khctl_json(&["history"]);
    let steps: Vec<String> = hist["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["operation"] == format!("etcd restore {id}").as_str())
        .map(|e| {
            format!(
                "{}/{}",
                e["node"].as_str().unwrap(),
                e["step"].as_str().unwrap()
            )
        })
        .collect();
    for n in CPS {
        for s in ["receive-snapshot", "stop", "restore", "start"] {
            assert!(steps.contains(&format!("{n}/{s}")), "{n}/{s} in {steps:?}");
        }
    }
    assert!(steps.contains(&"cluster/verify".to_string()), "{steps:?}");

    // A forced restore over the healthy cluster from the snapshot as a file
    // (stored on the coordinator first), timed for BENCHMARKS.md.
    let file = w.dir().join("snap.db");
    w.khctl(&["etcd", "snapshot", "get", &id, "-o", file.to_str().unwrap()])
        .expect_ok("snapshot get");
    let t0 = Instant::now();
    let out = w.khctl(&[
        "etcd",
        "restore",
        "--snapshot",
        file.to_str().unwrap(),
        "--yes",
        "--force",
        "-o",
        "json",
    ]);
    let wall = t0.elapsed();
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    // Steps of a phase run in parallel, so a phase takes its slowest; the
    // stop phase stops the leader after the others: its slowest other step
    // plus the leader's (the last to finish).
    let mut split = vec![];
    for phase in ["distribute", "stop", "restore", "start", "verify"] {
        let ms: Vec<u64> = v["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["phase"] == phase && e["kind"] == "KIND_STEP_FINISHED")
            .filter_map(|e| e["elapsedMs"].as_u64())
            .collect();
        let wall = match (phase, ms.split_last()) {
            ("stop", Some((leader, others))) => leader + others.iter().max().unwrap_or(&0),
            _ => ms.iter().copied().max().unwrap_or(0),
        };
        split.push(format!("{phase} {wall} ms"));
    }
    eprintln!(
        "BENCH etcd restore of 3 members: {} ms from the command to healthy; {}",
        wall.as_millis(),
        split.join(", ")
    );
    assert_eq!(get(&w, "kh-e2e/a"), "before");
    for n in CPS {
        assert_eq!(old_dirs(&w, n).len(), 2, "{n}");
    }

    // A control plane that does not answer is left out of a restore, and
    // the advice to add it back works: reset it, then roll out.
    w.agent("cp-3").power_off();
    let out = w.khctl(&["etcd", "restore", "--snapshot", &id, "--yes", "--force"]);
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("khctl reset --node cp-3"),
        "{}",
        out.stdout
    );
    assert_eq!(members(&w, "cp-1").unwrap(), ["cp-1", "cp-2"]);
    w.agent("cp-3").start();
    w.agent("cp-3").start_kubelet();
    let out = w.khctl(&["reset", "--node", "cp-3", "--yes"]);
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    let spec = w.dir().join("cluster.yaml");
    let out = w.khctl(&["rollout", "-f", spec.to_str().unwrap()]);
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(members(&w, "cp-3").unwrap(), CPS);
    assert_eq!(get(&w, "kh-e2e/a"), "before");
    let h = w.khctl(&["health"]);
    assert!(h.ok(), "{}{}", h.stdout, h.stderr);
}
