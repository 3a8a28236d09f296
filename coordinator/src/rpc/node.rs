use std::sync::Arc;

use kh::authz::caller;
use kh::proto::node_server::Node;
use kh::proto::{HeartbeatRequest, HeartbeatResponse, RenewRequest, RenewResponse};
use kh::time::unix_ms;
use tonic::{Request, Response, Status};

use crate::registry::Beat;
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
        let (rec, retire_prev) = c.registry.check_caller(&id)?;
        let beat = Beat {
            facts: r.facts,
            endpoint: r.endpoint,
            agent_version: r.agent_version,
            now_ms: unix_ms(c.clock.now()),
        };
        // Most heartbeats only touch memory. The few that must be made
        // durable (about one per node a minute) make a synced write, which
        // can take tens of milliseconds: it runs on the blocking pool and the
        // answer waits for it, so it stalls neither the reactor nor durability.
        if let Some(write) = c.registry.observe(&id, &rec, retire_prev, beat) {
            let coord = c.clone();
            super::blocking(&c.registry_writes, move || coord.registry.save(&write)).await?;
        }
        Ok(Response::new(HeartbeatResponse {
            interval_ms: c.config.heartbeat_interval.as_millis() as u64,
            coordinator_serial: c.pki.serving_serial.clone(),
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
