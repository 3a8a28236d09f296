//! kh-sandbox end to end: `up` writes a valid cluster spec and khctl
//! credentials, hosts can be added, killed and started, and `down` leaves no
//! process and no listening port behind.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kh_testbed::eventually;
use kh_testbed::world::{run, Out};

/// Runs `kh-sandbox down` when dropped, so a failing test leaves nothing.
struct Sandbox {
    dir: PathBuf,
    prefix: String,
    _tmp: tempfile::TempDir,
}

impl Sandbox {
    /// A sandbox in a block of its own: the second octet this test process
    /// owns (see net::fresh_ip), and `third`, an octet fresh_ip does not
    /// reach (240 and up), different for each test of this file.
    fn new(third: u8) -> Sandbox {
        let tmp = tempfile::Builder::new()
            .prefix("kh-e2e-sandbox-")
            .tempdir()
            .unwrap();
        let o = kh_testbed::net::fresh_ip().octets();
        Sandbox {
            dir: tmp.path().join("sb"),
            prefix: format!("127.{}.{third}", o[1]),
            _tmp: tmp,
        }
    }

    /// `khctl --config DIR/admin.khconfig ARGS`.
    fn khctl(&self, args: &[&str]) -> Command {
        let mut c = Command::new(kh_testbed::bin("khctl"));
        c.arg("--config")
            .arg(self.dir.join("admin.khconfig"))
            .args(args);
        c
    }

    fn node_env(&self, name: &str) -> kh_testbed::kube::NodeEnv {
        let node = self.dir.join("nodes").join(name);
        kh_testbed::kube::NodeEnv::new(&node.join("root"), &node, None)
    }

    /// The pid of lb-1's HAProxy, if it runs.
    fn haproxy_pid(&self) -> Option<u32> {
        kh_testbed::doubles::haproxy::running_pid(&self.node_env("lb-1"))
    }

    /// GET /healthz through the control-plane endpoint (lb-1's HAProxy),
    /// trusting the cluster CA on cp-1.
    fn endpoint_healthz(&self) -> Result<(u16, String), String> {
        use kh_testbed::kube::http::{Client, Credentials, Trust};
        let ca =
            std::fs::read_to_string(self.dir.join("nodes/cp-1/root/etc/kubernetes/pki/ca.crt"))
                .map_err(|e| format!("no cluster CA on cp-1: {e}"))?;
        let mut c = Client::new(
            &format!("https://{}:6443", self.ip(9)),
            &Trust::Ca(ca),
            &Credentials::default(),
        )
        .map_err(|e| e.to_string())?;
        c.timeout = Duration::from_secs(5);
        c.get("/healthz")
            .map(|r| (r.status, r.body.trim().to_string()))
            .map_err(|e| e.to_string())
    }

    fn coordinator_pid(&self) -> u32 {
        std::fs::read_to_string(self.dir.join("pids/coordinator.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn run(&self, args: &[&str]) -> Out {
        let mut cmd = Command::new(kh_testbed::bin("kh-sandbox"));
        cmd.arg("--dir").arg(&self.dir).args(args);
        run(cmd)
    }

    fn ip(&self, last: u8) -> Ipv4Addr {
        format!("{}.{last}", self.prefix).parse().unwrap()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
    }
}

fn listening(ip: Ipv4Addr, port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_millis(200)).is_ok()
}

fn processes_naming(dir: &Path) -> Vec<(u32, String)> {
    kh_testbed::proc::processes_naming(&dir.to_string_lossy())
        .into_iter()
        .map(|(pid, _)| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default();
            (pid, cmd)
        })
        .collect()
}

/// The env and path a double on sandbox host `name` runs with.
fn host_tool(sb: &Sandbox, name: &str, tool: &str) -> Command {
    let node = sb.dir.join("nodes").join(name);
    let mut cmd = Command::new(node.join("bin").join(tool));
    cmd.env("KH_TESTBED_ROOT", node.join("root"))
        .env("KH_TESTBED_NODE_DIR", &node)
        .env("KH_TESTBED_DIR", &sb.dir);
    cmd
}

#[test]
fn sandbox_up_add_node_kill_start_and_down_leave_nothing_behind() {
    let sb = Sandbox::new(240);
    let out = sb
        .run(&[
            "up",
            "--control-planes",
            "1",
            "--workers",
            "1",
            "--ip-prefix",
            &sb.prefix,
        ])
        .expect_ok("kh-sandbox up");
    let d = sb.dir.display();
    assert!(
        out.stdout.contains(&format!(
            "khctl --config {d}/admin.khconfig rollout -f {d}/cluster.yaml"
        )),
        "{}",
        out.stdout
    );
    let spec = kh::spec::parse(&std::fs::read_to_string(sb.dir.join("cluster.yaml")).unwrap())
        .unwrap_or_else(|e| panic!("cluster.yaml is invalid:\n{e}"));
    let cp1 = sb.ip(11);
    // The endpoint is the load-balancer host, on its own address.
    let lb = sb.ip(9);
    assert_eq!(
        spec.control_plane_endpoint.as_ref().map(|e| e.to_string()),
        Some(format!("{lb}:6443"))
    );
    assert_eq!(spec.load_balancer, kh::spec::LoadBalancerType::Haproxy);
    let roles: Vec<(String, String, String)> = spec
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.role.to_string(), n.address.to_string()))
        .collect();
    assert_eq!(
        roles,
        [
            ("cp-1".into(), "control-plane".into(), cp1.to_string()),
            ("w-1".into(), "worker".into(), sb.ip(12).to_string()),
            ("lb-1".into(), "loadbalancer".into(), lb.to_string()),
        ]
    );
    assert!(sb.dir.join("cni.yaml").exists());
    // The khctl credentials work.
    let nodes = run({
        let mut c = Command::new(kh_testbed::bin("khctl"));
        c.arg("--config")
            .arg(sb.dir.join("admin.khconfig"))
            .arg("nodes");
        c
    })
    .expect_ok("khctl nodes");
    assert!(
        nodes.stdout.contains("cp-1") && nodes.stdout.contains("w-1"),
        "{}",
        nodes.stdout
    );

    // A replacement control plane outside the spec.
    sb.run(&["add-node", "cp-2", "--role", "control-plane"])
        .expect_ok("add-node");
    let status = sb.run(&["status"]).expect_ok("status");
    assert!(status.stdout.contains("cp-2"), "{}", status.stdout);
    assert!(listening(sb.ip(13), 7445), "cp-2's agent listens");

    // Give cp-1 static pods, so down has an etcd and an apiserver to stop.
    let cfg = sb.dir.join("kubeadm.yaml");
    std::fs::write(
        &cfg,
        format!("apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\ncontrolPlaneEndpoint: {cp1}:6443\n"),
    )
    .unwrap();
    let mut init = host_tool(&sb, "cp-1", "kubeadm");
    init.args(["init", "--config", cfg.to_str().unwrap()]);
    run(init).expect_ok("kubeadm init on cp-1");
    assert!(listening(cp1, 2379) && listening(cp1, 6443));

    // A host losing power, and coming back: its static pods return.
    sb.run(&["kill-node", "cp-1"]).expect_ok("kill-node");
    for port in [7444, 7445, 2379, 2380, 6443] {
        assert!(!listening(cp1, port), "cp-1 still listens on {port}");
    }
    sb.run(&["start-node", "cp-1"]).expect_ok("start-node");
    eventually(
        "cp-1's apiserver and etcd to return",
        Duration::from_secs(30),
        || {
            if listening(cp1, 6443) && listening(cp1, 2379) && listening(cp1, 7445) {
                Ok(())
            } else {
                Err("not yet".into())
            }
        },
    );

    let out = sb.run(&["down"]).expect_ok("down");
    assert!(out.stdout.starts_with("Stopped "), "{}", out.stdout);
    let left = processes_naming(&sb.dir);
    assert!(left.is_empty(), "processes left behind: {left:?}");
    let mut ports = vec![(sb.ip(10), 7443)];
    for host in [9, 11, 12, 13] {
        ports.extend([(sb.ip(host), 7444), (sb.ip(host), 7445)]);
    }
    ports.extend([(cp1, 2379), (cp1, 2380), (cp1, 6443)]);
    for (ip, port) in ports {
        assert!(
            !listening(ip, port),
            "{ip}:{port} still accepts connections"
        );
    }
    let status = sb.run(&["status"]).expect_ok("status after down");
    assert!(!status.stdout.contains("running (pid"), "{}", status.stdout);
}

/// Whether `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s
                .rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next())
                .unwrap_or("X");
            !matches!(state, "Z" | "X")
        })
        .unwrap_or(false)
}

#[test]
fn sandbox_add_node_and_start_node_leave_haproxy_on_lb_1_running() {
    let sb = Sandbox::new(241);
    sb.run(&[
        "up",
        "--control-planes",
        "1",
        "--workers",
        "0",
        "--ip-prefix",
        &sb.prefix,
    ])
    .expect_ok("kh-sandbox up");
    let spec = sb.dir.join("cluster.yaml");
    run(sb.khctl(&["rollout", "-f", spec.to_str().unwrap()])).expect_ok("khctl rollout");
    let pid = sb
        .haproxy_pid()
        .expect("HAProxy runs on lb-1 after the rollout");
    assert_eq!(sb.endpoint_healthz(), Ok((200, "ok".to_string())));

    // Each command re-attaches every host of the sandbox; none may stop
    // what runs there.
    let steps: [&[&str]; 3] = [
        &["add-node", "w-9"],
        &["kill-node", "w-9"],
        &["start-node", "w-9"],
    ];
    for args in steps {
        sb.run(args)
            .expect_ok(&format!("kh-sandbox {}", args.join(" ")));
        assert_eq!(
            sb.haproxy_pid(),
            Some(pid),
            "lb-1's HAProxy after `kh-sandbox {}`",
            args.join(" ")
        );
        assert_eq!(
            sb.endpoint_healthz(),
            Ok((200, "ok".to_string())),
            "the endpoint after `kh-sandbox {}`",
            args.join(" ")
        );
    }
    let status = sb.run(&["status"]).expect_ok("status");
    assert!(
        status.stdout.contains(&format!("haproxy (pid {pid})")),
        "{}",
        status.stdout
    );
}

#[test]
fn sandbox_restart_coordinator_crashes_it_and_a_rollout_resumes() {
    let sb = Sandbox::new(242);
    sb.run(&[
        "up",
        "--control-planes",
        "1",
        "--workers",
        "1",
        "--load-balancer",
        "none",
        "--ip-prefix",
        &sb.prefix,
    ])
    .expect_ok("kh-sandbox up");
    // A slow worker join, so the coordinator dies while it runs.
    kh_testbed::doubles::latency::write(
        &sb.dir,
        Duration::ZERO,
        Duration::ZERO,
        Duration::from_secs(3),
    );
    let spec = sb.dir.join("cluster.yaml");
    let spec = spec.to_str().unwrap();
    let mut first = kh_testbed::proc::Proc::spawn(
        "khctl rollout",
        sb.khctl(&["rollout", "-f", spec]),
        &sb.dir.join("khctl-first.log"),
    );
    let w1_calls = sb.dir.join("nodes/w-1/calls.log");
    eventually("w-1's join to start", Duration::from_secs(120), || {
        let calls = std::fs::read_to_string(&w1_calls).unwrap_or_default();
        if calls.lines().any(|c| c.starts_with("kubeadm join")) {
            Ok(())
        } else {
            Err(calls)
        }
    });
    let old = sb.coordinator_pid();
    let out = sb
        .run(&["restart-coordinator"])
        .expect_ok("kh-sandbox restart-coordinator");
    assert!(
        out.stdout
            .contains(&format!("Killed the coordinator (pid {old}) with SIGKILL.")),
        "{}",
        out.stdout
    );
    let new = sb.coordinator_pid();
    assert_ne!(new, old);
    assert!(!alive(old), "the old coordinator {old} still runs");
    assert!(alive(new), "the new coordinator {new} does not run");
    assert!(
        out.stdout.contains(&format!(
            "Started the coordinator (pid {new}) on {}:7443, data dir {}",
            sb.ip(10),
            sb.dir.join("coordinator").display()
        )),
        "{}",
        out.stdout
    );
    // A crash, not a clean stop: the coordinator never logged its shutdown.
    let log = std::fs::read_to_string(sb.dir.join("coordinator.log")).unwrap();
    assert!(!log.contains("shutting down"), "{log}");
    // The khctl that watched the rollout lost its coordinator.
    eventually("the first khctl to exit", Duration::from_secs(30), || {
        if first.is_running() {
            Err("still running".into())
        } else {
            Ok(())
        }
    });

    // The same data dir: the credentials still work and the rollout resumes.
    let out = run(sb.khctl(&["rollout", "-f", spec]));
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    let nodes = run(sb.khctl(&["nodes"])).expect_ok("khctl nodes");
    assert!(nodes.stdout.contains("w-1"), "{}", nodes.stdout);
    let status = sb.run(&["status"]).expect_ok("status");
    assert!(
        status.stdout.contains(&format!("running (pid {new})")),
        "{}",
        status.stdout
    );

    // kill-node and start-node take the coordinator too.
    sb.run(&["kill-node", "coordinator"])
        .expect_ok("kill-node coordinator");
    assert!(!alive(new));
    let again = run(sb.khctl(&["nodes"]));
    assert!(!again.ok(), "{}", again.stdout);
    // Something else on the coordinator's address: start-node says so.
    let squatter = std::net::TcpListener::bind((sb.ip(10), 7443)).unwrap();
    let refused = sb.run(&["start-node", "coordinator"]);
    assert!(!refused.ok());
    assert!(
        refused
            .stderr
            .contains(&format!("{}:7443 is not free", sb.ip(10))),
        "{}",
        refused.stderr
    );
    drop(squatter);
    sb.run(&["start-node", "coordinator"])
        .expect_ok("start-node coordinator");
    run(sb.khctl(&["nodes"])).expect_ok("khctl nodes after start-node coordinator");
    let refused = sb.run(&["start-node", "coordinator"]);
    assert!(!refused.ok());
    assert!(
        refused.stderr.contains("the coordinator is running"),
        "{}",
        refused.stderr
    );
}
