//! Phase 7: worker joins, in parallel up to `workerConcurrency`.

use kh::proto::{self, run_step_request::Step};
use kh::spec::NodeSpec;

use super::Ctx;
use super::Phase;
use crate::rollout::ops::Failure;

pub(crate) async fn join_worker(
    ctx: &Ctx<'_>,
    node: &NodeSpec,
    cps: &[&NodeSpec],
    kubelet_conf: bool,
) -> Result<(), Failure> {
    let name = &node.name;
    if kubelet_conf {
        // Joined; if by an attempt an earlier coordinator started and did not
        // see end, that attempt is recorded now.
        ctx.rep
            .settle(Phase::Workers, name, "join-worker", "joined as a worker")
            .await;
        return Ok(());
    }
    ctx.rep
        .tracked(Phase::Workers, name, "join-worker", async {
            let mut force_token = false;
            for attempt in 0..2 {
                let via = ctx.recently_healthy_cp(cps).await?;
                let m = ctx
                    .refresh_material(&via, false, force_token, false)
                    .await?;
                let config = ctx.join_config(node, &m, false);
                match ctx
                    .ops
                    .step(
                        name,
                        "kubeadm-join",
                        Step::KubeadmJoin(proto::KubeadmJoin {
                            config_yaml: config.expose().clone(),
                            control_plane: false,
                        }),
                        false,
                    )
                    .await
                {
                    Ok(r) => return Ok(((), r.message)),
                    Err(f) if attempt == 0 && f.kind() == proto::FailureKind::TokenRefused => {
                        force_token = true
                    }
                    Err(f) => return Err(f),
                }
            }
            Err(Failure::at(
                name,
                "join-worker",
                "the join failed twice",
                "",
            ))
        })
        .await
}
