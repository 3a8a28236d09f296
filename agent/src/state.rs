//! What the agent's tasks share: its identity (replaced on renewal), the Host
//! seam, heartbeat status for readiness, and metrics.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use kh_host::Host;

use crate::identity::{AgentIdentity, CoordinatorPin, Paths};
use crate::metrics::Metrics;

#[derive(Debug, Clone, Default)]
pub struct HeartbeatStatus {
    pub last_ok: Option<Instant>,
    pub last_error: Option<String>,
    /// The interval the coordinator asked for; None until it answered once.
    pub interval: Option<Duration>,
}

pub struct AgentState {
    pub paths: Paths,
    identity: RwLock<AgentIdentity>,
    pub host: Host,
    pub metrics: Metrics,
    pub heartbeat: Mutex<HeartbeatStatus>,
    pub server_cert: kh::tls::ServerCert,
    /// host:port where the Agent service is reachable.
    pub endpoint: String,
    pub extra_addresses: Vec<std::net::IpAddr>,
    /// One host step at a time; queries about kubeadm's state wait for it.
    pub steps_lock: Arc<tokio::sync::Mutex<()>>,
    /// The coordinator certificate steps are accepted from.
    pin: RwLock<Option<CoordinatorPin>>,
    /// Held while asking the coordinator for its current serial, with when
    /// that was last done, for which caller's serial, and its answer (see
    /// `crate::pin`).
    pub pin_confirm: tokio::sync::Mutex<Option<(Instant, String, String)>>,
    /// Why the coordinator retired this node, as its last heartbeat
    /// answer said; `None` while it is part of the cluster.
    pub retired: Mutex<Option<String>>,
}

/// Until the coordinator has named its interval, readiness allows this long.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30);

impl AgentState {
    pub fn new(
        paths: Paths,
        identity: AgentIdentity,
        host: Host,
        server_cert: kh::tls::ServerCert,
        endpoint: String,
        extra_addresses: Vec<std::net::IpAddr>,
    ) -> Arc<Self> {
        let metrics = Metrics::new();
        let pin = paths.load_pin().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the pinned coordinator certificate; the next call the coordinator confirms pins it again");
            None
        });
        if let Some(t) = identity.not_after() {
            metrics.cert_expiry.set(unix_secs(t));
        }
        Arc::new(AgentState {
            paths,
            identity: RwLock::new(identity),
            host,
            metrics,
            heartbeat: Mutex::new(HeartbeatStatus::default()),
            server_cert,
            endpoint,
            extra_addresses,
            steps_lock: Arc::new(tokio::sync::Mutex::new(())),
            pin: RwLock::new(pin),
            pin_confirm: tokio::sync::Mutex::new(None),
            retired: Mutex::new(None),
        })
    }

    pub fn identity(&self) -> AgentIdentity {
        self.identity
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Installs a renewed identity for both directions: the server presents
    /// it to the coordinator at once, and the heartbeat loop rebuilds its
    /// channel from it.
    pub fn replace_identity(&self, id: AgentIdentity) -> anyhow::Result<()> {
        self.server_cert.replace(kh::tls::certified_key(
            &format!("{}{}", id.cert_pem, id.ca_pem),
            &id.key_pem,
        )?);
        if let Some(t) = id.not_after() {
            self.metrics.cert_expiry.set(unix_secs(t));
        }
        *self.identity.write().unwrap_or_else(|e| e.into_inner()) = id;
        Ok(())
    }

    /// The pinned coordinator certificate, if there is one yet.
    pub fn pinned_coordinator(&self) -> Option<CoordinatorPin> {
        self.pin.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Pins a coordinator certificate (`crate::pin` decides which). Saved
    /// before it is used, so a restart keeps it.
    pub fn pin_coordinator(&self, pin: CoordinatorPin) -> anyhow::Result<()> {
        self.paths.save_pin(Some(&pin))?;
        tracing::info!(serial = %pin.serial, "pinned the coordinator's certificate");
        *self.pin.write().unwrap_or_else(|e| e.into_inner()) = Some(pin);
        Ok(())
    }

    pub fn heartbeat_status(&self) -> HeartbeatStatus {
        self.heartbeat
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Readiness: each failing check as "name: why". Empty means ready.
    pub fn readiness_problems(&self) -> Vec<String> {
        let mut problems = vec![];
        let id = self.identity();
        match id.not_after() {
            None => problems.push(
                "identity: the node certificate cannot be parsed; re-enroll this agent".into(),
            ),
            Some(t) if t <= SystemTime::now() => problems.push(format!(
                "identity: the node certificate expired at {}; re-enroll this agent",
                humantime::format_rfc3339_seconds(t)
            )),
            Some(_) => {}
        }
        let hb = self.heartbeat_status();
        let window = hb.interval.map(|i| i * 3).unwrap_or(DEFAULT_WINDOW);
        match hb.last_ok {
            Some(t) if t.elapsed() <= window => {}
            Some(t) => problems.push(format!(
                "coordinator: last heartbeat accepted {}s ago, more than the {}s window{}",
                t.elapsed().as_secs(),
                window.as_secs(),
                hb.last_error
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default()
            )),
            None => problems.push(format!(
                "coordinator: no heartbeat accepted yet by {}{}",
                id.enrollment.coordinator,
                hb.last_error
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default()
            )),
        }
        match self.host.read_dir("/") {
            Ok(Some(_)) => {}
            Ok(None) => problems.push(format!(
                "host root: {} does not exist",
                self.host.root().display()
            )),
            Err(e) => problems.push(format!(
                "host root: {} is not usable: {e}",
                self.host.root().display()
            )),
        }
        problems
    }
}

pub fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
