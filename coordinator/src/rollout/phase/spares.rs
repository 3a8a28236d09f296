//! The spec's spares (`spares: [cp-9]`): kept prepared as control planes by
//! the rollout's preflight and prepare phases, never joined, so that a
//! remediation (`crate::remediation`) or `khctl etcd replace --with` finds
//! them ready. A spare's address is the one its agent reports.

use kh::spec::{NodeRole, NodeSpec};

use super::Ctx;
use crate::rollout::ops::Failure;

/// The spares to preflight and prepare: every spare of the spec that
/// kubeadm has not touched. A spare kubeadm has joined is refused: it would
/// be a second member for the cluster the day it replaces a control plane.
pub(crate) async fn targets(ctx: &Ctx<'_>) -> Result<Vec<NodeSpec>, Failure> {
    let mut out = vec![];
    for (i, name) in ctx.spec.spares.iter().enumerate() {
        let rec = ctx.ops.record(name)?;
        let address = rec
            .endpoint
            .parse::<std::net::SocketAddr>()
            .map(|a| a.ip())
            .map_err(|_| {
                Failure::spec(format!(
                    "spec.spares[{i}]: the agent of {name} has not reported an address yet; start it, or remove {name} from spares"
                ))
            })?;
        let status = ctx.ops.node_status(name).await?;
        if status.kubelet_conf || status.etcd_manifest {
            return Err(Failure::spec(format!(
                "spec.spares[{i}]: kubeadm has already set {name} up (it has a kubelet.conf or an etcd manifest); a spare must be clean. Reset it with `khctl spares add {name}` after `kubeadm reset -f` there, or remove it from spares"
            )));
        }
        out.push(NodeSpec {
            name: name.clone(),
            role: NodeRole::ControlPlane,
            address,
        });
    }
    Ok(out)
}
