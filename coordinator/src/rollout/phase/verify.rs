//! Phase 8: every node Ready, etcd membership matching the control planes,
//! every apiserver and the endpoint answering.

use std::time::{Duration, Instant};

use super::Phase;
use super::{Ctx, READY_TIMEOUT};
use crate::rollout::ops::{url, Failure};

pub(crate) async fn verify(ctx: &Ctx<'_>) -> Result<(), Failure> {
    let cps = ctx.cps();
    ctx.rep
        .tracked(Phase::Verify, "cluster", "verify", async {
            let via = ctx.healthy_cp(&cps).await?;
            // Every node Ready (the CNI may need a moment).
            let start = Instant::now();
            loop {
                let nodes = ctx.ops.kube_nodes(&via).await.map_err(|e| {
                    Failure::at(&via, "verify", format!("kubectl get nodes failed: {e}"), "")
                })?;
                let missing: Vec<String> = ctx
                    .spec
                    .nodes
                    .iter()
                    .filter(|n| n.role != kh::spec::NodeRole::LoadBalancer)
                    .filter(|n| !nodes.iter().any(|k| k.name == n.name && k.ready))
                    .map(|n| n.name.clone())
                    .collect();
                if missing.is_empty() {
                    break;
                }
                if start.elapsed() > READY_TIMEOUT {
                    return Err(Failure::at(
                        &via,
                        "verify",
                        format!("nodes not Ready: {}", missing.join(", ")),
                        "check the CNI (spec.cni.manifest) and the kubelet on those nodes",
                    ));
                }
                ctx.rep
                    .waiting(
                        Phase::Verify,
                        "",
                        format!("waiting for nodes to be Ready: {}", missing.join(", ")),
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            // etcd members exactly match the control planes.
            if !ctx.external_etcd {
                let endpoints = ctx.etcd_endpoints(&cps);
                let members = ctx
                    .ops
                    .etcd_members(&via, &endpoints, false)
                    .await
                    .map_err(|e| {
                        Failure::at(&via, "verify", format!("cannot list etcd members: {e}"), "")
                    })?;
                let mut problems = vec![];
                for cp in &cps {
                    let peer = url(cp.address, 2380);
                    match members.iter().find(|m| m.peer_urls.contains(&peer)) {
                        Some(m) if m.is_learner => {
                            problems.push(format!("{} is still a learner", cp.name))
                        }
                        Some(_) => {}
                        None => problems.push(format!("{} has no etcd member", cp.name)),
                    }
                }
                for m in &members {
                    if !cps
                        .iter()
                        .any(|cp| m.peer_urls.contains(&url(cp.address, 2380)))
                    {
                        problems.push(format!(
                            "etcd member {} ({}, {}) belongs to no control plane in the spec",
                            m.id_hex,
                            m.name,
                            m.peer_urls.join(",")
                        ));
                    }
                }
                if !problems.is_empty() {
                    return Err(Failure::at(
                        &via,
                        "verify",
                        format!(
                            "etcd membership does not match the control planes: {}",
                            problems.join("; ")
                        ),
                        "see `khctl etcd members`",
                    ));
                }
            }
            if ctx.external_etcd {
                let endpoints = ctx.etcd_endpoints(&cps);
                crate::rollout::external_etcd::check_health(&ctx.ops, &via, &endpoints).await?;
            }
            // What clients use: the endpoint, through the load balancer.
            ctx.ops
                .apiserver_ready(&via, &format!("https://{}", ctx.endpoint))
                .await
                .map_err(|e| {
                    Failure::at(
                        &via,
                        "verify",
                        format!(
                            "the control-plane endpoint {} does not answer: {e}",
                            ctx.endpoint
                        ),
                        "check the load balancer in front of the control planes",
                    )
                })?;
            for cp in &cps {
                ctx.ops
                    .apiserver_ready(&cp.name, &url(cp.address, 6443))
                    .await
                    .map_err(|e| {
                        Failure::at(
                            &cp.name,
                            "verify",
                            format!("apiserver not ready: {e}"),
                            "check kube-apiserver on the node",
                        )
                    })?;
            }
            let etcd = if ctx.external_etcd {
                "external etcd healthy".to_string()
            } else {
                format!("{} etcd members", cps.len())
            };
            Ok((
                (),
                format!(
                    "{} nodes Ready, {etcd}, {} apiservers ready, endpoint {} answers",
                    ctx.spec
                        .nodes
                        .iter()
                        .filter(|n| n.role != kh::spec::NodeRole::LoadBalancer)
                        .count(),
                    cps.len(),
                    ctx.endpoint
                ),
            ))
        })
        .await
}
