//! Automatic certificate renewal: a task of the coordinator that checks the
//! control planes' kubeadm certificates when it starts and then every
//! `--cert-check-interval`, and starts the same operation as `khctl certs
//! renew --all` when one is inside the held spec's
//! `certificates.renewBefore` (and `certificates.autoRenew` is on).
//!
//! It never runs beside another operation: it skips a check while one runs
//! in this coordinator or one is pending resume, and the renewal itself
//! takes the control-plane lease. A renewal that fails is in the history
//! and the log, and the next attempt comes at the next check at the
//! earliest (a failed renewal that changed something stays pending, so
//! checks skip until an operator finishes it).

use std::sync::Arc;
use std::time::Duration;

use kh::proto::{self, CertsRenewRequest};
use kh::spec::ClusterSpec;

use crate::Coordinator;

/// A certificate inside the renewal window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub node: String,
    pub cert: String,
    /// Seconds until it expires; negative when it already has.
    pub left_secs: i64,
}

impl Due {
    /// Who started the renewal and why, for the history.
    pub fn reason(&self, spec: &ClusterSpec) -> String {
        let left = if self.left_secs < 0 {
            format!("expired {} ago", kh::time::short_duration(-self.left_secs))
        } else {
            format!("expires in {}", kh::time::short_duration(self.left_secs))
        };
        format!(
            "started by the coordinator (automatic renewal, certificates.renewBefore {}): {} on {} {left}",
            kh::time::short_duration(spec.cert_renewal.renew_before.as_secs() as i64),
            self.cert,
            self.node
        )
    }
}

/// The decision, pure: the control-plane certificate kubeadm renews that
/// expires first, if it is inside the window and automatic renewal is on.
/// CAs (kubeadm does not renew them) and the kubelet's client certificate
/// (the kubelet rotates it) do not count; unreadable files do not either.
pub fn decide(
    spec: &ClusterSpec,
    certs: &[(String, Vec<proto::ClusterCert>)],
    now_unix: i64,
) -> Option<Due> {
    if !spec.cert_renewal.auto_renew {
        return None;
    }
    let window = spec.cert_renewal.renew_before.as_secs() as i64;
    certs
        .iter()
        .filter(|(node, _)| spec.control_planes().any(|cp| &cp.name == node))
        .flat_map(|(node, list)| list.iter().map(move |c| (node, c)))
        .filter(|(_, c)| {
            c.error.is_empty() && !c.is_ca && kh::RENEWABLE_CERTS.contains(&c.name.as_str())
        })
        .min_by_key(|(_, c)| c.not_after_unix)
        .map(|(node, c)| Due {
            node: node.clone(),
            cert: c.name.clone(),
            left_secs: c.not_after_unix - now_unix,
        })
        .filter(|d| d.left_secs < window)
}

/// Why a check did not start a renewal, or that it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    NoCluster,
    Off,
    Busy(String),
    NothingDue,
    Started(Due),
    Refused(String),
}

/// One check: reads every control plane's certificates through its agent
/// and starts the renewal when one is due.
pub async fn check_once(coord: &Arc<Coordinator>) -> Checked {
    let Ok(spec) = crate::etcd::held_spec(coord) else {
        return Checked::NoCluster;
    };
    if !spec.cert_renewal.auto_renew {
        return Checked::Off;
    }
    {
        let guard = coord.rollouts.current.lock().await;
        if let Some(rep) = guard.as_ref() {
            let st = rep.state.lock().await;
            if st.outcome.is_none() {
                return Checked::Busy(format!("{} is running", st.operation));
            }
        }
    }
    match super::operation::list(coord).await {
        Ok(ops) => {
            if let Some(op) = ops.iter().find(|o| o.pending) {
                return Checked::Busy(format!("{} is pending resume", op.operation));
            }
        }
        Err(e) => return Checked::Busy(format!("cannot list operations: {e}")),
    }
    let mut certs = vec![];
    for cp in spec.control_planes() {
        let Ok(name) = kh::names::NodeName::new(&cp.name) else {
            continue;
        };
        let Ok(Some(rec)) = coord.registry.get(&name) else {
            continue;
        };
        match coord
            .agents
            .cluster_certs(&rec, Duration::from_secs(20))
            .await
        {
            Ok(r) => certs.push((cp.name.clone(), r.certs)),
            Err(e) => {
                tracing::warn!(node = %cp.name, error = %e.message, "automatic renewal: cannot read the certificates of this control plane")
            }
        }
    }
    let now = kh::time::unix_ms(coord.clock.now()) as i64 / 1000;
    let Some(due) = decide(&spec, &certs, now) else {
        return Checked::NothingDue;
    };
    let req = CertsRenewRequest {
        all: true,
        names: vec![],
        dry_run: false,
        no_snapshot: false,
    };
    match super::certs::start_as(coord.clone(), req, Some(due.reason(&spec))).await {
        Ok(_) => Checked::Started(due),
        Err(e) => Checked::Refused(e.to_string()),
    }
}

/// Checks now and then every `interval`, for as long as the coordinator runs.
pub async fn run(coord: Arc<Coordinator>, interval: Duration) {
    loop {
        match check_once(&coord).await {
            Checked::Started(due) => {
                tracing::info!(node = %due.node, cert = %due.cert, left_secs = due.left_secs, "automatic certificate renewal started")
            }
            Checked::Refused(why) => {
                tracing::warn!(error = %why, "automatic certificate renewal is due but was refused; next check in one interval")
            }
            Checked::Busy(why) => {
                tracing::info!(reason = %why, "automatic certificate check skipped")
            }
            Checked::NothingDue => {
                tracing::info!(
                    "automatic certificate check: no control-plane certificate is due for renewal"
                )
            }
            Checked::NoCluster | Checked::Off => {}
        }
        tokio::time::sleep(interval).await;
    }
}
