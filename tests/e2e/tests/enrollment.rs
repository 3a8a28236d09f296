//! Enrollment end to end: real coordinator, real agents, real TLS on loopback.

use std::time::Duration;

use kh_testbed::eventually;
use kh_testbed::world::World;

const READY: Duration = Duration::from_secs(20);

#[test]
fn three_agents_enroll_and_show_up_ready() {
    let mut w = World::new(&[]);
    for name in ["cp-1", "cp-2", "w-1"] {
        w.add_agent(name);
    }
    for name in ["cp-1", "cp-2", "w-1"] {
        w.wait_health(name, "Ready", READY);
    }
    let nodes = w.khctl_json(&["nodes"]);
    let nodes = nodes["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for (n, a) in nodes.iter().zip(&w.agents) {
        assert_eq!(n["name"], a.name.as_str());
        assert_eq!(
            n["endpoint"],
            a.grpc.to_string(),
            "the address the coordinator will call"
        );
        let facts = &n["facts"];
        assert_eq!(
            facts["hostname"],
            a.name.as_str(),
            "facts come from the agent's own host root"
        );
        assert_eq!(facts["os"], "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(facts["kernel"], "6.1.0-kh-testbed");
        assert!(facts["product_uuid"]
            .as_str()
            .unwrap()
            .starts_with("4b1d0000-"));
        assert_eq!(
            n["warnings"].as_array().unwrap().len(),
            0,
            "unique product_uuid and MAC per host"
        );
    }
    // The table form says the same.
    let table = w.khctl(&["nodes"]).expect_ok("khctl nodes").stdout;
    assert!(table.starts_with("NAME"), "{table}");
    assert_eq!(
        table.lines().filter(|l| l.contains("Ready")).count(),
        3,
        "{table}"
    );
}

#[test]
fn enrollment_refusals_are_clear_and_spend_nothing() {
    let mut w = World::new(&[]);
    let cp1 = w.declare_agent("cp-1");
    let cp2 = w.declare_agent("cp-2");

    // A wrong --ca-cert-hash aborts before the token is sent: the token stays valid.
    let (tok, hash, addr) = w.token("cp-1", &[]);
    let wrong = format!("sha256:{}", "0".repeat(64));
    let out = w.enroll(cp1, &tok, &wrong, &addr, &[]);
    assert!(!out.ok());
    assert!(
        out.stderr.contains("Refusing to send the token"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&hash),
        "names the hash it saw: {}",
        out.stderr
    );
    let list = w.khctl_json(&["token", "list"]);
    assert_eq!(
        list["tokens"][0]["state"], "valid",
        "the token never reached the coordinator"
    );
    let out = w.enroll(cp1, &tok, "sha256:1234", &addr, &[]);
    assert!(
        out.stderr
            .contains("is not of the form sha256:<64 hex digits>"),
        "{}",
        out.stderr
    );

    // A token for another node name.
    let out = w.enroll(cp2, &tok, &hash, &addr, &[]);
    assert!(!out.ok());
    assert!(
        out.stderr
            .contains("was created for node \"cp-1\", not \"cp-2\""),
        "{}",
        out.stderr
    );

    // It works once for its node, then never again.
    w.enroll(cp1, &tok, &hash, &addr, &[])
        .expect_ok("enroll cp-1");
    let fresh = tempfile::tempdir().unwrap();
    let mut other = w.agents[cp1].data_dir.clone();
    w.agents[cp1].data_dir = fresh.path().join("agent");
    let out = w.enroll(cp1, &tok, &hash, &addr, &[]);
    w.agents[cp1].data_dir = std::mem::take(&mut other);
    assert!(!out.ok());
    assert!(out.stderr.contains("was already used at"), "{}", out.stderr);
    assert!(
        out.stderr.contains("tokens are single-use"),
        "{}",
        out.stderr
    );

    // An expired token.
    let (tok2, _, _) = w.token("cp-2", &["--ttl", "1s"]);
    eventually("the token to expire", Duration::from_secs(10), || {
        let l = w.khctl_json(&["token", "list"]);
        let t = l["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["node"] == "cp-2")
            .cloned();
        match t {
            Some(t) if t["state"] == "expired" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let out = w.enroll(cp2, &tok2, &hash, &addr, &[]);
    assert!(!out.ok());
    assert!(out.stderr.contains("expired at"), "{}", out.stderr);

    // A token that was deleted.
    let (tok3, _, _) = w.token("cp-2", &[]);
    w.khctl(&["token", "delete", tok3.split('.').next().unwrap()])
        .expect_ok("token delete");
    let out = w.enroll(cp2, &tok3, &hash, &addr, &[]);
    assert!(
        out.stderr
            .contains("never issued by this coordinator or was deleted"),
        "{}",
        out.stderr
    );
}

#[test]
fn re_enrolling_a_name_needs_a_force_token_and_revokes_the_old_identity() {
    let mut w = World::new(&[]);
    let idx = w.add_agent("w-1");
    w.wait_health("w-1", "Ready", READY);

    // A rebuilt host (fresh data dir) with an ordinary token is refused.
    let (tok, hash, addr) = w.token("w-1", &[]);
    let rebuilt = tempfile::tempdir().unwrap();
    let old_dir = std::mem::replace(&mut w.agents[idx].data_dir, rebuilt.path().join("agent"));
    let out = w.enroll(idx, &tok, &hash, &addr, &[]);
    assert!(!out.ok());
    assert!(out.stderr.contains("is already enrolled"), "{}", out.stderr);
    assert!(out.stderr.contains("--force"), "{}", out.stderr);
    let list = w.khctl_json(&["token", "list"]);
    let spent = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["state"] == "used" && t["id"] == tok.split('.').next().unwrap());
    assert!(!spent, "a refused enrollment does not spend the token");

    // With --force it works; the old agent's certificate is now refused.
    let (ftok, _, _) = w.token("w-1", &["--force"]);
    w.enroll(idx, &ftok, &hash, &addr, &[])
        .expect_ok("forced re-enroll");
    eventually(
        "the old agent to be refused",
        Duration::from_secs(10),
        || {
            let log = w.agents[idx].log_text();
            if log.contains("superseded") {
                Ok(())
            } else {
                Err("no refusal logged yet".into())
            }
        },
    );
    // The rebuilt host takes over the name.
    w.agents[idx].kill9();
    w.agents[idx].start();
    w.wait_health("w-1", "Ready", READY);
    drop(old_dir);
}

#[test]
fn a_restarted_coordinator_keeps_its_ca_nodes_and_tokens() {
    let mut w = World::new(&[]);
    w.add_agent("cp-1");
    w.wait_health("cp-1", "Ready", READY);
    let (tok, hash, addr) = w.token("cp-2", &["--ttl", "1h"]);
    let idx = w.declare_agent("cp-2");

    // Graceful stop: SIGTERM ends it with status 0.
    let mut p = w.coordinator.proc.take().unwrap();
    assert_eq!(
        p.terminate(Duration::from_secs(10)),
        Some(0),
        "{}",
        p.log_text()
    );
    w.coordinator.start();

    let (_, hash_after, _) = w.token("cp-3", &[]);
    assert_eq!(hash_after, hash, "same CA after restart");
    let tokens = w.khctl_json(&["token", "list"]);
    assert!(
        tokens["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["node"] == "cp-2" && t["state"] == "valid"),
        "{tokens}"
    );
    assert!(w.node("cp-1").is_some(), "nodes survive");
    // The token created before the restart still enrolls.
    w.enroll(idx, &tok, &hash, &addr, &[])
        .expect_ok("enroll with a pre-restart token");
    w.agents[idx].start();
    w.wait_health("cp-2", "Ready", READY);
    w.wait_health("cp-1", "Ready", READY);

    // kill -9 loses nothing either.
    w.coordinator.kill9();
    w.coordinator.start();
    assert!(w.node("cp-2").is_some());
    w.wait_health("cp-2", "Ready", READY);
}

#[test]
fn a_second_coordinator_on_the_same_data_dir_is_refused() {
    let w = World::new(&[]);
    let mut cmd = w.coordinator.command();
    // Same data dir, another port.
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let listen_at = args.iter().position(|a| a == "--listen").unwrap() + 1;
    let mut new_args = args.clone();
    new_args[listen_at] = kh_testbed::net::fresh_addr().to_string();
    cmd = std::process::Command::new(cmd.get_program());
    cmd.args(&new_args);
    let out = kh_testbed::world::run(cmd);
    assert!(!out.ok());
    assert!(
        out.stderr
            .contains("is another kh-coordinator running on this data dir"),
        "{}",
        out.stderr
    );
}

#[test]
fn khctl_without_credentials_says_where_to_find_them() {
    let out = kh_testbed::world::run({
        let mut c = std::process::Command::new(kh_testbed::bin("khctl"));
        c.args(["--config", "/nonexistent/admin.khconfig", "nodes"]);
        c
    });
    assert!(!out.ok());
    assert!(out.stderr.contains("admin.khconfig"), "{}", out.stderr);
    assert!(out.stderr.contains("KHCONFIG"), "{}", out.stderr);
}
