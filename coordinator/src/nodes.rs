//! `khctl nodes delete NAME`: deregister a node that is not, or no longer,
//! part of the cluster. Deleting the record revokes the node's certificate:
//! the registry holds the only serial a node certificate is accepted under,
//! so the agent's next heartbeat or renewal is refused. A node the cluster
//! still depends on (in the held spec, joined, not retired) is refused.

use kh::names::NodeName;
use kh::spec::ClusterSpec;

use crate::error::CoordError;
use crate::registry::NodeRecord;
use crate::rollout::state::RolloutState;
use crate::Coordinator;

/// The steps after which a node is part of the cluster.
const JOIN_STEPS: &[&str] = &[
    "kubeadm-init",
    "join-control-plane",
    "join-worker",
    crate::rollout::lb::STEP,
];

/// Whether `node` has joined the cluster, by the rollout's and the last
/// replacement's persisted steps.
fn joined(states: &[RolloutState], node: &str) -> bool {
    states.iter().any(|st| {
        JOIN_STEPS
            .iter()
            .any(|step| st.is_done(&format!("{node}/{step}")))
    })
}

/// A node an unfinished etcd replacement still works on (the failed node or
/// its replacement) stays until the replacement is finished.
fn in_unfinished_replacement(st: &RolloutState, node: &str) -> Option<String> {
    if st.key != crate::rollout::replace::KEY || st.outcome.as_ref().is_some_and(|o| o.ok) {
        return None;
    }
    let (failed, with) = crate::rollout::replace::parse_operation(&st.operation)?;
    (failed == node || with == node).then(|| {
        format!(
            "refusing to delete node {node}: the unfinished {} still needs it; finish it first with `{}`. Nothing was changed",
            st.operation,
            if st.resume.is_empty() {
                format!("khctl etcd replace --failed {failed} --with {with}")
            } else {
                st.resume.clone()
            }
        )
    })
}

/// Why `rec` may not be deleted, if it may not.
fn refusal(rec: &NodeRecord, spec: Option<&ClusterSpec>, joined: bool) -> Option<String> {
    if rec.retired.is_some() || !joined {
        return None;
    }
    let spec = spec?;
    let node = spec.node(rec.name.as_str())?;
    let how = match node.role {
        kh::spec::NodeRole::ControlPlane => format!(
            "replace it first (`khctl etcd replace --failed {0} --with <new-node>`), which retires it",
            node.name
        ),
        _ => format!(
            "reset it first (`khctl reset --node {0}`) and take it out of cluster.yaml",
            node.name
        ),
    };
    Some(format!(
        "refusing to delete node {}: it is a {} of cluster {} and has joined it; {how}. Nothing was changed",
        node.name,
        node.role.as_str(),
        spec.name
    ))
}

/// Deregisters `name` and revokes its certificate; audited.
pub fn delete(coord: &Coordinator, name: &str) -> Result<String, CoordError> {
    let name = NodeName::new(name)?;
    let rec = coord.registry.get(&name)?.ok_or_else(|| {
        CoordError::NotFound(format!(
            "node {name} is not enrolled with this coordinator; see `khctl nodes`"
        ))
    })?;
    let held = RolloutState::load(&coord.db)?;
    let spec = held
        .as_ref()
        .and_then(|st| kh::spec::parse(&st.spec_yaml).ok());
    let states: Vec<RolloutState> = held
        .into_iter()
        .chain(RolloutState::load_at(
            &coord.db,
            crate::rollout::replace::KEY,
        )?)
        .collect();
    if let Some(r) = refusal(&rec, spec.as_ref(), joined(&states, name.as_str())) {
        return Err(CoordError::FailedPrecondition(r));
    }
    if let Some(r) = states
        .iter()
        .find_map(|st| in_unfinished_replacement(st, name.as_str()))
    {
        return Err(CoordError::FailedPrecondition(r));
    }
    // The record may have changed since it was read (a heartbeat); the
    // deletion takes whatever is there, with the same serial rules.
    coord.registry.delete(&name)?;
    let message = format!(
        "deleted node {name}: its certificate (serial {}) is revoked and its agent can no longer connect; to enroll the host again, `khctl token create --node {name}`",
        rec.cert_serial
    );
    crate::audit::append(
        &coord.db,
        coord.clock.as_ref(),
        &format!("nodes delete {name}"),
        name.as_str(),
        "delete-node",
        "done",
        &message,
    )?;
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = "apiVersion: kh.io/v1alpha1\nkind: Cluster\nmetadata: {name: t}\nspec:\n  kubernetesVersion: v1.32.0\n  controlPlaneEndpoint: 10.0.0.11:6443\n  nodes:\n    - {name: cp-1, role: control-plane, address: 10.0.0.11}\n    - {name: w-1, role: worker, address: 10.0.0.21}\n";

    fn record(name: &str, retired: bool) -> NodeRecord {
        NodeRecord {
            name: NodeName::new(name).unwrap(),
            enrolled_ms: 1,
            cert_serial: "01".into(),
            prev_serial: None,
            cert_expires_ms: 2,
            role: None,
            endpoint: String::new(),
            agent_version: String::new(),
            facts: None,
            last_seen_ms: 0,
            claimed_ms: Default::default(),
            retired: retired.then(|| crate::registry::Retired {
                unix_ms: 3,
                reason: "replaced by cp-4".into(),
            }),
        }
    }

    #[test]
    fn a_joined_member_of_the_spec_is_refused_unless_retired() {
        let spec = kh::spec::parse(SPEC).unwrap();
        let r = refusal(&record("cp-1", false), Some(&spec), true).unwrap();
        assert!(r.contains("khctl etcd replace --failed cp-1"), "{r}");
        let r = refusal(&record("w-1", false), Some(&spec), true).unwrap();
        assert!(r.contains("khctl reset --node w-1"), "{r}");
        // Retired, not joined yet, not in the spec, or no spec at all: allowed.
        assert_eq!(refusal(&record("cp-1", true), Some(&spec), true), None);
        assert_eq!(refusal(&record("cp-1", false), Some(&spec), false), None);
        assert_eq!(refusal(&record("cp-9", false), Some(&spec), true), None);
        assert_eq!(refusal(&record("cp-1", false), None, true), None);
    }

    #[test]
    fn the_nodes_of_an_unfinished_replacement_stay_until_it_is_finished() {
        let mut st = RolloutState::default();
        st.key = crate::rollout::replace::KEY.into();
        st.operation = "etcd replace cp-2 with cp-4".into();
        st.resume = "khctl etcd replace --failed cp-2 --with cp-4".into();
        for n in ["cp-2", "cp-4"] {
            let r = in_unfinished_replacement(&st, n).unwrap();
            assert!(
                r.contains("finish it first with `khctl etcd replace --failed cp-2 --with cp-4`"),
                "{r}"
            );
        }
        assert_eq!(in_unfinished_replacement(&st, "cp-1"), None);
        st.outcome = Some(crate::rollout::state::Outcome {
            ok: true,
            failure: String::new(),
            message: String::new(),
        });
        assert_eq!(in_unfinished_replacement(&st, "cp-2"), None);
    }

    #[test]
    fn joined_means_an_init_join_or_load_balancer_step_is_done() {
        let db = crate::store::Db::in_memory();
        let mut st = RolloutState::default();
        st.mark(
            &db,
            "w-1/prepare",
            crate::rollout::state::Status::Done,
            "",
            1,
        )
        .unwrap();
        assert!(!joined(std::slice::from_ref(&st), "w-1"));
        st.mark(
            &db,
            "w-1/join-worker",
            crate::rollout::state::Status::Done,
            "",
            2,
        )
        .unwrap();
        assert!(joined(&[st], "w-1"));
    }
}
