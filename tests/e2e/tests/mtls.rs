//! The mTLS layer and the identity rules, with real certificates against the
//! real coordinator and agent processes.

use std::time::{Duration, SystemTime};

use kh::khconfig::KhConfig;
use kh::pki::{Ca, Profile};
use kh::proto::admin_client::AdminClient;
use kh::proto::agent_client::AgentClient;
use kh::proto::node_client::NodeClient;
use kh::proto::{GetFactsRequest, HeartbeatRequest, ListNodesRequest};
use kh::secret::Secret;
use kh::tls::ClientCreds;
use kh_testbed::world::World;
use tonic::Code;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn admin_cfg(w: &World) -> KhConfig {
    KhConfig::load(&w.coordinator.admin).unwrap()
}

fn node_creds(w: &World, idx: usize) -> ClientCreds {
    let d = &w.agents[idx].data_dir;
    let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    ClientCreds {
        ca_pem: read("ca.crt"),
        cert_pem: read("node.crt"),
        key_pem: Secret::new(read("node.key")),
    }
}

/// A client certificate from a CA the coordinator never saw, claiming admin.
fn foreign_admin(ca_pem: &str) -> ClientCreds {
    let foreign = Ca::generate(SystemTime::now()).unwrap();
    let (issued, key) = foreign
        .issue_with_new_key(
            &Profile::admin("admin", Duration::from_secs(3600)),
            SystemTime::now(),
        )
        .unwrap();
    ClientCreds {
        ca_pem: ca_pem.to_string(),
        cert_pem: issued.cert_pem,
        key_pem: key,
    }
}

/// A refusal at the TLS layer: no RPC ran. With TLS 1.3 a client learns that
/// its certificate was rejected only after its side of the handshake; tonic
/// then reports a transport error whose code (Unavailable, Unknown or
/// Cancelled) depends on timing. The server's log is the proof that the
/// handshake itself was refused.
fn refused_in_handshake(c: Code, m: &str, server_log: impl Fn() -> String) {
    assert!(
        matches!(c, Code::Unavailable | Code::Unknown | Code::Cancelled),
        "{c:?}: {m}"
    );
    kh_testbed::eventually(
        "the server to log the refused handshake",
        Duration::from_secs(5),
        || {
            let log = server_log();
            if log.contains("TLS handshake refused") {
                Ok(())
            } else {
                Err(log)
            }
        },
    );
}

fn code<T>(r: Result<T, tonic::Status>) -> (Code, String) {
    match r {
        Ok(_) => (Code::Ok, String::new()),
        Err(s) => (s.code(), s.message().to_string()),
    }
}

#[test]
fn the_coordinator_refuses_wrong_callers() {
    let mut w = World::new(&[]);
    let cp1 = w.add_agent("cp-1");
    let cfg = admin_cfg(&w);
    let addr = cfg.coordinator.clone();
    let host = kh::tls::host_of(&addr).to_string();
    rt().block_on(async {
        let channel =
            |creds: Option<&ClientCreds>| kh::tls::channel(&addr, &host, creds, &cfg.ca).unwrap();

        // The real admin works.
        let ok = AdminClient::new(channel(Some(&cfg.creds())))
            .list_nodes(ListNodesRequest {})
            .await;
        assert_eq!(code(ok).0, Code::Ok);

        // No client certificate.
        let (c, m) = code(
            AdminClient::new(channel(None))
                .list_nodes(ListNodesRequest {})
                .await,
        );
        assert_eq!(c, Code::Unauthenticated, "{m}");
        assert!(
            m.contains("requires a kh client certificate with a admin identity"),
            "{m}"
        );

        // A certificate from a foreign CA: the handshake itself fails.
        let (c, m) = code(
            AdminClient::new(channel(Some(&foreign_admin(&cfg.ca))))
                .list_nodes(ListNodesRequest {})
                .await,
        );
        refused_in_handshake(c, &m, || w.coordinator.log_text());

        // A node certificate calling an admin RPC.
        let node = node_creds(&w, cp1);
        let (c, m) = code(
            AdminClient::new(channel(Some(&node)))
                .list_nodes(ListNodesRequest {})
                .await,
        );
        assert_eq!(c, Code::PermissionDenied, "{m}");
        assert_eq!(
            m,
            "node/cp-1 may not call /kh.v1.Admin/ListNodes: it requires a admin identity"
        );

        // The admin calling a node RPC.
        let (c, _) = code(
            NodeClient::new(channel(Some(&cfg.creds())))
                .heartbeat(HeartbeatRequest::default())
                .await,
        );
        assert_eq!(c, Code::PermissionDenied);
    });
}

#[test]
fn the_agent_accepts_only_the_coordinator() {
    let mut w = World::new(&[]);
    let cp1 = w.add_agent("cp-1");
    let cp2 = w.add_agent("cp-2");
    let cfg = admin_cfg(&w);
    let target = &w.agents[cp2];
    let addr = target.grpc.to_string();
    let server_name = format!("{}.node.kh", target.name);
    rt().block_on(async {
        let call = |creds: Option<ClientCreds>| {
            let ch = kh::tls::channel(&addr, &server_name, creds.as_ref(), &cfg.ca).unwrap();
            async move { code(AgentClient::new(ch).get_facts(GetFactsRequest {}).await) }
        };
        // Another node's certificate.
        let (c, m) = call(Some(node_creds(&w, cp1))).await;
        assert_eq!(c, Code::PermissionDenied, "{m}");
        assert!(m.contains("requires a coordinator identity"), "{m}");
        // The node's own certificate.
        let (c, _) = call(Some(node_creds(&w, cp2))).await;
        assert_eq!(c, Code::PermissionDenied);
        // An admin certificate: khctl never talks to agents.
        let (c, _) = call(Some(cfg.creds())).await;
        assert_eq!(c, Code::PermissionDenied);
        // No certificate at all: the agent requires one during the handshake.
        let (c, m) = call(None).await;
        refused_in_handshake(c, &m, || w.agents[cp2].log_text());
        // A foreign CA.
        let (c, m) = call(Some(foreign_admin(&cfg.ca))).await;
        refused_in_handshake(c, &m, || w.agents[cp2].log_text());
    });
}

#[test]
fn a_node_cannot_heartbeat_as_another_node() {
    let mut w = World::new(&[]);
    let cp1 = w.add_agent("cp-1");
    w.add_agent("cp-2");
    w.wait_health("cp-2", "Ready", Duration::from_secs(20));
    // Stop cp-2's agent so only a forged heartbeat could keep it Ready.
    w.agent("cp-2").kill9();
    w.wait_health("cp-2", "NotReady", Duration::from_secs(20));

    // cp-1's own agent stops too, so the forged beats below are the last
    // ones its record sees; its credentials stay on disk for the test.
    w.agent("cp-1").kill9();
    let cfg = admin_cfg(&w);
    let addr = cfg.coordinator.clone();
    let host = kh::tls::host_of(&addr).to_string();
    let creds = node_creds(&w, cp1);
    rt().block_on(async {
        let ch = kh::tls::channel(&addr, &host, Some(&creds), &cfg.ca).unwrap();
        let mut client = NodeClient::new(ch);
        for _ in 0..5 {
            // Everything in the request says cp-2; the certificate says cp-1.
            let forged = HeartbeatRequest {
                facts: Some(kh::proto::Facts {
                    hostname: "cp-2".into(),
                    ..Default::default()
                }),
                endpoint: "cp-2.evil:7444".into(),
                agent_version: "forged".into(),
            };
            client.heartbeat(forged).await.unwrap();
        }
    });
    let cp2 = w.node("cp-2").unwrap();
    assert_eq!(cp2["health"], "NotReady", "{cp2}");
    assert_ne!(cp2["endpoint"], "cp-2.evil:7444");
    // The forged beats landed on the caller's own record.
    let cp1n = w.node("cp-1").unwrap();
    assert_eq!(cp1n["agentVersion"], "forged", "{cp1n}");
}
