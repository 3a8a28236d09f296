//! Node health in the registry and the agent's own health endpoint.

use std::time::Duration;

use kh_testbed::eventually;
use kh_testbed::world::World;

const T: Duration = Duration::from_secs(20);

#[test]
fn a_killed_agent_goes_not_ready_and_comes_back() {
    let mut w = World::new(&[]);
    w.add_agent("w-1");
    w.wait_health("w-1", "Ready", T);
    w.agent("w-1").kill9();
    w.wait_health("w-1", "NotReady", T);
    let table = w.khctl(&["nodes"]).expect_ok("nodes").stdout;
    assert!(table.contains("NotReady: no heartbeat within"), "{table}");
    w.agent("w-1").start();
    w.wait_health("w-1", "Ready", T);
}

#[test]
fn health_endpoints_follow_the_coordinator() {
    let mut w = World::new(&[]);
    w.add_agent("cp-1");
    let a = &w.agents[0];
    eventually("readyz 200", T, || match a.http_get("/readyz")? {
        (200, body) if body == "ok\n" => Ok(()),
        other => Err(format!("{other:?}")),
    });
    assert_eq!(a.http_get("/healthz").unwrap(), (200, "ok\n".to_string()));
    let (code, metrics) = a.http_get("/metrics").unwrap();
    assert_eq!(code, 200);
    for series in [
        "kh_agent_build_info{version=",
        "kh_agent_heartbeats_total{result=\"success\"}",
        "kh_agent_last_heartbeat_timestamp_seconds",
        "kh_agent_certificate_expiry_timestamp_seconds",
    ] {
        assert!(metrics.contains(series), "{series} missing from\n{metrics}");
    }

    w.coordinator.kill9();
    let body = eventually("readyz 503", T, || match a.http_get("/readyz")? {
        (503, body) => Ok(body),
        other => Err(format!("{other:?}")),
    });
    assert!(
        body.contains("coordinator: last heartbeat accepted"),
        "{body}"
    );
    assert_eq!(
        a.http_get("/healthz").unwrap().0,
        200,
        "alive even when not ready"
    );
    let (_, metrics) = a.http_get("/metrics").unwrap();
    let failures: f64 = metrics
        .lines()
        .find(|l| l.starts_with("kh_agent_heartbeats_total{result=\"failure\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(failures >= 1.0, "{metrics}");

    w.coordinator.start();
    eventually("readyz 200 again", T, || match a.http_get("/readyz")? {
        (200, _) => Ok(()),
        other => Err(format!("{other:?}")),
    });
}

#[test]
fn readyz_names_a_missing_host_root() {
    let mut w = World::new(&[]);
    let idx = w.add_agent("w-1");
    let a = &w.agents[idx];
    eventually("ready", T, || match a.http_get("/readyz")? {
        (200, _) => Ok(()),
        other => Err(format!("{other:?}")),
    });
    std::fs::rename(&a.root, a.root.with_extension("moved")).unwrap();
    let body = eventually("readyz 503", T, || match a.http_get("/readyz")? {
        (503, body) => Ok(body),
        other => Err(format!("{other:?}")),
    });
    assert!(body.contains("host root:"), "{body}");
}

#[test]
fn agents_renew_their_certificate_before_it_expires() {
    // Six-second certificates: renewal is due after four.
    let mut w = World::new(&["--node-cert-validity", "6s"]);
    let idx = w.add_agent("w-1");
    let cert = w.agents[idx].data_dir.join("node.crt");
    let first = std::fs::read_to_string(&cert).unwrap();
    let renewed = eventually("a renewed certificate", T, || {
        let now = std::fs::read_to_string(&cert).map_err(|e| e.to_string())?;
        if now != first {
            Ok(now)
        } else {
            Err("unchanged".into())
        }
    });
    let (_, first_end) = kh::pki::validity(&first).unwrap();
    let (_, new_end) = kh::pki::validity(&renewed).unwrap();
    assert!(new_end > first_end);
    // Well past the first certificate's end, the node is still Ready: both
    // the client and the server side use the new certificate.
    eventually("the first certificate to have expired", T, || {
        if std::time::SystemTime::now() > first_end + Duration::from_secs(2) {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    w.wait_health("w-1", "Ready", T);
    assert!(w.agents[idx]
        .log_text()
        .contains("renewed the node certificate"));
}

#[test]
fn duplicate_product_uuids_are_flagged() {
    let mut w = World::new(&[]);
    let a = w.declare_agent("cp-1");
    let b = w.declare_agent("cp-2");
    // A cloned VM image: same product_uuid on both.
    let uuid_file = |i: usize| w.agents[i].root.join("sys/class/dmi/id/product_uuid");
    std::fs::copy(uuid_file(a), uuid_file(b)).unwrap();
    for (i, name) in [(a, "cp-1"), (b, "cp-2")] {
        let (tok, hash, addr) = w.token(name, &[]);
        w.enroll(i, &tok, &hash, &addr, &[]).expect_ok("enroll");
        w.agents[i].start();
        // The warning goes to the node that reported the value second, so
        // cp-1 reports first.
        w.wait_health(name, "Ready", T);
    }
    let node = eventually("a duplicate warning", T, || {
        let n = w.node("cp-2").ok_or("missing")?;
        if n["warnings"].as_array().is_some_and(|a| !a.is_empty()) {
            Ok(n)
        } else {
            Err(format!("{n}"))
        }
    });
    let warning = node["warnings"][0].as_str().unwrap();
    assert!(
        warning.starts_with("duplicate product_uuid 4b1d0000-"),
        "{warning}"
    );
    assert!(warning.contains("(also on cp-1)"), "{warning}");
    let table = w.khctl(&["nodes"]).expect_ok("nodes").stdout;
    assert!(
        table.contains("WARNING cp-2: duplicate product_uuid"),
        "{table}"
    );
}

#[test]
fn agent_stops_cleanly_on_sigterm() {
    let mut w = World::new(&[]);
    let idx = w.add_agent("w-1");
    let mut p = w.agents[idx].proc.take().unwrap();
    assert_eq!(
        p.terminate(Duration::from_secs(10)),
        Some(0),
        "{}",
        p.log_text()
    );
    assert!(p.log_text().contains("kh-agent stopped"));
}
