//! The external etcd topology: three control planes rolled out against a
//! separate 3-member etcd cluster (real etcd 3.4 with TLS), whose client
//! files khctl sends and the coordinator places on every control plane.

use std::net::TcpStream;
use std::time::Duration;

use kh_testbed::spec::{cluster_yaml, SpecNode};
use kh_testbed::world::World;

#[test]
fn three_control_planes_on_an_external_etcd_cluster_run_no_etcd_themselves() {
    let mut w = World::new(&[]);
    let dir = w.dir().to_path_buf();
    let etcd_block = w.start_external_etcd(3).spec_block(&dir);
    let mut nodes = vec![];
    for i in 1..=3 {
        let idx = w.add_kube_node(&format!("cp-{i}"));
        nodes.push(SpecNode {
            name: format!("cp-{i}"),
            role: "control-plane".into(),
            ip: w.agents[idx].ip.to_string(),
        });
    }
    assert!(
        etcd_block.contains("caFile: ./external-etcd/ca.crt"),
        "{etcd_block}"
    );
    let spec = kh_testbed::spec::write(
        w.dir(),
        "cluster.yaml",
        &cluster_yaml("ext", &nodes, &etcd_block),
    )
    .unwrap();

    let v = w.khctl_json(&["rollout", "-f", spec.to_str().unwrap()]);
    assert_eq!(v["ok"], true, "{v:#}");

    let etcd = w.external_etcd.as_ref().unwrap();
    let ca = std::fs::read(etcd.ca_file()).unwrap();
    let key = std::fs::read(etcd.key_file()).unwrap();
    for a in &w.agents {
        // The coordinator placed the client files where kubeadm expects them.
        assert_eq!(
            std::fs::read(a.path("/etc/kubernetes/pki/etcd/ca.crt")).unwrap(),
            ca
        );
        assert_eq!(
            std::fs::read(a.path("/etc/kubernetes/pki/apiserver-etcd-client.key")).unwrap(),
            key
        );
        // No etcd on the control plane: no manifest, no pod, no port.
        assert!(
            !a.path("/etc/kubernetes/manifests/etcd.yaml").exists(),
            "{} has an etcd manifest",
            a.name
        );
        assert!(!a.node_dir().join("pods/etcd.log").exists(), "{}", a.name);
        assert!(
            TcpStream::connect_timeout(&(a.ip, 2379).into(), Duration::from_millis(300)).is_err(),
            "something listens on {}:2379",
            a.name
        );
        assert!(
            !a.calls()
                .iter()
                .any(|c| c.contains("etcd.yaml") || c.contains("member add")),
            "{}: {:?}",
            a.name,
            a.calls()
        );
        // The kube-apiserver uses the external endpoints.
        let manifest =
            std::fs::read_to_string(a.path("/etc/kubernetes/manifests/kube-apiserver.yaml"))
                .unwrap();
        assert!(
            manifest.contains(&format!("--etcd-servers={}", etcd.endpoints().join(","))),
            "{manifest}"
        );
    }

    // The external cluster still has only its own three members.
    let out = etcd
        .etcdctl(&["member", "list", "-w", "json"])
        .expect_ok("etcdctl member list");
    let list: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let mut names: Vec<String> = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["etcd-1", "etcd-2", "etcd-3"]);
    // And it holds the cluster's state: the nodes the apiservers registered.
    let keys = etcd
        .etcdctl(&["get", "/registry/minions/", "--prefix", "--keys-only"])
        .expect_ok("etcdctl get");
    for n in ["cp-1", "cp-2", "cp-3"] {
        assert!(
            keys.stdout.contains(&format!("/registry/minions/{n}")),
            "{}",
            keys.stdout
        );
    }

    // The cluster is healthy, as kh itself checks it.
    let health = w.khctl(&["health", "-o", "json"]);
    let h: serde_json::Value = serde_json::from_str(&health.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", health.stdout, health.stderr));
    assert_eq!(h["ok"], true, "{h:#}");
}
