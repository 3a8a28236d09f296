//! Phase 6: control-plane joins, one at a time under the control-plane
//! lease; each waits for its etcd member to be promoted and its apiserver to
//! be ready. `rollout::replace` joins its new control plane through here too.

use std::time::{Duration, Instant};

use kh::proto::{self, run_step_request::Step};
use kh::spec::{CertDistribution, NodeSpec};

use super::Phase;
use super::{Ctx, READY_TIMEOUT};
use crate::lease;
use crate::rollout::material;
use crate::rollout::ops::{url, Failure};

const PROMOTE_TIMEOUT: Duration = Duration::from_secs(300);
/// How often a join polls for its etcd member and apiserver. Every control
/// plane join waits on both, one join at a time, so the poll interval is
/// paid on the critical path: half of it per wait, on average.
const JOIN_POLL: Duration = Duration::from_millis(100);
/// How often the same waiting message is repeated to followers.
const WAITING_REPEAT: Duration = Duration::from_secs(5);

/// Holds the control-plane lease for the duration of `f`, renewing it. A
/// busy lease is waited for, up to ten minutes, telling followers who
/// holds it.
async fn with_lease<T>(
    ctx: &Ctx<'_>,
    node: &str,
    purpose: &str,
    f: impl std::future::Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    if ctx.lease_held {
        return f.await;
    }
    let wait = lease::Wait {
        patience: Duration::from_secs(600),
        every: Duration::from_secs(2),
        on_busy: |other: &lease::Lease| {
            let message = format!(
                "waiting for the control-plane lease: {}",
                lease::describe(other)
            );
            async move { ctx.rep.waiting(Phase::ControlPlanes, node, message).await }
        },
    };
    // Boxed, so the join is not carried by value through the helper.
    lease::hold_waiting(ctx.coord, &ctx.holder, purpose, wait, Box::pin(f)).await
}

pub(crate) async fn join_control_plane(
    ctx: &Ctx<'_>,
    node: &NodeSpec,
    already: &[&NodeSpec],
    kubelet_conf: bool,
) -> Result<(), Failure> {
    let name = &node.name;
    let peer = url(node.address, 2380);
    let endpoints = ctx.etcd_endpoints(already);
    let first = &ctx.first.name;
    // Joined means: kubelet.conf on the node AND (stacked etcd) a voting member.
    let settle = || {
        ctx.rep.settle(
            Phase::ControlPlanes,
            name,
            "join-control-plane",
            "joined as a control plane",
        )
    };
    if kubelet_conf {
        if ctx.external_etcd {
            settle().await;
            return Ok(());
        }
        let members = ctx
            .ops
            .etcd_members(first, &endpoints, false)
            .await
            .unwrap_or_default();
        if members
            .iter()
            .any(|m| (m.name == *name || m.peer_urls.contains(&peer)) && !m.is_learner)
        {
            settle().await;
            ctx.rep
                .note(Phase::ControlPlanes, name, "already joined; skipping")
                .await;
            return Ok(());
        }
    }
    with_lease(ctx, name, &format!("joining control plane {name}"), async {
        ctx.rep
            .tracked(Phase::ControlPlanes, name, "join-control-plane", async {
                let mut force_token = false;
                let mut force_key = false;
                for attempt in 0..2 {
                    // The cluster side and the node side, asked at once.
                    let (via, status) = futures::future::try_join(
                        async {
                            let via = ctx.healthy_cp(already).await?;
                            if !ctx.external_etcd {
                                remove_stale_member(ctx, node, &via, &endpoints).await?;
                            }
                            Ok::<_, Failure>(via)
                        },
                        ctx.ops.node_status(name),
                    )
                    .await?;
                    if status.kubelet_conf || status.etcd_manifest || status.apiserver_manifest {
                        // A join that died halfway left files; start clean.
                        ctx.rep.note(Phase::ControlPlanes, name, "a previous join attempt left kubeadm files here; running kubeadm reset -f first").await;
                        ctx.ops.step(name, "kubeadm-reset", Step::KubeadmReset(proto::KubeadmReset {}), false).await?;
                    }
                    let upload = ctx.spec.certificates == CertDistribution::UploadCerts;
                    let m = ctx.refresh_material(&via, upload, force_token, force_key).await?;
                    if !upload {
                        place_shared_ca(ctx, name).await?;
                    }
                    if ctx.external_etcd {
                        crate::rollout::external_etcd::place(&ctx.ops, &ctx.coord.db, name).await?;
                    }
                    let config = ctx.join_config(node, &m, true);
                    let result = ctx
                        .ops
                        .step(
                            name,
                            "kubeadm-join",
                            Step::KubeadmJoin(proto::KubeadmJoin {
                                config_yaml: config.expose().clone(),
                                control_plane: true,
                            }),
                            false,
                        )
                        .await;
                    match result {
                        Ok(_) => break,
                        Err(f) if attempt == 0 && upload && f.kind() == proto::FailureKind::CertificateKey => {
                            // The Secret expired by the cluster's clock even
                            // if not by ours: upload again and retry once.
                            ctx.rep.note(Phase::ControlPlanes, name, "kubeadm-certs was gone; uploading the certificates again and retrying").await;
                            force_key = true;
                        }
                        Err(f) if attempt == 0 && f.kind() == proto::FailureKind::TokenRefused => {
                            ctx.rep.note(Phase::ControlPlanes, name, "the bootstrap token was refused; creating a new one and retrying").await;
                            force_token = true;
                        }
                        Err(f) => return Err(f),
                    }
                }
                futures::future::try_join(
                    wait_member_promoted(ctx, node, &endpoints),
                    wait_apiserver(ctx, node),
                )
                .await?;
                Ok(((), format!("joined as a control plane; etcd member promoted; apiserver at {} ready", url(node.address, 6443))))
            })
            .await
    })
    .await
}

/// Removes an etcd member left by an earlier failed attempt (same name or
/// peer URL), but only while the cluster keeps quorum without it.
async fn remove_stale_member(
    ctx: &Ctx<'_>,
    node: &NodeSpec,
    via: &str,
    endpoints: &[String],
) -> Result<(), Failure> {
    let name = &node.name;
    let peer = url(node.address, 2380);
    let members = ctx
        .ops
        .etcd_members(via, endpoints, false)
        .await
        .map_err(|e| {
            Failure::at(
                name,
                "etcd-members",
                format!("cannot list etcd members through {via}: {e}"),
                "check etcd health with `khctl health`",
            )
        })?;
    let Some(stale) = members
        .iter()
        .find(|m| m.name == *name || m.peer_urls.contains(&peer))
    else {
        return Ok(());
    };
    let health = ctx
        .ops
        .etcd_health(via, endpoints, false)
        .await
        .unwrap_or_default();
    let healthy: std::collections::HashSet<&str> = health
        .health
        .iter()
        .filter(|h| h.healthy)
        .map(|h| h.endpoint.as_str())
        .collect();
    let voters: Vec<&proto::EtcdMember> = members
        .iter()
        .filter(|m| !m.is_learner && m.id != stale.id)
        .collect();
    let healthy_voters = voters
        .iter()
        .filter(|m| m.client_urls.iter().any(|u| healthy.contains(u.as_str())))
        .count();
    let needed = voters.len() / 2 + 1;
    if healthy_voters < needed {
        return Err(Failure::at(
            name,
            "remove-stale-member",
            format!(
                "a stale etcd member {} ({}) from an earlier attempt must go, but only {healthy_voters} of {} other voting members are healthy (quorum needs {needed})",
                stale.id_hex,
                stale.peer_urls.join(","),
                voters.len()
            ),
            "restore quorum first (bring the other control planes back); removing a member now could lose the cluster",
        ));
    }
    ctx.rep
        .note(
            Phase::ControlPlanes,
            name,
            format!(
                "removing stale etcd member {} ({}) left by an earlier attempt",
                stale.id_hex,
                stale.peer_urls.join(",")
            ),
        )
        .await;
    ctx.ops
        .step(
            via,
            "remove-stale-member",
            Step::EtcdMemberRemove(proto::EtcdMemberRemove {
                endpoints: endpoints.to_vec(),
                member_id: stale.id,
            }),
            false,
        )
        .await?;
    // etcd derives a member's ID from its peer URLs and the current second:
    // re-adding the same URL within the second of its removal fails.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    Ok(())
}

async fn place_shared_ca(ctx: &Ctx<'_>, node: &str) -> Result<(), Failure> {
    let set = material::load_shared_ca(&ctx.coord.db)?.ok_or_else(|| {
        Failure::at(
            node,
            "place-shared-ca",
            "the coordinator holds no shared CA set",
            "run the rollout again: it collects the set from the first control plane after init",
        )
    })?;
    let files = set
        .into_iter()
        .map(|(path, contents)| proto::PlacedFile {
            mode: if path.ends_with(".crt") || path.ends_with(".pub") {
                0o644
            } else {
                0o600
            },
            path,
            contents: contents.expose().as_bytes().to_vec(),
        })
        .collect();
    ctx.ops
        .step(
            node,
            "place-shared-ca",
            Step::PlaceFiles(proto::PlaceFiles { files }),
            false,
        )
        .await?;
    Ok(())
}

async fn wait_member_promoted(
    ctx: &Ctx<'_>,
    node: &NodeSpec,
    already_endpoints: &[String],
) -> Result<(), Failure> {
    if ctx.external_etcd {
        return Ok(());
    }
    let mut endpoints = already_endpoints.to_vec();
    endpoints.push(url(node.address, 2379));
    let peer = url(node.address, 2380);
    let start = Instant::now();
    let mut last = String::new();
    let mut told: Option<(String, Instant)> = None;
    while start.elapsed() < PROMOTE_TIMEOUT {
        // Membership and the member's health, asked at once: after a join
        // both are usually fine already, and this is on the critical path.
        let own = [url(node.address, 2379)];
        let (members, health) = futures::future::join(
            ctx.ops.etcd_members(&node.name, &endpoints, false),
            ctx.ops.etcd_health(&node.name, &own, false),
        )
        .await;
        match members {
            Ok(members) => match members.iter().find(|m| m.peer_urls.contains(&peer)) {
                Some(m) if !m.is_learner => match health {
                    Ok(h) if h.health.iter().all(|e| e.healthy) && !h.health.is_empty() => {
                        return Ok(())
                    }
                    Ok(h) => {
                        last = format!(
                            "member promoted but not healthy yet: {:?}",
                            h.health.iter().map(|e| &e.error).collect::<Vec<_>>()
                        )
                    }
                    Err(e) => last = e,
                },
                Some(_) => last = "still a learner".into(),
                None => last = "not a member yet".into(),
            },
            Err(e) => last = e,
        }
        // Followers hear of a new reason at once, of the same one every few
        // seconds: the poll is fast, the journal stays readable.
        if told
            .as_ref()
            .is_none_or(|(said, at)| *said != last || at.elapsed() >= WAITING_REPEAT)
        {
            ctx.rep
                .waiting(
                    Phase::ControlPlanes,
                    &node.name,
                    format!("waiting for the etcd member to be promoted and healthy ({last})"),
                )
                .await;
            told = Some((last.clone(), Instant::now()));
        }
        tokio::time::sleep(JOIN_POLL).await;
    }
    Err(Failure::at(
        &node.name,
        "wait-etcd-member",
        format!(
            "the etcd member of {} was not promoted and healthy within {}s: {last}",
            node.name,
            PROMOTE_TIMEOUT.as_secs()
        ),
        "check the etcd logs on the node; `khctl etcd members` shows the member list",
    ))
}

async fn wait_apiserver(ctx: &Ctx<'_>, node: &NodeSpec) -> Result<(), Failure> {
    let u = url(node.address, 6443);
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < READY_TIMEOUT {
        match ctx.ops.apiserver_ready(&node.name, &u).await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        tokio::time::sleep(JOIN_POLL).await;
    }
    Err(Failure::at(
        &node.name,
        "wait-apiserver",
        format!(
            "{u}/readyz did not answer ok within {}s: {last}",
            READY_TIMEOUT.as_secs()
        ),
        "check the kube-apiserver logs on the node",
    ))
}
