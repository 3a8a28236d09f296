//! No secret on a command line: a full rollout, an etcd member replacement
//! that has to refresh the join material, and a reset, after which no
//! command line any double saw (`calls.log`), no kh log line and no file
//! left on a host holds a bootstrap token, its secret half, a certificate
//! key or private key material. `ps` and `/proc/PID/cmdline` show every
//! argument to every user of a host, so a secret on argv is a secret given
//! away.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kh_testbed::doubles::kubeadm::SECRETS_FILE;
use kh_testbed::spec::{cluster_yaml, SpecNode};
use kh_testbed::world::World;

fn node(w: &World, idx: usize, role: &str) -> SpecNode {
    SpecNode {
        name: w.agents[idx].name.clone(),
        role: role.into(),
        ip: w.agents[idx].ip.to_string(),
    }
}

fn is_token(s: &str) -> bool {
    let ok = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    matches!(s.split_once('.'), Some((id, secret)) if ok(id, 6) && ok(secret, 16))
}

fn is_certificate_key(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Every regular file under `dir`, skipping `skip` subtrees.
fn files_under(dir: &Path, skip: &[PathBuf], out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if !skip.contains(&path) {
                files_under(&path, skip, out);
            }
        } else if meta.is_file() {
            out.push(path);
        }
    }
}

#[test]
fn no_secret_reaches_a_command_line_a_log_or_a_leftover_file() {
    let mut w = World::new(&[]);
    let mut nodes = vec![];
    for i in 1..=3 {
        let idx = w.add_kube_node(&format!("cp-{i}"));
        nodes.push(node(&w, idx, "control-plane"));
    }
    let idx_w = w.add_kube_node("w-1");
    nodes.push(node(&w, idx_w, "worker"));
    let spec =
        kh_testbed::spec::write(w.dir(), "cluster.yaml", &cluster_yaml("sec", &nodes, "")).unwrap();
    let out = w.khctl(&["rollout", "-f", spec.to_str().unwrap()]);
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    // The cluster CA's private key, to look for its body later (reset
    // removes it from the hosts).
    let ca_key = std::fs::read_to_string(w.agents[0].path("/etc/kubernetes/pki/ca.key")).unwrap();
    assert!(ca_key.contains("PRIVATE KEY"), "{ca_key}");

    // A day later both the token (24 h) and the kubeadm-certs Secret (2 h)
    // have expired: the replacement must create a token and upload the
    // certificates again before cp-4 joins.
    w.advance_clock(Duration::from_secs(25 * 3600));
    w.agent("cp-2").power_off();
    w.add_kube_node("cp-4");
    let out = w.khctl(&["etcd", "replace", "--failed", "cp-2", "--with", "cp-4"]);
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);

    let out = w.khctl(&["reset", "--yes"]);
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);

    // Every token and key the kubeadm double was given, on any host.
    let mut tokens = BTreeSet::new();
    let mut keys = BTreeSet::new();
    for a in &w.agents {
        let ledger = std::fs::read_to_string(a.node_dir().join(SECRETS_FILE)).unwrap_or_default();
        for line in ledger.lines() {
            if is_token(line) {
                tokens.insert(line.to_string());
            } else if is_certificate_key(line) {
                keys.insert(line.to_string());
            } else {
                panic!("{}: unexpected line in {SECRETS_FILE}: {line:?}", a.name);
            }
        }
    }
    assert!(
        tokens.len() >= 2,
        "init's token and a refreshed one: {}",
        tokens.len()
    );
    assert!(!keys.is_empty(), "no certificate key was used");

    // The scenario did exercise the commands that used to take secrets on
    // argv; otherwise this test would prove nothing.
    // The doubles' calls and the command lines kh gave the real etcdctl.
    let all_calls: Vec<(String, String)> = w
        .agents
        .iter()
        .flat_map(|a| {
            a.calls()
                .into_iter()
                .chain(a.etcdctl_calls())
                .map(|c| (a.name.clone(), c))
        })
        .collect();
    for wanted in [
        "kubeadm token create ",
        "kubeadm init phase upload-certs ",
        "kubeadm init --config ",
        "kubeadm join --config ",
        "kubeadm reset -f",
        "etcdctl ",
    ] {
        assert!(
            all_calls.iter().any(|(_, c)| c.starts_with(wanted)),
            "no `{wanted}` in {all_calls:#?}"
        );
    }

    let mut needles: Vec<(String, &str)> = vec![];
    for t in &tokens {
        needles.push((t.clone(), "a bootstrap token"));
        let secret = t.split_once('.').unwrap().1.to_string();
        needles.push((secret, "a bootstrap token's secret"));
    }
    for k in &keys {
        needles.push((k.clone(), "a certificate key"));
    }
    needles.push(("PRIVATE KEY".to_string(), "PEM key material"));
    for line in ca_key
        .lines()
        .filter(|l| l.len() >= 32 && !l.starts_with("-----"))
    {
        needles.push((line.to_string(), "the cluster CA key"));
    }

    // 1. Command lines: every call of every double, on every host.
    let mut hits = vec![];
    for (host, call) in &all_calls {
        for (needle, what) in &needles {
            if call.contains(needle.as_str()) {
                hits.push(format!("{host}'s command line has {what}: {call}"));
            }
        }
    }
    // 2. Log lines of kh itself.
    let mut logs = vec![("coordinator".to_string(), w.coordinator.log_text())];
    logs.extend(w.agents.iter().map(|a| (a.name.clone(), a.log_text())));
    for (who, text) in &logs {
        for line in text.lines() {
            for (needle, what) in &needles {
                if line.contains(needle.as_str()) {
                    hits.push(format!("{who}'s log has {what}: {line}"));
                }
            }
        }
    }
    // 3. Files left on the hosts: no config with a token or key may
    // outlive its step, whatever the outcome. (etcd's data holds the
    // cluster's own Secrets, as on a real cluster, and cp-2 lost power
    // before it could be reset.)
    for a in &w.agents {
        let mut files = vec![];
        files_under(&a.root, &[a.path("/var/lib/etcd")], &mut files);
        for f in files {
            let Ok(bytes) = std::fs::read(&f) else {
                continue;
            };
            let text = String::from_utf8_lossy(&bytes);
            for (needle, what) in needles
                .iter()
                .filter(|(_, what)| *what == "a bootstrap token" || *what == "a certificate key")
            {
                if text.contains(needle.as_str()) {
                    hits.push(format!("{} left {} holding {what}", a.name, f.display()));
                }
            }
        }
        // The directory the step files live in is the agent's alone.
        let state = a.path("/var/lib/kh-agent");
        if let Ok(meta) = std::fs::metadata(&state) {
            let mode = meta.permissions().mode() & 0o777;
            if mode != 0o700 {
                hits.push(format!(
                    "{} has {} with mode {mode:o}",
                    a.name,
                    state.display()
                ));
            }
            let left: Vec<String> = std::fs::read_dir(&state)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            if !left.is_empty() {
                hits.push(format!("{} left step files behind: {left:?}", a.name));
            }
        }
    }
    assert!(
        w.agents
            .iter()
            .all(|a| a.path("/var/lib/kh-agent").exists()),
        "every host ran init or join through a config file"
    );
    assert!(hits.is_empty(), "secrets leaked:\n{}", hits.join("\n"));
}

/// The enrollment command `khctl token create` prints hands the token to
/// kh-agent on stdin, and pasted into a shell as printed it enrolls.
#[test]
fn the_printed_enroll_command_keeps_the_token_off_the_agent_s_command_line() {
    let mut w = World::new(&[]);
    let idx = w.declare_agent("cp-1");
    let v = w.khctl_json(&["token", "create", "--node", "cp-1"]);
    let token = v["token"].as_str().unwrap().to_string();
    let printed = v["enrollCommand"].as_str().unwrap().to_string();
    let (echo, agent) = printed.split_once(" | ").expect("a pipeline");
    assert_eq!(echo, format!("echo {token}"));
    assert!(
        agent.starts_with("kh-agent enroll ") && !agent.contains(&token),
        "{printed}"
    );
    assert!(agent.contains(" --token-file - "), "{printed}");

    // As an operator would paste it (echo is the shell's builtin, so no
    // process ever has the token in its argv).
    let a = &w.agents[idx];
    let bin_dir = kh_testbed::bin_dir();
    let out = kh_testbed::world::run({
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg(format!("{printed} --data-dir \"$1\""))
            .arg("sh")
            .arg(&a.data_dir)
            .env("PATH", format!("{}:/usr/bin:/bin", bin_dir.display()));
        cmd
    });
    assert!(out.ok(), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("Enrolled as node cp-1"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains(&token) && !out.stderr.contains(&token));

    // An empty token file is refused before anything is sent.
    let empty = w.dir().join("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    let out = kh_testbed::world::run({
        let mut cmd = std::process::Command::new(kh_testbed::bin("kh-agent"));
        cmd.args(["enroll", "--coordinator", "127.0.0.1:1", "--token-file"])
            .arg(&empty)
            .args([
                "--ca-cert-hash",
                "sha256:00",
                "--node-name",
                "cp-1",
                "--data-dir",
            ])
            .arg(w.dir().join("other-data"));
        cmd
    });
    assert!(!out.ok());
    assert!(out.stderr.contains("the token is empty"), "{}", out.stderr);
}

/// A step killed with its agent cannot remove its config: the agent removes
/// what such a step left before it serves again.
#[test]
fn an_agent_removes_the_configs_a_killed_step_left_when_it_starts() {
    let mut w = World::new(&[]);
    let idx = w.add_kube_node("cp-1");
    w.agents[idx].kill9();
    let a = &w.agents[idx];
    let dir = a.path("/var/lib/kh-agent");
    std::fs::create_dir_all(&dir).unwrap();
    let leftovers = [
        "kubeadm-init.yaml",
        "kubeadm-join.yaml",
        "kubeadm-token.yaml",
        "kubeadm-upload-certs.yaml",
        ".kubeadm-token.yaml.kh-tmp-1-0",
    ];
    for name in leftovers {
        std::fs::write(dir.join(name), "- token: abcdef.0123456789abcdef\n").unwrap();
    }
    std::fs::write(dir.join("apply-cni.yaml"), "kind: List\n").unwrap();
    w.agents[idx].start();
    let a = &w.agents[idx];
    for name in leftovers {
        assert!(!dir.join(name).exists(), "{name} survived the restart");
    }
    assert!(dir.join("apply-cni.yaml").exists(), "only step configs go");
    assert!(
        a.log_text()
            .contains("removed kubeadm configs an interrupted step left behind"),
        "{}",
        a.log_text()
    );
}
