//! kh-bench: benchmarks of kh, run by hand and never by `cargo test`.
//!
//! It owns five measurements (docs/BENCHMARKS.md has the method and the
//! numbers): `rollout` (wall time of a real rollout on the testbed against
//! its critical path), `upgrade` (the same for `khctl upgrade`), `scale` (thousands of simulated agents enrolling and
//! heartbeating against the real kh-coordinator process), `agent` (an
//! idle kh-agent's footprint and the time to prepare one host) and
//! `snapshot` (kh's etcd snapshot against `etcdctl snapshot save` alone). It starts the
//! real binaries built next to it, keeps all traffic on 127.0.0.0/8, stops
//! every process it started, and changes nothing in the product.

#![forbid(unsafe_code)]

mod agent;
mod common;
mod rollout;
mod scale;
mod snapshot;
mod stats;
mod sys;
mod upgrade;

use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kh-bench",
    about = "Benchmarks of kh: rollout and upgrade overhead, coordinator scale, agent footprint. Build the workspace first: `CARGO_TARGET_DIR=/work/target-bench cargo build --release --workspace`.",
    after_help = "See docs/BENCHMARKS.md for the method and the recorded numbers."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Rollout wall time against its critical path, on the testbed.
    Rollout {
        /// Runs per shape.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Shapes, CPSxWORKERS[cCONCURRENCY], comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "3x10,3x50,5x100c100,5x1c100"
        )]
        shapes: Vec<String>,
        /// kubeadm init latency.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        init: Duration,
        /// kubeadm join --control-plane latency.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        join_cp: Duration,
        /// kubeadm join (worker) latency.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        join_worker: Duration,
        /// The coordinator's heartbeat interval (production: 10s).
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        heartbeat_interval: Duration,
    },
    /// Upgrade (v1.31.4 to v1.32.4) wall time against its critical path,
    /// on the testbed.
    Upgrade {
        /// Runs per shape.
        #[arg(long, default_value_t = 2)]
        runs: usize,
        /// Shapes, CPSxWORKERSmMAXUNAVAILABLE, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "3x10m1,3x10m5,5x50m1,5x50m10"
        )]
        shapes: Vec<String>,
        /// Latency of a package install that changes something (apt-get
        /// install / dnf install).
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        install: Duration,
        /// Latency of `kubeadm upgrade apply`.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        apply: Duration,
        /// Latency of `kubeadm upgrade node`.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        node: Duration,
        /// Latency of `kubectl drain`.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        drain: Duration,
        /// The coordinator's heartbeat interval (production: 10s).
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        heartbeat_interval: Duration,
    },
    /// Simulated agents against the real coordinator process.
    Scale {
        /// Agent counts, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1000,2000,5000")]
        agents: Vec<usize>,
        /// How long to hold every agent after all have connected.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Heartbeat interval (production: 10s).
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Agents enrolling at once for the enrollment throughput figure.
        #[arg(long, default_value_t = 500)]
        burst: usize,
        /// Runs per agent count.
        #[arg(long, default_value_t = 1)]
        runs: usize,
    },
    /// An idle agent's footprint, the binary size, and preparing one host.
    Agent {
        /// How long to watch the idle agent.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// The coordinator's heartbeat interval (production: 10s).
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        heartbeat_interval: Duration,
        /// Fresh hosts to prepare (each: all Changed, then all Unchanged).
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// kh's etcd snapshot (save, stream, seal, store) against `etcdctl
    /// snapshot save` alone, and the coordinator's RSS growth meanwhile.
    Snapshot {
        /// Size of the etcd database to snapshot, in MiB.
        #[arg(long, default_value_t = 200)]
        mib: usize,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Rollout {
            runs,
            shapes,
            init,
            join_cp,
            join_worker,
            heartbeat_interval,
        } => rollout::run(&rollout::RolloutArgs {
            shapes: shapes
                .iter()
                .map(|s| rollout::Shape::parse(s))
                .collect::<anyhow::Result<_>>()?,
            runs,
            init,
            join_cp,
            join_worker,
            interval: heartbeat_interval,
        }),
        Command::Upgrade {
            runs,
            shapes,
            install,
            apply,
            node,
            drain,
            heartbeat_interval,
        } => upgrade::run(&upgrade::UpgradeArgs {
            shapes: shapes
                .iter()
                .map(|s| upgrade::Shape::parse(s))
                .collect::<anyhow::Result<_>>()?,
            runs,
            install,
            apply,
            node,
            drain,
            interval: heartbeat_interval,
        }),
        Command::Scale {
            agents,
            seconds,
            interval,
            burst,
            runs,
        } => scale::run(&scale::ScaleArgs {
            agents,
            seconds,
            interval,
            burst,
            runs,
        }),
        Command::Agent {
            seconds,
            heartbeat_interval,
            runs,
        } => agent::run(&agent::AgentArgs {
            seconds,
            interval: heartbeat_interval,
            runs,
        }),
        Command::Snapshot { mib } => snapshot::run(&snapshot::SnapshotArgs { mib }),
    }
}
