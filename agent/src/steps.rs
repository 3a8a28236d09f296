//! Runs typed step requests through `kh-host` and converts its reports to
//! the wire. The only place the agent maps between proto and host types.

use std::sync::Arc;

use kh::proto::{self, run_step_request::Step as WireStep};
use kh_host::{Step, StepKind};

use crate::metrics::StepLabels;
use crate::state::AgentState;

/// Every step the agent runs, by its wire name.
pub const ALL_STEPS: &[&str] = &[
    "disable-swap",
    "kernel-modules",
    "sysctl",
    "containerd-cgroup",
];

pub fn step_name(kind: StepKind) -> &'static str {
    match kind {
        StepKind::DisableSwap => "disable-swap",
        StepKind::KernelModules => "kernel-modules",
        StepKind::Sysctl => "sysctl",
        StepKind::ContainerdCgroup => "containerd-cgroup",
    }
}

fn host_step(step: &WireStep) -> Box<dyn Step + Send + Sync> {
    match step {
        WireStep::DisableSwap(_) => Box::new(kh_host::DisableSwap),
        WireStep::KernelModules(_) => Box::new(kh_host::KernelModules::default()),
        WireStep::Sysctl(_) => Box::new(kh_host::Sysctl::default()),
        WireStep::ContainerdCgroup(_) => Box::new(kh_host::ContainerdCgroup),
    }
}

/// Plans and applies (or only plans) one step; never panics the server.
pub async fn run(state: &Arc<AgentState>, step: WireStep, dry_run: bool) -> proto::StepReport {
    let st = state.clone();
    let report = tokio::task::spawn_blocking(move || {
        let s = host_step(&step);
        s.run(&st.host, dry_run)
    })
    .await;
    let report = match report {
        Ok(r) => to_wire(r),
        Err(e) => proto::StepReport {
            step: "unknown".into(),
            outcome: proto::Outcome::Failed as i32,
            error: format!("the step panicked: {e}"),
            ..Default::default()
        },
    };
    let result =
        match proto::Outcome::try_from(report.outcome).unwrap_or(proto::Outcome::Unspecified) {
            proto::Outcome::Changed => "changed",
            proto::Outcome::Unchanged => "unchanged",
            _ => "failed",
        };
    if !dry_run {
        state
            .metrics
            .steps
            .get_or_create(&StepLabels {
                step: report.step.clone(),
                result: result.into(),
            })
            .inc();
    }
    tracing::info!(step = %report.step, outcome = result, dry_run, "{}", report.message);
    report
}

pub fn to_wire(r: kh_host::StepReport) -> proto::StepReport {
    let outcome = match r.outcome {
        kh_host::Outcome::Changed => proto::Outcome::Changed,
        kh_host::Outcome::Unchanged => proto::Outcome::Unchanged,
        kh_host::Outcome::Failed => proto::Outcome::Failed,
    };
    proto::StepReport {
        step: step_name(r.step).to_string(),
        outcome: outcome as i32,
        files: r
            .files
            .into_iter()
            .map(|f| proto::FileChange {
                created: f.before.is_none(),
                path: f.path,
                diff: f.diff,
                mode: f.mode,
                backup: f.backup.unwrap_or_default(),
            })
            .collect(),
        commands: r
            .commands
            .into_iter()
            .map(|c| proto::CommandRecord {
                argv: c.argv,
                exit_code: c.exit_code,
                stderr_tail: c.stderr_tail,
                timed_out: c.timed_out,
            })
            .collect(),
        sysctls: r
            .sysctls
            .into_iter()
            .map(|s| proto::SysctlChange {
                key: s.key.as_str().to_string(),
                before: s.before.unwrap_or_default(),
                after: s.after,
            })
            .collect(),
        message: r.message,
        error: r.error.unwrap_or_default(),
        dry_run: r.dry_run,
        notes: vec![],
    }
}

pub async fn preflight(
    state: &Arc<AgentState>,
    req: proto::PreflightRequest,
) -> Result<proto::PreflightReport, String> {
    let role = match proto::NodeRole::try_from(req.role).unwrap_or(proto::NodeRole::Unspecified) {
        proto::NodeRole::ControlPlane => kh_host::Role::ControlPlane,
        proto::NodeRole::Worker => kh_host::Role::Worker,
        proto::NodeRole::Loadbalancer => kh_host::Role::LoadBalancer,
        proto::NodeRole::Unspecified => {
            return Err("preflight needs a role: control-plane, worker or loadbalancer".into())
        }
    };
    let address = match req.address.as_str() {
        "" => None,
        a => Some(
            a.parse()
                .map_err(|_| format!("address {a:?} is not an IP address"))?,
        ),
    };
    let input = kh_host::PreflightInput {
        role,
        address,
        kubernetes_version: Some(req.kubernetes_version).filter(|v| !v.is_empty()),
    };
    let st = state.clone();
    let checks = tokio::task::spawn_blocking(move || kh_host::preflight(&st.host, &input))
        .await
        .map_err(|e| format!("preflight panicked: {e}"))?;
    Ok(proto::PreflightReport {
        checks: checks
            .into_iter()
            .map(|c| proto::Check {
                name: c.name,
                status: match c.status {
                    kh_host::CheckStatus::Pass => proto::CheckStatus::Pass,
                    kh_host::CheckStatus::Warn => proto::CheckStatus::Warn,
                    kh_host::CheckStatus::Fail => proto::CheckStatus::Fail,
                } as i32,
                message: c.message,
                fix: c.fix,
            })
            .collect(),
    })
}
