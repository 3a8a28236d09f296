//! The kh-agent binary: flags, logging, signals, systemd readiness.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kh::authz::{AuthzLayer, AGENT_SERVICES};
use kh::proto::agent_server::AgentServer;
use kh::tls::{self, ClientAuth, ServerCert};
use kh_agent::enroll::{EnrollArgs, EnrollOutcome};
use kh_agent::identity::Paths;
use kh_agent::state::AgentState;
use kh_host::Host;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Parser)]
#[command(
    name = "kh-agent",
    version,
    about = "The kh node agent: runs typed host steps (swap, kernel modules, sysctls, containerd, kubeadm, etcd) when the kh coordinator asks, and nothing else.",
    after_help = "First enroll, with the command `khctl token create --node NAME` printed, then run `kh-agent serve` (normally as the kh-agent systemd service)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Join this host to a coordinator with a single-use token.
    Enroll(EnrollCmd),
    /// Serve the coordinator's step requests and report heartbeats.
    Serve(ServeCmd),
}

#[derive(clap::Args)]
struct EnrollCmd {
    /// host:port of the coordinator.
    #[arg(long)]
    coordinator: String,
    /// The token printed by `khctl token create`. Prefer --token-file:
    /// every user of the host sees command-line arguments in `ps`.
    #[arg(
        long,
        required_unless_present = "token_file",
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// A file holding the token, or `-` to read it from stdin (as in the
    /// command `khctl token create` prints), so it never shows in `ps`.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// sha256:<hex> of the coordinator CA; enrollment aborts before sending anything if it differs.
    #[arg(long)]
    ca_cert_hash: String,
    /// The node name the token was created for.
    #[arg(long)]
    node_name: String,
    /// Where the agent keeps its key and certificates.
    #[arg(long, default_value = "/var/lib/kh-agent")]
    data_dir: PathBuf,
    /// Replace an existing enrollment in --data-dir.
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args)]
struct ServeCmd {
    /// Where `kh-agent enroll` put the agent's key, certificates and
    /// enrollment; renewed certificates are written there too.
    #[arg(long, default_value = "/var/lib/kh-agent")]
    data_dir: PathBuf,
    /// Address for the coordinator's gRPC calls.
    #[arg(long, default_value = "0.0.0.0:7444")]
    listen: SocketAddr,
    /// Address for the plain-HTTP /healthz, /readyz and /metrics endpoint.
    #[arg(long, default_value = "0.0.0.0:7445")]
    health_listen: SocketAddr,
    /// host:port the coordinator should call; defaults to --listen when it
    /// names one address, else the host's first non-loopback address.
    #[arg(long)]
    advertise: Option<String>,
    /// Prefix for every host path the agent reads or writes.
    #[arg(long, default_value = "/")]
    host_root: PathBuf,
    /// Colon-separated directories to find host commands in [default: $PATH].
    #[arg(long)]
    path: Option<String>,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KH_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Enroll(c) => enroll(c).await,
        Command::Serve(c) => serve(c).await,
    };
    if let Err(e) = result {
        eprintln!("kh-agent: error: {e:#}");
        std::process::exit(1);
    }
}

/// The enrollment token from --token, or from --token-file (`-`: stdin),
/// without surrounding whitespace.
fn read_token(c: &EnrollCmd) -> anyhow::Result<String> {
    use anyhow::Context;
    use std::io::Read;
    let text = match (&c.token, &c.token_file) {
        (Some(token), _) => token.clone(),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("could not read the token from stdin (--token-file -)")?;
            text
        }
        (None, Some(path)) => std::fs::read_to_string(path).with_context(|| {
            format!(
                "could not read the token from --token-file {}; write the token `khctl token create` printed into it",
                path.display()
            )
        })?,
        (None, None) => anyhow::bail!("give --token-file FILE (or - for stdin) or --token"),
    };
    let token = text.trim().to_string();
    if token.is_empty() {
        anyhow::bail!(
            "the token is empty; pass the token `khctl token create --node NAME` printed"
        );
    }
    Ok(token)
}

async fn enroll(c: EnrollCmd) -> anyhow::Result<()> {
    let paths = Paths::new(&c.data_dir);
    let token = read_token(&c)?;
    let outcome = kh_agent::enroll::enroll(
        &paths,
        EnrollArgs {
            coordinator: c.coordinator.clone(),
            token,
            ca_cert_hash: c.ca_cert_hash,
            node_name: c.node_name.clone(),
            force: c.force,
        },
    )
    .await?;
    let until = |t: Option<std::time::SystemTime>| {
        t.map(|t| humantime::format_rfc3339_seconds(t).to_string())
            .unwrap_or_default()
    };
    match outcome {
        EnrollOutcome::Enrolled { not_after } => println!(
            "Enrolled as node {} with the coordinator at {}; certificate valid until {}.\nCredentials are in {}. Start the agent with `kh-agent serve --data-dir {}` (or `systemctl enable --now kh-agent`).",
            c.node_name, c.coordinator, until(not_after), c.data_dir.display(), c.data_dir.display()
        ),
        EnrollOutcome::AlreadyEnrolled { not_after } => println!(
            "Already enrolled as node {} with the coordinator at {} (certificate valid until {}); nothing to do.",
            c.node_name, c.coordinator, until(not_after)
        ),
    }
    Ok(())
}

async fn serve(c: ServeCmd) -> anyhow::Result<()> {
    let paths = Paths::new(&c.data_dir);
    let id = paths.load()?;
    let search: Vec<PathBuf> = c
        .path
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_else(|| DEFAULT_PATH.to_string())
        .split(':')
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect();
    let host = Host::new(&c.host_root, search);
    // A step killed with the agent (SIGKILL, power loss) could not remove
    // its kubeadm config, which holds a token or a certificate key.
    match kh_host::kube::remove_leftover_configs(&host) {
        Ok(removed) if !removed.is_empty() => {
            tracing::warn!(files = ?removed, "removed kubeadm configs an interrupted step left behind")
        }
        Ok(_) => {}
        Err(e) => {
            tracing::error!(error = %e, "could not remove kubeadm configs an interrupted step left behind; remove them by hand, they hold join secrets")
        }
    }
    // A snapshot streamed by an agent that was killed holds every Secret
    // of the cluster.
    match kh_host::kube::remove_leftover_snapshots(&host) {
        Ok(removed) if !removed.is_empty() => {
            tracing::warn!(files = ?removed, "removed etcd snapshot files an interrupted stream left behind")
        }
        Ok(_) => {}
        Err(e) => {
            tracing::error!(error = %e, "could not remove etcd snapshot files an interrupted stream left behind; remove them by hand, they hold every Secret of the cluster")
        }
    }
    let server_cert = ServerCert::new(tls::certified_key(
        &format!("{}{}", id.cert_pem, id.ca_pem),
        &id.key_pem,
    )?);
    let tls_config = tls::server_config(&id.ca_pem, server_cert.clone(), ClientAuth::Required)?;
    let listener = tokio::net::TcpListener::bind(c.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (--listen); is another agent running?",
                c.listen
            )
        })?;
    let health = tokio::net::TcpListener::bind(c.health_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--health-listen)", c.health_listen))?;
    let port = listener.local_addr()?.port();
    let endpoint = match c.advertise {
        Some(a) => a,
        None if !c.listen.ip().is_unspecified() => SocketAddr::new(c.listen.ip(), port).to_string(),
        None => {
            let ip: IpAddr = host
                .interface_addresses()?
                .into_iter()
                .next()
                .context("--listen binds every address and the host has no non-loopback address to advertise; pass --advertise HOST:PORT")?;
            SocketAddr::new(ip, port).to_string()
        }
    };
    // The coordinator refuses heartbeats with an endpoint it cannot dial;
    // say so now rather than in every refused heartbeat.
    kh::bounds::endpoint("--advertise", &endpoint).context(
        "pass --advertise HOST:PORT, where HOST is this host's IP (IPv6 in brackets) or DNS name",
    )?;
    let extra: Vec<IpAddr> = endpoint
        .parse::<SocketAddr>()
        .map(|s| vec![s.ip()])
        .unwrap_or_default();
    let node = id.enrollment.node_name.clone();
    let coordinator = id.enrollment.coordinator.clone();
    let state = AgentState::new(paths, id, host, server_cert, endpoint.clone(), extra);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let heartbeat = tokio::spawn(kh_agent::heartbeat::run(state.clone()));
    let mut health_stop = stop_rx.clone();
    let health_app = kh_agent::health::router(state.clone());
    let health_task = tokio::spawn(async move {
        axum::serve(health, health_app)
            .with_graceful_shutdown(async move {
                let _ = health_stop.wait_for(|s| *s).await;
            })
            .await
    });
    tracing::info!(%node, %endpoint, %coordinator, health = %c.health_listen, root = %c.host_root.display(), "kh-agent ready");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let mut grpc_stop = stop_rx.clone();
    let grpc = tonic::transport::Server::builder()
        .layer(AuthzLayer::new(AGENT_SERVICES))
        .add_service(AgentServer::new(kh_agent::rpc::AgentService(state.clone())))
        .serve_with_incoming_shutdown(tls::incoming(listener, tls_config), async move {
            let _ = grpc_stop.wait_for(|s| *s).await;
        });
    let signals = async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("shutting down");
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        let _ = stop_tx.send(true);
    };
    let (served, ()) = tokio::join!(grpc, signals);
    served?;
    heartbeat.abort();
    let _ = health_task.await;
    tracing::info!("kh-agent stopped");
    Ok(())
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
        undocumented(&cmd, "kh-agent", &mut missing);
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }
}
