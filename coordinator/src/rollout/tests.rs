//! The decisions of the rollout, the reset and the replacement, checked in
//! process against fake agents (`agents::fake`): where a resumed rollout
//! picks up, when join material is refreshed and a join retried, and what
//! is refused before any step runs. The whole-process behaviour (real
//! etcd, real TLS, the kubeadm double) stays with the e2e tests.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kh::names::NodeName;
use kh::pki::{Identity, Role};
use kh::proto::{
    rollout_event::Kind, EtcdReplaceRequest, ResetRequest, RolloutEvent, RolloutRequest,
};
use kh::time::ManualClock;

use super::state::{RolloutState, Status};
use super::Follow;
use crate::agents::fake::FakeAgents;
use crate::config::Config;
use crate::store::Db;
use crate::Coordinator;

/// kubeadm's own words for a bootstrap token the cluster no longer knows.
const TOKEN_REFUSED: &str = "error execution phase preflight: couldn't validate the identity of the API Server: token id \"abcdef\" is invalid for this cluster or it has expired. Use \"kubeadm token create\" on the control-plane node to create a new valid token";
/// ... and for a `kubeadm-certs` Secret that has expired.
const CERTS_GONE: &str = "error execution phase control-plane-prepare/download-certs: error downloading certs: error downloading the secret: Secret \"kubeadm-certs\" was not found in the \"kube-system\" Namespace. This Secret might have expired. Please, run `kubeadm init phase upload-certs --upload-certs` on a control plane to generate a new one";

pub(super) fn spec_yaml(nodes: &[(&str, &str, &str)]) -> String {
    let mut y = String::from("apiVersion: kh.io/v1alpha1\nkind: Cluster\nmetadata: {name: t}\nspec:\n  kubernetesVersion: v1.32.0\n  controlPlaneEndpoint: 10.0.0.5:6443\n  nodes:\n");
    for (name, role, address) in nodes {
        y.push_str(&format!(
            "    - {{name: {name}, role: {role}, address: {address}}}\n"
        ));
    }
    y
}

const SMALL: &[(&str, &str, &str)] = &[
    ("cp-1", "control-plane", "10.0.0.11"),
    ("w-1", "worker", "10.0.0.21"),
];

pub(super) const HA: &[(&str, &str, &str)] = &[
    ("cp-1", "control-plane", "10.0.0.11"),
    ("cp-2", "control-plane", "10.0.0.12"),
    ("cp-3", "control-plane", "10.0.0.13"),
    ("w-1", "worker", "10.0.0.21"),
    ("w-2", "worker", "10.0.0.22"),
];

/// A coordinator whose agents are `fake`, with every node of `yaml` (and
/// `extra`) enrolled.
pub(super) fn coordinator(
    dir: &std::path::Path,
    yaml: &str,
    extra: &[&str],
) -> (Arc<Coordinator>, Arc<FakeAgents>) {
    let spec = kh::spec::parse(yaml).unwrap();
    let fake = Arc::new(FakeAgents::new(&spec));
    let config = Config::for_test(dir);
    let agents = fake.clone();
    let coord = Coordinator::with_agents(
        config,
        Db::in_memory(),
        Arc::new(ManualClock::at_unix_ms(1_700_000_000_000)),
        move |_| agents,
    )
    .unwrap();
    let names = spec
        .nodes
        .iter()
        .map(|n| n.name.as_str())
        .chain(extra.iter().copied());
    for (i, name) in names.enumerate() {
        let identity = Identity {
            role: Role::Node,
            name: name.into(),
            serial: format!("{:x}", 100 + i),
            not_after: SystemTime::now() + Duration::from_secs(86400),
        };
        coord
            .registry
            .enroll(&NodeName::new(name).unwrap(), &identity, 1)
            .unwrap();
    }
    (coord, fake)
}

/// The state an earlier rollout of `yaml` left: the spec it accepted, the
/// roles it recorded and the steps it finished.
pub(super) fn held(coord: &Coordinator, yaml: &str, done: &[&str]) {
    let spec = kh::spec::parse(yaml).unwrap();
    for n in &spec.nodes {
        coord
            .registry
            .set_role(
                &NodeName::new(&n.name).unwrap(),
                Some(n.role.as_str().to_string()),
            )
            .unwrap();
    }
    let mut st = RolloutState {
        operation: "rollout t".into(),
        cluster: "t".into(),
        spec_yaml: yaml.into(),
        started_ms: 10,
        ..Default::default()
    };
    for key in done {
        st.mark(&coord.db, key, Status::Done, "", 20).unwrap();
    }
    st.save(&coord.db, 30).unwrap();
}

/// Follows an operation to its end: its events and the closing one.
pub(super) async fn follow(f: Follow) -> (Vec<RolloutEvent>, RolloutEvent) {
    let mut events = f.backlog;
    let mut rx = f.live.expect("a started operation has a live feed");
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("the operation ends within a minute")
            .expect("the feed stays open until the end");
        if ev.kind == Kind::Finished as i32 {
            return (events, ev);
        }
        events.push(ev);
    }
}

async fn rollout(coord: &Arc<Coordinator>, yaml: &str) -> (Vec<RolloutEvent>, RolloutEvent) {
    let req = RolloutRequest {
        spec_yaml: yaml.into(),
        ..Default::default()
    };
    follow(super::start(coord.clone(), req).await.unwrap()).await
}

fn position(steps: &[(String, String)], node: &str, step: &str) -> Vec<usize> {
    steps
        .iter()
        .enumerate()
        .filter(|(_, (n, s))| n == node && s == step)
        .map(|(i, _)| i)
        .collect()
}

#[tokio::test]
async fn a_resumed_rollout_whose_first_control_plane_is_initialized_runs_no_init() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = spec_yaml(SMALL);
    let (coord, fake) = coordinator(dir.path(), &yaml, &[]);
    // The earlier coordinator stopped after init: cp-1 runs a cluster.
    held(&coord, &yaml, &["cp-1/kubeadm-init"]);
    fake.joined("cp-1");

    let (_, end) = rollout(&coord, &yaml).await;
    assert!(end.ok, "{}: {}", end.step, end.message);
    let steps = fake.steps();
    assert!(
        position(&steps, "cp-1", "kubeadm-init").is_empty(),
        "init ran again: {steps:?}"
    );
    // cp-1 is neither prepared again: it only serves the join material.
    let on_cp1: Vec<&str> = steps
        .iter()
        .filter(|(n, _)| n == "cp-1")
        .map(|(_, s)| s.as_str())
        .collect();
    assert_eq!(on_cp1, ["token-create", "token-delete"], "{steps:?}");
    // The worker is prepared and joined, with the new token.
    assert_eq!(
        position(&steps, "w-1", "disable-swap").len(),
        1,
        "{steps:?}"
    );
    let join = position(&steps, "w-1", "kubeadm-join");
    assert_eq!(join.len(), 1, "{steps:?}");
    assert!(position(&steps, "cp-1", "token-create")[0] < join[0]);
}

#[tokio::test]
async fn a_refused_token_on_a_worker_join_makes_a_new_token_and_joins_again() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = spec_yaml(SMALL);
    let (coord, fake) = coordinator(dir.path(), &yaml, &[]);
    fake.fail_step(
        "w-1",
        "kubeadm-join",
        kh::proto::FailureKind::TokenRefused,
        TOKEN_REFUSED,
    );

    let (_, end) = rollout(&coord, &yaml).await;
    assert!(end.ok, "{}: {}", end.step, end.message);
    let steps = fake.steps();
    assert_eq!(position(&steps, "cp-1", "kubeadm-init").len(), 1);
    // Init made the first token, so only the refusal makes another one,
    // between the two attempts.
    let joins = position(&steps, "w-1", "kubeadm-join");
    let tokens = position(&steps, "cp-1", "token-create");
    assert_eq!(joins.len(), 2, "{steps:?}");
    assert_eq!(tokens.len(), 1, "{steps:?}");
    assert!(joins[0] < tokens[0] && tokens[0] < joins[1], "{steps:?}");
}

#[tokio::test]
async fn expired_uploaded_certificates_on_a_control_plane_join_are_uploaded_again_once() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = spec_yaml(HA);
    let (coord, fake) = coordinator(dir.path(), &yaml, &[]);
    fake.fail_step(
        "cp-2",
        "kubeadm-join",
        kh::proto::FailureKind::CertificateKey,
        CERTS_GONE,
    );

    let (events, end) = rollout(&coord, &yaml).await;
    assert!(end.ok, "{}: {}", end.step, end.message);
    let steps = fake.steps();
    let joins = position(&steps, "cp-2", "kubeadm-join");
    let uploads = position(&steps, "cp-1", "upload-certs");
    assert_eq!(joins.len(), 2, "{steps:?}");
    assert_eq!(uploads.len(), 1, "{steps:?}");
    assert!(joins[0] < uploads[0] && uploads[0] < joins[1], "{steps:?}");
    // The token was fine: it is not replaced.
    assert!(
        position(&steps, "cp-1", "token-create").is_empty(),
        "{steps:?}"
    );
    // cp-3 joins only after cp-2 has, and every control plane is a member.
    assert!(joins[1] < position(&steps, "cp-3", "kubeadm-join")[0]);
    assert_eq!(fake.member_names(), ["cp-1", "cp-2", "cp-3"]);
    assert!(events.iter().any(|e| e.node == "cp-2"
        && e.message
            .contains("kubeadm-certs was gone; uploading the certificates again")));
}

#[tokio::test]
async fn a_refused_spec_change_runs_no_step_and_keeps_the_held_spec() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = spec_yaml(SMALL);
    let (coord, fake) = coordinator(dir.path(), &yaml, &[]);
    held(&coord, &yaml, &["cp-1/kubeadm-init", "w-1/join-worker"]);
    fake.joined("cp-1");
    fake.joined("w-1");

    // w-1 has joined with 10.0.0.21; an address cannot change in place.
    let moved = spec_yaml(&[
        ("cp-1", "control-plane", "10.0.0.11"),
        ("w-1", "worker", "10.0.0.29"),
    ]);
    let (_, end) = rollout(&coord, &moved).await;
    assert!(!end.ok);
    assert!(end.message.contains("Refused"), "{}", end.message);
    assert!(end.message.contains("10.0.0.29"), "{}", end.message);
    assert_eq!(fake.steps(), Vec::<(String, String)>::new());
    let st = RolloutState::load(&coord.db).unwrap().unwrap();
    assert_eq!(st.spec_yaml, yaml);
}

#[tokio::test]
async fn reset_takes_the_workers_then_the_control_planes_one_at_a_time_the_first_last() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = spec_yaml(HA);
    let (coord, fake) = coordinator(dir.path(), &yaml, &[]);
    held(&coord, &yaml, &[]);
    for n in ["cp-1", "cp-2", "cp-3", "w-1", "w-2"] {
        fake.joined(n);
    }

    let req = ResetRequest {
        node: String::new(),
        dry_run: false,
        force: false,
    };
    let (_, end) = follow(super::reset::start(coord.clone(), req).await.unwrap()).await;
    assert!(end.ok, "{}: {}", end.step, end.message);
    let log = fake.step_log();
    assert!(log.iter().all(|c| c.step == "kubeadm-reset"), "{log:?}");
    let at = |node: &str, started: bool| {
        log.iter()
            .position(|c| c.node == node && c.started == started)
            .unwrap_or_else(|| panic!("{node} was not reset: {log:?}"))
    };
    // Every worker has ended before any control plane starts.
    let workers_done = at("w-1", false).max(at("w-2", false));
    assert!(workers_done < at("cp-3", true), "{log:?}");
    // The control planes in reverse order, each ended before the next starts.
    assert!(at("cp-3", false) < at("cp-2", true), "{log:?}");
    assert!(at("cp-2", false) < at("cp-1", true), "{log:?}");
    assert_eq!(log.len(), 10, "{log:?}");
    assert!(fake.member_names().is_empty());
    // The lease is free again and the coordinator forgot the cluster.
    assert!(crate::lease::current(&coord.db, coord.clock.as_ref())
        .unwrap()
        .is_none());
    assert!(RolloutState::load(&coord.db).unwrap().is_none());
}

#[tokio::test]
async fn a_replacement_without_quorum_is_refused_before_any_step() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = spec_yaml(HA);
    let (coord, fake) = coordinator(dir.path(), &yaml, &["cp-4"]);
    held(&coord, &yaml, &[]);
    for n in ["cp-1", "cp-2", "cp-3", "w-1", "w-2"] {
        fake.joined(n);
    }
    // cp-2 is gone, and cp-3's member is unhealthy: one voter of three.
    fake.agent_down("cp-2");
    fake.etcd_down("cp-3");

    let req = EtcdReplaceRequest {
        failed: "cp-2".into(),
        with: "cp-4".into(),
        force: false,
        address: "10.0.0.14".into(),
        no_snapshot: false,
    };
    let (_, end) = follow(super::replace::start(coord.clone(), req).await.unwrap()).await;
    assert!(!end.ok);
    assert_eq!(end.failure, "preflight");
    assert!(end.message.contains("lost quorum"), "{}", end.message);
    assert!(
        end.hint
            .contains("nothing was changed and nothing is left pending"),
        "{}",
        end.hint
    );
    assert_eq!(fake.steps(), Vec::<(String, String)>::new());
    assert_eq!(fake.member_names(), ["cp-1", "cp-2", "cp-3"]);
    // Nothing is pending, the lease is free and cp-2 is not retired.
    assert_eq!(super::replace::pending(&coord).await.unwrap(), None);
    assert!(crate::lease::current(&coord.db, coord.clock.as_ref())
        .unwrap()
        .is_none());
    let cp2 = coord
        .registry
        .get(&NodeName::new("cp-2").unwrap())
        .unwrap()
        .unwrap();
    assert!(cp2.retired.is_none());
}

/// `khctl certs check` asks every control plane and worker (never a load
/// balancer), reports an unreachable one instead of skipping it, and judges
/// the answers against the held spec's certificates.renewBefore.
#[tokio::test]
async fn certs_check_asks_every_node_and_reports_the_unreachable_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = HA.to_vec();
    nodes.push(("lb-1", "loadbalancer", "10.0.0.5"));
    let yaml = spec_yaml(&nodes).replace(
        "  nodes:\n",
        "  certificates: {renewBefore: 10d}\n  nodes:\n",
    );
    let (coord, fake) = coordinator(dir.path(), &yaml, &[]);
    held(&coord, &yaml, &[]);
    let now = 1_700_000_000i64;
    let cert = |name: &str, days: i64| kh::proto::ClusterCert {
        name: name.into(),
        path: format!("/etc/kubernetes/pki/{name}.crt"),
        not_before_unix: now - 300 * 86_400,
        not_after_unix: now + days * 86_400,
        ca: "ca".into(),
        is_ca: false,
        externally_managed: false,
        error: String::new(),
    };
    for cp in ["cp-1", "cp-2", "cp-3"] {
        fake.set_certs(cp, vec![cert("apiserver", 65), cert("admin.conf", 65)]);
    }
    fake.set_certs("cp-2", vec![cert("apiserver", 9), cert("admin.conf", 65)]);
    fake.set_certs("w-1", vec![cert("kubelet-client", 300)]);
    fake.agent_down("w-2");

    let r = crate::certs::check(&coord).await.unwrap();
    assert_eq!(r.now_unix, now);
    assert_eq!(r.renew_before_seconds, 10 * 86_400);
    let asked: Vec<(&str, &str, usize)> = r
        .nodes
        .iter()
        .map(|n| (n.node.as_str(), n.role.as_str(), n.certs.len()))
        .collect();
    assert_eq!(
        asked,
        [
            ("cp-1", "control-plane", 2),
            ("cp-2", "control-plane", 2),
            ("cp-3", "control-plane", 2),
            ("w-1", "worker", 1),
            ("w-2", "worker", 0),
        ]
    );
    assert!(r.nodes[4].error.contains("w-2"), "{}", r.nodes[4].error);
    let attention: Vec<(&str, &str, &str)> = r
        .attention
        .iter()
        .map(|a| (a.node.as_str(), a.cert.as_str(), a.reason.as_str()))
        .collect();
    assert_eq!(
        attention,
        [
            ("cp-2", "apiserver", "expiring"),
            ("w-2", "", "unreachable")
        ]
    );
    assert!(!r.ok);
}

/// The index of the first event of `step` on `node` with `kind`.
fn event_at(events: &[RolloutEvent], node: &str, step: &str, kind: Kind) -> Option<usize> {
    events
        .iter()
        .position(|e| e.node == node && e.step == step && e.kind == kind as i32)
}

#[tokio::test]
async fn control_plane_joins_into_a_running_cluster_take_a_snapshot_first_and_a_first_build_none() {
    // A first build has nothing to lose yet.
    let dir = tempfile::tempdir().unwrap();
    let yaml = spec_yaml(HA);
    let (coord, fake) = coordinator(dir.path(), &yaml, &[]);
    let (_, end) = rollout(&coord, &yaml).await;
    assert!(end.ok, "{}: {}", end.step, end.message);
    assert!(fake.snapshots_taken().is_empty());

    // cp-1 runs the cluster; cp-2 and cp-3 join it.
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = coordinator(dir.path(), &yaml, &[]);
    held(&coord, &yaml, &["cp-1/kubeadm-init"]);
    fake.joined("cp-1");
    let (events, end) = rollout(&coord, &yaml).await;
    assert!(end.ok, "{}: {}", end.step, end.message);
    assert_eq!(fake.snapshots_taken(), ["cp-1"]);
    // The plan says so, in the words of the run.
    let plan = events
        .iter()
        .find_map(|e| e.plan.as_ref())
        .expect("a plan event");
    let cp_phase = plan
        .phases
        .iter()
        .find(|p| p.name == super::phase::Phase::ControlPlanes.name())
        .unwrap();
    assert_eq!(cp_phase.steps[0].step, "snapshot", "{cp_phase:?}");
    assert_eq!(cp_phase.steps[0].node, "cp-1");
    let snap = event_at(&events, "cp-1", "snapshot", Kind::StepFinished).expect("a snapshot step");
    let join = event_at(&events, "cp-2", "join-control-plane", Kind::StepStarted).unwrap();
    assert!(snap < join, "{events:?}");
    let stored = crate::snapshots::list(&coord).unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].reason, "before rollout");

    // A snapshot that fails stops the rollout before the first join.
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = coordinator(dir.path(), &yaml, &[]);
    held(&coord, &yaml, &["cp-1/kubeadm-init"]);
    fake.joined("cp-1");
    fake.fail_snapshot("cp-1", "etcd snapshot failed (other): disk full");
    let (_, end) = rollout(&coord, &yaml).await;
    assert!(!end.ok);
    assert_eq!(end.step, "snapshot");
    assert!(end.message.contains("disk full"), "{}", end.message);
    assert!(end.message.contains("--no-snapshot"), "{}", end.message);
    assert!(
        position(&fake.steps(), "cp-2", "kubeadm-join").is_empty(),
        "{:?}",
        fake.steps()
    );

    // --no-snapshot joins without one.
    let req = RolloutRequest {
        spec_yaml: yaml.clone(),
        no_snapshot: true,
        ..Default::default()
    };
    let (_, end) = follow(super::start(coord.clone(), req).await.unwrap()).await;
    assert!(end.ok, "{}: {}", end.step, end.message);
    assert!(fake.snapshots_taken().is_empty());
    assert_eq!(fake.member_names(), ["cp-1", "cp-2", "cp-3"]);
}

#[tokio::test]
async fn a_replacement_takes_a_snapshot_before_its_first_change_or_is_refused_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = spec_yaml(HA);
    let (coord, fake) = coordinator(dir.path(), &yaml, &["cp-4"]);
    held(&coord, &yaml, &[]);
    for n in ["cp-1", "cp-2", "cp-3", "w-1", "w-2"] {
        fake.joined(n);
    }
    fake.agent_down("cp-2");
    let req = EtcdReplaceRequest {
        failed: "cp-2".into(),
        with: "cp-4".into(),
        force: false,
        address: "10.0.0.14".into(),
        no_snapshot: false,
    };

    // No member can be snapshotted: refused, nothing changed, nothing pending.
    fake.fail_snapshot(
        "cp-1",
        "etcd snapshot failed (timeout): context deadline exceeded",
    );
    fake.fail_snapshot(
        "cp-3",
        "etcd snapshot failed (timeout): context deadline exceeded",
    );
    let (_, end) = follow(
        super::replace::start(coord.clone(), req.clone())
            .await
            .unwrap(),
    )
    .await;
    assert!(!end.ok);
    assert_eq!(end.failure, "preflight");
    assert_eq!(end.step, "snapshot");
    assert!(
        end.message.contains("context deadline exceeded"),
        "{}",
        end.message
    );
    assert!(end.hint.contains("--no-snapshot"), "{}", end.hint);
    assert_eq!(fake.steps(), Vec::<(String, String)>::new());
    assert_eq!(super::replace::pending(&coord).await.unwrap(), None);

    // With a snapshot: taken before the member is removed.
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = coordinator(dir.path(), &yaml, &["cp-4"]);
    held(&coord, &yaml, &[]);
    for n in ["cp-1", "cp-2", "cp-3", "w-1", "w-2"] {
        fake.joined(n);
    }
    fake.agent_down("cp-2");
    // Followed up to its first change only: what comes after is the
    // replacement's own business (and waits on a join the fake never
    // promotes).
    let f = super::replace::start(coord.clone(), req).await.unwrap();
    let mut events = f.backlog;
    let mut rx = f.live.unwrap();
    while event_at(&events, "cp-2", "remove-member", Kind::StepStarted).is_none() {
        let ev = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("the replacement reaches its member removal within a minute")
            .unwrap();
        assert_ne!(ev.kind, Kind::Finished as i32, "{ev:?}");
        events.push(ev);
    }
    assert_eq!(fake.snapshots_taken(), ["cp-1"]);
    let snap = event_at(&events, "cp-2", "snapshot", Kind::StepFinished).expect("a snapshot step");
    let remove =
        event_at(&events, "cp-2", "remove-member", Kind::StepStarted).expect("the member removal");
    assert!(snap < remove, "{events:?}");
    assert_eq!(
        crate::snapshots::list(&coord).unwrap()[0].reason,
        "before etcd replace"
    );
}

#[tokio::test]
async fn remove_member_takes_a_snapshot_first_or_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = spec_yaml(HA);
    let (coord, fake) = coordinator(dir.path(), &yaml, &[]);
    held(&coord, &yaml, &[]);
    for n in ["cp-1", "cp-2", "cp-3"] {
        fake.joined(n);
        fake.fail_snapshot(n, "etcd snapshot failed (other): no space left on device");
    }
    let err = crate::etcd::remove_member(&coord, "cp-3", true, false)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        crate::error::CoordError::FailedPrecondition(_)
    ));
    assert!(err.to_string().contains("no space left"), "{err}");
    assert!(err.to_string().contains("--no-snapshot"), "{err}");
    assert_eq!(fake.member_names(), ["cp-1", "cp-2", "cp-3"]);

    crate::etcd::remove_member(&coord, "cp-3", true, true)
        .await
        .unwrap();
    assert_eq!(fake.member_names(), ["cp-1", "cp-2"]);
    assert!(fake.snapshots_taken().is_empty());
}

/// A stored snapshot for restore tests: its bytes in memory, and whether
/// the store's integrity check fails it.
struct MemSnapshots {
    data: Vec<u8>,
    corrupt: bool,
}

impl MemSnapshots {
    fn new(corrupt: bool) -> Arc<Self> {
        Arc::new(MemSnapshots {
            data: (0..200_000u32).map(|i| (i % 251) as u8).collect(),
            corrupt,
        })
    }

    fn reference(&self) -> super::restore::SnapshotRef {
        let sha = ring::digest::digest(&ring::digest::SHA256, &self.data);
        super::restore::SnapshotRef {
            id: "s-1".into(),
            size: self.data.len() as u64,
            sha256: sha.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
            created_ms: 1_700_000_000_000 - 3_600_000,
        }
    }
}

impl super::restore::Snapshots for MemSnapshots {
    fn get(
        &self,
        id: &str,
    ) -> Result<Option<super::restore::SnapshotRef>, crate::error::CoordError> {
        Ok((id == "s-1").then(|| self.reference()))
    }
    fn latest(&self) -> Result<Option<super::restore::SnapshotRef>, crate::error::CoordError> {
        Ok(Some(self.reference()))
    }
    fn verify(
        &self,
        _id: &str,
    ) -> futures::future::BoxFuture<'static, Result<(), crate::error::CoordError>> {
        let corrupt = self.corrupt;
        Box::pin(async move {
            if corrupt {
                Err(crate::error::CoordError::FailedPrecondition(
                    "the etcd integrity trailer does not match".into(),
                ))
            } else {
                Ok(())
            }
        })
    }
    fn pieces(&self, _id: &str) -> Result<crate::agents::SnapshotPieces, crate::error::CoordError> {
        use futures::StreamExt;
        let chunks: Vec<Vec<u8>> = self.data.chunks(64 * 1024).map(<[u8]>::to_vec).collect();
        Ok(futures::stream::iter(chunks).boxed())
    }
}

fn restore_req(force: bool) -> kh::proto::EtcdRestoreRequest {
    kh::proto::EtcdRestoreRequest {
        snapshot: "s-1".into(),
        force,
        dry_run: false,
    }
}

/// A 3-control-plane cluster whose quorum is lost: cp-2 and cp-3's members
/// are down (their agents answer).
fn lost_quorum(dir: &std::path::Path) -> (Arc<Coordinator>, Arc<FakeAgents>) {
    let yaml = spec_yaml(HA);
    let (coord, fake) = coordinator(dir, &yaml, &[]);
    held(&coord, &yaml, &[]);
    for n in ["cp-1", "cp-2", "cp-3", "w-1", "w-2"] {
        fake.joined(n);
    }
    fake.etcd_down("cp-2");
    fake.etcd_down("cp-3");
    (coord, fake)
}

fn steps_named(fake: &FakeAgents, step: &str) -> Vec<String> {
    fake.steps()
        .into_iter()
        .filter(|(_, s)| s == step)
        .map(|(n, _)| n)
        .collect()
}

#[tokio::test]
async fn a_restore_over_a_healthy_cluster_is_refused_without_force_and_leaves_nothing_pending() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = spec_yaml(HA);
    let (coord, fake) = coordinator(dir.path(), &yaml, &[]);
    held(&coord, &yaml, &[]);
    for n in ["cp-1", "cp-2", "cp-3", "w-1", "w-2"] {
        fake.joined(n);
    }
    let f = super::restore::start(coord.clone(), restore_req(false), MemSnapshots::new(false))
        .await
        .unwrap();
    let (_, end) = follow(f).await;
    assert!(!end.ok);
    assert_eq!(end.failure, "preflight");
    assert!(
        end.message.contains("loses every write made since it"),
        "{}",
        end.message
    );
    assert!(end.message.contains("s-1, is 60m old"), "{}", end.message);
    assert!(end.hint.contains("--force"), "{}", end.hint);
    assert_eq!(fake.steps(), Vec::<(String, String)>::new());
    assert!(RolloutState::load_at(&coord.db, super::restore::KEY)
        .unwrap()
        .is_none());
    assert!(crate::lease::current(&coord.db, coord.clock.as_ref())
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn a_snapshot_refused_on_a_node_or_by_the_store_stops_the_restore_before_anything_stops() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = lost_quorum(dir.path());
    let f = super::restore::start(coord.clone(), restore_req(false), MemSnapshots::new(true))
        .await
        .unwrap();
    let (_, end) = follow(f).await;
    assert!(!end.ok);
    assert!(end.message.contains("integrity check"), "{}", end.message);
    assert_eq!(fake.steps(), Vec::<(String, String)>::new());

    fake.fail_step(
        "cp-2",
        "put-etcd-snapshot",
        kh::proto::FailureKind::Other,
        "`etcdctl snapshot status` failed: invalid database",
    );
    let f = super::restore::start(coord.clone(), restore_req(false), MemSnapshots::new(false))
        .await
        .unwrap();
    let (_, end) = follow(f).await;
    assert!(!end.ok);
    assert!(end.message.contains("invalid database"), "{}", end.message);
    assert!(end.hint.contains("nothing was stopped"), "{}", end.hint);
    assert_eq!(steps_named(&fake, "put-etcd-snapshot").len(), 3);
    assert!(steps_named(&fake, "etcd-stop-control-plane").is_empty());
    // The copies that arrived are removed from every node.
    assert_eq!(steps_named(&fake, "etcd-restore-discard").len(), 3);
    // Receiving a snapshot changes nothing: nothing is pending.
    let ops = super::operation::list(&coord).await.unwrap();
    assert!(
        !ops.iter().any(|o| o.kind == "etcd-restore" && o.pending),
        "{ops:?}"
    );
}

#[tokio::test]
async fn a_restore_after_lost_quorum_stops_everything_before_it_restores_and_starts() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = lost_quorum(dir.path());
    let f = super::restore::start(coord.clone(), restore_req(false), MemSnapshots::new(false))
        .await
        .unwrap();
    let (events, end) = follow(f).await;
    assert!(end.ok, "{end:?}");
    let order: Vec<String> = fake.steps().into_iter().map(|(_, s)| s).collect();
    let last = |s: &str| order.iter().rposition(|x| x == s).unwrap();
    let first = |s: &str| order.iter().position(|x| x == s).unwrap();
    assert!(
        last("put-etcd-snapshot") < first("etcd-stop-control-plane"),
        "{order:?}"
    );
    assert!(
        last("etcd-stop-control-plane") < first("etcd-restore"),
        "{order:?}"
    );
    assert!(
        last("etcd-restore") < first("etcd-start-control-plane"),
        "{order:?}"
    );
    assert_eq!(steps_named(&fake, "etcd-restore").len(), 3);
    assert_eq!(fake.member_names(), ["cp-1", "cp-2", "cp-3"]);
    let plan = events
        .iter()
        .find_map(|e| e.plan.clone())
        .expect("a plan event");
    assert!(plan.notes.iter().any(|n| n.contains(
        "--initial-cluster cp-1=https://10.0.0.11:2380,cp-2=https://10.0.0.12:2380,cp-3=https://10.0.0.13:2380"
    )), "{:?}", plan.notes);
    // Audited, and nothing is pending afterwards.
    let audit = crate::audit::list(&coord.db, 200).unwrap();
    assert!(audit
        .iter()
        .any(|e| e.operation == "etcd restore s-1" && e.step == "restore" && e.node == "cp-2"));
    let ops = super::operation::list(&coord).await.unwrap();
    assert!(
        ops.iter()
            .any(|o| o.kind == "etcd-restore" && o.state == "done"),
        "{ops:?}"
    );
}

#[tokio::test]
async fn a_resumed_restore_keeps_its_members_and_token_and_repeats_no_finished_step() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = lost_quorum(dir.path());
    fake.fail_step(
        "cp-2",
        "etcd-restore",
        kh::proto::FailureKind::Other,
        "no space left on device",
    );
    let f = super::restore::start(coord.clone(), restore_req(false), MemSnapshots::new(false))
        .await
        .unwrap();
    let (_, end) = follow(f).await;
    assert!(!end.ok);
    assert!(
        end.hint.contains("khctl etcd restore --snapshot s-1 --yes"),
        "{}",
        end.hint
    );
    let fixed: super::restore::Fixed = coord.db.get_json("etcd/restore-plan").unwrap().unwrap();
    let ops = super::operation::list(&coord).await.unwrap();
    let op = ops.iter().find(|o| o.kind == "etcd-restore").unwrap();
    assert!(op.pending && op.changed, "{op:?}");
    let check = super::restore::health_check(&coord).await.unwrap();
    assert!(!check.ok);
    assert!(
        check
            .detail
            .contains("cp-2/restore failed: no space left on device"),
        "{check:?}"
    );
    assert_eq!(
        check.fix,
        "resume it: `khctl etcd restore --snapshot s-1 --yes`"
    );

    let before = fake.steps().len();
    let f = super::restore::start(coord.clone(), restore_req(false), MemSnapshots::new(false))
        .await
        .unwrap();
    let (_, end) = follow(f).await;
    assert!(end.ok, "{end:?}");
    let again: Vec<(String, String)> = fake.steps()[before..].to_vec();
    let named = |s: &str| -> Vec<&str> {
        again
            .iter()
            .filter(|(_, x)| x == s)
            .map(|(n, _)| n.as_str())
            .collect()
    };
    assert_eq!(named("etcd-stop-control-plane"), Vec::<&str>::new());
    assert_eq!(named("etcd-restore"), ["cp-2"]);
    assert_eq!(named("put-etcd-snapshot"), ["cp-2"]);
    assert_eq!(named("etcd-start-control-plane").len(), 3);
    assert!(super::restore::health_check(&coord).await.unwrap().ok);
    let after: super::restore::Fixed = coord.db.get_json("etcd/restore-plan").unwrap().unwrap();
    assert_eq!(after, fixed);
    assert_eq!(fake.member_names(), ["cp-1", "cp-2", "cp-3"]);
}

#[tokio::test]
async fn a_restore_with_an_unreachable_control_plane_restores_the_others_and_says_how_to_add_it_back(
) {
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = lost_quorum(dir.path());
    fake.agent_down("cp-3");
    let f = super::restore::start(coord.clone(), restore_req(false), MemSnapshots::new(false))
        .await
        .unwrap();
    let (events, end) = follow(f).await;
    assert!(end.ok, "{end:?}");
    let mut restored = steps_named(&fake, "etcd-restore");
    restored.sort();
    assert_eq!(restored, ["cp-1", "cp-2"]);
    assert_eq!(fake.member_names(), ["cp-1", "cp-2"]);
    assert!(events.iter().any(|e| e.node == "cp-3"
        && e.message.contains("khctl reset --node cp-3")
        && e.message.contains("khctl rollout -f")));
}

#[tokio::test]
async fn a_restore_dry_run_prints_the_plan_and_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = lost_quorum(dir.path());
    let req = kh::proto::EtcdRestoreRequest {
        dry_run: true,
        ..restore_req(false)
    };
    let f = super::restore::start(coord.clone(), req, MemSnapshots::new(false))
        .await
        .unwrap();
    let (events, end) = follow(f).await;
    assert!(end.ok, "{end:?}");
    let plan = events.iter().find_map(|e| e.plan.clone()).expect("a plan");
    let phases: Vec<&str> = plan.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(phases, ["distribute", "stop", "restore", "start", "verify"]);
    assert_eq!(plan.phases[2].steps.len(), 3);
    assert!(plan
        .notes
        .iter()
        .any(|n| n.contains("every write made after the snapshot is lost")));
    assert_eq!(fake.steps(), Vec::<(String, String)>::new());
    assert!(RolloutState::load_at(&coord.db, super::restore::KEY)
        .unwrap()
        .is_none());
    assert!(coord
        .db
        .raw()
        .scan_prefix("etcd/restore#step/")
        .unwrap()
        .is_empty());
    assert!(crate::audit::list(&coord.db, 100).unwrap().is_empty());
}

#[tokio::test]
async fn a_forced_restore_stops_the_leader_after_the_other_members() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = spec_yaml(HA);
    let (coord, fake) = coordinator(dir.path(), &yaml, &[]);
    held(&coord, &yaml, &[]);
    for n in ["cp-1", "cp-2", "cp-3", "w-1", "w-2"] {
        fake.joined(n);
    }
    let f = super::restore::start(coord.clone(), restore_req(true), MemSnapshots::new(false))
        .await
        .unwrap();
    let (_, end) = follow(f).await;
    assert!(end.ok, "{end:?}");
    // The fake's leader is cp-1's member: its stop starts after the others end.
    let log: Vec<_> = fake
        .step_log()
        .into_iter()
        .filter(|c| c.step == "etcd-stop-control-plane")
        .collect();
    let leader_start = log
        .iter()
        .position(|c| c.node == "cp-1" && c.started)
        .unwrap();
    let others_end = log
        .iter()
        .rposition(|c| c.node != "cp-1" && !c.started)
        .unwrap();
    assert!(others_end < leader_start, "{log:?}");
    assert_eq!(fake.member_names(), ["cp-1", "cp-2", "cp-3"]);
}
