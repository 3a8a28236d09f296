//! khctl: the operator's command line. It talks only to the coordinator, with
//! the admin credentials of a khconfig file, and never to agents.

mod admin;
mod certs;
mod certs_renew;
mod etcd;
mod help;
mod nodes;
mod operation;
mod output;
mod prepare;
mod remediation;
mod reset;
mod restore;
mod rollout;
mod snapshot;
mod token;
mod upgrade;

use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use kh::khconfig::KhConfig;
use kh::proto::admin_client::AdminClient;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(
    name = "khctl",
    version,
    about = "Operate a kh cluster through its coordinator."
)]
struct Cli {
    /// Path to a khconfig file with admin credentials.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Output: `table` (default) for people or `json` for scripts; each
    /// command's --help says what it prints. For `kubeconfig`, the file to write.
    #[arg(short = 'o', long, global = true, value_name = "FORMAT")]
    output: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Enrollment tokens for new agents.
    #[command(subcommand)]
    Token(token::TokenCmd),
    /// List enrolled nodes with their health; `nodes delete NAME` deregisters one.
    #[command(arg = help::output("`table` (default): one row per node, then its warnings; `json`: one object for scripts, {\"nodes\": [...], \"heartbeatIntervalMs\": N}, each node with its facts, warnings and retirement"))]
    Nodes {
        #[command(subcommand)]
        sub: Option<nodes::NodesCmd>,
    },
    /// Prepare hosts for kubeadm: swap off, overlay and br_netfilter, sysctls,
    /// containerd's systemd cgroup driver. Safe to re-run; --dry-run shows the plan.
    #[command(arg = help::output("`table` (default): each node's steps as they finish, then a summary; `json`: nothing until the end, then one object for scripts, {\"dryRun\", \"ok\", \"nodes\": [...]}, each node with its steps"))]
    Prepare {
        /// A cluster spec; all its nodes are prepared and their roles recorded.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// A node to prepare (repeatable), instead of -f.
        #[arg(long = "node")]
        nodes: Vec<String>,
        /// Show what would change on every node and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Read-only checks of what kubeadm needs, on every node.
    #[command(arg = help::output("`table` (default): each node's checks with their fixes; `json`: one object for scripts, {\"ok\", \"nodes\": [...]}, each node with its checks"))]
    Preflight {
        /// A cluster spec; all its nodes are checked, each for its role.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// A node to check (repeatable), instead of -f.
        #[arg(long = "node")]
        nodes: Vec<String>,
    },
    /// Bring the cluster to the spec: preflight, prepare, init, CNI, control-plane
    /// joins one at a time, workers, verify. Resumes where an earlier run stopped.
    #[command(args_conflicts_with_subcommands = true)]
    #[command(arg = help::output("`table` (default): live progress (one line per node, redrawn on a terminal; one line per event when piped), then the outcome; `json`: nothing until the end, then one object for scripts: ok, failure, node, step, message, hint, dryRun, plan and every event"))]
    Rollout(RolloutArgs),
    /// Write admin.conf from a healthy control plane (to stdout, or -o FILE with mode 0600).
    #[command(arg = help::output("The file to write admin.conf to, with mode 0600 (`-` or none: stdout). Not a format: this command always writes YAML").value_name("FILE"))]
    Kubeconfig,
    /// etcd members, member removal and control-plane replacement.
    #[command(subcommand)]
    Etcd(EtcdCmd),
    /// Check the whole cluster: agents, the control-plane endpoint and each
    /// HAProxy's backends, etcd quorum and membership, an unfinished
    /// replacement, apiservers, nodes. Exits non-zero with each problem and
    /// the command that fixes it.
    #[command(arg = help::output("`table` (default): one line per check, and for each failed one the command that fixes it; `json`: one object for scripts, {\"ok\", \"checks\": [{\"name\", \"ok\", \"detail\", \"fix\"}]}"))]
    Health,
    /// Tear the cluster down: `kubeadm reset -f` on the workers, then on the
    /// control planes one at a time (the first last); the coordinator forgets
    /// its join material. Asks first unless --yes. With --node, reset one node,
    /// keeping etcd quorum.
    #[command(arg = help::output("`table` (default): the plan with --dry-run, else progress per node and step, then the outcome; `json`: one object for scripts, with --dry-run {\"ok\", \"dryRun\", \"plan\"}, else at the end ok, failure, node, step, message, hint and every event"))]
    Reset {
        /// Do not ask for confirmation (required when stdin is not a terminal).
        #[arg(long)]
        yes: bool,
        /// Reset only this node (a worker, or a control plane whose etcd
        /// member can go without losing quorum).
        #[arg(long)]
        node: Option<String>,
        /// With --node on a healthy control plane: accept that etcd cannot lose
        /// another member afterwards.
        #[arg(long)]
        force: bool,
        /// Show the order the nodes would be reset in; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Operations the coordinator holds (rollout, etcd replacement, reset,
    /// certificate renewal, etcd restore, upgrade):
    /// which are pending, which can be resumed, which can be cancelled.
    #[command(subcommand)]
    Operation(OperationCmd),
    /// Every step of every operation, from the audit log.
    #[command(arg = help::output("`table` (default): one row per entry; `json`: one object for scripts, {\"entries\": [{\"time\", \"operation\", \"node\", \"step\", \"outcome\", \"message\"}]}"))]
    History {
        /// How many entries, newest last.
        #[arg(long, default_value_t = 200)]
        limit: u32,
    },
    /// Admin credentials: list, create (-o FILE writes the khconfig file),
    /// revoke.
    #[command(subcommand)]
    Admin(admin::AdminCmd),
    /// The cluster's Kubernetes certificates: `certs check` shows when each
    /// expires on every node, `certs renew` renews them.
    #[command(subcommand)]
    Certs(certs::CertsCmd),
    /// Upgrade Kubernetes to the spec's kubernetesVersion the kubeadm way:
    /// plan and checks first, an etcd snapshot, then the first control
    /// plane (`kubeadm upgrade apply`), the others one at a time, the
    /// workers in batches of upgrade.maxUnavailable, each node drained,
    /// upgraded and uncordoned. Resumable: run the same command again.
    #[command(args_conflicts_with_subcommands = true)]
    #[command(arg = help::output("`table` (default): the plan, then live progress per node and phase, then the outcome; `json`: nothing until the end, then one object for scripts: ok, failure, node, step, message, hint, dryRun, plan and every event"))]
    Upgrade(upgrade::UpgradeArgs),
    /// The coordinator's replacement of failed control planes by spares
    /// (spec.remediation): status, pause, resume.
    #[command(subcommand)]
    Remediation(remediation::RemediationCmd),
    /// The spare pool (spec.spares): list, add NAME.
    #[command(subcommand)]
    Spares(remediation::SparesCmd),
}

#[derive(Subcommand)]
enum OperationCmd {
    /// Each operation: state, whether it changed anything, and what to do
    /// next (the exact command that resumes it, or how to cancel it).
    #[command(arg = help::output("`table` (default): one row per operation, then what to do next; `json`: one object for scripts, {\"operations\": [{\"kind\", \"operation\", \"state\", \"changed\", \"pending\", \"next\", ...}]}"))]
    Status,
    /// Forget a pending operation that stopped before its first change.
    /// One that changed something is refused: it must be resumed.
    #[command(arg = help::output("`table` (default): what was forgotten; `json`: one object for scripts, {\"message\"}"))]
    Cancel {
        /// `rollout`, `etcd-replace`, `certs-renew`, `etcd-restore` or `upgrade`; may be left out when only one is pending.
        kind: Option<String>,
    },
}

#[derive(Subcommand)]
enum EtcdCmd {
    /// Members with hex IDs, learner/voter, leader, health, DB size and kh node.
    #[command(arg = help::output("`table` (default): one row per member; `json`: one object for scripts, {\"members\": [...], \"via\": NODE}"))]
    Members,
    /// Remove one member by kh node name or hex ID, keeping quorum.
    #[command(arg = help::output("`table` (default): which member was removed; `json`: one object for scripts, {\"removed\": HEX_ID, \"message\"}"))]
    RemoveMember {
        /// The member to remove: its kh node name (cp-2) or its hex member ID.
        member: String,
        /// Allow removing a healthy member when the rest could then not lose another.
        #[arg(long)]
        force: bool,
        /// Remove it without taking an etcd snapshot first (by default one
        /// is taken, and a failed snapshot refuses the removal).
        #[arg(long)]
        no_snapshot: bool,
    },
    /// Replace a failed control plane: remove its member, join the new node
    /// under fresh join material, verify. `--with` the same name re-joins a
    /// rebuilt host in place. Resumable.
    #[command(arg = help::output("`table` (default): progress per node and step, then the outcome; `json`: nothing until the end, then one object for scripts: ok, failure, node, step, message, hint, dryRun, plan and every event"))]
    Replace {
        /// The control plane to replace (its kh node name): its etcd member
        /// is removed, its Kubernetes Node deleted, and the host reset if it
        /// answers. To resume an unfinished replacement, give the same
        /// --failed and --with again.
        #[arg(long, value_name = "NODE")]
        failed: String,
        /// The enrolled node that takes its place and joins as a control
        /// plane; the same name as --failed re-joins a rebuilt host in place.
        #[arg(long, value_name = "NODE")]
        with: String,
        /// Accept leaving the cluster unable to lose one more member until
        /// the new one has joined (when the failed member is still healthy).
        #[arg(long)]
        force: bool,
        /// The new node's cluster address [default: its agent's address].
        #[arg(long)]
        address: Option<String>,
        /// Replace without taking an etcd snapshot first (by default one is
        /// taken, and a failed snapshot refuses the replacement).
        #[arg(long)]
        no_snapshot: bool,
    },
    /// etcd snapshots stored on the coordinator, sealed: save, list, get,
    /// delete.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCmd),
    /// Disaster recovery after a lost quorum: restore a snapshot on every
    /// reachable control plane (etcd and the apiservers stopped, each member
    /// restored with its node name and peer URL into a new data dir, the old
    /// one moved aside), start them and verify. Every write made after the
    /// snapshot is lost. Asks first unless --yes. Resumable.
    #[command(arg = help::output("`table` (default): progress per node and step, then the outcome; `json`: nothing until the end, then one object for scripts: ok, failure, node, step, message, hint, dryRun, plan and every event"))]
    Restore {
        /// A stored snapshot's id (`khctl etcd snapshot list`), or a snapshot
        /// file (`etcdctl snapshot save`), which is first stored on the
        /// coordinator. To resume an unfinished restore, give the same id.
        #[arg(long, value_name = "ID|FILE")]
        snapshot: String,
        /// Do not ask for confirmation (required when stdin is not a terminal).
        #[arg(long)]
        yes: bool,
        /// Restore even though etcd still has quorum: every write made since
        /// the snapshot is lost.
        #[arg(long)]
        force: bool,
        /// Check the preconditions and print the plan; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(clap::Args)]
struct RolloutArgs {
    #[command(subcommand)]
    sub: Option<RolloutSub>,
    /// The cluster spec (cluster.yaml).
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Print the whole plan, with rendered kubeadm configuration (secrets
    /// redacted), and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Allow an even number of control planes (etcd quorum gains nothing from it).
    #[arg(long)]
    allow_even: bool,
    /// Join control planes into a running cluster without taking an etcd
    /// snapshot first (by default one is taken, and a failed snapshot stops
    /// the rollout before the first join).
    #[arg(long)]
    no_snapshot: bool,
    /// Confirm the removals the plan lists (nodes the spec no longer lists
    /// are drained, reset and deleted). Without it khctl asks on a terminal,
    /// and a rollout that removes nodes is refused otherwise.
    #[arg(long)]
    yes: bool,
}

#[derive(Subcommand)]
enum RolloutSub {
    /// The running or last rollout.
    #[command(arg = help::output("`table` (default): the rollout's events so far (and, with --follow, until it ends), then its outcome; `json`: nothing until the end, then one object for scripts: ok, failure, node, step, message, hint, dryRun, plan and every event"))]
    Status {
        /// Keep following a running rollout until it ends.
        #[arg(long)]
        follow: bool,
    },
}

/// khctl's exit codes: the one table. `khctl --help` prints it, and every
/// failure maps to it through [`Failure`] (classes of an operation's end)
/// or [`explain`] (gRPC status codes).
pub const EXIT_CODES: &[(i32, &str)] = &[
    (0, "success"),
    (
        1,
        "error: the coordinator unreachable, bad credentials, or an internal error",
    ),
    (
        2,
        "invalid input: the cluster spec, a flag or an argument (nothing was changed)",
    ),
    (
        3,
        "refused by a precondition: preflight, etcd quorum, another operation running (nothing was changed)",
    ),
    (
        4,
        "the operation failed on a node, or the cluster is unhealthy; follow the printed next step",
    ),
    (
        5,
        "interrupted: the coordinator stopped while the operation ran; it is persisted, re-run the same command",
    ),
    (
        6,
        "attention needed: a certificate is inside certificates.renewBefore, expired or unreadable, or a node could not be asked (`khctl certs check`)",
    ),
];

fn after_help() -> String {
    let mut s = String::from(
        "Credentials are read from --config, else $KHCONFIG, else ~/.config/kh/config.\nThe coordinator writes them to DATA_DIR/admin.khconfig on first start.\n\nExit codes:",
    );
    for (code, what) in EXIT_CODES {
        s.push_str(&format!("\n  {code}  {what}"));
    }
    s
}

/// Failures with their own exit codes, so scripts can branch on them.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The spec, a flag or an argument is invalid.
    #[error("{0}")]
    SpecInvalid(String),
    /// Refused by a precondition (preflight, quorum, a running operation)
    /// before anything changed.
    #[error("{0}")]
    Preflight(String),
    #[error("{0}")]
    Operation(String),
    /// The coordinator went away while an operation ran.
    #[error("{0}")]
    Interrupted(String),
    /// A check found something that needs the operator (`certs check`).
    #[error("{0}")]
    Attention(String),
}

impl Failure {
    fn exit_code(&self) -> i32 {
        match self {
            Failure::SpecInvalid(_) => 2,
            Failure::Preflight(_) => 3,
            Failure::Operation(_) => 4,
            Failure::Interrupted(_) => 5,
            Failure::Attention(_) => 6,
        }
    }

    /// The failure for an operation's end, by the class the coordinator
    /// gives it ("spec", "preflight", "interrupted", "rollout").
    pub fn of_class(class: &str, message: String) -> Failure {
        match class {
            "spec" => Failure::SpecInvalid(message),
            "preflight" => Failure::Preflight(message),
            "interrupted" => Failure::Interrupted(message),
            _ => Failure::Operation(message),
        }
    }
}

fn config_path(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p);
    }
    if let Some(p) = std::env::var_os("KHCONFIG").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME")
        .context("no --config, no $KHCONFIG and no $HOME to find ~/.config/kh/config")?;
    Ok(PathBuf::from(home).join(".config/kh/config"))
}

async fn admin(flag: Option<PathBuf>) -> anyhow::Result<(AdminClient<Channel>, String)> {
    let path = config_path(flag)?;
    let cfg = KhConfig::load(&path).with_context(|| {
        "khctl needs admin credentials: pass --config DATA_DIR/admin.khconfig (written by kh-coordinator on first start), or set $KHCONFIG"
    })?;
    let creds = cfg.creds();
    let channel = kh::tls::channel(
        &cfg.coordinator,
        kh::tls::host_of(&cfg.coordinator),
        Some(&creds),
        &cfg.ca,
    )?;
    // Every node's record is bounded (kh::bounds), but a large fleet's
    // `khctl nodes` answer can still pass tonic's default 4 MiB.
    let client = AdminClient::new(channel).max_decoding_message_size(64 << 20);
    Ok((client, cfg.coordinator))
}

/// A wrong or missing flag or argument: exit code 2, like clap's own.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Failure::SpecInvalid(message.into()))
}

/// Turns a gRPC failure into what the operator should know and do, and
/// its exit code: invalid input 2, a refusal by a precondition 3.
pub fn explain(coordinator: &str, s: tonic::Status) -> anyhow::Error {
    let message = s.message().to_string();
    match s.code() {
        tonic::Code::InvalidArgument | tonic::Code::NotFound => {
            return anyhow::Error::new(Failure::SpecInvalid(message))
        }
        tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists => {
            return anyhow::Error::new(Failure::Preflight(message))
        }
        tonic::Code::Aborted => return anyhow::Error::new(Failure::Operation(message)),
        _ => {}
    }
    if connection_dropped(&s) {
        return anyhow::Error::new(Failure::Interrupted(format!(
            "the coordinator at {coordinator} closed the connection (it stopped or restarted) before it answered ({message}). What it was doing is persisted: `khctl operation status` shows whether an operation is pending; re-run the same command once it is back"
        )));
    }
    match s.code() {
        tonic::Code::Unavailable => anyhow::anyhow!(
            "cannot reach the coordinator at {coordinator}: {}. Is kh-coordinator running there, and is the address in your khconfig right?",
            s.message()
        ),
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => anyhow::anyhow!(
            "the coordinator refused these credentials: {}",
            s.message()
        ),
        _ => anyhow::anyhow!("{}", s.message()),
    }
}

/// Whether a call failed because an established connection went away (the
/// coordinator died under it), as opposed to never connecting.
pub fn connection_dropped(s: &tonic::Status) -> bool {
    let m = s.message();
    matches!(
        s.code(),
        tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::Unavailable
            | tonic::Code::Cancelled
    ) && (m.contains("h2 protocol error")
        || m.contains("error reading a body from connection")
        || m.contains("connection reset")
        || m.contains("broken pipe"))
}

#[tokio::main]
async fn main() {
    let matches = Cli::command().after_help(after_help()).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Err(e) = run(cli).await {
        eprintln!("khctl: error: {e:#}");
        let code = e
            .downcast_ref::<Failure>()
            .map(Failure::exit_code)
            .unwrap_or(1);
        std::process::exit(code);
    }
}

fn format(output: &Option<String>) -> anyhow::Result<Format> {
    match output.as_deref() {
        None | Some("table") => Ok(Format::Table),
        Some("json") => Ok(Format::Json),
        Some(other) => Err(usage(format!(
            "-o {other}: use -o table or -o json (only `khctl kubeconfig -o FILE` takes a file)"
        ))),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let (mut client, addr) = admin(cli.config).await?;
    // For kubeconfig and admin create, -o names the file to write; elsewhere
    // it is the format.
    let kubeconfig_file = cli.output.clone().filter(|o| o != "-").map(PathBuf::from);
    let output = match cli.command {
        Command::Kubeconfig
        | Command::Admin(admin::AdminCmd::Create { .. })
        | Command::Etcd(EtcdCmd::Snapshot(_)) => Format::Table,
        _ => format(&cli.output)?,
    };
    match cli.command {
        Command::Token(cmd) => token::run(&mut client, &addr, cmd, output).await?,
        Command::Prepare {
            file,
            nodes,
            dry_run,
        } => {
            let targets = prepare::targets(file, nodes)?;
            prepare::prepare(&mut client, &addr, targets, dry_run, output).await?;
        }
        Command::Preflight { file, nodes } => {
            let targets = prepare::targets(file, nodes)?;
            prepare::preflight(&mut client, &addr, targets, output).await?;
        }
        Command::Rollout(args) => match (args.sub, args.file) {
            (Some(RolloutSub::Status { follow }), _) => {
                rollout::status(&mut client, &addr, follow, output, "Rollout").await?
            }
            (None, Some(file)) => {
                rollout::rollout(
                    &mut client,
                    &addr,
                    &file,
                    args.dry_run,
                    args.allow_even,
                    args.no_snapshot,
                    args.yes,
                    output,
                )
                .await?
            }
            (None, None) => {
                return Err(usage(
                    "khctl rollout needs -f cluster.yaml (or `khctl rollout status`)",
                ))
            }
        },
        Command::Kubeconfig => rollout::kubeconfig(&mut client, &addr, kubeconfig_file).await?,
        Command::Etcd(EtcdCmd::Members) => etcd::members(&mut client, &addr, output).await?,
        Command::Etcd(EtcdCmd::RemoveMember {
            member,
            force,
            no_snapshot,
        }) => {
            let req = kh::proto::EtcdRemoveMemberRequest {
                member,
                force,
                no_snapshot,
            };
            etcd::remove_member(&mut client, &addr, req, output).await?
        }
        Command::Etcd(EtcdCmd::Replace {
            failed,
            with,
            force,
            address,
            no_snapshot,
        }) => {
            let req = kh::proto::EtcdReplaceRequest {
                failed,
                with,
                force,
                address: address.unwrap_or_default(),
                no_snapshot,
            };
            etcd::replace(&mut client, &addr, req, output).await?
        }
        Command::Etcd(EtcdCmd::Restore {
            snapshot,
            yes,
            force,
            dry_run,
        }) => restore::restore(&mut client, &addr, snapshot, yes, force, dry_run, output).await?,
        Command::Etcd(EtcdCmd::Snapshot(cmd)) => {
            snapshot::run(&mut client, &addr, cmd, &cli.output).await?
        }
        Command::Health => etcd::health(&mut client, &addr, output).await?,
        Command::Reset {
            yes,
            node,
            force,
            dry_run,
        } => reset::reset(&mut client, &addr, node, yes, force, dry_run, output).await?,
        Command::Operation(OperationCmd::Status) => {
            operation::status(&mut client, &addr, output).await?
        }
        Command::Operation(OperationCmd::Cancel { kind }) => {
            operation::cancel(&mut client, &addr, kind.unwrap_or_default(), output).await?
        }
        Command::Upgrade(args) => upgrade::run(&mut client, &addr, args, output).await?,
        Command::History { limit } => etcd::history(&mut client, &addr, limit, output).await?,
        Command::Nodes { sub } => nodes::run(&mut client, &addr, sub, output).await?,
        Command::Admin(cmd) => admin::run(&mut client, &addr, cmd, kubeconfig_file, output).await?,
        Command::Certs(cmd) => certs::run(&mut client, &addr, cmd, output).await?,
        Command::Remediation(cmd) => {
            remediation::remediation(&mut client, &addr, cmd, output).await?
        }
        Command::Spares(cmd) => remediation::spares(&mut client, &addr, cmd, output).await?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_help_lists_every_exit_code_and_every_failure_has_one() {
        let help = Cli::command()
            .after_help(after_help())
            .render_long_help()
            .to_string();
        for (code, what) in EXIT_CODES {
            assert!(help.contains(&format!("{code}  {what}")), "{help}");
        }
        let codes: Vec<i32> = EXIT_CODES.iter().map(|(c, _)| *c).collect();
        for f in [
            Failure::SpecInvalid(String::new()),
            Failure::Preflight(String::new()),
            Failure::Operation(String::new()),
            Failure::Interrupted(String::new()),
            Failure::Attention(String::new()),
        ] {
            assert!(codes.contains(&f.exit_code()));
        }
    }

    fn code_of(e: anyhow::Error) -> i32 {
        e.downcast_ref::<Failure>()
            .map(Failure::exit_code)
            .unwrap_or(1)
    }

    #[test]
    fn one_refusal_has_one_exit_code_however_it_arrives() {
        // A refusal as a gRPC status (`etcd remove-member`) and as the class
        // of an operation's end (`etcd replace`) exit alike.
        let status = tonic::Status::failed_precondition("refusing: etcd has lost quorum");
        assert_eq!(code_of(explain("c:7443", status)), 3);
        let ended = anyhow::Error::new(Failure::of_class("preflight", "quorum".into()));
        assert_eq!(code_of(ended), 3);
        assert_eq!(
            code_of(explain("c", tonic::Status::invalid_argument("--with x"))),
            2
        );
        assert_eq!(
            code_of(anyhow::Error::new(Failure::of_class(
                "interrupted",
                String::new()
            ))),
            5
        );
        assert_eq!(
            code_of(explain(
                "c",
                tonic::Status::unavailable("connection refused")
            )),
            1
        );
    }
}
