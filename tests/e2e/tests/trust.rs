//! What a stolen file or an old key must not buy: the store's files are
//! private, the key that unseals the kh CA can live outside the data dir,
//! revoked admin certificates are refused, and agents accept steps only from
//! the coordinator certificate they have pinned.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kh_testbed::proc::Proc;
use kh_testbed::world::World;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Starts the coordinator with `args` (after the world's own) and `env`,
/// expecting it to exit; returns its log.
fn start_expecting_exit(w: &World, args: &[&str], env: &[(&str, &Path)]) -> String {
    let mut cmd = w.coordinator.command();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let log = w.dir().join("coordinator-refused.log");
    let mut p = Proc::spawn("kh-coordinator", cmd, &log);
    kh_testbed::eventually("the coordinator to exit", Duration::from_secs(20), || {
        if p.is_running() {
            Err("still running".into())
        } else {
            Ok(())
        }
    });
    p.log_text()
}

#[test]
fn the_store_is_private_and_its_key_can_live_outside_the_data_dir() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("kh-secret-key");
    let key_arg = key.to_str().unwrap().to_string();
    let mut w = World::new(&["--secret-key-file", &key_arg]);
    w.add_agent("cp-1");
    let data = w.coordinator.data_dir.clone();

    // The key is where it was asked to be, and only there.
    assert_eq!(mode(&key), 0o600);
    assert_eq!(std::fs::read(&key).unwrap().len(), 32);
    assert!(!data.join("secret.key").exists());

    // The store: a private directory of private files.
    let mut entries = vec![];
    walk(&data.join("store"), &mut entries);
    assert!(entries.len() > 1, "{entries:?}");
    for p in &entries {
        let want = if p.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(p), want, "{}", p.display());
    }

    // The data dir alone cannot start a coordinator: it says which key it
    // needs instead of creating a new one.
    w.coordinator.kill9();
    w.coordinator
        .args
        .retain(|a| a != "--secret-key-file" && a != &key_arg);
    let log = start_expecting_exit(&w, &[], &[]);
    assert!(
        log.contains("is sealed with a key that is not at")
            && log.contains("secret.key")
            && log.contains("--secret-key-file"),
        "{log}"
    );
    assert!(!data.join("secret.key").exists());

    // systemd's LoadCredential=kh-secret-key:PATH hands the key over in
    // $CREDENTIALS_DIRECTORY.
    let mut cmd = w.coordinator.command();
    cmd.env("CREDENTIALS_DIRECTORY", keys.path());
    let log = w.dir().join("coordinator-credential.log");
    w.coordinator.proc = Some(Proc::spawn("kh-coordinator", cmd, &log));
    w.coordinator.wait_listening();
    w.wait_health("cp-1", "Ready", Duration::from_secs(30));
    w.khctl(&["nodes"])
        .expect_ok("khctl nodes with the credential key");
}

#[test]
fn an_existing_data_dir_keeps_its_key_and_can_move_it_out() {
    let mut w = World::new(&[]);
    w.add_agent("cp-1");
    let data = w.coordinator.data_dir.clone();
    assert!(data.join("secret.key").exists());

    // What an operator does to move the key: stop, move, start with the flag.
    w.coordinator.kill9();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("kh-secret-key");
    std::fs::rename(data.join("secret.key"), &key).unwrap();
    w.coordinator
        .args
        .extend(["--secret-key-file".to_string(), key.display().to_string()]);
    w.coordinator.start();
    w.wait_health("cp-1", "Ready", Duration::from_secs(30));
    w.khctl(&["nodes"])
        .expect_ok("khctl nodes with the moved key");
}

fn khctl_as(config: &Path, args: &[&str]) -> kh_testbed::world::Out {
    let mut cmd = std::process::Command::new(kh_testbed::bin("khctl"));
    cmd.arg("--config").arg(config).args(args);
    kh_testbed::world::run(cmd)
}

#[test]
fn a_revoked_admin_certificate_is_refused() {
    let mut w = World::new(&[]);
    // The credential the coordinator wrote on first start is listed.
    let listed = w.khctl_json(&["admin", "list"]);
    let first = listed["admins"].as_array().unwrap();
    assert_eq!(first.len(), 1, "{listed}");
    assert_eq!(first[0]["name"], "admin");
    assert!(first[0]["revoked"].is_null(), "{listed}");

    // A second admin, for a colleague.
    let ops = w.dir().join("ops.khconfig");
    w.khctl(&["admin", "create", "ops", "-o", ops.to_str().unwrap()])
        .expect_ok("admin create");
    assert_eq!(mode(&ops), 0o600);
    khctl_as(&ops, &["nodes"]).expect_ok("nodes as ops");

    // Nobody revokes the credential they are using.
    let own = w.khctl(&["admin", "revoke", "admin"]);
    assert_eq!(own.code, Some(3), "{}{}", own.stdout, own.stderr);
    assert!(
        own.stderr
            .contains("the certificate this request was made with"),
        "{}",
        own.stderr
    );

    let out = w
        .khctl(&["admin", "revoke", "ops"])
        .expect_ok("admin revoke");
    assert!(
        out.stdout.contains("Revoked admin certificate"),
        "{}",
        out.stdout
    );
    let refused = khctl_as(&ops, &["nodes"]);
    assert_eq!(refused.code, Some(1), "{}", refused.stdout);
    assert!(
        refused.stderr.contains("admin/ops") && refused.stderr.contains("has been revoked"),
        "{}",
        refused.stderr
    );

    // The revocation survives a restart, and the list says when it happened.
    w.coordinator.kill9();
    w.coordinator.start();
    let refused = khctl_as(&ops, &["nodes"]);
    assert!(
        refused.stderr.contains("has been revoked"),
        "{}",
        refused.stderr
    );
    w.khctl(&["nodes"]).expect_ok("the first admin still works");
    let listed = w.khctl_json(&["admin", "list"]);
    let ops_row = listed["admins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "ops")
        .cloned()
        .unwrap();
    assert!(ops_row["revoked"].is_string(), "{listed}");
}

/// The serial of the certificate the coordinator serves right now.
fn serving_serial(w: &World) -> String {
    let addr = w.coordinator.addr.to_string();
    let chain = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(kh::tls::fetch_presented_chain(&addr))
        .unwrap();
    kh::pki::identity_from_der(&chain[0]).unwrap().serial
}

/// The coordinator's serving certificate and key as its store holds them;
/// what a backup of the data dir, with its key, would give away. The
/// coordinator must be stopped (sled locks the store).
fn serving_credentials(w: &World) -> (String, kh::secret::Secret<String>) {
    let db = kh_coordinator::store::Db::open_dir(&w.coordinator.data_dir).unwrap();
    let rec: serde_json::Value = db.get_json("coordinator/serving").unwrap().unwrap();
    let key = db.get_secret("coordinator/serving-key").unwrap().unwrap();
    (rec["cert_pem"].as_str().unwrap().to_string(), key)
}

fn pinned(w: &World, idx: usize) -> String {
    std::fs::read_to_string(w.agents[idx].data_dir.join("coordinator.serial"))
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// How many heartbeats the coordinator has accepted from an agent, by its
/// own metrics.
fn successful_heartbeats(w: &World, idx: usize) -> u64 {
    let (_, body) = w.agents[idx].http_get("/metrics").unwrap();
    body.lines()
        .find(|l| l.starts_with("kh_agent_heartbeats_total{") && l.contains("success"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Restarts the coordinator with new advertised names, so that it issues
/// itself a new serving certificate, and returns the new serial.
fn restart_with_new_certificate(w: &mut World, extra_name: &str, interval: &str) -> String {
    let before = serving_serial(w);
    w.coordinator.kill9();
    let ip = w.coordinator.addr.ip().to_string();
    let args = &mut w.coordinator.args;
    args.clear();
    args.extend(
        [
            "--heartbeat-interval",
            interval,
            "--advertise",
            &ip,
            "--advertise",
            extra_name,
        ]
        .map(String::from),
    );
    w.coordinator.start();
    let after = serving_serial(w);
    assert_ne!(
        before, after,
        "a new advertised name must renew the certificate"
    );
    after
}

#[test]
fn an_agent_accepts_steps_only_from_the_pinned_coordinator_certificate() {
    let mut w = World::new(&[]);
    let cp1 = w.add_agent("cp-1");
    // Enrollment pinned the coordinator's certificate.
    let first = serving_serial(&w);
    assert_eq!(pinned(&w, cp1), first);
    assert_eq!(
        mode(&w.agents[cp1].data_dir.join("coordinator.serial")),
        0o600
    );

    // The coordinator renews its certificate (new names) at a restart. Its
    // first step to the agent carries the new certificate: the agent asks
    // the coordinator it enrolled with, which names it, and moves its pin.
    w.coordinator.kill9();
    let (old_cert, old_key) = serving_credentials(&w);
    w.coordinator.start();
    let second = restart_with_new_certificate(&mut w, "coordinator-2.kh.test", "300ms");
    let beats = successful_heartbeats(&w, cp1);
    kh_testbed::eventually(
        "cp-1 to heartbeat to the renewed coordinator",
        Duration::from_secs(20),
        || {
            let now = successful_heartbeats(&w, cp1);
            if now >= beats + 2 {
                Ok(())
            } else {
                Err(format!("{now} heartbeats"))
            }
        },
    );
    assert_eq!(
        pinned(&w, cp1),
        first,
        "heartbeats alone never move the pin"
    );
    let v = w.khctl_json(&["prepare", "--node", "cp-1", "--dry-run"]);
    assert_eq!(v["dryRun"], true, "{v}");
    assert_eq!(pinned(&w, cp1), second);
    let third = restart_with_new_certificate(&mut w, "coordinator-3.kh.test", "300ms");
    let v = w.khctl_json(&["prepare", "--node", "cp-1", "--dry-run"]);
    assert_eq!(v["dryRun"], true, "{v}");
    assert_eq!(pinned(&w, cp1), third);

    // The old certificate: valid, of the same CA, with the coordinator role,
    // and refused, also after the agent restarts.
    let call_with_old = |w: &World| {
        let a = &w.agents[cp1];
        let addr = a.grpc.to_string();
        let ca = std::fs::read_to_string(a.data_dir.join("ca.crt")).unwrap();
        let creds = kh::tls::ClientCreds {
            ca_pem: ca.clone(),
            cert_pem: old_cert.clone(),
            key_pem: old_key.clone(),
        };
        let server = format!("{}.node.kh", a.name);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let ch = kh::tls::channel(&addr, &server, Some(&creds), &ca).unwrap();
                kh::proto::agent_client::AgentClient::new(ch)
                    .get_facts(kh::proto::GetFactsRequest {})
                    .await
            })
    };
    for restart in [false, true] {
        if restart {
            w.agent("cp-1").kill9();
            w.agent("cp-1").start();
        }
        let err = call_with_old(&w).expect_err("the old coordinator certificate must be refused");
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
        assert!(
            err.message().contains(&format!(
                "coordinator certificate serial {first} is refused: it is older than the pinned one ({third})"
            )),
            "{}",
            err.message()
        );
    }
    // The current coordinator still runs steps.
    let v = w.khctl_json(&["prepare", "--node", "cp-1", "--dry-run"]);
    assert_eq!(v["dryRun"], true, "{v}");
}
