//! Phase 2: host preparation (swap, kernel modules, sysctl, containerd), in
//! parallel.

use kh::spec::NodeSpec;

use super::Ctx;
use super::Phase;
use crate::rollout::ops::Failure;

pub(crate) async fn prepare_node(ctx: &Ctx<'_>, n: &NodeSpec) -> Result<(), Failure> {
    for step in crate::prepare::steps_for(Some(n.role)) {
        let name = crate::prepare::step_name(&step);
        ctx.rep
            .tracked(Phase::Prepare, &n.name, name, async {
                let r = ctx.ops.step(&n.name, name, step.clone(), false).await?;
                Ok(((), r.message))
            })
            .await?;
    }
    Ok(())
}
