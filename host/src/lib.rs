//! kh-host: the one seam through which kh-agent touches its host.
//!
//! This crate owns every host side effect of the agent: reading and writing
//! host files under a root prefix, `/proc/sys` and `/sys` under that same
//! root, and running commands as argv vectors resolved through a configured
//! search path ([`Host`]). On top of the seam it implements the typed,
//! plan-then-apply host steps ([`steps`]), read-only [`preflight`] checks and
//! host [`facts`], and the Kubernetes operations of a node ([`kube`]:
//! kubeadm, kubectl, etcdctl, `/readyz`, and the upgrade's packages through
//! apt or dnf, `kubeadm upgrade` and drains). Secrets handed to it stay
//! [`SecretString`]s: they reach a process as arguments or 0600 files that
//! are removed after the step, and never a plan, report, error or log line.
//! Only this crate spawns processes or touches host files for
//! the agent; nothing here may read the agent's environment (`std::env`),
//! run a shell string, or know about gRPC: configuration comes in through
//! [`Host::new`] and function arguments, and results go out as plain serde
//! data for the agent to convert.

#![forbid(unsafe_code)]

pub mod error;
pub mod facts;
pub mod failure;
pub mod host;
pub mod kube;
pub mod preflight;
pub mod secret;
pub mod steps;
pub mod tools;

pub use error::{ContainerdConfigError, HostError, StepError};
pub use facts::{collect, Facts};
pub use failure::FailureKind;
pub use host::{Cmd, CommandRecord, Host, SysctlKey, TcpProbe};
pub use preflight::{preflight, Check, CheckStatus, PreflightInput, Role};
pub use secret::{SecretBytes, SecretString};
pub use steps::containerd::{containerd_cgroup_driver, CgroupDriverState};
pub use steps::modules::ModuleName;
pub use steps::swap::comment_out_swap;
pub use steps::{
    prepare_steps, Backend, ContainerdCgroup, DisableSwap, FileChange, KernelModules,
    LoadBalancerConfig, Outcome, Plan, Step, StepKind, StepReport, Sysctl, SysctlChange,
};
