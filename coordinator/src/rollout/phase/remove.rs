//! The remove-nodes phase: joined nodes the spec no longer lists leave the
//! cluster, after the joins (so a control plane that replaces another one
//! in the same spec is a voter before the other one goes) and before verify.
//!
//! Workers first, one at a time, then the control planes one at a time in
//! [`plan::removal_order`], each through `reset::take_out` (the path `khctl
//! reset --node` takes). A node's role is cleared in the registry and its
//! rollout steps forgotten only once it is out; the node stays enrolled.

use kh::names::NodeName;
use kh::proto;
use kh::spec::{ClusterSpec, Etcd, NodeRole, NodeSpec};
use kh::time::unix_ms;

use super::{Ctx, Phase};
use crate::etcd;
use crate::rollout::ops::Failure;
use crate::rollout::plan::{self, Diff, Removal};
use crate::rollout::reset::{take_out, TakeOut};

/// How a failed removal goes on.
const HINT: &str = "once the cause is fixed, run `khctl rollout -f cluster.yaml --yes` again: it finishes the removal without repeating the steps that are done";

/// The steps the plan lists for one node's removal.
fn steps(r: &Removal, stacked: bool) -> Vec<(&'static str, &'static str)> {
    let cp = r.role == NodeRole::ControlPlane;
    let mut out = vec![];
    if cp {
        out.push((
            crate::rollout::lb::STEP,
            "the load balancers' backends without it",
        ));
    }
    if r.reachable {
        out.push(("drain", "kubectl drain, through a control plane that stays"));
        out.push(("kubeadm-reset", "kubeadm reset -f on the host"));
    }
    if cp && stacked {
        out.push((
            "etcd-member",
            "its etcd member removed, under the control-plane lease",
        ));
    }
    out.push((
        "delete-node",
        "kubectl delete node, through a control plane that stays",
    ));
    out
}

/// The planned phase listing every removal's steps (none without removals).
pub(crate) fn planned(spec: &ClusterSpec, removals: &[Removal]) -> Option<proto::PlannedPhase> {
    if removals.is_empty() {
        return None;
    }
    let stacked = matches!(spec.etcd, Etcd::Stacked);
    let ordered = workers_then_control_planes(removals);
    Some(proto::PlannedPhase {
        name: Phase::RemoveNodes.name().into(),
        steps: ordered
            .iter()
            .flat_map(|r| {
                steps(r, stacked)
                    .into_iter()
                    .map(|(step, detail)| proto::PlannedStep {
                        node: r.node.clone(),
                        step: step.into(),
                        state: "pending".into(),
                        detail: detail.into(),
                    })
            })
            .collect(),
    })
}

fn workers_then_control_planes(removals: &[Removal]) -> Vec<&Removal> {
    let mut v: Vec<&Removal> = removals
        .iter()
        .filter(|r| r.role != NodeRole::ControlPlane)
        .collect();
    v.extend(removals.iter().filter(|r| r.role == NodeRole::ControlPlane));
    v
}

/// The spec the removed nodes were part of: the held one, else the new one.
fn cluster_spec<'a>(ctx: &'a Ctx<'_>, held: Option<&'a ClusterSpec>) -> &'a ClusterSpec {
    held.unwrap_or(ctx.spec)
}

/// The removals' preconditions, read-only, added to the diff as refused
/// lines: no unfinished operation on the node, and etcd keeps quorum through
/// every control plane's removal.
pub(crate) async fn check(ctx: &Ctx<'_>, held: Option<&ClusterSpec>, diff: &mut Diff) {
    if diff.removals.is_empty() {
        return;
    }
    let removals = diff.removals.clone();
    for r in &removals {
        match crate::rollout::operation::unfinished_on(ctx.coord, &r.node) {
            Ok(None) => {}
            Ok(Some(why)) => diff.refuse_removal(
                &r.node,
                format!("Refused: {why}; then remove it from the cluster with this rollout"),
            ),
            Err(e) => diff.refuse_removal(
                &r.node,
                format!("Refused: kh could not read the operations it holds ({e})"),
            ),
        }
    }
    let spec = cluster_spec(ctx, held);
    let cps: Vec<String> = removals
        .iter()
        .filter(|r| r.role == NodeRole::ControlPlane)
        .map(|r| r.node.clone())
        .collect();
    if cps.is_empty() || etcd::is_external(spec) {
        return;
    }
    match etcd::membership(ctx.coord, spec, None).await {
        Err(e) => {
            let why = etcd::quorum_lost(&format!("remove control plane {}", cps[0]), &e);
            diff.refuse_removal(&cps[0], why);
        }
        Ok(view) => {
            if let Err((node, why)) = plan::removal_order(&view.members, &cps) {
                diff.refuse_removal(&node, why);
            }
        }
    }
}

/// The node as the cluster's spec lists it (the role the removal found,
/// when the spec only recorded it in the registry).
fn node_spec(spec: &ClusterSpec, r: &Removal) -> NodeSpec {
    spec.node(&r.node).cloned().unwrap_or(NodeSpec {
        name: r.node.clone(),
        role: r.role,
        address: std::net::IpAddr::from([0, 0, 0, 0]),
    })
}

/// Takes every removal out of the cluster, then records it: no role in the
/// registry, no rollout steps (a later rollout that lists it again joins it
/// as new).
pub(crate) async fn remove_nodes(
    ctx: &Ctx<'_>,
    held: Option<&ClusterSpec>,
    removals: &[Removal],
) -> Result<(), Failure> {
    let spec = cluster_spec(ctx, held);
    let workers: Vec<&Removal> = removals
        .iter()
        .filter(|r| r.role != NodeRole::ControlPlane)
        .collect();
    let mut order: Vec<&Removal> = workers;
    let cps: Vec<String> = removals
        .iter()
        .filter(|r| r.role == NodeRole::ControlPlane)
        .map(|r| r.node.clone())
        .collect();
    if !cps.is_empty() {
        // The order again, from the membership now (the joins of this
        // rollout are in it); each removal is checked under the lease too.
        let cps = match etcd::membership(ctx.coord, spec, None).await {
            Ok(view) if !etcd::is_external(spec) => plan::removal_order(&view.members, &cps)
                .map_err(|(node, why)| {
                    let mut f = Failure::at(&node, "preconditions", why, HINT);
                    f.class = "preflight";
                    f
                })?,
            _ => cps,
        };
        for name in cps {
            if let Some(r) = removals.iter().find(|r| r.node == name) {
                order.push(r);
            }
        }
    }
    for r in order {
        let node = node_spec(spec, r);
        if !r.reachable {
            ctx.rep
                .note(
                    Phase::RemoveNodes,
                    &r.node,
                    format!(
                        "its agent does not answer: the host is not drained or reset; run `kubeadm reset -f` on {} when it is back",
                        r.node
                    ),
                )
                .await;
        }
        take_out(
            ctx.coord,
            &node,
            &TakeOut {
                phase: Phase::RemoveNodes,
                spec,
                remaining: ctx.spec,
                holder: ctx.holder.clone(),
                drain: true,
                reachable: r.reachable,
                force: true,
                hint: HINT,
            },
            ctx.rep,
        )
        .await?;
        forget(ctx, &r.node).await?;
    }
    Ok(())
}

/// The node is out: its role is cleared and its rollout steps dropped.
async fn forget(ctx: &Ctx<'_>, name: &str) -> Result<(), Failure> {
    let node = NodeName::new(name).map_err(|e| Failure::spec(e.to_string()))?;
    ctx.coord.registry.set_role(&node, None)?;
    let mut st = ctx.rep.state.lock().await;
    let prefix = format!("{name}/");
    st.steps.retain(|k, _| !k.starts_with(&prefix));
    st.save(&ctx.coord.db, unix_ms(ctx.coord.clock.now()))?;
    Ok(())
}
