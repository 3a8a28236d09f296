use std::sync::Arc;

use kh::authz::caller;
use kh::proto::node_server::Node;
use kh::proto::{HeartbeatRequest, HeartbeatResponse, RenewRequest, RenewResponse};
use kh::time::unix_ms;
use tonic::{Request, Response, Status};

use crate::Coordinator;

pub struct NodeService(pub Arc<Coordinator>);

#[tonic::async_trait]
impl Node for NodeService {
    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let id = caller(&req)?.clone();
        let r = req.into_inner();
        let c = &self.0;
        let rec = c.registry.authenticate(&id)?;
        c.registry.heartbeat(
            rec,
            r.facts,
            r.endpoint,
            r.agent_version,
            unix_ms(c.clock.now()),
        )?;
        Ok(Response::new(HeartbeatResponse {
            interval_ms: c.config.heartbeat_interval.as_millis() as u64,
        }))
    }

    async fn renew(&self, req: Request<RenewRequest>) -> Result<Response<RenewResponse>, Status> {
        let id = caller(&req)?.clone();
        let csr = req.into_inner().csr_pem;
        let coord = self.0.clone();
        let issued = super::blocking(&self.0.signing, move || coord.renew(&id, &csr)).await?;
        Ok(Response::new(RenewResponse {
            certificate_pem: issued.cert_pem,
            ca_pem: self.0.pki.ca().cert_pem().to_string(),
        }))
    }
}
