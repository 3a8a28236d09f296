//! kh-sandbox: a local kh cluster on loopback for a first look and for manual
//! testing. `up` starts a coordinator and enrolled agents as detached
//! processes with pid files; `down` stops every one of them, even after the
//! sandbox command itself crashed.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use kh_testbed::world::{Layout, World};

#[derive(Parser)]
#[command(
    name = "kh-sandbox",
    about = "A local kh cluster on loopback addresses 127.0.0.10-127.0.0.99."
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
    /// Start a coordinator and enrolled agents (replacing a previous sandbox in --dir).
    Up {
        #[arg(long, default_value_t = 3)]
        control_planes: u32,
        #[arg(long, default_value_t = 0)]
        workers: u32,
    },
    /// Show the sandbox's processes and `khctl nodes`.
    Status,
    /// Stop everything the sandbox started.
    Down,
}

fn default_dir() -> PathBuf {
    std::env::temp_dir().join("kh-sandbox")
}

const COORDINATOR: &str = "127.0.0.10:7443";

fn agent_ip(n: u32) -> Option<Ipv4Addr> {
    Some(Ipv4Addr::new(127, 0, 0, 11 + n as u8))
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.command {
        Cmd::Up {
            control_planes,
            workers,
        } => up(&cli.dir, control_planes, workers),
        Cmd::Status => status(&cli.dir),
        Cmd::Down => down(&cli.dir).map(|n| println!("Stopped {n} sandbox processes.")),
    };
    if let Err(e) = r {
        eprintln!("kh-sandbox: error: {e:#}");
        std::process::exit(1);
    }
}

fn pid_dir(dir: &Path) -> PathBuf {
    dir.join("pids")
}

/// Detaches a started process: it keeps running after kh-sandbox exits, and
/// its pid file lets `down` find it.
fn record(dir: &Path, name: &str, proc: kh_testbed::proc::Proc) -> anyhow::Result<()> {
    let pid = proc.detach().context("process already gone")?;
    std::fs::create_dir_all(pid_dir(dir))?;
    std::fs::write(pid_dir(dir).join(format!("{name}.pid")), format!("{pid}\n"))?;
    Ok(())
}

fn up(dir: &Path, control_planes: u32, workers: u32) -> anyhow::Result<()> {
    if control_planes + workers == 0 || control_planes + workers > 80 {
        bail!("--control-planes plus --workers must be between 1 and 80");
    }
    let stopped = down(dir)?;
    if stopped > 0 {
        println!("Stopped {stopped} processes of the previous sandbox.");
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cleaning {}", dir.display()))?;
    }
    let layout = Layout {
        dir: dir.to_path_buf(),
        coordinator: COORDINATOR.parse::<SocketAddr>()?,
        coordinator_args: vec!["--heartbeat-interval".into(), "2s".into()],
        agent_ip,
        agent_ports: Some((7444, 7445)),
    };
    let mut w = World::with_layout(layout);
    println!("Starting the coordinator on {COORDINATOR} ...");
    w.coordinator.start();
    let names: Vec<String> = (1..=control_planes)
        .map(|i| format!("cp-{i}"))
        .chain((1..=workers).map(|i| format!("w-{i}")))
        .collect();
    for name in &names {
        let idx = w.add_agent(name);
        let a = &w.agents[idx];
        println!(
            "Enrolled {name} on {} (host root {})",
            a.ip,
            a.root.display()
        );
    }
    for name in &names {
        w.wait_health(name, "Ready", Duration::from_secs(30));
    }
    if let Some(p) = w.coordinator.proc.take() {
        record(dir, "coordinator", p)?;
    }
    for a in &mut w.agents {
        if let Some(p) = a.proc.take() {
            record(dir, &format!("agent-{}", a.name), p)?;
        }
    }
    println!();
    print!("{}", w.khctl(&["nodes"]).stdout);
    let khctl = kh_testbed::bin("khctl");
    println!(
        "\nThe sandbox is up in {dir}.\n  Use it:   {khctl} --config {admin} nodes\n  Logs:     {dir}/coordinator.log, {dir}/nodes/*/agent.log\n  Stop it:  {sandbox} --dir {dir} down",
        dir = dir.display(),
        khctl = khctl.display(),
        admin = w.coordinator.admin.display(),
        sandbox = kh_testbed::bin("kh-sandbox").display(),
    );
    Ok(())
}

/// The pid in `file`, if that process is still one the sandbox started: its
/// command line names the sandbox dir, so a recycled pid is left alone.
fn live_pid(file: &Path, dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(file).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    cmdline.contains(&*dir.to_string_lossy()).then_some(pid)
}

fn pid_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(pid_dir(dir))
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn status(dir: &Path) -> anyhow::Result<()> {
    let files = pid_files(dir);
    if files.is_empty() {
        println!(
            "No sandbox in {}. Start one with `kh-sandbox up`.",
            dir.display()
        );
        return Ok(());
    }
    for f in &files {
        let name = f.file_stem().unwrap_or_default().to_string_lossy();
        match live_pid(f, dir) {
            Some(pid) => println!("{name:<20} running (pid {pid})"),
            None => println!("{name:<20} stopped"),
        }
    }
    let admin = dir.join("coordinator/admin.khconfig");
    let out = Command::new(kh_testbed::bin("khctl"))
        .arg("--config")
        .arg(&admin)
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

fn down(dir: &Path) -> anyhow::Result<usize> {
    let mut stopped = 0;
    let mut pending = vec![];
    for f in pid_files(dir) {
        if let Some(pid) = live_pid(&f, dir) {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            pending.push((f, pid));
        } else {
            let _ = std::fs::remove_file(&f);
        }
    }
    let start = Instant::now();
    for (f, pid) in pending {
        while live_pid(&f, dir).is_some() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if live_pid(&f, dir).is_some() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = std::fs::remove_file(&f);
        stopped += 1;
    }
    Ok(stopped)
}
