//! deploy/: the systemd units, the install scripts, the example specs and the
//! monitoring rules, checked with the real tools.

use std::path::{Path, PathBuf};
use std::process::Command;

use kh_testbed::world::{run, Out, World};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// A tool the suite needs; scripts/test installs it. Missing means the
/// environment is wrong, and the test says so by failing.
fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/bin", "/usr/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed; run the suite through scripts/test, which installs it");
}

#[test]
fn the_scripts_pass_shellcheck() {
    let out = run({
        let mut c = Command::new(tool("shellcheck"));
        c.arg(deploy().join("install-agent.sh"))
            .arg(deploy().join("install-coordinator.sh"));
        c
    });
    assert!(out.ok(), "{}{}", out.stdout, out.stderr);
}

#[test]
fn the_units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join("kh-coordinator.env");
    std::fs::write(
        &env,
        "KH_LISTEN=0.0.0.0:7443\nKH_ADVERTISE_FLAGS=--advertise 10.0.0.5\n",
    )
    .unwrap();
    let mut units = vec![];
    for unit in ["kh-agent", "kh-coordinator"] {
        // verify checks that ExecStart exists; point it at the built binary.
        let text = std::fs::read_to_string(deploy().join(format!("systemd/{unit}.service")))
            .unwrap()
            .replace(
                &format!("/usr/local/bin/{unit}"),
                &kh_testbed::bin(unit).display().to_string(),
            )
            .replace("/etc/default/kh-coordinator", &env.display().to_string());
        let p = dir.path().join(format!("{unit}.service"));
        std::fs::write(&p, text).unwrap();
        units.push(p);
    }
    let out = run({
        let mut c = Command::new(tool("systemd-analyze"));
        c.arg("verify").args(&units);
        c
    });
    assert!(out.ok(), "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.trim().is_empty(), "warnings: {}", out.stderr);
    for unit in ["kh-agent", "kh-coordinator"] {
        let text =
            std::fs::read_to_string(deploy().join(format!("systemd/{unit}.service"))).unwrap();
        assert!(
            text.contains("Type=notify") && text.contains("Restart=on-failure"),
            "{unit}"
        );
    }
}

/// A DESTDIR for the scripts, with the systemctl double recording calls.
struct Dest {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    node: PathBuf,
    systemctl: PathBuf,
}

impl Dest {
    fn new() -> Dest {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let node = tmp.path().join("node");
        let bin = tmp.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&root).unwrap();
        let systemctl = bin.join("systemctl");
        std::os::unix::fs::symlink(kh_testbed::bin("kh-testbed-double"), &systemctl).unwrap();
        Dest {
            _tmp: tmp,
            root,
            node,
            systemctl,
        }
    }

    fn script(&self, name: &str, args: &[&str]) -> Out {
        let mut c = Command::new("bash");
        c.arg(deploy().join(name))
            .args(args)
            .env("DESTDIR", &self.root)
            .env("SYSTEMCTL", &self.systemctl)
            .env("KH_TESTBED_ROOT", &self.root)
            .env("KH_TESTBED_NODE_DIR", &self.node);
        run(c)
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.node.join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.trim().to_string())
            .collect()
    }

    fn mode(&self, rel: &str) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(self.root.join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }
}

#[test]
fn install_coordinator_is_idempotent_and_reversible() {
    let d = Dest::new();
    let bin = kh_testbed::bin("kh-coordinator");
    let args = ["--advertise", "10.0.0.5", "--binary", bin.to_str().unwrap()];
    let out = d.script("install-coordinator.sh", &args);
    assert!(out.ok(), "{}{}", out.stdout, out.stderr);
    assert_eq!(d.mode("usr/local/bin/kh-coordinator"), 0o755);
    assert_eq!(d.mode("etc/systemd/system/kh-coordinator.service"), 0o644);
    assert_eq!(d.mode("var/lib/kh-coordinator"), 0o700);
    let env = std::fs::read_to_string(d.root.join("etc/default/kh-coordinator")).unwrap();
    assert!(
        env.contains("KH_ADVERTISE_FLAGS=--advertise 10.0.0.5"),
        "{env}"
    );
    assert_eq!(
        d.calls(),
        [
            "systemctl daemon-reload",
            "systemctl enable --now kh-coordinator.service"
        ]
    );

    let again = d.script("install-coordinator.sh", &args);
    assert!(again.ok());
    assert!(
        !again.stdout.contains("installed:") && !again.stdout.contains("created:"),
        "{}",
        again.stdout
    );
    assert_eq!(
        again.stdout.matches("unchanged:").count(),
        4,
        "{}",
        again.stdout
    );

    let missing = d.script(
        "install-coordinator.sh",
        &["--binary", bin.to_str().unwrap()],
    );
    assert!(!missing.ok());
    assert!(
        missing.stderr.contains("--advertise HOST is required"),
        "{}",
        missing.stderr
    );

    std::fs::write(d.root.join("var/lib/kh-coordinator/precious"), "ca").unwrap();
    let un = d.script("install-coordinator.sh", &["--uninstall"]);
    assert!(un.ok(), "{}{}", un.stdout, un.stderr);
    assert!(!d.root.join("usr/local/bin/kh-coordinator").exists());
    assert!(!d
        .root
        .join("etc/systemd/system/kh-coordinator.service")
        .exists());
    assert!(
        d.root.join("var/lib/kh-coordinator/precious").exists(),
        "data is kept without --purge"
    );
    assert!(un.stdout.contains("kept: "), "{}", un.stdout);
    assert!(d
        .calls()
        .contains(&"systemctl disable --now kh-coordinator.service".to_string()));
    let purge = d.script("install-coordinator.sh", &["--uninstall", "--purge"]);
    assert!(purge.ok());
    assert!(!d.root.join("var/lib/kh-coordinator").exists());
}

#[test]
fn install_agent_enrolls_for_real_and_is_idempotent() {
    let mut w = World::new(&[]);
    let (tok, hash, addr) = w.token("cp-1", &[]);
    let d = Dest::new();
    let bin = kh_testbed::bin("kh-agent");
    let args = [
        "--coordinator",
        &addr,
        "--token",
        &tok,
        "--ca-cert-hash",
        &hash,
        "--node-name",
        "cp-1",
        "--binary",
        bin.to_str().unwrap(),
    ];
    let out = d.script("install-agent.sh", &args);
    assert!(out.ok(), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("Enrolled as node cp-1"),
        "{}",
        out.stdout
    );
    for f in ["enrollment.yaml", "node.key", "node.crt", "ca.crt"] {
        assert_eq!(d.mode(&format!("var/lib/kh-agent/{f}")), 0o600, "{f}");
    }
    assert_eq!(
        d.calls(),
        [
            "systemctl daemon-reload",
            "systemctl enable --now kh-agent.service"
        ]
    );
    assert!(!out.stdout.contains(&tok), "the token is never echoed");

    // The same command again: nothing to do, the spent token is not sent.
    let again = d.script("install-agent.sh", &args);
    assert!(again.ok(), "{}{}", again.stdout, again.stderr);
    assert!(
        again.stdout.contains("Already enrolled as node cp-1"),
        "{}",
        again.stdout
    );

    // The installed agent serves with that identity.
    let data = d.root.join("var/lib/kh-agent");
    let idx = w.declare_agent("cp-1");
    w.agents[idx].data_dir = data.clone();
    w.agents[idx].start();
    w.wait_health("cp-1", "Ready", std::time::Duration::from_secs(20));

    let un = d.script("install-agent.sh", &["--uninstall"]);
    assert!(un.ok());
    assert!(!d.root.join("usr/local/bin/kh-agent").exists());
    assert!(
        data.join("node.key").exists(),
        "identity kept without --purge"
    );
}

#[test]
fn the_example_specs_are_valid() {
    for (file, cps) in [
        ("stacked.yaml", 3),
        ("external-etcd.yaml", 3),
        ("raspberry-pi.yaml", 1),
    ] {
        let text = std::fs::read_to_string(deploy().join("examples").join(file)).unwrap();
        let spec = kh::spec::parse(&text).unwrap_or_else(|e| panic!("{file}:\n{e}"));
        assert_eq!(spec.control_planes().count(), cps, "{file}");
        assert!(spec.control_plane_count_check(false).is_ok(), "{file}");
    }
}

#[test]
fn alert_rules_use_only_metrics_the_agent_exports() {
    let rules: serde_json::Value = serde_yaml_to_json(
        &std::fs::read_to_string(deploy().join("monitoring/kh-alerts.yml")).unwrap(),
    );
    let mut w = World::new(&[]);
    w.add_agent("w-1");
    let (_, exported) = w.agents[0].http_get("/metrics").unwrap();
    let mut checked = 0;
    for rule in rules["groups"][0]["rules"].as_array().unwrap() {
        let expr = rule["expr"].as_str().unwrap();
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            // Exported only by agents on hosts with a stacked etcd member;
            // the rollout test proves a control plane exports it.
            if word == "kh_agent_etcd_member_healthy" {
                continue;
            }
            // Exported only by agents on hosts with Kubernetes certificates;
            // tests/e2e/tests/certs.rs proves both roles export it.
            if word == "kh_agent_cluster_cert_expiry_seconds" {
                continue;
            }
            if word.starts_with("kh_agent_") {
                assert!(
                    exported.contains(word),
                    "alert {} uses {word}, which kh-agent does not export",
                    rule["alert"]
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 3, "the rules should reference agent metrics");
    let scrape = std::fs::read_to_string(deploy().join("monitoring/prometheus.yml")).unwrap();
    assert!(scrape.contains("kh-alerts.yml") && scrape.contains("metrics_path: /metrics"));
}

fn serde_yaml_to_json(text: &str) -> serde_json::Value {
    let v: serde_yaml::Value = serde_yaml::from_str(text).expect("valid YAML");
    serde_json::to_value(v).expect("YAML maps to JSON")
}
