//! kubeadm steps: init, join, reset, and the upkeep of join material
//! (bootstrap tokens and the `kubeadm-certs` Secret).
//!
//! Configs reach kubeadm as files (`--config`), because they carry the
//! bootstrap token and the certificate key, and a file that is 0600 in a
//! 0700 directory and gone after the step is the narrowest exposure kubeadm
//! allows: no kubeadm command here has a secret on its command line, where
//! `ps` shows it to every user. `token create` and `init phase upload-certs`
//! take the same InitConfiguration as init for that reason. kubeadm prints
//! the join command with the token and the key after `init`, so every
//! command's output is scrubbed of the secrets found in its config.

use std::time::Duration;

use serde::Deserialize;

use crate::error::{HostError, StepError};
use crate::host::{Cmd, Host};
use crate::kube::apply::{
    apply_with, command_error, current_text, go_duration, Done, KubeApplier, StepFile,
};
use crate::kube::error::KubeError;
use crate::kube::{
    ADMIN_CONF, AGENT_STATE_DIR, APISERVER_MANIFEST, INIT_CONFIG_FILE, JOIN_CONFIG_FILE,
    KUBELET_CONF, MANIFESTS_DIR, TOKEN_CONFIG_FILE, UPLOAD_CERTS_CONFIG_FILE,
};
use crate::secret::{SecretString, REDACTED};
use crate::steps::{Plan, Step, StepKind, StepReport};

/// `kubeadm init` pulls images and waits for the control plane to come up;
/// on a slow registry that takes minutes.
const INIT_TIMEOUT: Duration = Duration::from_secs(600);
/// A control-plane join also waits for the etcd learner to catch up.
const JOIN_TIMEOUT: Duration = Duration::from_secs(600);
const RESET_TIMEOUT: Duration = Duration::from_secs(300);
const TOKEN_TIMEOUT: Duration = Duration::from_secs(120);
const UPLOAD_CERTS_TIMEOUT: Duration = Duration::from_secs(300);

/// Keys whose string values are secret in any kubeadm config document.
const SECRET_CONFIG_KEYS: [&str; 3] = ["token", "certificateKey", "tlsBootstrapToken"];

const INIT_NEXT: &str = "Fix the cause kubeadm reports, then reset the node (`kubeadm reset -f`, the KubeadmReset step) before running init again: a half-initialized node fails kubeadm's preflight";
const JOIN_NEXT: &str = "Check that this node reaches the control-plane endpoint and that the token, CA hash and (for a control plane) certificate key or placed CA files are current; reset the node (the KubeadmReset step) before joining again";
const RESET_NEXT: &str = "`kubeadm reset -f` goes on past most errors, so this usually means kubeadm itself is broken or missing; check it with `kubeadm version`";
const TOKEN_NEXT: &str = "Run it on a healthy control plane: it needs /etc/kubernetes/admin.conf and an apiserver that answers";
const UPLOAD_CERTS_NEXT: &str = "Run it on a healthy control plane with the full CA set under /etc/kubernetes/pki, /etc/kubernetes/admin.conf and an apiserver that answers";

/// The host path as kubeadm on this host must see it (under the root).
pub(crate) fn real_path(host: &Host, abs: &str) -> Result<String, HostError> {
    Ok(host.path(abs)?.display().to_string())
}

/// The secret values inside a kubeadm config (tokens, certificate keys), so
/// a command reading the config can have them scrubbed from its output. A
/// config that does not parse yields nothing: kubeadm will refuse it anyway,
/// and its parse errors quote line numbers, not values.
pub fn config_secrets(config: &SecretString) -> Vec<SecretString> {
    fn walk(value: &serde_yaml::Value, out: &mut Vec<SecretString>) {
        match value {
            serde_yaml::Value::Mapping(map) => {
                for (key, value) in map {
                    if let (Some(key), Some(text)) = (key.as_str(), value.as_str()) {
                        if SECRET_CONFIG_KEYS.contains(&key) && !text.is_empty() {
                            out.push(SecretString::new(text));
                        }
                    }
                    walk(value, out);
                }
            }
            serde_yaml::Value::Sequence(items) => items.iter().for_each(|item| walk(item, out)),
            serde_yaml::Value::Tagged(tagged) => walk(&tagged.value, out),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for document in serde_yaml::Deserializer::from_str(config.expose()) {
        match serde_yaml::Value::deserialize(document) {
            Ok(value) => walk(&value, &mut out),
            Err(_) => break,
        }
    }
    out
}

/// Notes a temporary file left behind by an interrupted run, which the
/// apply of an otherwise empty plan removes.
fn note_leftover(host: &Host, path: &str, plan: &mut Plan) -> Result<(), StepError> {
    if host.exists(path)? {
        plan.notes.push(format!(
            "removes `{path}`, left behind by an interrupted run (it may hold secrets)"
        ));
    }
    Ok(())
}

fn remove_leftover(
    applier: &KubeApplier<'_>,
    path: &str,
    message: &str,
) -> Result<Done, KubeError> {
    if applier.host().remove_file(path)? {
        Ok(Done::Unchanged(format!(
            "{message}; removed `{path}` left behind by an interrupted run"
        )))
    } else {
        Ok(Done::Unchanged(message.to_string()))
    }
}

/// The kubeadm configs steps write to [`AGENT_STATE_DIR`] for the length of
/// one command; each holds a token or a certificate key.
pub const STEP_CONFIG_FILES: [&str; 4] = [
    INIT_CONFIG_FILE,
    JOIN_CONFIG_FILE,
    TOKEN_CONFIG_FILE,
    UPLOAD_CERTS_CONFIG_FILE,
];

/// Removes the step configs (and half-written temp copies of them) that an
/// agent killed during a step left behind, returning their paths. Steps
/// remove their config whatever the outcome, but nothing runs after a
/// SIGKILL or a power loss, so the agent calls this when it starts, before
/// it takes any step: a token must not wait on disk for the next run of the
/// same step. Only these names are touched; the directory may also be the
/// agent's own data dir.
pub fn remove_leftover_configs(host: &Host) -> Result<Vec<String>, HostError> {
    let mut removed = Vec::new();
    for name in host.read_dir(AGENT_STATE_DIR)?.unwrap_or_default() {
        let path = format!("{AGENT_STATE_DIR}/{name}");
        let half_written = STEP_CONFIG_FILES.iter().any(|file| {
            file.rsplit_once('/')
                .is_some_and(|(_, base)| name.starts_with(&format!(".{base}.kh-tmp-")))
        });
        if (STEP_CONFIG_FILES.contains(&path.as_str()) || half_written)
            && host.remove_file(&path)?
        {
            removed.push(path);
        }
    }
    Ok(removed)
}

/// The planned change of a temporary config file; a leftover from an
/// interrupted run shows as replaced.
fn temp_change(host: &Host, file: &StepFile) -> Result<crate::steps::FileChange, StepError> {
    let existing = current_text(host, file.path())?;
    Ok(file.change(existing.as_deref()))
}

// ---------------------------------------------------------------------------
// init

/// `kubeadm init --config …` on the first control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeadmInit {
    /// The rendered InitConfiguration and ClusterConfiguration.
    pub config: SecretString,
    /// Uploads the control-plane certificates to the `kubeadm-certs` Secret,
    /// encrypted with the config's certificate key, for later joins.
    pub upload_certs: bool,
}

impl KubeadmInit {
    fn file(&self) -> StepFile {
        StepFile::secret_temporary(INIT_CONFIG_FILE, &self.config)
    }

    fn command(&self, host: &Host) -> Result<Cmd, HostError> {
        let mut cmd = Cmd::new("kubeadm")
            .args(["init", "--config"])
            .arg(real_path(host, INIT_CONFIG_FILE)?);
        if self.upload_certs {
            cmd = cmd.arg("--upload-certs");
        }
        for secret in config_secrets(&self.config) {
            cmd = cmd.redact_output(&secret);
        }
        Ok(cmd.timeout(INIT_TIMEOUT))
    }
}

impl Step for KubeadmInit {
    fn kind(&self) -> StepKind {
        StepKind::KubeadmInit
    }

    fn plan(&self, host: &Host) -> Result<Plan, StepError> {
        let mut plan = Plan::new(StepKind::KubeadmInit);
        let admin = host.exists(ADMIN_CONF)?;
        let apiserver = host.exists(APISERVER_MANIFEST)?;
        if admin && apiserver {
            plan.notes.push(format!(
                "already initialized: {ADMIN_CONF} and {APISERVER_MANIFEST} exist"
            ));
            note_leftover(host, INIT_CONFIG_FILE, &mut plan)?;
            return Ok(plan);
        }
        if admin || apiserver {
            let present = if admin {
                ADMIN_CONF
            } else {
                APISERVER_MANIFEST
            };
            plan.notes.push(format!(
                "partially initialized: {present} exists, so kubeadm's preflight will likely refuse; reset the node (KubeadmReset) first if init fails"
            ));
        }
        let file = self.file();
        plan.files.push(temp_change(host, &file)?);
        plan.commands.push(self.command(host)?.argv().to_vec());
        plan.notes.push(format!(
            "{INIT_CONFIG_FILE} holds the bootstrap token and certificate key: written 0600, removed after kubeadm init whatever its outcome"
        ));
        Ok(plan)
    }

    fn apply(&self, host: &Host, plan: &Plan) -> StepReport {
        apply_with(host, StepKind::KubeadmInit, plan, |applier| {
            if plan.is_empty() {
                return remove_leftover(applier, INIT_CONFIG_FILE, "already initialized");
            }
            let file = self.file();
            let cmd = self.command(applier.host())?;
            applier.check_plan(plan, &[&file], &[&cmd])?;
            applier.with_temp_file(&file, &plan.files[0], |applier| {
                applier.run_checked(&cmd, INIT_NEXT)
            })?;
            Ok(Done::Changed(
                "kubeadm init set up the first control plane".to_string(),
            ))
        })
    }
}

// ---------------------------------------------------------------------------
// join

/// `kubeadm join --config …`, as a worker or a control plane (which one is
/// in the config; `control_plane` tells the step what to expect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeadmJoin {
    /// The rendered JoinConfiguration.
    pub config: SecretString,
    pub control_plane: bool,
}

impl KubeadmJoin {
    fn file(&self) -> StepFile {
        StepFile::secret_temporary(JOIN_CONFIG_FILE, &self.config)
    }

    fn command(&self, host: &Host) -> Result<Cmd, HostError> {
        let mut cmd = Cmd::new("kubeadm")
            .args(["join", "--config"])
            .arg(real_path(host, JOIN_CONFIG_FILE)?);
        for secret in config_secrets(&self.config) {
            cmd = cmd.redact_output(&secret);
        }
        Ok(cmd.timeout(JOIN_TIMEOUT))
    }

    fn role(&self) -> &'static str {
        if self.control_plane {
            "control plane"
        } else {
            "worker"
        }
    }
}

impl Step for KubeadmJoin {
    fn kind(&self) -> StepKind {
        StepKind::KubeadmJoin
    }

    fn plan(&self, host: &Host) -> Result<Plan, StepError> {
        let mut plan = Plan::new(StepKind::KubeadmJoin);
        if host.exists(KUBELET_CONF)? {
            plan.notes
                .push(format!("already joined: {KUBELET_CONF} exists"));
            if self.control_plane && !host.exists(APISERVER_MANIFEST)? {
                plan.notes.push(format!(
                    "warning: {APISERVER_MANIFEST} is missing, so this node joined as a worker; reset it (KubeadmReset) to join it as a control plane"
                ));
            }
            note_leftover(host, JOIN_CONFIG_FILE, &mut plan)?;
            return Ok(plan);
        }
        let file = self.file();
        plan.files.push(temp_change(host, &file)?);
        plan.commands.push(self.command(host)?.argv().to_vec());
        plan.notes.push(format!(
            "joins as a {}; {JOIN_CONFIG_FILE} holds the join token: written 0600, removed after kubeadm join whatever its outcome",
            self.role()
        ));
        Ok(plan)
    }

    fn apply(&self, host: &Host, plan: &Plan) -> StepReport {
        apply_with(host, StepKind::KubeadmJoin, plan, |applier| {
            if plan.is_empty() {
                return remove_leftover(applier, JOIN_CONFIG_FILE, "already joined");
            }
            let file = self.file();
            let cmd = self.command(applier.host())?;
            applier.check_plan(plan, &[&file], &[&cmd])?;
            applier.with_temp_file(&file, &plan.files[0], |applier| {
                applier.run_checked(&cmd, JOIN_NEXT)
            })?;
            Ok(Done::Changed(format!(
                "kubeadm join added this node as a {}",
                self.role()
            )))
        })
    }
}

// ---------------------------------------------------------------------------
// reset

/// `kubeadm reset -f`: removes what init or join set up on this node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KubeadmReset;

impl KubeadmReset {
    /// The kubeadm-made files present now; none means nothing to reset.
    fn traces(host: &Host) -> Result<Vec<String>, StepError> {
        let mut found = Vec::new();
        for path in [KUBELET_CONF, ADMIN_CONF] {
            if host.exists(path)? {
                found.push(path.to_string());
            }
        }
        for name in host.read_dir(MANIFESTS_DIR)?.unwrap_or_default() {
            if name.ends_with(".yaml") {
                found.push(format!("{MANIFESTS_DIR}/{name}"));
            }
        }
        Ok(found)
    }

    fn command() -> Cmd {
        Cmd::new("kubeadm")
            .args(["reset", "-f"])
            .timeout(RESET_TIMEOUT)
    }
}

impl Step for KubeadmReset {
    fn kind(&self) -> StepKind {
        StepKind::KubeadmReset
    }

    fn plan(&self, host: &Host) -> Result<Plan, StepError> {
        let mut plan = Plan::new(StepKind::KubeadmReset);
        let traces = Self::traces(host)?;
        if traces.is_empty() {
            plan.notes.push(format!(
                "nothing to reset: no {KUBELET_CONF}, {ADMIN_CONF} or {MANIFESTS_DIR}/*.yaml"
            ));
        } else {
            plan.commands.push(Self::command().argv().to_vec());
            plan.notes
                .push(format!("kubeadm state found: {}", traces.join(", ")));
        }
        Ok(plan)
    }

    fn apply(&self, host: &Host, plan: &Plan) -> StepReport {
        apply_with(host, StepKind::KubeadmReset, plan, |applier| {
            if plan.is_empty() {
                return Ok(Done::Unchanged("nothing to reset".to_string()));
            }
            let cmd = Self::command();
            applier.check_plan(plan, &[], &[&cmd])?;
            applier.run_checked(&cmd, RESET_NEXT)?;
            Ok(Done::Changed(
                "kubeadm reset removed this node's Kubernetes state".to_string(),
            ))
        })
    }
}

// ---------------------------------------------------------------------------
// tokens

fn is_token_id(text: &str) -> bool {
    text.len() == 6
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn is_token_secret(text: &str) -> bool {
    text.len() == 16
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn admin_kubeconfig(host: &Host) -> Result<String, HostError> {
    real_path(host, ADMIN_CONF)
}

fn token_delete_command(host: &Host, token_id: &str) -> Result<Cmd, HostError> {
    Ok(Cmd::new("kubeadm")
        .args(["token", "delete", token_id, "--kubeconfig"])
        .arg(admin_kubeconfig(host)?)
        .timeout(TOKEN_TIMEOUT))
}

/// Whether kubeadm's stderr says the bootstrap token does not exist. The
/// wording differs between releases (`failed to delete bootstrap token
/// "abcdef": secrets "bootstrap-token-abcdef" not found`, older ones without
/// the quoted id), so it is matched loosely: "not found" plus the id.
fn token_not_found(stderr: &str, token_id: &str) -> bool {
    let lower = stderr.to_ascii_lowercase();
    lower.contains("not found")
        && (lower.contains(&format!("\"{token_id}\""))
            || lower.contains(&format!("bootstrap-token-{token_id}")))
}

/// `kubeadm token create --config F` through this control plane's
/// admin.conf: the coordinator's token, refreshed before a join. The token
/// reaches kubeadm in the config's `bootstrapTokens`, a 0600 file removed
/// after the step, because kubeadm's only other way, the positional `[token]`
/// argument, shows it to every user of the host in `ps` and
/// `/proc/PID/cmdline`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenCreate {
    token: SecretString,
    ttl: Duration,
    /// An InitConfiguration whose `bootstrapTokens` hold `token` with `ttl`,
    /// and a ClusterConfiguration (kubeadm loads both from the file).
    config: SecretString,
}

impl TokenCreate {
    /// `token` must look like kubeadm's `[a-z0-9]{6}.[a-z0-9]{16}`; a zero
    /// `ttl` means the token never expires, as in kubeadm. `config` must
    /// carry that token, since it is what kubeadm creates.
    pub fn new(
        token: SecretString,
        ttl: Duration,
        config: SecretString,
    ) -> Result<Self, KubeError> {
        let valid = match token.expose().split_once('.') {
            Some((id, secret)) => is_token_id(id) && is_token_secret(secret),
            None => false,
        };
        if !valid {
            return Err(KubeError::Invalid {
                what: "bootstrap token",
                value: REDACTED.to_string(),
                reason: "a bootstrap token is 6 and 16 characters of [a-z0-9] joined by a dot, like abcdef.0123456789abcdef; generate one with `kubeadm token generate`".to_string(),
            });
        }
        check_config_carries(&config, &token, "token create", "bootstrapTokens[].token")?;
        Ok(Self { token, ttl, config })
    }

    /// The public half of the token, which names it in `kubeadm token list`.
    pub fn token_id(&self) -> &str {
        self.token
            .expose()
            .split_once('.')
            .map(|(id, _)| id)
            .unwrap_or_default()
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn file(&self) -> StepFile {
        StepFile::secret_temporary(TOKEN_CONFIG_FILE, &self.config)
    }

    fn command(&self, host: &Host) -> Result<Cmd, HostError> {
        let mut cmd = Cmd::new("kubeadm")
            .args(["token", "create", "--config"])
            .arg(real_path(host, TOKEN_CONFIG_FILE)?)
            .arg("--kubeconfig")
            .arg(admin_kubeconfig(host)?)
            // kubeadm prints the token it created.
            .redact_output(&self.token);
        for secret in config_secrets(&self.config) {
            cmd = cmd.redact_output(&secret);
        }
        Ok(cmd.timeout(TOKEN_TIMEOUT))
    }
}

/// Refuses a config that does not hold `secret`: the step names and reports
/// the secret it was given, so kubeadm must create exactly that one.
fn check_config_carries(
    config: &SecretString,
    secret: &SecretString,
    step: &str,
    field: &str,
) -> Result<(), KubeError> {
    if config_secrets(config).iter().any(|s| s == secret) {
        return Ok(());
    }
    Err(KubeError::Invalid {
        what: "kubeadm config",
        value: REDACTED.to_string(),
        reason: format!(
            "the {step} config must carry the step's secret in its InitConfiguration's {field}; render it with the same value (the coordinator's kh::kubeadm renderers do)"
        ),
    })
}

impl Step for TokenCreate {
    fn kind(&self) -> StepKind {
        StepKind::TokenCreate
    }

    fn plan(&self, host: &Host) -> Result<Plan, StepError> {
        let mut plan = Plan::new(StepKind::TokenCreate);
        let file = self.file();
        plan.files.push(temp_change(host, &file)?);
        plan.commands.push(self.command(host)?.argv().to_vec());
        plan.notes.push(format!(
            "{TOKEN_CONFIG_FILE} holds the token: written 0600, removed after kubeadm token create whatever its outcome"
        ));
        plan.notes.push(format!(
            "if a token with id {} already exists kubeadm refuses to create it; it is then deleted and created again, so its TTL starts over",
            self.token_id()
        ));
        Ok(plan)
    }

    fn apply(&self, host: &Host, plan: &Plan) -> StepReport {
        apply_with(host, StepKind::TokenCreate, plan, |applier| {
            let file = self.file();
            let create = self.command(applier.host())?;
            applier.check_plan(plan, &[&file], &[&create])?;
            let id = self.token_id().to_string();
            let ttl = go_duration(self.ttl);
            applier.with_temp_file(&file, &plan.files[0], |applier| {
                let record = applier.run(&create)?;
                if record.success() {
                    return Ok(Done::Changed(format!(
                        "created bootstrap token {id} with TTL {ttl}"
                    )));
                }
                if !record.stderr_tail.contains("already exists") {
                    return Err(command_error(&record, TOKEN_NEXT));
                }
                let delete = token_delete_command(applier.host(), &id)?;
                applier.run_checked(&delete, TOKEN_NEXT)?;
                applier.run_checked(&create, TOKEN_NEXT)?;
                Ok(Done::Changed(format!(
                    "bootstrap token {id} existed; deleted it and created it again with TTL {ttl}"
                )))
            })
        })
    }
}

/// `kubeadm token delete ID`: the rollout's token once every node joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenDelete {
    token_id: String,
}

impl TokenDelete {
    /// `token_id` is the public `[a-z0-9]{6}` half of a token.
    pub fn new(token_id: &str) -> Result<Self, KubeError> {
        if !is_token_id(token_id) {
            return Err(KubeError::Invalid {
                what: "bootstrap token id",
                value: token_id.to_string(),
                reason: "a token id is 6 characters of [a-z0-9], the part before the dot"
                    .to_string(),
            });
        }
        Ok(Self {
            token_id: token_id.to_string(),
        })
    }

    pub fn token_id(&self) -> &str {
        &self.token_id
    }
}

impl Step for TokenDelete {
    fn kind(&self) -> StepKind {
        StepKind::TokenDelete
    }

    fn plan(&self, host: &Host) -> Result<Plan, StepError> {
        let mut plan = Plan::new(StepKind::TokenDelete);
        plan.commands
            .push(token_delete_command(host, &self.token_id)?.argv().to_vec());
        Ok(plan)
    }

    fn apply(&self, host: &Host, plan: &Plan) -> StepReport {
        apply_with(host, StepKind::TokenDelete, plan, |applier| {
            let cmd = token_delete_command(applier.host(), &self.token_id)?;
            applier.check_plan(plan, &[], &[&cmd])?;
            let record = applier.run(&cmd)?;
            if record.success() {
                Ok(Done::Changed(format!(
                    "deleted bootstrap token {}",
                    self.token_id
                )))
            } else if token_not_found(&record.stderr_tail, &self.token_id) {
                Ok(Done::Unchanged(format!(
                    "bootstrap token {} does not exist",
                    self.token_id
                )))
            } else {
                Err(command_error(&record, TOKEN_NEXT))
            }
        })
    }
}

// ---------------------------------------------------------------------------
// upload-certs

/// `kubeadm init phase upload-certs --upload-certs --config F`: re-uploads
/// the control-plane certificates to the `kubeadm-certs` Secret, which
/// kubeadm deletes after two hours. The key reaches kubeadm in the config's
/// `certificateKey` (0600, removed after the step) rather than as
/// `--certificate-key`, which `ps` would show; the config's
/// ClusterConfiguration also tells kubeadm which files to upload (an
/// external etcd's client certificate and key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadCerts {
    certificate_key: SecretString,
    /// An InitConfiguration with `certificateKey` and the cluster's
    /// ClusterConfiguration.
    config: SecretString,
}

impl UploadCerts {
    /// `certificate_key` is 64 hex characters (an AES-256 key); `config`
    /// must carry it as its `certificateKey`.
    pub fn new(certificate_key: SecretString, config: SecretString) -> Result<Self, KubeError> {
        let key = certificate_key.expose();
        if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(KubeError::Invalid {
                what: "certificate key",
                value: REDACTED.to_string(),
                reason: "a certificate key is 64 hex characters (32 bytes); generate one with `kubeadm certs certificate-key`".to_string(),
            });
        }
        check_config_carries(&config, &certificate_key, "upload-certs", "certificateKey")?;
        Ok(Self {
            certificate_key,
            config,
        })
    }

    fn file(&self) -> StepFile {
        StepFile::secret_temporary(UPLOAD_CERTS_CONFIG_FILE, &self.config)
    }

    fn command(&self, host: &Host) -> Result<Cmd, HostError> {
        let mut cmd = Cmd::new("kubeadm")
            .args([
                "init",
                "phase",
                "upload-certs",
                "--upload-certs",
                "--config",
            ])
            .arg(real_path(host, UPLOAD_CERTS_CONFIG_FILE)?)
            .arg("--kubeconfig")
            .arg(admin_kubeconfig(host)?)
            // kubeadm prints the key it used.
            .redact_output(&self.certificate_key);
        for secret in config_secrets(&self.config) {
            cmd = cmd.redact_output(&secret);
        }
        Ok(cmd.timeout(UPLOAD_CERTS_TIMEOUT))
    }
}

impl Step for UploadCerts {
    fn kind(&self) -> StepKind {
        StepKind::UploadCerts
    }

    fn plan(&self, host: &Host) -> Result<Plan, StepError> {
        let mut plan = Plan::new(StepKind::UploadCerts);
        let file = self.file();
        plan.files.push(temp_change(host, &file)?);
        plan.commands.push(self.command(host)?.argv().to_vec());
        plan.notes.push(format!(
            "{UPLOAD_CERTS_CONFIG_FILE} holds the certificate key: written 0600, removed after kubeadm whatever its outcome"
        ));
        Ok(plan)
    }

    fn apply(&self, host: &Host, plan: &Plan) -> StepReport {
        apply_with(host, StepKind::UploadCerts, plan, |applier| {
            let file = self.file();
            let cmd = self.command(applier.host())?;
            applier.check_plan(plan, &[&file], &[&cmd])?;
            applier.with_temp_file(&file, &plan.files[0], |applier| {
                applier.run_checked(&cmd, UPLOAD_CERTS_NEXT)
            })?;
            Ok(Done::Changed(
                "uploaded the control-plane certificates to the kubeadm-certs Secret (kubeadm deletes it after 2 hours)".to_string(),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_found_in_every_config_document() {
        let config = SecretString::new(
            "apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\nbootstrapTokens:\n- token: abcdef.0123456789abcdef\n  ttl: 24h0m0s\ncertificateKey: \"00ff\"\n---\nkind: JoinConfiguration\ndiscovery:\n  bootstrapToken:\n    token: ghijkl.0123456789abcdef\n  tlsBootstrapToken: mnopqr.0123456789abcdef\n",
        );
        let found: Vec<String> = config_secrets(&config)
            .into_iter()
            .map(SecretString::into_inner)
            .collect();
        assert_eq!(
            found,
            [
                "abcdef.0123456789abcdef",
                "00ff",
                "ghijkl.0123456789abcdef",
                "mnopqr.0123456789abcdef"
            ]
        );
        assert!(config_secrets(&SecretString::new("a: [unclosed")).is_empty());
    }

    #[test]
    fn token_absence_is_recognized_in_every_wording() {
        let id = "abcdef";
        for stderr in [
            "failed to delete bootstrap token \"abcdef\": secrets \"bootstrap-token-abcdef\" not found",
            "bootstrap token \"abcdef\" not found",
            "failed to delete bootstrap token: secrets \"bootstrap-token-abcdef\" not found",
        ] {
            assert!(token_not_found(stderr, id), "{stderr}");
        }
        assert!(!token_not_found(
            "failed to delete bootstrap token \"ghijkl\": secrets \"bootstrap-token-ghijkl\" not found",
            id
        ));
        assert!(!token_not_found(
            "Unable to connect to the server: dial tcp 10.0.0.1:6443: connect: connection refused",
            id
        ));
    }

    #[test]
    fn token_and_key_shapes_are_validated_without_echoing_them() {
        let config = |token: &str| {
            SecretString::new(format!(
                "kind: InitConfiguration\nbootstrapTokens:\n- token: {token}\n"
            ))
        };
        let err = TokenCreate::new(
            SecretString::new("ABCDEF.0123456789abcdef"),
            Duration::from_secs(60),
            config("ABCDEF.0123456789abcdef"),
        )
        .unwrap_err();
        assert!(!err.to_string().contains("ABCDEF"), "{err}");
        let ok = TokenCreate::new(
            SecretString::new("abcdef.0123456789abcdef"),
            Duration::from_secs(60),
            config("abcdef.0123456789abcdef"),
        )
        .unwrap();
        assert_eq!(ok.token_id(), "abcdef");
        assert!(TokenDelete::new("abcde").is_err());
        assert!(TokenDelete::new("--help").is_err());
        let key_config = |key: &str| {
            SecretString::new(format!("kind: InitConfiguration\ncertificateKey: {key}\n"))
        };
        let err = UploadCerts::new(SecretString::new("xyz"), key_config("xyz")).unwrap_err();
        assert!(!err.to_string().contains("xyz"), "{err}");
        let key = "a".repeat(64);
        assert!(UploadCerts::new(SecretString::new(key.clone()), key_config(&key)).is_ok());
        // A config that carries another secret than the step's is refused.
        let err =
            UploadCerts::new(SecretString::new(key), key_config(&"b".repeat(64))).unwrap_err();
        assert!(!err.to_string().contains(&"b".repeat(64)), "{err}");
    }
}
