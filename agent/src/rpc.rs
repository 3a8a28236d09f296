//! The Agent service the coordinator calls. The layer admits only the
//! coordinator identity; handlers convert and delegate to `steps`, which
//! delegates to the host crate.

use std::sync::Arc;

use kh::proto::agent_server::Agent;
use kh::proto::{
    Facts, GetFactsRequest, PreflightReport, PreflightRequest, RunStepRequest, StepReport,
};
use tonic::{Request, Response, Status};

use crate::state::AgentState;

pub struct AgentService(pub Arc<AgentState>);

#[tonic::async_trait]
impl Agent for AgentService {
    async fn get_facts(&self, _req: Request<GetFactsRequest>) -> Result<Response<Facts>, Status> {
        Ok(Response::new(
            crate::heartbeat::collect_facts(&self.0).await,
        ))
    }

    async fn run_step(&self, req: Request<RunStepRequest>) -> Result<Response<StepReport>, Status> {
        let r = req.into_inner();
        let step = r.step.ok_or_else(|| {
            Status::invalid_argument(
                "RunStep needs a step; this coordinator may be newer than the agent",
            )
        })?;
        Ok(Response::new(
            crate::steps::run(&self.0, step, r.dry_run).await,
        ))
    }

    async fn preflight(
        &self,
        req: Request<PreflightRequest>,
    ) -> Result<Response<PreflightReport>, Status> {
        crate::steps::preflight(&self.0, req.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::invalid_argument)
    }
}
