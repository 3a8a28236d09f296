//! Errors of the Kubernetes operations. Like the rest of the crate's errors
//! they carry the argv (with secrets already `<redacted>`), the exit status,
//! the (scrubbed) stderr tail and what to do next.

use crate::error::{display_argv, tail_or_empty, HostError, StepError};
use crate::failure::FailureKind;
use crate::host::TIMED_OUT;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(transparent)]
    Host(#[from] HostError),

    #[error(transparent)]
    Step(#[from] StepError),

    #[error(
        "`{}` failed ({status}); stderr: {}. {next}",
        display_argv(argv),
        tail_or_empty(stderr_tail)
    )]
    Command {
        argv: Vec<String>,
        status: String,
        stderr_tail: String,
        /// What the operator (or the coordinator) should do about it.
        next: String,
    },

    #[error(
        "cannot read the output of `{}`: {detail}; it began with {head:?}. {next}",
        display_argv(argv)
    )]
    Output {
        argv: Vec<String>,
        detail: String,
        /// The first bytes of stdout, enough to recognise what came instead.
        head: String,
        next: String,
    },

    #[error("invalid {what} `{value}`: {reason}")]
    Invalid {
        what: &'static str,
        /// The offending value, or `<redacted>` when it is a secret.
        value: String,
        reason: String,
    },

    #[error("`{path}` does not exist on this host; {next}")]
    MissingFile { path: String, next: String },

    #[error("etcd member {id_hex} cannot be promoted yet: it has not caught up with the leader (`{}`: {}). Wait a few seconds and promote it again; a learner that never catches up has a broken peer connection, so check its etcd log", display_argv(argv), tail_or_empty(stderr_tail))]
    LearnerNotReady {
        id_hex: String,
        argv: Vec<String>,
        stderr_tail: String,
    },

    #[error("could not remove the temporary file `{path}`, which holds {what}: {source}; remove it by hand{}", earlier.as_ref().map(|e| format!(". The step had already failed: {e}")).unwrap_or_default())]
    Cleanup {
        path: String,
        what: String,
        #[source]
        source: Box<HostError>,
        /// The step's own failure, when the cleanup came after one.
        earlier: Option<Box<KubeError>>,
    },

    #[error("restarting {component}: {detail}")]
    Restart {
        /// The static pod: etcd, kube-apiserver, ...
        component: String,
        detail: String,
    },

    /// The host has no Kubernetes package source kh can point at a minor.
    #[error("{found}. {fix}")]
    NoPackageSource {
        /// What kh found instead (no file, no pkgs.k8s.io line, ...).
        found: String,
        /// Which file to create, in the official per-minor layout.
        fix: String,
    },

    /// The package manager does not offer the version asked for.
    #[error(transparent)]
    VersionUnavailable(Box<VersionUnavailable>),

    /// `kubectl drain` could not evict every pod before its timeout.
    #[error(transparent)]
    DrainBlocked(Box<DrainBlocked>),
}

/// A version the host's package repository does not offer.
#[derive(Debug, thiserror::Error)]
#[error("{version} of {packages} is not in the {minor} package repository this host uses: `{}` failed ({status}): {}. Run `{list}` to see the versions it offers, then ask for one of them (or point the source at another minor with the PackageSource step)", display_argv(argv), tail_or_empty(stderr_tail))]
pub struct VersionUnavailable {
    pub version: String,
    pub packages: String,
    /// The minor the host's source names (`v1.32`), or a description.
    pub minor: String,
    pub argv: Vec<String>,
    pub status: String,
    pub stderr_tail: String,
    /// The command that lists what the repository offers.
    pub list: String,
}

/// A drain that could not evict every pod before its timeout.
#[derive(Debug, thiserror::Error)]
#[error(
    "drain of {node} is blocked: {reason}; the node stays cordoned. {next} (`{}`: {})",
    display_argv(argv),
    tail_or_empty(stderr_tail)
)]
pub struct DrainBlocked {
    pub node: String,
    /// The pods that were still to be evicted, `ns/name`.
    pub pods: Vec<String>,
    pub reason: String,
    pub next: String,
    pub argv: Vec<String>,
    pub stderr_tail: String,
}

impl KubeError {
    /// The stderr tail of a failed command, for callers that branch on a
    /// tool's own words.
    pub fn stderr_tail(&self) -> Option<&str> {
        match self {
            KubeError::Command { stderr_tail, .. }
            | KubeError::LearnerNotReady { stderr_tail, .. } => Some(stderr_tail),
            KubeError::VersionUnavailable(e) => Some(&e.stderr_tail),
            KubeError::DrainBlocked(e) => Some(&e.stderr_tail),
            KubeError::Host(HostError::CommandFailed { stderr_tail, .. }) => Some(stderr_tail),
            _ => None,
        }
    }

    /// The kind of this failure, recognised from the failed command and its
    /// stderr, for callers that branch on it.
    pub fn failure_kind(&self) -> FailureKind {
        match self {
            KubeError::Host(e) => e.failure_kind(),
            KubeError::Step(e) => e.failure_kind(),
            KubeError::Command {
                argv,
                status,
                stderr_tail,
                ..
            } => FailureKind::of_command(argv, stderr_tail, status == TIMED_OUT),
            // A learner that has not caught up yet is not the learner limit,
            // and a secret file left behind needs the operator whatever the
            // step's own failure was.
            KubeError::LearnerNotReady { .. }
            | KubeError::Output { .. }
            | KubeError::Invalid { .. }
            | KubeError::MissingFile { .. }
            | KubeError::Cleanup { .. }
            | KubeError::NoPackageSource { .. }
            | KubeError::VersionUnavailable(_) => FailureKind::Other,
            KubeError::DrainBlocked(_) => FailureKind::DrainBlocked,
            // A component that did not stop or come back in time.
            KubeError::Restart { .. } => FailureKind::Timeout,
        }
    }

    /// Whether a command ran out of its time (the apiserver or etcd did not
    /// answer), which is worth retrying, unlike a refusal.
    pub fn timed_out(&self) -> bool {
        matches!(self, KubeError::Command { status, .. } if status == TIMED_OUT)
    }

    /// Whether the failure is one etcd produces while it settles after a
    /// membership change or a restart (an election, a member reconnecting),
    /// so the same request is worth retrying shortly. A learner that has not
    /// caught up counts too.
    pub fn is_transient(&self) -> bool {
        const SETTLING: [&str; 6] = [
            "etcdserver: no leader",
            "etcdserver: leader changed",
            "etcdserver: unhealthy cluster",
            "etcdserver: request timed out",
            "context deadline exceeded",
            "etcdserver: too many requests",
        ];
        matches!(self, KubeError::LearnerNotReady { .. })
            || self.timed_out()
            || self
                .stderr_tail()
                .is_some_and(|tail| SETTLING.iter().any(|s| tail.contains(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(status: &str, stderr_tail: &str) -> KubeError {
        KubeError::Command {
            argv: vec!["etcdctl".into(), "member".into(), "promote".into()],
            status: status.into(),
            stderr_tail: stderr_tail.into(),
            next: "retry".into(),
        }
    }

    #[test]
    fn settling_etcd_errors_are_transient_and_refusals_are_not() {
        assert!(failed("exit status 1", "Error: etcdserver: no leader").is_transient());
        assert!(failed("timed out and was killed", "").is_transient());
        assert!(failed("exit status 1", "Error: context deadline exceeded").is_transient());
        assert!(!failed("exit status 1", "Error: etcdserver: member not found").is_transient());
        assert!(!failed(
            "exit status 1",
            "Error: etcdserver: Peer URLs already exists"
        )
        .is_transient());
        let not_ready = KubeError::LearnerNotReady {
            id_hex: "f4fa3ad20581c1".into(),
            argv: vec![],
            stderr_tail:
                "Error: etcdserver: can only promote a learner member which is in sync with leader"
                    .into(),
        };
        assert!(not_ready.is_transient());
        assert_eq!(
            not_ready.stderr_tail(),
            Some(
                "Error: etcdserver: can only promote a learner member which is in sync with leader"
            )
        );
    }
}
