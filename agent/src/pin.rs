//! Which coordinator certificate may run steps on this agent.
//!
//! The TLS layer accepts any certificate of the kh CA and the authorization
//! layer any with the coordinator role, so an old coordinator key (a backup,
//! a retired host) would work until it expires. The agent therefore pins one
//! coordinator certificate, the one the coordinator named at enrollment, and
//! refuses every other serial.
//!
//! The coordinator renews its certificate when it starts, and its next call
//! carries the new one. The pin moves to it only when both hold:
//! - the caller's certificate (verified against the kh CA by the handshake)
//!   is not older than the pinned one: it expires no earlier, as the
//!   coordinator gives all its certificates one lifetime. An older key is refused without
//!   asking anyone, so even a key holder who can intercept the agent's
//!   connections cannot move the pin back;
//! - the coordinator the agent enrolled with, asked with a heartbeat over a
//!   channel verified against the kh CA, names the caller's serial as its
//!   current one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kh::pki::Identity;
use tonic::Status;

use crate::identity::CoordinatorPin;
use crate::state::AgentState;

/// How long an answer of the coordinator is reused for calls with the same
/// certificate: a caller with a wrong one cannot make the agent heartbeat in
/// a loop. A call with another certificate always asks afresh.
const CONFIRM_EVERY: Duration = Duration::from_secs(2);

/// What to do with a call.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Accept,
    /// Accept, and pin the caller's certificate from now on.
    Pin(CoordinatorPin),
    Refuse(String),
    /// The coordinator must be asked for its current serial first.
    Ask,
}

fn unix_secs(id: &Identity) -> u64 {
    kh::time::unix_ms(id.not_after) / 1000
}

/// The decision for `caller`, given the pin and, once asked, the serial the
/// enrolled coordinator names as current (empty from a coordinator too old
/// to name one).
fn decide(pinned: Option<&CoordinatorPin>, caller: &Identity, current: Option<&str>) -> Decision {
    let newer = CoordinatorPin {
        serial: caller.serial.clone(),
        not_after: unix_secs(caller),
    };
    match (pinned, current) {
        (Some(p), _) if p.serial == caller.serial => Decision::Accept,
        // Expiries have a resolution of one second: two certificates issued
        // in the same second are left to the coordinator to tell apart.
        (Some(p), _) if newer.not_after < p.not_after => Decision::Refuse(format!(
            "it is older than the pinned one ({}); a retired or copied coordinator key cannot run steps here",
            p.serial
        )),
        (_, None) => Decision::Ask,
        (_, Some(c)) if c == caller.serial => Decision::Pin(newer),
        // Enrolled by a coordinator that names no serial, and it still
        // names none: there is nothing to pin against.
        (None, Some("")) => Decision::Accept,
        (Some(p), Some(c)) => Decision::Refuse(format!(
            "the coordinator this agent enrolled with names {} as its current certificate, and this agent accepts {}",
            if c.is_empty() { "none" } else { c },
            p.serial
        )),
        (None, Some(c)) => Decision::Refuse(format!(
            "the coordinator this agent enrolled with names {c} as its current certificate"
        )),
    }
}

/// Admits a call (the authorization layer has already checked the caller's
/// role), or says why not.
pub async fn check<T>(state: &Arc<AgentState>, req: &tonic::Request<T>) -> Result<(), Status> {
    let caller = kh::authz::caller(req)?;
    let mut decision = decide(state.pinned_coordinator().as_ref(), caller, None);
    if decision == Decision::Ask {
        // One question at a time; whoever waited may find the pin moved.
        let mut last = state.pin_confirm.lock().await;
        let current = match last.as_ref() {
            Some((at, asked_for, serial))
                if *asked_for == caller.serial && at.elapsed() < CONFIRM_EVERY =>
            {
                Ok(serial.clone())
            }
            _ => crate::heartbeat::current_coordinator_serial(state).await,
        };
        decision = match current {
            Ok(serial) => {
                *last = Some((Instant::now(), caller.serial.clone(), serial.clone()));
                decide(state.pinned_coordinator().as_ref(), caller, Some(&serial))
            }
            Err(e) => Decision::Refuse(format!(
                "the coordinator this agent enrolled with could not be asked whether it is current: {e}"
            )),
        };
    }
    match decision {
        Decision::Accept => Ok(()),
        Decision::Pin(pin) => state
            .pin_coordinator(pin)
            .map_err(|e| Status::internal(format!("cannot save the coordinator pin: {e:#}"))),
        Decision::Ask => unreachable_ask(),
        Decision::Refuse(why) => {
            tracing::warn!(caller = %caller, serial = %caller.serial, %why, "refused a coordinator certificate");
            Err(Status::permission_denied(format!(
                "coordinator certificate serial {} is refused: {why}",
                caller.serial
            )))
        }
    }
}

/// `decide` with an answer never asks again; should it, the call is
/// refused rather than let through.
fn unreachable_ask() -> Result<(), Status> {
    Err(Status::internal(
        "the coordinator pin check could not decide; this is a bug in kh-agent",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kh::pki::Role;
    use std::time::SystemTime;

    fn coordinator(serial: &str, not_after: u64) -> Identity {
        Identity {
            role: Role::Coordinator,
            name: "coordinator".into(),
            serial: serial.into(),
            not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(not_after),
        }
    }

    fn pin(serial: &str, not_after: u64) -> CoordinatorPin {
        CoordinatorPin {
            serial: serial.into(),
            not_after,
        }
    }

    #[test]
    fn the_pinned_certificate_is_accepted_without_asking() {
        let p = pin("aa", 100);
        assert_eq!(
            decide(Some(&p), &coordinator("aa", 100), None),
            Decision::Accept
        );
    }

    #[test]
    fn an_older_certificate_is_refused_whatever_anyone_says() {
        let p = pin("bb", 200);
        for current in [None, Some("aa"), Some("bb")] {
            let d = decide(Some(&p), &coordinator("aa", 100), current);
            assert!(
                matches!(d, Decision::Refuse(ref m) if m.contains("older than")),
                "{d:?}"
            );
        }
    }

    #[test]
    fn a_newer_certificate_moves_the_pin_only_when_the_coordinator_confirms_it() {
        let p = pin("aa", 100);
        let renewed = coordinator("bb", 200);
        assert_eq!(decide(Some(&p), &renewed, None), Decision::Ask);
        assert_eq!(
            decide(Some(&p), &renewed, Some("bb")),
            Decision::Pin(pin("bb", 200))
        );
        for other in ["cc", ""] {
            let d = decide(Some(&p), &renewed, Some(other));
            assert!(matches!(d, Decision::Refuse(_)), "{d:?}");
        }
    }

    #[test]
    fn an_agent_without_a_pin_pins_what_its_coordinator_confirms() {
        let caller = coordinator("aa", 100);
        assert_eq!(decide(None, &caller, None), Decision::Ask);
        assert_eq!(
            decide(None, &caller, Some("aa")),
            Decision::Pin(pin("aa", 100))
        );
        assert_eq!(decide(None, &caller, Some("")), Decision::Accept);
        assert!(matches!(
            decide(None, &caller, Some("bb")),
            Decision::Refuse(_)
        ));
    }
}
