//! A coordinator and its agents, as real processes on loopback.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::external_etcd::ExternalEtcd;
use crate::hostroot::{self, HostSpec};
use crate::net;
use crate::proc::Proc;
use crate::{bin, eventually};

/// The result of a finished command.
#[derive(Debug, Clone)]
pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Panics with both streams unless the command succeeded.
    pub fn expect_ok(self, what: &str) -> Out {
        assert!(
            self.ok(),
            "{what} failed ({:?}):\nstdout: {}\nstderr: {}",
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }
}

pub fn run(mut cmd: Command) -> Out {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()));
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub struct CoordinatorProc {
    pub proc: Option<Proc>,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub admin: PathBuf,
    pub args: Vec<String>,
    log: PathBuf,
}

impl CoordinatorProc {
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(bin("kh-coordinator"));
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(self.addr.to_string())
            .args(&self.args)
            .env("KH_LOG", "info");
        cmd
    }

    pub fn start(&mut self) {
        assert!(self.proc.is_none(), "coordinator already running");
        self.proc = Some(Proc::spawn("kh-coordinator", self.command(), &self.log));
        self.wait_listening();
    }

    /// Waits until the process accepts TCP and its admin credentials exist.
    pub fn wait_listening(&mut self) {
        let addr = self.addr;
        let admin = self.admin.clone();
        let log = self.log.clone();
        let proc = self.proc.as_mut().expect("started");
        eventually("the coordinator to listen", Duration::from_secs(20), || {
            if !proc.is_running() {
                panic!(
                    "kh-coordinator exited:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if admin.exists()
                && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            {
                Ok(())
            } else {
                Err("not listening yet".into())
            }
        });
    }

    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// One testbed host: its agent and, on a Kubernetes host, its kubelet
/// double (which runs the host's static pods: etcd, the apiserver double).
pub struct AgentProc {
    pub name: String,
    pub ip: Ipv4Addr,
    pub data_dir: PathBuf,
    pub root: PathBuf,
    pub grpc: SocketAddr,
    pub health: SocketAddr,
    pub proc: Option<Proc>,
    /// The kubelet double, when started.
    pub kubelet: Option<Proc>,
    pub search_path: String,
    /// The world dir, for the clock (`KH_TESTBED_DIR`).
    pub world_dir: PathBuf,
    /// A host this world found running (kh-sandbox re-attaching to its
    /// hosts) rather than declared: dropping the world leaves whatever runs
    /// there, such as its HAProxy, alone.
    pub attached: bool,
    log: PathBuf,
}

impl AgentProc {
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(bin("kh-agent"));
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(self.grpc.to_string())
            .arg("--health-listen")
            .arg(self.health.to_string())
            .arg("--host-root")
            .arg(&self.root)
            .arg("--path")
            .arg(&self.search_path)
            .env("KH_LOG", "info")
            // Only the testbed doubles read these; the agent passes its
            // environment to the commands it runs, as on a real host.
            .env("KH_TESTBED_ROOT", &self.root)
            .env("KH_TESTBED_NODE_DIR", self.node_dir())
            .env(crate::clock::WORLD_DIR_ENV, &self.world_dir);
        cmd
    }

    /// Sets the env a double reads on `cmd`: the node's root, node dir and
    /// world dir, and the node's search path.
    pub fn double_env(&self, cmd: &mut Command) {
        cmd.env("KH_TESTBED_ROOT", &self.root)
            .env("KH_TESTBED_NODE_DIR", self.node_dir())
            .env(crate::clock::WORLD_DIR_ENV, &self.world_dir)
            .env("PATH", &self.search_path);
    }

    /// A tool as the agent would run it on this host: resolved through the
    /// host's search path (doubles first), with the host's env.
    pub fn tool(&self, name: &str) -> Command {
        let program = self
            .search_path
            .split(':')
            .map(|d| Path::new(d).join(name))
            .find(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from(name));
        let mut cmd = Command::new(program);
        self.double_env(&mut cmd);
        cmd
    }

    /// Runs `kubeadm ARGS` on this host (the kubeadm double).
    pub fn kubeadm(&self, args: &[&str]) -> Out {
        let mut cmd = self.tool("kubeadm");
        cmd.args(args);
        run(cmd)
    }

    /// Runs `kubectl --kubeconfig /etc/kubernetes/admin.conf ARGS` on this host.
    pub fn kubectl(&self, args: &[&str]) -> Out {
        let mut cmd = self.tool("kubectl");
        cmd.args(["--kubeconfig", "/etc/kubernetes/admin.conf"])
            .args(args);
        run(cmd)
    }

    /// A file of this host by its absolute host path.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    /// The real etcdctl against `endpoints` (this host's member when
    /// empty), authenticated with this host's etcd healthcheck client
    /// certificate, as an operator on a control plane would run it.
    pub fn etcdctl(&self, endpoints: &[String], args: &[&str]) -> Out {
        let eps = if endpoints.is_empty() {
            self.etcd_endpoint()
        } else {
            endpoints.join(",")
        };
        let mut cmd = Command::new(crate::kube::ETCDCTL_BIN);
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={eps}"))
            .arg("--cacert")
            .arg(self.path("/etc/kubernetes/pki/etcd/ca.crt"))
            .arg("--cert")
            .arg(self.path("/etc/kubernetes/pki/etcd/healthcheck-client.crt"))
            .arg("--key")
            .arg(self.path("/etc/kubernetes/pki/etcd/healthcheck-client.key"))
            .arg("--dial-timeout=1s")
            .arg("--command-timeout=5s")
            .args(args);
        run(cmd)
    }

    /// An anonymous HTTPS GET on this host's apiserver (`https://IP:6443`),
    /// trusting the cluster CA in its `pki/`: (status, body).
    pub fn apiserver_get(&self, path: &str) -> Result<(u16, String), String> {
        use crate::kube::http::{Client, Credentials, Trust};
        let ca = std::fs::read_to_string(self.path("/etc/kubernetes/pki/ca.crt"))
            .map_err(|e| format!("no cluster CA on {}: {e}", self.name))?;
        let c = Client::new(
            &format!("https://{}:6443", self.ip),
            &Trust::Ca(ca),
            &Credentials::default(),
        )
        .map_err(|e| e.to_string())?;
        c.get(path)
            .map(|r| (r.status, r.body))
            .map_err(|e| e.to_string())
    }

    /// `https://IP:2379`.
    pub fn etcd_endpoint(&self) -> String {
        format!("https://{}:2379", self.ip)
    }

    /// Gives this host kubeadm, kubelet and kubectl (the doubles), as if
    /// their packages were installed.
    pub fn install_kube_doubles(&self) {
        let bin_dir = self.node_dir().join("bin");
        for tool in crate::KUBE_DOUBLES
            .iter()
            .chain(crate::RECORDED_TOOLS)
            .chain(crate::doubles::packages::PACKAGE_TOOLS)
        {
            let link = bin_dir.join(tool);
            if !link.exists() {
                std::os::unix::fs::symlink(bin("kh-testbed-double"), &link)
                    .expect("link a kube double");
            }
        }
    }

    /// Makes this host look as if kubeadm, kubelet and kubectl were
    /// installed at `version` (`v1.31.4`) from the official `apt` or `dnf`
    /// repository of its minor, held when `held` (see
    /// `doubles::packages::seed_host`). Call before the agent starts.
    pub fn seed_packages(
        &self,
        family: crate::doubles::packages::Family,
        version: &str,
        held: bool,
    ) {
        crate::doubles::packages::seed_host(&self.root, &self.node_dir(), family, version, held)
            .expect("seed the host's packages");
    }

    pub fn kubelet_command(&self) -> Command {
        let mut cmd = Command::new(bin("kh-testbed-kubelet"));
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--node-dir")
            .arg(self.node_dir());
        self.double_env(&mut cmd);
        cmd
    }

    /// Starts the kubelet double (as systemd starts kubelet at boot) and
    /// waits until it runs.
    pub fn start_kubelet(&mut self) {
        assert!(
            self.kubelet.is_none(),
            "kubelet on {} already running",
            self.name
        );
        let pid_file = self.node_dir().join(crate::kube::KUBELET_PID_FILE);
        let _ = std::fs::remove_file(&pid_file);
        let mut p = Proc::spawn_group(
            &format!("kubelet {}", self.name),
            self.kubelet_command(),
            &self.node_dir().join("kubelet.log"),
        );
        let pid = p.pid().expect("started");
        eventually(
            &format!("the kubelet double on {} to start", self.name),
            Duration::from_secs(10),
            || {
                if !p.is_running() {
                    panic!("kh-testbed-kubelet exited:\n{}", p.log_text());
                }
                match std::fs::read_to_string(&pid_file) {
                    Ok(s) if s.trim() == pid.to_string() => Ok(()),
                    _ => Err("no pid file yet".into()),
                }
            },
        );
        self.kubelet = Some(p);
    }

    /// Kills the kubelet double and every static pod it runs.
    pub fn kill_kubelet(&mut self) {
        if let Some(mut p) = self.kubelet.take() {
            p.kill9();
        }
    }

    /// Like a host losing power: the agent, whatever it was running, the
    /// kubelet double and the static pods (etcd, apiserver) all die at once.
    pub fn power_off(&mut self) {
        self.kill9();
        self.kill_kubelet();
    }

    /// The pid of the HAProxy this host's systemctl double runs, if any.
    pub fn haproxy_pid(&self) -> Option<u32> {
        let env = crate::kube::NodeEnv::new(&self.root, &self.node_dir(), None);
        crate::doubles::haproxy::running_pid(&env)
    }

    /// The log of static pod `pod` (`etcd`, `kube-apiserver`).
    pub fn pod_log(&self, pod: &str) -> String {
        std::fs::read_to_string(self.node_dir().join("pods").join(format!("{pod}.log")))
            .unwrap_or_default()
    }

    /// The node's testbed dir: doubles' call log, failure switches, bin/.
    pub fn node_dir(&self) -> PathBuf {
        self.root.parent().expect("root has a parent").to_path_buf()
    }

    /// Every command line kh gave the real etcdctl on this node (through
    /// the testbed's recording pass-through), one per line.
    pub fn etcdctl_calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.node_dir().join("etcdctl-calls.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.trim_end().to_string())
            .collect()
    }

    /// Every double call recorded on this node, one per line.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.node_dir().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.trim_end().to_string())
            .collect()
    }

    /// Makes the double `tool` fail with `stderr` from now on.
    pub fn fail_tool(&self, tool: &str, stderr: &str) {
        let dir = self.node_dir().join("fail");
        std::fs::create_dir_all(&dir).expect("fail dir");
        std::fs::write(dir.join(tool), stderr).expect("fail switch");
    }

    pub fn start(&mut self) {
        assert!(self.proc.is_none(), "agent {} already running", self.name);
        self.proc = Some(Proc::spawn_group(
            &format!("kh-agent {}", self.name),
            self.command(),
            &self.log,
        ));
        let health = self.health;
        let log = self.log.clone();
        let proc = self.proc.as_mut().expect("started");
        eventually(
            &format!("agent {} to listen", self.name),
            Duration::from_secs(20),
            || {
                if !proc.is_running() {
                    panic!(
                        "kh-agent exited:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                TcpStream::connect_timeout(&health, Duration::from_millis(200))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        );
    }

    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET on the health endpoint: (status code, body).
    pub fn http_get(&self, path: &str) -> Result<(u16, String), String> {
        http_get(self.health, path)
    }
}

/// A minimal HTTP/1.1 GET, enough for the health endpoint.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not HTTP: {buf:?}"))?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// How the world lays out its hosts.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
    pub coordinator: SocketAddr,
    pub coordinator_args: Vec<String>,
    /// The address of the first agent; agent `n` (0-based) gets this
    /// address plus `n`. `None` picks a fresh address per agent.
    pub first_agent_ip: Option<Ipv4Addr>,
    /// Fixed (grpc, health) ports, or `None` for free ones.
    pub agent_ports: Option<(u16, u16)>,
}

impl Layout {
    /// Private addresses and ports in `dir`, for a test.
    pub fn for_test(dir: &Path, coordinator_args: &[&str]) -> Layout {
        Layout {
            dir: dir.to_path_buf(),
            coordinator: net::fresh_addr(),
            coordinator_args: coordinator_args.iter().map(|s| s.to_string()).collect(),
            first_agent_ip: None,
            agent_ports: None,
        }
    }
}

pub struct World {
    pub layout: Layout,
    pub coordinator: CoordinatorProc,
    pub agents: Vec<AgentProc>,
    /// A separate etcd cluster for the external topology, once started.
    pub external_etcd: Option<ExternalEtcd>,
    /// Keeps a test's temp dir alive as long as the world.
    _tmp: Option<tempfile::TempDir>,
}

impl Drop for World {
    /// HAProxy runs in the process group of the agent that started it, so
    /// the agents' guards take it down; this also catches one started some
    /// other way (a test calling the systemctl double itself). Hosts the
    /// world only attached to are not its to stop.
    fn drop(&mut self) {
        for a in self.agents.iter().filter(|a| !a.attached) {
            crate::doubles::haproxy::kill(&a.node_dir(), &a.root);
        }
    }
}

impl World {
    /// A running coordinator in a fresh temp dir, with fast heartbeats.
    pub fn new(coordinator_args: &[&str]) -> World {
        let tmp = tempfile::Builder::new()
            .prefix("kh-e2e-")
            .tempdir()
            .expect("temp dir");
        let mut args = vec!["--heartbeat-interval", "300ms"];
        args.extend_from_slice(coordinator_args);
        let mut w = World::with_layout(Layout::for_test(tmp.path(), &args));
        w._tmp = Some(tmp);
        w.coordinator.start();
        w
    }

    /// A world in a fresh temp dir whose coordinator is not started: for
    /// tests that drive the Kubernetes doubles on hosts directly.
    pub fn offline() -> World {
        let tmp = tempfile::Builder::new()
            .prefix("kh-e2e-")
            .tempdir()
            .expect("temp dir");
        let mut w = World::with_layout(Layout::for_test(tmp.path(), &[]));
        w._tmp = Some(tmp);
        w
    }

    /// A world whose coordinator is not started yet.
    pub fn with_layout(layout: Layout) -> World {
        std::fs::create_dir_all(&layout.dir).expect("world dir");
        let data_dir = layout.dir.join("coordinator");
        let coordinator = CoordinatorProc {
            proc: None,
            addr: layout.coordinator,
            admin: data_dir.join("admin.khconfig"),
            data_dir,
            args: layout.coordinator_args.clone(),
            log: layout.dir.join("coordinator.log"),
        };
        World {
            layout,
            coordinator,
            agents: vec![],
            external_etcd: None,
            _tmp: None,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.layout.dir
    }

    pub fn khctl(&self, args: &[&str]) -> Out {
        let mut cmd = Command::new(bin("khctl"));
        cmd.arg("--config").arg(&self.coordinator.admin).args(args);
        run(cmd)
    }

    pub fn khctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self
            .khctl(&all)
            .expect_ok(&format!("khctl {}", args.join(" ")));
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("khctl printed no JSON ({e}): {}", out.stdout))
    }

    /// A fresh token for `node`: (token, ca hash, coordinator address).
    pub fn token(&self, node: &str, extra: &[&str]) -> (String, String, String) {
        let mut args = vec!["token", "create", "--node", node];
        args.extend_from_slice(extra);
        let v = self.khctl_json(&args);
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        (s("token"), s("caCertHash"), s("coordinator"))
    }

    /// Serves a package repository per minor: `repos` is
    /// `[("v1.32", &["1.32.0", "1.32.4"]), ...]`, each version of kubeadm,
    /// kubelet and kubectl (`<world>/repos/<minor>.json`).
    pub fn seed_package_repos(&self, repos: &[(&str, &[&str])]) {
        for (minor, versions) in repos {
            crate::doubles::packages::write_index(&self.layout.dir, minor, versions)
                .expect("write a package index");
        }
    }

    /// v1.30 to v1.33, three patch versions each.
    pub fn seed_default_package_repos(&self) {
        self.seed_package_repos(&[
            ("v1.30", &["1.30.0", "1.30.5", "1.30.8"]),
            ("v1.31", &["1.31.0", "1.31.4", "1.31.6"]),
            ("v1.32", &["1.32.0", "1.32.2", "1.32.4"]),
            ("v1.33", &["1.33.0", "1.33.1", "1.33.2"]),
        ]);
    }

    /// Declares agent `name` (host root, addresses) without enrolling it.
    pub fn declare_agent(&mut self, name: &str) -> usize {
        self.declare_agent_at(name, None)
    }

    /// Declares agent `name` on `ip`, or on the layout's next address when
    /// `None`.
    pub fn declare_agent_at(&mut self, name: &str, ip: Option<Ipv4Addr>) -> usize {
        let n = self.agents.len() as u32;
        let ip = ip.unwrap_or_else(|| {
            self.layout
                .first_agent_ip
                .map(|first| Ipv4Addr::from(u32::from(first) + n))
                .unwrap_or_else(net::fresh_ip)
        });
        let (g, h) = self
            .layout
            .agent_ports
            .unwrap_or_else(|| net::free_port_pair(ip));
        let idx = self.attach_agent(name, ip, g, h);
        // Declared here, so this world owns what runs there.
        self.agents[idx].attached = false;
        let a = &self.agents[idx];
        hostroot::create(&a.root, &HostSpec::numbered(name, n + 1)).expect("host root");
        let bin_dir = a.node_dir().join("bin");
        std::fs::create_dir_all(&bin_dir).expect("node bin dir");
        for tool in crate::DOUBLES {
            let link = bin_dir.join(tool);
            if !link.exists() {
                std::os::unix::fs::symlink(bin("kh-testbed-double"), &link).expect("link a double");
            }
        }
        std::fs::write(
            a.node_dir().join(crate::kube::NODE_IP_FILE),
            format!("{ip}\n"),
        )
        .expect("node ip file");
        idx
    }

    /// Declares a Kubernetes host: an agent host that also has the kubeadm,
    /// kubelet and kubectl doubles. Nothing is started.
    pub fn declare_kube_host(&mut self, name: &str) -> usize {
        let idx = self.declare_agent(name);
        self.agents[idx].install_kube_doubles();
        idx
    }

    /// A Kubernetes host with its kubelet double running, and no agent:
    /// for tests that drive the doubles directly.
    pub fn add_kube_host(&mut self, name: &str) -> usize {
        let idx = self.declare_kube_host(name);
        self.agents[idx].start_kubelet();
        idx
    }

    /// A Kubernetes host with its kubelet double running and an enrolled,
    /// started agent: what a rollout test starts from.
    pub fn add_kube_node(&mut self, name: &str) -> usize {
        let idx = self.declare_kube_host(name);
        self.agents[idx].start_kubelet();
        let (tok, hash, addr) = self.token(name, &[]);
        self.enroll(idx, &tok, &hash, &addr, &[])
            .expect_ok(&format!("enroll {name}"));
        self.agents[idx].start();
        self.wait_health(name, "Ready", Duration::from_secs(30));
        idx
    }

    /// A load-balancer host: an enrolled, started agent without the
    /// Kubernetes doubles. The real HAProxy runs there once kh configures it
    /// (the systemctl double's `haproxy` unit).
    pub fn add_lb_node(&mut self, name: &str) -> usize {
        let idx = self.declare_agent(name);
        let (tok, hash, addr) = self.token(name, &[]);
        self.enroll(idx, &tok, &hash, &addr, &[])
            .expect_ok(&format!("enroll {name}"));
        self.agents[idx].start();
        self.wait_health(name, "Ready", Duration::from_secs(30));
        idx
    }

    /// Starts a separate 3-member (or `members`) etcd cluster with TLS on
    /// fresh addresses, for the external etcd topology; its files are under
    /// `<world>/external-etcd`, its processes live as long as the world.
    pub fn start_external_etcd(&mut self, members: usize) -> &ExternalEtcd {
        let ips: Vec<Ipv4Addr> = (0..members).map(|_| net::fresh_ip()).collect();
        let mut etcd = ExternalEtcd::create(&self.layout.dir.join("external-etcd"), &ips)
            .expect("external etcd certificates");
        etcd.start();
        self.external_etcd.insert(etcd)
    }

    /// Registers a host whose files already exist (a restarted sandbox);
    /// touches nothing on disk, and dropping the world stops nothing there.
    pub fn attach_agent(
        &mut self,
        name: &str,
        ip: Ipv4Addr,
        grpc_port: u16,
        health_port: u16,
    ) -> usize {
        let base = self.layout.dir.join("nodes").join(name);
        let bin_dir = base.join("bin");
        self.agents.push(AgentProc {
            name: name.to_string(),
            ip,
            data_dir: base.join("agent"),
            root: base.join("root"),
            grpc: SocketAddr::from((ip, grpc_port)),
            health: SocketAddr::from((ip, health_port)),
            proc: None,
            kubelet: None,
            // The doubles first, then the real tools (containerd, etcd).
            search_path: format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin_dir.display()),
            world_dir: self.layout.dir.clone(),
            attached: true,
            log: base.join("agent.log"),
        });
        self.agents.len() - 1
    }

    /// The testbed clock's offset from real time, in seconds.
    pub fn clock_offset(&self) -> i64 {
        crate::clock::offset_secs(Some(self.dir()))
    }

    pub fn set_clock_offset(&self, secs: i64) {
        crate::clock::set_offset_secs(self.dir(), secs).expect("write the clock offset");
    }

    /// Moves the testbed clock forward by `by`, for every double at once.
    pub fn advance_clock(&self, by: Duration) {
        self.set_clock_offset(self.clock_offset() + by.as_secs() as i64);
    }

    /// Runs `build` with the testbed clock `days` in the past, then sets it
    /// back to real time, so what kubeadm issued meanwhile is `days` old: a
    /// cluster rolled out inside is as close to its certificates' expiry as
    /// a real one built then, for real etcd and TLS too (CONTRACT.md, "The
    /// clock").
    pub fn in_the_past<T>(&self, days: u64, build: impl FnOnce(&Self) -> T) -> T {
        self.set_clock_offset(-(days as i64) * 86_400);
        let out = build(self);
        self.set_clock_offset(0);
        out
    }

    /// Gives the kubeadm double a fixed latency per operation, for
    /// benchmarks: `init`, control-plane `join`, worker `join`. Takes effect
    /// for every later call on every host (see CONTRACT.md).
    pub fn set_kubeadm_latency(&self, init: Duration, join_cp: Duration, join_worker: Duration) {
        crate::doubles::latency::write(self.dir(), init, join_cp, join_worker);
    }

    /// Gives one more double operation a fixed latency, for benchmarks
    /// (`Op::PackageInstall`, `Op::Drain`, ...), keeping the others.
    pub fn set_double_latency(&self, op: crate::doubles::latency::Op, d: Duration) {
        crate::doubles::latency::set(self.dir(), op, d);
    }

    /// `kh-agent enroll` for a declared agent.
    pub fn enroll(
        &self,
        idx: usize,
        token: &str,
        hash: &str,
        coordinator: &str,
        extra: &[&str],
    ) -> Out {
        let a = &self.agents[idx];
        // The token in a 0600 file, as an operator should pass it: on the
        // command line `ps` would show it.
        let token_file = a.node_dir().join("enroll-token");
        crate::kube::write_file(&token_file, token, 0o600).expect("token file");
        let mut cmd = Command::new(bin("kh-agent"));
        cmd.arg("enroll")
            .args(["--coordinator", coordinator, "--token-file"])
            .arg(&token_file)
            .args(["--ca-cert-hash", hash, "--node-name", &a.name])
            .arg("--data-dir")
            .arg(&a.data_dir)
            .args(extra);
        run(cmd)
    }

    /// Declares, enrolls and starts an agent.
    pub fn add_agent(&mut self, name: &str) -> usize {
        let idx = self.declare_agent(name);
        let (tok, hash, addr) = self.token(name, &[]);
        self.enroll(idx, &tok, &hash, &addr, &[])
            .expect_ok(&format!("enroll {name}"));
        self.agents[idx].start();
        // Until its first heartbeat the coordinator does not know the
        // agent's address; callers want a node they can use.
        self.wait_health(name, "Ready", Duration::from_secs(30));
        idx
    }

    pub fn agent(&mut self, name: &str) -> &mut AgentProc {
        self.agents
            .iter_mut()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("no agent {name}"))
    }

    /// The node entry from `khctl nodes -o json`.
    pub fn node(&self, name: &str) -> Option<serde_json::Value> {
        self.khctl_json(&["nodes"])["nodes"]
            .as_array()
            .and_then(|a| a.iter().find(|n| n["name"] == name).cloned())
    }

    pub fn wait_health(&self, name: &str, health: &str, timeout: Duration) {
        eventually(&format!("{name} to be {health}"), timeout, || {
            match self.node(name) {
                Some(n) if n["health"] == health => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    /// A stand-in for a host's running HAProxy: a process whose command
    /// line names the host root, recorded in the host's HAProxy pid file.
    fn fake_haproxy(a: &AgentProc) -> std::process::Child {
        std::fs::create_dir_all(&a.root).unwrap();
        let child = Command::new("sh")
            .args(["-c", "sleep 30; :", "sh"])
            .arg(&a.root)
            .spawn()
            .unwrap();
        std::fs::write(
            a.node_dir().join(crate::doubles::haproxy::PID_FILE),
            format!("{}\n", child.id()),
        )
        .unwrap();
        // Until the child has exec'd `sh`, its command line is still the
        // test binary's, without the host root.
        eventually(
            "the fake HAProxy to run",
            Duration::from_secs(10),
            || match a.haproxy_pid() {
                Some(pid) if pid == child.id() => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
        child
    }

    #[test]
    fn dropping_a_world_stops_nothing_on_hosts_it_only_attached() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = World::with_layout(Layout::for_test(tmp.path(), &[]));
        let idx = w.attach_agent("lb-1", net::fresh_ip(), 7444, 7445);
        let mut haproxy = fake_haproxy(&w.agents[idx]);
        drop(w);
        assert!(
            haproxy.try_wait().unwrap().is_none(),
            "the attached host's HAProxy was stopped"
        );
        haproxy.kill().unwrap();
        haproxy.wait().unwrap();
    }

    #[test]
    fn dropping_a_world_stops_haproxy_on_hosts_it_declared() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = World::with_layout(Layout::for_test(tmp.path(), &[]));
        let idx = w.declare_agent("lb-1");
        let mut haproxy = fake_haproxy(&w.agents[idx]);
        drop(w);
        let status = haproxy.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "{status:?}");
    }
}
