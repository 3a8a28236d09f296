//! `khctl upgrade` in process against fake agents: the order (first
//! control plane, the others one at a time, workers in batches), each
//! refusal before any step, resume without repeating a finished step, a
//! drain a PodDisruptionBudget blocks, `--through`, and the re-run that
//! finds nothing to do.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kh::names::NodeName;
use kh::pki::{Identity, Role};
use kh::proto::{self, rollout_event::Kind, RolloutEvent, UpgradeRequest};

use super::state::{Outcome, RolloutState, Status};
use super::tests::{coordinator, follow, held};
use super::upgrade::KEY;
use crate::agents::fake::FakeAgents;
use crate::Coordinator;

const NODES: &[(&str, &str, &str)] = &[
    ("cp-1", "control-plane", "10.0.0.11"),
    ("cp-2", "control-plane", "10.0.0.12"),
    ("cp-3", "control-plane", "10.0.0.13"),
    ("w-1", "worker", "10.0.0.21"),
    ("w-2", "worker", "10.0.0.22"),
    ("w-3", "worker", "10.0.0.23"),
];
const CPS: [&str; 3] = ["cp-1", "cp-2", "cp-3"];

fn yaml(version: &str, max_unavailable: Option<&str>) -> String {
    let mut y = format!("apiVersion: kh.io/v1alpha1\nkind: Cluster\nmetadata: {{name: t}}\nspec:\n  kubernetesVersion: {version}\n  controlPlaneEndpoint: 10.0.0.5:6443\n");
    if let Some(m) = max_unavailable {
        y.push_str(&format!("  upgrade: {{maxUnavailable: {m}}}\n"));
    }
    y.push_str("  nodes:\n");
    for (name, role, address) in NODES {
        y.push_str(&format!(
            "    - {{name: {name}, role: {role}, address: {address}}}\n"
        ));
    }
    y
}

/// A cluster built at `version` by a rollout that finished, every agent
/// reporting, every node's repository offering the v1.32 releases.
fn built(dir: &std::path::Path, version: &str) -> (Arc<Coordinator>, Arc<FakeAgents>) {
    let text = yaml(version, None);
    let (coord, fake) = coordinator(dir, &text, &[]);
    held(&coord, &text, &[]);
    for (n, _, _) in NODES {
        fake.joined(n);
    }
    fake.run_version(version);
    fake.offer("v1.32", &["v1.32.4", "v1.32.3", "v1.32.0"]);
    let mut st = RolloutState::load(&coord.db).unwrap().unwrap();
    st.outcome = Some(Outcome {
        ok: true,
        failure: String::new(),
        message: "the cluster matches the spec".into(),
    });
    st.save(&coord.db, 40).unwrap();
    beat(&coord);
    (coord, fake)
}

/// Every agent reports now, as heartbeats say (`khctl health`'s agents
/// check).
fn beat(coord: &Coordinator) {
    let now = kh::time::unix_ms(coord.clock.now());
    for (n, _, _) in NODES {
        let name = NodeName::new(n).unwrap();
        let rec = coord.registry.get(&name).unwrap().unwrap();
        let caller = Identity {
            role: Role::Node,
            name: n.to_string(),
            serial: rec.cert_serial.clone(),
            not_after: SystemTime::now() + Duration::from_secs(86400),
        };
        coord
            .registry
            .heartbeat(
                &caller,
                &rec,
                false,
                crate::registry::Beat {
                    facts: None,
                    endpoint: rec.endpoint.clone(),
                    agent_version: "test".into(),
                    now_ms: now,
                },
            )
            .unwrap();
    }
}

fn request(version: &str, max_unavailable: Option<&str>) -> UpgradeRequest {
    UpgradeRequest {
        spec_yaml: yaml(version, max_unavailable),
        ..Default::default()
    }
}

async fn upgrade(
    coord: &Arc<Coordinator>,
    req: UpgradeRequest,
) -> (Vec<RolloutEvent>, RolloutEvent) {
    follow(super::upgrade::start(coord.clone(), req).await.unwrap()).await
}

/// Where (node, step) starts and ends in the fake's log.
fn span(fake: &FakeAgents, node: &str, steps: &[&str]) -> Option<(usize, usize)> {
    let log = fake.step_log();
    let at: Vec<usize> = log
        .iter()
        .enumerate()
        .filter(|(_, c)| c.node == node && steps.contains(&c.step.as_str()))
        .map(|(i, _)| i)
        .collect();
    Some((*at.first()?, *at.last()?))
}

/// Where a node's own steps start and end (drains and uncordons run on
/// control planes and are left out).
fn own_span(fake: &FakeAgents, node: &str) -> (usize, usize) {
    span(
        fake,
        node,
        &[
            "package-source",
            "package-install",
            "kubeadm-upgrade-plan",
            "kubeadm-upgrade-apply",
            "kubeadm-upgrade-node",
            "restart-kubelet",
        ],
    )
    .unwrap_or_else(|| panic!("{node} ran nothing: {:?}", fake.steps()))
}

fn count(fake: &FakeAgents, step: &str) -> Vec<String> {
    fake.steps()
        .into_iter()
        .filter(|(_, s)| s == step)
        .map(|(n, _)| n)
        .collect()
}

fn nothing_pending(coord: &Coordinator) {
    assert_eq!(RolloutState::load_at(&coord.db, KEY).unwrap(), None);
}

fn assert_upgraded(fake: &FakeAgents, version: &str) {
    for (n, role, _) in NODES {
        let (kubeadm, kubelet, kubectl, running, apiserver) = fake.versions(n);
        assert_eq!(
            (
                kubeadm.as_str(),
                kubelet.as_str(),
                kubectl.as_str(),
                running.as_str()
            ),
            (version, version, version, version),
            "{n}"
        );
        if *role == "control-plane" {
            assert_eq!(apiserver, version, "{n}");
        }
    }
    assert!(fake.cordoned().is_empty(), "{:?}", fake.cordoned());
}

#[tokio::test]
async fn an_upgrade_applies_once_on_the_first_control_plane_then_the_others_one_at_a_time_then_the_workers(
) {
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = built(dir.path(), "v1.31.4");

    let (events, end) = upgrade(&coord, request("v1.32.4", None)).await;
    assert!(end.ok, "{}: {} ({})", end.step, end.message, end.hint);
    assert!(
        end.message.contains("every node runs v1.32.4"),
        "{}",
        end.message
    );
    assert_eq!(count(&fake, "kubeadm-upgrade-apply"), ["cp-1"]);
    let mut upgrade_node = count(&fake, "kubeadm-upgrade-node");
    upgrade_node.sort();
    assert_eq!(upgrade_node, ["cp-2", "cp-3", "w-1", "w-2", "w-3"]);
    assert_eq!(count(&fake, "kubeadm-upgrade-plan"), ["cp-1"]);
    // One node after another: control planes first, then workers one at a
    // time (maxUnavailable 1).
    let order = ["cp-1", "cp-2", "cp-3", "w-1", "w-2", "w-3"];
    for w in order.windows(2) {
        let (a, b) = (own_span(&fake, w[0]), own_span(&fake, w[1]));
        assert!(
            a.1 < b.0,
            "{} and {} overlap: {:?}",
            w[0],
            w[1],
            fake.steps()
        );
    }
    // Drains and uncordons: a control plane's on itself, a worker's on a
    // control plane, every node drained once and uncordoned after.
    let calls = fake.kubectl_calls();
    for n in order {
        let of: Vec<&(String, String, String)> = calls.iter().filter(|c| c.2 == n).collect();
        assert_eq!(of.len(), 2, "{n}: {calls:?}");
        assert_eq!((of[0].1.as_str(), of[1].1.as_str()), ("drain", "uncordon"));
        if n.starts_with("cp") {
            assert!(of.iter().all(|c| c.0 == n), "{calls:?}");
        } else {
            assert!(of.iter().all(|c| CPS.contains(&c.0.as_str())), "{calls:?}");
        }
    }
    assert_upgraded(&fake, "v1.32.4");
    assert_eq!(fake.cluster_version(), "v1.32.4");
    // A snapshot came first.
    assert_eq!(fake.snapshots_taken().len(), 1);
    // The plan showed every node's versions, the order and the checks.
    let plan = events.iter().find_map(|e| e.plan.clone()).expect("a plan");
    let notes = plan.notes.join("\n");
    for want in [
        "runs v1.31.4 (its lowest kube-apiserver); target v1.32.4",
        "now cp-1 (control-plane): kube-apiserver v1.31.4, kubeadm v1.31.4",
        "to v1.32.4: cp-1 first (kubeadm upgrade apply); then cp-2, cp-3 one at a time",
        "[w-1] [w-2] [w-3]",
        "check cluster-healthy: ok",
        "check repository: ok",
    ] {
        assert!(notes.contains(want), "{want:?} not in\n{notes}");
    }
    // kubeadm's plan table is shown.
    assert!(events.iter().any(|e| e.node == "cp-1"
        && e.message
            .starts_with("kubeadm upgrade plan v1.32.4:\nkube-apiserver")));
    // Audited: each node step once, with its hop.
    let history = crate::audit::list(&coord.db, 1000).unwrap();
    let applies: Vec<_> = history
        .iter()
        .filter(|h| h.step == "kubeadm-upgrade-apply@v1.32.4")
        .collect();
    assert_eq!(applies.len(), 1, "{history:?}");
    assert_eq!(applies[0].operation, "upgrade t to v1.32.4");
    let ends: Vec<(&str, &str)> = history
        .iter()
        .filter(|h| h.node == "cluster" && (h.step == "start" || h.step == "finish"))
        .map(|h| (h.step.as_str(), h.outcome.as_str()))
        .collect();
    assert_eq!(ends, [("start", "started"), ("finish", "done")]);
    for n in order {
        assert!(
            history
                .iter()
                .any(|h| h.node == n && h.step == "uncordon@v1.32.4" && h.outcome == "done"),
            "{n}"
        );
    }
    // The held spec names the target: a rollout of the new spec has no
    // version to refuse, and `khctl health` sees nothing unfinished.
    let spec = crate::etcd::held_spec(&coord).unwrap();
    assert_eq!(spec.kubernetes_version.unwrap().to_string(), "v1.32.4");
    assert!(super::upgrade::health_check(&coord).await.unwrap().ok);
    assert!(crate::lease::current(&coord.db, coord.clock.as_ref())
        .unwrap()
        .is_none());

    // A rollout of the new spec has nothing to refuse.
    let (_, end) = follow(
        super::start(
            coord.clone(),
            proto::RolloutRequest {
                spec_yaml: yaml("v1.32.4", None),
                dry_run: true,
                ..Default::default()
            },
        )
        .await
        .unwrap(),
    )
    .await;
    assert!(end.ok, "{}: {} ({})", end.step, end.message, end.hint);

    // The same command again: nothing to do, nothing run.
    let before = fake.steps().len();
    let (_, end) = upgrade(&coord, request("v1.32.4", None)).await;
    assert!(end.ok, "{}", end.message);
    assert!(end.message.starts_with("nothing to do"), "{}", end.message);
    assert_eq!(fake.steps().len(), before, "{:?}", &fake.steps()[before..]);
    assert_eq!(fake.snapshots_taken().len(), 1);

    // Still nothing to do when a check would fail: nothing would change.
    fake.etcd_down("cp-3");
    let (_, end) = upgrade(&coord, request("v1.32.4", None)).await;
    assert!(end.ok, "{}", end.message);
    assert!(end.message.starts_with("nothing to do"), "{}", end.message);
    assert_eq!(fake.steps().len(), before);

    // `khctl rollout status` (and `upgrade status`) show the upgrade.
    let f = super::status(&coord, false).await.unwrap();
    assert_eq!(f.backlog[0].operation, "upgrade t to v1.32.4");
}

#[tokio::test]
async fn workers_go_in_batches_of_max_unavailable() {
    for (max, batches) in [
        (Some("2"), "[w-1, w-2] [w-3]"),
        (Some("50%"), "[w-1] [w-2] [w-3]"),
        (Some("100%"), "[w-1, w-2, w-3]"),
        (None, "[w-1] [w-2] [w-3]"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (coord, fake) = built(dir.path(), "v1.31.4");
        let req = UpgradeRequest {
            dry_run: true,
            ..request("v1.32.4", max)
        };
        let (events, end) = upgrade(&coord, req).await;
        assert!(end.ok, "{}", end.message);
        let notes = events
            .iter()
            .find_map(|e| e.plan.clone())
            .unwrap()
            .notes
            .join("\n");
        assert!(notes.contains(batches), "{max:?}: {notes}");
        assert!(fake.steps().is_empty(), "a dry run ran {:?}", fake.steps());
        nothing_pending(&coord);
    }

    // Run with 2: w-1 and w-2 together, w-3 after both.
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = built(dir.path(), "v1.31.4");
    let (_, end) = upgrade(&coord, request("v1.32.4", Some("2"))).await;
    assert!(end.ok, "{}: {}", end.step, end.message);
    let (w1, w2, w3) = (
        own_span(&fake, "w-1"),
        own_span(&fake, "w-2"),
        own_span(&fake, "w-3"),
    );
    assert!(
        w1.0 < w2.1 && w2.0 < w1.1,
        "w-1 and w-2 did not overlap: {:?}",
        fake.steps()
    );
    assert!(
        w1.1 < w3.0 && w2.1 < w3.0,
        "w-3 started early: {:?}",
        fake.steps()
    );
    assert_upgraded(&fake, "v1.32.4");
}

/// Runs `req` and checks it was refused by a precondition with `words`,
/// before any step and leaving nothing pending.
async fn refused(
    coord: &Arc<Coordinator>,
    fake: &FakeAgents,
    req: UpgradeRequest,
    words: &[&str],
) -> RolloutEvent {
    let (events, end) = upgrade(coord, req).await;
    assert!(!end.ok, "not refused");
    assert_eq!(end.failure, "preflight", "{}", end.message);
    let all = format!("{}\n{}", end.message, end.hint);
    for w in words {
        assert!(all.contains(w), "{w:?} not in {all}");
    }
    assert!(end.hint.contains("nothing was changed"), "{}", end.hint);
    assert!(fake.steps().is_empty(), "{:?}", fake.steps());
    assert!(fake.snapshots_taken().is_empty());
    // The plan was shown anyway.
    assert!(events.iter().any(|e| e.kind == Kind::Plan as i32));
    nothing_pending(coord);
    assert!(!super::operation::list(coord)
        .await
        .unwrap()
        .iter()
        .any(|o| o.pending));
    end
}

#[tokio::test]
async fn each_refusal_comes_before_any_change_with_its_fix() {
    // A downgrade.
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = built(dir.path(), "v1.31.4");
    refused(
        &coord,
        &fake,
        request("v1.31.2", None),
        &["a downgrade", "set kubernetesVersion to v1.31.4 or newer"],
    )
    .await;

    // An unhealthy cluster: an etcd member down.
    fake.etcd_down("cp-2");
    refused(
        &coord,
        &fake,
        request("v1.32.4", None),
        &["cluster-healthy", "etcd"],
    )
    .await;

    // The lease held by another operation.
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = built(dir.path(), "v1.31.4");
    crate::lease::acquire(
        &coord.db,
        coord.clock.as_ref(),
        "etcd replace cp-2",
        "joining cp-4",
    )
    .unwrap()
    .unwrap();
    refused(
        &coord,
        &fake,
        request("v1.32.4", None),
        &["lease", "etcd replace cp-2"],
    )
    .await;

    // Certificates expiring within the upgrade window.
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = built(dir.path(), "v1.31.4");
    let now = kh::time::unix_ms(coord.clock.now()) as i64 / 1000;
    fake.set_certs(
        "cp-2",
        vec![proto::ClusterCert {
            name: "apiserver".into(),
            path: "/etc/kubernetes/pki/apiserver.crt".into(),
            not_before_unix: now - 86400 * 300,
            not_after_unix: now + 3600,
            ca: "ca".into(),
            ..Default::default()
        }],
    );
    refused(
        &coord,
        &fake,
        request("v1.32.4", None),
        &["certificates", "cp-2 apiserver", "khctl certs renew --all"],
    )
    .await;

    // The target missing from one node's repository.
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = built(dir.path(), "v1.31.4");
    fake.offer_on("w-2", "v1.32", &["v1.32.3", "v1.32.0"]);
    refused(
        &coord,
        &fake,
        request("v1.32.4", None),
        &["w-2: its apt repository for v1.32 offers v1.32.3, v1.32.0, not v1.32.4"],
    )
    .await;

    // A kubelet newer than the target.
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = built(dir.path(), "v1.31.4");
    fake.offer("v1.33", &["v1.33.1"]);
    fake.node_runs("w-3", "v1.33.1");
    refused(
        &coord,
        &fake,
        request("v1.32.4", None),
        &["kubelet-skew", "w-3 runs kubelet v1.33.1"],
    )
    .await;

    // An agent that does not answer.
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = built(dir.path(), "v1.31.4");
    fake.agent_down("w-1");
    refused(
        &coord,
        &fake,
        request("v1.32.4", None),
        &["versions-read", "w-1"],
    )
    .await;
}

#[tokio::test]
async fn an_invalid_spec_or_other_nodes_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = built(dir.path(), "v1.31.4");
    let bad = UpgradeRequest {
        spec_yaml: yaml("v1.32.4", Some("0")),
        ..Default::default()
    };
    let err = super::upgrade::start(coord.clone(), bad)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, crate::error::CoordError::InvalidArgument(_)),
        "{err}"
    );
    assert!(
        err.to_string().contains("spec.upgrade.maxUnavailable"),
        "{err}"
    );
    let fewer = UpgradeRequest {
        spec_yaml: yaml("v1.32.4", None)
            .replace("    - {name: w-3, role: worker, address: 10.0.0.23}\n", ""),
        ..Default::default()
    };
    let err = super::upgrade::start(coord.clone(), fewer)
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("w-3 is in the cluster but not in the spec"),
        "{err}"
    );
    assert!(fake.steps().is_empty());
    nothing_pending(&coord);
}

#[tokio::test]
async fn a_skipped_minor_is_refused_and_through_runs_one_minor_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = built(dir.path(), "v1.30.9");
    fake.offer("v1.31", &["v1.31.9", "v1.31.8"]);

    refused(
        &coord,
        &fake,
        request("v1.32.4", None),
        &[
            "skips a minor version",
            "upgrade to v1.31.9 first",
            "--through",
        ],
    )
    .await;

    let req = UpgradeRequest {
        through: true,
        ..request("v1.32.4", None)
    };
    let (_, end) = upgrade(&coord, req).await;
    assert!(end.ok, "{}: {} ({})", end.step, end.message, end.hint);
    assert_eq!(count(&fake, "kubeadm-upgrade-apply"), ["cp-1", "cp-1"]);
    let history = crate::audit::list(&coord.db, 1000).unwrap();
    let at = |step: &str| {
        history
            .iter()
            .position(|h| h.node == "cp-1" && h.step == step && h.outcome == "done")
            .unwrap_or_else(|| panic!("{step} not in history"))
    };
    // The whole v1.31 hop, workers included, before the v1.32 one.
    assert!(at("kubeadm-upgrade-apply@v1.31.9") < at("kubeadm-upgrade-apply@v1.32.4"));
    let w3_first = history
        .iter()
        .position(|h| h.node == "w-3" && h.step == "uncordon@v1.31.9")
        .unwrap();
    assert!(w3_first < at("package-source@v1.32.4"));
    assert_upgraded(&fake, "v1.32.4");
}

#[tokio::test]
async fn a_resumed_upgrade_repeats_no_finished_step() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = built(dir.path(), "v1.31.4");
    fake.fail_step(
        "cp-2",
        "kubeadm-upgrade-node",
        proto::FailureKind::Other,
        "[upgrade] FATAL: couldn't upgrade control plane: timed out waiting for the condition",
    );
    let (_, end) = upgrade(&coord, request("v1.32.4", None)).await;
    assert!(!end.ok);
    assert_eq!(end.failure, "rollout");
    assert_eq!(
        (end.node.as_str(), end.step.as_str()),
        ("cp-2", "kubeadm-upgrade-node@v1.32.4")
    );
    assert!(
        end.hint.contains("khctl upgrade -f cluster.yaml"),
        "{}",
        end.hint
    );
    assert!(end.hint.contains("stays pending"), "{}", end.hint);
    // `khctl operation status` and `khctl health` name it and its command.
    let ops = super::operation::list(&coord).await.unwrap();
    let op = ops.iter().find(|o| o.kind == "upgrade").unwrap();
    assert!(op.pending && op.changed, "{op:?}");
    assert!(
        op.next.contains("khctl upgrade -f cluster.yaml"),
        "{}",
        op.next
    );
    let check = super::upgrade::health_check(&coord).await.unwrap();
    assert!(!check.ok);
    assert_eq!(check.fix, "resume it: `khctl upgrade -f cluster.yaml`");
    // Another target is refused until this one is finished.
    let err = super::upgrade::start(coord.clone(), request("v1.32.3", None))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("finish it first"), "{err}");

    // As if the coordinator had died while cp-2's `upgrade node` ran.
    let mut st = RolloutState::load_at(&coord.db, KEY).unwrap().unwrap();
    st.mark(
        &coord.db,
        "cp-2/kubeadm-upgrade-node@v1.32.4",
        Status::Running,
        "",
        50,
    )
    .unwrap();
    st.outcome = None;
    st.save(&coord.db, 51).unwrap();

    let before = fake.steps().len();
    let (events, end) = upgrade(&coord, request("v1.32.4", None)).await;
    assert!(end.ok, "{}: {} ({})", end.step, end.message, end.hint);
    let again = &fake.steps()[before..];
    assert!(
        !again
            .iter()
            .any(|(n, _)| n == "cp-1" && !fake_kubectl(again, n)),
        "{again:?}"
    );
    assert_eq!(
        again
            .iter()
            .filter(|(n, _)| n == "cp-2")
            .map(|(_, s)| s.as_str())
            .take(1)
            .collect::<Vec<_>>(),
        ["kubeadm-upgrade-node"],
        "{again:?}"
    );
    assert!(
        !again.iter().any(|(_, s)| s == "kubeadm-upgrade-apply"),
        "{again:?}"
    );
    assert_eq!(count(&fake, "kubeadm-upgrade-apply"), ["cp-1"]);
    assert!(events.iter().any(|e| e
        .message
        .starts_with("resuming; decided before the first change")));
    assert_eq!(fake.snapshots_taken().len(), 1, "no second snapshot");
    let history = crate::audit::list(&coord.db, 1000).unwrap();
    assert!(history.iter().any(|h| h.node == "cp-2"
        && h.step == "kubeadm-upgrade-node@v1.32.4"
        && h.outcome == "interrupted"));
    assert_upgraded(&fake, "v1.32.4");
    assert!(super::upgrade::health_check(&coord).await.unwrap().ok);
}

/// Whether every step `node` ran in `steps` is a kubectl call for others
/// (a control plane draining workers).
fn fake_kubectl(steps: &[(String, String)], node: &str) -> bool {
    steps
        .iter()
        .filter(|(n, _)| n == node)
        .all(|(_, s)| s == "kubectl-drain" || s == "kubectl-uncordon")
}

#[tokio::test]
async fn a_blocked_drain_stops_at_that_node_and_a_rerun_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = built(dir.path(), "v1.31.4");
    fake.block_drain("w-2", &["default/web-0", "default/web-1"]);

    let (events, end) = upgrade(&coord, request("v1.32.4", Some("1"))).await;
    assert!(!end.ok);
    assert_eq!(end.failure, "rollout");
    assert_eq!(
        (end.node.as_str(), end.step.as_str()),
        ("w-2", "drain@v1.32.4")
    );
    assert!(
        end.message.contains("default/web-0, default/web-1"),
        "{}",
        end.message
    );
    assert!(
        end.message.contains("w-2 stays cordoned"),
        "{}",
        end.message
    );
    assert!(end.hint.contains("PodDisruptionBudget"), "{}", end.hint);
    assert!(
        end.hint.contains("`khctl upgrade -f cluster.yaml`"),
        "{}",
        end.hint
    );
    // The failed step's report names the pods.
    let failed = events
        .iter()
        .find(|e| e.kind == Kind::StepFailed as i32)
        .unwrap();
    assert_eq!(
        failed.report.as_ref().unwrap().notes,
        ["default/web-0", "default/web-1"]
    );
    // Nothing further: w-3 untouched, w-2 cordoned, its kubelet not upgraded.
    assert!(
        !fake.steps().iter().any(|(n, _)| n == "w-3"),
        "{:?}",
        fake.steps()
    );
    assert!(!fake.kubectl_calls().iter().any(|c| c.2 == "w-3"));
    assert_eq!(fake.cordoned(), ["w-2"]);
    assert_eq!(fake.versions("w-2").1, "v1.31.4");

    fake.remove_pdb("w-2");
    let before = fake.steps().len();
    let (_, end) = upgrade(&coord, request("v1.32.4", Some("1"))).await;
    assert!(end.ok, "{}: {} ({})", end.step, end.message, end.hint);
    let again = &fake.steps()[before..];
    assert!(!again.iter().any(|(n, _)| n == "w-1"), "{again:?}");
    assert!(
        !again
            .iter()
            .any(|(n, s)| n == "w-2" && s == "package-source"),
        "{again:?}"
    );
    assert_upgraded(&fake, "v1.32.4");
}

#[tokio::test]
async fn a_blocked_drain_in_a_batch_starts_no_new_node() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = built(dir.path(), "v1.31.4");
    fake.block_drain("w-1", &["default/db-0"]);
    let (_, end) = upgrade(&coord, request("v1.32.4", Some("2"))).await;
    assert!(!end.ok);
    assert_eq!(
        (end.node.as_str(), end.step.as_str()),
        ("w-1", "drain@v1.32.4")
    );
    // w-2, in the same batch, stopped after its step in flight; w-3 never started.
    assert!(
        !fake.steps().iter().any(|(n, _)| n == "w-3"),
        "{:?}",
        fake.steps()
    );
    // w-1 stays cordoned and its hop is not recorded finished. w-2, in the
    // same batch, ran concurrently: it stops before its next step once w-1
    // failed, or (when the scheduler let it run ahead) it had already
    // finished its whole hop; never anything in between that leaves it
    // cordoned without a record.
    assert!(
        !fake
            .kubectl_calls()
            .iter()
            .any(|c| c.1 == "uncordon" && c.2 == "w-1"),
        "{:?}",
        fake.kubectl_calls()
    );
    let st = RolloutState::load_at(&coord.db, KEY).unwrap().unwrap();
    assert!(!st.is_done("w-1/uncordon@v1.32.4"));
    assert!(!st.is_done("w-3/package-source@v1.32.4"));
    let w2_uncordoned = fake
        .kubectl_calls()
        .iter()
        .any(|c| c.1 == "uncordon" && c.2 == "w-2");
    assert_eq!(
        w2_uncordoned,
        st.is_done("w-2/uncordon@v1.32.4"),
        "{:?}",
        fake.kubectl_calls()
    );
}

#[tokio::test]
async fn skip_drain_neither_drains_nor_uncordons() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = built(dir.path(), "v1.31.4");
    let req = UpgradeRequest {
        skip_drain: true,
        no_snapshot: true,
        ..request("v1.32.4", None)
    };
    let (events, end) = upgrade(&coord, req).await;
    assert!(end.ok, "{}: {}", end.step, end.message);
    assert!(
        fake.kubectl_calls().is_empty(),
        "{:?}",
        fake.kubectl_calls()
    );
    assert!(fake.snapshots_taken().is_empty());
    assert!(events
        .iter()
        .filter_map(|e| e.plan.as_ref())
        .any(|p| p.notes.iter().any(|n| n.contains("--skip-drain"))));
    assert_upgraded(&fake, "v1.32.4");
}

#[tokio::test]
async fn a_node_cordoned_before_the_upgrade_stays_cordoned() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = built(dir.path(), "v1.31.4");
    fake.cordon("w-3");
    let (events, end) = upgrade(&coord, request("v1.32.4", None)).await;
    assert!(end.ok, "{}: {}", end.step, end.message);
    assert_eq!(fake.cordoned(), ["w-3"]);
    assert!(!fake
        .kubectl_calls()
        .iter()
        .any(|c| c.1 == "uncordon" && c.2 == "w-3"));
    assert!(events
        .iter()
        .any(|e| e.node == "w-3" && e.message.starts_with("left cordoned")));
    assert_eq!(fake.versions("w-3").3, "v1.32.4");
}

#[tokio::test]
async fn another_operation_running_or_pending_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = built(dir.path(), "v1.31.4");
    // A certificate renewal runs.
    let running = RolloutState {
        key: super::certs::KEY.into(),
        operation: "certs renew all".into(),
        cluster: "t".into(),
        started_ms: 1,
        ..Default::default()
    };
    *coord.rollouts.current.lock().await =
        Some(super::reporter::Reporter::new(coord.clone(), running));
    let err = super::upgrade::start(coord.clone(), request("v1.32.4", None))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, crate::error::CoordError::FailedPrecondition(_)),
        "{err}"
    );
    assert!(
        err.to_string().contains("certs renew all is running"),
        "{err}"
    );
    *coord.rollouts.current.lock().await = None;

    // An etcd replacement that changed the cluster and stopped.
    let mut pending = RolloutState {
        key: super::replace::KEY.into(),
        operation: "etcd replace cp-2 with cp-4".into(),
        cluster: "t".into(),
        resume: "khctl etcd replace --failed cp-2 --with cp-4".into(),
        started_ms: 1,
        ..Default::default()
    };
    pending
        .mark(&coord.db, "cp-2/remove-member", Status::Done, "", 2)
        .unwrap();
    pending.save(&coord.db, 3).unwrap();
    let err = super::upgrade::start(coord.clone(), request("v1.32.4", None))
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("finish it before upgrading"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("khctl etcd replace --failed cp-2 --with cp-4"),
        "{err}"
    );
    assert!(fake.steps().is_empty());
    nothing_pending(&coord);
}

/// The workers of a batch wait for their Nodes at the same time and share
/// the `KubeNodes` lists. Their Nodes stay NotReady until the last of them
/// has restarted its kubelet, so all three waits are under way then; from
/// there, each wait needs one list asked for after it saw its previous one.
/// Polling on their own, the three would ask for three lists; sharing, the
/// first list answers every wait already under way and only the last node's
/// wait, which may begin just after it, can need a second.
#[tokio::test]
async fn a_batch_shares_its_node_ready_polls() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = built(dir.path(), "v1.31.4");
    fake.ready_together(&["w-1", "w-2", "w-3"]);
    let (_, end) = upgrade(&coord, request("v1.32.4", Some("100%"))).await;
    assert!(end.ok, "{}: {}", end.step, end.message);
    assert_upgraded(&fake, "v1.32.4");
    let log = fake.step_log();
    let last_restart = log
        .iter()
        .rposition(|c| !c.started && c.step == "restart-kubelet" && c.node.starts_with("w-"))
        .unwrap();
    // Every worker's node-ready has ended before its uncordon starts.
    let last_uncordon = log
        .iter()
        .rposition(|c| c.started && c.step == "kubectl-uncordon")
        .unwrap();
    assert!(last_restart < last_uncordon);
    let lists: Vec<(String, usize)> = fake
        .node_lists()
        .into_iter()
        .filter(|(_, at)| (last_restart + 1..=last_uncordon).contains(at))
        .collect();
    assert!(
        (1..=2).contains(&lists.len()),
        "three waits took {} lists after the last restart: {lists:?}",
        lists.len()
    );
    assert!(lists.iter().all(|(via, _)| via == "cp-1"), "{lists:?}");
    // Each node's wait is still its own step, audited once as before.
    let history = crate::audit::list(&coord.db, 1000).unwrap();
    for w in ["w-1", "w-2", "w-3"] {
        let ready: Vec<_> = history
            .iter()
            .filter(|h| h.node == w && h.step == "node-ready@v1.32.4" && h.outcome == "done")
            .collect();
        assert_eq!(ready.len(), 1, "{w}: {history:?}");
        assert_eq!(ready[0].message, "Ready with kubelet v1.32.4");
    }
}

/// Ten waits at once cost one `KubeNodes` list; their next polls, one
/// more; a wait that begins after a list was asked for never takes it, nor
/// one another control plane answered.
#[tokio::test]
async fn waits_at_once_share_one_node_list() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake) = built(dir.path(), "v1.31.4");
    let shared = super::upgrade::SharedNodes::default();
    let ops = super::ops::Ops { coord: &coord };
    let asked = || fake.node_lists().len();
    let start = asked();

    let from = shared.mark();
    let first = futures::future::join_all((0..10).map(|_| shared.list(&ops, "cp-1", from))).await;
    assert_eq!(asked() - start, 1);
    let seq = first[0].0;
    for (s, nodes) in &first {
        assert_eq!(*s, seq);
        assert_eq!(nodes.as_ref().unwrap().len(), NODES.len());
    }

    let next = futures::future::join_all((0..10).map(|_| shared.list(&ops, "cp-1", seq + 1))).await;
    assert_eq!(asked() - start, 2);
    assert!(next.iter().all(|(s, _)| *s == next[0].0 && *s > seq));

    let late = shared.mark();
    let (s, _) = shared.list(&ops, "cp-1", late).await;
    assert!(s >= late);
    assert_eq!(asked() - start, 3);

    let (_, _) = shared.list(&ops, "cp-2", 0).await;
    assert_eq!(asked() - start, 4);
    assert_eq!(fake.node_lists().last().unwrap().0, "cp-2");
}
