//! Upgrade overhead: the wall time of a real `Upgrade` (`khctl upgrade`:
//! coordinator, one kh-agent per host, the kubeadm/kubectl and package
//! manager doubles with a fixed latency per operation, real etcd 3.4) from
//! v1.31.4 to v1.32.4, against the critical path of the same run.
//!
//! An upgrade is serial by design: control planes one at a time, then the
//! workers in batches of `upgrade.maxUnavailable`. Per node the operations
//! that stand for real work are the two package installs (kubeadm; kubelet
//! and kubectl), `kubeadm upgrade apply|node` and the drain. The critical
//! path of a run is therefore
//!
//!   sum over control planes of their node path
//!   + sum over worker batches of the longest node path in the batch,
//!
//! where a node's path is the time of those operations as this run measured
//! them: the package installs and `kubeadm upgrade` processes from the
//! node's timings log (configured latency + the double's own work), the
//! drain from the coordinator's `elapsed_ms` of the node's drain step (it
//! runs `kubectl drain` on a control plane's agent). The critical path made
//! of the configured latencies alone is printed beside it. Everything else
//! in the wall time is orchestration: preconditions and the plan, the
//! snapshot, the package source refresh, `kubeadm upgrade plan`, the kubelet
//! restart, waiting for the node to be Ready at the new version, the
//! uncordon, health checks, the RPCs and the gaps between them.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kh::proto::{rollout_event::Kind, RolloutEvent, UpgradeRequest};
use kh_testbed::doubles::latency::Op as LatencyOp;
use kh_testbed::doubles::packages::Family;
use kh_testbed::spec::{cluster_yaml, SpecNode};

use crate::common::{f2, s1, Bench};
use crate::rollout::Snap;
use crate::stats::{median_only, median_range, ratio, summarize};
use crate::sys;

const FROM: &str = "v1.31.4";
const TARGET: &str = "v1.32.4";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub cps: usize,
    pub workers: usize,
    pub max_unavailable: usize,
}

impl Shape {
    /// `3x10m1`: control planes x workers m maxUnavailable.
    pub fn parse(s: &str) -> anyhow::Result<Shape> {
        let bad = || format!("shape {s:?}: expected CPSxWORKERSmMAXUNAVAILABLE, e.g. 3x10m1");
        let (cps, rest) = s.split_once('x').with_context(bad)?;
        let (workers, m) = rest.split_once('m').with_context(bad)?;
        let shape = Shape {
            cps: cps.parse().with_context(bad)?,
            workers: workers.parse().with_context(bad)?,
            max_unavailable: m.parse().with_context(bad)?,
        };
        if shape.cps == 0 || shape.max_unavailable == 0 {
            bail!("shape {s:?}: at least one control plane and maxUnavailable >= 1");
        }
        Ok(shape)
    }

    /// The worker batches in spec order, as the upgrade's plan runs them.
    fn batches(&self) -> Vec<Vec<String>> {
        let workers: Vec<String> = (1..=self.workers).map(|i| format!("w-{i}")).collect();
        workers
            .chunks(self.max_unavailable)
            .map(|c| c.to_vec())
            .collect()
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} cp + {} workers, maxUnavailable {}",
            self.cps, self.workers, self.max_unavailable
        )
    }
}

#[derive(Debug, Clone)]
pub struct UpgradeArgs {
    pub shapes: Vec<Shape>,
    pub runs: usize,
    pub install: Duration,
    pub apply: Duration,
    pub node: Duration,
    pub drain: Duration,
    pub interval: Duration,
}

impl UpgradeArgs {
    /// A node's configured latency: two package installs, its kubeadm
    /// upgrade, its drain.
    fn configured(&self, first: bool) -> f64 {
        2.0 * self.install.as_secs_f64()
            + if first { self.apply } else { self.node }.as_secs_f64()
            + self.drain.as_secs_f64()
    }
}

/// One timed double operation from a node's timings log.
#[derive(Debug, Clone)]
struct Timed {
    op: String,
    start_ms: u64,
    end_ms: u64,
    latency_ms: u64,
}

impl Timed {
    fn secs(&self) -> f64 {
        self.end_ms.saturating_sub(self.start_ms) as f64 / 1000.0
    }
}

/// One node's part of a run.
#[derive(Debug, Clone, Default)]
struct NodeResult {
    /// Installs + kubeadm upgrade (timings) + drain (step).
    path_s: f64,
    configured_latency_s: f64,
    /// The installs' and kubeadm's configured latencies and the double's
    /// work on top of them.
    install_s: f64,
    kubeadm_s: f64,
    drain_s: f64,
    /// From the node's first step start to its last step end.
    span_s: f64,
    start_ms: u64,
    end_ms: u64,
}

#[derive(Debug, Clone, Default)]
struct RunResult {
    shape: Option<Shape>,
    setup_s: f64,
    wall_s: f64,
    critical_s: f64,
    configured_s: f64,
    /// Before the first node step: preconditions, plan, snapshot.
    before_nodes_s: f64,
    /// After the last node step.
    after_nodes_s: f64,
    /// The cluster steps' elapsed times (preconditions, snapshot, verify,
    /// update-spec).
    cluster_steps: Vec<(String, f64)>,
    cp_path_s: f64,
    cp_span_s: f64,
    batches_path_s: f64,
    batches_span_s: f64,
    /// The sum over batches of the longest node span in the batch: the
    /// batch span less this is time no node of the batch ran a step.
    batches_node_span_s: f64,
    /// Gaps between one control plane's end and the next one's start, and
    /// between batches.
    cp_gaps_s: f64,
    batch_gaps_s: f64,
    phases: Vec<(String, f64)>,
    /// Per step name: (total elapsed over control planes, mean over workers, count).
    steps: BTreeMap<String, (f64, f64, usize)>,
    /// The longest drain step of each batch, over the configured drain
    /// latency (1.0: no queueing).
    drain_stretch_max: f64,
    install_s: f64,
    kubeadm_s: f64,
    drain_s: f64,
    cpu: Cpu,
    busy_pct: f64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    agents: f64,
    coordinator: f64,
    doubles: f64,
    machine: f64,
}

pub fn run(args: &UpgradeArgs) -> anyhow::Result<()> {
    crate::common::require_binaries()?;
    println!("machine: {}", sys::describe_machine());
    println!(
        "injected latency: package install {}, kubeadm upgrade apply {}, kubeadm upgrade node {}, drain {}; heartbeat every {}",
        humantime::format_duration(args.install),
        humantime::format_duration(args.apply),
        humantime::format_duration(args.node),
        humantime::format_duration(args.drain),
        humantime::format_duration(args.interval)
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let _rt = rt.enter();
    let mut all = vec![];
    let mut failed = vec![];
    for shape in &args.shapes {
        for r in 0..args.runs {
            println!("\n== upgrade: {shape}, run {}/{} ==", r + 1, args.runs);
            match one_run(*shape, args, &rt) {
                Ok(res) => {
                    print_run(&res);
                    all.push(res);
                }
                Err(e) => {
                    println!("run FAILED: {e:#}");
                    failed.push(*shape);
                }
            }
        }
    }
    print_tables(&all, &failed, args);
    Ok(())
}

fn one_run(
    shape: Shape,
    args: &UpgradeArgs,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<RunResult> {
    let interval = format!("{}ms", args.interval.as_millis());
    let mut bench = Bench::new(&["--heartbeat-interval", &interval])?;
    let w = &mut bench.world;
    w.coordinator.start();
    w.seed_default_package_repos();
    let t = Instant::now();
    let mut nodes = vec![];
    let names: Vec<(String, &str)> = (1..=shape.cps)
        .map(|i| (format!("cp-{i}"), "control-plane"))
        .chain((1..=shape.workers).map(|i| (format!("w-{i}"), "worker")))
        .collect();
    for (name, role) in &names {
        let idx = w.declare_kube_host(name);
        w.agents[idx].seed_packages(Family::Apt, FROM, true);
        w.agents[idx].start_kubelet();
        let (tok, hash, addr) = w.token(name, &[]);
        let out = w.enroll(idx, &tok, &hash, &addr, &[]);
        if !out.ok() {
            bail!("enroll {name}: {}", out.stderr);
        }
        w.agents[idx].start();
        w.wait_health(name, "Ready", Duration::from_secs(60));
        nodes.push(SpecNode {
            name: name.clone(),
            role: role.to_string(),
            ip: w.agents[idx].ip.to_string(),
        });
    }
    let extra = format!("  upgrade: {{maxUnavailable: {}}}\n", shape.max_unavailable);
    let spec_at = |v: &str| {
        cluster_yaml("bench", &nodes, &extra).replace(
            "kubernetesVersion: v1.32.0",
            &format!("kubernetesVersion: {v}"),
        )
    };
    let from = kh_testbed::spec::write(w.dir(), "cluster.yaml", &spec_at(FROM))?;
    let out = w.khctl(&["rollout", "-f", from.to_str().unwrap_or_default()]);
    if !out.ok() {
        bail!("rollout at {FROM}: {}\n{}", out.stdout, out.stderr);
    }
    let setup_s = t.elapsed().as_secs_f64();
    println!(
        "{} hosts up and rolled out at {FROM} in {setup_s:.1} s",
        names.len()
    );
    // Only the upgrade's operations get a latency: the rollout's kubeadm
    // init and join ran without one (their timings lines have other ops).
    w.set_double_latency(LatencyOp::PackageInstall, args.install);
    w.set_double_latency(LatencyOp::UpgradeApply, args.apply);
    w.set_double_latency(LatencyOp::UpgradeNode, args.node);
    w.set_double_latency(LatencyOp::Drain, args.drain);

    let spec = spec_at(TARGET);
    let dir = w.dir().display().to_string();
    let jiffies0 = sys::machine_jiffies();
    let snap0 = Snap::take(&dir);
    let mut admin = bench.admin()?;
    let rpc_start_ms = now_ms();
    let (wall_s, events) = rt.block_on(async {
        let t = Instant::now();
        let mut stream = admin
            .upgrade(UpgradeRequest {
                spec_yaml: spec.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let mut events = vec![];
        while let Some(ev) = stream.message().await? {
            let done = ev.kind == Kind::Finished as i32;
            events.push(ev);
            if done {
                break;
            }
        }
        anyhow::Ok((t.elapsed().as_secs_f64(), events))
    })?;
    let rpc_end_ms = now_ms();
    let cpu = Snap::take(&dir).since(&snap0);
    let busy_pct = match (jiffies0, sys::machine_jiffies()) {
        (Some((b0, t0)), Some((b1, t1))) => 100.0 * (b1 - b0) as f64 / (t1 - t0).max(1) as f64,
        _ => f64::NAN,
    };
    let last = events.last().context("no upgrade events")?;
    if !(last.kind == Kind::Finished as i32 && last.ok) {
        bail!(
            "the upgrade failed at {} {}: {}\n{}",
            last.node,
            last.step,
            last.message,
            last.hint
        );
    }
    let mut timed: HashMap<String, Vec<Timed>> = HashMap::new();
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
            v.push(Timed {
                op: j["op"].as_str().unwrap_or_default().to_string(),
                start_ms: n("startMs"),
                end_ms: n("endMs"),
                latency_ms: n("latencyMs"),
            });
        }
        timed.insert(a.name.clone(), v);
    }
    let mut res = analyse(shape, args, &events, &timed)?;
    res.setup_s = setup_s;
    res.wall_s = wall_s;
    res.busy_pct = busy_pct;
    res.cpu = Cpu {
        agents: cpu.agents,
        coordinator: cpu.coordinator,
        doubles: cpu.kube_doubles + cpu.testbed,
        machine: cpu.machine,
    };
    // Before the first node step and after the last one; the cluster
    // steps (preconditions, snapshot, verify, update-spec) are there.
    let node_step = |e: &&RolloutEvent| !e.node.is_empty() && e.node != "cluster";
    let first_node_ms = events
        .iter()
        .filter(|e| e.kind == Kind::StepStarted as i32)
        .filter(node_step)
        .map(|e| e.unix_ms)
        .min()
        .unwrap_or(rpc_start_ms);
    let last_node_ms = events
        .iter()
        .filter(|e| e.kind == Kind::StepFinished as i32)
        .filter(node_step)
        .map(|e| e.unix_ms)
        .max()
        .unwrap_or(rpc_end_ms);
    res.before_nodes_s = first_node_ms.saturating_sub(rpc_start_ms) as f64 / 1000.0;
    res.after_nodes_s = rpc_end_ms.saturating_sub(last_node_ms) as f64 / 1000.0;
    res.cluster_steps = events
        .iter()
        .filter(|e| e.kind == Kind::StepFinished as i32 && e.node == "cluster")
        .map(|e| (e.step.clone(), e.elapsed_ms as f64 / 1000.0))
        .collect();
    drop(admin);
    drop(bench);
    Ok(res)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn analyse(
    shape: Shape,
    args: &UpgradeArgs,
    events: &[RolloutEvent],
    timed: &HashMap<String, Vec<Timed>>,
) -> anyhow::Result<RunResult> {
    let upgrade_ops = |node: &str, op: &str| -> Vec<Timed> {
        timed
            .get(node)
            .map(|v| v.iter().filter(|t| t.op == op).cloned().collect())
            .unwrap_or_default()
    };
    let mut per_node: BTreeMap<String, NodeResult> = BTreeMap::new();
    let mut steps: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
    let cps: Vec<String> = (1..=shape.cps).map(|i| format!("cp-{i}")).collect();
    let all_nodes: Vec<String> = cps
        .iter()
        .cloned()
        .chain((1..=shape.workers).map(|i| format!("w-{i}")))
        .collect();
    for n in &all_nodes {
        let installs = upgrade_ops(n, "package-install");
        let kubeadm: Vec<Timed> = upgrade_ops(n, "upgrade-apply")
            .into_iter()
            .chain(upgrade_ops(n, "upgrade-node"))
            .collect();
        if installs.len() != 2 || kubeadm.len() != 1 {
            bail!(
                "{n}: {} package installs and {} kubeadm upgrades timed, expected 2 and 1",
                installs.len(),
                kubeadm.len()
            );
        }
        let node_events: Vec<&RolloutEvent> = events.iter().filter(|e| &e.node == n).collect();
        for e in node_events
            .iter()
            .filter(|e| e.kind == Kind::StepFinished as i32)
        {
            steps
                .entry(e.step.clone())
                .or_default()
                .push((n.clone(), e.elapsed_ms as f64 / 1000.0));
        }
        let drain_s = node_events
            .iter()
            .filter(|e| e.kind == Kind::StepFinished as i32 && e.step.contains("drain"))
            .map(|e| e.elapsed_ms as f64 / 1000.0)
            .sum::<f64>();
        let start_ms = node_events
            .iter()
            .filter(|e| e.kind == Kind::StepStarted as i32)
            .map(|e| e.unix_ms)
            .min()
            .with_context(|| format!("no step of {n} started"))?;
        let end_ms = node_events
            .iter()
            .filter(|e| e.kind == Kind::StepFinished as i32)
            .map(|e| e.unix_ms)
            .max()
            .with_context(|| format!("no step of {n} finished"))?;
        let install_s: f64 = installs.iter().map(Timed::secs).sum();
        let kubeadm_s: f64 = kubeadm.iter().map(Timed::secs).sum();
        let latency_s: f64 = installs
            .iter()
            .chain(&kubeadm)
            .map(|t| t.latency_ms as f64 / 1000.0)
            .sum();
        per_node.insert(
            n.clone(),
            NodeResult {
                path_s: install_s + kubeadm_s + drain_s,
                configured_latency_s: latency_s + args.drain.as_secs_f64(),
                install_s,
                kubeadm_s,
                drain_s,
                span_s: end_ms.saturating_sub(start_ms) as f64 / 1000.0,
                start_ms,
                end_ms,
            },
        );
    }
    let node = |n: &str| per_node.get(n).cloned().unwrap_or_default();
    let cp_path_s: f64 = cps.iter().map(|n| node(n).path_s).sum();
    let cp_span_s: f64 = cps.iter().map(|n| node(n).span_s).sum();
    let cp_gaps_s: f64 = cps
        .windows(2)
        .map(|p| node(&p[1]).start_ms.saturating_sub(node(&p[0]).end_ms) as f64 / 1000.0)
        .sum();
    let batches = shape.batches();
    let mut batches_path_s = 0.0;
    let mut batches_span_s = 0.0;
    let mut batches_node_span_s = 0.0;
    let mut batch_windows = vec![];
    let mut drain_stretch_max: f64 = 0.0;
    for b in &batches {
        batches_path_s += b.iter().map(|n| node(n).path_s).fold(0.0, f64::max);
        let start = b.iter().map(|n| node(n).start_ms).min().unwrap_or(0);
        let end = b.iter().map(|n| node(n).end_ms).max().unwrap_or(0);
        batches_span_s += end.saturating_sub(start) as f64 / 1000.0;
        batches_node_span_s += b.iter().map(|n| node(n).span_s).fold(0.0, f64::max);
        batch_windows.push((start, end));
        let longest_drain = b.iter().map(|n| node(n).drain_s).fold(0.0, f64::max);
        drain_stretch_max = drain_stretch_max.max(ratio(longest_drain, args.drain.as_secs_f64()));
    }
    // From the last control plane to the first batch, and between batches.
    let mut batch_gaps_s = 0.0;
    let mut prev_end = cps.last().map(|n| node(n).end_ms).unwrap_or(0);
    for (s, e) in &batch_windows {
        batch_gaps_s += s.saturating_sub(prev_end) as f64 / 1000.0;
        prev_end = *e;
    }
    let configured_s = cps
        .iter()
        .enumerate()
        .map(|(i, _)| args.configured(i == 0))
        .sum::<f64>()
        + batches.len() as f64 * args.configured(false);
    let mut marks: Vec<(String, u64)> = events
        .iter()
        .filter(|e| e.kind == Kind::PhaseStarted as i32)
        .map(|e| (e.phase.clone(), e.unix_ms))
        .collect();
    if let Some(f) = events.iter().find(|e| e.kind == Kind::Finished as i32) {
        marks.push(("end".into(), f.unix_ms));
    }
    let phases = marks
        .windows(2)
        .map(|w| {
            (
                w[0].0.clone(),
                w[1].1.saturating_sub(w[0].1) as f64 / 1000.0,
            )
        })
        .collect();
    let steps = steps
        .into_iter()
        .map(|(step, v)| {
            let cp_total: f64 = v
                .iter()
                .filter(|(n, _)| n.starts_with("cp-"))
                .map(|(_, s)| s)
                .sum();
            let w: Vec<f64> = v
                .iter()
                .filter(|(n, _)| n.starts_with("w-"))
                .map(|(_, s)| *s)
                .collect();
            let w_mean = if w.is_empty() {
                f64::NAN
            } else {
                w.iter().sum::<f64>() / w.len() as f64
            };
            (step, (cp_total, w_mean, v.len()))
        })
        .collect();
    // The latencies the doubles slept, against what the arguments say: a
    // check that the latency file took effect.
    let seen: f64 = per_node.values().map(|n| n.configured_latency_s).sum();
    let want: f64 = all_nodes.iter().map(|n| args.configured(n == "cp-1")).sum();
    if (seen - want).abs() > 0.01 {
        println!("warning: the doubles slept {seen:.2} s in all, the arguments say {want:.2} s");
    }
    let mean = |f: &dyn Fn(&NodeResult) -> f64| {
        per_node.values().map(f).sum::<f64>() / per_node.len().max(1) as f64
    };
    Ok(RunResult {
        shape: Some(shape),
        critical_s: cp_path_s + batches_path_s,
        configured_s,
        cp_path_s,
        cp_span_s,
        batches_path_s,
        batches_span_s,
        batches_node_span_s,
        cp_gaps_s,
        batch_gaps_s,
        phases,
        steps,
        drain_stretch_max,
        install_s: mean(&|n| n.install_s),
        kubeadm_s: mean(&|n| n.kubeadm_s),
        drain_s: mean(&|n| n.drain_s),
        ..Default::default()
    })
}

fn print_run(r: &RunResult) {
    println!("critical path of this run (s):");
    println!(
        "  control planes, one at a time            {} (their spans {}, gaps between them {})",
        f2(r.cp_path_s),
        f2(r.cp_span_s),
        f2(r.cp_gaps_s)
    );
    println!(
        "  worker batches, longest node of each     {} (batch spans {}, gaps before/between them {})",
        f2(r.batches_path_s),
        f2(r.batches_span_s),
        f2(r.batch_gaps_s)
    );
    println!(
        "  worker batches: longest node span per batch, summed {} (batch spans less it {}; it less the batch paths {})",
        f2(r.batches_node_span_s),
        f2(r.batches_span_s - r.batches_node_span_s),
        f2(r.batches_node_span_s - r.batches_path_s)
    );
    println!(
        "  per node (mean): package installs {}, kubeadm upgrade {}, drain {}",
        f2(r.install_s),
        f2(r.kubeadm_s),
        f2(r.drain_s)
    );
    println!(
        "  = critical path {} s; configured latencies alone {} s",
        f2(r.critical_s),
        f2(r.configured_s)
    );
    println!(
        "wall {} s -> ratio wall/critical {} (wall/configured {}); setup before it {} s",
        f2(r.wall_s),
        f2(ratio(r.wall_s, r.critical_s)),
        f2(ratio(r.wall_s, r.configured_s)),
        s1(r.setup_s)
    );
    let cluster: Vec<String> = r
        .cluster_steps
        .iter()
        .map(|(s, t)| format!("{s} {}", f2(*t)))
        .collect();
    println!(
        "outside the nodes: before the first node step {} s, after the last {} s; cluster steps (s): {}",
        f2(r.before_nodes_s),
        f2(r.after_nodes_s),
        cluster.join(", ")
    );
    let phases: Vec<String> = r
        .phases
        .iter()
        .map(|(p, s)| format!("{p} {}", f2(*s)))
        .collect();
    println!("phases (s): {}", phases.join(", "));
    let steps: Vec<String> = r
        .steps
        .iter()
        .map(|(s, (cp, w, n))| format!("{s} cp-sum {} w-mean {} (n {n})", f2(*cp), f2(*w)))
        .collect();
    println!("steps: {}", steps.join("; "));
    println!(
        "longest drain of a batch / configured drain latency: {}",
        f2(r.drain_stretch_max)
    );
    println!(
        "CPU-s: kh agents {}, coordinator {}, doubles {}; machine {} ({}% busy)",
        f2(r.cpu.agents),
        f2(r.cpu.coordinator),
        f2(r.cpu.doubles),
        f2(r.cpu.machine),
        s1(r.busy_pct)
    );
}

fn print_tables(all: &[RunResult], failed: &[Shape], args: &UpgradeArgs) {
    println!("\n## Upgrade overhead (medians of runs, [min-max])\n");
    println!(
        "| shape | runs (ok/all) | wall s | critical path s | ratio | configured-only s | wall/configured | goal |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for shape in &args.shapes {
        let rs: Vec<&RunResult> = all.iter().filter(|r| r.shape == Some(*shape)).collect();
        let col = |f: &dyn Fn(&RunResult) -> f64| median_range(&rs, f);
        println!(
            "| {shape} | {}/{} | {} | {} | {} | {} | {} | ratio <= 1.10 |",
            rs.len(),
            rs.len() + failed.iter().filter(|f| *f == shape).count(),
            col(&|r| r.wall_s),
            col(&|r| r.critical_s),
            col(&|r| ratio(r.wall_s, r.critical_s)),
            col(&|r| r.configured_s),
            col(&|r| ratio(r.wall_s, r.configured_s)),
        );
    }
    println!("\n| shape | cp path | cp spans | cp gaps | batch paths | longest node spans | batch spans | batch gaps | before nodes | after nodes | longest drain / latency |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for shape in &args.shapes {
        let rs: Vec<&RunResult> = all.iter().filter(|r| r.shape == Some(*shape)).collect();
        let med = |f: &dyn Fn(&RunResult) -> f64| median_only(&rs, f);
        println!(
            "| {shape} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            med(&|r| r.cp_path_s),
            med(&|r| r.cp_span_s),
            med(&|r| r.cp_gaps_s),
            med(&|r| r.batches_path_s),
            med(&|r| r.batches_node_span_s),
            med(&|r| r.batches_span_s),
            med(&|r| r.batch_gaps_s),
            med(&|r| r.before_nodes_s),
            med(&|r| r.after_nodes_s),
            med(&|r| r.drain_stretch_max),
        );
    }
    println!("\n| shape | step: sum over control planes s / mean per worker s (medians) |");
    println!("|---|---|");
    for shape in &args.shapes {
        let rs: Vec<&RunResult> = all.iter().filter(|r| r.shape == Some(*shape)).collect();
        let Some(first) = rs.first() else { continue };
        let cols: Vec<String> = first
            .steps
            .keys()
            .map(|step| {
                let get = |i: usize| {
                    let v: Vec<f64> = rs
                        .iter()
                        .filter_map(|r| r.steps.get(step))
                        .map(|t| if i == 0 { t.0 } else { t.1 })
                        .collect();
                    summarize(&v).map(|s| s.median).unwrap_or(f64::NAN)
                };
                format!("{step} {}/{}", f2(get(0)), f2(get(1)))
            })
            .collect();
        println!("| {shape} | {} |", cols.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse_and_batch_the_workers_in_spec_order() {
        let s = Shape::parse("3x5m2").unwrap();
        assert_eq!(
            s,
            Shape {
                cps: 3,
                workers: 5,
                max_unavailable: 2
            }
        );
        assert_eq!(
            s.batches(),
            vec![
                vec!["w-1".to_string(), "w-2".into()],
                vec!["w-3".into(), "w-4".into()],
                vec!["w-5".into()]
            ]
        );
        assert!(Shape::parse("3x10").is_err());
        assert!(Shape::parse("3x10m0").is_err());
        assert!(Shape::parse("0x10m1").is_err());
    }
}
