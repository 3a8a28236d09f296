//! kh-host: the one seam through which kh-agent touches its host.
//!
//! This crate owns every host side effect of the agent: reading and writing
//! host files under a root prefix, `/proc/sys` and `/sys` under that same
//! root, and running commands as argv vectors resolved through a configured
//! search path ([`Host`]). On top of the seam it implements the typed,
//! plan-then-apply host steps ([`steps`]), read-only [`preflight`] checks and
//! host [`facts`]. Only this crate spawns processes or touches host files for
//! the agent; nothing here may read the agent's environment (`std::env`),
//! run a shell string, or know about gRPC: configuration comes in through
//! [`Host::new`] and function arguments, and results go out as plain serde
//! data for the agent to convert.

#![forbid(unsafe_code)]

pub mod error;
pub mod facts;
pub mod host;
pub mod preflight;
pub mod steps;
pub mod tools;

pub use error::{ContainerdConfigError, HostError, StepError};
pub use facts::{collect, Facts};
pub use host::{Cmd, CommandRecord, Host, SysctlKey};
pub use preflight::{preflight, Check, CheckStatus, PreflightInput, Role};
pub use steps::containerd::{containerd_cgroup_driver, CgroupDriverState};
pub use steps::modules::ModuleName;
pub use steps::swap::comment_out_swap;
pub use steps::{
    prepare_steps, ContainerdCgroup, DisableSwap, FileChange, KernelModules, Outcome, Plan, Step,
    StepKind, StepReport, Sysctl, SysctlChange,
};
