//! Certificate expiry end to end: a cluster built 345 days ago (the testbed
//! clock set back while kubeadm issued its certificates, then set back to
//! real time) has leaf certificates 20 days from expiry for real, and CAs
//! nine years from it. `khctl certs check`, the agents' metrics and the
//! kubeadm double's `certs check-expiration` all say so.

use std::time::{SystemTime, UNIX_EPOCH};

use kh_testbed::spec::{cluster_yaml, SpecNode};
use kh_testbed::world::World;

const DAY: i64 = 86_400;

/// kubeadm's leaf certificates on the first control plane, and the CAs.
const CP_LEAVES: [&str; 12] = [
    "admin.conf",
    "apiserver",
    "apiserver-etcd-client",
    "apiserver-kubelet-client",
    "controller-manager.conf",
    "etcd-healthcheck-client",
    "etcd-peer",
    "etcd-server",
    "front-proxy-client",
    "scheduler.conf",
    "super-admin.conf",
    "kubelet-client",
];
const CAS: [&str; 3] = ["ca", "etcd-ca", "front-proxy-ca"];

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The value of `kh_agent_cluster_cert_expiry_seconds{cert="NAME"}`.
fn gauge(metrics: &str, cert: &str) -> Option<i64> {
    let prefix = format!("kh_agent_cluster_cert_expiry_seconds{{cert=\"{cert}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_cluster_built_345_days_ago_shows_20_days_left_everywhere() {
    let mut w = World::new(&[]);
    let mut nodes = vec![];
    for (name, role) in [("cp-1", "control-plane"), ("w-1", "worker")] {
        let idx = w.add_kube_node(name);
        nodes.push(SpecNode {
            name: name.into(),
            role: role.into(),
            ip: w.agents[idx].ip.to_string(),
        });
    }
    let spec =
        kh_testbed::spec::write(w.dir(), "cluster.yaml", &cluster_yaml("e2e", &nodes, "")).unwrap();

    // Build the cluster 345 days ago, then come back to the present.
    let out = w.in_the_past(345, |w| w.khctl(&["rollout", "-f", spec.to_str().unwrap()]));
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(w.clock_offset(), 0);

    // The table: every leaf has 19-20 days left, every CA nine years; the
    // summary names the fix, and the exit code says attention is needed.
    let out = w.khctl(&["certs", "check"]);
    assert_eq!(out.code, Some(6), "{}\n{}", out.stdout, out.stderr);
    let row = |node: &str, name: &str| -> Vec<String> {
        out.stdout
            .lines()
            .map(|l| {
                l.split("   ")
                    .map(|c| c.trim().to_string())
                    .filter(|c| !c.is_empty())
                    .collect::<Vec<_>>()
            })
            .find(|cells| {
                cells.first().map(String::as_str) == Some(node)
                    && cells.get(1).map(String::as_str) == Some(name)
            })
            .unwrap_or_else(|| panic!("no row {node} {name} in\n{}", out.stdout))
    };
    assert!(
        out.stdout.starts_with("NODE   CERTIFICATE "),
        "{}",
        out.stdout
    );
    for name in CP_LEAVES {
        let r = row("cp-1", name);
        assert!(
            ["19d", "20d"].contains(&r[3].as_str()),
            "{r:?}\n{}",
            out.stdout
        );
        assert!(r[2].ends_with(" UTC"), "{r:?}");
    }
    assert_eq!(row("w-1", "kubelet-client")[4], "ca");
    assert_eq!(
        row("w-1", "kubelet-client")[5],
        "yes",
        "the worker has no CA key"
    );
    for ca in CAS {
        let r = row("cp-1", ca);
        assert_eq!((r[3].as_str(), r[4].as_str()), ("9y", "no"), "{r:?}");
    }
    assert!(
        out.stdout.contains("apiserver on cp-1: expiring (expires in 19d, inside certificates.renewBefore (30days)); fix: `khctl certs renew --all`")
            || out.stdout.contains("apiserver on cp-1: expiring (expires in 20d"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr
            .contains("renew them with `khctl certs renew --all`"),
        "{}",
        out.stderr
    );

    // JSON for scripts: every certificate of every node.
    let out = w.khctl(&["certs", "check", "-o", "json"]);
    assert_eq!(out.code, Some(6), "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["renewBeforeSeconds"], 30 * DAY);
    let names = |i: usize| -> Vec<String> {
        v["nodes"][i]["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(v["nodes"][0]["node"], "cp-1");
    let expected: Vec<&str> = CP_LEAVES.iter().chain(CAS.iter()).copied().collect();
    assert_eq!(names(0), expected);
    assert_eq!(v["nodes"][1]["node"], "w-1");
    assert_eq!(names(1), ["kubelet-client"]);
    for n in v["nodes"].as_array().unwrap() {
        assert_eq!(n["error"], "", "{n}");
        for c in n["certificates"].as_array().unwrap() {
            let left = c["residualSeconds"].as_i64().unwrap();
            if c["isCa"] == true {
                assert!(left > 9 * 365 * DAY, "{c}");
            } else {
                assert!((19 * DAY..=20 * DAY).contains(&left), "{c}");
            }
        }
    }
    let attention = v["attention"].as_array().unwrap();
    assert_eq!(
        attention.len(),
        12 + 1,
        "every leaf of both nodes: {attention:?}"
    );

    // The agents' metrics: the gauge is each certificate's notAfter.
    let (_, cp_metrics) = w.agents[0].http_get("/metrics").unwrap();
    let (_, w_metrics) = w.agents[1].http_get("/metrics").unwrap();
    let now = now_unix();
    for name in CP_LEAVES {
        let until = gauge(&cp_metrics, name).unwrap_or_else(|| panic!("no {name}:\n{cp_metrics}"));
        assert!(
            (19 * DAY..=20 * DAY).contains(&(until - now)),
            "{name}: {}",
            until - now
        );
    }
    assert!(gauge(&cp_metrics, "etcd-ca").unwrap() - now > 9 * 365 * DAY);
    let kubelet = gauge(&w_metrics, "kubelet-client").expect("the worker's kubelet certificate");
    assert!((19 * DAY..=20 * DAY).contains(&(kubelet - now)));
    assert_eq!(gauge(&w_metrics, "apiserver"), None);

    // kubeadm itself, on the control plane.
    let cp = &w.agents[0];
    let out = cp
        .kubeadm(&["certs", "check-expiration"])
        .expect_ok("kubeadm certs check-expiration");
    assert!(
        out.stdout
            .starts_with("[check-expiration] Reading configuration from the cluster...\n"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("Falling back"), "{}", out.stdout);
    let line = |name: &str| {
        out.stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in\n{}", out.stdout))
            .to_string()
    };
    assert!(
        line("apiserver").contains(" 19d ") || line("apiserver").contains(" 20d "),
        "{}",
        out.stdout
    );
    assert!(line("etcd-ca").contains(" 9y "), "{}", out.stdout);
    assert!(
        !out.stdout.lines().any(|l| l.starts_with("kubelet-client")),
        "kubeadm does not list the kubelet's own:\n{}",
        out.stdout
    );

    // A month later the certificates have expired: the apiserver refuses
    // the admin's client certificate, and kubeadm cannot read the cluster.
    w.set_clock_offset(30 * DAY);
    let out = cp.kubectl(&["get", "nodes"]);
    assert!(!out.ok());
    assert!(
        out.stderr
            .contains("You must be logged in to the server (Unauthorized)"),
        "{}",
        out.stderr
    );
    let out = cp
        .kubeadm(&["certs", "check-expiration"])
        .expect_ok("kubeadm certs check-expiration");
    assert!(out.stdout.contains("[check-expiration] Error reading configuration from the Cluster. Falling back to default configuration"), "{}", out.stdout);
    assert!(
        line_of(&out.stdout, "apiserver").contains("<invalid>"),
        "{}",
        out.stdout
    );
    w.set_clock_offset(0);
    assert!(
        cp.kubectl(&["get", "nodes"]).ok(),
        "valid again at real time"
    );
}

fn line_of(text: &str, name: &str) -> String {
    text.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_default()
        .to_string()
}
