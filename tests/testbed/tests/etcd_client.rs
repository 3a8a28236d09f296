//! The apiserver double's in-process etcd client against real etcd 3.4
//! members with TLS and client certificates. The members run under
//! `Proc` guards inside `ExternalEtcd`, so a failing assertion still kills
//! them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kh_testbed::external_etcd::ExternalEtcd;
use kh_testbed::kube::etcd_client::{EtcdClient, DEADLINE_EXCEEDED};
use kh_testbed::kube::ETCD_BIN;
use kh_testbed::net;

fn cluster(dir: &std::path::Path, members: usize) -> ExternalEtcd {
    assert!(
        std::path::Path::new(ETCD_BIN).exists(),
        "{ETCD_BIN} is missing: install etcd-server and etcd-client"
    );
    let ips: Vec<_> = (0..members).map(|_| net::fresh_ip()).collect();
    let mut etcd = ExternalEtcd::create(dir, &ips).expect("etcd certificates");
    etcd.start();
    etcd
}

fn client(etcd: &ExternalEtcd, endpoints: &[String]) -> EtcdClient {
    EtcdClient::from_files(
        endpoints,
        &etcd.ca_file(),
        &etcd.cert_file(),
        &etcd.key_file(),
    )
    .expect("client")
}

#[test]
fn put_get_list_and_del_agree_with_etcdctl() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = cluster(dir.path(), 1);
    let c = client(&etcd, &etcd.endpoints());

    assert_eq!(c.get("/registry/minions/none"), Ok(None));
    c.put("/registry/minions/w-1", br#"{"kind":"Node"}"#)
        .unwrap();
    assert_eq!(
        c.get("/registry/minions/w-1"),
        Ok(Some(br#"{"kind":"Node"}"#.to_vec()))
    );
    // What etcdctl sees is what the client wrote, and the other way round.
    let out = etcd.etcdctl(&["get", "/registry/minions/w-1", "--print-value-only"]);
    assert!(out.ok(), "{out:?}");
    assert_eq!(out.stdout.trim(), r#"{"kind":"Node"}"#);
    assert!(etcd.etcdctl(&["put", "/registry/minions/w-2", "two"]).ok());
    assert_eq!(c.get("/registry/minions/w-2"), Ok(Some(b"two".to_vec())));

    // An empty value, binary bytes, and a value large enough that etcd
    // sends it chunked.
    c.put("/registry/empty", b"").unwrap();
    assert_eq!(c.get("/registry/empty"), Ok(Some(vec![])));
    let binary: Vec<u8> = (0..=255).collect();
    c.put("/registry/binary", &binary).unwrap();
    assert_eq!(c.get("/registry/binary"), Ok(Some(binary)));
    let big = "x".repeat(300 * 1024);
    c.put("/registry/big", big.as_bytes()).unwrap();
    assert_eq!(c.get("/registry/big"), Ok(Some(big.into_bytes())));

    // A prefix lists its keys in order and nothing that merely shares
    // the prefix's characters.
    c.put("/registry/minions0", b"not a node").unwrap();
    let listed: Vec<(String, Vec<u8>)> = c.list("/registry/minions/").unwrap();
    assert_eq!(
        listed,
        vec![
            (
                "/registry/minions/w-1".to_string(),
                br#"{"kind":"Node"}"#.to_vec()
            ),
            ("/registry/minions/w-2".to_string(), b"two".to_vec()),
        ]
    );
    assert_eq!(c.list("/registry/none/"), Ok(vec![]));

    assert_eq!(c.del("/registry/minions/w-1"), Ok(true));
    assert_eq!(c.del("/registry/minions/w-1"), Ok(false));
    assert_eq!(c.get("/registry/minions/w-1"), Ok(None));
    let out = etcd.etcdctl(&["get", "/registry/minions/w-1", "--print-value-only"]);
    assert!(out.ok() && out.stdout.trim().is_empty(), "{out:?}");

    // etcd's own refusals come back as its message.
    assert_eq!(
        c.put("", b"x"),
        Err("etcdserver: key is not provided".into())
    );
    assert_eq!(c.health(), Ok(()));

    // Many threads share one client and its kept-alive connections.
    let c = Arc::new(c);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                for i in 0..40 {
                    let key = format!("/registry/configmaps/t{t}/{i}");
                    c.put(&key, key.as_bytes()).unwrap();
                    assert_eq!(c.get(&key), Ok(Some(key.clone().into_bytes())));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(c.list("/registry/configmaps/").unwrap().len(), 8 * 40);
}

#[test]
fn fails_over_between_endpoints_and_times_out_without_quorum() {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = cluster(dir.path(), 3);

    // An endpoint where nothing listens comes first, as a dead member's
    // would; the client moves on to the next one.
    let dead = format!("https://{}:2379", net::fresh_ip());
    let mut endpoints = vec![dead];
    endpoints.extend(etcd.endpoints());
    let c = client(&etcd, &endpoints);
    c.put("/registry/a", b"1").unwrap();
    assert_eq!(c.get("/registry/a"), Ok(Some(b"1".to_vec())));

    // The member the client is connected to dies: its kept-alive
    // connection breaks, and the next member answers.
    etcd.members[0].proc.as_mut().unwrap().kill9();
    assert_eq!(c.get("/registry/a"), Ok(Some(b"1".to_vec())));
    c.put("/registry/b", b"2").unwrap();
    assert_eq!(c.health(), Ok(()));

    // Without quorum a linearizable read never answers: the health check
    // gives up after its 2 s and a request after its 3 s, in the Go
    // client's words.
    etcd.members[1].proc.as_mut().unwrap().kill9();
    let start = Instant::now();
    assert_eq!(c.health(), Err(DEADLINE_EXCEEDED.to_string()));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let start = Instant::now();
    assert_eq!(c.get("/registry/a"), Err(DEADLINE_EXCEEDED.to_string()));
    assert_eq!(
        c.put("/registry/c", b"3"),
        Err(DEADLINE_EXCEEDED.to_string())
    );
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(6) && took < Duration::from_secs(8),
        "{took:?}"
    );

    // Quorum returns with a restarted member.
    let p = kh_testbed::proc::Proc::spawn("external etcd-2", etcd.command(1), &etcd.log(1));
    etcd.members[1].proc = Some(p);
    kh_testbed::eventually("reads to work again", Duration::from_secs(30), || {
        c.get("/registry/b")
    });
    assert_eq!(c.get("/registry/b"), Ok(Some(b"2".to_vec())));
    assert_eq!(c.health(), Ok(()));
}
