//! `khctl reset`: one control plane only when etcd keeps quorum, then the
//! whole cluster in a safe order, after which the coordinator has forgotten
//! the cluster and a new rollout builds a fresh one.

use std::time::Duration;

use kh_testbed::eventually;
use kh_testbed::spec::{cluster_yaml, SpecNode};
use kh_testbed::world::{AgentProc, World};

fn node(w: &World, idx: usize, role: &str) -> SpecNode {
    SpecNode {
        name: w.agents[idx].name.clone(),
        role: role.into(),
        ip: w.agents[idx].ip.to_string(),
    }
}

fn member_peers(w: &World) -> Vec<String> {
    let out = w.agents[0]
        .etcdctl(&[], &["member", "list", "-w", "json"])
        .expect_ok("etcdctl member list");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let mut peers: Vec<String> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["peerURLs"][0].as_str().unwrap().to_string())
        .collect();
    peers.sort();
    peers
}

fn clean(a: &AgentProc) -> bool {
    !a.path("/etc/kubernetes/kubelet.conf").exists()
        && !a.path("/etc/kubernetes/admin.conf").exists()
        && std::fs::read_dir(a.path("/etc/kubernetes/manifests"))
            .map(|d| d.count() == 0)
            .unwrap_or(true)
}

#[test]
fn reset_keeps_quorum_for_one_node_and_tears_the_cluster_down_in_order() {
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
    let spec =
        kh_testbed::spec::write(w.dir(), "cluster.yaml", &cluster_yaml("rs", &nodes, "")).unwrap();
    let spec = spec.to_str().unwrap().to_string();
    let v = w.khctl_json(&["rollout", "-f", &spec]);
    assert_eq!(v["ok"], true, "{v:#}");
    let first_ca = std::fs::read(w.agents[0].path("/etc/kubernetes/pki/ca.crt")).unwrap();

    // cp-3 loses power: resetting cp-2 would leave one healthy member of
    // two. Refused, and nothing changes.
    w.agents[2].power_off();
    let out = w.khctl(&["reset", "--node", "cp-2", "--yes"]);
    assert!(!out.ok(), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("refusing to reset control plane cp-2")
            && out.stderr.contains("quorum"),
        "{}",
        out.stderr
    );
    assert!(w.agents[1].path("/etc/kubernetes/admin.conf").exists());
    // The first control plane is never reset alone.
    let out = w.khctl(&["reset", "--node", "cp-1", "--yes"]);
    assert!(
        !out.ok() && out.stderr.contains("first control plane"),
        "{}",
        out.stderr
    );

    // cp-3 is back. Resetting cp-2 now leaves a cluster that cannot lose
    // another member: refused without --force, done with it.
    w.agents[2].start_kubelet();
    w.agents[2].start();
    let endpoints: Vec<String> = w.agents[..3].iter().map(|a| a.etcd_endpoint()).collect();
    eventually(
        "cp-3's etcd member to be back",
        Duration::from_secs(30),
        || {
            let out = w.agents[0].etcdctl(&endpoints, &["endpoint", "health"]);
            out.ok().then_some(()).ok_or(out.stderr)
        },
    );
    w.wait_health("cp-3", "Ready", Duration::from_secs(30));
    let out = w.khctl(&["reset", "--node", "cp-2", "--yes"]);
    assert!(
        !out.ok() && out.stderr.contains("--force"),
        "{}",
        out.stderr
    );
    let v = w.khctl_json(&["reset", "--node", "cp-2", "--yes", "--force"]);
    assert_eq!(v["ok"], true, "{v:#}");
    assert!(clean(&w.agents[1]));
    let mut want: Vec<String> = [w.agents[0].ip, w.agents[2].ip]
        .iter()
        .map(|ip| format!("https://{ip}:2380"))
        .collect();
    want.sort();
    assert_eq!(member_peers(&w), want);
    let kn = w.agents[0]
        .kubectl(&["get", "nodes", "-o", "name"])
        .expect_ok("kubectl get nodes");
    assert!(!kn.stdout.contains("node/cp-2"), "{}", kn.stdout);
    let cfg = std::fs::read_to_string(w.agents[lb].path("/etc/haproxy/haproxy.cfg")).unwrap();
    assert!(
        !cfg.contains("server cp-2") && cfg.contains("server cp-1") && cfg.contains("server cp-3"),
        "{cfg}"
    );

    // Without a terminal, a whole-cluster reset needs --yes.
    let out = w.khctl(&["reset"]);
    assert!(
        !out.ok() && out.stderr.contains("pass --yes"),
        "{}",
        out.stderr
    );
    assert!(w.agents[0].path("/etc/kubernetes/admin.conf").exists());

    // A worker that cannot be reset stops the reset before any control
    // plane: exit code 4, the cluster still runs.
    w.agents[3].fail_tool("kubeadm", "kubeadm: injected failure\n");
    let out = w.khctl(&["reset", "--yes"]);
    assert_eq!(out.code, Some(4), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("w-1"), "{}", out.stdout);
    for a in [&w.agents[0], &w.agents[2]] {
        assert!(a.path("/etc/kubernetes/admin.conf").exists(), "{}", a.name);
    }
    std::fs::remove_file(w.agents[3].node_dir().join("fail/kubeadm")).unwrap();

    // The whole cluster: workers, then control planes one at a time, the
    // first last.
    let v = w.khctl_json(&["reset", "--yes"]);
    assert_eq!(v["ok"], true, "{v:#}");
    let resets: Vec<(String, String)> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["step"] == "kubeadm-reset")
        .map(|e| {
            (
                e["kind"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("KIND_STEP_")
                    .to_string(),
                e["node"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let pairs: Vec<(&str, &str)> = resets
        .iter()
        .map(|(k, n)| (k.as_str(), n.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("STARTED", "w-1"),
            ("FINISHED", "w-1"),
            ("STARTED", "cp-3"),
            ("FINISHED", "cp-3"),
            ("STARTED", "cp-2"),
            ("FINISHED", "cp-2"),
            ("STARTED", "cp-1"),
            ("FINISHED", "cp-1"),
        ]
    );
    for a in &w.agents[..4] {
        assert!(clean(a), "{} still has kubeadm state", a.name);
        assert!(
            a.calls().iter().any(|c| c == "kubeadm reset -f"),
            "{}: {:?}",
            a.name,
            a.calls()
        );
    }

    // The coordinator forgot the cluster: a new rollout initializes a new
    // one with fresh join material (a stale discovery hash would fail every
    // join).
    let v = w.khctl_json(&["rollout", "-f", &spec]);
    assert_eq!(v["ok"], true, "{v:#}");
    let second_ca = std::fs::read(w.agents[0].path("/etc/kubernetes/pki/ca.crt")).unwrap();
    assert_ne!(first_ca, second_ca, "a new cluster has a new CA");
    assert_eq!(member_peers(&w).len(), 3);
}
