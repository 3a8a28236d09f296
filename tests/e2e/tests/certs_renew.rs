//! Certificate renewal on the testbed: automatic renewal of a cluster built
//! 345 days ago (its certificates expire in 20 days for real), and `khctl
//! certs renew --all` on a cluster whose certificates have already expired
//! (real etcd peers refuse each other, the apiserver refuses clients).

use std::time::{Duration, SystemTime};

use kh_testbed::eventually;
use kh_testbed::kube::pki;
use kh_testbed::proc::Proc;
use kh_testbed::spec::{cluster_yaml, SpecNode};
use kh_testbed::world::World;

const DAY: i64 = 86_400;
const CPS: [&str; 3] = ["cp-1", "cp-2", "cp-3"];

/// Three control planes rolled out with the testbed clock `offset_days` in
/// the past, then the clock set back to real time.
fn rolled_out_in_the_past(coordinator_args: &[&str], offset_days: i64) -> World {
    let mut w = World::new(coordinator_args);
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
    w.set_clock_offset(-offset_days * DAY);
    let out = w.khctl(&["rollout", "-f", spec.to_str().unwrap()]);
    w.set_clock_offset(0);
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    w
}

fn idx(w: &World, name: &str) -> usize {
    w.agents.iter().position(|a| a.name == name).unwrap()
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The not-after (unix seconds) of every leaf certificate kubeadm renews on
/// `node`: the PKI files and the kubeconfigs' embedded client certificates.
fn leaf_expiries(w: &World, node: &str) -> Vec<(String, i64)> {
    let a = &w.agents[idx(w, node)];
    let mut out = vec![];
    for base in [
        "apiserver",
        "apiserver-kubelet-client",
        "apiserver-etcd-client",
        "front-proxy-client",
        "etcd/server",
        "etcd/peer",
        "etcd/healthcheck-client",
    ] {
        let pem =
            std::fs::read_to_string(a.path(&format!("/etc/kubernetes/pki/{base}.crt"))).unwrap();
        let (_, after) = pki::validity_of(&pki::cert_der(&pem).unwrap()).unwrap();
        out.push((base.to_string(), after));
    }
    for conf in ["admin.conf", "controller-manager.conf", "scheduler.conf"] {
        let env = kh_testbed::kube::NodeEnv::new(&a.root, &a.node_dir(), None);
        let t =
            kh_testbed::kube::kubeconfig::load(&env, &a.path(&format!("/etc/kubernetes/{conf}")))
                .unwrap();
        let (cert, _) = t.creds.cert.unwrap();
        let (_, after) = pki::validity_of(&pki::cert_der(&cert).unwrap()).unwrap();
        out.push((conf.to_string(), after));
    }
    out
}

/// (first, last) second of the restart on `node` as the kubelet double
/// logged it: from the etcd manifest's removal to the last static pod start
/// after it.
fn restart_window(w: &World, node: &str) -> (SystemTime, SystemTime) {
    let log =
        std::fs::read_to_string(w.agents[idx(w, node)].node_dir().join("kubelet.log")).unwrap();
    let time = |l: &str| kh_testbed::clock::parse_rfc3339(l.split_whitespace().next()?);
    let lines: Vec<&str> = log.lines().collect();
    let first = lines
        .iter()
        .position(|l| l.contains("manifest etcd.yaml removed"))
        .unwrap_or_else(|| panic!("{node}: etcd was never restarted:\n{log}"));
    let last = lines
        .iter()
        .rposition(|l| l.contains("started static pod kube-apiserver"))
        .filter(|i| *i > first)
        .unwrap_or_else(|| panic!("{node}: the apiserver did not start again:\n{log}"));
    (time(lines[first]).unwrap(), time(lines[last]).unwrap())
}

#[test]
fn a_cluster_near_expiry_is_renewed_automatically_once_one_control_plane_at_a_time() {
    // Leaves expire in 20 days: inside the default 30-day window.
    let w = rolled_out_in_the_past(&["--cert-check-interval", "2s"], 345);
    for cp in CPS {
        let left = leaf_expiries(&w, cp).iter().map(|(_, a)| *a).min().unwrap() - now_secs();
        assert!(left < 21 * DAY && left > 19 * DAY, "{cp}: {left}s left");
    }

    let history = eventually(
        "the automatic renewal to finish",
        Duration::from_secs(240),
        || {
            let h = w.khctl_json(&["history", "--limit", "1000"]);
            let entries = h["entries"].as_array().cloned().unwrap_or_default();
            if entries
                .iter()
                .any(|e| e["step"] == "admin-kubeconfig" && e["outcome"] == "done")
            {
                Ok(entries)
            } else if let Some(f) = entries
                .iter()
                .find(|e| e["operation"] == "certs renew all" && e["outcome"] == "failed")
            {
                panic!(
                    "the automatic renewal failed: {f}\n{}",
                    w.coordinator.log_text()
                )
            } else {
                Err(format!("{entries:?}"))
            }
        },
    );
    let pre: Vec<_> = history
        .iter()
        .filter(|e| e["operation"] == "certs renew all" && e["step"] == "preconditions")
        .collect();
    assert_eq!(pre.len(), 1, "{history:?}");
    let why = pre[0]["message"].as_str().unwrap();
    assert!(
        why.contains("started by the coordinator (automatic renewal"),
        "{why}"
    );
    assert!(
        why.contains("each control plane healthy before the next"),
        "{why}"
    );

    // Every control-plane leaf now expires a year out.
    for cp in CPS {
        for (name, after) in leaf_expiries(&w, cp) {
            let left = after - now_secs();
            assert!(left > 360 * DAY, "{cp} {name}: {left}s left");
        }
        let calls = w.agents[idx(&w, cp)].calls();
        assert_eq!(
            calls
                .iter()
                .filter(|c| c.as_str() == "kubeadm certs renew all")
                .count(),
            1,
            "{cp}: {calls:?}"
        );
    }
    // One control plane at a time: each one's static pods were stopped and
    // started again before the next one's were touched (the kubelet
    // doubles' logs), and the coordinator finished each node's restart
    // before the next node's renewal (its audit, in milliseconds).
    let windows: Vec<_> = CPS.iter().map(|cp| restart_window(&w, cp)).collect();
    for pair in windows.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "{windows:?}");
    }
    let at = |node: &str, step: &str| {
        history
            .iter()
            .find(|e| e["node"] == node && e["step"] == step && e["outcome"] == "done")
            .and_then(|e| e["time"].as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("{node}/{step} not done: {history:?}"))
    };
    assert!(at("cp-1", "ready") <= at("cp-2", "certs-renew"));
    assert!(at("cp-2", "ready") <= at("cp-3", "certs-renew"));

    // A later check finds nothing due and starts nothing more.
    eventually("a check after the renewal", Duration::from_secs(30), || {
        let log = w.coordinator.log_text();
        let finished = log.rfind("certs renew").unwrap_or(0);
        if log[finished..].contains("no control-plane certificate is due") {
            Ok(())
        } else {
            Err("no check yet".to_string())
        }
    });
    let h = w.khctl_json(&["history", "--limit", "1000"]);
    let runs = h["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["step"] == "preconditions" && e["operation"] == "certs renew all")
        .count();
    assert_eq!(runs, 1);
    let health = w.khctl(&["health"]);
    assert!(health.ok(), "{}\n{}", health.stdout, health.stderr);
}

#[test]
fn an_expired_cluster_is_renewed_with_khctl_and_answers_again() {
    let mut w = rolled_out_in_the_past(&[], 0);
    // Age every control plane's certificates: renewed by kubeadm with the
    // clock 13 months back, they expired a month ago for real. The static
    // pods are restarted so they serve and use them.
    w.set_clock_offset(-395 * DAY);
    for cp in CPS {
        let out = w.agents[idx(&w, cp)].kubeadm(&["certs", "renew", "all"]);
        assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    }
    w.set_clock_offset(0);
    for cp in CPS {
        let a = &w.agents[idx(&w, cp)];
        for pod in ["etcd", "kube-apiserver"] {
            let pid_file = a.node_dir().join("pods").join(format!("{pod}.pid"));
            let pid = std::fs::read_to_string(&pid_file)
                .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()));
            kh_testbed::proc::kill_pid(pid.trim().parse().unwrap(), "KILL");
        }
        assert!(leaf_expiries(&w, cp).iter().all(|(_, a)| *a < now_secs()));
    }
    // The apiserver refuses every client now.
    eventually("the apiserver to refuse", Duration::from_secs(30), || {
        let out = w.agents[idx(&w, "cp-1")].kubectl(&["get", "nodes"]);
        if out.ok() {
            Err(out.stdout)
        } else {
            Ok(())
        }
    });

    // The dry run shows the plan and the gate, and changes nothing.
    let dry = w.khctl(&["certs", "renew", "--all", "--dry-run"]);
    assert!(dry.ok(), "{}\n{}", dry.stdout, dry.stderr);
    assert!(
        dry.stdout
            .contains("would run cp-2: kubeadm certs renew all"),
        "{}",
        dry.stdout
    );
    assert!(dry.stdout.contains("cluster was down"), "{}", dry.stdout);
    let renewals = |w: &World| {
        w.agents[idx(w, "cp-1")]
            .calls()
            .iter()
            .filter(|c| c.starts_with("kubeadm certs renew"))
            .count()
    };
    assert_eq!(renewals(&w), 1, "only the aging renewal ran");

    // Renew, and kill the coordinator while cp-2's static pods are being
    // restarted (a manifest of cp-2 is aside).
    let mut cmd = std::process::Command::new(kh_testbed::bin("khctl"));
    cmd.arg("--config")
        .arg(&w.coordinator.admin)
        .args(["certs", "renew", "--all"]);
    let mut khctl = Proc::spawn("khctl certs renew", cmd, &w.dir().join("renew.log"));
    let aside = w.agents[idx(&w, "cp-2")].path("/etc/kubernetes/tmp/kh-restart-aside");
    eventually("cp-2's restart to begin", Duration::from_secs(120), || {
        let n = std::fs::read_dir(&aside).map(|d| d.count()).unwrap_or(0);
        if n > 0 {
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
    assert_eq!(
        khctl.terminate(Duration::from_secs(1)),
        Some(5),
        "{}",
        khctl.log_text()
    );
    w.coordinator.start();
    let ops = w.khctl_json(&["operation", "status"]);
    let op = ops["operations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "certs-renew")
        .cloned()
        .unwrap_or_else(|| panic!("{ops}"));
    assert_eq!(
        (op["pending"].clone(), op["changed"].clone()),
        (true.into(), true.into()),
        "{op}"
    );
    assert!(
        op["next"]
            .as_str()
            .unwrap()
            .contains("`khctl certs renew --all`"),
        "{op}"
    );

    // The same command resumes it: cp-1 is not renewed again, cp-2's
    // restart runs again (its manifests back first), then cp-3.
    let out = w.khctl(&["certs", "renew", "--all"]);
    assert!(
        out.ok(),
        "{}\n{}\n{}",
        out.stdout,
        out.stderr,
        w.coordinator.log_text()
    );
    assert!(
        out.stdout
            .contains("resuming; decided before the first change"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("cluster was down"), "{}", out.stdout);
    assert_eq!(renewals(&w), 2, "cp-1 renewed once by kh");
    let history = w.khctl_json(&["history", "--limit", "1000"]);
    assert!(
        history["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["node"] == "cp-2"
                && e["step"] == "restart"
                && e["outcome"] == "interrupted"),
        "{history}"
    );
    for cp in CPS {
        assert!(leaf_expiries(&w, cp)
            .iter()
            .all(|(_, a)| *a - now_secs() > 360 * DAY));
        // kubeadm could not read the cluster's configuration and renewed
        // from the files all the same.
        let calls = w.agents[idx(&w, cp)].calls();
        assert!(
            calls.iter().any(|c| c == "kubeadm certs renew all"),
            "{calls:?}"
        );
    }
    let out = w.agents[idx(&w, "cp-2")].kubectl(&["get", "nodes"]);
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    eventually("khctl health", Duration::from_secs(60), || {
        let h = w.khctl(&["health"]);
        if h.ok() {
            Ok(())
        } else {
            Err(format!("{}{}", h.stdout, h.stderr))
        }
    });
}
