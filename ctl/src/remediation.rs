//! `khctl remediation status | pause | resume` and `khctl spares list |
//! add NAME`: the coordinator's self-healing of control planes from a pool
//! of spares.

use clap::Subcommand;
use kh::proto::admin_client::AdminClient;
use kh::proto::{self, remediation_request::Action};
use serde_json::json;
use tonic::transport::Channel;

use crate::help;
use crate::output::{print_json, Table};
use crate::{explain, outln, Format};

#[derive(Subcommand)]
pub enum RemediationCmd {
    /// Enabled or paused, each control plane as last observed and since
    /// when, candidates, retries used, spares left, the last decision.
    #[command(arg = help::output("`table` (default): the settings, one row per control plane, the spares and the last decision; `json`: one object for scripts, {\"enabled\", \"paused\", \"nodes\": [{\"node\", \"state\", \"observed\", \"since\", \"candidate\", \"retriesUsed\"}], \"spares\", \"last\", \"blocked\", ...}"))]
    Status,
    /// Stop replacing control planes (observing and auditing go on);
    /// persisted and audited. A replacement already running finishes.
    #[command(arg = help::output("`table` (default): what changed; `json`: the status object with \"message\""))]
    Pause,
    /// Let remediation replace failed control planes again.
    #[command(arg = help::output("`table` (default): what changed; `json`: the status object with \"message\""))]
    Resume,
}

#[derive(Subcommand)]
pub enum SparesCmd {
    /// The spare pool of the held spec, each spare usable or why not.
    #[command(arg = help::output("`table` (default): one row per spare; `json`: one object for scripts, {\"spares\": [{\"node\", \"usable\", \"detail\"}]}"))]
    List,
    /// Put an enrolled host outside the cluster (a retired node, or an
    /// unused one) into the spare pool. kubeadm must have left nothing on
    /// it; a retired node is reset first. Audited.
    #[command(arg = help::output("`table` (default): what was done and the pool; `json`: one object for scripts, {\"message\", \"spares\": [...]}"))]
    Add {
        /// The node's enrolled name.
        name: String,
    },
}

fn time(ms: u64) -> Option<String> {
    (ms != 0).then(|| kh::time::rfc3339(ms))
}

fn status_json(s: &proto::RemediationStatus) -> serde_json::Value {
    json!({
        "enabled": s.enabled,
        "paused": s.paused,
        "unhealthyAfterMs": s.unhealthy_after_ms,
        "maxRetry": s.max_retry,
        "retryPeriodMs": s.retry_period_ms,
        "minHealthyPeriodMs": s.min_healthy_period_ms,
        "watchingSince": time(s.watching_since_unix_ms),
        "nodes": s.nodes.iter().map(|n| json!({
            "node": n.node, "state": n.state, "observed": n.observed,
            "since": time(n.since_unix_ms), "candidate": n.candidate,
            "retriesUsed": n.retries_used, "observedForMs": n.observed_for_ms,
        })).collect::<Vec<_>>(),
        "spares": s.spares,
        "sparesUnusable": s.spares_unusable,
        "last": {
            "reason": s.last_reason, "node": s.last_node,
            "message": s.last_message, "time": time(s.last_unix_ms),
        },
        "inFlight": s.in_flight,
        "blocked": s.blocked,
        "replaced": s.replaced,
        "remediations": {"started": s.started, "succeeded": s.succeeded, "failed": s.failed},
        "message": s.message,
    })
}

fn print_status(s: &proto::RemediationStatus) {
    let secs = |ms: u64| kh::time::short_duration((ms / 1000) as i64);
    outln!(
        "Remediation: {}{}  (unhealthyAfter {}, maxRetry {} per {}, minHealthyPeriod {})",
        if s.enabled { "enabled" } else { "disabled" },
        if s.paused { ", paused" } else { "" },
        secs(s.unhealthy_after_ms),
        s.max_retry,
        secs(s.retry_period_ms),
        secs(s.min_healthy_period_ms)
    );
    let mut t = Table::new(&["NODE", "STATE", "SINCE", "CANDIDATE", "RETRIES", "OBSERVED"]);
    for n in &s.nodes {
        t.row(vec![
            n.node.clone(),
            n.state.clone(),
            time(n.since_unix_ms).unwrap_or_else(|| "-".into()),
            if n.candidate { "yes" } else { "no" }.into(),
            n.retries_used.to_string(),
            n.observed.clone(),
        ]);
    }
    t.print_or("No control plane observed yet.");
    outln!(
        "Spares left: {}",
        if s.spares.is_empty() {
            "none".to_string()
        } else {
            s.spares.join(", ")
        }
    );
    for u in &s.spares_unusable {
        outln!("  not usable: {u}");
    }
    if !s.in_flight.is_empty() {
        outln!("Running: {}", s.in_flight);
    }
    if !s.blocked.is_empty() {
        outln!("ALERT: blocked ({})", s.blocked);
    }
    if !s.last_reason.is_empty() {
        outln!(
            "Last decision ({}): {}: {}",
            time(s.last_unix_ms).unwrap_or_default(),
            s.last_reason,
            s.last_message
        );
    }
    outln!(
        "Replacements: {} started, {} succeeded, {} failed",
        s.started,
        s.succeeded,
        s.failed
    );
}

pub async fn remediation(
    client: &mut AdminClient<Channel>,
    addr: &str,
    cmd: RemediationCmd,
    format: Format,
) -> anyhow::Result<()> {
    let action = match cmd {
        RemediationCmd::Status => Action::Status,
        RemediationCmd::Pause => Action::Pause,
        RemediationCmd::Resume => Action::Resume,
    };
    let s = client
        .remediation(proto::RemediationRequest {
            action: action as i32,
        })
        .await
        .map_err(|e| explain(addr, e))?
        .into_inner();
    if format == Format::Json {
        print_json(&status_json(&s));
    } else if !s.message.is_empty() {
        outln!("{}", s.message);
    } else {
        print_status(&s);
    }
    Ok(())
}

pub async fn spares(
    client: &mut AdminClient<Channel>,
    addr: &str,
    cmd: SparesCmd,
    format: Format,
) -> anyhow::Result<()> {
    let add = match cmd {
        SparesCmd::List => String::new(),
        SparesCmd::Add { name } => name,
    };
    let r = client
        .spares(proto::SparesRequest { add })
        .await
        .map_err(|e| explain(addr, e))?
        .into_inner();
    if format == Format::Json {
        print_json(&json!({
            "message": r.message,
            "spares": r.spares.iter().map(|s| json!({"node": s.node, "usable": s.usable, "detail": s.detail})).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    if !r.message.is_empty() {
        outln!("{}", r.message);
    }
    let mut t = Table::new(&["SPARE", "USABLE", "DETAIL"]);
    for s in &r.spares {
        t.row(vec![
            s.node.clone(),
            if s.usable { "yes" } else { "no" }.into(),
            s.detail.clone(),
        ]);
    }
    t.print_or("No spares in the held spec.");
    Ok(())
}
