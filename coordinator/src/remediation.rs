//! Self-healing control planes: a task of the coordinator that watches the
//! control planes of the held spec and, when `remediation.enabled`, replaces
//! one that has failed with a spare from `spares`, through the same
//! operation as `khctl etcd replace --failed X --with SPARE`.
//!
//! Every tick observes each control plane: its agent's heartbeat (the
//! registry), its etcd member's health as a healthy control plane's agent
//! sees it (`EtcdHealth` for every member), and its apiserver's `/readyz`
//! asked through another control plane's agent (the coordinator never talks
//! to the cluster itself). A control plane is a candidate only when, for
//! `unhealthyAfter` without a break, its agent is gone or its etcd member is
//! unhealthy, *and* its apiserver does not answer. The decision itself is
//! [`decide`], pure, over those observations: nothing before one full window
//! after the coordinator started; never without quorum among the other
//! members; one replacement at a time, never beside another operation or
//! another holder of the control-plane lease; at most `maxRetry` attempts for
//! one control plane per `retryPeriod` (reset once it has been healthy for
//! `minHealthyPeriod`); and only with a spare whose agent reports.
//!
//! What the watcher keeps (pause, attempts, the replacement in flight, the
//! last decision, counters) is one record in the store, so a coordinator
//! killed in the middle of a replacement resumes that replacement (never a
//! second one), and the metrics are right after a restart. Every decision,
//! including one not to act, is in the audit log (`khctl history`, operation
//! `remediation`) once per change of its reason, not every tick.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kh::proto::{self, EtcdReplaceRequest};
use kh::spec::{ClusterSpec, Remediation};
use kh::time::unix_ms;

use crate::error::CoordError;
use crate::rollout::ops::url;
use crate::rollout::replace;
use crate::rollout::state::RolloutState;
use crate::Coordinator;

/// The store key of the watcher's record.
pub const KEY: &str = "remediation/state";
/// The operation name of the watcher's audit entries.
pub const AUDIT_OPERATION: &str = "remediation";
/// How long one observation may wait for an agent's apiserver probe.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);
/// etcdctl gives each endpoint that does not answer its dial timeout, for
/// `endpoint health` and again for `endpoint status`.
const ETCD_ASK_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Observations

/// What the etcd member of a control plane looks like from a control plane
/// whose agent answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EtcdSeen {
    /// `endpoint health` passes.
    Healthy,
    /// Answers `endpoint status` (it runs) but is not healthy: no quorum.
    Running,
    /// Neither.
    Down,
    /// No control plane's agent could ask.
    Unknown,
}

impl EtcdSeen {
    /// Running, with or without quorum: a member that counts towards it.
    fn alive(self) -> bool {
        matches!(self, EtcdSeen::Healthy | EtcdSeen::Running)
    }
}

/// Whether a control plane's apiserver answered `/readyz` with ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApiSeen {
    Ready,
    /// Asked, and it did not answer ready.
    NotReady,
    /// No agent could ask.
    Unknown,
}

/// One control plane at one tick.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Seen {
    pub node: String,
    /// Its agent heartbeats.
    pub agent: bool,
    pub etcd: EtcdSeen,
    pub apiserver: ApiSeen,
}

impl Seen {
    /// Failed by the rule: (agent gone OR etcd member unhealthy) AND the
    /// apiserver does not answer. An apiserver nobody could ask is not
    /// known to be down, so it does not count.
    pub fn failing(&self) -> bool {
        (!self.agent || self.etcd != EtcdSeen::Healthy) && self.apiserver == ApiSeen::NotReady
    }

    /// Every part healthy.
    pub fn healthy(&self) -> bool {
        self.agent && self.etcd == EtcdSeen::Healthy && self.apiserver == ApiSeen::Ready
    }

    /// The observation in words, for status and the audit log.
    pub fn words(&self) -> String {
        format!(
            "agent {}, etcd {}, apiserver {}",
            if self.agent { "reporting" } else { "gone" },
            match self.etcd {
                EtcdSeen::Healthy => "healthy",
                EtcdSeen::Running => "running without quorum",
                EtcdSeen::Down => "down",
                EtcdSeen::Unknown => "unknown",
            },
            match self.apiserver {
                ApiSeen::Ready => "ready",
                ApiSeen::NotReady => "not answering",
                ApiSeen::Unknown => "unknown",
            }
        )
    }
}

/// What the watcher remembers between ticks (in memory: after a restart it
/// starts over, and waits one full window).
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    /// When this watcher started observing.
    pub started_ms: u64,
    pub nodes: BTreeMap<String, Track>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Track {
    pub last: Seen,
    /// When `last` began to be observed as it is.
    pub since: u64,
    /// Failing without a break since.
    pub failing_since: Option<u64>,
    /// Healthy without a break since.
    pub healthy_since: Option<u64>,
}

impl Tracker {
    pub fn new(now_ms: u64) -> Self {
        Tracker {
            started_ms: now_ms,
            nodes: BTreeMap::new(),
        }
    }

    /// Takes one tick's observations; control planes no longer observed
    /// (replaced, gone from the spec) are forgotten.
    pub fn observe(&mut self, now_ms: u64, seen: &[Seen]) {
        self.nodes
            .retain(|name, _| seen.iter().any(|s| &s.node == name));
        for s in seen {
            let t = self.nodes.entry(s.node.clone()).or_insert(Track {
                last: s.clone(),
                since: now_ms,
                failing_since: None,
                healthy_since: None,
            });
            t.failing_since = if s.failing() {
                t.failing_since.or(Some(now_ms))
            } else {
                None
            };
            t.healthy_since = if s.healthy() {
                t.healthy_since.or(Some(now_ms))
            } else {
                None
            };
            if t.last != *s {
                t.since = now_ms;
            }
            t.last = s.clone();
        }
    }
}

// ---------------------------------------------------------------------------
// The persisted record

/// A replacement the watcher started and has not seen end.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InFlight {
    pub failed: String,
    pub spare: String,
    pub started_ms: u64,
}

/// One decision, as status shows it and the audit log records it.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct DecisionRecord {
    pub unix_ms: u64,
    /// The reason code, e.g. `no-quorum`.
    pub reason: String,
    /// The control plane it is about, or empty.
    pub node: String,
    pub message: String,
}

/// The store key of `khctl remediation pause`.
pub const PAUSED_KEY: &str = "remediation/paused";

/// Whether `khctl remediation pause` is in force.
pub fn paused(db: &crate::store::Db) -> Result<bool, CoordError> {
    Ok(db.get_json::<bool>(PAUSED_KEY)?.unwrap_or(false))
}

/// The watcher's record in the store.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Record {
    /// `khctl remediation pause`: observe and audit, never act. Kept under
    /// its own key ([`PAUSED_KEY`]), which only pause and resume write, so
    /// a tick that saves the record can never undo a pause made meanwhile.
    #[serde(skip)]
    pub paused: bool,
    /// When each replacement of a control plane started, by its name.
    pub attempts: BTreeMap<String, Vec<u64>>,
    pub in_flight: Option<InFlight>,
    pub last: Option<DecisionRecord>,
    /// The control planes replaced so far: failed node → its replacement.
    pub replaced: BTreeMap<String, String>,
    /// The last replacement the watcher started failed; cleared by a success.
    pub last_failed: Option<String>,
    pub started: u64,
    pub succeeded: u64,
    pub failed: u64,
}

impl Record {
    pub fn load(db: &crate::store::Db) -> Result<Record, CoordError> {
        let mut r = db.get_json::<Record>(KEY)?.unwrap_or_default();
        r.paused = paused(db)?;
        Ok(r)
    }

    pub fn save(&self, db: &crate::store::Db) -> Result<(), CoordError> {
        Ok(db.put_json(KEY, self)?)
    }

    /// Forgets attempts older than `retry_period`, and every attempt of a
    /// control plane healthy for `min_healthy_period`.
    pub fn prune_attempts(&mut self, settings: &Remediation, tracker: &Tracker, now_ms: u64) {
        let period = ms(settings.retry_period);
        let healthy_for = ms(settings.min_healthy_period);
        for (node, times) in self.attempts.iter_mut() {
            times.retain(|t| now_ms.saturating_sub(*t) < period);
            let healthy_long = tracker
                .nodes
                .get(node)
                .and_then(|t| t.healthy_since)
                .is_some_and(|since| now_ms.saturating_sub(since) >= healthy_for);
            if healthy_long {
                times.clear();
            }
        }
        self.attempts.retain(|_, v| !v.is_empty());
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------
// The decision

/// What the decision sees besides the observations.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub now_ms: u64,
    pub settings: &'a Remediation,
    pub paused: bool,
    pub tracker: &'a Tracker,
    /// Another operation runs or is pending, or someone else holds the
    /// lease: what, in words.
    pub busy: Option<String>,
    /// Spares that can be used now (enrolled, reporting), in spec order.
    pub spares: &'a [String],
    /// Spares of the spec that cannot be used, with why.
    pub spares_unusable: &'a [(String, String)],
    pub attempts: &'a BTreeMap<String, Vec<u64>>,
    /// A replacement that changed the cluster and stopped: (failed, spare).
    /// Only it may continue, with its own spare.
    pub pending: Option<(String, String)>,
}

/// What to do, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do; the reason says why (`healthy`, `observing`, ...).
    Wait {
        reason: &'static str,
        node: String,
        message: String,
    },
    /// Something needs a replacement and cannot get one: the alert.
    Blocked {
        reason: &'static str,
        node: String,
        message: String,
    },
    /// Replace `failed` with `spare`.
    Replace {
        failed: String,
        spare: String,
        message: String,
    },
}

impl Decision {
    pub fn reason(&self) -> &'static str {
        match self {
            Decision::Wait { reason, .. } | Decision::Blocked { reason, .. } => reason,
            Decision::Replace { .. } => "replace",
        }
    }

    pub fn node(&self) -> &str {
        match self {
            Decision::Wait { node, .. } | Decision::Blocked { node, .. } => node,
            Decision::Replace { failed, .. } => failed,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Decision::Wait { message, .. }
            | Decision::Blocked { message, .. }
            | Decision::Replace { message, .. } => message,
        }
    }
}

/// The reasons that block a needed replacement (each one value of the
/// `kh_coordinator_remediation_blocked{reason}` gauge).
pub const BLOCKED_REASONS: &[&str] = &["no-quorum", "no-spare", "max-retry", "failed"];

fn secs(ms: u64) -> String {
    kh::time::short_duration((ms / 1000) as i64)
}

/// The decision, pure: observations over time and the record → what to do.
pub fn decide(i: &Inputs<'_>) -> Decision {
    let window = ms(i.settings.unhealthy_after);
    let wait = |reason, node: &str, message: String| Decision::Wait {
        reason,
        node: node.to_string(),
        message,
    };
    let blocked = |reason, node: &str, message: String| Decision::Blocked {
        reason,
        node: node.to_string(),
        message,
    };
    if !i.settings.enabled {
        return wait(
            "disabled",
            "",
            "remediation.enabled is off in the held spec".into(),
        );
    }
    let failing: Vec<(&String, &Track)> = i
        .tracker
        .nodes
        .iter()
        .filter(|(_, t)| t.failing_since.is_some())
        .collect();
    if i.now_ms.saturating_sub(i.tracker.started_ms) < window {
        return wait(
            "starting",
            "",
            format!(
                "the coordinator started {} ago: observing one full window (unhealthyAfter {}) before deciding anything",
                secs(i.now_ms.saturating_sub(i.tracker.started_ms)),
                secs(window)
            ),
        );
    }
    // Candidates: failing for a whole window; the longest first.
    let mut candidates: Vec<(&String, &Track, u64)> = failing
        .iter()
        .filter_map(|(n, t)| {
            let since = t.failing_since?;
            (i.now_ms.saturating_sub(since) >= window).then_some((*n, *t, since))
        })
        .collect();
    candidates.sort_by_key(|(n, _, since)| (*since, (*n).clone()));
    let Some((node, track, since)) = candidates.first().copied() else {
        return match failing.first() {
            Some((n, t)) => wait(
                "observing",
                n,
                format!(
                    "{n} is failing ({}) for {} of the {} window",
                    t.last.words(),
                    secs(i.now_ms.saturating_sub(t.failing_since.unwrap_or(i.now_ms))),
                    secs(window)
                ),
            ),
            None => wait("healthy", "", "no control plane is failing".into()),
        };
    };
    let why = format!(
        "{node} has been failing for {} ({}), longer than unhealthyAfter {}",
        secs(i.now_ms.saturating_sub(since)),
        track.last.words(),
        secs(window)
    );
    if i.tracker
        .nodes
        .values()
        .all(|t| t.last.etcd == EtcdSeen::Unknown)
    {
        return wait(
            "etcd-unknown",
            node,
            format!("{why}; not replaced: no control plane's agent could report etcd's health, so quorum cannot be judged"),
        );
    }
    // Quorum: the other voters that run must be a majority of the voters
    // left after the removal, or no membership change can succeed.
    let voters = i.tracker.nodes.len();
    let alive_others = i
        .tracker
        .nodes
        .iter()
        .filter(|(n, t)| *n != node && t.last.etcd.alive())
        .count();
    let needed = (voters.saturating_sub(1)) / 2 + 1;
    if alive_others < needed {
        let down: Vec<&str> = candidates.iter().map(|(n, _, _)| n.as_str()).collect();
        return blocked(
            "no-quorum",
            node,
            format!(
                "{why}; not replaced: only {alive_others} of the other {} etcd members run and quorum needs {needed} (failed: {}). No membership change can succeed without quorum: bring a failed control plane back, or restore a snapshot with `khctl etcd restore --snapshot ID --yes`",
                voters.saturating_sub(1),
                down.join(", ")
            ),
        );
    }
    if i.paused {
        return wait(
            "paused",
            node,
            format!("{why}; not replaced: remediation is paused (`khctl remediation resume` lets it act)"),
        );
    }
    if let Some((p_failed, _)) = &i.pending {
        if p_failed != node {
            return wait(
                "busy",
                node,
                format!(
                    "{why}; not replaced yet: the unfinished replacement of {p_failed} comes first"
                ),
            );
        }
    }
    let used = i
        .attempts
        .get(node)
        .map(|v| {
            v.iter()
                .filter(|t| i.now_ms.saturating_sub(**t) < ms(i.settings.retry_period))
                .count()
        })
        .unwrap_or(0);
    if used >= i.settings.max_retry as usize {
        return blocked(
            "max-retry",
            node,
            format!(
                "{why}; not replaced: {used} replacements of {node} were attempted within retryPeriod {} (maxRetry {}). Look at `khctl history` and `khctl operation status`, fix the cause, then replace it with `khctl etcd replace --failed {node} --with SPARE`",
                secs(ms(i.settings.retry_period)),
                i.settings.max_retry
            ),
        );
    }
    let spare = match &i.pending {
        Some((_, s)) => Some(s.clone()),
        None => i.spares.first().cloned(),
    };
    let Some(spare) = spare else {
        let unusable: Vec<String> = i
            .spares_unusable
            .iter()
            .map(|(n, why)| format!("{n}: {why}"))
            .collect();
        return blocked(
            "no-spare",
            node,
            format!(
                "{why}; not replaced: no spare is left{}. Enroll a host and add it with `khctl spares add NAME` (or list it in spec.spares and run `khctl rollout`)",
                if unusable.is_empty() { String::new() } else { format!(" ({})", unusable.join("; ")) }
            ),
        );
    };
    if let Some(what) = &i.busy {
        return wait("busy", node, format!("{why}; not replaced yet: {what}"));
    }
    Decision::Replace {
        failed: node.clone(),
        message: format!(
            "{why}; replacing it with spare {spare} (attempt {} of {} within retryPeriod)",
            used + 1,
            i.settings.max_retry
        ),
        spare,
    }
}

// ---------------------------------------------------------------------------
// Observing the cluster

/// One observation of every control plane of `spec`.
pub async fn observe(coord: &Coordinator, spec: &ClusterSpec) -> Vec<Seen> {
    let now = unix_ms(coord.clock.now());
    let views = coord
        .registry
        .list(now, coord.config.heartbeat_interval)
        .unwrap_or_default();
    let record = |name: &str| {
        views
            .iter()
            .find(|v| v.record.name.as_str() == name)
            .map(|v| (v.record.clone(), v.ready))
    };
    let cps: Vec<&kh::spec::NodeSpec> = spec.control_planes().collect();
    let up: Vec<&kh::spec::NodeSpec> = cps
        .iter()
        .copied()
        .filter(|c| record(&c.name).is_some_and(|(_, ready)| ready))
        .collect();
    // etcd as one reporting control plane sees every member.
    let endpoints: Vec<String> = cps.iter().map(|c| url(c.address, 2379)).collect();
    let mut health: Option<proto::EtcdHealthResponse> = None;
    for via in &up {
        let Some((rec, _)) = record(&via.name) else {
            continue;
        };
        if let Ok(h) = coord
            .agents
            .etcd_health(
                &rec,
                proto::EtcdRequest {
                    endpoints: endpoints.clone(),
                    external: false,
                },
                ETCD_ASK_TIMEOUT,
            )
            .await
        {
            health = Some(h);
            break;
        }
    }
    let mut out = vec![];
    for cp in &cps {
        let ep = url(cp.address, 2379);
        let etcd = match &health {
            None => EtcdSeen::Unknown,
            Some(h) => {
                if h.health.iter().any(|x| x.endpoint == ep && x.healthy) {
                    EtcdSeen::Healthy
                } else if h.status.iter().any(|x| x.endpoint == ep) {
                    EtcdSeen::Running
                } else {
                    EtcdSeen::Down
                }
            }
        };
        // The apiserver through another reporting control plane's agent,
        // or its own when it is the only one.
        let api_url = format!("https://{}", std::net::SocketAddr::new(cp.address, 6443));
        let mut apiserver = ApiSeen::Unknown;
        let vias = up
            .iter()
            .filter(|v| v.name != cp.name)
            .chain(up.iter().filter(|v| v.name == cp.name));
        for via in vias {
            let Some((rec, _)) = record(&via.name) else {
                continue;
            };
            if let Ok(r) = coord
                .agents
                .apiserver_ready(
                    &rec,
                    proto::ApiserverReadyRequest {
                        url: api_url.clone(),
                    },
                    ASK_TIMEOUT,
                )
                .await
            {
                apiserver = if r.ready {
                    ApiSeen::Ready
                } else {
                    ApiSeen::NotReady
                };
                break;
            }
        }
        out.push(Seen {
            node: cp.name.clone(),
            agent: record(&cp.name).is_some_and(|(_, ready)| ready),
            etcd,
            apiserver,
        });
    }
    out
}

/// Spares of `spec` that can be used now, and those that cannot with why.
pub fn spares(coord: &Coordinator, spec: &ClusterSpec) -> (Vec<String>, Vec<(String, String)>) {
    let now = unix_ms(coord.clock.now());
    let views = coord
        .registry
        .list(now, coord.config.heartbeat_interval)
        .unwrap_or_default();
    let mut ok = vec![];
    let mut not = vec![];
    for s in &spec.spares {
        match views.iter().find(|v| v.record.name.as_str() == s) {
            None => not.push((s.clone(), "not enrolled".to_string())),
            Some(v) if v.record.retired.is_some() => not.push((
                s.clone(),
                "retired: reset it and add it with `khctl spares add`".to_string(),
            )),
            Some(v) if !v.ready => not.push((s.clone(), "its agent is not reporting".to_string())),
            Some(_) => ok.push(s.clone()),
        }
    }
    (ok, not)
}

/// What else would make a replacement now wrong: another operation running
/// or pending (other than this watcher's own replacement), or the lease held
/// by someone else.
async fn busy(coord: &Coordinator, own_op: Option<String>) -> Option<String> {
    match crate::rollout::operation::list(coord).await {
        Ok(ops) => {
            if let Some(op) = ops.iter().find(|o| o.state == "running") {
                return Some(format!("{} is running", op.operation));
            }
            if let Some(op) = ops
                .iter()
                .find(|o| o.pending && o.changed && Some(&o.operation) != own_op.as_ref())
            {
                return Some(format!(
                    "{} is unfinished and has changed the cluster ({})",
                    op.operation, op.next
                ));
            }
        }
        Err(e) => return Some(format!("cannot list the operations: {e}")),
    }
    match crate::lease::current(&coord.db, coord.clock.as_ref()) {
        Ok(Some(l)) => Some(format!(
            "the control-plane lease is held: {}",
            crate::lease::describe(&l)
        )),
        Ok(None) => None,
        Err(e) => Some(format!("cannot read the control-plane lease: {e}")),
    }
}

// ---------------------------------------------------------------------------
// A rollout with the operator's spec from before a replacement

/// The operator's cluster.yaml still lists a control plane remediation
/// replaced (and its replacement as a spare): a rollout of it would join the
/// retired node again and undo the replacement. Returns the spec's YAML with
/// each such replacement carried over (the replacement as the held spec has
/// it, out of the spares), and a note for each, telling the operator the
/// change to make. A spec that already follows is returned unchanged.
pub fn follow_replacements(
    coord: &Coordinator,
    spec_yaml: &str,
) -> Result<(String, Vec<String>), CoordError> {
    let rec = Record::load(&coord.db)?;
    let Ok(held) = crate::etcd::held_spec(coord) else {
        return Ok((spec_yaml.to_string(), vec![]));
    };
    let mut yaml = spec_yaml.to_string();
    let mut notes = vec![];
    // A chain (cp-2 by cp-9, then cp-9 by cp-10) takes one pass per link.
    for _ in 0..=rec.replaced.len() {
        let Ok(spec) = kh::spec::parse(&yaml) else {
            break;
        };
        let mut changed = false;
        for (failed, with) in &rec.replaced {
            let listed = spec
                .node(failed)
                .is_some_and(|n| n.role == kh::spec::NodeRole::ControlPlane);
            let Some(new) = held
                .node(with)
                .filter(|_| listed && spec.node(with).is_none())
            else {
                continue;
            };
            if held.node(failed).is_some() {
                continue;
            }
            match replace::substitute_node(&yaml, failed, new) {
                Ok(next) => {
                    notes.push(format!(
                        "{failed} was replaced by {with} (remediation); this rollout keeps {with} ({}) in its place. Update cluster.yaml the same way: replace the node {failed} by {{name: {with}, role: control-plane, address: {}}} and remove {with} from spares",
                        new.address, new.address
                    ));
                    yaml = next;
                    changed = true;
                }
                Err(e) => {
                    return Err(CoordError::InvalidArgument(format!(
                        "the cluster spec lists {failed}, which remediation replaced by {with}; carrying that over failed ({e}). Update cluster.yaml: replace the node {failed} by {with} and remove {with} from spares"
                    )))
                }
            }
        }
        if !changed {
            break;
        }
    }
    Ok((yaml, notes))
}

// ---------------------------------------------------------------------------
// The task

/// The watcher's memory while the coordinator runs, shared with `khctl
/// remediation status`. `None` until the watcher's first tick.
#[derive(Default)]
pub struct Shared(std::sync::Mutex<Option<Tracker>>);

impl Shared {
    fn get(&self) -> Option<Tracker> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, t: Tracker) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
    }
}

/// What one tick did, for the log and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ticked {
    Off,
    /// A replacement the watcher started is running.
    InFlight(String),
    Resumed(String),
    Decided(String),
    Started(String),
    Refused(String),
}

/// Records a decision: the last one in the record, and an audit entry when
/// its reason (or node) changed.
fn record_decision(coord: &Coordinator, rec: &mut Record, d: &DecisionRecord) {
    let changed = rec
        .last
        .as_ref()
        .is_none_or(|l| l.reason != d.reason || l.node != d.node);
    if changed {
        let outcome = if BLOCKED_REASONS.contains(&d.reason.as_str()) {
            "blocked"
        } else if d.reason == "replace" || d.reason == "resume" {
            "started"
        } else if d.reason == "succeeded" {
            "ok"
        } else {
            "no action"
        };
        if let Err(e) = crate::audit::append(
            &coord.db,
            coord.clock.as_ref(),
            AUDIT_OPERATION,
            if d.node.is_empty() {
                "cluster"
            } else {
                &d.node
            },
            &d.reason,
            outcome,
            &d.message,
        ) {
            tracing::warn!(error = %e, "cannot write the remediation decision to the audit log");
        }
        if outcome == "blocked" {
            tracing::warn!(reason = %d.reason, node = %d.node, "remediation blocked: {}", d.message);
        } else {
            tracing::info!(reason = %d.reason, node = %d.node, "remediation: {}", d.message);
        }
    }
    rec.last = Some(d.clone());
}

fn replace_request(failed: &str, spare: &str) -> EtcdReplaceRequest {
    // The watcher checked quorum itself, and its candidate does not serve
    // (its apiserver has not answered for a whole window): --force accepts
    // removing a member that may still run.
    EtcdReplaceRequest {
        failed: failed.to_string(),
        with: spare.to_string(),
        force: true,
        address: String::new(),
        no_snapshot: false,
    }
}

/// Checks on the replacement in flight: `Some` while it needs nothing more
/// this tick.
async fn follow_in_flight(coord: &Arc<Coordinator>, rec: &mut Record) -> Option<Ticked> {
    let f = rec.in_flight.clone()?;
    let op = format!("etcd replace {} with {}", f.failed, f.spare);
    let st = RolloutState::load_at(&coord.db, replace::KEY)
        .ok()
        .flatten();
    let running_here = coord
        .rollouts
        .running_operation()
        .await
        .is_some_and(|(key, name)| key == replace::KEY && name == op);
    if running_here {
        return Some(Ticked::InFlight(op));
    }
    let now = unix_ms(coord.clock.now());
    match st.filter(|s| s.operation == op).and_then(|s| s.outcome) {
        Some(o) if o.ok => {
            rec.in_flight = None;
            rec.succeeded += 1;
            rec.last_failed = None;
            rec.replaced.insert(f.failed.clone(), f.spare.clone());
            record_decision(
                coord,
                rec,
                &DecisionRecord {
                    unix_ms: now,
                    reason: "succeeded".into(),
                    node: f.failed.clone(),
                    message: format!(
                        "{} replaced {}: etcd has its voters back and health passes. The held spec lists {} as a control plane and no longer as a spare; make the same change in cluster.yaml (replace the node {} by {} and remove {} from spares)",
                        f.spare, f.failed, f.spare, f.failed, f.spare, f.spare
                    ),
                },
            );
            None
        }
        Some(o) => {
            rec.in_flight = None;
            rec.failed += 1;
            rec.last_failed = Some(f.failed.clone());
            record_decision(
                coord,
                rec,
                &DecisionRecord {
                    unix_ms: now,
                    reason: "failed".into(),
                    node: f.failed.clone(),
                    message: format!(
                        "the replacement of {} with {} failed: {}",
                        f.failed, f.spare, o.message
                    ),
                },
            );
            None
        }
        None => {
            // Not running here and not finished: the coordinator stopped in
            // the middle. Resume that very replacement.
            match replace::start(coord.clone(), replace_request(&f.failed, &f.spare)).await {
                Ok(_) => {
                    record_decision(
                        coord,
                        rec,
                        &DecisionRecord {
                            unix_ms: now,
                            reason: "resume".into(),
                            node: f.failed.clone(),
                            message: format!(
                                "resuming the replacement of {} with {} that the coordinator was stopped in the middle of",
                                f.failed, f.spare
                            ),
                        },
                    );
                    Some(Ticked::Resumed(op))
                }
                Err(e) => Some(Ticked::Refused(format!("cannot resume {op}: {e}"))),
            }
        }
    }
}

/// One tick: observe, decide, act.
pub async fn tick(coord: &Arc<Coordinator>) -> Result<Ticked, CoordError> {
    let Ok(spec) = crate::etcd::held_spec(coord) else {
        return Ok(Ticked::Off);
    };
    let mut rec = Record::load(&coord.db)?;
    let before = rec.clone();
    if !spec.remediation.enabled && rec.in_flight.is_none() {
        if rec.last.as_ref().is_some_and(|l| l.reason != "disabled") {
            let now = unix_ms(coord.clock.now());
            record_decision(
                coord,
                &mut rec,
                &DecisionRecord {
                    unix_ms: now,
                    reason: "disabled".into(),
                    node: String::new(),
                    message: "remediation.enabled is off in the held spec".into(),
                },
            );
            rec.save(&coord.db)?;
        }
        return Ok(Ticked::Off);
    }
    if crate::etcd::is_external(&spec) {
        return Ok(Ticked::Off);
    }
    if let Some(t) = follow_in_flight(coord, &mut rec).await {
        if rec != before {
            rec.save(&coord.db)?;
        }
        return Ok(t);
    }
    // The spec may have changed with the replacement that just ended.
    let spec = crate::etcd::held_spec(coord)?;
    let seen = observe(coord, &spec).await;
    let now = unix_ms(coord.clock.now());
    let mut tracker = coord.remediation.get().unwrap_or_else(|| Tracker::new(now));
    tracker.observe(now, &seen);
    coord.remediation.set(tracker.clone());
    rec.prune_attempts(&spec.remediation, &tracker, now);
    let (usable, unusable) = spares(coord, &spec);
    let pending = replace::pending(coord)
        .await
        .ok()
        .flatten()
        .filter(|p| !p.running)
        .map(|p| (p.failed, p.with));
    // A pending replacement the watcher did not start (an operator's) is
    // the operator's to finish.
    let pending = match pending {
        Some((f, s))
            if rec.replaced.contains_key(&f)
                || rec.attempts.contains_key(&f)
                || rec.last_failed.as_ref() == Some(&f) =>
        {
            Some((f, s))
        }
        Some((f, s)) => {
            let d = DecisionRecord {
                unix_ms: now,
                reason: "busy".into(),
                node: f.clone(),
                message: format!("the replacement of {f} with {s} is unfinished and was not started by remediation; finish it with `khctl etcd replace --failed {f} --with {s}`"),
            };
            record_decision(coord, &mut rec, &d);
            rec.save(&coord.db)?;
            return Ok(Ticked::Decided(d.reason));
        }
        None => None,
    };
    let own = pending
        .as_ref()
        .map(|(f, s)| format!("etcd replace {f} with {s}"));
    let busy = busy(coord, own).await;
    let decision = decide(&Inputs {
        now_ms: now,
        settings: &spec.remediation,
        // Read again: a pause made while this tick observed counts now.
        paused: paused(&coord.db)?,
        tracker: &tracker,
        busy,
        spares: &usable,
        spares_unusable: &unusable,
        attempts: &rec.attempts,
        pending,
    });
    let d = DecisionRecord {
        unix_ms: now,
        reason: decision.reason().to_string(),
        node: decision.node().to_string(),
        message: decision.message().to_string(),
    };
    let result = match &decision {
        Decision::Replace { failed, spare, .. } => {
            record_decision(coord, &mut rec, &d);
            rec.attempts.entry(failed.clone()).or_default().push(now);
            rec.in_flight = Some(InFlight {
                failed: failed.clone(),
                spare: spare.clone(),
                started_ms: now,
            });
            rec.started += 1;
            // Persisted before the operation starts, so a coordinator killed
            // right after resumes it rather than deciding again.
            rec.save(&coord.db)?;
            match replace::start(coord.clone(), replace_request(failed, spare)).await {
                Ok(_) => Ticked::Started(format!("etcd replace {failed} with {spare}")),
                Err(e) => {
                    rec.in_flight = None;
                    rec.failed += 1;
                    rec.last_failed = Some(failed.clone());
                    record_decision(
                        coord,
                        &mut rec,
                        &DecisionRecord {
                            unix_ms: now,
                            reason: "failed".into(),
                            node: failed.clone(),
                            message: format!(
                                "the replacement of {failed} with {spare} was refused: {e}"
                            ),
                        },
                    );
                    Ticked::Refused(e.to_string())
                }
            }
        }
        _ => {
            // A failure stays the alert until a replacement succeeds or
            // the control plane recovers.
            let recovered = rec.last_failed.as_ref().is_some_and(|n| {
                tracker
                    .nodes
                    .get(n)
                    .is_none_or(|t| t.failing_since.is_none())
            });
            if recovered {
                rec.last_failed = None;
            }
            record_decision(coord, &mut rec, &d);
            Ticked::Decided(d.reason.clone())
        }
    };
    if rec != before {
        rec.save(&coord.db)?;
    }
    Ok(result)
}

/// How often to look: a fifth of the window, between 1 s and 30 s.
pub fn tick_interval(settings: Option<&Remediation>) -> Duration {
    match settings {
        Some(s) if s.enabled => {
            (s.unhealthy_after / 5).clamp(Duration::from_secs(1), Duration::from_secs(30))
        }
        _ => Duration::from_secs(5),
    }
}

/// Watches for as long as the coordinator runs. Idle (one store read per
/// tick) while the held spec does not enable remediation.
pub async fn run(coord: Arc<Coordinator>) {
    // The window after a start counts from here.
    coord
        .remediation
        .set(Tracker::new(unix_ms(coord.clock.now())));
    loop {
        match tick(&coord).await {
            Ok(Ticked::Started(op)) => tracing::info!(operation = %op, "remediation started"),
            Ok(Ticked::Resumed(op)) => tracing::info!(operation = %op, "remediation resumed"),
            Ok(Ticked::Refused(why)) => tracing::warn!(error = %why, "remediation refused"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "remediation tick failed"),
        }
        let settings = crate::etcd::held_spec(&coord).ok().map(|s| s.remediation);
        tokio::time::sleep(tick_interval(settings.as_ref())).await;
    }
}

// ---------------------------------------------------------------------------
// khctl remediation status | pause | resume, khctl spares list | add

/// `khctl remediation status`.
pub fn status(coord: &Coordinator) -> Result<proto::RemediationStatus, CoordError> {
    let rec = Record::load(&coord.db)?;
    let spec = crate::etcd::held_spec(coord).ok();
    let settings = spec.as_ref().map(|s| s.remediation).unwrap_or_default();
    let tracker = coord.remediation.get();
    let now = unix_ms(coord.clock.now());
    let window = ms(settings.unhealthy_after);
    let period = ms(settings.retry_period);
    let nodes = tracker
        .as_ref()
        .map(|t| {
            t.nodes
                .iter()
                .map(|(name, tr)| {
                    let (state, since) = match (tr.failing_since, tr.healthy_since) {
                        (Some(f), _) => ("failing", f),
                        (None, Some(h)) => ("healthy", h),
                        (None, None) => ("degraded", tr.since),
                    };
                    proto::RemediationNode {
                        node: name.clone(),
                        observed: tr.last.words(),
                        state: state.into(),
                        since_unix_ms: since,
                        candidate: tr
                            .failing_since
                            .is_some_and(|f| now.saturating_sub(f) >= window),
                        observed_for_ms: now.saturating_sub(tr.since),
                        retries_used: rec
                            .attempts
                            .get(name)
                            .map(|v| {
                                v.iter()
                                    .filter(|t| now.saturating_sub(**t) < period)
                                    .count()
                            })
                            .unwrap_or(0) as u32,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let (usable, unusable) = match &spec {
        Some(s) => spares(coord, s),
        None => (vec![], vec![]),
    };
    let last = rec.last.clone().unwrap_or_default();
    let blocked = if BLOCKED_REASONS.contains(&last.reason.as_str()) {
        last.reason.clone()
    } else if rec.last_failed.is_some() {
        "failed".into()
    } else {
        String::new()
    };
    Ok(proto::RemediationStatus {
        enabled: settings.enabled,
        paused: rec.paused,
        unhealthy_after_ms: window,
        max_retry: settings.max_retry,
        retry_period_ms: period,
        min_healthy_period_ms: ms(settings.min_healthy_period),
        watching_since_unix_ms: tracker.map(|t| t.started_ms).unwrap_or(0),
        nodes,
        spares: usable,
        spares_unusable: unusable
            .into_iter()
            .map(|(n, why)| format!("{n}: {why}"))
            .collect(),
        last_reason: last.reason,
        last_node: last.node,
        last_message: last.message,
        last_unix_ms: last.unix_ms,
        in_flight: rec
            .in_flight
            .as_ref()
            .map(|f| format!("etcd replace {} with {}", f.failed, f.spare))
            .unwrap_or_default(),
        blocked,
        started: rec.started,
        succeeded: rec.succeeded,
        failed: rec.failed,
        message: String::new(),
        replaced: rec
            .replaced
            .iter()
            .map(|(f, s)| format!("{f} -> {s}"))
            .collect(),
    })
}

/// `khctl remediation pause | resume`: persisted and audited. A
/// replacement already running finishes; pausing only stops new ones.
pub fn set_paused(
    coord: &Coordinator,
    paused: bool,
) -> Result<proto::RemediationStatus, CoordError> {
    let rec = Record::load(&coord.db)?;
    let message = if rec.paused == paused {
        format!(
            "remediation was already {}",
            if paused { "paused" } else { "active" }
        )
    } else {
        coord.db.put_json(PAUSED_KEY, &paused)?;
        let words = if paused {
            "paused: the watcher keeps observing and auditing its decisions, and replaces nothing until `khctl remediation resume`"
        } else {
            "resumed: the watcher may replace a failed control plane again"
        };
        crate::audit::append(
            &coord.db,
            coord.clock.as_ref(),
            AUDIT_OPERATION,
            "cluster",
            if paused { "pause" } else { "resume" },
            "ok",
            &format!("remediation {words}"),
        )?;
        format!("remediation {words}")
    };
    let mut st = status(coord)?;
    if paused && !st.in_flight.is_empty() {
        st.message = format!("{message}; {} is running and finishes", st.in_flight);
    } else {
        st.message = message;
    }
    Ok(st)
}

/// `khctl spares list`.
pub fn spares_list(coord: &Coordinator) -> Result<proto::SparesResponse, CoordError> {
    let spec = crate::etcd::held_spec(coord)?;
    let (usable, unusable) = spares(coord, &spec);
    let mut out: Vec<proto::SpareInfo> = usable
        .into_iter()
        .map(|n| proto::SpareInfo {
            node: n,
            usable: true,
            detail: "ready".into(),
        })
        .collect();
    out.extend(unusable.into_iter().map(|(n, why)| proto::SpareInfo {
        node: n,
        usable: false,
        detail: why,
    }));
    let order = |n: &str| {
        spec.spares
            .iter()
            .position(|s| s == n)
            .unwrap_or(usize::MAX)
    };
    out.sort_by_key(|s| order(&s.node));
    Ok(proto::SparesResponse {
        spares: out,
        message: String::new(),
    })
}

/// `khctl spares add NAME`: an enrolled host that is not a node of the held
/// spec (a retired one, or one never used) and that kubeadm has left
/// nothing on joins the spare pool of the held spec. A retired node that
/// still has kubeadm's files is reset first through its agent (`kubeadm
/// reset -f`: its member was removed when it was replaced, so nothing in the
/// cluster depends on it); any other host with kubeadm's files is refused.
pub async fn spares_add(
    coord: &Coordinator,
    name: &str,
) -> Result<proto::SparesResponse, CoordError> {
    let node = kh::names::NodeName::new(name)?;
    let rec = coord.registry.get(&node)?.ok_or_else(|| {
        CoordError::FailedPrecondition(format!(
            "{node} is not enrolled; enroll it first with `khctl token create --node {node}` and the printed command"
        ))
    })?;
    let spec = crate::etcd::held_spec(coord)?;
    if spec.node(name).is_some() {
        return Err(CoordError::InvalidArgument(format!(
            "{node} is a {} of cluster {}; a spare must be outside the cluster (remove it from the cluster first)",
            spec.node(name).map(|n| n.role.as_str()).unwrap_or_default(),
            spec.name
        )));
    }
    if spec.spares.iter().any(|s| s == name) {
        return Ok(proto::SparesResponse {
            message: format!("{node} is already a spare"),
            ..spares_list(coord)?
        });
    }
    if coord.rollouts.busy().await {
        return Err(CoordError::FailedPrecondition(
            "an operation is running; add the spare once it has finished (`khctl rollout status --follow`)".into(),
        ));
    }
    let ops = crate::rollout::ops::Ops { coord };
    let dirty = |s: &proto::NodeStatusResponse| {
        let mut v = vec![];
        if s.kubelet_conf {
            v.push("/etc/kubernetes/kubelet.conf");
        }
        if s.admin_conf {
            v.push("/etc/kubernetes/admin.conf");
        }
        if s.apiserver_manifest {
            v.push("the kube-apiserver manifest");
        }
        if s.etcd_manifest {
            v.push("the etcd manifest");
        }
        v
    };
    let status = ops.node_status(name).await.map_err(|f| {
        CoordError::FailedPrecondition(format!(
            "cannot ask {node}'s agent whether kubeadm left anything there ({}); start its agent and try again",
            f.message
        ))
    })?;
    let mut reset_note = String::new();
    if !dirty(&status).is_empty() {
        if rec.retired.is_none() {
            return Err(CoordError::FailedPrecondition(format!(
                "kubeadm has left {} on {node}, which was never replaced by kh: it may belong to a cluster. Reset it (`kubeadm reset -f` on the host) and add it again",
                dirty(&status).join(", ")
            )));
        }
        ops.step(
            name,
            "kubeadm-reset",
            proto::run_step_request::Step::KubeadmReset(proto::KubeadmReset {}),
            false,
        )
        .await
        .map_err(|f| {
            CoordError::FailedPrecondition(format!(
                "{node} is retired and still has kubeadm's files; `kubeadm reset -f` there failed: {}. Reset it by hand and add it again",
                f.message
            ))
        })?;
        let again = ops
            .node_status(name)
            .await
            .map_err(|f| CoordError::FailedPrecondition(f.message))?;
        if !dirty(&again).is_empty() {
            return Err(CoordError::FailedPrecondition(format!(
                "{node} still has {} after `kubeadm reset -f`; clean it by hand and add it again",
                dirty(&again).join(", ")
            )));
        }
        reset_note = " (it was retired: `kubeadm reset -f` ran there first)".into();
    }
    // Into the held spec's spares, validated as a whole.
    let mut st = RolloutState::load(&coord.db)?.unwrap_or_default();
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&st.spec_yaml).map_err(|e| {
        CoordError::FailedPrecondition(format!("the held spec does not parse: {e}"))
    })?;
    let spec_map = doc
        .get_mut("spec")
        .and_then(|s| s.as_mapping_mut())
        .ok_or_else(|| CoordError::FailedPrecondition("the held spec has no spec".into()))?;
    let key = serde_yaml::Value::String("spares".into());
    let list = spec_map
        .entry(key)
        .or_insert_with(|| serde_yaml::Value::Sequence(vec![]));
    if !list.is_sequence() {
        *list = serde_yaml::Value::Sequence(vec![]);
    }
    if let Some(seq) = list.as_sequence_mut() {
        seq.push(serde_yaml::Value::String(name.to_string()));
    }
    let text =
        serde_yaml::to_string(&doc).map_err(|e| CoordError::FailedPrecondition(e.to_string()))?;
    kh::spec::parse(&text).map_err(|e| {
        CoordError::InvalidArgument(format!("adding {node} makes the held spec invalid: {e}"))
    })?;
    st.spec_yaml = text;
    st.save(&coord.db, unix_ms(coord.clock.now()))?;
    coord.registry.clear_retired(&node)?;
    let message = format!(
        "{node} is a spare of cluster {}{reset_note}. Add it to spec.spares in cluster.yaml too, or the next `khctl rollout -f cluster.yaml` takes it out of the pool again",
        spec.name
    );
    crate::audit::append(
        &coord.db,
        coord.clock.as_ref(),
        "spares add",
        name,
        "add",
        "ok",
        &message,
    )?;
    Ok(proto::SparesResponse {
        message,
        ..spares_list(coord)?
    })
}

#[cfg(test)]
mod tests;
