//! The kh-coordinator binary: flags, logging, signals, systemd readiness.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kh_coordinator::config::{defaults, Config};
use kh_coordinator::Coordinator;

#[derive(Parser)]
#[command(
    name = "kh-coordinator",
    version,
    about = "The kh coordinator: certificate authority for kh identities, enrollment, node registry and the single point of control of a kh cluster.",
    long_about = None,
    after_help = "Start it once per cluster:\n  kh-coordinator serve --data-dir /var/lib/kh-coordinator --listen 0.0.0.0:7443 --advertise 10.0.0.5\n\nOn first start it creates the kh CA and writes admin credentials for khctl to DATA_DIR/admin.khconfig (0600)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the coordinator.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// A YAML config file (camelCase keys: dataDir, listen, advertise,
    /// heartbeatInterval, nodeCertValidity, adminCertValidity, defaultTokenTtl,
    /// secretKeyFile, metricsAddress).
    /// Flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the store, the secret key and admin.khconfig live. Back it up:
    /// it holds the cluster's join material and the kh CA.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The key that seals the store's secrets (32 bytes, 0600), kept outside
    /// the data dir so a copy of the data dir alone does not yield the kh CA.
    /// Created on first start if missing. Without it: systemd's credential
    /// kh-secret-key (LoadCredential=kh-secret-key:PATH), else
    /// DATA_DIR/secret.key.
    #[arg(long)]
    secret_key_file: Option<PathBuf>,
    /// Address to serve agents and khctl on [default: 0.0.0.0:7443].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// An IP or DNS name agents and khctl use to reach this coordinator;
    /// repeatable. Each becomes a SAN of the serving certificate.
    #[arg(long)]
    advertise: Vec<String>,
    /// How often agents send heartbeats; three missed ones mark a node NotReady [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    heartbeat_interval: Option<Duration>,
    /// Lifetime of node certificates; agents renew after two thirds [default: 90d].
    #[arg(long, value_parser = humantime::parse_duration)]
    node_cert_validity: Option<Duration>,
    /// How often to check the control planes' kubeadm certificates for
    /// automatic renewal (default 1h).
    #[arg(long, value_parser = humantime::parse_duration)]
    cert_check_interval: Option<Duration>,
    /// Address for a plain-HTTP /metrics and /healthz endpoint for
    /// Prometheus (etcd snapshot age, count, size) [default: none, off].
    #[arg(long)]
    metrics_address: Option<SocketAddr>,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    #[serde(default)]
    advertise: Vec<String>,
    heartbeat_interval: Option<String>,
    node_cert_validity: Option<String>,
    admin_cert_validity: Option<String>,
    default_token_ttl: Option<String>,
    secret_key_file: Option<PathBuf>,
    cert_check_interval: Option<String>,
    metrics_address: Option<SocketAddr>,
}

fn duration(field: &str, v: Option<String>) -> anyhow::Result<Option<Duration>> {
    v.map(|s| {
        humantime::parse_duration(&s).with_context(|| {
            format!("config field {field}: {s:?} is not a duration like 10s or 24h")
        })
    })
    .transpose()
}

/// The name of the systemd credential that holds the sealing key.
const KEY_CREDENTIAL: &str = "kh-secret-key";

/// The sealing key systemd passed with `LoadCredential=kh-secret-key:PATH`,
/// if it did.
fn credential_key_file() -> Option<PathBuf> {
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
    let path = PathBuf::from(dir).join(KEY_CREDENTIAL);
    path.exists().then_some(path)
}

fn config(args: ServeArgs) -> anyhow::Result<Config> {
    let file: FileConfig = match &args.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_yaml::from_str(&text).with_context(|| format!("config file {}", p.display()))?
        }
        None => FileConfig::default(),
    };
    let cfg = Config {
        data_dir: args
            .data_dir
            .or(file.data_dir)
            .context("--data-dir is required (or dataDir in --config)")?,
        listen: args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| defaults::LISTEN.parse().expect("valid default")),
        advertise: if args.advertise.is_empty() {
            file.advertise
        } else {
            args.advertise
        },
        heartbeat_interval: args
            .heartbeat_interval
            .or(duration("heartbeatInterval", file.heartbeat_interval)?)
            .unwrap_or_else(defaults::heartbeat_interval),
        node_cert_validity: args
            .node_cert_validity
            .or(duration("nodeCertValidity", file.node_cert_validity)?)
            .unwrap_or_else(defaults::node_cert_validity),
        admin_cert_validity: duration("adminCertValidity", file.admin_cert_validity)?
            .unwrap_or_else(defaults::admin_cert_validity),
        default_token_ttl: duration("defaultTokenTtl", file.default_token_ttl)?
            .unwrap_or_else(defaults::token_ttl),
        secret_key_file: args
            .secret_key_file
            .or(file.secret_key_file)
            .or_else(credential_key_file),
        cert_check_interval: args
            .cert_check_interval
            .or(duration("certCheckInterval", file.cert_check_interval)?)
            .unwrap_or_else(defaults::cert_check_interval),
        metrics_address: args.metrics_address.or(file.metrics_address),
    };
    cfg.validate().map_err(anyhow::Error::msg)?;
    Ok(cfg)
}

/// glibc's malloc arenas the coordinator uses at most, unless the environment
/// says otherwise.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_ARENAS: i32 = 2;

/// Caps glibc's malloc arenas. Must run before any other thread starts.
///
/// glibc gives threads their own malloc arenas, up to 8 per core, and memory
/// freed into one arena is only reused by threads allocating from it. The
/// coordinator holds one long-lived TLS and HTTP/2 connection per agent,
/// whose buffers are allocated and freed by whichever runtime or
/// blocking-pool thread happens to run it, so the same working set ends up
/// spread, fragmented, over every arena (up to 16 on 2 cores; a burst of
/// enrollments touches them all). With 5,000 agents held for 120 s, RSS was
/// 252 MiB with the default and 227 MiB with two arenas (kh-bench scale,
/// docs/BENCHMARKS.md). The coordinator spends a few percent of a core at
/// that size, so two arenas cost no measurable lock contention.
///
/// `MALLOC_ARENA_MAX` (or `GLIBC_TUNABLES=glibc.malloc.arena_max=N`) in the
/// environment, which glibc reads itself, still decides when set.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    let tuned = std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.arena_max"));
    if tuned {
        return;
    }
    // SAFETY: mallopt only changes a malloc parameter, under malloc's own
    // lock, and takes no pointers. It runs first in main, before the runtime
    // or anything else starts a thread, so every thread's arena obeys it.
    // The result only says whether glibc knew the parameter; if it did not,
    // its default stays in force, which is safe.
    let _ = unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) };
}

fn main() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    limit_malloc_arenas();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| {
            eprintln!("kh-coordinator: error: cannot start the async runtime: {e}");
            std::process::exit(1);
        });
    runtime.block_on(run());
}

async fn run() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KH_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let Cli { command } = Cli::parse();
    let result = match command {
        Command::Serve(args) => serve(args).await,
    };
    if let Err(e) = result {
        eprintln!("kh-coordinator: error: {e:#}");
        std::process::exit(1);
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = config(args)?;
    let data_dir = cfg.data_dir.clone();
    let listen = cfg.listen;
    let validity = cfg.admin_cert_validity;
    let key_file = cfg
        .secret_key_file
        .clone()
        .unwrap_or_else(|| data_dir.join(kh_coordinator::store::SECRET_KEY_FILE));
    let coord = tokio::task::spawn_blocking(move || {
        Coordinator::open(cfg, Arc::new(kh::time::SystemClock))
    })
    .await??;
    // A snapshot write or deletion a killed coordinator did not finish.
    match kh_coordinator::snapshots::clean_up(&coord) {
        Ok(removed) if !removed.is_empty() => {
            tracing::warn!(files = ?removed, "removed etcd snapshot files an interrupted write or deletion left behind")
        }
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "could not clean up the etcd snapshot directory"),
    }
    let wrote = coord.pki.ensure_admin_config(
        &data_dir,
        &coord.public_address(),
        validity,
        coord.clock.now(),
    )?;
    // The admin credential on disk is an admin identity like any other: it
    // is recorded so that `khctl admin list` shows it and it can be revoked.
    // A file that cannot be read only loses that: the coordinator still
    // serves, and the file's owner finds out when khctl cannot use it.
    let admin_file = kh_coordinator::store::admin_config_path(&data_dir);
    let adopted = kh::khconfig::KhConfig::load(&admin_file)
        .map_err(anyhow::Error::from)
        .and_then(|cfg| Ok(coord.admins.adopt(&cfg)?));
    if let Err(e) = adopted {
        tracing::warn!(path = %admin_file.display(), error = %format!("{e:#}"), "cannot record the admin credential in the data dir, so `khctl admin` cannot list or revoke it; move the file away and restart for a new one");
    }
    let listener = kh::tls::listen(listen)
        .with_context(|| format!("cannot listen on {listen}; is another process using it?"))?;
    warn_if_backlog_capped();
    let admin_path = kh_coordinator::store::admin_config_path(&data_dir);
    tracing::info!(
        listen = %listener.local_addr()?,
        advertise = %coord.public_address(),
        ca_cert_hash = %coord.pki.ca().cert_hash(),
        admin_config = %admin_path.display(),
        secret_key = %key_file.display(),
        new_admin_config = wrote,
        "kh-coordinator ready"
    );
    tokio::spawn(kh_coordinator::snapshots::schedule::run(coord.clone()));
    if let Some(addr) = coord.config.metrics_address {
        let metrics = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (--metrics-address)"))?;
        tracing::info!(metrics = %addr, "serving /metrics and /healthz");
        tokio::spawn(kh_coordinator::metrics::serve(coord.clone(), metrics));
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    tokio::spawn(kh_coordinator::rollout::autorenew::run(
        coord.clone(),
        coord.config.cert_check_interval,
    ));
    tokio::spawn(kh_coordinator::remediation::run(coord.clone()));
    kh_coordinator::server::serve(coord, listener, shutdown_signal()).await?;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    tracing::info!("kh-coordinator stopped");
    Ok(())
}

/// The kernel silently caps a listen backlog at `net.core.somaxconn`. A low
/// value makes a burst of agents connecting at once (many enrollments, or
/// the fleet reconnecting after a restart) lose connection attempts, which
/// each cost the agent a second.
fn warn_if_backlog_capped() {
    const SOMAXCONN: &str = "/proc/sys/net/core/somaxconn";
    let Some(max) = std::fs::read_to_string(SOMAXCONN)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    else {
        return;
    };
    if max < kh::tls::LISTEN_BACKLOG {
        tracing::warn!(
            somaxconn = max,
            wanted = kh::tls::LISTEN_BACKLOG,
            "net.core.somaxconn caps the listen backlog; with many agents, raise it (sysctl -w net.core.somaxconn={})",
            kh::tls::LISTEN_BACKLOG
        );
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command and every flag or argument of `cmd` and below that has
    /// no help text, with its path.
    fn undocumented(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        if cmd.get_about().is_none() && cmd.get_long_about().is_none() {
            out.push(format!("`{path}` has no about text"));
        }
        for a in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            if a.get_help().or(a.get_long_help()).is_none() {
                out.push(format!("`{path}` {} has no help text", a.get_id()));
            }
        }
        for sc in cmd.get_subcommands().filter(|sc| sc.get_name() != "help") {
            undocumented(sc, &format!("{path} {}", sc.get_name()), out);
        }
    }

    #[test]
    fn every_command_flag_and_argument_has_help_text() {
        let mut cmd = super::Cli::command();
        cmd.build();
        let mut missing = vec![];
        undocumented(&cmd, "kh-coordinator", &mut missing);
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }
}
