//! Phase 1: read-only preflight checks, in parallel, on nodes kubeadm has
//! not touched yet.

use std::time::Duration;

use kh::proto::{self, rollout_event::Kind, RolloutEvent};
use kh::spec::NodeSpec;

use super::{Ctx, Phase};
use crate::rollout::ops::Failure;

pub(crate) async fn preflight(ctx: &Ctx<'_>, todo: &[&NodeSpec]) -> Result<(), Failure> {
    let targets: Vec<crate::prepare::Target> = todo
        .iter()
        .filter_map(|n| {
            let name = kh::names::NodeName::new(&n.name).ok()?;
            let record = ctx.coord.registry.get(&name).ok().flatten()?;
            Some(crate::prepare::Target {
                record,
                role: Some(n.role),
                address: Some(n.address),
            })
        })
        .collect();
    let results =
        crate::prepare::preflight(ctx.coord.clone(), Some(ctx.spec.clone()), targets).await;
    let mut problems = vec![];
    for r in &results {
        if !r.error.is_empty() {
            problems.push(format!("{}: {}", r.node, r.error));
        }
        for c in r.report.iter().flat_map(|r| &r.checks) {
            if c.status == proto::CheckStatus::Fail as i32 {
                problems.push(format!(
                    "{}: {} — {} (fix: {})",
                    r.node, c.name, c.message, c.fix
                ));
            }
        }
        ctx.rep
            .emit(RolloutEvent {
                kind: Kind::StepFinished as i32,
                phase: Phase::Preflight.name().into(),
                node: r.node.clone(),
                step: "preflight".into(),
                message: match &r.report {
                    Some(rep) => {
                        let fails = rep
                            .checks
                            .iter()
                            .filter(|c| c.status == proto::CheckStatus::Fail as i32)
                            .count();
                        let warns = rep
                            .checks
                            .iter()
                            .filter(|c| c.status == proto::CheckStatus::Warn as i32)
                            .count();
                        format!(
                            "{} checks, {fails} failed, {warns} warnings",
                            rep.checks.len()
                        )
                    }
                    None => r.error.clone(),
                },
                ..Default::default()
            })
            .await;
    }
    // kubeadm requires product_uuid and MACs unique across the cluster.
    let names: Vec<&str> = ctx.spec.nodes.iter().map(|n| n.name.as_str()).collect();
    for v in ctx.coord.registry.list(0, Duration::from_secs(1))? {
        if names.contains(&v.record.name.as_str()) {
            for w in v.warnings {
                problems.push(format!("{}: {w}", v.record.name));
            }
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(Failure {
        class: "preflight",
        node: String::new(),
        step: "preflight".into(),
        message: format!(
            "preflight failed; nothing was changed:\n{}",
            problems.join("\n")
        ),
        hint:
            "fix each item (or see `khctl preflight -f cluster.yaml`), then run the rollout again"
                .into(),
        report: None,
    })
}
