//! `khctl etcd snapshot` end to end on the testbed: the agent's real
//! `etcdctl snapshot save/status` against real etcd 3.4, streamed to the
//! coordinator and stored sealed.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use kh_testbed::spec::{cluster_yaml, SpecNode};
use kh_testbed::world::World;

/// A rolled-out cluster of one control plane whose spec schedules a
/// snapshot every 3 s, keeping 2, and a coordinator serving metrics at the
/// address returned.
fn rolled_out() -> (World, SocketAddr) {
    let metrics = kh_testbed::net::fresh_addr();
    let mut w = World::new(&["--metrics-address", &metrics.to_string()]);
    let idx = w.add_kube_node("cp-1");
    let nodes = vec![SpecNode {
        name: "cp-1".into(),
        role: "control-plane".into(),
        ip: w.agents[idx].ip.to_string(),
    }];
    let extra = "  etcd:\n    snapshots: {every: 3s, keep: 2}\n";
    let spec =
        kh_testbed::spec::write(w.dir(), "cluster.yaml", &cluster_yaml("e2e", &nodes, extra))
            .unwrap();
    let out = w.khctl(&["rollout", "-f", spec.to_str().unwrap()]);
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    (w, metrics)
}

/// Every file's bytes under `dir`, recursively.
fn contains_bytes(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = vec![];
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            hits.extend(contains_bytes(&p, needle));
        } else if let Ok(bytes) = std::fs::read(&p) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                hits.push(p.display().to_string());
            }
        }
    }
    hits
}

fn list(w: &World, reason: &str) -> Vec<serde_json::Value> {
    w.khctl_json(&["etcd", "snapshot", "list"])["snapshots"]
        .as_array()
        .cloned()
        .unwrap()
        .into_iter()
        .filter(|m| m["reason"] == reason)
        .collect()
}

#[test]
fn snapshots_are_saved_sealed_listed_written_out_deleted_scheduled_pruned_and_measured() {
    let (w, metrics) = rolled_out();
    let cp = &w.agents[0];
    let marker = format!("kh-plaintext-marker-{}", std::process::id());
    cp.etcdctl(&[], &["put", "/kh-e2e/secret", &marker])
        .expect_ok("etcdctl put");

    let first = w.khctl_json(&["etcd", "snapshot", "save"]);
    assert_eq!(first["node"], "cp-1", "{first}");
    assert_eq!(first["reason"], "manual", "{first}");
    assert!(first["revision"].as_i64().unwrap() > 0, "{first}");
    assert!(first["totalKeys"].as_i64().unwrap() > 0, "{first}");
    let id = first["id"].as_str().unwrap().to_string();

    // Sealed at rest: the key written into etcd is nowhere in the
    // coordinator's data dir, though the snapshot file holds it.
    let data = &w.coordinator.data_dir;
    let sealed = data.join("snapshots").join(format!("{id}.snap"));
    assert!(sealed.exists(), "{}", sealed.display());
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&sealed), 0o600);
    assert_eq!(mode(&data.join("snapshots")), 0o700);
    assert_eq!(
        contains_bytes(data, marker.as_bytes()),
        Vec::<String>::new()
    );

    // -o FILE: a second snapshot, also written out as a plain etcd file.
    let file = w.dir().join("out.db");
    let out = w
        .khctl(&["etcd", "snapshot", "save", "-o", file.to_str().unwrap()])
        .expect_ok("snapshot save -o FILE");
    assert!(
        out.stdout.contains("Stored etcd snapshot"),
        "{}",
        out.stdout
    );
    assert_eq!(mode(&file), 0o600);
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.windows(marker.len()).any(|w| w == marker.as_bytes()));
    let status = kh_testbed::world::run({
        let mut c = std::process::Command::new("etcdctl");
        c.env("ETCDCTL_API", "3")
            .args(["snapshot", "status", "-w", "json"])
            .arg(&file);
        c
    })
    .expect_ok("etcdctl snapshot status FILE");
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert!(status["totalKey"].as_i64().unwrap() > 0, "{status}");

    let all = list(&w, "manual");
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[0]["id"], id.as_str());
    let table = w.khctl(&["etcd", "snapshot", "list"]).expect_ok("list");
    assert!(table.stdout.contains("REVISION"), "{}", table.stdout);
    assert!(table.stdout.contains(&id), "{}", table.stdout);

    // get -o FILE writes the first one back, byte for byte what was stored.
    let back = w.dir().join("back.db");
    w.khctl(&["etcd", "snapshot", "get", &id, "-o", back.to_str().unwrap()])
        .expect_ok("snapshot get");
    let back_bytes = std::fs::read(&back).unwrap();
    assert_eq!(back_bytes.len() as u64, first["size"].as_u64().unwrap());
    assert!(back_bytes
        .windows(marker.len())
        .any(|w| w == marker.as_bytes()));

    // The agent kept no copy.
    let agent_dir = cp.path("/var/lib/kh-agent");
    let left: Vec<_> = std::fs::read_dir(&agent_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("etcd-snapshot-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    w.khctl(&["etcd", "snapshot", "delete", &id])
        .expect_ok("snapshot delete");
    assert!(!sealed.exists());
    assert_eq!(list(&w, "manual").len(), 1);
    let again = w.khctl(&["etcd", "snapshot", "delete", &id]);
    assert_eq!(again.code, Some(2), "{}\n{}", again.stdout, again.stderr);
    assert!(
        again.stderr.contains("no etcd snapshot"),
        "{}",
        again.stderr
    );

    let history = w.khctl(&["history"]).expect_ok("history");
    assert!(
        history.stdout.contains("etcd snapshot"),
        "{}",
        history.stdout
    );

    // Scheduled snapshots appear every 3 s and are pruned to the newest 2;
    // the manual one stays.
    kh_testbed::eventually(
        "a scheduled snapshot pruned",
        Duration::from_secs(60),
        || {
            let history = w.khctl_json(&["history"]);
            let pruned = history["entries"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["operation"] == "etcd snapshot" && e["step"] == "prune")
                .count();
            let scheduled = list(&w, "scheduled").len();
            if pruned >= 1 && scheduled == 2 {
                Ok(())
            } else {
                let log = w.coordinator.log_text();
                let tail: Vec<&str> = log.lines().filter(|l| l.contains("snapshot")).collect();
                Err(format!(
                    "{pruned} pruned, {scheduled} scheduled kept; the coordinator's log:\n{}",
                    tail[tail.len().saturating_sub(5)..].join("\n")
                ))
            }
        },
    );
    assert_eq!(list(&w, "manual").len(), 1);

    let (code, text) = kh_testbed::world::http_get(metrics, "/metrics").unwrap();
    assert_eq!(code, 200, "{text}");
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .parse()
            .unwrap()
    };
    let last = value("kh_coordinator_etcd_snapshot_last_success_timestamp_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(last > now - 60.0 && last <= now + 1.0, "{last} vs {now}");
    assert!(value("kh_coordinator_etcd_snapshots") >= 3.0, "{text}");
    assert_eq!(value("kh_coordinator_etcd_snapshot_schedule_seconds"), 3.0);
    // Every coordinator metric the alert rules use is exported.
    let rules = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/monitoring/kh-alerts.yml"),
    )
    .unwrap();
    let used: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("kh_coordinator_"))
        .collect();
    assert!(used.len() >= 2, "{used:?}");
    for m in used {
        assert!(
            text.contains(m),
            "the alert rules use {m}, which kh-coordinator does not export"
        );
    }
    let (code, _) = kh_testbed::world::http_get(metrics, "/healthz").unwrap();
    assert_eq!(code, 200);
}
