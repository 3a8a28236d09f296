//! `khctl prepare` and `khctl preflight`: progress as it happens, then a
//! summary; JSON for scripts.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use kh::proto::admin_client::AdminClient;
use kh::proto::{self, prepare_event::Kind};
use kh::StepKind;
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::output::{print_json, Table};
use crate::{explain, Failure, Format};
use crate::{out, outln};

pub fn targets(file: Option<PathBuf>, nodes: Vec<String>) -> anyhow::Result<proto::Targets> {
    match (file, nodes.is_empty()) {
        (Some(f), true) => Ok(proto::Targets {
            spec_yaml: std::fs::read_to_string(&f)
                .with_context(|| format!("reading the cluster spec {}", f.display()))?,
            nodes: vec![],
        }),
        (None, false) => Ok(proto::Targets {
            spec_yaml: String::new(),
            nodes,
        }),
        (Some(_), false) => Err(crate::usage(
            "give either -f cluster.yaml or --node NAME, not both",
        )),
        (None, true) => Err(crate::usage(
            "name the nodes: -f cluster.yaml, or --node NAME (repeatable)",
        )),
    }
}

pub fn outcome_name(o: i32) -> &'static str {
    match proto::Outcome::try_from(o).unwrap_or(proto::Outcome::Unspecified) {
        proto::Outcome::Changed => "Changed",
        proto::Outcome::Unchanged => "Unchanged",
        proto::Outcome::Failed => "Failed",
        proto::Outcome::Unspecified => "?",
    }
}

pub fn report_json(r: &proto::StepReport) -> Value {
    json!({
        "step": r.step,
        "outcome": outcome_name(r.outcome),
        "dryRun": r.dry_run,
        "message": r.message,
        "error": r.error,
        "files": r.files.iter().map(|f| json!({"path": f.path, "diff": f.diff, "mode": format!("{:o}", f.mode), "backup": f.backup, "created": f.created})).collect::<Vec<_>>(),
        "sysctls": r.sysctls.iter().map(|s| json!({"key": s.key, "before": s.before, "after": s.after})).collect::<Vec<_>>(),
        "commands": r.commands.iter().map(|c| json!({"argv": c.argv, "exitCode": c.exit_code, "stderrTail": c.stderr_tail, "timedOut": c.timed_out})).collect::<Vec<_>>(),
    })
}

#[derive(Default)]
struct NodeResult {
    role: String,
    steps: Vec<String>,
    reports: Vec<proto::StepReport>,
    error: String,
    finished: bool,
    elapsed_ms: u64,
}

fn print_failure_detail(node: &str, r: &proto::StepReport) {
    outln!("  {node}: {} failed: {}", r.step, r.error);
    for c in &r.commands {
        let status = match (c.exit_code, c.timed_out) {
            (_, true) => "timed out".to_string(),
            (Some(code), _) => format!("exit {code}"),
            (None, _) => "killed".to_string(),
        };
        outln!("    $ {}   ({status})", c.argv.join(" "));
        for line in c.stderr_tail.lines() {
            outln!("      {line}");
        }
    }
}

fn print_plan_detail(node: &str, r: &proto::StepReport) {
    outln!("--- {node}: {} — {}", r.step, r.message);
    for f in &r.files {
        out!("{}", f.diff);
        if !f.diff.ends_with('\n') {
            outln!();
        }
    }
    for s in &r.sysctls {
        outln!(
            "    sysctl {}: {} -> {}",
            s.key,
            if s.before.is_empty() {
                "<unset>"
            } else {
                &s.before
            },
            s.after
        );
    }
    for c in &r.commands {
        outln!("    would run: {}", c.argv.join(" "));
    }
}

pub async fn prepare(
    client: &mut AdminClient<Channel>,
    addr: &str,
    targets: proto::Targets,
    dry_run: bool,
    format: Format,
) -> anyhow::Result<()> {
    let mut stream = client
        .prepare(proto::PrepareRequest {
            targets: Some(targets),
            dry_run,
        })
        .await
        .map_err(|s| explain(addr, s))?
        .into_inner();
    let human = format == Format::Table;
    let mut nodes: BTreeMap<String, NodeResult> = BTreeMap::new();
    let mut order: Vec<String> = vec![];
    let width =
        |nodes: &BTreeMap<String, NodeResult>| nodes.keys().map(|n| n.len()).max().unwrap_or(4);
    while let Some(ev) = stream.message().await.map_err(|s| explain(addr, s))? {
        let kind = Kind::try_from(ev.kind).unwrap_or(Kind::Unspecified);
        match kind {
            Kind::Plan => {
                for p in ev.plan {
                    order.push(p.node.clone());
                    nodes.insert(
                        p.node,
                        NodeResult {
                            role: p.role,
                            steps: p.steps,
                            ..Default::default()
                        },
                    );
                }
                if human {
                    let what = if dry_run { "Planning" } else { "Preparing" };
                    outln!("{what} {} node(s): {}", order.len(), order.join(", "));
                }
            }
            Kind::StepStarted => {}
            Kind::StepFinished => {
                let w = width(&nodes);
                let Some(n) = nodes.get_mut(&ev.node) else {
                    continue;
                };
                if let Some(r) = ev.report {
                    if human {
                        outln!(
                            "  {:<w$}  {:<18} {:<9} {:>6.2}s  {}",
                            ev.node,
                            r.step,
                            outcome_name(r.outcome),
                            ev.elapsed_ms as f64 / 1000.0,
                            r.message
                        );
                        if r.outcome == proto::Outcome::Failed as i32 {
                            print_failure_detail(&ev.node, &r);
                        }
                    }
                    n.reports.push(r);
                }
            }
            Kind::NodeFinished => {
                let w = width(&nodes);
                if let Some(n) = nodes.get_mut(&ev.node) {
                    n.finished = true;
                    n.error = ev.error.clone();
                    n.elapsed_ms = ev.elapsed_ms;
                }
                if human && !ev.error.is_empty() {
                    outln!("  {:<w$}  FAILED: {}", ev.node, ev.error);
                }
            }
            Kind::Unspecified => {}
        }
        let _ = std::io::stdout().flush();
    }
    let failed: Vec<&String> = order
        .iter()
        .filter(|n| {
            nodes
                .get(*n)
                .map(|r| !r.error.is_empty() || !r.finished)
                .unwrap_or(true)
        })
        .collect();
    if !human {
        let rows: Vec<Value> = order
            .iter()
            .map(|n| {
                let r = &nodes[n];
                json!({
                    "name": n, "role": r.role, "ok": r.finished && r.error.is_empty(),
                    "error": r.error, "elapsedMs": r.elapsed_ms,
                    "steps": r.reports.iter().map(report_json).collect::<Vec<_>>(),
                })
            })
            .collect();
        print_json(&json!({ "dryRun": dry_run, "ok": failed.is_empty(), "nodes": rows }));
    } else {
        if dry_run {
            outln!();
            for n in &order {
                for r in &nodes[n].reports {
                    if r.outcome == proto::Outcome::Changed as i32 {
                        print_plan_detail(n, r);
                    }
                }
            }
        }
        let step_names = [
            StepKind::DisableSwap,
            StepKind::KernelModules,
            StepKind::Sysctl,
            StepKind::ContainerdCgroup,
        ]
        .map(StepKind::name);
        let mut t = Table::new(&[
            "NODE",
            "ROLE",
            "DISABLE-SWAP",
            "KERNEL-MODULES",
            "SYSCTL",
            "CONTAINERD-CGROUP",
            "RESULT",
        ]);
        for n in &order {
            let r = &nodes[n];
            let mut row = vec![
                n.clone(),
                if r.role.is_empty() {
                    "<none>".into()
                } else {
                    r.role.clone()
                },
            ];
            for s in step_names {
                let cell = match r.reports.iter().find(|x| x.step == s) {
                    Some(rep) => outcome_name(rep.outcome).to_string(),
                    None if r.steps.iter().any(|x| x == s) => "skipped".into(),
                    None => "-".into(),
                };
                row.push(cell);
            }
            row.push(
                if r.finished && r.error.is_empty() {
                    "ok"
                } else {
                    "FAILED"
                }
                .into(),
            );
            t.row(row);
        }
        outln!();
        t.print_or("No nodes.");
        if dry_run {
            outln!("\nDry run: nothing was changed.");
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(anyhow::Error::new(Failure::Operation(format!(
            "{} of {} node(s) failed: {}",
            failed.len(),
            order.len(),
            failed
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))))
    }
}

pub fn status_name(s: i32) -> &'static str {
    match proto::CheckStatus::try_from(s).unwrap_or(proto::CheckStatus::Unspecified) {
        proto::CheckStatus::Pass => "pass",
        proto::CheckStatus::Warn => "warn",
        proto::CheckStatus::Fail => "FAIL",
        proto::CheckStatus::Unspecified => "?",
    }
}

pub async fn preflight(
    client: &mut AdminClient<Channel>,
    addr: &str,
    targets: proto::Targets,
    format: Format,
) -> anyhow::Result<()> {
    let resp = client
        .preflight(proto::AdminPreflightRequest {
            targets: Some(targets),
        })
        .await
        .map_err(|s| explain(addr, s))?
        .into_inner();
    let failing: Vec<&str> = resp
        .nodes
        .iter()
        .filter(|n| {
            !n.error.is_empty()
                || n.report.as_ref().is_some_and(|r| {
                    r.checks
                        .iter()
                        .any(|c| c.status == proto::CheckStatus::Fail as i32)
                })
        })
        .map(|n| n.node.as_str())
        .collect();
    if format == Format::Json {
        let rows: Vec<Value> = resp
            .nodes
            .iter()
            .map(|n| {
                json!({
                    "name": n.node, "role": n.role, "error": n.error,
                    "checks": n.report.as_ref().map(|r| r.checks.iter().map(|c| json!({"name": c.name, "status": status_name(c.status).to_lowercase(), "message": c.message, "fix": c.fix})).collect::<Vec<_>>()).unwrap_or_default(),
                })
            })
            .collect();
        print_json(&json!({ "ok": failing.is_empty(), "nodes": rows }));
    } else {
        for n in &resp.nodes {
            outln!("{} ({}):", n.node, n.role);
            if !n.error.is_empty() {
                outln!("  FAIL  {}", n.error);
            }
            for c in n.report.iter().flat_map(|r| &r.checks) {
                outln!(
                    "  {:<4}  {:<28} {}",
                    status_name(c.status),
                    c.name,
                    c.message
                );
                if c.status != proto::CheckStatus::Pass as i32 && !c.fix.is_empty() {
                    outln!("        fix: {}", c.fix);
                }
            }
        }
    }
    if failing.is_empty() {
        Ok(())
    } else {
        Err(anyhow::Error::new(Failure::Preflight(format!(
            "preflight failed on {}",
            failing.join(", ")
        ))))
    }
}
