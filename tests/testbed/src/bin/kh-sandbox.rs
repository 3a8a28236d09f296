//! kh-sandbox: a local kh cluster on loopback for a first look and for manual
//! testing. `up` starts a coordinator, and per host an enrolled agent and a
//! kubelet double, all as detached processes with pid files, and writes a
//! cluster spec and khctl credentials; `down` stops every process the sandbox
//! started (and everything those started), even after the sandbox command
//! itself crashed.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use kh_testbed::proc::{alive_with, kill_group, kill_pid, processes_naming};
use kh_testbed::world::{Layout, World};
use serde::{Deserialize, Serialize};

#[derive(Parser)]
#[command(
    name = "kh-sandbox",
    about = "A local kh cluster on loopback addresses: a coordinator on <prefix>.10, hosts on <prefix>.11 and up, the load balancer lb-1 on <prefix>.9, an external etcd (if asked for) on <prefix>.6-8."
)]
struct Cli {
    /// Where the sandbox keeps its state, logs and pid files.
    #[arg(long, global = true, default_value_os_t = default_dir())]
    dir: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a coordinator, agents and kubelet doubles, enroll every agent and
    /// write DIR/cluster.yaml and DIR/admin.khconfig (replacing a previous
    /// sandbox in --dir).
    Up {
        /// How many control planes (cp-1, cp-2, ...) the spec lists.
        #[arg(long, default_value_t = 3)]
        control_planes: u32,
        /// How many workers (w-1, w-2, ...) the spec lists.
        #[arg(long, default_value_t = 2)]
        workers: u32,
        /// The first three octets of the sandbox's addresses (127.x.y).
        #[arg(long, default_value = "127.0.0")]
        ip_prefix: String,
        /// `haproxy`: a load-balancer host lb-1 (real HAProxy, configured by
        /// kh) is the control-plane endpoint; `none`: the first control plane
        /// is.
        #[arg(long, default_value = "haproxy", value_parser = ["haproxy", "none"])]
        load_balancer: String,
        /// `external`: a separate 3-member etcd cluster with TLS, and a spec
        /// with etcd.topology external; `stacked`: etcd on the control planes.
        #[arg(long, default_value = "stacked", value_parser = ["stacked", "external"])]
        etcd: String,
    },
    /// Show the sandbox's hosts, processes and `khctl nodes`.
    Status,
    /// Start and enroll one more host that is not in the cluster spec.
    AddNode {
        /// The new host's node name (cp-4, w-3, ...).
        name: String,
        /// control-plane, worker or loadbalancer.
        #[arg(long, default_value = "worker")]
        role: String,
    },
    /// Kill a host's agent, kubelet double and static pods at once, like a
    /// host losing power. `coordinator` kills the coordinator (SIGKILL).
    KillNode {
        /// The host (cp-1, w-1, lb-1, ...), or `coordinator`.
        name: String,
    },
    /// Start a killed host again (kubelet double, then agent). `coordinator`
    /// starts the coordinator again on its data dir and address.
    StartNode {
        /// The host (cp-1, w-1, lb-1, ...), or `coordinator`.
        name: String,
    },
    /// Crash the coordinator (SIGKILL, like a power loss) and start it again
    /// on the same data dir and address, to try a command resuming after a
    /// coordinator crash.
    RestartCoordinator,
    /// Stop everything the sandbox started.
    Down,
}

fn default_dir() -> PathBuf {
    std::env::temp_dir().join("kh-sandbox")
}

/// What `up` and `add-node` record, so later commands can find every host.
#[derive(Serialize, Deserialize)]
struct State {
    ip_prefix: String,
    coordinator: SocketAddr,
    nodes: Vec<NodeState>,
    /// The external etcd members' addresses, when there is one.
    #[serde(default)]
    external_etcd: Vec<Ipv4Addr>,
}

#[derive(Serialize, Deserialize, Clone)]
struct NodeState {
    name: String,
    role: String,
    ip: Ipv4Addr,
    in_spec: bool,
}

const COORDINATOR_PORT: u16 = 7443;
/// The name kill-node and start-node take for the coordinator (also its pid
/// file's name), so no host may have it.
const COORDINATOR: &str = "coordinator";
const AGENT_PORTS: (u16, u16) = (7444, 7445);
/// The coordinator's plain-HTTP /metrics, as deploy/monitoring scrapes it.
const METRICS_PORT: u16 = 7446;

fn main() {
    let cli = Cli::parse();
    let r = match cli.command {
        Cmd::Up {
            control_planes,
            workers,
            ip_prefix,
            load_balancer,
            etcd,
        } => up(
            &cli.dir,
            control_planes,
            workers,
            &ip_prefix,
            load_balancer == "haproxy",
            etcd == "external",
        ),
        Cmd::Status => status(&cli.dir),
        Cmd::AddNode { name, role } => add_node(&cli.dir, &name, &role),
        Cmd::KillNode { name } if name == COORDINATOR => kill_coordinator(&cli.dir),
        Cmd::KillNode { name } => kill_node(&cli.dir, &name),
        Cmd::StartNode { name } if name == COORDINATOR => start_coordinator(&cli.dir),
        Cmd::StartNode { name } => start_node(&cli.dir, &name),
        Cmd::RestartCoordinator => {
            kill_coordinator(&cli.dir).and_then(|()| start_coordinator(&cli.dir))
        }
        Cmd::Down => down(&cli.dir).map(|n| println!("Stopped {n} sandbox processes.")),
    };
    if let Err(e) = r {
        eprintln!("kh-sandbox: error: {e:#}");
        std::process::exit(1);
    }
}

fn parse_prefix(prefix: &str) -> anyhow::Result<[u8; 3]> {
    let parts: Vec<u8> = prefix
        .split('.')
        .map(|p| p.parse::<u8>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("--ip-prefix {prefix:?} is not three octets such as 127.0.0"))?;
    match parts[..] {
        [127, b, c] => Ok([127, b, c]),
        _ => bail!("--ip-prefix {prefix:?} must be three octets in 127.0.0.0/8, such as 127.0.0"),
    }
}

fn layout(dir: &Path, prefix: [u8; 3]) -> Layout {
    Layout {
        dir: dir.to_path_buf(),
        coordinator: SocketAddr::from((
            Ipv4Addr::new(prefix[0], prefix[1], prefix[2], 10),
            COORDINATOR_PORT,
        )),
        coordinator_args: vec![
            "--heartbeat-interval".into(),
            "2s".into(),
            // Prometheus' view: etcd snapshot age, count and size.
            "--metrics-address".into(),
            SocketAddr::from((
                Ipv4Addr::new(prefix[0], prefix[1], prefix[2], 10),
                METRICS_PORT,
            ))
            .to_string(),
        ],
        first_agent_ip: Some(Ipv4Addr::new(prefix[0], prefix[1], prefix[2], 11)),
        agent_ports: Some(AGENT_PORTS),
    }
}

fn state_file(dir: &Path) -> PathBuf {
    dir.join("sandbox.json")
}

fn load_state(dir: &Path) -> anyhow::Result<State> {
    let text = std::fs::read_to_string(state_file(dir)).with_context(|| {
        format!(
            "no sandbox in {}; start one with `kh-sandbox --dir {} up`",
            dir.display(),
            dir.display()
        )
    })?;
    Ok(serde_json::from_str(&text)?)
}

fn save_state(dir: &Path, s: &State) -> anyhow::Result<()> {
    std::fs::write(state_file(dir), serde_json::to_string_pretty(s)?)?;
    Ok(())
}

/// A world for an existing sandbox: every recorded host attached, nothing
/// started or touched.
fn reattach(dir: &Path, state: &State) -> anyhow::Result<World> {
    let mut w = World::with_layout(layout(dir, parse_prefix(&state.ip_prefix)?));
    for n in &state.nodes {
        w.attach_agent(&n.name, n.ip, AGENT_PORTS.0, AGENT_PORTS.1);
    }
    Ok(w)
}

fn pid_dir(dir: &Path) -> PathBuf {
    dir.join("pids")
}

/// Detaches a started process: it keeps running after kh-sandbox exits, and
/// its pid file (its pid is also its process group) lets `down` find it and
/// everything it started.
fn record(dir: &Path, name: &str, proc: kh_testbed::proc::Proc) -> anyhow::Result<()> {
    let pid = proc.detach().context("process already gone")?;
    std::fs::create_dir_all(pid_dir(dir))?;
    std::fs::write(pid_dir(dir).join(format!("{name}.pid")), format!("{pid}\n"))?;
    Ok(())
}

/// Starts a declared host: kubelet double (Kubernetes hosts), enrollment
/// when `token` is given, agent; then detaches both.
fn boot(dir: &Path, w: &mut World, idx: usize, kube: bool, enroll: bool) -> anyhow::Result<()> {
    let name = w.agents[idx].name.clone();
    if kube {
        w.agents[idx].start_kubelet();
    }
    if enroll {
        let (tok, hash, addr) = w.token(&name, &[]);
        let out = w.enroll(idx, &tok, &hash, &addr, &[]);
        if !out.ok() {
            bail!("enrolling {name} failed:\n{}{}", out.stdout, out.stderr);
        }
    }
    w.agents[idx].start();
    if let Some(p) = w.agents[idx].kubelet.take() {
        record(dir, &format!("kubelet-{name}"), p)?;
    }
    if let Some(p) = w.agents[idx].proc.take() {
        record(dir, &format!("agent-{name}"), p)?;
    }
    Ok(())
}

/// The load balancer's address: below the coordinator's, out of the hosts'
/// range.
const LB_OCTET: u8 = 9;
/// The external etcd members' first address (three in a row, below the
/// load balancer's).
const ETCD_FIRST_OCTET: u8 = 6;

fn octet(prefix: [u8; 3], last: u8) -> Ipv4Addr {
    Ipv4Addr::new(prefix[0], prefix[1], prefix[2], last)
}

fn cluster_yaml(nodes: &[NodeState], extra: &str) -> String {
    let spec_nodes: Vec<kh_testbed::spec::SpecNode> = nodes
        .iter()
        .filter(|n| n.in_spec)
        .map(|n| kh_testbed::spec::SpecNode {
            name: n.name.clone(),
            role: n.role.clone(),
            ip: n.ip.to_string(),
        })
        .collect();
    kh_testbed::spec::cluster_yaml("sandbox", &spec_nodes, extra)
}

/// Creates and starts the external etcd cluster, each member detached with
/// a pid file; returns the spec's `etcd:` block.
fn start_external_etcd(dir: &Path, prefix: [u8; 3]) -> anyhow::Result<String> {
    let ips: Vec<Ipv4Addr> = (0..3)
        .map(|i| octet(prefix, ETCD_FIRST_OCTET + i))
        .collect();
    let mut etcd =
        kh_testbed::external_etcd::ExternalEtcd::create(&dir.join("external-etcd"), &ips)?;
    for i in 0..ips.len() {
        let name = etcd.members[i].name.clone();
        let p = kh_testbed::proc::Proc::spawn(
            &format!("external {name}"),
            etcd.command(i),
            &etcd.log(i),
        );
        record(dir, &name, p)?;
    }
    etcd.wait_healthy(Duration::from_secs(30));
    println!(
        "Started the external etcd cluster on {}",
        etcd.endpoints().join(", ")
    );
    let block = etcd.spec_block(dir);
    etcd.members.clear();
    Ok(block)
}

fn up(
    dir: &Path,
    control_planes: u32,
    workers: u32,
    ip_prefix: &str,
    load_balancer: bool,
    external_etcd: bool,
) -> anyhow::Result<()> {
    let prefix = parse_prefix(ip_prefix)?;
    if control_planes + workers == 0 || control_planes + workers > 200 {
        bail!("--control-planes plus --workers must be between 1 and 200");
    }
    let stopped = down(dir)?;
    if stopped > 0 {
        println!("Stopped {stopped} processes of the previous sandbox.");
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cleaning {}", dir.display()))?;
    }
    let mut w = World::with_layout(layout(dir, prefix));
    // Another sandbox (in another --dir) or another program may hold the
    // block's addresses; say so instead of failing halfway.
    if let Err(e) = std::net::TcpListener::bind(w.coordinator.addr) {
        bail!(
            "{} is not free ({e}): another kh-sandbox may be running in a different --dir (stop it with `kh-sandbox --dir DIR down`), or use another block with --ip-prefix 127.0.N",
            w.coordinator.addr
        );
    }
    println!("Starting the coordinator on {} ...", w.coordinator.addr);
    w.coordinator.start();
    let mut nodes = vec![];
    let names: Vec<(String, &str)> = (1..=control_planes)
        .map(|i| (format!("cp-{i}"), "control-plane"))
        .chain((1..=workers).map(|i| (format!("w-{i}"), "worker")))
        .collect();
    let etcd_ips: Vec<Ipv4Addr> = if external_etcd {
        (0..3)
            .map(|i| octet(prefix, ETCD_FIRST_OCTET + i))
            .collect()
    } else {
        vec![]
    };
    // The state file first, so `down` finds everything even if `up` dies.
    save_state(
        dir,
        &State {
            ip_prefix: ip_prefix.to_string(),
            coordinator: w.coordinator.addr,
            nodes: vec![],
            external_etcd: etcd_ips.clone(),
        },
    )?;
    if let Some(p) = w.coordinator.proc.take() {
        record(dir, COORDINATOR, p)?;
    }
    let extra = if external_etcd {
        start_external_etcd(dir, prefix)?
    } else {
        String::new()
    };
    let mut names = names;
    if load_balancer {
        names.push(("lb-1".to_string(), "loadbalancer"));
    }
    for (name, role) in &names {
        let lb = *role == "loadbalancer";
        let idx = if lb {
            w.declare_agent_at(name, Some(octet(prefix, LB_OCTET)))
        } else {
            w.declare_kube_host(name)
        };
        boot(dir, &mut w, idx, !lb, true)?;
        let a = &w.agents[idx];
        println!(
            "Enrolled {name} ({role}) on {} (host root {})",
            a.ip,
            a.root.display()
        );
        nodes.push(NodeState {
            name: name.clone(),
            role: role.to_string(),
            ip: a.ip,
            in_spec: true,
        });
        save_state(
            dir,
            &State {
                ip_prefix: ip_prefix.to_string(),
                coordinator: w.coordinator.addr,
                nodes: nodes.clone(),
                external_etcd: etcd_ips.clone(),
            },
        )?;
    }
    for (name, _) in &names {
        w.wait_health(name, "Ready", Duration::from_secs(30));
    }
    kh_testbed::spec::write(dir, "cluster.yaml", &cluster_yaml(&nodes, &extra))?;
    std::fs::copy(&w.coordinator.admin, dir.join("admin.khconfig"))?;
    println!();
    print!("{}", w.khctl(&["nodes"]).stdout);
    let khctl = kh_testbed::bin("khctl");
    let sandbox = kh_testbed::bin("kh-sandbox");
    println!(
        "\nThe sandbox is up in {dir}.\n  Next:     {khctl} --config {dir}/admin.khconfig rollout -f {dir}/cluster.yaml\n  Logs:     {dir}/coordinator.log, {dir}/nodes/*/agent.log, {dir}/nodes/*/kubelet.log, {dir}/nodes/*/pods/*.log\n  Metrics:  http://{metrics}/metrics (the coordinator's)\n  Hosts:    {sandbox} --dir {dir} status | add-node NAME | kill-node NAME | start-node NAME | restart-coordinator\n  Stop it:  {sandbox} --dir {dir} down",
        dir = dir.display(),
        khctl = khctl.display(),
        sandbox = sandbox.display(),
        metrics = SocketAddr::from((w.coordinator.addr.ip(), METRICS_PORT)),
    );
    Ok(())
}

fn add_node(dir: &Path, name: &str, role: &str) -> anyhow::Result<()> {
    if !matches!(role, "control-plane" | "worker" | "loadbalancer") {
        bail!("--role must be control-plane, worker or loadbalancer, not {role:?}");
    }
    let mut state = load_state(dir)?;
    if state.nodes.iter().any(|n| n.name == name) {
        bail!("the sandbox already has a host named {name}");
    }
    if kh::names::NodeName::new(name).is_err() {
        bail!("{name:?} is not a valid node name");
    }
    if name == COORDINATOR {
        bail!("{COORDINATOR:?} names the sandbox's coordinator in kill-node and start-node; choose another host name");
    }
    let mut w = reattach(dir, &state)?;
    let kube = role != "loadbalancer";
    // The next address after the hosts in the <prefix>.11 block.
    let prefix = parse_prefix(&state.ip_prefix)?;
    let last = state
        .nodes
        .iter()
        .map(|n| n.ip.octets()[3])
        .filter(|o| *o >= 11)
        .max()
        .unwrap_or(10);
    if last == 254 {
        bail!("the sandbox's address block is full");
    }
    let ip = Some(octet(prefix, last + 1));
    let idx = if kube {
        let idx = w.declare_agent_at(name, ip);
        w.agents[idx].install_kube_doubles();
        idx
    } else {
        w.declare_agent_at(name, ip)
    };
    let ip = w.agents[idx].ip;
    state.nodes.push(NodeState {
        name: name.to_string(),
        role: role.to_string(),
        ip,
        in_spec: false,
    });
    save_state(dir, &state)?;
    boot(dir, &mut w, idx, kube, true)?;
    w.wait_health(name, "Ready", Duration::from_secs(30));
    println!(
        "Enrolled {name} ({role}) on {ip}; it is not in {}/cluster.yaml yet.",
        dir.display()
    );
    Ok(())
}

fn node_state(state: &State, name: &str) -> anyhow::Result<(usize, NodeState)> {
    state
        .nodes
        .iter()
        .position(|n| n.name == name)
        .map(|i| (i, state.nodes[i].clone()))
        .with_context(|| format!("the sandbox has no host named {name}"))
}

/// The pid recorded for `name`, if that process group still has a member
/// that the sandbox started (its command line names the sandbox dir).
fn live_group(dir: &Path, name: &str, procs: &[(u32, u32)]) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_dir(dir).join(format!("{name}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let needle = dir.to_string_lossy();
    (alive_with(pid, &needle) || procs.iter().any(|(_, g)| *g == pid)).then_some(pid)
}

fn kill_node(dir: &Path, name: &str) -> anyhow::Result<()> {
    let state = load_state(dir)?;
    node_state(&state, name)?;
    let procs = processes_naming(&dir.to_string_lossy());
    let mut killed = 0;
    let mut dying: Vec<u32> = vec![];
    for what in ["agent", "kubelet"] {
        if let Some(pgid) = live_group(dir, &format!("{what}-{name}"), &procs) {
            dying.extend(procs.iter().filter(|(_, g)| *g == pgid).map(|(p, _)| *p));
            kill_group(pgid, "KILL");
            killed += 1;
        }
    }
    // Wait until the host's ports are closed, as after a power loss. A
    // process's command line empties before its sockets close, so the
    // killed ones are waited for until they are zombies or gone.
    let host_dir = dir.join("nodes").join(name);
    let needle = host_dir.to_string_lossy().into_owned();
    let start = Instant::now();
    while (!processes_naming(&needle).is_empty() || dying.iter().any(|p| exiting(*p)))
        && start.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    if killed == 0 {
        println!("{name} was not running.");
    } else {
        println!("Killed {name} (agent, kubelet double and its static pods).");
    }
    Ok(())
}

/// Whether `pid` exists and has not finished exiting. A process's files
/// (its sockets) close when its last thread exits: the thread-group leader
/// of a multithreaded process such as etcd can already be a zombie (`Z`)
/// while other threads still hold them, so every thread is looked at.
fn exiting(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            return false;
        };
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .unwrap_or("X");
        !matches!(state, "Z" | "X")
    })
}

/// Kills the coordinator's process group with SIGKILL, as a crash would,
/// and waits until its port is closed.
fn kill_coordinator(dir: &Path) -> anyhow::Result<()> {
    let state = load_state(dir)?;
    let procs = processes_naming(&dir.to_string_lossy());
    let Some(pgid) = live_group(dir, COORDINATOR, &procs) else {
        println!("The coordinator was not running.");
        return Ok(());
    };
    let dying: Vec<u32> = procs
        .iter()
        .filter(|(_, g)| *g == pgid)
        .map(|(p, _)| *p)
        .collect();
    kill_group(pgid, "KILL");
    let start = Instant::now();
    while dying.iter().any(|p| exiting(*p)) || listening(state.coordinator) {
        if start.elapsed() > Duration::from_secs(10) {
            bail!(
                "the coordinator (pid {pgid}) was sent SIGKILL but {} still accepts connections after 10s",
                state.coordinator
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("Killed the coordinator (pid {pgid}) with SIGKILL.");
    Ok(())
}

fn listening(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Starts the coordinator again on its data dir and address, as its
/// service manager would after a crash.
fn start_coordinator(dir: &Path) -> anyhow::Result<()> {
    let state = load_state(dir)?;
    let procs = processes_naming(&dir.to_string_lossy());
    if let Some(pid) = live_group(dir, COORDINATOR, &procs) {
        bail!("the coordinator is running (pid {pid}); crash it first with `kh-sandbox kill-node coordinator`, or use `kh-sandbox restart-coordinator`");
    }
    let mut w = World::with_layout(layout(dir, parse_prefix(&state.ip_prefix)?));
    if w.coordinator.addr != state.coordinator {
        bail!(
            "the sandbox recorded its coordinator on {}, but its --ip-prefix gives {}; is {} the right sandbox?",
            state.coordinator,
            w.coordinator.addr,
            state_file(dir).display()
        );
    }
    if let Err(e) = std::net::TcpListener::bind(state.coordinator) {
        bail!(
            "{} is not free ({e}): a coordinator not started by this sandbox may hold it; find it with `ss -ltnp` and stop it, then run `kh-sandbox start-node coordinator` again",
            state.coordinator
        );
    }
    w.coordinator.start();
    let p = w
        .coordinator
        .proc
        .take()
        .context("coordinator not started")?;
    let pid = p.pid().unwrap_or_default();
    record(dir, COORDINATOR, p)?;
    println!(
        "Started the coordinator (pid {pid}) on {}, data dir {}.",
        state.coordinator,
        w.coordinator.data_dir.display()
    );
    Ok(())
}

fn start_node(dir: &Path, name: &str) -> anyhow::Result<()> {
    let state = load_state(dir)?;
    let (idx, n) = node_state(&state, name)?;
    let procs = processes_naming(&dir.to_string_lossy());
    if live_group(dir, &format!("agent-{name}"), &procs).is_some()
        || live_group(dir, &format!("kubelet-{name}"), &procs).is_some()
    {
        bail!("{name} is running; kill it first with `kh-sandbox kill-node {name}`");
    }
    let mut w = reattach(dir, &state)?;
    boot(dir, &mut w, idx, n.role != "loadbalancer", false)?;
    println!("Started {name} on {}.", n.ip);
    Ok(())
}

fn status(dir: &Path) -> anyhow::Result<()> {
    let state = match load_state(dir) {
        Ok(s) => s,
        Err(_) => {
            println!(
                "No sandbox in {}. Start one with `kh-sandbox up`.",
                dir.display()
            );
            return Ok(());
        }
    };
    let procs = processes_naming(&dir.to_string_lossy());
    let run = |name: &str| match live_group(dir, name, &procs) {
        Some(pid) => format!("running (pid {pid})"),
        None => "stopped".to_string(),
    };
    println!("coordinator {}  {}", state.coordinator, run(COORDINATOR));
    println!();
    println!(
        "{:<12} {:<14} {:<14} {:<22} {:<22} in spec",
        "HOST", "ROLE", "ADDRESS", "AGENT", "KUBELET"
    );
    for n in &state.nodes {
        // A load balancer has no kubelet; its HAProxy is what runs there.
        let second = if n.role == "loadbalancer" {
            let node_dir = dir.join("nodes").join(&n.name);
            let env = kh_testbed::kube::NodeEnv::new(&node_dir.join("root"), &node_dir, None);
            match kh_testbed::doubles::haproxy::running_pid(&env) {
                Some(pid) => format!("haproxy (pid {pid})"),
                None => "haproxy stopped".to_string(),
            }
        } else {
            run(&format!("kubelet-{}", n.name))
        };
        println!(
            "{:<12} {:<14} {:<14} {:<22} {:<22} {}",
            n.name,
            n.role,
            n.ip,
            run(&format!("agent-{}", n.name)),
            second,
            if n.in_spec { "yes" } else { "no" }
        );
    }
    for (i, ip) in state.external_etcd.iter().enumerate() {
        let name = format!("etcd-{}", i + 1);
        println!("{name:<12} {:<14} {ip:<14} {}", "external-etcd", run(&name));
    }
    let out = Command::new(kh_testbed::bin("khctl"))
        .arg("--config")
        .arg(dir.join("coordinator/admin.khconfig"))
        .arg("nodes")
        .output()?;
    println!();
    print!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Stops every process of the sandbox in `dir`: the recorded process groups
/// (coordinator, agents with whatever they run, kubelet doubles with their
/// static pods) and any other process whose command line names the dir.
/// Returns how many recorded or found processes it stopped.
fn down(dir: &Path) -> anyhow::Result<usize> {
    let needle = dir.to_string_lossy().into_owned();
    let procs = processes_naming(&needle);
    let mut groups = BTreeSet::new();
    let pid_files: Vec<PathBuf> = std::fs::read_dir(pid_dir(dir))
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    for f in &pid_files {
        let name = f
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if let Some(pgid) = live_group(dir, &name, &procs) {
            groups.insert(pgid);
        }
    }
    let stray: BTreeSet<u32> = procs.iter().map(|(p, _)| *p).collect();
    let stopped = groups.len().max(stray.len());
    for g in &groups {
        kill_group(*g, "TERM");
    }
    for p in &stray {
        kill_pid(*p, "TERM");
    }
    let gone = |limit: Duration| {
        let start = Instant::now();
        loop {
            let left = processes_naming(&needle);
            let groups_left = groups.iter().any(|g| alive_with(*g, &needle));
            // Until their last thread has exited, their ports stay open.
            let exiting_left = procs.iter().any(|(p, _)| exiting(*p));
            if left.is_empty() && !groups_left && !exiting_left {
                return true;
            }
            if start.elapsed() >= limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    if !gone(Duration::from_secs(5)) {
        for g in &groups {
            kill_group(*g, "KILL");
        }
        for (p, _) in processes_naming(&needle) {
            kill_pid(p, "KILL");
        }
        if !gone(Duration::from_secs(5)) {
            bail!(
                "some sandbox processes survived SIGKILL: {:?}",
                processes_naming(&needle)
            );
        }
    }
    // Group members that do not name the dir (kubeadm run by an agent).
    for g in &groups {
        kill_group(*g, "KILL");
    }
    for f in pid_files {
        let _ = std::fs::remove_file(f);
    }
    Ok(stopped)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command and every flag or argument of `cmd` and below that has
    /// no help text, with its path.
    fn undocumented(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        if cmd.get_about().is_none() && cmd.get_long_about().is_none() {
            out.push(format!("`{path}` has no about text"));
        }
        for a in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            if a.get_help().or(a.get_long_help()).is_none() {
                out.push(format!("`{path}` {} has no help text", a.get_id()));
            }
        }
        for sc in cmd.get_subcommands().filter(|sc| sc.get_name() != "help") {
            undocumented(sc, &format!("{path} {}", sc.get_name()), out);
        }
    }

    #[test]
    fn every_command_flag_and_argument_has_help_text() {
        let mut cmd = super::Cli::command();
        cmd.build();
        let mut missing = vec![];
        undocumented(&cmd, "kh-sandbox", &mut missing);
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }
}
