//! What every section needs: built binaries, a world in a temp dir, an
//! admin client of its coordinator.

use std::time::Duration;

use anyhow::{bail, Context};
use kh::proto::admin_client::AdminClient;
use kh_testbed::world::{Layout, World};
use tonic::transport::Channel;

/// The binaries a benchmark starts; they must sit next to kh-bench.
const NEEDED: &[&str] = &[
    "kh-coordinator",
    "kh-agent",
    "khctl",
    "kh-testbed-double",
    "kh-testbed-kubelet",
    "kh-testbed-apiserver",
];

/// Fails with the fix when a binary is missing: `cargo run -p kh-bench`
/// builds only kh-bench.
pub fn require_binaries() -> anyhow::Result<()> {
    let dir = kh_testbed::bin_dir();
    let missing: Vec<&str> = NEEDED
        .iter()
        .copied()
        .filter(|b| !dir.join(b).exists())
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} not built in {}; build the workspace first with the same profile and target dir, e.g. `CARGO_TARGET_DIR=/work/target-bench cargo build --release --workspace`",
            missing.join(", "),
            dir.display()
        );
    }
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: kh-bench is a debug build; run it with --release for meaningful numbers"
        );
    }
    Ok(())
}

/// A world in its own temp dir, whose coordinator is not started yet. The
/// temp dir goes when this is dropped, after every process is killed.
pub struct Bench {
    pub world: World,
    _tmp: tempfile::TempDir,
}

impl Bench {
    pub fn new(coordinator_args: &[&str]) -> anyhow::Result<Bench> {
        let tmp = tempfile::Builder::new()
            .prefix("kh-bench-")
            .tempdir()
            .context("temp dir")?;
        let layout = Layout::for_test(tmp.path(), coordinator_args);
        Ok(Bench {
            world: World::with_layout(layout),
            _tmp: tmp,
        })
    }

    /// The coordinator's pid, once started.
    pub fn coordinator_pid(&self) -> anyhow::Result<u32> {
        self.world
            .coordinator
            .proc
            .as_ref()
            .and_then(|p| p.pid())
            .context("the coordinator is not running")
    }

    /// An admin client with the coordinator's admin.khconfig.
    pub fn admin(&self) -> anyhow::Result<AdminClient<Channel>> {
        let cfg = kh::khconfig::KhConfig::load(&self.world.coordinator.admin)?;
        let ch = kh::tls::channel(
            &cfg.coordinator,
            kh::tls::host_of(&cfg.coordinator),
            Some(&cfg.creds()),
            &cfg.ca,
        )?;
        Ok(AdminClient::new(ch).max_decoding_message_size(64 << 20))
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        // Every host's agent and kubelet group (with the static pods), then
        // the coordinator; then anything a killed group left behind (none
        // expected), found by the world dir on its command line.
        for a in &mut self.world.agents {
            a.power_off();
        }
        self.world.coordinator.kill9();
        let dir = self.world.dir().display().to_string();
        let leftovers = kh_testbed::proc::processes_naming(&dir);
        for (_, pgid) in &leftovers {
            kh_testbed::proc::kill_group(*pgid, "KILL");
        }
        if !leftovers.is_empty() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Seconds with one decimal, for tables.
pub fn s1(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else {
        format!("{x:.1}")
    }
}

/// Two decimals.
pub fn f2(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else {
        format!("{x:.2}")
    }
}
