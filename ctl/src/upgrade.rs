//! `khctl upgrade -f cluster.yaml [--dry-run] [--through] [--drain-timeout
//! 5m] [--skip-drain] [--no-snapshot]` and `khctl upgrade status
//! [--follow]`: the coordinator's upgrade operation, followed like a
//! rollout.

use std::path::PathBuf;
use std::time::Duration;

use kh::proto::admin_client::AdminClient;
use kh::proto::UpgradeRequest;
use tonic::transport::Channel;

use crate::{explain, help, usage, Format};

/// The longest `--drain-timeout` taken: a day.
const MAX_DRAIN_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

#[derive(clap::Args)]
pub struct UpgradeArgs {
    #[command(subcommand)]
    sub: Option<UpgradeSub>,
    /// The cluster spec (cluster.yaml); its kubernetesVersion is the
    /// version to upgrade to, its upgrade.maxUnavailable the worker batch.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Print the plan (every node's versions, the order, each node's steps
    /// and the checks) and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Upgrade across several minor versions one minor at a time (v1.30 ->
    /// v1.31 -> v1.32), through the newest patch release of each minor in
    /// between, instead of refusing the skip.
    #[arg(long)]
    through: bool,
    /// How long `kubectl drain` may take on each node, e.g. 90s, 5m, 1h
    /// [default: 5m]. A PodDisruptionBudget that still blocks an eviction
    /// then stops the upgrade at that node.
    #[arg(long, value_name = "DURATION")]
    drain_timeout: Option<String>,
    /// Do not drain or uncordon nodes (single-node labs: nothing else can
    /// run the pods).
    #[arg(long)]
    skip_drain: bool,
    /// Do not take an etcd snapshot before the first change.
    #[arg(long)]
    no_snapshot: bool,
}

#[derive(clap::Subcommand)]
enum UpgradeSub {
    /// The running or last upgrade (the coordinator runs one operation at
    /// a time; this is `khctl rollout status`).
    #[command(arg = help::output("`table` (default): the upgrade's events so far (and, with --follow, until it ends), then its outcome; `json`: nothing until the end, then one object for scripts: ok, failure, node, step, message, hint, dryRun, plan and every event"))]
    Status {
        /// Keep following a running upgrade until it ends.
        #[arg(long)]
        follow: bool,
    },
}

/// `--drain-timeout` in whole seconds: more than zero, at most a day.
pub fn drain_timeout(text: Option<&str>) -> Result<u32, anyhow::Error> {
    let Some(text) = text else {
        return Ok(0);
    };
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        usage(format!(
            "--drain-timeout {text}: {e}; give a duration such as 90s, 5m or 1h"
        ))
    })?;
    if d < Duration::from_secs(1) || d > MAX_DRAIN_TIMEOUT {
        return Err(usage(format!(
            "--drain-timeout {text}: out of range; give 1s to 24h (default 5m)"
        )));
    }
    Ok(d.as_secs() as u32)
}

pub async fn run(
    client: &mut AdminClient<Channel>,
    addr: &str,
    args: UpgradeArgs,
    format: Format,
) -> anyhow::Result<()> {
    match (args.sub, &args.file) {
        (Some(UpgradeSub::Status { follow }), _) => {
            crate::rollout::status(client, addr, follow, format, crate::rollout::UPGRADE).await
        }
        (None, None) => Err(usage(
            "khctl upgrade needs -f cluster.yaml (or `khctl upgrade status`)",
        )),
        (None, Some(file)) => {
            let (spec_yaml, _files) = crate::rollout::load(file)?;
            let roles = kh::spec::parse(&spec_yaml)
                .map(|s| {
                    s.nodes
                        .iter()
                        .map(|n| (n.name.clone(), n.role.as_str().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            let req = UpgradeRequest {
                spec_yaml,
                dry_run: args.dry_run,
                through: args.through,
                drain_timeout_seconds: drain_timeout(args.drain_timeout.as_deref())?,
                skip_drain: args.skip_drain,
                no_snapshot: args.no_snapshot,
            };
            let dry_run = req.dry_run;
            let stream = client
                .upgrade(req)
                .await
                .map_err(|s| explain(addr, s))?
                .into_inner();
            crate::rollout::follow(stream, format, dry_run, roles, crate::rollout::UPGRADE).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_timeouts_are_durations_within_a_day() {
        assert_eq!(drain_timeout(None).unwrap(), 0);
        assert_eq!(drain_timeout(Some("5m")).unwrap(), 300);
        assert_eq!(drain_timeout(Some("90s")).unwrap(), 90);
        assert_eq!(drain_timeout(Some("1h")).unwrap(), 3600);
        for bad in ["0s", "25h", "soon", "-5m", ""] {
            let e = drain_timeout(Some(bad)).unwrap_err();
            assert!(e.to_string().contains("--drain-timeout"), "{bad}: {e}");
        }
    }
}
