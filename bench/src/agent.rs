//! Agent footprint: an idle, enrolled, heartbeating kh-agent (RSS, CPU, file
//! descriptors), the stripped release binary, and the time to prepare one
//! host through the coordinator and the real agent.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kh::proto::{prepare_event::Kind, Outcome, PrepareRequest, Targets};

use crate::common::{f2, s1, Bench};
use crate::stats::summarize;
use crate::sys;

#[derive(Debug, Clone)]
pub struct AgentArgs {
    pub seconds: u64,
    pub interval: Duration,
    pub runs: usize,
}

pub fn run(args: &AgentArgs) -> anyhow::Result<()> {
    crate::common::require_binaries()?;
    println!("machine: {}", sys::describe_machine());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // tonic's lazy channels spawn their workers on the current runtime.
    let _rt = rt.enter();
    let interval = format!("{}ms", args.interval.as_millis());
    let mut bench = Bench::new(&["--heartbeat-interval", &interval])?;
    bench.world.coordinator.start();

    // 1. Binary size.
    let bin = kh_testbed::bin("kh-agent");
    let full = std::fs::metadata(&bin)?.len();
    let copy = bench.world.dir().join("kh-agent.stripped");
    std::fs::copy(&bin, &copy)?;
    let out = std::process::Command::new("strip")
        .arg(&copy)
        .output()
        .context("running strip (binutils)")?;
    if !out.status.success() {
        bail!("strip failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let stripped = std::fs::metadata(&copy)?.len();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "kh-agent release binary: {} MiB as built ({}), {} MiB stripped",
        f2(mib(full)),
        bin.display(),
        f2(mib(stripped))
    );

    // 2. Idle footprint of one enrolled, heartbeating agent.
    let idx = bench.world.add_agent("idle-1");
    let pid = bench.world.agents[idx]
        .proc
        .as_ref()
        .and_then(|p| p.pid())
        .context("agent pid")?;
    // Let start-up work (first facts, first heartbeat) pass.
    std::thread::sleep(Duration::from_secs(3));
    let meter = sys::CpuMeter::start(pid).context("agent CPU")?;
    let mut rss_max = 0u64;
    let until = Instant::now() + Duration::from_secs(args.seconds);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_secs(1));
        rss_max = rss_max.max(sys::mem(pid).map(|m| m.rss_kib).unwrap_or(0));
    }
    let (cpu_s, wall_s) = meter.read().context("agent CPU")?;
    let mem = sys::mem(pid).context("agent memory")?;
    let fds = sys::open_fds(pid).unwrap_or(0);
    let threads = sys::threads(pid).unwrap_or(0);
    let beats = bench.world.agents[idx]
        .http_get("/metrics")
        .map(|(_, body)| {
            body.lines()
                .find(|l| l.starts_with("kh_agent_heartbeats_total{result=\"success\"}"))
                .and_then(|l| l.split_whitespace().last())
                .unwrap_or("?")
                .to_string()
        })
        .unwrap_or_else(|e| e);
    println!(
        "idle agent over {} s (heartbeat every {}): CPU {:.3}% of one core ({:.2} s CPU), VmRSS {} MiB (max seen {} MiB), VmHWM {} MiB, {fds} open fds, {threads} threads, {beats} heartbeats sent",
        s1(wall_s),
        humantime::format_duration(args.interval),
        100.0 * cpu_s / wall_s,
        cpu_s,
        f2(mem.rss_kib as f64 / 1024.0),
        f2(rss_max as f64 / 1024.0),
        f2(mem.hwm_kib as f64 / 1024.0),
    );

    // 3. Prepare one host: a fresh host per run (all four steps Changed),
    // then the same host again (all Unchanged).
    let mut admin = bench.admin()?;
    let mut changed = vec![];
    let mut unchanged = vec![];
    let mut changed_steps = vec![];
    let mut unchanged_steps = vec![];
    let mut preflights = vec![];
    for r in 0..args.runs {
        let name = format!("prep-{}", r + 1);
        bench.world.add_agent(&name);
        // Preflight first (read-only), as a rollout does.
        let t = Instant::now();
        let pf = rt
            .block_on(admin.preflight(kh::proto::AdminPreflightRequest {
                targets: Some(Targets {
                    spec_yaml: String::new(),
                    nodes: vec![name.clone()],
                }),
            }))?
            .into_inner();
        preflights.push(t.elapsed().as_secs_f64() * 1000.0);
        if pf.nodes.iter().any(|n| !n.error.is_empty()) {
            bail!("preflight of {name} failed: {:?}", pf.nodes);
        }
        for (want, walls, steps) in [
            (Outcome::Changed, &mut changed, &mut changed_steps),
            (Outcome::Unchanged, &mut unchanged, &mut unchanged_steps),
        ] {
            let (wall, step_sum) = rt.block_on(prepare_once(&mut admin, &name, want))?;
            walls.push(wall);
            steps.push(step_sum);
        }
    }
    let show = |what: &str, v: &[f64]| {
        let s = summarize(v).expect("runs");
        println!(
            "{what}: median {} ms, min {} ms, max {} ms ({} runs)",
            s1(s.median),
            s1(s.min),
            s1(s.max),
            s.n
        );
        s
    };
    println!("\n## Agent footprint\n");
    let pf = show("preflight one host (admin RPC wall)", &preflights);
    let c = show(
        "prepare one host, 4 steps Changed (admin RPC wall)",
        &changed,
    );
    let cs = show(
        "  of which the 4 steps as the coordinator timed them",
        &changed_steps,
    );
    let u = show(
        "prepare one host, 4 steps Unchanged (admin RPC wall)",
        &unchanged,
    );
    let us = show(
        "  of which the 4 steps as the coordinator timed them",
        &unchanged_steps,
    );
    println!("\n| measure | value | goal |\n|---|---|---|");
    println!(
        "| idle RSS (VmRSS after {} s) | {} MiB (HWM {} MiB) | < 20 MB |",
        args.seconds,
        f2(mem.rss_kib as f64 / 1024.0),
        f2(mem.hwm_kib as f64 / 1024.0)
    );
    println!(
        "| idle CPU over {} s | {:.3} % of one core | < 0.1 % |",
        s1(wall_s),
        100.0 * cpu_s / wall_s
    );
    println!("| open fds | {fds} | - |");
    println!(
        "| binary, stripped | {} MiB ({} MiB as built) | < 15 MB |",
        f2(mib(stripped)),
        f2(mib(full))
    );
    println!(
        "| preflight one host | median {} ms [{}-{}] | - |",
        s1(pf.median),
        s1(pf.min),
        s1(pf.max)
    );
    println!(
        "| prepare one host, all Changed | median {} ms [{}-{}] (steps {} ms) | - |",
        s1(c.median),
        s1(c.min),
        s1(c.max),
        s1(cs.median)
    );
    println!(
        "| prepare one host, all Unchanged | median {} ms [{}-{}] (steps {} ms) | - |",
        s1(u.median),
        s1(u.min),
        s1(u.max),
        s1(us.median)
    );
    Ok(())
}

/// Prepares `node` through the admin API; checks every step's outcome is
/// `want`. Returns (wall ms of the RPC, sum of the steps' elapsed ms).
async fn prepare_once(
    admin: &mut kh::proto::admin_client::AdminClient<tonic::transport::Channel>,
    node: &str,
    want: Outcome,
) -> anyhow::Result<(f64, f64)> {
    let t = Instant::now();
    let mut stream = admin
        .prepare(PrepareRequest {
            targets: Some(Targets {
                spec_yaml: String::new(),
                nodes: vec![node.to_string()],
            }),
            dry_run: false,
        })
        .await?
        .into_inner();
    let mut steps = 0.0;
    let mut outcomes = vec![];
    while let Some(ev) = stream.message().await? {
        match Kind::try_from(ev.kind) {
            Ok(Kind::StepFinished) => {
                steps += ev.elapsed_ms as f64;
                let o = ev.report.as_ref().map(|r| r.outcome).unwrap_or_default();
                outcomes.push((ev.step.clone(), Outcome::try_from(o).ok()));
            }
            Ok(Kind::NodeFinished) if !ev.error.is_empty() => {
                bail!("prepare {node} failed: {}", ev.error)
            }
            _ => {}
        }
    }
    let wall = t.elapsed().as_secs_f64() * 1000.0;
    if outcomes.len() != 4 || outcomes.iter().any(|(_, o)| *o != Some(want)) {
        bail!("prepare {node}: expected four steps {want:?}, got {outcomes:?}");
    }
    Ok((wall, steps))
}
