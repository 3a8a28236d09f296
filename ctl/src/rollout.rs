//! `khctl rollout`, `khctl rollout status` and `khctl kubeconfig`.
//!
//! On a terminal the rollout shows one line per node (its current step,
//! elapsed time) under a bar for the phase, redrawn in place; piped, it prints
//! one line per event, which reads well in CI logs.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use kh::proto::admin_client::AdminClient;
use kh::proto::{self, rollout_event::Kind, RolloutEvent};
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::output::print_json;
use crate::prepare::report_json;
use crate::{explain, out, outln, Failure, Format};

/// Reads the spec and the files it names. Spec errors end here, before any
/// request, with exit code 2.
pub fn load(file: &Path) -> anyhow::Result<(String, Vec<proto::SpecFile>)> {
    let yaml = std::fs::read_to_string(file)
        .with_context(|| format!("reading the cluster spec {}", file.display()))?;
    let mut spec = kh::spec::parse(&yaml).map_err(|e| {
        anyhow::Error::new(Failure::SpecInvalid(format!(
            "{} is invalid:\n{e}",
            file.display()
        )))
    })?;
    let dir = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    spec.resolve_relative_paths(&dir);
    let mut files = vec![];
    if let Some(cni) = &spec.cni {
        let contents = std::fs::read(&cni.manifest).map_err(|e| {
            anyhow::Error::new(Failure::SpecInvalid(format!(
                "spec.cni.manifest: cannot read {}: {e}. The path is relative to the spec file",
                cni.manifest.display()
            )))
        })?;
        files.push(proto::SpecFile {
            field: "cni.manifest".into(),
            contents,
        });
    }
    if let kh::spec::Etcd::External {
        ca_file,
        cert_file,
        key_file,
        ..
    } = &spec.etcd
    {
        for (field, path) in [
            ("etcd.caFile", ca_file),
            ("etcd.certFile", cert_file),
            ("etcd.keyFile", key_file),
        ] {
            let contents = std::fs::read(path).map_err(|e| {
                anyhow::Error::new(Failure::SpecInvalid(format!(
                    "spec.{field}: cannot read {}: {e}",
                    path.display()
                )))
            })?;
            files.push(proto::SpecFile {
                field: field.into(),
                contents,
            });
        }
    }
    Ok((yaml, files))
}

/// The label `khctl upgrade` follows its operation with.
pub const UPGRADE: &str = "Upgrade";

#[derive(Default, Clone)]
struct Row {
    role: String,
    step: String,
    state: &'static str,
    since: Option<Instant>,
    note: String,
}

struct View {
    live: bool,
    rows: BTreeMap<String, Row>,
    order: Vec<String>,
    phases: Vec<String>,
    phase: String,
    started: Instant,
    drawn: usize,
}

impl View {
    fn new(live: bool) -> Self {
        View {
            live,
            rows: BTreeMap::new(),
            order: vec![],
            phases: vec![],
            phase: String::new(),
            started: Instant::now(),
            drawn: 0,
        }
    }

    fn plan(&mut self, plan: &proto::RolloutPlan, roles: &BTreeMap<String, String>) {
        self.phases = plan.phases.iter().map(|p| p.name.clone()).collect();
        for p in &plan.phases {
            for s in &p.steps {
                if s.node.is_empty() || self.rows.contains_key(&s.node) {
                    continue;
                }
                self.order.push(s.node.clone());
                self.rows.insert(
                    s.node.clone(),
                    Row {
                        role: roles.get(&s.node).cloned().unwrap_or_default(),
                        step: String::new(),
                        state: if s.state == "done" { "done" } else { "pending" },
                        since: None,
                        note: String::new(),
                    },
                );
            }
        }
    }

    fn line_for(&self, ev: &RolloutEvent) -> Option<String> {
        let k = Kind::try_from(ev.kind).unwrap_or(Kind::Unspecified);
        let who = if ev.node.is_empty() {
            String::new()
        } else {
            format!("{:<10} ", ev.node)
        };
        let secs = ev.elapsed_ms as f64 / 1000.0;
        match k {
            Kind::PhaseStarted => Some(format!("== {}", ev.phase)),
            Kind::StepStarted => Some(format!("   {who}{} ...", ev.step)),
            Kind::StepFinished => Some(format!(
                "   {who}{} done ({secs:.1}s) {}",
                ev.step, ev.message
            )),
            Kind::StepFailed => Some(format!("   {who}{} FAILED ({secs:.1}s)", ev.step)),
            Kind::Waiting => Some(format!("   {who}{}", ev.message)),
            Kind::Note => Some(format!("   {who}note: {}", ev.message)),
            _ => None,
        }
    }

    fn apply(&mut self, ev: &RolloutEvent) {
        let k = Kind::try_from(ev.kind).unwrap_or(Kind::Unspecified);
        if k == Kind::PhaseStarted {
            self.phase = ev.phase.clone();
        }
        if let Some(row) = self.rows.get_mut(&ev.node) {
            match k {
                Kind::StepStarted => {
                    row.step = ev.step.clone();
                    row.state = "running";
                    row.since = Some(Instant::now());
                    row.note.clear();
                }
                Kind::StepFinished => {
                    row.step = ev.step.clone();
                    row.state = "ok";
                    row.since = None;
                    row.note = ev.message.clone();
                }
                Kind::StepFailed => {
                    row.step = ev.step.clone();
                    row.state = "FAILED";
                    row.since = None;
                }
                Kind::Waiting => row.note = ev.message.clone(),
                _ => {}
            }
        }
        if !self.live {
            if let Some(l) = self.line_for(ev) {
                outln!("{l}");
            }
        }
    }

    fn draw(&mut self) {
        if !self.live || self.rows.is_empty() {
            return;
        }
        let mut s = String::new();
        if self.drawn > 0 {
            s.push_str(&format!("\x1b[{}A", self.drawn));
        }
        let idx = self
            .phases
            .iter()
            .position(|p| *p == self.phase)
            .map(|i| i + 1)
            .unwrap_or(0);
        let total = self.phases.len().max(1);
        let filled = idx * 20 / total;
        s.push_str(&format!(
            "\x1b[2K{:<16} [{}{}] {}/{}  {}s\n",
            if self.phase.is_empty() {
                "starting"
            } else {
                &self.phase
            },
            "#".repeat(filled),
            "-".repeat(20 - filled),
            idx,
            total,
            self.started.elapsed().as_secs()
        ));
        let width = self.order.iter().map(|n| n.len()).max().unwrap_or(4);
        for n in &self.order {
            let r = &self.rows[n];
            let elapsed = r
                .since
                .map(|t| format!("{:>5.1}s", t.elapsed().as_secs_f64()))
                .unwrap_or_else(|| "      ".into());
            let mut note = r.note.clone();
            note.truncate(70);
            s.push_str(&format!(
                "\x1b[2K  {n:<width$}  {:<13} {:<8} {:<20} {elapsed}  {note}\n",
                or_dash(&r.role),
                r.state,
                or_dash(&r.step)
            ));
        }
        self.drawn = self.order.len() + 1;
        out!("{s}");
    }
}

/// An empty cell reads as "-", never as blanks.
fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// `rollout status`'s first line: which operation, when it started, its
/// state.
fn header_line(ev: &RolloutEvent) -> String {
    let mut line = format!(
        "{}: started {}, {}",
        or_dash(&ev.operation),
        if ev.started_unix_ms == 0 {
            "-".to_string()
        } else {
            kh::time::rfc3339(ev.started_unix_ms)
        },
        or_dash(&ev.message)
    );
    if ev.unix_ms != 0 {
        line.push_str(&format!(" at {}", kh::time::rfc3339(ev.unix_ms)));
    }
    line
}

fn header_json(h: &RolloutEvent) -> Value {
    json!({
        "operation": h.operation,
        "started": kh::time::rfc3339(h.started_unix_ms),
        "state": h.message,
    })
}

/// "rollout failed at w-1 join-worker: ...", leaving out what is unknown.
fn failure_line(label: &str, fin: &RolloutEvent) -> String {
    let at: Vec<&str> = [fin.node.as_str(), fin.step.as_str()]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect();
    let first = fin.message.lines().next().unwrap_or_default();
    if at.is_empty() {
        format!("{} failed: {first}", label.to_lowercase())
    } else {
        format!(
            "{} failed at {}: {first}",
            label.to_lowercase(),
            at.join(" ")
        )
    }
}

/// The command line khctl was started with, to say "run it again".
fn this_command() -> String {
    let mut cmd = vec!["khctl".to_string()];
    for a in std::env::args().skip(1) {
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$`\\".contains(c)) {
            cmd.push(format!("'{}'", a.replace('\'', "'\\''")));
        } else {
            cmd.push(a);
        }
    }
    cmd.join(" ")
}

/// What khctl says when the coordinator goes away under a followed
/// operation: the operation itself is persisted and waits to be resumed.
fn connection_lost(label: &str, detail: &str) -> RolloutEvent {
    let rerun = this_command();
    RolloutEvent {
        kind: Kind::Finished as i32,
        ok: false,
        failure: "interrupted".into(),
        message: format!(
            "the coordinator closed the connection (it stopped or restarted) while the {} ran{}",
            label.to_lowercase(),
            if detail.is_empty() {
                String::new()
            } else {
                format!(" ({detail})")
            }
        ),
        hint: format!(
            "the operation is persisted: re-run the same command (`{rerun}`) to resume or follow it once the coordinator is back; finished steps are not repeated"
        ),
        ..Default::default()
    }
}

fn print_failure(ev: &RolloutEvent) {
    outln!();
    outln!("FAILED ({}).", ev.failure);
    if !ev.node.is_empty() {
        outln!("  node:    {}", ev.node);
    }
    if !ev.step.is_empty() {
        outln!("  step:    {}", ev.step);
    }
    if let Some(r) = &ev.report {
        if let Some(c) = r.commands.last() {
            outln!("  command: {}", c.argv.join(" "));
            if !c.stderr_tail.trim().is_empty() {
                outln!("  stderr:");
                for l in c.stderr_tail.lines() {
                    outln!("    {l}");
                }
            }
        }
    }
    outln!("  error:   {}", ev.message.replace('\n', "\n           "));
    if !ev.hint.is_empty() {
        outln!("  next:    {}", ev.hint);
    }
}

fn step_line(s: &proto::PlannedStep) -> String {
    let node = if s.node.is_empty() {
        "cluster"
    } else {
        &s.node
    };
    format!(
        "    [{:<7}] {:<10} {:<20} {}",
        s.state, node, s.step, s.detail
    )
}

/// A run prints the differences it carries out (or refuses) in the dry
/// run's words, before its progress.
fn print_changes(plan: &proto::RolloutPlan) {
    for p in plan.phases.iter().filter(|p| p.name == "changes") {
        if p.steps.is_empty() {
            continue;
        }
        outln!("Changes to cluster {}:", plan.cluster);
        for s in &p.steps {
            outln!("{}", step_line(s));
        }
    }
}

fn print_plan(plan: &proto::RolloutPlan) {
    outln!("Plan for cluster {}:", plan.cluster);
    for p in &plan.phases {
        outln!("  {}:", p.name);
        if p.steps.is_empty() {
            outln!("    (nothing)");
        }
        for s in &p.steps {
            outln!("{}", step_line(s));
        }
    }
    for n in &plan.notes {
        outln!("  note: {n}");
    }
    for f in &plan.rendered {
        outln!("\n--- {} on {} (secrets redacted):", f.path, f.node);
        out!("{}", f.contents);
    }
}

fn event_json(ev: &RolloutEvent) -> Value {
    json!({
        "kind": Kind::try_from(ev.kind).map(|k| k.as_str_name()).unwrap_or("?"),
        "phase": ev.phase, "node": ev.node, "step": ev.step, "message": ev.message,
        "elapsedMs": ev.elapsed_ms, "hint": ev.hint, "time": kh::time::rfc3339(ev.unix_ms),
        "report": ev.report.as_ref().map(report_json),
    })
}

fn plan_json(p: &proto::RolloutPlan) -> Value {
    json!({
        "cluster": p.cluster,
        "phases": p.phases.iter().map(|ph| json!({"name": ph.name, "steps": ph.steps.iter().map(|s| json!({"node": s.node, "step": s.step, "state": s.state, "detail": s.detail})).collect::<Vec<_>>()})).collect::<Vec<_>>(),
        "rendered": p.rendered.iter().map(|f| json!({"node": f.node, "path": f.path, "contents": f.contents})).collect::<Vec<_>>(),
        "notes": p.notes,
    })
}

/// Follows a stream of rollout events to its end; the exit code follows the
/// outcome.
pub(crate) async fn follow(
    mut stream: tonic::Streaming<RolloutEvent>,
    format: Format,
    dry_run: bool,
    roles: BTreeMap<String, String>,
    label: &str,
) -> anyhow::Result<()> {
    let human = format == Format::Table;
    let mut view = View::new(human && std::io::stdout().is_terminal() && !dry_run);
    let mut events = vec![];
    let mut plan = None;
    let mut finished: Option<RolloutEvent> = None;
    let mut header: Option<RolloutEvent> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            msg = stream.message() => {
                // The stream was accepted, so an error now is the
                // connection going away, not a refusal.
                let ev = match msg {
                    Ok(Some(ev)) => ev,
                    Ok(None) => break,
                    Err(s) => {
                        finished = Some(connection_lost(label, s.message()));
                        break;
                    }
                };
                let k = Kind::try_from(ev.kind).unwrap_or(Kind::Unspecified);
                if k == Kind::Header {
                    if human {
                        outln!("{}", header_line(&ev));
                    }
                    header = Some(ev);
                    continue;
                }
                if k == Kind::Plan {
                    if let Some(p) = &ev.plan {
                        view.plan(p, &roles);
                        plan = Some(p.clone());
                        if human && (dry_run || label == UPGRADE) {
                            // An upgrade shows its whole plan (versions,
                            // order, checks) on every run.
                            print_plan(p);
                        } else if human {
                            print_changes(p);
                        }
                    }
                } else if human {
                    view.apply(&ev);
                }
                if k == Kind::Finished {
                    finished = Some(ev.clone());
                }
                events.push(ev);
                if finished.is_some() {
                    break;
                }
            }
            _ = tick.tick() => view.draw(),
        }
    }
    view.draw();
    // A status without --follow of a running operation ends with no closing
    // event; anything else that ends without one lost its coordinator.
    let running = header.as_ref().is_some_and(|h| h.message == "running");
    if finished.is_none() && running {
        if human {
            outln!("\nStill running; follow it with `khctl rollout status --follow`.");
        } else {
            print_json(&json!({
                "ok": true, "running": true,
                "header": header.as_ref().map(header_json),
                "events": events.iter().map(event_json).collect::<Vec<_>>(),
            }));
        }
        return Ok(());
    }
    let fin = finished.unwrap_or_else(|| connection_lost(label, ""));
    if !human {
        print_json(&json!({
            "header": header.as_ref().map(header_json),
            "ok": fin.ok, "failure": fin.failure, "node": fin.node, "step": fin.step,
            "message": fin.message, "hint": fin.hint, "dryRun": dry_run,
            "plan": plan.as_ref().map(plan_json),
            "events": events.iter().map(event_json).collect::<Vec<_>>(),
        }));
    } else if fin.ok {
        if dry_run {
            outln!("\nDry run: nothing was changed.");
        } else {
            outln!("\n{label} complete: {}.", fin.message);
        }
    } else {
        print_failure(&fin);
    }
    if fin.ok {
        return Ok(());
    }
    // An interruption is not a step's failure: say what happened and how
    // to go on.
    let msg = match (fin.failure.as_str(), fin.hint.as_str()) {
        ("interrupted", "") => fin.message.clone(),
        ("interrupted", hint) => format!("{}; {hint}", fin.message),
        _ => failure_line(label, &fin),
    };
    Err(anyhow::Error::new(Failure::of_class(&fin.failure, msg)))
}

/// The nodes a plan removes from the cluster (its remove-nodes phase).
fn removals(plan: &proto::RolloutPlan) -> Vec<String> {
    let mut names: Vec<String> = vec![];
    for s in plan
        .phases
        .iter()
        .filter(|p| p.name == REMOVE_NODES)
        .flat_map(|p| p.steps.iter())
    {
        if !names.contains(&s.node) {
            names.push(s.node.clone());
        }
    }
    names
}

/// The phase that lists removals.
const REMOVE_NODES: &str = "remove-nodes";

/// On a terminal, asks before a rollout that removes nodes: the plan comes
/// from a dry run, and the answer confirms the removals. Whether a removal
/// is confirmed is the coordinator's to check, so a non-interactive caller
/// without `--yes` is refused there, before any change.
async fn confirm_removals(
    client: &mut AdminClient<Channel>,
    addr: &str,
    req: &proto::RolloutRequest,
) -> anyhow::Result<bool> {
    use std::io::{BufRead, Write};
    let mut stream = client
        .rollout(proto::RolloutRequest {
            dry_run: true,
            ..req.clone()
        })
        .await
        .map_err(|s| explain(addr, s))?
        .into_inner();
    let mut names = vec![];
    while let Some(ev) = stream.message().await.map_err(|s| explain(addr, s))? {
        if let (true, Some(p)) = (ev.kind == Kind::Plan as i32, &ev.plan) {
            names = removals(p);
            if !names.is_empty() {
                print_changes(p);
            }
        }
    }
    if names.is_empty() {
        return Ok(false);
    }
    let mut err = std::io::stderr();
    let _ = write!(err, "remove {} from the cluster? [y/N] ", names.join(", "));
    let _ = err.flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if matches!(line.trim(), "y" | "Y" | "yes") {
        return Ok(true);
    }
    Err(anyhow::Error::new(Failure::SpecInvalid(format!(
        "the removal of {} was not confirmed; nothing was changed. Re-run with --yes to remove them, or put them back in cluster.yaml",
        names.join(", ")
    ))))
}

#[allow(clippy::too_many_arguments)]
pub async fn rollout(
    client: &mut AdminClient<Channel>,
    addr: &str,
    file: &Path,
    dry_run: bool,
    allow_even: bool,
    no_snapshot: bool,
    yes: bool,
    format: Format,
) -> anyhow::Result<()> {
    let (spec_yaml, files) = load(file)?;
    let roles: BTreeMap<String, String> = kh::spec::parse(&spec_yaml)
        .map(|s| {
            s.nodes
                .iter()
                .map(|n| (n.name.clone(), n.role.as_str().to_string()))
                .collect()
        })
        .unwrap_or_default();
    let mut req = proto::RolloutRequest {
        spec_yaml,
        files,
        dry_run,
        allow_even,
        no_snapshot,
        confirm_removals: yes,
    };
    if !yes && !dry_run && std::io::stdin().is_terminal() && format == Format::Table {
        req.confirm_removals = confirm_removals(client, addr, &req).await?;
    }
    let stream = client
        .rollout(req)
        .await
        .map_err(|s| explain(addr, s))?
        .into_inner();
    follow(stream, format, dry_run, roles, "Rollout").await
}

/// Follows an operation's events that may be a dry run's (an etcd restore).
pub async fn follow_operation(
    stream: tonic::Streaming<RolloutEvent>,
    format: Format,
    dry_run: bool,
    label: &str,
) -> anyhow::Result<()> {
    follow(stream, format, dry_run, BTreeMap::new(), label).await
}

/// Follows any stream of rollout-shaped events (an etcd replacement too).
pub async fn follow_events(
    stream: tonic::Streaming<RolloutEvent>,
    format: Format,
    label: &str,
) -> anyhow::Result<()> {
    follow(stream, format, false, BTreeMap::new(), label).await
}

pub async fn status(
    client: &mut AdminClient<Channel>,
    addr: &str,
    follow_it: bool,
    format: Format,
    label: &str,
) -> anyhow::Result<()> {
    let stream = client
        .rollout_status(proto::RolloutStatusRequest { follow: follow_it })
        .await
        .map_err(|s| explain(addr, s))?
        .into_inner();
    let result = follow(stream, format, false, BTreeMap::new(), label).await;
    // Another operation waiting to be finished (an interrupted etcd
    // replacement) is named too, with the command that resumes it.
    if format == Format::Table {
        if let Ok(ops) = client.operations(proto::OperationsRequest {}).await {
            for o in ops
                .into_inner()
                .operations
                .iter()
                .filter(|o| o.pending && o.kind != "rollout")
            {
                outln!("\nPending: {} ({}): {}", o.operation, o.state, o.next);
            }
        }
    }
    result
}

pub async fn kubeconfig(
    client: &mut AdminClient<Channel>,
    addr: &str,
    output: Option<PathBuf>,
) -> anyhow::Result<()> {
    let r = client
        .kubeconfig(proto::KubeconfigRequest {})
        .await
        .map_err(|s| explain(addr, s))?
        .into_inner();
    match output {
        None => out!("{}", r.kubeconfig),
        Some(path) => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("writing {}", path.display()))?;
            f.write_all(r.kubeconfig.as_bytes())?;
            eprintln!("Wrote {} (admin.conf from {}, mode 0600). Use it with: kubectl --kubeconfig {} get nodes", path.display(), r.from_node, path.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_names_the_operation_its_start_and_state() {
        let ev = RolloutEvent {
            kind: Kind::Header as i32,
            operation: "rollout prod".into(),
            started_unix_ms: 1_700_000_000_000,
            message: "running".into(),
            ..Default::default()
        };
        assert_eq!(
            header_line(&ev),
            format!(
                "rollout prod: started {}, running",
                kh::time::rfc3339(1_700_000_000_000)
            )
        );
        let blank = header_line(&RolloutEvent::default());
        assert_eq!(blank, "-: started -, -");
    }

    #[test]
    fn a_failure_without_node_or_step_leaves_no_blanks() {
        let fin = RolloutEvent {
            message: "interrupted\nmore".into(),
            ..Default::default()
        };
        assert_eq!(failure_line("Rollout", &fin), "rollout failed: interrupted");
        let fin = RolloutEvent {
            node: "w-1".into(),
            step: "join-worker".into(),
            message: "boom".into(),
            ..Default::default()
        };
        assert_eq!(
            failure_line("Replacement", &fin),
            "replacement failed at w-1 join-worker: boom"
        );
        let fin = RolloutEvent {
            step: "verify".into(),
            message: "x".into(),
            ..Default::default()
        };
        assert_eq!(failure_line("Rollout", &fin), "rollout failed at verify: x");
    }

    #[test]
    fn the_removals_to_confirm_are_the_nodes_of_the_remove_nodes_phase() {
        let step = |node: &str, step: &str| proto::PlannedStep {
            node: node.into(),
            step: step.into(),
            state: "pending".into(),
            detail: String::new(),
        };
        let plan = proto::RolloutPlan {
            phases: vec![
                proto::PlannedPhase {
                    name: "changes".into(),
                    steps: vec![step("w-9", "removal")],
                },
                proto::PlannedPhase {
                    name: REMOVE_NODES.into(),
                    steps: vec![
                        step("w-2", "drain"),
                        step("w-2", "delete-node"),
                        step("cp-3", "load-balancer"),
                        step("cp-3", "delete-node"),
                    ],
                },
            ],
            ..Default::default()
        };
        assert_eq!(removals(&plan), ["w-2", "cp-3"]);
        assert!(removals(&proto::RolloutPlan::default()).is_empty());
    }

    #[test]
    fn a_lost_connection_says_the_coordinator_stopped_and_to_rerun() {
        let ev = connection_lost(
            "Rollout",
            "h2 protocol error: error reading a body from connection",
        );
        assert_eq!(ev.failure, "interrupted");
        assert!(
            ev.message
                .starts_with("the coordinator closed the connection (it stopped or restarted)"),
            "{}",
            ev.message
        );
        assert!(
            ev.hint.contains("re-run the same command (`khctl"),
            "{}",
            ev.hint
        );
    }
}
