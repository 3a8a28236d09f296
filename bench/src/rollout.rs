//! Rollout overhead: the wall time of a real `Rollout` (coordinator, one
//! kh-agent per host, the kubeadm/kubelet/kubectl doubles with a fixed
//! latency, real etcd 3.4) against the critical path of the same run.
//!
//! The critical path of a run is built from what that run measured (see
//! docs/BENCHMARKS.md for the reasoning):
//!
//! - prepare: the longest node's four prepare steps, as the coordinator timed them;
//! - init: the `kubeadm init` process on the first control plane, from the
//!   double's timings log (configured latency + the double's own work);
//! - CNI: the `cni` step as the coordinator timed it;
//! - control-plane joins: the sum of the `kubeadm join --control-plane`
//!   processes (configured latency + etcd's settling wait + the double's own
//!   work), since they must run one at a time;
//! - workers: a lower bound for running every worker's `kubeadm join`
//!   process with at most workerConcurrency at once: the longest one, or the
//!   sum spread over every slot, whichever is larger;
//! - verify: the `verify` step as the coordinator timed it.
//!
//! Everything else in the wall time is orchestration: preflight, the
//! endpoint check, collecting the cluster CA, waiting for promotion and
//! apiserver readiness, leases, token handling, RPCs and the gaps between them.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kh::proto::{rollout_event::Kind, RolloutEvent, RolloutRequest, SpecFile};
use kh_testbed::spec::{cluster_yaml, SpecNode, CNI_MANIFEST};

use crate::common::{f2, s1, Bench};
use crate::stats::{median_only, median_range, parallel_lower_bound, ratio, summarize};
use crate::sys;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub cps: usize,
    pub workers: usize,
    /// workerConcurrency; `None` leaves the spec's default (10).
    pub concurrency: Option<u32>,
}

impl Shape {
    /// `3x10`, `5x100c100`: control planes x workers [c concurrency].
    pub fn parse(s: &str) -> anyhow::Result<Shape> {
        let (cps, rest) = s.split_once('x').with_context(|| {
            format!("shape {s:?}: expected CPSxWORKERS[cCONCURRENCY], e.g. 3x10 or 5x100c100")
        })?;
        let (workers, conc) = match rest.split_once('c') {
            Some((w, c)) => (w, Some(c.parse().context("concurrency")?)),
            None => (rest, None),
        };
        Ok(Shape {
            cps: cps.parse().context("control planes")?,
            workers: workers.parse().context("workers")?,
            concurrency: conc,
        })
    }

    fn concurrency(&self) -> usize {
        self.concurrency
            .unwrap_or(kh::spec::DEFAULT_WORKER_CONCURRENCY) as usize
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} cp + {} workers, concurrency {}",
            self.cps,
            self.workers,
            self.concurrency()
        )
    }
}

#[derive(Debug, Clone)]
pub struct RolloutArgs {
    pub shapes: Vec<Shape>,
    pub runs: usize,
    pub init: Duration,
    pub join_cp: Duration,
    pub join_worker: Duration,
    pub interval: Duration,
}

/// One `kubeadm` operation from a node's timings log.
#[derive(Debug, Clone)]
struct Op {
    op: String,
    start_ms: u64,
    end_ms: u64,
    latency_ms: u64,
    settle_ms: u64,
}

impl Op {
    fn secs(&self) -> f64 {
        self.end_ms.saturating_sub(self.start_ms) as f64 / 1000.0
    }
}

/// One run: the wall time, the critical path's lines, the phases.
#[derive(Debug, Clone, Default)]
struct RunResult {
    shape: Option<Shape>,
    setup_s: f64,
    wall_s: f64,
    prepare_s: f64,
    init_latency_s: f64,
    init_work_s: f64,
    cni_s: f64,
    cp_latency_s: f64,
    cp_settle_s: f64,
    cp_work_s: f64,
    workers_lb_s: f64,
    worker_join_max_s: f64,
    worker_join_mean_s: f64,
    verify_s: f64,
    critical_s: f64,
    configured_s: f64,
    phases: Vec<(String, f64)>,
    workers_phase_s: f64,
    peak_rss_mib: f64,
    processes: usize,
    busy_pct: f64,
    /// Overhead per phase: the phase's wall time less its critical-path line.
    overhead: Vec<(String, f64)>,
    /// CPU seconds (kh agents, coordinator, kubeadm/kubectl doubles, rest of
    /// the testbed, whole machine) over the rollout and the worker phase.
    cpu_all: Cpu,
    cpu_workers: Cpu,
    /// The same per phase.
    cpu_phases: Vec<(String, Cpu)>,
}

/// Where the CPU went, in seconds.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cpu {
    pub(crate) agents: f64,
    pub(crate) coordinator: f64,
    pub(crate) kube_doubles: f64,
    pub(crate) testbed: f64,
    pub(crate) machine: f64,
}

/// A CPU snapshot of the world and the machine.
pub(crate) struct Snap {
    procs: HashMap<u32, sys::ProcCpu>,
    jiffies: Option<(u64, u64)>,
}

impl Snap {
    pub(crate) fn take(dir: &str) -> Snap {
        Snap {
            procs: sys::cpu_by_process(dir),
            jiffies: sys::machine_jiffies(),
        }
    }

    pub(crate) fn since(&self, before: &Snap) -> Cpu {
        let (agents, coordinator, kube_doubles, testbed) =
            sys::attribute(&before.procs, &self.procs);
        let machine = match (before.jiffies, self.jiffies) {
            (Some((b0, _)), Some((b1, _))) => (b1 - b0) as f64 / sys::clk_tck(),
            _ => f64::NAN,
        };
        Cpu {
            agents,
            coordinator,
            kube_doubles,
            testbed,
            machine,
        }
    }
}

pub fn run(args: &RolloutArgs) -> anyhow::Result<()> {
    crate::common::require_binaries()?;
    println!("machine: {}", sys::describe_machine());
    println!(
        "kubeadm latency: init {}, control-plane join {}, worker join {}; heartbeat every {}",
        humantime::format_duration(args.init),
        humantime::format_duration(args.join_cp),
        humantime::format_duration(args.join_worker),
        humantime::format_duration(args.interval)
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // tonic's lazy channels spawn their workers on the current runtime.
    let _rt = rt.enter();
    let mut all = vec![];
    let mut failed = vec![];
    for shape in &args.shapes {
        for r in 0..args.runs {
            println!("\n== rollout: {shape}, run {}/{} ==", r + 1, args.runs);
            match one_run(*shape, args, &rt) {
                Ok(res) => {
                    print_run(&res);
                    all.push(res);
                }
                // A failed run is a finding, not the end of the benchmark.
                Err(e) => {
                    println!("run FAILED: {e:#}");
                    failed.push(*shape);
                }
            }
        }
    }
    print_tables(&all, &failed, args);
    print_breakdowns(&all, args);
    Ok(())
}

fn one_run(
    shape: Shape,
    args: &RolloutArgs,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<RunResult> {
    let interval = format!("{}ms", args.interval.as_millis());
    let mut bench = Bench::new(&["--heartbeat-interval", &interval])?;
    bench
        .world
        .set_kubeadm_latency(args.init, args.join_cp, args.join_worker);
    bench.world.coordinator.start();
    let t = Instant::now();
    let mut nodes = vec![];
    let names: Vec<(String, &str)> = (1..=shape.cps)
        .map(|i| (format!("cp-{i}"), "control-plane"))
        .chain((1..=shape.workers).map(|i| (format!("w-{i}"), "worker")))
        .collect();
    for (name, role) in &names {
        let idx = bench.world.add_kube_node(name);
        nodes.push(SpecNode {
            name: name.clone(),
            role: role.to_string(),
            ip: bench.world.agents[idx].ip.to_string(),
        });
    }
    let setup_s = t.elapsed().as_secs_f64();
    println!(
        "{} hosts up (kubelet double + enrolled agent each) in {setup_s:.1} s",
        names.len()
    );
    let extra = shape
        .concurrency
        .map(|c| format!("  rollout: {{workerConcurrency: {c}}}\n"))
        .unwrap_or_default();
    let spec = cluster_yaml("bench", &nodes, &extra);

    // Sample memory of every process of this world, and the machine's CPU,
    // while the rollout runs.
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(Mutex::new((0u64, 0usize)));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        let dir = bench.world.dir().display().to_string();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let (rss, n) = sys::rss_of_processes_naming(&dir);
                let mut p = peak.lock().unwrap_or_else(|e| e.into_inner());
                if rss > p.0 {
                    *p = (rss, n);
                }
                drop(p);
                std::thread::sleep(Duration::from_millis(1000));
            }
        })
    };
    let jiffies0 = sys::machine_jiffies();
    let mut admin = bench.admin()?;
    let dir = bench.world.dir().display().to_string();
    let (wall_s, events, (snaps, order)) = rt.block_on(async {
        let mut snaps: HashMap<String, Snap> = HashMap::new();
        let mut order: Vec<String> = vec![];
        snaps.insert("start".into(), Snap::take(&dir));
        let t = Instant::now();
        let mut stream = admin
            .rollout(RolloutRequest {
                spec_yaml: spec.clone(),
                files: vec![SpecFile {
                    field: "cni.manifest".into(),
                    contents: CNI_MANIFEST.as_bytes().to_vec(),
                }],
                dry_run: false,
                allow_even: false,
                no_snapshot: false,
                confirm_removals: false,
            })
            .await?
            .into_inner();
        let mut events = vec![];
        while let Some(ev) = stream.message().await? {
            let done = ev.kind == Kind::Finished as i32;
            if ev.kind == Kind::PhaseStarted as i32 {
                order.push(ev.phase.clone());
                snaps.insert(ev.phase.clone(), Snap::take(&dir));
            }
            events.push(ev);
            if done {
                break;
            }
        }
        let wall = t.elapsed().as_secs_f64();
        snaps.insert("end".into(), Snap::take(&dir));
        order.push("end".into());
        anyhow::Ok((wall, events, (snaps, order)))
    })?;
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let busy_pct = match (jiffies0, sys::machine_jiffies()) {
        (Some((b0, t0)), Some((b1, t1))) => 100.0 * (b1 - b0) as f64 / (t1 - t0).max(1) as f64,
        _ => f64::NAN,
    };
    let last = events.last().context("no rollout events")?;
    if !(last.kind == Kind::Finished as i32 && last.ok) {
        bail!(
            "the rollout failed at {} {}: {}\n{}",
            last.node,
            last.step,
            last.message,
            last.hint
        );
    }

    // The kubeadm operations, from every node's timings log.
    let mut ops: HashMap<String, Vec<Op>> = HashMap::new();
    for a in &bench.world.agents {
        let path = a
            .node_dir()
            .join(kh_testbed::doubles::latency::TIMINGS_FILE);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut v = vec![];
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let j: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{}: {line}", path.display()))?;
            let n = |k: &str| j[k].as_u64().unwrap_or(0);
            v.push(Op {
                op: j["op"].as_str().unwrap_or_default().to_string(),
                start_ms: n("startMs"),
                end_ms: n("endMs"),
                latency_ms: n("latencyMs"),
                settle_ms: n("etcdSettleMs"),
            });
        }
        ops.insert(a.name.clone(), v);
    }
    let (p, n) = *peak.lock().unwrap_or_else(|e| e.into_inner());
    let mut res = analyse(shape, &events, &ops)?;
    res.setup_s = setup_s;
    res.wall_s = wall_s;
    res.peak_rss_mib = p as f64 / 1024.0;
    res.processes = n;
    res.busy_pct = busy_pct;
    if let (Some(a), Some(b)) = (snaps.get("start"), snaps.get("end")) {
        res.cpu_all = b.since(a);
    }
    if let (Some(a), Some(b)) = (snaps.get("workers"), snaps.get("verify")) {
        res.cpu_workers = b.since(a);
    }
    for w in order.windows(2) {
        if let (Some(a), Some(b)) = (snaps.get(&w[0]), snaps.get(&w[1])) {
            res.cpu_phases.push((w[0].clone(), b.since(a)));
        }
    }
    let phases_total: f64 = res.phases.iter().map(|(_, s)| s).sum();
    res.overhead
        .push(("before the first phase".into(), wall_s - phases_total));
    let c = shape.concurrency() as f64;
    res.configured_s = args.init.as_secs_f64()
        + (shape.cps.saturating_sub(1)) as f64 * args.join_cp.as_secs_f64()
        + (shape.workers as f64 / c).ceil() * args.join_worker.as_secs_f64();
    drop(admin);
    drop(bench);
    Ok(res)
}

/// The critical path and phase times of one run from its events and the
/// kubeadm timings.
fn analyse(
    shape: Shape,
    events: &[RolloutEvent],
    ops: &HashMap<String, Vec<Op>>,
) -> anyhow::Result<RunResult> {
    let finished = |phase: &str, step: &str| -> Vec<&RolloutEvent> {
        events
            .iter()
            .filter(|e| e.kind == Kind::StepFinished as i32 && e.phase == phase && e.step == step)
            .collect()
    };
    let mut per_node: BTreeMap<&str, f64> = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| e.kind == Kind::StepFinished as i32 && e.phase == "prepare")
    {
        *per_node.entry(e.node.as_str()).or_default() += e.elapsed_ms as f64 / 1000.0;
    }
    let prepare_s = per_node.values().copied().fold(0.0, f64::max);
    let cni_s = finished("cni", "cni")
        .first()
        .map(|e| e.elapsed_ms as f64 / 1000.0)
        .unwrap_or(0.0);
    let verify_s = finished("verify", "verify")
        .first()
        .map(|e| e.elapsed_ms as f64 / 1000.0)
        .context("no verify step")?;

    let find = |node: &str, op: &str| -> anyhow::Result<Op> {
        ops.get(node)
            .and_then(|v| v.iter().rev().find(|o| o.op == op))
            .cloned()
            .with_context(|| format!("no `{op}` in the kubeadm timings of {node}"))
    };
    let init = find("cp-1", "init")?;
    let mut cp_latency_s = 0.0;
    let mut cp_settle_s = 0.0;
    let mut cp_work_s = 0.0;
    for i in 2..=shape.cps {
        let o = find(&format!("cp-{i}"), "join-control-plane")?;
        cp_latency_s += o.latency_ms as f64 / 1000.0;
        cp_settle_s += o.settle_ms as f64 / 1000.0;
        cp_work_s += o.secs() - (o.latency_ms + o.settle_ms) as f64 / 1000.0;
    }
    let mut worker_durations = vec![];
    for i in 1..=shape.workers {
        worker_durations.push(find(&format!("w-{i}"), "join-worker")?.secs());
    }
    let workers_lb_s = parallel_lower_bound(&worker_durations, shape.concurrency());
    let worker_join_max_s = worker_durations.iter().copied().fold(0.0, f64::max);
    let worker_join_mean_s = if worker_durations.is_empty() {
        0.0
    } else {
        worker_durations.iter().sum::<f64>() / worker_durations.len() as f64
    };

    // Phases: from each phase's start to the next one's (the last to Finished).
    let mut marks: Vec<(String, u64)> = events
        .iter()
        .filter(|e| e.kind == Kind::PhaseStarted as i32)
        .map(|e| (e.phase.clone(), e.unix_ms))
        .collect();
    if let Some(f) = events.iter().find(|e| e.kind == Kind::Finished as i32) {
        marks.push(("end".into(), f.unix_ms));
    }
    let phases: Vec<(String, f64)> = marks
        .windows(2)
        .map(|w| {
            (
                w[0].0.clone(),
                w[1].1.saturating_sub(w[0].1) as f64 / 1000.0,
            )
        })
        .collect();
    let workers_phase_s = phases
        .iter()
        .find(|(p, _)| p == "workers")
        .map(|(_, s)| *s)
        .unwrap_or(f64::NAN);

    let init_latency_s = init.latency_ms as f64 / 1000.0;
    let init_work_s = init.secs() - init_latency_s;
    let line = |phase: &str| match phase {
        "prepare" => prepare_s,
        "init" => init.secs(),
        "cni" => cni_s,
        "control-planes" => cp_latency_s + cp_settle_s + cp_work_s,
        "workers" => workers_lb_s,
        "verify" => verify_s,
        _ => 0.0,
    };
    let overhead: Vec<(String, f64)> = phases
        .iter()
        .map(|(p, s)| (p.clone(), s - line(p)))
        .collect();
    let critical_s = prepare_s
        + init.secs()
        + cni_s
        + cp_latency_s
        + cp_settle_s
        + cp_work_s
        + workers_lb_s
        + verify_s;
    Ok(RunResult {
        shape: Some(shape),
        prepare_s,
        init_latency_s,
        init_work_s,
        cni_s,
        cp_latency_s,
        cp_settle_s,
        cp_work_s,
        workers_lb_s,
        worker_join_max_s,
        worker_join_mean_s,
        verify_s,
        critical_s,
        phases,
        workers_phase_s,
        overhead,
        ..Default::default()
    })
}

fn print_run(r: &RunResult) {
    println!("critical path of this run (s):");
    println!(
        "  prepare (longest node, 4 steps)          {}",
        f2(r.prepare_s)
    );
    println!(
        "  kubeadm init                             {} = latency {} + double's work {}",
        f2(r.init_latency_s + r.init_work_s),
        f2(r.init_latency_s),
        f2(r.init_work_s)
    );
    println!("  CNI (kubectl apply)                      {}", f2(r.cni_s));
    println!(
        "  control-plane joins, one at a time       {} = latency {} + etcd settle {} + double's work {}",
        f2(r.cp_latency_s + r.cp_settle_s + r.cp_work_s),
        f2(r.cp_latency_s),
        f2(r.cp_settle_s),
        f2(r.cp_work_s)
    );
    println!(
        "  workers (lower bound at concurrency)     {} (joins: longest {}, mean {})",
        f2(r.workers_lb_s),
        f2(r.worker_join_max_s),
        f2(r.worker_join_mean_s)
    );
    println!(
        "  verify                                   {}",
        f2(r.verify_s)
    );
    println!(
        "  = critical path {} s; configured latencies alone {} s",
        f2(r.critical_s),
        f2(r.configured_s)
    );
    println!(
        "wall {} s -> ratio wall/critical {} (wall/configured {}); host setup before it {} s",
        f2(r.wall_s),
        f2(ratio(r.wall_s, r.critical_s)),
        f2(ratio(r.wall_s, r.configured_s)),
        s1(r.setup_s)
    );
    let phases: Vec<String> = r
        .phases
        .iter()
        .map(|(p, s)| format!("{p} {}", f2(*s)))
        .collect();
    println!("phases (s): {}", phases.join(", "));
    let over: Vec<String> = r
        .overhead
        .iter()
        .filter(|(_, s)| s.abs() >= 0.005)
        .map(|(p, s)| format!("{p} {}", f2(*s)))
        .collect();
    println!(
        "overhead (wall - critical = {} s) by phase: {}",
        f2(r.wall_s - r.critical_s),
        over.join(", ")
    );
    for (what, c) in [
        ("whole rollout", r.cpu_all),
        ("worker phase", r.cpu_workers),
    ] {
        println!(
            "CPU-s in the {what}: kh agents {}, coordinator {}, kubeadm/kubectl doubles {}, kubelet/etcd/apiserver doubles {}; machine total {}, of which outside this world {}",
            f2(c.agents),
            f2(c.coordinator),
            f2(c.kube_doubles),
            f2(c.testbed),
            f2(c.machine),
            f2(c.machine - c.agents - c.coordinator - c.kube_doubles - c.testbed)
        );
    }
    let per: Vec<String> = r
        .cpu_phases
        .iter()
        .map(|(p, c)| format!("{p} {}/{}", f2(c.coordinator), f2(c.agents)))
        .collect();
    println!("coordinator/agents CPU-s per phase: {}", per.join(", "));
    println!(
        "during the rollout: peak RSS of the world's {} processes {} MiB, machine {}% busy",
        r.processes,
        s1(r.peak_rss_mib),
        s1(r.busy_pct)
    );
}

fn print_tables(all: &[RunResult], failed: &[Shape], args: &RolloutArgs) {
    println!("\n## Rollout overhead (medians of runs, [min-max])\n");
    println!(
        "| shape | runs (ok/all) | wall s | critical path s | ratio | configured-only s | goal |"
    );
    println!("|---|---|---|---|---|---|---|");
    for shape in &args.shapes {
        let rs: Vec<&RunResult> = all.iter().filter(|r| r.shape == Some(*shape)).collect();
        let col = |f: &dyn Fn(&RunResult) -> f64| median_range(&rs, f);
        println!(
            "| {shape} | {}/{} | {} | {} | {} | {} | ratio <= 1.10 |",
            rs.len(),
            rs.len() + failed.iter().filter(|f| *f == shape).count(),
            col(&|r| r.wall_s),
            col(&|r| r.critical_s),
            col(&|r| ratio(r.wall_s, r.critical_s)),
            col(&|r| r.configured_s),
        );
    }
    println!("\n| shape | prepare | init | CNI | cp joins (latency + settle + work) | workers LB | verify |");
    println!("|---|---|---|---|---|---|---|");
    for shape in &args.shapes {
        let rs: Vec<&RunResult> = all.iter().filter(|r| r.shape == Some(*shape)).collect();
        let med = |f: &dyn Fn(&RunResult) -> f64| median_only(&rs, f);
        println!(
            "| {shape} | {} | {} ({} + {}) | {} | {} + {} + {} | {} | {} |",
            med(&|r| r.prepare_s),
            med(&|r| r.init_latency_s + r.init_work_s),
            med(&|r| r.init_latency_s),
            med(&|r| r.init_work_s),
            med(&|r| r.cni_s),
            med(&|r| r.cp_latency_s),
            med(&|r| r.cp_settle_s),
            med(&|r| r.cp_work_s),
            med(&|r| r.workers_lb_s),
            med(&|r| r.verify_s),
        );
    }
    println!("\n| shape | worker phase wall s | worker join longest s | worker join mean s |");
    println!("|---|---|---|---|");
    for shape in &args.shapes {
        let rs: Vec<&RunResult> = all.iter().filter(|r| r.shape == Some(*shape)).collect();
        let col = |f: &dyn Fn(&RunResult) -> f64| median_range(&rs, f);
        println!(
            "| {shape} | {} | {} | {} |",
            col(&|r| r.workers_phase_s),
            col(&|r| r.worker_join_max_s),
            col(&|r| r.worker_join_mean_s),
        );
    }
}

fn print_breakdowns(all: &[RunResult], args: &RolloutArgs) {
    println!("\n| shape | overhead s (median) by phase |");
    println!("|---|---|");
    for shape in &args.shapes {
        let rs: Vec<&RunResult> = all.iter().filter(|r| r.shape == Some(*shape)).collect();
        let Some(first) = rs.first() else { continue };
        let cols: Vec<String> = first
            .overhead
            .iter()
            .map(|(p, _)| {
                let v: Vec<f64> = rs
                    .iter()
                    .filter_map(|r| r.overhead.iter().find(|(q, _)| q == p).map(|(_, s)| *s))
                    .collect();
                let m = summarize(&v).map(|s| s.median).unwrap_or(f64::NAN);
                format!("{p} {}", f2(m))
            })
            .filter(|c| !c.ends_with(" 0.00") && !c.ends_with(" -0.00"))
            .collect();
        println!("| {shape} | {} |", cols.join(", "));
    }
    println!("\n| shape | CPU-s (median): | kh agents | coordinator | kubeadm/kubectl doubles | kubelet/etcd/apiserver doubles | machine |");
    println!("|---|---|---|---|---|---|---|");
    for shape in &args.shapes {
        let rs: Vec<&RunResult> = all.iter().filter(|r| r.shape == Some(*shape)).collect();
        for (what, get) in [
            (
                "whole rollout",
                (|r: &RunResult| r.cpu_all) as fn(&RunResult) -> Cpu,
            ),
            ("worker phase", |r: &RunResult| r.cpu_workers),
        ] {
            let med = |f: &dyn Fn(Cpu) -> f64| median_only(&rs, &|r| f(get(r)));
            println!(
                "| {shape} | {what} | {} | {} | {} | {} | {} |",
                med(&|c| c.agents),
                med(&|c| c.coordinator),
                med(&|c| c.kube_doubles),
                med(&|c| c.testbed),
                med(&|c| c.machine),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse() {
        assert_eq!(
            Shape::parse("3x10").unwrap(),
            Shape {
                cps: 3,
                workers: 10,
                concurrency: None
            }
        );
        assert_eq!(
            Shape::parse("5x100c100").unwrap(),
            Shape {
                cps: 5,
                workers: 100,
                concurrency: Some(100)
            }
        );
        assert!(Shape::parse("3").is_err());
        assert!(Shape::parse("ax1").is_err());
    }
}
