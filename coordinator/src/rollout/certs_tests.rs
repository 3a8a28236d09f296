//! `khctl certs renew` and automatic renewal, in process against fake
//! agents: one control plane at a time, refusals before any step, the gate
//! chosen from the health before the first change, resume, and the
//! automatic renewal's decision.

use kh::proto::{self, CertsRenewRequest};

use super::autorenew::{self, Checked};
use super::certs::KEY;
use super::state::{RolloutState, Status};
use super::tests::{coordinator, follow, held, spec_yaml, HA};

fn all() -> CertsRenewRequest {
    CertsRenewRequest {
        all: true,
        names: vec![],
        dry_run: false,
        no_snapshot: false,
    }
}

const CPS: [&str; 3] = ["cp-1", "cp-2", "cp-3"];

fn joined_ha(
    dir: &std::path::Path,
) -> (
    std::sync::Arc<crate::Coordinator>,
    std::sync::Arc<crate::agents::fake::FakeAgents>,
) {
    let yaml = spec_yaml(HA);
    let (coord, fake) = coordinator(dir, &yaml, &[]);
    held(&coord, &yaml, &[]);
    for n in ["cp-1", "cp-2", "cp-3", "w-1", "w-2"] {
        fake.joined(n);
    }
    for cp in CPS {
        fake.set_certs(
            cp,
            vec![
                cert("admin.conf", NOW + 300 * DAY),
                cert("apiserver", NOW + 300 * DAY),
            ],
        );
    }
    // The rollout that built it finished.
    let mut st = RolloutState::load(&coord.db).unwrap().unwrap();
    st.outcome = Some(super::state::Outcome {
        ok: true,
        failure: String::new(),
        message: "the cluster matches the spec".into(),
    });
    st.save(&coord.db, 40).unwrap();
    (coord, fake)
}

#[tokio::test]
async fn renewal_takes_one_control_plane_at_a_time_and_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = joined_ha(dir.path());

    let (events, end) = follow(super::certs::start(coord.clone(), all()).await.unwrap()).await;
    assert!(end.ok, "{}: {} ({})", end.step, end.message, end.hint);
    let log = fake.step_log();
    // Only control planes, only the renewal's steps, each once.
    assert!(
        log.iter().all(|c| CPS.contains(&c.node.as_str())
            && (c.step == "certs-renew" || c.step == "restart-control-plane")),
        "{log:?}"
    );
    assert_eq!(log.len(), 12, "{log:?}");
    let at = |node: &str, step: &str, started: bool| {
        log.iter()
            .position(|c| c.node == node && c.step == step && c.started == started)
            .unwrap_or_else(|| panic!("{node} {step} missing: {log:?}"))
    };
    for (a, b) in [("cp-1", "cp-2"), ("cp-2", "cp-3")] {
        assert!(at(a, "certs-renew", false) < at(a, "restart-control-plane", true));
        // A control plane's restart has ended before the next one's renewal starts.
        assert!(
            at(a, "restart-control-plane", false) < at(b, "certs-renew", true),
            "{log:?}"
        );
    }
    // The cluster was healthy, so each control plane had to be healthy
    // before the next; the plan and the progress say so.
    assert!(
        events.iter().any(|e| e
            .message
            .contains("each control plane healthy before the next")),
        "{events:?}"
    );
    let history = crate::audit::list(&coord.db, 100).unwrap();
    for cp in CPS {
        for step in ["certs-renew", "restart", "ready"] {
            assert!(
                history.iter().any(|h| h.operation == "certs renew all"
                    && h.node == cp
                    && h.step == step
                    && h.outcome == "done"),
                "{cp}/{step} not in history: {history:?}"
            );
        }
    }
    assert!(history
        .iter()
        .any(|h| h.step == "admin-kubeconfig" && h.outcome == "done"));
    assert!(crate::lease::current(&coord.db, coord.clock.as_ref())
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn an_unreachable_control_plane_is_refused_before_any_step() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = joined_ha(dir.path());
    fake.agent_down("cp-2");

    let (_, end) = follow(super::certs::start(coord.clone(), all()).await.unwrap()).await;
    assert!(!end.ok);
    assert_eq!(end.failure, "preflight");
    assert_eq!(end.node, "cp-2");
    assert!(
        end.message.contains("cp-2 is unreachable"),
        "{}",
        end.message
    );
    assert!(
        end.hint
            .contains("nothing was changed and nothing is left pending"),
        "{}",
        end.hint
    );
    assert!(fake.steps().is_empty(), "{:?}", fake.steps());
    assert_eq!(RolloutState::load_at(&coord.db, KEY).unwrap(), None);
}

#[tokio::test]
async fn bad_requests_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, _fake) = joined_ha(dir.path());
    let bogus = CertsRenewRequest {
        all: false,
        names: vec!["apiserver".into(), "etcd-bogus".into()],
        ..all()
    };
    let err = super::certs::start(coord.clone(), bogus)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("etcd-bogus"), "{err}");
    let both = CertsRenewRequest {
        names: vec!["apiserver".into()],
        ..all()
    };
    assert!(super::certs::start(coord.clone(), both).await.is_err());
}

#[tokio::test]
async fn a_control_plane_that_does_not_come_back_stops_the_renewal_before_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = joined_ha(dir.path());
    fake.fail_step(
        "cp-2",
        "restart-control-plane",
        proto::FailureKind::Timeout,
        "restarting kube-apiserver: it did not come back serving /etc/kubernetes/pki/apiserver.crt on 10.0.0.12:6443 within 120s",
    );

    let (_, end) = follow(super::certs::start(coord.clone(), all()).await.unwrap()).await;
    assert!(!end.ok);
    assert_eq!((end.node.as_str(), end.step.as_str()), ("cp-2", "restart"));
    assert!(end.message.contains("kube-apiserver"), "{}", end.message);
    assert!(end.hint.contains("khctl certs renew --all"), "{}", end.hint);
    assert!(
        !fake.steps().iter().any(|(n, _)| n == "cp-3"),
        "{:?}",
        fake.steps()
    );
    // It changed the cluster: pending, resumable, not cancellable.
    let ops = super::operation::list(&coord).await.unwrap();
    let op = ops.iter().find(|o| o.kind == "certs-renew").unwrap();
    assert!(op.pending && op.changed, "{op:?}");
    assert!(op.next.contains("khctl certs renew --all"), "{}", op.next);
    // Only the same request resumes it.
    let other = CertsRenewRequest {
        all: false,
        names: vec!["apiserver".into()],
        ..all()
    };
    let err = super::certs::start(coord.clone(), other)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("finish it first"), "{err}");
}

#[tokio::test]
async fn a_renewal_interrupted_during_a_restart_resumes_there() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = joined_ha(dir.path());
    // An earlier coordinator renewed cp-1 and died while restarting cp-2.
    let mut st = RolloutState {
        key: KEY.into(),
        operation: "certs renew all".into(),
        cluster: "t".into(),
        resume: "khctl certs renew --all".into(),
        started_ms: 10,
        ..Default::default()
    };
    st.mark(
        &coord.db,
        "cluster/preconditions",
        Status::Done,
        "3 control planes reachable; before the renewal the cluster was healthy; gate: each control plane healthy before the next",
        11,
    )
    .unwrap();
    for key in [
        "cp-1/certs-renew",
        "cp-1/restart",
        "cp-1/ready",
        "cp-2/certs-renew",
    ] {
        st.mark(&coord.db, key, Status::Done, "", 12).unwrap();
    }
    st.mark(&coord.db, "cp-2/restart", Status::Running, "", 13)
        .unwrap();
    st.save(&coord.db, 14).unwrap();

    // `khctl health` names the unfinished renewal and its command, and the
    // cluster-health wait of other operations does not count it.
    let check = super::certs::health_check(&coord).await.unwrap();
    assert!(!check.ok, "{check:?}");
    assert_eq!(check.name, "certs-renew-finished");
    assert!(
        check.detail.contains("cp-2/restart was running"),
        "{}",
        check.detail
    );
    assert_eq!(check.fix, "resume it: `khctl certs renew --all`");

    let (events, end) = follow(super::certs::start(coord.clone(), all()).await.unwrap()).await;
    assert!(end.ok, "{}: {}", end.step, end.message);
    assert!(super::certs::health_check(&coord).await.unwrap().ok);
    let steps = fake.steps();
    assert_eq!(
        steps,
        [
            ("cp-2".to_string(), "restart-control-plane".to_string()),
            ("cp-3".into(), "certs-renew".into()),
            ("cp-3".into(), "restart-control-plane".into()),
        ],
        "{steps:?}"
    );
    assert!(events.iter().any(|e| e
        .message
        .starts_with("resuming; decided before the first change")));
    // The interrupted attempt is in the history.
    let history = crate::audit::list(&coord.db, 100).unwrap();
    assert!(
        history
            .iter()
            .any(|h| h.node == "cp-2" && h.step == "restart" && h.outcome == "interrupted"),
        "{history:?}"
    );
}

#[tokio::test]
async fn an_expired_cluster_is_renewed_node_by_node_and_checked_whole_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = joined_ha(dir.path());
    // Expired certificates: no etcd member serves its peers.
    for cp in CPS {
        fake.etcd_down(cp);
    }

    let (events, end) = follow(super::certs::start(coord.clone(), all()).await.unwrap()).await;
    assert!(end.ok, "{}: {} ({})", end.step, end.message, end.hint);
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("the cluster was down")),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e.node == "cp-1"
            && e.step == "ready"
            && e.message.contains("health is required after the last")),
        "{events:?}"
    );
    assert!(events
        .iter()
        .any(|e| e.step == "verify" && e.message.contains("every etcd member healthy")));
    assert_eq!(fake.steps().len(), 6);
}

#[tokio::test]
async fn a_dry_run_changes_and_persists_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = joined_ha(dir.path());
    let req = CertsRenewRequest {
        dry_run: true,
        ..all()
    };
    let (events, end) = follow(super::certs::start(coord.clone(), req).await.unwrap()).await;
    assert!(end.ok, "{}", end.message);
    assert!(fake.steps().is_empty());
    assert!(
        events.iter().any(|e| e.node == "cp-2"
            && e.message
                .contains("would run cp-2: kubeadm certs renew all")),
        "{events:?}"
    );
    assert_eq!(RolloutState::load_at(&coord.db, KEY).unwrap(), None);
    assert!(crate::audit::list(&coord.db, 100).unwrap().is_empty());
}

fn cert(name: &str, not_after: i64) -> proto::ClusterCert {
    proto::ClusterCert {
        name: name.into(),
        not_after_unix: not_after,
        ca: "ca".into(),
        ..Default::default()
    }
}

/// The fake clock's now, in unix seconds.
const NOW: i64 = 1_700_000_000;
const DAY: i64 = 86_400;

#[test]
fn automatic_renewal_is_due_inside_the_window_only_for_renewable_leaves() {
    let spec = kh::spec::parse(&spec_yaml(HA)).unwrap();
    let far = vec![
        cert("apiserver", NOW + 300 * DAY),
        cert("admin.conf", NOW + 300 * DAY),
    ];
    let certs = vec![
        ("cp-1".to_string(), far.clone()),
        ("cp-2".to_string(), far.clone()),
    ];
    assert_eq!(autorenew::decide(&spec, &certs, NOW), None);
    // A CA or the kubelet's own certificate near its end does not count.
    let mut ca = cert("etcd-ca", NOW + DAY);
    ca.is_ca = true;
    let mut others = far.clone();
    others.push(ca);
    others.push(cert("kubelet-client", NOW + DAY));
    let certs = vec![("cp-1".to_string(), others)];
    assert_eq!(autorenew::decide(&spec, &certs, NOW), None);
    // A leaf 20 days out (default window 30 days) is due.
    let mut near = far.clone();
    near.push(cert("etcd-peer", NOW + 20 * DAY));
    let certs = vec![
        ("cp-1".to_string(), far.clone()),
        ("cp-3".to_string(), near),
    ];
    let due = autorenew::decide(&spec, &certs, NOW).unwrap();
    assert_eq!(
        (due.node.as_str(), due.cert.as_str(), due.left_secs),
        ("cp-3", "etcd-peer", 20 * DAY)
    );
    assert!(
        due.reason(&spec)
            .contains("etcd-peer on cp-3 expires in 20d"),
        "{}",
        due.reason(&spec)
    );
    // Off with certificates.autoRenew: false.
    let off = kh::spec::parse(&spec_yaml(HA).replace(
        "  nodes:\n",
        "  certificates:\n    autoRenew: false\n  nodes:\n",
    ))
    .unwrap();
    assert_eq!(autorenew::decide(&off, &certs, NOW), None);
}

#[tokio::test]
async fn automatic_renewal_starts_once_and_never_beside_another_operation() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = joined_ha(dir.path());
    assert_eq!(autorenew::check_once(&coord).await, Checked::NothingDue);
    fake.set_certs("cp-2", vec![cert("apiserver", NOW + 10 * DAY)]);
    let Checked::Started(due) = autorenew::check_once(&coord).await else {
        panic!("a due certificate starts the renewal");
    };
    assert_eq!(due.node, "cp-2");
    // While it runs, a check starts nothing.
    assert!(matches!(
        autorenew::check_once(&coord).await,
        Checked::Busy(_)
    ));
    let end = super::status(&coord, true).await.unwrap();
    let (_, end) = follow(end).await;
    assert!(end.ok, "{}", end.message);
    let history = crate::audit::list(&coord.db, 200).unwrap();
    let pre: Vec<_> = history
        .iter()
        .filter(|h| h.step == "preconditions")
        .collect();
    assert_eq!(pre.len(), 1, "{history:?}");
    assert!(
        pre[0]
            .message
            .contains("started by the coordinator (automatic renewal"),
        "{}",
        pre[0].message
    );
    assert!(
        pre[0].message.contains("apiserver on cp-2 expires in 10d"),
        "{}",
        pre[0].message
    );
}

#[tokio::test]
async fn automatic_renewal_waits_for_a_pending_operation() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = joined_ha(dir.path());
    fake.set_certs("cp-1", vec![cert("apiserver", NOW - DAY)]);
    // An etcd replacement changed the cluster and stopped.
    let mut st = RolloutState {
        key: super::replace::KEY.into(),
        operation: "etcd replace cp-2 with cp-4".into(),
        resume: "khctl etcd replace --failed cp-2 --with cp-4".into(),
        ..Default::default()
    };
    st.mark(&coord.db, "cp-2/remove-member", Status::Done, "", 1)
        .unwrap();
    st.save(&coord.db, 2).unwrap();
    let Checked::Busy(why) = autorenew::check_once(&coord).await else {
        panic!("a pending operation blocks automatic renewal");
    };
    assert!(why.contains("etcd replace cp-2 with cp-4"), "{why}");
    assert!(fake.steps().is_empty());
}

#[tokio::test]
async fn no_renewal_without_a_held_cluster_or_while_the_lease_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = spec_yaml(HA);
    let (coord, _fake) = coordinator(dir.path(), &yaml, &[]);
    // Nothing rolled out yet.
    let err = super::certs::start(coord.clone(), all())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("khctl rollout"), "{err}");

    let (coord, fake) = joined_ha(dir.path());
    // Another control-plane change holds the lease (another coordinator's
    // replacement, say): the renewal changes nothing.
    crate::lease::acquire(
        &coord.db,
        coord.clock.as_ref(),
        "etcd replace cp-2",
        "replacing cp-2",
    )
    .unwrap()
    .unwrap();
    let (_, end) = follow(super::certs::start(coord.clone(), all()).await.unwrap()).await;
    assert!(!end.ok);
    assert!(end.message.contains("etcd replace cp-2"), "{}", end.message);
    assert!(fake.steps().is_empty(), "{:?}", fake.steps());
}

/// A renewal of a healthy cluster takes an etcd snapshot before its first
/// change, and refuses with nothing changed when none can be taken;
/// `--no-snapshot` skips it; a cluster already down renews without one and
/// says why.
#[tokio::test]
async fn a_renewal_takes_a_snapshot_first_refuses_without_one_and_skips_it_when_down() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = joined_ha(dir.path());

    for cp in CPS {
        fake.fail_snapshot(
            cp,
            "etcd snapshot failed (timeout): context deadline exceeded",
        );
    }
    let (_, end) = follow(super::certs::start(coord.clone(), all()).await.unwrap()).await;
    assert!(!end.ok);
    assert_eq!(
        (end.failure.as_str(), end.step.as_str()),
        ("preflight", "snapshot")
    );
    assert!(
        end.message.contains("context deadline exceeded"),
        "{}",
        end.message
    );
    assert!(end.hint.contains("--no-snapshot"), "{}", end.hint);
    assert!(fake.step_log().is_empty(), "{:?}", fake.step_log());
    let st = RolloutState::load_at(&coord.db, KEY).unwrap();
    assert!(
        st.is_none_or(|st| !st.changed()),
        "a refused snapshot changed nothing"
    );

    // --no-snapshot goes ahead without one.
    let req = CertsRenewRequest {
        no_snapshot: true,
        ..all()
    };
    let (events, end) = follow(super::certs::start(coord.clone(), req).await.unwrap()).await;
    assert!(end.ok, "{}: {} ({})", end.step, end.message, end.hint);
    assert!(!events.iter().any(|e| e.step == "snapshot"), "{events:?}");

    // A healthy cluster: the snapshot is stored before the first renewal.
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = joined_ha(dir.path());
    let (events, end) = follow(super::certs::start(coord.clone(), all()).await.unwrap()).await;
    assert!(end.ok, "{}: {} ({})", end.step, end.message, end.hint);
    assert_eq!(fake.snapshots_taken().len(), 1);
    let snap = events
        .iter()
        .position(|e| e.step == "snapshot" && e.message.contains("stored"))
        .unwrap_or_else(|| panic!("no snapshot event: {events:?}"));
    let first_renew = events.iter().position(|e| e.step == "certs-renew").unwrap();
    assert!(snap < first_renew, "{events:?}");
    let list = crate::snapshots::list(&coord).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].reason, "before certs renew");

    // Already down: no member can be read, the renewal goes ahead and says so.
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = joined_ha(dir.path());
    for cp in CPS {
        fake.etcd_down(cp);
    }
    let (events, end) = follow(super::certs::start(coord.clone(), all()).await.unwrap()).await;
    assert!(end.ok, "{}: {} ({})", end.step, end.message, end.hint);
    assert!(fake.snapshots_taken().is_empty());
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("no etcd snapshot: the cluster was down")),
        "{events:?}"
    );
}
