//! The rollout: a cluster spec becomes phases, run in order.
//!
//! preflight (parallel) → prepare (parallel) → endpoint check → kubeadm init
//! on the first control plane → CNI → control-plane joins one at a time under
//! the lease → workers in parallel (bounded) → verify → delete the token.
//!
//! Every node-step transition is persisted before and after it runs. Every
//! step is also idempotent on the agent (init and join are Unchanged where
//! kubeadm already ran), and each join first checks what is really there, so
//! a rollout resumed after any crash finishes without repeating work and
//! without a second etcd member for any node.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kh::kubeadm::{self, ControlPlaneJoin, EtcdConfig, InitParams, JoinParams};
use kh::proto::{
    self, read_cluster_files_request::Set, rollout_event::Kind, run_step_request::Step,
    RolloutEvent,
};
use kh::secret::Secret;
use kh::spec::{CertDistribution, ClusterSpec, Etcd, KubeVersion, LoadBalancerType, NodeSpec};
use kh::time::unix_ms;
use tokio::sync::Mutex;

use super::material::{self, Material};
use super::ops::{url, Failure, Ops};
use super::reporter::Reporter;
use crate::lease;
use crate::Coordinator;

pub const PHASES: &[&str] = &[
    "preflight",
    "prepare",
    "endpoint",
    "init",
    "cni",
    "control-planes",
    "workers",
    "verify",
    "cleanup",
];

const PROMOTE_TIMEOUT: Duration = Duration::from_secs(300);
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// How often a join polls for its etcd member and apiserver. Every control
/// plane join waits on both, one join at a time, so the poll interval is
/// paid on the critical path: half of it per wait, on average.
const JOIN_POLL: Duration = Duration::from_millis(100);
/// How often the same waiting message is repeated to followers.
const WAITING_REPEAT: Duration = Duration::from_secs(5);
/// How long a control plane's ready answer is trusted by worker joins, so a
/// wave of workers probes once, not once per worker.
const READY_ANSWER_AGE: Duration = Duration::from_secs(2);
/// Nodes asked for their status at once when a rollout starts.
const STATUS_PARALLEL: usize = 64;

/// What the caller sends: a validated spec and the files it names.
pub struct Input {
    pub spec: ClusterSpec,
    pub spec_yaml: String,
    pub files: HashMap<String, Vec<u8>>,
    pub dry_run: bool,
    /// What the coordinator holds about the cluster, for the diff.
    pub held: super::plan::Held,
}

/// Where a node stands, as its agent reports it.
#[derive(Debug, Clone, Default)]
struct NodeView {
    status: proto::NodeStatusResponse,
}

fn node_version(coord: &Coordinator, node: &str, fallback: &KubeVersion) -> KubeVersion {
    kh::names::NodeName::new(node)
        .ok()
        .and_then(|n| coord.registry.get(&n).ok().flatten())
        .and_then(|r| r.facts)
        .and_then(|f| f.kubeadm_version.parse::<KubeVersion>().ok())
        .unwrap_or_else(|| fallback.clone())
}

pub(crate) struct Ctx<'a> {
    coord: &'a Arc<Coordinator>,
    ops: Ops<'a>,
    spec: &'a ClusterSpec,
    rep: &'a Reporter,
    version: KubeVersion,
    endpoint: String,
    first: &'a NodeSpec,
    holder: String,
    /// Serializes material refreshes between parallel worker joins.
    material: Mutex<Material>,
    external_etcd: bool,
    /// The caller holds the control-plane lease for the whole operation (an
    /// etcd replacement), so joins must neither take nor release it.
    lease_held: bool,
    /// The last control plane that answered /readyz for a worker join, and
    /// when. Held while probing, so parallel workers wait for one probe.
    ready_answer: Mutex<Option<(String, Instant)>>,
}

impl<'a> Ctx<'a> {
    /// A context for operations other than a rollout (etcd replacement).
    pub(crate) fn for_operation(
        coord: &'a Arc<Coordinator>,
        spec: &'a ClusterSpec,
        rep: &'a Reporter,
        holder: String,
    ) -> Result<Self, Failure> {
        let version = spec
            .kubernetes_version
            .clone()
            .ok_or_else(|| Failure::spec("spec.kubernetesVersion: required, e.g. v1.32.0"))?;
        let endpoint = spec
            .control_plane_endpoint
            .as_ref()
            .map(|e| e.to_string())
            .ok_or_else(|| Failure::spec("spec.controlPlaneEndpoint: required"))?;
        let first = spec
            .control_planes()
            .next()
            .ok_or_else(|| Failure::spec("spec.nodes: no control-plane node"))?;
        Ok(Ctx {
            coord,
            ops: Ops { coord },
            spec,
            rep,
            version,
            endpoint,
            first,
            holder,
            material: Mutex::new(material::load_or_generate(&coord.db)?),
            external_etcd: matches!(spec.etcd, Etcd::External { .. }),
            lease_held: true,
            ready_answer: Mutex::new(None),
        })
    }
}

impl Ctx<'_> {
    fn cps(&self) -> Vec<&NodeSpec> {
        self.spec.control_planes().collect()
    }

    fn etcd_endpoints(&self, joined: &[&NodeSpec]) -> Vec<String> {
        match &self.spec.etcd {
            Etcd::External { endpoints, .. } => endpoints.clone(),
            Etcd::Stacked => joined.iter().map(|n| url(n.address, 2379)).collect(),
        }
    }

    /// A control plane that answers, preferring the first.
    async fn healthy_cp(&self, joined: &[&NodeSpec]) -> Result<String, Failure> {
        let mut last = String::new();
        for n in joined {
            match self
                .ops
                .apiserver_ready(&n.name, &url(n.address, 6443))
                .await
            {
                Ok(()) => return Ok(n.name.clone()),
                Err(e) => last = format!("{}: {e}", n.name),
            }
        }
        Err(Failure::at(
            "",
            "find-healthy-control-plane",
            format!("no control plane answers /readyz ({last})"),
            "check the control planes (`khctl nodes`); with etcd quorum lost, see etcd's disaster-recovery guide",
        ))
    }

    /// [`Self::healthy_cp`] for worker joins: a control plane that answered
    /// within [`READY_ANSWER_AGE`] is taken without asking again.
    async fn recently_healthy_cp(&self, joined: &[&NodeSpec]) -> Result<String, Failure> {
        let mut answer = self.ready_answer.lock().await;
        if let Some((name, at)) = answer.as_ref() {
            if at.elapsed() < READY_ANSWER_AGE {
                return Ok(name.clone());
            }
        }
        let name = self.healthy_cp(joined).await?;
        *answer = Some((name.clone(), Instant::now()));
        Ok(name)
    }

    /// Refreshes the token and the uploaded certificates when they are within
    /// their margins of expiry, through a healthy control plane.
    async fn refresh_material(
        &self,
        via: &str,
        need_key: bool,
        force_token: bool,
        force_key: bool,
    ) -> Result<Material, Failure> {
        let mut m = self.material.lock().await;
        let now = unix_ms(self.coord.clock.now());
        if force_token || !m.token_fresh(now) {
            let token = material::new_token(&self.coord.db)?;
            m.token = token.clone();
            self.rep
                .note(
                    "join-material",
                    via,
                    "creating a new bootstrap token (the last one is near expiry or was refused)",
                )
                .await;
            self.ops
                .step(
                    via,
                    "token-create",
                    Step::TokenCreate(proto::TokenCreate {
                        token: token.expose().clone(),
                        ttl_seconds: material::TOKEN_TTL.as_secs(),
                        config_yaml: kubeadm::render_token_create(&self.via_params(via, &m), false)
                            .expose()
                            .clone(),
                    }),
                    false,
                )
                .await?;
            material::token_created(&self.coord.db, self.coord.clock.as_ref(), &mut m)?;
        }
        if need_key && (force_key || !m.key_fresh(now)) {
            self.rep
                .note(
                    "join-material",
                    via,
                    "uploading the certificates again (kubeadm-certs lasts 2h)",
                )
                .await;
            self.ops
                .step(
                    via,
                    "upload-certs",
                    Step::UploadCerts(proto::UploadCerts {
                        certificate_key: m.certificate_key.expose().clone(),
                        config_yaml: kubeadm::render_upload_certs(&self.via_params(via, &m), false)
                            .expose()
                            .clone(),
                    }),
                    false,
                )
                .await?;
            material::key_uploaded(&self.coord.db, self.coord.clock.as_ref(), &mut m)?;
        }
        Ok(m.clone())
    }

    /// The cluster's kubeadm parameters as seen from control plane `via`,
    /// which runs a token create or an upload-certs for the cluster: its
    /// kubeadm release picks the config API, and its own name and address
    /// fill the InitConfiguration kubeadm loads with the config.
    fn via_params(&self, via: &str, m: &Material) -> InitParams {
        let node = self
            .spec
            .nodes
            .iter()
            .find(|n| n.name == via)
            .unwrap_or(self.first);
        node_init_params(self, node, m)
    }

    fn join_config(&self, node: &NodeSpec, m: &Material, control_plane: bool) -> Secret<String> {
        kubeadm::render_join(&join_params(self, node, m, control_plane), false)
    }
}

fn is_key_error(msg: &str) -> bool {
    msg.contains("kubeadm-certs")
}

fn is_token_error(msg: &str) -> bool {
    let m = msg.to_lowercase();
    m.contains("token")
        && (m.contains("expired")
            || m.contains("invalid")
            || m.contains("not found")
            || m.contains("unknown"))
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
    let diff = super::plan::diff(
        spec,
        &input.held,
        &observe(&ctx, &input.held, &views).await,
        cni_sha256.as_deref(),
    );
    let mut planned = plan(&ctx, &views, &todo, &input);
    if diff.refusal().is_some() {
        // Nothing after a refusal runs, so nothing else is planned.
        planned.phases.clear();
        planned.rendered.clear();
        planned.notes =
            vec!["nothing runs until cluster.yaml is changed as each refused line says".into()];
    }
    planned.phases.insert(0, diff.phase());
    rep.emit(RolloutEvent {
        kind: Kind::Plan as i32,
        plan: Some(planned),
        ..Default::default()
    })
    .await;
    if let Some(refused) = diff.refusal() {
        return Err(refused);
    }
    if input.dry_run {
        return Ok(());
    }
    if ctx.external_etcd {
        if spec.certificates == CertDistribution::Coordinator {
            return Err(Failure::spec("spec.certificates.distribution: coordinator is not supported with etcd.topology: external yet (the shared CA set includes the stacked etcd CA); use upload-certs, the default"));
        }
        super::external_etcd::store_from_request(&coord.db, &input.files)?;
    }
    // The plan is accepted: this spec is now the one the coordinator holds.
    {
        let mut st = rep.state.lock().await;
        st.spec_yaml.clone_from(&input.spec_yaml);
        st.save(&coord.db, unix_ms(coord.clock.now()))?;
    }

    // 1. Preflight, in parallel, on nodes kubeadm has not touched yet.
    rep.phase("preflight").await;
    preflight(&ctx, &todo).await?;
    // Roles reach the registry only once preflight has passed.
    for (node, role) in &diff.record_roles {
        let name = kh::names::NodeName::new(node).map_err(|e| Failure::spec(e.to_string()))?;
        coord
            .registry
            .set_role(&name, role.map(|r| r.as_str().to_string()))?;
    }

    // 2. Prepare hosts, in parallel.
    rep.phase("prepare").await;
    let prepared = futures::future::join_all(todo.iter().map(|n| prepare_node(&ctx, n))).await;
    if let Some(Err(f)) = prepared.into_iter().find(|r| r.is_err()) {
        return Err(f);
    }

    // 3-4. The load balancers and the endpoint, then kubeadm init on the
    // first control plane.
    let initialized = views.get(&first.name).is_some_and(|v| v.status.admin_conf);
    if spec.load_balancer == LoadBalancerType::Haproxy {
        rep.phase("load-balancer").await;
        // The first control plane is a backend before init, which reaches
        // its apiserver through the endpoint (the health check keeps it out
        // of rotation until it answers); joined ones stay.
        let serving: Vec<&NodeSpec> = ctx
            .cps()
            .into_iter()
            .filter(|cp| cp.name == first.name || joined(&cp.name, &views))
            .collect();
        super::lb::configure(&coord, spec, &rep, "load-balancer", &serving).await?;
    }
    if !initialized {
        rep.phase("endpoint").await;
        check_endpoint(&ctx).await?;
    }
    rep.phase("init").await;
    init(&ctx, initialized).await?;

    // 5. CNI, once.
    rep.phase("cni").await;
    cni(&ctx, &input, diff.reapply_cni).await?;

    // 6. Control planes, one at a time, under the lease.
    rep.phase("control-planes").await;
    let cps = ctx.cps();
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
        super::lb::configure(&coord, spec, &rep, "control-planes", &backends).await?;
    }

    // 7. Workers, in parallel up to workerConcurrency.
    rep.phase("workers").await;
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

    // 8. Verify, then 9. remove the token this rollout created.
    rep.phase("verify").await;
    verify(&ctx).await?;
    rep.phase("cleanup").await;
    cleanup(&ctx).await?;
    Ok(())
}

/// What the agents say about the nodes the diff needs beyond `views`: the
/// spec's load balancers and the nodes the held state knows that the spec no
/// longer lists. An agent that cannot be asked is recorded as such, not as a
/// failure: the diff decides what that means.
async fn observe(
    ctx: &Ctx<'_>,
    held: &super::plan::Held,
    views: &HashMap<String, NodeView>,
) -> std::collections::BTreeMap<String, super::plan::Observed> {
    use super::plan::Observed;
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

fn plan(
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
        name: "preflight".into(),
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
        name: "prepare".into(),
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
            name: "load-balancer".into(),
            steps: ctx
                .spec
                .load_balancers()
                .map(|n| {
                    step(
                        &n.name,
                        super::lb::STEP,
                        "pending".into(),
                        "HAProxy: frontend on the endpoint's port, control planes on 6443 as they become ready; checked with `haproxy -c`, reloaded on change".into(),
                    )
                })
                .collect(),
        });
    }
    phases.push(proto::PlannedPhase {
        name: "endpoint".into(),
        steps: vec![step(
            &ctx.first.name,
            "endpoint-check",
            init_state(),
            format!("TCP connect to {} from {}", ctx.endpoint, ctx.first.name),
        )],
    });
    phases.push(proto::PlannedPhase {
        name: "init".into(),
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
            name: "cni".into(),
            steps: vec![step(
                &ctx.first.name,
                "cni",
                "pending".into(),
                format!("kubectl apply -f {}", cni.manifest.display()),
            )],
        });
    }
    phases.push(proto::PlannedPhase {
        name: "control-planes".into(),
        steps: ctx
            .cps()
            .iter()
            .skip(1)
            .map(|n| step(&n.name, "join-control-plane", st(&n.name), "kubeadm join --config /var/lib/kh-agent/kubeadm-join.yaml (control plane, under the lease)".into()))
            .collect(),
    });
    phases.push(proto::PlannedPhase {
        name: "workers".into(),
        steps: ctx
            .spec
            .workers()
            .map(|n| step(&n.name, "join-worker", st(&n.name), format!("kubeadm join --config /var/lib/kh-agent/kubeadm-join.yaml (at most {} at once)", ctx.spec.worker_concurrency)))
            .collect(),
    });
    phases.push(proto::PlannedPhase {
        name: "verify".into(),
        steps: vec![step(
            "",
            "verify",
            "pending".into(),
            "every node Ready; etcd members match the control planes; every apiserver ready".into(),
        )],
    });
    phases.push(proto::PlannedPhase {
        name: "cleanup".into(),
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

fn init_params(ctx: &Ctx<'_>, m: &Material) -> InitParams {
    node_init_params(ctx, ctx.first, m)
}

/// The InitConfiguration parameters for control plane `n`.
fn node_init_params(ctx: &Ctx<'_>, n: &NodeSpec, m: &Material) -> InitParams {
    InitParams {
        kubeadm_version: node_version(ctx.coord, &n.name, &ctx.version),
        kubernetes_version: ctx.version.clone(),
        cluster_name: ctx.spec.name.clone(),
        control_plane_endpoint: ctx.endpoint.clone(),
        advertise_address: n.address,
        bind_port: 6443,
        node_name: n.name.clone(),
        pod_subnet: ctx.spec.networking.pod_subnet.to_string(),
        service_subnet: ctx.spec.networking.service_subnet.to_string(),
        bootstrap_token: m.token.clone(),
        token_ttl: material::TOKEN_TTL,
        certificate_key: m.certificate_key.clone(),
        etcd: match &ctx.spec.etcd {
            Etcd::Stacked => EtcdConfig::Stacked,
            Etcd::External { endpoints, .. } => EtcdConfig::External {
                endpoints: endpoints.clone(),
            },
        },
        cert_sans: vec![],
    }
}

fn join_params(ctx: &Ctx<'_>, node: &NodeSpec, m: &Material, control_plane: bool) -> JoinParams {
    let upload = ctx.spec.certificates == CertDistribution::UploadCerts;
    JoinParams {
        kubeadm_version: node_version(ctx.coord, &node.name, &ctx.version),
        api_server_endpoint: ctx.endpoint.clone(),
        token: m.token.clone(),
        ca_cert_hash: m.meta.ca_cert_hash.clone().unwrap_or_default(),
        node_name: node.name.clone(),
        advertise_address: node.address,
        control_plane: control_plane.then(|| ControlPlaneJoin {
            certificate_key: upload.then(|| m.certificate_key.clone()),
            bind_port: 6443,
        }),
    }
}

async fn preflight(ctx: &Ctx<'_>, todo: &[&NodeSpec]) -> Result<(), Failure> {
    let targets: Vec<crate::prepare::Target> = todo
        .iter()
        .filter_map(|n| {
            let name = kh::names::NodeName::new(&n.name).ok()?;
            let record = ctx.coord.registry.get(&name).ok().flatten()?;
            Some(crate::prepare::Target {
                record,
                role: Some(n.role),
                address: Some(n.address),
            })
        })
        .collect();
    let results =
        crate::prepare::preflight(ctx.coord.clone(), Some(ctx.spec.clone()), targets).await;
    let mut problems = vec![];
    for r in &results {
        if !r.error.is_empty() {
            problems.push(format!("{}: {}", r.node, r.error));
        }
        for c in r.report.iter().flat_map(|r| &r.checks) {
            if c.status == proto::CheckStatus::Fail as i32 {
                problems.push(format!(
                    "{}: {} — {} (fix: {})",
                    r.node, c.name, c.message, c.fix
                ));
            }
        }
        ctx.rep
            .emit(RolloutEvent {
                kind: Kind::StepFinished as i32,
                phase: "preflight".into(),
                node: r.node.clone(),
                step: "preflight".into(),
                message: match &r.report {
                    Some(rep) => {
                        let fails = rep
                            .checks
                            .iter()
                            .filter(|c| c.status == proto::CheckStatus::Fail as i32)
                            .count();
                        let warns = rep
                            .checks
                            .iter()
                            .filter(|c| c.status == proto::CheckStatus::Warn as i32)
                            .count();
                        format!(
                            "{} checks, {fails} failed, {warns} warnings",
                            rep.checks.len()
                        )
                    }
                    None => r.error.clone(),
                },
                ..Default::default()
            })
            .await;
    }
    // kubeadm requires product_uuid and MACs unique across the cluster.
    let names: Vec<&str> = ctx.spec.nodes.iter().map(|n| n.name.as_str()).collect();
    for v in ctx.coord.registry.list(0, Duration::from_secs(1))? {
        if names.contains(&v.record.name.as_str()) {
            for w in v.warnings {
                problems.push(format!("{}: {w}", v.record.name));
            }
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(Failure {
        class: "preflight",
        node: String::new(),
        step: "preflight".into(),
        message: format!(
            "preflight failed; nothing was changed:\n{}",
            problems.join("\n")
        ),
        hint:
            "fix each item (or see `khctl preflight -f cluster.yaml`), then run the rollout again"
                .into(),
        report: None,
    })
}

pub(crate) async fn prepare_node(ctx: &Ctx<'_>, n: &NodeSpec) -> Result<(), Failure> {
    for step in crate::prepare::steps_for(Some(n.role)) {
        let name = crate::prepare::step_name(&step);
        ctx.rep
            .tracked("prepare", &n.name, name, async {
                let r = ctx.ops.step(&n.name, name, step.clone(), false).await?;
                Ok(((), r.message))
            })
            .await?;
    }
    Ok(())
}

async fn check_endpoint(ctx: &Ctx<'_>) -> Result<(), Failure> {
    use proto::tcp_probe_response::Result as R;
    let first = &ctx.first.name;
    ctx.rep
        .tracked("endpoint", first, "endpoint-check", async {
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

async fn init(ctx: &Ctx<'_>, initialized: bool) -> Result<(), Failure> {
    let first = &ctx.first.name;
    let upload = ctx.spec.certificates == CertDistribution::UploadCerts;
    if initialized {
        ctx.rep
            .settle(
                "init",
                first,
                "kubeadm-init",
                "the control plane is initialized",
            )
            .await;
    }
    if !initialized && ctx.external_etcd {
        ctx.rep
            .tracked("init", first, "external-etcd", async {
                super::external_etcd::place(&ctx.ops, &ctx.coord.db, first).await?;
                let endpoints = ctx.etcd_endpoints(&[]);
                let summary =
                    super::external_etcd::check_health(&ctx.ops, first, &endpoints).await?;
                Ok(((), format!("placed the etcd client files; {summary}")))
            })
            .await?;
    }
    if !initialized {
        ctx.rep
            .tracked("init", first, "kubeadm-init", async {
                let mut m = ctx.material.lock().await;
                let config = kubeadm::render_init(&init_params(ctx, &m), false);
                let r = ctx
                    .ops
                    .step(
                        first,
                        "kubeadm-init",
                        Step::KubeadmInit(proto::KubeadmInit {
                            config_yaml: config.expose().clone(),
                            upload_certs: upload,
                        }),
                        false,
                    )
                    .await?;
                material::token_created(&ctx.coord.db, ctx.coord.clock.as_ref(), &mut m)?;
                if upload {
                    material::key_uploaded(&ctx.coord.db, ctx.coord.clock.as_ref(), &mut m)?;
                }
                Ok(((), r.message))
            })
            .await?;
    }
    // The discovery hash comes from the cluster CA itself, never from text.
    let needs_hash = ctx.material.lock().await.meta.ca_cert_hash.is_none();
    let needs_shared = ctx.spec.certificates == CertDistribution::Coordinator
        && material::load_shared_ca(&ctx.coord.db)?.is_none();
    if needs_hash || needs_shared {
        ctx.rep
            .tracked("init", first, "collect-cluster-ca", async {
                let files = ctx
                    .ops
                    .read_files(first, Set::ClusterCa)
                    .await
                    .map_err(|e| {
                        Failure::at(
                            first,
                            "collect-cluster-ca",
                            format!("cannot read /etc/kubernetes/pki/ca.crt: {e}"),
                            "check that kubeadm init finished on this node",
                        )
                    })?;
                let ca = files.first().ok_or_else(|| {
                    Failure::at(first, "collect-cluster-ca", "no cluster CA returned", "")
                })?;
                let hash = kh::pki::spki_hash_pem(&String::from_utf8_lossy(&ca.contents)).map_err(
                    |e| {
                        Failure::at(
                            first,
                            "collect-cluster-ca",
                            format!("the cluster CA does not parse: {e}"),
                            "",
                        )
                    },
                )?;
                {
                    let mut m = ctx.material.lock().await;
                    m.meta.ca_cert_hash = Some(hash.clone());
                    material::save_meta(&ctx.coord.db, &m.meta)?;
                }
                let mut note = format!("discovery hash {hash}");
                if ctx.spec.certificates == CertDistribution::Coordinator {
                    let set = ctx
                        .ops
                        .read_files(first, Set::SharedCa)
                        .await
                        .map_err(|e| {
                            Failure::at(
                                first,
                                "collect-cluster-ca",
                                format!("cannot read the shared CA set: {e}"),
                                "",
                            )
                        })?;
                    let files: Vec<(String, Secret<String>)> = set
                        .into_iter()
                        .map(|f| {
                            (
                                f.path,
                                Secret::new(String::from_utf8_lossy(&f.contents).into_owned()),
                            )
                        })
                        .collect();
                    material::save_shared_ca(&ctx.coord.db, &files)?;
                    note.push_str("; stored the shared CA set (encrypted)");
                }
                Ok(((), note))
            })
            .await?;
    }
    Ok(())
}

/// Applies the CNI manifest once, and again when the plan found it changed.
async fn cni(ctx: &Ctx<'_>, input: &Input, changed: bool) -> Result<(), Failure> {
    let Some(cni) = &ctx.spec.cni else {
        ctx.rep
            .note(
                "cni",
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
        .tracked("cni", first, "cni", async {
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
            let record = super::plan::cni_record(&super::plan::manifest_sha256(manifest));
            Ok(((), format!("{} ({record})", r.message)))
        })
        .await
}

/// Holds the control-plane lease for the duration of `f`, renewing it.
async fn with_lease<T>(
    ctx: &Ctx<'_>,
    node: &str,
    purpose: &str,
    f: impl std::future::Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    if ctx.lease_held {
        return f.await;
    }
    let db = &ctx.coord.db;
    let clock = ctx.coord.clock.clone();
    let waited = Instant::now();
    loop {
        match lease::acquire(db, clock.as_ref(), &ctx.holder, purpose)? {
            Ok(_) => break,
            Err(other) => {
                if waited.elapsed() > Duration::from_secs(600) {
                    return Err(Failure::at(
                        node,
                        "lease",
                        lease::describe(&other),
                        "wait for that operation to finish, then run the rollout again",
                    ));
                }
                ctx.rep
                    .waiting(
                        "control-planes",
                        node,
                        format!(
                            "waiting for the control-plane lease: {}",
                            lease::describe(&other)
                        ),
                    )
                    .await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
    let renewer = {
        let (db, holder, purpose) = (db.clone(), ctx.holder.clone(), purpose.to_string());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease::TTL / 4).await;
                if let Err(e) = lease::renew(&db, clock.as_ref(), &holder, &purpose) {
                    tracing::error!(error = %e, "control-plane lease renewal failed");
                }
            }
        })
    };
    let r = f.await;
    renewer.abort();
    lease::release(db, &ctx.holder)?;
    r
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
            "control-planes",
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
                .note("control-planes", name, "already joined; skipping")
                .await;
            return Ok(());
        }
    }
    with_lease(ctx, name, &format!("joining control plane {name}"), async {
        ctx.rep
            .tracked("control-planes", name, "join-control-plane", async {
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
                        ctx.rep.note("control-planes", name, "a previous join attempt left kubeadm files here; running kubeadm reset -f first").await;
                        ctx.ops.step(name, "kubeadm-reset", Step::KubeadmReset(proto::KubeadmReset {}), false).await?;
                    }
                    let upload = ctx.spec.certificates == CertDistribution::UploadCerts;
                    let m = ctx.refresh_material(&via, upload, force_token, force_key).await?;
                    if !upload {
                        place_shared_ca(ctx, name).await?;
                    }
                    if ctx.external_etcd {
                        super::external_etcd::place(&ctx.ops, &ctx.coord.db, name).await?;
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
                        Err(f) if attempt == 0 && upload && is_key_error(&f.message) => {
                            // The Secret expired by the cluster's clock even
                            // if not by ours: upload again and retry once.
                            ctx.rep.note("control-planes", name, "kubeadm-certs was gone; uploading the certificates again and retrying").await;
                            force_key = true;
                        }
                        Err(f) if attempt == 0 && is_token_error(&f.message) => {
                            ctx.rep.note("control-planes", name, "the bootstrap token was refused; creating a new one and retrying").await;
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
            "control-planes",
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
                    "control-planes",
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

async fn join_worker(
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
            .settle("workers", name, "join-worker", "joined as a worker")
            .await;
        return Ok(());
    }
    ctx.rep
        .tracked("workers", name, "join-worker", async {
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
                    Err(f) if attempt == 0 && is_token_error(&f.message) => force_token = true,
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

async fn verify(ctx: &Ctx<'_>) -> Result<(), Failure> {
    let cps = ctx.cps();
    ctx.rep
        .tracked("verify", "cluster", "verify", async {
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
                        "verify",
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
                super::external_etcd::check_health(&ctx.ops, &via, &endpoints).await?;
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

async fn cleanup(ctx: &Ctx<'_>) -> Result<(), Failure> {
    let m = ctx.material.lock().await;
    if m.meta.token_expires_ms == 0 {
        return Ok(());
    }
    let cps = ctx.cps();
    let via = ctx.healthy_cp(&cps).await?;
    let id = m.meta.token_id.clone();
    drop(m);
    ctx.rep
        .tracked("cleanup", &via, "delete-token", async {
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
