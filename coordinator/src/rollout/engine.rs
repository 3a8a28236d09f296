//! The rollout: a cluster spec becomes phases, run in order.
//!
//! preflight (parallel) → prepare (parallel) → endpoint check → kubeadm init
//! on the first control plane → CNI → control-plane joins one at a time under
//! the lease → workers in parallel (bounded) → remove the joined nodes the
//! spec no longer lists (confirmed by the operator) → verify → delete the
//! token.
//!
//! Every node-step transition is persisted before and after it runs. Every
//! step is also idempotent on the agent (init and join are Unchanged where
//! kubeadm already ran), and each join first checks what is really there, so
//! a rollout resumed after any crash finishes without repeating work and
//! without a second etcd member for any node.
//!
//! Each phase lives in its own file under `rollout::phase`; this module only
//! decides their order and what each is given.

use std::collections::HashMap;
use std::sync::Arc;

use kh::proto::{rollout_event::Kind, RolloutEvent};
use kh::spec::{CertDistribution, ClusterSpec, Etcd, LoadBalancerType, NodeSpec};
use kh::time::unix_ms;
use tokio::sync::Mutex;

use super::material;
use super::ops::{Failure, Ops};
use super::phase::{
    cleanup::cleanup, cni::cni, control_plane::join_control_plane, endpoint::check_endpoint,
    init::init, preflight::preflight, prepare::prepare_node, remove, survey::observe, survey::plan,
    verify::verify, workers::join_worker, Ctx, NodeView, Phase, STATUS_PARALLEL,
};
use super::reporter::Reporter;
use crate::Coordinator;

/// What the caller sends: a validated spec and the files it names.
pub struct Input {
    pub spec: ClusterSpec,
    pub spec_yaml: String,
    pub files: HashMap<String, Vec<u8>>,
    pub dry_run: bool,
    /// What the coordinator holds about the cluster, for the diff.
    pub held: super::plan::Held,
    /// Join control planes into a running cluster without an etcd snapshot.
    pub no_snapshot: bool,
    /// The operator confirmed the removals the plan lists.
    pub confirm_removals: bool,
    /// Notes for the plan from before the engine (a remediation carried
    /// over into the operator's spec).
    pub notes: Vec<String>,
}

/// Runs the rollout. Errors carry the node, step and what to do next.
pub async fn run(coord: Arc<Coordinator>, input: Input, rep: Reporter) -> Result<(), Failure> {
    let spec = &input.spec;
    let version = spec.kubernetes_version.clone().ok_or_else(|| {
        Failure::spec("spec.kubernetesVersion: required for a rollout, e.g. v1.32.0")
    })?;
    let endpoint = spec
        .control_plane_endpoint
        .as_ref()
        .map(|e| e.to_string())
        .ok_or_else(|| {
            Failure::spec(
                "spec.controlPlaneEndpoint: required for a rollout, e.g. lb.example.internal:6443",
            )
        })?;
    let first = spec
        .control_planes()
        .next()
        .ok_or_else(|| Failure::spec("spec.nodes: no control-plane node"))?;
    let holder = format!("rollout {}", spec.name);
    let ctx = Ctx {
        coord: &coord,
        ops: Ops { coord: &coord },
        spec,
        rep: &rep,
        version: version.clone(),
        endpoint,
        first,
        holder,
        material: Mutex::new(material::load_or_generate(&coord.db)?),
        external_etcd: matches!(spec.etcd, Etcd::External { .. }),
        lease_held: false,
        ready_answer: Mutex::new(None),
    };

    // Where every node stands: the basis for skipping finished work.
    let mut views: HashMap<String, NodeView> = HashMap::new();
    let asking = tokio::sync::Semaphore::new(STATUS_PARALLEL);
    let statuses = futures::future::join_all(
        spec.nodes
            .iter()
            .filter(|n| n.role != kh::spec::NodeRole::LoadBalancer)
            .map(|n| {
                let (asking, ops) = (&asking, &ctx.ops);
                async move {
                    let _permit = asking.acquire().await;
                    (n, ops.node_status(&n.name).await)
                }
            }),
    )
    .await;
    for (n, status) in statuses {
        let status = status.map_err(|mut f| {
            f.class = "preflight";
            f
        })?;
        views.insert(n.name.clone(), NodeView { status });
    }
    let joined = |name: &str, views: &HashMap<String, NodeView>| {
        views.get(name).is_some_and(|v| v.status.kubelet_conf)
    };
    let todo: Vec<&NodeSpec> = spec
        .nodes
        .iter()
        .filter(|n| n.role != kh::spec::NodeRole::LoadBalancer && !joined(&n.name, &views))
        .collect();

    // What would change: one diff, printed by a dry run and carried out
    // by the run. A refusal stops here, before anything has changed.
    let cni_sha256 = spec
        .cni
        .as_ref()
        .and_then(|_| input.files.get("cni.manifest"))
        .map(|m| super::plan::manifest_sha256(m));
    let mut diff = super::plan::diff(
        spec,
        &input.held,
        &observe(&ctx, &input.held, &views).await,
        cni_sha256.as_deref(),
    );
    let held_spec = input.held.spec.as_ref();
    if diff.refusal().is_none() {
        remove::check(&ctx, held_spec, &mut diff).await;
    }
    let mut planned = plan(&ctx, &views, &todo, &input);
    if let Some(p) = remove::planned(held_spec.unwrap_or(spec), &diff.removals) {
        // After the joins, before verify.
        let at = planned
            .phases
            .iter()
            .position(|p| p.name == Phase::Verify.name())
            .unwrap_or(planned.phases.len());
        planned.phases.insert(at, p);
    }
    if diff.refusal().is_some() || diff.precondition_refusal().is_some() {
        // Nothing after a refusal runs, so nothing else is planned.
        planned.phases.clear();
        planned.rendered.clear();
        planned.notes =
            vec!["nothing runs until cluster.yaml is changed as each refused line says".into()];
    }
    planned.phases.insert(0, diff.phase());
    planned.notes.extend(input.notes.iter().cloned());
    if !spec.spares.is_empty() && diff.refusal().is_none() {
        planned.notes.push(format!(
            "spares {}: preflight and host preparation as control planes, never joined (kept for remediation and `khctl etcd replace --with`)",
            spec.spares.join(", ")
        ));
    }
    rep.emit(RolloutEvent {
        kind: Kind::Plan as i32,
        plan: Some(planned),
        ..Default::default()
    })
    .await;
    if let Some(refused) = diff.refusal() {
        return Err(refused);
    }
    if let Some(refused) = diff.precondition_refusal() {
        return Err(refused);
    }
    // Spares are kept prepared beside the nodes: preflight and prepare,
    // never a join. A spare kubeadm has touched is refused here, before
    // anything changes.
    let spares = super::phase::spares::targets(&ctx).await?;
    let mut todo_hosts = todo.clone();
    todo_hosts.extend(spares.iter());

    if input.dry_run {
        return Ok(());
    }
    if !input.confirm_removals {
        if let Some(refused) = diff.unconfirmed() {
            return Err(refused);
        }
    }
    if ctx.external_etcd {
        if spec.certificates == CertDistribution::Coordinator {
            return Err(Failure::spec("spec.certificates.distribution: coordinator is not supported with etcd.topology: external yet (the shared CA set includes the stacked etcd CA); use upload-certs, the default"));
        }
        super::external_etcd::store_from_request(&coord.db, &input.files)?;
    }
    // The plan is accepted: this spec is now the one the coordinator holds,
    // unless it removes nodes: then only once they are out, so a removal
    // that stops keeps the nodes in the held spec and is finished by the
    // next rollout.
    if diff.removals.is_empty() {
        let mut st = rep.state.lock().await;
        st.spec_yaml.clone_from(&input.spec_yaml);
        st.save(&coord.db, unix_ms(coord.clock.now()))?;
    }

    // 1. Preflight, in parallel, on nodes kubeadm has not touched yet.
    rep.phase(Phase::Preflight).await;
    preflight(&ctx, &todo_hosts).await?;
    // Roles reach the registry only once preflight has passed.
    for (node, role) in &diff.record_roles {
        let name = kh::names::NodeName::new(node).map_err(|e| Failure::spec(e.to_string()))?;
        coord
            .registry
            .set_role(&name, role.map(|r| r.as_str().to_string()))?;
    }

    // 2. Prepare hosts, in parallel.
    rep.phase(Phase::Prepare).await;
    let prepared =
        futures::future::join_all(todo_hosts.iter().map(|n| prepare_node(&ctx, n))).await;
    if let Some(Err(f)) = prepared.into_iter().find(|r| r.is_err()) {
        return Err(f);
    }

    // 3-4. The load balancers and the endpoint, then kubeadm init on the
    // first control plane.
    let initialized = views.get(&first.name).is_some_and(|v| v.status.admin_conf);
    if spec.load_balancer == LoadBalancerType::Haproxy {
        rep.phase(Phase::LoadBalancer).await;
        // The first control plane is a backend before init, which reaches
        // its apiserver through the endpoint (the health check keeps it out
        // of rotation until it answers); joined ones stay.
        let serving: Vec<&NodeSpec> = ctx
            .cps()
            .into_iter()
            .filter(|cp| cp.name == first.name || joined(&cp.name, &views))
            .collect();
        super::lb::configure(&coord, spec, &rep, Phase::LoadBalancer, &serving).await?;
    }
    if !initialized {
        rep.phase(Phase::Endpoint).await;
        check_endpoint(&ctx).await?;
    }
    rep.phase(Phase::Init).await;
    init(&ctx, initialized).await?;

    // 5. CNI, once.
    rep.phase(Phase::Cni).await;
    cni(&ctx, &input, diff.reapply_cni).await?;

    // 6. Control planes, one at a time, under the lease.
    rep.phase(Phase::ControlPlanes).await;
    let cps = ctx.cps();
    // Joining a control plane into a cluster that ran before this rollout
    // changes a live etcd membership: a snapshot first (a first build has
    // nothing to lose yet).
    let joins = cps.iter().skip(1).any(|cp| !joined(&cp.name, &views));
    if initialized
        && joins
        && !ctx.external_etcd
        && !input.no_snapshot
        && !rep.is_done(&format!("{}/snapshot", first.name)).await
    {
        rep.tracked(Phase::ControlPlanes, &first.name, "snapshot", async {
            let m = crate::snapshots::take_before(&coord, "rollout", "joining control planes")
                .await
                .map_err(|message| {
                    Failure::at(
                        &first.name,
                        "snapshot",
                        message,
                        "no control plane was joined; run the rollout again once a snapshot can be taken, or add --no-snapshot",
                    )
                })?;
            Ok((
                (),
                format!(
                    "etcd snapshot {} stored ({} bytes, revision {})",
                    m.id, m.size, m.revision
                ),
            ))
        })
        .await?;
    }
    for (i, cp) in cps.iter().enumerate().skip(1) {
        let already: Vec<&NodeSpec> = cps[..i].to_vec();
        join_control_plane(&ctx, cp, &already, joined(&cp.name, &views)).await?;
        // Its apiserver is ready (the join waited for it): into the backends.
        // Control planes joined before this rollout stay, so a re-run never
        // takes a live control plane out of the backends.
        let backends: Vec<&NodeSpec> = cps
            .iter()
            .enumerate()
            .filter(|(j, n)| *j <= i || joined(&n.name, &views))
            .map(|(_, n)| *n)
            .collect();
        super::lb::configure(&coord, spec, &rep, Phase::ControlPlanes, &backends).await?;
    }

    // 7. Workers, in parallel up to workerConcurrency.
    rep.phase(Phase::Workers).await;
    let sem = Arc::new(tokio::sync::Semaphore::new(
        spec.worker_concurrency.max(1) as usize
    ));
    let workers: Vec<&NodeSpec> = spec.workers().collect();
    let cps = &cps;
    let results = futures::future::join_all(workers.iter().map(|w| {
        let sem = sem.clone();
        let ctx = &ctx;
        let done = joined(&w.name, &views);
        async move {
            let _permit = sem.acquire().await;
            join_worker(ctx, w, cps, done).await
        }
    }))
    .await;
    if let Some(Err(f)) = results.into_iter().find(|r| r.is_err()) {
        return Err(f);
    }

    // 8. Joined nodes the spec no longer lists leave the cluster; then the
    // spec is the held one.
    if !diff.removals.is_empty() {
        rep.phase(Phase::RemoveNodes).await;
        remove::remove_nodes(&ctx, held_spec, &diff.removals).await?;
        let mut st = rep.state.lock().await;
        st.spec_yaml.clone_from(&input.spec_yaml);
        st.save(&coord.db, unix_ms(coord.clock.now()))?;
    }

    // 9. Verify, then 10. remove the token this rollout created.
    rep.phase(Phase::Verify).await;
    verify(&ctx).await?;
    rep.phase(Phase::Cleanup).await;
    cleanup(&ctx).await?;
    Ok(())
}
