//! The rollout's phases, one file each, in the order `engine::run` runs
//! them, and what they share: the context (`Ctx`: the spec, the agents,
//! the reporter, the join material) and the kubeadm parameters built from it.
//!
//! `survey` is what the engine finds before it acts: where each node stands
//! and the plan a dry run prints.

pub mod cleanup;
pub mod cni;
pub mod control_plane;
pub mod endpoint;
pub mod init;
pub mod preflight;
pub mod prepare;
pub mod remove;
pub mod spares;
pub mod survey;
pub mod verify;
pub mod workers;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kh::kubeadm::{self, ControlPlaneJoin, EtcdConfig, InitParams, JoinParams};
use kh::proto::{self, run_step_request::Step};
use kh::secret::Secret;
use kh::spec::{CertDistribution, ClusterSpec, Etcd, KubeVersion, NodeSpec};
use kh::time::unix_ms;
use tokio::sync::Mutex;

use super::material::{self, Material};
use super::ops::{url, Failure, Ops};
use super::reporter::Reporter;
use crate::Coordinator;

pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a control plane's ready answer is trusted by worker joins, so a
/// wave of workers probes once, not once per worker.
const READY_ANSWER_AGE: Duration = Duration::from_secs(2);
/// Nodes asked for their status at once when a rollout starts.
pub(crate) const STATUS_PARALLEL: usize = 64;

/// A phase of an operation, as its events name it. The wire carries
/// [`Phase::name`], so khctl shows the same words as always.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    Preflight,
    Prepare,
    LoadBalancer,
    Endpoint,
    Init,
    Cni,
    ControlPlanes,
    Workers,
    /// Joined nodes the spec no longer lists leave the cluster.
    RemoveNodes,
    Verify,
    Cleanup,
    /// Notes about the join token and uploaded certificates being refreshed.
    JoinMaterial,
    /// An etcd replacement's checks before it changes anything.
    Preconditions,
    /// An etcd replacement removing the failed member and node.
    Remove,
    /// An etcd replacement joining the new control plane.
    Join,
    /// `khctl reset --node`: one node torn down.
    Reset,
    /// `khctl certs renew`: one control plane after another.
    Renew,
    /// An etcd restore sending the snapshot to the control planes.
    Distribute,
    /// An etcd restore stopping etcd and the apiservers.
    Stop,
    /// An etcd restore restoring the snapshot on each control plane.
    Restore,
    /// An etcd restore starting the restored members.
    Start,
    /// `khctl upgrade`: the first control plane (`kubeadm upgrade apply`).
    UpgradeFirst,
    /// `khctl upgrade`: the other control planes, one at a time.
    UpgradeControlPlanes,
    /// `khctl upgrade`: the workers, in batches of maxUnavailable.
    UpgradeWorkers,
}

impl Phase {
    /// Every phase: a rollout's in the order it runs them (the load
    /// balancers only with `loadBalancer: haproxy`), then the other
    /// operations' own.
    pub const ALL: [Phase; 24] = [
        Phase::Preflight,
        Phase::Prepare,
        Phase::LoadBalancer,
        Phase::Endpoint,
        Phase::Init,
        Phase::Cni,
        Phase::ControlPlanes,
        Phase::Workers,
        Phase::RemoveNodes,
        Phase::Verify,
        Phase::Cleanup,
        Phase::JoinMaterial,
        Phase::Preconditions,
        Phase::Remove,
        Phase::Join,
        Phase::Reset,
        Phase::Renew,
        Phase::Distribute,
        Phase::Stop,
        Phase::Restore,
        Phase::Start,
        Phase::UpgradeFirst,
        Phase::UpgradeControlPlanes,
        Phase::UpgradeWorkers,
    ];

    /// The name on the wire, in events and the persisted journal.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Preflight => "preflight",
            Phase::Prepare => "prepare",
            Phase::LoadBalancer => "load-balancer",
            Phase::Endpoint => "endpoint",
            Phase::Init => "init",
            Phase::Cni => "cni",
            Phase::ControlPlanes => "control-planes",
            Phase::Workers => "workers",
            Phase::RemoveNodes => "remove-nodes",
            Phase::Verify => "verify",
            Phase::Cleanup => "cleanup",
            Phase::JoinMaterial => "join-material",
            Phase::Preconditions => "preconditions",
            Phase::Remove => "remove",
            Phase::Join => "join",
            Phase::Reset => "reset",
            Phase::Renew => "renew",
            Phase::Distribute => "distribute",
            Phase::Stop => "stop",
            Phase::Restore => "restore",
            Phase::Start => "start",
            Phase::UpgradeFirst => "upgrade-first-control-plane",
            Phase::UpgradeControlPlanes => "upgrade-control-planes",
            Phase::UpgradeWorkers => "upgrade-workers",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a node stands, as its agent reports it.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeView {
    pub(crate) status: proto::NodeStatusResponse,
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
    pub(crate) coord: &'a Arc<Coordinator>,
    pub(crate) ops: Ops<'a>,
    pub(crate) spec: &'a ClusterSpec,
    pub(crate) rep: &'a Reporter,
    pub(crate) version: KubeVersion,
    pub(crate) endpoint: String,
    pub(crate) first: &'a NodeSpec,
    pub(crate) holder: String,
    /// Serializes material refreshes between parallel worker joins.
    pub(crate) material: Mutex<Material>,
    pub(crate) external_etcd: bool,
    /// The caller holds the control-plane lease for the whole operation (an
    /// etcd replacement), so joins must neither take nor release it.
    pub(crate) lease_held: bool,
    /// The last control plane that answered /readyz for a worker join, and
    /// when. Held while probing, so parallel workers wait for one probe.
    pub(crate) ready_answer: Mutex<Option<(String, Instant)>>,
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
    pub(crate) fn cps(&self) -> Vec<&NodeSpec> {
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
            "check the control planes (`khctl nodes`); with etcd quorum lost, restore a snapshot with `khctl etcd restore --snapshot ID --yes` (IDs: `khctl etcd snapshot list`)",
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
                    Phase::JoinMaterial,
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
                    Phase::JoinMaterial,
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

#[cfg(test)]
mod tests {
    use super::Phase;

    #[test]
    fn phase_names_are_the_wire_names_and_unique() {
        let names: Vec<&str> = Phase::ALL.iter().map(|p| p.name()).collect();
        // The rollout's phases keep the names khctl and stored journals know.
        assert_eq!(
            names[..11],
            [
                "preflight",
                "prepare",
                "load-balancer",
                "endpoint",
                "init",
                "cni",
                "control-planes",
                "workers",
                "remove-nodes",
                "verify",
                "cleanup"
            ]
        );
        let unique: std::collections::HashSet<&str> = names.iter().copied().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        for p in Phase::ALL {
            assert_eq!(p.to_string(), p.name());
        }
    }
}
