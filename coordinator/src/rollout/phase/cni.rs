//! Phase 5: the CNI manifest, applied through the first control plane.

use kh::proto::{self, run_step_request::Step};

use super::Ctx;
use super::Phase;
use crate::rollout::engine::Input;
use crate::rollout::ops::Failure;

/// Applies the CNI manifest once, and again when the plan found it changed.
pub(crate) async fn cni(ctx: &Ctx<'_>, input: &Input, changed: bool) -> Result<(), Failure> {
    let Some(cni) = &ctx.spec.cni else {
        ctx.rep
            .note(
                Phase::Cni,
                "",
                "no cni.manifest in the spec: nodes stay NotReady until you apply a CNI",
            )
            .await;
        return Ok(());
    };
    let first = &ctx.first.name;
    if !changed && ctx.rep.is_done(&format!("{first}/cni")).await {
        return Ok(());
    }
    let manifest = input.files.get("cni.manifest").ok_or_else(|| {
        Failure::spec(format!(
            "spec.cni.manifest: {} was not sent; khctl reads it relative to the spec file",
            cni.manifest.display()
        ))
    })?;
    ctx.rep
        .tracked(Phase::Cni, first, "cni", async {
            let r = ctx
                .ops
                .step(
                    first,
                    "cni",
                    Step::KubectlApply(proto::KubectlApply {
                        name: "cni".into(),
                        manifest: String::from_utf8_lossy(manifest).into_owned(),
                    }),
                    false,
                )
                .await?;
            // The hash lets a later rollout see that the manifest changed.
            let record =
                crate::rollout::plan::cni_record(&crate::rollout::plan::manifest_sha256(manifest));
            Ok(((), format!("{} ({record})", r.message)))
        })
        .await
}
