//! etcd snapshot overhead: kh's `khctl etcd snapshot save` (the agent's
//! `etcdctl snapshot save` + `snapshot status`, the stream to the
//! coordinator, sealing and storing) against `etcdctl snapshot save` alone
//! on the same member, one run each, on a one-control-plane testbed cluster
//! whose etcd holds about `--mib` MiB. The coordinator's RSS is sampled
//! every 10 ms during kh's run; its growth over the value before the run is
//! what the stream costs in memory.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kh_testbed::spec::{cluster_yaml, SpecNode};

use crate::common::{f2, s1, Bench};
use crate::sys;

pub struct SnapshotArgs {
    /// Approximate size of the etcd database to snapshot, in MiB.
    pub mib: usize,
}

pub fn run(args: &SnapshotArgs) -> anyhow::Result<()> {
    crate::common::require_binaries()?;
    let mut b = Bench::new(&["--heartbeat-interval", "2s"])?;
    b.world.coordinator.start();
    b.world.coordinator.wait_listening();
    let idx = b.world.add_kube_node("cp-1");
    let nodes = vec![SpecNode {
        name: "cp-1".into(),
        role: "control-plane".into(),
        ip: b.world.agents[idx].ip.to_string(),
    }];
    let spec = kh_testbed::spec::write(
        b.world.dir(),
        "cluster.yaml",
        &cluster_yaml("bench", &nodes, ""),
    )?;
    let out = b.world.khctl(&["rollout", "-f", spec.to_str().unwrap()]);
    if !out.ok() {
        bail!("rollout failed:\n{}\n{}", out.stdout, out.stderr);
    }

    // Fill etcd: 1 MiB values (etcd's default request limit is 1.5 MiB),
    // each distinct so compression or deduplication cannot shrink them.
    let value_file = b.world.dir().join("value.bin");
    let t = Instant::now();
    for i in 0..args.mib {
        let value: Vec<u8> = (0..(1usize << 20))
            .map(|j| b'a' + ((j * 7 + i * 13 + j / 977) % 26) as u8)
            .collect();
        std::fs::write(&value_file, &value)?;
        let mut cmd = std::process::Command::new("etcdctl");
        let cp = &b.world.agents[idx];
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", cp.etcd_endpoint()))
            .arg("--cacert")
            .arg(cp.path("/etc/kubernetes/pki/etcd/ca.crt"))
            .arg("--cert")
            .arg(cp.path("/etc/kubernetes/pki/etcd/healthcheck-client.crt"))
            .arg("--key")
            .arg(cp.path("/etc/kubernetes/pki/etcd/healthcheck-client.key"))
            .args(["put", &format!("/bench/{i:05}")])
            .stdin(std::fs::File::open(&value_file)?);
        let out = kh_testbed::world::run(cmd);
        if !out.ok() {
            bail!("etcdctl put: {}", out.stderr);
        }
    }
    eprintln!(
        "filled etcd with {} MiB in {:.1}s",
        args.mib,
        t.elapsed().as_secs_f64()
    );

    // etcdctl alone, on the same member with the same client certificate.
    let alone = b.world.dir().join("alone.db");
    let t = Instant::now();
    b.world.agents[idx]
        .etcdctl(&[], &["snapshot", "save", alone.to_str().unwrap()])
        .expect_ok("etcdctl snapshot save");
    let alone_s = t.elapsed().as_secs_f64();
    let size = std::fs::metadata(&alone)?.len();
    // What kh adds after the save: etcdctl reading the whole file back.
    let t = Instant::now();
    b.world.agents[idx]
        .etcdctl(
            &[],
            &["snapshot", "status", "-w", "json", alone.to_str().unwrap()],
        )
        .expect_ok("etcdctl snapshot status");
    let status_s = t.elapsed().as_secs_f64();
    std::fs::remove_file(&alone)?;

    // kh: save, stream, seal, store, with the coordinator's RSS sampled.
    let pid = b.coordinator_pid()?;
    let before = sys::mem(pid).context("coordinator memory")?.rss_kib;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut max = 0;
            while !stop.load(Ordering::Relaxed) {
                if let Some(m) = sys::mem(pid) {
                    max = max.max(m.rss_kib);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            max
        })
    };
    let agent_pid = b.world.agents[idx]
        .proc
        .as_ref()
        .and_then(|p| p.pid())
        .context("the agent is not running")?;
    let cpu = |pid| sys::cpu_ticks(pid).unwrap_or(0);
    let (coord_cpu, agent_cpu) = (cpu(pid), cpu(agent_pid));
    let t = Instant::now();
    let out = b.world.khctl(&["etcd", "snapshot", "save", "-o", "json"]);
    let kh_s = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap_or(0);
    if !out.ok() {
        bail!(
            "khctl etcd snapshot save failed:\n{}\n{}",
            out.stdout,
            out.stderr
        );
    }
    let meta: serde_json::Value = serde_json::from_str(&out.stdout)?;
    let growth_mib = peak.saturating_sub(before) as f64 / 1024.0;
    let secs = |ticks: u64| ticks as f64 / sys::clk_tck();
    let coord_cpu_s = secs(cpu(pid).saturating_sub(coord_cpu));
    let agent_cpu_s = secs(cpu(agent_pid).saturating_sub(agent_cpu));

    println!(
        "## etcd snapshot of a {:.0} MiB database (one run each)\n",
        size as f64 / f64::from(1 << 20)
    );
    println!("| | seconds |");
    println!("|---|---|");
    println!("| `etcdctl snapshot save` alone | {} |", s1(alone_s));
    println!(
        "| `khctl etcd snapshot save` (save + status + stream + seal + store) | {} |",
        s1(kh_s)
    );
    println!("| ratio (goal <= 1.3) | {} |", f2(kh_s / alone_s));
    println!(
        "| for reference: `etcdctl snapshot status` of the file alone | {} |",
        s1(status_s)
    );
    println!();
    println!(
        "coordinator RSS: {:.1} MiB before, {:.1} MiB peak during the stream: growth {:.1} MiB (goal < 32 MiB)",
        before as f64 / 1024.0,
        peak as f64 / 1024.0,
        growth_mib
    );
    println!(
        "stored: {} bytes, revision {}, {} keys",
        meta["size"], meta["revision"], meta["totalKeys"]
    );
    println!(
        "CPU during kh's run: coordinator {:.2} s, agent {:.2} s (etcd and etcdctl besides)",
        coord_cpu_s, agent_cpu_s
    );
    let log = b.world.coordinator.log_text();
    for line in log.lines().filter(|l| l.contains("etcd snapshot sealed")) {
        println!("coordinator: {line}");
    }
    Ok(())
}
