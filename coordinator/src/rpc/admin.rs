use std::sync::Arc;
use std::time::Duration;

use kh::names::NodeName;
use kh::proto::admin_server::Admin;
use kh::proto::*;
use kh::time::unix_ms;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use crate::error::CoordError;
use crate::tokens::{self, TokenRecord};
use crate::Coordinator;

pub struct AdminService(pub Arc<Coordinator>);

fn token_info(r: &TokenRecord, now_ms: u64) -> TokenInfo {
    TokenInfo {
        id: r.id.clone(),
        node_name: r.node.to_string(),
        created_unix_ms: r.created_ms,
        expires_unix_ms: r.expires_ms,
        force: r.force,
        state: r.state(now_ms).to_string(),
    }
}

type EventStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<PrepareEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Admin for AdminService {
    type PrepareStream = EventStream;

    async fn prepare(
        &self,
        req: Request<PrepareRequest>,
    ) -> Result<Response<Self::PrepareStream>, Status> {
        let r = req.into_inner();
        let coord = self.0.clone();
        let (_spec, targets) = crate::prepare::resolve(&coord, r.targets)?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(crate::prepare::prepare(coord, targets, r.dry_run, tx));
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn preflight(
        &self,
        req: Request<AdminPreflightRequest>,
    ) -> Result<Response<AdminPreflightResponse>, Status> {
        let coord = self.0.clone();
        let (spec, targets) = crate::prepare::resolve(&coord, req.into_inner().targets)?;
        let nodes = crate::prepare::preflight(coord, spec, targets).await;
        Ok(Response::new(AdminPreflightResponse { nodes }))
    }

    async fn create_token(
        &self,
        req: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let r = req.into_inner();
        let c = &self.0;
        let node = NodeName::new(&r.node_name).map_err(CoordError::from)?;
        let ttl = match r.ttl_seconds {
            0 => c.config.default_token_ttl,
            s => Duration::from_secs(s),
        };
        let (token, rec) = tokens::create(&c.db, c.clock.as_ref(), node.clone(), ttl, r.force)?;
        let hash = c.pki.ca().cert_hash();
        let addr = c.public_address();
        Ok(Response::new(CreateTokenResponse {
            token: token.reveal(),
            info: Some(token_info(&rec, unix_ms(c.clock.now()))),
            enroll_command: format!(
                "kh-agent enroll --coordinator {addr} --token {} --ca-cert-hash {hash} --node-name {node}",
                token.reveal()
            ),
            ca_cert_hash: hash,
            coordinator: addr,
        }))
    }

    async fn list_tokens(
        &self,
        _req: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        let c = &self.0;
        let now = unix_ms(c.clock.now());
        let tokens = tokens::list(&c.db, c.clock.as_ref())?
            .iter()
            .map(|r| token_info(r, now))
            .collect();
        Ok(Response::new(ListTokensResponse { tokens }))
    }

    async fn delete_token(
        &self,
        req: Request<DeleteTokenRequest>,
    ) -> Result<Response<DeleteTokenResponse>, Status> {
        tokens::delete(&self.0.db, &req.into_inner().id)?;
        Ok(Response::new(DeleteTokenResponse {}))
    }

    async fn list_nodes(
        &self,
        _req: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        let c = &self.0;
        let views = c
            .registry
            .list(unix_ms(c.clock.now()), c.config.heartbeat_interval)?;
        let nodes = views
            .into_iter()
            .map(|v| NodeInfo {
                name: v.record.name.to_string(),
                role: v.record.role.unwrap_or_default(),
                endpoint: v.record.endpoint,
                last_seen_unix_ms: v.last_seen_ms,
                health: if v.ready { "Ready" } else { "NotReady" }.to_string(),
                facts: v.record.facts,
                enrolled_unix_ms: v.record.enrolled_ms,
                cert_expires_unix_ms: v.record.cert_expires_ms,
                warnings: v.warnings,
                agent_version: v.record.agent_version,
            })
            .collect();
        Ok(Response::new(ListNodesResponse {
            nodes,
            heartbeat_interval_ms: c.config.heartbeat_interval.as_millis() as u64,
        }))
    }
}
