//! The Agent service the coordinator calls. The layer admits only the
//! coordinator identity; each handler first admits only the pinned
//! coordinator certificate (`crate::pin`), then converts and delegates to
//! `steps`, which delegates to the host crate.

use std::sync::Arc;

use kh::proto::agent_server::Agent;
use kh::proto::*;
use tonic::{Request, Response, Status};

use crate::state::AgentState;
use crate::steps;

pub struct AgentService(pub Arc<AgentState>);

/// Host-side failures of queries reach the coordinator as FailedPrecondition
/// with the tool's own message (etcdctl's, kubectl's).
fn failed(e: String) -> Status {
    Status::failed_precondition(e)
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn get_facts(&self, req: Request<GetFactsRequest>) -> Result<Response<Facts>, Status> {
        crate::pin::check(&self.0, &req).await?;
        Ok(Response::new(
            crate::heartbeat::collect_facts(&self.0).await,
        ))
    }

    async fn run_step(&self, req: Request<RunStepRequest>) -> Result<Response<StepReport>, Status> {
        crate::pin::check(&self.0, &req).await?;
        let r = req.into_inner();
        let step = r.step.ok_or_else(|| {
            Status::invalid_argument(
                "RunStep needs a step; this coordinator may be newer than the agent",
            )
        })?;
        Ok(Response::new(steps::run(&self.0, step, r.dry_run).await))
    }

    async fn preflight(
        &self,
        req: Request<PreflightRequest>,
    ) -> Result<Response<PreflightReport>, Status> {
        crate::pin::check(&self.0, &req).await?;
        steps::preflight(&self.0, req.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::invalid_argument)
    }

    async fn node_status(
        &self,
        req: Request<NodeStatusRequest>,
    ) -> Result<Response<NodeStatusResponse>, Status> {
        crate::pin::check(&self.0, &req).await?;
        steps::node_status(&self.0)
            .await
            .map(Response::new)
            .map_err(failed)
    }

    async fn etcd_members(
        &self,
        req: Request<EtcdRequest>,
    ) -> Result<Response<EtcdMembersResponse>, Status> {
        crate::pin::check(&self.0, &req).await?;
        steps::etcd_members(&self.0, req.into_inner())
            .await
            .map(Response::new)
            .map_err(failed)
    }

    async fn etcd_health(
        &self,
        req: Request<EtcdRequest>,
    ) -> Result<Response<EtcdHealthResponse>, Status> {
        crate::pin::check(&self.0, &req).await?;
        steps::etcd_health(&self.0, req.into_inner())
            .await
            .map(Response::new)
            .map_err(failed)
    }

    async fn kube_nodes(
        &self,
        req: Request<KubeNodesRequest>,
    ) -> Result<Response<KubeNodesResponse>, Status> {
        crate::pin::check(&self.0, &req).await?;
        steps::kube_nodes(&self.0)
            .await
            .map(Response::new)
            .map_err(failed)
    }

    async fn apiserver_ready(
        &self,
        req: Request<ApiserverReadyRequest>,
    ) -> Result<Response<ApiserverReadyResponse>, Status> {
        crate::pin::check(&self.0, &req).await?;
        Ok(Response::new(
            steps::apiserver_ready(&self.0, req.into_inner().url).await,
        ))
    }

    async fn tcp_probe(
        &self,
        req: Request<TcpProbeRequest>,
    ) -> Result<Response<TcpProbeResponse>, Status> {
        crate::pin::check(&self.0, &req).await?;
        Ok(Response::new(
            steps::tcp_probe(&self.0, req.into_inner()).await,
        ))
    }

    async fn read_cluster_files(
        &self,
        req: Request<ReadClusterFilesRequest>,
    ) -> Result<Response<ReadClusterFilesResponse>, Status> {
        crate::pin::check(&self.0, &req).await?;
        let set = read_cluster_files_request::Set::try_from(req.into_inner().set)
            .unwrap_or(read_cluster_files_request::Set::Unspecified);
        steps::read_cluster_files(&self.0, set)
            .await
            .map(Response::new)
            .map_err(failed)
    }

    async fn cluster_certs(
        &self,
        req: Request<ClusterCertsRequest>,
    ) -> Result<Response<ClusterCertsResponse>, Status> {
        crate::pin::check(&self.0, &req).await?;
        steps::cluster_certs(&self.0)
            .await
            .map(Response::new)
            .map_err(failed)
    }

    type EtcdSnapshotStream = crate::snapshot::SnapshotStream;

    async fn etcd_snapshot(
        &self,
        req: Request<EtcdSnapshotRequest>,
    ) -> Result<Response<Self::EtcdSnapshotStream>, Status> {
        crate::pin::check(&self.0, &req).await?;
        crate::snapshot::stream(&self.0, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn put_etcd_snapshot(
        &self,
        req: Request<tonic::Streaming<EtcdSnapshotPiece>>,
    ) -> Result<Response<PutEtcdSnapshotResponse>, Status> {
        crate::pin::check(&self.0, &req).await?;
        steps::put_etcd_snapshot(&self.0, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn package_versions(
        &self,
        req: Request<PackageVersionsRequest>,
    ) -> Result<Response<PackageVersionsResponse>, Status> {
        crate::pin::check(&self.0, &req).await?;
        steps::package_versions(&self.0, req.into_inner())
            .await
            .map(Response::new)
    }
}
