//! What a rollout finds before it acts: what the agents say about the nodes
//! the diff needs (`observe`), and the phases and steps it will run (`plan`,
//! which is also what a dry run prints).

use std::collections::HashMap;

use kh::kubeadm;
use kh::proto;
use kh::secret::Secret;
use kh::spec::{CertDistribution, NodeSpec};

use super::{init_params, join_params, Ctx, NodeView, Phase, STATUS_PARALLEL};
use crate::rollout::engine::Input;
use crate::rollout::material;

/// What the agents say about the nodes the diff needs beyond `views`: the
/// spec's load balancers and the nodes the held state knows that the spec no
/// longer lists. An agent that cannot be asked is recorded as such, not as a
/// failure: the diff decides what that means.
pub(crate) async fn observe(
    ctx: &Ctx<'_>,
    held: &crate::rollout::plan::Held,
    views: &HashMap<String, NodeView>,
) -> std::collections::BTreeMap<String, crate::rollout::plan::Observed> {
    use crate::rollout::plan::Observed;
    let mut out: std::collections::BTreeMap<String, Observed> = views
        .iter()
        .map(|(n, v)| (n.clone(), Observed::from_status(&v.status)))
        .collect();
    let mut extra: Vec<String> = ctx.spec.load_balancers().map(|n| n.name.clone()).collect();
    let lb = |n: &str| {
        held.spec
            .as_ref()
            .and_then(|h| h.node(n))
            .map(|h| h.role)
            .or_else(|| held.roles.get(n).copied())
            == Some(kh::spec::NodeRole::LoadBalancer)
    };
    for n in held
        .spec
        .iter()
        .flat_map(|h| h.nodes.iter().map(|n| n.name.clone()))
        .chain(held.roles.keys().cloned())
    {
        if ctx.spec.node(&n).is_none() && !lb(&n) && !extra.contains(&n) {
            extra.push(n);
        }
    }
    let asking = tokio::sync::Semaphore::new(STATUS_PARALLEL);
    let answers = futures::future::join_all(extra.into_iter().map(|n| {
        let (asking, ops) = (&asking, &ctx.ops);
        async move {
            let _permit = asking.acquire().await;
            let seen = match ops.node_status(&n).await {
                Ok(s) => Observed::from_status(&s),
                Err(f) => Observed::Unknown(f.message),
            };
            (n, seen)
        }
    }))
    .await;
    out.extend(answers);
    out
}

pub(crate) fn plan(
    ctx: &Ctx<'_>,
    views: &HashMap<String, NodeView>,
    todo: &[&NodeSpec],
    input: &Input,
) -> proto::RolloutPlan {
    let pending = |n: &str| todo.iter().any(|t| t.name == n);
    let st = |n: &str| if pending(n) { "pending" } else { "done" }.to_string();
    let mut phases = vec![];
    let step = |node: &str, step: &str, state: String, detail: String| proto::PlannedStep {
        node: node.into(),
        step: step.into(),
        state,
        detail,
    };
    phases.push(proto::PlannedPhase {
        name: Phase::Preflight.name().into(),
        steps: todo
            .iter()
            .map(|n| {
                step(
                    &n.name,
                    "preflight",
                    "pending".into(),
                    format!("read-only checks as a {}", n.role),
                )
            })
            .collect(),
    });
    phases.push(proto::PlannedPhase {
        name: Phase::Prepare.name().into(),
        steps: todo
            .iter()
            .map(|n| {
                step(
                    &n.name,
                    "prepare",
                    "pending".into(),
                    "disable-swap, kernel-modules, sysctl, containerd-cgroup".into(),
                )
            })
            .collect(),
    });
    let initialized = views
        .get(&ctx.first.name)
        .is_some_and(|v| v.status.admin_conf);
    let init_state = || if initialized { "done" } else { "pending" }.to_string();
    if ctx.spec.load_balancer == kh::spec::LoadBalancerType::Haproxy {
        phases.push(proto::PlannedPhase {
            name: Phase::LoadBalancer.name().into(),
            steps: ctx
                .spec
                .load_balancers()
                .map(|n| {
                    step(
                        &n.name,
                        crate::rollout::lb::STEP,
                        "pending".into(),
                        "HAProxy: frontend on the endpoint's port, control planes on 6443 as they become ready; checked with `haproxy -c`, reloaded on change".into(),
                    )
                })
                .collect(),
        });
    }
    phases.push(proto::PlannedPhase {
        name: Phase::Endpoint.name().into(),
        steps: vec![step(
            &ctx.first.name,
            "endpoint-check",
            init_state(),
            format!("TCP connect to {} from {}", ctx.endpoint, ctx.first.name),
        )],
    });
    phases.push(proto::PlannedPhase {
        name: Phase::Init.name().into(),
        steps: vec![step(
            &ctx.first.name,
            "kubeadm-init",
            init_state(),
            format!(
                "kubeadm init --config /var/lib/kh-agent/kubeadm-init.yaml{}",
                if ctx.spec.certificates == CertDistribution::UploadCerts {
                    " --upload-certs"
                } else {
                    ""
                }
            ),
        )],
    });
    if let Some(cni) = &ctx.spec.cni {
        phases.push(proto::PlannedPhase {
            name: Phase::Cni.name().into(),
            steps: vec![step(
                &ctx.first.name,
                "cni",
                "pending".into(),
                format!("kubectl apply -f {}", cni.manifest.display()),
            )],
        });
    }
    // As the engine decides it: joins into a cluster that already runs
    // take an etcd snapshot first.
    let mut cp_steps = vec![];
    let joins = ctx.cps().iter().skip(1).any(|n| pending(&n.name));
    if initialized && joins && !ctx.external_etcd && !input.no_snapshot {
        cp_steps.push(step(
            &ctx.first.name,
            "snapshot",
            "pending".into(),
            "etcd snapshot through a healthy member, stored sealed on the coordinator (reason: before rollout); --no-snapshot skips it".into(),
        ));
    }
    cp_steps.extend(ctx.cps().iter().skip(1).map(|n| step(&n.name, "join-control-plane", st(&n.name), "kubeadm join --config /var/lib/kh-agent/kubeadm-join.yaml (control plane, under the lease)".into())));
    phases.push(proto::PlannedPhase {
        name: Phase::ControlPlanes.name().into(),
        steps: cp_steps,
    });
    phases.push(proto::PlannedPhase {
        name: Phase::Workers.name().into(),
        steps: ctx
            .spec
            .workers()
            .map(|n| step(&n.name, "join-worker", st(&n.name), format!("kubeadm join --config /var/lib/kh-agent/kubeadm-join.yaml (at most {} at once)", ctx.spec.worker_concurrency)))
            .collect(),
    });
    phases.push(proto::PlannedPhase {
        name: Phase::Verify.name().into(),
        steps: vec![step(
            "",
            "verify",
            "pending".into(),
            "every node Ready; etcd members match the control planes; every apiserver ready".into(),
        )],
    });
    phases.push(proto::PlannedPhase {
        name: Phase::Cleanup.name().into(),
        steps: vec![step(
            "",
            "delete-token",
            "pending".into(),
            "kubeadm token delete (the token this rollout created)".into(),
        )],
    });
    let mut rendered = vec![];
    if input.dry_run {
        let m = material::Material {
            meta: Default::default(),
            token: Secret::new("<redacted>".into()),
            certificate_key: Secret::new("<redacted>".into()),
        };
        rendered.push(proto::RenderedFile {
            node: ctx.first.name.clone(),
            path: "/var/lib/kh-agent/kubeadm-init.yaml".into(),
            contents: kubeadm::render_init(&init_params(ctx, &m), true)
                .expose()
                .clone(),
        });
        for n in ctx
            .spec
            .nodes
            .iter()
            .filter(|n| n.name != ctx.first.name && n.role != kh::spec::NodeRole::LoadBalancer)
        {
            let cp = n.role == kh::spec::NodeRole::ControlPlane;
            let mut p = join_params(ctx, n, &m, cp);
            p.ca_cert_hash = "<computed from the cluster CA after init>".into();
            rendered.push(proto::RenderedFile {
                node: n.name.clone(),
                path: "/var/lib/kh-agent/kubeadm-join.yaml".into(),
                contents: kubeadm::render_join(&p, true).expose().clone(),
            });
        }
    }
    let mut notes = vec![];
    if let Ok(Some(w)) = ctx.spec.control_plane_count_check(true) {
        notes.push(w);
    }
    proto::RolloutPlan {
        cluster: ctx.spec.name.clone(),
        phases,
        rendered,
        notes,
    }
}
