//! Planning and applying steps whose files or arguments are secret.
//!
//! [`StepFile`] describes a file a step writes, and builds the
//! [`FileChange`] that plans and reports show: for a secret file that is a
//! one-line summary (`<secret: 2 documents, 0600, removed after the step>`),
//! never the content. [`KubeApplier`] is the apply-side twin of the crate's
//! `Applier`: it writes step files, removes temporary ones whatever the
//! outcome, runs [`Cmd`]s (which may carry secret arguments) and builds the
//! report, which may say `Unchanged` even after a command ran (a token that
//! was already gone, a manifest kubectl found unchanged).

use std::time::Duration;

use crate::error::{HostError, StepError};
use crate::host::{Cmd, CommandRecord, Host};
use crate::kube::error::KubeError;
use crate::secret::{SecretBytes, SecretString};
use crate::steps::{unified_diff, FileChange, Outcome, Plan, StepKind, StepReport};

/// The content of a [`StepFile`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Content {
    Secret(SecretString),
    /// Secret content that need not be text, written byte for byte.
    SecretBytes(SecretBytes),
    Plain(String),
}

/// A file a step writes: either for the duration of one step (a kubeadm
/// config, a manifest for kubectl) or for good (a placed CA file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepFile {
    path: String,
    content: Content,
    mode: u32,
    temporary: bool,
}

impl StepFile {
    /// A secret file that exists only while the step runs: written 0600,
    /// removed afterwards whatever the outcome.
    pub fn secret_temporary(path: &str, content: &SecretString) -> Self {
        Self {
            path: path.to_string(),
            content: Content::Secret(content.clone()),
            mode: 0o600,
            temporary: true,
        }
    }

    /// A file that is not secret but still only lives for the step, written
    /// 0600 because nobody else has any business reading it.
    pub fn plain_temporary(path: &str, content: &str) -> Self {
        Self {
            path: path.to_string(),
            content: Content::Plain(content.to_string()),
            mode: 0o600,
            temporary: true,
        }
    }

    /// A secret file that stays, such as a CA key placed before a join. It
    /// is written byte for byte, and never through a symbolic link.
    pub fn secret_placed(path: &str, content: &SecretBytes, mode: u32) -> Self {
        Self {
            path: path.to_string(),
            content: Content::SecretBytes(content.clone()),
            mode,
            temporary: false,
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn mode(&self) -> u32 {
        self.mode
    }

    pub fn is_temporary(&self) -> bool {
        self.temporary
    }

    fn bytes(&self) -> &[u8] {
        match &self.content {
            Content::Secret(secret) => secret.expose().as_bytes(),
            Content::SecretBytes(secret) => secret.expose(),
            Content::Plain(text) => text.as_bytes(),
        }
    }

    /// Whether `current` is exactly this file's content.
    pub fn has_content(&self, current: &[u8]) -> bool {
        self.bytes() == current
    }

    /// What a report says in place of the content: a secret shows only its
    /// size (documents for YAML, bytes otherwise) and what happens to it.
    pub fn summary(&self) -> String {
        let size = match &self.content {
            Content::Secret(secret) if is_yaml(&self.path) => {
                plural(yaml_documents(secret.expose()), "document")
            }
            Content::Secret(secret) => plural(secret.len(), "byte"),
            Content::SecretBytes(secret) => plural(secret.len(), "byte"),
            Content::Plain(text) => plural(text.len(), "byte"),
        };
        let kind = match self.content {
            Content::Secret(_) | Content::SecretBytes(_) => "secret",
            Content::Plain(_) => "file",
        };
        let removed = if self.temporary {
            ", removed after the step"
        } else {
            ""
        };
        format!("<{kind}: {size}, {:04o}{removed}>", self.mode)
    }

    /// The change a plan shows for this file. `existing` says whether the
    /// file is on the host now (and for a secret, never what it holds).
    pub fn change(&self, existing: Option<&str>) -> FileChange {
        match &self.content {
            Content::Plain(text) => FileChange {
                path: self.path.clone(),
                before: existing.map(str::to_string),
                after: text.clone(),
                mode: self.mode,
                backup: None,
                diff: unified_diff(&self.path, existing, text),
            },
            Content::Secret(_) | Content::SecretBytes(_) => {
                self.secret_change(existing.map(str::len))
            }
        }
    }

    /// The change a plan shows for a secret file, which says of the file on
    /// the host (`existing_len` bytes, if there is one) only its size.
    pub fn secret_change(&self, existing_len: Option<usize>) -> FileChange {
        let summary = self.summary();
        let (old_name, before) = match existing_len {
            Some(len) => (
                format!("a{}", self.path),
                Some(format!("<secret: {}, replaced>", plural(len, "byte"))),
            ),
            None => ("/dev/null".to_string(), None),
        };
        FileChange {
            path: self.path.clone(),
            before,
            after: summary.clone(),
            mode: self.mode,
            backup: None,
            diff: format!("--- {old_name}\n+++ b{}\n{summary}\n", self.path),
        }
    }

    /// What the file holds, for error messages about it.
    fn what(&self) -> String {
        match self.content {
            Content::Secret(_) | Content::SecretBytes(_) => "secrets".to_string(),
            Content::Plain(_) => "a step's input".to_string(),
        }
    }
}

/// What [`current_text`] returns for a file that is not UTF-8 text: such a
/// file can never equal a step's (text) content, and reports show it by size
/// only anyway.
pub(crate) const NOT_TEXT: &str = "<not UTF-8 text>";

/// The current content of a file a step is about to replace.
pub(crate) fn current_text(host: &Host, path: &str) -> Result<Option<String>, StepError> {
    match host.read_to_string(path) {
        Ok(text) => Ok(text),
        Err(HostError::NotUtf8 { .. }) => Ok(Some(NOT_TEXT.to_string())),
        Err(err) => Err(err.into()),
    }
}

fn is_yaml(path: &str) -> bool {
    path.ends_with(".yaml") || path.ends_with(".yml")
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// The number of non-empty YAML documents: text between `---` separator
/// lines that has anything besides blanks and comments.
pub(crate) fn yaml_documents(text: &str) -> usize {
    let mut count = 0;
    let mut current_has_content = false;
    for line in text.lines() {
        if line == "---" || line.starts_with("--- ") {
            count += usize::from(current_has_content);
            current_has_content = false;
        } else {
            let trimmed = line.trim();
            if !trimmed.is_empty() && !trimmed.starts_with('#') {
                current_has_content = true;
            }
        }
    }
    count + usize::from(current_has_content)
}

/// Formats a duration as Go's `time.Duration.String` does (`24h0m0s`,
/// `1m30s`, `1.5s`, `500ms`), which is how kubeadm prints and most readably
/// takes its durations.
pub fn go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    if nanos < 1_000_000_000 {
        let (unit, scale) = if nanos < 1_000 {
            ("ns", 1)
        } else if nanos < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{unit}", decimal(nanos, scale));
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let seconds = decimal(
        u128::from(s) * 1_000_000_000 + u128::from(d.subsec_nanos()),
        1_000_000_000,
    );
    if h > 0 {
        format!("{h}h{m}m{seconds}s")
    } else if m > 0 {
        format!("{m}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

/// `value / scale` with the fraction's trailing zeros trimmed, as Go prints.
fn decimal(value: u128, scale: u128) -> String {
    let whole = value / scale;
    let fraction = value % scale;
    if fraction == 0 {
        return whole.to_string();
    }
    let width = scale.to_string().len() - 1;
    let digits = format!("{fraction:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// How an apply ended when it did not fail.
#[derive(Debug)]
pub(crate) enum Done {
    Changed(String),
    Unchanged(String),
}

/// Records what an apply did, so a failure halfway still reports the files
/// written and the commands run before it.
pub(crate) struct KubeApplier<'a> {
    host: &'a Host,
    step: StepKind,
    files: Vec<FileChange>,
    commands: Vec<CommandRecord>,
}

impl<'a> KubeApplier<'a> {
    /// Starts applying, refusing a plan made by another step.
    pub(crate) fn start(host: &'a Host, step: StepKind, plan: &Plan) -> Result<Self, StepError> {
        if plan.step != step {
            return Err(StepError::WrongPlan {
                expected: step,
                got: plan.step,
            });
        }
        Ok(Self {
            host,
            step,
            files: Vec::new(),
            commands: Vec::new(),
        })
    }

    /// Checks that `plan` is the one this step makes now: the same files and
    /// the same (redacted) command lines, in order. The secret values
    /// themselves come from the step, since a plan never holds them.
    pub(crate) fn check_plan(
        &self,
        plan: &Plan,
        files: &[&StepFile],
        commands: &[&Cmd],
    ) -> Result<(), KubeError> {
        let planned: Vec<&str> = plan.files.iter().map(|f| f.path.as_str()).collect();
        let expected: Vec<&str> = files.iter().map(|f| f.path()).collect();
        if planned != expected {
            return Err(KubeError::Invalid {
                what: "plan",
                value: planned.join(", "),
                reason: format!(
                    "{:?} writes [{}]; plans must come from the same step's plan()",
                    self.step,
                    expected.join(", ")
                ),
            });
        }
        for (index, argv) in plan.commands.iter().enumerate() {
            if commands.get(index).map(|cmd| cmd.argv()) != Some(argv.as_slice()) {
                return Err(StepError::UnexpectedCommand {
                    step: self.step,
                    argv: argv.clone(),
                }
                .into());
            }
        }
        if let Some(missing) = commands.get(plan.commands.len()) {
            return Err(StepError::UnexpectedCommand {
                step: self.step,
                argv: missing.argv().to_vec(),
            }
            .into());
        }
        Ok(())
    }

    pub(crate) fn host(&self) -> &Host {
        self.host
    }

    /// Writes one step file atomically with its mode, creating its
    /// directory. A file that stays (a placed CA key) is never written
    /// through a symbolic link: its path could otherwise lead out of the host
    /// root. A temporary file's directory is made 0700: its files hold
    /// secrets while a command reads them, and other users must not even see
    /// their names come and go.
    pub(crate) fn write(&mut self, file: &StepFile, change: &FileChange) -> Result<(), KubeError> {
        if !file.temporary {
            self.host
                .write_nofollow(file.path(), file.bytes(), file.mode())?;
            self.files.push(change.clone());
            return Ok(());
        }
        if let Some((dir, _)) = file.path().rsplit_once('/') {
            if !dir.is_empty() {
                self.host.create_private_dir(dir)?;
            }
        }
        self.host
            .write_atomic(file.path(), file.bytes(), file.mode())?;
        self.files.push(change.clone());
        Ok(())
    }

    /// Writes a planned change of a plain configuration file (not a secret):
    /// the backup first (once, as the crate's other steps keep it), then the
    /// new content atomically with the planned mode.
    pub(crate) fn write_change(&mut self, change: &FileChange) -> Result<(), KubeError> {
        if let Some(backup) = &change.backup {
            let suffix = backup
                .strip_prefix(change.path.as_str())
                .unwrap_or(crate::steps::BACKUP_SUFFIX);
            self.host.backup_once(&change.path, suffix)?;
        }
        self.host
            .write_atomic(&change.path, change.after.as_bytes(), change.mode)?;
        self.files.push(change.clone());
        Ok(())
    }

    /// Writes a temporary file, runs `body`, and removes the file whether
    /// `body` succeeded or not, so a secret never outlives its step.
    pub(crate) fn with_temp_file<T>(
        &mut self,
        file: &StepFile,
        change: &FileChange,
        body: impl FnOnce(&mut Self) -> Result<T, KubeError>,
    ) -> Result<T, KubeError> {
        let result = match self.write(file, change) {
            // A write that failed after the rename (fsync of the directory)
            // leaves the file behind, so it is removed below all the same.
            Err(err) => Err(err),
            Ok(()) => body(self),
        };
        match self.host.remove_file(file.path()) {
            Ok(_) => result,
            Err(source) => Err(KubeError::Cleanup {
                path: file.path().to_string(),
                what: file.what(),
                source: Box::new(source),
                earlier: result.err().map(Box::new),
            }),
        }
    }

    /// Runs one command, recording it whatever its outcome.
    pub(crate) fn run(&mut self, cmd: &Cmd) -> Result<CommandRecord, KubeError> {
        let record = self.host.run(cmd)?;
        self.commands.push(record.clone());
        Ok(record)
    }

    /// Runs one command and turns a failure into [`KubeError::Command`]
    /// with `next` as the advice.
    pub(crate) fn run_checked(
        &mut self,
        cmd: &Cmd,
        next: &str,
    ) -> Result<CommandRecord, KubeError> {
        let record = self.run(cmd)?;
        if record.success() {
            Ok(record)
        } else {
            Err(command_error(&record, next))
        }
    }

    /// Builds the report from what was done and how it ended.
    pub(crate) fn finish(self, result: Result<Done, KubeError>) -> StepReport {
        let (outcome, message, error, failure) = match result {
            Ok(Done::Changed(message)) => (Outcome::Changed, message, None, None),
            Ok(Done::Unchanged(message)) => (Outcome::Unchanged, message, None, None),
            Err(err) => {
                tracing::warn!(step = ?self.step, error = %err, kind = err.failure_kind().name(), "host step failed");
                (
                    Outcome::Failed,
                    format!("{:?} failed", self.step),
                    Some(err.to_string()),
                    Some(err.failure_kind()),
                )
            }
        };
        StepReport {
            step: self.step,
            outcome,
            files: self.files,
            commands: self.commands,
            sysctls: Vec::new(),
            message,
            error,
            dry_run: false,
            failure,
            notes: Vec::new(),
        }
    }
}

/// A failed command as a [`KubeError::Command`].
pub(crate) fn command_error(record: &CommandRecord, next: &str) -> KubeError {
    KubeError::Command {
        argv: record.argv.clone(),
        status: record.status_text(),
        stderr_tail: record.stderr_tail.clone(),
        next: next.to_string(),
    }
}

/// Runs a step's apply body against a started applier; a plan from another
/// step fails before anything happens.
pub(crate) fn apply_with(
    host: &Host,
    step: StepKind,
    plan: &Plan,
    body: impl FnOnce(&mut KubeApplier<'_>) -> Result<Done, KubeError>,
) -> StepReport {
    let mut applier = match KubeApplier::start(host, step, plan) {
        Ok(applier) => applier,
        Err(err) => return StepReport::failed(step, &err),
    };
    let result = body(&mut applier);
    applier.finish(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_print_like_go() {
        let cases = [
            (Duration::from_secs(24 * 3600), "24h0m0s"),
            (Duration::from_secs(2 * 3600), "2h0m0s"),
            (Duration::from_secs(5400), "1h30m0s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(600), "10m0s"),
            (Duration::from_secs(45), "45s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_micros(1500), "1.5ms"),
            (Duration::from_nanos(1500), "1.5µs"),
            (Duration::from_nanos(7), "7ns"),
            (Duration::ZERO, "0s"),
            (Duration::new(3661, 250_000_000), "1h1m1.25s"),
        ];
        for (d, want) in cases {
            assert_eq!(go_duration(d), want, "{d:?}");
        }
    }

    #[test]
    fn yaml_documents_are_counted_without_empty_ones() {
        assert_eq!(yaml_documents("a: 1\n---\nb: 2\n"), 2);
        assert_eq!(yaml_documents("---\na: 1\n---\n# only a comment\n---\n"), 1);
        assert_eq!(yaml_documents(""), 0);
        assert_eq!(yaml_documents("a: 1\n--- \nb: 2\n---\nc: 3"), 3);
    }

    #[test]
    fn secret_changes_never_carry_the_content() {
        let secret = SecretString::new(
            "kind: InitConfiguration\ntoken: abc\n---\nkind: ClusterConfiguration\n",
        );
        let file = StepFile::secret_temporary("/var/lib/kh-agent/kubeadm-init.yaml", &secret);
        let change = file.change(None);
        assert_eq!(
            change.after,
            "<secret: 2 documents, 0600, removed after the step>"
        );
        assert_eq!(
            change.diff,
            "--- /dev/null\n+++ b/var/lib/kh-agent/kubeadm-init.yaml\n<secret: 2 documents, 0600, removed after the step>\n"
        );
        assert_eq!(change.before, None);
        assert_eq!(change.mode, 0o600);

        let key = SecretBytes::new("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n");
        let placed = StepFile::secret_placed("/etc/kubernetes/pki/ca.key", &key, 0o600);
        let change = placed.change(Some("old key material"));
        let json = serde_json::to_string(&change).unwrap();
        assert!(!json.contains("MIIE"), "{json}");
        assert!(!json.contains("old key"), "{json}");
        assert_eq!(change.after, "<secret: 37 bytes, 0600>");
        assert_eq!(
            change.before.as_deref(),
            Some("<secret: 16 bytes, replaced>")
        );
        assert!(change.diff.starts_with("--- a/etc/kubernetes/pki/ca.key\n"));

        let manifest =
            StepFile::plain_temporary("/var/lib/kh-agent/apply-cni.yaml", "kind: List\n");
        assert_eq!(manifest.change(None).after, "kind: List\n");
        assert_eq!(
            manifest.summary(),
            "<file: 11 bytes, 0600, removed after the step>"
        );
    }
}
