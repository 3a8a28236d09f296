//! LoadBalancer: HAProxy in front of the control planes' apiservers, as the
//! kubeadm HA guide sets it up: a TCP frontend on the control-plane
//! endpoint's port, a backend with every control plane on 6443, round robin,
//! and an HTTPS `/healthz` check so a control plane whose apiserver is down
//! (or has lost etcd) takes no traffic.
//!
//! kh writes `/etc/haproxy/haproxy.cfg` only when that file is absent or was
//! written by kh (it carries [`MARKER`]). An operator's own config is never
//! touched: kh then keeps its frontend in a file of its own under
//! `/etc/haproxy/conf.d` and a systemd drop-in makes HAProxy load that
//! directory too.
//!
//! Every new config is checked with the real `haproxy -c` as a candidate file
//! next to its target and only then renamed into place, so an invalid config
//! never replaces a working one; HAProxy is reloaded only when something
//! changed, and started when the config is right but nothing serves it.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{display_argv, tail_or_empty, StepError};
use crate::host::Host;
use crate::steps::{Applier, FileChange, Plan, Step, StepKind, StepReport};

pub const HAPROXY_CONFIG: &str = "/etc/haproxy/haproxy.cfg";
/// The directory the drop-in makes HAProxy load after `haproxy.cfg`.
pub const INCLUDE_DIR: &str = "/etc/haproxy/conf.d";
/// kh's own file when the operator has a `haproxy.cfg` of their own.
pub const INCLUDE_FILE: &str = "/etc/haproxy/conf.d/kh-kubernetes.cfg";
/// Makes the distribution's haproxy.service load [`INCLUDE_DIR`] as well.
pub const SYSTEMD_DROP_IN: &str = "/etc/systemd/system/haproxy.service.d/kh-include.conf";
/// Distribution defaults that may override the drop-in's `CONFIG`.
pub const DEFAULTS_FILE: &str = "/etc/default/haproxy";
/// The line that marks a file as kh's to rewrite.
pub const MARKER: &str = "# Managed by kh";
/// Present while a config change awaits a successful reload.
pub const RELOAD_PENDING: &str = "/var/lib/kh-agent/haproxy-reload-pending";
const RELOAD_PENDING_DIR: &str = "/var/lib/kh-agent";
/// A candidate is its target's path plus this; HAProxy loads only `*.cfg`
/// from a directory, so a candidate in conf.d is never picked up.
pub const CANDIDATE_SUFFIX: &str = ".kh-candidate";

/// The names HAProxy accepts for proxies and servers.
const NAME_CHARS: &str = "letters, digits, `-`, `_`, `.` and `:`";
const FRONTEND_NAME: &str = "kh-apiserver";
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// A restart waits for the old process to finish; give it time.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(120);

const DROP_IN_TEXT: &str = "# Managed by kh: HAProxy also loads /etc/haproxy/conf.d, where kh keeps the\n# Kubernetes API frontend (kh-kubernetes.cfg) beside your own haproxy.cfg.\n[Service]\nEnvironment=\"CONFIG=/etc/haproxy/haproxy.cfg -f /etc/haproxy/conf.d\"\n";

/// Problems with a load-balancer request or with the config it produced.
#[derive(Debug, thiserror::Error)]
pub enum LoadBalancerError {
    #[error("invalid load-balancer {what} `{value}`: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: String,
    },

    #[error("HAProxy refused the new configuration for `{path}`: `{}` failed ({status}); stderr: {}. The running configuration was left in place and HAProxy was not reloaded. This usually means the operator's own HAProxy configuration conflicts with kh's (a proxy named kh-apiserver, another bind on the same port) or is itself broken; fix it and run the step again", display_argv(argv), tail_or_empty(stderr_tail))]
    Rejected {
        path: String,
        argv: Vec<String>,
        status: String,
        stderr_tail: String,
    },
}

/// One control plane behind the frontend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    /// The server's name in HAProxy's logs and stats: the node name.
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
}

/// Where the config goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// kh owns `/etc/haproxy/haproxy.cfg`.
    Whole,
    /// The operator owns `haproxy.cfg`; kh writes [`INCLUDE_FILE`].
    Include,
}

impl Layout {
    pub fn target(self) -> &'static str {
        match self {
            Layout::Whole => HAPROXY_CONFIG,
            Layout::Include => INCLUDE_FILE,
        }
    }
}

/// The configuration a load-balancer node must run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadBalancerConfig {
    /// `None` binds every address of the host.
    bind_address: Option<IpAddr>,
    frontend_port: u16,
    backends: Vec<Backend>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

fn host_port(address: Option<IpAddr>, port: u16) -> String {
    match address {
        None => format!("*:{port}"),
        Some(IpAddr::V4(a)) => format!("{a}:{port}"),
        Some(IpAddr::V6(a)) => format!("[{a}]:{port}"),
    }
}

/// Whether a config text was written by kh.
pub fn is_kh_owned(text: &str) -> bool {
    text.lines()
        .any(|line| line.trim_start().starts_with(MARKER))
}

impl LoadBalancerConfig {
    /// Validates the request: a non-zero port, backend names HAProxy takes
    /// (each once), non-zero backend ports. An empty backend list is allowed:
    /// the frontend then accepts and closes connections.
    pub fn new(
        bind_address: Option<IpAddr>,
        frontend_port: u16,
        backends: Vec<Backend>,
    ) -> Result<Self, LoadBalancerError> {
        if frontend_port == 0 {
            return Err(LoadBalancerError::Invalid {
                what: "frontend port",
                value: "0".into(),
                reason: "use the control-plane endpoint's port, such as 6443".into(),
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        for b in &backends {
            if !valid_name(&b.name) {
                return Err(LoadBalancerError::Invalid {
                    what: "backend name",
                    value: b.name.clone(),
                    reason: format!("HAProxy server names are 1 to 64 of {NAME_CHARS}"),
                });
            }
            if !seen.insert(b.name.as_str()) {
                return Err(LoadBalancerError::Invalid {
                    what: "backend name",
                    value: b.name.clone(),
                    reason: "it is listed twice; every control plane appears once".into(),
                });
            }
            if b.port == 0 {
                return Err(LoadBalancerError::Invalid {
                    what: "backend port",
                    value: format!("{} port 0", b.name),
                    reason: "use the apiserver's port, 6443".into(),
                });
            }
        }
        Ok(Self {
            bind_address,
            frontend_port,
            backends,
        })
    }

    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// The config text for `layout`: the whole `haproxy.cfg`, or the include
    /// file, which has its own `defaults` so the operator's (often HTTP)
    /// defaults do not apply to the TCP frontend.
    pub fn render(&self, layout: Layout) -> String {
        let mut s = String::new();
        s.push_str(MARKER);
        s.push_str(": written by kh-agent for the control planes the coordinator\n");
        s.push_str("# knows; rewritten whenever they change, so edits here are lost.\n");
        match layout {
            Layout::Whole => {
                s.push_str("\nglobal\n    log /dev/log local0\n    log /dev/log local1 notice\n")
            }
            Layout::Include => {
                s.push_str("# /etc/haproxy/haproxy.cfg is yours; kh never edits it.\n")
            }
        }
        s.push_str(concat!(
            "\n",
            "defaults\n",
            "    mode tcp\n",
            "    log global\n",
            "    option tcplog\n",
            "    option dontlognull\n",
            // A connection refused by a control plane that just went down is
            // retried on another before the check notices.
            "    option redispatch\n",
            "    retries 3\n",
            "    timeout connect 5s\n",
            "    timeout queue 30s\n",
            // Watches are long-lived; kube clients re-establish them anyway.
            "    timeout client 1h\n",
            "    timeout server 1h\n",
            "    timeout check 5s\n",
        ));
        s.push_str(&format!(
            "\nfrontend {FRONTEND_NAME}\n    bind {}\n    default_backend {FRONTEND_NAME}\n",
            host_port(self.bind_address, self.frontend_port)
        ));
        s.push_str(&format!(
            concat!(
                "\nbackend {}\n",
                "    balance roundrobin\n",
                "    option httpchk\n",
                "    http-check connect ssl\n",
                "    http-check send meth GET uri /healthz\n",
                "    http-check expect status 200\n",
                "    default-server inter 2s downinter 1s fall 3 rise 2 verify none\n",
            ),
            FRONTEND_NAME
        ));
        if self.backends.is_empty() {
            s.push_str("    # No control plane is ready yet.\n");
        }
        for b in &self.backends {
            s.push_str(&format!(
                "    server {} {} check\n",
                b.name,
                host_port(Some(b.address), b.port)
            ));
        }
        s
    }

    /// `haproxy -c` over what the service would load, with `candidate`
    /// standing in for the target file. In include mode that is
    /// `haproxy.cfg` and then every `*.cfg` of conf.d in lexical order, as
    /// HAProxy reads a directory.
    fn check_argv(
        &self,
        host: &Host,
        layout: Layout,
        candidate: &str,
    ) -> Result<Vec<String>, StepError> {
        let real = |abs: &str| -> Result<String, StepError> {
            Ok(host.path(abs)?.to_string_lossy().into_owned())
        };
        let mut argv = vec!["haproxy".to_string(), "-c".to_string()];
        match layout {
            Layout::Whole => {
                argv.push("-f".into());
                argv.push(real(candidate)?);
            }
            Layout::Include => {
                argv.push("-f".into());
                argv.push(real(HAPROXY_CONFIG)?);
                let mut names: Vec<String> = host
                    .read_dir(INCLUDE_DIR)?
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|n| n.ends_with(".cfg"))
                    .collect();
                let ours = INCLUDE_FILE.rsplit('/').next().unwrap_or_default();
                if !names.iter().any(|n| n == ours) {
                    names.push(ours.to_string());
                    names.sort();
                }
                for name in names {
                    let abs = format!("{INCLUDE_DIR}/{name}");
                    argv.push("-f".into());
                    argv.push(if abs == INCLUDE_FILE {
                        real(candidate)?
                    } else {
                        real(&abs)?
                    });
                }
            }
        }
        Ok(argv)
    }
}

/// `systemctl is-active haproxy`, which only reads: exit 0 means running.
fn haproxy_active(host: &Host) -> Result<bool, StepError> {
    let record = host.run(
        &crate::host::Cmd::new("systemctl")
            .args(["is-active", "haproxy"])
            .timeout(CHECK_TIMEOUT),
    )?;
    Ok(record.success())
}

fn systemctl(args: &[&str]) -> Vec<String> {
    std::iter::once("systemctl")
        .chain(args.iter().copied())
        .map(str::to_string)
        .collect()
}

/// A file kh owns outright: no backup of its previous version is kept.
fn owned_change(
    host: &Host,
    path: &str,
    before: Option<String>,
    after: String,
) -> Result<FileChange, StepError> {
    let mut change = FileChange::compute(host, path, before, after, 0o644)?;
    change.backup = None;
    Ok(change)
}

impl Step for LoadBalancerConfig {
    fn kind(&self) -> StepKind {
        StepKind::LoadBalancer
    }

    fn plan(&self, host: &Host) -> Result<Plan, StepError> {
        let mut plan = Plan::new(StepKind::LoadBalancer);
        let main = host.read_to_string(HAPROXY_CONFIG)?;
        let layout = match &main {
            Some(text) if !is_kh_owned(text) => Layout::Include,
            _ => Layout::Whole,
        };
        let target = layout.target();
        let rendered = self.render(layout);
        let before = host.read_to_string(target)?;
        let mut drop_in = None;
        match layout {
            Layout::Include => {
                plan.notes.push(format!(
                    "{HAPROXY_CONFIG} was not written by kh (no `{MARKER}` line), so kh keeps its frontend in {INCLUDE_FILE} and a systemd drop-in ({SYSTEMD_DROP_IN}) makes HAProxy load {INCLUDE_DIR}"
                ));
                let current = host.read_to_string(SYSTEMD_DROP_IN)?;
                if current.as_deref() != Some(DROP_IN_TEXT) {
                    drop_in = Some(owned_change(
                        host,
                        SYSTEMD_DROP_IN,
                        current,
                        DROP_IN_TEXT.to_string(),
                    )?);
                }
                let defaults = host.read_to_string(DEFAULTS_FILE)?.unwrap_or_default();
                if defaults
                    .lines()
                    .any(|l| l.trim_start().starts_with("CONFIG="))
                {
                    plan.notes.push(format!(
                        "warning: {DEFAULTS_FILE} sets CONFIG, which overrides the drop-in; add `-f {INCLUDE_DIR}` to it yourself"
                    ));
                }
            }
            Layout::Whole => {
                if host.exists(INCLUDE_FILE)? {
                    plan.notes.push(format!(
                        "warning: {INCLUDE_FILE} from an earlier run beside an operator's haproxy.cfg still exists; remove it and {SYSTEMD_DROP_IN}, since kh now writes {HAPROXY_CONFIG} itself"
                    ));
                }
            }
        }
        if self.backends.is_empty() {
            plan.notes.push(
                "no backends: the frontend accepts connections and closes them until a control plane is added".to_string(),
            );
        }
        let file_changed = before.as_deref() != Some(rendered.as_str());
        if !file_changed && drop_in.is_none() {
            // The file is right; but if an earlier run changed it and the
            // reload failed (or the agent died before reloading), HAProxy
            // still runs the old config. Finish that reload now.
            if host.exists(RELOAD_PENDING)? {
                plan.notes.push(format!(
                    "an earlier change to {target} was never followed by a successful reload ({RELOAD_PENDING} exists); reloading HAProxy now"
                ));
                plan.commands
                    .push(systemctl(&["reload-or-restart", "haproxy"]));
            } else if !haproxy_active(host)? {
                // The config is right but nothing serves it (a host that
                // rebooted with the unit disabled, a crash): start it.
                plan.notes.push(format!(
                    "{target} is in place but HAProxy is not running; starting it"
                ));
                plan.commands
                    .push(systemctl(&["reload-or-restart", "haproxy"]));
            }
            return Ok(plan);
        }
        let candidate = format!("{target}{CANDIDATE_SUFFIX}");
        if file_changed {
            plan.files
                .push(owned_change(host, target, before, rendered)?);
            plan.commands
                .push(self.check_argv(host, layout, &candidate)?);
        } else {
            // Only the drop-in changes: still check what the restarted
            // service will load.
            plan.commands.push(self.check_argv(host, layout, target)?);
        }
        match drop_in {
            Some(change) => {
                plan.files.push(change);
                // The service's command line changes: a reload would keep the
                // old one, so restart.
                plan.commands.push(systemctl(&["daemon-reload"]));
                plan.commands.push(systemctl(&["restart", "haproxy"]));
            }
            // Reloads a running HAProxy without dropping connections, and
            // starts one that is not running (a fresh install).
            None => plan
                .commands
                .push(systemctl(&["reload-or-restart", "haproxy"])),
        }
        Ok(plan)
    }

    fn apply(&self, host: &Host, plan: &Plan) -> StepReport {
        let mut applier = match Applier::start(host, StepKind::LoadBalancer, plan) {
            Ok(applier) => applier,
            Err(err) => return StepReport::failed(StepKind::LoadBalancer, &err),
        };
        let config = plan
            .files
            .iter()
            .find(|f| f.path == HAPROXY_CONFIG || f.path == INCLUDE_FILE)
            .cloned();
        let drop_in = plan
            .files
            .iter()
            .find(|f| f.path == SYSTEMD_DROP_IN)
            .cloned();
        let result = (|| {
            let mut reloaded = None;
            for argv in &plan.commands {
                match (
                    argv.first().map(String::as_str),
                    argv.get(1).map(String::as_str),
                ) {
                    (Some("haproxy"), _) => {
                        let candidate = config
                            .as_ref()
                            .map(|c| format!("{}{CANDIDATE_SUFFIX}", c.path));
                        if let (Some(c), Some(candidate)) = (&config, &candidate) {
                            if let Some((dir, _)) = c.path.rsplit_once('/') {
                                applier.host().create_dir_all(dir)?;
                            }
                            applier
                                .host()
                                .write_atomic(candidate, c.after.as_bytes(), c.mode)?;
                        }
                        let record = match applier.run(argv, CHECK_TIMEOUT) {
                            Ok(record) => record,
                            Err(err) => {
                                if let Some(candidate) = &candidate {
                                    let _ = applier.host().remove_file(candidate);
                                }
                                return Err(err);
                            }
                        };
                        if !record.success() {
                            if let Some(candidate) = &candidate {
                                applier.host().remove_file(candidate)?;
                            }
                            return Err(LoadBalancerError::Rejected {
                                path: config
                                    .as_ref()
                                    .map(|c| c.path.clone())
                                    .unwrap_or_else(|| INCLUDE_FILE.to_string()),
                                argv: record.argv.clone(),
                                status: record.status_text(),
                                stderr_tail: record.stderr_tail.clone(),
                            }
                            .into());
                        }
                        // Recorded before the swap and cleared only after a
                        // successful reload, so a crash in between is
                        // finished by the next run instead of reported
                        // Unchanged.
                        applier.host().create_dir_all(RELOAD_PENDING_DIR)?;
                        applier.host().write_atomic(
                            RELOAD_PENDING,
                            b"haproxy config changed by kh; reload pending\n",
                            0o600,
                        )?;
                        if let (Some(c), Some(candidate)) = (&config, &candidate) {
                            applier.host().rename(candidate, &c.path)?;
                            applier.record_file(c);
                        }
                    }
                    (Some("systemctl"), Some("daemon-reload")) => {
                        if let Some(change) = &drop_in {
                            applier.write_file(change)?;
                        }
                        applier.run(argv, RELOAD_TIMEOUT)?.check()?;
                    }
                    (Some("systemctl"), Some(verb @ ("restart" | "reload-or-restart"))) => {
                        applier.host().create_dir_all(RELOAD_PENDING_DIR)?;
                        applier.host().write_atomic(
                            RELOAD_PENDING,
                            b"haproxy config changed by kh; reload pending\n",
                            0o600,
                        )?;
                        applier.run(argv, RELOAD_TIMEOUT)?.check()?;
                        applier.host().remove_file(RELOAD_PENDING)?;
                        reloaded = Some(if verb == "restart" {
                            "restarted"
                        } else {
                            "reloaded"
                        });
                    }
                    _ => {
                        return Err(StepError::UnexpectedCommand {
                            step: StepKind::LoadBalancer,
                            argv: argv.clone(),
                        })
                    }
                }
            }
            let names: Vec<&str> = self.backends.iter().map(|b| b.name.as_str()).collect();
            let mut message = match &config {
                Some(c) => format!(
                    "wrote {} with {} backend{} ({}), checked with `haproxy -c`",
                    c.path,
                    names.len(),
                    if names.len() == 1 { "" } else { "s" },
                    if names.is_empty() {
                        "none yet".to_string()
                    } else {
                        names.join(", ")
                    }
                ),
                None => "the HAProxy config was already in place".to_string(),
            };
            if drop_in.is_some() {
                message.push_str(&format!(", installed {SYSTEMD_DROP_IN}"));
            }
            if let Some(how) = reloaded {
                message.push_str(&format!(", {how} haproxy"));
            }
            Ok(message)
        })();
        applier.finish(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(name: &str, ip: &str) -> Backend {
        Backend {
            name: name.into(),
            address: ip.parse().unwrap(),
            port: 6443,
        }
    }

    #[test]
    fn the_whole_config_is_rendered_exactly() {
        let lb = LoadBalancerConfig::new(
            Some("10.0.0.5".parse().unwrap()),
            6443,
            vec![backend("cp-1", "10.0.0.11"), backend("cp-2", "fd00::12")],
        )
        .unwrap();
        assert_eq!(
            lb.render(Layout::Whole),
            "# Managed by kh: written by kh-agent for the control planes the coordinator
# knows; rewritten whenever they change, so edits here are lost.

global
    log /dev/log local0
    log /dev/log local1 notice

defaults
    mode tcp
    log global
    option tcplog
    option dontlognull
    option redispatch
    retries 3
    timeout connect 5s
    timeout queue 30s
    timeout client 1h
    timeout server 1h
    timeout check 5s

frontend kh-apiserver
    bind 10.0.0.5:6443
    default_backend kh-apiserver

backend kh-apiserver
    balance roundrobin
    option httpchk
    http-check connect ssl
    http-check send meth GET uri /healthz
    http-check expect status 200
    default-server inter 2s downinter 1s fall 3 rise 2 verify none
    server cp-1 10.0.0.11:6443 check
    server cp-2 [fd00::12]:6443 check
"
        );
    }

    #[test]
    fn the_include_has_its_own_defaults_and_no_global() {
        let lb = LoadBalancerConfig::new(None, 8443, vec![]).unwrap();
        let text = lb.render(Layout::Include);
        assert!(is_kh_owned(&text));
        assert!(!text.contains("\nglobal\n"), "{text}");
        assert!(text.contains("\ndefaults\n    mode tcp\n"), "{text}");
        assert!(text.contains("    bind *:8443\n"), "{text}");
        assert!(
            text.contains("# No control plane is ready yet.\n"),
            "{text}"
        );
        assert!(!text.contains("    server "), "{text}");
    }

    #[test]
    fn requests_are_validated() {
        let bad = [
            (6443, vec![backend("cp 1", "10.0.0.1")], "backend name"),
            (
                6443,
                vec![backend("cp-1", "10.0.0.1"), backend("cp-1", "10.0.0.2")],
                "listed twice",
            ),
            (0, vec![], "frontend port"),
            (
                6443,
                vec![Backend {
                    port: 0,
                    ..backend("cp-1", "10.0.0.1")
                }],
                "backend port",
            ),
        ];
        for (port, backends, want) in bad {
            let err = LoadBalancerConfig::new(None, port, backends)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err}");
        }
        assert!(!is_kh_owned("global\n    daemon\n"));
    }
}
