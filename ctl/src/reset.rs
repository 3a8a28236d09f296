//! `khctl reset [--yes] [--node NAME] [--force] [--dry-run]`: tear the
//! cluster down (or reset one node) through the coordinator.
//!
//! Without `--yes` it shows what would be reset and asks on the terminal; a
//! non-interactive caller must pass `--yes`, so a script never resets a
//! cluster by accident.

use std::io::{BufRead, IsTerminal, Write};

use kh::proto::admin_client::AdminClient;
use kh::proto::{self, rollout_event::Kind};
use serde_json::json;
use tonic::transport::Channel;

use crate::output::print_json;
use crate::{explain, outln, Format};

/// The plan the coordinator would follow, without changing anything.
async fn plan(
    client: &mut AdminClient<Channel>,
    addr: &str,
    req: &proto::ResetRequest,
) -> anyhow::Result<proto::RolloutPlan> {
    let mut stream = client
        .reset(proto::ResetRequest {
            dry_run: true,
            ..req.clone()
        })
        .await
        .map_err(|s| explain(addr, s))?
        .into_inner();
    while let Some(ev) = stream.message().await.map_err(|s| explain(addr, s))? {
        if ev.kind == Kind::Plan as i32 {
            if let Some(p) = ev.plan {
                return Ok(p);
            }
        }
    }
    anyhow::bail!("the coordinator sent no reset plan")
}

fn describe(plan: &proto::RolloutPlan) -> String {
    let mut s = format!("Reset plan for cluster {}:\n", plan.cluster);
    for phase in &plan.phases {
        s.push_str(&format!("  {}:\n", phase.name));
        if phase.steps.is_empty() {
            s.push_str("    (nothing)\n");
        }
        for step in &phase.steps {
            let node = if step.node.is_empty() {
                "coordinator"
            } else {
                &step.node
            };
            s.push_str(&format!(
                "    {node:<12} {:<16} {}\n",
                step.step, step.detail
            ));
        }
    }
    for n in &plan.notes {
        s.push_str(&format!("  note: {n}\n"));
    }
    s
}

fn plan_json(plan: &proto::RolloutPlan) -> serde_json::Value {
    json!({
        "cluster": plan.cluster,
        "phases": plan.phases.iter().map(|p| json!({
            "name": p.name,
            "steps": p.steps.iter().map(|s| json!({"node": s.node, "step": s.step, "detail": s.detail})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "notes": plan.notes,
    })
}

pub async fn reset(
    client: &mut AdminClient<Channel>,
    addr: &str,
    node: Option<String>,
    yes: bool,
    force: bool,
    dry_run: bool,
    format: Format,
) -> anyhow::Result<()> {
    let req = proto::ResetRequest {
        node: node.clone().unwrap_or_default(),
        dry_run: false,
        force,
    };
    if dry_run {
        let p = plan(client, addr, &req).await?;
        if format == Format::Json {
            print_json(&json!({"ok": true, "dryRun": true, "plan": plan_json(&p)}));
        } else {
            crate::out!("{}", describe(&p));
            outln!("\nDry run: nothing was changed.");
        }
        return Ok(());
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(crate::usage(format!(
                "refusing to reset without confirmation: stdin is not a terminal. `khctl reset` runs `kubeadm reset -f` on {} and cannot be undone; pass --yes to confirm (see the plan with --dry-run)",
                match &node {
                    Some(n) => format!("node {n}"),
                    None => "every node of the cluster".to_string(),
                }
            )));
        }
        let p = plan(client, addr, &req).await?;
        let what = match &node {
            Some(n) => format!("node {n} of cluster {}", p.cluster),
            None => format!(
                "cluster {}: every node, and the coordinator's join material",
                p.cluster
            ),
        };
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "{}\nThis resets {what}. It cannot be undone. Type `yes` to continue: ",
            describe(&p)
        );
        let _ = err.flush();
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        if !matches!(line.trim(), "yes" | "y" | "Y") {
            anyhow::bail!("not confirmed; nothing was changed");
        }
    }
    let stream = client
        .reset(req)
        .await
        .map_err(|s| explain(addr, s))?
        .into_inner();
    crate::rollout::follow_events(stream, format, "Reset").await
}
