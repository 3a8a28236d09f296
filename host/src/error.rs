//! Error types of the host seam and of the steps built on it.
//!
//! Every variant carries what an operator needs to act without reading code:
//! the host path, the argv, the exit status and the stderr tail, and a
//! sentence about what to do next.

use std::path::PathBuf;

use crate::failure::FailureKind;
use crate::host::TIMED_OUT;
use crate::steps::StepKind;

/// Joins an argv for humans, quoting arguments that a shell would split.
pub fn display_argv(argv: &[String]) -> String {
    argv.iter()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg.chars().all(|c| {
                    c.is_ascii_alphanumeric()
                        || matches!(c, '-' | '_' | '.' | '/' | ':' | '=' | ',' | '+' | '@')
                });
            if plain {
                arg.clone()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Failures of the [`Host`](crate::Host) seam itself.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("host path `{path}` is not absolute; host paths must start with `/` (for example `/etc/fstab`)")]
    RelativePath { path: String },

    #[error("host path `{path}` contains a `..` component; kh refuses paths that could leave the host root, so pass a normalized absolute path")]
    PathTraversal { path: String },

    #[error("cannot {action} `{path}` (at {}): {source}; check that the path exists with the expected type and that kh-agent runs as root", real.display())]
    Io {
        action: &'static str,
        path: String,
        real: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("`{path}` is not valid UTF-8 text; inspect the file and repair or remove it")]
    NotUtf8 { path: String },

    #[error("refusing `{path}`: `{link}` is a symbolic link, and kh writes secrets only through real directories under the host root so a link cannot send them elsewhere; replace the link with a real directory or file")]
    Symlink { path: String, link: String },

    #[error(
        "invalid sysctl key `{key}`: {reason}; use a dotted key such as `net.ipv4.ip_forward`"
    )]
    InvalidSysctlKey { key: String, reason: &'static str },

    #[error("invalid kernel module name `{name}`: {reason}; use a name as `lsmod` shows it, such as `br_netfilter`")]
    InvalidModuleName { name: String, reason: &'static str },

    #[error("refusing to run an empty command line; this is a bug in the caller")]
    EmptyCommand,

    #[error("program `{program}` must be a bare name resolved through the search path, not a path; add its directory to the agent's search path instead")]
    ProgramIsPath { program: String },

    #[error("command `{program}` not found in search path [{search_path}]; install it or add its directory to the agent's search path")]
    CommandNotFound {
        program: String,
        search_path: String,
    },

    #[error("cannot start `{}` ({}): {source}; check that the file is an executable for this machine", display_argv(argv), resolved.display())]
    Spawn {
        argv: Vec<String>,
        resolved: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot wait for `{}`: {source}", display_argv(argv))]
    Wait {
        argv: Vec<String>,
        #[source]
        source: std::io::Error,
    },

    #[error("command `{}` failed ({status}); stderr: {}; fix the cause it reports and run the step again", display_argv(argv), tail_or_empty(stderr_tail))]
    CommandFailed {
        argv: Vec<String>,
        status: String,
        stderr_tail: String,
    },

    #[error("cannot determine the effective uid from /proc/self/status: {detail}; kh-agent needs a Linux /proc")]
    ProcStatus { detail: String },

    #[error("cannot list network interfaces: {source}")]
    Interfaces {
        #[source]
        source: std::io::Error,
    },
}

impl HostError {
    /// The kind of this failure, for callers that branch on it.
    pub fn failure_kind(&self) -> FailureKind {
        match self {
            HostError::CommandNotFound { .. } => FailureKind::CommandNotFound,
            HostError::CommandFailed {
                argv,
                status,
                stderr_tail,
            } => FailureKind::of_command(argv, stderr_tail, status == TIMED_OUT),
            _ => FailureKind::Other,
        }
    }
}

pub(crate) fn tail_or_empty(tail: &str) -> &str {
    if tail.trim().is_empty() {
        "(empty)"
    } else {
        tail.trim_end()
    }
}

/// Failures of the config file of containerd, found while planning.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdConfigError {
    #[error("`{path}` is not valid TOML: {message}; the file was not changed. Repair it (or move it away so kh regenerates it with `containerd config default`) and run the step again")]
    InvalidToml { path: String, message: String },

    #[error("`{path}` has no `version` key, so containerd reads it as the old version 1 format and silently ignores the CRI runtime options kh would set; the file was not changed. Convert it with `containerd config migrate` (containerd 1.7 and newer) or regenerate it with `containerd config default` and re-apply your customizations, then run the step again")]
    MissingVersion { path: String },

    #[error("`{path}` declares `version = {found}`, which kh does not know how to edit (it understands 2 for containerd 1.x and 3 for containerd 2.x); the file was not changed. Regenerate it with `containerd config default` from the installed containerd, or convert it with `containerd config migrate`")]
    UnsupportedVersion { path: String, found: String },

    #[error("in `{path}`, `{key}` is not a table but kh must put `SystemdCgroup` under it; the file was not changed. Fix that key by hand (it should be a table) and run the step again")]
    NotATable { path: String, key: String },
}

/// Failures of a step, in planning or applying.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Host(#[from] HostError),

    #[error(transparent)]
    Containerd(#[from] ContainerdConfigError),

    #[error(transparent)]
    LoadBalancer(#[from] crate::steps::haproxy::LoadBalancerError),

    #[error("kernel module `{module}` could not be loaded on kernel {kernel}: `{}` failed ({status}); stderr: {}. The module is neither loaded nor built into this kernel: install the modules package for this kernel (for example `linux-modules-extra-{kernel}` on Ubuntu) or rebuild the kernel with the option enabled, then run the step again", display_argv(argv), tail_or_empty(stderr_tail))]
    ModuleLoad {
        module: String,
        kernel: String,
        argv: Vec<String>,
        status: String,
        stderr_tail: String,
    },

    #[error("cannot set sysctl `{key}` to `{wanted}`: {source}. If the key is under net.bridge, the br_netfilter module is not loaded; run the KernelModules step first")]
    SysctlWrite {
        key: String,
        wanted: String,
        #[source]
        source: Box<HostError>,
    },

    #[error("sysctl `{key}` did not keep its value: wanted `{wanted}`, read back `{actual}`; something on the host (a container runtime, a security module or another sysctl.d file applied later) resets it. Find it with `grep -r {key} /etc/sysctl.d /run/sysctl.d /usr/lib/sysctl.d` and run the step again")]
    SysctlNotApplied {
        key: String,
        wanted: String,
        actual: String,
    },

    #[error("containerd does not read `SystemdCgroup = true` from `{path}`: {detail}. {restored}")]
    ContainerdVerify {
        path: String,
        detail: String,
        restored: String,
    },

    #[error(
        "a plan for step {got:?} was handed to step {expected:?}; this is a bug in the caller"
    )]
    WrongPlan { expected: StepKind, got: StepKind },

    #[error("the plan for {step:?} contains an unexpected command `{}`; plans must come from the same step's plan()", display_argv(argv))]
    UnexpectedCommand { step: StepKind, argv: Vec<String> },

    /// A Kubernetes step's own failure found while planning (an etcd
    /// restore that finds the host in a state it cannot continue from).
    #[error(transparent)]
    Kube(Box<crate::kube::KubeError>),
}

impl StepError {
    /// The kind of this failure, for callers that branch on it.
    pub fn failure_kind(&self) -> FailureKind {
        match self {
            StepError::Host(e) => e.failure_kind(),
            StepError::SysctlWrite { source, .. } => source.failure_kind(),
            StepError::Kube(e) => e.failure_kind(),
            _ => FailureKind::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_is_quoted_only_where_needed() {
        let argv: Vec<String> = ["systemctl", "restart", "containerd", "a b", "it's", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            display_argv(&argv),
            r"systemctl restart containerd 'a b' 'it'\''s' ''"
        );
    }
}
