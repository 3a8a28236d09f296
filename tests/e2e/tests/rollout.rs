//! `khctl rollout` end to end on the testbed: real agents and coordinator,
//! real etcd 3.4, the kubeadm/kubelet/kubectl doubles.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use kh_testbed::eventually;
use kh_testbed::proc::Proc;
use kh_testbed::spec::{cluster_yaml, SpecNode};
use kh_testbed::world::{Out, World};

/// A world with `cps` control planes and `workers` workers, all enrolled
/// kube hosts, and a spec for them.
fn cluster(cps: usize, workers: usize, extra: &str) -> (World, PathBuf) {
    let mut w = World::new(&[]);
    let mut nodes = vec![];
    for i in 1..=cps {
        let idx = w.add_kube_node(&format!("cp-{i}"));
        nodes.push(SpecNode {
            name: format!("cp-{i}"),
            role: "control-plane".into(),
            ip: w.agents[idx].ip.to_string(),
        });
    }
    for i in 1..=workers {
        let idx = w.add_kube_node(&format!("w-{i}"));
        nodes.push(SpecNode {
            name: format!("w-{i}"),
            role: "worker".into(),
            ip: w.agents[idx].ip.to_string(),
        });
    }
    let spec =
        kh_testbed::spec::write(w.dir(), "cluster.yaml", &cluster_yaml("e2e", &nodes, extra))
            .unwrap();
    (w, spec)
}

fn rollout(w: &World, spec: &std::path::Path, extra: &[&str]) -> Out {
    let mut args = vec!["rollout", "-f", spec.to_str().unwrap()];
    args.extend_from_slice(extra);
    w.khctl(&args)
}

fn json(out: &Out) -> serde_json::Value {
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}):\n{}\n{}", out.stdout, out.stderr))
}

/// etcd members as the real etcdctl on `via` sees them.
fn members(w: &World, via: usize) -> Vec<serde_json::Value> {
    let out = w.agents[via]
        .etcdctl(&[], &["member", "list", "-w", "json"])
        .expect_ok("etcdctl member list");
    json(&out)["members"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Checks the cluster is what the spec says: promoted, healthy etcd members
/// whose peer URLs are the control planes' addresses; every node Ready.
fn assert_cluster(w: &World, cps: usize, workers: usize) {
    let ms = members(w, 0);
    assert_eq!(ms.len(), cps, "{ms:?}");
    for m in &ms {
        assert!(
            !m["isLearner"].as_bool().unwrap_or(false),
            "learner left: {m}"
        );
    }
    let mut peers: Vec<String> = ms
        .iter()
        .map(|m| m["peerURLs"][0].as_str().unwrap().to_string())
        .collect();
    peers.sort();
    let mut want: Vec<String> = w.agents[..cps]
        .iter()
        .map(|a| format!("https://{}:2380", a.ip))
        .collect();
    want.sort();
    assert_eq!(peers, want);
    let endpoints: Vec<String> = w.agents[..cps].iter().map(|a| a.etcd_endpoint()).collect();
    w.agents[0]
        .etcdctl(&endpoints, &["endpoint", "health"])
        .expect_ok("every member healthy");
    let nodes = w.agents[0]
        .kubectl(&["get", "nodes", "-o", "json"])
        .expect_ok("kubectl get nodes");
    let items = json(&nodes)["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(items.len(), cps + workers);
    for n in &items {
        let ready = n["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        assert!(ready, "not Ready: {}", n["metadata"]["name"]);
    }
}

/// Calls that could change a host: everything but version probes and reads.
fn changes(a: &kh_testbed::world::AgentProc) -> Vec<String> {
    a.calls()
        .into_iter()
        .filter(|c| {
            !(c.starts_with("kubeadm version")
                || c.starts_with("kubelet --version")
                || c.starts_with("kubectl version")
                || (c.starts_with("kubectl") && c.contains(" get ")))
        })
        .collect()
}

fn count_calls(w: &World, prefix: &str) -> Vec<usize> {
    w.agents
        .iter()
        .map(|a| a.calls().iter().filter(|c| c.starts_with(prefix)).count())
        .collect()
}

#[test]
fn three_control_planes_and_two_workers_then_a_rerun_changes_nothing() {
    let (w, spec) = cluster(3, 2, "");
    let out = rollout(&w, &spec, &[]);
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("Rollout complete"), "{}", out.stdout);
    assert_cluster(&w, 3, 2);
    // The token the rollout created is gone.
    let tokens = w.agents[0].kubeadm(&[
        "token",
        "list",
        "--kubeconfig",
        w.agents[0]
            .path("/etc/kubernetes/admin.conf")
            .to_str()
            .unwrap(),
    ]);
    assert!(tokens.ok(), "{}", tokens.stderr);
    assert!(
        tokens.stdout.trim().is_empty() || !tokens.stdout.contains("authentication,signing"),
        "{}",
        tokens.stdout
    );
    assert_eq!(count_calls(&w, "kubeadm join"), vec![0, 1, 1, 1, 1]);
    assert_eq!(count_calls(&w, "kubeadm init"), vec![1, 0, 0, 0, 0]);

    // Again, on the finished cluster: reported done, nothing but read-only checks run.
    let before: Vec<Vec<String>> = w.agents.iter().map(|a| a.calls()).collect();
    let again = rollout(&w, &spec, &["-o", "json"]);
    let v = json(&again);
    assert_eq!(v["ok"], true, "{v}");
    for (a, b) in w.agents.iter().zip(&before) {
        let new: Vec<String> = a.calls()[b.len()..].to_vec();
        assert!(
            new.iter()
                .all(|c| c.starts_with("kubectl") && c.contains(" get ")),
            "{} ran {new:?}",
            a.name
        );
    }
    let skipped: Vec<&serde_json::Value> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["message"] == "already joined; skipping")
        .collect();
    assert_eq!(skipped.len(), 2);

    // Control planes export their etcd member's health for monitoring.
    let cp1 = &w.agents[0];
    let series = format!(
        "kh_agent_etcd_member_healthy{{endpoint=\"https://{}:2379\"}} 1",
        cp1.ip
    );
    kh_testbed::eventually(
        "cp-1 to export its etcd member's health",
        Duration::from_secs(30),
        || {
            let (_, m) = cp1.http_get("/metrics")?;
            if m.contains(&series) {
                Ok(())
            } else {
                Err(m
                    .lines()
                    .filter(|l| l.contains("etcd"))
                    .collect::<Vec<_>>()
                    .join("\n"))
            }
        },
    );
    // The admin kubeconfig comes from a control plane, 0600.
    let kc = w.dir().join("kubeconfig");
    w.khctl(&["kubeconfig", "-o", kc.to_str().unwrap()])
        .expect_ok("kubeconfig");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&kc).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(std::fs::read_to_string(&kc)
        .unwrap()
        .contains("client-key-data"));
    // And status reports the last run.
    let st = w.khctl(&["rollout", "status"]);
    assert!(
        st.ok() && st.stdout.contains("Rollout complete"),
        "{}{}",
        st.stdout,
        st.stderr
    );
}

#[test]
fn one_control_plane_and_one_worker() {
    let (w, spec) = cluster(1, 1, "");
    let out = rollout(&w, &spec, &[]);
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("not highly available") || out.stdout.contains("Rollout complete"),
        "{}",
        out.stdout
    );
    assert_cluster(&w, 1, 1);
}

#[test]
fn five_control_planes_and_three_workers() {
    let (w, spec) = cluster(5, 3, "  rollout: {workerConcurrency: 2}\n");
    let out = rollout(&w, &spec, &["-o", "json"]);
    let v = json(&out);
    assert_eq!(v["ok"], true, "{}", out.stdout);
    assert_cluster(&w, 5, 3);
    // Control-plane joins never overlapped: each started after the last finished.
    let evs = v["events"].as_array().unwrap();
    let mut open = 0;
    for e in evs.iter().filter(|e| e["step"] == "join-control-plane") {
        match e["kind"].as_str().unwrap() {
            "KIND_STEP_STARTED" => {
                open += 1;
                assert_eq!(open, 1, "two control-plane joins at once");
            }
            "KIND_STEP_FINISHED" | "KIND_STEP_FAILED" => open -= 1,
            _ => {}
        }
    }
}

#[test]
fn coordinator_distribution_places_the_shared_ca_set() {
    let (w, spec) = cluster(3, 1, "  certificates: {distribution: coordinator}\n");
    let out = rollout(&w, &spec, &[]);
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    assert_cluster(&w, 3, 1);
    // The joins used no certificate key: no upload-certs, and the CA files
    // on every control plane are the first one's.
    for a in &w.agents {
        assert!(
            !a.calls().iter().any(|c| c.contains("upload-certs")),
            "{}: {:?}",
            a.name,
            a.calls()
        );
    }
    let ca = |i: usize| std::fs::read(w.agents[i].path("/etc/kubernetes/pki/ca.key")).unwrap();
    assert_eq!(ca(1), ca(0));
    assert_eq!(ca(2), ca(0));
    // The agent removed nothing it should keep and left no config behind.
    assert!(!w.agents[1]
        .path("/var/lib/kh-agent/kubeadm-join.yaml")
        .exists());
}

#[test]
fn a_control_plane_joined_three_hours_after_init_gets_fresh_material() {
    // First only cp-1 (and a worker); three hours later, two more control planes.
    let (w, full) = cluster(3, 1, "");
    let text = std::fs::read_to_string(&full).unwrap();
    let first: String = text
        .lines()
        .filter(|l| !l.contains("name: cp-2") && !l.contains("name: cp-3"))
        .map(|l| format!("{l}\n"))
        .collect();
    let small = kh_testbed::spec::write(w.dir(), "first.yaml", &first).unwrap();
    let out = rollout(&w, &small, &[]);
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    w.advance_clock(Duration::from_secs(3 * 3600));
    let out = rollout(&w, &full, &[]);
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    assert_cluster(&w, 3, 1);
    // The kubeadm-certs Secret had expired by the cluster's clock: the
    // rollout uploaded the certificates again.
    assert!(
        w.agents[0]
            .calls()
            .iter()
            .any(|c| c.starts_with("kubeadm init phase upload-certs")),
        "{:?}",
        w.agents[0].calls()
    );
}

#[test]
fn a_coordinator_killed_during_a_control_plane_join_resumes() {
    let (mut w, spec) = cluster(3, 1, "");
    // Start the rollout in the background and kill the coordinator as soon
    // as cp-2's join has begun.
    let mut cmd = Command::new(kh_testbed::bin("khctl"));
    cmd.arg("--config")
        .arg(&w.coordinator.admin)
        .args(["rollout", "-f", spec.to_str().unwrap()]);
    let mut khctl = Proc::spawn("khctl rollout", cmd, &w.dir().join("khctl.log"));
    eventually("cp-2's join to start", Duration::from_secs(120), || {
        if w.agents[1]
            .calls()
            .iter()
            .any(|c| c.starts_with("kubeadm join"))
        {
            Ok(())
        } else {
            Err(format!("{:?}", w.agents[1].calls()))
        }
    });
    w.coordinator.kill9();
    khctl.terminate(Duration::from_secs(5));
    w.coordinator.start();
    let out = rollout(&w, &spec, &[]);
    assert!(
        out.ok(),
        "{}\n{}\ncp-2's agent:\n{}",
        out.stdout,
        out.stderr,
        w.agents[1].log_text()
    );
    assert_cluster(&w, 3, 1);
    // Every node joined exactly once; no node got a second member.
    assert_eq!(count_calls(&w, "kubeadm join"), vec![0, 1, 1, 1]);
    assert_eq!(count_calls(&w, "kubeadm init --config"), vec![1, 0, 0, 0]);
}

#[test]
fn a_second_rollout_while_one_runs_is_refused() {
    let (w, spec) = cluster(3, 0, "");
    let mut cmd = Command::new(kh_testbed::bin("khctl"));
    cmd.arg("--config")
        .arg(&w.coordinator.admin)
        .args(["rollout", "-f", spec.to_str().unwrap()]);
    let mut first = Proc::spawn("khctl rollout", cmd, &w.dir().join("khctl.log"));
    eventually(
        "the first rollout to be under way",
        Duration::from_secs(60),
        || {
            // kubeadm init, not the agent's read-only `kubeadm version` probe.
            if w.agents[0]
                .calls()
                .iter()
                .any(|c| c.starts_with("kubeadm init"))
            {
                Ok(())
            } else {
                Err("not yet".into())
            }
        },
    );
    let second = rollout(&w, &spec, &[]);
    assert!(!second.ok());
    assert!(
        second.stderr.contains("is already running"),
        "{}",
        second.stderr
    );
    assert!(
        second.stderr.contains("khctl rollout status --follow"),
        "{}",
        second.stderr
    );
    // Follow the first to its end; it succeeds alone.
    let follow = w.khctl(&["rollout", "status", "--follow"]);
    assert!(follow.ok(), "{}{}", follow.stdout, follow.stderr);
    first.terminate(Duration::from_secs(5));
    assert_cluster(&w, 3, 0);
}

#[test]
fn invalid_specs_are_refused_with_the_field_and_exit_code_2() {
    let (w, spec) = cluster(3, 0, "");
    let good = std::fs::read_to_string(&spec).unwrap();
    let two: String = good
        .lines()
        .filter(|l| !l.contains("name: cp-3"))
        .map(|l| format!("{l}\n"))
        .collect();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown field",
            good.replace("  networking:", "  colour: blue\n  networking:"),
            "spec.colour: unknown field `colour`",
        ),
        (
            "two control planes",
            two.clone(),
            "two control planes are worse than one",
        ),
        (
            "not enrolled",
            good.replace("name: cp-3,", "name: cp-9,"),
            "spec.nodes[2].name",
        ),
        (
            "no endpoint",
            good.lines()
                .filter(|l| !l.contains("controlPlaneEndpoint"))
                .map(|l| format!("{l}\n"))
                .collect(),
            "spec.controlPlaneEndpoint: required for a rollout",
        ),
        (
            "bad version",
            good.replace("v1.32.0", "latest"),
            "spec.kubernetesVersion",
        ),
        (
            "missing CNI file",
            good.replace("./cni.yaml", "./nope.yaml"),
            "spec.cni.manifest: cannot read",
        ),
    ];
    for (what, yaml, expect) in cases {
        let f = w.dir().join("bad.yaml");
        std::fs::write(&f, yaml).unwrap();
        let out = rollout(&w, &f, &[]);
        assert_eq!(out.code, Some(2), "{what}: {}{}", out.stdout, out.stderr);
        assert!(
            out.stderr.contains(expect) || out.stdout.contains(expect),
            "{what}: expected {expect:?} in\n{}{}",
            out.stdout,
            out.stderr
        );
    }
    for a in &w.agents {
        assert!(changes(a).is_empty(), "{:?} ran on {}", changes(a), a.name);
    }
    // --allow-even lets two control planes through.
    let f = w.dir().join("two.yaml");
    std::fs::write(&f, &two).unwrap();
    let dry = rollout(&w, &f, &["--allow-even", "--dry-run"]);
    assert!(dry.ok(), "{}{}", dry.stdout, dry.stderr);
}

#[test]
fn a_dry_run_prints_the_plan_with_secrets_redacted_and_touches_nothing() {
    let (w, spec) = cluster(1, 1, "");
    let out = rollout(&w, &spec, &["--dry-run"]);
    assert!(out.ok(), "{}{}", out.stdout, out.stderr);
    for needle in [
        "Plan for cluster e2e",
        "kubeadm-init",
        "join-worker",
        "kind: InitConfiguration",
        "kind: JoinConfiguration",
        "<redacted>",
        "Dry run: nothing was changed.",
    ] {
        assert!(
            out.stdout.contains(needle),
            "missing {needle:?}:\n{}",
            out.stdout
        );
    }
    for a in &w.agents {
        assert!(
            changes(a).is_empty(),
            "a dry run ran {:?} on {}",
            changes(a),
            a.name
        );
    }
    assert!(!w.agents[0].path("/etc/kubernetes/admin.conf").exists());
}

#[test]
fn a_failed_preflight_stops_before_anything_changes() {
    let (w, spec) = cluster(1, 1, "");
    // A port the apiserver needs is taken on the control plane.
    let _squatter = std::net::TcpListener::bind((w.agents[0].ip, 6443)).unwrap();
    let out = rollout(&w, &spec, &[]);
    assert_eq!(
        out.code,
        Some(3),
        "exit code 3: preflight failed\n{}{}",
        out.stdout,
        out.stderr
    );
    assert!(out.stdout.contains("port:6443"), "{}", out.stdout);
    for a in &w.agents {
        assert!(
            changes(a).is_empty(),
            "preflight failed, yet {:?} ran on {}",
            changes(a),
            a.name
        );
    }
}

#[test]
fn a_coordinator_killed_during_a_worker_join_is_reported_and_the_join_is_recorded_once() {
    let (mut w, spec) = cluster(1, 1, "");
    // The worker's join takes long enough to kill the coordinator in it.
    w.set_kubeadm_latency(Duration::ZERO, Duration::ZERO, Duration::from_secs(5));
    let mut cmd = Command::new(kh_testbed::bin("khctl"));
    cmd.arg("--config")
        .arg(&w.coordinator.admin)
        .args(["rollout", "-f", spec.to_str().unwrap()]);
    let mut khctl = Proc::spawn("khctl rollout", cmd, &w.dir().join("khctl.log"));
    eventually("w-1's join to start", Duration::from_secs(120), || {
        if w.agents[1]
            .calls()
            .iter()
            .any(|c| c.starts_with("kubeadm join"))
        {
            Ok(())
        } else {
            Err(format!("{:?}", w.agents[1].calls()))
        }
    });
    w.coordinator.kill9();
    // khctl says what happened, and how to go on, instead of an h2 error.
    eventually("khctl to end", Duration::from_secs(30), || {
        if khctl.is_running() {
            Err("running".to_string())
        } else {
            Ok(())
        }
    });
    let code = khctl.terminate(Duration::from_secs(1));
    let log = khctl.log_text();
    assert_eq!(code, Some(5), "exit 5: interrupted\n{log}");
    assert!(
        log.contains(
            "the coordinator closed the connection (it stopped or restarted) while the rollout ran"
        ),
        "{log}"
    );
    assert!(
        log.contains("the operation is persisted: re-run the same command (`khctl --config"),
        "{log}"
    );
    // The join ends on the host with no coordinator watching.
    let kubelet_conf = w.agents[1].path("/etc/kubernetes/kubelet.conf");
    eventually("w-1's join to finish", Duration::from_secs(60), || {
        if kubelet_conf.exists() {
            Ok(())
        } else {
            Err(w.agents[1].calls().join("\n"))
        }
    });
    w.coordinator.start();
    // `rollout status` opens with one line: the operation, its start, its state.
    let status = w.khctl(&["rollout", "status"]);
    let first = status.stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("rollout e2e: started ") && first.contains("interrupted"),
        "{}\n{}",
        status.stdout,
        status.stderr
    );
    assert_eq!(status.code, Some(5), "{}", status.stderr);
    assert!(!status.stderr.contains("at  "), "{}", status.stderr);

    let out = rollout(&w, &spec, &[]);
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.contains("w-1") && l.contains("join-worker done")),
        "the resumed run shows the join that ended while the coordinator was down:\n{}",
        out.stdout
    );
    assert_eq!(count_calls(&w, "kubeadm join"), vec![0, 1]);
    // Exactly once in the audit log, however many times it was learned of.
    let out = rollout(&w, &spec, &[]);
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    let hist = w.khctl_json(&["history"]);
    let joins: Vec<&serde_json::Value> = hist["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["node"] == "w-1" && e["step"] == "join-worker")
        .collect();
    assert_eq!(joins.len(), 1, "{hist}");
    assert_eq!(joins[0]["outcome"], "done", "{hist}");
    let status = w.khctl(&["rollout", "status"]);
    let first = status.stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("rollout e2e: started ") && first.contains("finished: ok"),
        "{}",
        status.stdout
    );
}
