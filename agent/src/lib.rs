//! kh-agent: performs typed host steps for the kh coordinator, and nothing else.
//!
//! It owns the agent's identity on disk (enrollment, renewal), its gRPC server
//! (coordinator identity only, behind the shared authorization layer), the
//! heartbeat loop and the plain-HTTP health endpoint. Every effect on the host
//! goes through `kh-host`'s `Host` seam; this crate never spawns a process or
//! touches a host file itself, and never accepts a command string.

pub mod enroll;
pub mod health;
pub mod heartbeat;
pub mod identity;
pub mod metrics;
pub mod pin;
pub mod rpc;
pub mod snapshot;
pub mod state;
pub mod steps;
