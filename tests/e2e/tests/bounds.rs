//! Input bounds, probed as an independent gRPC client would: raw requests
//! with real identities against the real coordinator.

use std::time::Duration;

use kh::codec::KhCodec;
use kh::khconfig::KhConfig;
use kh::proto::admin_client::AdminClient;
use kh::proto::node_client::NodeClient;
use kh::proto::{CreateTokenRequest, CreateTokenResponse, Facts, HeartbeatRequest};
use kh::secret::Secret;
use kh::tls::ClientCreds;
use kh_testbed::world::World;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::Code;

const READY: Duration = Duration::from_secs(20);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn admin_channel(w: &World) -> tonic::transport::Channel {
    let cfg = KhConfig::load(&w.coordinator.admin).unwrap();
    let host = kh::tls::host_of(&cfg.coordinator).to_string();
    kh::tls::channel(&cfg.coordinator, &host, Some(&cfg.creds()), &cfg.ca).unwrap()
}

fn node_channel(w: &World, idx: usize) -> tonic::transport::Channel {
    let cfg = KhConfig::load(&w.coordinator.admin).unwrap();
    let d = &w.agents[idx].data_dir;
    let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    let creds = ClientCreds {
        ca_pem: read("ca.crt"),
        cert_pem: read("node.crt"),
        key_pem: Secret::new(read("node.key")),
    };
    let host = kh::tls::host_of(&cfg.coordinator).to_string();
    kh::tls::channel(&cfg.coordinator, &host, Some(&creds), &cfg.ca).unwrap()
}

/// `CreateTokenRequest` as bytes on the wire, so a test can put what the
/// generated type cannot hold (bytes that are not UTF-8) in `node_name`.
#[derive(Clone, PartialEq, prost::Message)]
struct RawCreateToken {
    #[prost(bytes = "vec", tag = "1")]
    node_name: Vec<u8>,
    #[prost(uint64, tag = "2")]
    ttl_seconds: u64,
}

fn refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> tonic::Status {
    r.expect_err("the coordinator accepted it")
}

#[test]
fn oversized_heartbeats_are_refused_and_khctl_nodes_keeps_working() {
    let mut w = World::new(&[]);
    let cp1 = w.add_agent("cp-1");
    let cp2 = w.add_agent("cp-2");
    w.wait_health("cp-1", "Ready", READY);
    w.wait_health("cp-2", "Ready", READY);
    rt().block_on(async {
        // Together these two nodes' facts would no longer fit one 4 MiB
        // ListNodes answer, had the coordinator stored them.
        for idx in [cp1, cp2] {
            let huge = HeartbeatRequest {
                facts: Some(Facts {
                    os: "o".repeat(2_500_000),
                    ..Default::default()
                }),
                endpoint: "127.0.0.1:7444".into(),
                agent_version: "probe".into(),
            };
            let s = refused(NodeClient::new(node_channel(&w, idx)).heartbeat(huge).await);
            assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
            assert_eq!(
                s.message(),
                "facts.os is 2500000 bytes long; the limit is 256 bytes"
            );
        }
        // A bad endpoint and a hostname that is not one are refused too.
        let bad = HeartbeatRequest {
            facts: Some(Facts {
                hostname: "cp 1;rm".into(),
                ..Default::default()
            }),
            endpoint: "127.0.0.1:7444".into(),
            agent_version: "probe".into(),
        };
        let s = refused(NodeClient::new(node_channel(&w, cp1)).heartbeat(bad).await);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(
            s.message()
                .starts_with("facts.hostname \"cp 1;rm\" is not an RFC 1123 host name"),
            "{}",
            s.message()
        );
        let bad = HeartbeatRequest {
            endpoint: "127.0.0.1".into(),
            ..Default::default()
        };
        let s = refused(NodeClient::new(node_channel(&w, cp1)).heartbeat(bad).await);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(
            s.message()
                .starts_with("endpoint \"127.0.0.1\" is not host:port"),
            "{}",
            s.message()
        );
    });
    let out = w.khctl(&["nodes"]).expect_ok("khctl nodes");
    assert!(
        out.stdout.contains("cp-1") && out.stdout.contains("cp-2"),
        "{}",
        out.stdout
    );
    for name in ["cp-1", "cp-2"] {
        let n = w.node(name).unwrap();
        assert_ne!(
            n["agentVersion"], "probe",
            "nothing of a refused beat was stored: {n}"
        );
        assert_eq!(n["health"], "Ready", "{n}");
    }
}

#[test]
fn admin_input_is_bounded_and_echoed_short() {
    let w = World::new(&[]);
    rt().block_on(async {
        let mut admin = AdminClient::new(admin_channel(&w));

        // A megabyte-long node name: refused, and the error quotes it short.
        let s = refused(
            admin
                .create_token(CreateTokenRequest {
                    node_name: "n".repeat(1 << 20),
                    ttl_seconds: 0,
                    force: false,
                })
                .await,
        );
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(
            s.message().len() < 400,
            "a {}-byte error",
            s.message().len()
        );
        assert!(s.message().contains("… (1048576 bytes)"), "{}", s.message());

        // A TTL of 2^64-1 seconds would never expire.
        let s = refused(
            admin
                .create_token(CreateTokenRequest {
                    node_name: "cp-1".into(),
                    ttl_seconds: u64::MAX,
                    force: false,
                })
                .await,
        );
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(
            s.message().contains("is longer than the limit of 7days"),
            "{}",
            s.message()
        );

        // A string field that is not UTF-8 is the caller's mistake.
        let mut grpc = tonic::client::Grpc::new(admin_channel(&w));
        grpc.ready().await.unwrap();
        let raw = RawCreateToken {
            node_name: vec![b'c', 0xff, 0xfe],
            ttl_seconds: 60,
        };
        let r: Result<tonic::Response<CreateTokenResponse>, _> = grpc
            .unary(
                tonic::Request::new(raw),
                PathAndQuery::from_static("/kh.v1.Admin/CreateToken"),
                KhCodec::default(),
            )
            .await;
        let s = refused(r);
        assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
        assert!(
            s.message()
                .starts_with("the message is not a valid kh.v1.CreateTokenRequest"),
            "{}",
            s.message()
        );
    });
    // None of the refused requests left a token behind.
    let tokens = w.khctl_json(&["token", "list"]);
    assert_eq!(
        tokens["tokens"].as_array().map(Vec::len),
        Some(0),
        "{tokens}"
    );
}

#[test]
fn a_node_copying_anothers_product_uuid_is_warned_not_the_other() {
    let mut w = World::new(&[]);
    w.add_agent("cp-1");
    let cp2 = w.add_agent("cp-2");
    w.wait_health("cp-1", "Ready", READY);
    w.wait_health("cp-2", "Ready", READY);
    let uuid = kh_testbed::eventually("cp-1's facts", READY, || {
        let n = w.node("cp-1").unwrap();
        match n["facts"]["product_uuid"].as_str() {
            Some(u) if !u.is_empty() => Ok(u.to_string()),
            _ => Err(n.to_string()),
        }
    });
    // cp-2's agent stops, so the forged report below is the last it sends.
    w.agent("cp-2").kill9();
    rt().block_on(async {
        let forged = HeartbeatRequest {
            facts: Some(Facts {
                hostname: "cp-2".into(),
                product_uuid: uuid.clone(),
                ..Default::default()
            }),
            endpoint: "127.0.0.1:7444".into(),
            agent_version: "forged".into(),
        };
        NodeClient::new(node_channel(&w, cp2))
            .heartbeat(forged)
            .await
            .unwrap();
    });
    let cp2n = w.node("cp-2").unwrap();
    assert_eq!(cp2n["agentVersion"], "forged", "{cp2n}");
    let warnings = cp2n["warnings"].to_string();
    assert!(
        warnings.contains(&format!("duplicate product_uuid {uuid} (also on cp-1)")),
        "{warnings}"
    );
    let cp1n = w.node("cp-1").unwrap();
    assert_eq!(cp1n["warnings"], serde_json::json!([]), "{cp1n}");
}

#[test]
fn an_agent_refuses_to_start_with_an_endpoint_the_coordinator_would_refuse() {
    let mut w = World::new(&[]);
    let cp1 = w.add_agent("cp-1");
    w.agent("cp-1").kill9();
    let mut cmd = w.agents[cp1].command();
    cmd.arg("--advertise").arg("nowhere");
    // The guard kills the agent on drop, should it wrongly keep running.
    let log = w.dir().join("bad-advertise.log");
    let mut agent = kh_testbed::proc::Proc::spawn("kh-agent --advertise nowhere", cmd, &log);
    kh_testbed::eventually("kh-agent to exit", Duration::from_secs(20), || {
        if agent.is_running() {
            Err(agent.log_text())
        } else {
            Ok(())
        }
    });
    let text = agent.log_text();
    assert!(
        text.contains("--advertise \"nowhere\" is not host:port"),
        "{text}"
    );
}
