//! Runs typed step requests and queries through `kh-host` and converts the
//! results to the wire. The only place the agent maps between proto and host
//! types.

use std::sync::Arc;
use std::time::Duration;

use kh::proto::{self, run_step_request::Step as WireStep};
use kh_host::kube::{self, EtcdClient, KubeError, Scope};
use kh_host::{SecretString, Step, StepKind};

use crate::metrics::StepLabels;
use crate::state::AgentState;

fn secret(s: String) -> SecretString {
    SecretString::new(s)
}

/// The host step for a wire step. Invalid input (a malformed token, a path
/// outside /etc/kubernetes) is refused here with the reason.
fn host_step(step: WireStep) -> Result<Box<dyn Step + Send + Sync>, String> {
    let e = |e: KubeError| e.to_string();
    // The upgrade steps' messages carry one field each; the error names it.
    let field = |name: &'static str| move |e: KubeError| format!("{name}: {e}");
    Ok(match step {
        WireStep::DisableSwap(_) => Box::new(kh_host::DisableSwap),
        WireStep::KernelModules(_) => Box::new(kh_host::KernelModules::default()),
        WireStep::Sysctl(_) => Box::new(kh_host::Sysctl::default()),
        WireStep::ContainerdCgroup(_) => Box::new(kh_host::ContainerdCgroup),
        WireStep::KubeadmInit(s) => Box::new(kube::KubeadmInit {
            config: secret(s.config_yaml),
            upload_certs: s.upload_certs,
        }),
        WireStep::KubeadmJoin(s) => Box::new(kube::KubeadmJoin {
            config: secret(s.config_yaml),
            control_plane: s.control_plane,
        }),
        WireStep::KubeadmReset(_) => Box::new(kube::KubeadmReset),
        WireStep::TokenCreate(s) => Box::new(
            kube::TokenCreate::new(
                secret(s.token),
                Duration::from_secs(s.ttl_seconds),
                secret(s.config_yaml),
            )
            .map_err(e)?,
        ),
        WireStep::TokenDelete(s) => Box::new(kube::TokenDelete::new(&s.token_id).map_err(e)?),
        WireStep::UploadCerts(s) => Box::new(
            kube::UploadCerts::new(secret(s.certificate_key), secret(s.config_yaml)).map_err(e)?,
        ),
        WireStep::KubectlApply(s) => {
            Box::new(kube::KubectlApply::new(&s.name, &s.manifest).map_err(e)?)
        }
        WireStep::KubectlDeleteNode(s) => {
            Box::new(kube::KubectlDeleteNode::new(&s.name).map_err(e)?)
        }
        WireStep::PlaceFiles(s) => Box::new(
            kube::PlaceFiles::new(
                s.files
                    .into_iter()
                    .map(|f| {
                        // Contents are bytes on the wire and are placed
                        // exactly: a DER key or any binary file survives.
                        (f.path, kh_host::SecretBytes::new(f.contents), f.mode)
                    })
                    .collect(),
            )
            .map_err(e)?,
        ),
        WireStep::LoadBalancer(s) => Box::new(load_balancer(s)?),
        WireStep::CertsRenew(s) => Box::new(kube::CertsRenew::new(s.names).map_err(e)?),
        WireStep::RestartControlPlane(s) => Box::new(kube::RestartControlPlane {
            wait: match s.wait_seconds {
                0 => kube::renew::RESTART_WAIT,
                n => Duration::from_secs(u64::from(n)),
            },
        }),
        WireStep::EtcdStopControlPlane(s) => Box::new(kube::restore::StopControlPlane {
            op: kube::restore::OperationId::new(&s.operation).map_err(e)?,
            ports: s.ports,
        }),
        WireStep::EtcdRestore(s) => Box::new(kube::restore::EtcdRestore {
            op: kube::restore::OperationId::new(&s.operation).map_err(e)?,
            name: s.name,
            initial_cluster: s.initial_cluster,
            token: s.initial_cluster_token,
            peer_url: s.initial_advertise_peer_url,
        }),
        WireStep::EtcdStartControlPlane(s) => Box::new(kube::restore::StartControlPlane {
            op: kube::restore::OperationId::new(&s.operation).map_err(e)?,
        }),
        WireStep::EtcdRestoreDiscard(s) => Box::new(kube::restore::Discard {
            op: kube::restore::OperationId::new(&s.operation).map_err(e)?,
        }),
        WireStep::EtcdMemberRemove(_) | WireStep::EtcdMoveLeader(_) => {
            return Err("etcd membership changes are not host steps".into())
        }
        WireStep::PackageSource(s) => Box::new(kube::PackageSource {
            minor: kube::Minor::parse(&s.minor).map_err(field("minor"))?,
        }),
        WireStep::PackageInstall(s) => Box::new(
            kube::PackageInstall::new(s.packages, &s.version).map_err(field("packages/version"))?,
        ),
        WireStep::KubeadmUpgradePlan(s) => Box::new(kube::KubeadmUpgradePlan {
            version: kube::KubeVersion::parse(&s.version).map_err(field("version"))?,
        }),
        WireStep::KubeadmUpgradeApply(s) => Box::new(kube::KubeadmUpgradeApply {
            version: kube::KubeVersion::parse(&s.version).map_err(field("version"))?,
        }),
        WireStep::KubeadmUpgradeNode(s) => Box::new(kube::KubeadmUpgradeNode {
            version: kube::KubeVersion::parse(&s.version).map_err(field("version"))?,
        }),
        WireStep::KubectlDrain(s) => Box::new(
            kube::KubectlDrain::new(&s.node, Duration::from_secs(u64::from(s.timeout_seconds)))
                .map_err(field("node"))?,
        ),
        WireStep::KubectlUncordon(s) => {
            Box::new(kube::KubectlUncordon::new(&s.node).map_err(field("node"))?)
        }
        WireStep::RestartKubelet(_) => Box::new(kube::RestartKubelet),
    })
}

/// Whether a step changes the cluster through its API rather than this
/// host: such a step does not wait for (or hold) the host-step turn, so one
/// control plane's agent can drain several workers of a batch at once.
fn cluster_only(step: &WireStep) -> bool {
    matches!(
        step,
        WireStep::KubectlDrain(_) | WireStep::KubectlUncordon(_)
    )
}

/// The wire's load-balancer request as a validated host step.
fn load_balancer(s: proto::LoadBalancerConfig) -> Result<kh_host::LoadBalancerConfig, String> {
    let port = |what: &str, p: u32| {
        u16::try_from(p).map_err(|_| format!("{what} {p} is not a TCP port (1-65535)"))
    };
    let bind = match s.bind_address.as_str() {
        "" => None,
        a => Some(
            a.parse()
                .map_err(|_| format!("bind address {a:?} is not an IP address"))?,
        ),
    };
    let mut backends = Vec::with_capacity(s.backends.len());
    for b in s.backends {
        backends.push(kh_host::Backend {
            address: b.address.parse().map_err(|_| {
                format!(
                    "backend {} address {:?} is not an IP address",
                    b.name, b.address
                )
            })?,
            port: port("backend port", b.port)?,
            name: b.name,
        });
    }
    kh_host::LoadBalancerConfig::new(bind, port("frontend port", s.frontend_port)?, backends)
        .map_err(|e| e.to_string())
}

fn failed(step: &str, error: String) -> proto::StepReport {
    failed_as(step, error, kh_host::FailureKind::Other)
}

fn failed_as(step: &str, error: String, kind: kh_host::FailureKind) -> proto::StepReport {
    proto::StepReport {
        step: step.to_string(),
        outcome: proto::Outcome::Failed as i32,
        message: format!("{step} failed"),
        error,
        failure_kind: failure_kind(Some(kind)) as i32,
        ..Default::default()
    }
}

/// The wire's failure kind; a report that did not fail has none.
pub fn failure_kind(kind: Option<kh_host::FailureKind>) -> proto::FailureKind {
    use kh_host::FailureKind as K;
    match kind {
        None => proto::FailureKind::Unspecified,
        Some(K::Other) => proto::FailureKind::Other,
        Some(K::TokenRefused) => proto::FailureKind::TokenRefused,
        Some(K::CertificateKey) => proto::FailureKind::CertificateKey,
        Some(K::LearnerLimit) => proto::FailureKind::LearnerLimit,
        Some(K::QuorumLost) => proto::FailureKind::QuorumLost,
        Some(K::CommandNotFound) => proto::FailureKind::CommandNotFound,
        Some(K::Timeout) => proto::FailureKind::Timeout,
        Some(K::DrainBlocked) => proto::FailureKind::DrainBlocked,
    }
}

/// Plans and applies (or only plans) one step; never panics the server.
/// Host steps run one at a time per agent: a resumed coordinator never runs
/// a step beside one it started before a crash. Drain and uncordon change
/// the cluster, not this host, and run beside them.
pub async fn run(state: &Arc<AgentState>, step: WireStep, dry_run: bool) -> proto::StepReport {
    let name = step.name();
    if let Some(why) = retired_refusal(state, &step) {
        return failed(name, why);
    }
    // The guard moves into the blocking task: if the coordinator goes away
    // mid-step, the RPC is dropped but the host work runs on, and the lock
    // must stay held until that work has really ended. For the same reason
    // the outcome is logged and counted in the task, not after the await.
    let turn = if cluster_only(&step) {
        None
    } else {
        Some(state.steps_lock.clone().lock_owned().await)
    };
    let st = state.clone();
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        let report = match step {
            WireStep::EtcdMemberRemove(r) => remove_member(&st, r, dry_run),
            WireStep::EtcdMoveLeader(r) => move_leader(&st, r, dry_run),
            other => match host_step(other) {
                Ok(s) => to_wire(s.run(&st.host, dry_run)),
                Err(e) => failed(name, e),
            },
        };
        record(&st, &report, dry_run);
        report
    })
    .await
    .unwrap_or_else(|e| failed(name, format!("the step panicked: {e}")))
}

/// A retired node (replaced out of the cluster) must not rejoin as its old
/// member or change the cluster: only host preparation, packages and
/// `kubeadm reset` run on it.
fn retired_refusal(state: &AgentState, step: &WireStep) -> Option<String> {
    let why = state
        .retired
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    refusal_when_retired(why.as_deref(), step)
}

fn refusal_when_retired(why: Option<&str>, step: &WireStep) -> Option<String> {
    let why = why?;
    let allowed = matches!(
        step,
        WireStep::DisableSwap(_)
            | WireStep::KernelModules(_)
            | WireStep::Sysctl(_)
            | WireStep::ContainerdCgroup(_)
            | WireStep::KubeadmReset(_)
            | WireStep::PackageSource(_)
            | WireStep::PackageInstall(_)
    );
    (!allowed).then(|| {
        format!(
            "refused: the coordinator retired this node ({why}); it runs no step that changes the cluster. Reset it and return it to the spare pool with `khctl spares add NODE`"
        )
    })
}

fn record(state: &AgentState, report: &proto::StepReport, dry_run: bool) {
    let result =
        match proto::Outcome::try_from(report.outcome).unwrap_or(proto::Outcome::Unspecified) {
            proto::Outcome::Changed => "changed",
            proto::Outcome::Unchanged => "unchanged",
            _ => "failed",
        };
    if !dry_run {
        state
            .metrics
            .steps
            .get_or_create(&StepLabels {
                step: report.step.clone(),
                result: result.into(),
            })
            .inc();
    }
    if result == "failed" {
        tracing::warn!(step = %report.step, dry_run, kind = report.failure_kind().as_str_name(), error = %report.error, "{}", report.message);
    } else {
        tracing::info!(step = %report.step, outcome = result, dry_run, "{}", report.message);
    }
}

/// etcd refuses membership changes for a few seconds after the last one
/// ("unhealthy cluster") and while a leader is elected. Those refusals are
/// retried for a bounded time, as kubeadm does; anything else fails at once.
fn settle<T>(mut f: impl FnMut() -> Result<T, KubeError>) -> Result<T, KubeError> {
    let start = std::time::Instant::now();
    loop {
        match f() {
            Err(e)
                if e.is_transient()
                    && !e.timed_out()
                    && start.elapsed() < Duration::from_secs(20) =>
            {
                std::thread::sleep(Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

fn move_leader(state: &AgentState, r: proto::EtcdMoveLeader, dry_run: bool) -> proto::StepReport {
    let hex = format!("{:x}", r.target_id);
    let report = |outcome: proto::Outcome, message: String| proto::StepReport {
        step: StepKind::EtcdMoveLeader.name().into(),
        outcome: outcome as i32,
        message,
        dry_run,
        ..Default::default()
    };
    if dry_run {
        return report(
            proto::Outcome::Changed,
            format!("dry run: would move etcd leadership to {hex}"),
        );
    }
    let client = EtcdClient::stacked(r.endpoints);
    match settle(|| client.move_leader(&state.host, r.target_id)) {
        Ok(()) => report(
            proto::Outcome::Changed,
            format!("moved etcd leadership to {hex}"),
        ),
        Err(e) => failed_as(
            StepKind::EtcdMoveLeader.name(),
            e.to_string(),
            e.failure_kind(),
        ),
    }
}

fn remove_member(
    state: &AgentState,
    r: proto::EtcdMemberRemove,
    dry_run: bool,
) -> proto::StepReport {
    let client = EtcdClient::stacked(r.endpoints);
    let hex = format!("{:x}", r.member_id);
    if dry_run {
        return proto::StepReport {
            step: StepKind::EtcdMemberRemove.name().into(),
            outcome: proto::Outcome::Changed as i32,
            message: format!("dry run: would remove etcd member {hex}"),
            dry_run: true,
            ..Default::default()
        };
    }
    match settle(|| client.remove_member(&state.host, r.member_id)) {
        Ok(true) => proto::StepReport {
            step: StepKind::EtcdMemberRemove.name().into(),
            outcome: proto::Outcome::Changed as i32,
            message: format!("removed etcd member {hex}"),
            ..Default::default()
        },
        Ok(false) => proto::StepReport {
            step: StepKind::EtcdMemberRemove.name().into(),
            outcome: proto::Outcome::Unchanged as i32,
            message: format!("etcd member {hex} is not a member"),
            ..Default::default()
        },
        Err(e) => failed_as(
            StepKind::EtcdMemberRemove.name(),
            e.to_string(),
            e.failure_kind(),
        ),
    }
}

pub fn to_wire(r: kh_host::StepReport) -> proto::StepReport {
    let outcome = match r.outcome {
        kh_host::Outcome::Changed => proto::Outcome::Changed,
        kh_host::Outcome::Unchanged => proto::Outcome::Unchanged,
        kh_host::Outcome::Failed => proto::Outcome::Failed,
    };
    proto::StepReport {
        step: r.step.name().to_string(),
        outcome: outcome as i32,
        files: r
            .files
            .into_iter()
            .map(|f| proto::FileChange {
                created: f.before.is_none(),
                path: f.path,
                diff: f.diff,
                mode: f.mode,
                backup: f.backup.unwrap_or_default(),
            })
            .collect(),
        commands: r
            .commands
            .into_iter()
            .map(|c| proto::CommandRecord {
                argv: c.argv,
                exit_code: c.exit_code,
                stderr_tail: c.stderr_tail,
                timed_out: c.timed_out,
            })
            .collect(),
        sysctls: r
            .sysctls
            .into_iter()
            .map(|s| proto::SysctlChange {
                key: s.key.as_str().to_string(),
                before: s.before.unwrap_or_default(),
                after: s.after,
            })
            .collect(),
        message: r.message,
        error: r.error.unwrap_or_default(),
        dry_run: r.dry_run,
        notes: r.notes,
        failure_kind: failure_kind(r.failure) as i32,
    }
}

pub async fn preflight(
    state: &Arc<AgentState>,
    req: proto::PreflightRequest,
) -> Result<proto::PreflightReport, String> {
    let role = match proto::NodeRole::try_from(req.role).unwrap_or(proto::NodeRole::Unspecified) {
        proto::NodeRole::ControlPlane => kh_host::Role::ControlPlane,
        proto::NodeRole::Worker => kh_host::Role::Worker,
        proto::NodeRole::Loadbalancer => kh_host::Role::LoadBalancer,
        proto::NodeRole::Unspecified => {
            return Err("preflight needs a role: control-plane, worker or loadbalancer".into())
        }
    };
    let address = match req.address.as_str() {
        "" => None,
        a => Some(
            a.parse()
                .map_err(|_| format!("address {a:?} is not an IP address"))?,
        ),
    };
    let input = kh_host::PreflightInput {
        role,
        address,
        kubernetes_version: Some(req.kubernetes_version).filter(|v| !v.is_empty()),
    };
    blocking(state, move |st| Ok(kh_host::preflight(&st.host, &input)))
        .await
        .map(|checks| proto::PreflightReport {
            checks: checks
                .into_iter()
                .map(|c| proto::Check {
                    name: c.name,
                    status: match c.status {
                        kh_host::CheckStatus::Pass => proto::CheckStatus::Pass,
                        kh_host::CheckStatus::Warn => proto::CheckStatus::Warn,
                        kh_host::CheckStatus::Fail => proto::CheckStatus::Fail,
                    } as i32,
                    message: c.message,
                    fix: c.fix,
                })
                .collect(),
        })
}

/// Runs blocking host work off the reactor.
async fn blocking<T: Send + 'static>(
    state: &Arc<AgentState>,
    f: impl FnOnce(&AgentState) -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let st = state.clone();
    tokio::task::spawn_blocking(move || f(&st))
        .await
        .map_err(|e| format!("panicked: {e}"))?
}

pub async fn node_status(state: &Arc<AgentState>) -> Result<proto::NodeStatusResponse, String> {
    // Waits for a step in flight, so the answer reflects where it ended.
    let _turn = state.steps_lock.lock().await;
    blocking(state, |st| {
        kube::node_state(&st.host).map_err(|e| e.to_string())
    })
    .await
    .map(|s| proto::NodeStatusResponse {
        kubelet_conf: s.kubelet_conf,
        admin_conf: s.admin_conf,
        apiserver_manifest: s.apiserver_manifest,
        etcd_manifest: s.etcd_manifest,
    })
}

fn etcd_client(req: &proto::EtcdRequest) -> EtcdClient {
    if req.external {
        EtcdClient::external(req.endpoints.clone())
    } else {
        EtcdClient::stacked(req.endpoints.clone())
    }
}

pub async fn etcd_members(
    state: &Arc<AgentState>,
    req: proto::EtcdRequest,
) -> Result<proto::EtcdMembersResponse, String> {
    blocking(state, move |st| {
        etcd_client(&req)
            .members(&st.host)
            .map_err(|e| e.to_string())
    })
    .await
    .map(|ms| proto::EtcdMembersResponse {
        members: ms
            .into_iter()
            .map(|m| proto::EtcdMember {
                id: m.id,
                id_hex: m.id_hex,
                name: m.name,
                peer_urls: m.peer_urls,
                client_urls: m.client_urls,
                is_learner: m.is_learner,
            })
            .collect(),
    })
}

pub async fn etcd_health(
    state: &Arc<AgentState>,
    req: proto::EtcdRequest,
) -> Result<proto::EtcdHealthResponse, String> {
    blocking(state, move |st| {
        let c = etcd_client(&req);
        let health = c
            .endpoint_health(&st.host, Scope::Endpoints)
            .map_err(|e| e.to_string())?;
        let status = c
            .endpoint_status(&st.host, Scope::Endpoints)
            .map_err(|e| e.to_string())?;
        Ok(proto::EtcdHealthResponse {
            health: health
                .into_iter()
                .map(|h| proto::EtcdEndpointHealth {
                    took_ms: parse_took(&h.took),
                    endpoint: h.endpoint,
                    healthy: h.healthy,
                    error: h.error.unwrap_or_default(),
                })
                .collect(),
            status: status
                .statuses
                .into_iter()
                .map(|s| proto::EtcdEndpointStatus {
                    endpoint: s.endpoint,
                    member_id: s.member_id,
                    leader_id: s.leader_id,
                    db_size: s.db_size,
                    is_learner: s.is_learner,
                    raft_term: s.raft_term,
                })
                .collect(),
        })
    })
    .await
}

/// etcdctl prints durations like `1.234ms` or `5.0s`.
fn parse_took(t: &str) -> u64 {
    humantime::parse_duration(t)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub async fn kube_nodes(state: &Arc<AgentState>) -> Result<proto::KubeNodesResponse, String> {
    blocking(state, |st| {
        kube::kubectl_nodes(&st.host).map_err(|e| e.to_string())
    })
    .await
    .map(|ns| proto::KubeNodesResponse {
        nodes: ns
            .into_iter()
            .map(|n| proto::KubeNode {
                name: n.name,
                ready: n.ready,
                roles: n.roles,
                kubelet_version: n.kubelet_version,
                unschedulable: n.unschedulable,
            })
            .collect(),
    })
}

pub async fn apiserver_ready(
    state: &Arc<AgentState>,
    url: String,
) -> proto::ApiserverReadyResponse {
    // The version is asked only of a ready apiserver, on the same URL; a
    // version that cannot be read leaves it empty, as the contract says.
    let answer = blocking(state, move |st| {
        kube::apiserver_readyz(&st.host, &url)?;
        Ok(kube::apiserver_version(&st.host, &url).unwrap_or_else(|e| {
            tracing::debug!(error = %e, "apiserver version unreadable");
            String::new()
        }))
    });
    match answer.await {
        Ok(version) => proto::ApiserverReadyResponse {
            ready: true,
            detail: String::new(),
            version,
        },
        Err(detail) => proto::ApiserverReadyResponse {
            ready: false,
            detail,
            version: String::new(),
        },
    }
}

/// Installed and available Kubernetes package versions. Waits for a step in
/// flight (a package install), so the answer reflects where it ended; the
/// probe of another minor's repository never touches the host's source.
pub async fn package_versions(
    state: &Arc<AgentState>,
    req: proto::PackageVersionsRequest,
) -> Result<proto::PackageVersionsResponse, tonic::Status> {
    let minor = match req.minor.as_str() {
        "" => None,
        m => Some(
            kube::Minor::parse(m)
                .map_err(|e| tonic::Status::invalid_argument(format!("minor: {e}")))?,
        ),
    };
    let _turn = state.steps_lock.lock().await;
    let v = blocking(state, move |st| {
        kube::package_versions(&st.host, minor).map_err(|e| e.to_string())
    })
    .await
    .map_err(tonic::Status::failed_precondition)?;
    Ok(package_versions_to_proto(v))
}

pub fn package_versions_to_proto(v: kube::PackageVersions) -> proto::PackageVersionsResponse {
    proto::PackageVersionsResponse {
        manager: v.manager.map(|m| m.name().to_string()).unwrap_or_default(),
        installed: v
            .installed
            .into_iter()
            .map(|p| proto::InstalledPackage {
                name: p.name,
                version: p.version.map(|v| v.to_string()).unwrap_or_default(),
                held: p.held,
            })
            .collect(),
        source_minor: v.source_minor.map(|m| m.to_string()).unwrap_or_default(),
        available: v.available.iter().map(ToString::to_string).collect(),
        error: v.error.unwrap_or_default(),
    }
}

pub async fn tcp_probe(
    state: &Arc<AgentState>,
    req: proto::TcpProbeRequest,
) -> proto::TcpProbeResponse {
    use proto::tcp_probe_response::Result as R;
    let timeout = Duration::from_millis(req.timeout_ms.clamp(100, 30_000) as u64);
    let r = blocking(state, move |st| {
        Ok(st.host.tcp_probe(&req.address, timeout))
    })
    .await;
    let (result, detail) = match r {
        Ok(kh_host::TcpProbe::Open) => (R::Open, String::new()),
        Ok(kh_host::TcpProbe::Refused) => (R::Refused, "connection refused".into()),
        Ok(kh_host::TcpProbe::TimedOut) => (R::TimedOut, "timed out".into()),
        Ok(kh_host::TcpProbe::Unresolvable(e)) => (R::Unresolvable, e),
        Ok(kh_host::TcpProbe::Other(e)) => (R::Other, e),
        Err(e) => (R::Other, e),
    };
    proto::TcpProbeResponse {
        result: result as i32,
        detail,
    }
}

pub async fn read_cluster_files(
    state: &Arc<AgentState>,
    set: proto::read_cluster_files_request::Set,
) -> Result<proto::ReadClusterFilesResponse, String> {
    use proto::read_cluster_files_request::Set;
    let paths: Vec<&'static str> = match set {
        Set::ClusterCa => vec![kube::CLUSTER_CA_CERT],
        Set::SharedCa => kube::SHARED_CA_FILES.to_vec(),
        Set::AdminKubeconfig => vec![kube::ADMIN_CONF],
        Set::Unspecified => {
            return Err("name a file set: cluster CA, shared CA or admin kubeconfig".into())
        }
    };
    blocking(state, move |st| {
        kube::read_files(&st.host, &paths).map_err(|e| e.to_string())
    })
    .await
    .map(|files| proto::ReadClusterFilesResponse {
        files: files
            .into_iter()
            .map(|(path, contents)| proto::PlacedFile {
                path,
                contents: contents.expose().as_bytes().to_vec(),
                mode: 0o600,
            })
            .collect(),
    })
}

/// The node's Kubernetes certificates and their validity.
pub async fn cluster_certs(state: &Arc<AgentState>) -> Result<proto::ClusterCertsResponse, String> {
    blocking(state, |st| Ok(kube::cluster_certs(&st.host)))
        .await
        .map(|certs| proto::ClusterCertsResponse {
            certs: certs.into_iter().map(cluster_cert_to_proto).collect(),
        })
}

pub fn cluster_cert_to_proto(c: kube::ClusterCert) -> proto::ClusterCert {
    proto::ClusterCert {
        name: c.name,
        path: c.path,
        not_before_unix: c.not_before_unix,
        not_after_unix: c.not_after_unix,
        ca: c.ca,
        is_ca: c.is_ca,
        externally_managed: c.externally_managed,
        error: c.error.unwrap_or_default(),
    }
}

/// Receives a snapshot for a restore: the pieces go through a bounded
/// channel to one blocking writer, so the agent holds a few pieces at most,
/// never the file.
pub async fn put_etcd_snapshot(
    state: &Arc<AgentState>,
    mut pieces: tonic::Streaming<proto::EtcdSnapshotPiece>,
) -> Result<proto::PutEtcdSnapshotResponse, tonic::Status> {
    let first = pieces
        .message()
        .await?
        .ok_or_else(|| tonic::Status::invalid_argument("PutEtcdSnapshot: the stream was empty; the first piece names the operation, size and sha256"))?;
    let op = kube::restore::OperationId::new(&first.operation)
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let st = state.clone();
    let (size, sha) = (first.size, first.sha256.clone());
    let writer = tokio::task::spawn_blocking(move || {
        let mut r = kube::restore::SnapshotReceiver::begin(&st.host, op, size, &sha)?;
        while let Some(chunk) = rx.blocking_recv() {
            r.write(&st.host, &chunk)?;
        }
        r.finish(&st.host)
    });
    let send = |data: Vec<u8>| {
        let tx = tx.clone();
        async move { tx.send(data).await.is_ok() }
    };
    let mut ok = first.data.is_empty() || send(first.data).await;
    while ok {
        match pieces.message().await {
            Ok(Some(p)) => ok = send(p.data).await,
            Ok(None) => break,
            Err(e) => {
                drop(tx);
                let _ = writer.await;
                return Err(e);
            }
        }
    }
    drop(tx);
    let status = writer
        .await
        .map_err(|e| tonic::Status::internal(format!("the snapshot writer panicked: {e}")))?
        .map_err(|e| tonic::Status::failed_precondition(e.to_string()))?;
    tracing::info!(
        revision = status.revision,
        keys = status.total_key,
        "received and verified an etcd snapshot"
    );
    Ok(proto::PutEtcdSnapshotResponse {
        hash: status.hash,
        revision: status.revision,
        total_keys: status.total_key,
        total_size: status.total_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_certificate_reaches_the_wire_with_its_error_or_none() {
        let c = kube::ClusterCert {
            name: "etcd-peer".into(),
            path: "/etc/kubernetes/pki/etcd/peer.crt".into(),
            not_before_unix: 10,
            not_after_unix: 20,
            ca: "etcd-ca".into(),
            is_ca: false,
            externally_managed: true,
            error: None,
        };
        let wire = cluster_cert_to_proto(c.clone());
        assert_eq!(
            (
                wire.name.as_str(),
                wire.not_before_unix,
                wire.not_after_unix
            ),
            ("etcd-peer", 10, 20)
        );
        assert!(wire.externally_managed && !wire.is_ca && wire.error.is_empty());
        let bad = cluster_cert_to_proto(kube::ClusterCert {
            error: Some("unparseable".into()),
            ..c
        });
        assert_eq!(bad.error, "unparseable");
    }

    fn host_report(failure: Option<kh_host::FailureKind>) -> kh_host::StepReport {
        kh_host::StepReport {
            step: StepKind::KubeadmJoin,
            outcome: if failure.is_some() {
                kh_host::Outcome::Failed
            } else {
                kh_host::Outcome::Changed
            },
            files: vec![],
            commands: vec![],
            sysctls: vec![],
            message: "KubeadmJoin failed".into(),
            error: failure.map(|_| "`kubeadm join --config /var/lib/kh-agent/kubeadm-join.yaml` failed (exit status 1); stderr: ...".into()),
            dry_run: false,
            failure,
            notes: vec![],
        }
    }

    #[test]
    fn a_retired_node_runs_only_host_preparation_and_kubeadm_reset() {
        let why = Some("replaced by cp-4 (etcd replace cp-2 with cp-4)");
        assert_eq!(
            refusal_when_retired(why, &WireStep::KubeadmReset(proto::KubeadmReset {})),
            None
        );
        assert_eq!(
            refusal_when_retired(why, &WireStep::DisableSwap(proto::DisableSwap {})),
            None
        );
        let join = WireStep::KubeadmJoin(proto::KubeadmJoin::default());
        let refused = refusal_when_retired(why, &join).expect("a join is refused");
        assert!(refused.contains("replaced by cp-4"), "{refused}");
        assert!(refused.contains("khctl spares add"), "{refused}");
        assert!(refusal_when_retired(
            why,
            &WireStep::EtcdMemberRemove(proto::EtcdMemberRemove::default())
        )
        .is_some());
        assert_eq!(refusal_when_retired(None, &join), None);
    }

    #[test]
    fn the_failure_kind_travels_beside_the_message() {
        let wire = to_wire(host_report(Some(kh_host::FailureKind::TokenRefused)));
        assert_eq!(wire.failure_kind(), proto::FailureKind::TokenRefused);
        assert!(wire.error.contains("kubeadm join"), "{}", wire.error);
        let wire = to_wire(host_report(Some(kh_host::FailureKind::CertificateKey)));
        assert_eq!(wire.failure_kind(), proto::FailureKind::CertificateKey);
        let wire = to_wire(host_report(None));
        assert_eq!(wire.failure_kind(), proto::FailureKind::Unspecified);
        // A request the agent refuses before any command runs is no
        // specific kind, but it is a failure.
        let refused = failed("token-create", "invalid token".into());
        assert_eq!(refused.failure_kind(), proto::FailureKind::Other);
    }

    fn refusal(step: WireStep) -> String {
        match host_step(step) {
            Ok(_) => panic!("accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn upgrade_steps_are_validated_at_the_edge_and_name_the_field() {
        let e = refusal(WireStep::PackageSource(proto::PackageSource {
            minor: "1.32".into(),
        }));
        assert!(
            e.starts_with("minor: invalid Kubernetes minor `1.32`"),
            "{e}"
        );
        let e = refusal(WireStep::PackageInstall(proto::PackageInstall {
            packages: vec!["kubeadm".into(), "cri-tools".into()],
            version: "v1.32.4".into(),
        }));
        assert!(
            e.contains("cri-tools") && e.contains("kubeadm, kubelet, kubectl"),
            "{e}"
        );
        let e = refusal(WireStep::PackageInstall(proto::PackageInstall {
            packages: vec!["kubeadm".into()],
            version: "v1.32".into(),
        }));
        assert!(e.contains("vMAJOR.MINOR.PATCH"), "{e}");
        let e = refusal(WireStep::KubeadmUpgradeApply(proto::KubeadmUpgradeApply {
            version: "latest".into(),
        }));
        assert!(e.starts_with("version: "), "{e}");
        let e = refusal(WireStep::KubectlDrain(proto::KubectlDrain {
            node: "--all".into(),
            timeout_seconds: 0,
        }));
        assert!(e.starts_with("node: invalid node name"), "{e}");
        assert!(host_step(WireStep::KubectlUncordon(proto::KubectlUncordon {
            node: "w-1".into()
        }))
        .is_ok());
        assert!(host_step(WireStep::RestartKubelet(proto::RestartKubelet {})).is_ok());
    }

    #[test]
    fn only_drain_and_uncordon_skip_the_host_step_turn() {
        assert!(cluster_only(&WireStep::KubectlDrain(Default::default())));
        assert!(cluster_only(&WireStep::KubectlUncordon(Default::default())));
        assert!(!cluster_only(&WireStep::PackageInstall(Default::default())));
        assert!(!cluster_only(&WireStep::KubeadmUpgradeNode(
            Default::default()
        )));
        assert!(!cluster_only(&WireStep::RestartKubelet(Default::default())));
    }

    #[test]
    fn package_versions_reach_the_wire_in_the_contracts_forms() {
        let v = |s: &str| kube::KubeVersion::parse(s).unwrap();
        let wire = package_versions_to_proto(kube::PackageVersions {
            manager: Some(kube::PackageManager::Dnf),
            installed: vec![
                kube::InstalledPackage {
                    name: "kubeadm".into(),
                    version: Some(v("v1.31.4")),
                    held: true,
                },
                kube::InstalledPackage {
                    name: "kubectl".into(),
                    version: None,
                    held: false,
                },
            ],
            source_minor: Some(kube::Minor::parse("v1.31").unwrap()),
            available: vec![v("v1.32.4"), v("v1.32.0")],
            error: None,
        });
        assert_eq!(wire.manager, "dnf");
        assert_eq!(wire.installed[0].version, "v1.31.4");
        assert!(wire.installed[0].held);
        assert_eq!(wire.installed[1].version, "");
        assert_eq!(wire.source_minor, "v1.31");
        assert_eq!(wire.available, ["v1.32.4", "v1.32.0"]);
        assert_eq!(wire.error, "");
    }

    #[test]
    fn every_host_kind_has_its_own_wire_kind() {
        use kh_host::FailureKind as K;
        let all = [
            K::Other,
            K::TokenRefused,
            K::CertificateKey,
            K::LearnerLimit,
            K::QuorumLost,
            K::CommandNotFound,
            K::Timeout,
            K::DrainBlocked,
        ];
        let wire: std::collections::BTreeSet<i32> =
            all.iter().map(|k| failure_kind(Some(*k)) as i32).collect();
        assert_eq!(wire.len(), all.len());
        assert!(!wire.contains(&(proto::FailureKind::Unspecified as i32)));
        for k in all {
            assert_eq!(
                failure_kind(Some(k)).as_str_name(),
                format!("FAILURE_KIND_{}", k.name().replace('-', "_").to_uppercase())
            );
        }
    }
}
