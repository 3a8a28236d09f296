//! Removing nodes through the spec, checked in process against fake agents:
//! the confirmation, the order of the steps, the refusals before any step,
//! an unreachable node, and a removal resumed after the coordinator died.

use std::sync::Arc;

use kh::names::NodeName;
use kh::proto::{RolloutEvent, RolloutRequest};

use super::state::{RolloutState, Status};
use super::tests::{coordinator, follow, held, spec_yaml, HA};
use crate::agents::fake::FakeAgents;
use crate::Coordinator;

const JOINED: &[&str] = &[
    "cp-1/kubeadm-init",
    "cp-2/join-control-plane",
    "cp-3/join-control-plane",
    "w-1/join-worker",
    "w-2/join-worker",
];

/// A built HA cluster (three control planes, two workers).
fn built(dir: &std::path::Path) -> (Arc<Coordinator>, Arc<FakeAgents>, String) {
    let yaml = spec_yaml(HA);
    let (coord, fake) = coordinator(dir, &yaml, &[]);
    held(&coord, &yaml, JOINED);
    for n in ["cp-1", "cp-2", "cp-3", "w-1", "w-2"] {
        fake.joined(n);
    }
    (coord, fake, yaml)
}

fn without(names: &[&str]) -> String {
    spec_yaml(
        &HA.iter()
            .filter(|n| !names.contains(&n.0))
            .copied()
            .collect::<Vec<_>>(),
    )
}

async fn rollout(
    coord: &Arc<Coordinator>,
    yaml: &str,
    dry_run: bool,
    confirm: bool,
) -> (Vec<RolloutEvent>, RolloutEvent) {
    let req = RolloutRequest {
        spec_yaml: yaml.into(),
        dry_run,
        confirm_removals: confirm,
        // Two control planes out of three is the shape these tests remove to.
        allow_even: true,
        ..Default::default()
    };
    follow(super::start(coord.clone(), req).await.unwrap()).await
}

fn role(coord: &Coordinator, node: &str) -> Option<String> {
    coord
        .registry
        .get(&NodeName::new(node).unwrap())
        .unwrap()
        .unwrap()
        .role
}

/// The steps that change something (not the read-only questions).
fn changing(fake: &FakeAgents) -> Vec<(String, String)> {
    fake.steps()
        .into_iter()
        .filter(|(_, s)| s != "apiserver-ready")
        .collect()
}

#[tokio::test]
async fn a_removal_needs_confirmation_then_drains_resets_and_deletes_workers_first() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake, old) = built(dir.path());
    let yaml = without(&["cp-3", "w-2"]);

    // Without confirmation: refused as a spec matter, before any step.
    let (events, end) = rollout(&coord, &yaml, false, false).await;
    assert!(!end.ok);
    assert_eq!(
        (end.failure.as_str(), end.step.as_str()),
        ("spec", "confirm-removals")
    );
    assert!(
        end.message
            .starts_with("the spec removes cp-3, w-2 from the cluster"),
        "{}",
        end.message
    );
    assert!(end.hint.starts_with("re-run with --yes"), "{}", end.hint);
    assert!(changing(&fake).is_empty(), "{:?}", fake.steps());
    // The plan listed the removals, in their own phase before verify.
    let plan = events
        .iter()
        .find_map(|e| e.plan.clone())
        .expect("a plan event");
    let phases: Vec<&str> = plan.phases.iter().map(|p| p.name.as_str()).collect();
    let at = |name: &str| phases.iter().position(|p| *p == name).unwrap();
    assert!(at("workers") < at("remove-nodes") && at("remove-nodes") < at("verify"));
    let removal: Vec<(&str, &str)> = plan.phases[at("remove-nodes")]
        .steps
        .iter()
        .map(|s| (s.node.as_str(), s.step.as_str()))
        .collect();
    assert_eq!(
        removal,
        [
            ("w-2", "drain"),
            ("w-2", "kubeadm-reset"),
            ("w-2", "delete-node"),
            ("cp-3", "load-balancer"),
            ("cp-3", "drain"),
            ("cp-3", "kubeadm-reset"),
            ("cp-3", "etcd-member"),
            ("cp-3", "delete-node"),
        ]
    );
    assert_eq!(
        RolloutState::load(&coord.db).unwrap().unwrap().spec_yaml,
        old
    );

    // A dry run shows the same and changes nothing.
    let (_, end) = rollout(&coord, &yaml, true, false).await;
    assert!(end.ok, "{}", end.message);
    assert!(changing(&fake).is_empty(), "{:?}", fake.steps());

    // Confirmed: drained through a control plane that stays, reset, deleted.
    let (_, end) = rollout(&coord, &yaml, false, true).await;
    assert!(end.ok, "{}: {}", end.step, end.message);
    let steps = changing(&fake);
    let pos = |node: &str, step: &str| {
        steps
            .iter()
            .position(|(n, s)| n == node && s == step)
            .unwrap_or_else(|| panic!("no {step} on {node}: {steps:?}"))
    };
    assert!(pos("w-2", "kubeadm-reset") < pos("cp-3", "kubeadm-reset"));
    let drains: Vec<(String, String, String)> = fake.kubectl_calls();
    assert_eq!(drains.len(), 2, "{drains:?}");
    for (via, what, node) in &drains {
        assert_eq!(what, "drain");
        assert!(via != node && via != "cp-3", "{drains:?}");
    }
    let deletes: Vec<&(String, String)> = steps
        .iter()
        .filter(|(_, s)| s == "kubectl-delete-node")
        .collect();
    assert_eq!(deletes.len(), 2, "{steps:?}");
    assert!(deletes
        .iter()
        .all(|(via, _)| via == "cp-1" || via == "cp-2"));
    assert!(
        pos("w-2", "kubeadm-reset")
            < steps
                .iter()
                .position(|s| s.1 == "kubectl-delete-node")
                .unwrap()
    );
    assert_eq!(
        steps.iter().filter(|(_, s)| s == "kubeadm-reset").count(),
        2,
        "{steps:?}"
    );
    assert_eq!(fake.member_names(), ["cp-1", "cp-2"]);
    // Out: no role, still enrolled; the new spec is the held one.
    assert_eq!(role(&coord, "cp-3"), None);
    assert_eq!(role(&coord, "w-2"), None);
    assert_eq!(role(&coord, "w-1").as_deref(), Some("worker"));
    let st = RolloutState::load(&coord.db).unwrap().unwrap();
    assert_eq!(st.spec_yaml, yaml);
    assert!(!st
        .steps
        .keys()
        .any(|k| k.starts_with("cp-3/") || k.starts_with("w-2/")));

    // The same spec again: nothing to remove.
    let before = fake.steps().len();
    let (events, end) = rollout(&coord, &yaml, false, false).await;
    assert!(end.ok, "{}", end.message);
    let plan = events.iter().find_map(|e| e.plan.clone()).unwrap();
    assert!(plan.phases.iter().all(|p| p.name != "remove-nodes"));
    assert!(fake.steps()[before..]
        .iter()
        .all(|(_, s)| s != "kubeadm-reset" && s != "kubectl-delete-node"));
}

#[tokio::test]
async fn a_removal_killed_after_the_reset_finishes_without_a_second_reset() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake, _) = built(dir.path());
    // An earlier rollout drained and reset w-2 and was killed before it
    // deleted the Node. The steps recorded done are not sent again, whatever
    // the host says now.
    let mut done = JOINED.to_vec();
    done.extend(["w-2/drain", "w-2/kubeadm-reset"]);
    held(&coord, &spec_yaml(HA), &done);
    let yaml = without(&["w-2"]);
    let (_, end) = rollout(&coord, &yaml, false, true).await;
    assert!(end.ok, "{}: {}", end.step, end.message);
    let steps = changing(&fake);
    assert!(
        !steps
            .iter()
            .any(|(n, s)| n == "w-2" && s == "kubeadm-reset"),
        "{steps:?}"
    );
    assert_eq!(
        steps
            .iter()
            .filter(|(_, s)| s == "kubectl-delete-node")
            .count(),
        1,
        "{steps:?}"
    );
    assert!(fake.kubectl_calls().is_empty());
    assert_eq!(role(&coord, "w-2"), None);
}

#[tokio::test]
async fn an_unreachable_worker_is_deleted_and_the_plan_says_its_host_was_not_reset() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake, _) = built(dir.path());
    fake.agent_down("w-2");
    let (events, end) = rollout(&coord, &without(&["w-2"]), false, true).await;
    assert!(end.ok, "{}: {}", end.step, end.message);
    let steps = changing(&fake);
    assert!(!steps.iter().any(|(n, _)| n == "w-2"), "{steps:?}");
    assert!(steps.iter().any(|(_, s)| s == "kubectl-delete-node"));
    assert!(
        events.iter().any(|e| e.node == "w-2"
            && e.message.contains("the host is not drained or reset")
            && e.message.contains("`kubeadm reset -f` on w-2")),
        "{events:#?}"
    );
}

#[tokio::test]
async fn an_unsafe_removal_is_refused_as_a_precondition_before_any_step() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake, old) = built(dir.path());

    // The control plane kubeadm init ran on.
    let (_, end) = rollout(&coord, &without(&["cp-1"]), false, true).await;
    assert!(!end.ok);
    assert_eq!(end.failure, "preflight", "{}", end.message);
    assert!(
        end.message
            .contains("cp-1: is the control plane kubeadm init ran on"),
        "{}",
        end.message
    );

    // A healthy control plane while another one's member is down: etcd
    // would be left with 1 healthy member of 2.
    fake.etcd_down("cp-2");
    let (_, end) = rollout(&coord, &without(&["cp-3"]), false, true).await;
    assert!(!end.ok);
    assert_eq!(end.failure, "preflight", "{}", end.message);
    assert!(
        end.message.contains("cp-3: removing its etcd member")
            && end.message.contains("etcd would lose quorum"),
        "{}",
        end.message
    );
    assert!(changing(&fake).is_empty(), "{:?}", fake.steps());
    assert_eq!(fake.member_names(), ["cp-1", "cp-2", "cp-3"]);
    assert_eq!(role(&coord, "cp-3").as_deref(), Some("control-plane"));
    assert_eq!(
        RolloutState::load(&coord.db).unwrap().unwrap().spec_yaml,
        old
    );
}

#[tokio::test]
async fn a_node_an_unfinished_operation_changed_is_not_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake, _) = built(dir.path());
    let mut st = RolloutState {
        key: super::replace::KEY.into(),
        operation: "etcd replace cp-3 with cp-9".into(),
        cluster: "t".into(),
        resume: "khctl etcd replace --failed cp-3 --with cp-9".into(),
        started_ms: 10,
        ..Default::default()
    };
    st.mark(&coord.db, "cp-3/remove-member", Status::Done, "", 20)
        .unwrap();
    st.save(&coord.db, 30).unwrap();
    let (_, end) = rollout(&coord, &without(&["cp-3"]), false, true).await;
    assert!(!end.ok);
    assert_eq!(end.failure, "preflight", "{}", end.message);
    assert!(
        end.message
            .contains("etcd replace cp-3 with cp-9 did not finish and has changed cp-3")
            && end
                .message
                .contains("khctl etcd replace --failed cp-3 --with cp-9"),
        "{}",
        end.message
    );
    assert!(changing(&fake).is_empty(), "{:?}", fake.steps());
}

#[tokio::test]
async fn an_unreachable_control_plane_loses_its_member_and_node_but_its_host_is_not_reset() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake, _) = built(dir.path());
    fake.agent_down("cp-3");
    let (_, end) = rollout(&coord, &without(&["cp-3"]), false, true).await;
    assert!(end.ok, "{}: {}", end.step, end.message);
    let steps = changing(&fake);
    assert!(!steps.iter().any(|(n, _)| n == "cp-3"), "{steps:?}");
    assert!(
        steps.iter().any(|(_, s)| s == "etcd-member-remove"),
        "{steps:?}"
    );
    assert!(
        steps.iter().any(|(_, s)| s == "kubectl-delete-node"),
        "{steps:?}"
    );
    assert_eq!(fake.member_names(), ["cp-1", "cp-2"]);
    assert_eq!(role(&coord, "cp-3"), None);
}

/// The way the refusal to remove the first control plane gives: list
/// another joined control plane first (a rollout that runs no init and
/// joins nothing), then remove the old one.
#[tokio::test]
async fn the_first_control_plane_is_removed_after_another_one_is_listed_first() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, fake, _) = built(dir.path());
    let mut reordered = HA.to_vec();
    reordered.swap(0, 1);
    let (_, end) = rollout(&coord, &spec_yaml(&reordered), false, false).await;
    assert!(end.ok, "{}: {}", end.step, end.message);
    let steps = changing(&fake);
    assert!(
        !steps
            .iter()
            .any(|(_, s)| s == "kubeadm-init" || s == "kubeadm-join" || s == "kubeadm-reset"),
        "{steps:?}"
    );
    let yaml = spec_yaml(
        &reordered
            .iter()
            .filter(|n| n.0 != "cp-1")
            .copied()
            .collect::<Vec<_>>(),
    );
    let (_, end) = rollout(&coord, &yaml, false, true).await;
    assert!(end.ok, "{}: {}", end.step, end.message);
    let steps = changing(&fake);
    assert_eq!(
        steps
            .iter()
            .filter(|(n, s)| n == "cp-1" && s == "kubeadm-reset")
            .count(),
        1,
        "{steps:?}"
    );
    assert!(!steps.iter().any(|(_, s)| s == "kubeadm-init"), "{steps:?}");
    assert_eq!(fake.member_names(), ["cp-2", "cp-3"]);
}
