//! Serves the coordinator's services over mTLS behind the authorization layer.

use std::future::Future;
use std::sync::Arc;

use kh::authz::{AuthzLayer, COORDINATOR_SERVICES};
use kh::proto::admin_server::AdminServer;
use kh::proto::enrollment_server::EnrollmentServer;
use kh::proto::node_server::NodeServer;
use kh::tls::{self, ClientAuth, ServerCert};
use tokio::net::TcpListener;

use crate::rpc::{admin::AdminService, enrollment::EnrollmentService, node::NodeService};
use crate::Coordinator;

pub async fn serve(
    coord: Arc<Coordinator>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let cert = ServerCert::new(tls::certified_key(
        &coord.pki.serving_chain_pem,
        &coord.pki.serving_key,
    )?);
    // Optional client auth: enrollment must be reachable without a
    // certificate; the layer keeps every other RPC behind one.
    let config = tls::server_config(coord.pki.ca().cert_pem(), cert, ClientAuth::Optional)?;
    tonic::transport::Server::builder()
        .layer(AuthzLayer::new(COORDINATOR_SERVICES))
        .add_service(EnrollmentServer::new(EnrollmentService(coord.clone())))
        .add_service(NodeServer::new(NodeService(coord.clone())))
        .add_service(AdminServer::new(AdminService(coord.clone())))
        .serve_with_incoming_shutdown(tls::incoming(listener, config), shutdown)
        .await?;
    Ok(())
}
