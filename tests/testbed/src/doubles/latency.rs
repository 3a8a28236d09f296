//! A fixed, configurable latency for the kubeadm double's long operations,
//! for benchmarks (see CONTRACT.md, "kubeadm latency").
//!
//! Real `kubeadm init` and `kubeadm join` spend seconds pulling images and
//! waiting for the kubelet; the double finishes its own work in a fraction of
//! that. A benchmark that wants to compare kh's orchestration against a known
//! critical path writes `<world>/kubeadm-latency` (lines `init=3000`,
//! `join-control-plane=2000`, `join-worker=1000`, milliseconds); each
//! operation then sleeps that long before it does its work, as kubeadm's
//! preflight, image pulls and kubelet start come before its etcd and API
//! calls. Without the file nothing sleeps, so tests are unaffected.
//!
//! Each timed operation also appends one JSON line to
//! `<node>/kubeadm-timings.log` (start, end, latency, and the time spent
//! waiting for etcd to accept a member add), so a benchmark can separate the
//! configured latency, the double's own work and etcd's settling time.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::kube::NodeEnv;

/// The latency file's name inside the world dir.
pub const LATENCY_FILE: &str = "kubeadm-latency";
/// The timings log's name inside a node dir.
pub const TIMINGS_FILE: &str = "kubeadm-timings.log";

/// The operations that can be given a latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Init,
    JoinControlPlane,
    JoinWorker,
    /// `apt-get install` / `dnf install` that changes a package (download
    /// and unpack).
    PackageInstall,
    /// `kubectl drain`, once per call (pods terminating).
    Drain,
    /// `kubeadm upgrade apply` (image pulls, static pod restarts).
    UpgradeApply,
    /// `kubeadm upgrade node`, on a control plane or a worker.
    UpgradeNode,
}

impl Op {
    pub fn key(self) -> &'static str {
        match self {
            Op::Init => "init",
            Op::JoinControlPlane => "join-control-plane",
            Op::JoinWorker => "join-worker",
            Op::PackageInstall => "package-install",
            Op::Drain => "drain",
            Op::UpgradeApply => "upgrade-apply",
            Op::UpgradeNode => "upgrade-node",
        }
    }
}

/// Time spent waiting for etcd to accept a member add, in this process.
static ETCD_SETTLE_MS: AtomicU64 = AtomicU64::new(0);

/// The configured latency of `op` in `world_dir` (zero without the file).
pub fn configured(world_dir: Option<&Path>, op: Op) -> Duration {
    let Some(text) = world_dir.and_then(|d| std::fs::read_to_string(d.join(LATENCY_FILE)).ok())
    else {
        return Duration::ZERO;
    };
    parse(&text, op)
}

fn parse(text: &str, op: Op) -> Duration {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == op.key())
        .and_then(|(_, v)| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::ZERO)
}

/// Writes the latency file for a world.
pub fn write(world_dir: &Path, init: Duration, join_cp: Duration, join_worker: Duration) {
    let text = format!(
        "# kubeadm double latency in milliseconds (see tests/testbed/CONTRACT.md)\ninit={}\njoin-control-plane={}\njoin-worker={}\n",
        init.as_millis(),
        join_cp.as_millis(),
        join_worker.as_millis()
    );
    std::fs::write(world_dir.join(LATENCY_FILE), text).expect("write the kubeadm latency file");
}

/// Sets (or replaces) the latency of one operation in a world's latency
/// file, keeping the others.
pub fn set(world_dir: &Path, op: Op, d: Duration) {
    let path = world_dir.join(LATENCY_FILE);
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let mut text: String = old
        .lines()
        .filter(|l| {
            l.split('#')
                .next()
                .unwrap_or_default()
                .split_once('=')
                .map(|(k, _)| k.trim())
                != Some(op.key())
        })
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&format!("{}={}\n", op.key(), d.as_millis()));
    std::fs::write(path, text).expect("write the kubeadm latency file");
}

/// Records that a member add waited `d` for etcd to call the cluster healthy.
pub fn note_etcd_settle(d: Duration) {
    ETCD_SETTLE_MS.fetch_add(d.as_millis() as u64, Ordering::Relaxed);
}

/// A timed operation: sleeps the configured latency now, and logs the
/// operation's timings when dropped (on success and on failure alike).
pub struct Timed {
    op: Op,
    node_dir: std::path::PathBuf,
    start_ms: u64,
    latency: Duration,
}

/// Starts a timed operation.
pub fn begin(env: &NodeEnv, op: Op) -> Timed {
    let start_ms = now_ms();
    let latency = configured(env.world_dir.as_deref(), op);
    if !latency.is_zero() {
        std::thread::sleep(latency);
    }
    Timed {
        op,
        node_dir: env.node_dir.clone(),
        start_ms,
        latency,
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        let line = serde_json::json!({
            "op": self.op.key(),
            "startMs": self.start_ms,
            "endMs": now_ms(),
            "latencyMs": self.latency.as_millis() as u64,
            "etcdSettleMs": ETCD_SETTLE_MS.load(Ordering::Relaxed),
        });
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.node_dir.join(TIMINGS_FILE))
        {
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_operation_and_defaults_to_zero() {
        let text = "# comment\ninit=3000\njoin-control-plane = 2000 # two seconds\n";
        assert_eq!(parse(text, Op::Init), Duration::from_secs(3));
        assert_eq!(parse(text, Op::JoinControlPlane), Duration::from_secs(2));
        assert_eq!(parse(text, Op::JoinWorker), Duration::ZERO);
        assert_eq!(configured(None, Op::Init), Duration::ZERO);
    }

    #[test]
    fn set_replaces_one_operation_and_keeps_the_others() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            Duration::from_secs(3),
            Duration::from_secs(2),
            Duration::ZERO,
        );
        set(dir.path(), Op::Drain, Duration::from_millis(700));
        set(dir.path(), Op::Drain, Duration::from_millis(800));
        set(dir.path(), Op::PackageInstall, Duration::from_millis(300));
        set(dir.path(), Op::UpgradeNode, Duration::from_millis(400));
        let d = Some(dir.path());
        assert_eq!(configured(d, Op::Init), Duration::from_secs(3));
        assert_eq!(configured(d, Op::Drain), Duration::from_millis(800));
        assert_eq!(
            configured(d, Op::PackageInstall),
            Duration::from_millis(300)
        );
        assert_eq!(configured(d, Op::UpgradeNode), Duration::from_millis(400));
        assert_eq!(configured(d, Op::UpgradeApply), Duration::ZERO);
    }
}
