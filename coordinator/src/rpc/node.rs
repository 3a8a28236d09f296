use std::sync::Arc;

use kh::authz::caller;
use kh::bounds;
use kh::proto::node_server::Node;
use kh::proto::{HeartbeatRequest, HeartbeatResponse, RenewRequest, RenewResponse};
use kh::time::unix_ms;
use tonic::{Request, Response, Status};

use crate::error::CoordError;
use crate::registry::Beat;
use crate::Coordinator;

pub struct NodeService(pub Arc<Coordinator>);

/// A heartbeat as the registry stores it. Every field it stores is checked
/// against its bound here, once, so one node cannot grow its record (and
/// with it every `khctl nodes` answer) without limit.
fn beat(r: HeartbeatRequest, now_ms: u64) -> Result<Beat, CoordError> {
    if let Some(f) = &r.facts {
        bounds::facts(f)?;
    }
    bounds::endpoint("endpoint", &r.endpoint)?;
    bounds::text("agent_version", &r.agent_version, bounds::VERSION_MAX)?;
    Ok(Beat {
        facts: r.facts,
        endpoint: r.endpoint,
        agent_version: r.agent_version,
        now_ms,
    })
}

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
        let beat = beat(r, unix_ms(c.clock.now()))?;
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
            retired: rec.retired.is_some(),
            retired_reason: rec
                .retired
                .as_ref()
                .map(|r| r.reason.clone())
                .unwrap_or_default(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use kh::proto::Facts;

    fn request(facts: Facts) -> HeartbeatRequest {
        HeartbeatRequest {
            facts: Some(facts),
            endpoint: "127.0.0.11:7444".into(),
            agent_version: kh::VERSION.into(),
        }
    }

    #[test]
    fn a_heartbeat_within_bounds_is_taken_whole() {
        let b = beat(request(Facts::default()), 7).unwrap();
        assert_eq!(b.endpoint, "127.0.0.11:7444");
        assert_eq!(b.now_ms, 7);
    }

    #[test]
    fn a_heartbeat_beyond_a_bound_is_refused_naming_the_field() {
        let huge = Facts {
            os: "x".repeat(4 << 20),
            ..Default::default()
        };
        let err = beat(request(huge), 0).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            err.to_string(),
            "facts.os is 4194304 bytes long; the limit is 256 bytes"
        );
        let mut r = request(Facts::default());
        r.endpoint = "nowhere".into();
        let err = beat(r, 0).unwrap_err().to_string();
        assert!(
            err.starts_with("endpoint \"nowhere\" is not host:port"),
            "{err}"
        );
        let mut r = request(Facts::default());
        r.agent_version = "v".repeat(200);
        let err = beat(r, 0).unwrap_err().to_string();
        assert_eq!(
            err,
            "agent_version is 200 bytes long; the limit is 128 bytes"
        );
    }
}
