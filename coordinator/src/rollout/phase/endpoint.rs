//! Phase 3: the control-plane endpoint answers TCP from the first control
//! plane before `kubeadm init` relies on it.

use kh::proto;

use super::Ctx;
use super::Phase;
use crate::rollout::ops::Failure;

pub(crate) async fn check_endpoint(ctx: &Ctx<'_>) -> Result<(), Failure> {
    use proto::tcp_probe_response::Result as R;
    let first = &ctx.first.name;
    ctx.rep
        .tracked(Phase::Endpoint, first, "endpoint-check", async {
            let r = ctx.ops.tcp_probe(first, &ctx.endpoint).await?;
            match R::try_from(r.result).unwrap_or(R::Unspecified) {
                R::Open => Ok(((), format!("{} accepts TCP", ctx.endpoint))),
                // As the kubeadm HA guide says: before the first apiserver is
                // up, "connection refused" is expected.
                R::Refused => Ok(((), format!("{} answers (connection refused is expected before the first apiserver starts)", ctx.endpoint))),
                R::TimedOut => Err(Failure::at(
                    first,
                    "endpoint-check",
                    format!("connecting to the control-plane endpoint {} from {first} timed out", ctx.endpoint),
                    "a timeout means the load balancer cannot reach the control plane or drops the traffic: check the load balancer and any firewall between them (a refused connection would have been fine)",
                )),
                R::Unresolvable => Err(Failure::at(first, "endpoint-check", format!("{} does not resolve on {first}: {}", ctx.endpoint, r.detail), "fix DNS for the endpoint name, or use an IP")),
                _ => Err(Failure::at(first, "endpoint-check", format!("cannot connect to {}: {}", ctx.endpoint, r.detail), "check the endpoint address and port")),
            }
        })
        .await
}
