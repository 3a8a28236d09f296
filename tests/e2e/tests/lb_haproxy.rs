//! A rollout behind a real HAProxy (Debian's package) on a load-balancer
//! host: kh configures it, the endpoint reaches a healthy apiserver double
//! through it, and it keeps answering when a control plane dies.

use std::time::Duration;

use kh_testbed::eventually;
use kh_testbed::kube::http::{Client, Credentials, Trust};
use kh_testbed::spec::{cluster_yaml, SpecNode};
use kh_testbed::world::World;

fn node(w: &World, idx: usize, role: &str) -> SpecNode {
    SpecNode {
        name: w.agents[idx].name.clone(),
        role: role.into(),
        ip: w.agents[idx].ip.to_string(),
    }
}

/// An HTTPS client for the endpoint, trusting the cluster CA.
fn endpoint_client(w: &World, lb: usize) -> Client {
    let ca = std::fs::read_to_string(w.agents[0].path("/etc/kubernetes/pki/ca.crt"))
        .expect("the cluster CA on cp-1");
    let mut c = Client::new(
        &format!("https://{}:6443", w.agents[lb].ip),
        &Trust::Ca(ca),
        &Credentials::default(),
    )
    .expect("client");
    c.timeout = Duration::from_secs(5);
    c
}

#[test]
fn haproxy_fronts_three_control_planes_and_survives_losing_one() {
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
        kh_testbed::spec::write(w.dir(), "cluster.yaml", &cluster_yaml("lb", &nodes, "")).unwrap();
    let lb_ip = w.agents[lb].ip;
    assert!(std::fs::read_to_string(&spec)
        .unwrap()
        .contains(&format!("controlPlaneEndpoint: \"{lb_ip}:6443\"")));

    let v = w.khctl_json(&["rollout", "-f", spec.to_str().unwrap()]);
    assert_eq!(v["ok"], true, "{v:#}");

    // The LB's backends are all three control planes, checked over HTTPS.
    let cfg = std::fs::read_to_string(w.agents[lb].path("/etc/haproxy/haproxy.cfg"))
        .expect("kh wrote haproxy.cfg");
    assert!(cfg.starts_with("# Managed by kh"), "{cfg}");
    assert!(cfg.contains(&format!("    bind {lb_ip}:6443\n")), "{cfg}");
    for a in &w.agents[..3] {
        assert!(
            cfg.contains(&format!("    server {} {}:6443 check\n", a.name, a.ip)),
            "{} missing:\n{cfg}",
            a.name
        );
    }
    // Backends grew one control plane at a time, each once it was ready.
    let lb_steps: Vec<String> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["step"] == "load-balancer" && e["kind"] == "KIND_STEP_FINISHED")
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        lb_steps,
        [
            "HAProxy backends updated: cp-1",
            "HAProxy backends updated: cp-1, cp-2",
            "HAProxy backends updated: cp-1, cp-2, cp-3"
        ]
    );
    assert!(w.agents[lb].haproxy_pid().is_some(), "HAProxy runs on lb-1");

    // Traffic to the endpoint reaches a healthy apiserver, and kubectl on a
    // node goes through the endpoint too.
    let c = endpoint_client(&w, lb);
    let r = c.get("/healthz").expect("GET /healthz through HAProxy");
    assert_eq!((r.status, r.body.trim()), (200, "ok"));
    let nodes_out = w.agents[0]
        .kubectl(&["get", "nodes", "-o", "json"])
        .expect_ok("kubectl through the endpoint");
    assert!(nodes_out.stdout.contains("\"w-1\""), "{}", nodes_out.stdout);

    // A control plane loses power: the endpoint keeps answering. etcd may
    // elect a new leader first, so poll until ten requests in a row succeed.
    w.agents[1].power_off();
    eventually(
        "the endpoint to answer with cp-2 down",
        Duration::from_secs(30),
        || {
            for i in 0..10 {
                match c.get("/healthz") {
                    Ok(r) if r.status == 200 => {}
                    Ok(r) => return Err(format!("request {i}: {} {}", r.status, r.body)),
                    Err(e) => return Err(format!("request {i}: {e}")),
                }
            }
            Ok(())
        },
    );
}
