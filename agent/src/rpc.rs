//! The Agent service the coordinator calls. The layer admits only the
//! coordinator identity; handlers delegate to the host crate.

use std::sync::Arc;

use kh::proto::agent_server::Agent;
use kh::proto::{Facts, GetFactsRequest};
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
}
