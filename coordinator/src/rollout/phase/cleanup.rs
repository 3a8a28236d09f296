//! Phase 9: the bootstrap token this rollout created is deleted.

use kh::proto::{self, run_step_request::Step};

use super::Ctx;
use super::Phase;
use crate::rollout::material;
use crate::rollout::ops::Failure;

pub(crate) async fn cleanup(ctx: &Ctx<'_>) -> Result<(), Failure> {
    let m = ctx.material.lock().await;
    if m.meta.token_expires_ms == 0 {
        return Ok(());
    }
    let cps = ctx.cps();
    let via = ctx.healthy_cp(&cps).await?;
    let id = m.meta.token_id.clone();
    drop(m);
    ctx.rep
        .tracked(Phase::Cleanup, &via, "delete-token", async {
            ctx.ops
                .step(
                    &via,
                    "token-delete",
                    Step::TokenDelete(proto::TokenDelete {
                        token_id: id.clone(),
                    }),
                    false,
                )
                .await?;
            let mut m = ctx.material.lock().await;
            material::token_deleted(&ctx.coord.db, &mut m)?;
            Ok(((), format!("deleted bootstrap token {id}")))
        })
        .await?;
    Ok(())
}
