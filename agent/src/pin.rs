//! Which coordinator certificate may run steps on this agent.
//!
//! The TLS layer accepts any certificate of the kh CA and the authorization
//! layer any with the coordinator role, so an old coordinator key (a backup,
//! a retired host) would work until it expires. The agent therefore pins the
//! serial of the coordinator's current certificate, which the coordinator
//! names in every enrollment, heartbeat and renewal answer, and refuses every
//! other serial.
//!
//! The coordinator renews its certificate when it starts, so its first call
//! after a restart may carry a serial the agent has not heard yet. Before
//! refusing, the agent asks the coordinator it enrolled with (a heartbeat to
//! the address in its enrollment, verified against the kh CA) which serial
//! is current, and accepts the caller only when that is the answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kh::pki::Identity;
use tonic::Status;

use crate::state::AgentState;

/// How soon after asking the coordinator a mismatch is refused without
/// asking again: a caller with a wrong certificate cannot make the agent
/// heartbeat in a loop.
const CONFIRM_EVERY: Duration = Duration::from_secs(2);

/// Admits a call from `caller` (the authorization layer has already checked
/// its role), or says why not.
pub async fn check<T>(state: &Arc<AgentState>, req: &tonic::Request<T>) -> Result<(), Status> {
    let caller = kh::authz::caller(req)?;
    let Some(pinned) = state.pinned_coordinator() else {
        // Enrolled by a coordinator that names no serial: nothing to pin
        // against until it does.
        return Ok(());
    };
    if pinned == caller.serial {
        return Ok(());
    }
    let mut last = state.pin_confirm.lock().await;
    let pinned = state.pinned_coordinator().unwrap_or(pinned);
    if pinned == caller.serial {
        return Ok(());
    }
    let fresh = last.is_some_and(|t| t.elapsed() < CONFIRM_EVERY);
    let asked = if fresh {
        None
    } else {
        *last = Some(Instant::now());
        Some(crate::heartbeat::confirm_pin(state).await)
    };
    let pinned = state.pinned_coordinator().unwrap_or(pinned);
    if pinned == caller.serial {
        return Ok(());
    }
    Err(refusal(caller, &pinned, asked))
}

fn refusal(caller: &Identity, pinned: &str, asked: Option<Result<(), String>>) -> Status {
    let why = match asked {
        Some(Ok(())) => "the coordinator this agent enrolled with confirms that serial as current",
        Some(Err(e)) => {
            tracing::warn!(error = %e, "could not ask the coordinator for its current certificate");
            "the coordinator this agent enrolled with could not be asked for its current one"
        }
        None => "the coordinator was asked moments ago",
    };
    tracing::warn!(caller = %caller, serial = %caller.serial, pinned, "refused a coordinator certificate that is not the pinned one");
    Status::permission_denied(format!(
        "coordinator certificate serial {} is not the one this agent accepts steps from ({pinned}); {why}. A retired or copied coordinator key cannot run steps here",
        caller.serial
    ))
}
