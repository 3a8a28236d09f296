//! Coordinator scale: thousands of simulated agents against the real
//! kh-coordinator process.
//!
//! Each simulated agent is a tokio task with its own key (generated here, as
//! the agent does), its own single-use token from the admin API, its own
//! certificate from the Enrollment RPC, and its own mTLS connection on which
//! it sends real heartbeats (with facts, as the agent sends them) at the
//! coordinator's interval. Only the CA pin step of `kh-agent enroll` is
//! skipped: the bench already trusts the CA from admin.khconfig.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::stream::{self, StreamExt};
use kh::proto::enrollment_client::EnrollmentClient;
use kh::proto::node_client::NodeClient;
use kh::proto::{CreateTokenRequest, EnrollRequest, Facts, HeartbeatRequest, ListNodesRequest};
use kh::secret::Secret;
use kh::tls::ClientCreds;

use crate::common::{f2, s1, Bench};
use crate::stats::{percentile, sorted, summarize};
use crate::sys;

#[derive(Debug, Clone)]
pub struct ScaleArgs {
    pub agents: Vec<usize>,
    pub seconds: u64,
    pub interval: Duration,
    pub burst: usize,
    pub runs: usize,
}

/// One run's figures.
#[derive(Debug, Clone, Default)]
struct RunResult {
    agents: usize,
    tokens_per_s: f64,
    burst: usize,
    burst_csr_per_s: f64,
    burst_p50_ms: f64,
    burst_p99_ms: f64,
    rest_csr_per_s: f64,
    enroll_errors: usize,
    first_p50_ms: f64,
    first_p99_ms: f64,
    beats: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    errors: usize,
    first_errors: usize,
    ready: usize,
    rss_mib: f64,
    hwm_mib: f64,
    rss_enrolled_mib: f64,
    rss_hold_start_mib: f64,
    cpu_pct: f64,
    fds: usize,
    threads: u64,
    bench_cpu_pct: f64,
    machine_busy_pct: f64,
    hold_s: f64,
}

/// A simulated agent's credentials.
struct Sim {
    name: String,
    key: Secret<String>,
    csr: String,
    token: String,
    cert: Option<String>,
}

/// One heartbeat as the agent saw it.
#[derive(Debug, Clone, Copy)]
struct Beat {
    /// When it was sent, relative to the start of the heartbeat phase.
    sent: Duration,
    latency: Duration,
    ok: bool,
    first: bool,
}

pub fn run(args: &ScaleArgs) -> anyhow::Result<()> {
    crate::common::require_binaries()?;
    let need = args.agents.iter().max().copied().unwrap_or(0) as u64 + 2000;
    match sys::nofile_limit() {
        Some(n) if n < need => bail!(
            "RLIMIT_NOFILE is {n}, below the {need} file descriptors {} agents need in this process and in the coordinator; raise it first (`ulimit -n 20000`, see bench/run-scale.sh)",
            args.agents.iter().max().unwrap_or(&0)
        ),
        _ => {}
    }
    println!("machine: {}", sys::describe_machine());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut all: Vec<RunResult> = vec![];
    for &n in &args.agents {
        for r in 0..args.runs {
            println!(
                "\n== scale: {n} agents, run {}/{} (heartbeat every {}, hold {} s) ==",
                r + 1,
                args.runs,
                humantime::format_duration(args.interval),
                args.seconds
            );
            let res = rt.block_on(one_run(n, args))?;
            print_run(&res);
            all.push(res);
        }
    }
    print_table(&all, args);
    Ok(())
}

fn facts_for(i: usize) -> Facts {
    // What a real agent reports, with the per-host values unique, as the
    // registry checks product_uuid and MAC addresses for duplicates.
    Facts {
        hostname: format!("sim-{i}"),
        addresses: vec![format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255)],
        os: "Debian GNU/Linux 12 (bookworm)".into(),
        kernel: "6.1.0-26-amd64".into(),
        arch: "x86_64".into(),
        product_uuid: format!("4c4c4544-0000-1000-8000-{i:012x}"),
        mac_addresses: vec![format!(
            "02:00:00:{:02x}:{:02x}:{:02x}",
            i >> 16 & 255,
            i >> 8 & 255,
            i & 255
        )],
        swap_active: false,
        cgroup_version: 2,
        containerd_version: "1.7.24".into(),
        kubeadm_version: "v1.32.0".into(),
        kubelet_version: "v1.32.0".into(),
        cpu_count: 4,
        memory_bytes: 8 << 30,
        kubectl_version: "v1.32.0".into(),
        package_manager: "apt".into(),
    }
}

async fn one_run(n: usize, args: &ScaleArgs) -> anyhow::Result<RunResult> {
    let interval = format!("{}ms", args.interval.as_millis());
    let mut bench = Bench::new(&["--heartbeat-interval", &interval])?;
    bench.world.coordinator.start();
    let pid = bench.coordinator_pid()?;
    let cfg = kh::khconfig::KhConfig::load(&bench.world.coordinator.admin)?;
    let addr = cfg.coordinator.clone();
    let ca = cfg.ca.clone();
    let mut admin = bench.admin()?;
    let mut res = RunResult {
        agents: n,
        ..Default::default()
    };

    // Keys and CSRs first: that work is the agents', on their own hosts.
    let t = Instant::now();
    let mut sims: Vec<Sim> = (0..n)
        .map(|i| -> anyhow::Result<Sim> {
            let name = format!("sim-{i:05}");
            let key = kh::pki::generate_key()?;
            let csr = kh::pki::csr_pem(&key, &format!("node/{name}"))?;
            Ok(Sim {
                name,
                key,
                csr,
                token: String::new(),
                cert: None,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    println!(
        "generated {n} keys and CSRs in {:.1} s (client side)",
        t.elapsed().as_secs_f64()
    );

    // Tokens through the admin API, as `khctl token create` makes them.
    let t = Instant::now();
    for s in sims.iter_mut() {
        let resp = admin
            .create_token(CreateTokenRequest {
                node_name: s.name.clone(),
                ttl_seconds: 3600,
                force: false,
            })
            .await
            .with_context(|| format!("token for {}", s.name))?
            .into_inner();
        s.token = resp.token;
    }
    let tok_s = t.elapsed().as_secs_f64();
    res.tokens_per_s = n as f64 / tok_s;
    println!(
        "created {n} tokens in {tok_s:.1} s ({:.0}/s, one at a time)",
        res.tokens_per_s
    );

    // Enrollment: a burst of `burst` agents at once, then the rest 64 at a time.
    let burst = args.burst.min(n);
    res.burst = burst;
    let enroll_one = |i: usize, token: String, name: String, csr: String| {
        let addr = addr.clone();
        let ca = ca.clone();
        async move {
            let t = Instant::now();
            let r = async {
                let ch = kh::tls::channel(&addr, kh::tls::host_of(&addr), None, &ca)?;
                let resp = EnrollmentClient::new(ch)
                    .enroll(EnrollRequest {
                        token,
                        node_name: name,
                        csr_pem: csr,
                    })
                    .await?
                    .into_inner();
                anyhow::Ok(resp.certificate_pem)
            }
            .await;
            (i, r, t.elapsed())
        }
    };
    let jobs = |range: std::ops::Range<usize>, sims: &[Sim]| -> Vec<_> {
        range
            .map(|i| {
                enroll_one(
                    i,
                    sims[i].token.clone(),
                    sims[i].name.clone(),
                    sims[i].csr.clone(),
                )
            })
            .collect()
    };
    let t = Instant::now();
    let burst_out = futures::future::join_all(jobs(0..burst, &sims)).await;
    let burst_s = t.elapsed().as_secs_f64();
    let mut lat = vec![];
    for (i, r, d) in burst_out {
        match r {
            Ok(cert) => {
                sims[i].cert = Some(cert);
                lat.push(d.as_secs_f64() * 1000.0);
            }
            Err(e) => {
                res.enroll_errors += 1;
                eprintln!("enroll {}: {e:#}", sims[i].name);
            }
        }
    }
    let lat = sorted(&lat);
    res.burst_csr_per_s = lat.len() as f64 / burst_s;
    res.burst_p50_ms = percentile(&lat, 50.0).unwrap_or(f64::NAN);
    res.burst_p99_ms = percentile(&lat, 99.0).unwrap_or(f64::NAN);
    println!(
        "enrolled {burst} agents at once in {burst_s:.2} s: {:.0} CSRs signed/s; latency p50 {:.0} ms, p99 {:.0} ms",
        res.burst_csr_per_s, res.burst_p50_ms, res.burst_p99_ms
    );
    if n > burst {
        let t = Instant::now();
        let rest: Vec<_> = stream::iter(jobs(burst..n, &sims))
            .buffer_unordered(64)
            .collect()
            .await;
        let rest_s = t.elapsed().as_secs_f64();
        let mut ok = 0;
        for (i, r, _) in rest {
            match r {
                Ok(cert) => {
                    sims[i].cert = Some(cert);
                    ok += 1;
                }
                Err(e) => {
                    res.enroll_errors += 1;
                    eprintln!("enroll {}: {e:#}", sims[i].name);
                }
            }
        }
        res.rest_csr_per_s = ok as f64 / rest_s;
        println!(
            "enrolled the other {} agents, 64 at a time, in {rest_s:.1} s ({:.0}/s)",
            n - burst,
            res.rest_csr_per_s
        );
    }
    if res.enroll_errors > 0 {
        bail!("{} enrollments failed", res.enroll_errors);
    }

    // Memory with every agent enrolled and no agent connected yet.
    tokio::time::sleep(Duration::from_secs(1)).await;
    res.rss_enrolled_mib = sys::mem(pid)
        .map(|m| m.rss_kib as f64 / 1024.0)
        .unwrap_or(f64::NAN);

    // Heartbeats: each agent starts at a random-looking offset within one
    // interval (as a fleet does), beats until the deadline, and records every
    // beat. The hold window opens once every agent has beaten once.
    let warmup = args.interval + Duration::from_secs(3);
    let hold = Duration::from_secs(args.seconds);
    let origin = Instant::now();
    let deadline = warmup + hold;
    let mut tasks = Vec::with_capacity(n);
    for (i, s) in sims.iter().enumerate() {
        let creds = ClientCreds {
            ca_pem: ca.clone(),
            cert_pem: s.cert.clone().expect("enrolled"),
            key_pem: s.key.clone(),
        };
        let ch = kh::tls::channel(&addr, kh::tls::host_of(&addr), Some(&creds), &ca)?;
        let offset = args.interval.mul_f64(spread(i));
        let endpoint = format!("127.1.{}.{}:7444", i / 250, i % 250 + 1);
        let facts = facts_for(i);
        let interval = args.interval;
        tasks.push(tokio::spawn(async move {
            let mut client = NodeClient::new(ch);
            let mut beats = Vec::with_capacity(16);
            tokio::time::sleep_until((origin + offset).into()).await;
            let mut first = true;
            while origin.elapsed() < deadline {
                let mut req = tonic::Request::new(HeartbeatRequest {
                    facts: Some(facts.clone()),
                    endpoint: endpoint.clone(),
                    agent_version: kh::VERSION.to_string(),
                });
                req.set_timeout(Duration::from_secs(10));
                let sent = origin.elapsed();
                let t = Instant::now();
                let r = client.heartbeat(req).await;
                let latency = t.elapsed();
                let (ok, next) = match r {
                    Ok(resp) => (
                        true,
                        Duration::from_millis(resp.into_inner().interval_ms.max(100)),
                    ),
                    Err(_) => (false, interval.min(Duration::from_secs(5))),
                };
                beats.push(Beat {
                    sent,
                    latency,
                    ok,
                    first,
                });
                first = false;
                // As the agent: the next beat one interval after the answer.
                tokio::time::sleep(next).await;
            }
            beats
        }));
    }
    tokio::time::sleep_until((origin + warmup).into()).await;
    let cpu = sys::CpuMeter::start(pid).context("coordinator CPU")?;
    res.rss_hold_start_mib = sys::mem(pid)
        .map(|m| m.rss_kib as f64 / 1024.0)
        .unwrap_or(f64::NAN);
    let me = sys::CpuMeter::start(std::process::id()).context("own CPU")?;
    let machine0 = sys::machine_jiffies();
    println!(
        "holding {n} agents for {} s (started {:.1} s ago) ...",
        args.seconds,
        origin.elapsed().as_secs_f64()
    );
    // RSS every 10 s of the hold: does it level off or keep growing?
    let mut timeline = vec![];
    let mut next = origin + warmup;
    loop {
        let rss = sys::mem(pid)
            .map(|m| m.rss_kib as f64 / 1024.0)
            .unwrap_or(f64::NAN);
        timeline.push(format!("{:.0}", rss));
        next += Duration::from_secs(10);
        if next > origin + deadline {
            break;
        }
        tokio::time::sleep_until(next.into()).await;
    }
    tokio::time::sleep_until((origin + deadline).into()).await;
    println!(
        "coordinator VmRSS every 10 s of the hold (MiB): {}",
        timeline.join(" ")
    );
    let (cpu_s, wall_s) = cpu.read().context("coordinator CPU")?;
    let (my_cpu_s, _) = me.read().context("own CPU")?;
    let mem = sys::mem(pid).context("coordinator memory")?;
    res.fds = sys::open_fds(pid).unwrap_or(0);
    res.threads = sys::threads(pid).unwrap_or(0);
    if let (Some((b0, t0)), Some((b1, t1))) = (machine0, sys::machine_jiffies()) {
        res.machine_busy_pct = 100.0 * (b1 - b0) as f64 / (t1 - t0).max(1) as f64;
    }
    res.cpu_pct = 100.0 * cpu_s / wall_s;
    res.bench_cpu_pct = 100.0 * my_cpu_s / wall_s;
    res.hold_s = wall_s;
    res.rss_mib = mem.rss_kib as f64 / 1024.0;
    res.hwm_mib = mem.hwm_kib as f64 / 1024.0;

    // Every agent is Ready in the coordinator's own view.
    let nodes = admin
        .list_nodes(ListNodesRequest::default())
        .await?
        .into_inner();
    res.ready = nodes.nodes.iter().filter(|n| n.health == "Ready").count();

    let mut beats = vec![];
    for t in tasks {
        beats.extend(t.await?);
    }
    let (firsts, rest): (Vec<Beat>, Vec<Beat>) = beats.into_iter().partition(|b| b.first);
    res.first_errors = firsts.iter().filter(|b| !b.ok).count();
    let first_lat = sorted(
        &firsts
            .iter()
            .filter(|b| b.ok)
            .map(|b| b.latency.as_secs_f64() * 1000.0)
            .collect::<Vec<_>>(),
    );
    res.first_p50_ms = percentile(&first_lat, 50.0).unwrap_or(f64::NAN);
    res.first_p99_ms = percentile(&first_lat, 99.0).unwrap_or(f64::NAN);
    let window: Vec<&Beat> = rest.iter().filter(|b| b.sent >= warmup).collect();
    res.errors = window.iter().filter(|b| !b.ok).count();
    let lat = sorted(
        &window
            .iter()
            .filter(|b| b.ok)
            .map(|b| b.latency.as_secs_f64() * 1000.0)
            .collect::<Vec<_>>(),
    );
    res.beats = window.len();
    res.p50_ms = percentile(&lat, 50.0).unwrap_or(f64::NAN);
    res.p99_ms = percentile(&lat, 99.0).unwrap_or(f64::NAN);
    res.max_ms = lat.last().copied().unwrap_or(f64::NAN);
    drop(admin);
    drop(bench);
    Ok(res)
}

/// A fixed, well-spread fraction in [0, 1) for agent `i` (golden ratio
/// sequence), so start times look random but runs are repeatable.
fn spread(i: usize) -> f64 {
    (i as f64 * 0.618_033_988_749_895).fract()
}

fn print_run(r: &RunResult) {
    println!(
        "heartbeats in the window: {} ({} errors), latency p50 {} ms, p99 {} ms, max {} ms",
        r.beats,
        r.errors,
        f2(r.p50_ms),
        f2(r.p99_ms),
        f2(r.max_ms)
    );
    println!(
        "first heartbeat per agent (TLS handshake + RPC): p50 {} ms, p99 {} ms, {} errors",
        f2(r.first_p50_ms),
        f2(r.first_p99_ms),
        r.first_errors
    );
    println!(
        "coordinator over {} s: CPU {}% of one core, VmRSS {} MiB (after enrollment, before any heartbeat: {} MiB; at the start of the hold: {} MiB), VmHWM {} MiB, {} fds, {} threads; {} of {} nodes Ready",
        s1(r.hold_s),
        s1(r.cpu_pct),
        s1(r.rss_mib),
        s1(r.rss_enrolled_mib),
        s1(r.rss_hold_start_mib),
        s1(r.hwm_mib),
        r.fds,
        r.threads,
        r.ready,
        r.agents
    );
    println!(
        "context: kh-bench itself {}% of one core; whole machine {}% busy",
        s1(r.bench_cpu_pct),
        s1(r.machine_busy_pct)
    );
}

fn print_table(all: &[RunResult], args: &ScaleArgs) {
    println!(
        "\n## Coordinator scale (heartbeat every {}, hold {} s; medians of runs, [min-max])\n",
        humantime::format_duration(args.interval),
        args.seconds
    );
    println!("| agents | runs | hb p50 ms | hb p99 ms | hb max ms | errors | RSS MiB | HWM MiB | CPU % core | enroll CSR/s (burst) | tokens/s | goal |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &n in &args.agents {
        let rs: Vec<&RunResult> = all.iter().filter(|r| r.agents == n).collect();
        let col = |f: &dyn Fn(&RunResult) -> f64, fmt: &dyn Fn(f64) -> String| {
            let v: Vec<f64> = rs.iter().map(|r| f(r)).collect();
            summarize(&v)
                .map(|s| format!("{} [{}-{}]", fmt(s.median), fmt(s.min), fmt(s.max)))
                .unwrap_or_else(|| "-".into())
        };
        let errors: usize = rs.iter().map(|r| r.errors + r.first_errors).sum();
        println!(
            "| {n} | {} | {} | {} | {} | {errors} | {} | {} | {} | {} ({} at once) | {} | p99 < 50 ms, 0 errors, RSS < 256 MB |",
            rs.len(),
            col(&|r| r.p50_ms, &f2),
            col(&|r| r.p99_ms, &f2),
            col(&|r| r.max_ms, &f2),
            col(&|r| r.rss_mib, &s1),
            col(&|r| r.hwm_mib, &s1),
            col(&|r| r.cpu_pct, &s1),
            col(&|r| r.burst_csr_per_s, &|x| format!("{x:.0}")),
            rs.first().map(|r| r.burst).unwrap_or(0),
            col(&|r| r.tokens_per_s, &|x| format!("{x:.0}")),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_offsets_are_spread_over_the_interval() {
        let n = 1000;
        let mut buckets = [0usize; 10];
        for i in 0..n {
            let f = spread(i);
            assert!((0.0..1.0).contains(&f));
            buckets[(f * 10.0) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&b| (90..=110).contains(&b)),
            "{buckets:?}"
        );
    }
}
